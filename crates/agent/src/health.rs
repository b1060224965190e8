//! Health checks: one probe of a machine's [`HealthCheck`], and the bookkeeping that turns
//! probes into `unhealthy` / `started` reports.
//!
//! * **Where**: always `127.0.0.1:PORT` — the workload runs on this host; it must listen on
//!   127.0.0.1 (or on every address).
//! * **When**: every [`PROBE_INTERVAL`] while the workload runs, the first one
//!   [`PROBE_INTERVAL`] after it started; each probe gets [`PROBE_TIMEOUT`].
//! * **HTTP**: a plain HTTP/1.1 `GET PATH` with `Connection: close` over a TCP stream (no
//!   TLS, no redirects followed); a `2xx` or `3xx` status line is healthy, anything else —
//!   another status, no answer in time, a refused connection, something that is not HTTP —
//!   fails. **TCP**: the connection is accepted.
//! * **Verdict**: [`FAILURES_TO_UNHEALTHY`] consecutive failed probes make the machine
//!   `unhealthy` (reported with the last probe's one-line reason and noted in its log); the
//!   next passing probe makes it `started` again. A workload that has not opened its port yet
//!   is failing like any other: there is no start-up grace period, so a workload with a check
//!   should listen within about 2 s of starting.
//! * **No action**: the check never restarts or stops the workload (restart policies are
//!   about exits). Its only effect is the reported state — which, inside a release's crash
//!   window, fails the release (the control plane rolls it back like a crash).

use coffer_core::wire::machines::HealthCheck;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Time between two probes, and from the workload's start to the first one.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long one probe may take, connection included.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Consecutive failed probes that make a machine `unhealthy`.
pub const FAILURES_TO_UNHEALTHY: u32 = 2;
/// The most of an HTTP answer read before its status line must have come.
const MAX_STATUS_LINE: usize = 1024;
/// How long the rest of an HTTP answer is drained after its status line (so that closing the
/// connection does not reset it under a server still writing); it does not change the verdict.
const DRAIN: Duration = Duration::from_millis(200);
const MAX_DRAIN_BYTES: usize = 64 * 1024;

/// Probes `check` once on 127.0.0.1 within `timeout`. `Err` holds a one-line reason such as
/// `http check GET :8080/healthz: status 500` or `tcp check :5432: connection refused`.
pub async fn probe(check: &HealthCheck, timeout: Duration) -> Result<(), String> {
    let kind = match check {
        HealthCheck::Http { .. } => "http",
        HealthCheck::Tcp { .. } => "tcp",
    };
    let deadline = Instant::now() + timeout;
    let outcome = match tokio::time::timeout_at(deadline, probe_inner(check, deadline)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {}", human(timeout))),
    };
    outcome.map_err(|reason| format!("{kind} check {}: {reason}", check.target()))
}

async fn probe_inner(check: &HealthCheck, deadline: Instant) -> Result<(), String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, check.port()));
    let mut stream = TcpStream::connect(addr).await.map_err(|e| io_reason(&e))?;
    let HealthCheck::Http { port, path } = check else {
        return Ok(());
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: coffer-health-check\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| io_reason(&e))?;
    let mut buf = Vec::with_capacity(256);
    let line_end = loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            break i;
        }
        if buf.len() >= MAX_STATUS_LINE {
            return Err("not an HTTP response".into());
        }
        let mut chunk = [0u8; 512];
        let n = stream.read(&mut chunk).await.map_err(|e| io_reason(&e))?;
        if n == 0 {
            return Err(if buf.is_empty() {
                "connection closed without a response".into()
            } else {
                "not an HTTP response".into()
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let verdict = judge_status_line(&buf[..line_end]);
    // Read what follows for a moment, then close: the verdict is already made.
    let drain_until = deadline.min(Instant::now() + DRAIN);
    let _ = tokio::time::timeout_at(drain_until, async {
        let mut sink = [0u8; 4096];
        let mut total = 0;
        while total < MAX_DRAIN_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
    verdict
}

/// `HTTP/1.x NNN reason`: healthy for 200–399.
fn judge_status_line(line: &[u8]) -> Result<(), String> {
    let line = String::from_utf8_lossy(line);
    let mut parts = line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err("not an HTTP response".into());
    };
    if !version.starts_with("HTTP/") {
        return Err("not an HTTP response".into());
    }
    match code.parse::<u16>() {
        Ok(c) if (200..400).contains(&c) => Ok(()),
        Ok(c) if (100..600).contains(&c) => Err(format!("status {c}")),
        _ => Err("not an HTTP response".into()),
    }
}

/// A short reason for a socket error: "connection refused", not "Connection refused (os
/// error 111)".
fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused".into(),
        ConnectionReset => "connection reset".into(),
        ConnectionAborted => "connection aborted".into(),
        TimedOut => "timed out".into(),
        UnexpectedEof => "connection closed without a response".into(),
        BrokenPipe => "connection closed before the request was sent".into(),
        _ => {
            let text = e.to_string();
            match text.find(" (os error") {
                Some(i) => text[..i].to_string(),
                None => text,
            }
            .to_lowercase()
        }
    }
}

fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// What a probe changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Report `unhealthy` with this reason.
    Unhealthy(String),
    /// Passing again: report `started`.
    Healthy,
}

