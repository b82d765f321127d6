//! Connections whose data the kernel holds and cannot send, found while the
//! application still hangs on them.
//!
//! A periodic sock_diag scan (`crate::stuck_scan`) lists the watched
//! sockets whose zero-window probe timer (`ICSK_TIME_PROBE0`) is armed:
//! bytes are queued, nothing is in flight, and the kernel probes instead of
//! sending. This tracker tells two causes apart, per socket episode:
//!
//! - the peer's receive window is shut (`send_window` 0): the peer stopped
//!   reading (`zero_window`). Its ACKs answer the probes, so the connection
//!   never dies; the writer hangs until `TCP_USER_TIMEOUT` or for ever. A
//!   reader that is slow but keeps draining shuts the window only briefly:
//!   the window must stay shut for `zero_window_confirm_ns`.
//! - the window is open, yet nothing went out and the probes go unanswered
//!   (`probes_out` grows, no ACK resets it): every transmit fails inside
//!   the host (`egress_blocked`, a local firewall drop), reported long
//!   before the kernel gives up and reports it again at its end.
//!
//! Each episode is reported once. No I/O, no clock: tests drive it with
//! recorded rows.

use rustc_hash::FxHashMap;

use super::{ConnectionFailure, FailureMode, giveup};
use crate::{
    event::{Connection, Role},
    sockdiag::{DiagSocket, SendState},
};

/// One watched socket with its probe timer armed, as a scan saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StuckRow {
    pub cookie: u64,
    pub connection: Connection,
    pub role: Role,
    /// Time left until the probe timer fires, milliseconds.
    pub probe_timer_in_ms: u64,
    pub send: SendState,
    /// Milliseconds since payload was last received.
    pub last_data_recv_ms: u32,
    /// `net.ipv4.tcp_retries2` of the socket's namespace.
    pub tcp_retries2: u8,
}

impl StuckRow {
    /// The row for a dumped socket, if its probe timer is armed.
    pub fn from_diag(
        socket: &DiagSocket,
        netns: u32,
        role: Role,
        tcp_retries2: u8,
    ) -> Option<Self> {
        let timer_in = socket.probe_timer_in?;
        Some(Self {
            cookie: socket.cookie,
            connection: Connection {
                local: socket.local,
                remote: socket.remote,
                netns,
            },
            role,
            probe_timer_in_ms: u64::try_from(timer_in.as_millis()).unwrap_or(u64::MAX),
            send: socket.send?,
            last_data_recv_ms: socket.last_data_recv_ms.unwrap_or(0),
            tcp_retries2,
        })
    }
}

/// One scan: the rows of every namespace it could read. A socket no row
/// names is not stuck (or its namespace could not be read: the kernel's
/// backoff dates its episode again when a later scan lists it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StuckScan {
    /// CLOCK_MONOTONIC nanoseconds of the scan.
    pub at_ns: u64,
    pub rows: Vec<StuckRow>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StuckConfig {
    /// How long a peer's window must stay shut before it is reported.
    pub zero_window_confirm_ns: u64,
    /// Unanswered probes with an open window that confirm an egress block.
    pub egress_confirm_probes: u8,
    /// Idle gaps shorter than this are reported as 0, as the detector's.
    pub idle_threshold_ns: u64,
    /// How long a reported episode is remembered after the scans stop
    /// listing it, so the kernel's end report knows it was reported.
    pub keep_reported_ns: u64,
    pub max_episodes: usize,
}

/// Three probes, each failing inside the host: 1.4 s after the stuck send
/// with the minimum RTO. Fewer could be a single transient local drop.
pub const EGRESS_CONFIRM_PROBES: u8 = 3;

#[derive(Clone, Copy, Debug)]
struct StuckEpisode {
    mode: FailureMode,
    /// When the data got stuck (monotonic ns, estimated).
    since_ns: u64,
    last_seen_ns: u64,
    reported: bool,
}

pub struct StuckSockets {
    config: StuckConfig,
    episodes: FxHashMap<u64, StuckEpisode>,
    /// Episodes not tracked because `max_episodes` was reached.
    pub dropped: u64,
}

