//! Expansion: blocks, sequences, loops and labels are evaluated at compile
//! time into the graph IR, with every shape inferred and checked as it is made.

use super::ast::*;
use super::builtins::{self, Builtin};
use super::diagnostic::{closest, Diag};
use super::signature::Bound;
use super::source::{SourceMap, Span};
use crate::ir::graph::Graph;
use crate::ir::op::*;
use crate::ir::shape::{self, show};
use petgraph::stable_graph::NodeIndex;
use std::collections::HashMap;

/// Deepest chain of block calls.
pub const MAX_CALL_DEPTH: usize = 64;
/// Most iterations of one loop or copies of one repeated item.
pub const MAX_REPEAT: i64 = 100_000;
/// Most ops in one network.
pub const MAX_NODES: usize = 1_000_000;

#[derive(Clone, Debug)]
enum Value {
    Unit,
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Tensor(NodeIndex),
    /// A block or operator not yet called, with the arguments given so
    /// far (`bottleneck(groups: 32)`, or just `basic`).
    Block(Partial),
}

/// A block or operator as a value: called later with these arguments
/// ahead of the call's own.
#[derive(Clone, Debug)]
struct Partial {
    callee: String,
    args: Vec<BoundArg>,
}

/// An argument evaluated where it was written.
#[derive(Clone, Debug)]
struct BoundArg {
    name: Option<Ident>,
    value: Value,
    span: Span,
}

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Value::Unit => "nothing",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Bool(_) => "a boolean",
            Value::Str(_) => "a string",
            Value::Tensor(_) => "a tensor",
            Value::Block(_) => "a block",
        }
    }
}

struct Binding {
    name: String,
    value: Value,
    span: Span,
    used: bool,
    warn_unused: bool,
}

pub struct Expander<'a> {
    blocks: &'a HashMap<String, &'a BlockDef>,
    sources: &'a SourceMap,
    graph: Graph,
    scopes: Vec<Vec<Binding>>,
    /// Block call stack: (block name, call span).
    calls: Vec<(String, Span)>,
    path: Vec<String>,
    weight_defs: HashMap<String, Span>,
    pub warnings: Vec<Diag>,
}

type R<T> = Result<T, Diag>;

impl<'a> Expander<'a> {
    /// Expands `model` into a graph.
    pub fn run(
        model: &ModelDef,
        input: &Bound,
        blocks: &'a HashMap<String, &'a BlockDef>,
        sources: &'a SourceMap,
    ) -> Result<(Graph, Vec<Diag>), Diag> {
        let mut ex = Expander {
            blocks,
            sources,
            graph: Graph::new(
                &model.name.name,
                &input.input_name.name,
                input.shape.clone(),
            ),
            scopes: vec![Vec::new()],
            calls: Vec::new(),
            path: Vec::new(),
            weight_defs: HashMap::new(),
            warnings: Vec::new(),
        };
        let x = ex.graph.input;
        ex.bind(&input.input_name, Value::Tensor(x), false);
        // The input's size names (`H`, `W`) are integers in the model body.
        for (name, v) in &input.values {
            ex.bind(name, Value::Int(*v), false);
        }
        let result = ex.body(&model.body)?;
        ex.pop_scope();
        let Value::Tensor(y) = result else {
            return Err(
                Diag::error("res::type", model.body.span, "a model must end in a tensor")
                    .label(format!("this body ends in {}", result.type_name()))
                    .help("the last line of the model body is its output"),
            );
        };
        let shape = ex.graph.node(y).shape.clone();
        let out = ex.graph.add(Op::Output, "", shape, &[y]);
        ex.graph.output = out;
        let mut warnings = ex.warnings;
        warnings.sort_by_key(|d| (d.span.file, d.span.start));
        warnings.dedup_by_key(|d| (d.span, d.message.clone()));
        Ok((ex.graph, warnings))
    }

    // ---- scopes -------------------------------------------------------

    fn bind(&mut self, name: &Ident, value: Value, warn_unused: bool) {
        let scope = self.scopes.last_mut().expect("a scope is always open");
        scope.push(Binding {
            name: name.name.clone(),
            value,
            span: name.span,
            used: false,
            warn_unused,
        });
    }

    fn pop_scope(&mut self) {
        let Some(scope) = self.scopes.pop() else {
            return;
        };
        for b in scope {
            if b.warn_unused && !b.used && !b.name.starts_with('_') {
                self.warnings.push(
                    Diag::warning("res::unused", b.span, format!("unused value `{}`", b.name))
                        .label("defined here but never used")
                        .help(format!(
                            "remove it, or name it `_{}` to keep it quiet",
                            b.name
                        )),
                );
            }
        }
    }

    fn lookup(&mut self, name: &str, span: Span) -> R<Value> {
        let found = self
            .scopes
            .iter_mut()
            .rev()
            .flat_map(|s| s.iter_mut().rev())
            .find(|b| b.name == name);
        if let Some(b) = found {
            b.used = true;
            return Ok(b.value.clone());
        }
        let visible: Vec<String> = self
            .scopes
            .iter()
            .flatten()
            .map(|b| b.name.clone())
            .collect();
        let mut d = Diag::error("res::unknown_name", span, format!("unknown value `{name}`"))
            .label("not defined here");
        if let Some(c) = closest(name, visible.iter().map(String::as_str)) {
            d = d.help(format!("did you mean `{c}`?"));
        } else {
            d = d.help("values are defined by `let`, block parameters and `for` loops");
        }
        Err(d)
    }

    /// The value bound to `name`, if any, without marking it used.
    fn find(&self, name: &str) -> Option<&Value> {
        self.scopes
            .iter()
            .rev()
            .flat_map(|s| s.iter().rev())
            .find(|b| b.name == name)
            .map(|b| &b.value)
    }

    /// Whether `name` is an operator or a block.
    fn is_callable(&self, name: &str) -> bool {
        builtins::find(name).is_some() || self.blocks.contains_key(name)
    }

    fn assign(&mut self, name: &Ident, value: Value) -> R<()> {
        let found = self
            .scopes
            .iter_mut()
            .rev()
            .flat_map(|s| s.iter_mut().rev())
            .find(|b| b.name == name.name);
        match found {
            Some(b) => {
                b.value = value;
                Ok(())
            }
            None => Err(Diag::error(
                "res::unknown_name",
                name.span,
                format!("cannot assign to `{}`: it is not defined", name.name),
            )
            .label("not defined")
            .help(format!("introduce it first with `let {} = ...`", name.name))),
        }
    }

