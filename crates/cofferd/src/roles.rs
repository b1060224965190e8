//! Starting each role: open its store, build its state, bind its listener. `dev` reuses these.

use crate::config::{
    self, hint, pick, required, AgentArgs, ApiArgs, FileConfig, InitArgs, VaultArgs,
};
use anyhow::Context;
use coffer_api::{ApiState, VaultClient};
use coffer_core::secret::SecretToken;
use coffer_core::Action;
use coffer_crypto::machine_token::{ControlPlaneKey, ControlPlanePublicKey};
use coffer_http::Metrics;
use coffer_store::{now_micros, DatabaseUrl, NewToken, OpenMode, Store, StoreError};
use coffer_vault::routes::VaultState;
use coffer_vault::Vault;
use std::net::SocketAddr;
use tokio::net::TcpListener;

pub const DEFAULT_API_ADDR: &str = "127.0.0.1:7373";
pub const DEFAULT_VAULT_ADDR: &str = "127.0.0.1:7374";
pub const DEFAULT_AGENT_ADDR: &str = "127.0.0.1:7375";

pub async fn open_store(url: &str, mode: OpenMode) -> anyhow::Result<Store> {
    let parsed = DatabaseUrl::parse(url).map_err(url_error)?;
    match Store::open(&parsed, mode).await {
        Ok(s) => Ok(s),
        Err(e @ StoreError::InvalidUrl(_)) => Err(url_error(e)),
        Err(e) => Err(anyhow::Error::new(hint(
            "check that the database is reachable and the URL is right",
        )))
        .context(format!(
            "cannot open the store at {}: {e}",
            parsed.redacted()
        )),
    }
}

/// The store's URL errors carry their advice after a `;`: give it its own `hint:` line.
fn url_error(e: StoreError) -> anyhow::Error {
    let text = e.to_string();
    match text.split_once("; ") {
        Some((what, advice)) => anyhow::Error::new(hint(advice.to_string())).context(what.to_string()),
        None => anyhow::Error::new(hint(
            "use sqlite://PATH (created by `cofferd dev` or `cofferd init`) or postgres://USER@HOST/DB",
        ))
        .context(text),
    }
}

/// Key-file problems, each with what to do about it.
pub fn key_file_error(e: coffer_vault::unseal::UnsealError) -> anyhow::Error {
    use coffer_vault::unseal::UnsealError;
    let advice = match &e {
        UnsealError::Read { path, .. } => {
            format!("check the path; the file must exist and hold 64 hex characters ({path})")
        }
        UnsealError::Create { .. } => "check that the directory exists and is writable".to_string(),
        UnsealError::Malformed(_) => {
            "the file must hold exactly 64 hex characters (a 32-byte key)".to_string()
        }
        UnsealError::TooOpen { path, .. } => format!("run chmod 600 {path}"),
    };
    anyhow::Error::new(hint(advice)).context(e.to_string())
}

pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        anyhow::Error::new(hint(format!("another process may be using {addr}; pick another with --listen (port 0 picks a free one)")))
            .context(format!("cannot listen for the {what} on {addr}: {e}"))
    })
}

pub fn vault_router(
    custody: coffer_vault::seal::Custody,
    service_token: &SecretToken,
    control_plane_key: Option<ControlPlanePublicKey>,
) -> axum::Router {
    coffer_vault::routes::router(
        VaultState::new(custody, service_token.expose(), control_plane_key),
        Metrics::new("coffer_vault"),
    )
}

/// The API's router, after settling any release a previous process left running (whose
/// lease has passed), with the sweep that takes over releases whose owner stops later.
pub async fn api_router(
    store: Store,
    vault_url: &str,
    service_token: SecretToken,
    signing_key: ControlPlaneKey,
) -> anyhow::Result<(axum::Router, ApiState)> {
    let vault = VaultClient::new(vault_url, service_token)?;
    let state = ApiState::new(store, vault, signing_key);
    let recovered = coffer_api::releases::recover(&state).await?;
    if recovered > 0 {
        tracing::warn!(
            releases = recovered,
            "rolled back releases whose orchestration had stopped"
        );
    }
    coffer_api::releases::spawn_sweeper(state.clone());
    Ok((
        coffer_api::router(state.clone(), Metrics::new("coffer_api")),
        state,
    ))
}

