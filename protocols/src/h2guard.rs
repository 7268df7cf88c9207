//! Defences for an HTTP/2 server connection that the HTTP/2 library lacks:
//! a frame scanner that reads the client's byte stream as it arrives (frame
//! headers only, plus SETTINGS payloads) and says when the client is
//! attacking the proxy rather than using it.
//!
//! - Rapid Reset (CVE-2023-44487): too many RST_STREAM frames per second
//!   for streams not yet answered. A client cancelling a stream it was
//!   already answered on (a Go client closing a body early) costs nothing
//!   more and is not counted, as `h2` counts only resets of streams the
//!   server had not taken up ([`AnsweredStreams`]).
//! - CONTINUATION flood: a header block spread over too many CONTINUATION
//!   frames or growing past a size cap before it ends.
//! - PING and SETTINGS floods: too many per second (each one costs the
//!   server an ACK).
//! - Frames that do no work: empty DATA without END_STREAM, empty
//!   HEADERS/CONTINUATION fragments that do not end the block, PRIORITY,
//!   frames of unknown type, zero WINDOW_UPDATE, PING/SETTINGS ACKs. Each
//!   costs a token from a per-connection budget that only frames that do
//!   work (HEADERS, DATA with a payload or END_STREAM) and time refill, so
//!   however they are mixed, such frames stay a bounded share of the
//!   traffic and the connection ends when they are all there is.
//! - WINDOW_UPDATE floods: a peer may send at most 1024 of them plus one
//!   per 8 bytes the proxy has written to it ([`FrameGuard::wrote`]); a
//!   window is only reopened for data received, so more are updates for
//!   nothing (each costs the proxy a frame's work; increments of 1 would
//!   take 2^31 frames to overflow a window).
//! - HPACK table abuse: a client's SETTINGS_HEADER_TABLE_SIZE is clamped in
//!   place (an encoder may always use a smaller table, RFC 7541 §4.2), so a
//!   client cannot make the proxy keep a huge table per connection.
//!
//! The same scanner reads an upstream server's bytes ([`FrameGuard::upstream`]):
//! a hostile backend's PING, SETTINGS and CONTINUATION floods and frames
//! that do no work are as unbounded a cost to the worker as a client's.
//! Its RST_STREAM frames are not rate-limited: a server can only reset
//! streams the proxy opened, and refusing many at once under load is
//! legitimate.
//!
//! Each of these ends the connection with GOAWAY `ENHANCE_YOUR_CALM`
//! ([`goaway_frame`]); the caller writes it and closes. Header lists that are
//! too large (once decoded) and too many concurrent streams are the
//! library's to refuse, per stream. No I/O here: [`FrameGuard::feed`] takes
//! bytes and the current time, so the scanner can be fuzzed alone.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The client's streams that were answered (a response head sent), told
/// by the connection's owner: their RST_STREAMs are cancels, not rapid
/// resets. Bounded: the most recent [`AnsweredStreams::KEPT`] only (a
/// reset of an older one counts, as any reset did before).
#[derive(Debug, Default)]
pub struct AnsweredStreams {
    ids: RefCell<VecDeque<u32>>,
}

impl AnsweredStreams {
    /// Most streams remembered (above HTTP/2 servers' usual concurrency).
    pub const KEPT: usize = 512;

    /// Stream `id` was answered.
    pub fn mark(&self, id: u32) {
        let mut ids = self.ids.borrow_mut();
        if ids.len() == Self::KEPT {
            ids.pop_front();
        }
        ids.push_back(id);
    }

    /// Whether stream `id` was answered (forgotten once asked).
    fn take(&self, id: u32) -> bool {
        let mut ids = self.ids.borrow_mut();
        // (The newest first: a cancel follows its answer closely.)
        match ids.iter().rposition(|&i| i == id) {
            Some(at) => {
                ids.remove(at);
                true
            }
            None => false,
        }
    }
}

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const FRAME_HEADER: usize = 9;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_ACK: u8 = 0x1;
const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;

/// GOAWAY error code for a peer that behaves as an attacker (RFC 9113 §7).
pub const ENHANCE_YOUR_CALM: u32 = 0xb;
/// HTTP/2 error code PROTOCOL_ERROR.
pub const PROTOCOL_ERROR: u32 = 0x1;

