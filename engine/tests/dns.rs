//! Names resolved through DNS by the control core: a worker meets a name
//! (an explicit-proxy request), the control core asks a nameserver on
//! loopback over its monoio sockets, and refreshes the answer when its TTL
//! runs out, while requests keep flowing.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::dns::Nameserver;
use common::http::origin_on;
use common::*;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use ringmesh_engine::IoDriver;

fn get(proxy: SocketAddr, url: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-x",
            &format!("http://{proxy}"),
            url,
        ])
        .output()
        .expect("curl is installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dns_refresh(driver: IoDriver) {
    // Two origins on one port, on two loopback addresses: which one
    // answers says what DNS said.
    let (a, b) = loop {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if let Ok(b) = TcpListener::bind(("127.0.0.2", port)) {
            break (a, b);
        }
    };
    let port = a.local_addr().unwrap().port();
    let (_a, _b) = (origin_on(a, "a"), origin_on(b, "b"));
    let ns = Nameserver::start([127, 0, 0, 1]);
    let servers = ns.addr.to_string();
    let proxy = start_proxy(
        driver,
        &[
            ("LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR", "127.0.0.1:0"),
            ("RINGMESH_DNS_SERVERS", &servers),
            ("LINKERD2_PROXY_DNS_MIN_TTL", "1s"),
            ("LINKERD2_PROXY_DNS_MAX_TTL", "1s"),
        ],
    );
    let out = proxy.outbound_addr().unwrap();
    let url = format!("http://web.test:{port}/hello");
    assert_eq!(get(out, &url), "hello from a\n");
    let first = ns.answered.load(Ordering::SeqCst);
    assert!(first >= 1);
    // The answer changes; within a few TTLs the proxy follows it.
    ns.ip
        .store(u32::from_be_bytes([127, 0, 0, 2]), Ordering::SeqCst);
    let moved = eventually(Duration::from_secs(5), || {
        get(out, &url) == "hello from b\n"
    });
    assert!(moved, "the refreshed answer was not used");
    assert!(ns.answered.load(Ordering::SeqCst) > first, "asked again");
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    names_resolve_and_refresh_through_the_control_core,
    super::dns_refresh
);

/// A nameserver for SRV: `_http._tcp.web.test` has two targets at
/// priority 10 (`b1.test` weight 1 on `ports[0]`, its address in the
/// additional section; `b2.test` weight 3 on `ports[1]`, looked up) and a
/// backup at priority 20 (`b3.test` on `ports[2]`). Every `b*.test` is
/// 127.0.0.1; other names do not exist.
fn srv_nameserver(ports: [u16; 3], stop: Arc<AtomicBool>) -> SocketAddr {
    use hickory_proto::rr::rdata::SRV;
    use hickory_proto::rr::Name;
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        let name = |s: &str| Name::from_ascii(s).unwrap();
        let localhost = RData::A(A(std::net::Ipv4Addr::LOCALHOST));
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                continue;
            };
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let Some(q) = query.queries().first().cloned() else {
                continue;
            };
            let mut reply = Message::new();
            reply
                .set_id(query.id())
                .set_message_type(MessageType::Response)
                .set_op_code(query.op_code())
                .add_query(q.clone());
            let qname = q.name().to_ascii();
            match (qname.as_str(), q.query_type()) {
                ("_http._tcp.web.test.", RecordType::SRV) => {
                    for (prio, weight, port, target) in [
                        (10, 1, ports[0], "b1.test."),
                        (10, 3, ports[1], "b2.test."),
                        (20, 1, ports[2], "b3.test."),
                    ] {
                        reply.add_answer(Record::from_rdata(
                            q.name().clone(),
                            30,
                            RData::SRV(SRV::new(prio, weight, port, name(target))),
                        ));
                    }
                    reply.add_additional(Record::from_rdata(
                        name("b1.test."),
                        30,
                        localhost.clone(),
                    ));
                }
                ("b1.test." | "b2.test." | "b3.test.", RecordType::A) => {
                    reply.add_answer(Record::from_rdata(q.name().clone(), 30, localhost.clone()));
                }
                ("b1.test." | "b2.test." | "b3.test.", _) => {}
                _ => {
                    reply.set_response_code(ResponseCode::NXDomain);
                }
            }
            let _ = socket.send_to(&reply.to_vec().unwrap(), from);
        }
    });
    addr
}

