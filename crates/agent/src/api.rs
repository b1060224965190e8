//! The agent's HTTP clients: the control plane (registration, heartbeat, assignments, state
//! reports, boot grants) and the vault (decrypt).
//!
//! Errors are one line a user can read in `coffer machines list` ("vault unavailable:
//! connection refused"); they never carry a token, a request body or a value. The host token
//! is sent as a sensitive header.

use coffer_core::secret::SecretToken;
use coffer_core::wire::agent::{
    Assignments, BootGrant, DecryptRequest, DecryptResponse, Heartbeat, RegisterHost,
    RegisteredHost, StateReport,
};
use coffer_core::wire::ErrorBody;
use coffer_crypto::machine_token::ControlPlanePublicKey;
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Any call but the long poll.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The control plane holds an assignments poll for up to ~15 s.
pub const POLL_TIMEOUT: Duration = Duration::from_secs(45);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    ControlPlane,
    Vault,
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Service::ControlPlane => "control plane",
            Service::Vault => "vault",
        })
    }
}

/// Why a call failed, as one line.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// No answer (refused, reset, timeout) or a 5xx: worth retrying.
    #[error("{service} unavailable: {reason}")]
    Unavailable { service: Service, reason: String },
    /// A 4xx: the service understood and said no.
    #[error("{service} refused: {message}")]
    Refused {
        service: Service,
        status: u16,
        code: String,
        message: String,
    },
    /// A success status with a body this agent does not understand.
    #[error("unexpected answer from the {service}: {detail}")]
    Decode { service: Service, detail: String },
}

impl CallError {
    pub fn status(&self) -> Option<u16> {
        match self {
            CallError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_unauthorized(&self) -> bool {
        self.status() == Some(401)
    }

    /// Worth retrying the same request later.
    pub fn is_transient(&self) -> bool {
        matches!(self, CallError::Unavailable { .. })
    }
}

/// Who this host is to the control plane right now (replaced when it re-registers).
pub struct Session {
    pub host_id: String,
    pub token: SecretToken,
    pub control_plane_key: ControlPlanePublicKey,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("host_id", &self.host_id)
            .field("token", &"[REDACTED]")
            .finish()
    }
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("coffer-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client builds (rustls, no custom roots)")
}

/// The control plane, as this host sees it.
pub struct ControlPlane {
    http: reqwest::Client,
    base: String,
    session: RwLock<Arc<Session>>,
}

impl ControlPlane {
    pub fn new(http: reqwest::Client, base: &str, session: Session) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            session: RwLock::new(Arc::new(session)),
        }
    }

    pub fn session(&self) -> Arc<Session> {
        self.session.read().expect("session lock").clone()
    }

    pub fn replace_session(&self, session: Session) {
        *self.session.write().expect("session lock") = Arc::new(session);
    }

    fn host_request(&self, method: Method, tail: &str, timeout: Duration) -> RequestBuilder {
        let s = self.session();
        let url = format!("{}/v1/hosts/{}{tail}", self.base, s.host_id);
        self.http
            .request(method, url)
            .timeout(timeout)
            .header(AUTHORIZATION, bearer(&s.token))
    }

    /// `POST /v1/hosts/{id}/heartbeat`.
    pub async fn heartbeat(&self, address: &str) -> Result<(), CallError> {
        let req = self
            .host_request(Method::POST, "/heartbeat", REQUEST_TIMEOUT)
            .json(&Heartbeat {
                address: address.to_string(),
            });
        send(Service::ControlPlane, req).await.map(drop)
    }

    /// `GET /v1/hosts/{id}/assignments?after=N` (a long poll when `after` is current).
    pub async fn assignments(&self, after: i64) -> Result<Assignments, CallError> {
        let req = self
            .host_request(Method::GET, "/assignments", POLL_TIMEOUT)
            .query(&[("after", after)]);
        json(
            Service::ControlPlane,
            send(Service::ControlPlane, req).await?,
        )
        .await
    }

    /// `POST /v1/hosts/{id}/machines/{mid}/state`.
    pub async fn report(&self, machine_id: &str, report: &StateReport) -> Result<(), CallError> {
        let req = self
            .host_request(
                Method::POST,
                &format!("/machines/{machine_id}/state"),
                REQUEST_TIMEOUT,
            )
            .json(report);
        send(Service::ControlPlane, req).await.map(drop)
    }

    /// `POST /v1/hosts/{id}/machines/{mid}/boot`: a machine token and the ciphertexts.
    pub async fn boot(&self, machine_id: &str) -> Result<BootGrant, CallError> {
        let req = self.host_request(
            Method::POST,
            &format!("/machines/{machine_id}/boot"),
            REQUEST_TIMEOUT,
        );
        json(
            Service::ControlPlane,
            send(Service::ControlPlane, req).await?,
        )
        .await
    }
}

