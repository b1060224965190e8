//! Harness for end-to-end tests: starts the real `cofferd dev` as a child process with its own
//! data dir and config dir, and runs the real `coffer` binary against it.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where cargo put this workspace's binaries: next to the `deps` dir of this test binary.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built; run `cargo build --workspace --bins` first (scripts/test.sh does)",
        p.display()
    );
    p
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// A database for one test: SQLite in the data dir, or a fresh PostgreSQL database.
/// Returns `None` when PostgreSQL is wanted but unavailable outside CI (in CI it panics).
pub async fn database_url(engine: Engine) -> Option<Option<String>> {
    match engine {
        Engine::Sqlite => Some(None),
        Engine::Postgres => {
            let admin = coffer_store::testing::require_postgres()?;
            Some(Some(
                coffer_store::testing::fresh_postgres_database(&admin).await,
            ))
        }
    }
}

pub struct Dev {
    pub root: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub config_home: PathBuf,
    pub work_dir: PathBuf,
    pub capture_dir: PathBuf,
    pub database_url: Option<String>,
    pub api_url: String,
    pub vault_url: String,
    child: Option<Child>,
    starts: usize,
    env: Vec<(String, String)>,
}

impl Dev {
    /// Starts `cofferd dev` at the most verbose log level.
    pub fn start(database_url: Option<String>) -> Dev {
        Self::start_with_env(database_url, &[])
    }

    /// [`Dev::start`] with more environment for `cofferd dev` (kept for restarts).
    pub fn start_with_env(database_url: Option<String>, env: &[(&str, &str)]) -> Dev {
        let root = tempfile::tempdir().expect("tempdir");
        let data_dir = root.path().join("data");
        let config_home = root.path().join("config");
        let work_dir = root.path().join("work");
        let capture_dir = root.path().join("capture");
        for d in [&config_home, &work_dir, &capture_dir] {
            std::fs::create_dir_all(d).unwrap();
        }
        let mut dev = Dev {
            root,
            data_dir,
            config_home,
            work_dir,
            capture_dir,
            database_url,
            api_url: String::new(),
            vault_url: String::new(),
            child: None,
            starts: 0,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        dev.spawn();
        dev
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let out = self
            .capture_dir
            .join(format!("cofferd-{}.stdout", self.starts));
        let err = self
            .capture_dir
            .join(format!("cofferd-{}.stderr", self.starts));
        let mut cmd = Command::new(bin("cofferd"));
        cmd.arg("dev")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("XDG_CONFIG_HOME", &self.config_home)
            .env("COFFER_LOG", "trace")
            .env_remove("COFFER_DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap());
        if let Some(url) = &self.database_url {
            cmd.arg("--database-url").arg(url);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        self.child = Some(cmd.spawn().expect("spawn cofferd dev"));
        self.api_url = wait_for_api_url(&out, &err, self.child.as_mut().unwrap());
        self.vault_url = printed_url(&out, "vault:").expect("cofferd dev prints the vault URL");
        wait_ready(&self.api_url);
    }

    /// Stops the daemon: SIGTERM (graceful) or SIGKILL.
    pub fn stop(&mut self, kill: bool) {
        if let Some(mut child) = self.child.take() {
            let sig = if kill { "-KILL" } else { "-TERM" };
            let _ = Command::new("kill")
                .arg(sig)
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The running daemon's process ID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("cofferd dev is running").id()
    }

    pub fn restart(&mut self) {
        self.stop(false);
        self.spawn();
    }

    /// The real CLI, configured only by the file `cofferd dev` wrote.
    pub fn coffer(&self) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::new(bin("coffer"));
        c.current_dir(&self.work_dir)
            .env("XDG_CONFIG_HOME", &self.config_home)
            .env("HOME", self.root.path())
            .env_remove("COFFER_APP")
            .env_remove("COFFER_API_URL")
            .env_remove("COFFER_API_TOKEN")
            .timeout(Duration::from_secs(60));
        c
    }

    /// Runs the CLI and records its output in the capture dir, so that the sentinel scan
    /// sees everything every command printed.
    pub fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
        let mut c = self.coffer();
        self.record(&mut c, args, stdin)
    }

    /// Like [`Dev::run`], but authenticated with `token` (through `COFFER_API_TOKEN`, which
    /// overrides the config file's admin token).
    pub fn run_as(&self, token: &str, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
        let mut c = self.coffer();
        c.env("COFFER_API_TOKEN", token);
        self.record(&mut c, args, stdin)
    }

    /// Runs a prepared CLI command with `args` and records its output in the capture dir.
    pub fn record(
        &self,
        c: &mut assert_cmd::Command,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> std::process::Output {
        c.args(args);
        if let Some(input) = stdin {
            c.write_stdin(input.to_vec());
        }
        let out = c.output().expect("run coffer");
        let n = std::fs::read_dir(&self.capture_dir).unwrap().count();
        std::fs::write(
            self.capture_dir.join(format!("cli-{n}.stdout")),
            &out.stdout,
        )
        .unwrap();
        std::fs::write(
            self.capture_dir.join(format!("cli-{n}.stderr")),
            &out.stderr,
        )
        .unwrap();
        out
    }

    /// Runs the CLI and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args, None);
        assert!(
            out.status.success(),
            "coffer {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn admin_token(&self) -> String {
        let text = std::fs::read_to_string(self.config_home.join("coffer/config.toml")).unwrap();
        let v: toml_lite::Config = toml_lite::parse(&text);
        v.token
    }

    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join("coffer.db")
    }

    /// The store's URL: the test's PostgreSQL database, or the SQLite file in the data dir.
    pub fn store_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.sqlite_path().display()))
    }

    /// A connection to the store behind coffer's back (sqlx `Any`), for tests that inspect or
    /// edit rows directly.
    pub async fn raw_pool(&self) -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&self.store_url())
            .await
            .expect("connect to the store")
    }

    /// Keeps `bytes` in the capture dir under `name`, so that the sentinel scan covers them.
    pub fn capture(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.capture_dir.join(name), bytes).unwrap();
    }
}

