//! Request heads: parsing, validation (RFC 9112 §3, §6, RFC 9110 §7.2) and
//! what a proxy derives from them.

use std::mem::MaybeUninit;

use super::body::BodyFraming;
use super::error::{Http1Error, ProtocolError};
use super::fields::{declared_framing, head_length, DeclaredFraming, Fields, Headers, Span};
use super::target::{parse_host_field, parse_target, AuthoritySpans, TargetForm};
use super::{Limits, Method, Version, MAX_HEADERS_CAP};

/// A parsed request head. Keep one per connection and parse into it again
/// for each request: its buffers are reused, so steady-state parsing does not
/// allocate. It owns a copy of the head's bytes and borrows nothing.
#[derive(Debug, Clone)]
pub struct RequestHead {
    fields: Fields,
    head_len: usize,
    method: Method,
    method_span: Span,
    target: Span,
    version: Version,
    form: TargetForm,
    path: Span,
    authority: Option<AuthoritySpans>,
    framing: BodyFraming,
    keep_alive: bool,
    upgrade: bool,
}

impl Default for RequestHead {
    fn default() -> Self {
        Self {
            fields: Fields::default(),
            head_len: 0,
            method: Method::Get,
            method_span: Span::default(),
            target: Span::default(),
            version: Version::Http11,
            form: TargetForm::Origin,
            path: Span::default(),
            authority: None,
            framing: BodyFraming::Empty,
            keep_alive: true,
            upgrade: false,
        }
    }
}

/// The host and port a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authority<'a> {
    /// As received (not lowercased); an IPv6 literal keeps its brackets.
    pub host: &'a str,
    /// Explicit, or the scheme's default (80; 443 for an `https://`
    /// absolute-form target).
    pub port: u16,
    /// `host[:port]` exactly as received.
    pub raw: &'a str,
}

/// What response parsing must know about the request it answers (keep one
/// per in-flight request when pipelining).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestContext {
    pub method: Method,
    /// Whether an upgrade was requested (and forwarded): only then is a 101
    /// acceptable.
    pub upgrade: bool,
}

impl RequestHead {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets the last request, keeping the buffers' capacity.
    pub fn clear(&mut self) {
        *self = Self {
            fields: std::mem::take(&mut self.fields),
            ..Self::default()
        };
        self.fields.clear();
    }

    /// Parses a request head from the start of `input`.
    ///
    /// `Ok(None)`: the head is incomplete, call again with more bytes.
    /// `Ok(Some(n))`: `input[..n]` was the head; the body (see
    /// [`framing`](Self::framing)) and any pipelined requests follow.
    /// On error the head is cleared and the connection should get the
    /// error's status and be closed.
    pub fn parse(&mut self, input: &[u8], limits: &Limits) -> Result<Option<usize>, Http1Error> {
        self.clear();
        let result = self.parse_inner(input, limits);
        if result.is_err() {
            self.clear();
        }
        result.map_err(Http1Error::Request)
    }

