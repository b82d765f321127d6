//! `connmon audit`: one look at the host, before anything hangs. Lists the
//! watched connections a middlebox has most likely forgotten (idle longer
//! than their path's timeout, with no keepalive ACK since), who holds them
//! and the fix; and the TCP settings that make a hang long.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::Path,
    time::Duration,
};

use serde::Serialize;

use crate::{
    attribution::{
        Attributor,
        existing::{self, ScannedSocket},
        procfs,
    },
    cli::AuditArgs,
    config::KNOWN_SERVICES,
    daemon_client::DaemonClient,
    event::{OwnerSource, ProcessRef, Role},
    fleet::FleetTimeouts,
    risk::{self, Assessment, ConnectionView, PathTimeouts, SettingEffect},
};

/// One watched connection and its risk.
#[derive(Debug, Serialize)]
pub struct AuditedConnection {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
    pub local: String,
    pub remote: String,
    pub netns: u32,
    pub service: Option<String>,
    #[serde(flatten)]
    pub assessment: Assessment,
    pub verdict: &'static str,
    pub fix: Option<String>,
    /// Where `path_timeout_seconds` came from: `configured` (the path
    /// timeouts), `daemon_storms` (the local daemon's storms) or `fleet`
    /// (every node's evidence, from `--prometheus-url`).
    pub path_timeout_source: &'static str,
}

#[derive(Debug, Serialize)]
pub struct NamespaceSettings {
    pub netns: u32,
    pub settings: Vec<SettingEffect>,
}

#[derive(Debug, Serialize)]
pub struct AuditReport {
    /// `output::SCHEMA_VERSION`.
    pub schema_version: u32,
    pub at_risk: usize,
    pub connections: Vec<AuditedConnection>,
    pub host_settings: Vec<NamespaceSettings>,
    /// Path idle timeouts inferred from a running daemon's storms: at most
    /// the shortest idle gap that ended in a storm, per destination.
    pub inferred_path_timeouts: BTreeMap<String, f64>,
    /// Path idle timeout windows across the fleet (`--prometheus-url`),
    /// with the URL they came from; `null` without one.
    pub fleet_path_timeouts: Option<FleetTimeouts>,
}

/// Per destination, the shortest idle gap before a storm in the daemon's
/// recent and active storms (`/api/v1/storms`).
pub fn inferred_timeouts(storms: &serde_json::Value) -> BTreeMap<String, f64> {
    let mut inferred: BTreeMap<String, f64> = BTreeMap::new();
    let records = ["active", "recent"]
        .iter()
        .filter_map(|key| storms[key].as_array())
        .flatten();
    for record in records.filter(|r| r["event"] == "storm_started" || r["event"] == "storm_ended") {
        let destination = Role::from_name(record["role"].as_str())
            .destination(&record["local"], &record["remote"]);
        let (Some(destination), Some(idle)) =
            (destination.as_str(), record["idle_seconds"].as_f64())
        else {
            continue;
        };
        let entry = inferred.entry(destination.to_string()).or_insert(idle);
        *entry = entry.min(idle);
    }
    inferred
}

/// Asks a running daemon for its storms; `None` when none answers.
/// The daemon's `/api/v1/storms`, or nothing when none answers (said in a
/// warning when TLS or auth was set up for it: then one was expected).
fn daemon_storms(client: &DaemonClient, expected: bool) -> Option<serde_json::Value> {
    match client.get("/api/v1/storms") {
        Ok(body) => serde_json::from_str(&body).ok(),
        Err(error) => {
            if expected {
                tracing::warn!(url = client.url(), %error, "the daemon did not answer");
            }
            None
        }
    }
}

