//! Values of the constants passes derive from the weights (BN folding),
//! computed in f64 and rounded to f32 once.

use super::Weights;
use crate::ir::op::ConstOp;
use crate::ir::{Graph, Op};
use crate::tensor::Tensor;
use petgraph::stable_graph::NodeIndex;
use std::collections::HashMap;

/// A constant's value as an operand: a weight as loaded, or an exact
/// intermediate of another derived constant.
#[derive(Clone, Copy)]
enum Src<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

impl Src<'_> {
    fn get(&self, i: usize) -> f64 {
        match self {
            Src::F32(v) => v[i] as f64,
            Src::F64(v) => v[i],
        }
    }

    fn len(&self) -> usize {
        match self {
            Src::F32(v) => v.len(),
            Src::F64(v) => v.len(),
        }
    }
}

/// The derived constants of `graph` by node name (the weights themselves are
/// not copied: look them up in `weights`). `weights` must hold every weight
/// node, as `bind` guarantees.
pub fn materialize(graph: &Graph, weights: &Weights) -> Weights {
    // Exact values of derived constants that feed other derived constants.
    let mut exact: HashMap<NodeIndex, Vec<f64>> = HashMap::new();
    let mut out = Weights::new();
    for n in graph.schedule() {
        let node = graph.node(n);
        let Op::Const(c) = &node.op else { continue };
        let ops = graph.operands(n);
        let args: Vec<Src> = ops
            .iter()
            .map(|o| match &graph.node(*o).op {
                Op::Weight { name } => Src::F32(&weights[name].data),
                _ => Src::F64(&exact[o]),
            })
            .collect();
        let shapes: Vec<&[usize]> = ops
            .iter()
            .map(|&o| graph.node(o).shape.as_slice())
            .collect();
        let values = eval(c, &args, &shapes);
        out.insert(
            node.name.clone(),
            Tensor::from_vec(&node.shape, values.iter().map(|&v| v as f32).collect()),
        );
        if graph
            .users(n)
            .iter()
            .any(|&(u, _)| matches!(graph.node(u).op, Op::Const(_)))
        {
            exact.insert(n, values);
        }
    }
    out
}

fn eval(c: &ConstOp, a: &[Src], shapes: &[&[usize]]) -> Vec<f64> {
    let n = a[0].len();
    match *c {
        ConstOp::BnScale { eps } => (0..n)
            .map(|i| a[0].get(i) / (a[1].get(i) + eps).sqrt())
            .collect(),
        ConstOp::BnShift { eps } => (0..n)
            .map(|i| a[1].get(i) - a[2].get(i) * a[0].get(i) / (a[3].get(i) + eps).sqrt())
            .collect(),
        ConstOp::ScaleRows => {
            let per = n / shapes[0][0].max(1);
            (0..n).map(|i| a[0].get(i) * a[1].get(i / per)).collect()
        }
        ConstOp::ScaleConvTransposeOut { groups } => {
            // w [cin, cout/g, kh, kw]: row i belongs to group i / (cin/g);
            // column j is output channel g * cout/g + j.
            let (cin, cog) = (shapes[0][0], shapes[0][1]);
            let k: usize = shapes[0][2..].iter().product();
            let per_group_in = cin / groups;
            (0..n)
                .map(|idx| {
                    let (i, j) = (idx / (cog * k), (idx / k) % cog);
                    a[0].get(idx) * a[1].get((i / per_group_in) * cog + j)
                })
                .collect()
        }
        ConstOp::FoldBias => (0..n)
            .map(|i| a.get(2).map_or(0.0, |b| b.get(i)) * a[0].get(i) + a[1].get(i))
            .collect(),
    }
}
