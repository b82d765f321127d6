//! Findings as records: the same shape on stdout, in the HTTP API and in
//! alerts.

use serde::Serialize;

use crate::{
    attribution::{Attributor, existing::OwnerResolver, pods::PodDirectory},
    clock::WallClock,
    config::Settings,
    detect::{ConnectionFailure, Finding, IdleReset, Outcome, Storm},
    event::{Connection, OwnerSource, ProcessRef, Role},
    output::{hint, trace::errno_name},
};

const NS_PER_S: f64 = 1e9;

/// One finding, flat and stable: `event` says which.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FindingRecord {
    pub event: &'static str,
    /// `output::SCHEMA_VERSION`.
    pub schema_version: u32,
    pub time: String,
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
    pub local: String,
    pub remote: String,
    pub netns: u32,
    pub role: Role,
    pub service: Option<String>,
    pub idle_seconds: f64,
    pub retransmits: u32,
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirmed_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gives_up_in_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `reset_after_idle` only: `peer_closed` when the peer had closed the
    /// idle connection first (its FIN arrived; e.g. Redis `timeout`),
    /// `reset` when the reset came out of the blue (the path or the server
    /// forgot the connection).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<&'static str>,
    /// `egress_blocked`, `keepalive_timeout`: zero-window or keepalive
    /// probes the kernel sent without an answer before it gave up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probes: Option<u8>,
    /// `egress_blocked`: bytes the application wrote that never left the
    /// host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsent_bytes: Option<u32>,
    pub tcp_retries2: Option<u8>,
    pub cookie: u64,
    pub hint: String,
}

/// Builds records from findings, looking processes up as needed.
pub struct Reporter {
    clock: WallClock,
    attributor: Attributor,
    owners: OwnerResolver,
    pods: Option<PodDirectory>,
}

impl Reporter {
    pub fn new(clock: WallClock, attributor: Attributor, owners: OwnerResolver) -> Self {
        Self {
            clock,
            attributor,
            owners,
            pods: None,
        }
    }

    /// Names pods from the kubelet's pod log directory.
    pub fn with_pods(mut self, pods: PodDirectory) -> Self {
        self.pods = Some(pods);
        self
    }

    pub fn record(&mut self, finding: &Finding, settings: &Settings) -> FindingRecord {
        match finding {
            Finding::StormStarted(storm) => {
                let gives_up = storm
                    .gives_up_at_ns
                    .map(|at| round(at.saturating_sub(storm.confirmed_ns) as f64 / NS_PER_S));
                let mut record = self.storm_record(
                    "storm_started",
                    storm,
                    storm.confirmed_ns,
                    settings,
                    gives_up,
                );
                record.gives_up_in_seconds = gives_up;
                record
            }
            Finding::StormEnded {
                storm,
                outcome,
                ended_ns,
                errno,
            } => {
                let mut record = self.storm_record("storm_ended", storm, *ended_ns, settings, None);
                record.outcome = Some(*outcome);
                record.duration_seconds = Some(round(
                    ended_ns.saturating_sub(storm.started_ns) as f64 / NS_PER_S,
                ));
                record.error = errno.map(errno_name);
                record
            }
            Finding::ResetAfterIdle(reset) => self.reset_record(reset, settings),
            Finding::ConnectionFailed(failure) => self.failure_record(failure, settings),
        }
    }

    /// The recorded owner, or, for a socket the kernel never saw used in
    /// process context, the process /proc says holds it.
    fn owner_of(
        &mut self,
        recorded: Option<&ProcessRef>,
        cookie: u64,
        connection: &Connection,
    ) -> Option<ProcessRef> {
        recorded
            .cloned()
            .or_else(|| self.owners.resolve(cookie, connection))
    }

    fn storm_record(
        &mut self,
        event: &'static str,
        storm: &Storm,
        at_ns: u64,
        settings: &Settings,
        gives_up: Option<f64>,
    ) -> FindingRecord {
        let service = service_of(&storm.connection, storm.role, settings);
        let idle_seconds = round(storm.idle_ns as f64 / NS_PER_S);
        let resolved = self.owner_of(storm.owner.as_ref(), storm.cookie, &storm.connection);
        let owner = resolved.as_ref();
        let hint = hint::storm_hint(
            storm.role,
            service.as_deref(),
            owner.map(|o| o.comm.as_str()),
            idle_seconds,
            gives_up.or_else(|| {
                storm
                    .gives_up_at_ns
                    .map(|at| at.saturating_sub(storm.confirmed_ns) as f64 / NS_PER_S)
            }),
        );
        let mut record = self.base(
            event,
            at_ns,
            owner,
            &storm.connection,
            storm.role,
            service,
            storm.cookie,
            hint,
        );
        record.storm_id = Some(storm.id);
        record.idle_seconds = idle_seconds;
        record.retransmits = storm.retransmits;
        record.started_at = self.clock.rfc3339(storm.started_ns);
        record.confirmed_at = Some(self.clock.rfc3339(storm.confirmed_ns));
        record.tcp_retries2 = Some(storm.tcp_retries2);
        record
    }

