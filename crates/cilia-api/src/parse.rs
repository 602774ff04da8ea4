//! Deserialization that names the field path of the first bad value.

use serde::de::DeserializeOwned;

/// A document could not be read into the expected type.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ParseError {
    /// Dotted path of the offending field (`.` for the document itself).
    pub path: String,
    /// What the deserializer said, including the offending value where it knows it.
    pub message: String,
}

impl ParseError {
    fn new(path: &serde_path_to_error::Path, message: String) -> Self {
        let path = path.to_string();
        // serde_yaml already prefixes its messages with the path; say it once.
        let message = message
            .strip_prefix(&format!("{path}: "))
            .map(str::to_string)
            .unwrap_or(message);
        Self {
            path: if path.is_empty() || path == "." {
                ".".into()
            } else {
                path
            },
            message,
        }
    }
}

/// Reads one YAML document into `T`; errors name the field path (`spec.blocks[0].cidr`).
pub fn from_yaml<T: DeserializeOwned>(text: &str) -> Result<T, ParseError> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let message = e.inner().to_string();
        ParseError::new(e.path(), message)
    })
}

/// Reads a JSON value into `T`; errors name the field path.
pub fn from_json_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ParseError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let message = e.inner().to_string();
        ParseError::new(e.path(), message)
    })
}
