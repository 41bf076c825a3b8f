//! pest grammar → AST. Only syntax is checked here; names, types and shapes
//! are the expander's business.

use super::ast::*;
use super::diagnostic::Diag;
use super::source::Span;
use pest::iterators::Pair;
use pest::pratt_parser::{Assoc, Op, PrattParser};
use pest::Parser as _;
use std::sync::LazyLock;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/resnet.pest"]
struct ResParser;

/// Deepest bracket nesting accepted; deeper input is rejected before pest
/// sees it, so no input can overflow the parser's stack.
pub const MAX_NESTING: usize = 64;
/// Most binary operators in one expression (each adds a level to the tree).
pub const MAX_OPERATORS: usize = 1000;

static PRATT: LazyLock<PrattParser<Rule>> = LazyLock::new(|| {
    PrattParser::new()
        .op(Op::infix(Rule::or, Assoc::Left))
        .op(Op::infix(Rule::and, Assoc::Left))
        .op(Op::infix(Rule::eq, Assoc::Left)
            | Op::infix(Rule::ne, Assoc::Left)
            | Op::infix(Rule::lt, Assoc::Left)
            | Op::infix(Rule::le, Assoc::Left)
            | Op::infix(Rule::gt, Assoc::Left)
            | Op::infix(Rule::ge, Assoc::Left))
        .op(Op::infix(Rule::add, Assoc::Left) | Op::infix(Rule::sub, Assoc::Left))
        .op(Op::infix(Rule::mul, Assoc::Left)
            | Op::infix(Rule::div, Assoc::Left)
            | Op::infix(Rule::rem, Assoc::Left))
        .op(Op::prefix(Rule::neg) | Op::prefix(Rule::not))
});

/// Parses one file (`file` is its id in the source map).
pub fn parse_module(text: &str, file: u32) -> Result<Module, Diag> {
    check_nesting(text, file)?;
    let mut pairs =
        ResParser::parse(Rule::file, text).map_err(|e| syntax_error(e, text, file, 0))?;
    let p = Parser { file, offset: 0 };
    let mut module = Module::default();
    let Some(root) = pairs.next() else {
        return Ok(module);
    };
    for item in root.into_inner() {
        match item.as_rule() {
            Rule::use_decl => {
                let span = p.span(&item);
                let s = item
                    .into_inner()
                    .nth(1)
                    .map(|s| p.raw_string(s))
                    .unwrap_or_default();
                module.uses.push(Use { path: s, span });
            }
            Rule::block_def => module.blocks.push(p.block_def(item)?),
            Rule::model_def => module.models.push(p.model_def(item)?),
            _ => {}
        }
    }
    Ok(module)
}

