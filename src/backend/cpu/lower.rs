//! Lowers an optimized, planned graph to LLVM functions for x86-64.
//!
//! One function per op, `void opK(float *arena, const float *consts, i64 batch)`,
//! each a loop nest over views into the arena (see `ir::plan`), and one entry
//! `void <model>_run(const float *input, float *output, i64 batch,
//! const float *consts, float *arena)` that copies the input in, runs the
//! schedule and copies the output out. The kernels are plain loop nests
//! chosen so LLVM vectorizes the innermost loop; each op's emitter is a
//! separate function so a register-tiled microkernel can replace one without
//! touching the rest.

use super::consts::ConstPool;
use crate::backend::llvm::emit::Emitter;
use crate::backend::llvm::LlvmError;
use crate::ir::graph::numel;
use crate::ir::op::{ConvGeom, EpilogueStep, Fused, Op, PoolGeom, UpsampleMode};
use crate::ir::plan::MemoryPlan;
use crate::ir::Graph;
use inkwell::context::Context;
use inkwell::module::{Linkage, Module};
use inkwell::values::{FloatValue, FunctionValue, IntValue, PointerValue};
use petgraph::stable_graph::NodeIndex;
use std::cell::RefCell;
use std::collections::HashMap;

/// Where one value lives, in f32 elements: the buffer's per-image offset
/// (scaled by the batch at run time) and the offset inside it, both kernel
/// arguments, and the distance between images, a constant of the kernel.
#[derive(Clone, Copy, Debug)]
struct View<'ctx> {
    buffer: IntValue<'ctx>,
    offset: IntValue<'ctx>,
    stride: u64,
}

/// The kernel being emitted: its output and operands bound to its
/// arguments. Ops with the same configuration share one kernel, called with
/// different offsets.
struct Ctx<'g, 'ctx> {
    graph: &'g Graph,
    plan: &'g MemoryPlan,
    views: RefCell<HashMap<NodeIndex, View<'ctx>>>,
    consts: RefCell<HashMap<NodeIndex, IntValue<'ctx>>>,
}

impl<'ctx> Ctx<'_, 'ctx> {
    fn view(&self, n: NodeIndex) -> View<'ctx> {
        self.views.borrow()[&n]
    }

    fn shape(&self, n: NodeIndex) -> &[usize] {
        &self.graph.node(n).shape
    }

    fn konst(&self, n: NodeIndex) -> IntValue<'ctx> {
        self.consts.borrow()[&n]
    }

    /// (buffer, offset, stride) of a value in the plan.
    fn placement(&self, n: NodeIndex) -> (u64, u64, u64) {
        let s = self.plan.storage[&n];
        (
            self.plan.buffers[s.buffer].offset as u64 / 4,
            s.elem_offset as u64,
            s.batch_stride as u64,
        )
    }

    /// The view of `n` with constant offsets (outside kernels).
    fn const_view(&self, e: &Emitter<'_, 'ctx>, n: NodeIndex) -> View<'ctx> {
        let (b, o, s) = self.placement(n);
        View {
            buffer: e.int(b),
            offset: e.int(o),
            stride: s,
        }
    }
}

/// Pointers every op function receives.
struct Args<'ctx> {
    arena: PointerValue<'ctx>,
    consts: PointerValue<'ctx>,
    batch: IntValue<'ctx>,
}

impl<'ctx> Args<'ctx> {
    /// First element of image `n` of a view.
    fn image(&self, e: &Emitter<'_, 'ctx>, v: View<'ctx>, n: IntValue<'ctx>) -> PointerValue<'ctx> {
        let start = e.add(
            e.add(e.mul(self.batch, v.buffer), v.offset),
            e.mul(n, e.int(v.stride)),
        );
        e.at(self.arena, start)
    }

    fn konst(&self, e: &Emitter<'_, 'ctx>, offset: IntValue<'ctx>) -> PointerValue<'ctx> {
        e.at(self.consts, offset)
    }
}

