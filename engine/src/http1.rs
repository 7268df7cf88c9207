//! The HTTP/1.1 server side: one client connection, requests in order,
//! each routed and balanced on its own.
//!
//! Per request: read the head (the codec in `ringmesh_protocols::http1`
//! validates it), pick the destination (fixed by the listener, or by the
//! request's authority for a client using ringmesh as an explicit proxy),
//! then choose the path: over HTTP/2 to meshed endpoints (`translate`), or
//! to an HTTP/1 upstream (`h1forward`, which streams the body up and the
//! response down), going again where `retry` allows. A small
//! `Content-Length` body to a service is read whole first and sent with the
//! head (or, over HTTP/2, with each attempt), so the request can be
//! retried. Upgrades (101) and CONNECT tunnels
//! end HTTP: both sides go to the opaque relay (`h1forward::tunnel`). The
//! proxy's own answers come from `error`. Between requests a connection
//! holds no buffer.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::multishot::RecvMulti;
use monoio::io::AsyncWriteRentExt;
use ringmesh_admin::telemetry::{ConnMeter, Direction, ResponseClass};
use ringmesh_balancer::OpenGuard;
use ringmesh_protocols::buffer::BufferPool;
use ringmesh_protocols::http1::{
    canonical_reason, BodyFraming, Limits, RequestHead, ResponseHead, Version,
};

use crate::config::ConnectConfig;
use crate::detect::is_cancelled;
use crate::dispatch::{self, Http1Path};
use crate::error::{grpc_code, Failure, Kind, ProxyError, Side};
use crate::h1forward::{checkout, exchange, tunnel, Client, Exchange};
use crate::observe::Observer;
use crate::pool::{read_more, Scratch, Upstream};
use crate::retry::Attempts;
use crate::route::{resolve, Dst, HttpDst};
use crate::route_filter::Message;
use crate::transport::{Transport, TransportRd};
use crate::warn_limit::{warn_limited, Warning};
use crate::worker::Worker;

/// Serves HTTP/1 on `client`; `buf` holds the bytes detection read (already
/// counted by `meter`'s owner), whose first arrived at `head_started`: the
/// first request head must be complete within the header-read timeout of it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve(
    w: Rc<Worker>,
    client: Transport,
    buf: Vec<u8>,
    mut head_started: Option<Instant>,
    peer: SocketAddr,
    mut dst: HttpDst,
    dial: ConnectConfig,
    meter: ConnMeter,
) {
    meter.read(buf.len());
    let fd = client.raw_fd();
    let tls = client.tls().clone();
    let (rd, wr) = client.split();
    let mut c = Client {
        rd,
        wr,
        buf,
        peer,
        meter,
        fd,
        tls,
        inbound: matches!(dst, HttpDst::Local(..)),
    };
    let limits = Limits::default();
    // Per-request state (heads, write buffer) and the upstream read buffer
    // are taken from the worker's pools when a request arrives and given
    // back while the connection waits for the next one, so an idle
    // keep-alive connection holds only its socket and this small task.
    let mut scratch: Option<Box<Scratch>> = None;
    let mut ubuf = Vec::new();
    loop {
        // 1. The next request head.
        let started = head_started.take();
        if c.buf.is_empty() && started.is_none() {
            if let Some(s) = scratch.take() {
                w.pools.h1_scratch.put(s);
            }
            w.pools.bufs.put(std::mem::take(&mut ubuf));
            if !wait_for_request(&w, &mut c).await {
                break;
            }
        }
        let s = scratch.get_or_insert_with(|| w.pools.h1_scratch.take());
        // Usually the whole head is already buffered: only a partial one
        // needs the (boxed, so not in every connection's task) read loop.
        let head = match parse_head(&mut s.req, &c.buf, &limits) {
            Ok(None) => Box::pin(read_request_head(&w, &mut c, &mut s.req, &limits, started)).await,
            parsed => parsed,
        };
        let head_len = match head {
            Ok(Some(n)) => n,
            Ok(None) => break,
            Err(e) => {
                let informational = informational(&w, &c);
                // Boxed, the error moved in: neither sizes every idle
                // connection's task.
                Box::pin(refuse_head(&mut c, &mut s.out, e, informational)).await;
                break;
            }
        };
        if ubuf.capacity() == 0 {
            ubuf = w.pools.bufs.get();
        }
        // The port's server may have changed since the connection was
        // judged: each request is judged by the current one.
        if let HttpDst::Local(addr, verdict) = &mut dst {
            if let Some(v) = w.routes.revalidated(addr.port(), verdict) {
                **verdict = v;
            }
        }
        // Boxed: a task is as big as its largest state, and this one would
        // otherwise size every idle connection's task.
        let turn = Box::pin(request(
            &w, &mut c, s, &mut ubuf, head_len, &dst, dial, &limits,
        ));
        let next = monoio::select! {
            biased;
            next = turn => next,
            _ = hung_up(fd) => {
                // The request is dropped: its upstream connection closes
                // (HTTP/1) or its stream is reset (HTTP/2).
                tracing::debug!(%peer, "client closed before its response; request cancelled");
                Next::Close
            }
        };
        match next {
            Next::Continue => {}
            Next::Close => break,
            Next::Tunnel(up, to_client) => {
                Box::pin(tunnel(&w, c, up, to_client)).await;
                w.pools.bufs.put(ubuf);
                if let Some(s) = scratch {
                    w.pools.h1_scratch.put(s);
                }
                return;
            }
        }
    }
    // A TLS client (a meshed peer) is told of the end (close_notify), so a
    // body delimited by the close ends cleanly for it rather than as a
    // truncation (as tokio-rustls shuts linkerd2-proxy's connections).
    if !c.rd.is_plain() {
        use monoio::io::AsyncWriteRent as _;
        let _ = monoio::time::timeout(TLS_CLOSE_GRACE, c.wr.shutdown()).await;
    }
    w.pools.bufs.put(c.buf);
    w.pools.bufs.put(ubuf);
    if let Some(s) = scratch {
        w.pools.h1_scratch.put(s);
    }
}

