//! `cofferd vault operator init|unseal`: Shamir unseal of the vault's root key (see
//! `coffer_vault::seal`).

use crate::config::{
    hint, pick, read_secret_file, required, FileConfig, OperatorCommand, OperatorInitArgs,
    OperatorUnsealArgs,
};
use crate::roles::open_store;
use anyhow::Context as _;
use coffer_store::OpenMode;
use coffer_vault::pkcs11::{init_pkcs11, Hsm};
use coffer_vault::seal::{init_shamir, InitError, SealStatus};
use coffer_vault::transit::{init_transit, Transit};
use std::io::BufRead as _;
use zeroize::Zeroizing;

pub async fn run(op: OperatorCommand) -> anyhow::Result<()> {
    match op {
        OperatorCommand::Init(args) => init(*args).await,
        OperatorCommand::Unseal(args) => unseal(args).await,
    }
}

async fn init(args: OperatorInitArgs) -> anyhow::Result<()> {
    let file = FileConfig::load(args.common.config.as_deref())?;
    crate::logging::init(pick(args.common.log, file.log).as_deref(), None)?;
    let url = required(
        pick(args.database_url, file.database_url),
        "database-url",
        "COFFER_DATABASE_URL",
    )?;
    let store = open_store(&url, OpenMode::MustExist).await?;
    if let Some(transit_url) = args.transit_url {
        let token_file = required(
            args.transit_token_file,
            "transit-token-file",
            "COFFER_TRANSIT_TOKEN_FILE",
        )?;
        let token = read_secret_file(&token_file, "transit token")?;
        let transit = Transit::new(&transit_url, Zeroizing::new(token.expose().to_string()))?;
        let seal = init_transit(&store, &transit, &args.transit_mount, &args.transit_key)
            .await
            .map_err(init_error)?;
        store.close().await;
        println!(
            "The store's root key was made and encrypted by the transit key {}/{} at {}; only \
             its ciphertext is kept, in the store.\nStart the vault with \
             --transit-token-file (a token allowed to decrypt with that key) and without \
             --unseal-key-file: it opens by itself at every start.",
            seal.mount, seal.key, seal.url
        );
        return Ok(());
    }
    if let Some(module) = args.pkcs11_module {
        let token_label = required(
            args.pkcs11_token_label,
            "pkcs11-token-label",
            "(no environment variable)",
        )?;
        let pin_file = required(
            args.pkcs11_pin_file,
            "pkcs11-pin-file",
            "COFFER_PKCS11_PIN_FILE",
        )?;
        let pin = read_secret_file(&pin_file, "PKCS#11 PIN")?;
        let hsm = Hsm::login(&module, &token_label, pin.expose())?;
        let seal = init_pkcs11(&store, &hsm, &token_label, &args.pkcs11_key_label)
            .await
            .map_err(init_error)?;
        store.close().await;
        println!(
            "The store's root key was made and encrypted by the HSM key {:?} on token {:?}; only \
             its ciphertext is kept, in the store.\nStart the vault with --pkcs11-module and \
             --pkcs11-pin-file, without --unseal-key-file: it opens by itself at every start.",
            seal.key_label, seal.token_label
        );
        return Ok(());
    }
    let shares = init_shamir(&store, args.key_threshold, args.key_shares)
        .await
        .map_err(init_error)?;
    store.close().await;
    let mut out = String::new();
    for (i, share) in shares.iter().enumerate() {
        out.push_str(&format!("unseal share {}: {}\n", i + 1, &*share.to_text()));
    }
    let out = Zeroizing::new(out);
    print!("{}", &*out);
    println!(
        "\nThe store's root key was made and split into {} shares; any {} of them unseal the \
         vault. They are shown once and kept nowhere: give each to a different person.\n\
         Start the vault without --unseal-key-file; it starts sealed. Each holder then runs\n  \
         cofferd vault operator unseal --vault-url URL\nand pastes their share.",
        args.key_shares, args.key_threshold
    );
    Ok(())
}

fn init_error(e: InitError) -> anyhow::Error {
    match e {
        InitError::HasRootKey => anyhow::Error::new(hint(
            "a store's root key is made once; keep unsealing it the way it was set up",
        ))
        .context(e.to_string()),
        other => anyhow::Error::new(other),
    }
}

async fn unseal(args: OperatorUnsealArgs) -> anyhow::Result<()> {
    // From stdin, never an argument: arguments show in `ps` and shell history.
    let mut line = Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the share from stdin")?;
    if line.trim().is_empty() {
        return Err(anyhow::Error::new(hint(
            "paste the share (cofferus1_…) and press Enter, or pipe it in",
        ))
        .context("no share on stdin"));
    }
    let url = format!("{}/v1/sys/unseal", args.vault_url.trim_end_matches('/'));
    let body = Zeroizing::new(serde_json::json!({ "share": line.trim() }).to_string());
    let resp = reqwest::Client::new()
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        .with_context(|| format!("cannot reach the vault at {}", args.vault_url))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("the vault answered {status}"));
        anyhow::bail!("{message}");
    }
    let seal: SealStatus =
        serde_json::from_str(&text).context("the vault's answer is not a seal status")?;
    match (seal.sealed, seal.threshold) {
        (false, _) => println!("the vault is unsealed"),
        (true, Some(t)) => println!(
            "the vault is sealed: {} of {t} shares given; {} more to go",
            seal.progress,
            t - seal.progress
        ),
        (true, None) => println!("the vault is sealed"),
    }
    Ok(())
}
