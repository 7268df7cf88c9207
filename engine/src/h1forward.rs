//! An HTTP/1 request forwarded to an HTTP/1 upstream: the client
//! connection's halves, an upstream connection (pooled, or connected with
//! failover), the exchange (request body up and response down at the same
//! time, so `Expect: 100-continue` and early responses work) and the tunnel
//! an upgrade or CONNECT becomes.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use ringmesh_discovery::profile::RouteFilter;

use monoio::buf::IoBuf;
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
use ringmesh_admin::telemetry::{relayed, ConnMeter, HttpKey, TlsStatus};
use ringmesh_balancer::OpenGuard;
use ringmesh_protocols::http1::{
    write_request_head, write_response_head, BodyFraming, BodyScanner, ConnectionHeader, Limits,
    Method, RequestContext, RequestHead, ResponseHead, Version, WriteOptions,
};
use ringmesh_protocols::tcp::relay;

use crate::config::ConnectConfig;
use crate::connect::{self, Endpoint, Session};
use crate::detect::is_cancelled;
use crate::error::{Failure, Kind, ProxyError};
use crate::l5d_headers::{RequiredId, CLIENT_ID};
use crate::pool::{Rd, ReadMore, UpRead, Upstream, Wr};
use crate::route::{failover, Dst};
use crate::route_filter::Message;
use crate::transport::{relay_any, TransportRd, TransportWr};
use crate::worker::Worker;

/// One connection's state: the client halves and the reused buffers.
pub(crate) struct Client {
    pub(crate) rd: Rd,
    pub(crate) wr: Wr,
    /// Bytes read from the client and not yet handled.
    pub(crate) buf: Vec<u8>,
    pub(crate) peer: SocketAddr,
    /// Counts this connection in the `peer="src"` TCP series.
    pub(crate) meter: ConnMeter,
    /// For waiting between requests without a buffer; owned by `rd`/`wr`.
    pub(crate) fd: RawFd,
    /// How the connection is secured: inbound requests are labelled with
    /// it and carry `l5d-client-id` when it names the client.
    pub(crate) tls: TlsStatus,
    pub(crate) inbound: bool,
}

/// What an attempt changes in the request head it forwards.
#[derive(Clone, Copy, Default)]
pub(crate) struct Rewrite<'a> {
    /// The endpoint's authority override: the `Host` sent.
    pub(crate) host: Option<&'a str>,
    /// Linkerd's `l5d-timeout` / `l5d-retry-*` headers are removed (the
    /// route honoured them; outbound only).
    pub(crate) strip_l5d: bool,
    /// `l5d-dst-override` is removed (it chose the destination, in
    /// ingress mode).
    pub(crate) strip_dst_override: bool,
    /// `l5d-require-id` is removed (the request has one; outbound).
    pub(crate) strip_require_id: bool,
    /// The route's filters, when a header modifier among them changes
    /// the request (`route_filter.rs`).
    pub(crate) request_edits: Option<&'a [RouteFilter]>,
    /// … the final response.
    pub(crate) response_edits: Option<&'a [RouteFilter]>,
}

/// Inbound, the client identity header is the proxy's to set: what the
/// client sent is removed, and the identity it proved (mutual TLS) added.
fn client_id_headers(c: &Client) -> (&'static [&'static str], Option<&[u8]>) {
    if !c.inbound {
        return (&[], None);
    }
    let id = match &c.tls {
        TlsStatus::Accepted {
            client_id: Some(id),
        } => Some(id.as_bytes()),
        _ => None,
    };
    (&[CLIENT_ID], id)
}

/// Writes `buf[..n]` and removes those bytes from the front.
pub(crate) async fn write_front(
    wr: &mut impl AsyncWriteRent,
    meter: &ConnMeter,
    buf: &mut Vec<u8>,
    n: usize,
) -> io::Result<()> {
    if n == 0 {
        return Ok(());
    }
    let (res, slice) = wr.write_all(std::mem::take(buf).slice(0..n)).await;
    *buf = slice.into_inner();
    meter.wrote(res?);
    buf.drain(..n);
    Ok(())
}

/// As [`write_front`], failing with `TimedOut` when the write makes no
/// progress for `stall` (its reader stopped reading: an upstream that
/// takes no more of a request body, a client that takes no more of a
/// response). A write that completes at once, the usual, sets no timer.
async fn write_front_within(
    wr: &mut impl AsyncWriteRent,
    meter: &ConnMeter,
    buf: &mut Vec<u8>,
    n: usize,
    stall: Duration,
) -> io::Result<()> {
    let mut write = std::pin::pin!(write_front(wr, meter, buf, n));
    use std::future::Future;
    use std::task::Poll;
    let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
    if let Poll::Ready(r) = first {
        return r;
    }
    match monoio::time::timeout(stall, write).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("its reader took nothing for {stall:?}"),
        )),
    }
}

