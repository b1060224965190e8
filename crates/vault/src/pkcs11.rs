//! PKCS#11 unseal: the vault's root key kept encrypted by an AES-256 key that never leaves an
//! HSM (any PKCS#11 module: a network HSM, a cloud HSM's client library, SoftHSM2 for tests).
//!
//! `cofferd vault operator init --pkcs11-module … --pkcs11-token-label …` logs in to the token,
//! finds the AES key labelled `--pkcs11-key-label` there or makes it (a token object,
//! sensitive, not extractable), makes a new store's root key and has the HSM encrypt it with
//! AES-GCM. The store keeps the IV and ciphertext and the token's and key's labels, none of
//! them secret. At every start the vault logs in with its PIN file and has the HSM decrypt the
//! root key, which is never written anywhere in the clear; without the HSM (or with the key
//! destroyed there) no vault can start.

use coffer_core::SecretBytes;
use coffer_crypto::RootKey;
use coffer_store::Store;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use serde::{Deserialize, Serialize};
use std::path::Path;
use zeroize::Zeroizing;

/// Where a store records its HSM-sealed root key.
pub(crate) const PKCS11_KEY: &str = "vault.pkcs11";

/// Bound to the ciphertext, so that it opens as nothing but a coffer root key.
const AAD: &[u8] = b"coffer/v1/root-key";

/// What the store keeps of an HSM-sealed root key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HsmSeal {
    pub token_label: String,
    pub key_label: String,
    /// Hex: the GCM nonce (12 bytes).
    pub iv: String,
    /// Hex: the root key encrypted with AES-256-GCM by the HSM's key, tag included.
    pub ciphertext: String,
}

#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    #[error("cannot load the PKCS#11 module {module}: {reason}")]
    Module { module: String, reason: String },
    #[error("no token labelled {0:?} in the PKCS#11 module")]
    NoToken(String),
    #[error("the PKCS#11 token refused the PIN")]
    Pin,
    #[error("no AES key labelled {0:?} on the token")]
    NoKey(String),
    #[error("more than one key labelled {0:?} on the token")]
    TwoKeys(String),
    #[error("the HSM could not open the root key: {0}")]
    Open(String),
    #[error("the HSM failed: {0}")]
    Hsm(String),
    #[error("the store's PKCS#11 record is damaged")]
    Malformed,
    #[error(transparent)]
    Store(#[from] coffer_store::StoreError),
}

fn hsm(e: CkError) -> HsmError {
    HsmError::Hsm(e.to_string())
}

/// A logged-in session on one token of a PKCS#11 module.
pub struct Hsm {
    // Dropped after the session (fields drop in order): the session needs the library.
    session: Session,
    _pkcs11: Pkcs11,
}

