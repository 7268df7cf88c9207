//! A long-lived control-plane stream (Destination `Get` / `GetProfile`,
//! policy `WatchPort`), kept open for as long as the control core runs.
//!
//! # What it owns
//!
//! - The shared connection to a control-plane service ([`Client`]:
//!   plaintext to a loopback address, mutual TLS as the service's name
//!   otherwise, with this proxy's certificate), made again once for every
//!   stream when it ends.
//! - One stream's life ([`follow`]): the call, each message handed to the
//!   caller (with whether it is the first of a new stream: the server
//!   starts every stream with its whole state), Linkerd's limits
//!   (`LINKERD2_PROXY_CONTROL_STREAM_*`: the first message within the
//!   initial timeout, each next within the idle one, a new stream after
//!   the lifetime), and reopening after a failure (an error status, a
//!   broken connection, an undecodable message, the server ending it, a
//!   missed limit) with backoff: 100 ms doubling to 10 s, with jitter,
//!   reset by a message.
//! - Counters per service ([`StreamCounters`]).
//!
//! # What it must not do
//!
//! Throw state away: the caller keeps what it learnt until a new stream
//! says otherwise; a failure only tells it (`on_failure`) so a target
//! that never had an answer can be given a safe default.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ringmesh_discovery::channel::{Cache, Subscriber};
use ringmesh_discovery::table::Signal;
use ringmesh_identity::Name;

use crate::certify::{backoff, jitter};
use crate::config::{ControlAddr, StreamLimits};
use crate::grpc::{self, Channel, Code, GrpcError};
use crate::identity::IdentityState;

/// Connecting to the service (TCP, TLS, HTTP/2) must take no longer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(10);

/// The connection to a control-plane service, shared by every stream.
pub(crate) struct Client {
    addr: ControlAddr,
    name: Option<Name>,
    identity: RefCell<Cache<IdentityState>>,
    channel: RefCell<Option<Rc<Channel>>>,
    connecting: Cell<bool>,
    /// Why the last attempt failed, for the streams that waited on it.
    last_error: RefCell<Option<GrpcError>>,
    connected: Signal,
}

impl Client {
    /// `name`: the service's identity (mutual TLS); `None`: plaintext.
    pub(crate) fn new(
        addr: ControlAddr,
        name: Option<Name>,
        identity: &Subscriber<IdentityState>,
    ) -> Self {
        Self {
            addr,
            name,
            identity: RefCell::new(identity.cache()),
            channel: RefCell::new(None),
            connecting: Cell::new(false),
            last_error: RefCell::new(None),
            connected: Signal::default(),
        }
    }

    async fn channel(&self) -> Result<Rc<Channel>, GrpcError> {
        loop {
            if let Some(c) = self.channel.borrow().as_ref().filter(|c| !c.is_closed()) {
                return Ok(c.clone());
            }
            if self.connecting.get() {
                // Another stream is connecting: its outcome is ours.
                let seen = self.connected.generation();
                self.connected.changed_since(seen).await;
                if let Some(e) = self.last_error.borrow().clone() {
                    return Err(e);
                }
                continue;
            }
            self.connecting.set(true);
            let made = self.connect().await;
            self.connecting.set(false);
            let result = match made {
                Ok(c) => {
                    let c = Rc::new(c);
                    *self.channel.borrow_mut() = Some(c.clone());
                    *self.last_error.borrow_mut() = None;
                    Ok(c)
                }
                Err(e) => {
                    *self.channel.borrow_mut() = None;
                    *self.last_error.borrow_mut() = Some(e.clone());
                    Err(e)
                }
            };
            self.connected.notify();
            return result;
        }
    }

    async fn connect(&self) -> Result<Channel, GrpcError> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let addr = Channel::resolve(&self.addr, deadline).await?;
        let Some(name) = &self.name else {
            return Channel::connect(addr, deadline).await;
        };
        let tls = {
            let mut cache = self.identity.borrow_mut();
            cache.refresh();
            cache.get().0.as_ref().map(|c| c.client_h2.clone())
        };
        let Some(tls) = tls else {
            return Err(GrpcError::new(
                Code::Unavailable,
                "no identity certificate yet for mutual TLS to the control plane",
            ));
        };
        Channel::connect_tls(addr, name, tls, deadline).await
    }
}

/// One service's stream counters, rendered by the admin server.
#[derive(Default)]
pub(crate) struct StreamCounters {
    /// Streams opened (the first and each reconnection).
    pub streams: AtomicU64,
    /// Streams that failed or were ended by the server.
    pub errors: AtomicU64,
    /// Messages received.
    pub messages: AtomicU64,
}