    // ---- statements -------------------------------------------------------

    /// Evaluates a body in a new scope (closed by the caller via pop_scope
    /// for blocks; here for nested bodies) and returns its last value.
    fn body(&mut self, body: &Body) -> R<Value> {
        self.scopes.push(Vec::new());
        let mut last = Value::Unit;
        let n = body.stmts.len();
        for (i, stmt) in body.stmts.iter().enumerate() {
            last = Value::Unit;
            match stmt {
                Stmt::Let { name, value } => {
                    let v = self.expr(value, None)?;
                    if let Value::Unit = v {
                        return Err(type_error(value.span, "a value", &v));
                    }
                    self.bind(name, v, true);
                }
                Stmt::Assign { name, value } => {
                    let v = self.expr(value, None)?;
                    if let Value::Unit = v {
                        return Err(type_error(value.span, "a value", &v));
                    }
                    self.assign(name, v)?;
                }
                Stmt::For(f) => self.for_loop(f)?,
                Stmt::Expr(e) => {
                    let v = self.expr(e, None)?;
                    if i + 1 < n {
                        if let Value::Tensor(_) = v {
                            self.warnings.push(
                                Diag::warning("res::unused", e.span, "unused value")
                                    .label("this tensor is computed and dropped")
                                    .help("bind it with `let`, or remove it"),
                            );
                        }
                    }
                    last = v;
                }
            }
        }
        Ok(last)
    }

    fn nested_body(&mut self, body: &Body) -> R<Value> {
        let v = self.body(body);
        self.pop_scope();
        v
    }

    fn for_loop(&mut self, f: &ForLoop) -> R<()> {
        let start = self.int(&f.start)?;
        let end = self.int(&f.end)?;
        // i128: the count of `i64::MIN..=i64::MAX` overflows i64.
        let count = end as i128 + i128::from(f.inclusive) - start as i128;
        let end = if f.inclusive {
            end.saturating_add(1)
        } else {
            end
        };
        if count > MAX_REPEAT as i128 {
            return Err(
                Diag::error("res::too_large", f.span, "loop runs too many times")
                    .label(format!("{count} iterations"))
                    .help(format!("at most {MAX_REPEAT} iterations are allowed")),
            );
        }
        for i in start..end {
            self.scopes.push(Vec::new());
            self.bind(&f.var, Value::Int(i), false);
            let r = self.nested_body(&f.body);
            self.pop_scope();
            if let (Value::Tensor(_), Some(Stmt::Expr(e))) = (r?, f.body.stmts.last()) {
                self.warnings.push(
                    Diag::warning("res::unused", e.span, "unused value")
                        .label("a loop body's last tensor is dropped")
                        .help("assign it to a value defined before the loop, e.g. `x = x |> ...`"),
                );
            }
        }
        Ok(())
    }

    // ---- expressions ------------------------------------------------------

    fn int(&mut self, e: &Expr) -> R<i64> {
        match self.expr(e, None)? {
            Value::Int(v) => Ok(v),
            v => Err(type_error(e.span, "an integer", &v)),
        }
    }

    fn expr(&mut self, e: &Expr, input: Option<(Value, Span)>) -> R<Value> {
        let span = e.span;
        match &e.kind {
            ExprKind::Int(v) => Ok(Value::Int(*v)),
            ExprKind::Float(v) => Ok(Value::Float(*v)),
            ExprKind::Bool(v) => Ok(Value::Bool(*v)),
            ExprKind::Str(s) => Ok(Value::Str(self.format(s)?)),
            ExprKind::Var(name) => {
                if self.find(name).is_none() && self.is_callable(name) {
                    return Ok(Value::Block(Partial {
                        callee: name.clone(),
                        args: Vec::new(),
                    }));
                }
                self.lookup(name, span)
            }
            ExprKind::Field(base, field) => {
                let v = self.expr(base, None)?;
                let Value::Tensor(t) = v else {
                    return Err(type_error(base.span, "a tensor", &v));
                };
                let shape = &self.graph.node(t).shape;
                let axis = match field.name.as_str() {
                    "channels" | "features" => 0,
                    "height" => 1,
                    "width" => 2,
                    _ => {
                        return Err(Diag::error(
                            "res::unknown_name",
                            field.span,
                            format!("tensors have no `.{}`", field.name),
                        )
                        .label("unknown field")
                        .help("a tensor's static sizes are `.channels`, `.height` and `.width`"))
                    }
                };
                match shape.get(axis) {
                    Some(&d) => Ok(Value::Int(d as i64)),
                    None => Err(Diag::error(
                        "res::shape",
                        field.span,
                        format!("a tensor {} has no `.{}`", show(shape), field.name),
                    )
                    .label("no such axis")),
                }
            }
            ExprKind::Unary(op, inner) => {
                let v = self.expr(inner, None)?;
                match (op, v) {
                    (UnOp::Neg, Value::Int(i)) => {
                        Ok(Value::Int(i.checked_neg().ok_or_else(|| overflow(span))?))
                    }
                    (UnOp::Neg, Value::Float(f)) => Ok(Value::Float(-f)),
                    (UnOp::Not, Value::Bool(b)) => Ok(Value::Bool(!b)),
                    (UnOp::Neg, v) => Err(type_error(inner.span, "a number", &v)),
                    (UnOp::Not, v) => Err(type_error(inner.span, "a boolean", &v)),
                }
            }
            ExprKind::Binary(op, a, b) => self.binary(*op, a, b, span),
            ExprKind::If { cond, then, els } => {
                let c = match self.expr(cond, None)? {
                    Value::Bool(c) => c,
                    v => return Err(type_error(cond.span, "a boolean condition", &v)),
                };
                if c {
                    self.nested_body(then)
                } else {
                    match els.as_deref() {
                        None => Ok(Value::Unit),
                        Some(Else::If(e)) => self.expr(e, None),
                        Some(Else::Body(b)) => self.nested_body(b),
                    }
                }
            }
            ExprKind::Stage(stage) => self.stage(stage, input, None),
            ExprKind::Pipe(base, stages) => {
                let mut v = self.expr(base, None)?;
                let mut span = base.span;
                for s in stages {
                    v = self.stage(s, Some((v, span)), None)?;
                    span = s.span;
                }
                Ok(v)
            }
        }
    }

