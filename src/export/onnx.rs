//! `resnetc export --format onnx`: the model as written (BN, ReLU and adds
//! as separate nodes, so any runtime applies its own fusions) with its
//! weights, ONNX opset 17, dynamic batch. For running identical work in
//! onnxruntime or tract side by side with resnetc.

use super::proto::Msg;
use crate::ir::op::{Activation, EpilogueStep, Op, Scale, UpsampleMode};
use crate::ir::{Graph, Node};
use crate::weights::Weights;
use petgraph::stable_graph::NodeIndex;
use std::collections::HashMap;

const FLOAT: i64 = 1;
const INT64: i64 = 7;

// AttributeProto types.
const ATTR_FLOAT: i64 = 1;
const ATTR_INT: i64 = 2;
const ATTR_STRING: i64 = 3;
const ATTR_INTS: i64 = 7;

fn attr_int(name: &str, v: i64) -> Msg {
    let mut m = Msg::default();
    m.str(1, name).int(20, ATTR_INT).int(3, v);
    m
}

fn attr_ints(name: &str, v: &[i64]) -> Msg {
    let mut m = Msg::default();
    m.str(1, name).int(20, ATTR_INTS);
    for &x in v {
        m.int(8, x);
    }
    m
}

fn attr_float(name: &str, v: f32) -> Msg {
    let mut m = Msg::default();
    m.str(1, name).int(20, ATTR_FLOAT).float(2, v);
    m
}

fn attr_str(name: &str, v: &str) -> Msg {
    let mut m = Msg::default();
    m.str(1, name).int(20, ATTR_STRING).str(4, v);
    m
}

fn tensor_f32(name: &str, dims: &[usize], data: &[f32]) -> Msg {
    let mut m = Msg::default();
    for &d in dims {
        m.int(1, d as i64);
    }
    m.int(2, FLOAT).str(8, name);
    let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    m.bytes(9, &raw);
    m
}

fn tensor_i64(name: &str, data: &[i64]) -> Msg {
    let mut m = Msg::default();
    m.int(1, data.len() as i64).int(2, INT64).str(8, name);
    let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    m.bytes(9, &raw);
    m
}

/// `name: float32[batch, dims...]`
fn value_info(name: &str, dims: &[usize]) -> Msg {
    let mut shape = Msg::default();
    let mut batch = Msg::default();
    batch.str(2, "batch");
    shape.msg(1, &batch);
    for &d in dims {
        let mut dim = Msg::default();
        dim.int(1, d as i64);
        shape.msg(1, &dim);
    }
    let mut tensor = Msg::default();
    tensor.int(1, FLOAT).msg(2, &shape);
    let mut ty = Msg::default();
    ty.msg(1, &tensor);
    let mut vi = Msg::default();
    vi.str(1, name).msg(2, &ty);
    vi
}

struct Builder {
    nodes: Vec<Msg>,
    inits: Vec<Msg>,
    count: usize,
    /// The layer path of the IR node being written (`layer1.0.conv1`).
    scope: String,
}

impl Builder {
    fn node(&mut self, op: &str, inputs: &[String], output: &str, attrs: Vec<Msg>) {
        let mut m = Msg::default();
        for i in inputs {
            m.str(1, i);
        }
        // Named as PyTorch's exporter names nodes, by module path
        // (`/layer1/0/conv1/Conv_7`), so that `resnetc import` finds the
        // model's structure again.
        let scope: String = self
            .scope
            .split('.')
            .filter(|s| !s.is_empty())
            .map(|s| format!("{s}/"))
            .collect();
        m.str(2, output)
            .str(3, &format!("/{scope}{op}_{}", self.count))
            .str(4, op);
        for a in attrs {
            m.msg(5, &a);
        }
        self.count += 1;
        self.nodes.push(m);
    }

    fn const_i64(&mut self, name: &str, v: &[i64]) -> String {
        self.inits.push(tensor_i64(name, v));
        name.to_string()
    }

    fn const_f32(&mut self, name: &str, dims: &[usize], v: &[f32]) -> String {
        self.inits.push(tensor_f32(name, dims, v));
        name.to_string()
    }
}

fn pads(p: [usize; 2]) -> Vec<i64> {
    vec![p[0] as i64, p[1] as i64, p[0] as i64, p[1] as i64]
}

fn pair(v: [usize; 2]) -> Vec<i64> {
    vec![v[0] as i64, v[1] as i64]
}

/// Why a model cannot be exported.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ExportError {
    #[error("the ONNX file would be {gib:.2} GiB, past protobuf's 2 GiB limit on one message")]
    #[diagnostic(
        code(resnetc::export::too_large),
        help("ONNX keeps the weights of such models in external data files, which resnetc's export does not write; export a smaller model (or run this one with resnetc itself)")
    )]
    TooLarge { gib: f64 },
    #[error("cannot export {0}")]
    #[diagnostic(
        code(resnetc::export::unsupported),
        help("ONNX's Resize fixes either the whole output shape (`sizes`, batch included) or floor(in * scale) in f32; resnetc exports whole upsample factors only (run the model with resnetc itself)")
    )]
    Unsupported(String),
    #[error("cannot export: {0}")]
    #[diagnostic(code(resnetc::export::internal), help("report this as a bug"))]
    Internal(String),
}

