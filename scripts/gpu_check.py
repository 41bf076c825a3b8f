#!/usr/bin/env python3
"""Everything the CUDA back end has to show on a GPU, in one run of a few
minutes (what a session lent an H100/H200 runs; it needs no Rust toolchain,
only a release binary of resnetc, Python 3 and, for the timings, PyTorch
with torchvision):

  1. every example and IR test case (tests/ir_cases: every operator) at
     its full input size, batch 2, random weights:
     `run --target cuda` (sm_80 PTX, JIT-compiled by the driver, and sm_90;
     sm_75 PTX, whose GEMMs stage their loads in registers, for the IR
     cases and a few examples) against `run --target ref` (the
     interpreter), 1e-4 relative; where
     one differs, `run --check-layers` names the first layer that does
     (its table in DIR/layers_<model>_<gpu>.txt);
  2. the PyTorch fixtures (tests/fixtures) against PyTorch's outputs;
  3. the CUDA static library linked into the C programs of
     examples/embed_cuda (host-memory and device-pointer entry points)
     against PyTorch's output (needs a C compiler and make);
  4. bench/cuda_vs_torch.py: resnet50 b1/b64, resnet18 and densenet121 b1
     against PyTorch eager, fp32 with TF32 off on both sides, with and
     without split-K;
  5. every launch of resnet50 at batch 1 and 64 timed on its own
     (`bench --target cuda --layers`), written to DIR/profile_*.json: what
     the GEMM cost model's constants are to be calibrated against.

    python3 scripts/gpu_check.py [--resnetc target/release/resnetc] [--out DIR] [--no-bench]
                                 [--deadline SECONDS]

Prints a markdown report row by row as each check completes and rewrites
DIR/gpu_check.md after every row, so a run stopped at its time limit still
leaves what it found; exits 1 if any check failed. Past --deadline (540 s
from the start by default: under a device call's 600 s) the remaining
checks are skipped and reported so. It starts with `resnetc --version`: a
binary that will not start (wrong path, missing library, a newer glibc than
this machine's) ends the run there, with the reason. The release binary (55 MB) and the working tree (23 MB) are
over the 64 MiB a device call carries, so carry the binary compressed
(13 MB) and unpack it there with Python's lzma:

    here:   mkdir -p .gpu && grep -qx /.gpu/ .git/info/exclude || echo /.gpu/ >> .git/info/exclude
            cargo build --release && xz -T2 -6 -c target/release/resnetc > .gpu/resnetc.xz
    there:  python3 -c "import lzma,shutil,os; shutil.copyfileobj(lzma.open('.gpu/resnetc.xz'), \
                open('/tmp/resnetc','wb')); os.chmod('/tmp/resnetc', 0o755)" \
            && python3 scripts/gpu_check.py --resnetc /tmp/resnetc --out $OUT      (carry: [".gpu"])
 Without a GPU every cuda step fails with resnetc's "no CUDA
driver was found", which is how this script is tested off a GPU.
"""
import argparse
import array
import concurrent.futures
import json
import os
import pathlib
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from npy import read_floats, write_npy

root = pathlib.Path(__file__).resolve().parent.parent
check = root / "tests/fixtures/check.py"
FIXTURES = ["cifar_resnet20", "cifar_plain20", "unet_small", "densenet_bc_small"]
# Examples also run as sm_75 PTX (no cp.async: the T4's kernels, which a
# newer GPU JITs like any older PTX), beside every IR case.
STAGED = {"resnet50", "densenet121", "unet_small", "cifar_resnet20"}
NO_DRIVER = "no CUDA driver was found"
PAST = "skipped: past the deadline"
# time.monotonic() past which nothing new starts (main sets it).
deadline = float("inf")


def past_deadline():
    return time.monotonic() >= deadline


