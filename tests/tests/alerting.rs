//! On-call alerting end to end, with Debian's Prometheus and Alertmanager on
//! loopback: Prometheus scrapes connmon during the seed scenario, the
//! shipped storm rule fires, Alertmanager delivers it to a webhook run by
//! the test, and so do connmon's own pushed alert and its JSON webhook. Each
//! says which process, which destination, and what to change.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use connmon_tests::{
    alerting::{
        Alertmanager, HungReceiver, PodMeta, Prometheus, TempDir, WebhookReceiver,
        operator_scrape_job, refusing_url, series,
    },
    cgroup::Cgroup,
    connmon::Daemon,
    poll,
    scenario::SeedScenario,
    topology::{CACHE_V4, Options, REDIS_PORT, StaleFlow, Topology},
};
use serde_json::Value;

/// The first alert named `alertname` in Alertmanager notifications that
/// satisfies `filter`.
fn notified_alert(
    webhook: &WebhookReceiver,
    alertname: &str,
    filter: impl Fn(&Value) -> bool,
) -> Option<Value> {
    notified_alert_after(webhook, 0, alertname, filter)
}

/// As `notified_alert`, among the notifications after the first `skip`.
fn notified_alert_after(
    webhook: &WebhookReceiver,
    skip: usize,
    alertname: &str,
    filter: impl Fn(&Value) -> bool,
) -> Option<Value> {
    webhook
        .bodies("/alertmanager")
        .iter()
        .skip(skip)
        .flat_map(|notification| {
            notification["alerts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .find(|alert| alert["labels"]["alertname"] == alertname && filter(alert))
}

/// The alert's runbook link points at `anchor` in docs/runbook.md (every
/// anchor has a section there: `rules.rs` checks that).
fn assert_runbook(alert: &Value, anchor: &str) {
    assert!(
        alert["annotations"]["runbook_url"]
            .as_str()
            .is_some_and(|url| url.ends_with(&format!("runbook.md#{anchor}"))),
        "no runbook link to #{anchor}: {alert}"
    );
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
    // connmon watches the whole host: other storms (another test's socket
    // still retransmitting, anything else on the machine) reach the same
    // receivers. This test's own is the one in its network namespace.
    let storm = connmon_tests::connmon::first_finding(
        &connmon,
        "storm_started",
        topology.app.inode(),
        Duration::from_secs(30),
    )?;
    let storm_id = storm["storm_id"].clone();
    let storm_label = storm_id.to_string();

    // The shipped Prometheus rule, through Alertmanager: its labels are
    // the ones the rule keeps, this client's process and destination.
    let from_rule = poll::until(
        "the storm rule's notification",
        Duration::from_secs(60),
        || {
            Ok(notified_alert(
                &webhook,
                "ConnmonIdleConnectionStorm",
                |a| {
                    a["labels"]["source"].is_null()
                        && a["labels"]["process"] == "cmt-redis-clien"
                        && a["labels"]["destination"] == destination.as_str()
                },
            ))
        },
    )
    .with_context(|| format!("webhook got: {:?}", webhook.bodies("/alertmanager")))?;
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
            |a| {
                a["labels"]["source"] == "connmon"
                    && a["labels"]["storm_id"] == storm_label.as_str()
            },
        ))
    })?;
    assert_eq!(pushed["labels"]["destination"], destination, "{pushed}");
    assert_eq!(pushed["labels"]["instance"], "test-node", "{pushed}");
    assert!(
        pushed["annotations"]["summary"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("pid {pid}")),
        "{pushed}\nthe storm: {storm}"
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
                |a| {
                    a["labels"]["source"] == "connmon"
                        && a["labels"]["storm_id"] == storm_label.as_str()
                        && a["status"] == "resolved"
                },
            ))
        },
    )?;

    // The generic webhook gets the findings themselves.
    let records = webhook.bodies("/connmon");
    let started = records
        .iter()
        .find(|r| r["event"] == "storm_started" && r["storm_id"] == storm_id)
        .with_context(|| format!("no storm_started {storm_id} on the webhook: {records:?}"))?;
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

