//! Alerts pushed to Alertmanager's v2 API (`POST /api/v2/alerts`) and to
//! generic JSON webhooks. Each receiver has a task and a bounded queue of
//! its own: a slow, hung or absent receiver never stalls detection, the
//! HTTP server, another receiver or the daemon's exit.
//!
//! Alertmanager resolves an alert it has not heard about by its `endsAt`,
//! so active storms are pushed again every minute with `endsAt` a few
//! minutes ahead, and once more with `endsAt` = the storm's end.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use prometheus::IntCounterVec;
use serde_json::{Value, json};
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{info, warn};

use crate::{
    clock::rfc3339,
    detect::FailureMode,
    output::{
        hint::human_duration,
        report::{FindingEvent, FindingRecord, StormChange},
    },
};

/// How often active storms are pushed again.
const REPEAT_INTERVAL: Duration = Duration::from_secs(60);
/// How far ahead `endsAt` is set for an alert still firing.
const FIRING_HORIZON: Duration = Duration::from_secs(300);
/// Alert names, shared with the rules of deploy/prometheus/connmon-rules.yml.
pub const IDLE_CONNECTION_STORM: &str = "ConnmonIdleConnectionStorm";
pub const RESETS_AFTER_IDLE: &str = "ConnmonResetsAfterIdle";
pub const EGRESS_BLOCKED: &str = "ConnmonEgressBlocked";
pub const CONNECT_STALLED: &str = "ConnmonConnectStalled";
pub const KEEPALIVE_TIMEOUTS: &str = "ConnmonKeepaliveTimeouts";
pub const ZERO_WINDOW: &str = "ConnmonZeroWindow";

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

/// The shipped rule that says the same as a finding (checked against
/// deploy/prometheus/connmon-rules.yml by a test): one runbook section, one
/// route, whichever of the two fired.
fn alertname(event: FindingEvent) -> &'static str {
    match event {
        FindingEvent::StormStarted | FindingEvent::StormEnded => IDLE_CONNECTION_STORM,
        FindingEvent::ResetAfterIdle => RESETS_AFTER_IDLE,
        FindingEvent::ConnectionFailed(FailureMode::EgressBlocked) => EGRESS_BLOCKED,
        FindingEvent::ConnectionFailed(FailureMode::ConnectStalled) => CONNECT_STALLED,
        FindingEvent::ConnectionFailed(FailureMode::KeepaliveTimeout) => KEEPALIVE_TIMEOUTS,
        FindingEvent::ConnectionFailed(FailureMode::ZeroWindow) => ZERO_WINDOW,
    }
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
    let destination = record.role.destination(record.local, record.remote);
    let alertname = alertname(record.event);
    // Only a storm pages: a request is hanging now. The others are
    // reported when the connection has failed already.
    let severity = if alertname == IDLE_CONNECTION_STORM {
        "page"
    } else {
        "ticket"
    };
    let pid = record
        .pid
        .map_or_else(|| "unknown".to_string(), |pid| pid.to_string());
    let container = record
        .container_id
        .as_deref()
        .map(|id| escape(&crate::attribution::container::short_id(id)))
        .unwrap_or_default();
    let mut labels = json!({
        "alertname": alertname,
        "severity": severity,
        "instance": config.instance,
        "process": process,
        "container": container,
        "destination": destination.to_string(),
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
    let summary = match record.event {
        FindingEvent::ResetAfterIdle => format!(
            "{process} (pid {pid}){where_}: connection to {destination} reset after {} idle",
            human_duration(record.idle_seconds)
        ),
        FindingEvent::ConnectionFailed(FailureMode::EgressBlocked) => format!(
            "{process} (pid {pid}){where_}: packets to {destination} dropped inside the host; the connection {}",
            if record.outcome.is_some() {
                "timed out"
            } else {
                "hangs"
            }
        ),
        FindingEvent::ConnectionFailed(FailureMode::ZeroWindow) => format!(
            "{process} (pid {pid}){where_}: {destination} stopped reading; writes to it hang"
        ),
        FindingEvent::ConnectionFailed(FailureMode::ConnectStalled) => {
            format!("{process} (pid {pid}){where_}: connect to {destination} gets no answer")
        }
        FindingEvent::ConnectionFailed(FailureMode::KeepaliveTimeout) => format!(
            "{process} (pid {pid}){where_}: keepalive found the idle connection to {destination} dead after {}",
            human_duration(record.idle_seconds)
        ),
        FindingEvent::StormStarted | FindingEvent::StormEnded => format!(
            "{process} (pid {pid}){where_} is hanging on an idle connection to {destination}"
        ),
    };
    let mut description = format!(
        "{process} pid {pid} tid {} on {}: {} -> {} (netns {}), idle {} before the stuck send at {}, {} retransmits.",
        record.tid.map_or_else(|| "?".into(), |tid| tid.to_string()),
        config.instance,
        record.local,
        record.remote,
        record.netns,
        human_duration(record.idle_seconds),
        rfc3339(record.started_at),
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
        "startsAt": rfc3339(record.started_at),
        "endsAt": rfc3339(ends_at),
    })
}

