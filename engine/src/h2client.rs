//! The HTTP/2 client side: opening a stream on a pooled (or new) upstream
//! connection, sending a body with flow control, and the connection's byte
//! metering.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;
use http::{HeaderMap, Request};
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::BufResult;
use monoio_http::h2::{client, server, Reason, RecvStream, SendStream};
use ringmesh_admin::telemetry::{ConnMeter, HttpKey};
use ringmesh_balancer::OpenGuard;

use crate::config::ConnectConfig;
use crate::connect::{self, Endpoint, Session};
use crate::error::ProxyError;
use crate::h2guarded::GuardedIo;
use crate::observe::Observer;
use crate::retry::Attempts;
use crate::route::{failover, Dst};
use crate::worker::Worker;

/// Streams the proxy reset on a connection to an upstream whose late
/// frames are still recognised and ignored (the library's default is 10,
/// `h2`'s 50). A frame on a reset stream already forgotten is answered
/// STREAM_CLOSED and counted against the connection's MadeYouReset budget
/// (1024) as the peer's error, though the peer could not know: a client
/// cancelling many streams at once, each with its response's data in
/// flight, made the proxy's own pooled upstream connection count ~1000 of
/// them and close itself with `ENHANCE_YOUR_CALM`, failing every other
/// request on it. (~290 bytes each; upstream connections are few.)
const UPSTREAM_RESET_STREAMS_KEPT: usize = 512;

/// Largest header list accepted from either side (RFC 9113 §6.5.2).
pub(crate) const MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;

/// A socket whose reads and writes are counted by a [`ConnMeter`].
pub(crate) struct MeteredIo<I> {
    pub(crate) io: I,
    pub(crate) meter: ConnMeter,
}

impl<I> MeteredIo<I> {
    fn count_read(&self, res: &std::io::Result<usize>) {
        match res {
            Ok(n) => self.meter.read(*n),
            // A TLS peer that closed without close_notify: HTTP/2 frames
            // delimit themselves, so nothing was cut short that the
            // session would not see; a clean close, as linkerd2-proxy
            // counts it (proxies close idle pooled connections so).
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            Err(e) => self.meter.failed(e),
        }
    }
}

impl<I: AsyncReadRent> AsyncReadRent for MeteredIo<I> {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        let (res, buf) = self.io.read(buf).await;
        self.count_read(&res);
        (res, buf)
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        let (res, buf) = self.io.readv(buf).await;
        self.count_read(&res);
        (res, buf)
    }
}

impl<I: AsyncWriteRent> AsyncWriteRent for MeteredIo<I> {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let (res, buf) = self.io.write(buf).await;
        match &res {
            Ok(n) => self.meter.wrote(*n),
            Err(e) => self.meter.failed(e),
        }
        (res, buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let (res, buf) = self.io.writev(buf).await;
        match &res {
            Ok(n) => self.meter.wrote(*n),
            Err(e) => self.meter.failed(e),
        }
        (res, buf)
    }

    fn flush(&mut self) -> impl std::future::Future<Output = std::io::Result<()>> {
        self.io.flush()
    }

    fn shutdown(&mut self) -> impl std::future::Future<Output = std::io::Result<()>> {
        self.io.shutdown()
    }
}

/// A stream opened on an upstream connection.
pub(crate) struct Opened {
    pub(crate) response: client::ResponseFuture,
    pub(crate) body: SendStream<Bytes>,
    pub(crate) addr: SocketAddr,
    /// In flight on its endpoint (for the balancer) while held.
    pub(crate) guard: Option<OpenGuard>,
    /// The connection's id in the pool (to retire it).
    pub(crate) id: u64,
}

