//! Shape inference: the output shape of every op from its operands' shapes,
//! with errors that say what was expected and what was found.

use super::op::{EpilogueStep, Op};
use super::sizes::{conv_out, conv_transpose_out, pool_out};

/// Largest number of elements one activation or weight may have (2^31):
/// rejected before anything is allocated.
pub const MAX_ELEMENTS: usize = 1 << 31;

#[derive(Clone, Debug, PartialEq)]
pub struct ShapeError {
    pub message: String,
    pub hint: Option<String>,
}

fn err(message: impl Into<String>) -> ShapeError {
    ShapeError {
        message: message.into(),
        hint: None,
    }
}

impl ShapeError {
    fn hint(mut self, h: impl Into<String>) -> ShapeError {
        self.hint = Some(h.into());
        self
    }
}

/// `f32[N, 64, 56, 56]`
pub fn show(shape: &[usize]) -> String {
    let mut s = String::from("f32[N");
    for d in shape {
        s.push_str(&format!(", {d}"));
    }
    s.push(']');
    s
}

/// `[64, 3, 7, 7]`
pub fn show_weight(shape: &[usize]) -> String {
    format!("{shape:?}")
}

fn spatial(x: &[usize], what: &str) -> Result<(usize, usize, usize), ShapeError> {
    match *x {
        [c, h, w] => Ok((c, h, w)),
        _ => Err(err(format!(
            "{what} needs a 4-d tensor f32[N, C, H, W], found {}",
            show(x)
        ))
        .hint("flatten() turns images into vectors; only linear and softmax take those")),
    }
}

fn checked(shape: Vec<usize>) -> Result<Vec<usize>, ShapeError> {
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    match n {
        Some(n) if n <= MAX_ELEMENTS => Ok(shape),
        _ => Err(err(format!("tensor {} is too large (more than 2^31 elements per image)", show(&shape)))
            .hint("check the channel counts and kernel sizes; resnetc refuses such shapes before allocating anything")),
    }
}

