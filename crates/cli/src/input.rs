//! Turning `secrets set` arguments and `secrets import` input into a validated change,
//! `machines run --env` arguments into a machine's environment pairs, and `--check-http` /
//! `--check-tcp` into its health check.
//!
//! Arguments are taken as raw bytes (`OsStr`), so a value may be any bytes the shell can pass,
//! not only UTF-8. Error messages name secrets but never show a value; an argument that has no
//! `=` is shown only if it looks like a name, since it could be a value typed in the wrong
//! place.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;

use coffer_core::wire::machines::HealthCheck;
use coffer_core::{ChangeSet, NameError, SecretName, SecretValue};

use crate::error::{CliError, Exit};

/// Where the value of one `NAME=VALUE` argument comes from.
pub enum ValueSource {
    Inline(SecretValue),
    /// `NAME=-`: the bytes of stdin, exactly as read.
    Stdin,
}

impl std::fmt::Debug for ValueSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueSource::Inline(v) => write!(f, "Inline({v:?})"),
            ValueSource::Stdin => f.write_str("Stdin"),
        }
    }
}

/// One `NAME=VALUE` argument, split at its first `=`.
#[derive(Debug)]
pub struct PairArg {
    pub name: String,
    pub value: ValueSource,
}

/// Splits `NAME=VALUE` arguments at their first `=` (so the value may contain `=`). Every
/// argument without `=` is reported, all at once. At most one `NAME=-` is allowed, since
/// stdin can be read only once.
pub fn parse_pairs(args: &[OsString]) -> Result<Vec<PairArg>, CliError> {
    let mut pairs = Vec::with_capacity(args.len());
    let mut problems = Vec::new();
    for (i, arg) in args.iter().enumerate() {
        let bytes = arg.as_bytes();
        match bytes.iter().position(|&b| b == b'=') {
            Some(eq) => {
                if looks_like_value(&bytes[..eq]) {
                    problems.push(format!(
                        "argument {} does not start with NAME= (not shown, in case it is a \
                         secret value)",
                        i + 1
                    ));
                    continue;
                }
                // A name is not secret; a non-UTF-8 one is refused by validation later,
                // quoted lossily.
                let name = String::from_utf8_lossy(&bytes[..eq]).into_owned();
                let raw = &bytes[eq + 1..];
                let value = if raw == b"-" {
                    ValueSource::Stdin
                } else {
                    ValueSource::Inline(SecretValue::new(raw.to_vec()))
                };
                pairs.push(PairArg { name, value });
            }
            None => problems.push(missing_equals(i + 1, bytes)),
        }
    }
    if !problems.is_empty() {
        return Err(
            CliError::problems(Exit::Invalid, "nothing was changed", &problems)
                .with_hint("write NAME=VALUE, or NAME=- to read the value from stdin"),
        );
    }
    let from_stdin: Vec<&str> = pairs
        .iter()
        .filter(|p| matches!(p.value, ValueSource::Stdin))
        .map(|p| p.name.as_str())
        .collect();
    if from_stdin.len() > 1 {
        return Err(CliError::new(
            Exit::Usage,
            format!(
                "only one value can be read from stdin, but {} use NAME=-",
                from_stdin.join(", ")
            ),
        )
        .with_hint("set the others in a separate command, or use `coffer secrets import`"));
    }
    Ok(pairs)
}

/// The message for an argument without `=`. It names the argument only when it looks like an
/// environment variable name (upper case, digits, `_`), since anything else may be a value
/// given without its `NAME=` (`coffer secrets set STRIPE_KEY sk_live_…`).
fn missing_equals(position: usize, arg: &[u8]) -> String {
    if looks_like_env_name(arg) {
        let name = String::from_utf8_lossy(arg);
        format!("{name} has no value: write {name}=VALUE")
    } else {
        format!("argument {position} is not NAME=VALUE (not shown, in case it is a secret value)")
    }
}

/// `[A-Z_][A-Z0-9_]*`, at most 64 bytes: what a name is conventionally, and what a value
/// rarely is.
fn looks_like_env_name(s: &[u8]) -> bool {
    s.len() <= 64 && looks_like_env_name_of_any_length(s)
}

