//! The constant pool: every weight and derived constant the kernels read,
//! laid out once in one f32 array (64-byte aligned), embedded in a library
//! or handed to the JIT-compiled code.

use super::conv_bf16::{plan_handoffs, BfConv};
use super::conv_gemm::{self, GemmConv, Tiling};
use super::conv_winograd::ConvAlgo;
use super::conv_winograd::WinoConv;
use super::tuning::ConvChoice;
use super::CpuOptions;
use crate::backend::llvm::VectorIsa;
use crate::backend::shared::lay_out;
use crate::ir::plan::MemoryPlan;
use crate::ir::{Graph, Op};
use crate::precision::Precision;
use crate::weights::Weights;
use petgraph::stable_graph::NodeIndex;
use std::collections::HashMap;

/// The alignment `_run` gives the arena (a cache line): the caller's block
/// need only be 4-byte aligned (malloc's large blocks start 16 bytes past
/// a page), and a 64-byte vector or tile row that straddles two lines costs
/// two (measured: AMX tile loads 16 bytes off a line, 1.7× the time).
pub const ARENA_ALIGN: u64 = 64;

pub struct ConstPool {
    /// Element offset of each constant node read by an op.
    pub offsets: HashMap<NodeIndex, usize>,
    pub data: Vec<f32>,
    /// The convs run as register-tiled GEMM, whose weights the pool holds
    /// prepacked in the kernel's order, and their tiling.
    pub gemm: HashMap<NodeIndex, GemmConv>,
    /// The convs run as Winograd F(m×m, 3×3), whose weights the pool holds
    /// transformed and packed, and their plans.
    pub wino: HashMap<NodeIndex, WinoConv>,
    /// The bf16 convs run on AMX tiles, whose weights the pool holds as
    /// packed tiles, and their plans.
    pub bf: HashMap<NodeIndex, BfConv>,
    /// Floats per image the kernels need past the memory plan.
    pub workspace: usize,
    /// The vector unit the kernels are tiled for.
    pub isa: VectorIsa,
    /// fp32, or bf16 convs and linear layers: their weights are stored
    /// rounded and their kernels round their inputs.
    pub precision: Precision,
}

impl ConstPool {
    /// Lays out the constants `graph`'s ops read, from the bound weights and
    /// the derived constants (`weights::materialize`).
    pub fn build(
        graph: &Graph,
        weights: &Weights,
        derived: &Weights,
        opts: &CpuOptions,
    ) -> ConstPool {
        let isa = opts.isa();
        let (gemm, wino) = plan_convs(graph, isa, opts);
        let mut bf: HashMap<NodeIndex, BfConv> = match opts.precision {
            Precision::Bf16 => graph
                .schedule()
                .into_iter()
                .filter_map(|n| BfConv::plan(graph, n, isa).map(|p| (n, p)))
                .collect(),
            Precision::F32 => HashMap::new(),
        };
        let gemm: HashMap<NodeIndex, GemmConv> = gemm
            .into_iter()
            .filter(|(n, _)| !bf.contains_key(n))
            .collect();
        // Weight node -> the conv whose kernel reads it packed.
        let packed_for: HashMap<NodeIndex, NodeIndex> = gemm
            .keys()
            .chain(wino.keys())
            .chain(bf.keys())
            .map(|&c| (graph.operands(c)[1], c))
            .collect();
        let precision = opts.precision;
        // Weight node -> whether a layer reads it rounded (bf16: the
        // weight of a conv or linear layer).
        let rounded = |n: NodeIndex| {
            precision == Precision::Bf16
                && graph.users(n).iter().any(|&(u, slot)| {
                    slot == 1
                        && matches!(
                            graph.node(u).op,
                            Op::Conv { .. } | Op::ConvTranspose { .. } | Op::Linear { .. }
                        )
                })
        };
        let (offsets, data) = lay_out(graph, weights, derived, |n, t| {
            // A bf16 Winograd conv transforms its fp32 filter and rounds
            // the transform (`WinoConv::pack`).
            if let Some(p) = packed_for.get(&n).and_then(|c| wino.get(c)) {
                return Some(p.pack(t));
            }
            let owned;
            let t = if rounded(n) {
                owned = t.iter().map(|&v| precision.round(v)).collect::<Vec<_>>();
                &owned[..]
            } else {
                t
            };
            match packed_for.get(&n) {
                Some(c) => Some(match bf.get(c) {
                    Some(p) => p.pack(t),
                    None => gemm[c].pack(t),
                }),
                None if rounded(n) => Some(match linear_rows(graph, n) {
                    Some(inn) => pack_bf16_rows(t, inn),
                    None => t.to_vec(),
                }),
                None => None,
            }
        });
        let wino_space = wino.values().map(|p| p.workspace()).max().unwrap_or(0);
        let bf_space = bf.values().map(|p| p.workspace()).max().unwrap_or(0);
        let own = conv_gemm::workspace(&gemm).max(wino_space).max(bf_space);
        // Handoffs after every kernel's own workspace, on a line.
        let at = own.div_ceil(16) * 16;
        // In the order the code runs: the memory plan's.
        let order = graph
            .plan
            .as_ref()
            .map_or_else(|| graph.schedule(), |p| p.schedule.clone());
        let handoffs = plan_handoffs(graph, &order, &mut bf, at, |n| run_of(graph, n));
        let workspace = (at + handoffs) as usize;
        ConstPool {
            offsets,
            data,
            gemm,
            wino,
            bf,
            workspace,
            isa,
            precision,
        }
    }

