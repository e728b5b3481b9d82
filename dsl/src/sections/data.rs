//! Checks data sources: the `calibrate` source of a `quantize` section and the `data:` and
//! `test_data:` of `train` and `qat` (files, `fashion_mnist`, `idx`, `npz`, `npy`, `random`).

use super::values::{describe, is_literal};
use super::{
    key_help, list_words, suggest, Calibration, Checker, DataSource, Seen, Spanned, Split, BAD_VALUE, MISSING_ARGUMENT,
    UNKNOWN_ARGUMENT, UNKNOWN_DATA_SOURCE,
};
use crate::ast::{CalibrationSource, Call, Expr, ExprKind, Ident, KwArg};
use crate::diag::did_you_mean;
use crate::source::Span;

const DATA_SOURCES: &[&str] = &["fashion_mnist", "idx", "npz", "npy"];
const CALIBRATION_SOURCES: &[&str] = &["random", "fashion_mnist", "idx", "npz", "npy"];
const BATCH_ARGS: &[&str] = &["batches", "batch_size", "samples"];

/// What a data source is for: decides the accepted forms and the default split.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum DataUse {
    Calibrate,
    Data,
    TestData,
}

/// The `batches:`, `batch_size:` and `samples:` written for a calibration.
#[derive(Default)]
struct BatchArgs {
    batches: Option<Spanned<u64>>,
    batch_size: Option<Spanned<u64>>,
    samples: Option<Spanned<u64>>,
}

