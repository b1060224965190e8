//! Shamir unseal: a vault whose store was initialised with `cofferd vault operator init`
//! starts sealed, holding no root key, and refuses everything but its seal status until
//! `threshold` holders have each given their share (`cofferd vault operator unseal`).
//!
//! * The shares given so far are kept in memory only, and dropped (wiped) once the vault is
//!   unsealed or a set of shares fails.
//! * Shares are checked together, once there are `threshold` of them: the key they make must
//!   have the fingerprint the store recorded at `operator init`. A wrong or mistyped share
//!   makes another key; then every share given is dropped and unsealing starts over, as with
//!   Vault's `operator unseal`.
//! * Each replica of the vault is unsealed on its own, and again after every restart.

use crate::{Vault, VaultError, ROOT_FINGERPRINT_KEY};
use coffer_crypto::shamir::{self, ShareError, UnsealShare};
use coffer_crypto::RootKey;
use coffer_store::Store;
use std::sync::{Arc, OnceLock};

/// Where a store records that its root key was split, and how: `THRESHOLD/SHARES`.
pub(crate) const SHAMIR_KEY: &str = "vault.shamir";
/// The split key's full check value (`RootKey::check_value`): shares are submitted by anyone,
/// so a key made from them must match more than the 64-bit fingerprint.
pub(crate) const CHECK_KEY: &str = "vault.root_check";

/// The vault's root-key custody: the vault once unsealed, and what unsealing needs until then.
#[derive(Clone)]
pub struct Custody {
    vault: Arc<OnceLock<Vault>>,
    unsealer: Option<Arc<Unsealer>>,
}

/// What `GET /v1/sys/seal-status` and `POST /v1/sys/unseal` answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SealStatus {
    pub sealed: bool,
    /// Shares needed; absent for a vault that unseals from a key file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<usize>,
    /// Shares given so far.
    pub progress: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum UnsealRefusal {
    #[error("this vault unseals from its key file, not from shares")]
    NotShamir,
    #[error("{0}")]
    Share(ShareError),
    #[error("this share was already given")]
    Repeated,
    #[error(
        "the {0} shares given do not make this store's root key (a wrong or mistyped share, or a share of another store); they were dropped: unsealing starts over"
    )]
    WrongKey(usize),
    #[error(transparent)]
    Vault(VaultError),
}

pub struct Unsealer {
    store: Store,
    threshold: usize,
    shares: tokio::sync::Mutex<Vec<UnsealShare>>,
}

impl Custody {
    /// A vault unsealed from the start (a key file).
    pub fn unsealed(vault: Vault) -> Self {
        Self {
            vault: Arc::new(OnceLock::from(vault)),
            unsealer: None,
        }
    }

    /// A sealed vault over `store`, if the store's root key was split into shares; `None` if
    /// it was not (it unseals from a key file, or has no root key yet).
    pub async fn sealed(store: Store) -> Result<Option<Self>, VaultError> {
        for kept_elsewhere in [crate::transit::TRANSIT_KEY, crate::pkcs11::PKCS11_KEY] {
            if store.meta_get(kept_elsewhere).await?.is_some() {
                // Kept by a transit engine or an HSM: opened at start, never by shares.
                return Ok(None);
            }
        }
        let Some(recorded) = store.meta_get(SHAMIR_KEY).await? else {
            return Ok(None);
        };
        let threshold = recorded
            .split_once('/')
            .and_then(|(t, _)| t.parse::<usize>().ok())
            .filter(|t| *t >= 1)
            .ok_or_else(|| VaultError::Malformed(format!("{SHAMIR_KEY} is {recorded:?}")))?;
        Ok(Some(Self {
            vault: Arc::default(),
            unsealer: Some(Arc::new(Unsealer {
                store,
                threshold,
                shares: tokio::sync::Mutex::default(),
            })),
        }))
    }

    /// The vault, if it is unsealed.
    pub fn vault(&self) -> Option<&Vault> {
        self.vault.get()
    }

    pub async fn status(&self) -> SealStatus {
        SealStatus {
            sealed: self.vault.get().is_none(),
            threshold: self.unsealer.as_ref().map(|u| u.threshold),
            progress: match &self.unsealer {
                Some(u) if self.vault.get().is_none() => u.shares.lock().await.len(),
                _ => 0,
            },
        }
    }

