//! The HTTP/2 server side (h2c with prior knowledge, gRPC included): each
//! client stream is routed and balanced on its own and multiplexed onto
//! this worker's pooled HTTP/2 connections to the chosen endpoint
//! (`h2client`), or sent to an HTTP/1 upstream (`translate`, reached
//! through `dispatch`).
//!
//! Bodies and trailers are streamed both ways with flow control end to end:
//! a DATA frame's bytes are released to the sender (its window reopened)
//! only once the other side has accepted them, so a slow consumer slows the
//! producer and nothing is buffered beyond the two windows. A client's
//! RST_STREAM cancels the upstream stream and an upstream reset is passed
//! back; an upstream GOAWAY retires that connection for new streams while
//! its in-flight streams finish. When the worker drains, clients get a
//! GOAWAY and their open streams run to completion.

use std::cell::Cell;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;
use http::{HeaderMap, HeaderName, Request, Response};
use monoio::io::PrefixedReadIo;
use monoio_http::h2::{client, server, Reason, RecvStream, SendStream};
use ringmesh_admin::telemetry::{ConnMeter, Direction, ResponseClass, TlsStatus};
use ringmesh_balancer::OpenGuard;
use ringmesh_protocols::h2guard::GuardLimits;
use ringmesh_protocols::http1::Authority as RequestAuthority;

use crate::config::{ConnectConfig, H2Server};
use crate::dispatch::{self, Http2Path};
use crate::error::{Failure, ProxyError, GRPC_UNAVAILABLE};
use crate::h2client::{
    declared_length, grpc_status, keep_body, open_stream, send_all, send_kept, unless_reset,
    unprocessed, MeteredIo, Opening,
};
use crate::h2guarded::GuardedIo;
use crate::l5d_headers::CLIENT_ID;
use crate::observe::Observer;
use crate::retry::Attempts;
use crate::route::{resolve, split_authority, Dst, HttpDst};
use crate::route_filter::Message;
use crate::stop::Stop;
use crate::transport::Transport;
use crate::warn_limit::{warn_limited, Warning};
use crate::worker::{Routes, Worker};

/// Streams the HTTP/2 library may reset for a client's own errors (a
/// WINDOW_UPDATE overflowing a stream, a malformed request, a frame on a
/// closed stream, too many streams, ...) before the client gets GOAWAY
/// `ENHANCE_YOUR_CALM` (MadeYouReset, CVE-2025-8671): over the connection's
/// life, the `h2` crate's default.
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Streams the proxy reset on a client's connection whose late frames are
/// still recognised and ignored, as `h2`'s default (many client
/// connections; a client's late frames on streams it was told were reset
/// are its own to answer for). Upstream connections keep more
/// (`h2client`).
const CLIENT_RESET_STREAMS_KEPT: usize = 50;

/// The frame guard's limits for a listener's clients: the defaults, with
/// room for a header block as large as the side's header list limit (a
/// larger one gets 431 from the library, not the guard's GOAWAY).
fn guard_limits(side: &H2Server) -> GuardLimits {
    let mut limits = GuardLimits::default();
    // HPACK seldom makes a header list larger than its encoding; allow
    // the limit itself, in as many CONTINUATIONs as the smallest frames
    // take.
    limits.header_block_bytes = limits.header_block_bytes.max(side.max_header_list_size);
    limits.continuations_per_block = limits
        .continuations_per_block
        .max(side.max_header_list_size.div_ceil(16_384) + 1);
    limits
}

