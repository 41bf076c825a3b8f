//! Lowers an optimized, planned graph to LLVM functions for x86-64 or
//! AArch64 (the same IR; the vector width is `ConstPool::isa`'s).
//!
//! Each op is one or more kernels over work units (an output channel of one
//! image, a chunk of elements, a block of conv tiles, ...): `kernel(arena,
//! consts, batch, offsets..., begin, end)` computes units `[begin, end)`.
//! Ops with the same configuration share a kernel; a per-call thunk binds
//! the offsets, and the entry `void <model>_run(const float *input, float
//! *output, i64 batch, const float *consts, float *arena, i64 *ticks)` copies
//! the input in, hands every call's `batch × units` to `resnetc_parallel_for`
//! (runtime/parallel.c), or a run of activation-heavy calls one image at a
//! time (`MemoryPlan::runs`), and copies the output out; with `ticks` it adds
//! each call's time to its entry. Convs are register-tiled GEMM kernels
//! (`conv_gemm.rs`); the other kernel bodies are plain loop nests chosen so
//! LLVM vectorizes the innermost loop.

use super::consts::{ConstPool, ARENA_ALIGN};
use super::conv_bf16;
use super::conv_gemm::{self, ConvShape};
use super::conv_winograd;
use crate::backend::llvm::emit::Emitter;
use crate::backend::llvm::LlvmError;
use crate::ir::graph::{chw, numel};
use crate::ir::op::{ConvGeom, EpilogueStep, Fused, Op, PoolGeom, Scale, UpsampleMode};
use crate::ir::plan::MemoryPlan;
use crate::ir::Graph;
use inkwell::context::Context;
use inkwell::module::{Linkage, Module};
use inkwell::types::BasicMetadataTypeEnum;
use inkwell::values::{
    BasicMetadataValueEnum, FloatValue, FunctionValue, IntValue, PointerValue, VectorValue,
};
use inkwell::IntPredicate;
use petgraph::stable_graph::NodeIndex;
use std::cell::RefCell;
use std::collections::HashMap;

/// Where one value lives, in f32 elements: the buffer's offset in an
/// image's slice of the arena and the offset inside it, both kernel
/// arguments, and the distance between images (the slice: the memory
/// plan's buffers, then the workspace), a constant of the kernel. Each
/// image has its own slice, so images never share the plan's buffers
/// whatever it reuses, and ops can run image by image (the plan's runs,
/// `MemoryPlan::runs`; such kernels share the first image's workspace,
/// `Ctx::workspace`).
#[derive(Clone, Copy, Debug)]
pub(super) struct View<'ctx> {
    buffer: IntValue<'ctx>,
    offset: IntValue<'ctx>,
    stride: u64,
}

/// The kernel being emitted: its output and operands bound to its
/// arguments. Ops with the same configuration share one kernel, called with
/// different offsets.
pub(super) struct Ctx<'g, 'ctx> {
    pub graph: &'g Graph,
    plan: &'g MemoryPlan,
    pool: &'g ConstPool,
    views: RefCell<HashMap<NodeIndex, View<'ctx>>>,
    consts: RefCell<HashMap<NodeIndex, IntValue<'ctx>>>,
    /// The kernel being emitted runs image by image (`workspace`).
    by_image: std::cell::Cell<bool>,
}

impl<'ctx> Ctx<'_, 'ctx> {
    pub fn view(&self, n: NodeIndex) -> View<'ctx> {
        self.views.borrow()[&n]
    }

    fn shape(&self, n: NodeIndex) -> &[usize] {
        &self.graph.node(n).shape
    }

    pub fn konst(&self, n: NodeIndex) -> IntValue<'ctx> {
        self.consts.borrow()[&n]
    }

    /// (buffer, offset, stride) of a value in the plan.
    fn placement(&self, n: NodeIndex) -> (u64, u64, u64) {
        let s = self.plan.storage[&n];
        let b = &self.plan.buffers[s.buffer];
        (b.offset as u64 / 4, s.elem_offset as u64, self.slice())
    }

    /// Floats between images: an image's slice of the arena.
    fn slice(&self) -> u64 {
        self.pool.arena_floats(self.plan) as u64
    }

    /// The kernels' workspace, after the plan's buffers: what a kernel
    /// stages for itself. A kernel run image by image uses the first
    /// image's for every image (its images go one after the other, and
    /// nothing outlives the op there), so a batch stages in one image's
    /// cache footprint (with the shared handoffs: resnet50, bf16, batch 8,
    /// 111 → 105 ms).
    pub fn workspace(&self, e: &Emitter<'_, 'ctx>) -> View<'ctx> {
        View {
            buffer: e.int(self.plan.arena_bytes as u64 / 4),
            offset: e.int(0),
            stride: if self.by_image.get() { 0 } else { self.slice() },
        }
    }

    /// The workspace where a bf16 handoff (`conv_bf16::plan_handoffs`)
    /// lies, which outlives its producer: every image's own, or the first
    /// image's for all where producer and consumer are in one run.
    pub fn handoffs(&self, e: &Emitter<'_, 'ctx>, shared: bool) -> View<'ctx> {
        View {
            buffer: e.int(self.plan.arena_bytes as u64 / 4),
            offset: e.int(0),
            stride: if shared { 0 } else { self.slice() },
        }
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
pub(super) struct Args<'ctx> {
    arena: PointerValue<'ctx>,
    consts: PointerValue<'ctx>,
    pub batch: IntValue<'ctx>,
}

impl<'ctx> Args<'ctx> {
    /// First element of image `n` of a view.
    pub fn image(
        &self,
        e: &Emitter<'_, 'ctx>,
        v: View<'ctx>,
        n: IntValue<'ctx>,
    ) -> PointerValue<'ctx> {
        let start = e.add(e.add(v.buffer, v.offset), e.mul(n, e.int(v.stride)));
        e.at(self.arena, start)
    }

    pub fn konst(&self, e: &Emitter<'_, 'ctx>, offset: IntValue<'ctx>) -> PointerValue<'ctx> {
        e.at(self.consts, offset)
    }
}

/// Which kernel of an op: the only one, or a GEMM conv's staging or tiles.
#[derive(Clone, Copy, Debug)]
enum Part {
    Whole,
    Stage,
    Gemm,
    /// A Winograd conv's input transform, then its GEMMs and output
    /// transform.
    WinoInput,
    WinoGemm,
    /// A bf16 AMX conv's staging (pair rows), then its tile GEMMs.
    BfStage,
    BfGemm,
}