    /// Takes one holder's share; unseals once there are enough that make the store's key.
    pub async fn unseal(&self, share: &str) -> Result<SealStatus, UnsealRefusal> {
        let unsealer = self.unsealer.as_ref().ok_or(UnsealRefusal::NotShamir)?;
        let share = UnsealShare::parse(share).map_err(UnsealRefusal::Share)?;
        let mut shares = unsealer.shares.lock().await;
        if self.vault.get().is_some() {
            return Ok(self.unsealed_status(unsealer));
        }
        if shares.iter().any(|s| s.id() == share.id()) {
            return Err(UnsealRefusal::Repeated);
        }
        shares.push(share);
        if shares.len() < unsealer.threshold {
            return Ok(SealStatus {
                sealed: true,
                threshold: Some(unsealer.threshold),
                progress: shares.len(),
            });
        }
        let given = shares.len();
        let root: RootKey = match shamir::combine(&shares) {
            Ok(root) => root,
            Err(e) => {
                shares.clear();
                return Err(UnsealRefusal::Share(e));
            }
        };
        // The store's errors keep the shares given: the last holder may simply retry.
        let check = unsealer
            .store
            .meta_get(CHECK_KEY)
            .await
            .map_err(|e| UnsealRefusal::Vault(e.into()))?;
        if check.as_deref() != Some(root.check_value().as_str()) {
            shares.clear();
            tracing::warn!(
                shares = given,
                "unseal shares made the wrong key; starting over"
            );
            return Err(UnsealRefusal::WrongKey(given));
        }
        match Vault::open(unsealer.store.clone(), root).await {
            Ok(vault) => {
                shares.clear();
                let _ = self.vault.set(vault);
                tracing::info!("vault unsealed");
                Ok(self.unsealed_status(unsealer))
            }
            Err(VaultError::WrongRootKey { .. }) => {
                shares.clear();
                tracing::warn!(
                    shares = given,
                    "unseal shares made the wrong key; starting over"
                );
                Err(UnsealRefusal::WrongKey(given))
            }
            Err(e) => Err(UnsealRefusal::Vault(e)),
        }
    }

    fn unsealed_status(&self, unsealer: &Unsealer) -> SealStatus {
        SealStatus {
            sealed: false,
            threshold: Some(unsealer.threshold),
            progress: 0,
        }
    }
}

/// `cofferd vault operator init`: makes the store's root key, records its fingerprint and
/// how it was split, and returns the shares (the only copies of the key). Refused if the
/// store has a root key already.
pub async fn init_shamir(
    store: &Store,
    threshold: usize,
    shares: usize,
) -> Result<Vec<UnsealShare>, InitError> {
    refuse_if_initialised(store).await?;
    let root = RootKey::generate();
    let split = shamir::split(&root, threshold, shares).map_err(InitError::Parameters)?;
    record_new_root(
        store,
        &root,
        &[
            (CHECK_KEY, root.check_value()),
            (SHAMIR_KEY, format!("{threshold}/{shares}")),
        ],
    )
    .await?;
    Ok(split)
}

/// Refused before any key is made: the store has a root key already.
pub(crate) async fn refuse_if_initialised(store: &Store) -> Result<(), InitError> {
    match store.meta_get(ROOT_FINGERPRINT_KEY).await? {
        Some(_) => Err(InitError::HasRootKey),
        None => Ok(()),
    }
}

/// Binds a new store to `root` (its fingerprint, first, so that of two inits at once only
/// one wins) and records how the key is kept (`records`: meta keys and values).
pub(crate) async fn record_new_root(
    store: &Store,
    root: &RootKey,
    records: &[(&str, String)],
) -> Result<(), InitError> {
    let ours = root.fingerprint();
    if store
        .meta_set_if_absent(ROOT_FINGERPRINT_KEY, &ours)
        .await?
        != ours
    {
        return Err(InitError::HasRootKey);
    }
    for (key, value) in records {
        store.meta_set_if_absent(key, value).await?;
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("this store has a root key already; operator init makes a store's first one")]
    HasRootKey,
    #[error("{0}")]
    Parameters(ShareError),
    #[error("{0}")]
    Transit(crate::transit::TransitError),
    #[error("{0}")]
    Hsm(crate::pkcs11::HsmError),
    #[error(transparent)]
    Store(#[from] coffer_store::StoreError),
}
