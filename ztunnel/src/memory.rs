//! The heap's shape under glibc. Each eBPF load parses the kernel's BTF (megabytes, in tens of
//! thousands of allocations) and frees it again. Left alone, glibc then raises its mmap
//! threshold to the size of the largest freed block, so later large buffers come from the
//! arenas too, and the freed pages stay resident: an agent that enrolled two pods kept about
//! 18 MiB more than it used.
#![allow(unsafe_code)]

/// Blocks of this size and larger are mapped on their own and returned when freed. Fixed, so
/// that glibc does not raise it; above the copy buffers (256 KiB), which are reused.
#[cfg(target_env = "gnu")]
const MMAP_THRESHOLD: libc::c_int = 1024 * 1024;

/// Fixes the mmap threshold. Call before other threads start.
pub fn fix_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; no pointer is involved.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
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
