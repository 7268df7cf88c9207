//! A small gRPC client for the control core: unary and server-streaming
//! calls with prost messages over one HTTP/2 connection (monoio-http).
//!
//! # What it owns
//!
//! - A [`Channel`]: one HTTP/2 connection to a control-plane service, its
//!   connection task spawned on the current (control core's) runtime, over
//!   any monoio transport ([`Channel::handshake`]: plain TCP today, the
//!   engine's TLS `Transport` when the identity service is reached by name).
//! - The call: `POST`, `content-type: application/grpc`, `te: trailers`,
//!   `grpc-timeout` when the call has a deadline, the request as one
//!   length-prefixed message ([`unary`], [`server_streaming`]).
//! - The response: HTTP status, the 5-byte message framing
//!   ([`MessageDecoder`]: uncompressed only, at most [`MAX_MESSAGE`] bytes
//!   a message, refused from its length prefix before any of it is
//!   buffered), and the final status from the trailers, or from the headers
//!   of a Trailers-Only response.
//!
//! # What it must not do
//!
//! No tonic and no tokio: this runs on monoio. No compression (none is
//! offered, so a compressed message is a protocol error), no retries and no
//! reconnection: a call fails with a [`GrpcError`] and the caller (the
//! Certify loop, the Destination and policy watches) decides when to try
//! again and whether to make a new channel ([`Channel::is_closed`]).
//! Requests are small control-plane messages, sent whole (h2 queues what
//! the window does not yet allow).
//!
//! Status codes for failures on this side follow gRPC's
//! `doc/http-grpc-status-mapping.md` and `doc/PROTOCOL-HTTP2.md`: an HTTP
//! status other than 200 maps to a code, a reset stream's reason maps to a
//! code, a broken connection is `UNAVAILABLE`, a missed deadline
//! `DEADLINE_EXCEEDED`.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE, TE, USER_AGENT};
use http::uri::Authority;
use http::{Method, Request, StatusCode};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use monoio_http::h2::{client, Reason, RecvStream};

/// Largest response message accepted (gRPC's usual default): a longer
/// length prefix fails the call before the message is read.
pub(crate) const MAX_MESSAGE: usize = 4 << 20;

/// Largest header list accepted from a control-plane service.
const MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;

