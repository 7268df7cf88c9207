//! The admin server: HTTP/1.1 and HTTP/2 (h2c with prior knowledge) on one
//! port, as tasks on the control core's monoio runtime; inside mutual TLS
//! too, for a meshed client asking for this proxy's identity (the engine
//! terminates it: [`AdminBackend::accept_tls`]), as linkerd2-proxy's.
//!
//! A connection that opens with the HTTP/2 preface is served by the
//! vendored monoio-http h2 server; anything else by the HTTP/1 codec from
//! `ringmesh-protocols`. Both answer through one [`route`], so every path,
//! method and status is decided once whatever the protocol.
//!
//! It shares its thread with discovery, so nothing here may block, and no
//! client may hold the loop: every wait for a client (the preface, a request
//! head or body, writing a response, an idle HTTP/2 connection) is bounded by
//! [`Settings::timeout`], at most [`Settings::max_connections`] are open
//! (when all are, the one idle longest is closed for a newcomer: see
//! [`crate::slots`]), and an
//! HTTP/2 client's bytes are
//! read through what [`AdminBackend::h2_io`] gives (the engine's HTTP/2
//! attack defences: a flood of frames that do no work would otherwise keep
//! the control core busy for as long as it lasted).
//!
//! While every connection is busy (scrapes waiting for a collection, say:
//! 64 clients scraping in a loop keep them all busy), a newcomer is served
//! on a second set of as many slots, where only the probes are answered
//! (`/live`, `/ready`; anything else 503) and the connection is closed after
//! one request: a kubelet's probe is answered whatever other clients do
//! (linkerd2-proxy's admin server has no connection limit).

use std::future::Future;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, PrefixedReadIo};
use monoio::net::{TcpListener, TcpStream};
use monoio::time::Instant;
use monoio_http::h2::{server as h2server, RecvStream};
use ringmesh_protocols::client_hello::{self, Hello};
use ringmesh_protocols::http1::{BodyFraming, BodyScanner, Limits, Method, RequestHead};
use std::io::Cursor;

use crate::slots::{Held, Slots};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = ringmesh_protocols::detect::H2_PREFACE;
/// Largest request body read (only `PUT /proxy-log-level` has one).
const MAX_BODY: usize = 64 * 1024;

/// Streams an HTTP/2 admin client may have open at once.
const MAX_H2_STREAMS: u32 = 4;

/// An admin connection that opened with the HTTP/2 preface: the socket,
/// with the bytes read to detect it put back in front.
pub type H2Socket = PrefixedReadIo<TcpStream, Cursor<Vec<u8>>>;

/// What the admin server asks of the proxy. Called on the control core's
/// thread; `metrics` may wait (workers answer by message) but must not
/// block it.
// Single-threaded runtime: the futures need not be `Send`.
#[allow(async_fn_in_trait)]
pub trait AdminBackend: 'static {
    /// What an HTTP/2 client's connection is served through.
    type H2Io: AsyncReadRent + AsyncWriteRent + Unpin + 'static;
    /// Wraps an HTTP/2 client's connection (from `peer`) before the HTTP/2
    /// server reads it: the engine puts its frame guard here.
    fn h2_io(&self, io: H2Socket, peer: SocketAddr) -> Self::H2Io;
    /// A connection this proxy terminated TLS on: a meshed client's (a
    /// meshed Prometheus scraping, as linkerd2-proxy's admin server takes
    /// them).
    type Tls: AsyncReadRent + AsyncWriteRent + Unpin + 'static;
    /// What an HTTP/2 client inside TLS is served through (as `H2Io`).
    type H2TlsIo: AsyncReadRent + AsyncWriteRent + Unpin + 'static;
    fn h2_tls_io(
        &self,
        io: PrefixedReadIo<Self::Tls, Cursor<Vec<u8>>>,
        peer: SocketAddr,
    ) -> Self::H2TlsIo;
    /// Terminates TLS on `s`, whose ClientHello (asking for `sni`) was
    /// read as `hello`: with this proxy's certificate when it holds one
    /// and `sni` names its identity; `None` otherwise or when the
    /// handshake fails (the connection is closed). Bounded by the caller.
    async fn accept_tls(
        &self,
        s: TcpStream,
        hello: Vec<u8>,
        sni: Option<&str>,
        peer: SocketAddr,
    ) -> Option<Self::Tls>;
    /// Every worker accepts and the first discovery snapshot is applied.
    fn ready(&self) -> bool;
    /// Appends the Prometheus text exposition (format 0.0.4).
    /// The `/metrics` page; scrapes answered by one collection share it.
    async fn metrics(&self) -> Arc<Page>;
    /// Starts the graceful drain (as SIGTERM does).
    fn shutdown(&self);
    /// Whether `POST /shutdown` is allowed
    /// (`LINKERD2_PROXY_SHUTDOWN_ENDPOINT_ENABLED`).
    fn shutdown_enabled(&self) -> bool;
    fn log_level(&self) -> String;
    fn set_log_level(&self, filter: &str) -> Result<(), String>;
}

