//! The reference interpreter's operators: the oracle every optimized back end
//! is judged against. Plain loops with PyTorch (eval-mode) semantics; sums are
//! accumulated in f64 and rounded to f32 once, so results agree with PyTorch to
//! f32 rounding. The only concession to speed is the loop order of the
//! convolutions (innermost loop over a contiguous row, bounds hoisted), which
//! keeps resnet50 at 224x224 within seconds on one core.
//!
//! Inputs are assumed shape-checked by the IR; invariants are `debug_assert!`ed.

use std::ops::Range;

use crate::ir::op::{nearest_src, Scale};
use crate::ir::sizes::{conv_out, conv_transpose_out, pool_out};
use crate::tensor::Tensor;

/// `nn.Conv2d` hyper-parameters; 2-element arrays are `[h, w]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    pub stride: [usize; 2],
    pub pad: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

/// `nn.ConvTranspose2d` hyper-parameters; 2-element arrays are `[h, w]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTranspose2d {
    pub stride: [usize; 2],
    pub pad: [usize; 2],
    pub dilation: [usize; 2],
    pub output_padding: [usize; 2],
    pub groups: usize,
}

/// `nn.MaxPool2d` / `nn.AvgPool2d` hyper-parameters; 2-element arrays are `[h, w]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2d {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub pad: [usize; 2],
    pub dilation: [usize; 2],
    pub ceil_mode: bool,
    pub count_include_pad: bool,
}

fn dims4(t: &Tensor) -> [usize; 4] {
    debug_assert_eq!(
        t.shape.len(),
        4,
        "expected a rank-4 tensor, got {:?}",
        t.shape
    );
    [t.shape[0], t.shape[1], t.shape[2], t.shape[3]]
}

/// The indices `i` in `0..n_i` whose image `j = i*s + off` lies in `0..n_j`.
/// Used for both convolution directions: it turns the per-element bounds test
/// of a kernel tap into one contiguous (possibly strided) run per row.
fn tap_range(n_i: usize, n_j: usize, s: usize, off: isize) -> Range<usize> {
    debug_assert!(s > 0);
    // j >= 0  <=>  i >= ceil(-off / s)
    let lo = if off >= 0 {
        0
    } else {
        off.unsigned_abs().div_ceil(s)
    };
    // j < n_j  <=>  i*s < n_j - off  <=>  i < ceil((n_j - off) / s)
    let lim = n_j as isize - off;
    let hi = if lim <= 0 {
        0
    } else {
        (lim as usize).div_ceil(s).min(n_i)
    };
    lo.min(hi)..hi
}

/// `acc[k] += wv * src[k*step]` over `acc`: the one hot loop of both
/// convolutions. The unit-stride case is split out so it vectorizes.
#[inline]
fn axpy_strided(acc: &mut [f64], src: &[f32], step: usize, wv: f64) {
    if step == 1 {
        // Equal-length slices let the compiler drop the bounds checks.
        let src = &src[..acc.len()];
        for (a, &v) in acc.iter_mut().zip(src) {
            *a += wv * f64::from(v);
        }
    } else {
        for (a, &v) in acc.iter_mut().zip(src.iter().step_by(step)) {
            *a += wv * f64::from(v);
        }
    }
}

/// `F.conv2d`: x `[n, cin, h, w]`, w `[cout, cin/groups, kh, kw]`, bias `[cout]`.
pub fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, p: &Conv2d) -> Tensor {
    let [n, cin, h, wd] = dims4(x);
    let [cout, cin_g, kh, kw] = dims4(w);
    let g = p.groups;
    debug_assert!(g > 0 && cin % g == 0 && cout % g == 0, "bad groups {g}");
    debug_assert_eq!(cin_g, cin / g, "weight in-channels must be cin/groups");
    debug_assert!(b.is_none_or(|b| b.data.len() == cout));
    let cout_g = cout / g;
    let [sy, sx] = p.stride;
    let [dy, dx] = p.dilation;
    let oh = conv_out(h, kh, sy, p.pad[0], dy).expect("conv2d: kernel larger than padded input");
    let ow = conv_out(wd, kw, sx, p.pad[1], dx).expect("conv2d: kernel larger than padded input");

    let plane_in = h * wd;
    let plane_out = oh * ow;
    let mut y = vec![0f32; n * cout * plane_out];
    // One f64 output plane per output channel: every (input channel, tap)
    // pair adds a shifted, strided copy of an input plane into it.
    let mut acc = vec![0f64; plane_out];
    for ni in 0..n {
        for gi in 0..g {
            for ocl in 0..cout_g {
                let oc = gi * cout_g + ocl;
                acc.fill(b.map_or(0.0, |b| f64::from(b.data[oc])));
                for icl in 0..cin_g {
                    let ic = gi * cin_g + icl;
                    let xp = &x.data[(ni * cin + ic) * plane_in..][..plane_in];
                    for ky in 0..kh {
                        // Input row of output row `oy` is `oy*sy + offy`.
                        let offy = (ky * dy) as isize - p.pad[0] as isize;
                        let rows = tap_range(oh, h, sy, offy);
                        for kx in 0..kw {
                            let wv = f64::from(w.data[((oc * cin_g + icl) * kh + ky) * kw + kx]);
                            let offx = (kx * dx) as isize - p.pad[1] as isize;
                            let cols = tap_range(ow, wd, sx, offx);
                            if cols.is_empty() {
                                continue;
                            }
                            let ix0 = ((cols.start * sx) as isize + offx) as usize;
                            for oy in rows.clone() {
                                let iy = ((oy * sy) as isize + offy) as usize;
                                let src = &xp[iy * wd + ix0..(iy + 1) * wd];
                                let dst = &mut acc[oy * ow + cols.start..oy * ow + cols.end];
                                axpy_strided(dst, src, sx, wv);
                            }
                        }
                    }
                }
                let out = &mut y[(ni * cout + oc) * plane_out..][..plane_out];
                for (o, &a) in out.iter_mut().zip(&acc) {
                    *o = a as f32;
                }
            }
        }
    }
    Tensor::from_vec(&[n, cout, oh, ow], y)
}

