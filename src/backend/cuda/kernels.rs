//! The CUDA kernels of every op but conv and linear (`gemm.rs`): one
//! thread per output element, which is what these memory-bound ops need on
//! a GPU (consecutive threads touch consecutive addresses). Argument 0 is
//! the output, argument `i + 1` operand `i`; activations are addressed per
//! image, `base + image × stride`.

use super::simt::Kern;
use crate::backend::llvm::emit::Emitter;
use crate::backend::llvm::LlvmError;
use crate::ir::op::{ConvGeom, EpilogueStep, Fused, Op, PoolGeom, Scale, UpsampleMode};
use inkwell::values::{FloatValue, IntValue, PointerValue};
use inkwell::IntPredicate;

/// Threads per block of the elementwise kernels.
pub const THREADS: u64 = 256;

/// Argument indices of a fused layer's extra operands.
#[derive(Clone, Copy, Debug, Default)]
pub struct FusedArgs {
    /// The prologue's per-channel scale and shift.
    pub prologue: Option<(usize, usize)>,
    pub bias: Option<usize>,
    pub residual: Option<usize>,
}

impl FusedArgs {
    /// The layer's operand slots (`Fused::operands`), one further on: the
    /// kernel's first argument is its output.
    pub fn of(fused: &Fused) -> FusedArgs {
        let slots = fused.operands();
        FusedArgs {
            prologue: slots.prologue.map(|(s, t)| (s + 1, t + 1)),
            bias: slots.bias.map(|b| b + 1),
            residual: slots.residual.map(|z| z + 1),
        }
    }
}

/// `v` after the epilogue of output channel `oc`; `z` is the address of
/// the residual element.
pub fn epilogue_value<'ctx>(
    e: &Emitter<'_, 'ctx>,
    fused: &Fused,
    mut v: FloatValue<'ctx>,
    bias: Option<PointerValue<'ctx>>,
    oc: IntValue<'ctx>,
    z: Option<PointerValue<'ctx>>,
) -> FloatValue<'ctx> {
    for s in &fused.epilogue {
        v = match s {
            EpilogueStep::Bias => e.fadd(v, e.load(bias.expect("bias argument"), oc)),
            EpilogueStep::Add => {
                let p = z.expect("residual argument");
                let r = e.b.build_load(e.f32t, p, "").expect("load");
                e.fadd(v, r.into_float_value())
            }
            EpilogueStep::Act(a) => e.act(v, *a),
        };
    }
    v
}

/// Per-image shape `(c, h, w)` and image stride of every argument (consts:
/// their shape's first axis, stride 0).
pub struct OpArgs {
    pub shapes: Vec<(u64, u64, u64)>,
    pub strides: Vec<u64>,
}

impl OpArgs {
    fn image<'ctx>(
        &self,
        e: &Emitter<'_, 'ctx>,
        k: PointerValue<'ctx>,
        i: usize,
        img: IntValue<'ctx>,
    ) -> PointerValue<'ctx> {
        e.at(k, e.mul(img, e.int(self.strides[i])))
    }
}

/// One thread per output element of every image: `body(image, element)`.
pub(super) fn per_output<'a, 'ctx>(
    k: &mut Kern<'a, 'ctx>,
    per_image: u64,
    mut body: impl FnMut(&mut Emitter<'a, 'ctx>, IntValue<'ctx>, IntValue<'ctx>),
) {
    let total = k.e.mul(k.batch, k.e.int(per_image));
    k.per_element(total, |e, i| {
        let per = e.int(per_image);
        let img = e.b.build_int_unsigned_div(i, per, "").expect("div");
        let r = e.b.build_int_unsigned_rem(i, per, "").expect("rem");
        body(e, img, r);
    });
}

fn udiv<'ctx>(e: &Emitter<'_, 'ctx>, a: IntValue<'ctx>, b: u64) -> IntValue<'ctx> {
    e.b.build_int_unsigned_div(a, e.int(b), "").expect("div")
}

fn urem<'ctx>(e: &Emitter<'_, 'ctx>, a: IntValue<'ctx>, b: u64) -> IntValue<'ctx> {
    e.b.build_int_unsigned_rem(a, e.int(b), "").expect("rem")
}

/// Threads of a global-average-pool block over planes of `pixels`: a
/// power of two from one warp to 256, no more than the plane fills.
pub fn pool_threads(pixels: u64) -> u64 {
    pixels.next_power_of_two().clamp(32, THREADS)
}