/// Is the part before the first `=` plausibly a value rather than a mistyped name? (A URL
/// with a query string, `postgres://u:pw@h/db?a=b`, has an `=` too; so has base64 with its
/// padding, `c2VjcmV0…==`.) Such a part is never quoted in errors, nor taken as a name. Up to
/// 64 bytes, anything without those characters is taken as a name. Longer, only what looks
/// like an environment variable's name (`[A-Z_][A-Z0-9_]*`, up to the 256 bytes a name may
/// have): a long random value is very unlikely to be all capitals, digits and `_`, and a
/// long name in lower case can still be set through `secrets import` or `NAME=-`.
fn looks_like_value(name: &[u8]) -> bool {
    name.iter().any(|b| b":/@ \t\n".contains(b))
        || (name.len() > 64
            && !(name.len() <= MAX_NAME_BYTES && looks_like_env_name_of_any_length(name)))
}

/// [`looks_like_env_name`] without its length limit.
fn looks_like_env_name_of_any_length(s: &[u8]) -> bool {
    matches!(s.first(), Some(b'A'..=b'Z' | b'_'))
        && s.iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
}

/// The longest secret name (`SecretName`).
const MAX_NAME_BYTES: usize = 256;

/// The name of the pair whose value comes from stdin, if any.
pub fn stdin_name(pairs: &[PairArg]) -> Option<&str> {
    pairs
        .iter()
        .find(|p| matches!(p.value, ValueSource::Stdin))
        .map(|p| p.name.as_str())
}

/// Fills in the stdin value and validates the whole change locally, reporting every problem.
pub fn build_set(pairs: Vec<PairArg>, stdin: Option<Vec<u8>>) -> Result<ChangeSet, CliError> {
    let mut stdin = stdin;
    let sets = pairs
        .into_iter()
        .map(|p| {
            let value = match p.value {
                ValueSource::Inline(v) => v,
                ValueSource::Stdin => SecretValue::new(stdin.take().unwrap_or_default()),
            };
            (p.name, value)
        })
        .collect();
    validate(sets, vec![])
}

/// Validates a change with [`ChangeSet::new`], turning its problems into one error.
pub fn validate(
    sets: Vec<(String, SecretValue)>,
    unsets: Vec<String>,
) -> Result<ChangeSet, CliError> {
    ChangeSet::new(sets, unsets).map_err(|e| {
        let problems: Vec<String> = e.0.iter().map(ToString::to_string).collect();
        CliError::problems(Exit::Invalid, "nothing was changed", &problems)
    })
}