/// Findings a receiver's queue holds while it is slow; past that, new
/// ones are dropped and counted (`result="dropped"`).
const RECEIVER_QUEUE: usize = 256;
/// Alertmanager: records taken from the queue into one push at most.
const MAX_BATCH: usize = 64;
/// One HTTP attempt, connect to response.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a receiver is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Alertmanager's v2 API: alerts, repeated while active, resolved.
    Alertmanager,
    /// Each finding record as JSON.
    Webhook,
}

/// At most one warning per receiver per interval about findings dropped
/// for it: a hung receiver with a full queue would otherwise log every
/// finding. The drops in between are counted in the next warning.
const DROP_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// One receiver's drops not yet logged, and when it was last warned about.
#[derive(Debug, Default)]
struct DropLog {
    unlogged: u64,
    last_warning: Option<Instant>,
}

impl DropLog {
    /// Notes one drop at `now`; returns the drops to warn about if a
    /// warning is due (this one and those held back since the last).
    fn dropped(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        self.due(now)
    }

    /// The drops held back, if there are any and the interval since the
    /// last warning has passed.
    fn due(&mut self, now: Instant) -> Option<u64> {
        let quiet_long_enough = self
            .last_warning
            .is_none_or(|at| now.duration_since(at) >= DROP_WARNING_INTERVAL);
        if self.unlogged == 0 || !quiet_long_enough {
            return None;
        }
        self.last_warning = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// A receiver's drop log, shared by the queue (which drops) and the
/// receiver's task (which logs what was held back once the receiver
/// delivers again, or at its end).
#[derive(Clone)]
struct Drops {
    /// `alertmanager-N` or `webhook-N`: a bounded label that names no URL
    /// (URLs can carry tokens).
    label: String,
    log: Arc<Mutex<DropLog>>,
    deliveries: IntCounterVec,
}

impl Drops {
    fn new(label: &str, deliveries: &IntCounterVec) -> Self {
        Self {
            label: label.to_string(),
            log: Arc::default(),
            deliveries: deliveries.clone(),
        }
    }

    /// Counts one drop; warns unless a warning went out recently.
    fn dropped(&self, event: &str) {
        self.deliveries
            .with_label_values(&[self.label.as_str(), "dropped"])
            .inc();
        let due = self
            .log
            .lock()
            .ok()
            .and_then(|mut log| log.dropped(Instant::now()));
        if let Some(dropped) = due {
            self.warn(dropped, event);
        }
    }

    /// Logs drops held back, if the interval has passed (`force`: at once).
    fn flush(&self, force: bool) {
        let due = self.log.lock().ok().and_then(|mut log| {
            if force {
                log.last_warning = None;
            }
            log.due(Instant::now())
        });
        if let Some(dropped) = due {
            self.warn(dropped, "");
        }
    }

    fn warn(&self, dropped: u64, last_event: &str) {
        let total = self
            .deliveries
            .with_label_values(&[self.label.as_str(), "dropped"])
            .get();
        warn!(
            receiver = self.label,
            dropped,
            total,
            last_event,
            "alert receiver's queue full (receiver slow or down): findings dropped for it \
             (at most one warning per {}s per receiver; connmon_alert_deliveries_total{{result=\"dropped\"}})",
            DROP_WARNING_INTERVAL.as_secs()
        );
    }
}

/// One receiver's end of the queue.
struct ReceiverQueue {
    tx: mpsc::Sender<FindingRecord>,
    drops: Drops,
}

/// Hands findings to every receiver's own task; never blocks the caller,
/// and a receiver that is slow or down holds up no other.
#[derive(Clone)]
pub struct AlertQueue {
    receivers: Arc<Vec<ReceiverQueue>>,
}

impl AlertQueue {
    pub fn push(&self, record: &FindingRecord) {
        for receiver in self.receivers.iter() {
            if receiver.tx.try_send(record.clone()).is_err() {
                receiver.drops.dropped(record.event.as_str());
            }
        }
    }
}

/// The receivers' tasks; see `shutdown`.
pub struct AlertSenders {
    tasks: Vec<(Drops, JoinHandle<()>)>,
}

impl AlertSenders {
    /// Waits up to `deadline` for the receivers to deliver what is queued
    /// (the final `storm_ended` alerts), then abandons the rest: a hung
    /// receiver must not hold the daemon's exit. Every `AlertQueue` must be
    /// dropped first, or the tasks wait for more.
    pub async fn shutdown(self, deadline: Duration) {
        let until = tokio::time::Instant::now() + deadline;
        for (drops, mut task) in self.tasks {
            if tokio::time::timeout_at(until, &mut task).await.is_err() {
                task.abort();
                // Its task cannot log the drops it held back any more.
                drops.flush(true);
                warn!(
                    receiver = drops.label,
                    "alert receiver still busy at exit; its undelivered alerts are abandoned"
                );
            }
        }
    }
}

/// `scheme://host[:port]` of a URL, for logs: paths, queries and user info
/// can carry secrets.
fn host_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    format!("{scheme}://{host}")
}

/// Starts one task per receiver. `deliveries` counts each delivery by
/// receiver and result.
pub fn spawn(config: AlertConfig, deliveries: IntCounterVec) -> (AlertQueue, AlertSenders) {
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
        .timeout_global(Some(ATTEMPT_TIMEOUT))
        .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
        .build()
        .into();
    let config = Arc::new(config);
    let targets = config
        .alertmanager_urls
        .iter()
        .enumerate()
        .map(|(i, url)| (Kind::Alertmanager, format!("alertmanager-{i}"), url.clone()))
        .chain(
            config
                .webhook_urls
                .iter()
                .enumerate()
                .map(|(i, url)| (Kind::Webhook, format!("webhook-{i}"), url.clone())),
        );
    let mut queues = Vec::new();
    let mut tasks = Vec::new();
    for (kind, label, url) in targets {
        // Present from the start: a rule or a test sees 0, not nothing.
        for result in ["sent", "failed", "dropped"] {
            deliveries.with_label_values(&[label.as_str(), result]);
        }
        info!(receiver = label, url = host_of(&url), "alert receiver");
        let (tx, rx) = mpsc::channel(RECEIVER_QUEUE);
        let drops = Drops::new(&label, &deliveries);
        let sender = Sender {
            label: label.clone(),
            url,
            agent: agent.clone(),
            deliveries: deliveries.clone(),
            drops: drops.clone(),
        };
        let task = match kind {
            Kind::Alertmanager => tokio::spawn(sender.alertmanager(rx, config.clone())),
            Kind::Webhook => tokio::spawn(sender.webhook(rx)),
        };
        tasks.push((drops.clone(), task));
        queues.push(ReceiverQueue { tx, drops });
    }
    (
        AlertQueue {
            receivers: Arc::new(queues),
        },
        AlertSenders { tasks },
    )
}

/// One receiver: delivers one request at a time, so a slow receiver only
/// fills its own queue.
struct Sender {
    label: String,
    url: String,
    agent: ureq::Agent,
    deliveries: IntCounterVec,
    drops: Drops,
}

impl Sender {
    async fn webhook(self, mut rx: mpsc::Receiver<FindingRecord>) {
        while let Some(record) = rx.recv().await {
            self.deliver(self.url.clone(), json!(record)).await;
            // Drops held back while the receiver was stuck.
            self.drops.flush(false);
        }
        self.drops.flush(true);
    }

