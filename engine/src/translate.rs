//! HTTP/1 ↔ HTTP/2 translation.
//!
//! - **HTTP/1 over HTTP/2 between proxies** (linkerd2-proxy's meshed
//!   upgrade): an outbound HTTP/1.1 request to a service whose endpoints all
//!   carry discovery's `h2` protocol hint travels as an HTTP/2 stream on the
//!   pooled connection to the endpoint, marked `l5d-orig-proto: HTTP/1.1`
//!   ([`h1_over_h2`]). The peer proxy sees the mark, restores HTTP/1.1
//!   toward its application and marks the response the same way
//!   ([`h2_to_h1`]). Two proxies then share one multiplexed connection
//!   instead of one per concurrent request.
//! - **HTTP/2 client, HTTP/1-only upstream**: a stream for a destination
//!   discovery marks `protocol = "http1"` is sent as an HTTP/1.1 request
//!   on a pooled HTTP/1 connection ([`h2_to_h1`]).
//! - **HTTP/1 client, HTTP/2-only upstream** (`protocol = "http2"`): a
//!   plain HTTP/1.1 request goes as an HTTP/2 stream without the mark
//!   ([`h1_over_h2`]), as for a meshed endpoint.
//!
//! Bodies are re-framed as they stream (HTTP/1 chunked ↔ DATA frames) with
//! flow control both ways; only a small body with a declared length, of a
//! request that may be retried, is kept whole (as on the untranslated
//! paths), to go again with each attempt. What does not
//! translate: header names reach HTTP/2 in lower case (HTTP/2 requires
//! it), connection-specific fields are left out of HTTP/2 heads and
//! trailers, and upgrades/CONNECT never take the HTTP/2 path. Trailers go
//! both ways (HTTP/1 chunked trailer fields ↔ HTTP/2 trailers).

use std::cell::Cell;
use std::future::poll_fn;
use std::io::Write;
use std::rc::Rc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, EXPECT};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri};
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
use monoio_http::h2::{client, server, Reason, RecvStream, SendStream};
use ringmesh_admin::telemetry::{ConnMeter, Direction, HttpKey, ResponseClass};
use ringmesh_balancer::OpenGuard;
use ringmesh_protocols::buffer::BufferPool;
use ringmesh_protocols::http1::{
    canonical_reason, push_field, BodyFraming, BodyScanner, Headers, Limits, Method,
    RequestContext, RequestHead, ResponseHead, Version,
};

use crate::config::ConnectConfig;
use crate::error::{Failure, ProxyError, GRPC_UNAVAILABLE};
use crate::h1forward::{self, Client};
use crate::h2client::{self, Opened, Opening};
use crate::observe::Observer;
use crate::pool::{ReadMore, Upstream, Wr};
use crate::retry::Attempts;
use crate::route::Dst;
use crate::route_filter::Message;
use crate::worker::Worker;

/// Marks a request (and its response) that a proxy carried over HTTP/2 on
/// behalf of an HTTP/1 client; the value is the original version.
pub(crate) const ORIG_PROTO: &str = "l5d-orig-proto";

/// Sends one HTTP/1.1 request from `c` as an HTTP/2 stream (with
/// `l5d-orig-proto` when `mark`: to a meshed endpoint) to an endpoint of
/// `target`, and its response back as HTTP/1.1. Ends with what the
/// response is counted as (its status, and its gRPC status) and whether
/// the client connection may carry another request; or a failure (an
/// answer for the caller to send, or a response cut short: the connection
/// must close). `kept`: the
/// body's length when it was read whole (at the front of `c.buf`), so the
/// request can go again.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn h1_over_h2(
    w: &Rc<Worker>,
    c: &mut Client,
    req: &RequestHead,
    obs: &mut Observer<'_>,
    target: &Dst,
    dial: ConnectConfig,
    request_deadline: Option<Instant>,
    out: &mut Vec<u8>,
    limits: &Limits,
    kept: Option<usize>,
    mark: bool,
) -> Result<(ResponseClass, bool), Failure> {
    let mut parts =
        h2_request(req, obs.key(), mark).map_err(|reason| ProxyError::malformed(400, reason))?;
    obs.route().edit(Message::Request, &mut parts.headers);
    let end = req.framing().is_empty();
    // A kept body of a request that may go again (its method, or a route
    // that retries any) goes whole with each attempt; it is taken from the
    // client's buffer once, here. Another streams from the buffer.
    let idempotent = req.method().is_idempotent() || obs.route().retryable();
    let kept = kept
        .filter(|_| idempotent)
        .map(|n| Bytes::copy_from_slice(&c.buf[..n]));
    let repeatable = end || kept.is_some();
    let mut attempts =
        Attempts::new(target, req.method().is_idempotent(), repeatable).on_route(obs.route());
    let deadline = w.response_deadline(request_deadline);
    // A request that can go again (no body, or a kept one) whose answer
    // could be retried waits for the response head here: an answer the
    // retry is for goes again to another endpoint, unseen by the client.
    // Otherwise the head is awaited as the body streams.
    let (up_body, guard, response, sent_at) = loop {
        let opened =
            h2client::open_stream(w, obs, target, dial, &parts, end, &mut attempts, None).await;
        let Opened {
            response,
            body: up_body,
            guard,
            addr,
            ..
        } = match opened {
            Ok(Opening::Opened(o)) => o,
            // Only an HTTP/2 client stream can be abandoned; this client is
            // HTTP/1.
            Ok(Opening::Abandoned(reason)) => {
                return Err(ProxyError::upstream(format!("stream reset: {reason:?}")).into())
            }
            Err(e) => return Err(e.into()),
        };
        let up_body = match &kept {
            // Sent by a task of its own, as the window allows, while the
            // head is awaited.
            Some(data) => {
                monoio::spawn(h2client::send_kept(data.clone(), None, up_body));
                None
            }
            None => Some(up_body),
        };
        let sent_at = Instant::now();
        if !(repeatable && attempts.would_retry_answer(sent_at)) {
            break (up_body, guard, UpstreamHead::Pending(response), sent_at);
        }
        // A route's per-attempt timeout, while a retry could follow.
        let (attempt_deadline, cut) = attempts.attempt_deadline(sent_at, deadline);
        let not_cut = Cell::new(false);
        let resp = match await_h2_head(response, attempt_deadline, obs, guard.as_ref(), &not_cut)
            .await
        {
            Err(Failure::Answer(e)) if cut && e.timed_out() => {
                match guard.filter(|_| attempts.retry_timed_out(addr, Instant::now())) {
                    Some(g) => {
                        obs.retrying(&g);
                        tracing::debug!(upstream = %addr, "no response within the attempt timeout; retrying on another endpoint");
                        crate::retry::pause(&attempts, deadline).await?;
                        continue;
                    }
                    None => return Err(e.into()),
                }
            }
            head => head?,
        };
        let now = Instant::now();
        if let Some(g) = &guard {
            if attempts.retry_answer(resp.status().as_u16(), addr, now) {
                obs.response_head(Some(g), now - sent_at);
                obs.retrying(g);
                tracing::debug!(upstream = %addr, status = resp.status().as_u16(), "retrying on another endpoint");
                // (The answer's stream is reset as it is dropped.)
                crate::retry::pause(&attempts, deadline).await?;
                continue;
            }
        }
        break (up_body, guard, UpstreamHead::Arrived(resp), sent_at);
    };
    // The client waits for this before sending its body; the peer proxy
    // does not forward `Expect`.
    if req.expect_continue() {
        let (res, _) = c.wr.write_all(&b"HTTP/1.1 100 Continue\r\n\r\n"[..]).await;
        match res {
            Ok(n) => c.meter.wrote(n),
            Err(e) => {
                // The client is gone before any answer: counted as nginx's
                // 499 "client closed request".
                return Err(Failure::Broken {
                    status: 499,
                    reason: format!("writing to the client failed: {e}"),
                    upstream: false,
                });
            }
        }
    }

    let Client {
        rd, wr, buf, meter, ..
    } = c;
    if let Some(data) = &kept {
        buf.drain(..data.len());
    }
    let scanner = BodyScanner::new(req.framing(), limits);
    // Set when the client's body failed (malformed, or the client left):
    // the stream reset that follows is not the endpoint's failure.
    let client_cut = Cell::new(false);
    let body_up = async {
        let Some(mut up_body) = up_body.filter(|_| !end) else {
            return Ok(());
        };
        let r = h1_body_to_h2(scanner, (rd, meter), buf, &mut up_body, None, None, false).await;
        if let Err(cut) = &r {
            client_cut.set(!matches!(cut, StreamCut::Sink(_)));
            up_body.send_reset(Reason::CANCEL);
        }
        r
    };
    // Decided when the response head is written: a worker that began
    // draining meanwhile makes this response the connection's last, and the
    // client must hear so (`Connection: close`) before it sends another.
    let keep_alive = Cell::new(req.keep_alive());
    let down = H2Answer {
        response,
        deadline,
        sent_at,
        guard: guard.as_ref(),
        is_head: req.method() == Method::Head,
        keep_alive: &keep_alive,
        client_cut: &client_cut,
    };
    let (up_res, down_res) =
        crate::h1forward::body_and_answer(body_up, down.relay(w, obs, wr, meter, out), || {
            Err(StreamCut::Sink(Reason::CANCEL))
        })
        .await;
    match (down_res, up_res) {
        (Ok(class), up_res) => Ok((class, keep_alive.get() && up_res.is_ok())),
        // Nothing answered yet, and the client's body is why: its fault,
        // as over HTTP/1 (400 for a malformed body, 499 for a client gone).
        (Err(Failure::Answer(_)), Err(StreamCut::Malformed(e))) => {
            Err(ProxyError::malformed(400, format!("bad request body: {e}")).into())
        }
        (Err(Failure::Answer(_)), Err(StreamCut::Source(e))) => Err(Failure::Broken {
            status: 499,
            reason: format!("client request body failed: {e}"),
            upstream: false,
        }),
        (Err(f), _) => Err(f),
    }
}

