//! Winograd filters a library transforms at its first call instead of
//! storing them.
//!
//! F(4×4)'s transformed filters are 4× the 3×3 filters they replace
//! (F(2×2)'s 16/9×). Where storing them would make a library's constants
//! more than 1.5× what they take with the 3×3 filters (the full U-Net
//! built for a Zen CPU, whose cost model takes F(4×4) on 17 convs: 476 MB
//! against 125), the library stores the 3×3 filters and the rest of the
//! constants compacted, and its first call lays the constants out in a
//! zero-initialized (BSS) copy of the pool: the kept runs copied back to
//! their places, each deferred filter transformed in f64 and packed as
//! `WinoConv::pack` does, to the same bits. Later calls read that copy.
//! One thread prepares it; the others wait for it. JIT code needs none of
//! this: its pool lives in memory already.

use super::consts::ConstPool;
use super::conv_winograd::{Transform, WinoConv};
use crate::backend::llvm::emit::Emitter;
use crate::backend::llvm::LlvmError;
use crate::ir::Graph;
use crate::weights::Weights;
use inkwell::context::Context;
use inkwell::module::{Linkage, Module};
use inkwell::values::BasicValue;
use inkwell::values::{FloatValue, FunctionValue, GlobalValue, IntValue, PointerValue};
use inkwell::{AddressSpace, AtomicOrdering, AtomicRMWBinOp};
use petgraph::stable_graph::NodeIndex;

/// A library's constants may take at most this share (percent) of what
/// they take with 3×3 filters in place of the Winograd ones before the
/// transforms are deferred to the first call.
const MAX_GROWTH_PERCENT: usize = 150;

/// One conv's filter, transformed at the first call.
pub struct Deferred {
    /// Where its packed transform starts in the pool, and its length.
    pub at: usize,
    pub len: usize,
    /// Its `[oc, ic, 3, 3]` filter, as the pool's `pack` read it.
    pub filter: Vec<f32>,
    pub plan: WinoConv,
}

/// The fp32 Winograd convs of `pool` whose transforms a library defers, in
/// pool order: all of them where storing them grows the constants past
/// `MAX_GROWTH_PERCENT`, else none. (The bf16 pair kernels' F(2×2) filters
/// are at most 16/9 of theirs and stay stored.)
pub fn plan(
    graph: &Graph,
    pool: &ConstPool,
    weights: &Weights,
    derived: &Weights,
) -> Vec<Deferred> {
    let mut convs: Vec<(NodeIndex, &WinoConv)> = pool
        .wino
        .iter()
        .filter(|(_, p)| !p.pairs)
        .map(|(&n, p)| (n, p))
        .collect();
    let packed: usize = convs.iter().map(|(_, p)| Layout::of(p).len).sum();
    let raw: usize = convs.iter().map(|(_, p)| (p.oc * p.ic * 9) as usize).sum();
    let stored = pool.data.len() - packed + raw;
    if pool.data.len() * 100 <= stored * MAX_GROWTH_PERCENT {
        return Vec::new();
    }
    convs.sort_by_key(|(n, _)| pool.offsets[&graph.operands(*n)[1]]);
    convs
        .into_iter()
        .filter_map(|(n, p)| {
            let w = graph.operands(n)[1];
            let node = graph.node(w);
            let t = match &node.op {
                crate::ir::Op::Weight { name } => weights.get(name),
                _ => derived.get(&node.name),
            }?;
            Some(Deferred {
                at: pool.offsets[&w],
                len: Layout::of(p).len,
                filter: t.data.clone(),
                plan: p.clone(),
            })
        })
        .collect()
}

/// How the pool holds a conv's transformed filter: `[ξ][panel][ic][mr]`
/// with the panels of the plan that packed it (`wpitch` output channels:
/// a level planned over another's packing reads that one's panels).
struct Layout {
    mr: u64,
    panels: u64,
    len: usize,
}

impl Layout {
    fn of(p: &WinoConv) -> Layout {
        let (mr, panels) = (p.wpitch, p.oc.div_ceil(p.wpitch));
        let points = p.alpha() * p.alpha();
        Layout {
            mr,
            panels,
            len: (points * panels * p.ic * mr) as usize,
        }
    }
}