/// How long a TLS client's connection may take to take its close_notify.
const TLS_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How often the proxy looks whether a request's client is still there,
/// first a second after the request began: quick answers cost a timer and
/// no syscall, and a client that half-closes after a request answered
/// within the second still gets its answer.
const HANGUP_CHECK: Duration = Duration::from_secs(1);

/// Resolves when the client has shut its side of the connection (FIN or
/// reset, seen as `POLLRDHUP`/`POLLHUP`/`POLLERR` by a non-blocking
/// `poll(2)`, even with bytes of it unread) while its request is served.
/// As nginx and hyper's server (linkerd2-proxy) do, a half-close counts as
/// going away; otherwise a client that left would hold its request, and
/// the upstream connection or stream under it, until the upstream
/// answered. A timer and one syscall per check, never a readiness wait
/// beside the request's own reads of the socket.
async fn hung_up(fd: RawFd) {
    loop {
        monoio::time::sleep(HANGUP_CHECK).await;
        if peer_shut(fd) {
            return;
        }
    }
}

/// Whether the peer of `fd` has shut its sending side, or the socket failed.
fn peer_shut(fd: RawFd) -> bool {
    let mut p = nix::libc::pollfd {
        fd,
        events: nix::libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd, zero timeout.
    #[allow(unsafe_code)]
    let n = unsafe { nix::libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (nix::libc::POLLRDHUP | nix::libc::POLLHUP | nix::libc::POLLERR) != 0
}

/// What the connection does after a request.
enum Next {
    /// Read the next request.
    Continue,
    Close,
    /// Relay both sides (upgrade, CONNECT); the bytes go to the client first.
    Tunnel(Upstream, Vec<u8>),
}

/// One request's working state on an HTTP/1 client connection.
struct Turn<'a> {
    w: &'a Rc<Worker>,
    c: &'a mut Client,
    req: &'a RequestHead,
    resp: &'a mut ResponseHead,
    out: &'a mut Vec<u8>,
    /// The upstream read buffer.
    ubuf: &'a mut Vec<u8>,
    limits: &'a Limits,
    dial: ConnectConfig,
}

/// One request whose head (`head_len` bytes at the front of `c.buf`) is
/// parsed in `s.req`: routed, forwarded and answered.
#[allow(clippy::too_many_arguments)]
async fn request(
    w: &Rc<Worker>,
    c: &mut Client,
    s: &mut Scratch,
    ubuf_slot: &mut Vec<u8>,
    head_len: usize,
    dst: &HttpDst,
    dial: ConnectConfig,
    limits: &Limits,
) -> Next {
    let Scratch { req, resp, out } = s;
    let mut ubuf = std::mem::take(ubuf_slot);
    c.buf.drain(..head_len);
    let direction = if matches!(dst, HttpDst::Local(..)) {
        Direction::Inbound
    } else {
        Direction::Outbound
    };
    let obs = Observer::start(w, direction, &c.tls, c.peer, head_len);
    let mut t = Turn {
        w,
        c,
        req,
        resp,
        out,
        ubuf: &mut ubuf,
        limits,
        dial,
    };
    let next = route_and_forward(&mut t, obs, dst).await;
    *ubuf_slot = ubuf;
    next
}

/// Picks the request's destination and path: over HTTP/2 to meshed
/// endpoints, else to an HTTP/1 upstream (its small body kept first).
async fn route_and_forward(t: &mut Turn<'_>, mut obs: Observer<'_>, dst: &HttpDst) -> Next {
    obs.access_head(&crate::route::H1Req(t.req));
    if let Some(e) = obs.shed() {
        log_answer(t.w, t.c.peer, None, &e);
        return answer(t, obs, e).await;
    }
    let request = crate::route::H1Req(t.req);
    let judged = crate::route::judged(dst, &request);
    let dst = judged.as_ref().unwrap_or(dst);
    if let HttpDst::Local(addr, verdict) = dst {
        // (A request no route matched is counted apart: see
        // `authz::key`.)
        obs.authorized(*addr, verdict);
        if let Some(e) = verdict.rate_limited(&obs.key().tls) {
            return answer(t, obs, e).await;
        }
    }
    let (target, policy) = match resolve(&t.w.routes, dst, t.req.authority(), &request).await {
        Ok(d) => d,
        Err(e) => {
            // (Rate-limited: a client naming ever new hosts that do not
            // resolve logged a line per request.)
            log_answer(t.w, t.c.peer, None, &e);
            return answer(t, obs, e).await;
        }
    };
    obs.routed(&target);
    obs.set_route(policy);
    obs.request_head(&request);
    let deadline = obs.deadline(t.w.cfg.http.request_timeout);
    let limit = obs.route().replay_limit();
    let kept = match keep_body(t, &target, limit, deadline).await {
        Ok(kept) => kept,
        Err(Some(e)) => return answer(t, obs, e).await,
        Err(None) => return Next::Close,
    };
    match dispatch::http1(&target, t.req) {
        Http1Path::Http1 => forward(t, obs, dst, &target, kept, deadline).await,
        // Boxed: its state would otherwise size every connection's task.
        Http1Path::OverHttp2 { mark } => {
            Box::pin(over_h2(t, obs, &target, kept, deadline, mark)).await
        }
        Http1Path::Refused(status) => {
            let what = if status == 505 {
                "an HTTP/1.0 request"
            } else {
                "an upgrade or CONNECT"
            };
            let reason = format!("the service speaks HTTP/2 only: {what} cannot be sent to it");
            answer(t, obs, ProxyError::malformed(status, reason)).await
        }
    }
}

/// The proxy answers the request itself; the connection closes after,
/// unless a route's filter made the answer (a failure injection or a
/// redirect, not a fault) to a keep-alive request without a body: then
/// nothing of the request is left unread and the client may go on.
async fn answer(t: &mut Turn<'_>, obs: Observer<'_>, e: ProxyError) -> Next {
    let informational = informational(t.w, t.c);
    // A HEAD request's answer has no body (the connection may carry the
    // next request: bytes of a body would be read as its answer).
    let head = t.req.method() == ringmesh_protocols::http1::Method::Head;
    let body_len = if head {
        0
    } else {
        e.answer_body_len(false, informational)
    };
    obs.answered(&e, false, body_len);
    let keep = !e.closes_connection()
        && t.req.framing().is_empty()
        && t.req.keep_alive()
        && !t.w.stopping();
    let answer = Answer {
        version: t.req.version(),
        informational,
        head,
        close: !keep,
    };
    send_error(t.c, t.out, &e, answer).await;
    if keep {
        Next::Continue
    } else {
        Next::Close
    }
}

/// Logs why the proxy answers: the client's fault at debug (a hostile
/// client must not flood the log), anything else rate-limited.
fn log_answer(w: &Worker, peer: SocketAddr, upstream: Option<SocketAddr>, e: &ProxyError) {
    if e.side() == Side::Downstream {
        tracing::debug!(%peer, reason = e.reason(), "bad request");
    } else {
        warn_limited!(w, Warning::RequestFailed, %peer, ?upstream, reason = e.reason(), "request failed");
    }
}

/// The request to a meshed or HTTP/2-only service travels over HTTP/2
/// (`translate`); `kept`: its body, read whole at the front of the
/// client's buffer; `mark`: with `l5d-orig-proto` (to a meshed one).
async fn over_h2(
    t: &mut Turn<'_>,
    mut obs: Observer<'_>,
    target: &Dst,
    kept: Option<usize>,
    deadline: Option<Instant>,
    mark: bool,
) -> Next {
    let outcome = dispatch::h1_over_h2(
        t.w, t.c, t.req, &mut obs, target, t.dial, deadline, t.out, t.limits, kept, mark,
    )
    .await;
    match outcome {
        Ok((class, client_ok)) => {
            obs.end(class);
            // A drain is handled by the next head's read (a request
            // already sent is served, with `Connection: close`).
            if client_ok {
                return Next::Continue;
            }
            Next::Close
        }
        Err(Failure::Answer(e)) => {
            log_answer(t.w, t.c.peer, None, &e);
            answer(t, obs, e).await
        }
        Err(broken) => {
            // Reset, not closed, as in `finish`.
            let (class, reason) = broken.after_response();
            tracing::debug!(peer = %t.c.peer, reason, "request failed after the response started");
            obs.end(class);
            crate::h1forward::reset_now(t.c.fd);
            Next::Close
        }
    }
}

/// A small body to a service is read whole first (it stays at the front
/// of `c.buf`), so the request can go again; it is read before
/// connecting, so no upstream connection waits on a slow client.
/// `Err(None)`: the client went away, nothing to answer.
async fn keep_body(
    t: &mut Turn<'_>,
    target: &Dst,
    limit: u64,
    deadline: Option<Instant>,
) -> Result<Option<usize>, Option<ProxyError>> {
    let Some(n) = replayable_body(t.req, target, limit) else {
        return Ok(None);
    };
    match read_body(t.c, n, deadline).await {
        Ok(true) => Ok(Some(n)),
        Ok(false) => Err(None), // closed mid-body: nothing to answer
        Err(e) if is_cancelled(&e) => {
            crate::warn_limit::info_limited!(t.w, crate::warn_limit::Warning::ClientTimeout, peer = %t.c.peer, "request body not received within the request timeout");
            Err(Some(ProxyError::timeout(
                "request timed out before the response",
            )))
        }
        Err(e) => {
            t.c.meter.failed(&e);
            Err(None)
        }
    }
}

/// The request to an HTTP/1 upstream: a connection, the exchange (again
/// where `retry` allows), then what the client hears.
async fn forward(
    t: &mut Turn<'_>,
    mut obs: Observer<'_>,
    dst: &HttpDst,
    target: &Dst,
    kept: Option<usize>,
    deadline: Option<Instant>,
) -> Next {
    let (up, addr, in_flight) = match checkout(
        t.w,
        obs.key(),
        target,
        t.dial,
        true,
        &[],
        obs.route().require_id.as_ref(),
    )
    .await
    {
        Ok(u) => u,
        Err(e) => {
            warn_limited!(t.w, Warning::UpstreamUnavailable, peer = %t.c.peer, error = e.reason(), "upstream unavailable");
            obs.failed_at(&e);
            return answer(t, obs, e).await;
        }
    };
    obs.endpoint(addr);
    // A CONNECT from an explicit-proxy client is ours to answer: the
    // tunnel goes to the resolved endpoint.
    if t.req.is_connect() && matches!(dst, HttpDst::ByAuthority) {
        t.out.clear();
        t.out
            .extend_from_slice(b"HTTP/1.1 200 Connection Established\r\n\r\n");
        let (res, _) = t.c.wr.write_all(std::mem::take(t.out)).await;
        match res {
            Ok(n) => t.c.meter.wrote(n),
            Err(_) => return Next::Close,
        }
        return Next::Tunnel(up, Vec::new());
    }
    let first = (up, addr, in_flight);
    let (outcome, addr, in_flight) = attempts(t, &mut obs, target, kept, deadline, first).await;
    obs.endpoint(addr);
    // The kept body was sent (maybe more than once); what follows it is
    // the next request, or a tunnel's.
    if let Some(n) = kept {
        t.c.buf.drain(..n);
    }
    finish(t, obs, outcome, addr, in_flight.as_ref()).await
}

/// An upstream connection for an attempt: the connection, its endpoint, and
/// the request's place in the endpoint's in-flight count.
type Attempt = (Upstream, SocketAddr, Option<OpenGuard>);

/// Why a request goes again.
#[derive(Clone, Copy)]
enum Retry {
    /// The endpoint answered this status (502/503), held back from the
    /// client; another endpoint gets the request.
    Answered(u16),
    /// The pooled connection was closed by the upstream before answering;
    /// the request goes on a new connection.
    Stale,
    /// No response head within the route's per-attempt timeout: another
    /// endpoint gets the request.
    TimedOut,
}

/// Sends the request on `first`, and again where `retry` allows: a stale
/// pooled connection (once, on a new connection) or a 502/503 from an
/// endpoint of a service (to another endpoint; the client never sees the
/// answer that was retried). Upgrades and CONNECT never go twice.
async fn attempts(
    t: &mut Turn<'_>,
    obs: &mut Observer<'_>,
    target: &Dst,
    kept: Option<usize>,
    deadline: Option<Instant>,
    first: Attempt,
) -> (Exchange, SocketAddr, Option<OpenGuard>) {
    let req = t.req;
    let mut tries = Attempts::new(
        target,
        req.method().is_idempotent() && !req.is_connect() && req.upgrade().is_none(),
        req.framing().is_empty() || kept.is_some(),
    )
    .on_route(obs.route());
    let (mut up, mut addr, mut in_flight) = first;
    loop {
        let reused = up.reused;
        let release = || obs.release_head();
        let first_byte = crate::h1forward::FirstByte::new(Some(&release));
        // A 502/503 that would be retried is kept from the client.
        let sent = Instant::now();
        let answered_5xx = crate::retry::Held::new(tries.route());
        let hold_5xx = tries.hold_answer(sent, &answered_5xx);
        // A route's per-attempt timeout, while a retry could follow.
        let (attempt_deadline, cut) = tries.attempt_deadline(sent, deadline);
        let ubuf = std::mem::take(t.ubuf);
        let outcome = exchange(
            t.w,
            t.c,
            up,
            req,
            t.resp,
            t.out,
            ubuf,
            t.limits,
            &first_byte,
            attempt_deadline,
            hold_5xx.then_some(&answered_5xx),
            kept,
            crate::h1forward::Rewrite {
                host: obs.authority_override(addr).map(|a| &**a),
                strip_l5d: obs.route().l5d_headers,
                strip_dst_override: obs.route().dst_override,
                strip_require_id: obs.route().require_id.is_some(),
                request_edits: obs.route().edits(Message::Request),
                response_edits: obs.route().edits(Message::Response),
            },
            obs.tap(),
        )
        .await;
        *t.ubuf = outcome.ubuf;
        let first_at = first_byte.get();
        if let Some(at) = first_at {
            obs.response_head(in_flight.as_ref(), at.saturating_duration_since(sent));
            obs.response_length(|| crate::translate::content_length(t.resp.headers()));
        }
        let retry = if let (Some(status), Some(g)) = (answered_5xx.status.get(), &in_flight) {
            // What was read past that answer's head belongs to it.
            t.ubuf.clear();
            obs.endpoint(addr);
            if !tries.retry_held(status, addr, &answered_5xx) {
                // (Not expected: the retry's token was taken when the
                // answer could be held.)
                let e = ProxyError::new(
                    Kind::Answered(status),
                    format!("upstream answered {status}"),
                );
                return (Exchange::Failed(e.into()), addr, in_flight);
            }
            obs.retrying(g);
            tracing::debug!(peer = %t.c.peer, upstream = %addr, status, "retrying on another endpoint");
            Retry::Answered(status)
        } else {
            match (&outcome.end, &in_flight) {
                (Exchange::Failed(Failure::Answer(e)), _)
                    if e.retryable() && tries.retry_stale(reused, e.unsent()) =>
                {
                    tracing::debug!(peer = %t.c.peer, upstream = %addr, "pooled connection was stale; retrying on a new one");
                    Retry::Stale
                }
                (Exchange::Failed(Failure::Answer(e)), Some(g))
                    if cut
                        && e.timed_out()
                        && first_at.is_none()
                        && tries.retry_timed_out(addr, Instant::now()) =>
                {
                    obs.endpoint(addr);
                    obs.retrying(g);
                    tracing::debug!(peer = %t.c.peer, upstream = %addr, "no response within the attempt timeout; retrying on another endpoint");
                    Retry::TimedOut
                }
                _ => return (outcome.end, addr, in_flight),
            }
        };
        // The route's pause before a retry to another endpoint.
        if !matches!(retry, Retry::Stale) {
            if let Err(e) = crate::retry::pause(&tries, deadline).await {
                return (Exchange::Failed(e.into()), addr, in_flight);
            }
        }
        // A retried answer may go on a pooled connection; a stale one's
        // retry goes on a new connection.
        let use_pool = !matches!(retry, Retry::Stale);
        match checkout(
            t.w,
            obs.key(),
            target,
            t.dial,
            use_pool,
            tries.avoid(),
            obs.route().require_id.as_ref(),
        )
        .await
        {
            Ok((u, a, g)) => (up, addr, in_flight) = (u, a, g),
            Err(e) => {
                let e = match retry {
                    Retry::Answered(status) => {
                        let reason =
                            format!("upstream answered {status}; retry failed: {}", e.reason());
                        ProxyError::new(Kind::Answered(status), reason)
                    }
                    Retry::TimedOut => ProxyError::timeout(format!(
                        "no response within the attempt timeout; retry failed: {}",
                        e.reason()
                    )),
                    Retry::Stale => e,
                };
                return (Exchange::Failed(e.into()), addr, in_flight);
            }
        }
    }
}

/// What a response the upstream sent whole is counted as: by its status,
/// and for a gRPC request (gRPC-Web over HTTP/1.1: `application/grpc…`, as
/// linkerd2-proxy decides it by the request) with the `grpc-status` of
/// its head, UNKNOWN without one (the status of a streamed gRPC-Web
/// response is in its body, which is not read).
fn response_class(req: &RequestHead, resp: &ResponseHead) -> ResponseClass {
    let status = resp.status();
    let grpc = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.starts_with(b"application/grpc"));
    let grpc_status = grpc
        .then(|| resp.headers().get("grpc-status").and_then(grpc_code))
        .flatten();
    ResponseClass::grpc_or_http(status, grpc_status, grpc)
}

