//! Tap's gRPC server (`io.linkerd.proxy.tap.Tap/Observe`) on the control
//! core: HTTP/2 (monoio-http) on `LINKERD2_PROXY_CONTROL_LISTEN_ADDR`.
//!
//! Each `Observe` call is checked and compiled (`tap.rs`); a bad one gets
//! `INVALID_ARGUMENT` at once. A good one is installed: published to the
//! workers (the snapshot channel), with one bounded queue per worker for
//! its events. The workers encode the `TapEvent`s (`tap_wire.rs`) and hand
//! them over in batches; the call's task writes them as the client's flow
//! control allows. While the client does not read, the workers' queues
//! fill and further events are dropped and counted (never a request
//! slowed). The call ends cleanly once `limit`
//! requests have ended (its trailers say how many events were dropped);
//! a client that goes away (or resets the stream) ends it too. Either way
//! the tap is removed from the workers at once.
//!
//! Who may connect: clients from loopback, over plaintext, with
//! `RINGMESH_TAP_ALLOW_LOOPBACK=true`; anyone else only over mutual TLS
//! (this proxy's certificate, ALPN `h2`), proving the
//! `LINKERD2_PROXY_TAP_SVC_NAME` identity: any other client, one without a
//! certificate, or any client before this proxy holds a certificate, is
//! refused once the handshake is done (or at once).

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use linkerd2_proxy_api::tap::ObserveRequest;
use monoio::net::TcpListener;
use monoio_http::h2::{server, RecvStream, SendStream};
use prost::Message as _;
use ringmesh_admin::slots::{Held, Slots};
use ringmesh_discovery::channel::Publisher;
use ringmesh_discovery::events::{self, EventReceiver};

use crate::tap::{Installed, Tap, TapBatch, TapSet, QUEUE_BYTES};

const OBSERVE_PATH: &str = "/io.linkerd.proxy.tap.Tap/Observe";
/// Largest `ObserveRequest` read.
const MAX_REQUEST: usize = 64 * 1024;
/// A client must send its request within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Taps at most at once (each costs the workers a match per request).
const MAX_TAPS: usize = 100;
/// Client connections at most at once (handshakes included): a newcomer
/// past it closes the one idle longest (no call open: a handshake, an
/// unproven or quiet client), or is closed itself when every one has a
/// call ([`ringmesh_admin::slots`]).
const MAX_CONNECTIONS: usize = 64;
/// A connection with no call for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
const _: () = assert!(MAX_TAPS <= crate::tap::MAX_MATCHED);

/// Tap's counters, rendered with the admin metrics.
#[derive(Default)]
pub(crate) struct TapMetrics {
    /// Taps installed on the workers now.
    pub(crate) installed: AtomicU64,
    /// Events dropped because a tap's client did not keep up, counted as
    /// they are (shared with every installed tap).
    pub(crate) dropped: Arc<AtomicU64>,
    /// Events sent to tap clients.
    pub(crate) sent: AtomicU64,
}

impl TapMetrics {
    pub(crate) fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP tap_installed Taps installed on the workers.\n# TYPE tap_installed gauge\ntap_installed {}",
            self.installed.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP tap_events_dropped_total Tap events dropped because a tap's client did not keep up.\n# TYPE tap_events_dropped_total counter\ntap_events_dropped_total {}",
            self.dropped.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP tap_events_total Tap events sent to tap clients.\n# TYPE tap_events_total counter\ntap_events_total {}",
            self.sent.load(Ordering::Relaxed)
        );
    }
}

/// The server's state on the control core.
pub(crate) struct TapServer {
    publisher: RefCell<Publisher<TapSet>>,
    /// The identity tap clients must prove (mutual TLS), and this proxy's
    /// TLS configurations (none until it holds a certificate).
    svc_name: Option<ringmesh_identity::Name>,
    identity: RefCell<ringmesh_discovery::channel::Cache<crate::identity::IdentityState>>,
    installed: RefCell<Vec<(u64, Arc<Installed>)>>,
    next_id: Cell<u64>,
    workers: usize,
    allow_loopback: bool,
    metrics: Arc<TapMetrics>,
    /// Client connections open now, handshakes included.
    connections: Rc<Slots>,
    /// The proxy is stopping: calls end with `UNAVAILABLE`, connections
    /// with GOAWAY.
    stopping: crate::stop::Stop,
    /// Calls open now, on every connection.
    calls: Rc<Cell<usize>>,
}

