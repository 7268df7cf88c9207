//! The DNS resolver against real nameservers: small servers on 127.0.0.1
//! (UDP, and TCP on the same port), each in its own thread, built with
//! hickory-proto and scripted per test. Every server stops when its handle is
//! dropped, and every wait is bounded by the resolver's timeout.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use ringmesh_discovery::dns::{DnsConfig, DnsError, DnsResolver, Resolution};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// One query as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    transport: Transport,
    name: String,
    qtype: RecordType,
}

/// Given a query, the messages to send back, in order (none: stay silent).
type Handler = Box<dyn FnMut(&Message, Transport) -> Vec<Message> + Send>;

/// A scripted nameserver on 127.0.0.1, UDP and TCP on one port.
struct TestServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    seen: mpsc::Receiver<Seen>,
}

impl TestServer {
    fn start(handler: impl FnMut(&Message, Transport) -> Vec<Message> + Send + 'static) -> Self {
        let (udp, tcp) = bind_pair();
        let addr = udp.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, seen) = mpsc::channel();
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || serve(udp, tcp, Box::new(handler), tx, &stop)
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
            seen,
        }
    }

    /// The queries received so far. Complete for every query the resolver
    /// got an answer to: the server records a query before it replies.
    fn seen(&self) -> Vec<Seen> {
        self.seen.try_iter().collect()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// UDP and TCP bound to the same free port.
fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()) {
            return (udp, tcp);
        }
    }
    panic!("no port free for both udp and tcp");
}

fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    mut handler: Handler,
    seen: mpsc::Sender<Seen>,
    stop: &AtomicBool,
) {
    // Short waits so the loop notices `stop` quickly.
    udp.set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    tcp.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 65535];
    while !stop.load(Ordering::SeqCst) {
        if let Ok((len, peer)) = udp.recv_from(&mut buf) {
            if let Some(replies) = handle(&buf[..len], Transport::Udp, &mut handler, &seen) {
                for reply in replies {
                    let _ = udp.send_to(&reply, peer);
                }
            }
        }
        if let Ok((stream, _)) = tcp.accept() {
            serve_tcp(stream, &mut handler, &seen);
        }
    }
}

fn serve_tcp(mut stream: TcpStream, handler: &mut Handler, seen: &mpsc::Sender<Seen>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut prefix = [0u8; 2];
    if stream.read_exact(&mut prefix).is_err() {
        return;
    }
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    if stream.read_exact(&mut body).is_err() {
        return;
    }
    for reply in handle(&body, Transport::Tcp, handler, seen).unwrap_or_default() {
        let mut framed = u16::try_from(reply.len()).unwrap().to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        let _ = stream.write_all(&framed);
    }
}

fn handle(
    bytes: &[u8],
    transport: Transport,
    handler: &mut Handler,
    seen: &mpsc::Sender<Seen>,
) -> Option<Vec<Vec<u8>>> {
    let req = Message::from_vec(bytes).ok()?;
    let q = req.queries().first()?;
    let _ = seen.send(Seen {
        transport,
        name: q.name().to_string(),
        qtype: q.query_type(),
    });
    Some(
        handler(&req, transport)
            .iter()
            .map(|m| m.to_vec().unwrap())
            .collect(),
    )
}

// ---- building answers ----

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn qname(req: &Message) -> String {
    req.queries()[0].name().to_string().to_ascii_lowercase()
}

fn qtype(req: &Message) -> RecordType {
    req.queries()[0].query_type()
}