    fn parse_inner(
        &mut self,
        input: &[u8],
        limits: &Limits,
    ) -> Result<Option<usize>, ProtocolError> {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_CAP];
        let mut req = httparse::Request::new(&mut []);
        let result = req.parse_with_uninit_headers(
            input,
            &mut slots[..limits.max_headers().min(MAX_HEADERS_CAP)],
        );
        let Some(head_len) = head_length(result, input.len(), limits.max_head_bytes())? else {
            return Ok(None);
        };
        // A complete parse sets all three.
        let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
            return Err(ProtocolError::Malformed(httparse::Error::Token));
        };
        self.method_span = Span::of(input, method.as_bytes());
        self.target = Span::of(input, target.as_bytes());
        self.method = Method::from_bytes(method.as_bytes());
        self.version = Version::from_minor(minor);
        self.fields.load(input, head_len, req.headers);
        self.head_len = head_len;
        self.validate()?;
        Ok(Some(head_len))
    }

    fn validate(&mut self) -> Result<(), ProtocolError> {
        let f = &self.fields;
        let http11 = self.version == Version::Http11;
        // RFC 9112 §3.2: more than one Host, a bad one, or none in
        // HTTP/1.1, is a 400.
        if f.host_count > 1 {
            return Err(ProtocolError::MultipleHosts);
        }
        let host = match f.first_host {
            Some(i) => {
                parse_host_field(&f.buf, f.entries[i].value).ok_or(ProtocolError::InvalidHost)?
            }
            None if http11 => return Err(ProtocolError::MissingHost),
            None => None,
        };
        let target = parse_target(
            &f.buf,
            self.target,
            self.method == Method::Connect,
            self.method == Method::Options,
        )
        .ok_or(ProtocolError::InvalidTarget)?;
        // The target's authority, if it has one, wins over Host (RFC 9112
        // §3.2.2).
        self.authority = target.authority.or(host);
        self.form = target.form;
        self.path = target.path;

        self.framing = match declared_framing(f, !http11)? {
            DeclaredFraming::None => BodyFraming::Empty,
            DeclaredFraming::Chunked => BodyFraming::Chunked,
            DeclaredFraming::Length(n) => BodyFraming::ContentLength(n),
        };
        let c = f.connection;
        self.keep_alive = !c.close && (http11 || c.keep_alive);
        // HTTP/1.0 upgrades are ignored (RFC 9110 §7.8), and so is h2c's
        // (RFC 7540 §3.2; RFC 9113 §3.1 retired it): the connection would
        // become HTTP/2 the proxy could only relay as opaque bytes, with
        // no per-request routing or metrics. Like linkerd2-proxy, the
        // proxy drops it (`Upgrade` is hop-by-hop, so is `HTTP2-Settings`)
        // and forwards the request as HTTP/1.1.
        self.upgrade = http11
            && c.upgrade
            && f.value_of(f.first_upgrade)
                .is_some_and(|v| !v.trim_ascii().eq_ignore_ascii_case(b"h2c"));
        if self.method == Method::Connect && !http11 {
            return Err(ProtocolError::ConnectInHttp10);
        }

        if self.form == TargetForm::Absolute && !self.path.get(&f.buf).starts_with(b"/") {
            // `http://h` or `http://h?q`: origin-form needs the `/` the
            // request lacks, so keep one after the head's bytes.
            let path = self.path;
            let buf = &mut self.fields.buf;
            let start = buf.len();
            buf.push(b'/');
            buf.extend_from_within(path.start()..path.start() + path.len());
            self.path = Span::new(start, buf.len());
        }
        Ok(())
    }

    /// The head's bytes as received (including any empty lines before the
    /// request line, which `httparse` skips).
    pub fn as_bytes(&self) -> &[u8] {
        &self.fields.buf[..self.head_len]
    }

    pub fn method(&self) -> Method {
        self.method
    }

    /// The method exactly as received.
    pub fn method_str(&self) -> &str {
        str_of(self.method_span.get(&self.fields.buf))
    }

    /// The request-target exactly as received.
    pub fn target(&self) -> &str {
        str_of(self.target.get(&self.fields.buf))
    }

    pub fn target_form(&self) -> TargetForm {
        self.form
    }

    /// The target as an origin server wants it: the path and query (`/` when
    /// an absolute-form target has no path), `*` for asterisk-form, the
    /// authority for CONNECT.
    pub fn path(&self) -> &str {
        match self.form {
            TargetForm::Authority => self.target(),
            _ => str_of(self.path.get(&self.fields.buf)),
        }
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn headers(&self) -> Headers<'_> {
        self.fields.headers()
    }

    /// Where the request is going: the target's authority (absolute- and
    /// authority-form), else the `Host` field; `None` for an HTTP/1.0
    /// request without `Host` or an empty `Host`.
    pub fn authority(&self) -> Option<Authority<'_>> {
        let buf = &self.fields.buf;
        self.authority.map(|a| Authority {
            host: str_of(a.host.get(buf)),
            port: a.port,
            raw: str_of(a.raw.get(buf)),
        })
    }

    pub fn framing(&self) -> BodyFraming {
        self.framing
    }

    /// Whether the client wants the connection kept open after this
    /// exchange: HTTP/1.1 unless `Connection: close`, HTTP/1.0 only with
    /// `Connection: keep-alive`.
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }

    /// `Expect: 100-continue` in an HTTP/1.1 request (RFC 9110 §10.1.1 says
    /// to ignore it in HTTP/1.0).
    pub fn expect_continue(&self) -> bool {
        self.fields.expect_continue && self.version == Version::Http11
    }

    /// The `Upgrade` field's value (`websocket`, `h2c`, ...) when this is an
    /// upgrade request: HTTP/1.1 with `Connection: upgrade` and `Upgrade`.
    pub fn upgrade(&self) -> Option<&[u8]> {
        if self.upgrade {
            self.fields.value_of(self.fields.first_upgrade)
        } else {
            None
        }
    }

    pub fn is_connect(&self) -> bool {
        self.method == Method::Connect
    }

    /// What parsing the response needs to know, assuming an upgrade is
    /// forwarded if one was asked for.
    pub fn context(&self) -> RequestContext {
        RequestContext {
            method: self.method,
            upgrade: self.upgrade,
        }
    }

    pub(crate) fn fields(&self) -> &Fields {
        &self.fields
    }
}