/// Serves HTTP/2 on `client` (plain or TLS); `prefix` holds what
/// detection read (the connection preface at least), already counted by
/// `meter`'s owner.
pub(crate) async fn serve(
    w: Rc<Worker>,
    client: Transport,
    prefix: Vec<u8>,
    peer: SocketAddr,
    dst: HttpDst,
    dial: ConnectConfig,
    meter: ConnMeter,
) {
    let mut dst = Rc::new(dst);
    let direction = if matches!(*dst, HttpDst::Local(..)) {
        Direction::Inbound
    } else {
        Direction::Outbound
    };
    meter.read(prefix.len());
    let tls = client.tls().clone();
    let side = w.cfg.http2.server(direction == Direction::Outbound);
    let head_since = Rc::new(Cell::new(None));
    let io = GuardedIo::client_with(
        MeteredIo {
            io: PrefixedReadIo::new(client, std::io::Cursor::new(prefix)),
            meter,
        },
        peer,
        Some(w.clone()),
        guard_limits(&side),
    )
    .with_head_watch(head_since.clone());
    // The streams answered: their clients' cancels are not rapid resets.
    let answered = Rc::new(ringmesh_protocols::h2guard::AnsweredStreams::default());
    let io = io.with_answered(answered.clone());
    let mut builder = server::Builder::new();
    builder
        .initial_window_size(side.stream_window)
        .initial_connection_window_size(side.connection_window)
        .max_concurrent_streams(side.max_concurrent_streams)
        .max_frame_size(side.max_frame_size)
        .max_header_list_size(side.max_header_list_size)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .max_concurrent_reset_streams(CLIENT_RESET_STREAMS_KEPT);
    let mut conn = match builder.handshake::<_, Bytes>(io).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "HTTP/2 handshake failed");
            return;
        }
    };
    let stop = w.stop.clone();
    let mut draining = false;
    // Streams of this connection still being proxied.
    let active = Rc::new(Streams::default());
    // Keep-alive: a client that stops answering PINGs is gone.
    let (dead_tx, mut dead) = oneshot::channel::<()>();
    if let (Some(interval), Some(pings)) = (side.keep_alive_interval, conn.ping_pong()) {
        let timeout = side.keep_alive_timeout;
        monoio::spawn(async move {
            crate::h2client::unanswered_ping(pings, interval, timeout, || true).await;
            let _ = dead_tx.send(());
        });
    }
    // One watchdog for the connection's life (it tells activity by the
    // streams started, so a stream accepted does not restart its timer).
    let idle = w.cfg.tcp.idle_timeout;
    let head = w.cfg.http.header_read_timeout;
    let mut watchdog = std::pin::pin!(overdue(&active, &head_since, idle, head));
    loop {
        let next = if draining {
            // A client that does not end the connection after our GOAWAY
            // (nor answers its PING, which the library waits for) would
            // hold the worker for the whole grace period: with no stream
            // left, the connection closes at the drain's last look, as
            // idle HTTP/1 connections do.
            monoio::select! {
                n = conn.accept() => n,
                _ = idle_at_last_look(&w.close_idle, &active) => {
                    tracing::debug!(%peer, "HTTP/2 connection idle during the drain; closing");
                    // What the last stream queued (its response's end) is
                    // still in the library's stream queues: it is written,
                    // and the connection closed, as the connection is
                    // driven on. Dropped at once, it was lost. A client
                    // that never answered the GOAWAY's PING keeps it open:
                    // it is dropped after a bound.
                    let flushed = async { while conn.accept().await.is_some() {} };
                    let _ = monoio::time::timeout(CLOSE_FLUSH, flushed).await;
                    break;
                }
            }
        } else {
            monoio::select! {
                n = conn.accept() => n,
                Ok(()) = &mut dead => {
                    tracing::info!(%peer, "HTTP/2 client did not answer a keep-alive PING in time; closing");
                    break;
                }
                why = &mut watchdog => {
                    match why {
                        Overdue::Idle => {
                            tracing::debug!(%peer, "HTTP/2 connection idle; closing");
                            conn.graceful_shutdown();
                        }
                        Overdue::Head => {
                            tracing::debug!(%peer, "HTTP/2 header block not finished within the header read timeout; closing");
                            conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                        }
                    }
                    // The GOAWAY is written as the connection is driven on
                    // (bounded: a client that never reads).
                    let flushed = async { while conn.accept().await.is_some() {} };
                    let _ = monoio::time::timeout(CLOSE_FLUSH, flushed).await;
                    break;
                }
                _ = stop.wait() => {
                    // GOAWAY: no new streams; open ones finish.
                    conn.graceful_shutdown();
                    draining = true;
                    continue;
                }
            }
        };
        match next {
            None => break,
            Some(Ok((req, respond))) => {
                // The port's server may have changed since the connection
                // was judged: each stream is judged by the current one.
                if let HttpDst::Local(addr, verdict) = &*dst {
                    if let Some(v) = w.routes.revalidated(addr.port(), verdict) {
                        dst = Rc::new(HttpDst::Local(*addr, Box::new(v)));
                    }
                }
                let (w, dst, tls) = (w.clone(), dst.clone(), tls.clone());
                let active = Active::enter(&active);
                let answered = (answered.clone(), respond.stream_id().as_u32());
                monoio::spawn(async move {
                    let side = (direction, &tls, peer);
                    proxy_stream(&w, &dst, side, req, respond, dial, answered).await;
                    drop(active);
                });
            }
            Some(Err(e)) => {
                tracing::debug!(%peer, error = %e, "HTTP/2 connection ended with an error");
                break;
            }
        }
    }
}

/// How long a connection closed at the drain's last look may take to
/// flush what it has queued.
const CLOSE_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

/// A connection's streams still being proxied, and who waits for there
/// to be none.
#[derive(Default)]
struct Streams {
    count: Cell<usize>,
    /// Streams started so far (the watchdog tells a busy connection from
    /// an idle one by it).
    started: Cell<u64>,
    none_left: Cell<Option<std::task::Waker>>,
}

impl Streams {
    /// Resolves when no stream is left (at once if none is).
    async fn none_left(&self) {
        std::future::poll_fn(|cx| {
            if self.count.get() == 0 {
                return std::task::Poll::Ready(());
            }
            self.none_left.set(Some(cx.waker().clone()));
            std::task::Poll::Pending
        })
        .await
    }
}

