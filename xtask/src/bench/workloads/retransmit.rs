//! The retransmit workload: iperf3 between two namespaces joined by a veth
//! pair, with nftables dropping 3 % of the data segments at random at the
//! receiver. Each tool in turn is attached for one iperf3 run per round;
//! the rounds rotate the order so slow drift spreads over all tools.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result};
use connmon_tests::{netns::NetNs, poll, process::Process};

use crate::bench::{
    Options,
    env::{Scratch, interrupt},
    floor::Floor,
    peers::{self, Tool, WORKLOAD_PORT},
    probe::{self, Cpu, ProgramWindow},
};

const SERVER: &str = "10.78.0.2";
/// Per mille of data segments dropped.
pub const DROP_PER_MILLE: u32 = 30;
/// Parallel iperf3 streams: more loss episodes at once, more retransmit
/// events (GSO skbs carry many segments, so events are fewer than segments).
pub const STREAMS: u32 = 8;

/// What connmon itself said about the window (from its /metrics).
#[derive(Clone, Debug, Default)]
pub struct ConnmonWindow {
    /// Retransmitted segments, host-wide (`kernel_retransmitted_segments_total`).
    pub segments: f64,
    /// Retransmit attempts, host-wide (`kernel_retransmits_total`).
    pub attempts: f64,
    /// Records the kernel wrote / processed / lost.
    pub emitted: f64,
    pub processed: f64,
    pub lost_ring_buffer: f64,
    pub lost_socket_map: f64,
    pub decode_errors: f64,
    /// RTO retransmits of watched sockets: each one is emitted with a wakeup.
    pub timeout_events: f64,
}

#[derive(Clone, Debug)]
pub struct Sample {
    pub tool: Tool,
    pub throughput_bps: f64,
    pub programs: Vec<ProgramWindow>,
    /// CPU the tool's own process used in the window.
    pub cpu: Option<Cpu>,
    /// CPU time of the tool's threads in the window, from schedstat (ns
    /// precision; user and system together).
    pub cpu_ns: Option<u64>,
    pub irq_work: u64,
    pub voluntary_switches: Option<u64>,
    /// `TcpRetransSegs` of the workload's namespaces.
    pub nstat_segments: u64,
    pub connmon: Option<ConnmonWindow>,
    /// An empty program on `tcp_retransmit_skb` in the same window (connmon
    /// windows only): the hook's own cost, connmon's floor.
    pub floor: Option<ProgramWindow>,
}

