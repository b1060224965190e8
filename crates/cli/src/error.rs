//! The CLI's one error type and its exit codes.
//!
//! Every failure becomes a [`CliError`]: a message, an optional hint and an [`Exit`] code.
//! `main` prints it, and only there, as
//!
//! ```text
//! error: <message>
//! hint: <hint>
//! ```
//!
//! on stderr. Messages never contain a secret value or a token: API messages are user-safe by
//! contract, local validation messages name secrets but never show values, and an argument
//! that might be a value is referred to by its position.
//!
//! # Exit codes
//!
//! Stable; scripts may rely on them.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | any other error (server error, unexpected answer, I/O error, confirmation declined) |
//! | 2 | usage: the command line is wrong (clap's own errors, no app given, `NAME=-` used twice, `apps destroy` without `--yes` when stdin is not a terminal) |
//! | 3 | cannot reach the API, or no usable configuration (no API URL or token, unreadable config file, invalid URL) |
//! | 4 | the API refused the token: unauthorized (invalid, expired, revoked) or forbidden (scope) |
//! | 5 | not found (app, token) |
//! | 6 | conflict (the app exists already, a release is in progress) |
//! | 7 | invalid input: names, values, sizes, a dotenv parse error, a `NAME=VALUE` without `=` |
//! | 8 | a release failed: a machine crashed, failed to boot or failed its health check in its crash window; it was rolled back |

use coffer_client::ClientError;
use std::fmt;

/// `coffer --help` shows the exit codes too.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  any other error
  2  usage error (bad arguments, no app given)
  3  cannot reach the API, or no API URL / token configured
  4  unauthorized or forbidden (invalid, expired or revoked token; scope too narrow)
  5  not found
  6  conflict (already exists, release in progress)
  7  invalid input (names, values, sizes, dotenv syntax)
  8  the release failed and was rolled back";

/// Process exit codes; see the [module documentation](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Other = 1,
    Usage = 2,
    Unreachable = 3,
    Denied = 4,
    NotFound = 5,
    Conflict = 6,
    Invalid = 7,
    ReleaseFailed = 8,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }
}

pub const HINT_UNAUTHORIZED: &str =
    "the token is invalid or expired; check `coffer tokens list` or COFFER_API_TOKEN";
pub const HINT_FORBIDDEN: &str = "this token's scope does not allow that";
pub const HINT_UNREACHABLE: &str = "is cofferd running? start it with `cofferd dev`";

/// What went wrong, what to do about it, and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    pub exit: Exit,
    pub message: String,
    pub hint: Option<String>,
}

impl CliError {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Several problems of one input, each on its own line, so that all are fixed in one go.
    pub fn problems(exit: Exit, summary: &str, problems: &[String]) -> Self {
        match problems {
            [one] => Self::new(exit, one.clone()),
            many => {
                let mut msg = format!("{} problems, {summary}:", many.len());
                for p in many {
                    msg.push_str("\n  - ");
                    msg.push_str(p);
                }
                Self::new(exit, msg)
            }
        }
    }

    /// The text printed on stderr.
    pub fn render(&self) -> String {
        let mut s = format!("error: {}\n", self.message);
        if let Some(h) = &self.hint {
            s.push_str(&format!("hint: {h}\n"));
        }
        s
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Api { status, body } => {
                let exit = match body.code.as_str() {
                    "unauthorized" | "forbidden" => Exit::Denied,
                    "not_found" => Exit::NotFound,
                    "conflict" => Exit::Conflict,
                    "invalid" | "payload_too_large" => Exit::Invalid,
                    _ => match status {
                        401 | 403 => Exit::Denied,
                        404 => Exit::NotFound,
                        409 => Exit::Conflict,
                        400 | 413 | 422 => Exit::Invalid,
                        _ => Exit::Other,
                    },
                };
                let default_hint = match (body.code.as_str(), status) {
                    ("unauthorized", _) | (_, 401) => Some(HINT_UNAUTHORIZED),
                    ("forbidden", _) | (_, 403) => Some(HINT_FORBIDDEN),
                    _ => None,
                };
                CliError {
                    exit,
                    message: body.message,
                    hint: body.hint.or(default_hint.map(str::to_string)),
                }
            }
            ClientError::Connect { url, source } => {
                let cause = root_cause(&source);
                CliError::new(
                    Exit::Unreachable,
                    format!("cannot reach the coffer API at {url}: {cause}"),
                )
                .with_hint(HINT_UNREACHABLE)
            }
            e @ ClientError::Timeout { .. } => CliError::new(Exit::Unreachable, e.to_string())
                .with_hint(
                    "the change may still have been made: check `coffer secrets history` \
                     before retrying",
                ),
            e @ ClientError::Decode { .. } => CliError::new(Exit::Other, e.to_string())
                .with_hint("are coffer and cofferd the same version? (`coffer --version`)"),
            e @ ClientError::Encode => CliError::new(Exit::Other, e.to_string()),
            e @ ClientError::InvalidUrl { .. } => CliError::new(Exit::Unreachable, e.to_string())
                .with_hint("set it with --api-url, COFFER_API_URL or api_url in the config file"),
            e @ ClientError::InvalidArgument(_) => CliError::new(Exit::Invalid, e.to_string()),
            e @ ClientError::InvalidToken => CliError::new(Exit::Unreachable, e.to_string())
                .with_hint("check --token, COFFER_API_TOKEN or token in the config file"),
        }
    }
}

