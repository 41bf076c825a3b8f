//! ONNX nodes → the `.res` language's operators, with every shape known.
//!
//! The lifter walks the nodes in file order (ONNX requires topological
//! order), keeps a value per ONNX tensor name — an activation, a constant
//! or a shape vector that may hold the (free) batch size — and folds what
//! exporters emit around the real layers: `Shape`/`Gather`/`Unsqueeze`/
//! `Concat` feeding a `Reshape`, `Constant`, `Identity`, `Dropout`, a
//! `Pad` in front of a conv, `MatMul`+`Add` as a linear layer. A node it
//! cannot translate is recorded with a reason, and lifting goes on so that
//! one error lists them all.

use super::error::{ImportError, Unsupported};
use super::onnx_read::{Attr, ConstData, ConstTensor, DimDecl, Node, OnnxModel};
use crate::tensor::Tensor;
use std::collections::HashMap;

/// An operator of the `.res` language with its arguments.
#[derive(Clone, Debug, PartialEq)]
pub enum LOp {
    Input,
    Conv {
        out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        dilation: usize,
        groups: usize,
        bias: bool,
    },
    ConvTranspose {
        out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        output_padding: usize,
        dilation: usize,
        groups: usize,
        bias: bool,
    },
    BatchNorm {
        eps: f32,
    },
    Linear {
        out: usize,
        bias: bool,
    },
    Relu,
    Relu6,
    LeakyRelu(f32),
    Sigmoid,
    Add,
    Mul,
    Concat,
    MaxPool {
        k: usize,
        stride: usize,
        pad: usize,
        dilation: usize,
        ceil: bool,
    },
    AvgPool {
        k: usize,
        stride: usize,
        pad: usize,
        ceil: bool,
        count_include_pad: bool,
    },
    GlobalAvgPool,
    Flatten,
    Upsample {
        scale: usize,
        bilinear: bool,
        align_corners: bool,
    },
    Softmax,
    /// Option-A shortcut: every `stride`-th pixel, zero channels on both sides.
    ChannelPad {
        out: usize,
        stride: usize,
    },
}

impl LOp {
    /// The weights the operator declares, in the order of `LNode::weights`.
    pub fn weight_suffixes(&self) -> &'static [&'static str] {
        match self {
            LOp::Conv { bias: true, .. }
            | LOp::ConvTranspose { bias: true, .. }
            | LOp::Linear { bias: true, .. } => &["weight", "bias"],
            LOp::Conv { .. } | LOp::ConvTranspose { .. } | LOp::Linear { .. } => &["weight"],
            LOp::BatchNorm { .. } => &["weight", "bias", "running_mean", "running_var"],
            _ => &[],
        }
    }

    pub fn has_params(&self) -> bool {
        !self.weight_suffixes().is_empty()
    }
}

/// One lifted operator.
#[derive(Clone, Debug)]
pub struct LNode {
    pub op: LOp,
    /// Operand node indices (activations only; weights are in `weights`).
    pub inputs: Vec<usize>,
    /// Output shape without the batch axis.
    pub shape: Vec<usize>,
    /// The ONNX node's name (for messages and module paths).
    pub onnx_name: String,
    /// The module the exporter says the node belongs to (dynamo's metadata).
    pub scope: Option<String>,
    /// The ONNX initializer names the weights came from, where they had one.
    pub weight_names: Vec<Option<String>>,
    pub weights: Vec<Tensor>,
}

#[derive(Clone, Debug)]
pub struct Lifted {
    pub nodes: Vec<LNode>,
    pub output: usize,
    pub graph_name: String,
}

/// A shape-vector entry: a known integer or the batch size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dim {
    Known(i64),
    Batch,
}

#[derive(Clone, Debug)]
enum Val {
    Act(usize),
    /// An activation zero-padded by a `Pad` node: `[top, left, bottom, right]`.
    Padded(usize, [usize; 4]),
    /// An activation sliced to every `s`-th row and column (`x[:, :, ::s, ::s]`).
    Strided(usize, usize),
    Float(ConstTensor, Option<String>),
    /// Integer tensor (rank 0 or 1 for shape arithmetic), possibly holding the batch.
    Ints(Vec<Dim>, Vec<usize>),
    /// The output of a node that could not be lifted (already reported).
    Poison,
}

type R<T> = Result<T, String>;

struct Lifter<'a> {
    m: &'a OnnxModel,
    vals: HashMap<String, Val>,
    nodes: Vec<LNode>,
    /// How many nodes read each ONNX tensor name (graph output counts one).
    uses: HashMap<String, usize>,
    /// Declared batch size where the file fixes it (folded like the batch).
    fixed_batch: Option<i64>,
}

/// Input `k` of `n`, or `""` (a missing optional input) past the end.
fn inp(n: &Node, k: usize) -> &str {
    n.inputs.get(k).map(String::as_str).unwrap_or("")
}

fn attr_i(n: &Node, name: &str, default: i64) -> R<i64> {
    match n.attrs.get(name) {
        None => Ok(default),
        Some(Attr::Int(v)) => Ok(*v),
        Some(_) => Err(format!("attribute `{name}` is not an integer")),
    }
}

fn attr_f(n: &Node, name: &str, default: f32) -> R<f32> {
    match n.attrs.get(name) {
        None => Ok(default),
        Some(Attr::Float(v)) => Ok(*v),
        Some(Attr::Int(v)) => Ok(*v as f32),
        Some(_) => Err(format!("attribute `{name}` is not a number")),
    }
}

fn attr_s<'n>(n: &'n Node, name: &str, default: &'n str) -> R<&'n str> {
    match n.attrs.get(name) {
        None => Ok(default),
        Some(Attr::Str(v)) => Ok(v),
        Some(_) => Err(format!("attribute `{name}` is not a string")),
    }
}

fn attr_is(n: &Node, name: &str) -> R<Option<Vec<i64>>> {
    match n.attrs.get(name) {
        None => Ok(None),
        Some(Attr::Ints(v)) => Ok(Some(v.clone())),
        Some(_) => Err(format!("attribute `{name}` is not a list of integers")),
    }
}

fn to_usize(v: i64, what: &str) -> R<usize> {
    if (0..=1 << 24).contains(&v) {
        Ok(v as usize)
    } else {
        Err(format!("{what} {v} is out of range"))
    }
}

/// One value for both spatial axes, or an error naming the attribute.
fn square(v: &[i64], what: &str) -> R<usize> {
    match v {
        [a] => to_usize(*a, what),
        [a, b] if a == b => to_usize(*a, what),
        [a, b] => Err(format!(
            "{what} {a}x{b} differs between height and width, which .res cannot say (one `{what}` for both axes)"
        )),
        _ => Err(format!("{what} {v:?} is not 2-d")),
    }
}

/// Symmetric 2-d pads `[top, left, bottom, right]` as one number.
fn symmetric_pad(p: [usize; 4]) -> R<usize> {
    if p.iter().all(|&v| v == p[0]) {
        Ok(p[0])
    } else {
        Err(format!(
            "padding {p:?} (top, left, bottom, right) is not the same on every side, which .res cannot say (one `pad` for all sides)"
        ))
    }
}

fn pool_out(h: usize, k: usize, s: usize, p: usize, d: usize, ceil: bool) -> R<usize> {
    let ext = d * (k - 1) + 1;
    if ext > h + 2 * p {
        return Err(format!(
            "the window ({ext}) is larger than the padded input ({})",
            h + 2 * p
        ));
    }
    let span = h + 2 * p - ext;
    let mut o = if ceil { span.div_ceil(s) } else { span / s } + 1;
    if ceil && (o - 1) * s >= h + p {
        o -= 1;
    }
    Ok(o)
}

