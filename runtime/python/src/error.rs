//! `qc.QcError`, the one exception the package raises for anything a user supplied: its message
//! is the text `qc` prints on stderr for the same mistake (rendered diagnostics with
//! `file:line:col`, the caret and the help line for recipes; `error:` and `help:` lines otherwise).

use std::sync::Arc;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::PyErr;
use qc_compiler::CompileError;
use qc_dsl::SourceMap;

create_exception!(
    qc,
    QcError,
    PyException,
    "A recipe, a checkpoint, a model file or an input that qc cannot use. The message is what the \
     `qc` command prints for the same mistake: for a recipe, each problem with its file:line:col, \
     the source line with a caret under the fault, and a help line."
);

/// A `QcError` whose message is `text` (the `error:`/`help:` lines).
pub fn qc_error(text: impl Into<String>) -> PyErr {
    QcError::new_err(text.into().trim_end().to_string())
}

/// The `QcError` of a failed compile: the diagnostics rendered as `qc` renders them (without
/// colour), or the internal error's two lines.
pub fn compile_error(err: CompileError, sources: &Arc<SourceMap>) -> PyErr {
    qc_error(compile_error_text(err, sources))
}

/// The text of [`compile_error`].
pub fn compile_error_text(err: CompileError, sources: &Arc<SourceMap>) -> String {
    match err {
        CompileError::User(diags) => qc_dsl::diag::render_report(&diags, sources, false),
        CompileError::Internal { pass, message } => format!(
            "internal error: the verifier failed after pass `{pass}`: {message}\n\
             help: this is a bug in qc, not in your recipe; please report it with the recipe"
        ),
    }
}