/// `F.conv_transpose2d`: x `[n, cin, h, w]`, w `[cin, cout/groups, kh, kw]`,
/// bias `[cout]`. Input pixel `(ih, iw)` scatters to
/// `(ih*s - pad + kh*d, iw*s - pad + kw*d)`; out-of-range targets are dropped.
pub fn conv_transpose2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, p: &ConvTranspose2d) -> Tensor {
    let [n, cin, h, wd] = dims4(x);
    let [wcin, cout_g, kh, kw] = dims4(w);
    let g = p.groups;
    debug_assert!(g > 0 && cin % g == 0, "bad groups {g}");
    debug_assert_eq!(
        wcin, cin,
        "transposed-conv weight is [cin, cout/groups, kh, kw]"
    );
    let cin_g = cin / g;
    let cout = cout_g * g;
    debug_assert!(b.is_none_or(|b| b.data.len() == cout));
    let [sy, sx] = p.stride;
    let [dy, dx] = p.dilation;
    let oh = conv_transpose_out(h, kh, sy, p.pad[0], dy, p.output_padding[0])
        .expect("conv_transpose2d: empty output");
    let ow = conv_transpose_out(wd, kw, sx, p.pad[1], dx, p.output_padding[1])
        .expect("conv_transpose2d: empty output");

    let plane_in = h * wd;
    let plane_out = oh * ow;
    let mut y = vec![0f32; n * cout * plane_out];
    // Same scheme as conv2d with the roles swapped: the contiguous run is
    // over input columns and the stride is applied on the output side.
    let mut acc = vec![0f64; plane_out];
    for ni in 0..n {
        for gi in 0..g {
            for ocl in 0..cout_g {
                let oc = gi * cout_g + ocl;
                acc.fill(b.map_or(0.0, |b| f64::from(b.data[oc])));
                for icl in 0..cin_g {
                    let ic = gi * cin_g + icl;
                    let xp = &x.data[(ni * cin + ic) * plane_in..][..plane_in];
                    for ky in 0..kh {
                        // Output row of input row `iy` is `iy*sy + offy`.
                        let offy = (ky * dy) as isize - p.pad[0] as isize;
                        let rows = tap_range(h, oh, sy, offy);
                        for kx in 0..kw {
                            let wv = f64::from(w.data[((ic * cout_g + ocl) * kh + ky) * kw + kx]);
                            let offx = (kx * dx) as isize - p.pad[1] as isize;
                            let cols = tap_range(wd, ow, sx, offx);
                            if cols.is_empty() {
                                continue;
                            }
                            let ox0 = ((cols.start * sx) as isize + offx) as usize;
                            for iy in rows.clone() {
                                let oy = ((iy * sy) as isize + offy) as usize;
                                let src = &xp[iy * wd + cols.start..iy * wd + cols.end];
                                let dst = acc[oy * ow + ox0..(oy + 1) * ow].iter_mut().step_by(sx);
                                for (a, &v) in dst.zip(src) {
                                    *a += wv * f64::from(v);
                                }
                            }
                        }
                    }
                }
                let out = &mut y[(ni * cout + oc) * plane_out..][..plane_out];
                for (o, &a) in out.iter_mut().zip(&acc) {
                    *o = a as f32;
                }
            }
        }
    }
    Tensor::from_vec(&[n, cout, oh, ow], y)
}

/// Eval-mode batch norm over axis 1 of `[n, c, ...]` (so `[n,c,h,w]` and `[n,c]`):
/// `(x - mean) / sqrt(var + eps) * gamma + beta`, evaluated in f64.
pub fn batchnorm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
) -> Tensor {
    debug_assert!(x.shape.len() >= 2);
    let (n, c) = (x.shape[0], x.shape[1]);
    let inner: usize = x.shape[2..].iter().product();
    for v in [gamma, beta, mean, var] {
        debug_assert_eq!(v.data.len(), c, "batchnorm vectors must have length c");
    }
    let mut y = vec![0f32; x.len()];
    for ni in 0..n {
        for ci in 0..c {
            let m = f64::from(mean.data[ci]);
            let sd = (f64::from(var.data[ci]) + eps).sqrt();
            let gm = f64::from(gamma.data[ci]);
            let bt = f64::from(beta.data[ci]);
            let at = (ni * c + ci) * inner;
            for (o, &v) in y[at..at + inner].iter_mut().zip(&x.data[at..at + inner]) {
                *o = ((f64::from(v) - m) / sd * gm + bt) as f32;
            }
        }
    }
    Tensor::from_vec(&x.shape, y)
}

fn pool_dims(x: &Tensor, p: &Pool2d) -> ([usize; 4], usize, usize) {
    let [n, c, h, w] = dims4(x);
    let oh = pool_out(
        h,
        p.kernel[0],
        p.stride[0],
        p.pad[0],
        p.dilation[0],
        p.ceil_mode,
    )
    .expect("pool: window larger than padded input");
    let ow = pool_out(
        w,
        p.kernel[1],
        p.stride[1],
        p.pad[1],
        p.dilation[1],
        p.ceil_mode,
    )
    .expect("pool: window larger than padded input");
    ([n, c, h, w], oh, ow)
}

/// `F.max_pool2d`: padding acts as -inf (never wins), dilation spaces the
/// window taps, and NaN propagates as in PyTorch.
pub fn maxpool2d(x: &Tensor, p: &Pool2d) -> Tensor {
    let ([n, c, h, w], oh, ow) = pool_dims(x, p);
    let [kh, kw] = p.kernel;
    let [sy, sx] = p.stride;
    let [dy, dx] = p.dilation;
    let mut y = Vec::with_capacity(n * c * oh * ow);
    for plane in x.data.chunks_exact(h * w).take(n * c) {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut m = f32::NEG_INFINITY;
                for ky in 0..kh {
                    let iy = (oy * sy + ky * dy) as isize - p.pad[0] as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    for kx in 0..kw {
                        let ix = (ox * sx + kx * dx) as isize - p.pad[1] as isize;
                        if ix < 0 || ix >= w as isize {
                            continue;
                        }
                        let v = plane[iy as usize * w + ix as usize];
                        if v > m || v.is_nan() {
                            m = v;
                        }
                    }
                }
                y.push(m);
            }
        }
    }
    Tensor::from_vec(&[n, c, oh, ow], y)
}