/// Parses dotenv text from `secrets import` and validates it. Nothing is imported on any
/// error, and no error shows a value.
pub fn build_import(input: &[u8]) -> Result<ChangeSet, CliError> {
    let text = std::str::from_utf8(input).map_err(|e| {
        let line = input[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        CliError::new(
            Exit::Invalid,
            format!("line {line}: the input is not valid UTF-8"),
        )
    })?;
    let pairs = coffer_core::dotenv::parse(text)
        .map_err(|e| CliError::new(Exit::Invalid, e.to_string()))?;
    if pairs.is_empty() {
        return Err(CliError::new(
            Exit::Invalid,
            "the input has no NAME=VALUE lines; nothing was imported",
        )
        .with_hint("pipe a dotenv file into it: coffer secrets import < .env"));
    }
    ChangeSet::new(pairs, vec![]).map_err(|e| {
        let problems: Vec<String> = e.0.iter().map(ToString::to_string).collect();
        CliError::problems(Exit::Invalid, "nothing was imported", &problems)
    })
}

/// Parses `machines run --env K=V` arguments: split at the first `=`, names checked like
/// secret names (`[A-Za-z_][A-Za-z0-9_]*`, at most 256 bytes, not `COFFER_…`), values without
/// NUL, no name twice. Every problem is reported at once; values are never shown (people
/// paste secrets into the wrong flag).
pub fn parse_env(args: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    let mut env = BTreeMap::new();
    let mut problems = Vec::new();
    for (i, arg) in args.iter().enumerate() {
        let Some((name, value)) = arg.split_once('=') else {
            problems.push(if looks_like_env_name(arg.as_bytes()) {
                format!("--env {arg} has no value: write --env {arg}=VALUE")
            } else {
                format!(
                    "--env argument {} is not NAME=VALUE (not shown, in case it is a secret value)",
                    i + 1
                )
            });
            continue;
        };
        if looks_like_value(name.as_bytes()) {
            problems.push(format!(
                "--env argument {} does not start with NAME= (not shown, in case it is a secret \
                 value)",
                i + 1
            ));
            continue;
        }
        if let Err(e) = SecretName::parse(name) {
            problems.push(match e {
                NameError::EmptySecret => format!("--env argument {} has an empty name", i + 1),
                NameError::SecretTooLong(_) => {
                    format!(
                        "--env name in argument {} is too long (at most 256 bytes)",
                        i + 1
                    )
                }
                NameError::Reserved(_) => {
                    format!("--env {name} uses the reserved prefix COFFER_")
                }
                _ => format!(
                    "--env name {name:?} is invalid: use letters, digits and '_', not starting \
                     with a digit"
                ),
            });
            continue;
        }
        if value.contains('\0') {
            problems.push(format!("the value of --env {name} contains a NUL byte"));
            continue;
        }
        if env.insert(name.to_string(), value.to_string()).is_some() {
            problems.push(format!("--env {name} is given twice"));
        }
    }
    if problems.is_empty() {
        Ok(env)
    } else {
        Err(
            CliError::problems(Exit::Invalid, "no machine was created", &problems).with_hint(
                "write --env NAME=VALUE; secrets belong in `coffer secrets set`, not in --env",
            ),
        )
    }
}

/// Parses `machines run --check-http PORT/PATH` (`8080/healthz`; `8080` alone checks `/`) or
/// `--check-tcp PORT` (clap refuses both at once) and applies the API's rules
/// ([`HealthCheck::validate`]) locally. These flags hold no secret, so errors quote them.
pub fn parse_check(http: Option<&str>, tcp: Option<&str>) -> Result<Option<HealthCheck>, CliError> {
    let (flag, arg, check) = match (http, tcp) {
        (Some(arg), _) => {
            let (port, path) = match arg.find('/') {
                Some(i) => (&arg[..i], &arg[i..]),
                None => (arg, "/"),
            };
            let check = parse_port(port).map(|port| HealthCheck::Http {
                port,
                path: path.to_string(),
            });
            ("--check-http", arg, check)
        }
        (None, Some(arg)) => (
            "--check-tcp",
            arg,
            parse_port(arg).map(|port| HealthCheck::Tcp { port }),
        ),
        (None, None) => return Ok(None),
    };
    let hint =
        "write --check-http PORT/PATH (e.g. 8080/healthz, or 8080 for /) or --check-tcp PORT";
    let shown = clip(arg, 80);
    check
        .and_then(|c| c.validate().map(|()| c))
        .map(Some)
        .map_err(|why| {
            CliError::new(Exit::Invalid, format!("{flag} {shown:?}: {why}")).with_hint(hint)
        })
}

/// A TCP port: digits only, 1 to 65535.
fn parse_port(s: &str) -> Result<u16, String> {
    let why = || "the port must be a number from 1 to 65535".to_string();
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(why());
    }
    match s.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        _ => Err(why()),
    }
}

