//! Storm detection: a pure, per-socket state machine over decoded events.
//!
//! A connection is *idle* when it carried no payload either way for at least
//! the idle threshold. When payload starts again (a *burst*) and the data is
//! not acknowledged, the kernel retransmits: first a tail-loss probe, then
//! RTO retransmits with exponential backoff. A *storm* is confirmed by the
//! configured number of RTO retransmits in a row, on a burst that followed
//! an idle gap, with nothing received since the burst began. It ends with an
//! outcome: data acknowledged or received again (`recovered`), the kernel
//! giving up (`timed_out`), a reset either way (`reset`), or the socket
//! closing (`closed`).
//!
//! No kernel, no clock, no I/O: tests drive it with recorded event
//! sequences.

pub mod giveup;
pub mod reuse;
pub mod stuck;

// Keys are kernel cookies, not attacker-chosen input: a fast hasher is
// safe here and the table is on the per-event path.
use monitor_common::socket::may_confirm_storm;
use rustc_hash::FxHashMap;

use serde::Serialize;

use monitor_common::tcp::TCP_SYN_SENT;

use crate::event::{
    Connection, EventKind, ProcessRef, RetransmitKind, Role, SocketEvent, TcpState,
};

/// How a storm ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Data was acknowledged or received again.
    Recovered,
    /// The kernel gave up (ETIMEDOUT).
    TimedOut,
    /// A reset was received or sent.
    Reset,
    /// The socket was closed or failed with another error.
    Closed,
    /// connmon's fail-fast aborted the socket (ECONNABORTED).
    Aborted,
    /// connmon stopped while the storm was still going.
    MonitorStopped,
    /// No event for the socket for `DetectorConfig::forget_after_ns`, or
    /// the socket is gone and the kernel records of its end were lost.
    Unknown,
}

impl Outcome {
    pub const ALL: [Self; 7] = [
        Self::Recovered,
        Self::TimedOut,
        Self::Reset,
        Self::Closed,
        Self::Aborted,
        Self::MonitorStopped,
        Self::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Recovered => "recovered",
            Self::TimedOut => "timed_out",
            Self::Reset => "reset",
            Self::Closed => "closed",
            Self::Aborted => "aborted",
            Self::MonitorStopped => "monitor_stopped",
            Self::Unknown => "unknown",
        }
    }
}

/// A peer's window shut this long is no slow reader: 10 s.
pub const DEFAULT_ZERO_WINDOW_CONFIRM_NS: u64 = 10_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DetectorConfig {
    pub idle_threshold_ns: u64,
    /// RTO retransmits in a row that confirm a storm.
    pub confirm_retransmits: u32,
    /// The first retransmit must come within this long of the burst start
    /// for the burst's idle gap to count (an old gap says nothing about a
    /// later loss).
    pub burst_window_ns: u64,
    /// Episodes with no event for this long are dropped (storms among them
    /// end as `unknown`). RTO timers fire at least every 120 s while a
    /// storm lasts.
    pub forget_after_ns: u64,
    /// Bound on sockets with retransmits in flight.
    pub max_episodes: usize,
    /// How long a peer's receive window must stay shut, with data waiting,
    /// before the connection is reported as `zero_window`.
    pub zero_window_confirm_ns: u64,
}

impl DetectorConfig {
    pub fn new(idle_threshold_ns: u64, confirm_retransmits: u32) -> Self {
        Self {
            idle_threshold_ns,
            confirm_retransmits,
            burst_window_ns: 60_000_000_000,
            forget_after_ns: 300_000_000_000,
            max_episodes: 65_536,
            zero_window_confirm_ns: DEFAULT_ZERO_WINDOW_CONFIRM_NS,
        }
    }
}

/// Everything known about a storm, for events, metrics and alerts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Storm {
    /// Unique per connmon run.
    pub id: u64,
    pub cookie: u64,
    pub owner: Option<ProcessRef>,
    pub role: Role,
    pub connection: Connection,
    pub state: TcpState,
    /// The idle gap before the burst whose data is stuck.
    pub idle_ns: u64,
    /// When the stuck data was first sent (monotonic ns).
    pub started_ns: u64,
    pub first_retransmit_ns: u64,
    /// The retransmit that confirmed the storm.
    pub confirmed_ns: u64,
    /// Retransmits of every kind in this storm so far.
    pub retransmits: u32,
    pub timeout_retransmits: u32,
    /// When the kernel will abort the connection, if it can be estimated.
    pub gives_up_at_ns: Option<u64>,
    pub tcp_retries2: u8,
    pub user_timeout_ms: u32,
}