    /// `build`, or with `opts.packed_for` the plans of `opts.cpu` over
    /// weights packed for that CPU (`narrowed`).
    pub fn for_options(
        graph: &Graph,
        weights: &Weights,
        derived: &Weights,
        opts: &CpuOptions,
    ) -> Result<ConstPool, crate::backend::llvm::LlvmError> {
        let Some(top) = &opts.packed_for else {
            return Ok(ConstPool::build(graph, weights, derived, opts));
        };
        let packing = CpuOptions {
            cpu: top.clone(),
            ..opts.clone()
        };
        let mut packed = ConstPool::build(graph, weights, derived, &packing);
        let mut pool = packed.narrowed(graph, opts.isa(), opts).ok_or_else(|| {
            crate::backend::llvm::LlvmError::Internal(format!(
                "weights packed for `{top}` hold AMX tiles or bf16 pairs, which `{}`'s code does not read",
                opts.cpu
            ))
        })?;
        pool.data = std::mem::take(&mut packed.data);
        Ok(pool)
    }

    /// The plans of this pool's weights for a narrower vector unit `isa`
    /// (a lower level of a multi-level library, which reads the same
    /// constants): no data of its own, the kernels' workspace its own.
    /// `None` where the pool holds AMX tiles, which only AMX code reads,
    /// or where its bf16 convs' weights are bf16 pairs and `isa`'s kernels
    /// read f32 (or the other way round).
    pub fn narrowed(&self, graph: &Graph, isa: VectorIsa, opts: &CpuOptions) -> Option<ConstPool> {
        let pairs = conv_gemm::reads_pairs(isa, self.precision);
        let differ = |p: &GemmConv| p.pairs != pairs;
        if !self.bf.is_empty()
            || self.gemm.values().any(differ)
            || self.wino.values().any(|w| w.pairs != pairs)
        {
            return None;
        }
        let (gemm, wino) = plan_packed(graph, isa, opts, self);
        let wino_space = wino.values().map(|p| p.workspace()).max().unwrap_or(0);
        let workspace = conv_gemm::workspace(&gemm).max(wino_space) as usize;
        Some(ConstPool {
            offsets: self.offsets.clone(),
            data: Vec::new(),
            gemm,
            wino,
            bf: HashMap::new(),
            workspace,
            isa,
            precision: self.precision,
        })
    }

    /// Floats of arena per image: the memory plan's buffers, then the
    /// kernels' workspace, a whole number of 64-byte lines so that every
    /// image's buffers keep the first's alignment.
    pub fn arena_floats(&self, plan: &MemoryPlan) -> usize {
        plan.arena_bytes / 4 + self.workspace.div_ceil(16) * 16
    }

    /// Bytes of arena per image of `graph` (0 without a memory plan): what
    /// the static library's header promises and its entry points allocate.
    /// It includes the `ARENA_ALIGN` bytes `_run` may skip to reach a line
    /// boundary.
    pub fn arena_bytes(&self, graph: &crate::ir::Graph) -> usize {
        graph
            .plan
            .as_ref()
            .map_or(0, |p| self.arena_floats(p) * 4 + ARENA_ALIGN as usize)
    }
}

/// The run of the memory plan (`MemoryPlan::runs`) the op at `n` is in.
fn run_of(graph: &Graph, n: NodeIndex) -> Option<usize> {
    let plan = graph.plan.as_ref()?;
    plan.run_at(plan.schedule.iter().position(|&m| m == n)?)
}

/// The input length of the linear layer whose weight `n` is.
fn linear_rows(graph: &Graph, n: NodeIndex) -> Option<usize> {
    graph.users(n).iter().find_map(|&(u, slot)| {
        let linear = slot == 1 && matches!(graph.node(u).op, Op::Linear { .. });
        linear.then(|| graph.node(n).shape.last().copied().unwrap_or(1))
    })
}

