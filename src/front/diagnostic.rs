//! Front-end diagnostics: a message, the offending source underlined, what
//! was expected, and a hint. Rendered by miette with `file:line:col`.

use super::source::{SourceMap, Span};
use miette::{LabeledSpan, NamedSource, Severity, SourceCode};
use std::fmt;
use std::sync::Arc;

/// Longest source line shown in a snippet.
const MAX_SNIPPET_LINE: usize = 2000;

/// One error or warning about a `.res` file.
#[derive(Debug, Clone)]
pub struct Diag {
    /// Stable machine-readable code, e.g. `res::shape_mismatch`.
    pub code: &'static str,
    pub message: String,
    pub severity: Severity,
    pub span: Span,
    /// Text under the primary span.
    pub label: String,
    /// More spans in the same file, each with its text.
    pub secondary: Vec<(Span, String)>,
    pub help: Option<String>,
    /// Filled in by `attach`: the file the spans point into.
    source: Option<NamedSource<Arc<str>>>,
    /// Call chain (`in block basic, called at ...`), outermost last.
    pub notes: Vec<String>,
}

impl Diag {
    pub fn error(code: &'static str, span: Span, message: impl Into<String>) -> Diag {
        Diag {
            code,
            message: message.into(),
            severity: Severity::Error,
            span,
            label: String::new(),
            secondary: Vec::new(),
            help: None,
            source: None,
            notes: Vec::new(),
        }
    }

    pub fn warning(code: &'static str, span: Span, message: impl Into<String>) -> Diag {
        Diag {
            severity: Severity::Warning,
            ..Diag::error(code, span, message)
        }
    }

    pub fn label(mut self, text: impl Into<String>) -> Diag {
        self.label = text.into();
        self
    }

    pub fn also(mut self, span: Span, text: impl Into<String>) -> Diag {
        self.secondary.push((span, text.into()));
        self
    }

    pub fn help(mut self, text: impl Into<String>) -> Diag {
        self.help = Some(text.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Binds the diagnostic to its source text so it can be rendered.
    /// Secondary spans in other files become notes with their location.
    pub fn attach(mut self, sources: &SourceMap) -> Diag {
        let file = sources.file(self.span.file);
        let mut kept = Vec::new();
        for (span, text) in std::mem::take(&mut self.secondary) {
            if span.file == self.span.file {
                kept.push((span, text));
            } else {
                self.notes
                    .push(format!("{}: {}", sources.location(span), text));
            }
        }
        self.secondary = kept;
        // miette cannot draw a snippet of a megabyte-long line (it panics):
        // give the location in words instead.
        let text: &str = &file.text;
        let at = (self.span.start as usize).min(text.len());
        let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
        if line_end - line_start > MAX_SNIPPET_LINE {
            self.notes.insert(
                0,
                format!(
                    "at {} (the line is too long to show)",
                    sources.location(self.span)
                ),
            );
            self.secondary.clear();
            return self;
        }
        self.source = Some(NamedSource::new(file.name.clone(), file.text.clone()));
        self
    }

    /// Renders without colour, as the snapshot tests and log files see it.
    pub fn render_plain(&self) -> String {
        let mut out = String::new();
        let handler =
            miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
                .with_width(100);
        let _ = handler.render_report(&mut out, self);
        out
    }
}

impl fmt::Display for Diag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Diag {}

impl miette::Diagnostic for Diag {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code))
    }

    fn severity(&self) -> Option<Severity> {
        Some(self.severity)
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        let mut text = self.help.clone().unwrap_or_default();
        for note in &self.notes {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(note);
        }
        (!text.is_empty()).then(|| Box::new(text) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.source.as_ref().map(|s| s as &dyn SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.source.as_ref()?;
        let primary = LabeledSpan::new_primary_with_span(
            (!self.label.is_empty()).then(|| self.label.clone()),
            (self.span.start as usize, self.span.len()),
        );
        let rest = self
            .secondary
            .iter()
            .map(|(s, t)| LabeledSpan::new_with_span(Some(t.clone()), (s.start as usize, s.len())));
        Some(Box::new(std::iter::once(primary).chain(rest)))
    }
}

/// Several diagnostics from one compilation (errors first, then warnings).
#[derive(Debug, Default)]
pub struct Diagnostics {
    pub items: Vec<Diag>,
}

impl Diagnostics {
    pub fn has_errors(&self) -> bool {
        self.items.iter().any(Diag::is_error)
    }

    pub fn render_plain(&self) -> String {
        self.items
            .iter()
            .map(Diag::render_plain)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Edit distance, for "did you mean" hints.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The candidate closest to `name`, if it is close enough to be a typo.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(2);
    candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| c)
}
