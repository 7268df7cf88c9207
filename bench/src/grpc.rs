//! gRPC message framing ("Length-Prefixed-Message" in gRPC over HTTP/2):
//! a 1-byte compressed flag, a 4-byte big-endian length, the message. Only
//! what the bench's unary echo needs: one uncompressed message per call.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

/// The frame header's length.
pub const HEADER_LEN: usize = 5;
/// `content-type` of gRPC requests and responses.
pub const CONTENT_TYPE: &str = "application/grpc";
/// `grpc-status` of a call that succeeded.
pub const STATUS_OK: &str = "0";
/// `grpc-status` INTERNAL, what gRPC servers answer a malformed frame with.
pub const STATUS_INTERNAL: &str = "13";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("{0} bytes, shorter than a message header")]
    Truncated(usize),
    #[error("compressed message, but no grpc-encoding was negotiated")]
    Compressed,
    #[error("message header says {declared} bytes, {actual} follow")]
    Length { declared: usize, actual: usize },
}

/// `message` as one uncompressed frame.
pub fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_LEN + message.len());
    out.put_u8(0);
    // Bench messages are small; a 4 GiB one is a bug worth a panic.
    out.put_u32(u32::try_from(message.len()).expect("gRPC message under 4 GiB"));
    out.put_slice(message);
    out.freeze()
}

/// The message of `body`, which must be exactly one uncompressed frame.
pub fn single_message(body: &[u8]) -> Result<&[u8], FrameError> {
    let (header, message) = body
        .split_first_chunk::<HEADER_LEN>()
        .ok_or(FrameError::Truncated(body.len()))?;
    if header[0] != 0 {
        return Err(FrameError::Compressed);
    }
    let declared = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if declared != message.len() {
        return Err(FrameError::Length {
            declared,
            actual: message.len(),
        });
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips() {
        let f = frame(b"hello");
        assert_eq!(&f[..], b"\0\0\0\0\x05hello");
        assert_eq!(single_message(&f), Ok(&b"hello"[..]));
        assert_eq!(single_message(&frame(b"")), Ok(&b""[..]));
    }

    #[test]
    fn malformed_frames_are_refused() {
        assert_eq!(single_message(b"\0\0\0"), Err(FrameError::Truncated(3)));
        assert_eq!(
            single_message(b"\x01\0\0\0\x01x"),
            Err(FrameError::Compressed)
        );
        assert_eq!(
            single_message(b"\0\0\0\0\x02x"),
            Err(FrameError::Length {
                declared: 2,
                actual: 1
            })
        );
        // Two messages in a unary request: the second makes the length wrong.
        let mut two = frame(b"a").to_vec();
        two.extend_from_slice(&frame(b"b"));
        assert!(matches!(
            single_message(&two),
            Err(FrameError::Length { declared: 1, .. })
        ));
    }
}