/// gRPC status codes (`grpc/doc/statuscodes.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    /// The code a `grpc-status` number stands for (an unknown number is
    /// `UNKNOWN`, as the spec says).
    pub(crate) fn from_number(n: u32) -> Self {
        use Code::*;
        match n {
            0 => Ok,
            1 => Cancelled,
            3 => InvalidArgument,
            4 => DeadlineExceeded,
            5 => NotFound,
            6 => AlreadyExists,
            7 => PermissionDenied,
            8 => ResourceExhausted,
            9 => FailedPrecondition,
            10 => Aborted,
            11 => OutOfRange,
            12 => Unimplemented,
            13 => Internal,
            14 => Unavailable,
            15 => DataLoss,
            16 => Unauthenticated,
            _ => Unknown,
        }
    }

    /// The canonical name (`UNAVAILABLE`), as servers and logs spell it.
    pub(crate) fn as_str(self) -> &'static str {
        use Code::*;
        match self {
            Ok => "OK",
            Cancelled => "CANCELLED",
            Unknown => "UNKNOWN",
            InvalidArgument => "INVALID_ARGUMENT",
            DeadlineExceeded => "DEADLINE_EXCEEDED",
            NotFound => "NOT_FOUND",
            AlreadyExists => "ALREADY_EXISTS",
            PermissionDenied => "PERMISSION_DENIED",
            ResourceExhausted => "RESOURCE_EXHAUSTED",
            FailedPrecondition => "FAILED_PRECONDITION",
            Aborted => "ABORTED",
            OutOfRange => "OUT_OF_RANGE",
            Unimplemented => "UNIMPLEMENTED",
            Internal => "INTERNAL",
            Unavailable => "UNAVAILABLE",
            DataLoss => "DATA_LOSS",
            Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// The code for a response whose HTTP status is not 200
    /// (`http-grpc-status-mapping.md`).
    fn from_http(status: StatusCode) -> Self {
        match status.as_u16() {
            400 => Code::Internal,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            429 | 502 | 503 | 504 => Code::Unavailable,
            _ => Code::Unknown,
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A call that did not end in `OK`: the server's status and message, or
/// what went wrong on this side, under the code gRPC gives it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub(crate) struct GrpcError {
    pub(crate) code: Code,
    pub(crate) message: String,
}

impl GrpcError {
    pub(crate) fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn deadline() -> Self {
        Self::new(Code::DeadlineExceeded, "the deadline passed")
    }

    /// An HTTP/2 failure: the stream reset (by the server or the
    /// library), or the connection gone.
    fn h2(e: &monoio_http::h2::Error) -> Self {
        let code = match e.reason() {
            _ if e.is_io() || e.is_go_away() => Code::Unavailable,
            Some(Reason::REFUSED_STREAM) => Code::Unavailable,
            Some(Reason::CANCEL) => Code::Cancelled,
            Some(Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
            Some(Reason::INADEQUATE_SECURITY) => Code::PermissionDenied,
            _ => Code::Internal,
        };
        Self::new(code, format!("http/2: {e}"))
    }
}

/// One HTTP/2 connection to a gRPC service. Calls on it may run at once
/// (each is a stream); a channel whose connection ended reports
/// [`Channel::is_closed`] and is replaced by the caller.
pub(crate) struct Channel {
    send: client::SendRequest<Bytes>,
    authority: Authority,
    closed: Rc<Cell<bool>>,
}

impl Channel {
    /// Connects to `addr` over plain TCP and does the HTTP/2 handshake,
    /// both before `deadline`. `addr` is the `:authority` of the calls.
    /// The address to connect to for `addr` now: itself, or one of its
    /// name's addresses (drawn at random, so a headless service's pods
    /// share the proxies), by `deadline`.
    pub(crate) async fn resolve(
        addr: &crate::config::ControlAddr,
        deadline: Instant,
    ) -> Result<SocketAddr, GrpcError> {
        Self::resolve_with_hosts(
            addr,
            deadline,
            std::path::Path::new(ringmesh_discovery::hosts::SYSTEM_HOSTS_FILE),
        )
        .await
    }

    /// [`Self::resolve`], looking in `hosts` (an `/etc/hosts`-format file)
    /// before DNS, as glibc's `files dns` and hickory's default do: a
    /// control-plane name from `hostAliases` or a hosts file resolves.
    /// The file is read at each lookup (on the control core, when a
    /// control-plane connection is made), so an edited one is seen.
    async fn resolve_with_hosts(
        addr: &crate::config::ControlAddr,
        deadline: Instant,
        hosts: &std::path::Path,
    ) -> Result<SocketAddr, GrpcError> {
        use crate::config::ControlAddr;
        use ringmesh_discovery::dns::{DnsConfig, DnsResolver};
        let (host, port, dns) = match addr {
            ControlAddr::Ip(a) => return Ok(*a),
            ControlAddr::Name { host, port, .. } if addr.is_loopback() => {
                let _ = host;
                return Ok(SocketAddr::from(([127, 0, 0, 1], *port)));
            }
            ControlAddr::Name { host, port, dns } => (host, *port, dns),
        };
        let listed = ringmesh_discovery::hosts::HostsFile::load(hosts)
            .map(|file| file.lookup(host))
            .unwrap_or_default();
        if !listed.is_empty() {
            return Ok(SocketAddr::new(
                listed[fastrand::usize(..listed.len())],
                port,
            ));
        }
        let mut cfg = dns.clone();
        if cfg.servers.is_empty() {
            let sys = DnsConfig::system();
            cfg.servers = sys.servers;
            cfg.search = sys.search;
            cfg.ndots = sys.ndots;
        }
        let lookup = DnsResolver::new(cfg);
        let found = monoio::time::timeout_at(
            monoio::time::Instant::from_std(deadline),
            lookup.resolve(host),
        )
        .await
        .map_err(|_| GrpcError::new(Code::Unavailable, format!("resolving {host}: timed out")))?
        .map_err(|e| GrpcError::new(Code::Unavailable, format!("resolving {host}: {e}")))?;
        let ip = found
            .addrs
            .get(fastrand::usize(..found.addrs.len().max(1)))
            .ok_or_else(|| GrpcError::new(Code::Unavailable, format!("{host} has no address")))?;
        Ok(SocketAddr::new(*ip, port))
    }

    pub(crate) async fn connect(addr: SocketAddr, deadline: Instant) -> Result<Self, GrpcError> {
        let authority = Authority::try_from(addr.to_string())
            .map_err(|e| GrpcError::new(Code::Internal, format!("authority {addr}: {e}")))?;
        let connecting = async {
            let tcp = TcpStream::connect(addr).await.map_err(|e| {
                GrpcError::new(Code::Unavailable, format!("connect to {addr}: {e}"))
            })?;
            // Requests are single small writes; do not hold them back.
            let _ = tcp.set_nodelay(true);
            Self::handshake(tcp, addr, authority).await
        };
        match monoio::time::timeout_at(monoio::time::Instant::from_std(deadline), connecting).await
        {
            Ok(r) => r,
            Err(_) => Err(GrpcError::new(
                Code::DeadlineExceeded,
                format!("connecting to {addr} timed out"),
            )),
        }
    }

    /// Connects to `addr` over TLS, the server proving `name` (the
    /// identity service by its `_SVC_NAME`), then the HTTP/2 handshake.
    pub(crate) async fn connect_tls(
        addr: SocketAddr,
        name: &ringmesh_identity::Name,
        tls: Arc<rustls::ClientConfig>,
        deadline: Instant,
    ) -> Result<Self, GrpcError> {
        let authority = Authority::try_from(format!("{}:{}", name.as_str(), addr.port()))
            .map_err(|e| GrpcError::new(Code::Internal, format!("authority {name}: {e}")))?;
        let connecting = async {
            let tcp = TcpStream::connect(addr).await.map_err(|e| {
                GrpcError::new(Code::Unavailable, format!("connect to {addr}: {e}"))
            })?;
            let _ = tcp.set_nodelay(true);
            let t = crate::transport::Transport::tls_connect(tcp, tls, name)
                .await
                .map_err(|e| {
                    GrpcError::new(Code::Unavailable, format!("TLS to {name} at {addr}: {e}"))
                })?;
            Self::handshake(t, addr, authority).await
        };
        match monoio::time::timeout_at(monoio::time::Instant::from_std(deadline), connecting).await
        {
            Ok(r) => r,
            Err(_) => Err(GrpcError::new(
                Code::DeadlineExceeded,
                format!("connecting to {name} at {addr} timed out"),
            )),
        }
    }

    /// The HTTP/2 handshake on a connected transport (TCP, TLS: anything
    /// monoio reads and writes) to `peer`; spawns the connection's task on
    /// the current runtime. Calls carry `authority` as `:authority`. The
    /// server's frames are read through the data path's upstream guard: a
    /// broken or hostile control plane flooding frames that do no work is
    /// cut off (its calls fail, and their callers reconnect with backoff)
    /// instead of holding the control core.
    pub(crate) async fn handshake<I>(
        io: I,
        peer: SocketAddr,
        authority: Authority,
    ) -> Result<Self, GrpcError>
    where
        I: AsyncReadRent + AsyncWriteRent + Unpin + 'static,
    {
        let mut builder = client::Builder::new();
        builder
            .max_header_list_size(MAX_HEADER_LIST_SIZE)
            .enable_push(false);
        let io = crate::h2guarded::GuardedIo::upstream(io, peer, None);
        let (send, conn) = builder
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|e| GrpcError::h2(&e))?;
        let closed = Rc::new(Cell::new(false));
        let done = closed.clone();
        let peer = authority.clone();
        monoio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "gRPC connection ended");
            }
            done.set(true);
        });
        Ok(Self {
            send,
            authority,
            closed,
        })
    }

    /// The connection ended (or failed): no call on this channel can
    /// succeed any more.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.get() || self.send.has_conn_error()
    }

    /// Opens a stream for `path` and sends `req` as its only message.
    async fn start<Req: prost::Message>(
        &self,
        path: &str,
        req: &Req,
        deadline: Option<Instant>,
    ) -> Result<(http::response::Parts, RecvStream), GrpcError> {
        let mut head = Request::builder()
            .method(Method::POST)
            .version(http::Version::HTTP_2)
            .uri(format!("http://{}{path}", self.authority))
            .header(CONTENT_TYPE, "application/grpc")
            .header(TE, "trailers")
            .header(USER_AGENT, concat!("ringmesh/", env!("CARGO_PKG_VERSION")));
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(GrpcError::deadline());
            }
            head = head.header("grpc-timeout", timeout_header(left));
        }
        let head = head
            .body(())
            .map_err(|e| GrpcError::new(Code::Internal, format!("request {path}: {e}")))?;
        let mut send = self
            .send
            .clone()
            .ready()
            .await
            .map_err(|e| GrpcError::h2(&e))?;
        let (response, mut body) = send
            .send_request(head, false)
            .map_err(|e| GrpcError::h2(&e))?;
        body.send_data(encode(req), true)
            .map_err(|e| GrpcError::h2(&e))?;
        let (parts, recv) = response.await.map_err(|e| GrpcError::h2(&e))?.into_parts();
        Ok((parts, recv))
    }
}