fn reply(req: &Message, code: ResponseCode) -> Message {
    let mut m = Message::new();
    m.set_id(req.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(req.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(code)
        .add_queries(req.queries().to_vec());
    m
}

fn a(owner: &str, ttl: u32, ip: [u8; 4]) -> Record {
    Record::from_rdata(name(owner), ttl, RData::A(A::from(Ipv4Addr::from(ip))))
}

fn aaaa(owner: &str, ttl: u32, ip: &str) -> Record {
    Record::from_rdata(
        name(owner),
        ttl,
        RData::AAAA(AAAA::from(ip.parse::<Ipv6Addr>().unwrap())),
    )
}

fn cname(owner: &str, ttl: u32, target: &str) -> Record {
    Record::from_rdata(name(owner), ttl, RData::CNAME(CNAME(name(target))))
}

fn soa(zone: &str, ttl: u32, minimum: u32) -> Record {
    let data = SOA::new(
        name("ns.test."),
        name("admin.test."),
        1,
        3600,
        600,
        86400,
        minimum,
    );
    Record::from_rdata(name(zone), ttl, RData::SOA(data))
}

/// "No such name", with the zone's SOA (`test.` or the root) so the negative
/// TTL is known.
fn nxdomain(req: &Message, soa_ttl: u32, minimum: u32) -> Message {
    let zone = if qname(req).ends_with(".test.") {
        "test."
    } else {
        "."
    };
    let mut m = reply(req, ResponseCode::NXDomain);
    m.add_name_server(soa(zone, soa_ttl, minimum));
    m
}

fn config(servers: &[&TestServer]) -> DnsConfig {
    DnsConfig {
        servers: servers.iter().map(|s| s.addr).collect(),
        timeout: Duration::from_millis(500),
        attempts: 1,
        ..DnsConfig::default()
    }
}

/// Runs a lookup on a runtime of its own: io_uring where the kernel has it,
/// epoll otherwise (`lookups_work_on_both_drivers` runs each explicitly).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .expect("a monoio runtime")
        .block_on(f)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

// ---- tests ----

#[test]
fn a_and_aaaa_are_combined_with_the_smallest_ttl() {
    let server = TestServer::start(|req, _| {
        let mut m = reply(req, ResponseCode::NoError);
        match (qname(req).as_str(), qtype(req)) {
            ("web.test.", RecordType::A) => {
                m.add_answer(a("web.test.", 60, [192, 0, 2, 1]))
                    .add_answer(a("web.test.", 40, [192, 0, 2, 2]));
            }
            ("web.test.", RecordType::AAAA) => {
                m.add_answer(aaaa("web.test.", 120, "2001:db8::1"));
            }
            _ => m = nxdomain(req, 60, 60),
        }
        vec![m]
    });
    let dns = DnsResolver::new(config(&[&server]));
    let res = block_on(dns.resolve("web.test")).unwrap();
    assert_eq!(
        res,
        Resolution {
            addrs: vec![ip("192.0.2.1"), ip("192.0.2.2"), ip("2001:db8::1")],
            ttl: secs(40),
        }
    );
    let mut types: Vec<RecordType> = server.seen().iter().map(|s| s.qtype).collect();
    types.sort();
    assert_eq!(
        types,
        [RecordType::A, RecordType::AAAA],
        "both queries sent"
    );
}

#[test]
fn replies_that_do_not_match_the_query_are_ignored() {
    let server = TestServer::start(|req, _| {
        let mut good = reply(req, ResponseCode::NoError);
        let mut wrong_id = reply(req, ResponseCode::NoError);
        wrong_id.set_id(req.id().wrapping_add(1));
        let mut wrong_question = Message::new();
        wrong_question
            .set_id(req.id())
            .set_message_type(MessageType::Response)
            .add_query(hickory_proto::op::Query::query(
                name("evil.test."),
                qtype(req),
            ));
        if qtype(req) == RecordType::A {
            good.add_answer(a("web.test.", 60, [192, 0, 2, 1]));
            wrong_id.add_answer(a("web.test.", 60, [198, 51, 100, 66]));
            wrong_question.add_answer(a("evil.test.", 60, [198, 51, 100, 67]));
        }
        vec![wrong_id, wrong_question, good]
    });
    let dns = DnsResolver::new(config(&[&server]));
    let res = block_on(dns.resolve("web.test")).unwrap();
    assert_eq!(res.addrs, vec![ip("192.0.2.1")]);
}

/// A nameserver on 127.0.0.1 that answers each query first with a datagram
/// carrying the query's id and then garbage and, `after` later, with
/// `good`'s reply if it has one.
fn garbling_server(
    good: fn(&Message) -> Option<Message>,
    after: Duration,
    stop: Arc<AtomicBool>,
) -> (SocketAddr, JoinHandle<()>) {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    let addr = udp.local_addr().unwrap();
    let thread = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65535];
        while !stop.load(Ordering::SeqCst) {
            let Ok((len, peer)) = udp.recv_from(&mut buf) else {
                continue;
            };
            let Ok(req) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            let mut garbage = req.id().to_be_bytes().to_vec();
            garbage.extend_from_slice(b"\x81\x80garbage");
            let _ = udp.send_to(&garbage, peer);
            if let Some(good) = good(&req) {
                std::thread::sleep(after);
                let _ = udp.send_to(&good.to_vec().unwrap(), peer);
            }
        }
    });
    (addr, thread)
}