/// An upstream stream's response head: still to come, or already read
/// (to decide on a retry).
enum UpstreamHead {
    Pending(client::ResponseFuture),
    Arrived(Response<RecvStream>),
}

/// The response head of an upstream stream, by `deadline`. A failure
/// counts against the endpoint unless `client_cut` says the stream was
/// reset for its client's sake.
async fn await_h2_head(
    response: client::ResponseFuture,
    deadline: Option<Instant>,
    obs: &Observer<'_>,
    guard: Option<&OpenGuard>,
    client_cut: &Cell<bool>,
) -> Result<Response<RecvStream>, Failure> {
    let head = match deadline {
        Some(d) => match monoio::time::timeout_at(d.into(), response).await {
            Ok(r) => r,
            Err(_) => return Err(ProxyError::timeout("upstream response timed out").into()),
        },
        None => response.await,
    };
    head.map_err(|e| {
        if !client_cut.get() {
            obs.endpoint_outcome(guard, false);
        }
        ProxyError::upstream(format!("upstream stream failed: {e}")).into()
    })
}

/// The response to an HTTP/1 request carried over HTTP/2, on its way back.
struct H2Answer<'a> {
    response: UpstreamHead,
    /// When its head must have arrived.
    deadline: Option<Instant>,
    sent_at: Instant,
    guard: Option<&'a OpenGuard>,
    is_head: bool,
    /// Whether the client connection stays open (decided at the head).
    keep_alive: &'a Cell<bool>,
    /// The client's body failed: a failure of the stream it reset is not
    /// counted against the endpoint.
    client_cut: &'a Cell<bool>,
}