/// A receiver that accepts and never answers, and one that refuses
/// connections, hold up nothing: findings reach stdout, /metrics and the
/// healthy receivers on time, every delivery is counted per receiver, and
/// SIGTERM during a storm still exits 0 within 2 s with the storm ended as
/// `monitor_stopped` (on stdout and at the healthy receivers).
#[test]
fn hung_and_refusing_receivers_hold_up_nothing() -> Result<()> {
    let hung = HungReceiver::start()?;
    let good = WebhookReceiver::start()?;
    let refusing = refusing_url("/hook")?;
    // A storm that lasts (the kernel would give up after 15 minutes).
    let options = Options {
        tcp_retries2: 15,
        ..Options::default()
    };
    // The bad receivers come first: served one after another, they would
    // hold the healthy ones up by their timeouts and retries.
    let (hung_am, good_am) = (hung.url(""), good.url("/am"));
    let (hung_hook, good_hook) = (hung.url("/hook"), good.url("/hook"));
    let mut scenario = SeedScenario::start(
        "hungrecv",
        &options,
        &[
            "--alertmanager-url",
            &hung_am,
            "--alertmanager-url",
            &good_am,
            "--webhook-url",
            &hung_hook,
            "--webhook-url",
            &refusing,
            "--webhook-url",
            &good_hook,
        ],
    )?;
    scenario.resume_after_forgotten("set")?;
    let started = scenario.finding("storm_started", Duration::from_secs(30))?;
    let storm_id = started["storm_id"].clone();
    let storm_label = storm_id.to_string();
    // Within 3 s of being printed (as seen here, which is later).
    let deadline = Instant::now() + Duration::from_secs(3);
    let left = || deadline.saturating_duration_since(Instant::now());

    // The healthy receivers get the storm within a few seconds of stdout.
    poll::until("the healthy webhook's storm_started", left(), || {
        Ok(good
            .bodies("/hook")
            .iter()
            .any(|r| r["event"] == "storm_started" && r["storm_id"] == storm_id)
            .then_some(()))
    })?;
    poll::until("the healthy Alertmanager's firing alert", left(), || {
        Ok(good
            .bodies("/am/api/v2/alerts")
            .iter()
            .flat_map(|b| b.as_array().cloned().unwrap_or_default())
            .any(|a| a["labels"]["storm_id"] == storm_label.as_str())
            .then_some(()))
    })?;
    // Both bad receivers were really tried.
    poll::until(
        "the hung receiver to be connected to twice",
        Duration::from_secs(5),
        || Ok((hung.accepted() >= 2).then_some(())),
    )?;

    // /metrics answers at once, and counts each receiver's deliveries; the
    // refusing one fails after its retries.
    let metrics = poll::until(
        "the refusing webhook's failure to be counted",
        Duration::from_secs(10),
        || {
            let asked = Instant::now();
            let body = scenario.connmon.http_get("/metrics")?;
            anyhow::ensure!(
                asked.elapsed() < Duration::from_secs(1),
                "/metrics took {:?}",
                asked.elapsed()
            );
            Ok((series(
                &body,
                r#"connmon_alert_deliveries_total{receiver="webhook-1",result="failed"}"#,
            )
            .unwrap_or(0.0)
                >= 1.0)
                .then_some(body))
        },
    )?;
    let count = |receiver: &str, result: &str| {
        let name =
            format!(r#"connmon_alert_deliveries_total{{receiver="{receiver}",result="{result}"}}"#);
        series(&metrics, &name).with_context(|| format!("{name} missing:\n{metrics}"))
    };
    assert!(count("alertmanager-1", "sent")? >= 1.0, "{metrics}");
    assert!(count("webhook-2", "sent")? >= 1.0, "{metrics}");
    assert_eq!(count("alertmanager-0", "sent")?, 0.0, "{metrics}");
    assert_eq!(count("webhook-0", "sent")?, 0.0, "{metrics}");
    assert_eq!(count("webhook-1", "sent")?, 0.0, "{metrics}");
    assert_eq!(count("webhook-2", "failed")?, 0.0, "{metrics}");
    // No URL (which can carry a token) is a label value.
    assert!(!metrics.contains(&hung.addr.to_string()), "{metrics}");

    // SIGTERM while the hung receivers still hold their requests.
    let exit = scenario
        .connmon
        .signal(libc::SIGTERM, Duration::from_secs(2))?;
    assert_eq!(exit, Some(0), "connmon exits 0 within 2 s of SIGTERM");
    let netns = scenario.topology.app.inode();
    assert!(
        scenario
            .connmon
            .findings("storm_ended", netns)
            .iter()
            .any(|r| r["outcome"] == "monitor_stopped" && r["storm_id"] == storm_id),
        "no monitor_stopped on stdout: {:?}",
        scenario.connmon.records()
    );
    // The healthy receivers got the end before connmon exited (the receiver
    // records a body before it answers).
    assert!(
        good.bodies("/hook")
            .iter()
            .any(|r| r["event"] == "storm_ended"
                && r["outcome"] == "monitor_stopped"
                && r["storm_id"] == storm_id),
        "{:?}",
        good.bodies("/hook")
    );
    assert!(
        good.bodies("/am/api/v2/alerts")
            .iter()
            .flat_map(|b| b.as_array().cloned().unwrap_or_default())
            .any(|a| a["annotations"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("monitor_stopped"))),
        "{:?}",
        good.bodies("/am/api/v2/alerts")
    );
    Ok(())
}

/// The shipped PodMonitor, scraped the way prometheus-operator's generated
/// configuration scrapes it (`operator_scrape_job`), gives the labels the
/// shipped rules select and group by: `up{job="connmon"}` (ConnmonDown's
/// selector) exists, `instance` is the node as in connmon's pushed alerts,
/// and the storm rule's `container` is the watched process's container, not
/// connmon's own (no `exported_container`). Every rule on the scrape's own
/// labels fires from real connmon metrics and reaches a webhook through
/// Alertmanager: the at-risk and storm rules, ConnmonLosingRecords (records
/// the kernel really lost: connmon held still while refused connections
/// fill its small ring buffer) and ConnmonDown (connmon stopped).
#[test]
fn the_shipped_podmonitor_gives_the_labels_the_rules_use() -> Result<()> {
    const CONTAINER_ID: &str = "6a1f0c2e4b8d9a7c5e3f1b0d2c4a6e8f0b1d3c5a7e9f1b3d5c7a9e0f2b4d6c8a";
    let mut topology = Topology::build("opmon", &Options::default())?;
    topology.start_redis()?;
    let cgroup = Cgroup::create(&format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod4b7e2a10_9c3d_4e5f_8a6b_1c2d3e4f5a6b.slice/cri-containerd-{CONTAINER_ID}.scope"
    ))?;
    let connmon = Daemon::start(&[
        "--idle-threshold",
        "2s",
        "--ports",
        &REDIS_PORT.to_string(),
        "--node-name",
        "node-7",
        // Idle connections are at risk after 2 s (the middlebox forgets
        // after 3 s), looked for every second.
        "--default-path-timeout",
        "2s",
        "--at-risk-interval",
        "1s",
        // The smallest ring buffer: about 370 records.
        "--ring-buffer-kib",
        "64",
    ])?;
    let kubernetes = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let podmonitor: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(
        kubernetes.join("podmonitor.yaml"),
    )?)?;
    let daemonset: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(kubernetes.join("daemonset.yaml"))?)?;
    let pod_labels: Vec<(String, String)> = daemonset["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .context("the DaemonSet's pod labels")?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    let pod_labels: Vec<(&str, &str)> = pod_labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let container_name = daemonset["spec"]["template"]["spec"]["containers"][0]["name"]
        .as_str()
        .context("the DaemonSet's container name")?;
    let job = operator_scrape_job(
        &podmonitor,
        connmon.listen,
        &PodMeta {
            namespace: "connmon",
            pod: "connmon-x7k2q",
            container: container_name,
            node: "node-7",
            pod_labels: &pod_labels,
        },
        "1s",
    )?;
    let rules_file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/prometheus/connmon-rules.yml")
        .canonicalize()?;
    // The shipped rules with their `for:` shortened to 1 s (ConnmonDown
    // waits 5 minutes otherwise); expressions, labels and annotations as
    // shipped.
    let shipped_rules = std::fs::read_to_string(&rules_file)?;
    let mut shortened = 0;
    let quick_rules: String = shipped_rules
        .lines()
        .map(|line| match line.trim().strip_prefix("for: ") {
            Some(_) => {
                shortened += 1;
                format!("{}for: 1s\n", &line[..line.len() - line.trim_start().len()])
            }
            None => format!("{line}\n"),
        })
        .collect();
    anyhow::ensure!(shortened >= 3, "only {shortened} `for:` found");
    let rules_dir = TempDir::new("opmon-rules")?;
    let quick_rules_file = rules_dir.0.join("connmon-rules.yml");
    std::fs::write(&quick_rules_file, quick_rules)?;
    let webhook = WebhookReceiver::start()?;
    let alertmanager = Alertmanager::start(&webhook.url("/alertmanager"))?;
    let prometheus = Prometheus::start_with_job(&job, &quick_rules_file, alertmanager.addr)?;

    // ConnmonDown's selector matches the scraped target.
    let rules = std::fs::read_to_string(&rules_file)?;
    let down_selector = rules
        .lines()
        .find_map(|line| line.trim().strip_prefix("expr: up{"))
        .and_then(|rest| rest.split_once(" =="))
        .map(|(selector, _)| format!("up{{{selector}"))
        .context("ConnmonDown's expression")?;
    let up = poll::until(
        &format!("{down_selector} to select the scraped connmon"),
        Duration::from_secs(30),
        || {
            let result = prometheus.query(&down_selector)?;
            Ok((!result.is_empty()).then_some(result))
        },
    )
    .with_context(|| format!("{:?}", prometheus.query("up")))?;
    let target = &up[0]["metric"];
    assert_eq!(target["instance"], "node-7", "{target}");
    assert_eq!(target["namespace"], "connmon", "{target}");
    assert_eq!(target["pod"], "connmon-x7k2q", "{target}");
    assert_eq!(target["endpoint"], "metrics", "{target}");
    assert_eq!(up[0]["value"][1], "1", "{up:?}");

    // A storm in a container: the rule's alert carries the workload's
    // container and the node as instance, as the pushed alert does.
    // In the cgroup from the start: the kernel records a socket's cgroup,
    // which names the metrics' container, when the socket is created.
    let mut command = topology
        .app_command(&connmon_tests::connmon::built_binary("cmt-redis-client").to_string_lossy());
    command.arg(format!("redis://{CACHE_V4}:{REDIS_PORT}"));
    cgroup.spawn_inside(&mut command)?;
    let mut client = connmon_tests::process::Process::spawn("cmt-redis-client", command)?;
    client
        .stdout
        .wait_for("connected", Duration::from_secs(20))?;
    topology.wait_until_forgotten(Duration::from_secs(30))?;
    // Before it is used again, the idle connection is at risk: the rule
    // fires with the workload's container and the node.
    let at_risk = poll::until(
        "ConnmonIdleConnectionsAtRisk's notification",
        Duration::from_secs(30),
        || {
            Ok(notified_alert(
                &webhook,
                "ConnmonIdleConnectionsAtRisk",
                |a| a["status"] == "firing" && a["labels"]["process"] == "cmt-redis-clien",
            ))
        },
    )
    .with_context(|| format!("{:?}", prometheus.alerts()))?;
    assert_eq!(
        at_risk["labels"]["container"],
        &CONTAINER_ID[..12],
        "{at_risk}"
    );
    assert_eq!(at_risk["labels"]["instance"], "node-7", "{at_risk}");
    assert_eq!(
        at_risk["labels"]["destination"],
        format!("{CACHE_V4}:{REDIS_PORT}"),
        "{at_risk}"
    );
    // redis-server's end is at risk too, under its own watched endpoint,
    // not the client's ephemeral port.
    let server_side = poll::until(
        "the server side's at-risk notification",
        Duration::from_secs(10),
        || {
            Ok(notified_alert(
                &webhook,
                "ConnmonIdleConnectionsAtRisk",
                |a| a["labels"]["process"] == "redis-server",
            ))
        },
    )?;
    assert_eq!(
        server_side["labels"]["destination"],
        format!("{CACHE_V4}:{REDIS_PORT}"),
        "{server_side}"
    );
    assert_runbook(&at_risk, "connmonidleconnectionsatrisk");
    client.send_line("set")?;
    let storm = connmon_tests::connmon::first_finding(
        &connmon,
        "storm_started",
        topology.app.inode(),
        Duration::from_secs(30),
    )?;
    assert_eq!(storm["container_id"], CONTAINER_ID, "{storm}");
    let alert = poll::until(
        "ConnmonIdleConnectionStorm to fire in Prometheus",
        Duration::from_secs(30),
        || {
            // Of this test's container (connmon watches the whole host).
            Ok(prometheus.alerts()?.into_iter().find(|a| {
                a["labels"]["alertname"] == "ConnmonIdleConnectionStorm"
                    && a["state"] == "firing"
                    && a["labels"]["container"] == CONTAINER_ID[..12]
            }))
        },
    )
    .with_context(|| format!("{:?}", prometheus.alerts()))?;
    let labels = &alert["labels"];
    assert_eq!(labels["instance"], "node-7", "{alert}");
    assert_eq!(
        labels["destination"],
        format!("{CACHE_V4}:{REDIS_PORT}"),
        "{alert}"
    );
    let renamed = prometheus.query(r#"{exported_container!=""}"#)?;
    assert!(
        renamed.is_empty(),
        "connmon's label was renamed: {renamed:?}"
    );

    // Through Alertmanager to a receiver, with the labels and the runbook
    // section the runbook documents.
    let paged = poll::until(
        "the storm rule's notification",
        Duration::from_secs(30),
        || {
            Ok(notified_alert(
                &webhook,
                "ConnmonIdleConnectionStorm",
                |a| a["labels"]["container"] == CONTAINER_ID[..12],
            ))
        },
    )?;
    assert_eq!(paged["labels"]["instance"], "node-7", "{paged}");
    assert_eq!(paged["labels"]["severity"], "page", "{paged}");
    assert_runbook(&paged, "connmonidleconnectionstorm");

    // ConnmonLosingRecords from records the kernel really lost: connmon is
    // held still (as a CPU-starved connmon falls behind) while a thousand
    // connections to the watched port are refused, each writing a reset
    // and an error record, several times what the ring buffer holds.
    {
        let _paused = connmon.pause()?;
        let mut refused = topology.app_command(env!("CARGO_BIN_EXE_tcp-peer"));
        refused.args(["churn", &format!("127.0.0.1:{REDIS_PORT}"), "1000", "1"]);
        let refused = connmon_tests::process::Process::spawn("tcp-peer churn", refused)?;
        let churned = refused
            .stdout
            .wait_for("churned", Duration::from_secs(20))?;
        let failed: u32 = churned
            .split_whitespace()
            .nth(2)
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("tcp-peer said {churned:?}"))?;
        anyhow::ensure!(failed >= 500, "only {failed} connections refused");
    }
    let lost_to_full_ring = r#"connmon_lost_records_total{reason="ring_buffer_full"}"#;
    let lost = poll::until(
        "connmon to count the records lost to a full ring buffer",
        Duration::from_secs(20),
        || {
            let lost = connmon.metric(lost_to_full_ring)?;
            Ok((lost > 0.0).then_some(lost))
        },
    )?;
    eprintln!("records lost to the full ring buffer: {lost}");
    let losing = poll::until(
        "ConnmonLosingRecords' notification",
        Duration::from_secs(30),
        || {
            Ok(notified_alert(&webhook, "ConnmonLosingRecords", |a| {
                a["status"] == "firing"
            }))
        },
    )
    .with_context(|| format!("{lost} lost; {:?}", prometheus.alerts()))?;
    let labels = &losing["labels"];
    assert_eq!(labels["reason"], "ring_buffer_full", "{losing}");
    assert_eq!(labels["instance"], "node-7", "{losing}");
    assert_eq!(labels["severity"], "ticket", "{losing}");
    assert_eq!(
        losing["annotations"]["summary"],
        "connmon on node-7 is losing kernel records (ring_buffer_full)",
        "{losing}"
    );
    assert_runbook(&losing, "connmonlosingrecords");

    // ConnmonDown fires when connmon stops, named by its node. Held still,
    // connmon missed scrapes: that episode must be over, and only a
    // notification after the stop counts.
    poll::until(
        "ConnmonDown of the pause to be over",
        Duration::from_secs(30),
        || {
            Ok((!prometheus
                .alerts()?
                .iter()
                .any(|a| a["labels"]["alertname"] == "ConnmonDown"))
            .then_some(()))
        },
    )?;
    let before_stop = webhook.bodies("/alertmanager").len();
    assert_eq!(connmon.stop()?, Some(0));
    let down = poll::until(
        "ConnmonDown's notification",
        Duration::from_secs(30),
        || {
            Ok(notified_alert_after(
                &webhook,
                before_stop,
                "ConnmonDown",
                |a| a["status"] == "firing",
            ))
        },
    )
    .with_context(|| format!("{:?}", prometheus.alerts()))?;
    assert_eq!(down["labels"]["instance"], "node-7", "{down}");
    assert_eq!(down["labels"]["job"], "connmon", "{down}");
    assert_eq!(down["labels"]["pod"], "connmon-x7k2q", "{down}");
    assert_eq!(
        down["annotations"]["summary"], "connmon on node-7 is not being scraped",
        "{down}"
    );
    assert_runbook(&down, "connmondown");
    Ok(())
}

