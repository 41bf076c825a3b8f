//! `.res` text of one scope (a block body or the model body): items in
//! order, chained with `|>` where a value flows straight into the next
//! item, bound with `let` where it is read again later.
//!
//! Integer arguments come out as [`Tok::Arg`] so that two scopes that
//! differ only in such numbers (channels, strides) have the same shape and
//! can share one block with those numbers as parameters.

use super::lift::{LNode, LOp};

/// A piece of `.res` text.
#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    Text(String),
    /// An integer argument: `prefix` (`", stride: "`) then the value; left
    /// out entirely when it is a literal equal to `default`.
    Arg {
        prefix: &'static str,
        name: String,
        value: i64,
        default: Option<i64>,
    },
    /// A call of candidate `c`'s block with these tensor arguments after
    /// the piped one (its name and integer arguments are filled in when
    /// the text is rendered).
    Call(usize, Vec<String>),
    /// The items of a sequence `[a, b, 2 * c]`: identical neighbours are
    /// merged into a repeat count when the text is rendered.
    SeqOpen,
    SeqNext,
    SeqClose,
}

/// One item of a scope.
#[derive(Clone, Debug)]
pub enum Item {
    /// A lifted operator.
    Node(usize),
    /// A block call: the candidate's index.
    Call(usize),
}

/// What the emitter needs to know about each item.
pub struct ItemInfo {
    pub inputs: Vec<usize>,
    pub output: usize,
    /// The label relative to the scope, where it has one.
    pub label: Option<Vec<String>>,
}

fn t(s: impl Into<String>) -> Tok {
    Tok::Text(s.into())
}

fn arg(prefix: &'static str, name: &'static str, value: usize, default: Option<i64>) -> Tok {
    Tok::Arg {
        prefix,
        name: name.to_string(),
        value: value as i64,
        default,
    }
}

/// Names a block's integer parameters may take (`c`, `stride2`, ...): never
/// a `let`, which would shadow one.
fn parameter_like(s: &str) -> bool {
    const NAMES: &[&str] = &[
        "c",
        "k",
        "stride",
        "pad",
        "dilation",
        "groups",
        "output_padding",
        "features",
        "scale",
    ];
    NAMES.contains(&s.trim_end_matches(|ch: char| ch.is_ascii_digit()))
}

/// `label: ` as .res writes it: an identifier, or a string for dotted or
/// numeric paths.
pub fn label_text(label: &[String]) -> String {
    let joined = label.join(".");
    let ident = label.len() == 1
        && joined
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if ident {
        format!("{joined}: ")
    } else {
        format!("\"{joined}\": ")
    }
}

/// A float as a .res number literal (digits on both sides of the point).
pub fn number(v: f32) -> String {
    let s = format!("{v:?}");
    if s.contains('.') || s.contains('e') {
        s
    } else {
        format!("{s}.0")
    }
}