impl StreamCounters {
    /// `<prefix>_streams_total`, `<prefix>_stream_errors_total`,
    /// `<prefix>_updates_total`; `what` names the calls in the help text.
    pub(crate) fn render(&self, out: &mut String, prefix: &str, what: &str) {
        use std::fmt::Write as _;
        for (suffix, help, v) in [
            (
                "streams_total",
                "streams opened, reconnections included",
                &self.streams,
            ),
            (
                "stream_errors_total",
                "streams that failed or were ended by the server",
                &self.errors,
            ),
            ("updates_total", "messages applied", &self.messages),
        ] {
            let name = format!("{prefix}_{suffix}");
            let _ = writeln!(
                out,
                "# HELP {name} {what} {help}.\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
}

/// Whether a control stream's `error` is NOT_FOUND.
pub(crate) fn not_found(error: Option<&GrpcError>) -> bool {
    error.is_some_and(|e| e.code == crate::grpc::Code::NotFound)
}

/// How one stream ended without an error.
enum End {
    /// Its lifetime ran out: open the next at once.
    Lifetime,
    /// The server ended it with `OK`.
    Closed,
}

/// Follows the stream `path(req)` for as long as the control core runs:
/// every message goes to `on_message` (`true` for the first of a
/// stream), every failure is told to `on_failure` (with the call's error,
/// if it ended in one), then logged, counted and the stream opened again
/// after the backoff; unless `on_failure` says the failure is final
/// (`false`: the server's answer stands, as linkerd2-proxy takes
/// NOT_FOUND from the policy and profile APIs), which ends the following
/// quietly.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn follow<Req, M>(
    client: &Client,
    path: &'static str,
    req: Req,
    limits: StreamLimits,
    counters: &StreamCounters,
    target: &dyn std::fmt::Display,
    mut on_message: impl FnMut(M, bool),
    mut on_failure: impl FnMut(Option<&GrpcError>) -> bool,
) where
    Req: prost::Message + Clone,
    M: prost::Message + Default,
{
    let mut failures = 0u32;
    loop {
        counters.streams.fetch_add(1, Ordering::Relaxed);
        let outcome = once(
            client,
            path,
            req.clone(),
            limits,
            counters,
            &mut failures,
            &mut on_message,
        )
        .await;
        let (why, error) = match outcome {
            Ok(End::Lifetime) => {
                tracing::debug!(%target, path, "control stream lifetime reached; opening another");
                continue;
            }
            Ok(End::Closed) => ("the server ended the stream".to_string(), None),
            Err(e) => (e.to_string(), Some(e)),
        };
        if !on_failure(error.as_ref()) {
            tracing::debug!(%target, path, answer = %why, "control stream answered for good; not asked again");
            return;
        }
        counters.errors.fetch_add(1, Ordering::Relaxed);
        failures += 1;
        let wait = jitter(
            backoff(failures, BACKOFF_BASE, BACKOFF_CAP),
            fastrand::f64(),
        );
        tracing::warn!(%target, path, error = %why, retry_in = ?wait, "control stream failed; keeping the last state");
        monoio::time::sleep(wait).await;
    }
}

/// One stream, from the call to its end.
async fn once<Req, M>(
    client: &Client,
    path: &'static str,
    req: Req,
    limits: StreamLimits,
    counters: &StreamCounters,
    failures: &mut u32,
    on_message: &mut impl FnMut(M, bool),
) -> Result<End, GrpcError>
where
    Req: prost::Message,
    M: prost::Message + Default,
{
    let started = Instant::now();
    let lifetime_end = limits.lifetime.map(|l| started + l);
    let first_by = limits.initial.map(|t| started + t);
    let open = async {
        let channel = client.channel().await?;
        grpc::server_streaming::<_, M>(&channel, path, req, None).await
    };
    let mut stream = match first_by {
        Some(at) => monoio::time::timeout_at(monoio::time::Instant::from_std(at), open)
            .await
            .unwrap_or_else(|_| Err(no_message("no response", limits.initial)))?,
        None => open.await?,
    };
    let mut fresh = true;
    loop {
        let limit = if fresh {
            first_by
        } else {
            limits.idle.map(|t| Instant::now() + t)
        };
        let deadline = match (limit, lifetime_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let next = match deadline {
            None => stream.message().await,
            Some(at) => {
                match monoio::time::timeout_at(
                    monoio::time::Instant::from_std(at),
                    stream.message(),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) if lifetime_end.is_some_and(|l| Instant::now() >= l) => {
                        return Ok(End::Lifetime)
                    }
                    Err(_) => {
                        let t = if fresh { limits.initial } else { limits.idle };
                        return Err(no_message("no update", t));
                    }
                }
            }
        };
        let Some(msg) = next? else {
            return Ok(End::Closed);
        };
        *failures = 0;
        counters.messages.fetch_add(1, Ordering::Relaxed);
        on_message(msg, std::mem::take(&mut fresh));
    }
}

fn no_message(what: &str, within: Option<Duration>) -> GrpcError {
    GrpcError::new(
        Code::DeadlineExceeded,
        format!("{what} within {:?}", within.unwrap_or_default()),
    )
}