impl H2Answer<'_> {
    /// Awaits the response head and relays the response to the HTTP/1
    /// client (re-framed: chunked when it has no length); what it is
    /// counted as (the status sent, and the gRPC status of its head or
    /// trailers).
    async fn relay(
        self,
        w: &Worker,
        obs: &Observer<'_>,
        wr: &mut Wr,
        meter: &ConnMeter,
        out: &mut Vec<u8>,
    ) -> Result<ResponseClass, Failure> {
        let resp = match self.response {
            UpstreamHead::Arrived(r) => r,
            UpstreamHead::Pending(f) => {
                await_h2_head(f, self.deadline, obs, self.guard, self.client_cut).await?
            }
        };
        let now = Instant::now();
        obs.response_head(self.guard, now - self.sent_at);
        let (mut parts, mut from) = resp.into_parts();
        obs.route().edit(Message::Response, &mut parts.headers);
        // An HTTP/1 client that stops reading blocks this stream's writes
        // with no stall to see: the stream never holds the shared upstream
        // connection's window (its stream window bounds it), so it cannot
        // stop the connection's other streams.
        from.flow_control().stop_holding_connection();
        obs.response_length(|| h2client::declared_length(&parts.headers));
        let status = parts.status.as_u16();
        // A trailers-only gRPC answer's status is in its head.
        let head_grpc = h2client::grpc_status(&parts.headers);
        if let Some(t) = obs.tap() {
            t.response(status, now, || crate::tap::h2_fields(&parts.headers));
        }
        let no_body = self.is_head || status == 204 || status == 304;
        // A peer proxy's answer fields (outbound) are consumed.
        if obs.key().direction == Direction::Outbound {
            consume_peer_answer(&mut parts.headers);
        }
        let keep_alive = self.keep_alive.get() && !w.stopping();
        self.keep_alive.set(keep_alive);
        let end = from.is_end_stream();
        let framing = h1_response_head(&parts.headers, status, end, no_body, keep_alive, out);
        // The head goes with the body's first bytes when they are here.
        let to = (wr, meter);
        let trailers_grpc = match h2_body_to_h1(&mut from, framing, to, out, obs.tap()).await {
            Ok(grpc) => grpc,
            Err(cut) if cut.began => {
                return Err(Failure::Broken {
                    status,
                    reason: cut.reason,
                    upstream: !cut.sink,
                });
            }
            Err(cut) => {
                // Nothing reached the client (the head waited for the
                // body's first bytes): it hears a 502 instead of a closed
                // connection.
                out.clear();
                if !self.client_cut.get() {
                    obs.endpoint_outcome(self.guard, false);
                }
                return Err(ProxyError::upstream(cut.reason).into());
            }
        };
        let grpc = trailers_grpc.or(head_grpc);
        obs.endpoint_outcome(self.guard, status < 500 && grpc != Some(GRPC_UNAVAILABLE));
        Ok(ResponseClass {
            status,
            grpc_status: grpc,
            error: None,
            classified: None,
        })
    }
}

/// The HTTP/2 request an HTTP/1.1 request becomes: its fields minus the
/// hop-by-hop ones, `Host` as `:authority`, `te: trailers` kept when the
/// client asked for trailers (the one `TE` HTTP/2 allows, and gRPC
/// servers require it), `l5d-orig-proto` added when `mark` — and then
/// `host` kept too, the same as `:authority` (RFC 9113 §8.3.1 allows it),
/// as linkerd2-proxy's upgrade keeps it: a linkerd2-proxy peer turns the
/// request back into HTTP/1 from its fields, and its application got no
/// `Host` without it.
fn h2_request(
    req: &RequestHead,
    key: &HttpKey,
    mark: bool,
) -> Result<http::request::Parts, String> {
    let authority = match (req.authority(), &key.authority) {
        (Some(a), _) => a.raw.to_string(),
        (None, Some(svc)) => svc.to_string(),
        (None, None) => return Err("a request without an authority".into()),
    };
    let uri = Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(req.path())
        .build()
        .map_err(|e| format!("cannot carry the request target over HTTP/2: {e}"))?;
    let method = http::Method::from_bytes(req.method_str().as_bytes())
        .map_err(|e| format!("bad method: {e}"))?;
    let (mut parts, ()) = Request::builder()
        .method(method)
        .uri(uri)
        .version(http::Version::HTTP_2)
        .body(())
        .map_err(|e| e.to_string())?
        .into_parts();
    let headers = &mut parts.headers;
    headers.reserve(req.headers().len() + 1);
    for (name, value) in req.headers().end_to_end() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) else {
            return Err(format!("field {name:?} cannot be carried over HTTP/2"));
        };
        if name == EXPECT {
            continue;
        }
        headers.append(name, value);
    }
    if asks_for_trailers(req.headers()) {
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    if mark {
        headers.insert(
            HeaderName::from_static(ORIG_PROTO),
            HeaderValue::from_static("HTTP/1.1"),
        );
        if let Some(a) = parts.uri.authority() {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                parts.headers.insert(http::header::HOST, v);
            }
        }
    }
    Ok(parts)
}

/// Whether an HTTP/1 request's `TE` lists `trailers` (RFC 9110 §10.1.4).
fn asks_for_trailers(fields: Headers<'_>) -> bool {
    fields.get_all("te").any(|v| {
        v.split(|&b| b == b',').any(|t| {
            let t = t.split(|&b| b == b';').next().unwrap_or_default();
            t.trim_ascii().eq_ignore_ascii_case(b"trailers")
        })
    })
}

/// How an HTTP/1 message re-framed from HTTP/2 is delimited.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reframe {
    /// Nothing follows the head.
    Empty,
    /// `Content-Length` came with the message: the bytes go as they are.
    Length,
    /// `Transfer-Encoding: chunked` written by us.
    Chunked,
}

/// An HTTP/2 message's fields with `content-length` once: the library
/// refuses a message whose values differ, and identical repeats (which
/// RFC 9110 §8.6 lets it accept) reach an HTTP/1 peer as one field, as
/// the HTTP/1 proxy forwards them.
fn once_length<'a>(
    fields: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
) -> impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)> {
    let mut seen = false;
    fields.filter(move |(name, _)| *name != CONTENT_LENGTH || !std::mem::replace(&mut seen, true))
}

/// Removes a peer proxy's answer fields from a response going to an
/// outbound client ([`crate::l5d_headers::PEER_ANSWER`]); its reason is
/// logged.
pub(crate) fn consume_peer_answer(h: &mut HeaderMap) {
    if let Some(reason) = h.remove(crate::l5d_headers::PROXY_ERROR) {
        tracing::debug!(reason = ?reason, "peer proxy error");
    }
    h.remove(crate::l5d_headers::PROXY_CONNECTION);
}

/// A response whose status forbids `Content-Length` (RFC 9110 §8.6: 1xx
/// and 204; a client that took it for a length would read what follows
/// as a body): the field is left out.
fn no_length(status: u16) -> bool {
    (100..200).contains(&status) || status == 204
}

