//! [`ConfigError`]: why a configuration was refused — which file, which key (and its line),
//! what is wrong — written the way `toml_error` writes every file error.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::toml_error::Located;

/// Why a configuration was refused: which file, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The configuration file.
    pub(super) file: PathBuf,
    /// Where in the file, when known.
    pub(super) location: Location,
    /// What is wrong, for a person.
    pub(super) message: String,
}

/// Where in the file a [`ConfigError`] lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Location {
    /// The file as a whole (it could not be read).
    File,
    /// A key path such as `server.idle_timeout`, and the 1-based line where it is set when
    /// it is in the file.
    Key(String, Option<usize>),
    /// A TOML syntax error: 1-based line and column.
    Text { line: usize, column: usize },
}

impl ConfigError {
    /// An error about the file as a whole.
    pub(super) fn file(file: &Path, message: String) -> Self {
        Self {
            file: file.to_path_buf(),
            location: Location::File,
            message,
        }
    }

    /// An error about the key path `key`, its line yet unknown.
    pub(super) fn key(file: &Path, key: &str, message: String) -> Self {
        Self {
            file: file.to_path_buf(),
            location: Location::Key(key.to_string(), None),
            message,
        }
    }

    /// The configuration file the error is about.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// The key path at fault, such as `server.idle_timeout`, when there is one.
    pub fn key_path(&self) -> Option<&str> {
        match &self.location {
            Location::Key(key, _) => Some(key),
            _ => None,
        }
    }

    /// What is wrong, without the file and key.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (line, column, key) = match &self.location {
            Location::File => (None, None, None),
            Location::Key(key, line) => (*line, None, Some(key as &dyn fmt::Display)),
            Location::Text { line, column } => (Some(*line), Some(*column), None),
        };
        let located = Located {
            file: &self.file,
            line,
            column,
            key,
            message: &self.message,
        };
        located.fmt(f)
    }
}

impl std::error::Error for ConfigError {}