/// A `_service._proto.name` target is resolved with SRV: the priority-10
/// targets take the traffic (on their records' ports), the priority-20
/// backup none.
#[test]
fn srv_names_resolve_to_their_targets_ports_and_weights() {
    let backends = [
        Backend::named("1"),
        Backend::named("2"),
        Backend::named("3"),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let ns = srv_nameserver(backends.each_ref().map(|b| b.addr.port()), stop.clone());
    let servers = ns.to_string();
    let proxy = start_proxy(
        IoDriver::Uring,
        &[
            ("RINGMESH_TCP_FORWARD", "127.0.0.1:0=_http._tcp.web.test:80"),
            ("RINGMESH_DNS_SERVERS", &servers),
            ("LINKERD2_PROXY_CORES", "1"),
        ],
    );
    let addr = proxy.forward_addrs()[0];
    let mut seen = [0usize; 3];
    for _ in 0..400 {
        let mut s = connect(addr);
        // Not HTTP: relayed at once (no detection wait).
        s.write_all(b"hi\n").unwrap();
        let name = read_name(&mut s);
        let i: usize = name.trim().parse::<usize>().expect("a backend's name") - 1;
        seen[i] += 1;
    }
    stop.store(true, Ordering::Relaxed);
    assert_eq!(seen[2], 0, "the priority-20 backup took traffic: {seen:?}");
    assert!(
        seen[0] > 0 && seen[1] > 0,
        "both priority-10 targets: {seen:?}"
    );
    // (The records' weights become the endpoints' balancer weights: a
    // unit test in discovery/src/dns_resolver.rs. Over TCP the balancer
    // also weighs connect latency, so shares here are not the weights.)
}

/// A client naming ever new hosts cannot make the control core follow
/// them all: past `RINGMESH_DISCOVERY_MAX_NAMES` new names are not
/// resolved (503), while the names already watched keep working.
#[test]
fn watched_names_are_capped() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _app = origin_on(listener, "a");
    let ns = Nameserver::start([127, 0, 0, 1]);
    let servers = ns.addr.to_string();
    let proxy = start_proxy(
        IoDriver::Uring,
        &[
            ("LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR", "127.0.0.1:0"),
            ("RINGMESH_DNS_SERVERS", &servers),
            ("RINGMESH_DISCOVERY_MAX_NAMES", "3"),
        ],
    );
    let out = proxy.outbound_addr().unwrap();
    for i in 1..=3 {
        assert_eq!(
            get(out, &format!("http://n{i}.test:{port}/hello")),
            "hello from a\n"
        );
    }
    let refused = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            "-x",
        ])
        .arg(format!("http://{out}"))
        .arg(format!("http://n4.test:{port}/hello"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&refused.stdout), "503");
    assert_eq!(
        get(out, &format!("http://n2.test:{port}/hello")),
        "hello from a\n"
    );
}

/// An origin ("a") on loopback, a nameserver answering 127.0.0.1 for
/// every name (its answers delayed by `delay_ms`), and a proxy with an
/// outbound listener asking it, `vars` besides: the origin's port and all
/// three (kept alive by the caller).
fn app_and_proxy(
    delay_ms: u64,
    vars: &[(&str, &str)],
) -> (u16, common::Backend, Nameserver, ringmesh_engine::Proxy) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = origin_on(listener, "a");
    let ns = Nameserver::start([127, 0, 0, 1]);
    ns.delay_ms.store(delay_ms, Ordering::SeqCst);
    let servers = ns.addr.to_string();
    let mut all = vec![
        ("LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR", "127.0.0.1:0"),
        ("RINGMESH_DNS_SERVERS", servers.as_str()),
    ];
    all.extend_from_slice(vars);
    let proxy = start_proxy(IoDriver::Uring, &all);
    (port, app, ns, proxy)
}

/// `GET url` through the explicit proxy `proxy`: the status code.
fn status(proxy: SocketAddr, url: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            "-x",
        ])
        .arg(format!("http://{proxy}"))
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Without the Destination API too, names no request used for the
/// discovery idle timeout are dropped: one-off names do not hold the
/// cap's slots for good (the cap reached, new names were refused until a
/// restart).
#[test]
fn idle_names_leave_the_cap() {
    let (port, _app, _ns, proxy) = app_and_proxy(
        0,
        &[
            ("RINGMESH_DISCOVERY_MAX_NAMES", "3"),
            ("LINKERD2_PROXY_OUTBOUND_DISCOVERY_IDLE_TIMEOUT", "1s"),
        ],
    );
    let out = proxy.outbound_addr().unwrap();
    for i in 1..=3 {
        assert_eq!(
            status(out, &format!("http://once{i}.test:{port}/hello")),
            "200"
        );
    }
    // The cap is reached (`watched_names_are_capped`); no request uses the
    // three names again: they go, and a new name gets a slot.
    let ok = eventually(Duration::from_secs(15), || {
        status(out, &format!("http://late.test:{port}/hello")) == "200"
    });
    assert!(ok, "the cap's slots stayed taken by idle names");
}

