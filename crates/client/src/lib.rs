//! Typed HTTP client for coffer's control-plane API, shared by the `coffer` CLI and the
//! end-to-end tests.
//!
//! One async method per route; request and response bodies are the types of
//! [`coffer_core::wire`]. Errors are [`ClientError`]: an API error keeps the server's
//! [`ErrorBody`] (stable `code`, user-safe `message`, optional `hint`) and its HTTP status.
//!
//! Invariants:
//! - The bearer token lives in a [`SecretToken`] and is sent as a *sensitive* header; it never
//!   appears in a `Debug` output, an error or a log line.
//! - Request bodies (which may carry secret values) are never put into an error. Response
//!   decoding errors name the route and the position of the problem, never the text.
//!
//! ```no_run
//! # async fn demo() -> Result<(), coffer_client::ClientError> {
//! use coffer_client::{Client, SecretToken};
//! let client = Client::new("http://127.0.0.1:4000", Some(SecretToken::new("cfr_…".into())))?;
//! for app in client.list_apps().await? {
//!     println!("{}", app.name);
//! }
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use coffer_core::wire::machines::{Machine, RunMachine};
use coffer_core::wire::{
    App, CreateApp, CreateToken, CreatedToken, DeployResult, ErrorBody, SecretList, SecretPair,
    TokenInfo, VersionInfo, WriteResult, WriteSecrets,
};
use coffer_core::{ChangeSet, SecretValue};
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use coffer_core::secret::SecretToken;

/// How long to wait for a TCP (and TLS) connection to the API.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take in all, from sending it to the end of the response body.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a call failed. Never contains a request body or the token.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API answered with an error status. `body` is the server's [`ErrorBody`], or one
    /// made up from the status when the answer was not one (e.g. a proxy's HTML page).
    #[error("{}", body.message)]
    Api { status: u16, body: ErrorBody },

    /// The request never got an answer: refused connection, DNS failure, TLS failure, reset.
    #[error("cannot reach the coffer API at {url}")]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    /// The API did not answer within [`REQUEST_TIMEOUT`]. The request may still have been
    /// carried out.
    #[error("the coffer API at {url} did not answer within {} s", REQUEST_TIMEOUT.as_secs())]
    Timeout {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    /// The API answered with a success status but a body this client does not understand
    /// (usually a client and a server of different versions).
    #[error("unexpected answer from the coffer API to {route}: {detail}")]
    Decode { route: String, detail: String },

    /// The request could not be built (its body could not be serialized). Says nothing of
    /// the body.
    #[error("the request to the coffer API could not be built")]
    Encode,

    /// The base URL given to [`Client::new`] is not usable.
    #[error("invalid coffer API URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// An argument cannot be put into a request path (an empty app name or token ID, `..`).
    #[error("{0}")]
    InvalidArgument(String),

    /// The token contains characters that cannot be sent in an HTTP header.
    #[error("the API token contains characters that cannot be sent in an HTTP header")]
    InvalidToken,
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The server's machine code of an API error (`unauthorized`, `not_found`, …).
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { body, .. } => Some(&body.code),
            _ => None,
        }
    }
}

/// A client for one coffer API, with one optional bearer token.
///
/// Not `Clone`, because the token is not: build one per credential (share it by reference
/// or in an `Arc`).
pub struct Client {
    http: reqwest::Client,
    /// The same settings without the overall [`REQUEST_TIMEOUT`], for responses that stream
    /// for as long as the user wants (`machines logs --follow`).
    stream_http: reqwest::Client,
    base: Url,
    token: Option<SecretToken>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

impl Client {
    /// A client for the API at `base_url` (`http://` or `https://`, optionally with a path
    /// prefix such as `https://example.com/coffer`). `token` is sent as
    /// `Authorization: Bearer …` on every request but the health checks.
    pub fn new(base_url: &str, token: Option<SecretToken>) -> Result<Client, ClientError> {
        let base = parse_base_url(base_url)?;
        if let Some(t) = &token {
            // Checked once here so that every later request can build its header.
            bearer(t)?;
        }
        let build = |timeout: Option<Duration>| {
            let mut b = reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .user_agent(concat!("coffer-client/", env!("CARGO_PKG_VERSION")));
            if let Some(t) = timeout {
                b = b.timeout(t);
            }
            b.build().map_err(|e| ClientError::InvalidUrl {
                url: base.to_string(),
                reason: format!("cannot build an HTTP client: {e}"),
            })
        };
        let http = build(Some(REQUEST_TIMEOUT))?;
        let stream_http = build(None)?;
        Ok(Client {
            http,
            stream_http,
            base,
            token,
        })
    }