/// A stream counted in its connection's [`Streams`] while it lives; the
/// last one to end wakes whoever waits for none to be left.
struct Active(Rc<Streams>);

impl Active {
    fn enter(streams: &Rc<Streams>) -> Self {
        streams.count.set(streams.count.get() + 1);
        streams.started.set(streams.started.get() + 1);
        Self(streams.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        let left = self.0.count.get() - 1;
        self.0.count.set(left);
        if left == 0 {
            if let Some(w) = self.0.none_left.take() {
                w.wake();
            }
        }
    }
}

/// Why the watchdog ends a client connection.
enum Overdue {
    /// No stream, and no header block coming, for the idle timeout.
    Idle,
    /// A header block not finished within the header read timeout.
    Head,
}

/// A client connection's watchdog: resolves when it has been idle (no
/// stream started or open, no header block coming) for `idle`
/// (`RINGMESH_TCP_IDLE_TIMEOUT`, as an HTTP/1 keep-alive connection), or a
/// header block has been coming for `head` (`RINGMESH_HTTP_HEADER_READ_TIMEOUT`,
/// as an HTTP/1 head: a slowloris holds what the codec read of it). Looks
/// every `head` or quarter of `idle`, whichever is less: one timer per
/// connection every few seconds.
async fn overdue(
    active: &Streams,
    head_since: &Cell<Option<Instant>>,
    idle: Duration,
    head: Duration,
) -> Overdue {
    let tick = head.min(idle / 4).max(Duration::from_millis(50));
    let mut idle_since = Instant::now();
    let mut started = active.started.get();
    loop {
        monoio::time::sleep(tick).await;
        let now = Instant::now();
        let pending = head_since.get();
        if pending.is_some_and(|t| now >= t + head) {
            return Overdue::Head;
        }
        let seen = active.started.get();
        if active.count.get() > 0 || seen != started || pending.is_some() {
            idle_since = now;
            started = seen;
        } else if now >= idle_since + idle {
            return Overdue::Idle;
        }
    }
}

/// Resolves once the drain's last look has passed (`close_idle`) and no
/// stream of the connection is being proxied.
async fn idle_at_last_look(last_look: &Stop, active: &Streams) {
    last_look.wait().await;
    active.none_left().await;
}

/// Inbound: `l5d-client-id` names the identity the client proved with
/// mutual TLS, and nothing else (a client's own is removed).
fn set_client_id(headers: &mut http::HeaderMap, client_tls: &TlsStatus) {
    headers.remove(CLIENT_ID);
    if let TlsStatus::Accepted {
        client_id: Some(id),
    } = client_tls
    {
        if let Ok(v) = http::HeaderValue::from_str(id) {
            headers.insert(CLIENT_ID, v);
        }
    }
}

/// About what a request's head holds: its fields as HPACK counts them
/// (name, value and 32 bytes each) and its target.
fn head_size<B>(req: &Request<B>) -> usize {
    let fields: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 32)
        .sum();
    fields + req.uri().path_and_query().map_or(0, |p| p.as_str().len())
}

