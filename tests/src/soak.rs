//! The soak run behind `cargo xtask soak`: connmon watching thousands of
//! short connections per second for minutes, with a storm on an idle
//! connection every so often. It passes when connmon is still up, its
//! resident memory stayed flat after warm-up, every storm was reported and
//! ended, and once the churn stops the sockets it tracks (kernel map and
//! userspace table) fall back to where they started: no leaked entries.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{
    connmon::{Daemon, built_binary},
    netns::NetNs,
    poll,
    process::Process,
};

/// The watched port the churn and the storms use.
const PORT: u16 = 7400;

pub struct SoakPlan {
    pub duration: Duration,
    /// Connections opened and closed per second.
    pub churn_per_second: u64,
    /// Time between induced storms.
    pub storm_every: Duration,
}

/// One resident-memory and table-size sample.
struct Sample {
    at: Duration,
    rss_kib: u64,
    kernel_sockets: f64,
    userspace_sockets: f64,
}

/// What a soak run measured; `failures` empty means it passed.
pub struct SoakReport {
    pub lines: Vec<String>,
    pub failures: Vec<String>,
}

/// Memory may grow this much (fraction) past its warm-up level, plus
/// [`RSS_SLACK_KIB`], before the run counts as leaking.
const RSS_GROWTH_ALLOWED: f64 = 0.10;
const RSS_SLACK_KIB: u64 = 2048;
/// Sockets that may remain above the starting level after the churn
/// (a storm victim still closing).
const SOCKET_SLACK: f64 = 2.0;