/// The largest message protobuf (and so every ONNX reader) accepts.
pub const MAX_ONNX_BYTES: u64 = (1 << 31) - 1;

/// Refuses a graph whose weights alone would pass [`MAX_ONNX_BYTES`],
/// before any of them is copied.
fn check_size(graph: &Graph) -> Result<(), ExportError> {
    let bytes: u64 = crate::weights::specs_of(graph)
        .iter()
        .map(|s| s.shape.iter().map(|&d| d as u64).product::<u64>() * 4)
        .sum();
    if bytes > MAX_ONNX_BYTES {
        return Err(ExportError::TooLarge {
            gib: bytes as f64 / (1u64 << 30) as f64,
        });
    }
    Ok(())
}

/// Refuses an upsample whose factor is not whole: Resize's `sizes` would
/// fix the batch, and its `scales` give floor(in * scale) in f32, not
/// necessarily the size asked for.
fn check_ops(graph: &Graph) -> Result<(), ExportError> {
    let fractional = graph.g.node_weights().any(|n| {
        matches!(&n.op, Op::Upsample { scale, .. }
            if scale.iter().any(|s| matches!(s, Scale::Ratio { .. })))
    });
    if fractional {
        return Err(ExportError::Unsupported(
            "an upsample by a factor that is not whole".into(),
        ));
    }
    Ok(())
}

/// The ONNX model bytes of `graph` (as written, not optimized) with `weights`.
pub fn export(graph: &Graph, weights: &Weights) -> Result<Vec<u8>, ExportError> {
    check_size(graph)?;
    check_ops(graph)?;
    let bytes = export_unchecked(graph, weights).map_err(ExportError::Internal)?;
    // Node and attribute overhead on top of the weights.
    if bytes.len() as u64 > MAX_ONNX_BYTES {
        return Err(ExportError::TooLarge {
            gib: bytes.len() as f64 / (1u64 << 30) as f64,
        });
    }
    Ok(bytes)
}

