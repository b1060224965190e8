//! dotenv parser for `coffer secrets import` (placeholder; replaced by the full parser).

use crate::SecretValue;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct DotenvError {
    pub line: usize,
    pub message: String,
}

pub fn parse(_input: &str) -> Result<Vec<(String, SecretValue)>, DotenvError> {
    Err(DotenvError { line: 1, message: "not implemented".into() })
}
