//! coffer-loadgen: the load generator of `bench/run.sh`.
//!
//! It drives coffer or OpenBao over HTTP/1.1 keep-alive on loopback. A workload runs on a
//! fixed number of connections; each connection is a closed loop (send one request, read the
//! whole response, send the next), so the offered load is exactly "N clients as fast as the
//! server answers". Latency is measured per request (from just before the request is written
//! to after the last byte of the response is read) into an HDR histogram with microsecond
//! resolution. Requests completed during the warm-up are not counted.
//!
//! Every command prints one JSON object on stdout; progress and diagnostics go to stderr.
//!
//! ```text
//! coffer-loadgen preload --system coffer|openbao --url URL --token-file F --apps N [--conns 16]
//!                        [--server-pid PID]
//! coffer-loadgen run     --system coffer|openbao --workload write|list|boot-decrypt
//!                        --url URL --token-file F --apps N --conns C --duration SECS
//!                        [--warmup SECS] [--server-pid PID] [--threads 1] [--round N]
//! ```
//!
//! With `--server-pid`, the server's CPU time during the measured window (from
//! /proc/PID/stat) and its resident memory (VmRSS, VmHWM from /proc/PID/status) are reported
//! too. The generator reports its own CPU time, so a run where the client, not the server, is
//! the bottleneck can be seen (client and server share the machine's cores).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Sender = SendRequest<Full<Bytes>>;
type Error = Box<dyn std::error::Error + Send + Sync>;

/// Secrets per app in the preload and per write.
const SECRETS_PER_WRITE: usize = 10;
/// Bytes per secret value.
const VALUE_LEN: usize = 40;
/// Ciphertexts per boot-decrypt request (a machine booting with 50 secrets).
const BOOT_SECRETS: usize = 50;
/// Transit key used by the OpenBao boot-decrypt workload.
const TRANSIT_KEY: &str = "coffer-bench";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    Coffer,
    Openbao,
}

impl System {
    fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "coffer" => Ok(Self::Coffer),
            "openbao" | "bao" => Ok(Self::Openbao),
            _ => Err(format!("unknown system {s:?} (coffer|openbao)").into()),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Self::Coffer => "coffer",
            Self::Openbao => "openbao",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Workload {
    Write,
    List,
    BootDecrypt,
}

impl Workload {
    fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "write" => Ok(Self::Write),
            "list" => Ok(Self::List),
            "boot-decrypt" => Ok(Self::BootDecrypt),
            _ => Err(format!("unknown workload {s:?} (write|list|boot-decrypt)").into()),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Self::Write => "write",
            Self::List => "list",
            Self::BootDecrypt => "boot-decrypt",
        }
    }
}

/// `--key value` pairs after the subcommand.
struct Args(HashMap<String, String>);

impl Args {
    fn parse(it: impl Iterator<Item = String>) -> Result<Self, Error> {
        let mut map = HashMap::new();
        let mut it = it.peekable();
        while let Some(k) = it.next() {
            let Some(key) = k.strip_prefix("--") else {
                return Err(format!("unexpected argument {k:?}").into());
            };
            let v = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
            map.insert(key.to_string(), v);
        }
        Ok(Self(map))
    }
    fn get(&self, k: &str) -> Result<&str, Error> {
        self.0
            .get(k)
            .map(String::as_str)
            .ok_or_else(|| format!("missing --{k}").into())
    }
    fn num<T: std::str::FromStr>(&self, k: &str, default: Option<T>) -> Result<T, Error> {
        match (self.0.get(k), default) {
            (Some(v), _) => v
                .parse()
                .map_err(|_| format!("--{k}: bad number {v:?}").into()),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(format!("missing --{k}").into()),
        }
    }
}

/// The API token: `--token-file PATH` (preferred: not visible in `ps`) or `--token T`.
fn token(args: &Args) -> Result<String, Error> {
    match args.0.get("token-file") {
        Some(path) => Ok(std::fs::read_to_string(path)
            .map_err(|e| format!("--token-file {path}: {e}"))?
            .trim()
            .to_string()),
        None => Ok(args.get("token")?.to_string()),
    }
}

