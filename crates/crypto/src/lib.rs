//! Every cryptographic operation of coffer, in one place.
//!
//! * **Sealing** (API side, public key only): a write's values are encrypted to the app's
//!   X25519 public key with HPKE (RFC 9180, base mode, X25519-HKDF-SHA256 / HKDF-SHA256 /
//!   ChaCha20-Poly1305). One HPKE encapsulation per *write* yields a data key through the HPKE
//!   exporter; each value is then sealed under that key with XChaCha20-Poly1305. This costs one
//!   public-key operation per write instead of one per value, without giving up per-value
//!   binding: see [`envelope`].
//! * **Binding**: the HPKE `info` carries (app id, version) and each value's AEAD associated
//!   data carries (app id, name, version). The vault rebuilds both from where a ciphertext is
//!   *stored*, so a ciphertext moved to another app, name or version fails to open.
//! * **Opening** (vault side) needs the app's private key, which exists in the clear only in
//!   the vault process, unwrapped from the database with the root key ([`wrap`]).
//! * **Re-encryption to a host** ([`bundle`]): decrypted values leave the vault only sealed
//!   to a one-time public key of the asking agent.
//! * **Digests** ([`digest`]): a keyed MAC per app, so a digest reveals nothing of the value.
//!
//! No function here logs, and no error carries key or plaintext bytes.

pub mod bundle;
pub mod digest;
pub mod envelope;
pub mod keys;
pub mod machine_token;
pub mod shamir;
pub mod token;
pub mod wrap;

pub use digest::{digest_hex, DigestKey};
pub use envelope::{
    open_values, open_values_cached, seal_values, DataKeyCache, EncryptedValue, SealedValue,
    ValueContext,
};
pub use keys::{PrivateKey, PublicKey};
pub use wrap::RootKey;

/// An app's keys as the API holds them: the public key to seal values and the digest key to
/// compute `secrets list` digests. Neither can decrypt a value.
pub struct SealingKeys {
    pub public_key: PublicKey,
    pub digest_key: DigestKey,
}

impl SealingKeys {
    /// Parses the vault's hex encoding.
    pub fn from_hex(public_key: &str, digest_key: &str) -> Result<Self, CryptoError> {
        let pk = hex::decode(public_key).map_err(|_| CryptoError::Malformed("public key"))?;
        let mut dk = zeroize::Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(digest_key, dk.as_mut())
            .map_err(|_| CryptoError::Malformed("digest key"))?;
        Ok(Self {
            public_key: PublicKey::from_bytes(&pk)?,
            digest_key: DigestKey::from_secret_bytes(coffer_core::SecretBytes::new(*dk)),
        })
    }

    pub fn public_key_hex(&self) -> String {
        hex::encode(self.public_key.to_bytes())
    }

    pub fn digest_key_hex(&self) -> String {
        hex::encode(self.digest_key.expose())
    }
}

impl std::fmt::Debug for SealingKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SealingKeys {{ public_key: {:?}, digest_key: [REDACTED] }}",
            self.public_key
        )
    }
}

/// Why a cryptographic operation failed. Deliberately coarse: an attacker learns nothing from
/// which check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// Authentication failed: wrong key, tampered bytes, or a ciphertext presented in another
    /// context (app, name, version) than the one it was sealed for.
    #[error(
        "integrity check failed: the ciphertext was altered, moved, or sealed for another key"
    )]
    Integrity,
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u8),
}

/// Fills an array from the operating system's CSPRNG.
pub fn random_array<const N: usize>() -> [u8; N] {
    use rand_core::RngCore;
    let mut out = [0u8; N];
    rand_core::OsRng.fill_bytes(&mut out);
    out
}

/// Length-prefixed concatenation, so that ("ab","c") and ("a","bc") never collide.
pub(crate) fn encode_context(label: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(label.len() + parts.iter().map(|p| p.len() + 4).sum::<usize>());
    out.extend_from_slice(label);
    for p in parts {
        out.extend_from_slice(&(p.len() as u32).to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}
