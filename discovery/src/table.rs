//! What the resolvers know, merged, and published as one [`Snapshot`].
//!
//! The [`Table`] lives on the control core (`Rc`, not `Send`): every
//! resolver task holds a handle and reports into it; each change that
//! alters what workers would see publishes a new snapshot at once. The
//! static file's services win over a resolver's answer for the same name,
//! and a name the static file defines is not looked up while it does.
//!
//! Resolvers learn what concerns them through [`Signal`]s: the static set
//! changed (a name may have become theirs), a name was watched.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::{Authority, Endpoint, Protocol, Service, Snapshot, SnapshotPublisher};

/// A change counter that tasks on the same thread can wait on.
#[derive(Default)]
pub struct Signal {
    generation: Cell<u64>,
    /// The waiters' wakers, by a key each waiter holds: a waiter dropped
    /// before the next change takes its waker out (a waker keeps its
    /// task's memory, and a signal may go long without a change).
    wakers: RefCell<HashMap<u64, Waker>>,
    next_key: Cell<u64>,
}

impl Signal {
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    pub fn notify(&self) {
        self.generation.set(self.generation.get() + 1);
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for (_, w) in wakers {
            w.wake();
        }
    }

    /// Resolves once the generation differs from `seen`.
    pub fn changed_since(&self, seen: u64) -> Changed<'_> {
        Changed {
            signal: self,
            seen,
            key: None,
        }
    }

    /// Waiters registered now (for tests).
    pub fn waiters(&self) -> usize {
        self.wakers.borrow().len()
    }
}

/// [`Signal::changed_since`]'s future.
pub struct Changed<'a> {
    signal: &'a Signal,
    seen: u64,
    key: Option<u64>,
}

impl std::future::Future for Changed<'_> {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let signal = self.signal;
        if signal.generation.get() != self.seen {
            if let Some(k) = self.key.take() {
                signal.wakers.borrow_mut().remove(&k);
            }
            return Poll::Ready(());
        }
        let key = *self.key.get_or_insert_with(|| {
            let k = signal.next_key.get();
            signal.next_key.set(k + 1);
            k
        });
        let mut wakers = signal.wakers.borrow_mut();
        match wakers.get_mut(&key) {
            Some(w) if w.will_wake(cx.waker()) => {}
            Some(w) => w.clone_from(cx.waker()),
            None => {
                wakers.insert(key, cx.waker().clone());
            }
        }
        Poll::Pending
    }
}

impl Drop for Changed<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.key {
            self.signal.wakers.borrow_mut().remove(&k);
        }
    }
}

/// A resolver's place among the names watched ([`Table::watch_cursor`]).
pub struct WatchCursor {
    id: u64,
    table: Table,
    /// The names watched when it was made, for its first read.
    initial: Vec<Authority>,
}

impl Drop for WatchCursor {
    fn drop(&mut self) {
        if let Ok(mut st) = self.table.inner.state.try_borrow_mut() {
            st.cursors.remove(&self.id);
        }
    }
}

/// A watched name's state in the table.
#[derive(Default)]
struct Named {
    /// Which watch of the name this is (a name dropped and watched again
    /// gets a new one, so the old watch's resolvers stop).
    id: u64,
    /// The resolver's last answer, as published.
    resolved: Option<Arc<Service>>,
    /// The static file's service for this name, kept published after the
    /// file dropped it until the name's resolver reports: workers route
    /// with the last good endpoints meanwhile, not with no service.
    held: Option<Arc<Service>>,
}

struct State {
    static_services: HashMap<Authority, Arc<Service>>,
    /// In the order they were watched, so resolvers can pick up new ones
    /// with a cursor ([`WatchCursor`]); the front, once every cursor has
    /// passed it, is let go (a name dropped and watched again over and
    /// over must not grow it for good).
    watched: std::collections::VecDeque<Authority>,
    /// The position of `watched`'s front among every name ever watched.
    watched_base: usize,
    /// Each resolver's cursor: the position it has read to.
    cursors: HashMap<u64, usize>,
    next_cursor: u64,
    named: HashMap<Authority, Named>,
    /// Watched names that have had no answer since they were watched or
    /// the static file dropped them.
    pending: HashSet<Authority>,
    /// Profiles reported for watched names (GetProfile)...
    profiles: HashMap<Authority, Arc<crate::Profile>>,
    /// ... and outbound policies, which win over them (but for a profile
    /// with routes or a traffic split of its own).
    policies: HashMap<Authority, Arc<crate::Profile>>,
    /// Claimed names their resolver handed to DNS (the Destination API
    /// says it does not know them), until it takes them back.
    disowned: HashSet<Authority>,
    /// When each watched name was watched or last used.
    last_used: HashMap<Authority, Instant>,
    /// Names watched from the start (configuration): never dropped.
    pinned: HashSet<Authority>,
}