/// Builds the module for `graph` (optimized and planned).
pub fn lower<'ctx>(
    ctx: &'ctx Context,
    graph: &Graph,
    pool: &ConstPool,
    symbol: &str,
) -> Result<Module<'ctx>, LlvmError> {
    let plan = graph
        .plan
        .as_ref()
        .ok_or_else(|| LlvmError::Internal("the graph has no memory plan".into()))?;
    let module = ctx.create_module(symbol);
    let c = Ctx {
        graph,
        plan,
        views: RefCell::new(HashMap::new()),
        consts: RefCell::new(HashMap::new()),
    };
    let ptr = ctx.ptr_type(inkwell::AddressSpace::default());
    let i64t = ctx.i64_type();
    let mut kernels: HashMap<String, FunctionValue<'ctx>> = HashMap::new();
    // (kernel, its offset arguments) per op, in schedule order.
    let mut calls = Vec::new();
    for &n in &plan.schedule {
        let node = graph.node(n);
        if matches!(node.op, Op::Input | Op::Output) || is_view(&c, n) {
            continue;
        }
        // Argument slots: the output, then every operand, two i64 each.
        let slots: Vec<NodeIndex> = std::iter::once(n).chain(graph.operands(n)).collect();
        let mut values = Vec::new();
        let mut key = format!("{:?}", node.op);
        for &s in &slots {
            let sn = graph.node(s);
            if sn.op.is_const() {
                values.extend([pool.offsets[&s] as u64, 0]);
                key.push_str(&format!("|c{:?}", sn.shape));
            } else {
                let (b, o, st) = c.placement(s);
                values.extend([b, o]);
                key.push_str(&format!("|a{:?}/{st}", sn.shape));
            }
        }
        let f = match kernels.get(&key) {
            Some(&f) => f,
            None => {
                let mut params: Vec<inkwell::types::BasicMetadataTypeEnum> =
                    vec![ptr.into(), ptr.into(), i64t.into()];
                params.extend(std::iter::repeat_n(
                    inkwell::types::BasicMetadataTypeEnum::from(i64t),
                    values.len(),
                ));
                let ty = ctx.void_type().fn_type(&params, false);
                let f = module.add_function(
                    &format!("{symbol}_k{}_{}", kernels.len(), node.op.kind()),
                    ty,
                    Some(Linkage::Internal),
                );
                let mut e = Emitter::new(ctx, &module, f);
                c.views.borrow_mut().clear();
                c.consts.borrow_mut().clear();
                for (i, &s) in slots.iter().enumerate().rev() {
                    let (p0, p1) = (e.param_int(3 + 2 * i as u32), e.param_int(4 + 2 * i as u32));
                    if graph.node(s).op.is_const() {
                        c.consts.borrow_mut().insert(s, p0);
                    } else {
                        let stride = c.placement(s).2;
                        c.views.borrow_mut().insert(
                            s,
                            View {
                                buffer: p0,
                                offset: p1,
                                stride,
                            },
                        );
                    }
                }
                let a = Args {
                    arena: e.param_ptr(0),
                    consts: e.param_ptr(1),
                    batch: e.param_int(2),
                };
                lower_op(&mut e, &c, &a, n)?;
                e.ret_void();
                kernels.insert(key, f);
                f
            }
        };
        calls.push((f, values));
    }
    // The entry: input in, schedule, output out.
    let run_ty = ctx.void_type().fn_type(
        &[ptr.into(), ptr.into(), i64t.into(), ptr.into(), ptr.into()],
        false,
    );
    let run = module.add_function(&format!("{symbol}_run"), run_ty, None);
    let mut e = Emitter::new(ctx, &module, run);
    let (input, output, batch, consts, arena) = (
        e.param_ptr(0),
        e.param_ptr(1),
        e.param_int(2),
        e.param_ptr(3),
        e.param_ptr(4),
    );
    let a = Args {
        arena,
        consts,
        batch,
    };
    let per_in = numel(graph.input_shape()) as u64;
    let vin = c.const_view(&e, graph.input);
    copy_images(
        &mut e,
        &a,
        per_in,
        |e, n| e.at(input, e.mul(n, e.int(per_in))),
        |e, n| a.image(e, vin, n),
    );
    for (f, values) in calls {
        let mut args: Vec<inkwell::values::BasicMetadataValueEnum> =
            vec![arena.into(), consts.into(), batch.into()];
        args.extend(
            values
                .into_iter()
                .map(|v| inkwell::values::BasicMetadataValueEnum::from(e.int(v))),
        );
        e.b.build_call(f, &args, "").expect("call");
    }
    let out_src = graph.operands(graph.output)[0];
    let per_out = numel(graph.output_shape()) as u64;
    let vout = c.const_view(&e, out_src);
    copy_images(
        &mut e,
        &a,
        per_out,
        |e, n| a.image(e, vout, n),
        |e, n| e.at(output, e.mul(n, e.int(per_out))),
    );
    e.ret_void();
    Ok(module)
}

/// A flatten that shares its operand's memory computes nothing.
fn is_view(c: &Ctx<'_, '_>, n: NodeIndex) -> bool {
    matches!(c.graph.node(n).op, Op::Flatten) && {
        let o = c.graph.operands(n)[0];
        let (a, b) = (c.plan.storage[&n], c.plan.storage[&o]);
        a.buffer == b.buffer && a.elem_offset == b.elem_offset
    }
}