/// Scans the host and assesses every watched connection.
pub fn audit(
    ports: &BTreeSet<u16>,
    all_ports: bool,
    paths: &PathTimeouts,
    inferred: BTreeMap<String, f64>,
    fleet: Option<FleetTimeouts>,
) -> AuditReport {
    let proc_root = Path::new("/proc");
    let watched =
        |local: u16, remote: u16| all_ports || ports.contains(&local) || ports.contains(&remote);
    let scans = existing::scan(proc_root, &watched);
    let mut attributor = Attributor::new(proc_root);
    let shortest = scans
        .iter()
        .flat_map(|scan| &scan.sockets)
        .map(|s| paths.for_addr(s.socket.remote.ip()))
        .min()
        .unwrap_or(risk::DEFAULT_PATH_TIMEOUT);
    let mut connections: Vec<AuditedConnection> = scans
        .iter()
        .flat_map(|scan| &scan.sockets)
        .filter(|s| s.socket.state == monitor_common::tcp::TCP_ESTABLISHED)
        .map(|s| assess_one(s, paths, &inferred, fleet.as_ref(), &mut attributor))
        .collect();
    connections.sort_by_key(|c| {
        (
            !c.assessment.at_risk,
            std::cmp::Reverse(c.assessment.quiet_seconds),
        )
    });
    let mut seen_settings = Vec::new();
    let host_settings = scans
        .iter()
        .filter(|scan| {
            // One entry per distinct setting set keeps the report short.
            let first = !seen_settings.contains(&scan.settings);
            seen_settings.push(scan.settings.clone());
            first || !scan.sockets.is_empty()
        })
        .map(|scan| NamespaceSettings {
            netns: scan.netns,
            settings: scan.settings.effects(shortest),
        })
        .collect();
    AuditReport {
        schema_version: crate::output::SCHEMA_VERSION,
        at_risk: connections.iter().filter(|c| c.assessment.at_risk).count(),
        connections,
        host_settings,
        inferred_path_timeouts: inferred,
        fleet_path_timeouts: fleet,
    }
}

fn assess_one(
    scanned: &ScannedSocket,
    paths: &PathTimeouts,
    inferred: &BTreeMap<String, f64>,
    fleet: Option<&FleetTimeouts>,
    attributor: &mut Attributor,
) -> AuditedConnection {
    let socket = &scanned.socket;
    let ms = |v: Option<u32>| v.map(|ms| Duration::from_millis(u64::from(ms)));
    let view = ConnectionView {
        last_data_sent: ms(socket.last_data_sent_ms),
        last_data_recv: ms(socket.last_data_recv_ms),
        last_ack_recv: ms(socket.last_ack_recv_ms),
        keepalive_in: socket.keepalive_in,
    };
    let destination = Role::try_from(scanned.role)
        .unwrap_or(Role::Unknown)
        .destination(socket.local, socket.remote);
    let service = KNOWN_SERVICES
        .iter()
        .find(|(port, _)| *port == destination.port())
        .map(|(_, name)| name.to_string());
    // A storm after a shorter idle gap is evidence the path forgets sooner
    // than configured.
    let mut path_timeout = paths.for_addr(socket.remote.ip());
    let mut path_timeout_source = "configured";
    // Whatever answered at --daemon-url, only a sane number counts.
    if let Some(inferred) = inferred
        .get(&destination.to_string())
        .and_then(|seconds| Duration::try_from_secs_f64(seconds.max(1.0)).ok())
        .filter(|inferred| *inferred < path_timeout)
    {
        path_timeout = inferred;
        path_timeout_source = "daemon_storms";
    }
    // Every node's evidence (--prometheus-url), when it is tighter still.
    if let Some(fleet) = fleet
        .and_then(|fleet| fleet.at_most(&destination.to_string()))
        .filter(|fleet| *fleet < path_timeout)
    {
        path_timeout = fleet;
        path_timeout_source = "fleet";
    }
    let assessment = risk::assess(&view, path_timeout);
    let owner = scanned
        .holders
        .first()
        .and_then(|&pid| procfs::owner_of(Path::new("/proc"), pid, 0, 0));
    let process = owner.and_then(|owner| {
        ProcessRef::from_owner(&owner, OwnerSource::Proc, scanned.holders.len() > 1)
    });
    let details = process
        .as_ref()
        .map(|p| attributor.details(p))
        .unwrap_or_default();
    AuditedConnection {
        pid: process.as_ref().map(|p| p.pid),
        comm: process.map(|p| p.comm),
        container_id: details.workload.container_id,
        pod_uid: details.workload.pod_uid,
        local: socket.local.to_string(),
        remote: socket.remote.to_string(),
        netns: scanned.netns,
        verdict: if assessment.at_risk {
            "will hang on next use"
        } else {
            "ok"
        },
        fix: assessment
            .at_risk
            .then(|| risk::fix(&assessment, service.as_deref())),
        service,
        assessment,
        path_timeout_source,
    }
}

