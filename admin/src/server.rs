//! A small blocking HTTP/1.1 server for the admin endpoints.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ringmesh_protocols::http1::{BodyFraming, Limits, Method, RequestHead};

/// What the admin server asks of the proxy.
pub trait AdminBackend: Send + Sync + 'static {
    /// Every worker accepts and the first discovery snapshot is applied.
    fn ready(&self) -> bool;
    /// Appends the Prometheus text exposition (format 0.0.4).
    fn metrics(&self, out: &mut String);
    /// Starts the graceful drain (as SIGTERM does).
    fn shutdown(&self);
    /// Whether `POST /shutdown` is allowed
    /// (`LINKERD2_PROXY_SHUTDOWN_ENDPOINT_ENABLED`).
    fn shutdown_enabled(&self) -> bool;
    fn log_level(&self) -> String;
    fn set_log_level(&self, filter: &str) -> Result<(), String>;
}

/// One response.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// Serves `listener` until `stop` is set (checked between connections;
/// the accept loop polls with a short timeout so it notices).
pub fn serve(listener: TcpListener, backend: Arc<dyn AdminBackend>, stop: Arc<AtomicBool>) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((s, peer)) => {
                let backend = backend.clone();
                // Admin traffic is light; a thread per connection keeps a
                // slow client from blocking probes.
                let _ = std::thread::Builder::new()
                    .name("ringmesh-admin-conn".into())
                    .spawn(move || {
                        let _ = connection(s, peer.ip().is_loopback(), &*backend);
                    });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

const MAX_BODY: usize = 64 * 1024;

fn connection(mut s: TcpStream, from_loopback: bool, backend: &dyn AdminBackend) -> io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_nodelay(true)?;
    let limits = Limits::default();
    let mut head = RequestHead::new();
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        // A whole head.
        let n = loop {
            match head.parse(&buf, &limits) {
                Ok(Some(n)) => break n,
                Ok(None) => {}
                Err(e) => {
                    write_reply(
                        &mut s,
                        &Reply::text(e.status(), format!("{e}\n")),
                        false,
                        true,
                        false,
                    )?;
                    return Ok(());
                }
            }
            let k = s.read(&mut chunk)?;
            if k == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..k]);
        };
        buf.drain(..n);
        // The body (only PUT /proxy-log-level has one worth reading).
        let body_len = match head.framing() {
            BodyFraming::Empty => 0,
            BodyFraming::ContentLength(n) if n as usize <= MAX_BODY => n as usize,
            _ => {
                write_reply(
                    &mut s,
                    &Reply::text(413, "body too large or chunked\n"),
                    false,
                    true,
                    false,
                )?;
                return Ok(());
            }
        };
        while buf.len() < body_len {
            let k = s.read(&mut chunk)?;
            if k == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..k]);
        }
        let body: Vec<u8> = buf.drain(..body_len).collect();
        let reply = route(&head, &body, from_loopback, backend);
        let keep = head.keep_alive();
        let with_body = head.method() != Method::Head;
        let gzip = reply.status == 200
            && head.headers().get_all("accept-encoding").any(|v| {
                String::from_utf8_lossy(v)
                    .split(',')
                    .any(|c| c.trim().split(';').next() == Some("gzip"))
            });
        write_reply(&mut s, &reply, keep, with_body, gzip)?;
        if !keep {
            return Ok(());
        }
    }
}

/// The admin API: paths and methods as linkerd2-proxy's admin server.
pub fn route_for_tests(
    method: &str,
    path: &str,
    body: &[u8],
    from_loopback: bool,
    backend: &dyn AdminBackend,
) -> Reply {
    let mut head = RequestHead::new();
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    match head.parse(raw.as_bytes(), &Limits::default()) {
        Ok(Some(_)) => route(&head, body, from_loopback, backend),
        _ => Reply::text(400, "bad request\n"),
    }
}

