//! Parsing: the only module that sees pest `Pair`s. Turns text into the AST, follows includes,
//! and recovers after a syntax error at the next top-level item so that every error is reported.

use std::path::{Path, PathBuf};

use pest::iterators::Pair;
use pest::Parser;

use crate::ast::*;
use crate::diag::{Diagnostic, Diagnostics};
use crate::source::{FileId, SourceMap, Span};

#[derive(pest_derive::Parser)]
#[grammar = "grammar.pest"]
struct RecipeParser;

/// Brackets nested deeper than this are refused before parsing (the parser recurses on them).
pub const MAX_NESTING: usize = 128;

/// Calls `on_bracket(offset, byte)` for every bracket of `text` outside strings and comments,
/// until it returns `false`. The one scanner behind the nesting limit and the unclosed-bracket
/// diagnostic.
fn scan_brackets(text: &str, mut on_bracket: impl FnMut(usize, u8) -> bool) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'#' => i = text[i..].find('\n').map_or(bytes.len(), |n| i + n),
            b'/' if bytes.get(i + 1) == Some(&b'/') => i = text[i..].find('\n').map_or(bytes.len(), |n| i + n),
            b @ (b'(' | b'[' | b'{' | b')' | b']' | b'}') if !on_bracket(i, b) => return,
            _ => {}
        }
        i += 1;
    }
}

/// Where nesting first exceeds `MAX_NESTING`.
fn too_deep(text: &str) -> Option<usize> {
    let (mut depth, mut at) = (0usize, None);
    scan_brackets(text, |i, b| {
        if matches!(b, b'(' | b'[' | b'{') {
            depth += 1;
            if depth > MAX_NESTING {
                at = Some(i);
                return false;
            }
        } else {
            depth = depth.saturating_sub(1);
        }
        true
    });
    at
}

/// Words the grammar reserves (see `keyword` in grammar.pest).
const KEYWORDS: &[&str] = &[
    "model", "block", "input", "output", "if", "else", "and", "or", "not", "true", "false",
];

/// Words that start a top-level item; a syntax error skips to the next line starting with one.
const TOP_LEVEL: &[&str] = &[
    "include", "block", "model", "weights", "quantize", "qat", "train", "rule",
];

/// Parses one file already in the source map, following its includes (which are added to the
/// map). Syntax errors go to `diags`; the items that parsed are kept.
/// File paths stay as the user wrote them (relative to the including file), so messages show
/// them that way; canonical paths serve only to detect include cycles.
pub fn parse_file(sources: &mut SourceMap, id: FileId, recipe: &mut Recipe, diags: &mut Diagnostics) {
    let f = sources.file(id);
    let mut stack = vec![(canonical(&f.path), f.name.clone())];
    parse_into(sources, id, recipe, diags, &mut stack);
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

fn parse_into(
    sources: &mut SourceMap,
    id: FileId,
    recipe: &mut Recipe,
    diags: &mut Diagnostics,
    stack: &mut Vec<(PathBuf, String)>,
) {
    let (text, base, dir) = {
        let f = sources.file(id);
        let dir = f.path.parent().map(Path::to_path_buf).unwrap_or_default();
        (f.text.clone(), f.base, dir)
    };
    let mut includes = Vec::new();
    for (start, end) in top_level_chunks(&text) {
        let chunk = &text[start..end];
        if let Some(at) = too_deep(chunk) {
            let span = Span::new(base + start + at, base + start + at + 1);
            diags.push(
                Diagnostic::new(
                    "qc::too-deep",
                    span,
                    format!("brackets nest more than {MAX_NESTING} levels deep"),
                )
                .label("too deep")
                .help("name intermediate results with statements (`a = relu(x)`) instead of nesting calls"),
            );
            continue;
        }
        match RecipeParser::parse(Rule::file, chunk) {
            Ok(mut pairs) => {
                let file = pairs.next().expect("grammar: file");
                let cx = Cx {
                    base: base + start,
                    dir: &dir,
                    file_text: &text,
                    file_base: base,
                };
                for item in file.into_inner() {
                    cx.item(item, recipe, &mut includes);
                }
            }
            Err(e) => diags.push(syntax_error(e, base + start, chunk)),
        }
    }
    for (path_text, span) in includes {
        let resolved = dir.join(&path_text);
        let canonical = canonical(&resolved);
        if let Some(first) = stack.iter().position(|(c, _)| *c == canonical) {
            let mut chain: Vec<&str> = stack[first..].iter().map(|(_, name)| name.as_str()).collect();
            let name = resolved.display().to_string();
            chain.push(&name);
            diags.push(
                Diagnostic::new(
                    "qc::include-cycle",
                    span,
                    format!("include cycle: {}", chain.join(" → ")),
                )
                .label("this include closes the cycle")
                .help(
                    "remove one include of the cycle, or move what the files share into a file none of them includes",
                ),
            );
            continue;
        }
        match crate::read_recipe_text(&resolved) {
            Ok(text) => {
                let name = resolved.display().to_string();
                let child = sources.add(name.clone(), &resolved, text);
                stack.push((canonical, name));
                parse_into(sources, child, recipe, diags, stack);
                stack.pop();
            }
            Err(err) => diags.push(
                Diagnostic::new(
                    "qc::include-not-found",
                    span,
                    format!("cannot read included file `{}`: {err}", resolved.display()),
                )
                .label("included here")
                .help("include paths are relative to the file that includes them"),
            ),
        }
    }
}

/// Splits a file into top-level items: a new chunk starts at each line that begins (column 1)
/// with a top-level keyword. Chunks are parsed separately, so one error does not hide the next.
fn top_level_chunks(text: &str) -> Vec<(usize, usize)> {
    let mut starts = vec![0];
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if offset > 0 {
            let word: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let rest = &line[word.len()..];
            if TOP_LEVEL.contains(&word.as_str()) && rest.starts_with([' ', '\t', '{', '"']) {
                starts.push(offset);
            }
        }
        offset += line.len();
    }
    starts.push(text.len());
    starts.windows(2).map(|w| (w[0], w[1])).collect()
}