/// After the last attempt: the endpoint's outcome and the request's
/// metrics (through the observer), the connection back to the pool, and
/// what the client hears.
async fn finish(
    t: &mut Turn<'_>,
    obs: Observer<'_>,
    outcome: Exchange,
    addr: SocketAddr,
    in_flight: Option<&OpenGuard>,
) -> Next {
    let status = t.resp.status();
    match outcome {
        Exchange::Done {
            upstream,
            client_ok,
        } => {
            obs.endpoint_outcome(in_flight, status < 500);
            let side = obs.key().direction;
            obs.end(response_class(t.req, t.resp));
            if let Some(up) = upstream {
                t.w.pools.h1.release(side, up, t.ubuf);
            }
            // Bytes past a response answer no request: never parsed.
            t.ubuf.clear();
            // A drain is handled by the next head's read (a request
            // already sent is served, with `Connection: close`).
            if client_ok {
                Next::Continue
            } else {
                Next::Close
            }
        }
        Exchange::Upgraded(up) => {
            obs.endpoint_outcome(in_flight, status < 500);
            obs.end_status(status);
            Next::Tunnel(up, std::mem::take(t.ubuf))
        }
        Exchange::Failed(Failure::Answer(e)) => {
            if e.status() >= 502 {
                obs.endpoint_outcome(in_flight, false);
            }
            log_answer(t.w, t.c.peer, Some(addr), &e);
            answer(t, obs, e).await
        }
        Exchange::Failed(broken) => {
            // The response had started: it is counted as what was sent,
            // and as a failure when the upstream cut it short. The client
            // connection is reset, not closed: a body delimited by the
            // close would otherwise look whole.
            let (class, reason) = broken.after_response();
            obs.end(class);
            tracing::debug!(peer = %t.c.peer, upstream = %addr, reason, "request failed after the response started");
            crate::h1forward::reset_now(t.c.fd);
            Next::Close
        }
    }
}