fn check_nesting(text: &str, file: u32) -> Result<(), Diag> {
    let mut depth = 0usize;
    let mut in_comment = false;
    let mut in_string = false;
    for (i, c) in text.char_indices() {
        match c {
            '\n' => {
                in_comment = false;
                in_string = false;
            }
            _ if in_comment => {}
            '"' => in_string = !in_string,
            // `{` inside a string starts an interpolated expression.
            '{' if in_string => {}
            _ if in_string => {}
            '/' if text[i..].starts_with("//") => in_comment = true,
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(Diag::error(
                        "res::too_deep",
                        Span::new(file, i, i + 1),
                        format!("brackets nested more than {MAX_NESTING} deep"),
                    )
                    .label("too deep here")
                    .help("split the expression into `let` values or blocks"));
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn rule_name(r: &Rule) -> &'static str {
    match r {
        Rule::EOI => "end of file",
        Rule::use_decl => "`use`",
        Rule::block_def | Rule::kw_block => "`block`",
        Rule::model_def | Rule::kw_model => "`model`",
        Rule::ident | Rule::raw_ident => "a name",
        Rule::int => "an integer",
        Rule::float => "a number",
        Rule::string | Rule::string_inner => "a string",
        Rule::expr | Rule::operand | Rule::postfixed => "an expression",
        Rule::stage | Rule::call => "a call such as `relu()`",
        Rule::sequence => "a sequence `[...]`",
        Rule::tensor_type | Rule::dtype => "a tensor type such as `f32[N, 3, 224, 224]`",
        Rule::dim | Rule::size_param => "a dimension",
        Rule::param | Rule::params => "a parameter",
        Rule::model_input | Rule::model_inputs => "a model input such as `x: f32[N, 3, 32, 32]`",
        Rule::body => "`{`",
        Rule::range_op => "`..` or `..=`",
        Rule::label => "a label",
        Rule::named_arg | Rule::args => "an argument",
        Rule::seq_item => "a sequence item",
        Rule::pipe => "`|>`",
        Rule::let_stmt | Rule::kw_let => "`let`",
        Rule::for_stmt | Rule::kw_for => "`for`",
        Rule::assign_stmt => "an assignment",
        Rule::if_expr | Rule::kw_if => "`if`",
        Rule::kw_else => "`else`",
        Rule::kw_in => "`in`",
        Rule::or | Rule::and | Rule::eq | Rule::ne | Rule::lt | Rule::le | Rule::gt | Rule::ge => {
            "an operator"
        }
        Rule::add | Rule::sub | Rule::mul | Rule::div | Rule::rem => "an operator",
        _ => "something else",
    }
}

/// `text` is what pest parsed; its offsets are `offset` before the file's.
fn syntax_error(e: pest::error::Error<Rule>, text: &str, file: u32, offset: usize) -> Diag {
    use pest::error::{ErrorVariant, InputLocation};
    let (start, end) = match e.location {
        InputLocation::Pos(p) => (p, p),
        InputLocation::Span((a, b)) => (a, b),
    };
    let expected = match &e.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            let mut names: Vec<&str> = positives.iter().map(rule_name).collect();
            names.sort();
            names.dedup();
            names.retain(|n| *n != "something else");
            names
        }
        ErrorVariant::CustomError { .. } => Vec::new(),
    };
    let what = if expected.is_empty() {
        "unexpected input".to_string()
    } else {
        format!("expected {}", join_or(&expected))
    };
    // A character that looks like nothing (a no-break or zero-width space
    // pasted from a web page) or like a letter (`ö`) is named: the
    // expectation alone would point at what seems to be fine text.
    // (Pest stops at the start of the word that holds it.)
    let odd = text.get(start..).and_then(|t| {
        t.char_indices()
            .take_while(|&(_, c)| c.is_alphanumeric() || c == '_' || !c.is_ascii())
            .find(|&(_, c)| !c.is_ascii())
    });
    if let Some((i, (c, what))) = odd.and_then(|(i, c)| Some((i, unusual(c)?))) {
        let at = offset + start + i;
        return Diag::error(
            "res::syntax",
            Span::new(file, at, at + c.len_utf8()),
            format!("unexpected character U+{:04X}{what}", c as u32),
        )
        .label("here")
        .help("outside strings and comments a .res file is ASCII: delete the character or retype the text around it");
    }
    Diag::error(
        "res::syntax",
        Span::new(file, offset + start, offset + end.max(start)),
        "syntax error",
    )
    .label(what)
    .help("see docs/language.md for the grammar")
}

/// A non-ASCII character, with what it is where it is invisible.
fn unusual(c: char) -> Option<(char, &'static str)> {
    let what = match c {
        _ if c.is_ascii() => return None,
        '\u{feff}' => " (a byte-order mark)",
        '\u{200b}'..='\u{200d}' | '\u{2060}' => " (a zero-width character)",
        '\u{00a0}' | '\u{202f}' => " (a no-break space)",
        _ if c.is_whitespace() => " (a Unicode space)",
        _ => "",
    };
    Some((c, what))
}

fn join_or(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [a] => a.to_string(),
        [init @ .., last] => format!("{} or {}", init.join(", "), last),
    }
}

struct Parser {
    file: u32,
    /// Added to pest's byte offsets (non-zero when parsing a `{...}` inside a
    /// string on its own).
    offset: usize,
}

impl Parser {
    fn span(&self, p: &Pair<Rule>) -> Span {
        let s = p.as_span();
        Span::new(self.file, self.offset + s.start(), self.offset + s.end())
    }

    fn ident(&self, p: Pair<Rule>) -> Ident {
        Ident {
            name: p.as_str().to_string(),
            span: self.span(&p),
        }
    }

    fn raw_string(&self, p: Pair<Rule>) -> String {
        p.into_inner()
            .next()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default()
    }

