//! Server plumbing shared by coffer's daemons (API, vault, agent): one error type, one way to
//! serve with graceful shutdown, the same limits, metrics and health endpoints everywhere.

mod error;
mod metrics;

pub use error::{ApiError, ApiResult};
pub use metrics::Metrics;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::timeout::TimeoutLayer;

/// Largest request body any daemon accepts. An app's secrets are at most 512 KiB, which as
/// JSON (escapes, base64 for non-UTF-8) stays well under this.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Wraps a role's routes with what every daemon has: `/metrics`, body limit, timeout,
/// request metrics, and `Authorization` marked sensitive so no layer ever logs it.
pub fn with_common_layers(routes: Router, metrics: Metrics) -> Router {
    let m = metrics.clone();
    routes
        .route(
            "/metrics",
            axum::routing::get(move || async move { m.render() }),
        )
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(
            http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(60),
        ))
        .layer(SetSensitiveRequestHeadersLayer::new([
            http::header::AUTHORIZATION,
            http::header::COOKIE,
        ]))
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutdown signal received; draining");
}

/// Reads a bearer token from an `Authorization` header value.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}