/// `F.avg_pool2d` (dilation 1) with PyTorch's divisor rule: with
/// `count_include_pad` the divisor is the window clipped to the padded input
/// (so ceil-mode overhang past the padding is not counted), otherwise it is
/// the number of real input elements in the window.
pub fn avgpool2d(x: &Tensor, p: &Pool2d) -> Tensor {
    debug_assert_eq!(p.dilation, [1, 1], "avg_pool2d has no dilation");
    let ([n, c, h, w], oh, ow) = pool_dims(x, p);
    let [kh, kw] = p.kernel;
    let [sy, sx] = p.stride;
    let [py, px] = p.pad;
    let mut y = Vec::with_capacity(n * c * oh * ow);
    for plane in x.data.chunks_exact(h * w).take(n * c) {
        for oy in 0..oh {
            // Window rows in padded coordinates (offset by +pad, so unsigned).
            let y0 = oy * sy;
            let y1 = (y0 + kh).min(h + 2 * py);
            // ...and clipped to the real input, back in input coordinates.
            let (r0, r1) = (y0.max(py) - py, y1.min(h + py).max(py) - py);
            for ox in 0..ow {
                let x0 = ox * sx;
                let x1 = (x0 + kw).min(w + 2 * px);
                let (c0, c1) = (x0.max(px) - px, x1.min(w + px).max(px) - px);
                let mut sum = 0f64;
                for r in r0..r1 {
                    for &v in &plane[r * w + c0..r * w + c1.max(c0)] {
                        sum += f64::from(v);
                    }
                }
                let real = r1.saturating_sub(r0) * c1.saturating_sub(c0);
                let divisor = if p.count_include_pad {
                    // hend = min(hstart + k, h + pad) in PyTorch's signed
                    // coordinates, which is min(y0 + k, h + 2*pad) here.
                    (y1 - y0) * (x1 - x0)
                } else {
                    real
                };
                // PyTorch writes 0 for a window with no real element.
                y.push(if real == 0 {
                    0.0
                } else {
                    (sum / divisor as f64) as f32
                });
            }
        }
    }
    Tensor::from_vec(&[n, c, oh, ow], y)
}

/// `[n, c, h, w] -> [n, c, 1, 1]` mean over the spatial plane.
pub fn global_avgpool(x: &Tensor) -> Tensor {
    let [n, c, h, w] = dims4(x);
    let plane = h * w;
    let y = x
        .data
        .chunks_exact(plane)
        .take(n * c)
        .map(|p| (p.iter().map(|&v| f64::from(v)).sum::<f64>() / plane as f64) as f32)
        .collect();
    Tensor::from_vec(&[n, c, 1, 1], y)
}

/// `torch.flatten(x, 1)`: `[n, ...] -> [n, prod(...)]`; row-major data is unchanged.
pub fn flatten(x: &Tensor) -> Tensor {
    debug_assert!(!x.shape.is_empty());
    let n = x.shape[0];
    let rest = x.shape[1..].iter().product();
    Tensor::from_vec(&[n, rest], x.data.clone())
}

/// `F.linear`: x `[n, in]`, w `[out, in]`, bias `[out]`; `y = x Wᵀ + b`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
    debug_assert_eq!(x.shape.len(), 2);
    debug_assert_eq!(w.shape.len(), 2);
    let (n, fin) = (x.shape[0], x.shape[1]);
    let fout = w.shape[0];
    debug_assert_eq!(w.shape[1], fin, "linear: weight is [out, in]");
    debug_assert!(b.is_none_or(|b| b.data.len() == fout));
    let mut y = Vec::with_capacity(n * fout);
    for xr in x.data.chunks_exact(fin).take(n) {
        for (o, wr) in w.data.chunks_exact(fin).take(fout).enumerate() {
            let dot: f64 = xr
                .iter()
                .zip(wr)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            let bias = b.map_or(0.0, |b| f64::from(b.data[o]));
            y.push((dot + bias) as f32);
        }
    }
    Tensor::from_vec(&[n, fout], y)
}

fn map(x: &Tensor, f: impl Fn(f32) -> f32) -> Tensor {
    Tensor::from_vec(&x.shape, x.data.iter().map(|&v| f(v)).collect())
}

/// `max(x, 0)`; written as a comparison so NaN propagates like PyTorch's.
pub fn relu(x: &Tensor) -> Tensor {
    map(x, |v| if v < 0.0 { 0.0 } else { v })
}

/// `min(max(x, 0), 6)`; `f32::clamp` propagates NaN like PyTorch.
pub fn relu6(x: &Tensor) -> Tensor {
    map(x, |v| v.clamp(0.0, 6.0))
}

/// `x > 0 ? x : x * slope`, as PyTorch writes it.
pub fn leaky_relu(x: &Tensor, slope: f32) -> Tensor {
    map(x, |v| if v > 0.0 { v } else { v * slope })
}

/// `1 / (1 + exp(-x))` in f64 (saturates cleanly to 0 and 1).
pub fn sigmoid(x: &Tensor) -> Tensor {
    map(x, |v| (1.0 / (1.0 + (-f64::from(v)).exp())) as f32)
}

/// Elementwise sum of two same-shape tensors.
pub fn add(a: &Tensor, b: &Tensor) -> Tensor {
    debug_assert_eq!(a.shape, b.shape, "add: shapes differ");
    Tensor::from_vec(
        &a.shape,
        a.data.iter().zip(&b.data).map(|(&u, &v)| u + v).collect(),
    )
}

/// `a * b` with PyTorch's broadcasting, for `b` of `a`'s shape or
/// `[N, C, 1, 1]` (one factor per image and channel).
pub fn mul(a: &Tensor, b: &Tensor) -> Tensor {
    let per_channel = b.shape.len() == 4 && b.shape[2..] == [1, 1] && b.shape != a.shape;
    debug_assert!(per_channel || a.shape == b.shape, "mul: shapes differ");
    let plane: usize = if per_channel {
        a.shape[2..].iter().product()
    } else {
        1
    };
    Tensor::from_vec(
        &a.shape,
        a.data
            .iter()
            .enumerate()
            .map(|(i, &u)| u * b.data[i / plane])
            .collect(),
    )
}

/// `torch.cat(xs, 1)` for tensors of rank >= 2 that agree on every other axis.
pub fn concat_channels(xs: &[&Tensor]) -> Tensor {
    assert!(!xs.is_empty(), "concat of nothing");
    let first = xs[0];
    debug_assert!(first.shape.len() >= 2);
    let n = first.shape[0];
    for t in xs {
        debug_assert!(
            t.shape.len() == first.shape.len()
                && t.shape[0] == n
                && t.shape[2..] == first.shape[2..],
            "concat: {:?} vs {:?}",
            t.shape,
            first.shape
        );
    }
    let c: usize = xs.iter().map(|t| t.shape[1]).sum();
    let mut shape = first.shape.clone();
    shape[1] = c;
    let mut y = Vec::with_capacity(shape.iter().product());
    // Per batch item, each input contributes one contiguous block.
    for ni in 0..n {
        for t in xs {
            let block = t.len() / n.max(1);
            y.extend_from_slice(&t.data[ni * block..(ni + 1) * block]);
        }
    }
    Tensor::from_vec(&shape, y)
}