/// Global average pooling, one block per (image, channel): the threads
/// sum strided elements of the plane (consecutive threads, consecutive
/// addresses), then halve their partial sums in shared memory. One thread
/// per channel summing its plane in order was latency-bound on the large
/// planes of SE-ResNet's gates (256 channels of 3136 pixels at batch 1).
/// Launched over `batch × C` blocks of `pool_threads(H·W)` threads.
fn global_avgpool(k: &mut Kern<'_, '_>, a: &OpArgs) {
    let (c_all, h, w) = a.shapes[1];
    let (hw, threads) = (h * w, pool_threads(h * w));
    debug_assert_eq!(k.threads, threads, "launched with pool_threads");
    let (y, x, bx) = (k.arg(0), k.arg(1), k.block(0));
    let sums = k.shared("sums", threads);
    k.phase(|e, t| {
        let (img, c) = (udiv(e, bx, c_all), urem(e, bx, c_all));
        let plane = e.at(a.image(e, x, 1, img), e.mul(c, e.int(hw)));
        let acc = e.slot();
        e.set(acc, e.f32(0.0));
        e.for_const(0, hw.div_ceil(threads), |e, j| {
            let i = e.add(e.mul(j, e.int(threads)), t);
            e.if_else(
                e.ult(i, e.int(hw)),
                |e| {
                    let v = e.fadd(e.get(acc), e.load(plane, i));
                    e.set(acc, v);
                },
                |_| {},
            );
        });
        e.store(sums, t, e.get(acc));
    });
    k.barrier();
    let mut half = threads / 2;
    while half >= 1 {
        k.phase(|e, t| {
            e.if_else(
                e.ult(t, e.int(half)),
                |e| {
                    let v = e.fadd(e.load(sums, t), e.load(sums, e.add(t, e.int(half))));
                    e.store(sums, t, v);
                },
                |_| {},
            );
        });
        k.barrier();
        half /= 2;
    }
    k.phase(|e, t| {
        e.if_else(
            e.ult(t, e.int(1)),
            |e| {
                let (img, c) = (udiv(e, bx, c_all), urem(e, bx, c_all));
                let mean = e.fdiv(e.load(sums, e.int(0)), e.f32(hw as f64));
                e.store(a.image(e, y, 0, img), c, mean);
            },
            |_| {},
        );
    });
}

/// `(c, y, x)` of element `r` of a `(c, h, w)` image.
fn cyx<'ctx>(
    e: &Emitter<'_, 'ctx>,
    r: IntValue<'ctx>,
    (_, h, w): (u64, u64, u64),
) -> (IntValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>) {
    let c = udiv(e, r, h * w);
    let p = urem(e, r, h * w);
    (c, udiv(e, p, w), urem(e, p, w))
}

fn and<'ctx>(e: &Emitter<'_, 'ctx>, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
    e.b.build_and(a, b, "").expect("and")
}

fn select<'ctx>(
    e: &Emitter<'_, 'ctx>,
    c: IntValue<'ctx>,
    a: FloatValue<'ctx>,
    b: FloatValue<'ctx>,
) -> FloatValue<'ctx> {
    e.b.build_select(c, a, b, "")
        .expect("select")
        .into_float_value()
}

