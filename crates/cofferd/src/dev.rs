//! `cofferd dev`: the API, the vault and (later) an agent in one process on loopback, over an
//! embedded SQLite store in the data dir. The API and the vault still talk over their real
//! HTTP interfaces, so dev exercises the same paths as production.

use crate::config::{pick, DevArgs, FileConfig};
use crate::roles;
use anyhow::Context;
use coffer_core::secret::SecretToken;
use coffer_store::{now_micros, OpenMode, Store, StoreError};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const ADMIN_TOKEN_FILE: &str = "admin.token";
const UNSEAL_KEY_FILE: &str = "unseal.key";
const SIGNING_KEY_FILE: &str = "control-plane.key";
/// The dev admin token lives as long as the data dir; it is re-minted only if lost or revoked.
const DEV_ADMIN_TTL_SECS: i64 = 10 * 365 * 24 * 3600;

pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("coffer");
    }
    home().join(".local/share/coffer")
}

fn cli_config_path() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("coffer/config.toml");
    }
    home().join(".config/coffer/config.toml")
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let file = FileConfig::load(args.common.config.as_deref())?;
    let data_dir = pick(args.data_dir, file.data_dir).unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
    let workload_uids = roles::workload_uids(args.workload_uids, file.workload_uids)?;
    // With workload users, the workloads pass through the data dir to their homes in the
    // agent's state dir below it (`coffer_agent::users`); every file in it stays 0600.
    let data_dir_mode = match workload_uids {
        Some(_) => coffer_agent::users::PASS_THROUGH,
        None => 0o700,
    };
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(data_dir_mode))?;
    crate::logging::init(
        pick(args.common.log, file.log).as_deref(),
        Some(&data_dir.join("cofferd.log")),
    )?;

    let db_url = pick(args.database_url, file.database_url)
        .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("coffer.db").display()));
    let store = roles::open_store(&db_url, OpenMode::CreateIfMissing).await?;

    let key_path = data_dir.join(UNSEAL_KEY_FILE);
    // A store that was sealed before must not get a fresh key just because the file is gone.
    if !key_path.exists() && store.meta_get("vault.root_fingerprint").await?.is_some() {
        return Err(anyhow::Error::new(crate::config::hint(format!(
            "restore the key file at {} (mode 0600), or start afresh with another --data-dir",
            key_path.display()
        )))
        .context(
            "the unseal key (the vault's root key) of this data dir is missing: its secrets cannot be opened without it",
        ));
    }
    let (root, created) =
        coffer_vault::unseal::read_or_create_key_file(&key_path).map_err(roles::key_file_error)?;
    let vault = roles::open_vault(store.clone(), root, &key_path).await?;

    // The service token only needs to live as long as this process: API and vault are both here.
    let service_token = SecretToken::new(hex::encode(coffer_crypto::random_array::<32>()));
    let vault_listener = roles::bind("127.0.0.1:0".parse()?, "vault").await?;
    let vault_url = format!("http://{}", vault_listener.local_addr()?);
    let listen = pick(args.listen, file.listen)
        .unwrap_or_else(|| roles::DEFAULT_API_ADDR.parse().expect("valid default"));
    let api_listener = roles::bind(listen, "API").await?;
    let api_url = format!("http://{}", api_listener.local_addr()?);

    let admin = ensure_admin_token(&store, &data_dir.join(ADMIN_TOKEN_FILE)).await?;
    let config_path = cli_config_path();
    if !args.no_cli_config {
        write_cli_config(&config_path, &api_url, &admin)?;
    }

    let (signing_key, _) = roles::signing_key(&data_dir.join(SIGNING_KEY_FILE), true)?;
    let cp_public = signing_key.public_key();
    let vault_router = roles::vault_router(
        coffer_vault::seal::Custody::unsealed(vault),
        &service_token,
        Some(cp_public),
    );
    let (api_router, api_state) =
        roles::api_router(store.clone(), &vault_url, service_token, signing_key).await?;

    let (tx, rx) = tokio::sync::watch::channel(false);
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let vault_task = tokio::spawn(coffer_http::serve(
        vault_listener,
        vault_router,
        stop(rx.clone()),
    ));
    let api_task = tokio::spawn(coffer_http::serve(
        api_listener,
        api_router,
        stop(rx.clone()),
    ));

    // The host agent registers through the API, so it starts once the API serves.
    let agent_listener = roles::bind("127.0.0.1:0".parse()?, "agent").await?;
    let agent_url = format!("http://{}", agent_listener.local_addr()?);
    let agent = coffer_agent::Agent::start(
        coffer_agent::AgentConfig {
            api_url: api_url.clone(),
            vault_url: vault_url.clone(),
            state_dir: data_dir.join("agent"),
            name: "dev".into(),
            join_token: Some(SecretToken::new(admin.expose().to_string())),
            stop_timeout: std::time::Duration::from_secs(5),
            starting_after: coffer_agent::STARTING_AFTER,
            workload_uids,
        },
        agent_listener,
    )
    .await?;
    let agent_task = tokio::spawn(agent.run(stop(rx)));

    println!("coffer dev is running (Ctrl-C to stop)");
    println!("  API:         {api_url}");
    println!("  vault:       {vault_url} (loopback only)");
    println!("  agent:       {agent_url} (host \"dev\", runs this machine's workloads)");
    println!("  data dir:    {}", data_dir.display());
    println!(
        "  store:       {}",
        coffer_store::DatabaseUrl::parse(&db_url)?.redacted()
    );
    println!(
        "  unseal key:  {} (mode 0600{}) -- dev only: whoever reads this file and the store can decrypt every secret",
        key_path.display(),
        if created { ", just created" } else { "" }
    );
    if args.no_cli_config {
        println!(
            "  CLI config:  not written (--no-cli-config); admin token is in {}",
            data_dir.join(ADMIN_TOKEN_FILE).display()
        );
    } else {
        println!(
            "  CLI config:  {} (API URL + admin token)",
            config_path.display()
        );
    }
    println!("Next: coffer apps create my-app");
    std::io::stdout().flush()?;
    tracing::info!(api = %api_url, vault = %vault_url, agent = %agent_url, "coffer dev started");

    coffer_http::shutdown_signal().await;
    let _ = tx.send(true);
    agent_task.await??;
    api_task.await??;
    coffer_api::releases::give_up(&api_state).await;
    vault_task.await??;
    store.close().await;
    tracing::info!("coffer dev stopped");
    Ok(())
}

