//! One `/metrics` answer: the copies every worker sent back, merged, and the
//! whole exposition in its fixed family order.

use super::authz::AuthzShard;
use super::errors::{count_http_errors, ErrorShard, HttpErrors};
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
    /// HTTP errors of label sets gone from every worker.
    http_errors_gone: HttpErrors,
}

/// The label sets workers evicted as idle (`LINKERD2_PROXY_METRICS_RETAIN_IDLE`).
/// A series is evicted by each worker on its own; while another worker
/// still has it, the evicted counts stay in its totals (kept here between
/// scrapes), so a counter never goes down unless the series went away
/// from every worker.
#[derive(Debug, Default)]
pub struct Evicted {
    pub tcp: TcpSnapshot,
    pub http: HttpShard,
    pub errors: ErrorShard,
    /// Kept by the scrapes: the HTTP errors of label sets gone from every
    /// worker, which `*_http_errors_total` (by kind, not by label set) go
    /// on counting.
    pub http_errors_gone: HttpErrors,
}

impl Evicted {
    /// Adds what another worker evicted.
    pub fn merge(&mut self, other: &Evicted) {
        self.tcp.merge(&other.tcp);
        self.http.merge(&other.http);
        self.errors.merge(&other.errors);
        for (k, n) in &other.http_errors_gone {
            *self.http_errors_gone.entry(k.clone()).or_default() += n;
        }
    }
}

impl Scrape {
    /// Once the workers' answers are in: adds the evicted counts of series
    /// still present; with `complete` (every worker's copy is in), forgets
    /// those of series gone everywhere.
    pub fn keep_residue(&mut self, residue: &mut Evicted, complete: bool) {
        self.tcp.merge_residue(&mut residue.tcp, complete);
        let gone = self.http.merge_residue(&mut residue.http, complete);
        count_http_errors(&gone, &mut residue.http_errors_gone);
        self.http_errors_gone = residue.http_errors_gone.clone();
        self.errors.merge_residue(&mut residue.errors, complete);
    }

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
        self.errors.encode(&self.http, &self.http_errors_gone, out);
        workers::encode(&self.workers, out);
        process::encode(out, process);
    }
}