/// How the kernel's queue says the data is stuck, if it is.
fn classify(send: &SendState) -> Option<FailureMode> {
    if send.unsent_bytes == 0 || send.in_flight > 0 {
        return None;
    }
    Some(if send.send_window == 0 {
        FailureMode::ZeroWindow
    } else {
        FailureMode::EgressBlocked
    })
}

/// How long the probe timer has been running, from the kernel's backoff:
/// it was armed at `max(rto, TCP_RTO_MIN)`, doubled after each probe
/// (`tcp_probe0_when`, at most `TCP_RTO_MAX`), and fires in
/// `timer_in_ms`. A lower bound once the backoff stops growing (at
/// `tcp_retries2`).
pub fn stuck_for_ns(backoff: u8, rto_us: u32, timer_in_ms: u64) -> u64 {
    let base = (u64::from(rto_us) * 1_000).max(giveup::TCP_RTO_MIN_NS);
    let interval = |doublings: u8| {
        base.checked_shl(u32::from(doublings))
            .filter(|interval| interval >> u32::from(doublings) == base)
            .map_or(giveup::TCP_RTO_MAX_NS, |interval| {
                interval.min(giveup::TCP_RTO_MAX_NS)
            })
    };
    let probes_done: u64 = (0..backoff).map(interval).sum();
    probes_done + interval(backoff).saturating_sub(timer_in_ms.saturating_mul(1_000_000))
}

impl StuckSockets {
    pub fn new(config: StuckConfig) -> Self {
        Self {
            config,
            episodes: FxHashMap::default(),
            dropped: 0,
        }
    }

    /// Sockets stuck now or reported recently.
    pub fn len(&self) -> usize {
        self.episodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.episodes.is_empty()
    }

    /// Feeds one scan; returns the episodes it confirmed.
    pub fn scan(&mut self, scan: &StuckScan) -> Vec<ConnectionFailure> {
        let mut confirmed = Vec::new();
        for row in &scan.rows {
            let Some(mode) = classify(&row.send) else {
                continue;
            };
            let stuck_for = stuck_for_ns(row.send.backoff, row.send.rto_us, row.probe_timer_in_ms);
            let since = scan.at_ns.saturating_sub(stuck_for);
            if !self.episodes.contains_key(&row.cookie)
                && self.episodes.len() >= self.config.max_episodes
            {
                self.dropped += 1;
                continue;
            }
            let episode = self
                .episodes
                .entry(row.cookie)
                .and_modify(|episode| {
                    // The window reopened (or data left) between the scans
                    // and the queue got stuck again: a new episode.
                    if episode.mode != mode || since > episode.last_seen_ns {
                        *episode = StuckEpisode {
                            mode,
                            since_ns: since,
                            last_seen_ns: scan.at_ns,
                            reported: false,
                        };
                    }
                })
                .or_insert(StuckEpisode {
                    mode,
                    since_ns: since,
                    last_seen_ns: scan.at_ns,
                    reported: false,
                });
            episode.since_ns = episode.since_ns.min(since);
            episode.last_seen_ns = scan.at_ns;
            let confirmed_now = match mode {
                FailureMode::ZeroWindow => {
                    scan.at_ns.saturating_sub(episode.since_ns)
                        >= self.config.zero_window_confirm_ns
                }
                _ => row.send.probes_out >= self.config.egress_confirm_probes,
            };
            if episode.reported || !confirmed_now {
                continue;
            }
            episode.reported = true;
            let since = episode.since_ns;
            confirmed.push(failure(
                &self.config,
                row,
                mode,
                since,
                scan.at_ns,
                stuck_for,
            ));
        }
        // Listed no more: no longer stuck. A reported episode stays a while
        // for the kernel's end report.
        self.episodes
            .retain(|_, episode| episode.last_seen_ns == scan.at_ns || episode.reported);
        confirmed
    }
}

