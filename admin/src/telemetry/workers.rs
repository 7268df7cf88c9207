//! Each worker's own counters (`ringmesh_worker_*`), one series per worker.

use std::fmt::Write as _;

use super::family;

/// One worker's counters, read on demand.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    pub worker: usize,
    /// Connections accepted on any listener since start.
    pub accepted: u64,
    /// Connections currently being proxied.
    pub open: u64,
    /// HTTP requests handled since start.
    pub requests: u64,
    /// Of those, sent again to another endpoint after a 502/503.
    pub retries: u64,
    /// TCP relay reads a multishot receive delivered into the buffer ring.
    pub ring_receives: u64,
    /// Times the buffer ring was empty and a relay read used the
    /// connection's own buffer.
    pub ring_exhausted: u64,
    /// Bytes of bulk buffers the worker's TCP relays hold now.
    pub relay_bulk_bytes: u64,
    /// Bulk transfers that kept their small buffer because the bulk
    /// budget (`RINGMESH_TCP_BULK_MEMORY`) was spent.
    pub relay_bulk_refused: u64,
    /// Upstream HTTP/1 connections closed because the upstream sent bytes
    /// that answered no request (past a response, or while idle).
    pub http1_stray_bytes: u64,
    /// Idle pooled HTTP/1 connections the upstream closed.
    pub http1_pool_closed: u64,
    /// Connections still detecting their protocol now.
    pub detect_undecided: u64,
    /// Undecided connections closed because there were too many.
    pub detect_evicted: u64,
    /// Connections relayed because their server spoke first.
    pub server_first: u64,
    /// Accepted connections closed at once, in the descriptor reserve.
    pub fd_refused: u64,
    /// Responses waiting now for their HTTP/2 client's window.
    pub http2_stalled: u64,
    /// Of those, reset (longest stalled first) to keep within the budget.
    pub http2_stalled_resets: u64,
    /// `io_uring_enter` calls of the worker's ring (0 on epoll).
    pub uring_enters: u64,
    /// Completions the worker reaped from its ring (0 on epoll).
    pub uring_completions: u64,
    /// Operations the worker submitted to its ring (0 on epoll).
    pub uring_submissions: u64,
    /// CPU time the worker's thread has used (user + system), in
    /// nanoseconds: its event loop's busy time, since it sleeps in the
    /// kernel when idle.
    pub busy_ns: u64,
}