/// Writes an HTTP/1.1 response head for an HTTP/2 response into `out`.
fn h1_response_head(
    headers: &HeaderMap,
    status: u16,
    end_stream: bool,
    no_body: bool,
    keep_alive: bool,
    out: &mut Vec<u8>,
) -> Reframe {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(canonical_reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    let no_length = no_length(status);
    for (name, value) in once_length(headers.iter()) {
        if name.as_str() == ORIG_PROTO || (no_length && name == CONTENT_LENGTH) {
            continue;
        }
        push_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let framing = if no_body {
        Reframe::Empty
    } else if headers.contains_key(CONTENT_LENGTH) {
        Reframe::Length
    } else if end_stream {
        out.extend_from_slice(b"content-length: 0\r\n");
        Reframe::Empty
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Reframe::Chunked
    };
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// Bytes gathered into one write to an HTTP/1 peer before it is sent:
/// what the stream already holds joins the write, up to this.
const COALESCE_MAX: usize = 64 * 1024;

/// Why a body relayed to an HTTP/1 peer stopped short.
struct BodyCut {
    reason: String,
    /// Whether any bytes had been written to the peer.
    began: bool,
    /// Writing to the peer failed (else the HTTP/2 body did).
    sink: bool,
}

/// Writes an HTTP/2 body to an HTTP/1 peer, chunk-encoding it when asked
/// (HTTP/2 trailers become chunked trailer fields). `out` may hold bytes
/// to send first (the response head): they go in the same write as the
/// body the stream already holds, so a small response is one send (one
/// TCP segment), not a head and then a body. `tap`: the taps of the
/// response whose body this is. Ends with the trailers' gRPC status, if
/// any.
async fn h2_body_to_h1(
    from: &mut RecvStream,
    framing: Reframe,
    (wr, meter): (&mut impl AsyncWriteRent, &ConnMeter),
    out: &mut Vec<u8>,
    tap: Option<&crate::tap::Pending>,
) -> Result<Option<u32>, BodyCut> {
    let mut began = false;
    let cut = |reason: String, began: bool| BodyCut {
        reason,
        began,
        sink: false,
    };
    let mut ended = framing == Reframe::Empty;
    let mut grpc = None;
    loop {
        if !ended {
            ended = take_ready(from, framing, out, tap).map_err(|r| cut(r, began))?;
        }
        if !ended && out.is_empty() {
            // Nothing to send: wait for the stream.
            match from.data().await {
                Some(chunk) => {
                    let chunk =
                        chunk.map_err(|e| cut(format!("upstream body failed: {e}"), began))?;
                    push_chunk(from, framing, &chunk, out, tap);
                    continue;
                }
                None => ended = true,
            }
        }
        // (Trailers are read only where they can go on: a message with a
        // length has none to relay, and gRPC's have no length.)
        if ended && framing == Reframe::Chunked {
            out.extend_from_slice(b"0\r\n");
            if let Ok(Some(trailers)) = from.trailers().await {
                grpc = h2client::grpc_status(&trailers);
                for (name, value) in &trailers {
                    if crate::l5d_headers::trailer_allowed(name.as_str()) {
                        push_field(out, name.as_str().as_bytes(), value.as_bytes());
                    }
                }
                if let Some(t) = tap {
                    t.trailers(|| crate::tap::h2_fields(&trailers));
                }
            }
            out.extend_from_slice(b"\r\n");
        }
        if !out.is_empty() {
            let (res, o) = wr.write_all(std::mem::take(out)).await;
            *out = o;
            out.clear();
            // The peer is gone: nothing more can reach it.
            let n = res.map_err(|e| BodyCut {
                sink: true,
                ..cut(format!("writing to the peer failed: {e}"), true)
            })?;
            meter.wrote(n);
            began = true;
        }
        if ended {
            return Ok(grpc);
        }
    }
}

/// Moves the body bytes `from` already holds (no wait) into `out`,
/// framed, until `out` holds [`COALESCE_MAX`]. True when the body ended.
fn take_ready(
    from: &mut RecvStream,
    framing: Reframe,
    out: &mut Vec<u8>,
    tap: Option<&crate::tap::Pending>,
) -> Result<bool, String> {
    // A pending poll leaves a waker that does nothing; the next wait
    // (`data().await`) registers the task's own.
    let cx = std::task::Context::from_waker(std::task::Waker::noop());
    while out.len() < COALESCE_MAX {
        match from.poll_data(&cx) {
            std::task::Poll::Ready(Some(chunk)) => {
                let chunk = chunk.map_err(|e| format!("upstream body failed: {e}"))?;
                push_chunk(from, framing, &chunk, out, tap);
            }
            std::task::Poll::Ready(None) => return Ok(true),
            std::task::Poll::Pending => break,
        }
    }
    Ok(false)
}

/// Appends one DATA frame's bytes to `out`, framed, and gives their
/// window back (they are copied: the bound on what is held is `out`'s).
fn push_chunk(
    from: &mut RecvStream,
    framing: Reframe,
    chunk: &[u8],
    out: &mut Vec<u8>,
    tap: Option<&crate::tap::Pending>,
) {
    let len = chunk.len();
    // An empty chunk would end a chunked body early.
    if len == 0 {
        return;
    }
    if framing == Reframe::Chunked {
        // (Into a Vec: cannot fail.)
        let _ = write!(out, "{len:x}\r\n");
    }
    out.extend_from_slice(chunk);
    if framing == Reframe::Chunked {
        out.extend_from_slice(b"\r\n");
    }
    if let Some(t) = tap {
        t.data(len);
    }
    let _ = from.flow_control().release_capacity(len);
}

/// Forwards one HTTP/2 stream to an HTTP/1.1 upstream of `target` and the
/// response back as HTTP/2. `orig_proto`: the request came marked with
/// `l5d-orig-proto` (from a peer proxy), so the response is marked too.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn h2_to_h1(
    w: &Rc<Worker>,
    obs: &mut Observer<'_>,
    target: &Dst,
    parts: &http::request::Parts,
    body: RecvStream,
    respond: &mut server::SendResponse<Bytes>,
    dial: ConnectConfig,
    request_deadline: Option<Instant>,
    orig_proto: bool,
) -> Result<ResponseClass, Failure> {
    // An HTTP/2 CONNECT tunnel has no HTTP/1 form here (its bytes would go
    // out as a chunked body of `CONNECT / HTTP/1.1`, which an HTTP/1
    // server reads as requests of their own): refused.
    if parts.method == http::Method::CONNECT {
        let reason = "CONNECT over HTTP/2 to an HTTP/1 service is not supported";
        return Err(ProxyError::malformed(501, reason).into());
    }
    let end = body.is_end_stream();
    let mut body = Some(body).filter(|_| !end);
    // A small body of a request that may go again is kept whole, and
    // sent after each attempt's head (its trailers, which a
    // `content-length` HTTP/1 body cannot carry, are dropped as when it
    // streams).
    let idempotent = parts.method.is_idempotent() || obs.route().retryable();
    let limit = obs.route().replay_limit();
    let kept = h2client::keep_body(target, parts, &mut body, idempotent, limit)
        .await
        .map_err(Failure::Reset)?
        .map(|(data, _)| data);
    let repeatable = end || kept.is_some();
    let mut req = H1Request {
        head: Vec::with_capacity(512),
        framing: Reframe::Empty,
        method: Method::from_bytes(parts.method.as_str().as_bytes()),
        body,
        limits: Limits::default(),
        deadline: w.response_deadline(request_deadline),
    };
    let deadline = req.deadline;
    let mut attempts =
        Attempts::new(target, parts.method.is_idempotent(), repeatable).on_route(obs.route());
    let mut fresh = false;
    let (mut up, addr, guard, attempted) = loop {
        let (up, addr, guard) = match h1forward::checkout(
            w,
            obs.key(),
            target,
            dial,
            !fresh,
            attempts.avoid(),
            obs.route().require_id.as_ref(),
        )
        .await
        {
            Ok(c) => c,
            Err(e) => {
                obs.failed_at(&e);
                return Err(e.into());
            }
        };
        obs.endpoint(addr);
        let rewrite = crate::h1forward::Rewrite {
            host: obs.authority_override(addr).map(|a| &**a),
            strip_l5d: obs.route().l5d_headers,
            strip_dst_override: obs.route().dst_override,
            strip_require_id: obs.route().require_id.is_some(),
            // (Applied to `parts` already.)
            request_edits: None,
            response_edits: None,
        };
        req.framing = h1_request_head(parts, end, rewrite, &mut req.head);
        if let Some(data) = &kept {
            req.head.extend_from_slice(data);
        }
        // The client's stream reset meanwhile (MadeYouReset included): the
        // request does not go.
        if let Some(reason) = h2client::reset_already(respond) {
            return Err(Failure::Reset(reason));
        }
        let reused = up.reused;
        let mut up = up;
        // A request without a body, or with a kept one, can go again
        // after an answer a retry is for: to another endpoint (this
        // connection, its answer unread, is dropped).
        let now = Instant::now();
        let may_retry = repeatable && attempts.would_retry_answer(now);
        // A route's per-attempt timeout, while a retry could follow.
        let (attempt_deadline, cut) = match may_retry {
            true => attempts.attempt_deadline(now, deadline),
            false => (deadline, false),
        };
        req.deadline = attempt_deadline;
        // The client resetting its stream, or losing its connection,
        // cancels the attempt: its upstream connection is dropped (closed)
        // rather than held until the upstream answers.
        let attempt = monoio::select! {
            biased;
            got = h1_attempt(&w.pools.bufs, &mut up, &mut req) => got,
            reset = poll_fn(|cx| respond.poll_reset(cx)) => {
                return Err(Failure::Reset(reset.unwrap_or(Reason::CANCEL)));
            }
        };
        match attempt {
            Ok(Attempted::Answered(got)) if may_retry && guard.is_some() => {
                let (status, now) = (got.resp.status(), Instant::now());
                if !attempts.retry_answer(status, addr, now) {
                    break (up, addr, guard, Attempted::Answered(got));
                }
                let g = guard.as_ref().expect("checked");
                obs.response_head(Some(g), now - got.sent_at);
                obs.retrying(g);
                tracing::debug!(upstream = %addr, status, "retrying on another endpoint");
                w.pools.bufs.put(got.ubuf);
                fresh = false;
                crate::retry::pause(&attempts, deadline).await?;
            }
            Err(e) if cut && e.timed_out() && guard.is_some() => {
                if !attempts.retry_timed_out(addr, Instant::now()) {
                    return Err(e.into());
                }
                let g = guard.as_ref().expect("checked");
                obs.retrying(g);
                tracing::debug!(upstream = %addr, "no response within the attempt timeout; retrying on another endpoint");
                fresh = false;
                crate::retry::pause(&attempts, deadline).await?;
            }
            Ok(attempted) => break (up, addr, guard, attempted),
            // A pooled connection the upstream closed meanwhile: once more
            // on a new one, when nothing of a body was consumed.
            Err(e) if e.retryable() && attempts.retry_stale(reused, e.unsent()) => fresh = true,
            Err(e) => {
                if e.status() >= 502 {
                    obs.endpoint_outcome(guard.as_ref(), false);
                }
                return Err(e.into());
            }
        }
    };
    let (sent_at, answered, body) = match attempted {
        Attempted::Answered(got) => (got.sent_at, Some((got.resp, got.ubuf)), None),
        Attempted::Streaming { sent_at, body } => (sent_at, None, Some(body)),
    };
    // A streamed body goes on while the response is awaited and relayed:
    // an answer that comes before the body's end (an early 413, a duplex
    // application) reaches the client at once, as from the HTTP/1
    // upstream itself.
    let client_cut = Cell::new(false);
    let fd = up.fd;
    let (urd, uwr, umeter) = (&mut up.rd, &mut up.wr, &up.meter);
    let framing = req.framing;
    let pump = async {
        let Some(mut from) = body else {
            return Ok(());
        };
        let r = h2_body_to_h1(&mut from, framing, (uwr, umeter), &mut Vec::new(), None)
            .await
            .map(drop);
        if let Err(cut) = &r {
            // The client's body failed (a reset, a lost connection, a
            // length it broke): what follows is not the endpoint's doing.
            client_cut.set(!cut.sink);
            // The upstream has a truncated body: end its exchange.
            let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
        }
        r
    };
    let reply = H1Reply {
        guard: guard.as_ref(),
        addr,
        sent_at,
        method: req.method,
        limits: &req.limits,
        deadline: req.deadline,
        orig_proto,
        client_cut: &client_cut,
    };
    let answer = reply.relay(w, obs, respond, (urd, umeter), answered);
    let (pump_res, answer_res) = h1forward::body_and_answer(pump, answer, || {
        Err(BodyCut {
            reason: "the response failed first".into(),
            began: false,
            sink: true,
        })
    })
    .await;
    match answer_res {
        Ok((class, reusable, ubuf)) => {
            if reusable && pump_res.is_ok() {
                w.pools.h1.release(obs.key().direction, up, &ubuf);
            }
            w.pools.bufs.put(ubuf);
            let (status, grpc) = (class.status, class.grpc_status);
            obs.endpoint_outcome(
                guard.as_ref(),
                status < 500 && grpc != Some(GRPC_UNAVAILABLE) && class.error.is_none(),
            );
            Ok(class)
        }
        // Nothing answered, because the client's body failed: its stream
        // is reset already, or goes now.
        Err(Failure::Answer(_)) if client_cut.get() => Err(Failure::Reset(Reason::CANCEL)),
        Err(f) => Err(f),
    }
}

/// The answer to one HTTP/2 request from its HTTP/1 upstream, on its way
/// back to the client.
struct H1Reply<'a> {
    guard: Option<&'a OpenGuard>,
    addr: std::net::SocketAddr,
    sent_at: Instant,
    method: Method,
    limits: &'a Limits,
    /// When the response head must have arrived.
    deadline: Option<Instant>,
    orig_proto: bool,
    /// The client's body failed: a failure that follows is not counted
    /// against the endpoint.
    client_cut: &'a Cell<bool>,
}

impl H1Reply<'_> {
    /// Reads the final response head (unless `answered`: read already)
    /// and relays the response to the client; its status (and a gRPC
    /// status in its head), whether the upstream connection may serve
    /// again, and its read buffer.
    async fn relay(
        self,
        w: &Worker,
        obs: &mut Observer<'_>,
        respond: &mut server::SendResponse<Bytes>,
        (urd, umeter): (&mut crate::pool::UpRead, &ConnMeter),
        answered: Option<(ResponseHead, Vec<u8>)>,
    ) -> Result<(ResponseClass, bool, Vec<u8>), Failure> {
        let (resp, mut ubuf) = match answered {
            Some(a) => a,
            None => {
                let (mut resp, mut ubuf) = (ResponseHead::new(), w.pools.bufs.get());
                let ctx = RequestContext {
                    method: self.method,
                    upgrade: false,
                };
                let head = read_final_head(
                    (&mut *urd, umeter),
                    &mut ubuf,
                    &mut resp,
                    ctx,
                    self.limits,
                    self.deadline,
                );
                let read = monoio::select! {
                    biased;
                    r = head => r.map_err(Failure::Answer),
                    reset = poll_fn(|cx| respond.poll_reset(cx)) => {
                        Err(Failure::Reset(reset.unwrap_or(Reason::CANCEL)))
                    }
                };
                if let Err(f) = read {
                    w.pools.bufs.put(ubuf);
                    if let Failure::Answer(e) = &f {
                        if e.status() >= 502 && !self.client_cut.get() {
                            obs.endpoint_outcome(self.guard, false);
                        }
                    }
                    return Err(f);
                }
                (resp, ubuf)
            }
        };
        let now = Instant::now();
        obs.response_head(self.guard, now - self.sent_at);
        obs.response_length(|| content_length(resp.headers()));
        let status = resp.status();
        let grpc = resp
            .headers()
            .get("grpc-status")
            .and_then(crate::error::grpc_code);
        if let Some(t) = obs.tap() {
            t.response(status, now, || crate::tap::h1_fields(resp.headers()));
        }
        let body_framing = if self.method == Method::Head {
            BodyFraming::Empty
        } else {
            resp.framing()
        };
        let end = body_framing.is_empty();
        let mut response = h2_response(&resp, self.orig_proto);
        if obs.key().direction == Direction::Outbound {
            consume_peer_answer(response.headers_mut());
        }
        obs.route().edit(Message::Response, response.headers_mut());
        let Ok(mut to) = respond.send_response(response, end) else {
            w.pools.bufs.put(ubuf);
            return Err(Failure::Reset(Reason::CANCEL));
        };
        let mut reusable = resp.keep_alive() && body_framing != BodyFraming::CloseDelimited;
        let mut class = ResponseClass {
            status,
            grpc_status: grpc,
            error: None,
            classified: None,
        };
        if !end {
            // The body streams with plain reads (no ring buffer waits on a
            // slow client).
            urd.stop_ring();
            let scanner = BodyScanner::new(body_framing, self.limits);
            let stalls = crate::stall::Scope {
                stalls: &w.stalls,
                client: obs.peer(),
            };
            let (stalls, tap) = (Some(stalls), obs.tap());
            let r = h1_body_to_h2(
                scanner,
                (urd, umeter),
                &mut ubuf,
                &mut to,
                stalls,
                tap,
                true,
            )
            .await;
            match r {
                Ok(()) => {}
                // The client reset its stream (or lost its connection): its
                // code is what the observer records; nothing is sent back.
                Err(StreamCut::Sink(reason)) => {
                    tracing::debug!(upstream = %self.addr, ?reason, "the client left mid-response");
                    obs.reset(reason);
                    reusable = false;
                }
                Err(StreamCut::Source(why) | StreamCut::Malformed(why)) => {
                    tracing::debug!(upstream = %self.addr, reason = why, "response body ended early or malformed");
                    to.send_reset(Reason::INTERNAL_ERROR);
                    obs.reset(Reason::INTERNAL_ERROR);
                    reusable = false;
                    class = ResponseClass::broken(status, grpc);
                }
            }
        }
        Ok((class, reusable, ubuf))
    }
}

