#!/usr/bin/env python3
"""Issue 29's bar for `resnetc import` on the large models, which are too big
to commit: torchvision's resnet18, resnet50, resnext50_32x4d,
wide_resnet50_2, densenet121 and a U-Net, random init with randomized BN
statistics, exported by torch.onnx.export

  - opset 17, TorchScript exporter, eval mode: BN folded into the convs;
  - opset 17, TorchScript exporter, do_constant_folding=False: the
    BatchNormalization nodes kept (the script says so where the exporter
    folded them anyway);
  - the exporter's default (dynamo=True in PyTorch 2.9 and later),

then imported with `resnetc import`, run with `resnetc run --target cpu`,
and compared with PyTorch's own output (max |diff| / max |expected| <= 1e-4).
For the BN-kept resnet50 and densenet121 it also checks that the imported
model has the params/MACs of examples/resnet50.res / densenet121.res and
that the imported weights run those examples unchanged.

Needs torch, torchvision, onnx (and onnxscript for the dynamo exporter):
  pip install torch torchvision onnx onnxscript
Run from the repository root after `cargo build --release`:
  python3 scripts/import_torchvision.py [--models resnet18,unet] [--keep DIR]
Exit status 0 when every case passes.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

RESNETC = os.environ.get("RESNETC", "target/release/resnetc")


def unet(base=64, classes=2):
    import torch
    from torch import nn

    class DoubleConv(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))

    class Down(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.pool = nn.MaxPool2d(2)
            self.block = DoubleConv(cin, cout)

        def forward(self, x):
            return self.block(self.pool(x))

    class Up(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.upconv = nn.ConvTranspose2d(cin, cin // 2, 2, stride=2)
            self.block = DoubleConv(cin, cout)

        def forward(self, x, skip):
            return self.block(torch.cat([skip, self.upconv(x)], 1))

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            b = base
            self.inc = DoubleConv(3, b)
            self.down1, self.down2 = Down(b, 2 * b), Down(2 * b, 4 * b)
            self.down3, self.down4 = Down(4 * b, 8 * b), Down(8 * b, 16 * b)
            self.up1, self.up2 = Up(16 * b, 8 * b), Up(8 * b, 4 * b)
            self.up3, self.up4 = Up(4 * b, 2 * b), Up(2 * b, b)
            self.outc = nn.Conv2d(b, classes, 1)

        def forward(self, x):
            x1 = self.inc(x)
            x2 = self.down1(x1)
            x3 = self.down2(x2)
            x4 = self.down3(x3)
            x5 = self.down4(x4)
            y = self.up1(x5, x4)
            y = self.up2(y, x3)
            y = self.up3(y, x2)
            return self.outc(self.up4(y, x1))

    return UNet()


def build(name):
    import torch
    import torchvision

    torch.manual_seed(0)
    if name == "unet":
        m, shape = unet(), (1, 3, 256, 256)
    else:
        m, shape = getattr(torchvision.models, name)(weights=None), (1, 3, 224, 224)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                c = mod.num_features
                mod.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
                mod.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
                mod.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return m.eval(), shape


def export(model, x, path, variant):
    import torch

    if variant == "folded":
        torch.onnx.export(model, (x,), path, opset_version=17, dynamo=False,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    elif variant == "bn":
        torch.onnx.export(model, (x,), path, opset_version=17, dynamo=False,
                          do_constant_folding=False,
                          input_names=["input"], output_names=["output"])
    else:  # the exporter's default
        torch.onnx.export(model, (x,), path)


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}\n{p.stderr}")
    return p.stdout


def summary(res):
    s = json.loads(run([RESNETC, "summary", res, "--format", "json"]))
    return s["params"], s["macs"]


def case(name, variant, d):
    import onnx
    import torch

    model, shape = build(name)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model(x).numpy()
    onnx_path = os.path.join(d, f"{name}.{variant}.onnx")
    export(model, x, onnx_path, variant)
    ops = {n.op_type for n in onnx.load(onnx_path, load_external_data=False).graph.node}
    note = ""
    if variant == "bn" and "BatchNormalization" not in ops:
        note = " (the exporter folded BN anyway)"
    res = os.path.join(d, f"{name}_{variant}.res")
    w = os.path.join(d, f"{name}_{variant}.safetensors")
    run([RESNETC, "import", onnx_path, "-o", res, "--weights-out", w])
    xin, yout = os.path.join(d, "x.npy"), os.path.join(d, "y.npy")
    np.save(xin, x.numpy())
    run([RESNETC, "run", res, "--weights", w, "--input", xin, "--output", yout, "--target", "cpu"])
    got = np.load(yout)
    err = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
    ok = err <= 1e-4
    extra = ""
    example = {"resnet50": "examples/resnet50.res", "densenet121": "examples/densenet121.res"}.get(name)
    if variant == "bn" and example and not note:
        same = summary(res) == summary(example)
        run([RESNETC, "run", example, "--weights", w, "--input", xin, "--output", yout, "--target", "cpu"])
        err2 = float(np.max(np.abs(np.load(yout) - want)) / np.max(np.abs(want)))
        extra = f"; params/MACs as {example}: {same}; weights run {example}: rel {err2:.2e}"
        ok = ok and same and err2 <= 1e-4
    lines = sum(1 for _ in open(res))
    print(f"{'PASS' if ok else 'FAIL'} {name:18} {variant:7} rel {err:.2e}, {lines} lines of .res{note}{extra}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18,resnet50,resnext50_32x4d,wide_resnet50_2,densenet121,unet")
    ap.add_argument("--variants", default="folded,bn,default")
    ap.add_argument("--keep", help="keep the files in this directory")
    a = ap.parse_args()
    d = a.keep or tempfile.mkdtemp()
    os.makedirs(d, exist_ok=True)
    failed = 0
    for name in a.models.split(","):
        for variant in a.variants.split(","):
            try:
                failed += not case(name, variant, d)
            except Exception as e:  # report and go on with the next case
                failed += 1
                print(f"FAIL {name:18} {variant:7} {e}")
    print(f"{failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
