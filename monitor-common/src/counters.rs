//! Indices into the kernel's per-CPU counter array (`COUNTERS`).
//!
//! What the programs only count (rather than emit) lands here; the daemon sums
//! the per-CPU values when it reports. Stable numbers: never reorder.

/// A ring-buffer record could not be reserved (buffer full): one lost event.
pub const LOST_RINGBUF_FULL: u32 = 0;
/// A socket could not be inserted into the socket map.
pub const LOST_SOCKET_MAP_FULL: u32 = 1;
/// Retransmit attempts by kind, every socket, watched or not (index = base + kind).
pub const RETRANSMITS_BASE: u32 = 2;
/// `RETRANSMITS_BASE + RETRANSMIT_*` covers indices 2..=5.
pub const RETRANSMIT_ATTEMPTS_FAILED: u32 = 6;
/// Segments in successful retransmits: what nstat's `TcpRetransSegs` counts.
pub const RETRANSMITTED_SEGMENTS: u32 = 7;
/// Sockets added to and removed from the socket map.
pub const SOCKETS_ADDED: u32 = 8;
pub const SOCKETS_REMOVED: u32 = 9;
/// A kernel read through `bpf_probe_read_kernel` failed.
pub const KERNEL_READ_FAILED: u32 = 10;
/// `tcp_send_reset` fired without a socket (a reset for an unknown flow).
pub const RESETS_SENT_WITHOUT_SOCKET: u32 = 11;
/// Events emitted for watched sockets (submitted to the ring buffer).
pub const EVENTS_EMITTED: u32 = 12;

/// Number of slots in `COUNTERS`.
pub const COUNTER_SLOTS: u32 = 13;

/// A name for each slot, for logs and metrics.
pub const fn counter_name(index: u32) -> &'static str {
    match index {
        LOST_RINGBUF_FULL => "lost_ringbuf_full",
        LOST_SOCKET_MAP_FULL => "lost_socket_map_full",
        2 => "retransmits_unknown",
        3 => "retransmits_timeout",
        4 => "retransmits_fast",
        5 => "retransmits_tail_loss_probe",
        RETRANSMIT_ATTEMPTS_FAILED => "retransmit_attempts_failed",
        RETRANSMITTED_SEGMENTS => "retransmitted_segments",
        SOCKETS_ADDED => "sockets_added",
        SOCKETS_REMOVED => "sockets_removed",
        KERNEL_READ_FAILED => "kernel_read_failed",
        RESETS_SENT_WITHOUT_SOCKET => "resets_sent_without_socket",
        EVENTS_EMITTED => "events_emitted",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retransmit::{RETRANSMIT_TAIL_LOSS_PROBE, RETRANSMIT_UNKNOWN};

    #[test]
    fn retransmit_kinds_fit_between_the_fixed_slots() {
        assert_eq!(RETRANSMITS_BASE + RETRANSMIT_UNKNOWN as u32, 2);
        assert!(
            RETRANSMITS_BASE + (RETRANSMIT_TAIL_LOSS_PROBE as u32) < RETRANSMIT_ATTEMPTS_FAILED
        );
        for index in 0..COUNTER_SLOTS {
            assert_ne!(counter_name(index), "unknown", "slot {index} has no name");
        }
    }
}

/// Key of the kernel's `RETRANSMITS_BY_OWNER` map: retransmits of sockets
/// that are not watched, aggregated in the kernel by owner, kind and role so
/// that they cost no event. The value is a count.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RetransmitOwnerKey {
    pub cgroup_id: u64,
    pub comm: [u8; 16],
    /// `RETRANSMIT_*`
    pub kind: u8,
    /// `ROLE_*`
    pub role: u8,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<RetransmitOwnerKey>() == 32);
