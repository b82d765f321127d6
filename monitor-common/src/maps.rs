//! The kernel object's maps and globals by name: the loader finds them by
//! these names, and the kernel programs check at build time that their
//! statics carry them (`monitor-ebpf/src/maps.rs`), so a rename on either
//! side is a build error, not a load failure.

/// Kernel struct offsets (`globals::KernelOffsets`), set by the loader.
pub const OFFSETS: &str = "OFFSETS";
/// Behaviour switches (`globals::ProbeSettings`), set by the loader.
pub const SETTINGS: &str = "SETTINGS";
/// The watched-port bitmap (`globals::watched_port_bits`), set by the loader.
pub const WATCHED_PORT_BITS: &str = "WATCHED_PORT_BITS";
/// The ring buffer of `event::SocketEvent` records; the loader sizes it.
pub const EVENTS: &str = "EVENTS";
/// Per-CPU counters (`counters`), read at scrape time.
pub const COUNTERS: &str = "COUNTERS";
/// Sockets found at start-up (`socket::PrimedSocket`); the loader sizes it.
pub const PRIMED_SOCKETS: &str = "PRIMED_SOCKETS";
/// Retransmits of unwatched sockets by cookie
/// (`counters::UnwatchedRetransmits`).
pub const UNWATCHED_RETRANSMITS: &str = "UNWATCHED_RETRANSMITS";
/// Socket state by socket address, on kernels whose tracing programs lack
/// socket-local storage (5.10, 5.11); the loader sizes it.
pub const SOCKET_STATE_BY_ADDRESS: &str = "SOCKET_STATE_BY_ADDRESS";

/// Whether two names are the same, at compile time.
pub const fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_by_every_byte() {
        assert!(same_name(EVENTS, "EVENTS"));
        assert!(!same_name(EVENTS, "EVENT"));
        assert!(!same_name(EVENTS, "EVENTZ"));
    }
}
