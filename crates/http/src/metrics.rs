//! Prometheus metrics common to every daemon: requests by route, method and status class.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    requests: Family<RequestLabels, Counter>,
}

impl Metrics {
    pub fn new(prefix: &str) -> Self {
        let mut registry = Registry::with_prefix(prefix);
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests served", requests.clone());
        Self {
            registry: Arc::new(Mutex::new(registry)),
            requests,
        }
    }

    /// Adds a role's own metrics.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry
            .lock()
            .expect("metrics lock")
            .register(name, help, metric);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(
            &mut out,
            &self.registry.lock().expect("metrics lock"),
        )
        .expect("writing to a String cannot fail");
        out
    }
}

pub(crate) async fn track(State(m): State<Metrics>, req: Request, next: Next) -> Response {
    // The matched route template, never the raw path: paths can be sent by anyone.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = method_label(req.method());
    let resp = next.run(req).await;
    m.requests
        .get_or_create(&RequestLabels {
            route,
            method: method.to_string(),
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

/// The request's method as a label: one of the standard methods, else `OTHER`. HTTP lets a
/// client send any token as a method, so the raw method as a label would let anyone add a
/// counter per request, without end, to every daemon's memory and `/metrics`.
fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::Router;
    use tower::ServiceExt;

    #[tokio::test]
    async fn methods_nobody_uses_share_one_label() {
        let metrics = Metrics::new("test");
        let app = crate::with_common_layers(
            Router::new().route("/x", axum::routing::get(|| async { "x" })),
            metrics.clone(),
        );
        for i in 0..50 {
            let req = Request::builder()
                .method(format!("FOO{i}").as_str())
                .uri("/x")
                .body(Body::empty())
                .unwrap();
            app.clone().oneshot(req).await.unwrap();
        }
        let req = Request::builder().uri("/x").body(Body::empty()).unwrap();
        app.clone().oneshot(req).await.unwrap();

        let text = metrics.render();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("test_http_requests_total{"))
            .collect();
        assert!(!text.contains("FOO"), "{text}");
        assert_eq!(series.len(), 2, "{text}");
        assert!(
            series
                .iter()
                .any(|l| l.contains("method=\"OTHER\"") && l.ends_with(" 50")),
            "{text}"
        );
        assert!(
            series
                .iter()
                .any(|l| l.contains("method=\"GET\"") && l.contains("status=\"200\"")),
            "{text}"
        );
    }
}
