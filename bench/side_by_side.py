#!/usr/bin/env python3
"""resnetc vs onnxruntime vs tract on the same model, weights and input.

    bash scripts/setup.sh && cargo build --release && .tools/py/bin/python bench/side_by_side.py [--direct] [--portable] [--no-tract] [MODEL[:BATCH] ...]

For each model and thread count T in (1, 2): `resnetc bench` (median of
timed runs after warm-up) and onnxruntime (intra_op_num_threads = T, all
graph optimizations, sequential execution, the same warm-up and median) on
`resnetc export` of the same network with `--random-weights 0`. Prints a
Markdown table with each latency and the ratio resnetc / onnxruntime.
The machine's speed drifts by 10-20% over minutes (a shared VM), so each
(model, T) is timed in ROUNDS alternating rounds, resnetc then
onnxruntime, and each column gives the median of its rounds' medians.
tract (bench/tract, built here on first use) runs single-threaded, so its
column is filled at T = 1 (`--no-tract` leaves it out). `--direct` adds a
column of resnetc with `--conv-algo direct` (no Winograd), timed in the
same alternating rounds: the algorithm's gain on the same machine and
minutes. `--portable` adds a column of the code a default-built (portable)
library runs on this machine, where it has AVX-512: on an Intel CPU its
`skylake-avx512` level (kernels planned over the weights `x86-64-v4`
packed), elsewhere `x86-64-v4`; against `native`, the build machine's own.
A benchmark, not a test: nothing is asserted.
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
DEFAULT = [("resnet18", 1), ("resnet34", 1), ("resnet50", 1), ("densenet121", 1), ("resnet50", 8),
           ("unet", 1), ("cifar_resnet20", 1), ("cifar_resnet56", 1), ("unet_small", 1),
           ("densenet_bc_small", 1)]


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


def resnetc_median(model, threads, batch, extra=()):
    r = json.loads(subprocess.run(
        [exe, "bench", str(model), "--random-weights", "0", "--threads", str(threads),
         "--batch", str(batch), "--format", "json", *extra],
        check=True, capture_output=True, text=True).stdout)
    return r["median_ms"]


def portable_flags():
    """The default library's level on this (AVX-512) machine, as bench flags."""
    intel = "GenuineIntel" in pathlib.Path("/proc/cpuinfo").read_text()
    if intel:
        return ["--cpu", "skylake-avx512", "--packed-for", "x86-64-v4"]
    return ["--cpu", "x86-64-v4"]


def main():
    args = sys.argv[1:]
    direct, tract = "--direct" in args, "--no-tract" not in args
    portable = "--portable" in args
    names = [a for a in args if not a.startswith("--")]
    cases = [(n.split(":")[0], int(n.split(":")[1]) if ":" in n else 1) for n in names] or DEFAULT
    cols = ["resnetc ms"] + (["resnetc direct ms"] if direct else []) \
        + (["resnetc portable ms"] if portable else []) + ["onnxruntime ms"] \
        + (["tract ms"] if tract else []) + ["resnetc / onnxruntime"] \
        + (["direct / onnxruntime"] if direct else []) \
        + (["portable / onnxruntime"] if portable else [])
    print("| model | batch | threads | " + " | ".join(cols) + " |")
    print("|---|---:|---:|" + "---:|" * len(cols))
    with tempfile.TemporaryDirectory() as tmp:
        for name, batch in cases:
            model = root / "examples" / f"{name}.res"
            onnx = f"{tmp}/{name}.onnx"
            subprocess.run([exe, "export", str(model), "--random-weights", "0", "-o", onnx], check=True)
            info = json.loads(subprocess.run([exe, "summary", str(model), "--format", "json"],
                                             check=True, capture_output=True, text=True).stdout)
            x = np.random.default_rng(0).standard_normal([batch] + info["input"]).astype(np.float32)
            for threads in (1, 2):
                ours, plain, v4, theirs = [], [], [], []
                for _ in range(ROUNDS):
                    ours.append(resnetc_median(model, threads, batch))
                    if direct:
                        plain.append(resnetc_median(model, threads, batch, ["--conv-algo", "direct"]))
                    if portable:
                        v4.append(resnetc_median(model, threads, batch, portable_flags()))
                    theirs.append(ort_median(onnx, x, threads))
                r, o = statistics.median(ours), statistics.median(theirs)
                row = [f"{r:.2f}"] + ([f"{statistics.median(plain):.2f}"] if direct else []) \
                    + ([f"{statistics.median(v4):.2f}"] if portable else []) + [f"{o:.2f}"]
                if tract:
                    row.append(f"{tract_median(onnx, list(x.shape)):.2f}" if threads == 1 else "–")
                row.append(f"{r / o:.2f}")
                if direct:
                    row.append(f"{statistics.median(plain) / o:.2f}")
                if portable:
                    row.append(f"{statistics.median(v4) / o:.2f}")
                print(f"| {name} | {batch} | {threads} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
