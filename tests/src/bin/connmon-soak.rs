//! `connmon-soak [MINUTES] [CHURN_PER_SECOND] [STORM_EVERY_SECONDS]`: the
//! soak run (see `connmon_tests::soak`), started by `cargo xtask soak`.
//! Prints what it measured; exits 1 when a property broke.

use std::time::Duration;

fn main() {
    let number = |index: usize, default: u64| -> u64 {
        std::env::args()
            .nth(index)
            .and_then(|value| value.parse().ok())
            .unwrap_or(default)
    };
    let plan = connmon_tests::soak::SoakPlan {
        duration: Duration::from_secs(number(1, 10) * 60),
        churn_per_second: number(2, 2000),
        storm_every: Duration::from_secs(number(3, 30)),
    };
    match connmon_tests::soak::run(&plan) {
        Ok(report) => {
            for line in &report.lines {
                println!("{line}");
            }
            for failure in &report.failures {
                println!("failed: {failure}");
            }
            if !report.failures.is_empty() {
                std::process::exit(1);
            }
        }
        Err(error) => {
            eprintln!("soak: {error:#}");
            std::process::exit(1);
        }
    }
}
