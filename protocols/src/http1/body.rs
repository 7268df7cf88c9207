//! Where a message body ends: its framing, and counters that find the end in
//! a stream of slices without buffering the body.

use super::chunked::ChunkedScanner;
use super::error::ProtocolError;
use super::Limits;

/// How the body after a head is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body: the next message starts right after the head. Requests
    /// without `Content-Length` or `Transfer-Encoding`; responses to HEAD;
    /// 1xx, 204 and 304 responses.
    Empty,
    /// `Content-Length: n` (`n` may be 0).
    ContentLength(u64),
    /// `Transfer-Encoding: chunked`: see [`ChunkedScanner`].
    Chunked,
    /// A response with neither: the body is everything until the server
    /// closes the connection, which therefore cannot be reused.
    CloseDelimited,
    /// HTTP ends after this head: a 2xx response to CONNECT, or a 101
    /// Switching Protocols to an upgrade request. The bytes that follow, in
    /// both directions, are the tunnel's.
    Tunnel,
}

impl BodyFraming {
    /// Whether no body bytes follow the head.
    pub fn is_empty(self) -> bool {
        matches!(self, BodyFraming::Empty | BodyFraming::ContentLength(0))
    }
}

/// The result of feeding bytes to a body counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyProgress {
    /// How many of the bytes fed belong to this message's body (all of them
    /// unless `done`).
    pub consumed: usize,
    /// The body ended within the bytes fed; what follows `consumed` is the
    /// next message.
    pub done: bool,
}

/// Counts down a `Content-Length` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLength {
    remaining: u64,
}

impl BodyLength {
    pub fn new(length: u64) -> Self {
        Self { remaining: length }
    }

    pub fn scan(&mut self, input: &[u8]) -> BodyProgress {
        let take = self.remaining.min(input.len() as u64);
        self.remaining -= take;
        BodyProgress {
            // `take <= input.len()`, so it fits.
            consumed: take as usize,
            done: self.remaining == 0,
        }
    }

    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    pub fn is_done(&self) -> bool {
        self.remaining == 0
    }
}

/// Finds the end of a body of any framing.
#[derive(Debug, Clone)]
pub enum BodyScanner {
    Empty,
    Length(BodyLength),
    Chunked(ChunkedScanner),
    /// Close-delimited bodies and tunnels: everything until the peer closes.
    UntilEof,
}

impl BodyScanner {
    pub fn new(framing: BodyFraming, limits: &Limits) -> Self {
        match framing {
            BodyFraming::Empty => BodyScanner::Empty,
            BodyFraming::ContentLength(n) => BodyScanner::Length(BodyLength::new(n)),
            BodyFraming::Chunked => BodyScanner::Chunked(ChunkedScanner::new(limits)),
            BodyFraming::CloseDelimited | BodyFraming::Tunnel => BodyScanner::UntilEof,
        }
    }

    /// Feeds the next bytes of the connection.
    pub fn scan(&mut self, input: &[u8]) -> Result<BodyProgress, ProtocolError> {
        match self {
            BodyScanner::Empty => Ok(BodyProgress {
                consumed: 0,
                done: true,
            }),
            BodyScanner::Length(length) => Ok(length.scan(input)),
            BodyScanner::Chunked(chunked) => Ok(chunked.scan(input)?),
            BodyScanner::UntilEof => Ok(BodyProgress {
                consumed: input.len(),
                done: false,
            }),
        }
    }

    /// As [`scan`](Self::scan), also telling `data` which bytes of
    /// `input` are body content (chunk framing and trailers excluded).
    pub fn scan_data(
        &mut self,
        input: &[u8],
        data: impl FnMut(std::ops::Range<usize>),
    ) -> Result<BodyProgress, ProtocolError> {
        self.scan_parts(input, data, |_| {})
    }

    /// As [`scan_data`](Self::scan_data), also telling `trailer` where a
    /// chunked body's trailer field lines are (each with its CRLF).
    pub fn scan_parts(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(std::ops::Range<usize>),
        trailer: impl FnMut(std::ops::Range<usize>),
    ) -> Result<BodyProgress, ProtocolError> {
        match self {
            BodyScanner::Chunked(chunked) => Ok(chunked.scan_parts(input, data, trailer)?),
            _ => {
                let p = self.scan(input)?;
                if p.consumed > 0 {
                    data(0..p.consumed);
                }
                Ok(p)
            }
        }
    }

    /// Whether the body is complete. Never for [`BodyScanner::UntilEof`],
    /// which ends with the connection.
    pub fn is_done(&self) -> bool {
        match self {
            BodyScanner::Empty => true,
            BodyScanner::Length(length) => length.is_done(),
            BodyScanner::Chunked(chunked) => chunked.is_done(),
            BodyScanner::UntilEof => false,
        }
    }

    /// The peer closed the connection: fine for a close-delimited body or a
    /// complete one, [`ProtocolError::IncompleteBody`] otherwise.
    pub fn finish_at_eof(&self) -> Result<(), ProtocolError> {
        if matches!(self, BodyScanner::UntilEof) || self.is_done() {
            Ok(())
        } else {
            Err(ProtocolError::IncompleteBody)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_counts_down_across_slices() {
        let mut body = BodyLength::new(5);
        assert_eq!(
            body.scan(b"abc"),
            BodyProgress {
                consumed: 3,
                done: false
            }
        );
        assert_eq!(body.remaining(), 2);
        assert_eq!(
            body.scan(b"deGET /"),
            BodyProgress {
                consumed: 2,
                done: true
            }
        );
        assert_eq!(
            body.scan(b"more"),
            BodyProgress {
                consumed: 0,
                done: true
            }
        );
        assert!(BodyLength::new(0).is_done());
    }

    #[test]
    fn scanner_by_framing() {
        let limits = Limits::default();
        let mut empty = BodyScanner::new(BodyFraming::Empty, &limits);
        assert_eq!(empty.scan(b"x").unwrap().consumed, 0);
        assert!(empty.finish_at_eof().is_ok());

        let mut eof = BodyScanner::new(BodyFraming::CloseDelimited, &limits);
        assert_eq!(
            eof.scan(b"abc").unwrap(),
            BodyProgress {
                consumed: 3,
                done: false
            }
        );
        assert!(eof.finish_at_eof().is_ok());

        let mut short = BodyScanner::new(BodyFraming::ContentLength(4), &limits);
        short.scan(b"ab").unwrap();
        assert_eq!(short.finish_at_eof(), Err(ProtocolError::IncompleteBody));

        let mut chunked = BodyScanner::new(BodyFraming::Chunked, &limits);
        assert_eq!(
            chunked.scan(b"1\r\na\r\n0\r\n\r\nNEXT").unwrap(),
            BodyProgress {
                consumed: 11,
                done: true
            }
        );
        assert!(chunked.finish_at_eof().is_ok());
        let mut bad = BodyScanner::new(BodyFraming::Chunked, &limits);
        assert!(matches!(bad.scan(b"z\r\n"), Err(ProtocolError::Chunked(_))));
        assert!(BodyFraming::ContentLength(0).is_empty());
        assert!(!BodyFraming::Chunked.is_empty());
    }
}
