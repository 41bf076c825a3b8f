//! Operations of the graph IR and their typed attributes.

use serde::Serialize;

/// Convolution geometry shared by conv, transposed conv and the fused forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ConvGeom {
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub pad: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PoolGeom {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub pad: [usize; 2],
    pub dilation: [usize; 2],
    pub ceil_mode: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Activation {
    Relu,
    Relu6,
    LeakyRelu(f32),
    Sigmoid,
}

impl Activation {
    pub fn name(&self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Relu6 => "relu6",
            Activation::LeakyRelu(_) => "leaky_relu",
            Activation::Sigmoid => "sigmoid",
        }
    }

    pub fn apply(&self, v: f32) -> f32 {
        match *self {
            Activation::Relu => v.max(0.0),
            Activation::Relu6 => v.clamp(0.0, 6.0),
            Activation::LeakyRelu(s) => {
                if v >= 0.0 {
                    v
                } else {
                    v * s
                }
            }
            Activation::Sigmoid => 1.0 / (1.0 + (-v).exp()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum UpsampleMode {
    Nearest,
    Bilinear { align_corners: bool },
}

/// One step applied to a conv/linear result while it is still in registers,
/// in order: cuDNN's `act(conv(x) + bias + z)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum EpilogueStep {
    /// Per-output-channel bias (operand index of the bias constant).
    Bias,
    /// Elementwise add of an operand (the residual).
    Add,
    Act(Activation),
}

/// A graph operation. Operand order is given by edge weights; the comment on
/// each variant lists the operands.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Op {
    /// The model input (no operands).
    Input,
    /// A named parameter tensor from the weights file (no operands).
    Weight {
        name: String,
    },
    /// x, weight, [bias]
    Conv {
        geom: ConvGeom,
        bias: bool,
    },
    /// x, weight `[cin, cout/groups, kh, kw]`, [bias]
    ConvTranspose {
        geom: ConvGeom,
        output_padding: [usize; 2],
        bias: bool,
    },
    /// x, gamma, beta, running_mean, running_var
    BatchNorm {
        eps: f64,
    },
    /// x, weight `[out, in]`, [bias]
    Linear {
        out_features: usize,
        bias: bool,
    },
    /// x
    Act(Activation),
    /// a, b
    Add,
    /// x0, x1, ... along channels
    Concat,
    MaxPool(PoolGeom),
    AvgPool {
        geom: PoolGeom,
        count_include_pad: bool,
    },
    GlobalAvgPool,
    Flatten,
    Upsample {
        scale: [usize; 2],
        mode: UpsampleMode,
    },
    /// Over the channel axis.
    Softmax,
    Identity,
    Dropout {
        p: f64,
    },
    /// Option-A shortcut: subsample by `stride`, zero-pad channels to `out`.
    ChannelPad {
        out_channels: usize,
        stride: usize,
    },
    /// The model output (one operand).
    Output,
}

impl Op {
    /// Short name as printed in the IR and used in op counts.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::Weight { .. } => "weight",
            Op::Conv { .. } => "conv",
            Op::ConvTranspose { .. } => "conv_transpose",
            Op::BatchNorm { .. } => "batchnorm",
            Op::Linear { .. } => "linear",
            Op::Act(a) => a.name(),
            Op::Add => "add",
            Op::Concat => "concat",
            Op::MaxPool(_) => "maxpool",
            Op::AvgPool { .. } => "avgpool",
            Op::GlobalAvgPool => "global_avgpool",
            Op::Flatten => "flatten",
            Op::Upsample { .. } => "upsample",
            Op::Softmax => "softmax",
            Op::Identity => "identity",
            Op::Dropout { .. } => "dropout",
            Op::ChannelPad { .. } => "channel_pad",
            Op::Output => "output",
        }
    }

    pub fn is_weight(&self) -> bool {
        matches!(self, Op::Weight { .. })
    }

    /// Attributes in the IR text form, `{k=3x3, s=1x1}`; empty when none.
    pub fn attrs(&self) -> String {
        fn hw(a: [usize; 2]) -> String {
            format!("{}x{}", a[0], a[1])
        }
        fn conv(g: &ConvGeom) -> Vec<String> {
            let mut v = vec![
                format!("out={}", g.out_channels),
                format!("k={}", hw(g.kernel)),
            ];
            if g.stride != [1, 1] {
                v.push(format!("stride={}", hw(g.stride)));
            }
            if g.pad != [0, 0] {
                v.push(format!("pad={}", hw(g.pad)));
            }
            if g.dilation != [1, 1] {
                v.push(format!("dilation={}", hw(g.dilation)));
            }
            if g.groups != 1 {
                v.push(format!("groups={}", g.groups));
            }
            v
        }
        fn pool(g: &PoolGeom) -> Vec<String> {
            let mut v = vec![
                format!("k={}", hw(g.kernel)),
                format!("stride={}", hw(g.stride)),
            ];
            if g.pad != [0, 0] {
                v.push(format!("pad={}", hw(g.pad)));
            }
            if g.dilation != [1, 1] {
                v.push(format!("dilation={}", hw(g.dilation)));
            }
            if g.ceil_mode {
                v.push("ceil_mode".into());
            }
            v
        }
        let items: Vec<String> = match self {
            Op::Conv { geom, bias } => {
                let mut v = conv(geom);
                if *bias {
                    v.push("bias".into());
                }
                v
            }
            Op::ConvTranspose {
                geom,
                output_padding,
                bias,
            } => {
                let mut v = conv(geom);
                if *output_padding != [0, 0] {
                    v.push(format!("output_padding={}", hw(*output_padding)));
                }
                if *bias {
                    v.push("bias".into());
                }
                v
            }
            Op::BatchNorm { eps } => vec![format!("eps={eps:e}")],
            Op::Linear { out_features, bias } => {
                let mut v = vec![format!("out={out_features}")];
                if *bias {
                    v.push("bias".into());
                }
                v
            }
            Op::Act(Activation::LeakyRelu(s)) => vec![format!("slope={s}")],
            Op::MaxPool(g) => pool(g),
            Op::AvgPool {
                geom,
                count_include_pad,
            } => {
                let mut v = pool(geom);
                if !count_include_pad {
                    v.push("exclude_pad".into());
                }
                v
            }
            Op::Upsample { scale, mode } => {
                let mut v = vec![format!("scale={}", hw(*scale))];
                match mode {
                    UpsampleMode::Nearest => v.push("nearest".into()),
                    UpsampleMode::Bilinear { align_corners } => {
                        v.push("bilinear".into());
                        if *align_corners {
                            v.push("align_corners".into());
                        }
                    }
                }
                v
            }
            Op::Dropout { p } => vec![format!("p={p}")],
            Op::ChannelPad {
                out_channels,
                stride,
            } => vec![format!("out={out_channels}"), format!("stride={stride}")],
            _ => vec![],
        };
        if items.is_empty() {
            String::new()
        } else {
            format!(" {{{}}}", items.join(", "))
        }
    }
}
