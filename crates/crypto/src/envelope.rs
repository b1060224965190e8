//! The envelope of a stored secret value, format version 1:
//!
//! ```text
//! offset  size  field
//! 0       1     format version (1)
//! 1       32    HPKE encapsulated key (X25519), shared by all values of one write
//! 33      24    XChaCha20-Poly1305 nonce (random)
//! 57      n+16  ciphertext and tag
//! ```
//!
//! Sealing a write: `(enc, ctx) = HPKE.SetupBaseS(app_pk, info = ("coffer/v1/write", app_id,
//! version))`, `data_key = ctx.Export("coffer/v1/data-key", 32)`, and each value is
//! `XChaCha20-Poly1305(data_key, nonce, value, aad = ("coffer/v1/value", app_id, name,
//! version))`. The data key is bound to (app, version) by the HPKE key schedule and each value to
//! its name by the AEAD, so a ciphertext opens only in the exact place it was written for.
//! Envelopes are self-contained: any one of them can be opened alone.

use crate::keys::{AppKem, PrivateKey, PublicKey};
use crate::{encode_context, random_array, CryptoError};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use coffer_core::SecretValue;
use hpke::{aead::ChaCha20Poly1305 as HpkeAead, kdf::HkdfSha256, Deserializable, Kem, OpModeR};
use hpke::{OpModeS, Serializable};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

pub const FORMAT_V1: u8 = 1;
const ENC_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = 1 + ENC_LEN + NONCE_LEN;
const TAG_LEN: usize = 16;

/// Where a value lives: what its ciphertext is bound to.
#[derive(Debug, Clone, Copy)]
pub struct ValueContext<'a> {
    pub app_id: &'a str,
    pub name: &'a str,
    pub version: i64,
}

/// A sealed value as stored. Not secret, but there is no reason to print its bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptedValue(pub Vec<u8>);

impl std::fmt::Debug for EncryptedValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncryptedValue({} bytes)", self.0.len())
    }
}

/// Output of [`seal_values`], in the order of the input.
pub type SealedValue = EncryptedValue;

fn write_info(app_id: &str, version: i64) -> Vec<u8> {
    encode_context(
        b"coffer/v1/write",
        &[app_id.as_bytes(), &version.to_be_bytes()],
    )
}

fn value_aad(ctx: &ValueContext<'_>) -> Vec<u8> {
    encode_context(
        b"coffer/v1/value",
        &[
            ctx.app_id.as_bytes(),
            ctx.name.as_bytes(),
            &ctx.version.to_be_bytes(),
        ],
    )
}

/// Seals all values of one write of `app_id` at `version` to the app's public key.
pub fn seal_values(
    app_pk: &PublicKey,
    app_id: &str,
    version: i64,
    values: &[(&str, &SecretValue)],
) -> Result<Vec<EncryptedValue>, CryptoError> {
    let (enc, sender) = hpke::setup_sender::<HpkeAead, HkdfSha256, AppKem, _>(
        &OpModeS::Base,
        &app_pk.0,
        &write_info(app_id, version),
        &mut rand_core::OsRng,
    )
    .map_err(|_| CryptoError::Malformed("public key"))?;
    let mut data_key = Zeroizing::new([0u8; 32]);
    sender
        .export(b"coffer/v1/data-key", data_key.as_mut())
        .map_err(|_| CryptoError::Malformed("export length"))?;
    let cipher = XChaCha20Poly1305::new(data_key.as_ref().into());
    let enc_bytes = enc.to_bytes();
    values
        .iter()
        .map(|(name, value)| {
            let nonce: [u8; NONCE_LEN] = random_array();
            let aad = value_aad(&ValueContext {
                app_id,
                name,
                version,
            });
            let ct = cipher
                .encrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: value.expose_bytes(),
                        aad: &aad,
                    },
                )
                .map_err(|_| CryptoError::Malformed("value"))?;
            let mut out = Vec::with_capacity(HEADER_LEN + ct.len());
            out.push(FORMAT_V1);
            out.extend_from_slice(&enc_bytes);
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&ct);
            Ok(EncryptedValue(out))
        })
        .collect()
}

