//! A validating scanner for chunked bodies (RFC 9112 §7.1) that finds where
//! the body ends without decoding it, so the proxy forwards the bytes as
//! they came: chunk extensions and trailer fields pass through unchanged.
//!
//! Every framing line must end in CRLF (no bare LF): the body is forwarded
//! verbatim, so a lenient reading here could end the body somewhere other
//! than the next hop does — the essence of request smuggling.

use super::error::ChunkedError;
use super::fields::{is_field_value_byte, is_tchar};
use super::{BodyProgress, Limits};

/// More than 16 hex digits (even leading zeros) is refused: a u64 has 16,
/// and nobody pads a chunk size.
const MAX_SIZE_DIGITS: u8 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the chunk-size's hex digits.
    Size,
    /// Whitespace after the size (before `;` or CR).
    SizeWhitespace,
    /// In the chunk extensions, after the first `;`.
    Extension,
    /// CR seen at the end of a chunk-size line.
    SizeLf,
    /// In chunk data.
    Data,
    /// After chunk data, expecting CR.
    DataCr,
    /// After chunk data and CR, expecting LF.
    DataLf,
    /// At the start of a trailer line (or of the final CRLF).
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    /// CR of the final empty line seen.
    EndLf,
    Done,
    Failed(ChunkedError),
}

/// Finds the end of a chunked body in the slices fed to [`scan`], validating
/// its syntax. One per message; [`reset`] reuses it.
///
/// [`scan`]: ChunkedScanner::scan
/// [`reset`]: ChunkedScanner::reset
#[derive(Debug, Clone)]
pub struct ChunkedScanner {
    state: State,
    /// The chunk size being read, then the data left in the chunk.
    size: u64,
    digits: u8,
    extension_bytes: usize,
    trailer_bytes: usize,
    max_extension_bytes: usize,
    max_trailer_bytes: usize,
}

impl ChunkedScanner {
    pub fn new(limits: &Limits) -> Self {
        Self {
            state: State::Size,
            size: 0,
            digits: 0,
            extension_bytes: 0,
            trailer_bytes: 0,
            max_extension_bytes: limits.max_chunk_extension_bytes(),
            max_trailer_bytes: limits.max_trailer_bytes(),
        }
    }

    /// Ready for the next message's body.
    pub fn reset(&mut self) {
        self.state = State::Size;
        self.size = 0;
        self.digits = 0;
        self.extension_bytes = 0;
        self.trailer_bytes = 0;
    }

    /// Whether the last chunk, the trailer section and the final CRLF have
    /// all been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds the next bytes of the connection. `consumed` is how many of them
    /// belong to the body: all of them until `done`, when the rest is the
    /// next message. Once done, further calls consume nothing. An error is
    /// final: later calls return it again.
    pub fn scan(&mut self, input: &[u8]) -> Result<BodyProgress, ChunkedError> {
        self.scan_data(input, |_| {})
    }

    /// As [`scan`](Self::scan), also telling `data` where chunk data lies
    /// in `input` (in order; framing, extensions and trailers excluded), so
    /// a caller that re-frames the body (HTTP/1 ↔ HTTP/2) can decode it.
    pub fn scan_data(
        &mut self,
        input: &[u8],
        data: impl FnMut(std::ops::Range<usize>),
    ) -> Result<BodyProgress, ChunkedError> {
        self.scan_parts(input, data, |_| {})
    }

    /// As [`scan_data`](Self::scan_data), also telling `trailer` where the
    /// trailer section's field lines lie in `input` (each line with its
    /// CRLF; the final empty line excluded).
    pub fn scan_parts(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(std::ops::Range<usize>),
        mut trailer: impl FnMut(std::ops::Range<usize>),
    ) -> Result<BodyProgress, ChunkedError> {
        let mut pos = 0;
        // Where the trailer bytes seen in a row so far began.
        let mut in_trailer: Option<usize> = None;
        while pos < input.len() {
            match self.state {
                State::Done => break,
                State::Failed(e) => return Err(e),
                State::Data => {
                    let take = self.size.min((input.len() - pos) as u64);
                    self.size -= take;
                    // `take <= input.len() - pos`, so it fits in usize.
                    data(pos..pos + take as usize);
                    pos += take as usize;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                }
                state => {
                    let b = input[pos];
                    let is_trailer = matches!(
                        state,
                        State::TrailerName | State::TrailerValue | State::TrailerLf
                    ) || (state == State::TrailerStart && b != b'\r');
                    match (is_trailer, in_trailer) {
                        (true, None) => in_trailer = Some(pos),
                        (false, Some(start)) => {
                            trailer(start..pos);
                            in_trailer = None;
                        }
                        _ => {}
                    }
                    pos += 1;
                    if let Err(e) = self.step(b) {
                        self.state = State::Failed(e);
                        return Err(e);
                    }
                }
            }
        }
        if let Some(start) = in_trailer {
            trailer(start..pos);
        }
        if let State::Failed(e) = self.state {
            return Err(e);
        }
        Ok(BodyProgress {
            consumed: pos,
            done: self.state == State::Done,
        })
    }

