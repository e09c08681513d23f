//! Shared mode: the agent connects to a pod's app from the client's own address, so that the
//! app sees who called it, as Istio's in-pod ztunnel does.
//!
//! The agent's socket is transparent (`IP_TRANSPARENT`), bound to the client's address and
//! marked [`ORIG_SRC_MARK`]. The app's replies go to an address that is not the pod's, and
//! would leave by the pod's default route; Istio brings them back with iptables connection
//! marks. We need no iptables: with `net.ipv4.tcp_fwmark_accept` on in the pod's namespace the
//! app's accepted socket takes the SYN's mark, so every packet it sends on that connection
//! carries [`ORIG_SRC_MARK`], and a rule sends marked packets to a table
//! ([`ORIG_SRC_ROUTE_TABLE`]) whose one route delivers everything locally, to the agent's
//! socket. The agent's other sockets carry its own mark and route as before.
#![allow(unsafe_code)]

use mesh_common::{ORIG_SRC_MARK, ORIG_SRC_ROUTE_TABLE};
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Before the main table (32766), as Istio's in-pod rule.
const RULE_PRIORITY: u32 = 32764;
const FWMARK_ACCEPT: &str = "/proc/sys/net/ipv4/tcp_fwmark_accept";

/// What [`install`] set up in one namespace (IPv4 always), for [`remove`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Installed {
    pub v6: bool,
    /// `tcp_fwmark_accept` as it was found.
    fwmark_accept_was: bool,
}

impl Installed {
    /// Whether a connection to `dst` can keep the client's address (of the same family).
    pub fn covers(&self, dst: SocketAddr) -> bool {
        dst.is_ipv4() || self.v6
    }

    /// This set-up, made again over `earlier`'s whose removal was called off: what was found
    /// before any of it is `earlier`'s to know.
    pub fn taking_over(self, earlier: Installed) -> Installed {
        Installed {
            fwmark_accept_was: earlier.fwmark_accept_was,
            ..self
        }
    }
}

/// Serialises [`install`] and [`remove`]: a namespace enrolled again while its earlier
/// removal is pending must not have its new set-up removed.
static SETUP: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Why the source cannot be kept in a namespace.
#[derive(Debug, thiserror::Error)]
pub enum OrigSrcError {
    #[error("entering the namespace: {0}")]
    Enter(io::Error),
    #[error("opening a route netlink socket: {0}")]
    Netlink(io::Error),
    #[error("setting {FWMARK_ACCEPT}: {0}")]
    FwmarkAccept(io::Error),
    #[error("adding the IPv4 rule `fwmark {ORIG_SRC_MARK:#x} lookup {ORIG_SRC_ROUTE_TABLE}`: {0}")]
    Rule(io::Error),
    #[error("adding the IPv4 route `local 0.0.0.0/0 dev lo table {ORIG_SRC_ROUTE_TABLE}`: {0}")]
    Route(io::Error),
}

