//! The one-line hint each finding carries: the likely cause and the fixes.

use crate::{
    detect::{ConnectionFailure, FailureMode},
    event::Role,
};

/// Formats seconds for people: "45s", "6m 10s", "2h 3m".
pub fn human_duration(seconds: f64) -> String {
    let total = seconds.max(0.0).round() as u64;
    match total {
        0..=59 => format!("{total}s"),
        60..=3599 => format!("{}m {}s", total / 60, total % 60),
        _ => format!("{}h {}m", total / 3600, (total % 3600) / 60),
    }
}

/// Hint for a retransmit storm after idle.
pub fn storm_hint(
    role: Role,
    service: Option<&str>,
    comm: Option<&str>,
    idle_seconds: f64,
    gives_up_in_seconds: Option<f64>,
) -> String {
    let what = service
        .map(|service| format!("{service} connection"))
        .unwrap_or_else(|| "connection".into());
    let hang = match gives_up_in_seconds {
        Some(seconds) => format!(
            "the kernel retransmits until it gives up in about {}",
            human_duration(seconds)
        ),
        None => "the kernel retransmits until tcp_retries2 gives up (about 15 minutes by default)"
            .into(),
    };
    let redis = service == Some("redis");
    match role {
        Role::Server => format!(
            "Likely cause: the path to this client forgot the idle flow (NAT, load balancer or firewall idle timeout) after {idle} idle, so {who} cannot deliver and {hang}. Fix: {server_fix}; clients should enable TCP keepalive below the path's idle timeout.",
            idle = human_duration(idle_seconds),
            who = comm.unwrap_or("the server"),
            server_fix = if redis {
                "set Redis `tcp-keepalive 60` (keeps flows alive and drops dead clients) or `timeout` to close idle clients"
            } else {
                "enable TCP keepalive on the server's sockets shorter than the path's idle timeout"
            },
        ),
        _ => format!(
            "Likely cause: a middlebox (NAT gateway, load balancer, firewall) silently dropped this idle {what} after {idle} idle; {hang}, and the request hangs meanwhile. Fix: keep the connection alive below the path's idle timeout ({keepalive}client SO_KEEPALIVE with TCP_KEEPIDLE under it), or fail fast with TCP_USER_TIMEOUT or a lower net.ipv4.tcp_retries2.",
            idle = human_duration(idle_seconds),
            keepalive = if redis {
                "Redis `tcp-keepalive 60`, or "
            } else {
                ""
            },
        ),
    }
}

/// Hint for a reset right after idle. `peer_closed`: the peer had closed
/// the idle connection first (its FIN arrived), so the fix is on the
/// client's pool, not the path.
pub fn reset_hint(service: Option<&str>, idle_seconds: f64, peer_closed: bool) -> String {
    let what = service
        .map(|service| format!("{service} connection"))
        .unwrap_or_else(|| "connection".into());
    let idle = human_duration(idle_seconds);
    if peer_closed {
        return format!(
            "Likely cause: the server closed this idle {what} after at most {idle} idle ({server_timeout}; its FIN arrived), and the client wrote on it anyway: the server answered with a reset and the request failed. Fix: have the pool drop idle connections before the server does (a client idle timeout below the server's) or check them before use, or {server_fix}.",
            server_timeout = if service == Some("redis") {
                "Redis `timeout`"
            } else {
                "a server-side idle timeout"
            },
            server_fix = if service == Some("redis") {
                "disable the server's idle timeout (Redis `timeout 0`) and keep connections alive with `tcp-keepalive`"
            } else {
                "raise or disable the server's idle timeout"
            },
        );
    }
    format!(
        "Likely cause: the path (NAT, load balancer, firewall) or the server forgot this idle {what} after {idle} idle and answered the next request with a reset; the application saw a connection error. Fix: keepalive below the idle timeout{}, and retry on reset in the client.",
        if service == Some("redis") {
            " (Redis `tcp-keepalive`, client SO_KEEPALIVE)"
        } else {
            " (client SO_KEEPALIVE)"
        }
    )
}

