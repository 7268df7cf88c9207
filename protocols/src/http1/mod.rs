//! HTTP/1.x codec: message heads, body framing and head re-serialisation,
//! as pure functions and state machines over byte slices.
//!
//! # What this module owns
//!
//! - Parsing request and response heads (on top of `httparse`) into reusable
//!   [`RequestHead`] / [`ResponseHead`] values, and deriving what a proxy
//!   needs from them: the target's form and authority, body framing,
//!   persistence (keep-alive), `Expect: 100-continue`, upgrades and CONNECT.
//! - The framing rules of RFC 9112 §6, including the request-smuggling
//!   defences: `Content-Length` with `Transfer-Encoding` is refused, differing
//!   `Content-Length` values are refused, `chunked` must be the final (and
//!   only) transfer coding, `Transfer-Encoding` in HTTP/1.0 is refused.
//! - Finding the end of a body without buffering it: [`ChunkedScanner`]
//!   validates chunked framing (extensions and trailers included) and says how
//!   many bytes of a slice belong to the message, so the proxy forwards the
//!   bytes verbatim; [`BodyLength`] counts `Content-Length` bodies;
//!   [`BodyScanner`] picks one from a [`BodyFraming`].
//! - Writing a head for forwarding ([`write_request_head`],
//!   [`write_response_head`]): header names keep their original case,
//!   hop-by-hop fields (RFC 9110 §7.6.1) are removed, and the caller chooses
//!   the request-target form, the `Connection` header, whether an upgrade is
//!   forwarded, and extra headers. Plus a minimal error response
//!   ([`write_error_response`]).
//!
//! # What it must not do
//!
//! No I/O, no timers, no routing, policy, discovery or metrics: the engine's
//! proxy loop reads bytes, calls into this module, and decides what to do.
//! Nothing here buffers a body or allocates per request once warmed up.
//!
//! # Design: heads are reusable and own a copy of their bytes
//!
//! A parse copies the head's bytes (request line or status line plus header
//! section, typically a few hundred bytes) into the head's own `Vec<u8>` and
//! records every part as a byte range into it. Header entries are
//! `(name range, value range, kind)` triples in a `Vec` that is cleared, not
//! freed, between messages. So a connection keeps one `RequestHead` and one
//! `ResponseHead` for its life and, after the first message, parses without
//! allocating; the caller's read buffer is free to be compacted or reused as
//! soon as [`RequestHead::parse`] returns, because the head borrows nothing.
//! `httparse` itself works on a stack array of uninitialised header slots
//! ([`MAX_HEADERS_CAP`] of them, 32 bytes each), sliced to the configured
//! limit.
//!
//! Parsing is incremental in the usual `httparse` way: `parse` returns
//! `Ok(None)` until the whole head is in the slice, then `Ok(Some(n))` where
//! `n` is the exact length of the head, so the caller continues with the body
//! and then the next pipelined message from `input[n..]`.
//!
//! # Decisions
//!
//! - Limits: 64 KiB per head and 100 header fields by default (hyper's and
//!   Envoy's default count); both answer 431 for requests. The header count
//!   is capped at [`MAX_HEADERS_CAP`] because `httparse` needs a fixed array.
//! - Bare LF line endings in heads are accepted as `httparse` accepts them
//!   (RFC 9112 §2.2 allows it) — heads are re-serialised with CRLF, so nothing
//!   ambiguous is forwarded. Obsolete line folding, whitespace before the
//!   colon and bare CR are refused (400 / 502). Chunked framing lines must end
//!   in CRLF: the body is forwarded verbatim, so there a lenient reading could
//!   disagree with the next hop's.
//! - `Trailer` is not hop-by-hop: RFC 9110 §7.6.1 does not list it (RFC 2616's
//!   list did) and, since trailers are forwarded with the chunked body, the
//!   field announcing them is forwarded too.
//! - `Connection` cannot remove `Host`, `Content-Length` or
//!   `Transfer-Encoding` (a known way to make a proxy drop the framing).
//! - Transfer codings: only `chunked` alone is supported. `chunked` not last
//!   (`xchunked`, `gzip`, `chunked, gzip`) or applied twice is a 400 (RFC 9112
//!   §6.3 says "MUST respond with 400"); another coding before a final
//!   `chunked` (`gzip, chunked`) is a 501. For responses every such case is a
//!   bad upstream response (502), rather than RFC 9112's read-until-close,
//!   because the coding could not be forwarded once `Transfer-Encoding` is
//!   stripped.
//! - Responses to HEAD and 304 still have their `Content-Length` /
//!   `Transfer-Encoding` validated (they describe the representation); 1xx,
//!   204 and 2xx-to-CONNECT ignore them (RFC 9110 §9.3.6, RFC 9112 §6.3).
//! - A 101 without an upgrade request is a bad upstream response.

