//! Dead-code elimination: drops every node the output does not depend on
//! (unused branches, constants no longer referenced after folding).

use crate::ir::{Graph, Op};
use std::collections::HashSet;

pub fn run(graph: &mut Graph) {
    let live: HashSet<_> = graph.schedule().into_iter().collect();
    let dead: Vec<_> = graph
        .g
        .node_indices()
        .filter(|n| !live.contains(n) && !matches!(graph.node(*n).op, Op::Input))
        .collect();
    for n in dead {
        graph.g.remove_node(n);
    }
}