/// An upstream connection for one request: pooled if one is idle for the
/// chosen endpoint, else connected (trying each endpoint at most once).
/// `required`: the request's `l5d-require-id`, which the chosen endpoint
/// must satisfy before it is reached.
pub(crate) async fn checkout(
    w: &Worker,
    key: &HttpKey,
    dst: &Dst,
    dial: ConnectConfig,
    use_pool: bool,
    avoid: &[SocketAddr],
    required: Option<&RequiredId>,
) -> Result<(Upstream, SocketAddr, Option<OpenGuard>), ProxyError> {
    match dst {
        Dst::Addr(addr) => {
            let ep = Endpoint::forward(*addr, &w.cfg.inbound.ips);
            w.pools.require(required, &ep)?;
            Ok((upstream(w, key, &ep, dial, use_pool).await?, *addr, None))
        }
        Dst::Service(svc, balancer) => {
            let (up, addr, guard) = failover(svc, balancer, avoid, |addr| async move {
                let ep = Endpoint::in_service(svc, addr);
                w.pools.require(required, &ep)?;
                upstream(w, key, &ep, dial, use_pool).await
            })
            .await?;
            Ok((up, addr, Some(guard)))
        }
    }
}

/// An idle pooled connection to `ep` (when `use_pool`), else a new one,
/// counted for `key`'s destination.
async fn upstream(
    w: &Worker,
    key: &HttpKey,
    ep: &Endpoint,
    dial: ConnectConfig,
    use_pool: bool,
) -> Result<Upstream, ProxyError> {
    if let Some(u) = use_pool.then(|| w.pools.h1.take(ep)).flatten() {
        return Ok(u);
    }
    let tls = w.pools.tls();
    // Boxed: a dial (a handshake, timeouts) is a large future, and every
    // request's future would carry its room, moved whole into each
    // stream's task (HTTP/2 to HTTP/1), though most requests take a
    // pooled connection.
    let conn = Box::pin(connect::open(
        ep,
        &w.routes.own_listeners,
        tls.as_deref(),
        Session::Http1,
        dial,
    ))
    .await?;
    let meter = connect::upstream_meter(&w.telemetry.tcp, key, ep, &conn);
    let fd = conn.raw_fd();
    let (rd, wr) = conn.split();
    Ok(Upstream {
        rd: UpRead::new(rd, fd),
        wr,
        fd,
        reused: false,
        meter,
        key: std::rc::Rc::new(Endpoint {
            h2: None,
            ..ep.clone()
        }),
    })
}

pub(crate) struct Outcome {
    pub(crate) ubuf: Vec<u8>,
    pub(crate) end: Exchange,
}

impl Outcome {
    fn failed(ubuf: Vec<u8>, f: impl Into<Failure>) -> Self {
        Self {
            ubuf,
            end: Exchange::Failed(f.into()),
        }
    }
}

pub(crate) enum Exchange {
    /// The response is complete. `upstream` is returned when it may be
    /// reused; `client_ok` when the client connection may carry another
    /// request.
    Done {
        upstream: Option<Upstream>,
        client_ok: bool,
    },
    /// 101 or a CONNECT 2xx: both sides now belong to a tunnel.
    Upgraded(Upstream),
    /// [`Failure::Answer`] when nothing of the response reached the client
    /// (retryable when nothing of it arrived and the request was sent
    /// whole), [`Failure::Broken`] when it had started.
    Failed(Failure),
}

/// When a response's first bytes arrived; and what to tell then (the
/// request's head no longer counts in flight: `Observer::release_head`).
pub(crate) struct FirstByte<'a> {
    at: Cell<Option<Instant>>,
    on_first: Option<&'a dyn Fn()>,
}

impl<'a> FirstByte<'a> {
    pub(crate) fn new(on_first: Option<&'a dyn Fn()>) -> Self {
        Self {
            at: Cell::new(None),
            on_first,
        }
    }

    pub(crate) fn get(&self) -> Option<Instant> {
        self.at.get()
    }

    /// Bytes arrived at `now`: the first time, kept and told.
    fn seen(&self, now: Instant) {
        if self.at.get().is_none() {
            self.at.set(Some(now));
            if let Some(f) = self.on_first {
                f();
            }
        }
    }
}

