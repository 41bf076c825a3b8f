//! The second half of a split-K GEMM. At small batches a late layer has
//! too few output tiles to fill the GPU (resnet50's last 3×3 convs at
//! batch 1: 49 pixels by 512 channels), so its K is cut into slices, one
//! block per tile and slice, each writing its raw partial tile to scratch
//! memory (`gemm::Split`). This kernel then sums the slices of every
//! output element in slice order, applies the fused epilogue (bias,
//! residual add, activation) and stores the result where the unsplit
//! kernel would have, concat slices included. A fixed order rather than
//! atomics: results do not depend on timing, and the emulation's
//! thread-order test still holds.

use super::gemm::{ConvGemm, Split};
use super::kernels::{epilogue_value, per_output, FusedArgs};
use super::simt::Kern;
use crate::ir::op::Fused;

/// Emits the sum of the `split.ways` slices of `c`'s partial tiles.
/// Arguments: those of the layer's GEMM kernel (y, x, weight, fused
/// operands, the scratch at `split.scratch`); `strides` are the image
/// strides of y and the residual.
pub fn emit(
    k: &mut Kern<'_, '_>,
    c: &ConvGemm,
    split: Split,
    fused: &Fused,
    f: &FusedArgs,
    strides: (u64, u64),
) {
    let (ys, zs) = strides;
    let (y, ws) = (k.arg(0), k.arg(split.scratch));
    let bias = f.bias.map(|b| k.arg(b));
    let z = f.residual.map(|r| k.arg(r));
    let (channels, pixels) = (c.groups * c.ocg, c.pixels());
    let npix = k.e.mul(k.batch, k.e.int(pixels));
    per_output(k, channels * pixels, |e, img, r| {
        let (oc, pix) = e.udivrem(r, e.int(pixels));
        let pg = e.add(e.mul(img, e.int(pixels)), pix);
        let acc = e.slot();
        e.set(acc, e.f32(0.0));
        for s in 0..split.ways {
            let row = e.add(e.int(s * channels), oc);
            let v = e.load(ws, e.add(e.mul(row, npix), pg));
            let sum = e.fadd(e.get(acc), v);
            e.set(acc, sum);
        }
        let zi = z.map(|z| e.at(z, e.add(e.mul(img, e.int(zs)), r)));
        let v = epilogue_value(e, fused, e.get(acc), bias, oc, zi);
        e.store(y, e.add(e.mul(img, e.int(ys)), r), v);
    });
}