/// How long clients may take and how many may be connected.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Bounds each wait for a client: the preface and every request head
    /// (from the end of the previous response on a kept-alive connection),
    /// a request body, writing a response, an HTTP/2 connection with no
    /// open stream.
    pub timeout: Duration,
    /// Connections open at once. A newcomer past it closes the connection
    /// idle longest, or is closed itself when every one is busy.
    pub max_connections: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_connections: 64,
        }
    }
}

/// A `/metrics` page. Every scrape one collection answers shares it (no
/// copy per scrape), and it is compressed at most once, for the first
/// scrape that asks for gzip: a flood of scrapers costs the control core
/// one page, not one per scraper.
#[derive(Debug, Default)]
pub struct Page {
    text: String,
    gzipped: std::sync::OnceLock<Option<Vec<u8>>>,
}

impl Page {
    pub fn new(text: String) -> Arc<Self> {
        Arc::new(Self {
            text,
            gzipped: std::sync::OnceLock::new(),
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Its gzip form, made once (`None` if compression failed).
    fn gzipped(&self) -> Option<&[u8]> {
        self.gzipped
            .get_or_init(|| gzip(&self.text).ok())
            .as_deref()
    }
}

/// A response's body.
#[derive(Debug)]
pub enum Body {
    Text(String),
    Page(Arc<Page>),
}

impl Body {
    fn text(&self) -> &str {
        match self {
            Self::Text(t) => t,
            Self::Page(p) => p.text(),
        }
    }

    /// The body, gzipped when `gzip_it` (and compression works).
    fn bytes(&self, gzip_it: bool) -> io::Result<std::borrow::Cow<'_, [u8]>> {
        use std::borrow::Cow;
        match (self, gzip_it) {
            (_, false) => Ok(Cow::Borrowed(self.text().as_bytes())),
            (Self::Text(t), true) => gzip(t).map(Cow::Owned),
            (Self::Page(p), true) => p
                .gzipped()
                .map(Cow::Borrowed)
                .ok_or_else(|| io::Error::other("gzip failed")),
        }
    }
}

impl Body {
    /// The body for an HTTP/2 stream: a page is not copied (the library
    /// holds the bytes until the client's window lets them go; every
    /// stream answered by one collection holds the same page).
    fn shared(&self, gzip_it: bool) -> io::Result<Bytes> {
        /// A page's text, or its gzip form (made already), as bytes.
        struct Shared(Arc<Page>, bool);
        impl AsRef<[u8]> for Shared {
            fn as_ref(&self) -> &[u8] {
                match self.1 {
                    true => self.0.gzipped().unwrap_or_default(),
                    false => self.0.text.as_bytes(),
                }
            }
        }
        match self {
            Self::Page(p) => {
                if gzip_it && p.gzipped().is_none() {
                    return Err(io::Error::other("gzip failed"));
                }
                Ok(Bytes::from_owner(Shared(p.clone(), gzip_it)))
            }
            Self::Text(_) => self.bytes(gzip_it).map(|b| Bytes::copy_from_slice(&b)),
        }
    }
}

/// One response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Body,
    /// A 405's `Allow` (RFC 9110 §15.5.6).
    pub allow: Option<&'static str>,
}

impl Reply {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: Body::Text(body.into()),
            allow: None,
        }
    }

    /// 405, naming the methods `allow`ed.
    fn not_allowed(allow: &'static str) -> Self {
        Self {
            allow: Some(allow),
            ..Self::text(405, "method not allowed\n")
        }
    }

    /// The body as text.
    pub fn text_body(&self) -> &str {
        self.body.text()
    }
}

