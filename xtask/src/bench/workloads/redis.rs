//! The hot path: redis-benchmark against a real redis-server on the
//! loopback of a namespace of its own. Keep-alive connections exercise the
//! send/receive hooks; a new connection per request adds the state-change
//! and destroy hooks. Each round runs every setup in a rotating order:
//! without connmon (the baseline of the machine's CPU per request), with
//! connmon as it ships (6379 watched), and twice more with an empty
//! program on each of connmon's hooks next to it (the floor), once with
//! 6379 watched and once with it unwatched, for connmon's ns per run as a
//! ratio to the floor in the same window.

use std::time::Duration;

use anyhow::{Context, Result};
use connmon_tests::{connmon::Daemon, netns::NetNs, poll, process::Process};

use crate::bench::{
    Options,
    env::interrupt,
    floor::{self, Floor},
    probe::{self, ProgramWindow},
};

pub const CLIENTS: u32 = 50;

/// What runs next to the workload in a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// Nothing attached: the machine's own CPU per request.
    Without,
    /// connmon with its defaults (6379 watched), nothing else.
    Connmon,
    /// connmon watching 6379, and the empty programs.
    WatchedWithFloor,
    /// connmon watching another port, and the empty programs.
    UnwatchedWithFloor,
}

impl Setup {
    pub const ALL: [Setup; 4] = [
        Setup::Without,
        Setup::Connmon,
        Setup::WatchedWithFloor,
        Setup::UnwatchedWithFloor,
    ];