/// Which names a resolver other than DNS answers for (the Destination
/// API's suffixes and networks).
pub type Claim = Rc<dyn Fn(&Authority) -> bool>;

struct Inner {
    state: RefCell<State>,
    /// At most this many names are watched (a client naming ever new
    /// hosts must not make the control core follow them all).
    max_names: Cell<usize>,
    /// Names refused for the cap.
    refused: Cell<u64>,
    /// The last watch id given.
    next_id: Cell<u64>,
    claims: RefCell<Vec<Claim>>,
    /// The pod's own addresses (`LINKERD2_PROXY_INBOUND_IPS`): endpoints
    /// there are made local ([`Endpoint::make_local`]) as they come in.
    local_ips: RefCell<Vec<IpAddr>>,
    publisher: RefCell<SnapshotPublisher>,
    static_changed: Signal,
    watched: Signal,
    disowned: Signal,
    unwatched: Signal,
    settled: Signal,
}

/// The control core's merged discovery state. Cheap to clone (a handle).
#[derive(Clone)]
pub struct Table {
    inner: Rc<Inner>,
}

impl Table {
    pub fn new(publisher: SnapshotPublisher) -> Self {
        Self {
            inner: Rc::new(Inner {
                state: RefCell::new(State {
                    static_services: HashMap::new(),
                    watched: std::collections::VecDeque::new(),
                    watched_base: 0,
                    cursors: HashMap::new(),
                    next_cursor: 0,
                    named: HashMap::new(),
                    pending: HashSet::new(),
                    profiles: HashMap::new(),
                    policies: HashMap::new(),
                    disowned: HashSet::new(),
                    last_used: HashMap::new(),
                    pinned: HashSet::new(),
                }),
                claims: RefCell::new(Vec::new()),
                local_ips: RefCell::new(Vec::new()),
                max_names: Cell::new(usize::MAX),
                refused: Cell::new(0),
                next_id: Cell::new(0),
                publisher: RefCell::new(publisher),
                static_changed: Signal::default(),
                watched: Signal::default(),
                disowned: Signal::default(),
                unwatched: Signal::default(),
                settled: Signal::default(),
            }),
        }
    }