/// Parses a request head at the front of `buf`: `Ok(None)` while it is
/// incomplete (or `buf` is empty).
fn parse_head(
    req: &mut RequestHead,
    buf: &[u8],
    limits: &Limits,
) -> Result<Option<usize>, ProxyError> {
    if buf.is_empty() {
        return Ok(None);
    }
    match req.parse(buf, limits) {
        // RFC 9112 §2.2 lets a server accept a bare LF; a proxy that does
        // so can disagree with the next hop about where a header ends, so
        // it is refused (smuggling defence).
        Ok(Some(n)) if has_bare_lf(&buf[..n]) => {
            Err(ProxyError::malformed(400, "bare LF in the request head"))
        }
        Ok(Some(n)) => Ok(Some(n)),
        Ok(None) => Ok(None),
        // A request line that alone exceeds the limit is 414.
        Err(e) if e.status() == 431 && !buf.contains(&b'\n') => {
            Err(ProxyError::malformed(414, "request line too long"))
        }
        Err(e) => Err(ProxyError::malformed(e.status(), e.to_string())),
    }
}

/// Reads until a whole request head is buffered. `Ok(None)`: the client
/// closed, went idle for the idle timeout, or the worker is stopping,
/// between requests. A head must arrive within the header-read timeout of
/// its first byte.
async fn read_request_head(
    w: &Worker,
    c: &mut Client,
    req: &mut RequestHead,
    limits: &Limits,
    head_started: Option<Instant>,
) -> Result<Option<usize>, ProxyError> {
    let mut head_deadline = head_started.map(|t| t + w.cfg.http.header_read_timeout);
    loop {
        if !c.buf.is_empty() {
            if let Some(n) = parse_head(req, &c.buf, limits)? {
                return Ok(Some(n));
            }
            head_deadline.get_or_insert_with(|| Instant::now() + w.cfg.http.header_read_timeout);
        }
        if c.buf.is_empty() && w.stopping() {
            return Ok(None);
        }
        // Bytes are buffered (the wait between requests is
        // `wait_for_request`'s), so the header-read timeout runs.
        let deadline =
            *head_deadline.get_or_insert_with(|| Instant::now() + w.cfg.http.header_read_timeout);
        let res = read_more(
            &mut c.rd,
            &c.meter,
            &mut c.buf,
            limits.max_head_bytes(),
            Some(deadline),
        )
        .await;
        match res {
            Ok(0) => return Ok(None), // closed (mid-head: nothing to answer)
            Ok(_) => {}
            Err(e) if is_cancelled(&e) && head_deadline.is_some() => {
                crate::warn_limit::info_limited!(w, crate::warn_limit::Warning::ClientTimeout, peer = %c.peer, "request head not received within the header-read timeout; closing");
                return Err(ProxyError::new(
                    Kind::HeadTimeout,
                    "request head not received in time",
                ));
            }
            Err(e) => {
                if !is_cancelled(&e) {
                    c.meter.failed(&e);
                }
                return Ok(None);
            }
        }
    }
}

