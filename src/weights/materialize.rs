//! Values of every constant a graph uses: the bound weights, plus the
//! constants passes derived from them (BN folding), computed in f64 and
//! rounded to f32 once.

use super::Weights;
use crate::ir::op::ConstOp;
use crate::ir::{Graph, Op};
use crate::tensor::Tensor;
use petgraph::stable_graph::NodeIndex;
use std::collections::HashMap;

/// Every constant node of `graph` by name (weights by their state_dict name,
/// derived constants by their node name). `weights` must hold every weight
/// node, as `bind` guarantees.
pub fn materialize(graph: &Graph, weights: &Weights) -> Weights {
    let mut f64s: HashMap<NodeIndex, Vec<f64>> = HashMap::new();
    let mut out = Weights::new();
    for n in graph.schedule() {
        let node = graph.node(n);
        let values: Vec<f64> = match &node.op {
            Op::Weight { name } => {
                let t = &weights[name];
                out.insert(name.clone(), t.clone());
                if graph.users(n).iter().any(|&(u, _)| matches!(graph.node(u).op, Op::Const(_))) {
                    f64s.insert(n, t.data.iter().map(|&v| v as f64).collect());
                }
                continue;
            }
            Op::Const(c) => {
                let args: Vec<&Vec<f64>> = graph.operands(n).iter().map(|o| &f64s[o]).collect();
                let shapes: Vec<&[usize]> = graph.operands(n).iter().map(|&o| graph.node(o).shape.as_slice()).collect();
                eval(c, &args, &shapes)
            }
            _ => continue,
        };
        out.insert(
            node.name.clone(),
            Tensor::from_vec(&node.shape, values.iter().map(|&v| v as f32).collect()),
        );
        f64s.insert(n, values);
    }
    out
}

fn eval(c: &ConstOp, a: &[&Vec<f64>], shapes: &[&[usize]]) -> Vec<f64> {
    match *c {
        ConstOp::BnScale { eps } => a[0].iter().zip(a[1]).map(|(g, v)| g / (v + eps).sqrt()).collect(),
        ConstOp::BnShift { eps } => (0..a[0].len())
            .map(|i| a[1][i] - a[2][i] * a[0][i] / (a[3][i] + eps).sqrt())
            .collect(),
        ConstOp::ScaleRows => {
            let rows = shapes[0][0];
            let per = a[0].len() / rows.max(1);
            a[0].iter().enumerate().map(|(i, w)| w * a[1][i / per]).collect()
        }
        ConstOp::ScaleConvTransposeOut { groups } => {
            // w [cin, cout/g, kh, kw]: row i belongs to group i / (cin/g);
            // column j is output channel g * cout/g + j.
            let (cin, cog) = (shapes[0][0], shapes[0][1]);
            let k: usize = shapes[0][2..].iter().product();
            let per_group_in = cin / groups;
            a[0].iter()
                .enumerate()
                .map(|(idx, w)| {
                    let i = idx / (cog * k);
                    let j = (idx / k) % cog;
                    w * a[1][(i / per_group_in) * cog + j]
                })
                .collect()
        }
        ConstOp::FoldBias => (0..a[0].len())
            .map(|i| a.get(2).map_or(0.0, |b| b[i]) * a[0][i] + a[1][i])
            .collect(),
    }
}