/// Proxies one client stream: route, pick an endpoint, forward.
async fn proxy_stream(
    w: &Rc<Worker>,
    dst: &HttpDst,
    (direction, client_tls, peer): (Direction, &TlsStatus, SocketAddr),
    req: Request<RecvStream>,
    mut respond: server::SendResponse<Bytes>,
    dial: ConnectConfig,
    answered: (Rc<ringmesh_protocols::h2guard::AnsweredStreams>, u32),
) {
    let mut obs = Observer::start(w, direction, client_tls, peer, head_size(&req));
    obs.on_answer(answered);
    let is_grpc = is_grpc(req.headers());
    let is_head = req.method() == http::Method::HEAD;
    let mut req = req;
    if direction == Direction::Inbound {
        set_client_id(req.headers_mut(), client_tls);
    }
    let outcome = forward(w, dst, &mut obs, (req, is_grpc), &mut respond, dial).await;
    match outcome {
        Ok(class) => obs.end(class),
        Err(Failure::Answer(e)) => {
            warn_limited!(w, Warning::Http2RequestFailed, error = %e, "HTTP/2 request failed");
            let informational = crate::l5d_headers::informational(
                direction == Direction::Inbound,
                client_tls,
                w.cfg.outbound.informational_headers,
            );
            send_error(&mut respond, &e, (is_grpc, is_head), informational);
            let body_len = if is_head {
                0
            } else {
                e.answer_body_len(is_grpc, informational)
            };
            obs.answered(&e, is_grpc, body_len);
        }
        Err(broken @ Failure::Broken { .. }) => {
            // The response had started: the stream can only be cut short.
            respond.send_reset(Reason::INTERNAL_ERROR);
            let (class, reason) = broken.after_response();
            tracing::debug!(reason, "HTTP/2 response cut short");
            obs.reset(Reason::INTERNAL_ERROR);
            obs.end(class);
        }
        Err(Failure::Reset(reason)) => {
            respond.send_reset(reason);
            tracing::debug!(?reason, "HTTP/2 stream reset");
            obs.reset(reason);
        }
        Err(refused @ Failure::Refused(reason)) => {
            respond.send_reset(reason);
            tracing::debug!(?reason, "HTTP/2 stream reset by its upstream");
            obs.reset(reason);
            obs.refused(refused.after_response().0);
        }
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The proxy's own answer, with the reason in `l5d-proxy-error` (and, for
/// gRPC clients, as a trailers-only status so their status says why);
/// without the reason unless `informational` (the status, or the gRPC
/// status, alone, as linkerd2-proxy); to a HEAD, without a body (RFC 9110
/// §9.3.2: DATA would be a malformed response).
fn send_error(
    respond: &mut server::SendResponse<Bytes>,
    e: &ProxyError,
    (grpc, head): (bool, bool),
    informational: bool,
) {
    let reason = e.header_value();
    let mut resp = Response::builder().status(e.status_for(grpc));
    if let Some(location) = e.location() {
        resp = resp.header(http::header::LOCATION, location);
    }
    if informational {
        resp = resp.header("l5d-proxy-error", reason.as_str());
    }
    if grpc {
        resp = resp
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::CONTENT_LENGTH, 0)
            .header("grpc-status", e.grpc_status().to_string());
        if informational {
            resp = resp.header("grpc-message", reason.as_str());
        }
    }
    let body = (!grpc && !head).then(|| {
        if informational {
            e.body()
        } else {
            String::new()
        }
    });
    if let Some(b) = &body {
        if !b.is_empty() {
            resp = resp.header(http::header::CONTENT_TYPE, "text/plain");
        }
        resp = resp.header(http::header::CONTENT_LENGTH, b.len());
    }
    let Ok(resp) = resp.body(()) else {
        return;
    };
    let body = body.filter(|b| !b.is_empty());
    if let (Ok(mut stream), Some(b)) = (respond.send_response(resp, body.is_none()), body) {
        let _ = stream.send_data(Bytes::from(b), true);
    }
}

async fn forward(
    w: &Rc<Worker>,
    dst: &HttpDst,
    obs: &mut Observer<'_>,
    (req, grpc): (Request<RecvStream>, bool),
    respond: &mut server::SendResponse<Bytes>,
    dial: ConnectConfig,
) -> Result<ResponseClass, Failure> {
    obs.access_head(&crate::route::H2Req(&req));
    if let Some(e) = obs.shed() {
        return Err(Failure::Answer(e));
    }
    let judged = crate::route::judged(dst, &crate::route::H2Req(&req));
    let dst = judged.as_ref().unwrap_or(dst);
    if let HttpDst::Local(addr, verdict) = dst {
        // (A request no route matched is counted apart: see
        // `authz::key`.)
        obs.authorized(*addr, verdict);
        if let Some(e) = verdict.rate_limited(&obs.key().tls) {
            return Err(Failure::Answer(e));
        }
    }
    let (target, policy) = route_stream(&w.routes, dst, &req).await?;
    obs.routed(&target);
    obs.set_route(policy);
    obs.request_head(&crate::route::H2Req(&req));
    // The request head, minus what HTTP/2 forbids (RFC 9113 §8.2.2).
    let (mut parts, body) = req.into_parts();
    strip_connection_headers(&mut parts.headers);
    obs.route().edit(Message::Request, &mut parts.headers);
    parts.version = http::Version::HTTP_2;
    let deadline = obs.deadline(w.cfg.http.request_timeout);
    // HTTP/1 carried by a peer proxy, or an HTTP/1-only destination: the
    // upstream hears HTTP/1.1.
    if let Http2Path::Http1 { orig_proto } = dispatch::http2(&target, &mut parts.headers) {
        // Boxed (as the cold parts below): an HTTP/2 stream's future is
        // moved whole into its task, and every awaited future into its
        // caller's, so its size is paid per request.
        return Box::pin(dispatch::h2_to_h1(
            w, obs, &target, &parts, body, respond, dial, deadline, orig_proto,
        ))
        .await;
    }
    let stream = Stream {
        parts: &parts,
        respond,
        dial,
        deadline,
        grpc,
    };
    to_h2(w, obs, &target, stream, body).await
}

/// Where a stream goes: its `:authority` (or `Host`, for a request
/// converted from HTTP/1) looked up as the listener says.
async fn route_stream(
    routes: &Routes,
    dst: &HttpDst,
    req: &Request<RecvStream>,
) -> Result<(Dst, crate::route::RoutePolicy), ProxyError> {
    let authority = req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    });
    let default_port = if req.uri().scheme_str() == Some("https") {
        443
    } else {
        80
    };
    let parsed = authority.and_then(|a| split_authority(a, default_port));
    let request_authority = parsed.map(|(host, port)| RequestAuthority {
        host,
        port,
        raw: authority.unwrap_or(""),
    });
    resolve(routes, dst, request_authority, &crate::route::H2Req(req)).await
}