/// The page, end to end through a real Alertmanager configured with the
/// shipped example routes (deploy/alertmanager/connmon-routes.yml): from the
/// stuck send to the on-call receiver in at most 3 s with the seed
/// scenario's timings (RTO retransmits at about 0.4, 0.8 and 1.7 s confirm
/// the storm; connmon pushes at once; the route has no group wait).
#[test]
fn a_storm_pages_through_the_example_route_within_3_s() -> Result<()> {
    const PAGE_BUDGET: Duration = Duration::from_secs(3);
    let webhook = WebhookReceiver::start()?;
    let routes_file =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/alertmanager/connmon-routes.yml");
    let shipped = std::fs::read_to_string(&routes_file)?;
    let mut routes = shipped.clone();
    for (placeholder, path) in [
        ("https://on-call.example.invalid/connmon", "/on-call"),
        ("https://tickets.example.invalid/connmon", "/tickets"),
    ] {
        anyhow::ensure!(
            routes.contains(placeholder),
            "{} lost {placeholder}",
            routes_file.display()
        );
        routes = routes.replace(placeholder, &webhook.url(path));
    }
    let alertmanager = Alertmanager::start_with_config(&routes)?;
    let mut scenario = SeedScenario::start(
        "page",
        &Options::default(),
        &["--alertmanager-url", &alertmanager.url()],
    )?;
    scenario
        .topology
        .wait_until_forgotten(Duration::from_secs(30))?;
    // Taken just before the request is written: the latency measured is
    // if anything longer than the real one.
    let sent = Instant::now();
    scenario.client.send_line("set")?;
    // The page of this test's storm (connmon watches the whole host: a
    // storm of another run on the machine pages too). Its id is on stdout
    // by the time the page is out; the receipt time is the webhook's own.
    let is_page = |notification: &Value, storm_id: &str| {
        notification["alerts"].as_array().is_some_and(|alerts| {
            alerts.iter().any(|a| {
                a["labels"]["alertname"] == "ConnmonIdleConnectionStorm"
                    && a["labels"]["source"] == "connmon"
                    && a["labels"]["storm_id"] == storm_id
                    && a["status"] == "firing"
            })
        })
    };
    let (page, received) = poll::until("the page", Duration::from_secs(15), || {
        let Some(storm) = scenario
            .connmon
            .findings("storm_started", scenario.topology.app.inode())
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let storm_id = storm["storm_id"].to_string();
        Ok(webhook.first("/on-call", |n| is_page(n, &storm_id)))
    })
    .with_context(|| {
        format!(
            "on-call got {:?}; connmon said {:?}",
            webhook.bodies("/on-call"),
            scenario.connmon.records()
        )
    })?;
    let latency = received.duration_since(sent);
    eprintln!("stuck send to page: {latency:?}");
    assert!(
        latency <= PAGE_BUDGET,
        "the page took {latency:?} from the stuck send: {page}"
    );
    // The page names the process and the connection.
    let storm = scenario.finding("storm_started", Duration::from_secs(1))?;
    let alert = page["alerts"]
        .as_array()
        .and_then(|alerts| {
            alerts
                .iter()
                .find(|a| a["labels"]["storm_id"] == storm["storm_id"].to_string().as_str())
        })
        .context("the pushed alert")?;
    assert_eq!(alert["labels"]["destination"], storm["remote"], "{alert}");
    Ok(())
}