/// Rows of `inn` (rounded) values as bf16, each row padded to an even
/// length, two per f32 slot (the first in the low half).
fn pack_bf16_rows(t: &[f32], inn: usize) -> Vec<f32> {
    let pitch = inn.div_ceil(2) * 2;
    let mut bits = vec![0u16; t.len() / inn.max(1) * pitch];
    for (r, row) in t.chunks(inn.max(1)).enumerate() {
        for (i, &v) in row.iter().enumerate() {
            bits[r * pitch + i] = crate::precision::bf16_bits(v);
        }
    }
    bits.chunks(2)
        .map(|p| f32::from_bits(u32::from(p[0]) | (u32::from(p[1]) << 16)))
        .collect()
}

/// The plans of every conv: Winograd where the options take it (a tuning
/// record's measured choice first, else `opts.algo`), the direct kernels'
/// tiling (the record's, else `opts.conv`) for the others.
pub fn plan_convs(
    graph: &Graph,
    isa: VectorIsa,
    opts: &CpuOptions,
) -> (HashMap<NodeIndex, GemmConv>, HashMap<NodeIndex, WinoConv>) {
    let pairs = conv_gemm::reads_pairs(isa, opts.precision);
    let choice = |n| {
        let tuned = opts.tuning.as_ref().and_then(|t| t.choice(graph, n, isa));
        let (conv, algo) = tuned.map_or((opts.conv, opts.algo), |c| c.forced());
        // bf16 rounds where the kernels read: the AMX and emulated kernels
        // round the input and the weights, so they run direct; the pair
        // kernels may round the Winograd transforms instead (F(2×2)).
        // Records are measured in fp32: in bf16 they steer the tiling only.
        match opts.precision {
            Precision::F32 => (conv, algo),
            Precision::Bf16 if pairs => (conv, opts.algo),
            Precision::Bf16 => (conv, ConvAlgo::Direct),
        }
    };
    let wino: HashMap<NodeIndex, WinoConv> = graph
        .schedule()
        .into_iter()
        .filter_map(|n| WinoConv::plan(graph, n, isa, choice(n).1, pairs).map(|p| (n, p)))
        .collect();
    let mut gemm = conv_gemm::plans(graph, isa, opts.precision, |n| choice(n).0, |_| None);
    gemm.retain(|n, _| !wino.contains_key(n));
    (gemm, wino)
}

/// The plans of every conv for `isa` over the weights `top` packed (for a
/// wider vector unit): each conv keeps `top`'s algorithm and packing, and
/// its register tiles divide `top`'s panels; the tiling kind and the
/// blocking are this unit's own (no tuning record: it was measured for
/// `top`'s).
fn plan_packed(
    graph: &Graph,
    isa: VectorIsa,
    opts: &CpuOptions,
    top: &ConstPool,
) -> (HashMap<NodeIndex, GemmConv>, HashMap<NodeIndex, WinoConv>) {
    let wino: HashMap<NodeIndex, WinoConv> = top
        .wino
        .iter()
        .filter_map(|(&n, w)| {
            let algo = if w.m == 4 {
                ConvAlgo::Winograd
            } else {
                ConvAlgo::Winograd2
            };
            WinoConv::plan_packed(graph, n, isa, algo, Some(w.wpitch), w.pairs).map(|p| (n, p))
        })
        .collect();
    let gemm = conv_gemm::plans(
        graph,
        isa,
        opts.precision,
        |_| opts.conv,
        |n| top.gemm.get(&n).map(|p| p.wpitch),
    )
    .into_iter()
    .filter(|(n, _)| top.gemm.contains_key(n))
    .collect();
    (gemm, wino)
}

/// How each conv of `graph` (optimized) runs with `opts`, in schedule
/// order: what `summary`, `ir` and the tuner report, from the plans the
/// constant pool is built with.
pub fn conv_choices(graph: &Graph, opts: &CpuOptions) -> Vec<(NodeIndex, ConvChoice)> {
    let (gemm, wino) = plan_convs(graph, opts.isa(), opts);
    graph
        .schedule()
        .into_iter()
        .filter(|&n| matches!(graph.node(n).op, Op::Conv { .. }))
        .filter_map(|n| {
            let c = match (wino.get(&n), gemm.get(&n)) {
                (Some(w), _) if w.m == 4 => ConvChoice::Winograd4,
                (Some(_), _) => ConvChoice::Winograd2,
                (None, Some(g)) if g.tiling == Tiling::Pixels => ConvChoice::Pixels,
                (None, Some(_)) => ConvChoice::Channels,
                (None, None) => return None,
            };
            Some((n, c))
        })
        .collect()
}