/// How much a peer may do before it is cut off.
#[derive(Clone, Debug)]
pub struct GuardLimits {
    /// RST_STREAM frames per second.
    pub resets_per_second: u32,
    /// PING frames (not ACKs) per second.
    pub pings_per_second: u32,
    /// SETTINGS frames (not ACKs) per second.
    pub settings_per_second: u32,
    /// CONTINUATION frames in one header block.
    pub continuations_per_block: u32,
    /// Bytes of one header block (HEADERS + CONTINUATION payloads, still
    /// HPACK-encoded).
    pub header_block_bytes: u32,
    /// The most SETTINGS_HEADER_TABLE_SIZE a client gets to set.
    pub max_header_table_size: u32,
    /// Frames that do no work a connection may send beyond those the
    /// refills allow (the budget's size).
    pub idle_frames: u32,
    /// Budget refilled per second, whatever the client sends (keep-alive
    /// PING ACKs on a quiet connection, a browser's PRIORITY frames).
    pub idle_frames_per_second: u32,
}

impl Default for GuardLimits {
    fn default() -> Self {
        Self {
            resets_per_second: 200,
            pings_per_second: 50,
            settings_per_second: 50,
            continuations_per_block: 32,
            header_block_bytes: 256 * 1024,
            max_header_table_size: 64 * 1024,
            idle_frames: 1000,
            idle_frames_per_second: 100,
        }
    }
}

/// What the client did wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("rapid reset: too many RST_STREAM frames per second")]
    RapidReset,
    #[error("PING flood")]
    PingFlood,
    #[error("SETTINGS flood")]
    SettingsFlood,
    #[error("CONTINUATION flood: too many frames in one header block")]
    ContinuationFlood,
    #[error("header block too large")]
    HeaderBlockTooLarge,
    #[error("too many frames that do no work")]
    IdleFrameFlood,
    #[error("WINDOW_UPDATE flood: more than the data sent could call for")]
    WindowUpdateFlood,
    /// RFC 9113 §3.4: the preface is followed by SETTINGS (a server's
    /// preface is its SETTINGS).
    #[error("the connection does not start with a SETTINGS frame")]
    NoSettingsFirst,
    /// A request's header block (HEADERS and its CONTINUATIONs) not
    /// finished within the header read timeout (a slowloris: the codec
    /// holds what it has).
    #[error("a header block not finished in time")]
    HeaderBlockTimeout,
}

impl Violation {
    /// The GOAWAY's error code: PROTOCOL_ERROR for a broken preface,
    /// ENHANCE_YOUR_CALM for a flood.
    pub fn error_code(&self) -> u32 {
        match self {
            Self::NoSettingsFirst => PROTOCOL_ERROR,
            _ => ENHANCE_YOUR_CALM,
        }
    }
}

/// Events of one kind in the current one-second window.
#[derive(Debug, Default)]
struct Rate {
    start: Option<Instant>,
    count: u32,
}

impl Rate {
    /// Counts one event; true while within `limit` per second.
    fn hit(&mut self, now: Instant, limit: u32) -> bool {
        match self.start {
            Some(s) if now.duration_since(s) < Duration::from_secs(1) => {}
            _ => {
                self.start = Some(now);
                self.count = 0;
            }
        }
        self.count += 1;
        self.count <= limit
    }
}

/// Tokens for frames that do no work: spent by each of them, earned back
/// by frames that do and by time, never above the budget's size.
#[derive(Debug)]
struct IdleBudget {
    tokens: u32,
    refilled: Option<Instant>,
}

impl IdleBudget {
    fn new(size: u32) -> Self {
        Self {
            tokens: size,
            refilled: None,
        }
    }

    /// A frame that did work.
    fn earn(&mut self, size: u32) {
        self.tokens = (self.tokens + 1).min(size);
    }

    /// A frame that did none; false once the budget is spent.
    fn spend(&mut self, now: Instant, l: &GuardLimits) -> bool {
        let since = *self.refilled.get_or_insert(now);
        let secs = now.duration_since(since).as_secs();
        if secs > 0 {
            let refill = l.idle_frames_per_second.saturating_mul(secs as u32);
            self.tokens = self.tokens.saturating_add(refill).min(l.idle_frames);
            self.refilled = Some(since + Duration::from_secs(secs));
        }
        match self.tokens.checked_sub(1) {
            Some(t) => {
                self.tokens = t;
                true
            }
            None => false,
        }
    }
}

