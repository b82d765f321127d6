//! Retransmits the kernel counted on a socket that no record showed.
//!
//! Each retransmit record and each socket's end carry the low byte of the
//! kernel's own count of the socket's retransmitted segments; a jump larger
//! than the record's own segments is a retransmit connmon never saw (the
//! kernel skipped the program, or, before 6.10, a failed attempt it counts
//! but does not trace). Only meaningful where every retransmit of a watched
//! socket is a record of its own: `trace`, not `run` (whose busy sockets'
//! retransmits are counted in the kernel instead).

use std::collections::HashMap;

use monitor_common::{
    event::retransmits_not_seen,
    tcp::{TCP_SYN_RECV, TCP_SYN_SENT},
};

use crate::event::{EventKind, SocketEvent};

/// The last count seen per socket, for at most `capacity` sockets at once
/// (a socket beyond it is not checked).
pub struct RetransmitGaps {
    last_count: HashMap<u64, u8>,
    capacity: usize,
}

impl RetransmitGaps {
    pub fn new(capacity: usize) -> Self {
        Self {
            last_count: HashMap::new(),
            capacity,
        }
    }

    /// Segments retransmitted before `event` that no record showed: 0 for
    /// the first retransmit record of a socket whose start was not seen
    /// (nothing to compare with), and after a failed attempt (the kernel
    /// may have counted it or not).
    pub fn observe(&mut self, event: &SocketEvent) -> u8 {
        match &event.kind {
            // A socket's count starts at zero when it opens.
            EventKind::StateChange { new, .. } if matches!(new.0, TCP_SYN_SENT | TCP_SYN_RECV) => {
                if self.last_count.len() < self.capacity {
                    self.last_count.insert(event.cookie, 0);
                }
                0
            }
            EventKind::Retransmit(info) => {
                let before = self.last_count.get(&event.cookie).copied();
                if before.is_some() || self.last_count.len() < self.capacity {
                    self.last_count.insert(event.cookie, info.total_retrans_low);
                }
                match before {
                    Some(before) if info.result == 0 => {
                        retransmits_not_seen(before, info.total_retrans_low, info.segments)
                    }
                    _ => 0,
                }
            }
            EventKind::Destroyed {
                total_retrans_low, ..
            } => self.last_count.remove(&event.cookie).map_or(0, |before| {
                retransmits_not_seen(before, *total_retrans_low, 0)
            }),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{RetransmitInfo, RetransmitKind, TcpState};

    fn event(cookie: u64, kind: EventKind) -> SocketEvent {
        SocketEvent::unowned(cookie, kind, "127.0.0.1:40000", "127.0.0.1:7101")
    }

    fn retransmit(cookie: u64, count: u8, result: i32) -> SocketEvent {
        event(
            cookie,
            EventKind::Retransmit(RetransmitInfo {
                kind: RetransmitKind::Timeout,
                result,
                segments: 1,
                rto_retransmits: 1,
                backoff: 0,
                snd_una: 0,
                user_timeout_ms: 0,
                tcp_retries2: 4,
                total_retrans_low: count,
            }),
        )
    }

    fn end(cookie: u64, count: u8) -> SocketEvent {
        event(
            cookie,
            EventKind::Destroyed {
                errno: 110,
                total_retrans_low: count,
            },
        )
    }

    #[test]
    fn the_recorded_ci_gap_is_found() {
        // The records a CI run printed: TLP at 1, RTOs at 3, 4, 5 (the
        // first RTO, 2, never reached userspace); the socket ended at 5.
        let mut gaps = RetransmitGaps::new(16);
        let seen: Vec<u8> = [1, 3, 4, 5]
            .into_iter()
            .map(|count| gaps.observe(&retransmit(7, count, 0)))
            .collect();
        assert_eq!(seen, [0, 1, 0, 0]);
        assert_eq!(gaps.observe(&end(7, 5)), 0);
    }

    #[test]
    fn a_first_retransmit_missed_shows_when_the_start_was_seen() {
        let mut gaps = RetransmitGaps::new(16);
        let opened = event(
            7,
            EventKind::StateChange {
                old: TcpState(monitor_common::tcp::TCP_CLOSE),
                new: TcpState(TCP_SYN_SENT),
                errno: 0,
            },
        );
        assert_eq!(gaps.observe(&opened), 0);
        assert_eq!(gaps.observe(&retransmit(7, 2, 0)), 1);
    }

    #[test]
    fn a_last_retransmit_missed_shows_at_the_end() {
        let mut gaps = RetransmitGaps::new(16);
        assert_eq!(gaps.observe(&retransmit(7, 1, 0)), 0);
        assert_eq!(gaps.observe(&end(7, 2)), 1);
        // The socket is forgotten with its end.
        assert_eq!(gaps.observe(&end(7, 9)), 0);
    }

    #[test]
    fn sockets_are_counted_apart_and_failed_attempts_resynchronise() {
        let mut gaps = RetransmitGaps::new(16);
        assert_eq!(gaps.observe(&retransmit(1, 10, 0)), 0);
        assert_eq!(gaps.observe(&retransmit(2, 50, 0)), 0);
        assert_eq!(gaps.observe(&retransmit(1, 11, 0)), 0);
        // A failed attempt the kernel counted: no gap, and the next one
        // compares with it.
        assert_eq!(gaps.observe(&retransmit(1, 12, -1)), 0);
        assert_eq!(gaps.observe(&retransmit(1, 13, 0)), 0);
        assert_eq!(gaps.observe(&retransmit(2, 51, 0)), 0);
    }

    #[test]
    fn past_capacity_new_sockets_are_not_checked() {
        let mut gaps = RetransmitGaps::new(1);
        assert_eq!(gaps.observe(&retransmit(1, 1, 0)), 0);
        assert_eq!(gaps.observe(&retransmit(2, 1, 0)), 0);
        assert_eq!(gaps.observe(&retransmit(2, 9, 0)), 0);
        assert_eq!(gaps.observe(&retransmit(1, 3, 0)), 1);
    }
}
