//! `cargo xtask bench`: connmon's cost and speed on this machine, next to
//! the tools people would otherwise run (bcc's `tcpretrans`, bpftrace), in
//! one run. Writes `bench/report.md` and `bench/report.svg`.
//!
//! All traffic stays inside network namespaces this run creates (or their
//! loopback); every namespace, process and sysctl is restored by a guard,
//! also on failure or Ctrl-C. Benchmarks are not tests: nothing here fails
//! on a number, the report states each target as met or missed.

mod env;
mod floor;
mod peers;
mod probe;
mod report;
mod stats_check;
mod workloads;

use std::{path::PathBuf, time::Instant};

use anyhow::{Context, Result};

use crate::{setup::Project, tasks};

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Repetitions of every measurement (medians are reported).
    #[arg(long, default_value_t = 5)]
    pub repetitions: u32,
    /// A faster, noisier run: one repetition, shorter windows.
    #[arg(long)]
    pub quick: bool,
    /// Seconds of retransmit workload per tool and repetition.
    #[arg(long, default_value_t = 8)]
    pub seconds: u32,
    /// Run only this part and print its section instead of writing the
    /// report (`blackout`: a pool blackholed at once; `scrape`: /metrics
    /// latency under a record flood; `memory`: memory and CPU with many
    /// sockets; `scan`: CPU per stuck-send scan).
    #[arg(long, value_parser = ["blackout", "scrape", "memory", "scan"])]
    pub only: Option<String>,
    /// Idle established loopback sockets the stuck-send scan is measured
    /// with (both ends of half as many connections, held by the bench).
    #[arg(long, default_value_t = 4_000)]
    pub scan_sockets: usize,
    /// Pool sizes of the blackout part (at most as many as the machine can
    /// open; processes of 1,000 connections each).
    #[arg(long, value_delimiter = ',', default_values_t = [1_000usize, 10_000, 30_000])]
    pub blackout_sizes: Vec<usize>,
    /// Where the report goes (markdown; the chart is written next to it).
    #[arg(long, default_value = "bench/report.md")]
    pub output: PathBuf,
}

impl Options {
    fn repetitions(&self) -> u32 {
        if self.quick {
            1
        } else {
            self.repetitions.max(1)
        }
    }

    fn seconds(&self) -> u32 {
        if self.quick {
            4
        } else {
            self.seconds.clamp(2, 120)
        }
    }
}

pub fn run(project: &Project, options: &Options) -> Result<()> {
    anyhow::ensure!(
        crate::setup::is_root(),
        "the benchmark needs root (namespaces, BPF): run `cargo xtask bench` as root"
    );
    let started = Instant::now();
    env::interrupt::install();
    let load_before = env::load_average();
    if options.only.is_none() {
        env::ensure_packages()?;
    }
    let connmon = tasks::build(project, true)?;
    // SAFETY: set before this process starts any thread; the guards in
    // connmon-tests read it to find the binary under test.
    unsafe { std::env::set_var("CONNMON_BIN", &connmon) };
    match options.only.as_deref() {
        Some("blackout") => {
            let results = report::Results {
                blackout: workloads::blackout::run(project, &options.blackout_sizes)?,
                ..report::Results::default()
            };
            print!("{}", report::blackout_markdown(&results));
            return Ok(());
        }
        Some("scrape") => {
            print!(
                "{}",
                workloads::scrape::markdown(&workloads::scrape::run()?)
            );
            return Ok(());
        }
        Some("scan") => {
            let results = report::Results {
                scan: workloads::scan::run(options.scan_sockets, options.repetitions())?,
                ..report::Results::default()
            };
            print!("{}", report::scan_markdown(&results));
            return Ok(());
        }
        Some("memory") => {
            let results = report::Results {
                memory: workloads::memory::run()?,
                ..report::Results::default()
            };
            print!("{}", report::memory_markdown(&results));
            return Ok(());
        }
        _ => {}
    }
    let kernel_source = env::bcc_kernel_source(project)?;
    let scratch = env::Scratch::create()?;
    let _tracefs = env::Tracefs::ensure()?;
    eprintln!("bench: BPF statistics with connmon's defaults");
    let stats_untouched = match stats_check::run() {
        Ok(verdict) => Some(verdict),
        Err(error) => {
            eprintln!("bench: the statistics check failed: {error:#}");
            None
        }
    };
    // The kernel's per-program run-time accounting, on for this run only.
    let _stats = env::Sysctl::set("kernel.bpf_stats_enabled", "1")?;

    let mut results = report::Results {
        repetitions: options.repetitions(),
        seconds: options.seconds(),
        load_before,
        stats_untouched,
        ..report::Results::default()
    };
    // A section that fails is reported as such; the others still run.
    results.pipeline = section(
        &mut results.failures,
        "userspace pipeline (criterion)",
        || workloads::pipeline(project),
    )?;
    results.retransmit = section(&mut results.failures, "retransmit workload", || {
        workloads::retransmit::run(options, &scratch, &kernel_source)
    })?;
    results.redis = section(&mut results.failures, "redis-benchmark hot path", || {
        workloads::redis::run(options)
    })?;
    results.memory = section(&mut results.failures, "memory with many sockets", || {
        workloads::memory::run()
    })?;
    results.latency = section(&mut results.failures, "detection latency", || {
        workloads::latency::run(options)
    })?;
    results.scrape = section(
        &mut results.failures,
        "scrape latency under a flood",
        workloads::scrape::run,
    )?;
    results.scan = section(&mut results.failures, "stuck-send scan cost", || {
        workloads::scan::run(options.scan_sockets, options.repetitions())
    })?;
    results.blackout = section(&mut results.failures, "a pool blackholed at once", || {
        workloads::blackout::run(project, &options.blackout_sizes)
    })?;
    results.load_after = env::load_average();
    results.elapsed = started.elapsed();

    let chart = options.output.with_extension("svg");
    let output = if options.output.is_absolute() {
        options.output.clone()
    } else {
        project.root.join(&options.output)
    };
    let chart_path = output.with_extension("svg");
    if let Some(dir) = output.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let chart_name = chart
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report.svg".into());
    std::fs::write(&chart_path, report::chart(&results))
        .with_context(|| format!("writing {}", chart_path.display()))?;
    std::fs::write(&output, report::markdown(&results, &chart_name))
        .with_context(|| format!("writing {}", output.display()))?;
    eprintln!(
        "bench: wrote {} and {} in {:.0?}",
        output.display(),
        chart_path.display(),
        started.elapsed()
    );
    Ok(())
}

/// Runs one part of the benchmark; a failure is recorded for the report
/// (and printed) instead of ending the run, except Ctrl-C.
fn section<T: Default>(
    failures: &mut Vec<(String, String)>,
    name: &str,
    work: impl FnOnce() -> Result<T>,
) -> Result<T> {
    eprintln!("bench: {name}");
    match work() {
        Ok(value) => Ok(value),
        Err(error) => {
            env::interrupt::check()?;
            eprintln!("bench: {name} failed: {error:#}");
            failures.push((name.to_string(), format!("{error:#}")));
            Ok(T::default())
        }
    }
}
