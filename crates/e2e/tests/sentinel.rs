//! PRODUCT.md §5.1: no plaintext secret value is written to disk by any component, nor
//! appears in any HTTP response or error message.
//!
//! Random sentinel values — one per path — go through the real CLI and raw HTTP: every write
//! path, and every failing one (bad names, oversized values, NUL bytes, broken dotenv, unknown
//! apps, read-only and revoked tokens, malformed JSON bodies). The daemon runs at the most
//! verbose log level, is restarted once, and is stopped gracefully so that its logs flush.
//! Then every file of the data dir (database, WAL, logs, keys), the CLI config, every
//! captured CLI output and HTTP response (and, on PostgreSQL, a dump of every table) is
//! scanned for each sentinel in raw, hex and base64 forms: there must be no hit.

mod common;

use base64::Engine as _;
use common::{code, json, stderr, Dev, Engine};
use reqwest::Method;
use std::process::Output;

/// Every sentinel of the run.
#[derive(Default)]
struct Sentinels(Vec<Vec<u8>>);

impl Sentinels {
    /// A fresh sentinel, remembered for the scan.
    fn fresh(&mut self, tag: &str) -> String {
        let s = common::sentinel(tag);
        self.0.push(s.clone());
        String::from_utf8(s).unwrap()
    }
}

/// Expectations that do not stop the run: the scan at the end is the point of the test, so
/// a wrong status is recorded and reported together with any hits.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn exit(&mut self, what: &str, out: &Output, want: i32) {
        let got = code(out);
        if got != want {
            self.0.push(format!(
                "{what}: exit {got}, want {want}; stderr: {}",
                stderr(out)
            ));
        } else if want != 0 && !stderr(out).contains("error:") {
            self.0
                .push(format!("{what}: no `error:` line: {}", stderr(out)));
        }
    }

    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }
}

/// `n` bytes made of `s` repeated.
fn repeated(s: &str, n: usize) -> String {
    s.repeat(n / s.len() + 1)[..n].to_string()
}

fn version_of(dev: &Dev, app: &str) -> i64 {
    let apps = json(&dev.ok(&["apps", "list", "--json"]));
    apps.as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == app)
        .and_then(|a| a["secrets_version"].as_i64())
        .unwrap_or_else(|| panic!("{app} not listed"))
}

fn names(dev: &Dev, app: &str) -> Vec<String> {
    json(&dev.ok(&["secrets", "list", "-a", app, "--json"]))
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

/// Sends one raw request and keeps the whole response (status, headers, body) in the
/// capture dir. Returns the status, or 0 if no response came back.
#[allow(clippy::too_many_arguments)]
async fn raw(
    dev: &Dev,
    label: &str,
    method: Method,
    url: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> u16 {
    let mut req = reqwest::Client::new().request(method, url).body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(ct) = content_type {
        req = req.header("Content-Type", ct);
    }
    let (status, text) = match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let mut text = format!("{status}\n");
            for (k, v) in resp.headers() {
                text.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
            }
            text.push('\n');
            let mut kept = text.into_bytes();
            kept.extend_from_slice(&resp.bytes().await.unwrap_or_default());
            (status, kept)
        }
        Err(e) => (0, format!("no response: {e}\n").into_bytes()),
    };
    dev.capture(&format!("http-{label}.txt"), &text);
    status
}