/// A client stream on its way to an HTTP/2 upstream.
struct Stream<'a> {
    parts: &'a http::request::Parts,
    respond: &'a mut server::SendResponse<Bytes>,
    dial: ConnectConfig,
    /// The request timeout's end.
    deadline: Option<Instant>,
    /// The client asked for gRPC (`content-type: application/grpc`).
    grpc: bool,
}

/// An upstream stream whose response head arrived.
struct Answered {
    response: Response<RecvStream>,
    /// In flight on its endpoint (for the balancer) until the response ends.
    in_flight: Option<OpenGuard>,
    /// Set while the client's body streams upstream: stops it.
    stop_body: Option<oneshot::Sender<()>>,
    /// When its head arrived.
    head_at: Instant,
}

/// Sends the stream to an endpoint of `target` over HTTP/2, again where
/// `retry` allows, and relays the response.
async fn to_h2(
    w: &Rc<Worker>,
    obs: &mut Observer<'_>,
    target: &Dst,
    mut s: Stream<'_>,
    body: RecvStream,
) -> Result<ResponseClass, Failure> {
    let end = body.is_end_stream();
    let mut body = Some(body).filter(|_| !end);
    // A small body of an idempotent request to a service is kept, so the
    // request can go again to another endpoint (after a 502/503 or a
    // refused stream); larger or other bodies stream.
    let idempotent = s.parts.method.is_idempotent() || obs.route().retryable();
    let replay = match body {
        None => None,
        Some(_) => {
            let limit = obs.route().replay_limit();
            keep_body(target, s.parts, &mut body, idempotent, limit)
                .await
                .map_err(Failure::Reset)?
        }
    };
    // Whether the request can be sent again: nothing of it is lost.
    let repeatable = end || replay.is_some();
    let mut attempts = Attempts::new(target, idempotent, repeatable).on_route(obs.route());
    // When a response head must have come (`RINGMESH_HTTP_RESPONSE_TIMEOUT`,
    // from now: connecting and waiting for the server's stream slots
    // count), and never after the request's own deadline.
    let head_deadline = w.response_deadline(s.deadline);
    let answered = loop {
        let opening = open_stream(
            w,
            obs,
            target,
            s.dial,
            s.parts,
            end,
            &mut attempts,
            Some(&mut *s.respond),
        )
        .await?;
        let o = match opening {
            Opening::Opened(o) => o,
            Opening::Abandoned(reason) => return Err(Failure::Reset(reason)),
        };
        let (addr, id) = (o.addr, o.id);
        let sent_at = Instant::now();
        // The request body goes up on its own task, while the response
        // (head and body) comes down: bidirectional streams need both.
        let mut stop_body = None;
        if let Some((data, trailers)) = &replay {
            monoio::spawn(send_kept(data.clone(), trailers.clone(), o.body));
        } else if let Some(b) = body.take() {
            let (tx, rx) = oneshot::channel();
            stop_body = Some(tx);
            monoio::spawn(request_body(b, o.body, rx));
        }
        let in_flight = o.guard;
        // A route's per-attempt timeout, while a retry could follow.
        let (attempt_deadline, cut) = attempts.attempt_deadline(sent_at, head_deadline);
        let head = match await_head(o.response, &mut s, attempt_deadline).await {
            Err(Failure::Answer(e)) if cut && e.timed_out() => {
                let again = in_flight
                    .as_ref()
                    .filter(|_| attempts.retry_timed_out(addr, Instant::now()));
                match again {
                    Some(g) => {
                        obs.retrying(g);
                        tracing::debug!(upstream = %addr, "no response within the attempt timeout; retrying on another endpoint");
                        crate::retry::pause(&attempts, s.deadline).await?;
                        continue;
                    }
                    None => return Err(e.into()),
                }
            }
            head => head?,
        };
        match head {
            Ok(response) => {
                // The balancer learns the latency to the response head.
                let now = Instant::now();
                obs.response_head(in_flight.as_ref(), now - sent_at);
                obs.response_length(|| declared_length(response.headers()));
                // A 502/503 goes again to another endpoint where `retry`
                // allows.
                let status = response.status().as_u16();
                if let Some(g) = &in_flight {
                    let again = attempts.retry_answer(status, addr, now)
                        || grpc_status(response.headers())
                            .is_some_and(|code| attempts.retry_grpc(code, addr, now));
                    if again {
                        obs.retrying(g);
                        tracing::debug!(upstream = %addr, status, "retrying on another endpoint");
                        crate::retry::pause(&attempts, s.deadline).await?;
                        continue;
                    }
                }
                break Answered {
                    response,
                    in_flight,
                    stop_body,
                    head_at: now,
                };
            }
            // Streams above a GOAWAY's last stream id were not processed;
            // without a body (nothing consumed) the request can go again.
            Err(e) if attempts.retry_unprocessed(true) && unprocessed(&e) => {
                w.pools.h2.retire(addr, id);
            }
            // Not processed, but not to go again here (its body was
            // streamed, or the tries are spent): the client hears
            // REFUSED_STREAM, which says so (RFC 9113 §8.7), and may send it
            // again itself (gRPC clients do, transparently), where a 502
            // would be an answer. Not the endpoint's failure (a graceful
            // restart's GOAWAY).
            Err(e) if unprocessed(&e) => {
                w.pools.h2.retire(addr, id);
                tracing::debug!(upstream = %addr, error = %e, "the upstream did not process the stream; refused to the client");
                return Err(Failure::Refused(Reason::REFUSED_STREAM));
            }
            Err(e) => {
                obs.endpoint_outcome(in_flight.as_ref(), false);
                return Err(match e.reason() {
                    // The upstream's own reset reaches the client as it
                    // is; one the library made of a malformed response
                    // head is a 502 saying so.
                    Some(reason) if e.is_reset() && e.is_remote() => Failure::Refused(reason),
                    _ => ProxyError::upstream(format!("upstream stream failed: {e}")).into(),
                });
            }
        }
    };
    let stalls = crate::stall::Scope {
        stalls: &w.stalls,
        client: obs.peer(),
    };
    relay_response(s.respond, obs, answered, stalls, s.grpc).await
}