    fn reset_record(&mut self, reset: &IdleReset, settings: &Settings) -> FindingRecord {
        let resolved = self.owner_of(reset.owner.as_ref(), reset.cookie, &reset.connection);
        let service = service_of(&reset.connection, reset.role, settings);
        let idle_seconds = round(reset.idle_ns as f64 / NS_PER_S);
        let hint = hint::reset_hint(service.as_deref(), idle_seconds, reset.peer_closed);
        let mut record = self.base(
            "reset_after_idle",
            reset.at_ns,
            resolved.as_ref(),
            &reset.connection,
            reset.role,
            service,
            reset.cookie,
            hint,
        );
        record.idle_seconds = idle_seconds;
        record.retransmits = reset.retransmits;
        record.outcome = Some(Outcome::Reset);
        record.cause = Some(if reset.peer_closed {
            "peer_closed"
        } else {
            "reset"
        });
        record
    }

    fn failure_record(
        &mut self,
        failure: &ConnectionFailure,
        settings: &Settings,
    ) -> FindingRecord {
        use crate::detect::FailureMode;
        let resolved = self.owner_of(failure.owner.as_ref(), failure.cookie, &failure.connection);
        let service = service_of(&failure.connection, failure.role, settings);
        let idle_seconds = round(failure.idle_ns as f64 / NS_PER_S);
        let hint = hint::failure_hint(failure, service.as_deref(), idle_seconds);
        let mut record = self.base(
            failure.mode.as_str(),
            failure.at_ns,
            resolved.as_ref(),
            &failure.connection,
            failure.role,
            service,
            failure.cookie,
            hint,
        );
        record.idle_seconds = idle_seconds;
        record.retransmits = failure.retransmits;
        record.started_at = self.clock.rfc3339(failure.started_ns);
        record.tcp_retries2 = Some(failure.tcp_retries2);
        if failure.timed_out {
            record.outcome = Some(Outcome::TimedOut);
            record.error = Some(errno_name(libc::ETIMEDOUT));
            record.duration_seconds = Some(round(
                failure.at_ns.saturating_sub(failure.started_ns) as f64 / NS_PER_S,
            ));
        }
        if failure.mode != FailureMode::ConnectStalled {
            record.probes = Some(failure.probes);
        }
        if failure.mode == FailureMode::EgressBlocked {
            record.unsent_bytes = Some(failure.unsent_bytes);
        }
        record
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "one private constructor for the shared fields"
    )]
    fn base(
        &mut self,
        event: &'static str,
        at_ns: u64,
        owner: Option<&ProcessRef>,
        connection: &Connection,
        role: Role,
        service: Option<String>,
        cookie: u64,
        hint: String,
    ) -> FindingRecord {
        let details = owner
            .map(|owner| self.attributor.details(owner))
            .unwrap_or_default();
        let pod = match (&mut self.pods, &details.workload.pod_uid) {
            (Some(pods), Some(uid)) => pods.lookup(uid),
            _ => None,
        };
        FindingRecord {
            event,
            schema_version: crate::output::SCHEMA_VERSION,
            time: self.clock.rfc3339(at_ns),
            storm_id: None,
            pid: owner.map(|o| o.pid),
            tid: owner.map(|o| o.tid),
            comm: owner.map(|o| o.comm.clone()),
            exe: details.exe,
            cgroup: details.cgroup,
            cgroup_id: owner.map(|o| o.cgroup_id),
            container_id: details.workload.container_id,
            pod_namespace: pod.as_ref().map(|p| p.namespace.clone()),
            pod_name: pod.map(|p| p.name),
            pod_uid: details.workload.pod_uid,
            systemd_unit: details.workload.systemd_unit,
            owner_source: owner.map(|o| o.source),
            shared: owner.map(|o| o.shared),
            local: connection.local.to_string(),
            remote: connection.remote.to_string(),
            netns: connection.netns,
            role,
            service,
            idle_seconds: 0.0,
            retransmits: 0,
            started_at: self.clock.rfc3339(at_ns),
            confirmed_at: None,
            gives_up_in_seconds: None,
            outcome: None,
            duration_seconds: None,
            error: None,
            cause: None,
            probes: None,
            unsent_bytes: None,
            tcp_retries2: None,
            cookie,
            hint,
        }
    }
}

