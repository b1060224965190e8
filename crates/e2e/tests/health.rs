//! Health checks (issue #4, item 2; PRODUCT.md §4): `machines run --check-http PORT/PATH` or
//! `--check-tcp PORT`. A machine that fails its check inside a release's crash window fails
//! the release, which is rolled back like a crash; outside a release it is shown `unhealthy`
//! and keeps running. Real daemon, real CLI, a real HTTP server as the workload that answers
//! 500 when a secret is "bad" — and does not exit.

mod common;

use common::{free_port, json, stderr, wait_for, Dev, Engine};
use serde_json::Value;
use std::io::{Read as _, Write as _};
use std::time::Duration;

/// The workload's interpreter: the agent's PATH is /usr/local/bin:/usr/bin:/bin, so name one
/// there explicitly (not a pyenv shim from the test's own PATH).
fn python() -> Option<&'static str> {
    ["/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

/// Serves GET /healthz on 127.0.0.1:$PORT: 500 when MODE is "bad", else 200. Runs until
/// stopped whatever MODE is.
const SERVER: &str = r#"
import http.server, os
code = 500 if os.environ.get("MODE") == "bad" else 200
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        c = code if self.path == "/healthz" else 404
        self.send_response(c)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
print("serving", flush=True)
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

fn machines(dev: &Dev, app: &str) -> Vec<Value> {
    json(&dev.ok(&["machines", "list", "-a", app, "--json"]))
        .as_array()
        .unwrap()
        .clone()
}

fn releases(dev: &Dev) -> Vec<Value> {
    json(&dev.ok(&["releases", "list", "-a", "web", "--json"]))
        .as_array()
        .unwrap()
        .clone()
}

fn only_machine_in(dev: &Dev, app: &str, state: &str) -> Option<Value> {
    match machines(dev, app).as_slice() {
        [m] if m["state"] == state => Some(m.clone()),
        _ => None,
    }
}

/// The status code the workload answers the test itself.
fn status_of(port: u16) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.split(' ').nth(1)?.parse().ok()
}

async fn failing_check_fails_the_release(engine: Engine) {
    let Some(py) = python() else {
        panic!("health checks e2e needs python3 in /usr/bin, /usr/local/bin or /bin");
    };
    let Some(db) = common::database_url(engine).await else {
        return;
    };
    let dev = Dev::start(db);
    dev.ok(&["apps", "create", "web"]);
    dev.ok(&["apps", "update", "web", "--crash-window", "3s"]);
    dev.ok(&["secrets", "set", "-a", "web", "MODE=good"]);

    // Invalid checks are refused before anything is created.
    for flag in [
        &["--check-http", "healthz"][..],
        &["--check-http", "8080/a b"][..],
        &["--check-tcp", "0"][..],
    ] {
        let mut args = vec!["machines", "run", "-a", "web"];
        args.extend_from_slice(flag);
        args.extend_from_slice(&["--", "sleep", "1"]);
        let out = dev.run(&args, None);
        assert_eq!(out.status.code(), Some(7), "{flag:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(flag[0]), "{}", stderr(&out));
    }
    assert!(machines(&dev, "web").is_empty());

    let port = free_port();
    let env = format!("PORT={port}");
    let check = format!("{port}/healthz");
    let m = json(&dev.ok(&[
        "machines",
        "run",
        "-a",
        "web",
        "--json",
        "--env",
        &env,
        "--check-http",
        &check,
        "--",
        py,
        "-c",
        SERVER,
    ]));
    assert_eq!(
        m["check"],
        serde_json::json!({"type": "http", "port": port, "path": "/healthz"})
    );
    let id = m["id"].as_str().unwrap().to_string();
    wait_for(30, "the machine to start", || {
        only_machine_in(&dev, "web", "started")
    });
    wait_for(10, "the workload to serve", || {
        (status_of(port)? == 200).then_some(())
    });
    // Healthy: several checks pass and it stays `started`.
    std::thread::sleep(Duration::from_millis(2500));
    let ms = machines(&dev, "web");
    assert_eq!(ms[0]["state"], "started", "{ms:?}");
    assert_eq!(ms[0]["check"]["port"], port);
    let before = ms[0]["secrets_version"].clone();

    // A bad value: the workload keeps running but answers 500; the release fails loudly.
    let out = dev.run(&["secrets", "set", "-a", "web", "MODE=bad"], None);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(8),
        "a failed release exits 8: {err}"
    );
    assert!(
        err.contains("error:") && err.contains("health check"),
        "{err}"
    );
    assert!(err.contains("status 500"), "{err}");
    assert!(!err.contains("MODE=bad"), "{err}");
    let rs = releases(&dev);
    assert_eq!(rs[0]["status"], "rolled_back", "{rs:?}");
    assert_eq!(rs[1]["status"], "failed", "{rs:?}");
    let reason = rs[1]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!(
            "[{id}] failed its health check (http check GET :{port}/healthz: status 500)"
        )) && reason.contains("s after it started"),
        "{reason}"
    );
    // Back on the previous secrets (its version, rebooted), started and healthy — not
    // merely running.
    wait_for(30, "the machine back on the old secrets", || {
        only_machine_in(&dev, "web", "started").filter(|m| m["secrets_version"] == before)
    });
    wait_for(10, "the workload to serve 200 again", || {
        (status_of(port)? == 200).then_some(())
    });
    std::thread::sleep(Duration::from_millis(2500));
    let m = only_machine_in(&dev, "web", "started").expect("still started: healthy");
    assert_eq!(m["secrets_version"], before);
    let list = json(&dev.ok(&["secrets", "list", "-a", "web", "--json"]));
    assert_eq!(list[0]["status"], "Deployed", "{list}");

    // A good value: the check passes through the window and the release completes.
    let out = dev.run(&["secrets", "set", "-a", "web", "MODE=fine"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(releases(&dev)[0]["status"], "complete");
    wait_for(10, "the machine started", || {
        only_machine_in(&dev, "web", "started")
    });
    assert_eq!(status_of(port), Some(200));

    // Outside a release a failing check only shows: `unhealthy`, with the reason, still
    // running (the TCP check of a port nobody listens on).
    dev.ok(&["apps", "create", "db"]);
    let closed = free_port();
    let tcp = closed.to_string();
    dev.ok(&[
        "machines",
        "run",
        "-a",
        "db",
        "--check-tcp",
        &tcp,
        "--",
        "sleep",
        "1000",
    ]);
    let m = wait_for(30, "the db machine to be unhealthy", || {
        only_machine_in(&dev, "db", "unhealthy")
    });
    assert_eq!(
        m["message"],
        format!("tcp check :{closed}: connection refused")
    );
    assert_eq!(
        m["check"],
        serde_json::json!({"type": "tcp", "port": closed})
    );
    let table = dev.ok(&["machines", "list", "-a", "db"]);
    assert!(table.contains("unhealthy*"), "{table}");
    assert!(
        table.contains(&format!("tcp check :{closed}: connection refused")),
        "{table}"
    );
    // The check does not stop it: once the port opens, it is `started` again.
    let listener = std::net::TcpListener::bind(("127.0.0.1", closed)).unwrap();
    wait_for(10, "the db machine healthy again", || {
        only_machine_in(&dev, "db", "started")
    });
    drop(listener);
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_failing_health_check_fails_the_release() {
    failing_check_fails_the_release(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_failing_health_check_fails_the_release() {
    failing_check_fails_the_release(Engine::Postgres).await;
}
