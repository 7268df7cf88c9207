//! Linkerd's HTTP access log (`LINKERD2_PROXY_ACCESS_LOG`, the
//! `config.linkerd.io/access-log` annotation): one line per inbound HTTP
//! request on stderr, in Apache's common log style or as JSON, with
//! linkerd2-proxy's fields.
//!
//! # What it owns
//!
//! - A request's [`Entry`]: its head's fields, written when the request
//!   starts (only with the log on, and only for inbound requests, as
//!   linkerd2-proxy), completed with the status and timings at its end.
//! - Each worker's [`AccessLog`]: lines gathered into one buffer and
//!   written to stderr when 4 KiB are ready, every 100 ms, and when the
//!   worker stops. Each write holds whole lines (at most `PIPE_BUF`
//!   bytes unless one line alone is longer), so workers' lines do not
//!   interleave in a pipe.
//!
//! # What it must not do
//!
//! Cost anything with the log off: the observer holds `None` (one branch
//! per request). It writes to stderr as the tracing logs do (blocking);
//! a reader of stderr that stops reading stops the worker as it stops the
//! logs.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use crate::config::AccessLogFormat;
use crate::tap::TapHead;

/// Bytes gathered before a write (`PIPE_BUF`: a pipe writes them whole).
const FLUSH_AT: usize = 4096;
/// The longest a line waits in the buffer.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// One worker's access log: a buffer of whole lines.
pub(crate) struct AccessLog {
    format: AccessLogFormat,
    buf: RefCell<Vec<u8>>,
}

/// An inbound request being logged: its line so far, and its clock.
pub(crate) struct Entry {
    /// Apache: up to the closing quote of the request line. JSON: the
    /// object's fields up to `request_bytes`.
    head: String,
    /// JSON: `user_agent` and `host`, which come last.
    tail: String,
    started: Instant,
    /// When the response's head came, and how much of the time before it
    /// the endpoint took (the rest is the proxy's).
    answered: Cell<Option<(Instant, Duration)>>,
    /// The response's `content-length`, as linkerd2-proxy logs it.
    response_bytes: Cell<Option<u64>>,
}

impl AccessLog {
    pub(crate) fn new(format: AccessLogFormat) -> Self {
        Self {
            format,
            buf: RefCell::new(Vec::with_capacity(FLUSH_AT * 2)),
        }
    }

    /// The request `head` from `client` (`client_id`: its mTLS identity)
    /// starts at `started`.
    pub(crate) fn begin(
        &self,
        client: SocketAddr,
        client_id: Option<&str>,
        head: &dyn TapHead,
        started: Instant,
    ) -> Box<Entry> {
        let header = |name| {
            head.field(name)
                .and_then(|v| std::str::from_utf8(v).ok())
                .unwrap_or("")
        };
        let authority = head.authority();
        let uri = if authority.is_empty() {
            head.path().to_string()
        } else {
            format!("http://{authority}{}", head.path())
        };
        let client_id = client_id.unwrap_or("-");
        let now = rfc3339(SystemTime::now());
        let mut e = Box::new(Entry {
            head: String::with_capacity(160 + uri.len()),
            tail: String::new(),
            started,
            answered: Cell::new(None),
            response_bytes: Cell::new(None),
        });
        match self.format {
            AccessLogFormat::Apache => {
                let _ = write!(
                    e.head,
                    "{client} {client_id} - [{now}] \"{} {uri} {}\"",
                    head.method(),
                    head.version()
                );
            }
            AccessLogFormat::Json => {
                let trace_id = ["x-b3-traceid", "x-request-id", "x-amzn-trace-id"]
                    .into_iter()
                    .map(header)
                    .find(|v| !v.is_empty())
                    .unwrap_or("");
                e.head.push('{');
                json_field(&mut e.head, "client.addr", &client.to_string());
                json_field(&mut e.head, "client.id", client_id);
                json_field(&mut e.head, "timestamp", &now);
                json_field(&mut e.head, "method", head.method());
                json_field(&mut e.head, "uri", &uri);
                json_field(&mut e.head, "version", head.version());
                json_field(&mut e.head, "trace_id", trace_id);
                json_field(&mut e.head, "request_bytes", header("content-length"));
                json_field(&mut e.tail, "user_agent", header("user-agent"));
                json_field(&mut e.tail, "host", header("host"));
            }
        }
        e
    }

    /// The request ended with `status` at `now`: its line is written.
    pub(crate) fn end(&self, e: Entry, status: u16, now: Instant) {
        let (at, upstream) = e.answered.get().unwrap_or((now, Duration::ZERO));
        let total = at.saturating_duration_since(e.started);
        let processing = total.saturating_sub(upstream);
        let mut buf = self.buf.borrow_mut();
        let before = buf.len();
        match self.format {
            AccessLogFormat::Apache => {
                let _ = writeln!(buf, "{} {status}", e.head);
            }
            AccessLogFormat::Json => {
                let mut line = e.head;
                let _ = write!(line, "\"status\":{status},");
                // The response's `content-length`: empty without one, as
                // linkerd2-proxy's.
                let bytes = e.response_bytes.get().map(|n| n.to_string());
                json_field(&mut line, "response_bytes", bytes.as_deref().unwrap_or(""));
                json_field(&mut line, "total_ns", &total.as_nanos().to_string());
                json_field(
                    &mut line,
                    "processing_ns",
                    &processing.as_nanos().to_string(),
                );
                line.push_str(&e.tail);
                line.pop(); // the last field's comma
                line.push_str("}\n");
                buf.extend_from_slice(line.as_bytes());
            }
        }
        if buf.len() >= FLUSH_AT {
            // Write what was there before this line if that keeps each
            // write within `PIPE_BUF`, then the rest.
            if before > 0 && buf.len() > FLUSH_AT {
                let line = buf.split_off(before);
                write_out(&mut buf);
                buf.extend_from_slice(&line);
            }
            write_out(&mut buf);
        }
    }

    /// Writes out whatever lines are gathered.
    pub(crate) fn flush(&self) {
        let mut buf = self.buf.borrow_mut();
        if !buf.is_empty() {
            write_out(&mut buf);
        }
    }
}

impl Entry {
    /// The response's head came; the endpoint took `upstream` of the time
    /// since the request started.
    pub(crate) fn answered(&self, upstream: Duration) {
        self.answered.set(Some((Instant::now(), upstream)));
    }

    /// The response's `content-length` (its last answer's, after
    /// retries).
    pub(crate) fn response_length(&self, n: Option<u64>) {
        self.response_bytes.set(n);
    }
}

fn write_out(buf: &mut Vec<u8>) {
    let _ = std::io::stderr().lock().write_all(buf);
    buf.clear();
}

/// `"name":"value",` with `value` escaped as a JSON string.
fn json_field(out: &mut String, name: &str, value: &str) {
    ringmesh_protocols::json::push_str(out, name);
    out.push(':');
    ringmesh_protocols::json::push_str(out, value);
    out.push(',');
}

/// `t` as RFC 3339 in UTC with microseconds (`2026-12-04T23:40:01.123456Z`).
fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (proleptic Gregorian; H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |s: u64, us: u64| {
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(s) + Duration::from_micros(us))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        // 2000-02-29 (a leap day of a year divisible by 400), noon.
        assert_eq!(at(951_825_600, 7), "2000-02-29T12:00:00.000007Z");
        // 2026-12-04T23:40:01Z, and the last second of 2099.
        assert_eq!(at(1_796_427_601, 123_456), "2026-12-04T23:40:01.123456Z");
        assert_eq!(at(4_102_444_799, 0), "2099-12-31T23:59:59.000000Z");
    }
}