/// Output shape of `op` given the shapes of its activation operands.
pub fn infer(op: &Op, operands: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
    let x = operands.first().copied().unwrap_or(&[]);
    let out = match op {
        Op::Input | Op::Weight { .. } | Op::Const(_) => {
            return Err(err("inputs and constants have no operands"))
        }
        Op::Conv { geom, .. } => {
            let (c, h, w) = spatial(x, "conv")?;
            if geom.groups == 0 || c % geom.groups != 0 || geom.out_channels % geom.groups != 0 {
                return Err(err(format!(
                    "groups = {} must divide both the input channels ({c}) and the output channels ({})",
                    geom.groups, geom.out_channels
                )));
            }
            let oh = conv_out(
                h,
                geom.kernel[0],
                geom.stride[0],
                geom.pad[0],
                geom.dilation[0],
            );
            let ow = conv_out(
                w,
                geom.kernel[1],
                geom.stride[1],
                geom.pad[1],
                geom.dilation[1],
            );
            match (oh, ow) {
                (Some(oh), Some(ow)) => vec![geom.out_channels, oh, ow],
                _ => {
                    return Err(kernel_too_large(geom.kernel, geom.dilation, geom.pad, h, w));
                }
            }
        }
        Op::ConvTranspose {
            geom,
            output_padding,
            ..
        } => {
            let (c, h, w) = spatial(x, "conv_transpose")?;
            if geom.groups == 0 || c % geom.groups != 0 || geom.out_channels % geom.groups != 0 {
                return Err(err(format!(
                    "groups = {} must divide both the input channels ({c}) and the output channels ({})",
                    geom.groups, geom.out_channels
                )));
            }
            for ((op, s), d) in output_padding.iter().zip(geom.stride).zip(geom.dilation) {
                if *op >= s.max(d) {
                    return Err(
                        err("output_padding must be smaller than stride or dilation")
                            .hint("as in nn.ConvTranspose2d"),
                    );
                }
            }
            let oh = conv_transpose_out(
                h,
                geom.kernel[0],
                geom.stride[0],
                geom.pad[0],
                geom.dilation[0],
                output_padding[0],
            );
            let ow = conv_transpose_out(
                w,
                geom.kernel[1],
                geom.stride[1],
                geom.pad[1],
                geom.dilation[1],
                output_padding[1],
            );
            match (oh, ow) {
                (Some(oh), Some(ow)) => vec![geom.out_channels, oh, ow],
                _ => return Err(err("padding leaves no output").hint("reduce pad")),
            }
        }
        Op::BatchNorm { .. } | Op::Affine { .. } => {
            if x.is_empty() {
                return Err(err("batchnorm needs a channel axis"));
            }
            x.to_vec()
        }
        Op::Linear { out_features, .. } => match *x {
            [_] => vec![*out_features],
            _ => {
                return Err(
                    err(format!("linear needs f32[N, features], found {}", show(x)))
                        .hint("insert `flatten()` before the linear layer"),
                )
            }
        },
        Op::Act(_) | Op::Identity | Op::Dropout { .. } => x.to_vec(),
        Op::Softmax => {
            if x.is_empty() {
                return Err(err("softmax needs a channel axis"));
            }
            x.to_vec()
        }
        Op::Add => {
            let y = operands.get(1).copied().unwrap_or(&[]);
            if x != y {
                let what = if x.len() == y.len() && x.first() != y.first() && x[1..] == y[1..] {
                    "channel"
                } else if x.len() == y.len() && x.first() == y.first() {
                    "spatial"
                } else {
                    "shape"
                };
                return Err(err(format!(
                    "{what} mismatch in `+`: {} + {}",
                    show(x),
                    show(y)
                ))
                .hint(if what == "channel" {
                    "a projection shortcut (1x1 conv + batchnorm) or channel_pad() makes the channels agree"
                } else {
                    "both sides of `+` must have the same shape; a strided shortcut makes the sizes agree"
                }));
            }
            x.to_vec()
        }
        Op::Mul { .. } => {
            let s = operands.get(1).copied().unwrap_or(&[]);
            let per_channel = x.len() == 3 && s.len() == 3 && s[0] == x[0] && s[1..] == [1, 1];
            if s != x && !per_channel {
                // Per channel only applies to a factor with channels and a
                // map: the one whose map is larger than 1x1 (the other is
                // the gate that was meant).
                let map = [x, s]
                    .into_iter()
                    .find(|t| t.len() == 3 && t[1..] != [1, 1])
                    .or_else(|| [x, s].into_iter().find(|t| t.len() == 3));
                let hint = match map {
                    Some(m) => format!(
                        "the factors must have the same shape, or one must be f32[N, {}, 1, 1]: one factor per channel, as a squeeze-and-excitation scale",
                        m[0]
                    ),
                    None => "the factors must have the same shape".to_string(),
                };
                return Err(
                    err(format!("shape mismatch in `*`: {} * {}", show(x), show(s))).hint(hint),
                );
            }
            x.to_vec()
        }
        Op::Concat { .. } => {
            let first = x;
            if first.is_empty() {
                return Err(err("concat needs tensors with a channel axis"));
            }
            let mut c = 0usize;
            for (i, s) in operands.iter().enumerate() {
                if s.len() != first.len() || s[1..] != first[1..] {
                    return Err(err(format!(
                        "spatial mismatch in concat: operand 1 is {} but operand {} is {}",
                        show(first),
                        i + 1,
                        show(s)
                    ))
                    .hint("concat joins channels; every other dimension must agree"));
                }
                c += s[0];
            }
            let mut out = first.to_vec();
            out[0] = c;
            out
        }
        Op::MaxPool(g) | Op::AvgPool { geom: g, .. } => {
            let (c, h, w) = spatial(x, op.kind())?;
            for i in 0..2 {
                if g.pad[i] * 2 > g.kernel[i] {
                    return Err(err(format!(
                        "pad ({}) must be at most half the kernel ({})",
                        g.pad[i], g.kernel[i]
                    ))
                    .hint("as in PyTorch's pooling layers"));
                }
            }
            let oh = pool_out(
                h,
                g.kernel[0],
                g.stride[0],
                g.pad[0],
                g.dilation[0],
                g.ceil_mode,
            );
            let ow = pool_out(
                w,
                g.kernel[1],
                g.stride[1],
                g.pad[1],
                g.dilation[1],
                g.ceil_mode,
            );
            match (oh, ow) {
                (Some(oh), Some(ow)) => vec![c, oh, ow],
                _ => return Err(kernel_too_large(g.kernel, g.dilation, g.pad, h, w)),
            }
        }
        Op::GlobalAvgPool => {
            let (c, _, _) = spatial(x, "global_avgpool")?;
            vec![c, 1, 1]
        }
        Op::Flatten => vec![x.iter().product()],
        Op::Upsample { scale, .. } => {
            let (c, h, w) = spatial(x, "upsample")?;
            vec![c, scale[0].out(h), scale[1].out(w)]
        }
        Op::ChannelPad {
            out_channels,
            stride,
        } => {
            let (c, h, w) = spatial(x, "channel_pad")?;
            if *out_channels < c {
                return Err(err(format!(
                    "channel_pad to {out_channels} channels, but the input already has {c}"
                )));
            }
            vec![*out_channels, h.div_ceil(*stride), w.div_ceil(*stride)]
        }
        Op::Output => x.to_vec(),
    };
    checked(out)
}