impl TapServer {
    pub(crate) fn new(
        publisher: Publisher<TapSet>,
        workers: usize,
        (allow_loopback, svc_name): (bool, Option<ringmesh_identity::Name>),
        identity: &ringmesh_discovery::channel::Subscriber<crate::identity::IdentityState>,
        metrics: Arc<TapMetrics>,
    ) -> Self {
        Self {
            publisher: RefCell::new(publisher),
            svc_name,
            identity: RefCell::new(identity.cache()),
            installed: RefCell::default(),
            next_id: Cell::new(0),
            workers,
            allow_loopback,
            metrics,
            connections: Slots::new(MAX_CONNECTIONS),
            stopping: crate::stop::Stop::default(),
            calls: Rc::default(),
        }
    }

    /// Installs `tap` on the workers; returns its id, itself and its
    /// event queues.
    fn install(&self, tap: Tap) -> (u64, Arc<Installed>, Vec<EventReceiver<TapBatch>>) {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..self.workers)
            .map(|_| events::bounded(QUEUE_BYTES))
            .unzip();
        let id = self.next_id.get() + 1;
        self.next_id.set(id);
        let installed = Arc::new(Installed::new(tap, senders, self.metrics.dropped.clone()));
        self.installed.borrow_mut().push((id, installed.clone()));
        self.publish();
        (id, installed, receivers)
    }

    /// The proxy stops: every call ends with `UNAVAILABLE` (and its
    /// connection with GOAWAY); resolves once they have, or after `limit`.
    pub(crate) async fn stop(&self, limit: Duration) {
        self.stopping.trigger();
        let deadline = std::time::Instant::now() + limit;
        while self.calls.get() > 0 && std::time::Instant::now() < deadline {
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        // (Their last frames flushed.)
        monoio::time::sleep(Duration::from_millis(20)).await;
    }

    /// Takes the tap off the workers.
    fn remove(&self, id: u64) {
        self.installed.borrow_mut().retain(|(i, _)| *i != id);
        self.publish();
        // The last tap gone: what its events held on this thread (the
        // batches forwarded, a stuck client's queue) goes back to the OS
        // (the workers give theirs back themselves, `run::trim_after_bursts`).
        if self.installed.borrow().is_empty() {
            crate::memory::collect();
        }
    }

    fn publish(&self) {
        let taps: Vec<Arc<Installed>> = self
            .installed
            .borrow()
            .iter()
            .map(|(_, t)| t.clone())
            .collect();
        self.metrics
            .installed
            .store(taps.len() as u64, Ordering::Relaxed);
        self.publisher.borrow_mut().publish(TapSet { taps });
    }
}