    fn format(&mut self, s: &FormatString) -> R<String> {
        let mut out = String::new();
        for part in &s.parts {
            match part {
                StrPart::Lit(t) => out.push_str(t),
                StrPart::Expr(e) => match self.expr(e, None)? {
                    Value::Int(i) => out.push_str(&i.to_string()),
                    Value::Str(t) => out.push_str(&t),
                    v => return Err(type_error(e.span, "an integer or a string", &v)),
                },
            }
        }
        Ok(out)
    }

    fn binary(&mut self, op: BinOp, a: &Expr, b: &Expr, span: Span) -> R<Value> {
        // Short-circuit so `stride != 1 || x.channels != planes` reads naturally.
        if matches!(op, BinOp::And | BinOp::Or) {
            let l = match self.expr(a, None)? {
                Value::Bool(l) => l,
                v => return Err(type_error(a.span, "a boolean", &v)),
            };
            if (op == BinOp::Or) == l {
                return Ok(Value::Bool(l));
            }
            return match self.expr(b, None)? {
                Value::Bool(r) => Ok(Value::Bool(r)),
                v => Err(type_error(b.span, "a boolean", &v)),
            };
        }
        let l = self.expr(a, None)?;
        let r = self.expr(b, None)?;
        match (l, r) {
            (Value::Tensor(x), Value::Tensor(y)) if matches!(op, BinOp::Add | BinOp::Mul) => {
                let name = self.path.join(".");
                // Underline the operator itself so the operand labels do not overlap it.
                let text = &self.sources.file(a.span.file).text;
                let between = text
                    .get(a.span.end as usize..b.span.start as usize)
                    .unwrap_or("");
                let symbol = if op == BinOp::Add { '+' } else { '*' };
                let at_op = between.find(symbol).map_or(span, |i| {
                    let at = a.span.end as usize + i;
                    Span::new(a.span.file, at, at + 1)
                });
                if op == BinOp::Mul {
                    return self.mul(name, x, y, at_op, &[a.span, b.span]);
                }
                self.make(Op::Add, name, &[x, y], at_op, &[a.span, b.span])
            }
            (Value::Int(x), Value::Int(y)) => {
                let v = match op {
                    BinOp::Add => x.checked_add(y),
                    BinOp::Sub => x.checked_sub(y),
                    BinOp::Mul => x.checked_mul(y),
                    BinOp::Div | BinOp::Rem => {
                        if y == 0 {
                            return Err(Diag::error("res::arith", b.span, "division by zero")
                                .label("this is 0"));
                        }
                        if op == BinOp::Div {
                            x.checked_div(y)
                        } else {
                            x.checked_rem(y)
                        }
                    }
                    BinOp::Eq => return Ok(Value::Bool(x == y)),
                    BinOp::Ne => return Ok(Value::Bool(x != y)),
                    BinOp::Lt => return Ok(Value::Bool(x < y)),
                    BinOp::Le => return Ok(Value::Bool(x <= y)),
                    BinOp::Gt => return Ok(Value::Bool(x > y)),
                    BinOp::Ge => return Ok(Value::Bool(x >= y)),
                    BinOp::And | BinOp::Or => unreachable!("handled above"),
                };
                v.map(Value::Int).ok_or_else(|| overflow(span))
            }
            (Value::Float(x), Value::Float(y)) => float_op(op, x, y, span),
            (Value::Int(x), Value::Float(y)) => float_op(op, x as f64, y, span),
            (Value::Float(x), Value::Int(y)) => float_op(op, x, y as f64, span),
            (Value::Bool(x), Value::Bool(y)) if matches!(op, BinOp::Eq | BinOp::Ne) => {
                Ok(Value::Bool((x == y) == (op == BinOp::Eq)))
            }
            (Value::Str(x), Value::Str(y)) if matches!(op, BinOp::Eq | BinOp::Ne) => {
                Ok(Value::Bool((x == y) == (op == BinOp::Eq)))
            }
            (l, r) => Err(Diag::error(
                "res::type",
                span,
                format!(
                    "`{}` cannot combine {} and {}",
                    op.symbol(),
                    l.type_name(),
                    r.type_name()
                ),
            )
            .label("here")
            .also(a.span, l.type_name())
            .also(b.span, r.type_name())
            .help(
                if matches!(l, Value::Tensor(_)) || matches!(r, Value::Tensor(_)) {
                    "tensors only support `+` with another tensor of the same shape"
                } else {
                    "arithmetic works on integers and numbers, comparisons on like values"
                },
            )),
        }
    }

    // ---- stages: calls and sequences ---------------------------------------

    /// Runs a stage with an optional piped input. `label_override` is the
    /// positional name a sequence gives an unlabelled item.
    fn stage(
        &mut self,
        stage: &Stage,
        input: Option<(Value, Span)>,
        label_override: Option<String>,
    ) -> R<Value> {
        let label = match &stage.label {
            Some(l) => {
                let text = self.format(&l.text)?;
                if text.is_empty() || text.split('.').any(str::is_empty) {
                    return Err(Diag::error("res::label", l.span, "invalid label")
                        .label(format!("`{text}` is not a valid parameter path"))
                        .help("labels are names such as `conv1`, `layer1` or \"denselayer{i}\""));
                }
                Some(text)
            }
            None => label_override,
        };
        match &stage.kind {
            // A call's arguments are evaluated outside its label; the label
            // is pushed once they are bound.
            StageKind::Call(call) => self.call(call, input, label),
            StageKind::If(e) => self.if_stage(e, input, label),
            StageKind::Sequence(items) => {
                let pushed = label.is_some();
                self.path.extend(label);
                let r = self.sequence(items, input, stage.span);
                if pushed {
                    self.path.pop();
                }
                r
            }
        }
    }

