//! The fleet view end to end: three connmon instances, each standing for a
//! node and seeing only its node's sockets (`--netns`), scraped by a real
//! Prometheus with distinct `instance`/`node` labels and evaluating the
//! shipped rules, alerting through a real Alertmanager.
//!
//! Every node's middlebox forgets idle flows to Redis (destination X) after
//! `FORGET_AFTER` and never those to a second Redis (destination Y). Idle
//! connections to X are reused after a short gap on every node (they
//! survive), then after the middlebox forgot them on two nodes (blackholed);
//! connections to Y survive both gaps. The fleet alert must fire once for X,
//! counting two nodes, with an inferred window that contains the true
//! timeout, and never for Y; and `connmon audit --prometheus-url` on the
//! third node takes X's path timeout from the fleet.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use connmon_tests::{
    alerting::{Alertmanager, Prometheus, WebhookReceiver},
    fleet::{KEPT_PORT, Node, lines_starting},
    poll,
    topology::{CACHE_V4, REDIS_PORT},
};
use serde_json::{Value, json};

/// The middleboxes' idle timeout for X: the truth the window must contain.
// Long enough that connecting six clients before the short gap cannot
// reach it on a slow machine.
const FORGET_AFTER: Duration = Duration::from_secs(8);
/// An idle gap every path survives.
const SHORT_GAP: Duration = Duration::from_millis(2500);
const ALERT: &str = "ConnmonFleetPathForgetsIdleConnections";

/// The single value of an instant query, `None` when it has no result.
fn scalar(prometheus: &Prometheus, promql: &str) -> Result<Option<f64>> {
    let result = prometheus.query(promql)?;
    ensure!(
        result.len() <= 1,
        "{promql}: more than one series: {result:?}"
    );
    Ok(result
        .first()
        .and_then(|sample| sample["value"][1].as_str()?.parse().ok()))
}

/// Alerts named `ALERT` in Alertmanager's notifications so far.
fn notified(webhook: &WebhookReceiver) -> Vec<Value> {
    webhook
        .bodies("/alertmanager")
        .iter()
        .flat_map(|body| body["alerts"].as_array().cloned().unwrap_or_default())
        .filter(|alert| alert["labels"]["alertname"] == ALERT)
        .collect()
}

/// Sends `set` on each client and waits for each to answer it (its `ok`
/// count reaches `answers`).
fn set_and_wait(nodes: &mut [Node], client: usize, answers: usize) -> Result<()> {
    for node in nodes.iter_mut() {
        node.clients[client].send_line("set")?;
    }
    for node in nodes.iter() {
        let process = &node.clients[client];
        poll::until(
            &format!("{}'s client {client} to get its reply", node.name),
            Duration::from_secs(20),
            || Ok((lines_starting(process, "ok") >= answers).then_some(())),
        )
        .with_context(|| format!("client output: {:?}", process.stdout.snapshot()))?;
    }
    Ok(())
}