/// The constants a library stores for a pool with deferred filters.
struct Compact {
    /// The pool less the deferred runs, then each deferred filter.
    bytes: Vec<u8>,
    /// The kept runs, as `(from, to, len)` in f32 elements: stored offset,
    /// pool offset, length.
    runs: Vec<(u64, u64, u64)>,
    /// Each deferred filter's stored offset.
    filters: Vec<u64>,
}

/// `pool`'s constants as stored with `deferred` (in pool order).
fn compact(pool: &ConstPool, deferred: &[Deferred]) -> Compact {
    let mut data: Vec<f32> = Vec::new();
    let mut runs = Vec::new();
    let mut cursor = 0;
    for d in deferred
        .iter()
        .map(|d| (d.at, d.at + d.len))
        .chain([(pool.data.len(), 0)])
    {
        if d.0 > cursor {
            runs.push((data.len() as u64, cursor as u64, (d.0 - cursor) as u64));
            data.extend_from_slice(&pool.data[cursor..d.0]);
        }
        cursor = d.1;
    }
    let filters = deferred
        .iter()
        .map(|d| {
            let at = data.len() as u64;
            data.extend_from_slice(&d.filter);
            at
        })
        .collect();
    Compact {
        bytes: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        runs,
        filters,
    }
}

/// Emits the stored constants of `pool` (as `name`), its BSS copy, the
/// preparation and `<name>_ready()`, which prepares the copy once and
/// returns it. The function to call for the constants' address.
pub fn emit<'ctx>(
    ctx: &'ctx Context,
    module: &Module<'ctx>,
    pool: &ConstPool,
    deferred: &[Deferred],
    name: &str,
    constant: impl Fn(&str, &[u8]) -> GlobalValue<'ctx>,
) -> Result<FunctionValue<'ctx>, LlvmError> {
    let Compact {
        bytes,
        runs,
        filters,
    } = compact(pool, deferred);
    let stored = constant(name, &bytes).as_pointer_value();
    let f32s = ctx.f32_type().array_type(pool.data.len() as u32);
    let live = module.add_global(f32s, None, &format!("{name}_live"));
    live.set_initializer(&f32s.const_zero());
    live.set_linkage(Linkage::Private);
    live.set_alignment(64);
    let i32t = ctx.i32_type();
    // 0: not prepared, 1: being prepared, 2: ready.
    let state = module.add_global(i32t, None, &format!("{name}_state"));
    state.set_initializer(&i32t.const_zero());
    state.set_linkage(Linkage::Private);

    let ptr = ctx.ptr_type(AddressSpace::default());
    let prepare = module.add_function(
        &format!("{name}_prepare"),
        ctx.void_type().fn_type(&[], false),
        Some(Linkage::Private),
    );
    let mut e = Emitter::new(ctx, module, prepare);
    let (to, from) = (live.as_pointer_value(), stored);
    for &(src, dst, len) in &runs {
        e.b.build_memcpy(
            e.at(to, e.int(dst)),
            64,
            e.at(from, e.int(src)),
            4,
            e.int(4 * len),
        )
        .map_err(|x| LlvmError::Internal(x.to_string()))?;
    }
    for (d, &src) in deferred.iter().zip(&filters) {
        let (src, dst) = (e.at(from, e.int(src)), e.at(to, e.int(d.at as u64)));
        transform(&mut e, d, src, dst);
    }
    e.ret_void();

    let ready = module.add_function(
        &format!("{name}_ready"),
        ptr.fn_type(&[], false),
        Some(Linkage::Private),
    );
    let err = |x: inkwell::builder::BuilderError| LlvmError::Internal(x.to_string());
    let b = ctx.create_builder();
    let block = |n: &str| ctx.append_basic_block(ready, n);
    let (entry, claim, work, wait, done) = (
        block("entry"),
        block("claim"),
        block("work"),
        block("wait"),
        block("done"),
    );
    let two = i32t.const_int(2, false);
    let is_ready = |b: &inkwell::builder::Builder<'ctx>| -> Result<IntValue<'ctx>, LlvmError> {
        let v = b
            .build_load(i32t, state.as_pointer_value(), "")
            .map_err(err)?;
        v.as_instruction_value()
            .map(|i| i.set_atomic_ordering(AtomicOrdering::Acquire))
            .transpose()
            .map_err(|x| LlvmError::Internal(x.to_string()))?;
        b.build_int_compare(inkwell::IntPredicate::EQ, v.into_int_value(), two, "")
            .map_err(err)
    };
    b.position_at_end(entry);
    let r = is_ready(&b)?;
    b.build_conditional_branch(r, done, claim).map_err(err)?;
    // The first caller to swap 0 for 1 prepares; the others wait for 2.
    b.position_at_end(claim);
    let swap = b
        .build_cmpxchg(
            state.as_pointer_value(),
            i32t.const_zero(),
            i32t.const_int(1, false),
            AtomicOrdering::AcquireRelease,
            AtomicOrdering::Acquire,
        )
        .map_err(err)?;
    let won = b
        .build_extract_value(swap, 1, "")
        .map_err(err)?
        .into_int_value();
    b.build_conditional_branch(won, work, wait).map_err(err)?;
    b.position_at_end(work);
    b.build_call(prepare, &[], "").map_err(err)?;
    b.build_atomicrmw(
        AtomicRMWBinOp::Xchg,
        state.as_pointer_value(),
        two,
        AtomicOrdering::Release,
    )
    .map_err(err)?;
    b.build_unconditional_branch(done).map_err(err)?;
    b.position_at_end(wait);
    let r = is_ready(&b)?;
    b.build_conditional_branch(r, done, wait).map_err(err)?;
    b.position_at_end(done);
    b.build_return(Some(&live.as_pointer_value()))
        .map_err(err)?;
    Ok(ready)
}

