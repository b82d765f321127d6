//! The detector driven by recorded event sequences: the seed scenario, the
//! server side, and the negatives that must not be storms.

use super::*;
use crate::event::{ActivityTimes, EndState, OwnerSource, Progress, RetransmitInfo};

const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

fn config() -> DetectorConfig {
    DetectorConfig::new(30 * S, 3)
}

/// A socket whose events are recorded as the kernel would emit them.
struct Recording {
    cookie: u64,
    owner: ProcessRef,
    role: Role,
    activity: ActivityTimes,
    connection: Connection,
}

impl Recording {
    fn client() -> Self {
        Self {
            cookie: 42,
            owner: ProcessRef {
                pid: 1234,
                tid: 1240,
                comm: "invite-svc".into(),
                cgroup_id: 77,
                start_boottime_ns: 5,
                source: OwnerSource::Send,
                shared: false,
            },
            role: Role::Client,
            activity: ActivityTimes::default(),
            connection: Connection {
                local: "10.0.0.2:41000".parse().expect("addr"),
                remote: "10.0.1.5:6379".parse().expect("addr"),
                netns: 4026531840,
            },
        }
    }

    /// Payload sent at `at`, after the socket was last active at `previous`.
    fn resumed(mut self, previous_ns: u64, at_ns: u64) -> Self {
        self.activity = ActivityTimes {
            last_send_ns: Some(at_ns),
            last_recv_ns: Some(previous_ns),
            burst_start_ns: Some(at_ns),
            idle_before_burst_ns: at_ns - previous_ns,
        };
        self
    }

    fn event(&self, at_ns: u64, kind: EventKind) -> SocketEvent {
        SocketEvent {
            timestamp_ns: at_ns,
            cookie: self.cookie,
            kind,
            owner: Some(self.owner.clone()),
            role: self.role,
            connection: self.connection.clone(),
            state: TcpState(1),
            activity: self.activity,
            end: None,
        }
    }

    fn retransmit(&self, at_ns: u64, kind: RetransmitKind, rto_retransmits: u8) -> SocketEvent {
        self.event(
            at_ns,
            EventKind::Retransmit(RetransmitInfo {
                kind,
                result: 0,
                segments: 1,
                rto_retransmits,
                backoff: rto_retransmits.saturating_sub(1),
                snd_una: 1000,
                user_timeout_ms: 0,
                tcp_retries2: 4,
                total_retrans_low: 0,
            }),
        )
    }
}

/// The seed scenario with `tcp_retries2 = 4`, as measured: SET after 60 s
/// idle, a tail-loss probe, RTO retransmits at 416, 832, 1664, 3328 ms,
/// ETIMEDOUT at 6.85 s, then close and destroy.
fn seed(recording: &Recording, send_ns: u64) -> Vec<SocketEvent> {
    vec![
        recording.retransmit(send_ns + 208 * MS, RetransmitKind::TailLossProbe, 0),
        recording.retransmit(send_ns + 416 * MS, RetransmitKind::Timeout, 1),
        recording.retransmit(send_ns + 832 * MS, RetransmitKind::Timeout, 2),
        recording.retransmit(send_ns + 1664 * MS, RetransmitKind::Timeout, 3),
        recording.retransmit(send_ns + 3328 * MS, RetransmitKind::Timeout, 4),
        // The kernel closes first (sk_err already set), then reports.
        recording.event(
            send_ns + 6850 * MS,
            EventKind::StateChange {
                old: TcpState(1),
                new: TcpState(7),
                errno: libc::ETIMEDOUT,
            },
        ),
        recording.event(
            send_ns + 6850 * MS,
            EventKind::SocketError {
                errno: libc::ETIMEDOUT,
            },
        ),
        // The destroy record repeats the errno the socket ended with.
        recording.event(
            send_ns + 6850 * MS,
            EventKind::Destroyed {
                errno: libc::ETIMEDOUT,
                total_retrans_low: 0,
            },
        ),
    ]
}

fn run(detector: &mut Detector, events: &[SocketEvent]) -> Vec<(usize, Finding)> {
    events
        .iter()
        .enumerate()
        .flat_map(|(index, event)| detector.handle(event).into_iter().map(move |f| (index, f)))
        .collect()
}