/// Opens a stream for `parts` on a pooled (or new) connection to an
/// endpoint of `dst`, not one that answered before (`attempts`). A
/// connection the endpoint is closing (GOAWAY) takes no new stream: it is
/// retired and another is tried, as `retry` allows (every attempt counts
/// in `attempts`, shared with the caller's retries). `client`: the HTTP/2 client stream the
/// request came on; if it is reset by the time the request would go, the
/// request does not go ([`Opening::Abandoned`]).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn open_stream(
    w: &Rc<Worker>,
    obs: &mut Observer<'_>,
    dst: &Dst,
    dial: ConnectConfig,
    parts: &http::request::Parts,
    end: bool,
    attempts: &mut Attempts,
    mut client: Option<&mut server::SendResponse<Bytes>>,
) -> Result<Opening, ProxyError> {
    loop {
        attempts.count_try();
        let (send, addr, guard, id) = match checkout(
            w,
            obs.key(),
            dst,
            dial,
            attempts.avoid(),
            obs.route().require_id.as_ref(),
        )
        .await
        {
            Ok(c) => c,
            Err(e) => {
                obs.failed_at(&e);
                return Err(e);
            }
        };
        obs.endpoint(addr);
        let mut head = request_head(parts);
        if let Some(a) = obs.authority_override(addr) {
            with_authority(&mut head, a);
        }
        if obs.route().l5d_headers {
            for name in crate::l5d_headers::NAMES {
                head.headers_mut().remove(*name);
            }
        }
        if obs.route().dst_override {
            head.headers_mut().remove(crate::l5d_headers::DST_OVERRIDE);
        }
        if obs.route().require_id.is_some() {
            head.headers_mut().remove(crate::l5d_headers::REQUIRE_ID);
        }
        let sent = match send.ready().await {
            Ok(mut s) => {
                // Checked with nothing awaited before the request is
                // queued: a stream reset meanwhile (by the client, or by
                // the library for the client's error — MadeYouReset) costs
                // the upstream nothing.
                if let Some(reason) = client.as_deref_mut().and_then(reset_already) {
                    return Ok(Opening::Abandoned(reason));
                }
                s.send_request(head, end)
            }
            Err(e) => Err(e),
        };
        match sent {
            Ok((response, body)) => {
                return Ok(Opening::Opened(Opened {
                    response,
                    body,
                    addr,
                    guard,
                    id,
                }))
            }
            Err(e) if attempts.retry_unprocessed(false) && unprocessed(&e) => {
                w.pools.h2.retire(addr, id)
            }
            Err(e) => return Err(ProxyError::upstream(format!("upstream: {e}"))),
        }
    }
}

/// What [`open_stream`] did.
pub(crate) enum Opening {
    Opened(Opened),
    /// The client's stream was reset before the request went upstream.
    Abandoned(Reason),
}

/// The reason `respond`'s stream was reset, if it was: asked without
/// waiting (the stream's waker is not ours to keep).
pub(crate) fn reset_already(respond: &mut server::SendResponse<Bytes>) -> Option<Reason> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match respond.poll_reset(&mut cx) {
        std::task::Poll::Ready(Ok(reason)) => Some(reason),
        std::task::Poll::Ready(Err(e)) => Some(e.reason().unwrap_or(Reason::CANCEL)),
        std::task::Poll::Pending => None,
    }
}

/// A new head for each attempt (the body is never replayed).
pub(crate) fn request_head(parts: &http::request::Parts) -> Request<()> {
    let mut req = Request::new(());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    if parts.uri.authority().is_none() && parts.method != http::Method::CONNECT {
        // A request without `:authority` (RFC 9113 §8.3.1 lets a client
        // leave it out) goes on without one, as linkerd2-proxy forwards
        // it: the HTTP/2 library sends a URI with no authority (and
        // `:scheme` http) only for a request it is told came from HTTP/1.
        *req.version_mut() = http::Version::HTTP_11;
    }
    *req.headers_mut() = parts.headers.clone();
    req
}

/// Gives `req` the authority `a` (an endpoint's authority override):
/// `:authority`, and `Host` when it has one. An authority that does not
/// parse (discovery checked it) leaves the request as it was.
pub(crate) fn with_authority(req: &mut Request<()>, a: &str) {
    let Ok(authority) = http::uri::Authority::try_from(a) else {
        return;
    };
    let mut uri = req.uri().clone().into_parts();
    uri.authority = Some(authority);
    if uri.scheme.is_none() {
        uri.scheme = Some(http::uri::Scheme::HTTP);
    }
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(u) = http::Uri::from_parts(uri) {
        *req.uri_mut() = u;
    }
    if req.headers().contains_key(http::header::HOST) {
        if let Ok(v) = http::HeaderValue::from_str(a) {
            req.headers_mut().insert(http::header::HOST, v);
        }
    }
}

/// The upstream did not process the stream: GOAWAY'd past its last stream
/// id, or refused (RFC 9113 §8.7). Only the upstream can say so: a stream
/// the library itself reset with REFUSED_STREAM (a response head past the
/// header list limit) or cut off with a GOAWAY of its own was processed
/// upstream, and going again would run it again.
pub(crate) fn unprocessed(e: &monoio_http::h2::Error) -> bool {
    e.is_remote() && (e.is_go_away() || e.reason() == Some(Reason::REFUSED_STREAM))
}

