//! The measured workloads.

pub mod blackout;
pub mod latency;
pub mod memory;
pub mod redis;
pub mod retransmit;
pub mod scan;
pub mod scrape;

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::setup::Project;

/// Criterion's median for one benchmark function.
#[derive(Clone, Debug, Default)]
pub struct PipelineResult {
    pub name: String,
    /// Events per second on one core (criterion's median).
    pub events_per_second: f64,
}

/// Events in the recorded stream of `monitor/benches/pipeline.rs`.
const STREAM_EVENTS: f64 = 100_000.0;

/// The userspace pipeline benchmark (criterion, one core): decode alone,
/// and decode + socket table + storm detection.
pub fn pipeline(project: &Project) -> Result<Vec<PipelineResult>> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&project.root)
        .env("PATH", project.path_env())
        .args(["bench", "--package", "connmon", "--bench", "pipeline", "--"])
        .args(["--warm-up-time", "2", "--measurement-time", "5"])
        .status()
        .context("starting cargo bench")?;
    if !status.success() {
        bail!("cargo bench failed ({status})");
    }
    let group = project.target_dir().join("criterion/userspace");
    let mut results = Vec::new();
    for entry in std::fs::read_dir(&group)
        .with_context(|| format!("reading {}", group.display()))?
        .filter_map(|entry| entry.ok())
    {
        let estimates = entry.path().join("new/estimates.json");
        let Ok(text) = std::fs::read_to_string(&estimates) else {
            continue;
        };
        let value: serde_json::Value = serde_json::from_str(&text)?;
        let ns_per_iteration = value["median"]["point_estimate"]
            .as_f64()
            .context("criterion median")?;
        results.push(PipelineResult {
            name: entry.file_name().to_string_lossy().into_owned(),
            events_per_second: STREAM_EVENTS / (ns_per_iteration * 1e-9),
        });
    }
    if results.is_empty() {
        bail!("no criterion results under {}", group.display());
    }
    results.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(results)
}