/// `softmax(x, dim=1)` for `[n, k]` (classes) or `[n, c, ...]` (per pixel over
/// channels): subtracts the max first, exponentials and sums in f64.
pub fn softmax(x: &Tensor) -> Tensor {
    debug_assert!(x.shape.len() >= 2);
    let (n, c) = (x.shape[0], x.shape[1]);
    let inner: usize = x.shape[2..].iter().product();
    let mut y = vec![0f32; x.len()];
    for ni in 0..n {
        let base = ni * c * inner;
        for j in 0..inner {
            let at = |ci: usize| base + ci * inner + j;
            let m = (0..c)
                .map(|ci| f64::from(x.data[at(ci)]))
                .fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = (0..c).map(|ci| (f64::from(x.data[at(ci)]) - m).exp()).sum();
            for ci in 0..c {
                y[at(ci)] = ((f64::from(x.data[at(ci)]) - m).exp() / sum) as f32;
            }
        }
    }
    Tensor::from_vec(&x.shape, y)
}

/// Source index of each output pixel along one axis for nearest mode:
/// `floor(dst / s)` for a whole factor, else PyTorch's `nearest_idx`.
fn nearest_axis(scale: Scale, inp: usize) -> Vec<usize> {
    let out = scale.out(inp);
    (0..out)
        .map(|o| match scale {
            Scale::Whole(f) => o / f,
            Scale::Ratio { step, .. } => nearest_src(o, inp, out, step),
        })
        .collect()
}

/// `F.interpolate(mode='nearest', scale_factor=s or size=...)`.
pub fn upsample_nearest(x: &Tensor, scale: [Scale; 2]) -> Tensor {
    let [n, c, h, w] = dims4(x);
    let (rows, cols) = (nearest_axis(scale[0], h), nearest_axis(scale[1], w));
    let (oh, ow) = (rows.len(), cols.len());
    let mut y = Vec::with_capacity(n * c * oh * ow);
    for plane in x.data.chunks_exact(h * w).take(n * c) {
        for &r in &rows {
            let row = &plane[r * w..][..w];
            y.extend(cols.iter().map(|&q| row[q]));
        }
    }
    Tensor::from_vec(&[n, c, oh, ow], y)
}

/// PyTorch's source coordinate for bilinear interpolation along one axis:
/// returns (lower index, upper index, weight of the upper index).
fn bilinear_src(
    dst: usize,
    input: usize,
    output: usize,
    scale: Scale,
    align_corners: bool,
) -> (usize, usize, f64) {
    let src = if align_corners {
        if output > 1 {
            dst as f64 * (input - 1) as f64 / (output - 1) as f64
        } else {
            0.0
        }
    } else {
        // PyTorch clamps negative source coordinates to 0.
        let src = match scale {
            Scale::Whole(f) => (dst as f64 + 0.5) / f as f64 - 0.5,
            Scale::Ratio { step, .. } => step as f64 * (dst as f64 + 0.5) - 0.5,
        };
        src.max(0.0)
    };
    let i0 = (src.floor() as usize).min(input - 1);
    let i1 = (i0 + 1).min(input - 1);
    // PyTorch clamps the weight to [0, 1] (past the last pixel both
    // indices are the last one).
    (i0, i1, (src - i0 as f64).clamp(0.0, 1.0))
}

/// `F.interpolate(mode='bilinear', scale_factor=s or size=...,
/// align_corners=...)`, evaluated in f64.
pub fn upsample_bilinear(x: &Tensor, scale: [Scale; 2], align_corners: bool) -> Tensor {
    let [n, c, h, w] = dims4(x);
    let (oh, ow) = (scale[0].out(h), scale[1].out(w));
    let ys: Vec<_> = (0..oh)
        .map(|d| bilinear_src(d, h, oh, scale[0], align_corners))
        .collect();
    let xs: Vec<_> = (0..ow)
        .map(|d| bilinear_src(d, w, ow, scale[1], align_corners))
        .collect();
    let mut y = Vec::with_capacity(n * c * oh * ow);
    for plane in x.data.chunks_exact(h * w).take(n * c) {
        let at = |r: usize, q: usize| f64::from(plane[r * w + q]);
        for &(y0, y1, ly) in &ys {
            for &(x0, x1, lx) in &xs {
                let top = (1.0 - lx) * at(y0, x0) + lx * at(y0, x1);
                let bot = (1.0 - lx) * at(y1, x0) + lx * at(y1, x1);
                y.push(((1.0 - ly) * top + ly * bot) as f32);
            }
        }
    }
    Tensor::from_vec(&[n, c, oh, ow], y)
}