/// Copies `per` elements of every image from `src(n)` to `dst(n)`.
fn copy_images<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    a: &Args<'ctx>,
    per: u64,
    src: impl Fn(&Emitter<'_, 'ctx>, IntValue<'ctx>) -> PointerValue<'ctx>,
    dst: impl Fn(&Emitter<'_, 'ctx>, IntValue<'ctx>) -> PointerValue<'ctx>,
) {
    let zero = e.int(0);
    e.for_range(zero, a.batch, |e, n| {
        let (s, d) = (src(e, n), dst(e, n));
        e.for_const(0, per, |e, i| {
            let v = e.load(s, i);
            e.store(d, i, v);
        });
    });
}

fn lower_op<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
) -> Result<(), LlvmError> {
    let node = c.graph.node(n);
    let ops = c.graph.operands(n);
    match &node.op {
        Op::Conv { geom, fused } => conv(e, c, a, n, &ops, geom, fused),
        Op::ConvTranspose { geom, fused, .. } => conv_transpose(e, c, a, n, &ops, geom, fused),
        Op::Linear { fused, .. } => linear(e, c, a, n, &ops, fused),
        Op::MaxPool(g) => {
            pool(e, c, a, n, ops[0], g, None);
            Ok(())
        }
        Op::AvgPool {
            geom,
            count_include_pad,
        } => {
            pool(e, c, a, n, ops[0], geom, Some(*count_include_pad));
            Ok(())
        }
        Op::GlobalAvgPool => {
            global_avgpool(e, c, a, n, ops[0]);
            Ok(())
        }
        Op::Affine { act } => {
            let (sc, sh) = (c.konst(ops[1]), c.konst(ops[2]));
            let act = *act;
            per_channel(e, c, a, n, ops[0], move |e, a, ch, x| {
                let s = e.load(a.konst(e, sc), ch);
                let t = e.load(a.konst(e, sh), ch);
                let v = e.fmuladd(x, s, t);
                act.map_or(v, |f| e.act(v, f))
            });
            Ok(())
        }
        Op::Act(f) => {
            let f = *f;
            elementwise(e, c, a, n, &ops, move |e, xs| e.act(xs[0], f));
            Ok(())
        }
        Op::Add => {
            elementwise(e, c, a, n, &ops, |e, xs| e.fadd(xs[0], xs[1]));
            Ok(())
        }
        Op::Flatten | Op::Identity | Op::Dropout { .. } => {
            elementwise(e, c, a, n, &ops[..1], |_, xs| xs[0]);
            Ok(())
        }
        Op::Concat { placed } => {
            let (y, mut off) = (c.view(n), 0u64);
            for (i, &o) in ops.iter().enumerate() {
                let per = numel(c.shape(o)) as u64;
                if !placed.get(i).copied().unwrap_or(false) {
                    let dst = View {
                        offset: e.add(y.offset, e.int(off)),
                        ..y
                    };
                    let x = c.view(o);
                    copy_images(
                        e,
                        a,
                        per,
                        |e, b| a.image(e, x, b),
                        |e, b| a.image(e, dst, b),
                    );
                }
                off += per;
            }
            Ok(())
        }
        Op::Upsample { scale, mode } => {
            upsample(e, c, a, n, ops[0], *scale, *mode);
            Ok(())
        }
        Op::Softmax => {
            softmax(e, c, a, n, ops[0]);
            Ok(())
        }
        Op::ChannelPad {
            out_channels,
            stride,
        } => {
            channel_pad(e, c, a, n, ops[0], *out_channels, *stride);
            Ok(())
        }
        Op::BatchNorm { .. } | Op::Input | Op::Output | Op::Weight { .. } | Op::Const(_) => {
            Err(LlvmError::Internal(format!(
                "`{}` reached the CPU back end; the passes should have removed it",
                node.op.kind()
            )))
        }
    }
}

/// `(c, h, w)` of a 4-d shape, or `(c, 1, 1)` for a vector.
fn chw(s: &[usize]) -> (u64, u64, u64) {
    match *s {
        [c, h, w] => (c as u64, h as u64, w as u64),
        [c] => (c as u64, 1, 1),
        _ => (
            s.first().copied().unwrap_or(1) as u64,
            s[1..].iter().product::<usize>() as u64,
            1,
        ),
    }
}

/// Output positions `o` with `0 <= o*stride + shift < extent`, within `0..out`.
fn valid_range(out: u64, stride: u64, shift: i64, extent: u64) -> (u64, u64) {
    let (s, ext) = (stride as i64, extent as i64);
    let lo = if shift >= 0 { 0 } else { (-shift + s - 1) / s };
    let hi = if ext - 1 - shift < 0 {
        0
    } else {
        (ext - 1 - shift) / s + 1
    };
    (lo.max(0) as u64, (hi.max(0) as u64).min(out))
}