/// `POST /v1/hosts` with the join (admin API) token.
pub async fn register(
    http: &reqwest::Client,
    base: &str,
    join_token: &SecretToken,
    body: &RegisterHost,
) -> Result<RegisteredHost, CallError> {
    let req = http
        .post(format!("{}/v1/hosts", base.trim_end_matches('/')))
        .timeout(REQUEST_TIMEOUT)
        .header(AUTHORIZATION, bearer(join_token))
        .json(body);
    json(
        Service::ControlPlane,
        send(Service::ControlPlane, req).await?,
    )
    .await
}

/// The vault's decrypt route.
pub struct Vault {
    http: reqwest::Client,
    base: String,
}

impl Vault {
    pub fn new(http: reqwest::Client, base: &str) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_string(),
        }
    }

    /// `POST /v1/decrypt`: no bearer; the machine token and the host signature are the
    /// credentials.
    pub async fn decrypt(&self, req: &DecryptRequest) -> Result<DecryptResponse, CallError> {
        let r = self
            .http
            .post(format!("{}/v1/decrypt", self.base))
            .timeout(REQUEST_TIMEOUT)
            .json(req);
        json(Service::Vault, send(Service::Vault, r).await?).await
    }
}

fn bearer(token: &SecretToken) -> HeaderValue {
    match HeaderValue::from_str(&format!("Bearer {}", token.expose())) {
        Ok(mut v) => {
            v.set_sensitive(true);
            v
        }
        // A token with characters a header cannot carry: send none, get a 401, and say so.
        Err(_) => HeaderValue::from_static(""),
    }
}

async fn send(service: Service, req: RequestBuilder) -> Result<Response, CallError> {
    let resp = req.send().await.map_err(|e| CallError::Unavailable {
        service,
        reason: transport_reason(&e),
    })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let bytes = resp.bytes().await.unwrap_or_default();
    let body: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
    let message = body
        .as_ref()
        .map(|b| one_line(&b.message))
        .unwrap_or_else(|| {
            format!(
                "HTTP {} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            )
            .trim_end()
            .to_string()
        });
    if status.is_server_error() {
        Err(CallError::Unavailable {
            service,
            reason: message,
        })
    } else {
        Err(CallError::Refused {
            service,
            status: status.as_u16(),
            code: body.map(|b| b.code).unwrap_or_default(),
            message,
        })
    }
}

async fn json<T: DeserializeOwned>(service: Service, resp: Response) -> Result<T, CallError> {
    let bytes = resp.bytes().await.map_err(|e| CallError::Unavailable {
        service,
        reason: transport_reason(&e),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| CallError::Decode {
        service,
        // Position only: a body may hold a token.
        detail: format!("invalid JSON at line {}, column {}", e.line(), e.column()),
    })
}

/// "connection refused", "timed out", … — the innermost cause, without the URL.
fn transport_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut last = String::new();
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused".into(),
                std::io::ErrorKind::ConnectionReset => return "connection reset".into(),
                std::io::ErrorKind::TimedOut => return "timed out".into(),
                _ => {}
            }
        }
        last = c.to_string();
        cur = c.source();
    }
    one_line(&last)
}

/// Messages end up in one table cell: one line, at most 200 characters.
pub fn one_line(s: &str) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let flat = flat.trim();
    if flat.chars().count() > 200 {
        format!("{}…", flat.chars().take(200).collect::<String>())
    } else {
        flat.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refused_connections_read_well() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let vault = Vault::new(http_client(), &format!("http://127.0.0.1:{port}/"));
        let req = DecryptRequest {
            machine_token: "tok-sentinel".into(),
            machine_id: "m1".into(),
            one_time_public_key: "00".into(),
            ciphertexts: vec![],
            issued_at: 0,
            host_signature: "00".into(),
        };
        let e = vault.decrypt(&req).await.unwrap_err();
        assert!(e.is_transient());
        assert_eq!(e.to_string(), "vault unavailable: connection refused");
    }

    #[test]
    fn one_line_messages() {
        assert_eq!(one_line(" a\nb\tc "), "a b c");
        assert_eq!(one_line(&"x".repeat(300)).chars().count(), 201);
    }
}
