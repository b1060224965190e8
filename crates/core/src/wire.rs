//! JSON bodies of the control-plane API, shared by the server, the client library and the CLI.
//! Field names are part of the public contract (`--json` outputs reuse them): change them only
//! with a CHANGELOG entry.
//!
//! Timestamps are RFC 3339 strings in UTC.

use crate::scope::Action;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Every error the API returns: a stable machine `code`, a message safe to show a user and,
/// where there is one, what to do about it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateApp {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct App {
    pub name: String,
    pub created_at: String,
    /// The app's newest secrets version (0 before the first write).
    pub secrets_version: i64,
    /// The secrets version the app's machines run (what was last deployed).
    pub deployed_version: i64,
}

/// One `NAME=VALUE` pair on its way to the API. The value travels as UTF-8 text when it is
/// valid UTF-8, else base64 — a value may be any bytes but NUL.
///
/// This type is serializable because it must cross the wire once, from the CLI to the API,
/// inside TLS; it is neither `Clone` nor printable.
#[derive(Serialize, Deserialize)]
pub struct SecretPair {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
}

impl fmt::Debug for SecretPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SecretPair {{ name: {:?}, value: [REDACTED] }}",
            self.name
        )
    }
}

impl Drop for SecretPair {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        if let Some(v) = self.value.as_mut() {
            v.zeroize();
        }
        if let Some(v) = self.value_base64.as_mut() {
            v.zeroize();
        }
    }
}

/// `POST /v1/apps/{app}/secrets`: one atomic change.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WriteSecrets {
    #[serde(default)]
    pub set: Vec<SecretPair>,
    #[serde(default)]
    pub unset: Vec<String>,
    /// Record the change without deploying it.
    #[serde(default)]
    pub stage: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteResult {
    /// The secrets version this write created.
    pub version: i64,
    pub deployed: bool,
    pub description: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecretStatus {
    Deployed,
    Staged,
}

impl SecretStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SecretStatus::Deployed => "Deployed",
            SecretStatus::Staged => "Staged",
        }
    }
}

/// One row of `secrets list`: never a value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretInfo {
    pub name: String,
    pub digest: String,
    pub created_at: String,
    pub updated_at: String,
    pub status: SecretStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretList {
    pub version: i64,
    pub deployed_version: i64,
    pub secrets: Vec<SecretInfo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Set,
    Unset,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NameChange {
    pub name: String,
    pub kind: ChangeKind,
    /// The new digest for a set; absent for an unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// What happened to a secrets version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionOutcome {
    /// The version the app's machines run now.
    Deployed,
    /// Newer than what is deployed, waiting for `secrets deploy`.
    Staged,
    /// Was deployed, or skipped, and has since been replaced.
    Superseded,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: i64,
    pub changes: Vec<NameChange>,
    pub actor: String,
    pub created_at: String,
    pub outcome: VersionOutcome,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployResult {
    pub version: i64,
    /// False when there was nothing staged to deploy.
    pub changed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateToken {
    #[serde(default)]
    pub app: Option<String>,
    pub scope: Action,
    /// Lifetime in seconds; absent means the server's default (24 h).
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub app: Option<String>,
    pub scope: Action,
    pub description: String,
    pub created_at: String,
    pub expires_at: String,
    pub revoked: bool,
}

/// The answer to `tokens create`: the only time the token's secret is shown.
#[derive(Serialize, Deserialize)]
pub struct CreatedToken {
    pub token: String,
    pub info: TokenInfo,
}

impl fmt::Debug for CreatedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CreatedToken {{ token: [REDACTED], info: {:?} }}",
            self.info
        )
    }
}

/// Bodies of the vault's HTTP interface.
pub mod vault {
    use serde::{Deserialize, Serialize};

    /// What the API may know of an app's keys: the public key and the digest (MAC) key, hex.
    /// Neither can decrypt; the digest key is still kept out of logs and wiped on drop.
    #[derive(Serialize, Deserialize)]
    pub struct SealingKeysBody {
        pub public_key: String,
        pub digest_key: String,
    }

    impl std::fmt::Debug for SealingKeysBody {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "SealingKeysBody {{ public_key: {}, digest_key: [REDACTED] }}",
                self.public_key
            )
        }
    }

    impl Drop for SealingKeysBody {
        fn drop(&mut self) {
            zeroize::Zeroize::zeroize(&mut self.digest_key);
        }
    }
}