/// Appends the `ringmesh_worker_*` families for `stats` (in worker order).
pub(crate) fn encode(stats: &[WorkerStats], out: &mut String) {
    let per_worker =
        |out: &mut String, name: &str, kind: &str, help: &str, value: fn(&WorkerStats) -> u64| {
            family(out, name, kind, help);
            for s in stats {
                let _ = writeln!(out, "{name}{{worker=\"{}\"}} {}", s.worker, value(s));
            }
        };
    per_worker(
        out,
        "ringmesh_worker_accepted_connections_total",
        "counter",
        "Connections accepted by each worker.",
        |s| s.accepted,
    );
    per_worker(
        out,
        "ringmesh_worker_requests_total",
        "counter",
        "HTTP requests handled by each worker.",
        |s| s.requests,
    );
    per_worker(
        out,
        "ringmesh_worker_retries_total",
        "counter",
        "HTTP requests each worker sent again to another endpoint after a 502/503 (within the retry budget).",
        |s| s.retries,
    );
    per_worker(
        out,
        "ringmesh_worker_open_connections",
        "gauge",
        "Connections each worker is proxying now.",
        |s| s.open,
    );
    per_worker(
        out,
        "ringmesh_worker_relay_ring_receives_total",
        "counter",
        "TCP relay reads delivered by io_uring multishot receives into each worker's buffer ring.",
        |s| s.ring_receives,
    );
    per_worker(
        out,
        "ringmesh_worker_relay_ring_exhausted_total",
        "counter",
        "Times each worker's buffer ring was empty and a TCP relay read went into the connection's own buffer.",
        |s| s.ring_exhausted,
    );
    per_worker(
        out,
        "ringmesh_worker_relay_bulk_buffer_bytes",
        "gauge",
        "Bytes of bulk buffers each worker's TCP relays hold now (at most its share of RINGMESH_TCP_BULK_MEMORY).",
        |s| s.relay_bulk_bytes,
    );
    per_worker(
        out,
        "ringmesh_worker_relay_bulk_refused_total",
        "counter",
        "TCP relay directions that kept their small buffer for a bulk transfer because each worker's share of RINGMESH_TCP_BULK_MEMORY was in use.",
        |s| s.relay_bulk_refused,
    );
    per_worker(
        out,
        "ringmesh_worker_http1_upstream_stray_bytes_total",
        "counter",
        "Upstream HTTP/1 connections each worker closed because the upstream sent bytes that answered no request (past a response, or while the connection was idle in the pool).",
        |s| s.http1_stray_bytes,
    );
    per_worker(
        out,
        "ringmesh_worker_http1_pool_closed_total",
        "counter",
        "Idle pooled upstream HTTP/1 connections each worker found closed by the upstream.",
        |s| s.http1_pool_closed,
    );
    per_worker(
        out,
        "ringmesh_worker_detect_undecided_connections",
        "gauge",
        "Connections each worker is still detecting a protocol for (silent, slow, or waiting for either side to speak).",
        |s| s.detect_undecided,
    );
    per_worker(
        out,
        "ringmesh_worker_detect_evicted_total",
        "counter",
        "Undecided connections each worker closed, oldest first, because RINGMESH_DETECT_MAX_UNDECIDED were open.",
        |s| s.detect_evicted,
    );
    per_worker(
        out,
        "ringmesh_worker_server_first_total",
        "counter",
        "Connections each worker relayed because the server spoke first (seen, or remembered for the destination).",
        |s| s.server_first,
    );
    per_worker(
        out,
        "ringmesh_worker_fd_reserve_refused_total",
        "counter",
        "Connections each worker accepted and closed at once because the process's descriptors were near RLIMIT_NOFILE (the last tenth, at least 32 and at most 1024, is kept for the admin server and the control plane).",
        |s| s.fd_refused,
    );
    per_worker(
        out,
        "ringmesh_worker_http2_stalled_responses",
        "gauge",
        "Responses each worker holds now while their HTTP/2 client's flow-control window is closed.",
        |s| s.http2_stalled,
    );
    per_worker(
        out,
        "ringmesh_worker_http2_stalled_resets_total",
        "counter",
        "Responses each worker reset, longest stalled first, because its stalled responses held more than RINGMESH_HTTP2_MAX_STALLED_BYTES.",
        |s| s.http2_stalled_resets,
    );
    per_worker(
        out,
        "ringmesh_worker_uring_enters_total",
        "counter",
        "io_uring_enter calls by each worker's ring (submit, wait or both; 0 on the epoll driver).",
        |s| s.uring_enters,
    );
    per_worker(
        out,
        "ringmesh_worker_uring_completions_total",
        "counter",
        "Completions each worker reaped from its io_uring (0 on the epoll driver).",
        |s| s.uring_completions,
    );
    per_worker(
        out,
        "ringmesh_worker_uring_submissions_total",
        "counter",
        "Operations each worker submitted to its io_uring (submission queue entries the kernel took; 0 on the epoll driver).",
        |s| s.uring_submissions,
    );
    family(
        out,
        "ringmesh_worker_busy_seconds_total",
        "counter",
        "CPU time each worker's event loop has used (user + system).",
    );
    for s in stats {
        let _ = writeln!(
            out,
            "ringmesh_worker_busy_seconds_total{{worker=\"{}\"}} {:.6}",
            s.worker,
            s.busy_ns as f64 / 1e9
        );
    }
}
