//! Graphviz output of the IR.

use super::graph::Graph;
use super::op::Op;
use super::shape::show;
use std::fmt::Write;

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// DOT text: one box per op (weights folded into their op's label), edges
/// from producers to consumers labelled with the shape that flows.
pub fn to_dot(graph: &Graph) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", escape(&graph.name));
    out.push_str("  rankdir=TB;\n  node [shape=box, style=\"rounded,filled\", fillcolor=\"#f4f4f4\", fontname=\"Helvetica\"];\n");
    for n in graph.schedule() {
        let node = graph.node(n);
        if node.op.is_const() {
            continue;
        }
        let color = match node.op {
            Op::Conv { .. } | Op::ConvTranspose { .. } | Op::Linear { .. } => "#cfe2ff",
            Op::Add | Op::Mul { .. } | Op::Concat { .. } => "#ffe0b3",
            Op::Input | Op::Output => "#d4edda",
            _ => "#f4f4f4",
        };
        let mut label = node.op.kind().to_string();
        if !node.name.is_empty() {
            label = format!("{}\\n{}", escape(&node.name), label);
        }
        let attrs = node.op.attrs();
        if !attrs.is_empty() {
            label.push_str(&format!("\\n{}", escape(attrs.trim())));
        }
        let _ = writeln!(
            out,
            "  n{} [label=\"{}\", fillcolor=\"{}\"];",
            n.index(),
            label,
            color
        );
        for o in graph.operands(n) {
            if graph.node(o).op.is_const() {
                continue;
            }
            let _ = writeln!(
                out,
                "  n{} -> n{} [label=\"{}\"];",
                o.index(),
                n.index(),
                escape(&show(&graph.node(o).shape))
            );
        }
    }
    out.push_str("}\n");
    out
}
