//! The control core's discovery loop: watches the static file, resolves DNS
//! names with TTL-based refresh, and publishes a new snapshot whenever the
//! result changes. Runs on the control core only; it blocks on file and
//! network I/O (each wait bounded), which no worker ever does.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::dns::{DnsConfig, DnsError, DnsResolver};
use crate::hosts::HostsFile;
use crate::static_file::{self, StaticFileError};
use crate::{
    channel, Authority, Endpoint, Service, Snapshot, SnapshotPublisher, SnapshotSubscriber,
};

#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    pub static_file: Option<PathBuf>,
    /// How often the static file's metadata is checked for changes.
    pub static_poll_interval: Duration,
    pub dns: DnsConfig,
    pub hosts_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot read static discovery file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("static discovery file {path}: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: StaticFileError,
    },
}

/// The file identity we compare to notice edits (editors often replace the
/// file, so the inode counts as well as size and mtime).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

struct Name {
    /// Addresses from the last successful resolution.
    endpoints: Vec<Endpoint>,
    refresh_at: Instant,
    failures: u32,
}

pub struct Discovery {
    cfg: DiscoveryConfig,
    publisher: SnapshotPublisher,
    stamp: Option<FileStamp>,
    /// A parsed edit that would leave no service (the file says
    /// `empty = true`), held until a later check finds the file unchanged.
    pending_empty: Option<FileStamp>,
    static_services: HashMap<Authority, Arc<Service>>,
    static_check_at: Instant,
    names: HashMap<Authority, Name>,
    dns: DnsResolver,
    hosts: HostsFile,
}

impl Discovery {
    /// Loads the static file and resolves `names` once, so the first snapshot
    /// is complete before any worker starts. A bad static file at start-up is
    /// an error (it is configuration); later bad edits are logged and skipped.
    pub fn start(
        cfg: DiscoveryConfig,
        names: impl IntoIterator<Item = Authority>,
    ) -> Result<(Self, SnapshotSubscriber), DiscoveryError> {
        let (publisher, subscriber) = channel(Snapshot::default());
        let hosts = cfg
            .hosts_file
            .as_ref()
            .and_then(|p| HostsFile::load(p).ok())
            .unwrap_or_default();
        let mut this = Self {
            dns: DnsResolver::new(cfg.dns.clone()),
            cfg,
            publisher,
            stamp: None,
            pending_empty: None,
            static_services: HashMap::new(),
            static_check_at: Instant::now(),
            names: HashMap::new(),
            hosts,
        };
        if let Some(path) = this.cfg.static_file.clone() {
            let stamp = stamp_of(&path).map_err(|source| DiscoveryError::Read {
                path: path.clone(),
                source,
            })?;
            let services = load(&path)?;
            this.stamp = Some(stamp);
            this.static_services = services;
        }
        let now = Instant::now();
        for name in names {
            this.watch_at(name, now);
        }
        this.publish();
        Ok((this, subscriber))
    }

    /// Starts tracking a DNS name (no-op when already tracked or literal).
    pub fn watch(&mut self, name: Authority) {
        if self.watch_at(name, Instant::now()) {
            self.publish();
        }
    }

    fn watch_at(&mut self, name: Authority, now: Instant) -> bool {
        if name.socket_addr().is_some() || self.names.contains_key(&name) {
            return false;
        }
        let mut entry = Name {
            endpoints: Vec::new(),
            refresh_at: now,
            failures: 0,
        };
        // A name the static file defines is not looked up while it does;
        // it becomes due at once if the file drops it.
        if !self.static_services.contains_key(&name) {
            self.resolve(&name, &mut entry, now);
        }
        self.names.insert(name, entry);
        true
    }

    /// Does whatever is due at `now`; publishes if anything changed.
    /// Returns true when a new snapshot was published.
    pub fn poll(&mut self, now: Instant) -> bool {
        let mut changed = false;
        if now >= self.static_check_at {
            self.static_check_at = now + self.cfg.static_poll_interval;
            changed |= self.check_static_file();
        }
        let due: Vec<Authority> = self
            .names
            .iter()
            .filter(|(a, n)| n.refresh_at <= now && !self.static_services.contains_key(*a))
            .map(|(a, _)| a.clone())
            .collect();
        for name in due {
            if let Some(mut entry) = self.names.remove(&name) {
                let before = entry.endpoints.clone();
                self.resolve(&name, &mut entry, now);
                changed |= before != entry.endpoints;
                self.names.insert(name, entry);
            }
        }
        if changed {
            self.publish();
        }
        changed
    }

    /// When `poll` next has work to do.
    pub fn next_deadline(&self) -> Instant {
        let mut at = if self.cfg.static_file.is_some() {
            self.static_check_at
        } else {
            Instant::now() + Duration::from_secs(3600)
        };
        for (a, n) in &self.names {
            if !self.static_services.contains_key(a) {
                at = at.min(n.refresh_at);
            }
        }
        at
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.publisher.current()
    }