    /// `x |> if c { stage } else { stage }`: the taken branch's statements
    /// run, and its last one, a call or a sequence (or a pipeline starting
    /// with one), takes the piped value.
    fn if_stage(
        &mut self,
        e: &Expr,
        input: Option<(Value, Span)>,
        label: Option<String>,
    ) -> R<Value> {
        let ExprKind::If { cond, then, els } = &e.kind else {
            unreachable!("parser: an if stage holds an if")
        };
        let c = match self.expr(cond, None)? {
            Value::Bool(c) => c,
            v => return Err(type_error(cond.span, "a boolean condition", &v)),
        };
        let body = match (c, els.as_deref()) {
            (true, _) => then,
            (false, Some(Else::If(inner))) => return self.if_stage(inner, input, label),
            (false, Some(Else::Body(b))) => b,
            (false, None) => {
                return Err(Diag::error(
                    "res::type",
                    e.span,
                    "an `if` used as a stage needs an `else`",
                )
                .label("the condition is false and there is no `else`")
                .help("add `else { identity() }` to pass the value through unchanged"))
            }
        };
        let Some((Stmt::Expr(last), rest)) = body.stmts.split_last() else {
            return Err(branch_not_a_stage(body.span));
        };
        self.scopes.push(Vec::new());
        let r = (|| {
            for stmt in rest {
                match stmt {
                    Stmt::Let { name, value } => {
                        let v = self.expr(value, None)?;
                        self.bind(name, v, true);
                    }
                    Stmt::Assign { name, value } => {
                        let v = self.expr(value, None)?;
                        self.assign(name, v)?;
                    }
                    Stmt::For(f) => self.for_loop(f)?,
                    Stmt::Expr(x) => {
                        self.expr(x, None)?;
                    }
                }
            }
            match &last.kind {
                ExprKind::Stage(s) => self.stage(s, input, label),
                ExprKind::Pipe(base, stages) => {
                    let ExprKind::Stage(first) = &base.kind else {
                        return Err(branch_not_a_stage(last.span));
                    };
                    let mut v = self.stage(first, input, label)?;
                    let mut span = base.span;
                    for s in stages {
                        v = self.stage(s, Some((v, span)), None)?;
                        span = s.span;
                    }
                    Ok(v)
                }
                ExprKind::If { .. } => self.if_stage(last, input, label),
                _ => Err(branch_not_a_stage(last.span)),
            }
        })();
        self.pop_scope();
        r
    }

    fn sequence(
        &mut self,
        items: &[SeqItem],
        input: Option<(Value, Span)>,
        span: Span,
    ) -> R<Value> {
        let Some((mut v, in_span)) = input else {
            return Err(
                Diag::error("res::sequence", span, "a sequence needs an input")
                    .label("nothing flows into this sequence")
                    .help("pipe a tensor into it: `x |> [conv(64, k: 3), batchnorm()]`"),
            );
        };
        let mut pos = 0usize;
        for item in items {
            let count = match &item.count {
                None => 1,
                Some(c) => {
                    let n = self.int(c)?;
                    if !(0..=MAX_REPEAT).contains(&n) {
                        return Err(Diag::error("res::bad_size", c.span, "invalid repeat count")
                            .label(format!("{n} copies"))
                            .help(format!("a repeat count is from 0 to {MAX_REPEAT}")));
                    }
                    n
                }
            };
            for _ in 0..count {
                v = self.stage(&item.stage, Some((v, in_span)), Some(pos.to_string()))?;
                pos += 1;
            }
        }
        Ok(v)
    }

    fn call(
        &mut self,
        call: &Call,
        input: Option<(Value, Span)>,
        label: Option<String>,
    ) -> R<Value> {
        let depth = self.path.len();
        let r = match self.find(&call.name.name).cloned() {
            // A parameter or `let` holding a block: call it.
            Some(Value::Block(p)) => {
                self.lookup(&call.name.name, call.name.span)?;
                self.call_named(&p.callee, &p.args, call, input, label)
            }
            Some(v) if !self.is_callable(&call.name.name) => Err(Diag::error(
                "res::type",
                call.name.span,
                format!("`{}` is {}, not a block", call.name.name, v.type_name()),
            )
            .label("called here")
            .help(format!(
                "a block parameter takes a block, such as `basic` or `bottleneck(groups: 32)`; `{}` was given {}",
                call.name.name,
                v.type_name()
            ))),
            _ => self.call_named(&call.name.name.clone(), &[], call, input, label),
        };
        self.path.truncate(depth);
        r
    }

    /// Calls the block or operator `callee` with `pre` (a block value's
    /// arguments) ahead of `call`'s. A call with no tensor in it (no piped
    /// input, no positional argument, the first parameter not named) is a
    /// block value: `bottleneck(groups: 32)` passed to a layer block.
    fn call_named(
        &mut self,
        callee: &str,
        pre: &[BoundArg],
        call: &Call,
        input: Option<(Value, Span)>,
        label: Option<String>,
    ) -> R<Value> {
        let first = match (builtins::find(callee), self.blocks.get(callee)) {
            (Some(b), _) => b.params.first().map(|p| p.name),
            (None, Some(def)) => def.params.first().map(|p| p.name.name.as_str()),
            (None, None) => return Err(self.unknown_callee(call)),
        };
        let partial = input.is_none()
            && label.is_none()
            && pre.iter().all(|a| a.name.is_some())
            && call.args.iter().all(|a| a.name.is_some())
            && first.is_some_and(|f| {
                !pre.iter()
                    .any(|a| a.name.as_ref().is_some_and(|n| n.name == f))
                    && !call
                        .args
                        .iter()
                        .any(|a| a.name.as_ref().is_some_and(|n| n.name == f))
            });
        if partial {
            let mut args = pre.to_vec();
            for a in &call.args {
                let value = self.expr(&a.value, None)?;
                args.push(BoundArg {
                    name: a.name.clone(),
                    value,
                    span: a.value.span,
                });
            }
            return Ok(Value::Block(Partial {
                callee: callee.to_string(),
                args,
            }));
        }
        if let Some(b) = builtins::find(callee) {
            self.builtin(b, pre, call, input, label)
        } else {
            let block = self.blocks[callee];
            self.call_block(block, pre, call, input, label)
        }
    }

    fn unknown_callee(&self, call: &Call) -> Diag {
        let names: Vec<&str> = builtins::BUILTINS
            .iter()
            .map(|b| b.name)
            .chain(self.blocks.keys().map(String::as_str))
            .collect();
        let d = Diag::error(
            "res::unknown_block",
            call.name.span,
            format!("unknown block or operator `{}`", call.name.name),
        )
        .label("not defined");
        match closest(&call.name.name, names) {
            Some(c) => d.help(format!("did you mean `{c}`?")),
            None => d.help("define it with `block name(x, ...) { ... }`, `use` a file that does, or see docs/language.md for the operators"),
        }
    }