/// The head's text parts were validated by `httparse` (method and names are
/// tokens, the target is UTF-8) and the authority grammar is ASCII, so the
/// fallback is never taken.
fn str_of(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &[u8]) -> Result<Option<(usize, RequestHead)>, Http1Error> {
        let mut head = RequestHead::new();
        Ok(head.parse(input, &Limits::default())?.map(|n| (n, head)))
    }

    fn ok(input: &str) -> RequestHead {
        match parse(input.as_bytes()) {
            Ok(Some((n, head))) => {
                assert_eq!(n, input.len(), "head length");
                head
            }
            other => panic!("{input:?}: {other:?}"),
        }
    }

    fn err(input: &str) -> ProtocolError {
        match parse(input.as_bytes()) {
            Err(Http1Error::Request(e)) => e,
            other => panic!("{input:?}: expected an error, got {other:?}"),
        }
    }

    #[test]
    fn simple_get() {
        let head =
            ok("GET /index.html?x=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8\r\n\r\n");
        assert_eq!(head.method(), Method::Get);
        assert_eq!(head.method_str(), "GET");
        assert_eq!(head.target(), "/index.html?x=1");
        assert_eq!(head.path(), "/index.html?x=1");
        assert_eq!(head.target_form(), TargetForm::Origin);
        assert_eq!(head.version(), Version::Http11);
        assert_eq!(
            head.authority(),
            Some(Authority {
                host: "example.com",
                port: 80,
                raw: "example.com"
            })
        );
        assert_eq!(head.framing(), BodyFraming::Empty);
        assert!(head.keep_alive());
        assert!(!head.expect_continue());
        assert_eq!(head.upgrade(), None);
        assert!(!head.is_connect());
        let names: Vec<&str> = head.headers().iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["Host", "User-Agent"]);
        assert_eq!(head.headers().get("user-agent"), Some(&b"curl/8"[..]));
    }

    #[test]
    fn partial_heads_need_more_bytes() {
        let full = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
        for end in 0..full.len() - 3 {
            assert!(parse(&full[..end]).unwrap().is_none(), "{end}");
        }
        let (n, head) = parse(full).unwrap().unwrap();
        assert_eq!(n, full.len() - 3);
        assert_eq!(head.framing(), BodyFraming::ContentLength(3));
    }

    #[test]
    fn header_name_case_is_kept() {
        let head = ok("GET / HTTP/1.1\r\nhOsT: a\r\nX-MiXeD-Case: v\r\n\r\n");
        let names: Vec<&str> = head.headers().iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["hOsT", "X-MiXeD-Case"]);
    }

    #[test]
    fn smuggling_defences() {
        assert_eq!(
            err("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            ProtocolError::ContentLengthWithTransferEncoding
        );
        assert_eq!(
            err("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n"),
            ProtocolError::ContentLengthWithTransferEncoding
        );
        assert_eq!(
            err("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            ProtocolError::InvalidTransferEncoding
        );
        assert_eq!(
            err("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n"),
            ProtocolError::InvalidTransferEncoding
        );
        assert_eq!(
            err("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            ProtocolError::InvalidTransferEncoding
        );
        assert_eq!(
            err("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            ProtocolError::UnsupportedTransferCoding
        );
        assert_eq!(
            err("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            ProtocolError::ConflictingContentLength
        );
        assert_eq!(
            err("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n"),
            ProtocolError::ConflictingContentLength
        );
        assert_eq!(
            err("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"),
            ProtocolError::InvalidContentLength
        );
        assert_eq!(
            err("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            ProtocolError::TransferEncodingInHttp10
        );
        // Whitespace before the colon and obsolete line folding: httparse
        // refuses both in requests.
        assert!(matches!(
            err("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n"),
            ProtocolError::Malformed(httparse::Error::HeaderName)
        ));
        assert!(matches!(
            err("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n"),
            ProtocolError::Malformed(httparse::Error::HeaderName)
        ));
        assert!(matches!(
            err("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n"),
            ProtocolError::Malformed(_)
        ));
    }

    #[test]
    fn framing() {
        let head = ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(head.framing(), BodyFraming::Chunked);
        let head =
            ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n");
        assert_eq!(head.framing(), BodyFraming::ContentLength(5));
        let head = ok("POST / HTTP/1.0\r\n\r\n");
        assert_eq!(head.framing(), BodyFraming::Empty);
    }

    #[test]
    fn statuses() {
        let e = |s: &str| Http1Error::Request(err(s)).status();
        assert_eq!(
            e("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            501
        );
        assert_eq!(
            e("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"),
            400
        );
        assert_eq!(e("GET / HTTP/1.1\r\n\r\n"), 400);
    }

    #[test]
    fn host_rules() {
        assert_eq!(err("GET / HTTP/1.1\r\n\r\n"), ProtocolError::MissingHost);
        assert_eq!(
            err("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"),
            ProtocolError::MultipleHosts
        );
        assert_eq!(
            err("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"),
            ProtocolError::InvalidHost
        );
        assert_eq!(
            err("GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n"),
            ProtocolError::InvalidHost
        );
        let head = ok("GET / HTTP/1.0\r\n\r\n");
        assert_eq!(head.authority(), None);
        let head = ok("GET / HTTP/1.1\r\nHost:\r\n\r\n");
        assert_eq!(head.authority(), None);
        let head = ok("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n");
        assert_eq!(
            head.authority().map(|a| (a.host, a.port)),
            Some(("[::1]", 8080))
        );
    }

    #[test]
    fn absolute_form_authority_wins() {
        let head = ok("GET http://Upstream.example:8080/a?b HTTP/1.1\r\nHost: other\r\n\r\n");
        assert_eq!(head.target_form(), TargetForm::Absolute);
        assert_eq!(
            head.authority(),
            Some(Authority {
                host: "Upstream.example",
                port: 8080,
                raw: "Upstream.example:8080"
            })
        );
        assert_eq!(head.path(), "/a?b");
        assert_eq!(head.target(), "http://Upstream.example:8080/a?b");

        let head = ok("GET http://h?q=1 HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(head.path(), "/?q=1");
        assert_eq!(
            head.as_bytes(),
            b"GET http://h?q=1 HTTP/1.1\r\nHost: h\r\n\r\n"
        );
        let head = ok("GET http://h HTTP/1.0\r\n\r\n");
        assert_eq!(head.path(), "/");
        assert_eq!(head.authority().map(|a| a.port), Some(80));
        assert_eq!(
            err("GET http://u@h/ HTTP/1.1\r\nHost: h\r\n\r\n"),
            ProtocolError::InvalidTarget
        );
        assert_eq!(
            err("GET h/ HTTP/1.1\r\nHost: h\r\n\r\n"),
            ProtocolError::InvalidTarget
        );
    }

    #[test]
    fn connect_and_asterisk() {
        let head = ok("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
        assert!(head.is_connect());
        assert_eq!(head.target_form(), TargetForm::Authority);
        assert_eq!(head.path(), "example.com:443");
        assert_eq!(
            head.authority().map(|a| (a.host, a.port)),
            Some(("example.com", 443))
        );
        assert_eq!(
            head.context(),
            RequestContext {
                method: Method::Connect,
                upgrade: false
            }
        );
        assert_eq!(
            err("CONNECT example.com HTTP/1.1\r\nHost: example.com\r\n\r\n"),
            ProtocolError::InvalidTarget
        );
        assert_eq!(
            err("CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n"),
            ProtocolError::InvalidTarget
        );

        let head = ok("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(head.target_form(), TargetForm::Asterisk);
        assert_eq!(head.path(), "*");
        assert_eq!(
            err("GET * HTTP/1.1\r\nHost: a\r\n\r\n"),
            ProtocolError::InvalidTarget
        );
    }

    #[test]
    fn keep_alive_rules() {
        assert!(ok("GET / HTTP/1.1\r\nHost: a\r\n\r\n").keep_alive());
        assert!(!ok("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive());
        assert!(
            !ok("GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, CLOSE\r\n\r\n").keep_alive()
        );
        assert!(!ok("GET / HTTP/1.0\r\n\r\n").keep_alive());
        assert!(ok("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive());
        assert!(
            ok("GET / HTTP/1.0\r\nConnection: foo\r\nConnection: Keep-Alive\r\n\r\n").keep_alive()
        );
    }

    #[test]
    fn expect_and_upgrade() {
        assert!(ok(
            "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n"
        )
        .expect_continue());
        assert!(!ok("PUT / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expect_continue());
        assert!(!ok("PUT / HTTP/1.1\r\nHost: a\r\nExpect: other\r\n\r\n").expect_continue());

        let ws = ok(
            "GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        assert_eq!(ws.upgrade(), Some(&b"websocket"[..]));
        assert!(ws.context().upgrade);
        let h2c = ok("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n");
        // h2c's is dropped (the request goes on as HTTP/1.1).
        assert_eq!(h2c.upgrade(), None);
        assert!(!h2c.context().upgrade);
        assert_eq!(
            err("CONNECT a:443 HTTP/1.0\r\n\r\n"),
            ProtocolError::ConnectInHttp10
        );
        assert!(ok("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n").is_connect());
        // Upgrade without the connection option, or in HTTP/1.0: not one.
        assert_eq!(
            ok("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n").upgrade(),
            None
        );
        assert_eq!(
            ok("GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n").upgrade(),
            None
        );
    }

    #[test]
    fn limits_map_to_431() {
        let limits = Limits::default().with_max_headers(2);
        let mut head = RequestHead::new();
        let err = head
            .parse(
                b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n",
                &limits,
            )
            .unwrap_err();
        assert_eq!(err, Http1Error::Request(ProtocolError::TooManyHeaders));
        assert_eq!(err.status(), 431);
        assert!(head
            .parse(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\n\r\n", &limits)
            .unwrap()
            .is_some());

        let limits = Limits::default().with_max_head_bytes(32);
        let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        assert!(head.parse(&big, &limits).unwrap().is_none());
        big.extend_from_slice(b"0123");
        let err = head.parse(&big, &limits).unwrap_err();
        assert_eq!(err, Http1Error::Request(ProtocolError::HeadTooLarge));
        assert_eq!(err.status(), 431);
        // Complete but too long.
        let err = head
            .parse(b"GET / HTTP/1.1\r\nHost: a\r\nX: 01234567\r\n\r\n", &limits)
            .unwrap_err();
        assert_eq!(err.status(), 431);
        // Exactly at the limit is fine.
        let exact = b"GET / HTTP/1.1\r\nHost: abcdefgh\r\n\r\n";
        assert_eq!(exact.len(), 34);
        let limits = Limits::default().with_max_head_bytes(34);
        assert_eq!(head.parse(exact, &limits).unwrap(), Some(34));
    }

    #[test]
    fn pipelined_requests() {
        let input = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut head = RequestHead::new();
        let limits = Limits::default();
        let n = head.parse(input, &limits).unwrap().unwrap();
        assert_eq!(head.path(), "/a");
        let BodyFraming::ContentLength(len) = head.framing() else {
            panic!("framing")
        };
        let next = n + len as usize;
        assert_eq!(&input[n..next], b"hello");
        let m = head.parse(&input[next..], &limits).unwrap().unwrap();
        assert_eq!(head.path(), "/b");
        assert_eq!(next + m, input.len());
    }

    #[test]
    fn bare_lf_and_leading_empty_lines_as_httparse_does() {
        let head = ok("GET / HTTP/1.1\nHost: a\n\n");
        assert_eq!(head.authority().map(|a| a.host), Some("a"));
        let head = ok("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(head.path(), "/");
        assert_eq!(head.as_bytes(), b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    }

    #[test]
    fn malformed_lines() {
        for bad in [
            "GET / HTTP/1.2\r\nHost: a\r\n\r\n",
            "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
            "GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: \x00\r\n\r\n",
            "GET / HTTP/1.1\r\n: empty\r\n\r\n",
        ] {
            assert!(matches!(err(bad), ProtocolError::Malformed(_)), "{bad:?}");
        }
    }

    #[test]
    fn reuse_does_not_leak_state() {
        let mut head = RequestHead::new();
        let limits = Limits::default();
        head.parse(
            b"POST http://x/ HTTP/1.1\r\nHost: x\r\nConnection: close, foo\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
            &limits,
        )
        .unwrap()
        .unwrap();
        assert!(head.fields().named_by_connection(b"FOO"));
        head.parse(b"GET / HTTP/1.1\r\nHost: y\r\n\r\n", &limits)
            .unwrap()
            .unwrap();
        assert!(head.keep_alive());
        assert!(!head.expect_continue());
        assert_eq!(head.framing(), BodyFraming::Empty);
        assert_eq!(head.target_form(), TargetForm::Origin);
        assert!(!head.fields().named_by_connection(b"foo"));
        assert_eq!(head.headers().len(), 1);
    }
}
