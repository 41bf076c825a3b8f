//! A model's input signature: the batch axis (always symbolic), fixed
//! sizes, and sizes bound when the model is compiled (`H = 224`), and the
//! binding of a requested input size (`--input-size`, a `.npy`'s shape) to
//! them.

use super::ast::{Dim, Ident, ModelDef};
use super::diagnostic::Diag;
use super::source::Span;
use std::collections::HashMap;

/// Largest size of any input axis.
pub const MAX_SIZE: i64 = 1 << 24;

/// One symbolic axis of the input (`H = 224`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SizeParam {
    pub name: String,
    /// Axis of the per-image shape (0 is the channels).
    pub axis: usize,
    pub default: Option<usize>,
}

/// What a model's input declares, beyond the shape it was compiled at.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Signature {
    /// The symbolic axes, in order.
    pub sizes: Vec<SizeParam>,
}

impl Signature {
    /// Whether any axis is bound at compile time.
    pub fn is_sized(&self) -> bool {
        !self.sizes.is_empty()
    }

    /// The declared shape, batch excluded, with names where sizes are
    /// symbolic: `[3, H=224, W=224]`.
    pub fn show(&self, shape: &[usize]) -> String {
        let dims: Vec<String> = shape
            .iter()
            .enumerate()
            .map(
                |(axis, d)| match self.sizes.iter().find(|s| s.axis == axis) {
                    Some(s) => format!("{}={d}", s.name),
                    None => d.to_string(),
                },
            )
            .collect();
        format!("f32[N, {}]", dims.join(", "))
    }
}

/// The input as compiled: its per-image shape and the size names bound as
/// integers in the model body.
#[derive(Debug)]
pub struct Bound {
    pub input_name: Ident,
    pub shape: Vec<usize>,
    pub values: Vec<(Ident, i64)>,
    pub signature: Signature,
    /// The span of the input's type, for errors about the whole size.
    pub span: Span,
}

