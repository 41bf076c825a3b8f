//! The reference interpreter: plain, obviously correct Rust that executes the
//! IR with PyTorch's semantics. Every pass and back end is judged against it.

pub mod kernels;

use crate::ir::op::{Activation, Op, UpsampleMode};
use crate::ir::Graph;
use crate::tensor::Tensor;
use crate::weights::Weights;
use kernels as k;
use petgraph::stable_graph::NodeIndex;
use std::collections::HashMap;

/// Why a run could not start.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum InterpError {
    #[error("input has shape {found:?} but the model takes [N, {expected}]")]
    #[diagnostic(
        code(resnetc::run::input_shape),
        help("the input must be f32 [batch, {expected}] in C order")
    )]
    InputShape { found: Vec<usize>, expected: String },
    #[error("weight `{0}` is not bound")]
    #[diagnostic(
        code(resnetc::run::unbound),
        help("load weights with --weights or use --random-weights")
    )]
    Unbound(String),
}

/// Runs `graph` on a batch. `weights` must hold every weight node (as
/// `weights::bind` guarantees).
pub fn run(graph: &Graph, weights: &Weights, input: &Tensor) -> Result<Tensor, InterpError> {
    let expected = graph.input_shape();
    if input.shape.len() != expected.len() + 1
        || input.shape[1..] != *expected
        || input.shape[0] == 0
    {
        return Err(InterpError::InputShape {
            found: input.shape.clone(),
            expected: expected
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let order = graph.schedule();
    // Free each value after its last use: densenet201 keeps memory bounded.
    let mut remaining: HashMap<NodeIndex, usize> = HashMap::new();
    for &n in &order {
        for o in graph.operands(n) {
            *remaining.entry(o).or_default() += 1;
        }
    }
    let mut values: HashMap<NodeIndex, Tensor> = HashMap::new();
    let mut result = None;
    for &n in &order {
        let node = graph.node(n);
        if let Op::Weight { name } = &node.op {
            if !weights.contains_key(name) {
                return Err(InterpError::Unbound(name.clone()));
            }
            continue;
        }
        let ops = graph.operands(n);
        let get = |i: usize| -> &Tensor {
            let o = ops[i];
            match &graph.node(o).op {
                Op::Weight { name } => &weights[name],
                _ => &values[&o],
            }
        };
        let opt = |i: usize| (i < ops.len()).then(|| get(i));
        let y = match &node.op {
            Op::Input => input.clone(),
            Op::Weight { .. } => unreachable!("handled above"),
            Op::Output => {
                result = Some(get(0).clone());
                continue;
            }
            Op::Conv { geom, .. } => k::conv2d(
                get(0),
                get(1),
                opt(2),
                &k::Conv2d {
                    stride: geom.stride,
                    pad: geom.pad,
                    dilation: geom.dilation,
                    groups: geom.groups,
                },
            ),
            Op::ConvTranspose {
                geom,
                output_padding,
                ..
            } => k::conv_transpose2d(
                get(0),
                get(1),
                opt(2),
                &k::ConvTranspose2d {
                    stride: geom.stride,
                    pad: geom.pad,
                    dilation: geom.dilation,
                    output_padding: *output_padding,
                    groups: geom.groups,
                },
            ),
            Op::BatchNorm { eps } => k::batchnorm(get(0), get(1), get(2), get(3), get(4), *eps),
            Op::Linear { .. } => k::linear(get(0), get(1), opt(2)),
            Op::Act(a) => match a {
                Activation::Relu => k::relu(get(0)),
                Activation::Relu6 => k::relu6(get(0)),
                Activation::LeakyRelu(s) => k::leaky_relu(get(0), *s),
                Activation::Sigmoid => k::sigmoid(get(0)),
            },
            Op::Add => k::add(get(0), get(1)),
            Op::Concat => {
                let xs: Vec<&Tensor> = (0..ops.len()).map(get).collect();
                k::concat_channels(&xs)
            }
            Op::MaxPool(g) => k::maxpool2d(get(0), &pool(g, true)),
            Op::AvgPool {
                geom,
                count_include_pad,
            } => k::avgpool2d(get(0), &pool(geom, *count_include_pad)),
            Op::GlobalAvgPool => k::global_avgpool(get(0)),
            Op::Flatten => k::flatten(get(0)),
            Op::Upsample { scale, mode } => match mode {
                UpsampleMode::Nearest => k::upsample_nearest(get(0), *scale),
                UpsampleMode::Bilinear { align_corners } => {
                    k::upsample_bilinear(get(0), *scale, *align_corners)
                }
            },
            Op::Softmax => k::softmax(get(0)),
            Op::Identity | Op::Dropout { .. } => get(0).clone(),
            Op::ChannelPad {
                out_channels,
                stride,
            } => k::channel_pad(get(0), *out_channels, *stride),
        };
        debug_assert_eq!(
            &y.shape[1..],
            node.shape.as_slice(),
            "interpreter and shape inference disagree on {}",
            node.op.kind()
        );
        for o in ops {
            if let Some(r) = remaining.get_mut(&o) {
                *r -= 1;
                if *r == 0 {
                    values.remove(&o);
                }
            }
        }
        values.insert(n, y);
    }
    Ok(result.expect("a verified graph has an output"))
}

fn pool(g: &crate::ir::op::PoolGeom, count_include_pad: bool) -> k::Pool2d {
    k::Pool2d {
        kernel: g.kernel,
        stride: g.stride,
        pad: g.pad,
        dilation: g.dilation,
        ceil_mode: g.ceil_mode,
        count_include_pad,
    }
}