#[test]
fn a_garbled_reply_is_skipped_for_the_good_one() {
    let stop = Arc::new(AtomicBool::new(false));
    let good = |req: &Message| {
        let mut m = reply(req, ResponseCode::NoError);
        if qtype(req) == RecordType::A {
            m.add_answer(a("web.test.", 60, [192, 0, 2, 7]));
        }
        Some(m)
    };
    let (addr, thread) = garbling_server(good, Duration::from_millis(30), stop.clone());
    let dns = DnsResolver::new(DnsConfig {
        servers: vec![addr],
        timeout: Duration::from_millis(500),
        attempts: 1,
        ..DnsConfig::default()
    });
    let res = block_on(dns.resolve("web.test"));
    stop.store(true, Ordering::SeqCst);
    thread.join().unwrap();
    assert_eq!(res.unwrap().addrs, vec![ip("192.0.2.7")]);
}

/// Garbage for one family while the other is answered: the answer is
/// used at once, not after the garbled family's deadline (which made every
/// first request to a name wait out the fail-fast).
#[test]
fn a_family_answered_with_garbage_alone_does_not_hold_the_other() {
    let stop = Arc::new(AtomicBool::new(false));
    let good = |req: &Message| {
        (qtype(req) == RecordType::A).then(|| {
            let mut m = reply(req, ResponseCode::NoError);
            m.add_answer(a("web.test.", 60, [192, 0, 2, 8]));
            m
        })
    };
    let (addr, thread) = garbling_server(good, Duration::ZERO, stop.clone());
    let dns = DnsResolver::new(DnsConfig {
        servers: vec![addr],
        timeout: Duration::from_secs(2),
        attempts: 2,
        ..DnsConfig::default()
    });
    let started = Instant::now();
    let res = block_on(dns.resolve("web.test"));
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    thread.join().unwrap();
    assert_eq!(res.unwrap().addrs, vec![ip("192.0.2.8")]);
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[test]
fn garbage_alone_is_reported_as_malformed_at_the_timeout() {
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, thread) = garbling_server(|_| None, Duration::ZERO, stop.clone());
    let dns = DnsResolver::new(DnsConfig {
        servers: vec![addr],
        timeout: Duration::from_millis(200),
        attempts: 1,
        ..DnsConfig::default()
    });
    let started = Instant::now();
    let err = block_on(dns.resolve("web.test")).unwrap_err();
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    thread.join().unwrap();
    assert!(matches!(err, DnsError::Malformed { .. }), "{err:?}");
    // Waited for a good reply until the deadline.
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[test]
fn cname_chain_is_followed() {
    let server = TestServer::start(|req, _| {
        let mut m = reply(req, ResponseCode::NoError);
        m.add_answer(cname("alias.test.", 30, "mid.test."))
            .add_answer(cname("mid.test.", 100, "real.test."));
        match qtype(req) {
            RecordType::A => {
                m.add_answer(a("real.test.", 200, [192, 0, 2, 10]))
                    // Not on the chain: must not be used.
                    .add_answer(a("stray.test.", 200, [198, 51, 100, 1]));
            }
            _ => {
                m.add_name_server(soa("test.", 60, 60));
            }
        }
        vec![m]
    });
    let dns = DnsResolver::new(config(&[&server]));
    let res = block_on(dns.resolve("alias.test")).unwrap();
    assert_eq!(
        res,
        Resolution {
            addrs: vec![ip("192.0.2.10")],
            ttl: secs(30),
        }
    );
}

#[test]
fn nxdomain_carries_the_soa_negative_ttl() {
    let server = TestServer::start(|req, _| {
        vec![match qname(req).as_str() {
            "gone.test." => nxdomain(req, 3600, 42),
            "brief.test." => nxdomain(req, 1, 3600),
            "nodata.test." => {
                // The name exists but has no addresses (NODATA).
                let mut m = reply(req, ResponseCode::NoError);
                m.add_name_server(soa("test.", 120, 120));
                m
            }
            _ => reply(req, ResponseCode::NXDomain), // no SOA at all
        }]
    });
    let dns = DnsResolver::new(DnsConfig {
        ndots: 0,
        ..config(&[&server])
    });
    let negative = |dns: &DnsResolver, host: &str| match block_on(dns.resolve(host)) {
        Err(DnsError::NotFound { name, negative_ttl }) => {
            assert_eq!(name, host);
            negative_ttl
        }
        other => panic!("{host}: expected NotFound, got {other:?}"),
    };
    assert_eq!(negative(&dns, "gone.test"), secs(42));
    assert_eq!(
        negative(&dns, "brief.test"),
        secs(5),
        "clamped up to min_ttl"
    );
    assert_eq!(negative(&dns, "nodata.test"), secs(120));
    assert_eq!(negative(&dns, "nosoa.test"), secs(5), "no SOA: min_ttl");
    let err = block_on(dns.resolve("gone.test")).unwrap_err();
    assert_eq!(err.to_string(), "dns name gone.test does not exist");
}

#[test]
fn truncated_udp_answer_is_retried_over_tcp() {
    let server = TestServer::start(|req, transport| {
        let mut m = reply(req, ResponseCode::NoError);
        match transport {
            Transport::Udp => {
                m.set_truncated(true);
            }
            Transport::Tcp if qtype(req) == RecordType::A => {
                // Far more than fits in 512 bytes.
                for i in 1..=60 {
                    m.add_answer(a("big.test.", 30, [192, 0, 2, i]));
                }
            }
            Transport::Tcp => {
                m.add_answer(aaaa("big.test.", 30, "2001:db8::60"));
            }
        }
        vec![m]
    });
    let dns = DnsResolver::new(config(&[&server]));
    let res = block_on(dns.resolve("big.test")).unwrap();
    assert_eq!(res.addrs.len(), 61);
    assert_eq!(res.addrs[0], ip("192.0.2.1"));
    assert_eq!(res.addrs[60], ip("2001:db8::60"));
    let tcp: Vec<RecordType> = server
        .seen()
        .into_iter()
        .filter(|s| s.transport == Transport::Tcp)
        .map(|s| s.qtype)
        .collect();
    assert_eq!(tcp.len(), 2, "both queries asked again over tcp: {tcp:?}");
}

#[test]
fn silent_server_times_out_within_the_bound() {
    // Bound but never read: no answer and no ICMP error.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dns = DnsResolver::new(DnsConfig {
        servers: vec![silent.local_addr().unwrap()],
        timeout: Duration::from_millis(200),
        attempts: 2,
        ..DnsConfig::default()
    });
    let started = Instant::now();
    let err = block_on(dns.resolve("web.test")).unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, DnsError::Timeout { .. }), "{err:?}");
    assert!(
        err.to_string().contains("did not answer within 200ms"),
        "{err}"
    );
    // Two attempts of 200 ms, A and AAAA waited for together.
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[test]
fn servfail_moves_on_to_the_next_server() {
    let failing = TestServer::start(|req, _| vec![reply(req, ResponseCode::ServFail)]);
    let good = TestServer::start(|req, _| {
        let mut m = reply(req, ResponseCode::NoError);
        if qtype(req) == RecordType::A {
            m.add_answer(a("web.test.", 60, [192, 0, 2, 7]));
        } else {
            m.add_name_server(soa("test.", 60, 60));
        }
        vec![m]
    });
    let dns = DnsResolver::new(config(&[&failing, &good]));
    let res = block_on(dns.resolve("web.test")).unwrap();
    assert_eq!(res.addrs, vec![ip("192.0.2.7")]);
    assert_eq!(failing.seen().len(), 2, "the first server was asked first");
    assert_eq!(good.seen().len(), 2);

    // When every server fails the error is transient, never NotFound.
    let dns = DnsResolver::new(config(&[&failing]));
    let err = block_on(dns.resolve("web.test")).unwrap_err();
    assert!(
        matches!(
            err,
            DnsError::Server {
                code: ResponseCode::ServFail,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().ends_with("answered server failure"),
        "{err}"
    );
}

#[test]
fn closed_port_fails_over_without_waiting_for_the_timeout() {
    // A port nobody listens on: the kernel answers with ICMP unreachable.
    let closed = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let good = TestServer::start(|req, _| {
        let mut m = reply(req, ResponseCode::NoError);
        if qtype(req) == RecordType::A {
            m.add_answer(a("web.test.", 60, [192, 0, 2, 8]));
        }
        vec![m]
    });
    let dns = DnsResolver::new(DnsConfig {
        servers: vec![closed, good.addr],
        timeout: Duration::from_secs(5),
        attempts: 1,
        ..DnsConfig::default()
    });
    let started = Instant::now();
    let res = block_on(dns.resolve("web.test")).unwrap();
    assert_eq!(res.addrs, vec![ip("192.0.2.8")]);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn search_domains_are_tried_in_order() {
    let server = TestServer::start(|req, _| {
        if qname(req) == "api.svc.test." {
            let mut m = reply(req, ResponseCode::NoError);
            if qtype(req) == RecordType::A {
                m.add_answer(a("api.svc.test.", 60, [192, 0, 2, 20]));
            } else {
                m.add_name_server(soa("test.", 60, 60));
            }
            vec![m]
        } else {
            vec![nxdomain(req, 60, 30)]
        }
    });
    let dns = DnsResolver::new(DnsConfig {
        search: vec!["ns1.test".into(), "svc.test".into()],
        ndots: 1,
        ..config(&[&server])
    });
    let names = |server: &TestServer| -> Vec<String> {
        let mut names: Vec<String> = server.seen().into_iter().map(|s| s.name).collect();
        names.dedup();
        names
    };

    let res = block_on(dns.resolve("api")).unwrap();
    assert_eq!(res.addrs, vec![ip("192.0.2.20")]);
    assert_eq!(names(&server), ["api.ns1.test.", "api.svc.test."]);

    // Absolute: no search.
    assert!(matches!(
        block_on(dns.resolve("api.")),
        Err(DnsError::NotFound { .. })
    ));
    assert_eq!(names(&server), ["api."]);

    // Not found anywhere: every candidate tried, search domains first.
    match block_on(dns.resolve("missing")) {
        Err(DnsError::NotFound { negative_ttl, .. }) => assert_eq!(negative_ttl, secs(30)),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(
        names(&server),
        ["missing.ns1.test.", "missing.svc.test.", "missing."]
    );
}

#[test]
fn ip_literals_are_not_queried() {
    let server = TestServer::start(|req, _| vec![reply(req, ResponseCode::ServFail)]);
    let dns = DnsResolver::new(config(&[&server]));
    let res = block_on(dns.resolve("192.0.2.1")).unwrap();
    assert_eq!(res.addrs, vec![ip("192.0.2.1")]);
    assert_eq!(res.ttl, secs(300));
    assert!(server.seen().is_empty());
}

#[test]
fn lookups_work_on_both_drivers() {
    let server = TestServer::start(|req, transport| {
        let mut m = reply(req, ResponseCode::NoError);
        match (transport, qtype(req)) {
            // The A answer only over TCP: both socket kinds are exercised.
            (Transport::Udp, RecordType::A) => {
                m.set_truncated(true);
            }
            (_, RecordType::A) => {
                m.add_answer(a("web.test.", 60, [192, 0, 2, 30]));
            }
            _ => {
                m.add_answer(aaaa("web.test.", 60, "2001:db8::30"));
            }
        }
        vec![m]
    });
    let dns = DnsResolver::new(config(&[&server]));
    let want = vec![ip("192.0.2.30"), ip("2001:db8::30")];
    let mut uring = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .build()
        .expect("io_uring (CI has it)");
    assert_eq!(uring.block_on(dns.resolve("web.test")).unwrap().addrs, want);
    let mut epoll = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap();
    assert_eq!(epoll.block_on(dns.resolve("web.test")).unwrap().addrs, want);
    // A silent server on each: the timeout fires on both.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dns = DnsResolver::new(DnsConfig {
        servers: vec![silent.local_addr().unwrap()],
        timeout: Duration::from_millis(100),
        attempts: 1,
        ..DnsConfig::default()
    });
    for err in [
        uring.block_on(dns.resolve("web.test")),
        epoll.block_on(dns.resolve("web.test")),
    ] {
        assert!(matches!(err, Err(DnsError::Timeout { .. })), "{err:?}");
    }
}

/// Sockets on this host connected to `port` on 127.0.0.1 (UDP).
fn udp_sockets_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/udp").unwrap();
    let remote = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().nth(2) == Some(remote.as_str()))
        .count()
}

