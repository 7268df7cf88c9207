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

/// A connection to the endpoint was opened (`Some(latency)`) or failed
/// (`None`): connect latency and failure accrual.
pub(crate) fn connected(ep: &EndpointState, latency: Option<Duration>) {
    if let Some(latency) = latency {
        ep.observe_connect(latency);
    }
    record_outcome(ep, latency.is_some());
}

/// An endpoint answered `latency` after it was asked (a response head, or
/// a relayed server's first bytes): the balancer learns it (peak-EWMA).
pub(crate) fn first_answer(ep: &EndpointState, latency: Duration) {
    ep.observe_response(latency);
}
