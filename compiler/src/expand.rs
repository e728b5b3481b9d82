//! Stage `parsed`: evaluates the recipe's model into the IR. Blocks are expanded with their
//! instance names as prefixes (so parameter keys are PyTorch's), values and conditions are
//! computed, names are resolved, and every node remembers the statement that made it.

use std::collections::{HashMap, HashSet};

use indexmap::IndexMap;
use qc_dsl::ast::{self, Arg, BinaryOp, Block, Call, Expr, ExprKind, Stmt, UnaryOp};
use qc_dsl::diag::did_you_mean;
use qc_dsl::{Diagnostic, Diagnostics, Loaded, Span};

use crate::ir::{Graph, Instance, Module, Node, NodeId, Origin, Param, Provenance, Stage};
use crate::ops::{Arity, Attr, Op, OP_NAMES};
use crate::types::{DType, Dim, TensorType};
use qc_runtime::normalize::Normalize;

/// Blocks may instantiate blocks; deeper than this is taken for unbounded recursion.
const MAX_BLOCK_DEPTH: usize = 64;

#[derive(Clone, Debug, PartialEq)]
enum Value {
    Tensor(NodeId),
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    List(Vec<Value>),
}

impl Value {
    fn describe(&self, g: &Graph) -> String {
        match self {
            Value::Tensor(n) => format!("the tensor `{}`", g.node(*n).name),
            Value::Int(v) => format!("the integer {v}"),
            Value::Float(v) => format!("the number {v}"),
            Value::Bool(v) => format!("the boolean {v}"),
            Value::Str(s) => format!("the string \"{s}\""),
            Value::List(_) => "a list".into(),
        }
    }
}

struct Scope<'a> {
    /// Prefix of every node made here: "" in the model, "layer1.0." inside that instance.
    prefix: String,
    vars: IndexMap<String, (Value, Span)>,
    /// The statements of this scope, to tell "defined later" from "never defined".
    stmts: &'a [Stmt],
    instances: Vec<Instance>,
}

struct Expander<'a> {
    graph: Graph,
    params: crate::ir::ParamStore,
    blocks: HashMap<&'a str, &'a Block>,
    diags: Diagnostics,
    names: HashSet<String>,
    depth: usize,
    /// Set by the first unbounded recursion: expansion stops there (a block that instantiates
    /// itself twice would otherwise take 2^depth steps to fail).
    recursion_hit: bool,
    sources: &'a qc_dsl::SourceMap,
    /// The checked sections: each input's `normalize(...)`.
    sections: &'a qc_dsl::sections::Sections,
}

/// Expands the recipe's model into a module at stage `parsed`.
pub fn expand(loaded: &Loaded) -> Result<Module, Vec<Diagnostic>> {
    let recipe = &loaded.recipe;
    let mut diags = Diagnostics::default();
    let mut blocks: HashMap<&str, &Block> = HashMap::new();
    for b in &recipe.blocks {
        if OP_NAMES.contains(&b.name.name.as_str()) {
            diags.push(
                Diagnostic::new(
                    "qc::block-shadows-op",
                    b.name.span,
                    format!("block `{}` has the name of a built-in op", b.name.name),
                )
                .label("block name")
                .help("rename the block; ops and blocks share one namespace"),
            );
        } else if let Some(prev) = blocks.get(b.name.name.as_str()) {
            diags.push(
                Diagnostic::new(
                    "qc::duplicate-block",
                    b.name.span,
                    format!("block `{}` is defined twice", b.name.name),
                )
                .label("second definition")
                .note(prev.name.span, "first defined here")
                .help("rename one of the blocks"),
            );
        } else {
            blocks.insert(&b.name.name, b);
        }
        let mut seen: HashMap<&str, Span> = HashMap::new();
        for p in &b.params {
            if let Some(prev) = seen.insert(&p.name.name, p.name.span) {
                diags.push(
                    Diagnostic::new(
                        "qc::duplicate-param",
                        p.name.span,
                        format!("block `{}` has two parameters named `{}`", b.name.name, p.name.name),
                    )
                    .label("second parameter")
                    .note(prev, "first here")
                    .help("rename one of the parameters"),
                );
            }
        }
    }
    let model = match recipe.models.as_slice() {
        [] => {
            let span = Span::new(0, 0);
            diags.push(
                Diagnostic::new("qc::no-model", span, "the recipe defines no model")
                    .label("expected `model NAME { ... }`")
                    .help("add a `model NAME { input x: f32[N, ...]  ...  output y }` section"),
            );
            return Err(diags.finish());
        }
        [m, rest @ ..] => {
            for extra in rest {
                diags.push(
                    Diagnostic::new(
                        "qc::many-models",
                        extra.name.span,
                        format!("a second model `{}`", extra.name.name),
                    )
                    .label("second model")
                    .note(m.name.span, "first model here")
                    .help("a recipe compiles one model: move the other into its own file, or make it a `block`"),
                );
            }
            m
        }
    };
    let mut ex = Expander {
        graph: Graph::default(),
        params: Default::default(),
        blocks,
        diags,
        names: HashSet::new(),
        depth: 0,
        recursion_hit: false,
        sources: &loaded.sources,
        sections: &loaded.sections,
    };
    ex.model(model);
    if !ex.diags.is_empty() {
        return Err(ex.diags.finish());
    }
    let source_name = loaded
        .sources
        .files()
        .first()
        .map(|f| f.name.clone())
        .unwrap_or_default();
    let source_name = std::path::Path::new(&source_name)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or(source_name);
    Ok(Module {
        name: model.name.name.clone(),
        graph: ex.graph,
        params: ex.params,
        stage: Stage::Parsed,
        source_name,
        rewrite: None,
        calibrated_for_accuracy: true,
        calibration_note: None,
        program: None,
    })
}