    fn call_block(
        &mut self,
        def: &BlockDef,
        pre: &[BoundArg],
        call: &Call,
        input: Option<(Value, Span)>,
        label: Option<String>,
    ) -> R<Value> {
        let name = &def.name.name;
        if self.calls.iter().any(|(n, _)| n == name) {
            let chain: Vec<&str> = self.calls.iter().map(|(n, _)| n.as_str()).collect();
            return Err(Diag::error("res::recursive", call.span, format!("block `{name}` calls itself"))
                .label("recursive call")
                .also(def.name.span, "defined here")
                .help(format!(
                    "call chain: {} -> {name}; blocks are expanded at compile time, so recursion never ends: use a `for` loop or `n * item` in a sequence",
                    chain.join(" -> ")
                )));
        }
        if self.calls.len() >= MAX_CALL_DEPTH {
            return Err(
                Diag::error("res::too_deep", call.span, "blocks nested too deep")
                    .label(format!("more than {MAX_CALL_DEPTH} nested block calls")),
            );
        }
        // Bind arguments in the caller's scope, defaults in the callee's.
        let params: Vec<(&str, Option<&Expr>)> = def
            .params
            .iter()
            .map(|p| (p.name.name.as_str(), p.default.as_ref()))
            .collect();
        let given = self.bind_args(
            &params,
            false,
            false,
            pre,
            call,
            input,
            &format!("block `{name}`"),
        )?;
        self.path.extend(label); // `call` pops it
        let saved = std::mem::replace(&mut self.scopes, vec![Vec::new()]);
        self.calls.push((name.clone(), call.span));
        let result = (|| {
            for (p, g) in def.params.iter().zip(given) {
                let v = match g {
                    Some((v, _)) => v,
                    None => match &p.default {
                        Some(d) => self.expr(d, None)?,
                        None => {
                            return Err(Diag::error(
                                "res::arguments",
                                call.span,
                                format!("missing argument `{}` of block `{name}`", p.name.name),
                            )
                            .label(format!("`{}` is not given", p.name.name))
                            .also(p.name.span, "declared here")
                            .help(format!(
                                "pass it by position or as `{}: value`",
                                p.name.name
                            )))
                        }
                    },
                };
                self.bind(&p.name, v, false);
            }
            let v = self.body(&def.body)?;
            self.pop_scope();
            Ok(v)
        })();
        self.calls.pop();
        self.scopes = saved;
        let v = result.map_err(|mut d| {
            if d.notes.len() < 4 {
                d.notes.push(format!(
                    "in block `{name}`, called at {}",
                    self.sources.location(call.span)
                ));
            }
            d
        })?;
        match v {
            Value::Tensor(_) => Ok(v),
            v => Err(Diag::error(
                "res::type",
                def.body.span,
                format!("block `{name}` must end in a tensor"),
            )
            .label(format!("this body ends in {}", v.type_name()))
            .help("the last line of a block is its result")),
        }
    }

    /// Binds positional (the piped input first) and named arguments to
    /// parameters. Returns, per parameter, the value and its span if given.
    #[allow(clippy::type_complexity)]
    #[allow(clippy::too_many_arguments)]
    fn bind_args(
        &mut self,
        params: &[(&str, Option<&Expr>)],
        builtin_names: bool,
        variadic: bool,
        pre: &[BoundArg],
        call: &Call,
        input: Option<(Value, Span)>,
        what: &str,
    ) -> R<Vec<Option<(Value, Span)>>> {
        let mut given: Vec<Option<(Value, Span)>> = vec![None; params.len()];
        let mut positional: Vec<(Value, Span)> = Vec::new();
        if let Some(v) = input {
            positional.push(v);
        }
        // A block value's arguments come first: its positional ones after
        // the piped input, its named ones as if written in the call.
        let mut named_pre = Vec::new();
        for a in pre {
            match &a.name {
                None => positional.push((a.value.clone(), a.span)),
                Some(n) => named_pre.push((n, a.value.clone(), a.span)),
            }
        }
        let mut named = Vec::new();
        for arg in &call.args {
            match &arg.name {
                None => {
                    if !named.is_empty() {
                        return Err(Diag::error(
                            "res::arguments",
                            arg.value.span,
                            "positional argument after a named one",
                        )
                        .label("move this before the named arguments")
                        .help("positional arguments come first, then `name: value` ones"));
                    }
                    positional.push((self.expr(&arg.value, None)?, arg.value.span));
                }
                Some(n) => named.push((n, arg)),
            }
        }
        let mut extra = Vec::new();
        for (i, (v, s)) in positional.into_iter().enumerate() {
            if i < params.len() {
                given[i] = Some((v, s));
            } else if variadic {
                extra.push((v, s));
            } else {
                return Err(Diag::error(
                    "res::arguments",
                    s,
                    format!("too many arguments: {what} takes at most {}", params.len()),
                )
                .label("unexpected argument")
                .help(format!(
                    "parameters: {}",
                    params.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
                )));
            }
        }
        let named: Vec<(&Ident, Option<&Arg>, Option<(Value, Span)>)> = named_pre
            .into_iter()
            .map(|(n, v, s)| (n, None, Some((v, s))))
            .chain(named.into_iter().map(|(n, a)| (n, Some(a), None)))
            .collect();
        for (n, arg, value) in named {
            // An operator also takes PyTorch's name for a parameter.
            let want = if builtin_names {
                builtins::canonical(&n.name)
            } else {
                n.name.as_str()
            };
            let Some(i) = params.iter().position(|p| p.0 == want) else {
                if builtin_names && builtins::INFERRED.contains(&n.name.as_str()) {
                    return Err(Diag::error(
                        "res::arguments",
                        n.span,
                        format!("{what} has no parameter `{}`", n.name),
                    )
                    .label("read off the input")
                    .help(format!(
                        "`{}` is the input tensor's own size here: leave it out",
                        n.name
                    )));
                }
                let mut d = Diag::error(
                    "res::arguments",
                    n.span,
                    format!("{what} has no parameter `{}`", n.name),
                )
                .label("unknown argument name");
                d = match closest(&n.name, params.iter().map(|p| p.0)) {
                    Some(c) => d.help(format!("did you mean `{c}`?")),
                    None => d.help(format!(
                        "parameters: {}",
                        params.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
                    )),
                };
                return Err(d);
            };
            if let Some((_, first)) = &given[i] {
                return Err(Diag::error(
                    "res::arguments",
                    n.span,
                    format!("argument `{}` given twice", n.name),
                )
                .label("second value")
                .also(*first, "first value")
                .help("the piped input `x |> f(...)` fills the first parameter"));
            }
            given[i] = match (value, arg) {
                (Some(v), _) => Some(v),
                (None, Some(arg)) => Some((self.expr(&arg.value, None)?, arg.value.span)),
                (None, None) => unreachable!("a named argument has a value or an expression"),
            };
        }
        given.extend(extra.into_iter().map(Some));
        Ok(given)
    }

