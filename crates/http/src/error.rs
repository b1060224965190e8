//! One error type for every daemon's HTTP interface. A user sees a stable `code`, a message
//! safe to show and maybe a hint; the detail of a 5xx goes to the log only.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use coffer_core::wire::ErrorBody;
use coffer_store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub hint: Option<String>,
    /// Logged, never sent.
    pub detail: Option<String>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            hint: None,
            detail: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing, invalid or expired token",
        )
        .with_hint("pass a valid token (coffer tokens list shows them)")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// A failure that is ours, not the caller's: generic message, detail to the log.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        let mut e = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        );
        e.detail = Some(detail.to_string());
        e
    }

    pub fn unavailable(message: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
        e.detail = Some(detail.to_string());
        e
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, detail = ?self.detail, "request failed");
        } else {
            tracing::debug!(code = self.code, status = %self.status, "request refused");
        }
        let body = ErrorBody {
            code: self.code.to_string(),
            message: self.message,
            hint: self.hint,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::not_found(what),
            StoreError::Conflict(msg) => ApiError::conflict(msg),
            other => ApiError::internal(other),
        }
    }
}

/// JSON bodies that do not parse get a 400 that says why, without echoing the body (it may
/// hold secret values). serde's messages quote at most the offending token's type and
/// position, never its content — except for unknown enum variants and field names, which are
/// not values.
impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::BytesRejection(_) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "request body is larger than {} bytes",
                    crate::MAX_BODY_BYTES
                ),
            ),
            JsonRejection::MissingJsonContentType(_) => {
                ApiError::bad_request("expected Content-Type: application/json")
            }
            JsonRejection::JsonSyntaxError(_) => {
                ApiError::bad_request("request body is not valid JSON")
            }
            JsonRejection::JsonDataError(e) => ApiError::bad_request(format!(
                "request body has the wrong shape: {}",
                data_error(&e.body_text())
            )),
            other => ApiError::bad_request(other.body_text()),
        }
    }
}

/// A data error's text, safe to send back. An unknown field is the one case where serde puts
/// the caller's own key in the error's *path*, unquoted: then only the expected fields (ours)
/// are named.
fn data_error(msg: &str) -> String {
    if let Some(at) = msg.find("unknown field") {
        return match msg[at..].find("expected ") {
            // `expected one of `a`, `b`` lists our own field names.
            Some(e) => format!("unknown field, {}", &msg[at + e..]),
            None => "unknown field".to_string(),
        };
    }
    redact(msg)
}

/// serde_json data errors read like ``invalid type: string "abc", expected u64`` or
/// ``invalid type: integer `5` ``; strip quoted content so that a mistyped secret value is
/// never echoed.
fn redact(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut open: Option<char> = None;
    for c in msg.chars() {
        match open {
            None if c == '"' || c == '`' => {
                out.push(c);
                out.push('…');
                open = Some(c);
            }
            None => out.push(c),
            Some(q) if c == q => {
                out.push(c);
                open = None;
            }
            Some(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_quoted_content() {
        assert_eq!(
            super::redact(r#"invalid type: string "hunter2", expected a sequence"#),
            r#"invalid type: string "…", expected a sequence"#
        );
        assert_eq!(
            super::redact("invalid type: integer `5`, expected"),
            "invalid type: integer `…`, expected"
        );
    }
}