/// Sends one request upstream and its response back. With `kept`, the
/// request body is the first `kept` bytes of `c.buf`, sent with the head
/// and left there (for a retry); else it is streamed from the client. The
/// request body (client → upstream) and the response (upstream → client)
/// move at the same time, so `Expect: 100-continue` and early responses
/// work.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn exchange(
    w: &Worker,
    c: &mut Client,
    up: Upstream,
    req: &RequestHead,
    resp: &mut ResponseHead,
    out: &mut Vec<u8>,
    mut ubuf: Vec<u8>,
    limits: &Limits,
    first_byte: &FirstByte<'_>,
    request_deadline: Option<Instant>,
    answered_5xx: Option<&crate::retry::Held>,
    kept: Option<usize>,
    rewrite: Rewrite<'_>,
    tap: Option<&crate::tap::Pending>,
) -> Outcome {
    let Upstream {
        rd: mut urd,
        wr: mut uwr,
        fd,
        meter: umeter,
        key,
        ..
    } = up;
    // Only bytes read from this connection after this request was written
    // can be its response.
    ubuf.clear();
    let replayable = req.framing().is_empty() || kept.is_some();
    let scanner = match send_head(c, (&mut uwr, &umeter), req, out, limits, kept, rewrite).await {
        Ok(scanner) => scanner,
        Err(e) => {
            let retryable = e.retryable() && replayable;
            return Outcome::failed(ubuf, e.or_retry(retryable));
        }
    };
    // The body relayed whole (a request without one: at once).
    let body_done = Cell::new(false);
    let body_up = async {
        let r = stream_body(
            scanner,
            (&mut c.rd, &c.meter),
            &mut c.buf,
            (&mut uwr, &umeter),
            None,
            w.cfg.tcp.idle_timeout,
        )
        .await;
        body_done.set(true);
        if matches!(r, Err(BodyError::Malformed(_) | BodyError::Stalled(_))) {
            // The upstream got a truncated body and may wait for the rest
            // (or stopped taking it, silent): end the exchange so the
            // client gets its answer now.
            let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
        }
        r
    };
    let down = Downstream {
        w,
        wr: &mut c.wr,
        meter: &c.meter,
        req,
        resp,
        out,
        limits,
        tap,
        edits: rewrite.response_edits,
        body_done: &body_done,
        outbound: !c.inbound,
    };
    let from = UpstreamSide {
        rd: &mut urd,
        meter: &umeter,
        buf: &mut ubuf,
    };
    // The sooner of the response timeout (from now) and the request
    // timeout (from the request head's arrival).
    let deadline = w.response_deadline(request_deadline);
    let relayed = relay_response(down, from, first_byte, deadline, answered_5xx);
    // The client's connection closes after the answer when its body was
    // not read to its end; the upstream's is dropped. An answer that
    // closes the client's connection ends its body too: at once when the
    // client waits for a 100 (Continue) that will not come, else after a
    // short grace (RFC 9112 §9.6: a `close` answer is the connection's
    // last; the body was waited for without end).
    let (up_res, down_res) = body_and_answer_or_cut(
        body_up,
        relayed,
        || {
            Err(BodyError::Sink(
                "the response ended the exchange first".into(),
            ))
        },
        |r| match r {
            Relayed::Done {
                client_keep: false,
                body_withheld,
                ..
            } => Some(if *body_withheld {
                Duration::ZERO
            } else {
                BODY_GRACE_AFTER_CLOSE
            }),
            _ => None,
        },
    )
    .await;
    let up = Upstream {
        rd: urd,
        wr: uwr,
        fd,
        reused: false,
        meter: umeter,
        key,
    };
    conclude(up, ubuf, up_res, down_res, replayable)
}

/// Resets the connection now (a TCP RST): a response that broke off after
/// it started must not end with a clean close, which an HTTP/1 client
/// reading a body delimited by the close takes for the body's end
/// (truncation must never look like success). `connect(2)` to `AF_UNSPEC`
/// disconnects a TCP socket with a reset; the halves' later close finds
/// it gone (a shutdown on drop would otherwise send a FIN first).
pub(crate) fn reset_now(fd: RawFd) {
    let unspec = nix::libc::sockaddr {
        sa_family: nix::libc::AF_UNSPEC as nix::libc::sa_family_t,
        sa_data: [0; 14],
    };
    #[allow(unsafe_code)]
    // SAFETY: `fd` is the caller's open socket for this call; the address
    // lives through it, its size given.
    let r = unsafe {
        nix::libc::connect(
            fd,
            std::ptr::addr_of!(unspec),
            std::mem::size_of::<nix::libc::sockaddr>() as nix::libc::socklen_t,
        )
    };
    if r != 0 {
        tracing::debug!("could not reset a broken response's connection");
    }
}

