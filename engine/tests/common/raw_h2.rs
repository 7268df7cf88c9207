//! HTTP/2 frames written by hand, and an origin that answers with them:
//! for the malformed and hostile cases no HTTP/2 library would send.

use std::io::{Read, Write};

use super::Backend;

/// One frame: (type, flags, stream, payload).
pub type Frame = (u8, u8, u32, Vec<u8>);

/// A frame's bytes.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The next frame read from `s`, as (type, flags, stream, payload); `None`
/// when the connection ends or the read times out.
pub fn read_frame(s: &mut impl Read) -> Option<Frame> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head).ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).ok()?;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    Some((head[3], head[4], stream, payload))
}

/// What a raw origin answers a stream (by id) with.
pub type RawAnswer = fn(u32) -> Vec<u8>;

/// A raw HTTP/2 origin answering every stream with `answer(stream)`'s
/// frames (malformed ones, which no HTTP/2 library would send).
pub fn raw_h2_origin(answer: RawAnswer) -> Backend {
    raw_h2_origin_seeing(answer, |_, _| {})
}

/// As [`raw_h2_origin`], telling `seen` the type and stream of every
/// other frame it reads (SETTINGS ACKs, DATA, RST_STREAM ...).
pub fn raw_h2_origin_seeing(
    answer: RawAnswer,
    seen: impl Fn(u8, u32) + Send + Sync + 'static,
) -> Backend {
    Backend::start(move |mut s| {
        if !handshake(&mut s) {
            return;
        }
        while let Some((kind, flags, id, _)) = read_frame(&mut s) {
            let reply = match kind {
                4 if flags & 1 == 0 => frame(4, 1, 0, &[]),
                1 => answer(id),
                kind => {
                    seen(kind, id);
                    continue;
                }
            };
            if s.write_all(&reply).is_err() {
                return;
            }
        }
    })
}

/// Reads a client's connection preface and sends empty SETTINGS; false:
/// the client went away first.
fn handshake(s: &mut std::net::TcpStream) -> bool {
    let mut preface = [0u8; 24];
    if s.read_exact(&mut preface).is_err() {
        return false;
    }
    let _ = s.write_all(&frame(4, 0, 0, &[]));
    true
}

/// A raw HTTP/2 origin that answers a connection's first stream with
/// `answer(stream)`'s frames, then closes the connection (a moment later,
/// so they are read first): an upstream lost, or gone with a GOAWAY.
pub fn raw_h2_origin_then_close(answer: RawAnswer) -> Backend {
    Backend::start(move |mut s| {
        if !handshake(&mut s) {
            return;
        }
        while let Some((kind, flags, id, _)) = read_frame(&mut s) {
            match kind {
                4 if flags & 1 == 0 => {
                    let _ = s.write_all(&frame(4, 1, 0, &[]));
                }
                1 => {
                    let _ = s.write_all(&answer(id));
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    return;
                }
                _ => {}
            }
        }
    })
}

/// Upstreams that fail a response after its head, in the same write (so
/// the failure is there before a proxy relays the head): a connection
/// error, or RST_STREAM NO_ERROR after part of the body.
pub const CUT_AFTER_HEAD: [(&str, RawAnswer); 2] = [
    ("connection error", |id| {
        let mut f = frame(1, 4, id, b"\x88");
        // WINDOW_UPDATE of 0 on the connection: PROTOCOL_ERROR.
        f.extend(frame(8, 0, 0, &[0, 0, 0, 0]));
        f
    }),
    ("RST_STREAM NO_ERROR mid-body", |id| {
        let mut f = frame(1, 4, id, b"\x88");
        f.extend(frame(0, 0, id, b"abc"));
        f.extend(frame(3, 0, id, &[0, 0, 0, 0]));
        f
    }),
];