async fn sentinel_scan(engine: Engine) {
    let Some(db) = common::database_url(engine).await else {
        return;
    };
    let mut dev = Dev::start(db);
    let mut s = Sentinels::default();
    let mut p = Problems::default();
    dev.ok(&["apps", "create", "web"]);
    dev.ok(&["apps", "create", "other"]);
    let admin = dev.admin_token();

    // ------------------------------------------------------------------ writes that succeed
    // Several pairs in one change, one with '=' and spaces in it.
    let (a, b, c, d) = (
        s.fresh("SETA"),
        s.fresh("SETB"),
        s.fresh("SETC"),
        s.fresh("SETD"),
    );
    dev.ok(&[
        "secrets",
        "set",
        "-a",
        "web",
        &format!("A={a}"),
        &format!("B={b}"),
        &format!("C={c}"),
        &format!("D=k={d} with spaces"),
    ]);
    // NAME=- from stdin, text and then bytes that are not UTF-8 (base64 on the wire).
    let from_stdin = s.fresh("STDIN");
    let out = dev.run(
        &["secrets", "set", "-a", "web", "FROM_STDIN=-"],
        Some(format!("{from_stdin}\n").as_bytes()),
    );
    p.exit("set NAME=- (text)", &out, 0);
    let binary = s.fresh("BINARY");
    let mut bytes = binary.clone().into_bytes();
    bytes.extend_from_slice(&[0xff, 0xfe, b'\n']);
    let out = dev.run(&["secrets", "set", "-a", "web", "BINARY=-"], Some(&bytes));
    p.exit("set NAME=- (not UTF-8)", &out, 0);

    // dotenv import in every quoting style (and a BOM, CRLF, comments).
    let dotenv = format!(
        "\u{feff}# a comment that mentions {c1}\n\
         IMP_UNQUOTED={v1}\n\
         \x20 IMP_SPACED =  {v2}   # inline comment {c2}\n\
         export IMP_EXPORTED={v3}\n\
         IMP_SINGLE='{v4}'\n\
         IMP_DOUBLE=\"{v5}\"\n\
         IMP_ESCAPES=\"tab\\t{v6}\\nnext \\\"quoted\\\" \\$HOME\"\n\
         IMP_DOUBLE_ML=\"{v7}\nsecond line\"\n\
         IMP_TRIPLE=\"\"\"\n{v8}\nline two\n\"\"\"\n\
         IMP_TRIPLE_SINGLE='''\n{v9}\n'''\n\
         IMP_DOLLAR='${v10}'\n\
         IMP_CRLF={v11}\r\n\
         IMP_HASH={v12}#not-a-comment\n\
         IMP_EMPTY=\n",
        c1 = s.fresh("DOTCOMMENT"),
        c2 = s.fresh("DOTINLINE"),
        v1 = s.fresh("DOTUNQ"),
        v2 = s.fresh("DOTSPACED"),
        v3 = s.fresh("DOTEXPORT"),
        v4 = s.fresh("DOTSINGLE"),
        v5 = s.fresh("DOTDOUBLE"),
        v6 = s.fresh("DOTESC"),
        v7 = s.fresh("DOTDML"),
        v8 = s.fresh("DOTTRIPLE"),
        v9 = s.fresh("DOTTSINGLE"),
        v10 = s.fresh("DOTDOLLAR"),
        v11 = s.fresh("DOTCRLF"),
        v12 = s.fresh("DOTHASH"),
    );
    let out = dev.run(&["secrets", "import", "-a", "web"], Some(dotenv.as_bytes()));
    p.exit("import (every quoting style)", &out, 0);
    let listed = names(&dev, "web");
    for n in [
        "IMP_UNQUOTED",
        "IMP_SPACED",
        "IMP_EXPORTED",
        "IMP_SINGLE",
        "IMP_DOUBLE",
        "IMP_ESCAPES",
        "IMP_DOUBLE_ML",
        "IMP_TRIPLE",
        "IMP_TRIPLE_SINGLE",
        "IMP_DOLLAR",
        "IMP_CRLF",
        "IMP_HASH",
        "IMP_EMPTY",
    ] {
        p.check(listed.contains(&n.to_string()), || {
            format!("{n} not imported: {listed:?}")
        });
    }

    // --stage, then deploy; an update of an existing name; an unset.
    let staged = s.fresh("STAGED");
    dev.ok(&[
        "secrets",
        "set",
        "-a",
        "web",
        &format!("STAGED={staged}"),
        "--stage",
    ]);
    dev.ok(&["secrets", "list", "-a", "web"]);
    dev.ok(&["secrets", "deploy", "-a", "web"]);
    let updated = s.fresh("UPDATE");
    dev.ok(&[
        "--json",
        "secrets",
        "set",
        "-a",
        "web",
        &format!("A={updated}"),
    ]);
    dev.ok(&["secrets", "unset", "-a", "web", "B"]);
    // A value of exactly 64 KiB, and one that repeats in another app.
    let big_ok = s.fresh("BIGOK");
    dev.ok(&[
        "secrets",
        "set",
        "-a",
        "other",
        &format!("BIG_OK={}", repeated(&big_ok, 64 * 1024)),
    ]);
    dev.ok(&["secrets", "set", "-a", "other", &format!("SHARED={a}")]);

    // Tokens: a read-only one, and a revoked one.
    let read_token = dev
        .ok(&["tokens", "create", "--app", "web", "--scope", "read"])
        .trim()
        .to_string();
    let revoked = json(&dev.ok(&[
        "tokens", "create", "--json", "--app", "web", "--scope", "deploy",
    ]));
    let revoked_token = revoked["token"].as_str().unwrap().to_string();
    dev.ok(&["tokens", "revoke", revoked["info"]["id"].as_str().unwrap()]);

    // ------------------------------------------------------------ CLI commands that fail
    let web_version = version_of(&dev, "web");
    let other_version = version_of(&dev, "other");
    let args = |v: &[String]| -> Vec<String> {
        let mut all: Vec<String> = ["secrets", "set", "-a", "web"]
            .iter()
            .map(|x| x.to_string())
            .collect();
        all.extend(v.iter().cloned());
        all
    };
    let run = |dev: &Dev, v: &[String], stdin: Option<&[u8]>| -> Output {
        dev.run(&v.iter().map(String::as_str).collect::<Vec<_>>(), stdin)
    };
    // One bad name among good pairs.
    let out = run(
        &dev,
        &args(&[
            format!("GOOD1={}", s.fresh("BADPAIR1")),
            format!("3BAD={}", s.fresh("BADPAIR2")),
            format!("GOOD2={}", s.fresh("BADPAIR3")),
            format!("my-key={}", s.fresh("BADPAIR4")),
        ]),
        None,
    );
    p.exit("set with a bad name among good pairs", &out, 7);
    let out = run(
        &dev,
        &args(&[format!("COFFER_X={}", s.fresh("RESERVED"))]),
        None,
    );
    p.exit("set of a reserved name", &out, 7);
    let out = run(
        &dev,
        &args(&[
            format!("DUP={}", s.fresh("DUP1")),
            format!("DUP={}", s.fresh("DUP2")),
        ]),
        None,
    );
    p.exit("set of a name twice", &out, 7);
    // 64 KiB + 1, made of a repeated sentinel.
    let big = s.fresh("OVERSIZE");
    let out = run(
        &dev,
        &args(&[format!("BIG={}", repeated(&big, 64 * 1024 + 1))]),
        None,
    );
    p.exit("set of an oversized value", &out, 7);
    // A NUL byte read from stdin.
    let mut nul = s.fresh("NULHEAD").into_bytes();
    nul.push(0);
    nul.extend_from_slice(s.fresh("NULTAIL").as_bytes());
    let out = run(
        &dev,
        &args(&[format!("OKAY={}", s.fresh("NULOK")), "NULVAL=-".into()]),
        Some(&nul),
    );
    p.exit("set of a value with a NUL byte", &out, 7);
    // Arguments without '=' whose text is a sentinel, and a value where the name should be.
    let out = run(&dev, &args(&[s.fresh("NOEQ")]), None);
    p.exit("set SENTINEL (no '=')", &out, 7);
    let out = run(
        &dev,
        &args(&[format!("GOOD={}", s.fresh("NOEQOK")), s.fresh("NOEQ2")]),
        None,
    );
    p.exit("set GOOD=… SENTINEL", &out, 7);
    let out = run(
        &dev,
        &args(&[format!(
            "postgres://user:{}@db/app?sslmode=require",
            s.fresh("URLPW")
        )]),
        None,
    );
    p.exit("set of a URL without NAME=", &out, 7);
    // The per-app budget: nine values of 60 KiB in one change.
    let budget: Vec<String> = (0..9)
        .map(|i| {
            format!(
                "FILL{i}={}",
                repeated(&s.fresh(&format!("BUDGET{i}")), 60 * 1024)
            )
        })
        .collect();
    let mut budget_args = vec!["secrets", "set", "-a", "other"];
    budget_args.extend(budget.iter().map(String::as_str));
    let out = dev.run(&budget_args, None);
    p.exit("set over 512 KiB per app", &out, 7);
    // Broken dotenv files.
    let broken = [
        format!(
            "OK1={}\nthis line is broken {}\nOK2={}\n",
            s.fresh("BROKEN1"),
            s.fresh("BROKEN2"),
            s.fresh("BROKEN3")
        ),
        format!(
            "OK1={}\nUNTERMINATED=\"{}\n",
            s.fresh("BROKEN4"),
            s.fresh("BROKEN5")
        ),
        format!("BAD_ESCAPE=\"{}\\q\"\n", s.fresh("BROKEN6")),
        format!(
            "AFTER_QUOTE='{}' {}\n",
            s.fresh("BROKEN7"),
            s.fresh("BROKEN8")
        ),
        format!(
            "TWICE={}\nTWICE={}\n",
            s.fresh("BROKEN9"),
            s.fresh("BROKEN10")
        ),
        format!("MY-KEY={}\n", s.fresh("BROKEN11")),
        format!(
            "NUL_IN_FILE={}\0{}\n",
            s.fresh("BROKEN12"),
            s.fresh("BROKEN13")
        ),
        format!(
            "TOO_BIG={}\n",
            repeated(&s.fresh("BROKEN14"), 64 * 1024 + 1)
        ),
        format!("TRIPLE=\"\"\"\n{}\n", s.fresh("BROKEN15")),
        format!("{}\n", s.fresh("BROKEN16")),
    ];
    for (i, text) in broken.iter().enumerate() {
        let out = dev.run(&["secrets", "import", "-a", "web"], Some(text.as_bytes()));
        p.exit(&format!("broken dotenv #{i}"), &out, 7);
    }
    let mut not_utf8 = format!("NOT_UTF8={}", s.fresh("BROKENUTF8")).into_bytes();
    not_utf8.extend_from_slice(&[0xc3, 0x28, b'\n']);
    let out = dev.run(&["secrets", "import", "-a", "web"], Some(&not_utf8));
    p.exit("dotenv that is not UTF-8", &out, 7);
    // The API refuses: an unknown app, a read-only token, a revoked token, a wrong token.
    let out = dev.run(
        &[
            "secrets",
            "set",
            "-a",
            "nope",
            &format!("X={}", s.fresh("NOAPP")),
        ],
        None,
    );
    p.exit("set on an unknown app", &out, 5);
    let out = dev.run(
        &["secrets", "import", "-a", "nope"],
        Some(format!("X={}\n", s.fresh("NOAPPIMPORT")).as_bytes()),
    );
    p.exit("import into an unknown app", &out, 5);
    let out = dev.run_as(
        &read_token,
        &[
            "secrets",
            "set",
            "-a",
            "web",
            &format!("X={}", s.fresh("READONLY")),
        ],
        None,
    );
    p.exit("set with a read-only token", &out, 4);
    let out = dev.run_as(
        &read_token,
        &["secrets", "import", "-a", "web"],
        Some(format!("X={}\n", s.fresh("READONLYIMPORT")).as_bytes()),
    );
    p.exit("import with a read-only token", &out, 4);
    let out = dev.run_as(
        &revoked_token,
        &[
            "secrets",
            "set",
            "-a",
            "web",
            &format!("X={}", s.fresh("REVOKED")),
        ],
        None,
    );
    p.exit("set with a revoked token", &out, 4);
    let bogus_token = s.fresh("TOKEN");
    let out = dev.run_as(
        &bogus_token,
        &[
            "secrets",
            "set",
            "-a",
            "web",
            &format!("X={}", s.fresh("BOGUSTOKEN")),
        ],
        None,
    );
    p.exit("set with a sentinel as token", &out, 4);
    let out = dev.run_as(
        &format!("cfr_{}", s.fresh("CFRTOKEN")),
        &["apps", "list"],
        None,
    );
    p.exit("apps list with a malformed cfr_ token", &out, 4);
    let out = dev.run_as(
        &format!("{}\n{}", s.fresh("NLTOKEN1"), s.fresh("NLTOKEN2")),
        &["apps", "list"],
        None,
    );
    p.exit("a token that cannot be a header", &out, 3);
    // No app given; the API unreachable.
    let out = dev.run(
        &["secrets", "set", &format!("X={}", s.fresh("NOAPPGIVEN"))],
        None,
    );
    p.exit("set without an app", &out, 2);
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    let out = dev.run(
        &[
            "--api-url",
            &dead,
            "secrets",
            "set",
            "-a",
            "web",
            &format!("X={}", s.fresh("UNREACHABLE")),
        ],
        None,
    );
    p.exit("set against an unreachable API", &out, 3);
    p.check(version_of(&dev, "web") == web_version, || {
        "a failing CLI command changed app web".into()
    });
    p.check(version_of(&dev, "other") == other_version, || {
        "a failing CLI command changed app other".into()
    });

    // ---------------------------------------------------------- restart in the middle
    // A graceful stop checkpoints SQLite's WAL into the database and removes it: keep a copy
    // of the live files first, so that the scan sees the WAL as it was.
    snapshot_data_dir(&dev, "before-restart");
    dev.restart();
    let after_restart = s.fresh("AFTERRESTART");
    dev.ok(&[
        "secrets",
        "set",
        "-a",
        "web",
        &format!("AFTER_RESTART={after_restart}"),
    ]);
    let out = dev.run(
        &["secrets", "import", "-a", "web", "--stage"],
        Some(format!("RESTART_IMPORT='{}'\n", s.fresh("RESTARTIMPORT")).as_bytes()),
    );
    p.exit("import --stage after the restart", &out, 0);
    dev.ok(&["secrets", "deploy", "-a", "web"]);
    let web_version = version_of(&dev, "web");

    // ------------------------------------------------------------- raw HTTP, malformed
    let api = dev.api_url.clone();
    let url = format!("{api}/v1/apps/web/secrets");
    let j = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
    let b64 = |x: &str| base64::engine::general_purpose::STANDARD.encode(x);
    let huge = repeated(&s.fresh("HUGEBODY"), 2 * 1024 * 1024 + 100);
    let nested = {
        let inner = format!("\"{}\"", s.fresh("NESTED"));
        format!(
            "{{\"set\":[{{\"name\":\"N\",\"value\":{}{inner}{}}}]}}",
            "[".repeat(200),
            "]".repeat(200)
        )
    };
    // (label, content type, body, acceptable statuses)
    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, &'a [u16]);
    let cases: Vec<Case> = vec![
        (
            "value-number",
            Some("application/json"),
            j(serde_json::json!({"set": [
                {"name": "G", "value": s.fresh("HTTPNUMG")},
                {"name": "N", "value": 12345}
            ]})),
            &[400],
        ),
        (
            "value-array",
            Some("application/json"),
            j(serde_json::json!({"set": [{"name": "N", "value": [s.fresh("HTTPARRAY")]}]})),
            &[400],
        ),
        (
            "value-object",
            Some("application/json"),
            j(serde_json::json!({"set": [{"name": "N", "value": {"k": s.fresh("HTTPOBJ")}}]})),
            &[400],
        ),
        (
            "value-object-key",
            Some("application/json"),
            format!(
                "{{\"set\":[{{\"name\":\"N\",\"value\":{{\"{}\":1}}}}]}}",
                s.fresh("HTTPOBJKEY")
            )
            .into_bytes(),
            &[400],
        ),
        (
            "value-bool-then-string",
            Some("application/json"),
            j(
                serde_json::json!({"set": [{"name": "N", "value": true, "value_base64": s.fresh("HTTPBOOL")}]}),
            ),
            &[400],
        ),
        (
            "base64-invalid",
            Some("application/json"),
            j(
                serde_json::json!({"set": [{"name": "N", "value_base64": format!("!!{}!!", s.fresh("HTTPB64"))}]}),
            ),
            &[422],
        ),
        (
            "base64-not-a-string",
            Some("application/json"),
            j(serde_json::json!({"set": [{"name": "N", "value_base64": [s.fresh("HTTPB64ARR")]}]})),
            &[400],
        ),
        (
            "value-and-base64",
            Some("application/json"),
            j(
                serde_json::json!({"set": [{"name": "N", "value": s.fresh("HTTPBOTH1"), "value_base64": b64(&s.fresh("HTTPBOTH2"))}]}),
            ),
            &[422],
        ),
        (
            "duplicate-value-key",
            Some("application/json"),
            format!(
                "{{\"set\":[{{\"name\":\"N\",\"value\":\"{}\",\"value\":\"{}\"}}]}}",
                s.fresh("HTTPDUP1"),
                s.fresh("HTTPDUP2")
            )
            .into_bytes(),
            &[400],
        ),
        (
            "unknown-pair-field",
            Some("application/json"),
            format!(
                "{{\"set\":[{{\"name\":\"UNK\",\"value\":\"{}\",\"{}\":\"{}\"}}]}}",
                s.fresh("HTTPUNK1"),
                s.fresh("HTTPUNKNAME"),
                s.fresh("HTTPUNK2")
            )
            .into_bytes(),
            &[400, 422],
        ),
        (
            "unknown-top-field",
            Some("application/json"),
            format!(
                "{{\"set\":[{{\"name\":\"UNK\",\"value\":\"{}\"}}],\"{}\":true}}",
                s.fresh("HTTPUNK3"),
                s.fresh("HTTPUNKTOP")
            )
            .into_bytes(),
            &[400, 422],
        ),
        (
            "misspelled-value",
            Some("application/json"),
            j(serde_json::json!({"set": [{"name": "N", "vaule": s.fresh("HTTPVAULE")}]})),
            &[400, 422],
        ),
        (
            "stage-wrong-type",
            Some("application/json"),
            j(
                serde_json::json!({"set": [{"name": "N", "value": s.fresh("HTTPSTAGE1")}], "stage": s.fresh("HTTPSTAGE2")}),
            ),
            &[400],
        ),
        (
            "unset-wrong-type",
            Some("application/json"),
            j(serde_json::json!({"unset": [{"name": s.fresh("HTTPUNSET")}]})),
            &[400],
        ),
        (
            "set-not-an-array",
            Some("application/json"),
            j(serde_json::json!({"set": {"name": "N", "value": s.fresh("HTTPSETOBJ")}})),
            &[400],
        ),
        (
            "truncated",
            Some("application/json"),
            format!(
                "{{\"set\":[{{\"name\":\"T\",\"value\":\"{}",
                s.fresh("HTTPTRUNC")
            )
            .into_bytes(),
            &[400],
        ),
        (
            "trailing-garbage",
            Some("application/json"),
            format!(
                "{{\"set\":[{{\"name\":\"T\",\"value\":\"{}\"}}]}} {}",
                s.fresh("HTTPTRAIL1"),
                s.fresh("HTTPTRAIL2")
            )
            .into_bytes(),
            &[400],
        ),
        (
            "invalid-utf8",
            Some("application/json"),
            {
                let mut v = format!(
                    "{{\"set\":[{{\"name\":\"T\",\"value\":\"{}",
                    s.fresh("HTTPUTF8")
                )
                .into_bytes();
                v.extend_from_slice(&[0xff, 0xfe]);
                v.extend_from_slice(b"\"}]}");
                v
            },
            &[400],
        ),
        (
            "deeply-nested",
            Some("application/json"),
            nested.into_bytes(),
            &[400],
        ),
        (
            "over-2-mib",
            Some("application/json"),
            j(serde_json::json!({"set": [{"name": "HUGE", "value": huge}]})),
            &[413],
        ),
        (
            "text-plain",
            Some("text/plain"),
            j(serde_json::json!({"set": [{"name": "N", "value": s.fresh("HTTPTEXT")}]})),
            &[400, 415],
        ),
        (
            "no-content-type",
            None,
            j(serde_json::json!({"set": [{"name": "N", "value": s.fresh("HTTPNOCT")}]})),
            &[400, 415],
        ),
        (
            "form-urlencoded",
            Some("application/x-www-form-urlencoded"),
            format!("set={}", s.fresh("HTTPFORM")).into_bytes(),
            &[400, 415],
        ),
        (
            "bad-name-among-good",
            Some("application/json"),
            j(serde_json::json!({"set": [
                {"name": "GOOD", "value": s.fresh("HTTPGOOD1")},
                {"name": "3BAD", "value": s.fresh("HTTPBAD")},
                {"name": "GOOD2", "value_base64": b64(&s.fresh("HTTPGOOD2"))}
            ]})),
            &[422],
        ),
        (
            "nul-escape",
            Some("application/json"),
            j(
                serde_json::json!({"set": [{"name": "N", "value": format!("{}\u{0}{}", s.fresh("HTTPNUL1"), s.fresh("HTTPNUL2"))}]}),
            ),
            &[422],
        ),
        (
            "nul-base64",
            Some("application/json"),
            j(
                serde_json::json!({"set": [{"name": "N", "value_base64": b64(&format!("{}\u{0}", s.fresh("HTTPNULB64")))}]}),
            ),
            &[422],
        ),
        (
            "oversized-value",
            Some("application/json"),
            j(
                serde_json::json!({"set": [{"name": "N", "value": repeated(&s.fresh("HTTPBIG"), 64 * 1024 + 1)}]}),
            ),
            &[422],
        ),
        (
            "unset-missing-with-set",
            Some("application/json"),
            j(
                serde_json::json!({"set": [{"name": "N", "value": s.fresh("HTTPUNSETMISS")}], "unset": ["NOT_THERE"]}),
            ),
            &[422],
        ),
        (
            "set-and-unset",
            Some("application/json"),
            j(
                serde_json::json!({"set": [{"name": "A", "value": s.fresh("HTTPSETUNSET")}], "unset": ["A"]}),
            ),
            &[422],
        ),
    ];
    for (label, ct, body, want) in cases {
        let got = raw(&dev, label, Method::POST, &url, Some(&admin), ct, body).await;
        p.check(want.contains(&got), || {
            format!("POST secrets ({label}): HTTP {got}, want one of {want:?}")
        });
    }
    // Refused before the body is looked at: no token, a sentinel token, a read token, an
    // unknown app, a wrong method.
    let body = j(serde_json::json!({"set": [{"name": "N", "value": s.fresh("HTTPAUTHBODY")}]}));
    let auth_cases = [
        ("no-token", url.clone(), None, 401),
        (
            "sentinel-token",
            url.clone(),
            Some(s.fresh("HTTPTOKEN")),
            401,
        ),
        ("read-token", url.clone(), Some(read_token.clone()), 403),
        (
            "revoked-token",
            url.clone(),
            Some(revoked_token.clone()),
            401,
        ),
        (
            "unknown-app",
            format!("{api}/v1/apps/nope/secrets"),
            Some(admin.clone()),
            404,
        ),
    ];
    for (label, u, token, want) in auth_cases {
        let got = raw(
            &dev,
            label,
            Method::POST,
            &u,
            token.as_deref(),
            Some("application/json"),
            body.clone(),
        )
        .await;
        p.check(got == want, || {
            format!("POST secrets ({label}): HTTP {got}, want {want}")
        });
    }
    let got = raw(
        &dev,
        "put",
        Method::PUT,
        &url,
        Some(&admin),
        Some("application/json"),
        body.clone(),
    )
    .await;
    p.check(got == 405, || format!("PUT secrets: HTTP {got}, want 405"));
    // Other bodies: an unknown scope, a token request with a sentinel as its app.
    let got = raw(
        &dev,
        "token-bad-scope",
        Method::POST,
        &format!("{api}/v1/tokens"),
        Some(&admin),
        Some("application/json"),
        j(serde_json::json!({"scope": s.fresh("HTTPSCOPE")})),
    )
    .await;
    p.check(got == 400, || {
        format!("POST tokens (bad scope): HTTP {got}, want 400")
    });
    let got = raw(
        &dev,
        "token-expiry-string",
        Method::POST,
        &format!("{api}/v1/tokens"),
        Some(&admin),
        Some("application/json"),
        j(serde_json::json!({"scope": "read", "expires_in_secs": s.fresh("HTTPEXPIRY")})),
    )
    .await;
    p.check(got == 400, || {
        format!("POST tokens (bad expiry): HTTP {got}, want 400")
    });
    // The vault's own interface, with a sentinel as its service token and in the body.
    let vault_url = dev.vault_url.clone();
    let got = raw(
        &dev,
        "vault-sentinel-token",
        Method::POST,
        &format!("{vault_url}/v1/apps/0123456789abcdef0123456789abcdef/keys"),
        Some(&s.fresh("VAULTTOKEN")),
        Some("application/json"),
        j(serde_json::json!({"value": s.fresh("VAULTBODY")})),
    )
    .await;
    p.check(got == 401, || {
        format!("vault with a wrong service token: HTTP {got}, want 401")
    });
    p.check(version_of(&dev, "web") == web_version, || {
        "a refused HTTP request changed app web".into()
    });
    let listed = names(&dev, "web");
    for n in ["N", "G", "T", "UNK", "GOOD", "GOOD2", "HUGE"] {
        p.check(!listed.contains(&n.to_string()), || {
            format!("{n} was set by a refused request")
        });
    }
    // The daemon is still up after all that.
    dev.ok(&["apps", "list"]);

    // ------------------------------------------------------------- every read, as text and JSON
    for json_flag in [false, true] {
        let mut reads: Vec<Vec<&str>> = vec![
            vec!["secrets", "list", "-a", "web"],
            vec!["secrets", "list", "-a", "other"],
            vec!["secrets", "history", "-a", "web"],
            vec!["secrets", "history", "-a", "web", "A"],
            vec!["secrets", "history", "-a", "other"],
            vec!["apps", "list"],
            vec!["tokens", "list"],
        ];
        if json_flag {
            for r in &mut reads {
                r.insert(0, "--json");
            }
        }
        for r in &reads {
            dev.ok(r);
        }
        let out = dev.run_as(&read_token, &reads[0], None);
        p.exit("list with the read token", &out, 0);
        let out = dev.run_as(&read_token, &reads[2], None);
        p.exit("history with the read token", &out, 0);
    }
    // A failing read, and the write path's JSON output.
    let out = dev.run(&["secrets", "history", "-a", "web", "NOT-A-NAME"], None);
    p.exit("history of an invalid name", &out, 7);
    let out = dev.run(
        &[
            "--json",
            "secrets",
            "set",
            "-a",
            "web",
            &format!("LAST={}", s.fresh("LASTJSON")),
        ],
        None,
    );
    p.exit("set --json", &out, 0);

    // Metrics and health endpoints of both roles are scanned too.
    for (label, u) in [
        ("api-metrics", format!("{api}/metrics")),
        ("vault-metrics", format!("{vault_url}/metrics")),
        ("api-readyz", format!("{api}/readyz")),
        ("vault-readyz", format!("{vault_url}/readyz")),
    ] {
        let got = raw(&dev, label, Method::GET, &u, None, None, Vec::new()).await;
        p.check(got == 200, || format!("GET {label}: HTTP {got}, want 200"));
    }

    // -------------------------------------------------------------- stop, dump, scan
    snapshot_data_dir(&dev, "before-stop");
    if dev.database_url.is_none() {
        assert!(
            dev.capture_dir
                .join("live-before-stop/coffer.db-wal")
                .exists(),
            "no live WAL was captured"
        );
    }
    dev.stop(false);
    let log = std::fs::read_to_string(dev.data_dir.join("cofferd.log")).unwrap();
    assert!(
        log.contains("TRACE"),
        "the daemon did not log at trace level, so the scan proves little"
    );
    assert!(
        log.contains("coffer dev stopped"),
        "the daemon did not stop gracefully"
    );
    let mut marker_files = vec![dev.data_dir.join("cofferd.log")];
    if let Some(url) = &dev.database_url {
        assert!(url.starts_with("postgres"));
        let dump = common::dump_postgres(url).await;
        for table in [
            "apps",
            "secret_values",
            "secret_versions",
            "api_tokens",
            "vault_app_keys",
        ] {
            assert!(
                dump.lines().any(|l| l.starts_with(&format!("{table} {{"))),
                "no rows of {table} in the dump"
            );
        }
        assert!(dump.contains("\\\\x01"), "no ciphertext in the dump");
        dev.capture("postgres-dump.txt", dump.as_bytes());
        marker_files.push(dev.capture_dir.join("postgres-dump.txt"));
    } else {
        marker_files.push(dev.sqlite_path());
    }
    // The scanned files hold the run's data: the names are there in the clear, next to
    // where a leaked value would be.
    let mut haystack = Vec::new();
    for f in &marker_files {
        haystack.extend(std::fs::read(f).unwrap());
    }
    for f in common::all_files(&[&dev.data_dir]) {
        if f.to_string_lossy().contains("coffer.db") {
            haystack.extend(std::fs::read(&f).unwrap());
        }
    }
    for name in ["IMP_TRIPLE_SINGLE", "AFTER_RESTART", "BIG_OK"] {
        assert!(
            haystack.windows(name.len()).any(|w| w == name.as_bytes()),
            "{name} is in neither the store nor the log: is the scan looking at the right files?"
        );
    }

    positive_control();

    let files = common::all_files(&[&dev.data_dir, &dev.capture_dir, &dev.config_home]);
    assert!(files.len() > 50, "too few files to scan: {}", files.len());
    for needed in ["cofferd.log", "unseal.key", "admin.token", "config.toml"] {
        assert!(
            files
                .iter()
                .any(|f| f.file_name().is_some_and(|n| n == needed)),
            "{needed} is not scanned"
        );
    }
    let hits = common::scan(&files, &s.0);
    assert!(
        hits.is_empty() && p.0.is_empty(),
        "{} sentinel hits (of {} sentinels in {} files):\n  {}\n{} other problems:\n  {}",
        hits.len(),
        s.0.len(),
        files.len(),
        hits.join("\n  "),
        p.0.len(),
        p.0.join("\n  ")
    );
}