/// The option-A ResNet shortcut: `x[:, :, ::s, ::s]` zero-padded on the channel
/// axis by `(out-in)/2` before and the rest after; spatial size `ceil(h/s)`.
pub fn channel_pad(x: &Tensor, out_channels: usize, stride: usize) -> Tensor {
    let [n, c, h, w] = dims4(x);
    debug_assert!(out_channels >= c && stride > 0);
    let before = (out_channels - c) / 2;
    let (oh, ow) = (h.div_ceil(stride), w.div_ceil(stride));
    let mut y = vec![0f32; n * out_channels * oh * ow];
    for ni in 0..n {
        for ci in 0..c {
            let src = &x.data[(ni * c + ci) * h * w..][..h * w];
            let dst = &mut y[(ni * out_channels + before + ci) * oh * ow..][..oh * ow];
            for oy in 0..oh {
                for ox in 0..ow {
                    dst[oy * ow + ox] = src[oy * stride * w + ox * stride];
                }
            }
        }
    }
    Tensor::from_vec(&[n, out_channels, oh, ow], y)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], data: &[f32]) -> Tensor {
        Tensor::from_vec(shape, data.to_vec())
    }

    fn iota(shape: &[usize]) -> Tensor {
        let len = shape.iter().product();
        Tensor::from_vec(shape, (0..len).map(|i| i as f32).collect())
    }

    /// Deterministic uniform values in [-1, 1) (SplitMix64), no dependencies.
    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
        let len = shape.iter().product();
        let data = (0..len)
            .map(|_| {
                s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = s;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                ((z >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) as f32
            })
            .collect();
        Tensor::from_vec(shape, data)
    }

    #[track_caller]
    fn close(got: &Tensor, shape: &[usize], want: &[f32], tol: f32) {
        assert_eq!(got.shape, shape, "shape");
        assert_eq!(got.data.len(), want.len(), "length");
        for (i, (&g, &w)) in got.data.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol * (1.0 + w.abs()),
                "element {i}: got {g}, want {w}\n{:?}",
                got.data
            );
        }
    }

    fn cp(s: usize, pad: usize, d: usize, groups: usize) -> Conv2d {
        Conv2d {
            stride: [s, s],
            pad: [pad, pad],
            dilation: [d, d],
            groups,
        }
    }

    /// Direct definition of a convolution: gather each output element from
    /// the signed input coordinate, skipping taps that land in the padding.
    fn ref_conv(x: &Tensor, w: &Tensor, b: Option<&Tensor>, p: &Conv2d) -> Tensor {
        let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
        let (cout, cpg, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
        let opg = cout / p.groups;
        let oh = (h + 2 * p.pad[0] - p.dilation[0] * (kh - 1) - 1) / p.stride[0] + 1;
        let ow = (wd + 2 * p.pad[1] - p.dilation[1] * (kw - 1) - 1) / p.stride[1] + 1;
        let mut y = Tensor::zeros(&[n, cout, oh, ow]);
        for b_ in 0..n {
            for o in 0..cout {
                for i in 0..oh {
                    for j in 0..ow {
                        let mut s = b.map_or(0.0, |b| b.data[o] as f64);
                        for c in 0..cpg {
                            let ic = (o / opg) * cpg + c;
                            for u in 0..kh {
                                for v in 0..kw {
                                    let r = (i * p.stride[0] + u * p.dilation[0]) as i64
                                        - p.pad[0] as i64;
                                    let q = (j * p.stride[1] + v * p.dilation[1]) as i64
                                        - p.pad[1] as i64;
                                    if r < 0 || q < 0 || r >= h as i64 || q >= wd as i64 {
                                        continue;
                                    }
                                    let xv = x.data
                                        [((b_ * cin + ic) * h + r as usize) * wd + q as usize];
                                    let wv = w.data[((o * cpg + c) * kh + u) * kw + v];
                                    s += xv as f64 * wv as f64;
                                }
                            }
                        }
                        y.data[((b_ * cout + o) * oh + i) * ow + j] = s as f32;
                    }
                }
            }
        }
        y
    }

    /// Transposed convolution as a gather: output (r, q) receives input
    /// (i, j) through tap (u, v) exactly when r = i*s - p + u*d, i.e. when
    /// r + p - u*d is a non-negative multiple of s.
    fn ref_conv_t(x: &Tensor, w: &Tensor, b: Option<&Tensor>, p: &ConvTranspose2d) -> Tensor {
        let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
        let (opg, kh, kw) = (w.shape[1], w.shape[2], w.shape[3]);
        let ipg = cin / p.groups;
        let cout = opg * p.groups;
        let oh = (h - 1) * p.stride[0] + p.dilation[0] * (kh - 1) + p.output_padding[0] + 1
            - 2 * p.pad[0];
        let ow = (wd - 1) * p.stride[1] + p.dilation[1] * (kw - 1) + p.output_padding[1] + 1
            - 2 * p.pad[1];
        let mut y = Tensor::zeros(&[n, cout, oh, ow]);
        for b_ in 0..n {
            for o in 0..cout {
                let grp = o / opg;
                for r in 0..oh {
                    for q in 0..ow {
                        let mut s = b.map_or(0.0, |b| b.data[o] as f64);
                        for c in 0..ipg {
                            let ic = grp * ipg + c;
                            for u in 0..kh {
                                for v in 0..kw {
                                    let nr = (r + p.pad[0]) as i64 - (u * p.dilation[0]) as i64;
                                    let nq = (q + p.pad[1]) as i64 - (v * p.dilation[1]) as i64;
                                    if nr < 0
                                        || nq < 0
                                        || nr % p.stride[0] as i64 != 0
                                        || nq % p.stride[1] as i64 != 0
                                    {
                                        continue;
                                    }
                                    let (i, j) =
                                        (nr as usize / p.stride[0], nq as usize / p.stride[1]);
                                    if i >= h || j >= wd {
                                        continue;
                                    }
                                    let xv = x.data[((b_ * cin + ic) * h + i) * wd + j];
                                    let wv =
                                        w.data[((ic * opg + (o - grp * opg)) * kh + u) * kw + v];
                                    s += xv as f64 * wv as f64;
                                }
                            }
                        }
                        y.data[((b_ * cout + o) * oh + r) * ow + q] = s as f32;
                    }
                }
            }
        }
        y
    }

    #[test]
    fn tap_range_bounds() {
        // j = 2i - 1 in 0..5 for i in 0..4: i = 1 (j=1), 2 (j=3); i=3 gives j=5.
        assert_eq!(tap_range(4, 5, 2, -1), 1..3);
        assert_eq!(tap_range(4, 5, 1, 2), 0..3);
        assert_eq!(tap_range(4, 5, 1, 9), 0..0);
        assert_eq!(tap_range(2, 5, 1, -4), 2..2);
        assert_eq!(tap_range(3, 3, 1, 0), 0..3);
    }

    #[test]
    fn conv_matches_direct_definition() {
        let mut seed = 1;
        // (cin, cout, h, w, kh, kw, stride, pad, dilation, groups)
        let cases = [
            (3, 4, 7, 6, 3, 3, 1, 1, 1, 1),
            (3, 4, 7, 6, 3, 3, 2, 1, 1, 1),
            (4, 6, 9, 8, 3, 3, 2, 2, 2, 2),
            (4, 4, 6, 6, 3, 3, 1, 1, 1, 4),
            (6, 6, 8, 7, 5, 5, 3, 2, 1, 3),
            (2, 3, 5, 9, 1, 3, 1, 0, 1, 1),
            (2, 3, 9, 5, 2, 4, 2, 3, 3, 1),
            (2, 2, 4, 4, 1, 1, 2, 0, 1, 1),
            (3, 8, 11, 11, 7, 7, 2, 3, 1, 1),
            (1, 1, 3, 3, 3, 3, 1, 0, 1, 1),
            (4, 8, 5, 5, 3, 3, 4, 4, 2, 2),
        ];
        for (cin, cout, h, w, kh, kw, s, pad, d, g) in cases {
            for n in [1, 2] {
                let x = rand(&[n, cin, h, w], seed);
                let wt = rand(&[cout, cin / g, kh, kw], seed + 1);
                let b = rand(&[cout], seed + 2);
                seed += 3;
                let p = cp(s, pad, d, g);
                for bias in [None, Some(&b)] {
                    let got = conv2d(&x, &wt, bias, &p);
                    let want = ref_conv(&x, &wt, bias, &p);
                    close(&got, &want.shape, &want.data, 1e-6);
                }
            }
        }
        // Anisotropic stride/pad/dilation.
        let p = Conv2d {
            stride: [1, 2],
            pad: [2, 0],
            dilation: [2, 1],
            groups: 1,
        };
        let (x, wt) = (rand(&[1, 2, 6, 7], 90), rand(&[3, 2, 3, 2], 91));
        let want = ref_conv(&x, &wt, None, &p);
        close(&conv2d(&x, &wt, None, &p), &want.shape, &want.data, 1e-6);
    }

    #[test]
    fn conv_groups2_dilation2_by_hand() {
        // Channel 0 is 1..=9, channel 1 is 10..=18 (3x3 each). A 2x2 kernel
        // with dilation 2 touches the four corners only.
        let x = t(
            &[1, 2, 3, 3],
            &(1..=18).map(|v| v as f32).collect::<Vec<_>>(),
        );
        let w = t(&[2, 1, 2, 2], &[1., 1., 1., 1., 1., 0., 0., -1.]);
        let y = conv2d(&x, &w, Some(&t(&[2], &[0.5, 0.0])), &cp(1, 0, 2, 2));
        // oc0 = 1+3+7+9 + 0.5 (channel 0 only), oc1 = 10 - 18 (channel 1 only).
        close(&y, &[1, 2, 1, 1], &[20.5, -8.0], 0.0);
    }

    #[test]
    fn depthwise_conv_by_hand() {
        // Ones input, 3x3 kernel of (c+1) with pad 1: counts of in-range taps.
        let x = t(&[1, 3, 3, 3], &[1.0; 27]);
        let w = Tensor::from_vec(&[3, 1, 3, 3], (0..27).map(|i| (i / 9 + 1) as f32).collect());
        let y = conv2d(&x, &w, None, &cp(1, 1, 1, 3));
        let base = [4., 6., 4., 6., 9., 6., 4., 6., 4.];
        let want: Vec<f32> = (1..=3).flat_map(|c| base.map(|v| v * c as f32)).collect();
        close(&y, &[1, 3, 3, 3], &want, 0.0);
    }

    #[test]
    fn conv_1x1_stride2_by_hand() {
        let x = iota(&[1, 2, 4, 4]);
        let w = t(&[1, 2, 1, 1], &[1.0, 10.0]);
        let y = conv2d(&x, &w, Some(&t(&[1], &[0.5])), &cp(2, 0, 1, 1));
        // x0 at (0,0),(0,2),(2,0),(2,2) = 0,2,8,10; x1 = those + 16.
        let want = [0., 2., 8., 10.].map(|v: f32| v + 10.0 * (v + 16.0) + 0.5);
        close(&y, &[1, 1, 2, 2], &want, 0.0);
    }

    fn ctp(s: usize, pad: usize, d: usize, op: usize, groups: usize) -> ConvTranspose2d {
        ConvTranspose2d {
            stride: [s, s],
            pad: [pad, pad],
            dilation: [d, d],
            output_padding: [op, op],
            groups,
        }
    }

    #[test]
    fn conv_transpose_k2s2_by_hand() {
        // U-Net up-sampling: each input pixel stamps a scaled copy of the kernel.
        let x = t(&[1, 1, 2, 2], &[1., 2., 3., 4.]);
        let w = t(&[1, 1, 2, 2], &[1., 10., 100., 1000.]);
        let y = conv_transpose2d(&x, &w, Some(&t(&[1], &[0.25])), &ctp(2, 0, 1, 0, 1));
        #[rustfmt::skip]
        let want = [
            1., 10., 2., 20.,
            100., 1000., 200., 2000.,
            3., 30., 4., 40.,
            300., 3000., 400., 4000.,
        ].map(|v: f32| v + 0.25);
        close(&y, &[1, 1, 4, 4], &want, 0.0);
    }

    #[test]
    fn conv_transpose_s2_p1_op1_k3_by_hand() {
        // Output 4x4. Input row 0 reaches output rows -1,0,1 -> {0,1}; input
        // row 1 reaches 1,2,3 (row 3 exists only thanks to output_padding).
        let x = t(&[1, 1, 2, 2], &[1., 2., 3., 4.]);
        let w = t(&[1, 1, 3, 3], &[1.0; 9]);
        let y = conv_transpose2d(&x, &w, None, &ctp(2, 1, 1, 1, 1));
        #[rustfmt::skip]
        let want = [
            1., 3., 2., 2.,
            4., 10., 6., 6.,
            3., 7., 4., 4.,
            3., 7., 4., 4.,
        ];
        close(&y, &[1, 1, 4, 4], &want, 0.0);
    }

    #[test]
    fn conv_transpose_matches_gather_and_is_adjoint_of_conv() {
        let mut seed = 100;
        // (cin, cout, h, w, k, stride, pad, dilation, groups)
        let cases = [
            (2, 3, 3, 4, 3, 1, 0, 1, 1),
            (2, 3, 3, 4, 3, 2, 1, 1, 1),
            (4, 6, 4, 3, 3, 2, 1, 2, 2),
            (3, 3, 5, 5, 2, 2, 0, 1, 3),
            (4, 2, 3, 3, 4, 3, 2, 1, 2),
            (1, 2, 2, 2, 5, 2, 2, 2, 1),
        ];
        for (cin, cout, h, w, k, s, pad, d, g) in cases {
            for op in 0..3 {
                if op >= s.max(d) {
                    continue; // PyTorch requires output_padding < max(stride, dilation).
                }
                let n = 2;
                let x = rand(&[n, cin, h, w], seed);
                let wt = rand(&[cin, cout / g, k, k], seed + 1);
                let b = rand(&[cout], seed + 2);
                seed += 3;
                let p = ctp(s, pad, d, op, g);
                let got = conv_transpose2d(&x, &wt, Some(&b), &p);
                let want = ref_conv_t(&x, &wt, Some(&b), &p);
                close(&got, &want.shape, &want.data, 1e-6);

                // Adjoint: <convT(x), z> == <x, conv(z)> with the same weight
                // read as a Conv2d weight [cin, cout/g, k, k] mapping cout -> cin.
                // (Only when op < s does conv map the output size back to h.)
                if op >= s {
                    continue;
                }
                let yt = conv_transpose2d(&x, &wt, None, &p);
                let z = rand(&yt.shape, seed + 7);
                let cz = conv2d(&z, &wt, None, &cp(s, pad, d, g));
                assert_eq!(cz.shape, x.shape);
                let dot = |a: &Tensor, b: &Tensor| -> f64 {
                    a.data
                        .iter()
                        .zip(&b.data)
                        .map(|(&u, &v)| u as f64 * v as f64)
                        .sum()
                };
                let (l, r) = (dot(&yt, &z), dot(&x, &cz));
                assert!((l - r).abs() < 1e-4 * (1.0 + l.abs()), "adjoint {l} vs {r}");
            }
        }
    }

    fn pp(k: usize, s: usize, pad: usize, ceil: bool, include: bool) -> Pool2d {
        Pool2d {
            kernel: [k, k],
            stride: [s, s],
            pad: [pad, pad],
            dilation: [1, 1],
            ceil_mode: ceil,
            count_include_pad: include,
        }
    }

    #[test]
    fn maxpool_padding_never_wins() {
        // x[r][c] = -(4r + c + 1): all negative, so zero padding would show up.
        let x = Tensor::from_vec(&[1, 1, 4, 4], (0..16).map(|i| -(i as f32) - 1.0).collect());
        let y = maxpool2d(&x, &pp(3, 2, 1, false, false));
        close(&y, &[1, 1, 2, 2], &[-1., -2., -5., -6.], 0.0);
        // One positive among negatives wins its windows only.
        let mut x2 = x.clone();
        x2.data[10] = 3.5; // (2, 2)
        let y = maxpool2d(&x2, &pp(3, 2, 1, false, false));
        close(&y, &[1, 1, 2, 2], &[-1., -2., -5., 3.5], 0.0);
    }

    #[test]
    fn maxpool_ceil_mode_and_dilation() {
        // 5x5 k2 s2 ceil: windows rows {0,1},{2,3},{4}.
        let y = maxpool2d(&iota(&[1, 1, 5, 5]), &pp(2, 2, 0, true, false));
        close(
            &y,
            &[1, 1, 3, 3],
            &[6., 8., 9., 16., 18., 19., 21., 23., 24.],
            0.0,
        );
        let y = maxpool2d(&iota(&[1, 1, 5, 5]), &pp(2, 2, 0, false, false));
        close(&y, &[1, 1, 2, 2], &[6., 8., 16., 18.], 0.0);
        // Dilation 2, k2 on 5x5 s1: taps (r,c),(r,c+2),(r+2,c),(r+2,c+2) -> max at (r+2,c+2).
        let p = Pool2d {
            dilation: [2, 2],
            ..pp(2, 1, 0, false, false)
        };
        let y = maxpool2d(&iota(&[1, 1, 5, 5]), &p);
        let want: Vec<f32> = (0..3)
            .flat_map(|r| (0..3).map(move |c| ((r + 2) * 5 + c + 2) as f32))
            .collect();
        close(&y, &[1, 1, 3, 3], &want, 0.0);
        // NaN propagates.
        let mut x = iota(&[1, 1, 2, 2]);
        x.data[1] = f32::NAN;
        assert!(maxpool2d(&x, &pp(2, 2, 0, false, false)).data[0].is_nan());
    }

    #[test]
    fn avgpool_count_include_pad_corners() {
        // x[r][c] = 4r + c + 1 on 4x4, k3 s2 p1 -> 2x2.
        let x = Tensor::from_vec(&[1, 1, 4, 4], (1..=16).map(|v| v as f32).collect());
        // Window sums: (0,0): 1+2+5+6 = 14 over 4 real; (0,1): 2+3+4+6+7+8 = 30
        // over 6; (1,0): 5+6+9+10+13+14 = 57 over 6; (1,1): 99 over 9.
        let y = avgpool2d(&x, &pp(3, 2, 1, false, true));
        close(
            &y,
            &[1, 1, 2, 2],
            &[14. / 9., 30. / 9., 57. / 9., 11.],
            1e-7,
        );
        let y = avgpool2d(&x, &pp(3, 2, 1, false, false));
        close(&y, &[1, 1, 2, 2], &[3.5, 5., 9.5, 11.], 1e-7);
    }

    #[test]
    fn avgpool_ceil_mode_divisor_clipped_at_padded_edge() {
        // 6x6 k3 s2 p1 ceil -> 4x4; windows (padded coords) start at -1,1,3,5.
        // The last spans 5,6,7: 5 is real, 6 is padding, 7 is beyond the
        // padding and must not be counted even with count_include_pad.
        let ones = Tensor::from_vec(&[1, 1, 6, 6], vec![1.0; 36]);
        let y = avgpool2d(&ones, &pp(3, 2, 1, true, true));
        // Per axis: (window size within padded input, real elements) =
        // (3,2), (3,3), (3,3), (2,1).
        let axis = [(3., 2.), (3., 3.), (3., 3.), (2., 1.)];
        let want: Vec<f32> = axis
            .iter()
            .flat_map(|&(pr, rr)| axis.iter().map(move |&(pc, rc)| (rr * rc) / (pr * pc)))
            .collect();
        close(&y, &[1, 1, 4, 4], &want, 1e-7);
        assert_eq!(y.data[15], 0.25);
        // Without count_include_pad an all-ones input averages to 1 everywhere.
        close(
            &avgpool2d(&ones, &pp(3, 2, 1, true, false)),
            &[1, 1, 4, 4],
            &[1.0; 16],
            0.0,
        );
        // Partial last window without padding: 5x5 k2 s2 ceil -> 3x3.
        let y = avgpool2d(&iota(&[1, 1, 5, 5]), &pp(2, 2, 0, true, true));
        #[rustfmt::skip]
        let want = [
            (0. + 1. + 5. + 6.) / 4., (2. + 3. + 7. + 8.) / 4., (4. + 9.) / 2.,
            (10. + 11. + 15. + 16.) / 4., (12. + 13. + 17. + 18.) / 4., (14. + 19.) / 2.,
            (20. + 21.) / 2., (22. + 23.) / 2., 24.,
        ];
        close(&y, &[1, 1, 3, 3], &want, 1e-7);
        let y = avgpool2d(&iota(&[1, 1, 6, 6]), &pp(3, 2, 1, true, false));
        assert_eq!(y.data[15], 35.0);
    }

    #[test]
    fn global_avgpool_and_flatten() {
        let x = t(&[1, 2, 2, 2], &[1., 2., 3., 4., -1., -1., 5., 1.]);
        let y = global_avgpool(&x);
        close(&y, &[1, 2, 1, 1], &[2.5, 1.0], 0.0);
        let f = flatten(&y);
        assert_eq!(f.shape, [1, 2]);
        assert_eq!(flatten(&iota(&[2, 3, 2, 2])).shape, [2, 12]);
    }

    #[test]
    fn linear_by_hand() {
        let x = t(&[2, 3], &[1., 2., 3., -1., 0., 1.]);
        let w = t(&[2, 3], &[1., 0., 0., 0.5, 0.5, 0.5]);
        let b = t(&[2], &[10., 20.]);
        close(
            &linear(&x, &w, Some(&b)),
            &[2, 2],
            &[11., 23., 9., 20.],
            0.0,
        );
        close(&linear(&x, &w, None), &[2, 2], &[1., 3., -1., 0.], 0.0);
    }

    #[test]
    fn batchnorm_by_hand() {
        let gamma = t(&[2], &[2., 1.]);
        let beta = t(&[2], &[1., -1.]);
        let mean = t(&[2], &[1., 0.]);
        let var = t(&[2], &[4., 1.]);
        // channel 0: (x-1)/2*2+1 = x; channel 1: x/1 - 1 (eps 0).
        let x = t(&[1, 2, 1, 2], &[3., 5., 2., 4.]);
        close(
            &batchnorm(&x, &gamma, &beta, &mean, &var, 0.0),
            &[1, 2, 1, 2],
            &[3., 5., 1., 3.],
            0.0,
        );
        let x = t(&[2, 2], &[3., 2., -1., 0.]);
        close(
            &batchnorm(&x, &gamma, &beta, &mean, &var, 0.0),
            &[2, 2],
            &[3., 1., -1., -1.],
            0.0,
        );
        // eps enters under the root: var 0, eps 0.25 -> divide by 0.5.
        let y = batchnorm(
            &t(&[1, 1], &[1.]),
            &t(&[1], &[1.]),
            &t(&[1], &[0.]),
            &t(&[1], &[0.]),
            &t(&[1], &[0.]),
            0.25,
        );
        assert_eq!(y.data, [2.0]);
    }

    #[test]
    fn activations_add_concat() {
        let x = t(&[1, 5], &[-2., -0.5, 0., 3., 7.]);
        assert_eq!(relu(&x).data, [0., 0., 0., 3., 7.]);
        assert_eq!(relu6(&x).data, [0., 0., 0., 3., 6.]);
        assert_eq!(leaky_relu(&x, 0.1).data, [-0.2, -0.05, 0., 3., 7.]);
        assert!(relu(&t(&[1], &[f32::NAN])).data[0].is_nan());
        assert!(relu6(&t(&[1], &[f32::NAN])).data[0].is_nan());
        let s = sigmoid(&t(&[4], &[0., 2., -200., 200.]));
        close(&s, &[4], &[0.5, 0.880_797_1, 0.0, 1.0], 1e-7);
        assert_eq!(add(&x, &x).data, [-4., -1., 0., 6., 14.]);

        let a = iota(&[2, 1, 2]);
        let b = Tensor::from_vec(&[2, 2, 2], (10..18).map(|v| v as f32).collect());
        let c = concat_channels(&[&a, &b]);
        assert_eq!(c.shape, [2, 3, 2]);
        assert_eq!(
            c.data,
            [0., 1., 10., 11., 12., 13., 2., 3., 14., 15., 16., 17.]
        );
        let c2 = concat_channels(&[&t(&[1, 2], &[1., 2.]), &t(&[1, 1], &[3.])]);
        assert_eq!((c2.shape, c2.data), (vec![1, 3], vec![1., 2., 3.]));
    }

    #[test]
    fn softmax_stable_and_normalized() {
        let e = std::f64::consts::E;
        let y = softmax(&t(&[2, 2], &[1000., 1001., -1000., -1000.]));
        let p0 = (1.0 / (1.0 + e)) as f32;
        close(&y, &[2, 2], &[p0, 1.0 - p0, 0.5, 0.5], 1e-7);
        let y = softmax(&rand(&[3, 7], 5));
        for row in y.data.chunks(7) {
            assert!((row.iter().map(|&v| v as f64).sum::<f64>() - 1.0).abs() < 1e-6);
        }
        // NCHW: normalized over channels per pixel.
        let x = t(&[1, 2, 1, 2], &[0., 5., 0., 5.]);
        close(&softmax(&x), &[1, 2, 1, 2], &[0.5, 0.5, 0.5, 0.5], 0.0);
        let x = t(&[1, 2, 1, 1], &[0., 2f32.ln()]);
        close(&softmax(&x), &[1, 2, 1, 1], &[1. / 3., 2. / 3.], 1e-7);
    }

    #[test]
    fn upsample_bilinear_matches_pytorch() {
        let x = t(&[1, 1, 2, 2], &[1., 2., 3., 4.]);
        #[rustfmt::skip]
        let want = [
            1.0, 1.25, 1.75, 2.0,
            1.5, 1.75, 2.25, 2.5,
            2.5, 2.75, 3.25, 3.5,
            3.0, 3.25, 3.75, 4.0,
        ];
        close(
            &upsample_bilinear(&x, [Scale::Whole(2), Scale::Whole(2)], false),
            &[1, 1, 4, 4],
            &want,
            0.0,
        );
        let (a, b) = (4.0 / 3.0, 5.0 / 3.0);
        #[rustfmt::skip]
        let want = [
            1.0, a, b, 2.0,
            b, 2.0, 1.0 + a, 1.0 + b,
            1.0 + a, 1.0 + b, 3.0, 2.0 + a,
            3.0, 2.0 + a, 2.0 + b, 4.0,
        ];
        close(
            &upsample_bilinear(&x, [Scale::Whole(2), Scale::Whole(2)], true),
            &[1, 1, 4, 4],
            &want,
            1e-7,
        );
        // A 1-pixel input stays constant; anisotropic scale keeps shapes apart.
        let one = t(&[1, 1, 1, 1], &[7.]);
        close(
            &upsample_bilinear(&one, [Scale::Whole(3), Scale::Whole(2)], true),
            &[1, 1, 3, 2],
            &[7.; 6],
            0.0,
        );
        close(
            &upsample_bilinear(&one, [Scale::Whole(3), Scale::Whole(2)], false),
            &[1, 1, 3, 2],
            &[7.; 6],
            0.0,
        );
    }

    #[test]
    fn upsample_nearest_by_hand() {
        let x = t(&[1, 1, 2, 2], &[1., 2., 3., 4.]);
        #[rustfmt::skip]
        let want = [
            1., 1., 2., 2.,
            1., 1., 2., 2.,
            3., 3., 4., 4.,
            3., 3., 4., 4.,
        ];
        close(
            &upsample_nearest(&x, [Scale::Whole(2), Scale::Whole(2)]),
            &[1, 1, 4, 4],
            &want,
            0.0,
        );
        close(
            &upsample_nearest(&x, [Scale::Whole(1), Scale::Whole(3)]),
            &[1, 1, 2, 6],
            &[1., 1., 1., 2., 2., 2., 3., 3., 3., 4., 4., 4.],
            0.0,
        );
    }

    #[test]
    fn channel_pad_option_a() {
        let x = iota(&[1, 16, 4, 4]);
        let y = channel_pad(&x, 32, 2);
        assert_eq!(y.shape, [1, 32, 2, 2]);
        for c in 0..32 {
            let plane = &y.data[c * 4..c * 4 + 4];
            if (8..24).contains(&c) {
                let b = ((c - 8) * 16) as f32;
                assert_eq!(plane, [b, b + 2., b + 8., b + 10.], "channel {c}");
            } else {
                assert_eq!(plane, [0.0; 4], "channel {c}");
            }
        }
        // Odd spatial size: ceil(5/2) = 3.
        assert_eq!(channel_pad(&iota(&[1, 1, 5, 5]), 3, 2).shape, [1, 3, 3, 3]);
    }
}
