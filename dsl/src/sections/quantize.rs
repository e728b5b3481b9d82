//! Checks a `quantize` section: the scheme, `fuse` chains, tensor specs and their words,
//! observers and `layer` overrides.

use super::values::Bounds;
use super::{
    key_help, list_words, suggest, Calibration, Checker, FuseChain, FuseOp, Granularity, LayerOverride, LayerSelector,
    Observer, QuantizeSettings, Requantize, Scheme, Seen, Spanned, TensorSpec, BAD_ARGUMENT, BAD_ENTRY, BAD_FUSE,
    BAD_GRANULARITY, BAD_VALUE, CONFLICTING_SETTING, DUPLICATE_SETTING, UNKNOWN_ENTRY, UNKNOWN_OBSERVER,
    UNKNOWN_SCHEME, UNKNOWN_WORD,
};
use crate::ast::{CalibrationSource, Call, Ident, KwArg, QSpec, QWord, Quantize, QuantizeEntry, Selector};
use crate::diag::did_you_mean;
use crate::source::Span;

// ---------------------------------------------------------------- word tables

const QUANTIZE_ENTRIES: &[&str] = &[
    "scheme",
    "fuse",
    "observe",
    "calibrate",
    "layer",
    "activations",
    "weights",
    "requantize",
];
const QUANTIZE_ENTRIES_HELP: &str =
    "a `quantize` section takes `scheme`, `fuse`, `observe`, `calibrate`, `layer`, `activations:`, `weights:` and `requantize:`";

const SPEC_WORDS: &[&str] = &[
    "int8",
    "uint8",
    "int4",
    "uint4",
    "per_channel",
    "per_tensor",
    "symmetric",
    "affine",
    "power_of_two",
    "float",
    "minmax",
    "moving_average_minmax",
    "moving_average",
    "histogram",
    "percentile",
];
const SPEC_HELP: &str = "a spec is made of: a type (`int2`..`int8`, `uint2`..`uint8`), `per_channel` or \
     `per_tensor`, `symmetric` or `affine`, `power_of_two`, `float`, and an observer (`minmax`, \
     `moving_average_minmax(momentum: 0.01)`, `histogram(bins: 2048)`, `percentile(p: 99.99)`)";
const OBSERVERS: &[&str] = &[
    "minmax",
    "moving_average_minmax",
    "moving_average",
    "histogram",
    "percentile",
];
const OBSERVER_HELP: &str = "observers are `minmax`, `moving_average_minmax(momentum: 0.01)`, \
     `histogram(bins: 2048)` and `percentile(p: 99.99)`";

/// The parsed kinds of a spec word.
#[derive(Clone, Copy)]
enum SpecWord {
    Dtype { bits: u8, signed: bool },
    Granularity(Granularity),
    Symmetric(bool),
    PowerOfTwo,
    Float,
    Observer(Observer),
}

