//! Load errors. Every error names the file; errors about one of our objects also name the
//! object (`kind namespace/name`) and the field path, so that a user can find the line to fix.

use crate::model::ObjectRef;
use std::path::PathBuf;

/// Why a folder or a file of rules could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The folder could not be listed or a file could not be read.
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A document is not valid YAML.
    #[error("{}:{line}:{column}: {message}", file.display())]
    Syntax {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A document has no `kind` (or no `apiVersion`, or no `metadata.name`).
    #[error("{}:{line}: {message}", file.display())]
    Document {
        file: PathBuf,
        /// The line where the document starts.
        line: usize,
        message: String,
    },
    /// A field of one of our objects is unknown, unsupported or invalid.
    #[error(transparent)]
    Field(Box<InvalidField>),
    /// Two objects cannot both apply (the same object twice, or two sources of routes or of
    /// traffic policy for one service).
    #[error(transparent)]
    Conflict(Box<Conflict>),
}

/// A field of one of our objects is unknown, unsupported or invalid.
#[derive(Debug, thiserror::Error)]
#[error(
    "{}:{line}{}: {kind} {object}: {field}: {message}",
    file.display(),
    column.map_or_else(|| " (the document's first line)".to_owned(), |c| format!(":{c}"))
)]
pub struct InvalidField {
    pub file: PathBuf,
    /// The field's line when `column` is known, else the line where the document starts.
    pub line: usize,
    pub column: Option<usize>,
    pub kind: String,
    pub object: ObjectRef,
    /// The field path, as `spec.rules[0].matches[1].path.value`.
    pub field: String,
    /// What was wrong and what was expected.
    pub message: String,
}

/// Two objects cannot both apply.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind} {object}: {message} (see {})", file.display(), other_file.display())]
pub struct Conflict {
    pub file: PathBuf,
    pub kind: String,
    pub object: ObjectRef,
    /// The file of the object it conflicts with.
    pub other_file: PathBuf,
    pub message: String,
}

/// A translation error inside one object, before the file and object are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub field: String,
    pub message: String,
    /// 1-based line and column within the document, when serde knew them.
    pub location: Option<(usize, usize)>,
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            location: None,
        }
    }

    /// The standard refusal of a field we read but do not enforce.
    pub(crate) fn unsupported(field: impl Into<String>, what: &str) -> Self {
        Self::new(field, format!("{what} is not supported by the waypoint"))
    }
}

/// `Result` of the translation functions.
pub(crate) type FieldResult<T> = Result<T, FieldError>;