impl<'a> Expander<'a> {
    fn model(&mut self, model: &'a ast::Model) {
        let mut scope = Scope {
            prefix: String::new(),
            vars: IndexMap::new(),
            stmts: &model.stmts,
            instances: vec![],
        };
        for (index, input) in model.inputs.iter().enumerate() {
            let dtype = match DType::from_name(&input.dtype.name) {
                Some(DType::F32) => DType::F32,
                _ => {
                    self.diags.push(
                        Diagnostic::new(
                            "qc::bad-input-type",
                            input.dtype.span,
                            format!("input `{}` has element type `{}`", input.name.name, input.dtype.name),
                        )
                        .label("unsupported element type")
                        .help("model inputs are float: write `f32[...]`"),
                    );
                    DType::F32
                }
            };
            let mut dims = vec![];
            for d in &input.dims {
                dims.push(match d {
                    ast::Dim::Fixed(0, span) => {
                        self.diags.push(
                            Diagnostic::new("qc::bad-dim", *span, "a dimension of size 0")
                                .label("empty dimension")
                                .help("sizes are positive integers, or a name such as `N` for the batch"),
                        );
                        Dim::Fixed(1)
                    }
                    ast::Dim::Fixed(n, span) if *n > crate::ops::MAX_ELEMENTS as u64 => {
                        self.diags.push(
                            Diagnostic::new("qc::bad-dim", *span, "a dimension larger than qc's tensor limit")
                                .label(format!("more than {} elements", crate::ops::MAX_ELEMENTS))
                                .help("check the number of digits of this size"),
                        );
                        Dim::Fixed(1)
                    }
                    ast::Dim::Fixed(n, _) => Dim::Fixed(*n as usize),
                    ast::Dim::Symbol(s) => Dim::Symbol(s.name.clone()),
                });
            }
            if dims.is_empty() {
                self.diags.push(
                    Diagnostic::new(
                        "qc::bad-dim",
                        input.span,
                        format!("input `{}` has no dimensions", input.name.name),
                    )
                    .label("rank 0")
                    .help("write the shape, e.g. `f32[N, 1, 28, 28]`"),
                );
            }
            let node = Node {
                name: input.name.name.clone(),
                op: Op::Input {
                    index,
                    normalize: self
                        .sections
                        .normalize_of(&model.name.name, &input.name.name)
                        .map(|n| Normalize {
                            mean: n.value.mean.clone(),
                            std: n.value.std.clone(),
                        }),
                },
                ty: Some(TensorType::new(dtype, dims)),
                params: vec![],
                origin: Origin {
                    span: input.span,
                    instances: vec![],
                },
            };
            if let Some(id) = self.add_node(node, &[], input.name.span) {
                self.bind(&mut scope, &input.name.name, Value::Tensor(id), input.name.span);
                self.graph.inputs.push(id);
            }
        }
        if model.inputs.is_empty() {
            self.diags.push(
                Diagnostic::new(
                    "qc::no-input",
                    model.name.span,
                    format!("model `{}` has no input", model.name.name),
                )
                .label("model without inputs")
                .help("declare one: `input x: f32[N, 1, 28, 28]`"),
            );
        }
        for stmt in &model.stmts {
            self.stmt(stmt, &mut scope);
        }
        if model.outputs.is_empty() {
            self.diags.push(
                Diagnostic::new(
                    "qc::no-output",
                    model.name.span,
                    format!("model `{}` has no output", model.name.name),
                )
                .label("model without outputs")
                .help("name the result: `output fc`"),
            );
        }
        for out in &model.outputs {
            if let Some(v) = self.lookup(&out.text, out.span, &scope) {
                match v {
                    Value::Tensor(id) => self.graph.outputs.push((out.text.clone(), id)),
                    other => {
                        let what = other.describe(&self.graph);
                        self.diags.push(
                            Diagnostic::new(
                                "qc::output-not-tensor",
                                out.span,
                                format!("output `{}` is {what}, not a tensor", out.text),
                            )
                            .label("not a tensor")
                            .help("an output names a node of the model"),
                        );
                    }
                }
            }
        }
    }

