//! Every JSON record connmon prints or serves carries `schema_version`
//! and matches its JSON Schema in docs/schemas/ (validated by Python's
//! jsonschema from the venv `cargo xtask setup` makes): the seed storm's
//! findings and its fail-fast dry run on stdout, `/api/v1/storms`,
//! `connmon trace --json` during the storm and `connmon audit --json`.
//! The schemas are strict (no unknown field), so a field added to the
//! output without its schema fails here.

use std::{collections::BTreeMap, process::Command, time::Duration};

use anyhow::{Context, Result, ensure};
use connmon_tests::{
    artifacts::validate_schemas,
    connmon::{Trace, binary},
    poll,
    scenario::SeedScenario,
    topology::{Options, REDIS_PORT},
};
use serde_json::Value;

/// The trace stream's gap records, from records the kernel really lost: a
/// trace with the smallest ring is held still while a thousand connections
/// to its watched port, where nothing listens, are refused (each writes a
/// reset, an error and the socket's end).
fn lost_records_of_a_trace() -> Result<Vec<Value>> {
    const PORT: u16 = 7106;
    let ns = connmon_tests::netns::NetNs::create("schema-lost")?;
    let trace = Trace::start(&["--ports", &PORT.to_string(), "--ring-buffer-kib", "64"])?;
    {
        let _paused = trace.pause()?;
        let mut refused = ns.command(env!("CARGO_BIN_EXE_tcp-peer"));
        refused.args(["churn", &format!("127.0.0.1:{PORT}"), "1000", "1"]);
        connmon_tests::process::Process::spawn("tcp-peer churn", refused)?
            .stdout
            .wait_for("churned", Duration::from_secs(20))?;
    }
    // The trace checks for losses every 2 s.
    let lost = poll::until(
        "the trace to report lost records",
        Duration::from_secs(10),
        || {
            let lost: Vec<Value> = trace
                .records()
                .into_iter()
                .filter(|record| record["event"] == "lost")
                .collect();
            Ok((!lost.is_empty()).then_some(lost))
        },
    )?;
    trace.stop()?;
    Ok(lost)
}

#[test]
fn every_json_record_matches_its_schema() -> Result<()> {
    let mut scenario =
        SeedScenario::start("schema", &Options::default(), &["--fail-fast", "dry-run"])?;
    let netns = scenario.topology.app.inode().to_string();
    let trace = Trace::start(&["--ports", &REDIS_PORT.to_string(), "--netns", &netns])?;
    scenario.resume_after_forgotten("set")?;
    scenario.finding("storm_started", Duration::from_secs(30))?;
    // tcp_retries2 is 4 in the scenario: the kernel gives up in seconds.
    scenario.finding("storm_ended", Duration::from_secs(60))?;
    let fail_fast = poll::until("the fail-fast record", Duration::from_secs(10), || {
        Ok(scenario
            .connmon
            .findings("fail_fast", scenario.topology.app.inode())
            .into_iter()
            .next())
    })?;
    let storms: Value = serde_json::from_str(&scenario.connmon.http_get("/api/v1/storms")?)?;
    let audit_output = Command::new(binary())
        .args([
            "audit",
            "--json",
            "--ports",
            &REDIS_PORT.to_string(),
            "--daemon-url",
        ])
        .arg(format!("http://{}", scenario.connmon.listen))
        .output()
        .context("running connmon audit")?;
    ensure!(
        audit_output.status.success(),
        "{}",
        String::from_utf8_lossy(&audit_output.stderr)
    );
    let audit: Value = serde_json::from_slice(&audit_output.stdout)?;
    let traced = trace.records();
    trace.stop()?;

    let stdout = scenario.connmon.records();
    for record in stdout.iter().chain(&traced).chain([&storms, &audit]) {
        assert_eq!(record["schema_version"], 1, "{record}");
    }
    assert!(
        traced.iter().any(|record| record["event"] == "retransmit"),
        "the trace saw the storm's retransmits: {traced:?}"
    );
    assert!(
        !storms["recent"].as_array().is_none_or(Vec::is_empty),
        "{storms}"
    );
    let (findings, actions): (Vec<Value>, Vec<Value>) = stdout
        .into_iter()
        .partition(|record| record["event"] != "fail_fast");
    let app_netns = scenario.topology.app.inode();
    let ours: Vec<&Value> = actions
        .iter()
        .filter(|action| action["netns"] == app_netns)
        .collect();
    assert_eq!(ours, vec![&fail_fast], "one dry run for the one storm");
    assert_eq!(fail_fast["result"], "would_abort", "{fail_fast}");
    // A gap record in the trace stream (e.g. runs the kernel skipped while
    // the same program ran on that CPU) has its own schema.
    let (mut lost, traced): (Vec<Value>, Vec<Value>) = traced
        .into_iter()
        .partition(|record| record["event"] == "lost");
    lost.extend(lost_records_of_a_trace()?);
    let records = BTreeMap::from([
        ("finding.schema.json", findings),
        ("fail-fast.schema.json", actions),
        ("trace-event.schema.json", traced),
        ("trace-lost.schema.json", lost),
        ("storms.schema.json", vec![storms]),
        ("audit-report.schema.json", vec![audit]),
    ]);
    for (schema, items) in &records {
        assert!(!items.is_empty(), "no record for {schema}");
    }
    let (ok, text) = validate_schemas(&records)?;
    assert!(ok && text.starts_with("valid"), "{text}");

    // A record that drifts from its schema is caught: the check is real.
    let mut drifted = records["finding.schema.json"][0].clone();
    drifted["pid"] = Value::String("4242".into());
    drifted["new_field"] = Value::Bool(true);
    let (ok, text) = validate_schemas(&BTreeMap::from([("finding.schema.json", vec![drifted])]))?;
    assert!(
        !ok && text.contains("new_field") && text.contains("pid"),
        "{text}"
    );
    Ok(())
}
