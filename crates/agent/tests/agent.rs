//! The agent against a fake control plane and vault that speak the real protocol with the
//! real crypto (machine tokens, host signatures, bundles sealed to the one-time key): boot
//! with secrets, the exact environment, stop/start/destroy, failures and retries, restart
//! policy, agent restart, re-registration and the logs server.

// The fake's handlers return axum responses as errors; their size does not matter here.
#![allow(clippy::result_large_err)]

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use coffer_agent::{Agent, AgentConfig};
use coffer_core::secret::SecretToken;
use coffer_core::wire::agent::{
    Assignment, Assignments, BootGrant, DecryptRequest, DecryptResponse, PresentedCiphertext,
    RegisterHost, RegisteredHost, StateReport,
};
use coffer_core::wire::machines::{DesiredState, MachineState, RestartPolicy};
use coffer_core::wire::ErrorBody;
use coffer_core::SecretValue;
use coffer_crypto::machine_token::{
    b64, decrypt_request_message, mint_logs_grant, mint_machine_token, unb64,
    verify_host_signature, verify_machine_token, ControlPlaneKey, LogsClaims, MachineClaims,
};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{oneshot, Notify};

const JOIN: &str = "cfr_join_token_sentinel";
const APP_ID: &str = "a0a0a0a0a0a0a0a0";
const SECRET_SENTINEL: &str = "s3cret-sentinel-value";

struct Fake {
    cp_key: ControlPlaneKey,
    /// host id → (host token, host public key)
    hosts: HashMap<String, (String, String)>,
    registrations: u32,
    machines: Vec<Assignment>,
    generation: i64,
    reports: Vec<(String, StateReport)>,
    boots: u32,
    /// The machine of every boot grant, in order.
    booted: Vec<String>,
    /// How long a boot grant takes to answer.
    boot_delay: Duration,
    vault_up: bool,
    secrets: Vec<(String, String)>,
    tokens_minted: Vec<String>,
}

#[derive(Clone)]
struct S(Arc<(Mutex<Fake>, Notify)>);

impl S {
    fn new() -> S {
        S(Arc::new((
            Mutex::new(Fake {
                cp_key: ControlPlaneKey::generate(),
                hosts: HashMap::new(),
                registrations: 0,
                machines: vec![],
                generation: 0,
                reports: vec![],
                boots: 0,
                booted: vec![],
                boot_delay: Duration::ZERO,
                vault_up: true,
                secrets: vec![],
                tokens_minted: vec![],
            }),
            Notify::new(),
        )))
    }

    fn with<T>(&self, f: impl FnOnce(&mut Fake) -> T) -> T {
        f(&mut self.0 .0.lock().unwrap())
    }

    /// Changes a machine (or adds it) and bumps the generation, as the control plane does.
    fn put(&self, mut a: Assignment) {
        self.with(|f| {
            f.generation += 1;
            a.generation = f.generation;
            f.machines.retain(|m| m.machine_id != a.machine_id);
            f.machines.push(a);
        });
        self.0 .1.notify_waiters();
    }

    fn set_desired(&self, id: &str, desired: DesiredState) {
        let mut a = self.with(|f| {
            f.machines
                .iter()
                .find(|m| m.machine_id == id)
                .unwrap()
                .clone()
        });
        a.desired = desired;
        self.put(a);
    }

    fn states(&self, id: &str) -> Vec<MachineState> {
        self.with(|f| {
            f.reports
                .iter()
                .filter(|(m, _)| m == id)
                .map(|(_, r)| r.state)
                .collect()
        })
    }

    fn last_report(&self, id: &str, state: MachineState) -> Option<StateReport> {
        self.with(|f| {
            f.reports
                .iter()
                .rev()
                .find(|(m, r)| m == id && r.state == state)
                .map(|(_, r)| r.clone())
        })
    }

    fn count(&self, id: &str, state: MachineState) -> usize {
        self.states(id).iter().filter(|s| **s == state).count()
    }

    fn boots_of(&self, id: &str) -> usize {
        self.with(|f| f.booted.iter().filter(|m| *m == id).count())
    }
}

fn err(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(ErrorBody {
            code: code.into(),
            message: message.into(),
            hint: None,
        }),
    )
        .into_response()
}