/// Accepts tap clients until the control core stops.
pub(crate) async fn serve(listener: TcpListener, server: Rc<TapServer>) {
    loop {
        let (s, peer) = match listener.accept().await {
            Ok((s, peer)) => (s, crate::listen::canonical(peer)),
            Err(e) => {
                tracing::debug!(error = %e, "tap accept failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(held) = server.connections.admit_from(peer.ip()) else {
            tracing::debug!(%peer, "tap client refused: {MAX_CONNECTIONS} connections all have calls");
            continue;
        };
        let _ = s.set_nodelay(true);
        if server.allow_loopback && peer.ip().is_loopback() {
            let server = server.clone();
            monoio::spawn(async move {
                held.run(connection(s, peer, server, &held)).await;
            });
            continue;
        }
        let Some(name) = server.svc_name.clone() else {
            tracing::debug!(%peer, "tap client refused: only loopback clients are allowed (RINGMESH_TAP_ALLOW_LOOPBACK)");
            continue;
        };
        let config = {
            let mut cache = server.identity.borrow_mut();
            cache.refresh();
            cache.get().0.as_ref().map(|c| c.server_h2.clone())
        };
        let Some(config) = config else {
            tracing::debug!(%peer, "tap client refused: this proxy has no certificate yet");
            continue;
        };
        let server = server.clone();
        monoio::spawn(async move {
            let served = async {
                let accept = crate::transport::Transport::tls_accept(s, config, &[]);
                let t = match monoio::time::timeout(REQUEST_TIMEOUT, accept).await {
                    Ok(Ok(t)) => t,
                    _ => {
                        tracing::debug!(%peer, "tap client's TLS handshake failed");
                        return;
                    }
                };
                let proven = matches!(
                    t.tls(),
                    ringmesh_admin::telemetry::TlsStatus::Accepted { client_id: Some(id) }
                        if **id == *name.as_str()
                );
                if !proven {
                    tracing::info!(%peer, tls = ?t.tls(), expected = %name, "tap client refused: it did not prove the tap service's identity");
                    return;
                }
                connection(t, peer, server, &held).await;
            };
            held.run(served).await;
        });
    }
}

/// One client connection: its streams, each served by a task of its own
/// while this one drives the connection.
async fn connection<I>(s: I, peer: SocketAddr, server: Rc<TapServer>, held: &Held)
where
    I: monoio::io::AsyncReadRent + monoio::io::AsyncWriteRent + Unpin + 'static,
{
    // Read through the HTTP/2 attack defences, as a worker's clients are
    // (a tap client's floods would otherwise pin the control core).
    let s = crate::h2guarded::GuardedIo::client(s, peer, None);
    let mut builder = server::Builder::new();
    builder
        .max_concurrent_streams(16)
        .max_header_list_size(16 * 1024)
        .max_local_error_reset_streams(Some(64));
    let mut conn =
        match monoio::time::timeout(REQUEST_TIMEOUT, builder.handshake::<_, Bytes>(s)).await {
            Ok(Ok(c)) => c,
            _ => {
                tracing::debug!(%peer, "tap client's HTTP/2 handshake failed");
                return;
            }
        };
    // Calls in progress on this connection.
    let calls = Rc::new(Cell::new(0usize));
    let mut stopping = false;
    loop {
        // With a call open it is not closed for room (the idle timer
        // brings this back round when calls end).
        if calls.get() == 0 {
            held.idle();
        } else {
            held.busy();
        }
        let idle = monoio::time::sleep(IDLE_TIMEOUT);
        let next = monoio::select! {
            next = conn.accept() => next,
            _ = idle => {
                if calls.get() == 0 {
                    tracing::debug!(%peer, "tap connection idle: closed");
                    return;
                }
                continue;
            }
            _ = server.stopping.wait(), if !stopping => {
                // GOAWAY; the calls end themselves (`UNAVAILABLE`).
                conn.graceful_shutdown();
                stopping = true;
                continue;
            }
        };
        match next {
            Some(Ok((req, respond))) => {
                let call = OpenConnection::new(&calls);
                let all = OpenConnection::new(&server.calls);
                let server = server.clone();
                monoio::spawn(async move {
                    observe(req, respond, server).await;
                    drop((call, all));
                });
            }
            Some(Err(e)) => {
                tracing::debug!(%peer, error = %e, "tap connection ended with an error");
                return;
            }
            None => return,
        }
    }
}

/// Counts one open call while it lives.
struct OpenConnection(Rc<Cell<usize>>);

impl OpenConnection {
    fn new(count: &Rc<Cell<usize>>) -> Self {
        count.set(count.get() + 1);
        Self(count.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// gRPC status codes used here.
mod code {
    pub(super) const OK: u32 = 0;
    pub(super) const INVALID_ARGUMENT: u32 = 3;
    pub(super) const RESOURCE_EXHAUSTED: u32 = 8;
    pub(super) const UNIMPLEMENTED: u32 = 12;
    pub(super) const UNAVAILABLE: u32 = 14;
}

/// Answers with only a gRPC status (no message).
fn refuse(respond: &mut server::SendResponse<Bytes>, code: u32, message: &str) {
    let head = http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .header("grpc-status", code.to_string())
        .header("grpc-message", percent_encode(message))
        .body(());
    if let Ok(head) = head {
        let _ = respond.send_response(head, true);
    }
}

/// grpc-message's encoding (RFC 3986 percent-encoding of what is not
/// printable ASCII, and of `%`).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The request message: one gRPC frame, uncompressed, within the limits.
async fn read_request(mut body: RecvStream) -> Result<ObserveRequest, String> {
    let mut buf = BytesMut::new();
    let read = async {
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| format!("reading the request: {e}"))?;
            let _ = body.flow_control().release_capacity(chunk.len());
            if buf.len() + chunk.len() > MAX_REQUEST + 5 {
                return Err(format!("request larger than {MAX_REQUEST} bytes"));
            }
            buf.extend_from_slice(&chunk);
            if buf.len() >= 5 {
                let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                if len > MAX_REQUEST {
                    return Err(format!("request larger than {MAX_REQUEST} bytes"));
                }
                if buf.len() >= 5 + len {
                    break;
                }
            }
        }
        Ok(())
    };
    match monoio::time::timeout(REQUEST_TIMEOUT, read).await {
        Ok(r) => r?,
        Err(_) => return Err("no request within the timeout".into()),
    }
    if buf.len() < 5 {
        return Err("no request message".into());
    }
    if buf[0] != 0 {
        return Err("compressed requests are not supported".into());
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    let msg = buf.get(5..5 + len).ok_or("truncated request message")?;
    ObserveRequest::decode(msg).map_err(|e| format!("undecodable ObserveRequest: {e}"))
}

/// One `Observe` call.
async fn observe(
    req: http::Request<RecvStream>,
    mut respond: server::SendResponse<Bytes>,
    server: Rc<TapServer>,
) {
    if req.uri().path() != OBSERVE_PATH {
        refuse(&mut respond, code::UNIMPLEMENTED, "unknown method");
        return;
    }
    let request = match read_request(req.into_body()).await {
        Ok(r) => r,
        Err(why) => {
            refuse(&mut respond, code::INVALID_ARGUMENT, &why);
            return;
        }
    };
    let tap = match Tap::new(&request) {
        Ok(t) => t,
        Err(e) => {
            refuse(&mut respond, code::INVALID_ARGUMENT, &e.to_string());
            return;
        }
    };
    if server.installed.borrow().len() >= MAX_TAPS {
        refuse(
            &mut respond,
            code::RESOURCE_EXHAUSTED,
            &format!("at most {MAX_TAPS} taps at once"),
        );
        return;
    }
    let limit = tap.limit;
    let head = http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(());
    let Ok(head) = head else { return };
    let Ok(mut stream) = respond.send_response(head, false) else {
        return;
    };
    let (id, installed, mut queues) = server.install(tap);
    tracing::info!(id, limit, "tap installed");
    let outcome = stream_events(
        &mut stream,
        &mut queues,
        &installed,
        &server.metrics,
        &server.stopping,
    )
    .await;
    // The events still queued are freed first, so the memory given back
    // once the taps are gone (`remove`, and the workers told by it)
    // includes theirs: they were allocated by the workers, and a block
    // freed here goes back only when its worker next collects.
    drop(queues);
    server.remove(id);
    let dropped = installed.dropped();
    tracing::info!(id, dropped, ?outcome, "tap removed");
    let (status, message) = match outcome {
        Ok(()) if dropped > 0 => (
            code::OK,
            Some(format!(
                "{dropped} events dropped: the client did not keep up"
            )),
        ),
        Ok(()) => (code::OK, None),
        Err(CallEnd::Stopping) => (code::UNAVAILABLE, Some("the proxy is shutting down".into())),
        Err(CallEnd::Gone) => return,
    };
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from(status));
    if let Some(v) = message.and_then(|m| http::HeaderValue::from_str(&m).ok()) {
        trailers.insert("grpc-message", v);
    }
    let _ = stream.send_trailers(trailers);
}

/// How often a tap whose events were dropped checks whether its last
/// request has ended (no event may come to say so).
const END_CHECK: Duration = Duration::from_millis(100);

/// What the event loop of a call waits for.
enum Wake {
    Events,
    Gone,
    Tick,
    Stopping,
}

/// Why a call ended before its limit.
#[derive(Debug)]
enum CallEnd {
    /// The client went away.
    Gone,
    /// The proxy is stopping.
    Stopping,
}

/// Most bytes of events taken from the queues before they are written
/// (what a call holds while its client's window is shut, at most this and
/// one batch).
const WRITE_BYTES: usize = 64 * 1024;

/// Writes the tap's events until its `limit` requests have ended and
/// their events are written (`Ok`) or the client is gone (`Err`).
///
/// The workers encode the events and hand them over in batches (`tap.rs`),
/// so this only forwards bytes: every batch waiting is taken at once (up
/// to [`WRITE_BYTES`]) and written as the client's flow control allows.
async fn stream_events(
    stream: &mut SendStream<Bytes>,
    queues: &mut [EventReceiver<TapBatch>],
    tap: &Installed,
    metrics: &TapMetrics,
    stopping: &crate::stop::Stop,
) -> Result<(), CallEnd> {
    let mut taken = Taken::default();
    loop {
        if tap.finished() >= tap.tap.limit && queues.iter().all(|q| q.is_empty()) {
            return Ok(());
        }
        // Wait for events from any worker, the client gone, or a tick to
        // look at the count again.
        let tick = monoio::time::sleep(END_CHECK);
        let mut tick = std::pin::pin!(tick);
        let mut stop = std::pin::pin!(stopping.wait());
        let wake = poll_fn(|cx| {
            if stream.poll_reset(cx).is_ready() {
                return Poll::Ready(Wake::Gone);
            }
            if taken.take(queues, cx) {
                return Poll::Ready(Wake::Events);
            }
            // (Once what the workers handed over is written.)
            if stop.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Stopping);
            }
            if tick.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Tick);
            }
            Poll::Pending
        })
        .await;
        match wake {
            Wake::Events => {}
            Wake::Gone => return Err(CallEnd::Gone),
            Wake::Stopping => return Err(CallEnd::Stopping),
            Wake::Tick => continue,
        }
        for b in taken.batches.drain(..) {
            let events = u64::from(b.events);
            send_data(stream, Bytes::from(b.bytes))
                .await
                .map_err(|_| CallEnd::Gone)?;
            metrics.sent.fetch_add(events, Ordering::Relaxed);
        }
        taken.bytes = 0;
    }
}