mod body;
mod chunked;
mod error;
mod fields;
mod request;
mod response;
mod target;
mod write;

pub use body::{BodyFraming, BodyLength, BodyProgress, BodyScanner};
pub use chunked::{trailer_fields, ChunkedScanner};
pub use error::{ChunkedError, Http1Error, ProtocolError, WriteError};
pub use fields::Headers;
pub use request::{Authority, RequestContext, RequestHead};
pub use response::ResponseHead;
pub use target::TargetForm;
pub use write::{
    canonical_reason, push_field, write_error_response, write_request_head, write_response_head,
    ConnectionHeader, WriteOptions,
};

/// Default limit on the size of a message head (request/status line plus
/// header section).
pub const DEFAULT_MAX_HEAD_BYTES: usize = 64 * 1024;
/// Default limit on the number of header fields in a head.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Hard upper bound on the header-count limit: the size of the stack array
/// `httparse` parses into (256 × 32 bytes).
pub const MAX_HEADERS_CAP: usize = 256;
/// Default limit on the chunk-extension bytes of one chunked body, summed over
/// its chunks (as hyper does: many tiny chunks with long extensions are a
/// cheap way to burn CPU).
pub const DEFAULT_MAX_CHUNK_EXTENSION_BYTES: usize = 16 * 1024;
/// Default limit on the trailer section of one chunked body.
pub const DEFAULT_MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Size limits for parsing. `Default` gives the `DEFAULT_*` constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    max_head_bytes: usize,
    max_headers: usize,
    max_chunk_extension_bytes: usize,
    max_trailer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_chunk_extension_bytes: DEFAULT_MAX_CHUNK_EXTENSION_BYTES,
            max_trailer_bytes: DEFAULT_MAX_TRAILER_BYTES,
        }
    }
}

impl Limits {
    /// Largest head accepted; a longer one (or an incomplete one already this
    /// long) is [`ProtocolError::HeadTooLarge`]. Capped at `u32::MAX` because
    /// heads store 32-bit offsets.
    pub fn with_max_head_bytes(mut self, bytes: usize) -> Self {
        self.max_head_bytes = bytes.min(u32::MAX as usize);
        self
    }

    /// Most header fields accepted (more is
    /// [`ProtocolError::TooManyHeaders`]); clamped to [`MAX_HEADERS_CAP`].
    pub fn with_max_headers(mut self, count: usize) -> Self {
        self.max_headers = count.min(MAX_HEADERS_CAP);
        self
    }

    /// Most chunk-extension bytes in one chunked body.
    pub fn with_max_chunk_extension_bytes(mut self, bytes: usize) -> Self {
        self.max_chunk_extension_bytes = bytes;
        self
    }

    /// Largest trailer section of one chunked body.
    pub fn with_max_trailer_bytes(mut self, bytes: usize) -> Self {
        self.max_trailer_bytes = bytes;
        self
    }

    pub fn max_head_bytes(&self) -> usize {
        self.max_head_bytes
    }

    pub fn max_headers(&self) -> usize {
        self.max_headers
    }

    pub fn max_chunk_extension_bytes(&self) -> usize {
        self.max_chunk_extension_bytes
    }

    pub fn max_trailer_bytes(&self) -> usize {
        self.max_trailer_bytes
    }
}

/// The HTTP/1 minor version of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Version {
    Http10,
    #[default]
    Http11,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }

    fn from_minor(minor: u8) -> Self {
        if minor == 0 {
            Version::Http10
        } else {
            Version::Http11
        }
    }
}

/// A request method. Methods are case-sensitive (RFC 9110 §9.1): `get` is
/// [`Method::Other`]; the exact bytes are [`RequestHead::method`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
    Other,
}

impl Method {
    pub fn from_bytes(method: &[u8]) -> Self {
        match method {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"CONNECT" => Method::Connect,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }

    /// Idempotent per RFC 9110 §9.2.2 (what a retry policy may resend).
    /// Unknown methods are not.
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Method::Get
                | Method::Head
                | Method::Put
                | Method::Delete
                | Method::Options
                | Method::Trace
        )
    }
}
