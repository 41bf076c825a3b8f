//! The producers of a concat write straight into their channel slice of its
//! buffer, so the concat copies nothing: DenseNet's memory stops growing
//! quadratically and U-Net skips cost no copy. Which operands are placed is
//! explicit in the op (`Concat { placed }`), so memory planning keeps the
//! whole concat buffer alive as long as any slice of it is.
//!
//! A value can live in one place only: an operand is placed if its producer
//! computes it (not the model input, not a view such as flatten) and it is
//! not already placed in another concat, or twice in this one.

use crate::ir::{Graph, Op};
use std::collections::HashSet;

pub fn run(graph: &mut Graph) {
    let mut placed_anywhere = HashSet::new();
    for c in graph.schedule() {
        if !matches!(graph.node(c).op, Op::Concat { .. }) {
            continue;
        }
        let placed: Vec<bool> = graph
            .operands(c)
            .into_iter()
            .map(|p| {
                let placeable = !matches!(
                    graph.node(p).op,
                    Op::Input | Op::Weight { .. } | Op::Const(_) | Op::Flatten | Op::Output
                );
                placeable && placed_anywhere.insert(p)
            })
            .collect();
        graph.node_mut(c).op = Op::Concat { placed };
    }
}

/// Whether a concat still copies any operand.
pub fn copies(op: &Op) -> bool {
    match op {
        Op::Concat { placed } => placed.is_empty() || placed.iter().any(|p| !p),
        _ => false,
    }
}