    fn bind(&mut self, scope: &mut Scope, name: &str, value: Value, span: Span) {
        if let Some((_, prev)) = scope.vars.get(name) {
            self.diags.push(
                Diagnostic::new("qc::duplicate-name", span, format!("`{name}` is defined twice"))
                    .label("second definition")
                    .note(*prev, "first defined here")
                    .help("every name in a model or block is defined once; rename one of them"),
            );
            return;
        }
        scope.vars.insert(name.to_string(), (value, span));
    }

    fn add_node(&mut self, node: Node, inputs: &[NodeId], span: Span) -> Option<NodeId> {
        if !self.names.insert(node.name.clone()) {
            self.diags.push(
                Diagnostic::new(
                    "qc::duplicate-node",
                    span,
                    format!("a node named `{}` already exists", node.name),
                )
                .label("second node with this name")
                .help("node names (with their block-instance prefixes) must be unique; rename this one"),
            );
            return None;
        }
        Some(self.graph.add(node, inputs))
    }

    /// A name for an anonymous inline call: `<binding>.<op>`, made unique with `_2`, `_3`...
    fn fresh_name(&self, base: &str) -> String {
        if !self.names.contains(base) {
            return base.to_string();
        }
        (2..)
            .map(|i| format!("{base}_{i}"))
            .find(|n| !self.names.contains(n))
            .expect("unbounded")
    }

    fn stmt(&mut self, stmt: &'a Stmt, scope: &mut Scope<'a>) -> Option<Value> {
        let name = stmt.target.text.as_str();
        let value = match &stmt.value.kind {
            ExprKind::Call(call) => self.call(call, Some(name), name, stmt.span, scope),
            _ => self.eval(&stmt.value, scope, name),
        }?;
        self.bind(scope, name, value.clone(), stmt.target.span);
        Some(value)
    }

    fn lookup(&mut self, name: &str, span: Span, scope: &Scope) -> Option<Value> {
        if let Some((v, _)) = scope.vars.get(name) {
            return Some(v.clone());
        }
        if let Some(def) = defined_later(name, scope.stmts) {
            if def.start < span.start {
                // Defined above, but its definition failed and was reported already.
                return None;
            }
            let later = def;
            self.diags.push(
                Diagnostic::new(
                    "qc::use-before-definition",
                    span,
                    format!("`{name}` is used before it is defined"),
                )
                .label("used here")
                .note(later, "defined here, later")
                .help("graphs are acyclic and read top to bottom: move the definition above this use"),
            );
            return None;
        }
        let help = if OP_NAMES.contains(&name) || self.blocks.contains_key(name) {
            format!("`{name}` is an op or block: call it, e.g. `{name}(x)`")
        } else {
            did_you_mean(name, scope.vars.keys().map(|k| k.as_str()))
                .unwrap_or_else(|| "define it with `name = op(...)` before using it, or declare it as an input".into())
        };
        self.diags.push(
            Diagnostic::new("qc::unknown-name", span, format!("unknown name `{name}`"))
                .label("not defined")
                .help(help),
        );
        None
    }

