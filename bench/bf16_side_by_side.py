#!/usr/bin/env python3
"""resnetc --precision bf16 vs OpenVINO's bf16 (and both in fp32) on the
same model, weights and input.

    bash scripts/setup.sh && .tools/py/bin/pip install openvino
    cargo build --release && .tools/py/bin/python bench/bf16_side_by_side.py [MODEL[:BATCH] ...]

For each model and thread count T in (1, 2): `resnetc bench` (fp32 and
`--precision bf16`) and OpenVINO's CPU plugin (latency hint, T inference
threads, `INFERENCE_PRECISION_HINT` f32 and bf16) on `resnetc export` of
the same network with `--random-weights 0`, in ROUNDS alternating rounds,
each column the median of its rounds' medians. Also each bf16 output's
error against resnetc's fp32 output on one input (max |diff| / max |fp32|),
and whether OpenVINO ran AMX kernels (its executed graph's primitive
types). A benchmark, not a test: nothing is asserted.
"""
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import openvino as ov

root = pathlib.Path(__file__).resolve().parent.parent
exe = str(root / "target/release/resnetc")
ROUNDS = 3
DEFAULT = [("resnet18", 1), ("resnet50", 1), ("densenet121", 1), ("resnet50", 8)]


def ov_compiled(core, onnx, threads, precision):
    cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
           "INFERENCE_PRECISION_HINT": precision}
    return core.compile_model(core.read_model(onnx), "CPU", cfg)


def ov_median(compiled, x):
    req = compiled.create_infer_request()
    for _ in range(3):
        req.infer({0: x})
    times, start = [], time.perf_counter()
    while len(times) < 1000 and (len(times) < 10 or time.perf_counter() - start < 2):
        t = time.perf_counter()
        req.infer({0: x})
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def ov_uses_amx(compiled):
    kinds = [op.get_rt_info()["primitiveType"].astype(str)
             for op in compiled.get_runtime_model().get_ops()
             if "primitiveType" in op.get_rt_info()]
    return any("amx" in k for k in kinds)


def resnetc_median(model, threads, batch, precision):
    r = json.loads(subprocess.run(
        [exe, "bench", str(model), "--random-weights", "0", "--threads", str(threads),
         "--batch", str(batch), "--format", "json", "--precision", precision],
        check=True, capture_output=True, text=True).stdout)
    return r["median_ms"]


def resnetc_output(model, x, precision, tmp):
    np.save(f"{tmp}/x.npy", x)
    subprocess.run([exe, "run", str(model), "--random-weights", "0", "--input", f"{tmp}/x.npy",
                    "--output", f"{tmp}/y.npy", "--precision", precision], check=True)
    return np.load(f"{tmp}/y.npy")


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def main():
    names = [a for a in sys.argv[1:] if not a.startswith("--")]
    cases = [(n.split(":")[0], int(n.split(":")[1]) if ":" in n else 1) for n in names] or DEFAULT
    core = ov.Core()
    print(f"OpenVINO {ov.get_version()}")
    print("| model | batch | threads | resnetc fp32 ms | resnetc bf16 ms | OpenVINO f32 ms "
          "| OpenVINO bf16 ms | resnetc bf16 / OpenVINO bf16 | bf16 error resnetc / OpenVINO "
          "| OpenVINO AMX |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, batch in cases:
            model = root / "examples" / f"{name}.res"
            onnx = f"{tmp}/{name}.onnx"
            subprocess.run([exe, "export", str(model), "--random-weights", "0", "-o", onnx],
                           check=True)
            info = json.loads(subprocess.run([exe, "summary", str(model), "--format", "json"],
                                             check=True, capture_output=True, text=True).stdout)
            x = np.random.default_rng(0).standard_normal([batch] + info["input"]).astype(np.float32)
            fp32 = resnetc_output(model, x, "fp32", tmp)
            ours_err = rel(resnetc_output(model, x, "bf16", tmp), fp32)
            for threads in (1, 2):
                f32c, bf16c = (ov_compiled(core, onnx, threads, p) for p in ("f32", "bf16"))
                theirs_err = rel(bf16c.create_infer_request().infer({0: x})[0], fp32)
                cols = {k: [] for k in ("r32", "r16", "o32", "o16")}
                for _ in range(ROUNDS):
                    cols["r32"].append(resnetc_median(model, threads, batch, "fp32"))
                    cols["r16"].append(resnetc_median(model, threads, batch, "bf16"))
                    cols["o32"].append(ov_median(f32c, x))
                    cols["o16"].append(ov_median(bf16c, x))
                m = {k: statistics.median(v) for k, v in cols.items()}
                print(f"| {name} | {batch} | {threads} | {m['r32']:.2f} | {m['r16']:.2f} "
                      f"| {m['o32']:.2f} | {m['o16']:.2f} | {m['r16'] / m['o16']:.2f} "
                      f"| {ours_err:.1e} / {theirs_err:.1e} | {ov_uses_amx(bf16c)} |", flush=True)


if __name__ == "__main__":
    main()