fn authed(s: &S, host: &str, headers: &HeaderMap) -> Result<(), Response> {
    let presented = coffer_http::bearer(headers).unwrap_or_default().to_string();
    s.with(|f| match f.hosts.get(host) {
        Some((t, _)) if *t == presented => Ok(()),
        _ => Err(err(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown host",
        )),
    })
}

async fn register(
    State(s): State<S>,
    headers: HeaderMap,
    Json(body): Json<RegisterHost>,
) -> Response {
    if coffer_http::bearer(&headers) != Some(JOIN) {
        return err(StatusCode::UNAUTHORIZED, "unauthorized", "bad join token");
    }
    s.with(|f| {
        f.registrations += 1;
        let host_id = format!("{:016x}", 0xb000 + f.registrations as u64);
        let token = format!("host-token-sentinel-{}", f.registrations);
        f.hosts
            .insert(host_id.clone(), (token.clone(), body.public_key));
        (
            StatusCode::CREATED,
            Json(RegisteredHost {
                host_id,
                host_token: token,
                control_plane_public_key: f.cp_key.public_key_hex(),
            }),
        )
            .into_response()
    })
}

async fn heartbeat(
    State(s): State<S>,
    UrlPath(host): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    match authed(&s, &host, &headers) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct After {
    after: Option<i64>,
}

async fn assignments(
    State(s): State<S>,
    UrlPath(host): UrlPath<String>,
    Query(q): Query<After>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authed(&s, &host, &headers) {
        return r;
    }
    let after = q.after.unwrap_or(-1);
    let deadline = Instant::now() + Duration::from_millis(1500);
    loop {
        let notified = s.0 .1.notified();
        let answer = s.with(|f| {
            (f.generation > after || Instant::now() >= deadline).then(|| Assignments {
                generation: f.generation,
                machines: f.machines.clone(),
            })
        });
        if let Some(a) = answer {
            return Json(a).into_response();
        }
        let _ = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), notified)
            .await;
    }
}

async fn state(
    State(s): State<S>,
    UrlPath((host, machine)): UrlPath<(String, String)>,
    headers: HeaderMap,
    Json(report): Json<StateReport>,
) -> Response {
    if let Err(r) = authed(&s, &host, &headers) {
        return r;
    }
    s.with(|f| {
        if report.state == MachineState::Destroyed {
            f.machines.retain(|m| m.machine_id != machine);
        }
        f.reports.push((machine, report));
    });
    StatusCode::NO_CONTENT.into_response()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn boot(
    State(s): State<S>,
    UrlPath((host, machine)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authed(&s, &host, &headers) {
        return r;
    }
    tokio::time::sleep(s.with(|f| f.boot_delay)).await;
    s.with(|f| {
        let Some(m) = f.machines.iter().find(|m| m.machine_id == machine).cloned() else {
            return err(StatusCode::NOT_FOUND, "not_found", "machine not found");
        };
        if m.desired != DesiredState::Running {
            return err(
                StatusCode::CONFLICT,
                "conflict",
                "machine is not desired running",
            );
        }
        f.boots += 1;
        f.booted.push(machine.clone());
        let host_key = f.hosts[&host].1.clone();
        let token = mint_machine_token(
            &f.cp_key,
            &MachineClaims {
                app_id: APP_ID.into(),
                machine_id: machine.clone(),
                host_id: host.clone(),
                host_key,
                expires_at: unix_now() + 300,
            },
        )
        .unwrap();
        f.tokens_minted.push(token.clone());
        Json(BootGrant {
            machine_token: token,
            app_id: APP_ID.into(),
            app_name: "web".into(),
            secrets_version: 4,
            release_version: 2,
            // The fake "encrypts" with base64; the real bundle crypto is below.
            ciphertexts: f
                .secrets
                .iter()
                .map(|(n, v)| PresentedCiphertext {
                    name: n.clone(),
                    version: 4,
                    ciphertext: b64(v.as_bytes()),
                })
                .collect(),
            expires_at: "2099-01-01T00:00:00Z".into(),
        })
        .into_response()
    })
}

async fn decrypt(State(s): State<S>, Json(req): Json<DecryptRequest>) -> Response {
    s.with(|f| {
        if !f.vault_up {
            return err(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the vault is sealed",
            );
        }
        let Ok(claims) = verify_machine_token(
            &f.cp_key.public_key(),
            &req.machine_token,
            SystemTime::now(),
        ) else {
            return err(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "invalid machine token",
            );
        };
        let presented: Vec<(&str, i64, &str)> = req
            .ciphertexts
            .iter()
            .map(|c| (c.name.as_str(), c.version, c.ciphertext.as_str()))
            .collect();
        let msg = decrypt_request_message(
            &req.machine_token,
            &req.machine_id,
            &req.one_time_public_key,
            req.issued_at,
            &presented,
        );
        if claims.machine_id != req.machine_id
            || verify_host_signature(&claims.host_key, &msg, &req.host_signature).is_err()
        {
            return err(StatusCode::FORBIDDEN, "forbidden", "bad host signature");
        }
        let values: Vec<(String, SecretValue)> = req
            .ciphertexts
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    SecretValue::new(unb64(&c.ciphertext).unwrap()),
                )
            })
            .collect();
        let entries: Vec<(&str, &SecretValue)> =
            values.iter().map(|(n, v)| (n.as_str(), v)).collect();
        let pk =
            coffer_crypto::PublicKey::from_bytes(&hex::decode(&req.one_time_public_key).unwrap())
                .unwrap();
        let bundle = coffer_crypto::bundle::seal_bundle(
            &pk,
            &[claims.app_id.as_bytes(), claims.machine_id.as_bytes(), b"4"],
            &entries,
        )
        .unwrap();
        Json(DecryptResponse {
            bundle: b64(&bundle),
        })
        .into_response()
    })
}