/// Serves `listener` for as long as the runtime runs this task.
pub async fn serve<B: AdminBackend>(listener: TcpListener, backend: Rc<B>, settings: Settings) {
    let slots = Slots::new(settings.max_connections);
    // Newcomers while every slot is busy: probes only (see the module's
    // note), one request per connection. Room is made by closing the
    // oldest connection not answering, however young: a client opening
    // connections faster than the main set's grace cannot hold these.
    let probes = Slots::oldest_first(settings.max_connections);
    // Accept failures in a row (out of descriptors, say): the first is
    // logged, the rest counted and reported when one succeeds.
    let mut failing = 0u64;
    loop {
        let (stream, peer) = match listener.accept().await {
            // An IPv4 client of `[::]` (dual stack) as its IPv4 address:
            // `127.0.0.1` must count as loopback.
            Ok((stream, peer)) => (
                stream,
                SocketAddr::new(peer.ip().to_canonical(), peer.port()),
            ),
            Err(e) => {
                if failing == 0 {
                    tracing::warn!(error = %e, "admin accept failed (retrying every 100 ms)");
                }
                failing += 1;
                monoio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if failing > 0 {
            tracing::info!(failures = failing, "admin accepts again");
            failing = 0;
        }
        let (held, probes_only) = match slots.admit_from(peer.ip()) {
            Some(held) => (held, false),
            None => match probes.admit_from(peer.ip()) {
                Some(held) => (held, true),
                None => {
                    tracing::debug!(%peer, "every admin connection is busy; closing");
                    continue;
                }
            },
        };
        let backend = backend.clone();
        let mode = Mode {
            settings,
            probes_only,
        };
        monoio::spawn(async move {
            let _ = held
                .run(connection(stream, peer, &*backend, mode, &held))
                .await;
        });
    }
}

/// `f` within `deadline`, a timeout error past it.
async fn by<T>(deadline: Instant, f: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    monoio::time::timeout_at(deadline, f)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// Reads once more into `buf`; false at end of stream.
async fn read_more(
    s: &mut impl AsyncReadRent,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> io::Result<bool> {
    let chunk = by(deadline, async {
        let (r, chunk) = s.read(Vec::with_capacity(4096)).await;
        r.map(|_| chunk)
    })
    .await?;
    buf.extend_from_slice(&chunk);
    Ok(!chunk.is_empty())
}

/// How a connection is served: its timeouts, and whether it was admitted
/// for the probes only (every other slot busy).
#[derive(Clone, Copy)]
struct Mode {
    settings: Settings,
    probes_only: bool,
}

impl Mode {
    /// The answer to a request: [`route`]'s, or for a connection admitted
    /// for the probes only, a 503 for anything but `/live` and `/ready`.
    async fn answer<B: AdminBackend>(
        self,
        method: Method,
        path: &str,
        body: &[u8],
        from_loopback: bool,
        backend: &B,
    ) -> Reply {
        let probe = matches!(
            path.split_once('?').map_or(path, |(p, _)| p),
            "/live" | "/ready"
        );
        if self.probes_only && !probe {
            return Reply::text(
                503,
                "the admin server is busy (every connection is answering); only /live and /ready are served\n",
            );
        }
        route(method, path, body, from_loopback, backend).await
    }
}

async fn connection<B: AdminBackend>(
    mut s: TcpStream,
    peer: SocketAddr,
    backend: &B,
    mode: Mode,
    held: &Held,
) -> io::Result<()> {
    let settings = mode.settings;
    s.set_nodelay(true)?;
    let from_loopback = peer.ip().is_loopback();
    let mut buf = Vec::with_capacity(4096);
    let deadline = Instant::now() + settings.timeout;
    if !read_more(&mut s, &mut buf, deadline).await? {
        return Ok(());
    }
    // A TLS handshake record: a meshed client (its proxy originates mutual
    // TLS to this port), served inside TLS when it asks for this proxy's
    // identity; anything else that looks like TLS is closed.
    if buf[0] == 0x16 {
        let sni = loop {
            match client_hello::parse(&buf) {
                Hello::Complete { sni } => break sni,
                Hello::NotTls => return Ok(()),
                Hello::Incomplete => {
                    if !read_more(&mut s, &mut buf, deadline).await? {
                        return Ok(());
                    }
                }
            }
        };
        let accepted =
            monoio::time::timeout_at(deadline, backend.accept_tls(s, buf, sni.as_deref(), peer))
                .await;
        let Ok(Some(tls)) = accepted else {
            return Ok(());
        };
        let h2 = |io| backend.h2_tls_io(io, peer);
        return detected(tls, Vec::new(), h2, from_loopback, backend, mode, held).await;
    }
    let h2 = |io| backend.h2_io(io, peer);
    detected(s, buf, h2, from_loopback, backend, mode, held).await
}

/// Serves a connection (plain, or inside TLS) whose first bytes read are
/// `buf`: HTTP/2 when they are its preface, else HTTP/1. `h2` wraps an
/// HTTP/2 client's connection (the engine's HTTP/2 defences).
async fn detected<B, S, H>(
    mut s: S,
    mut buf: Vec<u8>,
    h2: impl FnOnce(PrefixedReadIo<S, Cursor<Vec<u8>>>) -> H,
    from_loopback: bool,
    backend: &B,
    mode: Mode,
    held: &Held,
) -> io::Result<()>
where
    B: AdminBackend,
    S: AsyncReadRent + AsyncWriteRent,
    H: AsyncReadRent + AsyncWriteRent + Unpin + 'static,
{
    // Enough to tell the HTTP/2 preface from an HTTP/1 request line.
    let deadline = Instant::now() + mode.settings.timeout;
    while buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&buf) {
        if !read_more(&mut s, &mut buf, deadline).await? {
            return Ok(());
        }
    }
    if buf.starts_with(H2_PREFACE) {
        let io = h2(PrefixedReadIo::new(s, Cursor::new(buf)));
        http2(io, from_loopback, backend, mode, held).await;
        Ok(())
    } else {
        http1(s, buf, from_loopback, backend, mode, held).await
    }
}

async fn http1<B: AdminBackend>(
    mut s: impl AsyncReadRent + AsyncWriteRent,
    mut buf: Vec<u8>,
    from_loopback: bool,
    backend: &B,
    mode: Mode,
    held: &Held,
) -> io::Result<()> {
    let settings = mode.settings;
    let limits = Limits::default();
    let mut head = RequestHead::new();
    loop {
        // A whole head, within the timeout.
        held.idle();
        let deadline = Instant::now() + settings.timeout;
        let n = loop {
            match head.parse(&buf, &limits) {
                Ok(Some(n)) => break n,
                Ok(None) => {}
                Err(e) => {
                    let reply = Reply::text(e.status(), format!("{e}\n"));
                    let out = http1_reply(&reply, false, true, false)?;
                    return write(&mut s, out, settings).await;
                }
            }
            if !read_more(&mut s, &mut buf, deadline).await? {
                return Ok(());
            }
        };
        buf.drain(..n);
        // The body (only PUT /proxy-log-level has one worth reading), with
        // a length or chunked, up to MAX_BODY; a client that waits for a
        // 100 (Continue) gets it first.
        let framing = head.framing();
        if let BodyFraming::ContentLength(n) = framing {
            if n as usize > MAX_BODY {
                let reply = Reply::text(413, "body too large\n");
                let out = http1_reply(&reply, false, true, false)?;
                return write(&mut s, out, settings).await;
            }
        }
        if head.expect_continue() && !framing.is_empty() && buf.is_empty() {
            write(&mut s, b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(), settings).await?;
        }
        let mut scanner = BodyScanner::new(framing, &limits);
        let mut body = Vec::new();
        loop {
            let scanned = scanner.scan_parts(&buf, |r| body.extend_from_slice(&buf[r]), |_| {});
            let refused = match scanned {
                Err(e) => Some(Reply::text(400, format!("bad request body: {e}\n"))),
                Ok(_) if body.len() > MAX_BODY => Some(Reply::text(413, "body too large\n")),
                Ok(p) => {
                    buf.drain(..p.consumed);
                    if p.done {
                        break;
                    }
                    None
                }
            };
            if let Some(reply) = refused {
                let out = http1_reply(&reply, false, true, false)?;
                return write(&mut s, out, settings).await;
            }
            if !read_more(&mut s, &mut buf, deadline).await? {
                return Ok(());
            }
        }
        // Busy only while answering: waiting on the client (its bytes, or
        // room to write) leaves the slot to whoever needs it more.
        held.busy();
        let reply = mode
            .answer(head.method(), head.path(), &body, from_loopback, backend)
            .await;
        held.idle();
        // Admitted for the probes only: one request.
        let keep = head.keep_alive() && !mode.probes_only;
        let with_body = head.method() != Method::Head;
        let gzip = reply.status == 200
            && head
                .headers()
                .get_all("accept-encoding")
                .any(|v| accepts_gzip(&String::from_utf8_lossy(v)));
        let out = http1_reply(&reply, keep, with_body, gzip)?;
        write(&mut s, out, settings).await?;
        if !keep {
            return Ok(());
        }
    }
}

async fn write(s: &mut impl AsyncWriteRent, out: Vec<u8>, settings: Settings) -> io::Result<()> {
    by(Instant::now() + settings.timeout, async {
        s.write_all(out).await.0.map(drop)
    })
    .await
}

fn accepts_gzip(value: &str) -> bool {
    value
        .split(',')
        .any(|c| c.trim().split(';').next() == Some("gzip"))
}

fn gzip(body: &str) -> io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(body.as_bytes())?;
    enc.finish()
}

fn http1_reply(r: &Reply, keep: bool, with_body: bool, gzip_it: bool) -> io::Result<Vec<u8>> {
    let reason = ringmesh_protocols::http1::canonical_reason(r.status);
    let body = r.body.bytes(gzip_it)?;
    let mut out = Vec::with_capacity(body.len() + 160);
    out.extend_from_slice(format!("HTTP/1.1 {} {reason}\r\n", r.status).as_bytes());
    if let Some(allow) = r.allow {
        out.extend_from_slice(format!("allow: {allow}\r\n").as_bytes());
    }
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
    if gzip_it {
        out.extend_from_slice(b"content-encoding: gzip\r\n");
    }
    if !keep {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if with_body {
        out.extend_from_slice(&body);
    }
    Ok(out)
}

/// Serves HTTP/2 on `io` (from the preface on). Ends when the client
/// closes, on a protocol error, or after the timeout with no stream open.
async fn http2<B: AdminBackend>(
    io: impl AsyncReadRent + AsyncWriteRent + Unpin + 'static,
    from_loopback: bool,
    backend: &B,
    mode: Mode,
    held: &Held,
) {
    let settings = mode.settings;
    let mut builder = h2server::Builder::new();
    // A stream counts until its answer is sent whole: a client that opens
    // streams and never reads them holds this many answers. A `/metrics`
    // answer is the page every scrape of its collection shares, not a
    // copy (16 streams held 16 copies of a 12 MB page per connection).
    builder
        .max_concurrent_streams(MAX_H2_STREAMS)
        .max_header_list_size(16 * 1024)
        .max_local_error_reset_streams(Some(64));
    let handshake = builder.handshake::<_, Bytes>(io);
    let mut conn = match monoio::time::timeout(settings.timeout, handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "admin HTTP/2 handshake failed");
            return;
        }
        Err(_) => return,
    };
    // Streams are answered on this task, one after another: each answer is
    // quick (a scrape waits for workers, bounded), and the connection is
    // polled meanwhile so their data flows. An idle connection is closed.
    loop {
        let next = monoio::time::timeout(settings.timeout, conn.accept()).await;
        let (req, mut respond) = match next {
            Ok(Some(Ok(stream))) => stream,
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, "admin HTTP/2 connection ended with an error");
                return;
            }
            Ok(None) | Err(_) => return,
        };
        let (parts, body) = req.into_parts();
        let method = Method::from_bytes(parts.method.as_str().as_bytes());
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let gzip_ok = parts
            .headers
            .get_all(http::header::ACCEPT_ENCODING)
            .iter()
            .any(|v| accepts_gzip(&String::from_utf8_lossy(v.as_bytes())));
        // The body and the answer, while the connection keeps being driven.
        let answer = async {
            let body = match read_h2_body(body, settings.timeout).await {
                Ok(body) => body,
                Err(reply) => return reply,
            };
            held.busy();
            let reply = mode
                .answer(method, &path, &body, from_loopback, backend)
                .await;
            held.idle();
            reply
        };
        let mut answer = std::pin::pin!(answer);
        let reply = monoio::select! {
            reply = &mut answer => Some(reply),
            _ = std::future::poll_fn(|cx| conn.poll_closed(cx)) => None,
        };
        let Some(reply) = reply else { return };
        let gzip_it = reply.status == 200 && gzip_ok;
        let Ok(body) = reply.body.shared(gzip_it) else {
            return;
        };
        let mut head = http::Response::builder().status(reply.status);
        if reply.status != 204 {
            head = head.header(http::header::CONTENT_TYPE, reply.content_type);
        }
        if let Some(allow) = reply.allow {
            head = head.header(http::header::ALLOW, allow);
        }
        if gzip_it {
            head = head.header(http::header::CONTENT_ENCODING, "gzip");
        }
        let Ok(head) = head.body(()) else { return };
        let empty = method == Method::Head || reply.status == 204 || body.is_empty();
        match respond.send_response(head, empty) {
            Ok(mut stream) if !empty => {
                let _ = stream.send_data(body, true);
            }
            _ => {}
        }
        if mode.probes_only {
            // Admitted for the probes only: one request. GOAWAY, the
            // answer flushed, then closed.
            conn.graceful_shutdown();
            let closed = std::future::poll_fn(|cx| conn.poll_closed(cx));
            let _ = monoio::time::timeout(settings.timeout, closed).await;
            return;
        }
    }
}

