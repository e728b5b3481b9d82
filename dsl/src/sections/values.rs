//! Reads the plain values written in settings (whole numbers, bounded numbers, booleans, names,
//! calls) and checks the arguments of calls.

use super::{list_words, suggest, Checker, Seen, BAD_ARGUMENT, BAD_VALUE, UNKNOWN_ARGUMENT};
use crate::ast::{Arg, Call, Expr, ExprKind, Ident};
use crate::diag::did_you_mean;
use crate::source::Span;

/// How a value is named in a message: the value itself, or what kind of thing it is.
pub(super) fn describe(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Int(v) => format!("`{v}`"),
        ExprKind::Float(v) => format!("`{v}`"),
        ExprKind::Bool(b) => format!("`{b}`"),
        ExprKind::Str(s) => format!("the string \"{s}\""),
        ExprKind::List(_) => "a list".into(),
        ExprKind::Path(p) => format!("`{}`", p.text),
        ExprKind::Call(c) => format!("`{}(...)`", c.callee.name),
        ExprKind::Binding(_) => "a named call".into(),
        ExprKind::If { .. } => "an `if` expression".into(),
        ExprKind::Unary(..) | ExprKind::Binary(..) => "an expression".into(),
    }
}

/// Whether a value is written as itself, not as an expression that would need evaluating.
pub(super) fn is_literal(e: &Expr) -> bool {
    !matches!(
        e.kind,
        ExprKind::Binding(_) | ExprKind::If { .. } | ExprKind::Unary(..) | ExprKind::Binary(..)
    )
}

/// Bounds of a float setting, and how to say them.
#[derive(Clone, Copy)]
pub(super) struct Bounds {
    lo: f64,
    lo_incl: bool,
    hi: f64,
    hi_incl: bool,
}

impl Bounds {
    pub(super) const POSITIVE: Bounds = Bounds {
        lo: 0.0,
        lo_incl: false,
        hi: f64::INFINITY,
        hi_incl: false,
    };
    pub(super) const NON_NEGATIVE: Bounds = Bounds {
        lo: 0.0,
        lo_incl: true,
        hi: f64::INFINITY,
        hi_incl: false,
    };
    /// [0, 1)
    pub(super) const UNIT_HALF_OPEN: Bounds = Bounds {
        lo: 0.0,
        lo_incl: true,
        hi: 1.0,
        hi_incl: false,
    };
    /// (0, 1]
    pub(super) const UNIT_LEFT_OPEN: Bounds = Bounds {
        lo: 0.0,
        lo_incl: false,
        hi: 1.0,
        hi_incl: true,
    };
    pub(super) const FINITE: Bounds = Bounds {
        lo: f64::NEG_INFINITY,
        lo_incl: false,
        hi: f64::INFINITY,
        hi_incl: false,
    };
    pub(super) const PERCENT: Bounds = Bounds {
        lo: 0.0,
        lo_incl: false,
        hi: 100.0,
        hi_incl: true,
    };

    fn contains(self, v: f64) -> bool {
        let lo = if self.lo_incl { v >= self.lo } else { v > self.lo };
        let hi = if self.hi_incl { v <= self.hi } else { v < self.hi };
        v.is_finite() && lo && hi
    }

    fn describe(self) -> String {
        if self.lo == f64::NEG_INFINITY && self.hi == f64::INFINITY {
            return "a finite number".into();
        }
        let lo = if self.lo_incl {
            format!("at least {}", self.lo)
        } else {
            format!("above {}", self.lo)
        };
        if self.hi.is_infinite() {
            lo
        } else if self.hi_incl {
            format!("{lo} and at most {}", self.hi)
        } else {
            format!("{lo} and below {}", self.hi)
        }
    }
}