async fn start_fake(s: S) -> String {
    let app = Router::new()
        .route("/v1/hosts", post(register))
        .route("/v1/hosts/{host}/heartbeat", post(heartbeat))
        .route("/v1/hosts/{host}/assignments", get(assignments))
        .route("/v1/hosts/{host}/machines/{machine}/state", post(state))
        .route("/v1/hosts/{host}/machines/{machine}/boot", post(boot))
        .route("/v1/decrypt", post(decrypt))
        .with_state(s);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

struct Running {
    host_id: String,
    address: String,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn shutdown(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(20), self.done)
            .await
            .expect("the agent stops")
            .unwrap()
            .unwrap();
    }
}

/// An agent whose boots are reported `starting` only after 30 s: a test's boots are quicker,
/// however loaded the machine, so their reports are the same on every run.
async fn start_agent(url: &str, vault_url: &str, state_dir: &Path) -> Running {
    start_agent_reporting_starting_after(url, vault_url, state_dir, Duration::from_secs(30)).await
}

async fn start_agent_reporting_starting_after(
    url: &str,
    vault_url: &str,
    state_dir: &Path,
    starting_after: Duration,
) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent = Agent::start(
        AgentConfig {
            api_url: url.into(),
            vault_url: vault_url.into(),
            state_dir: state_dir.to_path_buf(),
            name: "test-host".into(),
            join_token: Some(SecretToken::new(JOIN.into())),
            stop_timeout: Duration::from_secs(2),
            starting_after,
            workload_uids: None,
        },
        listener,
    )
    .await
    .unwrap();
    let host_id = agent.host_id().to_string();
    let address = agent.address().to_string();
    let (tx, rx) = oneshot::channel::<()>();
    let done = tokio::spawn(agent.run(async move {
        let _ = rx.await;
    }));
    Running {
        host_id,
        address,
        stop: tx,
        done,
    }
}

fn machine(id: &str, script: &str, restart: RestartPolicy) -> Assignment {
    Assignment {
        machine_id: id.into(),
        app_id: APP_ID.into(),
        app_name: "web".into(),
        name: format!("web-{id}"),
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: BTreeMap::from([
            ("PORT".to_string(), "8080".to_string()),
            ("API_KEY".to_string(), "from-env".to_string()),
        ]),
        restart,
        check: None,
        desired: DesiredState::Running,
        secrets_version: 4,
        release_version: 2,
        generation: 0,
    }
}

async fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn pid_of(dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join("process.json")).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["pid"]
        .as_u64()
        .map(|p| p as u32)
}

fn alive(pid: u32) -> bool {
    coffer_agent::supervisor::proc_start_time(pid).is_some()
}