    fn eval(&mut self, e: &'a Expr, scope: &mut Scope<'a>, hint: &str) -> Option<Value> {
        match &e.kind {
            ExprKind::Int(v) => Some(Value::Int(*v)),
            // The parser keeps integer literals too large for i64 as floats; say so.
            ExprKind::Float(_) if !self.sources.text(e.span).contains(['.', 'e', 'E']) => {
                let text = self.sources.text(e.span).to_string();
                self.diags.push(
                    Diagnostic::new("qc::bad-value", e.span, format!("the integer `{text}` is too large"))
                        .label("larger than 2^63 - 1")
                        .help("sizes and counts in a recipe are far smaller; check the number of digits"),
                );
                None
            }
            ExprKind::Float(v) => Some(Value::Float(*v)),
            ExprKind::Bool(v) => Some(Value::Bool(*v)),
            ExprKind::Str(s) => Some(Value::Str(s.clone())),
            ExprKind::List(items) => {
                let mut out = vec![];
                let mut ok = true;
                for it in items {
                    match self.eval(it, scope, hint) {
                        Some(v) => out.push(v),
                        None => ok = false,
                    }
                }
                ok.then_some(Value::List(out))
            }
            ExprKind::Path(p) => self.lookup(&p.text, p.span, scope),
            ExprKind::Call(call) => self.call(call, None, hint, e.span, scope),
            ExprKind::Binding(stmt) => self.stmt(stmt, scope),
            ExprKind::If { cond, then, otherwise } => match self.eval(cond, scope, hint)? {
                Value::Bool(true) => self.eval(then, scope, hint),
                Value::Bool(false) => self.eval(otherwise, scope, hint),
                other => {
                    let what = other.describe(&self.graph);
                    self.diags.push(
                        Diagnostic::new(
                            "qc::bad-condition",
                            cond.span,
                            format!("the condition is {what}, not a boolean"),
                        )
                        .label("not true or false")
                        .help("write a comparison (`stride == 1`) or a boolean parameter (`downsample`)"),
                    );
                    None
                }
            },
            ExprKind::Unary(op, inner) => {
                let v = self.eval(inner, scope, hint)?;
                match (op, v) {
                    (UnaryOp::Neg, Value::Int(x)) => Some(Value::Int(-x)),
                    (UnaryOp::Neg, Value::Float(x)) => Some(Value::Float(-x)),
                    (UnaryOp::Not, Value::Bool(b)) => Some(Value::Bool(!b)),
                    (op, v) => {
                        let what = v.describe(&self.graph);
                        let sym = if *op == UnaryOp::Neg { "-" } else { "not" };
                        self.value_error(e.span, format!("`{sym}` cannot apply to {what}"))
                    }
                }
            }
            ExprKind::Binary(op, l, r) => {
                let a = self.eval(l, scope, hint)?;
                let b = self.eval(r, scope, hint)?;
                self.binary(*op, a, b, e.span)
            }
        }
    }

    fn value_error(&mut self, span: Span, message: String) -> Option<Value> {
        self.diags.push(
            Diagnostic::new("qc::bad-value", span, message)
                .label("cannot compute this")
                .help("arithmetic works on numbers, `and`/`or`/`not` on booleans; tensors combine through ops such as `add(a, b)`"),
        );
        None
    }

    fn binary(&mut self, op: BinaryOp, a: Value, b: Value, span: Span) -> Option<Value> {
        use Value::*;
        let sym = op.symbol();
        let num = |v: &Value| match v {
            Int(x) => Some(*x as f64),
            Float(x) => Some(*x),
            _ => None,
        };
        match op {
            BinaryOp::And | BinaryOp::Or => match (&a, &b) {
                (Bool(x), Bool(y)) => Some(Bool(if op == BinaryOp::And { *x && *y } else { *x || *y })),
                _ => self.value_error(span, format!("`{sym}` needs two booleans")),
            },
            BinaryOp::Eq | BinaryOp::Ne => {
                let eq = match (&a, &b) {
                    (Int(_) | Float(_), Int(_) | Float(_)) => num(&a) == num(&b),
                    (Bool(x), Bool(y)) => x == y,
                    (Str(x), Str(y)) => x == y,
                    _ => return self.value_error(span, format!("`{sym}` compares numbers, booleans or strings")),
                };
                Some(Bool(if op == BinaryOp::Eq { eq } else { !eq }))
            }
            BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => match (num(&a), num(&b)) {
                (Some(x), Some(y)) => Some(Bool(match op {
                    BinaryOp::Lt => x < y,
                    BinaryOp::Le => x <= y,
                    BinaryOp::Gt => x > y,
                    _ => x >= y,
                })),
                _ => self.value_error(span, format!("`{sym}` compares numbers")),
            },
            _ => match (&a, &b) {
                (Int(x), Int(y)) => {
                    let r = match op {
                        BinaryOp::Add => x.checked_add(*y),
                        BinaryOp::Sub => x.checked_sub(*y),
                        BinaryOp::Mul => x.checked_mul(*y),
                        BinaryOp::Div => x.checked_div(*y),
                        _ => x.checked_rem(*y),
                    };
                    match r {
                        Some(v) => Some(Int(v)),
                        None if *y == 0 && matches!(op, BinaryOp::Div | BinaryOp::Rem) => {
                            self.diags.push(
                                Diagnostic::new("qc::bad-value", span, format!("`{x} {sym} {y}` divides by zero"))
                                    .label("the divisor is 0")
                                    .help("check the values of the parameters this expression uses"),
                            );
                            None
                        }
                        None => self.value_error(span, format!("`{x} {sym} {y}` overflows 64-bit integers")),
                    }
                }
                _ => match (num(&a), num(&b)) {
                    (Some(x), Some(y)) => Some(Float(match op {
                        BinaryOp::Add => x + y,
                        BinaryOp::Sub => x - y,
                        BinaryOp::Mul => x * y,
                        BinaryOp::Div => x / y,
                        _ => x % y,
                    })),
                    _ => {
                        let (wa, wb) = (a.describe(&self.graph), b.describe(&self.graph));
                        self.value_error(span, format!("`{sym}` cannot combine {wa} and {wb}"))
                    }
                },
            },
        }
    }

