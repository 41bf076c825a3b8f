//! The constant pool: every weight and derived constant the kernels read,
//! laid out once in one f32 array (64-byte aligned), embedded in a library
//! or handed to the JIT-compiled code.

use crate::ir::{Graph, Op};
use crate::weights::Weights;
use petgraph::stable_graph::NodeIndex;
use std::collections::HashMap;

/// Elements per alignment unit (64 bytes).
const ALIGN: usize = 16;

pub struct ConstPool {
    /// Element offset of each constant node read by an op.
    pub offsets: HashMap<NodeIndex, usize>,
    pub data: Vec<f32>,
}

impl ConstPool {
    /// Lays out the constants `graph`'s ops read, from the bound weights and
    /// the derived constants (`weights::materialize`).
    pub fn build(graph: &Graph, weights: &Weights, derived: &Weights) -> ConstPool {
        let mut offsets = HashMap::new();
        let mut data = Vec::new();
        for n in graph.schedule() {
            let node = graph.node(n);
            let t = match &node.op {
                Op::Weight { name } => &weights[name],
                Op::Const(_) => &derived[&node.name],
                _ => continue,
            };
            let used_by_op = graph
                .users(n)
                .iter()
                .any(|&(u, _)| !graph.node(u).op.is_const());
            if !used_by_op {
                continue;
            }
            offsets.insert(n, data.len());
            data.extend_from_slice(&t.data);
            data.resize(data.len().div_ceil(ALIGN) * ALIGN, 0.0);
        }
        ConstPool { offsets, data }
    }
}
