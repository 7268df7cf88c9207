//! Tap's gRPC server (`io.linkerd.proxy.tap.Tap/Observe`) on the control
//! core: HTTP/2 (monoio-http) on `LINKERD2_PROXY_CONTROL_LISTEN_ADDR`.
//!
//! Each `Observe` call is checked and compiled (`tap.rs`); a bad one gets
//! `INVALID_ARGUMENT` at once. A good one is installed: published to the
//! workers (the snapshot channel), with one bounded queue per worker for
//! its events. The call's task turns events into `TapEvent`s and writes
//! them as the client's flow control allows; while the client does not
//! read, the workers' queues fill and further events are dropped and
//! counted (never a request slowed). The call ends cleanly once `limit`
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
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use linkerd2_proxy_api::http_types::{HttpMethod, Scheme};
use linkerd2_proxy_api::net::TcpAddress;
use linkerd2_proxy_api::tap::tap_event::{self, http as th};
use linkerd2_proxy_api::tap::{eos, Eos, ObserveRequest, TapEvent};
use monoio::net::TcpListener;
use monoio_http::h2::{server, RecvStream, SendStream};
use prost::Message as _;
use ringmesh_discovery::channel::Publisher;
use ringmesh_discovery::events::{self, EventReceiver};

use crate::tap::{Installed, StreamId, Tap, TapEos, TapMsg, TapSet, QUEUE_CAPACITY};

const OBSERVE_PATH: &str = "/io.linkerd.proxy.tap.Tap/Observe";
/// Largest `ObserveRequest` read.
const MAX_REQUEST: usize = 64 * 1024;
/// A client must send its request within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Taps at most at once (each costs the workers a match per request).
const MAX_TAPS: usize = 100;
/// Client connections at most at once (handshakes included); more are
/// closed as they come.
const MAX_CONNECTIONS: usize = 64;
/// A connection with no call for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
const _: () = assert!(MAX_TAPS <= crate::tap::MAX_MATCHED);

/// Tap's counters, rendered with the admin metrics.
#[derive(Default)]
pub(crate) struct TapMetrics {
    /// Taps installed on the workers now.
    pub(crate) installed: AtomicU64,
    /// Events dropped because a tap's client did not keep up.
    pub(crate) dropped: AtomicU64,
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
    connections: Rc<Cell<usize>>,
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
            connections: Rc::default(),
        }
    }

    /// Installs `tap` on the workers; returns its id, itself and its
    /// event queues.
    fn install(&self, tap: Tap) -> (u64, Arc<Installed>, Vec<EventReceiver<TapMsg>>) {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..self.workers)
            .map(|_| events::bounded(QUEUE_CAPACITY))
            .unzip();
        let id = self.next_id.get() + 1;
        self.next_id.set(id);
        let installed = Arc::new(Installed::new(tap, senders));
        self.installed.borrow_mut().push((id, installed.clone()));
        self.publish();
        (id, installed, receivers)
    }

    /// Takes the tap off the workers.
    fn remove(&self, id: u64) {
        self.installed.borrow_mut().retain(|(i, _)| *i != id);
        self.publish();
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
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "tap accept failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if server.connections.get() >= MAX_CONNECTIONS {
            tracing::debug!(%peer, "tap client refused: {MAX_CONNECTIONS} connections are open");
            continue;
        }
        let _ = s.set_nodelay(true);
        let open = OpenConnection::new(&server.connections);
        if server.allow_loopback && peer.ip().is_loopback() {
            monoio::spawn(connection(s, peer, server.clone(), open));
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
            connection(t, peer, server, open).await;
        });
    }
}