fn describe(rule: &Rule) -> &'static str {
    match rule {
        Rule::EOI => "end of file",
        Rule::item | Rule::file => "`model`, `block`, `weights`, `quantize`, `qat`, `train`, `rule` or `include`",
        Rule::include => "`include`",
        Rule::weights => "`weights`",
        Rule::weights_options => "`{` and options like `strip: \"module.\"`",
        Rule::weights_option => "an option like `strip: \"module.\"` or `rename: \"fc\" -> \"head\"`",
        Rule::rename_pair => "`\"OLD\" -> \"NEW\"`",
        Rule::model => "`model`",
        Rule::block => "`block`",
        Rule::quantize => "`quantize`",
        Rule::qat => "`qat`",
        Rule::train => "`train`",
        Rule::input_decl => "`input`",
        Rule::input_option => "an input option like `normalize(mean: 0.5, std: 0.25)`",
        Rule::output_decl => "`output`",
        Rule::statement => "a statement (`name = op(...)`)",
        Rule::tensor_type => "a tensor type like `f32[N, 3, 224, 224]`",
        Rule::dim => "a dimension (a number or a name)",
        Rule::param => "a block parameter",
        Rule::expr
        | Rule::or_expr
        | Rule::and_expr
        | Rule::not_expr
        | Rule::cmp_expr
        | Rule::sum_expr
        | Rule::prod_expr
        | Rule::unary_expr => "an expression",
        Rule::or_op | Rule::and_op => "`and`/`or`",
        Rule::not_op => "`not`",
        Rule::cmp_op => "a comparison",
        Rule::sum_op | Rule::prod_op | Rule::neg_op => "an operator",
        Rule::if_expr | Rule::if_kw => "`if`",
        Rule::else_kw => "`else`",
        Rule::binding => "a named call",
        Rule::call => "a call like `relu(x)`",
        Rule::arg => "an argument",
        Rule::arg_name => "an argument name",
        Rule::list => "a list `[...]`",
        Rule::scheme_entry => "`scheme`",
        Rule::fuse_entry => "`fuse`",
        Rule::fuse_off | Rule::off_kw => "`off`",
        Rule::rule_def | Rule::rule_kw => "`rule`",
        Rule::match_kw => "`match`",
        Rule::where_kw => "`where`",
        Rule::pattern => "a pattern like `b = batch_norm(c = conv2d(?x))`",
        Rule::pattern_arg => "a pattern or a `?variable`",
        Rule::pattern_var => "a pattern variable like `?x`",
        Rule::op_class => "an op like `conv2d`, or a class like `conv1d|conv2d`",
        Rule::constraint | Rule::predicate | Rule::attr_test => "a condition like `single_use(c)`",
        Rule::signed_number => "a number",
        Rule::rule_result => "a result like `conv2d(?x, fold: b, act: relu)`",
        Rule::rule_arrow => "`->` and the result",
        Rule::comma => "`,`",
        Rule::result_arg => "a `?variable` or `key: value`",
        Rule::result_kwarg => "`key: value`",
        Rule::observe_entry => "`observe`",
        Rule::calibrate_entry => "`calibrate`",
        Rule::layer_entry => "`layer`",
        Rule::selector | Rule::op_selector => "a layer selector (a name, a \"glob\" or `op(kind)`)",
        Rule::skip => "`skip`",
        Rule::qspec => "`activations:` or `weights:`",
        Rule::qspec_key => "`activations` or `weights`",
        Rule::qspec_word => "a quantization word (like `int8`, `per_channel`, `minmax`)",
        Rule::entry_keyword
        | Rule::scheme_kw
        | Rule::fuse_kw
        | Rule::observe_kw
        | Rule::calibrate_kw
        | Rule::layer_kw => "an entry",
        Rule::bad_layer_entry => "a layer setting",
        Rule::bad_entry => "an entry",
        Rule::kwarg => "`key: value`",
        Rule::settings => "`{`",
        Rule::keyword => "a keyword",
        Rule::ident => "a name",
        Rule::path | Rule::path_member => "a name",
        Rule::index => "an index",
        Rule::boolean => "`true` or `false`",
        Rule::number | Rule::int => "a number",
        Rule::string | Rule::string_inner => "a string",
        Rule::escape => "an escape (`\\\"`, `\\\\`, `\\n`, `\\t`, `\\r`, `\\u{...}`)",
        Rule::WHITESPACE | Rule::COMMENT => "whitespace",
        Rule::sep => "`;` or `,`",
        Rule::quantize_entry | Rule::model_stmt | Rule::block_stmt | Rule::primary | Rule::ident_char => "an item",
    }
}