    /// The snapshot published last.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.publisher.borrow().current()
    }

    /// The pod's own addresses: endpoints at one of them are reached
    /// plainly (see [`Endpoint::local`]). Before any service is reported.
    pub fn set_local_ips(&self, ips: Vec<IpAddr>) {
        *self.inner.local_ips.borrow_mut() = ips;
    }

    /// Marks the endpoints at the pod's own addresses; true when any is.
    fn localize(&self, endpoints: &mut [Endpoint]) -> bool {
        let ips = self.inner.local_ips.borrow();
        let mut any = false;
        for ep in endpoints.iter_mut().filter(|e| ips.contains(&e.addr.ip())) {
            ep.make_local();
            any = true;
        }
        any
    }

    /// Replaces the static file's services. Unchanged services keep their
    /// `Arc`, so workers skip rebuilding their balancer replicas for them.
    /// Publishes and returns true when anything changed.
    pub fn set_static(&self, mut services: HashMap<Authority, Arc<Service>>) -> bool {
        for svc in services.values_mut() {
            let ips = self.inner.local_ips.borrow();
            if svc.endpoints.iter().any(|e| ips.contains(&e.addr.ip())) {
                drop(ips);
                let mut endpoints = svc.endpoints.clone();
                self.localize(&mut endpoints);
                let (name, protocol, labels) = (svc.name.clone(), svc.protocol, svc.labels.clone());
                *svc = Arc::new(Service::new(name, endpoints, protocol, labels));
            }
        }
        let mut st = self.inner.state.borrow_mut();
        for (name, svc) in services.iter_mut() {
            if let Some(old) = st.static_services.get(name) {
                if old == svc {
                    *svc = old.clone();
                }
            }
        }
        let changed = services.len() != st.static_services.len()
            || services
                .iter()
                .any(|(n, s)| st.static_services.get(n).is_none_or(|o| !Arc::ptr_eq(o, s)));
        if !changed {
            return false;
        }
        let old = std::mem::replace(&mut st.static_services, services);
        // Watched names the file no longer defines go back to their
        // resolver; until it answers, the file's last word stays.
        let State {
            static_services,
            named,
            pending,
            ..
        } = &mut *st;
        for (name, entry) in named.iter_mut() {
            if let (Some(was), false) = (old.get(name), static_services.contains_key(name)) {
                entry.resolved = None;
                entry.held = Some(was.clone());
                pending.insert(name.clone());
            }
        }
        drop(st);
        self.publish();
        self.inner.static_changed.notify();
        true
    }

    pub fn static_is_empty(&self) -> bool {
        self.inner.state.borrow().static_services.is_empty()
    }

    /// Whether the static file defines `name` (then nobody resolves it).
    pub fn static_defines(&self, name: &Authority) -> bool {
        self.inner.state.borrow().static_services.contains_key(name)
    }

    /// Notified whenever the static set changes.
    pub fn static_changed(&self) -> &Signal {
        &self.inner.static_changed
    }

    /// Caps the names watched: beyond `max`, [`Table::watch`] refuses
    /// new ones (they stay unresolved).
    pub fn set_max_names(&self, max: usize) {
        self.inner.max_names.set(max);
    }

    /// Names refused for the cap so far.
    pub fn refused(&self) -> u64 {
        self.inner.refused.get()
    }

    /// Registers the names a resolver answers for: DNS leaves them alone,
    /// and `ip:port` literals among them may be watched.
    pub fn claim(&self, claim: Claim) {
        self.inner.claims.borrow_mut().push(claim);
    }

    /// Whether a resolver other than DNS answers for `name` (and has not
    /// handed it to DNS).
    pub fn claimed(&self, name: &Authority) -> bool {
        self.inner.claims.borrow().iter().any(|c| c(name))
            && !self.inner.state.borrow().disowned.contains(name)
    }

    /// The claiming resolver does not know `name` (the Destination API's
    /// `NoEndpoints { exists: false }`): DNS resolves it instead, until
    /// [`Table::reclaim`]. Returns whether it was claimed until now.
    pub fn disown(&self, name: &Authority) -> bool {
        let mut st = self.inner.state.borrow_mut();
        if !st.named.contains_key(name) || !st.disowned.insert(name.clone()) {
            return false;
        }
        drop(st);
        self.inner.disowned.notify();
        true
    }

    /// The claiming resolver knows `name` again: DNS stops resolving it
    /// (its resolver sees `unwatched`). Returns whether it was disowned.
    pub fn reclaim(&self, name: &Authority) -> bool {
        if !self.inner.state.borrow_mut().disowned.remove(name) {
            return false;
        }
        self.inner.unwatched.notify();
        true
    }

    /// Notified whenever a name is disowned.
    pub fn disowned(&self) -> &Signal {
        &self.inner.disowned
    }

    /// The names handed to DNS now.
    pub fn disowned_names(&self) -> Vec<Authority> {
        self.inner.state.borrow().disowned.iter().cloned().collect()
    }

    /// Starts tracking `name` (for names already watched, only marks them
    /// used; a no-op for `ip:port` literals no resolver claims). Resolvers are told through
    /// [`Table::watched`]; the name is published with their first answer.
    pub fn watch(&self, name: Authority) -> bool {
        if name.socket_addr().is_some() && !self.claimed(&name) {
            return false;
        }
        let mut st = self.inner.state.borrow_mut();
        if st.named.contains_key(&name) {
            // A request asks for it again: while its first answer takes
            // long (a slow nameserver, a search list), the requests that
            // wait for it, and give up, keep it watched.
            if let Some(t) = st.last_used.get_mut(&name) {
                *t = Instant::now();
            }
            return false;
        }
        if st.named.len() >= self.inner.max_names.get() {
            let n = self.inner.refused.get() + 1;
            self.inner.refused.set(n);
            if n == 1 || n.is_multiple_of(1000) {
                tracing::warn!(%name, max = self.inner.max_names.get(), refused = n, "too many names watched; not resolving this one");
            }
            return false;
        }
        let id = self.inner.next_id.get() + 1;
        self.inner.next_id.set(id);
        st.named.insert(
            name.clone(),
            Named {
                id,
                ..Named::default()
            },
        );
        st.last_used.insert(name.clone(), Instant::now());
        st.pending.insert(name.clone());
        st.watched.push_back(name);
        drop(st);
        self.inner.watched.notify();
        true
    }

    /// Watches `name` for good (configuration: a forward's target).
    pub fn pin(&self, name: Authority) {
        self.watch(name.clone());
        self.inner.state.borrow_mut().pinned.insert(name);
    }

    /// The current watch of `name` (`None`: not watched). A resolver
    /// follows one watch and stops when it ends.
    pub fn watch_id(&self, name: &Authority) -> Option<u64> {
        self.inner.state.borrow().named.get(name).map(|n| n.id)
    }

    /// Notified whenever names are dropped.
    pub fn unwatched(&self) -> &Signal {
        &self.inner.unwatched
    }

    /// Resolves once the watch `id` of `name` has ended.
    pub async fn dropped(&self, name: &Authority, id: u64) {
        loop {
            let seen = self.inner.unwatched.generation();
            if self.watch_id(name) != Some(id) {
                return;
            }
            self.inner.unwatched.changed_since(seen).await;
        }
    }

    /// Workers used these names: their watches stay.
    pub fn touch(&self, names: &[Authority]) {
        let now = Instant::now();
        let mut st = self.inner.state.borrow_mut();
        for name in names {
            if let Some(t) = st.last_used.get_mut(name) {
                *t = now;
            }
        }
    }

    /// Drops the watches no request used for `idle` (not the pinned ones):
    /// their services leave the snapshot and their resolvers stop; the
    /// next request for one watches it again. Returns how many.
    pub fn sweep(&self, idle: Duration) -> usize {
        let now = Instant::now();
        let gone: Vec<Authority> = {
            let st = self.inner.state.borrow();
            st.last_used
                .iter()
                .filter(|(n, t)| {
                    !st.pinned.contains(*n) && now.saturating_duration_since(**t) >= idle
                })
                .map(|(n, _)| n.clone())
                .collect()
        };
        if gone.is_empty() {
            return 0;
        }
        {
            let mut st = self.inner.state.borrow_mut();
            for name in &gone {
                st.named.remove(name);
                st.pending.remove(name);
                st.profiles.remove(name);
                st.policies.remove(name);
                st.disowned.remove(name);
                st.last_used.remove(name);
            }
        }
        tracing::debug!(dropped = gone.len(), ?idle, "idle watches dropped");
        self.publish();
        self.inner.unwatched.notify();
        gone.len()
    }

    /// Notified whenever a name is watched.
    pub fn watched(&self) -> &Signal {
        &self.inner.watched
    }

    /// A new cursor over the names watched (for a resolver that follows
    /// them: [`Table::watched_since`]); its first read gives every name
    /// watched now.
    pub fn watch_cursor(&self) -> WatchCursor {
        let mut st = self.inner.state.borrow_mut();
        let id = st.next_cursor;
        st.next_cursor += 1;
        let end = st.watched_base + st.watched.len();
        st.cursors.insert(id, end);
        WatchCursor {
            id,
            table: self.clone(),
            initial: st.named.keys().cloned().collect(),
        }
    }

    /// The names watched since `cursor` last read, which moves on past
    /// them. What every cursor has read is let go.
    pub fn watched_since(&self, cursor: &mut WatchCursor) -> Vec<Authority> {
        let mut st = self.inner.state.borrow_mut();
        let st = &mut *st;
        let end = st.watched_base + st.watched.len();
        let from = st.cursors.get(&cursor.id).copied().unwrap_or(end);
        let mut new = std::mem::take(&mut cursor.initial);
        new.extend(
            st.watched
                .range(from.saturating_sub(st.watched_base)..)
                .cloned(),
        );
        st.cursors.insert(cursor.id, end);
        let read_by_all = st.cursors.values().copied().min().unwrap_or(end);
        while st.watched_base < read_by_all && st.watched.pop_front().is_some() {
            st.watched_base += 1;
        }
        new
    }

    /// Names held for cursors still to read them (for tests).
    pub fn watched_held(&self) -> usize {
        self.inner.state.borrow().watched.len()
    }

    /// A resolver's answer for a watched name. Publishes and returns true
    /// when it changes what workers see.
    pub fn report(&self, name: &Authority, endpoints: Vec<Endpoint>) -> bool {
        self.report_service(name, endpoints, None, Arc::new([]))
    }

    /// [`Table::report`] with the protocol the service speaks, if known,
    /// and its metric labels (sorted by name).
    pub fn report_service(
        &self,
        name: &Authority,
        endpoints: Vec<Endpoint>,
        protocol: Option<Protocol>,
        labels: Arc<[(String, String)]>,
    ) -> bool {
        let mut endpoints = endpoints;
        self.localize(&mut endpoints);
        let svc = Service::new(name.clone(), endpoints, protocol, labels);
        self.report_resolved(name, svc)
    }

    /// A resolver's answer for a watched name that has no endpoints for
    /// the reason `why` (the name does not exist, its lookups fail).
    pub fn report_unresolved(&self, name: &Authority, why: Arc<str>) -> bool {
        self.report_resolved(name, Service::unresolvable(name.clone(), why))
    }

    fn report_resolved(&self, name: &Authority, svc: Service) -> bool {
        let mut st = self.inner.state.borrow_mut();
        let was_pending = st.pending.remove(name);
        let shadowed = st.static_services.contains_key(name);
        let Some(entry) = st.named.get_mut(name) else {
            return false;
        };
        let had_held = entry.held.take().is_some();
        let same = entry.resolved.as_deref() == Some(&svc);
        if !same {
            entry.resolved = Some(Arc::new(svc));
        }
        drop(st);
        let changed = !shadowed && (!same || had_held || was_pending);
        if changed {
            self.publish();
        }
        // A name had its first answer: whoever waits for every name to
        // settle looks again (the names left may be ones the static file
        // defines, which no resolver answers for).
        if was_pending {
            self.inner.settled.notify();
        }
        changed
    }

    /// A resolver's profile for a watched name (`None`: it has none).
    /// The services a profile splits traffic to are watched too.
    /// Publishes.
    pub fn report_profile(&self, name: &Authority, profile: Option<Arc<crate::Profile>>) {
        if let Some(p) = &profile {
            for (backend, _) in &p.dst_overrides {
                self.watch(backend.clone());
            }
        }
        {
            let mut st = self.inner.state.borrow_mut();
            if !st.named.contains_key(name) {
                return;
            }
            match profile {
                Some(p) => st.profiles.insert(name.clone(), p),
                None => st.profiles.remove(name),
            };
        }
        self.publish();
    }

    /// An outbound policy for a watched name, as a profile (an empty one:
    /// the policy API has none, the target is known). Wins over the
    /// name's GetProfile answer, unless that one
    /// [overrides policies](crate::Profile::overrides_policy). Its
    /// backends are watched. Publishes.
    pub fn report_policy(&self, name: &Authority, policy: Arc<crate::Profile>) {
        for route in &policy.routes {
            for (backend, _) in &route.backends {
                if backend.socket_addr().is_none() {
                    self.watch(backend.clone());
                }
            }
        }
        {
            let mut st = self.inner.state.borrow_mut();
            if !st.named.contains_key(name) {
                return;
            }
            st.policies.insert(name.clone(), policy);
        }
        self.publish();
    }

    /// Resolves once every watched name the static file does not define
    /// has had an answer (start-up waits for this, so the first snapshot
    /// workers see is complete).
    pub async fn settled(&self) {
        loop {
            let seen = self.inner.settled.generation();
            {
                let st = self.inner.state.borrow();
                if st
                    .pending
                    .iter()
                    .all(|n| st.static_services.contains_key(n))
                {
                    return;
                }
            }
            // A name can also settle by the static file defining it.
            let static_seen = self.inner.static_changed.generation();
            monoio::select! {
                _ = self.inner.settled.changed_since(seen) => {}
                _ = self.inner.static_changed.changed_since(static_seen) => {}
            }
        }
    }

    /// Publishes the merged state now.
    pub fn publish(&self) -> u64 {
        let st = self.inner.state.borrow();
        let mut services: Vec<Arc<Service>> = st.static_services.values().cloned().collect();
        for (name, entry) in &st.named {
            if st.static_services.contains_key(name) {
                continue; // the static file wins
            }
            if let Some(svc) = entry.resolved.as_ref().or(entry.held.as_ref()) {
                services.push(svc.clone());
            }
        }
        let mut profiles = st.profiles.clone();
        for (name, policy) in &st.policies {
            // The policy wins, unless the service profile has routes or a
            // traffic split of its own.
            if !profiles.get(name).is_some_and(|p| p.overrides_policy) {
                profiles.insert(name.clone(), policy.clone());
            }
        }
        let snapshot = Snapshot::new(services).with_profiles(profiles);
        let version = self.inner.publisher.borrow_mut().publish(snapshot);
        tracing::debug!(version, "snapshot published");
        version
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel;

    fn service(name: &str, addr: &str) -> (Authority, Arc<Service>) {
        let name = Authority::parse(name).unwrap();
        let ep = Endpoint::unmeshed(addr.parse().unwrap(), 1);
        (
            name.clone(),
            Arc::new(Service::new(name, vec![ep], None, Arc::new([]))),
        )
    }

    fn endpoints(addr: &str) -> Vec<Endpoint> {
        service("x.test:1", addr).1.endpoints.clone()
    }

    fn addrs(t: &Table, name: &str) -> Option<Vec<String>> {
        t.snapshot()
            .service(&Authority::parse(name).unwrap())
            .map(|s| s.endpoints.iter().map(|e| e.addr.to_string()).collect())
    }

    /// A waiter dropped before the signal changes leaves no waker behind
    /// (each held its task's memory: a resolver that ended while waiting
    /// on a signal that never changes again was never freed).
    #[test]
    fn dropped_waiters_leave_no_waker() {
        use std::future::Future;
        let signal = Signal::default();
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let seen = signal.generation();
        let mut waiting: Vec<_> = (0..100)
            .map(|_| Box::pin(signal.changed_since(seen)))
            .collect();
        for w in &mut waiting {
            assert!(w.as_mut().poll(&mut cx).is_pending());
            assert!(w.as_mut().poll(&mut cx).is_pending(), "polled again");
        }
        assert_eq!(signal.waiters(), 100);
        waiting.truncate(40);
        assert_eq!(signal.waiters(), 40);
        signal.notify();
        assert_eq!(signal.waiters(), 0);
        for w in &mut waiting {
            assert!(w.as_mut().poll(&mut cx).is_ready());
        }
        drop(waiting);
        // A waiter made after the change waits for the next one.
        let mut next = Box::pin(signal.changed_since(signal.generation()));
        assert!(next.as_mut().poll(&mut cx).is_pending());
        signal.notify();
        assert!(next.as_mut().poll(&mut cx).is_ready());
        assert_eq!(signal.waiters(), 0);
    }

    /// The log of names watched is let go once every cursor has read it
    /// (a name dropped and watched again, over and over, grew it for
    /// good); a cursor made later starts with the names watched then.
    #[test]
    fn names_every_cursor_has_read_are_let_go() {
        let (tx, _rx) = channel(Snapshot::default());
        let t = Table::new(tx);
        let (mut a, mut b) = (t.watch_cursor(), t.watch_cursor());
        let name = Authority::parse("again.test:80").unwrap();
        for _ in 0..1000 {
            assert!(t.watch(name.clone()));
            assert_eq!(t.sweep(Duration::ZERO), 1);
        }
        assert_eq!(t.watched_held(), 1000, "b has read none");
        assert_eq!(t.watched_since(&mut a).len(), 1000);
        assert_eq!(t.watched_held(), 1000, "b has read none");
        assert_eq!(t.watched_since(&mut b).len(), 1000);
        assert_eq!(t.watched_held(), 0);
        let other = Authority::parse("other.test:80").unwrap();
        assert!(t.watch(other.clone()));
        drop(b);
        assert_eq!(t.watched_since(&mut a), std::slice::from_ref(&other));
        assert_eq!(t.watched_held(), 0, "a dropped cursor holds nothing");
        let mut late = t.watch_cursor();
        assert_eq!(t.watched_since(&mut late), std::slice::from_ref(&other));
        assert_eq!(t.watched_since(&mut late), []);
    }

    /// A request asking for a watched name again keeps it watched: a name
    /// whose first answer is slow is not swept while requests wait for it.
    #[test]
    fn watching_a_name_again_keeps_it() {
        let (tx, _rx) = channel(Snapshot::default());
        let t = Table::new(tx);
        let name = Authority::parse("slow.test:80").unwrap();
        assert!(t.watch(name.clone()));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!t.watch(name.clone()), "already watched");
        assert_eq!(t.sweep(Duration::from_millis(50)), 0, "asked for again");
        assert!(t.watch_id(&name).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.sweep(Duration::from_millis(50)), 1, "idle");
        assert!(t.watch_id(&name).is_none());
    }

    /// Endpoints at the pod's own addresses lose their mesh settings as
    /// they come in, from the static file and from a resolver; others
    /// keep theirs, and an unchanged static file publishes nothing new.
    #[test]
    fn endpoints_at_the_pods_addresses_are_made_local() {
        let (tx, _rx) = channel(Snapshot::default());
        let t = Table::new(tx);
        t.set_local_ips(vec!["10.0.0.1".parse().unwrap()]);
        let meshed = |addr: &str| Endpoint {
            h2_hint: true,
            identity: Some(
                ringmesh_identity::Name::parse(
                    "web.ns.serviceaccount.identity.linkerd.cluster.local",
                )
                .unwrap(),
            ),
            opaque_transport_port: Some(4143),
            authority_override: Some(Arc::from("gw.example:80")),
            ..Endpoint::unmeshed(addr.parse().unwrap(), 1)
        };
        let name = Authority::parse("web.test:80").unwrap();
        let file = || {
            let eps = vec![meshed("10.0.0.1:80"), meshed("10.0.0.2:80")];
            HashMap::from([(
                name.clone(),
                Arc::new(Service::new(name.clone(), eps, None, Arc::new([]))),
            )])
        };
        assert!(t.set_static(file()));
        let check = |svc: &Service| {
            let (own, other) = (&svc.endpoints[0], &svc.endpoints[1]);
            assert!(own.local && !own.h2_hint && own.identity.is_none());
            assert_eq!(
                (own.opaque_transport_port, own.authority_override.is_none()),
                (None, true)
            );
            assert!(!other.local && other.h2_hint && other.identity.is_some());
            assert!(
                !svc.all_h2_hint(),
                "a service with the pod in it is not upgraded"
            );
        };
        check(t.snapshot().service(&name).unwrap());
        assert!(!t.set_static(file()), "the same file again is no change");

        let watched = Authority::parse("api.test:80").unwrap();
        assert!(t.watch(watched.clone()));
        t.report_service(
            &watched,
            vec![meshed("10.0.0.1:80"), meshed("10.0.0.2:80")],
            None,
            Arc::new([]),
        );
        check(t.snapshot().service(&watched).unwrap());
        assert!(
            !t.report_service(
                &watched,
                vec![meshed("10.0.0.1:80"), meshed("10.0.0.2:80")],
                None,
                Arc::new([])
            ),
            "the same answer again is no change"
        );
    }

    /// A claimed name handed to DNS is no longer claimed until taken back;
    /// only watched names can be handed over, and dropping the watch
    /// forgets the handover.
    #[test]
    fn disowned_names_go_to_dns_until_reclaimed() {
        let (tx, _rx) = channel(Snapshot::default());
        let t = Table::new(tx);
        t.claim(Rc::new(|n: &Authority| {
            n.host().ends_with(".cluster.local")
        }));
        let ext = Authority::parse("ext.ns.svc.cluster.local:80").unwrap();
        let other = Authority::parse("other.ns.svc.cluster.local:80").unwrap();
        assert!(!t.disown(&ext), "not watched");
        assert!(t.watch(ext.clone()));
        assert!(t.claimed(&ext));
        let seen = t.disowned().generation();
        assert!(t.disown(&ext));
        assert!(!t.disown(&ext), "once");
        assert!(t.disowned().generation() > seen);
        assert!(!t.claimed(&ext));
        assert!(t.claimed(&other));
        assert_eq!(t.disowned_names(), vec![ext.clone()]);
        let seen = t.unwatched().generation();
        assert!(t.reclaim(&ext));
        assert!(t.unwatched().generation() > seen, "DNS's task is woken");
        assert!(t.claimed(&ext));
        assert!(!t.reclaim(&ext));
        assert!(t.disown(&ext));
        assert_eq!(t.sweep(Duration::ZERO), 1);
        assert!(t.disowned_names().is_empty());
    }

    #[test]
    fn a_watched_name_appears_with_its_first_answer_only() {
        let (tx, _rx) = channel(Snapshot::default());
        let t = Table::new(tx);
        let web = Authority::parse("web.test:80").unwrap();
        let mut cursor = t.watch_cursor();
        assert!(t.watch(web.clone()));
        assert!(!t.watch(web.clone()), "once");
        assert!(!t.watch(Authority::parse("127.0.0.1:80").unwrap()));
        assert_eq!(t.watched_since(&mut cursor), std::slice::from_ref(&web));
        assert_eq!(t.watched_since(&mut cursor), []);
        assert_eq!(addrs(&t, "web.test:80"), None, "not before its answer");
        assert!(t.report(&web, endpoints("10.0.0.1:80")));
        assert_eq!(addrs(&t, "web.test:80").unwrap(), ["10.0.0.1:80"]);
        let v = t.snapshot().version();
        assert!(!t.report(&web, endpoints("10.0.0.1:80")), "same answer");
        assert_eq!(t.snapshot().version(), v);
    }

    #[test]
    fn a_name_the_file_drops_keeps_its_service_until_resolved() {
        let (tx, _rx) = channel(Snapshot::default());
        let t = Table::new(tx);
        let (db, svc) = service("db.test:5432", "127.0.0.1:1111");
        assert!(t.set_static(HashMap::from([(db.clone(), svc.clone())])));
        t.watch(db.clone());
        assert!(t.static_defines(&db));
        assert!(
            !t.set_static(HashMap::from([(db.clone(), svc)])),
            "unchanged"
        );
        assert!(t.set_static(HashMap::new()));
        assert_eq!(addrs(&t, "db.test:5432").unwrap(), ["127.0.0.1:1111"]);
        assert!(t.report(&db, endpoints("127.0.0.7:5432")));
        assert_eq!(addrs(&t, "db.test:5432").unwrap(), ["127.0.0.7:5432"]);
    }

    #[test]
    fn idle_names_are_dropped_pinned_ones_stay_and_a_new_watch_is_new() {
        let (tx, _rx) = channel(Snapshot::default());
        let t = Table::new(tx);
        let (web, fwd) = (
            Authority::parse("web.test:80").unwrap(),
            Authority::parse("fwd.test:80").unwrap(),
        );
        t.watch(web.clone());
        t.pin(fwd.clone());
        t.report(&web, endpoints("10.0.0.1:80"));
        t.report(&fwd, endpoints("10.0.0.2:80"));
        let first = t.watch_id(&web).unwrap();
        assert_eq!(t.sweep(Duration::from_secs(3600)), 0, "not idle yet");
        t.touch(std::slice::from_ref(&web));
        assert_eq!(t.sweep(Duration::ZERO), 1, "only the unpinned name");
        assert!(t.watch_id(&web).is_none());
        assert_eq!(addrs(&t, "web.test:80"), None, "gone from the snapshot");
        assert_eq!(addrs(&t, "fwd.test:80").unwrap(), ["10.0.0.2:80"]);
        assert!(t.watch(web.clone()), "watched again");
        assert_ne!(t.watch_id(&web), Some(first), "as a new watch");
    }
}
