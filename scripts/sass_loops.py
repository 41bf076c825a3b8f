#!/usr/bin/env python3
"""A static look at the GEMM kernels' inner loops, without a GPU: builds a
model for --target cuda, assembles its PTX with ptxas, disassembles the
cubin with nvdisasm and counts the machine instructions (SASS) of every
GEMM kernel's K loop.

An SM sub-partition issues one warp instruction per cycle and has 32 fp32
lanes, so a K loop whose body is F% FFMA can reach at most F% of the fp32
peak, however well it hides latency. The report gives that bound per
kernel and, weighted by each layer's multiply-adds at the batch asked for,
for the whole network. It is an upper bound read off the code, not a
timing: memory, latency and bank conflicts only lower it. The useful share
also counts the FFMAs a tile spends on padding: rows past the layer's
output channels (a 64-row tile on a 32-channel layer wastes half) and
columns past its pixels. (Tiles are read off the plan for ungrouped
layers, as in every example.)

    python3 scripts/sass_loops.py [--resnetc target/release/resnetc]
        [--model examples/resnet50.res] [--gpu sm_90] [--sms N] [--batch 1 --batch 64]
        [--kernels]

ptxas comes with scripts/setup.sh (.tools/py); nvdisasm is in the PyPI
wheel nvidia-cuda-nvdisasm, which setup.sh installs beside it.
"""
import argparse
import collections
import glob
import json
import pathlib
import re
import subprocess
import sys
import tempfile

root = pathlib.Path(__file__).resolve().parent.parent


def tool(pattern, name):
    hits = sorted(glob.glob(str(root / ".tools/py/lib/python*/site-packages/nvidia" / pattern)))
    if not hits:
        sys.exit(f"sass_loops: {name} not found under .tools/py (run scripts/setup.sh)")
    return hits[-1]


def functions(sass):
    """{kernel: [('label', name) | ('ins', text)]} from `nvdisasm -c`."""
    out, cur = {}, None
    for line in sass.splitlines():
        m = re.match(r"^\.text\.(\S+):", line)
        if m:
            cur = out.setdefault(m.group(1), [])
            continue
        if cur is None:
            continue
        m = re.match(r"^(\.L_x_\d+):", line.strip())
        if m:
            cur.append(("label", m.group(1)))
            continue
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(.*?)\s*;", line)
        if m:
            cur.append(("ins", m.group(1)))
    return out


def opcode(ins):
    words = [w for w in ins.split() if not w.startswith("@")]
    op = words[0]
    # Memory ops keep their width (LDS.128); the rest their base name.
    return op if op.startswith(("LDS", "LDG", "STS")) else op.split(".")[0]


def k_loop(items):
    """The loop (a backward branch's body) with the most FFMAs:
    (instructions, Counter of opcodes), or None."""
    labels, ins = {}, []
    for kind, text in items:
        if kind == "label":
            labels[text] = len(ins)
        else:
            ins.append(text)
    best = None
    for i, text in enumerate(ins):
        m = re.search(r"BRA\s+`?\(?(\.L_x_\d+)", text)
        if not m or labels.get(m.group(1), i + 1) > i:
            continue
        body = ins[labels[m.group(1)] : i + 1]
        ops = collections.Counter(opcode(b) for b in body)
        if ops["FFMA"] and (best is None or ops["FFMA"] > best[1]["FFMA"]):
            best = (len(body), ops)
    return best


