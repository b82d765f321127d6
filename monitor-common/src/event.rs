//! The one record type the kernel programs write to the ring buffer.

use crate::socket::{Activity, Owner, Tuple};

/// Stable numeric event kinds (`SocketEvent::kind`). Never reorder.
pub const EVENT_RETRANSMIT: u32 = 1;
pub const EVENT_STATE_CHANGE: u32 = 2;
pub const EVENT_RESET_RECEIVED: u32 = 3;
pub const EVENT_RESET_SENT: u32 = 4;
pub const EVENT_SOCKET_ERROR: u32 = 5;
pub const EVENT_DESTROY: u32 = 6;
/// A retransmitting socket made progress (data received or acknowledged).
pub const EVENT_PROGRESS: u32 = 7;
/// Retransmits of a watched socket that could not start a storm (a busy
/// connection's), counted in its storage and handed over at most once a
/// second: `detail` packs the counts per kind (`pack_retransmit_counts`).
pub const EVENT_RETRANSMIT_COUNTS: u32 = 8;

/// `detail` of a retransmit-counts record: one byte per `RETRANSMIT_*`
/// kind, kind 0 lowest.
#[inline(always)]
pub const fn pack_retransmit_counts(counts: [u8; 4]) -> u32 {
    u32::from_le_bytes(counts)
}

/// The counts per kind of a retransmit-counts record's `detail`.
#[inline(always)]
pub const fn unpack_retransmit_counts(detail: u32) -> [u8; 4] {
    detail.to_le_bytes()
}

/// `SocketEvent::detail` for `EVENT_PROGRESS`.
pub const PROGRESS_DATA_RECEIVED: u32 = 1;
pub const PROGRESS_ACKNOWLEDGED: u32 = 2;

/// `SocketEvent::detail` of a state change: `errno << 16 | old << 8 | new`,
/// the errno (`sk_err`, 16 bits) set on CLOSE only.
#[inline(always)]
pub const fn state_change_detail(old_state: u8, new_state: u8, errno: i32) -> u32 {
    ((errno as u32) & 0xffff) << 16 | (old_state as u32) << 8 | new_state as u32
}

/// The parts of a state change's `detail`: old state, new state, errno.
#[inline(always)]
pub const fn split_state_change_detail(detail: u32) -> (u8, u8, u16) {
    ((detail >> 8) as u8, detail as u8, (detail >> 16) as u16)
}

/// TCP internals read at the moment of the event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpSnapshot {
    pub snd_una: u32,
    /// `TCP_USER_TIMEOUT` in milliseconds, 0 when unset.
    pub user_timeout_ms: u32,
    /// `icsk_retransmits`: consecutive unacknowledged RTO retransmits.
    pub rto_retransmits: u8,
    /// `icsk_backoff`: how many times the RTO has doubled.
    pub backoff: u8,
    /// `icsk_ca_state` (`TCP_CA_*`).
    pub ca_state: u8,
    /// The namespace's `net.ipv4.tcp_retries2`.
    pub tcp_retries2: u8,
    /// Segments in the retransmitted skb (`tcp_skb_pcount`), retransmits only.
    pub segments: u16,
    /// `RETRANSMIT_*`, retransmits only.
    pub retransmit_kind: u8,
    /// `icsk_probes_out`: zero-window (persist) or keepalive probes sent
    /// without an answer. Ends only (CLOSE or error on a watched socket),
    /// as are the two fields after it.
    pub probes_out: u8,
    /// `write_seq - snd_nxt`: bytes written by the application that never
    /// left the host.
    pub unsent_bytes: u32,
    /// `snd_wnd`: the peer's last advertised receive window.
    pub send_window: u32,
}
const _: () = assert!(core::mem::size_of::<TcpSnapshot>() == 24);

/// One ring-buffer record. Every kind has the same layout: the socket's
/// identity, owner and activity, plus a kind-specific `detail`:
///
/// | kind | detail |
/// |---|---|
/// | retransmit | the attempt's result: 0 or a negative errno, as `i32` bits |
/// | state change | `errno << 16 \| old_state << 8 \| new_state`; errno is `sk_err` on CLOSE, with the end's `TcpSnapshot` |
/// | reset sent | `sk_rst_reason` on kernels that have it, else 0 |
/// | socket error | the positive errno (`sk_err`), with the end's `TcpSnapshot` |
/// | progress | `PROGRESS_*` |
/// | destroy | the errno the socket ended with (`SocketState::end_errno`), 0 if none |
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketEvent {
    pub kind: u32,
    pub detail: u32,
    /// `bpf_ktime_get_ns()` when the event happened.
    pub timestamp_ns: u64,
    /// The kernel's socket cookie: unique for the life of the machine, the
    /// same value sock_diag reports as `idiag_cookie`.
    pub cookie: u64,
    pub owner: Owner,
    pub tuple: Tuple,
    pub activity: Activity,
    pub tcp: TcpSnapshot,
}
const _: () = assert!(core::mem::size_of::<SocketEvent>() == 176);
const _: () = assert!(core::mem::align_of::<SocketEvent>() == 8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_change_detail_round_trips() {
        let detail = state_change_detail(1, 7, 110);
        assert_eq!(detail, (110 << 16) | (1 << 8) | 7);
        assert_eq!(split_state_change_detail(detail), (1, 7, 110));
        // An errno wider than 16 bits keeps its low bits only.
        assert_eq!(
            split_state_change_detail(state_change_detail(4, 5, 0x1_0006)).2,
            6
        );
    }

    #[test]
    fn retransmit_counts_round_trip_per_kind() {
        let counts = [0, 255, 3, 1];
        assert_eq!(
            unpack_retransmit_counts(pack_retransmit_counts(counts)),
            counts
        );
        assert_eq!(pack_retransmit_counts([1, 0, 0, 0]), 1);
    }
}
