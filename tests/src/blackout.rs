//! A whole pool blackholed at once: several processes, each with one writer
//! thread per pooled connection, all sending after the same idle gap into
//! a path that drops everything, as when a NAT gateway or load balancer
//! forgets every flow. Every connection's kernel gives up with ETIMEDOUT;
//! connmon must report each storm with its process and thread, soon after
//! the confirming retransmit, and end each one as `timed_out`.
//!
//! Shared by the kernel test (a CI-sized pool) and `cargo xtask bench`
//! (1,000 to 30,000 connections). Everything runs in a network namespace
//! this creates, on its loopback.

use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{connmon::Daemon, netns::NetNs, poll, process::Process};

/// Connections per server process, well under a default descriptor limit.
const CONNECTIONS_PER_SERVER: usize = 8_000;

/// `--idle-threshold` the daemon must run with (the pool idles past it).
const IDLE_THRESHOLD: &str = "2s";
const IDLE_GAP: Duration = Duration::from_millis(2_500);

#[derive(Clone, Debug)]
pub struct Options {
    pub processes: usize,
    pub connections_per_process: usize,
    /// The watched port the pool's server listens on.
    pub port: u16,
    /// The `tcp-peer` binary.
    pub peer: std::path::PathBuf,
}

/// One pooled connection as its client saw it.
#[derive(Clone, Debug)]
struct Connection {
    pid: u32,
    tid: u32,
    errno: i32,
}

/// What connmon made of the blackout.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub connections: usize,
    /// Storms reported for the pool's connections.
    pub found: usize,
    /// Connections with no storm (first few named).
    pub missed: Vec<String>,
    /// Storms naming another process or thread than the writer's.
    pub misattributed: Vec<String>,
    /// Storms that ended with another outcome than the client's error says,
    /// or never ended.
    pub wrong_outcome: Vec<String>,
    /// How the storms ended, by outcome (`none`: not yet).
    pub outcomes: std::collections::BTreeMap<String, usize>,
    /// Per storm: from the confirming retransmit (`confirmed_at`, the
    /// kernel's time) to the test reading `storm_started`, milliseconds.
    pub latency_ms: Vec<f64>,
    /// Per storm: from the client's send to the test reading
    /// `storm_started`, milliseconds.
    pub send_to_report_ms: Vec<f64>,
    /// Kernel records written and lost during the run.
    pub records_emitted: f64,
    pub records_lost: f64,
    /// connmon's CPU seconds from the send until every storm ended.
    pub cpu_seconds: f64,
    pub peak_rss_kib: u64,
    /// From the send until every client had its answer.
    pub burst: Duration,
}

impl Report {
    /// A one-line summary for logs.
    pub fn summary(&self) -> String {
        let latency = |q| quantile(&self.latency_ms, q);
        let send = |q| quantile(&self.send_to_report_ms, q);
        format!(
            "{} connections: {} storms found, {} missed, {} misattributed, {} wrong or missing outcomes; \
             confirm->report p50 {:.0} ms p99 {:.0} ms max {:.0} ms; send->report p50 {:.0} ms max {:.0} ms; \
             records emitted {}, lost {}; connmon CPU {:.2} s, peak RSS {} KiB; outcomes {:?}",
            self.connections,
            self.found,
            self.missed.len(),
            self.misattributed.len(),
            self.wrong_outcome.len(),
            latency(0.5),
            latency(0.99),
            latency(1.0),
            send(0.5),
            send(1.0),
            self.records_emitted,
            self.records_lost,
            self.cpu_seconds,
            self.peak_rss_kib,
            self.outcomes,
        )
    }
}

/// The `q` quantile of `values` (nearest rank; NaN when empty).
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
        .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// The outcome connmon must report for a client that ended with `errno`.
fn expected_outcome(errno: i32) -> &'static str {
    match errno {
        0 => "recovered",
        libc::ETIMEDOUT => "timed_out",
        libc::ECONNRESET | libc::EPIPE => "reset",
        _ => "closed",
    }
}

fn wall_time(value: &Value) -> Option<SystemTime> {
    humantime::parse_rfc3339(value.as_str()?).ok()
}

fn millis_after(later: SystemTime, earlier: SystemTime) -> f64 {
    match later.duration_since(earlier) {
        Ok(gap) => gap.as_secs_f64() * 1e3,
        Err(error) => -error.duration().as_secs_f64() * 1e3,
    }
}

/// utime + stime of `pid`, seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("malformed stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no memory effects.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / per_second)
}

fn resident_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A connmon for the blackout on `port`: watching it, with the idle
/// threshold the pool idles past.
pub fn daemon(port: u16) -> Result<Daemon> {
    Daemon::start(&[
        "--ports",
        &port.to_string(),
        "--idle-threshold",
        IDLE_THRESHOLD,
    ])
}