/// The watched service on the far side (client) or this side (server).
fn service_of(connection: &Connection, role: Role, settings: &Settings) -> Option<String> {
    let (first, second) = role.service_then_peer(connection.local.port(), connection.remote.port());
    settings
        .service(first)
        .or_else(|| settings.service(second))
        .map(str::to_string)
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
        "storm_started" => format!(
            "idle {} then {} retransmits, gives up in {}",
            hint::human_duration(record.idle_seconds),
            record.retransmits,
            record
                .gives_up_in_seconds
                .map_or("?".into(), hint::human_duration)
        ),
        "storm_ended" => format!(
            "{} after {}, {} retransmits",
            record.outcome.map_or("?", Outcome::as_str),
            hint::human_duration(record.duration_seconds.unwrap_or(0.0)),
            record.retransmits
        ),
        "reset_after_idle" => format!(
            "reset after {} idle",
            hint::human_duration(record.idle_seconds)
        ),
        "connect_stalled" => format!(
            "SYN retransmitted {} times{}",
            record.retransmits,
            if record.outcome.is_some() {
                ", connect timed out"
            } else {
                ", connect hanging"
            }
        ),
        _ => format!(
            "{} after {} idle, {} probes unanswered, timed out",
            record.event.replace('_', " "),
            hint::human_duration(record.idle_seconds),
            record.probes.unwrap_or(0)
        ),
    };
    format!(
        "{} {} {who} {:?} {} -> {}{service} netns={}: {detail}. {}",
        record.time,
        record.event.to_uppercase(),
        record.role,
        record.local,
        record.remote,
        record.netns,
        record.hint
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        detect::FailureMode,
        event::{OwnerSource, ProcessRef},
    };

    /// 2026-11-25T09:32:40Z at monotonic 0.
    const WALL_AT_ZERO_NS: u64 = 1_795_599_160_000_000_000;
    const S: u64 = 1_000_000_000;

    fn reporter() -> Reporter {
        // No /proc here: attribution finds nothing beyond the recorded owner.
        Reporter::new(
            WallClock::fixed(0, WALL_AT_ZERO_NS),
            Attributor::new("/nonexistent"),
            OwnerResolver::new("/nonexistent"),
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

    fn connection() -> Connection {
        Connection {
            local: "10.0.0.2:41000".parse().expect("addr"),
            remote: "10.0.1.5:6379".parse().expect("addr"),
            netns: 4026531840,
        }
    }

    fn storm() -> Storm {
        Storm {
            id: 7,
            cookie: 11,
            owner: Some(owner()),
            role: Role::Client,
            connection: connection(),
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

    fn failure(mode: FailureMode, timed_out: bool) -> ConnectionFailure {
        ConnectionFailure {
            mode,
            cookie: 12,
            owner: None,
            role: Role::Server,
            connection: Connection {
                local: "[fd00::5]:5432".parse().expect("addr"),
                remote: "[fd00::2]:50000".parse().expect("addr"),
                netns: 1,
            },
            idle_ns: 120 * S,
            started_ns: 10 * S,
            at_ns: 70 * S + 500_000_000,
            retransmits: 6,
            probes: 9,
            unsent_bytes: 512,
            timed_out,
            dropped_in_host: false,
            tcp_retries2: 15,
        }
    }

    /// The record's JSON as printed (fields in order), hint elided.
    fn json_of(finding: &Finding) -> String {
        let mut record = reporter().record(finding, &Settings::default());
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
            connection: connection(),
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
        let settings = Settings::default();
        let started = reporter.record(&Finding::StormStarted(storm()), &settings);
        let line = text_line(&started);
        assert!(
            line.starts_with(
                "2026-11-25T09:32:44.689Z STORM_STARTED invite-svc[4242] tid=4250 Client \
                 10.0.0.2:41000 -> 10.0.1.5:6379 (redis) netns=4026531840: \
                 idle 6m 1s then 4 retransmits, gives up in 15m 22s. "
            ),
            "{line}"
        );
        let keepalive = reporter.record(
            &Finding::ConnectionFailed(failure(FailureMode::KeepaliveTimeout, true)),
            &settings,
        );
        let line = text_line(&keepalive);
        assert!(
            line.starts_with(
                "2026-11-25T09:33:50.500Z KEEPALIVE_TIMEOUT unknown process Server \
                 [fd00::5]:5432 -> [fd00::2]:50000 (postgres) netns=1: \
                 keepalive timeout after 2m 0s idle, 9 probes unanswered, timed out. "
            ),
            "{line}"
        );
        let stalled = reporter.record(
            &Finding::ConnectionFailed(failure(FailureMode::ConnectStalled, false)),
            &settings,
        );
        assert!(
            text_line(&stalled).contains("SYN retransmitted 6 times, connect hanging. "),
            "{}",
            text_line(&stalled)
        );
    }
}
