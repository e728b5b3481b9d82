//! Checks the `quantize`, `qat` and `train` sections of a recipe, and what its `input` lines
//! declare after their types (`normalize(...)`), and turns them into typed, validated settings.
//!
//! Every user error becomes a [`Diagnostic`] pointing at the offending word or value; checking
//! goes on after an error so that one run reports all of them. Every setting keeps the [`Span`]
//! of the recipe text that decided it, so that `qc plan` can say which line decided what. A
//! setting that was not written is `None` (or, for the scheme, marked as defaulted); the
//! documented defaults are applied by the `effective` accessors and by [`Scheme::defaults`].
//!
//! The typed settings are in `settings`; the checker, one file per sub-language, is in
//! `quantize` (the `quantize` section), `data` (calibration and training data sources),
//! `train` (`train` and `qat` sections), `inputs` (`normalize(...)` on `input` lines) and
//! `weights` (the options of `weights` lines), with the reading of plain values in `values`.

mod data;
mod inputs;
mod quantize;
mod settings;
mod train;
mod values;
mod weights;

pub use settings::{
    defaults, Calibration, DataSource, FuseChain, FuseOp, Granularity, InputSettings, KeyRemap, LayerOverride,
    LayerSelector, NodeQuant, Normalize, Observer, Optimizer, QatSettings, QuantizeSettings, Rename, Requantize,
    Schedule, Scheme, Sections, Spanned, Split, TensorDefaults, TensorSpec, TrainSettings, WeightsSettings,
};

use crate::ast::Recipe;
use crate::diag::{Diagnostic, Diagnostics};
use crate::source::Span;

// ---------------------------------------------------------------- diagnostic codes

const UNKNOWN_SETTING: &str = "qc::unknown-setting";
const UNKNOWN_ENTRY: &str = "qc::unknown-entry";
const BAD_ENTRY: &str = "qc::bad-entry";
const UNKNOWN_SCHEME: &str = "qc::unknown-scheme";
const UNKNOWN_WORD: &str = "qc::unknown-word";
const UNKNOWN_OBSERVER: &str = "qc::unknown-observer";
const UNKNOWN_ARGUMENT: &str = "qc::unknown-argument";
const UNKNOWN_DATA_SOURCE: &str = "qc::unknown-data-source";
const BAD_FUSE: &str = "qc::bad-fuse";
const BAD_VALUE: &str = "qc::bad-value";
const BAD_ARGUMENT: &str = "qc::bad-argument";
const MISSING_ARGUMENT: &str = "qc::missing-argument";
const BAD_GRANULARITY: &str = "qc::bad-granularity";
const DUPLICATE_SETTING: &str = "qc::duplicate-setting";
const CONFLICTING_SETTING: &str = "qc::conflicting-setting";
const DUPLICATE_SECTION: &str = "qc::duplicate-section";
const MOVED_SETTING: &str = "qc::moved-setting";

/// Checks the sections of a recipe, reporting every error to `diags`.
pub fn check(recipe: &Recipe, diags: &mut Diagnostics) -> Sections {
    let mut c = Checker {
        diags,
        first_input: inputs::first_input(recipe),
    };
    let inputs = c.inputs(recipe);
    let quantize = c.first_section(&recipe.quantize, "quantize", |q| q.span, |c, q| c.quantize(q));
    let qat = c.first_section(&recipe.qat, "qat", |s| s.span, |c, s| c.loop_settings(s, "qat"));
    let train = c.first_section(
        &recipe.train,
        "train",
        |s| s.span,
        |c, s| c.loop_settings(s, "train").training,
    );
    let weights = c.weights(&recipe.weights);
    Sections {
        quantize,
        qat,
        train,
        inputs,
        weights,
    }
}

// ---------------------------------------------------------------- help texts

