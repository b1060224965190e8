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
#[serde(deny_unknown_fields)]
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
    /// How long a machine must run after a release restarts it before the release moves on.
    #[serde(default)]
    pub crash_window_secs: u64,
    #[serde(default)]
    pub release_version: i64,
}

/// One `NAME=VALUE` pair on its way to the API. The value travels as UTF-8 text when it is
/// valid UTF-8, else base64 — a value may be any bytes but NUL.
///
/// This type is serializable because it must cross the wire once, from the CLI to the API,
/// inside TLS; it is neither `Clone` nor printable.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
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
    /// The release that rolls the version out (absent for `--stage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<i64>,
}

/// `coffer releases list`; `GET /v1/apps/{app}/releases[/{version}]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Release {
    pub version: i64,
    pub secrets_version: i64,
    /// `running`, `complete`, `failed` or `rolled_back`.
    pub status: String,
    pub description: String,
    pub actor: String,
    /// Why a release failed: the machine, its exit status, how long it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where a running release is ("watching web-1 (canary): 12s left").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub progress: String,
    pub created_at: String,
    pub updated_at: String,
}

/// `PATCH /v1/apps/{app}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateApp {
    /// Seconds a machine must run after a release restarts it (at least 1).
    #[serde(default)]
    pub crash_window_secs: Option<u64>,
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
    /// The release that rolled this version out, and how it ended; absent for a version that
    /// was only staged (or written before any machine ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<VersionRelease>,
}

