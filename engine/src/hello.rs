//! Inbound, before anything is read: is this connection mutual TLS meant
//! for this proxy? The client's first bytes are peeked (`MSG_PEEK`: left
//! in the socket) until they hold a whole ClientHello or are clearly not
//! one, so whatever the answer the bytes are still there for the TLS
//! handshake, the relay or protocol detection.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Instant;

use monoio::net::TcpStream;
use nix::sys::socket::{recv, MsgFlags};
use ringmesh_identity::Name;
use ringmesh_protocols::client_hello::{self, Hello, MAX_HELLO};

use crate::undecided::Eviction;

/// What the client's first bytes are.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Peeked {
    /// A ClientHello for this proxy's identity: terminate it.
    Mesh,
    /// TLS for another server (its SNI, if any): relay it untouched.
    OtherTls(Option<String>),
    /// Not TLS.
    Plain,
    /// The client closed, failed or was evicted.
    Gone,
    /// No whole ClientHello (or no byte) by the deadline.
    TimedOut,
}

/// Peeks until the client's bytes say what they are, or `deadline`.
/// `local`: this proxy's identity, when a ClientHello naming it is
/// [`Peeked::Mesh`] (inbound); outbound, every ClientHello is
/// [`Peeked::OtherTls`].
///
/// A ClientHello still arriving is waited for without polling: readiness
/// cannot tell "more bytes" from "the bytes already peeked", so the
/// socket's receive low-water mark (`SO_RCVLOWAT`) is raised above what
/// it holds, and it is readable again only once more has come (or the
/// client closed). A whole hello nearly always arrives in the first
/// segment, and pays nothing of this.
pub(crate) async fn peek(
    client: &TcpStream,
    local: Option<&Name>,
    deadline: Instant,
    eviction: &Eviction,
) -> Peeked {
    let fd = client.as_raw_fd();
    let mut lowat = LowWater { fd, raised: false };
    let peeked = peek_with(client, local, deadline, eviction, &mut lowat).await;
    lowat.restore();
    peeked
}