/// Runs a request body's relay (`body`) and its answer's (`answer`)
/// together. When the answer fails first (a timeout among the ways), the
/// exchange ends at once, `abandoned()` standing for the body's result: the
/// client's body, still coming slowly or not at all, is not waited for.
pub(crate) async fn body_and_answer<BR, T, E>(
    body: impl std::future::Future<Output = BR>,
    answer: impl std::future::Future<Output = Result<T, E>>,
    abandoned: impl FnOnce() -> BR,
) -> (BR, Result<T, E>) {
    body_and_answer_or_cut(body, answer, abandoned, |_| None).await
}

/// [`body_and_answer`], and when the answer is done first and `cut` says
/// so, the body has at most that much longer before it is abandoned too
/// (an answer that closes the connection: the client's body need not all
/// arrive; a short grace keeps the close from resetting a client still
/// sending before it reads the answer).
async fn body_and_answer_or_cut<BR, T, E>(
    body: impl std::future::Future<Output = BR>,
    answer: impl std::future::Future<Output = Result<T, E>>,
    abandoned: impl FnOnce() -> BR,
    cut: impl FnOnce(&T) -> Option<Duration>,
) -> (BR, Result<T, E>) {
    let (mut body, mut answer) = (std::pin::pin!(body), std::pin::pin!(answer));
    monoio::select! {
        // The body first: a request without one is done at once.
        biased;
        up = body.as_mut() => (up, answer.await),
        down = answer.as_mut() => match down {
            Err(e) => (abandoned(), Err(e)),
            Ok(t) => match cut(&t) {
                None => (body.await, Ok(t)),
                Some(grace) => match monoio::time::timeout(grace, body).await {
                    Ok(up) => (up, Ok(t)),
                    Err(_) => (abandoned(), Ok(t)),
                },
            },
        },
    }
}

/// How long a request body may go on after an answer that closes the
/// connection (see [`body_and_answer_or_cut`]).
const BODY_GRACE_AFTER_CLOSE: Duration = Duration::from_secs(1);

/// Writes the request head upstream, with a kept body or what already
/// arrived of a streamed one in the same write (one segment rather than
/// two). Returns the scanner for the rest of the body.
async fn send_head(
    c: &mut Client,
    (uwr, umeter): (&mut Wr, &ConnMeter),
    req: &RequestHead,
    out: &mut Vec<u8>,
    limits: &Limits,
    kept: Option<usize>,
    rewrite: Rewrite<'_>,
) -> Result<BodyScanner, ProxyError> {
    let version = req.version();
    out.clear();
    let opts = WriteOptions {
        version,
        host: rewrite.host.map(str::as_bytes),
        connection: if version == Version::Http10 {
            ConnectionHeader::KeepAlive
        } else {
            ConnectionHeader::Omit
        },
        upgrade: req.upgrade().is_some(),
        ..WriteOptions::default()
    };
    let (remove, id) = client_id_headers(c);
    let remove = match (rewrite.strip_l5d, rewrite.strip_dst_override) {
        (true, true) => crate::l5d_headers::NAMES_AND_DST_OVERRIDE,
        (true, false) => crate::l5d_headers::NAMES,
        (false, true) => &[crate::l5d_headers::DST_OVERRIDE],
        (false, false) => remove,
    };
    // (Rare: a list of its own only for a request with the header.)
    let with_require_id: Vec<&str>;
    let remove = if rewrite.strip_require_id {
        with_require_id = remove
            .iter()
            .copied()
            .chain([crate::l5d_headers::REQUIRE_ID])
            .collect();
        &with_require_id[..]
    } else {
        remove
    };
    let extra;
    let edited;
    let opts = match (id, rewrite.request_edits) {
        (id, Some(f)) => {
            extra = id.map(|id| [(CLIENT_ID, id)]);
            let ours = extra.as_ref().map_or(&[][..], |e| &e[..]);
            edited = crate::route_filter::h1_fields(f, Message::Request, remove, ours);
            WriteOptions {
                remove_headers: &edited.0,
                extra_headers: &edited.1,
                ..opts
            }
        }
        (Some(id), None) => {
            extra = Some([(CLIENT_ID, id)]);
            WriteOptions {
                remove_headers: remove,
                extra_headers: extra.as_ref().map_or(&[][..], |e| &e[..]),
                ..opts
            }
        }
        (None, None) => WriteOptions {
            remove_headers: remove,
            ..opts
        },
    };
    write_request_head(req, out, &opts).map_err(|e| ProxyError::malformed(400, e.to_string()))?;
    let mut scanner = BodyScanner::new(req.framing(), limits);
    if let Some(n) = kept {
        out.extend_from_slice(&c.buf[..n]);
        scanner = BodyScanner::new(BodyFraming::Empty, limits);
    } else if !req.expect_continue() {
        let p = scanner
            .scan(&c.buf)
            .map_err(|e| ProxyError::malformed(400, format!("bad request body: {e}")))?;
        out.extend_from_slice(&c.buf[..p.consumed]);
        c.buf.drain(..p.consumed);
    }
    let (res, o) = uwr.write_all(std::mem::take(out)).await;
    *out = o;
    match res {
        Ok(n) => {
            umeter.wrote(n);
            Ok(scanner)
        }
        Err(e) => {
            let e = ProxyError::upstream(format!("sending the request upstream failed: {e}"));
            // Nothing of a response arrived: may go again if nothing of the
            // request is lost (`exchange` knows); not taken whole.
            Err(e.or_retry(true).on_write())
        }
    }
}