/// A release as `secrets history` shows it next to its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRelease {
    pub version: i64,
    /// `running`, `complete`, `failed` or `rolled_back`.
    pub status: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployResult {
    pub version: i64,
    /// False when there was nothing staged to deploy.
    pub changed: bool,
    /// The release that rolls the version out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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

/// Machines as users see them (`coffer machines …`).
pub mod machines {
    use serde::{Deserialize, Serialize};
    use std::collections::BTreeMap;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
    #[serde(rename_all = "kebab-case")]
    pub enum RestartPolicy {
        /// Never restart; an exit is final.
        #[default]
        No,
        /// Restart after a non-zero exit or a signal.
        OnFailure,
        /// Restart after any exit.
        Always,
    }

    impl RestartPolicy {
        pub fn as_str(self) -> &'static str {
            match self {
                RestartPolicy::No => "no",
                RestartPolicy::OnFailure => "on-failure",
                RestartPolicy::Always => "always",
            }
        }
        /// Whether a workload that exited with `status` (a signal counts as 128+n) is
        /// restarted.
        pub fn restarts_after(self, status: i32) -> bool {
            match self {
                RestartPolicy::No => false,
                RestartPolicy::OnFailure => status != 0,
                RestartPolicy::Always => true,
            }
        }
        pub fn parse(s: &str) -> Option<Self> {
            match s {
                "no" => Some(RestartPolicy::No),
                "on-failure" => Some(RestartPolicy::OnFailure),
                "always" => Some(RestartPolicy::Always),
                _ => None,
            }
        }
    }

    /// What the user asked for.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum DesiredState {
        Running,
        Stopped,
        Destroyed,
    }

    impl DesiredState {
        pub fn as_str(self) -> &'static str {
            match self {
                DesiredState::Running => "running",
                DesiredState::Stopped => "stopped",
                DesiredState::Destroyed => "destroyed",
            }
        }
        pub fn parse(s: &str) -> Option<Self> {
            match s {
                "running" => Some(DesiredState::Running),
                "stopped" => Some(DesiredState::Stopped),
                "destroyed" => Some(DesiredState::Destroyed),
                _ => None,
            }
        }
    }

    /// What the host reports.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum MachineState {
        /// Created, not yet picked up by its host.
        Pending,
        /// Getting its secrets and starting the process.
        Starting,
        /// The workload runs.
        Started,
        /// Stopped on request.
        Stopped,
        /// The workload exited by itself (see `exit_status`).
        Exited,
        /// Could not start (see `message`); the host retries with backoff.
        Failed,
        /// Started, but failing its health check (see `message`). The workload keeps running:
        /// the check does not restart or stop it; the host reports `started` again once the
        /// check passes.
        Unhealthy,
        Destroyed,
    }

    impl MachineState {
        pub fn as_str(self) -> &'static str {
            match self {
                MachineState::Pending => "pending",
                MachineState::Starting => "starting",
                MachineState::Started => "started",
                MachineState::Stopped => "stopped",
                MachineState::Exited => "exited",
                MachineState::Failed => "failed",
                MachineState::Unhealthy => "unhealthy",
                MachineState::Destroyed => "destroyed",
            }
        }
        pub fn parse(s: &str) -> Option<Self> {
            Some(match s {
                "pending" => MachineState::Pending,
                "starting" => MachineState::Starting,
                "started" => MachineState::Started,
                "stopped" => MachineState::Stopped,
                "exited" => MachineState::Exited,
                "failed" => MachineState::Failed,
                "unhealthy" => MachineState::Unhealthy,
                "destroyed" => MachineState::Destroyed,
                _ => return None,
            })
        }
    }

    /// The longest health-check path accepted.
    pub const MAX_CHECK_PATH: usize = 512;

    /// How the host checks that a started workload is healthy: from the host itself, on
    /// 127.0.0.1, every second. A machine that fails it inside a release's crash window fails
    /// the release; outside a release it is shown `unhealthy` and left running.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
    pub enum HealthCheck {
        /// `GET PATH` over plain HTTP/1.1; a 2xx or 3xx status is healthy.
        Http { port: u16, path: String },
        /// A TCP connection to the port is accepted.
        Tcp { port: u16 },
    }

    impl HealthCheck {
        pub fn port(&self) -> u16 {
            match self {
                HealthCheck::Http { port, .. } | HealthCheck::Tcp { port } => *port,
            }
        }

        /// What is checked, for messages: `GET :8080/healthz`, `:5432`.
        pub fn target(&self) -> String {
            match self {
                HealthCheck::Http { port, path } => format!("GET :{port}{path}"),
                HealthCheck::Tcp { port } => format!(":{port}"),
            }
        }

        /// The rules the API enforces (the CLI checks them too): a port in 1..=65535, an HTTP
        /// path that starts with `/`, at most [`MAX_CHECK_PATH`] bytes, with no whitespace or
        /// control character (it goes into the request line as-is).
        pub fn validate(&self) -> Result<(), String> {
            if self.port() == 0 {
                return Err("the health check port must be between 1 and 65535".into());
            }
            if let HealthCheck::Http { path, .. } = self {
                if !path.starts_with('/') {
                    return Err("the health check path must start with '/'".into());
                }
                if path.len() > MAX_CHECK_PATH {
                    return Err(format!(
                        "the health check path must be at most {MAX_CHECK_PATH} bytes"
                    ));
                }
                if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(
                        "the health check path must not contain spaces or control characters"
                            .into(),
                    );
                }
            }
            Ok(())
        }
    }

    /// `POST /v1/apps/{app}/machines`.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RunMachine {
        #[serde(default)]
        pub name: Option<String>,
        /// The program and its arguments; the program is looked up in the minimal `PATH`.
        pub command: Vec<String>,
        /// Plain (non-secret) environment variables of this machine.
        #[serde(default)]
        pub env: BTreeMap<String, String>,
        #[serde(default)]
        pub restart: RestartPolicy,
        /// Checked by the host while the workload runs (see [`HealthCheck`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub check: Option<HealthCheck>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Machine {
        pub id: String,
        pub app: String,
        pub name: String,
        pub state: MachineState,
        pub desired: DesiredState,
        /// The secrets version the machine boots with.
        pub secrets_version: i64,
        pub release_version: i64,
        pub host: String,
        pub command: Vec<String>,
        pub restart: RestartPolicy,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub check: Option<HealthCheck>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub exit_status: Option<i32>,
        /// Why the machine is in its state (a failed boot's reason, …).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub message: Option<String>,
        pub created_at: String,
        pub updated_at: String,
    }
}

