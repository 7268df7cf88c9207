//! An HTTP/2 (h2c) origin and client for tests, on their own monoio
//! runtimes (epoll driver: test scaffolding, not the code under test).
//!
//! Origin routes: `/hello`, `/headers` (the request's headers as the body), `/echo` (the request body streamed back, then
//! trailers `x-echo-bytes` and `grpc-status: 0`), `/bytes/N`, `/status/N`,
//! `/reset` (RST_STREAM INTERNAL_ERROR), `/hang` (never answers; counts the
//! resets it sees), `/slow/MS`.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use monoio::net::{TcpListener, TcpStream};
use monoio_http::h2::{client, server, Reason, RecvStream, SendStream};

pub fn runtime() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("test runtime")
}

#[derive(Default)]
pub struct Counters {
    /// Streams the origin accepted.
    pub streams: AtomicUsize,
    /// Connections the origin accepted.
    pub connections: AtomicUsize,
    /// Of them, those that ended.
    pub closed: AtomicUsize,
    /// `/hang` streams the client side reset.
    pub resets_seen: AtomicUsize,
    /// `/only/<port>` requests answered 503.
    pub refused: AtomicUsize,
}

pub struct Origin {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
}

/// Starts an origin; with `goaway_after`, each connection sends a graceful
/// GOAWAY after that many streams (as nginx does after
/// `keepalive_requests`).
pub fn origin(goaway_after: Option<usize>) -> Origin {
    origin_with(goaway_after, None)
}

/// As [`origin`], advertising SETTINGS_MAX_CONCURRENT_STREAMS when given.
pub fn origin_with(goaway_after: Option<usize>, max_streams: Option<u32>) -> Origin {
    origin_on(
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        goaway_after,
        max_streams,
    )
}

/// As [`origin_with`], on a listener the test bound itself (e.g. inside a
/// network namespace).
pub fn origin_on(
    std_listener: std::net::TcpListener,
    goaway_after: Option<usize>,
    max_streams: Option<u32>,
) -> Origin {
    // monoio's accept on a blocking fd would block the whole runtime.
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    let counters = Arc::new(Counters::default());
    let c = counters.clone();
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let listener = TcpListener::from_std(std_listener).unwrap();
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                let _ = s.set_nodelay(true);
                c.connections.fetch_add(1, Ordering::Relaxed);
                monoio::spawn(connection(
                    s,
                    c.clone(),
                    goaway_after,
                    max_streams,
                    addr.port(),
                ));
            }
        })
    });
    Origin { addr, counters }
}