#[test]
fn a_storm_whose_error_and_close_records_were_lost_ends_with_the_destroy_records_errno() {
    let recording = Recording::client().resumed(40 * S, 100 * S);
    let mut detector = Detector::new(config());
    let mut events = seed(&recording, 100 * S);
    // A full ring lost the CLOSE and the error report.
    events.retain(|event| {
        !matches!(
            event.kind,
            EventKind::StateChange { .. } | EventKind::SocketError { .. }
        )
    });
    let findings = run(&mut detector, &events);
    let Some((_, Finding::StormEnded { outcome, errno, .. })) = findings.last() else {
        panic!("no end: {findings:#?}");
    };
    assert_eq!(*outcome, Outcome::TimedOut);
    assert_eq!(*errno, Some(libc::ETIMEDOUT));
    assert_eq!(detector.episodes(), 0);
}

#[test]
fn seed_scenario_is_one_storm_confirmed_at_the_third_rto_then_timed_out() {
    let recording = Recording::client().resumed(40 * S, 100 * S);
    let mut detector = Detector::new(config());
    let findings = run(&mut detector, &seed(&recording, 100 * S));
    assert_eq!(findings.len(), 2, "{findings:#?}");

    let (index, Finding::StormStarted(storm)) = &findings[0] else {
        panic!("{findings:#?}")
    };
    assert_eq!(*index, 3, "confirmed by the third RTO retransmit");
    assert_eq!(
        storm
            .owner
            .as_ref()
            .map(|o| (o.pid, o.tid, o.comm.as_str())),
        Some((1234, 1240, "invite-svc"))
    );
    assert_eq!(storm.role, Role::Client);
    assert_eq!(storm.connection.remote.port(), 6379);
    assert_eq!(storm.idle_ns, 60 * S);
    assert_eq!(storm.retransmits, 4);
    assert_eq!(storm.started_ns, 100 * S);
    assert_eq!(storm.confirmed_ns, 100 * S + 1664 * MS);
    assert_eq!(storm.gives_up_at_ns, Some(100 * S + 6656 * MS));

    let (
        index,
        Finding::StormEnded {
            storm: ended,
            outcome,
            ended_ns,
            errno,
        },
    ) = &findings[1]
    else {
        panic!("{findings:#?}")
    };
    assert_eq!(*index, 5);
    assert_eq!(*outcome, Outcome::TimedOut);
    assert_eq!(*errno, Some(libc::ETIMEDOUT));
    assert_eq!(*ended_ns - ended.started_ns, 6850 * MS);
    assert_eq!(ended.retransmits, 5);
    assert_eq!(ended.id, storm.id);
    assert_eq!(detector.episodes(), 0);
}

#[test]
fn kernel_giving_up_before_confirmation_still_reports_the_storm() {
    // A large RTO (3 s after a retransmitted SYN) and tcp_retries2=4: only
    // two RTO retransmits happen before ETIMEDOUT.
    let recording = Recording::client().resumed(40 * S, 100 * S);
    let events = vec![
        recording.retransmit(100 * S + 400 * MS, RetransmitKind::TailLossProbe, 0),
        recording.retransmit(103 * S, RetransmitKind::Timeout, 1),
        recording.retransmit(109 * S, RetransmitKind::Timeout, 2),
        recording.event(
            121 * S,
            EventKind::StateChange {
                old: TcpState(1),
                new: TcpState(7),
                errno: libc::ETIMEDOUT,
            },
        ),
    ];
    let findings = run(&mut Detector::new(config()), &events);
    assert!(
        matches!(
            &findings[..],
            [(3, Finding::StormStarted(started)), (3, Finding::StormEnded { outcome: Outcome::TimedOut, storm: ended, .. })]
                if started.id == ended.id && started.idle_ns == 60 * S && started.retransmits == 3
        ),
        "{findings:#?}"
    );
}