/// The client side of a response being relayed.
struct Downstream<'a> {
    w: &'a Worker,
    wr: &'a mut Wr,
    meter: &'a ConnMeter,
    req: &'a RequestHead,
    resp: &'a mut ResponseHead,
    out: &'a mut Vec<u8>,
    limits: &'a Limits,
    /// The taps of the request, told of the response.
    tap: Option<&'a crate::tap::Pending>,
    /// The route's filters that modify the response's header fields.
    edits: Option<&'a [RouteFilter]>,
    /// The request body went upstream whole.
    body_done: &'a Cell<bool>,
    /// Outbound: a peer proxy's answer fields are consumed
    /// ([`crate::l5d_headers::PEER_ANSWER`]).
    outbound: bool,
}

/// The upstream side of a response being relayed.
struct UpstreamSide<'a> {
    rd: &'a mut UpRead,
    meter: &'a ConnMeter,
    /// Bytes read and not yet relayed.
    buf: &'a mut Vec<u8>,
}

/// How a relayed response ended.
enum Relayed {
    /// 101 or a CONNECT 2xx: both connections now belong to a tunnel.
    Tunnel,
    /// The response is complete; `client_keep`: the client connection may
    /// carry another request; `upstream_keep`: so may the upstream one;
    /// `body_withheld`: the client waits for a 100 (Continue) that never
    /// came, so its body will not come either (the answer said `close`).
    Done {
        client_keep: bool,
        upstream_keep: bool,
        body_withheld: bool,
    },
}

/// What a response head decided, with the head (and the body bytes that
/// came with it) written into `out` for the client.
struct HeadPlan {
    scanner: BodyScanner,
    /// The body is complete in `out` already.
    done: bool,
    /// The client connection stays open after this response.
    keep: bool,
    tunnel: bool,
    close_delimited: bool,
}

/// Interim (1xx) responses an upstream may send before its final one: more
/// are a backend that would keep the worker busy for nothing (the HTTP/2
/// library's bound on informational heads is the same).
pub(crate) const MAX_INTERIM_RESPONSES: u32 = 64;

/// The error for an upstream past [`MAX_INTERIM_RESPONSES`].
pub(crate) fn too_many_interim() -> ProxyError {
    ProxyError::upstream(format!(
        "upstream sent more than {MAX_INTERIM_RESPONSES} interim (1xx) responses"
    ))
}

