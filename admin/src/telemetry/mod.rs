//! Metrics: the per-worker shards the data path writes and the Prometheus
//! text encoder that turns merged copies of them into `/metrics`.
//!
//! Each worker is the only writer of its shards ([`TcpShard`],
//! [`HttpShard`]: plain integers in `Cell`s and `RefCell`s, no atomics, no
//! locks). A scrape asks every worker for a copy (a message, answered on the
//! worker; the engine owns that part) and the admin side merges and encodes
//! them into a [`Scrape`], with linkerd2-proxy's family and label names.
//!
//! Modules: `labels` (`direction`, `peer`, the discovered service's labels,
//! escaping), `tls` (the `tls` label and its companions, from a
//! connection's [`TlsStatus`]), `tcp` (connection families and the
//! per-connection [`ConnMeter`]), `http` (request/response families and the
//! latency histogram), `keyed_hash` (the hash of the per-request maps),
//! `workers` (each worker's `ringmesh_worker_*`
//! counters), `errors` (linkerd2-proxy's `*_tcp_errors_total` and
//! `*_http_errors_total`), `process` (`process_*`, `proxy_build_info`), `scrape` (the
//! merge, and the family order of one answer).
//!
//! Label sets per family and worker are capped at [`MAX_SERIES`]; idle ones
//! are evicted (`evict_idle`, `LINKERD2_PROXY_METRICS_RETAIN_IDLE`).

use std::fmt::Write as _;

mod authz;
mod errors;
mod http;
mod keyed_hash;
mod labels;
mod process;
mod scrape;
mod tcp;
mod tls;
mod workers;

pub use authz::{AuthzKey, AuthzProto, AuthzShard};
pub use errors::{ErrorShard, ProxyErrorKind};
pub use http::{
    ErrorLabel, HttpKey, HttpShard, ResponseClass, GRPC_UNKNOWN, LATENCY_BUCKETS_MS,
    RESPONSE_BODY_FAILED, STREAM_RESET,
};
pub use keyed_hash::{KeyedHasher, KeyedState};
pub use labels::{AuthorityLabel, Direction, DstLabels, Peer, PolicyLabels, PolicyMeta};
pub use process::ProcessInfo;
pub use scrape::{Evicted, Scrape};
pub use tcp::{relayed, ConnMeter, TcpKey, TcpShard, TcpSnapshot, TcpStats};
pub use tls::{NoTlsReason, TlsStatus};
pub use workers::WorkerStats;

/// At most this many label sets per family per worker; beyond it new label
/// sets are not recorded (the TCP error families count them under
/// `target_addr="other"`), and that is logged (once per worker).
pub const MAX_SERIES: usize = 10_000;

/// Logs, once per worker, that `family` reached [`MAX_SERIES`]; `what`
/// says what happens to new label sets.
fn cap_hit_then(family: &'static str, what: &'static str) {
    thread_local! {
        static LOGGED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if !LOGGED.with(|l| l.replace(true)) {
        tracing::warn!(
            family,
            max = MAX_SERIES,
            "metrics series cap reached on this worker; {what}"
        );
    }
}

fn cap_hit(family: &'static str) {
    cap_hit_then(family, "new label sets are not recorded");
}

/// A family's `# HELP` and `# TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}
