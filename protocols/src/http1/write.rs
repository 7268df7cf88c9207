//! Re-serialising heads for forwarding, and minimal error responses.
//!
//! A forwarded head keeps its header fields in order with their names'
//! original case, minus the hop-by-hop ones (RFC 9110 §7.6.1: `Connection`
//! and every field it names, `Keep-Alive`, `Proxy-Connection`, `TE`,
//! `Transfer-Encoding`, `Upgrade`). What the next hop must hear about this
//! connection is the caller's choice ([`WriteOptions`]). Because the proxy
//! forwards bodies byte for byte, framing fields follow the message:
//! `Content-Length` is written once, at its first field's place with that
//! field's name, as the one decimal length it declared (`5, 5` or two
//! `Content-Length: 5` fields, which RFC 9110 §8.6 lets a recipient accept
//! as one, become `Content-Length: 5`: a next hop that reads lists or
//! repeats differently cannot be told two lengths), and
//! `Transfer-Encoding: chunked` is written again when the message was
//! chunked.

use super::error::WriteError;
use super::fields::{is_field_value_byte, is_tchar, ContentLength, Fields, HeaderKind};
use super::request::RequestHead;
use super::response::ResponseHead;
use super::target::TargetForm;
use super::{BodyFraming, Version};

/// The `Connection` header the forwarded head carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnectionHeader {
    /// None: HTTP/1.1's default, a persistent connection.
    #[default]
    Omit,
    KeepAlive,
    Close,
}

/// How to write a head for the next hop.
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions<'a> {
    /// The version on the start line: HTTP/1.1 by default (RFC 9110 §6.2: a
    /// proxy sends its own version). HTTP/1.0 lets a proxy forward an
    /// HTTP/1.0 client's request so that the response cannot be chunked.
    pub version: Version,
    /// Requests: send an absolute-form target in origin-form (what an origin
    /// server expects from a proxy; RFC 9112 §3.2.1). On by default.
    pub origin_form: bool,
    pub connection: ConnectionHeader,
    /// Forward the upgrade (keep `Upgrade`, add `upgrade` to `Connection`)
    /// when the head is an upgrade request or a 101 response; ignored
    /// otherwise. Other fields named by `Connection` (such as h2c's
    /// `HTTP2-Settings`) are still removed.
    pub upgrade: bool,
    /// Fields to drop (names compared case-insensitively), e.g. ones the
    /// proxy sets itself through `extra_headers`.
    pub remove_headers: &'a [&'a str],
    /// The `Host` to send instead of the request's own (an endpoint's
    /// authority override), at the first `Host` field's place, or added
    /// when the request had none. Checked as `extra_headers` values are.
    pub host: Option<&'a [u8]>,
    /// Fields to add after the forwarded ones, e.g. `l5d-dst-canonical`.
    /// Checked: a name must be a token and a value must hold no control
    /// characters but HTAB, so nothing can inject a header line.
    pub extra_headers: &'a [(&'a str, &'a [u8])],
}

impl Default for WriteOptions<'_> {
    fn default() -> Self {
        Self {
            version: Version::Http11,
            origin_form: true,
            connection: ConnectionHeader::Omit,
            upgrade: false,
            remove_headers: &[],
            host: None,
            extra_headers: &[],
        }
    }
}

