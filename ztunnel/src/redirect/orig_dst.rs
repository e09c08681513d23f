//! [`OrigDstLookup`]: the agent's side of `ORIG_DST_BY_TUPLE`.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use aya::maps::{HashMap, MapData};
use mesh_common::{AF_INET, AF_INET6, OrigDst, TupleKey};

/// Takes from `ORIG_DST_BY_TUPLE` where an accepted, redirected connection was going, keyed
/// by the pod's namespace and the accepted socket's peer (the app socket's local address).
/// This works whatever cgroup the agent itself is in; `SO_ORIGINAL_DST` (answered by
/// `mesh_getsockopt`) needs the agent's sockets inside the watched cgroup.
#[derive(Clone)]
pub struct OrigDstLookup(Arc<Mutex<HashMap<MapData, TupleKey, OrigDst>>>);

impl OrigDstLookup {
    /// A reader of `map` (the main object's `ORIG_DST_BY_TUPLE`).
    pub(super) fn new(map: HashMap<MapData, TupleKey, OrigDst>) -> Self {
        Self(Arc::new(Mutex::new(map)))
    }

    /// The original destination of the connection from `peer` accepted in the namespace
    /// `netns_cookie`, taken out of the map: an entry serves one connection, so that a later
    /// connection from the same port that was not re-keyed (its cookie entry evicted, say)
    /// finds nothing and is refused rather than sent where an earlier one went.
    pub fn take(&self, netns_cookie: u64, peer: SocketAddr) -> Option<SocketAddr> {
        let (ip, family) = match peer.ip() {
            IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], AF_INET),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], AF_INET),
                None => {
                    let o = v6.octets();
                    let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                    ([w(0), w(4), w(8), w(12)], AF_INET6)
                }
            },
        };
        let key = TupleKey {
            netns_cookie,
            ip,
            port: u32::from(peer.port()),
            family: u32::from(family),
        };
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let d = map.get(&key, 0).ok()?;
        if let Err(err) = map.remove(&key) {
            tracing::debug!(error = %err, %peer, "removing a used original destination");
        }
        drop(map);
        let port = u16::from_be(d.port);
        let ip = if d.family == AF_INET6 {
            let mut o = [0u8; 16];
            for (i, w) in d.ip.iter().enumerate() {
                o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            IpAddr::from(o)
        } else {
            IpAddr::from(d.ip[0].to_ne_bytes())
        };
        Some(SocketAddr::new(ip, port))
    }
}
