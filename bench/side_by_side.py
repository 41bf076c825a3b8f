#!/usr/bin/env python3
"""resnetc vs onnxruntime vs tract on the same model, weights and input.

    bash scripts/setup.sh && cargo build --release && .tools/py/bin/python bench/side_by_side.py [MODEL ...]

For each model and thread count T in (1, 2): `resnetc bench` (median of
timed runs after warm-up) and onnxruntime (intra_op_num_threads = T, all
graph optimizations, sequential execution, the same warm-up and median) on
`resnetc export` of the same network with `--random-weights 0`. Prints a
Markdown table with each latency and the ratio resnetc / onnxruntime.
The machine's speed drifts by 10-20% over minutes (a shared VM), so each
(model, T) is timed in ROUNDS alternating rounds, resnetc then
onnxruntime, and each column gives the median of its rounds' medians.
tract (bench/tract, built here on first use) runs single-threaded, so its
column is filled at T = 1. A benchmark, not a test: nothing is asserted.
"""
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

root = pathlib.Path(__file__).resolve().parent.parent
exe = str(root / "target/release/resnetc")
# (example, batch)
ROUNDS = 3
DEFAULT = [("resnet18", 1), ("resnet50", 1), ("densenet121", 1), ("resnet50", 8),
           ("cifar_resnet20", 1), ("cifar_resnet56", 1), ("unet_small", 1), ("densenet_bc_small", 1)]


def ort_median(model, x, threads):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    for _ in range(2):
        s.run(None, {"input": x})
    times, start = [], time.perf_counter()
    while len(times) < 1000 and (len(times) < 10 or time.perf_counter() - start < 2):
        t = time.perf_counter()
        s.run(None, {"input": x})
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def tract_median(onnx, shape):
    exe = root / "bench/tract/target/release/tract-bench"
    if not exe.exists():
        subprocess.run(["cargo", "build", "--release", "--quiet", "--manifest-path",
                        str(root / "bench/tract/Cargo.toml")], check=True)
    c, h, w = shape[1:]
    out = subprocess.run([str(exe), onnx, str(c), str(h), str(w), str(shape[0])],
                         check=True, capture_output=True, text=True).stdout
    return float(out.strip())


def main():
    cases = [(a, int(b)) for a, b in (c.split(":") for c in sys.argv[1:])] if sys.argv[1:] else DEFAULT
    print("| model | batch | threads | resnetc ms | onnxruntime ms | tract ms | resnetc / onnxruntime |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, batch in cases:
            model = root / "examples" / f"{name}.res"
            onnx = f"{tmp}/{name}.onnx"
            subprocess.run([exe, "export", str(model), "--random-weights", "0", "-o", onnx], check=True)
            info = json.loads(subprocess.run([exe, "summary", str(model), "--format", "json"],
                                             check=True, capture_output=True, text=True).stdout)
            x = np.random.default_rng(0).standard_normal([batch] + info["input"]).astype(np.float32)
            for threads in (1, 2):
                ours, theirs = [], []
                for _ in range(ROUNDS):
                    r = json.loads(subprocess.run(
                        [exe, "bench", str(model), "--random-weights", "0", "--threads",
                         str(threads), "--batch", str(batch), "--format", "json"],
                        check=True, capture_output=True, text=True).stdout)
                    ours.append(r["median_ms"])
                    theirs.append(ort_median(onnx, x, threads))
                r, o = statistics.median(ours), statistics.median(theirs)
                t = f"{tract_median(onnx, list(x.shape)):.2f}" if threads == 1 else "–"
                print(f"| {name} | {batch} | {threads} | {r:.2f} | {o:.2f} | {t} | "
                      f"{r / o:.2f} |", flush=True)


if __name__ == "__main__":
    main()