pub fn run(plan: &SoakPlan) -> Result<SoakReport> {
    let ns = NetNs::create("soak")?;
    // Thousands of client closes per second leave TIME_WAIT sockets: let
    // new connects reuse them, and widen the port range.
    ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    ns.sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
    // Storm victims give up after about 3 s instead of 15 minutes.
    ns.sysctl("net.ipv4.tcp_retries2", "3")?;
    let peer = built_binary("tcp-peer");
    let mut server = ns.command(&peer.to_string_lossy());
    server.args(["server", &format!("127.0.0.1:{PORT}")]);
    let server = Process::spawn("tcp-peer server", server)?;
    server
        .stdout
        .wait_for("listening", Duration::from_secs(10))?;

    let connmon = Daemon::start(&["--idle-threshold", "2s", "--ports", &PORT.to_string()])?;
    let started = Instant::now();
    // Where the tables stand before any churn.
    let baseline = sample(&connmon, started)?;

    let mut churn = ns.command(&peer.to_string_lossy());
    churn.args([
        "churn",
        &format!("127.0.0.1:{PORT}"),
        &plan.churn_per_second.to_string(),
        &plan.duration.as_secs().to_string(),
    ]);
    let churn = Process::spawn("tcp-peer churn", churn)?;
    let cpu_before = cpu_ticks(connmon.pid())?;

    let mut samples = Vec::new();
    let mut failures = Vec::new();
    let mut storms = 0u32;
    let mut storms_reported = 0u32;
    let mut next_sample = Instant::now();
    let mut next_storm = Instant::now() + plan.storm_every.min(Duration::from_secs(20));
    let end = Instant::now() + plan.duration;
    while Instant::now() < end {
        if Instant::now() >= next_sample {
            let now = sample(&connmon, started)?;
            eprintln!(
                "soak: t={:>4}s rss={} KiB sockets kernel={} userspace={}",
                now.at.as_secs(),
                now.rss_kib,
                now.kernel_sockets,
                now.userspace_sockets
            );
            samples.push(now);
            next_sample += Duration::from_secs(10);
        }
        if Instant::now() >= next_storm && Instant::now() + Duration::from_secs(30) < end {
            storms += 1;
            match storm(&ns, &peer, &connmon, storms) {
                Ok(line) => {
                    storms_reported += 1;
                    eprintln!("soak: {line}");
                }
                Err(error) => failures.push(format!("storm {storms}: {error:#}")),
            }
            next_storm += plan.storm_every;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let churned = churn
        .stdout
        .wait_for("churned", Duration::from_secs(60))
        .context("the churn did not finish")?;
    let cpu_seconds = (cpu_ticks(connmon.pid())? - cpu_before) as f64 / clock_ticks();

    let mut lost = 0.0;
    for reason in ["ring_buffer_full", "socket_map_full", "decode_error"] {
        lost += connmon.metric(&format!(
            "connmon_lost_records_total{{reason=\"{reason}\"}}"
        ))?;
    }
    // After the churn, the tables must drain back to where they started:
    // at once, or, when destroy records were lost, once connmon forgets
    // sockets silent for five minutes.
    let drain = if lost > 0.0 {
        Duration::from_secs(330)
    } else {
        Duration::from_secs(90)
    };
    let settled = poll::until("tracked sockets to return to the baseline", drain, || {
        let now = sample(&connmon, started)?;
        Ok(
            (now.kernel_sockets <= baseline.kernel_sockets + SOCKET_SLACK
                && now.userspace_sockets <= baseline.userspace_sockets + SOCKET_SLACK)
                .then_some(now),
        )
    });
    let last = sample(&connmon, started)?;
    if settled.is_err() {
        failures.push(format!(
            "tracked sockets did not return to the baseline: kernel {} -> {}, userspace {} -> {}",
            baseline.kernel_sockets,
            last.kernel_sockets,
            baseline.userspace_sockets,
            last.userspace_sockets
        ));
    }

    let (warm, late) = rss_levels(&samples);
    let allowed = (warm as f64 * (1.0 + RSS_GROWTH_ALLOWED)) as u64 + RSS_SLACK_KIB;
    if late > allowed {
        failures.push(format!(
            "resident memory grew: {warm} KiB after warm-up, {late} KiB at the end (allowed {allowed} KiB)"
        ));
    }
    let refused = connmon.metric("connmon_lost_records_total{reason=\"socket_map_full\"}")?;
    let events = connmon.metric("connmon_kernel_events_emitted_total")?;

    let mut lines = vec![
        format!(
            "duration {} s, churn target {}/s: {churned}",
            plan.duration.as_secs(),
            plan.churn_per_second
        ),
        format!(
            "kernel records emitted {events}, lost {lost}, sockets refused kernel state {refused}"
        ),
        format!(
            "connmon CPU {cpu_seconds:.1} s ({:.1} % of one core)",
            100.0 * cpu_seconds / plan.duration.as_secs_f64()
        ),
        format!(
            "resident memory: {warm} KiB after warm-up, {late} KiB at the end (limit {allowed} KiB)"
        ),
        format!(
            "tracked sockets: kernel {} -> {}, userspace {} -> {} (baseline -> after churn)",
            baseline.kernel_sockets,
            last.kernel_sockets,
            baseline.userspace_sockets,
            last.userspace_sockets
        ),
        format!("storms induced {storms}, reported and ended {storms_reported}"),
    ];
    match connmon.stop() {
        Ok(Some(0)) => lines.push("connmon exited 0 on SIGINT".into()),
        other => failures.push(format!("connmon did not exit cleanly: {other:?}")),
    }
    if storms == 0 {
        failures.push("the run was too short for a storm".into());
    }
    lines.push(if failures.is_empty() {
        "soak: PASS".into()
    } else {
        "soak: FAIL".into()
    });
    drop(server);
    Ok(SoakReport { lines, failures })
}

fn sample(connmon: &Daemon, started: Instant) -> Result<Sample> {
    Ok(Sample {
        at: started.elapsed(),
        rss_kib: rss_kib(connmon.pid())?,
        kernel_sockets: connmon.metric("connmon_tracked_sockets{table=\"kernel\"}")?,
        userspace_sockets: connmon.metric("connmon_tracked_sockets{table=\"userspace\"}")?,
    })
}

/// Resident memory after warm-up (the highest sample in the second fifth of
/// the run) and at the end (the highest in the last fifth).
fn rss_levels(samples: &[Sample]) -> (u64, u64) {
    let Some(last) = samples.last() else {
        return (0, 0);
    };
    let span = last.at.as_secs_f64().max(1.0);
    let window = |from: f64, to: f64| {
        samples
            .iter()
            .filter(|s| (from..=to).contains(&(s.at.as_secs_f64() / span)))
            .map(|s| s.rss_kib)
            .max()
            .unwrap_or(0)
    };
    (window(0.2, 0.4), window(0.8, 1.0))
}

/// An idle connection whose next request is silently dropped: connmon must
/// report the storm with the victim's pid, and its end once the kernel
/// gives up.
fn storm(ns: &NetNs, peer: &Path, connmon: &Daemon, number: u32) -> Result<String> {
    let mut client = ns.command(&peer.to_string_lossy());
    client.args(["client", &format!("127.0.0.1:{PORT}")]);
    let mut victim = Process::spawn("tcp-peer client", client)?;
    let connected = victim
        .stdout
        .wait_for("connected", Duration::from_secs(10))?;
    let local_port = connected
        .rsplit(':')
        .next()
        .and_then(|port| port.trim().parse::<u16>().ok())
        .context("the client's local port")?;
    // Idle past the 2 s threshold (plus its 0.5 s granularity). The drop is
    // on input, as on a remote middlebox: dropped on output, the send
    // itself would fail and nothing would be retransmitted.
    std::thread::sleep(Duration::from_secs(3));
    let table = format!("cmt_soak_storm_{number}");
    ns.nft(&format!(
        "table inet {table} {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    tcp sport {local_port} tcp dport {PORT} drop\n  }}\n}}\n"
    ))?;
    let outcome = (|| -> Result<String> {
        victim.send_line("after idle")?;
        let pid = victim.pid();
        let started = poll::until("storm_started", Duration::from_secs(15), || {
            Ok(connmon
                .findings("storm_started", ns.inode())
                .into_iter()
                .find(|r| r["pid"] == pid))
        })?;
        let id = started["storm_id"].clone();
        let ended = poll::until("storm_ended", Duration::from_secs(30), || {
            Ok(connmon
                .findings("storm_ended", ns.inode())
                .into_iter()
                .find(|r| r["storm_id"] == id))
        })?;
        Ok(format!(
            "storm {number}: pid {pid} idle {}s, ended {}",
            started["idle_seconds"], ended["outcome"]
        ))
    })();
    let _ = ns.exec("nft", &["delete", "table", "inet", &table]);
    // The server never heard of the victim's end: its side stays
    // established until something closes it. Close it, as a server with
    // keepalive would, so the tables can drain.
    let _ = ns.exec(
        "ss",
        &[
            "-K",
            "-t",
            "state",
            "established",
            &format!("( dport = :{local_port} )"),
        ],
    );
    outcome.with_context(|| format!("the victim said {:?}", victim.stdout.snapshot()))
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("connmon (pid {pid}) is gone"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .context("VmRSS in /proc/pid/status")
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| {
        fields
            .get(n)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after ")".
    Ok(field(11) + field(12))
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}