/// Emits the kernel of `op` (anything but conv and linear).
pub fn emit(k: &mut Kern<'_, '_>, op: &Op, a: &OpArgs) -> Result<(), LlvmError> {
    let out = a.shapes[0];
    let per = out.0 * out.1 * out.2;
    match op {
        Op::ConvTranspose { geom, fused, .. } => conv_transpose(k, geom, fused, a),
        Op::MaxPool(g) => pool(k, g, None, a),
        Op::AvgPool {
            geom,
            count_include_pad,
        } => pool(k, geom, Some(*count_include_pad), a),
        Op::GlobalAvgPool => global_avgpool(k, a),
        Op::Affine { act } => {
            let (y, x, s, t) = (k.arg(0), k.arg(1), k.arg(2), k.arg(3));
            let act = *act;
            per_output(k, per, |e, img, r| {
                let c = udiv(e, r, out.1 * out.2);
                let v = e.load(a.image(e, x, 1, img), r);
                let v = e.fmuladd(v, e.load(s, c), e.load(t, c));
                let v = act.map_or(v, |f| e.act(v, f));
                e.store(a.image(e, y, 0, img), r, v);
            });
        }
        Op::Act(f) => {
            let f = *f;
            elementwise(k, a, per, 1, move |e, xs| e.act(xs[0], f));
        }
        Op::Add => elementwise(k, a, per, 2, |e, xs| e.fadd(xs[0], xs[1])),
        // Per channel (`[C, 1, 1]`: squeeze-and-excitation) or elementwise,
        // then the fused residual add and activation.
        Op::Mul { fused } => {
            let (y, x, s) = (k.arg(0), k.arg(1), k.arg(2));
            let z = fused
                .epilogue
                .contains(&EpilogueStep::Add)
                .then(|| k.arg(3));
            let per_channel = a.shapes[2] != out;
            per_output(k, per, |e, img, r| {
                let at = if per_channel {
                    udiv(e, r, out.1 * out.2)
                } else {
                    r
                };
                let v = e.load(a.image(e, x, 1, img), r);
                let v = e.fmul(v, e.load(a.image(e, s, 2, img), at));
                let zp = z.map(|z| e.at(a.image(e, z, 3, img), r));
                let v = epilogue_value(e, fused, v, None, at, zp);
                e.store(a.image(e, y, 0, img), r, v);
            });
        }
        Op::Flatten | Op::Identity | Op::Dropout { .. } | Op::Concat { .. } => {
            // A copy: a non-view flatten, or one operand of a concat into
            // its channel slice (argument 0 points at the slice).
            let per_in = a.shapes[1].0 * a.shapes[1].1 * a.shapes[1].2;
            elementwise(k, a, per_in, 1, |_, xs| xs[0]);
        }
        Op::Upsample { scale, mode } => upsample(k, *scale, *mode, a),
        Op::Softmax => {
            let (ch, h, w) = a.shapes[1];
            let hw = h * w;
            let (y, x) = (k.arg(0), k.arg(1));
            per_output(k, hw, |e, img, p| {
                let (xb, yb) = (a.image(e, x, 1, img), a.image(e, y, 0, img));
                let (mx, sum) = (e.slot(), e.slot());
                e.set(mx, e.f32(f64::NEG_INFINITY));
                e.for_const(0, ch, |e, c| {
                    let v = e.fmax(e.load(xb, e.mad(c, hw, p)), e.get(mx));
                    e.set(mx, v);
                });
                e.set(sum, e.f32(0.0));
                e.for_const(0, ch, |e, c| {
                    let ex = e.exp(e.fsub(e.load(xb, e.mad(c, hw, p)), e.get(mx)));
                    let s = e.fadd(e.get(sum), ex);
                    e.set(sum, s);
                });
                e.for_const(0, ch, |e, c| {
                    let i = e.mad(c, hw, p);
                    let ex = e.exp(e.fsub(e.load(xb, i), e.get(mx)));
                    e.store(yb, i, e.fdiv(ex, e.get(sum)));
                });
            });
        }
        Op::ChannelPad {
            out_channels,
            stride,
        } => {
            let (ch, h, w) = a.shapes[1];
            let before = (*out_channels as u64 - ch) / 2;
            let s = *stride as u64;
            let (y, x) = (k.arg(0), k.arg(1));
            per_output(k, per, |e, img, r| {
                let (c, oy, ox) = cyx(e, r, out);
                let src = e.sub(c, e.int(before));
                let inside = e.ult(src, e.int(ch));
                let srcc = e.smin(e.smax(src, e.int(0)), e.int(ch - 1));
                let idx = e.add(
                    e.mul(srcc, e.int(h * w)),
                    e.add(e.mul(oy, e.int(s * w)), e.mul(ox, e.int(s))),
                );
                let v = e.load(a.image(e, x, 1, img), idx);
                let v = select(e, inside, v, e.f32(0.0));
                e.store(a.image(e, y, 0, img), r, v);
            });
        }
        Op::Conv { .. }
        | Op::Linear { .. }
        | Op::BatchNorm { .. }
        | Op::Input
        | Op::Output
        | Op::Weight { .. }
        | Op::Const(_) => {
            return Err(LlvmError::Internal(format!(
                "`{}` has no elementwise CUDA kernel",
                op.kind()
            )))
        }
    }
    Ok(())
}