/// One client connection: its streams, each served by a task of its own
/// while this one drives the connection.
async fn connection<I>(s: I, peer: SocketAddr, server: Rc<TapServer>, _open: OpenConnection)
where
    I: monoio::io::AsyncReadRent + monoio::io::AsyncWriteRent + Unpin + 'static,
{
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
    loop {
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
        };
        match next {
            Some(Ok((req, respond))) => {
                let call = OpenConnection::new(&calls);
                let server = server.clone();
                monoio::spawn(async move {
                    observe(req, respond, server).await;
                    drop(call);
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

/// Counts one open thing (a connection, a call) while it lives.
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
    let outcome = stream_events(&mut stream, &mut queues, &installed, &server.metrics).await;
    server.remove(id);
    let dropped: u64 = queues.iter().map(|q| q.dropped()).sum();
    server.metrics.dropped.fetch_add(dropped, Ordering::Relaxed);
    tracing::info!(id, dropped, ?outcome, "tap removed");
    if outcome.is_ok() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from(code::OK));
        if dropped > 0 {
            let msg = format!("{dropped} events dropped: the client did not keep up");
            if let Ok(v) = http::HeaderValue::from_str(&msg) {
                trailers.insert("grpc-message", v);
            }
        }
        let _ = stream.send_trailers(trailers);
    }
}

/// How often a tap whose events were dropped checks whether its last
/// request has ended (no event may come to say so).
const END_CHECK: Duration = Duration::from_millis(100);

/// What the event loop of a call waits for.
enum Wake {
    Events,
    Gone,
    Tick,
}

/// Most events written in one go (one DATA frame when the window allows).
const BATCH_BYTES: usize = 64 * 1024;
/// Most requests a call remembers between their start and their end.
const MAX_OPEN: usize = 16 * 1024;

/// Writes the tap's events until its `limit` requests have ended and
/// their events are written (`Ok`) or the client is gone (`Err`). Every
/// event waiting is taken at once and written as one batch.
///
/// While events keep coming the call gathers them for [`GATHER`] between
/// batches without asking the workers to wake it: their sends then cost
/// them no system call and the control core no wake-up. Only once the
/// queues are empty does it wait to be woken.
async fn stream_events(
    stream: &mut SendStream<Bytes>,
    queues: &mut [EventReceiver<TapMsg>],
    tap: &Installed,
    metrics: &TapMetrics,
) -> Result<(), &'static str> {
    let mut events = Events {
        open: OpenRequests::default(),
        scratch: Vec::with_capacity(256),
        start: 0,
        batch: BytesMut::new(),
    };
    loop {
        if tap.finished() >= tap.tap.limit && queues.iter().all(|q| q.is_empty()) {
            return Ok(());
        }
        // What waits now, taken without registering for a wake-up.
        let mut quiet = Context::from_waker(std::task::Waker::noop());
        let (_, mut sent, mut full) = events.take(queues, &mut quiet);
        if events.batch.is_empty() {
            // Nothing: wait for events from any worker, the client gone,
            // or a tick to look at the count again.
            let tick = monoio::time::sleep(END_CHECK);
            let mut tick = std::pin::pin!(tick);
            let wake = poll_fn(|cx| {
                if stream.poll_reset(cx).is_ready() {
                    return Poll::Ready(Wake::Gone);
                }
                let (got, n, f) = events.take(queues, cx);
                sent += n;
                full = f;
                if got {
                    return Poll::Ready(Wake::Events);
                }
                if tick.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wake::Tick);
                }
                Poll::Pending
            })
            .await;
            match wake {
                Wake::Events => {}
                Wake::Gone => return Err("the client went away"),
                Wake::Tick => continue,
            }
        }
        if !events.batch.is_empty() {
            let batch = events.batch.split().freeze();
            // (Room for the next batch at once, not grown step by step.)
            events.batch.reserve(BATCH_BYTES + 4096);
            send_data(stream, batch).await?;
            metrics.sent.fetch_add(sent, Ordering::Relaxed);
        }
        // Events gather for a moment before the queues are looked at
        // again (under load one look carries many events), unless more
        // were left waiting than one batch holds.
        if !full {
            monoio::time::sleep(GATHER).await;
        }
    }
}

/// A call's events on their way out.
struct Events {
    /// Requests seen (RequestInit sent) and not ended yet.
    open: OpenRequests,
    /// Where a request's common fields are encoded.
    scratch: Vec<u8>,
    /// The queue looked at first next time (round robin).
    start: usize,
    /// Encoded, waiting to be written.
    batch: BytesMut,
}