/// The finding for a confirmed episode.
fn failure(
    config: &StuckConfig,
    row: &StuckRow,
    mode: FailureMode,
    since_ns: u64,
    at_ns: u64,
    stuck_for_ns: u64,
) -> ConnectionFailure {
    let idle = (u64::from(row.last_data_recv_ms) * 1_000_000).saturating_sub(stuck_for_ns);
    ConnectionFailure {
        mode,
        cookie: row.cookie,
        // The scan cannot say who writes: the reporter asks /proc.
        owner: None,
        role: row.role,
        connection: row.connection.clone(),
        idle_ns: if idle >= config.idle_threshold_ns {
            idle
        } else {
            0
        },
        started_ns: since_ns,
        at_ns,
        retransmits: 0,
        probes: match mode {
            // Answered probes since the window shut: the backoff counts
            // them (up to tcp_retries2); `probes_out` is reset by each ACK.
            FailureMode::ZeroWindow => row.send.backoff,
            _ => row.send.probes_out,
        },
        unsent_bytes: row.send.unsent_bytes,
        timed_out: false,
        dropped_in_host: mode == FailureMode::EgressBlocked,
        reported_while_hanging: false,
        tcp_retries2: row.tcp_retries2,
    }
}

impl StuckSockets {
    /// The socket ended: the mode reported for it while it hung, if any.
    pub fn ended(&mut self, cookie: u64) -> Option<FailureMode> {
        self.episodes
            .remove(&cookie)
            .filter(|episode| episode.reported)
            .map(|episode| episode.mode)
    }