    /// Alertmanager forgets an alert at its `endsAt`: active storms are
    /// pushed again every `REPEAT_INTERVAL`, ended ones with their end.
    async fn alertmanager(self, mut rx: mpsc::Receiver<FindingRecord>, config: Arc<AlertConfig>) {
        let url = format!("{}/api/v2/alerts", self.url.trim_end_matches('/'));
        let mut active: BTreeMap<u64, FindingRecord> = BTreeMap::new();
        let mut repeat = tokio::time::interval(REPEAT_INTERVAL);
        repeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        repeat.tick().await;
        loop {
            let batch: Vec<(FindingRecord, Option<SystemTime>)> = tokio::select! {
                record = rx.recv() => {
                    let Some(record) = record else { break };
                    // What queued up while the last push was under way goes
                    // in one request.
                    let mut records = vec![record];
                    while records.len() < MAX_BATCH
                        && let Ok(record) = rx.try_recv()
                    {
                        records.push(record);
                    }
                    records
                        .into_iter()
                        .map(|record| match record.storm_change() {
                            Some(StormChange::Started(id)) => {
                                active.insert(id, record.clone());
                                (record, None)
                            }
                            Some(StormChange::Ended(id)) => {
                                active.remove(&id);
                                let ended = record.time;
                                (record, Some(ended))
                            }
                            None => (record, Some(SystemTime::now() + FIRING_HORIZON)),
                        })
                        .collect()
                }
                _ = repeat.tick() => active.values().cloned().map(|record| (record, None)).collect(),
            };
            // Drops held back while the receiver was stuck.
            self.drops.flush(false);
            if batch.is_empty() {
                continue;
            }
            let now = SystemTime::now();
            let alerts: Vec<Value> = batch
                .iter()
                .map(|(record, ends)| alertmanager_alert(record, &config, now, *ends))
                .collect();
            self.deliver(url.clone(), json!(alerts)).await;
        }
        self.drops.flush(true);
    }