/// Sets up the namespace `ns` so that connections [`prepare`]d with [`ORIG_SRC_MARK`] work.
/// Idempotent: a restarted agent finds the rule and route in place. IPv6 is set up when the
/// namespace has it; without IPv4 nothing is.
///
/// # Errors
/// If the namespace cannot be entered or IPv4 cannot be set up; nothing is left half done.
pub fn install(ns: &File) -> Result<Installed, OrigSrcError> {
    let _serial = SETUP.lock().unwrap_or_else(|p| p.into_inner());
    crate::netns::run_in(ns, || {
        let nl = Netlink::open().map_err(OrigSrcError::Netlink)?;
        let found_on = std::fs::read_to_string(FWMARK_ACCEPT)
            .map(|v| v.trim() == "1")
            .map_err(OrigSrcError::FwmarkAccept)?;
        let v4 = libc::AF_INET as u8;
        let created = nl.rule(Op::Add, v4).map_err(OrigSrcError::Rule)?;
        // A rule already there is an earlier agent's, and so is the setting's "on": what that
        // agent found is not known, and Linux's default is off.
        let was = found_on && created;
        let undo = |sysctl_set: bool| {
            if created && let Err(e) = nl.rule(Op::Delete, v4) {
                tracing::warn!(error = %e, "undoing a half set-up: removing the rule");
            }
            if sysctl_set && let Err(e) = std::fs::write(FWMARK_ACCEPT, "0") {
                tracing::warn!(error = %e, "undoing a half set-up: resetting {FWMARK_ACCEPT}");
            }
        };
        if !found_on && let Err(e) = std::fs::write(FWMARK_ACCEPT, "1") {
            undo(false);
            return Err(OrigSrcError::FwmarkAccept(e));
        }
        if let Err(e) = nl.local_route(Op::Add, v4) {
            undo(!found_on);
            return Err(OrigSrcError::Route(e));
        }
        let v6 = libc::AF_INET6 as u8;
        let v6_done = nl
            .rule(Op::Add, v6)
            .and_then(|_| nl.local_route(Op::Add, v6).map(|_| ()));
        if let Err(e) = &v6_done {
            let _ = nl.rule(Op::Delete, v6);
            if e.raw_os_error() != Some(libc::EAFNOSUPPORT) {
                tracing::warn!(error = %e, "IPv6 clients' addresses are not kept: setting up IPv6 routing failed");
            }
        }
        Ok(Installed {
            v6: v6_done.is_ok(),
            fwmark_accept_was: was,
        })
    })
    .map_err(OrigSrcError::Enter)?
}

/// Undoes [`install`] in `ns` (the pod stays, but leaves the mesh), unless `called_off` is
/// set by then (the namespace was enrolled again).
///
/// # Errors
/// If the namespace cannot be entered or a rule or route cannot be removed; what is already
/// gone is not an error.
pub fn remove(
    ns: &File,
    installed: Installed,
    called_off: &std::sync::atomic::AtomicBool,
) -> io::Result<()> {
    let _serial = SETUP.lock().unwrap_or_else(|p| p.into_inner());
    if called_off.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(());
    }
    crate::netns::run_in(ns, || {
        let nl = Netlink::open()?;
        let mut first_error = None;
        let families = [
            (true, libc::AF_INET as u8),
            (installed.v6, libc::AF_INET6 as u8),
        ];
        for (_, family) in families.iter().filter(|(on, _)| *on) {
            for r in [
                nl.rule(Op::Delete, *family),
                nl.local_route(Op::Delete, *family),
            ] {
                if let Err(e) = r
                    && !matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH))
                {
                    first_error.get_or_insert(e);
                }
            }
        }
        if !installed.fwmark_accept_was
            && let Err(e) = std::fs::write(FWMARK_ACCEPT, "0")
        {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    })?
}