/// `work`'s output, unless `to`'s stream is reset first (or its connection
/// lost): then the reset's reason, `work` dropped. `work` is polled first,
/// so the stream's reset is looked at only while `work` waits.
pub(crate) async fn unless_reset<T>(
    to: &mut SendStream<Bytes>,
    work: impl std::future::Future<Output = T>,
) -> Result<T, Reason> {
    monoio::select! {
        biased;
        out = work => Ok(out),
        reset = std::future::poll_fn(|cx| to.poll_reset(cx)) => Err(reset.unwrap_or(Reason::CANCEL)),
    }
}

/// Sends `chunk` as the window allows. `charge`: to a client, a wait for
/// its window counts as a stall against the worker's budget
/// ([`crate::stall`]).
pub(crate) async fn send_all(
    to: &mut SendStream<Bytes>,
    mut chunk: Bytes,
    last: bool,
    mut charge: Option<crate::stall::Charge<'_>>,
) -> Result<(), Reason> {
    if chunk.is_empty() {
        return to
            .send_data(chunk, last)
            .map_err(|e| e.reason().unwrap_or(Reason::CANCEL));
    }
    while !chunk.is_empty() {
        to.reserve_capacity(chunk.len());
        let cap = crate::stall::capacity(to, chunk.len(), charge.as_mut()).await?;
        if cap == 0 {
            continue;
        }
        let part = chunk.split_to(cap.min(chunk.len()));
        to.send_data(part, last && chunk.is_empty())
            .map_err(|e| e.reason().unwrap_or(Reason::CANCEL))?;
    }
    Ok(())
}

/// A body kept whole: its data and trailers.
pub(crate) type Kept = (Bytes, Option<HeaderMap>);

/// Reads a whole body of `len` declared bytes (the h2 layer holds the
/// client to its `content-length`).
pub(crate) async fn read_whole(from: &mut RecvStream, len: u64) -> Result<Kept, Reason> {
    let mut data = bytes::BytesMut::with_capacity(len as usize);
    while let Some(chunk) = from.data().await {
        let chunk = chunk.map_err(|e| e.reason().unwrap_or(Reason::CANCEL))?;
        let _ = from.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = from
        .trailers()
        .await
        .map_err(|e| e.reason().unwrap_or(Reason::CANCEL))?;
    Ok((data.freeze(), trailers))
}

/// Reads a request body whole, so the request can go again, when it is
/// `idempotent` (the method, or the route retries any), to a service,
/// with a declared length of at most `limit` and no `Expect: 100-continue`
/// (the client would wait for the 100 before sending it); `body` is then
/// taken. Otherwise it is left to stream.
pub(crate) async fn keep_body(
    target: &Dst,
    parts: &http::request::Parts,
    body: &mut Option<RecvStream>,
    idempotent: bool,
    limit: u64,
) -> Result<Option<Kept>, Reason> {
    // (Cheapest first: most requests have no body.)
    let Some(b) = body.as_mut() else {
        return Ok(None);
    };
    if !idempotent
        || !matches!(target, Dst::Service(..))
        || parts.headers.contains_key(http::header::EXPECT)
    {
        return Ok(None);
    }
    match declared_length(&parts.headers) {
        Some(n) if n <= limit => {
            let kept = read_whole(b, n).await?;
            *body = None;
            Ok(Some(kept))
        }
        _ => Ok(None),
    }
}

/// Sends a kept request body (one more time), and its trailers.
pub(crate) async fn send_kept(data: Bytes, trailers: Option<HeaderMap>, mut to: SendStream<Bytes>) {
    let last = trailers.is_none();
    if send_all(&mut to, data, last, None).await.is_err() {
        return;
    }
    if let Some(t) = trailers {
        let _ = to.send_trailers(t);
    }
}

/// A stream's upstream: a pooled HTTP/2 connection to the chosen endpoint,
/// or a new one (trying each endpoint at most once).
pub(crate) async fn checkout(
    w: &Rc<Worker>,
    key: &HttpKey,
    dst: &Dst,
    dial: ConnectConfig,
    avoid: &[SocketAddr],
    required: Option<&crate::l5d_headers::RequiredId>,
) -> Result<
    (
        client::SendRequest<Bytes>,
        SocketAddr,
        Option<OpenGuard>,
        u64,
    ),
    ProxyError,
> {
    match dst {
        Dst::Addr(addr) => {
            let ep = Endpoint::forward(*addr, &w.cfg.inbound.ips);
            w.pools.require(required, &ep)?;
            let (send, id) = connection(w, key, &ep, dial).await?;
            Ok((send, *addr, None, id))
        }
        Dst::Service(svc, balancer) => {
            let ((send, id), addr, guard) = failover(svc, balancer, avoid, |addr| async move {
                let ep = Endpoint::in_service(svc, addr);
                w.pools.require(required, &ep)?;
                connection(w, key, &ep, dial).await
            })
            .await?;
            Ok((send, addr, Some(guard), id))
        }
    }
}

/// A pooled connection to `ep`, or a new one (connect + HTTP/2
/// handshake, its connection task spawned on this worker).
pub(crate) async fn connection(
    w: &Rc<Worker>,
    key: &HttpKey,
    ep: &Endpoint,
    dial: ConnectConfig,
) -> Result<(client::SendRequest<Bytes>, u64), ProxyError> {
    match w.pools.h2.take(ep) {
        Some(taken) => Ok(taken),
        // Boxed: a stream's future is moved whole per request, so a cold
        // path's room (connecting) is not carried in it.
        None => Box::pin(connect_or_wait(w, key, ep, dial)).await,
    }
}

/// A new connection to `ep`, or a share of one being made.
async fn connect_or_wait(
    w: &Rc<Worker>,
    key: &HttpKey,
    ep: &Endpoint,
    dial: ConnectConfig,
) -> Result<(client::SendRequest<Bytes>, u64), ProxyError> {
    loop {
        if let Some(taken) = w.pools.h2.take(ep) {
            return Ok(taken);
        }
        let wait = {
            let mut connecting = w.pools.h2.connecting.borrow_mut();
            match connecting.get_mut(ep) {
                Some(waiters) => {
                    let (tx, rx) = oneshot::channel();
                    waiters.push(tx);
                    Some(rx)
                }
                None => {
                    connecting.insert(ep.clone(), Vec::new());
                    None
                }
            }
        };
        let Some(rx) = wait else { break };
        // Someone else is connecting: share their connection or failure.
        match rx.await {
            Ok(Err(e)) => return Err(e),
            Ok(Ok(())) | Err(_) => continue,
        }
    }
    let mut turn = ConnectingTurn {
        pool: &w.pools.h2,
        ep,
        // Dropped half-way (its stream's client left): the streams that
        // waited try for themselves (they find no connection, and one of
        // them makes it).
        outcome: Ok(()),
    };
    let res = new_connection(w, key, ep, dial).await;
    // The streams that shared the attempt fail as it did (its kind: a
    // timeout, the proxy out of descriptors, ...).
    turn.outcome = res.as_ref().map(|_| ()).map_err(ProxyError::clone);
    res
}

/// The stream making a new connection: when it finishes (or is dropped
/// half-way), the streams waiting on it are told and the slot is freed.
pub(crate) struct ConnectingTurn<'a> {
    pool: &'a crate::h2pool::Pool,
    ep: &'a Endpoint,
    outcome: Result<(), ProxyError>,
}