fn export_unchecked(graph: &Graph, weights: &Weights) -> Result<Vec<u8>, String> {
    let mut b = Builder {
        nodes: Vec::new(),
        inits: Vec::new(),
        count: 0,
        scope: String::new(),
    };
    let mut names: HashMap<NodeIndex, String> = HashMap::new();
    for n in graph.weights() {
        if let Op::Weight { name } = &graph.node(n).op {
            let t = &weights[name];
            b.inits.push(tensor_f32(name, &t.shape, &t.data));
            names.insert(n, name.clone());
        }
    }
    let order = graph.schedule();
    for (k, &n) in order.iter().enumerate() {
        let node: &Node = graph.node(n);
        b.scope = node.name.clone();
        let out = format!("v{k}");
        let ins: Vec<String> = graph
            .operands(n)
            .iter()
            .filter_map(|o| names.get(o).cloned())
            .collect();
        match &node.op {
            Op::Weight { .. } => continue,
            Op::Input => {
                names.insert(n, "input".into());
                continue;
            }
            Op::Output => {
                b.node("Identity", &ins, "output", vec![]);
                continue;
            }
            Op::Conv { geom, fused } | Op::ConvTranspose { geom, fused, .. } => {
                if fused.prologue.is_some()
                    || fused.epilogue.iter().any(|s| *s != EpilogueStep::Bias)
                {
                    return Err("export works on the graph as written, not an optimized one".into());
                }
                let mut attrs = vec![
                    attr_ints("kernel_shape", &pair(geom.kernel)),
                    attr_ints("strides", &pair(geom.stride)),
                    attr_ints("pads", &pads(geom.pad)),
                    attr_ints("dilations", &pair(geom.dilation)),
                    attr_int("group", geom.groups as i64),
                ];
                let op = if let Op::ConvTranspose { output_padding, .. } = &node.op {
                    attrs.push(attr_ints("output_padding", &pair(*output_padding)));
                    "ConvTranspose"
                } else {
                    "Conv"
                };
                b.node(op, &ins, &out, attrs);
            }
            Op::BatchNorm { eps } => b.node(
                "BatchNormalization",
                &ins,
                &out,
                vec![attr_float("epsilon", *eps as f32)],
            ),
            Op::Linear { fused, .. } => {
                if fused.prologue.is_some()
                    || fused.epilogue.iter().any(|s| *s != EpilogueStep::Bias)
                {
                    return Err("export works on the graph as written, not an optimized one".into());
                }
                b.node("Gemm", &ins, &out, vec![attr_int("transB", 1)]);
            }
            Op::Act(Activation::Relu) => b.node("Relu", &ins, &out, vec![]),
            Op::Act(Activation::Sigmoid) => b.node("Sigmoid", &ins, &out, vec![]),
            Op::Act(Activation::LeakyRelu(s)) => {
                b.node("LeakyRelu", &ins, &out, vec![attr_float("alpha", *s)])
            }
            Op::Act(Activation::Relu6) => {
                let lo = b.const_f32(&format!("{out}_min"), &[], &[0.0]);
                let hi = b.const_f32(&format!("{out}_max"), &[], &[6.0]);
                b.node("Clip", &[ins[0].clone(), lo, hi], &out, vec![]);
            }
            Op::Add => b.node("Add", &ins, &out, vec![]),
            // ONNX broadcasts like numpy: [N, C, 1, 1] against [N, C, H, W].
            Op::Mul { fused } => {
                if !fused.epilogue.is_empty() {
                    return Err("export works on the graph as written, not an optimized one".into());
                }
                b.node("Mul", &ins, &out, vec![])
            }
            Op::Concat { .. } => b.node("Concat", &ins, &out, vec![attr_int("axis", 1)]),
            Op::MaxPool(g) => b.node(
                "MaxPool",
                &ins,
                &out,
                vec![
                    attr_ints("kernel_shape", &pair(g.kernel)),
                    attr_ints("strides", &pair(g.stride)),
                    attr_ints("pads", &pads(g.pad)),
                    attr_ints("dilations", &pair(g.dilation)),
                    attr_int("ceil_mode", g.ceil_mode as i64),
                ],
            ),
            Op::AvgPool {
                geom,
                count_include_pad,
            } => b.node(
                "AveragePool",
                &ins,
                &out,
                vec![
                    attr_ints("kernel_shape", &pair(geom.kernel)),
                    attr_ints("strides", &pair(geom.stride)),
                    attr_ints("pads", &pads(geom.pad)),
                    attr_int("ceil_mode", geom.ceil_mode as i64),
                    attr_int("count_include_pad", *count_include_pad as i64),
                ],
            ),
            Op::GlobalAvgPool => b.node("GlobalAveragePool", &ins, &out, vec![]),
            Op::Flatten => b.node("Flatten", &ins, &out, vec![attr_int("axis", 1)]),
            Op::Softmax => b.node("Softmax", &ins, &out, vec![attr_int("axis", 1)]),
            Op::Identity | Op::Dropout { .. } => b.node("Identity", &ins, &out, vec![]),
            Op::Upsample { scale, mode } => {
                let whole = |s: &Scale| match s {
                    Scale::Whole(f) => Some(*f as f32),
                    Scale::Ratio { .. } => None,
                };
                let (Some(sh), Some(sw)) = (whole(&scale[0]), whole(&scale[1])) else {
                    // `export` refused it already (ExportError::Unsupported).
                    return Err("an upsample by a factor that is not whole".into());
                };
                let roi = b.const_f32(&format!("{out}_roi"), &[0], &[]);
                let scales = b.const_f32(&format!("{out}_scales"), &[4], &[1.0, 1.0, sh, sw]);
                let attrs = match mode {
                    UpsampleMode::Nearest => vec![
                        attr_str("mode", "nearest"),
                        attr_str("coordinate_transformation_mode", "asymmetric"),
                        attr_str("nearest_mode", "floor"),
                    ],
                    UpsampleMode::Bilinear { align_corners } => vec![
                        attr_str("mode", "linear"),
                        attr_str(
                            "coordinate_transformation_mode",
                            if *align_corners {
                                "align_corners"
                            } else {
                                "pytorch_half_pixel"
                            },
                        ),
                    ],
                };
                b.node("Resize", &[ins[0].clone(), roi, scales], &out, attrs);
            }
            Op::ChannelPad {
                out_channels,
                stride,
            } => {
                let cin = graph.node(graph.operands(n)[0]).shape[0];
                let before = (out_channels - cin) / 2;
                let after = out_channels - cin - before;
                let s = *stride as i64;
                let starts = b.const_i64(&format!("{out}_starts"), &[0, 0]);
                let ends = b.const_i64(&format!("{out}_ends"), &[i64::MAX, i64::MAX]);
                let axes = b.const_i64(&format!("{out}_axes"), &[2, 3]);
                let steps = b.const_i64(&format!("{out}_steps"), &[s, s]);
                let sliced = format!("{out}_sliced");
                b.node(
                    "Slice",
                    &[ins[0].clone(), starts, ends, axes, steps],
                    &sliced,
                    vec![],
                );
                let p = b.const_i64(
                    &format!("{out}_pads"),
                    &[0, before as i64, 0, 0, 0, after as i64, 0, 0],
                );
                b.node("Pad", &[sliced, p], &out, vec![]);
            }
            Op::Const(_) | Op::Affine { .. } => {
                return Err("export works on the graph as written, not an optimized one".into())
            }
        }
        names.insert(n, out);
    }
    let mut g = Msg::default();
    for node in &b.nodes {
        g.msg(1, node);
    }
    g.str(2, &graph.name);
    for init in &b.inits {
        g.msg(5, init);
    }
    g.msg(11, &value_info("input", graph.input_shape()));
    g.msg(12, &value_info("output", graph.output_shape()));
    let mut opset = Msg::default();
    opset.str(1, "").int(2, 17);
    let mut model = Msg::default();
    model
        .int(1, 8)
        .str(2, "resnetc")
        .str(3, env!("CARGO_PKG_VERSION"))
        .msg(7, &g)
        .msg(8, &opset);
    Ok(model.0)
}