def sh(cmd, timeout=300):
    """Exit code and stdout + stderr; never raises: a program that cannot
    start (OSError) is exit 127, one stopped at its timeout or at the
    deadline 124."""
    timeout = min(timeout, deadline - time.monotonic())
    if timeout <= 0:
        return 124, PAST
    try:
        r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:.0f} s"
    except OSError as e:
        return 127, f"cannot start {cmd[0]}: {e}"
    return r.returncode, (r.stdout + r.stderr).strip()


class Report:
    """The markdown report: every line printed at once (unbuffered) and the
    file rewritten, so a run killed at its time limit leaves what it had."""

    def __init__(self, path):
        self.path, self.lines, self.failed, self.cut = path, [], 0, False
        self.lock = threading.Lock()

    def add(self, text):
        with self.lock:
            self.lines.append(text)
            print(text, flush=True)
            self.path.write_text("\n".join(self.lines) + "\n")

    def table(self, title):
        self.add(f"\n## {title}\n\n| model | against | result | detail |\n| --- | --- | --- | --- |")

    def row(self, name, what, ok, detail):
        """ok: True PASS, False FAIL (counted), None SKIP (and a check the
        deadline kept from starting)."""
        if ok is False and PAST in str(detail):
            ok = None
            self.cut = True
        with self.lock:
            self.failed += ok is False
        detail = " ".join(str(detail).replace("|", "/").split())
        self.add(f"| {name} | {what} | {({True: 'PASS', False: 'FAIL', None: 'SKIP'}[ok])} | {detail} |")


def compare(actual, expected, centred=None):
    """check.py's verdict and its max-rel line."""
    cmd = [sys.executable, check, actual, expected, "--rtol", "1e-4"]
    if centred:
        cmd += ["--centered-rtol", str(centred)]
    rc, out = sh(cmd)
    lines = [l for l in out.splitlines() if "rel" in l]
    return rc == 0, "; ".join(lines) or out


def run(exe, model, target, weights, x, y, gpu=None):
    cmd = [exe, "run", model, "--target", target, *weights, "--input", x, "--output", y]
    if gpu:
        cmd += ["--gpu", gpu]
    return sh(cmd)


LAYER_CHECKS = threading.Semaphore(3)


def layers(exe, model, weights, x, gpu, out_dir):
    """Where a CUDA run went wrong: `run --check-layers` (every launch's
    value against the interpreter's), the table written to out_dir; the
    line naming the first layer that differs. At most three per run: a bug
    common to every model would otherwise spend the device time on it."""
    if not LAYER_CHECKS.acquire(blocking=False):
        return "no --check-layers (three already ran)"
    table = out_dir / f"layers_{model.stem}_{gpu}.txt"
    rc, out = sh([exe, "run", model, "--target", "cuda", "--gpu", gpu, *weights, "--input", x,
                  "--output", x.parent / f"layers_{gpu}.npy", "--check-layers"])
    table.write_text(out + "\n")
    summary = [l for l in out.splitlines() if "layers within" in l or "layers differ" in l]
    return (summary[-1] if summary else out[-200:]) + f" ({table.name})"