/// Between requests: waits, holding no buffer, until the client sends
/// its next bytes (then in `c.buf`). False when it closed, failed, stayed
/// idle for the TCP idle timeout, or the worker is draining: a drain does
/// not wait on idle clients, but a request already on its way gets a last
/// look (`worker::DRAIN_LAST_LOOK`) and is served, its response saying
/// `Connection: close`.
async fn wait_for_request(w: &Worker, c: &mut Client) -> bool {
    let now = Instant::now();
    let idle_deadline = now + w.cfg.tcp.idle_timeout;
    w.pools.bufs.put(std::mem::take(&mut c.buf));
    let res = if w.stopping() {
        // A response that ended during the drain, its head written before
        // it began (so without `Connection: close`): its client may send
        // the next request at once, and gets a last look of its own, even
        // after the worker's has passed.
        let last_look = now + crate::worker::DRAIN_LAST_LOOK;
        read_when_idle(&w.pools.bufs, c, idle_deadline.min(last_look)).await
    } else {
        // Not `w.stop`: a request already on its way when the drain began
        // is still served, until the worker's `close_idle` (its last look).
        monoio::select! {
            r = read_when_idle(&w.pools.bufs, c, idle_deadline) => r,
            _ = w.close_idle.wait() => return false,
        }
    };
    match res {
        Ok(n) => n > 0,
        Err(e) => {
            if !is_cancelled(&e) {
                c.meter.failed(&e);
            }
            false
        }
    }
}