    fn label(self) -> &'static str {
        match self {
            Setup::Without => "without connmon",
            Setup::Connmon => "connmon",
            Setup::WatchedWithFloor => "connmon (6379 watched) + empty programs",
            Setup::UnwatchedWithFloor => "connmon (6379 unwatched) + empty programs",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Sample {
    pub round: u32,
    pub keepalive: bool,
    pub setup: Setup,
    pub requests: u32,
    pub requests_per_second: f64,
    /// Busy CPU time of the whole machine in the window (every CPU, every
    /// process and the kernel), from /proc/stat.
    pub machine_busy_ns: u64,
    /// connmon's programs in the window.
    pub programs: Vec<ProgramWindow>,
    /// The empty programs in the window, named by hook.
    pub floor: Vec<ProgramWindow>,
}

impl Sample {
    /// Busy CPU of the whole machine per request, in µs.
    pub fn cpu_us_per_request(&self) -> f64 {
        self.machine_busy_ns as f64 / 1e3 / f64::from(self.requests.max(1))
    }

    /// connmon's ns per run on `hook` over the floor's in this window.
    pub fn ratio_to_floor(&self, hook: &str) -> Option<f64> {
        let connmon = self
            .programs
            .iter()
            .find(|p| hook.starts_with(&p.name) || p.name.starts_with(hook))
            .and_then(ProgramWindow::ns_per_run)?;
        let floor = self
            .floor
            .iter()
            .find(|p| p.name == hook)
            .and_then(ProgramWindow::ns_per_run)?;
        (floor > 0.0).then(|| connmon / floor)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Results {
    pub samples: Vec<Sample>,
    pub requests_keepalive: u32,
    pub requests_reconnect: u32,
}

fn requests(options: &Options, keepalive: bool) -> u32 {
    match (keepalive, options.quick) {
        (true, false) => 300_000,
        (true, true) => 100_000,
        (false, false) => 40_000,
        (false, true) => 15_000,
    }
}

fn benchmark(ns: &NetNs, keepalive: bool, requests: u32) -> Result<f64> {
    let out = ns.exec(
        "redis-benchmark",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            "6379",
            "-t",
            "set",
            "-n",
            &requests.to_string(),
            "-c",
            &CLIENTS.to_string(),
            "-k",
            if keepalive { "1" } else { "0" },
            "--csv",
        ],
    )?;
    // "test","rps",... then "SET","84033.61",...
    out.lines()
        .find(|line| line.starts_with("\"SET\""))
        .and_then(|line| line.split(',').nth(1))
        .and_then(|rps| rps.trim_matches('"').parse().ok())
        .with_context(|| format!("no SET result in redis-benchmark's output: {out}"))
}

/// Switches the kernel's BPF run-time statistics (the bench's guard
/// restores the host's setting when the run ends).
fn set_bpf_stats(on: bool) -> Result<()> {
    std::fs::write(
        "/proc/sys/kernel/bpf_stats_enabled",
        if on { "1" } else { "0" },
    )
    .context("switching kernel.bpf_stats_enabled")
}

pub fn run(options: &Options) -> Result<Results> {
    let ns = NetNs::create("bench-redis")?;
    // A new connection per request leaves a TIME_WAIT socket each.
    ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    ns.sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
    let dir = std::env::temp_dir().join(format!("{}-redis", ns.name()));
    std::fs::create_dir_all(&dir)?;
    let mut command = ns.command("redis-server");
    command
        .args(["--bind", "127.0.0.1", "--port", "6379", "--save", ""])
        .args(["--appendonly", "no", "--daemonize", "no", "--dir"])
        .arg(&dir);
    let server = Process::spawn("redis-server", command)?;
    poll::until("redis-server to answer", Duration::from_secs(20), || {
        let pong = ns.exec("redis-cli", &["-h", "127.0.0.1", "-p", "6379", "ping"]);
        Ok(pong.ok().filter(|reply| reply.trim() == "PONG").map(|_| ()))
    })?;
    // Unmeasured warm-up.
    benchmark(&ns, true, 20_000)?;

    let mut results = Results {
        requests_keepalive: requests(options, true),
        requests_reconnect: requests(options, false),
        ..Results::default()
    };
    for round in 0..options.repetitions() {
        // Rotate which setup goes first, so drift favours none.
        for index in 0..Setup::ALL.len() {
            let setup = Setup::ALL[(index + round as usize) % Setup::ALL.len()];
            interrupt::check()?;
            eprintln!(
                "bench: redis round {}/{}: {}",
                round + 1,
                options.repetitions(),
                setup.label()
            );
            let daemon = match setup {
                Setup::Without => None,
                Setup::Connmon | Setup::WatchedWithFloor => Some(Daemon::start(&[])?),
                // A port nothing uses: every redis socket is unwatched.
                Setup::UnwatchedWithFloor => Some(Daemon::start(&["--ports", "1"])?),
            };
            // The machine's CPU per request is measured as connmon runs in
            // production, with BPF statistics off (they add two clock
            // reads to every program run, its own and the floor's); the
            // ns-per-run windows need them on.
            let measures_programs =
                matches!(setup, Setup::WatchedWithFloor | Setup::UnwatchedWithFloor);
            set_bpf_stats(measures_programs)?;
            let floor = match setup {
                // One helper call each, next to the empty program: what a
                // call costs here (section 2).
                Setup::WatchedWithFloor => Some(Floor::attach(floor::HOOKS)?.with_helper_probes()?),
                Setup::UnwatchedWithFloor => Some(Floor::attach(floor::HOOKS)?),
                _ => None,
            };
            for keepalive in [true, false] {
                let requests = requests(options, keepalive);
                let before = daemon
                    .as_ref()
                    .map(|d| probe::programs_of(d.pid()))
                    .transpose()?;
                let floor_before = floor.as_ref().map(Floor::stats);
                let busy_before = probe::machine_busy_ns()?;
                let requests_per_second = benchmark(&ns, keepalive, requests)?;
                let machine_busy_ns = probe::machine_busy_ns()?.saturating_sub(busy_before);
                let programs = match (&daemon, before) {
                    (Some(daemon), Some(before)) => {
                        probe::program_windows(&before, &probe::programs_of(daemon.pid())?)
                    }
                    _ => Vec::new(),
                };
                let floor = match (&floor, floor_before) {
                    (Some(floor), Some(before)) => floor.windows(&before),
                    _ => Vec::new(),
                };
                results.samples.push(Sample {
                    round,
                    keepalive,
                    setup,
                    requests,
                    requests_per_second,
                    machine_busy_ns,
                    programs,
                    floor,
                });
            }
        }
    }
    set_bpf_stats(true)?;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(results)
}