/// Reads the response head(s) (interim 1xx are forwarded as they come) and
/// streams the final response's body to the client. A 502/503 the caller
/// will retry elsewhere (`answered_5xx`) is kept from the client.
async fn relay_response(
    d: Downstream<'_>,
    u: UpstreamSide<'_>,
    first_byte: &FirstByte<'_>,
    deadline: Option<Instant>,
    answered_5xx: Option<&crate::retry::Held>,
) -> Result<Relayed, Failure> {
    let ctx = d.req.context();
    let mut interim = 0;
    // A 100 (Continue) went to the client.
    let mut continued = false;
    loop {
        let head = read_response_head(
            (&mut *u.rd, u.meter),
            u.buf,
            d.resp,
            ctx,
            d.limits,
            deadline,
            first_byte,
        );
        head.await.map_err(Failure::Answer)?;
        if d.resp.is_interim() {
            interim += 1;
            if interim > MAX_INTERIM_RESPONSES {
                return Err(Failure::Answer(too_many_interim()));
            }
        }
        // Kept from the client when the caller will retry it elsewhere
        // (the connection is dropped: its body is not read).
        let status = d.resp.status();
        if let Some(flag) = answered_5xx.filter(|h| h.take_for_retry(status, Instant::now())) {
            flag.status.set(Some(status));
            let held = ProxyError::new(Kind::Answered(status), "held for a retry");
            return Err(held.into());
        }
        let tap = d.tap.filter(|_| !d.resp.is_interim());
        if let Some(t) = tap {
            let fields = || crate::tap::h1_fields(d.resp.headers());
            t.response(d.resp.status(), Instant::now(), fields);
        }
        let edit = d.edits.filter(|_| !d.resp.is_interim());
        // A final answer before the 100 the client waits for, its body
        // unsent: the client connection cannot carry another request (its
        // next bytes could be that body, or a new request), and the
        // answer says so (RFC 9110 §10.1.1).
        let body_withheld = d.req.expect_continue() && !continued && !d.body_done.get();
        let plan = plan_response(
            d.w.stopping() || body_withheld,
            (d.req, d.resp, edit, d.outbound),
            u.buf,
            d.out,
            d.limits,
            tap,
        )?;
        if d.resp.is_interim() && d.req.version() == Version::Http10 {
            // No 1xx goes to an HTTP/1.0 client (RFC 9110 §15.2), which
            // would take it for the answer.
            d.out.clear();
            continue;
        }
        if !plan.done {
            // The rest of the body streams with plain reads (no ring
            // buffer waits on a slow client).
            u.rd.stop_ring();
        }
        let broken = |reason: String, upstream: bool| Failure::Broken {
            status: d.resp.status(),
            reason,
            upstream,
        };
        let (res, o) = d.wr.write_all(std::mem::take(d.out)).await;
        *d.out = o;
        match res {
            Ok(n) => d.meter.wrote(n),
            Err(e) => return Err(broken(format!("writing to the client failed: {e}"), false)),
        }
        if d.resp.is_interim() {
            continued |= d.resp.status() == 100;
            continue;
        }
        if plan.tunnel {
            return Ok(Relayed::Tunnel);
        }
        if !plan.done {
            let (src, dst) = ((&mut *u.rd, u.meter), (&mut *d.wr, d.meter));
            let stall = d.w.cfg.tcp.idle_timeout;
            let r = stream_body(plan.scanner, src, u.buf, dst, tap, stall).await;
            r.map_err(|e| {
                let upstream = matches!(e, BodyError::Source(_) | BodyError::Malformed(_));
                broken(String::from(e), upstream)
            })?;
        }
        return Ok(Relayed::Done {
            client_keep: plan.keep && !plan.close_delimited,
            upstream_keep: d.resp.keep_alive() && !plan.close_delimited,
            body_withheld,
        });
    }
}

/// Writes the response head for the client into `out` (the `Connection`
/// field saying whether the connection stays open: not while draining, not
/// after a close-delimited body; the upstream's own `Connection: close`
/// is about the upstream connection alone, as in linkerd2-proxy), then the
/// body bytes that came with it. Outbound, a peer proxy's answer fields
/// are left out.
fn plan_response(
    last: bool,
    (req, resp, edits, outbound): (&RequestHead, &ResponseHead, Option<&[RouteFilter]>, bool),
    ubuf: &mut Vec<u8>,
    out: &mut Vec<u8>,
    limits: &Limits,
    tap: Option<&crate::tap::Pending>,
) -> Result<HeadPlan, Failure> {
    // A chunked answer to an HTTP/1.0 request (sent upstream as HTTP/1.0)
    // breaks RFC 9112 §6.1, and its client could not read it: relayed, a
    // keep-alive 1.0 client would wait for an end it cannot see.
    if req.version() == Version::Http10
        && resp.framing() == BodyFraming::Chunked
        && req.method() != Method::Head
    {
        let reason = "upstream sent a chunked response to an HTTP/1.0 request";
        return Err(ProxyError::upstream(reason).into());
    }
    // The connection's last response (draining, or a body withheld); say so.
    let keep = req.keep_alive() && !last;
    let tunnel = resp.framing() == BodyFraming::Tunnel;
    let close_delimited = resp.framing() == BodyFraming::CloseDelimited;
    out.clear();
    let connection = if resp.is_interim() || tunnel {
        ConnectionHeader::Omit
    } else if !keep || close_delimited {
        ConnectionHeader::Close
    } else if req.version() == Version::Http10 {
        ConnectionHeader::KeepAlive
    } else {
        ConnectionHeader::Omit
    };
    let ropts = WriteOptions {
        // An HTTP/1.0 client hears HTTP/1.0, as linkerd2-proxy (hyper)
        // answers it.
        version: req.version(),
        connection,
        upgrade: tunnel && req.upgrade().is_some(),
        ..WriteOptions::default()
    };
    let consumed: &[&str] = if outbound {
        crate::l5d_headers::PEER_ANSWER
    } else {
        &[]
    };
    let edited = edits.map(|f| crate::route_filter::h1_fields(f, Message::Response, consumed, &[]));
    let ropts = match &edited {
        Some((remove, extra)) => WriteOptions {
            remove_headers: remove,
            extra_headers: extra,
            ..ropts
        },
        None => WriteOptions {
            remove_headers: consumed,
            ..ropts
        },
    };
    write_response_head(resp, out, &ropts).map_err(|e| ProxyError::upstream(e.to_string()))?;
    let framing = if req.method() == Method::Head || resp.is_interim() || tunnel {
        BodyFraming::Empty
    } else {
        resp.framing()
    };
    // The body bytes that came with the head go in the same write: one
    // segment for a small response instead of two.
    let mut scanner = BodyScanner::new(framing, limits);
    let p = scan(&mut scanner, ubuf, tap).map_err(|e| ProxyError::upstream(e.to_string()))?;
    out.extend_from_slice(&ubuf[..p.consumed]);
    ubuf.drain(..p.consumed);
    Ok(HeadPlan {
        scanner,
        done: p.done,
        keep,
        tunnel,
        close_delimited,
    })
}