    fn block_def(&self, p: Pair<Rule>) -> Result<BlockDef, Diag> {
        let mut it = p.into_inner().filter(|p| p.as_rule() != Rule::kw_block);
        let name = self.ident(it.next().expect("grammar: block name"));
        let mut params = Vec::new();
        let mut body = None;
        for q in it {
            match q.as_rule() {
                Rule::params => {
                    for param in q.into_inner() {
                        let mut pi = param.into_inner();
                        let name = self.ident(pi.next().expect("grammar: param name"));
                        let default = pi.next().map(|e| self.expr(e)).transpose()?;
                        params.push(Param { name, default });
                    }
                }
                Rule::body => body = Some(self.body(q)?),
                _ => {}
            }
        }
        Ok(BlockDef {
            name,
            params,
            body: body.expect("grammar: block body"),
        })
    }

    fn model_def(&self, p: Pair<Rule>) -> Result<ModelDef, Diag> {
        let mut it = p.into_inner().filter(|p| p.as_rule() != Rule::kw_model);
        let name = self.ident(it.next().expect("grammar: model name"));
        let mut inputs = Vec::new();
        let mut body = None;
        for q in it {
            match q.as_rule() {
                Rule::model_inputs => {
                    for inp in q.into_inner() {
                        let span = self.span(&inp);
                        let mut ii = inp.into_inner();
                        let name = self.ident(ii.next().expect("grammar: input name"));
                        let ty = ii.next().expect("grammar: input type");
                        let mut dims = Vec::new();
                        for d in ty.into_inner().filter(|d| d.as_rule() == Rule::dim) {
                            let inner = d.into_inner().next().expect("grammar: dim");
                            dims.push(match inner.as_rule() {
                                Rule::int => Dim::Fixed(self.int_value(&inner)?, self.span(&inner)),
                                _ => {
                                    let mut parts = inner.into_inner();
                                    let name =
                                        self.ident(parts.next().expect("grammar: size name"));
                                    let default = match parts.next() {
                                        Some(v) => Some((self.int_value(&v)?, self.span(&v))),
                                        None => None,
                                    };
                                    Dim::Symbol(name, default)
                                }
                            });
                        }
                        inputs.push(ModelInput { name, dims, span });
                    }
                }
                Rule::body => body = Some(self.body(q)?),
                _ => {}
            }
        }
        Ok(ModelDef {
            name,
            inputs,
            body: body.expect("grammar: model body"),
        })
    }

    fn int_value(&self, p: &Pair<Rule>) -> Result<i64, Diag> {
        p.as_str().parse::<i64>().map_err(|_| {
            Diag::error("res::number", self.span(p), "integer literal too large")
                .label("does not fit in 64 bits")
        })
    }

    fn body(&self, p: Pair<Rule>) -> Result<Body, Diag> {
        let span = self.span(&p);
        let stmts = p
            .into_inner()
            .map(|s| self.stmt(s))
            .collect::<Result<_, _>>()?;
        Ok(Body { stmts, span })
    }

    fn stmt(&self, p: Pair<Rule>) -> Result<Stmt, Diag> {
        Ok(match p.as_rule() {
            Rule::let_stmt | Rule::assign_stmt => {
                let is_let = p.as_rule() == Rule::let_stmt;
                let mut it = p.into_inner().filter(|q| q.as_rule() != Rule::kw_let);
                let name = self.ident(it.next().expect("grammar: binding name"));
                let value = self.expr(it.next().expect("grammar: binding value"))?;
                if is_let {
                    Stmt::Let { name, value }
                } else {
                    Stmt::Assign { name, value }
                }
            }
            Rule::for_stmt => {
                let span = self.span(&p);
                let mut it = p
                    .into_inner()
                    .filter(|q| !matches!(q.as_rule(), Rule::kw_for | Rule::kw_in));
                let var = self.ident(it.next().expect("grammar: loop var"));
                let start = self.expr(it.next().expect("grammar: loop start"))?;
                let inclusive = it.next().expect("grammar: range").as_str() == "..=";
                let end = self.expr(it.next().expect("grammar: loop end"))?;
                let body = self.body(it.next().expect("grammar: loop body"))?;
                Stmt::For(Box::new(ForLoop {
                    var,
                    start,
                    end,
                    inclusive,
                    body,
                    span,
                }))
            }
            _ => Stmt::Expr(self.expr(p)?),
        })
    }

    fn expr(&self, p: Pair<Rule>) -> Result<Expr, Diag> {
        let span = self.span(&p);
        let mut it = p.into_inner();
        let base = self.operand(it.next().expect("grammar: operand"))?;
        let stages = it.map(|s| self.stage(s)).collect::<Result<Vec<_>, _>>()?;
        if stages.is_empty() {
            Ok(base)
        } else {
            Ok(Expr {
                kind: ExprKind::Pipe(Box::new(base), stages),
                span,
            })
        }
    }

