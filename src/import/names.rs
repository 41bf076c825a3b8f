//! Names: each parameterized layer's path (its weights are `<path>.weight`
//! and so on), and each operator's module path, from ONNX initializer
//! names (PyTorch `state_dict` keys) and node names (`/layer1/layer1.0/conv1/Conv`).

use super::lift::{LOp, Lifted};
use std::collections::HashSet;

/// Whether `s` is a dotted path .res can say and PyTorch writes:
/// non-empty segments of ASCII letters, digits and `_`.
pub fn valid_path(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|seg| {
            !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
}

/// The module path of an ONNX node name as PyTorch's exporter writes it:
/// `/layer1/layer1.0/conv1/Conv` → `layer1.0.conv1`, where a scope that
/// repeats its parent's name with a suffix (`layer1` then `layer1.0`)
/// adds only the suffix. Names without a leading `/` give no path.
pub fn module_path(node_name: &str) -> Vec<String> {
    let Some(rest) = node_name.strip_prefix('/') else {
        return vec![];
    };
    let mut scopes: Vec<&str> = rest.split('/').collect();
    scopes.pop(); // the operator's own name (`Conv`, `Relu_1`)
    let mut out: Vec<String> = Vec::new();
    let mut prev: Option<&str> = None;
    for s in scopes {
        if s.is_empty() {
            continue;
        }
        let seg = match prev
            .and_then(|p| s.strip_prefix(p))
            .and_then(|r| r.strip_prefix('.'))
        {
            Some(suffix) if !suffix.is_empty() => suffix,
            _ => s,
        };
        prev = Some(s);
        out.extend(seg.split('.').map(str::to_string));
    }
    if out.iter().all(|s| valid_path(s)) {
        out
    } else {
        vec![]
    }
}

/// A node's module path: dynamo's recorded scope, else its node name's;
/// `None` where the file says nothing.
fn node_module(n: &super::lift::LNode) -> Option<Vec<String>> {
    if let Some(s) = &n.scope {
        if s.is_empty() {
            return Some(vec![]);
        }
        return valid_path(s).then(|| s.split('.').map(str::to_string).collect());
    }
    let m = module_path(&n.onnx_name);
    (!m.is_empty() || n.onnx_name.starts_with('/')).then_some(m)
}

/// The path of every lifted node: for a layer with weights, where its
/// weights are named; for the rest, the module its ONNX node belongs to.
/// `param[i]` is `Some(path)` for layers with weights (unique, valid).
pub struct Paths {
    pub param: Vec<Option<String>>,
    pub module: Vec<Vec<String>>,
}

fn kind(op: &LOp) -> &'static str {
    match op {
        LOp::Conv { .. } => "conv",
        LOp::ConvTranspose { .. } => "conv_transpose",
        LOp::BatchNorm { .. } => "bn",
        LOp::Linear { .. } => "fc",
        _ => "layer",
    }
}

pub fn assign(l: &Lifted) -> Paths {
    let n = l.nodes.len();
    let mut used: HashSet<String> = HashSet::new();
    let mut param = vec![None; n];
    // First the layers whose initializers carry state_dict names, so that
    // a name from a node path never takes a key the file uses.
    let from_init = |i: usize| -> Option<String> {
        let node = &l.nodes[i];
        let suffixes = node.op.weight_suffixes();
        let w = node.weight_names.first()?.as_deref()?;
        let p = w.strip_suffix(".weight")?;
        if !valid_path(p) {
            return None;
        }
        // The other tensors, where named like keys, must agree.
        for (s, name) in suffixes.iter().zip(&node.weight_names).skip(1) {
            if let Some(name) = name {
                if valid_path(name) && *name != format!("{p}.{s}") {
                    return None;
                }
            }
        }
        Some(p.to_string())
    };
    for (i, slot) in param.iter_mut().enumerate() {
        if l.nodes[i].op.has_params() {
            if let Some(p) = from_init(i) {
                if used.insert(p.clone()) {
                    *slot = Some(p);
                }
            }
        }
    }
    for (node, slot) in l.nodes.iter().zip(param.iter_mut()) {
        if node.op.has_params() && slot.is_none() {
            let p = node_module(node).unwrap_or_default().join(".");
            if valid_path(&p) && !used.contains(&p) {
                used.insert(p.clone());
                *slot = Some(p);
            }
        }
    }
    let mut counter = 0;
    for (node, slot) in l.nodes.iter().zip(param.iter_mut()) {
        if node.op.has_params() && slot.is_none() {
            let p = loop {
                counter += 1;
                let p = format!("{}{counter}", kind(&node.op));
                if !used.contains(&p) {
                    break p;
                }
            };
            used.insert(p.clone());
            *slot = Some(p);
        }
    }
    // Module paths: a layer's own path; an operator's node path, or where
    // the file names no modules, the module of what it reads.
    let mut module: Vec<Vec<String>> = vec![vec![]; n];
    for i in 1..n {
        module[i] = if let Some(p) = &param[i] {
            p.split('.').map(str::to_string).collect()
        } else {
            if let Some(m) = node_module(&l.nodes[i]) {
                m
            } else {
                match l.nodes[i].inputs.first() {
                    Some(&src) if param[src].is_some() => {
                        let mut p = module[src].clone();
                        p.pop();
                        p
                    }
                    Some(&src) => module[src].clone(),
                    None => vec![],
                }
            }
        };
    }
    Paths { param, module }
}
