//! Measured conv choices: what `bench --tune` found fastest on this machine
//! for each distinct conv shape, read back by later builds (`--tuning`).
//!
//! The cost model's constants were fitted on one machine; the fastest
//! kernel of a shape differs between microarchitectures (on the Intel
//! machine of session 15 the pixel tile beat the channel tile the model
//! prefers on resnet50's 56×56 1×1 convs by a third). The tuner times every
//! candidate on the whole model (so each layer meets the caches as it
//! will in use), keeps the fastest per shape, and records the cost model's
//! choice beside it.

use super::conv_gemm::{ConvKernel, ConvShape};
use super::conv_winograd::{ConvAlgo, WinoConv};
use crate::backend::llvm::VectorIsa;
use crate::ir::{Graph, Op};
use petgraph::stable_graph::NodeIndex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// How one conv runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvChoice {
    /// Direct, pixel tile.
    Pixels,
    /// Direct, channel tile.
    Channels,
    /// Winograd F(4×4, 3×3).
    Winograd4,
    /// Winograd F(2×2, 3×3).
    Winograd2,
}

impl ConvChoice {
    pub const ALL: [ConvChoice; 4] = [
        ConvChoice::Pixels,
        ConvChoice::Channels,
        ConvChoice::Winograd4,
        ConvChoice::Winograd2,
    ];

    /// The options that force this choice on every conv it applies to.
    pub fn forced(self) -> (ConvKernel, ConvAlgo) {
        match self {
            ConvChoice::Pixels => (ConvKernel::Pixels, ConvAlgo::Direct),
            ConvChoice::Channels => (ConvKernel::Channels, ConvAlgo::Direct),
            ConvChoice::Winograd4 => (ConvKernel::Auto, ConvAlgo::Winograd),
            ConvChoice::Winograd2 => (ConvKernel::Auto, ConvAlgo::Winograd2),
        }
    }

    /// The algorithm, as `summary` and `ir` name it.
    pub fn algorithm(self) -> &'static str {
        match self {
            ConvChoice::Pixels | ConvChoice::Channels => "direct",
            ConvChoice::Winograd4 => "winograd F(4x4, 3x3)",
            ConvChoice::Winograd2 => "winograd F(2x2, 3x3)",
        }
    }

    /// Whether the conv at `n` can run this way.
    pub fn applies(self, graph: &Graph, n: NodeIndex, isa: VectorIsa) -> bool {
        match self {
            ConvChoice::Pixels | ConvChoice::Channels => true,
            ConvChoice::Winograd4 | ConvChoice::Winograd2 => {
                WinoConv::plan(graph, n, isa, self.forced().1, false).is_some()
            }
        }
    }
}

/// One shape's measurements: milliseconds per candidate (summed over the
/// model's convs of that shape), the fastest, and the cost model's choice.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub choice: ConvChoice,
    pub cost_model: ConvChoice,
    pub ms: BTreeMap<ConvChoice, f64>,
}

/// A tuning record: the CPU it was measured on and an entry per conv shape
/// (`conv_key`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Tuning {
    pub cpu: String,
    pub threads: usize,
    pub entries: BTreeMap<String, Entry>,
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum TuningError {
    #[error("cannot read the tuning record `{path}`: {source}")]
    #[diagnostic(
        code(resnetc::tuning),
        help("`resnetc bench MODEL --tune FILE` writes one")
    )]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("`{path}` is not a tuning record: {source}")]
    #[diagnostic(
        code(resnetc::tuning),
        help("`resnetc bench MODEL --tune FILE` writes one (JSON); remove the file to start anew")
    )]
    Parse {
        path: String,
        source: serde_json::Error,
    },
}