/// Copies every file of the data dir, as it is while the daemon runs (WAL included), into
/// the capture dir.
fn snapshot_data_dir(dev: &Dev, label: &str) {
    let to = dev.capture_dir.join(format!("live-{label}"));
    std::fs::create_dir_all(&to).unwrap();
    for f in common::all_files(&[&dev.data_dir]) {
        std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
    }
}

/// The scanner finds a sentinel in each form it claims to check, at each base64 alignment,
/// and nothing in a file without one: a broken scanner cannot pass the test silently.
fn positive_control() {
    let control = common::sentinel("CONTROL");
    let other = common::sentinel("OTHER");
    let dir = tempfile::tempdir().unwrap();
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    let mut files = vec![
        (
            "raw",
            [b"log line: ".as_slice(), &control, b" end"].concat(),
        ),
        ("hex", format!("ct={}", hex::encode(&control)).into_bytes()),
        (
            "HEX",
            format!("CT={}", hex::encode_upper(&control)).into_bytes(),
        ),
    ];
    for engine in &engines {
        for prefix in ["", "a", "ab", "abc"] {
            let mut buf = prefix.as_bytes().to_vec();
            buf.extend_from_slice(&control);
            buf.extend_from_slice(b"suffix");
            let text = format!("body: {} trailing", engine.encode(&buf));
            files.push(("b64", text.into_bytes()));
        }
    }
    for (i, (what, bytes)) in files.iter().enumerate() {
        let path = dir.path().join(format!("control-{i}"));
        std::fs::write(&path, bytes).unwrap();
        let found = common::scan(std::slice::from_ref(&path), std::slice::from_ref(&control));
        assert!(
            !found.is_empty(),
            "positive control: the {what} form #{i} was not found"
        );
        assert!(
            common::scan(&[path], std::slice::from_ref(&other)).is_empty(),
            "the scanner reports a sentinel that is not there"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_no_sentinel_reaches_disk_or_output() {
    sentinel_scan(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_no_sentinel_reaches_disk_or_output() {
    sentinel_scan(Engine::Postgres).await;
}