    /// POSTs `body` with a few retries and counts the result. Each attempt
    /// runs off the async threads; the waits between them are async, so
    /// the task can be abandoned at any point.
    async fn deliver(&self, url: String, body: Value) {
        let mut last_error = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            let (agent, url, body) = (self.agent.clone(), url.clone(), body.clone());
            let result =
                tokio::task::spawn_blocking(move || agent.post(&url).send_json(&body).map(drop))
                    .await;
            match result {
                Ok(Ok(())) => {
                    self.deliveries
                        .with_label_values(&[self.label.as_str(), "sent"])
                        .inc();
                    return;
                }
                Ok(Err(error)) => last_error = error.to_string(),
                Err(error) => last_error = error.to_string(),
            }
        }
        self.deliveries
            .with_label_values(&[self.label.as_str(), "failed"])
            .inc();
        warn!(
            receiver = self.label,
            url = host_of(&url),
            error = last_error,
            attempts = ATTEMPTS,
            "alert delivery failed (connmon_alert_deliveries_total)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> FindingRecord {
        let mut record = crate::output::report::tests::storm_started();
        record.container_id =
            Some("3f2c1b0e9d8c7b6a5f4e3d2c1b0a99887766554433221100ffeeddccbbaa0099".into());
        record.pod_namespace = Some("payments".into());
        record.pod_name = Some("invite-svc-7d9f8b".into());
        record.hint = "Likely cause: a middlebox ... Fix: Redis `tcp-keepalive 60`".into();
        record
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
        ended.event = FindingEvent::StormEnded;
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

    #[test]
    fn logged_urls_keep_only_scheme_and_host() {
        assert_eq!(
            host_of("https://user:token@hooks.example.com:8443/services/T0/B1?key=s3cret"),
            "https://hooks.example.com:8443"
        );
        assert_eq!(host_of("http://am:9093"), "http://am:9093");
    }

    /// A receiver whose queue is full loses the finding, counted under its
    /// own label; the others still get it.
    #[test]
    fn a_full_queue_drops_for_that_receiver_only() {
        let deliveries = deliveries();
        let (slow_tx, _slow_rx) = mpsc::channel(1);
        let (fast_tx, mut fast_rx) = mpsc::channel(8);
        let queue = AlertQueue {
            receivers: Arc::new(vec![
                receiver_queue("webhook-0", slow_tx, &deliveries),
                receiver_queue("webhook-1", fast_tx, &deliveries),
            ]),
        };
        for _ in 0..3 {
            queue.push(&record());
        }
        let count = |receiver: &str| deliveries.with_label_values(&[receiver, "dropped"]).get();
        assert_eq!(count("webhook-0"), 2);
        assert_eq!(count("webhook-1"), 0);
        let mut received = 0;
        while fast_rx.try_recv().is_ok() {
            received += 1;
        }
        assert_eq!(received, 3);
    }

    /// `connmon_alert_deliveries_total`'s shape, unregistered.
    fn deliveries() -> IntCounterVec {
        IntCounterVec::new(prometheus::Opts::new("d", "d"), &["receiver", "result"])
            .expect("counter")
    }

    fn receiver_queue(
        label: &str,
        tx: mpsc::Sender<FindingRecord>,
        deliveries: &IntCounterVec,
    ) -> ReceiverQueue {
        ReceiverQueue {
            tx,
            drops: Drops::new(label, deliveries),
        }
    }

    /// Log lines written while `f` runs, as the daemon formats them.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                if let Ok(mut buffer) = self.0.lock() {
                    buffer.extend_from_slice(bytes);
                }
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buffer.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// A hung receiver whose queue is full does not flood the log: a
    /// thousand findings dropped for it make one warning, and those held
    /// back are logged with their count once it is due (here: when the
    /// receiver's task ends). Every drop is counted.
    #[test]
    fn drops_for_a_hung_receiver_are_logged_once_per_interval_with_counts() {
        let deliveries = deliveries();
        let (hung_tx, _hung_rx) = mpsc::channel(1);
        let queue = AlertQueue {
            receivers: Arc::new(vec![receiver_queue("webhook-0", hung_tx, &deliveries)]),
        };
        let log = logged(|| {
            for _ in 0..1001 {
                queue.push(&record());
            }
        });
        let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
        assert_eq!(warnings.len(), 1, "{log}");
        assert!(
            warnings[0].contains("receiver=\"webhook-0\"")
                && warnings[0].contains("dropped=1 ")
                && warnings[0].contains("total=1 "),
            "{log}"
        );
        assert_eq!(
            deliveries
                .with_label_values(&["webhook-0", "dropped"])
                .get(),
            1000
        );
        // Not due yet: nothing logged.
        let log = logged(|| queue.receivers[0].drops.flush(false));
        assert!(log.is_empty(), "{log}");
        let log = logged(|| queue.receivers[0].drops.flush(true));
        assert!(
            log.contains("dropped=999 ") && log.contains("total=1000 "),
            "{log}"
        );
    }