/// The innermost cause, which says what actually happened ("Connection refused").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_core::wire::ErrorBody;

    fn api(status: u16, code: &str, message: &str, hint: Option<&str>) -> CliError {
        ClientError::Api {
            status,
            body: ErrorBody {
                code: code.into(),
                message: message.into(),
                hint: hint.map(Into::into),
            },
        }
        .into()
    }

    #[test]
    fn api_errors_map_to_exit_codes() {
        assert_eq!(api(401, "unauthorized", "m", None).exit, Exit::Denied);
        assert_eq!(api(403, "forbidden", "m", None).exit, Exit::Denied);
        assert_eq!(api(404, "not_found", "m", None).exit, Exit::NotFound);
        assert_eq!(api(409, "conflict", "m", None).exit, Exit::Conflict);
        assert_eq!(api(422, "invalid", "m", None).exit, Exit::Invalid);
        assert_eq!(api(400, "invalid", "m", None).exit, Exit::Invalid);
        assert_eq!(api(413, "payload_too_large", "m", None).exit, Exit::Invalid);
        assert_eq!(api(500, "internal", "m", None).exit, Exit::Other);
        // An unknown code falls back on the status.
        assert_eq!(api(404, "gone_fishing", "m", None).exit, Exit::NotFound);
        assert_eq!(api(502, "internal", "m", None).exit, Exit::Other);
    }

    #[test]
    fn exit_codes_are_stable() {
        let codes: Vec<u8> = [
            Exit::Other,
            Exit::Usage,
            Exit::Unreachable,
            Exit::Denied,
            Exit::NotFound,
            Exit::Conflict,
            Exit::Invalid,
        ]
        .iter()
        .map(|e| e.code())
        .collect();
        assert_eq!(codes, vec![1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn rendering() {
        let cases = [
            api(401, "unauthorized", "the token is not valid", None),
            api(403, "forbidden", "a read token cannot change secrets", None),
            api(
                409,
                "conflict",
                "app \"web\" already exists",
                Some("pick another name, or see `coffer apps list`"),
            ),
            api(404, "not_found", "app \"web\" not found", None),
            api(
                422,
                "invalid",
                "secret name \"1A\" is invalid: use letters, digits and '_', not starting \
                 with a digit; value of B contains a NUL byte, which cannot be passed in an \
                 environment variable",
                None,
            ),
            api(500, "internal", "internal error", None),
            CliError::new(
                Exit::Unreachable,
                "cannot reach the coffer API at http://127.0.0.1:4000: Connection refused \
                 (os error 111)",
            )
            .with_hint(HINT_UNREACHABLE),
            CliError::problems(
                Exit::Invalid,
                "nothing was changed",
                &[
                    "secret name \"1A\" is invalid: use letters, digits and '_', not starting \
                     with a digit"
                        .into(),
                    "argument 3 is not NAME=VALUE (not shown, in case it is a secret value)".into(),
                ],
            ),
            CliError::new(Exit::Invalid, "line 3: unterminated double-quoted value"),
        ];
        let rendered: String = cases
            .iter()
            .map(|e| format!("[exit {}]\n{}", e.exit.code(), e.render()))
            .collect::<Vec<_>>()
            .join("\n");
        insta::assert_snapshot!(rendered);
    }

    #[tokio::test]
    async fn unreachable_api() {
        // Bound, not listening: refused, and no other test can take the port meanwhile.
        let held = tokio::net::TcpSocket::new_v4().unwrap();
        held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = held.local_addr().unwrap().port();
        let client = coffer_client::Client::new(
            &format!("http://127.0.0.1:{port}"),
            Some(coffer_client::SecretToken::new("cfr_sentinel".into())),
        )
        .unwrap();
        let e = CliError::from(client.list_apps().await.unwrap_err());
        assert_eq!(e.exit, Exit::Unreachable);
        let shown = e.render();
        assert!(
            shown.starts_with(&format!(
                "error: cannot reach the coffer API at http://127.0.0.1:{port}: "
            )),
            "{shown}"
        );
        assert!(
            shown.ends_with(&format!("\nhint: {HINT_UNREACHABLE}\n")),
            "{shown}"
        );
        assert!(!shown.contains("sentinel"));
    }
}