/// The exchange's end from both directions' results: the connection back
/// for reuse (whether bytes came past the response is the pool's to judge),
/// or the failure, explained by the client's body when that is what broke.
fn conclude(
    up: Upstream,
    ubuf: Vec<u8>,
    up_res: Result<(), BodyError>,
    down_res: Result<Relayed, Failure>,
    replayable: bool,
) -> Outcome {
    let f = match down_res {
        // Upgraded: the request had no body to wait for.
        Ok(Relayed::Tunnel) => {
            return Outcome {
                ubuf,
                end: Exchange::Upgraded(up),
            }
        }
        Ok(Relayed::Done {
            client_keep,
            upstream_keep,
            ..
        }) => {
            let body_ok = up_res.is_ok();
            let upstream = (upstream_keep && body_ok).then_some(up);
            return Outcome {
                ubuf,
                end: Exchange::Done {
                    upstream,
                    client_ok: client_keep && body_ok,
                },
            };
        }
        Err(f) => f,
    };
    let f = match (f, up_res) {
        (f, Err(BodyError::Source(e))) => {
            let reason = format!("client request body failed: {e}");
            match f {
                Failure::Answer(a) => Failure::Answer(a.because(reason)),
                Failure::Broken { status, .. } => Failure::Broken {
                    status,
                    reason,
                    upstream: false,
                },
                reset => reset,
            }
        }
        (Failure::Answer(_), Err(BodyError::Malformed(e))) => {
            ProxyError::malformed(400, format!("bad request body: {e}")).into()
        }
        (Failure::Answer(_), Err(BodyError::Stalled(e))) => ProxyError::upstream(format!(
            "the upstream stopped reading the request body: {e}"
        ))
        .into(),
        (Failure::Answer(a), _) => {
            let retryable = a.retryable() && replayable;
            Failure::Answer(a.or_retry(retryable))
        }
        (f, _) => f,
    };
    Outcome::failed(ubuf, f)
}

#[derive(Debug)]
pub(crate) enum BodyError {
    /// Reading the source failed.
    Source(String),
    /// The source's framing is invalid (e.g. a bad chunk size).
    Malformed(String),
    /// Writing to the sink failed.
    Sink(String),
    /// The sink took nothing of it for the idle timeout.
    Stalled(String),
}

/// Reads one response head (interim or final) into `resp`, starting with
/// what `buf` holds; the bytes after it stay in `buf`. `first_byte` is set
/// at the first bytes read. An error is retryable when nothing of a
/// response was there (a stale pooled connection looks like that).
pub(crate) async fn read_response_head(
    (rd, meter): (&mut impl ReadMore, &ConnMeter),
    buf: &mut Vec<u8>,
    resp: &mut ResponseHead,
    ctx: RequestContext,
    limits: &Limits,
    deadline: Option<Instant>,
    first_byte: &FirstByte<'_>,
) -> Result<(), ProxyError> {
    loop {
        if !buf.is_empty() {
            match resp.parse(buf, ctx, limits) {
                Ok(Some(n)) => {
                    buf.drain(..n);
                    return Ok(());
                }
                Ok(None) => {}
                Err(e) => return Err(ProxyError::upstream(e.to_string())),
            }
        }
        match rd
            .read_more(meter, buf, limits.max_head_bytes(), deadline)
            .await
        {
            Err(e) if is_cancelled(&e) => {
                return Err(ProxyError::timeout("upstream response timed out"))
            }
            Ok(0) => {
                let e = ProxyError::upstream("upstream closed the connection before responding");
                return Err(e.or_retry(buf.is_empty()));
            }
            Ok(_) => {
                first_byte.seen(Instant::now());
            }
            Err(e) => {
                meter.failed(&e);
                let e = ProxyError::upstream(format!("reading the response failed: {e}"));
                return Err(e.or_retry(buf.is_empty()));
            }
        }
    }
}