#[test]
fn an_unconfirmed_episode_closed_without_timeout_stays_quiet() {
    let recording = Recording::client().resumed(40 * S, 100 * S);
    let events = vec![
        recording.retransmit(100 * S + 400 * MS, RetransmitKind::Timeout, 1),
        recording.event(
            101 * S,
            EventKind::Destroyed {
                errno: 0,
                total_retrans_low: 0,
            },
        ),
    ];
    assert_eq!(run(&mut Detector::new(config()), &events), vec![]);
}

#[test]
fn confirmation_count_is_configurable() {
    let recording = Recording::client().resumed(40 * S, 100 * S);
    let mut detector = Detector::new(DetectorConfig::new(30 * S, 4));
    let findings = run(&mut detector, &seed(&recording, 100 * S));
    let (index, Finding::StormStarted(_)) = &findings[0] else {
        panic!("{findings:#?}")
    };
    assert_eq!(*index, 4);
}

#[test]
fn server_side_storm_is_attributed_to_the_server_with_role_server() {
    let mut recording = Recording::client().resumed(10 * S, 50 * S);
    recording.role = Role::Server;
    recording.owner.comm = "redis-server".into();
    recording.connection = Connection {
        local: "10.0.1.5:6379".parse().expect("addr"),
        remote: "10.0.0.2:41000".parse().expect("addr"),
        netns: 1,
    };
    let findings = run(&mut Detector::new(config()), &seed(&recording, 50 * S));
    let (_, Finding::StormStarted(storm)) = &findings[0] else {
        panic!("{findings:#?}")
    };
    assert_eq!(storm.role, Role::Server);
    assert_eq!(
        storm.owner.as_ref().map(|o| o.comm.as_str()),
        Some("redis-server")
    );
}

#[test]
fn busy_connection_with_random_loss_is_not_an_idle_storm() {
    // Payload flows both ways all the time: each retransmit sees a receive
    // after the (long past) burst start.
    let mut recording = Recording::client();
    let mut detector = Detector::new(config());
    let mut events = Vec::new();
    for second in 1..200u64 {
        let at = second * S;
        recording.activity = ActivityTimes {
            last_send_ns: Some(at),
            last_recv_ns: Some(at - 10 * MS),
            burst_start_ns: Some(S),
            idle_before_burst_ns: 0,
        };
        events.push(recording.retransmit(at, RetransmitKind::Fast, 0));
        if second % 7 == 0 {
            // Even three RTOs in a row: receives keep happening.
            events.push(recording.retransmit(at + 200 * MS, RetransmitKind::Timeout, 1));
            events.push(recording.retransmit(at + 600 * MS, RetransmitKind::Timeout, 2));
            events.push(recording.retransmit(at + 1400 * MS, RetransmitKind::Timeout, 3));
        }
        events.push(recording.event(
            at + 1500 * MS,
            EventKind::Progress {
                progress: Progress::Acknowledged,
            },
        ));
    }
    assert_eq!(run(&mut detector, &events), vec![]);
    assert_eq!(detector.episodes(), 0, "progress ends every episode");
}

#[test]
fn a_sender_that_resumed_long_ago_is_not_blamed_on_its_old_idle_gap() {
    // Idle 60 s once, then sending for 10 minutes without replies (a
    // one-way stream), then loss: the old gap is outside the burst window.
    let recording = Recording::client().resumed(40 * S, 100 * S);
    let events = seed(&recording, 700 * S);
    assert_eq!(run(&mut Detector::new(config()), &events), vec![]);
}

#[test]
fn idle_connection_used_again_over_an_intact_path_is_quiet() {
    // A lone tail-loss probe, acknowledged: no storm, and nothing left over.
    let recording = Recording::client().resumed(40 * S, 100 * S);
    let mut detector = Detector::new(config());
    let events = vec![
        recording.retransmit(100 * S + 208 * MS, RetransmitKind::TailLossProbe, 0),
        recording.event(
            100 * S + 210 * MS,
            EventKind::Progress {
                progress: Progress::DataReceived,
            },
        ),
    ];
    assert_eq!(run(&mut detector, &events), vec![]);
    assert_eq!(detector.episodes(), 0);
}

#[test]
fn short_idle_gap_is_not_idle() {
    let recording = Recording::client().resumed(95 * S, 100 * S);
    assert_eq!(
        run(&mut Detector::new(config()), &seed(&recording, 100 * S)),
        vec![]
    );
}