/// Elements per work unit of elementwise ops.
const CHUNK: u64 = 4096;

/// Work units per image of the op at `n`.
fn units(c: &Ctx<'_, '_>, n: NodeIndex) -> u64 {
    let node = c.graph.node(n);
    let out = chw(&node.shape);
    match &node.op {
        Op::Conv { .. } | Op::ConvTranspose { .. } | Op::ChannelPad { .. } => out.0,
        Op::Linear { .. } => (numel(&node.shape) as u64).div_ceil(LINEAR_OUTS),
        Op::MaxPool(_)
        | Op::AvgPool { .. }
        | Op::GlobalAvgPool
        | Op::Affine { .. }
        | Op::Upsample { .. } => out.0,
        Op::Softmax => out.1 * out.2,
        Op::Mul { .. } if c.graph.scales_channels(n) => out.0,
        Op::Concat { .. } => 1,
        _ => (numel(&node.shape) as u64).div_ceil(CHUNK).max(1),
    }
}

/// Builds the module for `graph` (optimized and planned).
pub fn lower<'ctx>(
    ctx: &'ctx Context,
    graph: &Graph,
    pool: &ConstPool,
    symbol: &str,
) -> Result<(Module<'ctx>, Vec<String>), LlvmError> {
    let plan = graph.plan.as_ref().ok_or(LlvmError::Unplanned)?;
    let module = ctx.create_module(symbol);
    let c = Ctx {
        graph,
        plan,
        pool,
        views: RefCell::new(HashMap::new()),
        consts: RefCell::new(HashMap::new()),
        by_image: std::cell::Cell::new(false),
    };
    let ptr = ctx.ptr_type(inkwell::AddressSpace::default());
    let i64t = ctx.i64_type();
    // The context every thunk receives: arena, constants, batch, and the
    // image an image-by-image call runs.
    let ctx_ty = ctx.struct_type(&[ptr.into(), ptr.into(), i64t.into(), i64t.into()], false);
    let thunk_ty = ctx
        .void_type()
        .fn_type(&[ptr.into(), i64t.into(), i64t.into()], false);
    let parallel_for = module.add_function(
        "resnetc_parallel_for",
        ctx.void_type()
            .fn_type(&[i64t.into(), ptr.into(), ptr.into()], false),
        Some(Linkage::External),
    );
    let mut kernels: HashMap<String, FunctionValue<'ctx>> = HashMap::new();
    // (thunk, units per image, the image-by-image run it is in) per op, in
    // schedule order, and what each is.
    let mut calls = Vec::new();
    let mut labels = Vec::new();
    for (k, &n) in plan.schedule.iter().enumerate() {
        let node = graph.node(n);
        if matches!(node.op, Op::Input | Op::Output) || plan.is_view(graph, n) {
            continue;
        }
        // Argument slots: the output, then every operand, two i64 each.
        let slots: Vec<NodeIndex> = std::iter::once(n).chain(graph.operands(n)).collect();
        let mut values = Vec::new();
        // The plan's runs go image by image: what shares one copy inside a
        // run (`Handoff::shared`) relies on this grouping being theirs.
        let run = plan.run_at(k);
        let by_image = run.is_some();
        let mut key = format!("{:?}|{by_image}", node.op);
        // Inside a kernel, views are bound by node: an op that reads one
        // value in two slots (`a + a`) binds both to the first. Ops share a
        // kernel only when their slots alias alike (found in review).
        for (i, s) in slots.iter().enumerate() {
            let first = slots.iter().position(|t| t == s).unwrap_or(i);
            key.push_str(&format!("|{first}"));
        }
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
        // A conv on the GEMM path runs as two calls (staging, then tiles);
        // every other op as one.
        let parts = match (pool.gemm.get(&n), pool.wino.get(&n)) {
            _ if pool.bf.contains_key(&n) => {
                let p = &pool.bf[&n];
                // Without staging where the producer stages the input.
                [
                    (Part::BfStage, p.stage_units()),
                    (Part::BfGemm, p.gemm_units()),
                ]
                .into_iter()
                .filter(|&(_, units)| units > 0)
                .collect()
            }
            (_, Some(w)) => vec![
                (Part::WinoInput, w.input_units()),
                (Part::WinoGemm, w.gemm_units()),
            ],
            (Some(p), None) => {
                let mut v = Vec::new();
                if p.staging.is_some() {
                    v.push((Part::Stage, p.groups * p.kdim()));
                }
                v.push((Part::Gemm, p.units()));
                v
            }
            (None, None) => vec![(Part::Whole, units(&c, n))],
        };
        // Convs of one shape share kernels unless their handoffs differ.
        if let Some(p) = pool.bf.get(&n) {
            key.push_str(&format!("|{:?}|{:?}", p.handoff_in, p.handoff_out));
        }
        for (pi, &(part, per_image)) in parts.iter().enumerate() {
            let key = format!("{key}|{part:?}");
            let kernel = match kernels.get(&key) {
                Some(&f) => f,
                None => {
                    let mut params: Vec<BasicMetadataTypeEnum> =
                        vec![ptr.into(), ptr.into(), i64t.into()];
                    params.extend(std::iter::repeat_n(
                        BasicMetadataTypeEnum::from(i64t),
                        values.len() + 2,
                    ));
                    let ty = ctx.void_type().fn_type(&params, false);
                    let f = module.add_function(
                        &format!("{symbol}_k{}_{}", kernels.len(), node.op.kind()),
                        ty,
                        Some(Linkage::Internal),
                    );
                    let mut e = Emitter::new(ctx, &module, f);
                    c.by_image.set(by_image);
                    e.lanes = pool.isa.lanes;
                    c.views.borrow_mut().clear();
                    c.consts.borrow_mut().clear();
                    for (i, &s) in slots.iter().enumerate().rev() {
                        let (p0, p1) =
                            (e.param_int(3 + 2 * i as u32), e.param_int(4 + 2 * i as u32));
                        if graph.node(s).op.is_const() {
                            c.consts.borrow_mut().insert(s, p0);
                        } else {
                            let stride = c.placement(s).2;
                            let v = View {
                                buffer: p0,
                                offset: p1,
                                stride,
                            };
                            c.views.borrow_mut().insert(s, v);
                        }
                    }
                    let a = Args {
                        arena: e.param_ptr(0),
                        consts: e.param_ptr(1),
                        batch: e.param_int(2),
                    };
                    let last = 3 + values.len() as u32;
                    let (begin, end) = (e.param_int(last), e.param_int(last + 1));
                    let mut result = Ok(());
                    // AMX: this thread's tile configuration, once per call.
                    let tiles = matches!(part, Part::BfGemm);
                    if tiles {
                        e.tile_config();
                    }
                    e.for_range(begin, end, |e, t| {
                        let per = e.int(per_image);
                        let b = e.sdiv(t, per);
                        let u = e.srem(t, per);
                        if result.is_ok() {
                            let wino = pool.wino.get(&n);
                            result = match (part, pool.gemm.get(&n)) {
                                (Part::WinoInput, _) => match wino {
                                    Some(w) => {
                                        conv_winograd::stage(e, &c, &a, n, w, (b, u));
                                        Ok(())
                                    }
                                    None => Err(LlvmError::Internal("no Winograd plan".into())),
                                },
                                (Part::WinoGemm, _) => match wino {
                                    Some(w) => {
                                        conv_winograd::gemm(e, &c, &a, n, w, (b, u));
                                        Ok(())
                                    }
                                    None => Err(LlvmError::Internal("no Winograd plan".into())),
                                },
                                (Part::BfStage, _) => {
                                    conv_bf16::stage(e, &c, &a, n, &pool.bf[&n], (b, u));
                                    Ok(())
                                }
                                (Part::BfGemm, _) => {
                                    conv_bf16::gemm(e, &c, &a, n, &pool.bf[&n], (b, u));
                                    Ok(())
                                }
                                (Part::Stage, Some(p)) => conv_gemm::stage(e, &c, &a, n, p, (b, u)),
                                // Tiles order their units themselves.
                                (Part::Gemm, Some(p)) => {
                                    conv_gemm::gemm(e, &c, &a, n, p, t, by_image)
                                }
                                _ => lower_unit(e, &c, &a, n, b, u),
                            };
                        }
                    });
                    result?;
                    if tiles {
                        e.tile_release();
                    }
                    e.ret_void();
                    kernels.insert(key, f);
                    f
                }
            };
            // The thunk: unpack the context, bind this op's offsets.
            let thunk = module.add_function(
                &format!("{symbol}_op{k}_{pi}"),
                thunk_ty,
                Some(Linkage::Internal),
            );
            let e = Emitter::new(ctx, &module, thunk);
            let cx = e.param_ptr(0);
            let field = |i: u32, ty: inkwell::types::BasicTypeEnum<'ctx>| {
                let p = e.b.build_struct_gep(ctx_ty, cx, i, "").expect("field");
                e.b.build_load(ty, p, "").expect("load")
            };
            let mut args: Vec<BasicMetadataValueEnum> = vec![
                field(0, ptr.into()).into(),
                field(1, ptr.into()).into(),
                field(2, i64t.into()).into(),
            ];
            args.extend(
                values
                    .iter()
                    .map(|&v| BasicMetadataValueEnum::from(e.int(v))),
            );
            // Image by image, the pool hands out one image's units: shift
            // them to that image's.
            let (mut begin, mut end) = (e.param_int(1), e.param_int(2));
            if by_image {
                let image = field(3, i64t.into()).into_int_value();
                let base = e.mul(image, e.int(per_image));
                (begin, end) = (e.add(begin, base), e.add(end, base));
            }
            args.push(begin.into());
            args.push(end.into());
            e.b.build_call(kernel, &args, "").expect("call");
            e.ret_void();
            calls.push((thunk, per_image, run));
            let suffix = match part {
                Part::Whole => "",
                Part::Stage => " (staging)",
                Part::Gemm => " (gemm)",
                Part::WinoInput => " (winograd input)",
                Part::WinoGemm => " (winograd gemm)",
                Part::BfStage => " (bf16 staging)",
                Part::BfGemm => " (amx gemm)",
            };
            labels.push(format!("{} {}{suffix}", node.name, node.op.kind()));
        }
    }
    // The entry: input in, schedule, output out.
    let run_ty = ctx.void_type().fn_type(
        &[
            ptr.into(),
            ptr.into(),
            i64t.into(),
            ptr.into(),
            ptr.into(),
            ptr.into(),
        ],
        false,
    );
    let now = module.add_function(
        "resnetc_now_ns",
        i64t.fn_type(&[], false),
        Some(Linkage::External),
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
    // The arena from its first line boundary (the caller's block holds
    // ARENA_ALIGN bytes of slack): every buffer offset is a multiple of 64.
    let arena = {
        let addr = e.b.build_ptr_to_int(arena, i64t, "").expect("addr");
        let skip = e.b.build_int_neg(addr, "").expect("neg");
        let skip =
            e.b.build_and(skip, e.int(ARENA_ALIGN - 1), "")
                .expect("and");
        // SAFETY of the IR: within the caller's block (its slack).
        unsafe { e.b.build_in_bounds_gep(ctx.i8_type(), arena, &[skip], "") }.expect("gep")
    };
    let a = Args {
        arena,
        consts,
        batch,
    };
    if !pool.bf.is_empty() {
        // The OS's permission for AMX tile state, before any tile
        // instruction (the JIT asks beforehand and refuses cleanly).
        let permit = module.add_function(
            "resnetc_amx_permit",
            ctx.i32_type().fn_type(&[], false),
            Some(Linkage::External),
        );
        e.b.build_call(permit, &[], "").expect("call");
    }
    let cx = e.b.build_alloca(ctx_ty, "ctx").expect("alloca");
    for (i, v) in [arena.into(), consts.into(), batch.into(), e.int(0).into()]
        .into_iter()
        .enumerate()
    {
        let p =
            e.b.build_struct_gep(ctx_ty, cx, i as u32, "")
                .expect("field");
        let v: inkwell::values::BasicValueEnum = v;
        e.b.build_store(p, v).expect("store");
    }
    let per_in = numel(graph.input_shape()) as u64;
    let vin = c.const_view(&e, graph.input);
    copy_images(
        &mut e,
        &a,
        per_in,
        |e, n| e.at(input, e.mul(n, e.int(per_in))),
        |e, n| a.image(e, vin, n),
    );
    // With a profile buffer, each call's time (all threads done) is added
    // to its entry: what `bench --layers` reports.
    let ticks = e.param_ptr(5);
    let profiling = e.b.build_is_not_null(ticks, "").expect("cmp");
    let last = e.b.build_alloca(i64t, "last").expect("alloca");
    let tick = |e: &mut Emitter<'_, 'ctx>, i: Option<u64>| {
        e.if_else(
            profiling,
            |e| {
                let t = e.b.build_call(now, &[], "").expect("call");
                let t = t
                    .try_as_basic_value()
                    .basic()
                    .expect("i64")
                    .into_int_value();
                if let Some(i) = i {
                    let p = unsafe { e.b.build_in_bounds_gep(i64t, ticks, &[e.int(i)], "") }
                        .expect("gep");
                    let before =
                        e.b.build_load(i64t, last, "")
                            .expect("load")
                            .into_int_value();
                    let sum = e.b.build_load(i64t, p, "").expect("load").into_int_value();
                    e.b.build_store(p, e.add(sum, e.sub(t, before)))
                        .expect("store");
                }
                e.b.build_store(last, t).expect("store");
            },
            |_| {},
        )
    };
    tick(&mut e, None);
    let image_field = e.b.build_struct_gep(ctx_ty, cx, 3, "").expect("field");
    let mut i = 0;
    while i < calls.len() {
        // A run of image-by-image calls loops over the images; any other
        // call covers every image at once.
        let run = calls[i..]
            .iter()
            .take_while(|c| c.2.is_some() && c.2 == calls[i].2)
            .count()
            .max(1);
        let group = &calls[i..i + run];
        let emit = |e: &mut Emitter<'_, 'ctx>| {
            for (j, &(thunk, per_image, run)) in group.iter().enumerate() {
                let total = if run.is_some() {
                    e.int(per_image)
                } else {
                    e.mul(batch, e.int(per_image))
                };
                let f = thunk.as_global_value().as_pointer_value();
                e.b.build_call(parallel_for, &[total.into(), f.into(), cx.into()], "")
                    .expect("call");
                tick(e, Some((i + j) as u64));
            }
        };
        if group[0].2.is_some() {
            e.for_range(e.int(0), batch, |e, image| {
                e.b.build_store(image_field, image).expect("store");
                emit(e);
            });
        } else {
            emit(&mut e);
        }
        i += run;
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
    Ok((module, labels))
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

/// Emits unit `u` of image `b` of the op at `n`.
fn lower_unit<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    b: IntValue<'ctx>,
    u: IntValue<'ctx>,
) -> Result<(), LlvmError> {
    let node = c.graph.node(n);
    let ops = c.graph.operands(n);
    let u_ = (b, u);
    match &node.op {
        // Every conv has a GEMM plan (`conv_gemm::plans`): a weight has one
        // user, so its packed copy is that conv's alone.
        Op::Conv { .. } => Err(LlvmError::Internal(
            "a conv without a GEMM plan reached the per-unit lowering".into(),
        )),
        Op::ConvTranspose { geom, fused, .. } => conv_transpose(e, c, a, n, &ops, geom, fused, u_),
        Op::Linear { fused, .. } => linear(e, c, a, n, &ops, fused, u_),
        Op::MaxPool(g) => pool(e, c, a, n, ops[0], g, None, u_),
        Op::AvgPool {
            geom,
            count_include_pad,
        } => pool(e, c, a, n, ops[0], geom, Some(*count_include_pad), u_),
        Op::GlobalAvgPool => global_avgpool(e, c, a, n, ops[0], u_),
        Op::Affine { act } => {
            let (sc, sh) = (c.konst(ops[1]), c.konst(ops[2]));
            let act = *act;
            per_channel(e, c, a, n, &ops[..1], u_, move |e, a, ch, xs| {
                let s = e.load(a.konst(e, sc), ch);
                let t = e.load(a.konst(e, sh), ch);
                let v = e.fmuladd(xs[0], s, t);
                act.map_or(v, |f| e.act(v, f))
            })
        }
        Op::Act(f) => {
            let f = *f;
            elementwise(e, c, a, n, &ops, u_, move |e, xs| e.act(xs[0], f))
        }
        Op::Add => elementwise(e, c, a, n, &ops, u_, |e, xs| e.fadd(xs[0], xs[1])),
        // One factor per channel (a unit is a channel) or one per element,
        // then the fused residual add and activation.
        Op::Mul { fused } => {
            if c.graph.scales_channels(n) {
                // x and the residual by channel, the channel's factor once.
                let s = e.load(a.image(e, c.view(ops[1]), b), u);
                let planes = [&ops[..1], &ops[2..]].concat();
                per_channel(e, c, a, n, &planes, u_, |e, a, ch, xs| {
                    let v = e.fmul(xs[0], s);
                    epilogue_value(e, a, fused, v, None, ch, xs.get(1).copied())
                })
            } else {
                elementwise(e, c, a, n, &ops, u_, |e, xs| {
                    let v = e.fmul(xs[0], xs[1]);
                    epilogue_value(e, a, fused, v, None, u, xs.get(2).copied())
                })
            }
        }
        Op::Flatten | Op::Identity | Op::Dropout { .. } => {
            elementwise(e, c, a, n, &ops[..1], u_, |_, xs| xs[0])
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
                    let (s, d) = (a.image(e, c.view(o), b), a.image(e, dst, b));
                    e.for_const(0, per, |e, i| {
                        let v = e.load(s, i);
                        e.store(d, i, v);
                    });
                }
                off += per;
            }
            Ok(())
        }
        Op::Upsample { scale, mode } => upsample(e, c, a, n, ops[0], *scale, *mode, u_),
        Op::Softmax => softmax(e, c, a, n, ops[0], u_),
        Op::ChannelPad {
            out_channels,
            stride,
        } => channel_pad(e, c, a, n, ops[0], *out_channels, *stride, u_),
        Op::BatchNorm { .. } | Op::Input | Op::Output | Op::Weight { .. } | Op::Const(_) => {
            Err(LlvmError::Internal(format!(
                "`{}` reached the CPU back end; the passes should have removed it",
                node.op.kind()
            )))
        }
    }
}

