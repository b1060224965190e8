//! Command line and configuration. Layering, lowest to highest: built-in defaults, the config
//! file (`--config`, TOML with the same keys as the long flags, `_` for `-`), `COFFER_*`
//! environment variables, flags. Loading configuration writes nothing.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// An error's recommendation, printed as `hint:` under it.
#[derive(Debug)]
pub struct Hint(pub String);

impl std::fmt::Display for Hint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Hint {}

pub fn hint(h: impl Into<String>) -> Hint {
    Hint(h.into())
}

#[derive(Parser, Debug)]
#[command(
    name = "cofferd",
    version,
    about = "coffer's daemon: API, vault, or everything at once for development"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Everything in one process on loopback over an embedded SQLite store: the zero-setup default.
    Dev(DevArgs),
    /// The control plane (encrypt-only API).
    Api(ApiArgs),
    /// Key custody: decrypts only for a valid machine token, only re-encrypted to the host.
    Vault(Box<VaultArgs>),
    /// Creates a store (runs migrations) and mints the first admin API token.
    Init(InitArgs),
    /// Host agent: runs this host's machines and injects their secrets at boot.
    Agent(AgentArgs),
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// TOML config file; its keys are the long flags with `_` for `-`.
    #[arg(long, env = "COFFER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive list).
    #[arg(long, env = "COFFER_LOG")]
    pub log: Option<String>,
}

#[derive(Args, Debug)]
pub struct DevArgs {
    #[command(flatten)]
    pub common: Common,
    /// Where the store, the unseal key and the logs live [default: $XDG_DATA_HOME/coffer or ~/.local/share/coffer].
    #[arg(long, env = "COFFER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the API [default: 127.0.0.1:7373]; use port 0 for any free port.
    #[arg(long, env = "COFFER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Store URL (sqlite://PATH or postgres://…) [default: SQLite in the data dir].
    #[arg(long, env = "COFFER_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Do not write the CLI's config file.
    #[arg(long)]
    pub no_cli_config: bool,
    /// Run each app's workloads under a user id of their own from FIRST-LAST, as `cofferd
    /// agent --workload-uids` does; needs root.
    #[arg(long, env = "COFFER_WORKLOAD_UIDS", value_name = "FIRST-LAST")]
    pub workload_uids: Option<coffer_agent::users::UidRange>,
}