    /// A call: a block instance or an op. `bound` is the statement's target when the call is
    /// the whole right-hand side; `hint` names anonymous calls.
    fn call(
        &mut self,
        call: &'a Call,
        bound: Option<&str>,
        hint: &str,
        stmt_span: Span,
        scope: &mut Scope<'a>,
    ) -> Option<Value> {
        let callee = call.callee.name.as_str();
        let local = match bound {
            Some(n) => n.to_string(),
            None => format!("{hint}.{callee}"),
        };
        if let Some(block) = self.blocks.get(callee).copied() {
            return self.instantiate(block, call, &local, scope);
        }
        let Some(arity) = Op::arity_of(callee) else {
            self.unknown_op(call);
            return None;
        };
        let full = self.fresh_name(&format!("{}{}", scope.prefix, local));
        let inner_hint = full.strip_prefix(&scope.prefix).unwrap_or(&full).to_string();
        // An argument that failed was reported; building the op now would add a spurious
        // "needs `key`" for it.
        let args = self.op_args(call, scope, &inner_hint)?;
        if !self.check_arity(call, arity, args.inputs.len()) {
            return None;
        }
        let op = self.build_op(call, &args)?;
        let params = self.declare_params(&op, &full);
        let span = if bound.is_some() { stmt_span } else { call.span };
        let node = Node {
            name: full,
            op,
            ty: None,
            params,
            origin: Origin {
                span,
                instances: scope.instances.clone(),
            },
        };
        self.add_node(node, &args.inputs, call.span).map(Value::Tensor)
    }

    /// A callee that is neither an op nor a block.
    fn unknown_op(&mut self, call: &Call) {
        let callee = call.callee.name.as_str();
        let candidates: Vec<&str> = OP_NAMES.iter().copied().chain(self.blocks.keys().copied()).collect();
        let help = did_you_mean(callee, candidates.iter().copied())
            .unwrap_or_else(|| format!("ops are: {}; or define `block {callee}(...)`", OP_NAMES.join(", ")));
        self.diags.push(
            Diagnostic::new(
                "qc::unknown-op",
                call.callee.span,
                format!("unknown op or block `{callee}`"),
            )
            .label("not an op or block")
            .help(help),
        );
    }

    /// An op call's arguments, evaluated in order: tensors (positional) and settings (keyword).
    /// None when one failed (each failure reported).
    fn op_args(&mut self, call: &'a Call, scope: &mut Scope<'a>, hint: &str) -> Option<OpArgs> {
        let callee = call.callee.name.as_str();
        let mut args = OpArgs::default();
        let mut ok = true;
        for arg in &call.args {
            let Some(v) = self.eval(&arg.value, scope, hint) else {
                ok = false;
                continue;
            };
            ok &= match &arg.name {
                None => self.positional(callee, arg, &v, &mut args.inputs),
                Some(key) => self.keyword(callee, arg, key, &v, &mut args),
            };
        }
        ok.then_some(args)
    }

    /// A positional argument: a tensor, or a list of tensors, appended to `inputs`.
    fn positional(&mut self, callee: &str, arg: &Arg, v: &Value, inputs: &mut Vec<NodeId>) -> bool {
        match v {
            Value::List(items) => {
                let mut ok = true;
                for it in items {
                    ok &= self.tensor_input(callee, arg, it, inputs);
                }
                ok
            }
            v => self.tensor_input(callee, arg, v, inputs),
        }
    }