/// Calls a unary method: `req` out, exactly one message back, `OK` in the
/// trailers, all before `deadline` (sent as `grpc-timeout` too, so the
/// server can give up when this side will).
pub(crate) async fn unary<Req, Resp>(
    channel: &Channel,
    path: &str,
    req: Req,
    deadline: Instant,
) -> Result<Resp, GrpcError>
where
    Req: prost::Message,
    Resp: prost::Message + Default,
{
    let call = async {
        let mut stream = server_streaming::<Req, Resp>(channel, path, req, Some(deadline)).await?;
        let resp = stream
            .message()
            .await?
            .ok_or_else(|| GrpcError::new(Code::Internal, "no response message"))?;
        match stream.message().await? {
            None => Ok(resp),
            Some(_) => Err(GrpcError::new(
                Code::Internal,
                "more than one response message to a unary call",
            )),
        }
    };
    within(Some(deadline), call).await
}

/// Calls a server-streaming method (Destination `Get`, policy `Watch`):
/// `req` out, then the messages as they come ([`Streaming::message`]).
/// `deadline`, if any, bounds the whole call, the stream's messages
/// included.
pub(crate) async fn server_streaming<Req, Resp>(
    channel: &Channel,
    path: &str,
    req: Req,
    deadline: Option<Instant>,
) -> Result<Streaming<Resp>, GrpcError>
where
    Req: prost::Message,
    Resp: prost::Message + Default,
{
    let (parts, body) = within(deadline, channel.start(path, &req, deadline)).await?;
    if parts.status != StatusCode::OK {
        return Err(GrpcError::new(
            Code::from_http(parts.status),
            format!("HTTP status {}", parts.status),
        ));
    }
    // Trailers-Only: the status came in the headers, no messages follow.
    if parts.headers.contains_key("grpc-status") {
        let end = status(&parts.headers);
        return match end {
            Ok(()) => Ok(Streaming::ended(deadline)),
            Err(e) => Err(e),
        };
    }
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/grpc") {
        return Err(GrpcError::new(
            Code::Unknown,
            format!("content-type {content_type:?} is not gRPC"),
        ));
    }
    Ok(Streaming {
        body: Some(body),
        decoder: MessageDecoder::new(MAX_MESSAGE),
        end: None,
        deadline,
        _message: PhantomData,
    })
}