/// Waits for a client's next bytes without holding a buffer, then reads
/// them into `c.buf` (taken from the worker's pool only then). On io_uring
/// one receive into the worker's provided-buffer ring, the bytes copied
/// out and the ring buffer given back at once (no more syscalls than a
/// plain receive); without a ring (epoll, or `RINGMESH_TCP_RING_BUFFERS=0`)
/// or when it was empty, a readiness wait and then a non-blocking read.
/// Cancelled (`ECANCELED`) at `deadline`. Its state is small on purpose:
/// it sizes every idle connection's task.
async fn read_when_idle(bufs: &BufferPool, c: &mut Client, deadline: Instant) -> io::Result<usize> {
    let cancelled = || io::Error::from_raw_os_error(nix::errno::Errno::ECANCELED as i32);
    let plain = match &c.rd {
        TransportRd::Plain(rd) => rd,
        // TLS: the session decides when a request's bytes are there (the
        // socket's readiness may be a partial record); the connection waits
        // for them without a buffer, then takes one and reads them.
        TransportRd::Tls(_) | TransportRd::Server(_) => {
            // Boxed: this future's size is every idle connection's.
            return Box::pin(read_tls_when_idle(bufs, c, deadline)).await;
        }
    };
    if let Ok(mut recv) = RecvMulti::once(c.fd) {
        match monoio::time::timeout_at(deadline.into(), recv.next()).await {
            Err(_) => return Err(cancelled()),
            Ok(Ok(Some(got))) => {
                c.buf = bufs.get();
                c.buf.extend_from_slice(&got);
                c.meter.read(got.len());
                return Ok(got.len());
            }
            Ok(Ok(None)) => return Ok(0),
            // The ring was empty when the bytes came: nothing was read.
            Ok(Err(e)) if e.raw_os_error() == Some(nix::errno::Errno::ENOBUFS as i32) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
    loop {
        match monoio::time::timeout_at(deadline.into(), plain.readable(false)).await {
            Err(_) => return Err(cancelled()),
            Ok(r) => r?,
        }
        if c.buf.capacity() == 0 {
            c.buf = bufs.get();
        }
        match recv_now(c.fd, &mut c.buf) {
            Ok(n) => {
                c.meter.read(n);
                return Ok(n);
            }
            // Readiness was stale: wait again (`readable(false)` checks).
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// [`read_when_idle`] for a TLS connection.
async fn read_tls_when_idle(
    bufs: &BufferPool,
    c: &mut Client,
    deadline: Instant,
) -> io::Result<usize> {
    let waited = match &c.rd {
        TransportRd::Tls(t) => monoio::time::timeout_at(deadline.into(), t.wait_plaintext()).await,
        TransportRd::Server(t) => {
            monoio::time::timeout_at(deadline.into(), t.wait_plaintext()).await
        }
        TransportRd::Plain(_) => Ok(Ok(())),
    };
    match waited {
        Err(_) => {
            return Err(io::Error::from_raw_os_error(
                nix::errno::Errno::ECANCELED as i32,
            ))
        }
        Ok(r) => r?,
    }
    c.buf = bufs.get();
    read_more(&mut c.rd, &c.meter, &mut c.buf, 64 * 1024, Some(deadline)).await
}

/// One non-blocking `recv` into `buf`'s spare capacity.
fn recv_now(fd: RawFd, buf: &mut Vec<u8>) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    // SAFETY: recv writes at most `spare.len()` bytes into the spare
    // capacity it is given, and `set_len` below covers only what it wrote.
    #[allow(unsafe_code)]
    let n = unsafe {
        nix::libc::recv(
            fd,
            spare.as_mut_ptr().cast(),
            spare.len(),
            nix::libc::MSG_DONTWAIT,
        )
    };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    // SAFETY: the first `n` spare bytes were just initialised by recv.
    #[allow(unsafe_code)]
    unsafe {
        buf.set_len(buf.len() + n)
    };
    Ok(n)
}

/// The length of `req`'s body when it is kept for a possible retry: a
/// `Content-Length` body of at most `limit` bytes to a service. Not
/// kept: chunked bodies (their length is unknown until the end, so they
/// stream), bodies after `Expect: 100-continue` (the client waits for the
/// 100 before sending them), and upgrades and CONNECT (the bytes after the
/// head may be a tunnel's).
fn replayable_body(req: &RequestHead, target: &Dst, limit: u64) -> Option<usize> {
    match (req.framing(), target) {
        (BodyFraming::ContentLength(n), Dst::Service(..))
            if n > 0
                && n <= limit
                && !req.expect_continue()
                && !req.is_connect()
                && req.upgrade().is_none() =>
        {
            usize::try_from(n).ok()
        }
        _ => None,
    }
}

/// Reads until `c.buf` holds `n` bytes (a body to keep), by `deadline`.
/// `Ok(false)`: the client closed first.
async fn read_body(c: &mut Client, n: usize, deadline: Option<Instant>) -> io::Result<bool> {
    if c.buf.len() < n {
        c.buf.reserve(n - c.buf.len());
    }
    while c.buf.len() < n {
        if read_more(&mut c.rd, &c.meter, &mut c.buf, n, deadline).await? == 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

fn has_bare_lf(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

/// Whether the proxy's own answers to `c` say why: inbound, to a client
/// proxy (mutual TLS with a client identity), as linkerd2-proxy's; outbound
/// unless `LINKERD2_PROXY_OUTBOUND_DISABLE_INFORMATIONAL_HEADERS` or
/// ingress mode turned it off.
fn informational(w: &Worker, c: &Client) -> bool {
    crate::l5d_headers::informational(c.inbound, &c.tls, w.cfg.outbound.informational_headers)
}

/// Answers a request whose head could not be read (the connection closes
/// after).
async fn refuse_head(c: &mut Client, out: &mut Vec<u8>, e: ProxyError, informational: bool) {
    let answer = Answer {
        version: request_line_version(&c.buf),
        informational,
        head: false,
        close: true,
    };
    send_error(c, out, &e, answer).await;
}

/// The version a request line that may be malformed ends with, for the
/// answer refusing it: HTTP/1.0 if it says so, HTTP/1.1 otherwise.
fn request_line_version(buf: &[u8]) -> Version {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    if line.trim_ascii_end().ends_with(b" HTTP/1.0") {
        Version::Http10
    } else {
        Version::Http11
    }
}

/// How the proxy's own answer is made.
struct Answer {
    /// The request's version (an HTTP/1.0 client hears HTTP/1.0).
    version: Version,
    /// The reason is said (`l5d-proxy-error` and the body).
    informational: bool,
    /// The request was a HEAD: the body's length, not the body.
    head: bool,
    /// The connection closes after it (`closes_connection`).
    close: bool,
}

/// Answers with an error the proxy itself produced, in the request's
/// version, saying why in an `l5d-proxy-error` header (as linkerd2-proxy
/// does) and in the body unless not informational (then the status
/// alone, as linkerd2-proxy); a HEAD's answer without the body; an
/// HTTP/1.0 connection kept says so.
async fn send_error(c: &mut Client, out: &mut Vec<u8>, e: &ProxyError, a: Answer) {
    out.clear();
    let status = e.status();
    let reason = canonical_reason(status);
    out.extend_from_slice(format!("{} {status} {reason}\r\n", a.version.as_str()).as_bytes());
    if let Some(location) = e.location() {
        // (Made from the request's own URL parts, each checked, and the
        // policy's: no control characters.)
        out.extend_from_slice(b"location: ");
        out.extend_from_slice(location.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let body = if a.informational {
        out.extend_from_slice(b"l5d-proxy-error: ");
        out.extend_from_slice(e.header_value().as_bytes());
        out.extend_from_slice(b"\r\ncontent-type: text/plain\r\n");
        e.body()
    } else {
        String::new()
    };
    let connection = match (a.close, a.version) {
        (true, _) => "connection: close\r\n",
        (false, Version::Http10) => "connection: keep-alive\r\n",
        (false, _) => "",
    };
    let sent = if a.head { "" } else { body.as_str() };
    out.extend_from_slice(
        format!("content-length: {}\r\n{connection}\r\n{sent}", body.len()).as_bytes(),
    );
    let (res, o) = c.wr.write_all(std::mem::take(out)).await;
    *out = o;
    if let Ok(n) = res {
        c.meter.wrote(n);
    }
}