#[test]
fn a_path_that_forgets_idle_connections_on_two_nodes_alerts_once_with_its_window() -> Result<()> {
    let started = Instant::now();
    let webhook = WebhookReceiver::start()?;
    let alertmanager = Alertmanager::start(&webhook.url("/alertmanager"))?;
    let mut nodes = ["fleet-a", "fleet-b", "fleet-c"]
        .into_iter()
        .map(|name| Node::build(name, FORGET_AFTER))
        .collect::<Result<Vec<_>>>()?;
    let ports = format!("{REDIS_PORT},{KEPT_PORT}");
    for node in &mut nodes {
        node.start_connmon(&["--idle-threshold", "1s", "--ports", &ports])?;
    }
    // One target per node, labelled as the shipped PodMonitor labels it:
    // instance and node = the node's name.
    let static_configs: Vec<Value> = nodes
        .iter()
        .map(|node| {
            let listen = node.connmon.as_ref().map(|c| c.listen.to_string());
            json!({"targets": [listen], "labels": {"instance": node.name, "node": node.name}})
        })
        .collect();
    let job =
        json!({"job_name": "connmon", "scrape_interval": "1s", "static_configs": static_configs});
    let rules = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/prometheus/connmon-rules.yml")
        .canonicalize()?;
    let prometheus = Prometheus::start_with_job(&job, &rules, alertmanager.addr)?;
    poll::until(
        "Prometheus to scrape all three connmon instances",
        Duration::from_secs(30),
        || {
            Ok(
                (scalar(&prometheus, r#"count(up{job="connmon"} == 1)"#)? == Some(3.0))
                    .then_some(()),
            )
        },
    )?;

    let x = format!("{CACHE_V4}:{REDIS_PORT}");
    let y = format!("{CACHE_V4}:{KEPT_PORT}");
    let (to_x, to_y) = (0, 1);
    for node in &mut nodes {
        node.connect(&format!("redis://{x}"))?;
        node.connect(&format!("redis://{y}"))?;
    }
    // The idle gap itself: a fixed, known time, not a wait for a condition.
    std::thread::sleep(SHORT_GAP);
    set_and_wait(&mut nodes, to_x, 1)?;
    set_and_wait(&mut nodes, to_y, 1)?;
    // Y's replies came after X's: its gap must outlast X's timeout by its
    // own clock, not end when X's flows are forgotten.
    let y_idle_since = Instant::now();

    // Idle again until the middleboxes forgot X's flows; then X is reused
    // on two nodes (blackholed: the request hangs) and Y on every node.
    for node in &nodes {
        node.topology
            .wait_until_forgotten(FORGET_AFTER + Duration::from_secs(20))?;
    }
    // The rest of Y's gap: a fixed, known time, as above.
    let y_gap_done = y_idle_since + FORGET_AFTER + Duration::from_secs(1);
    std::thread::sleep(y_gap_done.saturating_duration_since(Instant::now()));
    for node in &mut nodes[..2] {
        node.clients[to_x].send_line("set")?;
    }
    set_and_wait(&mut nodes, to_y, 2)?;

    let alert = poll::until(
        "the fleet alert for X in Alertmanager's notifications",
        Duration::from_secs(60),
        || {
            Ok(notified(&webhook)
                .into_iter()
                .find(|alert| alert["labels"]["destination"] == x.as_str()))
        },
    )
    .with_context(|| {
        let diagnostics: Vec<String> = nodes
            .iter()
            .map(|node| {
                let connmon = node.connmon.as_ref();
                format!(
                    "{}: records {:?} stderr {:?}",
                    node.name,
                    connmon.map(|c| c.records()),
                    connmon.map(|c| c.stderr())
                )
            })
            .collect();
        format!(
            "{diagnostics:#?}\nPrometheus alerts: {:?}",
            prometheus.alerts()
        )
    })?;
    let summary = alert["annotations"]["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains(&format!("to {x} die on 2 nodes")),
        "{alert}"
    );
    assert_eq!(
        scalar(
            &prometheus,
            &format!(r#"destination:connmon_idle_reuse_failed_nodes:count1h{{destination="{x}"}}"#)
        )?,
        Some(2.0),
        "fleet-c's connmon saw only fleet-c's sockets"
    );

    // The inferred window contains the true timeout.
    let survived = scalar(
        &prometheus,
        &format!(r#"destination:connmon_idle_reuse_survived_gap_seconds:max{{destination="{x}"}}"#),
    )?
    .context("no survived gap for X")?;
    let failed = scalar(
        &prometheus,
        &format!(r#"destination:connmon_idle_reuse_failed_gap_seconds:min{{destination="{x}"}}"#),
    )?
    .context("no failed gap for X")?;
    let truth = FORGET_AFTER.as_secs_f64();
    assert!(
        survived >= SHORT_GAP.as_secs_f64() - 0.1 && survived < truth && truth <= failed,
        "window ({survived} s, {failed} s] must contain {truth} s"
    );
    let description = alert["annotations"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(
        description.contains("on 2 nodes")
            && description.contains("above ")
            && description.contains("at most ")
            && description.contains("keepalive"),
        "{description}"
    );
    assert!(
        alert["annotations"]["runbook_url"]
            .as_str()
            .is_some_and(|url| url.ends_with("#connmonfleetpathforgetsidleconnections")),
        "{alert}"
    );

    // Y survived a gap longer than X's timeout on every node: evidence,
    // and no alert.
    poll::until(
        "Y's long survived gaps in Prometheus",
        Duration::from_secs(30),
        || {
            let gap = scalar(
                &prometheus,
                &format!(
                    r#"destination:connmon_idle_reuse_survived_gap_seconds:max{{destination="{y}"}}"#
                ),
            )?;
            Ok(gap.filter(|gap| *gap >= truth).map(|_| ()))
        },
    )?;
    let failed_y = prometheus.query(&format!(
        r#"connmon_idle_reuse_gap_seconds_count{{destination="{y}",outcome=~"blackholed|reset"}}"#
    ))?;
    assert!(failed_y.is_empty(), "{failed_y:?}");

    // Once: one alert for X, not one per node; none for Y.
    let firing: Vec<Value> = prometheus
        .alerts()?
        .into_iter()
        .filter(|alert| alert["labels"]["alertname"] == ALERT)
        .collect();
    assert_eq!(firing.len(), 1, "{firing:#?}");
    assert_eq!(
        firing[0]["labels"]["destination"],
        x.as_str(),
        "{firing:#?}"
    );
    let label_sets: BTreeSet<String> = notified(&webhook)
        .iter()
        .map(|alert| alert["labels"].to_string())
        .collect();
    assert_eq!(label_sets.len(), 1, "{label_sets:#?}");
    // The blackholed evidence is per node: fleet-c's instance has none.
    let on_c = prometheus.query(
        r#"connmon_idle_reuse_gap_seconds_count{instance="fleet-c",outcome="blackholed"}"#,
    )?;
    assert!(on_c.is_empty(), "{on_c:?}");

    // `audit --prometheus-url` on fleet-c: its own idle connection to X
    // never failed there, but the fleet knows X's path forgets after at
    // most `failed` seconds: the connection will hang on next use, and the
    // report says the number came from the fleet.
    let prometheus_url = format!("http://{}", prometheus.addr);
    let node_c = &nodes[2];
    let daemon_url = node_c
        .connmon
        .as_ref()
        .map(|connmon| format!("http://{}", connmon.listen))
        .context("fleet-c's connmon")?;
    let mut last_report = Value::Null;
    let connection = poll::until(
        "audit to find fleet-c's idle connection to X at risk",
        Duration::from_secs(30),
        || {
            let output = std::process::Command::new(connmon_tests::connmon::binary())
                .args(["audit", "--json", "--ports", &REDIS_PORT.to_string()])
                .args([
                    "--prometheus-url",
                    &prometheus_url,
                    "--daemon-url",
                    &daemon_url,
                ])
                .output()?;
            ensure!(
                output.status.success(),
                "audit failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            last_report = serde_json::from_slice(&output.stdout)?;
            Ok(last_report["connections"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| {
                    c["netns"] == node_c.topology.app.inode()
                        && c["remote"] == x.as_str()
                        && c["at_risk"] == true
                })
                .cloned())
        },
    )
    .with_context(|| format!("last report: {last_report:#}"))?;
    assert_eq!(connection["path_timeout_source"], "fleet", "{connection}");
    assert_eq!(
        connection["path_timeout_seconds"].as_f64(),
        Some(failed.floor()),
        "{connection}"
    );
    let fleet = &last_report["fleet_path_timeouts"];
    assert_eq!(fleet["source"], prometheus_url.as_str(), "{fleet}");
    assert_eq!(
        fleet["windows"][x.as_str()]["at_most_seconds"].as_f64(),
        Some(failed),
        "{fleet}"
    );
    // A connmon on fleet-c pointed at the fleet (`run --prometheus-url`):
    // its at-risk audits count the idle connection to X with the fleet's
    // timeout, and when fleet-c reuses it at last, the storm's hint says
    // what the fleet knows and where it came from.
    let netns_c = format!("/run/netns/{}", node_c.topology.app.name());
    let fleet_aware = connmon_tests::connmon::Daemon::start(&[
        "--netns",
        &netns_c,
        "--idle-threshold",
        "1s",
        "--ports",
        &ports,
        "--prometheus-url",
        &prometheus_url,
        "--at-risk-interval",
        "1s",
    ])?;
    let at_risk = format!(
        r#"connmon_idle_connections_at_risk{{container="",destination="{x}",process="cmt-redis-clien"}}"#
    );
    poll::until(
        "the fleet-aware connmon to count fleet-c's connection to X at risk",
        Duration::from_secs(30),
        || {
            Ok(fleet_aware
                .metric_if_present(&at_risk)?
                .filter(|n| *n >= 1.0))
        },
    )
    .with_context(|| format!("{:?}", fleet_aware.http_get("/metrics")))?;
    nodes[2].clients[to_x].send_line("set")?;
    let storm = connmon_tests::connmon::first_finding(
        &fleet_aware,
        "storm_started",
        nodes[2].topology.app.inode(),
        Duration::from_secs(30),
    )?;
    let hint = storm["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains(&format!(
            "Across the fleet (Prometheus at {prometheus_url})"
        )) && hint.contains(&format!("at most {failed:.0}s")),
        "{hint}"
    );
    drop(fleet_aware);

    // Records about other namespaces are dropped but still accounted for:
    // every record the kernel wrote is processed or counted lost.
    for node in &nodes {
        if let Some(connmon) = &node.connmon {
            connmon
                .drained(Duration::from_secs(10))
                .with_context(|| format!("{}'s connmon", node.name))?;
        }
    }
    eprintln!(
        "fleet test: window for X ({survived} s, {failed} s] around {truth} s, took {:?}",
        started.elapsed()
    );
    Ok(())
}
