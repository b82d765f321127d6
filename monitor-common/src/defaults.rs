//! connmon's defaults that more than one place needs: the daemon's
//! settings, the command line, the loader and the kernel object's
//! compile-time values all take them from here.

/// The port watched when none is given: Redis.
pub const WATCHED_PORT: u16 = 6379;
/// No payload either way for this long makes a connection idle.
pub const IDLE_THRESHOLD_NS: u64 = 30_000_000_000;
/// Entries of the kernel's map of sockets found at start-up.
pub const SOCKET_MAP_ENTRIES: u32 = 65_536;
/// The ring buffer's size in KiB (4 MiB).
pub const RING_BUFFER_KIB: u32 = 4096;