def examples(exe, tmp, out_dir, report):
    """Step 1: every example, full size, batch 2, cuda vs the interpreter;
    where one differs, which layer first does (`layers`). Each row is
    reported as it completes."""

    def one(model):
        if past_deadline():
            return report.row(model.stem, "-", None, PAST)
        rc, out = sh([exe, "summary", model, "--format", "json"])
        try:
            info = json.loads(out) if rc == 0 else None
        except ValueError:
            info = None
        if not info:
            return report.row(model.stem, "summary", False, f"exit {rc}: {out[-300:]}")
        shape = [2] + info["input"]
        n = 1
        for d in shape:
            n *= d
        rng = random.Random(model.stem)
        d = tmp / model.stem
        d.mkdir()
        x = d / "x.npy"
        write_npy(x, shape, [rng.gauss(0, 1) for _ in range(n)])
        w = ["--random-weights", "1"]
        # The GPU first: where it fails (no driver, say) the interpreter's
        # minutes are not spent.
        ran = []
        staged = model.stem in STAGED or model.parent.name == "ir_cases"
        for gpu in ("sm_80", "sm_90") + (("sm_75",) if staged else ()):
            y = d / f"cuda_{gpu}.npy"
            rc, out = run(exe, model, "cuda", w, x, y, gpu)
            if rc == 0:
                ran.append((gpu, y))
            elif NO_DRIVER in out or rc == 124:
                report.row(model.stem, gpu, False, out[-300:])
            else:
                report.row(model.stem, gpu, False, out[-300:] + "; " + layers(exe, model, w, x, gpu, out_dir))
        if not ran:
            return
        rc, out = run(exe, model, "ref", w, x, d / "ref.npy")
        if rc:
            return report.row(model.stem, "ref", False, out[-300:])
        ref = read_floats(d / "ref.npy")
        if not all(v == v and abs(v) != float("inf") for v in ref):
            return report.row(model.stem, "-", None, "the reference is not finite with random weights")
        for gpu, y in ran:
            # Relative error only: with untamed random weights the deep nets'
            # outputs barely depend on the input, so the batch-centred check
            # (which the tests run on tamed weights) would measure noise.
            ok, line = compare(y, d / "ref.npy")
            if not ok:
                line += "; " + layers(exe, model, w, x, gpu, out_dir)
            report.row(model.stem, gpu, ok, line)

    # The IR test cases too: every operator, sigmoid and softmax among them.
    models = sorted((root / "examples").glob("*.res")) + sorted((root / "tests/ir_cases").glob("*.res"))
    with concurrent.futures.ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        for done in concurrent.futures.as_completed([pool.submit(one, m) for m in models]):
            try:
                done.result()
            except Exception as e:  # a bug here must not cost the other rows
                report.row("?", "-", False, f"gpu_check.py: {type(e).__name__}: {e}")


def fixtures(exe, tmp, out_dir, report):
    """Step 2: the PyTorch fixtures through the GPU."""
    for name in FIXTURES:
        f = root / "tests/fixtures"
        y = tmp / f"{name}.fixture.npy"
        rc, out = run(exe, root / f"examples/{name}.res", "cuda", ["--weights", f / f"{name}.safetensors"],
                      f / f"{name}.input.npy", y)
        if rc:
            report.row(name, "PyTorch", False, out[-300:])
            continue
        ok, line = compare(y, f / f"{name}.output.npy")
        report.row(name, "PyTorch", ok, line)