/// Prometheus with the shipped rules scraping a connmon started with
/// `connmon_args`, Alertmanager, and a webhook behind it; the topology with
/// redis-server and `clients` connected clients.
struct RuleRig {
    webhook: WebhookReceiver,
    prometheus: Prometheus,
    _alertmanager: Alertmanager,
    clients: Vec<connmon_tests::process::Process>,
    connmon: Daemon,
    topology: Topology,
}

impl RuleRig {
    fn start(tag: &str, options: &Options, clients: usize) -> Result<Self> {
        let mut topology = Topology::build(tag, options)?;
        topology.start_redis()?;
        let connmon =
            Daemon::start(&["--idle-threshold", "2s", "--ports", &REDIS_PORT.to_string()])?;
        let webhook = WebhookReceiver::start()?;
        let alertmanager = Alertmanager::start(&webhook.url("/alertmanager"))?;
        let rules = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/prometheus/connmon-rules.yml")
            .canonicalize()?;
        let prometheus = Prometheus::start(connmon.listen, alertmanager.addr, &rules)?;
        let clients = (0..clients)
            .map(|_| topology.redis_client(&format!("redis://{CACHE_V4}:{REDIS_PORT}")))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            webhook,
            prometheus,
            _alertmanager: alertmanager,
            clients,
            connmon,
            topology,
        })
    }

    /// After the path forgot every idle connection, resumes them all at
    /// once: their storms or resets fall between two scrapes, so the
    /// process and destination's series appears already at their count, a
    /// first count that `increase()` alone cannot see (the rules count it).
    fn resume_all(&mut self) -> Result<()> {
        self.topology
            .wait_until_forgotten(Duration::from_secs(30))?;
        for client in &mut self.clients {
            client.send_line("set")?;
        }
        Ok(())
    }

    /// The first firing notification of `alertname`.
    fn fired(&self, alertname: &str, timeout: Duration) -> Result<Value> {
        poll::until(&format!("{alertname}'s notification"), timeout, || {
            Ok(notified_alert(&self.webhook, alertname, |a| {
                a["status"] == "firing"
            }))
        })
        .with_context(|| {
            format!(
                "Prometheus holds {:?}; connmon said {:?}",
                self.prometheus.alerts(),
                self.connmon.records()
            )
        })
    }
}

