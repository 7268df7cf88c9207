//! The DNS response path of `discovery/src/dns.rs`, driven through its
//! public API: `DnsResolver::resolve` asks a nameserver on 127.0.0.1 that
//! answers every query with fuzzer-made replies, over UDP and, when a reply
//! says it was truncated, over TCP. So every reply goes through the same
//! steps as one from the network: id and question matching, decoding,
//! CNAME chains, TTL clamping, negative TTLs from the SOA.
//!
//! Input: a 2-byte big-endian length `n`, then `n` bytes of the reply to the
//! A query, then the reply to the AAAA query. Each reply is a DNS message
//! without its id, question count and question, which the server copies from
//! the query it answers (so the resolver never waits for a reply it would
//! not accept): 2 bytes of flags (QR is forced to "response" and the opcode
//! to QUERY), 2 bytes each of answer, authority and additional counts, then
//! the records. Names may point back at the question (offset 12).
//!
//! Checks: never panics; every query gets a verdict without a timeout; an
//! address list is non-empty, IPv4 before IPv6, without repeats; every TTL
//! and negative TTL lies within the configured bounds.
//!
//! The resolver's own reply interpretation (`interpret`, `answers_query`) is
//! private, so this goes over loopback sockets and is slower per run than an
//! in-process target would be.
#![no_main]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use ringmesh_discovery::dns::{DnsConfig, DnsError, DnsResolver};

const QTYPE_A: u16 = 1;
/// Stays under the largest UDP payload over IPv4.
const MAX_REPLY: usize = 65_000;
/// Generous: the server answers at once, so this only bounds a harness bug.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The fake nameserver's sockets, bound once on the same port for UDP and TCP.
struct Server {
    udp: UdpSocket,
    tcp: TcpListener,
    addr: SocketAddr,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        for _ in 0..100 {
            let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
            let addr = udp.local_addr().expect("udp address");
            if let Ok(tcp) = TcpListener::bind(addr) {
                udp.set_read_timeout(Some(TIMEOUT * 4)).expect("timeout");
                return Server { udp, tcp, addr };
            }
        }
        panic!("no loopback port free for both udp and tcp");
    })
}

/// The reply to `query` (a whole DNS message) built from the fuzzer's parts.
fn reply(query: &[u8], a: &[u8], aaaa: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 + 5 {
        return None;
    }
    let question = &query[12..];
    let qtype = u16::from_be_bytes([question[question.len() - 4], question[question.len() - 3]]);
    let part = if qtype == QTYPE_A { a } else { aaaa };
    let mut fixed = [0u8; 8];
    let n = part.len().min(8);
    fixed[..n].copy_from_slice(&part[..n]);
    let mut out = Vec::with_capacity(12 + question.len() + part.len());
    out.extend_from_slice(&query[..2]); // id
    out.push((fixed[0] | 0x80) & !0x78); // QR = response, opcode = QUERY
    out.push(fixed[1]);
    out.extend_from_slice(&1u16.to_be_bytes()); // one question: theirs
    out.extend_from_slice(&fixed[2..8]);
    out.extend_from_slice(question);
    out.extend_from_slice(&part[n..]);
    out.truncate(MAX_REPLY);
    Some(out)
}

/// Answers datagrams until an empty one says stop.
fn serve_udp(udp: &UdpSocket, a: &[u8], aaaa: &[u8]) {
    let mut buf = vec![0u8; 65_536];
    while let Ok((len, from)) = udp.recv_from(&mut buf) {
        if len == 0 {
            return;
        }
        if let Some(out) = reply(&buf[..len], a, aaaa) {
            let _ = udp.send_to(&out, from);
        }
    }
    panic!("the resolver went quiet without the harness stopping the server");
}

/// Answers one query per connection until a connection without one says stop.
fn serve_tcp(tcp: &TcpListener, a: &[u8], aaaa: &[u8]) {
    loop {
        let Ok((mut stream, _)) = tcp.accept() else {
            return;
        };
        let mut prefix = [0u8; 2];
        if stream.read_exact(&mut prefix).is_err() {
            return;
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
        if stream.read_exact(&mut query).is_err() {
            continue;
        }
        if let Some(out) = reply(&query, a, aaaa) {
            let mut framed = (out.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&out);
            let _ = stream.write_all(&framed);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (len, rest) = match data {
        [hi, lo, rest @ ..] => (usize::from(u16::from_be_bytes([*hi, *lo])), rest),
        _ => (0, data),
    };
    let (a, aaaa) = rest.split_at(len.min(rest.len()));
    let server = server();
    let cfg = DnsConfig {
        servers: vec![server.addr],
        timeout: TIMEOUT,
        attempts: 1,
        // Two candidates, so a "not found" for the first asks again.
        search: vec!["svc.test".to_string()],
        ..DnsConfig::default()
    };
    let (min_ttl, max_ttl) = (cfg.min_ttl, cfg.max_ttl);
    let result = thread::scope(|s| {
        s.spawn(|| serve_udp(&server.udp, a, aaaa));
        s.spawn(|| serve_tcp(&server.tcp, a, aaaa));
        let result = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
            .block_on(DnsResolver::new(cfg).resolve("www.test"));
        let stop = UdpSocket::bind("127.0.0.1:0").expect("bind");
        stop.send_to(&[], server.addr).expect("stop udp server");
        drop(TcpStream::connect(server.addr).expect("stop tcp server"));
        result
    });
    let bounded = |ttl: Duration| (min_ttl..=max_ttl).contains(&ttl);
    match result {
        Ok(res) => {
            assert!(!res.addrs.is_empty(), "found without addresses");
            assert!(bounded(res.ttl), "ttl {:?}", res.ttl);
            let first_v6 = res.addrs.iter().position(IpAddr::is_ipv6);
            if let Some(i) = first_v6 {
                assert!(
                    res.addrs[i..].iter().all(IpAddr::is_ipv6),
                    "IPv4 after IPv6: {:?}",
                    res.addrs
                );
            }
            for (i, ip) in res.addrs.iter().enumerate() {
                assert!(!res.addrs[..i].contains(ip), "{ip} twice: {:?}", res.addrs);
            }
        }
        Err(DnsError::NotFound { negative_ttl, .. }) => {
            assert!(bounded(negative_ttl), "negative ttl {negative_ttl:?}")
        }
        Err(DnsError::Server { .. } | DnsError::Malformed { .. }) => {}
        Err(other) => panic!("every query was answered, yet: {other}"),
    }
});