/// Between a host agent and the control plane / vault.
pub mod agent {
    use super::machines::{DesiredState, HealthCheck, MachineState, RestartPolicy};
    use serde::{Deserialize, Serialize};
    use std::collections::BTreeMap;

    /// `POST /v1/hosts` (global admin API token): a new host joins.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RegisterHost {
        pub name: String,
        /// Base URL where the agent serves machine logs to the control plane.
        pub address: String,
        /// The host's Ed25519 public key (hex): the host signs its decrypt requests with it.
        pub public_key: String,
    }

    #[derive(Serialize, Deserialize)]
    pub struct RegisteredHost {
        pub host_id: String,
        /// The host's bearer token for the control plane (shown once).
        pub host_token: String,
        /// The control plane's Ed25519 public key (hex) that signs machine tokens and log grants.
        pub control_plane_public_key: String,
    }

    impl std::fmt::Debug for RegisteredHost {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "RegisteredHost {{ host_id: {}, host_token: [REDACTED] }}",
                self.host_id
            )
        }
    }

    /// `POST /v1/hosts/{id}/heartbeat` (host token): the agent is alive, at this address.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Heartbeat {
        pub address: String,
    }

    /// One machine placed on a host, as the host must run it.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Assignment {
        pub machine_id: String,
        pub app_id: String,
        pub app_name: String,
        pub name: String,
        pub command: Vec<String>,
        pub env: BTreeMap<String, String>,
        pub restart: RestartPolicy,
        /// Probed by the agent while the workload runs; failing it is reported `unhealthy`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub check: Option<HealthCheck>,
        pub desired: DesiredState,
        pub secrets_version: i64,
        pub release_version: i64,
        /// Bumped by every change of the machine's desired state or configuration; a host
        /// (re)boots a running machine whose generation moved.
        pub generation: i64,
    }

    /// `GET /v1/hosts/{id}/assignments?after=N` (host token): long-polls until the host's
    /// assignments change past `N` or a timeout, then returns them all.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Assignments {
        /// Highest generation among the host's machines (pass as `after`).
        pub generation: i64,
        pub machines: Vec<Assignment>,
    }

    /// `POST /v1/hosts/{id}/machines/{mid}/state` (host token).
    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct StateReport {
        pub state: MachineState,
        #[serde(default)]
        pub exit_status: Option<i32>,
        #[serde(default)]
        pub message: Option<String>,
        /// The generation the host acted on.
        pub generation: i64,
    }

    /// A ciphertext as presented to the vault, with the place it was stored at.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct PresentedCiphertext {
        pub name: String,
        pub version: i64,
        /// Standard base64.
        pub ciphertext: String,
    }

    /// `POST /v1/hosts/{id}/machines/{mid}/boot` (host token): a machine token for this boot
    /// and the ciphertexts of the machine's secrets version.
    #[derive(Serialize, Deserialize)]
    pub struct BootGrant {
        pub machine_token: String,
        pub app_id: String,
        pub app_name: String,
        pub secrets_version: i64,
        pub release_version: i64,
        pub ciphertexts: Vec<PresentedCiphertext>,
        /// When the machine token expires (RFC 3339).
        pub expires_at: String,
    }

    impl std::fmt::Debug for BootGrant {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "BootGrant {{ machine_token: [REDACTED], app_id: {}, secrets_version: {}, ciphertexts: {} }}",
                self.app_id,
                self.secrets_version,
                self.ciphertexts.len()
            )
        }
    }

    /// `POST /v1/decrypt` on the vault.
    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct DecryptRequest {
        pub machine_token: String,
        pub machine_id: String,
        /// The agent's one-time X25519 public key for this boot (hex).
        pub one_time_public_key: String,
        pub ciphertexts: Vec<PresentedCiphertext>,
        /// Unix seconds; the vault refuses requests more than a minute off.
        pub issued_at: i64,
        /// Ed25519 signature (hex) by the host key over the request (see
        /// `coffer_crypto::machine_token::decrypt_request_message`).
        pub host_signature: String,
    }

    impl std::fmt::Debug for DecryptRequest {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "DecryptRequest {{ machine_id: {}, ciphertexts: {} }}",
                self.machine_id,
                self.ciphertexts.len()
            )
        }
    }

    #[derive(Debug, Serialize, Deserialize)]
    pub struct DecryptResponse {
        /// The values sealed to the one-time key (base64), context (app id, machine id,
        /// secrets version).
        pub bundle: String,
    }
}

