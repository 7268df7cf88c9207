//! Response heads: parsing, and the framing rules of RFC 9112 §6.3 that
//! depend on the request being answered.

use std::mem::MaybeUninit;

use super::body::BodyFraming;
use super::error::{Http1Error, ProtocolError};
use super::fields::{declared_framing, head_length, DeclaredFraming, Fields, Headers, Span};
use super::request::RequestContext;
use super::{Limits, Method, Version, MAX_HEADERS_CAP};

/// A parsed response head; reusable like [`super::RequestHead`].
#[derive(Debug, Clone)]
pub struct ResponseHead {
    fields: Fields,
    head_len: usize,
    version: Version,
    status: u16,
    reason: Span,
    framing: BodyFraming,
    chunked: bool,
    keep_alive: bool,
}

impl Default for ResponseHead {
    fn default() -> Self {
        Self {
            fields: Fields::default(),
            head_len: 0,
            version: Version::Http11,
            status: 0,
            reason: Span::default(),
            framing: BodyFraming::Empty,
            chunked: false,
            keep_alive: true,
        }
    }
}

impl ResponseHead {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets the last response, keeping the buffers' capacity.
    pub fn clear(&mut self) {
        *self = Self {
            fields: std::mem::take(&mut self.fields),
            ..Self::default()
        };
        self.fields.clear();
    }

    /// Parses a response head from the start of `input`, as the answer to
    /// the request described by `request`. Same contract as
    /// [`super::RequestHead::parse`]; errors are
    /// [`Http1Error::Response`] (502).
    ///
    /// An interim (1xx but 101) response is followed by another response to
    /// the same request: parse again with the same context.
    pub fn parse(
        &mut self,
        input: &[u8],
        request: RequestContext,
        limits: &Limits,
    ) -> Result<Option<usize>, Http1Error> {
        self.clear();
        let result = self.parse_inner(input, request, limits);
        if result.is_err() {
            self.clear();
        }
        result.map_err(Http1Error::Response)
    }

    fn parse_inner(
        &mut self,
        input: &[u8],
        request: RequestContext,
        limits: &Limits,
    ) -> Result<Option<usize>, ProtocolError> {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_CAP];
        let mut res = httparse::Response::new(&mut []);
        let result = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut res,
            input,
            &mut slots[..limits.max_headers().min(MAX_HEADERS_CAP)],
        );
        let Some(head_len) = head_length(result, input.len(), limits.max_head_bytes())? else {
            return Ok(None);
        };
        let (Some(minor), Some(status)) = (res.version, res.code) else {
            return Err(ProtocolError::Malformed(httparse::Error::Status));
        };
        if !(100..=599).contains(&status) {
            return Err(ProtocolError::InvalidStatus);
        }
        self.version = Version::from_minor(minor);
        self.status = status;
        self.reason = reason_span(&input[..head_len]);
        self.fields.load(input, head_len, res.headers);
        self.head_len = head_len;
        self.decide_framing(request)?;
        Ok(Some(head_len))
    }

    fn decide_framing(&mut self, request: RequestContext) -> Result<(), ProtocolError> {
        let http10 = self.version == Version::Http10;
        let status = self.status;
        let declared = |fields: &Fields| declared_framing(fields, http10);
        self.framing = if status == 101 {
            if !request.upgrade {
                return Err(ProtocolError::UnsolicitedSwitchingProtocols);
            }
            BodyFraming::Tunnel
        } else if (100..200).contains(&status) || status == 204 {
            // No content, whatever the fields say (RFC 9112 §6.3 rule 1);
            // these must not carry Transfer-Encoding or Content-Length.
            BodyFraming::Empty
        } else if request.method == Method::Connect && (200..300).contains(&status) {
            // The client must ignore both fields here (RFC 9110 §9.3.6).
            BodyFraming::Tunnel
        } else if request.method == Method::Head || status == 304 {
            // The fields describe the representation a GET would carry:
            // valid, but no content follows.
            self.chunked = declared(&self.fields)? == DeclaredFraming::Chunked;
            BodyFraming::Empty
        } else {
            match declared(&self.fields)? {
                DeclaredFraming::Chunked => {
                    self.chunked = true;
                    BodyFraming::Chunked
                }
                DeclaredFraming::Length(n) => BodyFraming::ContentLength(n),
                DeclaredFraming::None => BodyFraming::CloseDelimited,
            }
        };
        let c = self.fields.connection;
        self.keep_alive = !c.close && (!http10 || c.keep_alive);
        Ok(())
    }

    /// The head's bytes as received.
    pub fn as_bytes(&self) -> &[u8] {
        &self.fields.buf[..self.head_len]
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// The reason phrase exactly as received (any bytes `httparse` allows,
    /// obs-text included); possibly empty.
    pub fn reason(&self) -> &[u8] {
        self.reason.get(&self.fields.buf)
    }

    pub fn headers(&self) -> Headers<'_> {
        self.fields.headers()
    }

    pub fn framing(&self) -> BodyFraming {
        self.framing
    }

    /// A 1xx response other than 101: the final response is still to come.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// Whether the server keeps the connection open by its headers (HTTP/1.1
    /// unless `Connection: close`; HTTP/1.0 only with `keep-alive`). A
    /// [`BodyFraming::CloseDelimited`] or [`BodyFraming::Tunnel`] framing
    /// ends HTTP on the connection regardless.
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }

    /// Whether the response declares `Transfer-Encoding: chunked` (also for
    /// a HEAD or 304 response, which has no body), so that a forwarded head
    /// keeps saying so.
    pub fn is_chunked(&self) -> bool {
        self.chunked
    }

    /// The `Upgrade` field's value of a 101 response: the protocol the
    /// connection switches to.
    pub fn upgrade(&self) -> Option<&[u8]> {
        if self.status == 101 {
            self.fields.value_of(self.fields.first_upgrade)
        } else {
            None
        }
    }

    pub(crate) fn fields(&self) -> &Fields {
        &self.fields
    }
}