/// An HTTP/2 request re-framed as HTTP/1.1, ready to send (again, on a new
/// connection, while its body was not taken).
struct H1Request {
    head: Vec<u8>,
    framing: Reframe,
    method: Method,
    /// The client's body, until an attempt takes it.
    body: Option<RecvStream>,
    limits: Limits,
    /// When the response head must have arrived.
    deadline: Option<Instant>,
}

/// The final response head an attempt got back, when the request was
/// sent, and the bytes read past the head.
struct H1Answer {
    resp: ResponseHead,
    sent_at: Instant,
    ubuf: Vec<u8>,
}

/// What an attempt did. (Not boxed: it is moved once per attempt, and a
/// box would be an allocation per request.)
#[allow(clippy::large_enum_variant)]
enum Attempted {
    /// The request went whole (no body, or a kept one) and this answered.
    Answered(H1Answer),
    /// The head went with what had arrived of a streamed body; the rest
    /// of it (`body`) goes while the response is awaited (the one attempt
    /// such a request gets).
    Streaming { sent_at: Instant, body: RecvStream },
}

/// Sends the request on `up`: a whole one, then reads the final response
/// head; a streamed body's head and first bytes only. An error is
/// retryable when nothing of a response arrived.
async fn h1_attempt(
    bufs: &BufferPool,
    up: &mut Upstream,
    req: &mut H1Request,
) -> Result<Attempted, ProxyError> {
    let sent_at = Instant::now();
    // What of a streamed body already arrived goes with the head (one
    // send). Such a request is not repeatable, so this is its only
    // attempt. (A broken stream is left to the body's relay, which sees it
    // too.)
    if let Some(from) = req.body.as_mut() {
        let _ = take_ready(from, req.framing, &mut req.head, None);
    }
    let (res, h) = up.wr.write_all(std::mem::take(&mut req.head)).await;
    req.head = h;
    let n = res.map_err(|e| {
        ProxyError::upstream(format!("sending the request upstream failed: {e}"))
            .or_retry(true)
            .on_write()
    })?;
    up.meter.wrote(n);
    if let Some(body) = req.body.take() {
        return Ok(Attempted::Streaming { sent_at, body });
    }
    let mut ubuf = bufs.get();
    let mut resp = ResponseHead::new();
    let ctx = RequestContext {
        method: req.method,
        upgrade: false,
    };
    let head = read_final_head(
        (&mut up.rd, &up.meter),
        &mut ubuf,
        &mut resp,
        ctx,
        &req.limits,
        req.deadline,
    );
    match head.await {
        Ok(()) => Ok(Attempted::Answered(H1Answer {
            resp,
            sent_at,
            ubuf,
        })),
        Err(e) => {
            bufs.put(ubuf);
            Err(e)
        }
    }
}

