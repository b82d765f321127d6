//! Alerts pushed to Alertmanager's v2 API (`POST /api/v2/alerts`) and to
//! generic JSON webhooks, from a task of their own: a slow or absent
//! receiver never stalls detection.
//!
//! Alertmanager resolves an alert it has not heard about by its `endsAt`,
//! so active storms are pushed again every minute with `endsAt` a few
//! minutes ahead, and once more with `endsAt` = the storm's end.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use serde_json::{Value, json};
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::warn;

use crate::output::{hint::human_duration, report::FindingRecord};

/// How often active storms are pushed again.
const REPEAT_INTERVAL: Duration = Duration::from_secs(60);
/// How far ahead `endsAt` is set for an alert still firing.
const FIRING_HORIZON: Duration = Duration::from_secs(300);
/// Attempts per delivery.
const ATTEMPTS: u32 = 3;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlertConfig {
    /// Alertmanager base URLs, e.g. `http://alertmanager:9093`.
    pub alertmanager_urls: Vec<String>,
    /// Generic webhooks: each finding record is POSTed as JSON.
    pub webhook_urls: Vec<String>,
    /// `instance` label: the node's name.
    pub instance: String,
    pub runbook_url: String,
    /// CA certificates (DER) for https URLs; the bundled Mozilla roots
    /// when `None`.
    pub ca_certs: Option<Vec<Vec<u8>>>,
}

