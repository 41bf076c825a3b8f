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
"""
import argparse
import json
import statistics
import subprocess

import torch
import torchvision

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
    # Without --gpu and --sms, bench builds for the GPU's own architecture
    # (Hopper: sm_90) and plans for its own multiprocessors (an H100 SXM's
    # 132, an H100 PCIe's 114).
    out = subprocess.run(
        [exe, "bench", f"examples/{name}.res", "--target", "cuda", "--batch", str(batch),
         "--format", "json", *flags],
        check=True, capture_output=True, text=True,
    )
    report = json.loads(out.stdout)
    return report["median_ms"], f"{report['gpu']}, {report['sms']} SMs"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--resnetc", default="target/release/resnetc")
    args = ap.parse_args()
    print(f"GPU: {torch.cuda.get_device_name()}, PyTorch {torch.__version__}")
    print("| model | batch | resnetc code | resnetc ms | no split-K ms | PyTorch ms | resnetc / PyTorch"
          " | resnetc img/s | PyTorch img/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, batch in CASES:
        r, gpu = resnetc_ms(args.resnetc, name, batch)
        r1, _ = resnetc_ms(args.resnetc, name, batch, "--max-split-k", "1")
        t = torch_ms(name, batch)
        print(f"| {name} | {batch} | {gpu} | {r:.2f} | {r1:.2f} | {t:.2f} | {r / t:.2f} | {batch * 1e3 / r:.0f}"
              f" | {batch * 1e3 / t:.0f} |", flush=True)


if __name__ == "__main__":
    main()