/// Where and how to talk to one system.
struct Target {
    system: System,
    addr: SocketAddr,
    host: HeaderValue,
    auth: (hyper::header::HeaderName, HeaderValue),
}

impl Target {
    fn new(system: System, url: &str, token: &str) -> Result<Self, Error> {
        let hostport = url
            .strip_prefix("http://")
            .ok_or("only http:// URLs on loopback are supported")?
            .trim_end_matches('/');
        let addr: SocketAddr = hostport
            .parse()
            .map_err(|_| format!("--url must be http://IP:PORT, got {url:?}"))?;
        if !addr.ip().is_loopback() {
            return Err("refusing a non-loopback target: benchmarks run on 127.0.0.1 only".into());
        }
        let auth = match system {
            System::Coffer => (
                AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {token}"))?,
            ),
            System::Openbao => (
                hyper::header::HeaderName::from_static("x-vault-token"),
                HeaderValue::from_str(token)?,
            ),
        };
        Ok(Self {
            system,
            addr,
            host: HeaderValue::from_str(hostport)?,
            auth,
        })
    }

    fn request(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Request<Full<Bytes>> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.host.clone())
            .header(self.auth.0.clone(), self.auth.1.clone());
        if body.is_some() {
            b = b.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        b.body(Full::new(body.map(Bytes::from).unwrap_or_default()))
            .expect("valid request")
    }

    async fn connect(&self) -> Result<Sender, Error> {
        let stream = tokio::net::TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }
}

/// xorshift64*: fast, good enough to pick apps and make values; seeded per connection.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self((seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ nanos) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// 1..=n
    fn app(&mut self, n: usize) -> usize {
        1 + (self.next() % n as u64) as usize
    }
    fn value(&mut self) -> String {
        const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        (0..VALUE_LEN)
            .map(|_| ALPHA[(self.next() % ALPHA.len() as u64) as usize] as char)
            .collect()
    }
}

/// The body of one write of `SECRETS_PER_WRITE` secrets.
fn write_body(system: System, rng: &mut Rng, stage: bool) -> Vec<u8> {
    let body = match system {
        System::Coffer => {
            let set: Vec<Value> = (0..SECRETS_PER_WRITE)
                .map(|k| json!({"name": format!("K{k}"), "value": rng.value()}))
                .collect();
            json!({"set": set, "stage": stage})
        }
        System::Openbao => {
            let data: serde_json::Map<String, Value> = (0..SECRETS_PER_WRITE)
                .map(|k| (format!("K{k}"), Value::String(rng.value())))
                .collect();
            json!({ "data": data })
        }
    };
    serde_json::to_vec(&body).expect("serializable")
}

/// The result of one request.
struct Outcome {
    status: u16,
    body: Bytes,
}

/// Sends one request on a connection, reconnecting once if the connection was closed.
async fn send(
    target: &Target,
    conn: &mut Option<Sender>,
    req: Request<Full<Bytes>>,
) -> Result<Outcome, Error> {
    if conn.as_ref().is_none_or(|c| c.is_closed()) {
        *conn = Some(target.connect().await?);
    }
    let sender = conn.as_mut().expect("connected");
    let result = async {
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, Error>(Outcome { status, body })
    }
    .await;
    if result.is_err() {
        *conn = None;
    }
    result
}

fn is_ok(status: u16) -> bool {
    (200..300).contains(&status)
}

/// Errors of a run, by kind, with the first body of each for diagnosis.
#[derive(Default)]
struct Errors {
    count: u64,
    by_kind: BTreeMap<String, (u64, String)>,
}

impl Errors {
    fn add(&mut self, kind: String, detail: impl FnOnce() -> String) {
        self.count += 1;
        self.by_kind.entry(kind).or_insert_with(|| (0, detail())).0 += 1;
    }
    fn merge(&mut self, other: Errors) {
        self.count += other.count;
        for (k, (n, d)) in other.by_kind {
            self.by_kind.entry(k).or_insert((0, d)).0 += n;
        }
    }
    fn to_json(&self) -> Value {
        let kinds: serde_json::Map<String, Value> = self
            .by_kind
            .iter()
            .map(|(k, (n, d))| (k.clone(), json!({"count": n, "first": d})))
            .collect();
        json!(kinds)
    }
}

