//! The report: markdown with every figure, what it means and how it was
//! measured, and an SVG chart. `figures` derives the values from the
//! samples, `stats` summarises them, `targets` judges them, `sections` and
//! `chart` render them, `machine` names what they were measured on.

mod chart;
mod figures;
mod machine;
mod sections;
mod stats;
mod targets;
#[cfg(test)]
mod tests;

use std::{fmt::Write as _, time::Duration};

use self::machine::Machine;
pub use self::{
    chart::chart,
    sections::{blackout_markdown, memory_markdown, scan_markdown},
    stats::median,
};
use super::{
    stats_check,
    workloads::{PipelineResult, blackout, latency, memory, redis, retransmit, scan, scrape},
};

#[derive(Debug, Default)]
pub struct Results {
    pub repetitions: u32,
    pub seconds: u32,
    pub load_before: f64,
    pub load_after: f64,
    pub elapsed: Duration,
    pub pipeline: Vec<PipelineResult>,
    pub retransmit: retransmit::Results,
    pub redis: redis::Results,
    pub memory: memory::Results,
    pub latency: latency::Results,
    pub scrape: scrape::Results,
    pub blackout: blackout::Results,
    pub scan: scan::Results,
    /// Whether connmon with its defaults left another program's BPF
    /// statistics alone (checked before the run switches them on).
    pub stats_untouched: Option<stats_check::Verdict>,
    /// Sections that failed, with the error.
    pub failures: Vec<(String, String)>,
}

/// The report of `results`, linking the chart file `chart`.
pub fn markdown(results: &Results, chart: &str) -> String {
    render(results, chart, &Machine::probe())
}

fn render(results: &Results, chart: &str, machine: &Machine) -> String {
    let mut md = String::new();
    let r = results;
    let _ = writeln!(md, "# connmon benchmarks\n");
    let _ = writeln!(
        md,
        "Produced by `cargo xtask bench` (one command: installs the peers, builds connmon in release mode, runs every measurement, writes this file and [{chart}]({chart})). Rerun it to reproduce; `--quick` gives a faster, noisier run, `--repetitions N` more rounds.\n"
    );
    let _ = writeln!(md, "| | |\n|---|---|");
    machine.rows(&mut md, r.elapsed);
    let _ = writeln!(
        md,
        "| repetitions | {} rounds; retransmit windows of {} s; medians reported, (min–max) where there are several |",
        r.repetitions, r.seconds
    );
    let _ = writeln!(
        md,
        "| load average | {:.2} before, {:.2} after: anything above 0 is other work on the machine, i.e. noise |\n",
        r.load_before, r.load_after
    );

    for (section, error) in &r.failures {
        let _ = writeln!(md, "**{section} failed in this run:** `{error}`\n");
    }
    if r.load_before > 0.5 || r.load_after > 0.5 {
        let _ = writeln!(
            md,
            "**Noise:** other work was running on this machine during the run (load average above), e.g. other builds and test suites: kernel ns per run are inflated for every tool alike, and throughput ratios move by several percent between rounds. Compare tools within this run; rerun on an idle machine for absolute figures.\n"
        );
    }
    targets::targets(&mut md, r);
    sections::kernel_cost(&mut md, r);
    sections::hot_path(&mut md, r);
    sections::workload_throughput(&mut md, r);
    sections::userspace(&mut md, r);
    sections::latency_section(&mut md, r);
    md.push_str(&scrape::markdown(&r.scrape));
    md.push_str(&blackout_markdown(r));
    md.push_str(&scan_markdown(r));
    sections::accuracy(&mut md, r);
    let _ = writeln!(md, "![chart]({chart})");
    md
}
