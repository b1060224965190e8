//! The secrets path as a user drives it: the real `coffer` CLI against the real `cofferd dev`,
//! on SQLite and on PostgreSQL (PRODUCT.md §2–3).

mod common;

use common::{Dev, Engine};
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn list(dev: &Dev, app: &str) -> Vec<Value> {
    json(&dev.ok(&["secrets", "list", "-a", app, "--json"]))
        .as_array()
        .unwrap()
        .clone()
}

fn digest_of(rows: &[Value], name: &str) -> String {
    rows.iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed"))["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

fn version_of(dev: &Dev, app: &str) -> i64 {
    let history = json(&dev.ok(&["secrets", "history", "-a", app, "--json"]));
    history
        .as_array()
        .unwrap()
        .first()
        .map(|v| v["version"].as_i64().unwrap())
        .unwrap_or(0)
}

fn code(out: &std::process::Output) -> i32 {
    out.status.code().expect("exit code")
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn secrets_path(engine: Engine) {
    let Some(db) = common::database_url(engine).await else {
        return;
    };
    let mut dev = Dev::start(db);

    dev.ok(&["apps", "create", "web"]);
    dev.ok(&["apps", "create", "worker"]);
    let apps = dev.ok(&["apps", "list"]);
    assert!(apps.contains("web") && apps.contains("worker"), "{apps}");

    // Several pairs are one atomic change and one version.
    dev.ok(&[
        "secrets",
        "set",
        "-a",
        "web",
        "DATABASE_URL=postgres://db/web",
        "API_KEY=k-123",
        "SAME=v",
    ]);
    assert_eq!(version_of(&dev, "web"), 1);
    dev.ok(&["secrets", "set", "-a", "worker", "SAME=v"]);

    let rows = list(&dev, "web");
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["API_KEY", "DATABASE_URL", "SAME"]);
    for r in &rows {
        let d = r["digest"].as_str().unwrap();
        assert_eq!(d.len(), 32);
        assert!(
            d.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{d}"
        );
        assert_eq!(r["status"], "Deployed");
        assert!(r["created_at"].is_string() && r["updated_at"].is_string());
        assert!(r.get("value").is_none());
    }
    // Equal values: equal digests in one app, different digests across apps.
    dev.ok(&["secrets", "set", "-a", "web", "OTHER=v"]);
    let rows = list(&dev, "web");
    assert_eq!(digest_of(&rows, "SAME"), digest_of(&rows, "OTHER"));
    assert_ne!(
        digest_of(&rows, "SAME"),
        digest_of(&list(&dev, "worker"), "SAME")
    );
    assert_ne!(digest_of(&rows, "SAME"), digest_of(&rows, "API_KEY"));

    // The human table: NAME | DIGEST | DATE | STATUS with relative dates.
    let table = dev.ok(&["secrets", "list", "-a", "web"]);
    for col in [
        "NAME", "DIGEST", "DATE", "STATUS", "API_KEY", "Deployed", "ago",
    ] {
        assert!(table.contains(col), "missing {col} in:\n{table}");
    }
    assert!(
        !table.contains("k-123") && !table.contains("postgres://"),
        "{table}"
    );

    // The app from COFFER_APP and from ./coffer.toml.
    let out = dev
        .coffer()
        .args(["secrets", "list", "--json"])
        .env("COFFER_APP", "worker")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SAME"));
    std::fs::write(dev.work_dir.join("coffer.toml"), "app = \"worker\"\n").unwrap();
    let rows = list_no_app(&dev);
    assert_eq!(rows.len(), 1);
    std::fs::remove_file(dev.work_dir.join("coffer.toml")).unwrap();
    let out = dev.run(&["secrets", "list"], None);
    assert_ne!(code(&out), 0);
    assert!(stderr(&out).contains("hint:"), "{}", stderr(&out));

    // NAME=- reads the value from stdin, byte for byte.
    let out = dev.run(
        &["secrets", "set", "-a", "web", "PEM=-"],
        Some(b"-----BEGIN KEY-----\nabc\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(list(&dev, "web").iter().any(|r| r["name"] == "PEM"));

    // --stage records without deploying; deploy makes it Deployed.
    let before = version_of(&dev, "web");
    dev.ok(&["secrets", "set", "-a", "web", "API_KEY=k-456", "--stage"]);
    assert_eq!(version_of(&dev, "web"), before + 1);
    let rows = list(&dev, "web");
    let status =
        |rows: &[Value], n: &str| rows.iter().find(|r| r["name"] == n).unwrap()["status"].clone();
    assert_eq!(status(&rows, "API_KEY"), "Staged");
    assert_eq!(status(&rows, "DATABASE_URL"), "Deployed");
    dev.ok(&["secrets", "deploy", "-a", "web"]);
    assert_eq!(status(&list(&dev, "web"), "API_KEY"), "Deployed");

    // unset, and history shows every version.
    dev.ok(&["secrets", "unset", "-a", "web", "OTHER"]);
    assert!(!list(&dev, "web").iter().any(|r| r["name"] == "OTHER"));
    let history = json(&dev.ok(&["secrets", "history", "-a", "web", "--json"]));
    let versions: Vec<i64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    let n = versions[0];
    assert_eq!(versions, (1..=n).rev().collect::<Vec<_>>());
    let last = &history[0];
    assert_eq!(last["changes"][0]["name"], "OTHER");
    assert_eq!(last["changes"][0]["kind"], "unset");
    assert!(last["actor"].as_str().unwrap().contains("admin"));
    let only_key = json(&dev.ok(&["secrets", "history", "-a", "web", "API_KEY", "--json"]));
    assert_eq!(only_key.as_array().unwrap().len(), 2);

    // dotenv import: one atomic version.
    let env = b"# comment\nexport IMPORTED_A=one\nIMPORTED_B=\"two\\nlines\"\nIMPORTED_C='$HOME'\nIMPORTED_D=\"\"\"\nmulti\nline\n\"\"\"\r\n";
    let before = version_of(&dev, "web");
    let out = dev.run(&["secrets", "import", "-a", "web"], Some(env));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(version_of(&dev, "web"), before + 1);
    let rows = list(&dev, "web");
    for n in ["IMPORTED_A", "IMPORTED_B", "IMPORTED_C", "IMPORTED_D"] {
        assert!(rows.iter().any(|r| r["name"] == n), "{n}");
    }

    // Restarting keeps everything.
    let rows_before = list(&dev, "web");
    dev.restart();
    assert_eq!(list(&dev, "web"), rows_before);
    dev.ok(&["secrets", "set", "-a", "web", "AFTER_RESTART=1"]);

    // Destroy asks for --yes when not on a terminal, then removes the app.
    let out = dev.run(&["apps", "destroy", "worker"], None);
    assert_ne!(code(&out), 0);
    dev.ok(&["apps", "destroy", "worker", "--yes"]);
    assert!(!dev.ok(&["apps", "list"]).contains("worker"));
    let out = dev.run(&["secrets", "list", "-a", "worker"], None);
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    // The name can be reused; the new app shares nothing with the old one.
    dev.ok(&["apps", "create", "worker"]);
    assert!(list(&dev, "worker").is_empty());
}

fn list_no_app(dev: &Dev) -> Vec<Value> {
    json(&dev.ok(&["secrets", "list", "--json"]))
        .as_array()
        .unwrap()
        .clone()
}

async fn bad_input_changes_nothing(engine: Engine) {
    let Some(db) = common::database_url(engine).await else {
        return;
    };
    let dev = Dev::start(db);
    dev.ok(&["apps", "create", "web"]);
    dev.ok(&["secrets", "set", "-a", "web", "KEEP=1"]);
    let before = list(&dev, "web");
    let v = version_of(&dev, "web");

    let big = format!("BIG={}", "x".repeat(64 * 1024 + 1));
    // (pairs, stdin, what the error must mention)
    type Case = (Vec<String>, Option<Vec<u8>>, &'static str);
    let cases: Vec<Case> = vec![
        (
            vec![
                "A=1".into(),
                "B=2".into(),
                "3C=3".into(),
                "D=4".into(),
                "E=5".into(),
            ],
            None,
            "3C",
        ),
        (vec!["COFFER_APP_NAME=x".into()], None, "reserved"),
        (
            vec!["OK=1".into(), "NUL=-".into()],
            Some(b"a\0b".to_vec()),
            "NUL",
        ),
        (vec![big], None, "65536"),
        (vec!["NOEQUALS".into()], None, "NOEQUALS"),
        (vec!["A=1".into(), "A=2".into()], None, "more than once"),
    ];
    for (pairs, stdin, needle) in cases {
        let mut args = vec!["secrets", "set", "-a", "web"];
        args.extend(pairs.iter().map(String::as_str));
        let out = dev.run(&args, stdin.as_deref());
        assert_ne!(code(&out), 0, "{pairs:?} was accepted");
        assert!(stderr(&out).contains("error:"), "{}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{pairs:?}: {}", stderr(&out));
    }
    // The per-app budget: 9 values of 60 KiB pass one by one until 512 KiB is reached.
    let chunk = "y".repeat(60 * 1024);
    let mut refused = false;
    for i in 0..9 {
        let out = dev.run(
            &["secrets", "set", "-a", "web", &format!("FILL{i}={chunk}")],
            None,
        );
        if !out.status.success() {
            assert!(stderr(&out).contains("512 KiB"), "{}", stderr(&out));
            refused = true;
            break;
        }
    }
    assert!(refused, "512 KiB per app was not enforced");
    for i in 0..9 {
        let _ = dev.run(
            &["secrets", "unset", "-a", "web", &format!("FILL{i}")],
            None,
        );
    }

    // Broken dotenv: names the line, imports nothing.
    let before_import = version_of(&dev, "web");
    let out = dev.run(
        &["secrets", "import", "-a", "web"],
        Some(b"GOOD=1\nALSO_GOOD=2\nthis line is broken\n"),
    );
    assert_ne!(code(&out), 0);
    assert!(stderr(&out).contains("line 3"), "{}", stderr(&out));
    assert_eq!(version_of(&dev, "web"), before_import);

    // Unset of a name that is not set.
    let out = dev.run(
        &["secrets", "unset", "-a", "web", "KEEP", "NOT_THERE"],
        None,
    );
    assert_ne!(code(&out), 0);
    assert!(list(&dev, "web").iter().any(|r| r["name"] == "KEEP"));

    // Odd app names and unknown apps.
    for args in [["apps", "create", "Bad_Name"], ["apps", "create", "../etc"]] {
        let out = dev.run(&args, None);
        assert_ne!(code(&out), 0);
    }
    let out = dev.run(&["apps", "create", "web"], None);
    assert_eq!(code(&out), 6, "duplicate app: {}", stderr(&out));
    let out = dev.run(&["secrets", "set", "-a", "nope", "A=1"], None);
    assert_eq!(code(&out), 5, "{}", stderr(&out));

    // The FILL values were set then unset, so compare names only at the end.
    let after: Vec<Value> = list(&dev, "web");
    let names = |rows: &[Value]| rows.iter().map(|r| r["name"].clone()).collect::<Vec<_>>();
    assert_eq!(names(&after), names(&before));
    assert!(version_of(&dev, "web") > v);
}

/// Parallel `secrets set`s of one app, none of which asked for a base version (CI jobs, a
/// script): each lands as a version of its own, none is refused because another one won a race.
async fn parallel_writes_to_one_app_all_land(engine: Engine) {
    let Some(db) = common::database_url(engine).await else {
        return;
    };
    let dev = Dev::start(db);
    dev.ok(&["apps", "create", "web"]);
    const WRITERS: usize = 24;
    let outputs: Vec<std::process::Output> = std::thread::scope(|scope| {
        let dev = &dev;
        let handles: Vec<_> = (0..WRITERS)
            .map(|i| {
                scope.spawn(move || {
                    let pair = format!("K{i}=value-{i}");
                    dev.run(&["secrets", "set", "-a", "web", "--stage", &pair], None)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, out) in outputs.iter().enumerate() {
        assert_eq!(code(out), 0, "writer {i} failed: {}", stderr(out));
    }
    assert_eq!(
        version_of(&dev, "web"),
        WRITERS as i64,
        "one version per write"
    );
    let rows = list(&dev, "web");
    let mut names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    let mut expected: Vec<String> = (0..WRITERS).map(|i| format!("K{i}")).collect();
    expected.sort_unstable();
    assert_eq!(
        names, expected,
        "every write's secret is in the latest version"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_parallel_writes_to_one_app_all_land() {
    parallel_writes_to_one_app_all_land(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_parallel_writes_to_one_app_all_land() {
    parallel_writes_to_one_app_all_land(Engine::Postgres).await;
}

/// `apps destroy` while writes of the app are under way: the destroy deletes the app's keys
/// (crypto-shredding its ciphertexts, backups included), and no write may make new keys for
/// the app behind it. Over raw HTTP, to race many requests.
async fn destroy_racing_writes_leaves_no_keys(engine: Engine) {
    let Some(db) = common::database_url(engine).await else {
        return;
    };
    let dev = Dev::start(db);
    let token = dev.admin_token();
    let http = reqwest::Client::new();
    const ROUNDS: usize = 12;
    const WRITERS: usize = 6;
    for round in 0..ROUNDS {
        let app = format!("doomed-{round}");
        dev.ok(&["apps", "create", &app]);
        dev.ok(&["secrets", "set", "-a", &app, "--stage", "FIRST=1"]);
        let url = format!("{}/v1/apps/{app}", dev.api_url);
        let writes: Vec<_> = (0..WRITERS)
            .map(|i| {
                let req = http
                    .post(format!("{url}/secrets"))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({
                        "set": [{"name": format!("K{i}"), "value": "v"}],
                        "stage": true,
                    }));
                tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) })
            })
            .collect();
        let destroyed = http.delete(&url).bearer_auth(&token).send().await.unwrap();
        assert_eq!(destroyed.status().as_u16(), 204, "round {round}");
        for w in writes {
            // Each write landed before the destroy, or found no app: never a server error.
            let status = w.await.unwrap().unwrap();
            assert!(
                status == 200 || status == 404,
                "round {round}: a racing write got {status}"
            );
        }
    }
    let pool = dev.raw_pool().await;
    let orphans: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM vault_app_keys WHERE app_id NOT IN (SELECT id FROM apps)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(orphans, 0, "keys were made for a destroyed app");
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_destroy_racing_writes_leaves_no_keys() {
    destroy_racing_writes_leaves_no_keys(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_destroy_racing_writes_leaves_no_keys() {
    destroy_racing_writes_leaves_no_keys(Engine::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_secrets_path() {
    secrets_path(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_secrets_path() {
    secrets_path(Engine::Postgres).await;
}

/// Nearly an app's whole budget (480 of 512 KiB) in values made of control bytes: as JSON strings they would
/// be six times as long, over the daemons' 2 MiB body limit; the CLI sends them in base64.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_values_of_control_bytes_fill_the_budget() {
    let Some(db) = common::database_url(Engine::Sqlite).await else {
        return;
    };
    let dev = Dev::start(db);
    dev.ok(&["apps", "create", "web"]);
    let chunk = "\u{1}".repeat(60 * 1024);
    let pairs: Vec<String> = (0..8).map(|i| format!("CTRL{i}={chunk}")).collect();
    let mut args = vec!["secrets", "set", "-a", "web", "--stage"];
    args.extend(pairs.iter().map(String::as_str));
    // Not `dev.ok`: its message would quote the 480 KiB of arguments.
    let out = dev.run(&args, None);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(list(&dev, "web").len(), 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_bad_input_changes_nothing() {
    bad_input_changes_nothing(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_bad_input_changes_nothing() {
    bad_input_changes_nothing(Engine::Postgres).await;
}