#[cfg(test)]
mod tests {
    use super::agent::Assignment;
    use super::machines::{HealthCheck, MachineState, RunMachine};

    #[test]
    fn health_checks_on_the_wire() {
        let http = HealthCheck::Http {
            port: 8080,
            path: "/healthz".into(),
        };
        assert_eq!(
            serde_json::to_value(&http).unwrap(),
            serde_json::json!({"type": "http", "port": 8080, "path": "/healthz"})
        );
        assert_eq!(
            serde_json::to_value(HealthCheck::Tcp { port: 5432 }).unwrap(),
            serde_json::json!({"type": "tcp", "port": 5432})
        );
        let run: RunMachine = serde_json::from_value(serde_json::json!({
            "command": ["./server"],
            "check": {"type": "http", "port": 8080, "path": "/healthz"},
        }))
        .unwrap();
        assert_eq!(run.check, Some(http));
        // Without a check, nothing is sent, and old bodies still parse.
        let run: RunMachine =
            serde_json::from_value(serde_json::json!({"command": ["./server"]})).unwrap();
        assert_eq!(run.check, None);
        assert!(!serde_json::to_string(&run).unwrap().contains("check"));
        for bad in [
            serde_json::json!({"type": "udp", "port": 53}),
            serde_json::json!({"type": "tcp", "port": 70000}),
            serde_json::json!({"type": "tcp", "port": 1, "timeout": 5}),
            serde_json::json!({"type": "http", "port": 1}),
        ] {
            assert!(
                serde_json::from_value::<HealthCheck>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        let a: Result<Assignment, _> = serde_json::from_value(serde_json::json!({
            "machine_id": "m", "app_id": "a", "app_name": "web", "name": "web-1",
            "command": ["x"], "env": {}, "restart": "no", "desired": "running",
            "secrets_version": 1, "release_version": 1, "generation": 1,
        }));
        assert_eq!(
            a.unwrap().check,
            None,
            "an older control plane's assignment"
        );
    }

    #[test]
    fn health_check_rules() {
        let http = |port, path: &str| HealthCheck::Http {
            port,
            path: path.into(),
        };
        assert!(http(8080, "/").validate().is_ok());
        assert!(http(1, "/healthz?full=1").validate().is_ok());
        assert!(HealthCheck::Tcp { port: 65535 }.validate().is_ok());
        assert!(HealthCheck::Tcp { port: 0 }.validate().is_err());
        assert!(http(0, "/").validate().is_err());
        assert!(http(80, "healthz").validate().is_err());
        assert!(http(80, "").validate().is_err());
        assert!(http(80, "/a b").validate().is_err());
        assert!(http(80, "/a\r\nHost: x").validate().is_err());
        assert!(http(80, &format!("/{}", "a".repeat(511)))
            .validate()
            .is_ok());
        assert!(http(80, &format!("/{}", "a".repeat(512)))
            .validate()
            .is_err());
        assert_eq!(http(8080, "/healthz").target(), "GET :8080/healthz");
        assert_eq!(HealthCheck::Tcp { port: 5432 }.target(), ":5432");
    }

    #[test]
    fn machine_states_round_trip() {
        for s in [
            MachineState::Pending,
            MachineState::Starting,
            MachineState::Started,
            MachineState::Stopped,
            MachineState::Exited,
            MachineState::Failed,
            MachineState::Unhealthy,
            MachineState::Destroyed,
        ] {
            assert_eq!(MachineState::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
    }
}