/// Reads the control plane's signing key, or (for `dev` and `init`) creates it.
pub fn signing_key(
    path: &std::path::Path,
    create: bool,
) -> anyhow::Result<(ControlPlaneKey, bool)> {
    let (bytes, created) = if create {
        coffer_vault::unseal::read_or_create_key_bytes(path, || {
            ControlPlaneKey::generate().to_secret_bytes()
        })
        .map_err(key_file_error)?
    } else {
        let bytes = coffer_vault::unseal::read_key_bytes(path).map_err(|e| match e {
            coffer_vault::unseal::UnsealError::Read { .. } if !path.exists() => anyhow::Error::new(
                hint("create one with `cofferd init --database-url URL --signing-key-file PATH`"),
            )
            .context(e.to_string()),
            other => key_file_error(other),
        })?;
        (bytes, false)
    };
    let key = ControlPlaneKey::from_secret_bytes(&bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((key, created))
}

/// Opens the vault over `store` with `root`, turning a root-key mismatch into advice.
pub async fn open_vault(
    store: Store,
    root: coffer_crypto::RootKey,
    key_path: &std::path::Path,
) -> anyhow::Result<Vault> {
    Vault::open(store, root).await.map_err(|e| match e {
        coffer_vault::VaultError::WrongRootKey { .. } => anyhow::Error::new(hint(format!(
            "the unseal key at {} is not the one this store was created with; restore the right key file",
            key_path.display()
        )))
        .context(e.to_string()),
        other => other.into(),
    })
}

/// Mints a global admin token and stores its hash. Returns the token text (shown once).
pub async fn mint_admin_token(
    store: &Store,
    description: &str,
    ttl_secs: i64,
) -> anyhow::Result<SecretToken> {
    let minted = coffer_crypto::token::mint_token();
    store
        .insert_token(NewToken {
            id: minted.id.clone(),
            secret_hash: minted.secret_hash.to_vec(),
            app_id: None,
            action: Action::Admin,
            description: description.to_string(),
            expires_at: now_micros() + ttl_secs * 1_000_000,
        })
        .await?;
    Ok(minted.token)
}

pub async fn api(args: ApiArgs) -> anyhow::Result<()> {
    let file = FileConfig::load(args.common.config.as_deref())?;
    crate::logging::init(pick(args.common.log, file.log).as_deref(), None)?;
    let url = required(
        pick(args.database_url, file.database_url),
        "database-url",
        "COFFER_DATABASE_URL",
    )?;
    let vault_url = required(
        pick(args.vault_url, file.vault_url),
        "vault-url",
        "COFFER_VAULT_URL",
    )?;
    let token_file = required(
        pick(args.service_token_file, file.service_token_file),
        "service-token-file",
        "COFFER_SERVICE_TOKEN_FILE",
    )?;
    let listen = pick(args.listen, file.listen)
        .unwrap_or_else(|| DEFAULT_API_ADDR.parse().expect("valid default"));
    let key_file = required(
        pick(args.signing_key_file, file.signing_key_file),
        "signing-key-file",
        "COFFER_SIGNING_KEY_FILE",
    )?;
    let (key, _) = signing_key(&key_file, false)?;
    let store = open_store(&url, OpenMode::MustExist).await?;
    let (router, state) = api_router(
        store,
        &vault_url,
        config::read_secret_file(&token_file, "service token")?,
        key,
    )
    .await?;
    let listener = bind(listen, "API").await?;
    tracing::info!(addr = %listener.local_addr()?, "coffer API listening");
    coffer_http::serve(listener, router, coffer_http::shutdown_signal()).await?;
    coffer_api::releases::give_up(&state).await;
    Ok(())
}

pub async fn vault(args: VaultArgs) -> anyhow::Result<()> {
    let file = FileConfig::load(args.common.config.as_deref())?;
    crate::logging::init(pick(args.common.log, file.log).as_deref(), None)?;
    let url = required(
        pick(args.database_url, file.database_url),
        "database-url",
        "COFFER_DATABASE_URL",
    )?;
    let key_file = pick(args.unseal_key_file, file.unseal_key_file);
    let token_file = required(
        pick(args.service_token_file, file.service_token_file),
        "service-token-file",
        "COFFER_SERVICE_TOKEN_FILE",
    )?;
    let listen = pick(args.listen, file.listen)
        .unwrap_or_else(|| DEFAULT_VAULT_ADDR.parse().expect("valid default"));
    let store = open_store(&url, OpenMode::MustExist).await?;
    // A key file, the store's root key kept by a transit engine, or split into shares (the
    // vault starts sealed).
    let transit_seal = coffer_vault::transit::recorded(&store).await?;
    let hsm_seal = coffer_vault::pkcs11::recorded(&store).await?;
    let custody = match (key_file, transit_seal) {
        (Some(key_file), _) => {
            let root = coffer_vault::unseal::read_key_file(&key_file).map_err(key_file_error)?;
            coffer_vault::seal::Custody::unsealed(open_vault(store, root, &key_file).await?)
        }
        (None, Some(mut seal)) => {
            let token_file = required(
                pick(args.transit_token_file, file.transit_token_file),
                "transit-token-file",
                "COFFER_TRANSIT_TOKEN_FILE",
            )?;
            let token = config::read_secret_file(&token_file, "transit token")?;
            // The token goes only to the address in the vault's own configuration, never to
            // one read from the store: whoever can write the store (the API's host, say) could
            // otherwise send the vault's token to a server of theirs, then have the real
            // engine decrypt the root key with it.
            let url = required(
                pick(args.transit_url, file.transit_url),
                "transit-url",
                "COFFER_TRANSIT_URL",
            )?;
            if url.trim_end_matches('/') != seal.url {
                tracing::warn!(configured = %url, recorded = %seal.url, "the transit engine's address differs from the one recorded at operator init; using the configured one");
            }
            seal.url = url;
            let transit = coffer_vault::transit::Transit::new(
                &seal.url,
                zeroize::Zeroizing::new(token.expose().to_string()),
            )?;
            let root = transit.open_root(&seal).await.map_err(|e| {
                anyhow::Error::new(hint(
                    "the vault opens only with the transit engine's help: check that it runs, \
                     that the token may decrypt with the key, and that the key is enabled",
                ))
                .context(e.to_string())
            })?;
            tracing::info!(url = %seal.url, mount = %seal.mount, key = %seal.key, "root key opened by the transit engine");
            let vault = Vault::open(store, root).await?;
            coffer_vault::seal::Custody::unsealed(vault)
        }
        (None, None) if hsm_seal.is_some() => {
            let seal = hsm_seal.expect("checked");
            let module = required(
                pick(args.pkcs11_module, file.pkcs11_module),
                "pkcs11-module",
                "COFFER_PKCS11_MODULE",
            )?;
            let pin_file = required(
                pick(args.pkcs11_pin_file, file.pkcs11_pin_file),
                "pkcs11-pin-file",
                "COFFER_PKCS11_PIN_FILE",
            )?;
            let pin = config::read_secret_file(&pin_file, "PKCS#11 PIN")?;
            let root = coffer_vault::pkcs11::Hsm::login(&module, &seal.token_label, pin.expose())
                .and_then(|hsm| hsm.open_root(&seal))
                .map_err(|e| {
                    anyhow::Error::new(hint(
                        "the vault opens only with the HSM's help: check the module, the token, \
                         the PIN, and that the key is still on the token",
                    ))
                    .context(e.to_string())
                })?;
            tracing::info!(token = %seal.token_label, key = %seal.key_label, "root key opened by the HSM");
            coffer_vault::seal::Custody::unsealed(Vault::open(store, root).await?)
        }
        (None, None) => {
            let custody = coffer_vault::seal::Custody::sealed(store)
                .await?
                .ok_or_else(|| {
                    anyhow::Error::new(hint(
                        "pass --unseal-key-file, or split a new store's root key into shares with \
                     `cofferd vault operator init --database-url URL`",
                    ))
                    .context("no unseal method: the store's root key was not split into shares")
                })?;
            let status = custody.status().await;
            tracing::warn!(
                threshold = status.threshold,
                "the vault is sealed: it serves nothing until share holders run \
                 `cofferd vault operator unseal`"
            );
            custody
        }
    };
    let cp_key = match pick(args.control_plane_public_key, file.control_plane_public_key) {
        Some(hex) => Some(ControlPlanePublicKey::from_hex(&hex).map_err(|_| {
            anyhow::Error::new(hint(
                "pass the public key that `cofferd init --signing-key-file` printed",
            ))
            .context("--control-plane-public-key is not an Ed25519 public key in hex")
        })?),
        None => {
            tracing::warn!("no --control-plane-public-key: this vault refuses every decrypt");
            None
        }
    };
    let router = vault_router(
        custody,
        &config::read_secret_file(&token_file, "service token")?,
        cp_key,
    );
    let listener = bind(listen, "vault").await?;
    tracing::info!(addr = %listener.local_addr()?, "coffer vault listening");
    coffer_http::serve(listener, router, coffer_http::shutdown_signal()).await?;
    Ok(())
}

pub async fn init(args: InitArgs) -> anyhow::Result<()> {
    let file = FileConfig::load(args.common.config.as_deref())?;
    crate::logging::init(pick(args.common.log, file.log).as_deref(), None)?;
    let url = required(
        pick(args.database_url, file.database_url),
        "database-url",
        "COFFER_DATABASE_URL",
    )?;
    let store = open_store(&url, OpenMode::CreateIfMissing).await?;
    let token = mint_admin_token(&store, "initial admin (cofferd init)", 90 * 24 * 3600).await?;
    println!(
        "store ready at {}",
        DatabaseUrl::parse(&url).map_err(url_error)?.redacted()
    );
    if let Some(path) = args.signing_key_file {
        let (key, created) = signing_key(&path, true)?;
        println!(
            "control-plane signing key {} {} (public key {}: pass it to `cofferd vault --control-plane-public-key`)",
            if created { "created at" } else { "kept at" },
            path.display(),
            key.public_key_hex()
        );
    }
    println!(
        "admin token (shown once, valid 90 days): {}",
        token.expose()
    );
    store.close().await;
    Ok(())
}

pub async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let file = FileConfig::load(args.common.config.as_deref())?;
    crate::logging::init(pick(args.common.log, file.log).as_deref(), None)?;
    let api_url = required(
        pick(args.api_url, file.api_url),
        "api-url",
        "COFFER_API_URL",
    )?;
    let vault_url = required(
        pick(args.vault_url, file.vault_url),
        "vault-url",
        "COFFER_VAULT_URL",
    )?;
    let state_dir = required(
        pick(args.state_dir, file.state_dir),
        "state-dir",
        "COFFER_STATE_DIR",
    )?;
    let listen = pick(args.listen, file.listen)
        .unwrap_or_else(|| DEFAULT_AGENT_ADDR.parse().expect("valid default"));
    let join_token = match pick(args.join_token_file, file.join_token_file) {
        Some(p) => Some(config::read_secret_file(&p, "join token")?),
        None => None,
    };
    let name = pick(args.name, file.name).unwrap_or_else(system_host_name);
    let workload_uids = workload_uids(args.workload_uids, file.workload_uids)?;
    let listener = bind(listen, "agent").await?;
    let agent = coffer_agent::Agent::start(
        coffer_agent::AgentConfig {
            api_url,
            vault_url,
            state_dir,
            name,
            join_token,
            stop_timeout: std::time::Duration::from_secs(10),
            starting_after: coffer_agent::STARTING_AFTER,
            workload_uids,
        },
        listener,
    )
    .await?;
    tracing::info!(host_id = agent.host_id(), "coffer agent running");
    agent.run(coffer_http::shutdown_signal()).await
}

/// `--workload-uids`, else the config file's `workload_uids`.
pub fn workload_uids(
    flag: Option<coffer_agent::users::UidRange>,
    file: Option<String>,
) -> anyhow::Result<Option<coffer_agent::users::UidRange>> {
    match (flag, file) {
        (Some(range), _) => Ok(Some(range)),
        (None, Some(text)) => {
            Ok(Some(text.parse().map_err(|e: String| {
                anyhow::anyhow!("config file: {e}")
            })?))
        }
        (None, None) => Ok(None),
    }
}

pub fn system_host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "host".into())
}

#[cfg(test)]
mod tests {
    use super::workload_uids;

    #[test]
    fn workload_uids_come_from_the_flag_else_the_config_file() {
        let flag = Some("100-199".parse().unwrap());
        assert_eq!(
            workload_uids(flag, Some("300-399".into())).unwrap(),
            flag,
            "the flag wins"
        );
        assert_eq!(
            workload_uids(None, Some("300-399".into())).unwrap(),
            Some("300-399".parse().unwrap())
        );
        assert_eq!(workload_uids(None, None).unwrap(), None);
        let e = workload_uids(None, Some("0-10".into())).unwrap_err();
        assert!(e.to_string().starts_with("config file: "), "{e}");
    }
}
