//! The header section shared by request and response heads: a copy of the
//! head's bytes, header entries as ranges into it, and the analysis of the
//! fields that matter for framing and persistence (`Content-Length`,
//! `Transfer-Encoding`, `Connection`, `Host`, `Upgrade`, `Expect`).

use super::error::ProtocolError;

/// A byte range into a head's buffer. 32-bit: heads are far smaller than
/// 4 GiB (see [`super::Limits::with_max_head_bytes`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Span {
    start: u32,
    end: u32,
}

impl Span {
    pub(crate) fn new(start: usize, end: usize) -> Self {
        debug_assert!(start <= end && end <= u32::MAX as usize);
        Self {
            start: start as u32,
            end: end as u32,
        }
    }

    /// The range of `part` inside `base`; `part` must be a sub-slice of it.
    pub(crate) fn of(base: &[u8], part: &[u8]) -> Self {
        let start = part.as_ptr() as usize - base.as_ptr() as usize;
        Self::new(start, start + part.len())
    }

    pub(crate) fn start(self) -> usize {
        self.start as usize
    }

    pub(crate) fn len(self) -> usize {
        (self.end - self.start) as usize
    }

    /// The sub-range `[from, to)` relative to this span's start.
    pub(crate) fn sub(self, from: usize, to: usize) -> Self {
        Self::new(self.start() + from, self.start() + to)
    }

    pub(crate) fn get(self, buf: &[u8]) -> &[u8] {
        &buf[self.start as usize..self.end as usize]
    }
}

/// The header fields the codec itself interprets, recognised once at parse
/// time so that the writer does not compare names again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderKind {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    ProxyConnection,
    Te,
    Upgrade,
    /// h2c's upgrade settings (RFC 7540 §3.2.1): they describe this
    /// connection, so they are hop-by-hop even when `Connection` does
    /// not name them.
    Http2Settings,
    Expect,
    Other,
}

impl HeaderKind {
    pub(crate) fn of(name: &[u8]) -> Self {
        const NAMES: [(&[u8], HeaderKind); 10] = [
            (b"host", HeaderKind::Host),
            (b"content-length", HeaderKind::ContentLength),
            (b"transfer-encoding", HeaderKind::TransferEncoding),
            (b"connection", HeaderKind::Connection),
            (b"keep-alive", HeaderKind::KeepAlive),
            (b"proxy-connection", HeaderKind::ProxyConnection),
            (b"te", HeaderKind::Te),
            (b"upgrade", HeaderKind::Upgrade),
            (b"http2-settings", HeaderKind::Http2Settings),
            (b"expect", HeaderKind::Expect),
        ];
        NAMES
            .iter()
            .find(|(n, _)| n.len() == name.len() && n.eq_ignore_ascii_case(name))
            .map_or(HeaderKind::Other, |(_, kind)| *kind)
    }

    /// Hop-by-hop per RFC 9110 §7.6.1 (besides those `Connection` names).
    /// `Proxy-Connection` is not standard but old clients send it in place
    /// of `Connection`; it must not reach the next hop either.
    pub(crate) fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            HeaderKind::Connection
                | HeaderKind::KeepAlive
                | HeaderKind::ProxyConnection
                | HeaderKind::Te
                | HeaderKind::TransferEncoding
                | HeaderKind::Upgrade
                | HeaderKind::Http2Settings
        )
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct FieldEntry {
    pub(crate) name: Span,
    pub(crate) value: Span,
    pub(crate) kind: HeaderKind,
}

/// What the `Connection` header fields say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ConnectionOptions {
    pub(crate) close: bool,
    pub(crate) keep_alive: bool,
    pub(crate) upgrade: bool,
}