/// `valid_range` with a run-time shift: the loop bounds of one kernel tap.
fn valid_range_rt<'ctx>(
    e: &Emitter<'_, 'ctx>,
    out: u64,
    stride: u64,
    shift: IntValue<'ctx>,
    extent: u64,
) -> (IntValue<'ctx>, IntValue<'ctx>) {
    let s = e.int(stride);
    // lo = max(0, ceil(-shift / s)); sdiv truncates, which is ceil here.
    let lo = e.smax(e.int(0), e.sdiv(e.sub(e.int(stride - 1), shift), s));
    // hi = min(out, floor((extent - 1 - shift) / s) + 1), or 0 if negative.
    let num = e.sub(e.int(extent - 1), shift);
    let neg =
        e.b.build_int_compare(inkwell::IntPredicate::SLT, num, e.int(0), "")
            .expect("cmp");
    let hi = e.add(e.sdiv(num, s), e.int(1));
    let hi =
        e.b.build_select(neg, e.int(0), hi, "")
            .expect("select")
            .into_int_value();
    (lo, e.smin(hi, e.int(out)))
}

/// The epilogue's inputs for one image: the bias (a constant offset) and
/// the residual's image.
struct EpilogueInputs<'ctx> {
    bias: Option<IntValue<'ctx>>,
    residual: Option<PointerValue<'ctx>>,
}

/// Applies the epilogue to every output of channel `oc`'s plane.
fn epilogue<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    a: &Args<'ctx>,
    fused: &Fused,
    inputs: &EpilogueInputs<'ctx>,
    plane: PointerValue<'ctx>,
    oc: IntValue<'ctx>,
    len: u64,
) {
    e.for_const(0, len, |e, i| {
        let mut v = e.load(plane, i);
        for step in &fused.epilogue {
            v = match step {
                EpilogueStep::Bias => e.fadd(
                    v,
                    e.load(a.konst(e, inputs.bias.expect("bias operand")), oc),
                ),
                EpilogueStep::Add => {
                    let z = inputs.residual.expect("add operand");
                    e.fadd(v, e.load(z, e.mad(oc, len, i)))
                }
                EpilogueStep::Act(f) => e.act(v, *f),
            };
        }
        e.store(plane, i, v);
    });
}

/// Operands after the weight: (prologue scale/shift offsets, bias offset,
/// residual node).
#[allow(clippy::type_complexity)]
fn fused_operands<'ctx>(
    c: &Ctx<'_, 'ctx>,
    ops: &[NodeIndex],
    fused: &Fused,
) -> (
    Option<(IntValue<'ctx>, IntValue<'ctx>)>,
    Vec<IntValue<'ctx>>,
    Option<NodeIndex>,
) {
    let mut i = 2;
    let pro = fused.prologue.map(|_| {
        i += 2;
        (c.konst(ops[2]), c.konst(ops[3]))
    });
    let (mut bias, mut residual) = (Vec::new(), None);
    for step in &fused.epilogue {
        match step {
            EpilogueStep::Bias => {
                bias.push(c.konst(ops[i]));
                i += 1;
            }
            EpilogueStep::Add => {
                residual = Some(ops[i]);
                i += 1;
            }
            EpilogueStep::Act(_) => {}
        }
    }
    (pro, bias, residual)
}

fn prologue_value<'ctx>(
    e: &Emitter<'_, 'ctx>,
    fused: &Fused,
    x: FloatValue<'ctx>,
    st: Option<(FloatValue<'ctx>, FloatValue<'ctx>)>,
) -> FloatValue<'ctx> {
    match (fused.prologue, st) {
        (Some(p), Some((s, t))) => {
            let v = e.fmuladd(x, s, t);
            p.act.map_or(v, |f| e.act(v, f))
        }
        _ => x,
    }
}

