//! Rendering results: tables and sentences for people, JSON for scripts.
//!
//! Renderers are pure: they take the data, the current time `now` (for relative dates) and
//! whether stdout is a terminal (styling is applied only then, so piped output is stable),
//! and return the text. Results go to stdout; notes and errors go to stderr.
//!
//! # JSON shapes (`--json`)
//!
//! The wire types of `coffer_core::wire`, as the API returns them, pretty-printed:
//!
//! | command | shape |
//! |---|---|
//! | `apps create` | `App` `{"name","created_at","secrets_version","deployed_version"}` |
//! | `apps list` | `[App]` |
//! | `apps destroy` | `{"app","destroyed":true}` |
//! | `secrets set/unset/import` | `WriteResult` `{"version","deployed","description"}` |
//! | `secrets list` | `[{"name","digest","created_at","updated_at","status"}]` (`status`: `"Deployed"` or `"Staged"`) |
//! | `secrets deploy` | `DeployResult` `{"version","changed"}` |
//! | `secrets history` | `[{"version","changes":[{"name","kind":"set"\|"unset","digest"?}],"actor","created_at","outcome":"deployed"\|"staged"\|"superseded"}]` |
//! | `tokens create` | `CreatedToken` `{"token","info":TokenInfo}` |
//! | `tokens list` | `[TokenInfo]` `{"id","app","scope","description","created_at","expires_at","revoked"}` |
//! | `tokens revoke` | `{"id","revoked":true}` |
//! | `machines run/stop/start/destroy` | `Machine` `{"id","app","name","state","desired","secrets_version","release_version","host","command","restart","exit_status"?,"message"?,"created_at","updated_at"}` (`state`: `pending`, `starting`, `started`, `stopped`, `exited`, `failed`, `destroyed`; `desired`: `running`, `stopped`, `destroyed`; `restart`: `no`, `on-failure`, `always`) |
//! | `machines list` | `[Machine]` |
//!
//! `machines logs` prints the workload's output as raw bytes, with or without `--json`.

use std::io::Write;

use coffer_core::wire::machines::{Machine, MachineState};
use coffer_core::wire::{
    App, ChangeKind, SecretInfo, TokenInfo, VersionInfo, VersionOutcome, WriteResult,
};
use comfy_table::{Attribute, Cell, ContentArrangement, Table};
use jiff::Timestamp;
use serde::Serialize;

use crate::error::{CliError, Exit};

/// Writes `text` to stdout. A closed pipe (`coffer secrets list | head -1`) is not an error.
pub fn print(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::new(
            Exit::Other,
            format!("cannot write to stdout: {e}"),
        )),
    }
}

/// Writes a note for the user to stderr (never a result).
pub fn note(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// Pretty JSON followed by a newline.
pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<String, CliError> {
    serde_json::to_string_pretty(value)
        .map(|s| s + "\n")
        .map_err(|e| CliError::new(Exit::Other, format!("cannot encode JSON: {e}")))
}

/// "17s ago", "5m ago", "3h ago", "2d ago"; "in 5m" for a time in the future; the raw text
/// if it is not an RFC 3339 timestamp.
pub fn relative(rfc3339: &str, now: Timestamp) -> String {
    match rfc3339.parse::<Timestamp>() {
        Ok(t) => relative_ts(t, now),
        Err(_) => rfc3339.to_string(),
    }
}

pub fn relative_ts(t: Timestamp, now: Timestamp) -> String {
    let secs = now.as_second() - t.as_second();
    if secs >= 0 {
        format!("{} ago", span(secs))
    } else {
        format!("in {}", span(-secs))
    }
}

/// The largest whole unit of a number of seconds.
fn span(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3_600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3_600),
        s => format!("{}d", s / 86_400),
    }
}

/// Like [`relative`], for times that cannot be in the future (a little clock skew between
/// the server and this machine shows as "0s ago", not "in 2s").
pub fn ago(rfc3339: &str, now: Timestamp) -> String {
    match rfc3339.parse::<Timestamp>() {
        Ok(t) if t > now => "0s ago".to_string(),
        Ok(t) => relative_ts(t, now),
        Err(_) => rfc3339.to_string(),
    }
}

