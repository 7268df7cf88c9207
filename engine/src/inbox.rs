//! What other threads ask a worker, and what it answers with: the messages
//! in a worker's channel (its counters are `ringmesh_admin::telemetry::WorkerStats`). Kept apart from the
//! worker itself so the control core (admin scrapes) can speak to workers
//! without depending on how they serve.

use std::sync::mpsc;

use futures_channel::oneshot;

use ringmesh_admin::telemetry::{
    AuthzShard, ErrorShard, Evicted, HttpShard, TcpSnapshot, WorkerStats,
};

/// A worker's answer to a scrape: its counters, copies of its shards, and
/// the label sets it evicted as idle since its last answer arrived.
pub(crate) type MetricsAnswer = (
    WorkerStats,
    TcpSnapshot,
    HttpShard,
    AuthzShard,
    ErrorShard,
    Evicted,
);

/// A worker's counters and copies of its shards.
pub(crate) type WorkerCopy = (WorkerStats, TcpSnapshot, HttpShard, AuthzShard, ErrorShard);

pub(crate) enum WorkerMsg {
    /// Stop accepting and drain.
    Shutdown,
    Stats(mpsc::Sender<WorkerStats>),
    /// A copy of this worker's metrics shard, for a scrape. The control
    /// core awaits the answer without blocking its loop.
    Metrics(oneshot::Sender<MetricsAnswer>),
}