fn syntax_error(e: pest::error::Error<Rule>, base: usize, chunk: &str) -> Diagnostic {
    let pos = match e.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((s, _)) => s,
    };
    if let Some(p) = crate::lexical::problem_explaining(chunk, pos) {
        return Diagnostic::new("qc::syntax", Span::new(base + p.at.start, base + p.at.end), p.message)
            .label(p.label)
            .help(p.help);
    }
    let found: String = chunk[pos..].chars().next().map(|c| c.to_string()).unwrap_or_default();
    let token: String = {
        let rest = &chunk[pos..];
        let word: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if word.is_empty() {
            found.clone()
        } else {
            word
        }
    };
    let len = token
        .len()
        .max(1)
        .min(chunk.len().saturating_sub(pos))
        .max(if pos < chunk.len() { 1 } else { 0 });
    let span = Span::new(base + pos, base + pos + len);
    let expected = match &e.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => {
            let mut names: Vec<&str> = positives.iter().map(describe).collect();
            names.sort();
            names.dedup();
            names
        }
        pest::error::ErrorVariant::CustomError { .. } => vec![],
    };
    let expected_text = match expected.len() {
        0 => "something else".to_string(),
        1 => expected[0].to_string(),
        n => format!("{} or {}", expected[..n - 1].join(", "), expected[n - 1]),
    };
    let (message, label) = if pos >= chunk.trim_end().len() {
        (
            format!("unexpected end of input: expected {expected_text}"),
            "input ends here".to_string(),
        )
    } else {
        (
            format!("expected {expected_text}, found `{token}`"),
            format!("unexpected `{token}`"),
        )
    };
    let at_end = pos >= chunk.trim_end().len();
    // An open `{` is normal mid-model; it is the culprit only when the input ends inside it.
    if let Some((open, close)) = unclosed_bracket(&chunk[..pos]).filter(|(_, c)| *c != '}' || at_end) {
        let open_span = Span::new(base + open, base + open + 1);
        let opened = chunk[open..=open].to_string();
        return Diagnostic::new(
            "qc::syntax",
            span,
            format!("`{opened}` is not closed: expected `{close}`, found `{token}`"),
        )
        .label(format!("expected `{close}` before this"))
        .note(open_span, format!("this `{opened}` is not closed"))
        .help(format!("add `{close}` where the list of arguments or items ends"));
    }
    let help = if found == "}" || pos >= chunk.trim_end().len() {
        "check that every `(`, `[` and `{` is closed and every statement is complete".to_string()
    } else if let Some(word) = (found == "=")
        .then(|| {
            chunk[..pos]
                .trim_end()
                .rsplit(|c: char| !(c.is_alphanumeric() || c == '_'))
                .next()
        })
        .flatten()
        .filter(|w| KEYWORDS.contains(w))
    {
        format!("`{word}` is a keyword and cannot name a node; pick another name (e.g. `{word}_`)")
    } else if found == "=" {
        "a statement is `name = op(input, key: value)`; names start with a letter or `_`".to_string()
    } else if chunk.trim_start().starts_with("rule") {
        "a rule is `rule NAME { match PATTERN where single_use(b), ... -> RESULT }`, e.g. \
         `rule conv_relu { match r = relu(c = conv2d(?x)) where single_use(c) -> conv2d(?x, act: r) }`; \
         see docs/recipe-language.md, \"Rules\""
            .to_string()
    } else if found == ":" {
        "keyword arguments are `key: value`; positional arguments come first".to_string()
    } else {
        "see docs/recipe-language.md for the syntax of this part of a recipe".to_string()
    };
    Diagnostic::new("qc::syntax", span, message).label(label).help(help)
}