    fn operand(&self, p: Pair<Rule>) -> Result<Expr, Diag> {
        let ops = p
            .clone()
            .into_inner()
            .filter(|q| q.as_rule() != Rule::postfixed)
            .count();
        if ops > MAX_OPERATORS {
            return Err(
                Diag::error("res::too_deep", self.span(&p), "expression too long")
                    .label(format!("more than {MAX_OPERATORS} operators"))
                    .help("split the expression into `let` values"),
            );
        }
        PRATT
            .map_primary(|q| self.postfixed(q))
            .map_prefix(|op, rhs| {
                let rhs = rhs?;
                let span = self.span(&op).to(rhs.span);
                let op = if op.as_rule() == Rule::neg {
                    UnOp::Neg
                } else {
                    UnOp::Not
                };
                Ok(Expr {
                    kind: ExprKind::Unary(op, Box::new(rhs)),
                    span,
                })
            })
            .map_infix(|lhs, op, rhs| {
                let (lhs, rhs) = (lhs?, rhs?);
                let op = match op.as_rule() {
                    Rule::or => BinOp::Or,
                    Rule::and => BinOp::And,
                    Rule::eq => BinOp::Eq,
                    Rule::ne => BinOp::Ne,
                    Rule::lt => BinOp::Lt,
                    Rule::le => BinOp::Le,
                    Rule::gt => BinOp::Gt,
                    Rule::ge => BinOp::Ge,
                    Rule::add => BinOp::Add,
                    Rule::sub => BinOp::Sub,
                    Rule::mul => BinOp::Mul,
                    Rule::div => BinOp::Div,
                    _ => BinOp::Rem,
                };
                let span = lhs.span.to(rhs.span);
                Ok(Expr {
                    kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)),
                    span,
                })
            })
            .parse(p.into_inner())
    }

    fn postfixed(&self, p: Pair<Rule>) -> Result<Expr, Diag> {
        let mut it = p.into_inner();
        let mut e = self.primary(it.next().expect("grammar: primary"))?;
        for f in it {
            let span = e.span.to(self.span(&f));
            let name = self.ident(f.into_inner().next().expect("grammar: field"));
            e = Expr {
                kind: ExprKind::Field(Box::new(e), name),
                span,
            };
        }
        Ok(e)
    }

    fn primary(&self, p: Pair<Rule>) -> Result<Expr, Diag> {
        let span = self.span(&p);
        let kind = match p.as_rule() {
            Rule::int => ExprKind::Int(self.int_value(&p)?),
            Rule::float => ExprKind::Float(p.as_str().parse::<f64>().map_err(|_| {
                Diag::error("res::number", span, "invalid number").label("not a number")
            })?),
            Rule::boolean => ExprKind::Bool(p.as_str() == "true"),
            Rule::string => ExprKind::Str(self.format_string(p)?),
            Rule::ident => ExprKind::Var(p.as_str().to_string()),
            Rule::paren => return self.expr(p.into_inner().next().expect("grammar: paren")),
            Rule::if_expr => return self.if_expr(p),
            Rule::labelled | Rule::call | Rule::sequence => ExprKind::Stage(self.stage(p)?),
            r => unreachable!("grammar: unexpected primary {r:?}"),
        };
        Ok(Expr { kind, span })
    }

    fn if_expr(&self, p: Pair<Rule>) -> Result<Expr, Diag> {
        let span = self.span(&p);
        let mut it = p
            .into_inner()
            .filter(|q| !matches!(q.as_rule(), Rule::kw_if | Rule::kw_else));
        let cond = self.expr(it.next().expect("grammar: if cond"))?;
        let then = self.body(it.next().expect("grammar: if body"))?;
        let els = match it.next() {
            None => None,
            Some(q) if q.as_rule() == Rule::if_expr => Some(Box::new(Else::If(self.if_expr(q)?))),
            Some(q) => Some(Box::new(Else::Body(self.body(q)?))),
        };
        Ok(Expr {
            kind: ExprKind::If {
                cond: Box::new(cond),
                then,
                els,
            },
            span,
        })
    }

    /// `labelled`, `stage`, `call` or `sequence` pairs.
    fn stage(&self, p: Pair<Rule>) -> Result<Stage, Diag> {
        let span = self.span(&p);
        match p.as_rule() {
            Rule::call => Ok(Stage {
                label: None,
                kind: StageKind::Call(self.call(p)?),
                span,
            }),
            Rule::sequence => Ok(Stage {
                label: None,
                kind: StageKind::Sequence(self.sequence(p)?),
                span,
            }),
            Rule::if_expr => Ok(Stage {
                label: None,
                kind: StageKind::If(Box::new(self.if_expr(p)?)),
                span,
            }),
            _ => {
                let mut label = None;
                let mut kind = None;
                for q in p.into_inner() {
                    match q.as_rule() {
                        Rule::label => label = Some(self.label(q)?),
                        _ => kind = Some(self.stage(q)?.kind),
                    }
                }
                Ok(Stage {
                    label,
                    kind: kind.expect("grammar: stage body"),
                    span,
                })
            }
        }
    }

    fn label(&self, p: Pair<Rule>) -> Result<Label, Diag> {
        let inner = p.into_inner().next().expect("grammar: label");
        let span = self.span(&inner);
        let text = match inner.as_rule() {
            Rule::string => self.format_string(inner)?,
            _ => FormatString {
                parts: vec![StrPart::Lit(inner.as_str().to_string())],
            },
        };
        Ok(Label { text, span })
    }

    fn call(&self, p: Pair<Rule>) -> Result<Call, Diag> {
        let span = self.span(&p);
        let mut it = p.into_inner();
        let name = self.ident(it.next().expect("grammar: callee"));
        let mut args = Vec::new();
        if let Some(list) = it.next() {
            for a in list.into_inner() {
                if a.as_rule() == Rule::named_arg {
                    let mut ai = a.into_inner();
                    let name = self.ident(ai.next().expect("grammar: arg name"));
                    let value = self.expr(ai.next().expect("grammar: arg value"))?;
                    args.push(Arg {
                        name: Some(name),
                        value,
                    });
                } else {
                    args.push(Arg {
                        name: None,
                        value: self.expr(a)?,
                    });
                }
            }
        }
        Ok(Call { name, args, span })
    }

    fn sequence(&self, p: Pair<Rule>) -> Result<Vec<SeqItem>, Diag> {
        let mut items = Vec::new();
        for item in p.into_inner() {
            let span = self.span(&item);
            let mut count = None;
            let mut stage = None;
            for q in item.into_inner() {
                match q.as_rule() {
                    Rule::repeat_count => {
                        let c = q.into_inner().next().expect("grammar: count");
                        count = Some(self.primary(c)?);
                    }
                    _ => stage = Some(self.stage(q)?),
                }
            }
            items.push(SeqItem {
                count,
                stage: stage.expect("grammar: seq stage"),
                span,
            });
        }
        Ok(items)
    }

    /// Splits `"text{expr}text"` into parts; each `{...}` is parsed as an
    /// expression with spans pointing into the original file.
    fn format_string(&self, p: Pair<Rule>) -> Result<FormatString, Diag> {
        let inner = p.into_inner().next().expect("grammar: string body");
        let text = inner.as_str();
        let base = self.offset + inner.as_span().start();
        let mut parts = Vec::new();
        let mut rest = 0;
        while let Some(open) = text[rest..].find('{').map(|i| i + rest) {
            if open > rest {
                parts.push(StrPart::Lit(text[rest..open].to_string()));
            }
            let Some(close) = text[open..].find('}').map(|i| i + open) else {
                return Err(Diag::error(
                    "res::syntax",
                    Span::new(self.file, base + open, base + text.len()),
                    "unclosed `{` in string",
                )
                .label("this `{` is never closed")
                .help("labels interpolate with `{expr}`, e.g. \"denselayer{i}\""));
            };
            let src = &text[open + 1..close];
            let sub = Parser {
                file: self.file,
                offset: base + open + 1,
            };
            let mut pairs = ResParser::parse(Rule::expr, src)
                .map_err(|e| syntax_error(e, src, self.file, base + open + 1))?;
            let pair = pairs.next().expect("grammar: interpolated expr");
            let consumed = pair.as_span().end();
            let e = sub.expr(pair)?;
            if src[consumed..].trim() != "" {
                return Err(Diag::error(
                    "res::syntax",
                    Span::new(self.file, base + open, base + close + 1),
                    "invalid interpolation",
                )
                .label("expected one expression inside `{}`"));
            }
            parts.push(StrPart::Expr(e));
            rest = close + 1;
        }
        if rest < text.len() || parts.is_empty() {
            parts.push(StrPart::Lit(text[rest..].to_string()));
        }
        Ok(FormatString { parts })
    }
}