/// Appends `head` to `out`, ready to send to the next hop. An absolute-form
/// target is rewritten to origin-form unless `opts.origin_form` is off; with
/// an absolute-form target, `Host` is replaced by the target's authority
/// (RFC 9112 §3.2.2). An HTTP/1.0 request without `Host` is written
/// without one: add it through `extra_headers` when forwarding it as
/// HTTP/1.1. Nothing is written on error.
pub fn write_request_head(
    head: &RequestHead,
    out: &mut Vec<u8>,
    opts: &WriteOptions<'_>,
) -> Result<(), WriteError> {
    check_extra_headers(opts)?;
    let absolute = head.target_form() == TargetForm::Absolute;
    let target = if absolute && opts.origin_form {
        head.path()
    } else {
        head.target()
    };
    out.extend_from_slice(head.method_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.push(b' ');
    out.extend_from_slice(opts.version.as_str().as_bytes());
    out.extend_from_slice(b"\r\n");
    let host = match opts.host {
        Some(h) => Some(h),
        None if absolute => head.authority().map(|a| a.raw.as_bytes()),
        None => None,
    };
    write_fields(
        head.fields(),
        out,
        opts,
        FieldPlan {
            upgrade: opts.upgrade && head.upgrade().is_some(),
            chunked: head.framing() == BodyFraming::Chunked,
            host,
            no_length: false,
        },
    );
    Ok(())
}

/// Appends `head` to `out`, ready to send to the client, keeping the
/// status and reason phrase. Nothing is written on error.
pub fn write_response_head(
    head: &ResponseHead,
    out: &mut Vec<u8>,
    opts: &WriteOptions<'_>,
) -> Result<(), WriteError> {
    check_extra_headers(opts)?;
    out.extend_from_slice(opts.version.as_str().as_bytes());
    out.push(b' ');
    push_decimal(out, u64::from(head.status()));
    out.push(b' ');
    out.extend_from_slice(head.reason());
    out.extend_from_slice(b"\r\n");
    write_fields(
        head.fields(),
        out,
        opts,
        FieldPlan {
            upgrade: opts.upgrade && head.upgrade().is_some(),
            // Never to an HTTP/1.0 client (RFC 9112 §6.1), which would
            // take it for faulty framing: only a body-less answer (HEAD,
            // 304) that declared it gets this far.
            chunked: head.is_chunked() && opts.version != Version::Http10,
            host: None,
            // RFC 9110 §8.6: never on a 1xx or a 204 (a client that took
            // it for a length would read the next response as a body),
            // nor on a 2xx to CONNECT (§9.3.6: a client that took it for
            // a length would read the tunnel's first bytes as a body).
            no_length: (100..200).contains(&head.status())
                || head.status() == 204
                || head.framing() == BodyFraming::Tunnel,
        },
    );
    Ok(())
}

struct FieldPlan<'a> {
    upgrade: bool,
    chunked: bool,
    /// Replaces the `Host` value (written first if the head has none).
    host: Option<&'a [u8]>,
    /// `Content-Length` is left out.
    no_length: bool,
}

fn write_fields(fields: &Fields, out: &mut Vec<u8>, opts: &WriteOptions<'_>, plan: FieldPlan<'_>) {
    let buf = &fields.buf;
    let original_name = |index: Option<usize>, default: &'static [u8]| -> &[u8] {
        index.map_or(default, |i| fields.entries[i].name.get(buf))
    };
    if let (Some(host), None) = (plan.host, fields.first_host) {
        push_field(out, b"Host", host);
    }
    // The length the codec accepted. An invalid one only gets this far in
    // a message whose framing ignores it (1xx, 204, 101, 2xx to CONNECT,
    // which must not carry one at all): it is dropped rather than handed
    // to a next hop that might take it for a length.
    let length = match fields.content_length() {
        ContentLength::Length(n) => Some(n),
        ContentLength::Invalid(_) | ContentLength::Absent => None,
    };
    for (i, entry) in fields.entries.iter().enumerate() {
        let name = entry.name.get(buf);
        let value = entry.value.get(buf);
        match entry.kind {
            HeaderKind::Host => {
                push_field(out, name, plan.host.unwrap_or(value));
                continue;
            }
            HeaderKind::ContentLength => {
                if let Some(n) = length.filter(|_| !plan.no_length) {
                    if fields.first_content_length == Some(i) && !removed(opts, name) {
                        out.extend_from_slice(name);
                        out.extend_from_slice(b": ");
                        push_decimal(out, n);
                        out.extend_from_slice(b"\r\n");
                    }
                }
                continue;
            }
            HeaderKind::Upgrade if plan.upgrade => {}
            kind if kind.is_hop_by_hop() => continue,
            _ => {}
        }
        if fields.named_by_connection(name) || removed(opts, name) {
            continue;
        }
        push_field(out, name, value);
    }
    if plan.chunked {
        let name = original_name(fields.first_transfer_encoding, b"Transfer-Encoding");
        push_field(out, name, b"chunked");
    }
    let persistence: &[u8] = match opts.connection {
        ConnectionHeader::Omit => b"",
        ConnectionHeader::KeepAlive => b"keep-alive",
        ConnectionHeader::Close => b"close",
    };
    if !persistence.is_empty() || plan.upgrade {
        out.extend_from_slice(original_name(fields.first_connection, b"Connection"));
        out.extend_from_slice(b": ");
        out.extend_from_slice(persistence);
        if plan.upgrade {
            if !persistence.is_empty() {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(b"upgrade");
        }
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in opts.extra_headers {
        push_field(out, name.as_bytes(), value);
    }
    out.extend_from_slice(b"\r\n");
}

fn removed(opts: &WriteOptions<'_>, name: &[u8]) -> bool {
    opts.remove_headers
        .iter()
        .any(|r| r.as_bytes().eq_ignore_ascii_case(name))
}

fn check_extra_headers(opts: &WriteOptions<'_>) -> Result<(), WriteError> {
    for (name, value) in opts.extra_headers {
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(WriteError::InvalidHeaderName);
        }
        if !value.iter().all(|&b| is_field_value_byte(b)) {
            return Err(WriteError::InvalidHeaderValue);
        }
    }
    if let Some(host) = opts.host {
        if host.is_empty() || !host.iter().all(|&b| is_field_value_byte(b)) {
            return Err(WriteError::InvalidHeaderValue);
        }
    }
    Ok(())
}