impl Checker<'_> {
    /// Checks a call's arguments: at most `max_positional` positional ones, named ones among
    /// `allowed`, none twice. Returns the valid positional and named arguments.
    pub(super) fn call_args<'a>(
        &mut self,
        call: &'a Call,
        allowed: &[&str],
        max_positional: usize,
        positional_help: &str,
        seen: &mut Seen,
    ) -> (Vec<&'a Expr>, Vec<(&'a Ident, &'a Expr)>) {
        let name = &call.callee.name;
        let takes = if allowed.is_empty() {
            format!("`{name}` takes no named arguments")
        } else {
            format!("`{name}` takes {}", list_words(allowed))
        };
        let mut positional = Vec::new();
        let mut named = Vec::new();
        for Arg { name: key, value } in &call.args {
            match key {
                None => {
                    if positional.len() < max_positional {
                        positional.push(value);
                    } else {
                        let help = if max_positional > 0 {
                            positional_help.to_string()
                        } else if let Some(first) = allowed.first() {
                            format!("name the argument, e.g. `{name}({first}: ...)`; {takes}")
                        } else {
                            format!("write `{name}` without arguments")
                        };
                        self.error(
                            BAD_ARGUMENT,
                            value.span,
                            format!("`{name}` does not take this argument without a name"),
                            "unnamed argument",
                            help,
                        );
                    }
                }
                Some(key) => {
                    if !allowed.contains(&key.name.as_str()) {
                        self.error(
                            UNKNOWN_ARGUMENT,
                            key.span,
                            format!("`{name}` has no argument `{}`", key.name),
                            "unknown argument",
                            suggest(did_you_mean(&key.name, allowed.iter().copied()), &takes),
                        );
                        continue;
                    }
                    if self.first_time(seen, &key.name, key.span, &format!("`{name}(...)`")) {
                        named.push((key, value));
                    }
                }
            }
        }
        (positional, named)
    }

    /// Reports a setting written as an expression (settings are not evaluated).
    pub(super) fn not_literal(&mut self, e: &Expr, what: &str, help: &str) {
        self.error(
            BAD_VALUE,
            e.span,
            format!("{what} must be written as a plain value, found {}", describe(e)),
            "not a plain value",
            format!("settings are not evaluated: write the value itself. {help}"),
        );
    }

    /// A whole number of at least `min`; reports anything else.
    pub(super) fn int_value(&mut self, e: &Expr, what: &str, min: i64, help: &str) -> Option<u64> {
        match &e.kind {
            ExprKind::Int(v) if *v >= min => u64::try_from(*v).ok(),
            ExprKind::Int(v) => {
                let bound = if min == 0 {
                    "must not be negative".to_string()
                } else {
                    format!("must be at least {min}")
                };
                self.error(
                    BAD_VALUE,
                    e.span,
                    format!("{what} {bound}, found {v}"),
                    bound,
                    help.into(),
                );
                None
            }
            // The parser keeps integers too large for i64 as (integral or infinite) floats.
            ExprKind::Float(v) if v.abs() >= 9.2e18 => {
                self.error(
                    BAD_VALUE,
                    e.span,
                    format!("{what} is too large"),
                    "too large",
                    help.into(),
                );
                None
            }
            ExprKind::Float(v) => {
                self.error(
                    BAD_VALUE,
                    e.span,
                    format!("{what} must be a whole number, found `{v}`"),
                    "not a whole number",
                    help.into(),
                );
                None
            }
            _ if !is_literal(e) => {
                self.not_literal(e, what, help);
                None
            }
            _ => {
                self.error(
                    BAD_VALUE,
                    e.span,
                    format!("{what} must be a whole number, found {}", describe(e)),
                    "expected a whole number",
                    help.into(),
                );
                None
            }
        }
    }

    /// A number within `bounds` (a whole number counts); reports anything else.
    pub(super) fn float_value(&mut self, e: &Expr, what: &str, bounds: Bounds, help: &str) -> Option<f64> {
        let v = match &e.kind {
            ExprKind::Int(v) => *v as f64,
            ExprKind::Float(v) => *v,
            _ if !is_literal(e) => {
                self.not_literal(e, what, help);
                return None;
            }
            _ => {
                self.error(
                    BAD_VALUE,
                    e.span,
                    format!("{what} must be a number, found {}", describe(e)),
                    "expected a number",
                    help.into(),
                );
                return None;
            }
        };
        if bounds.contains(v) {
            return Some(v);
        }
        if !v.is_finite() {
            self.error(
                BAD_VALUE,
                e.span,
                format!("{what} is out of range"),
                "not a finite number",
                help.into(),
            );
            return None;
        }
        let must = format!("must be {}", bounds.describe());
        self.error(
            BAD_VALUE,
            e.span,
            format!("{what} {must}, found {v}"),
            must,
            help.into(),
        );
        None
    }

    /// `true` or `false`; reports anything else.
    pub(super) fn bool_value(&mut self, e: &Expr, what: &str, help: &str) -> Option<bool> {
        match &e.kind {
            ExprKind::Bool(b) => Some(*b),
            _ if !is_literal(e) => {
                self.not_literal(e, what, help);
                None
            }
            _ => {
                self.error(
                    BAD_VALUE,
                    e.span,
                    format!("{what} must be `true` or `false`, found {}", describe(e)),
                    "expected `true` or `false`",
                    help.into(),
                );
                None
            }
        }
    }

    /// A bare word (`cosine`, `train`) and its span.
    pub(super) fn word_value<'e>(&self, e: &'e Expr) -> Option<(&'e str, Span)> {
        match &e.kind {
            ExprKind::Path(p) => Some((p.text.as_str(), p.span)),
            _ => None,
        }
    }

    pub(super) fn word_or_call(&mut self, e: &Expr, what: &str, help: &str) -> Option<Call> {
        match &e.kind {
            ExprKind::Call(c) => Some(c.clone()),
            ExprKind::Path(p) => Some(Call {
                callee: Ident {
                    name: p.text.clone(),
                    span: p.span,
                },
                args: vec![],
                span: p.span,
            }),
            _ if !is_literal(e) => {
                self.not_literal(e, what, help);
                None
            }
            _ => {
                let help = match &e.kind {
                    ExprKind::Str(s) => format!("write it without quotes: `{s}`. {help}"),
                    _ => help.to_string(),
                };
                self.error(
                    BAD_VALUE,
                    e.span,
                    format!("{what} must be a name or a call, found {}", describe(e)),
                    "expected a name or a call",
                    help,
                );
                None
            }
        }
    }

    /// Reports that `call` names none of the `choices` for `what`.
    pub(super) fn unknown_choice(&mut self, call: &Call, what: &str, choices: &[&str], help: &str) {
        let name = &call.callee.name;
        self.error(
            BAD_VALUE,
            call.callee.span,
            format!("unknown {what} `{name}`"),
            format!("not a {what}"),
            suggest(did_you_mean(name, choices.iter().copied()), help),
        );
    }
}
