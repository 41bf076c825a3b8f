//! The reference interpreter: plain, obviously correct Rust that executes the
//! IR with PyTorch's semantics. Every pass and back end is judged against it.

pub mod kernels;
pub mod layer_check;
pub mod winograd_bf16;

use crate::ir::op::{Activation, EpilogueStep, Fused, Op, UpsampleMode};
use crate::ir::Graph;
use crate::precision::Precision;
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
    #[error("batch {batch} needs {gib:.1} GiB of memory in the interpreter, which could not be allocated")]
    #[diagnostic(
        code(resnetc::run::memory),
        help("use a smaller batch; --target cpu needs far less (one planned arena)")
    )]
    Memory { batch: usize, gib: f64 },
}

/// Checks the weights and the input, and computes the derived constants.
fn prepare(graph: &Graph, weights: &Weights, input: &Tensor) -> Result<Weights, InterpError> {
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
    prepare_consts(graph, weights)
}

/// Checks that every weight is bound, and computes the derived constants.
fn prepare_consts(graph: &Graph, weights: &Weights) -> Result<Weights, InterpError> {
    for w in graph.weights() {
        if let Op::Weight { name } = &graph.node(w).op {
            if !weights.contains_key(name) {
                return Err(InterpError::Unbound(name.clone()));
            }
        }
    }
    Ok(crate::weights::materialize(graph, weights))
}

/// The constant behind node `o`, if it is one: a weight, or a constant
/// derived from weights.
fn constant<'a>(graph: &Graph, c: (&'a Weights, &'a Weights), o: NodeIndex) -> Option<&'a Tensor> {
    match &graph.node(o).op {
        Op::Weight { name } => Some(&c.0[name]),
        Op::Const(_) => Some(&c.1[&graph.node(o).name]),
        _ => None,
    }
}

/// Runs `graph` on a batch. `weights` must hold every weight node (as
/// `weights::bind` guarantees); derived constants are computed from them.
pub fn run(graph: &Graph, weights: &Weights, input: &Tensor) -> Result<Tensor, InterpError> {
    run_observed(graph, weights, input, Precision::F32, |_, _| {})
}

/// `run` in `precision`: in bf16, every conv, transposed conv and linear
/// layer reads its
/// input (after its prologue) and its weight rounded to bfloat16 and
/// accumulates in f64, the rounding points of the compiled bf16 code's
/// direct kernels (a Winograd conv on the pair kernels rounds its
/// transforms instead: `layer_check` with `winograd_bf16`). Run it on the
/// optimized graph, whose folded weights the back end rounds.
pub fn run_in(
    graph: &Graph,
    weights: &Weights,
    input: &Tensor,
    precision: Precision,
) -> Result<Tensor, InterpError> {
    run_observed(graph, weights, input, precision, |_, _| {})
}