impl Drop for ConnectingTurn<'_> {
    fn drop(&mut self) {
        let waiters = self.pool.connecting.borrow_mut().remove(self.ep);
        for tx in waiters.into_iter().flatten() {
            let _ = tx.send(self.outcome.clone());
        }
    }
}

/// Connects to `ep` (TLS when it has an identity), does the HTTP/2
/// handshake, spawns the connection's task on this worker and pools it.
pub(crate) async fn new_connection(
    w: &Rc<Worker>,
    key: &HttpKey,
    ep: &Endpoint,
    dial: ConnectConfig,
) -> Result<(client::SendRequest<Bytes>, u64), ProxyError> {
    let addr = ep.addr;
    let tls = w.pools.tls();
    let conn = connect::open(
        ep,
        &w.routes.own_listeners,
        tls.as_deref(),
        Session::Http2,
        dial,
    )
    .await?;
    let meter = connect::upstream_meter(&w.telemetry.tcp, key, ep, &conn);
    let io = GuardedIo::upstream(MeteredIo { io: conn, meter }, addr, Some(w.clone()));
    let mut builder = client::Builder::new();
    builder
        .initial_window_size(w.cfg.http2.stream_window)
        // Bounds what the upstream sends for streams not yet passed on. A
        // response whose client stops reading stops holding it
        // (`crate::stall`), so stalled streams cannot stop the others.
        .initial_connection_window_size(w.cfg.http2.connection_window)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        // One stream until the server's SETTINGS says how many it takes:
        // a burst sent at once on a new connection went past a small
        // limit, and the server refused the rest (RFC 9113 §5.1.2); those
        // whose bodies had gone could not go again.
        .initial_max_send_streams(1)
        .max_concurrent_reset_streams(UPSTREAM_RESET_STREAMS_KEPT)
        .enable_push(false);
    let params = ep.h2.as_deref();
    if let Some(p) = params {
        // The endpoint's own settings (the Destination API's), validated
        // when read (`destination.rs`).
        if let Some(n) = p.stream_window {
            builder.initial_window_size(n);
        }
        if let Some(n) = p.max_frame_size {
            builder.max_frame_size(n);
        }
        if let Some(n) = p.max_concurrent_reset_streams {
            builder.max_concurrent_reset_streams(n);
        }
        if let Some(n) = p.max_send_buf_size {
            builder.max_send_buffer_size(n);
        }
    }
    let (send, mut conn) = builder
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| ProxyError::connect(&std::io::Error::other(e.to_string())))?;
    let keep_alive = params
        .and_then(|p| p.keep_alive)
        .and_then(|k| Some((k, conn.ping_pong()?, send.clone())));
    let closed = Rc::new(Cell::new(false));
    let done = closed.clone();
    let (drain, removed) = oneshot::channel();
    let id = w.pools.h2.put(ep.clone(), send.clone(), closed, drain);
    let (pool_w, idle_send) = (w.clone(), send.clone());
    monoio::spawn(async move {
        let run = async {
            match keep_alive {
                None => conn.await,
                Some((k, pings, send)) => {
                    let active = move || k.while_idle || send.num_streams_in_use() > 0;
                    monoio::select! {
                        ended = &mut conn => ended,
                        _ = unanswered_ping(pings, k.interval, k.timeout, active) => {
                            tracing::info!(upstream = %addr, "upstream did not answer a keep-alive PING in time; closing");
                            Ok(())
                        }
                    }
                }
            }
        };
        let ended = monoio::select! {
            ended = run => ended,
            () = idle_for(&idle_send, IDLE_TIMEOUT) => {
                tracing::debug!(upstream = %addr, "upstream HTTP/2 connection idle; closing");
                Ok(())
            }
            () = drained(&idle_send, removed) => {
                tracing::debug!(upstream = %addr, "upstream HTTP/2 connection's endpoint removed; closing");
                Ok(())
            }
        };
        if let Err(e) = ended {
            tracing::debug!(upstream = %addr, error = %e, "upstream HTTP/2 connection ended");
        }
        // (Dropping the connection fails the streams still on it.)
        done.set(true);
        pool_w.pools.h2.retire(addr, id);
    });
    Ok((send, id))
}

