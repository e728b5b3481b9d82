//! Checks the options of `weights` lines (`{ strip: "module.", rename: "fc" -> "head" }`) into
//! a typed [`KeyRemap`] per line.

use super::values::describe;
use super::{
    suggest, Checker, KeyRemap, Rename, Spanned, WeightsSettings, BAD_VALUE, DUPLICATE_SETTING, UNKNOWN_SETTING,
};
use crate::ast::{Expr, ExprKind, Weights, WeightsOption, WeightsValue};
use crate::diag::did_you_mean;

const OPTIONS: &[&str] = &["strip", "rename"];
const OPTIONS_HELP: &str =
    "a `weights` line takes `strip: \"PREFIX\"` (once) and `rename: \"OLD\" -> \"NEW\"` (any number), e.g. `weights \"w.pth\" { strip: \"module.\", rename: \"fc\" -> \"head\" }`";

impl Checker<'_> {
    /// Every `weights` line, in order, with its options checked.
    pub(super) fn weights(&mut self, lines: &[Weights]) -> Vec<WeightsSettings> {
        lines
            .iter()
            .map(|w| WeightsSettings {
                path: w.path.clone(),
                resolved: w.resolved.clone(),
                span: w.span,
                remap: self.remap(&w.options),
            })
            .collect()
    }

    fn remap(&mut self, options: &[WeightsOption]) -> KeyRemap {
        let mut remap = KeyRemap::default();
        for o in options {
            match (o.name.name.as_str(), &o.value) {
                ("strip", WeightsValue::Expr(e)) => {
                    let Some(prefix) = self.remap_string(e, "strip", "the prefix to remove, e.g. `strip: \"module.\"`")
                    else {
                        continue;
                    };
                    if let Some(first) = &remap.strip {
                        self.error_note(
                            DUPLICATE_SETTING,
                            o.name.span,
                            "a second `strip` on this `weights` line".into(),
                            "second strip",
                            "a `weights` line strips one prefix: keep one `strip`".into(),
                            (first.span, "first `strip` here".into()),
                        );
                        continue;
                    }
                    remap.strip = Some(prefix);
                }
                ("rename", WeightsValue::Rename { from, to }) => {
                    let help =
                        "a module path or key without a leading or trailing `.`, e.g. `rename: \"fc\" -> \"head\"`";
                    let (Some(from), Some(to)) = (
                        self.remap_string(from, "rename", help),
                        self.remap_string(to, "rename", help),
                    ) else {
                        continue;
                    };
                    for s in [&from, &to] {
                        if s.value.starts_with('.') || s.value.ends_with('.') {
                            self.error(
                                BAD_VALUE,
                                s.span,
                                format!("`{}` starts or ends with `.`", s.value),
                                "not a module path",
                                format!("`rename` takes {help}"),
                            );
                        }
                    }
                    if let Some(first) = remap.renames.iter().find(|r| r.from.value == from.value) {
                        self.error_note(
                            DUPLICATE_SETTING,
                            from.span,
                            format!("`{}` is renamed twice", from.value),
                            "second rename",
                            "a name is renamed once: keep one of the two `rename`s".into(),
                            (first.from.span, "first here".into()),
                        );
                        continue;
                    }
                    remap.renames.push(Rename { from, to, span: o.span });
                }
                ("strip", WeightsValue::Rename { .. }) => self.error(
                    BAD_VALUE,
                    o.span,
                    "`strip` takes one prefix, not a rename".into(),
                    "not a prefix",
                    "write `strip: \"module.\"` to remove a prefix, `rename: \"OLD\" -> \"NEW\"` to rename".into(),
                ),
                ("rename", WeightsValue::Expr(e)) => self.error(
                    BAD_VALUE,
                    e.span,
                    format!("`rename` takes `\"OLD\" -> \"NEW\"`, found {}", describe(e)),
                    "no `->`",
                    "write `rename: \"fc\" -> \"head\"` (the checkpoint's name, then the model's)".into(),
                ),
                (other, _) => self.error(
                    UNKNOWN_SETTING,
                    o.name.span,
                    format!("unknown option `{other}` of `weights`"),
                    "unknown option",
                    suggest(did_you_mean(other, OPTIONS.iter().copied()), OPTIONS_HELP),
                ),
            }
        }
        remap
    }

    /// A non-empty string value of option `key`.
    fn remap_string(&mut self, e: &Expr, key: &str, help: &str) -> Option<Spanned<String>> {
        match &e.kind {
            ExprKind::Str(s) if !s.is_empty() => Some(Spanned::new(s.clone(), e.span)),
            ExprKind::Str(_) => {
                self.error(
                    BAD_VALUE,
                    e.span,
                    format!("`{key}` takes a non-empty string"),
                    "empty",
                    format!("`{key}` takes {help}"),
                );
                None
            }
            _ => {
                self.error(
                    BAD_VALUE,
                    e.span,
                    format!("`{key}` takes a string, found {}", describe(e)),
                    "not a string",
                    format!("`{key}` takes {help} (in quotes)"),
                );
                None
            }
        }
    }
}