/// `run`, showing `seen` the value of every activation node as it is
/// computed (what `--check-layers` compares a back end's layers with).
pub fn run_observed(
    graph: &Graph,
    weights: &Weights,
    input: &Tensor,
    precision: Precision,
    mut seen: impl FnMut(NodeIndex, &Tensor),
) -> Result<Tensor, InterpError> {
    let consts = prepare(graph, weights, input)?;
    let order = graph.schedule();
    // Free each value after its last use: densenet201 keeps memory bounded.
    let mut remaining: HashMap<NodeIndex, usize> = HashMap::new();
    for &n in &order {
        for o in graph.operands(n) {
            *remaining.entry(o).or_default() += 1;
        }
    }
    ensure_memory(graph, &order, &remaining, input.shape[0])?;
    let mut values: HashMap<NodeIndex, Tensor> = HashMap::new();
    for &n in &order {
        let node = graph.node(n);
        if node.op.is_const() {
            continue;
        }
        let ops = graph.operands(n);
        let y = match &node.op {
            Op::Input => input.clone(),
            Op::Output => return Ok(values[&ops[0]].clone()),
            op => {
                let args: Vec<&Tensor> = ops
                    .iter()
                    .map(|&o| constant(graph, (weights, &consts), o).unwrap_or_else(|| &values[&o]))
                    .collect();
                eval(op, &args, precision, false)
            }
        };
        debug_assert_eq!(
            &y.shape[1..],
            node.shape.as_slice(),
            "interpreter and shape inference disagree on {}",
            node.op.kind()
        );
        seen(n, &y);
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
    unreachable!("a verified graph ends in an output")
}

/// Refuses a run whose live values (at their peak, with a largest value's
/// worth for the kernels' temporaries) cannot be allocated, rather than
/// letting an allocation abort the process halfway through.
fn ensure_memory(
    graph: &Graph,
    order: &[NodeIndex],
    uses: &HashMap<NodeIndex, usize>,
    batch: usize,
) -> Result<(), InterpError> {
    let bytes =
        |n: NodeIndex| crate::ir::graph::numel(&graph.node(n).shape) as u128 * batch as u128 * 4;
    let mut left = uses.clone();
    let (mut live, mut peak, mut largest) = (0u128, 0u128, 0u128);
    for &n in order {
        if graph.node(n).op.is_const() {
            continue;
        }
        live += bytes(n);
        largest = largest.max(bytes(n));
        peak = peak.max(live);
        for o in graph.operands(n) {
            if let Some(r) = left.get_mut(&o) {
                *r -= 1;
                if *r == 0 && !graph.node(o).op.is_const() {
                    live -= bytes(o);
                }
            }
        }
    }
    let need = peak + largest;
    if crate::tensor::can_allocate(need) {
        Ok(())
    } else {
        let gib = need as f64 / (1u64 << 30) as f64;
        Err(InterpError::Memory { batch, gib })
    }
}

/// Runs an optimized graph the way a back end does: every activation lives
/// in one arena at the offsets of the memory plan (in-place concat slices
/// and views included), the arena starting as NaN. A plan that reuses memory
/// still needed, or places a slice wrongly, gives a different result than
/// `run`. Returns `None` when the graph has no plan.
pub fn run_planned(
    graph: &Graph,
    weights: &Weights,
    input: &Tensor,
) -> Result<Option<Tensor>, InterpError> {
    let Some(plan) = &graph.plan else {
        return Ok(None);
    };
    let consts = prepare(graph, weights, input)?;
    let batch = input.shape[0];
    let mut arena = vec![f32::NAN; batch * plan.arena_bytes / 4];
    // A view: (first element, per-image elements, distance between images).
    let view = |n: NodeIndex, extra: usize| {
        let s = plan.storage[&n];
        let base = batch * plan.buffers[s.buffer].offset / 4 + s.elem_offset + extra;
        (base, s.batch_stride)
    };
    let read = |arena: &[f32], n: NodeIndex| {
        let shape = &graph.node(n).shape;
        let per: usize = shape.iter().product();
        let (base, stride) = view(n, 0);
        let mut data = Vec::with_capacity(batch * per);
        for b in 0..batch {
            data.extend_from_slice(&arena[base + b * stride..base + b * stride + per]);
        }
        let mut full = vec![batch];
        full.extend(shape);
        Tensor::from_vec(&full, data)
    };
    let write = |arena: &mut [f32], n: NodeIndex, extra: usize, t: &Tensor| {
        let per = t.len() / batch;
        let (base, stride) = view(n, extra);
        for b in 0..batch {
            arena[base + b * stride..base + b * stride + per]
                .copy_from_slice(&t.data[b * per..(b + 1) * per]);
        }
    };
    for &n in &plan.schedule {
        let node = graph.node(n);
        let ops = graph.operands(n);
        match &node.op {
            Op::Input => write(&mut arena, n, 0, input),
            Op::Output => return Ok(Some(read(&arena, ops[0]))),
            Op::Concat { placed } => {
                // Placed operands are already in their slices; copy the rest.
                let mut off = 0;
                for (i, &o) in ops.iter().enumerate() {
                    if !placed.get(i).copied().unwrap_or(false) {
                        let t = read(&arena, o);
                        write(&mut arena, n, off, &t);
                    }
                    off += crate::ir::graph::numel(&graph.node(o).shape);
                }
            }
            op => {
                let owned: Vec<Option<Tensor>> = ops
                    .iter()
                    .map(|&o| {
                        constant(graph, (weights, &consts), o)
                            .is_none()
                            .then(|| read(&arena, o))
                    })
                    .collect();
                let args: Vec<&Tensor> = ops
                    .iter()
                    .zip(&owned)
                    .map(|(&o, t)| {
                        t.as_ref().unwrap_or_else(|| {
                            constant(graph, (weights, &consts), o).expect("a constant")
                        })
                    })
                    .collect();
                let y = eval(op, &args, Precision::F32, false);
                write(&mut arena, n, 0, &y);
            }
        }
    }
    unreachable!("a plan ends in the output")
}

/// One op on its operands (constants included, in operand order). With
/// `winograd` (a bf16 conv the back end runs as Winograd F(2×2)), the
/// conv rounds its transforms instead of its weight (`winograd_bf16`).
fn eval(op: &Op, a: &[&Tensor], precision: Precision, winograd: bool) -> Tensor {
    let get = |i: usize| a[i];
    // The operands a layer reads rounded in bf16: its input (after the
    // prologue) and its weight.
    let rounded = |fused: &Fused| match precision {
        Precision::F32 => (prologue(fused, &get, 2), None),
        Precision::Bf16 => {
            // The prologue as the compiled code computes it, one fused
            // multiply-add: a value next to a rounding boundary must land
            // on the same side.
            let x = fused.prologue.map(|p| {
                let (s, t) = (get(2), get(3));
                let c = s.data.len();
                let inner = get(0).len() / get(0).shape[0] / c;
                let mut y = get(0).clone();
                for (i, v) in y.data.iter_mut().enumerate() {
                    let ch = (i / inner) % c;
                    let u = v.mul_add(s.data[ch], t.data[ch]);
                    *v = p.act.map_or(u, |a| a.apply(u));
                }
                y
            });
            {
                let x = round_all(x.as_ref().unwrap_or(get(0)), precision);
                // A Winograd conv rounds its transformed filter instead.
                (Some(x), (!winograd).then(|| round_all(get(1), precision)))
            }
        }
    };
    match op {
        Op::Input | Op::Output | Op::Weight { .. } | Op::Const(_) => {
            unreachable!("not computed by eval")
        }
        Op::Conv { geom, fused } if winograd => {
            let (x, _) = rounded(fused);
            let x = x.as_ref().unwrap_or(get(0));
            let y = winograd_bf16::conv2d(x, get(1), geom.pad, precision);
            epilogue(fused, y, &get, 2)
        }
        Op::Conv { geom, fused } => {
            let (x, w) = rounded(fused);
            let y = k::conv2d(
                x.as_ref().unwrap_or(get(0)),
                w.as_ref().unwrap_or(get(1)),
                None,
                &k::Conv2d {
                    stride: geom.stride,
                    pad: geom.pad,
                    dilation: geom.dilation,
                    groups: geom.groups,
                },
            );
            epilogue(fused, y, &get, 2)
        }
        Op::ConvTranspose {
            geom,
            output_padding,
            fused,
        } => {
            let (x, w) = rounded(fused);
            let y = k::conv_transpose2d(
                x.as_ref().unwrap_or(get(0)),
                w.as_ref().unwrap_or(get(1)),
                None,
                &k::ConvTranspose2d {
                    stride: geom.stride,
                    pad: geom.pad,
                    dilation: geom.dilation,
                    output_padding: *output_padding,
                    groups: geom.groups,
                },
            );
            epilogue(fused, y, &get, 2)
        }
        Op::Linear { fused, .. } => {
            let (x, w) = rounded(fused);
            let y = k::linear(
                x.as_ref().unwrap_or(get(0)),
                w.as_ref().unwrap_or(get(1)),
                None,
            );
            epilogue(fused, y, &get, 2)
        }
        Op::BatchNorm { eps } => k::batchnorm(get(0), get(1), get(2), get(3), get(4), *eps),
        Op::Affine { act } => affine(get(0), get(1), get(2), *act),
        Op::Act(a) => match a {
            Activation::Relu => k::relu(get(0)),
            Activation::Relu6 => k::relu6(get(0)),
            Activation::LeakyRelu(s) => k::leaky_relu(get(0), *s),
            Activation::Sigmoid => k::sigmoid(get(0)),
        },
        Op::Add => k::add(get(0), get(1)),
        Op::Mul { fused } => epilogue(fused, k::mul(get(0), get(1)), &get, 2),
        Op::Concat { .. } => {
            let xs: Vec<&Tensor> = a.to_vec();
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
    }
}

/// `t` with every element as `precision` rounds it.
fn round_all(t: &Tensor, precision: Precision) -> Tensor {
    let mut r = t.clone();
    r.data.iter_mut().for_each(|v| *v = precision.round(*v));
    r
}

/// `act(x * scale + shift)` per channel (axis 1).
fn affine(x: &Tensor, scale: &Tensor, shift: &Tensor, act: Option<Activation>) -> Tensor {
    let c = x.shape[1];
    let inner: usize = x.shape[2..].iter().product();
    let mut y = x.clone();
    for (i, v) in y.data.iter_mut().enumerate() {
        let ch = (i / inner) % c;
        let t = *v * scale.data[ch] + shift.data[ch];
        *v = act.map_or(t, |a| a.apply(t));
    }
    y
}

/// The transformed input of a layer with a prologue (scale and shift are
/// operands `first` and `first + 1`), or `None` to use x as it is.
fn prologue<'a>(fused: &Fused, get: &impl Fn(usize) -> &'a Tensor, first: usize) -> Option<Tensor> {
    let p = fused.prologue?;
    Some(affine(get(0), get(first), get(first + 1), p.act))
}

/// Applies the epilogue steps in order; their operands follow the prologue's.
fn epilogue<'a>(
    fused: &Fused,
    mut y: Tensor,
    get: &impl Fn(usize) -> &'a Tensor,
    first: usize,
) -> Tensor {
    let mut slot = first + if fused.prologue.is_some() { 2 } else { 0 };
    let c = y.shape[1];
    let inner: usize = y.shape[2..].iter().product();
    for step in &fused.epilogue {
        match step {
            EpilogueStep::Bias => {
                let b = get(slot);
                slot += 1;
                for (i, v) in y.data.iter_mut().enumerate() {
                    *v += b.data[(i / inner) % c];
                }
            }
            EpilogueStep::Add => {
                let z = get(slot);
                slot += 1;
                for (v, r) in y.data.iter_mut().zip(&z.data) {
                    *v += r;
                }
            }
            EpilogueStep::Act(a) => {
                for v in y.data.iter_mut() {
                    *v = a.apply(*v);
                }
            }
        }
    }
    y
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
