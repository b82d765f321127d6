//! The shipped alert rules are valid and behave as their unit tests say
//! (`promtool`, from Debian's prometheus package), and connmon's own
//! `/metrics` passes `promtool check metrics`.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, ensure};
use connmon_tests::connmon::Daemon;

fn rules_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

fn promtool(args: &[&str]) -> Result<String> {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(rules_dir())
        .output()
        .context("running promtool")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(
        output.status.success(),
        "promtool {} failed:\n{text}",
        args.join(" ")
    );
    Ok(text)
}

#[test]
fn alert_rules_are_valid() -> Result<()> {
    let text = promtool(&["check", "rules", "connmon-rules.yml"])?;
    assert!(text.contains("SUCCESS"), "{text}");
    Ok(())
}

#[test]
fn alert_rules_pass_their_unit_tests() -> Result<()> {
    let text = promtool(&["test", "rules", "connmon-rules.test.yml"])?;
    assert!(text.contains("SUCCESS"), "{text}");
    Ok(())
}

#[test]
fn every_alert_has_a_runbook_section() -> Result<()> {
    let rules = std::fs::read_to_string(rules_dir().join("connmon-rules.yml"))?;
    let runbook = std::fs::read_to_string(rules_dir().join("../../docs/runbook.md"))?;
    for alert in rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
    {
        assert!(
            runbook.contains(&format!("## {alert}\n")),
            "docs/runbook.md has no section for {alert}"
        );
        assert!(
            rules.contains(&format!("runbook.md#{}", alert.to_lowercase())),
            "{alert} has no runbook_url"
        );
    }
    Ok(())
}

#[test]
fn metrics_output_passes_promtool_check_metrics() -> Result<()> {
    let connmon = Daemon::start(&["--ports", "6379"])?;
    let metrics = connmon.http_get("/metrics")?;
    assert!(metrics.contains("connmon_build_info"), "{metrics}");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running promtool")?;
    std::io::Write::write_all(child.stdin.as_mut().context("stdin")?, metrics.as_bytes())?;
    drop(child.stdin.take());
    let output = child.wait_with_output()?;
    let problems = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && problems.trim().is_empty(),
        "promtool check metrics:\n{problems}"
    );
    assert_eq!(connmon.stop()?, Some(0));
    Ok(())
}

/// Every shipped alert is shown firing from real connmon metrics, through
/// Alertmanager, by a test in tests/alerting.rs (or, for the fleet's alert
/// across several nodes, tests/fleet.rs) that waits for its notification by
/// name: a new rule needs one.
#[test]
fn every_shipped_alert_fires_in_an_end_to_end_test() -> Result<()> {
    let rules = std::fs::read_to_string(rules_dir().join("connmon-rules.yml"))?;
    let mut tests = String::new();
    for file in ["tests/alerting.rs", "tests/fleet.rs"] {
        tests += &std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(file))?;
    }
    for alert in rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("\"{alert}\"")),
            "no end-to-end test in tests/tests/alerting.rs or fleet.rs waits for {alert}"
        );
    }
    Ok(())
}