#[test]
fn middlebox_reset_after_idle_is_reported_without_a_storm() {
    let recording = Recording::client().resumed(40 * S, 100 * S);
    let events = vec![
        recording.event(100 * S + MS, EventKind::ResetReceived),
        recording.event(
            100 * S + MS,
            EventKind::SocketError {
                errno: libc::ECONNRESET,
            },
        ),
        recording.event(
            100 * S + MS,
            EventKind::Destroyed {
                errno: 0,
                total_retrans_low: 0,
            },
        ),
    ];
    let findings = run(&mut Detector::new(config()), &events);
    assert_eq!(findings.len(), 1, "{findings:#?}");
    let (_, Finding::ResetAfterIdle(reset)) = &findings[0] else {
        panic!("{findings:#?}")
    };
    assert_eq!(reset.idle_ns, 60 * S);
    assert_eq!(reset.owner.as_ref().map(|o| o.pid), Some(1234));
}

#[test]
fn reset_racing_ahead_of_the_send_hook_is_still_after_idle() {
    // The RST answers the first send after idle before sock_send_length ran:
    // the socket's activity still shows only the old traffic.
    let mut recording = Recording::client().resumed(30 * S, 40 * S);
    recording.activity.idle_before_burst_ns = 0;
    let events = vec![recording.event(100 * S, EventKind::ResetReceived)];
    let findings = run(&mut Detector::new(config()), &events);
    let [(_, Finding::ResetAfterIdle(reset))] = &findings[..] else {
        panic!("{findings:#?}")
    };
    assert_eq!(reset.idle_ns, 60 * S);
}

#[test]
fn reset_during_a_storm_ends_it_as_reset() {
    let recording = Recording::client().resumed(40 * S, 100 * S);
    let mut events = seed(&recording, 100 * S)[..4].to_vec();
    events.push(recording.event(102 * S, EventKind::ResetReceived));
    let findings = run(&mut Detector::new(config()), &events);
    assert!(
        matches!(
            findings[1].1,
            Finding::StormEnded {
                outcome: Outcome::Reset,
                ..
            }
        ),
        "{findings:#?}"
    );
}

#[test]
fn acknowledged_data_ends_a_storm_as_recovered() {
    let recording = Recording::client().resumed(40 * S, 100 * S);
    let mut events = seed(&recording, 100 * S)[..4].to_vec();
    events.push(recording.event(
        102 * S,
        EventKind::Progress {
            progress: Progress::Acknowledged,
        },
    ));
    let findings = run(&mut Detector::new(config()), &events);
    assert!(
        matches!(
            findings[1].1,
            Finding::StormEnded {
                outcome: Outcome::Recovered,
                ..
            }
        ),
        "{findings:#?}"
    );
}

#[test]
fn a_falling_rto_count_means_unseen_progress() {
    let recording = Recording::client().resumed(40 * S, 100 * S);
    let mut events = seed(&recording, 100 * S)[..4].to_vec();
    // The kernel's RTO count restarted: an ACK got through in between.
    events.push(recording.retransmit(110 * S, RetransmitKind::Timeout, 1));
    let mut detector = Detector::new(config());
    let findings = run(&mut detector, &events);
    assert!(
        matches!(
            findings[1].1,
            Finding::StormEnded {
                outcome: Outcome::Recovered,
                ..
            }
        ),
        "{findings:#?}"
    );
    assert_eq!(detector.episodes(), 1, "a new episode began");
}

#[test]
fn close_without_error_ends_as_closed() {
    let recording = Recording::client().resumed(40 * S, 100 * S);
    let mut events = seed(&recording, 100 * S)[..4].to_vec();
    events.push(recording.event(
        102 * S,
        EventKind::StateChange {
            old: TcpState(1),
            new: TcpState(7),
            errno: 0,
        },
    ));
    let findings = run(&mut Detector::new(config()), &events);
    assert!(matches!(
        findings[1].1,
        Finding::StormEnded {
            outcome: Outcome::Closed,
            errno: None,
            ..
        }
    ));
}

