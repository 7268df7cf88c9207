//! Inbound, before anything is read: is this connection mutual TLS meant
//! for this proxy? The client's first bytes are peeked (`MSG_PEEK`: left
//! in the socket) until they hold a whole ClientHello or are clearly not
//! one, so whatever the answer the bytes are still there for the TLS
//! handshake, the relay or protocol detection.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

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
    /// The client closed, failed, was evicted, or sent nothing in time.
    Gone,
}

/// Longest pause between peeks at a ClientHello still arriving (readiness
/// cannot tell "more bytes" from "the same bytes", so incomplete hellos are
/// polled; a whole one nearly always arrives in the first segment).
const MAX_PAUSE: Duration = Duration::from_millis(20);

/// Peeks until the client's bytes say what they are, or `deadline`.
/// `local`: this proxy's identity, when a ClientHello naming it is
/// [`Peeked::Mesh`] (inbound); outbound, every ClientHello is
/// [`Peeked::OtherTls`].
pub(crate) async fn peek(
    client: &TcpStream,
    local: Option<&Name>,
    deadline: Instant,
    eviction: &Eviction,
) -> Peeked {
    // Most hellos fit in 4 KiB; the buffer grows to the limit if not.
    let mut buf = vec![0u8; 4096];
    let mut pause = Duration::from_millis(1);
    let mut seen = 0;
    loop {
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
                        if n > seen {
                            pause = Duration::from_millis(1);
                            seen = n;
                        }
                        let wait = pause.min(deadline.saturating_duration_since(Instant::now()));
                        if wait.is_zero() || !sleep_or_evict(wait, eviction).await {
                            return Peeked::Gone;
                        }
                        pause = (pause * 2).min(MAX_PAUSE);
                    }
                }
            }
            Err(nix::errno::Errno::EAGAIN) => {
                let wait = deadline.saturating_duration_since(Instant::now());
                let ready = monoio::select! {
                    r = client.readable(false) => r.is_ok(),
                    _ = monoio::time::sleep(wait) => false,
                    _ = eviction.wait() => false,
                };
                if !ready {
                    return Peeked::Gone;
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

/// Sleeps `d`; false if evicted meanwhile.
async fn sleep_or_evict(d: Duration, eviction: &Eviction) -> bool {
    monoio::select! {
        _ = monoio::time::sleep(d) => true,
        _ = eviction.wait() => false,
    }
}
