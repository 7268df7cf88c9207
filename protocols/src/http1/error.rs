//! Errors of the HTTP/1 codec. [`ProtocolError`] says what is wrong with a
//! message; [`Http1Error`] adds which side sent it, which fixes the status
//! the proxy answers with.

/// What is wrong with a message, whichever side sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// `httparse` refused the head: bad request or status line, bad header
    /// name or value (whitespace before the colon, obsolete line folding,
    /// control characters), bad line ending, unknown version.
    #[error("malformed message head")]
    Malformed(#[source] httparse::Error),
    #[error("too many header fields")]
    TooManyHeaders,
    #[error("message head too large")]
    HeadTooLarge,
    #[error("invalid request target")]
    InvalidTarget,
    #[error("missing host header")]
    MissingHost,
    #[error("multiple host headers")]
    MultipleHosts,
    #[error("invalid host header")]
    InvalidHost,
    #[error("invalid content-length")]
    InvalidContentLength,
    #[error("conflicting content-length values")]
    ConflictingContentLength,
    #[error("content-length with transfer-encoding")]
    ContentLengthWithTransferEncoding,
    #[error("transfer-encoding in an http/1.0 message")]
    TransferEncodingInHttp10,
    /// CONNECT is HTTP/1.1's (RFC 9110 §9.3.6); an HTTP/1.0 one is refused,
    /// as linkerd2-proxy refuses it.
    #[error("connect in an http/1.0 request")]
    ConnectInHttp10,
    /// `chunked` is missing, not last, or applied more than once: the body's
    /// length cannot be known (RFC 9112 §6.3).
    #[error("invalid transfer-encoding")]
    InvalidTransferEncoding,
    /// A transfer coding other than `chunked` before the final `chunked`.
    #[error("unsupported transfer-coding")]
    UnsupportedTransferCoding,
    #[error("invalid status code")]
    InvalidStatus,
    #[error("switching protocols without an upgrade request")]
    UnsolicitedSwitchingProtocols,
    #[error("invalid chunked body")]
    Chunked(#[from] ChunkedError),
    /// The connection ended before the body did.
    #[error("body ended early")]
    IncompleteBody,
}

impl ProtocolError {
    /// The status a proxy answers a request carrying this error with:
    /// 431 for size limits, 501 for an unsupported transfer coding, else 400.
    pub fn request_status(&self) -> u16 {
        match self {
            ProtocolError::TooManyHeaders | ProtocolError::HeadTooLarge => 431,
            ProtocolError::UnsupportedTransferCoding => 501,
            _ => 400,
        }
    }
}

/// What is wrong with a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkedError {
    #[error("invalid chunk size")]
    InvalidSize,
    #[error("chunk size too large")]
    SizeOverflow,
    #[error("invalid chunk extension")]
    InvalidExtension,
    #[error("chunk extensions too large")]
    ExtensionsTooLarge,
    #[error("missing crlf in chunked body")]
    MissingCrlf,
    #[error("invalid trailer field")]
    InvalidTrailer,
    #[error("trailer section too large")]
    TrailersTooLarge,
}

/// A protocol error and the side that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Http1Error {
    /// The downstream client sent a bad request (400, 431 or 501).
    #[error("bad request")]
    Request(#[source] ProtocolError),
    /// The upstream server sent a bad response (502).
    #[error("bad upstream response")]
    Response(#[source] ProtocolError),
}

impl Http1Error {
    /// The status to answer the downstream client with.
    pub fn status(&self) -> u16 {
        match self {
            Http1Error::Request(e) => e.request_status(),
            Http1Error::Response(_) => 502,
        }
    }

    /// Whether the upstream side is at fault (the proxy answers 502).
    pub fn is_upstream(&self) -> bool {
        matches!(self, Http1Error::Response(_))
    }

    /// What is wrong, whichever side it was.
    pub fn kind(&self) -> ProtocolError {
        match self {
            Http1Error::Request(e) | Http1Error::Response(e) => *e,
        }
    }
}

/// A header the caller asked the writer to add is not valid on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("invalid header name")]
    InvalidHeaderName,
    /// A value with CR, LF, NUL or another control character (which would
    /// let it inject header lines).
    #[error("invalid header value")]
    InvalidHeaderValue,
}
