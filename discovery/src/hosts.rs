//! `/etc/hosts`-format static name table, consulted before DNS (glibc's
//! `hosts: files dns` order). Read once on the control core; lookups do no I/O.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::path::Path;

/// The system's hosts file.
pub const SYSTEM_HOSTS_FILE: &str = "/etc/hosts";

/// A hosts file larger than this is not read (a pod's is a few hundred
/// bytes; parsing a huge one would hold the control core and its memory).
pub const MAX_HOSTS_FILE_BYTES: u64 = 4 << 20;

/// Names (canonical and aliases) mapped to their addresses, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostsFile {
    /// Keys are ASCII-lowercased and carry no trailing dot.
    by_name: HashMap<String, Vec<IpAddr>>,
}

impl HostsFile {
    /// Parses hosts-file text. Lines that do not start with an IP address
    /// (including scoped IPv6 such as `fe80::1%eth0`, which a bare `IpAddr`
    /// cannot carry) are skipped, as glibc skips lines it cannot parse.
    pub fn parse(text: &str) -> Self {
        let mut by_name: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for line in text.lines() {
            let line = line.split_once('#').map_or(line, |(before, _)| before);
            let mut fields = line.split_whitespace();
            let Some(Ok(ip)) = fields.next().map(str::parse::<IpAddr>) else {
                continue;
            };
            for name in fields {
                let key = normalize(name);
                if key.is_empty() {
                    continue;
                }
                let addrs = by_name.entry(key).or_default();
                if !addrs.contains(&ip) {
                    addrs.push(ip);
                }
            }
        }
        Self { by_name }
    }

    /// Reads and parses the file at `path`: a regular file (a FIFO or a
    /// device would block the reading thread) of at most
    /// [`MAX_HOSTS_FILE_BYTES`]; bytes that are not UTF-8 (a Latin-1
    /// comment) spoil only their own names, as glibc reads the file.
    pub fn load(path: impl AsRef<Path>) -> io::Result<Self> {
        use std::io::Read as _;
        // Looked at before it is opened: opening a FIFO to read waits for
        // a writer.
        let meta = std::fs::metadata(&path)?;
        if !meta.is_file() {
            return Err(io::Error::other("not a regular file"));
        }
        let file = std::fs::File::open(&path)?;
        if meta.len() > MAX_HOSTS_FILE_BYTES {
            return Err(io::Error::other(format!(
                "larger than {MAX_HOSTS_FILE_BYTES} bytes"
            )));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.take(MAX_HOSTS_FILE_BYTES).read_to_end(&mut bytes)?;
        Ok(Self::parse(&String::from_utf8_lossy(&bytes)))
    }

    /// Every address listed for `name` (canonical name or alias), in file
    /// order; empty when the name is not listed.
    pub fn lookup(&self, name: &str) -> Vec<IpAddr> {
        self.by_name
            .get(&normalize(name))
            .cloned()
            .unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const SAMPLE: &str = "\
# The following lines are desirable for IPv4 capable hosts
127.0.0.1       localhost
127.0.1.1\tbox.example.org box  # trailing comment
10.0.0.5 Web.Internal web-alias
10.0.0.6 web.internal
::1     localhost ip6-localhost ip6-loopback
fe80::1%eth0 scoped
not-an-ip ignored
   # indented comment
10.0.0.5 web.internal
";

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    #[test]
    fn canonical_names_and_aliases() {
        let hosts = HostsFile::parse(SAMPLE);
        assert_eq!(hosts.lookup("box"), vec![v4(127, 0, 1, 1)]);
        assert_eq!(hosts.lookup("box.example.org"), vec![v4(127, 0, 1, 1)]);
        assert_eq!(hosts.lookup("web-alias"), vec![v4(10, 0, 0, 5)]);
        assert_eq!(
            hosts.lookup("ip6-loopback"),
            vec![IpAddr::V6(Ipv6Addr::LOCALHOST)]
        );
    }

    #[test]
    fn merges_lines_in_file_order_without_duplicates() {
        let hosts = HostsFile::parse(SAMPLE);
        assert_eq!(
            hosts.lookup("web.internal"),
            vec![v4(10, 0, 0, 5), v4(10, 0, 0, 6)]
        );
        assert_eq!(
            hosts.lookup("localhost"),
            vec![v4(127, 0, 0, 1), IpAddr::V6(Ipv6Addr::LOCALHOST)]
        );
    }

    #[test]
    fn case_insensitive_and_trailing_dot() {
        let hosts = HostsFile::parse(SAMPLE);
        assert_eq!(hosts.lookup("WEB.internal."), hosts.lookup("web.internal"));
        assert_eq!(hosts.lookup("LocalHost."), hosts.lookup("localhost"));
    }

    #[test]
    fn comments_and_bad_lines_are_ignored() {
        let hosts = HostsFile::parse(SAMPLE);
        assert!(hosts.lookup("comment").is_empty());
        assert!(hosts.lookup("#").is_empty());
        assert!(hosts.lookup("ignored").is_empty());
        assert!(hosts.lookup("scoped").is_empty());
        assert!(hosts.lookup("").is_empty());
        assert!(hosts.lookup("missing").is_empty());
    }

    #[test]
    fn empty_input() {
        assert!(HostsFile::parse("").is_empty());
        assert!(HostsFile::parse("# nothing\n\n").is_empty());
        assert_eq!(HostsFile::parse(""), HostsFile::default());
    }

    #[test]
    fn load_reads_a_file_and_reports_missing_ones() {
        let dir = std::env::temp_dir().join(format!("ringmesh-hosts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hosts");
        std::fs::write(&path, "192.0.2.7 db\n").unwrap();
        let hosts = HostsFile::load(&path).unwrap();
        assert_eq!(hosts.lookup("db"), vec![v4(192, 0, 2, 7)]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(HostsFile::load(&path).is_err());
    }

    /// A byte that is not UTF-8 spoils nothing else; a FIFO (which would
    /// block the reader) and a file over the cap are refused at once.
    #[test]
    fn load_is_lenient_with_bytes_and_strict_with_what_it_reads() {
        let dir = std::env::temp_dir().join(format!("ringmesh-hosts-b-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let latin1 = dir.join("latin1");
        std::fs::write(&latin1, b"# caf\xe9\n192.0.2.8 cp.test\n").unwrap();
        assert_eq!(
            HostsFile::load(&latin1).unwrap().lookup("cp.test"),
            vec![v4(192, 0, 2, 8)]
        );
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        assert!(HostsFile::load(&fifo).is_err());
        let big = dir.join("big");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_HOSTS_FILE_BYTES + 1).unwrap();
        assert!(HostsFile::load(&big).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_and_finds_what_it_was_given(
            junk in "\\PC*",
            name in "[a-zA-Z][a-zA-Z0-9-]{0,20}",
            ip in proptest::prelude::any::<std::net::Ipv4Addr>(),
        ) {
            let _ = HostsFile::parse(&junk);
            let text = format!("{junk}\n{ip} {name}\n");
            let hosts = HostsFile::parse(&text);
            proptest::prop_assert!(hosts.lookup(&name.to_uppercase()).contains(&IpAddr::V4(ip)));
        }
    }
}
