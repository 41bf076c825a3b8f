#!/usr/bin/env python3
"""Where resnet50's time goes, resnetc against onnxruntime, layer class by
layer class (a diagnostic, not a benchmark: profiling adds overhead to both).

    bash scripts/setup.sh && cargo build --release && .tools/py/bin/python bench/layer_profile.py [THREADS]

`RESNETC=path/to/resnetc` profiles another build (an older one, say).

resnetc: `bench --layers` (median per layer). onnxruntime: its node
profile (all graph optimizations, `enable_profiling`), median per node over
30 runs, on `resnetc export` of the same network. Nodes are matched to
resnet50's layers by their input and weight shapes. Prints a Markdown table
per class (stage, conv role): count, both times and their ratio.
"""
import collections
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile

import numpy as np
import onnxruntime as ort

root = pathlib.Path(__file__).resolve().parent.parent
exe = os.environ.get("RESNETC", str(root / "target/release/resnetc"))
model = str(root / "examples/resnet50.res")
threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1


def resnetc_class(name):
    if name == "conv1":
        return "stem 7×7/2"
    if name == "fc":
        return "fc"
    m = re.match(r"layer(\d)\.(\d+)\.(conv\d|downsample)", name)
    if not m:
        return "other"
    s, b, kind = int(m[1]), int(m[2]), m[3]
    if kind == "downsample":
        return f"layer{s} downsample 1×1"
    if kind == "conv1":
        return f"layer{s}.0 conv1 1×1" if b == 0 else f"layer{s} conv1 1×1"
    if kind == "conv2":
        return f"layer{s}.0 conv2 3×3/2" if b == 0 and s > 1 else f"layer{s} conv2 3×3"
    return f"layer{s} conv3 1×1 + residual"


def ort_class(x, w):
    """resnet50's layer class of a Conv with input `x` and weight `w`."""
    c, h = x[1], x[2]
    o, i, k = w[0], w[1], w[2]
    stage = {56: 1, 28: 2, 14: 3, 7: 4}
    if k == 7:
        return "stem 7×7/2"
    if k == 3:
        if h == 56 and o == 64:
            return "layer1 conv2 3×3"
        out = {64: 56, 128: 28, 256: 14, 512: 7}[o]
        return f"layer{stage[out]}.0 conv2 3×3/2" if out != h else f"layer{stage[h]} conv2 3×3"
    if o == 4 * i:  # expansion: conv3, or layer1's downsample (64 → 256)
        return "layer1 downsample 1×1" if (i == 64 and c == 64 and h == 56 and not x[-1]) else f"layer{stage[h]} conv3 1×1 + residual"
    if o == 2 * i:  # downsample of stages 2-4 (strided in the graph)
        return f"layer{stage[h] + 1} downsample 1×1"
    if i == 64 and o == 64:
        return "layer1.0 conv1 1×1"
    # conv1: i → i/4 (same stage), or the first block's i → i/2 (next stage's width)
    if o * 4 == i:
        return f"layer{stage[h]} conv1 1×1"
    return f"layer{stage[h] + 1}.0 conv1 1×1"


def main():
    out = subprocess.run([exe, "bench", model, "--threads", str(threads), "--layers"],
                         check=True, capture_output=True, text=True).stdout
    ours = collections.defaultdict(float)
    count = collections.Counter()
    for line in out.splitlines()[2:]:
        f = line.split()
        if len(f) >= 4 and re.match(r"^[0-9.]+$", f[0]):
            ours[resnetc_class(f[2])] += float(f[0])
            if "staging" not in line and "input)" not in line:
                count[resnetc_class(f[2])] += 1
    with tempfile.TemporaryDirectory() as tmp:
        onnx = f"{tmp}/resnet50.onnx"
        subprocess.run([exe, "export", model, "--random-weights", "0", "-o", onnx], check=True)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads
        so.enable_profiling = True
        so.profile_file_prefix = f"{tmp}/prof"
        s = ort.InferenceSession(onnx, so, providers=["CPUExecutionProvider"])
        x = np.random.rand(1, 3, 224, 224).astype(np.float32)
        for _ in range(30):
            s.run(None, {"input": x})
        events = json.load(open(s.end_profiling()))
    per_node = collections.defaultdict(list)
    shapes = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node[e["name"]].append(e["dur"] / 1000)
            a = e["args"]
            ins = [list(v.values())[0] for v in a.get("input_type_shape", [])]
            shapes[e["name"]] = (a.get("op_name"), ins)
    theirs = collections.defaultdict(float)
    for n, v in per_node.items():
        op, ins = shapes[n]
        if op == "Conv":
            x, w = ins[0], ins[1]
            # A fused Sum (the residual) is the fourth input.
            cls = ort_class(x + [len(ins) > 3], w)
        elif op == "Gemm":
            cls = "fc"
        else:
            cls = "other"
        theirs[cls] += statistics.median(v)
    print(f"resnet50, batch 1, {threads} thread(s): per layer class, ms (sum of per-layer medians)\n")
    print("| layers | count | resnetc ms | onnxruntime ms | resnetc / onnxruntime |")
    print("|---|---:|---:|---:|---:|")
    for cls in sorted(set(ours) | set(theirs), key=lambda c: -max(ours[c], theirs[c])):
        r = ours[cls] / theirs[cls] if theirs[cls] else float("nan")
        print(f"| {cls} | {count[cls]} | {ours[cls]:.2f} | {theirs[cls]:.2f} | {r:.2f} |")
    print(f"| **all** | | {sum(ours.values()):.2f} | {sum(theirs.values()):.2f} | "
          f"{sum(ours.values()) / sum(theirs.values()):.2f} |")


if __name__ == "__main__":
    main()
