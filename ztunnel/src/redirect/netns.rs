//! Network namespace cookies: how the programs tell pods apart.
//!
//! # Minimum kernel version
//!
//! 5.14, for `SO_NETNS_COOKIE`.

use std::{
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd},
};

use socket2::{Domain, Socket, Type};

/// The cookie of the network namespace `netns` (an open file of `/run/netns/<name>` or
/// `/proc/<pid>/ns/net`): the value the programs get from `bpf_get_netns_cookie` and look up in
/// `ENROLLED`.
///
/// Read with `getsockopt(SO_NETNS_COOKIE)` on a socket created inside the namespace, by a
/// short-lived thread that enters the namespace and leaves it again: the caller's thread never
/// changes namespace.
///
/// # Errors
/// If the thread cannot be spawned, `setns` fails (not a network namespace, no
/// `CAP_SYS_ADMIN`), or the kernel lacks `SO_NETNS_COOKIE`.
#[doc(alias = "SO_NETNS_COOKIE")]
pub fn netns_cookie(netns: &File) -> io::Result<u64> {
    let target = netns.try_clone()?;
    std::thread::Builder::new()
        .name("netns-cookie".to_owned())
        .spawn(move || cookie_inside(&target))?
        .join()
        .map_err(|_| io::Error::other("the netns-cookie thread panicked"))?
}

/// Enters `target`, reads its cookie, and returns to the thread's original namespace.
fn cookie_inside(target: &File) -> io::Result<u64> {
    let home = File::open("/proc/thread-self/ns/net")?;
    setns(target)?;
    let cookie = socket_netns_cookie();
    let back = setns(&home);
    let cookie = cookie?;
    back?;
    Ok(cookie)
}

/// Moves the calling thread into the network namespace `ns`.
fn setns(ns: &File) -> io::Result<()> {
    // SAFETY: `setns` only reads the fd, which `ns` keeps open for the call, and changes the
    // calling thread's network namespace; no memory is involved.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `SO_NETNS_COOKIE` of a fresh socket in the calling thread's namespace. A Unix socket, so
/// that a namespace without IP works too.
fn socket_netns_cookie() -> io::Result<u64> {
    let socket = Socket::new(Domain::UNIX, Type::DGRAM, None)?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` is a valid, writable u64 and `len` is its size; the kernel writes at most
    // `len` bytes; the fd is open for the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            mesh_common::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}
