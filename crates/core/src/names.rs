//! Validated names. Construction is the only way to get one, so a `SecretName` in hand is
//! always a legal environment-variable name outside the reserved prefix.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("secret name is empty")]
    EmptySecret,
    #[error("secret name {0:?} is too long (at most 256 bytes)")]
    SecretTooLong(String),
    #[error(
        "secret name {0:?} is invalid: use letters, digits and '_', not starting with a digit"
    )]
    SecretInvalid(String),
    #[error("secret name {0:?} uses the reserved prefix COFFER_")]
    Reserved(String),
    #[error("app name {0:?} is invalid: use 1 to 63 lowercase letters, digits and '-', starting with a letter")]
    AppInvalid(String),
}

/// Shortens what a user sent before it goes into an error message (a hostile caller could send
/// megabytes as a "name").
fn clip(s: &str) -> String {
    if s.len() <= 64 {
        return s.to_string();
    }
    let mut end = 64;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// `^[A-Za-z_][A-Za-z0-9_]*$`, at most 256 bytes, not starting with `COFFER_`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct SecretName(String);

impl SecretName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::EmptySecret);
        }
        if s.len() > 256 {
            return Err(NameError::SecretTooLong(clip(s)));
        }
        let mut bytes = s.bytes();
        let first_ok = matches!(bytes.next(), Some(b'A'..=b'Z' | b'a'..=b'z' | b'_'));
        if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(NameError::SecretInvalid(clip(s)));
        }
        if s.starts_with(crate::RESERVED_PREFIX) {
            return Err(NameError::Reserved(clip(s)));
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for SecretName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// App names follow DNS labels, as on Fly.io: `^[a-z][a-z0-9-]{0,62}$`, no trailing '-'.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct AppName(String);

impl AppName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let ok = (1..=63).contains(&s.len())
            && s.as_bytes()[0].is_ascii_lowercase()
            && !s.ends_with('-')
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(NameError::AppInvalid(clip(s)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for AppName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn secret_names() {
        for ok in ["A", "_", "DATABASE_URL", "a1_b2", &"X".repeat(256)] {
            assert!(SecretName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "É", "A=B", &"X".repeat(257), "A\0"] {
            assert!(SecretName::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            SecretName::parse("COFFER_APP_NAME"),
            Err(NameError::Reserved("COFFER_APP_NAME".into()))
        );
        assert!(SecretName::parse("COFFERX").is_ok());
    }

    #[test]
    fn app_names() {
        for ok in ["a", "my-app", "app2", &"a".repeat(63)] {
            assert!(AppName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "A",
            "1app",
            "app-",
            "my_app",
            "my app",
            &"a".repeat(64),
            "../x",
        ] {
            assert!(AppName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn long_names_are_clipped_in_errors() {
        let e = SecretName::parse(&"-".repeat(100_000))
            .unwrap_err()
            .to_string();
        assert!(e.len() < 200, "{}", e.len());
    }

    proptest! {
        #[test]
        fn parsed_secret_names_are_env_safe(s in "\\PC{0,300}") {
            if let Ok(n) = SecretName::parse(&s) {
                prop_assert!(!n.as_str().contains('='));
                prop_assert!(!n.as_str().starts_with("COFFER_"));
                prop_assert!(n.as_str().len() <= 256);
            }
        }
    }
}
