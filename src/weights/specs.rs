//! What a graph expects from a weights file: each weight node's name, shape
//! and role (which decides its random initialisation).

use super::{Role, WeightSpec};
use crate::ir::{Graph, Op};

/// Weight specs of `graph` in schedule order.
pub fn specs_of(graph: &Graph) -> Vec<WeightSpec> {
    graph
        .weights()
        .into_iter()
        .map(|w| {
            let node = graph.node(w);
            let name = match &node.op {
                Op::Weight { name } => name.clone(),
                _ => unreachable!("weights() returns weight nodes"),
            };
            let shape = node.shape.clone();
            let role = graph
                .users(w)
                .first()
                .map(|&(user, slot)| role_of(graph, user, slot, &shape))
                .unwrap_or(Role::ConvWeight);
            WeightSpec { name, shape, role }
        })
        .collect()
}

fn role_of(
    graph: &Graph,
    user: petgraph::stable_graph::NodeIndex,
    slot: u32,
    shape: &[usize],
) -> Role {
    let ops = graph.operands(user);
    let weight_shape = |i: usize| graph.node(ops[i]).shape.clone();
    match (&graph.node(user).op, slot) {
        (Op::BatchNorm { .. }, 1) => Role::BnWeight,
        (Op::BatchNorm { .. }, 2) => Role::BnBias,
        (Op::BatchNorm { .. }, 3) => Role::BnMean,
        (Op::BatchNorm { .. }, 4) => Role::BnVar,
        (Op::Conv { .. }, 1) => Role::ConvWeight,
        (Op::ConvTranspose { .. }, 1) => Role::ConvTransposeWeight,
        (Op::Linear { .. }, 1) => Role::LinearWeight,
        // PyTorch's fan_in of a weight is size(1) × receptive field.
        (Op::Conv { .. } | Op::ConvTranspose { .. } | Op::Linear { .. }, _) => Role::Bias {
            fan_in: weight_shape(1)[1..].iter().product(),
        },
        _ => {
            if shape.len() == 4 {
                Role::ConvWeight
            } else {
                Role::Bias { fan_in: 1 }
            }
        }
    }
}