fn route(
    head: &RequestHead,
    body: &[u8],
    from_loopback: bool,
    backend: &dyn AdminBackend,
) -> Reply {
    let path = head.path().split('?').next().unwrap_or("");
    let method = head.method();
    let only = |allowed: &[Method]| !allowed.contains(&method);
    match path {
        "/live" if only(&[Method::Get, Method::Head]) => Reply::text(405, "method not allowed\n"),
        "/live" => Reply::text(200, "live\n"),
        "/ready" if only(&[Method::Get, Method::Head]) => Reply::text(405, "method not allowed\n"),
        "/ready" if backend.ready() => Reply::text(200, "ready\n"),
        "/ready" => Reply::text(503, "not ready\n"),
        "/metrics" if only(&[Method::Get, Method::Head]) => {
            Reply::text(405, "method not allowed\n")
        }
        "/metrics" => {
            let mut out = String::with_capacity(16 * 1024);
            backend.metrics(&mut out);
            Reply {
                status: 200,
                content_type: "text/plain; version=0.0.4",
                body: out,
            }
        }
        "/shutdown" if !backend.shutdown_enabled() || !from_loopback => {
            Reply::text(404, "not found\n")
        }
        "/shutdown" if only(&[Method::Post]) => Reply::text(405, "method not allowed\n"),
        "/shutdown" => {
            backend.shutdown();
            Reply::text(200, "shutdown\n")
        }
        "/proxy-log-level" => match method {
            Method::Get => Reply::text(200, format!("{}\n", backend.log_level())),
            Method::Put => {
                let Ok(filter) = std::str::from_utf8(body) else {
                    return Reply::text(400, "the filter must be UTF-8\n");
                };
                match backend.set_log_level(filter.trim()) {
                    Ok(()) => Reply::text(204, ""),
                    Err(e) => Reply::text(400, format!("{e}\n")),
                }
            }
            _ => Reply::text(405, "method not allowed\n"),
        },
        _ => Reply::text(404, "not found\n"),
    }
}

fn write_reply(
    s: &mut TcpStream,
    r: &Reply,
    keep: bool,
    with_body: bool,
    gzip: bool,
) -> io::Result<()> {
    let reason = ringmesh_protocols::http1::canonical_reason(r.status);
    let body: Vec<u8> = if gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(r.body.as_bytes())?;
        enc.finish()?
    } else {
        r.body.as_bytes().to_vec()
    };
    let mut out = format!("HTTP/1.1 {} {reason}\r\n", r.status).into_bytes();
    if r.status != 204 {
        out.extend_from_slice(
            format!(
                "content-type: {}\r\ncontent-length: {}\r\n",
                r.content_type,
                body.len()
            )
            .as_bytes(),
        );
    }
    if gzip {
        out.extend_from_slice(b"content-encoding: gzip\r\n");
    }
    if !keep {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if with_body {
        out.extend_from_slice(&body);
    }
    s.write_all(&out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[derive(Default)]
    struct Fake {
        ready: AtomicBool,
        shutdowns: AtomicUsize,
    }

    impl AdminBackend for Fake {
        fn ready(&self) -> bool {
            self.ready.load(Ordering::Relaxed)
        }
        fn metrics(&self, out: &mut String) {
            out.push_str("# TYPE x counter\nx 1\n");
        }
        fn shutdown(&self) {
            self.shutdowns.fetch_add(1, Ordering::Relaxed);
        }
        fn shutdown_enabled(&self) -> bool {
            true
        }
        fn log_level(&self) -> String {
            "info".into()
        }
        fn set_log_level(&self, filter: &str) -> Result<(), String> {
            if filter == "bad[" {
                Err("invalid".into())
            } else {
                Ok(())
            }
        }
    }

    #[test]
    fn routes() {
        let b = Fake::default();
        let r =
            |m: &str, p: &str, body: &[u8], lo: bool| route_for_tests(m, p, body, lo, &b).status;
        assert_eq!(r("GET", "/ready", b"", true), 503);
        b.ready.store(true, Ordering::Relaxed);
        assert_eq!(r("GET", "/ready", b"", true), 200);
        assert_eq!(r("GET", "/live", b"", true), 200);
        assert_eq!(r("POST", "/live", b"", true), 405);
        assert_eq!(r("GET", "/metrics?x=1", b"", true), 200);
        assert_eq!(r("GET", "/other", b"", true), 404);
        // Shutdown only from loopback, only by POST.
        assert_eq!(r("POST", "/shutdown", b"", false), 404);
        assert_eq!(r("GET", "/shutdown", b"", true), 405);
        assert_eq!(b.shutdowns.load(Ordering::Relaxed), 0);
        assert_eq!(r("POST", "/shutdown", b"", true), 200);
        assert_eq!(b.shutdowns.load(Ordering::Relaxed), 1);
        assert_eq!(r("PUT", "/proxy-log-level", b"debug", true), 204);
        assert_eq!(r("PUT", "/proxy-log-level", b"bad[", true), 400);
        assert_eq!(r("DELETE", "/proxy-log-level", b"", true), 405);
    }
}