impl Lifter<'_> {
    fn val(&self, name: &str) -> R<Val> {
        if name.is_empty() {
            return Err("an optional input is missing".into());
        }
        if let Some(v) = self.vals.get(name) {
            return Ok(v.clone());
        }
        if let Some(t) = self.m.initializers.get(name) {
            return Ok(match &t.data {
                ConstData::F32(_) => Val::Float(t.clone(), Some(name.to_string())),
                ConstData::I64(v) => {
                    Val::Ints(v.iter().map(|&x| Dim::Known(x)).collect(), t.dims.clone())
                }
            });
        }
        Err(format!("input `{name}` is not produced by any node"))
    }

    fn act(&self, name: &str) -> R<usize> {
        match self.val(name)? {
            Val::Act(a) => Ok(a),
            Val::Padded(..) => Err(format!(
                "`{name}` is zero-padded by a Pad node that does not feed a Conv or an AveragePool; .res has no separate padding operator"
            )),
            Val::Strided(..) => Err(format!(
                "`{name}` is a strided slice that is not zero-padded along the channels (channel_pad); .res has no slicing operator"
            )),
            Val::Float(..) | Val::Ints(..) => Err(format!(
                "input `{name}` is a constant where .res needs an activation"
            )),
            Val::Poison => Err(String::new()),
        }
    }

    fn floats(&self, name: &str) -> R<(ConstTensor, Option<String>)> {
        match self.val(name)? {
            Val::Float(t, n) => Ok((t, n)),
            Val::Ints(v, dims) => Ok((
                ConstTensor {
                    dims,
                    data: ConstData::F32(
                        v.iter()
                            .map(|d| match d {
                                Dim::Known(x) => Ok(*x as f32),
                                Dim::Batch => Err("depends on the batch size".to_string()),
                            })
                            .collect::<R<_>>()?,
                    ),
                },
                None,
            )),
            Val::Poison => Err(String::new()),
            _ => Err(format!(
                "input `{name}` must be a constant (an initializer or a folded value)"
            )),
        }
    }

    fn ints(&self, name: &str) -> R<(Vec<Dim>, Vec<usize>)> {
        match self.val(name)? {
            Val::Ints(v, d) => Ok((v, d)),
            Val::Float(t, _) => match t.data {
                ConstData::F32(v) => {
                    Ok((v.iter().map(|&x| Dim::Known(x as i64)).collect(), t.dims))
                }
                ConstData::I64(v) => Ok((v.iter().map(|&x| Dim::Known(x)).collect(), t.dims)),
            },
            Val::Poison => Err(String::new()),
            _ => Err(format!("input `{name}` must be a constant integer tensor")),
        }
    }

    fn known_ints(&self, name: &str) -> R<Vec<i64>> {
        self.ints(name)?
            .0
            .into_iter()
            .map(|d| match d {
                Dim::Known(x) => Ok(x),
                Dim::Batch => Err(format!("`{name}` depends on the batch size")),
            })
            .collect()
    }

    fn shape(&self, a: usize) -> &[usize] {
        &self.nodes[a].shape
    }

    fn push(
        &mut self,
        n: &Node,
        op: LOp,
        inputs: Vec<usize>,
        shape: Vec<usize>,
        w: Vec<(Tensor, Option<String>)>,
    ) -> usize {
        let (weights, weight_names) = w.into_iter().unzip();
        self.nodes.push(LNode {
            op,
            inputs,
            shape,
            onnx_name: n.name.clone(),
            scope: n.scope.clone(),
            weight_names,
            weights,
        });
        self.nodes.len() - 1
    }

    fn set(&mut self, n: &Node, v: Val) {
        if let Some(o) = n.outputs.first() {
            self.vals.insert(o.clone(), v);
        }
    }

    /// The image input `[C, H, W]` of node `n`'s first operand.
    fn image(&self, a: usize) -> R<(usize, usize, usize)> {
        match *self.shape(a) {
            [c, h, w] => Ok((c, h, w)),
            ref s => Err(format!(
                "needs an image [N, C, H, W], its input is [N, {}]",
                join(s)
            )),
        }
    }

    fn lift(&mut self, n: &Node) -> R<()> {
        if !(n.domain.is_empty() || n.domain == "ai.onnx") {
            return Err(format!("operator domain `{}` is not ONNX's own", n.domain));
        }
        // Outputs besides the first (BN's running stats in training, MaxPool's
        // indices, Dropout's mask) must be unused.
        for extra in n.outputs.iter().skip(1) {
            if !extra.is_empty() && self.uses.get(extra).copied().unwrap_or(0) > 0 {
                return Err(format!(
                    "its output `{extra}` is used, which .res has no operator for"
                ));
            }
        }
        let input = |k: usize| n.inputs.get(k).map(String::as_str).unwrap_or("");
        match n.op_type.as_str() {
            "Identity" | "Dropout" => {
                let v = self.val(input(0))?;
                if n.op_type == "Dropout" && n.inputs.len() > 2 && !input(2).is_empty() {
                    let t = self.known_ints(input(2))?;
                    if t.iter().any(|&x| x != 0) {
                        return Err("training_mode is on; export the model in eval mode".into());
                    }
                }
                self.set(n, v);
            }
            "Cast" => {
                let v = self.val(input(0))?;
                let to = attr_i(n, "to", 1)?;
                // Integer and float constants convert; activations stay.
                let v = match v {
                    Val::Float(..) if to == 7 || to == 6 => {
                        let (d, dims) = self.ints(input(0))?;
                        Val::Ints(d, dims)
                    }
                    Val::Ints(..) if to == 1 => Val::Float(self.floats(input(0))?.0, None),
                    other => other,
                };
                self.set(n, v);
            }
            "Constant" => {
                let v = if let Some(Attr::Tensor(t)) = n.attrs.get("value") {
                    match &t.data {
                        ConstData::F32(_) => Val::Float(t.clone(), None),
                        ConstData::I64(v) => Val::Ints(v.iter().map(|&x| Dim::Known(x)).collect(), t.dims.clone()),
                    }
                } else if let Some(Attr::Int(i)) = n.attrs.get("value_int") {
                    Val::Ints(vec![Dim::Known(*i)], vec![])
                } else if let Some(Attr::Ints(v)) = n.attrs.get("value_ints") {
                    Val::Ints(v.iter().map(|&x| Dim::Known(x)).collect(), vec![v.len()])
                } else if let Some(Attr::Float(f)) = n.attrs.get("value_float") {
                    Val::Float(ConstTensor { dims: vec![], data: ConstData::F32(vec![*f]) }, None)
                } else if let Some(Attr::Floats(v)) = n.attrs.get("value_floats") {
                    Val::Float(ConstTensor { dims: vec![v.len()], data: ConstData::F32(v.clone()) }, None)
                } else {
                    return Err("a Constant without a tensor, integer or float value".into());
                };
                self.set(n, v);
            }
            "Shape" => {
                let a = self.act(input(0))?;
                let mut full = vec![Dim::Batch];
                full.extend(self.shape(a).iter().map(|&d| Dim::Known(d as i64)));
                let r = full.len() as i64;
                let norm = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let start = norm(attr_i(n, "start", 0)?);
                let end = norm(attr_i(n, "end", r)?);
                let v: Vec<Dim> = full.get(start..end.max(start)).unwrap_or(&[]).to_vec();
                let len = v.len();
                self.set(n, Val::Ints(v, vec![len]));
            }
            "Gather" => {
                let (data, dims) = self.ints(input(0))?;
                let idx = self.known_ints(input(1))?;
                let (_, idims) = self.ints(input(1))?;
                if dims.len() != 1 || attr_i(n, "axis", 0)? != 0 {
                    return Err("Gather is folded only on 1-d shape vectors".into());
                }
                let len = data.len() as i64;
                let out: Vec<Dim> = idx
                    .iter()
                    .map(|&i| {
                        let j = if i < 0 { i + len } else { i };
                        data.get(j as usize).copied().ok_or_else(|| format!("index {i} is out of range"))
                    })
                    .collect::<R<_>>()?;
                self.set(n, Val::Ints(out, idims));
            }
            "Unsqueeze" | "Squeeze" => {
                let v = self.val(input(0))?;
                match v {
                    Val::Ints(d, _) => {
                        let len = d.len();
                        let dims = if n.op_type == "Unsqueeze" { vec![len] } else if len == 1 { vec![] } else { vec![len] };
                        self.set(n, Val::Ints(d, dims));
                    }
                    Val::Float(t, _) => {
                        let len = t.len();
                        let dims = if n.op_type == "Squeeze" && len == 1 { vec![] } else { vec![len] };
                        self.set(n, Val::Float(ConstTensor { dims, data: t.data }, None));
                    }
                    Val::Poison => self.set(n, Val::Poison),
                    _ => return Err(format!("{} of an activation: .res has no reshaping operator besides flatten", n.op_type)),
                }
            }
            "Concat" => {
                let vals: Vec<Val> = n.inputs.iter().map(|i| self.val(i)).collect::<R<_>>()?;
                if vals.iter().all(|v| matches!(v, Val::Ints(..))) {
                    let mut out = Vec::new();
                    for v in vals {
                        if let Val::Ints(d, _) = v {
                            out.extend(d);
                        }
                    }
                    let len = out.len();
                    self.set(n, Val::Ints(out, vec![len]));
                    return Ok(());
                }
                let acts: Vec<usize> = n.inputs.iter().map(|i| self.act(i)).collect::<R<_>>()?;
                let rank = self.shape(acts[0]).len() as i64 + 1;
                let axis = attr_i(n, "axis", 1)?;
                if axis != 1 && axis != 1 - rank {
                    return Err(format!("concatenates along axis {axis}; .res concatenates channels (axis 1)"));
                }
                if acts.len() == 1 {
                    self.set(n, Val::Act(acts[0]));
                    return Ok(());
                }
                let s0 = self.shape(acts[0]).to_vec();
                let mut c = 0;
                for &a in &acts {
                    let s = self.shape(a);
                    if s.len() != s0.len() || s[1..] != s0[1..] {
                        return Err(format!("inputs [N, {}] and [N, {}] differ beyond the channels", join(&s0), join(s)));
                    }
                    c += s[0];
                }
                let mut shape = s0;
                shape[0] = c;
                let id = self.push(n, LOp::Concat, acts, shape, vec![]);
                self.set(n, Val::Act(id));
            }
            "Slice" if matches!(self.val(input(0))?, Val::Act(_)) => {
                let a = self.act(input(0))?;
                let (_, h, w) = self.image(a)?;
                let starts = self.known_ints(input(1))?;
                let ends = self.known_ints(input(2))?;
                let axes = if n.inputs.len() > 3 && !input(3).is_empty() { self.known_ints(input(3))? } else { vec![0, 1, 2, 3] };
                let steps = if n.inputs.len() > 4 && !input(4).is_empty() { self.known_ints(input(4))? } else { vec![1; axes.len()] };
                let axes: Vec<i64> = axes.iter().map(|&x| if x < 0 { x + 4 } else { x }).collect();
                let whole = |e: i64, size: usize| e >= size as i64;
                let ok = axes == [2, 3]
                    && starts == [0, 0]
                    && ends.len() == 2
                    && whole(ends[0], h)
                    && whole(ends[1], w)
                    && steps.len() == 2
                    && steps[0] == steps[1]
                    && steps[0] >= 1;
                if !ok {
                    return Err("a Slice of an activation other than x[:, :, ::s, ::s] in front of a channel Pad; .res has no slicing operator".into());
                }
                self.set(n, Val::Strided(a, steps[0] as usize));
            }
            "Slice" => {
                // Shape arithmetic, e.g. PyTorch's F.pad reversing its pad list.
                let (d, dims) = self.ints(input(0))?;
                if dims.is_empty() || dims.len() > 2 {
                    return Err("Slice is folded only on 1-d and 2-d shape tensors; .res has no slicing operator".into());
                }
                let starts = self.known_ints(input(1))?;
                let ends = self.known_ints(input(2))?;
                let axes = if !input(3).is_empty() { self.known_ints(input(3))? } else { (0..starts.len() as i64).collect() };
                let steps = if !input(4).is_empty() { self.known_ints(input(4))? } else { vec![1; starts.len()] };
                if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
                    return Err("Slice's starts, ends, axes and steps differ in length".into());
                }
                let rank = dims.len() as i64;
                // The indices kept along each axis (ONNX's clamping rules).
                let mut keep: Vec<Vec<usize>> = dims.iter().map(|&n| (0..n).collect()).collect();
                for (((&st, &en), &ax), &step) in starts.iter().zip(&ends).zip(&axes).zip(&steps) {
                    let ax = if ax < 0 { ax + rank } else { ax };
                    if !(0..rank).contains(&ax) || step == 0 {
                        return Err(format!("Slice axis {ax} or step {step} is invalid"));
                    }
                    let n = dims[ax as usize] as i64;
                    let norm = |v: i64| if v < 0 { v.saturating_add(n) } else { v };
                    let (mut i, e) = if step > 0 {
                        (norm(st).clamp(0, n), norm(en).clamp(0, n))
                    } else {
                        (norm(st).clamp(-1, n - 1), norm(en).clamp(-1, n - 1))
                    };
                    let mut v = Vec::new();
                    while (step > 0 && i < e) || (step < 0 && i > e) {
                        v.push(i as usize);
                        match i.checked_add(step) {
                            Some(next) => i = next,
                            None => break,
                        }
                    }
                    keep[ax as usize] = v;
                }
                let (out, out_dims) = if dims.len() == 1 {
                    (keep[0].iter().map(|&i| d[i]).collect::<Vec<_>>(), vec![keep[0].len()])
                } else {
                    let cols = dims[1];
                    let v = keep[0].iter().flat_map(|&r| keep[1].iter().map(move |&c| r * cols + c)).map(|i| d[i]).collect();
                    (v, vec![keep[0].len(), keep[1].len()])
                };
                self.set(n, Val::Ints(out, out_dims));
            }
            "Transpose" => {
                let perm = attr_is(n, "perm")?.unwrap_or_else(|| vec![1, 0]);
                if perm != [1, 0] {
                    return Err("only 2-d constant transposes are folded; .res has no transpose operator".into());
                }
                match self.val(input(0))? {
                    Val::Ints(d, dims) if dims.len() == 2 => {
                        let (r, c) = (dims[0], dims[1]);
                        let v = (0..r * c).map(|i| d[(i % r) * c + i / r]).collect();
                        self.set(n, Val::Ints(v, vec![c, r]));
                    }
                    _ => {
                        let (t, _) = self.floats(input(0))?;
                        if t.dims.len() != 2 {
                            return Err("only 2-d constant transposes are folded; .res has no transpose operator".into());
                        }
                        self.set(n, Val::Float(transpose(&t), None));
                    }
                }
            }
            "ConstantOfShape" => {
                let shape = self.known_ints(input(0))?;
                let dims: Vec<usize> = shape.iter().map(|&d| to_usize(d, "size")).collect::<R<_>>()?;
                let count = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).filter(|&c| c <= 1 << 16);
                let count = count.ok_or("ConstantOfShape is folded only for small shape tensors")?;
                let v = match n.attrs.get("value") {
                    Some(Attr::Tensor(t)) => t.clone(),
                    _ => ConstTensor { dims: vec![1], data: ConstData::F32(vec![0.0]) },
                };
                self.set(n, match v.data {
                    ConstData::I64(x) => Val::Ints(vec![Dim::Known(x.first().copied().unwrap_or(0)); count], dims),
                    ConstData::F32(x) => Val::Float(ConstTensor { dims, data: ConstData::F32(vec![x.first().copied().unwrap_or(0.0); count]) }, None),
                });
            }
            "Reshape" | "Flatten" => self.reshape(n)?,
            "Conv" => self.conv(n)?,
            "ConvTranspose" => self.conv_transpose(n)?,
            "BatchNormalization" => {
                let a = self.act(input(0))?;
                if attr_i(n, "training_mode", 0)? != 0 {
                    return Err("training_mode is on; export the model in eval mode (model.eval())".into());
                }
                let c = self.shape(a)[0];
                let mut w = Vec::new();
                for k in 1..5 {
                    let (t, name) = self.floats(input(k))?;
                    if t.len() != c {
                        return Err(format!("parameter `{}` has {} values for {c} channels", input(k), t.len()));
                    }
                    w.push((as_tensor(&t, &[c]), name));
                }
                let eps = attr_f(n, "epsilon", 1e-5)?;
                if !(eps > 0.0 && eps.is_finite()) {
                    return Err(format!("epsilon {eps} is not positive"));
                }
                let shape = self.shape(a).to_vec();
                let id = self.push(n, LOp::BatchNorm { eps }, vec![a], shape, w);
                self.set(n, Val::Act(id));
            }
            "Relu" | "Sigmoid" | "LeakyRelu" | "Softmax" | "Clip" => {
                let a = self.act(input(0))?;
                let op = match n.op_type.as_str() {
                    "Relu" => LOp::Relu,
                    "Sigmoid" => LOp::Sigmoid,
                    "LeakyRelu" => {
                        let alpha = attr_f(n, "alpha", 0.01)?;
                        if !alpha.is_finite() {
                            return Err(format!("alpha {alpha} is not a number"));
                        }
                        LOp::LeakyRelu(alpha)
                    }
                    "Softmax" => {
                        let rank = self.shape(a).len() as i64 + 1;
                        let default = if self.m.opset >= 13 { -1 } else { 1 };
                        let axis = attr_i(n, "axis", default)?;
                        let axis = if axis < 0 { axis + rank } else { axis };
                        let ok = axis == 1 && (self.m.opset >= 13 || rank == 2 || self.shape(a)[1..].iter().all(|&d| d == 1));
                        if !ok {
                            return Err(format!("softmax over axis {axis}; .res's softmax is over the channels (axis 1)"));
                        }
                        LOp::Softmax
                    }
                    _ => {
                        let (lo, hi) = if self.m.opset >= 11 {
                            let get = |k: usize| -> R<Option<f32>> {
                                if n.inputs.len() > k && !input(k).is_empty() {
                                    let (t, _) = self.floats(input(k))?;
                                    match t.data {
                                        ConstData::F32(v) if v.len() == 1 => Ok(Some(v[0])),
                                        _ => Err("Clip bounds must be scalars".into()),
                                    }
                                } else {
                                    Ok(None)
                                }
                            };
                            (get(1)?, get(2)?)
                        } else {
                            (Some(attr_f(n, "min", f32::MIN)?), Some(attr_f(n, "max", f32::MAX)?))
                        };
                        match (lo, hi) {
                            (Some(l), Some(h)) if l == 0.0 && h == 6.0 => LOp::Relu6,
                            (Some(0.0), None) => LOp::Relu,
                            (Some(l), Some(h)) if l == 0.0 && h >= f32::MAX => LOp::Relu,
                            _ => return Err(format!("Clip to [{lo:?}, {hi:?}]: .res has relu (0, inf) and relu6 (0, 6)")),
                        }
                    }
                };
                let shape = self.shape(a).to_vec();
                let id = self.push(n, op, vec![a], shape, vec![]);
                self.set(n, Val::Act(id));
            }
            "Add" | "Mul" | "Sub" | "Div" => self.binary(n)?,
            "MaxPool" | "AveragePool" => self.pool(n)?,
            "GlobalAveragePool" | "ReduceMean" => {
                let a = self.act(input(0))?;
                let (c, _, _) = self.image(a)?;
                let mut keep = true;
                if n.op_type == "ReduceMean" {
                    let axes = match attr_is(n, "axes")? {
                        Some(v) => v,
                        None if n.inputs.len() > 1 => self.known_ints(input(1))?,
                        None => vec![],
                    };
                    let axes: Vec<i64> = axes.iter().map(|&x| if x < 0 { x + 4 } else { x }).collect();
                    if axes != [2, 3] && axes != [3, 2] {
                        return Err(format!("ReduceMean over axes {axes:?}; .res averages over height and width only (global_avgpool)"));
                    }
                    keep = attr_i(n, "keepdims", 1)? != 0;
                }
                let id = self.push(n, LOp::GlobalAvgPool, vec![a], vec![c, 1, 1], vec![]);
                let id = if keep { id } else { self.push(n, LOp::Flatten, vec![id], vec![c], vec![]) };
                self.set(n, Val::Act(id));
            }
            "Gemm" | "MatMul" => self.linear(n)?,
            "Resize" | "Upsample" => self.resize(n)?,
            "Pad" => {
                let (a, stride) = match self.val(input(0))? {
                    Val::Strided(a, st) => (a, st),
                    _ => (self.act_or_padded(input(0))?.0, 1),
                };
                let mode = attr_s(n, "mode", "constant")?;
                if mode != "constant" {
                    return Err(format!("{mode} padding; .res pads with zeros only"));
                }
                let pads = if self.m.opset >= 11 { self.known_ints(input(1))? } else { attr_is(n, "pads")?.unwrap_or_default() };
                let value = if self.m.opset >= 11 {
                    if n.inputs.len() > 2 && !input(2).is_empty() {
                        match self.floats(input(2))?.0.data {
                            ConstData::F32(v) => v.first().copied().unwrap_or(0.0),
                            ConstData::I64(v) => v.first().copied().unwrap_or(0) as f32,
                        }
                    } else {
                        0.0
                    }
                } else {
                    attr_f(n, "value", 0.0)?
                };
                if value != 0.0 {
                    return Err(format!("padding with {value}; .res pads with zeros only"));
                }
                if n.inputs.len() > 3 && !input(3).is_empty() {
                    return Err("Pad with axes is not supported".into());
                }
                let (c, h, w) = self.image(a)?;
                // [n0, c0, t, l, n1, c1, b, r]
                if pads.len() == 8 && pads.iter().all(|&v| v >= 0) && pads[0] == 0 && pads[4] == 0 && pads[2..4] == [0, 0] && pads[6..8] == [0, 0] && (pads[1] > 0 || pads[5] > 0 || stride > 1) && !matches!(self.val(input(0))?, Val::Padded(..)) {
                    let (before, after) = (pads[1] as usize, pads[5] as usize);
                    let out = c + before + after;
                    if before != (out - c) / 2 {
                        return Err(format!("pads {before} channels before and {after} after; .res's channel_pad puts the smaller half first"));
                    }
                    let id = self.push(n, LOp::ChannelPad { out, stride }, vec![a], vec![out, h.div_ceil(stride), w.div_ceil(stride)], vec![]);
                    self.set(n, Val::Act(id));
                    return Ok(());
                }
                if stride > 1 {
                    return Err("a strided Slice followed by spatial padding; .res has no slicing operator".into());
                }
                if pads.len() != 8 || pads[0] != 0 || pads[1] != 0 || pads[4] != 0 || pads[5] != 0 {
                    return Err(format!("pads {pads:?} pad other axes than height and width"));
                }
                let p = [pads[2], pads[3], pads[6], pads[7]];
                let mut q = [0usize; 4];
                for (d, s) in q.iter_mut().zip(p) {
                    *d = to_usize(s, "pad")?;
                }
                let (a, q) = match self.val(input(0))? {
                    Val::Padded(b, prev) => (b, [prev[0] + q[0], prev[1] + q[1], prev[2] + q[2], prev[3] + q[3]]),
                    _ => (a, q),
                };
                // U-Nets pad the upsampled map to the skip's size: nothing
                // at all when the sizes already agree.
                self.set(n, if q == [0; 4] { Val::Act(a) } else { Val::Padded(a, q) });
            }
            other => {
                return Err(match other {
                    "BatchNorm" | "InstanceNormalization" | "LayerNormalization" | "GroupNormalization" => {
                        "no .res operator normalizes this way (batchnorm is BatchNormalization in eval mode)".into()
                    }
                    "GlobalMaxPool" | "MaxUnpool" | "LpPool" => "no .res pooling operator does this (maxpool, avgpool, global_avgpool)".into(),
                    "Tanh" | "Elu" | "Selu" | "HardSigmoid" | "HardSwish" | "Gelu" | "Softplus" | "PRelu" | "Mish" | "Erf" | "Exp" | "Tanh_" => {
                        "no .res activation does this (relu, relu6, leaky_relu, sigmoid, softmax)".into()
                    }
                    _ => "no .res operator does this".into(),
                })
            }
        }
        Ok(())
    }

    fn reshape(&mut self, n: &Node) -> R<()> {
        let name = inp(n, 0);
        match self.val(name)? {
            Val::Float(t, _) if n.op_type == "Reshape" => {
                let target = self.known_ints(inp(n, 1))?;
                let total = t.len() as i64;
                let known = target
                    .iter()
                    .filter(|&&d| d > 0)
                    .try_fold(1i64, |a, &d| a.checked_mul(d))
                    .unwrap_or(i64::MAX);
                let dims: Vec<usize> = target
                    .iter()
                    .map(|&d| {
                        if d == -1 && known > 0 {
                            (total / known) as usize
                        } else {
                            d.clamp(0, 1 << 31) as usize
                        }
                    })
                    .collect();
                let product = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
                if product != Some(total as usize) {
                    return Err(format!(
                        "cannot reshape a constant of {total} values to {target:?}"
                    ));
                }
                self.set(n, Val::Float(ConstTensor { dims, data: t.data }, None));
                return Ok(());
            }
            Val::Ints(d, dims) if n.op_type == "Reshape" => {
                let target = self.known_ints(inp(n, 1))?;
                let total = d.len();
                let mut out: Vec<usize> = Vec::new();
                for (i, &t) in target.iter().enumerate() {
                    out.push(match t {
                        0 => *dims
                            .get(i)
                            .ok_or("Reshape copies an axis the input lacks")?,
                        -1 => 0,
                        t => to_usize(t, "size")?,
                    });
                }
                let known: usize = out.iter().filter(|&&x| x > 0).product();
                if let Some(slot) = target.iter().position(|&t| t == -1) {
                    if known == 0 || total % known != 0 {
                        return Err(format!("cannot reshape {total} values to {target:?}"));
                    }
                    out[slot] = total / known;
                }
                if out.iter().try_fold(1usize, |a, &x| a.checked_mul(x)) != Some(total) {
                    return Err(format!("cannot reshape {total} values to {target:?}"));
                }
                self.set(n, Val::Ints(d, out));
                return Ok(());
            }
            _ => {}
        }
        let a = self.act(name)?;
        let s = self.shape(a).to_vec();
        let f: usize = s.iter().product();
        let flat = if n.op_type == "Flatten" {
            let axis = attr_i(n, "axis", 1)?;
            if axis != 1 && axis != 1 - (s.len() as i64 + 1) {
                return Err(format!(
                    "flattens from axis {axis}; .res flattens everything after the batch (axis 1)"
                ));
            }
            true
        } else {
            let (target, _) = self.ints(inp(n, 1))?;
            let allowzero = attr_i(n, "allowzero", 0)? != 0;
            let batch_like = |d: &Dim| match d {
                Dim::Batch => true,
                Dim::Known(0) => !allowzero,
                Dim::Known(b) => Some(*b) == self.fixed_batch,
                // `-1` in front lets the batch be inferred when the rest is fixed.
            };
            let rest_total = |rest: &[Dim]| -> Option<usize> {
                rest.iter().try_fold(1usize, |acc, d| match d {
                    Dim::Known(x) if *x > 0 => acc.checked_mul(*x as usize),
                    _ => None,
                })
            };
            match target.as_slice() {
                [b, Dim::Known(-1)] if batch_like(b) => true,
                [b, Dim::Known(x)] if batch_like(b) && *x as usize == f => true,
                [Dim::Known(-1), Dim::Known(x)] if *x as usize == f => true,
                [b, rest @ ..]
                    if (batch_like(b) || *b == Dim::Known(-1))
                        && rest_total(rest).is_some()
                        && rest
                            .iter()
                            .zip(&s)
                            .all(|(r, &sv)| *r == Dim::Known(sv as i64))
                        && rest.len() == s.len() =>
                {
                    false
                }
                _ => {
                    return Err(format!(
                        "reshapes [N, {}] to {}; .res reshapes only to a vector [N, F] (flatten)",
                        join(&s),
                        show_dims(&target)
                    ))
                }
            }
        };
        if flat && s.len() > 1 {
            let id = self.push(n, LOp::Flatten, vec![a], vec![f], vec![]);
            self.set(n, Val::Act(id));
        } else {
            self.set(n, Val::Act(a));
        }
        Ok(())
    }

    /// Kernel, strides, dilations, pads of a conv or pool, `auto_pad` resolved.
    fn geometry(
        &self,
        n: &Node,
        k: [usize; 2],
        hw: (usize, usize),
        extra: [usize; 4],
    ) -> R<(usize, usize, usize, [usize; 4])> {
        let kk = square(&[k[0] as i64, k[1] as i64], "kernel size")?;
        let stride = square(&attr_is(n, "strides")?.unwrap_or(vec![1, 1]), "stride")?;
        let dil = square(&attr_is(n, "dilations")?.unwrap_or(vec![1, 1]), "dilation")?;
        if stride == 0 || dil == 0 || kk == 0 {
            return Err("a zero kernel size, stride or dilation".into());
        }
        let auto = attr_s(n, "auto_pad", "NOTSET")?;
        let mut p = match auto {
            "NOTSET" => {
                let v = attr_is(n, "pads")?.unwrap_or(vec![0, 0, 0, 0]);
                if v.len() != 4 {
                    return Err(format!("pads {v:?} are not 2-d"));
                }
                [
                    to_usize(v[0], "pad")?,
                    to_usize(v[1], "pad")?,
                    to_usize(v[2], "pad")?,
                    to_usize(v[3], "pad")?,
                ]
            }
            "VALID" => [0; 4],
            "SAME_UPPER" | "SAME_LOWER" => {
                let total = |h: usize| {
                    ((h.div_ceil(stride) - 1) * stride + dil * (kk - 1) + 1).saturating_sub(h)
                };
                let (th, tw) = (total(hw.0), total(hw.1));
                let (lo_h, lo_w) = if auto == "SAME_UPPER" {
                    (th / 2, tw / 2)
                } else {
                    (th - th / 2, tw - tw / 2)
                };
                [lo_h, lo_w, th - lo_h, tw - lo_w]
            }
            other => return Err(format!("auto_pad `{other}`")),
        };
        for (d, e) in p.iter_mut().zip(extra) {
            *d += e;
        }
        Ok((kk, stride, dil, p))
    }

    fn act_or_padded(&self, name: &str) -> R<(usize, [usize; 4])> {
        match self.val(name)? {
            Val::Padded(a, p) => Ok((a, p)),
            _ => Ok((self.act(name)?, [0; 4])),
        }
    }

    fn conv(&mut self, n: &Node) -> R<()> {
        let (a, extra) = self.act_or_padded(inp(n, 0))?;
        let (c, h, w) = self.image(a)?;
        let (wt, wname) = self.floats(n.inputs.get(1).map(String::as_str).unwrap_or(""))?;
        if wt.dims.len() != 4 {
            return Err(format!(
                "weight of shape {:?} is not a 2-d convolution's",
                wt.dims
            ));
        }
        let (out, cg, kh, kw) = (wt.dims[0], wt.dims[1], wt.dims[2], wt.dims[3]);
        let groups = to_usize(attr_i(n, "group", 1)?, "group")?;
        if groups == 0 || cg * groups != c || out % groups != 0 {
            return Err(format!(
                "weight {:?} with {groups} group(s) does not fit {c} input channels",
                wt.dims
            ));
        }
        if let Some(ks) = attr_is(n, "kernel_shape")? {
            if ks != [kh as i64, kw as i64] {
                return Err(format!(
                    "kernel_shape {ks:?} disagrees with the weight {:?}",
                    wt.dims
                ));
            }
        }
        let (k, stride, dilation, p) = self.geometry(n, [kh, kw], (h, w), extra)?;
        let pad = symmetric_pad(p)?;
        let oh = pool_out(h, k, stride, pad, dilation, false)?;
        let ow = pool_out(w, k, stride, pad, dilation, false)?;
        let mut weights = vec![(as_tensor(&wt, &wt.dims), wname)];
        let bias = n.inputs.len() > 2 && !n.inputs[2].is_empty();
        if bias {
            let (b, bname) = self.floats(inp(n, 2))?;
            if b.len() != out {
                return Err(format!(
                    "bias has {} values for {out} output channels",
                    b.len()
                ));
            }
            weights.push((as_tensor(&b, &[out]), bname));
        }
        let op = LOp::Conv {
            out,
            k,
            stride,
            pad,
            dilation,
            groups,
            bias,
        };
        let id = self.push(n, op, vec![a], vec![out, oh, ow], weights);
        self.set(n, Val::Act(id));
        Ok(())
    }

    fn conv_transpose(&mut self, n: &Node) -> R<()> {
        let a = self.act(inp(n, 0))?;
        let (c, h, w) = self.image(a)?;
        let (wt, wname) = self.floats(n.inputs.get(1).map(String::as_str).unwrap_or(""))?;
        if wt.dims.len() != 4 || wt.dims[0] != c {
            return Err(format!(
                "weight of shape {:?} does not fit {c} input channels",
                wt.dims
            ));
        }
        let groups = to_usize(attr_i(n, "group", 1)?, "group")?;
        if groups == 0 || c % groups != 0 {
            return Err(format!("{groups} groups do not divide {c} channels"));
        }
        let out = wt.dims[1] * groups;
        if n.attrs.contains_key("output_shape") {
            return Err(
                "ConvTranspose with output_shape: export with explicit pads and output_padding"
                    .into(),
            );
        }
        if attr_s(n, "auto_pad", "NOTSET")? != "NOTSET" {
            return Err("ConvTranspose with auto_pad: export with explicit pads".into());
        }
        let (k, stride, dilation, p) =
            self.geometry(n, [wt.dims[2], wt.dims[3]], (h, w), [0; 4])?;
        let pad = symmetric_pad(p)?;
        let op_ = square(
            &attr_is(n, "output_padding")?.unwrap_or(vec![0, 0]),
            "output_padding",
        )?;
        if op_ >= stride.max(dilation) {
            return Err(format!(
                "output_padding {op_} is not below the stride or dilation"
            ));
        }
        let size = |x: usize| -> R<usize> {
            let v = (x as i64 - 1) * stride as i64 - 2 * pad as i64
                + (dilation * (k - 1)) as i64
                + op_ as i64
                + 1;
            if v > 0 {
                Ok(v as usize)
            } else {
                Err("the output would be empty".into())
            }
        };
        let (oh, ow) = (size(h)?, size(w)?);
        let mut weights = vec![(as_tensor(&wt, &wt.dims), wname)];
        let bias = n.inputs.len() > 2 && !n.inputs[2].is_empty();
        if bias {
            let (b, bname) = self.floats(inp(n, 2))?;
            if b.len() != out {
                return Err(format!(
                    "bias has {} values for {out} output channels",
                    b.len()
                ));
            }
            weights.push((as_tensor(&b, &[out]), bname));
        }
        let op = LOp::ConvTranspose {
            out,
            k,
            stride,
            pad,
            output_padding: op_,
            dilation,
            groups,
            bias,
        };
        let id = self.push(n, op, vec![a], vec![out, oh, ow], weights);
        self.set(n, Val::Act(id));
        Ok(())
    }

    fn pool(&mut self, n: &Node) -> R<()> {
        let avg = n.op_type == "AveragePool";
        let (a, extra) = if avg {
            self.act_or_padded(inp(n, 0))?
        } else {
            (self.act(inp(n, 0))?, [0; 4])
        };
        let (c, h, w) = self.image(a)?;
        let ks = attr_is(n, "kernel_shape")?.ok_or("no kernel_shape")?;
        if ks.len() != 2 {
            return Err(format!("kernel_shape {ks:?} is not 2-d"));
        }
        let k2 = [
            to_usize(ks[0], "kernel size")?,
            to_usize(ks[1], "kernel size")?,
        ];
        let mut cip = attr_i(n, "count_include_pad", 0)? != 0;
        if extra != [0; 4] {
            // Zeros from a Pad node count in the average whatever the flag says,
            // which is count_include_pad over the total padding only when the
            // pool has no padding of its own.
            if attr_is(n, "pads")?.is_some_and(|p| p.iter().any(|&v| v != 0)) && !cip {
                return Err("a Pad node in front of an AveragePool that pads again without counting the padding".into());
            }
            cip = true;
        }
        let (k, stride, dilation, p) = self.geometry(n, k2, (h, w), extra)?;
        let pad = symmetric_pad(p)?;
        let ceil = attr_i(n, "ceil_mode", 0)? != 0;
        if 2 * pad > k {
            return Err(format!("padding {pad} is more than half the window {k}"));
        }
        if avg && dilation != 1 {
            return Err("a dilated AveragePool; .res's avgpool has no dilation".into());
        }
        let oh = pool_out(h, k, stride, pad, dilation, ceil)?;
        let ow = pool_out(w, k, stride, pad, dilation, ceil)?;
        let op = if avg {
            // Without padding the flag changes nothing: keep the default.
            LOp::AvgPool {
                k,
                stride,
                pad,
                ceil,
                count_include_pad: cip || (pad == 0 && !ceil),
            }
        } else {
            LOp::MaxPool {
                k,
                stride,
                pad,
                dilation,
                ceil,
            }
        };
        let id = self.push(n, op, vec![a], vec![c, oh, ow], vec![]);
        self.set(n, Val::Act(id));
        Ok(())
    }

    fn linear(&mut self, n: &Node) -> R<()> {
        let a = self.act(inp(n, 0))?;
        let f = match *self.shape(a) {
            [f] => f,
            ref s => {
                return Err(format!(
                "a matrix product on [N, {}]; .res's linear takes a vector [N, F] (flatten first)",
                join(s)
            ))
            }
        };
        let (b, bname) = self.floats(n.inputs.get(1).map(String::as_str).unwrap_or(""))?;
        if b.dims.len() != 2 {
            return Err(format!("weight of shape {:?} is not a matrix", b.dims));
        }
        let gemm = n.op_type == "Gemm";
        if gemm && attr_i(n, "transA", 0)? != 0 {
            return Err("Gemm with transA".into());
        }
        let trans_b = gemm && attr_i(n, "transB", 0)? != 0;
        // resnetc's linear weight is [out, in].
        let (mut wt, wname) = if trans_b {
            (b, bname)
        } else {
            (transpose(&b), None)
        };
        if wt.dims[1] != f {
            return Err(format!(
                "weight of shape {:?} does not fit {f} input features",
                wt.dims
            ));
        }
        let out = wt.dims[0];
        let alpha = if gemm { attr_f(n, "alpha", 1.0)? } else { 1.0 };
        let beta = if gemm { attr_f(n, "beta", 1.0)? } else { 1.0 };
        let mut wname = wname;
        if alpha != 1.0 {
            if let ConstData::F32(v) = &mut wt.data {
                v.iter_mut().for_each(|x| *x *= alpha);
            }
            wname = None;
        }
        let mut weights = vec![(as_tensor(&wt, &wt.dims), wname)];
        let bias = gemm && n.inputs.len() > 2 && !n.inputs[2].is_empty();
        if bias {
            let (mut c, mut cname) = self.floats(inp(n, 2))?;
            if c.len() != out || c.dims.iter().filter(|&&d| d != 1).count() > 1 {
                return Err(format!(
                    "bias of shape {:?} is not one value per output feature",
                    c.dims
                ));
            }
            if beta != 1.0 {
                if let ConstData::F32(v) = &mut c.data {
                    v.iter_mut().for_each(|x| *x *= beta);
                }
                cname = None;
            }
            weights.push((as_tensor(&c, &[out]), cname));
        }
        let id = self.push(n, LOp::Linear { out, bias }, vec![a], vec![out], weights);
        self.set(n, Val::Act(id));
        Ok(())
    }

    fn resize(&mut self, n: &Node) -> R<()> {
        let a = self.act(inp(n, 0))?;
        let (c, h, w) = self.image(a)?;
        let input = |k: usize| n.inputs.get(k).map(String::as_str).unwrap_or("");
        let (scales_in, sizes_in) = if n.op_type == "Upsample" || self.m.opset < 11 {
            (1, 99)
        } else {
            (2, 3)
        };
        let mut scale: Option<[f32; 2]> = None;
        if !input(scales_in).is_empty() {
            let (t, _) = self.floats(input(scales_in))?;
            if let ConstData::F32(v) = t.data {
                if v.len() == 4 {
                    if v[0] != 1.0 || v[1] != 1.0 {
                        return Err(format!("scales {v:?} resize the batch or the channels"));
                    }
                    scale = Some([v[2], v[3]]);
                } else if !v.is_empty() {
                    return Err(format!("scales {v:?} are not 4-d"));
                }
            }
        }
        if scale.is_none() && !input(sizes_in).is_empty() {
            let s = self.known_ints(input(sizes_in))?;
            if s.len() != 4 || s[1] != c as i64 {
                return Err(format!("sizes {s:?} are not [N, {c}, H, W]"));
            }
            scale = Some([s[2] as f32 / h as f32, s[3] as f32 / w as f32]);
        }
        let [sh, sw] = scale.ok_or("neither scales nor sizes")?;
        if sh != sw || sh < 1.0 || sh.fract() != 0.0 {
            return Err(format!(
                "scale {sh}x{sw}; .res's upsample takes one integer scale for both axes"
            ));
        }
        if sh > (1 << 12) as f32 || h * sh as usize > 1 << 24 || w * sh as usize > 1 << 24 {
            return Err(format!(
                "scale {sh} makes the image larger than .res allows (16777216 per axis)"
            ));
        }
        let scale = sh as usize;
        let mode = attr_s(n, "mode", "nearest")?;
        let ctm = attr_s(n, "coordinate_transformation_mode", "half_pixel")?;
        let (bilinear, align_corners) = match mode {
            // With an integer scale every coordinate mode but these picks floor(dst / scale).
            "nearest" if !matches!(ctm, "align_corners" | "tf_crop_and_resize") => (false, false),
            "linear" | "bilinear" if matches!(ctm, "pytorch_half_pixel" | "half_pixel") || n.op_type == "Upsample" => (true, false),
            "linear" | "bilinear" if ctm == "align_corners" => (true, true),
            _ => return Err(format!("mode `{mode}` with coordinate_transformation_mode `{ctm}`; .res upsamples nearest or bilinear as PyTorch does")),
        };
        if n.op_type == "Upsample" && bilinear {
            // Opset 7-9 Upsample's linear mode is `asymmetric`, not PyTorch's.
            return Err(
                "Upsample in linear mode (opset 9 and older) samples unlike PyTorch's bilinear"
                    .into(),
            );
        }
        let op = LOp::Upsample {
            scale,
            bilinear,
            align_corners,
        };
        let id = self.push(n, op, vec![a], vec![c, h * scale, w * scale], vec![]);
        self.set(n, Val::Act(id));
        Ok(())
    }

    fn binary(&mut self, n: &Node) -> R<()> {
        let (x, y) = (
            self.val(inp(n, 0))?,
            self.val(n.inputs.get(1).map(String::as_str).unwrap_or(""))?,
        );
        match (&x, &y) {
            (Val::Ints(a, da), Val::Ints(b, db)) => {
                let f = |p: i64, q: i64| -> R<i64> {
                    match n.op_type.as_str() {
                        "Add" => p.checked_add(q),
                        "Sub" => p.checked_sub(q),
                        "Mul" => p.checked_mul(q),
                        _ => p.checked_div(q),
                    }
                    .ok_or_else(|| "integer overflow or division by zero".to_string())
                };
                let len = a.len().max(b.len());
                if a.is_empty()
                    || b.is_empty()
                    || !(a.len() == b.len() || a.len() == 1 || b.len() == 1)
                {
                    return Err("mismatched shape vectors".into());
                }
                let mut out = Vec::with_capacity(len);
                for i in 0..len {
                    let (p, q) = (a[i.min(a.len() - 1)], b[i.min(b.len() - 1)]);
                    out.push(match (p, q) {
                        (Dim::Known(p), Dim::Known(q)) => Dim::Known(f(p, q)?),
                        _ => return Err("arithmetic on the batch size".into()),
                    });
                }
                let dims = if da.len() >= db.len() {
                    da.clone()
                } else {
                    db.clone()
                };
                self.set(n, Val::Ints(out, dims));
                return Ok(());
            }
            (Val::Poison, _) | (_, Val::Poison) => return Err(String::new()),
            _ => {}
        }
        let op = n.op_type.as_str();
        // Activation + constant: a linear layer's or conv's bias (MatMul + Add).
        if let (Val::Act(a), Val::Float(t, tname)) | (Val::Float(t, tname), Val::Act(a)) = (&x, &y)
        {
            let a = *a;
            let producer = &self.nodes[a];
            let c = producer.shape[0];
            // Broadcast as numpy does: one value per channel means `[C]` on
            // a vector `[N, C]`, `[C, 1, 1]` (or `[1, C, 1, 1]`) on an image.
            let rank = producer.shape.len();
            let d = &t.dims;
            let fits = t.len() == c
                && d.len() >= rank
                && d.len() <= rank + 1
                && d[d.len() - rank] == c
                && d[d.len() - rank + 1..].iter().all(|&x| x == 1);
            let free = matches!(
                producer.op,
                LOp::Linear { bias: false, .. }
                    | LOp::Conv { bias: false, .. }
                    | LOp::ConvTranspose { bias: false, .. }
            );
            let single = self.single_use(a);
            if op == "Add" && fits && free && single {
                let p = &mut self.nodes[a];
                match &mut p.op {
                    LOp::Linear { bias, .. }
                    | LOp::Conv { bias, .. }
                    | LOp::ConvTranspose { bias, .. } => *bias = true,
                    _ => {}
                }
                p.weights.push(as_tensor(t, &[c]));
                p.weight_names.push(tname.clone());
                self.set(n, Val::Act(a));
                return Ok(());
            }
            return Err(format!(
                "{op} of an activation and a constant; .res adds and multiplies activations only (a constant add right after a bias-free MatMul or Conv becomes its bias)"
            ));
        }
        let (a, b) = (self.act(inp(n, 0))?, self.act(inp(n, 1))?);
        if op != "Add" && op != "Mul" {
            return Err(format!("{op} of two activations; .res has add and mul"));
        }
        let (sa, sb) = (self.shape(a).to_vec(), self.shape(b).to_vec());
        let per_channel = |s: &[usize], o: &[usize]| {
            s.len() == 3 && o.len() == 3 && s[0] == o[0] && s[1] == 1 && s[2] == 1
        };
        let shape = if sa == sb || (op == "Mul" && per_channel(&sb, &sa)) {
            sa.clone()
        } else if op == "Mul" && per_channel(&sa, &sb) {
            sb.clone()
        } else {
            return Err(format!("{op} of [N, {}] and [N, {}]: .res needs equal shapes (or a [C, 1, 1] factor for mul)", join(&sa), join(&sb)));
        };
        let lop = if op == "Add" { LOp::Add } else { LOp::Mul };
        let id = self.push(n, lop, vec![a, b], shape, vec![]);
        self.set(n, Val::Act(id));
        Ok(())
    }

    /// Whether the lifted node `a`'s ONNX output is read once.
    fn single_use(&self, a: usize) -> bool {
        let names: Vec<&String> = self
            .vals
            .iter()
            .filter(|(_, v)| matches!(v, Val::Act(x) if *x == a))
            .map(|(k, _)| k)
            .collect();
        names
            .iter()
            .map(|k| self.uses.get(*k).copied().unwrap_or(0))
            .sum::<usize>()
            == 1
    }
}

