//! `resnetc summary`: per-layer shapes, parameters and multiply-adds, and
//! the totals as PyTorch counts them.

use crate::ir::shape::show;
use crate::ir::{Graph, Op};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Serialize, Debug)]
pub struct WeightInfo {
    pub name: String,
    pub shape: Vec<usize>,
}

#[derive(Serialize, Debug)]
pub struct LayerInfo {
    pub name: String,
    pub op: String,
    pub shape: Vec<usize>,
    pub params: usize,
    pub macs: u64,
    /// The CPU back end's algorithm for a conv (`direct`, `winograd F(4x4,
    /// 3x3)`), where the caller asked for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algo: Option<String>,
}

impl LayerInfo {
    /// The op column of the text table: the op, and a conv's algorithm
    /// where it is not the direct one.
    fn op_text(&self) -> String {
        match &self.algo {
            Some(a) if a != "direct" => format!("{} ({a})", self.op),
            _ => self.op.clone(),
        }
    }
}

#[derive(Serialize, Debug)]
pub struct Summary {
    pub model: String,
    pub input: Vec<usize>,
    pub output: Vec<usize>,
    pub params: usize,
    pub macs: u64,
    pub weights: Vec<WeightInfo>,
    pub layers: Vec<LayerInfo>,
    /// Op counts of the graph as it stands (after any passes); a concat
    /// that copies nothing counts as `concat_in_place`.
    pub ops: BTreeMap<String, usize>,
    /// Activation memory per image (batch 1).
    pub activation_bytes: ActivationBytes,
}

#[derive(Serialize, Debug)]
pub struct ActivationBytes {
    /// Sum of all activation tensors of the graph as it stands.
    pub naive: usize,
    /// The memory plan's arena.
    pub planned: usize,
}

/// Summarises `graph`. `written` is the graph as the user wrote it: params,
/// MACs and weights always describe that, whatever the passes did.
pub fn summarize(graph: &Graph, written: &Graph) -> Summary {
    let mut params = written_params(graph, written);
    let layers: Vec<LayerInfo> = graph
        .schedule()
        .into_iter()
        .filter(|&n| {
            !graph.node(n).op.is_const() && !matches!(graph.node(n).op, Op::Input | Op::Output)
        })
        .map(|n| {
            let node = graph.node(n);
            LayerInfo {
                name: node.name.clone(),
                op: node.op.kind().to_string(),
                shape: node.shape.clone(),
                // The first row of a name holds its parameters.
                params: params.remove(node.name.as_str()).unwrap_or(0),
                macs: graph.macs_of(n),
                algo: None,
            }
        })
        .collect();
    let mut ops = BTreeMap::new();
    for n in graph.schedule() {
        let op = &graph.node(n).op;
        if op.is_const() || matches!(op, Op::Input | Op::Output) {
            continue;
        }
        let kind = if matches!(op, Op::Concat { .. }) && !crate::passes::concat_in_place::copies(op)
        {
            "concat_in_place"
        } else {
            op.kind()
        };
        *ops.entry(kind.to_string()).or_insert(0) += 1;
    }
    // A graph that was not planned (-O0) is planned as it is, for comparison.
    let plan = match &graph.plan {
        Some(p) => p.clone(),
        None => {
            let mut g = graph.clone();
            crate::passes::plan_memory::run(&mut g);
            g.plan.unwrap_or_default()
        }
    };
    let order = written.schedule();
    Summary {
        model: graph.name.clone(),
        input: graph.input_shape().to_vec(),
        output: graph.output_shape().to_vec(),
        params: order.iter().map(|&n| written.params_of(n)).sum(),
        macs: order.iter().map(|&n| written.macs_of(n)).sum(),
        weights: crate::weights::specs_of(written)
            .into_iter()
            .map(|s| WeightInfo {
                name: s.name,
                shape: s.shape,
            })
            .collect(),
        layers,
        ops,
        activation_bytes: ActivationBytes {
            naive: plan.naive_bytes,
            planned: plan.arena_bytes,
        },
    }
}

/// Each row's parameters as the model was written, so that the rows add
/// up to the total: a layer a pass removed (a BN folded into its conv)
/// counts in the row of the layer that absorbed it, the first one up its
/// input chain that is still a row.
fn written_params<'a>(
    graph: &'a Graph,
    written: &'a Graph,
) -> std::collections::HashMap<&'a str, usize> {
    let rows: std::collections::HashSet<&str> = graph
        .schedule()
        .into_iter()
        .map(|n| graph.node(n).name.as_str())
        .filter(|name| !name.is_empty())
        .collect();
    let mut params = std::collections::HashMap::new();
    for n in written.schedule() {
        let p = written.params_of(n);
        if p == 0 {
            continue;
        }
        let mut at = n;
        let row = loop {
            let name = written.node(at).name.as_str();
            if rows.contains(name) {
                break Some(name);
            }
            match written.operands(at).first() {
                Some(&up) if !written.node(up).op.is_const() => at = up,
                _ => break None,
            }
        };
        // A layer with no row left (none up its chain): its own name, which
        // no row shows; the total still counts it.
        *params
            .entry(row.unwrap_or(written.node(n).name.as_str()))
            .or_insert(0) += p;
    }
    params
}

/// `1234567` → `1,234,567`
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Summary {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let name_w = self
            .layers
            .iter()
            .map(|l| l.name.len())
            .max()
            .unwrap_or(0)
            .max(5);
        let op_w = self
            .layers
            .iter()
            .map(|l| l.op_text().len())
            .max()
            .unwrap_or(0)
            .max(2);
        let shapes: Vec<String> = self.layers.iter().map(|l| show(&l.shape)).collect();
        let shape_w = shapes.iter().map(String::len).max().unwrap_or(0).max(5);
        let mut out = format!(
            "model {}: {} -> {}\n\n{:<name_w$}  {:<op_w$}  {:<shape_w$}  {:>12}  {:>15}\n",
            self.model,
            show(&self.input),
            show(&self.output),
            "layer",
            "op",
            "shape",
            "params",
            "MACs"
        );
        out.push_str(&format!(
            "{}\n",
            "-".repeat(name_w + op_w + shape_w + 12 + 15 + 8)
        ));
        for (l, s) in self.layers.iter().zip(&shapes) {
            let p = if l.params > 0 {
                thousands(l.params as u64)
            } else {
                String::new()
            };
            let m = if l.macs > 0 {
                thousands(l.macs)
            } else {
                String::new()
            };
            out.push_str(&format!(
                "{:<name_w$}  {:<op_w$}  {:<shape_w$}  {:>12}  {:>15}\n",
                l.name,
                l.op_text(),
                s,
                p,
                m
            ));
        }
        out.push_str(&format!(
            "\ntotal: {} parameters in {} tensors, {} multiply-adds per image\n",
            thousands(self.params as u64),
            self.weights.len(),
            thousands(self.macs)
        ));
        out
    }
}
