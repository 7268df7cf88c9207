//! Discovery put together: the table, the static file resolver and the DNS
//! resolver, started on the control core's runtime.

use std::sync::Arc;

use crate::dns_resolver::DnsNameResolver;
use crate::file_resolver::StaticFileResolver;
use crate::hosts::HostsFile;
use crate::resolver::{DiscoveryConfig, DiscoveryError, Resolver};
use crate::table::{Claim, Table};
use crate::{channel, Authority, Snapshot, SnapshotSubscriber};

/// Discovery before it runs: the static file loaded, the resolvers built.
pub struct Discovery {
    table: Table,
    resolvers: Vec<Box<dyn Resolver>>,
}

impl Discovery {
    /// Loads the static file and builds the resolvers; `names` are watched
    /// from the start. A bad static file at start-up is an error (it is
    /// configuration); later bad edits are logged and skipped. Must be
    /// called on the thread that runs discovery (the table is not `Send`).
    pub fn new(
        cfg: DiscoveryConfig,
        names: impl IntoIterator<Item = Authority>,
    ) -> Result<(Self, SnapshotSubscriber), DiscoveryError> {
        let (publisher, subscriber) = channel(Snapshot::default());
        let table = Table::new(publisher);
        table.set_max_names(cfg.max_names);
        table.set_local_ips(cfg.local_ips.clone());
        let mut resolvers: Vec<Box<dyn Resolver>> = Vec::new();
        if let Some(path) = cfg.static_file.clone() {
            resolvers.push(Box::new(StaticFileResolver::load(
                path,
                cfg.static_poll_interval,
                &table,
            )?));
        }
        let hosts = cfg
            .hosts_file
            .as_ref()
            .and_then(|p| HostsFile::load(p).ok())
            .unwrap_or_default();
        resolvers.push(Box::new(DnsNameResolver::new(cfg.dns, hosts)));
        for name in names {
            table.pin(name);
        }
        Ok((Self { table, resolvers }, subscriber))
    }

    /// Adds a resolver (the Destination API's) answering for the names
    /// `claim` accepts; DNS leaves those alone. Before [`Discovery::start`].
    pub fn add_resolver(&mut self, resolver: Box<dyn Resolver>, claim: Claim) {
        self.table.claim(claim);
        self.resolvers.push(resolver);
    }

