//! Key wrapping under the vault's root key: each app's private key and digest key are stored
//! encrypted with XChaCha20-Poly1305, bound to (purpose, app id) so a wrapped key cannot be
//! swapped between apps or roles.
//!
//! Layout: `[1][nonce: 24][ciphertext + tag]`.

use crate::{encode_context, random_array, CryptoError};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use coffer_core::SecretBytes;
use zeroize::Zeroizing;

/// The vault's root key: everything else the vault stores is wrapped by it.
pub struct RootKey(SecretBytes<32>);

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootKey([REDACTED])")
    }
}

impl RootKey {
    pub fn generate() -> Self {
        Self(SecretBytes::new(random_array()))
    }

    pub fn from_secret_bytes(b: SecretBytes<32>) -> Self {
        Self(b)
    }

    pub fn expose(&self) -> &[u8; 32] {
        self.0.expose()
    }

    /// A short public fingerprint, so that an operator can tell which root key a store was
    /// initialised with (and a vault can refuse to start with the wrong one).
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let h = Sha256::digest([b"coffer/v1/root-fingerprint".as_slice(), self.expose()].concat());
        hex::encode(&h[..8])
    }

    /// A full-length check value of the key (SHA-256, domain-separated), for where the key is
    /// rebuilt from parts anyone may submit (Shamir unseal): matching the short fingerprint
    /// takes about 2^64 tries for a key of one's choosing, matching this about 2^256.
    pub fn check_value(&self) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(
            [b"coffer/v1/root-check".as_slice(), self.expose()].concat(),
        ))
    }

    pub fn wrap(&self, purpose: &str, app_id: &str, plaintext: &[u8]) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new(self.expose().into());
        let nonce: [u8; 24] = random_array();
        let aad = encode_context(b"coffer/v1/wrap", &[purpose.as_bytes(), app_id.as_bytes()]);
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory sizes");
        let mut out = Vec::with_capacity(1 + 24 + ct.len());
        out.push(1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    pub fn unwrap_key(
        &self,
        purpose: &str,
        app_id: &str,
        wrapped: &[u8],
    ) -> Result<SecretBytes<32>, CryptoError> {
        if wrapped.len() != 1 + 24 + 32 + 16 {
            return Err(CryptoError::Malformed("wrapped key"));
        }
        if wrapped[0] != 1 {
            return Err(CryptoError::UnsupportedVersion(wrapped[0]));
        }
        let cipher = XChaCha20Poly1305::new(self.expose().into());
        let aad = encode_context(b"coffer/v1/wrap", &[purpose.as_bytes(), app_id.as_bytes()]);
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    XNonce::from_slice(&wrapped[1..25]),
                    Payload {
                        msg: &wrapped[25..],
                        aad: &aad,
                    },
                )
                .map_err(|_| CryptoError::Integrity)?,
        );
        SecretBytes::from_slice(&plain).ok_or(CryptoError::Malformed("wrapped key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_binds_purpose_and_app() {
        let root = RootKey::generate();
        let w = root.wrap("private-key", "app1", &[9u8; 32]);
        assert_eq!(
            root.unwrap_key("private-key", "app1", &w).unwrap().expose(),
            &[9u8; 32]
        );
        assert!(root.unwrap_key("digest-key", "app1", &w).is_err());
        assert!(root.unwrap_key("private-key", "app2", &w).is_err());
        assert!(RootKey::generate()
            .unwrap_key("private-key", "app1", &w)
            .is_err());
        assert_ne!(root.fingerprint(), RootKey::generate().fingerprint());
    }
}
