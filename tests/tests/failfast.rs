//! Fail-fast: with `--fail-fast`, the socket of a confirmed storm is aborted
//! and a client library that reconnects completes its SET on a new
//! connection right away, instead of hanging until tcp_retries2 gives up
//! (15 minutes here). In dry-run mode nothing is touched.

use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result};
use connmon_tests::{scenario::SeedScenario, topology::Options};

#[test]
fn fail_fast_turns_the_hang_into_a_quick_reconnect() -> Result<()> {
    let options = Options {
        tcp_retries2: 15,
        ..Options::default()
    };
    let mut scenario = SeedScenario::start("failfast", &options, &["--fail-fast"])?;
    scenario.resume_after_forgotten("set-retry")?;

    let started = scenario.finding("storm_started", Duration::from_secs(30))?;
    let aborted = scenario.finding("fail_fast", Duration::from_secs(10))?;
    assert_eq!(aborted["result"], "aborted", "{aborted}");
    assert_eq!(aborted["storm_id"], started["storm_id"]);
    assert_eq!(aborted["pid"], scenario.client.pid());

    let done = scenario
        .client
        .stdout
        .wait_for("ok-after-reconnect", Duration::from_secs(30))?;
    let done_at_ms: u64 = done
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .context("done time")?;
    let confirmed =
        humantime::parse_rfc3339(started["confirmed_at"].as_str().context("confirmed_at")?)?;
    let confirmed_ms = confirmed.duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let after = done_at_ms.saturating_sub(confirmed_ms);
    assert!(
        after < 2000,
        "SET completed {after} ms after the confirming retransmit"
    );
    assert!(done.contains("abort"), "the client saw the abort: {done}");

    let ended = scenario.finding("storm_ended", Duration::from_secs(10))?;
    assert_eq!(ended["outcome"], "aborted", "{ended}");
    assert!(
        scenario
            .connmon
            .metric("connmon_fail_fast_total{result=\"aborted\"}")?
            >= 1.0
    );
    Ok(())
}

#[test]
fn dry_run_only_says_what_it_would_abort() -> Result<()> {
    let mut scenario =
        SeedScenario::start("dryrun", &Options::default(), &["--fail-fast", "dry-run"])?;
    scenario.resume_after_forgotten("set")?;
    let planned = scenario.finding("fail_fast", Duration::from_secs(30))?;
    assert_eq!(planned["result"], "would_abort", "{planned}");
    assert_eq!(planned["dry_run"], true);
    // Untouched, the connection hangs until the kernel gives up.
    let ended = scenario.finding("storm_ended", Duration::from_secs(60))?;
    assert_eq!(ended["outcome"], "timed_out", "{ended}");
    Ok(())
}
