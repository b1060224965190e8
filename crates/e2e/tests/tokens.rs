//! PRODUCT.md §5.6: API tokens are scoped (app, action) and expiring. A `read` token lists but
//! cannot write; app A's token gets nothing of app B — and learns nothing about whether B
//! exists; revoked, expired, forged and dead-app tokens are refused at once. Driven through
//! the real `coffer` CLI against the real `cofferd dev`, plus raw HTTP where the CLI cannot go.

mod common;

use common::{code, json, stderr, stdout, Dev, Engine};
use serde_json::Value;

const A: &str = "alpha-app";
const B: &str = "beta-app";
/// Never created: an out-of-scope app that does not exist.
const GHOST: &str = "ghost-app";

struct Token {
    token: String,
    id: String,
    info: Value,
}

/// `coffer tokens create --json ARGS…` with the admin token.
fn create_token(dev: &Dev, args: &[&str]) -> Token {
    let mut all = vec!["tokens", "create", "--json"];
    all.extend_from_slice(args);
    let v = json(&dev.ok(&all));
    let token = v["token"].as_str().expect("token").to_string();
    let id = v["info"]["id"].as_str().expect("info.id").to_string();
    assert_token_shape(&token, &id);
    Token {
        token,
        id,
        info: v["info"].clone(),
    }
}

/// `cfr_<16 hex id>_<64 hex secret>`.
fn assert_token_shape(token: &str, id: &str) {
    let parts: Vec<&str> = token.split('_').collect();
    assert_eq!(parts.len(), 3, "{token}");
    assert_eq!(parts[0], "cfr");
    assert_eq!(parts[1], id);
    assert_eq!(parts[1].len(), 16);
    assert_eq!(parts[2].len(), 64);
    assert!(parts[1..]
        .iter()
        .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit())));
}

/// Everything an admin can see of one app: its apps-list row, secrets and history.
fn app_state(dev: &Dev, app: &str) -> (Value, Value, Value) {
    let apps = json(&dev.ok(&["apps", "list", "--json"]));
    let row = apps
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == app)
        .cloned()
        .unwrap_or(Value::Null);
    let list = json(&dev.ok(&["secrets", "list", "-a", app, "--json"]));
    let history = json(&dev.ok(&["secrets", "history", "-a", app, "--json"]));
    (row, list, history)
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

fn app_names(dev: &Dev, token: &str) -> Vec<String> {
    let out = dev.run_as(token, &["apps", "list", "--json"], None);
    assert_eq!(code(&out), 0, "apps list: {}", stderr(&out));
    names(&json(&stdout(&out)))
}

/// Runs `args` with `token` and expects exit 4 with an `error:` line.
fn denied(dev: &Dev, token: &str, args: &[&str], stdin: Option<&[u8]>) -> String {
    let out = dev.run_as(token, args, stdin);
    let err = stderr(&out);
    assert_eq!(code(&out), 4, "coffer {args:?} should be refused: {err}");
    assert!(err.contains("error:"), "{args:?}: {err}");
    assert!(
        !err.contains(token),
        "the token is echoed in an error: {err}"
    );
    err
}

fn allowed(dev: &Dev, token: &str, args: &[&str], stdin: Option<&[u8]>) -> String {
    let out = dev.run_as(token, args, stdin);
    assert_eq!(code(&out), 0, "coffer {args:?}: {}", stderr(&out));
    stdout(&out)
}

