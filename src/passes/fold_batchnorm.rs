//! conv → batchnorm becomes one conv with scaled weights and a shifted bias
//! (`w·s`, `(b − mean)·s + beta` with `s = gamma/sqrt(var + eps)`), as derived
//! constants evaluated in f64 and rounded once. The same for linear and
//! transposed conv. A BN that follows anything else (DenseNet's BN after a
//! concat, BN after ReLU) is not folded backwards: it becomes a per-channel
//! `affine` op, which fuse_epilogue may move into the next conv's prologue.

use crate::ir::op::{ConstOp, EpilogueStep, Fused, Op};
use crate::ir::{Graph, Node};
use petgraph::stable_graph::NodeIndex;

pub fn run(graph: &mut Graph) {
    for bn in graph.schedule() {
        let Op::BatchNorm { eps } = graph.node(bn).op else {
            continue;
        };
        let ops = graph.operands(bn);
        let (x, gamma, beta, mean, var) = (ops[0], ops[1], ops[2], ops[3], ops[4]);
        let name = graph.node(bn).name.clone();
        let c = graph.node(gamma).shape.clone();
        let scale = constant(
            graph,
            ConstOp::BnScale { eps },
            format!("{name}.scale"),
            c.clone(),
            &[gamma, var],
        );
        let shift = constant(
            graph,
            ConstOp::BnShift { eps },
            format!("{name}.shift"),
            c,
            &[gamma, beta, mean, var],
        );
        let folded = if foldable_into(graph, x) {
            fold_into(graph, x, scale, shift, &name)
        } else {
            None
        };
        let replacement = folded.unwrap_or_else(|| {
            let shape = graph.node(bn).shape.clone();
            graph.add(Op::Affine { act: None }, name, shape, &[x, scale, shift])
        });
        graph.replace_uses(bn, replacement);
        graph.g.remove_node(bn);
    }
    super::dce::run(graph);
}

/// The producer is a conv/linear whose result only this BN reads and whose
/// epilogue is at most a bias: BN(conv(x)) is then a conv.
fn foldable_into(graph: &Graph, p: NodeIndex) -> bool {
    let Some(fused) = graph.node(p).op.fused() else {
        return false;
    };
    graph.users(p).len() == 1 && fused.epilogue.iter().all(|s| *s == EpilogueStep::Bias)
}

fn constant(
    graph: &mut Graph,
    op: ConstOp,
    name: String,
    shape: Vec<usize>,
    operands: &[NodeIndex],
) -> NodeIndex {
    graph.add(Op::Const(op), name, shape, operands)
}

/// Replaces producer `p` by a copy with folded weight and bias. The new
/// constants are named after the BN too: a conv followed by two BNs folds
/// twice (found by the property test).
fn fold_into(
    graph: &mut Graph,
    p: NodeIndex,
    scale: NodeIndex,
    shift: NodeIndex,
    bn: &str,
) -> Option<NodeIndex> {
    let node: Node = graph.node(p).clone();
    let ops = graph.operands(p);
    let fused = node.op.fused()?.clone();
    let w = ops[1];
    let wshape = graph.node(w).shape.clone();
    let scale_w = match &node.op {
        Op::ConvTranspose { geom, .. } => ConstOp::ScaleConvTransposeOut {
            groups: geom.groups,
        },
        _ => ConstOp::ScaleRows,
    };
    let new_w = constant(
        graph,
        scale_w,
        format!("{}.weight*{bn}", node.name),
        wshape,
        &[w],
    );
    graph.g.add_edge(scale, new_w, 1);
    // Prologue operands (if any) stay; the old bias, if any, is the last
    // const after them.
    let pro = if fused.prologue.is_some() { 2 } else { 0 };
    let mut bias_inputs = vec![scale, shift];
    if fused.has_bias() {
        bias_inputs.push(ops[2 + pro]);
    }
    let oc = graph.node(scale).shape.clone();
    let new_b = constant(
        graph,
        ConstOp::FoldBias,
        format!("{}.bias*{bn}", node.name),
        oc,
        &bias_inputs,
    );
    let mut operands = vec![ops[0], new_w];
    operands.extend(&ops[2..2 + pro]);
    operands.push(new_b);
    let mut op = node.op.clone();
    *op.fused_mut()? = Fused {
        prologue: fused.prologue,
        epilogue: vec![EpilogueStep::Bias],
    };
    let folded = graph.add(op, node.name.clone(), node.shape.clone(), &operands);
    graph.replace_uses(p, folded);
    graph.g.remove_node(p);
    Some(folded)
}