/// A request body up to [`MAX_BODY`], within `timeout`.
async fn read_h2_body(mut body: RecvStream, timeout: Duration) -> Result<Vec<u8>, Reply> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while !body.is_end_stream() {
        let chunk = match monoio::time::timeout_at(deadline, body.data()).await {
            Ok(Some(Ok(chunk))) => chunk,
            Ok(None) => break,
            Ok(Some(Err(_))) | Err(_) => return Err(Reply::text(400, "incomplete body\n")),
        };
        let _ = body.flow_control().release_capacity(chunk.len());
        if out.len() + chunk.len() > MAX_BODY {
            return Err(Reply::text(413, "body too large\n"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The admin API, for tests: `method` and `path` as a request line has
/// them.
pub async fn route_for_tests<B: AdminBackend>(
    method: &str,
    path: &str,
    body: &[u8],
    from_loopback: bool,
    backend: &B,
) -> Reply {
    let method = Method::from_bytes(method.as_bytes());
    route(method, path, body, from_loopback, backend).await
}

/// The admin API: paths and methods as linkerd2-proxy's admin server.
/// Every `GET` answers `HEAD` too, as the same reply (its writer leaves
/// the body out), so a probe or `curl -I` sees what `GET` would.
async fn route<B: AdminBackend>(
    method: Method,
    path: &str,
    body: &[u8],
    from_loopback: bool,
    backend: &B,
) -> Reply {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let only = |allowed: &[Method]| !allowed.contains(&method);
    match path {
        "/live" if only(&[Method::Get, Method::Head]) => Reply::not_allowed("GET, HEAD"),
        "/live" => Reply::text(200, "live\n"),
        "/ready" if only(&[Method::Get, Method::Head]) => Reply::not_allowed("GET, HEAD"),
        "/ready" if backend.ready() => Reply::text(200, "ready\n"),
        "/ready" => Reply::text(503, "not ready\n"),
        "/metrics" if only(&[Method::Get, Method::Head]) => Reply::not_allowed("GET, HEAD"),
        "/metrics" => Reply {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            body: Body::Page(backend.metrics().await),
            allow: None,
        },
        // As linkerd2-proxy decides: the method, then the client, then
        // whether the endpoint is enabled.
        "/shutdown" if only(&[Method::Post]) => Reply::not_allowed("POST"),
        "/shutdown" if !from_loopback => {
            Reply::text(403, "Requests are only permitted from localhost.")
        }
        "/shutdown" if !backend.shutdown_enabled() => {
            Reply::text(404, "shutdown endpoint is not enabled\n")
        }
        "/shutdown" => {
            backend.shutdown();
            Reply::text(200, "shutdown\n")
        }
        // As linkerd2-proxy: the log level is changed from this host only.
        "/proxy-log-level" if !from_loopback => {
            Reply::text(403, "Requests are only permitted from localhost.")
        }
        "/env.json" if only(&[Method::Get, Method::Head]) => Reply::not_allowed("GET, HEAD"),
        // linkerd2-proxy serves it to any client; here, as the log level,
        // from this host only: the environment is the proxy's settings.
        "/env.json" if !from_loopback => {
            Reply::text(403, "Requests are only permitted from localhost.")
        }
        "/env.json" => env_json(query),
        "/proxy-log-level" => match method {
            Method::Get | Method::Head => Reply::text(200, format!("{}\n", backend.log_level())),
            Method::Put => {
                let Ok(filter) = std::str::from_utf8(body) else {
                    return Reply::text(400, "the filter must be UTF-8\n");
                };
                match backend.set_log_level(filter.trim()) {
                    Ok(()) => Reply::text(204, ""),
                    Err(e) => Reply::text(400, format!("{e}\n")),
                }
            }
            _ => Reply::not_allowed("GET, HEAD, PUT"),
        },
        _ => Reply::text(404, "not found\n"),
    }
}

/// linkerd2-proxy's `/env.json`: the process's environment as a JSON
/// object; `?A&B` picks variables (one not set is `null`); a `key=value`
/// query is refused (400), as linkerd2-proxy refuses it.
fn env_json(query: &str) -> Reply {
    use ringmesh_protocols::json::push_str;
    if query.contains('=') {
        let mut body = String::from("{\"error\":");
        push_str(
            &mut body,
            "env.json query parameters may not contain key-value pairs",
        );
        body.push('}');
        return Reply {
            status: 400,
            content_type: "application/json",
            body: Body::Text(body),
            allow: None,
        };
    }
    let vars: Vec<(String, Option<String>)> = if query.is_empty() {
        std::env::vars_os()
            .map(|(k, v)| {
                let v = v.to_string_lossy().into_owned();
                (k.to_string_lossy().into_owned(), Some(v))
            })
            .collect()
    } else {
        // Each variable once (a JSON object's keys are unique), in the
        // order first asked.
        let mut seen = std::collections::HashSet::new();
        query
            .split('&')
            .filter(|k| !k.is_empty() && seen.insert(*k))
            .map(|k| {
                let v = std::env::var_os(k).map(|v| v.to_string_lossy().into_owned());
                (k.to_string(), v)
            })
            .collect()
    };
    let mut body = String::from("{");
    for (i, (k, v)) in vars.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        push_str(&mut body, k);
        body.push(':');
        match v {
            Some(v) => push_str(&mut body, v),
            None => body.push_str("null"),
        }
    }
    body.push('}');
    Reply {
        status: 200,
        content_type: "application/json",
        body: Body::Text(body),
        allow: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[derive(Default)]
    struct Fake {
        ready: Cell<bool>,
        shutdowns: Cell<usize>,
    }

    impl AdminBackend for Fake {
        type H2Io = H2Socket;
        fn h2_io(&self, io: H2Socket, _: SocketAddr) -> H2Socket {
            io
        }
        type Tls = TcpStream;
        type H2TlsIo = H2Socket;
        fn h2_tls_io(&self, io: H2Socket, _: SocketAddr) -> H2Socket {
            io
        }
        async fn accept_tls(
            &self,
            _: TcpStream,
            _: Vec<u8>,
            _: Option<&str>,
            _: SocketAddr,
        ) -> Option<TcpStream> {
            None
        }
        fn ready(&self) -> bool {
            self.ready.get()
        }
        async fn metrics(&self) -> Arc<Page> {
            Page::new("# TYPE x counter\nx 1\n".into())
        }
        fn shutdown(&self) {
            self.shutdowns.set(self.shutdowns.get() + 1);
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
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let b = Fake::default();
        let mut r = |m: &str, p: &str, body: &[u8], lo: bool| {
            rt.block_on(route_for_tests(m, p, body, lo, &b)).status
        };
        assert_eq!(r("GET", "/ready", b"", true), 503);
        b.ready.set(true);
        assert_eq!(r("GET", "/ready", b"", true), 200);
        assert_eq!(r("GET", "/live", b"", true), 200);
        assert_eq!(r("POST", "/live", b"", true), 405);
        assert_eq!(r("GET", "/metrics?x=1", b"", true), 200);
        assert_eq!(r("GET", "/other", b"", true), 404);
        // Shutdown only by POST, only from loopback (linkerd2-proxy's
        // codes, in its order).
        assert_eq!(r("POST", "/shutdown", b"", false), 403);
        assert_eq!(r("GET", "/shutdown", b"", true), 405);
        assert_eq!(r("GET", "/shutdown", b"", false), 405);
        assert_eq!(b.shutdowns.get(), 0);
        assert_eq!(r("POST", "/shutdown", b"", true), 200);
        assert_eq!(b.shutdowns.get(), 1);
        assert_eq!(r("PUT", "/proxy-log-level", b"debug", true), 204);
        assert_eq!(r("PUT", "/proxy-log-level", b"bad[", true), 400);
        assert_eq!(r("DELETE", "/proxy-log-level", b"", true), 405);
        // The log level and the environment: from this host only.
        assert_eq!(r("PUT", "/proxy-log-level", b"trace", false), 403);
        assert_eq!(r("GET", "/proxy-log-level", b"", false), 403);
        assert_eq!(r("GET", "/env.json", b"", false), 403);
        assert_eq!(r("POST", "/env.json", b"", true), 405);
        assert_eq!(r("GET", "/env.json?PATH=x", b"", true), 400);
    }

    /// Every `GET` endpoint answers `HEAD` as `GET` without the body, and
    /// a 405 names `HEAD` wherever it names `GET`.
    #[test]
    fn head_is_get_without_the_body() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let b = Fake::default();
        b.ready.set(true);
        let mut r = |m: &str, p: &str| rt.block_on(route_for_tests(m, p, b"", true, &b));
        for path in [
            "/live",
            "/ready",
            "/metrics",
            "/proxy-log-level",
            "/env.json",
        ] {
            let (get, head) = (r("GET", path), r("HEAD", path));
            assert_eq!((get.status, head.status), (200, 200), "{path}");
            assert_eq!(get.content_type, head.content_type, "{path}");
            let out = http1_reply(&head, true, false, false).unwrap();
            let out = String::from_utf8(out).unwrap();
            let length = format!("content-length: {}\r\n", get.body.text().len());
            assert!(out.contains(&length), "{path}: {out}");
            assert!(out.ends_with("\r\n\r\n"), "{path}: a body in {out}");
            let refused = r("DELETE", path);
            assert_eq!(refused.status, 405, "{path}");
            let allow = refused.allow.unwrap();
            assert!(allow.starts_with("GET, HEAD"), "{path}: {allow}");
        }
        assert_eq!(
            r("DELETE", "/proxy-log-level").allow,
            Some("GET, HEAD, PUT")
        );
        // `/shutdown` is no GET endpoint.
        assert_eq!(r("HEAD", "/shutdown").allow, Some("POST"));
    }

    /// Every scrape a collection answers shares its page: an HTTP/2
    /// answer points into it rather than copying it, and the gzip form is
    /// made once.
    #[test]
    fn a_page_is_shared_and_gzipped_once() {
        let page = Page::new("x 1\n".repeat(1000));
        let (a, b) = (Body::Page(page.clone()), Body::Page(page.clone()));
        let plain = a.shared(false).unwrap();
        assert_eq!(plain.as_ptr(), page.text().as_ptr());
        let (za, zb) = (a.shared(true).unwrap(), b.shared(true).unwrap());
        assert_eq!(za.as_ptr(), zb.as_ptr(), "gzipped twice");
        assert_eq!(&*za, &*b.bytes(true).unwrap());
        assert!(za.len() < plain.len());
    }

    /// `/env.json` as linkerd2-proxy's: every variable, or those asked
    /// for (`null` when unset), as a JSON object.
    #[test]
    fn env_json_is_the_environment() {
        let all = env_json("");
        assert_eq!((all.status, all.content_type), (200, "application/json"));
        let path = std::env::var("PATH").unwrap();
        assert!(
            all.text_body().contains(&format!("\"PATH\":\"{path}\"")),
            "{}",
            all.text_body()
        );
        let some = env_json("PATH&RINGMESH_SURELY_UNSET_VAR&PATH");
        assert_eq!(
            some.text_body(),
            format!("{{\"PATH\":\"{path}\",\"RINGMESH_SURELY_UNSET_VAR\":null}}")
        );
    }
}
