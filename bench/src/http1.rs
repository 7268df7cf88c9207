//! HTTP/1.1 keep-alive: a server answering `GET /` with a 13-byte body and
//! `GET /1m` with a 1 MiB body, and a client that sends one GET and reads the
//! whole response (Content-Length framing) per round trip.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;

use crate::load::RoundTrip;

/// The small response body.
pub const SMALL_BODY: &[u8] = b"Hello, world!";
/// The large response body's length.
pub const LARGE_BODY_LEN: usize = 1 << 20;
/// Request and response heads larger than this are refused (both sides are
/// ours; this only bounds a confused peer).
const MAX_HEAD: usize = 16 * 1024;

fn large_body() -> &'static [u8] {
    static BODY: OnceLock<Vec<u8>> = OnceLock::new();
    BODY.get_or_init(|| (0..LARGE_BODY_LEN).map(|i| b'a' + (i % 26) as u8).collect())
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads one message head (through the blank line) into `head`. `Ok(false)`
/// on a clean end of stream before any byte of a new head.
pub(crate) fn read_head(reader: &mut impl BufRead, head: &mut Vec<u8>) -> io::Result<bool> {
    head.clear();
    loop {
        let n = reader.read_until(b'\n', head)?;
        if n == 0 {
            return if head.is_empty() {
                Ok(false)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        if head.ends_with(b"\r\n\r\n") {
            return Ok(true);
        }
        if head.len() > MAX_HEAD {
            return Err(invalid("message head too large"));
        }
    }
}

fn content_length(headers: &[httparse::Header<'_>]) -> io::Result<Option<usize>> {
    let Some(h) = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
    else {
        return Ok(None);
    };
    std::str::from_utf8(h.value)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| invalid("bad Content-Length"))
}

fn has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Serves requests on one keep-alive connection until the client closes it
/// (or asks to with `Connection: close`).
pub fn serve(stream: TcpStream) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(16 * 1024, stream);
    let mut head = Vec::with_capacity(1024);
    let mut scratch = vec![0u8; 16 * 1024];
    let small = {
        let mut r = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
            SMALL_BODY.len()
        )
        .into_bytes();
        r.extend_from_slice(SMALL_BODY);
        r
    };
    let large_head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {LARGE_BODY_LEN}\r\n\r\n"
    );
    let not_found = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
    while read_head(&mut reader, &mut head)? {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return Err(invalid("partial request head")),
            Err(e) => return Err(invalid(format!("bad request head: {e}"))),
        }
        // A request body (none are sent by the bench) is read and dropped.
        let mut body = content_length(req.headers)?.unwrap_or(0);
        while body > 0 {
            let n = body.min(scratch.len());
            reader.read_exact(&mut scratch[..n])?;
            body -= n;
        }
        let close = req.version == Some(0) || has_token(req.headers, "connection", "close");
        match (req.method, req.path) {
            (Some("GET"), Some("/")) => writer.write_all(&small)?,
            (Some("GET"), Some("/1m")) => {
                writer.write_all(large_head.as_bytes())?;
                writer.write_all(large_body())?;
            }
            _ => writer.write_all(not_found)?,
        }
        if close {
            return Ok(());
        }
    }
    Ok(())
}

/// One keep-alive connection sending `GET <path>` and expecting a 200 with
/// `expected_body` bytes.
pub struct Http1Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    request: Vec<u8>,
    expected_body: usize,
    head: Vec<u8>,
    scratch: Vec<u8>,
}

impl Http1Client {
    pub fn connect(addr: SocketAddr, path: &str, expected_body: usize) -> io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        crate::tune(&stream)?;
        let writer = stream.try_clone()?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nhost: bench.test\r\nuser-agent: ringmesh-bench\r\naccept: */*\r\n\r\n"
        )
        .into_bytes();
        Ok(Self {
            reader: BufReader::with_capacity(64 * 1024, stream),
            writer,
            request,
            expected_body,
            head: Vec::with_capacity(1024),
            scratch: vec![0; 64 * 1024],
        })
    }
}

impl RoundTrip for Http1Client {
    fn round_trip(&mut self) -> io::Result<()> {
        self.writer.write_all(&self.request)?;
        if !read_head(&mut self.reader, &mut self.head)? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&self.head) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return Err(invalid("partial response head")),
            Err(e) => return Err(invalid(format!("bad response head: {e}"))),
        }
        if resp.code != Some(200) {
            let extra = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("l5d-proxy-error"))
                .map(|h| format!(" ({})", String::from_utf8_lossy(h.value)))
                .unwrap_or_default();
            return Err(invalid(format!("expected 200, got {:?}{extra}", resp.code)));
        }
        let len = content_length(resp.headers)?
            .ok_or_else(|| invalid("response without Content-Length"))?;
        if len != self.expected_body {
            return Err(invalid(format!(
                "expected a {}-byte body, got {len}",
                self.expected_body
            )));
        }
        let mut left = len;
        while left > 0 {
            let n = left.min(self.scratch.len());
            self.reader.read_exact(&mut self.scratch[..n])?;
            left -= n;
        }
        Ok(())
    }
}
