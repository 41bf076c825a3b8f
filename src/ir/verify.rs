//! The IR verifier: run after expansion and after every pass in tests and
//! debug builds. It re-derives every shape, checks each operand against the
//! op's signature, and checks the graph's structure and aliasing.

use super::graph::{numel, Graph};
use super::op::Op;
use super::shape::{infer, signature, Slot};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::HashMap;

/// Kahn's algorithm: iterative, so a 100,000-layer network cannot overflow
/// the stack (petgraph's `is_cyclic_directed` recurses; found by fuzzing).
fn has_cycle(graph: &Graph) -> bool {
    let mut indegree: HashMap<_, usize> = graph
        .g
        .node_indices()
        .map(|n| (n, graph.g.edges_directed(n, Direction::Incoming).count()))
        .collect();
    let mut ready: Vec<_> = indegree
        .iter()
        .filter(|(_, &d)| d == 0)
        .map(|(&n, _)| n)
        .collect();
    let mut seen = 0;
    while let Some(n) = ready.pop() {
        seen += 1;
        for e in graph.g.edges_directed(n, Direction::Outgoing) {
            let d = indegree.get_mut(&e.target()).expect("every node counted");
            *d -= 1;
            if *d == 0 {
                ready.push(e.target());
            }
        }
    }
    seen != graph.g.node_count()
}

/// Checks the graph; the error says which node is wrong and why.
pub fn verify(graph: &Graph) -> Result<(), String> {
    if has_cycle(graph) {
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
                    return Err(format!("constant `{name}` declared twice"));
                }
                if numel(&node.shape) == 0 {
                    return Err(format!("weight `{name}` is empty"));
                }
            }
            Op::Const(_) => {
                if !names.insert(node.name.clone()) {
                    return Err(format!("constant `{}` declared twice", node.name));
                }
                if ops.iter().any(|&o| !graph.node(o).op.is_const()) {
                    return Err(format!("{} depends on an activation", what()));
                }
            }
            op => {
                let Some(&first) = ops.first() else {
                    return Err(format!("{} has no operands", what()));
                };
                let x = &graph.node(first).shape;
                let sig = signature(op, x, &node.shape, ops.len());
                if sig.len() != ops.len() {
                    return Err(format!(
                        "{} has {} operands, expected {}",
                        what(),
                        ops.len(),
                        sig.len()
                    ));
                }
                let mut acts = Vec::new();
                for (i, (slot, &o)) in sig.iter().zip(&ops).enumerate() {
                    let on = graph.node(o);
                    match slot {
                        Slot::Const(shape) => {
                            if !on.op.is_const() || &on.shape != shape {
                                return Err(format!(
                                    "{} operand {i} should be a constant {:?}, found {} {:?}",
                                    what(),
                                    shape,
                                    on.op.kind(),
                                    on.shape
                                ));
                            }
                        }
                        Slot::Act(shape) => {
                            if on.op.is_const() || shape.as_ref().is_some_and(|s| s != &on.shape) {
                                return Err(format!(
                                    "{} operand {i} should be an activation {:?}, found {} {:?}",
                                    what(),
                                    shape,
                                    on.op.kind(),
                                    on.shape
                                ));
                            }
                            // Epilogue operands are checked by the signature;
                            // shape inference sees the primary ones.
                            if i == 0 || op.fused().is_none() {
                                acts.push(on.shape.as_slice());
                            }
                        }
                    }
                }
                let inferred =
                    infer(op, &acts).map_err(|e| format!("{}: {}", what(), e.message))?;
                if inferred != node.shape {
                    return Err(format!(
                        "{} records shape {:?} but its operands give {:?}",
                        what(),
                        node.shape,
                        inferred
                    ));
                }
                if let Op::Concat { placed } = op {
                    if !placed.is_empty() && placed.len() != ops.len() {
                        return Err(format!(
                            "{} has {} placement flags for {} operands",
                            what(),
                            placed.len(),
                            ops.len()
                        ));
                    }
                }
            }
        }
    }
    if !matches!(graph.node(graph.output).op, Op::Output) {
        return Err("graph output is not an output op".into());
    }
    Ok(())
}
