//! The [`SkLookup`] program `mesh_sk_lookup`: inbound capture. TCP arriving at an enrolled
//! namespace from outside is steered to the namespace's 15006 listener, keeping the original
//! destination as the accepted socket's local address.
//!
//! `sk_lookup` programs cannot call `bpf_get_netns_cookie`, so the program cannot tell
//! namespaces apart: each enrolled namespace gets its own copy of the object ([`Namespace`]),
//! with its own `INBOUND_LISTENER` and `CONFIG`, the maps it does not use shrunk to one entry.
//!
//! With a pin folder, each copy's link is pinned (`netns/<cookie>`, see `pins`) so that the
//! program outlives the agent: its `INBOUND_LISTENER` loses the listener when the agent's
//! socket closes, and the program then refuses inbound connections instead of letting them
//! reach the pod uncaptured. A restarted agent attaches a new copy when it enrolls the
//! namespace again and removes the old one's pin.
//!
//! # Minimum kernel version
//!
//! 5.9.

use std::{fs::File, io, net::SocketAddr, net::TcpListener, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::SockMap,
    programs::{
        SkLookup,
        links::{FdLink, PinnedLink},
        sk_lookup::SkLookupLinkId,
    },
};
use mesh_common::{INBOUND_LISTENER_SLOT_V4, INBOUND_LISTENER_SLOT_V6, maps, programs};

use super::{RedirectError, config_map, logs::LogReader, object::Object, program_mut};

/// Byte size of each copy's `AYA_LOGS` ring buffer (a page; the main object keeps the
/// 128 KiB the eBPF side declares). `mesh_sk_lookup` logs one short record per steering.
const LOG_RING_BYTES: u32 = 4096;

/// An enrolled namespace's copy of the object, with `mesh_sk_lookup` loaded and attached to the
/// namespace. Dropping it detaches the program, unless its link is pinned.
pub(super) struct Namespace {
    /// The copy; owns the sk_lookup link unless it is pinned.
    ebpf: Ebpf,
    /// The pinned link: dropping it leaves the program attached, removing its pin detaches.
    _pinned: Option<PinnedLink>,
    /// Forwards the copy's aya-log records; stopped on drop.
    _logs: LogReader,
}

/// A loader for the per-namespace copies: their maps other than the listener and the logs
/// hold a single entry. `kernel_btf`: it parses the kernel's BTF, as an object with CO-RE
/// relocations needs (tens of milliseconds and 15 MiB); without, it can serve every copy.
pub(super) fn copy_loader(kernel_btf: bool) -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    if !kernel_btf {
        loader.btf(None);
    }
    loader
        .map_max_entries(maps::ENROLLED, 1)
        .map_max_entries(maps::ORIG_DST_BY_COOKIE, 1)
        .map_max_entries(maps::ORIG_DST_BY_TUPLE, 1)
        .map_max_entries(maps::AYA_LOGS, LOG_RING_BYTES);
    loader
}