/// Direct convolution: per output channel, accumulate every (input channel,
/// tap) into the output plane; each tap's valid output range is known at
/// compile time, so the innermost loop is a branch-free axpy over a row.
fn conv<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    ops: &[NodeIndex],
    g: &ConvGeom,
    fused: &Fused,
) -> Result<(), LlvmError> {
    let (ic_all, h, w) = chw(c.shape(ops[0]));
    let (oc_all, oh, ow) = chw(c.shape(n));
    let groups = g.groups as u64;
    let (icg, ocg) = (ic_all / groups, oc_all / groups);
    let (kh, kw) = (g.kernel[0] as u64, g.kernel[1] as u64);
    let (sh, sw) = (g.stride[0] as u64, g.stride[1] as u64);
    let (ph, pw) = (g.pad[0] as i64, g.pad[1] as i64);
    let (dh, dw) = (g.dilation[0] as i64, g.dilation[1] as i64);
    let wt = c.konst(ops[1]);
    let (pro, bias, residual) = fused_operands(c, ops, fused);
    let (vx, vy) = (c.view(ops[0]), c.view(n));
    let vz = residual.map(|r| c.view(r));
    let zero = e.int(0);
    e.for_range(zero, a.batch, |e, b| {
        let (xb, yb) = (a.image(e, vx, b), a.image(e, vy, b));
        let zb = vz.map(|v| a.image(e, v, b));
        e.for_const(0, oc_all, |e, oc| {
            let plane = e.at(yb, e.mul(oc, e.int(oh * ow)));
            e.for_const(0, oh * ow, |e, i| e.store(plane, i, e.f32(0.0)));
            let grp = e.sdiv(oc, e.int(ocg));
            let ic0 = e.mul(grp, e.int(icg));
            e.for_const(0, icg, |e, j| {
                let ic = e.add(ic0, j);
                let xplane = e.at(xb, e.mul(ic, e.int(h * w)));
                let st = pro.map(|(s, t)| (e.load(a.konst(e, s), ic), e.load(a.konst(e, t), ic)));
                let wrow = e.at(a.konst(e, wt), e.mul(e.mad(oc, icg, j), e.int(kh * kw)));
                // Taps are run-time loops: one vectorized row loop per conv
                // instead of one per tap keeps compile time low.
                e.for_const(0, kh, |e, ky| {
                    let shift_y = e.sub(e.mul(ky, e.int(dh as u64)), e.int(ph as u64));
                    let (y0, y1) = valid_range_rt(e, oh, sh, shift_y, h);
                    e.for_const(0, kw, |e, kx| {
                        let shift_x = e.sub(e.mul(kx, e.int(dw as u64)), e.int(pw as u64));
                        let (x0, x1) = valid_range_rt(e, ow, sw, shift_x, w);
                        let wv = e.load(wrow, e.mad(ky, kw, kx));
                        e.for_range(y0, y1, |e, r| {
                            let ih = e.add(e.mul(r, e.int(sh)), shift_y);
                            let xrow = e.at(xplane, e.mul(ih, e.int(w)));
                            let yrow = e.at(plane, e.mul(r, e.int(ow)));
                            e.for_range(x0, x1, |e, q| {
                                let iw = e.add(e.mul(q, e.int(sw)), shift_x);
                                let xv = prologue_value(e, fused, e.load(xrow, iw), st);
                                let acc = e.fmuladd(xv, wv, e.load(yrow, q));
                                e.store(yrow, q, acc);
                            });
                        });
                    });
                });
            });
            epilogue(
                e,
                a,
                fused,
                &EpilogueInputs {
                    bias: bias.first().copied(),
                    residual: zb,
                },
                plane,
                oc,
                oh * ow,
            );
        });
    });
    Ok(())
}

/// Transposed convolution as a scatter: every input pixel adds
/// `x · w[tap]` to the output pixel its tap lands on.
fn conv_transpose<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    ops: &[NodeIndex],
    g: &ConvGeom,
    fused: &Fused,
) -> Result<(), LlvmError> {
    let (ic_all, h, w) = chw(c.shape(ops[0]));
    let (oc_all, oh, ow) = chw(c.shape(n));
    let groups = g.groups as u64;
    let (icg, ocg) = (ic_all / groups, oc_all / groups);
    let (kh, kw) = (g.kernel[0] as u64, g.kernel[1] as u64);
    let (sh, sw) = (g.stride[0] as u64, g.stride[1] as u64);
    let (ph, pw) = (g.pad[0] as i64, g.pad[1] as i64);
    let (dh, dw) = (g.dilation[0] as i64, g.dilation[1] as i64);
    let wt = c.konst(ops[1]);
    let (pro, bias, residual) = fused_operands(c, ops, fused);
    let (vx, vy) = (c.view(ops[0]), c.view(n));
    let vz = residual.map(|r| c.view(r));
    let zero = e.int(0);
    e.for_range(zero, a.batch, |e, b| {
        let (xb, yb) = (a.image(e, vx, b), a.image(e, vy, b));
        let zb = vz.map(|v| a.image(e, v, b));
        e.for_const(0, oc_all * oh * ow, |e, i| e.store(yb, i, e.f32(0.0)));
        e.for_const(0, ic_all, |e, ic| {
            let grp = e.sdiv(ic, e.int(icg));
            let xplane = e.at(xb, e.mul(ic, e.int(h * w)));
            let st = pro.map(|(s, t)| (e.load(a.konst(e, s), ic), e.load(a.konst(e, t), ic)));
            e.for_const(0, ocg, |e, j| {
                let oc = e.mad(grp, ocg, j);
                let yplane = e.at(yb, e.mul(oc, e.int(oh * ow)));
                let wrow = e.at(a.konst(e, wt), e.mul(e.mad(ic, ocg, j), e.int(kh * kw)));
                for ky in 0..kh {
                    // oh = ih*s + (ky*d - p) must fall inside the output.
                    let shift_y = ky as i64 * dh - ph;
                    let (i0, i1) = valid_range(h, sh, shift_y, oh);
                    for kx in 0..kw {
                        let shift_x = kx as i64 * dw - pw;
                        let (j0, j1) = valid_range(w, sw, shift_x, ow);
                        if i0 >= i1 || j0 >= j1 {
                            continue;
                        }
                        let wv = e.load(wrow, e.int(ky * kw + kx));
                        e.for_const(i0, i1, |e, r| {
                            let orow =
                                e.add(e.mul(r, e.int(sh)), e.i64t.const_int(shift_y as u64, true));
                            let yrow = e.at(yplane, e.mul(orow, e.int(ow)));
                            let xrow = e.at(xplane, e.mul(r, e.int(w)));
                            e.for_const(j0, j1, |e, q| {
                                let ocol = e.add(
                                    e.mul(q, e.int(sw)),
                                    e.i64t.const_int(shift_x as u64, true),
                                );
                                let xv = prologue_value(e, fused, e.load(xrow, q), st);
                                let acc = e.fmuladd(xv, wv, e.load(yrow, ocol));
                                e.store(yrow, ocol, acc);
                            });
                        });
                    }
                }
            });
        });
        e.for_const(0, oc_all, |e, oc| {
            let plane = e.at(yb, e.mul(oc, e.int(oh * ow)));
            epilogue(
                e,
                a,
                fused,
                &EpilogueInputs {
                    bias: bias.first().copied(),
                    residual: zb,
                },
                plane,
                oc,
                oh * ow,
            );
        });
    });
    Ok(())
}

