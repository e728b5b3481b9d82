//! Checks what a model's `input` lines declare after their type: `normalize(mean: ..., std: ...)`,
//! one number or one value per channel (dim 1); and refuses `normalize` in a `train` or `qat`
//! section, whose help line is the `input` line to write instead.

use super::values::{describe, is_literal, Bounds};
use super::{
    key_help, suggest, Checker, InputSettings, Normalize, Seen, Spanned, BAD_VALUE, MISSING_ARGUMENT, MOVED_SETTING,
    UNKNOWN_ENTRY,
};
use crate::ast::{Call, Dim, Expr, ExprKind, InputDecl, Recipe, UnaryOp};
use crate::diag::did_you_mean;
use crate::source::Span;

/// The options an `input` line takes after its type.
const INPUT_OPTIONS: &[&str] = &["normalize"];

/// `input x: f32[N, 1, 28, 28]` as written (the help of a refused `train { normalize }` extends
/// it), and whether that line already declares `normalize`.
pub(super) struct FirstInput {
    line: String,
    normalizes: bool,
}

/// The first input of the recipe's first model, for help lines.
pub(super) fn first_input(recipe: &Recipe) -> Option<FirstInput> {
    let input = recipe.models.first()?.inputs.first()?;
    let dims: Vec<String> = input
        .dims
        .iter()
        .map(|d| match d {
            Dim::Fixed(n, _) => n.to_string(),
            Dim::Symbol(s) => s.name.clone(),
        })
        .collect();
    Some(FirstInput {
        line: format!("input {}: {}[{}]", input.name.name, input.dtype.name, dims.join(", ")),
        normalizes: input.option.as_ref().is_some_and(|o| o.callee.name == "normalize"),
    })
}

/// One value of `mean` or `std` as written: a number, or a list of them.
enum Written {
    One(f64),
    PerChannel(Vec<f64>),
}