    // ---- builtins -----------------------------------------------------------

    fn builtin(
        &mut self,
        b: &'static Builtin,
        pre: &[BoundArg],
        call: &Call,
        input: Option<(Value, Span)>,
        label: Option<String>,
    ) -> R<Value> {
        let params: Vec<(&str, Option<&Expr>)> = b.params.iter().map(|p| (p.name, None)).collect();
        let given = self.bind_args(
            &params,
            true,
            b.variadic,
            pre,
            call,
            input,
            &format!("`{}`", b.name),
        )?;
        self.path.extend(label); // `call` pops it
        let args = Args {
            b,
            call,
            values: given,
        };
        let name = self.path.join(".");
        let x = args.tensor(0)?;
        let op = match b.name {
            "conv" | "conv_transpose" => {
                let out = args.size("out")?;
                let k = args.size("k")?;
                let geom = ConvGeom {
                    out_channels: out,
                    kernel: [k, k],
                    stride: [args.size("stride")?; 2],
                    pad: [args.nonneg("pad")?; 2],
                    dilation: [args.size("dilation")?; 2],
                    groups: args.size("groups")?,
                };
                let bias = args.boolean("bias")?;
                if b.name == "conv" {
                    Op::Conv {
                        geom,
                        fused: Fused::with_bias(bias),
                    }
                } else {
                    Op::ConvTranspose {
                        geom,
                        output_padding: [args.nonneg("output_padding")?; 2],
                        fused: Fused::with_bias(bias),
                    }
                }
            }
            "batchnorm" => {
                let eps = args.float("eps")?;
                if !(eps > 0.0 && eps.is_finite()) {
                    return Err(args.bad("eps", "eps must be a positive number"));
                }
                Op::BatchNorm { eps }
            }
            "linear" => Op::Linear {
                out_features: args.size("out")?,
                fused: Fused::with_bias(args.boolean("bias")?),
            },
            "relu" => Op::Act(Activation::Relu),
            "relu6" => Op::Act(Activation::Relu6),
            "sigmoid" => Op::Act(Activation::Sigmoid),
            "leaky_relu" => Op::Act(Activation::LeakyRelu(args.float("slope")? as f32)),
            "add" => {
                let y = args.tensor(1)?;
                let spans: Vec<Span> = args.values.iter().flatten().map(|(_, s)| *s).collect();
                return self.make(Op::Add, name, &[x, y], call.name.span, &spans);
            }
            "mul" => {
                let y = args.tensor(1)?;
                let spans: Vec<Span> = args.values.iter().flatten().map(|(_, s)| *s).collect();
                return self.mul(name, x, y, call.name.span, &spans);
            }
            "concat" => {
                let mut xs = vec![x];
                for i in 1..args.values.len() {
                    xs.push(args.tensor(i)?);
                }
                let spans: Vec<Span> = args.values.iter().flatten().map(|(_, s)| *s).collect();
                return self.make(
                    Op::Concat { placed: vec![] },
                    name,
                    &xs,
                    call.name.span,
                    &spans,
                );
            }
            "maxpool" | "avgpool" => {
                let k = args.size("k")?;
                let stride = match args.get("stride") {
                    Some(_) => args.size("stride")?,
                    None => k,
                };
                let geom = PoolGeom {
                    kernel: [k, k],
                    stride: [stride; 2],
                    pad: [args.nonneg("pad")?; 2],
                    dilation: [if b.name == "maxpool" {
                        args.size("dilation")?
                    } else {
                        1
                    }; 2],
                    ceil_mode: args.boolean("ceil")?,
                };
                if b.name == "maxpool" {
                    Op::MaxPool(geom)
                } else {
                    Op::AvgPool {
                        geom,
                        count_include_pad: args.boolean("count_include_pad")?,
                    }
                }
            }
            "global_avgpool" => Op::GlobalAvgPool,
            "flatten" => Op::Flatten,
            "upsample" => {
                let scale = self.upsample_scale(&args, x)?;
                let mode = match args.string("mode")?.as_str() {
                    "nearest" => UpsampleMode::Nearest,
                    "bilinear" => UpsampleMode::Bilinear {
                        align_corners: args.boolean("align_corners")?,
                    },
                    other => {
                        return Err(args
                            .bad("mode", &format!("unknown upsample mode \"{other}\""))
                            .help("mode is \"nearest\" or \"bilinear\""))
                    }
                };
                Op::Upsample { scale, mode }
            }
            "softmax" => Op::Softmax,
            "identity" => Op::Identity,
            "dropout" => {
                let p = args.float("p")?;
                if !(0.0..1.0).contains(&p) {
                    return Err(args.bad("p", "dropout probability must be in [0, 1)"));
                }
                Op::Dropout { p }
            }
            "channel_pad" => Op::ChannelPad {
                out_channels: args.size("out")?,
                stride: args.size("stride")?,
            },
            other => unreachable!("builtin table and expander disagree on `{other}`"),
        };
        self.layer(op, name, x, call)
    }