fn linear<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    ops: &[NodeIndex],
    fused: &Fused,
) -> Result<(), LlvmError> {
    let inn = numel(c.shape(ops[0])) as u64;
    let out = numel(c.shape(n)) as u64;
    let wt = c.konst(ops[1]);
    let (pro, bias, residual) = fused_operands(c, ops, fused);
    let (vx, vy) = (c.view(ops[0]), c.view(n));
    let vz = residual.map(|r| c.view(r));
    let acc = e.slot();
    let zero = e.int(0);
    e.for_range(zero, a.batch, |e, b| {
        let (xb, yb) = (a.image(e, vx, b), a.image(e, vy, b));
        let zb = vz.map(|v| a.image(e, v, b));
        e.for_const(0, out, |e, o| {
            e.set(acc, e.f32(0.0));
            let wrow = e.at(a.konst(e, wt), e.mul(o, e.int(inn)));
            e.for_const(0, inn, |e, i| {
                let st = pro.map(|(s, t)| (e.load(a.konst(e, s), i), e.load(a.konst(e, t), i)));
                let xv = prologue_value(e, fused, e.load(xb, i), st);
                let v = e.fmuladd(xv, e.load(wrow, i), e.get(acc));
                e.set(acc, v);
            });
            e.store(yb, o, e.get(acc));
            let y1 = e.at(yb, o);
            // The epilogue of one output: a plane of length 1 at channel o.
            epilogue(
                e,
                a,
                fused,
                &EpilogueInputs {
                    bias: bias.first().copied(),
                    residual: zb,
                },
                y1,
                o,
                1,
            );
        });
    });
    Ok(())
}

/// Max pooling (`avg = None`) or average pooling with PyTorch's divisor.
fn pool<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    x: NodeIndex,
    g: &PoolGeom,
    avg: Option<bool>,
) {
    let (ch, h, w) = chw(c.shape(x));
    let (_, oh, ow) = chw(c.shape(n));
    let (k0, k1) = (g.kernel[0] as u64, g.kernel[1] as u64);
    let (s0, s1) = (g.stride[0] as u64, g.stride[1] as u64);
    let (p0, p1) = (g.pad[0] as u64, g.pad[1] as u64);
    let (d0, d1) = (g.dilation[0] as u64, g.dilation[1] as u64);
    let (vx, vy) = (c.view(x), c.view(n));
    let acc = e.slot();
    let cnt = e.slot();
    let zero = e.int(0);
    e.for_range(zero, a.batch, |e, b| {
        let (xb, yb) = (a.image(e, vx, b), a.image(e, vy, b));
        e.for_const(0, ch, |e, cc| {
            let xplane = e.at(xb, e.mul(cc, e.int(h * w)));
            let yplane = e.at(yb, e.mul(cc, e.int(oh * ow)));
            e.for_const(0, oh, |e, r| {
                let hs = e.sub(e.mul(r, e.int(s0)), e.int(p0));
                e.for_const(0, ow, |e, q| {
                    let ws = e.sub(e.mul(q, e.int(s1)), e.int(p1));
                    e.set(
                        acc,
                        e.f32(if avg.is_some() {
                            0.0
                        } else {
                            f64::NEG_INFINITY
                        }),
                    );
                    e.set(cnt, e.f32(0.0));
                    for ky in 0..k0 {
                        let ih = e.add(hs, e.int(ky * d0));
                        for kx in 0..k1 {
                            let iw = e.add(ws, e.int(kx * d1));
                            // In bounds: 0 <= ih < h and 0 <= iw < w, as unsigned compares.
                            let okh =
                                e.b.build_int_compare(inkwell::IntPredicate::ULT, ih, e.int(h), "")
                                    .expect("cmp");
                            let okw =
                                e.b.build_int_compare(inkwell::IntPredicate::ULT, iw, e.int(w), "")
                                    .expect("cmp");
                            let ok = e.b.build_and(okh, okw, "").expect("and");
                            let ihc = e.smin(e.smax(ih, e.int(0)), e.int(h - 1));
                            let iwc = e.smin(e.smax(iw, e.int(0)), e.int(w - 1));
                            let v = e.load(xplane, e.mad(ihc, w, iwc));
                            let next = match avg {
                                None => e.fmax(e.get(acc), v),
                                Some(_) => e.fadd(e.get(acc), v),
                            };
                            let kept =
                                e.b.build_select(ok, next, e.get(acc), "")
                                    .expect("select")
                                    .into_float_value();
                            e.set(acc, kept);
                            let c1 = e.fadd(e.get(cnt), e.f32(1.0));
                            let kc =
                                e.b.build_select(ok, c1, e.get(cnt), "")
                                    .expect("select")
                                    .into_float_value();
                            e.set(cnt, kc);
                        }
                    }
                    let v = match avg {
                        None => e.get(acc),
                        Some(false) => e.fdiv(e.get(acc), e.fmax(e.get(cnt), e.f32(1.0))),
                        Some(true) => {
                            // (min(hs+k, h+p) - hs) * (min(ws+k, w+p) - ws)
                            let he = e.smin(e.add(hs, e.int(k0)), e.int(h + p0));
                            let we = e.smin(e.add(ws, e.int(k1)), e.int(w + p1));
                            let size = e.mul(e.sub(he, hs), e.sub(we, ws));
                            e.fdiv(e.get(acc), e.int_to_float(size))
                        }
                    };
                    e.store(yplane, e.mad(r, ow, q), v);
                });
            });
        });
    });
}