/// (image, unit) of a kernel invocation.
pub(super) type Unit<'ctx> = (IntValue<'ctx>, IntValue<'ctx>);

/// Output positions `o` with `0 <= o*stride + shift < extent`, within
/// `0..out`, for a run-time shift: the loop bounds of one kernel tap.
pub(super) fn valid_range<'ctx>(
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
        e.b.build_int_compare(IntPredicate::SLT, num, e.int(0), "")
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
        let residual = inputs.residual.map(|z| e.load(z, e.mad(oc, len, i)));
        let v = epilogue_value(e, a, fused, e.load(plane, i), inputs.bias, oc, residual);
        e.store(plane, i, v);
    });
}

/// One value `v` of channel `oc` through the epilogue: the bias constant
/// at `bias`, the residual's value where it adds one.
fn epilogue_value<'ctx>(
    e: &Emitter<'_, 'ctx>,
    a: &Args<'ctx>,
    fused: &Fused,
    v: FloatValue<'ctx>,
    bias: Option<IntValue<'ctx>>,
    oc: IntValue<'ctx>,
    residual: Option<FloatValue<'ctx>>,
) -> FloatValue<'ctx> {
    fused.epilogue.iter().fold(v, |v, step| match step {
        EpilogueStep::Bias => e.fadd(v, e.load(a.konst(e, bias.expect("bias operand")), oc)),
        EpilogueStep::Add => e.fadd(v, residual.expect("add operand")),
        EpilogueStep::Act(f) => e.act(v, *f),
    })
}

