//! Balancer feedback: what the balancer learns from connections and
//! requests — connect latency, answer latency (peak-EWMA) and failure
//! accrual (ejections and restorations, logged). Requests report through
//! their observer (`observe.rs`); connections (the L4 relays, and connecting
//! for any path) report here directly.
//!
//! Must not: do I/O.

use std::time::Duration;

use ringmesh_balancer::{EndpointState, Transition};

/// Records how a request or connection to `ep` went, for failure accrual,
/// and logs ejections and restorations.
pub(crate) fn record_outcome(ep: &EndpointState, ok: bool) {
    let t = if ok {
        ep.record_success()
    } else {
        ep.record_failure()
    };
    match t {
        Transition::None => {}
        Transition::Ejected(backoff) => {
            tracing::warn!(endpoint = %ep.addr(), ?backoff, "endpoint ejected after consecutive failures")
        }
        Transition::Restored => tracing::info!(endpoint = %ep.addr(), "endpoint restored"),
    }
}

/// A connection to the endpoint was opened in `latency`: connect latency
/// and failure accrual.
pub(crate) fn connected(ep: &EndpointState, latency: Duration) {
    ep.connect_succeeded(std::time::Instant::now());
    ep.observe_connect(latency);
    record_outcome(ep, true);
}

/// A connection to the endpoint (or its TLS handshake) failed after
/// `spent`: failure accrual, and a latency of at least
/// [`CONNECT_FAILURE_PENALTY`] (peak-EWMA), so P2C prefers the others from
/// the next pick on: an endpoint whose handshakes stall is not picked
/// again, at a second a request, until the balancer probes it (one pick
/// after 1 s, then 2, 4 … 30 s while it keeps failing; a connection that
/// succeeds forgets the penalty) or it is ejected. (A refusal's few
/// microseconds must not make it look fast.) linkerd2-proxy's balancer
/// leaves an endpoint in reconnect backoff out likewise, and takes it back
/// once it reconnects.
pub(crate) fn connect_failed(ep: &EndpointState, spent: Duration) {
    let penalty = spent.max(CONNECT_FAILURE_PENALTY);
    ep.observe_connect(penalty);
    ep.observe_response(penalty);
    ep.connect_failed(std::time::Instant::now());
    record_outcome(ep, false);
}

/// The least latency a failed connection counts as.
const CONNECT_FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// An endpoint answered `latency` after it was asked (a response head, or
/// a relayed server's first bytes): the balancer learns it (peak-EWMA).
pub(crate) fn first_answer(ep: &EndpointState, latency: Duration) {
    ep.observe_response(latency);
}