/// `y[i] = f(x1[i], ..., x_arity[i])` over `per` elements of each image.
fn elementwise<'ctx>(
    k: &mut Kern<'_, 'ctx>,
    a: &OpArgs,
    per: u64,
    arity: usize,
    f: impl Fn(&Emitter<'_, 'ctx>, &[FloatValue<'ctx>]) -> FloatValue<'ctx>,
) {
    let ptrs: Vec<PointerValue> = (0..=arity).map(|i| k.arg(i)).collect();
    per_output(k, per, |e, img, r| {
        let xs: Vec<FloatValue> = (1..=arity)
            .map(|i| e.load(a.image(e, ptrs[i], i, img), r))
            .collect();
        let v = f(e, &xs);
        e.store(a.image(e, ptrs[0], 0, img), r, v);
    });
}

/// Transposed convolution, gathered: output `(oc, oy, ox)` sums `x[ic, iy,
/// ix] · w[ic, oc mod ocg, ky, kx]` over the taps with `oy = iy·s − p +
/// ky·d` (and likewise in x), then the epilogue.
fn conv_transpose(k: &mut Kern<'_, '_>, g: &ConvGeom, fused: &Fused, a: &OpArgs) {
    let out = a.shapes[0];
    let (ic_all, h, w) = a.shapes[1];
    let groups = g.groups as u64;
    let (icg, ocg) = (ic_all / groups, out.0 / groups);
    let (kh, kw) = (g.kernel[0] as u64, g.kernel[1] as u64);
    let (sh, sw) = (g.stride[0] as u64, g.stride[1] as u64);
    let (ph, pw) = (g.pad[0] as u64, g.pad[1] as u64);
    let (dh, dw) = (g.dilation[0] as u64, g.dilation[1] as u64);
    let f = FusedArgs::of(fused);
    let (y, x, wt) = (k.arg(0), k.arg(1), k.arg(2));
    let pro = f.prologue.map(|(s, t)| (k.arg(s), k.arg(t)));
    let bias = f.bias.map(|b| k.arg(b));
    let z = f.residual.map(|r| (k.arg(r), r));
    per_output(k, out.0 * out.1 * out.2, |e, img, r| {
        let (oc, oy, ox) = cyx(e, r, out);
        let grp = udiv(e, oc, ocg);
        let j = urem(e, oc, ocg);
        let xb = a.image(e, x, 1, img);
        let acc = e.slot();
        e.set(acc, e.f32(0.0));
        e.for_const(0, icg, |e, i| {
            let ic = e.mad(grp, icg, i);
            let xplane = e.at(xb, e.mul(ic, e.int(h * w)));
            let wrow = e.at(wt, e.mul(e.mad(ic, ocg, j), e.int(kh * kw)));
            let st = pro.map(|(s, t)| (e.load(s, ic), e.load(t, ic)));
            for ky in 0..kh {
                // oy + p − ky·d = iy·s with 0 <= iy < h.
                let ty = e.sub(e.add(oy, e.int(ph)), e.int(ky * dh));
                let oky = and(e, e.ult(ty, e.int(sh * h)), is_zero(e, urem(e, ty, sh)));
                for kx in 0..kw {
                    let tx = e.sub(e.add(ox, e.int(pw)), e.int(kx * dw));
                    let okx = and(e, e.ult(tx, e.int(sw * w)), is_zero(e, urem(e, tx, sw)));
                    e.if_else(
                        and(e, oky, okx),
                        |e| {
                            let (iy, ix) = (udiv(e, ty, sh), udiv(e, tx, sw));
                            let mut v = e.load(xplane, e.mad(iy, w, ix));
                            if let (Some(p), Some((s, t))) = (fused.prologue, st) {
                                v = e.fmuladd(v, s, t);
                                if let Some(f) = p.act {
                                    v = e.act(v, f);
                                }
                            }
                            let nv = e.fmuladd(v, e.load(wrow, e.int(ky * kw + kx)), e.get(acc));
                            e.set(acc, nv);
                        },
                        |_| {},
                    );
                }
            }
        });
        let zp = z.map(|(zp, i)| e.at(a.image(e, zp, i, img), r));
        let v = epilogue_value(e, fused, e.get(acc), bias, oc, zp);
        e.store(a.image(e, y, 0, img), r, v);
    });
}

fn is_zero<'ctx>(e: &Emitter<'_, 'ctx>, v: IntValue<'ctx>) -> IntValue<'ctx> {
    e.b.build_int_compare(IntPredicate::EQ, v, e.int(0), "")
        .expect("cmp")
}

