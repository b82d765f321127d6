//! Findings as records: `Reporter` builds one typed record per finding;
//! stdout, the HTTP API and the alerts read its fields, and serde writes
//! the one JSON shape they all carry (docs/schemas/finding.schema.json).

use std::{collections::BTreeMap, net::SocketAddr, time::SystemTime};

use serde::{Serialize, Serializer};

use crate::{
    attribution::{Attributor, existing::OwnerResolver, pods::PodDirectory},
    clock::WallClock,
    detect::{ConnectionFailure, FailureMode, Finding, Outcome, Storm},
    event::{Connection, OwnerSource, ProcessRef, Role},
    output::{hint, trace::errno_name},
};

const NS_PER_S: f64 = 1e9;

/// Which finding a record is; its name is the record's `event`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FindingEvent {
    StormStarted,
    StormEnded,
    ResetAfterIdle,
    /// `egress_blocked`, `connect_stalled`, `keepalive_timeout`.
    ConnectionFailed(FailureMode),
}

impl FindingEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StormStarted => "storm_started",
            Self::StormEnded => "storm_ended",
            Self::ResetAfterIdle => "reset_after_idle",
            Self::ConnectionFailed(mode) => mode.as_str(),
        }
    }
}

impl Serialize for FindingEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Why a connection was reset after idle (`reset_after_idle` only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetCause {
    /// The peer had closed the idle connection first (its FIN arrived;
    /// e.g. Redis `timeout`).
    PeerClosed,
    /// The reset came out of the blue: the path or the server forgot the
    /// connection.
    Reset,
}

/// What a record does to the storms in progress (the storms API's
/// `active`, Alertmanager's repeated alerts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StormChange {
    Started(u64),
    Ended(u64),
}

/// One finding, flat and stable: `event` says which. Times, addresses and
/// kinds stay typed here; they become the JSON's strings only when the
/// record is serialized.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FindingRecord {
    pub event: FindingEvent,
    /// `output::SCHEMA_VERSION`.
    pub schema_version: u32,
    #[serde(serialize_with = "wall_time")]
    pub time: SystemTime,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storm_id: Option<u64>,
    pub pid: Option<u32>,
    /// The thread that last wrote to the socket.
    pub tid: Option<u32>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    pub cgroup: Option<String>,
    pub cgroup_id: Option<u64>,
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub systemd_unit: Option<String>,
    /// How the owner was found: connect, send, receive (kernel hooks), or
    /// proc (the socket predates connmon or was never used while watched).
    pub owner_source: Option<OwnerSource>,
    /// The socket changed hands between processes (fork, fd passing);
    /// `pid` is the last process that used it.
    pub shared: Option<bool>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub netns: u32,
    pub role: Role,
    pub service: Option<String>,
    pub idle_seconds: f64,
    pub retransmits: u32,
    #[serde(serialize_with = "wall_time")]
    pub started_at: SystemTime,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "optional_wall_time"
    )]
    pub confirmed_at: Option<SystemTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gives_up_in_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Errno>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<ResetCause>,
    /// `egress_blocked`, `keepalive_timeout`: zero-window or keepalive
    /// probes the kernel sent without an answer (so far, or before it gave
    /// up); `zero_window`: window probes since the window shut, answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probes: Option<u8>,
    /// `egress_blocked`: bytes the application wrote that never left the
    /// host; `zero_window`: bytes waiting for the peer's window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsent_bytes: Option<u32>,
    pub tcp_retries2: Option<u8>,
    pub cookie: u64,
    pub hint: String,
}

impl FindingRecord {
    /// A storm's start or end; `None` for every other finding.
    pub fn storm_change(&self) -> Option<StormChange> {
        match (self.event, self.storm_id) {
            (FindingEvent::StormStarted, Some(id)) => Some(StormChange::Started(id)),
            (FindingEvent::StormEnded, Some(id)) => Some(StormChange::Ended(id)),
            _ => None,
        }
    }
}

fn wall_time<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&crate::clock::rfc3339(*time))
}

fn optional_wall_time<S: Serializer>(
    time: &Option<SystemTime>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => wall_time(time, serializer),
        None => serializer.serialize_none(),
    }
}