/// The call of operator `n` without its piped input: `conv(64, k: 3, pad: 1)`.
fn op_call(n: &LNode, extra: &[String], out: &mut Vec<Tok>) {
    let d = Some;
    match &n.op {
        LOp::Conv {
            out: o,
            k,
            stride,
            pad,
            dilation,
            groups,
            bias,
        } => {
            out.push(t("conv("));
            out.push(arg("", "c", *o, None));
            out.push(arg(", k: ", "k", *k, None));
            out.push(arg(", stride: ", "stride", *stride, d(1)));
            out.push(arg(", pad: ", "pad", *pad, d(0)));
            out.push(arg(", dilation: ", "dilation", *dilation, d(1)));
            out.push(arg(", groups: ", "groups", *groups, d(1)));
            out.push(t(if *bias { ", bias: true)" } else { ")" }));
        }
        LOp::ConvTranspose {
            out: o,
            k,
            stride,
            pad,
            output_padding,
            dilation,
            groups,
            bias,
        } => {
            out.push(t("conv_transpose("));
            out.push(arg("", "c", *o, None));
            out.push(arg(", k: ", "k", *k, None));
            out.push(arg(", stride: ", "stride", *stride, d(1)));
            out.push(arg(", pad: ", "pad", *pad, d(0)));
            out.push(arg(
                ", output_padding: ",
                "output_padding",
                *output_padding,
                d(0),
            ));
            out.push(arg(", dilation: ", "dilation", *dilation, d(1)));
            out.push(arg(", groups: ", "groups", *groups, d(1)));
            out.push(t(if *bias { ", bias: true)" } else { ")" }));
        }
        LOp::BatchNorm { eps } => out.push(t(if *eps == 1e-5 {
            "batchnorm()".to_string()
        } else {
            format!("batchnorm(eps: {})", number(*eps))
        })),
        LOp::Linear { out: o, bias } => {
            out.push(t("linear("));
            out.push(arg("", "features", *o, None));
            out.push(t(if *bias { ")" } else { ", bias: false)" }));
        }
        LOp::Relu => out.push(t("relu()")),
        LOp::Relu6 => out.push(t("relu6()")),
        LOp::LeakyRelu(s) => out.push(t(format!("leaky_relu(slope: {})", number(*s)))),
        LOp::Sigmoid => out.push(t("sigmoid()")),
        LOp::Softmax => out.push(t("softmax()")),
        LOp::Flatten => out.push(t("flatten()")),
        LOp::GlobalAvgPool => out.push(t("global_avgpool()")),
        LOp::Add => out.push(t(format!("add({})", extra.join(", ")))),
        LOp::Mul => out.push(t(format!("mul({})", extra.join(", ")))),
        LOp::Concat => out.push(t(format!("concat({})", extra.join(", ")))),
        LOp::MaxPool {
            k,
            stride,
            pad,
            dilation,
            ceil,
        } => {
            out.push(t("maxpool("));
            out.push(arg("k: ", "k", *k, None));
            out.push(arg(", stride: ", "stride", *stride, None));
            out.push(arg(", pad: ", "pad", *pad, d(0)));
            out.push(arg(", dilation: ", "dilation", *dilation, d(1)));
            out.push(t(if *ceil { ", ceil: true)" } else { ")" }));
        }
        LOp::AvgPool {
            k,
            stride,
            pad,
            ceil,
            count_include_pad,
        } => {
            out.push(t("avgpool("));
            out.push(arg("k: ", "k", *k, None));
            out.push(arg(", stride: ", "stride", *stride, None));
            out.push(arg(", pad: ", "pad", *pad, d(0)));
            let mut tail = String::new();
            if *ceil {
                tail.push_str(", ceil: true");
            }
            if !*count_include_pad {
                tail.push_str(", count_include_pad: false");
            }
            tail.push(')');
            out.push(t(tail));
        }
        LOp::Upsample {
            scale,
            bilinear,
            align_corners,
        } => {
            out.push(t("upsample("));
            out.push(arg("scale: ", "scale", *scale, None));
            let mut tail = String::new();
            if *bilinear {
                tail.push_str(", mode: \"bilinear\"");
                if *align_corners {
                    tail.push_str(", align_corners: true");
                }
            }
            tail.push(')');
            out.push(t(tail));
        }
        LOp::ChannelPad { out: o, stride } => {
            out.push(t("channel_pad("));
            out.push(arg("", "c", *o, None));
            out.push(arg(", stride: ", "stride", *stride, d(1)));
            out.push(t(")"));
        }
        LOp::Input => {}
    }
}