#[test]
fn silent_storms_expire_and_shutdown_ends_the_rest() {
    let recording = Recording::client().resumed(40 * S, 100 * S);
    let mut detector = Detector::new(config());
    run(&mut detector, &seed(&recording, 100 * S)[..4]);
    assert_eq!(detector.active_storms().count(), 1);
    assert_eq!(detector.expire(200 * S), vec![], "not silent long enough");
    let expired = detector.expire(500 * S);
    assert!(matches!(
        expired[..],
        [Finding::StormEnded {
            outcome: Outcome::Unknown,
            ..
        }]
    ));

    let mut other = Recording::client().resumed(40 * S, 100 * S);
    other.cookie = 43;
    run(&mut detector, &seed(&other, 100 * S)[..4]);
    let stopped = detector.stop(103 * S);
    assert!(matches!(
        stopped[..],
        [Finding::StormEnded {
            outcome: Outcome::MonitorStopped,
            ..
        }]
    ));
}

#[test]
fn episode_table_is_bounded() {
    let mut detector = Detector::new(DetectorConfig {
        max_episodes: 2,
        ..config()
    });
    for cookie in 0..5 {
        let mut recording = Recording::client();
        recording.cookie = cookie;
        detector.handle(&recording.retransmit(S, RetransmitKind::Fast, 0));
    }
    assert_eq!((detector.episodes(), detector.episodes_dropped), (2, 3));
}

#[test]
fn an_aborted_storm_ends_as_aborted_and_its_echo_is_ignored() {
    let recording = Recording::client().resumed(40 * S, 100 * S);
    let mut detector = Detector::new(config());
    run(&mut detector, &seed(&recording, 100 * S)[..4]);
    let ended = detector.aborted(recording.cookie, 102 * S);
    assert!(
        matches!(
            ended[..],
            [Finding::StormEnded {
                outcome: Outcome::Aborted,
                ..
            }]
        ),
        "{ended:#?}"
    );
    let echo = vec![
        recording.event(102 * S, EventKind::ResetSent),
        recording.event(
            102 * S,
            EventKind::StateChange {
                old: TcpState(1),
                new: TcpState(7),
                errno: libc::ECONNABORTED,
            },
        ),
    ];
    assert_eq!(run(&mut detector, &echo), vec![]);
}

#[test]
fn after_lost_records_only_storms_whose_socket_is_gone_end_and_as_unknown() {
    let gone = Recording::client().resumed(40 * S, 100 * S);
    let mut alive = Recording::client().resumed(40 * S, 100 * S);
    alive.cookie = 43;
    let mut detector = Detector::new(config());
    let mut events: Vec<SocketEvent> = seed(&gone, 100 * S).into_iter().take(4).collect();
    events.extend(seed(&alive, 100 * S).into_iter().take(4));
    let started = run(&mut detector, &events);
    assert_eq!(started.len(), 2, "{started:#?}");
    let findings = detector.reconcile(120 * S, |storm| storm.cookie == alive.cookie);
    let [
        Finding::StormEnded {
            storm,
            outcome,
            errno,
            ..
        },
    ] = findings.as_slice()
    else {
        panic!("{findings:#?}");
    };
    assert_eq!(
        (storm.cookie, *outcome, *errno),
        (gone.cookie, Outcome::Unknown, None)
    );
    assert_eq!(
        detector.active_storms().count(),
        1,
        "the live socket's storm goes on"
    );
}

// ---- failures without a storm: egress blocked, connect stalled, keepalive ----

/// The end a kernel timeout gives: CLOSE with ETIMEDOUT from `before`,
/// carrying the socket's end state.
fn timed_out(recording: &Recording, at_ns: u64, before: u8, end: EndState) -> SocketEvent {
    let mut event = recording.event(
        at_ns,
        EventKind::StateChange {
            old: TcpState(before),
            new: TcpState(7),
            errno: libc::ETIMEDOUT,
        },
    );
    event.end = Some(end);
    event
}

fn failures(findings: &[(usize, Finding)]) -> Vec<&ConnectionFailure> {
    findings
        .iter()
        .filter_map(|(_, finding)| match finding {
            Finding::ConnectionFailed(failure) => Some(failure),
            _ => None,
        })
        .collect()
}