    fn step(&mut self, b: u8) -> Result<(), ChunkedError> {
        self.state = match self.state {
            State::Size => {
                if let Some(digit) = hex_value(b) {
                    self.digits += 1;
                    if self.digits > MAX_SIZE_DIGITS {
                        return Err(ChunkedError::SizeOverflow);
                    }
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(u64::from(digit)))
                        .ok_or(ChunkedError::SizeOverflow)?;
                    State::Size
                } else if self.digits == 0 {
                    return Err(ChunkedError::InvalidSize);
                } else {
                    match b {
                        b' ' | b'\t' => State::SizeWhitespace,
                        b';' => self.extension_byte(State::Extension)?,
                        b'\r' => State::SizeLf,
                        b'\n' => return Err(ChunkedError::MissingCrlf),
                        _ => return Err(ChunkedError::InvalidSize),
                    }
                }
            }
            State::SizeWhitespace => match b {
                b' ' | b'\t' => State::SizeWhitespace,
                b';' => self.extension_byte(State::Extension)?,
                b'\r' => State::SizeLf,
                b'\n' => return Err(ChunkedError::MissingCrlf),
                _ => return Err(ChunkedError::InvalidSize),
            },
            State::Extension => match b {
                b'\r' => State::SizeLf,
                b'\n' => return Err(ChunkedError::MissingCrlf),
                // Any visible text, including quoted strings, up to the CR;
                // no control characters, so the line end is unambiguous.
                _ if is_field_value_byte(b) => self.extension_byte(State::Extension)?,
                _ => return Err(ChunkedError::InvalidExtension),
            },
            State::SizeLf => match b {
                b'\n' if self.size == 0 => State::TrailerStart,
                b'\n' => State::Data,
                _ => return Err(ChunkedError::MissingCrlf),
            },
            State::DataCr => match b {
                b'\r' => State::DataLf,
                _ => return Err(ChunkedError::MissingCrlf),
            },
            State::DataLf => match b {
                b'\n' => {
                    self.digits = 0;
                    State::Size
                }
                _ => return Err(ChunkedError::MissingCrlf),
            },
            State::TrailerStart => match b {
                b'\r' => State::EndLf,
                b'\n' => return Err(ChunkedError::MissingCrlf),
                // A field line cannot start with whitespace (no obs-fold).
                _ if is_tchar(b) => self.trailer_byte(State::TrailerName)?,
                _ => return Err(ChunkedError::InvalidTrailer),
            },
            State::TrailerName => match b {
                b':' => self.trailer_byte(State::TrailerValue)?,
                _ if is_tchar(b) => self.trailer_byte(State::TrailerName)?,
                _ => return Err(ChunkedError::InvalidTrailer),
            },
            State::TrailerValue => match b {
                b'\r' => self.trailer_byte(State::TrailerLf)?,
                b'\n' => return Err(ChunkedError::MissingCrlf),
                _ if is_field_value_byte(b) => self.trailer_byte(State::TrailerValue)?,
                _ => return Err(ChunkedError::InvalidTrailer),
            },
            State::TrailerLf => match b {
                b'\n' => self.trailer_byte(State::TrailerStart)?,
                _ => return Err(ChunkedError::MissingCrlf),
            },
            State::EndLf => match b {
                b'\n' => State::Done,
                _ => return Err(ChunkedError::MissingCrlf),
            },
            // `scan` handles these without stepping.
            State::Data | State::Done | State::Failed(_) => self.state,
        };
        Ok(())
    }

    fn extension_byte(&mut self, next: State) -> Result<State, ChunkedError> {
        self.extension_bytes += 1;
        if self.extension_bytes > self.max_extension_bytes {
            return Err(ChunkedError::ExtensionsTooLarge);
        }
        Ok(next)
    }

    fn trailer_byte(&mut self, next: State) -> Result<State, ChunkedError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > self.max_trailer_bytes {
            return Err(ChunkedError::TrailersTooLarge);
        }
        Ok(next)
    }
}