/// Max pooling (`avg = None`) or average pooling with PyTorch's divisor.
fn pool(k: &mut Kern<'_, '_>, g: &PoolGeom, avg: Option<bool>, a: &OpArgs) {
    let out = a.shapes[0];
    let (_, h, w) = a.shapes[1];
    let (k0, k1) = (g.kernel[0] as u64, g.kernel[1] as u64);
    let (s0, s1) = (g.stride[0] as u64, g.stride[1] as u64);
    let (p0, p1) = (g.pad[0] as u64, g.pad[1] as u64);
    let (d0, d1) = (g.dilation[0] as u64, g.dilation[1] as u64);
    let (y, x) = (k.arg(0), k.arg(1));
    per_output(k, out.0 * out.1 * out.2, |e, img, r| {
        let (c, oy, ox) = cyx(e, r, out);
        let xplane = e.at(a.image(e, x, 1, img), e.mul(c, e.int(h * w)));
        let hs = e.sub(e.mul(oy, e.int(s0)), e.int(p0));
        let ws = e.sub(e.mul(ox, e.int(s1)), e.int(p1));
        let mut acc = e.f32(if avg.is_some() {
            0.0
        } else {
            f64::NEG_INFINITY
        });
        let mut cnt = e.f32(0.0);
        for ky in 0..k0 {
            let ih = e.add(hs, e.int(ky * d0));
            for kx in 0..k1 {
                let iw = e.add(ws, e.int(kx * d1));
                let ok = and(e, e.ult(ih, e.int(h)), e.ult(iw, e.int(w)));
                let ihc = e.smin(e.smax(ih, e.int(0)), e.int(h - 1));
                let iwc = e.smin(e.smax(iw, e.int(0)), e.int(w - 1));
                let v = e.load(xplane, e.mad(ihc, w, iwc));
                let next = match avg {
                    None => e.fmax(acc, v),
                    Some(_) => e.fadd(acc, v),
                };
                acc = select(e, ok, next, acc);
                cnt = select(e, ok, e.fadd(cnt, e.f32(1.0)), cnt);
            }
        }
        let v = match avg {
            None => acc,
            Some(false) => e.fdiv(acc, e.fmax(cnt, e.f32(1.0))),
            Some(true) => {
                let he = e.smin(e.add(hs, e.int(k0)), e.int(h + p0));
                let we = e.smin(e.add(ws, e.int(k1)), e.int(w + p1));
                let size = e.mul(e.sub(he, hs), e.sub(we, ws));
                e.fdiv(acc, e.int_to_float(size))
            }
        };
        e.store(a.image(e, y, 0, img), r, v);
    });
}

/// Nearest or bilinear upsampling (PyTorch's `upsample_bilinear2d`
/// source coordinates).
fn upsample(k: &mut Kern<'_, '_>, scale: [Scale; 2], mode: UpsampleMode, a: &OpArgs) {
    let out = a.shapes[0];
    let (_, h, w) = a.shapes[1];
    let (_, oh, ow) = out;
    let (y, x) = (k.arg(0), k.arg(1));
    per_output(k, out.0 * out.1 * out.2, |e, img, r| {
        let (c, oy, ox) = cyx(e, r, out);
        let xp = e.at(a.image(e, x, 1, img), e.mul(c, e.int(h * w)));
        let v = match mode {
            UpsampleMode::Nearest => {
                let src = |o, inn, out, s: Scale| match s {
                    Scale::Whole(f) => udiv(e, o, f as u64),
                    Scale::Ratio { step, .. } => e.nearest_coord(o, inn, out, step),
                };
                let sr = src(oy, h, oh, scale[0]);
                let sq = src(ox, w, ow, scale[1]);
                e.load(xp, e.mad(sr, w, sq))
            }
            UpsampleMode::Bilinear { align_corners } => {
                let (r0, r1, lr) = e.upsample_coord(oy, h, oh, scale[0].step(), align_corners);
                let (q0, q1, lq) = e.upsample_coord(ox, w, ow, scale[1].step(), align_corners);
                let at = |rr, qq| e.load(xp, e.mad(rr, w, qq));
                let top = e.fmuladd(e.fsub(at(r0, q1), at(r0, q0)), lq, at(r0, q0));
                let bot = e.fmuladd(e.fsub(at(r1, q1), at(r1, q0)), lq, at(r1, q0));
                e.fmuladd(e.fsub(bot, top), lr, top)
            }
        };
        e.store(a.image(e, y, 0, img), r, v);
    });
}
