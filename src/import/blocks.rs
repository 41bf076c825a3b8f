//! Repeated structure: modules of the exported network (from node and
//! weight names) that take one to four activations and give one are
//! candidate blocks; candidates whose bodies are the same up to weights
//! and integer arguments become one `block`, those numbers its parameters.
//! A module seen once stays inline.

use super::emit_res::{emit_scope, Item, ItemInfo, Tok};
use super::lift::{LOp, Lifted};
use super::names::Paths;
use std::collections::{BTreeSet, HashMap};

/// Keywords and operator names: never a block or variable name.
pub fn reserved(s: &str) -> bool {
    const KEYWORDS: &[&str] = &[
        "block", "model", "let", "for", "in", "if", "else", "use", "true", "false",
    ];
    // `x`, `x1`, ...: a block's tensor parameters.
    let input_like = s
        .strip_prefix('x')
        .is_some_and(|r| r.bytes().all(|b| b.is_ascii_digit()));
    input_like
        || KEYWORDS.contains(&s)
        || crate::front::builtins::BUILTINS.iter().any(|b| b.name == s)
}

struct Candidate {
    path: Vec<String>,
    members: BTreeSet<usize>,
    inputs: Vec<usize>,
    output: usize,
}

/// External inputs (in order of first use) and outputs of a node set;
/// `consumers[i]` are the live nodes that read node `i`.
fn boundary(
    l: &Lifted,
    consumers: &[Vec<usize>],
    members: &BTreeSet<usize>,
) -> (Vec<usize>, Vec<usize>) {
    let mut inputs = Vec::new();
    for &m in members {
        for &i in &l.nodes[m].inputs {
            if !members.contains(&i) && !inputs.contains(&i) {
                inputs.push(i);
            }
        }
    }
    let outputs = members
        .iter()
        .copied()
        .filter(|&m| m == l.output || consumers[m].iter().any(|c| !members.contains(c)))
        .collect();
    (inputs, outputs)
}

fn starts_with(p: &[String], prefix: &[String]) -> bool {
    p.len() >= prefix.len() && p[..prefix.len()] == *prefix
}