fn clip(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned()
}

// ---------------------------------------------------------------------------------------------
// /proc readings

const CLK_TCK: f64 = 100.0; // USER_HZ: 100 on every Linux architecture we run on.

/// CPU seconds (user + system) of a process, all threads.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / CLK_TCK)
}

/// Busy CPU seconds of the whole machine (all cores), from /proc/stat.
fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy =
        f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)? + f.get(7).unwrap_or(&0.0);
    Some(busy / CLK_TCK)
}

/// A field of /proc/PID/status in KiB (VmRSS, VmHWM).
fn status_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let v = l.strip_prefix(field)?.strip_prefix(':')?;
        v.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

// ---------------------------------------------------------------------------------------------
// preload: the bulk-load workload

async fn preload(args: &Args) -> Result<Value, Error> {
    let system = System::parse(args.get("system")?)?;
    let target = Arc::new(Target::new(system, args.get("url")?, &token(args)?)?);
    let apps: usize = args.num("apps", None)?;
    let conns: usize = args.num("conns", Some(16))?;
    let server_pid = args.0.get("server-pid").cloned();

    let next = Arc::new(AtomicUsize::new(1));
    let done = Arc::new(AtomicU64::new(0));
    let cpu0 = server_pid.as_deref().and_then(cpu_seconds);
    let me0 = cpu_seconds("self");
    let busy0 = machine_busy_seconds();
    let t0 = Instant::now();

    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                eprintln!(
                    "  preload: {} apps loaded, {:.0} s",
                    done.load(Ordering::Relaxed),
                    t0.elapsed().as_secs_f64()
                );
            }
        })
    };

    let mut tasks = Vec::new();
    for c in 0..conns {
        let (target, next, done) = (target.clone(), next.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(c as u64 + 1);
            let mut conn = None;
            let mut errors = Errors::default();
            let mut requests = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i > apps {
                    break;
                }
                let app = format!("app-{i}");
                let reqs = match target.system {
                    System::Coffer => vec![
                        target.request(
                            Method::POST,
                            "/v1/apps",
                            Some(serde_json::to_vec(&json!({"name": app})).expect("json")),
                        ),
                        // A plain `secrets set` of an app without machines: deployed at once.
                        target.request(
                            Method::POST,
                            &format!("/v1/apps/{app}/secrets"),
                            Some(write_body(System::Coffer, &mut rng, false)),
                        ),
                    ],
                    System::Openbao => vec![target.request(
                        Method::POST,
                        &format!("/v1/secret/data/{app}"),
                        Some(write_body(System::Openbao, &mut rng, false)),
                    )],
                };
                for req in reqs {
                    requests += 1;
                    match send(&target, &mut conn, req).await {
                        Ok(o) if is_ok(o.status) => {}
                        Ok(o) => errors.add(format!("http {}", o.status), || clip(&o.body)),
                        Err(e) => errors.add("transport".into(), || e.to_string()),
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (requests, errors)
        }));
    }
    let mut requests = 0;
    let mut errors = Errors::default();
    for t in tasks {
        let (r, e) = t.await?;
        requests += r;
        errors.merge(e);
    }
    let seconds = t0.elapsed().as_secs_f64();
    progress.abort();
    let mut out = json!({
        "kind": "bulk_load",
        "system": system.name(),
        "apps": apps,
        "secrets": apps * SECRETS_PER_WRITE,
        "conns": conns,
        "requests": requests,
        "errors": errors.count,
        "error_kinds": errors.to_json(),
        "seconds": seconds,
    });
    let client_cpu = me0.zip(cpu_seconds("self")).map(|(a, b)| b - a);
    out["client_cpu_s"] = json!(client_cpu);
    let machine_busy = busy0.zip(machine_busy_seconds()).map(|(a, b)| b - a);
    out["machine_busy_cpu_s"] = json!(machine_busy);
    if let Some(pid) = server_pid.as_deref() {
        let server_cpu = cpu0.zip(cpu_seconds(pid)).map(|(a, b)| b - a);
        out["server_cpu_s"] = json!(server_cpu);
        if let (Some(m), Some(s), Some(c)) = (machine_busy, server_cpu, client_cpu) {
            out["other_cpu_s"] = json!((m - s - c).max(0.0));
        }
        out["rss_kib"] = json!(status_kib(pid, "VmRSS"));
        out["hwm_kib"] = json!(status_kib(pid, "VmHWM"));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// run: a timed closed-loop workload

/// What each request of a workload is.
enum Plan {
    Write,
    List,
    /// The same batch-decrypt body each time (OpenBao transit).
    TransitDecrypt(Bytes),
    /// Signed decrypt requests of one machine's boot (coffer's vault), each with its own
    /// one-time key, used in turn.
    CofferBoot(Vec<Bytes>, std::sync::atomic::AtomicUsize),
}

impl Plan {
    fn request(&self, target: &Target, rng: &mut Rng, apps: usize) -> Request<Full<Bytes>> {
        let app = rng.app(apps);
        match (self, target.system) {
            (Plan::Write, System::Coffer) => target.request(
                Method::POST,
                &format!("/v1/apps/app-{app}/secrets"),
                Some(write_body(System::Coffer, rng, true)),
            ),
            (Plan::Write, System::Openbao) => target.request(
                Method::POST,
                &format!("/v1/secret/data/app-{app}"),
                Some(write_body(System::Openbao, rng, false)),
            ),
            (Plan::List, System::Coffer) => {
                target.request(Method::GET, &format!("/v1/apps/app-{app}/secrets"), None)
            }
            (Plan::List, System::Openbao) => {
                target.request(Method::GET, &format!("/v1/secret/metadata/app-{app}"), None)
            }
            (Plan::CofferBoot(bodies, next), _) => {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % bodies.len();
                let mut req = target.request(Method::POST, "/v1/decrypt", None);
                req.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                *req.body_mut() = Full::new(bodies[i].clone());
                req
            }
            (Plan::TransitDecrypt(body), _) => {
                let mut req = target.request(
                    Method::POST,
                    &format!("/v1/transit/decrypt/{TRANSIT_KEY}"),
                    None,
                );
                req.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                *req.body_mut() = Full::new(body.clone());
                req
            }
        }
    }
}

/// One-time setup of the OpenBao boot-decrypt workload: a transit key and 50 ciphertexts of
/// 40-byte values, encrypted once; every request then decrypts all 50 in one batch.
/// One-time setup of coffer's boot-decrypt workload, done as a host agent does it: an app
/// with 50 secrets, a host registered with its own Ed25519 key, a machine of the app placed on
/// that host, and one boot grant (machine token + ciphertexts). Then 256 decrypt requests, each
/// with a fresh one-time X25519 key and the host's signature, used in turn (the vault accepts a
/// request for a minute; each answer is sealed to its request's one-time key).
async fn coffer_boot_setup(api: &Target) -> Result<Vec<Bytes>, Error> {
    use coffer_crypto::machine_token::{decrypt_request_message, HostKey};
    let mut conn = None;
    let call = |method: Method, path: String, body: Option<Value>, auth: Option<String>| {
        let mut req = api.request(method, &path, body.map(|b| serde_json::to_vec(&b).expect("json")));
        if let Some(token) = auth {
            req.headers_mut().insert(
                AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
            );
        }
        req
    };
    let mut rng = Rng::new(11);
    let app = format!("boot-bench-{}", std::process::id());
    let expect = |o: Outcome, what: &str| -> Result<Value, Error> {
        if !is_ok(o.status) {
            return Err(format!("{what}: http {}: {}", o.status, clip(&o.body)).into());
        }
        Ok(serde_json::from_slice(&o.body).unwrap_or(Value::Null))
    };
    expect(send(api, &mut conn, call(Method::POST, "/v1/apps".into(), Some(json!({"name": app})), None)).await?, "create app")?;
    let set: Vec<Value> = (0..BOOT_SECRETS).map(|i| json!({"name": format!("K{i}"), "value": rng.value()})).collect();
    expect(
        send(api, &mut conn, call(Method::POST, format!("/v1/apps/{app}/secrets"), Some(json!({"set": set})), None)).await?,
        "set secrets",
    )?;
    let host_key = HostKey::generate();
    let host = expect(
        send(
            api,
            &mut conn,
            call(
                Method::POST,
                "/v1/hosts".into(),
                Some(json!({"name": "bench-host", "address": "http://127.0.0.1:9", "public_key": host_key.public_key_hex()})),
                None,
            ),
        )
        .await?,
        "register host",
    )?;
    let host_id = host["host_id"].as_str().ok_or("no host id")?.to_string();
    let host_token = host["host_token"].as_str().ok_or("no host token")?.to_string();
    // The API places a machine on the live host with the fewest machines; `cofferd dev`'s own
    // host comes first, so machines are created until one lands on the bench host.
    let mut machine = None;
    for _ in 0..4 {
        let m = expect(
            send(
                api,
                &mut conn,
                call(Method::POST, format!("/v1/apps/{app}/machines"), Some(json!({"command": ["sleep", "1000000"]})), None),
            )
            .await?,
            "create machine",
        )?;
        if m["host"] == "bench-host" {
            machine = m["id"].as_str().map(str::to_string);
            break;
        }
    }
    let machine_id = machine.ok_or("no machine was placed on the bench host")?;
    let grant = expect(
        send(
            api,
            &mut conn,
            call(Method::POST, format!("/v1/hosts/{host_id}/machines/{machine_id}/boot"), None, Some(host_token)),
        )
        .await?,
        "boot grant",
    )?;
    let token = grant["machine_token"].as_str().ok_or("no machine token")?.to_string();
    let cts = grant["ciphertexts"].as_array().ok_or("no ciphertexts")?.clone();
    if cts.len() != BOOT_SECRETS {
        return Err(format!("the grant has {} ciphertexts, not {BOOT_SECRETS}", cts.len()).into());
    }
    let listed: Vec<(String, i64, String)> = cts
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_string(),
                c["version"].as_i64().unwrap_or_default(),
                c["ciphertext"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let listed_refs: Vec<(&str, i64, &str)> = listed.iter().map(|(n, v, c)| (n.as_str(), *v, c.as_str())).collect();
    let issued_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut bodies = Vec::with_capacity(256);
    for _ in 0..256 {
        let (_sk, pk) = coffer_crypto::PrivateKey::generate();
        let pk_hex = hex_encode(&pk.to_bytes());
        let msg = decrypt_request_message(&token, &machine_id, &pk_hex, issued_at, &listed_refs);
        let body = json!({
            "machine_token": token,
            "machine_id": machine_id,
            "one_time_public_key": pk_hex,
            "ciphertexts": cts,
            "issued_at": issued_at,
            "host_signature": host_key.sign_hex(&msg),
        });
        bodies.push(Bytes::from(serde_json::to_vec(&body)?));
    }
    Ok(bodies)
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn transit_setup(target: &Target) -> Result<Bytes, Error> {
    let mut conn = None;
    let o = send(
        target,
        &mut conn,
        target.request(
            Method::POST,
            &format!("/v1/transit/keys/{TRANSIT_KEY}"),
            Some(b"{}".to_vec()),
        ),
    )
    .await?;
    if !is_ok(o.status) {
        return Err(format!(
            "creating the transit key: http {}: {}",
            o.status,
            clip(&o.body)
        )
        .into());
    }
    let mut rng = Rng::new(7);
    let batch: Vec<Value> = (0..BOOT_SECRETS)
        .map(|_| json!({ "plaintext": b64(rng.value().as_bytes()) }))
        .collect();
    let o = send(
        target,
        &mut conn,
        target.request(
            Method::POST,
            &format!("/v1/transit/encrypt/{TRANSIT_KEY}"),
            Some(serde_json::to_vec(&json!({ "batch_input": batch }))?),
        ),
    )
    .await?;
    if !is_ok(o.status) {
        return Err(format!("transit encrypt: http {}: {}", o.status, clip(&o.body)).into());
    }
    let v: Value = serde_json::from_slice(&o.body)?;
    let cts: Vec<Value> = v["data"]["batch_results"]
        .as_array()
        .ok_or("transit encrypt: no batch_results")?
        .iter()
        .map(|r| json!({ "ciphertext": r["ciphertext"] }))
        .collect();
    if cts.len() != BOOT_SECRETS || cts.iter().any(|c| !c["ciphertext"].is_string()) {
        return Err("transit encrypt: unexpected batch_results".into());
    }
    Ok(Bytes::from(serde_json::to_vec(
        &json!({ "batch_input": cts }),
    )?))
}

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn new_histogram() -> hdrhistogram::Histogram<u64> {
    // 1 µs .. 60 s, 3 significant digits.
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

async fn run(args: &Args) -> Result<Value, Error> {
    let system = System::parse(args.get("system")?)?;
    let workload = Workload::parse(args.get("workload")?)?;
    let target = Arc::new(Target::new(system, args.get("url")?, &token(args)?)?);
    let apps: usize = args.num("apps", None)?;
    let conns: usize = args.num("conns", None)?;
    let duration = Duration::from_secs_f64(args.num("duration", None)?);
    let warmup = Duration::from_secs_f64(args.num("warmup", Some(1.0))?);
    let server_pid = args.0.get("server-pid").cloned();

    let base = json!({
        "kind": "workload",
        "workload": workload.name(),
        "system": system.name(),
        "conns": conns,
        "round": args.num::<u32>("round", Some(1))?,
    });
    let plan = match (workload, system) {
        (Workload::Write, _) => Plan::Write,
        (Workload::List, _) => Plan::List,
        (Workload::BootDecrypt, System::Openbao) => {
            Plan::TransitDecrypt(transit_setup(&target).await?)
        }
        (Workload::BootDecrypt, System::Coffer) => {
            let bodies = coffer_boot_setup(&target).await?;
            Plan::CofferBoot(bodies, std::sync::atomic::AtomicUsize::new(0))
        }
    };
    // coffer's boot decrypt goes to its vault, not its API.
    let target = match (&plan, args.0.get("vault-url")) {
        (Plan::CofferBoot(..), Some(vault)) => Arc::new(Target::new(system, vault, &token(args)?)?),
        (Plan::CofferBoot(..), None) => return Err("--vault-url is needed for coffer's boot-decrypt".into()),
        _ => target,
    };
    let plan = Arc::new(plan);
    let items_per_req = match workload {
        Workload::BootDecrypt => BOOT_SECRETS,
        _ => 1,
    };

    // Connect everything first, so connection setup is not part of the measurement.
    let mut senders = Vec::with_capacity(conns);
    for _ in 0..conns {
        senders.push(Some(target.connect().await?));
    }

    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let cpu_mark = Arc::new(std::sync::Mutex::new((
        None::<f64>,
        None::<f64>,
        None::<f64>,
    )));
    {
        // Server and client CPU at the start of the measured window.
        let (cpu_mark, pid) = (cpu_mark.clone(), server_pid.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            *cpu_mark.lock().expect("lock") = (
                pid.as_deref().and_then(cpu_seconds),
                cpu_seconds("self"),
                machine_busy_seconds(),
            );
        });
    }

    let mut tasks = Vec::with_capacity(conns);
    for (c, mut conn) in senders.into_iter().enumerate() {
        let (target, plan) = (target.clone(), plan.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(c as u64 + 1);
            let mut hist = new_histogram();
            let mut errors = Errors::default();
            let mut total = 0u64;
            loop {
                if Instant::now() >= end {
                    break;
                }
                let req = plan.request(&target, &mut rng, apps);
                let t0 = Instant::now();
                let res = send(&target, &mut conn, req).await;
                let t1 = Instant::now();
                total += 1;
                if t1 < measure_from || t1 > end {
                    continue;
                }
                match res {
                    Ok(o) if is_ok(o.status) => {
                        let us = (t1 - t0).as_micros().max(1) as u64;
                        hist.saturating_record(us);
                    }
                    Ok(o) => errors.add(format!("http {}", o.status), || clip(&o.body)),
                    Err(e) => errors.add("transport".into(), || e.to_string()),
                }
            }
            (hist, errors, total)
        }));
    }
    let mut hist = new_histogram();
    let mut errors = Errors::default();
    let mut sent = 0;
    for t in tasks {
        let (h, e, n) = t.await?;
        hist.add(h).expect("same bounds");
        errors.merge(e);
        sent += n;
    }
    let (cpu0, me0, busy0) = *cpu_mark.lock().expect("lock");
    // The window closed at `end`; CPU read now slightly overcounts the tail, which is
    // negligible against a window of seconds.
    let server_cpu = server_pid
        .as_deref()
        .and_then(cpu_seconds)
        .zip(cpu0)
        .map(|(b, a)| b - a);
    let client_cpu = cpu_seconds("self").zip(me0).map(|(b, a)| b - a);
    let machine_busy = machine_busy_seconds().zip(busy0).map(|(b, a)| b - a);

    let secs = duration.as_secs_f64();
    let ok = hist.len();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let mut out = base;
    let o = out.as_object_mut().expect("object");
    o.insert("seconds".into(), json!(secs));
    o.insert("requests".into(), json!(ok));
    o.insert("requests_sent_incl_warmup".into(), json!(sent));
    o.insert("errors".into(), json!(errors.count));
    o.insert("error_kinds".into(), errors.to_json());
    o.insert("rps".into(), json!(ok as f64 / secs));
    o.insert("items_per_req".into(), json!(items_per_req));
    o.insert(
        "items_per_s".into(),
        json!((ok as usize * items_per_req) as f64 / secs),
    );
    if ok > 0 {
        o.insert("p50_ms".into(), json!(ms(0.50)));
        o.insert("p90_ms".into(), json!(ms(0.90)));
        o.insert("p99_ms".into(), json!(ms(0.99)));
        o.insert("p999_ms".into(), json!(ms(0.999)));
        o.insert("max_ms".into(), json!(hist.max() as f64 / 1000.0));
        o.insert("mean_ms".into(), json!(hist.mean() / 1000.0));
    }
    o.insert("client_cpu_s".into(), json!(client_cpu));
    o.insert("machine_busy_cpu_s".into(), json!(machine_busy));
    if let Some(pid) = server_pid.as_deref() {
        o.insert("server_cpu_s".into(), json!(server_cpu));
        // CPU used by anything else on the machine during the window: other work competing
        // with the benchmark (the figures of a run with much of it are not trustworthy).
        if let (Some(m), Some(s), Some(c)) = (machine_busy, server_cpu, client_cpu) {
            o.insert("other_cpu_s".into(), json!((m - s - c).max(0.0)));
        }
        if let Some(cpu) = server_cpu.filter(|_| ok > 0) {
            o.insert("server_cpu_us_per_req".into(), json!(cpu * 1e6 / ok as f64));
        }
        o.insert("rss_kib".into(), json!(status_kib(pid, "VmRSS")));
        o.insert("hwm_kib".into(), json!(status_kib(pid, "VmHWM")));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------

const USAGE: &str = "usage:
  coffer-loadgen preload --system coffer|openbao --url http://127.0.0.1:PORT --token-file F --apps N
                         [--conns 16] [--server-pid PID]
  coffer-loadgen run     --system coffer|openbao --workload write|list|boot-decrypt
                         --url http://127.0.0.1:PORT --token-file F --apps N --conns C --duration SECS
                         [--warmup 1] [--server-pid PID] [--threads 1] [--round N]
(--token T instead of --token-file F works too, but shows the token in `ps`.)
Prints one JSON object on stdout.";

fn main() -> std::process::ExitCode {
    let mut argv = std::env::args().skip(1);
    let cmd = argv.next().unwrap_or_default();
    if cmd.is_empty() || cmd == "--help" || cmd == "-h" {
        println!("{USAGE}");
        return std::process::ExitCode::SUCCESS;
    }
    let result = (|| -> Result<Value, Error> {
        let args = Args::parse(argv)?;
        // One thread by default: the machine has 2 cores and the server needs them more.
        let threads: usize = args.num("threads", Some(1))?;
        let rt = if threads <= 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()?
        };
        rt.block_on(async {
            match cmd.as_str() {
                "preload" => preload(&args).await,
                "run" => run(&args).await,
                other => Err(format!("unknown command {other:?}\n{USAGE}").into()),
            }
        })
    })();
    match result {
        Ok(v) => {
            println!("{v}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("coffer-loadgen: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