fn global_avgpool<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    x: NodeIndex,
) {
    let (ch, h, w) = chw(c.shape(x));
    let (vx, vy) = (c.view(x), c.view(n));
    let acc = e.slot();
    let zero = e.int(0);
    e.for_range(zero, a.batch, |e, b| {
        let (xb, yb) = (a.image(e, vx, b), a.image(e, vy, b));
        e.for_const(0, ch, |e, cc| {
            e.set(acc, e.f32(0.0));
            let plane = e.at(xb, e.mul(cc, e.int(h * w)));
            e.for_const(0, h * w, |e, i| {
                let v = e.fadd(e.get(acc), e.load(plane, i));
                e.set(acc, v);
            });
            let mean = e.fdiv(e.get(acc), e.f32((h * w) as f64));
            e.store(yb, cc, mean);
        });
    });
}

/// `y[c, i] = f(x[c, i])` with the channel index available.
fn per_channel<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    x: NodeIndex,
    f: impl Fn(&Emitter<'_, 'ctx>, &Args<'ctx>, IntValue<'ctx>, FloatValue<'ctx>) -> FloatValue<'ctx>,
) {
    let (ch, h, w) = chw(c.shape(x));
    let (vx, vy) = (c.view(x), c.view(n));
    let zero = e.int(0);
    e.for_range(zero, a.batch, |e, b| {
        let (xb, yb) = (a.image(e, vx, b), a.image(e, vy, b));
        e.for_const(0, ch, |e, cc| {
            let (xp, yp) = (
                e.at(xb, e.mul(cc, e.int(h * w))),
                e.at(yb, e.mul(cc, e.int(h * w))),
            );
            e.for_const(0, h * w, |e, i| {
                let v = f(e, a, cc, e.load(xp, i));
                e.store(yp, i, v);
            });
        });
    });
}