def c_program(exe, tmp, out_dir, report):
    """Step 3: the static library in a C program, on the GPU."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not shutil.which("make") or not cc:
        # The machine's tooling, not resnetc: not a failure.
        return report.row("embed_cuda", "C", None, "no C compiler or make on this machine")
    out = tmp / "embed"
    out.mkdir()
    rc, log = sh(["make", "-s", "-C", root / "examples/embed_cuda", f"OUT={out}", f"RESNETC={exe}", f"CC={cc}"])
    if rc:
        return report.row("embed_cuda", "C", False, log[-300:])
    f = root / "tests/fixtures"
    x = read_floats(f / "cifar_resnet20.input.npy")
    (out / "in.f32").write_bytes(x.tobytes())
    batch = len(x) // (3 * 32 * 32)
    for program, what in (("demo", "host memory"), ("demo_device", "device memory")):
        rc, log = sh([out / program, out / "in.f32", out / "out.f32", batch])
        if rc:
            report.row(f"embed_cuda {program}", what, False, log[-300:])
            continue
        y = array.array("f")
        y.frombytes((out / "out.f32").read_bytes())
        write_npy(out / "out.npy", [batch, 10], y)
        ok, line = compare(out / "out.npy", f / "cifar_resnet20.output.npy")
        report.row(f"embed_cuda {program} (cifar_resnet20)", f"PyTorch, {what}", ok, line)


def profiles(exe, out_dir, report):
    """Step 5: every launch of resnet50 timed on its own, at batch 1 and 64,
    written to out_dir/profile_resnet50_b*.json."""
    _, cap = sh(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"])
    major = cap.strip().split(".")[0]
    arch = "sm_90" if major.isdigit() and int(major) >= 9 else "sm_80"
    for batch in (1, 64):
        name = f"profile_resnet50_b{batch}.json"
        rc, out = sh([exe, "bench", root / "examples/resnet50.res", "--target", "cuda", "--batch", batch,
                      "--gpu", arch, "--layers", "--format", "json"])
        doc = None
        if rc == 0 and "{" in out:
            try:
                doc, _ = json.JSONDecoder().raw_decode(out[out.index("{"):])
            except ValueError:
                doc = None
        if doc:
            (out_dir / name).write_text(json.dumps(doc, indent=1) + "\n")
            launches = doc.get("layers", [])
            top = sorted(launches, key=lambda l: -l["median_ms"])[:5]
            total = sum(l["median_ms"] for l in launches)
            report.add(f"- batch {batch} ({arch}): {len(launches)} launches, {total:.3f} ms in all (each on its"
                       f" own; the graph: {doc['median_ms']:.3f} ms); slowest: "
                       + ", ".join(f"{l['layer']} {l['median_ms']:.3f}" for l in top) + f" ({name})")
        else:
            with report.lock:
                report.failed += 1
            report.add(f"- batch {batch}: FAIL {' '.join(out.split())[:300]}")


def version(exe):
    """`resnetc --version`: (ok, what it said), stderr included, which is
    where a loader's reason (a missing library, too new a glibc) goes."""
    try:
        r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"cannot start {exe}: {e}"
    said = r.stdout.strip()
    if r.stderr.strip():
        said += f" (stderr: {' '.join(r.stderr.split())})"
    if r.returncode:
        return False, f"`{exe} --version` exited {r.returncode}: {said}"
    return True, said


def main():
    global deadline
    start = time.monotonic()
    ap = argparse.ArgumentParser()
    ap.add_argument("--resnetc", default=str(root / "target/release/resnetc"))
    ap.add_argument("--out", default=".")
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument("--deadline", type=float, default=540,
                    help="seconds from the start after which no new check starts (default 540)")
    args = ap.parse_args()
    exe = pathlib.Path(args.resnetc).resolve()
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report(out_dir / "gpu_check.md")
    _, gpu = sh(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    report.add(f"# resnetc GPU check\n\nGPU: {gpu}\n")
    ok, said = version(exe)
    report.add(f"resnetc: {said}")
    if not ok:
        report.add("\nFAIL: resnetc does not start, so nothing was checked")
        sys.exit(1)
    deadline = start + args.deadline

    steps = [("Examples (batch 2, full size) vs the interpreter", examples),
             ("Fixtures vs PyTorch", fixtures), ("C programs", c_program)]
    with tempfile.TemporaryDirectory() as t:
        tmp = pathlib.Path(t)
        for title, step in steps:
            if past_deadline():
                report.cut = True
                report.add(f"\n## {title}\n\n{PAST} ({args.deadline:.0f} s)")
                continue
            report.table(title)
            step(exe, tmp, out_dir, report)
    if args.no_bench:
        pass
    elif past_deadline():
        report.cut = True
        report.add(f"\n## Timings and per-launch profiles\n\n{PAST} ({args.deadline:.0f} s)")
    else:
        rc, out = sh([sys.executable, root / "bench/cuda_vs_torch.py", "--resnetc", exe], timeout=400)
        report.add("\n## Timings (bench/cuda_vs_torch.py)\n\n" + out)
        with report.lock:
            report.failed += rc != 0
        report.add("\n## Per-launch profiles\n")
        profiles(exe, out_dir, report)
    # A run the deadline cut short is not a pass, even with nothing failed.
    cut = "; stopped at the deadline, so not everything was checked" if report.cut else ""
    report.add(f"\n{report.failed} failed{cut}" if report.failed or cut else "\nall passed")
    sys.exit(1 if report.failed or cut else 0)


if __name__ == "__main__":
    main()