/// Reuses the admin token kept in the data dir if the store still honours it, else mints one.
async fn ensure_admin_token(store: &Store, path: &Path) -> anyhow::Result<SecretToken> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let text = zeroize::Zeroizing::new(text);
        if let Some((id, hash)) = coffer_crypto::token::parse_token(text.trim()) {
            match store.token(&id).await {
                Ok(rec)
                    if rec.revoked_at.is_none()
                        && rec.expires_at > now_micros()
                        && coffer_crypto::token::ct_eq(&hash, &rec.secret_hash) =>
                {
                    return Ok(SecretToken::new(text.trim().to_string()));
                }
                Ok(_) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let token = roles::mint_admin_token(store, "admin (cofferd dev)", DEV_ADMIN_TTL_SECS).await?;
    write_private_file(path, &format!("{}\n", token.expose()))?;
    Ok(token)
}

fn write_cli_config(path: &Path, api_url: &str, token: &SecretToken) -> anyhow::Result<()> {
    let text = format!(
        "# Written by `cofferd dev`: where the coffer CLI finds the API and its admin token.\napi_url = {}\ntoken = {}\n",
        toml_string(api_url),
        toml_string(token.expose())
    );
    write_private_file(path, &text)
        .with_context(|| format!("cannot write the CLI config {}", path.display()))
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Writes `text` to `path` with mode 0600, atomically (temp file in the same dir + rename).
fn write_private_file(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