/// The upstream's response head, unless the request timeout passes or the
/// client resets its stream first (either way, dropping the response
/// future cancels the upstream stream).
async fn await_head(
    response: client::ResponseFuture,
    s: &mut Stream<'_>,
    deadline: Option<Instant>,
) -> Result<Result<Response<RecvStream>, monoio_http::h2::Error>, Failure> {
    let timeout = async {
        match deadline {
            Some(d) => Box::pin(monoio::time::sleep_until(d.into())).await,
            None => std::future::pending().await,
        }
    };
    monoio::select! {
        r = response => Ok(r),
        _ = timeout => Err(ProxyError::timeout("request timed out before the response").into()),
        reset = poll_fn(|cx| s.respond.poll_reset(cx)) => {
            // The client gave up (the body task sees the reset too).
            Err(Failure::Reset(reset.unwrap_or(Reason::CANCEL)))
        }
    }
}

/// Relays the response (head, body, trailers) to the client stream; the
/// endpoint's outcome for failure accrual: 5xx and gRPC UNAVAILABLE count
/// against it, anything else resets its count.
async fn relay_response(
    respond: &mut server::SendResponse<Bytes>,
    obs: &Observer<'_>,
    a: Answered,
    stalls: crate::stall::Scope<'_>,
    grpc_request: bool,
) -> Result<ResponseClass, Failure> {
    let (mut parts, mut down) = a.response.into_parts();
    strip_connection_headers(&mut parts.headers);
    if obs.key().direction == Direction::Outbound {
        crate::translate::consume_peer_answer(&mut parts.headers);
    }
    obs.route().edit(Message::Response, &mut parts.headers);
    let status = parts.status.as_u16();
    let mut grpc = grpc_status(&parts.headers);
    // As linkerd2-proxy decides its gRPC rescue: by the request (a client
    // that did not ask for gRPC is not told a truncated body ended well).
    let lost = match grpc_request {
        true => SourceLost::GrpcUnavailable,
        false => SourceLost::InternalError,
    };
    let tap = obs.tap();
    if let Some(t) = tap {
        t.response(status, a.head_at, || crate::tap::h2_fields(&parts.headers));
    }
    let end = down.is_end_stream();
    let mut client_body = respond
        .send_response(Response::from_parts(parts, ()), end)
        .map_err(|_| Failure::Reset(Reason::CANCEL))?;
    let mut broken = false;
    if !end {
        match pump_response(&mut down, &mut client_body, stalls, tap, lost).await {
            Ok(trailer_grpc) => grpc = trailer_grpc.or(grpc),
            Err(cut) => {
                tracing::debug!(reason = ?cut.reason, upstream = cut.source, "response body ended early");
                if cut.rescued {
                    // What the client read (trailers, no reset): counted
                    // and tapped with that status.
                    grpc = Some(GRPC_UNAVAILABLE);
                } else {
                    obs.reset(cut.reason);
                }
                broken = cut.source;
            }
        }
    }
    // A complete response while the client may still send its body (an
    // early 4xx/5xx from a server that did not read it): the rest is not
    // forwarded any more, and the client's stream ends normally.
    if let Some(stop) = a.stop_body {
        let _ = stop.send(());
    }
    let ok = status < 500 && grpc != Some(GRPC_UNAVAILABLE) && !broken;
    obs.endpoint_outcome(a.in_flight.as_ref(), ok);
    Ok(match broken {
        true => ResponseClass::broken(status, grpc),
        false => ResponseClass::grpc_or_http(status, grpc, grpc_request),
    })
}