fn join(s: &[usize]) -> String {
    s.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn show_dims(d: &[Dim]) -> String {
    let v: Vec<String> = d
        .iter()
        .map(|x| match x {
            Dim::Known(v) => v.to_string(),
            Dim::Batch => "N".into(),
        })
        .collect();
    format!("[{}]", v.join(", "))
}

fn as_tensor(t: &ConstTensor, shape: &[usize]) -> Tensor {
    let data = match &t.data {
        ConstData::F32(v) => v.clone(),
        ConstData::I64(v) => v.iter().map(|&x| x as f32).collect(),
    };
    Tensor::from_vec(shape, data)
}

fn transpose(t: &ConstTensor) -> ConstTensor {
    let (r, c) = (t.dims[0], t.dims[1]);
    let data = match &t.data {
        ConstData::F32(v) => ConstData::F32((0..r * c).map(|i| v[(i % r) * c + i / r]).collect()),
        ConstData::I64(v) => ConstData::I64((0..r * c).map(|i| v[(i % r) * c + i / r]).collect()),
    };
    ConstTensor {
        dims: vec![c, r],
        data,
    }
}

/// Options the file cannot give: the input size where it declares none.
#[derive(Clone, Debug, Default)]
pub struct LiftOptions {
    /// `[N, C, H, W]` (N ignored: the batch is always free).
    pub input_shape: Option<Vec<usize>>,
}

/// Lifts the whole model, or lists every node that cannot be lifted.
pub fn lift(m: &OnnxModel, path: &str, opts: &LiftOptions) -> Result<Lifted, ImportError> {
    let invalid = |detail: String, hint: &str| ImportError::Invalid {
        path: path.to_string(),
        detail,
        hint: hint.to_string(),
    };
    // The input's size: the declared one, or --input-shape for what it leaves open.
    let decl = &m.input_dims;
    let mut shape = Vec::new();
    let mut fixed_batch = None;
    if let Some(given) = &opts.input_shape {
        if !decl.is_empty() && given.len() != decl.len() {
            return Err(invalid(
                format!(
                    "--input-shape has {} axes, the model's input `{}` has {}",
                    given.len(),
                    m.input_name,
                    decl.len()
                ),
                "give N, C, H and W, e.g. --input-shape 1x3x224x224",
            ));
        }
        for (i, &g) in given.iter().enumerate().skip(1) {
            if let Some(DimDecl::Fixed(d)) = decl.get(i) {
                if *d != g as i64 {
                    return Err(invalid(
                        format!("--input-shape gives axis {i} as {g}, the model declares {d}"),
                        "leave out --input-shape, or give the model's own sizes",
                    ));
                }
            }
            shape.push(g);
        }
    } else {
        if decl.is_empty() {
            return Err(invalid(
                format!("the input `{}` declares no shape", m.input_name),
                "give the input size: --input-shape 1x3x224x224",
            ));
        }
        for (i, d) in decl.iter().enumerate().skip(1) {
            match d {
                DimDecl::Fixed(v) if (1..=1 << 24).contains(v) => shape.push(*v as usize),
                DimDecl::Fixed(v) => {
                    return Err(invalid(
                        format!("input axis {i} has size {v}"),
                        "export with a valid example input",
                    ))
                }
                _ => return Err(invalid(
                    format!(
                        "the input `{}` leaves axis {i} ({}) open",
                        m.input_name,
                        match d {
                            DimDecl::Named(n) => n.as_str(),
                            _ => "unnamed",
                        }
                    ),
                    "resnetc compiles for one image size: give it with --input-shape 1x3x224x224",
                )),
            }
        }
    }
    if let Some(DimDecl::Fixed(b)) = decl.first() {
        fixed_batch = Some(*b);
    }
    if shape.is_empty() || !(shape.len() == 1 || shape.len() == 3) {
        return Err(invalid(
            format!(
                "the input has {} axes; resnetc models take [N, C, H, W] images or [N, F] vectors",
                shape.len() + 1
            ),
            "export with an NCHW image input",
        ));
    }
    let mut uses: HashMap<String, usize> = HashMap::new();
    for n in &m.nodes {
        for i in &n.inputs {
            *uses.entry(i.clone()).or_default() += 1;
        }
    }
    *uses.entry(m.output_name.clone()).or_default() += 1;
    let mut l = Lifter {
        m,
        vals: HashMap::new(),
        nodes: vec![LNode {
            op: LOp::Input,
            inputs: vec![],
            shape,
            onnx_name: m.input_name.clone(),
            scope: None,
            weight_names: vec![],
            weights: vec![],
        }],
        uses,
        fixed_batch,
    };
    l.vals.insert(m.input_name.clone(), Val::Act(0));
    let mut problems = Vec::new();
    for n in &m.nodes {
        if let Err(reason) = l.lift(n) {
            for o in &n.outputs {
                l.vals.insert(o.clone(), Val::Poison);
            }
            if !reason.is_empty() {
                problems.push(Unsupported {
                    op_type: n.op_type.clone(),
                    node: n.name.clone(),
                    reason,
                });
            }
        }
    }
    if !problems.is_empty() {
        return Err(ImportError::Unsupported {
            path: path.to_string(),
            items: problems,
        });
    }
    let output = match l.vals.get(&m.output_name) {
        Some(Val::Act(a)) => *a,
        Some(Val::Padded(..)) => {
            return Err(invalid(
                "the output is a Pad node's".into(),
                ".res has no padding operator",
            ))
        }
        Some(_) => {
            return Err(invalid(
                format!("the output `{}` is a constant", m.output_name),
                "export a model whose output depends on its input",
            ))
        }
        None => {
            return Err(invalid(
                format!("no node produces the output `{}`", m.output_name),
                "the file is incomplete; export it again",
            ))
        }
    };
    if output == 0 {
        return Err(invalid(
            "the model returns its input unchanged".into(),
            "nothing to import",
        ));
    }
    Ok(Lifted {
        nodes: l.nodes,
        output,
        graph_name: m.graph_name.clone(),
    })
}