    /// `upsample`'s scale per axis, as PyTorch's `F.interpolate` takes it:
    /// `scale` (an integer or any positive number: the output is
    /// `floor(in * scale)`, sampled at `1 / scale` per pixel) or `size` (an
    /// integer for both axes, or a tensor whose height and width to match:
    /// sampled at `in / out`). Whole factors stay `Scale::Whole`.
    fn upsample_scale(&self, args: &Args, x: NodeIndex) -> R<[Scale; 2]> {
        let shape = &self.graph.node(x).shape;
        let (h, w) = match shape.as_slice() {
            [_, h, w] => (*h, *w),
            // Not an image: the shape check names the input.
            _ => return Ok([Scale::Whole(1); 2]),
        };
        const MAX: usize = 1 << 24;
        let Some((size, _)) = args.get("size") else {
            let f = match args.value("scale")? {
                Value::Int(_) => return Ok([Scale::Whole(args.size("scale")?); 2]),
                Value::Float(f) => f,
                v => return Err(args.type_err("scale", "a number", &v)),
            };
            if f >= 1.0 && f <= MAX as f64 && f.fract() == 0.0 {
                return Ok([Scale::Whole(f as usize); 2]);
            }
            // PyTorch: floor(double(in) * scale), at least one pixel.
            let axis = |inp: usize| {
                let out = (inp as f64 * f).floor();
                if !(f > 0.0 && out >= 1.0 && out <= MAX as f64) {
                    return Err(args
                        .bad(
                            "scale",
                            &format!("`scale` {f} makes {inp} pixels {out}, outside 1..{MAX}"),
                        )
                        .help("the output of upsample has at least one pixel per axis"));
                }
                Ok(Scale::Ratio {
                    out: out as usize,
                    step: (1.0 / f) as f32,
                })
            };
            return Ok([axis(h)?, axis(w)?]);
        };
        if args.get("scale").is_some() {
            return Err(args
                .bad("size", "give `size` or `scale`, not both")
                .help("PyTorch's nn.Upsample takes one of size and scale_factor too"));
        }
        let (th, tw) = match size {
            Value::Int(s) if (1..=MAX as i64).contains(s) => (*s as usize, *s as usize),
            Value::Int(s) => {
                return Err(args
                    .bad("size", &format!("`size` must be in 1..{MAX}, found {s}"))
                    .help("`size` is the output's height and width"))
            }
            Value::Tensor(t) => match self.graph.node(*t).shape.as_slice() {
                [_, th, tw] => (*th, *tw),
                other => {
                    return Err(args
                        .bad(
                            "size",
                            &format!("a tensor {} has no height and width", show(other)),
                        )
                        .help("`size` takes an integer or an image tensor whose size to match"))
                }
            },
            v => return Err(args.type_err("size", "an integer or a tensor", v)),
        };
        let axis = |out: usize, inp: usize| {
            if out.is_multiple_of(inp) {
                Scale::Whole(out / inp)
            } else {
                // PyTorch: static_cast<float>(input_size) / output_size.
                Scale::Ratio {
                    out,
                    step: inp as f32 / out as f32,
                }
            }
        };
        Ok([axis(th, h), axis(tw, w)])
    }

    /// Makes an op with parameters (declaring its weights) or without.
    fn layer(&mut self, op: Op, name: String, x: NodeIndex, call: &Call) -> R<Value> {
        let xshape = self.graph.node(x).shape.clone();
        let wshapes = shape::param_shapes(&op, &xshape);
        // Check the shape first so the user sees the real problem, not a
        // missing label.
        let out = shape::infer(&op, &[&xshape]).map_err(|e| {
            let mut d = Diag::error("res::shape", call.span, e.message)
                .label(format!("input is {}", show(&xshape)));
            if let Some(h) = e.hint {
                d = d.help(h);
            }
            d
        })?;
        let mut operands = vec![x];
        if !wshapes.is_empty() {
            if name.is_empty() {
                return Err(Diag::error(
                    "res::unnamed",
                    call.span,
                    format!("`{}` has parameters but no name", call.name.name),
                )
                .label("unnamed layer")
                .help(format!(
                    "give it a label as PyTorch names the module, e.g. `conv1: {}(...)`, or put it in a sequence",
                    call.name.name
                )));
            }
            for (suffix, shape) in wshapes {
                let wname = format!("{name}.{suffix}");
                if let Some(first) = self.weight_defs.get(&wname) {
                    return Err(Diag::error(
                        "res::duplicate",
                        call.span,
                        format!("parameter `{wname}` is defined twice"),
                    )
                    .label("second definition")
                    .also(*first, "first definition")
                    .help("give the two layers different labels"));
                }
                self.weight_defs.insert(wname.clone(), call.span);
                shape::infer(&Op::Identity, &[&shape]).map_err(|e| {
                    Diag::error("res::too_large", call.span, e.message).label("this layer")
                })?;
                let w = self.graph.add(Op::Weight { name: wname }, "", shape, &[]);
                operands.push(w);
            }
        }
        self.push_node(op, name, out, &operands, call.span)
    }

    /// Makes a parameterless op over several tensors (add, concat).
    fn make(
        &mut self,
        op: Op,
        name: String,
        xs: &[NodeIndex],
        span: Span,
        arg_spans: &[Span],
    ) -> R<Value> {
        let shapes: Vec<Vec<usize>> = xs
            .iter()
            .map(|&x| self.graph.node(x).shape.clone())
            .collect();
        let refs: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
        let out = shape::infer(&op, &refs).map_err(|e| {
            let mut d = Diag::error("res::shape_mismatch", span, e.message.clone())
                .label("shapes disagree");
            for (s, sh) in arg_spans.iter().zip(&shapes) {
                d = d.also(*s, show(sh));
            }
            if let Some(h) = e.hint {
                d = d.help(h);
            }
            d
        })?;
        self.push_node(op, name, out, xs, span)
    }

    /// `x * y`: the per-channel factor (`[C, 1, 1]`) goes second, as the
    /// IR's `mul` takes it, whichever side it was written on.
    fn mul(
        &mut self,
        name: String,
        x: NodeIndex,
        y: NodeIndex,
        span: Span,
        arg_spans: &[Span],
    ) -> R<Value> {
        let shape = |n: NodeIndex| self.graph.node(n).shape.clone();
        let gate_first =
            shape(x).get(1..) == Some(&[1, 1][..]) && shape(y).get(1..) != Some(&[1, 1][..]);
        let op = Op::Mul {
            fused: Fused::default(),
        };
        // Swapped only where that is valid: a mismatch is reported in the
        // order it was written.
        if gate_first && shape::infer(&op, &[&shape(y), &shape(x)]).is_ok() {
            let swapped: Vec<Span> = arg_spans.iter().rev().copied().collect();
            return self.make(op, name, &[y, x], span, &swapped);
        }
        self.make(op, name, &[x, y], span, arg_spans)
    }

