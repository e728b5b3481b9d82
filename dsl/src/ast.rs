//! The recipe AST: what the parser produces, every node with its span. Includes are resolved
//! before anyone sees it; nothing here is evaluated yet (blocks are expanded by the compiler).

use crate::source::Span;

/// A name as written, with where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// A dotted PyTorch-style module path: `layer1.0.conv1`.
#[derive(Clone, Debug, PartialEq)]
pub struct PathName {
    pub text: String,
    pub span: Span,
}

/// A whole recipe: its own items plus those of every file it includes, in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Recipe {
    pub models: Vec<Model>,
    pub blocks: Vec<Block>,
    pub weights: Vec<Weights>,
    pub quantize: Vec<Quantize>,
    pub qat: Vec<Settings>,
    pub train: Vec<Settings>,
    /// `rule` items (rewrite rules), in source order.
    pub rules: Vec<RuleDef>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    /// The path as written (relative paths resolve against the recipe's folder).
    pub path: String,
    /// The resolved path.
    pub resolved: std::path::PathBuf,
    pub span: Span,
    /// `{ strip: "module.", rename: "fc" -> "head" }` as written; `sections::weights` checks
    /// them into a `KeyRemap`.
    pub options: Vec<WeightsOption>,
}

/// One `name: value` of a `weights` line's braces.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightsOption {
    pub name: Ident,
    pub value: WeightsValue,
    /// The whole `name: value`.
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum WeightsValue {
    /// `strip: "module."` (or any other single value).
    Expr(Expr),
    /// `rename: "fc" -> "head"`.
    Rename { from: Expr, to: Expr },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub name: Ident,
    pub inputs: Vec<InputDecl>,
    pub stmts: Vec<Stmt>,
    pub outputs: Vec<PathName>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct InputDecl {
    pub name: Ident,
    pub dtype: Ident,
    pub dims: Vec<Dim>,
    /// What follows the type: `normalize(mean: ..., std: ...)` (checked by `sections`).
    pub option: Option<Call>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Dim {
    Fixed(u64, Span),
    Symbol(Ident),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub name: Ident,
    pub params: Vec<Param>,
    pub stmts: Vec<Stmt>,
    /// `output a` inside the block; without it the last statement is the block's result.
    pub outputs: Vec<PathName>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: Ident,
    pub default: Option<Expr>,
}

/// `target = value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Stmt {
    pub target: PathName,
    pub value: Expr,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    Neg,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

impl BinaryOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Rem => "%",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::And => "and",
            BinaryOp::Or => "or",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    List(Vec<Expr>),
    /// A reference to a value or tensor by name.
    Path(PathName),
    Call(Call),
    /// `downsample.0 = conv2d(...)` used as an expression: names the node it creates.
    Binding(Box<Stmt>),
    If {
        cond: Box<Expr>,
        then: Box<Expr>,
        otherwise: Box<Expr>,
    },
    Unary(UnaryOp, Box<Expr>),
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
}

/// `callee(args)`: an op or a block instance.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub callee: Ident,
    pub args: Vec<Arg>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}

impl Arg {
    pub fn span(&self) -> Span {
        match &self.name {
            Some(n) => n.span.to(self.value.span),
            None => self.value.span,
        }
    }
}

/// `key: value` in a section.
#[derive(Clone, Debug, PartialEq)]
pub struct KwArg {
    pub key: Ident,
    pub value: Expr,
}

/// A `qat { ... }` or `train { ... }` section, as written.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub entries: Vec<KwArg>,
    pub span: Span,
}