    /// A client for the same API with another token, sharing this one's connection pool
    /// (e.g. to act with a freshly created, narrower token).
    pub fn with_token(&self, token: Option<SecretToken>) -> Result<Client, ClientError> {
        if let Some(t) = &token {
            bearer(t)?;
        }
        Ok(Client {
            http: self.http.clone(),
            stream_http: self.stream_http.clone(),
            base: self.base.clone(),
            token,
        })
    }

    /// The base URL, normalised (no trailing slash).
    pub fn base_url(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// `GET /healthz`: the API process is up.
    pub async fn healthz(&self) -> Result<(), ClientError> {
        self.call_empty(Method::GET, &["healthz"], None, false)
            .await
    }

    /// `GET /readyz`: the API is ready to serve (its store is reachable).
    pub async fn readyz(&self) -> Result<(), ClientError> {
        self.call_empty(Method::GET, &["readyz"], None, false).await
    }

    /// `POST /v1/apps`.
    pub async fn create_app(&self, name: &str) -> Result<App, ClientError> {
        let body = CreateApp {
            name: name.to_string(),
        };
        self.call(Method::POST, &["v1", "apps"], None, Some(&body))
            .await
    }

    /// `GET /v1/apps`.
    pub async fn list_apps(&self) -> Result<Vec<App>, ClientError> {
        self.call(Method::GET, &["v1", "apps"], None, None::<&()>)
            .await
    }

    /// `GET /v1/apps/{app}`.
    pub async fn get_app(&self, app: &str) -> Result<App, ClientError> {
        self.call(Method::GET, &["v1", "apps", app], None, None::<&()>)
            .await
    }

    /// `DELETE /v1/apps/{app}`: destroys the app's machines, keys and secrets.
    pub async fn destroy_app(&self, app: &str) -> Result<(), ClientError> {
        self.call_empty(Method::DELETE, &["v1", "apps", app], None, true)
            .await
    }

    /// `GET /v1/apps/{app}/secrets`: names, digests and dates — never values.
    pub async fn list_secrets(&self, app: &str) -> Result<SecretList, ClientError> {
        self.call(
            Method::GET,
            &["v1", "apps", app, "secrets"],
            None,
            None::<&()>,
        )
        .await
    }

    /// `POST /v1/apps/{app}/secrets`: one atomic set/unset/import. The request is dropped
    /// (and its values wiped) when this returns.
    pub async fn write_secrets(
        &self,
        app: &str,
        write: WriteSecrets,
    ) -> Result<WriteResult, ClientError> {
        self.call(
            Method::POST,
            &["v1", "apps", app, "secrets"],
            None,
            Some(&write),
        )
        .await
    }

    /// `PATCH /v1/apps/{app}`: settings (the crash window).
    pub async fn update_app(
        &self,
        app: &str,
        update: &coffer_core::wire::UpdateApp,
    ) -> Result<App, ClientError> {
        self.call(Method::PATCH, &["v1", "apps", app], None, Some(update))
            .await
    }

    /// `GET /v1/apps/{app}/releases`: newest first.
    pub async fn releases(
        &self,
        app: &str,
    ) -> Result<Vec<coffer_core::wire::Release>, ClientError> {
        self.call(
            Method::GET,
            &["v1", "apps", app, "releases"],
            None,
            None::<&()>,
        )
        .await
    }

    /// `GET /v1/apps/{app}/releases/{version}`.
    pub async fn release(
        &self,
        app: &str,
        version: i64,
    ) -> Result<coffer_core::wire::Release, ClientError> {
        let v = version.to_string();
        self.call(
            Method::GET,
            &["v1", "apps", app, "releases", &v],
            None,
            None::<&()>,
        )
        .await
    }

    /// `POST /v1/apps/{app}/secrets/deploy`: releases what was staged.
    pub async fn deploy(&self, app: &str) -> Result<DeployResult, ClientError> {
        self.call(
            Method::POST,
            &["v1", "apps", app, "secrets", "deploy"],
            None,
            None::<&()>,
        )
        .await
    }

    /// `GET /v1/apps/{app}/secrets/history[?name=N]`: versions, newest first.
    pub async fn history(
        &self,
        app: &str,
        name: Option<&str>,
    ) -> Result<Vec<VersionInfo>, ClientError> {
        let query = name.map(|n| ("name", n));
        self.call(
            Method::GET,
            &["v1", "apps", app, "secrets", "history"],
            query,
            None::<&()>,
        )
        .await
    }

    /// `POST /v1/tokens`. The answer holds the new token's secret, shown only this once.
    pub async fn create_token(&self, req: &CreateToken) -> Result<CreatedToken, ClientError> {
        self.call(Method::POST, &["v1", "tokens"], None, Some(req))
            .await
    }

    /// `GET /v1/tokens`.
    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, ClientError> {
        self.call(Method::GET, &["v1", "tokens"], None, None::<&()>)
            .await
    }

    /// `DELETE /v1/tokens/{id}`.
    pub async fn revoke_token(&self, id: &str) -> Result<(), ClientError> {
        self.call_empty(Method::DELETE, &["v1", "tokens", id], None, true)
            .await
    }

    /// `POST /v1/apps/{app}/machines`: creates a machine; its host boots it with the app's
    /// current secrets.
    pub async fn run_machine(&self, app: &str, req: &RunMachine) -> Result<Machine, ClientError> {
        self.call(
            Method::POST,
            &["v1", "apps", app, "machines"],
            None,
            Some(req),
        )
        .await
    }

    /// `GET /v1/apps/{app}/machines`: the app's machines that are not destroyed.
    pub async fn list_machines(&self, app: &str) -> Result<Vec<Machine>, ClientError> {
        self.call(
            Method::GET,
            &["v1", "apps", app, "machines"],
            None,
            None::<&()>,
        )
        .await
    }

    /// `GET /v1/apps/{app}/machines/{id}`.
    pub async fn machine(&self, app: &str, id: &str) -> Result<Machine, ClientError> {
        self.call(
            Method::GET,
            &["v1", "apps", app, "machines", id],
            None,
            None::<&()>,
        )
        .await
    }

    /// `POST /v1/apps/{app}/machines/{id}/stop`: the machine is desired stopped; its host
    /// stops the workload.
    pub async fn stop_machine(&self, app: &str, id: &str) -> Result<Machine, ClientError> {
        self.call(
            Method::POST,
            &["v1", "apps", app, "machines", id, "stop"],
            None,
            None::<&()>,
        )
        .await
    }

    /// `POST /v1/apps/{app}/machines/{id}/start`: the machine is desired running; its host
    /// boots it with a fresh machine token.
    pub async fn start_machine(&self, app: &str, id: &str) -> Result<Machine, ClientError> {
        self.call(
            Method::POST,
            &["v1", "apps", app, "machines", id, "start"],
            None,
            None::<&()>,
        )
        .await
    }

    /// `DELETE /v1/apps/{app}/machines/{id}`: answers once the machine's access to the app's
    /// secrets is revoked; its host then stops the workload and deletes its files.
    pub async fn destroy_machine(&self, app: &str, id: &str) -> Result<Machine, ClientError> {
        self.call(
            Method::DELETE,
            &["v1", "apps", app, "machines", id],
            None,
            None::<&()>,
        )
        .await
    }

    /// `GET /v1/apps/{app}/machines/{id}/logs?follow=…`: the workload's output as it comes.
    /// With `follow`, the stream stays open (no overall timeout) until the machine is
    /// destroyed or the caller drops it.
    pub async fn machine_logs(
        &self,
        app: &str,
        id: &str,
        follow: bool,
    ) -> Result<LogStream<'_>, ClientError> {
        let url = self.url(
            &["v1", "apps", app, "machines", id, "logs"],
            Some(("follow", if follow { "true" } else { "false" })),
        )?;
        let mut req = self.stream_http.get(url);
        if let Some(t) = &self.token {
            req = req.header(AUTHORIZATION, bearer(t)?);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(e))?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await.map_err(|e| self.transport_error(e))?;
            return Err(api_error(status, &bytes));
        }
        Ok(LogStream { client: self, resp })
    }