async fn connection(
    s: TcpStream,
    c: Arc<Counters>,
    goaway_after: Option<usize>,
    max_streams: Option<u32>,
    port: u16,
) {
    let mut builder = server::Builder::new();
    if let Some(n) = max_streams {
        builder.max_concurrent_streams(n);
    }
    let Ok(mut conn) = builder.handshake(s).await else {
        c.closed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let mut n = 0;
    while let Some(Ok((req, respond))) = conn.accept().await {
        c.streams.fetch_add(1, Ordering::Relaxed);
        monoio::spawn(handle(req, respond, c.clone(), port));
        n += 1;
        if goaway_after == Some(n) {
            conn.graceful_shutdown();
        }
    }
    c.closed.fetch_add(1, Ordering::Relaxed);
}

async fn handle(
    req: Request<RecvStream>,
    mut respond: server::SendResponse<Bytes>,
    c: Arc<Counters>,
    port: u16,
) {
    let path = req.uri().path().to_string();
    let authority = req.uri().authority().map(|a| a.to_string());
    let req_headers = req.headers().clone();
    let mut body = req.into_body();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    match (parts.next().unwrap_or(""), parts.next()) {
        ("hello", _) => {
            let Ok(mut s) = respond.send_response(Response::new(()), false) else {
                return;
            };
            let _ = s.send_data(Bytes::from_static(b"hello from h2"), true);
        }
        // `/headers`: the request's headers, one `name: value` a line (what a
        // proxy added on the way, e.g. `l5d-client-id`); the body is drained
        // and its trailers listed after them.
        ("headers", _) => {
            let mut text = String::new();
            for (name, value) in req_headers.iter() {
                text.push_str(&format!(
                    "{name}: {}\n",
                    String::from_utf8_lossy(value.as_bytes())
                ));
            }
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            // Then its trailers, if any, as `trailer name: value` lines.
            if let Ok(Some(t)) = body.trailers().await {
                for (name, value) in t.iter() {
                    text.push_str(&format!(
                        "trailer {name}: {}\n",
                        String::from_utf8_lossy(value.as_bytes())
                    ));
                }
            }
            let Ok(mut s) = respond.send_response(Response::new(()), false) else {
                return;
            };
            let _ = send_all(&mut s, Bytes::from(text)).await;
            let _ = s.send_data(Bytes::new(), true);
        }
        // `/only/<port>`: 503 (body unread) unless this origin listens on
        // `port`, which echoes like `/echo`.
        ("only", Some(p)) if p.parse() != Ok(port) => {
            c.refused.fetch_add(1, Ordering::Relaxed);
            let resp = Response::builder().status(503).body(()).unwrap();
            let _ = respond.send_response(resp, true);
        }
        ("echo" | "only", _) => {
            let Ok(mut s) = respond.send_response(Response::new(()), false) else {
                return;
            };
            let mut total = 0u64;
            while let Some(Ok(chunk)) = body.data().await {
                total += chunk.len() as u64;
                let n = chunk.len();
                if send_all(&mut s, chunk).await.is_err() {
                    return;
                }
                let _ = body.flow_control().release_capacity(n);
            }
            let mut t = HeaderMap::new();
            t.insert("x-echo-bytes", total.to_string().parse().unwrap());
            t.insert("grpc-status", "0".parse().unwrap());
            let _ = s.send_trailers(t);
        }
        ("bytes", Some(n)) => {
            let n: usize = n.parse().unwrap_or(0);
            let Ok(mut s) = respond.send_response(Response::new(()), n == 0) else {
                return;
            };
            let mut sent = 0;
            while sent < n {
                let len = (n - sent).min(16 * 1024);
                let chunk: Vec<u8> = (sent..sent + len).map(|i| (i % 251) as u8).collect();
                if send_all(&mut s, Bytes::from(chunk)).await.is_err() {
                    return;
                }
                sent += len;
            }
            if n > 0 {
                let _ = s.send_data(Bytes::new(), true);
            }
        }
        ("status", Some(code)) => {
            let resp = Response::builder()
                .status(code.parse::<u16>().unwrap_or(500))
                .body(())
                .unwrap();
            let _ = respond.send_response(resp, true);
        }
        // `/authority`: the request's `:authority`, or `none`.
        ("authority", _) => {
            let Ok(mut s) = respond.send_response(Response::new(()), false) else {
                return;
            };
            let text = authority.unwrap_or_else(|| "none".into());
            let _ = s.send_data(Bytes::from(text), true);
        }
        // `/peer-close`: as a peer proxy's answer that wants its client's
        // connection closed (linkerd2-proxy's `l5d-proxy-connection`).
        ("peer-close", _) => {
            let resp = Response::builder()
                .header("l5d-proxy-connection", "close")
                .body(())
                .unwrap();
            let Ok(mut s) = respond.send_response(resp, false) else {
                return;
            };
            let _ = s.send_data(Bytes::from_static(b"closing"), true);
        }
        // `/grpc-only/N`: a trailers-only gRPC answer with status N;
        // `/grpc-trailer/N`: a message, then trailers with status N.
        ("grpc-only", Some(n)) => {
            let resp = Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", n)
                .body(())
                .unwrap();
            let _ = respond.send_response(resp, true);
        }
        ("grpc-trailer", Some(n)) => {
            let resp = Response::builder()
                .header("content-type", "application/grpc")
                .body(())
                .unwrap();
            let Ok(mut s) = respond.send_response(resp, false) else {
                return;
            };
            let _ = s.send_data(Bytes::from_static(b"\0\0\0\0\0"), false);
            let mut t = HeaderMap::new();
            t.insert("grpc-status", n.parse().unwrap());
            let _ = s.send_trailers(t);
        }
        ("reset", _) => respond.send_reset(Reason::INTERNAL_ERROR),
        // A response head over the proxy's 64 KiB header list limit.
        ("big-head", _) => {
            let big = "x".repeat(70_000);
            let resp = Response::builder().header("x-big", big).body(()).unwrap();
            let Ok(mut s) = respond.send_response(resp, false) else {
                return;
            };
            let _ = s.send_data(Bytes::from_static(b"big"), true);
        }
        // A 200 whose body is cut short by a reset.
        ("cut", _) => {
            let Ok(mut s) = respond.send_response(Response::new(()), false) else {
                return;
            };
            let _ = s.send_data(Bytes::from_static(b"the beginning"), false);
            monoio::time::sleep(Duration::from_millis(20)).await;
            s.send_reset(Reason::INTERNAL_ERROR);
        }
        ("hang", _) => {
            if poll_fn(|cx| respond.poll_reset(cx)).await.is_ok() {
                c.resets_seen.fetch_add(1, Ordering::Relaxed);
            }
        }
        ("slow", Some(ms)) => {
            monoio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(100))).await;
            let Ok(mut s) = respond.send_response(Response::new(()), false) else {
                return;
            };
            let _ = s.send_data(Bytes::from_static(b"slow"), true);
        }
        _ => {
            let resp = Response::builder().status(404).body(()).unwrap();
            let _ = respond.send_response(resp, true);
        }
    }
}