    fn check_static_file(&mut self) -> bool {
        let Some(path) = self.cfg.static_file.clone() else {
            return false;
        };
        let stamp = match stamp_of(&path) {
            Ok(s) => s,
            Err(e) => {
                if self.stamp.is_some() {
                    tracing::warn!(path = %path.display(), error = %e, "static discovery file unreadable; keeping the last good snapshot");
                    self.stamp = None;
                }
                return false;
            }
        };
        if self.stamp == Some(stamp) {
            return false;
        }
        match load(&path) {
            // Dropping every service at once is what a file caught
            // mid-write would do: even when the file says so (`empty =
            // true`), wait until a later check finds it unchanged.
            Ok(services)
                if services.is_empty()
                    && !self.static_services.is_empty()
                    && self.pending_empty != Some(stamp) =>
            {
                tracing::info!(path = %path.display(), "static discovery file now lists no service; publishing once it stays unchanged until the next check");
                self.pending_empty = Some(stamp);
                false
            }
            Ok(mut services) => {
                self.stamp = Some(stamp);
                self.pending_empty = None;
                // Keep the same Arc for unchanged services so workers can
                // skip rebuilding their balancer replicas for them.
                for (name, svc) in services.iter_mut() {
                    if let Some(old) = self.static_services.get(name) {
                        if old == svc {
                            *svc = old.clone();
                        }
                    }
                }
                let changed = services.len() != self.static_services.len()
                    || services.iter().any(|(n, s)| {
                        self.static_services
                            .get(n)
                            .is_none_or(|o| !Arc::ptr_eq(o, s))
                    });
                self.static_services = services;
                tracing::info!(path = %path.display(), services = self.static_services.len(), changed, "static discovery file reloaded");
                changed
            }
            Err(e) => {
                // Remembered, so the same bad file is reported once.
                self.stamp = Some(stamp);
                self.pending_empty = None;
                tracing::warn!(error = %e, "bad static discovery file; keeping the last good snapshot");
                false
            }
        }
    }

    fn resolve(&mut self, name: &Authority, entry: &mut Name, now: Instant) {
        let host = name.host();
        let port = name.port();
        let from_hosts = self.hosts.lookup(host);
        if !from_hosts.is_empty() {
            entry.endpoints = endpoints(from_hosts.into_iter(), port);
            entry.failures = 0;
            entry.refresh_at = now + self.cfg.dns.max_ttl;
            return;
        }
        match self.dns.resolve(host) {
            Ok(res) => {
                entry.endpoints = endpoints(res.addrs.into_iter(), port);
                entry.failures = 0;
                entry.refresh_at = now + res.ttl;
                tracing::debug!(%name, endpoints = entry.endpoints.len(), ttl = ?res.ttl, "resolved");
            }
            Err(DnsError::NotFound { negative_ttl, .. }) => {
                // The name is gone: it has no endpoints until it returns.
                if !entry.endpoints.is_empty() || entry.failures == 0 {
                    tracing::warn!(%name, "DNS name does not exist");
                }
                entry.endpoints.clear();
                entry.failures += 1;
                entry.refresh_at = now + negative_ttl;
            }
            Err(e) => {
                // A transient failure: keep the last good addresses and retry
                // with backoff (min TTL, doubling, at most max TTL).
                entry.failures += 1;
                let backoff = self
                    .cfg
                    .dns
                    .min_ttl
                    .saturating_mul(1 << entry.failures.min(6))
                    .min(self.cfg.dns.max_ttl);
                tracing::warn!(%name, error = %e, retry_in = ?backoff, "DNS resolution failed; keeping the last addresses");
                entry.refresh_at = now + backoff;
            }
        }
    }

    fn publish(&mut self) {
        let mut services: Vec<Arc<Service>> = self.static_services.values().cloned().collect();
        for (name, entry) in &self.names {
            if self.static_services.contains_key(name) {
                continue; // the static file wins over DNS
            }
            services.push(Arc::new(Service::new(
                name.clone(),
                entry.endpoints.clone(),
                None,
                Arc::new([]),
            )));
        }
        let version = self.publisher.publish(Snapshot::new(services));
        tracing::debug!(version, "snapshot published");
    }
}

fn endpoints(addrs: impl Iterator<Item = std::net::IpAddr>, port: u16) -> Vec<Endpoint> {
    let mut eps: Vec<Endpoint> = addrs
        .map(|ip| Endpoint {
            addr: std::net::SocketAddr::new(ip, port),
            weight: 1,
            // DNS says nothing of meshing.
            h2_hint: false,
        })
        .collect();
    // DNS answers rotate; sort so an unchanged set compares equal.
    eps.sort_by_key(|e| e.addr);
    eps.dedup();
    eps
}

