//! PRODUCT.md §5.3: each ciphertext is bound to its app, name and version. Values are set with
//! the real CLI against the real daemon; then the database is edited behind coffer's back to
//! move ciphertexts to another name, version or app, and the vault (opened on the same store
//! with the dev unseal key) must refuse with an integrity error rather than return a value.

mod common;

use coffer_crypto::{bundle, PrivateKey};
use coffer_store::{DatabaseUrl, OpenMode, Store};
use coffer_vault::{Presented, Vault, VaultError};
use common::{Dev, Engine};
use sqlx::any::AnyPoolOptions;

async fn decrypt(
    vault: &Vault,
    app_id: &str,
    presented: &[Presented],
) -> Result<Vec<(String, Vec<u8>)>, VaultError> {
    let (sk, pk) = PrivateKey::generate();
    let ctx: [&[u8]; 1] = [b"tamper-test"];
    let app_public_key = vault.store().app_key(app_id).await?.public_key;
    let sealed = vault
        .decrypt_to_recipient(app_id, &app_public_key, presented, &pk, &ctx)
        .await?;
    let opened =
        bundle::open_bundle(&sk, &ctx, &sealed).expect("bundle opens with the one-time key");
    Ok(opened
        .into_iter()
        .map(|(n, v)| (n, v.expose_bytes().to_vec()))
        .collect())
}

async fn current(store: &Store, app: &str) -> (String, Vec<Presented>) {
    let rec = store
        .app_by_name(&coffer_core::AppName::parse(app).unwrap())
        .await
        .unwrap();
    let snap = store.snapshot(&rec.id, rec.secrets_version).await.unwrap();
    let presented = snap
        .into_iter()
        .map(|s| Presented {
            name: s.name.to_string(),
            version: s.value_version,
            ciphertext: s.ciphertext,
        })
        .collect();
    (rec.id, presented)
}

async fn tamper_scenario(engine: Engine) {
    let Some(db) = common::database_url(engine).await else {
        return;
    };
    let dev = Dev::start(db.clone());
    dev.ok(&["apps", "create", "one"]);
    dev.ok(&["apps", "create", "two"]);
    dev.ok(&["secrets", "set", "-a", "one", "A=alpha-v1", "B=beta-v1"]);
    dev.ok(&["secrets", "set", "-a", "one", "A=alpha-v2"]);
    dev.ok(&["secrets", "set", "-a", "two", "A=alpha-of-two"]);

    let url = db
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dev.sqlite_path().display()));
    let store = Store::open(&DatabaseUrl::parse(&url).unwrap(), OpenMode::MustExist)
        .await
        .unwrap();
    let root = coffer_vault::unseal::read_key_file(&dev.data_dir.join("unseal.key")).unwrap();
    let vault = Vault::open(store.clone(), root).await.unwrap();

    // Control: untouched ciphertexts open to exactly what was set.
    let (one_id, presented) = current(&store, "one").await;
    let values = decrypt(&vault, &one_id, &presented).await.unwrap();
    assert_eq!(
        values,
        vec![
            ("A".into(), b"alpha-v2".to_vec()),
            ("B".into(), b"beta-v1".to_vec())
        ]
    );
    let (two_id, two_presented) = current(&store, "two").await;

    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let ct = |app_id: &str, name: &str, version: i64| {
        let pool = pool.clone();
        let (app_id, name) = (app_id.to_string(), name.to_string());
        async move {
            let row: (Vec<u8>,) = sqlx::query_as(
                "SELECT ciphertext FROM secret_values WHERE app_id = $1 AND name = $2 AND version = $3",
            )
            .bind(app_id)
            .bind(name)
            .bind(version)
            .fetch_one(&pool)
            .await
            .unwrap();
            row.0
        }
    };
    let put = |bytes: Vec<u8>| {
        let pool = pool.clone();
        let one_id = one_id.clone();
        async move {
            sqlx::query("UPDATE secret_values SET ciphertext = $1 WHERE app_id = $2 AND name = 'A' AND version = 2")
                .bind(bytes)
                .bind(one_id)
                .execute(&pool)
                .await
                .unwrap();
        }
    };
    let original = ct(&one_id, "A", 2).await;

    let attacks = [
        (
            "another name (B's ciphertext under A)",
            ct(&one_id, "B", 1).await,
        ),
        ("another version (A@1 under A@2)", ct(&one_id, "A", 1).await),
        (
            "another app (two's A under one's A)",
            ct(&two_id, "A", 1).await,
        ),
        ("a flipped bit", {
            let mut t = original.clone();
            let last = t.len() - 1;
            t[last] ^= 0x01;
            t
        }),
    ];
    for (what, bytes) in attacks {
        put(bytes).await;
        let (_, presented) = current(&store, "one").await;
        match decrypt(&vault, &one_id, &presented).await {
            Err(VaultError::Integrity) => {}
            Err(other) => panic!("{what}: expected an integrity error, got {other}"),
            Ok(v) => panic!(
                "{what}: the vault returned {} values instead of refusing",
                v.len()
            ),
        }
        // Listing never decrypts, so it still works and shows no value.
        let list = dev.ok(&["secrets", "list", "-a", "one", "--json"]);
        assert!(!list.contains("alpha"), "{list}");
    }

    // A host presenting app two's ciphertexts (with their true names and versions) under app
    // one is refused too: it would need app one's key.
    let err = decrypt(&vault, &one_id, &two_presented).await.unwrap_err();
    assert!(matches!(err, VaultError::Integrity), "{err}");

    // Restored, it opens again: the refusals came from the tampering, not a broken store.
    put(original).await;
    let (_, presented) = current(&store, "one").await;
    assert_eq!(
        decrypt(&vault, &one_id, &presented).await.unwrap()[0].1,
        b"alpha-v2"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_moved_ciphertexts_fail_integrity() {
    tamper_scenario(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_moved_ciphertexts_fail_integrity() {
    tamper_scenario(Engine::Postgres).await;
}