/// Prepares `socket` to connect from `src`, the client's address: transparent, marked
/// `mark`, bound.
///
/// # Errors
/// If an option cannot be set or `src` cannot be bound.
pub fn prepare(socket: &socket2::Socket, src: SocketAddr, mark: Option<u32>) -> io::Result<()> {
    if src.is_ipv4() {
        socket.set_ip_transparent(true)?;
    } else {
        let on: libc::c_int = 1;
        // SAFETY: a valid socket fd, and a c_int option value of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_IPV6,
                libc::IPV6_TRANSPARENT,
                (&raw const on).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if let Some(mark) = mark {
        socket.set_mark(mark)?;
    }
    socket.bind(&SocketAddr::new(src.ip(), 0).into())
}

#[derive(Clone, Copy)]
enum Op {
    Add,
    Delete,
}

/// A route netlink socket in the calling thread's namespace, speaking just the two requests
/// we need.
struct Netlink(OwnedFd);

// From <linux/rtnetlink.h> and <linux/fib_rules.h>.
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const NLMSG_ERROR: u16 = 2;
const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_TABLE: u16 = 15;
const FRA_FWMASK: u16 = 16;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const FR_ACT_TO_TBL: u8 = 1;
const RTN_LOCAL: u8 = 2;
const RT_SCOPE_HOST: u8 = 254;
const RTPROT_BOOT: u8 = 3;
/// `lo` is the first interface of every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

impl Netlink {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// `ip rule add|del fwmark ORIG_SRC_MARK lookup ORIG_SRC_ROUTE_TABLE pref RULE_PRIORITY`.
    fn rule(&self, op: Op, family: u8) -> io::Result<bool> {
        let table = ORIG_SRC_ROUTE_TABLE as u8;
        self.change(
            op,
            (RTM_NEWRULE, RTM_DELRULE),
            // struct fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action.
            [family, 0, 0, 0, table, 0, 0, FR_ACT_TO_TBL],
            &[
                (FRA_PRIORITY, RULE_PRIORITY),
                (FRA_FWMARK, ORIG_SRC_MARK),
                (FRA_FWMASK, u32::MAX),
                (FRA_TABLE, ORIG_SRC_ROUTE_TABLE),
            ],
        )
    }

    /// `ip route add|del local default dev lo table ORIG_SRC_ROUTE_TABLE`.
    fn local_route(&self, op: Op, family: u8) -> io::Result<bool> {
        let table = ORIG_SRC_ROUTE_TABLE as u8;
        self.change(
            op,
            (RTM_NEWROUTE, RTM_DELROUTE),
            // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type.
            [
                family,
                0,
                0,
                0,
                table,
                RTPROT_BOOT,
                RT_SCOPE_HOST,
                RTN_LOCAL,
            ],
            &[
                (RTA_TABLE, ORIG_SRC_ROUTE_TABLE),
                (RTA_OIF, LOOPBACK_IFINDEX),
            ],
        )
    }

    /// One add or delete (`kinds`): the message's 8 header bytes, its 32-bit flags (none) and
    /// `u32` attributes (each 8 bytes long, so no padding follows).
    fn change(
        &self,
        op: Op,
        (add, delete): (u16, u16),
        header: [u8; 8],
        attrs: &[(u16, u32)],
    ) -> io::Result<bool> {
        let mut body = header.to_vec();
        body.extend_from_slice(&0u32.to_ne_bytes());
        for (kind, value) in attrs {
            body.extend_from_slice(&8u16.to_ne_bytes());
            body.extend_from_slice(&kind.to_ne_bytes());
            body.extend_from_slice(&value.to_ne_bytes());
        }
        let kind = match op {
            Op::Add => add,
            Op::Delete => delete,
        };
        self.request(kind, op, &body)
    }

    /// Sends one request and reads its acknowledgement. Adding what exists already succeeds,
    /// with `false` (nothing was created).
    fn request(&self, kind: u16, op: Op, body: &[u8]) -> io::Result<bool> {
        let mut flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
        if let Op::Add = op {
            flags |= (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
        }
        let len = 16 + body.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel assigns it
        msg.extend_from_slice(body);
        // SAFETY: `msg` is a valid buffer of the length passed; the kernel is the destination
        // (a zeroed sockaddr_nl with the family set).
        let sent = unsafe {
            let mut to: libc::sockaddr_nl = std::mem::zeroed();
            to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            libc::sendto(
                self.0.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&raw const to).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut reply = [0u8; 4096];
        // SAFETY: `reply` is a writable buffer of the length passed.
        let got = unsafe {
            libc::recv(
                self.0.as_raw_fd(),
                reply.as_mut_ptr().cast(),
                reply.len(),
                0,
            )
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        let reply = &reply[..got as usize];
        // nlmsghdr (16 bytes), then for NLMSG_ERROR a negative errno (0 = acknowledged).
        let kind = reply.get(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]]));
        let errno = reply
            .get(16..20)
            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
        match (kind, errno) {
            (Some(NLMSG_ERROR), Some(0)) => Ok(true),
            (Some(NLMSG_ERROR), Some(e)) if e == -libc::EEXIST && matches!(op, Op::Add) => {
                Ok(false)
            }
            (Some(NLMSG_ERROR), Some(e)) => Err(io::Error::from_raw_os_error(-e)),
            _ => Err(io::Error::other("unexpected netlink reply")),
        }
    }
}
