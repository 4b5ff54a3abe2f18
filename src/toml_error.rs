//! How an error about a TOML file is shown, the same for the configuration and the users
//! file: `FILE: line L, column C: KEY: MESSAGE`, each part but the file and the message
//! only when known.

use std::fmt;
use std::path::Path;

/// An error about a TOML file as a person reads it; build one in a `Display` impl and
/// format it.
pub struct Located<'a> {
    /// The file.
    pub file: &'a Path,
    /// The 1-based line of the problem, when known.
    pub line: Option<usize>,
    /// The 1-based column (in characters) of the problem; shown only with a line.
    pub column: Option<usize>,
    /// The key or entry at fault, as it should be shown (`server.idle_timeout`,
    /// `user "alice"`), when there is one.
    pub key: Option<&'a dyn fmt::Display>,
    /// What is wrong.
    pub message: &'a str,
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, "line {line}")?;
            if let Some(column) = self.column {
                write!(f, ", column {column}")?;
            }
            f.write_str(": ")?;
        }
        if let Some(key) = self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(self.message)
    }
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
pub fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}