impl AlertConfig {
    pub fn is_enabled(&self) -> bool {
        !self.alertmanager_urls.is_empty() || !self.webhook_urls.is_empty()
    }
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// Alertmanager's alert for a finding record. `ends_at`: `None` while
/// firing (set `FIRING_HORIZON` after `now`).
pub fn alertmanager_alert(
    record: &FindingRecord,
    config: &AlertConfig,
    now: SystemTime,
    ends_at: Option<SystemTime>,
) -> Value {
    // Process and pod names are chosen by whoever runs the process: no
    // control characters reach a label, an annotation or a pager.
    let escape = |text: &str| crate::output::escape::control(text).into_owned();
    let process = record
        .comm
        .as_deref()
        .map_or_else(|| "unknown".into(), escape);
    let destination = match record.role {
        crate::event::Role::Server => record.local.clone(),
        _ => record.remote.clone(),
    };
    let alertname = if record.event == "reset_after_idle" {
        "ConnmonResetAfterIdle"
    } else {
        "ConnmonIdleConnectionStorm"
    };
    let pid = record
        .pid
        .map_or_else(|| "unknown".to_string(), |pid| pid.to_string());
    let container = record
        .container_id
        .as_deref()
        .map(|id| escape(&id.chars().take(12).collect::<String>()))
        .unwrap_or_default();
    let mut labels = json!({
        "alertname": alertname,
        "severity": if alertname == "ConnmonResetAfterIdle" { "ticket" } else { "page" },
        "instance": config.instance,
        "process": process,
        "container": container,
        "destination": destination,
        "role": record.role,
        "source": "connmon",
    });
    if let Some(id) = record.storm_id {
        labels["storm_id"] = json!(id.to_string());
    }
    let where_ = match (
        &record.pod_namespace,
        &record.pod_name,
        &record.container_id,
    ) {
        (Some(namespace), Some(pod), _) => {
            format!(" in pod {}/{}", escape(namespace), escape(pod))
        }
        (_, _, Some(_)) => format!(" in container {container}"),
        _ => String::new(),
    };
    let summary = if alertname == "ConnmonResetAfterIdle" {
        format!(
            "{process} (pid {pid}){where_}: connection to {destination} reset after {} idle",
            human_duration(record.idle_seconds)
        )
    } else {
        format!("{process} (pid {pid}){where_} is hanging on an idle connection to {destination}")
    };
    let mut description = format!(
        "{process} pid {pid} tid {} on {}: {} -> {} (netns {}), idle {} before the stuck send at {}, {} retransmits.",
        record.tid.map_or_else(|| "?".into(), |tid| tid.to_string()),
        config.instance,
        record.local,
        record.remote,
        record.netns,
        human_duration(record.idle_seconds),
        record.started_at,
        record.retransmits,
    );
    if let Some(seconds) = record.gives_up_in_seconds {
        description.push_str(&format!(
            " The kernel gives up in about {}.",
            human_duration(seconds)
        ));
    }
    if let (Some(outcome), Some(duration)) = (record.outcome, record.duration_seconds) {
        description.push_str(&format!(
            " Ended: {} after {}.",
            outcome.as_str(),
            human_duration(duration)
        ));
    }
    let ends_at = ends_at.unwrap_or(now + FIRING_HORIZON);
    json!({
        "labels": labels,
        "annotations": {
            "summary": summary,
            "description": description,
            "hint": escape(&record.hint),
            "runbook_url": format!("{}#{}", config.runbook_url, alertname.to_lowercase()),
        },
        "startsAt": record.started_at,
        "endsAt": rfc3339(ends_at),
    })
}

/// Hands findings to the sender task; never blocks the caller.
#[derive(Clone)]
pub struct AlertQueue {
    tx: mpsc::Sender<FindingRecord>,
}

impl AlertQueue {
    pub fn push(&self, record: &FindingRecord) {
        if self.tx.try_send(record.clone()).is_err() {
            warn!(event = record.event, "alert queue full; alert dropped");
        }
    }
}

/// Starts the sender task.
pub fn spawn(config: AlertConfig) -> (AlertQueue, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<FindingRecord>(1024);
    let handle = tokio::spawn(async move {
        let roots = match &config.ca_certs {
            Some(certs) => ureq::tls::RootCerts::new_with_certs(
                &certs
                    .iter()
                    .map(|der| ureq::tls::Certificate::from_der(der).to_owned())
                    .collect::<Vec<_>>(),
            ),
            None => ureq::tls::RootCerts::WebPki,
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
            .build()
            .into();
        let mut active: BTreeMap<u64, FindingRecord> = BTreeMap::new();
        let mut repeat = tokio::time::interval(REPEAT_INTERVAL);
        repeat.tick().await;
        loop {
            let batch: Vec<(FindingRecord, Option<SystemTime>)> = tokio::select! {
                record = rx.recv() => {
                    let Some(record) = record else { break };
                    for url in &config.webhook_urls {
                        deliver(&agent, url.clone(), json!(record)).await;
                    }
                    match (record.event, record.storm_id) {
                        ("storm_started", Some(id)) => {
                            active.insert(id, record.clone());
                            vec![(record, None)]
                        }
                        ("storm_ended", id) => {
                            if let Some(id) = id { active.remove(&id); }
                            let ended = humantime::parse_rfc3339(&record.time).unwrap_or_else(|_| SystemTime::now());
                            vec![(record, Some(ended))]
                        }
                        _ => vec![(record, Some(SystemTime::now() + FIRING_HORIZON))],
                    }
                }
                _ = repeat.tick() => active.values().cloned().map(|record| (record, None)).collect(),
            };
            if batch.is_empty() || config.alertmanager_urls.is_empty() {
                continue;
            }
            let now = SystemTime::now();
            let alerts: Vec<Value> = batch
                .iter()
                .map(|(record, ends)| alertmanager_alert(record, &config, now, *ends))
                .collect();
            for url in &config.alertmanager_urls {
                deliver(
                    &agent,
                    format!("{}/api/v2/alerts", url.trim_end_matches('/')),
                    json!(alerts),
                )
                .await;
            }
        }
    });
    (AlertQueue { tx }, handle)
}

/// POSTs `body` with a few retries, off the async threads.
async fn deliver(agent: &ureq::Agent, url: String, body: Value) {
    let agent = agent.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut last_error = String::new();
        for attempt in 0..ATTEMPTS {
            match agent.post(&url).send_json(&body) {
                Ok(_) => return Ok(()),
                Err(error) => last_error = error.to_string(),
            }
            std::thread::sleep(Duration::from_millis(200 << attempt));
        }
        Err(format!("{url}: {last_error}"))
    })
    .await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(error)) => warn!(%error, "alert delivery failed"),
        Err(error) => warn!(%error, "alert delivery task failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Role;

    fn record() -> FindingRecord {
        FindingRecord {
            event: "storm_started",
            time: "2026-11-25T09:32:44.689Z".into(),
            storm_id: Some(7),
            pid: Some(4242),
            tid: Some(4250),
            comm: Some("invite-svc".into()),
            exe: None,
            cgroup: None,
            cgroup_id: None,
            container_id: Some(
                "3f2c1b0e9d8c7b6a5f4e3d2c1b0a99887766554433221100ffeeddccbbaa0099".into(),
            ),
            pod_uid: None,
            pod_namespace: Some("payments".into()),
            pod_name: Some("invite-svc-7d9f8b".into()),
            systemd_unit: None,
            owner_source: None,
            shared: None,
            local: "10.0.0.2:41000".into(),
            remote: "10.0.1.5:6379".into(),
            netns: 4026531840,
            role: Role::Client,
            service: Some("redis".into()),
            idle_seconds: 361.0,
            retransmits: 4,
            started_at: "2026-11-25T09:32:43.004Z".into(),
            confirmed_at: Some("2026-11-25T09:32:44.689Z".into()),
            gives_up_in_seconds: Some(922.0),
            outcome: None,
            duration_seconds: None,
            error: None,
            tcp_retries2: Some(15),
            cookie: 1,
            hint: "Likely cause: a middlebox ... Fix: Redis `tcp-keepalive 60`".into(),
        }
    }

    fn config() -> AlertConfig {
        AlertConfig {
            alertmanager_urls: vec!["http://127.0.0.1:9093".into()],
            webhook_urls: vec![],
            ca_certs: None,
            instance: "node-1".into(),
            runbook_url: "https://example.invalid/runbook.md".into(),
        }
    }

    #[test]
    fn a_firing_storm_says_what_who_where_since_when_and_the_fix() {
        let now = humantime::parse_rfc3339("2026-11-25T09:32:45Z").expect("time");
        let alert = alertmanager_alert(&record(), &config(), now, None);
        assert_eq!(alert["labels"]["alertname"], "ConnmonIdleConnectionStorm");
        assert_eq!(alert["labels"]["process"], "invite-svc");
        assert_eq!(alert["labels"]["destination"], "10.0.1.5:6379");
        assert_eq!(alert["labels"]["container"], "3f2c1b0e9d8c");
        assert_eq!(alert["labels"]["storm_id"], "7");
        assert_eq!(alert["labels"]["instance"], "node-1");
        let summary = alert["annotations"]["summary"].as_str().expect("summary");
        assert!(
            summary.contains("pid 4242") && summary.contains("payments/invite-svc-7d9f8b"),
            "{summary}"
        );
        let description = alert["annotations"]["description"]
            .as_str()
            .expect("description");
        assert!(
            description.contains("idle 6m 1s") && description.contains("gives up in about 15m 22s"),
            "{description}"
        );
        assert!(
            alert["annotations"]["hint"]
                .as_str()
                .expect("hint")
                .contains("tcp-keepalive")
        );
        assert_eq!(
            alert["annotations"]["runbook_url"],
            "https://example.invalid/runbook.md#connmonidleconnectionstorm"
        );
        assert_eq!(alert["startsAt"], "2026-11-25T09:32:43.004Z");
        assert_eq!(alert["endsAt"], "2026-11-25T09:37:45.000Z");
    }

    /// Names chosen by whoever runs the process reach the pager with their
    /// control characters escaped, in labels and annotations alike.
    #[test]
    fn hostile_names_are_escaped_in_labels_and_annotations() {
        let mut hostile = record();
        hostile.comm = Some("x\"}\n{\"ev\":1\x1b[31".into());
        hostile.pod_name = Some("pod\u{202e}gpj.exe".into());
        hostile.hint = format!("Likely cause ... {}", hostile.comm.clone().expect("comm"));
        let now = humantime::parse_rfc3339("2026-11-25T09:32:45Z").expect("time");
        let alert = alertmanager_alert(&hostile, &config(), now, None);
        assert_eq!(alert["labels"]["process"], "x\"}\\x0a{\"ev\":1\\x1b[31");
        for text in [
            &alert["labels"]["process"],
            &alert["annotations"]["summary"],
            &alert["annotations"]["description"],
            &alert["annotations"]["hint"],
        ] {
            let text = text.as_str().expect("a string");
            assert!(
                !text.chars().any(|c| c.is_control() || c == '\u{202e}'),
                "{text:?}"
            );
        }
        assert!(
            alert["annotations"]["summary"]
                .as_str()
                .expect("summary")
                .contains("pod\\u{202e}gpj.exe")
        );
    }

    #[test]
    fn an_ended_storm_resolves_at_its_end() {
        let mut ended = record();
        ended.event = "storm_ended";
        ended.outcome = Some(crate::detect::Outcome::TimedOut);
        ended.duration_seconds = Some(925.0);
        let end = humantime::parse_rfc3339("2026-11-25T09:48:08Z").expect("time");
        let alert = alertmanager_alert(&ended, &config(), end, Some(end));
        assert_eq!(alert["endsAt"], "2026-11-25T09:48:08.000Z");
        assert!(
            alert["annotations"]["description"]
                .as_str()
                .expect("description")
                .contains("timed_out after 15m 25s")
        );
    }
}