/// Batches taken from the workers' queues, not yet written.
#[derive(Default)]
struct Taken {
    batches: Vec<TapBatch>,
    bytes: usize,
    /// The queue looked at first next time (round robin).
    start: usize,
}

impl Taken {
    /// Takes batches from every worker's queue in turn until all are empty
    /// or [`WRITE_BYTES`] are taken: whether any came. A queue found empty
    /// wakes `cx` when a batch arrives.
    fn take(&mut self, queues: &mut [EventReceiver<TapBatch>], cx: &mut Context<'_>) -> bool {
        let n = queues.len();
        loop {
            let mut any = false;
            for i in 0..n {
                let q = &mut queues[(self.start + i) % n];
                if let Poll::Ready(Some(b)) = q.poll_recv(cx) {
                    any = true;
                    self.bytes += b.bytes.len();
                    self.batches.push(b);
                    if self.bytes >= WRITE_BYTES {
                        self.start = (self.start + i + 1) % n;
                        return true;
                    }
                }
            }
            if !any {
                return !self.batches.is_empty();
            }
        }
    }
}

/// Bytes of the call's body, as the client's flow control allows.
async fn send_data(stream: &mut SendStream<Bytes>, mut data: Bytes) -> Result<(), &'static str> {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let cap = match poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            _ => return Err("the client went away"),
        };
        if cap == 0 {
            continue;
        }
        let part = data.split_to(cap.min(data.len()));
        stream
            .send_data(part, false)
            .map_err(|_| "the client went away")?;
    }
    Ok(())
}
