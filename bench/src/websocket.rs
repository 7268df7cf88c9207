//! A minimal WebSocket (RFC 6455) echo server and client: the opening
//! handshake with `Sec-WebSocket-Accept`, masked client frames, unmasked
//! server frames, ping/pong and close. No extensions, no fragmentation on
//! send (received fragments are echoed as they come).

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};

use base64::Engine as _;

use crate::http1::read_head;
use crate::load::RoundTrip;

/// RFC 6455 §1.3: appended to the client's key before hashing.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Frames larger than this are refused (the bench sends small ones).
const MAX_PAYLOAD: u64 = 1 << 20;

const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.trim().as_bytes());
    sha.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

fn header<'h>(headers: &'h [httparse::Header<'_>], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::trim)
}

/// One frame as read: FIN bit, opcode, and the (unmasked) payload in the
/// caller's buffer.
struct Frame {
    fin: bool,
    opcode: u8,
}

/// Reads a frame into `payload`. `mask_required` is the server side's check
/// (clients must mask, RFC 6455 §5.1); servers must not mask.
fn read_frame(
    reader: &mut impl BufRead,
    payload: &mut Vec<u8>,
    mask_required: bool,
) -> io::Result<Option<Frame>> {
    let mut hdr = [0u8; 2];
    // A clean close between frames is the end of the conversation.
    if reader.fill_buf()?.is_empty() {
        return Ok(None);
    }
    reader.read_exact(&mut hdr)?;
    let fin = hdr[0] & 0x80 != 0;
    if hdr[0] & 0x70 != 0 {
        return Err(invalid("reserved bits set (no extension was negotiated)"));
    }
    let opcode = hdr[0] & 0x0F;
    let masked = hdr[1] & 0x80 != 0;
    if masked != mask_required {
        return Err(invalid(if mask_required {
            "client frame not masked"
        } else {
            "server frame masked"
        }));
    }
    let len = match hdr[1] & 0x7F {
        126 => {
            let mut b = [0u8; 2];
            reader.read_exact(&mut b)?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            reader.read_exact(&mut b)?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    if len > MAX_PAYLOAD {
        return Err(invalid(format!("frame of {len} bytes is too large")));
    }
    let mut mask = [0u8; 4];
    if masked {
        reader.read_exact(&mut mask)?;
    }
    payload.resize(len as usize, 0);
    reader.read_exact(payload)?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok(Some(Frame { fin, opcode }))
}

/// Appends one frame to `out`; masked when `mask` is given (client side).
fn encode_frame(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    out.push(if fin { 0x80 } else { 0 } | opcode);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
}

/// Answers the opening handshake, then echoes data frames until a close
/// frame or the end of the stream.
pub fn serve(stream: TcpStream) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(16 * 1024, stream);
    let mut head = Vec::with_capacity(1024);
    if !read_head(&mut reader, &mut head)? {
        return Ok(());
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(invalid("bad handshake request")),
    }
    let upgrade = header(req.headers, "upgrade").unwrap_or_default();
    let key = header(req.headers, "sec-websocket-key");
    let (true, Some(key)) = (upgrade.eq_ignore_ascii_case("websocket"), key) else {
        writer.write_all(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )?;
        return Ok(());
    };
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
        accept_key(key)
    );
    writer.write_all(resp.as_bytes())?;

    let mut payload = Vec::with_capacity(1024);
    let mut out = Vec::with_capacity(1024);
    while let Some(frame) = read_frame(&mut reader, &mut payload, true)? {
        out.clear();
        match frame.opcode {
            OP_CLOSE => {
                // Echo the status code back and end (RFC 6455 §5.5.1).
                let code = payload.get(..2).unwrap_or_default();
                encode_frame(&mut out, true, OP_CLOSE, code, None);
                writer.write_all(&out)?;
                return Ok(());
            }
            OP_PING => encode_frame(&mut out, true, OP_PONG, &payload, None),
            OP_PONG => continue,
            op => encode_frame(&mut out, frame.fin, op, &payload, None),
        }
        writer.write_all(&out)?;
    }
    Ok(())
}

/// One WebSocket connection sending masked text frames of a fixed size and
/// waiting for each echo.
pub struct WebSocketClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    message: Vec<u8>,
    frame: Vec<u8>,
    reply: Vec<u8>,
}

impl WebSocketClient {
    /// Connects and completes the opening handshake (checking the accept key).
    pub fn connect(addr: SocketAddr, size: usize) -> io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        crate::tune(&stream)?;
        let mut writer = stream.try_clone()?;
        let mut reader = BufReader::with_capacity(16 * 1024, stream);
        let mut nonce = [0u8; 16];
        fastrand::fill(&mut nonce);
        let key = base64::engine::general_purpose::STANDARD.encode(nonce);
        let req = format!(
            "GET /echo HTTP/1.1\r\nhost: bench.test\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: {key}\r\nsec-websocket-version: 13\r\n\r\n"
        );
        writer.write_all(req.as_bytes())?;
        let mut head = Vec::new();
        if !read_head(&mut reader, &mut head)? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return Err(invalid("bad handshake response")),
        }
        if resp.code != Some(101) {
            return Err(invalid(format!(
                "handshake answered {:?}, expected 101",
                resp.code
            )));
        }
        if header(resp.headers, "sec-websocket-accept") != Some(accept_key(&key).as_str()) {
            return Err(invalid("wrong Sec-WebSocket-Accept"));
        }
        let message = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        Ok(Self {
            reader,
            writer,
            message,
            frame: Vec::with_capacity(size + 14),
            reply: Vec::with_capacity(size),
        })
    }
}

impl RoundTrip for WebSocketClient {
    fn round_trip(&mut self) -> io::Result<()> {
        self.frame.clear();
        // A fresh mask per frame, as RFC 6455 §5.3 requires.
        let mask = fastrand::u32(..).to_ne_bytes();
        encode_frame(&mut self.frame, true, OP_TEXT, &self.message, Some(mask));
        self.writer.write_all(&self.frame)?;
        match read_frame(&mut self.reader, &mut self.reply, false)? {
            Some(Frame {
                fin: true,
                opcode: OP_TEXT,
            }) if self.reply == self.message => Ok(()),
            Some(_) => Err(invalid("echo frame differs from the message")),
            None => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

impl Drop for WebSocketClient {
    fn drop(&mut self) {
        // Best effort close frame (1000, normal closure); the server ends the
        // connection after echoing it.
        let mut out = Vec::new();
        encode_frame(
            &mut out,
            true,
            OP_CLOSE,
            &1000u16.to_be_bytes(),
            Some([1, 2, 3, 4]),
        );
        let _ = self.writer.write_all(&out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frames_round_trip_masked_and_unmasked() {
        for len in [0usize, 5, 125, 126, 65535, 65536] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            for mask in [None, Some([9, 8, 7, 6])] {
                let mut wire = Vec::new();
                encode_frame(&mut wire, true, OP_TEXT, &payload, mask);
                let mut out = Vec::new();
                let f = read_frame(&mut &wire[..], &mut out, mask.is_some())
                    .unwrap()
                    .unwrap();
                assert!(f.fin);
                assert_eq!(f.opcode, OP_TEXT);
                assert_eq!(out, payload);
            }
        }
    }
}
