//! Machines and the host agent, end to end (issue #3; PRODUCT.md §1, §2, §5.4, §5.5, §5.8):
//! the real `cofferd dev` (API, vault and agent in one process, talking HTTP) and the real
//! `coffer` CLI, with real workloads.

mod common;

use coffer_core::wire::agent::{BootGrant, DecryptRequest, DecryptResponse};
use coffer_crypto::machine_token::{self, HostKey};
use common::{code, pids_with, stderr, stdout, unique_sleep, wait_for, Dev, Engine};
use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn machine(dev: &Dev, app: &str, id: &str) -> Option<Value> {
    let list = json(&dev.ok(&["machines", "list", "-a", app, "--json"]));
    list.as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
        .cloned()
}

fn wait_state(dev: &Dev, app: &str, id: &str, state: &str) -> Value {
    wait_for(30, &format!("machine {id} to be {state}"), || {
        machine(dev, app, id).filter(|m| m["state"] == state)
    })
}

fn run_machine(dev: &Dev, app: &str, extra: &[&str], command: &[&str]) -> String {
    let mut args = vec!["machines", "run", "-a", app, "--json"];
    args.extend_from_slice(extra);
    args.push("--");
    args.extend_from_slice(command);
    let m = json(&dev.ok(&args));
    m["id"].as_str().unwrap().to_string()
}

fn machine_dir(dev: &Dev, id: &str) -> PathBuf {
    dev.data_dir.join("agent/machines").join(id)
}