impl Events {
    /// Takes events from every worker's queue in turn until all are empty
    /// or the batch is full: whether any came, how many events they made,
    /// and whether the batch filled up. A queue found empty wakes `cx`
    /// when an event arrives.
    fn take(
        &mut self,
        queues: &mut [EventReceiver<TapMsg>],
        cx: &mut Context<'_>,
    ) -> (bool, u64, bool) {
        let n = queues.len();
        let (mut got, mut sent) = (false, 0);
        loop {
            let mut any = false;
            for i in 0..n {
                let q = &mut queues[(self.start + i) % n];
                if let Poll::Ready(Some(msg)) = q.poll_recv(cx) {
                    any = true;
                    got = true;
                    sent += encode(&mut self.open, &mut self.scratch, msg, &mut self.batch);
                    if self.batch.len() >= BATCH_BYTES {
                        self.start = (self.start + i + 1) % n;
                        return (got, sent, true);
                    }
                }
            }
            if !any {
                return (got, sent, false);
            }
        }
    }
}

/// How long events gather between batches (their delay, at most).
const GATHER: Duration = Duration::from_millis(5);

/// Appends `msg`'s events, as gRPC messages, to `out`; returns how many.
/// A request's addresses and metadata are encoded once, at its start, and
/// repeated in each of its events (a protobuf message is the
/// concatenation of its fields).
fn encode(open: &mut OpenRequests, scratch: &mut Vec<u8>, msg: TapMsg, out: &mut BytesMut) -> u64 {
    match msg {
        TapMsg::Request(id, mut meta) => {
            common_fields(&meta, scratch);
            put_event(out, scratch, request_init(id, &mut meta));
            // Bounded: a request whose end was dropped (its queue full)
            // would otherwise stay for the tap's whole life. Past the bound
            // a request's start is sent and nothing after it.
            if open.len() < MAX_OPEN {
                open.insert(
                    id,
                    Open {
                        meta,
                        responded: false,
                    },
                );
            }
            1
        }
        TapMsg::Response {
            id,
            status,
            since_request,
            headers,
        } => {
            // (Its RequestInit may have been dropped: nothing to say.)
            let Some(o) = open.get_mut(&id) else {
                return 0;
            };
            o.responded = true;
            let init = response_init(id, status, since_request, headers.map(|h| *h));
            common_fields(&o.meta, scratch);
            put_event(out, scratch, init);
            1
        }
        TapMsg::End {
            id,
            status,
            since_request,
            since_request_end,
            bytes,
            eos,
            trailers,
        } => {
            let Some(o) = open.remove(&id) else {
                return 0;
            };
            let mut n = 0;
            common_fields(&o.meta, scratch);
            // The proxy's own answer: no head was announced.
            if !o.responded && status != 0 {
                put_event(out, scratch, response_init(id, status, since_request, None));
                n += 1;
            }
            let end = match eos {
                TapEos::None => None,
                TapEos::Grpc(c) => Some(eos::End::GrpcStatusCode(c)),
                TapEos::Reset(c) => Some(eos::End::ResetErrorCode(c)),
            };
            let end = th::Event::ResponseEnd(th::ResponseEnd {
                id: Some(stream_id(id)),
                since_request_init: duration(since_request_end),
                since_response_init: duration(since_request_end.saturating_sub(since_request)),
                response_bytes: bytes,
                eos: end.map(|e| Eos { end: Some(e) }),
                trailers: trailers.as_deref().map(|t| pb_headers(t)),
            });
            put_event(out, scratch, end);
            n + 1
        }
    }
}

/// A request whose start was sent and whose end was not yet.
struct Open {
    /// What every event of the request repeats (encoded again for each:
    /// cheaper than keeping a copy of the encoding).
    meta: Box<crate::tap::RequestMeta>,
    /// Its ResponseInit was sent.
    responded: bool,
}

/// The requests of a call between their start and their end, by id.
type OpenRequests = HashMap<StreamId, Open, std::hash::BuildHasherDefault<IdHasher>>;

/// Hashes request ids: ours (a worker and a count), so no peer chooses
/// them and a multiply spreads them well enough.
#[derive(Default)]
struct IdHasher(u64);

impl IdHasher {
    fn add(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        bytes.iter().for_each(|b| self.add(u64::from(*b)));
    }
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
}

