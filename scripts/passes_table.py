#!/usr/bin/env python3
"""Prints the op-count and activation-memory table of docs/passes.md.

    cargo build --release && python3 scripts/passes_table.py [target/release/resnetc]

For every example: ops before (-O0) and after the passes, and the naive sum
of activation tensors vs the planned arena, per image (batch 1).
"""
import json
import pathlib
import subprocess
import sys

root = pathlib.Path(__file__).resolve().parent.parent
exe = sys.argv[1] if len(sys.argv) > 1 else str(root / "target/release/resnetc")


def summary(model, *flags):
    out = subprocess.run([exe, "summary", str(model), "--format", "json", *flags],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def ops(d):
    return ", ".join(f"{k} {v}" for k, v in sorted(d["ops"].items()))


def mib(b):
    return f"{b / 2**20:.2f}"


print("| model | ops -O0 | ops optimized | naive MiB (-O0) | naive MiB | planned MiB | planned / naive (-O0) |")
print("|---|---|---|---:|---:|---:|---:|")
for model in sorted((root / "examples").glob("*.res")):
    o0, o1 = summary(model, "-O0"), summary(model)
    n0, n1, p1 = o0["activation_bytes"]["naive"], o1["activation_bytes"]["naive"], o1["activation_bytes"]["planned"]
    print(f"| {model.stem} | {ops(o0)} | {ops(o1)} | {mib(n0)} | {mib(n1)} | {mib(p1)} | {p1 / n0:.3f} |")
