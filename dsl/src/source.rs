//! Source files and global byte spans: every file loaded (the recipe and its includes) gets a
//! base offset, so one `Span` names a place in any of them and miette can render it.

use std::path::{Path, PathBuf};

use miette::{MietteSpanContents, SourceCode, SourceSpan, SpanContents};

/// A byte range in the global offset space of a [`SourceMap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }
    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
    pub fn len(&self) -> usize {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

impl From<Span> for SourceSpan {
    fn from(s: Span) -> SourceSpan {
        SourceSpan::new(s.start.into(), s.len())
    }
}

/// One loaded file.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path as the user wrote it (or as an include resolved it); shown in diagnostics.
    pub name: String,
    pub path: PathBuf,
    pub text: String,
    /// Global offset of the first byte.
    pub base: usize,
}

/// All files of one compilation. Offsets of different files never overlap (one byte of gap).
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    files: Vec<SourceFile>,
}

/// Index of a file in a [`SourceMap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileId(pub usize);

/// A place in a source, as a person reads it (1-based line and column).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

impl SourceMap {
    pub fn new() -> Self {
        SourceMap::default()
    }

    pub fn add(&mut self, name: impl Into<String>, path: impl AsRef<Path>, text: String) -> FileId {
        let base = self.files.last().map(|f| f.base + f.text.len() + 1).unwrap_or(0);
        self.files.push(SourceFile {
            name: name.into(),
            path: path.as_ref().to_path_buf(),
            text,
            base,
        });
        FileId(self.files.len() - 1)
    }

    pub fn file(&self, id: FileId) -> &SourceFile {
        &self.files[id.0]
    }

    pub fn files(&self) -> &[SourceFile] {
        &self.files
    }

    /// The file that contains a global offset.
    pub fn file_at(&self, offset: usize) -> Option<&SourceFile> {
        self.files
            .iter()
            .rev()
            .find(|f| f.base <= offset && offset <= f.base + f.text.len())
    }

    /// The text a span covers.
    pub fn text(&self, span: Span) -> &str {
        match self.file_at(span.start) {
            Some(f) => {
                let s = (span.start - f.base).min(f.text.len());
                let e = (span.end - f.base).min(f.text.len()).max(s);
                &f.text[s..e]
            }
            None => "",
        }
    }

    /// `file:line:col` of a span's start.
    pub fn location(&self, span: Span) -> Location {
        match self.file_at(span.start) {
            Some(f) => {
                let local = (span.start - f.base).min(f.text.len());
                let before = &f.text[..local];
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
                Location {
                    file: f.name.clone(),
                    line,
                    column,
                }
            }
            None => Location {
                file: "<unknown>".into(),
                line: 0,
                column: 0,
            },
        }
    }
}

impl SourceCode for SourceMap {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, miette::MietteError> {
        let file = self.file_at(span.offset()).ok_or(miette::MietteError::OutOfBounds)?;
        let local = SourceSpan::new((span.offset() - file.base).into(), span.len());
        let inner = file
            .text
            .as_str()
            .read_span(&local, context_lines_before, context_lines_after)?;
        let global = SourceSpan::new((inner.span().offset() + file.base).into(), inner.span().len());
        Ok(Box::new(MietteSpanContents::new_named(
            file.name.clone(),
            inner.data(),
            global,
            inner.line(),
            inner.column(),
            inner.line_count(),
        )))
    }
}