/// Operands after the weight: the prologue's scale and shift, the bias, and
/// the residual (as constant offsets and a node).
#[allow(clippy::type_complexity)]
pub(super) fn fused_operands<'ctx>(
    c: &Ctx<'_, 'ctx>,
    ops: &[NodeIndex],
    fused: &Fused,
) -> (
    Option<(IntValue<'ctx>, IntValue<'ctx>)>,
    Option<IntValue<'ctx>>,
    Option<NodeIndex>,
) {
    let slots = fused.operands();
    (
        slots
            .prologue
            .map(|(s, t)| (c.konst(ops[s]), c.konst(ops[t]))),
        slots.bias.map(|b| c.konst(ops[b])),
        slots.residual.map(|z| ops[z]),
    )
}

pub(super) fn prologue_value<'ctx>(
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

/// `prologue_value` on a vector.
pub(super) fn vprologue_value<'ctx>(
    e: &Emitter<'_, 'ctx>,
    fused: &Fused,
    x: VectorValue<'ctx>,
    st: Option<(FloatValue<'ctx>, FloatValue<'ctx>)>,
) -> VectorValue<'ctx> {
    match (fused.prologue, st) {
        (Some(p), Some((s, t))) => {
            let v = e.vfma(x, e.vsplat(s), e.vsplat(t));
            p.act.map_or(v, |f| e.vact(v, f))
        }
        _ => x,
    }
}

