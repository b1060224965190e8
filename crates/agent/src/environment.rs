//! The workload's environment, built from nothing.
//!
//! A workload gets exactly these variables and no others — nothing of the agent's own
//! environment (its credentials, `COFFER_*` settings, proxies…) is inherited, because the
//! process is spawned with `env_clear()` and then given only what [`build`] returns:
//!
//! | variable | from | precedence |
//! |---|---|---|
//! | `PATH=/usr/local/bin:/usr/bin:/bin`, `HOME=<machine dir>/home` | the agent's defaults | lowest |
//! | the machine's `env` pairs (`coffer machines run --env K=V`) | the assignment | overrides the defaults |
//! | the app's secrets (one secrets version) | the vault, via the boot bundle | overrides `env` pairs and the defaults |
//! | `COFFER_APP_NAME`, `COFFER_MACHINE_ID`, `COFFER_RELEASE_VERSION` | the boot grant | always the platform's |
//!
//! **A secret wins over an `env` pair of the same name**: secrets are what a release changes and
//! what `coffer secrets list` shows as deployed, so a stale `--env` given when the machine was
//! created must not silently shadow a value the user later set as a secret. An `env` pair or a
//! secret may replace the default `PATH` or `HOME` (a workload that needs `/opt/app/bin` says
//! so). The `COFFER_` prefix is reserved: a secret or `env` name that uses it is refused, and
//! so is any name that is not `[A-Za-z_][A-Za-z0-9_]*` or any value with a NUL byte — such a
//! machine does not boot (it never runs with part of its environment missing).
//!
//! This module is pure (no I/O); values stay in [`SecretValue`]s, wiped on drop.

use coffer_core::SecretValue;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The minimal search path every workload gets unless it sets its own.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// What the platform tells the workload about itself.
#[derive(Debug, Clone)]
pub struct Platform<'a> {
    pub app_name: &'a str,
    pub machine_id: &'a str,
    pub release_version: i64,
}

/// Where a refused variable came from, for the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Secret,
    MachineEnv,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Origin::Secret => "secret",
            Origin::MachineEnv => "machine env variable",
        })
    }
}

/// Why an environment could not be built. Names are shown (clipped), values never.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("{origin} name {name:?} is not a valid environment variable name")]
    InvalidName { origin: Origin, name: String },
    #[error("{origin} {name} uses the reserved prefix COFFER_")]
    Reserved { origin: Origin, name: String },
    #[error("the value of {origin} {name} contains a NUL byte")]
    Nul { origin: Origin, name: String },
    #[error("secret {name} appears twice in the boot bundle")]
    Duplicate { name: String },
}

/// A complete workload environment. Not `Clone`; `Debug` shows names only; values are wiped
/// when it is dropped.
pub struct WorkloadEnv {
    vars: BTreeMap<String, SecretValue>,
}

impl WorkloadEnv {
    /// The variable names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.vars.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    /// The value of one variable (tests and the spawn site only).
    pub fn expose(&self, name: &str) -> Option<&[u8]> {
        self.vars.get(name).map(SecretValue::expose_bytes)
    }

    /// Every `(name, value)`, for `Command::envs` — the one place values leave this type.
    pub fn expose_all(&self) -> impl Iterator<Item = (&OsStr, &OsStr)> {
        self.vars
            .iter()
            .map(|(k, v)| (OsStr::new(k.as_str()), OsStr::from_bytes(v.expose_bytes())))
    }
}