/// A reset on a connection right after it resumed from idle: the path
/// forgot the flow and said so (RST) instead of dropping silently, or the
/// peer had closed the idle connection (its FIN came first, e.g. Redis
/// `timeout`) and this side wrote on it anyway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IdleReset {
    pub cookie: u64,
    pub owner: Option<ProcessRef>,
    pub role: Role,
    pub connection: Connection,
    pub idle_ns: u64,
    pub at_ns: u64,
    pub retransmits: u32,
    /// The socket was in CLOSE_WAIT when the reset came: the peer had
    /// closed the connection while it was idle.
    pub peer_closed: bool,
}

/// A way a watched connection fails with no retransmit storm to show for
/// it: each has its own cause and fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Data written after the peer's window was open never left the host
    /// (a local firewall drop: the send fails inside the host, so the
    /// kernel probes instead of retransmitting), until it gave up.
    EgressBlocked,
    /// The SYN was retransmitted: a connect to a dead path hangs.
    ConnectStalled,
    /// Keepalive probes on an idle connection went unanswered.
    KeepaliveTimeout,
    /// The peer stopped reading: its receive window stayed shut with data
    /// waiting, while its ACKs keep the connection alive.
    ZeroWindow,
}

impl FailureMode {
    pub const ALL: [Self; 4] = [
        Self::EgressBlocked,
        Self::ConnectStalled,
        Self::KeepaliveTimeout,
        Self::ZeroWindow,
    ];

    /// The finding's `event` name, and the metric's `mode` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EgressBlocked => "egress_blocked",
            Self::ConnectStalled => "connect_stalled",
            Self::KeepaliveTimeout => "keepalive_timeout",
            Self::ZeroWindow => "zero_window",
        }
    }
}

/// A connection that failed in one of the `FailureMode`s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConnectionFailure {
    pub mode: FailureMode,
    pub cookie: u64,
    pub owner: Option<ProcessRef>,
    pub role: Role,
    pub connection: Connection,
    /// No payload either way for this long before the failure began (the
    /// stuck write's idle gap; for a keepalive, until the kernel gave up).
    pub idle_ns: u64,
    /// When it began: the stuck write, the last payload (keepalive), the
    /// first SYN retransmit (connect).
    pub started_ns: u64,
    pub at_ns: u64,
    /// SYN retransmits (connect), else RTO retransmits in a row.
    pub retransmits: u32,
    /// Zero-window or keepalive probes sent without an answer; for a
    /// `zero_window` still hanging, the probes since the window shut (the
    /// peer answered them).
    pub probes: u8,
    /// Bytes written that never left the host.
    pub unsent_bytes: u32,
    /// The kernel gave up (ETIMEDOUT); `false`: still hanging (a connect
    /// whose SYN retransmits confirmed it, a socket a scan found stuck).
    pub timed_out: bool,
    /// This is the end of an episode already reported while it hung
    /// (counted then, not again).
    pub reported_while_hanging: bool,
    /// A SYN retransmit failed inside the host (EPERM: a local firewall
    /// dropped it), so the connect never reached the wire.
    pub dropped_in_host: bool,
    pub tcp_retries2: u8,
}

/// What the detector concluded from an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    StormStarted(Storm),
    StormEnded {
        storm: Storm,
        outcome: Outcome,
        ended_ns: u64,
        errno: Option<i32>,
    },
    ResetAfterIdle(IdleReset),
    ConnectionFailed(ConnectionFailure),
}

/// A connect whose SYN is being retransmitted.
#[derive(Debug)]
struct ConnectAttempt {
    first_retransmit_ns: u64,
    last_event_ns: u64,
    retransmits: u32,
    /// One of them failed with EPERM (see `ConnectionFailure`).
    dropped_in_host: bool,
    /// `connect_stalled` was reported for it.
    reported: bool,
}

