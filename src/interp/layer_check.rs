//! Layer by layer: every op of an optimized graph evaluated by the
//! interpreter on the values a back end computed for its operands, and
//! compared with the value the back end computed for the op. Each layer is
//! judged on its own inputs, so an error cannot hide behind, or be blamed
//! on, an earlier layer's: what a bf16 check needs, where one different
//! rounding early on moves every later value by a bf16 step.

use super::{constant, eval, prepare_consts, InterpError};
use crate::ir::{Graph, Op};
use crate::precision::Precision;
use crate::tensor::Tensor;
use crate::weights::Weights;
use petgraph::stable_graph::NodeIndex;
use std::collections::{HashMap, HashSet};

/// One op's check.
#[derive(Clone, Debug)]
pub struct LayerDiff {
    pub node: NodeIndex,
    /// `<name> <op>`.
    pub label: String,
    /// Max |back end − interpreter| over max |interpreter| (absolute where
    /// the interpreter's value is all zeros; infinite where the back end's
    /// is not finite).
    pub error: f64,
}

/// Checks every op of `graph` whose value and operands' values `values`
/// holds (batch first, as the back end computed them), in schedule order.
/// `winograd`: the bf16 convs the back end ran as Winograd F(2×2), which
/// round where those kernels do (`super::winograd_bf16`).
pub fn layer_check(
    graph: &Graph,
    weights: &Weights,
    values: &HashMap<NodeIndex, Tensor>,
    precision: Precision,
    winograd: &HashSet<NodeIndex>,
) -> Result<Vec<LayerDiff>, InterpError> {
    let consts = prepare_consts(graph, weights)?;
    let mut diffs = Vec::new();
    for n in graph.schedule() {
        let node = graph.node(n);
        if node.op.is_const() || matches!(node.op, Op::Input | Op::Output) {
            continue;
        }
        let Some(got) = values.get(&n) else { continue };
        let ops = graph.operands(n);
        let args: Option<Vec<&Tensor>> = ops
            .iter()
            .map(|&o| constant(graph, (weights, &consts), o).or_else(|| values.get(&o)))
            .collect();
        let Some(args) = args else { continue };
        let want = eval(&node.op, &args, precision, winograd.contains(&n));
        diffs.push(LayerDiff {
            node: n,
            label: format!("{} {}", node.name, node.op.kind()),
            error: rel_error(&got.data, &want.data),
        });
    }
    Ok(diffs)
}

/// Max |a − b| over max |b|.
pub fn rel_error(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let scale = b.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
    let diff = a.iter().zip(b).fold(0f64, |m, (&x, &y)| {
        m.max((f64::from(x) - f64::from(y)).abs())
    });
    if scale > 0.0 {
        diff / scale
    } else {
        diff
    }
}