/// Emits a scope. `inputs` are the values the scope receives with their
/// names; `info(item)` describes each item; `nodes` are the lifted nodes.
/// The result is the body's statements, one per line, indented by `indent`.
pub fn emit_scope(
    items: &[Item],
    info: &dyn Fn(&Item) -> ItemInfo,
    inputs: &[(usize, String)],
    output: usize,
    nodes: &[LNode],
    indent: &str,
    loops: bool,
) -> Vec<Tok> {
    let infos: Vec<ItemInfo> = items.iter().map(info).collect();
    // Uses of each value inside the scope (the scope's output counts one).
    let uses = |v: usize| -> usize {
        infos
            .iter()
            .map(|i| i.inputs.iter().filter(|&&x| x == v).count())
            .sum::<usize>()
            + usize::from(v == output)
    };
    let mut names: Vec<(usize, String)> = inputs.to_vec();
    let mut taken: Vec<String> = inputs.iter().map(|(_, n)| n.clone()).collect();
    let mut out = Vec::new();
    let name_of = |names: &[(usize, String)], v: usize| -> String {
        names
            .iter()
            .rev()
            .find(|(x, _)| *x == v)
            .map(|(_, n)| n.clone())
            .unwrap_or_else(|| format!("missing{v}"))
    };
    // Which items continue the chain of the item before them.
    let continues: Vec<bool> = (0..items.len())
        .map(|k| {
            k > 0 && {
                let prev = infos[k - 1].output;
                let inf = &infos[k];
                // `a * b` as its own statement: either side may be the
                // per-channel factor there, not in `mul(...)`.
                !matches!(items[k], Item::Node(n) if nodes[n].op == LOp::Mul)
                    && inf.inputs.first() == Some(&prev)
                    && uses(prev) == 1
                    && inf.inputs.iter().filter(|&&x| x == prev).count() == 1
            }
        })
        .collect();
    // DenseNet's dense blocks: `call_i(f)` then `f = concat(f, o_i)` (or the
    // flat `concat(x, o_1, ..., o_i)` PyTorch writes), layers labelled
    // `P.stem1`, `P.stem2`, ...: one `for` loop over a block call.
    let mut dense: Vec<Option<Dense>> = (0..items.len()).map(|_| None).collect();
    if loops {
        let mut k = 0;
        while k + 3 < items.len() {
            match dense_run(items, &infos, nodes, k, &uses) {
                Some(d) => {
                    let len = 2 * d.count;
                    dense[k] = Some(d);
                    k += len;
                }
                None => k += 1,
            }
        }
    }
    let mut continues = continues;
    let mut skip = vec![false; items.len()];
    for (k, d) in dense.iter().enumerate() {
        if let Some(d) = d {
            continues[k] = false;
            skip[k + 1..k + 2 * d.count].fill(true);
            if let Some(c) = continues.get_mut(k + 2 * d.count) {
                *c = false;
            }
        }
    }
    // Runs written as one sequence: consecutive chained items labelled
    // `L.0`, `L.1`, ... (an `nn.Sequential`), at least two.
    let seq_index = |k: usize| -> Option<(Vec<String>, usize)> {
        let l = infos[k].label.as_ref()?;
        let (last, prefix) = l.split_last()?;
        if prefix.is_empty() || last.len() > 6 || !last.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if let Item::Node(n) = items[k] {
            if matches!(nodes[n].op, LOp::Add | LOp::Mul | LOp::Concat) {
                return None;
            }
        }
        Some((prefix.to_vec(), last.parse().ok()?))
    };
    let mut run_len = vec![0usize; items.len()];
    let mut k = 0;
    while k < items.len() {
        if let Some((prefix, 0)) = seq_index(k) {
            let mut j = k + 1;
            while j < items.len() && continues[j] && seq_index(j) == Some((prefix.clone(), j - k)) {
                j += 1;
            }
            if j - k >= 2 {
                run_len[k] = j - k;
                k = j;
                continue;
            }
        }
        k += 1;
    }
    let mut in_run = 0usize; // items of the current run still to write
    let mut after_loop = false;
    for (k, (item, inf)) in items.iter().zip(&infos).enumerate() {
        if skip[k] {
            continue;
        }
        let first = inf.inputs.first().copied();
        if k > 0 && !continues[k] && !after_loop {
            // Bind the chain just written.
            let v = infos[k - 1].output;
            let base = infos[k - 1]
                .label
                .as_ref()
                .and_then(|l| {
                    l.iter()
                        .rev()
                        .find(|s| s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic()))
                })
                .filter(|s| !super::blocks::reserved(s) && !parameter_like(s))
                .cloned()
                .unwrap_or_else(|| "y".to_string());
            let mut name = base.clone();
            let mut i = 1;
            while taken.contains(&name) {
                i += 1;
                name = format!("{base}{i}");
            }
            taken.push(name.clone());
            names.push((v, name.clone()));
            // Patch the statement start: it was written as a marker.
            out.push(t("\n"));
            if let Some(pos) = out
                .iter()
                .rposition(|t| matches!(t, Tok::Text(s) if s == "\u{0}stmt"))
            {
                out[pos] = t(format!("{indent}let {name} = "));
            }
        }
        after_loop = false;
        if let Some(d) = &dense[k] {
            let x = first.map(|v| name_of(&names, v)).unwrap_or_default();
            let mut f = "features".to_string();
            let mut i = 1;
            while taken.contains(&f) {
                i += 1;
                f = format!("features{i}");
            }
            taken.push(f.clone());
            let prefix: String = d.prefix.iter().map(|s| format!("{s}.")).collect();
            let label = format!("\"{prefix}{}{{i}}\": ", d.stem);
            out.push(t(format!(
                "{indent}let {f} = {x}\n{indent}for i in {}..={} {{\n{indent}    {f} = concat({f}, {label}",
                d.first,
                d.first + d.count - 1
            )));
            out.push(Tok::Call(d.call, vec![f.clone()]));
            out.push(t(format!(")\n{indent}}}\n")));
            names.push((d.result, f.clone()));
            if d.result == output {
                out.push(t(format!("{indent}{f}")));
            }
            after_loop = true;
            continue;
        }
        let extra: Vec<String> = inf
            .inputs
            .iter()
            .skip(1)
            .map(|&v| name_of(&names, v))
            .collect();
        let mut label = inf
            .label
            .as_ref()
            .filter(|l| !l.is_empty())
            .map(|l| label_text(l))
            .unwrap_or_default();
        if run_len[k] > 0 {
            let (prefix, _) = seq_index(k).unwrap_or_default();
            label = format!("{}[", label_text(&prefix));
            in_run = run_len[k];
        } else if in_run > 0 {
            label = String::new();
        }
        let starting_run = run_len[k] > 0;
        if !continues[k] {
            out.push(t("\u{0}stmt"));
            let x = first.map(|v| name_of(&names, v)).unwrap_or_default();
            match item {
                Item::Node(n) if matches!(nodes[*n].op, LOp::Add | LOp::Mul) => {
                    let sym = if nodes[*n].op == LOp::Add {
                        " + "
                    } else {
                        " * "
                    };
                    out.push(t(format!("{x}{sym}{}", extra.join(sym))));
                }
                Item::Node(n) if nodes[*n].op == LOp::Concat => {
                    let mut all = vec![x];
                    all.extend(extra.iter().cloned());
                    out.push(t(format!("concat({})", all.join(", "))));
                }
                _ => out.push(t(format!("{x} |> {label}"))),
            }
        } else if in_run > 0 && !starting_run {
            out.push(Tok::SeqNext);
        } else {
            out.push(t(format!("\n{indent}    |> {label}")));
        }
        if starting_run {
            out.push(Tok::SeqOpen);
        }
        match item {
            Item::Node(n)
                if !continues[k] && matches!(nodes[*n].op, LOp::Add | LOp::Mul | LOp::Concat) => {}
            Item::Node(n) => op_call(&nodes[*n], &extra, &mut out),
            Item::Call(c) => out.push(Tok::Call(*c, extra.clone())),
        }
        if in_run > 0 {
            in_run -= 1;
            if in_run == 0 {
                out.push(Tok::SeqClose);
            }
        }
    }
    // The last chain is the scope's value.
    if let Some(pos) = out
        .iter()
        .rposition(|t| matches!(t, Tok::Text(s) if s == "\u{0}stmt"))
    {
        out[pos] = t(indent.to_string());
    }
    out.push(t("\n"));
    out
}

