//! CPU placement. The bench keeps the proxy on one CPU and everything else
//! (load generator, backends) on another, so the proxy's CPU time and latency
//! are not mixed with the load's. All through `sched_setaffinity` on the
//! calling thread: threads and child processes inherit it.

use std::io;

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// The CPUs this thread may run on, in order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    let set = sched_getaffinity(Pid::from_raw(0)).map_err(io::Error::from)?;
    Ok((0..CpuSet::count())
        .filter(|&i| set.is_set(i).unwrap_or(false))
        .collect())
}

/// Restricts the calling thread (and what it later spawns) to `cpus`.
pub fn pin_current_thread(cpus: &[usize]) -> io::Result<()> {
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c).map_err(io::Error::from)?;
    }
    sched_setaffinity(Pid::from_raw(0), &set).map_err(io::Error::from)
}

/// Where things run, decided once at start.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Placement {
    /// The load generator's and backends' CPUs.
    pub load_cpus: Vec<usize>,
    /// The proxy's CPUs (`None`: not pinned, it gets the whole mask).
    pub proxy_cpus: Option<Vec<usize>>,
    /// One line for the report.
    pub description: String,
}

impl Placement {
    /// With at least `proxy_cores + 1` CPUs allowed: the proxy gets the last
    /// `proxy_cores` of them, the load the rest. Otherwise nothing is pinned
    /// (and the report says so).
    pub fn decide(proxy_cores: usize) -> io::Result<Self> {
        let cpus = allowed_cpus()?;
        if cpus.len() > proxy_cores {
            let (load, proxy) = cpus.split_at(cpus.len() - proxy_cores);
            Ok(Self {
                description: format!(
                    "proxy on cpu {proxy:?}, load generator and backends on cpu {load:?}"
                ),
                load_cpus: load.to_vec(),
                proxy_cpus: Some(proxy.to_vec()),
            })
        } else {
            Ok(Self {
                description: format!(
                    "not pinned: {} CPU(s) allowed, {proxy_cores} proxy core(s) asked; proxy and load share CPUs {cpus:?}",
                    cpus.len()
                ),
                load_cpus: cpus,
                proxy_cpus: None,
            })
        }
    }
}