/// Sends `chunk` as the stream's window allows.
pub async fn send_all(s: &mut SendStream<Bytes>, mut chunk: Bytes) -> Result<(), ()> {
    while !chunk.is_empty() {
        s.reserve_capacity(chunk.len());
        let cap = match poll_fn(|cx| s.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            _ => return Err(()),
        };
        let part = chunk.split_to(cap.min(chunk.len()));
        s.send_data(part, false).map_err(|_| ())?;
    }
    Ok(())
}

/// The byte the origin's `/bytes/N` sends at offset `i`.
pub fn pattern_byte(i: usize) -> u8 {
    (i % 251) as u8
}

/// An h2c client connection (call inside [`runtime`]).
pub async fn connect(addr: SocketAddr) -> client::SendRequest<Bytes> {
    let s = TcpStream::connect(addr).await.unwrap();
    let _ = s.set_nodelay(true);
    let (send, conn) = client::handshake(s).await.unwrap();
    monoio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// A whole response: status, body, trailers (client side).
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: Option<HeaderMap>,
}

/// Sends a request with `body` (if any) and reads the whole answer.
pub async fn request(
    send: &client::SendRequest<Bytes>,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Answer, monoio_http::h2::Error> {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://test{path}"))
        .body(())
        .unwrap();
    let mut send = send.clone().ready().await?;
    let (resp, mut up) = send.send_request(req, body.is_none())?;
    if let Some(b) = body {
        // Upload while the response streams back (the echo route needs it).
        monoio::spawn(async move {
            for piece in b.chunks(64 * 1024) {
                if send_all(&mut up, Bytes::copy_from_slice(piece))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let _ = up.send_data(Bytes::new(), true);
        });
    }
    let resp = resp.await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut rb = resp.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = rb.data().await {
        let chunk = chunk?;
        let _ = rb.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    let trailers = rb.trailers().await?;
    Ok(Answer {
        status,
        headers,
        body: out,
        trailers,
    })
}

/// Runs `tests/grpc/h2_attack.py ATTACK ADDR` (Debian's python3 with
/// python3-h2), bounded at 30 s: its one-line outcome (`goaway 11`,
/// `response 431`, ...), or its stderr when it printed none.
pub fn attack(attack: &str, addr: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/h2_attack.py");
    let out = std::process::Command::new("timeout")
        .args(["30", "/usr/bin/python3", script, attack, addr])
        .output()
        .expect("Debian python3 with python3-h2");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if text.is_empty() {
        format!("(no outcome) {}", String::from_utf8_lossy(&out.stderr))
    } else {
        text
    }
}

/// The SETTINGS_MAX_CONCURRENT_STREAMS a listener advertises: the
/// connection preface and an empty SETTINGS, then the server's SETTINGS
/// read off the wire (`None`: not advertised).
pub fn advertised_streams(addr: SocketAddr) -> Option<u32> {
    advertised_streams_after(addr, Duration::ZERO)
}

/// As [`advertised_streams`], the client silent for `pause` after
/// connecting.
pub fn advertised_streams_after(addr: SocketAddr, pause: Duration) -> Option<u32> {
    advertised(addr, pause).settings.get(&3).copied()
}

/// What an HTTP/2 server said before any request.
pub struct Advertised {
    /// Its SETTINGS, by identifier.
    pub settings: std::collections::HashMap<u16, u32>,
    /// The connection window it opened beyond the initial 65535.
    pub connection_window_increment: u32,
}

/// The connection preface and an empty SETTINGS after `pause`, then the
/// server's frames up to its SETTINGS ACK.
pub fn advertised(addr: SocketAddr, pause: Duration) -> Advertised {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    std::thread::sleep(pause);
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let mut out = Advertised {
        settings: Default::default(),
        connection_window_increment: 0,
    };
    let mut acked = false;
    loop {
        let mut head = [0u8; 9];
        if let Err(e) = s.read_exact(&mut head) {
            // After its ACK, what else it sends unasked comes at once.
            assert!(acked, "{e}");
            return out;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).unwrap();
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
        match (head[3], head[4] & 1, stream) {
            (4, 1, 0) => {
                acked = true;
                s.set_read_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
            }
            (4, 0, 0) => {
                for p in payload.chunks_exact(6) {
                    let id = u16::from_be_bytes([p[0], p[1]]);
                    let value = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
                    out.settings.insert(id, value);
                }
            }
            (8, _, 0) => {
                out.connection_window_increment +=
                    u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
            }
            _ => {}
        }
    }
}