/// What both conv kernels start with: sizes, operands, and the output plane
/// of channel `oc`, zeroed.
struct ConvSetup<'ctx> {
    d: ConvShape,
    wt: IntValue<'ctx>,
    pro: Option<(IntValue<'ctx>, IntValue<'ctx>)>,
    bias: Option<IntValue<'ctx>>,
    xb: PointerValue<'ctx>,
    zb: Option<PointerValue<'ctx>>,
    plane: PointerValue<'ctx>,
}

#[allow(clippy::too_many_arguments)]
fn conv_setup<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    ops: &[NodeIndex],
    g: &ConvGeom,
    fused: &Fused,
    (b, oc): Unit<'ctx>,
) -> ConvSetup<'ctx> {
    let d = ConvShape::new(g, chw(c.shape(ops[0])), chw(c.shape(n)));
    let (pro, bias, residual) = fused_operands(c, ops, fused);
    let (xb, yb) = (a.image(e, c.view(ops[0]), b), a.image(e, c.view(n), b));
    let zb = residual.map(|r| a.image(e, c.view(r), b));
    let plane = e.at(yb, e.mul(oc, e.int(d.oh * d.ow)));
    e.for_const(0, d.oh * d.ow, |e, i| e.store(plane, i, e.f32(0.0)));
    ConvSetup {
        d,
        wt: c.konst(ops[1]),
        pro,
        bias,
        xb,
        zb,
        plane,
    }
}

/// Transposed convolution of one output channel: every input pixel of the
/// channel's group adds `x · w[tap]` to the output pixel its tap lands on.
#[allow(clippy::too_many_arguments)]
fn conv_transpose<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    ops: &[NodeIndex],
    g: &ConvGeom,
    fused: &Fused,
    (b, oc): Unit<'ctx>,
) -> Result<(), LlvmError> {
    // bf16: the input rounded as the weights are (`ConstPool`).
    let bf16 = c.pool.precision == crate::precision::Precision::Bf16;
    let ConvSetup {
        d:
            ConvShape {
                icg,
                ocg,
                h,
                w,
                oh,
                ow,
                k: (kh, kw),
                s: (sh, sw),
                p: (ph, pw),
                d: (dh, dw),
                ..
            },
        wt,
        pro,
        bias,
        xb,
        zb,
        plane,
    } = conv_setup(e, c, a, n, ops, g, fused, (b, oc));
    let grp = e.sdiv(oc, e.int(ocg));
    let j = e.b.build_int_signed_rem(oc, e.int(ocg), "").expect("rem");
    e.for_const(0, icg, |e, i| {
        let ic = e.mad(grp, icg, i);
        let xplane = e.at(xb, e.mul(ic, e.int(h * w)));
        let st = pro.map(|(s, t)| (e.load(a.konst(e, s), ic), e.load(a.konst(e, t), ic)));
        let wrow = e.at(a.konst(e, wt), e.mul(e.mad(ic, ocg, j), e.int(kh * kw)));
        e.for_const(0, kh, |e, ky| {
            // Output row = input row * s + (ky*d - p) must be inside the output.
            let shift_y = e.sub(e.mul(ky, e.int(dh)), e.int(ph));
            let (i0, i1) = valid_range(e, h, sh, shift_y, oh);
            e.for_const(0, kw, |e, kx| {
                let shift_x = e.sub(e.mul(kx, e.int(dw)), e.int(pw));
                let (j0, j1) = valid_range(e, w, sw, shift_x, ow);
                let wv = e.load(wrow, e.mad(ky, kw, kx));
                e.for_range(i0, i1, |e, r| {
                    let orow = e.add(e.mul(r, e.int(sh)), shift_y);
                    let yrow = e.at(plane, e.mul(orow, e.int(ow)));
                    let xrow = e.at(xplane, e.mul(r, e.int(w)));
                    e.for_range(j0, j1, |e, q| {
                        let ocol = e.add(e.mul(q, e.int(sw)), shift_x);
                        let xv = prologue_value(e, fused, e.load(xrow, q), st);
                        let xv = if bf16 { e.round_bf16(xv) } else { xv };
                        let acc = e.fmuladd(xv, wv, e.load(yrow, ocol));
                        e.store(yrow, ocol, acc);
                    });
                });
            });
        });
    });
    let inputs = EpilogueInputs { bias, residual: zb };
    epilogue(e, a, fused, &inputs, plane, oc, oh * ow);
    Ok(())
}