/// Streams a client's request body to the upstream stream.
/// Told when the response is complete, it cancels the upstream stream and
/// stops reading the client's body: the client is told to stop sending it
/// (RST_STREAM NO_ERROR), not stalled by an upstream that stopped reading.
async fn request_body(
    mut from: RecvStream,
    mut to: SendStream<Bytes>,
    stop: oneshot::Receiver<()>,
) {
    let stopped = monoio::select! {
        r = pump(&mut from, &mut to) => {
            if let Err(cut) = r {
                tracing::debug!(reason = ?cut.reason, client = cut.source, "request body ended early");
            }
            false
        }
        r = stop => r.is_ok(),
    };
    if stopped {
        to.send_reset(Reason::CANCEL);
        // `from` is dropped: once the response is complete, the library
        // ends the client's stream with RST_STREAM NO_ERROR (RFC 9113
        // §8.1), as `h2` does for linkerd2-proxy, so the client stops its
        // upload rather than sending the rest for nothing.
    }
}

/// Connection-specific fields HTTP/2 forbids; `te` survives only as
/// `trailers` (RFC 9113 §8.2.2). Also linkerd2-proxy's
/// `l5d-proxy-connection`: a peer proxy's word about the connection it
/// came on (an HTTP/1 client's is closed by it, `translate`), which means
/// nothing to an HTTP/2 client or upstream.
fn strip_connection_headers(h: &mut HeaderMap) {
    // One look at the names first: usually none is there, and the
    // removals below cost a name parse and a hashed lookup each, twice per
    // request.
    let connection_specific = |n: &HeaderName| {
        matches!(
            *n,
            http::header::CONNECTION
                | http::header::TRANSFER_ENCODING
                | http::header::UPGRADE
                | http::header::TE
        ) || n == "keep-alive"
            || n == "proxy-connection"
            || n == crate::l5d_headers::PROXY_CONNECTION
    };
    if !h.keys().any(connection_specific) {
        return;
    }
    for name in [
        http::header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        HeaderName::from_static(crate::l5d_headers::PROXY_CONNECTION),
        http::header::TRANSFER_ENCODING,
        http::header::UPGRADE,
    ] {
        h.remove(name);
    }
    if h.get(http::header::TE)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        h.remove(http::header::TE);
    }
}

/// Moves a request's body (DATA frames, then trailers) from `from` to
/// `to`, releasing each chunk's flow-control capacity only after `to`
/// accepted it. A failure on either side resets the other.
async fn pump(from: &mut RecvStream, to: &mut SendStream<Bytes>) -> Result<(), Cut> {
    // A request's trailers never carry the identity the proxy vouches for
    // (`set_client_id` takes care of the head).
    let on_trailers = |t: &mut HeaderMap| {
        t.remove(CLIENT_ID);
    };
    pump_with(
        from,
        to,
        None,
        |_| {},
        on_trailers,
        false,
        SourceLost::Cancel,
    )
    .await
}

/// What the sink hears when its source fails with no reset of its own
/// (its connection lost, or cut off by the proxy): a request's upstream
/// stream is cancelled; a response is reset with INTERNAL_ERROR (as
/// hyper does), a gRPC one ends with trailers saying UNAVAILABLE (as
/// linkerd2-proxy's gRPC rescue does): a gRPC client reads CANCELLED as
/// the caller's own doing, which retry policies and alerts skip. A reset
/// the source received passes on as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SourceLost {
    Cancel,
    InternalError,
    GrpcUnavailable,
}

/// As [`pump`], to a client whose waits for its window count against the
/// worker's `stalls`; returns the gRPC status the trailers carried.
async fn pump_response(
    from: &mut RecvStream,
    to: &mut SendStream<Bytes>,
    stalls: crate::stall::Scope<'_>,
    tap: Option<&crate::tap::Pending>,
    lost: SourceLost,
) -> Result<Option<u32>, Cut> {
    let mut grpc = None;
    let on_data = |n| {
        if let Some(t) = tap {
            t.data(n);
        }
    };
    let on_trailers = |h: &mut HeaderMap| {
        grpc = grpc_status(h);
        if let Some(t) = tap {
            t.trailers(|| crate::tap::h2_fields(h));
        }
    };
    pump_with(from, to, Some(stalls), on_data, on_trailers, true, lost).await?;
    Ok(grpc)
}

