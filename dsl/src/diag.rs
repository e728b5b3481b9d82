//! Diagnostics: one error a user caused, with a stable code, a span, a label and a help line.
//! Libraries collect them; the command line renders them with miette against the `SourceMap`.

use std::fmt;
use std::sync::Arc;

use miette::{LabeledSpan, SourceCode};

use crate::source::{SourceMap, Span};

/// One user-facing error. `help` is never empty: every error says what to do about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    /// Stable identifier, e.g. `qc::unknown-op`.
    pub code: &'static str,
    pub message: String,
    pub span: Span,
    pub label: String,
    pub help: String,
    /// Further places that explain the error (e.g. where a block was instantiated).
    pub notes: Vec<(Span, String)>,
}

impl Diagnostic {
    pub fn new(code: &'static str, span: Span, message: impl Into<String>) -> Self {
        Diagnostic {
            code,
            message: message.into(),
            span,
            label: String::from("here"),
            help: String::new(),
            notes: Vec::new(),
        }
    }
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = help.into();
        self
    }
    pub fn note(mut self, span: Span, text: impl Into<String>) -> Self {
        self.notes.push((span, text.into()));
        self
    }
}

/// "did you mean `x`?" for a name among candidates, or nothing when none is close.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    closest(name, candidates).map(|c| format!("did you mean `{c}`?"))
}

/// The candidate closest to `name` by Jaro-Winkler similarity, if it is similar enough.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(name, c);
        if score >= 0.8 && best.is_none_or(|(b, _)| score > b) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c)
}

/// A diagnostic bound to its sources, ready for miette to render.
#[derive(Clone)]
pub struct Rendered {
    pub diagnostic: Diagnostic,
    pub sources: Arc<SourceMap>,
}

impl fmt::Debug for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.diagnostic.fmt(f)
    }
}

impl fmt::Display for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.diagnostic.message)
    }
}

impl std::error::Error for Rendered {}

impl miette::Diagnostic for Rendered {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.diagnostic.code))
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        let mut help = self.diagnostic.help.clone();
        for (span, text) in self.notes_in_help() {
            help.push_str(&format!("\nnote: {text} ({})", self.sources.location(*span)));
        }
        Some(Box::new(help))
    }
    fn source_code(&self) -> Option<&dyn SourceCode> {
        Some(&*self.sources)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let d = &self.diagnostic;
        let primary = LabeledSpan::new_primary_with_span(Some(d.label.clone()), d.span);
        let in_help = self.notes_in_help();
        let notes = d
            .notes
            .iter()
            .filter(move |n| !in_help.iter().any(|h| std::ptr::eq(*h, *n)))
            .map(|(s, t)| LabeledSpan::new_with_span(Some(t.clone()), *s));
        Some(Box::new(std::iter::once(primary).chain(notes)))
    }
}

impl Rendered {
    /// Notes that cannot be labels in the error's snippet: those in another file, and those
    /// before the error (miette's header would then show the note's location first). They are
    /// written in the help text with their `file:line:col`.
    fn notes_in_help(&self) -> Vec<&(Span, String)> {
        let d = &self.diagnostic;
        let file = self.sources.file_at(d.span.start).map(|f| f.base);
        d.notes
            .iter()
            .filter(|(s, _)| self.sources.file_at(s.start).map(|f| f.base) != file || s.start < d.span.start)
            .collect()
    }
}

/// All diagnostics of one run, in source order.
#[derive(Clone, Debug, Default)]
pub struct Diagnostics {
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.items.push(d);
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    pub fn extend(&mut self, other: Diagnostics) {
        self.items.extend(other.items);
    }
    /// Sorted by position, duplicates (same code and span) removed.
    pub fn finish(mut self) -> Vec<Diagnostic> {
        self.items.sort_by_key(|d| (d.span.start, d.span.end));
        self.items
            .dedup_by(|a, b| a.code == b.code && a.span == b.span && a.message == b.message);
        self.items
    }
}

/// At most this many diagnostics are rendered; the rest are counted in one line (thousands of
/// errors would otherwise each print their source line: output quadratic in the input).
pub const MAX_SHOWN: usize = 50;
/// A source line wider than this (in characters) is not shown; the diagnostic names its
/// `file:line:col` instead.
pub const MAX_SHOWN_LINE: usize = 300;

/// Every diagnostic of a failed run as the command line prints it (in colour when `colour`),
/// then the count line (`error: 2 problems found`): what `qc` writes to stderr and what the
/// Python package's `QcError` says.
pub fn render_report(diags: &[Diagnostic], sources: &Arc<SourceMap>, colour: bool) -> String {
    let mut out = if colour {
        let handler = miette::GraphicalReportHandler::new().with_links(false);
        render_with(&handler, diags, sources)
    } else {
        render_plain(diags, sources)
    };
    let n = diags.len();
    out.push_str(&format!("error: {n} problem{} found\n", if n == 1 { "" } else { "s" }));
    out
}

/// Renders without colour (files, pipes, tests), 100 columns wide.
pub fn render_plain(diags: &[Diagnostic], sources: &Arc<SourceMap>) -> String {
    let handler = miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .with_links(false);
    render_with(&handler, diags, sources)
}

/// Renders the first [`MAX_SHOWN`] diagnostics with `handler`, those on a line wider than
/// [`MAX_SHOWN_LINE`] without the line, then how many more there are.
pub fn render_with(handler: &miette::GraphicalReportHandler, diags: &[Diagnostic], sources: &Arc<SourceMap>) -> String {
    let mut out = String::new();
    for d in diags.iter().take(MAX_SHOWN) {
        if widest_line(d, sources) > MAX_SHOWN_LINE {
            out.push_str(&render_without_source(d, sources));
            continue;
        }
        let r = Rendered {
            diagnostic: d.clone(),
            sources: sources.clone(),
        };
        let _ = handler.render_report(&mut out, &r);
    }
    if diags.len() > MAX_SHOWN {
        let more = diags.len() - MAX_SHOWN;
        out.push_str(&format!(
            "… and {more} more problem{} (the first {MAX_SHOWN} are shown; fix them and check again)\n",
            if more == 1 { "" } else { "s" }
        ));
    }
    out
}

/// The widest source line a diagnostic would show (its span's and its notes').
fn widest_line(d: &Diagnostic, sources: &SourceMap) -> usize {
    std::iter::once(d.span)
        .chain(d.notes.iter().map(|(s, _)| *s))
        .map(|span| line_width(sources, span))
        .max()
        .unwrap_or(0)
}

/// The width in characters of the line holding a span's start.
fn line_width(sources: &SourceMap, span: Span) -> usize {
    let Some(f) = sources.file_at(span.start) else { return 0 };
    let at = (span.start - f.base).min(f.text.len());
    let start = f.text[..at].rfind('\n').map_or(0, |i| i + 1);
    let end = f.text[at..].find('\n').map_or(f.text.len(), |i| at + i);
    f.text[start..end].chars().count()
}

/// A diagnostic on a line too wide to show: its message, location, label, notes and help.
fn render_without_source(d: &Diagnostic, sources: &SourceMap) -> String {
    let width = line_width(sources, d.span);
    let mut out = format!(
        "{code}\n\n  × {message}\n   at {at}: {label} (the line is {width} characters wide; not shown)\n",
        code = d.code,
        message = d.message,
        at = sources.location(d.span),
        label = d.label,
    );
    for (span, text) in &d.notes {
        out.push_str(&format!("   note at {}: {text}\n", sources.location(*span)));
    }
    out.push_str(&format!("  help: {}\n\n", d.help));
    out
}
