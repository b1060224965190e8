//! Types for secret material. None of them is `Clone`, `Serialize` or has a derived `Debug`:
//! the only way to the bytes is the explicitly named `expose_*` accessor, and the memory is
//! wiped on drop.

use std::fmt;
use zeroize::Zeroizing;

/// A secret's plaintext value: any bytes but NUL (checked by [`SecretValue::new`]).
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    /// Wraps `bytes`. Validation (NUL, size) happens in [`crate::ChangeSet`], so that the
    /// error can name the secret.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub fn from_str_value(s: &str) -> Self {
        Self::new(s.as_bytes().to_vec())
    }

    /// The plaintext. Every call site is a place where a value is handled in the clear.
    pub fn expose_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue([REDACTED {} bytes])", self.0.len())
    }
}

/// Fixed-size key material (root keys, data keys, MAC keys, private keys).
pub struct SecretBytes<const N: usize>(Zeroizing<[u8; N]>);

impl<const N: usize> SecretBytes<N> {
    pub fn new(bytes: [u8; N]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; N] = bytes.try_into().ok()?;
        Some(Self::new(arr))
    }

    pub fn expose(&self) -> &[u8; N] {
        &self.0
    }
}

impl<const N: usize> fmt::Debug for SecretBytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes<{N}>([REDACTED])")
    }
}

/// A bearer credential (API token, service token) in its textual form.
pub struct SecretToken(Zeroizing<String>);

impl SecretToken {
    pub fn new(s: String) -> Self {
        Self(Zeroizing::new(s))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretToken([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_bytes() {
        let v = SecretValue::from_str_value("hunter2-sentinel");
        let shown = format!("{v:?} {:?}", SecretBytes::new([7u8; 4]));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("REDACTED"));
        assert!(!format!("{:?}", SecretToken::new("tok-xyz".into())).contains("tok-xyz"));
    }
}
