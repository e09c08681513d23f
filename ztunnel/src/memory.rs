//! The heap's shape under glibc. Each eBPF loader parses the kernel's BTF (megabytes, in tens
//! of thousands of allocations) and frees it again. Left alone, glibc then raises its mmap
//! threshold to the size of the largest freed block, so later large buffers come from the
//! arenas too, and the freed pages stay resident: an agent that enrolled two pods kept about
//! 18 MiB more than it used.
#![allow(unsafe_code)]

use std::time::Duration;

/// Blocks of this size and larger are mapped on their own and returned when freed. Fixed, so
/// that glibc does not raise it; above the copy loop's 64 KiB read buffers, which come from
/// the arenas.
#[cfg(target_env = "gnu")]
const MMAP_THRESHOLD: libc::c_int = 1024 * 1024;

/// Free memory at the top of an arena is kept up to this size instead of being returned at
/// each free. At the default (128 KiB) a stream's 256 KiB chunks were handed back and faulted
/// in again all the time: 8 % more CPU per GB streamed. [`trim_periodically`] returns it later.
#[cfg(target_env = "gnu")]
const TRIM_THRESHOLD: libc::c_int = 8 * 1024 * 1024;

/// One arena for every thread. `malloc_trim` returns the free top of the main arena only; a
/// worker thread's own arena kept its top, up to [`TRIM_THRESHOLD`], for good (2.5-3.7 MiB
/// of an agent's 4.6-5.8 MiB anonymous RSS after one bench run's load). Small allocations are served
/// from each thread's cache without the arena's lock, and by default the workers are one or
/// two.
#[cfg(target_env = "gnu")]
const ARENA_MAX: libc::c_int = 1;

/// How often free pages go back to the kernel.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Fixes the allocator's thresholds. Call before other threads start.
pub fn fix_thresholds() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; no pointer is involved.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
    }
}

/// Gives the free pages of every arena back to the kernel; for after a burst of temporary
/// allocations.
pub fn release_free_pages() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases memory the allocator holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Releases free pages every few seconds, so that memory kept for the data path's next
/// chunk does not stay resident once traffic stops.
pub async fn trim_periodically() {
    loop {
        tokio::time::sleep(TRIM_EVERY).await;
        release_free_pages();
    }
}
