//! The IR verifier: run after expansion and after every pass in tests and
//! debug builds. It re-derives every shape and checks the graph's structure.

use super::graph::{numel, Graph};
use super::op::Op;
use super::shape::{infer, weight_shapes};
use petgraph::algo::is_cyclic_directed;

/// Checks the graph; the error says which node is wrong and why.
pub fn verify(graph: &Graph) -> Result<(), String> {
    if is_cyclic_directed(&graph.g) {
        return Err("graph has a cycle".into());
    }
    if !matches!(graph.node(graph.input).op, Op::Input) {
        return Err("input node is not an input op".into());
    }
    let mut names = std::collections::HashSet::new();
    for n in graph.schedule() {
        let node = graph.node(n);
        let ops = graph.operands(n);
        let what = || format!("node `{}` ({})", node.name, node.op.kind());
        match &node.op {
            Op::Input => {
                if !ops.is_empty() {
                    return Err(format!("{} has operands", what()));
                }
            }
            Op::Weight { name } => {
                if !ops.is_empty() {
                    return Err(format!("weight `{name}` has operands"));
                }
                if !names.insert(name.clone()) {
                    return Err(format!("weight `{name}` declared twice"));
                }
                if numel(&node.shape) == 0 {
                    return Err(format!("weight `{name}` is empty"));
                }
            }
            op => {
                let act: Vec<_> = ops
                    .iter()
                    .filter(|&&o| !graph.node(o).op.is_weight())
                    .collect();
                if act.is_empty() {
                    return Err(format!("{} has no activation operand", what()));
                }
                let x = &graph.node(ops[0]).shape;
                let expected = weight_shapes(op, x);
                let got: Vec<&Vec<usize>> = ops
                    .iter()
                    .filter(|&&o| graph.node(o).op.is_weight())
                    .map(|&o| &graph.node(o).shape)
                    .collect();
                if expected.len() != got.len()
                    || expected.iter().zip(&got).any(|((_, e), g)| e != *g)
                {
                    return Err(format!(
                        "{} has weights {:?}, expected {:?}",
                        what(),
                        got,
                        expected.iter().map(|(_, s)| s).collect::<Vec<_>>()
                    ));
                }
                let shapes: Vec<&[usize]> = act
                    .iter()
                    .map(|&&o| graph.node(o).shape.as_slice())
                    .collect();
                let inferred =
                    infer(op, &shapes).map_err(|e| format!("{}: {}", what(), e.message))?;
                if inferred != node.shape {
                    return Err(format!(
                        "{} records shape {:?} but its operands give {:?}",
                        what(),
                        node.shape,
                        inferred
                    ));
                }
            }
        }
    }
    if !matches!(graph.node(graph.output).op, Op::Output) {
        return Err("graph output is not an output op".into());
    }
    Ok(())
}
