//! The vault: custody of every app's private key.
//!
//! * Each app's X25519 private key and digest key are generated here and stored only wrapped
//!   by the root key ([`coffer_crypto::RootKey`]); the root key itself comes from the unseal
//!   method and lives only in this process's memory.
//! * The API asks for an app's *public* key and digest key over an authenticated service
//!   channel; nothing the vault returns can decrypt a secret.
//! * Decryption ([`Vault::decrypt_to_recipient`]) returns values only re-encrypted to a
//!   one-time public key of the asking host.
//!
//! Invariant: no route returns a plaintext value, a private key or the root key.

pub mod decrypt;
pub mod routes;
pub mod unseal;
pub mod wire;

use coffer_core::SecretBytes;
use coffer_crypto::{
    bundle, open_values_cached, DataKeyCache, DigestKey, PrivateKey, PublicKey, RootKey,
    SealingKeys, ValueContext,
};
use coffer_store::{now_micros, AppKeyRecord, Store, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const PURPOSE_PRIVATE: &str = "app-private-key";
const PURPOSE_DIGEST: &str = "app-digest-key";
const ROOT_FINGERPRINT_KEY: &str = "vault.root_fingerprint";

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("app key not found")]
    NoKey,
    #[error("integrity check failed: a ciphertext was altered, moved to another app, name or version, or sealed for another key")]
    Integrity,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error(
        "this database was initialised with another root key (fingerprint {stored}, this key is {ours})"
    )]
    WrongRootKey { stored: String, ours: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One ciphertext presented for decryption, with the place it claims to come from.
pub struct Presented {
    pub name: String,
    pub version: i64,
    pub ciphertext: Vec<u8>,
}

#[derive(Clone)]
pub struct Vault {
    store: Store,
    root: Arc<RootKey>,
    /// Apps' private keys once unwrapped, so that a boot does not read and unwrap its app's
    /// key again. They are no more exposed here than the root key that unwraps them all,
    /// which this process holds anyway; dropped (and zeroized) when the app's keys are
    /// destroyed.
    private_keys: Arc<Mutex<HashMap<String, Arc<PrivateKey>>>>,
    /// Data keys of writes already opened: the boots of every machine on a version open the
    /// same writes, and then cost no public-key operation for them. Same exposure as above.
    data_keys: Arc<DataKeyCache>,
}

/// Data keys of opened writes kept at most (about 100 bytes each).
const DATA_KEYS_MAX: usize = 10_000;

/// Unwrapped private keys kept at most; when full the cache starts over.
const PRIVATE_KEYS_MAX: usize = 10_000;

impl Vault {
    /// Binds the root key to the store. The first vault to open a store records the key's
    /// fingerprint; any later start with another key is refused, rather than minting keys no
    /// one else can unwrap.
    pub async fn open(store: Store, root: RootKey) -> Result<Self, VaultError> {
        let ours = root.fingerprint();
        let stored = store
            .meta_set_if_absent(ROOT_FINGERPRINT_KEY, &ours)
            .await?;
        if stored != ours {
            return Err(VaultError::WrongRootKey { stored, ours });
        }
        Ok(Self {
            store,
            root: Arc::new(root),
            private_keys: Arc::default(),
            data_keys: Arc::new(DataKeyCache::new(DATA_KEYS_MAX)),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Creates the app's key pair and digest key, or returns the existing ones (idempotent, so
    /// that the API can retry).
    pub async fn ensure_app_keys(&self, app_id: &str) -> Result<SealingKeys, VaultError> {
        match self.store.app_key(app_id).await {
            Ok(rec) => return self.sealing_keys_of(&rec),
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let (sk, pk) = PrivateKey::generate();
        let digest = DigestKey::generate();
        let rec = AppKeyRecord {
            app_id: app_id.to_string(),
            public_key: pk.to_bytes().to_vec(),
            wrapped_private_key: self.root.wrap(
                PURPOSE_PRIVATE,
                app_id,
                sk.to_secret_bytes().expose(),
            ),
            wrapped_digest_key: self.root.wrap(PURPOSE_DIGEST, app_id, digest.expose()),
            created_at: now_micros(),
        };
        match self.store.insert_app_key(&rec).await {
            Ok(()) => Ok(SealingKeys {
                public_key: pk,
                digest_key: digest,
            }),
            // Another replica won the race: use its keys.
            Err(StoreError::Conflict(_)) => {
                let rec = self.store.app_key(app_id).await?;
                self.sealing_keys_of(&rec)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn sealing_keys(&self, app_id: &str) -> Result<SealingKeys, VaultError> {
        let rec = self.app_key(app_id).await?;
        self.sealing_keys_of(&rec)
    }

    /// Crypto-shredding: once the wrapped private key is gone, no ciphertext of the app can
    /// ever be opened again, whatever copies of the database exist.
    pub async fn destroy_app_keys(&self, app_id: &str) -> Result<(), VaultError> {
        self.private_keys
            .lock()
            .expect("private key cache lock")
            .remove(app_id);
        self.data_keys.forget_app(app_id);
        Ok(self.store.delete_app_key(app_id).await?)
    }

    /// The app's private key, unwrapped (from the cache, or read and unwrapped now).
    async fn private_key(&self, app_id: &str) -> Result<Arc<PrivateKey>, VaultError> {
        if let Some(sk) = self
            .private_keys
            .lock()
            .expect("private key cache lock")
            .get(app_id)
        {
            return Ok(sk.clone());
        }
        let rec = self.app_key(app_id).await?;
        let sk_bytes = self
            .root
            .unwrap_key(PURPOSE_PRIVATE, app_id, &rec.wrapped_private_key)
            .map_err(|_| VaultError::Integrity)?;
        let sk =
            Arc::new(PrivateKey::from_secret_bytes(&sk_bytes).map_err(|_| VaultError::Integrity)?);
        let mut cache = self.private_keys.lock().expect("private key cache lock");
        if cache.len() >= PRIVATE_KEYS_MAX {
            cache.clear();
        }
        cache.insert(app_id.to_string(), sk.clone());
        Ok(sk)
    }

    /// Opens the presented ciphertexts of one app, each in the place it claims to come from,
    /// and seals the values to `recipient` for the boot identified by `context`. All or
    /// nothing: one ciphertext that fails to open fails the whole request.
    pub async fn decrypt_to_recipient(
        &self,
        app_id: &str,
        presented: &[Presented],
        recipient: &PublicKey,
        context: &[&[u8]],
    ) -> Result<Vec<u8>, VaultError> {
        let sk = self.private_key(app_id).await?;
        let items: Vec<(ValueContext<'_>, &[u8])> = presented
            .iter()
            .map(|p| {
                (
                    ValueContext {
                        app_id,
                        name: &p.name,
                        version: p.version,
                    },
                    p.ciphertext.as_slice(),
                )
            })
            .collect();
        let values =
            open_values_cached(&sk, &items, &self.data_keys).map_err(|_| VaultError::Integrity)?;
        let entries: Vec<(&str, &coffer_core::SecretValue)> = presented
            .iter()
            .map(|p| p.name.as_str())
            .zip(values.iter())
            .collect();
        bundle::seal_bundle(recipient, context, &entries)
            .map_err(|e| VaultError::Malformed(e.to_string()))
    }

    async fn app_key(&self, app_id: &str) -> Result<AppKeyRecord, VaultError> {
        match self.store.app_key(app_id).await {
            Ok(r) => Ok(r),
            Err(StoreError::NotFound(_)) => Err(VaultError::NoKey),
            Err(e) => Err(e.into()),
        }
    }

    fn sealing_keys_of(&self, rec: &AppKeyRecord) -> Result<SealingKeys, VaultError> {
        let public_key =
            PublicKey::from_bytes(&rec.public_key).map_err(|_| VaultError::Integrity)?;
        let digest: SecretBytes<32> = self
            .root
            .unwrap_key(PURPOSE_DIGEST, &rec.app_id, &rec.wrapped_digest_key)
            .map_err(|_| VaultError::Integrity)?;
        Ok(SealingKeys {
            public_key,
            digest_key: DigestKey::from_secret_bytes(digest),
        })
    }
}