/// The reason phrase's range in a status line that `httparse` accepted:
/// after `HTTP/1.x NNN ` up to the line end. Computed here because
/// `httparse` hands back an empty reason when it holds obs-text.
fn reason_span(head: &[u8]) -> Span {
    // httparse skips empty lines before the status line.
    let start = head
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(head.len());
    let line_end = head[start..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(head.len(), |i| start + i);
    let line_end = if line_end > start && head[line_end - 1] == b'\r' {
        line_end - 1
    } else {
        line_end
    };
    let reason_start = (start + "HTTP/1.1 200 ".len()).min(line_end);
    Span::new(reason_start, line_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: RequestContext = RequestContext {
        method: Method::Get,
        upgrade: false,
    };

    fn parse_for(
        input: impl AsRef<[u8]>,
        ctx: RequestContext,
    ) -> Result<ResponseHead, ProtocolError> {
        let input = input.as_ref();
        let mut head = ResponseHead::new();
        match head.parse(input, ctx, &Limits::default()) {
            Ok(Some(n)) => {
                assert_eq!(n, input.len());
                Ok(head)
            }
            Ok(None) => panic!("incomplete: {input:?}"),
            Err(Http1Error::Response(e)) => Err(e),
            Err(e) => panic!("wrong side: {e:?}"),
        }
    }

    fn framing_for(input: &str, ctx: RequestContext) -> BodyFraming {
        parse_for(input, ctx).unwrap().framing()
    }

    fn ctx(method: Method) -> RequestContext {
        RequestContext {
            method,
            upgrade: false,
        }
    }

    #[test]
    fn status_line() {
        let head = parse_for(
            "HTTP/1.1 404 Not  Found\r\nServer: x\r\nContent-Length: 0\r\n\r\n",
            GET,
        )
        .unwrap();
        assert_eq!(head.status(), 404);
        assert_eq!(head.reason(), b"Not  Found");
        assert_eq!(head.version(), Version::Http11);
        assert_eq!(head.framing(), BodyFraming::ContentLength(0));
        assert!(head.keep_alive());
        let head = parse_for("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", GET).unwrap();
        assert_eq!(head.reason(), b"");
        let head = parse_for("HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", GET).unwrap();
        assert_eq!(head.reason(), b"");
        let head = parse_for(
            b"HTTP/1.1 200 D\xc3\xa9j\xe0 vu\r\nContent-Length: 0\r\n\r\n",
            GET,
        )
        .unwrap();
        assert_eq!(head.reason(), b"D\xc3\xa9j\xe0 vu");
        let head = parse_for("\r\nHTTP/1.0 200 OK\nContent-Length: 0\n\n", GET).unwrap();
        assert_eq!(head.reason(), b"OK");
        assert!(!head.keep_alive());
        assert_eq!(
            parse_for("HTTP/1.1 099 Low\r\n\r\n", GET).unwrap_err(),
            ProtocolError::InvalidStatus
        );
        assert_eq!(
            parse_for("HTTP/1.1 600 High\r\n\r\n", GET).unwrap_err(),
            ProtocolError::InvalidStatus
        );
        assert!(matches!(
            parse_for("HTTP/1.1 20 OK\r\n\r\n", GET).unwrap_err(),
            ProtocolError::Malformed(_)
        ));
    }

    #[test]
    fn framing_by_method_and_status() {
        let cl = "Content-Length: 10\r\n\r\n";
        let te = "Transfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            framing_for(&format!("HTTP/1.1 200 OK\r\n{cl}"), GET),
            BodyFraming::ContentLength(10)
        );
        assert_eq!(
            framing_for(&format!("HTTP/1.1 200 OK\r\n{te}"), GET),
            BodyFraming::Chunked
        );
        assert_eq!(
            framing_for("HTTP/1.1 200 OK\r\n\r\n", GET),
            BodyFraming::CloseDelimited
        );

        let head_ctx = ctx(Method::Head);
        assert_eq!(
            framing_for(&format!("HTTP/1.1 200 OK\r\n{cl}"), head_ctx),
            BodyFraming::Empty
        );
        let head = parse_for(format!("HTTP/1.1 200 OK\r\n{te}"), head_ctx).unwrap();
        assert_eq!(head.framing(), BodyFraming::Empty);
        assert!(head.is_chunked());
        assert_eq!(
            framing_for("HTTP/1.1 200 OK\r\n\r\n", head_ctx),
            BodyFraming::Empty
        );

        assert_eq!(
            framing_for(&format!("HTTP/1.1 204 No Content\r\n{cl}"), GET),
            BodyFraming::Empty
        );
        assert_eq!(
            framing_for(&format!("HTTP/1.1 304 Not Modified\r\n{cl}"), GET),
            BodyFraming::Empty
        );
        let interim = parse_for("HTTP/1.1 100 Continue\r\n\r\n", GET).unwrap();
        assert_eq!(interim.framing(), BodyFraming::Empty);
        assert!(interim.is_interim());
        assert!(
            parse_for("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", GET)
                .unwrap()
                .is_interim()
        );

        let connect = ctx(Method::Connect);
        assert_eq!(
            framing_for("HTTP/1.1 200 Connection Established\r\n\r\n", connect),
            BodyFraming::Tunnel
        );
        // The fields are ignored on a 2xx to CONNECT, even invalid ones.
        assert_eq!(
            framing_for(
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                connect
            ),
            BodyFraming::Tunnel
        );
        assert_eq!(
            framing_for(&format!("HTTP/1.1 407 Proxy Auth\r\n{cl}"), connect),
            BodyFraming::ContentLength(10)
        );
    }

    #[test]
    fn switching_protocols() {
        let upgrade = RequestContext {
            method: Method::Get,
            upgrade: true,
        };
        let head = parse_for(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            upgrade,
        )
        .unwrap();
        assert_eq!(head.framing(), BodyFraming::Tunnel);
        assert!(!head.is_interim());
        assert_eq!(head.upgrade(), Some(&b"websocket"[..]));
        assert_eq!(
            parse_for(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
                GET
            )
            .unwrap_err(),
            ProtocolError::UnsolicitedSwitchingProtocols
        );
    }

    #[test]
    fn bad_upstream_framing_is_502() {
        for (input, kind) in [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                ProtocolError::ContentLengthWithTransferEncoding,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                ProtocolError::ConflictingContentLength,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                ProtocolError::InvalidContentLength,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                ProtocolError::InvalidTransferEncoding,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                ProtocolError::UnsupportedTransferCoding,
            ),
            (
                "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                ProtocolError::TransferEncodingInHttp10,
            ),
        ] {
            let mut head = ResponseHead::new();
            let err = head
                .parse(input.as_bytes(), GET, &Limits::default())
                .unwrap_err();
            assert_eq!(err, Http1Error::Response(kind), "{input:?}");
            assert_eq!(err.status(), 502);
            assert!(err.is_upstream());
        }
        // HEAD and 304 fields are still checked.
        assert_eq!(
            parse_for(
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                GET
            )
            .unwrap_err(),
            ProtocolError::ConflictingContentLength
        );
        // Responses get httparse's strict defaults too.
        assert!(matches!(
            parse_for("HTTP/1.1 200 OK\r\nX : y\r\n\r\n", GET).unwrap_err(),
            ProtocolError::Malformed(_)
        ));
        assert!(matches!(
            parse_for("HTTP/1.1 200 OK\r\nX: y\r\n z\r\n\r\n", GET).unwrap_err(),
            ProtocolError::Malformed(_)
        ));
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |s: &str| parse_for(s, GET).unwrap().keep_alive();
        assert!(ka("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!ka(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!ka("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(ka(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        ));
    }

    #[test]
    fn partial_and_pipelined() {
        let input =
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 204 No Content\r\n\r\n";
        let mut head = ResponseHead::new();
        let limits = Limits::default();
        for end in 0..38 {
            assert_eq!(
                head.parse(&input[..end], GET, &limits).unwrap(),
                None,
                "{end}"
            );
        }
        let n = head.parse(input, GET, &limits).unwrap().unwrap();
        assert_eq!(n, 38);
        assert_eq!(&input[n..n + 2], b"hi");
        let m = head.parse(&input[n + 2..], GET, &limits).unwrap().unwrap();
        assert_eq!(head.status(), 204);
        assert_eq!(n + 2 + m, input.len());
    }

    #[test]
    fn response_limits() {
        let limits = Limits::default().with_max_head_bytes(20);
        let mut head = ResponseHead::new();
        let err = head
            .parse(b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\n", GET, &limits)
            .unwrap_err();
        assert_eq!(err, Http1Error::Response(ProtocolError::HeadTooLarge));
        assert_eq!(err.status(), 502);
    }
}
