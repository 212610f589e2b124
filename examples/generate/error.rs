//! The example's error type: every failure names the file, field or tensor
//! it concerns and says what to fix.

use std::fmt;

/// What went wrong while loading or running a model.
#[derive(Debug)]
pub enum ModelError {
    /// A file could not be read or parsed.
    File {
        /// The file.
        path: String,
        /// What failed.
        message: String,
    },
    /// A `config.json` field is missing, malformed or has an unsupported value.
    Config {
        /// The field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A checkpoint tensor is missing or has the wrong shape or dtype.
    Tensor {
        /// The tensor's name in the checkpoint.
        name: String,
        /// What is wrong with it.
        message: String,
    },
    /// A bad command-line argument or input.
    Input(String),
    /// An op of the `dropless` library rejected its inputs.
    Op(dropless::Error),
}

impl ModelError {
    /// A [`ModelError::Config`] for `field`.
    pub fn config(field: &str, message: impl Into<String>) -> Self {
        ModelError::Config {
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// A [`ModelError::Tensor`] for `name`.
    pub fn tensor(name: &str, message: impl Into<String>) -> Self {
        ModelError::Tensor {
            name: name.to_string(),
            message: message.into(),
        }
    }

    /// A [`ModelError::File`] for `path`.
    pub fn file(path: &std::path::Path, message: impl fmt::Display) -> Self {
        ModelError::File {
            path: path.display().to_string(),
            message: message.to_string(),
        }
    }
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::File { path, message } => write!(f, "{path}: {message}"),
            ModelError::Config { field, message } => {
                write!(f, "config.json field `{field}`: {message}")
            }
            ModelError::Tensor { name, message } => write!(f, "tensor `{name}`: {message}"),
            ModelError::Input(message) => f.write_str(message),
            ModelError::Op(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ModelError {}

impl From<dropless::Error> for ModelError {
    fn from(e: dropless::Error) -> Self {
        ModelError::Op(e)
    }
}

/// Result alias of the example.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