impl Sample {
    /// The tool's program on `tcp_retransmit_skb` in this window.
    pub fn retransmit_program(&self) -> Option<&ProgramWindow> {
        if self.tool.is_connmon() {
            self.programs
                .iter()
                .find(|p| p.name.starts_with("tcp_retransmit"))
        } else {
            // A peer's only program that runs during the window.
            self.programs.iter().max_by_key(|p| p.runs)
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Results {
    pub samples: Vec<Sample>,
}

/// Two namespaces, a veth pair, the random drop and an iperf3 server.
struct Network {
    server: Process,
    client: NetNs,
    receiver: NetNs,
}

impl Network {
    fn build() -> Result<Self> {
        let client = NetNs::create("bench-cli")?;
        let receiver = NetNs::create("bench-srv")?;
        client.veth_to("eth0", &receiver, "eth0")?;
        for (ns, addr) in [(&client, "10.78.0.1/24"), (&receiver, "10.78.0.2/24")] {
            ns.ip(&["addr", "add", addr, "dev", "eth0"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
        }
        receiver.nft(&format!(
            "table inet connmon_bench {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    tcp dport {WORKLOAD_PORT} numgen random mod 1000 < {DROP_PER_MILLE} drop\n  }}\n}}\n"
        ))?;
        let mut command = receiver.command("iperf3");
        command.args(["-s", "-p", &WORKLOAD_PORT.to_string()]);
        let server = Process::spawn("iperf3 server", command)?;
        poll::until("iperf3 to listen", Duration::from_secs(20), || {
            let listening =
                receiver.exec("ss", &["-Hltn", &format!("sport = :{WORKLOAD_PORT}")])?;
            Ok((!listening.trim().is_empty()).then_some(()))
        })?;
        Ok(Self {
            server,
            client,
            receiver,
        })
    }

    /// One bounded iperf3 run; returns the receiver's goodput in bit/s.
    fn transfer(&self, seconds: u32) -> Result<f64> {
        let report = self.client.exec(
            "iperf3",
            &[
                "-c",
                SERVER,
                "-p",
                &WORKLOAD_PORT.to_string(),
                "-t",
                &seconds.to_string(),
                "-P",
                &STREAMS.to_string(),
                "--connect-timeout",
                "5000",
                "-J",
            ],
        )?;
        let report: serde_json::Value =
            serde_json::from_str(&report).context("iperf3 JSON report")?;
        report["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .context("no sum_received in iperf3's report")
    }

    fn retransmitted_segments(&self) -> Result<u64> {
        Ok(self.client.retransmitted_segments()? + self.receiver.retransmitted_segments()?)
    }
}

fn connmon_metrics(daemon: &connmon_tests::connmon::Daemon) -> Result<ConnmonWindow> {
    let text = daemon.http_get("/metrics")?;
    let sum = |family: &str, filter: &str| probe::metric_sum(&text, family, filter);
    let watched = format!(":{WORKLOAD_PORT}\"");
    Ok(ConnmonWindow {
        segments: sum("connmon_kernel_retransmitted_segments_total", ""),
        attempts: sum("connmon_kernel_retransmits_total", ""),
        emitted: sum("connmon_kernel_events_emitted_total", ""),
        processed: sum("connmon_events_total", ""),
        lost_ring_buffer: sum("connmon_lost_records_total", "ring_buffer_full"),
        lost_socket_map: sum("connmon_lost_records_total", "socket_map_full"),
        decode_errors: sum("connmon_lost_records_total", "decode_error"),
        timeout_events: text
            .lines()
            .filter(|line| {
                line.starts_with("connmon_retransmits_total{")
                    && line.contains("kind=\"timeout\"")
                    && line.contains(&watched)
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    })
}

fn difference(after: &ConnmonWindow, before: &ConnmonWindow) -> ConnmonWindow {
    ConnmonWindow {
        segments: after.segments - before.segments,
        attempts: after.attempts - before.attempts,
        emitted: after.emitted - before.emitted,
        processed: after.processed - before.processed,
        lost_ring_buffer: after.lost_ring_buffer - before.lost_ring_buffer,
        lost_socket_map: after.lost_socket_map - before.lost_socket_map,
        decode_errors: after.decode_errors - before.decode_errors,
        timeout_events: after.timeout_events - before.timeout_events,
    }
}

pub fn run(options: &Options, scratch: &Scratch, kernel_source: &Path) -> Result<Results> {
    let network = Network::build()?;
    // One unmeasured run: neighbour tables, caches, the server's first accept.
    network.transfer(1)?;
    let mut results = Results::default();
    let tools = Tool::ALL;
    for round in 0..options.repetitions() {
        for index in 0..tools.len() {
            interrupt::check()?;
            let tool = tools[(index + round as usize) % tools.len()];
            eprintln!(
                "bench: retransmit round {}/{}: {}",
                round + 1,
                options.repetitions(),
                tool.label()
            );
            let sample = measure(&network, tool, options, scratch, kernel_source)
                .with_context(|| format!("measuring {}", tool.label()))?;
            results.samples.push(sample);
        }
    }
    drop(network.server);
    Ok(results)
}

fn measure(
    network: &Network,
    tool: Tool,
    options: &Options,
    scratch: &Scratch,
    kernel_source: &Path,
) -> Result<Sample> {
    let attached = peers::attach(tool, scratch, kernel_source)?;
    let floor = tool
        .is_connmon()
        .then(|| Floor::attach(&["tcp_retransmit_skb"]))
        .transpose()?;
    let floor_before = floor.as_ref().map(Floor::stats);
    let pid = attached.pid();
    let programs_before = pid.map(probe::programs_of).transpose()?;
    let cpu_before = pid.map(probe::cpu).transpose()?;
    let cpu_ns_before = pid.map(probe::cpu_ns);
    let switches_before = pid.map(probe::voluntary_switches);
    let connmon_before = attached.daemon().map(connmon_metrics).transpose()?;
    let segments_before = network.retransmitted_segments()?;
    let irq_before = probe::irq_work_interrupts();

    let throughput_bps = network.transfer(options.seconds())?;

    let irq_work = probe::irq_work_interrupts() - irq_before;
    let nstat_segments = network.retransmitted_segments()? - segments_before;
    let cpu = match (pid, cpu_before) {
        (Some(pid), Some(before)) => {
            let after = probe::cpu(pid)?;
            Some(Cpu {
                user_s: after.user_s - before.user_s,
                system_s: after.system_s - before.system_s,
            })
        }
        _ => None,
    };
    let cpu_ns = match (pid, cpu_ns_before) {
        (Some(pid), Some(before)) => Some(probe::cpu_ns(pid).saturating_sub(before)),
        _ => None,
    };
    let voluntary_switches = match (pid, switches_before) {
        (Some(pid), Some(before)) => Some(probe::voluntary_switches(pid).saturating_sub(before)),
        _ => None,
    };
    let programs = match (pid, programs_before) {
        (Some(pid), Some(before)) => probe::program_windows(&before, &probe::programs_of(pid)?),
        _ => Vec::new(),
    };
    let connmon = match (attached.daemon(), connmon_before) {
        (Some(daemon), Some(before)) => {
            // Records written without a wakeup wait for the reader's
            // periodic drain: wait until every one is processed or lost.
            let after = poll::until("connmon to drain", Duration::from_secs(10), || {
                let now = connmon_metrics(daemon)?;
                Ok((now.processed + now.decode_errors >= now.emitted).then_some(now))
            })?;
            Some(difference(&after, &before))
        }
        _ => None,
    };
    let floor = match (floor, floor_before) {
        (Some(floor), Some(before)) => floor.windows(&before).into_iter().next(),
        _ => None,
    };
    drop(attached);
    Ok(Sample {
        floor,
        tool,
        throughput_bps,
        programs,
        cpu,
        cpu_ns,
        irq_work,
        voluntary_switches,
        nstat_segments,
        connmon,
    })
}