/// The end of a write that never left the host: probes, bytes unsent,
/// the peer's window open.
fn blocked_end() -> EndState {
    EndState {
        probes_out: 4,
        unsent_bytes: 31,
        send_window: 65_483,
        tcp_retries2: 4,
        ..EndState::default()
    }
}

/// The one failure a kernel timeout at 106 s reports, and all findings.
fn failure_at_timeout(
    detector: &mut Detector,
    recording: &Recording,
    end: EndState,
) -> (ConnectionFailure, Vec<(usize, Finding)>) {
    let findings = run(detector, &[timed_out(recording, 106 * S, 1, end)]);
    let [failure] = failures(&findings)[..] else {
        panic!("{findings:#?}")
    };
    (failure.clone(), findings)
}

#[test]
fn data_that_never_left_the_host_is_egress_blocked_with_its_idle_gap() {
    // SET after 60 s idle; an OUTPUT drop keeps it in the host: no
    // retransmit, only zero-window-style probes, then ETIMEDOUT.
    let recording = Recording::client().resumed(40 * S, 100 * S);
    let mut detector = Detector::new(config());
    let (failure, findings) = failure_at_timeout(&mut detector, &recording, blocked_end());
    assert_eq!(failure.mode, FailureMode::EgressBlocked);
    assert_eq!(
        (failure.idle_ns, failure.started_ns, failure.at_ns),
        (60 * S, 100 * S, 106 * S)
    );
    assert_eq!((failure.probes, failure.unsent_bytes), (4, 31));
    assert!(failure.timed_out);
    assert_eq!(findings.len(), 1, "and nothing else: {findings:#?}");
}

/// A scan row for the recording's socket: probe timer running, nothing in
/// flight, `send_window` as given.
fn stuck_row(recording: &Recording, send_window: u32, probes_out: u8) -> stuck::StuckRow {
    stuck::StuckRow {
        cookie: recording.cookie,
        connection: recording.connection.clone(),
        role: recording.role,
        probe_timer_in_ms: 100,
        send: crate::sockdiag::SendState {
            unsent_bytes: 31,
            in_flight: 0,
            send_window,
            probes_out,
            backoff: probes_out,
            rto_us: 200_000,
        },
        last_data_recv_ms: 61_000,
        tcp_retries2: 4,
    }
}

#[test]
fn egress_blocked_warned_while_hanging_ends_once_counted() {
    let recording = Recording::client().resumed(40 * S, 100 * S);
    let mut detector = Detector::new(config());
    let warned = detector.on_stuck_scan(&stuck::StuckScan {
        at_ns: 102 * S,
        rows: vec![stuck_row(&recording, 65_483, 3)],
    });
    let [Finding::ConnectionFailed(warning)] = &warned[..] else {
        panic!("{warned:#?}")
    };
    assert_eq!(warning.mode, FailureMode::EgressBlocked);
    assert!(!warning.timed_out && !warning.reported_while_hanging);
    let (last, _) = failure_at_timeout(&mut detector, &recording, blocked_end());
    assert_eq!(last.mode, FailureMode::EgressBlocked);
    assert!(last.timed_out && last.reported_while_hanging, "{last:#?}");
}

#[test]
fn a_shut_window_that_user_timeout_ends_is_zero_window() {
    let recording = Recording::client().resumed(40 * S, 100 * S);
    let end = EndState {
        send_window: 0,
        user_timeout_ms: 5_000,
        ..blocked_end()
    };
    let mut detector = Detector::new(config());
    let (failure, _) = failure_at_timeout(&mut detector, &recording, end);
    assert_eq!(failure.mode, FailureMode::ZeroWindow);
    assert!(failure.timed_out && !failure.reported_while_hanging);
    assert!(!failure.dropped_in_host);
}

#[test]
fn unanswered_keepalive_probes_on_an_idle_connection_are_a_keepalive_timeout() {
    let recording = Recording::client().resumed(40 * S, 100 * S);
    let end = EndState {
        probes_out: 3,
        send_window: 65_483,
        ..EndState::default()
    };
    let mut detector = Detector::new(config());
    let findings = run(&mut detector, &[timed_out(&recording, 130 * S, 1, end)]);
    let [failure] = failures(&findings)[..] else {
        panic!("{findings:#?}")
    };
    assert_eq!(failure.mode, FailureMode::KeepaliveTimeout);
    assert_eq!(failure.idle_ns, 30 * S, "quiet since the last payload");
    assert_eq!(failure.probes, 3);
}