impl Hsm {
    /// Loads `module`, finds the token labelled `token_label` and logs in as its user.
    pub fn login(module: &Path, token_label: &str, pin: &str) -> Result<Self, HsmError> {
        let pkcs11 = Pkcs11::new(module).map_err(|e| HsmError::Module {
            module: module.display().to_string(),
            reason: e.to_string(),
        })?;
        match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(hsm(e)),
        }
        let mut slot = None;
        for s in pkcs11.get_slots_with_token().map_err(hsm)? {
            if pkcs11.get_token_info(s).map_err(hsm)?.label() == token_label {
                slot = Some(s);
                break;
            }
        }
        let slot = slot.ok_or_else(|| HsmError::NoToken(token_label.to_string()))?;
        let session = pkcs11.open_rw_session(slot).map_err(hsm)?;
        let pin = AuthPin::new(pin.into());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(RvError::PinIncorrect | RvError::PinInvalid, _)) => {
                return Err(HsmError::Pin)
            }
            Err(e) => return Err(hsm(e)),
        }
        Ok(Self {
            session,
            _pkcs11: pkcs11,
        })
    }

    fn find_key(&self, label: &str) -> Result<Option<ObjectHandle>, HsmError> {
        let found = self
            .session
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(hsm)?;
        match found.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(*one)),
            _ => Err(HsmError::TwoKeys(label.to_string())),
        }
    }

    /// The AES key labelled `label`, made on the token if it is not there: a token object,
    /// sensitive and not extractable, that only encrypts and decrypts.
    fn key_or_new(&self, label: &str) -> Result<ObjectHandle, HsmError> {
        if let Some(key) = self.find_key(label)? {
            return Ok(key);
        }
        self.session
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    Attribute::ValueLen(32.into()),
                    Attribute::Label(label.as_bytes().to_vec()),
                ],
            )
            .map_err(hsm)
    }

    /// Makes a new root key and has the HSM encrypt it with its key `key_label` (made if
    /// missing).
    pub fn seal_new_root(
        &self,
        token_label: &str,
        key_label: &str,
    ) -> Result<(RootKey, HsmSeal), HsmError> {
        let key = self.key_or_new(key_label)?;
        let root = RootKey::generate();
        let mut iv = [0u8; 12];
        self.session.generate_random_slice(&mut iv).map_err(hsm)?;
        let mut iv_param = iv;
        let params = GcmParams::new(&mut iv_param, AAD, 128.into()).map_err(hsm)?;
        let ciphertext = self
            .session
            .encrypt(&Mechanism::AesGcm(params), key, root.expose())
            .map_err(hsm)?;
        Ok((
            root,
            HsmSeal {
                token_label: token_label.to_string(),
                key_label: key_label.to_string(),
                iv: hex::encode(iv),
                ciphertext: hex::encode(ciphertext),
            },
        ))
    }

    /// Has the HSM decrypt the recorded root key.
    pub fn open_root(&self, seal: &HsmSeal) -> Result<RootKey, HsmError> {
        let key = self
            .find_key(&seal.key_label)?
            .ok_or_else(|| HsmError::NoKey(seal.key_label.clone()))?;
        let mut iv: [u8; 12] = hex::decode(&seal.iv)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(HsmError::Malformed)?;
        let ciphertext = hex::decode(&seal.ciphertext).map_err(|_| HsmError::Malformed)?;
        let params = GcmParams::new(&mut iv, AAD, 128.into()).map_err(hsm)?;
        let plain = Zeroizing::new(
            self.session
                .decrypt(&Mechanism::AesGcm(params), key, &ciphertext)
                .map_err(|e| HsmError::Open(e.to_string()))?,
        );
        let bytes: [u8; 32] = plain
            .as_slice()
            .try_into()
            .map_err(|_| HsmError::Malformed)?;
        Ok(RootKey::from_secret_bytes(SecretBytes::new(bytes)))
    }
}

/// The store's HSM seal, if its root key is kept that way.
pub async fn recorded(store: &Store) -> Result<Option<HsmSeal>, HsmError> {
    match store.meta_get(PKCS11_KEY).await? {
        None => Ok(None),
        Some(json) => serde_json::from_str(&json)
            .map(Some)
            .map_err(|_| HsmError::Malformed),
    }
}

/// `cofferd vault operator init --pkcs11-…`: makes a new store's root key, has the HSM encrypt
/// it, and records the ciphertext and the key's fingerprint. Refused if the store has a root
/// key already.
pub async fn init_pkcs11(
    store: &Store,
    hsm: &Hsm,
    token_label: &str,
    key_label: &str,
) -> Result<HsmSeal, crate::seal::InitError> {
    use crate::seal::{record_new_root, refuse_if_initialised, InitError};
    refuse_if_initialised(store).await?;
    let (root, seal) = hsm
        .seal_new_root(token_label, key_label)
        .map_err(InitError::Hsm)?;
    let json = serde_json::to_string(&seal).expect("a seal serializes");
    record_new_root(store, &root, &[(PKCS11_KEY, json)]).await?;
    Ok(seal)
}