/// A socket's errno, written by name (`ETIMEDOUT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Serialize for Errno {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&errno_name(self.0))
    }
}

/// Port -> the service's name (`Settings::services`), for hints and
/// labels: all of the settings a `Reporter` needs.
#[derive(Clone, Debug, Default)]
pub struct ServiceNames(BTreeMap<u16, String>);

impl ServiceNames {
    pub fn new(names: BTreeMap<u16, String>) -> Self {
        Self(names)
    }

    /// The watched service on the far side (client) or this side (server).
    fn of(&self, connection: &Connection, role: Role) -> Option<String> {
        let (first, second) =
            role.service_then_peer(connection.local.port(), connection.remote.port());
        self.0.get(&first).or_else(|| self.0.get(&second)).cloned()
    }
}

/// The connection a finding is about and who holds it: what every record
/// starts from.
struct Subject<'a> {
    event: FindingEvent,
    at_ns: u64,
    recorded_owner: Option<&'a ProcessRef>,
    cookie: u64,
    connection: &'a Connection,
    role: Role,
    idle_ns: u64,
}

impl<'a> Subject<'a> {
    fn of(finding: &'a Finding) -> Self {
        // `Storm`, `IdleReset` and `ConnectionFailure` name these fields
        // alike.
        macro_rules! subject {
            ($event:expr, $at_ns:expr, $about:expr) => {
                Subject {
                    event: $event,
                    at_ns: $at_ns,
                    recorded_owner: $about.owner.as_ref(),
                    cookie: $about.cookie,
                    connection: &$about.connection,
                    role: $about.role,
                    idle_ns: $about.idle_ns,
                }
            };
        }
        match finding {
            Finding::StormStarted(storm) => {
                subject!(FindingEvent::StormStarted, storm.confirmed_ns, storm)
            }
            Finding::StormEnded {
                storm, ended_ns, ..
            } => subject!(FindingEvent::StormEnded, *ended_ns, storm),
            Finding::ResetAfterIdle(reset) => {
                subject!(FindingEvent::ResetAfterIdle, reset.at_ns, reset)
            }
            Finding::ConnectionFailed(failure) => subject!(
                FindingEvent::ConnectionFailed(failure.mode),
                failure.at_ns,
                failure
            ),
        }
    }
}

/// Builds records from findings, looking processes up as needed.
pub struct Reporter {
    clock: WallClock,
    attributor: Attributor,
    owners: OwnerResolver,
    services: ServiceNames,
    pods: Option<PodDirectory>,
}

impl Reporter {
    pub fn new(
        clock: WallClock,
        attributor: Attributor,
        owners: OwnerResolver,
        services: ServiceNames,
    ) -> Self {
        Self {
            clock,
            attributor,
            owners,
            services,
            pods: None,
        }
    }

    /// Names pods from the kubelet's pod log directory.
    pub fn with_pods(mut self, pods: PodDirectory) -> Self {
        self.pods = Some(pods);
        self
    }

    pub fn record(&mut self, finding: &Finding) -> FindingRecord {
        let mut record = self.base(Subject::of(finding));
        match finding {
            Finding::StormStarted(storm) => {
                let gives_up = storm
                    .gives_up_at_ns
                    .map(|at| round(seconds(at.saturating_sub(storm.confirmed_ns))));
                record.gives_up_in_seconds = gives_up;
                self.fill_storm(&mut record, storm, gives_up);
            }
            Finding::StormEnded {
                storm,
                outcome,
                ended_ns,
                errno,
            } => {
                record.outcome = Some(*outcome);
                record.duration_seconds =
                    Some(round(seconds(ended_ns.saturating_sub(storm.started_ns))));
                record.error = errno.map(Errno);
                let gives_up = storm
                    .gives_up_at_ns
                    .map(|at| seconds(at.saturating_sub(storm.confirmed_ns)));
                self.fill_storm(&mut record, storm, gives_up);
            }
            Finding::ResetAfterIdle(reset) => {
                record.retransmits = reset.retransmits;
                record.outcome = Some(Outcome::Reset);
                record.cause = Some(if reset.peer_closed {
                    ResetCause::PeerClosed
                } else {
                    ResetCause::Reset
                });
                record.hint = hint::reset_hint(
                    record.service.as_deref(),
                    record.idle_seconds,
                    reset.peer_closed,
                );
            }
            Finding::ConnectionFailed(failure) => self.fill_failure(&mut record, failure),
        }
        record
    }

