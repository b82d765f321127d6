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
        if matches!(
            failure.mode,
            FailureMode::EgressBlocked | FailureMode::ZeroWindow
        ) {
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
        "zero_window" => format!(
            "peer stopped reading, {} bytes waiting, {} window probes answered, {}",
            record.unsent_bytes.unwrap_or(0),
            record.probes.unwrap_or(0),
            if record.outcome.is_some() {
                "timed out"
            } else {
                "write hanging"
            }
        ),
        _ => format!(
            "{} after {} idle, {} probes unanswered, {}",
            record.event.replace('_', " "),
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
        record.time,
        record.event.to_uppercase(),
        record.role,
        record.local,
        record.remote,
        record.netns,
        record.hint
    )
}