/// Retransmits in flight on one socket.
#[derive(Debug)]
struct Episode {
    first_retransmit_ns: u64,
    last_event_ns: u64,
    retransmits: u32,
    timeout_retransmits: u32,
    highest_rto_count: u8,
    /// RTO retransmit times, for the give-up estimate (the last few).
    rto_times_ns: Vec<u64>,
    storm: Option<Storm>,
    /// What the storm would be, while the idle-after-burst condition holds
    /// but too few RTO retransmits have confirmed it.
    candidate: Option<Storm>,
}

const RTO_TIMES_KEPT: usize = 8;

pub struct Detector {
    config: DetectorConfig,
    episodes: FxHashMap<u64, Episode>,
    /// Sockets a scan found with data stuck in the send queue.
    stuck: stuck::StuckSockets,
    /// Connects with SYN retransmits, bounded by `max_episodes` too.
    connects: FxHashMap<u64, ConnectAttempt>,
    next_storm_id: u64,
    /// Episodes not tracked because `max_episodes` was reached.
    pub episodes_dropped: u64,
}

fn outcome_for(errno: i32) -> Outcome {
    match errno {
        libc::ETIMEDOUT => Outcome::TimedOut,
        libc::ECONNRESET | libc::EPIPE => Outcome::Reset,
        libc::ECONNABORTED => Outcome::Aborted,
        _ => Outcome::Closed,
    }
}

/// How long the socket had been idle when a reset arrived: the stuck
/// burst's idle gap, or, when the reset answers the very send that ended
/// the idle time (it can arrive in softirq before the send hook has run),
/// the time since the last payload.
fn idle_before_reset(event: &SocketEvent, config: &DetectorConfig) -> Option<u64> {
    if let Some(idle) = idle_before_stuck_burst(event, config, event.timestamp_ns) {
        return Some(idle);
    }
    let activity = &event.activity;
    let last_active = activity.last_send_ns.max(activity.last_recv_ns)?;
    let idle = event.timestamp_ns.saturating_sub(last_active);
    (idle >= config.idle_threshold_ns).then_some(idle)
}

/// The idle gap before the socket's current burst, if the burst followed an
/// idle gap, started within the window before `at_ns`, and nothing has been
/// received since it began.
fn idle_before_stuck_burst(
    event: &SocketEvent,
    config: &DetectorConfig,
    at_ns: u64,
) -> Option<u64> {
    let activity = &event.activity;
    let burst_start = activity.burst_start_ns?;
    // The kernel's rule for waking the reader, the same function.
    if !may_confirm_storm(&activity.to_wire(), config.idle_threshold_ns) {
        return None;
    }
    if at_ns.saturating_sub(burst_start) > config.burst_window_ns {
        return None;
    }
    Some(activity.idle_before_burst_ns)
}