    fn tensor_input(&mut self, callee: &str, arg: &Arg, v: &Value, inputs: &mut Vec<NodeId>) -> bool {
        match v {
            Value::Tensor(id) => {
                inputs.push(*id);
                true
            }
            other => {
                let what = other.describe(&self.graph);
                self.diags.push(
                    Diagnostic::new(
                        "qc::expected-tensor",
                        arg.value.span,
                        format!("`{callee}` takes tensors as positional arguments, found {what}"),
                    )
                    .label("not a tensor")
                    .help("settings are keyword arguments: `key: value`"),
                );
                false
            }
        }
    }

    /// A keyword argument: a setting (number, boolean or list of integers), given once.
    fn keyword(&mut self, callee: &str, arg: &Arg, key: &ast::Ident, v: &Value, args: &mut OpArgs) -> bool {
        let attr = match v {
            Value::Int(x) => Some(Attr::Int(*x)),
            Value::Float(x) => Some(Attr::Float(*x)),
            Value::Bool(x) => Some(Attr::Bool(*x)),
            Value::List(items) => items
                .iter()
                .map(|i| if let Value::Int(x) = i { Some(*x) } else { None })
                .collect::<Option<Vec<i64>>>()
                .map(Attr::Ints),
            _ => None,
        };
        let Some(a) = attr else {
            let what = v.describe(&self.graph);
            self.diags.push(
                Diagnostic::new(
                    "qc::bad-argument",
                    arg.value.span,
                    format!("`{}` of {callee} cannot be {what}", key.name),
                )
                .label("not a number, boolean or list of integers")
                .help("tensors are positional arguments; keyword arguments are settings"),
            );
            return false;
        };
        let mut ok = true;
        if args.spans.insert(key.name.clone(), arg.span()).is_some() {
            self.diags.push(
                Diagnostic::new(
                    "qc::duplicate-argument",
                    arg.span(),
                    format!("`{}` is given twice", key.name),
                )
                .label("second value")
                .help("give each keyword argument once"),
            );
            ok = false;
        }
        args.attrs.push((key.name.clone(), a));
        ok
    }

    /// Whether the op takes `n` tensors (reported when not).
    fn check_arity(&mut self, call: &Call, arity: Arity, n: usize) -> bool {
        if arity.accepts(n) {
            return true;
        }
        let callee = call.callee.name.as_str();
        self.diags.push(
            Diagnostic::new(
                "qc::arity",
                call.span,
                format!("`{callee}` takes {}, found {n}", arity.describe()),
            )
            .label("wrong number of inputs")
            .help(match arity {
                Arity::Exactly(2) => format!("write `{callee}(a, b)`"),
                Arity::AtLeast(_) => format!("write `{callee}(a, b, ..., dim: 1)`"),
                _ if qc_runtime::quant::Curve::from_name(callee).is_some() => {
                    format!("write `{callee}(x)`: one tensor, no settings")
                }
                _ => format!("write `{callee}(x, ...)` with one tensor first; settings are `key: value`"),
            }),
        );
        false
    }

    /// The op from its settings; each builder error points at its setting (or the call).
    fn build_op(&mut self, call: &Call, args: &OpArgs) -> Option<Op> {
        match Op::build(call.callee.name.as_str(), &args.attrs).expect("arity_of knew the name") {
            Ok(op) => Some(op),
            Err(errors) => {
                for e in errors {
                    let span = e
                        .key
                        .as_ref()
                        .and_then(|k| args.spans.get(k))
                        .copied()
                        .unwrap_or(call.span);
                    self.diags.push(
                        Diagnostic::new("qc::bad-argument", span, e.message)
                            .label("here")
                            .help(e.help),
                    );
                }
                None
            }
        }
    }