fn kernel_too_large(k: [usize; 2], d: [usize; 2], p: [usize; 2], h: usize, w: usize) -> ShapeError {
    let span = [d[0] * (k[0].max(1) - 1) + 1, d[1] * (k[1].max(1) - 1) + 1];
    err(format!(
        "kernel {}x{} (dilated extent {}x{}) is larger than the padded input {}x{}",
        k[0],
        k[1],
        span[0],
        span[1],
        h + 2 * p[0],
        w + 2 * p[1]
    ))
    .hint("the input is too small here: use a smaller kernel, more padding, or fewer downsampling steps before this layer")
}

/// Named parameters of a layer as written, `(suffix, shape)`: what the
/// expander declares as `<label>.<suffix>` for a weights file to provide.
pub fn param_shapes(op: &Op, x: &[usize]) -> Vec<(&'static str, Vec<usize>)> {
    let c = x.first().copied().unwrap_or(0);
    let mut v = Vec::new();
    match op {
        Op::Conv { geom, fused } => {
            v.push((
                "weight",
                vec![
                    geom.out_channels,
                    c / geom.groups.max(1),
                    geom.kernel[0],
                    geom.kernel[1],
                ],
            ));
            if fused.has_bias() {
                v.push(("bias", vec![geom.out_channels]));
            }
        }
        Op::ConvTranspose { geom, fused, .. } => {
            v.push((
                "weight",
                vec![
                    c,
                    geom.out_channels / geom.groups.max(1),
                    geom.kernel[0],
                    geom.kernel[1],
                ],
            ));
            if fused.has_bias() {
                v.push(("bias", vec![geom.out_channels]));
            }
        }
        Op::BatchNorm { .. } => {
            for s in ["weight", "bias", "running_mean", "running_var"] {
                v.push((s, vec![c]));
            }
        }
        Op::Linear {
            out_features,
            fused,
        } => {
            v.push(("weight", vec![*out_features, c]));
            if fused.has_bias() {
                v.push(("bias", vec![*out_features]));
            }
        }
        _ => {}
    }
    v
}

/// What one operand slot of an op holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Slot {
    /// An activation; `Some(shape)` when its shape is fixed by the op.
    Act(Option<Vec<usize>>),
    /// A constant of this shape.
    Const(Vec<usize>),
}

/// The operand signature of `op` given its first operand's shape `x` and
/// its own output shape; `n` is the operand count (for variadic concat).
pub fn signature(op: &Op, x: &[usize], out: &[usize], n: usize) -> Vec<Slot> {
    let c = x.first().copied().unwrap_or(0);
    let mut v = vec![Slot::Act(None)];
    let consts = |v: &mut Vec<Slot>, shapes: Vec<(&'static str, Vec<usize>)>| {
        v.extend(shapes.into_iter().map(|(_, s)| Slot::Const(s)));
    };
    match op {
        Op::Input | Op::Weight { .. } | Op::Const(_) => return vec![],
        Op::Conv { fused, .. } | Op::ConvTranspose { fused, .. } | Op::Linear { fused, .. } => {
            let written = param_shapes(op, x);
            v.push(Slot::Const(written[0].1.clone()));
            if fused.prologue.is_some() {
                v.push(Slot::Const(vec![c]));
                v.push(Slot::Const(vec![c]));
            }
            let oc = out.first().copied().unwrap_or(0);
            for step in &fused.epilogue {
                match step {
                    EpilogueStep::Bias => v.push(Slot::Const(vec![oc])),
                    EpilogueStep::Add => v.push(Slot::Act(Some(out.to_vec()))),
                    EpilogueStep::Act(_) => {}
                }
            }
        }
        Op::BatchNorm { .. } => consts(&mut v, param_shapes(op, x)),
        Op::Affine { .. } => {
            v.push(Slot::Const(vec![c]));
            v.push(Slot::Const(vec![c]));
        }
        Op::Add => v.push(Slot::Act(Some(x.to_vec()))),
        Op::Mul { fused } => {
            v.push(Slot::Act(None));
            if fused.epilogue.contains(&EpilogueStep::Add) {
                v.push(Slot::Act(Some(out.to_vec())));
            }
        }
        Op::Concat { .. } => v.extend((1..n).map(|_| Slot::Act(None))),
        _ => {}
    }
    v
}
