//! Machine boot latency, measured end to end against a running `cofferd dev`:
//! from just before `POST …/machines/{id}/start` to the first instruction of the workload,
//! which writes its own clock (`date +%s%N`) to a file in its HOME. The baseline is a plain
//! spawn of the same `sh -c 'date +%s%N > FILE'` from this process.
//!
//! What a boot includes: the API recording the new desired state, the host's long-poll waking,
//! a boot grant (a machine token is minted and the ciphertexts read), the vault checking the
//! token, the host signature and the store, unwrapping the app key, opening every value and
//! sealing the bundle to the agent's one-time key, the agent opening it, building the
//! environment and exec.
//!
//! Usage: coffer-bootlat API_URL TOKEN DATA_DIR SECRETS ITERATIONS
//! Prints one JSON line per measurement set.

use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn summary(kind: &str, secrets: usize, mut ms: Vec<f64>) -> Value {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    json!({
        "kind": kind,
        "secrets": secrets,
        "n": ms.len(),
        "p50_ms": percentile(&ms, 0.50),
        "p99_ms": percentile(&ms, 0.99),
        "min_ms": ms[0],
        "max_ms": ms[ms.len() - 1],
    })
}

async fn read_first(path: &std::path::Path, deadline: Instant) -> anyhow::Result<u128> {
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(ns) = text.trim().parse::<u128>() {
                return Ok(ns);
            }
        }
        if Instant::now() > deadline {
            bail!("the workload did not start in time ({})", path.display());
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("{path}: {status}: {text}");
        }
        Ok(if text.is_empty() { Value::Null } else { serde_json::from_str(&text)? })
    }

    async fn wait_state(&self, app: &str, id: &str, state: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let m = self.call(reqwest::Method::GET, &format!("/v1/apps/{app}/machines/{id}"), None).await?;
            if m["state"] == state {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("machine {id} never reached {state}: {m}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        bail!("usage: coffer-bootlat API_URL TOKEN DATA_DIR SECRETS ITERATIONS");
    }
    let api = Api { http: reqwest::Client::new(), base: args[1].clone(), token: args[2].clone() };
    let data_dir = PathBuf::from(&args[3]);
    let secrets: usize = args[4].parse().context("SECRETS")?;
    let iterations: usize = args[5].parse().context("ITERATIONS")?;

    let app = format!("bootlat-{secrets}-{}", now_ns() % 1_000_000);
    api.call(reqwest::Method::POST, "/v1/apps", Some(json!({ "name": app }))).await?;
    let set: Vec<Value> =
        (0..secrets).map(|i| json!({"name": format!("SECRET_{i}"), "value": format!("{:040}", i)})).collect();
    api.call(reqwest::Method::POST, &format!("/v1/apps/{app}/secrets"), Some(json!({ "set": set }))).await?;
    let script = r#"date +%s%N > "$HOME/first"; exec sleep 100000"#;
    let m = api
        .call(
            reqwest::Method::POST,
            &format!("/v1/apps/{app}/machines"),
            Some(json!({ "command": ["sh", "-c", script] })),
        )
        .await?;
    let id = m["id"].as_str().context("machine id")?.to_string();
    api.wait_state(&app, &id, "started").await?;
    let first = data_dir.join("agent/machines").join(&id).join("home/first");

    let mut boot = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        api.call(reqwest::Method::POST, &format!("/v1/apps/{app}/machines/{id}/stop"), None).await?;
        api.wait_state(&app, &id, "stopped").await?;
        let _ = std::fs::remove_file(&first);
        let t0 = now_ns();
        api.call(reqwest::Method::POST, &format!("/v1/apps/{app}/machines/{id}/start"), None).await?;
        let t1 = read_first(&first, Instant::now() + Duration::from_secs(30)).await?;
        boot.push((t1.saturating_sub(t0)) as f64 / 1e6);
        api.wait_state(&app, &id, "started").await?;
    }
    println!("{}", summary("machine-start", secrets, boot));

    let scratch = std::env::temp_dir().join(format!("coffer-bootlat-{}", std::process::id()));
    let mut plain = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let _ = std::fs::remove_file(&scratch);
        let t0 = now_ns();
        let status = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(format!("date +%s%N > {}", scratch.display()))
            .status()
            .await?;
        if !status.success() {
            bail!("plain spawn failed");
        }
        let t1 = read_first(&scratch, Instant::now() + Duration::from_secs(5)).await?;
        plain.push((t1.saturating_sub(t0)) as f64 / 1e6);
    }
    let _ = std::fs::remove_file(&scratch);
    println!("{}", summary("plain-spawn", 0, plain));
    api.call(reqwest::Method::DELETE, &format!("/v1/apps/{app}/machines/{id}"), None).await?;
    Ok(())
}