    /// Declares the op's parameters under `full.role` (no value yet); returns (role, key) pairs.
    fn declare_params(&mut self, op: &Op, full: &str) -> Vec<(&'static str, String)> {
        let params: Vec<(&'static str, String)> = op
            .param_names()
            .into_iter()
            .map(|r| (r, format!("{full}.{r}")))
            .collect();
        for (role, key) in &params {
            let (_, dtype, _) = op
                .params(None)
                .into_iter()
                .find(|(n, _, _)| n == role)
                .expect("same op");
            self.params.insert(
                key.clone(),
                Param {
                    dtype,
                    shape: vec![],
                    value: None,
                    provenance: Provenance::Declared,
                    owner: full.to_string(),
                    quant: None,
                },
            );
        }
        params
    }

    /// A block instance named `local` in `scope`: its arguments, its parameters bound, its
    /// statements expanded under the instance's prefix, and its result.
    fn instantiate(&mut self, block: &'a Block, call: &'a Call, local: &str, scope: &mut Scope<'a>) -> Option<Value> {
        if !self.depth_ok(block, call, &scope.instances) {
            return None;
        }
        let full = format!("{}{}", scope.prefix, local);
        let given = self.block_args(block, call, local, scope)?;
        let mut instances = scope.instances.clone();
        instances.push(Instance {
            block: block.name.name.clone(),
            name: full.clone(),
            call: call.span,
        });
        let mut inner = Scope {
            prefix: format!("{full}."),
            vars: IndexMap::new(),
            stmts: &block.stmts,
            instances,
        };
        self.bind_block_params(block, call, given, &mut inner)?;
        self.depth += 1;
        let mut last = None;
        let mut ok = true;
        for stmt in &block.stmts {
            let v = self.stmt(stmt, &mut inner);
            ok &= v.is_some();
            last = v;
        }
        self.depth -= 1;
        if !ok {
            return None;
        }
        self.block_result(block, last, &inner)
    }

    /// Whether the block may be instantiated this deep (inside the `chain` of instances); the
    /// first time not, the problem is reported and expansion stops. A chain that repeats a block
    /// is a recursion that did not end; one that does not is merely deep.
    fn depth_ok(&mut self, block: &Block, call: &Call, chain: &[Instance]) -> bool {
        if self.recursion_hit {
            return false;
        }
        if self.depth >= MAX_BLOCK_DEPTH {
            self.recursion_hit = true;
            let name = &block.name.name;
            let recursive = chain.iter().any(|i| i.block == *name);
            let diag = if recursive {
                Diagnostic::new(
                    "qc::block-recursion",
                    call.span,
                    format!("block `{name}` instantiates itself more than {MAX_BLOCK_DEPTH} levels deep"),
                )
                .help(
                    "a block that (indirectly) instantiates itself must stop: give the recursion a condition \
                     that ends it (`if depth > 0 { ... } else { ... }`), or remove it",
                )
            } else {
                Diagnostic::new(
                    "qc::block-depth",
                    call.span,
                    format!(
                        "blocks nest {} levels deep here; qc expands at most {MAX_BLOCK_DEPTH}",
                        self.depth + 1
                    ),
                )
                .help("no block repeats in this chain, it is only deep: write some of the inner blocks' statements into the blocks that use them")
            };
            self.diags.push(diag.label("instantiated here"));
            return false;
        }
        true
    }

    /// A block call's arguments by parameter name, evaluated in the caller's scope in the order
    /// written. None when one failed (each failure reported).
    fn block_args(
        &mut self,
        block: &'a Block,
        call: &'a Call,
        local: &str,
        scope: &mut Scope<'a>,
    ) -> Option<IndexMap<String, (Value, Span)>> {
        let mut given: IndexMap<String, (Value, Span)> = IndexMap::new();
        let mut positional = 0;
        let mut ok = true;
        for arg in &call.args {
            let v = self.eval(&arg.value, scope, local);
            let Some((name, span)) = self.block_arg_name(block, arg, &mut positional) else {
                ok = false;
                continue;
            };
            if given.contains_key(&name) {
                self.diags.push(
                    Diagnostic::new(
                        "qc::duplicate-argument",
                        span,
                        format!("parameter `{name}` is given twice"),
                    )
                    .label("second value")
                    .help("give each parameter once, by position or by name"),
                );
                ok = false;
            }
            match v {
                Some(v) => {
                    given.insert(name, (v, span));
                }
                None => ok = false,
            }
        }
        ok.then_some(given)
    }

    /// The parameter an argument gives (by name, or the next by position) and its span; None
    /// (reported) for an unknown name or one argument too many.
    fn block_arg_name(&mut self, block: &Block, arg: &Arg, positional: &mut usize) -> Option<(String, Span)> {
        match &arg.name {
            Some(n) => {
                if !block.params.iter().any(|p| p.name.name == n.name) {
                    let help =
                        did_you_mean(&n.name, block.params.iter().map(|p| p.name.name.as_str())).unwrap_or_else(|| {
                            let names: Vec<&str> = block.params.iter().map(|p| p.name.name.as_str()).collect();
                            format!("block `{}` takes: {}", block.name.name, names.join(", "))
                        });
                    self.diags.push(
                        Diagnostic::new(
                            "qc::unknown-argument",
                            n.span,
                            format!("block `{}` has no parameter `{}`", block.name.name, n.name),
                        )
                        .label("unknown parameter")
                        .note(block.name.span, "block defined here")
                        .help(help),
                    );
                    return None;
                }
                Some((n.name.clone(), arg.span()))
            }
            None => {
                let Some(p) = block.params.get(*positional) else {
                    self.diags.push(
                        Diagnostic::new(
                            "qc::arity",
                            arg.value.span,
                            format!(
                                "block `{}` takes {} parameters, found more",
                                block.name.name,
                                block.params.len()
                            ),
                        )
                        .label("extra argument")
                        .note(block.name.span, "block defined here")
                        .help("remove the argument, or add a parameter to the block"),
                    );
                    return None;
                };
                *positional += 1;
                Some((p.name.name.clone(), arg.value.span))
            }
        }
    }

    /// Binds each block parameter in `inner`: to its argument, or to its default (evaluated in
    /// the block's scope). None at the first one missing (reported).
    fn bind_block_params(
        &mut self,
        block: &'a Block,
        call: &Call,
        mut given: IndexMap<String, (Value, Span)>,
        inner: &mut Scope<'a>,
    ) -> Option<()> {
        for p in &block.params {
            let value = match given.shift_remove(&p.name.name) {
                Some((v, _)) => Some(v),
                None => match &p.default {
                    Some(d) => {
                        self.depth += 1;
                        let v = self.eval(d, inner, &p.name.name);
                        self.depth -= 1;
                        v
                    }
                    None => {
                        self.diags.push(
                            Diagnostic::new(
                                "qc::missing-argument",
                                call.span,
                                format!("block `{}` needs parameter `{}`", block.name.name, p.name.name),
                            )
                            .label("missing argument")
                            .note(p.name.span, "parameter declared here")
                            .help(format!("pass it: `{}: ...`", p.name.name)),
                        );
                        None
                    }
                },
            };
            inner.vars.insert(p.name.name.clone(), (value?, p.name.span));
        }
        Some(())
    }

    /// A block's result: its one `output`, or else its last statement's value.
    fn block_result(&mut self, block: &Block, last: Option<Value>, inner: &Scope<'a>) -> Option<Value> {
        match block.outputs.as_slice() {
            [] => match last {
                Some(v) => Some(v),
                None => {
                    self.diags.push(
                        Diagnostic::new(
                            "qc::empty-block",
                            block.name.span,
                            format!("block `{}` has no statements", block.name.name),
                        )
                        .label("empty block")
                        .help("a block's result is its `output` line, or else its last statement"),
                    );
                    None
                }
            },
            [out] => self.lookup(&out.text, out.span, inner),
            [_, second, ..] => {
                self.diags.push(
                    Diagnostic::new(
                        "qc::block-outputs",
                        second.span,
                        format!("block `{}` has more than one output", block.name.name),
                    )
                    .label("second output")
                    .help("a block returns one tensor; split it into two blocks, or concat the results"),
                );
                None
            }
        }
    }
}

/// An op call's evaluated arguments: its input tensors, its settings, and where each setting
/// was written.
#[derive(Default)]
struct OpArgs {
    inputs: Vec<NodeId>,
    attrs: Vec<(String, Attr)>,
    spans: HashMap<String, Span>,
}

/// Where `name` is defined by a later statement of the same scope (also inside nested bindings).
fn defined_later(name: &str, stmts: &[Stmt]) -> Option<Span> {
    fn in_expr(name: &str, e: &Expr) -> Option<Span> {
        match &e.kind {
            ExprKind::Binding(s) => (s.target.text == name)
                .then_some(s.target.span)
                .or_else(|| in_expr(name, &s.value)),
            ExprKind::Call(c) => c.args.iter().find_map(|a| in_expr(name, &a.value)),
            ExprKind::If { cond, then, otherwise } => in_expr(name, cond)
                .or_else(|| in_expr(name, then))
                .or_else(|| in_expr(name, otherwise)),
            ExprKind::List(items) => items.iter().find_map(|i| in_expr(name, i)),
            ExprKind::Unary(_, a) => in_expr(name, a),
            ExprKind::Binary(_, a, b) => in_expr(name, a).or_else(|| in_expr(name, b)),
            _ => None,
        }
    }
    stmts.iter().find_map(|s| {
        (s.target.text == name)
            .then_some(s.target.span)
            .or_else(|| in_expr(name, &s.value))
    })
}