/// ConnmonIdleConnectionStormsRecurring and ConnmonTimeLostToStorms from
/// real storms, through Alertmanager: the same process and destination
/// stuck fourteen times at once, each hanging until the kernel gives up
/// (tcp_retries2=6: about 26 s), over 300 s lost in all.
#[test]
fn recurring_storms_and_time_lost_fire_their_rules_from_real_metrics() -> Result<()> {
    const CLIENTS: usize = 14;
    let options = Options {
        tcp_retries2: 6,
        ..Options::default()
    };
    let mut rig = RuleRig::start("recur", &options, CLIENTS)?;
    rig.resume_all()?;
    let resumed = Instant::now();
    let alert = rig.fired(
        "ConnmonIdleConnectionStormsRecurring",
        Duration::from_secs(30),
    )?;
    let elapsed = resumed.elapsed();
    assert_eq!(alert["labels"]["process"], "cmt-redis-clien", "{alert}");
    assert_eq!(
        alert["labels"]["destination"],
        format!("{CACHE_V4}:{REDIS_PORT}"),
        "{alert}"
    );
    assert_eq!(alert["labels"]["role"], "client", "{alert}");
    assert_eq!(alert["labels"]["severity"], "ticket", "{alert}");
    assert_runbook(&alert, "connmonidleconnectionstormsrecurring");

    let started = rig
        .connmon
        .findings("storm_started", rig.topology.app.inode())
        .len();
    eprintln!("{started} storms started at once; recurring after {elapsed:?}");
    // Once the kernel gave up on them, their time is summed.
    let lost = rig.fired("ConnmonTimeLostToStorms", Duration::from_secs(60))?;
    eprintln!(
        "time lost fired {:?} after the stuck sends",
        resumed.elapsed()
    );
    let ended = poll::until("every storm's end", Duration::from_secs(10), || {
        let ended = rig
            .connmon
            .findings("storm_ended", rig.topology.app.inode());
        Ok((ended.len() >= CLIENTS).then_some(ended))
    })?;
    assert!(
        ended.iter().all(|e| e["outcome"] == "timed_out"),
        "{ended:?}"
    );
    let instance = rig.connmon.listen.to_string();
    assert_eq!(lost["labels"]["instance"], instance.as_str(), "{lost}");
    assert_eq!(lost["labels"]["severity"], "ticket", "{lost}");
    let summary = lost["annotations"]["summary"].as_str().unwrap_or_default();
    assert!(
        summary.ends_with(&format!(
            "lost to idle-connection storms on {instance} in the last hour"
        )),
        "{lost}"
    );
    assert_runbook(&lost, "connmontimelosttostorms");
    Ok(())
}