/// Runs the blackout against `connmon`, a `daemon(options.port)`.
pub fn run(connmon: &Daemon, options: &Options) -> Result<Report> {
    let ns = NetNs::create(&format!("blackout{}", options.port))?;
    // The kernel gives up after seconds, not 15 minutes; a large pool needs
    // more ephemeral ports than the default range.
    ns.sysctl("net.ipv4.tcp_retries2", "4")?;
    ns.sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
    let addr = format!("127.0.0.1:{}", options.port);
    let peer = options.peer.to_string_lossy().into_owned();
    // Servers sharing the port: one process holds only so many descriptors.
    let mut servers = Vec::new();
    for _ in
        0..(options.processes * options.connections_per_process).div_ceil(CONNECTIONS_PER_SERVER)
    {
        let mut server = ns.command(&peer);
        server.args(["shared-server", &addr]);
        let server = Process::spawn("tcp-peer shared-server", server)?;
        server
            .stdout
            .wait_for("listening", Duration::from_secs(10))?;
        servers.push(server);
    }
    let mut pools = Vec::new();
    for _ in 0..options.processes {
        let mut command = ns.command(&peer);
        command.args(["pool", &addr, &options.connections_per_process.to_string()]);
        pools.push(Process::spawn("tcp-peer pool", command)?);
    }
    let open_for = Duration::from_secs(30 + options.connections_per_process as u64 / 50);
    for pool in &pools {
        pool.stdout.wait_for("opened", open_for)?;
    }
    // Idle past the threshold; then the path forgets every flow at once.
    std::thread::sleep(IDLE_GAP);
    ns.blackhole_tcp_port(options.port)?;
    let emitted_before = connmon.metric_sum("connmon_kernel_events_emitted_total")?;
    let lost_before = connmon.metric_sum("connmon_lost_records_total")?;
    let cpu_before = cpu_seconds(connmon.pid())?;
    let mut peak_rss_kib = resident_kib(connmon.pid());
    let sent = Instant::now();
    for pool in &mut pools {
        pool.send_line("send")?;
    }
    poll::until(
        "every pooled client to get its answer",
        Duration::from_secs(120),
        || {
            peak_rss_kib = peak_rss_kib.max(resident_kib(connmon.pid()));
            Ok(pools
                .iter()
                .all(|pool| pool.stdout.snapshot().iter().any(|l| l.starts_with("done")))
                .then_some(()))
        },
    )?;
    let burst = sent.elapsed();

    let mut clients: HashMap<u16, Connection> = HashMap::new();
    let mut sent_at: HashMap<u16, SystemTime> = HashMap::new();
    for pool in &pools {
        for line in pool.stdout.snapshot() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let ["result", port, tid, errno, sent_ms, _] = fields.as_slice() {
                let port: u16 = port.parse()?;
                clients.insert(
                    port,
                    Connection {
                        pid: pool.pid(),
                        tid: tid.parse()?,
                        errno: errno.parse()?,
                    },
                );
                sent_at.insert(
                    port,
                    SystemTime::UNIX_EPOCH + Duration::from_millis(sent_ms.parse()?),
                );
            }
        }
    }
    let connections = options.processes * options.connections_per_process;
    anyhow::ensure!(
        clients.len() == connections,
        "{} of {connections} pooled clients reported a result",
        clients.len()
    );

    // What connmon will say about the burst is said once every record is
    // processed and every storm has ended (a lost end is reconciled).
    connmon.drained(Duration::from_secs(30))?;
    let netns = ns.inode();
    let ours = |record: &Value| {
        record["netns"] == netns && record["remote"].as_str() == Some(addr.as_str())
    };
    let ended = |records: &[(SystemTime, Value)]| {
        records
            .iter()
            .filter(|(_, r)| r["event"] == "storm_ended" && ours(r))
            .count()
    };
    // A storm whose end was lost ends one expiry tick (10 s) after the loss
    // was counted, which is up to 20 s.
    let _ = poll::until("every storm to end", Duration::from_secs(30), || {
        peak_rss_kib = peak_rss_kib.max(resident_kib(connmon.pid()));
        Ok((ended(&connmon.timed_records()) >= connections).then_some(()))
    });
    let cpu_seconds = cpu_seconds(connmon.pid())? - cpu_before;
    let records_emitted =
        connmon.metric_sum("connmon_kernel_events_emitted_total")? - emitted_before;
    let records_lost = connmon.metric_sum("connmon_lost_records_total")? - lost_before;

    let records = connmon.timed_records();
    let port_of = |record: &Value| -> Option<u16> {
        record["local"].as_str()?.rsplit_once(':')?.1.parse().ok()
    };
    let mut started: HashMap<u16, (SystemTime, &Value)> = HashMap::new();
    let mut outcomes: HashMap<u16, String> = HashMap::new();
    for (read_at, record) in &records {
        if !ours(record) {
            continue;
        }
        let Some(port) = port_of(record) else {
            continue;
        };
        match record["event"].as_str() {
            Some("storm_started") => {
                started.entry(port).or_insert((*read_at, record));
            }
            Some("storm_ended") => {
                outcomes.insert(port, record["outcome"].as_str().unwrap_or("").to_string());
            }
            _ => {}
        }
    }
    let mut report = Report {
        connections,
        records_emitted,
        records_lost,
        cpu_seconds,
        peak_rss_kib,
        burst,
        ..Report::default()
    };
    let mut ports: Vec<_> = clients.keys().copied().collect();
    ports.sort_unstable();
    for port in ports {
        let client = &clients[&port];
        let Some((read_at, storm)) = started.get(&port) else {
            report
                .missed
                .push(format!("port {port} (client errno {})", client.errno));
            continue;
        };
        report.found += 1;
        if storm["pid"] != client.pid || storm["tid"] != client.tid || storm["comm"] != "tcp-peer" {
            report.misattributed.push(format!(
                "port {port}: storm names pid {} tid {} comm {}, the writer was pid {} tid {}",
                storm["pid"], storm["tid"], storm["comm"], client.pid, client.tid
            ));
        }
        let expected = expected_outcome(client.errno);
        *report
            .outcomes
            .entry(outcomes.get(&port).map_or("none".into(), Clone::clone))
            .or_default() += 1;
        match outcomes.get(&port) {
            Some(outcome) if outcome == expected => {}
            other => report.wrong_outcome.push(format!(
                "port {port}: ended {other:?}, the client's errno {} means {expected}",
                client.errno
            )),
        }
        if let Some(confirmed) = wall_time(&storm["confirmed_at"]) {
            report.latency_ms.push(millis_after(*read_at, confirmed));
        }
        report
            .send_to_report_ms
            .push(millis_after(*read_at, sent_at[&port]));
    }
    Ok(report)
}