impl Detector {
    pub fn new(config: DetectorConfig) -> Self {
        Self {
            config,
            episodes: FxHashMap::default(),
            stuck: stuck::StuckSockets::new(stuck::StuckConfig {
                zero_window_confirm_ns: config.zero_window_confirm_ns,
                egress_confirm_probes: stuck::EGRESS_CONFIRM_PROBES,
                idle_threshold_ns: config.idle_threshold_ns,
                keep_reported_ns: config.forget_after_ns,
                max_episodes: config.max_episodes,
            }),
            connects: FxHashMap::default(),
            next_storm_id: 1,
            episodes_dropped: 0,
        }
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Storms in progress.
    pub fn active_storms(&self) -> impl Iterator<Item = &Storm> {
        self.episodes
            .values()
            .filter_map(|episode| episode.storm.as_ref())
    }

    /// Sockets with retransmits in flight.
    pub fn episodes(&self) -> usize {
        self.episodes.len()
    }

    /// Feeds a scan of the sockets whose data is stuck in the send queue
    /// (`stuck`): each episode is reported once, while it hangs. A socket
    /// with a storm is the storm's.
    pub fn on_stuck_scan(&mut self, scan: &stuck::StuckScan) -> Vec<Finding> {
        self.stuck
            .scan(scan)
            .into_iter()
            .filter(|failure| !self.episodes.contains_key(&failure.cookie))
            .map(Finding::ConnectionFailed)
            .collect()
    }

    /// Feeds one event; returns what it concluded.
    pub fn handle(&mut self, event: &SocketEvent) -> Vec<Finding> {
        let mut findings = Vec::new();
        match &event.kind {
            EventKind::Retransmit(_) if event.state.0 == TCP_SYN_SENT => {
                self.on_syn_retransmit(event, &mut findings);
            }
            EventKind::Retransmit(info) => {
                // The kernel's count of RTOs in a row went down: an ACK made
                // progress that we did not see as an event. The old episode
                // is over.
                let restarted = self.episodes.get(&event.cookie).is_some_and(|episode| {
                    info.kind == RetransmitKind::Timeout
                        && info.rto_retransmits < episode.highest_rto_count
                });
                if restarted {
                    self.end(
                        event.cookie,
                        Outcome::Recovered,
                        event.timestamp_ns,
                        None,
                        &mut findings,
                    );
                }
                self.on_retransmit(event, &mut findings);
            }
            EventKind::Progress { .. } => self.end(
                event.cookie,
                Outcome::Recovered,
                event.timestamp_ns,
                None,
                &mut findings,
            ),
            EventKind::ResetReceived | EventKind::ResetSent => {
                let in_storm = self
                    .episodes
                    .get(&event.cookie)
                    .is_some_and(|episode| episode.storm.is_some());
                if in_storm {
                    self.end(
                        event.cookie,
                        Outcome::Reset,
                        event.timestamp_ns,
                        None,
                        &mut findings,
                    );
                } else {
                    let retransmits = self
                        .episodes
                        .remove(&event.cookie)
                        .map_or(0, |episode| episode.retransmits);
                    if matches!(event.kind, EventKind::ResetReceived)
                        && let Some(idle_ns) = idle_before_reset(event, &self.config)
                    {
                        findings.push(Finding::ResetAfterIdle(IdleReset {
                            cookie: event.cookie,
                            owner: event.owner.clone(),
                            role: event.role,
                            connection: event.connection.clone(),
                            idle_ns,
                            at_ns: event.timestamp_ns,
                            retransmits,
                            peer_closed: event.state.0 == monitor_common::tcp::TCP_CLOSE_WAIT,
                        }));
                    }
                }
            }
            EventKind::SocketError { errno } => {
                self.on_failed_end(event, *errno, event.state, &mut findings);
                self.end(
                    event.cookie,
                    outcome_for(*errno),
                    event.timestamp_ns,
                    Some(*errno),
                    &mut findings,
                );
            }
            // The kernel closes a socket before it reports the error, so the
            // CLOSE carries the errno (0 for an orderly close).
            EventKind::StateChange { old, new, errno }
                if new.0 == monitor_common::tcp::TCP_CLOSE =>
            {
                self.on_failed_end(event, *errno, *old, &mut findings);
                let errno = (*errno != 0).then_some(*errno);
                let outcome = errno.map_or(Outcome::Closed, outcome_for);
                self.end(
                    event.cookie,
                    outcome,
                    event.timestamp_ns,
                    errno,
                    &mut findings,
                );
            }
            // Normally the error or CLOSE ended the storm already; if
            // their records were lost, the destroy record repeats the errno.
            EventKind::Destroyed { errno, .. } => {
                self.connects.remove(&event.cookie);
                self.stuck.ended(event.cookie);
                let errno = (*errno != 0).then_some(*errno);
                self.end(
                    event.cookie,
                    errno.map_or(Outcome::Closed, outcome_for),
                    event.timestamp_ns,
                    errno,
                    &mut findings,
                );
            }
            // Busy connections' retransmits: counted, never a storm.
            EventKind::StateChange { .. }
            | EventKind::RetransmitCounts { .. }
            | EventKind::ReplyAfterIdle { .. } => {}
        }
        findings
    }

    /// A SYN retransmit: `confirm_retransmits` of them in a row report the
    /// connect as stalled, once.
    fn on_syn_retransmit(&mut self, event: &SocketEvent, findings: &mut Vec<Finding>) {
        if !self.connects.contains_key(&event.cookie)
            && self.connects.len() >= self.config.max_episodes
        {
            self.episodes_dropped += 1;
            return;
        }
        let attempt = self
            .connects
            .entry(event.cookie)
            .or_insert_with(|| ConnectAttempt {
                first_retransmit_ns: event.timestamp_ns,
                last_event_ns: event.timestamp_ns,
                retransmits: 0,
                dropped_in_host: false,
                reported: false,
            });
        attempt.retransmits += 1;
        if let EventKind::Retransmit(info) = &event.kind {
            attempt.dropped_in_host |= info.result == -libc::EPERM;
        }
        attempt.last_event_ns = event.timestamp_ns;
        if attempt.reported || attempt.retransmits < self.config.confirm_retransmits {
            return;
        }
        attempt.reported = true;
        let tcp_retries2 = match &event.kind {
            EventKind::Retransmit(info) => info.tcp_retries2,
            _ => 0,
        };
        findings.push(Finding::ConnectionFailed(ConnectionFailure {
            mode: FailureMode::ConnectStalled,
            cookie: event.cookie,
            owner: event.owner.clone(),
            role: event.role,
            connection: event.connection.clone(),
            idle_ns: 0,
            started_ns: attempt.first_retransmit_ns,
            at_ns: event.timestamp_ns,
            retransmits: attempt.retransmits,
            probes: 0,
            unsent_bytes: 0,
            timed_out: false,
            dropped_in_host: attempt.dropped_in_host,
            reported_while_hanging: false,
            tcp_retries2,
        }));
    }

    /// A socket that the kernel gave up on (ETIMEDOUT) without a storm on
    /// it: its end state says how. `before` is its state before it failed.
    fn on_failed_end(
        &mut self,
        event: &SocketEvent,
        errno: i32,
        before: TcpState,
        findings: &mut Vec<Finding>,
    ) {
        let attempt = self.connects.remove(&event.cookie);
        let reported_stuck = self.stuck.ended(event.cookie);
        if errno != libc::ETIMEDOUT {
            return;
        }
        let storm = self
            .episodes
            .get(&event.cookie)
            .is_some_and(|episode| episode.storm.is_some() || episode.candidate.is_some());
        let Some(end) = event.end.filter(|_| !storm) else {
            return;
        };
        let activity = &event.activity;
        let last_active = activity.last_send_ns.max(activity.last_recv_ns);
        let (mode, idle_ns, started_ns) = if before.0 == TCP_SYN_SENT || attempt.is_some() {
            if attempt.as_ref().is_some_and(|attempt| attempt.reported) {
                return;
            }
            let started = attempt
                .as_ref()
                .map_or(event.timestamp_ns, |attempt| attempt.first_retransmit_ns);
            (FailureMode::ConnectStalled, 0, started)
        } else if end.probes_out > 0 && end.unsent_bytes > 0 {
            // The peer's window was open, nothing was in flight, yet the
            // data stayed: every transmit failed inside the host. A shut
            // window is a peer that stopped reading (given up on only with
            // TCP_USER_TIMEOUT: its ACKs answer the probes).
            let mode = if end.send_window > 0 {
                FailureMode::EgressBlocked
            } else {
                FailureMode::ZeroWindow
            };
            let started = activity.burst_start_ns.or(activity.last_send_ns);
            let idle = idle_before_stuck_burst(event, &self.config, event.timestamp_ns)
                .or_else(|| {
                    (activity.idle_before_burst_ns >= self.config.idle_threshold_ns)
                        .then_some(activity.idle_before_burst_ns)
                })
                .unwrap_or(0);
            (mode, idle, started.unwrap_or(event.timestamp_ns))
        } else if end.probes_out > 0 && end.unsent_bytes == 0 && end.rto_retransmits == 0 {
            // Nothing to send and nothing retransmitted: only keepalive
            // probes go out on such a socket.
            let last = last_active.unwrap_or(event.timestamp_ns);
            (
                FailureMode::KeepaliveTimeout,
                event.timestamp_ns.saturating_sub(last),
                last,
            )
        } else {
            return;
        };
        findings.push(Finding::ConnectionFailed(ConnectionFailure {
            mode,
            cookie: event.cookie,
            owner: event.owner.clone(),
            role: event.role,
            connection: event.connection.clone(),
            idle_ns,
            started_ns,
            at_ns: event.timestamp_ns,
            retransmits: attempt
                .as_ref()
                .map_or(u32::from(end.rto_retransmits), |attempt| {
                    attempt.retransmits.max(u32::from(end.rto_retransmits))
                }),
            probes: end.probes_out,
            unsent_bytes: end.unsent_bytes,
            timed_out: true,
            reported_while_hanging: reported_stuck == Some(mode),
            dropped_in_host: mode == FailureMode::EgressBlocked
                || attempt
                    .as_ref()
                    .is_some_and(|attempt| attempt.dropped_in_host),
            tcp_retries2: end.tcp_retries2,
        }));
    }

    fn on_retransmit(&mut self, event: &SocketEvent, findings: &mut Vec<Finding>) {
        let EventKind::Retransmit(info) = &event.kind else {
            return;
        };
        if !self.episodes.contains_key(&event.cookie)
            && self.episodes.len() >= self.config.max_episodes
        {
            self.episodes_dropped += 1;
            return;
        }
        let episode = self
            .episodes
            .entry(event.cookie)
            .or_insert_with(|| Episode {
                first_retransmit_ns: event.timestamp_ns,
                last_event_ns: event.timestamp_ns,
                retransmits: 0,
                timeout_retransmits: 0,
                highest_rto_count: 0,
                rto_times_ns: Vec::new(),
                storm: None,
                candidate: None,
            });
        episode.last_event_ns = event.timestamp_ns;
        episode.retransmits += 1;
        episode.highest_rto_count = episode.highest_rto_count.max(info.rto_retransmits);
        if info.kind == RetransmitKind::Timeout {
            episode.timeout_retransmits += 1;
            if episode.rto_times_ns.len() == RTO_TIMES_KEPT {
                episode.rto_times_ns.remove(0);
            }
            episode.rto_times_ns.push(event.timestamp_ns);
        }
        let started_ns = event
            .activity
            .burst_start_ns
            .unwrap_or(episode.first_retransmit_ns)
            .min(episode.first_retransmit_ns);
        let gives_up = |rto_times: &[u64]| {
            giveup::gives_up_at_ns(
                started_ns,
                rto_times,
                info.tcp_retries2,
                info.user_timeout_ms,
            )
        };

        if let Some(storm) = &mut episode.storm {
            storm.retransmits = episode.retransmits;
            storm.timeout_retransmits = episode.timeout_retransmits;
            if info.kind == RetransmitKind::Timeout {
                storm.gives_up_at_ns = gives_up(&episode.rto_times_ns).or(storm.gives_up_at_ns);
            }
            if event.owner.is_some() && event.owner != storm.owner {
                storm.owner = event.owner.clone();
            }
            return;
        }
        // Only timeout retransmits can confirm, and only after an idle gap.
        if info.kind != RetransmitKind::Timeout {
            return;
        }
        let Some(idle_ns) =
            idle_before_stuck_burst(event, &self.config, episode.first_retransmit_ns)
        else {
            return;
        };
        // Built once per episode, then kept up to date: the hot path of a
        // long storm allocates nothing.
        let storm = episode.candidate.get_or_insert_with(|| Storm {
            id: 0,
            cookie: event.cookie,
            owner: event.owner.clone(),
            role: event.role,
            connection: event.connection.clone(),
            state: event.state,
            idle_ns,
            started_ns,
            first_retransmit_ns: episode.first_retransmit_ns,
            confirmed_ns: event.timestamp_ns,
            retransmits: 0,
            timeout_retransmits: 0,
            gives_up_at_ns: None,
            tcp_retries2: info.tcp_retries2,
            user_timeout_ms: info.user_timeout_ms,
        });
        storm.retransmits = episode.retransmits;
        storm.timeout_retransmits = episode.timeout_retransmits;
        storm.confirmed_ns = event.timestamp_ns;
        if event.owner.is_some() && event.owner != storm.owner {
            storm.owner = event.owner.clone();
        }
        let in_a_row = episode
            .timeout_retransmits
            .max(u32::from(info.rto_retransmits));
        if in_a_row < self.config.confirm_retransmits {
            // Not confirmed yet; kept in case the kernel gives up first.
            return;
        }
        let Some(mut storm) = episode.candidate.take() else {
            return;
        };
        storm.id = self.next_storm_id;
        storm.gives_up_at_ns = gives_up(&episode.rto_times_ns);
        self.next_storm_id += 1;
        episode.storm = Some(storm.clone());
        findings.push(Finding::StormStarted(storm));
    }

    fn end(
        &mut self,
        cookie: u64,
        outcome: Outcome,
        at_ns: u64,
        errno: Option<i32>,
        findings: &mut Vec<Finding>,
    ) {
        let Some(episode) = self.episodes.remove(&cookie) else {
            return;
        };
        let storm = match (episode.storm, episode.candidate) {
            (Some(storm), _) => storm,
            // The kernel gave up before enough retransmits confirmed the
            // storm (a large RTO, a low tcp_retries2 or TCP_USER_TIMEOUT):
            // the timeout itself confirms it.
            (None, Some(mut candidate)) if outcome == Outcome::TimedOut => {
                candidate.id = self.next_storm_id;
                self.next_storm_id += 1;
                candidate.confirmed_ns = at_ns;
                candidate.gives_up_at_ns = Some(at_ns);
                findings.push(Finding::StormStarted(candidate.clone()));
                candidate
            }
            _ => return,
        };
        findings.push(Finding::StormEnded {
            storm,
            outcome,
            ended_ns: at_ns,
            errno,
        });
    }

    /// How long a silent socket is remembered.
    pub fn forget_after_ns(&self) -> u64 {
        self.config.forget_after_ns
    }

    /// Drops episodes silent for `forget_after_ns`; storms among them end as
    /// `unknown`. Call periodically with the current monotonic time.
    pub fn expire(&mut self, now_ns: u64) -> Vec<Finding> {
        let forget_after = self.config.forget_after_ns;
        self.stuck.expire(now_ns);
        self.connects
            .retain(|_, attempt| now_ns.saturating_sub(attempt.last_event_ns) < forget_after);
        let stale: Vec<u64> = self
            .episodes
            .iter()
            .filter(|(_, episode)| now_ns.saturating_sub(episode.last_event_ns) >= forget_after)
            .map(|(cookie, _)| *cookie)
            .collect();
        let mut findings = Vec::new();
        for cookie in stale {
            self.end(cookie, Outcome::Unknown, now_ns, None, &mut findings);
        }
        findings
    }

    /// Ends the storms in progress whose socket `exists` says is gone, as
    /// `unknown`: records were lost (a full ring), among them maybe their
    /// end; the outcome is not guessed. Call only after the records written
    /// before the loss were processed.
    pub fn reconcile(&mut self, now_ns: u64, exists: impl Fn(&Storm) -> bool) -> Vec<Finding> {
        let gone: Vec<u64> = self
            .active_storms()
            .filter(|storm| !exists(storm))
            .map(|storm| storm.cookie)
            .collect();
        let mut findings = Vec::new();
        for cookie in gone {
            self.end(cookie, Outcome::Unknown, now_ns, None, &mut findings);
        }
        findings
    }

    /// Ends the storm on `cookie` as `aborted`: connmon's fail-fast destroyed
    /// the socket (the reset and close that follow are its echo).
    pub fn aborted(&mut self, cookie: u64, now_ns: u64) -> Vec<Finding> {
        let mut findings = Vec::new();
        self.end(
            cookie,
            Outcome::Aborted,
            now_ns,
            Some(libc::ECONNABORTED),
            &mut findings,
        );
        findings
    }

    /// Ends every storm in progress as `monitor_stopped` (shutdown).
    pub fn stop(&mut self, now_ns: u64) -> Vec<Finding> {
        let cookies: Vec<u64> = self.episodes.keys().copied().collect();
        let mut findings = Vec::new();
        for cookie in cookies {
            self.end(cookie, Outcome::MonitorStopped, now_ns, None, &mut findings);
        }
        findings
    }
}

#[cfg(test)]
mod tests;
