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
pub mod pkcs11;
pub mod routes;
pub mod seal;
pub mod transit;
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
pub(crate) const ROOT_FINGERPRINT_KEY: &str = "vault.root_fingerprint";

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
    private_keys: Arc<Mutex<HashMap<String, UnwrappedKey>>>,
    /// Data keys of writes already opened: the boots of every machine on a version open the
    /// same writes, and then cost no public-key operation for them. Same exposure as above.
    data_keys: Arc<DataKeyCache>,
}

/// Data keys of opened writes kept at most (about 100 bytes each).
const DATA_KEYS_MAX: usize = 10_000;

/// An app's private key, with the public key of the record it was unwrapped from.
type UnwrappedKey = (Vec<u8>, Arc<PrivateKey>);

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
        self.store.delete_app_key(app_id).await?;
        // After the delete: a decrypt that read the record before it may still cache the key,
        // but every decrypt compares the cached key with the record it reads then (see
        // `private_key`), and there is none any more.
        self.forget_app_keys(app_id);
        Ok(())
    }

    /// Drops what this process keeps in memory for the app (its unwrapped private key and the
    /// data keys of its writes).
    pub fn forget_app_keys(&self, app_id: &str) {
        self.private_keys
            .lock()
            .expect("private key cache lock")
            .remove(app_id);
        self.data_keys.forget_app(app_id);
    }

    /// The app's private key, unwrapped: from the cache if it was unwrapped from the key
    /// record whose public key is `expected_public_key` (what the store holds now), else read
    /// and unwrapped now. So keys destroyed through another vault replica, or re-made for the
    /// app, are never served from memory.
    async fn private_key(
        &self,
        app_id: &str,
        expected_public_key: &[u8],
    ) -> Result<Arc<PrivateKey>, VaultError> {
        if let Some((public_key, sk)) = self
            .private_keys
            .lock()
            .expect("private key cache lock")
            .get(app_id)
        {
            if public_key.as_slice() == expected_public_key {
                return Ok(sk.clone());
            }
        }
        self.forget_app_keys(app_id);
        let rec = self.app_key(app_id).await?;
        if rec.public_key != expected_public_key {
            return Err(VaultError::NoKey);
        }
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
        cache.insert(app_id.to_string(), (rec.public_key, sk.clone()));
        Ok(sk)
    }

    /// `app_public_key`: the app's public key as the store holds it now (see `private_key`).
    pub async fn decrypt_to_recipient(
        &self,
        app_id: &str,
        app_public_key: &[u8],
        presented: &[Presented],
        recipient: &PublicKey,
        context: &[&[u8]],
    ) -> Result<Vec<u8>, VaultError> {
        let sk = self.private_key(app_id, app_public_key).await?;
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