/// Outputs of a linear layer per work unit: they share each loaded (and
/// in bf16 rounded) input vector, so a unit streams four weight rows per
/// input pass (measured: resnet50's classifier in bf16 0.41-0.46 -> 0.26-0.29
/// ms, in fp32 0.61 -> 0.56 ms; eight outputs gained little more).
const LINEAR_OUTS: u64 = 4;

/// Outputs `LINEAR_OUTS·u..` of a linear layer: dot products, then the
/// epilogue. A last unit past the outputs recomputes the last one.
#[allow(clippy::too_many_arguments)]
fn linear<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    ops: &[NodeIndex],
    fused: &Fused,
    (b, u): Unit<'ctx>,
) -> Result<(), LlvmError> {
    let inn = numel(c.shape(ops[0])) as u64;
    let outs = numel(&c.graph.node(n).shape) as u64;
    let wt = c.konst(ops[1]);
    // bf16: the input rounded as the weights are (`ConstPool`).
    let bf16 = c.pool.precision == crate::precision::Precision::Bf16;
    let (pro, bias, residual) = fused_operands(c, ops, fused);
    let (xb, yb) = (a.image(e, c.view(ops[0]), b), a.image(e, c.view(n), b));
    let zb = residual.map(|r| a.image(e, c.view(r), b));
    let os: Vec<IntValue<'ctx>> = (0..LINEAR_OUTS)
        .map(|j| {
            e.smin(
                e.add(e.mul(u, e.int(LINEAR_OUTS)), e.int(j)),
                e.int(outs - 1),
            )
        })
        .collect();
    // bf16: the weight rows are bf16, `inn` rounded up to even apart
    // (`ConstPool`: half the bytes, which a batch-1 classifier streams).
    let rows: Vec<PointerValue<'ctx>> = os
        .iter()
        .map(|&o| {
            if bf16 {
                let base = a.konst(e, wt);
                unsafe {
                    e.b.build_in_bounds_gep(
                        e.ctx.i16_type(),
                        base,
                        &[e.mul(o, e.int(inn.div_ceil(2) * 2))],
                        "",
                    )
                }
                .expect("gep")
            } else {
                e.at(a.konst(e, wt), e.mul(o, e.int(inn)))
            }
        })
        .collect();
    // The prologue's values, not yet rounded.
    let xvalue = |e: &Emitter<'_, 'ctx>, idx| {
        let mut xv = e.vload(xb, idx);
        if let (Some(p), Some((s, t))) = (fused.prologue, pro) {
            xv = e.vfma(xv, e.vload(a.konst(e, s), idx), e.vload(a.konst(e, t), idx));
            if let Some(f) = p.act {
                xv = e.vact(xv, f);
            }
        }
        xv
    };
    // bf16 on AVX512-BF16 (`conv_gemm::reads_pairs`): a vector holds 32
    // inputs as bf16 pairs, as a weight row's 32 bf16 load, and one
    // `vdpbf16ps` takes them (half the instructions of widening the
    // weights for FMAs).
    let pairs = conv_gemm::reads_pairs(c.pool.isa, c.pool.precision);
    let lanes = e.lanes;
    // Inputs a step of one accumulator covers.
    let width = if pairs { 2 * lanes } else { lanes };
    let xload = |e: &Emitter<'_, 'ctx>, idx| {
        if pairs {
            let hi = e.add(idx, e.int(lanes));
            e.vcvt_bf16_halves(xvalue(e, idx), xvalue(e, hi))
        } else if bf16 {
            e.vround_bf16(xvalue(e, idx))
        } else {
            xvalue(e, idx)
        }
    };
    let wload = |e: &Emitter<'_, 'ctx>, row, i: IntValue<'ctx>| {
        if pairs {
            // 32 bf16 from element `i` (even): 16 f32 slots from `i / 2`.
            e.vload(row, e.sdiv(i, e.int(2)))
        } else if bf16 {
            e.vload_bf16(row, i)
        } else {
            e.vload(row, i)
        }
    };
    let accs: Vec<_> = os.iter().map(|_| e.slot()).collect();
    for &acc in &accs {
        e.set(acc, e.f32(0.0));
    }
    // Per output, two vector accumulators over the bulk (an in-order
    // scalar sum is latency-bound and LLVM may not reorder it), then the
    // scalar tail.
    let step = 2 * width;
    let bulk = inn / step * step;
    if bulk > 0 {
        let vs: Vec<Vec<_>> = os
            .iter()
            .map(|_| (0..2).map(|_| e.vslot()).collect())
            .collect();
        for v in vs.iter().flatten() {
            e.vset(*v, e.vzero());
        }
        e.for_const(0, inn / step, |e, i| {
            for h in 0..2 {
                let idx = e.add(e.mul(i, e.int(step)), e.int(h * width));
                let xv = xload(e, idx);
                for (j, row) in rows.iter().enumerate() {
                    let v = vs[j][h as usize];
                    let wv = wload(e, *row, idx);
                    let r = if pairs {
                        e.vdp_bf16(e.vget(v), wv, xv)
                    } else {
                        e.vfma(xv, wv, e.vget(v))
                    };
                    e.vset(v, r);
                }
            }
        });
        for (j, &acc) in accs.iter().enumerate() {
            let sum = e.vadd(e.vget(vs[j][0]), e.vget(vs[j][1]));
            let total = (0..lanes).fold(e.f32(0.0), |m, l| {
                let x =
                    e.b.build_extract_element(sum, e.ctx.i32_type().const_int(l, false), "")
                        .expect("lane")
                        .into_float_value();
                e.fadd(m, x)
            });
            e.set(acc, total);
        }
    }
    e.for_const(bulk, inn, |e, i| {
        let st = pro.map(|(s, t)| (e.load(a.konst(e, s), i), e.load(a.konst(e, t), i)));
        let xv = prologue_value(e, fused, e.load(xb, i), st);
        let xv = if bf16 { e.round_bf16(xv) } else { xv };
        for (j, &acc) in accs.iter().enumerate() {
            let wv = if bf16 {
                e.load_bf16(rows[j], i)
            } else {
                e.load(rows[j], i)
            };
            let v = e.fmuladd(xv, wv, e.get(acc));
            e.set(acc, v);
        }
    });
    let inputs = EpilogueInputs { bias, residual: zb };
    for (j, &o) in os.iter().enumerate() {
        e.store(yb, o, e.get(accs[j]));
        // The epilogue of one output: a plane of length 1 at channel o.
        let y1 = e.at(yb, o);
        epilogue(e, a, fused, &inputs, y1, o, 1);
    }
    Ok(())
}

