//! Names resolved through DNS by the control core: a worker meets a name
//! (an explicit-proxy request), the control core asks a nameserver on
//! loopback over its monoio sockets, and refreshes the answer when its TTL
//! runs out, while requests keep flowing.

mod common;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::http::origin_on;
use common::*;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use ringmesh_engine::IoDriver;

/// A nameserver answering `A` for every name with the address in `ip`
/// (TTL 1 s), and no AAAA. Counts the A queries it answered.
struct Nameserver {
    addr: SocketAddr,
    ip: Arc<AtomicU32>,
    answered: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Nameserver {
    fn start(ip: [u8; 4]) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let ip = Arc::new(AtomicU32::new(u32::from_be_bytes(ip)));
        let answered = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (ip2, answered2, stop2) = (ip.clone(), answered.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop2.load(Ordering::Relaxed) {
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
                    .set_response_code(ResponseCode::NoError)
                    .add_query(q.clone());
                if q.query_type() == RecordType::A {
                    let ip = std::net::Ipv4Addr::from(ip2.load(Ordering::SeqCst));
                    reply.add_answer(Record::from_rdata(q.name().clone(), 1, RData::A(A(ip))));
                    answered2.fetch_add(1, Ordering::SeqCst);
                }
                let _ = socket.send_to(&reply.to_vec().unwrap(), from);
            }
        });
        Self {
            addr,
            ip,
            answered,
            stop,
        }
    }
}

impl Drop for Nameserver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

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