/// Every file under `dir` except the workload's own home.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "home") {
                continue;
            }
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn scan_for(dir: &Path, needles: &[String]) {
    for f in files(dir) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        for n in needles {
            assert!(
                !text.contains(n.as_str()),
                "{} contains a secret or token",
                f.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn boots_with_secrets_and_follows_the_lifecycle() {
    let s = S::new();
    s.with(|f| {
        f.secrets = vec![
            ("DB_URL".into(), format!("postgres://{SECRET_SENTINEL}")),
            ("API_KEY".into(), "from-secret".into()),
        ]
    });
    let url = start_fake(s.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    let state_dir = tmp.path().join("agent");
    std::env::set_var("AGENT_PROCESS_ONLY", "leak-sentinel");
    let agent = start_agent(&url, &url, &state_dir).await;
    assert_eq!(s.with(|f| f.registrations), 1);

    let id = "0123abcd";
    s.put(machine(
        id,
        "env > \"$HOME/env.txt\"; echo booted-output; exec sleep 1000",
        RestartPolicy::No,
    ));
    eventually("started", Duration::from_secs(10), || {
        s.count(id, MachineState::Started) == 1
    })
    .await;
    assert_eq!(
        s.states(id),
        vec![MachineState::Started],
        "a quick boot is not reported starting"
    );
    let mdir = state_dir.join("machines").join(id);
    let home = mdir.join("home");
    eventually("env.txt", Duration::from_secs(5), || {
        std::fs::read_to_string(home.join("env.txt")).is_ok_and(|t| t.contains("PATH="))
    })
    .await;
    let env = std::fs::read_to_string(home.join("env.txt")).unwrap();
    // The shell adds PWD (and maybe SHLVL, _) itself; everything else is ours.
    let mut vars: Vec<&str> = env
        .lines()
        .filter(|l| {
            !["PWD=", "OLDPWD=", "SHLVL=", "_="]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect();
    vars.sort();
    let want = vec![
        "API_KEY=from-secret".to_string(),
        "COFFER_APP_NAME=web".to_string(),
        format!("COFFER_MACHINE_ID={id}"),
        "COFFER_RELEASE_VERSION=2".to_string(),
        format!("DB_URL=postgres://{SECRET_SENTINEL}"),
        format!("HOME={}", home.display()),
        "PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
        "PORT=8080".to_string(),
    ];
    assert_eq!(vars, want, "{env}");
    assert!(!env.contains("leak-sentinel"));
    let pid = pid_of(&mdir).expect("process.json");
    assert!(alive(pid));

    // The logs server: a grant for this machine on this host works, others do not.
    eventually("output", Duration::from_secs(5), || {
        std::fs::read_to_string(mdir.join("output.log")).is_ok_and(|t| t.contains("booted-output"))
    })
    .await;
    let grant = |machine: &str, host: &str| {
        s.with(|f| {
            mint_logs_grant(
                &f.cp_key,
                &LogsClaims {
                    machine_id: machine.into(),
                    host_id: host.into(),
                    expires_at: unix_now() + 60,
                },
            )
            .unwrap()
        })
    };
    let http = reqwest::Client::new();
    let logs_url = format!("{}/v1/machines/{id}/logs?follow=false", agent.address);
    let r = http
        .get(&logs_url)
        .bearer_auth(grant(id, &agent.host_id))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("booted-output"), "{text}");
    assert!(text.contains("[coffer] "), "{text}");
    assert!(text.contains("started (pid"), "{text}");
    let r = http.get(&logs_url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(&logs_url)
        .bearer_auth(grant("ffff0000", &agent.host_id))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .get(&logs_url)
        .bearer_auth(grant(id, "ffff0000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Following: new bytes arrive, the stream ends when the machine is destroyed (below).
    let mut follow = http
        .get(format!(
            "{}/v1/machines/{id}/logs?follow=true",
            agent.address
        ))
        .bearer_auth(grant(id, &agent.host_id))
        .send()
        .await
        .unwrap();
    assert_eq!(follow.status(), 200);
    let first = follow.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());

    // No secret value nor token in the agent's files.
    let mut needles: Vec<String> = s.with(|f| f.tokens_minted.clone());
    needles.push(SECRET_SENTINEL.into());
    scan_for(&state_dir, &needles);

    // Stop.
    s.set_desired(id, DesiredState::Stopped);
    eventually("stopped", Duration::from_secs(10), || {
        s.count(id, MachineState::Stopped) == 1
    })
    .await;
    assert!(!alive(pid));
    assert!(pid_of(&mdir).is_none());

    // Start: a fresh boot (new grant, new decrypt).
    s.set_desired(id, DesiredState::Running);
    eventually("started again", Duration::from_secs(10), || {
        s.count(id, MachineState::Started) == 2
    })
    .await;
    assert_eq!(s.with(|f| f.boots), 2);
    let pid2 = pid_of(&mdir).unwrap();
    assert!(alive(pid2));
    let generation = s.with(|f| f.generation);
    assert_eq!(
        s.last_report(id, MachineState::Started).unwrap().generation,
        generation
    );

    // Destroy: stopped, directory gone, reported; the log follower ends.
    s.set_desired(id, DesiredState::Destroyed);
    eventually("destroyed", Duration::from_secs(10), || {
        s.count(id, MachineState::Destroyed) == 1
    })
    .await;
    assert!(!alive(pid2));
    assert!(!mdir.exists());
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(_c) = follow.chunk().await.unwrap() {}
    })
    .await;
    assert!(rest.is_ok(), "the follower did not end");
    assert!(s.with(|f| f.machines.is_empty()));

    needles = s.with(|f| f.tokens_minted.clone());
    needles.push(SECRET_SENTINEL.into());
    scan_for(&state_dir, &needles);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_boot_is_reported_starting_while_it_lasts() {
    let s = S::new();
    s.with(|f| {
        f.secrets = vec![("A".into(), "1".into())];
        f.boot_delay = Duration::from_millis(600);
    });
    let url = start_fake(s.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    let agent =
        start_agent_reporting_starting_after(&url, &url, tmp.path(), coffer_agent::STARTING_AFTER)
            .await;
    let id = "00ab";
    s.put(machine(id, "exec sleep 1000", RestartPolicy::No));
    eventually("starting", Duration::from_secs(10), || {
        s.count(id, MachineState::Starting) == 1
    })
    .await;
    assert_eq!(s.count(id, MachineState::Started), 0, "still booting");
    eventually("started", Duration::from_secs(10), || {
        s.count(id, MachineState::Started) == 1
    })
    .await;
    assert_eq!(
        s.states(id),
        vec![MachineState::Starting, MachineState::Started]
    );
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sealed_vault_fails_the_boot_clearly_and_it_retries() {
    let s = S::new();
    s.with(|f| {
        f.vault_up = false;
        f.secrets = vec![("A".into(), "1".into())];
    });
    let url = start_fake(s.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    let agent = start_agent(&url, &url, tmp.path()).await;
    let id = "00aa";
    s.put(machine(id, "echo ran; exec sleep 1000", RestartPolicy::No));
    eventually("failed", Duration::from_secs(10), || {
        s.count(id, MachineState::Failed) >= 1
    })
    .await;
    let failed = s.last_report(id, MachineState::Failed).unwrap();
    assert_eq!(
        failed.message.as_deref(),
        Some("vault unavailable: the vault is sealed (retrying in 1s)")
    );
    let log =
        std::fs::read_to_string(tmp.path().join("machines").join(id).join("output.log")).unwrap();
    assert!(log.contains("[coffer] "), "{log}");
    assert!(
        log.contains("boot failed: vault unavailable: the vault is sealed"),
        "{log}"
    );
    assert!(
        !log.contains("ran"),
        "the workload ran without its secrets: {log}"
    );
    assert_eq!(s.count(id, MachineState::Started), 0);

    s.with(|f| f.vault_up = true);
    eventually(
        "started once the vault is back",
        Duration::from_secs(15),
        || s.count(id, MachineState::Started) == 1,
    )
    .await;
    agent.shutdown().await;
    // Shutdown stops the workload and reports nothing.
    assert_eq!(s.count(id, MachineState::Stopped), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_vault_says_connection_refused() {
    let s = S::new();
    let url = start_fake(s.clone()).await;
    // A port bound but not listening: connections to it are refused, and no other test can
    // take it meanwhile (a listener bound and dropped would free it for anyone).
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed = format!("http://{}", reserved.local_addr().unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let agent = start_agent(&url, &closed, tmp.path()).await;
    let id = "00bb";
    s.put(machine(id, "exec sleep 1000", RestartPolicy::No));
    eventually("failed", Duration::from_secs(10), || {
        s.count(id, MachineState::Failed) >= 1
    })
    .await;
    assert_eq!(
        s.last_report(id, MachineState::Failed)
            .unwrap()
            .message
            .as_deref(),
        Some("vault unavailable: connection refused (retrying in 1s)")
    );
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_policies_and_exit_statuses() {
    let s = S::new();
    let url = start_fake(s.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    let agent = start_agent(&url, &url, tmp.path()).await;

    // on-failure: exit 3 is restarted, each time with a fresh boot.
    let flaky = "00cc";
    s.put(machine(flaky, "echo try; exit 3", RestartPolicy::OnFailure));
    eventually("two exits", Duration::from_secs(15), || {
        s.count(flaky, MachineState::Exited) >= 2
    })
    .await;
    let exited = s.last_report(flaky, MachineState::Exited).unwrap();
    assert_eq!(exited.exit_status, Some(3));
    assert!(
        exited
            .message
            .as_deref()
            .unwrap()
            .starts_with("exited with status 3; restarting in "),
        "{exited:?}"
    );
    assert!(s.with(|f| f.boots) >= 2);

    // no: a clean exit stays exited.
    let once = "00dd";
    s.put(machine(once, "exit 0", RestartPolicy::No));
    eventually("exited", Duration::from_secs(10), || {
        s.count(once, MachineState::Exited) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(s.boots_of(once), 1);
    assert_eq!(
        s.last_report(once, MachineState::Exited)
            .unwrap()
            .message
            .as_deref(),
        Some("exited with status 0")
    );

    // A signal is 128 + n.
    let killed = "00ee";
    s.put(machine(killed, "kill -9 $$", RestartPolicy::No));
    eventually("killed", Duration::from_secs(10), || {
        s.count(killed, MachineState::Exited) == 1
    })
    .await;
    let r = s.last_report(killed, MachineState::Exited).unwrap();
    assert_eq!(r.exit_status, Some(137));
    assert_eq!(
        r.message.as_deref(),
        Some("killed by signal 9 (SIGKILL): status 137")
    );

    // A command that does not exist fails the boot.
    let missing = "00ff";
    let mut a = machine(missing, "", RestartPolicy::No);
    a.command = vec!["no-such-program-coffer".into()];
    s.put(a);
    eventually("failed", Duration::from_secs(10), || {
        s.count(missing, MachineState::Failed) >= 1
    })
    .await;
    let msg = s
        .last_report(missing, MachineState::Failed)
        .unwrap()
        .message
        .unwrap();
    assert!(
        msg.starts_with("cannot start \"no-such-program-coffer\": "),
        "{msg}"
    );
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_agent_keeps_its_identity_and_reboots_its_machines() {
    let s = S::new();
    let url = start_fake(s.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    let agent = start_agent(&url, &url, tmp.path()).await;
    let host = agent.host_id.clone();
    let id = "0a0a";
    s.put(machine(id, "exec sleep 1000", RestartPolicy::No));
    let once = "0b0b";
    s.put(machine(once, "exit 0", RestartPolicy::No));
    eventually("started", Duration::from_secs(10), || {
        s.count(id, MachineState::Started) == 1 && s.count(once, MachineState::Exited) == 1
    })
    .await;
    let mdir = tmp.path().join("machines").join(id);
    let pid = pid_of(&mdir).unwrap();
    agent.shutdown().await;
    assert!(!alive(pid), "shutdown leaves no workload behind");

    // The same control plane, reached at another URL (`cofferd dev --listen :0` picks a new
    // port each time): the saved registration still holds.
    let moved = start_fake(s.clone()).await;
    let agent = start_agent(&moved, &moved, tmp.path()).await;
    assert_eq!(agent.host_id, host);
    assert_eq!(s.with(|f| f.registrations), 1);
    let saved = std::fs::read_to_string(tmp.path().join("host.json")).unwrap();
    assert!(saved.contains(&moved), "{saved}");
    eventually("rebooted", Duration::from_secs(10), || {
        s.count(id, MachineState::Started) == 2
    })
    .await;
    // The machine that had exited for good stays exited.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.boots_of(once), 1);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forgotten_host_registers_again_and_retires_its_machines() {
    let s = S::new();
    let url = start_fake(s.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    let agent = start_agent(&url, &url, tmp.path()).await;
    let id = "0c0c";
    s.put(machine(id, "exec sleep 1000", RestartPolicy::No));
    eventually("started", Duration::from_secs(10), || {
        s.count(id, MachineState::Started) == 1
    })
    .await;
    let mdir = tmp.path().join("machines").join(id);
    let pid = pid_of(&mdir).unwrap();

    // The control plane forgets the host and its machines.
    s.with(|f| {
        f.hosts.clear();
        f.machines.clear();
    });
    s.0 .1.notify_waiters();
    eventually("registered again", Duration::from_secs(15), || {
        s.with(|f| f.registrations) == 2
    })
    .await;
    eventually("old machine retired", Duration::from_secs(10), || {
        !alive(pid) && !mdir.exists()
    })
    .await;
    eventually(
        "host.json names the new host",
        Duration::from_secs(5),
        || {
            std::fs::read_to_string(tmp.path().join("host.json"))
                .is_ok_and(|t| !t.contains(&agent.host_id) && t.contains("b002"))
        },
    )
    .await;
    agent.shutdown().await;
}

/// A tiny HTTP server in the test (not the workload): every request gets the status in
/// `status` (0: the connection is closed without an answer).
fn status_server() -> (u16, Arc<std::sync::atomic::AtomicU16>) {
    use std::io::{Read as _, Write as _};
    let status = Arc::new(std::sync::atomic::AtomicU16::new(200));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let st = status.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut req = Vec::new();
            let mut buf = [0u8; 512];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let code = st.load(std::sync::atomic::Ordering::SeqCst);
            if code != 0 {
                let _ = write!(
                    conn,
                    "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        }
    });
    (port, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_health_check_is_reported_and_the_workload_keeps_running() {
    use coffer_core::wire::machines::HealthCheck;
    use std::sync::atomic::Ordering;
    let s = S::new();
    let url = start_fake(s.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    let agent = start_agent(&url, &url, tmp.path()).await;
    let (port, status) = status_server();
    let id = "0c0c";
    let mut a = machine(id, "exec sleep 1000", RestartPolicy::No);
    a.check = Some(HealthCheck::Http {
        port,
        path: "/healthz".into(),
    });
    s.put(a);
    eventually("started", Duration::from_secs(10), || {
        s.count(id, MachineState::Started) == 1
    })
    .await;
    let mdir = tmp.path().join("machines").join(id);
    let pid = pid_of(&mdir).unwrap();
    // Healthy: a few probes pass and nothing more is reported.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(s.states(id), vec![MachineState::Started]);

    // Failing: `unhealthy` with the reason after two failed probes (~2 s), once.
    status.store(500, Ordering::SeqCst);
    let failing_since = Instant::now();
    eventually("unhealthy", Duration::from_secs(10), || {
        s.count(id, MachineState::Unhealthy) == 1
    })
    .await;
    let took = failing_since.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "two failed probes a second apart: {took:?}"
    );
    let r = s.last_report(id, MachineState::Unhealthy).unwrap();
    assert_eq!(
        r.message.as_deref(),
        Some(format!("http check GET :{port}/healthz: status 500").as_str())
    );
    assert_eq!(r.generation, s.with(|f| f.generation));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(s.count(id, MachineState::Unhealthy), 1, "reported once");
    assert_eq!(pid_of(&mdir), Some(pid), "the check does not restart it");
    assert!(alive(pid));

    // Passing again: `started` at the same generation, same process.
    status.store(204, Ordering::SeqCst);
    eventually("started again", Duration::from_secs(5), || {
        s.count(id, MachineState::Started) == 2
    })
    .await;
    assert_eq!(
        s.states(id),
        vec![
            MachineState::Started,
            MachineState::Unhealthy,
            MachineState::Started
        ]
    );
    assert_eq!(pid_of(&mdir), Some(pid));
    let log = std::fs::read_to_string(mdir.join("output.log")).unwrap();
    assert!(
        log.lines().any(|l| l.starts_with("[coffer] ")
            && l.contains(&format!(
                " unhealthy: http check GET :{port}/healthz: status 500"
            ))),
        "{log}"
    );
    assert!(log.contains("healthy again"), "{log}");

    // Stopped: no probe outcome is reported after `stopped`, even while failing.
    status.store(0, Ordering::SeqCst);
    s.set_desired(id, DesiredState::Stopped);
    eventually("stopped", Duration::from_secs(10), || {
        s.count(id, MachineState::Stopped) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(s.states(id).last(), Some(&MachineState::Stopped));
    assert_eq!(s.count(id, MachineState::Unhealthy), 1);
    agent.shutdown().await;
}