/// The `Transfer-Encoding` fields, not yet judged: whether they are an error
/// depends on the message (some responses ignore them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TransferEncoding {
    Absent,
    Chunked,
    Invalid(ProtocolError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContentLength {
    Absent,
    Length(u64),
    Invalid(ProtocolError),
}

/// A head's bytes and header entries, reused across messages.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fields {
    pub(crate) buf: Vec<u8>,
    pub(crate) entries: Vec<FieldEntry>,
    /// Names listed in `Connection` other than `close`, `keep-alive` and
    /// `upgrade` (and never `Host`, `Content-Length`, `Transfer-Encoding`):
    /// the header fields to drop when forwarding.
    pub(crate) connection_names: Vec<Span>,
    pub(crate) connection: ConnectionOptions,
    pub(crate) content_length: Option<ContentLength>,
    pub(crate) transfer_encoding: Option<TransferEncoding>,
    pub(crate) host_count: usize,
    pub(crate) first_host: Option<usize>,
    pub(crate) first_upgrade: Option<usize>,
    pub(crate) first_transfer_encoding: Option<usize>,
    pub(crate) first_connection: Option<usize>,
    /// Where the first `Content-Length` field is: a valid length is
    /// forwarded there, once (see `write.rs`).
    pub(crate) first_content_length: Option<usize>,
    pub(crate) expect_continue: bool,
}

impl Fields {
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.entries.clear();
        self.connection_names.clear();
        self.connection = ConnectionOptions::default();
        self.content_length = None;
        self.transfer_encoding = None;
        self.host_count = 0;
        self.first_host = None;
        self.first_upgrade = None;
        self.first_transfer_encoding = None;
        self.first_connection = None;
        self.first_content_length = None;
        self.expect_continue = false;
    }

    /// Copies `input[..head_len]` and records the parsed headers (slices of
    /// `input`) as ranges into the copy, then analyses them.
    pub(crate) fn load(&mut self, input: &[u8], head_len: usize, headers: &[httparse::Header<'_>]) {
        self.buf.extend_from_slice(&input[..head_len]);
        self.entries.reserve(headers.len());
        for h in headers {
            let name = Span::of(input, h.name.as_bytes());
            // An empty value is an empty slice that may point anywhere
            // inside the line: its position does not matter.
            let value = if h.value.is_empty() {
                Span::new(name.start(), name.start())
            } else {
                Span::of(input, h.value)
            };
            self.entries.push(FieldEntry {
                name,
                value,
                kind: HeaderKind::of(h.name.as_bytes()),
            });
        }
        self.analyse();
    }

    fn analyse(&mut self) {
        let mut content_length = ContentLength::Absent;
        let mut te = TeList::default();
        for (i, entry) in self.entries.iter().enumerate() {
            let value = entry.value.get(&self.buf);
            match entry.kind {
                HeaderKind::Host => {
                    self.host_count += 1;
                    self.first_host.get_or_insert(i);
                }
                HeaderKind::ContentLength => {
                    self.first_content_length.get_or_insert(i);
                    content_length = merge_content_length(content_length, value);
                }
                HeaderKind::TransferEncoding => {
                    self.first_transfer_encoding.get_or_insert(i);
                    te.add(value);
                }
                HeaderKind::Connection => {
                    self.first_connection.get_or_insert(i);
                    for token in list_elements(entry.value, &self.buf) {
                        let name = token.get(&self.buf);
                        if name.eq_ignore_ascii_case(b"close") {
                            self.connection.close = true;
                        } else if name.eq_ignore_ascii_case(b"keep-alive") {
                            self.connection.keep_alive = true;
                        } else if name.eq_ignore_ascii_case(b"upgrade") {
                            self.connection.upgrade = true;
                        } else if name.iter().all(|&b| is_tchar(b))
                            && !matches!(
                                HeaderKind::of(name),
                                HeaderKind::Host
                                    | HeaderKind::ContentLength
                                    | HeaderKind::TransferEncoding
                            )
                        {
                            self.connection_names.push(token);
                        }
                    }
                }
                HeaderKind::Upgrade => {
                    self.first_upgrade.get_or_insert(i);
                }
                HeaderKind::Expect => {
                    if value.eq_ignore_ascii_case(b"100-continue") {
                        self.expect_continue = true;
                    }
                }
                HeaderKind::KeepAlive
                | HeaderKind::ProxyConnection
                | HeaderKind::Te
                | HeaderKind::Http2Settings
                | HeaderKind::Other => {}
            }
        }
        self.content_length = Some(content_length);
        self.transfer_encoding = Some(te.finish());
    }

    pub(crate) fn content_length(&self) -> ContentLength {
        self.content_length.unwrap_or(ContentLength::Absent)
    }

    pub(crate) fn transfer_encoding(&self) -> TransferEncoding {
        self.transfer_encoding.unwrap_or(TransferEncoding::Absent)
    }

    pub(crate) fn value_of(&self, index: Option<usize>) -> Option<&[u8]> {
        index.map(|i| self.entries[i].value.get(&self.buf))
    }

    /// Whether `name` is listed in `Connection` (so is hop-by-hop here).
    pub(crate) fn named_by_connection(&self, name: &[u8]) -> bool {
        self.connection_names
            .iter()
            .any(|n| n.get(&self.buf).eq_ignore_ascii_case(name))
    }

    pub(crate) fn headers(&self) -> Headers<'_> {
        Headers { fields: self }
    }
}