/// ConnmonResetsAfterIdle from real resets: a middlebox that answers
/// forgotten flows with a reset, more than five times in an hour.
#[test]
fn resets_after_idle_fire_their_rule_from_real_metrics() -> Result<()> {
    let options = Options {
        stale_flow: StaleFlow::Reset,
        ..Options::default()
    };
    let mut rig = RuleRig::start("resets", &options, 7)?;
    rig.resume_all()?;
    let alert = rig.fired("ConnmonResetsAfterIdle", Duration::from_secs(30))?;
    assert_eq!(alert["labels"]["process"], "cmt-redis-clien", "{alert}");
    assert_eq!(
        alert["labels"]["destination"],
        format!("{CACHE_V4}:{REDIS_PORT}"),
        "{alert}"
    );
    assert_eq!(alert["labels"]["role"], "client", "{alert}");
    assert_eq!(alert["labels"]["severity"], "ticket", "{alert}");
    assert_runbook(&alert, "connmonresetsafteridle");
    Ok(())
}

/// ConnmonEgressBlocked, ConnmonConnectStalled and ConnmonKeepaliveTimeouts
/// from real failures of the app's connections to Redis, one after another:
/// an OUTPUT drop in the app's namespace keeps an idle client's SET in the
/// host until the kernel gives up, then holds a new connect's SYNs; with
/// the drop gone, a keepalive client's probes find the path dead.
#[test]
fn connection_failures_fire_their_rules_from_real_metrics() -> Result<()> {
    let mut rig = RuleRig::start("failed", &Options::intact_path(), 1)?;
    let redis = format!("{CACHE_V4}:{REDIS_PORT}");
    rig.topology.wait_until_idle_past_threshold()?;
    rig.topology.app.nft(&format!(
        "table inet cmt_egress {{\n  chain output {{\n    type filter hook output priority 0; policy accept;\n    tcp dport {REDIS_PORT} drop\n  }}\n}}\n"
    ))?;
    rig.clients[0].send_line("set")?;
    let blocked = rig.fired("ConnmonEgressBlocked", Duration::from_secs(60))?;
    assert_eq!(blocked["labels"]["process"], "cmt-redis-clien", "{blocked}");
    assert_eq!(
        blocked["labels"]["destination"],
        redis.as_str(),
        "{blocked}"
    );
    assert_eq!(blocked["labels"]["severity"], "ticket", "{blocked}");
    assert_runbook(&blocked, "connmonegressblocked");

    let peer = env!("CARGO_BIN_EXE_tcp-peer");
    let mut connect = rig.topology.app.command(peer);
    connect.args(["client", &redis]);
    let _connecting = connmon_tests::process::Process::spawn("tcp-peer client", connect)?;
    let stalled = rig.fired("ConnmonConnectStalled", Duration::from_secs(60))?;
    assert_eq!(stalled["labels"]["process"], "tcp-peer", "{stalled}");
    assert_eq!(
        stalled["labels"]["destination"],
        redis.as_str(),
        "{stalled}"
    );
    assert_runbook(&stalled, "connmonconnectstalled");
    // The SYNs met the same OUTPUT drop: the finding says they never left.
    let finding = rig
        .connmon
        .findings("connect_stalled", rig.topology.app.inode())
        .into_iter()
        .next()
        .context("connect_stalled on stdout")?;
    assert!(
        finding["hint"]
            .as_str()
            .is_some_and(|hint| hint.contains("never leave the host")),
        "{finding}"
    );

    rig.topology
        .app
        .exec("nft", &["delete", "table", "inet", "cmt_egress"])?;
    let mut keepalive = rig.topology.app.command(peer);
    keepalive.args(["keepalive", &redis, "1", "1", "3", "30"]);
    let keepalive = connmon_tests::process::Process::spawn("tcp-peer keepalive", keepalive)?;
    keepalive
        .stdout
        .wait_for("connected", Duration::from_secs(10))?;
    rig.topology.app.nft(&format!(
        "table inet cmt_dead_path {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    tcp sport {REDIS_PORT} drop\n  }}\n}}\n"
    ))?;
    let dead = rig.fired("ConnmonKeepaliveTimeouts", Duration::from_secs(60))?;
    assert_eq!(dead["labels"]["process"], "tcp-peer", "{dead}");
    assert_eq!(dead["labels"]["destination"], redis.as_str(), "{dead}");
    assert_runbook(&dead, "connmonkeepalivetimeouts");
    Ok(())
}