/// Forwards one body from `src` (starting with what `buf` holds) to `dst`,
/// verbatim, stopping exactly at its end; bytes after it stay in `buf`.
pub(crate) async fn stream_body(
    mut scanner: BodyScanner,
    (src, src_meter): (&mut impl ReadMore, &ConnMeter),
    buf: &mut Vec<u8>,
    (dst, dst_meter): (&mut impl AsyncWriteRent, &ConnMeter),
    tap: Option<&crate::tap::Pending>,
    stall: Duration,
) -> Result<(), BodyError> {
    loop {
        let p = scan(&mut scanner, buf, tap).map_err(|e| BodyError::Malformed(e.to_string()))?;
        write_front_within(dst, dst_meter, buf, p.consumed, stall)
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::TimedOut => BodyError::Stalled(e.to_string()),
                _ => BodyError::Sink(e.to_string()),
            })?;
        if p.done {
            return Ok(());
        }
        let cap = buf.capacity().max(16 * 1024);
        match src.read_more(src_meter, buf, cap, None).await {
            Ok(0) => {
                return scanner
                    .finish_at_eof()
                    .map_err(|e| BodyError::Source(e.to_string()));
            }
            Ok(_) => {}
            Err(e) => return Err(BodyError::Source(e.to_string())),
        }
    }
}

/// Feeds `buf` to a body's scanner; with `tap`, a response's taps count its
/// content bytes (chunk framing excluded) and see its trailer lines.
fn scan(
    scanner: &mut BodyScanner,
    buf: &[u8],
    tap: Option<&crate::tap::Pending>,
) -> Result<ringmesh_protocols::http1::BodyProgress, ringmesh_protocols::http1::ProtocolError> {
    match tap {
        Some(t) => scanner.scan_parts(buf, |r| t.data(r.len()), |r| t.h1_trailer_bytes(&buf[r])),
        None => scanner.scan(buf),
    }
}

/// Hands both connections to the opaque relay after an upgrade or CONNECT;
/// `to_client` holds upstream bytes read past the response head.
pub(crate) async fn tunnel(w: &Worker, c: Client, up: Upstream, to_client: Vec<u8>) {
    let Client {
        rd,
        mut wr,
        buf,
        peer,
        meter: src_meter,
        fd: cfd,
        ..
    } = c;
    let Upstream {
        rd: urd,
        wr: uwr,
        meter: dst_meter,
        fd: ufd,
        ..
    } = up;
    let mut to_client = to_client;
    // Bytes the upstream's receive already took follow the response head.
    let urd = urd.into_reader(&mut to_client).await;
    if !to_client.is_empty() {
        let n = to_client.len();
        if write_front(&mut wr, &src_meter, &mut to_client, n)
            .await
            .is_err()
        {
            return;
        }
    }
    let (stats, bufs) = match (rd, wr, urd, uwr) {
        (
            TransportRd::Plain(rd),
            TransportWr::Plain(wr),
            TransportRd::Plain(urd),
            TransportWr::Plain(uwr),
        ) => {
            let (Ok(client), Ok(server)) = (rd.reunite(wr), urd.reunite(uwr)) else {
                tracing::warn!(%peer, "cannot reunite connection halves for a tunnel");
                return;
            };
            // What the client sent after its request head goes to the
            // server first.
            relay(
                client,
                server,
                (buf, w.pools.bufs.get()),
                w.cfg.tcp.idle_timeout,
                w.cfg.tcp.bulk_buffer_size,
                // The request's latency was already learned from its
                // 101/2xx.
                &|_| {},
                &w.telemetry.relay_counters,
            )
            .await
        }
        (mut rd, mut wr, mut urd, mut uwr) => {
            relay_any(
                (&mut rd, &mut wr),
                (&mut urd, &mut uwr),
                (buf, w.pools.bufs.get()),
                w.cfg.tcp.idle_timeout,
                [cfd, ufd],
            )
            .await
        }
    };
    w.pools.bufs.put(bufs.0);
    w.pools.bufs.put(bufs.1);
    relayed(&src_meter, &dst_meter, &stats);
    tracing::debug!(%peer, up = stats.client_to_server, down = stats.server_to_client, "tunnel closed");
}

impl From<BodyError> for String {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::Source(s)
            | BodyError::Malformed(s)
            | BodyError::Sink(s)
            | BodyError::Stalled(s) => s,
        }
    }
}
