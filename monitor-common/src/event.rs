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
/// A watched socket received payload after an idle gap (the reply to a
/// request sent after the gap, or the peer speaking first): the path still
/// knew the flow. `detail` is the gap in milliseconds (saturated). Only
/// `connmon run` asks for these (evidence for the path's idle timeout).
pub const EVENT_REPLY_AFTER_IDLE: u32 = 9;

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
    /// Low byte of `tcp_sock.total_retrans` (retransmits and ends): the
    /// kernel's own count of the socket's retransmitted segments, this one
    /// included, so a jump between two records of one socket is a
    /// retransmit connmon did not see (`retransmits_not_seen`).
    pub total_retrans_low: u8,
    /// Ends only (CLOSE or error with an errno, on a watched socket), as
    /// are the fields after it: `write_seq - snd_nxt`, bytes written by
    /// the application that never left the host.
    pub unsent_bytes: u32,
    /// `snd_wnd`, the peer's last advertised receive window, clamped to
    /// 65535 (what matters is whether it is shut).
    pub send_window: u16,
    /// `icsk_probes_out`: zero-window (persist) or keepalive probes sent
    /// without an answer.
    pub probes_out: u8,
    pub _pad: u8,
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
/// | reply after idle | the idle gap the flow survived, milliseconds |
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

/// Retransmitted segments of one socket that no record showed, between a
/// record whose `total_retrans_low` was `before` and the next one with
/// `now`, which itself accounts for `segments` (its own retransmit's; 0 for
/// an end). The kernel counts a retransmit before it goes out, so the
/// counter includes the record's own segments. Modulo 256: a gap of 256 or
/// more segments between two records reads short.
pub const fn retransmits_not_seen(before: u8, now: u8, segments: u16) -> u8 {
    now.wrapping_sub(before).wrapping_sub(segments as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jump_in_the_kernels_retransmit_count_is_what_no_record_showed() {
        // TLP seen at 1, the first RTO (2) unseen, the second seen at 3.
        assert_eq!(retransmits_not_seen(1, 3, 1), 1);
        assert_eq!(retransmits_not_seen(1, 2, 1), 0);
        // A multi-segment retransmit accounts for all its segments.
        assert_eq!(retransmits_not_seen(4, 7, 3), 0);
        // The socket's end carries the count without a retransmit of its own.
        assert_eq!(retransmits_not_seen(5, 5, 0), 0);
        assert_eq!(retransmits_not_seen(5, 6, 0), 1);
        // The low byte wraps.
        assert_eq!(retransmits_not_seen(255, 1, 1), 1);
    }

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