/// One channel of max pooling (`avg = None`) or average pooling with
/// PyTorch's divisor.
#[allow(clippy::too_many_arguments)]
fn pool<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    x: NodeIndex,
    g: &PoolGeom,
    avg: Option<bool>,
    (b, cc): Unit<'ctx>,
) -> Result<(), LlvmError> {
    let (_, h, w) = chw(c.shape(x));
    let (_, oh, ow) = chw(c.shape(n));
    let (k0, k1) = (g.kernel[0] as u64, g.kernel[1] as u64);
    let (s0, s1) = (g.stride[0] as u64, g.stride[1] as u64);
    let (p0, p1) = (g.pad[0] as u64, g.pad[1] as u64);
    let (d0, d1) = (g.dilation[0] as u64, g.dilation[1] as u64);
    let acc = e.slot();
    let cnt = e.slot();
    let (xb, yb) = (a.image(e, c.view(x), b), a.image(e, c.view(n), b));
    let xplane = e.at(xb, e.mul(cc, e.int(h * w)));
    let yplane = e.at(yb, e.mul(cc, e.int(oh * ow)));
    let init = e.f32(if avg.is_some() {
        0.0
    } else {
        f64::NEG_INFINITY
    });
    // One output, every tap checked against the borders.
    let edge = |e: &mut Emitter<'_, 'ctx>, r: IntValue<'ctx>, q: IntValue<'ctx>| {
        let hs = e.sub(e.mul(r, e.int(s0)), e.int(p0));
        let ws = e.sub(e.mul(q, e.int(s1)), e.int(p1));
        e.set(acc, init);
        e.set(cnt, e.f32(0.0));
        for ky in 0..k0 {
            let ih = e.add(hs, e.int(ky * d0));
            for kx in 0..k1 {
                let iw = e.add(ws, e.int(kx * d1));
                // In bounds: 0 <= ih < h and 0 <= iw < w, as unsigned compares.
                let okh =
                    e.b.build_int_compare(IntPredicate::ULT, ih, e.int(h), "")
                        .expect("cmp");
                let okw =
                    e.b.build_int_compare(IntPredicate::ULT, iw, e.int(w), "")
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
    };
    // One output whose window lies inside the input: the same arithmetic
    // in the same order with no checks, so LLVM vectorizes a row of them
    // (the border loop cost resnet18's maxpool 0.3 ms).
    let inner = |e: &mut Emitter<'_, 'ctx>, r: IntValue<'ctx>, q: IntValue<'ctx>| {
        let hs = e.sub(e.mul(r, e.int(s0)), e.int(p0));
        let ws = e.sub(e.mul(q, e.int(s1)), e.int(p1));
        let mut m = init;
        for ky in 0..k0 {
            let row = e.mul(e.add(hs, e.int(ky * d0)), e.int(w));
            for kx in 0..k1 {
                let v = e.load(xplane, e.add(row, e.add(ws, e.int(kx * d1))));
                m = match avg {
                    None => e.fmax(m, v),
                    Some(_) => e.fadd(m, v),
                };
            }
        }
        if avg.is_some() {
            // Inside, both divisors count the whole window.
            m = e.fdiv(m, e.f32((k0 * k1) as f64));
        }
        e.store(yplane, e.mad(r, ow, q), m);
    };
    // Outputs `o` whose taps `o·s - p + k·d` all lie in `0..extent`.
    let inside = |out: u64, s: u64, p: u64, k: u64, d: u64, extent: u64| {
        let lo = p.div_ceil(s).min(out);
        let reach = (k - 1) * d;
        let hi = if extent + p > reach {
            ((extent + p - reach - 1) / s + 1).min(out)
        } else {
            0
        };
        (lo, hi.max(lo))
    };
    let (r0, r1) = inside(oh, s0, p0, k0, d0, h);
    let (q0, q1) = inside(ow, s1, p1, k1, d1, w);
    let border_row = |e: &mut Emitter<'_, 'ctx>, r: IntValue<'ctx>| {
        e.for_const(0, ow, |e, q| edge(e, r, q));
    };
    e.for_const(0, r0, border_row);
    e.for_const(r0, r1, |e, r| {
        e.for_const(0, q0, |e, q| edge(e, r, q));
        e.for_const(q0, q1, |e, q| inner(e, r, q));
        e.for_const(q1, ow, |e, q| edge(e, r, q));
    });
    e.for_const(r1, oh, border_row);
    Ok(())
}

fn global_avgpool<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    x: NodeIndex,
    (b, cc): Unit<'ctx>,
) -> Result<(), LlvmError> {
    let (_, h, w) = chw(c.shape(x));
    let (xb, yb) = (a.image(e, c.view(x), b), a.image(e, c.view(n), b));
    let plane = e.at(xb, e.mul(cc, e.int(h * w)));
    // Sixteen running sums, not one: a single chain waits out the add's
    // latency on every element (SE-ResNet-50 pools 5.5M elements a pass:
    // 2.9 ms so, 0.8 ms with the chains apart; the vectorizer makes the
    // sixteen one vector).
    const PARTS: u64 = 16;
    let sums: Vec<PointerValue<'ctx>> = (0..PARTS).map(|_| e.slot()).collect();
    for &s in &sums {
        e.set(s, e.f32(0.0));
    }
    let whole = h * w / PARTS;
    e.for_const(0, whole, |e, i| {
        let base = e.mul(i, e.int(PARTS));
        for (j, &s) in sums.iter().enumerate() {
            let v = e.fadd(e.get(s), e.load(plane, e.add(base, e.int(j as u64))));
            e.set(s, v);
        }
    });
    for i in whole * PARTS..h * w {
        let v = e.fadd(e.get(sums[0]), e.load(plane, e.int(i)));
        e.set(sums[0], v);
    }
    // Pairwise, as the vector's halves would be added.
    let mut vals: Vec<FloatValue<'ctx>> = sums.iter().map(|&s| e.get(s)).collect();
    while vals.len() > 1 {
        let half = vals.len() / 2;
        vals = (0..half).map(|k| e.fadd(vals[k], vals[k + half])).collect();
    }
    let mean = e.fdiv(vals[0], e.f32((h * w) as f64));
    e.store(yb, cc, mean);
    Ok(())
}