impl std::fmt::Debug for WorkloadEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadEnv")
            .field("names", &self.vars.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Builds the environment of one boot from the opened bundle (consumed: its values move into
/// the result without being copied), the machine's `env` pairs, the platform facts and the
/// machine's home directory. See the [module documentation](self) for the rules.
pub fn build(
    secrets: Vec<(String, SecretValue)>,
    machine_env: &BTreeMap<String, String>,
    platform: &Platform<'_>,
    home: &Path,
) -> Result<WorkloadEnv, EnvError> {
    let mut vars: BTreeMap<String, SecretValue> = BTreeMap::new();
    vars.insert("PATH".into(), SecretValue::from_str_value(DEFAULT_PATH));
    vars.insert(
        "HOME".into(),
        SecretValue::new(home.as_os_str().as_bytes().to_vec()),
    );

    for (name, value) in machine_env {
        check(Origin::MachineEnv, name, value.as_bytes())?;
        vars.insert(name.clone(), SecretValue::from_str_value(value));
    }

    let mut seen = std::collections::BTreeSet::new();
    for (name, value) in secrets {
        check(Origin::Secret, &name, value.expose_bytes())?;
        if !seen.insert(name.clone()) {
            return Err(EnvError::Duplicate { name: clip(&name) });
        }
        vars.insert(name, value);
    }

    vars.insert(
        "COFFER_APP_NAME".into(),
        SecretValue::from_str_value(platform.app_name),
    );
    vars.insert(
        "COFFER_MACHINE_ID".into(),
        SecretValue::from_str_value(platform.machine_id),
    );
    vars.insert(
        "COFFER_RELEASE_VERSION".into(),
        SecretValue::from_str_value(&platform.release_version.to_string()),
    );
    Ok(WorkloadEnv { vars })
}

fn check(origin: Origin, name: &str, value: &[u8]) -> Result<(), EnvError> {
    if !valid_name(name) {
        return Err(EnvError::InvalidName {
            origin,
            name: clip(name),
        });
    }
    if name.starts_with(coffer_core::RESERVED_PREFIX) {
        return Err(EnvError::Reserved {
            origin,
            name: name.to_string(),
        });
    }
    if value.contains(&0) {
        return Err(EnvError::Nul {
            origin,
            name: name.to_string(),
        });
    }
    Ok(())
}

/// `[A-Za-z_][A-Za-z0-9_]*`: what every shell can name, and never `=` or NUL.
pub fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'A'..=b'Z' | b'a'..=b'z' | b'_'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.len() <= 256
}

fn clip(s: &str) -> String {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    if end < s.len() {
        format!("{}…", &s[..end])
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform() -> Platform<'static> {
        Platform {
            app_name: "web",
            machine_id: "0123abcd",
            release_version: 7,
        }
    }

    fn secret(name: &str, value: &str) -> (String, SecretValue) {
        (name.to_string(), SecretValue::from_str_value(value))
    }

    fn text(env: &WorkloadEnv, name: &str) -> Option<String> {
        env.expose(name)
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
    }

    #[test]
    fn exactly_the_documented_variables() {
        let machine_env = BTreeMap::from([("PORT".to_string(), "8080".to_string())]);
        let env = build(
            vec![
                secret("DATABASE_URL", "postgres://db"),
                secret("API_KEY", "k"),
            ],
            &machine_env,
            &platform(),
            Path::new("/var/lib/coffer/machines/0123abcd/home"),
        )
        .unwrap();
        let names: Vec<&str> = env.names().collect();
        assert_eq!(
            names,
            vec![
                "API_KEY",
                "COFFER_APP_NAME",
                "COFFER_MACHINE_ID",
                "COFFER_RELEASE_VERSION",
                "DATABASE_URL",
                "HOME",
                "PATH",
                "PORT"
            ]
        );
        assert_eq!(text(&env, "PATH").unwrap(), DEFAULT_PATH);
        assert_eq!(
            text(&env, "HOME").unwrap(),
            "/var/lib/coffer/machines/0123abcd/home"
        );
        assert_eq!(text(&env, "COFFER_APP_NAME").unwrap(), "web");
        assert_eq!(text(&env, "COFFER_MACHINE_ID").unwrap(), "0123abcd");
        assert_eq!(text(&env, "COFFER_RELEASE_VERSION").unwrap(), "7");
        assert_eq!(text(&env, "DATABASE_URL").unwrap(), "postgres://db");
        assert_eq!(text(&env, "PORT").unwrap(), "8080");
        assert_eq!(env.expose_all().count(), env.len());
    }

    #[test]
    fn a_secret_wins_over_an_env_pair_and_both_over_the_defaults() {
        let machine_env = BTreeMap::from([
            ("API_KEY".to_string(), "from-env".to_string()),
            ("PATH".to_string(), "/opt/app/bin:/usr/bin".to_string()),
        ]);
        let env = build(
            vec![secret("API_KEY", "from-secret"), secret("HOME", "/srv")],
            &machine_env,
            &platform(),
            Path::new("/h"),
        )
        .unwrap();
        assert_eq!(text(&env, "API_KEY").unwrap(), "from-secret");
        assert_eq!(text(&env, "PATH").unwrap(), "/opt/app/bin:/usr/bin");
        assert_eq!(text(&env, "HOME").unwrap(), "/srv");
    }

    #[test]
    fn nothing_of_the_agents_environment_leaks() {
        // Edition 2021: `set_var` is safe; the variable exists in this (test) process only.
        std::env::set_var("COFFER_AGENT_LEAK_SENTINEL", "agent-credential");
        std::env::set_var("AGENT_ONLY_VARIABLE", "agent-credential");
        let env = build(vec![], &BTreeMap::new(), &platform(), Path::new("/h")).unwrap();
        let names: Vec<&str> = env.names().collect();
        assert!(!names.contains(&"COFFER_AGENT_LEAK_SENTINEL"));
        assert!(!names.contains(&"AGENT_ONLY_VARIABLE"));
        assert!(env
            .expose_all()
            .all(|(_, v)| v.as_bytes() != b"agent-credential"));
        // Only the five platform variables when there are no secrets nor env pairs.
        assert_eq!(env.len(), 5);
    }

    type Case = (
        Vec<(String, SecretValue)>,
        BTreeMap<String, String>,
        EnvError,
    );

    #[test]
    fn bad_names_and_values_refuse_the_whole_environment() {
        let p = platform();
        let h = Path::new("/h");
        let none = BTreeMap::new();
        let cases: Vec<Case> = vec![
            (
                vec![secret("1BAD", "x")],
                none.clone(),
                EnvError::InvalidName {
                    origin: Origin::Secret,
                    name: "1BAD".into(),
                },
            ),
            (
                vec![secret("A=B", "x")],
                none.clone(),
                EnvError::InvalidName {
                    origin: Origin::Secret,
                    name: "A=B".into(),
                },
            ),
            (
                vec![],
                BTreeMap::from([("COFFER_MACHINE_ID".into(), "spoof".into())]),
                EnvError::Reserved {
                    origin: Origin::MachineEnv,
                    name: "COFFER_MACHINE_ID".into(),
                },
            ),
            (
                vec![("NUL".into(), SecretValue::new(b"a\0b".to_vec()))],
                none.clone(),
                EnvError::Nul {
                    origin: Origin::Secret,
                    name: "NUL".into(),
                },
            ),
            (
                vec![secret("TWICE", "a"), secret("TWICE", "b")],
                none.clone(),
                EnvError::Duplicate {
                    name: "TWICE".into(),
                },
            ),
        ];
        for (secrets, env, want) in cases {
            let err = build(secrets, &env, &p, h).unwrap_err();
            assert_eq!(err, want);
            // The message names the variable, never a value.
            assert!(!err.to_string().contains("spoof"));
        }
    }

    #[test]
    fn debug_shows_names_only() {
        let env = build(
            vec![secret("TOKEN", "hunter2-sentinel")],
            &BTreeMap::new(),
            &platform(),
            Path::new("/h"),
        )
        .unwrap();
        let shown = format!("{env:?}");
        assert!(shown.contains("TOKEN"));
        assert!(!shown.contains("hunter2"));
    }
}
