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

/// How `upsample` maps one axis, as PyTorch's `upsample_{nearest,bilinear}2d`
/// do: a whole factor (the common case, exact integer indexing), or any
/// other output size with PyTorch's source step per output pixel.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Scale {
    /// Output `in * f`; source index `out / f`.
    Whole(usize),
    /// Output `out`; `step` is the source distance per output pixel as
    /// PyTorch computes it in f32: `1 / scale_factor` where a factor was
    /// given (so `floor(in * f)` outputs need not span the input exactly),
    /// else `in / out`.
    Ratio { out: usize, step: f32 },
}

impl Scale {
    /// The output size for an input of `inp`.
    pub fn out(&self, inp: usize) -> usize {
        match *self {
            Scale::Whole(f) => inp * f,
            Scale::Ratio { out, .. } => out,
        }
    }

    /// Source pixels per output pixel (PyTorch's `compute_scales_value`).
    pub fn step(&self) -> f64 {
        match *self {
            Scale::Whole(f) => 1.0 / f as f64,
            Scale::Ratio { step, .. } => step as f64,
        }
    }
}

/// PyTorch's `nearest_idx`: the source index of output `o` along an axis
/// of `inp` pixels scaled to `out` by `step` (f32 arithmetic, as PyTorch's).
pub fn nearest_src(o: usize, inp: usize, out: usize, step: f32) -> usize {
    if out == inp {
        o
    } else if out == 2 * inp {
        o >> 1
    } else {
        ((o as f32 * step).floor() as usize).min(inp - 1)
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
    /// Per-output-channel bias (a constant operand).
    Bias,
    /// Elementwise add of an activation operand (the residual).
    Add,
    Act(Activation),
}

/// `act(x * scale + shift)` per input channel, applied to each input element
/// as the kernel reads it; padding stays zero. This is exactly
/// `conv(act(bn(x)))`: DenseNet's pre-activation BN-ReLU before a conv.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Prologue {
    pub act: Option<Activation>,
}

/// Operand indices of a fused layer's extra operands (`Fused::operands`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FusedOperands {
    /// The prologue's per-channel scale and shift.
    pub prologue: Option<(usize, usize)>,
    pub bias: Option<usize>,
    /// The activation an `Add` step adds.
    pub residual: Option<usize>,
}

/// What a conv, transposed conv or linear layer does besides its product.
/// Operands after x and the weight: the prologue's scale and shift, then one
/// per epilogue step that takes one (Bias, Add), in step order.
#[derive(Clone, Debug, PartialEq, Default, Serialize)]
pub struct Fused {
    pub prologue: Option<Prologue>,
    pub epilogue: Vec<EpilogueStep>,
}

impl Fused {
    /// The epilogue of a layer as written: a bias or nothing.
    pub fn with_bias(bias: bool) -> Fused {
        Fused {
            prologue: None,
            epilogue: if bias {
                vec![EpilogueStep::Bias]
            } else {
                vec![]
            },
        }
    }

    pub fn has_bias(&self) -> bool {
        self.epilogue.contains(&EpilogueStep::Bias)
    }

    /// Where the operands it reads sit among the layer's (x is 0, the
    /// weight 1): the one place that knows the layout above.
    pub fn operands(&self) -> FusedOperands {
        let mut next = 2;
        let prologue = self.prologue.map(|_| {
            next += 2;
            (2, 3)
        });
        let mut slots = FusedOperands {
            prologue,
            ..FusedOperands::default()
        };
        for step in &self.epilogue {
            let slot = match step {
                EpilogueStep::Bias => &mut slots.bias,
                EpilogueStep::Add => &mut slots.residual,
                EpilogueStep::Act(_) => continue,
            };
            *slot = Some(next);
            next += 1;
        }
        slots
    }

    /// Text form: `prologue=relu(x*s+t), epilogue=[bias, add, relu]`.
    fn attrs(&self, v: &mut Vec<String>) {
        if let Some(p) = &self.prologue {
            v.push(format!("prologue={}", p.act.map_or("affine", |a| a.name())));
        }
        if !self.epilogue.is_empty() {
            let steps: Vec<String> = self
                .epilogue
                .iter()
                .map(|s| match s {
                    EpilogueStep::Bias => "bias".to_string(),
                    EpilogueStep::Add => "add".to_string(),
                    EpilogueStep::Act(a) => a.name().to_string(),
                })
                .collect();
            v.push(format!("epilogue=[{}]", steps.join(", ")));
        }
    }
}

/// Constants derived from other constants at bind time, in f64 and rounded
/// once: what BN folding produces. Passes rewrite the graph only; the values
/// follow from these recipes (`crate::weights::materialize`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum ConstOp {
    /// gamma, var → gamma / sqrt(var + eps)
    BnScale { eps: f64 },
    /// gamma, beta, mean, var → beta − mean · gamma / sqrt(var + eps)
    BnShift { eps: f64 },
    /// w `[O, ...]`, s `[O]` → w · s per output row (conv, linear)
    ScaleRows,
    /// w `[Cin, Cout/g, k, k]`, s `[Cout]` → w · s per output channel
    ScaleConvTransposeOut { groups: usize },
    /// s, t, [b] → b · s + t (b = 0 when absent)
    FoldBias,
}

