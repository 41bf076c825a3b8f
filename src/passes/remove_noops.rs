//! Removes ops that do nothing at inference: identity and dropout.

use crate::ir::{Graph, Op};

pub fn run(graph: &mut Graph) {
    for n in graph.schedule() {
        if matches!(graph.node(n).op, Op::Identity | Op::Dropout { .. }) {
            let x = graph.operands(n)[0];
            graph.replace_uses(n, x);
            graph.g.remove_node(n);
        }
    }
}