#[test]
fn a_storm_that_timed_out_is_no_other_failure() {
    let recording = Recording::client().resumed(40 * S, 100 * S);
    let mut events = seed(&recording, 100 * S);
    for event in &mut events {
        if matches!(
            event.kind,
            EventKind::StateChange { .. } | EventKind::SocketError { .. }
        ) {
            event.end = Some(EndState {
                rto_retransmits: 4,
                ..EndState::default()
            });
        }
    }
    let mut detector = Detector::new(config());
    let findings = run(&mut detector, &events);
    assert!(failures(&findings).is_empty(), "{findings:#?}");
    assert_eq!(findings.len(), 2, "{findings:#?}");
}

#[test]
fn other_ends_are_no_failure() {
    let recording = Recording::client().resumed(40 * S, 100 * S);
    let mut detector = Detector::new(config());
    let mut reset = recording.event(
        101 * S,
        EventKind::SocketError {
            errno: libc::ECONNRESET,
        },
    );
    reset.end = Some(EndState {
        probes_out: 2,
        unsent_bytes: 10,
        send_window: 100,
        ..EndState::default()
    });
    // A timeout whose end state shows neither probes nor a SYN: a
    // data timeout connmon saw no retransmit of.
    let unexplained = timed_out(&recording, 102 * S, 1, EndState::default());
    let findings = run(&mut detector, &[reset, unexplained]);
    assert!(findings.is_empty(), "{findings:#?}");
}

/// A connect to a dead path as the kernel reports it: SYN retransmits at
/// 1, 3, 7 s (the socket still in SYN_SENT).
fn syn_retransmits(recording: &Recording, connect_ns: u64, count: usize) -> Vec<SocketEvent> {
    [1, 3, 7, 15, 31]
        .iter()
        .take(count)
        .enumerate()
        .map(|(index, seconds)| {
            let mut event = recording.retransmit(
                connect_ns + seconds * S,
                RetransmitKind::Timeout,
                index as u8 + 1,
            );
            event.state = TcpState(TCP_SYN_SENT);
            event
        })
        .collect()
}

#[test]
fn a_connect_whose_syn_is_retransmitted_is_stalled_once() {
    let mut recording = Recording::client();
    recording.owner.source = OwnerSource::Connect;
    let mut events = syn_retransmits(&recording, 10 * S, 5);
    events.push(timed_out(
        &recording,
        73 * S,
        TCP_SYN_SENT,
        EndState {
            rto_retransmits: 5,
            ..EndState::default()
        },
    ));
    let mut detector = Detector::new(config());
    let findings = run(&mut detector, &events);
    let [(index, Finding::ConnectionFailed(failure))] = &findings[..] else {
        panic!("{findings:#?}")
    };
    assert_eq!(*index, 2, "confirmed by the third SYN retransmit");
    assert_eq!(failure.mode, FailureMode::ConnectStalled);
    assert_eq!(failure.retransmits, 3);
    assert_eq!(failure.started_ns, 11 * S);
    assert!(!failure.timed_out, "reported while the connect hangs");
    assert!(!failure.dropped_in_host, "the SYNs went out");
    assert_eq!(detector.episodes(), 0, "no storm episode for a SYN");
}

#[test]
fn a_connect_that_times_out_before_confirmation_is_stalled_and_timed_out() {
    let recording = Recording::client();
    let mut events = syn_retransmits(&recording, 10 * S, 1);
    events.push(timed_out(
        &recording,
        13 * S,
        TCP_SYN_SENT,
        EndState {
            rto_retransmits: 1,
            ..EndState::default()
        },
    ));
    let mut detector = Detector::new(config());
    let findings = run(&mut detector, &events);
    let [failure] = failures(&findings)[..] else {
        panic!("{findings:#?}")
    };
    assert_eq!(failure.mode, FailureMode::ConnectStalled);
    assert!(failure.timed_out);
    assert_eq!(failure.retransmits, 1);
}