/// Binds `request` (sizes of the trailing axes: height and width of an
/// image input) or else the defaults to the model's input. A request that
/// is not `strict` (the size of a `.npy` given to `run`) binds only
/// symbolic axes: a fixed axis or a rank it does not fit is left to the
/// input's own shape check.
pub fn bind(model: &ModelDef, request: Option<&[usize]>, strict: bool) -> Result<Bound, Diag> {
    let [input] = model.inputs.as_slice() else {
        let span = model.inputs.get(1).map_or(model.name.span, |i| i.span);
        return Err(Diag::error(
            "res::model_inputs",
            span,
            "a model takes exactly one input tensor",
        )
        .label(format!("found {} inputs", model.inputs.len()))
        .help("write the model as `model name(x: f32[N, C, H, W]) { ... }`"));
    };
    let mut dims = input.dims.iter();
    let batch = match dims.next() {
        Some(Dim::Symbol(name, None)) => name,
        Some(Dim::Symbol(name, Some((_, span)))) => {
            return Err(Diag::error(
                "res::model_inputs",
                name.span.to(*span),
                "the batch axis has no default",
            )
            .label("the batch is given at run time")
            .help(format!("write just `{}`", name.name)))
        }
        Some(Dim::Fixed(_, span)) => {
            return Err(Diag::error(
                "res::model_inputs",
                *span,
                "the batch axis must be symbolic",
            )
            .label("expected a name such as `N`")
            .help("one build serves every batch size: write `f32[N, 3, 224, 224]`"))
        }
        None => unreachable!("grammar: at least one dim"),
    };
    let dims: Vec<&Dim> = dims.collect();
    if dims.is_empty() {
        return Err(Diag::error(
            "res::model_inputs",
            input.span,
            "the input needs at least one axis besides the batch",
        )
        .label("e.g. f32[N, 3, 224, 224]"));
    }
    let request = request.filter(|r| strict || dims.len() == r.len() + 1);
    if let Some(req) = request {
        if dims.len() != req.len() + 1 {
            let shown = match req {
                [h, w] => format!("{h}x{w}"),
                _ => format!("{req:?}"),
            };
            return Err(Diag::error(
                "res::input_size",
                input.span,
                format!("an input size of {shown} does not apply to this model's input"),
            )
            .label(format!("{} axes besides the batch", dims.len()))
            .help("a size HxW applies to an image input `f32[N, C, H, W]`"));
        }
    }
    let mut shape = Vec::new();
    let mut sizes: Vec<SizeParam> = Vec::new();
    let mut bound: HashMap<&str, (i64, Span)> = HashMap::new();
    let mut values = Vec::new();
    for (axis, d) in dims.iter().enumerate() {
        // The requested size of this axis, if any: requests cover the
        // axes after the channels.
        let wanted = request.and_then(|r| axis.checked_sub(1).map(|i| r[i] as i64));
        let v = match d {
            Dim::Fixed(v, span) => {
                check_range(*v, *span)?;
                if let Some(w) = wanted.filter(|w| strict && w != v) {
                    return Err(Diag::error(
                        "res::input_size",
                        *span,
                        format!("this model's input {} is fixed at {v}, not {w}", axis_name(axis, dims.len())),
                    )
                    .label(format!("fixed at {v}"))
                    .help(format!(
                        "give the model's input a size name instead, e.g. `{} = {v}`, to compile it at other sizes",
                        default_name(axis, dims.len())
                    )));
                }
                *v
            }
            Dim::Symbol(name, default) => {
                if axis == 0 {
                    return Err(Diag::error(
                        "res::model_inputs",
                        name.span,
                        "the channel axis must be a number",
                    )
                    .label("expected a number")
                    .help("channels are static; height and width may be named, e.g. `f32[N, 3, H = 224, W = 224]`"));
                }
                if name.name == batch.name {
                    return Err(Diag::error(
                        "res::model_inputs",
                        name.span,
                        format!("`{}` names the batch axis", name.name),
                    )
                    .label("used again here")
                    .also(batch.span, "the batch")
                    .help("give each size its own name, e.g. `f32[N, 3, H, W]`"));
                }
                if let Some((v, span)) = default {
                    check_range(*v, *span)?;
                }
                let v = match (wanted, default, bound.get(name.name.as_str())) {
                    (Some(w), _, _) => w,
                    (None, Some((v, _)), _) => *v,
                    (None, None, Some((v, _))) => *v,
                    (None, None, None) => {
                        return Err(Diag::error(
                            "res::input_size",
                            name.span,
                            format!("the input size `{}` has no value", name.name),
                        )
                        .label("no default")
                        .help(format!(
                            "pass --input-size HxW, or give it a default: `{} = 224`",
                            name.name
                        )))
                    }
                };
                check_range(v, name.span)?;
                match bound.get(name.name.as_str()) {
                    Some((first, first_span)) if *first != v => {
                        return Err(Diag::error(
                            "res::input_size",
                            name.span,
                            format!(
                                "`{}` is {first} on one axis and {v} on another",
                                name.name
                            ),
                        )
                        .label(format!("{v} here"))
                        .also(*first_span, format!("{first} here"))
                        .help(
                            "one name is one size: the input must be square, or the axes need two names",
                        ))
                    }
                    Some(_) => {}
                    None => {
                        bound.insert(&name.name, (v, name.span));
                        values.push((name.clone(), v));
                    }
                }
                sizes.push(SizeParam {
                    name: name.name.clone(),
                    axis,
                    default: default.map(|(d, _)| d as usize),
                });
                v
            }
        };
        shape.push(v as usize);
    }
    crate::ir::shape::infer(&crate::ir::op::Op::Identity, &[&shape])
        .map_err(|e| Diag::error("res::bad_size", input.span, e.message).label("this input"))?;
    Ok(Bound {
        input_name: input.name.clone(),
        shape,
        values,
        signature: Signature { sizes },
        span: input.span,
    })
}

fn check_range(v: i64, span: Span) -> Result<(), Diag> {
    if v <= 0 || v > MAX_SIZE {
        return Err(
            Diag::error("res::bad_size", span, "input sizes must be positive")
                .label(format!("found {v}"))
                .help("sizes are from 1 to 16777216"),
        );
    }
    Ok(())
}

fn axis_name(axis: usize, rank: usize) -> String {
    match (rank, axis) {
        (3, 1) => "height".into(),
        (3, 2) => "width".into(),
        _ => format!("axis {}", axis + 1),
    }
}

fn default_name(axis: usize, rank: usize) -> String {
    match (rank, axis) {
        (3, 1) => "H".into(),
        (3, 2) => "W".into(),
        _ => format!("S{axis}"),
    }
}

/// `--input-size`'s value: `HxW`, or `S` for a square `SxS`.
pub fn parse_size(text: &str) -> Result<Vec<usize>, String> {
    let parts: Vec<&str> = text.split(['x', 'X']).collect();
    let sizes: Result<Vec<usize>, _> = parts.iter().map(|p| p.trim().parse::<usize>()).collect();
    match sizes {
        Ok(s) if s.iter().all(|&v| v >= 1 && v as i64 <= MAX_SIZE) => Ok(match s.as_slice() {
            [side] => vec![*side, *side],
            [_, _] => s,
            _ => return Err(format!("`{text}` is not HxW, such as 288x352")),
        }),
        Ok(_) => Err(format!("sizes in `{text}` must be from 1 to {MAX_SIZE}")),
        Err(_) => Err(format!("`{text}` is not HxW, such as 288x352")),
    }
}

/// `288x352`.
pub fn show_size(size: &[usize]) -> String {
    size.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join("x")
}