def variant(launch, n):
    vs = [v for v in launch["variants"] if v["min_batch"] <= n]
    return max(vs, key=lambda v: v["min_batch"]) if vs else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resnetc", default=str(root / "target/release/resnetc"))
    ap.add_argument("--model", default=str(root / "examples/resnet50.res"))
    ap.add_argument("--gpu", default="sm_90")
    ap.add_argument("--sms", type=int, help="plan for this many multiprocessors (default: the"
                    " --gpu's reference part; bench plans for the local GPU's own)")
    ap.add_argument("--batch", type=int, action="append")
    ap.add_argument("--kernels", action="store_true", help="one line per GEMM kernel")
    a = ap.parse_args()
    batches = a.batch or [1, 64]
    ptxas, nvdisasm = tool("cuda_nvcc/bin/ptxas", "ptxas"), tool("*/bin/nvdisasm", "nvdisasm")
    stem = pathlib.Path(a.model).stem
    with tempfile.TemporaryDirectory() as d:
        d = pathlib.Path(d)
        subprocess.run(
            [a.resnetc, "build", a.model, "--target", "cuda", "--gpu", a.gpu,
             *(["--sms", str(a.sms)] if a.sms else []), "--random-weights", "1", "-o", d / "art"],
            check=True, capture_output=True)
        subprocess.run([ptxas, f"-arch={a.gpu}", "-o", d / "k.cubin", d / "art" / f"{stem}.ptx"],
                       check=True)
        sass = subprocess.run([nvdisasm, "-c", d / "k.cubin"], check=True,
                              capture_output=True, text=True).stdout
        plan = json.loads((d / "art" / f"{stem}.plan.json").read_text())
    summary = json.loads(subprocess.run(
        [a.resnetc, "summary", a.model, "--format", "json"],
        check=True, capture_output=True, text=True).stdout)
    macs = {l["name"]: l["macs"] for l in summary["layers"] if l["name"]}
    channels = {l["name"]: l["shape"][0] for l in summary["layers"] if l["name"]}
    loops = {k: k_loop(items) for k, items in functions(sass).items()}

    if a.kernels:
        print("| kernel | loop instructions | FFMA | FFMA share | other top opcodes |")
        print("| --- | --- | --- | --- | --- |")
        for k, lp in loops.items():
            if lp and lp[1]["FFMA"] >= 32:
                n, ops = lp
                rest = ", ".join(f"{o} {c}" for o, c in ops.most_common(8) if o != "FFMA")
                print(f"| {k} | {n} | {ops['FFMA']} | {100 * ops['FFMA'] / n:.0f}% | {rest} |")
        print()

    print(f"{stem}, {a.gpu}: FFMA share of the K loops, weighted by multiply-adds")
    print("| batch | GEMM launches | weighted FFMA share | useful share | by tile (FFMAs per step: share of MACs, FFMA share) |")
    print("| --- | --- | --- | --- | --- |")
    for n in batches:
        total = issue = useful = 0.0
        launches = 0
        tiles = collections.defaultdict(lambda: [0.0, 0.0])
        for l in plan["launches"]:
            label = l["label"]
            if not label.endswith((" conv", " linear")):
                continue
            v = variant(l, n)
            lp = loops.get(v["kernel"]) if v and v["x_per_image"] else None
            name = label.rsplit(" ", 1)[0]
            if lp is None or name not in macs:
                sys.exit(f"sass_loops: no K loop or MACs for {label} ({v and v['kernel']})")
            size, ops = lp
            share = ops["FFMA"] / size
            w = macs[name]
            total += w
            issue += w / share
            # The tile: tm·tn outputs a thread (8 FFMAs each per K step; a
            # prologue adds some: the largest register tile they cover),
            # bn = x_tile, bm from the block's size.
            per_thread = max(p for p in (4, 16, 32, 64) if 8 * p <= ops["FFMA"] or p == 4)
            bn = v["x_tile"]
            bm = v["block"] * per_thread // bn
            cols = n * v["x_per_image"]
            done = (v["grid_y"] * bm) * (-(-cols // bn) * bn)
            useful += w / (share * channels[name] * cols / done)
            t = tiles[ops["FFMA"]]
            t[0] += w
            t[1] += w / share
            launches += 1
        by = "; ".join(f"{f}: {100 * t[0] / total:.0f}%, {100 * t[0] / t[1]:.0f}%"
                       for f, t in sorted(tiles.items(), reverse=True))
        print(f"| {n} | {launches} | {100 * total / issue:.1f}% | {100 * total / useful:.1f}% | {by} |")


if __name__ == "__main__":
    main()
