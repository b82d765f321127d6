//! Indices into the kernel's per-CPU counter array (`COUNTERS`).
//!
//! What the programs only count (rather than emit) lands here; the daemon sums
//! the per-CPU values when it reports. Stable numbers: never reorder.

/// A ring-buffer record could not be reserved (buffer full): one lost event.
pub const LOST_RINGBUF_FULL: u32 = 0;
/// The kernel refused a watched socket its storage (out of memory): its
/// owner and activity are not tracked.
pub const LOST_SOCKET_MAP_FULL: u32 = 1;
/// Retransmit attempts by kind, every socket, watched or not (index = base + kind).
pub const RETRANSMITS_BASE: u32 = 2;
/// `RETRANSMITS_BASE + RETRANSMIT_*` covers indices 2..=5.
pub const RETRANSMIT_ATTEMPTS_FAILED: u32 = 6;
/// Segments in successful retransmits: what nstat's `TcpRetransSegs` counts.
pub const RETRANSMITTED_SEGMENTS: u32 = 7;
/// Watched sockets given storage, and such sockets destroyed: their
/// difference is the sockets the kernel tracks now.
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

/// Value of the kernel's `UNWATCHED_RETRANSMITS` map, keyed by socket
/// cookie: retransmits of a socket that is not watched, counted in the
/// kernel (no event each). The owner is not known in the retransmit's
/// softirq context and the hot path does not track unwatched sockets, so
/// userspace resolves it lazily from the cookie (sock_diag and /proc).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwatchedRetransmits {
    /// Retransmits by `RETRANSMIT_*` kind (index), wrapping.
    pub by_kind: [u32; 4],
    /// The socket's cgroup (`sk->sk_cgrp_data`: its creator's cgroup v2
    /// id), 0 when unknown: names the container even after the socket is
    /// gone.
    pub cgroup_id: u64,
    /// Where the socket was when it first retransmitted.
    pub tuple: crate::socket::Tuple,
}
const _: () = assert!(core::mem::size_of::<UnwatchedRetransmits>() == 72);
