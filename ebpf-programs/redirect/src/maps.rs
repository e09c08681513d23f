//! The maps. Names and key/value types come from `mesh_common`.
//!
//! # Pinning
//! The agent pins `ENROLLED`, `ORIG_DST_BY_COOKIE`, `ORIG_DST_BY_TUPLE` and `CONFIG` of its main
//! copy of this object in its pin folder (`EbpfLoader::map_pin_path`), so that they outlive a
//! restart. They are deliberately not declared pinned here (`PinningType::ByName`): the
//! per-namespace copies for `mesh_sk_lookup` load this same object, and aya would pin their
//! maps too (under `/sys/fs/bpf` unless told otherwise). A change to a pinned map's type, key,
//! value or size must be mirrored in the agent's table of pinned maps (`ztunnel/src/redirect/
//! pins.rs`), which replaces a pinned map of another layout instead of reusing it.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, SockMap},
};
use mesh_common::{
    ENROLLED_MAX_ENTRIES, INBOUND_LISTENER_SLOTS, ORIG_DST_MAX_ENTRIES, OrigDst, TupleKey, config,
};

/// netns cookie → flags (reserved). See `mesh_common::maps::ENROLLED`.
#[map]
pub(crate) static ENROLLED: HashMap<u64, u32> = HashMap::with_max_entries(ENROLLED_MAX_ENTRIES, 0);

/// socket cookie → original destination. See `mesh_common::maps::ORIG_DST_BY_COOKIE`.
#[map]
pub(crate) static ORIG_DST_BY_COOKIE: LruHashMap<u64, OrigDst> =
    LruHashMap::with_max_entries(ORIG_DST_MAX_ENTRIES, 0);

/// (netns cookie, app's local address) → original destination.
/// See `mesh_common::maps::ORIG_DST_BY_TUPLE`.
#[map]
pub(crate) static ORIG_DST_BY_TUPLE: LruHashMap<TupleKey, OrigDst> =
    LruHashMap::with_max_entries(ORIG_DST_MAX_ENTRIES, 0);

/// Run-time settings, slots in `mesh_common::config`; 0 means "default".
#[map]
pub(crate) static CONFIG: Array<u32> = Array::with_max_entries(config::LEN, 0);

/// The namespace's inbound plaintext listener(s), for `mesh_sk_lookup`.
/// See `mesh_common::maps::INBOUND_LISTENER`.
#[map]
pub(crate) static INBOUND_LISTENER: SockMap = SockMap::with_max_entries(INBOUND_LISTENER_SLOTS, 0);