/// A borderless table, columns three spaces apart, no trailing spaces; headers in bold on a
/// terminal only.
fn table(headers: &[&str], tty: bool) -> Table {
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_content_arrangement(ContentArrangement::Disabled);
    if tty {
        t.enforce_styling();
    } else {
        t.force_no_tty();
    }
    t.set_header(headers.iter().map(|h| {
        let c = Cell::new(h);
        if tty {
            c.add_attribute(Attribute::Bold)
        } else {
            c
        }
    }));
    for col in t.column_iter_mut() {
        col.set_padding((0, 3));
    }
    t
}

fn finish(t: &Table) -> String {
    let mut s = String::new();
    for line in t.lines() {
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

/// `apps list`: NAME | SECRETS VERSION | DEPLOYED VERSION | CREATED.
pub fn apps_table(apps: &[App], now: Timestamp, tty: bool) -> String {
    let mut t = table(
        &[
            "NAME",
            "SECRETS VERSION",
            "DEPLOYED VERSION",
            "RELEASE",
            "CRASH WINDOW",
            "CREATED",
        ],
        tty,
    );
    for a in apps {
        t.add_row(vec![
            a.name.clone(),
            a.secrets_version.to_string(),
            a.deployed_version.to_string(),
            a.release_version.to_string(),
            format!("{}s", a.crash_window_secs),
            ago(&a.created_at, now),
        ]);
    }
    finish(&t)
}

/// `secrets list`: NAME | DIGEST | DATE | STATUS; DATE is when the secret last changed.
pub fn secrets_table(secrets: &[SecretInfo], now: Timestamp, tty: bool) -> String {
    let mut t = table(&["NAME", "DIGEST", "DATE", "STATUS"], tty);
    for s in secrets {
        t.add_row(vec![
            s.name.clone(),
            s.digest.clone(),
            ago(&s.updated_at, now),
            s.status.as_str().to_string(),
        ]);
    }
    finish(&t)
}

/// How many hex digits of a digest `secrets history` shows (enough to tell values apart at a
/// glance; `--json` has all 32).
const SHORT_DIGEST: usize = 8;

/// The CHANGES cell of one version: one line per name, `+NAME digest` for a set (new or
/// replaced value) and `-NAME` for an unset.
pub fn changes_cell(v: &VersionInfo) -> String {
    v.changes
        .iter()
        .map(|c| match c.kind {
            ChangeKind::Set => match &c.digest {
                Some(d) => {
                    let short: String = d.chars().take(SHORT_DIGEST).collect();
                    format!("+{} {short}", c.name)
                }
                None => format!("+{}", c.name),
            },
            ChangeKind::Unset => format!("-{}", c.name),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn outcome_str(o: VersionOutcome) -> &'static str {
    match o {
        VersionOutcome::Deployed => "Deployed",
        VersionOutcome::Staged => "Staged",
        VersionOutcome::Superseded => "Superseded",
    }
}

/// `secrets history`: VERSION | CHANGES | ACTOR | DATE | OUTCOME | RELEASE, newest first.
/// RELEASE is the release that rolled the version out and how it ended (`v7 failed`), or `-`.
pub fn history_table(versions: &[VersionInfo], now: Timestamp, tty: bool) -> String {
    let mut t = table(
        &["VERSION", "CHANGES", "ACTOR", "DATE", "OUTCOME", "RELEASE"],
        tty,
    );
    for v in versions {
        t.add_row(vec![
            v.version.to_string(),
            changes_cell(v),
            v.actor.clone(),
            ago(&v.created_at, now),
            outcome_str(v.outcome).to_string(),
            v.release
                .as_ref()
                .map_or_else(|| "-".into(), |r| format!("v{} {}", r.version, r.status)),
        ]);
    }
    finish(&t)
}

/// `active`, `expired` or `revoked`.
pub fn token_status(t: &TokenInfo, now: Timestamp) -> &'static str {
    if t.revoked {
        "revoked"
    } else if t.expires_at.parse::<Timestamp>().is_ok_and(|e| e <= now) {
        "expired"
    } else {
        "active"
    }
}

/// What a token reaches: its app, or every app.
pub fn token_app(t: &TokenInfo) -> &str {
    t.app.as_deref().unwrap_or("(all)")
}

/// `tokens list`: ID | APP | SCOPE | DESCRIPTION | CREATED | EXPIRES | STATUS.
pub fn tokens_table(tokens: &[TokenInfo], now: Timestamp, tty: bool) -> String {
    let mut t = table(
        &[
            "ID",
            "APP",
            "SCOPE",
            "DESCRIPTION",
            "CREATED",
            "EXPIRES",
            "STATUS",
        ],
        tty,
    );
    for tok in tokens {
        t.add_row(vec![
            tok.id.clone(),
            token_app(tok).to_string(),
            tok.scope.as_str().to_string(),
            tok.description.clone(),
            ago(&tok.created_at, now),
            relative(&tok.expires_at, now),
            token_status(tok, now).to_string(),
        ]);
    }
    finish(&t)
}

/// The STATE cell of a machine: its state, with the exit status of an exited machine, and
/// where it is headed when that differs (`started → stopped` while it stops).
pub fn machine_state(m: &Machine) -> String {
    use coffer_core::wire::machines::DesiredState;
    let mut s = match (m.state, m.exit_status) {
        (MachineState::Exited, Some(code)) => format!("exited ({code})"),
        (state, _) => state.as_str().to_string(),
    };
    let heading = match (m.desired, m.state) {
        (
            DesiredState::Stopped,
            MachineState::Started | MachineState::Starting | MachineState::Unhealthy,
        ) => Some("stopped"),
        (DesiredState::Destroyed, state) if state != MachineState::Destroyed => Some("destroyed"),
        _ => None,
    };
    if let Some(h) = heading {
        s.push_str(" → ");
        s.push_str(h);
    }
    s
}

/// Does `machines list` explain this machine's state under the table? A failed boot or a
/// failing health check always (the reason), an exit when the host said more than the
/// status the STATE cell shows (a signal, an upcoming restart).
fn needs_note(m: &Machine) -> bool {
    match (m.state, m.message.as_deref(), m.exit_status) {
        (MachineState::Failed | MachineState::Unhealthy, Some(_), _) => true,
        (MachineState::Exited, Some(msg), Some(code)) => {
            msg != format!("exited with status {code}")
        }
        (MachineState::Exited, Some(_), None) => true,
        _ => false,
    }
}

/// `machines list`: ID | NAME | STATE | RELEASE | HOST | AGE, then one line per failed,
/// unhealthy or exited machine with the host's reason (`* web-1: vault unavailable: …`), marked `*` in
/// the STATE column.
pub fn machines_table(machines: &[Machine], now: Timestamp, tty: bool) -> String {
    let mut t = table(&["ID", "NAME", "STATE", "RELEASE", "HOST", "AGE"], tty);
    for m in machines {
        let mut state = machine_state(m);
        if needs_note(m) {
            state.push('*');
        }
        t.add_row(vec![
            m.id.clone(),
            m.name.clone(),
            state,
            m.release_version.to_string(),
            m.host.clone(),
            ago(&m.created_at, now),
        ]);
    }
    let mut out = finish(&t);
    let notes: Vec<String> = machines
        .iter()
        .filter(|m| needs_note(m))
        .map(|m| format!("* {}: {}", m.name, m.message.as_deref().unwrap_or_default()))
        .collect();
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            out.push_str(&n);
            out.push('\n');
        }
    }
    out
}

/// What `machines run/stop/start/destroy` print: the request was recorded; the host acts on
/// it next (`machines list` shows its progress).
pub fn machine_sentence(verb: MachineVerb, m: &Machine) -> String {
    match verb {
        MachineVerb::Run => format!(
            "Machine {} ({}) created on host {}; state: {}\n",
            m.id,
            m.name,
            m.host,
            machine_state(m)
        ),
        MachineVerb::Stop => format!(
            "Stopping machine {} ({}) on host {}; state: {}\n",
            m.id,
            m.name,
            m.host,
            machine_state(m)
        ),
        MachineVerb::Start => format!(
            "Starting machine {} ({}) on host {}; state: {}\n",
            m.id,
            m.name,
            m.host,
            machine_state(m)
        ),
        MachineVerb::Destroy => format!(
            "Destroyed machine {} ({}); host {} can no longer decrypt the app's secrets\n",
            m.id, m.name, m.host
        ),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineVerb {
    Run,
    Stop,
    Start,
    Destroy,
}

/// The sentence after a write: `Set A, B: secrets version 4, deployed`, or `… staged (run
/// coffer secrets deploy)`.
/// `releases list`: VERSION | STATUS | DESCRIPTION | WHO | DATE | REASON.
pub fn releases_table(
    releases: &[coffer_core::wire::Release],
    now: Timestamp,
    tty: bool,
) -> String {
    let mut t = table(
        &["VERSION", "STATUS", "DESCRIPTION", "WHO", "DATE", "REASON"],
        tty,
    );
    for r in releases {
        let reason = match (&r.reason, r.progress.is_empty()) {
            (Some(reason), _) => reason.clone(),
            (None, false) => r.progress.clone(),
            (None, true) => String::new(),
        };
        t.add_row(vec![
            format!("v{}", r.version),
            r.status.clone(),
            r.description.clone(),
            r.actor.clone(),
            ago(&r.created_at, now),
            reason,
        ]);
    }
    finish(&t)
}

pub fn write_sentence(description: &str, result: &WriteResult) -> String {
    let state = if result.deployed {
        "deployed"
    } else {
        "staged (run coffer secrets deploy)"
    };
    format!(
        "{description}: secrets version {}, {state}\n",
        result.version
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_core::wire::{NameChange, SecretStatus, VersionRelease};
    use coffer_core::Action;

    fn now() -> Timestamp {
        "2026-11-05T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn relative_dates() {
        let n = now();
        let cases = [
            ("2026-11-05T12:00:00Z", "0s ago"),
            ("2026-11-05T11:59:43Z", "17s ago"),
            ("2026-11-05T11:59:00Z", "1m ago"),
            ("2026-11-05T11:55:00Z", "5m ago"),
            ("2026-11-05T11:00:01Z", "59m ago"),
            ("2026-11-05T09:00:00Z", "3h ago"),
            ("2026-11-04T12:00:01Z", "23h ago"),
            ("2026-11-03T12:00:00Z", "2d ago"),
            ("2025-11-05T12:00:00Z", "365d ago"),
            ("2026-11-05T13:00:00+01:00", "0s ago"),
            ("2026-11-06T12:00:00Z", "in 1d"),
            ("2026-11-05T12:05:00Z", "in 5m"),
            ("yesterday", "yesterday"),
        ];
        for (t, want) in cases {
            assert_eq!(relative(t, n), want, "{t}");
        }
        // Clock skew never shows a creation date in the future.
        assert_eq!(ago("2026-11-05T12:00:02Z", n), "0s ago");
        assert_eq!(ago("2026-11-05T11:00:00Z", n), "1h ago");
    }

    fn secret(name: &str, digest: &str, updated: &str, status: SecretStatus) -> SecretInfo {
        SecretInfo {
            name: name.into(),
            digest: digest.into(),
            created_at: "2026-11-01T00:00:00Z".into(),
            updated_at: updated.into(),
            status,
        }
    }

    #[test]
    fn secrets_list_table() {
        let rows = vec![
            secret(
                "API_KEY",
                "0f4c2d8e9a1b3c5d7e9f0a2b4c6d8e0f",
                "2026-11-05T11:59:43Z",
                SecretStatus::Staged,
            ),
            secret(
                "DATABASE_URL",
                "9a8b7c6d5e4f30211203f4e5d6c7b8a9",
                "2026-11-03T10:00:00Z",
                SecretStatus::Deployed,
            ),
        ];
        insta::assert_snapshot!(secrets_table(&rows, now(), false));
    }

    #[test]
    fn secrets_list_json_is_the_info_array() {
        let rows = vec![secret(
            "A",
            "00",
            "2026-11-05T11:59:43Z",
            SecretStatus::Deployed,
        )];
        let v: serde_json::Value = serde_json::from_str(&json(&rows).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{
                "name": "A",
                "digest": "00",
                "created_at": "2026-11-01T00:00:00Z",
                "updated_at": "2026-11-05T11:59:43Z",
                "status": "Deployed",
            }])
        );
    }

    #[test]
    fn empty_table_is_the_header() {
        insta::assert_snapshot!(secrets_table(&[], now(), false), @"NAME   DIGEST   DATE   STATUS");
    }

    #[test]
    fn apps_list_table() {
        let apps = vec![
            App {
                name: "billing".into(),
                created_at: "2026-10-01T08:00:00Z".into(),
                secrets_version: 0,
                deployed_version: 0,
                crash_window_secs: 30,
                release_version: 0,
            },
            App {
                name: "web".into(),
                created_at: "2026-11-05T11:00:00Z".into(),
                secrets_version: 4,
                deployed_version: 3,
                crash_window_secs: 30,
                release_version: 3,
            },
        ];
        insta::assert_snapshot!(apps_table(&apps, now(), false));
    }

    #[test]
    fn history_table_rows() {
        let set = |name: &str, digest: &str| NameChange {
            name: name.into(),
            kind: ChangeKind::Set,
            digest: Some(digest.into()),
        };
        let unset = |name: &str| NameChange {
            name: name.into(),
            kind: ChangeKind::Unset,
            digest: None,
        };
        let versions = vec![
            VersionInfo {
                version: 4,
                changes: vec![set("API_KEY", "0f4c2d8e9a1b3c5d7e9f0a2b4c6d8e0f")],
                actor: "token:ci-deploy".into(),
                created_at: "2026-11-05T11:59:43Z".into(),
                outcome: VersionOutcome::Staged,
                release: None,
            },
            VersionInfo {
                version: 3,
                changes: vec![
                    set("DATABASE_URL", "9a8b7c6d5e4f30211203f4e5d6c7b8a9"),
                    set("API_KEY", "1111222233334444aaaabbbbccccdddd"),
                    unset("OLD_TOKEN"),
                ],
                actor: "admin".into(),
                created_at: "2026-11-05T09:00:00Z".into(),
                outcome: VersionOutcome::Deployed,
                release: Some(VersionRelease {
                    version: 3,
                    status: "complete".into(),
                }),
            },
            VersionInfo {
                version: 2,
                changes: vec![unset("LEGACY")],
                actor: "admin".into(),
                created_at: "2026-11-01T12:00:00Z".into(),
                outcome: VersionOutcome::Superseded,
                release: Some(VersionRelease {
                    version: 2,
                    status: "rolled_back".into(),
                }),
            },
        ];
        insta::assert_snapshot!(history_table(&versions, now(), false));
    }

    #[test]
    fn tokens_list_table() {
        let tok = |id: &str, app: Option<&str>, scope, desc: &str, exp: &str, revoked| TokenInfo {
            id: id.into(),
            app: app.map(Into::into),
            scope,
            description: desc.into(),
            created_at: "2026-11-05T10:00:00Z".into(),
            expires_at: exp.into(),
            revoked,
        };
        let tokens = vec![
            tok(
                "tok_01",
                None,
                Action::Admin,
                "cofferd dev",
                "2026-11-06T10:00:00Z",
                false,
            ),
            tok(
                "tok_02",
                Some("web"),
                Action::Deploy,
                "ci",
                "2026-11-05T11:00:00Z",
                false,
            ),
            tok(
                "tok_03",
                Some("web"),
                Action::Read,
                "",
                "2026-11-12T10:00:00Z",
                true,
            ),
        ];
        insta::assert_snapshot!(tokens_table(&tokens, now(), false));
    }

    fn machine(id: &str, name: &str, state: MachineState, created: &str) -> Machine {
        use coffer_core::wire::machines::{DesiredState, RestartPolicy};
        Machine {
            id: id.into(),
            app: "web".into(),
            name: name.into(),
            state,
            desired: DesiredState::Running,
            secrets_version: 4,
            release_version: 3,
            host: "dev".into(),
            command: vec!["./server".into()],
            restart: RestartPolicy::No,
            check: None,
            exit_status: None,
            message: None,
            created_at: created.into(),
            updated_at: created.into(),
        }
    }

    fn machines() -> Vec<Machine> {
        use coffer_core::wire::machines::{DesiredState, HealthCheck};
        let mut failed = machine(
            "9c01d3e4",
            "worker",
            MachineState::Failed,
            "2026-11-05T11:59:43Z",
        );
        failed.message = Some("vault unavailable: connection refused (retrying in 4s)".into());
        let mut exited = machine(
            "77aa0b12",
            "migrate",
            MachineState::Exited,
            "2026-11-05T09:00:00Z",
        );
        exited.exit_status = Some(3);
        exited.message =
            Some("exited with status 3; restarting in 4s (restart policy on-failure)".into());
        let mut done = machine(
            "5d6e7f80",
            "seed",
            MachineState::Exited,
            "2026-11-05T10:00:00Z",
        );
        done.exit_status = Some(0);
        done.message = Some("exited with status 0".into());
        let mut stopping = machine(
            "0b5e6f70",
            "cron",
            MachineState::Started,
            "2026-11-01T12:00:00Z",
        );
        stopping.desired = DesiredState::Stopped;
        let mut unhealthy = machine(
            "e1f2a3b4",
            "api",
            MachineState::Unhealthy,
            "2026-11-05T11:00:00Z",
        );
        unhealthy.check = Some(HealthCheck::Http {
            port: 8080,
            path: "/healthz".into(),
        });
        unhealthy.message = Some("http check GET :8080/healthz: status 500".into());
        vec![
            machine(
                "3f2a9c01",
                "web-1",
                MachineState::Started,
                "2026-11-05T11:55:00Z",
            ),
            failed,
            exited,
            stopping,
            done,
            unhealthy,
            machine(
                "51c4e2aa",
                "web-2",
                MachineState::Stopped,
                "2026-11-03T12:00:00Z",
            ),
        ]
    }

    #[test]
    fn machines_json_shows_the_health_check() {
        let v: serde_json::Value = serde_json::from_str(&json(&machines()[5..6]).unwrap()).unwrap();
        assert_eq!(v[0]["name"], "api");
        assert_eq!(v[0]["state"], "unhealthy");
        assert_eq!(
            v[0]["check"],
            serde_json::json!({"type": "http", "port": 8080, "path": "/healthz"})
        );
        assert_eq!(v[0]["message"], "http check GET :8080/healthz: status 500");
    }

    #[test]
    fn machines_list_table() {
        insta::assert_snapshot!(machines_table(&machines(), now(), false));
    }

    #[test]
    fn machines_without_notes_have_no_footer() {
        let rows = vec![machine(
            "3f2a9c01",
            "web-1",
            MachineState::Pending,
            "2026-11-05T12:00:00Z",
        )];
        insta::assert_snapshot!(machines_table(&rows, now(), false), @r"
        ID         NAME    STATE     RELEASE   HOST   AGE
        3f2a9c01   web-1   pending   3         dev    0s ago
        ");
    }

    #[test]
    fn machine_sentences() {
        let m = machine(
            "3f2a9c01",
            "web-1",
            MachineState::Pending,
            "2026-11-05T12:00:00Z",
        );
        assert_eq!(
            machine_sentence(MachineVerb::Run, &m),
            "Machine 3f2a9c01 (web-1) created on host dev; state: pending\n"
        );
        let mut s = machine(
            "3f2a9c01",
            "web-1",
            MachineState::Started,
            "2026-11-05T12:00:00Z",
        );
        s.desired = coffer_core::wire::machines::DesiredState::Stopped;
        assert_eq!(
            machine_sentence(MachineVerb::Stop, &s),
            "Stopping machine 3f2a9c01 (web-1) on host dev; state: started → stopped\n"
        );
        assert_eq!(
            machine_sentence(MachineVerb::Destroy, &m),
            "Destroyed machine 3f2a9c01 (web-1); host dev can no longer decrypt the app's secrets\n"
        );
    }

    #[test]
    fn machines_json_is_the_wire_type() {
        let v: serde_json::Value = serde_json::from_str(&json(&machines()[2..3]).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{
                "id": "77aa0b12",
                "app": "web",
                "name": "migrate",
                "state": "exited",
                "desired": "running",
                "secrets_version": 4,
                "release_version": 3,
                "host": "dev",
                "command": ["./server"],
                "restart": "no",
                "exit_status": 3,
                "message": "exited with status 3; restarting in 4s (restart policy on-failure)",
                "created_at": "2026-11-05T09:00:00Z",
                "updated_at": "2026-11-05T09:00:00Z",
            }])
        );
    }

    #[test]
    fn styling_only_on_a_terminal() {
        let rows = vec![secret(
            "A",
            "00",
            "2026-11-05T11:59:43Z",
            SecretStatus::Deployed,
        )];
        assert!(!secrets_table(&rows, now(), false).contains('\x1b'));
        assert!(secrets_table(&rows, now(), true).contains('\x1b'));
    }

    #[test]
    fn write_sentences() {
        let r = |deployed| WriteResult {
            version: 4,
            deployed,
            description: "x".into(),
            release: None,
        };
        assert_eq!(
            write_sentence("Set DATABASE_URL, API_KEY", &r(true)),
            "Set DATABASE_URL, API_KEY: secrets version 4, deployed\n"
        );
        assert_eq!(
            write_sentence("Unset OLD", &r(false)),
            "Unset OLD: secrets version 4, staged (run coffer secrets deploy)\n"
        );
    }
}