/// The innermost bracket still open at the end of `text`, when it was opened on an earlier line
/// than the end (a bracket opened on the same line is more likely still being written).
fn unclosed_bracket(text: &str) -> Option<(usize, char)> {
    let mut stack: Vec<(usize, char)> = vec![];
    scan_brackets(text, |i, b| {
        match b {
            b'(' => stack.push((i, ')')),
            b'[' => stack.push((i, ']')),
            b'{' => stack.push((i, '}')),
            _ => {
                stack.pop();
            }
        }
        true
    });
    let (open, close) = *stack.last()?;
    let newline_after = text[open..].contains('\n');
    newline_after.then_some((open, close))
}

struct Cx<'a> {
    base: usize,
    dir: &'a Path,
    /// The whole file and its base offset (doc comments live above a chunk's start).
    file_text: &'a str,
    file_base: usize,
}

impl Cx<'_> {
    /// The pair's span without the whitespace pest lets trail a non-atomic rule.
    fn span(&self, p: &Pair<Rule>) -> Span {
        let s = p.as_span();
        let len = p.as_str().trim_end().len();
        Span::new(self.base + s.start(), self.base + s.start() + len)
    }

    fn ident(&self, p: Pair<Rule>) -> Ident {
        Ident {
            name: p.as_str().to_string(),
            span: self.span(&p),
        }
    }

    fn path(&self, p: Pair<Rule>) -> PathName {
        PathName {
            text: p.as_str().to_string(),
            span: self.span(&p),
        }
    }

    fn item(&self, p: Pair<Rule>, recipe: &mut Recipe, includes: &mut Vec<(String, Span)>) {
        let span = self.span(&p);
        match p.as_rule() {
            Rule::include => {
                let s = p.into_inner().next().expect("grammar: include string");
                includes.push((self.string(s.clone()), self.span(&s)));
            }
            Rule::weights => {
                let mut inner = p.into_inner();
                let s = inner.next().expect("grammar: weights string");
                let path = self.string(s.clone());
                let resolved = self.dir.join(&path);
                let options = inner.next().map(|o| self.weights_options(o)).unwrap_or_default();
                recipe.weights.push(Weights {
                    path,
                    resolved,
                    span: self.span(&s),
                    options,
                });
            }
            Rule::model => recipe.models.push(self.model(p)),
            Rule::block => recipe.blocks.push(self.block(p)),
            Rule::quantize => recipe.quantize.push(self.quantize(p)),
            Rule::qat => recipe
                .qat
                .push(self.settings(p.into_inner().next().expect("grammar: qat"), span)),
            Rule::train => recipe
                .train
                .push(self.settings(p.into_inner().next().expect("grammar: train"), span)),
            Rule::rule_def => recipe.rules.push(self.rule_def(p)),
            Rule::EOI => {}
            r => unreachable!("grammar: unexpected item {r:?}"),
        }
    }

    fn model(&self, p: Pair<Rule>) -> Model {
        let span = self.span(&p);
        let mut inner = p.into_inner();
        let name = self.ident(inner.next().expect("grammar: model name"));
        let mut model = Model {
            name,
            inputs: vec![],
            stmts: vec![],
            outputs: vec![],
            span,
        };
        for s in inner {
            match s.as_rule() {
                Rule::input_decl => model.inputs.push(self.input(s)),
                Rule::output_decl => model.outputs.extend(s.into_inner().map(|o| self.path(o))),
                Rule::statement => model.stmts.push(self.stmt(s)),
                r => unreachable!("grammar: model statement {r:?}"),
            }
        }
        model
    }

    fn input(&self, p: Pair<Rule>) -> InputDecl {
        let span = self.span(&p);
        let mut inner = p.into_inner();
        let name = self.ident(inner.next().expect("grammar: input name"));
        let mut ty = inner.next().expect("grammar: input type").into_inner();
        let dtype = self.ident(ty.next().expect("grammar: dtype"));
        let dims = ty
            .map(|d| {
                let d = d.into_inner().next().expect("grammar: dim");
                match d.as_rule() {
                    Rule::int => Dim::Fixed(d.as_str().parse().unwrap_or(u64::MAX), self.span(&d)),
                    _ => Dim::Symbol(self.ident(d)),
                }
            })
            .collect();
        let option = inner.next().map(|o| self.call(o));
        InputDecl {
            name,
            dtype,
            dims,
            option,
            span,
        }
    }

    fn block(&self, p: Pair<Rule>) -> Block {
        let span = self.span(&p);
        let mut inner = p.into_inner();
        let name = self.ident(inner.next().expect("grammar: block name"));
        let mut block = Block {
            name,
            params: vec![],
            stmts: vec![],
            outputs: vec![],
            span,
        };
        for s in inner {
            match s.as_rule() {
                Rule::param => {
                    let mut pi = s.into_inner();
                    let name = self.ident(pi.next().expect("grammar: param name"));
                    let default = pi.next().map(|e| self.expr(e));
                    block.params.push(Param { name, default });
                }
                Rule::output_decl => block.outputs.extend(s.into_inner().map(|o| self.path(o))),
                Rule::statement => block.stmts.push(self.stmt(s)),
                r => unreachable!("grammar: block statement {r:?}"),
            }
        }
        block
    }

    fn stmt(&self, p: Pair<Rule>) -> Stmt {
        let span = self.span(&p);
        let mut inner = p.into_inner();
        let target = self.path(inner.next().expect("grammar: target"));
        let value = inner.next().expect("grammar: value");
        let value = match value.as_rule() {
            Rule::call => {
                let s = self.span(&value);
                Expr {
                    kind: ExprKind::Call(self.call(value)),
                    span: s,
                }
            }
            _ => self.expr(value),
        };
        Stmt { target, value, span }
    }

    fn call(&self, p: Pair<Rule>) -> Call {
        let span = self.span(&p);
        let mut inner = p.into_inner();
        let callee = self.ident(inner.next().expect("grammar: callee"));
        let args = inner
            .map(|a| {
                let mut ai = a.into_inner();
                let first = ai.next().expect("grammar: arg");
                match ai.next() {
                    Some(value) => Arg {
                        name: Some(self.ident(first)),
                        value: self.expr(value),
                    },
                    None => Arg {
                        name: None,
                        value: self.expr(first),
                    },
                }
            })
            .collect();
        Call { callee, args, span }
    }

    fn expr(&self, p: Pair<Rule>) -> Expr {
        let span = self.span(&p);
        match p.as_rule() {
            Rule::expr => self.expr(p.into_inner().next().expect("grammar: expr")),
            Rule::or_expr | Rule::and_expr | Rule::sum_expr | Rule::prod_expr | Rule::cmp_expr => {
                let mut inner = p.into_inner();
                let mut lhs = self.expr(inner.next().expect("grammar: operand"));
                while let Some(op) = inner.next() {
                    let rhs = self.expr(inner.next().expect("grammar: operand"));
                    let op = match op.as_str() {
                        "or" => BinaryOp::Or,
                        "and" => BinaryOp::And,
                        "+" => BinaryOp::Add,
                        "-" => BinaryOp::Sub,
                        "*" => BinaryOp::Mul,
                        "/" => BinaryOp::Div,
                        "%" => BinaryOp::Rem,
                        "==" => BinaryOp::Eq,
                        "!=" => BinaryOp::Ne,
                        "<" => BinaryOp::Lt,
                        "<=" => BinaryOp::Le,
                        ">" => BinaryOp::Gt,
                        ">=" => BinaryOp::Ge,
                        o => unreachable!("grammar: operator {o}"),
                    };
                    let span = lhs.span.to(rhs.span);
                    lhs = Expr {
                        kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)),
                        span,
                    };
                }
                lhs
            }
            Rule::not_expr | Rule::unary_expr => {
                let mut ops = vec![];
                let mut operand = None;
                for q in p.into_inner() {
                    match q.as_rule() {
                        Rule::not_op => ops.push(UnaryOp::Not),
                        Rule::neg_op => ops.push(UnaryOp::Neg),
                        _ => operand = Some(self.expr(q)),
                    }
                }
                let mut e = operand.expect("grammar: unary operand");
                for op in ops.into_iter().rev() {
                    e = Expr {
                        kind: ExprKind::Unary(op, Box::new(e)),
                        span,
                    };
                }
                // Fold `-3` into a literal so that values print as written.
                if let ExprKind::Unary(UnaryOp::Neg, inner) = &e.kind {
                    match inner.kind {
                        ExprKind::Int(v) => {
                            return Expr {
                                kind: ExprKind::Int(-v),
                                span,
                            }
                        }
                        ExprKind::Float(v) => {
                            return Expr {
                                kind: ExprKind::Float(-v),
                                span,
                            }
                        }
                        _ => {}
                    }
                }
                e
            }
            Rule::if_expr => {
                let mut inner = p
                    .into_inner()
                    .filter(|q| !matches!(q.as_rule(), Rule::if_kw | Rule::else_kw));
                let cond = self.expr(inner.next().expect("grammar: if cond"));
                let then = self.expr(inner.next().expect("grammar: then"));
                let otherwise = self.expr(inner.next().expect("grammar: else"));
                Expr {
                    kind: ExprKind::If {
                        cond: Box::new(cond),
                        then: Box::new(then),
                        otherwise: Box::new(otherwise),
                    },
                    span,
                }
            }
            Rule::list => Expr {
                kind: ExprKind::List(p.into_inner().map(|e| self.expr(e)).collect()),
                span,
            },
            Rule::number => {
                let t = p.as_str();
                let kind = if t.contains(['.', 'e', 'E']) {
                    ExprKind::Float(t.parse().unwrap_or(f64::NAN))
                } else {
                    match t.parse::<i64>() {
                        Ok(v) => ExprKind::Int(v),
                        Err(_) => ExprKind::Float(t.parse().unwrap_or(f64::INFINITY)),
                    }
                };
                Expr { kind, span }
            }
            Rule::string => Expr {
                kind: ExprKind::Str(self.string(p)),
                span,
            },
            Rule::boolean => Expr {
                kind: ExprKind::Bool(p.as_str() == "true"),
                span,
            },
            Rule::binding => {
                let mut inner = p.into_inner();
                let target = self.path(inner.next().expect("grammar: binding target"));
                let call = inner.next().expect("grammar: binding call");
                let cspan = self.span(&call);
                let value = Expr {
                    kind: ExprKind::Call(self.call(call)),
                    span: cspan,
                };
                Expr {
                    kind: ExprKind::Binding(Box::new(Stmt { target, value, span })),
                    span,
                }
            }
            Rule::call => Expr {
                kind: ExprKind::Call(self.call(p)),
                span,
            },
            Rule::path => Expr {
                kind: ExprKind::Path(self.path(p)),
                span,
            },
            r => unreachable!("grammar: expression {r:?}"),
        }
    }

    fn weights_options(&self, p: Pair<Rule>) -> Vec<WeightsOption> {
        p.into_inner()
            .map(|o| {
                let span = self.span(&o);
                let mut inner = o.into_inner();
                let name = self.ident(inner.next().expect("grammar: option name"));
                let v = inner.next().expect("grammar: option value");
                let value = match v.as_rule() {
                    Rule::rename_pair => {
                        let mut pair = v.into_inner();
                        let from = self.expr(pair.next().expect("grammar: rename from"));
                        let to = self.expr(pair.next().expect("grammar: rename to"));
                        WeightsValue::Rename { from, to }
                    }
                    _ => WeightsValue::Expr(self.expr(v)),
                };
                WeightsOption { name, value, span }
            })
            .collect()
    }

    fn string(&self, p: Pair<Rule>) -> String {
        let raw = p.into_inner().next().map(|i| i.as_str()).unwrap_or("");
        unescape(raw)
    }

    fn quantize(&self, p: Pair<Rule>) -> Quantize {
        let span = self.span(&p);
        let mut entries = vec![];
        let mut unknown_in_layers = vec![];
        for e in p.into_inner() {
            let espan = self.span(&e);
            let rule = e.as_rule();
            let e = KeywordFree(e);
            let entry = match rule {
                Rule::scheme_entry => {
                    QuantizeEntry::Scheme(self.ident(e.into_inner().next().expect("grammar: scheme")))
                }
                Rule::fuse_entry => {
                    let inner: Vec<Pair<Rule>> = e.into_inner().collect();
                    match inner.first().map(|p| p.as_rule()) {
                        Some(Rule::fuse_off) => {
                            let off = inner.into_iter().next().expect("grammar: fuse off");
                            let name = off
                                .into_inner()
                                .find(|p| p.as_rule() == Rule::ident)
                                .expect("grammar: fuse off name");
                            QuantizeEntry::FuseOff {
                                name: self.ident(name),
                                span: espan,
                            }
                        }
                        _ => QuantizeEntry::Fuse {
                            ops: inner.into_iter().map(|i| self.ident(i)).collect(),
                            span: espan,
                        },
                    }
                }
                Rule::observe_entry => QuantizeEntry::Observe(e.into_inner().map(|q| self.qspec(q)).collect()),
                Rule::calibrate_entry => {
                    let mut inner = e.into_inner();
                    let src = inner.next().expect("grammar: calibration source");
                    let source = match src.as_rule() {
                        Rule::string => {
                            let s = self.span(&src);
                            CalibrationSource::File {
                                path: self.string(src),
                                span: s,
                            }
                        }
                        _ => CalibrationSource::Call(self.call(src)),
                    };
                    let args = inner.map(|k| self.kwarg(k)).collect();
                    QuantizeEntry::Calibrate {
                        source,
                        args,
                        span: espan,
                    }
                }
                Rule::layer_entry => {
                    let mut inner = e.into_inner();
                    let sel = inner
                        .next()
                        .expect("grammar: selector")
                        .into_inner()
                        .next()
                        .expect("grammar: selector");
                    let selector = match sel.as_rule() {
                        Rule::op_selector => Selector::Op(self.ident(sel.into_inner().next().expect("grammar: op"))),
                        Rule::string => {
                            let s = self.span(&sel);
                            Selector::Glob {
                                pattern: self.string(sel),
                                span: s,
                            }
                        }
                        _ => Selector::Name(self.path(sel)),
                    };
                    let mut skip = None;
                    let mut specs = vec![];
                    for b in inner {
                        match b.as_rule() {
                            Rule::skip => skip = Some(self.span(&b)),
                            Rule::bad_layer_entry => unknown_in_layers.push(self.unknown_entry(b)),
                            _ => specs.push(self.qspec(b)),
                        }
                    }
                    QuantizeEntry::Layer {
                        selector,
                        skip,
                        specs,
                        span: espan,
                    }
                }
                Rule::qspec => QuantizeEntry::Spec(self.qspec(e.0)),
                Rule::bad_entry => self.unknown_entry(e.0),
                r => unreachable!("grammar: quantize entry {r:?}"),
            };
            entries.push(entry);
        }
        entries.extend(unknown_in_layers);
        Quantize { entries, span }
    }

    fn unknown_entry(&self, e: Pair<Rule>) -> QuantizeEntry {
        let word: String = e
            .as_str()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let start = self.span(&e).start;
        QuantizeEntry::Unknown {
            word: Ident {
                span: Span::new(start, start + word.len()),
                name: word,
            },
            span: Span::new(start, start + e.as_str().trim_end().len()),
        }
    }

    fn qspec(&self, p: Pair<Rule>) -> QSpec {
        let span = self.span(&p);
        let mut inner = p.into_inner();
        let key = self.ident(inner.next().expect("grammar: qspec key"));
        let words = inner
            .map(|w| {
                let w = w.into_inner().next().expect("grammar: qspec word");
                match w.as_rule() {
                    Rule::call => QWord::Call(self.call(w)),
                    Rule::number => QWord::Number(w.as_str().parse().unwrap_or(f64::NAN), self.span(&w)),
                    _ => QWord::Word(self.ident(w)),
                }
            })
            .collect();
        QSpec { key, words, span }
    }

    fn kwarg(&self, p: Pair<Rule>) -> KwArg {
        let mut inner = p.into_inner();
        let key = self.ident(inner.next().expect("grammar: key"));
        let value = self.expr(inner.next().expect("grammar: value"));
        KwArg { key, value }
    }

    /// The comment lines directly above the line at `start` (a global offset): `///` or `//`
    /// lines with no blank line between them and the item, slashes and one space removed.
    fn doc_above(&self, start: usize) -> String {
        let local = start.saturating_sub(self.file_base).min(self.file_text.len());
        let before = &self.file_text[..local];
        let before = match before.rfind('\n') {
            Some(i) => &before[..i],
            None => return String::new(),
        };
        let mut lines: Vec<&str> = vec![];
        for line in before.lines().rev() {
            let t = line.trim();
            let Some(text) = t.strip_prefix("///").or_else(|| t.strip_prefix("//")) else {
                break;
            };
            lines.push(text.strip_prefix(' ').unwrap_or(text).trim_end());
        }
        lines.reverse();
        lines.join("\n")
    }

    fn rule_def(&self, p: Pair<Rule>) -> RuleDef {
        let span = self.span(&p);
        let doc = self.doc_above(span.start);
        let mut inner = p.into_inner().filter(|q| {
            !matches!(
                q.as_rule(),
                Rule::rule_kw | Rule::match_kw | Rule::where_kw | Rule::rule_arrow | Rule::comma
            )
        });
        let name = self.ident(inner.next().expect("grammar: rule name"));
        let pattern = self.pattern(inner.next().expect("grammar: rule pattern"));
        let mut constraints = vec![];
        let mut result = None;
        for q in inner {
            match q.as_rule() {
                Rule::constraint => constraints.push(self.constraint(q)),
                Rule::rule_result => result = Some(self.rule_result(q)),
                r => unreachable!("grammar: rule part {r:?}"),
            }
        }
        RuleDef {
            name,
            doc,
            pattern,
            constraints,
            result: result.expect("grammar: rule result"),
            span,
        }
    }

    fn pattern(&self, p: Pair<Rule>) -> Pattern {
        let span = self.span(&p);
        let parts: Vec<Pair<Rule>> = p.into_inner().collect();
        // `ident = op_class(args)` or `op_class(args)`.
        let idents = parts.iter().take_while(|q| q.as_rule() == Rule::ident).count();
        let mut it = parts.into_iter();
        let binding = (idents == 1).then(|| self.ident(it.next().expect("grammar: binding")));
        let op = self.op_class(it.next().expect("grammar: pattern op"));
        let args = it
            .map(|a| match a.as_rule() {
                Rule::pattern_var => PatternArg::Var(self.pattern_var(a)),
                _ => PatternArg::Op(self.pattern(a)),
            })
            .collect();
        Pattern {
            binding,
            op,
            args,
            span,
        }
    }

    /// `conv2d` or `conv1d|conv2d`.
    fn op_class(&self, p: Pair<Rule>) -> OpClass {
        let span = self.span(&p);
        let names = p.into_inner().map(|i| self.ident(i)).collect();
        OpClass { names, span }
    }

    /// `?x` as the ident `x` with the span of `?x`.
    fn pattern_var(&self, p: Pair<Rule>) -> Ident {
        let span = self.span(&p);
        let name = p
            .into_inner()
            .next()
            .expect("grammar: variable name")
            .as_str()
            .to_string();
        Ident { name, span }
    }

    fn constraint(&self, p: Pair<Rule>) -> Constraint {
        let span = self.span(&p);
        let c = p.into_inner().next().expect("grammar: constraint");
        match c.as_rule() {
            Rule::predicate => {
                let mut inner = c.into_inner();
                let name = self.ident(inner.next().expect("grammar: predicate"));
                let arg = self.ident(inner.next().expect("grammar: predicate argument"));
                Constraint::Predicate { name, arg, span }
            }
            _ => {
                let mut inner = c.into_inner();
                let binding = self.ident(inner.next().expect("grammar: binding"));
                let attr = self.ident(inner.next().expect("grammar: attribute"));
                let op = match inner.next().expect("grammar: comparison").as_str() {
                    "==" => BinaryOp::Eq,
                    "!=" => BinaryOp::Ne,
                    "<" => BinaryOp::Lt,
                    "<=" => BinaryOp::Le,
                    ">" => BinaryOp::Gt,
                    _ => BinaryOp::Ge,
                };
                let v = inner.next().expect("grammar: value");
                let vspan = self.span(&v);
                let t = v.as_str();
                let kind = match v.as_rule() {
                    Rule::boolean => ExprKind::Bool(t == "true"),
                    _ if t.contains(['.', 'e', 'E']) => ExprKind::Float(t.parse().unwrap_or(f64::NAN)),
                    _ => match t.parse::<i64>() {
                        Ok(i) => ExprKind::Int(i),
                        Err(_) => ExprKind::Float(t.parse().unwrap_or(f64::INFINITY)),
                    },
                };
                Constraint::Compare {
                    binding,
                    attr,
                    op,
                    value: Expr { kind, span: vspan },
                    span,
                }
            }
        }
    }

    fn rule_result(&self, p: Pair<Rule>) -> RuleResult {
        let span = self.span(&p);
        let mut inner = p.into_inner();
        let op = self.op_class(inner.next().expect("grammar: result op"));
        let mut inputs = vec![];
        let mut args = vec![];
        for a in inner {
            match a.as_rule() {
                Rule::pattern_var => inputs.push(self.pattern_var(a)),
                _ => {
                    let mut kv = a.into_inner();
                    let k = self.ident(kv.next().expect("grammar: key"));
                    let v = self.ident(kv.next().expect("grammar: value"));
                    args.push((k, v));
                }
            }
        }
        RuleResult { op, inputs, args, span }
    }

    fn settings(&self, p: Pair<Rule>, span: Span) -> Settings {
        Settings {
            entries: p.into_inner().map(|k| self.kwarg(k)).collect(),
            span,
        }
    }
}