/// Runs `f` before `deadline`, if any.
async fn within<T>(
    deadline: Option<Instant>,
    f: impl std::future::Future<Output = Result<T, GrpcError>>,
) -> Result<T, GrpcError> {
    match deadline {
        None => f.await,
        Some(d) => monoio::time::timeout_at(monoio::time::Instant::from_std(d), f)
            .await
            .unwrap_or_else(|_| Err(GrpcError::deadline())),
    }
}

/// The response messages of a call, then its status.
pub(crate) struct Streaming<M> {
    /// `None` once the call ended (its status read, or failed); dropping
    /// an unfinished stream resets it.
    body: Option<RecvStream>,
    decoder: MessageDecoder,
    end: Option<Result<(), GrpcError>>,
    deadline: Option<Instant>,
    _message: PhantomData<fn() -> M>,
}

impl<M: prost::Message + Default> Streaming<M> {
    fn ended(deadline: Option<Instant>) -> Self {
        Self {
            body: None,
            decoder: MessageDecoder::new(MAX_MESSAGE),
            end: Some(Ok(())),
            deadline,
            _message: PhantomData,
        }
    }

    /// The next message; `Ok(None)` once the call ended with `OK`, the
    /// call's error if it ended otherwise (and again on every later call).
    pub(crate) async fn message(&mut self) -> Result<Option<M>, GrpcError> {
        let r = within(self.deadline, self.next()).await;
        if let Err(e) = &r {
            if self.end.is_none() {
                self.end = Some(Err(e.clone()));
                self.body = None;
            }
        }
        r
    }

    async fn next(&mut self) -> Result<Option<M>, GrpcError> {
        loop {
            if let Some(end) = &self.end {
                return end.clone().map(|()| None);
            }
            if let Some(msg) = self.decoder.decode()? {
                return M::decode(msg).map(Some).map_err(|e| {
                    GrpcError::new(Code::Internal, format!("undecodable message: {e}"))
                });
            }
            let Some(body) = self.body.as_mut() else {
                return Ok(None);
            };
            match body.data().await {
                Some(Ok(chunk)) => {
                    // Taken off the window now: the decoder bounds what is
                    // held (one message, MAX_MESSAGE at most).
                    let _ = body.flow_control().release_capacity(chunk.len());
                    self.decoder.push(&chunk);
                }
                Some(Err(e)) => return Err(GrpcError::h2(&e)),
                None => {
                    if !self.decoder.is_empty() {
                        return Err(GrpcError::new(
                            Code::Internal,
                            "the stream ended inside a message",
                        ));
                    }
                    let end = match body.trailers().await {
                        Ok(Some(trailers)) => status(&trailers),
                        Ok(None) => Err(GrpcError::new(
                            Code::Internal,
                            "the stream ended without a grpc-status",
                        )),
                        Err(e) => Err(GrpcError::h2(&e)),
                    };
                    self.body = None;
                    self.end = Some(end);
                }
            }
        }
    }
}

/// The call's status from trailers (or Trailers-Only headers): `OK`, or
/// the code with `grpc-message` percent-decoded.
fn status(headers: &HeaderMap) -> Result<(), GrpcError> {
    let Some(value) = headers.get("grpc-status") else {
        return Err(GrpcError::new(
            Code::Internal,
            "the trailers have no grpc-status",
        ));
    };
    let code = value
        .to_str()
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .map_or(Code::Unknown, Code::from_number);
    if code == Code::Ok {
        return Ok(());
    }
    let message = headers
        .get("grpc-message")
        .map(|m| percent_decode(m.as_bytes()))
        .unwrap_or_default();
    Err(GrpcError::new(code, message))
}

