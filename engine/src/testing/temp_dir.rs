//! A scratch directory removed on drop, for the crate's unit tests and,
//! through `#[path]`, its integration tests (`tests/common`): one copy of
//! the code, and every test that panics half-way still cleans up.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A directory of its own under the system's temporary directory
/// (`ringmesh-<tag>-<pid>-<n>`), removed with what it holds on drop, so
/// test runs leave nothing behind. Keep it for as long as a proxy or a
/// child process reads from it: declared before them, or as the last field
/// of the struct that owns them, so it goes after.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ringmesh-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `name` inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
