//! The static endpoints file as a resolver: checked every poll interval,
//! reloaded when it changed, and its services handed to the [`Table`].
//!
//! A bad edit is logged and skipped (the last good services stay); an edit
//! that would drop every service is published only once a later check finds
//! the file unchanged, since that is also what a file caught mid-write
//! looks like. Reading is std file I/O: the file is small and local, and a
//! read does not wait on anything that can stall the control core.

use std::collections::HashMap;
use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::resolver::{DiscoveryError, Resolver};
use crate::static_file;
use crate::table::Table;
use crate::{Authority, Service};

/// The file's bytes at a check. They, not its modification time, say whether
/// it changed: some filesystems keep whole seconds, and an edit in place that
/// keeps the length within one of them would look unchanged. The file is small
/// and read at each check anyway.
type Seen = Vec<u8>;

pub(crate) struct StaticFileResolver {
    path: PathBuf,
    interval: Duration,
    seen: Option<Seen>,
    /// A parsed edit that would leave no service (the file says
    /// `empty = true`), held until a later check finds the file unchanged.
    pending_empty: Option<Seen>,
}

impl StaticFileResolver {
    /// Loads the file into `table`. A bad file at start-up is an error (it
    /// is configuration); later bad edits are logged and skipped.
    pub(crate) fn load(
        path: PathBuf,
        interval: Duration,
        table: &Table,
    ) -> Result<Self, DiscoveryError> {
        let seen = read(&path)?;
        let services = parse(&path, &seen)?;
        table.set_static(services);
        Ok(Self {
            path,
            interval,
            seen: Some(seen),
            pending_empty: None,
        })
    }

    /// Looks at the file once; hands a changed set to `table`. Returns true
    /// when that published a new snapshot.
    pub(crate) fn check(&mut self, table: &Table) -> bool {
        let path = &self.path;
        let now = match fs::read(path) {
            Ok(s) => s,
            Err(e) => {
                if self.seen.is_some() {
                    tracing::warn!(path = %path.display(), error = %e, "static discovery file unreadable; keeping the last good snapshot");
                    self.seen = None;
                }
                return false;
            }
        };
        if self.seen.as_ref() == Some(&now) {
            return false;
        }
        match parse(path, &now) {
            // Dropping every service at once is what a file caught
            // mid-write would do: even when the file says so (`empty =
            // true`), wait until a later check finds it unchanged.
            Ok(services)
                if services.is_empty()
                    && !table.static_is_empty()
                    && self.pending_empty.as_ref() != Some(&now) =>
            {
                tracing::info!(path = %path.display(), "static discovery file now lists no service; publishing once it stays unchanged until the next check");
                self.pending_empty = Some(now);
                false
            }
            Ok(services) => {
                self.seen = Some(now);
                self.pending_empty = None;
                let count = services.len();
                let changed = table.set_static(services);
                tracing::info!(path = %path.display(), services = count, changed, "static discovery file reloaded");
                changed
            }
            Err(e) => {
                // Remembered, so the same bad file is reported once.
                self.seen = Some(now);
                self.pending_empty = None;
                tracing::warn!(error = %e, "bad static discovery file; keeping the last good snapshot");
                false
            }
        }
    }
}

impl Resolver for StaticFileResolver {
    fn run(mut self: Box<Self>, table: Table) -> Pin<Box<dyn Future<Output = ()>>> {
        Box::pin(async move {
            loop {
                monoio::time::sleep(self.interval).await;
                self.check(&table);
            }
        })
    }
}

fn read(path: &Path) -> Result<Seen, DiscoveryError> {
    fs::read(path).map_err(|source| DiscoveryError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse(path: &Path, bytes: &[u8]) -> Result<HashMap<Authority, Arc<Service>>, DiscoveryError> {
    // Not UTF-8 is what `fs::read_to_string` would have said.
    let text = std::str::from_utf8(bytes).map_err(|e| DiscoveryError::Read {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    let services = static_file::parse(text).map_err(|source| DiscoveryError::Invalid {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(services
        .into_iter()
        .map(|s| (s.name.clone(), Arc::new(s)))
        .collect())
}

/// The static file's loader as the control core runs it, checked on
/// demand, for the `static_loader` fuzz target.
#[cfg(fuzzing)]
pub mod fuzzing {
    use super::*;
    use crate::{channel, Snapshot};

    pub struct StaticLoader {
        table: Table,
        file: StaticFileResolver,
    }

    impl StaticLoader {
        /// Loads `path` as start-up does.
        pub fn start(path: PathBuf) -> Result<Self, DiscoveryError> {
            let (publisher, _subscriber) = channel(Snapshot::default());
            let table = Table::new(publisher);
            let file = StaticFileResolver::load(path, Duration::ZERO, &table)?;
            table.publish();
            Ok(Self { table, file })
        }

        /// One check of the file; true when it published.
        pub fn poll(&mut self) -> bool {
            self.file.check(&self.table)
        }

        pub fn snapshot(&self) -> Arc<Snapshot> {
            self.table.snapshot()
        }
    }
}
