//! Problems found in a user's file, reported as `file:line:col: error: message` plus a hint.

use std::fmt;

/// A position in a source file (1-based line and column).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span {
    pub line: u32,
    pub col: u32,
}

impl Span {
    pub fn new(line: u32, col: u32) -> Self {
        Span { line, col }
    }

    /// The position of line `line_in_block`, column `col_in_line` (both 1-based) of text that starts here.
    ///
    /// Used to map a Rhai error inside a multi-line script back into the YAML file.
    pub fn within(self, block: BlockStart, line_in_block: u32, col_in_line: u32) -> Span {
        match block {
            BlockStart::Inline => Span::new(self.line, self.col + col_in_line.saturating_sub(1)),
            BlockStart::NextLine { indent } => Span::new(
                self.line + line_in_block.saturating_sub(1),
                indent + col_in_line.max(1),
            ),
        }
    }
}

/// Where the text of a scalar starts relative to its YAML position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockStart {
    /// The value is on the same line as its key (`rule: vars.x = 1`), possibly quoted.
    Inline,
    /// A `|` or `>` block: the text starts on the next line, indented.
    NextLine { indent: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub span: Span,
    pub severity: Severity,
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn error(file: &str, span: Span, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_string(),
            span,
            severity: Severity::Error,
            message: message.into(),
            hint: None,
        }
    }

    pub fn warning(file: &str, span: Span, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(file, span, message)
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.span.line, self.span.col, level, self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Suggest the closest known name to a misspelled one, for "did you mean" hints.
pub fn did_you_mean<'a>(wrong: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (strsim::damerau_levenshtein(wrong, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3) && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(did_you_mean("stpes", ["steps", "name"]), Some("steps"));
        assert_eq!(did_you_mean("nxt", ["next", "retry"]), Some("next"));
        assert_eq!(did_you_mean("banana", ["next", "retry"]), None);
    }
}
