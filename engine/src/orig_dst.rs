//! The original destination of a redirected connection (`SO_ORIGINAL_DST`,
//! set by iptables/nftables `REDIRECT`).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::socket::{getsockopt, sockopt};

/// Where a client meant to connect: the NAT original destination if the
/// connection was redirected, else the socket's own local address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrigDstAddr(pub SocketAddr);

/// Reads the original destination of `sock`. When conntrack has no NAT entry
/// for it (ENOENT: the connection was not redirected) this is `local`.
pub fn orig_dst_addr(sock: &impl AsRawFd, local: SocketAddr) -> OrigDstAddr {
    #[allow(unsafe_code)]
    // SAFETY: the fd belongs to `sock`, which outlives this borrow; we only
    // call getsockopt on it.
    let fd = unsafe { BorrowedFd::borrow_raw(sock.as_raw_fd()) };
    let addr = if local.is_ipv4() {
        getsockopt(&fd, sockopt::OriginalDst).ok().map(|sa| {
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
                u16::from_be(sa.sin_port),
            ))
        })
    } else {
        getsockopt(&fd, sockopt::Ip6tOriginalDst).ok().map(|sa| {
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sa.sin6_addr.s6_addr),
                u16::from_be(sa.sin6_port),
                sa.sin6_flowinfo,
                sa.sin6_scope_id,
            ))
        })
    };
    OrigDstAddr(addr.unwrap_or(local))
}
