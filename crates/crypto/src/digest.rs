//! Digests shown by `secrets list`: HMAC-SHA256 under a random per-app key, truncated to
//! 128 bits and hex-encoded (32 characters). Equal values in one app give equal digests; the
//! same value in two apps gives unrelated digests; without the key a digest cannot be used to
//! test guesses (unlike a plain hash of the value).

use coffer_core::{SecretBytes, SecretValue};
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub struct DigestKey(SecretBytes<32>);

impl DigestKey {
    pub fn generate() -> Self {
        Self(SecretBytes::new(crate::random_array()))
    }

    pub fn from_secret_bytes(b: SecretBytes<32>) -> Self {
        Self(b)
    }

    pub fn expose(&self) -> &[u8; 32] {
        self.0.expose()
    }
}

impl std::fmt::Debug for DigestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DigestKey([REDACTED])")
    }
}

pub fn digest_hex(key: &DigestKey, value: &SecretValue) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.expose()).expect("HMAC takes any key size");
    mac.update(b"coffer/v1/digest\0");
    mac.update(value.expose_bytes());
    hex::encode(&mac.finalize().into_bytes()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_and_stable() {
        let k1 = DigestKey::generate();
        let k2 = DigestKey::generate();
        let v = SecretValue::from_str_value("postgres://x");
        let d = digest_hex(&k1, &v);
        assert_eq!(d.len(), 32);
        assert!(d
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(
            d,
            digest_hex(&k1, &SecretValue::from_str_value("postgres://x"))
        );
        assert_ne!(d, digest_hex(&k2, &v));
        assert_ne!(
            d,
            digest_hex(&k1, &SecretValue::from_str_value("postgres://y"))
        );
    }
}