impl ConstOp {
    pub fn name(&self) -> &'static str {
        match self {
            ConstOp::BnScale { .. } => "bn_scale",
            ConstOp::BnShift { .. } => "bn_shift",
            ConstOp::ScaleRows => "scale_rows",
            ConstOp::ScaleConvTransposeOut { .. } => "scale_out_channels",
            ConstOp::FoldBias => "fold_bias",
        }
    }
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
    /// A constant computed from other constants (its node name names it).
    Const(ConstOp),
    /// x, weight, [prologue scale, shift], [epilogue operands]
    Conv {
        geom: ConvGeom,
        fused: Fused,
    },
    /// x, weight `[cin, cout/groups, kh, kw]`, [prologue], [epilogue operands]
    ConvTranspose {
        geom: ConvGeom,
        output_padding: [usize; 2],
        fused: Fused,
    },
    /// x, gamma, beta, running_mean, running_var
    BatchNorm {
        eps: f64,
    },
    /// x, scale, shift: `act(x * scale + shift)` per channel (a BN that
    /// follows no conv, with the activation after it).
    Affine {
        act: Option<Activation>,
    },
    /// x, weight `[out, in]`, [prologue], [epilogue operands]
    Linear {
        out_features: usize,
        fused: Fused,
    },
    /// x
    Act(Activation),
    /// a, b
    Add,
    /// x, s, [residual]: `x * s`, where `s` has x's shape or is `[C, 1, 1]`,
    /// one factor per channel (squeeze-and-excitation's scale), then the
    /// epilogue: a residual add and activations only (never a prologue or
    /// bias), which `fuse_epilogue` moves in so that SE-ResNet's
    /// `relu(x · gate + shortcut)` is one pass over x. Not a `fused()` op:
    /// the passes that fold into convs' weights or prologues must not see it.
    Mul {
        fused: Fused,
    },
    /// x0, x1, ... along channels. `placed[i]`: operand i was written into
    /// its channel slice by its producer (concat_in_place), so it is not
    /// copied; empty means nothing placed.
    Concat {
        placed: Vec<bool>,
    },
    MaxPool(PoolGeom),
    AvgPool {
        geom: PoolGeom,
        count_include_pad: bool,
    },
    GlobalAvgPool,
    Flatten,
    Upsample {
        scale: [Scale; 2],
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
            Op::Const(c) => c.name(),
            Op::Affine { .. } => "affine",
            Op::Conv { .. } => "conv",
            Op::ConvTranspose { .. } => "conv_transpose",
            Op::BatchNorm { .. } => "batchnorm",
            Op::Linear { .. } => "linear",
            Op::Act(a) => a.name(),
            Op::Add => "add",
            Op::Mul { .. } => "mul",
            Op::Concat { .. } => "concat",
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

    /// A parameter from the weights file.
    pub fn is_weight(&self) -> bool {
        matches!(self, Op::Weight { .. })
    }

    /// A weight or a constant derived from weights.
    pub fn is_const(&self) -> bool {
        matches!(self, Op::Weight { .. } | Op::Const(_))
    }

    /// The fused prologue/epilogue of a conv, transposed conv or linear.
    pub fn fused(&self) -> Option<&Fused> {
        match self {
            Op::Conv { fused, .. } | Op::ConvTranspose { fused, .. } | Op::Linear { fused, .. } => {
                Some(fused)
            }
            _ => None,
        }
    }

    /// The epilogue steps an op runs on its result: a conv's, transposed
    /// conv's or linear's, and a `mul`'s.
    pub fn epilogue_mut(&mut self) -> Option<&mut Vec<EpilogueStep>> {
        match self {
            Op::Mul { fused } => Some(&mut fused.epilogue),
            op => op.fused_mut().map(|f| &mut f.epilogue),
        }
    }

    pub fn fused_mut(&mut self) -> Option<&mut Fused> {
        match self {
            Op::Conv { fused, .. } | Op::ConvTranspose { fused, .. } | Op::Linear { fused, .. } => {
                Some(fused)
            }
            _ => None,
        }
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
            Op::Conv { geom, fused } => {
                let mut v = conv(geom);
                fused.attrs(&mut v);
                v
            }
            Op::ConvTranspose {
                geom,
                output_padding,
                fused,
            } => {
                let mut v = conv(geom);
                if *output_padding != [0, 0] {
                    v.push(format!("output_padding={}", hw(*output_padding)));
                }
                fused.attrs(&mut v);
                v
            }
            Op::Const(ConstOp::BnScale { eps } | ConstOp::BnShift { eps }) => {
                vec![format!("eps={eps:e}")]
            }
            Op::Const(ConstOp::ScaleConvTransposeOut { groups }) if *groups != 1 => {
                vec![format!("groups={groups}")]
            }
            Op::Affine { act: Some(a) } => vec![format!("act={}", a.name())],
            Op::Mul { fused } => {
                let mut v = Vec::new();
                fused.attrs(&mut v);
                v
            }
            Op::Concat { placed } if placed.iter().any(|&p| p) => {
                let all = placed.iter().all(|&p| p);
                vec![if all {
                    "in_place".to_string()
                } else {
                    let idx: Vec<String> = placed
                        .iter()
                        .enumerate()
                        .filter(|(_, &p)| p)
                        .map(|(i, _)| i.to_string())
                        .collect();
                    format!("in_place=[{}]", idx.join(", "))
                }]
            }
            Op::BatchNorm { eps } => vec![format!("eps={eps:e}")],
            Op::Linear {
                out_features,
                fused,
            } => {
                let mut v = vec![format!("out={out_features}")];
                fused.attrs(&mut v);
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
                let axis = |s: &Scale| match s {
                    Scale::Whole(f) => f.to_string(),
                    Scale::Ratio { out, step } => format!("{out}(step {step})"),
                };
                let mut v = vec![format!("scale={}x{}", axis(&scale[0]), axis(&scale[1]))];
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
