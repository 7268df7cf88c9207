//! One `/metrics` answer: the copies every worker sent back, merged, and the
//! whole exposition in its fixed family order.

use super::authz::AuthzShard;
use super::errors::ErrorShard;
use super::http::HttpShard;
use super::process::{self, ProcessInfo};
use super::tcp::TcpSnapshot;
use super::workers::{self, WorkerStats};

/// What a scrape gathered from the workers so far.
#[derive(Debug, Default)]
pub struct Scrape {
    workers: Vec<WorkerStats>,
    tcp: TcpSnapshot,
    http: HttpShard,
    authz: AuthzShard,
    errors: ErrorShard,
}

impl Scrape {
    /// Adds one worker's answer.
    pub fn add(&mut self, stats: WorkerStats, tcp: &TcpSnapshot, http: &HttpShard) {
        self.workers.push(stats);
        self.tcp.merge(tcp);
        self.http.merge(http);
    }

    /// Adds one worker's authorization counters.
    pub fn add_authz(&mut self, authz: &AuthzShard) {
        self.authz.merge(authz);
    }

    /// Adds one worker's counts of connections it could not serve.
    pub fn add_errors(&mut self, errors: &ErrorShard) {
        self.errors.merge(errors);
    }

    /// Appends the text exposition (format 0.0.4): HTTP, TCP, per-worker,
    /// then process families.
    pub fn encode(mut self, out: &mut String, process: &ProcessInfo) {
        self.workers.sort_by_key(|s| s.worker);
        self.http.encode(out);
        self.tcp.encode(out);
        self.authz.encode(out);
        self.errors.encode(&self.http, out);
        workers::encode(&self.workers, out);
        process::encode(out, process);
    }
}