#[derive(Debug)]
enum State {
    /// Bytes of the preface still to pass.
    Preface(usize),
    /// Collecting a 9-byte frame header.
    Header { have: usize },
    /// Inside a payload this scanner does not read.
    Skip(usize),
    /// Inside a SETTINGS payload: `left` bytes, `pos` into the current
    /// 6-byte parameter.
    Settings { left: usize, pos: usize },
    /// Inside a WINDOW_UPDATE's 4-byte increment, `pos` bytes read.
    WindowUpdate { pos: usize },
}

/// Scans one client connection's bytes.
#[derive(Debug)]
pub struct FrameGuard {
    limits: GuardLimits,
    state: State,
    header: [u8; FRAME_HEADER],
    param: [u8; 6],
    /// An unfinished header block: (CONTINUATION frames so far, bytes).
    block: Option<(u32, u32)>,
    /// When the last HEADERS frame's header arrived (its block may still
    /// be coming: [`FrameGuard::head_pending_since`]).
    head_since: Option<Instant>,
    resets: Rate,
    pings: Rate,
    settings: Rate,
    idle: IdleBudget,
    last_stream_id: u32,
    /// The bytes are a server's (no preface; resets not rate-limited).
    upstream: bool,
    /// The client's streams answered so far (their resets are free).
    answered: Option<Rc<AnsweredStreams>>,
    /// No frame seen yet: the first must be a SETTINGS.
    first: bool,
    /// WINDOW_UPDATE frames received, and bytes written to the peer.
    window_updates: u64,
    written: u64,
}

/// WINDOW_UPDATE frames a peer may send before it was sent anything …
const FREE_WINDOW_UPDATES: u64 = 1024;
/// … and bytes written to it per one more.
const BYTES_PER_WINDOW_UPDATE: u64 = 8;

impl FrameGuard {
    /// A guard for a client connection (its bytes start with the client
    /// preface).
    pub fn new(limits: GuardLimits) -> Self {
        Self::with_state(limits, State::Preface(PREFACE.len()), false)
    }

    /// A guard for the bytes an upstream server sends (they start with a
    /// frame: its SETTINGS).
    pub fn upstream(limits: GuardLimits) -> Self {
        Self::with_state(limits, State::Header { have: 0 }, true)
    }

    fn with_state(limits: GuardLimits, state: State, upstream: bool) -> Self {
        Self {
            upstream,
            answered: None,
            first: true,
            window_updates: 0,
            written: 0,
            state,
            header: [0; FRAME_HEADER],
            param: [0; 6],
            block: None,
            head_since: None,
            resets: Rate::default(),
            pings: Rate::default(),
            settings: Rate::default(),
            idle: IdleBudget::new(limits.idle_frames),
            last_stream_id: 0,
            limits,
        }
    }

    /// Resets of the streams `answered` names are not counted.
    pub fn with_answered(mut self, answered: Rc<AnsweredStreams>) -> Self {
        self.answered = Some(answered);
        self
    }

    /// Whether a client's RST_STREAM on `stream` cancels a stream it was
    /// answered on.
    fn cancels_answered(&self, stream: u32) -> bool {
        self.answered.as_ref().is_some_and(|a| a.take(stream))
    }

    /// `n` more bytes were written to the peer (what its WINDOW_UPDATEs
    /// may answer).
    pub fn wrote(&mut self, n: usize) {
        self.written = self.written.saturating_add(n as u64);
    }

    /// Whether the bytes are an upstream server's.
    pub fn is_upstream(&self) -> bool {
        self.upstream
    }

    /// The highest stream id the client opened (for GOAWAY; 0 upstream:
    /// a server opens none, push being off).
    pub fn last_stream_id(&self) -> u32 {
        self.last_stream_id
    }

    /// Since when a header block has been coming, while it is unfinished
    /// (a HEADERS or CONTINUATION payload partly read, or CONTINUATIONs
    /// still due); `None` between blocks.
    pub fn head_pending_since(&self) -> Option<Instant> {
        let mid_frame = matches!(self.state, State::Skip(_))
            && matches!(self.header[3], HEADERS | CONTINUATION);
        if self.block.is_some() || mid_frame {
            self.head_since
        } else {
            None
        }
    }