/// Why a pump stopped before its body's end: the reset's reason, and
/// whether its source failed (else its sink went away).
#[derive(Debug)]
struct Cut {
    reason: Reason,
    source: bool,
    /// The sink was not reset: its stream ended with trailers saying
    /// gRPC UNAVAILABLE (`SourceLost::GrpcUnavailable`).
    rescued: bool,
}

impl From<Reason> for Cut {
    /// The sink's reset (or its connection's failure).
    fn from(reason: Reason) -> Self {
        Cut {
            reason,
            source: false,
            rescued: false,
        }
    }
}

async fn pump_with(
    from: &mut RecvStream,
    to: &mut SendStream<Bytes>,
    stalls: Option<crate::stall::Scope<'_>>,
    mut on_data: impl FnMut(usize),
    mut on_trailers: impl FnMut(&mut HeaderMap),
    watch_reset: bool,
    lost: SourceLost,
) -> Result<(), Cut> {
    // The source failed: the sink learns it by a reset with the same
    // reason, or as `lost` says when it has none.
    let fail = |to: &mut SendStream<Bytes>, reason: Option<Reason>| {
        let reason = match (reason, lost) {
            (Some(r), _) => r,
            (None, SourceLost::Cancel) => Reason::CANCEL,
            (None, SourceLost::InternalError) => Reason::INTERNAL_ERROR,
            (None, SourceLost::GrpcUnavailable) => {
                let mut t = HeaderMap::new();
                t.insert("grpc-status", http::HeaderValue::from_static("14"));
                t.insert(
                    "grpc-message",
                    http::HeaderValue::from_static("upstream connection lost"),
                );
                if to.send_trailers(t).is_ok() {
                    return Err(Cut {
                        reason: Reason::INTERNAL_ERROR,
                        source: true,
                        rescued: true,
                    });
                }
                Reason::INTERNAL_ERROR
            }
        };
        to.send_reset(reason);
        Err(Cut {
            reason,
            source: true,
            rescued: false,
        })
    };
    loop {
        // A response: the client resetting its stream (or losing its
        // connection) while the upstream is silent ends the pump at once;
        // the caller drops the upstream stream, which resets it, instead of
        // holding it until the upstream sends. (A request body is not
        // watched so: an upstream's early answer and reset leave the
        // client's body to be drained, `request_body`.)
        let next = if watch_reset {
            unless_reset(to, from.data()).await?
        } else {
            from.data().await
        };
        let chunk = match next {
            None => break,
            Some(Ok(c)) => c,
            Some(Err(e)) => return fail(to, e.reason()),
        };
        let len = chunk.len();
        let last = from.is_end_stream();
        // An empty DATA frame that does not end the body carries nothing:
        // not passed on (a flood of them would otherwise queue on the
        // other side, behind DATA waiting for its window).
        if len == 0 && !last {
            continue;
        }
        // Stalled, this stream stops holding the upstream connection's
        // window (the connection's other streams go on), and holds what
        // the upstream sent and may still send: its stream window's worth.
        let mut on_stall = || {
            let fc = from.flow_control();
            fc.stop_holding_connection();
            let window = fc.used_capacity() + fc.available_capacity().max(0) as usize;
            window.saturating_sub(len)
        };
        let charge = stalls.map(|scope| crate::stall::Charge {
            scope,
            on_stall: &mut on_stall,
        });
        // The sink is gone (reset, or its connection failed): the caller
        // resets the source's stream.
        send_all(to, chunk, last, charge).await?;
        on_data(len);
        let _ = from.flow_control().release_capacity(len);
        if last {
            return Ok(());
        }
    }
    match from.trailers().await {
        Ok(Some(mut t)) => {
            on_trailers(&mut t);
            to.send_trailers(t)
                .map_err(|e| Cut::from(e.reason().unwrap_or(Reason::CANCEL)))
        }
        Ok(None) => to
            .send_data(Bytes::new(), true)
            .map_err(|e| Cut::from(e.reason().unwrap_or(Reason::CANCEL))),
        Err(e) => fail(to, e.reason()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split() {
        assert_eq!(
            split_authority("web.test:8080", 80),
            Some(("web.test", 8080))
        );
        assert_eq!(split_authority("web.test", 80), Some(("web.test", 80)));
        assert_eq!(split_authority("[::1]:9", 80), Some(("[::1]", 9)));
        assert_eq!(split_authority("[::1]", 443), Some(("[::1]", 443)));
        assert_eq!(split_authority("web.test:x", 80), None);
        assert_eq!(split_authority("[::1", 80), None);
    }

    #[test]
    fn connection_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive".parse().unwrap());
        h.insert("keep-alive", "5".parse().unwrap());
        h.insert("te", "gzip".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_connection_headers(&mut h);
        assert_eq!(h.len(), 1);
        let mut h = HeaderMap::new();
        h.insert("te", "trailers".parse().unwrap());
        strip_connection_headers(&mut h);
        assert_eq!(h.len(), 1, "te: trailers is allowed");
    }
}