#[derive(Args, Debug)]
pub struct ApiArgs {
    #[command(flatten)]
    pub common: Common,
    /// Address to listen on [default: 127.0.0.1:7373].
    #[arg(long, env = "COFFER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Store URL: sqlite://PATH (must exist; see `cofferd init`) or postgres://…
    #[arg(long, env = "COFFER_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Base URL of the vault.
    #[arg(long, env = "COFFER_VAULT_URL")]
    pub vault_url: Option<String>,
    /// File holding the service token shared with the vault.
    #[arg(long, env = "COFFER_SERVICE_TOKEN_FILE")]
    pub service_token_file: Option<PathBuf>,
    /// File holding the control plane's Ed25519 signing key (64 hex, 0600): it signs machine
    /// tokens. `cofferd init --signing-key-file` creates one.
    #[arg(long, env = "COFFER_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct VaultArgs {
    #[command(subcommand)]
    pub command: Option<VaultCommand>,
    #[command(flatten)]
    pub common: Common,
    /// Address to listen on [default: 127.0.0.1:7374].
    #[arg(long, env = "COFFER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Store URL: sqlite://PATH (must exist) or postgres://…
    #[arg(long, env = "COFFER_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// File holding the root (unseal) key, 64 hex characters, mode 0600. Without it the vault
    /// starts sealed and waits for unseal shares (`cofferd vault operator init`).
    #[arg(long, env = "COFFER_UNSEAL_KEY_FILE")]
    pub unseal_key_file: Option<PathBuf>,
    /// File holding the service token shared with the API.
    #[arg(long, env = "COFFER_SERVICE_TOKEN_FILE")]
    pub service_token_file: Option<PathBuf>,
    /// The control plane's public key (hex), to verify machine tokens. Without it the vault
    /// decrypts nothing.
    #[arg(long, env = "COFFER_CONTROL_PLANE_PUBLIC_KEY")]
    pub control_plane_public_key: Option<String>,
    /// For a store whose root key a transit engine keeps (`operator init --transit-url`): a
    /// file holding the token for it.
    #[arg(long, env = "COFFER_TRANSIT_TOKEN_FILE")]
    pub transit_token_file: Option<PathBuf>,
    /// For such a store: the transit engine's URL. The vault sends its token only there,
    /// never to the address recorded in the store.
    #[arg(long, env = "COFFER_TRANSIT_URL")]
    pub transit_url: Option<String>,
    /// For a store whose root key an HSM keeps (`operator init --pkcs11-module`): the PKCS#11
    /// module (shared library) of that HSM on this host.
    #[arg(long, env = "COFFER_PKCS11_MODULE")]
    pub pkcs11_module: Option<PathBuf>,
    /// File holding the PIN of the HSM token's user.
    #[arg(long, env = "COFFER_PKCS11_PIN_FILE")]
    pub pkcs11_pin_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum VaultCommand {
    /// Operator tasks: split a new store's root key into shares, unseal a vault with them.
    #[command(subcommand)]
    Operator(OperatorCommand),
}

#[derive(Subcommand, Debug)]
pub enum OperatorCommand {
    /// Makes a new store's root key and prints it split into Shamir shares, once: give each
    /// to a different person; the vault then starts sealed until enough of them unseal it.
    /// With --transit-url (an OpenBao / Vault transit key) or --pkcs11-module (an HSM's AES
    /// key), the key is encrypted by that key instead, and the vault opens by itself.
    Init(Box<OperatorInitArgs>),
    /// Gives one share to a sealed vault (read from stdin, never from the command line).
    Unseal(OperatorUnsealArgs),
}

#[derive(Args, Debug)]
pub struct OperatorInitArgs {
    #[command(flatten)]
    pub common: Common,
    /// Store URL: sqlite://PATH (must exist; see `cofferd init`) or postgres://…
    #[arg(long, env = "COFFER_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// How many shares to make (1 to 255).
    #[arg(long, default_value_t = 5)]
    pub key_shares: usize,
    /// How many shares unseal the vault (1 to --key-shares).
    #[arg(long, default_value_t = 3)]
    pub key_threshold: usize,
    /// Keep the root key encrypted by this OpenBao / Vault transit engine instead of splitting
    /// it into shares: the vault then opens by itself at every start.
    #[arg(long, env = "COFFER_TRANSIT_URL", conflicts_with_all = ["key_shares", "key_threshold"])]
    pub transit_url: Option<String>,
    /// The transit engine's mount path.
    #[arg(long, default_value = "transit", requires = "transit_url")]
    pub transit_mount: String,
    /// The transit key that encrypts the root key.
    #[arg(long, default_value = "coffer-root", requires = "transit_url")]
    pub transit_key: String,
    /// File holding a token allowed to encrypt with that key.
    #[arg(long, env = "COFFER_TRANSIT_TOKEN_FILE", requires = "transit_url")]
    pub transit_token_file: Option<PathBuf>,
    /// Keep the root key encrypted by an AES key in an HSM, through this PKCS#11 module,
    /// instead of splitting it into shares: the vault then opens by itself at every start.
    #[arg(
        long,
        env = "COFFER_PKCS11_MODULE",
        conflicts_with_all = ["key_shares", "key_threshold", "transit_url"],
        requires = "pkcs11_token_label"
    )]
    pub pkcs11_module: Option<PathBuf>,
    /// The label of the HSM token to use.
    #[arg(long, requires = "pkcs11_module")]
    pub pkcs11_token_label: Option<String>,
    /// The label of the AES key on the token (made if missing: sensitive, not extractable).
    #[arg(long, default_value = "coffer-root", requires = "pkcs11_module")]
    pub pkcs11_key_label: String,
    /// File holding the PIN of the token's user.
    #[arg(long, env = "COFFER_PKCS11_PIN_FILE", requires = "pkcs11_module")]
    pub pkcs11_pin_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct OperatorUnsealArgs {
    /// Base URL of the vault to unseal.
    #[arg(long, env = "COFFER_VAULT_URL")]
    pub vault_url: String,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    pub common: Common,
    /// Store URL to create: sqlite://PATH or postgres://…
    #[arg(long, env = "COFFER_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Also create the control plane's signing key at this path (0600) and print its public key.
    #[arg(long)]
    pub signing_key_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    #[command(flatten)]
    pub common: Common,
    /// Base URL of the API.
    #[arg(long, env = "COFFER_API_URL")]
    pub api_url: Option<String>,
    /// Base URL of the vault.
    #[arg(long, env = "COFFER_VAULT_URL")]
    pub vault_url: Option<String>,
    /// Where the agent keeps its identity, machine state and workload logs.
    #[arg(long, env = "COFFER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Address of the agent's own endpoint (logs for the API) [default: 127.0.0.1:7375].
    #[arg(long, env = "COFFER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Host name shown in `coffer machines list` [default: the system host name].
    #[arg(long, env = "COFFER_HOST_NAME")]
    pub name: Option<String>,
    /// File holding an admin API token, used once to register this host.
    #[arg(long, env = "COFFER_JOIN_TOKEN_FILE")]
    pub join_token_file: Option<PathBuf>,
    /// Run each app's workloads under a user id of their own from FIRST-LAST (ids no account
    /// of the host uses); needs root [default: workloads run as the agent's user].
    #[arg(long, env = "COFFER_WORKLOAD_UIDS", value_name = "FIRST-LAST")]
    pub workload_uids: Option<coffer_agent::users::UidRange>,
}

/// The config file's keys. Unknown keys are an error, so a typo is not silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub database_url: Option<String>,
    pub vault_url: Option<String>,
    pub service_token_file: Option<PathBuf>,
    pub unseal_key_file: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub log: Option<String>,
    pub signing_key_file: Option<PathBuf>,
    pub control_plane_public_key: Option<String>,
    pub api_url: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub name: Option<String>,
    pub join_token_file: Option<PathBuf>,
    pub workload_uids: Option<String>,
    pub transit_token_file: Option<PathBuf>,
    pub transit_url: Option<String>,
    pub pkcs11_module: Option<PathBuf>,
    pub pkcs11_pin_file: Option<PathBuf>,
}

impl FileConfig {
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }
}

/// Picks the first value present: flag/env (clap merges those), then the file.
pub fn pick<T>(flag: Option<T>, file: Option<T>) -> Option<T> {
    flag.or(file)
}

pub fn required<T>(v: Option<T>, flag: &str, env: &str) -> anyhow::Result<T> {
    v.ok_or_else(|| {
        anyhow::Error::new(hint(format!(
            "pass --{flag}, set {env}, or add {} to the config file",
            flag.replace('-', "_")
        )))
        .context(format!("--{flag} is required"))
    })
}

/// Reads a secret from a file (`*_FILE` convention): trimmed, must be non-empty.
pub fn read_secret_file(
    path: &Path,
    what: &str,
) -> anyhow::Result<coffer_core::secret::SecretToken> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the {what} file {}", path.display()))?,
    );
    let t = text.trim();
    if t.is_empty() {
        anyhow::bail!("the {what} file {} is empty", path.display());
    }
    Ok(coffer_core::secret::SecretToken::new(t.to_string()))
}