/// Turns `httparse`'s answer into the head's length, applying the size
/// limit: `Ok(None)` means the head is not complete yet.
pub(crate) fn head_length(
    result: httparse::Result<usize>,
    input_len: usize,
    max_head_bytes: usize,
) -> Result<Option<usize>, ProtocolError> {
    match result {
        Ok(httparse::Status::Complete(n)) if n > max_head_bytes => Err(ProtocolError::HeadTooLarge),
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        // Whatever completes this head makes it longer than the limit.
        Ok(httparse::Status::Partial) if input_len >= max_head_bytes => {
            Err(ProtocolError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(ProtocolError::TooManyHeaders),
        Err(e) => Err(ProtocolError::Malformed(e)),
    }
}

/// The body framing the `Content-Length` and `Transfer-Encoding` fields ask
/// for, before the rules that depend on the kind of message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeclaredFraming {
    None,
    Chunked,
    Length(u64),
}

/// RFC 9112 §6.1–6.3 checks common to requests and responses.
pub(crate) fn declared_framing(
    fields: &Fields,
    http10: bool,
) -> Result<DeclaredFraming, ProtocolError> {
    let te = fields.transfer_encoding();
    let cl = fields.content_length();
    if te == TransferEncoding::Absent {
        return match cl {
            ContentLength::Absent => Ok(DeclaredFraming::None),
            ContentLength::Length(n) => Ok(DeclaredFraming::Length(n)),
            ContentLength::Invalid(e) => Err(e),
        };
    }
    // Both present is how requests are smuggled past a proxy that reads
    // one and a server that reads the other: refuse, whatever the values.
    if cl != ContentLength::Absent {
        return Err(ProtocolError::ContentLengthWithTransferEncoding);
    }
    if http10 {
        return Err(ProtocolError::TransferEncodingInHttp10);
    }
    match te {
        TransferEncoding::Chunked => Ok(DeclaredFraming::Chunked),
        TransferEncoding::Invalid(e) => Err(e),
        TransferEncoding::Absent => Ok(DeclaredFraming::None),
    }
}

fn merge_content_length(prev: ContentLength, value: &[u8]) -> ContentLength {
    let mut current = prev;
    let mut any = false;
    // RFC 9110 §8.6: a list of identical values may be accepted as one.
    for element in value.split(|&b| b == b',') {
        any = true;
        let n = match parse_decimal(trim_ows(element)) {
            Some(n) => n,
            None => return ContentLength::Invalid(ProtocolError::InvalidContentLength),
        };
        current = match current {
            ContentLength::Absent => ContentLength::Length(n),
            ContentLength::Length(m) if m == n => ContentLength::Length(n),
            ContentLength::Length(_) => {
                ContentLength::Invalid(ProtocolError::ConflictingContentLength)
            }
            invalid @ ContentLength::Invalid(_) => return invalid,
        };
    }
    if !any {
        return ContentLength::Invalid(ProtocolError::InvalidContentLength);
    }
    current
}

/// `1*DIGIT` into a u64, refusing signs, whitespace and overflow.
pub(crate) fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// Accumulates the transfer codings of every `Transfer-Encoding` field, in
/// order (RFC 9110 §5.3: several fields are one comma-separated list).
#[derive(Debug, Default)]
struct TeList {
    present: bool,
    /// Codings seen so far; `chunked` seen and whether it is the last one.
    chunked_count: usize,
    last_is_chunked: bool,
    other_before_chunked: bool,
    any_other: bool,
}

impl TeList {
    fn add(&mut self, value: &[u8]) {
        self.present = true;
        for element in value.split(|&b| b == b',') {
            let coding = trim_ows(element);
            if coding.is_empty() {
                // Empty list elements are allowed and ignored (RFC 9110 §5.6.1).
                continue;
            }
            if coding.eq_ignore_ascii_case(b"chunked") {
                self.chunked_count += 1;
                self.last_is_chunked = true;
                if self.any_other {
                    self.other_before_chunked = true;
                }
            } else {
                self.any_other = true;
                self.last_is_chunked = false;
            }
        }
    }

    fn finish(self) -> TransferEncoding {
        if !self.present {
            TransferEncoding::Absent
        } else if !self.last_is_chunked || self.chunked_count != 1 {
            TransferEncoding::Invalid(ProtocolError::InvalidTransferEncoding)
        } else if self.other_before_chunked {
            TransferEncoding::Invalid(ProtocolError::UnsupportedTransferCoding)
        } else {
            TransferEncoding::Chunked
        }
    }
}

/// The non-empty elements of a comma-separated field value, trimmed, as
/// spans into `buf`.
fn list_elements(value: Span, buf: &[u8]) -> impl Iterator<Item = Span> + '_ {
    let bytes = value.get(buf);
    let mut pos = 0;
    std::iter::from_fn(move || {
        while pos < bytes.len() {
            let start = pos;
            let end = bytes[start..]
                .iter()
                .position(|&b| b == b',')
                .map_or(bytes.len(), |i| start + i);
            pos = end + 1;
            let element = &bytes[start..end];
            let lead = element.len() - trim_start_ows(element).len();
            let trimmed = trim_ows(element);
            if !trimmed.is_empty() {
                return Some(value.sub(start + lead, start + lead + trimmed.len()));
            }
        }
        None
    })
}