    /// Spawns every resolver as a task on the current monoio runtime and
    /// waits until the names watched so far have their first answer, so
    /// the first snapshot workers see is complete. Returns the table, where
    /// the control core watches names workers meet.
    pub async fn start(self) -> Table {
        for resolver in self.resolvers {
            monoio::spawn(resolver.run(self.table.clone()));
        }
        self.table.settled().await;
        self.table.publish();
        self.table
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.table.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::DnsConfig;
    use std::fs;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    type Runtime = monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>>;

    /// Discovery driven by the test: DNS runs as its task on a runtime of
    /// the rig's own, driven while a call waits; the static file is checked
    /// when the test says so (`poll`), not on a timer.
    struct Rig {
        rt: Runtime,
        table: Table,
        file: Option<StaticFileResolver>,
        dns: DnsNameResolver,
    }

    impl Rig {
        fn start(
            cfg: DiscoveryConfig,
            names: impl IntoIterator<Item = Authority>,
        ) -> Result<(Self, SnapshotSubscriber), DiscoveryError> {
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .unwrap();
            let (publisher, subscriber) = channel(Snapshot::default());
            let table = Table::new(publisher);
            let file = cfg
                .static_file
                .clone()
                .map(|p| StaticFileResolver::load(p, cfg.static_poll_interval, &table))
                .transpose()?;
            let hosts = cfg
                .hosts_file
                .as_ref()
                .and_then(|p| HostsFile::load(p).ok())
                .unwrap_or_default();
            let dns = DnsNameResolver::new(cfg.dns, hosts);
            rt.block_on(async {
                monoio::spawn(Box::new(dns.clone()).run(table.clone()));
                for name in names {
                    table.watch(name);
                }
                table.settled().await;
                table.publish();
            });
            Ok((
                Self {
                    rt,
                    table,
                    file,
                    dns,
                },
                subscriber,
            ))
        }

        /// Checks the static file and lets the resolvers act on it; true
        /// when anything was published.
        fn poll(&mut self, _now: Instant) -> bool {
            let before = self.table.snapshot().version();
            if let Some(file) = &mut self.file {
                file.check(&self.table);
            }
            let table = self.table.clone();
            self.rt.block_on(async move {
                // Resolvers woken by the check run first.
                monoio::time::sleep(Duration::from_millis(1)).await;
                table.settled().await;
            });
            self.table.snapshot().version() != before
        }

        fn watch(&mut self, name: Authority) {
            let table = self.table.clone();
            self.rt.block_on(async move {
                table.watch(name);
                table.settled().await;
            });
        }

        fn snapshot(&self) -> Arc<Snapshot> {
            self.table.snapshot()
        }

        /// When a name is due next (an hour out when none is).
        fn next_deadline(&self) -> Instant {
            self.dns
                .next_refresh()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
        }
    }

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
            max_names: 100,
            local_ips: Vec::new(),
            idle_timeout: None,
        }
    }

    fn write(path: &std::path::Path, text: &str) {
        // Renamed into place, as tools that save atomically do.
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
        let (mut d, sub) = Rig::start(cfg(&dir, true), [name]).unwrap();
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
        let (mut d, _sub) = Rig::start(cfg(&dir, true), []).unwrap();
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

    /// An edit in place that keeps the length, within one tick of a
    /// filesystem that keeps whole seconds (so under the same modification
    /// time and inode), is still noticed.
    #[test]
    fn an_edit_keeping_length_and_mtime_is_noticed() {
        let dir = Dir::new("sametick");
        let file = dir.0.join("static.toml");
        let text = "[[service]]\nname = \"a.test:80\"\nendpoints = [\"127.0.0.1:1\"]\n";
        write(&file, text);
        let (mut d, _sub) = Rig::start(cfg(&dir, true), []).unwrap();
        let mtime = fs::metadata(&file).unwrap().modified().unwrap();
        overwrite(&file, &text.replace("127.0.0.1:1", "127.0.0.1:2"));
        fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert!(d.poll(Instant::now()));
        assert_eq!(addrs(&d.snapshot(), "a.test:80"), ["127.0.0.1:2"]);
    }

    #[test]
    fn a_file_caught_mid_write_never_empties_the_set() {
        let dir = Dir::new("midwrite");
        let file = dir.0.join("static.toml");
        let full = "[[service]]\nname = \"a.test:80\"\nendpoints = [\"127.0.0.1:1\"]\n[[service]]\nname = \"b.test:80\"\nendpoints = [\"127.0.0.1:2\"]\n";
        write(&file, full);
        let (mut d, _sub) = Rig::start(cfg(&dir, true), []).unwrap();
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
        let (mut d, _sub) = Rig::start(cfg(&dir, true), []).unwrap();
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
        assert!(Discovery::new(cfg(&dir, true), []).is_ok());
        write(&file, "");
        assert!(matches!(
            Discovery::new(cfg(&dir, true), []),
            Err(DiscoveryError::Invalid { .. })
        ));
    }

    #[test]
    fn bad_file_at_start_is_an_error() {
        let dir = Dir::new("start");
        write(&dir.0.join("static.toml"), "[[service]]\nname = 3\n");
        assert!(matches!(
            Discovery::new(cfg(&dir, true), []),
            Err(DiscoveryError::Invalid { .. })
        ));
    }

    #[test]
    fn names_refresh_after_their_ttl() {
        let dir = Dir::new("ttl");
        fs::write(dir.0.join("hosts"), "127.0.0.8 web.test\n").unwrap();
        let mut c = cfg(&dir, false);
        c.dns.max_ttl = Duration::from_secs(30);
        let (mut d, _sub) = Rig::start(c, [Authority::parse("web.test:80").unwrap()]).unwrap();
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