async fn peek_with(
    client: &TcpStream,
    local: Option<&Name>,
    deadline: Instant,
    eviction: &Eviction,
    lowat: &mut LowWater,
) -> Peeked {
    // Most hellos fit in 4 KiB; the buffer grows to the limit if not.
    let mut buf = vec![0u8; 4096];
    let mut seen = 0;
    loop {
        #[cfg(test)]
        tests::PEEKS.with(|p| p.set(p.get() + 1));
        match recv(
            client.as_raw_fd(),
            &mut buf,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(0) => return Peeked::Gone,
            Ok(n) => {
                if buf[0] != 0x16 {
                    return Peeked::Plain;
                }
                match client_hello::parse(&buf[..n]) {
                    Hello::NotTls => return Peeked::Plain,
                    Hello::Complete { sni } => {
                        return match sni {
                            Some(s) if local.is_some_and(|l| s == l.as_str()) => Peeked::Mesh,
                            sni => Peeked::OtherTls(sni),
                        };
                    }
                    Hello::Incomplete if n >= MAX_HELLO => return Peeked::Plain,
                    Hello::Incomplete if n == buf.len() => buf.resize(MAX_HELLO, 0),
                    Hello::Incomplete => {
                        // Readable with no byte more than last time: the
                        // client closed its side (a hello that can never
                        // end) or failed.
                        if n == seen || !lowat.raise_above(n) {
                            return Peeked::Gone;
                        }
                        seen = n;
                        if !readable_or_gone(client, deadline, eviction).await {
                            return gone_or_late(deadline);
                        }
                    }
                }
            }
            Err(nix::errno::Errno::EAGAIN) => {
                if !readable_or_gone(client, deadline, eviction).await {
                    return gone_or_late(deadline);
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                tracing::debug!(error = %io::Error::from(e), "client failed before its first bytes");
                return Peeked::Gone;
            }
        }
    }
}

/// After a wait that ended without bytes: late if the deadline passed.
fn gone_or_late(deadline: Instant) -> Peeked {
    if Instant::now() >= deadline {
        Peeked::TimedOut
    } else {
        Peeked::Gone
    }
}

/// Waits for `client` to be readable; false at `deadline`, on eviction,
/// or on an error.
async fn readable_or_gone(client: &TcpStream, deadline: Instant, eviction: &Eviction) -> bool {
    let wait = deadline.saturating_duration_since(Instant::now());
    monoio::select! {
        r = client.readable(false) => r.is_ok(),
        _ = monoio::time::sleep(wait) => false,
        _ = eviction.wait() => false,
    }
}

/// A socket's receive low-water mark, raised while a hello arrives and
/// put back (Linux's default, 1) before the socket goes on.
struct LowWater {
    fd: std::os::fd::RawFd,
    raised: bool,
}

impl LowWater {
    /// Readable only with more than `n` bytes (false if it cannot be set).
    fn raise_above(&mut self, n: usize) -> bool {
        let ok = self.set(n.saturating_add(1));
        self.raised |= ok;
        ok
    }

    fn restore(&mut self) {
        if self.raised && !self.set(1) {
            tracing::debug!("could not put a socket's receive low-water mark back");
        }
        self.raised = false;
    }

    fn set(&self, bytes: usize) -> bool {
        let v = nix::libc::c_int::try_from(bytes).unwrap_or(nix::libc::c_int::MAX);
        #[allow(unsafe_code)]
        // SAFETY: `fd` is the caller's open socket for this call; the
        // option's value is a c_int that lives through it, its size given.
        let r = unsafe {
            nix::libc::setsockopt(
                self.fd,
                nix::libc::SOL_SOCKET,
                nix::libc::SO_RCVLOWAT,
                std::ptr::addr_of!(v).cast(),
                std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t,
            )
        };
        r == 0
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::io::Write;
    use std::time::Duration;

    use super::*;
    use crate::testing::{both_drivers, TestCa};

    thread_local! {
        /// `recv` peeks made on this thread.
        pub(super) static PEEKS: Cell<usize> = const { Cell::new(0) };
    }

    /// A connected pair: the std client and the accepted monoio stream.
    fn pair() -> (std::net::TcpStream, TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (accepted, _) = l.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        (client, TcpStream::from_std(accepted).unwrap())
    }

    fn client_hello(sni: &str) -> Vec<u8> {
        let cfg = TestCa::new().configs("client.example").client;
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(cfg, name).unwrap();
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).unwrap();
        hello
    }

    /// A ClientHello arriving in pieces is waited for, not polled: its
    /// first bytes are peeked, then nothing until the rest has come (the
    /// socket's low-water mark above what it held), and the socket goes
    /// on with its low-water mark put back.
    #[test]
    fn a_hello_in_pieces_is_waited_for_without_polling() {
        both_drivers(async || {
            let hello = client_hello("web.example");
            let (mut client, stream) = pair();
            client.write_all(&hello[..3]).unwrap();
            let rest = hello[3..].to_vec();
            let writer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                client.write_all(&rest).unwrap();
                client
            });
            PEEKS.with(|p| p.set(0));
            let deadline = Instant::now() + Duration::from_secs(5);
            let got = peek(&stream, None, deadline, &Eviction::default()).await;
            assert_eq!(got, Peeked::OtherTls(Some("web.example".into())));
            let peeks = PEEKS.with(Cell::get);
            assert!(peeks <= 3, "{peeks} peeks in 300 ms");
            assert_eq!(low_water(&stream), 1, "the low-water mark was not put back");
            crate::testing::finished(writer).await;
        });
    }

    /// A client that sends part of a hello and closes its side can never
    /// finish it: given up at once, not at the deadline.
    #[test]
    fn a_hello_cut_by_a_half_close_is_given_up() {
        both_drivers(async || {
            let hello = client_hello("web.example");
            let (mut client, stream) = pair();
            client.write_all(&hello[..10]).unwrap();
            let closer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                client.shutdown(std::net::Shutdown::Write).unwrap();
                client
            });
            let started = Instant::now();
            let deadline = started + Duration::from_secs(5);
            let got = peek(&stream, None, deadline, &Eviction::default()).await;
            assert_eq!(got, Peeked::Gone);
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{:?}",
                started.elapsed()
            );
            crate::testing::finished(closer).await;
        });
    }

    fn low_water(s: &TcpStream) -> nix::libc::c_int {
        let mut v: nix::libc::c_int = 0;
        let mut len = std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t;
        #[allow(unsafe_code)]
        // SAFETY: the fd is `s`'s, open for the call; `v` and `len` outlive it.
        let r = unsafe {
            nix::libc::getsockopt(
                s.as_raw_fd(),
                nix::libc::SOL_SOCKET,
                nix::libc::SO_RCVLOWAT,
                std::ptr::addr_of_mut!(v).cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0);
        v
    }
}
