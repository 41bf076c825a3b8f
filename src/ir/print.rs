//! The IR text form. Values are renumbered in schedule order on every print
//! (like naga's compaction), so snapshots do not churn when indices move.

use super::graph::Graph;
use super::op::Op;
use super::shape::{show, show_weight};
use petgraph::stable_graph::NodeIndex;
use std::collections::HashMap;
use std::fmt::Write;

/// Prints the whole graph.
pub fn print(graph: &Graph) -> String {
    let order = graph.schedule();
    let mut ids: HashMap<NodeIndex, String> = HashMap::new();
    let mut out = String::new();
    let input = graph.node(graph.input);
    let _ = writeln!(
        out,
        "model {}({}: {}) -> {}",
        graph.name,
        input.name,
        show(&input.shape),
        show(graph.output_shape())
    );
    let consts: Vec<NodeIndex> = order
        .iter()
        .copied()
        .filter(|&n| graph.node(n).op.is_const())
        .collect();
    if !consts.is_empty() {
        out.push_str("weights:\n");
        for &w in &consts {
            let node = graph.node(w);
            match &node.op {
                Op::Weight { name } => {
                    let _ = writeln!(out, "  @{name}: {}", show_weight(&node.shape));
                    ids.insert(w, format!("@{name}"));
                }
                op => {
                    let args: Vec<&str> =
                        graph.operands(w).iter().map(|o| ids[o].as_str()).collect();
                    let _ = writeln!(
                        out,
                        "  @{} = {}({}){}: {}",
                        node.name,
                        op.kind(),
                        args.join(", "),
                        op.attrs(),
                        show_weight(&node.shape)
                    );
                    ids.insert(w, format!("@{}", node.name));
                }
            }
        }
    }
    let plan = graph.plan.as_ref();
    if let Some(p) = plan {
        let _ = writeln!(
            out,
            "arena: {} bytes per image in {} buffers (unshared: {} bytes)",
            p.arena_bytes,
            p.buffers.len(),
            p.naive_bytes
        );
    }
    out.push_str("body:\n");
    let mut next = 0usize;
    let body: Vec<NodeIndex> = match plan {
        Some(p) => p.schedule.clone(),
        None => order.clone(),
    };
    for &n in &body {
        let node = graph.node(n);
        match &node.op {
            Op::Weight { .. } | Op::Const(_) => continue,
            Op::Input => {
                let _ = writeln!(
                    out,
                    "  %{next} = input {} : {}",
                    node.name,
                    show(&node.shape)
                );
            }
            Op::Output => {
                let src = graph
                    .operands(n)
                    .first()
                    .map(|o| ids[o].clone())
                    .unwrap_or_default();
                let _ = writeln!(out, "  return {src}");
                continue;
            }
            op => {
                let args: Vec<&str> = graph.operands(n).iter().map(|o| ids[o].as_str()).collect();
                let _ = write!(
                    out,
                    "  %{next} = {}({}){} : {}",
                    op.kind(),
                    args.join(", "),
                    op.attrs(),
                    show(&node.shape)
                );
                if let Some(st) =
                    plan.and_then(|p| p.storage.get(&n).map(|s| (s, &p.buffers[s.buffer])))
                {
                    let (s, b) = st;
                    if s.elem_offset == 0
                        && s.batch_stride * 4 == b.bytes
                        && s.batch_stride == crate::ir::graph::numel(&node.shape)
                    {
                        let _ = write!(out, " @{}", b.offset);
                    } else {
                        let _ = write!(
                            out,
                            " @{}+{}/{}",
                            b.offset,
                            s.elem_offset * 4,
                            s.batch_stride * 4
                        );
                    }
                }
                if !node.name.is_empty() {
                    let _ = write!(out, "  // {}", node.name);
                }
                out.push('\n');
            }
        }
        ids.insert(n, format!("%{next}"));
        next += 1;
    }
    out
}
