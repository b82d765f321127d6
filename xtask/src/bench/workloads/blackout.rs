//! A whole pool blackholed at once (`connmon_tests::blackout`): N pooled
//! connections in processes of 1,000 writer threads each, all sending
//! after the same idle gap into a path that forgot every flow. Measures
//! how long after each confirming retransmit `storm_started` appears,
//! records emitted and lost, outcomes, connmon's CPU and memory.

use anyhow::{Context, Result};
use connmon_tests::blackout::{self, Options as BlackoutOptions, Report};

use crate::{bench::env::Sysctl, setup::Project, tasks::run_checked};

const PER_PROCESS: usize = 1_000;
const PORT: u16 = 7431;

#[derive(Clone, Debug, Default)]
pub struct Results {
    pub rows: Vec<Report>,
    /// Sizes that could not be run, with why.
    pub skipped: Vec<(usize, String)>,
}

pub fn run(project: &Project, sizes: &[usize]) -> Result<Results> {
    let mut cargo =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .current_dir(&project.root)
        .env("PATH", project.path_env())
        .args([
            "build",
            "--release",
            "--package",
            "connmon-tests",
            "--bin",
            "tcp-peer",
        ]);
    run_checked(&mut cargo, "building tcp-peer")?;
    let peer = project.target_dir().join("release/tcp-peer");
    // One thread per connection on both sides: the largest pool needs more
    // task ids than a small default `pid_max` gives, and its server more
    // mappings (two per thread stack) than the default `max_map_count`
    // (both restored after).
    let _pid_max = at_least("kernel.pid_max", 131_072)?;
    let _map_count = at_least("vm.max_map_count", 262_144)?;
    let mut results = Results::default();
    for &size in sizes {
        crate::bench::env::interrupt::check()?;
        // A fresh daemon per size, with default settings.
        let connmon = blackout::daemon(PORT)?;
        let options = BlackoutOptions {
            processes: size.div_ceil(PER_PROCESS),
            connections_per_process: size.min(PER_PROCESS),
            port: PORT,
            peer: peer.clone(),
        };
        eprintln!("bench: blackout of {size} pooled connections");
        match blackout::run(&connmon, &options) {
            Ok(report) => {
                eprintln!("bench: {}", report.summary());
                results.rows.push(report);
            }
            Err(error) => {
                eprintln!("bench: blackout of {size} failed: {error:#}");
                results.skipped.push((size, format!("{error:#}")));
            }
        }
        drop(connmon);
    }
    Ok(results)
}

/// Raises sysctl `key` to `value` for this run if it is lower.
fn at_least(key: &str, value: u64) -> Result<Option<Sysctl>> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let now: u64 = std::fs::read_to_string(&path)?
        .trim()
        .parse()
        .with_context(|| key.to_string())?;
    (now < value)
        .then(|| Sysctl::set(key, &value.to_string()))
        .transpose()
}