/// Hint for a connection that failed in one of the `FailureMode`s.
pub fn failure_hint(
    failure: &ConnectionFailure,
    service: Option<&str>,
    idle_seconds: f64,
) -> String {
    let what = service
        .map(|service| format!("{service} connection"))
        .unwrap_or_else(|| "connection".into());
    let idle = human_duration(idle_seconds);
    let remote = &failure.connection.remote;
    let redis = service == Some("redis");
    // What a stalled connect did: gave up, or is still retrying.
    let connect_outcome = if failure.timed_out {
        "timed out"
    } else {
        "hangs"
    };
    match failure.mode {
        FailureMode::EgressBlocked => format!(
            "Likely cause: a firewall on this host or in the pod's network namespace (an nftables/iptables OUTPUT rule, an egress NetworkPolicy) drops this {what}'s packets to {remote}: {unsent} bytes written after {idle} idle never left the host, {outcome}; the wire shows no retransmits. Fix: allow {remote} in the host firewall and the pod's egress NetworkPolicy (`nft list ruleset`, `iptables -S OUTPUT` in the network namespace).",
            unsent = failure.unsent_bytes,
            outcome = if failure.timed_out {
                format!(
                    "the kernel probed {} times without sending anything and gave up (ETIMEDOUT)",
                    failure.probes
                )
            } else {
                format!(
                    "the kernel has probed {} times without sending anything and the request hangs until tcp_retries2 gives up ({} probes)",
                    failure.probes, failure.tcp_retries2
                )
            },
        ),
        FailureMode::ZeroWindow => {
            let (reader, fix) = match failure.role {
                Role::Server => (
                    format!("the client {remote}"),
                    if redis {
                        "find why the client stopped reading (a stuck subscriber or a slow consumer); bound what the server buffers for it (Redis `client-output-buffer-limit`)"
                    } else {
                        "find why the client stopped reading (a stuck or slow consumer); bound what the server buffers for a client and time out its writes"
                    },
                ),
                _ => (
                    format!("{remote}"),
                    "find why the peer stopped reading (a stuck or overloaded server thread, a full queue, its own blocked downstream)",
                ),
            };
            format!(
                "Likely cause: {reader} stopped reading this {what}: its receive window has been shut for {shut} with {unsent} bytes waiting to be sent. It still acknowledges the kernel's window probes ({probes} so far), so the connection never times out and the write {outcome}. Fix: {fix}; set TCP_USER_TIMEOUT on the socket so the kernel gives up on a peer that stopped reading, and give writes an application timeout.",
                shut =
                    human_duration(failure.at_ns.saturating_sub(failure.started_ns) as f64 / 1e9),
                unsent = failure.unsent_bytes,
                probes = failure.probes,
                outcome = if failure.timed_out {
                    "hung until TCP_USER_TIMEOUT gave up (ETIMEDOUT)"
                } else {
                    "hangs (for ever without TCP_USER_TIMEOUT)"
                },
            )
        }
        FailureMode::ConnectStalled if failure.dropped_in_host => format!(
            "Likely cause: a firewall on this host or in the pod's network namespace (an nftables/iptables OUTPUT rule, an egress NetworkPolicy) drops the SYNs to {remote}: they never leave the host, the connect {connect_outcome} while the kernel retries ({retransmits} so far), and a pool reconnecting hangs with it. Fix: allow {remote} in the host firewall and the pod's egress NetworkPolicy; give connects their own short timeout in the client.",
            retransmits = failure.retransmits,
        ),
        FailureMode::ConnectStalled => format!(
            "Likely cause: nothing answers SYNs to {remote} (a dead path, a firewall dropping them, a host down or a stale address): the connect {connect_outcome} while the kernel retransmits the SYN ({retransmits} so far; it gives up when `net.ipv4.tcp_syn_retries`, set per network namespace, says: about 2 minutes at the default 6 with classic backoff), and a pool reconnecting hangs with it. Fix: check the address and the firewalls on the path; give connects their own short timeout in the client.",
            retransmits = failure.retransmits,
        ),
        FailureMode::KeepaliveTimeout => format!(
            "Likely cause: the path (NAT, load balancer, firewall) forgot this idle {what} to {remote}, or the peer is gone: {probes} keepalive probes went unanswered after {idle} idle and the kernel closed it (ETIMEDOUT). Keepalive turned a hang into an error here. Fix: if the path has an idle timeout, keep the keepalive idle time ({keepalive}TCP_KEEPIDLE) well below it, and below {idle}, so the flow stays alive; reconnect on ETIMEDOUT.",
            probes = failure.probes,
            keepalive = if redis {
                "Redis `tcp-keepalive`, client "
            } else {
                ""
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(45.4), "45s");
        assert_eq!(human_duration(370.0), "6m 10s");
        assert_eq!(human_duration(7380.0), "2h 3m");
    }

    #[test]
    fn client_hint_names_cause_and_fixes() {
        let hint = storm_hint(Role::Client, Some("redis"), Some("app"), 400.0, Some(900.0));
        for needle in [
            "middlebox",
            "tcp-keepalive",
            "TCP_USER_TIMEOUT",
            "tcp_retries2",
            "15m 0s",
            "6m 40s",
        ] {
            assert!(hint.contains(needle), "{needle} missing from {hint}");
        }
    }

    #[test]
    fn server_hint_names_the_server_fix() {
        let hint = storm_hint(
            Role::Server,
            Some("redis"),
            Some("redis-server"),
            60.0,
            None,
        );
        assert!(
            hint.contains("redis-server")
                && hint.contains("tcp-keepalive")
                && hint.contains("timeout"),
            "{hint}"
        );
    }

    fn failure(mode: FailureMode) -> ConnectionFailure {
        ConnectionFailure {
            mode,
            cookie: 1,
            owner: None,
            role: Role::Client,
            connection: crate::event::Connection {
                local: "10.0.0.2:41000".parse().expect("addr"),
                remote: "10.0.1.5:6379".parse().expect("addr"),
                netns: 1,
            },
            idle_ns: 0,
            started_ns: 0,
            at_ns: 0,
            retransmits: 3,
            probes: 5,
            unsent_bytes: 31,
            timed_out: true,
            dropped_in_host: false,
            reported_while_hanging: false,
            tcp_retries2: 15,
        }
    }

    #[test]
    fn each_failure_mode_names_its_own_fix() {
        let egress = failure_hint(&failure(FailureMode::EgressBlocked), Some("redis"), 400.0);
        for needle in [
            "firewall",
            "NetworkPolicy",
            "31 bytes",
            "10.0.1.5:6379",
            "6m 40s",
        ] {
            assert!(egress.contains(needle), "{needle} missing from {egress}");
        }
        let connect = failure_hint(&failure(FailureMode::ConnectStalled), None, 0.0);
        for needle in ["SYN", "tcp_syn_retries", "connect", "timed out"] {
            assert!(connect.contains(needle), "{needle} missing from {connect}");
        }
        let local = failure_hint(
            &ConnectionFailure {
                dropped_in_host: true,
                ..failure(FailureMode::ConnectStalled)
            },
            None,
            0.0,
        );
        assert!(
            local.contains("never leave the host") && local.contains("NetworkPolicy"),
            "{local}"
        );
        let keepalive = failure_hint(
            &failure(FailureMode::KeepaliveTimeout),
            Some("redis"),
            400.0,
        );
        for needle in [
            "keepalive probes",
            "TCP_KEEPIDLE",
            "tcp-keepalive",
            "below 6m 40s",
        ] {
            assert!(
                keepalive.contains(needle),
                "{needle} missing from {keepalive}"
            );
        }
        let hanging = failure_hint(
            &ConnectionFailure {
                timed_out: false,
                ..failure(FailureMode::EgressBlocked)
            },
            None,
            0.0,
        );
        assert!(
            hanging.contains("hangs") && !hanging.contains("ETIMEDOUT"),
            "{hanging}"
        );
        let stopped_reading = failure_hint(
            &ConnectionFailure {
                timed_out: false,
                started_ns: 0,
                at_ns: 75_000_000_000,
                ..failure(FailureMode::ZeroWindow)
            },
            Some("redis"),
            0.0,
        );
        for needle in [
            "10.0.1.5:6379 stopped reading",
            "shut for 1m 15s",
            "31 bytes",
            "TCP_USER_TIMEOUT",
        ] {
            assert!(
                stopped_reading.contains(needle),
                "{needle} missing from {stopped_reading}"
            );
        }
        let subscriber = failure_hint(
            &ConnectionFailure {
                role: Role::Server,
                ..failure(FailureMode::ZeroWindow)
            },
            Some("redis"),
            0.0,
        );
        assert!(
            subscriber.contains("client-output-buffer-limit"),
            "{subscriber}"
        );
    }

    #[test]
    fn reset_hint_tells_a_server_close_from_a_forgotten_path() {
        let closed = reset_hint(Some("redis"), 310.0, true);
        for needle in [
            "server closed",
            "`timeout`",
            "pool",
            "`timeout 0`",
            "5m 10s",
        ] {
            assert!(closed.contains(needle), "{needle} missing from {closed}");
        }
        let forgotten = reset_hint(Some("redis"), 310.0, false);
        assert!(
            forgotten.contains("path") && !forgotten.contains("server closed"),
            "{forgotten}"
        );
    }
}