/// The model's `.res` text. `structured: false` writes one flat model body;
/// `loops` writes DenseNet's dense blocks as `for` loops.
pub fn emit(
    l: &Lifted,
    paths: &Paths,
    model_name: &str,
    header: &str,
    structured: bool,
    loops: bool,
) -> Result<String, String> {
    let n = l.nodes.len();
    // Only what the output depends on.
    let mut live = vec![false; n];
    live[l.output] = true;
    for i in (0..n).rev() {
        if live[i] {
            for &j in &l.nodes[i].inputs {
                live[j] = true;
            }
        }
    }
    let mut consumers: Vec<Vec<usize>> = vec![vec![]; n];
    for i in (0..n).filter(|&i| live[i]) {
        for &j in &l.nodes[i].inputs {
            consumers[j].push(i);
        }
    }
    let mut module = paths.module.clone();
    let mut cands: Vec<Candidate> = Vec::new();
    if structured {
        let mut prefixes: BTreeSet<Vec<String>> = BTreeSet::new();
        for (i, m) in module.iter().enumerate() {
            if live[i] && i != 0 {
                for k in 1..=m.len() {
                    prefixes.insert(m[..k].to_vec());
                }
            }
        }
        let mut order: Vec<Vec<String>> = prefixes.into_iter().collect();
        order.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        for p in order {
            let members = |module: &[Vec<String>]| -> BTreeSet<usize> {
                (1..n)
                    .filter(|&i| live[i] && starts_with(&module[i], &p))
                    .collect()
            };
            let mut mem = members(&module);
            if mem.len() < 2 {
                continue;
            }
            let (mut inputs, mut outputs) = boundary(l, &consumers, &mem);
            if inputs.len() > 1 && outputs.len() == 1 {
                // DenseNet: the layer's inputs meet in one concat at its top;
                // leave the concat to the caller.
                let top = mem.iter().copied().find(|&c| {
                    l.nodes[c].op == LOp::Concat
                        && inputs.iter().all(|i| l.nodes[c].inputs.contains(i))
                        && l.nodes[c].inputs.iter().all(|i| inputs.contains(i))
                        && mem.iter().all(|&o| {
                            o == c || l.nodes[o].inputs.iter().all(|i| !inputs.contains(i))
                        })
                        && c != outputs[0]
                });
                if let Some(c) = top {
                    let mut parent = p.clone();
                    parent.pop();
                    module[c] = parent;
                    mem = members(&module);
                    (inputs, outputs) = boundary(l, &consumers, &mem);
                }
            }
            if outputs.len() == 1 && (1..=4).contains(&inputs.len()) && mem.len() >= 2 {
                cands.push(Candidate {
                    path: p,
                    members: mem,
                    inputs,
                    output: outputs[0],
                });
            }
        }
    }
    // The root: everything.
    let root = cands.len();
    cands.push(Candidate {
        path: vec![],
        members: (1..n).filter(|&i| live[i]).collect(),
        inputs: vec![0],
        output: l.output,
    });
    // Each candidate's parent: the smallest candidate containing it.
    let parent: Vec<Option<usize>> = (0..cands.len())
        .map(|c| {
            if c == root {
                return None;
            }
            (0..cands.len())
                .filter(|&o| {
                    o != c
                        && cands[o].path.len() < cands[c].path.len()
                        && starts_with(&cands[c].path, &cands[o].path)
                        && cands[c].members.is_subset(&cands[o].members)
                })
                .max_by_key(|&o| cands[o].path.len())
                .or(Some(root))
        })
        .collect();
    let children: Vec<Vec<usize>> = (0..cands.len())
        .map(|c| (0..cands.len()).filter(|&o| parent[o] == Some(c)).collect())
        .collect();
    let position = |it: &Item| match it {
        Item::Node(i) => *i,
        Item::Call(c) => cands[*c].output,
    };
    let direct_items = |c: usize| -> Vec<Item> {
        let mut items: Vec<Item> = cands[c]
            .members
            .iter()
            .filter(|&&m| !children[c].iter().any(|&ch| cands[ch].members.contains(&m)))
            .map(|&m| Item::Node(m))
            .collect();
        items.extend(children[c].iter().map(|&ch| Item::Call(ch)));
        items.sort_by_key(position);
        items
    };
    let rel =
        |p: &[String], scope: &[String]| -> Vec<String> { p[scope.len().min(p.len())..].to_vec() };
    let info_for = |scope: usize| {
        let sp = cands[scope].path.clone();
        let cands = &cands;
        move |it: &Item| -> ItemInfo {
            match it {
                Item::Node(i) => ItemInfo {
                    inputs: l.nodes[*i].inputs.clone(),
                    output: *i,
                    label: paths.param[*i]
                        .as_ref()
                        .map(|p| rel(&p.split('.').map(str::to_string).collect::<Vec<_>>(), &sp)),
                },
                Item::Call(c) => ItemInfo {
                    inputs: cands[*c].inputs.clone(),
                    output: cands[*c].output,
                    label: Some(rel(&cands[*c].path, &sp)),
                },
            }
        }
    };
    let input_names = |c: usize| -> Vec<(usize, String)> {
        cands[c]
            .inputs
            .iter()
            .enumerate()
            .map(|(k, &v)| {
                (
                    v,
                    if k == 0 {
                        "x".to_string()
                    } else {
                        format!("x{k}")
                    },
                )
            })
            .collect()
    };
    // Phase 1: a key per candidate, children as calls.
    let mut key_of: Vec<usize> = vec![usize::MAX; cands.len()];
    let mut keys: HashMap<String, usize> = HashMap::new();
    #[allow(clippy::needless_range_loop)]
    for c in 0..root {
        let toks = emit_scope(
            &direct_items(c),
            &info_for(c),
            &input_names(c),
            cands[c].output,
            &l.nodes,
            "    ",
            loops,
        );
        let mut s = format!("{}|", cands[c].inputs.len());
        for t in &toks {
            match t {
                Tok::Text(x) => s.push_str(x),
                Tok::Arg { prefix, .. } => {
                    s.push_str(prefix);
                    s.push('#');
                }
                Tok::Call(ch, args) => s.push_str(&format!("@{}({})", key_of[*ch], args.join(","))),
                Tok::SeqOpen => s.push('['),
                Tok::SeqNext => s.push(','),
                Tok::SeqClose => s.push(']'),
            }
        }
        let id = keys.len();
        key_of[c] = *keys.entry(s).or_insert(id);
    }
    let mut count: HashMap<usize, usize> = HashMap::new();
    for &k in &key_of[..root] {
        *count.entry(k).or_default() += 1;
    }
    // A container of blocks only (`layer1` of a ResNet: `nn.Sequential`
    // of bottlenecks) reads better as a sequence in its caller.
    let container = |c: usize| {
        direct_items(c).iter().all(|it| match it {
            Item::Call(ch) => {
                let l = rel(&cands[*ch].path, &cands[c].path);
                l.len() == 1 && l[0].bytes().all(|b| b.is_ascii_digit())
            }
            Item::Node(_) => false,
        })
    };
    let shared = |c: usize| c != root && count[&key_of[c]] >= 2 && !container(c);
    // Phase 2: items with the candidates used once inlined.
    fn expand(
        c: usize,
        direct: &dyn Fn(usize) -> Vec<Item>,
        shared: &dyn Fn(usize) -> bool,
        out: &mut Vec<Item>,
    ) {
        for it in direct(c) {
            match it {
                Item::Call(ch) if !shared(ch) => expand(ch, direct, shared, out),
                other => out.push(other),
            }
        }
    }
    let expanded = |c: usize| -> Vec<Item> {
        let mut v = Vec::new();
        expand(c, &direct_items, &shared, &mut v);
        v.sort_by_key(position);
        v
    };
    // Templates: the shared keys, their instances in file order.
    let mut templates: Vec<Vec<usize>> = Vec::new();
    let mut template_of: HashMap<usize, usize> = HashMap::new();
    for (c, &key) in key_of.iter().enumerate().take(root) {
        if shared(c) {
            let t = *template_of.entry(key).or_insert_with(|| {
                templates.push(vec![]);
                templates.len() - 1
            });
            templates[t].push(c);
        }
    }
    let tmpl = |c: usize| template_of[&key_of[c]];
    // Bodies with calls resolved into text and integer arguments, per
    // instance; resolved bottom-up (callees are deeper, so earlier keys).
    struct Resolved {
        name: String,
        /// For each parameter: its name and its value per instance.
        params: Vec<(String, Vec<i64>)>,
        /// hole index → parameter index, or None for a literal.
        hole_param: Vec<Option<usize>>,
        body: Vec<Tok>,
    }
    let mut resolved: Vec<Option<Resolved>> = (0..templates.len()).map(|_| None).collect();
    let mut order: Vec<usize> = (0..templates.len()).collect();
    order.sort_by_key(|&t| {
        std::cmp::Reverse(
            templates[t]
                .iter()
                .map(|&c| cands[c].path.len())
                .max()
                .unwrap_or(0),
        )
    });
    let mut used_names: Vec<String> = vec![model_name.to_string()];
    let instance_index =
        |c: usize, t: usize| templates[t].iter().position(|&x| x == c).unwrap_or(0);
    // Replaces call tokens by the callee's name and arguments.
    let resolve_calls =
        |toks: Vec<Tok>, resolved: &[Option<Resolved>]| -> Result<Vec<Tok>, String> {
            let mut out = Vec::new();
            for t in toks {
                match t {
                    Tok::Call(c, args) => {
                        let tid = tmpl(c);
                        let r = resolved[tid]
                            .as_ref()
                            .ok_or("a block used before it is defined")?;
                        let j = instance_index(c, tid);
                        out.push(Tok::Text(format!("{}({}", r.name, args.join(", "))));
                        for (k, (pname, vals)) in r.params.iter().enumerate() {
                            out.push(Tok::Arg {
                                prefix: if k == 0 && args.is_empty() { "" } else { ", " },
                                name: pname.clone(),
                                value: vals[j],
                                default: None,
                            });
                        }
                        out.push(Tok::Text(")".into()));
                    }
                    other => out.push(other),
                }
            }
            Ok(out)
        };
    for t in order {
        let inst = &templates[t];
        let bodies: Vec<Vec<Tok>> = inst
            .iter()
            .map(|&c| {
                resolve_calls(
                    emit_scope(
                        &expanded(c),
                        &info_for(c),
                        &input_names(c),
                        cands[c].output,
                        &l.nodes,
                        "    ",
                        loops,
                    ),
                    &resolved,
                )
            })
            .collect::<Result<_, _>>()?;
        let holes: Vec<(usize, String)> = bodies[0]
            .iter()
            .enumerate()
            .filter_map(|(i, t)| match t {
                Tok::Arg { name, .. } => Some((i, name.clone())),
                _ => None,
            })
            .collect();
        for b in &bodies[1..] {
            let same = b.len() == bodies[0].len()
                && b.iter().zip(&bodies[0]).all(|(x, y)| match (x, y) {
                    (Tok::Text(p), Tok::Text(q)) => p == q,
                    (Tok::Arg { prefix: p, .. }, Tok::Arg { prefix: q, .. }) => p == q,
                    (Tok::SeqOpen, Tok::SeqOpen)
                    | (Tok::SeqNext, Tok::SeqNext)
                    | (Tok::SeqClose, Tok::SeqClose) => true,
                    _ => false,
                });
            if !same {
                return Err("instances of one block differ".into());
            }
        }
        let value = |b: &[Tok], i: usize| match b[i] {
            Tok::Arg { value, .. } => value,
            _ => 0,
        };
        let mut params: Vec<(String, Vec<i64>)> = Vec::new();
        let mut hole_param = Vec::new();
        for (i, hname) in &holes {
            let (i, hname) = (*i, hname.as_str());
            let vals: Vec<i64> = bodies.iter().map(|b| value(b, i)).collect();
            if vals.iter().all(|&v| v == vals[0]) {
                hole_param.push(None);
            } else if let Some(k) = params.iter().position(|(_, v)| *v == vals) {
                hole_param.push(Some(k));
            } else {
                let mut name = hname.to_string();
                let mut s = 1;
                while params.iter().any(|(p, _)| *p == name) {
                    s += 1;
                    name = format!("{hname}{s}");
                }
                params.push((name, vals));
                hole_param.push(Some(params.len() - 1));
            }
        }
        // The block's name: its first instance's module name without digits.
        let p = &cands[inst[0]].path;
        let last = p
            .iter()
            .rev()
            .find(|s| !s.bytes().all(|b| b.is_ascii_digit()))
            .cloned()
            .unwrap_or_else(|| "unit".into());
        let mut base: String = last
            .trim_end_matches(|ch: char| ch.is_ascii_digit() || ch == '_')
            .to_string();
        if p.last()
            .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()))
        {
            base.push_str("_unit");
        }
        if base.is_empty() || !base.starts_with(|ch: char| ch.is_ascii_alphabetic()) {
            base = format!("b_{base}");
        }
        if reserved(&base) {
            base.push_str("_unit");
        }
        let mut name = base.clone();
        let mut s = 1;
        while used_names.contains(&name) {
            s += 1;
            name = format!("{base}_{s}");
        }
        used_names.push(name.clone());
        resolved[t] = Some(Resolved {
            name,
            params,
            hole_param,
            body: bodies[0].clone(),
        });
    }
    let render = |toks: &[Tok], subst: &dyn Fn(usize) -> Option<String>| -> String {
        let mut s = String::new();
        // Inside a sequence: the items written so far, then the current one.
        let mut seq: Option<Vec<String>> = None;
        let mut h = 0;
        for t in toks {
            let piece = match t {
                Tok::Text(x) => x.clone(),
                Tok::Arg {
                    prefix,
                    value,
                    default,
                    ..
                } => {
                    let p = match subst(h) {
                        Some(p) => format!("{prefix}{p}"),
                        None if Some(*value) == *default => String::new(),
                        None => format!("{prefix}{value}"),
                    };
                    h += 1;
                    p
                }
                Tok::Call(..) => "<unresolved>".into(),
                Tok::SeqOpen => {
                    seq = Some(vec![String::new()]);
                    continue;
                }
                Tok::SeqNext => {
                    if let Some(v) = &mut seq {
                        v.push(String::new());
                    }
                    continue;
                }
                Tok::SeqClose => {
                    let items = seq.take().unwrap_or_default();
                    let mut parts: Vec<String> = Vec::new();
                    let mut i = 0;
                    while i < items.len() {
                        let mut j = i + 1;
                        while j < items.len() && items[j] == items[i] {
                            j += 1;
                        }
                        parts.push(if j - i > 1 {
                            format!("{} * {}", j - i, items[i])
                        } else {
                            items[i].clone()
                        });
                        i = j;
                    }
                    s.push_str(&parts.join(", "));
                    s.push(']');
                    continue;
                }
            };
            match &mut seq {
                Some(v) => {
                    if let Some(last) = v.last_mut() {
                        last.push_str(&piece);
                    }
                }
                None => s.push_str(&piece),
            }
        }
        s
    };
    let mut text = String::from(header);
    // Blocks in the order they were resolved (callees first).
    let mut defs: Vec<(usize, String)> = Vec::new();
    for (t, r) in resolved.iter().enumerate() {
        let r = r.as_ref().ok_or("unresolved block")?;
        let mut params: Vec<String> = input_names(templates[t][0])
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        params.extend(r.params.iter().map(|(p, _)| p.clone()));
        let body = render(&r.body, &|h| {
            r.hole_param
                .get(h)
                .copied()
                .flatten()
                .map(|k| r.params[k].0.clone())
        });
        defs.push((
            templates[t]
                .iter()
                .map(|&c| cands[c].path.len())
                .max()
                .unwrap_or(0),
            format!("block {}({}) {{\n{}}}\n\n", r.name, params.join(", "), body),
        ));
    }
    defs.sort_by_key(|(d, _)| std::cmp::Reverse(*d));
    for (_, d) in defs {
        text.push_str(&d);
    }
    let dims: Vec<String> = l.nodes[0].shape.iter().map(|d| d.to_string()).collect();
    text.push_str(&format!(
        "model {model_name}(x: f32[N, {}]) {{\n",
        dims.join(", ")
    ));
    let body = resolve_calls(
        emit_scope(
            &expanded(root),
            &info_for(root),
            &input_names(root),
            l.output,
            &l.nodes,
            "    ",
            loops,
        ),
        &resolved,
    )?;
    text.push_str(&render(&body, &|_| None));
    text.push_str("}\n");
    Ok(text)
}