impl Tuning {
    pub fn load(path: &Path) -> Result<Tuning, TuningError> {
        let text = std::fs::read_to_string(path).map_err(|source| TuningError::Read {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| TuningError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// The measured choice for the conv at `n`, if its shape was tuned (and
    /// the choice applies: a record edited by hand may say otherwise).
    pub fn choice(&self, graph: &Graph, n: NodeIndex, isa: VectorIsa) -> Option<ConvChoice> {
        let key = conv_key(graph, n, isa)?;
        let c = self.entries.get(&key)?.choice;
        c.applies(graph, n, isa).then_some(c)
    }
}

/// What decides a conv kernel's speed: sizes, geometry, a prologue, the
/// vector width. Convs of one key share a measurement.
pub fn conv_key(graph: &Graph, n: NodeIndex, isa: VectorIsa) -> Option<String> {
    let Op::Conv { fused, .. } = &graph.node(n).op else {
        return None;
    };
    let s = ConvShape::of(graph, n)?;
    Some(format!(
        "g{}:{}x{}x{}->{}x{}x{}:k{}x{}:s{}x{}:p{}x{}:d{}x{}:pro{}:l{}",
        s.g,
        s.icg,
        s.h,
        s.w,
        s.ocg,
        s.oh,
        s.ow,
        s.k.0,
        s.k.1,
        s.s.0,
        s.s.1,
        s.p.0,
        s.p.1,
        s.d.0,
        s.d.1,
        u8::from(fused.prologue.is_some()),
        isa.lanes
    ))
}

/// Picks, per conv shape of `graph`, the fastest candidate from per-node
/// times (`times[candidate][node name]`, ms), given the cost model's
/// choice per node (by name). Shapes where some conv could not run a candidate do
/// not consider it.
pub fn choose(
    graph: &Graph,
    isa: VectorIsa,
    times: &BTreeMap<ConvChoice, BTreeMap<String, f64>>,
    cost_model: &BTreeMap<String, ConvChoice>,
) -> BTreeMap<String, Entry> {
    let mut by_key: BTreeMap<String, Vec<NodeIndex>> = BTreeMap::new();
    for n in graph.schedule() {
        if let Some(k) = conv_key(graph, n, isa) {
            by_key.entry(k).or_default().push(n);
        }
    }
    let mut out = BTreeMap::new();
    for (key, nodes) in by_key {
        let mut ms = BTreeMap::new();
        for (&c, per_node) in times {
            if !nodes.iter().all(|&n| c.applies(graph, n, isa)) {
                continue;
            }
            let names = nodes.iter().map(|&n| per_node.get(&graph.node(n).name));
            if let Some(total) = names.sum::<Option<f64>>() {
                ms.insert(c, total);
            }
        }
        let Some((&choice, _)) = ms.iter().min_by(|a, b| a.1.total_cmp(b.1)) else {
            continue;
        };
        let model = cost_model
            .get(&graph.node(nodes[0]).name)
            .copied()
            .unwrap_or(choice);
        out.insert(
            key,
            Entry {
                choice,
                cost_model: model,
                ms,
            },
        );
    }
    out
}
/// Times every candidate on the whole model (the per-call profile of
/// `bench --layers`, 20 runs' medians) with the input `x`, and returns the
/// record of the fastest per conv shape, merged over `base` (a record from
/// an earlier model or run: its other shapes are kept).
pub fn tune(
    graph: &Graph,
    weights: &crate::weights::Weights,
    x: &crate::tensor::Tensor,
    opts: &super::CpuOptions,
    base: Tuning,
) -> Result<Tuning, crate::backend::llvm::LlvmError> {
    let isa = opts.isa();
    let mut times = BTreeMap::new();
    for c in ConvChoice::ALL {
        let (conv, algo) = c.forced();
        let o = super::CpuOptions {
            conv,
            algo,
            tuning: None,
            ..opts.clone()
        };
        let calls = super::with_jit(graph, weights, &o, |run| {
            run(x, None)?;
            Ok::<_, crate::backend::llvm::LlvmError>(crate::bench::profile(|p| {
                let _ = run(x, Some(p));
            }))
        })??;
        // A conv's calls (staging, tiles) are labelled `<name> conv (...)`.
        let mut per_node: BTreeMap<String, f64> = BTreeMap::new();
        for l in calls {
            if let Some(name) = l.layer.split(' ').next() {
                *per_node.entry(name.to_string()).or_default() += l.median_ms;
            }
        }
        times.insert(c, per_node);
    }
    let auto = super::CpuOptions {
        conv: ConvKernel::Auto,
        algo: ConvAlgo::Auto,
        tuning: None,
        ..opts.clone()
    };
    let model = super::consts::conv_choices(graph, &auto)
        .into_iter()
        .map(|(n, c)| (graph.node(n).name.clone(), c))
        .collect();
    let mut t = base;
    t.cpu = crate::backend::llvm::host_cpu_name();
    t.threads = super::num_threads();
    t.entries.extend(choose(graph, isa, &times, &model));
    Ok(t)
}