/// At most `max` characters of user input, for an error message.
fn clip(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn health_check_flags() {
        let http = |port, path: &str| {
            Some(HealthCheck::Http {
                port,
                path: path.into(),
            })
        };
        assert_eq!(parse_check(None, None).unwrap(), None);
        assert_eq!(
            parse_check(Some("8080/healthz"), None).unwrap(),
            http(8080, "/healthz")
        );
        assert_eq!(parse_check(Some("8080"), None).unwrap(), http(8080, "/"));
        assert_eq!(parse_check(Some("8080/"), None).unwrap(), http(8080, "/"));
        assert_eq!(
            parse_check(Some("1/ready?deep=1"), None).unwrap(),
            http(1, "/ready?deep=1")
        );
        assert_eq!(
            parse_check(Some("65535/a/b"), None).unwrap(),
            http(65535, "/a/b")
        );
        assert_eq!(
            parse_check(None, Some("5432")).unwrap(),
            Some(HealthCheck::Tcp { port: 5432 })
        );
        for (http, tcp, why) in [
            (
                Some("0/healthz"),
                None,
                "port must be a number from 1 to 65535",
            ),
            (Some("65536"), None, "port must be a number from 1 to 65535"),
            (
                Some("/healthz"),
                None,
                "port must be a number from 1 to 65535",
            ),
            (
                Some(":8080/healthz"),
                None,
                "port must be a number from 1 to 65535",
            ),
            (Some("+80/x"), None, "port must be a number from 1 to 65535"),
            (
                Some("http://x/"),
                None,
                "port must be a number from 1 to 65535",
            ),
            (Some("8080/a b"), None, "must not contain spaces or control"),
            (
                Some("8080/a\r\nHost: x"),
                None,
                "must not contain spaces or control",
            ),
            (None, Some("0"), "port must be a number from 1 to 65535"),
            (
                None,
                Some("99999999999"),
                "port must be a number from 1 to 65535",
            ),
            (
                None,
                Some("db:5432"),
                "port must be a number from 1 to 65535",
            ),
            (None, Some(""), "port must be a number from 1 to 65535"),
        ] {
            let e = parse_check(http, tcp).unwrap_err();
            assert_eq!(e.exit, Exit::Invalid, "{http:?} {tcp:?}");
            let text = e.render();
            assert!(text.contains(why), "{text}");
            assert!(
                text.contains("hint: write --check-http PORT/PATH"),
                "{text}"
            );
        }
        let e = parse_check(Some("http://x/"), None).unwrap_err();
        insta::assert_snapshot!(e.render(), @r#"
        error: --check-http "http://x/": the port must be a number from 1 to 65535
        hint: write --check-http PORT/PATH (e.g. 8080/healthz, or 8080 for /) or --check-tcp PORT
        "#);
        let long = format!("8080/{}", "a".repeat(600));
        let e = parse_check(Some(&long), None).unwrap_err();
        assert!(e.message.contains("at most 512 bytes"), "{}", e.message);
        assert!(e.message.len() < 200, "input is clipped: {}", e.message);
    }

    #[test]
    fn every_valid_name_length_is_accepted() {
        let name = "N".repeat(MAX_NAME_BYTES);
        let pairs = parse_pairs(&[format!("{name}=v").into()]).unwrap();
        assert_eq!(pairs[0].name, name);
        assert!(SecretName::parse(&name).is_ok(), "the limits agree");
        let env = parse_env(&[format!("{name}=v")]).unwrap();
        assert_eq!(env[&name], "v");
        // One byte longer is not quoted back: it may be a value typed before its `=`.
        let longer = format!("{}=v", "N".repeat(MAX_NAME_BYTES + 1));
        let e = parse_pairs(&[longer.clone().into()]).unwrap_err();
        assert!(
            !e.render().contains(&longer[..MAX_NAME_BYTES]),
            "{}",
            e.render()
        );
        // A long value typed before its `=` (base64 with its padding) is neither taken as a
        // name nor quoted, whatever letters it has.
        for value in [
            "dGhpc2lzYXZlcnlsb25nc2VjcmV0a2V5dGhhdHNob3VsZG5ldmVyYmVhbmFtZWF0YWxsZXZlcg",
            "dGhpc2lzYXZlcnlsb25nc2VjcmV0a2V5dGhhdHNob3VsZG5ldmVyYmVhbmFtZWF0YWxsZXZl+g",
        ] {
            assert!(value.len() > 64);
            let e = parse_pairs(&[format!("{value}==").into()]).unwrap_err();
            assert!(!e.render().contains(&value[..20]), "{}", e.render());
        }
    }

    #[test]
    fn env_pairs() {
        let ok = parse_env(&[
            "PORT=8080".into(),
            "URL=http://x/?a=b".into(),
            "EMPTY=".into(),
        ])
        .unwrap();
        assert_eq!(ok["PORT"], "8080");
        assert_eq!(ok["URL"], "http://x/?a=b");
        assert_eq!(ok["EMPTY"], "");
        let e = parse_env(&[
            "1X=a".into(),
            "COFFER_APP_NAME=spoof".into(),
            "PORT".into(),
            "sk_live_sentinel".into(),
            "A=1".into(),
            "A=2".into(),
            "=v".into(),
            "postgres://u:pw@h/db?x=y".into(),
        ])
        .unwrap_err();
        assert_eq!(e.exit, Exit::Invalid);
        insta::assert_snapshot!(e.render(), @r#"
        error: 7 problems, no machine was created:
          - --env name "1X" is invalid: use letters, digits and '_', not starting with a digit
          - --env COFFER_APP_NAME uses the reserved prefix COFFER_
          - --env PORT has no value: write --env PORT=VALUE
          - --env argument 4 is not NAME=VALUE (not shown, in case it is a secret value)
          - --env A is given twice
          - --env argument 7 has an empty name
          - --env argument 8 does not start with NAME= (not shown, in case it is a secret value)
        hint: write --env NAME=VALUE; secrets belong in `coffer secrets set`, not in --env
        "#);
        assert!(!e.render().contains("sentinel") && !e.render().contains("spoof"));
    }

    fn args(a: &[&[u8]]) -> Vec<OsString> {
        a.iter().map(|b| OsString::from_vec(b.to_vec())).collect()
    }

    fn inline(p: &PairArg) -> &[u8] {
        match &p.value {
            ValueSource::Inline(v) => v.expose_bytes(),
            ValueSource::Stdin => panic!("stdin"),
        }
    }

    #[test]
    fn splits_at_the_first_equals() {
        let p = parse_pairs(&args(&[
            b"URL=postgres://u@h/db?a=b&c=d",
            b"EMPTY=",
            b"EQ==",
        ]))
        .unwrap();
        assert_eq!(p[0].name, "URL");
        assert_eq!(inline(&p[0]), b"postgres://u@h/db?a=b&c=d");
        assert_eq!(p[1].name, "EMPTY");
        assert_eq!(inline(&p[1]), b"");
        assert_eq!(p[2].name, "EQ");
        assert_eq!(inline(&p[2]), b"=");
    }

    #[test]
    fn values_may_be_any_bytes() {
        let p = parse_pairs(&args(&[b"BIN=\xff\xfe x\n"])).unwrap();
        assert_eq!(inline(&p[0]), b"\xff\xfe x\n");
    }

    #[test]
    fn dash_reads_stdin() {
        let p = parse_pairs(&args(&[b"A=1", b"KEY=-", b"B=--"])).unwrap();
        assert!(matches!(p[1].value, ValueSource::Stdin));
        assert_eq!(inline(&p[2]), b"--");
        assert_eq!(stdin_name(&p), Some("KEY"));
        // The value is taken exactly as read: no trimming.
        let change = build_set(p, Some(b" pem\n\n".to_vec())).unwrap();
        let (name, value) = &change.sets()[1];
        assert_eq!(name.as_str(), "KEY");
        assert_eq!(value.expose_bytes(), b" pem\n\n");
    }

    #[test]
    fn at_most_one_dash() {
        let e = parse_pairs(&args(&[b"A=-", b"B=-"])).unwrap_err();
        assert_eq!(e.exit, Exit::Usage);
        assert!(e.message.contains("A, B"), "{}", e.message);
    }

    #[test]
    fn missing_equals_names_only_name_like_arguments() {
        let e = parse_pairs(&args(&[
            b"A=1",
            b"DATABASE_URL",
            b"postgres://user:hunter2@db",
            b"sk_live_hunter2",
            b"postgres://u:hunter2@h/db?sslmode=require",
        ]))
        .unwrap_err();
        assert_eq!(e.exit, Exit::Invalid);
        let shown = e.render();
        assert!(shown.contains("DATABASE_URL has no value"), "{shown}");
        assert!(shown.contains("argument 3 is not NAME=VALUE"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        insta::assert_snapshot!(shown);
    }

    #[test]
    fn validation_reports_every_problem_without_values() {
        let p = parse_pairs(&args(&[
            b"1A=sentinel1",
            b"COFFER_X=sentinel2",
            b"OK=fine",
            b"N=a\0b",
        ]))
        .unwrap();
        let e = build_set(p, None).unwrap_err();
        assert_eq!(e.exit, Exit::Invalid);
        let shown = e.render();
        assert!(!shown.contains("sentinel"), "{shown}");
        insta::assert_snapshot!(shown);
    }

    #[test]
    fn import_errors() {
        let e = build_import(b"A=1\nB=\"unterminated\n").unwrap_err();
        assert_eq!(e.exit, Exit::Invalid);
        assert!(e.message.starts_with("line 2: "), "{}", e.message);
        let e = build_import(b"A=1\nB=\xff\n").unwrap_err();
        assert_eq!(e.message, "line 2: the input is not valid UTF-8");
        let e = build_import(b"# only a comment\n\n").unwrap_err();
        assert!(e.message.contains("nothing was imported"));
        let e = build_import(b"COFFER_A=1\n").unwrap_err();
        assert!(e.message.contains("reserved prefix"), "{}", e.message);
        let c = build_import(b"export A=1\nB='two words'\n").unwrap();
        assert_eq!(c.describe(), "Set A, B");
    }
}