/// Opens values of one app with its private key, each in the context it is claimed to belong
/// to. Values sealed in one write share one HPKE decapsulation. Fails as a whole: either every
/// value opens or none is returned.
pub fn open_values(
    app_sk: &PrivateKey,
    items: &[(ValueContext<'_>, &[u8])],
) -> Result<Vec<SecretValue>, CryptoError> {
    open_values_with(app_sk, items, None)
}

/// [`open_values`], reusing (and filling) `cache`: the values of one write opened again (every
/// boot of every machine on a version) cost no public-key operation.
pub fn open_values_cached(
    app_sk: &PrivateKey,
    items: &[(ValueContext<'_>, &[u8])],
    cache: &DataKeyCache,
) -> Result<Vec<SecretValue>, CryptoError> {
    open_values_with(app_sk, items, Some(cache))
}

fn open_values_with(
    app_sk: &PrivateKey,
    items: &[(ValueContext<'_>, &[u8])],
    cache: Option<&DataKeyCache>,
) -> Result<Vec<SecretValue>, CryptoError> {
    // Per write: its cipher, and the data key if it was derived now (not from the cache).
    type Opened = (XChaCha20Poly1305, Option<Arc<Zeroizing<[u8; 32]>>>);
    let mut keys: HashMap<(&[u8], &str, i64), Opened> = HashMap::new();
    let mut out = Vec::with_capacity(items.len());
    for (ctx, bytes) in items {
        if bytes.len() < HEADER_LEN + TAG_LEN {
            return Err(CryptoError::Malformed("envelope"));
        }
        if bytes[0] != FORMAT_V1 {
            return Err(CryptoError::UnsupportedVersion(bytes[0]));
        }
        let enc = &bytes[1..1 + ENC_LEN];
        let nonce = &bytes[1 + ENC_LEN..HEADER_LEN];
        let key_id = (enc, ctx.app_id, ctx.version);
        let (cipher, _) = match keys.entry(key_id) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let cached = cache.and_then(|c| c.get(enc, ctx.app_id, ctx.version));
                let (key, fresh) = match cached {
                    Some(key) => (key, false),
                    None => (
                        Arc::new(derive_data_key(app_sk, enc, ctx.app_id, ctx.version)?),
                        true,
                    ),
                };
                let raw: &[u8; 32] = &key;
                let cipher = XChaCha20Poly1305::new(raw.into());
                e.insert((cipher, fresh.then_some(key)))
            }
        };
        let aad = value_aad(ctx);
        let plain = cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: &bytes[HEADER_LEN..],
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Integrity)?;
        out.push(SecretValue::new(plain));
    }
    // Only keys that opened values are kept: a made-up envelope derives a key too (for
    // nothing), and must not push real ones out of the cache.
    if let Some(cache) = cache {
        for ((enc, app_id, version), (_, fresh)) in keys {
            if let Some(key) = fresh {
                cache.insert(enc, app_id, version, key);
            }
        }
    }
    Ok(out)
}

/// Data keys of writes already decapsulated, by (encapsulated key, app id, version): a data key
/// is a function of the app's private key and these three, so a cached one is exactly the one
/// a decapsulation would give. Whoever holds this cache can open those writes' values, which
/// the holder of the app's private key (the vault) can anyway. Bounded (it starts over when
/// full); every key is zeroized when dropped.
pub struct DataKeyCache {
    keys: Mutex<HashMap<DataKeyId, Arc<Zeroizing<[u8; 32]>>>>,
    max: usize,
}

#[derive(PartialEq, Eq, Hash)]
struct DataKeyId {
    enc: [u8; ENC_LEN],
    app_id: String,
    version: i64,
}

impl DataKeyCache {
    pub fn new(max: usize) -> Self {
        Self {
            keys: Mutex::default(),
            max,
        }
    }

    fn id(enc: &[u8], app_id: &str, version: i64) -> Option<DataKeyId> {
        Some(DataKeyId {
            enc: enc.try_into().ok()?,
            app_id: app_id.to_string(),
            version,
        })
    }

    fn get(&self, enc: &[u8], app_id: &str, version: i64) -> Option<Arc<Zeroizing<[u8; 32]>>> {
        let id = Self::id(enc, app_id, version)?;
        self.keys
            .lock()
            .expect("data key cache lock")
            .get(&id)
            .cloned()
    }

    fn insert(&self, enc: &[u8], app_id: &str, version: i64, key: Arc<Zeroizing<[u8; 32]>>) {
        let Some(id) = Self::id(enc, app_id, version) else {
            return;
        };
        let mut keys = self.keys.lock().expect("data key cache lock");
        if keys.len() >= self.max {
            keys.clear();
        }
        keys.insert(id, key);
    }

    /// Drops every data key of the app (its keys are being destroyed).
    pub fn forget_app(&self, app_id: &str) {
        self.keys
            .lock()
            .expect("data key cache lock")
            .retain(|id, _| id.app_id != app_id);
    }

    pub fn len(&self) -> usize {
        self.keys.lock().expect("data key cache lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for DataKeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKeyCache({} keys)", self.len())
    }
}

fn derive_data_key(
    app_sk: &PrivateKey,
    enc: &[u8],
    app_id: &str,
    version: i64,
) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let enc = <AppKem as Kem>::EncappedKey::from_bytes(enc)
        .map_err(|_| CryptoError::Malformed("envelope"))?;
    let receiver = hpke::setup_receiver::<HpkeAead, HkdfSha256, AppKem>(
        &OpModeR::Base,
        &app_sk.0,
        &enc,
        &write_info(app_id, version),
    )
    // A failed decapsulation is indistinguishable from a wrong key: report integrity.
    .map_err(|_| CryptoError::Integrity)?;
    let mut data_key = Zeroizing::new([0u8; 32]);
    receiver
        .export(b"coffer/v1/data-key", data_key.as_mut())
        .map_err(|_| CryptoError::Malformed("export length"))?;
    Ok(data_key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ctx<'a>(app_id: &'a str, name: &'a str, version: i64) -> ValueContext<'a> {
        ValueContext {
            app_id,
            name,
            version,
        }
    }

    #[test]
    fn the_data_key_cache_opens_what_a_decapsulation_opens_and_nothing_more() {
        let (sk, pk) = PrivateKey::generate();
        let a = SecretValue::from_str_value("alpha");
        let b = SecretValue::from_str_value("beta");
        let sealed = seal_values(&pk, "app1", 3, &[("A", &a), ("B", &b)]).unwrap();
        let items = [
            (ctx("app1", "A", 3), sealed[0].0.as_slice()),
            (ctx("app1", "B", 3), sealed[1].0.as_slice()),
        ];
        let cache = DataKeyCache::new(8);
        for _ in 0..2 {
            let opened = open_values_cached(&sk, &items, &cache).unwrap();
            assert_eq!(opened[0].expose_bytes(), b"alpha");
            assert_eq!(opened[1].expose_bytes(), b"beta");
            assert_eq!(cache.len(), 1, "one write, one data key");
        }
        // With the key cached, a value moved to another name or version still fails, and so
        // does a flipped bit.
        for wrong in [
            ctx("app1", "B", 3),
            ctx("app1", "A", 4),
            ctx("app2", "A", 3),
        ] {
            let r = open_values_cached(&sk, &[(wrong, sealed[0].0.as_slice())], &cache);
            assert!(matches!(r, Err(CryptoError::Integrity)), "{wrong:?}");
        }
        let mut flipped = sealed[0].0.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let r = open_values_cached(&sk, &[(ctx("app1", "A", 3), flipped.as_slice())], &cache);
        assert!(matches!(r, Err(CryptoError::Integrity)));
        // Another app's key derives nothing useful from this cache.
        let (other_sk, _) = PrivateKey::generate();
        let r = open_values_cached(&other_sk, &items, &DataKeyCache::new(8));
        assert!(matches!(r, Err(CryptoError::Integrity)));

        cache.forget_app("app2");
        assert_eq!(cache.len(), 1);
        cache.forget_app("app1");
        assert!(cache.is_empty());
        // Bounded: it starts over when full.
        let small = DataKeyCache::new(2);
        for v in 1..=5 {
            let s = seal_values(&pk, "app1", v, &[("A", &a)]).unwrap();
            open_values_cached(&sk, &[(ctx("app1", "A", v), s[0].0.as_slice())], &small).unwrap();
            assert!(small.len() <= 2);
        }
    }

    #[test]
    fn round_trip_and_binding() {
        let (sk, pk) = PrivateKey::generate();
        let a = SecretValue::from_str_value("alpha");
        let b = SecretValue::from_str_value("beta");
        let sealed = seal_values(&pk, "app1", 3, &[("A", &a), ("B", &b)]).unwrap();
        let opened = open_values(
            &sk,
            &[
                (ctx("app1", "A", 3), &sealed[0].0),
                (ctx("app1", "B", 3), &sealed[1].0),
            ],
        )
        .unwrap();
        assert_eq!(opened[0].expose_bytes(), b"alpha");
        assert_eq!(opened[1].expose_bytes(), b"beta");

        // Moved to another name, version or app: integrity error, never a value.
        for wrong in [
            ctx("app1", "B", 3),
            ctx("app1", "A", 4),
            ctx("app2", "A", 3),
        ] {
            assert_eq!(
                open_values(&sk, &[(wrong, &sealed[0].0)]).unwrap_err(),
                CryptoError::Integrity
            );
        }
        // Another app's key.
        let (sk2, _) = PrivateKey::generate();
        assert_eq!(
            open_values(&sk2, &[(ctx("app1", "A", 3), &sealed[0].0)]).unwrap_err(),
            CryptoError::Integrity
        );
        // A flipped bit anywhere.
        for i in 1..sealed[0].0.len() {
            let mut t = sealed[0].0.clone();
            t[i] ^= 1;
            assert!(
                open_values(&sk, &[(ctx("app1", "A", 3), &t)]).is_err(),
                "byte {i}"
            );
        }
        // Truncated and unknown versions.
        assert!(open_values(&sk, &[(ctx("app1", "A", 3), &sealed[0].0[..40])]).is_err());
        let mut v2 = sealed[0].0.clone();
        v2[0] = 2;
        assert_eq!(
            open_values(&sk, &[(ctx("app1", "A", 3), &v2)]).unwrap_err(),
            CryptoError::UnsupportedVersion(2)
        );
    }

    #[test]
    fn private_key_bytes_round_trip() {
        let (sk, pk) = PrivateKey::generate();
        let sk2 = PrivateKey::from_secret_bytes(&sk.to_secret_bytes()).unwrap();
        assert_eq!(sk2.public_key(), pk);
        assert_eq!(PublicKey::from_bytes(&pk.to_bytes()).unwrap(), pk);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_value_round_trips(values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..5), version in 1i64..1_000_000) {
            let (sk, pk) = PrivateKey::generate();
            let names: Vec<String> = (0..values.len()).map(|i| format!("N{i}")).collect();
            let secrets: Vec<SecretValue> = values.iter().map(|v| SecretValue::new(v.clone())).collect();
            let pairs: Vec<(&str, &SecretValue)> = names.iter().map(String::as_str).zip(secrets.iter()).collect();
            let sealed = seal_values(&pk, "app", version, &pairs).unwrap();
            let items: Vec<_> = names.iter().zip(&sealed).map(|(n, s)| (ctx("app", n, version), s.0.as_slice())).collect();
            let opened = open_values(&sk, &items).unwrap();
            for (o, v) in opened.iter().zip(&values) {
                prop_assert_eq!(o.expose_bytes(), v.as_slice());
            }
        }
    }
}
