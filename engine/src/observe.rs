//! One request's observer: every HTTP path (HTTP/1 → HTTP/1, HTTP/1 →
//! HTTP/2, HTTP/2 → HTTP/2, HTTP/2 → HTTP/1) reports here when the request
//! starts, where it goes, each attempt's response head and how the
//! endpoint did, retries, and how the request ended. Nothing else writes a
//! request's metrics, the balancer's latency and failure feedback, or the
//! retry counts; tap will be fed from here too.
//!
//! The balancer feedback itself is `feedback.rs`, which connections (the
//! L4 relays, and connecting for any path) report to directly.
//!
//! Must not: do I/O, or decide anything (routing and retries are decided
//! elsewhere; this only records what happened).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ringmesh_admin::telemetry::{Direction, HttpKey, ResponseClass, TlsStatus};
use ringmesh_balancer::OpenGuard;

use crate::connect::dst_labels;
use crate::error::ProxyError;
use crate::feedback::record_outcome;
use crate::route::Dst;
use crate::worker::Worker;

/// A request in flight on one worker.
pub(crate) struct Observer<'w> {
    w: &'w Worker,
    key: HttpKey,
    started: Instant,
}

impl<'w> Observer<'w> {
    /// The request's head has arrived.
    pub(crate) fn start(w: &'w Worker, direction: Direction) -> Self {
        Self {
            w,
            key: HttpKey {
                direction,
                tls: TlsStatus::NO_PROXY_IDENTITY,
                authority: None,
                target: None,
                dst_labels: None,
            },
            started: Instant::now(),
        }
    }

    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// The labels the request (and connections made for it) count under.
    pub(crate) fn key(&self) -> &HttpKey {
        &self.key
    }

    /// The request's destination is known.
    pub(crate) fn routed(&mut self, target: &Dst) {
        match target {
            Dst::Service(svc, _) => {
                self.key.authority = Some(svc.name.to_shared());
                self.key.dst_labels = dst_labels(svc);
            }
            // Known before connecting, so a failed connect is labelled too.
            Dst::Addr(addr) => self.key.target = Some(*addr),
        }
    }

    /// The endpoint the current attempt goes to.
    pub(crate) fn endpoint(&mut self, addr: SocketAddr) {
        self.key.target = Some(addr);
    }

    /// An attempt's response began `latency` after it was sent: the
    /// balancer learns the endpoint's latency (peak-EWMA).
    pub(crate) fn response_head(&self, ep: Option<&OpenGuard>, latency: Duration) {
        if let Some(g) = ep {
            crate::feedback::first_answer(g.endpoint(), latency);
        }
    }

    /// How the endpoint did, for failure accrual: 5xx answers and upstream
    /// failures count against it; anything else resets its count.
    pub(crate) fn endpoint_outcome(&self, ep: Option<&OpenGuard>, ok: bool) {
        if let Some(g) = ep {
            record_outcome(g.endpoint(), ok);
        }
    }

    /// The endpoint answered 502/503 and the request goes again to another
    /// endpoint: against the endpoint, in the retry series and counts.
    pub(crate) fn retrying(&self, ep: &OpenGuard) {
        self.w.telemetry.note_retry(&self.key, ep.endpoint());
    }

    /// The request ended with a response counted as `class` (from the
    /// upstream, or one cut short after it started).
    pub(crate) fn end(self, class: ResponseClass) {
        self.w
            .telemetry
            .record_response(&self.key, class, self.started);
    }

    /// The request ended with a response of `status` from upstream.
    pub(crate) fn end_status(self, status: u16) {
        self.end(ResponseClass::http(status, None));
    }

    /// The request ended with the proxy's own answer; `grpc`: the client
    /// speaks gRPC and got the answer's gRPC status.
    pub(crate) fn answered(self, e: &ProxyError, grpc: bool) {
        self.end(ResponseClass {
            status: e.status(),
            grpc_status: grpc.then(|| e.grpc_status()),
            error: Some(e.label()),
        });
    }
}
