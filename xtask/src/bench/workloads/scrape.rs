//! `/metrics` latency while the kernel floods connmon with records:
//! connections refused on a watched port (each written as a reset, a socket
//! error and the socket's end, with a wakeup), at the churn's pace, while
//! the bench scrapes one request after another; the same scrapes with no
//! flood first, in the same run, as the baseline.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use connmon_tests::{
    connmon::{Daemon, built_binary},
    netns::NetNs,
    process::Process,
};

use crate::bench::{env::interrupt, probe, report::median};

/// Nothing listens on it: every connect is refused.
const PORT: u16 = 7420;
/// Refused connects per second (four threads of `tcp-peer churn`).
const FLOOD_PER_SECOND: u64 = 5_000;
const FLOOD_SECONDS: u64 = 20;
/// Scrapes per phase, one every `SCRAPE_GAP`.
const SCRAPES: usize = 300;
const SCRAPE_GAP: Duration = Duration::from_millis(20);
/// The target: p99 of `/metrics` under the flood.
pub const P99_MS_TARGET: f64 = 100.0;

#[derive(Clone, Debug, Default)]
pub struct Results {
    /// Milliseconds per scrape, without and with the flood.
    pub quiet_ms: Vec<f64>,
    pub flooded_ms: Vec<f64>,
    /// Kernel records written per second during the flooded scrapes.
    pub records_per_second: f64,
    /// Records lost (ring buffer full) during the flood.
    pub lost: f64,
}

impl Results {
    pub fn flooded_p99(&self) -> Option<f64> {
        percentile(&self.flooded_ms, 0.99)
    }
}

fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[index])
}

fn scrapes(daemon: &Daemon, until: Option<Instant>) -> Result<Vec<f64>> {
    let mut times = Vec::with_capacity(SCRAPES);
    while times.len() < SCRAPES && until.is_none_or(|end| Instant::now() < end) {
        interrupt::check()?;
        let started = Instant::now();
        daemon.http_get("/metrics")?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(SCRAPE_GAP);
    }
    Ok(times)
}

fn emitted(daemon: &Daemon) -> Result<f64> {
    Ok(probe::metric_sum(
        &daemon.http_get("/metrics")?,
        "connmon_kernel_events_emitted_total",
        "",
    ))
}

pub fn run() -> Result<Results> {
    let ns = NetNs::create("bench-scrape")?;
    ns.sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
    let daemon = Daemon::start(&["--ports", &PORT.to_string()])?;
    let quiet_ms = scrapes(&daemon, None)?;

    let (emitted_before, lost_before) = (emitted(&daemon)?, lost(&daemon)?);
    let mut churn = ns.command(&built_binary("tcp-peer").to_string_lossy());
    churn.args([
        "churn",
        &format!("127.0.0.1:{PORT}"),
        &FLOOD_PER_SECOND.to_string(),
        &FLOOD_SECONDS.to_string(),
    ]);
    let churn = Process::spawn("tcp-peer churn", churn)?;
    let started = Instant::now();
    // Scrapes from a second in (the flood running) until a second before
    // its end.
    std::thread::sleep(Duration::from_secs(1));
    let flooded_ms = scrapes(
        &daemon,
        Some(started + Duration::from_secs(FLOOD_SECONDS - 1)),
    )?;
    let window = started.elapsed().as_secs_f64();
    let records_per_second = (emitted(&daemon)? - emitted_before) / window;
    churn
        .stdout
        .wait_for("churned", Duration::from_secs(FLOOD_SECONDS + 30))
        .context("the flood did not finish")?;
    Ok(Results {
        quiet_ms,
        flooded_ms,
        records_per_second,
        lost: lost(&daemon)? - lost_before,
    })
}

fn lost(daemon: &Daemon) -> Result<f64> {
    Ok(probe::metric_sum(
        &daemon.http_get("/metrics")?,
        "connmon_lost_records_total",
        "",
    ))
}

/// The report's section.
pub fn markdown(r: &Results) -> String {
    let mut md = String::new();
    let row = |name: &str, values: &[f64]| {
        format!(
            "| {name} | {} | {} | {} | {} | {} |\n",
            values.len(),
            show(median(values.to_vec())),
            show(percentile(values, 0.9)),
            show(percentile(values, 0.99)),
            show(values.iter().copied().reduce(f64::max)),
        )
    };
    let _ = writeln!(
        md,
        "**Scrape latency under a record flood**: `GET /metrics` from the bench, one every {} ms, {SCRAPES} at most per phase, against `connmon run --ports {PORT}` with default settings; first with nothing happening, then while a namespace makes {FLOOD_PER_SECOND} connections a second to the watched port where nothing listens (each refused: a reset, a socket error and the socket's end written with a wakeup). Kernel records during the flooded scrapes: {:.0} a second, {:.0} lost.\n",
        SCRAPE_GAP.as_millis(),
        r.records_per_second,
        r.lost,
    );
    md.push_str(
        "| phase | scrapes | median ms | p90 ms | p99 ms | max ms |\n|---|---|---|---|---|---|\n",
    );
    md.push_str(&row("quiet", &r.quiet_ms));
    md.push_str(&row("flooded", &r.flooded_ms));
    md.push('\n');
    md
}

fn show(value: Option<f64>) -> String {
    value.map_or("–".into(), |v| format!("{v:.1}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_value_at_or_above_the_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.99), Some(99.0));
        assert_eq!(percentile(&values, 0.9), Some(90.0));
        assert_eq!(percentile(&[5.0], 0.99), Some(5.0));
        assert_eq!(percentile(&[], 0.99), None);
    }
}
