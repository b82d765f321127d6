//! 2,000 pooled connections in four processes, one writer thread each,
//! blackholed at once after an idle gap: every storm is found, names the
//! writing process and thread, is reported within 1 s of its confirming
//! retransmit, and ends with the client's own outcome (ETIMEDOUT:
//! `timed_out`); no kernel record is lost.

use anyhow::Result;
use connmon_tests::blackout::{self, Options};

const PORT: u16 = 7421;

#[test]
fn a_whole_pool_blackholed_at_once_is_reported_storm_by_storm() -> Result<()> {
    let connmon = blackout::daemon(PORT)?;
    let options = Options {
        processes: 4,
        connections_per_process: 500,
        port: PORT,
        peer: env!("CARGO_BIN_EXE_tcp-peer").into(),
    };
    let report = blackout::run(&connmon, &options)?;
    eprintln!("blackout: {}", report.summary());
    let first = |list: &[String]| list.iter().take(5).cloned().collect::<Vec<_>>();
    assert_eq!(
        report.found,
        report.connections,
        "missed: {:?}",
        first(&report.missed)
    );
    assert!(
        report.misattributed.is_empty(),
        "{} misattributed: {:?}",
        report.misattributed.len(),
        first(&report.misattributed)
    );
    assert!(
        report.wrong_outcome.is_empty(),
        "{} wrong outcomes: {:?}",
        report.wrong_outcome.len(),
        first(&report.wrong_outcome)
    );
    assert_eq!(
        report.latency_ms.len(),
        report.found,
        "every storm_started carries confirmed_at"
    );
    let late: Vec<f64> = report
        .latency_ms
        .iter()
        .copied()
        .filter(|ms| *ms > 1_000.0)
        .collect();
    assert!(
        late.is_empty(),
        "{} storms reported more than 1 s after their confirming retransmit (worst {:?} ms)",
        late.len(),
        late.iter().copied().reduce(f64::max)
    );
    assert_eq!(report.records_lost, 0.0, "kernel records lost");
    Ok(())
}
