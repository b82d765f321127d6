//! Bytes from the ring buffer to typed events. Pure: no kernel needed, and
//! every tag is checked, never transmuted.

use monitor_common::{
    event::{
        EVENT_DESTROY, EVENT_PROGRESS, EVENT_REPLY_AFTER_IDLE, EVENT_RESET_RECEIVED,
        EVENT_RESET_SENT, EVENT_RETRANSMIT, EVENT_RETRANSMIT_COUNTS, EVENT_SOCKET_ERROR,
        EVENT_STATE_CHANGE, SocketEvent as RawEvent, TcpSnapshot, pack_retransmit_counts,
        split_state_change_detail, state_change_detail, unpack_retransmit_counts,
    },
    socket::Tuple,
};

use crate::event::{
    ActivityTimes, Connection, EndState, EventKind, OwnerSource, ProcessRef, Progress,
    RetransmitInfo, RetransmitKind, Role, SocketEvent, TcpState, wire_owner,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record is {got} bytes, expected {expected}")]
    Size { got: usize, expected: usize },
    #[error("unknown event kind {0}")]
    Kind(u32),
    #[error("unknown {field} tag {value}")]
    Tag { field: &'static str, value: u32 },
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<SocketEvent, DecodeError> {
    let expected = size_of::<RawEvent>();
    if bytes.len() != expected {
        return Err(DecodeError::Size {
            got: bytes.len(),
            expected,
        });
    }
    // SAFETY: the length equals size_of::<RawEvent>(), RawEvent is plain
    // integers with no invalid bit patterns, and read_unaligned copes with
    // any alignment of the ring buffer's bytes.
    let raw: RawEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    convert(&raw)
}

/// Turns a raw record into a typed event.
pub fn convert(raw: &RawEvent) -> Result<SocketEvent, DecodeError> {
    let kind = match raw.kind {
        EVENT_RETRANSMIT => EventKind::Retransmit(RetransmitInfo {
            kind: retransmit_kind(raw.tcp.retransmit_kind)?,
            result: raw.detail as i32,
            segments: raw.tcp.segments,
            rto_retransmits: raw.tcp.rto_retransmits,
            backoff: raw.tcp.backoff,
            snd_una: raw.tcp.snd_una,
            user_timeout_ms: raw.tcp.user_timeout_ms,
            tcp_retries2: raw.tcp.tcp_retries2,
            total_retrans_low: raw.tcp.total_retrans_low,
        }),
        EVENT_STATE_CHANGE => EventKind::StateChange {
            old: TcpState(split_state_change_detail(raw.detail).0),
            new: TcpState(split_state_change_detail(raw.detail).1),
            errno: i32::from(split_state_change_detail(raw.detail).2),
        },
        EVENT_RESET_RECEIVED => EventKind::ResetReceived,
        EVENT_RESET_SENT => EventKind::ResetSent,
        EVENT_SOCKET_ERROR => EventKind::SocketError {
            errno: raw.detail as i32,
        },
        EVENT_DESTROY => EventKind::Destroyed {
            errno: raw.detail as i32,
            total_retrans_low: raw.tcp.total_retrans_low,
        },
        EVENT_RETRANSMIT_COUNTS => EventKind::RetransmitCounts {
            counts: unpack_retransmit_counts(raw.detail)
                .into_iter()
                .enumerate()
                .filter(|(_, count)| *count != 0)
                .map(|(kind, count)| Ok((retransmit_kind(kind as u8)?, u32::from(count))))
                .collect::<Result<_, DecodeError>>()?,
        },
        EVENT_PROGRESS => EventKind::Progress {
            progress: Progress::try_from(raw.detail).map_err(|tag| DecodeError::Tag {
                field: "progress",
                value: tag,
            })?,
        },
        EVENT_REPLY_AFTER_IDLE => EventKind::ReplyAfterIdle {
            gap_ns: u64::from(raw.detail) * 1_000_000,
        },
        other => return Err(DecodeError::Kind(other)),
    };
    let owner = &raw.owner;
    let source = match OwnerSource::try_from(owner.source) {
        Ok(source) => source,
        // A record without an owner carries no source.
        Err(_) if owner.tgid == 0 => OwnerSource::Proc,
        Err(tag) => {
            return Err(DecodeError::Tag {
                field: "owner source",
                value: tag.into(),
            });
        }
    };
    let process = ProcessRef::from_owner(owner, source, owner.process_changes > 0);
    let role = Role::try_from(owner.role).map_err(|tag| DecodeError::Tag {
        field: "role",
        value: tag.into(),
    })?;
    let failed = match &kind {
        EventKind::SocketError { .. } => true,
        EventKind::StateChange { errno, .. } => *errno != 0,
        _ => false,
    };
    let end = failed.then_some(EndState {
        rto_retransmits: raw.tcp.rto_retransmits,
        probes_out: raw.tcp.probes_out,
        unsent_bytes: raw.tcp.unsent_bytes,
        send_window: raw.tcp.send_window,
        tcp_retries2: raw.tcp.tcp_retries2,
        user_timeout_ms: raw.tcp.user_timeout_ms,
    });
    Ok(SocketEvent {
        timestamp_ns: raw.timestamp_ns,
        cookie: raw.cookie,
        kind,
        owner: process,
        role,
        connection: Connection::from_tuple(&raw.tuple),
        state: TcpState(raw.tuple.state),
        activity: ActivityTimes::from_wire(&raw.activity),
        end,
    })
}

fn retransmit_kind(tag: u8) -> Result<RetransmitKind, DecodeError> {
    RetransmitKind::try_from(tag).map_err(|tag| DecodeError::Tag {
        field: "retransmit kind",
        value: tag.into(),
    })
}

/// The record the kernel writes for `event`: the decoder's inverse, with
/// `detail` packed by the same functions as the kernel programs'. For
/// tests, replay files and fuzzing (`fuzzing::decode` checks the round
/// trip). What records carry but events drop (`ca_state`, a reset's
/// reason, padding, `total_retrans_low` but at retransmits and ends) is 0.
pub fn encode_event(event: &SocketEvent) -> RawEvent {
    let mut tcp = TcpSnapshot::default();
    let (kind, detail) = match &event.kind {
        EventKind::Retransmit(info) => {
            tcp = TcpSnapshot {
                snd_una: info.snd_una,
                user_timeout_ms: info.user_timeout_ms,
                rto_retransmits: info.rto_retransmits,
                backoff: info.backoff,
                tcp_retries2: info.tcp_retries2,
                segments: info.segments,
                retransmit_kind: info.kind.tag(),
                total_retrans_low: info.total_retrans_low,
                ..TcpSnapshot::default()
            };
            (EVENT_RETRANSMIT, info.result as u32)
        }
        EventKind::StateChange { old, new, errno } => (
            EVENT_STATE_CHANGE,
            state_change_detail(old.0, new.0, *errno),
        ),
        EventKind::ResetReceived => (EVENT_RESET_RECEIVED, 0),
        EventKind::ResetSent => (EVENT_RESET_SENT, 0),
        EventKind::SocketError { errno } => (EVENT_SOCKET_ERROR, *errno as u32),
        EventKind::Destroyed {
            errno,
            total_retrans_low,
        } => {
            tcp.total_retrans_low = *total_retrans_low;
            (EVENT_DESTROY, *errno as u32)
        }
        EventKind::Progress { progress } => (EVENT_PROGRESS, progress.tag()),
        EventKind::ReplyAfterIdle { gap_ns } => (
            EVENT_REPLY_AFTER_IDLE,
            u32::try_from(gap_ns / 1_000_000).unwrap_or(u32::MAX),
        ),
        EventKind::RetransmitCounts { counts } => {
            let mut pending = [0u8; 4];
            for (kind, count) in counts {
                if let Some(slot) = pending.get_mut(usize::from(kind.tag())) {
                    *slot = u8::try_from(*count).unwrap_or(u8::MAX);
                }
            }
            (EVENT_RETRANSMIT_COUNTS, pack_retransmit_counts(pending))
        }
    };
    RawEvent {
        kind,
        detail,
        timestamp_ns: event.timestamp_ns,
        cookie: event.cookie,
        owner: wire_owner(event.owner.as_ref(), event.role.tag()),
        tuple: Tuple::from_addrs(
            event.connection.local,
            event.connection.remote,
            event.state.0,
            event.connection.netns,
        ),
        activity: event.activity.to_wire(),
        tcp,
    }
}

/// Encodes a raw record to bytes, as the kernel lays it out. For tests,
/// replay files and fuzzing: the decoder's counterpart.
pub fn encode(raw: &RawEvent) -> Vec<u8> {
    let mut bytes = vec![0u8; size_of::<RawEvent>()];
    // SAFETY: `bytes` holds exactly size_of::<RawEvent>() bytes and
    // write_unaligned needs no alignment.
    unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast::<RawEvent>(), *raw) };
    bytes
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use monitor_common::{
        event::TcpSnapshot,
        retransmit::RETRANSMIT_TIMEOUT,
        socket::{Activity, OWNER_SOURCE_SEND, Owner, ROLE_CLIENT, Tuple},
        tcp::{AF_INET, AF_INET6, TCP_CA_LOSS},
    };

    use super::*;

    fn comm(name: &str) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..name.len()].copy_from_slice(name.as_bytes());
        out
    }

    fn retransmit_record() -> RawEvent {
        let mut local = [0u8; 16];
        local[..4].copy_from_slice(&[10, 0, 0, 2]);
        let mut remote = [0u8; 16];
        remote[..4].copy_from_slice(&[10, 0, 1, 3]);
        RawEvent {
            kind: EVENT_RETRANSMIT,
            detail: 0,
            timestamp_ns: 5_000_000_000,
            cookie: 77,
            owner: Owner {
                tgid: 4242,
                tid: 4243,
                cgroup_id: 9,
                start_boottime_ns: 123,
                comm: comm("redis-client"),
                source: OWNER_SOURCE_SEND,
                role: ROLE_CLIENT,
                process_changes: 0,
                _pad: [0; 5],
            },
            tuple: Tuple {
                family: AF_INET,
                local_port: 40000,
                remote_port: 6379,
                state: 1,
                _pad0: 0,
                netns: 4026531840,
                _pad1: 0,
                local_addr: local,
                remote_addr: remote,
            },
            activity: Activity {
                last_send_ns: 4_000_000_000,
                last_recv_ns: 1_000_000_000,
                burst_start_ns: 4_000_000_000,
                idle_before_burst_ns: 3_000_000_000,
            },
            tcp: TcpSnapshot {
                snd_una: 1000,
                user_timeout_ms: 0,
                rto_retransmits: 2,
                backoff: 2,
                ca_state: TCP_CA_LOSS,
                tcp_retries2: 15,
                segments: 1,
                retransmit_kind: RETRANSMIT_TIMEOUT,
                total_retrans_low: 3,
                probes_out: 0,
                _pad: 0,
                unsent_bytes: 0,
                send_window: 0,
            },
        }
    }

    #[test]
    fn decodes_a_retransmit_with_its_owner_and_tuple() {
        let event = decode(&encode(&retransmit_record())).expect("valid record");
        let owner = event.owner.expect("owner");
        assert_eq!(
            (owner.pid, owner.tid, owner.comm.as_str()),
            (4242, 4243, "redis-client")
        );
        assert_eq!(owner.source, OwnerSource::Send);
        assert_eq!(event.role, Role::Client);
        assert_eq!(
            event.connection.local,
            "10.0.0.2:40000".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(
            event.connection.remote,
            "10.0.1.3:6379".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(event.connection.netns, 4026531840);
        assert_eq!(event.state.name(), "ESTABLISHED");
        let EventKind::Retransmit(info) = event.kind else {
            panic!("not a retransmit")
        };
        assert_eq!(info.kind, RetransmitKind::Timeout);
        assert_eq!(
            (info.rto_retransmits, info.backoff, info.tcp_retries2),
            (2, 2, 15)
        );
        assert_eq!(event.activity.idle_before_burst_ns, 3_000_000_000);
    }

    #[test]
    fn an_event_encodes_to_the_record_it_came_from() {
        let mut raw = retransmit_record();
        // Events do not keep the congestion state.
        raw.tcp.ca_state = 0;
        let event = decode(&encode(&raw)).expect("valid record");
        assert_eq!(encode_event(&event), raw);
        raw.kind = EVENT_STATE_CHANGE;
        raw.detail = state_change_detail(1, 7, 110);
        raw.tcp = TcpSnapshot::default();
        assert_eq!(
            encode_event(&decode(&encode(&raw)).expect("valid record")),
            raw
        );
    }

    #[test]
    fn decodes_ipv6_and_an_unowned_socket() {
        let mut raw = retransmit_record();
        raw.tuple.family = AF_INET6;
        raw.tuple.local_addr = "::1".parse::<std::net::Ipv6Addr>().expect("v6").octets();
        raw.tuple.remote_addr = "::ffff:10.0.1.3"
            .parse::<std::net::Ipv6Addr>()
            .expect("v6")
            .octets();
        raw.owner = Owner::default();
        let event = decode(&encode(&raw)).expect("valid record");
        assert_eq!(event.owner, None);
        assert_eq!(event.role, Role::Unknown);
        assert_eq!(event.connection.local.to_string(), "[::1]:40000");
        assert_eq!(
            event.connection.remote.to_string(),
            "[::ffff:10.0.1.3]:6379"
        );
    }

    #[test]
    fn decodes_retransmit_counts_per_kind() {
        let mut raw = RawEvent {
            kind: EVENT_RETRANSMIT_COUNTS,
            detail: monitor_common::event::pack_retransmit_counts([0, 3, 255, 0]),
            ..RawEvent::default()
        };
        raw.tuple.family = monitor_common::tcp::AF_INET;
        let event = decode(&encode(&raw)).expect("valid");
        assert_eq!(
            event.kind,
            EventKind::RetransmitCounts {
                counts: vec![(RetransmitKind::Timeout, 3), (RetransmitKind::Fast, 255)],
            }
        );
    }

    #[test]
    fn decodes_state_change_and_error_details() {
        let mut raw = retransmit_record();
        raw.kind = EVENT_STATE_CHANGE;
        raw.detail = (110 << 16) | (1 << 8) | 7;
        let event = decode(&encode(&raw)).expect("valid");
        assert_eq!(
            event.kind,
            EventKind::StateChange {
                old: TcpState(1),
                new: TcpState(7),
                errno: 110
            }
        );
        raw.kind = EVENT_SOCKET_ERROR;
        raw.detail = 110;
        assert_eq!(
            decode(&encode(&raw)).expect("valid").kind,
            EventKind::SocketError { errno: 110 }
        );
        raw.kind = EVENT_RETRANSMIT;
        raw.detail = (-16i32) as u32;
        let EventKind::Retransmit(info) = decode(&encode(&raw)).expect("valid").kind else {
            panic!()
        };
        assert_eq!(info.result, -16);
    }

    #[test]
    fn a_failed_end_carries_its_tcp_state_and_nothing_else_does() {
        let mut raw = retransmit_record();
        assert_eq!(decode(&encode(&raw)).expect("valid").end, None);
        raw.kind = EVENT_STATE_CHANGE;
        raw.detail = (110 << 16) | (1 << 8) | 7;
        raw.tcp.probes_out = 4;
        raw.tcp.unsent_bytes = 31;
        raw.tcp.send_window = 65_000;
        let end = decode(&encode(&raw)).expect("valid").end.expect("an end");
        assert_eq!(
            (end.probes_out, end.unsent_bytes, end.send_window),
            (4, 31, 65_000)
        );
        raw.detail = (1 << 8) | 7;
        assert_eq!(decode(&encode(&raw)).expect("valid").end, None, "no error");
    }

    #[test]
    fn rejects_wrong_sizes_and_unknown_tags() {
        let bytes = encode(&retransmit_record());
        assert!(matches!(
            decode(&bytes[..100]),
            Err(DecodeError::Size { got: 100, .. })
        ));
        assert!(matches!(decode(&[]), Err(DecodeError::Size { got: 0, .. })));
        let mut raw = retransmit_record();
        raw.kind = 99;
        assert_eq!(decode(&encode(&raw)), Err(DecodeError::Kind(99)));
        let mut raw = retransmit_record();
        raw.tcp.retransmit_kind = 9;
        assert!(matches!(
            decode(&encode(&raw)),
            Err(DecodeError::Tag {
                field: "retransmit kind",
                value: 9
            })
        ));
        let mut raw = retransmit_record();
        raw.owner.role = 5;
        assert!(matches!(
            decode(&encode(&raw)),
            Err(DecodeError::Tag { field: "role", .. })
        ));
        let mut raw = retransmit_record();
        raw.kind = EVENT_PROGRESS;
        raw.detail = 0;
        assert!(matches!(
            decode(&encode(&raw)),
            Err(DecodeError::Tag {
                field: "progress",
                ..
            })
        ));
    }

    #[test]
    fn a_socket_that_changed_processes_is_shared() {
        let mut raw = retransmit_record();
        assert!(
            !decode(&encode(&raw))
                .expect("valid")
                .owner
                .expect("owner")
                .shared
        );
        raw.owner.process_changes = 2;
        assert!(
            decode(&encode(&raw))
                .expect("valid")
                .owner
                .expect("owner")
                .shared
        );
    }

    #[test]
    fn comm_without_nul_and_invalid_utf8_is_kept_readable() {
        let mut raw = retransmit_record();
        raw.owner.comm = *b"sixteen-chars-xx";
        assert_eq!(
            decode(&encode(&raw))
                .expect("valid")
                .owner
                .expect("owner")
                .comm,
            "sixteen-chars-xx"
        );
        raw.owner.comm = comm("a\u{00ff}");
        raw.owner.comm[1] = 0xff;
        assert!(
            decode(&encode(&raw))
                .expect("valid")
                .owner
                .expect("owner")
                .comm
                .starts_with('a')
        );
    }
}