    /// A storm's own fields, and its hint (`gives_up`: seconds from its
    /// confirmation until the kernel gives up).
    fn fill_storm(&self, record: &mut FindingRecord, storm: &Storm, gives_up: Option<f64>) {
        record.storm_id = Some(storm.id);
        record.retransmits = storm.retransmits;
        record.started_at = self.clock.wall_time(storm.started_ns);
        record.confirmed_at = Some(self.clock.wall_time(storm.confirmed_ns));
        record.tcp_retries2 = Some(storm.tcp_retries2);
        record.hint = hint::storm_hint(
            storm.role,
            record.service.as_deref(),
            record.comm.as_deref(),
            record.idle_seconds,
            gives_up,
        );
    }

    fn fill_failure(&self, record: &mut FindingRecord, failure: &ConnectionFailure) {
        record.retransmits = failure.retransmits;
        record.started_at = self.clock.wall_time(failure.started_ns);
        record.tcp_retries2 = Some(failure.tcp_retries2);
        if failure.timed_out {
            record.outcome = Some(Outcome::TimedOut);
            record.error = Some(Errno(libc::ETIMEDOUT));
            record.duration_seconds = Some(round(seconds(
                failure.at_ns.saturating_sub(failure.started_ns),
            )));
        }
        if failure.mode != FailureMode::ConnectStalled {
            record.probes = Some(failure.probes);
        }
        if matches!(
            failure.mode,
            FailureMode::EgressBlocked | FailureMode::ZeroWindow
        ) {
            record.unsent_bytes = Some(failure.unsent_bytes);
        }
        record.hint = hint::failure_hint(failure, record.service.as_deref(), record.idle_seconds);
    }

    /// The recorded owner, or, for a socket the kernel never saw used in
    /// process context, the process /proc says holds it.
    pub fn owner_of(
        &mut self,
        recorded: Option<&ProcessRef>,
        cookie: u64,
        connection: &Connection,
    ) -> Option<ProcessRef> {
        recorded
            .cloned()
            .or_else(|| self.owners.resolve(cookie, connection))
    }

    /// The fields every record has: what, when, who and which connection.
    fn base(&mut self, subject: Subject) -> FindingRecord {
        let owner = self.owner_of(subject.recorded_owner, subject.cookie, subject.connection);
        let details = owner
            .as_ref()
            .map(|owner| self.attributor.details(owner))
            .unwrap_or_default();
        let pod = match (&mut self.pods, &details.workload.pod_uid) {
            (Some(pods), Some(uid)) => pods.lookup(uid),
            _ => None,
        };
        let at = self.clock.wall_time(subject.at_ns);
        FindingRecord {
            event: subject.event,
            schema_version: crate::output::SCHEMA_VERSION,
            time: at,
            storm_id: None,
            pid: owner.as_ref().map(|o| o.pid),
            tid: owner.as_ref().map(|o| o.tid),
            cgroup_id: owner.as_ref().map(|o| o.cgroup_id),
            owner_source: owner.as_ref().map(|o| o.source),
            shared: owner.as_ref().map(|o| o.shared),
            comm: owner.map(|o| o.comm),
            exe: details.exe,
            cgroup: details.cgroup,
            container_id: details.workload.container_id,
            pod_namespace: pod.as_ref().map(|p| p.namespace.clone()),
            pod_name: pod.map(|p| p.name),
            pod_uid: details.workload.pod_uid,
            systemd_unit: details.workload.systemd_unit,
            local: subject.connection.local,
            remote: subject.connection.remote,
            netns: subject.connection.netns,
            role: subject.role,
            service: self.services.of(subject.connection, subject.role),
            idle_seconds: round(seconds(subject.idle_ns)),
            retransmits: 0,
            started_at: at,
            confirmed_at: None,
            gives_up_in_seconds: None,
            outcome: None,
            duration_seconds: None,
            error: None,
            cause: None,
            probes: None,
            unsent_bytes: None,
            tcp_retries2: None,
            cookie: subject.cookie,
            hint: String::new(),
        }
    }
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / NS_PER_S
}

