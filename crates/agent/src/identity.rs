//! The host's identity, kept in the agent's state directory:
//!
//! | file | holds | mode |
//! |---|---|---|
//! | `host.key` | the host's Ed25519 signing key, hex (signs decrypt requests) | 0600 |
//! | `host.token` | the host's bearer token for the control plane | 0600 |
//! | `host.json` | `{host_id, api_url, control_plane_public_key}` — nothing secret | 0600 |
//!
//! The key is made once and kept across registrations, so a host that re-registers keeps its
//! public key. `host.json` is written last: its presence means the registration is complete.
//! Every file is written atomically (a 0600 temporary file in the same directory, fsync,
//! rename, fsync of the directory), so a crash leaves the old file or the new one.

use anyhow::Context as _;
use coffer_core::secret::SecretToken;
use coffer_core::SecretBytes;
use coffer_crypto::machine_token::HostKey;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use zeroize::Zeroizing;

pub const KEY_FILE: &str = "host.key";
pub const TOKEN_FILE: &str = "host.token";
pub const HOST_FILE: &str = "host.json";

/// `host.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredHost {
    pub host_id: String,
    /// Where the host registered (informational: updated when the URL changes and the
    /// control plane still accepts the host's token).
    pub api_url: String,
    pub control_plane_public_key: String,
}

/// A complete registration: `host.json` and `host.token`.
pub struct Registration {
    pub host: StoredHost,
    pub token: SecretToken,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("host", &self.host)
            .field("token", &"[REDACTED]")
            .finish()
    }
}

/// Creates `dir` (and its parents) with mode 0700 if missing; tightens an existing one to
/// 0700.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = fs::metadata(dir)?;
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically with mode 0600.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // An older temporary file may have had other permissions.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Loads `host.key`, or makes and saves a new key.
pub fn load_or_create_key(state_dir: &Path) -> anyhow::Result<HostKey> {
    let path = state_dir.join(KEY_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            let mut bytes = Zeroizing::new([0u8; 32]);
            hex::decode_to_slice(text.trim(), bytes.as_mut()).with_context(|| {
                format!(
                    "{} is not a host key (64 hex digits); delete it to make a new one \
                     (the host then registers again)",
                    path.display()
                )
            })?;
            Ok(HostKey::from_secret_bytes(&SecretBytes::new(*bytes)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = HostKey::generate();
            let hex = Zeroizing::new(hex::encode(key.to_secret_bytes().expose()));
            write_private(&path, hex.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            tracing::info!(public_key = %key.public_key_hex(), "created a new host key");
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The saved registration, if there is a complete one (`api_url` is where it is about to be
/// used; another URL is logged, not refused).
pub fn load_registration(state_dir: &Path, api_url: &str) -> anyhow::Result<Option<Registration>> {
    let host_path = state_dir.join(HOST_FILE);
    let host: StoredHost = match fs::read(&host_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is not valid; delete it to register again",
                host_path.display()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", host_path.display())),
    };
    if normalize(&host.api_url) != normalize(api_url) {
        // A URL is not an identity (a control plane moves, `cofferd dev --listen :0` picks a
        // new port each time): the saved token is tried there, and a control plane that does
        // not know it answers 401, which leads to a new registration.
        tracing::info!(
            registered_with = %host.api_url,
            api_url,
            "the control plane's URL changed; trying the saved registration there"
        );
    }
    let token_path = state_dir.join(TOKEN_FILE);
    match fs::read_to_string(&token_path) {
        Ok(t) => {
            let t = Zeroizing::new(t);
            Ok(Some(Registration {
                host,
                token: SecretToken::new(t.trim().to_string()),
            }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!("{} is missing; registering again", token_path.display());
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", token_path.display())),
    }
}

/// Saves a registration: the token first, then `host.json`.
pub fn save_registration(state_dir: &Path, reg: &Registration) -> anyhow::Result<()> {
    let token_path = state_dir.join(TOKEN_FILE);
    write_private(&token_path, reg.token.expose().as_bytes())
        .with_context(|| format!("cannot write {}", token_path.display()))?;
    let host_path = state_dir.join(HOST_FILE);
    let json = serde_json::to_vec_pretty(&reg.host).expect("host.json serializes");
    write_private(&host_path, &json)
        .with_context(|| format!("cannot write {}", host_path.display()))?;
    Ok(())
}

fn normalize(url: &str) -> &str {
    url.trim().trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        ensure_private_dir(&state).unwrap();
        assert_eq!(mode(&state), 0o700);
        let k1 = load_or_create_key(&state).unwrap();
        let k2 = load_or_create_key(&state).unwrap();
        assert_eq!(k1.public_key_hex(), k2.public_key_hex());
        assert_eq!(mode(&state.join(KEY_FILE)), 0o600);
        // No temporary file is left behind.
        let names: Vec<String> = fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![KEY_FILE.to_string()]);
    }

    #[test]
    fn registration_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        assert!(load_registration(state, "http://api").unwrap().is_none());
        let reg = Registration {
            host: StoredHost {
                host_id: "abcd".into(),
                api_url: "http://api/".into(),
                control_plane_public_key: "00".repeat(32),
            },
            token: SecretToken::new("host-token-sentinel".into()),
        };
        save_registration(state, &reg).unwrap();
        assert_eq!(mode(&state.join(TOKEN_FILE)), 0o600);
        assert_eq!(mode(&state.join(HOST_FILE)), 0o600);
        let back = load_registration(state, "http://api").unwrap().unwrap();
        assert_eq!(back.host, reg.host);
        assert_eq!(back.token.expose(), "host-token-sentinel");
        assert!(!format!("{back:?}").contains("sentinel"));
        // host.json holds no token.
        assert!(!fs::read_to_string(state.join(HOST_FILE))
            .unwrap()
            .contains("sentinel"));
        // Another URL: the registration is still offered (the control plane decides).
        assert!(load_registration(state, "http://other").unwrap().is_some());
        // A lost token means registering again.
        fs::remove_file(state.join(TOKEN_FILE)).unwrap();
        assert!(load_registration(state, "http://api").unwrap().is_none());
    }

    #[test]
    fn an_existing_dir_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("s");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&state).unwrap();
        assert_eq!(mode(&state), 0o700);
    }
}