/// `y[i] = f(x0[i], x1[i], ...)` over one image's elements.
fn elementwise<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    xs: &[NodeIndex],
    f: impl Fn(&Emitter<'_, 'ctx>, &[FloatValue<'ctx>]) -> FloatValue<'ctx>,
) {
    let per = numel(c.shape(n)) as u64;
    let views: Vec<View> = xs.iter().map(|&x| c.view(x)).collect();
    let vy = c.view(n);
    let zero = e.int(0);
    e.for_range(zero, a.batch, |e, b| {
        let bases: Vec<PointerValue> = views.iter().map(|&v| a.image(e, v, b)).collect();
        let yb = a.image(e, vy, b);
        e.for_const(0, per, |e, i| {
            let vals: Vec<FloatValue> = bases.iter().map(|&p| e.load(p, i)).collect();
            let v = f(e, &vals);
            e.store(yb, i, v);
        });
    });
}

fn upsample<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    x: NodeIndex,
    scale: [usize; 2],
    mode: UpsampleMode,
) {
    let (ch, h, w) = chw(c.shape(x));
    let (_, oh, ow) = chw(c.shape(n));
    let (vx, vy) = (c.view(x), c.view(n));
    let zero = e.int(0);
    // Source coordinate, lower index, upper index and weight of the upper
    // one along an axis (PyTorch's `upsample_bilinear2d`).
    let coord =
        |e: &Emitter<'_, 'ctx>, o: IntValue<'ctx>, inn: u64, out: u64, s: usize, align: bool| {
            let of = e.int_to_float(o);
            let src = if align {
                let r = if out > 1 {
                    (inn - 1) as f64 / (out - 1) as f64
                } else {
                    0.0
                };
                e.fmul(of, e.f32(r))
            } else {
                let v = e.fsub(
                    e.fmul(e.fadd(of, e.f32(0.5)), e.f32(1.0 / s as f64)),
                    e.f32(0.5),
                );
                e.fmax(v, e.f32(0.0))
            };
            let lo =
                e.b.build_float_to_signed_int(e.floor(src), e.i64t, "")
                    .expect("fptosi");
            let lo = e.smin(lo, e.int(inn - 1));
            let hi = e.smin(e.add(lo, e.int(1)), e.int(inn - 1));
            let lam = e.fsub(src, e.int_to_float(lo));
            (lo, hi, lam)
        };
    e.for_range(zero, a.batch, |e, b| {
        let (xb, yb) = (a.image(e, vx, b), a.image(e, vy, b));
        e.for_const(0, ch, |e, cc| {
            let xp = e.at(xb, e.mul(cc, e.int(h * w)));
            let yp = e.at(yb, e.mul(cc, e.int(oh * ow)));
            e.for_const(0, oh, |e, r| {
                e.for_const(0, ow, |e, q| {
                    let v = match mode {
                        UpsampleMode::Nearest => {
                            let sr = e.sdiv(r, e.int(scale[0] as u64));
                            let sq = e.sdiv(q, e.int(scale[1] as u64));
                            e.load(xp, e.mad(sr, w, sq))
                        }
                        UpsampleMode::Bilinear { align_corners } => {
                            let (r0, r1, lr) = coord(e, r, h, oh, scale[0], align_corners);
                            let (q0, q1, lq) = coord(e, q, w, ow, scale[1], align_corners);
                            let at = |rr, qq| e.load(xp, e.mad(rr, w, qq));
                            let top = e.fmuladd(e.fsub(at(r0, q1), at(r0, q0)), lq, at(r0, q0));
                            let bot = e.fmuladd(e.fsub(at(r1, q1), at(r1, q0)), lq, at(r1, q0));
                            e.fmuladd(e.fsub(bot, top), lr, top)
                        }
                    };
                    e.store(yp, e.mad(r, ow, q), v);
                });
            });
        });
    });
}

fn softmax<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    x: NodeIndex,
) {
    let (ch, h, w) = chw(c.shape(x));
    let hw = h * w;
    let (vx, vy) = (c.view(x), c.view(n));
    let (mx, sum) = (e.slot(), e.slot());
    let zero = e.int(0);
    e.for_range(zero, a.batch, |e, b| {
        let (xb, yb) = (a.image(e, vx, b), a.image(e, vy, b));
        e.for_const(0, hw, |e, p| {
            e.set(mx, e.f32(f64::NEG_INFINITY));
            e.for_const(0, ch, |e, cc| {
                let v = e.fmax(e.load(xb, e.mad(cc, hw, p)), e.get(mx));
                e.set(mx, v);
            });
            e.set(sum, e.f32(0.0));
            e.for_const(0, ch, |e, cc| {
                let i = e.mad(cc, hw, p);
                let ex = e.exp(e.fsub(e.load(xb, i), e.get(mx)));
                e.store(yb, i, ex);
                let s = e.fadd(e.get(sum), ex);
                e.set(sum, s);
            });
            e.for_const(0, ch, |e, cc| {
                let i = e.mad(cc, hw, p);
                let v = e.fdiv(e.load(yb, i), e.get(sum));
                e.store(yb, i, v);
            });
        });
    });
}

fn channel_pad<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    x: NodeIndex,
    out_channels: usize,
    stride: usize,
) {
    let (ch, h, w) = chw(c.shape(x));
    let (_, oh, ow) = chw(c.shape(n));
    let before = (out_channels as u64 - ch) / 2;
    let s = stride as u64;
    let (vx, vy) = (c.view(x), c.view(n));
    let zero = e.int(0);
    e.for_range(zero, a.batch, |e, b| {
        let (xb, yb) = (a.image(e, vx, b), a.image(e, vy, b));
        e.for_const(0, out_channels as u64 * oh * ow, |e, i| {
            e.store(yb, i, e.f32(0.0))
        });
        e.for_const(0, ch, |e, cc| {
            e.for_const(0, oh, |e, r| {
                e.for_const(0, ow, |e, q| {
                    let src = e.add(
                        e.mul(cc, e.int(h * w)),
                        e.add(e.mul(r, e.int(s * w)), e.mul(q, e.int(s))),
                    );
                    let dst = e.add(
                        e.mul(e.add(cc, e.int(before)), e.int(oh * ow)),
                        e.mad(r, ow, q),
                    );
                    let v = e.load(xb, src);
                    e.store(yb, dst, v);
                });
            });
        });
    });
}