fn trim_start_ows(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    &s[start..]
}

pub(crate) fn trim_ows(s: &[u8]) -> &[u8] {
    let s = trim_start_ows(s);
    let end = s
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |i| i + 1);
    &s[..end]
}

/// `tchar` of RFC 9110 §5.6.2: what header names and tokens are made of.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A field value byte that cannot break a header line: HTAB, SP, VCHAR and
/// obs-text (RFC 9110 §5.5).
pub(crate) fn is_field_value_byte(b: u8) -> bool {
    b == b'\t' || b >= 0x20 && b != 0x7f
}

/// A read-only view of a head's header fields, in order, with their
/// original name case.
#[derive(Debug, Clone, Copy)]
pub struct Headers<'a> {
    fields: &'a Fields,
}

impl<'a> Headers<'a> {
    pub fn len(&self) -> usize {
        self.fields.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.entries.is_empty()
    }

    /// `(name, value)` pairs in the order received. Values are as
    /// `httparse` gives them: leading and trailing whitespace removed.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        let fields = self.fields;
        fields.entries.iter().map(move |e| {
            // Names were validated as tokens by httparse, so ASCII.
            let name = std::str::from_utf8(e.name.get(&fields.buf)).unwrap_or_default();
            (name, e.value.get(&fields.buf))
        })
    }

    /// The fields a proxy forwards to a next hop speaking another protocol
    /// (HTTP/2): all but the hop-by-hop ones (RFC 9110 §7.6.1: `Connection`,
    /// every field it names, `Keep-Alive`, `Proxy-Connection`, `TE`,
    /// `Transfer-Encoding`, `Upgrade`) and `Host` (which becomes
    /// `:authority`).
    pub fn end_to_end(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        let fields = self.fields;
        fields
            .entries
            .iter()
            .filter(move |e| {
                !(e.kind == HeaderKind::Host
                    || e.kind.is_hop_by_hop()
                    || fields.named_by_connection(e.name.get(&fields.buf)))
            })
            .map(move |e| {
                let name = std::str::from_utf8(e.name.get(&fields.buf)).unwrap_or_default();
                (name, e.value.get(&fields.buf))
            })
    }

    /// The first value of the field `name` (compared case-insensitively).
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.get_all(name).next()
    }

    /// Every value of the field `name`, in order.
    pub fn get_all<'n>(&self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + 'n
    where
        'a: 'n,
    {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cl(values: &[&str]) -> ContentLength {
        values.iter().fold(ContentLength::Absent, |acc, v| {
            merge_content_length(acc, v.as_bytes())
        })
    }

    fn te(values: &[&str]) -> TransferEncoding {
        let mut list = TeList::default();
        for v in values {
            list.add(v.as_bytes());
        }
        list.finish()
    }

    #[test]
    fn content_length_values() {
        assert_eq!(cl(&[]), ContentLength::Absent);
        assert_eq!(cl(&["0"]), ContentLength::Length(0));
        assert_eq!(cl(&["42"]), ContentLength::Length(42));
        assert_eq!(cl(&["42", "42"]), ContentLength::Length(42));
        assert_eq!(cl(&["42, 42"]), ContentLength::Length(42));
        assert_eq!(
            cl(&["1", "2"]),
            ContentLength::Invalid(ProtocolError::ConflictingContentLength)
        );
        assert_eq!(
            cl(&["1, 2"]),
            ContentLength::Invalid(ProtocolError::ConflictingContentLength)
        );
        for bad in [
            "",
            "+1",
            "-1",
            "1 2",
            "0x10",
            "1.0",
            "18446744073709551616",
            ",",
        ] {
            assert_eq!(
                cl(&[bad]),
                ContentLength::Invalid(ProtocolError::InvalidContentLength),
                "{bad:?}"
            );
        }
        assert_eq!(
            cl(&["18446744073709551615"]),
            ContentLength::Length(u64::MAX)
        );
        // An invalid value is not rescued by a later valid one.
        assert_eq!(
            cl(&["x", "1"]),
            ContentLength::Invalid(ProtocolError::InvalidContentLength)
        );
    }

    #[test]
    fn transfer_encoding_lists() {
        assert_eq!(te(&[]), TransferEncoding::Absent);
        assert_eq!(te(&["chunked"]), TransferEncoding::Chunked);
        assert_eq!(te(&["Chunked"]), TransferEncoding::Chunked);
        assert_eq!(te(&[", chunked ,"]), TransferEncoding::Chunked);
        let invalid = TransferEncoding::Invalid(ProtocolError::InvalidTransferEncoding);
        assert_eq!(te(&[""]), invalid);
        assert_eq!(te(&["xchunked"]), invalid);
        assert_eq!(te(&["chunked, gzip"]), invalid);
        assert_eq!(te(&["chunked", "gzip"]), invalid);
        assert_eq!(te(&["chunked", "chunked"]), invalid);
        assert_eq!(te(&["gzip"]), invalid);
        assert_eq!(te(&["chunked;q=1"]), invalid);
        let unsupported = TransferEncoding::Invalid(ProtocolError::UnsupportedTransferCoding);
        assert_eq!(te(&["gzip, chunked"]), unsupported);
        assert_eq!(te(&["gzip", "chunked"]), unsupported);
    }

    #[test]
    fn header_kinds_ignore_case() {
        assert_eq!(HeaderKind::of(b"HOST"), HeaderKind::Host);
        assert_eq!(
            HeaderKind::of(b"Transfer-Encoding"),
            HeaderKind::TransferEncoding
        );
        assert_eq!(HeaderKind::of(b"TE"), HeaderKind::Te);
        assert_eq!(HeaderKind::of(b"Trailer"), HeaderKind::Other);
        assert_eq!(HeaderKind::of(b"Hosts"), HeaderKind::Other);
        assert!(!HeaderKind::Host.is_hop_by_hop());
        assert!(HeaderKind::ProxyConnection.is_hop_by_hop());
    }

    #[test]
    fn list_elements_are_trimmed_spans() {
        let buf = b"xx , a,b ,\t c,,  ";
        let span = Span::new(2, buf.len());
        let got: Vec<&[u8]> = list_elements(span, buf).map(|s| s.get(buf)).collect();
        assert_eq!(got, vec![&b"a"[..], b"b", b"c"]);
    }
}