/// The exit code of a finished CLI run.
pub fn code(out: &std::process::Output) -> i32 {
    out.status.code().expect("exit code")
}

pub fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// A port that was free a moment ago (bind to port 0, read it, release it).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// The permission bits of a file or directory.
pub fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Polls `url`'s `/readyz` like [`wait_ready`], but gives up at once (with `log`'s contents)
/// if `child` exits first.
pub fn wait_ready_child(url: &str, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = url.trim_start_matches("http://").to_string();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "daemon for {url} exited with {status}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if is_ready(&addr) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} never became ready: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to `secs` for `child` to exit; kills it and returns `None` if it does not.
pub fn wait_exit(child: &mut Child, secs: u64) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

impl Drop for Dev {
    fn drop(&mut self) {
        self.stop(false);
    }
}

/// The URL `cofferd dev` printed on the line starting with `label`.
fn printed_url(out: &Path, label: &str) -> Option<String> {
    let text = std::fs::read_to_string(out).ok()?;
    let line = text.lines().find(|l| l.trim_start().starts_with(label))?;
    line.split_whitespace().nth(1).map(str::to_string)
}

/// Polls `cond` every 50 ms until it returns `Some`, or panics with `what` after `secs`.
pub fn wait_for<T>(secs: u64, what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_for_api_url(out: &Path, err: &Path, child: &mut Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(out) {
            f.read_to_string(&mut s).unwrap();
        }
        if let Some(line) = s.lines().find(|l| l.trim_start().starts_with("API:")) {
            return line.split_whitespace().nth(1).unwrap().to_string();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "cofferd dev exited with {status}: {}",
                std::fs::read_to_string(err).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "cofferd dev did not print its URL"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One `GET /readyz` on `addr` (host:port): true on a 200.
fn is_ready(addr: &str) -> bool {
    use std::io::Write;
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = write!(
        s,
        "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.starts_with("HTTP/1.1 200")
}

/// Polls `/readyz` instead of sleeping.
pub fn wait_ready(api_url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = api_url.trim_start_matches("http://").to_string();
    loop {
        if is_ready(&addr) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "API at {api_url} never became ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every file under `dirs` (recursively), for scans.
pub fn all_files(dirs: &[&Path]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The forms a leaked value could take: raw, hex (both cases), base64 (standard, URL-safe,
/// with and without padding) — also shifted, since base64 of a value inside a longer buffer
/// depends on its alignment.
pub fn leak_forms(sentinel: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    let mut forms = vec![
        sentinel.to_vec(),
        hex::encode(sentinel).into_bytes(),
        hex::encode_upper(sentinel).into_bytes(),
    ];
    for e in engines {
        for shift in 0..3 {
            let mut buf = vec![b'x'; shift];
            buf.extend_from_slice(sentinel);
            let enc = e.encode(&buf);
            // Skip the characters that depend on the prefix; keep a long stable middle.
            let skip = (shift * 4).div_ceil(3) + 1;
            let stable = &enc.as_bytes()[skip.min(enc.len())..enc.len().saturating_sub(4)];
            if stable.len() >= 16 {
                forms.push(stable.to_vec());
            }
        }
    }
    forms
}

/// Returns (file, form index) for every occurrence of any form of any sentinel.
///
/// Each file is read once and every form of every sentinel is looked for in one pass (forms
/// are indexed by their first 8 bytes), so that scanning megabytes of trace logs and database
/// files for a hundred sentinels stays fast; forms shorter than 8 bytes are searched naively.
pub fn scan(files: &[PathBuf], sentinels: &[Vec<u8>]) -> Vec<String> {
    use std::collections::{BTreeSet, HashMap};
    const K: usize = 8;
    // (sentinel index, form index, form)
    let mut patterns: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    for (si, s) in sentinels.iter().enumerate() {
        for (fi, form) in leak_forms(s).into_iter().enumerate() {
            patterns.push((si, fi, form));
        }
    }
    let mut first_two = vec![false; 1 << 16];
    let mut by_prefix: HashMap<[u8; K], Vec<usize>> = HashMap::new();
    let mut short = Vec::new();
    for (pi, (_, _, form)) in patterns.iter().enumerate() {
        if form.len() >= K {
            first_two[usize::from(form[0]) << 8 | usize::from(form[1])] = true;
            by_prefix
                .entry(form[..K].try_into().unwrap())
                .or_default()
                .push(pi);
        } else {
            short.push(pi);
        }
    }
    let mut hits = Vec::new();
    for f in files {
        let Ok(bytes) = std::fs::read(f) else {
            continue;
        };
        let mut found: BTreeSet<(usize, usize)> = BTreeSet::new();
        if bytes.len() >= K {
            for i in 0..=bytes.len() - K {
                if !first_two[usize::from(bytes[i]) << 8 | usize::from(bytes[i + 1])] {
                    continue;
                }
                let key: [u8; K] = bytes[i..i + K].try_into().unwrap();
                if let Some(list) = by_prefix.get(&key) {
                    for &pi in list {
                        let (si, fi, form) = &patterns[pi];
                        if bytes[i..].starts_with(form) {
                            found.insert((*si, *fi));
                        }
                    }
                }
            }
        }
        for &pi in &short {
            let (si, fi, form) = &patterns[pi];
            if !form.is_empty() && bytes.windows(form.len()).any(|w| w == form.as_slice()) {
                found.insert((*si, *fi));
            }
        }
        for (si, fi) in found {
            let s = &sentinels[si];
            hits.push(format!(
                "{} (form {fi} of {:?}…)",
                f.display(),
                String::from_utf8_lossy(&s[..48.min(s.len())])
            ));
        }
    }
    hits
}

/// Random printable sentinel that cannot occur by chance.
pub fn sentinel(tag: &str) -> Vec<u8> {
    use rand::Rng;
    let r: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("SENTINEL{tag}{r}").into_bytes()
}

mod toml_lite {
    pub struct Config {
        pub token: String,
    }
    pub fn parse(text: &str) -> Config {
        let token = text
            .lines()
            .find_map(|l| l.strip_prefix("token = "))
            .map(|v| v.trim().trim_matches('"').to_string())
            .expect("token in config");
        Config { token }
    }
}

/// Every row of every coffer table as text (bytes as hex), so a PostgreSQL store can be
/// scanned like SQLite files are.
pub async fn dump_postgres(url: &str) -> String {
    use sqlx::Row;
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("connect");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("list tables");
    let mut out = String::new();
    for t in tables {
        let sql = format!("SELECT row_to_json(x)::text AS j FROM \"{t}\" x");
        for row in sqlx::query(&sql)
            .fetch_all(&pool)
            .await
            .expect("dump table")
        {
            let j: String = row.try_get("j").unwrap();
            out.push_str(&t);
            out.push(' ');
            out.push_str(&j);
            out.push('\n');
        }
    }
    pool.close().await;
    out
}

/// PIDs of processes whose command line contains `marker`.
pub fn pids_with(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(marker) {
                out.push(pid);
            }
        }
    }
    out
}

/// A `sleep` argument no other process has, so a workload can be found in `/proc`.
pub fn unique_sleep() -> String {
    use rand::Rng;
    format!(
        "1000.{:09}",
        rand::thread_rng().gen_range(0..1_000_000_000u32)
    )
}