/// Seconds to milliseconds precision, for readable JSON.
fn round(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

/// A record as one line of text, for people. Process names, paths and
/// the hint (which quotes the process name) come from whoever runs the
/// process: the line is escaped as a whole, it has no control characters
/// of its own.
pub fn text_line(record: &FindingRecord) -> String {
    crate::output::escape::control_owned(unescaped_text_line(record))
}

fn unescaped_text_line(record: &FindingRecord) -> String {
    let who = match (&record.pid, &record.comm) {
        (Some(pid), Some(comm)) => format!("{comm}[{pid}] tid={}", record.tid.unwrap_or(*pid)),
        _ => "unknown process".into(),
    };
    let service = record
        .service
        .as_deref()
        .map(|s| format!(" ({s})"))
        .unwrap_or_default();
    let detail = match record.event {
        FindingEvent::StormStarted => format!(
            "idle {} then {} retransmits, gives up in {}",
            hint::human_duration(record.idle_seconds),
            record.retransmits,
            record
                .gives_up_in_seconds
                .map_or("?".into(), hint::human_duration)
        ),
        FindingEvent::StormEnded => format!(
            "{} after {}, {} retransmits",
            record.outcome.map_or("?", Outcome::as_str),
            hint::human_duration(record.duration_seconds.unwrap_or(0.0)),
            record.retransmits
        ),
        FindingEvent::ResetAfterIdle => format!(
            "reset after {} idle",
            hint::human_duration(record.idle_seconds)
        ),
        FindingEvent::ConnectionFailed(FailureMode::ConnectStalled) => format!(
            "SYN retransmitted {} times{}",
            record.retransmits,
            if record.outcome.is_some() {
                ", connect timed out"
            } else {
                ", connect hanging"
            }
        ),
        FindingEvent::ConnectionFailed(FailureMode::ZeroWindow) => format!(
            "peer stopped reading, {} bytes waiting, {} window probes answered, {}",
            record.unsent_bytes.unwrap_or(0),
            record.probes.unwrap_or(0),
            if record.outcome.is_some() {
                "timed out"
            } else {
                "write hanging"
            }
        ),
        FindingEvent::ConnectionFailed(mode) => format!(
            "{} after {} idle, {} probes unanswered, {}",
            mode.as_str().replace('_', " "),
            hint::human_duration(record.idle_seconds),
            record.probes.unwrap_or(0),
            if record.outcome.is_some() {
                "timed out"
            } else {
                "still hanging"
            }
        ),
    };
    format!(
        "{} {} {who} {:?} {} -> {}{service} netns={}: {detail}. {}",
        crate::clock::rfc3339(record.time),
        record.event.as_str().to_uppercase(),
        record.role,
        record.local,
        record.remote,
        record.netns,
        record.hint
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::detect::IdleReset;

    /// 2026-11-25T09:32:40Z at monotonic 0.
    const WALL_AT_ZERO_NS: u64 = 1_795_599_160_000_000_000;
    const S: u64 = 1_000_000_000;

    fn reporter() -> Reporter {
        // No /proc here: attribution finds nothing beyond the recorded owner.
        Reporter::new(
            WallClock::fixed(0, WALL_AT_ZERO_NS),
            Attributor::new("/nonexistent"),
            OwnerResolver::new("/nonexistent"),
            ServiceNames::new(crate::config::Settings::default().services),
        )
    }

    fn owner() -> ProcessRef {
        ProcessRef {
            pid: 4242,
            tid: 4250,
            comm: "invite-svc".into(),
            cgroup_id: 9,
            start_boottime_ns: 1,
            source: OwnerSource::Send,
            shared: false,
        }
    }

    fn connection(local: &str, remote: &str, netns: u32) -> Connection {
        Connection {
            local: local.parse().expect("addr"),
            remote: remote.parse().expect("addr"),
            netns,
        }
    }

    /// A client's connection to Redis.
    fn redis_connection() -> Connection {
        connection("10.0.0.2:41000", "10.0.1.5:6379", 4026531840)
    }

    fn storm() -> Storm {
        Storm {
            id: 7,
            cookie: 11,
            owner: Some(owner()),
            role: Role::Client,
            connection: redis_connection(),
            state: crate::event::TcpState(monitor_common::tcp::TCP_ESTABLISHED),
            idle_ns: 361 * S,
            started_ns: 3 * S + 4_000_000,
            first_retransmit_ns: 3 * S + 300_000_000,
            confirmed_ns: 4 * S + 689_000_000,
            retransmits: 4,
            timeout_retransmits: 3,
            gives_up_at_ns: Some(926 * S + 689_000_000),
            tcp_retries2: 15,
            user_timeout_ms: 0,
        }
    }

    /// A `storm_started` record as the reporter builds it, for the
    /// outputs' tests.
    pub(crate) fn storm_started() -> FindingRecord {
        reporter().record(&Finding::StormStarted(storm()))
    }

    fn failure(mode: FailureMode, timed_out: bool) -> ConnectionFailure {
        ConnectionFailure {
            mode,
            cookie: 12,
            owner: None,
            role: Role::Server,
            connection: connection("[fd00::5]:5432", "[fd00::2]:50000", 1),
            idle_ns: 120 * S,
            started_ns: 10 * S,
            at_ns: 70 * S + 500_000_000,
            retransmits: 6,
            probes: 9,
            unsent_bytes: 512,
            timed_out,
            dropped_in_host: false,
            reported_while_hanging: false,
            tcp_retries2: 15,
        }
    }

    /// The record's JSON as printed (fields in order), hint elided.
    fn json_of(finding: &Finding) -> String {
        let mut record = reporter().record(finding);
        // The hints' wording is hint.rs's; here only that there is one.
        assert!(!record.hint.is_empty(), "{record:?}");
        record.hint = "…".into();
        serde_json::to_string(&record).expect("serializes")
    }

    /// The records' JSON, field by field: stdout, the storms API and the
    /// webhooks all carry this shape (docs/schemas/finding.schema.json).
    #[test]
    fn records_keep_their_json_shape() {
        let started = json_of(&Finding::StormStarted(storm()));
        assert_eq!(
            started.as_str(),
            r#"{"event":"storm_started","schema_version":1,"time":"2026-11-25T09:32:44.689Z","storm_id":7,"pid":4242,"tid":4250,"comm":"invite-svc","exe":null,"cgroup":null,"cgroup_id":9,"container_id":null,"pod_uid":null,"pod_namespace":null,"pod_name":null,"systemd_unit":null,"owner_source":"send","shared":false,"local":"10.0.0.2:41000","remote":"10.0.1.5:6379","netns":4026531840,"role":"client","service":"redis","idle_seconds":361.0,"retransmits":4,"started_at":"2026-11-25T09:32:43.004Z","confirmed_at":"2026-11-25T09:32:44.689Z","gives_up_in_seconds":922.0,"tcp_retries2":15,"cookie":11,"hint":"…"}"#
        );
        let ended = json_of(&Finding::StormEnded {
            storm: storm(),
            outcome: Outcome::TimedOut,
            ended_ns: 928 * S,
            errno: Some(libc::ETIMEDOUT),
        });
        assert_eq!(
            ended.as_str(),
            r#"{"event":"storm_ended","schema_version":1,"time":"2026-11-25T09:48:08.000Z","storm_id":7,"pid":4242,"tid":4250,"comm":"invite-svc","exe":null,"cgroup":null,"cgroup_id":9,"container_id":null,"pod_uid":null,"pod_namespace":null,"pod_name":null,"systemd_unit":null,"owner_source":"send","shared":false,"local":"10.0.0.2:41000","remote":"10.0.1.5:6379","netns":4026531840,"role":"client","service":"redis","idle_seconds":361.0,"retransmits":4,"started_at":"2026-11-25T09:32:43.004Z","confirmed_at":"2026-11-25T09:32:44.689Z","outcome":"timed_out","duration_seconds":924.996,"error":"ETIMEDOUT","tcp_retries2":15,"cookie":11,"hint":"…"}"#
        );
        let reset = json_of(&Finding::ResetAfterIdle(IdleReset {
            cookie: 13,
            owner: Some(owner()),
            role: Role::Client,
            connection: redis_connection(),
            idle_ns: 3_700 * S,
            at_ns: 5 * S,
            retransmits: 0,
            peer_closed: true,
        }));
        assert_eq!(
            reset.as_str(),
            r#"{"event":"reset_after_idle","schema_version":1,"time":"2026-11-25T09:32:45.000Z","pid":4242,"tid":4250,"comm":"invite-svc","exe":null,"cgroup":null,"cgroup_id":9,"container_id":null,"pod_uid":null,"pod_namespace":null,"pod_name":null,"systemd_unit":null,"owner_source":"send","shared":false,"local":"10.0.0.2:41000","remote":"10.0.1.5:6379","netns":4026531840,"role":"client","service":"redis","idle_seconds":3700.0,"retransmits":0,"started_at":"2026-11-25T09:32:45.000Z","outcome":"reset","cause":"peer_closed","tcp_retries2":null,"cookie":13,"hint":"…"}"#
        );
        let blocked = json_of(&Finding::ConnectionFailed(failure(
            FailureMode::EgressBlocked,
            true,
        )));
        assert_eq!(
            blocked.as_str(),
            r#"{"event":"egress_blocked","schema_version":1,"time":"2026-11-25T09:33:50.500Z","pid":null,"tid":null,"comm":null,"exe":null,"cgroup":null,"cgroup_id":null,"container_id":null,"pod_uid":null,"pod_namespace":null,"pod_name":null,"systemd_unit":null,"owner_source":null,"shared":null,"local":"[fd00::5]:5432","remote":"[fd00::2]:50000","netns":1,"role":"server","service":"postgres","idle_seconds":120.0,"retransmits":6,"started_at":"2026-11-25T09:32:50.000Z","outcome":"timed_out","duration_seconds":60.5,"error":"ETIMEDOUT","probes":9,"unsent_bytes":512,"tcp_retries2":15,"cookie":12,"hint":"…"}"#
        );
        let stalled = json_of(&Finding::ConnectionFailed(failure(
            FailureMode::ConnectStalled,
            false,
        )));
        assert_eq!(
            stalled.as_str(),
            r#"{"event":"connect_stalled","schema_version":1,"time":"2026-11-25T09:33:50.500Z","pid":null,"tid":null,"comm":null,"exe":null,"cgroup":null,"cgroup_id":null,"container_id":null,"pod_uid":null,"pod_namespace":null,"pod_name":null,"systemd_unit":null,"owner_source":null,"shared":null,"local":"[fd00::5]:5432","remote":"[fd00::2]:50000","netns":1,"role":"server","service":"postgres","idle_seconds":120.0,"retransmits":6,"started_at":"2026-11-25T09:32:50.000Z","tcp_retries2":15,"cookie":12,"hint":"…"}"#
        );
    }

    /// The text line for people: time, event, who, where, what happened.
    #[test]
    fn text_lines_say_what_happened() {
        let mut reporter = reporter();
        let started = reporter.record(&Finding::StormStarted(storm()));
        let line = text_line(&started);
        assert!(
            line.starts_with(
                "2026-11-25T09:32:44.689Z STORM_STARTED invite-svc[4242] tid=4250 Client \
                 10.0.0.2:41000 -> 10.0.1.5:6379 (redis) netns=4026531840: \
                 idle 6m 1s then 4 retransmits, gives up in 15m 22s. "
            ),
            "{line}"
        );
        let keepalive = reporter.record(&Finding::ConnectionFailed(failure(
            FailureMode::KeepaliveTimeout,
            true,
        )));
        let line = text_line(&keepalive);
        assert!(
            line.starts_with(
                "2026-11-25T09:33:50.500Z KEEPALIVE_TIMEOUT unknown process Server \
                 [fd00::5]:5432 -> [fd00::2]:50000 (postgres) netns=1: \
                 keepalive timeout after 2m 0s idle, 9 probes unanswered, timed out. "
            ),
            "{line}"
        );
        let stalled = reporter.record(&Finding::ConnectionFailed(failure(
            FailureMode::ConnectStalled,
            false,
        )));
        assert!(
            text_line(&stalled).contains("SYN retransmitted 6 times, connect hanging. "),
            "{}",
            text_line(&stalled)
        );
    }
}