/// `env -0` output as a map, from the machine's output log (agent lines removed).
fn env_dump(dev: &Dev, id: &str) -> BTreeMap<String, String> {
    let raw = std::fs::read(machine_dir(dev, id).join("output.log")).unwrap();
    let text = String::from_utf8(raw).unwrap();
    // The agent's own `[coffer] …` lines are newline-terminated and sit between NUL-separated
    // entries; drop them from every entry.
    text.split('\0')
        .map(|e| {
            e.split('\n')
                .filter(|l| !l.starts_with("[coffer]"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (k, v) = e
                .split_once('=')
                .unwrap_or_else(|| panic!("not an env entry: {e:?}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

async fn boot_env_and_lifecycle(engine: Engine) {
    let Some(db) = common::database_url(engine).await else {
        return;
    };
    let dev = Dev::start(db);
    dev.ok(&["apps", "create", "web"]);
    dev.ok(&[
        "secrets",
        "set",
        "-a",
        "web",
        "DATABASE_URL=postgres://db/web",
        "API_KEY=from-secret",
        "EMPTY=",
    ]);
    // A staged value is not what machines boot with.
    dev.ok(&["secrets", "set", "-a", "web", "STAGED_ONLY=x", "--stage"]);

    // The workload's environment, exactly.
    let id = run_machine(
        &dev,
        "web",
        &[
            "--name",
            "env-dump",
            "--env",
            "PLAIN=1",
            "--env",
            "API_KEY=from-env",
        ],
        &["env", "-0"],
    );
    let m = wait_state(&dev, "web", &id, "exited");
    assert_eq!(m["exit_status"], 0, "{m}");
    assert_eq!(m["name"], "env-dump");
    let env = env_dump(&dev, &id);
    let keys: Vec<&str> = env.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "API_KEY",
            "COFFER_APP_NAME",
            "COFFER_MACHINE_ID",
            "COFFER_RELEASE_VERSION",
            "DATABASE_URL",
            "EMPTY",
            "HOME",
            "PATH",
            "PLAIN"
        ],
        "{env:?}"
    );
    assert_eq!(env["DATABASE_URL"], "postgres://db/web");
    assert_eq!(
        env["API_KEY"], "from-secret",
        "a secret wins over a plain --env of the same name"
    );
    assert_eq!(env["EMPTY"], "");
    assert_eq!(env["PLAIN"], "1");
    assert_eq!(env["COFFER_APP_NAME"], "web");
    assert_eq!(env["COFFER_MACHINE_ID"], id);
    assert_eq!(env["COFFER_RELEASE_VERSION"], "1");
    // The logs, through the API and the agent.
    let logs = dev.ok(&["machines", "logs", "-a", "web", &id]);
    assert!(logs.contains("DATABASE_URL=postgres://db/web"), "{logs}");
    // ...which is why a `read` token, which may see names and digests only, gets no logs,
    // while a `deploy` token of the app does.
    let token = |scope: &str| {
        let out = dev.ok(&["tokens", "create", "--app", "web", "--scope", scope]);
        out.trim().to_string()
    };
    let reader = token("read");
    let out = dev.run_as(&reader, &["machines", "logs", "-a", "web", &id], None);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(!stdout(&out).contains("postgres://db/web"));
    assert!(!stderr(&out).contains("postgres://db/web"));
    let deployer = token("deploy");
    let out = dev.run_as(&deployer, &["machines", "logs", "-a", "web", &id], None);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("DATABASE_URL=postgres://db/web"));

    // A long-running workload: stop, start, destroy, with the real process checked in /proc.
    let marker = unique_sleep();
    let id = run_machine(&dev, "web", &[], &["sleep", &marker]);
    wait_state(&dev, "web", &id, "started");
    let first = wait_for(10, "the workload process", || {
        Some(pids_with(&marker)).filter(|p| !p.is_empty())
    });
    let table = dev.ok(&["machines", "list", "-a", "web"]);
    for col in [
        "ID", "NAME", "STATE", "RELEASE", "HOST", "AGE", "started", "dev",
    ] {
        assert!(table.contains(col), "{col} missing from\n{table}");
    }
    dev.ok(&["machines", "stop", "-a", "web", &id]);
    wait_state(&dev, "web", &id, "stopped");
    wait_for(15, "the stopped workload to be gone", || {
        pids_with(&marker).is_empty().then_some(())
    });
    dev.ok(&["machines", "start", "-a", "web", &id]);
    wait_state(&dev, "web", &id, "started");
    let second = wait_for(10, "the restarted workload", || {
        Some(pids_with(&marker)).filter(|p| !p.is_empty())
    });
    assert_ne!(first, second, "start boots a new process");
    dev.ok(&["machines", "destroy", "-a", "web", &id]);
    assert!(
        machine(&dev, "web", &id).is_none(),
        "a destroyed machine leaves the list"
    );
    wait_for(15, "the destroyed workload to be gone", || {
        pids_with(&marker).is_empty().then_some(())
    });
    wait_for(15, "the destroyed machine's files to be removed", || {
        (!machine_dir(&dev, &id).exists()).then_some(())
    });
    let out = dev.run(&["machines", "start", "-a", "web", &id], None);
    assert_eq!(
        out.status.code(),
        Some(5),
        "a destroyed machine cannot be started"
    );

    // Restart by policy: each restart is a fresh boot with the secrets.
    let script = r#"c=$(cat "$HOME/count" 2>/dev/null || echo 0); c=$((c+1)); echo $c > "$HOME/count"; test -n "$DATABASE_URL" || exit 9; [ "$c" -ge 3 ] && exec sleep 1000; exit 1"#;
    let id = run_machine(
        &dev,
        "web",
        &["--restart", "on-failure"],
        &["sh", "-c", script],
    );
    // Two failed boots, then a third that runs (a `started` of the first boots may be seen
    // before their exit, so wait for the count).
    wait_for(30, "the third boot to run", || {
        let count = std::fs::read_to_string(machine_dir(&dev, &id).join("home/count")).ok()?;
        let m = machine(&dev, "web", &id)?;
        (count.trim() == "3" && m["state"] == "started").then_some(())
    });
    dev.ok(&["machines", "destroy", "-a", "web", &id]);

    // Bad input: nothing created.
    for bad in [
        vec![
            "machines",
            "run",
            "-a",
            "web",
            "--env",
            "COFFER_X=1",
            "--",
            "true",
        ],
        vec![
            "machines", "run", "-a", "web", "--env", "1BAD=1", "--", "true",
        ],
        vec![
            "machines",
            "run",
            "-a",
            "web",
            "--restart",
            "sometimes",
            "--",
            "true",
        ],
        vec![
            "machines", "run", "-a", "web", "--name", "Bad Name", "--", "true",
        ],
    ] {
        let out = dev.run(&bad, None);
        assert!(!out.status.success(), "{bad:?} was accepted");
    }
    let live = json(&dev.ok(&["machines", "list", "-a", "web", "--json"]));
    assert_eq!(
        live.as_array().unwrap().len(),
        1,
        "only the exited env-dump machine remains: {live}"
    );
}

/// Acts as the dev host: its identity from the agent's state dir.
struct HostIdentity {
    id: String,
    token: String,
    key: HostKey,
}

fn dev_host(dev: &Dev) -> HostIdentity {
    let dir = dev.data_dir.join("agent");
    let host: Value = json(&std::fs::read_to_string(dir.join("host.json")).unwrap());
    let token = std::fs::read_to_string(dir.join("host.token"))
        .unwrap()
        .trim()
        .to_string();
    let key_hex = std::fs::read_to_string(dir.join("host.key")).unwrap();
    let bytes =
        coffer_core::SecretBytes::<32>::from_slice(&hex::decode(key_hex.trim()).unwrap()).unwrap();
    HostIdentity {
        id: host["host_id"].as_str().unwrap().to_string(),
        token,
        key: HostKey::from_secret_bytes(&bytes),
    }
}

/// Registers a host of the test's own (as an agent would, with the admin token); the
/// registration's answer.
async fn register_host(dev: &Dev, name: &str, key: &HostKey) -> Value {
    let reg = reqwest::Client::new()
        .post(format!("{}/v1/hosts", dev.api_url))
        .bearer_auth(dev.admin_token())
        .json(&serde_json::json!({"name": name, "address": "http://127.0.0.1:9", "public_key": key.public_key_hex()}))
        .send()
        .await
        .unwrap();
    assert_eq!(reg.status().as_u16(), 201);
    reg.json().await.unwrap()
}

async fn boot_grant(dev: &Dev, host: &HostIdentity, machine_id: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!(
            "{}/v1/hosts/{}/machines/{machine_id}/boot",
            dev.api_url, host.id
        ))
        .bearer_auth(&host.token)
        .send()
        .await
        .unwrap()
}

struct Attempt<'a> {
    token: &'a str,
    machine_id: &'a str,
    grant: &'a BootGrant,
    signer: &'a HostKey,
    issued_at: i64,
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// One decrypt request to the vault, as an agent makes it. Returns (status, values if 200).
async fn decrypt(dev: &Dev, a: Attempt<'_>) -> (u16, Option<BTreeMap<String, Vec<u8>>>) {
    let (sk, pk) = coffer_crypto::PrivateKey::generate();
    let pk_hex = hex::encode(pk.to_bytes());
    let listed: Vec<(&str, i64, &str)> = a
        .grant
        .ciphertexts
        .iter()
        .map(|c| (c.name.as_str(), c.version, c.ciphertext.as_str()))
        .collect();
    let msg = machine_token::decrypt_request_message(
        a.token,
        a.machine_id,
        &pk_hex,
        a.issued_at,
        &listed,
    );
    let req = DecryptRequest {
        machine_token: a.token.to_string(),
        machine_id: a.machine_id.to_string(),
        one_time_public_key: pk_hex,
        ciphertexts: a.grant.ciphertexts.clone(),
        issued_at: a.issued_at,
        host_signature: a.signer.sign_hex(&msg),
    };
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/decrypt", dev.vault_url))
        .json(&req)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    if status != 200 {
        let body = resp.text().await.unwrap();
        assert!(body.contains("\"code\""), "vault errors are JSON: {body}");
        return (status, None);
    }
    let body: DecryptResponse = resp.json().await.unwrap();
    let version = a.grant.secrets_version.to_string();
    let ctx: [&[u8]; 3] = [
        a.grant.app_id.as_bytes(),
        a.machine_id.as_bytes(),
        version.as_bytes(),
    ];
    let values =
        coffer_crypto::bundle::open_bundle(&sk, &ctx, &machine_token::unb64(&body.bundle).unwrap())
            .unwrap();
    (
        status,
        Some(
            values
                .into_iter()
                .map(|(n, v)| (n, v.expose_bytes().to_vec()))
                .collect(),
        ),
    )
}

async fn destroyed_machine_is_refused(engine: Engine) {
    let Some(db) = common::database_url(engine).await else {
        return;
    };
    let mut dev = Dev::start(db);
    dev.ok(&["apps", "create", "web"]);
    dev.ok(&["secrets", "set", "-a", "web", "TOKEN_TEST=secret-value"]);
    let id = run_machine(&dev, "web", &[], &["sleep", &unique_sleep()]);
    wait_state(&dev, "web", &id, "started");

    let host = dev_host(&dev);
    let resp = boot_grant(&dev, &host, &id).await;
    assert_eq!(resp.status().as_u16(), 200);
    let grant: BootGrant = resp.json().await.unwrap();
    let token = grant.machine_token.clone();

    let (status, values) = decrypt(
        &dev,
        Attempt {
            token: &token,
            machine_id: &id,
            grant: &grant,
            signer: &host.key,
            issued_at: now_secs(),
        },
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(values.unwrap()["TOKEN_TEST"], b"secret-value");

    dev.ok(&["machines", "destroy", "-a", "web", &id]);
    let acked = Instant::now();
    let (status, _) = decrypt(
        &dev,
        Attempt {
            token: &token,
            machine_id: &id,
            grant: &grant,
            signer: &host.key,
            issued_at: now_secs(),
        },
    )
    .await;
    let elapsed = acked.elapsed();
    assert_eq!(
        status, 403,
        "the first retry after the destroy was acknowledged must be refused"
    );
    assert!(
        elapsed < Duration::from_secs(1),
        "refused only after {elapsed:?}"
    );
    // No new grant for a destroyed machine either.
    assert_eq!(boot_grant(&dev, &host, &id).await.status().as_u16(), 409);

    // Restart the API and the vault: the refusal is durable.
    dev.restart();
    let (status, _) = decrypt(
        &dev,
        Attempt {
            token: &token,
            machine_id: &id,
            grant: &grant,
            signer: &host.key,
            issued_at: now_secs(),
        },
    )
    .await;
    assert_eq!(status, 403, "refused after restarts too");
}

async fn machine_token_scope(engine: Engine) {
    let Some(db) = common::database_url(engine).await else {
        return;
    };
    let dev = Dev::start(db);
    for app in ["alpha", "beta"] {
        dev.ok(&["apps", "create", app]);
        dev.ok(&[
            "secrets",
            "set",
            "-a",
            app,
            &format!("ONLY_{}=value-of-{app}", app.to_uppercase()),
        ]);
    }
    let ma = run_machine(&dev, "alpha", &[], &["sleep", &unique_sleep()]);
    let mb = run_machine(&dev, "beta", &[], &["sleep", &unique_sleep()]);
    wait_state(&dev, "alpha", &ma, "started");
    wait_state(&dev, "beta", &mb, "started");
    let host = dev_host(&dev);
    let ga: BootGrant = boot_grant(&dev, &host, &ma).await.json().await.unwrap();
    let gb: BootGrant = boot_grant(&dev, &host, &mb).await.json().await.unwrap();

    // Control: A's token opens A's values.
    let (status, _) = decrypt(
        &dev,
        Attempt {
            token: &ga.machine_token,
            machine_id: &ma,
            grant: &ga,
            signer: &host.key,
            issued_at: now_secs(),
        },
    )
    .await;
    assert_eq!(status, 200);

    // A's token with B's ciphertexts.
    let mixed = BootGrant {
        machine_token: ga.machine_token.clone(),
        app_id: ga.app_id.clone(),
        app_name: ga.app_name.clone(),
        secrets_version: ga.secrets_version,
        release_version: ga.release_version,
        ciphertexts: gb.ciphertexts.clone(),
        expires_at: ga.expires_at.clone(),
    };
    let (status, _) = decrypt(
        &dev,
        Attempt {
            token: &ga.machine_token,
            machine_id: &ma,
            grant: &mixed,
            signer: &host.key,
            issued_at: now_secs(),
        },
    )
    .await;
    assert!(
        status == 403 || status == 422,
        "A's token decrypted B's ciphertexts: {status}"
    );

    // A's token for B's machine.
    let (status, _) = decrypt(
        &dev,
        Attempt {
            token: &ga.machine_token,
            machine_id: &mb,
            grant: &gb,
            signer: &host.key,
            issued_at: now_secs(),
        },
    )
    .await;
    assert_eq!(status, 403);

    // From another registered host: it holds its own key, not the token's host key.
    let other = HostKey::generate();
    let other_reg = register_host(&dev, "other", &other).await;
    let (status, _) = decrypt(
        &dev,
        Attempt {
            token: &ga.machine_token,
            machine_id: &ma,
            grant: &ga,
            signer: &other,
            issued_at: now_secs(),
        },
    )
    .await;
    assert_eq!(status, 403, "another host's signature");
    // The other host cannot get a grant for a machine that is not on it.
    let other_id = HostIdentity {
        id: other_reg["host_id"].as_str().unwrap().to_string(),
        token: other_reg["host_token"].as_str().unwrap().to_string(),
        key: HostKey::generate(),
    };
    assert_eq!(
        boot_grant(&dev, &other_id, &ma).await.status().as_u16(),
        404
    );
    // Nor use its host token under the dev host's id.
    let forged = HostIdentity {
        id: host.id.clone(),
        token: other_id.token.clone(),
        key: HostKey::generate(),
    };
    assert_eq!(boot_grant(&dev, &forged, &ma).await.status().as_u16(), 403);

    // Expired: a token minted with the control plane's key, expired a minute ago.
    let key_hex = std::fs::read_to_string(dev.data_dir.join("control-plane.key")).unwrap();
    let cp = machine_token::ControlPlaneKey::from_secret_bytes(
        &coffer_core::SecretBytes::<32>::from_slice(&hex::decode(key_hex.trim()).unwrap()).unwrap(),
    )
    .unwrap();
    let expired = machine_token::mint_machine_token(
        &cp,
        &machine_token::MachineClaims {
            app_id: ga.app_id.clone(),
            machine_id: ma.clone(),
            host_id: host.id.clone(),
            host_key: host.key.public_key_hex(),
            expires_at: now_secs() - 60,
        },
    )
    .unwrap();
    let (status, _) = decrypt(
        &dev,
        Attempt {
            token: &expired,
            machine_id: &ma,
            grant: &ga,
            signer: &host.key,
            issued_at: now_secs(),
        },
    )
    .await;
    assert_eq!(status, 401, "expired token");

    // Altered: one character changed anywhere in the middle.
    let mut altered = ga.machine_token.clone().into_bytes();
    let mid = altered.len() / 2;
    altered[mid] = if altered[mid] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    let (status, _) = decrypt(
        &dev,
        Attempt {
            token: &altered,
            machine_id: &ma,
            grant: &ga,
            signer: &host.key,
            issued_at: now_secs(),
        },
    )
    .await;
    assert_eq!(status, 401, "altered token");

    // Replayed an hour later.
    let (status, _) = decrypt(
        &dev,
        Attempt {
            token: &ga.machine_token,
            machine_id: &ma,
            grant: &ga,
            signer: &host.key,
            issued_at: now_secs() - 3600,
        },
    )
    .await;
    assert_eq!(status, 403, "stale request");

    // A user's API token is not a machine token.
    let (status, _) = decrypt(
        &dev,
        Attempt {
            token: &dev.admin_token(),
            machine_id: &ma,
            grant: &ga,
            signer: &host.key,
            issued_at: now_secs(),
        },
    )
    .await;
    assert_eq!(status, 401);
}

/// An assignments answer records its host as seen only when the host was last seen long ago:
/// each such record is a durable write, and the answer that wakes a host to boot a machine
/// should not wait for one when the host's heartbeats are recent.
async fn long_polls_record_only_stale_hosts(engine: Engine) {
    let Some(db) = common::database_url(engine).await else {
        return;
    };
    let dev = Dev::start(db);
    // A host of its own, so that the dev agent's heartbeats do not touch it.
    let reg = register_host(&dev, "quiet", &HostKey::generate()).await;
    let host_id = reg["host_id"].as_str().unwrap().to_string();
    let host_token = reg["host_token"].as_str().unwrap().to_string();
    let pool = dev.raw_pool().await;
    let last_seen = || async {
        let (micros,): (i64,) = sqlx::query_as("SELECT last_seen_at FROM hosts WHERE id = $1")
            .bind(&host_id)
            .fetch_one(&pool)
            .await
            .unwrap();
        micros
    };
    let poll = || async {
        let resp = reqwest::Client::new()
            .get(format!(
                "{}/v1/hosts/{host_id}/assignments?after=-1",
                dev.api_url
            ))
            .bearer_auth(&host_token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
    };

    let registered = last_seen().await;
    poll().await;
    poll().await;
    assert_eq!(last_seen().await, registered, "seen just now: no write");

    let long_ago = registered - 30_000_000;
    sqlx::query("UPDATE hosts SET last_seen_at = $1 WHERE id = $2")
        .bind(long_ago)
        .bind(&host_id)
        .execute(&pool)
        .await
        .unwrap();
    poll().await;
    let now_micros = now_secs() * 1_000_000;
    let recorded = last_seen().await;
    assert!(
        recorded > long_ago && now_micros - recorded < 10_000_000,
        "a host last seen 30 s ago is recorded as seen: {recorded} (now {now_micros})"
    );
}

async fn agent_sentinel_scan(engine: Engine) {
    let Some(db) = common::database_url(engine).await else {
        return;
    };
    let mut dev = Dev::start(db);
    let s1 = common::sentinel("MACHINE1");
    let s2 = common::sentinel("MACHINE2");
    dev.ok(&["apps", "create", "web"]);
    let pairs = [
        format!("S1={}", String::from_utf8_lossy(&s1)),
        format!("S2={}", String::from_utf8_lossy(&s2)),
    ];
    dev.ok(&["secrets", "set", "-a", "web", &pairs[0], &pairs[1]]);
    // Proves injection without printing a value: the workload writes a hash, fails once
    // (restart by policy: a second boot), then runs.
    let script = r#"printf %s "$S1" | sha256sum > "$HOME/s1.sha256"; [ -f "$HOME/once" ] && exec sleep 1000; touch "$HOME/once"; exit 1"#;
    let id = run_machine(
        &dev,
        "web",
        &["--restart", "on-failure"],
        &["sh", "-c", script],
    );
    wait_for(30, "a restart by policy", || {
        let m = machine(&dev, "web", &id)?;
        (m["state"] == "started" && machine_dir(&dev, &id).join("home/once").exists()).then_some(())
    });
    let hash = std::fs::read_to_string(machine_dir(&dev, &id).join("home/s1.sha256")).unwrap();
    use sha2_like::hex_sha256;
    assert!(hash.starts_with(&hex_sha256(&s1)), "the workload saw S1");
    let _ = dev.ok(&["machines", "logs", "-a", "web", &id]);
    dev.restart();
    wait_state(&dev, "web", &id, "started");
    dev.ok(&["machines", "destroy", "-a", "web", &id]);
    wait_for(15, "the machine's files to be removed", || {
        (!machine_dir(&dev, &id).exists()).then_some(())
    });
    dev.stop(false);

    let mut dirs = vec![
        dev.data_dir.clone(),
        dev.capture_dir.clone(),
        dev.config_home.clone(),
    ];
    if let Some(url) = dev.database_url.clone() {
        let dump = dev.capture_dir.join("postgres-dump.txt");
        std::fs::write(&dump, common::dump_postgres(&url).await).unwrap();
        dirs.push(dump.parent().unwrap().to_path_buf());
    }
    let dir_refs: Vec<&std::path::Path> = dirs.iter().map(PathBuf::as_path).collect();
    let files = common::all_files(&dir_refs);
    assert!(
        files.iter().any(|f| f.to_string_lossy().contains("agent")),
        "the agent's files are scanned"
    );
    let hits = common::scan(&files, &[s1, s2]);
    assert!(hits.is_empty(), "plaintext found:\n{}", hits.join("\n"));
    // No usable machine token anywhere either.
    let cp_pub = {
        let key_hex = std::fs::read_to_string(dev.data_dir.join("control-plane.key")).unwrap();
        machine_token::ControlPlaneKey::from_secret_bytes(
            &coffer_core::SecretBytes::<32>::from_slice(&hex::decode(key_hex.trim()).unwrap())
                .unwrap(),
        )
        .unwrap()
        .public_key()
    };
    for f in &files {
        let bytes = std::fs::read(f).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        for run in
            text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '='))
        {
            if run.len() >= 100 {
                let t = run.trim_end_matches('=');
                let usable =
                    machine_token::verify_machine_token(&cp_pub, run, std::time::SystemTime::now())
                        .is_ok()
                        || machine_token::verify_machine_token(
                            &cp_pub,
                            t,
                            std::time::SystemTime::now(),
                        )
                        .is_ok();
                assert!(
                    !usable,
                    "a usable machine token is stored in {}",
                    f.display()
                );
            }
        }
    }
}

mod sha2_like {
    /// SHA-256 in hex, via the system's sha256sum (the workload used it too).
    pub fn hex_sha256(bytes: &[u8]) -> String {
        use std::io::Write;
        let mut child = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    }
}

/// Issue: after `apps destroy` the app's workloads ran on until the agent's long-poll reached
/// its 15 s deadline, because the hosts were not told. Destroyed right after its machine
/// started (the agent's long-poll began at the machine's creation), the workload must be
/// gone well before that deadline.
async fn app_destroy_stops_workloads(engine: Engine) {
    let Some(db) = common::database_url(engine).await else {
        return;
    };
    let dev = Dev::start(db);
    dev.ok(&["apps", "create", "web"]);
    dev.ok(&["secrets", "set", "-a", "web", "A=1"]);
    let mark = unique_sleep();
    let id = run_machine(&dev, "web", &[], &["sleep", &mark]);
    wait_state(&dev, "web", &id, "started");
    wait_for(10, "the workload to run", || {
        (!pids_with(&mark).is_empty()).then_some(())
    });
    dev.ok(&["apps", "destroy", "web", "--yes"]);
    // Generous, yet under the long-poll's 15 s: the host is woken, not left to time out.
    wait_for(10, "the destroyed app's workload to stop", || {
        pids_with(&mark).is_empty().then_some(())
    });
    wait_for(10, "the machine's directory to be removed", || {
        (!machine_dir(&dev, &id).exists()).then_some(())
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_app_destroy_stops_workloads() {
    app_destroy_stops_workloads(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_app_destroy_stops_workloads() {
    app_destroy_stops_workloads(Engine::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_boot_env_and_lifecycle() {
    boot_env_and_lifecycle(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_boot_env_and_lifecycle() {
    boot_env_and_lifecycle(Engine::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_destroyed_machine_is_refused() {
    destroyed_machine_is_refused(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_destroyed_machine_is_refused() {
    destroyed_machine_is_refused(Engine::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_machine_token_scope() {
    machine_token_scope(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_machine_token_scope() {
    machine_token_scope(Engine::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_agent_sentinel_scan() {
    agent_sentinel_scan(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_agent_sentinel_scan() {
    agent_sentinel_scan(Engine::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_long_polls_record_only_stale_hosts() {
    long_polls_record_only_stale_hosts(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_long_polls_record_only_stale_hosts() {
    long_polls_record_only_stale_hosts(Engine::Postgres).await;
}

/// The user id a process runs under, from `/proc/PID/status` (`Uid: real effective …`).
fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// With `--workload-uids` (the agent as root), each app's workloads run under a user id of
/// their own: a workload of one app reads neither another app's workload environment (its
/// secrets) nor the agent's credentials nor `cofferd dev`'s keys, and has its home to itself.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_workload_users_keep_apps_apart() {
    if uid_of(std::process::id()) != 0 {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root, so that workload users are tested"
        );
        eprintln!("skipped: workload users need root");
        return;
    }
    let Some(db) = common::database_url(Engine::Sqlite).await else {
        return;
    };
    const RANGE: &str = "3900000-3900009";
    let dev = Dev::start_with_env(db, &[("COFFER_WORKLOAD_UIDS", RANGE)]);
    let data_mode = std::fs::metadata(&dev.data_dir)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(data_mode, 0o711, "pass-through, not listable");
    for app in ["alpha", "beta"] {
        dev.ok(&["apps", "create", app]);
    }
    dev.ok(&[
        "secrets",
        "set",
        "-a",
        "alpha",
        "ALPHA_KEY=alpha-secret-sentinel",
    ]);
    dev.ok(&["secrets", "set", "-a", "beta", "BETA_KEY=beta-value"]);

    // alpha's workload runs and holds its secret in its environment.
    let marker = unique_sleep();
    let alpha = run_machine(&dev, "alpha", &[], &["sleep", &marker]);
    wait_state(&dev, "alpha", &alpha, "started");
    let alpha_pid = wait_for(10, "alpha's workload", || {
        pids_with(&marker).first().copied()
    });
    let alpha_uid = uid_of(alpha_pid);
    assert_ne!(alpha_uid, 0);
    assert!((3900000..=3900009).contains(&alpha_uid), "{alpha_uid}");

    // beta's workload tries to read what it must not.
    let agent_dir = dev.data_dir.join("agent");
    let script = format!(
        "echo uid=$(id -u) gid=$(id -g) groups=$(id -G); \
         cat /proc/{alpha_pid}/environ >/dev/null 2>&1 && echo READ-ALPHA-ENV || echo no-alpha-env; \
         cat {agent}/host.key >/dev/null 2>&1 && echo READ-HOST-KEY || echo no-host-key; \
         cat {agent}/host.token >/dev/null 2>&1 && echo READ-HOST-TOKEN || echo no-host-token; \
         cat {data}/unseal.key >/dev/null 2>&1 && echo READ-UNSEAL-KEY || echo no-unseal-key; \
         cat {data}/coffer.db >/dev/null 2>&1 && echo READ-DB || echo no-db; \
         ls {agent}/machines >/dev/null 2>&1 && echo LISTED-MACHINES || echo no-listing; \
         cat {alpha_dir}/output.log >/dev/null 2>&1 && echo READ-ALPHA-LOG || echo no-alpha-log; \
         ls {alpha_dir}/home >/dev/null 2>&1 && echo LISTED-ALPHA-HOME || echo no-alpha-home; \
         touch \"$HOME/mine\" && echo home-writable; \
         echo \"beta=$BETA_KEY\"",
        agent = agent_dir.display(),
        data = dev.data_dir.display(),
        alpha_dir = machine_dir(&dev, &alpha).display(),
    );
    let beta = run_machine(&dev, "beta", &[], &["sh", "-c", &script]);
    let m = wait_state(&dev, "beta", &beta, "exited");
    let logs = dev.ok(&["machines", "logs", "-a", "beta", &beta]);
    assert_eq!(m["exit_status"], 0, "{m}\n{logs}");
    for line in [
        "no-alpha-env",
        "no-host-key",
        "no-host-token",
        "no-unseal-key",
        "no-db",
        "no-listing",
        "no-alpha-log",
        "no-alpha-home",
        "home-writable",
        "beta=beta-value",
    ] {
        assert!(
            logs.lines().any(|l| l == line),
            "{line} missing from:\n{logs}"
        );
    }
    assert!(!logs.contains("alpha-secret-sentinel"), "{logs}");
    let ids = logs
        .lines()
        .find(|l| l.starts_with("uid="))
        .unwrap_or_else(|| panic!("{logs}"));
    let beta_uid: u32 = ids["uid=".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(beta_uid, alpha_uid, "two apps share a user id");
    assert!((3900000..=3900009).contains(&beta_uid), "{ids}");
    assert_eq!(
        ids,
        format!("uid={beta_uid} gid={beta_uid} groups={beta_uid}"),
        "no supplementary group, the group of the same number"
    );
    // The home belongs to the app's user; the agent's files stay root's and 0600.
    let home = std::fs::metadata(machine_dir(&dev, &beta).join("home")).unwrap();
    assert_eq!(
        (home.uid(), home.permissions().mode() & 0o777),
        (beta_uid, 0o700)
    );
    let users = agent_dir.join("workload-users.json");
    assert_eq!(common::mode_of(&users), 0o600);
    let recorded: Value = serde_json::from_slice(&std::fs::read(&users).unwrap()).unwrap();
    let mut uids: Vec<u32> = recorded["apps"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    uids.sort_unstable();
    let mut expected = vec![alpha_uid, beta_uid];
    expected.sort_unstable();
    assert_eq!(uids, expected);

    // A second machine of alpha runs under alpha's user id.
    let marker2 = unique_sleep();
    let alpha2 = run_machine(&dev, "alpha", &[], &["sleep", &marker2]);
    wait_state(&dev, "alpha", &alpha2, "started");
    let pid2 = wait_for(10, "alpha's second workload", || {
        pids_with(&marker2).first().copied()
    });
    assert_eq!(uid_of(pid2), alpha_uid);
}
