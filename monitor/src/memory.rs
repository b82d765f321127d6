//! Start-up parses the kernel's BTF twice (struct offsets, then aya's
//! loader): tens of MiB that are freed right after, but that glibc keeps in
//! the heap. Handing them back keeps the daemon's resident memory at what
//! it actually uses on every host. The daemon does the same periodically,
//! after hash tables have grown (moving to a larger allocation) or shrunk.

/// Returns freed heap memory to the kernel.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists; it has no
    // preconditions and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