/// A dense block written as a loop.
struct Dense {
    /// The first layer's call (all layers call the same block).
    call: usize,
    count: usize,
    prefix: Vec<String>,
    stem: String,
    first: usize,
    result: usize,
}

/// A dense run starting at item `k`: call, concat, call, concat, ...
fn dense_run(
    items: &[Item],
    infos: &[ItemInfo],
    nodes: &[LNode],
    k: usize,
    uses: &dyn Fn(usize) -> usize,
) -> Option<Dense> {
    let layer = |j: usize| -> Option<(usize, Vec<String>, String, usize)> {
        let Item::Call(c) = items.get(j)? else {
            return None;
        };
        let l = infos[j].label.as_ref()?;
        let (last, prefix) = l.split_last()?;
        let digits = last
            .bytes()
            .rev()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let stem = &last[..last.len() - digits];
        if digits == 0
            || digits > 6
            || stem.is_empty()
            || !stem.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_')
        {
            return None;
        }
        Some((
            *c,
            prefix.to_vec(),
            stem.to_string(),
            last[stem.len()..].parse().ok()?,
        ))
    };
    let (call, prefix, stem, first) = layer(k)?;
    let x0 = *infos[k].inputs.first()?;
    let (mut f, mut flat) = (x0, vec![x0]);
    let mut inside: Vec<usize> = Vec::new(); // values the run makes
    let mut count = 0;
    loop {
        let j = k + 2 * count;
        let Some((_, p, st, num)) = layer(j) else {
            break;
        };
        if p != prefix || st != stem || num != first + count || infos[j].inputs != [f] {
            break;
        }
        let Some(Item::Node(cat)) = items.get(j + 1) else {
            break;
        };
        let o = infos[j].output;
        let ins = &infos[j + 1].inputs;
        let mut grown = flat.clone();
        grown.push(o);
        if nodes[*cat].op != LOp::Concat || (*ins != [f, o] && *ins != grown) {
            break;
        }
        inside.push(o);
        inside.push(*cat);
        f = *cat;
        flat = grown;
        count += 1;
    }
    if count < 2 {
        return None;
    }
    // Nothing outside the run reads what it makes, but its result.
    let run_items = &infos[k..k + 2 * count];
    for &v in &inside {
        let within: usize = run_items
            .iter()
            .map(|i| i.inputs.iter().filter(|&&x| x == v).count())
            .sum();
        if v != f && uses(v) != within {
            return None;
        }
    }
    Some(Dense {
        call,
        count,
        prefix,
        stem,
        first,
        result: f,
    })
}