    /// One warning per interval, carrying the drops held back since the
    /// last one.
    #[test]
    fn the_drop_log_warns_at_most_once_per_interval() {
        let start = Instant::now();
        let mut log = DropLog::default();
        assert_eq!(log.dropped(start), Some(1));
        for i in 1..500 {
            assert_eq!(log.dropped(start + Duration::from_millis(i)), None);
        }
        assert_eq!(log.due(start + DROP_WARNING_INTERVAL / 2), None);
        assert_eq!(log.due(start + DROP_WARNING_INTERVAL), Some(499));
        // Nothing held back: nothing to say, however long it was quiet.
        assert_eq!(log.due(start + DROP_WARNING_INTERVAL * 3), None);
        assert_eq!(log.dropped(start + DROP_WARNING_INTERVAL * 3), Some(1));
    }

    /// A shipped rule: its name, the labels its expression keeps, its own
    /// labels and its runbook link.
    struct Rule {
        alert: String,
        by: Vec<String>,
        labels: serde_yaml_ng::Mapping,
        runbook_url: String,
    }

    fn repository_file(path: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(path);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn shipped_rules() -> Vec<Rule> {
        let file: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&repository_file("deploy/prometheus/connmon-rules.yml"))
                .expect("the rules file is YAML");
        let mut rules = Vec::new();
        for group in file["groups"].as_sequence().expect("groups") {
            for rule in group["rules"].as_sequence().expect("rules") {
                // Recording rules (the fleet's) alert nobody.
                if rule["record"].is_string() {
                    continue;
                }
                let expr = rule["expr"].as_str().expect("expr");
                let by = expr
                    .split_once("by (")
                    .and_then(|(_, rest)| rest.split_once(')'))
                    .map(|(labels, _)| labels.split(',').map(|l| l.trim().to_string()).collect())
                    .unwrap_or_default();
                rules.push(Rule {
                    alert: rule["alert"].as_str().expect("alert").to_string(),
                    by,
                    labels: rule["labels"].as_mapping().cloned().unwrap_or_default(),
                    runbook_url: rule["annotations"]["runbook_url"]
                        .as_str()
                        .expect("every rule has a runbook_url")
                        .to_string(),
                });
            }
        }
        assert!(
            rules.len() >= 7,
            "rules file read wrong: {} rules",
            rules.len()
        );
        rules
    }

