//! Moves what follows a conv or linear into its epilogue while the result is
//! still in registers: the residual add (the other operand read once) and
//! the activation, in order, so every ResNet block's `relu(y + shortcut)`
//! ends inside the conv that makes `y`. A `mul` takes them the same way
//! where no conv can (SE-ResNet's `relu(y · gate + x)`). Also merges an activation into a
//! standalone `affine`, and moves an `affine` (DenseNet's BN-ReLU before a
//! conv) into the prologue of the convs that read it.

use crate::ir::op::{EpilogueStep, Op, Prologue};
use crate::ir::Graph;
use petgraph::stable_graph::NodeIndex;

pub fn run(graph: &mut Graph) {
    for u in graph.schedule() {
        if !graph.g.contains_node(u) {
            continue;
        }
        match graph.node(u).op.clone() {
            Op::Act(a) => {
                let p = graph.operands(u)[0];
                if sole_user(graph, p) {
                    if let Some(steps) = graph.node_mut(p).op.epilogue_mut() {
                        steps.push(EpilogueStep::Act(a));
                        absorb(graph, u, p);
                    } else if let Op::Affine { act: None } = graph.node(p).op {
                        graph.node_mut(p).op = Op::Affine { act: Some(a) };
                        absorb(graph, u, p);
                    }
                }
            }
            Op::Add => {
                let ops = graph.operands(u);
                let pairs = [(ops[0], ops[1]), (ops[1], ops[0])];
                // Into a conv or linear; else into a `mul` (SE-ResNet's
                // identity blocks: the gated branch plus the input).
                let conv = pairs.into_iter().find(|&(p, z)| {
                    p != z && sole_user(graph, p) && graph.node(p).op.fused().is_some()
                });
                let mul = pairs.into_iter().find(|&(p, z)| {
                    p != z
                        && sole_user(graph, p)
                        && matches!(&graph.node(p).op, Op::Mul { fused } if !fused.epilogue.contains(&EpilogueStep::Add))
                });
                if let Some((p, z)) = conv.or(mul) {
                    push_step(graph, p, EpilogueStep::Add);
                    let slot = graph.operands(p).len() as u32;
                    graph.g.add_edge(z, p, slot);
                    absorb(graph, u, p);
                }
            }
            _ => {}
        }
    }
    for a in graph.schedule() {
        if !graph.g.contains_node(a) {
            continue;
        }
        if let Op::Affine { act } = graph.node(a).op {
            into_prologues(graph, a, act);
        }
    }
}

/// Appends a step to the epilogue of `p`, a conv, linear or mul.
fn push_step(graph: &mut Graph, p: NodeIndex, step: EpilogueStep) {
    if let Some(steps) = graph.node_mut(p).op.epilogue_mut() {
        steps.push(step);
    }
}

/// Fusing into `p` is only sound when nothing else reads p's unfused value.
fn sole_user(graph: &Graph, p: NodeIndex) -> bool {
    graph.users(p).len() == 1
}

/// `u` is now computed by `p`: p takes u's name for the epilogue's output
/// and u's users.
fn absorb(graph: &mut Graph, u: NodeIndex, p: NodeIndex) {
    graph.replace_uses(u, p);
    graph.g.remove_node(u);
}

/// If every reader of affine `a` is a conv or linear without a prologue,
/// each applies `act(x·s + t)` as it reads x, and `a` disappears.
fn into_prologues(graph: &mut Graph, a: NodeIndex, act: Option<crate::ir::op::Activation>) {
    let users = graph.users(a);
    let ok = !users.is_empty()
        && users.iter().all(|&(u, slot)| {
            slot == 0
                && matches!(graph.node(u).op, Op::Conv { .. } | Op::Linear { .. })
                && graph
                    .node(u)
                    .op
                    .fused()
                    .is_some_and(|f| f.prologue.is_none())
        });
    if !ok {
        return;
    }
    let ops = graph.operands(a);
    let (x, scale, shift) = (ops[0], ops[1], ops[2]);
    for (u, _) in users {
        // Insert scale and shift after the weight: shift later operands by two.
        let mut operands = graph.operands(u);
        operands[0] = x;
        operands.splice(2..2, [scale, shift]);
        let mut node = graph.node(u).clone();
        node.op.fused_mut().expect("checked").prologue = Some(Prologue { act });
        let fresh = graph.add(node.op, node.name, node.shape, &operands);
        graph.replace_uses(u, fresh);
        graph.g.remove_node(u);
    }
    graph.g.remove_node(a);
}