    fn url(&self, segments: &[&str], query: Option<(&str, &str)>) -> Result<Url, ClientError> {
        // The URL parser drops "." and ".." segments, which would silently turn a call on
        // an app or token named ".." into a call on another route.
        if let Some(bad) = segments.iter().find(|s| matches!(**s, "" | "." | "..")) {
            return Err(ClientError::InvalidArgument(format!(
                "{bad:?} is not a valid app name, token ID or machine ID"
            )));
        }
        let mut url = self.base.clone();
        // `parse_base_url` refused cannot-be-a-base URLs, so this cannot fail.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if let Some((k, v)) = query {
            url.query_pairs_mut().append_pair(k, v);
        }
        Ok(url)
    }

    /// Sends a request and returns the raw success response.
    async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        segments: &[&str],
        query: Option<(&str, &str)>,
        body: Option<&B>,
        auth: bool,
    ) -> Result<reqwest::Response, ClientError> {
        let url = self.url(segments, query)?;
        let mut req = self.http.request(method, url);
        if auth {
            if let Some(t) = &self.token {
                req = req.header(AUTHORIZATION, bearer(t)?);
            }
        }
        if let Some(b) = body {
            // Serialized by reqwest straight into the request; a failure is reported without
            // the serde message, which could quote a value.
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(e))?;
        Err(api_error(status, &bytes))
    }

    async fn call<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: Method,
        segments: &[&str],
        query: Option<(&str, &str)>,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let route = route(&method, segments);
        let resp = self.send(method, segments, query, body, true).await?;
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(e))?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            route,
            detail: describe_json_error(&e),
        })
    }

    async fn call_empty(
        &self,
        method: Method,
        segments: &[&str],
        query: Option<(&str, &str)>,
        auth: bool,
    ) -> Result<(), ClientError> {
        let resp = self
            .send(method, segments, query, None::<&()>, auth)
            .await?;
        // Drain the body so the connection can be reused.
        resp.bytes().await.map_err(|e| self.transport_error(e))?;
        Ok(())
    }

    fn transport_error(&self, e: reqwest::Error) -> ClientError {
        let url = self.base_url().to_string();
        if e.is_builder() {
            // Building the request failed on our side (e.g. its body could not be
            // serialized); reqwest's message may describe the body, so it is left out.
            ClientError::Encode
        } else if e.is_timeout() && !e.is_connect() {
            ClientError::Timeout {
                url,
                source: e.without_url(),
            }
        } else {
            ClientError::Connect {
                url,
                source: e.without_url(),
            }
        }
    }
}