/// A `quantize { ... }` section, as written.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantize {
    pub entries: Vec<QuantizeEntry>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum QuantizeEntry {
    Scheme(Ident),
    /// `fuse conv2d -> batch_norm -> relu`
    Fuse {
        ops: Vec<Ident>,
        span: Span,
    },
    /// `fuse off conv2d_bn_relu`: a rule turned off.
    FuseOff {
        name: Ident,
        span: Span,
    },
    /// `observe activations: ...; weights: ...`
    Observe(Vec<QSpec>),
    Calibrate {
        source: CalibrationSource,
        args: Vec<KwArg>,
        span: Span,
    },
    Layer {
        selector: Selector,
        skip: Option<Span>,
        specs: Vec<QSpec>,
        span: Span,
    },
    /// `activations: ...` or `weights: ...` directly in the section: the defaults.
    Spec(QSpec),
    /// An entry that starts with an unknown word.
    Unknown {
        word: Ident,
        span: Span,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum CalibrationSource {
    File { path: String, span: Span },
    Call(Call),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Selector {
    /// `layer fc`: one node by its exact name.
    Name(PathName),
    /// `layer "layer1.*"`: a glob over node names.
    Glob { pattern: String, span: Span },
    /// `layer op(conv2d)`: every node of an op kind.
    Op(Ident),
}

impl Selector {
    pub fn span(&self) -> Span {
        match self {
            Selector::Name(p) => p.span,
            Selector::Glob { span, .. } => *span,
            Selector::Op(i) => i.span,
        }
    }
}

/// `weights: int8 per_channel symmetric minmax`.
#[derive(Clone, Debug, PartialEq)]
pub struct QSpec {
    pub key: Ident,
    pub words: Vec<QWord>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum QWord {
    Word(Ident),
    Number(f64, Span),
    Call(Call),
}

impl QWord {
    pub fn span(&self) -> Span {
        match self {
            QWord::Word(i) => i.span,
            QWord::Number(_, s) => *s,
            QWord::Call(c) => c.span,
        }
    }
}

/// `rule NAME { match PATTERN where CONSTRAINTS -> RESULT }`: a rewrite (fusion) rule. The
/// compiler checks what it means (`qc_compiler::rules`).
#[derive(Clone, Debug, PartialEq)]
pub struct RuleDef {
    pub name: Ident,
    /// The `///` (or `//`) comment lines directly above `rule`, without the slashes: the rule's
    /// identity, kept for `--stats` and help. Empty when there is none.
    pub doc: String,
    pub pattern: Pattern,
    pub constraints: Vec<Constraint>,
    pub result: RuleResult,
    pub span: Span,
}

/// `b = batch_norm(c = conv2d(?x))`: an op call, optionally bound to a name.
#[derive(Clone, Debug, PartialEq)]
pub struct Pattern {
    pub binding: Option<Ident>,
    pub op: OpClass,
    pub args: Vec<PatternArg>,
    pub span: Span,
}

/// `conv2d`, or `conv1d|conv2d`: the op names a pattern node (or a rule's result) stands for.
#[derive(Clone, Debug, PartialEq)]
pub struct OpClass {
    /// At least one name, in the order written.
    pub names: Vec<Ident>,
    /// From the first name to the last.
    pub span: Span,
}

impl OpClass {
    /// The class as written, without spaces: `conv1d|conv2d`.
    pub fn text(&self) -> String {
        self.names.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join("|")
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum PatternArg {
    /// `?x`: any input; the name is without the `?`, the span covers it.
    Var(Ident),
    Op(Pattern),
}

/// One condition after `where`.
#[derive(Clone, Debug, PartialEq)]
pub enum Constraint {
    /// `single_use(c)`.
    Predicate { name: Ident, arg: Ident, span: Span },
    /// `c.groups == 1`: an attribute of a bound node against a literal (a number or a boolean).
    Compare {
        binding: Ident,
        attr: Ident,
        op: BinaryOp,
        value: Expr,
        span: Span,
    },
}

impl Constraint {
    pub fn span(&self) -> Span {
        match self {
            Constraint::Predicate { span, .. } | Constraint::Compare { span, .. } => *span,
        }
    }
}

/// `conv2d(?x, fold: b, act: relu)`: what the matched root becomes.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleResult {
    /// The pattern node that becomes the fused op, by its op (or op class) as written.
    pub op: OpClass,
    /// The `?vars`, in order (names without `?`).
    pub inputs: Vec<Ident>,
    /// `key: value` arguments, in order.
    pub args: Vec<(Ident, Ident)>,
    pub span: Span,
}