/// Appends one `name: value` field line. The caller vouches for the name
/// and value (taken from a parsed head or an `http` header map).
pub fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends a complete, connection-closing response with `body` as plain
/// text: `HTTP/1.1 400 Bad Request\r\ncontent-length: N\r\nconnection:
/// close\r\n\r\nbody`. For the proxy's own errors (see
/// [`super::Http1Error::status`]).
pub fn write_error_response(status: u16, body: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(canonical_reason(status).as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: ");
    push_decimal(out, body.len() as u64);
    out.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
}

/// The reason phrase RFC 9110 §15 gives a status, or "" for one it does
/// not define (an empty reason is valid).
pub fn canonical_reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Limits, RequestContext};
    use super::*;

    fn request(input: &str) -> RequestHead {
        let mut head = RequestHead::new();
        head.parse(input.as_bytes(), &Limits::default())
            .unwrap()
            .unwrap();
        head
    }

    fn write_req(input: &str, opts: &WriteOptions<'_>) -> String {
        let mut out = Vec::new();
        write_request_head(&request(input), &mut out, opts).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn write_res(input: &str, ctx: RequestContext, opts: &WriteOptions<'_>) -> String {
        let mut head = ResponseHead::new();
        head.parse(input.as_bytes(), ctx, &Limits::default())
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        write_response_head(&head, &mut out, opts).unwrap();
        String::from_utf8(out).unwrap()
    }

    const GET: RequestContext = RequestContext {
        method: super::super::Method::Get,
        upgrade: false,
    };

    #[test]
    fn keeps_case_and_order_and_drops_hop_by_hop() {
        let out = write_req(
            "GET /x HTTP/1.1\r\nhost: a\r\nX-Custom: 1\r\nConnection: keep-alive, X-Hop, TE\r\n\
             Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nx-hop: 2\r\n\
             Trailer: X-Sum\r\nUpgrade: websocket\r\naccept: */*\r\n\r\n",
            &WriteOptions::default(),
        );
        assert_eq!(
            out,
            "GET /x HTTP/1.1\r\nhost: a\r\nX-Custom: 1\r\nTrailer: X-Sum\r\naccept: */*\r\n\r\n"
        );
    }

    #[test]
    fn connection_cannot_remove_framing_or_host() {
        let out = write_req(
            "POST / HTTP/1.1\r\nHost: a\r\nConnection: Content-Length, Host, Transfer-Encoding\r\nContent-Length: 3\r\n\r\n",
            &WriteOptions::default(),
        );
        assert_eq!(
            out,
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n"
        );
    }

    #[test]
    fn repeated_content_length_is_forwarded_once_normalised() {
        let opts = WriteOptions::default();
        for (fields, expected) in [
            ("content-length: 5, 5\r\n", "content-length: 5\r\n"),
            (
                "Content-Length: 5\r\nX-A: 1\r\ncontent-length: 5\r\n",
                "Content-Length: 5\r\nX-A: 1\r\n",
            ),
            ("Content-Length: 005 , 5,5\r\n", "Content-Length: 5\r\n"),
            ("Content-Length: 5\r\n", "Content-Length: 5\r\n"),
        ] {
            let out = write_req(
                &format!("POST / HTTP/1.1\r\nHost: a\r\n{fields}\r\n"),
                &opts,
            );
            assert_eq!(
                out,
                format!("POST / HTTP/1.1\r\nHost: a\r\n{expected}\r\n"),
                "{fields:?}"
            );
            let out = write_res(&format!("HTTP/1.1 200 OK\r\n{fields}\r\n"), GET, &opts);
            assert_eq!(
                out,
                format!("HTTP/1.1 200 OK\r\n{expected}\r\n"),
                "{fields:?}"
            );
        }
        // HEAD and 304: the field describes a GET's body; still one value.
        let out = write_res(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 7, 7\r\n\r\n",
            GET,
            &opts,
        );
        assert_eq!(
            out,
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n"
        );
        // 1xx and 204 must not carry the field (RFC 9110 §8.6): dropped,
        // valid or not (as hyper's `can_have_content_length`).
        for (input, expected) in [
            (
                "HTTP/1.1 204 No Content\r\nContent-Length: 1, 2\r\nX: y\r\n\r\n",
                "HTTP/1.1 204 No Content\r\nX: y\r\n\r\n",
            ),
            (
                "HTTP/1.1 100 Continue\r\nContent-Length: \r\nContent-Length: x\r\n\r\n",
                "HTTP/1.1 100 Continue\r\n\r\n",
            ),
            (
                "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\ncontent-length: 0\r\n\r\n",
                "HTTP/1.1 204 No Content\r\n\r\n",
            ),
            (
                "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
                "HTTP/1.1 204 No Content\r\n\r\n",
            ),
            (
                "HTTP/1.1 103 Early Hints\r\nContent-Length: 5\r\nLink: </a>\r\n\r\n",
                "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
            ),
        ] {
            assert_eq!(write_res(input, GET, &opts), expected, "{input:?}");
        }
        // Nor a 2xx to CONNECT (RFC 9110 §9.3.6): what follows is the
        // tunnel, not a body. Another answer to CONNECT keeps its length.
        let connect = RequestContext {
            method: super::super::Method::Connect,
            upgrade: false,
        };
        assert_eq!(
            write_res(
                "HTTP/1.1 200 Connection established\r\nContent-Length: 5\r\nX: y\r\n\r\n",
                connect,
                &opts
            ),
            "HTTP/1.1 200 Connection established\r\nX: y\r\n\r\n"
        );
        assert_eq!(
            write_res(
                "HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\n\r\n",
                connect,
                &opts
            ),
            "HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\n\r\n"
        );
        // A caller removing the field removes every copy.
        let out = write_req(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n",
            &WriteOptions {
                remove_headers: &["content-length"],
                ..WriteOptions::default()
            },
        );
        assert_eq!(out, "POST / HTTP/1.1\r\nHost: a\r\n\r\n");
    }

    #[test]
    fn host_override_replaces_or_adds_host() {
        let gw = WriteOptions {
            host: Some(b"web.ns.svc.cluster.local:80"),
            ..WriteOptions::default()
        };
        assert_eq!(
            write_req("GET / HTTP/1.1\r\nhost: a\r\nAccept: */*\r\n\r\n", &gw),
            "GET / HTTP/1.1\r\nhost: web.ns.svc.cluster.local:80\r\nAccept: */*\r\n\r\n"
        );
        assert_eq!(
            write_req("GET http://b/p HTTP/1.0\r\n\r\n", &gw),
            "GET /p HTTP/1.1\r\nHost: web.ns.svc.cluster.local:80\r\n\r\n"
        );
        let mut out = Vec::new();
        let head = request("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        let bad = WriteOptions {
            host: Some(b"a\r\nX-Injected: 1"),
            ..WriteOptions::default()
        };
        assert!(write_request_head(&head, &mut out, &bad).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn absolute_form_to_origin_form_and_host() {
        let input =
            "GET http://b.example:8080/p?q HTTP/1.1\r\nUser-Agent: x\r\nHost: wrong\r\n\r\n";
        assert_eq!(
            write_req(input, &WriteOptions::default()),
            "GET /p?q HTTP/1.1\r\nUser-Agent: x\r\nHost: b.example:8080\r\n\r\n"
        );
        let keep = WriteOptions {
            origin_form: false,
            ..WriteOptions::default()
        };
        assert_eq!(
            write_req(input, &keep),
            "GET http://b.example:8080/p?q HTTP/1.1\r\nUser-Agent: x\r\nHost: b.example:8080\r\n\r\n"
        );
        assert_eq!(
            write_req(
                "GET http://h?x HTTP/1.0\r\nAccept: */*\r\n\r\n",
                &WriteOptions::default()
            ),
            "GET /?x HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n"
        );
    }

    #[test]
    fn chunked_is_written_again_with_its_case() {
        let out = write_req(
            "POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\nTrailer: X\r\n\r\n",
            &WriteOptions::default(),
        );
        assert_eq!(
            out,
            "POST / HTTP/1.1\r\nHost: a\r\nTrailer: X\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let out = write_res(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            GET,
            &WriteOptions::default(),
        );
        assert_eq!(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        // Never to an HTTP/1.0 client (here a 304, which has no body).
        let to_http10 = WriteOptions {
            version: Version::Http10,
            ..WriteOptions::default()
        };
        let out = write_res(
            "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
            GET,
            &to_http10,
        );
        assert_eq!(out, "HTTP/1.0 304 Not Modified\r\n\r\n");
    }

    #[test]
    fn connection_choice_and_extra_headers() {
        let opts = WriteOptions {
            connection: ConnectionHeader::Close,
            remove_headers: &["l5d-dst-canonical"],
            extra_headers: &[("l5d-dst-canonical", b"svc.ns.svc.cluster.local:80")],
            ..WriteOptions::default()
        };
        let out = write_req(
            "GET / HTTP/1.0\r\nHost: a\r\nCONNECTION: keep-alive\r\nL5d-Dst-Canonical: spoofed\r\n\r\n",
            &opts,
        );
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: a\r\nCONNECTION: close\r\nl5d-dst-canonical: svc.ns.svc.cluster.local:80\r\n\r\n"
        );
        let opts = WriteOptions {
            connection: ConnectionHeader::KeepAlive,
            version: Version::Http10,
            ..WriteOptions::default()
        };
        assert_eq!(
            write_req("GET / HTTP/1.0\r\n\r\n", &opts),
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn upgrades_are_forwarded_on_request() {
        let input = "GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n";
        let forward = WriteOptions {
            upgrade: true,
            ..WriteOptions::default()
        };
        assert_eq!(
            write_req(input, &forward),
            "GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\nConnection: upgrade\r\n\r\n"
        );
        assert_eq!(
            write_req(input, &WriteOptions::default()),
            "GET /chat HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Key: k\r\n\r\n"
        );
        // Not an upgrade request: nothing to forward.
        assert_eq!(
            write_req(
                "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
                &forward
            ),
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        );
        let ctx = RequestContext {
            upgrade: true,
            ..GET
        };
        let close_too = WriteOptions {
            connection: ConnectionHeader::KeepAlive,
            ..forward
        };
        assert_eq!(
            write_res(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n",
                ctx,
                &close_too
            ),
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nSec-WebSocket-Accept: x\r\nconnection: keep-alive, upgrade\r\n\r\n"
        );
    }

    #[test]
    fn response_keeps_status_and_reason() {
        assert_eq!(
            write_res(
                "HTTP/1.0 299 Whatever You Say\r\nContent-Length: 0\r\n\r\n",
                GET,
                &WriteOptions::default()
            ),
            "HTTP/1.1 299 Whatever You Say\r\nContent-Length: 0\r\n\r\n"
        );
        assert_eq!(
            write_res("HTTP/1.1 200\r\n\r\n", GET, &WriteOptions::default()),
            "HTTP/1.1 200 \r\n\r\n"
        );
    }

    #[test]
    fn invalid_extra_headers_are_refused() {
        let head = request("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        let mut out = Vec::new();
        for (extra, err) in [
            (("bad name", &b"v"[..]), WriteError::InvalidHeaderName),
            (("", &b"v"[..]), WriteError::InvalidHeaderName),
            (
                ("x", &b"a\r\nInjected: 1"[..]),
                WriteError::InvalidHeaderValue,
            ),
            (("x", &b"\0"[..]), WriteError::InvalidHeaderValue),
        ] {
            let extras = [extra];
            let opts = WriteOptions {
                extra_headers: &extras,
                ..WriteOptions::default()
            };
            assert_eq!(write_request_head(&head, &mut out, &opts), Err(err));
            assert!(out.is_empty());
        }
    }

    #[test]
    fn error_responses() {
        let mut out = Vec::new();
        write_error_response(400, "bad request", &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\nconnection: close\r\n\r\nbad request"
        );
        out.clear();
        write_error_response(431, "", &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        assert_eq!(canonical_reason(502), "Bad Gateway");
        assert_eq!(canonical_reason(599), "");
        let mut n = Vec::new();
        push_decimal(&mut n, u64::MAX);
        assert_eq!(n, u64::MAX.to_string().as_bytes());
    }
}