/// What a setting or argument accepts, with an example: the help of its diagnostics.
fn key_help(key: &str) -> &'static str {
    match key {
        "epochs" => "`epochs` is a whole number of passes over the training data, at least 1 (e.g. `epochs: 3`)",
        "lr" => "`lr` is the learning rate, a number above 0 (e.g. `lr: 1e-4`)",
        "optimizer" => {
            "`optimizer` is `sgd`, `sgd(momentum: 0.9, nesterov: false)`, `adam` or `adam(beta1: 0.9, beta2: 0.999)`"
        }
        "batch_size" => "`batch_size` is a whole number of samples per step, at least 1 (e.g. `batch_size: 64`)",
        "weight_decay" => "`weight_decay` is a number, 0 or more (e.g. `weight_decay: 1e-4`)",
        "freeze_bn_after" => {
            "`freeze_bn_after` is the number of epochs after which batch-norm statistics freeze, 0 or more"
        }
        "freeze_observers_after" => {
            "`freeze_observers_after` is the number of epochs after which observers freeze, 0 or more"
        }
        "freeze_ranges_after" => {
            "`freeze_ranges_after` is the number of epochs after which the quantization ranges (observed or learned) freeze, 0 or more"
        }
        "learnable_scales" => "`learnable_scales` is `true` or `false`",
        "schedule" => "`schedule` is `constant`, `cosine` or `step(every: 2, gamma: 0.1)`",
        "seed" => "`seed` is a whole number, 0 or more (e.g. `seed: 1`)",
        "threads" => "`threads` is a whole number of worker threads, at least 1",
        "data" | "test_data" => {
            "data is a file (`\"train.npz\"`, `npz(\"...\")`, `npy(\"...\")`) or IDX files \
             (`fashion_mnist(split: train)`, `fashion_mnist(\"dir\", split: test)`, `idx(\"dir\", split: train)`)"
        }
        "normalize" => {
            "write `normalize(mean: M, std: S)` after the input's type: numbers (std above 0), or lists of one \
             value per channel (e.g. `normalize(mean: 0.2860, std: 0.3530)`, `normalize(mean: [0.485, 0.456, 0.406], \
             std: [0.229, 0.224, 0.225])`)"
        }
        "limit" => "`limit` is the most training samples to use, at least 1 (e.g. `limit: 1000` for a quick run)",
        "batches" => "`batches` is the number of calibration batches, at least 1 (e.g. `batches: 32`)",
        "samples" => "`samples` is the number of calibration samples, at least 1 (e.g. `samples: 1000`)",
        "split" => "`split` is `train` or `test`",
        "momentum" => "`momentum` is a number at least 0 and below 1 (e.g. `momentum: 0.9`)",
        "nesterov" => "`nesterov` is `true` or `false`",
        "beta1" | "beta2" => "Adam's betas are numbers at least 0 and below 1 (e.g. `beta1: 0.9, beta2: 0.999`)",
        "every" => "`every` is a whole number of epochs, at least 1 (e.g. `step(every: 2, gamma: 0.1)`)",
        "gamma" => "`gamma` is the factor applied to the rate, a number above 0 (e.g. `gamma: 0.1`)",
        "bins" => "`bins` is a whole number of histogram bins, 1 to 1048576 (e.g. `histogram(bins: 2048)`)",
        "p" => "`p` is a percentile above 0 and at most 100 (e.g. `percentile(p: 99.99)`)",
        "ema_momentum" => {
            "`momentum` of a moving average is above 0 and at most 1 (e.g. `moving_average_minmax(momentum: 0.01)`)"
        }
        _ => "see docs/recipe-language.md for the accepted values",
    }
}

fn list_words(words: &[&str]) -> String {
    words.iter().map(|w| format!("`{w}`")).collect::<Vec<_>>().join(", ")
}

/// "did you mean `x`? REST", or just REST.
fn suggest(dym: Option<String>, rest: impl AsRef<str>) -> String {
    match dym {
        Some(d) => format!("{d} {}", rest.as_ref()),
        None => rest.as_ref().to_string(),
    }
}

// ---------------------------------------------------------------- checker

/// Checks sections, reporting every error to `diags`. Its methods are spread over the
/// submodules, one file per sub-language.
struct Checker<'d> {
    diags: &'d mut Diagnostics,
    /// The recipe's first input line, for the help of a refused `train { normalize }`.
    first_input: Option<inputs::FirstInput>,
}

/// Names already given in one place (a section, a call), for duplicate detection.
#[derive(Default)]
struct Seen(Vec<(String, Span)>);

impl Checker<'_> {
    fn error(&mut self, code: &'static str, span: Span, message: String, label: impl Into<String>, help: String) {
        self.diags
            .push(Diagnostic::new(code, span, message).label(label).help(help));
    }

    fn error_note(
        &mut self,
        code: &'static str,
        span: Span,
        message: String,
        label: impl Into<String>,
        help: String,
        note: (Span, String),
    ) {
        self.diags.push(
            Diagnostic::new(code, span, message)
                .label(label)
                .help(help)
                .note(note.0, note.1),
        );
    }

    /// Records `name` at `span`; reports a duplicate and returns false if it was seen before.
    fn first_time(&mut self, seen: &mut Seen, name: &str, span: Span, place: &str) -> bool {
        if let Some((_, first)) = seen.0.iter().find(|(n, _)| n == name) {
            let first = *first;
            self.error_note(
                DUPLICATE_SETTING,
                span,
                format!("`{name}` is set twice in {place}"),
                "set again here",
                format!("remove one of the two `{name}`; each setting is written once"),
                (first, "first set here".into()),
            );
            return false;
        }
        seen.0.push((name.to_string(), span));
        true
    }

    /// Checks every section of one kind, reports all but the first as duplicates and returns
    /// the first one's settings.
    fn first_section<S, T>(
        &mut self,
        sections: &[S],
        keyword: &str,
        span_of: impl Fn(&S) -> Span,
        mut check: impl FnMut(&mut Self, &S) -> T,
    ) -> Option<T> {
        let mut first = None;
        for (i, s) in sections.iter().enumerate() {
            let out = check(self, s);
            if i == 0 {
                first = Some(out);
                continue;
            }
            let kw = |sp: Span| Span::new(sp.start, (sp.start + keyword.len()).min(sp.end));
            self.error_note(
                DUPLICATE_SECTION,
                kw(span_of(s)),
                format!("a second `{keyword}` section"),
                "second section",
                format!("a recipe (with its includes) has at most one `{keyword}` section: merge the two"),
                (kw(span_of(&sections[0])), "first section here".into()),
            );
        }
        first
    }
}