pub fn run(args: AuditArgs) -> anyhow::Result<()> {
    let paths = args.paths.path_timeouts().map_err(anyhow::Error::msg)?;
    let ports: BTreeSet<u16> = args.ports.iter().copied().collect();
    let storms = match &args.daemon_url {
        Some(url) => {
            let client = DaemonClient::new(url, &args.client, Duration::from_secs(2))
                .map_err(anyhow::Error::msg)?;
            let expected = args.client.daemon_ca_file.is_some()
                || args.client.daemon_cert.is_some()
                || args.client.daemon_user.is_some();
            daemon_storms(&client, expected)
        }
        None => None,
    };
    let inferred = storms.as_ref().map(inferred_timeouts).unwrap_or_default();
    // Asked for by name: a Prometheus that does not answer is an error.
    let fleet = args
        .prometheus_url
        .as_deref()
        .map(|url| FleetTimeouts::query(url, Duration::from_secs(5)))
        .transpose()?;
    let report = audit(&ports, args.all_ports, &paths, inferred, fleet);
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{} of {} watched connections will hang on next use",
        report.at_risk,
        report.connections.len()
    )?;
    if !report.connections.is_empty() {
        writeln!(
            out,
            "\n{:<24} {:<13} {:<45} {:>8} {:>8} {:>10} {:>8}  FIX",
            "VERDICT", "PROCESS", "LOCAL -> REMOTE", "IDLE", "QUIET", "KEEPALIVE", "PATH"
        )?;
        for c in &report.connections {
            let who = match (&c.comm, c.pid) {
                // The name is the process's own choice: no control characters.
                (Some(comm), Some(pid)) => {
                    format!("{}[{pid}]", crate::output::escape::control(comm))
                }
                _ => "?".into(),
            };
            let keepalive = c
                .assessment
                .keepalive_next_seconds
                .map_or("off".to_string(), |s| format!("in {s}s"));
            writeln!(
                out,
                "{:<24} {:<13} {:<45} {:>7}s {:>7}s {:>10} {:>8}  {}",
                c.verdict,
                who,
                format!("{} -> {}", c.local, c.remote),
                c.assessment.idle_seconds,
                c.assessment.quiet_seconds,
                keepalive,
                format!(
                    "{}s{}",
                    c.assessment.path_timeout_seconds,
                    match c.path_timeout_source {
                        "fleet" => " fleet",
                        "daemon_storms" => " storms",
                        _ => "",
                    }
                ),
                crate::output::escape::control(c.fix.as_deref().unwrap_or(""))
            )?;
        }
    }
    if !report.inferred_path_timeouts.is_empty() {
        writeln!(
            out,
            "\nPath idle timeouts inferred from connmon's storms (at most):"
        )?;
        for (destination, seconds) in &report.inferred_path_timeouts {
            writeln!(out, "  {destination}: {seconds:.0}s")?;
        }
    }
    if let Some(fleet) = &report.fleet_path_timeouts {
        writeln!(
            out,
            "\nPath idle timeouts across the fleet (every node's idle gaps, from {}):",
            fleet.source
        )?;
        let seconds = |value: Option<f64>| value.map_or("?".to_string(), |s| format!("{s:.0}s"));
        for (destination, window) in &fleet.windows {
            writeln!(
                out,
                "  {destination}: above {}, at most {}",
                seconds(window.above_seconds),
                seconds(window.at_most_seconds)
            )?;
        }
    }
    writeln!(out, "\nHost settings (by network namespace):")?;
    for namespace in &report.host_settings {
        for setting in &namespace.settings {
            writeln!(
                out,
                "  netns {} {} = {}: {}",
                namespace.netns, setting.setting, setting.value, setting.effect
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infers_the_shortest_idle_gap_per_destination() {
        let storms = serde_json::json!({
            "active": [{"event": "storm_started", "role": "client", "remote": "10.0.1.5:6379", "local": "10.0.0.2:1", "idle_seconds": 400.0}],
            "recent": [
                {"event": "storm_ended", "role": "client", "remote": "10.0.1.5:6379", "local": "10.0.0.2:2", "idle_seconds": 361.5},
                {"event": "storm_ended", "role": "server", "remote": "10.0.0.9:3", "local": "10.0.1.5:6379", "idle_seconds": 900.0},
                {"event": "reset_after_idle", "role": "client", "remote": "10.0.3.1:5432", "local": "x", "idle_seconds": 5.0}
            ]
        });
        let inferred = inferred_timeouts(&storms);
        assert_eq!(inferred.get("10.0.1.5:6379"), Some(&361.5));
        assert_eq!(inferred.len(), 1);
    }
}
