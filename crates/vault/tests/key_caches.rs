//! The vault keeps unwrapped app keys and opened writes' data keys in memory; these tests show
//! that it never serves them once the app's keys in the store are not the ones they came from
//! (destroyed through another vault replica, or made again for the app).

use coffer_core::SecretValue;
use coffer_crypto::{bundle, seal_values, PrivateKey, RootKey};
use coffer_store::{testing, OpenMode, Store};
use coffer_vault::{Presented, Vault, VaultError};

const APP: &str = "app-id-1";

fn presented(sealed: &[coffer_crypto::EncryptedValue], version: i64) -> Vec<Presented> {
    sealed
        .iter()
        .enumerate()
        .map(|(i, ct)| Presented {
            name: format!("K{i}"),
            version,
            ciphertext: ct.0.clone(),
        })
        .collect()
}

async fn open(
    vault: &Vault,
    app_public_key: &[u8],
    values: &[Presented],
) -> Result<Vec<Vec<u8>>, VaultError> {
    let (sk, pk) = PrivateKey::generate();
    let ctx: [&[u8]; 1] = [b"key-cache-test"];
    let sealed = vault
        .decrypt_to_recipient(APP, app_public_key, values, &pk, &ctx)
        .await?;
    Ok(bundle::open_bundle(&sk, &ctx, &sealed)
        .expect("bundle opens")
        .into_iter()
        .map(|(_, v)| v.expose_bytes().to_vec())
        .collect())
}

#[tokio::test]
async fn cached_keys_follow_the_stored_key_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        &testing::sqlite_url_in(dir.path()),
        OpenMode::CreateIfMissing,
    )
    .await
    .unwrap();
    let root = RootKey::generate();
    let root_copy = || RootKey::from_secret_bytes(coffer_core::SecretBytes::new(*root.expose()));
    // Two vault replicas on one store.
    let this = Vault::open(store.clone(), root_copy()).await.unwrap();
    let other = Vault::open(store.clone(), root_copy()).await.unwrap();

    let keys = this.ensure_app_keys(APP).await.unwrap();
    let first = keys.public_key.to_bytes().to_vec();
    let v = SecretValue::from_str_value("first-value");
    let old = presented(
        &seal_values(&keys.public_key, APP, 1, &[("K0", &v)]).unwrap(),
        1,
    );
    assert_eq!(
        open(&this, &first, &old).await.unwrap(),
        vec![b"first-value".to_vec()]
    );
    // Cached now: opens again.
    assert_eq!(
        open(&this, &first, &old).await.unwrap(),
        vec![b"first-value".to_vec()]
    );

    // The other replica destroys the app's keys and the app gets new ones.
    other.destroy_app_keys(APP).await.unwrap();
    let again = other.ensure_app_keys(APP).await.unwrap();
    let second = again.public_key.to_bytes().to_vec();
    assert_ne!(first, second);

    // This replica, asked with the record the store holds now, does not use its cached key:
    // the old ciphertexts no longer open, new ones do.
    assert!(matches!(
        open(&this, &second, &old).await,
        Err(VaultError::Integrity)
    ));
    let w = SecretValue::from_str_value("second-value");
    let new = presented(
        &seal_values(&again.public_key, APP, 2, &[("K0", &w)]).unwrap(),
        2,
    );
    assert_eq!(
        open(&this, &second, &new).await.unwrap(),
        vec![b"second-value".to_vec()]
    );
    // Asked with a record that is not the stored one, it refuses rather than guess.
    assert!(matches!(
        open(&this, &first, &old).await,
        Err(VaultError::NoKey)
    ));
    store.close().await;
}