    fn push_node(
        &mut self,
        op: Op,
        name: String,
        shape: Vec<usize>,
        operands: &[NodeIndex],
        span: Span,
    ) -> R<Value> {
        if self.graph.g.node_count() >= MAX_NODES {
            return Err(Diag::error("res::too_large", span, "network too large")
                .label(format!("more than {MAX_NODES} operations"))
                .help("check repeat counts and loop bounds"));
        }
        let n = self.graph.add(op, name, shape, operands);
        Ok(Value::Tensor(n))
    }
}

/// Bound arguments of one builtin call, with typed getters whose errors
/// point at the offending argument.
struct Args<'c> {
    b: &'static Builtin,
    call: &'c Call,
    values: Vec<Option<(Value, Span)>>,
}

impl Args<'_> {
    fn index(&self, name: &str) -> usize {
        self.b
            .params
            .iter()
            .position(|p| p.name == name)
            .expect("builtin parameter exists")
    }

    fn get(&self, name: &str) -> Option<&(Value, Span)> {
        self.values[self.index(name)].as_ref()
    }

    fn bad(&self, name: &str, msg: &str) -> Diag {
        let span = self.get(name).map_or(self.call.span, |(_, s)| *s);
        Diag::error("res::arguments", span, msg.to_string())
            .label(format!("`{name}` of `{}`", self.b.name))
    }

    /// The value, or the default; `None` default means required.
    fn value(&self, name: &str) -> R<Value> {
        if let Some((v, _)) = self.get(name) {
            return Ok(v.clone());
        }
        use builtins::ParamDefault as D;
        let p = &self.b.params[self.index(name)];
        Ok(match p.default {
            D::Int(i) => Value::Int(i),
            D::Bool(b) => Value::Bool(b),
            D::Float(f) => Value::Float(f),
            D::Str(s) => Value::Str(s.to_string()),
            D::SameAs(other) => return self.value(other),
            D::Required => {
                return Err(Diag::error(
                    "res::arguments",
                    self.call.span,
                    format!("missing argument `{name}` of `{}`", self.b.name),
                )
                .label(format!("`{name}` is required"))
                .help(format!(
                    "`{}` takes {}",
                    self.b.name,
                    self.b
                        .params
                        .iter()
                        .map(|p| p.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        })
    }

    fn tensor(&self, i: usize) -> R<NodeIndex> {
        match &self.values.get(i) {
            Some(Some((Value::Tensor(t), _))) => Ok(*t),
            Some(Some((v, s))) => Err(type_error(*s, "a tensor", v)),
            _ => Err(Diag::error(
                "res::arguments",
                self.call.span,
                format!("`{}` needs an input tensor", self.b.name),
            )
            .label("no input")
            .help(format!(
                "pipe one in (`x |> {}(...)`) or pass it first",
                self.b.name
            ))),
        }
    }

    fn int(&self, name: &str) -> R<i64> {
        match self.value(name)? {
            Value::Int(i) => Ok(i),
            v => Err(self.type_err(name, "an integer", &v)),
        }
    }

    /// A size that must be at least 1.
    fn size(&self, name: &str) -> R<usize> {
        let v = self.int(name)?;
        if v <= 0 || v > (1 << 24) {
            return Err(self
                .bad(name, &format!("`{name}` must be positive, found {v}"))
                .help("sizes, strides, dilations and groups are at least 1"));
        }
        Ok(v as usize)
    }

    fn nonneg(&self, name: &str) -> R<usize> {
        let v = self.int(name)?;
        if !(0..=(1 << 24)).contains(&v) {
            return Err(self
                .bad(name, &format!("`{name}` must not be negative, found {v}"))
                .help("padding is 0 or more"));
        }
        Ok(v as usize)
    }

    fn boolean(&self, name: &str) -> R<bool> {
        match self.value(name)? {
            Value::Bool(b) => Ok(b),
            v => Err(self.type_err(name, "`true` or `false`", &v)),
        }
    }

    fn float(&self, name: &str) -> R<f64> {
        match self.value(name)? {
            Value::Float(f) => Ok(f),
            Value::Int(i) => Ok(i as f64),
            v => Err(self.type_err(name, "a number", &v)),
        }
    }

    fn string(&self, name: &str) -> R<String> {
        match self.value(name)? {
            Value::Str(s) => Ok(s),
            v => Err(self.type_err(name, "a string", &v)),
        }
    }

    fn type_err(&self, name: &str, expected: &str, found: &Value) -> Diag {
        let span = self.get(name).map_or(self.call.span, |(_, s)| *s);
        type_error(span, expected, found)
            .help(format!("`{name}` of `{}` is {expected}", self.b.name))
    }
}

fn type_error(span: Span, expected: &str, found: &Value) -> Diag {
    let d = Diag::error(
        "res::type",
        span,
        format!("expected {expected}, found {}", found.type_name()),
    );
    match found {
        Value::Block(p) => d
            .label(format!("the block `{}`, not called", p.callee))
            .help(format!(
                "a block is a value until it is called on a tensor: `x |> {}(...)`",
                p.callee
            )),
        _ => d.label(format!("this is {}", found.type_name())),
    }
}

fn branch_not_a_stage(span: Span) -> Diag {
    Diag::error(
        "res::type",
        span,
        "a branch of an `if` used as a stage must end in a call or a sequence",
    )
    .label("the piped value goes through this")
    .help("end each branch in a call such as `avgpool(k: 2)`, a sequence `[...]`, or `identity()`")
}

fn overflow(span: Span) -> Diag {
    Diag::error("res::arith", span, "integer overflow").label("result does not fit in 64 bits")
}

fn float_op(op: BinOp, x: f64, y: f64, span: Span) -> R<Value> {
    Ok(match op {
        BinOp::Add => Value::Float(x + y),
        BinOp::Sub => Value::Float(x - y),
        BinOp::Mul => Value::Float(x * y),
        BinOp::Div => Value::Float(x / y),
        BinOp::Lt => Value::Bool(x < y),
        BinOp::Le => Value::Bool(x <= y),
        BinOp::Gt => Value::Bool(x > y),
        BinOp::Ge => Value::Bool(x >= y),
        BinOp::Eq => Value::Bool(x == y),
        BinOp::Ne => Value::Bool(x != y),
        _ => {
            return Err(Diag::error(
                "res::type",
                span,
                format!("`{}` does not apply to numbers", op.symbol()),
            )
            .label("here"))
        }
    })
}