/// An upstream HTTP/2 connection with no stream for this long is closed
/// (linkerd2-proxy drops an outbound target's endpoint clients, and their
/// connections, after its 5 s discovery idle timeout): a burst's extra
/// connections do not stay open for ever (servers such as Go's never
/// close idle ones), nor do connections to endpoints no longer used.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Resolves once `send`'s connection has had no stream open for `limit`
/// (checked every quarter of it). (Streams reset and awaiting their reset's
/// expiry do not count: an idle connection never expires them.)
async fn idle_for(send: &client::SendRequest<Bytes>, limit: Duration) {
    let mut idle_since = Instant::now();
    loop {
        monoio::time::sleep(limit / 4).await;
        let now = Instant::now();
        if send.has_open_streams() {
            idle_since = now;
        } else if now.duration_since(idle_since) >= limit {
            return;
        }
    }
}

/// Resolves once the pool said `send`'s endpoint was removed and no stream
/// is open on it (checked every [`DRAIN_CHECK`] from then on); never if
/// the pool let go of the connection otherwise.
async fn drained(send: &client::SendRequest<Bytes>, removed: oneshot::Receiver<()>) {
    if removed.await.is_err() {
        return std::future::pending().await;
    }
    while send.has_open_streams() {
        monoio::time::sleep(DRAIN_CHECK).await;
    }
}

/// How soon after its last stream a removed endpoint's connection closes.
const DRAIN_CHECK: Duration = Duration::from_millis(250);

/// PINGs the peer every `interval` while `active` says so; resolves when a
/// PING is not answered within `timeout` (the peer is gone). Never
/// resolves once the connection has ended (its owner sees that).
pub(crate) async fn unanswered_ping(
    mut pings: monoio_http::h2::PingPong,
    interval: Duration,
    timeout: Duration,
    active: impl Fn() -> bool,
) {
    loop {
        monoio::time::sleep(interval).await;
        if !active() {
            continue;
        }
        match monoio::time::timeout(timeout, pings.ping(monoio_http::h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => std::future::pending().await,
            Err(_) => return,
        }
    }
}

/// Looked up per message, parsed once (a `&str` key is parsed into a
/// name on every lookup).
const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// The gRPC status in trailers (or trailers-only response headers), as
/// [`crate::error::grpc_code`] reads it.
pub(crate) fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    crate::error::grpc_code(headers.get(GRPC_STATUS)?.as_bytes())
}

/// The `content-length` a request or response declares.
pub(crate) fn declared_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}