/// A quantize entry's pair whose `into_inner` skips the keyword pairs (`scheme_kw`, ...).
struct KeywordFree<'i>(Pair<'i, Rule>);

impl<'i> KeywordFree<'i> {
    fn into_inner(self) -> impl Iterator<Item = Pair<'i, Rule>> {
        self.0.into_inner().filter(|p| {
            !matches!(
                p.as_rule(),
                Rule::scheme_kw | Rule::fuse_kw | Rule::observe_kw | Rule::calibrate_kw | Rule::layer_kw | Rule::off_kw
            )
        })
    }
}

/// Resolves the escapes the grammar admits: `\"`, `\\`, `\n`, `\t`, `\r`, `\u{...}`.
fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('u') => {
                let hex: String = chars.by_ref().skip(1).take_while(|c| *c != '}').collect();
                out.push(
                    u32::from_str_radix(&hex, 16)
                        .ok()
                        .and_then(char::from_u32)
                        .unwrap_or('\u{fffd}'),
                );
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_resolve() {
        assert_eq!(unescape(r#"a\"b\\c\n\u{41}"#), "a\"b\\c\nA");
    }

    #[test]
    fn chunks_split_at_top_level_keywords() {
        let text = "model a {\n}\n// c\nblock b(x) {\n}\nquantize {\n}\n";
        let chunks = top_level_chunks(text);
        assert_eq!(chunks.len(), 3);
        assert!(text[chunks[1].0..].starts_with("block"));
    }
}
