//! The operator set of the language: each builtin's parameters and defaults.
//! Argument binding is shared with blocks (see `expand::bind_args`).

/// Default of a builtin parameter.
#[derive(Clone, Copy, Debug)]
pub enum ParamDefault {
    Required,
    Int(i64),
    Bool(bool),
    Float(f64),
    Str(&'static str),
    /// Defaults to the value of another parameter (pooling's stride = k).
    SameAs(&'static str),
}

#[derive(Clone, Copy, Debug)]
pub struct Param {
    pub name: &'static str,
    pub default: ParamDefault,
}

#[derive(Clone, Copy, Debug)]
pub struct Builtin {
    pub name: &'static str,
    pub params: &'static [Param],
    /// Takes any number of tensors (concat).
    pub variadic: bool,
    pub doc: &'static str,
}

const fn p(name: &'static str, default: ParamDefault) -> Param {
    Param { name, default }
}

use ParamDefault::*;

const X: Param = p("x", Required);

pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "conv",
        params: &[
            X,
            p("out", Required),
            p("k", Required),
            p("stride", Int(1)),
            p("pad", Int(0)),
            p("dilation", Int(1)),
            p("groups", Int(1)),
            p("bias", Bool(false)),
        ],
        variadic: false,
        doc: "2-d convolution (nn.Conv2d); weight [out, in/groups, k, k]",
    },
    Builtin {
        name: "conv_transpose",
        params: &[
            X,
            p("out", Required),
            p("k", Required),
            p("stride", Int(1)),
            p("pad", Int(0)),
            p("output_padding", Int(0)),
            p("dilation", Int(1)),
            p("groups", Int(1)),
            p("bias", Bool(false)),
        ],
        variadic: false,
        doc: "transposed convolution (nn.ConvTranspose2d); weight [in, out/groups, k, k]",
    },
    Builtin {
        name: "batchnorm",
        params: &[X, p("eps", Float(1e-5))],
        variadic: false,
        doc: "batch normalization in eval mode (nn.BatchNorm2d / 1d)",
    },
    Builtin {
        name: "linear",
        params: &[X, p("out", Required), p("bias", Bool(true))],
        variadic: false,
        doc: "fully connected layer (nn.Linear); weight [out, in]",
    },
    Builtin {
        name: "relu",
        params: &[X],
        variadic: false,
        doc: "max(x, 0)",
    },
    Builtin {
        name: "relu6",
        params: &[X],
        variadic: false,
        doc: "min(max(x, 0), 6)",
    },
    Builtin {
        name: "leaky_relu",
        params: &[X, p("slope", Float(0.01))],
        variadic: false,
        doc: "x if x >= 0 else slope * x",
    },
    Builtin {
        name: "sigmoid",
        params: &[X],
        variadic: false,
        doc: "1 / (1 + exp(-x))",
    },
    Builtin {
        name: "add",
        params: &[X, p("y", Required)],
        variadic: false,
        doc: "elementwise sum; `a + b` is the same",
    },
    Builtin {
        name: "mul",
        params: &[X, p("y", Required)],
        variadic: false,
        doc: "elementwise product, or x scaled per channel by a [C, 1, 1] y (squeeze-and-excitation); `a * b` is the same",
    },
    Builtin {
        name: "concat",
        params: &[X],
        variadic: true,
        doc: "concatenation along the channel axis (torch.cat(dim=1))",
    },
    Builtin {
        name: "maxpool",
        params: &[
            X,
            p("k", Required),
            p("stride", SameAs("k")),
            p("pad", Int(0)),
            p("dilation", Int(1)),
            p("ceil", Bool(false)),
        ],
        variadic: false,
        doc: "max pooling (nn.MaxPool2d)",
    },
    Builtin {
        name: "avgpool",
        params: &[
            X,
            p("k", Required),
            p("stride", SameAs("k")),
            p("pad", Int(0)),
            p("ceil", Bool(false)),
            p("count_include_pad", Bool(true)),
        ],
        variadic: false,
        doc: "average pooling (nn.AvgPool2d)",
    },
    Builtin {
        name: "global_avgpool",
        params: &[X],
        variadic: false,
        doc: "mean over H and W (nn.AdaptiveAvgPool2d(1))",
    },
    Builtin {
        name: "flatten",
        params: &[X],
        variadic: false,
        doc: "torch.flatten(x, 1)",
    },
    Builtin {
        name: "upsample",
        params: &[
            X,
            p("scale", Int(2)),
            p("mode", Str("nearest")),
            p("align_corners", Bool(false)),
            // The output's size instead of `scale`: an integer (square) or
            // a tensor (its height and width); 0 is unset.
            p("size", Int(0)),
        ],
        variadic: false,
        doc: "upsampling by `scale` or to `size`, mode \"nearest\" or \"bilinear\" (nn.Upsample)",
    },
    Builtin {
        name: "softmax",
        params: &[X],
        variadic: false,
        doc: "softmax over the channel axis (dim 1)",
    },
    Builtin {
        name: "identity",
        params: &[X],
        variadic: false,
        doc: "returns its input",
    },
    Builtin {
        name: "dropout",
        params: &[X, p("p", Float(0.5))],
        variadic: false,
        doc: "no-op at inference (nn.Dropout in eval mode)",
    },
    Builtin {
        name: "channel_pad",
        params: &[X, p("out", Required), p("stride", Int(1))],
        variadic: false,
        doc:
            "option-A shortcut: x[:, :, ::stride, ::stride] zero-padded to `out` channels, centred",
    },
];

pub fn find(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

/// PyTorch's argument names that name an operator's parameter here
/// (`nn.Conv2d(kernel_size=3, padding=1)`, `nn.MaxPool2d(ceil_mode=True)`):
/// accepted for it, where the operator has that parameter.
pub const PYTORCH_ALIASES: &[(&str, &str)] = &[
    ("kernel_size", "k"),
    ("padding", "pad"),
    ("ceil_mode", "ceil"),
    ("out_channels", "out"),
    ("out_features", "out"),
    ("scale_factor", "scale"),
    ("negative_slope", "slope"),
];

/// PyTorch's arguments that resnetc reads off the input instead.
pub const INFERRED: &[&str] = &["in_channels", "in_features", "num_features"];

/// The parameter that `name` means, PyTorch's spelling included.
pub fn canonical(name: &str) -> &str {
    PYTORCH_ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map_or(name, |(_, c)| c)
}