/// The fields of a trailer section's lines as [`ChunkedScanner::scan_parts`]
/// tells them (`name: value` CRLF …, validated by the scanner): each
/// `(name, value)`, the value without surrounding whitespace.
pub fn trailer_fields(lines: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    lines.split(|&b| b == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        Some((&line[..colon], line[colon + 1..].trim_ascii()))
    })
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanner() -> ChunkedScanner {
        ChunkedScanner::new(&Limits::default())
    }

    #[test]
    fn data_spans_decode_the_body_across_splits() {
        let body = b"5;ext=1\r\nhello\r\nb\r\n, world!!!!\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        for split in 0..body.len() {
            let mut s = scanner();
            let mut decoded = Vec::new();
            let mut consumed = 0;
            for part in [&body[..split], &body[split..]] {
                let p = s
                    .scan_data(part, |r| decoded.extend_from_slice(&part[r]))
                    .unwrap();
                consumed += p.consumed;
            }
            assert!(s.is_done());
            assert_eq!(consumed, body.len() - 4, "split at {split}");
            assert_eq!(decoded, b"hello, world!!!!", "split at {split}");
        }
    }

    /// Feeds `input` whole, and one byte at a time, and checks both agree.
    fn end_of(input: &[u8]) -> Result<Option<usize>, ChunkedError> {
        let whole = {
            let mut s = scanner();
            s.scan(input).map(|p| p.done.then_some(p.consumed))
        };
        let bytewise = {
            let mut s = scanner();
            let mut total = 0;
            let mut result = Ok(None);
            for b in input {
                match s.scan(std::slice::from_ref(b)) {
                    Ok(p) => {
                        total += p.consumed;
                        if p.done {
                            result = Ok(Some(total));
                            break;
                        }
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            result
        };
        assert_eq!(whole, bytewise, "whole vs byte-at-a-time for {input:?}");
        whole
    }

    #[test]
    fn simple_body() {
        let body = b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n";
        assert_eq!(end_of(body), Ok(Some(body.len())));
        let mut with_next = body.to_vec();
        with_next.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(end_of(&with_next), Ok(Some(body.len())));
    }

    #[test]
    fn extensions_and_trailers_split_everywhere() {
        let body: &[u8] = b"A;name=value;quoted=\"a;b\\\"c\"\r\n0123456789\r\n\
            1 ; ext\r\nx\r\n0;last\r\nExpires: never\r\nX-Sum:  abc \r\n\r\nNEXT";
        let end = body.len() - 4;
        assert_eq!(end_of(body), Ok(Some(end)));
        for split in 0..=body.len() {
            let mut s = scanner();
            let a = s.scan(&body[..split]).unwrap();
            if a.done {
                assert_eq!(a.consumed, end);
                continue;
            }
            assert_eq!(a.consumed, split);
            let b = s.scan(&body[split..]).unwrap();
            assert!(b.done);
            assert_eq!(split + b.consumed, end, "split at {split}");
        }
    }

    #[test]
    fn hex_sizes_and_overflow() {
        assert_eq!(end_of(b"a\r\n0123456789\r\n0\r\n\r\n"), Ok(Some(20)));
        assert_eq!(
            end_of(b"00000000000000000\r\n"),
            Err(ChunkedError::SizeOverflow)
        );
        let max = b"ffffffffffffffff\r\n";
        assert_eq!(end_of(max), Ok(None));
        let mut s = scanner();
        assert!(s.scan(b"10000000000000000\r\n").is_err());
        assert_eq!(end_of(b"\r\n"), Err(ChunkedError::InvalidSize));
        assert_eq!(end_of(b";x\r\n"), Err(ChunkedError::InvalidSize));
        assert_eq!(end_of(b"-1\r\n"), Err(ChunkedError::InvalidSize));
        assert_eq!(end_of(b"0x1\r\n"), Err(ChunkedError::InvalidSize));
        assert_eq!(end_of(b"1 2\r\n"), Err(ChunkedError::InvalidSize));
    }

    #[test]
    fn line_endings_must_be_crlf() {
        assert_eq!(end_of(b"1\nx\r\n0\r\n\r\n"), Err(ChunkedError::MissingCrlf));
        assert_eq!(end_of(b"1\r\nx\n0\r\n\r\n"), Err(ChunkedError::MissingCrlf));
        assert_eq!(end_of(b"1\r\nxy\r\n"), Err(ChunkedError::MissingCrlf));
        assert_eq!(end_of(b"0\r\n\r\r"), Err(ChunkedError::MissingCrlf));
        assert_eq!(end_of(b"0\r\n\n"), Err(ChunkedError::MissingCrlf));
        assert_eq!(end_of(b"1;a\nb\r\nx\r\n"), Err(ChunkedError::MissingCrlf));
        assert_eq!(end_of(b"1 \nx\r\n"), Err(ChunkedError::MissingCrlf));
        assert_eq!(end_of(b"0\r\nA: b\r\r\n"), Err(ChunkedError::MissingCrlf));
        assert_eq!(
            end_of(b"1;a\x01\r\nx\r\n"),
            Err(ChunkedError::InvalidExtension)
        );
    }

    #[test]
    fn trailer_lines_are_told_wherever_the_input_splits() {
        let body = b"3\r\nabc\r\n0\r\nGrpc-Status: 0\r\nx-a: b c\r\n\r\nNEXT";
        for split in 0..body.len() {
            let mut s = ChunkedScanner::new(&Limits::default());
            let (mut data, mut trailers) = (Vec::new(), Vec::new());
            for part in [&body[..split], &body[split..]] {
                let p = s
                    .scan_parts(
                        part,
                        |r| data.extend_from_slice(&part[r]),
                        |r| trailers.extend_from_slice(&part[r]),
                    )
                    .unwrap();
                if p.done {
                    break;
                }
            }
            assert!(s.is_done(), "split at {split}");
            assert_eq!(data, b"abc", "split at {split}");
            assert_eq!(
                trailers, b"Grpc-Status: 0\r\nx-a: b c\r\n",
                "split at {split}"
            );
        }
    }

    #[test]
    fn trailer_lines_become_fields() {
        let lines = b"Grpc-Status: 0\r\nx-a:  b c \t\r\nx-empty:\r\n";
        let fields: Vec<_> = trailer_fields(lines).collect();
        assert_eq!(
            fields,
            [
                (&b"Grpc-Status"[..], &b"0"[..]),
                (b"x-a", b"b c"),
                (b"x-empty", b""),
            ]
        );
        assert_eq!(trailer_fields(b"").count(), 0);
    }

    #[test]
    fn bad_trailers() {
        assert_eq!(
            end_of(b"0\r\n folded\r\n\r\n"),
            Err(ChunkedError::InvalidTrailer)
        );
        assert_eq!(
            end_of(b"0\r\nNoColon\r\n\r\n"),
            Err(ChunkedError::InvalidTrailer)
        );
        assert_eq!(
            end_of(b"0\r\nA : b\r\n\r\n"),
            Err(ChunkedError::InvalidTrailer)
        );
        assert_eq!(
            end_of(b"0\r\nA: b\nC: d\r\n\r\n"),
            Err(ChunkedError::MissingCrlf)
        );
        assert_eq!(
            end_of(b"0\r\nA: \x00\r\n\r\n"),
            Err(ChunkedError::InvalidTrailer)
        );
        assert_eq!(end_of(b"0\r\nA:\r\n\r\n"), Ok(Some(9)));
    }

    #[test]
    fn limits() {
        let limits = Limits::default()
            .with_max_chunk_extension_bytes(4)
            .with_max_trailer_bytes(8);
        let mut s = ChunkedScanner::new(&limits);
        assert!(s.scan(b"1;abc\r\nx\r\n").is_ok());
        assert_eq!(s.scan(b"1;d\r\n"), Err(ChunkedError::ExtensionsTooLarge));
        let mut s = ChunkedScanner::new(&limits);
        assert!(s.scan(b"0\r\nA: bcd\r\n").is_ok());
        assert_eq!(s.scan(b"E: f\r\n\r\n"), Err(ChunkedError::TrailersTooLarge));
    }

    #[test]
    fn errors_are_sticky_and_done_is_final() {
        let mut s = scanner();
        assert_eq!(s.scan(b"g"), Err(ChunkedError::InvalidSize));
        assert_eq!(s.scan(b"0\r\n\r\n"), Err(ChunkedError::InvalidSize));
        assert_eq!(s.scan(b""), Err(ChunkedError::InvalidSize));

        let mut s = scanner();
        assert!(s.scan(b"0\r\n\r\n").unwrap().done);
        assert_eq!(
            s.scan(b"more").unwrap(),
            BodyProgress {
                consumed: 0,
                done: true
            }
        );
        s.reset();
        assert!(!s.is_done());
        assert!(s.scan(b"0\r\n\r\n").unwrap().done);
    }
}
