//! What other threads ask a worker, and what it answers with: the messages
//! in a worker's channel and the counters it reports. Kept apart from the
//! worker itself so the control core (admin scrapes) can speak to workers
//! without depending on how they serve.

use std::sync::mpsc;

use futures_channel::oneshot;

use crate::metrics::{HttpShard, TcpSnapshot};

pub(crate) enum WorkerMsg {
    /// Stop accepting and drain.
    Shutdown,
    Stats(mpsc::Sender<WorkerStats>),
    /// A copy of this worker's metrics shard, for a scrape. The control
    /// core awaits the answer without blocking its loop.
    Metrics(oneshot::Sender<(WorkerStats, TcpSnapshot, HttpShard)>),
}

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
    /// `io_uring_enter` calls of the worker's ring (0 on epoll).
    pub uring_enters: u64,
    /// Completions the worker reaped from its ring (0 on epoll).
    pub uring_completions: u64,
    /// CPU time the worker's thread has used (user + system), in
    /// nanoseconds: its event loop's busy time, since it sleeps in the
    /// kernel when idle.
    pub busy_ns: u64,
}