fn stamp_of(path: &PathBuf) -> std::io::Result<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let md = fs::metadata(path)?;
    Ok(FileStamp {
        modified: md.modified().ok(),
        len: md.len(),
        inode: md.ino(),
    })
}

fn load(path: &PathBuf) -> Result<HashMap<Authority, Arc<Service>>, DiscoveryError> {
    let text = fs::read_to_string(path).map_err(|source| DiscoveryError::Read {
        path: path.clone(),
        source,
    })?;
    let services = static_file::parse(&text).map_err(|source| DiscoveryError::Invalid {
        path: path.clone(),
        source,
    })?;
    Ok(services
        .into_iter()
        .map(|s| (s.name.clone(), Arc::new(s)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Self {
            let d = std::env::temp_dir()
                .join(format!("ringmesh-resolver-{tag}-{}", std::process::id()));
            fs::create_dir_all(&d).unwrap();
            Self(d)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn cfg(dir: &Dir, static_file: bool) -> DiscoveryConfig {
        DiscoveryConfig {
            static_file: static_file.then(|| dir.0.join("static.toml")),
            static_poll_interval: Duration::from_millis(0),
            dns: DnsConfig {
                // Nothing answers here: only the hosts file resolves.
                servers: vec!["127.0.0.1:9".parse().unwrap()],
                timeout: Duration::from_millis(50),
                attempts: 1,
                ..DnsConfig::default()
            },
            hosts_file: Some(dir.0.join("hosts")),
        }
    }

    fn write(path: &std::path::Path, text: &str) {
        // Rename into place so the stamp (inode) changes even within one
        // mtime tick.
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, path).unwrap();
    }

    fn addrs(snap: &Snapshot, name: &str) -> Vec<String> {
        snap.service(&Authority::parse(name).unwrap())
            .map(|s| s.endpoints.iter().map(|e| e.addr.to_string()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn static_file_wins_over_dns_and_dns_takes_over_when_dropped() {
        let dir = Dir::new("wins");
        fs::write(dir.0.join("hosts"), "127.0.0.7 db.test\n").unwrap();
        let file = dir.0.join("static.toml");
        write(
            &file,
            "[[service]]\nname = \"db.test:5432\"\nendpoints = [\"127.0.0.1:1111\"]\n",
        );
        let name = Authority::parse("db.test:5432").unwrap();
        let (mut d, sub) = Discovery::start(cfg(&dir, true), [name]).unwrap();
        let cache = sub.cache();
        assert_eq!(addrs(cache.get(), "db.test:5432"), ["127.0.0.1:1111"]);

        write(
            &file,
            "[[service]]\nname = \"other.test:80\"\nendpoints = [\"127.0.0.1:2222\"]\n",
        );
        assert!(d.poll(Instant::now()));
        let snap = d.snapshot();
        assert_eq!(
            addrs(&snap, "db.test:5432"),
            ["127.0.0.7:5432"],
            "DNS (hosts) took over"
        );
        assert_eq!(addrs(&snap, "other.test:80"), ["127.0.0.1:2222"]);
    }

    #[test]
    fn bad_edit_keeps_last_good_and_unchanged_services_keep_their_arc() {
        let dir = Dir::new("bad");
        let file = dir.0.join("static.toml");
        write(
            &file,
            "[[service]]\nname = \"a.test:80\"\nendpoints = [\"127.0.0.1:1\"]\n[[service]]\nname = \"b.test:80\"\nendpoints = [\"127.0.0.1:2\"]\n",
        );
        let (mut d, _sub) = Discovery::start(cfg(&dir, true), []).unwrap();
        let before = d.snapshot();
        let v = before.version();

        write(
            &file,
            "[[service]]\nname = \"a.test:80\"\nendpoints = [\"nope\"]\n",
        );
        assert!(!d.poll(Instant::now()), "a bad edit must not publish");
        assert_eq!(d.snapshot().version(), v);

        write(
            &file,
            "[[service]]\nname = \"a.test:80\"\nendpoints = [\"127.0.0.1:1\"]\n[[service]]\nname = \"b.test:80\"\nendpoints = [\"127.0.0.1:3\"]\n",
        );
        assert!(d.poll(Instant::now()));
        let after = d.snapshot();
        assert!(after.version() > v);
        let a = Authority::parse("a.test:80").unwrap();
        let b = Authority::parse("b.test:80").unwrap();
        assert!(Arc::ptr_eq(
            before.service(&a).unwrap(),
            after.service(&a).unwrap()
        ));
        assert_eq!(addrs(&after, "b.test:80"), ["127.0.0.1:3"]);
        assert!(!Arc::ptr_eq(
            before.service(&b).unwrap(),
            after.service(&b).unwrap()
        ));

        // Unchanged content (rewritten) publishes nothing.
        write(
            &file,
            "[[service]]\nname = \"a.test:80\"\nendpoints = [\"127.0.0.1:1\"]\n[[service]]\nname = \"b.test:80\"\nendpoints = [\"127.0.0.1:3\"]\n",
        );
        assert!(!d.poll(Instant::now()));
    }

    /// Writes `text` over the file in place (truncate, then write), as a
    /// plain `echo > file` or an editor without atomic saves does.
    fn overwrite(path: &std::path::Path, text: &str) {
        use std::io::Write;
        let mut f = fs::File::create(path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn a_file_caught_mid_write_never_empties_the_set() {
        let dir = Dir::new("midwrite");
        let file = dir.0.join("static.toml");
        let full = "[[service]]\nname = \"a.test:80\"\nendpoints = [\"127.0.0.1:1\"]\n[[service]]\nname = \"b.test:80\"\nendpoints = [\"127.0.0.1:2\"]\n";
        write(&file, full);
        let (mut d, _sub) = Discovery::start(cfg(&dir, true), []).unwrap();
        let v = d.snapshot().version();
        // Truncated (the writer has not written yet), then cut short in the
        // middle of a table: each is checked several times, nothing is
        // published, both services stay.
        for partial in ["", &full[..full.len() - 20]] {
            overwrite(&file, partial);
            for _ in 0..3 {
                assert!(!d.poll(Instant::now()), "published {partial:?}");
            }
            assert_eq!(d.snapshot().version(), v);
            assert_eq!(addrs(&d.snapshot(), "a.test:80"), ["127.0.0.1:1"]);
            assert_eq!(addrs(&d.snapshot(), "b.test:80"), ["127.0.0.1:2"]);
        }
        // The write completes (a service changed): published at once.
        overwrite(&file, &full.replace("127.0.0.1:2", "127.0.0.1:3"));
        assert!(d.poll(Instant::now()));
        assert_eq!(addrs(&d.snapshot(), "b.test:80"), ["127.0.0.1:3"]);
    }

    #[test]
    fn an_intentional_empty_set_is_published_once_it_stays() {
        let dir = Dir::new("empty");
        let file = dir.0.join("static.toml");
        let one = "[[service]]\nname = \"a.test:80\"\nendpoints = [\"127.0.0.1:1\"]\n";
        write(&file, one);
        let (mut d, _sub) = Discovery::start(cfg(&dir, true), []).unwrap();
        overwrite(&file, "empty = true\n");
        assert!(!d.poll(Instant::now()), "published at the first sight");
        assert_eq!(addrs(&d.snapshot(), "a.test:80"), ["127.0.0.1:1"]);
        assert!(d.poll(Instant::now()), "unchanged at the next check");
        assert!(d
            .snapshot()
            .service(&Authority::parse("a.test:80").unwrap())
            .is_none());
        // Services return at once; an empty start is allowed with the marker.
        overwrite(&file, one);
        assert!(d.poll(Instant::now()));
        assert_eq!(addrs(&d.snapshot(), "a.test:80"), ["127.0.0.1:1"]);
        write(&file, "empty = true\n");
        assert!(Discovery::start(cfg(&dir, true), []).is_ok());
        write(&file, "");
        assert!(matches!(
            Discovery::start(cfg(&dir, true), []),
            Err(DiscoveryError::Invalid { .. })
        ));
    }

    #[test]
    fn bad_file_at_start_is_an_error() {
        let dir = Dir::new("start");
        write(&dir.0.join("static.toml"), "[[service]]\nname = 3\n");
        assert!(matches!(
            Discovery::start(cfg(&dir, true), []),
            Err(DiscoveryError::Invalid { .. })
        ));
    }

    #[test]
    fn names_refresh_after_their_ttl() {
        let dir = Dir::new("ttl");
        fs::write(dir.0.join("hosts"), "127.0.0.8 web.test\n").unwrap();
        let mut c = cfg(&dir, false);
        c.dns.max_ttl = Duration::from_secs(30);
        let (mut d, _sub) =
            Discovery::start(c, [Authority::parse("web.test:80").unwrap()]).unwrap();
        assert_eq!(addrs(&d.snapshot(), "web.test:80"), ["127.0.0.8:80"]);
        let now = Instant::now();
        assert!(d.next_deadline() > now + Duration::from_secs(20));
        assert!(d.next_deadline() <= now + Duration::from_secs(30));
        // A name nothing resolves has no endpoints and is retried sooner.
        d.watch(Authority::parse("nowhere.test:80").unwrap());
        assert!(addrs(&d.snapshot(), "nowhere.test:80").is_empty());
        assert!(d.next_deadline() < now + Duration::from_secs(20));
    }
}