    /// Anchors of docs/runbook.md's sections, as GitHub renders them.
    fn runbook_anchors() -> Vec<String> {
        repository_file("docs/runbook.md")
            .lines()
            .filter_map(|line| line.strip_prefix("## "))
            .map(|heading| {
                heading
                    .trim()
                    .to_lowercase()
                    .chars()
                    .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
                    .map(|c| if c == ' ' { '-' } else { c })
                    .collect()
            })
            .collect()
    }

    /// connmon's pushed alerts, one per kind of finding it pushes.
    fn pushed_alerts() -> Vec<Value> {
        let now = humantime::parse_rfc3339("2026-11-25T09:32:45Z").expect("time");
        let mut records = vec![record()];
        for event in [FindingEvent::ResetAfterIdle]
            .into_iter()
            .chain(FailureMode::ALL.map(FindingEvent::ConnectionFailed))
        {
            let mut other = record();
            other.event = event;
            other.storm_id = None;
            records.push(other);
        }
        records
            .iter()
            .map(|record| alertmanager_alert(record, &config(), now, None))
            .collect()
    }

    /// A pushed alert and the rule that says the same share the name, the
    /// severity, every label the rule keeps, and the runbook section: one
    /// route and one runbook, whichever fired.
    #[test]
    fn pushed_alerts_share_name_labels_and_runbook_with_the_rules() {
        let rules = shipped_rules();
        for alert in pushed_alerts() {
            let name = alert["labels"]["alertname"].as_str().expect("alertname");
            let rule = rules
                .iter()
                .find(|rule| rule.alert == name)
                .unwrap_or_else(|| panic!("no shipped rule is named {name}"));
            for label in &rule.by {
                assert!(
                    alert["labels"][label.as_str()].is_string(),
                    "{name}: the rule keeps `{label}`, the pushed alert has none: {alert}"
                );
            }
            for (key, value) in &rule.labels {
                assert_eq!(
                    alert["labels"][key.as_str().expect("label name")].as_str(),
                    value.as_str(),
                    "{name}: label {key:?}"
                );
            }
            let anchor = |url: &str| url.rsplit_once('#').map(|(_, a)| a.to_string());
            assert_eq!(
                anchor(
                    alert["annotations"]["runbook_url"]
                        .as_str()
                        .expect("runbook_url")
                ),
                anchor(&rule.runbook_url),
                "{name}"
            );
        }
    }

    /// Every runbook link, in the rules and in pushed alerts, lands on a
    /// section of docs/runbook.md.
    #[test]
    fn every_runbook_anchor_has_a_section() {
        let anchors = runbook_anchors();
        let links = shipped_rules()
            .into_iter()
            .map(|rule| (rule.alert, rule.runbook_url))
            .chain(pushed_alerts().into_iter().map(|alert| {
                (
                    format!("pushed {}", alert["labels"]["alertname"]),
                    alert["annotations"]["runbook_url"]
                        .as_str()
                        .expect("runbook_url")
                        .to_string(),
                )
            }));
        for (name, url) in links {
            let (_, anchor) = url
                .rsplit_once('#')
                .unwrap_or_else(|| panic!("{name}: {url} has no anchor"));
            assert!(
                anchors.iter().any(|a| a == anchor),
                "{name}: {url}: docs/runbook.md has no section #{anchor} (sections: {anchors:?})"
            );
        }
    }
}