/// Raw HTTP: (status, body as JSON or Null).
async fn http(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("HTTP request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, body)
}

async fn tokens_scenario(engine: Engine) {
    let Some(db) = common::database_url(engine).await else {
        return;
    };
    let dev = Dev::start(db);
    let admin = dev.admin_token();
    dev.ok(&["apps", "create", A]);
    dev.ok(&["apps", "create", B]);
    dev.ok(&["secrets", "set", "-a", A, "X=a-one", "Y=a-two"]);
    dev.ok(&["secrets", "set", "-a", B, "Z=b-one"]);
    // Something staged on B, so that a refused deploy would have had something to do.
    dev.ok(&["secrets", "set", "-a", B, "W=b-staged", "--stage"]);

    // Without --json, `tokens create` prints only the token on stdout.
    let out = dev.run(&["tokens", "create", "--app", A, "--scope", "read"], None);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let printed = stdout(&out);
    assert_eq!(printed.lines().count(), 1, "{printed}");
    let plain = printed.trim();
    assert!(plain.starts_with("cfr_"), "{printed}");
    assert_token_shape(plain, plain.split('_').nth(1).unwrap());
    allowed(&dev, plain, &["secrets", "list", "-a", A], None);

    // ---- a read token for A: lists, never writes
    let read_a = create_token(
        &dev,
        &["--app", A, "--scope", "read", "--description", "reader-a"],
    );
    assert_eq!(read_a.info["app"], A);
    assert_eq!(read_a.info["scope"], "read");
    assert_eq!(read_a.info["description"], "reader-a");
    assert_eq!(read_a.info["revoked"], false);
    assert!(read_a.info["created_at"].is_string() && read_a.info["expires_at"].is_string());
    let t = read_a.token.as_str();

    let a_before = app_state(&dev, A);
    let listed = json(&allowed(
        &dev,
        t,
        &["secrets", "list", "-a", A, "--json"],
        None,
    ));
    assert_eq!(names(&listed), ["X", "Y"]);
    assert_eq!(listed, a_before.1, "a read token sees what the admin sees");
    assert!(!allowed(&dev, t, &["secrets", "list", "-a", A], None).contains("a-one"));
    allowed(&dev, t, &["secrets", "history", "-a", A, "--json"], None);
    allowed(&dev, t, &["secrets", "history", "-a", A, "X"], None);
    assert_eq!(app_names(&dev, t), [A], "an app token lists only its app");

    denied(&dev, t, &["secrets", "set", "-a", A, "X=1"], None);
    denied(
        &dev,
        t,
        &["secrets", "set", "-a", A, "NEW=1", "--stage"],
        None,
    );
    denied(&dev, t, &["secrets", "set", "-a", A, "P=-"], Some(b"piped"));
    denied(&dev, t, &["secrets", "unset", "-a", A, "X"], None);
    denied(
        &dev,
        t,
        &["secrets", "import", "-a", A],
        Some(b"X=2\nQ=3\n"),
    );
    denied(&dev, t, &["secrets", "deploy", "-a", A], None);
    denied(&dev, t, &["apps", "create", "new-app"], None);
    denied(&dev, t, &["apps", "destroy", A, "--yes"], None);
    denied(&dev, t, &["tokens", "list"], None);
    denied(
        &dev,
        t,
        &["tokens", "create", "--app", A, "--scope", "read"],
        None,
    );
    denied(&dev, t, &["tokens", "revoke", &read_a.id], None);
    denied(&dev, t, &["secrets", "list", "-a", B], None);
    assert_eq!(app_state(&dev, A), a_before, "a read token changed app A");
    assert!(!names(&json(&dev.ok(&["apps", "list", "--json"]))).contains(&"new-app".into()));
    // The refused revoke did not revoke.
    allowed(&dev, t, &["secrets", "list", "-a", A], None);

    // ---- a deploy token for A: writes A, gets nothing of B
    let deploy_a = create_token(
        &dev,
        &["--app", A, "--scope", "deploy", "--description", "ci-alpha"],
    );
    assert_eq!(deploy_a.info["scope"], "deploy");
    let t = deploy_a.token.as_str();
    allowed(&dev, t, &["secrets", "set", "-a", A, "NEW=1"], None);
    allowed(
        &dev,
        t,
        &["secrets", "set", "-a", A, "STAGED=1", "--stage"],
        None,
    );
    allowed(&dev, t, &["secrets", "deploy", "-a", A], None);
    allowed(&dev, t, &["secrets", "unset", "-a", A, "Y"], None);
    allowed(
        &dev,
        t,
        &["secrets", "import", "-a", A],
        Some(b"IMPORTED=1\n"),
    );
    let after = json(&dev.ok(&["secrets", "list", "-a", A, "--json"]));
    assert_eq!(names(&after), ["IMPORTED", "NEW", "STAGED", "X"]);
    let history = json(&dev.ok(&["secrets", "history", "-a", A, "--json"]));
    assert_eq!(
        history[0]["actor"], "ci-alpha",
        "history names the token's description as who"
    );
    assert_eq!(app_names(&dev, t), [A]);

    let b_before = app_state(&dev, B);
    assert_eq!(b_before.0["deployed_version"], 1);
    assert_eq!(b_before.0["secrets_version"], 2);
    for (args, stdin) in [
        (vec!["secrets", "list", "-a", B], None),
        (vec!["secrets", "list", "-a", B, "--json"], None),
        (vec!["secrets", "set", "-a", B, "Z=evil"], None),
        (vec!["secrets", "set", "-a", B, "EVIL=1", "--stage"], None),
        (
            vec!["secrets", "set", "-a", B, "EVIL=-"],
            Some(&b"evil"[..]),
        ),
        (vec!["secrets", "unset", "-a", B, "Z"], None),
        (vec!["secrets", "import", "-a", B], Some(&b"Z=evil\n"[..])),
        (vec!["secrets", "deploy", "-a", B], None),
        (vec!["secrets", "history", "-a", B], None),
        (vec!["secrets", "history", "-a", B, "Z"], None),
        (vec!["apps", "destroy", B, "--yes"], None),
        (vec!["apps", "destroy", A, "--yes"], None),
        (vec!["apps", "create", "other-app"], None),
        (vec!["tokens", "list"], None),
        (
            vec!["tokens", "create", "--app", B, "--scope", "deploy"],
            None,
        ),
        (
            vec!["tokens", "create", "--app", A, "--scope", "admin"],
            None,
        ),
        (vec!["tokens", "create", "--scope", "read"], None),
    ] {
        denied(&dev, t, &args, stdin);
    }
    assert_eq!(app_state(&dev, B), b_before, "app A's token changed app B");
    let b_list = &app_state(&dev, B).1;
    assert!(
        b_list
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "W" && r["status"] == "Staged"),
        "the refused deploy deployed: {b_list}"
    );
    assert!(names(&json(&dev.ok(&["apps", "list", "--json"]))).contains(&A.to_string()));

    // ---- the refusal does not say whether the out-of-scope app exists
    for args in [
        vec!["secrets", "list", "-a", "{}"],
        vec!["secrets", "set", "-a", "{}", "Z=evil"],
        vec!["secrets", "unset", "-a", "{}", "Z"],
        vec!["secrets", "deploy", "-a", "{}"],
        vec!["secrets", "history", "-a", "{}"],
        vec!["apps", "destroy", "{}", "--yes"],
    ] {
        let with = |app: &str| -> Vec<String> {
            args.iter()
                .map(|a| {
                    if *a == "{}" {
                        app.to_string()
                    } else {
                        a.to_string()
                    }
                })
                .collect()
        };
        let existing = with(B);
        let missing = with(GHOST);
        let e1 = denied(
            &dev,
            t,
            &existing.iter().map(String::as_str).collect::<Vec<_>>(),
            None,
        );
        let e2 = denied(
            &dev,
            t,
            &missing.iter().map(String::as_str).collect::<Vec<_>>(),
            None,
        );
        assert_eq!(
            e1.replace(B, "APP"),
            e2.replace(GHOST, "APP"),
            "{args:?}: an existing and a missing app are told apart"
        );
    }
    let api = &dev.api_url;
    for (method, path, body) in [
        (reqwest::Method::GET, "/v1/apps/{}", None),
        (reqwest::Method::GET, "/v1/apps/{}/secrets", None),
        (
            reqwest::Method::POST,
            "/v1/apps/{}/secrets",
            Some(serde_json::json!({"set": [{"name": "Z", "value": "evil"}]})),
        ),
        (reqwest::Method::POST, "/v1/apps/{}/secrets/deploy", None),
        (reqwest::Method::GET, "/v1/apps/{}/secrets/history", None),
        (reqwest::Method::DELETE, "/v1/apps/{}", None),
    ] {
        let (s1, b1) = http(
            method.clone(),
            &format!("{api}{}", path.replace("{}", B)),
            Some(t),
            body.clone(),
        )
        .await;
        let (s2, b2) = http(
            method.clone(),
            &format!("{api}{}", path.replace("{}", GHOST)),
            Some(t),
            body,
        )
        .await;
        assert_eq!(s1, 403, "{method} {path} on an existing app: {b1}");
        assert_eq!(s2, 403, "{method} {path} on a missing app: {b2}");
        assert_eq!(b1["code"], "forbidden", "{b1}");
        assert_eq!(
            b1.to_string().replace(B, "APP"),
            b2.to_string().replace(GHOST, "APP"),
            "{method} {path}: an existing and a missing app are told apart"
        );
    }
    // With an in-scope admin token, the same missing app is simply not found (exit 5).
    let out = dev.run(&["secrets", "list", "-a", GHOST], None);
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    assert_eq!(app_state(&dev, B), b_before, "app A's token changed app B");

    // ---- a token without --app, scope read: every app, no writes
    let reader = create_token(&dev, &["--scope", "read"]);
    assert!(reader.info["app"].is_null(), "{}", reader.info);
    let t = reader.token.as_str();
    let a_now = app_state(&dev, A);
    let mut seen = app_names(&dev, t);
    seen.sort();
    assert_eq!(seen, [A, B]);
    for app in [A, B] {
        allowed(&dev, t, &["secrets", "list", "-a", app], None);
        allowed(&dev, t, &["secrets", "history", "-a", app], None);
        denied(&dev, t, &["secrets", "set", "-a", app, "X=1"], None);
        denied(&dev, t, &["secrets", "unset", "-a", app, "X"], None);
        denied(&dev, t, &["secrets", "import", "-a", app], Some(b"X=1\n"));
        denied(&dev, t, &["secrets", "deploy", "-a", app], None);
        denied(&dev, t, &["apps", "destroy", app, "--yes"], None);
    }
    denied(&dev, t, &["apps", "create", "third-app"], None);
    denied(&dev, t, &["tokens", "list"], None);
    denied(&dev, t, &["tokens", "create", "--scope", "read"], None);
    assert_eq!(app_state(&dev, A), a_now);
    assert_eq!(app_state(&dev, B), b_before);

    // ---- tokens list (admin) shows the tokens, never their secrets
    let listed = dev.ok(&["tokens", "list", "--json"]);
    for tok in [&read_a, &deploy_a, &reader] {
        assert!(!listed.contains(&tok.token), "tokens list shows a secret");
        let row = json(&listed)
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == tok.id.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("{} not listed: {listed}", tok.id));
        assert_eq!(row, tok.info, "tokens list agrees with tokens create");
    }
    let table = dev.ok(&["tokens", "list"]);
    assert!(table.contains(&deploy_a.id), "{table}");
    assert!(!table.contains(&deploy_a.token), "{table}");

    // ---- revocation is immediate
    let doomed = create_token(&dev, &["--app", A, "--scope", "deploy"]);
    allowed(&dev, &doomed.token, &["secrets", "list", "-a", A], None);
    dev.ok(&["tokens", "revoke", &doomed.id]);
    let err = denied(&dev, &doomed.token, &["secrets", "list", "-a", A], None);
    assert!(err.contains("hint:"), "{err}");
    denied(
        &dev,
        &doomed.token,
        &["secrets", "set", "-a", A, "X=1"],
        None,
    );
    let (status, revoked_body) = http(
        reqwest::Method::GET,
        &format!("{api}/v1/apps/{A}/secrets"),
        Some(&doomed.token),
        None,
    )
    .await;
    assert_eq!(status, 401, "{revoked_body}");
    assert_eq!(revoked_body["code"], "unauthorized");
    let rows = json(&dev.ok(&["tokens", "list", "--json"]));
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == doomed.id.as_str())
        .cloned()
        .expect("the revoked token is still listed");
    assert_eq!(row["revoked"], true, "{row}");
    let out = dev.run(&["tokens", "revoke", "0123456789abcdef"], None);
    assert_eq!(code(&out), 5, "revoking an unknown token: {}", stderr(&out));

    // ---- expiry: the server's bounds are 1 minute and 366 days
    let count = || {
        json(&dev.ok(&["tokens", "list", "--json"]))
            .as_array()
            .unwrap()
            .len()
    };
    let n = count();
    for too in ["1s", "30s", "59s", "367d", "366d1s", "1000d"] {
        let out = dev.run(
            &["tokens", "create", "--scope", "read", "--expires", too],
            None,
        );
        assert_eq!(code(&out), 7, "--expires {too}: {}", stderr(&out));
        assert!(stderr(&out).contains("error:"), "{}", stderr(&out));
        assert!(stdout(&out).is_empty(), "--expires {too} printed a token");
    }
    assert_eq!(count(), n, "a refused expiry created a token");
    for ok in ["1m", "60s", "24h", "366d"] {
        create_token(&dev, &["--scope", "read", "--expires", ok]);
    }
    let (status, body) = http(
        reqwest::Method::POST,
        &format!("{api}/v1/tokens"),
        Some(&admin),
        Some(serde_json::json!({"scope": "read", "expires_in_secs": 0})),
    )
    .await;
    assert_eq!(status, 422, "{body}");

    // A real expiry: the row's expires_at moved into the past behind coffer's back. (The API
    // keeps token records it read for TOKEN_CACHE_TTL, so a change it did not make itself, as
    // by another replica, shows within that time; an expiry that simply arrives is checked
    // against the clock on every request.)
    let expiring = create_token(&dev, &["--app", A, "--scope", "deploy"]);
    allowed(&dev, &expiring.token, &["secrets", "list", "-a", A], None);
    let pool = dev.raw_pool().await;
    let past = coffer_store::now_micros() - 1_000_000;
    let done = sqlx::query("UPDATE api_tokens SET expires_at = $1 WHERE id = $2")
        .bind(past)
        .bind(&expiring.id)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1);
    pool.close().await;
    tokio::time::sleep(coffer_api::auth::TOKEN_CACHE_TTL + std::time::Duration::from_millis(100))
        .await;
    denied(&dev, &expiring.token, &["secrets", "list", "-a", A], None);
    denied(
        &dev,
        &expiring.token,
        &["secrets", "set", "-a", A, "X=1"],
        None,
    );
    let (status, expired_body) = http(
        reqwest::Method::GET,
        &format!("{api}/v1/apps/{A}/secrets"),
        Some(&expiring.token),
        None,
    )
    .await;
    assert_eq!(status, 401, "{expired_body}");

    // ---- forged and mangled tokens
    let a_mid = app_state(&dev, A);
    let good = create_token(&dev, &["--app", A, "--scope", "read"]).token;
    allowed(&dev, &good, &["secrets", "list", "-a", A], None);
    let flip = |s: &str, i: usize| -> String {
        let mut b = s.as_bytes().to_vec();
        b[i] = if b[i] == b'0' { b'1' } else { b'0' };
        String::from_utf8(b).unwrap()
    };
    let last = good.len() - 1;
    let id_char = "cfr_".len() + 3;
    let forged = [
        "garbage".to_string(),
        "cfr_".to_string(),
        format!("cfr_{}_{}", "0".repeat(16), "0".repeat(64)),
        flip(&good, last),
        flip(&good, "cfr_".len() + 16 + 1 + 10),
        flip(&good, id_char),
        good[..last].to_string(),
        format!("{good}0"),
        good.to_uppercase(),
        admin.replace("cfr_", "cfx_"),
    ];
    let mut unauthorized_bodies = vec![revoked_body, expired_body];
    for bad in &forged {
        denied(&dev, bad, &["secrets", "list", "-a", A], None);
        denied(&dev, bad, &["apps", "list"], None);
        let (status, body) = http(
            reqwest::Method::GET,
            &format!("{api}/v1/apps"),
            Some(bad),
            None,
        )
        .await;
        assert_eq!(status, 401, "{bad}: {body}");
        unauthorized_bodies.push(body);
    }

    // ---- no Authorization header at all, or not a bearer token
    for (method, path) in [
        (reqwest::Method::GET, "/v1/apps".to_string()),
        (reqwest::Method::GET, format!("/v1/apps/{A}/secrets")),
        (reqwest::Method::POST, format!("/v1/apps/{A}/secrets")),
        (reqwest::Method::GET, "/v1/tokens".to_string()),
        (reqwest::Method::POST, "/v1/tokens".to_string()),
        (reqwest::Method::DELETE, format!("/v1/apps/{A}")),
    ] {
        let body = (method == reqwest::Method::POST)
            .then(|| serde_json::json!({"set": [{"name": "X", "value": "1"}], "scope": "admin"}));
        let (status, b) = http(method.clone(), &format!("{api}{path}"), None, body).await;
        assert_eq!(status, 401, "{method} {path} without a token: {b}");
        assert_eq!(b["code"], "unauthorized", "{b}");
        assert!(b["message"].is_string(), "{b}");
        unauthorized_bodies.push(b);
    }
    let resp = reqwest::Client::new()
        .get(format!("{api}/v1/apps"))
        .header("Authorization", format!("Basic {admin}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401, "a non-bearer scheme");
    // Every refusal of a token reads the same: no oracle for which check failed.
    for b in &unauthorized_bodies {
        assert_eq!(b, &unauthorized_bodies[0]);
    }
    assert_eq!(app_state(&dev, A), a_mid, "a refused token changed app A");

    // ---- a token bound to an app dies with it, and is not revived by a namesake
    let bound = create_token(&dev, &["--app", A, "--scope", "deploy"]);
    allowed(&dev, &bound.token, &["secrets", "list", "-a", A], None);
    dev.ok(&["apps", "destroy", A, "--yes"]);
    denied(&dev, &bound.token, &["secrets", "list", "-a", A], None);
    denied(&dev, &bound.token, &["apps", "list"], None);
    denied(&dev, &read_a.token, &["secrets", "list", "-a", A], None);
    dev.ok(&["apps", "create", A]);
    denied(&dev, &bound.token, &["secrets", "list", "-a", A], None);
    denied(
        &dev,
        &bound.token,
        &["secrets", "set", "-a", A, "X=1"],
        None,
    );
    denied(&dev, &read_a.token, &["secrets", "list", "-a", A], None);
    assert!(names(&json(&dev.ok(&["secrets", "list", "-a", A, "--json"]))).is_empty());
    // The global reader still works, and sees the new app.
    allowed(&dev, &reader.token, &["secrets", "list", "-a", A], None);
    assert_eq!(app_state(&dev, B), b_before);
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_tokens_are_scoped_and_expiring() {
    tokens_scenario(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_tokens_are_scoped_and_expiring() {
    tokens_scenario(Engine::Postgres).await;
}