/// `grpc-message` is percent-encoded UTF-8; a malformed escape is kept as
/// it is (the message is for people, never worth failing over).
fn percent_decode(raw: &[u8]) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            if let (Some(h), Some(l)) = (hex(raw[i + 1]), hex(raw[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `grpc-timeout`: at most 8 digits and a unit; rounded up, so the server
/// never gives up before the client.
fn timeout_header(left: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let ms = left.as_nanos().div_ceil(1_000_000);
    let value = if ms <= MAX {
        format!("{ms}m")
    } else {
        let s = left.as_nanos().div_ceil(1_000_000_000);
        if s <= MAX {
            format!("{s}S")
        } else {
            format!("{}H", s.div_ceil(3600).min(MAX))
        }
    };
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("99999999H"))
}

/// A message with its 5-byte prefix: not compressed, big-endian length.
fn encode<M: prost::Message>(msg: &M) -> Bytes {
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.extend_from_slice(&[0]);
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    // Cannot fail: the buffer has room for `encoded_len` bytes.
    let _ = msg.encode(&mut buf);
    buf.freeze()
}

/// Splits a response body into messages: a flag byte (0: not compressed),
/// a 4-byte big-endian length, the message. A length over the limit is
/// refused as soon as the prefix is in, before the message is buffered.
pub(crate) struct MessageDecoder {
    buf: BytesMut,
    max: usize,
}

impl MessageDecoder {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
        }
    }

    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Nothing is held (no part of a message).
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next whole message, if it is in.
    pub(crate) fn decode(&mut self) -> Result<Option<Bytes>, GrpcError> {
        let Some(prefix) = self.buf.get(..5) else {
            return Ok(None);
        };
        match prefix[0] {
            0 => {}
            1 => {
                return Err(GrpcError::new(
                    Code::Internal,
                    "compressed message, but no compression was offered",
                ))
            }
            flag => {
                return Err(GrpcError::new(
                    Code::Internal,
                    format!("message flag {flag} is not 0 or 1"),
                ))
            }
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > self.max {
            return Err(GrpcError::new(
                Code::ResourceExhausted,
                format!("a message of {len} bytes is over the limit of {}", self.max),
            ));
        }
        if self.buf.len() < 5 + len {
            // Not reserved ahead: the buffer grows with what arrives, not
            // with what the prefix claims.
            return Ok(None);
        }
        self.buf.advance(5);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use monoio::net::TcpListener;
    use monoio_http::h2::server;

    use super::*;
    use crate::testing::{both_drivers, eventually, PyServer};

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn control_names_are_looked_up_in_the_hosts_file_first() {
        let dir = std::env::temp_dir().join(format!("ringmesh-cp-hosts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hosts = dir.join("hosts");
        std::fs::write(
            &hosts,
            "# aliases\n192.0.2.9 identity.cp.test identity-alias\n",
        )
        .unwrap();
        // DNS would fail: nothing listens on port 1.
        let dns = ringmesh_discovery::dns::DnsConfig {
            servers: vec!["127.0.0.1:1".parse().unwrap()],
            timeout: Duration::from_millis(200),
            attempts: 1,
            ..Default::default()
        };
        let named = |host: &str| crate::config::ControlAddr::Name {
            host: host.into(),
            port: 8080,
            dns: dns.clone(),
        };
        both_drivers(async || {
            let deadline = Instant::now() + Duration::from_secs(2);
            for host in ["identity.cp.test", "IDENTITY-alias", "identity.cp.test."] {
                let got = Channel::resolve_with_hosts(&named(host), deadline, &hosts).await;
                assert_eq!(got.unwrap(), "192.0.2.9:8080".parse().unwrap(), "{host}");
            }
            let unlisted = Channel::resolve_with_hosts(&named("other.cp.test"), deadline, &hosts)
                .await
                .unwrap_err();
            assert!(
                unlisted.message.contains("resolving other.cp.test"),
                "{unlisted:?}"
            );
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn decoder_splits_messages_across_and_within_chunks() {
        let mut d = MessageDecoder::new(MAX_MESSAGE);
        let mut wire = framed(b"hello");
        wire.extend(framed(b""));
        wire.extend(framed(b"world!"));
        // One byte at a time: each message comes out once it is whole.
        let mut out = Vec::new();
        for b in &wire {
            d.push(&[*b]);
            while let Some(m) = d.decode().unwrap() {
                out.push(m);
            }
        }
        assert_eq!(out, [&b"hello"[..], b"", b"world!"]);
        assert!(d.is_empty());
        // All in one chunk.
        d.push(&wire);
        assert_eq!(d.decode().unwrap().unwrap(), &b"hello"[..]);
        assert_eq!(d.decode().unwrap().unwrap(), &b""[..]);
        assert_eq!(d.decode().unwrap().unwrap(), &b"world!"[..]);
        assert_eq!(d.decode().unwrap(), None);
    }

    #[test]
    fn decoder_refuses_an_oversized_length_prefix_before_the_message() {
        let mut d = MessageDecoder::new(MAX_MESSAGE);
        d.push(&[0, 0, 0x40, 0, 0]); // exactly the limit: waits for it
        assert_eq!(d.decode().unwrap(), None);
        let mut d = MessageDecoder::new(MAX_MESSAGE);
        d.push(&[0, 0, 0x40, 0, 1]); // one byte over, nothing of it sent
        let e = d.decode().unwrap_err();
        assert_eq!(e.code, Code::ResourceExhausted);
        assert!(e.message.contains("4194305"), "{e}");
        let mut d = MessageDecoder::new(MAX_MESSAGE);
        d.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(d.decode().unwrap_err().code, Code::ResourceExhausted);
    }

    #[test]
    fn decoder_refuses_compressed_and_unknown_flags() {
        let mut d = MessageDecoder::new(MAX_MESSAGE);
        d.push(&[1, 0, 0, 0, 1, 0]);
        let e = d.decode().unwrap_err();
        assert_eq!(e.code, Code::Internal);
        assert!(e.message.contains("compressed"), "{e}");
        let mut d = MessageDecoder::new(MAX_MESSAGE);
        d.push(&[2, 0, 0, 0, 0]);
        assert_eq!(d.decode().unwrap_err().code, Code::Internal);
    }

    #[test]
    fn statuses_from_trailers_headers_and_http() {
        let mut h = HeaderMap::new();
        assert_eq!(status(&h).unwrap_err().code, Code::Internal);
        h.insert("grpc-status", HeaderValue::from_static("0"));
        assert_eq!(status(&h), Ok(()));
        h.insert("grpc-status", HeaderValue::from_static("7"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("not%20yours%3A%E2%9C%93%zz%"),
        );
        let e = status(&h).unwrap_err();
        assert_eq!(e.code, Code::PermissionDenied);
        assert_eq!(e.message, "not yours:\u{2713}%zz%");
        assert_eq!(e.to_string(), "PERMISSION_DENIED: not yours:\u{2713}%zz%");
        h.insert("grpc-status", HeaderValue::from_static("99"));
        assert_eq!(status(&h).unwrap_err().code, Code::Unknown);
        h.insert("grpc-status", HeaderValue::from_static("x"));
        assert_eq!(status(&h).unwrap_err().code, Code::Unknown);
        assert_eq!(Code::from_http(StatusCode::NOT_FOUND), Code::Unimplemented);
        assert_eq!(Code::from_http(StatusCode::BAD_GATEWAY), Code::Unavailable);
        assert_eq!(Code::from_http(StatusCode::IM_A_TEAPOT), Code::Unknown);
    }

    #[test]
    fn grpc_timeout_rounds_up_within_eight_digits() {
        let t = |d| timeout_header(d).to_str().unwrap().to_owned();
        assert_eq!(t(Duration::from_micros(1)), "1m");
        assert_eq!(t(Duration::from_millis(1500)), "1500m");
        assert_eq!(t(Duration::from_millis(99_999_999)), "99999999m");
        assert_eq!(t(Duration::from_millis(100_000_000)), "100000S");
        assert_eq!(t(Duration::from_secs(100_000_000)), "27778H");
        assert_eq!(t(Duration::MAX), "99999999H");
    }

    /// What a scripted server answers its one call with.
    #[derive(Clone)]
    struct Reply {
        status: u16,
        headers: Vec<(&'static str, &'static str)>,
        data: Vec<Vec<u8>>,
        /// `None`: the stream ends with the last data (no trailers).
        trailers: Option<Vec<(&'static str, &'static str)>>,
        /// Keep the stream open after the data (no end, no trailers).
        hold: bool,
    }

    fn ok_reply(data: Vec<Vec<u8>>) -> Reply {
        Reply {
            status: 200,
            headers: vec![("content-type", "application/grpc")],
            data,
            trailers: Some(vec![("grpc-status", "0")]),
            hold: false,
        }
    }

    type Seen = Rc<RefCell<Option<(http::request::Parts, Vec<u8>)>>>;

    /// An HTTP/2 server (monoio-http) that takes one connection and one
    /// call, records it, and answers with `reply` (`None`: never).
    async fn scripted(reply: Option<Reply>) -> (SocketAddr, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Seen = Rc::default();
        let record = seen.clone();
        monoio::spawn(async move {
            let (io, _) = listener.accept().await.unwrap();
            let mut conn = server::handshake(io).await.unwrap();
            let (req, mut respond) = conn.accept().await.unwrap().unwrap();
            // The connection makes progress only while polled.
            monoio::spawn(async move { while conn.accept().await.is_some() {} });
            let (parts, mut body) = req.into_parts();
            let mut bytes = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                let _ = body.flow_control().release_capacity(chunk.len());
                bytes.extend_from_slice(&chunk);
            }
            *record.borrow_mut() = Some((parts, bytes));
            let Some(reply) = reply else {
                monoio::time::sleep(Duration::from_secs(60)).await;
                return;
            };
            let mut head = http::Response::builder().status(reply.status);
            for (k, v) in &reply.headers {
                head = head.header(*k, *v);
            }
            let ends_now = reply.data.is_empty() && reply.trailers.is_none() && !reply.hold;
            let mut send = respond
                .send_response(head.body(()).unwrap(), ends_now)
                .unwrap();
            let n = reply.data.len();
            for (i, chunk) in reply.data.into_iter().enumerate() {
                let last = i + 1 == n && reply.trailers.is_none() && !reply.hold;
                send.send_data(Bytes::from(chunk), last).unwrap();
            }
            if let Some(trailers) = reply.trailers {
                let mut map = HeaderMap::new();
                for (k, v) in trailers {
                    map.insert(k, HeaderValue::from_static(v));
                }
                send.send_trailers(map).unwrap();
            }
            monoio::time::sleep(Duration::from_secs(60)).await;
        });
        (addr, seen)
    }

    async fn call(addr: SocketAddr, limit: Duration) -> Result<Vec<u8>, GrpcError> {
        let deadline = Instant::now() + limit;
        let ch = Channel::connect(addr, deadline).await?;
        unary::<u32, Vec<u8>>(&ch, "/test.Svc/Method", 7, deadline).await
    }

    fn msg(payload: &[u8]) -> Vec<u8> {
        framed(&prost::Message::encode_to_vec(&payload.to_vec()))
    }

    #[test]
    fn a_unary_call_sends_grpc_headers_and_reads_the_answer() {
        both_drivers(async || {
            let wire = msg(b"pong");
            let (first, rest) = wire.split_at(3);
            let (addr, seen) = scripted(Some(ok_reply(vec![first.into(), rest.into()]))).await;
            let resp = call(addr, Duration::from_secs(5)).await.unwrap();
            assert_eq!(resp, b"pong");
            let seen = seen.borrow();
            let (parts, body) = seen.as_ref().unwrap();
            assert_eq!(parts.method, Method::POST);
            assert_eq!(parts.uri.path(), "/test.Svc/Method");
            assert_eq!(parts.uri.authority().unwrap().as_str(), addr.to_string());
            assert_eq!(parts.headers["content-type"], "application/grpc");
            assert_eq!(parts.headers["te"], "trailers");
            let timeout = parts.headers["grpc-timeout"].to_str().unwrap();
            let ms: u64 = timeout.strip_suffix('m').unwrap().parse().unwrap();
            assert!((1..=5000).contains(&ms), "{timeout}");
            assert_eq!(body, &framed(&[0x08, 7]));
        });
    }

    #[test]
    fn an_oversized_message_fails_the_call_from_its_prefix() {
        both_drivers(async || {
            let mut reply = ok_reply(vec![vec![0, 0, 0x40, 0, 1]]);
            reply.trailers = None;
            reply.hold = true;
            let (addr, _) = scripted(Some(reply)).await;
            let start = Instant::now();
            let e = call(addr, Duration::from_secs(10)).await.unwrap_err();
            assert_eq!(e.code, Code::ResourceExhausted, "{e}");
            assert!(start.elapsed() < Duration::from_secs(5));
        });
    }

    #[test]
    fn framing_and_status_errors() {
        both_drivers(async || {
            let cases: Vec<(Reply, Code, &str)> = vec![
                (
                    ok_reply(vec![vec![1, 0, 0, 0, 1, 0]]),
                    Code::Internal,
                    "compressed",
                ),
                (
                    ok_reply(vec![msg(b"a"), msg(b"b")]),
                    Code::Internal,
                    "more than one",
                ),
                (ok_reply(vec![]), Code::Internal, "no response message"),
                (
                    ok_reply(vec![vec![0, 0, 0, 0, 5, 1, 2]]),
                    Code::Internal,
                    "inside a message",
                ),
                (
                    Reply {
                        trailers: None,
                        ..ok_reply(vec![msg(b"a")])
                    },
                    Code::Internal,
                    "without a grpc-status",
                ),
                (
                    Reply {
                        headers: vec![
                            ("content-type", "application/grpc"),
                            ("grpc-status", "5"),
                            ("grpc-message", "no%20such%20thing"),
                        ],
                        trailers: None,
                        ..ok_reply(vec![])
                    },
                    Code::NotFound,
                    "no such thing",
                ),
                (
                    Reply {
                        status: 503,
                        trailers: None,
                        ..ok_reply(vec![])
                    },
                    Code::Unavailable,
                    "503",
                ),
                (
                    Reply {
                        headers: vec![("content-type", "text/html")],
                        ..ok_reply(vec![msg(b"a")])
                    },
                    Code::Unknown,
                    "text/html",
                ),
                (
                    Reply {
                        trailers: Some(vec![("grpc-status", "16"), ("grpc-message", "bad token")]),
                        ..ok_reply(vec![msg(b"a")])
                    },
                    Code::Unauthenticated,
                    "bad token",
                ),
            ];
            for (reply, code, words) in cases {
                let (addr, _) = scripted(Some(reply)).await;
                let e = call(addr, Duration::from_secs(5)).await.unwrap_err();
                assert_eq!(e.code, code, "{e}");
                assert!(e.message.contains(words), "{e}");
            }
        });
    }

    #[test]
    fn a_silent_server_misses_the_deadline() {
        both_drivers(async || {
            let (addr, seen) = scripted(None).await;
            let start = Instant::now();
            let e = call(addr, Duration::from_millis(300)).await.unwrap_err();
            let took = start.elapsed();
            assert_eq!(e.code, Code::DeadlineExceeded, "{e}");
            assert!(
                took >= Duration::from_millis(290) && took < Duration::from_secs(2),
                "{took:?}"
            );
            assert!(seen.borrow().is_some(), "the call reached the server");
            // A listener that never speaks HTTP/2: the handshake is bounded too.
            let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let start = Instant::now();
            let e = call(mute.local_addr().unwrap(), Duration::from_millis(300))
                .await
                .unwrap_err();
            assert_eq!(e.code, Code::DeadlineExceeded, "{e}");
            assert!(start.elapsed() < Duration::from_secs(2));
        });
    }

    /// A control plane flooding frames once a call is open (PINGs here:
    /// the library answers each and would never give up) is cut off: the
    /// call fails at once with the reason, not at its deadline, and the
    /// control core stops reading it.
    #[test]
    fn a_flooding_server_is_cut_off() {
        use std::io::{Read, Write};
        both_drivers(async || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            std::thread::spawn(move || {
                let (mut s, _) = listener.accept().unwrap();
                let mut r = s.try_clone().unwrap();
                std::thread::spawn(move || {
                    let mut b = [0; 65536];
                    while matches!(r.read(&mut b), Ok(n) if n > 0) {}
                });
                // An empty SETTINGS (the server's preface), then PINGs
                // until the client goes or 10 s pass.
                let settings = [0, 0, 0, 4, 0, 0, 0, 0, 0];
                let ping = [0, 0, 8, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
                let burst = ping.repeat(100);
                let end = Instant::now() + Duration::from_secs(10);
                let _ = s.write_all(&settings);
                while Instant::now() < end && s.write_all(&burst).is_ok() {}
            });
            let start = Instant::now();
            let e = call(addr, Duration::from_secs(10)).await.unwrap_err();
            assert!(start.elapsed() < Duration::from_secs(5), "{e}");
            assert_eq!(e.code, Code::Unavailable, "{e}");
            assert!(e.message.contains("cut off: PING flood"), "{e}");
        });
    }

    #[test]
    fn a_channel_knows_when_its_connection_ended() {
        both_drivers(async || {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            monoio::spawn(async move {
                let (io, _) = listener.accept().await.unwrap();
                let mut conn = server::handshake(io).await.unwrap();
                // Handshake done; then the server goes away.
                monoio::time::sleep(Duration::from_millis(100)).await;
                conn.abrupt_shutdown(Reason::NO_ERROR);
                let _ = conn.accept().await;
            });
            let deadline = Instant::now() + Duration::from_secs(5);
            let ch = Channel::connect(addr, deadline).await.unwrap();
            assert!(!ch.is_closed());
            assert!(eventually(Duration::from_secs(5), || ch.is_closed()).await);
            let refused = Channel::connect(addr, deadline)
                .await
                .map(drop)
                .unwrap_err();
            assert_eq!(refused.code, Code::Unavailable, "{refused}");
        });
    }

    /// Against grpcio: a server stream's messages in order, then its end;
    /// a non-OK status with its message.
    #[test]
    fn server_streaming_and_statuses_against_grpcio() {
        both_drivers(async || {
            let mut server = PyServer::spawn("echo.py", &["serve"]);
            let port: u16 = server.line("").await.parse().unwrap();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(10);
            let ch = Channel::connect(addr, deadline).await.unwrap();
            let path = "/ringmesh.test.Echo/Items";
            let mut items = server_streaming::<u32, Vec<u8>>(&ch, path, 3, None)
                .await
                .unwrap();
            let mut got = Vec::new();
            while let Some(item) = items.message().await.unwrap() {
                got.push(String::from_utf8(item).unwrap());
            }
            assert_eq!(got, ["item-0", "item-1", "item-2"]);
            assert_eq!(items.message().await.unwrap(), None);
            let mut none = server_streaming::<u32, Vec<u8>>(&ch, path, 0, Some(deadline))
                .await
                .unwrap();
            assert_eq!(none.message().await.unwrap(), None);
            let e = unary::<u32, Vec<u8>>(&ch, "/ringmesh.test.Echo/Fail", 1, deadline)
                .await
                .unwrap_err();
            assert_eq!(e.code, Code::NotFound, "{e}");
            assert_eq!(e.message, "no such thing");
            let e = unary::<u32, Vec<u8>>(&ch, "/ringmesh.test.Echo/Nope", 1, deadline)
                .await
                .unwrap_err();
            assert_eq!(e.code, Code::Unimplemented, "{e}");
            assert!(!ch.is_closed());
        });
    }
}
