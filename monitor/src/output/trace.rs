//! `connmon trace` lines: one per kernel event.

use serde_json::{Map, Value, json};

use crate::{
    clock::WallClock,
    event::{EventKind, SocketEvent},
};

/// One event as a JSON object with flat, stable keys.
pub fn json_record(event: &SocketEvent, clock: &WallClock) -> Value {
    let mut record = Map::new();
    record.insert("time".into(), json!(clock.rfc3339(event.timestamp_ns)));
    record.insert("event".into(), json!(event.kind.name()));
    record.insert(
        "schema_version".into(),
        json!(crate::output::SCHEMA_VERSION),
    );
    let owner = event.owner.as_ref();
    record.insert("pid".into(), json!(owner.map(|o| o.pid)));
    record.insert("tid".into(), json!(owner.map(|o| o.tid)));
    record.insert("comm".into(), json!(owner.map(|o| o.comm.as_str())));
    record.insert("cgroup_id".into(), json!(owner.map(|o| o.cgroup_id)));
    record.insert("owner_source".into(), json!(owner.map(|o| o.source)));
    record.insert("shared".into(), json!(owner.map(|o| o.shared)));
    record.insert("role".into(), json!(event.role));
    record.insert("local".into(), json!(event.connection.local.to_string()));
    record.insert("remote".into(), json!(event.connection.remote.to_string()));
    record.insert("netns".into(), json!(event.connection.netns));
    record.insert("state".into(), json!(event.state));
    record.insert("cookie".into(), json!(event.cookie));
    match &event.kind {
        EventKind::Retransmit(info) => {
            record.insert("retransmit_kind".into(), json!(info.kind));
            record.insert("result".into(), json!(info.result));
            record.insert("segments".into(), json!(info.segments));
            record.insert("rto_retransmits".into(), json!(info.rto_retransmits));
            record.insert("backoff".into(), json!(info.backoff));
            record.insert("tcp_retries2".into(), json!(info.tcp_retries2));
            record.insert("user_timeout_ms".into(), json!(info.user_timeout_ms));
        }
        EventKind::StateChange { old, new, errno } => {
            record.insert("old_state".into(), json!(old));
            record.insert("new_state".into(), json!(new));
            if *errno != 0 {
                record.insert("errno".into(), json!(errno));
                record.insert("error".into(), json!(errno_name(*errno)));
            }
        }
        EventKind::SocketError { errno } => {
            record.insert("errno".into(), json!(errno));
            record.insert("error".into(), json!(errno_name(*errno)));
        }
        EventKind::Progress { progress } => {
            record.insert("progress".into(), json!(progress));
        }
        EventKind::RetransmitCounts { counts } => {
            let counts: serde_json::Map<String, Value> = counts
                .iter()
                .map(|(kind, count)| (kind.as_str().to_string(), json!(count)))
                .collect();
            record.insert("retransmit_counts".into(), Value::Object(counts));
        }
        // Asked for by `connmon run` only, never by trace.
        EventKind::ResetReceived
        | EventKind::ResetSent
        | EventKind::Destroyed { .. }
        | EventKind::ReplyAfterIdle { .. } => {}
    }
    // How a failing socket ended, as the kernel read it (errors, and CLOSE
    // with an error): the field names are `EndState`'s.
    if let Some(end) = &event.end
        && let Value::Object(fields) = json!(end)
    {
        record.extend(fields);
    }
    Value::Object(record)
}

/// One event as a line for people.
pub fn text_line(event: &SocketEvent, clock: &WallClock) -> String {
    let who = match &event.owner {
        Some(owner) => format!(
            "pid={} tid={} comm={}",
            owner.pid,
            owner.tid,
            crate::output::escape::control(&owner.comm)
        ),
        None => "pid=? comm=?".to_string(),
    };
    let what = match &event.kind {
        EventKind::Retransmit(info) => format!(
            "retransmit kind={} rto_retransmits={} backoff={}{}",
            info.kind.as_str(),
            info.rto_retransmits,
            info.backoff,
            if info.result != 0 {
                format!(" result={}", info.result)
            } else {
                String::new()
            }
        ),
        EventKind::StateChange { old, new, errno } if *errno != 0 => {
            format!(
                "state {} -> {} ({})",
                old.name(),
                new.name(),
                errno_name(*errno)
            )
        }
        EventKind::StateChange { old, new, .. } => {
            format!("state {} -> {}", old.name(), new.name())
        }
        EventKind::SocketError { errno } => format!("error {}", errno_name(*errno)),
        other => other.name().to_string(),
    };
    let end = match &event.end {
        Some(end) => format!(
            " rto_retransmits={} probes_out={} unsent_bytes={} send_window={} tcp_retries2={} \
             user_timeout_ms={}",
            end.rto_retransmits,
            end.probes_out,
            end.unsent_bytes,
            end.send_window,
            end.tcp_retries2,
            end.user_timeout_ms
        ),
        None => String::new(),
    };
    format!(
        "{} {what}{end} {who} {} -> {} netns={} state={}",
        clock.rfc3339(event.timestamp_ns),
        event.connection.local,
        event.connection.remote,
        event.connection.netns,
        event.state.name()
    )
}