/// The health of one running workload: when to probe next, and what has been reported.
#[derive(Debug, Clone)]
pub struct HealthWatch {
    pub check: HealthCheck,
    /// When the next probe is due.
    pub next: Instant,
    /// Consecutive failed probes.
    pub failures: u32,
    /// Reported `unhealthy` (and not `started` since).
    pub unhealthy: bool,
}

impl HealthWatch {
    /// For a workload that started at `started`.
    pub fn new(check: HealthCheck, started: Instant) -> Self {
        Self {
            check,
            next: started + PROBE_INTERVAL,
            failures: 0,
            unhealthy: false,
        }
    }

    /// Takes the outcome of the probe that was due, schedules the next one (one interval
    /// after this one was due, or now if that has passed — a probe that timed out) and says
    /// whether the machine's reported state changes.
    pub fn record(&mut self, outcome: Result<(), String>, now: Instant) -> Option<Transition> {
        self.next = (self.next + PROBE_INTERVAL).max(now);
        match outcome {
            Ok(()) => {
                self.failures = 0;
                if self.unhealthy {
                    self.unhealthy = false;
                    return Some(Transition::Healthy);
                }
                None
            }
            Err(reason) => {
                self.failures = self.failures.saturating_add(1);
                if !self.unhealthy && self.failures >= FAILURES_TO_UNHEALTHY {
                    self.unhealthy = true;
                    return Some(Transition::Unhealthy(reason));
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

    /// A one-thread HTTP server on 127.0.0.1 answering every request with `answer`
    /// (`None`: accept, read, never answer). Returns its port.
    fn server(answer: Option<&'static str>) -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let req = String::from_utf8_lossy(&req).to_string();
                assert!(req.starts_with("GET /healthz HTTP/1.1\r\n"), "{req}");
                assert!(req.contains("\r\nConnection: close\r\n"), "{req}");
                match answer {
                    Some(a) => {
                        let _ = conn.write_all(a.as_bytes());
                    }
                    None => held.push(conn),
                }
            }
        });
        port
    }

    fn http(port: u16) -> HealthCheck {
        HealthCheck::Http {
            port,
            path: "/healthz".into(),
        }
    }

    /// A port nobody listens on, held (bound, not listening) while the socket lives, so that
    /// no test running beside this one can take it meanwhile.
    fn closed_port() -> (tokio::net::TcpSocket, u16) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = socket.local_addr().unwrap().port();
        (socket, port)
    }

    #[tokio::test]
    async fn a_2xx_or_3xx_answer_is_healthy() {
        for answer in [
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            "HTTP/1.0 204 No Content\r\n\r\n",
            "HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n",
        ] {
            let port = server(Some(answer));
            assert_eq!(probe(&http(port), PROBE_TIMEOUT).await, Ok(()), "{answer}");
        }
    }

