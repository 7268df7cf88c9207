//! CPU accounting from `/proc`: the proxy's CPU time (utime + stime of
//! `/proc/<pid>/stat`, in `sysconf(_SC_CLK_TCK)` ticks) for CPU per request,
//! and each CPU's busy time (`/proc/stat`) to tell how much *other* work ran
//! where the proxy and the load generator run — on a shared machine that is
//! the difference between a tail worth reading and noise.

use std::io;
use std::time::Duration;

/// `sysconf(_SC_CLK_TCK)`: the unit of `/proc`'s CPU times.
pub fn clock_ticks() -> io::Result<u64> {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => Ok(t as u64),
        Ok(_) => Err(io::Error::other("sysconf(_SC_CLK_TCK) has no value")),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// utime + stime (fields 14 and 15) in clock ticks. The command name (field
/// 2) may contain spaces and parentheses, so fields are counted after the
/// last `)`.
pub fn parse_process_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state is field 3, so utime (14) is the 12th here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Non-idle ticks of one CPU in `/proc/stat`: user, nice, system, irq,
/// softirq and steal (guest time is already inside user).
pub fn parse_cpu_busy_ticks(stat: &str, cpu: usize) -> Option<u64> {
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    let get = |i: usize| f.get(i).copied();
    Some(get(0)? + get(1)? + get(2)? + get(5)? + get(6)? + get(7).unwrap_or(0))
}

/// Samples the proxy, this process, and the CPUs each is pinned to.
#[derive(Clone, Debug)]
pub struct CpuProbe {
    pub clock_ticks: u64,
    /// The proxy child, if one runs.
    pub proxy_pid: Option<u32>,
    /// The proxy's CPUs when it is pinned apart from the load.
    pub proxy_cpus: Option<Vec<usize>>,
    /// The load generator's (this process's) CPUs.
    pub load_cpus: Vec<usize>,
}

/// CPU accounting at one moment.
#[derive(Clone, Debug)]
pub struct CpuSample {
    pub proxy: Option<Duration>,
    pub own: Duration,
    pub proxy_cpus_busy: Option<Duration>,
    pub load_cpus_busy: Duration,
}

/// What happened between two samples.
#[derive(Clone, Copy, Debug)]
pub struct CpuUsage {
    /// The proxy's own CPU time.
    pub proxy: Option<Duration>,
    /// Time the proxy's CPUs spent on anything but the proxy (other
    /// processes, interrupts); `None` when the proxy is not pinned apart.
    pub others_on_proxy_cpus: Option<Duration>,
    /// Time the load generator's CPUs spent on anything but this process
    /// (and the proxy, when it is not pinned apart).
    pub others_on_load_cpus: Duration,
}

impl CpuProbe {
    fn ticks(&self, ticks: u64) -> Duration {
        Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / self.clock_ticks)
    }

    fn process_time(&self, pid: &str) -> io::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let ticks = parse_process_ticks(&stat).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected /proc/{pid}/stat format"),
            )
        })?;
        Ok(self.ticks(ticks))
    }

    fn busy(&self, stat: &str, cpus: &[usize]) -> io::Result<Duration> {
        let ticks = cpus
            .iter()
            .map(|&c| parse_cpu_busy_ticks(stat, c))
            .sum::<Option<u64>>()
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/stat format")
            })?;
        Ok(self.ticks(ticks))
    }

    /// The proxy's utime + stime so far (all threads).
    pub fn proxy_time(&self) -> io::Result<Option<Duration>> {
        self.proxy_pid
            .map(|pid| self.process_time(&pid.to_string()))
            .transpose()
    }

    pub fn sample(&self) -> io::Result<CpuSample> {
        let proxy = self.proxy_time()?;
        let own = self.process_time("self")?;
        let stat = std::fs::read_to_string("/proc/stat")?;
        Ok(CpuSample {
            proxy,
            own,
            proxy_cpus_busy: self
                .proxy_cpus
                .as_deref()
                .map(|c| self.busy(&stat, c))
                .transpose()?,
            load_cpus_busy: self.busy(&stat, &self.load_cpus)?,
        })
    }
}

impl CpuSample {
    pub fn usage_since(&self, earlier: &CpuSample) -> CpuUsage {
        let proxy = self
            .proxy
            .zip(earlier.proxy)
            .map(|(b, a)| b.saturating_sub(a));
        let own = self.own.saturating_sub(earlier.own);
        let proxy_apart = self.proxy_cpus_busy.is_some();
        let mut load_known = own;
        if !proxy_apart {
            load_known += proxy.unwrap_or_default();
        }
        CpuUsage {
            proxy,
            others_on_proxy_cpus: self.proxy_cpus_busy.zip(earlier.proxy_cpus_busy).map(
                |(b, a)| {
                    b.saturating_sub(a)
                        .saturating_sub(proxy.unwrap_or_default())
                },
            ),
            others_on_load_cpus: self
                .load_cpus_busy
                .saturating_sub(earlier.load_cpus_busy)
                .saturating_sub(load_known),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_fields_after_the_last_parenthesis() {
        let stat = "1234 (ring mesh) (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1000 0 0";
        assert_eq!(parse_process_ticks(stat), Some(325));
        assert_eq!(parse_process_ticks("garbage"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_process_ticks(&own).is_some());
        assert!(clock_ticks().unwrap() > 0);
    }

    #[test]
    fn busy_ticks_skip_idle_and_iowait() {
        let stat = "cpu  10 0 10 100 0 0 0 0 0 0\ncpu0 1 2 3 1000 50 4 5 6 0 0\ncpu1 7 0 0 9 0 0 0 0 0 0\nintr 1\n";
        assert_eq!(parse_cpu_busy_ticks(stat, 0), Some(1 + 2 + 3 + 4 + 5 + 6));
        assert_eq!(parse_cpu_busy_ticks(stat, 1), Some(7));
        assert_eq!(parse_cpu_busy_ticks(stat, 2), None);
        let real = std::fs::read_to_string("/proc/stat").unwrap();
        assert!(parse_cpu_busy_ticks(&real, 0).is_some());
    }

    #[test]
    fn usage_subtracts_known_work() {
        let ms = Duration::from_millis;
        let a = CpuSample {
            proxy: Some(ms(100)),
            own: ms(1000),
            proxy_cpus_busy: Some(ms(200)),
            load_cpus_busy: ms(2000),
        };
        let b = CpuSample {
            proxy: Some(ms(400)),
            own: ms(1500),
            proxy_cpus_busy: Some(ms(550)),
            load_cpus_busy: ms(2600),
        };
        let u = b.usage_since(&a);
        assert_eq!(u.proxy, Some(ms(300)));
        assert_eq!(u.others_on_proxy_cpus, Some(ms(50)));
        assert_eq!(u.others_on_load_cpus, ms(100));
        // Not pinned apart: the proxy's time counts as known on the load CPUs.
        let (a, b) = (
            CpuSample {
                proxy_cpus_busy: None,
                ..a
            },
            CpuSample {
                proxy_cpus_busy: None,
                ..b
            },
        );
        let u = b.usage_since(&a);
        assert_eq!(u.others_on_proxy_cpus, None);
        assert_eq!(u.others_on_load_cpus, Duration::ZERO);
    }
}