fn response_init(
    id: StreamId,
    status: u16,
    since_request: Duration,
    headers: Option<crate::tap::Fields>,
) -> th::Event {
    th::Event::ResponseInit(th::ResponseInit {
        id: Some(stream_id(id)),
        since_request_init: duration(since_request),
        http_status: u32::from(status),
        headers: headers.as_deref().map(pb_headers),
    })
}

/// Header fields as the proto carries them.
fn pb_headers(fields: &[(String, Vec<u8>)]) -> linkerd2_proxy_api::http_types::Headers {
    linkerd2_proxy_api::http_types::Headers {
        headers: fields
            .iter()
            .map(|(n, v)| linkerd2_proxy_api::http_types::headers::Header {
                name: n.clone(),
                value: v.clone(),
            })
            .collect(),
    }
}

/// One gRPC message: a `TapEvent` of the request's common fields and the
/// HTTP event.
fn put_event(out: &mut BytesMut, common: &[u8], ev: th::Event) {
    let http = TapEvent {
        event: Some(tap_event::Event::Http(tap_event::Http { event: Some(ev) })),
        ..TapEvent::default()
    };
    let len = common.len() + http.encoded_len();
    out.reserve(5 + len);
    out.put_u8(0);
    out.put_u32(len as u32);
    out.extend_from_slice(common);
    // (Into a `BytesMut` with room reserved: cannot fail.)
    let _ = http.encode(out);
}

fn duration(d: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(d).ok()
}

fn stream_id((base, stream): StreamId) -> th::StreamId {
    th::StreamId { base, stream }
}

/// (The request's strings are moved into the event.)
fn request_init(id: StreamId, meta: &mut crate::tap::RequestMeta) -> th::Event {
    let method = http::Method::from_bytes(meta.method.as_bytes())
        .map(HttpMethod::from)
        .ok();
    let headers = meta.headers.as_deref().map(pb_headers);
    th::Event::RequestInit(th::RequestInit {
        id: Some(stream_id(id)),
        method,
        scheme: Some(Scheme::from(meta.scheme)),
        authority: std::mem::take(&mut meta.authority),
        path: std::mem::take(&mut meta.path),
        headers,
    })
}

