//! DNS as a resolver: one task per watched name, each resolving when its
//! answer's TTL runs out (the hosts file first, then the nameservers) and
//! reporting to the [`Table`]. A slow or silent nameserver delays only the
//! names waiting on it, never the control core's other work.
//!
//! Timing, as before the control core was asynchronous: a name resolves at
//! once when watched (unless the static file defines it; then when the file
//! drops it); again after the answer's TTL (clamped to the configured range),
//! after a hosts-file answer's `max_ttl`, after an NXDOMAIN's negative TTL;
//! after a transient failure with backoff (min TTL, doubling, at most max
//! TTL), keeping the last good addresses meanwhile.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dns::{DnsConfig, DnsError, DnsResolver, Resolution, SrvResolution};
use crate::hosts::HostsFile;
use crate::resolver::Resolver;
use crate::table::Table;
use crate::{Authority, Endpoint};

struct Inner {
    dns: DnsResolver,
    hosts: HostsFile,
    /// When each name not defined by the static file refreshes next.
    refresh_at: RefCell<HashMap<Authority, Instant>>,
}

/// Resolves every watched name through DNS. Cheap to clone (a handle).
#[derive(Clone)]
pub(crate) struct DnsNameResolver {
    inner: Rc<Inner>,
}

/// What a lookup found.
enum Outcome {
    Hosts(Vec<IpAddr>),
    Dns(Result<Resolution, DnsError>),
    /// An SRV name's targets (address, weight).
    Srv(Result<SrvResolution, DnsError>),
}

/// One name's refresh state; what a lookup's outcome does to it.
struct NameState {
    /// Addresses from the last successful resolution.
    endpoints: Vec<Endpoint>,
    refresh_at: Instant,
    failures: u32,
    /// Why the last lookup found nothing, while there are no endpoints.
    why: Option<Arc<str>>,
}

/// Failure warnings per second at most (the control core's one thread);
/// the others are counted and the count goes with the next warning.
const WARNINGS_PER_SECOND: u32 = 10;