/// A machine's log output, read chunk by chunk as the server sends it.
pub struct LogStream<'a> {
    client: &'a Client,
    resp: reqwest::Response,
}

impl fmt::Debug for LogStream<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStream")
            .field("status", &self.resp.status().as_u16())
            .finish_non_exhaustive()
    }
}

impl LogStream<'_> {
    /// The next bytes, or `None` at the end of the log (never, while following, until the
    /// machine is destroyed).
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        match self.resp.chunk().await {
            Ok(Some(b)) => Ok(Some(b.to_vec())),
            Ok(None) => Ok(None),
            Err(e) => Err(self.client.transport_error(e)),
        }
    }

    /// The underlying HTTP response.
    pub fn into_response(self) -> reqwest::Response {
        self.resp
    }
}

/// Builds the wire form of one `NAME=VALUE` pair: the value as text when it is valid UTF-8 and
/// no longer as a JSON string than in base64, else as standard base64. (JSON writes a control
/// byte as six, `\u0001`: an app's 512 KiB of such values would be 3 MiB of text, over the
/// daemons' 2 MiB body limit, where base64 keeps any value to 4/3 of its size.)
pub fn secret_pair(name: String, value: &SecretValue) -> SecretPair {
    let bytes = value.expose_bytes();
    let as_text = std::str::from_utf8(bytes)
        .ok()
        .filter(|s| json_string_len(s) <= bytes.len().div_ceil(3) * 4);
    match as_text {
        Some(s) => SecretPair {
            name,
            value: Some(s.to_string()),
            value_base64: None,
        },
        None => SecretPair {
            name,
            value: None,
            value_base64: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        },
    }
}