/// The fields every event of a request repeats, encoded as `TapEvent`
/// fields: its addresses, `source_meta` (`tls`, `client_id` for a meshed
/// inbound client), `destination_meta` (the destination's labels, `tls`
/// and `server_id` for a meshed outbound endpoint), `route_meta` and
/// `proxy_direction`. Written straight from the request's description
/// (no maps or copies of its labels: this runs for every tapped request).
fn common_fields(meta: &crate::tap::RequestMeta, out: &mut Vec<u8>) {
    use prost::encoding::{encode_key, encode_varint, message, WireType};
    out.clear();
    message::encode(1, &TcpAddress::from(meta.source), out);
    message::encode(2, &TcpAddress::from(meta.destination), out);
    let dst_tls = meta
        .server_id
        .as_deref()
        .map(|id| [("tls", "true"), ("server_id", id)]);
    let dst = meta
        .dst_labels
        .iter()
        .flat_map(|l| l.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .chain(dst_tls.into_iter().flatten());
    put_labels(out, 4, dst);
    let src_tls = meta
        .client_id
        .as_deref()
        .map(|id| [("tls", "true"), ("client_id", id)]);
    put_labels(out, 5, src_tls.into_iter().flatten());
    let direction = if meta.inbound {
        tap_event::ProxyDirection::Inbound
    } else {
        tap_event::ProxyDirection::Outbound
    };
    encode_key(6, WireType::Varint, out);
    encode_varint(direction as u64, out);
    if let Some(r) = &meta.route {
        put_labels(out, 7, [("route", &**r)].into_iter());
    }
}

/// A message of one `map<string, string> labels = 1` field (`EndpointMeta`,
/// `RouteMeta`) as field `tag`.
fn put_labels<'a>(
    out: &mut Vec<u8>,
    tag: u32,
    labels: impl Iterator<Item = (&'a str, &'a str)> + Clone,
) {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
    let string_len = |s: &str| 1 + encoded_len_varint(s.len() as u64) + s.len();
    let entry_len = |k: &str, v: &str| string_len(k) + string_len(v);
    let put_string = |out: &mut Vec<u8>, tag: u32, s: &str| {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(s.len() as u64, out);
        out.extend_from_slice(s.as_bytes());
    };
    let inner: usize = labels
        .clone()
        .map(|(k, v)| {
            let e = entry_len(k, v);
            1 + encoded_len_varint(e as u64) + e
        })
        .sum();
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(inner as u64, out);
    for (k, v) in labels {
        encode_key(1, WireType::LengthDelimited, out);
        encode_varint(entry_len(k, v) as u64, out);
        put_string(out, 1, k);
        put_string(out, 2, v);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tap::RequestMeta;
    use prost::Message;

    fn meta() -> RequestMeta {
        RequestMeta {
            source: "10.0.0.1:40000".parse().unwrap(),
            destination: "[fd00::2]:8080".parse().unwrap(),
            inbound: false,
            method: "GET".into(),
            scheme: "http",
            authority: "web.test".into(),
            path: "/a".into(),
            headers: None,
            dst_labels: Some(Arc::from(vec![
                ("service".to_string(), "web".to_string()),
                ("namespace".to_string(), "default".to_string()),
            ])),
            route: Some(Arc::from("get-a")),
            client_id: None,
            server_id: Some(Arc::from(
                "web.default.serviceaccount.identity.linkerd.cluster.local",
            )),
        }
    }

    /// The common fields, written by hand, decode as the message prost
    /// would have written.
    #[test]
    fn common_fields_decode_as_a_tap_event() {
        let m = meta();
        let mut out = Vec::new();
        common_fields(&m, &mut out);
        let ev = TapEvent::decode(&out[..]).unwrap();
        assert_eq!(ev.source, Some(TcpAddress::from(m.source)));
        assert_eq!(ev.destination, Some(TcpAddress::from(m.destination)));
        let dst = ev.destination_meta.unwrap().labels;
        assert_eq!(dst.len(), 4, "{dst:?}");
        assert_eq!(dst["service"], "web");
        assert_eq!(dst["namespace"], "default");
        assert_eq!(dst["tls"], "true");
        assert_eq!(dst["server_id"], &*m.server_id.clone().unwrap());
        assert!(ev.source_meta.unwrap().labels.is_empty());
        assert_eq!(ev.route_meta.unwrap().labels["route"], "get-a");
        assert_eq!(
            ev.proxy_direction,
            tap_event::ProxyDirection::Outbound as i32
        );

        let inbound = RequestMeta {
            inbound: true,
            dst_labels: None,
            route: None,
            client_id: Some(Arc::from("client.ns.serviceaccount")),
            server_id: None,
            ..meta()
        };
        common_fields(&inbound, &mut out);
        let ev = TapEvent::decode(&out[..]).unwrap();
        let src = ev.source_meta.unwrap().labels;
        assert_eq!(src["client_id"], "client.ns.serviceaccount");
        assert_eq!(src["tls"], "true");
        assert!(ev.destination_meta.unwrap().labels.is_empty());
        assert!(ev.route_meta.is_none());
        assert_eq!(
            ev.proxy_direction,
            tap_event::ProxyDirection::Inbound as i32
        );
    }

    /// A whole event: the common fields followed by the HTTP event decode
    /// as one `TapEvent`.
    #[test]
    fn an_event_is_the_common_fields_and_the_http_event() {
        let mut m = meta();
        let mut common = Vec::new();
        common_fields(&m, &mut common);
        let mut out = BytesMut::new();
        put_event(&mut out, &common, request_init((1, 7), &mut m));
        assert_eq!(out[0], 0);
        let len = u32::from_be_bytes(out[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, out.len() - 5);
        let ev = TapEvent::decode(&out[5..]).unwrap();
        assert_eq!(ev.destination, Some(TcpAddress::from(m.destination)));
        let Some(tap_event::Event::Http(tap_event::Http {
            event: Some(th::Event::RequestInit(init)),
        })) = ev.event
        else {
            panic!("{ev:?}")
        };
        assert_eq!(
            (init.authority.as_str(), init.path.as_str()),
            ("web.test", "/a")
        );
        assert_eq!(init.id, Some(th::StreamId { base: 1, stream: 7 }));
    }
}
