//! The hot path: redis-benchmark against a real redis-server on the
//! loopback of a namespace of its own, with connmon attached (watching
//! 6379, its default) and without. Keep-alive connections exercise the
//! send/receive hooks; a new connection per request adds the state-change,
//! destroy and socket-map paths and an event per state change.

use std::time::Duration;

use anyhow::{Context, Result};
use connmon_tests::{connmon::Daemon, netns::NetNs, poll, process::Process};

use crate::bench::{
    Options,
    env::interrupt,
    probe::{self, ProgramWindow},
};

pub const CLIENTS: u32 = 50;

#[derive(Clone, Debug)]
pub struct Sample {
    pub keepalive: bool,
    pub attached: bool,
    pub requests_per_second: f64,
    pub programs: Vec<ProgramWindow>,
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
        // Alternate which goes first, so drift does not favour one side.
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for attached in order {
            interrupt::check()?;
            eprintln!(
                "bench: redis round {}/{}: connmon {}",
                round + 1,
                options.repetitions(),
                if attached { "attached" } else { "not attached" }
            );
            let daemon = attached.then(|| Daemon::start(&[])).transpose()?;
            for keepalive in [true, false] {
                let before = daemon
                    .as_ref()
                    .map(|d| probe::programs_of(d.pid()))
                    .transpose()?;
                let requests_per_second = benchmark(&ns, keepalive, requests(options, keepalive))?;
                let programs = match (&daemon, before) {
                    (Some(daemon), Some(before)) => {
                        probe::program_windows(&before, &probe::programs_of(daemon.pid())?)
                    }
                    _ => Vec::new(),
                };
                results.samples.push(Sample {
                    keepalive,
                    attached,
                    requests_per_second,
                    programs,
                });
            }
        }
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(results)
}
