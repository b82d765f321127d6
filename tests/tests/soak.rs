//! A short soak on every CI run (`cargo xtask soak` runs the long one):
//! connmon watching a thousand short connections a second for two minutes,
//! with a storm on an idle connection every 30 s. It fails when connmon
//! dies, its resident memory grows after warm-up, a storm is not reported
//! and ended, or the tracked sockets do not fall back to the baseline once
//! the churn stops (see `connmon_tests::soak`).

use std::time::Duration;

use anyhow::Result;
use connmon_tests::soak::{SoakPlan, run};

#[test]
fn a_short_soak_keeps_memory_flat_and_the_tables_at_baseline() -> Result<()> {
    let report = run(&SoakPlan {
        duration: Duration::from_secs(120),
        churn_per_second: 1000,
        storm_every: Duration::from_secs(30),
    })?;
    for line in &report.lines {
        println!("{line}");
    }
    assert!(
        report.failures.is_empty(),
        "the soak failed: {:?}",
        report.failures
    );
    Ok(())
}