/// A thousand names looked up at once against a nameserver that never
/// answers hold about `MAX_CONCURRENT_EXCHANGES` sockets (each exchange
/// holds one; a timed-out one's socket closes a moment after its
/// cancelled receive, so up to twice that are seen): the rest wait their
/// turn, and every lookup still ends. Unbounded, all were open at once.
#[test]
fn concurrent_exchanges_are_bounded() {
    use ringmesh_discovery::dns::MAX_CONCURRENT_EXCHANGES;
    use std::rc::Rc;
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let dns = Rc::new(DnsResolver::new(DnsConfig {
        servers: vec![silent.local_addr().unwrap()],
        timeout: Duration::from_millis(300),
        attempts: 1,
        ..DnsConfig::default()
    }));
    let names = 8 * MAX_CONCURRENT_EXCHANGES;
    let (peak, timed_out) = block_on(async move {
        let lookups: Vec<_> = (0..names)
            .map(|i| {
                let dns = dns.clone();
                monoio::spawn(async move { dns.resolve(&format!("n{i}.test")).await })
            })
            .collect();
        let mut peak = 0;
        let sampler = monoio::spawn(async move {
            for _ in 0..150 {
                peak = peak.max(udp_sockets_to(port));
                monoio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        });
        let mut timed_out = 0;
        for l in lookups {
            timed_out += usize::from(matches!(l.await, Err(DnsError::Timeout { .. })));
        }
        (sampler.await, timed_out)
    });
    assert_eq!(timed_out, names);
    assert!(peak > 0, "no exchange was seen");
    assert!(
        peak <= 2 * MAX_CONCURRENT_EXCHANGES,
        "{peak} sockets at once"
    );
}