/// The `content-length` an HTTP/1 head declares.
pub(crate) fn content_length(headers: Headers<'_>) -> Option<u64> {
    let (_, value) = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))?;
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// The HTTP/2 response head for an HTTP/1 response: its end-to-end fields
/// (names that HTTP/2 cannot carry are dropped), marked with
/// `l5d-orig-proto` when the request was.
fn h2_response(resp: &ResponseHead, orig_proto: bool) -> Response<()> {
    let mut headers = HeaderMap::with_capacity(resp.headers().len() + 1);
    let no_length = no_length(resp.status());
    for (name, value) in resp.headers().end_to_end() {
        if no_length && name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    if orig_proto {
        let version = match resp.version() {
            Version::Http10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        headers.insert(
            HeaderName::from_static(ORIG_PROTO),
            HeaderValue::from_static(version),
        );
    }
    let mut response = Response::new(());
    *response.status_mut() =
        http::StatusCode::from_u16(resp.status()).unwrap_or(http::StatusCode::BAD_GATEWAY);
    *response.headers_mut() = headers;
    response
}

/// What a stalled response's upstream socket is charged: Linux's first
/// receive window (half of `tcp_rmem`'s default 128 KiB), which it does
/// not grow for a reader that stopped.
const UPSTREAM_SOCKET_CHARGE: usize = 64 * 1024;

/// Why an HTTP/1 body relayed onto an HTTP/2 stream stopped short.
#[derive(Debug)]
enum StreamCut {
    /// The HTTP/1 side's body was cut short (its sender left, or reading
    /// failed).
    Source(String),
    /// The HTTP/1 side's body is malformed (its framing).
    Malformed(String),
    /// The HTTP/2 stream was reset (by its peer, with this code) or its
    /// connection failed.
    Sink(Reason),
}

/// Reads one HTTP/1 body (a request's from the client, a response's from
/// the upstream; close-delimited ones end at EOF) and sends its content as
/// DATA frames, chunk framing removed, ending the stream; a chunked body's
/// trailer fields end it as HTTP/2 trailers (connection-specific ones
/// left out). To a client, `stalls` counts its waits for its window;
/// `tap`: the taps of the response whose body this is; `watch_reset`: a
/// response body, ended when its client resets the stream.
async fn h1_body_to_h2(
    mut scanner: BodyScanner,
    (rd, meter): (&mut impl ReadMore, &ConnMeter),
    buf: &mut Vec<u8>,
    to: &mut SendStream<Bytes>,
    stalls: Option<crate::stall::Scope<'_>>,
    tap: Option<&crate::tap::Pending>,
    watch_reset: bool,
) -> Result<(), StreamCut> {
    let mut data = BytesMut::new();
    // The trailer section's lines (the scanner bounds them).
    let mut trailer_lines = Vec::new();
    loop {
        let p = scanner
            .scan_parts(
                buf,
                |r| data.extend_from_slice(&buf[r]),
                |r| trailer_lines.extend_from_slice(&buf[r]),
            )
            .map_err(|e| StreamCut::Malformed(format!("{e}")))?;
        buf.drain(..p.consumed);
        if !data.is_empty() {
            if let Some(t) = tap {
                t.data(data.len());
            }
            // Stalled, the response holds its read buffer and what the
            // upstream socket receives meanwhile.
            let buffered = buf.capacity();
            let mut on_stall = || buffered + UPSTREAM_SOCKET_CHARGE;
            let charge = stalls.map(|scope| crate::stall::Charge {
                scope,
                on_stall: &mut on_stall,
            });
            h2client::send_all(to, data.split().freeze(), false, charge)
                .await
                .map_err(StreamCut::Sink)?;
        }
        if p.done {
            break;
        }
        let cap = buf.capacity().max(16 * 1024);
        let read = rd.read_more(meter, buf, cap, None);
        let read = if watch_reset {
            // A response body: the client resetting its stream (or losing
            // its connection) while the upstream is silent ends it now (the
            // read's bytes are lost with the connection, never reused).
            h2client::unless_reset(to, read)
                .await
                .map_err(StreamCut::Sink)?
        } else {
            read.await
        };
        match read {
            Ok(0) => {
                scanner
                    .finish_at_eof()
                    .map_err(|e| StreamCut::Source(format!("the peer closed early: {e}")))?;
                break;
            }
            Ok(_) => {}
            Err(e) => return Err(StreamCut::Source(format!("reading the body failed: {e}"))),
        }
    }
    let trailers = h2_trailers(&trailer_lines);
    if trailers.is_empty() {
        return to
            .send_data(Bytes::new(), true)
            .map_err(|e| StreamCut::Sink(e.reason().unwrap_or(Reason::CANCEL)));
    }
    if let Some(t) = tap {
        t.trailers(|| crate::tap::h2_fields(&trailers));
    }
    to.send_trailers(trailers)
        .map_err(|e| StreamCut::Sink(e.reason().unwrap_or(Reason::CANCEL)))
}

/// An HTTP/1 trailer section's lines as HTTP/2 trailers: names lowercased;
/// fields HTTP/2 cannot carry left out, and those a trailer must not
/// (connection-specific ones, which HTTP/2 forbids, framing, routing,
/// `l5d-client-id`: [`crate::l5d_headers::trailer_allowed`]).
fn h2_trailers(lines: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in ringmesh_protocols::http1::trailer_fields(lines) {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        else {
            continue;
        };
        if crate::l5d_headers::trailer_allowed(name.as_str()) {
            map.append(name, value);
        }
    }
    map
}

/// Reads the final response head (skipping interim 1xx ones, at most
/// [`h1forward::MAX_INTERIM_RESPONSES`]) into `resp`.
async fn read_final_head(
    up: (&mut impl ReadMore, &ConnMeter),
    buf: &mut Vec<u8>,
    resp: &mut ResponseHead,
    ctx: RequestContext,
    limits: &Limits,
    deadline: Option<Instant>,
) -> Result<(), ProxyError> {
    let (rd, meter) = up;
    let first_byte = h1forward::FirstByte::new(None);
    for _ in 0..=h1forward::MAX_INTERIM_RESPONSES {
        h1forward::read_response_head(
            (&mut *rd, meter),
            buf,
            resp,
            ctx,
            limits,
            deadline,
            &first_byte,
        )
        .await?;
        if !resp.is_interim() {
            return Ok(());
        }
    }
    Err(h1forward::too_many_interim())
}

/// Writes the HTTP/1.1 request head for an HTTP/2 request into `out`: the
/// `:authority` as `Host` (or `host`, the endpoint's authority override),
/// fields as they came, and a framing field when the stream has a body
/// without `Content-Length` (chunked).
fn h1_request_head(
    parts: &http::request::Parts,
    end_stream: bool,
    rewrite: crate::h1forward::Rewrite<'_>,
    out: &mut Vec<u8>,
) -> Reframe {
    let host = rewrite.host;
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let given = parts.headers.get(http::header::HOST);
    match (host, parts.uri.authority(), given) {
        (Some(h), _, _) => push_field(out, b"host", h.as_bytes()),
        (None, Some(a), _) => push_field(out, b"host", a.as_str().as_bytes()),
        (None, None, Some(h)) => push_field(out, b"host", h.as_bytes()),
        // No authority: an empty one (RFC 9112 §3.2; an HTTP/1 server
        // refuses a request without the field).
        (None, None, None) => push_field(out, b"host", b""),
    }
    for (name, value) in once_length(parts.headers.iter()) {
        if name == http::header::HOST
            || name.as_str() == ORIG_PROTO
            || (rewrite.strip_l5d && crate::l5d_headers::is_l5d_header(name.as_str()))
            || (rewrite.strip_dst_override && name.as_str() == crate::l5d_headers::DST_OVERRIDE)
            || (rewrite.strip_require_id && name.as_str() == crate::l5d_headers::REQUIRE_ID)
        {
            continue;
        }
        push_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let framing = if parts.headers.contains_key(CONTENT_LENGTH) {
        if end_stream {
            Reframe::Empty
        } else {
            Reframe::Length
        }
    } else if end_stream {
        // Methods that carry content announce an empty one.
        if matches!(
            parts.method,
            http::Method::POST | http::Method::PUT | http::Method::PATCH
        ) {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        Reframe::Empty
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Reframe::Chunked
    };
    out.extend_from_slice(b"\r\n");
    framing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: Request<()>) -> http::request::Parts {
        req.into_parts().0
    }

    #[test]
    fn an_http1_request_becomes_an_http2_one_marked_only_when_asked() {
        use ringmesh_admin::telemetry::{NoTlsReason, TlsStatus};
        let key = HttpKey {
            direction: Direction::Outbound,
            tls: TlsStatus::NoIdentity(NoTlsReason::NoProxyIdentity),
            authority: None,
            target: None,
            dst_labels: None,
            route: None,
            policy: None,
        };
        let head = |text: &str| {
            let mut req = RequestHead::new();
            req.parse(text.as_bytes(), &Limits::default()).unwrap();
            req
        };
        let grpc = head(
            "POST /pkg.Svc/Call HTTP/1.1\r\nHost: web:80\r\nTE: gzip, trailers;q=1\r\n\
             Connection: te\r\nContent-Length: 0\r\n\r\n",
        );
        for mark in [true, false] {
            let p = h2_request(&grpc, &key, mark).unwrap();
            assert_eq!(p.uri, "http://web:80/pkg.Svc/Call");
            assert_eq!(
                p.headers.get_all("te").iter().collect::<Vec<_>>(),
                ["trailers"]
            );
            assert!(p.headers.get("connection").is_none());
            assert_eq!(p.headers.contains_key(ORIG_PROTO), mark);
            // Marked for a peer proxy: `host` too, as `:authority`.
            let host = p.headers.get_all("host").iter().collect::<Vec<_>>();
            assert_eq!(host, if mark { vec!["web:80"] } else { vec![] });
        }
        for te in ["", "TE: gzip\r\nConnection: te\r\n", "TE: trailersx\r\n"] {
            let req = head(&format!("GET / HTTP/1.1\r\nHost: web\r\n{te}\r\n"));
            let p = h2_request(&req, &key, false).unwrap();
            assert!(p.headers.get("te").is_none(), "{te:?}");
        }
    }

    #[test]
    fn h2_request_becomes_an_http1_head() {
        let p = parts(
            Request::builder()
                .method("POST")
                .uri("http://web.test:8080/a?b=c")
                .header("x-one", "1")
                .header(ORIG_PROTO, "HTTP/1.1")
                .body(())
                .unwrap(),
        );
        let mut out = Vec::new();
        assert!(h1_request_head(&p, false, Default::default(), &mut out) == Reframe::Chunked);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "POST /a?b=c HTTP/1.1\r\nhost: web.test:8080\r\nx-one: 1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert!(h1_request_head(&p, true, Default::default(), &mut out) == Reframe::Empty);
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("content-length: 0\r\n"));
    }

    /// An endpoint's authority override is the `Host`; Linkerd's request
    /// headers go when the route honoured them.
    #[test]
    fn h2_request_rewritten_for_its_endpoint() {
        let p = parts(
            Request::builder()
                .uri("http://web.test:8080/a")
                .header("l5d-retry-limit", "1")
                .header("l5d-timeout", "1s")
                .header("x-one", "1")
                .header("l5d-require-id", "web.ns")
                .body(())
                .unwrap(),
        );
        let mut out = Vec::new();
        let rewrite = crate::h1forward::Rewrite {
            host: Some("web.remote.example:4143"),
            strip_l5d: true,
            strip_dst_override: false,
            strip_require_id: true,
            request_edits: None,
            response_edits: None,
        };
        h1_request_head(&p, true, rewrite, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /a HTTP/1.1\r\nhost: web.remote.example:4143\r\nx-one: 1\r\n\r\n"
        );
        let mut req = crate::h2client::request_head(&p);
        crate::h2client::with_authority(&mut req, "web.remote.example:4143");
        assert_eq!(req.uri(), "http://web.remote.example:4143/a");
    }

    #[test]
    fn h2_response_becomes_an_http1_head() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("b"));
        h.insert(ORIG_PROTO, HeaderValue::from_static("HTTP/1.1"));
        let mut out = Vec::new();
        assert!(h1_response_head(&h, 200, false, false, true, &mut out) == Reframe::Chunked);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "HTTP/1.1 200 OK\r\nx-a: b\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert!(h1_response_head(&h, 404, false, false, false, &mut out) == Reframe::Length);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.ends_with("content-length: 5\r\nconnection: close\r\n\r\n"));
        assert!(
            h1_response_head(&HeaderMap::new(), 204, true, true, true, &mut out) == Reframe::Empty
        );
    }
}
