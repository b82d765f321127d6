//! On-call alerting end to end, with Debian's Prometheus and Alertmanager on
//! loopback: Prometheus scrapes connmon during the seed scenario, the
//! shipped storm rule fires, Alertmanager delivers it to a webhook run by
//! the test, and so do connmon's own pushed alert and its JSON webhook. Each
//! says which process, which destination, and what to change.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use connmon_tests::{
    alerting::{Alertmanager, Prometheus, WebhookReceiver},
    connmon::Daemon,
    poll,
    topology::{CACHE_V4, Options, REDIS_PORT, Topology},
};
use serde_json::Value;

/// The first alert named `alertname` in Alertmanager notifications that
/// satisfies `filter`.
fn notified_alert(
    webhook: &WebhookReceiver,
    alertname: &str,
    filter: impl Fn(&Value) -> bool,
) -> Option<Value> {
    webhook
        .bodies("/alertmanager")
        .iter()
        .flat_map(|notification| {
            notification["alerts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .find(|alert| alert["labels"]["alertname"] == alertname && filter(alert))
}

#[test]
fn a_storm_pages_with_process_destination_and_fix() -> Result<()> {
    let mut topology = Topology::build("alerts", &Options::default())?;
    topology.start_redis()?;
    let webhook = WebhookReceiver::start()?;
    let alertmanager = Alertmanager::start(&webhook.url("/alertmanager"))?;
    let connmon = Daemon::start(&[
        "--idle-threshold",
        "2s",
        "--ports",
        &REDIS_PORT.to_string(),
        "--alertmanager-url",
        &alertmanager.url(),
        "--webhook-url",
        &webhook.url("/connmon"),
        "--node-name",
        "test-node",
    ])?;
    let rules = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/prometheus/connmon-rules.yml")
        .canonicalize()?;
    let prometheus = Prometheus::start(connmon.listen, alertmanager.addr, &rules)?;
    poll::until(
        "Prometheus to scrape connmon",
        Duration::from_secs(30),
        || Ok(prometheus.target_up()?.then_some(())),
    )?;

    // Secrets on the client's command line and in its environment must not
    // reach any label, alert or record.
    let mut command = topology
        .app_command(&connmon_tests::connmon::built_binary("cmt-redis-client").to_string_lossy());
    command
        .arg(format!("redis://{CACHE_V4}:{REDIS_PORT}"))
        .arg(format!("--note=--password={SECRET_ARGUMENT}"))
        .env("REDIS_PASSWORD", SECRET_ENVIRONMENT);
    let mut client = connmon_tests::process::Process::spawn("cmt-redis-client", command)?;
    client
        .stdout
        .wait_for("connected", Duration::from_secs(20))?;
    topology.wait_until_forgotten(Duration::from_secs(30))?;
    client.send_line("set")?;
    let destination = format!("{CACHE_V4}:{REDIS_PORT}");
    let pid = client.pid().to_string();

    // The shipped Prometheus rule, through Alertmanager.
    let from_rule = poll::until(
        "the storm rule's notification",
        Duration::from_secs(60),
        || {
            Ok(notified_alert(
                &webhook,
                "ConnmonIdleConnectionStorm",
                |a| a["labels"]["source"].is_null(),
            ))
        },
    )
    .with_context(|| format!("webhook got: {:?}", webhook.bodies("/alertmanager")))?;
    assert_eq!(
        from_rule["labels"]["process"], "cmt-redis-clien",
        "{from_rule}"
    );
    assert_eq!(
        from_rule["labels"]["destination"], destination,
        "{from_rule}"
    );
    assert_eq!(from_rule["labels"]["severity"], "page", "{from_rule}");
    let description = from_rule["annotations"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(
        description.contains("tcp-keepalive") && description.contains("TCP_USER_TIMEOUT"),
        "{description}"
    );
    assert!(
        from_rule["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_default()
            .contains("runbook"),
        "{from_rule}"
    );

    // connmon's own alert, pushed to Alertmanager's v2 API: it names the pid.
    let pushed = poll::until("connmon's pushed alert", Duration::from_secs(30), || {
        Ok(notified_alert(
            &webhook,
            "ConnmonIdleConnectionStorm",
            |a| a["labels"]["source"] == "connmon",
        ))
    })?;
    assert_eq!(pushed["labels"]["destination"], destination, "{pushed}");
    assert_eq!(pushed["labels"]["instance"], "test-node", "{pushed}");
    assert!(
        pushed["annotations"]["summary"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("pid {pid}")),
        "{pushed}"
    );
    assert!(
        pushed["annotations"]["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("tcp-keepalive"),
        "{pushed}"
    );
    // ...and resolved when the storm ends.
    poll::until(
        "the pushed alert to resolve",
        Duration::from_secs(60),
        || {
            Ok(notified_alert(
                &webhook,
                "ConnmonIdleConnectionStorm",
                |a| a["labels"]["source"] == "connmon" && a["status"] == "resolved",
            ))
        },
    )?;

    // The generic webhook gets the findings themselves.
    let records = webhook.bodies("/connmon");
    let started = records
        .iter()
        .find(|r| r["event"] == "storm_started")
        .context("no storm_started on the webhook")?;
    assert_eq!(started["pid"], client.pid(), "{started}");
    assert!(
        started["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("tcp-keepalive"),
        "{started}"
    );

    // Nothing connmon said anywhere carries the client's command line or
    // environment.
    let everything = format!(
        "{:?}\n{:?}\n{:?}\n{}\n{}\n{:?}",
        webhook.bodies("/alertmanager"),
        webhook.bodies("/connmon"),
        connmon.records(),
        connmon.http_get("/metrics")?,
        connmon.http_get("/api/v1/storms")?,
        connmon.stderr(),
    );
    for secret in [SECRET_ARGUMENT, SECRET_ENVIRONMENT] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }
    Ok(())
}

const SECRET_ARGUMENT: &str = "argument-hunter2";
const SECRET_ENVIRONMENT: &str = "environment-hunter2";