    #[tokio::test]
    async fn an_error_status_fails() {
        let port = server(Some(
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 3\r\n\r\nbad",
        ));
        assert_eq!(
            probe(&http(port), PROBE_TIMEOUT).await,
            Err(format!("http check GET :{port}/healthz: status 500"))
        );
        let port = server(Some("HTTP/1.1 404 Not Found\r\n\r\n"));
        assert_eq!(
            probe(&http(port), PROBE_TIMEOUT).await,
            Err(format!("http check GET :{port}/healthz: status 404"))
        );
    }

    #[tokio::test]
    async fn something_else_than_http_fails() {
        let port = server(Some("SSH-2.0-OpenSSH_9.6\r\n"));
        assert_eq!(
            probe(&http(port), PROBE_TIMEOUT).await,
            Err(format!(
                "http check GET :{port}/healthz: not an HTTP response"
            ))
        );
        let port = server(Some(""));
        let err = probe(&http(port), PROBE_TIMEOUT).await.unwrap_err();
        assert!(
            err.contains("connection closed without a response"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_fails() {
        let (_held, port) = closed_port();
        assert_eq!(
            probe(&http(port), PROBE_TIMEOUT).await,
            Err(format!(
                "http check GET :{port}/healthz: connection refused"
            ))
        );
        assert_eq!(
            probe(&HealthCheck::Tcp { port }, PROBE_TIMEOUT).await,
            Err(format!("tcp check :{port}: connection refused"))
        );
    }

    #[tokio::test]
    async fn no_answer_in_time_fails() {
        let port = server(None);
        let started = std::time::Instant::now();
        assert_eq!(
            probe(&http(port), Duration::from_millis(300)).await,
            Err(format!(
                "http check GET :{port}/healthz: no answer within 300ms"
            ))
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn tcp_checks_only_connect() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // Never accepted: the kernel's backlog still completes the handshake.
        assert_eq!(
            probe(&HealthCheck::Tcp { port }, PROBE_TIMEOUT).await,
            Ok(())
        );
        drop(listener);
    }

    #[test]
    fn status_lines() {
        assert!(judge_status_line(b"HTTP/1.1 200 OK").is_ok());
        assert!(judge_status_line(b"HTTP/1.1 399").is_ok());
        assert_eq!(
            judge_status_line(b"HTTP/1.1 199 Weird"),
            Err("status 199".into())
        );
        assert_eq!(
            judge_status_line(b"HTTP/1.1 400 Bad"),
            Err("status 400".into())
        );
        for bad in [
            &b"HTTP/1.1"[..],
            b"HTTP/1.1 abc",
            b"FTP 200 OK",
            b"",
            b"HTTP/1.1 999 x",
        ] {
            assert_eq!(
                judge_status_line(bad),
                Err("not an HTTP response".into()),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn two_failures_make_unhealthy_one_pass_makes_healthy() {
        let t0 = Instant::now();
        let mut w = HealthWatch::new(HealthCheck::Tcp { port: 1 }, t0);
        assert_eq!(
            w.next,
            t0 + PROBE_INTERVAL,
            "the first probe a second after start"
        );
        let fail = || Err("tcp check :1: connection refused".to_string());
        // One failure (a workload still opening its port) is not enough.
        assert_eq!(w.record(fail(), w.next), None);
        assert_eq!(w.next, t0 + 2 * PROBE_INTERVAL);
        assert_eq!(w.record(Ok(()), w.next), None);
        assert_eq!(w.record(fail(), w.next), None);
        assert_eq!(
            w.record(fail(), w.next),
            Some(Transition::Unhealthy(
                "tcp check :1: connection refused".into()
            ))
        );
        // Reported once, not at every failed probe.
        assert_eq!(w.record(fail(), w.next), None);
        assert!(w.unhealthy);
        assert_eq!(w.record(Ok(()), w.next), Some(Transition::Healthy));
        assert_eq!(w.record(Ok(()), w.next), None);
        assert!(!w.unhealthy && w.failures == 0);
        // A probe that ran late (timed out) schedules the next one at once, not in the past.
        let late = w.next + 3 * PROBE_INTERVAL;
        w.record(fail(), late);
        assert_eq!(w.next, late);
    }
}