impl Namespace {
    /// Loads a copy of `object` for the namespace `netns` (cookie `cookie`) with `loader`
    /// (from [`copy_loader`]), writes its `CONFIG`, puts `inbound` in its `INBOUND_LISTENER`
    /// and attaches `mesh_sk_lookup` to the namespace; with `pin`, pins the link there,
    /// replacing (and so detaching) an earlier agent's copy pinned there. Needs a tokio
    /// runtime (for the log reader).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn load(
        loader: &mut EbpfLoader<'_>,
        cookie: u64,
        netns: &File,
        inbound: &TcpListener,
        mark: u32,
        log_level: u32,
        object: &Object,
        pin: Option<&Path>,
    ) -> Result<Self, RedirectError> {
        let copy = format!("sk_lookup copy for netns cookie {cookie}");
        let mut ebpf = loader
            .load(object.bytes())
            .map_err(|source| RedirectError::Object {
                object: object.to_string(),
                copy: copy.clone(),
                source: Box::new(source),
            })?;
        // Before loading the program: the reader keeps the ring buffer's fd open.
        let logs = LogReader::start(&mut ebpf, &copy)?;
        config_map::write(&mut ebpf, mark, log_level)?;
        let mut namespace = Self {
            ebpf,
            _pinned: None,
            _logs: logs,
        };
        namespace.set_listener(inbound)?;
        load(&mut namespace.ebpf)?;
        let id = attach(&mut namespace.ebpf, netns, cookie)?;
        if let Some(pin) = pin {
            namespace._pinned = Some(namespace.pin(id, pin)?);
        }
        Ok(namespace)
    }

    /// Pins the link `id` at `pin`, in place of an earlier agent's copy pinned there, which
    /// that detaches (the kernel runs both until then; a socket this copy selects wins over
    /// the old copy's refusal). Pinned beside it first and then renamed over it, so that the
    /// namespace never has neither: if pinning fails, the old copy stays.
    fn pin(&mut self, id: SkLookupLinkId, pin: &Path) -> Result<PinnedLink, RedirectError> {
        let link: FdLink = program_mut::<SkLookup>(&mut self.ebpf, programs::SK_LOOKUP)?
            .take_link(id)
            .map_err(|err| RedirectError::program(programs::SK_LOOKUP, "taking the link", err))?
            .into();
        let fresh = super::pins::staging(pin);
        let _ = std::fs::remove_file(&fresh);
        let pinned = link.pin(&fresh).map_err(|err| {
            RedirectError::link(
                programs::SK_LOOKUP,
                format!("pinning at {}", fresh.display()),
                io::Error::other(err.to_string()),
            )
        })?;
        std::fs::rename(&fresh, pin).map_err(|err| {
            let _ = std::fs::remove_file(&fresh);
            RedirectError::pin(pin, format!("renaming {} to it", fresh.display()), err)
        })?;
        Ok(pinned)
    }

    /// Puts `inbound` in `INBOUND_LISTENER` slot 0 (IPv4), and also in slot 1 (IPv6) when it is
    /// an IPv6 (dual-stack) socket.
    pub(super) fn set_listener(&mut self, inbound: &TcpListener) -> Result<(), RedirectError> {
        let map = self
            .ebpf
            .map_mut(maps::INBOUND_LISTENER)
            .ok_or(RedirectError::MissingMap {
                map: maps::INBOUND_LISTENER,
            })?;
        let mut listeners: SockMap<_> = SockMap::try_from(map).map_err(|err| {
            RedirectError::map(maps::INBOUND_LISTENER, "opening as a SockMap", err)
        })?;
        let v6 = matches!(inbound.local_addr(), Ok(SocketAddr::V6(_)));
        let slots: &[u32] = if v6 {
            &[INBOUND_LISTENER_SLOT_V4, INBOUND_LISTENER_SLOT_V6]
        } else {
            &[INBOUND_LISTENER_SLOT_V4]
        };
        for &slot in slots {
            listeners.set(slot, inbound, 0).map_err(|err| {
                RedirectError::map(
                    maps::INBOUND_LISTENER,
                    format!("putting the inbound listener in slot {slot}"),
                    err,
                )
            })?;
        }
        Ok(())
    }

    /// Sets the copy's `CONFIG[LOG_LEVEL]`.
    pub(super) fn set_log_level(&mut self, level: u32) -> Result<(), RedirectError> {
        config_map::set_log_level(&mut self.ebpf, level)
    }
}

/// Loads `mesh_sk_lookup` into the kernel.
pub(super) fn load(ebpf: &mut Ebpf) -> Result<(), RedirectError> {
    program_mut::<SkLookup>(ebpf, programs::SK_LOOKUP)?
        .load()
        .map_err(|err| RedirectError::program(programs::SK_LOOKUP, "loading", err))
}

/// Attaches the loaded `mesh_sk_lookup` to the network namespace `netns` (cookie `cookie`, for
/// the error). The link is owned by `ebpf`: dropping it detaches the program.
pub(super) fn attach(
    ebpf: &mut Ebpf,
    netns: &File,
    cookie: u64,
) -> Result<SkLookupLinkId, RedirectError> {
    program_mut::<SkLookup>(ebpf, programs::SK_LOOKUP)?
        .attach(netns)
        .map_err(|err| {
            RedirectError::program(
                programs::SK_LOOKUP,
                format!("attaching to the network namespace with cookie {cookie}"),
                err,
            )
        })
}