#[test]
fn a_connect_answered_after_one_lost_syn_is_quiet_and_forgotten() {
    let recording = Recording::client();
    let mut detector = Detector::new(config());
    let findings = run(&mut detector, &syn_retransmits(&recording, 10 * S, 1));
    assert!(findings.is_empty(), "{findings:#?}");
    assert!(
        detector
            .expire(10 * S + config().forget_after_ns + 2 * S)
            .is_empty()
    );
    assert!(detector.connects.is_empty());
}

#[test]
fn a_connect_whose_syns_fail_inside_the_host_says_so() {
    let recording = Recording::client();
    let mut events = syn_retransmits(&recording, 10 * S, 3);
    for event in &mut events {
        if let EventKind::Retransmit(info) = &mut event.kind {
            info.result = -libc::EPERM;
        }
    }
    let mut detector = Detector::new(config());
    let findings = run(&mut detector, &events);
    let [failure] = failures(&findings)[..] else {
        panic!("{findings:#?}")
    };
    assert_eq!(failure.mode, FailureMode::ConnectStalled);
    assert!(failure.dropped_in_host);
}

/// Every reuse after an idle gap is evidence for the path's idle timeout:
/// the reply to one (survived), the storm of another (blackholed), the
/// reset of a third, each with the gap it came after.
#[test]
fn each_reuse_after_idle_is_evidence_with_its_gap_and_outcome() {
    use super::reuse::{self, ReuseOutcome};
    let mut detector = Detector::new(config());
    // A reply 2 ms after a request sent after 45 s of quiet.
    let answered = Recording::client().resumed(55 * S, 100 * S);
    let reply = answered.event(
        100 * S + 2 * MS,
        EventKind::ReplyAfterIdle { gap_ns: 45 * S },
    );
    assert_eq!(detector.handle(&reply), vec![], "a reply is no finding");
    let survived = reuse::survived(&reply).expect("a reply after idle is evidence");
    assert_eq!(
        (survived.outcome, survived.gap_ns, survived.role),
        (ReuseOutcome::Survived, 45 * S, Role::Client)
    );
    assert_eq!(survived.connection.remote.to_string(), "10.0.1.5:6379");

    let stormed = Recording::client().resumed(40 * S, 100 * S);
    let evidence: Vec<_> = run(&mut detector, &seed(&stormed, 100 * S))
        .iter()
        .filter_map(|(_, finding)| reuse::failed(finding).map(|r| (r.outcome, r.gap_ns)))
        .collect();
    assert_eq!(
        evidence,
        vec![(ReuseOutcome::Blackholed, 60 * S)],
        "the start counts, the end does not"
    );

    let reset = Recording::client().resumed(20 * S, 100 * S);
    let findings = run(
        &mut detector,
        &[reset.event(100 * S + MS, EventKind::ResetReceived)],
    );
    let evidence: Vec<_> = findings
        .iter()
        .filter_map(|(_, finding)| reuse::failed(finding).map(|r| (r.outcome, r.gap_ns)))
        .collect();
    assert_eq!(evidence, vec![(ReuseOutcome::Reset, 80 * S)]);

    // A busy connection's events are no evidence.
    let busy = Recording::client().resumed(99 * S, 100 * S);
    assert!(reuse::survived(&busy.retransmit(100 * S, RetransmitKind::Fast, 0)).is_none());
}

#[test]
fn a_reset_from_a_peer_that_closed_the_idle_connection_says_nothing_about_the_path() {
    use super::reuse::{self, ReuseOutcome};
    let recording = Recording::client().resumed(40 * S, 100 * S);
    let mut reset = recording.event(100 * S + MS, EventKind::ResetReceived);
    reset.state = TcpState(monitor_common::tcp::TCP_CLOSE_WAIT);
    let findings = run(&mut Detector::new(config()), &[reset]);
    let [(_, finding)] = &findings[..] else {
        panic!("{findings:#?}")
    };
    let evidence = reuse::failed(finding).expect("evidence");
    assert_eq!(evidence.outcome, ReuseOutcome::PeerClosed);
    assert!(!evidence.outcome.path_forgot());
}
