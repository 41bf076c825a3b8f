"""CUDA timings, resnetc vs PyTorch eager (cuDNN) on the same GPU, fp32 with
TF32 off on both sides (resnetc never uses tensor cores).

    python3 bench/cuda_vs_torch.py [--resnetc target/release/resnetc]

Needs a GPU with its driver, PyTorch and torchvision; resnetc runs its own
`bench --target cuda` (CUDA events around graph launches, median of 100).
PyTorch: the torchvision model in eval mode, 20 warm-up runs, then the
median of 100 runs timed with CUDA events. Weights are random on both sides
(timing does not depend on them). Prints a markdown table; its "no split-K"
column is resnetc with `--max-split-k 1`, which shows what splitting K
brings (the cost model's choice, not yet calibrated on a GPU).

A case that fails (on either side) is a row with the reason, resnetc's
stderr included, and the other cases still run; the exit code is 1 if any
failed. Paths are resolved from this script, not the working directory.
"""
import argparse
import json
import pathlib
import statistics
import subprocess
import sys

root = pathlib.Path(__file__).resolve().parent.parent

CASES = [("resnet50", 1), ("resnet50", 64), ("resnet18", 1), ("densenet121", 1)]


def torch_ms(name, batch):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    model = getattr(torchvision.models, name)().cuda().eval()
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    times = []
    with torch.no_grad():
        for _ in range(20):
            model(x)
        for _ in range(100):
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            a.record()
            model(x)
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
    return statistics.median(times)


def resnetc_ms(exe, name, batch, *flags):
    """(median ms, code description), or raises RuntimeError with resnetc's
    exit code and stderr."""
    # Without --gpu and --sms, bench builds for the GPU's own architecture
    # (Hopper: sm_90) and plans for its own multiprocessors (an H100 SXM's
    # 132, an H100 PCIe's 114).
    cmd = [str(exe), "bench", str(root / f"examples/{name}.res"), "--target", "cuda", "--batch", str(batch),
           "--format", "json", *flags]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"resnetc: {e}") from e
    if out.returncode:
        raise RuntimeError(f"resnetc exit {out.returncode}: {' '.join(out.stderr.split())[-400:]}")
    try:
        report = json.loads(out.stdout)
        return report["median_ms"], f"{report['gpu']}, {report['sms']} SMs"
    except (ValueError, KeyError) as e:
        raise RuntimeError(f"resnetc's report unreadable ({e}): {out.stdout[:200]!r}") from e


def cell(f):
    """f()'s value, or the error as text (every case gets its row)."""
    try:
        return f(), None
    except RuntimeError as e:  # resnetc_ms's, and PyTorch's CUDA errors
        return None, " ".join(str(e).split())
    except Exception as e:  # PyTorch's other errors are not one class
        return None, " ".join(f"{type(e).__name__}: {e}".split())


def main():
    global torch, torchvision
    ap = argparse.ArgumentParser()
    ap.add_argument("--resnetc", default=str(root / "target/release/resnetc"))
    args = ap.parse_args()
    try:
        import torch
        import torchvision
        print(f"GPU: {torch.cuda.get_device_name()}, PyTorch {torch.__version__}")
    except Exception as e:  # ImportError, or no GPU for torch
        torch = None
        print(f"PyTorch unusable ({type(e).__name__}: {' '.join(str(e).split())}): resnetc alone")
    print("| model | batch | resnetc code | resnetc ms | no split-K ms | PyTorch ms | resnetc / PyTorch"
          " | resnetc img/s | PyTorch img/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    failed, errors = torch is None, []
    for name, batch in CASES:
        (r, err) = cell(lambda: resnetc_ms(args.resnetc, name, batch))
        (r1, err1) = cell(lambda: resnetc_ms(args.resnetc, name, batch, "--max-split-k", "1"))
        (t, terr) = cell(lambda: torch_ms(name, batch)) if torch else (None, "no PyTorch")
        failed |= bool(err or err1 or terr)
        ms = lambda v: f"{v[0]:.2f}" if v else "FAIL"
        rate = lambda v: f"{batch * 1e3 / v:.0f}" if v else "-"
        print(f"| {name} | {batch} | {r[1] if r else '-'} | {ms(r)} | {ms(r1)} | {f'{t:.2f}' if t else 'FAIL'}"
              f" | {f'{r[0] / t:.2f}' if r and t else '-'} | {rate(r[0] if r else None)} | {rate(t)} |", flush=True)
        errors += [f"- {name} b{batch}, {what}: {e}" for what, e in
                   (("resnetc", err), ("resnetc --max-split-k 1", err1), ("PyTorch", terr)) if e]
    # After the table, which a line between its rows would end.
    if errors:
        print("\nFailures:\n\n" + "\n".join(errors), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