impl Checker<'_> {
    /// Every input of every model, with its `normalize(...)` checked.
    pub(super) fn inputs(&mut self, recipe: &Recipe) -> Vec<InputSettings> {
        let mut out = vec![];
        for model in &recipe.models {
            for input in &model.inputs {
                let normalize = input.option.as_ref().and_then(|o| self.input_option(input, o));
                out.push(InputSettings {
                    model: model.name.name.clone(),
                    input: input.name.name.clone(),
                    normalize,
                });
            }
        }
        out
    }

    fn input_option(&mut self, input: &InputDecl, call: &Call) -> Option<Spanned<Normalize>> {
        if call.callee.name != "normalize" {
            self.error(
                UNKNOWN_ENTRY,
                call.callee.span,
                format!("unknown input option `{}`", call.callee.name),
                "not an input option",
                suggest(
                    did_you_mean(&call.callee.name, INPUT_OPTIONS.iter().copied()),
                    "after its type an `input` line takes `normalize(mean: ..., std: ...)`",
                ),
            );
            return None;
        }
        let help = key_help("normalize");
        let (_, named) = self.call_args(call, &["mean", "std"], 0, help, &mut Seen::default());
        let channels = match input.dims.get(1) {
            Some(Dim::Fixed(c, _)) => Some(*c),
            _ => None,
        };
        let mut mean = None;
        let mut std = None;
        let mut ok = true;
        for (key, value) in named {
            let positive = key.name == "std";
            match self.normalize_values(input, value, &key.name, positive, channels) {
                Some(v) if positive => std = Some(v),
                Some(v) => mean = Some(v),
                None => ok = false,
            }
        }
        for (name, given) in [("mean", mean.is_some()), ("std", std.is_some())] {
            let written = call
                .args
                .iter()
                .any(|a| a.name.as_ref().is_some_and(|n| n.name == name));
            if !given && !written {
                self.error(
                    MISSING_ARGUMENT,
                    call.span,
                    format!("`normalize` needs `{name}`"),
                    format!("no `{name}`"),
                    help.into(),
                );
                ok = false;
            }
        }
        let (Some(mean), Some(std), true) = (mean, std, ok) else {
            return None;
        };
        let channels = match (&mean, &std) {
            (Written::PerChannel(v), _) | (_, Written::PerChannel(v)) => v.len(),
            _ => 1,
        };
        let expand = |w: Written| match w {
            Written::One(x) => vec![x; channels],
            Written::PerChannel(v) => v,
        };
        Some(Spanned::new(
            Normalize {
                mean: expand(mean),
                std: expand(std),
            },
            call.span,
        ))
    }

    /// `mean` or `std`: a number (`std` above 0), or a list of one per channel of the input.
    fn normalize_values(
        &mut self,
        input: &InputDecl,
        e: &Expr,
        key: &str,
        positive: bool,
        channels: Option<u64>,
    ) -> Option<Written> {
        let ExprKind::List(items) = &e.kind else {
            return self.normalize_number(e, key, positive).map(Written::One);
        };
        let name = &input.name.name;
        let fail = match channels {
            _ if items.is_empty() => Some((
                format!("`{key}` is an empty list"),
                "give one value per channel, or one number for every element".to_string(),
            )),
            None => Some((
                format!(
                    "a list of `{key}` values is one per channel, but input `{name}` has no fixed channel dim (dim 1)"
                ),
                format!(
                    "write one number for every element, or give `{name}` a fixed dim 1 (e.g. `f32[N, 3, 224, 224]`)"
                ),
            )),
            Some(c) if items.len() as u64 != c => Some((
                format!(
                    "`{key}` has {} values, but input `{name}` has {c} channel{} (dim 1)",
                    items.len(),
                    if c == 1 { "" } else { "s" }
                ),
                format!(
                    "give {c} value{} (one per channel), or one number for every element",
                    if c == 1 { "" } else { "s" }
                ),
            )),
            _ => None,
        };
        if let Some((message, help)) = fail {
            self.error(BAD_VALUE, e.span, message, "one value per channel", help);
            return None;
        }
        let values: Vec<Option<f64>> = items
            .iter()
            .map(|item| self.normalize_number(item, key, positive))
            .collect();
        values
            .into_iter()
            .collect::<Option<Vec<f64>>>()
            .map(Written::PerChannel)
    }

    /// A number: any finite one for `mean` (a minus sign included), above 0 for `std`.
    fn normalize_number(&mut self, e: &Expr, key: &str, positive: bool) -> Option<f64> {
        let help = key_help("normalize");
        let what = &format!("`{key}` of `normalize`");
        if let ExprKind::Unary(UnaryOp::Neg, inner) = &e.kind {
            if matches!(inner.kind, ExprKind::Int(_) | ExprKind::Float(_)) {
                let v = self.float_value(inner, what, Bounds::FINITE, help)?;
                if positive {
                    self.error(
                        BAD_VALUE,
                        e.span,
                        format!("{what} must be above 0, found -{v}"),
                        "must be above 0",
                        help.into(),
                    );
                    return None;
                }
                return Some(-v);
            }
        }
        if !is_literal(e) {
            self.not_literal(e, what, help);
            return None;
        }
        if !matches!(e.kind, ExprKind::Int(_) | ExprKind::Float(_)) {
            self.error(
                BAD_VALUE,
                e.span,
                format!("{what} must be a number or a list of numbers, found {}", describe(e)),
                "expected a number",
                help.into(),
            );
            return None;
        }
        let bounds = if positive { Bounds::POSITIVE } else { Bounds::FINITE };
        self.float_value(e, what, bounds, help)
    }

    /// `normalize` in a `train` or `qat` section: refused, with the `input` line to write.
    pub(super) fn moved_normalize(&mut self, section: &str, key_span: Span, value: &Expr) {
        let numbers = |e: &Expr| match &e.kind {
            ExprKind::Int(v) => Some(v.to_string()),
            ExprKind::Float(v) => Some(format!("{v}")),
            _ => None,
        };
        let (mean, std) = match &value.kind {
            ExprKind::List(items) if items.len() == 2 => (
                numbers(&items[0]).unwrap_or_else(|| "...".into()),
                numbers(&items[1]).unwrap_or_else(|| "...".into()),
            ),
            _ => ("...".into(), "...".into()),
        };
        let declared = format!("normalize(mean: {mean}, std: {std})");
        let help = match &self.first_input {
            Some(f) if f.normalizes => {
                "delete this line: the model's `input` line already declares `normalize(...)`".to_string()
            }
            Some(f) => format!(
                "delete this line and declare it on the model's input, where calibration, training and `qc run` \
                 all apply it: `{} {declared}`",
                f.line
            ),
            None => format!(
                "delete this line and declare it on the model's input, where calibration, training and `qc run` \
                 all apply it: `input x: f32[N, C, H, W] {declared}`"
            ),
        };
        self.error(
            MOVED_SETTING,
            key_span.to(value.span),
            format!("`normalize` belongs to the model's `input` line, not to `{section}`"),
            "not a training setting",
            help,
        );
    }
}