/// Names for the errnos a TCP socket reports.
pub fn errno_name(errno: i32) -> String {
    match errno {
        libc::ETIMEDOUT => "ETIMEDOUT".into(),
        libc::ECONNRESET => "ECONNRESET".into(),
        libc::ECONNREFUSED => "ECONNREFUSED".into(),
        libc::EHOSTUNREACH => "EHOSTUNREACH".into(),
        libc::ENETUNREACH => "ENETUNREACH".into(),
        libc::EPIPE => "EPIPE".into(),
        libc::ECONNABORTED => "ECONNABORTED".into(),
        other => format!("errno {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{
        ActivityTimes, Connection, EndState, OwnerSource, ProcessRef, RetransmitInfo,
        RetransmitKind, Role, TcpState,
    };

    fn event() -> SocketEvent {
        SocketEvent {
            timestamp_ns: 2_000_000_000,
            cookie: 5,
            kind: EventKind::Retransmit(RetransmitInfo {
                kind: RetransmitKind::Timeout,
                result: 0,
                segments: 1,
                rto_retransmits: 3,
                backoff: 3,
                snd_una: 0,
                user_timeout_ms: 0,
                tcp_retries2: 15,
                total_retrans_low: 0,
            }),
            owner: Some(ProcessRef {
                pid: 10,
                tid: 11,
                comm: "app".into(),
                cgroup_id: 1,
                start_boottime_ns: 2,
                source: OwnerSource::Send,
                shared: false,
            }),
            role: Role::Client,
            connection: Connection {
                local: "[2001:db8::1]:5000".parse().expect("addr"),
                remote: "[2001:db8::2]:6379".parse().expect("addr"),
                netns: 7,
            },
            state: TcpState(1),
            activity: ActivityTimes::default(),
            end: None,
        }
    }

    #[test]
    fn json_has_owner_tuple_and_kind() {
        let record = json_record(&event(), &WallClock::fixed(0, 0));
        assert_eq!(record["event"], "retransmit");
        assert_eq!(record["pid"], 10);
        assert_eq!(record["tid"], 11);
        assert_eq!(record["comm"], "app");
        assert_eq!(record["remote"], "[2001:db8::2]:6379");
        assert_eq!(record["retransmit_kind"], "timeout");
        assert_eq!(record["role"], "client");
        assert_eq!(record["state"], "ESTABLISHED");
        assert_eq!(record["time"], "1970-01-01T00:00:02.000Z");
    }

    #[test]
    fn unowned_sockets_have_null_owner_fields() {
        let mut unowned = event();
        unowned.owner = None;
        let record = json_record(&unowned, &WallClock::fixed(0, 0));
        assert!(record["pid"].is_null() && record["comm"].is_null());
        assert!(text_line(&unowned, &WallClock::fixed(0, 0)).contains("pid=?"));
    }

    #[test]
    fn a_failed_sockets_end_state_is_shown() {
        let mut failed = event();
        failed.kind = EventKind::SocketError {
            errno: libc::ETIMEDOUT,
        };
        failed.end = Some(EndState {
            rto_retransmits: 0,
            probes_out: 4,
            unsent_bytes: 6,
            send_window: 65_000,
            tcp_retries2: 15,
            user_timeout_ms: 0,
        });
        let record = json_record(&failed, &WallClock::fixed(0, 0));
        assert_eq!(record["error"], "ETIMEDOUT");
        assert_eq!(record["probes_out"], 4);
        assert_eq!(record["unsent_bytes"], 6);
        assert_eq!(record["send_window"], 65_000);
        assert_eq!(record["rto_retransmits"], 0);
        assert_eq!(record["tcp_retries2"], 15);
        assert_eq!(record["user_timeout_ms"], 0);
        let line = text_line(&failed, &WallClock::fixed(0, 0));
        assert!(
            line.contains("error ETIMEDOUT rto_retransmits=0 probes_out=4 unsent_bytes=6"),
            "{line}"
        );
    }

    #[test]
    fn events_without_an_end_state_have_no_end_fields() {
        let record = json_record(&event(), &WallClock::fixed(0, 0));
        assert!(record.get("probes_out").is_none(), "{record}");
        assert!(record.get("unsent_bytes").is_none(), "{record}");
    }
}