/// A name whose first answer takes longer than the discovery idle
/// timeout is kept watched by the request waiting for it, and resolves
/// (it was dropped as idle before its answer came, the answer thrown
/// away, and every request failed).
#[test]
fn a_slow_first_answer_is_waited_for() {
    let (port, _app, _ns, proxy) = app_and_proxy(
        1500,
        &[("LINKERD2_PROXY_OUTBOUND_DISCOVERY_IDLE_TIMEOUT", "1s")],
    );
    let out = proxy.outbound_addr().unwrap();
    assert_eq!(
        get(out, &format!("http://slow.test:{port}/hello")),
        "hello from a\n"
    );
}

/// A name dropped as idle while its refresh's lookup is under way, and
/// watched again before that lookup ends, is still refreshed afterwards
/// (the old lookup answered the new watch and its task ended: nothing
/// followed the new watch, and its addresses were never looked up again).
#[test]
fn a_name_watched_again_mid_lookup_is_still_refreshed() {
    let (port, _app, ns, proxy) = app_and_proxy(
        1000,
        &[
            ("LINKERD2_PROXY_DNS_MIN_TTL", "1s"),
            ("LINKERD2_PROXY_DNS_MAX_TTL", "1s"),
            ("LINKERD2_PROXY_OUTBOUND_DISCOVERY_IDLE_TIMEOUT", "1s"),
        ],
    );
    let out = proxy.outbound_addr().unwrap();
    let url = format!("http://again.test:{port}/hello");
    // Looked up (1 s), then refreshed at its TTL (1 s later, another 1 s
    // lookup); no request meanwhile, so it is dropped as idle during that
    // lookup, and this request watches it again before the lookup ends.
    assert_eq!(get(out, &url), "hello from a\n");
    let answered = std::time::Instant::now();
    std::thread::sleep(Duration::from_millis(1700));
    assert_eq!(get(out, &url), "hello from a\n");
    // In use from now on: refreshed every TTL plus a lookup.
    let queries = || ns.answered.load(Ordering::SeqCst);
    let mut before = None;
    while answered.elapsed() < Duration::from_millis(7000) {
        assert_eq!(get(out, &url), "hello from a\n");
        if before.is_none() && answered.elapsed() >= Duration::from_millis(3500) {
            before = Some(queries());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = before.unwrap();
    assert!(
        queries() > before,
        "no lookup of the name after it was watched again ({before} in all)"
    );
}

/// A name the nameserver says does not exist (NXDOMAIN), or a nameserver
/// that fails (SERVFAIL): requests get 503 at once with DNS's reason, not
/// "no endpoints" after the fail-fast wait, and the name resolves once
/// the nameserver answers it.
#[test]
fn dns_failures_are_503_at_once_with_the_reason() {
    let (port, _app, ns, proxy) = app_and_proxy(
        0,
        &[
            ("LINKERD2_PROXY_DNS_MIN_TTL", "1s"),
            ("LINKERD2_PROXY_DNS_MAX_TTL", "1s"),
            // Were the requests below queued, they would wait this long.
            ("LINKERD2_PROXY_OUTBOUND_HTTP_FAILFAST_TIMEOUT", "60s"),
        ],
    );
    let out = proxy.outbound_addr().unwrap();
    let error_of = |url: &str| {
        let o = Command::new("curl")
            .args(["-sS", "-i", "--max-time", "20", "-x"])
            .arg(format!("http://{out}"))
            .arg(url)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let status = text.split(' ').nth(1).unwrap_or("").to_string();
        let error = text
            .lines()
            .find_map(|l| l.strip_prefix("l5d-proxy-error: "))
            .unwrap_or("")
            .trim()
            .to_string();
        (status, error)
    };
    for (code, reason) in [(3, "does not exist"), (2, "server failure")] {
        ns.code.store(code, Ordering::SeqCst);
        let url = format!("http://gone{code}.test:{port}/hello");
        for _ in 0..2 {
            let started = std::time::Instant::now();
            let (status, error) = error_of(&url);
            assert_eq!(status, "503", "{code}: {error}");
            assert!(error.contains(reason), "{code}: {error}");
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "queued until the fail-fast timeout"
            );
        }
    }
    ns.code.store(0, Ordering::SeqCst);
    let ok = eventually(Duration::from_secs(15), || {
        status(out, &format!("http://gone3.test:{port}/hello")) == "200"
    });
    assert!(ok, "the name never resolved once it existed");
}