/// How many bytes `s` takes inside a JSON string, as serde_json writes it.
fn json_string_len(s: &str) -> usize {
    s.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0x00..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

/// The request for a validated change: its sets and unsets, staged or deployed.
pub fn write_request(change: &ChangeSet, stage: bool) -> WriteSecrets {
    WriteSecrets {
        set: change
            .sets()
            .iter()
            .map(|(n, v)| secret_pair(n.as_str().to_string(), v))
            .collect(),
        unset: change
            .unsets()
            .iter()
            .map(|n| n.as_str().to_string())
            .collect(),
        stage,
    }
}

fn bearer(token: &SecretToken) -> Result<HeaderValue, ClientError> {
    let mut v = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .map_err(|_| ClientError::InvalidToken)?;
    v.set_sensitive(true);
    Ok(v)
}

fn parse_base_url(s: &str) -> Result<Url, ClientError> {
    let invalid = |reason: &str| ClientError::InvalidUrl {
        url: s.chars().take(200).collect(),
        reason: reason.to_string(),
    };
    let url = Url::parse(s.trim()).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("use an http:// or https:// URL"));
    }
    if url.cannot_be_a_base() || url.host().is_none() {
        return Err(invalid("the URL has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Credentials would end up in error messages and logs; the token has its own flag.
        return Err(ClientError::InvalidUrl {
            url: "(not shown: it contains credentials)".into(),
            reason: "credentials in the URL are not supported; pass the token with --token".into(),
        });
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("the URL must not have a query or a fragment"));
    }
    Ok(url)
}

fn route(method: &Method, segments: &[&str]) -> String {
    format!("{method} /{}", segments.join("/"))
}

/// An error status into [`ClientError::Api`], keeping the server's body when it is an
/// [`ErrorBody`].
fn api_error(status: StatusCode, bytes: &[u8]) -> ClientError {
    let body = match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(b) => b,
        Err(_) => ErrorBody {
            code: code_for_status(status).to_string(),
            message: format!(
                "the coffer API answered {} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            )
            .trim_end()
            .to_string(),
            hint: None,
        },
    };
    ClientError::Api {
        status: status.as_u16(),
        body,
    }
}

/// The code the API would have used for this status.
fn code_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        409 => "conflict",
        400 | 422 => "invalid",
        413 => "payload_too_large",
        _ => "internal",
    }
}