impl Checker<'_> {
    pub(super) fn quantize(&mut self, q: &Quantize) -> QuantizeSettings {
        let keyword = Span::new(q.span.start, (q.span.start + "quantize".len()).min(q.span.end));
        let mut scheme: Option<Spanned<Scheme>> = None;
        let mut scheme_seen: Option<Span> = None;
        let mut fuse: Vec<FuseChain> = Vec::new();
        let mut fuse_off: Vec<Spanned<String>> = Vec::new();
        let mut activations = TensorSpec::default();
        let mut weights = TensorSpec::default();
        let mut requantize: Option<Spanned<Requantize>> = None;
        let mut calibration: Option<Calibration> = None;
        let mut calibrate_seen: Option<Span> = None;
        let mut layers = Vec::new();

        for entry in &q.entries {
            match entry {
                QuantizeEntry::Scheme(ident) => self.scheme_entry(ident, &mut scheme, &mut scheme_seen),
                QuantizeEntry::Fuse { ops, span } => self.fuse_entry(ops, *span, &mut fuse),
                QuantizeEntry::FuseOff { name, .. } => self.fuse_off_entry(name, &mut fuse_off),
                QuantizeEntry::Observe(specs) => {
                    for spec in specs {
                        self.spec_into(spec, &mut activations, &mut weights, &mut requantize);
                    }
                }
                QuantizeEntry::Spec(spec) => self.spec_into(spec, &mut activations, &mut weights, &mut requantize),
                QuantizeEntry::Calibrate { source, args, span } => {
                    self.calibrate_entry(source, args, *span, &mut calibration, &mut calibrate_seen)
                }
                QuantizeEntry::Layer {
                    selector,
                    skip,
                    specs,
                    span,
                } => {
                    if let Some(l) = self.layer(selector, *skip, specs, *span) {
                        layers.push(l);
                    }
                }
                QuantizeEntry::Unknown { word, span } => self.unknown_entry(word, *span),
            }
        }

        let scheme_defaulted = scheme.is_none();
        QuantizeSettings {
            scheme: scheme.unwrap_or(Spanned::new(Scheme::X86, keyword)),
            scheme_defaulted,
            fuse,
            fuse_off,
            activations,
            weights,
            requantize,
            calibration,
            layers,
            span: q.span,
        }
    }

    /// `scheme NAME`: sets `scheme` unless one was written before (`scheme_seen`) or the name is
    /// unknown.
    fn scheme_entry(&mut self, ident: &Ident, scheme: &mut Option<Spanned<Scheme>>, scheme_seen: &mut Option<Span>) {
        if let Some(first) = *scheme_seen {
            self.error_note(
                DUPLICATE_SETTING,
                ident.span,
                "`scheme` is set twice in `quantize`".into(),
                "second scheme",
                "a `quantize` section has one `scheme`; remove one".into(),
                (first, "first set here".into()),
            );
            return;
        }
        *scheme_seen = Some(ident.span);
        match Scheme::from_name(&ident.name) {
            Some(s) => *scheme = Some(Spanned::new(s, ident.span)),
            None => {
                let names: Vec<&str> = Scheme::ALL.iter().map(|s| s.name()).collect();
                self.error(
                    UNKNOWN_SCHEME,
                    ident.span,
                    format!("unknown scheme `{}`", ident.name),
                    "not a scheme",
                    suggest(
                        did_you_mean(&ident.name, names.iter().copied()),
                        format!("schemes are {}", list_words(&names)),
                    ),
                );
            }
        }
    }

    /// `fuse A -> B -> ...`: adds the chain to `fuse` unless it is invalid or written before.
    fn fuse_entry(&mut self, ops: &[Ident], span: Span, fuse: &mut Vec<FuseChain>) {
        let Some(chain) = self.fuse(ops, span) else {
            return;
        };
        if let Some(first) = fuse
            .iter()
            .find(|f| f.ops.iter().map(|o| o.value).eq(chain.ops.iter().map(|o| o.value)))
        {
            let first = first.span;
            self.error_note(
                DUPLICATE_SETTING,
                chain.span,
                "this `fuse` chain is written twice".into(),
                "same chain again",
                "remove one of the two".into(),
                (first, "first written here".into()),
            );
        } else {
            fuse.push(chain);
        }
    }

    /// `fuse off RULE`: adds the rule to `fuse_off` unless it was turned off before.
    fn fuse_off_entry(&mut self, name: &Ident, fuse_off: &mut Vec<Spanned<String>>) {
        if let Some(first) = fuse_off.iter().find(|f| f.value == name.name) {
            let first = first.span;
            self.error_note(
                DUPLICATE_SETTING,
                name.span,
                format!("rule `{}` is turned off twice", name.name),
                "turned off again",
                "remove one of the two `fuse off` lines".into(),
                (first, "first turned off here".into()),
            );
        } else {
            fuse_off.push(Spanned::new(name.name.clone(), name.span));
        }
    }

    /// `calibrate SOURCE key: value ...`: sets `calibration` unless one was written before
    /// (`calibrate_seen`); a second one is still checked for its own errors.
    fn calibrate_entry(
        &mut self,
        source: &CalibrationSource,
        args: &[KwArg],
        span: Span,
        calibration: &mut Option<Calibration>,
        calibrate_seen: &mut Option<Span>,
    ) {
        let entry_span = args.last().map_or_else(
            || {
                let end = match source {
                    CalibrationSource::File { span, .. } => span.end,
                    CalibrationSource::Call(c) => c.span.end,
                };
                Span::new(span.start, end)
            },
            |a| Span::new(span.start, a.value.span.end),
        );
        let kw = Span::new(span.start, (span.start + "calibrate".len()).min(span.end));
        if let Some(first) = *calibrate_seen {
            self.error_note(
                DUPLICATE_SETTING,
                kw,
                "`calibrate` is written twice in `quantize`".into(),
                "second calibration",
                "a `quantize` section has one `calibrate`; remove one".into(),
                (first, "first written here".into()),
            );
            // Still check it, for its own errors.
            let _ = self.calibration(source, args, entry_span);
            return;
        }
        *calibrate_seen = Some(kw);
        *calibration = self.calibration(source, args, entry_span);
    }

    fn unknown_entry(&mut self, word: &Ident, span: Span) {
        let form = match word.name.as_str() {
            "scheme" => Some("write `scheme x86`, `scheme symmetric8` or `scheme power_of_two`"),
            "fuse" => Some(
                "write `fuse conv2d -> batch_norm -> relu` (two or more op names joined by `->`) or \
                 `fuse off RULE` (turn a rule off)",
            ),
            "observe" => Some("write `observe activations: histogram(bins: 2048); weights: minmax`"),
            "calibrate" => Some(
                "write `calibrate \"data.npz\" batches: 32`, `calibrate fashion_mnist(split: train)` or \
                 `calibrate random(batches: 8)`",
            ),
            "layer" => Some(
                "write `layer NAME { ... }`, `layer \"glob*\" { ... }` or `layer op(kind) { ... }`, with `skip`, \
                 `activations: ...` or `weights: ...` inside",
            ),
            "activations" | "weights" => {
                Some("write quantization words after the colon, e.g. `weights: int8 per_channel symmetric minmax`")
            }
            "skip" => Some("`skip` goes inside a layer block: `layer NAME { skip }`"),
            _ => None,
        };
        match form {
            Some(help) => self.error(
                BAD_ENTRY,
                span,
                format!("malformed `{}` entry", word.name),
                format!("not a valid `{}` entry", word.name),
                help.to_string(),
            ),
            None => self.error(
                UNKNOWN_ENTRY,
                word.span,
                format!("unknown entry `{}` in `quantize`", word.name),
                "unknown entry",
                suggest(
                    did_you_mean(&word.name, QUANTIZE_ENTRIES.iter().copied()),
                    QUANTIZE_ENTRIES_HELP,
                ),
            ),
        }
    }

    fn fuse(&mut self, ops: &[Ident], span: Span) -> Option<FuseChain> {
        let mut out = Vec::new();
        let mut ok = true;
        for op in ops {
            match FuseOp::from_name(&op.name) {
                Some(o) => out.push(Spanned::new(o, op.span)),
                None => {
                    ok = false;
                    let names: Vec<&str> = FuseOp::ALL.iter().map(|o| o.name()).collect();
                    self.error(
                        BAD_FUSE,
                        op.span,
                        format!("`{}` cannot be fused", op.name),
                        "not a fusable op",
                        suggest(
                            did_you_mean(&op.name, names.iter().copied()),
                            format!("ops that fuse are {}", list_words(&names)),
                        ),
                    );
                }
            }
        }
        let end = ops.last().map_or(span.end, |o| o.span.end);
        let span = Span::new(span.start, end);
        if ops.len() < 2 {
            self.error(
                BAD_FUSE,
                span,
                "a `fuse` chain needs at least two ops".into(),
                "too short",
                "write two or more ops joined by `->`, e.g. `fuse conv2d -> relu`".into(),
            );
            return None;
        }
        ok.then_some(FuseChain { ops: out, span })
    }

    /// Adds a spec's words to the activations or weights spec, or sets `requantize` (by its key).
    fn spec_into(
        &mut self,
        spec: &QSpec,
        activations: &mut TensorSpec,
        weights: &mut TensorSpec,
        requantize: &mut Option<Spanned<Requantize>>,
    ) {
        match spec.key.name.as_str() {
            "weights" => self.spec_words(spec, weights, true),
            "requantize" => self.requantize_words(spec, requantize),
            _ => self.spec_words(spec, activations, false),
        }
    }

    /// `requantize: float`, `float_bias` or `integer`: one word; a second `requantize:` in the
    /// same scope is a duplicate.
    fn requantize_words(&mut self, spec: &QSpec, into: &mut Option<Spanned<Requantize>>) {
        let help = "write `requantize: float` (ONNX Runtime's f32 rule, bias in int32), `requantize: float_bias` \
                    (PyTorch's x86 engine: the same with the bias added in f32) or `requantize: integer` \
                    (multiplier and shift, for integer-only targets)";
        let mut words = spec.words.iter();
        let Some(first) = words.next() else { return };
        let span = first.span();
        let rule = match first {
            QWord::Word(i) => Requantize::from_name(&i.name),
            _ => None,
        };
        let Some(rule) = rule else {
            let text = match first {
                QWord::Word(i) => format!("unknown requantization rule `{}`", i.name),
                _ => "`requantize:` takes a word".to_string(),
            };
            self.error(BAD_VALUE, span, text, "not `float` or `integer`", help.into());
            return;
        };
        if let Some(extra) = words.next() {
            self.error(
                BAD_VALUE,
                extra.span(),
                "`requantize:` takes one word".into(),
                "extra word",
                help.into(),
            );
            return;
        }
        if let Some(before) = into {
            self.error_note(
                DUPLICATE_SETTING,
                span,
                "`requantize:` is written twice here".into(),
                "second `requantize:`",
                "keep one `requantize:` per section or layer block".into(),
                (before.span, "first written here".into()),
            );
            return;
        }
        *into = Some(Spanned::new(rule, span));
    }

    fn spec_words(&mut self, spec: &QSpec, into: &mut TensorSpec, is_weights: bool) {
        for w in &spec.words {
            if let Some(word) = self.spec_word(w, is_weights) {
                self.apply_word(word, w.span(), into);
            }
        }
    }

    fn spec_word(&mut self, w: &QWord, is_weights: bool) -> Option<SpecWord> {
        match w {
            QWord::Number(v, span) => {
                self.error(
                    BAD_VALUE,
                    *span,
                    format!("a number alone (`{v}`) means nothing in a quantization spec"),
                    "a bare number",
                    "bits are part of the type word (`int8`, `uint4`); observer settings go in a call \
                     (`histogram(bins: 2048)`, `percentile(p: 99.99)`)"
                        .into(),
                );
                None
            }
            QWord::Word(ident) => self.spec_bare_word(ident, is_weights),
            QWord::Call(call) => {
                let name = call.callee.name.as_str();
                if OBSERVERS.contains(&name) {
                    return self.observer_call(call).map(SpecWord::Observer);
                }
                if Self::known_plain_word(name) {
                    self.error(
                        BAD_ARGUMENT,
                        call.span,
                        format!("`{name}` takes no arguments"),
                        "arguments here",
                        format!("write `{name}` alone; only observers take arguments ({OBSERVER_HELP})"),
                    );
                    return None;
                }
                self.error(
                    UNKNOWN_OBSERVER,
                    call.callee.span,
                    format!("unknown observer `{name}`"),
                    "not an observer",
                    suggest(did_you_mean(name, OBSERVERS.iter().copied()), OBSERVER_HELP),
                );
                None
            }
        }
    }

    fn known_plain_word(name: &str) -> bool {
        SPEC_WORDS.contains(&name) || Self::dtype_bits(name).is_some()
    }

    /// `int<N>` / `uint<N>` with digits after: `(signed, bits)`, bits `None` when out of range.
    fn dtype_bits(name: &str) -> Option<(bool, Option<u8>)> {
        let (signed, digits) = if let Some(d) = name.strip_prefix("uint") {
            (false, d)
        } else if let Some(d) = name.strip_prefix("int") {
            (true, d)
        } else {
            return None;
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let bits = digits
            .parse::<u64>()
            .ok()
            .filter(|b| (2..=8).contains(b))
            .map(|b| b as u8);
        Some((signed, bits))
    }

    fn spec_bare_word(&mut self, ident: &Ident, is_weights: bool) -> Option<SpecWord> {
        let name = ident.name.as_str();
        if let Some((signed, bits)) = Self::dtype_bits(name) {
            return match bits {
                Some(bits) => Some(SpecWord::Dtype { bits, signed }),
                None => {
                    self.error(
                        BAD_VALUE,
                        ident.span,
                        format!("`{name}`: bits must be 2 to 8"),
                        "unsupported bit width",
                        "quantized types are `int2`..`int8` and `uint2`..`uint8`; write `float` to keep a \
                         tensor in float"
                            .into(),
                    );
                    None
                }
            };
        }
        let word = match name {
            "per_channel" if !is_weights => {
                self.error(
                    BAD_GRANULARITY,
                    ident.span,
                    "`per_channel` is for weights only".into(),
                    "activations are quantized per tensor",
                    "activations have one scale per tensor: remove `per_channel`, or write it under `weights:`".into(),
                );
                return None;
            }
            "per_channel" => SpecWord::Granularity(Granularity::PerChannel),
            "per_tensor" => SpecWord::Granularity(Granularity::PerTensor),
            "symmetric" => SpecWord::Symmetric(true),
            "affine" => SpecWord::Symmetric(false),
            "power_of_two" => SpecWord::PowerOfTwo,
            "float" => SpecWord::Float,
            "minmax" => SpecWord::Observer(Observer::MinMax),
            "moving_average_minmax" | "moving_average" => SpecWord::Observer(Observer::MovingAverageMinMax {
                momentum: Observer::DEFAULT_MOMENTUM,
            }),
            "histogram" => SpecWord::Observer(Observer::Histogram {
                bins: Observer::DEFAULT_BINS,
            }),
            "percentile" => SpecWord::Observer(Observer::Percentile {
                p: Observer::DEFAULT_PERCENTILE,
            }),
            _ => {
                self.error(
                    UNKNOWN_WORD,
                    ident.span,
                    format!("unknown quantization word `{name}`"),
                    "not a quantization word",
                    suggest(did_you_mean(name, SPEC_WORDS.iter().copied()), SPEC_HELP),
                );
                return None;
            }
        };
        Some(word)
    }

    fn observer_call(&mut self, call: &Call) -> Option<Observer> {
        let name = call.callee.name.as_str();
        let allowed: &[&str] = match name {
            "minmax" => &[],
            "moving_average_minmax" | "moving_average" => &["momentum"],
            "histogram" => &["bins"],
            _ => &["p"],
        };
        let (_, named) = self.call_args(call, allowed, 0, "", &mut Seen::default());
        let mut ok = true;
        let mut obs = match name {
            "minmax" => Observer::MinMax,
            "moving_average_minmax" | "moving_average" => Observer::MovingAverageMinMax {
                momentum: Observer::DEFAULT_MOMENTUM,
            },
            "histogram" => Observer::Histogram {
                bins: Observer::DEFAULT_BINS,
            },
            _ => Observer::Percentile {
                p: Observer::DEFAULT_PERCENTILE,
            },
        };
        for (key, value) in named {
            match (&mut obs, key.name.as_str()) {
                (Observer::MovingAverageMinMax { momentum }, "momentum") => {
                    match self.float_value(value, "`momentum`", Bounds::UNIT_LEFT_OPEN, key_help("ema_momentum")) {
                        Some(v) => *momentum = v,
                        None => ok = false,
                    }
                }
                (Observer::Histogram { bins }, "bins") => match self.int_value(value, "`bins`", 1, key_help("bins")) {
                    Some(v) if v <= u64::from(Observer::MAX_BINS) => *bins = v as u32,
                    Some(v) => {
                        ok = false;
                        self.error(
                            BAD_VALUE,
                            value.span,
                            format!("`bins` must be at most {}, found {v}", Observer::MAX_BINS),
                            "too many bins",
                            key_help("bins").into(),
                        );
                    }
                    None => ok = false,
                },
                (Observer::Percentile { p }, "p") => {
                    match self.float_value(value, "`p`", Bounds::PERCENT, key_help("p")) {
                        Some(v) => *p = v,
                        None => ok = false,
                    }
                }
                _ => {}
            }
        }
        ok.then_some(obs)
    }

    fn word_text(w: SpecWord) -> String {
        match w {
            SpecWord::Dtype { bits, signed } => {
                format!("{}int{bits}", if signed { "" } else { "u" })
            }
            SpecWord::Granularity(g) => g.name().into(),
            SpecWord::Symmetric(true) => "symmetric".into(),
            SpecWord::Symmetric(false) => "affine".into(),
            SpecWord::PowerOfTwo => "power_of_two".into(),
            SpecWord::Float => "float".into(),
            SpecWord::Observer(o) => o.name().into(),
        }
    }

    /// The words already in a spec, with their spans (for conflict reports).
    fn words_in(spec: &TensorSpec) -> Vec<(SpecWord, Span)> {
        let mut out = Vec::new();
        if let (Some(b), Some(s)) = (spec.bits, spec.signed) {
            out.push((
                SpecWord::Dtype {
                    bits: b.value,
                    signed: s.value,
                },
                b.span,
            ));
        }
        if let Some(g) = spec.granularity {
            out.push((SpecWord::Granularity(g.value), g.span));
        }
        if let Some(s) = spec.symmetric {
            out.push((SpecWord::Symmetric(s.value), s.span));
        }
        if let Some(p) = spec.power_of_two {
            out.push((SpecWord::PowerOfTwo, p.span));
        }
        if let Some(o) = spec.observer {
            out.push((SpecWord::Observer(o.value), o.span));
        }
        if let Some(f) = spec.float {
            out.push((SpecWord::Float, f.span));
        }
        out
    }

    fn apply_word(&mut self, word: SpecWord, span: Span, into: &mut TensorSpec) {
        let existing = Self::words_in(into);
        let same_slot = |a: SpecWord, b: SpecWord| {
            matches!(
                (a, b),
                (SpecWord::Dtype { .. }, SpecWord::Dtype { .. })
                    | (SpecWord::Granularity(_), SpecWord::Granularity(_))
                    | (SpecWord::Symmetric(_), SpecWord::Symmetric(_))
                    | (SpecWord::PowerOfTwo, SpecWord::PowerOfTwo)
                    | (SpecWord::Float, SpecWord::Float)
                    | (SpecWord::Observer(_), SpecWord::Observer(_))
            )
        };
        let text = Self::word_text(word);
        // The same setting again, or `float` together with a quantization setting.
        let clash = existing.iter().find(|(w, _)| same_slot(*w, word)).or_else(|| {
            existing
                .iter()
                .find(|(w, _)| matches!(w, SpecWord::Float) != matches!(word, SpecWord::Float))
        });
        if let Some((first, first_span)) = clash {
            let first_text = Self::word_text(*first);
            if first_text == text {
                self.error_note(
                    DUPLICATE_SETTING,
                    span,
                    format!("`{text}` is written twice"),
                    "written again here",
                    format!("remove the second `{text}`; each setting of a tensor is written once"),
                    (*first_span, "first written here".into()),
                );
            } else if matches!(word, SpecWord::Float) || matches!(first, SpecWord::Float) {
                self.error_note(
                    CONFLICTING_SETTING,
                    span,
                    format!("`{text}` contradicts `{first_text}`"),
                    format!("contradicts `{first_text}`"),
                    "`float` keeps a tensor in float, so it cannot be combined with quantization words; keep \
                     one or the other"
                        .into(),
                    (*first_span, format!("`{first_text}` written here")),
                );
            } else {
                self.error_note(
                    CONFLICTING_SETTING,
                    span,
                    format!("`{text}` contradicts `{first_text}`"),
                    format!("contradicts `{first_text}`"),
                    format!("a tensor has one setting of each kind: keep `{first_text}` or `{text}`"),
                    (*first_span, format!("`{first_text}` written here")),
                );
            }
            return;
        }
        match word {
            SpecWord::Dtype { bits, signed } => {
                into.bits = Some(Spanned::new(bits, span));
                into.signed = Some(Spanned::new(signed, span));
            }
            SpecWord::Granularity(g) => into.granularity = Some(Spanned::new(g, span)),
            SpecWord::Symmetric(s) => into.symmetric = Some(Spanned::new(s, span)),
            SpecWord::PowerOfTwo => into.power_of_two = Some(Spanned::new(true, span)),
            SpecWord::Float => into.float = Some(Spanned::new(true, span)),
            SpecWord::Observer(o) => into.observer = Some(Spanned::new(o, span)),
        }
    }

    fn layer(&mut self, selector: &Selector, skip: Option<Span>, specs: &[QSpec], span: Span) -> Option<LayerOverride> {
        let selector = match selector {
            Selector::Name(p) => Spanned::new(LayerSelector::Name(p.text.clone()), p.span),
            Selector::Glob { pattern, span } => {
                if pattern.is_empty() {
                    self.error(
                        BAD_VALUE,
                        *span,
                        "an empty pattern selects no layer".into(),
                        "empty pattern",
                        "write a glob over node names, e.g. `layer \"layer1.*\" { ... }` (`*` and `?` are wildcards)"
                            .into(),
                    );
                    return None;
                }
                Spanned::new(LayerSelector::Glob(pattern.clone()), *span)
            }
            Selector::Op(i) => Spanned::new(LayerSelector::Op(i.name.clone()), i.span),
        };
        let mut activations = TensorSpec::default();
        let mut weights = TensorSpec::default();
        let mut requantize = None;
        for spec in specs {
            if let Some(skip) = skip {
                let spec_span = Span::new(
                    spec.key.span.start,
                    spec.words.last().map_or(spec.key.span.end, |w| w.span().end),
                );
                let key = &spec.key.name;
                let (at, note, label) = if skip.start > spec.key.span.start {
                    (
                        skip,
                        (spec.key.span, format!("`{key}:` written here")),
                        format!("contradicts `{key}:`"),
                    )
                } else {
                    (
                        spec_span,
                        (skip, "`skip` written here".into()),
                        "contradicts `skip`".to_string(),
                    )
                };
                self.error_note(
                    CONFLICTING_SETTING,
                    at,
                    format!("`skip` and `{key}:` in one layer block"),
                    label,
                    format!(
                        "`skip` keeps the whole layer in float; remove it, or remove `{key}:` (write `{key}: float` \
                         to keep only the {key} in float)"
                    ),
                    note,
                );
                continue;
            }
            self.spec_into(spec, &mut activations, &mut weights, &mut requantize);
        }
        Some(LayerOverride {
            selector,
            skip,
            activations,
            weights,
            requantize,
            span,
        })
    }
}