/// Sends SIGCONT to a process stopped with SIGSTOP when dropped, so it can
/// be stopped for good (and the test's teardown does not wait on it).
struct Resume(libc::pid_t);

impl Drop for Resume {
    fn drop(&mut self) {
        // SAFETY: kill with a pid this test started and a valid signal.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// ConnmonZeroWindow from a real server that stopped reading: Redis is
/// stopped (SIGSTOP, a stuck server) while a client of the app's writes to
/// it until the window shuts. connmon's scan finds the shut window, the
/// counter moves, the rule fires.
#[test]
fn a_server_that_stopped_reading_fires_connmon_zero_window() -> Result<()> {
    let rig = RuleRig::start("zerowin", &Options::default(), 0)?;
    let redis = format!("{CACHE_V4}:{REDIS_PORT}");
    let pid = rig.topology.redis_pid().context("redis runs")?;
    let pid = libc::pid_t::try_from(pid)?;
    // SAFETY: kill with the pid of the Redis this test started.
    let signalled = unsafe { libc::kill(pid, libc::SIGSTOP) };
    anyhow::ensure!(signalled == 0, "cannot stop Redis");
    let _resume = Resume(pid);
    let mut flood = rig.topology.app.command(env!("CARGO_BIN_EXE_tcp-peer"));
    flood.args(["flood", &redis]);
    let writer = connmon_tests::process::Process::spawn("tcp-peer flood", flood)?;
    writer
        .stdout
        .wait_for("connected", Duration::from_secs(10))?;
    let stopped = rig.fired("ConnmonZeroWindow", Duration::from_secs(90))?;
    assert_eq!(stopped["labels"]["process"], "tcp-peer", "{stopped}");
    assert_eq!(
        stopped["labels"]["destination"],
        redis.as_str(),
        "{stopped}"
    );
    assert_eq!(stopped["labels"]["severity"], "ticket", "{stopped}");
    assert_runbook(&stopped, "connmonzerowindow");
    Ok(())
}