/// A JSON decoding error without the text around it (a response may hold a new token).
fn describe_json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "cannot read the body",
        Category::Syntax => "the body is not valid JSON",
        Category::Data => "the body does not have the expected fields",
        Category::Eof => "the body ends early",
    };
    format!("{what} (line {}, column {})", e.line(), e.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_use_text_or_base64() {
        let p = secret_pair("A".into(), &SecretValue::new(b"h\xc3\xa9llo".to_vec()));
        assert_eq!(p.value.as_deref(), Some("héllo"));
        assert!(p.value_base64.is_none());
        let p = secret_pair("B".into(), &SecretValue::new(vec![0xff, 0xfe, b'a']));
        assert!(p.value.is_none());
        assert_eq!(p.value_base64.as_deref(), Some("//5h"));
        let p = secret_pair("C".into(), &SecretValue::new(vec![]));
        assert_eq!(p.value.as_deref(), Some(""));
        let p = secret_pair("D".into(), &SecretValue::new(b"a\nb\"c".to_vec()));
        assert_eq!(
            p.value.as_deref(),
            Some("a\nb\"c"),
            "a few escapes stay text"
        );
    }

    #[test]
    fn control_heavy_text_goes_as_base64() {
        // 60 KiB of control bytes: 360 KiB as a JSON string, 80 KiB in base64.
        let value = SecretValue::new(vec![0x01; 60 * 1024]);
        let p = secret_pair("CTRL".into(), &value);
        assert!(p.value.is_none());
        let wire = serde_json::to_string(&p).unwrap();
        assert!(wire.len() < 60 * 1024 * 4 / 3 + 100, "{}", wire.len());
        for s in ["plain", "\u{1}\u{2}", "tab\there", "\"\"\"", "é\u{7f}"] {
            let expected = serde_json::to_string(s).unwrap().len() - 2;
            assert_eq!(json_string_len(s), expected, "{s:?}");
        }
    }

    #[test]
    fn urls_are_joined_and_escaped() {
        let c = Client::new("http://127.0.0.1:4000", None).unwrap();
        assert_eq!(
            c.url(&["v1", "apps", "my-app", "secrets"], None)
                .unwrap()
                .as_str(),
            "http://127.0.0.1:4000/v1/apps/my-app/secrets"
        );
        let c = Client::new("https://example.com/coffer/", None).unwrap();
        assert_eq!(
            c.url(&["v1", "tokens", "a/b c"], None).unwrap().as_str(),
            "https://example.com/coffer/v1/tokens/a%2Fb%20c"
        );
        assert_eq!(
            c.url(
                &["v1", "apps", "x", "secrets", "history"],
                Some(("name", "A&B"))
            )
            .unwrap()
            .as_str(),
            "https://example.com/coffer/v1/apps/x/secrets/history?name=A%26B"
        );
        assert_eq!(c.base_url(), "https://example.com/coffer");
        for bad in ["", ".", ".."] {
            assert!(matches!(
                c.url(&["v1", "tokens", bad], None),
                Err(ClientError::InvalidArgument(_))
            ));
        }
    }

    #[test]
    fn bad_urls_are_refused() {
        for bad in [
            "",
            "127.0.0.1:4000",
            "ftp://x",
            "http://",
            "http://x/?a=1",
            "mailto:a@b",
        ] {
            assert!(
                matches!(Client::new(bad, None), Err(ClientError::InvalidUrl { .. })),
                "{bad}"
            );
        }
        let e = Client::new("http://user:hunter2@x", None)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn token_never_shows() {
        let c = Client::new(
            "http://127.0.0.1:1",
            Some(SecretToken::new("cfr_sentinel_token".into())),
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("sentinel"));
        assert!(matches!(
            Client::new("http://x", Some(SecretToken::new("a\nb".into()))),
            Err(ClientError::InvalidToken)
        ));
    }

    #[test]
    fn error_bodies_are_kept_or_made_up() {
        let e = api_error(
            StatusCode::CONFLICT,
            br#"{"code":"conflict","message":"app x exists","hint":"pick another name"}"#,
        );
        match e {
            ClientError::Api { status, body } => {
                assert_eq!(status, 409);
                assert_eq!(body.code, "conflict");
                assert_eq!(body.hint.as_deref(), Some("pick another name"));
            }
            other => panic!("{other:?}"),
        }
        let e = api_error(StatusCode::BAD_GATEWAY, b"<html>oops</html>");
        assert_eq!(e.to_string(), "the coffer API answered 502 Bad Gateway");
        assert_eq!(e.code(), Some("internal"));
        let e = api_error(StatusCode::UNAUTHORIZED, b"");
        assert_eq!(e.code(), Some("unauthorized"));
    }

    #[test]
    fn json_errors_do_not_quote_the_body() {
        let e = serde_json::from_slice::<CreatedToken>(br#"{"token": 5, "x": "cfr_secret"}"#)
            .unwrap_err();
        let d = describe_json_error(&e);
        assert!(!d.contains("cfr_secret") && !d.contains('5'), "{d}");
    }

    /// A one-connection HTTP server that answers with `head`, then sends `chunks` (chunked
    /// encoding) one by one, each after the client has been seen reading the previous one.
    async fn serve_once(
        head: &'static str,
        chunks: Vec<&'static str>,
    ) -> (
        String,
        tokio::sync::mpsc::Sender<()>,
        tokio::task::JoinHandle<String>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (go, mut go_rx) = tokio::sync::mpsc::channel::<()>(8);
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut req = vec![0u8; 4096];
            let n = sock.read(&mut req).await.unwrap();
            sock.write_all(head.as_bytes()).await.unwrap();
            for c in chunks {
                go_rx.recv().await;
                sock.write_all(format!("{:x}\r\n{c}\r\n", c.len()).as_bytes())
                    .await
                    .unwrap();
            }
            sock.write_all(b"0\r\n\r\n").await.unwrap();
            String::from_utf8_lossy(&req[..n]).into_owned()
        });
        (url, go, task)
    }

    #[tokio::test]
    async fn machine_logs_stream_chunk_by_chunk() {
        let (url, go, server) = serve_once(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n",
            vec!["first line\n", "second line\n"],
        )
        .await;
        let c = Client::new(&url, Some(SecretToken::new("cfr_x".into()))).unwrap();
        go.send(()).await.unwrap();
        let mut logs = c.machine_logs("web", "3f2a", true).await.unwrap();
        // The first chunk arrives before the server has sent the second.
        assert_eq!(logs.next_chunk().await.unwrap().unwrap(), b"first line\n");
        go.send(()).await.unwrap();
        assert_eq!(logs.next_chunk().await.unwrap().unwrap(), b"second line\n");
        assert_eq!(logs.next_chunk().await.unwrap(), None);
        let request = server.await.unwrap();
        assert!(
            request.starts_with("GET /v1/apps/web/machines/3f2a/logs?follow=true HTTP/1.1"),
            "{request}"
        );
        assert!(request
            .to_ascii_lowercase()
            .contains("authorization: bearer cfr_x"));
    }

    #[tokio::test]
    async fn machine_logs_errors_are_api_errors() {
        let body = r#"{"code":"not_found","message":"machine 3f2a not found"}"#;
        let head: &'static str = Box::leak(
            format!(
                "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        );
        let (url, _go, _server) = serve_once(head, vec![]).await;
        let c = Client::new(&url, None).unwrap();
        let e = c.machine_logs("web", "3f2a", false).await.unwrap_err();
        assert_eq!(e.status(), Some(404));
        assert_eq!(e.to_string(), "machine 3f2a not found");
    }

    #[test]
    fn machine_routes() {
        let c = Client::new("http://127.0.0.1:4000", None).unwrap();
        assert_eq!(
            c.url(&["v1", "apps", "web", "machines", "3f2a", "stop"], None)
                .unwrap()
                .as_str(),
            "http://127.0.0.1:4000/v1/apps/web/machines/3f2a/stop"
        );
        assert!(matches!(
            c.url(&["v1", "apps", "web", "machines", ".."], None),
            Err(ClientError::InvalidArgument(_))
        ));
    }

    #[tokio::test]
    async fn unreachable_server_is_a_connect_error() {
        // Bound, not listening: refused, and no other test can take the port meanwhile.
        let held = tokio::net::TcpSocket::new_v4().unwrap();
        held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = held.local_addr().unwrap().port();
        let c = Client::new(&format!("http://127.0.0.1:{port}"), None).unwrap();
        let e = c.list_apps().await.unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!("cannot reach the coffer API at http://127.0.0.1:{port}")
        );
    }
}
