//! Detection latency: the seed scenario (app -- middlebox that forgets idle
//! flows -- redis), a connection left idle until the middlebox forgets it,
//! then a command. connmon stamps `confirmed_at` with the kernel time of
//! the confirming retransmit; this measures when `storm_started` appears
//! on connmon's stdout and when `connmon_storms_started_total` moves on
//! /metrics (both polled every 2 ms).

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};
use connmon_tests::{
    connmon::{Daemon, http_get},
    poll,
    topology::{CACHE_V4, Options as TopologyOptions, REDIS_PORT, StaleFlow, Topology},
};

use crate::bench::{
    Options,
    env::{in_netns, interrupt},
    probe,
};

#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub to_stdout_ms: f64,
    pub to_metrics_ms: f64,
    /// From the stuck command to the confirming retransmit (the kernel's
    /// backoff, not connmon's doing).
    pub send_to_confirm_ms: f64,
}

#[derive(Clone, Debug, Default)]
pub struct Results {
    pub samples: Vec<Sample>,
}

/// Storms of this benchmark's own connections (their owner is this
/// process): other work on the machine may run the same scenario.
fn storms_started(listen: std::net::SocketAddr) -> f64 {
    http_get(listen, "/metrics")
        .map(|text| probe::metric_sum(&text, "connmon_storms_started_total", "process=\"xtask\""))
        .unwrap_or(0.0)
}

fn millis_between(later: SystemTime, earlier: SystemTime) -> f64 {
    match later.duration_since(earlier) {
        Ok(gap) => gap.as_secs_f64() * 1e3,
        Err(error) => -error.duration().as_secs_f64() * 1e3,
    }
}

pub fn run(options: &Options) -> Result<Results> {
    let mut topology = Topology::build(
        "bench-storm",
        &TopologyOptions {
            forget_after: Some(Duration::from_secs(2)),
            stale_flow: StaleFlow::Drop,
            random_loss_percent: None,
            tcp_retries2: 4,
        },
    )?;
    topology.start_redis()?;
    let daemon = Daemon::start(&["--ports", &REDIS_PORT.to_string(), "--idle-threshold", "1s"])?;
    let app = topology.app.name().to_string();
    let netns = topology.app.inode();
    let mut results = Results::default();
    let repetitions = options.repetitions().max(3);
    for round in 0..repetitions {
        interrupt::check()?;
        eprintln!("bench: detection latency {}/{repetitions}", round + 1);
        let seen_before = daemon.findings("storm_started", netns).len();
        let metric_before = storms_started(daemon.listen);
        let mut stream = in_netns(&app, || Ok(TcpStream::connect((CACHE_V4, REDIS_PORT))?))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"PING\r\n")?;
        let mut pong = [0u8; 7];
        stream.read_exact(&mut pong).context("redis answers PING")?;
        topology.wait_until_forgotten(Duration::from_secs(30))?;
        // Past connmon's idle threshold as well (the middlebox takes longer).
        let sent_at = SystemTime::now();
        stream.write_all(b"PING\r\n")?;

        // /metrics on its own thread, so neither poll delays the other.
        let stop = Arc::new(AtomicBool::new(false));
        let listen = daemon.listen;
        let metrics_poll = {
            let stop = stop.clone();
            std::thread::spawn(move || -> Option<SystemTime> {
                while !stop.load(Ordering::Relaxed) {
                    if storms_started(listen) > metric_before {
                        return Some(SystemTime::now());
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                None
            })
        };
        let stdout = poll::until("storm_started", Duration::from_secs(20), || {
            interrupt::check()?;
            let findings = daemon.findings("storm_started", netns);
            Ok((findings.len() > seen_before)
                .then(|| (SystemTime::now(), findings[seen_before].clone())))
        });
        let metrics_seen = poll::until("the storm counter", Duration::from_secs(10), || {
            Ok(metrics_poll.is_finished().then_some(()))
        });
        stop.store(true, Ordering::Relaxed);
        let metrics_at = metrics_poll.join().ok().flatten();
        let (stdout_at, finding) = stdout?;
        // A counter that never moved is reported as missing, not fatal.
        let _ = metrics_seen;
        let confirmed = finding["confirmed_at"]
            .as_str()
            .context("storm_started has confirmed_at")?;
        let confirmed_at = humantime::parse_rfc3339(confirmed)
            .with_context(|| format!("confirmed_at {confirmed:?}"))?;
        results.samples.push(Sample {
            to_stdout_ms: millis_between(stdout_at, confirmed_at),
            to_metrics_ms: metrics_at
                .map(|at| millis_between(at, confirmed_at))
                .unwrap_or(f64::NAN),
            send_to_confirm_ms: millis_between(confirmed_at, sent_at),
        });
        drop(stream);
    }
    drop(daemon);
    drop(topology);
    Ok(results)
}
