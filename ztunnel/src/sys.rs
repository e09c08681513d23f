//! Sockets below std and tokio: the raw options they do not offer, listeners with our
//! options, and the form of the addresses they report.
#![allow(unsafe_code)]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

/// `SO_ORIGINAL_DST` (and its IPv6 twin), the destination before redirection.
const SO_ORIGINAL_DST: libc::c_int = 80;

/// A non-blocking listener on `addr` (in the calling thread's namespace) with `mark` set; an
/// IPv6 address takes IPv4 too (as `::ffff:a.b.c.d`).
pub fn listen(addr: SocketAddr, mark: Option<u32>) -> std::io::Result<std::net::TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    if let Some(m) = mark {
        s.set_mark(m)?;
    }
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(false)?;
    }
    s.bind(&addr.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// `addr` with an IPv4-mapped IPv6 address, as a dual-stack listener names its IPv4 ends
/// (`::ffff:a.b.c.d`), turned back into IPv4: policy, metrics and lookups want it so.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The original destination of a redirected connection, or `None` when it was not redirected.
pub fn original_dst(socket: &impl AsRawFd) -> Option<SocketAddr> {
    let fd = socket.as_raw_fd();
    // SAFETY: `storage` is large enough for either address family and `len` says so; the
    // kernel writes at most `len` bytes.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let ptr = &mut storage as *mut _ as *mut libc::c_void;
        if libc::getsockopt(fd, libc::SOL_IP, SO_ORIGINAL_DST, ptr, &mut len) == 0
            && storage.ss_family as libc::c_int == libc::AF_INET
        {
            let sin = &*(ptr as *const libc::sockaddr_in);
            return Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )));
        }
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getsockopt(fd, libc::SOL_IPV6, SO_ORIGINAL_DST, ptr, &mut len) == 0
            && storage.ss_family as libc::c_int == libc::AF_INET6
        {
            let sin6 = &*(ptr as *const libc::sockaddr_in6);
            return Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                0,
                0,
            )));
        }
    }
    None
}

/// `buf` filled from the kernel's random source (never blocks once the pool is initialised,
/// which it is long before an agent starts).
pub fn random_bytes(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}
