//! X25519 key pairs for HPKE: the per-app key pair (private half in the vault only) and the
//! one-time key pair an agent makes for each boot.

use crate::CryptoError;
use coffer_core::SecretBytes;
use hpke::{kem::X25519HkdfSha256, Deserializable, Kem, Serializable};
use std::fmt;

pub(crate) type AppKem = X25519HkdfSha256;

/// A public key: for an app, all the API needs to encrypt. Public, so `Clone` and printable.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(pub(crate) <AppKem as Kem>::PublicKey);

impl PublicKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        <AppKem as Kem>::PublicKey::from_bytes(bytes)
            .map(Self)
            .map_err(|_| CryptoError::Malformed("public key"))
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(&self.0.to_bytes());
        out
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex::encode(self.to_bytes()))
    }
}

/// A private key. An app's exists in the clear only inside the vault process.
pub struct PrivateKey(pub(crate) <AppKem as Kem>::PrivateKey);

impl PrivateKey {
    /// A fresh key pair from the OS CSPRNG.
    pub fn generate() -> (PrivateKey, PublicKey) {
        let (sk, pk) = AppKem::gen_keypair(&mut rand_core::OsRng);
        (PrivateKey(sk), PublicKey(pk))
    }

    pub fn from_secret_bytes(bytes: &SecretBytes<32>) -> Result<Self, CryptoError> {
        <AppKem as Kem>::PrivateKey::from_bytes(bytes.expose())
            .map(Self)
            .map_err(|_| CryptoError::Malformed("private key"))
    }

    pub fn to_secret_bytes(&self) -> SecretBytes<32> {
        let mut out = [0u8; 32];
        out.copy_from_slice(&self.0.to_bytes());
        let s = SecretBytes::new(out);
        zeroize::Zeroize::zeroize(&mut out);
        s
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(AppKem::sk_to_pk(&self.0))
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey([REDACTED])")
    }
}