thread_local! {
    static WINDOW: std::cell::Cell<(Option<Instant>, u32)> = const { std::cell::Cell::new((None, 0)) };
    static SUPPRESSED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Whether a failure may be warned of now.
fn warn_allowed(now: Instant) -> bool {
    WINDOW.with(|w| {
        let (start, n) = w.get();
        let (start, n) = match start {
            Some(s) if now.saturating_duration_since(s) < Duration::from_secs(1) => (s, n),
            _ => (now, 0),
        };
        let allowed = n < WARNINGS_PER_SECOND;
        w.set((Some(start), n + u32::from(allowed)));
        if !allowed {
            SUPPRESSED.with(|c| c.set(c.get() + 1));
        }
        allowed
    })
}

impl NameState {
    fn apply(&mut self, name: &Authority, outcome: Outcome, cfg: &DnsConfig, now: Instant) {
        let port = name.port();
        self.why = match &outcome {
            Outcome::Dns(Err(e)) | Outcome::Srv(Err(e)) => Some(e.to_string().into()),
            _ => None,
        };
        match outcome {
            Outcome::Hosts(addrs) => {
                self.endpoints = endpoints(addrs.into_iter(), port);
                self.failures = 0;
                self.refresh_at = now + cfg.max_ttl;
            }
            Outcome::Dns(Ok(res)) => {
                self.endpoints = endpoints(res.addrs.into_iter(), port);
                self.failures = 0;
                self.refresh_at = now + res.ttl;
                tracing::debug!(%name, endpoints = self.endpoints.len(), ttl = ?res.ttl, "resolved");
            }
            Outcome::Srv(Ok(res)) => {
                let mut eps: Vec<Endpoint> = res
                    .targets
                    .into_iter()
                    .map(|(addr, weight)| Endpoint::unmeshed(addr, weight))
                    .collect();
                eps.sort_by_key(|e| e.addr);
                eps.dedup();
                self.endpoints = eps;
                self.failures = 0;
                self.refresh_at = now + res.ttl;
                tracing::debug!(%name, endpoints = self.endpoints.len(), ttl = ?res.ttl, "resolved (SRV)");
            }
            Outcome::Srv(Err(e)) => self.apply(name, Outcome::Dns(Err(e)), cfg, now),
            Outcome::Dns(Err(DnsError::NotFound { negative_ttl, .. })) => {
                // The name is gone: it has no endpoints until it returns.
                if (!self.endpoints.is_empty() || self.failures == 0) && warn_allowed(now) {
                    let suppressed = SUPPRESSED.with(|c| c.replace(0));
                    tracing::warn!(%name, suppressed, "DNS name does not exist");
                }
                self.endpoints.clear();
                self.failures += 1;
                self.refresh_at = now + negative_ttl;
            }
            Outcome::Dns(Err(e)) => {
                // A transient failure: keep the last good addresses and retry
                // with backoff (min TTL, doubling, at most max TTL).
                self.failures += 1;
                let backoff = cfg
                    .min_ttl
                    .saturating_mul(1 << self.failures.min(6))
                    .min(cfg.max_ttl);
                // The first failure of a run is a warning, the retries that
                // fail again are not (thousands of names failing against
                // a silent nameserver logged a warning each per retry).
                if self.failures == 1 && warn_allowed(now) {
                    let suppressed = SUPPRESSED.with(|c| c.replace(0));
                    tracing::warn!(%name, error = %e, retry_in = ?backoff, suppressed, "DNS resolution failed; keeping the last addresses");
                } else {
                    tracing::debug!(%name, error = %e, failures = self.failures, retry_in = ?backoff, "DNS resolution failed again");
                }
                self.refresh_at = now + backoff;
            }
        }
    }
}

impl DnsNameResolver {
    pub(crate) fn new(cfg: DnsConfig, hosts: HostsFile) -> Self {
        Self {
            inner: Rc::new(Inner {
                dns: DnsResolver::new(cfg),
                hosts,
                refresh_at: RefCell::default(),
            }),
        }
    }

    /// The soonest refresh of any name this resolver is responsible for.
    #[cfg(test)]
    pub(crate) fn next_refresh(&self) -> Option<Instant> {
        self.inner.refresh_at.borrow().values().min().copied()
    }

    async fn lookup(&self, host: &str) -> Outcome {
        if is_srv_name(host) {
            return Outcome::Srv(self.inner.dns.resolve_srv(host).await);
        }
        let from_hosts = self.inner.hosts.lookup(host);
        if !from_hosts.is_empty() {
            return Outcome::Hosts(from_hosts);
        }
        Outcome::Dns(self.inner.dns.resolve(host).await)
    }

    /// Keeps `name` resolved for as long as the control core runs.
    async fn follow(self, table: Table, name: Authority) {
        let cfg = self.inner.dns.config().clone();
        let mut state = NameState {
            endpoints: Vec::new(),
            refresh_at: Instant::now(),
            failures: 0,
            why: None,
        };
        let mut was_static = false;
        let Some(mut id) = table.watch_id(&name) else {
            return;
        };
        loop {
            match table.watch_id(&name) {
                // Dropped (idle), or taken back by the resolver that
                // handed it over: no more lookups.
                None => {
                    self.inner.refresh_at.borrow_mut().remove(&name);
                    return;
                }
                _ if table.claimed(&name) => {
                    self.inner.refresh_at.borrow_mut().remove(&name);
                    return;
                }
                // Dropped and watched again while this task still ran (the
                // new watch found the name followed, so no task of its
                // own): this task follows the new watch, from scratch.
                Some(now) if now != id => {
                    id = now;
                    state = NameState {
                        endpoints: Vec::new(),
                        refresh_at: Instant::now(),
                        failures: 0,
                        why: None,
                    };
                }
                Some(_) => {}
            }
            let dropped = table.unwatched().generation();
            let seen = table.static_changed().generation();
            if table.static_defines(&name) {
                // Not looked up while the static file defines it.
                self.inner.refresh_at.borrow_mut().remove(&name);
                was_static = true;
                table.static_changed().changed_since(seen).await;
                continue;
            }
            if std::mem::take(&mut was_static) {
                // The file dropped it: due at once.
                state.refresh_at = Instant::now();
            }
            self.inner
                .refresh_at
                .borrow_mut()
                .insert(name.clone(), state.refresh_at);
            if Instant::now() < state.refresh_at {
                let at = monoio::time::Instant::from_std(state.refresh_at);
                monoio::select! {
                    _ = monoio::time::sleep_until(at) => {}
                    _ = table.static_changed().changed_since(seen) => {}
                    _ = table.unwatched().changed_since(dropped) => {}
                }
                continue;
            }
            let outcome = self.lookup(name.host()).await;
            if table.claimed(&name) || table.watch_id(&name) != Some(id) {
                // Taken back, or dropped, meanwhile: not reported (a new
                // watch of the name is looked up afresh, above).
                continue;
            }
            state.apply(&name, outcome, &cfg, Instant::now());
            self.inner
                .refresh_at
                .borrow_mut()
                .insert(name.clone(), state.refresh_at);
            match &state.why {
                Some(why) if state.endpoints.is_empty() => {
                    table.report_unresolved(&name, why.clone())
                }
                _ => table.report(&name, state.endpoints.clone()),
            };
        }
    }
}

impl Resolver for DnsNameResolver {
    /// Follows every name watched so far, and each one watched later, in a
    /// task of its own.
    fn run(self: Box<Self>, table: Table) -> Pin<Box<dyn Future<Output = ()>>> {
        Box::pin(async move {
            let mut cursor = table.watch_cursor();
            // The names followed now (one task each).
            let following: Rc<RefCell<HashSet<Authority>>> = Rc::default();
            loop {
                let seen = table.watched().generation();
                let seen_disowned = table.disowned().generation();
                let mut names = table.watched_since(&mut cursor);
                // Names another resolver (Destination) answers for are
                // its own, unless it handed them over.
                names.extend(table.disowned_names());
                for name in names.into_iter().filter(|n| !table.claimed(n)) {
                    if !following.borrow_mut().insert(name.clone()) {
                        continue;
                    }
                    let (this, table, following) =
                        ((*self).clone(), table.clone(), following.clone());
                    monoio::spawn(async move {
                        this.follow(table, name.clone()).await;
                        following.borrow_mut().remove(&name);
                    });
                }
                monoio::select! {
                    _ = table.watched().changed_since(seen) => {}
                    _ = table.disowned().changed_since(seen_disowned) => {}
                }
            }
        })
    }
}

/// `_service._proto.name`: resolved with SRV records (their ports and
/// weights; the authority's own port is not used).
fn is_srv_name(host: &str) -> bool {
    host.starts_with('_')
}

fn endpoints(addrs: impl Iterator<Item = IpAddr>, port: u16) -> Vec<Endpoint> {
    let mut eps: Vec<Endpoint> = addrs
        // DNS says nothing of meshing.
        .map(|ip| Endpoint::unmeshed(SocketAddr::new(ip, port), 1))
        .collect();
    // DNS answers rotate; sort so an unchanged set compares equal.
    eps.sort_by_key(|e| e.addr);
    eps.dedup();
    eps
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Failure warnings are at most ten a second; the rest are counted.
    #[test]
    fn failure_warnings_are_rate_limited() {
        let t0 = Instant::now();
        let allowed = (0..25).filter(|_| warn_allowed(t0)).count();
        assert_eq!(allowed, WARNINGS_PER_SECOND as usize);
        assert_eq!(SUPPRESSED.with(|c| c.get()), 15);
        assert!(warn_allowed(t0 + Duration::from_millis(1001)));
    }
    use std::time::Duration;

    fn name() -> Authority {
        Authority::parse("web.test:80").unwrap()
    }

    fn state(now: Instant) -> NameState {
        NameState {
            endpoints: Vec::new(),
            refresh_at: now,
            failures: 0,
            why: None,
        }
    }

    /// On a virtual clock: when each outcome makes the name due again.
    #[test]
    fn refresh_follows_ttl_negative_ttl_and_backoff() {
        let cfg = DnsConfig::default();
        let t0 = Instant::now();
        let mut s = state(t0);
        let ok = |ttl| {
            Outcome::Dns(Ok(Resolution {
                addrs: vec!["10.0.0.2".parse().unwrap(), "10.0.0.1".parse().unwrap()],
                ttl,
            }))
        };
        s.apply(&name(), ok(Duration::from_secs(42)), &cfg, t0);
        assert_eq!(s.refresh_at, t0 + Duration::from_secs(42));
        let addrs: Vec<String> = s.endpoints.iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(addrs, ["10.0.0.1:80", "10.0.0.2:80"], "sorted");
        // Transient failures: addresses kept, backoff doubling from min TTL.
        let timeout = || {
            Outcome::Dns(Err(DnsError::Timeout {
                server: "127.0.0.1:53".parse().unwrap(),
                timeout: Duration::from_secs(1),
            }))
        };
        s.apply(&name(), timeout(), &cfg, t0);
        assert_eq!(s.refresh_at, t0 + Duration::from_secs(10));
        s.apply(&name(), timeout(), &cfg, t0);
        assert_eq!(s.refresh_at, t0 + Duration::from_secs(20));
        for _ in 0..10 {
            s.apply(&name(), timeout(), &cfg, t0);
        }
        assert_eq!(s.refresh_at, t0 + Duration::from_secs(300), "max TTL");
        assert_eq!(s.endpoints.len(), 2, "last good addresses kept");
        // Gone: no endpoints, asked again after the negative TTL.
        let gone = Outcome::Dns(Err(DnsError::NotFound {
            name: "web.test".into(),
            negative_ttl: Duration::from_secs(7),
        }));
        s.apply(&name(), gone, &cfg, t0);
        assert!(s.endpoints.is_empty());
        assert_eq!(s.refresh_at, t0 + Duration::from_secs(7));
        s.apply(
            &name(),
            Outcome::Hosts(vec!["127.0.0.9".parse().unwrap()]),
            &cfg,
            t0,
        );
        assert_eq!((s.failures, s.refresh_at), (0, t0 + cfg.max_ttl));
    }

    #[test]
    fn srv_targets_keep_their_ports_and_weights() {
        let cfg = DnsConfig::default();
        let t0 = Instant::now();
        let mut s = state(t0);
        let res = SrvResolution {
            targets: vec![
                ("10.0.0.2:8443".parse().unwrap(), 3),
                ("10.0.0.1:8080".parse().unwrap(), 1),
            ],
            ttl: Duration::from_secs(30),
        };
        s.apply(&name(), Outcome::Srv(Ok(res)), &cfg, t0);
        let got: Vec<(String, u32)> = s
            .endpoints
            .iter()
            .map(|e| (e.addr.to_string(), e.weight))
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.1:8080".to_string(), 1),
                ("10.0.0.2:8443".to_string(), 3)
            ],
            "the records' ports (not the name's) and weights"
        );
        assert_eq!(s.refresh_at, t0 + Duration::from_secs(30));
    }
}
