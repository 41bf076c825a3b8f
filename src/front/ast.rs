//! The syntax tree of a `.res` file: what was written, with spans, before any
//! block is expanded or any shape is known.

use super::source::Span;

#[derive(Clone, Debug)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Clone, Debug, Default)]
pub struct Module {
    pub uses: Vec<Use>,
    pub blocks: Vec<BlockDef>,
    pub models: Vec<ModelDef>,
}

#[derive(Clone, Debug)]
pub struct Use {
    pub path: String,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct BlockDef {
    pub name: Ident,
    pub params: Vec<Param>,
    pub body: Body,
}

#[derive(Clone, Debug)]
pub struct Param {
    pub name: Ident,
    pub default: Option<Expr>,
}

#[derive(Clone, Debug)]
pub struct ModelDef {
    pub name: Ident,
    pub inputs: Vec<ModelInput>,
    pub body: Body,
}

#[derive(Clone, Debug)]
pub struct ModelInput {
    pub name: Ident,
    pub dims: Vec<Dim>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum Dim {
    /// A symbolic size such as `N` (the batch) or `H = 224` (a spatial
    /// size bound when the model is compiled, with an optional default).
    Symbol(Ident, Option<(i64, Span)>),
    Fixed(i64, Span),
}

#[derive(Clone, Debug)]
pub struct Body {
    pub stmts: Vec<Stmt>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum Stmt {
    Let { name: Ident, value: Expr },
    Assign { name: Ident, value: Expr },
    For(Box<ForLoop>),
    Expr(Expr),
}

#[derive(Clone, Debug)]
pub struct ForLoop {
    pub var: Ident,
    pub start: Expr,
    pub end: Expr,
    pub inclusive: bool,
    pub body: Body,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "||",
            BinOp::And => "&&",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Clone, Debug)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(FormatString),
    Var(String),
    Field(Box<Expr>, Ident),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    If {
        cond: Box<Expr>,
        then: Body,
        els: Option<Box<Else>>,
    },
    /// A call or a sequence, possibly labelled.
    Stage(Stage),
    /// `base |> stage |> stage ...`
    Pipe(Box<Expr>, Vec<Stage>),
}

#[derive(Clone, Debug)]
pub enum Else {
    If(Expr),
    Body(Body),
}

/// A string literal; `{expr}` parts are interpolated at expansion, which is
/// how `"denselayer{i}"` labels are spelled.
#[derive(Clone, Debug)]
pub struct FormatString {
    pub parts: Vec<StrPart>,
}

#[derive(Clone, Debug)]
pub enum StrPart {
    Lit(String),
    Expr(Expr),
}

#[derive(Clone, Debug)]
pub struct Label {
    pub text: FormatString,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Stage {
    pub label: Option<Label>,
    pub kind: StageKind,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum StageKind {
    Call(Call),
    Sequence(Vec<SeqItem>),
    /// An `if` (an `ExprKind::If`) whose taken branch ends in the stage
    /// the piped value goes through.
    If(Box<Expr>),
}

#[derive(Clone, Debug)]
pub struct Call {
    pub name: Ident,
    pub args: Vec<Arg>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}

#[derive(Clone, Debug)]
pub struct SeqItem {
    pub count: Option<Expr>,
    pub stage: Stage,
    pub span: Span,
}