    /// Forgets reported episodes the scans stopped listing long ago.
    pub fn expire(&mut self, now_ns: u64) {
        let keep = self.config.keep_reported_ns;
        self.episodes
            .retain(|_, episode| now_ns.saturating_sub(episode.last_seen_ns) < keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000 * MS;

    fn config() -> StuckConfig {
        StuckConfig {
            zero_window_confirm_ns: 10 * S,
            egress_confirm_probes: EGRESS_CONFIRM_PROBES,
            idle_threshold_ns: S,
            keep_reported_ns: 300 * S,
            max_episodes: 16,
        }
    }

    /// A row as `ss -tni` would show it, for a socket with the minimum RTO.
    fn row(
        cookie: u64,
        send_window: u32,
        probes_out: u8,
        backoff: u8,
        timer_in_ms: u64,
    ) -> StuckRow {
        StuckRow {
            cookie,
            connection: Connection {
                local: "127.0.0.1:40000".parse().expect("addr"),
                remote: "127.0.0.1:6379".parse().expect("addr"),
                netns: 4026531840,
            },
            role: Role::Client,
            probe_timer_in_ms: timer_in_ms,
            send: SendState {
                unsent_bytes: 4096,
                in_flight: 0,
                send_window,
                probes_out,
                backoff,
                rto_us: 200_000,
            },
            last_data_recv_ms: 61_000,
            tcp_retries2: 15,
        }
    }

    fn scan(at_ns: u64, rows: Vec<StuckRow>) -> StuckScan {
        StuckScan { at_ns, rows }
    }

    #[test]
    fn the_timer_runs_for_the_backed_off_intervals_so_far() {
        // Armed at 200 ms, then 400, 800: third probe due in 300 ms.
        assert_eq!(stuck_for_ns(2, 200_000, 500), (200 + 400 + 300) * MS);
        // The RTO floor, and the 120 s cap of each interval.
        assert_eq!(stuck_for_ns(0, 10_000, 0), 200 * MS);
        assert_eq!(stuck_for_ns(15, 200_000, 120_000), {
            let doubled: u64 = (0..10).map(|b| (200 * MS) << b).sum();
            doubled + 5 * 120 * S
        });
        assert!(stuck_for_ns(255, u32::MAX, 0) > 0, "no overflow");
    }

    #[test]
    fn a_window_shut_past_the_confirmation_is_a_zero_window_once() {
        let mut stuck = StuckSockets::new(config());
        // 6 s shut: backoff 4 (0.2+0.4+0.8+1.6 s), 3.2 s timer 0.2 s left.
        assert!(
            stuck
                .scan(&scan(100 * S, vec![row(1, 0, 0, 4, 200)]))
                .is_empty()
        );
        let found = stuck.scan(&scan(105 * S, vec![row(1, 0, 1, 5, 1_600)]));
        let [failure] = &found[..] else {
            panic!("{found:#?}");
        };
        assert_eq!(failure.mode, FailureMode::ZeroWindow);
        assert_eq!(failure.started_ns, 94 * S, "from the kernel's backoff");
        assert_eq!((failure.probes, failure.unsent_bytes), (5, 4096));
        assert!(!failure.timed_out && !failure.dropped_in_host);
        // Idle before the window shut: 61 s since data came, 11 s shut.
        assert_eq!(failure.idle_ns, 50 * S);
        assert!(
            stuck
                .scan(&scan(110 * S, vec![row(1, 0, 0, 6, 1_000)]))
                .is_empty()
        );
        assert_eq!(stuck.ended(1), Some(FailureMode::ZeroWindow));
    }

    #[test]
    fn a_slow_reader_that_keeps_draining_is_never_reported() {
        let mut stuck = StuckSockets::new(config());
        // Each scan catches the window shut for a moment, then open again:
        // the backoff starts over every time.
        for second in 0..60 {
            let rows = if second % 2 == 0 {
                vec![row(2, 0, 0, 1, 300)]
            } else {
                Vec::new()
            };
            assert!(
                stuck.scan(&scan(second * S, rows)).is_empty(),
                "at {second} s"
            );
        }
        assert!(stuck.is_empty());
        // Shut at every scan, but reopened in between (the kernel's
        // estimate starts after the previous sighting).
        for second in 0..60 {
            let found = stuck.scan(&scan(second * S, vec![row(3, 0, 0, 1, 300)]));
            assert!(found.is_empty(), "at {second} s: {found:#?}");
        }
        assert_eq!(stuck.ended(3), None);
    }

    #[test]
    fn an_open_window_with_unanswered_probes_is_egress_blocked_early() {
        let mut stuck = StuckSockets::new(config());
        // Two probes failed: not yet.
        assert!(
            stuck
                .scan(&scan(10 * S, vec![row(4, 65_535, 2, 2, 700)]))
                .is_empty()
        );
        let found = stuck.scan(&scan(11 * S, vec![row(4, 65_535, 3, 3, 1_500)]));
        let [failure] = &found[..] else {
            panic!("{found:#?}");
        };
        assert_eq!(failure.mode, FailureMode::EgressBlocked);
        assert!(!failure.timed_out && failure.dropped_in_host);
        assert_eq!(failure.probes, 3);
        // Gone from the next scan (the kernel gave up): remembered until
        // its end report asks.
        assert!(stuck.scan(&scan(12 * S, Vec::new())).is_empty());
        assert_eq!(stuck.ended(4), Some(FailureMode::EgressBlocked));
        assert_eq!(stuck.ended(4), None, "asked once");
    }

    #[test]
    fn a_small_window_whose_probes_are_answered_is_not_egress_blocked() {
        let mut stuck = StuckSockets::new(config());
        // Window smaller than a segment: the probes carry data and are
        // acknowledged, so probes_out never builds up.
        for second in 0..30 {
            assert!(
                stuck
                    .scan(&scan(second * S, vec![row(5, 1_000, 0, 3, 500)]))
                    .is_empty()
            );
        }
    }

    #[test]
    fn data_in_flight_or_nothing_queued_is_not_stuck() {
        let mut stuck = StuckSockets::new(config());
        let mut in_flight = row(6, 0, 0, 9, 100);
        in_flight.send.in_flight = 1;
        let mut empty = row(7, 65_535, 9, 9, 100);
        empty.send.unsent_bytes = 0;
        assert!(
            stuck
                .scan(&scan(500 * S, vec![in_flight, empty]))
                .is_empty()
        );
        assert!(stuck.is_empty());
    }

    #[test]
    fn episodes_are_bounded_and_expire() {
        let mut stuck = StuckSockets::new(StuckConfig {
            max_episodes: 1,
            ..config()
        });
        let rows = vec![row(8, 65_535, 3, 3, 100), row(9, 65_535, 3, 3, 100)];
        assert_eq!(stuck.scan(&scan(S, rows)).len(), 1);
        assert_eq!(stuck.dropped, 1);
        stuck.expire(400 * S);
        assert!(stuck.is_empty());
    }
}
