//! The `.qrecipe` language: grammar (pest), AST with spans, section checking and diagnostics.
//!
//! `load` reads a recipe and everything it includes and returns the AST together with every
//! diagnostic found; nothing here evaluates the model (the compiler expands blocks).

pub mod ast;
pub mod diag;
mod lexical;
pub mod parse;
pub mod sections;
pub mod source;

use std::path::Path;
use std::sync::Arc;

pub use diag::{Diagnostic, Diagnostics};
pub use source::{SourceMap, Span};

/// A parsed recipe with its sources and what was wrong with it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub recipe: ast::Recipe,
    pub sections: sections::Sections,
    pub sources: Arc<SourceMap>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Why a recipe could not be read at all (before any diagnostic can point into it).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read recipe `{path}`: {source}")]
    Read { path: String, source: std::io::Error },
}

/// Reads, parses and checks a recipe file and its includes.
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let text = read_recipe_text(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    Ok(load_str(&path.display().to_string(), path, text))
}

/// The most text a recipe file (or an include) may hold.
pub const MAX_RECIPE_BYTES: u64 = 16 << 20;

/// Reads a recipe's text, refusing more than [`MAX_RECIPE_BYTES`] (a stream such as `/dev/zero`
/// included) and text that is not UTF-8 (naming the byte offset). A leading byte-order mark is
/// dropped.
pub fn read_recipe_text(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_RECIPE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_RECIPE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "it holds more than {} MiB; a recipe is a small text file",
                MAX_RECIPE_BYTES >> 20
            ),
        ));
    }
    // A byte-order mark (editors on Windows write one) is not part of the text.
    if bytes.starts_with("\u{FEFF}".as_bytes()) {
        bytes.drain(..3);
    }
    String::from_utf8(bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "it is not UTF-8 text (byte {} is not valid)",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Parses and checks recipe text as if it were the file `name` at `path`.
pub fn load_str(name: &str, path: &Path, text: String) -> Loaded {
    let mut sources = SourceMap::new();
    let id = sources.add(name, path, text);
    let mut recipe = ast::Recipe::default();
    let mut diags = Diagnostics::default();
    parse::parse_file(&mut sources, id, &mut recipe, &mut diags);
    let sections = sections::check(&recipe, &mut diags);
    Loaded {
        recipe,
        sections,
        sources: Arc::new(sources),
        diagnostics: diags.finish(),
    }
}