/// `y[c, i] = f(x0[c, i], x1[c, i], ...)` for channel `cc` of the planes
/// `xs` (each of y's shape), with the channel available.
#[allow(clippy::too_many_arguments)]
fn per_channel<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    xs: &[NodeIndex],
    (b, cc): Unit<'ctx>,
    f: impl Fn(&Emitter<'_, 'ctx>, &Args<'ctx>, IntValue<'ctx>, &[FloatValue<'ctx>]) -> FloatValue<'ctx>,
) -> Result<(), LlvmError> {
    let (_, h, w) = chw(c.shape(n));
    let plane = |e: &Emitter<'_, 'ctx>, m: NodeIndex| {
        e.at(a.image(e, c.view(m), b), e.mul(cc, e.int(h * w)))
    };
    let xps: Vec<PointerValue<'ctx>> = xs.iter().map(|&x| plane(e, x)).collect();
    let yp = plane(e, n);
    e.for_const(0, h * w, |e, i| {
        let vals: Vec<FloatValue<'ctx>> = xps.iter().map(|&p| e.load(p, i)).collect();
        let v = f(e, a, cc, &vals);
        e.store(yp, i, v);
    });
    Ok(())
}

/// `y[i] = f(x0[i], x1[i], ...)` over one chunk of an image's elements.
#[allow(clippy::too_many_arguments)]
fn elementwise<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    xs: &[NodeIndex],
    (b, u): Unit<'ctx>,
    f: impl Fn(&Emitter<'_, 'ctx>, &[FloatValue<'ctx>]) -> FloatValue<'ctx>,
) -> Result<(), LlvmError> {
    let per = numel(c.shape(n)) as u64;
    let bases: Vec<PointerValue> = xs.iter().map(|&x| a.image(e, c.view(x), b)).collect();
    let yb = a.image(e, c.view(n), b);
    let lo = e.mul(u, e.int(CHUNK));
    let hi = e.smin(e.add(lo, e.int(CHUNK)), e.int(per));
    e.for_range(lo, hi, |e, i| {
        let vals: Vec<FloatValue> = bases.iter().map(|&p| e.load(p, i)).collect();
        let v = f(e, &vals);
        e.store(yb, i, v);
    });
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn upsample<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    x: NodeIndex,
    scale: [Scale; 2],
    mode: UpsampleMode,
    (b, cc): Unit<'ctx>,
) -> Result<(), LlvmError> {
    let (_, h, w) = chw(c.shape(x));
    let (_, oh, ow) = chw(c.shape(n));
    let (xb, yb) = (a.image(e, c.view(x), b), a.image(e, c.view(n), b));
    let xp = e.at(xb, e.mul(cc, e.int(h * w)));
    let yp = e.at(yb, e.mul(cc, e.int(oh * ow)));
    e.for_const(0, oh, |e, r| {
        e.for_const(0, ow, |e, q| {
            let v = match mode {
                UpsampleMode::Nearest => {
                    let src = |e: &Emitter<'_, 'ctx>, o, inn, out, s: Scale| match s {
                        Scale::Whole(f) => e.sdiv(o, e.int(f as u64)),
                        Scale::Ratio { step, .. } => e.nearest_coord(o, inn, out, step),
                    };
                    let sr = src(e, r, h, oh, scale[0]);
                    let sq = src(e, q, w, ow, scale[1]);
                    e.load(xp, e.mad(sr, w, sq))
                }
                UpsampleMode::Bilinear { align_corners } => {
                    let (r0, r1, lr) = e.upsample_coord(r, h, oh, scale[0].step(), align_corners);
                    let (q0, q1, lq) = e.upsample_coord(q, w, ow, scale[1].step(), align_corners);
                    let at = |rr, qq| e.load(xp, e.mad(rr, w, qq));
                    let top = e.fmuladd(e.fsub(at(r0, q1), at(r0, q0)), lq, at(r0, q0));
                    let bot = e.fmuladd(e.fsub(at(r1, q1), at(r1, q0)), lq, at(r1, q0));
                    e.fmuladd(e.fsub(bot, top), lr, top)
                }
            };
            e.store(yp, e.mad(r, ow, q), v);
        });
    });
    Ok(())
}

/// Softmax over the channels at one spatial position.
fn softmax<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    x: NodeIndex,
    (b, p): Unit<'ctx>,
) -> Result<(), LlvmError> {
    let (ch, h, w) = chw(c.shape(x));
    let hw = h * w;
    let (mx, sum) = (e.slot(), e.slot());
    let (xb, yb) = (a.image(e, c.view(x), b), a.image(e, c.view(n), b));
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
    Ok(())
}

/// One output channel of the option-A shortcut: zeros, or the subsampled
/// input channel it holds.
#[allow(clippy::too_many_arguments)]
fn channel_pad<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    c: &Ctx<'_, 'ctx>,
    a: &Args<'ctx>,
    n: NodeIndex,
    x: NodeIndex,
    out_channels: usize,
    stride: usize,
    (b, oc): Unit<'ctx>,
) -> Result<(), LlvmError> {
    let (ch, h, w) = chw(c.shape(x));
    let (_, oh, ow) = chw(c.shape(n));
    let before = (out_channels as u64 - ch) / 2;
    let s = stride as u64;
    let (xb, yb) = (a.image(e, c.view(x), b), a.image(e, c.view(n), b));
    let plane = e.at(yb, e.mul(oc, e.int(oh * ow)));
    // Source channel, clamped so the load stays in bounds; zero when outside.
    let src = e.sub(oc, e.int(before));
    let inside =
        e.b.build_int_compare(IntPredicate::ULT, src, e.int(ch), "")
            .expect("cmp");
    let srcc = e.smin(e.smax(src, e.int(0)), e.int(ch - 1));
    let xplane = e.at(xb, e.mul(srcc, e.int(h * w)));
    e.for_const(0, oh, |e, r| {
        e.for_const(0, ow, |e, q| {
            let v = e.load(xplane, e.add(e.mul(r, e.int(s * w)), e.mul(q, e.int(s))));
            let v =
                e.b.build_select(inside, v, e.f32(0.0), "")
                    .expect("select")
                    .into_float_value();
            e.store(plane, e.mad(r, ow, q), v);
        });
    });
    Ok(())
}