impl Checker<'_> {
    pub(super) fn calibration(
        &mut self,
        source: &CalibrationSource,
        args: &[KwArg],
        span: Span,
    ) -> Option<Calibration> {
        let mut batch = BatchArgs::default();
        let mut seen = Seen::default();
        let src = match source {
            CalibrationSource::File { path, span } => self
                .path_source(path, *span, "calibrate")
                .map(|d| Spanned::new(d, *span)),
            CalibrationSource::Call(call) => self
                .source_call(call, DataUse::Calibrate, &mut batch, &mut seen)
                .map(|d| Spanned::new(d, call.span)),
        };
        for kw in args {
            self.batch_arg(&kw.key, &kw.value, &mut batch, &mut seen);
        }
        let source = src?;
        Some(Calibration {
            random: source.value == DataSource::Random,
            source,
            batches: batch.batches,
            batch_size: batch.batch_size,
            samples: batch.samples,
            span,
        })
    }

    /// `batches:`, `batch_size:` or `samples:` of a calibration.
    fn batch_arg(&mut self, key: &Ident, value: &Expr, batch: &mut BatchArgs, seen: &mut Seen) {
        let name = key.name.as_str();
        if !BATCH_ARGS.contains(&name) {
            self.error(
                UNKNOWN_ARGUMENT,
                key.span,
                format!("`calibrate` has no setting `{name}`"),
                "unknown setting",
                suggest(
                    did_you_mean(name, BATCH_ARGS.iter().copied()),
                    format!("`calibrate` takes {}", list_words(BATCH_ARGS)),
                ),
            );
            return;
        }
        if !self.first_time(seen, name, key.span, "`calibrate`") {
            return;
        }
        let what = format!("`{name}`");
        let help = key_help(name);
        if let Some(v) = self.int_value(value, &what, 1, help) {
            let s = Some(Spanned::new(v, key.span.to(value.span)));
            match name {
                "batches" => batch.batches = s,
                "batch_size" => batch.batch_size = s,
                _ => batch.samples = s,
            }
        }
    }

    /// A data source written as a string: the format comes from the extension.
    fn path_source(&mut self, path: &str, span: Span, key: &str) -> Option<DataSource> {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".npz") {
            Some(DataSource::Npz { path: path.to_string() })
        } else if lower.ends_with(".npy") {
            Some(DataSource::Npy { path: path.to_string() })
        } else {
            self.error(
                BAD_VALUE,
                span,
                format!("cannot tell the format of \"{path}\" from its name"),
                "not a `.npz` or `.npy` file",
                format!(
                    "`{key}` reads `.npz` and `.npy` files by name; otherwise say the format: `npz(\"{path}\")`, \
                     `npy(\"{path}\")` or `idx(\"{path}\", split: train)`"
                ),
            );
            None
        }
    }

    /// A data source written as a call (or a bare word, as a call without arguments).
    fn source_call(
        &mut self,
        call: &Call,
        use_: DataUse,
        batch: &mut BatchArgs,
        seen: &mut Seen,
    ) -> Option<DataSource> {
        let name = call.callee.name.as_str();
        let extra: &[&str] = if use_ == DataUse::Calibrate { BATCH_ARGS } else { &[] };
        let specific = self.source_arguments(call, use_)?;
        let allowed: Vec<&str> = specific.iter().chain(extra).copied().collect();
        let max_pos = if matches!(name, "random") { 0 } else { 1 };
        let positional_help = source_positional_help(name);
        let (positional, named) = self.call_args(call, &allowed, max_pos, &positional_help, seen);
        let mut path: Option<String> = None;
        let mut ok = true;
        if let Some(p) = positional.first() {
            match &p.kind {
                ExprKind::Str(s) if !s.is_empty() => path = Some(s.clone()),
                _ => {
                    ok = false;
                    self.error(
                        BAD_VALUE,
                        p.span,
                        format!("expected a path string, found {}", describe(p)),
                        "expected a string",
                        positional_help.clone(),
                    );
                }
            }
        }
        let mut split = if use_ == DataUse::TestData {
            Split::Test
        } else {
            Split::Train
        };
        for (key, value) in named {
            match key.name.as_str() {
                "split" => match self.split_value(value) {
                    Some(s) => split = s,
                    None => ok = false,
                },
                // Already checked for duplicates by `call_args`.
                _ => self.batch_arg(key, value, batch, &mut Seen::default()),
            }
        }
        self.checked_source(call, path, split, ok, positional_help)
    }

    /// The named arguments of the source that `call` names (besides the batch arguments of a
    /// calibration); `None`, reported, when the name is not a source that `use_` accepts.
    fn source_arguments(&mut self, call: &Call, use_: DataUse) -> Option<&'static [&'static str]> {
        let name = call.callee.name.as_str();
        let known: &[&str] = if use_ == DataUse::Calibrate {
            CALIBRATION_SOURCES
        } else {
            DATA_SOURCES
        };
        match name {
            "random" if use_ == DataUse::Calibrate => Some(&[]),
            "fashion_mnist" | "idx" => Some(&["split"]),
            "npz" | "npy" => Some(&[]),
            "random" => {
                self.error(
                    BAD_VALUE,
                    call.span,
                    "random data cannot train a model".into(),
                    "random data",
                    "`random(...)` is only for `calibrate` (latency work); train on a file or \
                     `fashion_mnist(split: train)`"
                        .into(),
                );
                None
            }
            _ => {
                self.error(
                    UNKNOWN_DATA_SOURCE,
                    call.callee.span,
                    format!("unknown data source `{name}`"),
                    "not a data source",
                    suggest(
                        did_you_mean(name, known.iter().copied()),
                        format!(
                            "data sources are a file path in quotes (`\"data/train.npz\"`) and {}",
                            list_words(known)
                        ),
                    ),
                );
                None
            }
        }
    }

    /// `split: train` or `split: test`; reports anything else.
    fn split_value(&mut self, value: &Expr) -> Option<Split> {
        match self.word_value(value) {
            Some(("train", _)) => Some(Split::Train),
            Some(("test", _)) => Some(Split::Test),
            _ => {
                let dym = match &value.kind {
                    ExprKind::Path(p) => did_you_mean(&p.text, ["train", "test"]),
                    ExprKind::Str(s) => did_you_mean(s, ["train", "test"]),
                    _ => None,
                };
                self.error(
                    BAD_VALUE,
                    value.span,
                    format!("`split` must be `train` or `test`, found {}", describe(value)),
                    "not a split",
                    suggest(dym, key_help("split")),
                );
                None
            }
        }
    }

    /// The source that `call` names, from its checked arguments; `None` when any was wrong
    /// (`ok` false) or a file source has no path (reported here unless something else was).
    fn checked_source(
        &mut self,
        call: &Call,
        path: Option<String>,
        split: Split,
        ok: bool,
        positional_help: String,
    ) -> Option<DataSource> {
        let name = call.callee.name.as_str();
        match name {
            "random" => ok.then_some(DataSource::Random),
            "fashion_mnist" | "idx" => ok.then_some(DataSource::Idx { dir: path, split }),
            _ => match path {
                Some(path) if ok => Some(if name == "npz" {
                    DataSource::Npz { path }
                } else {
                    DataSource::Npy { path }
                }),
                Some(_) => None,
                None => {
                    if ok {
                        self.error(
                            MISSING_ARGUMENT,
                            call.span,
                            format!("`{name}` needs a path"),
                            "no path",
                            positional_help,
                        );
                    }
                    None
                }
            },
        }
    }

    pub(super) fn data_value(&mut self, e: &Expr, use_: DataUse, key: &str) -> Option<DataSource> {
        let help = key_help(key);
        match &e.kind {
            ExprKind::Str(path) => self.path_source(path, e.span, key),
            ExprKind::Call(_) | ExprKind::Path(_) => {
                let call = self.word_or_call(e, key, help)?;
                self.source_call(&call, use_, &mut BatchArgs::default(), &mut Seen::default())
            }
            _ if !is_literal(e) => {
                self.not_literal(e, &format!("`{key}`"), help);
                None
            }
            _ => {
                self.error(
                    BAD_VALUE,
                    e.span,
                    format!("`{key}` must be a path string or a data source, found {}", describe(e)),
                    "expected data",
                    help.into(),
                );
                None
            }
        }
    }
}

/// How to write the path argument of a source: the help of a wrong or missing one.
fn source_positional_help(name: &str) -> String {
    match name {
        "npz" | "npy" => {
            format!("`{name}` takes one path string: `{name}(\"data/file.{name}\")`")
        }
        "fashion_mnist" | "idx" => {
            format!("`{name}` takes an optional folder and a split: `{name}(\"data/fashion\", split: test)`")
        }
        _ => "`random` takes only named settings, e.g. `random(batches: 8)`".to_string(),
    }
}
