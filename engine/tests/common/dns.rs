//! A nameserver on loopback for tests (UDP, hickory-proto's messages).

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};

/// A nameserver answering `A` for every name with the address in `ip`
/// (TTL 1 s), and no AAAA. Counts the A queries it answered.
pub struct Nameserver {
    pub addr: SocketAddr,
    pub ip: Arc<AtomicU32>,
    pub answered: Arc<AtomicUsize>,
    /// Milliseconds each answer waits before it goes (a slow nameserver).
    pub delay_ms: Arc<AtomicU64>,
    /// A response code other than 0 (3: NXDOMAIN, 2: SERVFAIL): answered
    /// with it and no records.
    pub code: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
}

impl Nameserver {
    pub fn start(ip: [u8; 4]) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let ip = Arc::new(AtomicU32::new(u32::from_be_bytes(ip)));
        let answered = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (ip2, answered2, stop2) = (ip.clone(), answered.clone(), stop.clone());
        let delay2 = delay_ms.clone();
        let code = Arc::new(AtomicU16::new(0));
        let code2 = code.clone();
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
                let rcode = ResponseCode::from_low(code2.load(Ordering::SeqCst) as u8);
                reply
                    .set_id(query.id())
                    .set_message_type(MessageType::Response)
                    .set_op_code(query.op_code())
                    .set_response_code(rcode)
                    .add_query(q.clone());
                if q.query_type() == RecordType::A && rcode == ResponseCode::NoError {
                    let ip = std::net::Ipv4Addr::from(ip2.load(Ordering::SeqCst));
                    reply.add_answer(Record::from_rdata(q.name().clone(), 1, RData::A(A(ip))));
                    answered2.fetch_add(1, Ordering::SeqCst);
                }
                let bytes = reply.to_vec().unwrap();
                match delay2.load(Ordering::SeqCst) {
                    0 => {
                        let _ = socket.send_to(&bytes, from);
                    }
                    ms => {
                        let socket = socket.try_clone().unwrap();
                        std::thread::spawn(move || {
                            std::thread::sleep(Duration::from_millis(ms));
                            let _ = socket.send_to(&bytes, from);
                        });
                    }
                }
            }
        });
        Self {
            addr,
            ip,
            answered,
            delay_ms,
            code,
            stop,
        }
    }
}

impl Drop for Nameserver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