/// Transforms and packs one conv's filter from `src` (`[oc, ic, 3, 3]`)
/// into `dst` (`[ξ][panel][ic][mr]`), in f64 with `Transform::filter`'s
/// operations in its order, rounded once to f32.
fn transform<'ctx>(
    e: &mut Emitter<'_, 'ctx>,
    d: &Deferred,
    src: PointerValue<'ctx>,
    dst: PointerValue<'ctx>,
) {
    let p = &d.plan;
    let tr = Transform::of(p.m);
    let f64t = e.ctx.f64_type();
    let Layout { mr, panels, .. } = Layout::of(p);
    let ic = p.ic;
    let stride = panels * ic * mr;
    e.for_const(0, p.oc, |e, o| {
        let (panel, lane) = (e.sdiv(o, e.int(mr)), e.srem(o, e.int(mr)));
        e.for_const(0, ic, |e, i| {
            let base = e.mul(e.add(e.mul(o, e.int(ic)), i), e.int(9));
            let g: Vec<FloatValue<'ctx>> = (0..9)
                .map(|k| e.fcast(e.load(src, e.add(base, e.int(k))), f64t))
                .collect();
            let c = |v: f64| f64t.const_float(v);
            // Σ_k a_k·b_k as `Iterator::sum` adds (left to right).
            let dot = |e: &Emitter<'_, 'ctx>, terms: [(FloatValue<'ctx>, FloatValue<'ctx>); 3]| {
                let [x, y, z] = terms.map(|(a, b)| e.fmul(a, b));
                e.fadd(e.fadd(x, y), z)
            };
            // t = G g (α × 3), then u = t Gᵀ.
            let t: Vec<[FloatValue<'ctx>; 3]> =
                tr.g.iter()
                    .map(|row| {
                        [0, 1, 2].map(|col| dot(e, [0, 1, 2].map(|k| (c(row[k]), g[k * 3 + col]))))
                    })
                    .collect();
            let a = tr.g.len();
            let row0 = e.add(e.mul(panel, e.int(ic)), i);
            let row0 = e.add(e.mul(row0, e.int(mr)), lane);
            for (ii, ti) in t.iter().enumerate() {
                for (jj, gj) in tr.g.iter().enumerate() {
                    let u = dot(e, [0, 1, 2].map(|k| (ti[k], c(gj[k]))));
                    let v = e.fcast(u, e.f32t);
                    let xi = (ii * a + jj) as u64;
                    e.store(dst, e.add(row0, e.int(xi * stride)), v);
                }
            }
        });
    });
}