    /// Scans `buf`, the next bytes from the peer, in place: a
    /// SETTINGS_HEADER_TABLE_SIZE above the limit is rewritten to the limit.
    pub fn feed(&mut self, buf: &mut [u8], now: Instant) -> Result<(), Violation> {
        let mut i = 0;
        while i < buf.len() {
            match &mut self.state {
                State::Preface(left) => {
                    let n = (*left).min(buf.len() - i);
                    i += n;
                    *left -= n;
                    if *left == 0 {
                        self.state = State::Header { have: 0 };
                    }
                }
                State::Skip(left) => {
                    let n = (*left).min(buf.len() - i);
                    i += n;
                    *left -= n;
                    if *left == 0 {
                        self.state = State::Header { have: 0 };
                    }
                }
                State::Header { have } => {
                    let n = (FRAME_HEADER - *have).min(buf.len() - i);
                    self.header[*have..*have + n].copy_from_slice(&buf[i..i + n]);
                    *have += n;
                    i += n;
                    if *have == FRAME_HEADER {
                        self.state = self.frame(now)?;
                    }
                }
                State::Settings { left, pos } => {
                    let n = (*left).min(buf.len() - i).min(6 - *pos);
                    // The whole parameter is in this buffer: it can be
                    // rewritten (one split across reads is left as sent).
                    let whole_here = *pos == 0 && n == 6;
                    self.param[*pos..*pos + n].copy_from_slice(&buf[i..i + n]);
                    *pos += n;
                    *left -= n;
                    i += n;
                    if *pos == 6 {
                        *pos = 0;
                        let id = u16::from_be_bytes([self.param[0], self.param[1]]);
                        let value = u32::from_be_bytes([
                            self.param[2],
                            self.param[3],
                            self.param[4],
                            self.param[5],
                        ]);
                        let cap = self.limits.max_header_table_size;
                        if id == SETTINGS_HEADER_TABLE_SIZE && value > cap && whole_here {
                            buf[i - 4..i].copy_from_slice(&cap.to_be_bytes());
                        }
                    }
                    if *left == 0 {
                        self.state = State::Header { have: 0 };
                    }
                }
                State::WindowUpdate { pos } => {
                    let n = (4 - *pos).min(buf.len() - i);
                    self.param[*pos..*pos + n].copy_from_slice(&buf[i..i + n]);
                    *pos += n;
                    i += n;
                    if *pos == 4 {
                        self.state = State::Header { have: 0 };
                        let increment = u32::from_be_bytes([
                            self.param[0] & 0x7f,
                            self.param[1],
                            self.param[2],
                            self.param[3],
                        ]);
                        if increment == 0 {
                            self.idle_frame(now)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Spends a token for a frame that did no work.
    fn idle_frame(&mut self, now: Instant) -> Result<(), Violation> {
        if self.idle.spend(now, &self.limits) {
            Ok(())
        } else {
            Err(Violation::IdleFrameFlood)
        }
    }

    /// Checks a complete frame header; the state for its payload.
    fn frame(&mut self, now: Instant) -> Result<State, Violation> {
        let h = &self.header;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5] & 0x7f, h[6], h[7], h[8]]);
        // A client's first frame (an upstream's own mistake only costs its
        // own streams, and the library reads its SETTINGS as they come).
        if std::mem::take(&mut self.first)
            && !self.upstream
            && (kind != SETTINGS || flags & FLAG_ACK != 0)
        {
            return Err(Violation::NoSettingsFirst);
        }
        // Frames that do no work (their payloads need no reading here).
        let idle = match kind {
            DATA => len == 0 && flags & FLAG_END_STREAM == 0,
            HEADERS | CONTINUATION => len == 0 && flags & FLAG_END_HEADERS == 0,
            PRIORITY => true,
            PING | SETTINGS => flags & FLAG_ACK != 0,
            RST_STREAM | WINDOW_UPDATE => false,
            // GOAWAY, and PUSH_PROMISE, which the library refuses from a
            // client; everything above CONTINUATION is of unknown type.
            0x5 | 0x7 => false,
            _ => true,
        };
        if idle {
            self.idle_frame(now)?;
        } else if matches!(kind, HEADERS | DATA) {
            self.idle.earn(self.limits.idle_frames);
        }
        let l = &self.limits;
        match kind {
            HEADERS => {
                if !self.upstream && stream % 2 == 1 && stream > self.last_stream_id {
                    self.last_stream_id = stream;
                }
                self.head_since = Some(now);
                self.block = (flags & FLAG_END_HEADERS == 0).then_some((0, len as u32));
                if len as u32 > l.header_block_bytes {
                    return Err(Violation::HeaderBlockTooLarge);
                }
            }
            WINDOW_UPDATE => {
                self.window_updates += 1;
                let allowed = FREE_WINDOW_UPDATES + self.written / BYTES_PER_WINDOW_UPDATE;
                if self.window_updates > allowed {
                    return Err(Violation::WindowUpdateFlood);
                }
                if len == 4 {
                    return Ok(State::WindowUpdate { pos: 0 });
                }
            }
            CONTINUATION => {
                if let Some((frames, bytes)) = &mut self.block {
                    *frames += 1;
                    *bytes = bytes.saturating_add(len as u32);
                    if *frames > l.continuations_per_block {
                        return Err(Violation::ContinuationFlood);
                    }
                    if *bytes > l.header_block_bytes {
                        return Err(Violation::HeaderBlockTooLarge);
                    }
                }
                if flags & FLAG_END_HEADERS != 0 {
                    self.block = None;
                }
            }
            RST_STREAM
                if !self.upstream
                    && !self.cancels_answered(stream)
                    && !self.resets.hit(now, l.resets_per_second) =>
            {
                return Err(Violation::RapidReset)
            }
            PING if flags & FLAG_ACK == 0 && !self.pings.hit(now, l.pings_per_second) => {
                return Err(Violation::PingFlood)
            }
            SETTINGS if flags & FLAG_ACK == 0 => {
                if !self.settings.hit(now, l.settings_per_second) {
                    return Err(Violation::SettingsFlood);
                }
                if len > 0 {
                    return Ok(State::Settings { left: len, pos: 0 });
                }
            }
            _ => {}
        }
        Ok(if len == 0 {
            State::Header { have: 0 }
        } else {
            State::Skip(len)
        })
    }
}

/// A GOAWAY frame (stream 0) with `last_stream_id` and `error_code`.
pub fn goaway_frame(last_stream_id: u32, error_code: u32) -> [u8; 17] {
    let mut f = [0u8; 17];
    f[2] = 8; // payload length
    f[3] = 0x7; // GOAWAY
    f[9..13].copy_from_slice(&(last_stream_id & 0x7fff_ffff).to_be_bytes());
    f[13..17].copy_from_slice(&error_code.to_be_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// A client guard and the bytes every client starts with: the
    /// preface, then SETTINGS.
    fn start() -> (FrameGuard, Vec<u8>) {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, &[]));
        (FrameGuard::new(GuardLimits::default()), bytes)
    }

    /// A header block is pending from its HEADERS frame's header until
    /// the payload of the frame that ends it is read.
    #[test]
    fn a_pending_header_block_is_timed_from_its_headers() {
        let (mut g, mut b) = start();
        let t0 = Instant::now();
        g.feed(&mut b, t0).unwrap();
        assert_eq!(g.head_pending_since(), None);
        let mut h = frame(HEADERS, 0, 1, &[0x82, 0x84]);
        // Its frame header and half its payload.
        g.feed(&mut h[..10], t0).unwrap();
        assert_eq!(g.head_pending_since(), Some(t0));
        g.feed(&mut h[10..], t0).unwrap();
        assert_eq!(g.head_pending_since(), Some(t0), "CONTINUATION due");
        let t1 = t0 + Duration::from_secs(1);
        let mut c = frame(CONTINUATION, 0, 1, &[0x86]);
        g.feed(&mut c, t1).unwrap();
        assert_eq!(g.head_pending_since(), Some(t0), "timed from its HEADERS");
        let mut end = frame(CONTINUATION, FLAG_END_HEADERS, 1, &[0x87]);
        g.feed(&mut end, t1).unwrap();
        assert_eq!(g.head_pending_since(), None);
        let mut data = frame(DATA, 0, 1, &[0; 4]);
        g.feed(&mut data[..11], t1).unwrap();
        assert_eq!(g.head_pending_since(), None, "a body is not a head");
    }

    /// RFC 9113 §3.4: a client's preface is followed by SETTINGS;
    /// anything else first is a PROTOCOL_ERROR.
    #[test]
    fn a_client_starts_with_settings() {
        let now = Instant::now();
        for first in [
            frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, &[0x82]),
            frame(PING, 0, 0, &[0; 8]),
            frame(SETTINGS, FLAG_ACK, 0, &[]),
        ] {
            let mut b = PREFACE.to_vec();
            b.extend(first);
            let v = FrameGuard::new(GuardLimits::default()).feed(&mut b, now);
            assert_eq!(v, Err(Violation::NoSettingsFirst));
            assert_eq!(Violation::NoSettingsFirst.error_code(), PROTOCOL_ERROR);
        }
        let (mut g, mut b) = start();
        assert_eq!(g.feed(&mut b, now), Ok(()));
    }

    #[test]
    fn normal_traffic_passes_in_any_split() {
        let (_, mut bytes) = start();
        bytes.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
        for s in (1..200).step_by(2) {
            bytes.extend(frame(HEADERS, FLAG_END_HEADERS, s, &[0x82; 20]));
            bytes.extend(frame(0x0, 0x1, s, &[7; 100]));
        }
        bytes.extend(frame(PING, 0, 0, &[0; 8]));
        let now = Instant::now();
        for split in [1, 2, 7, 9, 100, bytes.len()] {
            let mut g = FrameGuard::new(GuardLimits::default());
            let mut copy = bytes.clone();
            for chunk in copy.chunks_mut(split) {
                g.feed(chunk, now).unwrap();
            }
            assert_eq!(g.last_stream_id(), 199);
        }
    }

    #[test]
    fn rapid_reset_is_caught_within_the_window_only() {
        let (mut g, mut bytes) = start();
        let t0 = Instant::now();
        g.feed(&mut bytes, t0).unwrap();
        for s in 0..200u32 {
            let mut f = frame(HEADERS, FLAG_END_HEADERS, 2 * s + 1, &[0x82]);
            f.extend(frame(RST_STREAM, 0, 2 * s + 1, &[0, 0, 0, 8]));
            g.feed(&mut f, t0).unwrap();
        }
        // A second later the budget is fresh.
        let t1 = t0 + Duration::from_millis(1001);
        let mut f = frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]);
        g.feed(&mut f, t1).unwrap();
        let mut burst: Vec<u8> = (0..200)
            .flat_map(|_| frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]))
            .collect();
        assert_eq!(g.feed(&mut burst, t1), Err(Violation::RapidReset));
    }

    /// Cancels of answered streams are free; others still count, and an
    /// answered stream's second reset too.
    #[test]
    fn cancels_of_answered_streams_are_not_rapid_resets() {
        let answered = Rc::new(AnsweredStreams::default());
        let mut g = FrameGuard::new(GuardLimits::default()).with_answered(answered.clone());
        let t0 = Instant::now();
        let mut f = PREFACE.to_vec();
        f.extend(frame(SETTINGS, 0, 0, &[]));
        g.feed(&mut f, t0).unwrap();
        for s in 0..1000u32 {
            answered.mark(2 * s + 1);
        }
        let mut cancels: Vec<u8> = (500..1000u32)
            .flat_map(|s| frame(RST_STREAM, 0, 2 * s + 1, &[0, 0, 0, 8]))
            .collect();
        g.feed(&mut cancels, t0).unwrap();
        // Forgotten once cancelled, and the oldest were never kept.
        let mut again: Vec<u8> = (0..=200u32)
            .flat_map(|s| frame(RST_STREAM, 0, 2 * s + 1, &[0, 0, 0, 8]))
            .collect();
        assert_eq!(g.feed(&mut again, t0), Err(Violation::RapidReset));
    }

    #[test]
    fn floods_are_caught() {
        let now = Instant::now();
        let (mut g, mut b) = start();
        b.extend((0..51).flat_map(|_| frame(PING, 0, 0, &[0; 8])));
        assert_eq!(g.feed(&mut b, now), Err(Violation::PingFlood));
        // PING ACKs are answers, not requests: not counted.
        let (mut g, mut b) = start();
        b.extend((0..500).flat_map(|_| frame(PING, FLAG_ACK, 0, &[0; 8])));
        assert_eq!(g.feed(&mut b, now), Ok(()));

        let (mut g, mut b) = start();
        b.extend((0..51).flat_map(|_| frame(SETTINGS, 0, 0, &[])));
        assert_eq!(g.feed(&mut b, now), Err(Violation::SettingsFlood));

        let (mut g, mut b) = start();
        b.extend(frame(HEADERS, 0, 1, &[0x82]));
        b.extend((0..33).flat_map(|_| frame(CONTINUATION, 0, 1, &[0x82])));
        assert_eq!(g.feed(&mut b, now), Err(Violation::ContinuationFlood));

        let (mut g, mut b) = start();
        b.extend(frame(HEADERS, 0, 1, &[0; 16000]));
        b.extend((0..20).flat_map(|_| frame(CONTINUATION, 0, 1, &[0; 16000])));
        assert_eq!(g.feed(&mut b, now), Err(Violation::HeaderBlockTooLarge));

        // A block that ends in time is fine, and the count restarts.
        let (mut g, mut b) = start();
        for s in 0..10u32 {
            b.extend(frame(HEADERS, 0, 2 * s + 1, &[0x82]));
            b.extend((0..30).flat_map(|_| frame(CONTINUATION, 0, 2 * s + 1, &[0x82])));
            b.extend(frame(CONTINUATION, FLAG_END_HEADERS, 2 * s + 1, &[0x82]));
        }
        assert_eq!(g.feed(&mut b, now), Ok(()));
    }

    /// A server's bytes: no preface; floods and frames that do no work
    /// are caught as a client's; its resets are not rate-limited; GOAWAY's
    /// last stream id stays 0 (the server opened none).
    #[test]
    fn an_upstream_servers_bytes_are_guarded_alike() {
        let now = Instant::now();
        let up = || FrameGuard::upstream(GuardLimits::default());
        let mut g = up();
        let mut b = frame(SETTINGS, 0, 0, &[0, 1, 0x80, 0, 0, 0]);
        for s in (1..1001).step_by(2) {
            b.extend(frame(HEADERS, FLAG_END_HEADERS, s, &[0x88]));
            b.extend(frame(RST_STREAM, 0, s, &[0, 0, 0, 7]));
        }
        assert_eq!(g.feed(&mut b, now), Ok(()), "500 refused streams");
        assert_eq!(g.last_stream_id(), 0);
        assert_eq!(
            &b[11..15],
            &(64 * 1024u32).to_be_bytes(),
            "table size clamped"
        );
        for (flood, v) in [
            (frame(PING, 0, 0, &[0; 8]), Violation::PingFlood),
            (frame(SETTINGS, 0, 0, &[]), Violation::SettingsFlood),
            (
                frame(PRIORITY, 0, 1, &[0, 0, 0, 3, 16]),
                Violation::IdleFrameFlood,
            ),
            (frame(DATA, 0, 1, &[]), Violation::IdleFrameFlood),
        ] {
            let mut b: Vec<u8> = (0..2000).flat_map(|_| flood.clone()).collect();
            assert_eq!(up().feed(&mut b, now), Err(v));
        }
        let mut b = frame(HEADERS, 0, 1, &[0x88]);
        b.extend((0..33).flat_map(|_| frame(CONTINUATION, 0, 1, &[0x88])));
        assert_eq!(up().feed(&mut b, now), Err(Violation::ContinuationFlood));
    }

    /// WINDOW_UPDATEs are allowed in proportion to what was written to
    /// the peer: a client reopening its windows as it reads passes, one
    /// updating for nothing is cut off, either side.
    #[test]
    fn window_updates_are_bounded_by_the_data_sent() {
        let now = Instant::now();
        let wu = |stream| frame(WINDOW_UPDATE, 0, stream, &[0, 0, 0x40, 0]);
        for (mut g, mut b) in [
            start(),
            (FrameGuard::upstream(GuardLimits::default()), vec![]),
        ] {
            g.feed(&mut b, now).unwrap();
            // A download of 100 frames of 16 KiB, each answered by a
            // stream and a connection update.
            for _ in 0..100 {
                g.wrote(16 * 1024 + 9);
                let mut two: Vec<u8> = [wu(1), wu(0)].concat();
                assert_eq!(g.feed(&mut two, now), Ok(()));
            }
            // Small answers (a 2-byte body, 40 bytes written each), a
            // connection update for each.
            for _ in 0..1000 {
                g.wrote(40);
                assert_eq!(g.feed(&mut wu(0), now), Ok(()));
            }
            // Updates for nothing: all that is left, and one more.
            let left = FREE_WINDOW_UPDATES + (100 * (16 * 1024 + 9) + 1000 * 40) / 8 - 1200;
            let mut ok: Vec<u8> = (0..left).flat_map(|_| wu(0)).collect();
            assert_eq!(g.feed(&mut ok, now), Ok(()));
            let mut flood = wu(0);
            assert_eq!(g.feed(&mut flood, now), Err(Violation::WindowUpdateFlood));
        }
    }

    #[test]
    fn frames_that_do_no_work_are_bounded() {
        let now = Instant::now();
        let budget = GuardLimits::default().idle_frames as usize;
        let open = frame(HEADERS, FLAG_END_HEADERS, 1, &[0x82]);
        let wu0 = frame(WINDOW_UPDATE, 0, 1, &[0, 0, 0, 0]);
        for (name, idle) in [
            ("empty DATA", frame(DATA, 0, 1, &[])),
            ("PRIORITY", frame(PRIORITY, 0, 1, &[0, 0, 0, 0, 16])),
            ("unknown type", frame(0xfa, 0, 0, &[1, 2, 3])),
            ("zero WINDOW_UPDATE", wu0.clone()),
            ("empty CONTINUATION", frame(CONTINUATION, 0, 1, &[])),
            ("empty HEADERS", frame(HEADERS, 0, 3, &[])),
            ("PING ACK", frame(PING, FLAG_ACK, 0, &[0; 8])),
            ("SETTINGS ACK", frame(SETTINGS, FLAG_ACK, 0, &[])),
        ] {
            // The budget's worth passes, in any split; one more does not.
            // (Written enough that WINDOW_UPDATEs are not too many.)
            let (mut g, mut b) = start();
            g.wrote(1 << 20);
            b.extend(open.clone());
            for _ in 0..budget {
                b.extend(idle.clone());
            }
            for chunk in b.chunks_mut(7) {
                assert_eq!(g.feed(chunk, now), Ok(()), "{name}");
            }
            let mut more = idle.clone();
            assert_eq!(
                g.feed(&mut more, now),
                Err(Violation::IdleFrameFlood),
                "{name}"
            );
        }
        // A mix: one frame with work per idle frame is sustainable, two
        // idle per working frame runs out; time refills the budget.
        let data = frame(DATA, 0, 1, &[7]);
        let (mut g, mut b) = start();
        for _ in 0..10 * budget {
            b.extend(data.clone());
            b.extend(frame(DATA, 0, 1, &[]));
        }
        assert_eq!(g.feed(&mut b, now), Ok(()));
        let (mut g, mut b) = start();
        for _ in 0..budget {
            b.extend(data.clone());
            b.extend(frame(PRIORITY, 0, 1, &[0, 0, 0, 0, 16]));
            b.extend(frame(0xfa, 0, 0, &[]));
        }
        assert_eq!(g.feed(&mut b, now), Err(Violation::IdleFrameFlood));
        let later = now + Duration::from_secs(2);
        let mut some: Vec<u8> = (0..150).flat_map(|_| frame(DATA, 0, 1, &[])).collect();
        assert_eq!(g.feed(&mut some, later), Ok(()), "refilled by time");
        // Non-zero WINDOW_UPDATEs (for data written) and DATA with
        // END_STREAM are not idle.
        let (mut g, mut b) = start();
        g.wrote(1 << 20);
        for _ in 0..2 * budget {
            b.extend(frame(WINDOW_UPDATE, 0, 1, &[0, 0, 0, 1]));
            b.extend(frame(DATA, FLAG_END_STREAM, 1, &[]));
        }
        assert_eq!(g.feed(&mut b, now), Ok(()));
    }

    #[test]
    fn header_table_size_is_clamped_in_place() {
        let (mut g, mut b) = start();
        let at = b.len() + FRAME_HEADER;
        b.extend(frame(
            SETTINGS,
            0,
            0,
            &[0, 1, 0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0, 0, 10],
        ));
        g.feed(&mut b, Instant::now()).unwrap();
        assert_eq!(&b[at..at + 6], &[0, 1, 0, 1, 0, 0], "table size now 64 KiB");
        assert_eq!(
            &b[at + 6..at + 12],
            &[0, 3, 0, 0, 0, 10],
            "others untouched"
        );
    }

    #[test]
    fn goaway_encodes() {
        let f = goaway_frame(7, ENHANCE_YOUR_CALM);
        assert_eq!(&f[..9], &[0, 0, 8, 7, 0, 0, 0, 0, 0]);
        assert_eq!(&f[9..], &[0, 0, 0, 7, 0, 0, 0, 0xb]);
    }
}
