//! Real Prometheus and Alertmanager (Debian's packages) on loopback, and a
//! webhook receiver, for the alerting tests. Each is stopped on drop.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{connmon::http_get, poll, process::Process};

/// A free port on loopback (bound, then released for the server to take).
pub fn free_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("cmt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Collects the JSON bodies POSTed to it, by path.
pub struct WebhookReceiver {
    pub addr: SocketAddr,
    /// Path, body and when the body had arrived.
    received: Arc<Mutex<Vec<(String, Value, std::time::Instant)>>>,
}

impl WebhookReceiver {
    pub fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        // The thread ends with the test process; it only serves loopback.
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                if let Some((path, body)) = read_request(&stream)
                    && let Ok(value) = serde_json::from_slice::<Value>(&body)
                    && let Ok(mut sink) = sink.lock()
                {
                    sink.push((path, value, std::time::Instant::now()));
                }
                let mut stream = stream;
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Ok(Self { addr, received })
    }

    /// Bodies received on `path` so far.
    pub fn bodies(&self, path: &str) -> Vec<Value> {
        self.received
            .lock()
            .map(|r| {
                r.iter()
                    .filter(|(p, _, _)| p == path)
                    .map(|(_, v, _)| v.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The first body received on `path` that satisfies `filter`, with
    /// when it arrived.
    pub fn first(
        &self,
        path: &str,
        filter: impl Fn(&Value) -> bool,
    ) -> Option<(Value, std::time::Instant)> {
        self.received.lock().ok().and_then(|r| {
            r.iter()
                .find(|(p, v, _)| p == path && filter(v))
                .map(|(_, v, at)| (v.clone(), *at))
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Percent-encodes everything but unreserved characters, for a query string.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn read_request(stream: &std::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let path = request_line.split_whitespace().nth(1)?.to_string();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0u8; length.min(16 << 20)];
    reader.read_exact(&mut body).ok()?;
    Some((path, body))
}

fn wait_ready(name: &str, addr: SocketAddr, process: &Process) -> Result<()> {
    poll::until(
        &format!("{name} to be ready"),
        Duration::from_secs(30),
        || Ok(http_get(addr, "/-/ready").ok().map(|_| ())),
    )
    .with_context(|| format!("{name} stderr: {:?}", process.stderr.snapshot()))
}

/// Alertmanager routing everything to `webhook` quickly.
pub struct Alertmanager {
    pub addr: SocketAddr,
    _process: Process,
    _dir: TempDir,
}

impl Alertmanager {
    pub fn start(webhook_url: &str) -> Result<Self> {
        Self::launch(webhook_url, None)
    }

    /// Alertmanager serving HTTPS as its exporter web config says.
    pub fn start_tls(webhook_url: &str, web_config: &Path) -> Result<Self> {
        Self::launch(webhook_url, Some(web_config))
    }

    /// Alertmanager with `config` as its alertmanager.yml.
    pub fn start_with_config(config: &str) -> Result<Self> {
        Self::launch_config(config, None)
    }

    fn launch(webhook_url: &str, web_config: Option<&Path>) -> Result<Self> {
        let config = format!(
            "route:\n  receiver: test\n  group_by: ['alertname', 'instance', 'process', 'destination', 'storm_id']\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: test\n    webhook_configs:\n      - url: {webhook_url}\n        send_resolved: true\n"
        );
        Self::launch_config(&config, web_config)
    }

    fn launch_config(config: &str, web_config: Option<&Path>) -> Result<Self> {
        let dir = TempDir::new("alertmanager")?;
        let addr = free_port()?;
        std::fs::write(dir.0.join("alertmanager.yml"), config)?;
        let mut command = Command::new("prometheus-alertmanager");
        command
            .arg(format!(
                "--config.file={}",
                dir.0.join("alertmanager.yml").display()
            ))
            .arg(format!("--storage.path={}", dir.0.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--cluster.listen-address=");
        if let Some(web_config) = web_config {
            command.arg(format!("--web.config.file={}", web_config.display()));
        }
        let process = Process::spawn("alertmanager", command)?;
        if web_config.is_some() {
            // Our plain HTTP probe cannot speak TLS: wait for its log line.
            process
                .stderr
                .wait_for_containing("Listening on", Duration::from_secs(30))?;
        } else {
            wait_ready("alertmanager", addr, &process)?;
        }
        Ok(Self {
            addr,
            _process: process,
            _dir: dir,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Prometheus scraping connmon every second and evaluating `rules`.
pub struct Prometheus {
    pub addr: SocketAddr,
    _process: Process,
    _dir: TempDir,
}

impl Prometheus {
    pub fn start(connmon: SocketAddr, alertmanager: SocketAddr, rules: &Path) -> Result<Self> {
        Self::launch(&format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nalerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{alertmanager}']\nscrape_configs:\n  - job_name: connmon\n    static_configs:\n      - targets: ['{connmon}']\n",
            rules.display()
        ))
    }

    /// Prometheus evaluating `rules` every second, scraping with `job` (a
    /// `scrape_configs` entry, e.g. from `operator_scrape_job`) and sending
    /// alerts to `alertmanager`.
    pub fn start_with_job(job: &Value, rules: &Path, alertmanager: SocketAddr) -> Result<Self> {
        let config = serde_json::json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [rules.display().to_string()],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager.to_string()]}]}]},
            "scrape_configs": [job],
        });
        Self::launch(&config.to_string())
    }

    /// Prometheus with one scrape job, given as YAML lines indented for a
    /// `scrape_configs` list item (`job_name: ...` first).
    pub fn start_scraping(job: &str) -> Result<Self> {
        Self::launch(&format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - {}\n",
            job.trim()
        ))
    }

    fn launch(config: &str) -> Result<Self> {
        let dir = TempDir::new("prometheus")?;
        let addr = free_port()?;
        std::fs::write(dir.0.join("prometheus.yml"), config)?;
        let mut command = Command::new("prometheus");
        command
            .arg(format!(
                "--config.file={}",
                dir.0.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"));
        let process = Process::spawn("prometheus", command)?;
        wait_ready("prometheus", addr, &process)?;
        Ok(Self {
            addr,
            _process: process,
            _dir: dir,
        })
    }

    /// The result vector of an instant query.
    pub fn query(&self, promql: &str) -> Result<Vec<Value>> {
        let body = http_get(
            self.addr,
            &format!("/api/v1/query?query={}", percent_encode(promql)),
        )?;
        let value: Value = serde_json::from_str(&body)?;
        Ok(value["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Alerts the rules hold now (pending or firing).
    pub fn alerts(&self) -> Result<Vec<Value>> {
        let body = http_get(self.addr, "/api/v1/alerts")?;
        let value: Value = serde_json::from_str(&body)?;
        Ok(value["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Whether Prometheus scraped connmon successfully (`up == 1`).
    pub fn target_up(&self) -> Result<bool> {
        let body = http_get(self.addr, "/api/v1/query?query=up")?;
        Ok(body.contains("\"value\":[") && body.contains("\"1\"]"))
    }
}

/// A receiver that accepts connections and never answers: the TCP handshake
/// succeeds (the kernel's backlog), the request is never read, nothing is
/// written. Connections are held until drop.
pub struct HungReceiver {
    pub addr: SocketAddr,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HungReceiver {
    pub fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            // Runs until drop sets `stop`; polls so that it notices.
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        held.push(stream);
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Self {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Connections accepted (and left unanswered) so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for HungReceiver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A loopback URL on which nothing listens: connections are refused.
pub fn refusing_url(path: &str) -> Result<String> {
    Ok(format!("http://{}{path}", free_port()?))
}

/// The value of one exact series (`name{labels}`) in a /metrics body;
/// `None` when the series is absent, which callers treat as a failure.
pub fn series(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
    })
}

/// What Kubernetes service discovery would say about the connmon pod.
pub struct PodMeta<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub container: &'a str,
    pub node: &'a str,
    pub pod_labels: &'a [(&'a str, &'a str)],
}

/// Prometheus label names from Kubernetes label names, as the operator and
/// service discovery sanitize them.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The scrape job prometheus-operator v0.93.0 generates for the first
/// endpoint of `podmonitor` (`generatePodMonitorConfig` in
/// pkg/prometheus/promcfg.go), pointed at `target` with `meta` as the
/// service-discovery labels a static target carries instead of
/// `kubernetes_sd_configs`. Reproduced, in order: the job-name meta label,
/// the phase filter, the selector's `matchLabels` keep rules, the port keep
/// rule, the `namespace`/`container`/`pod` target labels, the
/// `job="<namespace>/<name>"` default and the `jobLabel` override, the
/// `endpoint` label, then the PodMonitor's own `relabelings`; `honor_labels`
/// from `honorLabels`. Left out: `podTargetLabels` (unused), scrape classes
/// and enforced namespace labels (none set), and the sharding `hashmod` rule
/// (one shard keeps every target). Returned as JSON, which Prometheus reads
/// as YAML.
pub fn operator_scrape_job(
    podmonitor: &Value,
    target: SocketAddr,
    meta: &PodMeta,
    interval: &str,
) -> Result<Value> {
    use serde_json::json;
    let namespace = podmonitor["metadata"]["namespace"]
        .as_str()
        .context("PodMonitor namespace")?;
    let name = podmonitor["metadata"]["name"]
        .as_str()
        .context("PodMonitor name")?;
    let spec = &podmonitor["spec"];
    let endpoint = &spec["podMetricsEndpoints"][0];
    let port = endpoint["port"].as_str().context("endpoint port")?;

    let mut labels = serde_json::Map::new();
    let mut set = |key: String, value: &str| {
        labels.insert(key, json!(value));
    };
    set("__meta_kubernetes_namespace".into(), meta.namespace);
    set("__meta_kubernetes_pod_name".into(), meta.pod);
    set(
        "__meta_kubernetes_pod_container_name".into(),
        meta.container,
    );
    set("__meta_kubernetes_pod_container_port_name".into(), port);
    set("__meta_kubernetes_pod_node_name".into(), meta.node);
    set("__meta_kubernetes_pod_phase".into(), "Running");
    for (key, value) in meta.pod_labels {
        set(
            format!("__meta_kubernetes_pod_label_{}", sanitize(key)),
            value,
        );
        set(
            format!("__meta_kubernetes_pod_labelpresent_{}", sanitize(key)),
            "true",
        );
    }

    let mut relabel = vec![
        json!({"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"}),
        json!({"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)"}),
    ];
    let selector = spec["selector"]["matchLabels"]
        .as_object()
        .context("PodMonitor selector.matchLabels")?;
    let mut keys: Vec<&String> = selector.keys().collect();
    keys.sort();
    for key in keys {
        relabel.push(json!({
            "action": "keep",
            "source_labels": [
                format!("__meta_kubernetes_pod_label_{}", sanitize(key)),
                format!("__meta_kubernetes_pod_labelpresent_{}", sanitize(key)),
            ],
            "regex": format!("({});true", selector[key.as_str()].as_str().unwrap_or_default()),
        }));
    }
    relabel.push(json!({"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": port}));
    relabel.push(
        json!({"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"}),
    );
    relabel.push(json!({"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"}));
    relabel.push(json!({"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"}));
    relabel.push(json!({"target_label": "job", "replacement": format!("{namespace}/{name}")}));
    if let Some(job_label) = spec["jobLabel"].as_str() {
        relabel.push(json!({
            "source_labels": [format!("__meta_kubernetes_pod_label_{}", sanitize(job_label))],
            "target_label": "job",
            "regex": "(.+)",
            "replacement": "${1}",
        }));
    }
    relabel.push(json!({"target_label": "endpoint", "replacement": port}));
    for rule in endpoint["relabelings"].as_array().into_iter().flatten() {
        let mut translated = serde_json::Map::new();
        for (key, value) in rule.as_object().context("a relabeling")? {
            let key = match key.as_str() {
                "sourceLabels" => "source_labels",
                "targetLabel" => "target_label",
                "action" => {
                    translated.insert(
                        "action".into(),
                        json!(value.as_str().unwrap_or_default().to_lowercase()),
                    );
                    continue;
                }
                other => other,
            };
            translated.insert(key.into(), value.clone());
        }
        relabel.push(Value::Object(translated));
    }
    Ok(json!({
        "job_name": format!("podMonitor/{namespace}/{name}/0"),
        "honor_labels": endpoint["honorLabels"].as_bool().unwrap_or(false),
        "scrape_interval": interval,
        "metrics_path": endpoint["path"].as_str().unwrap_or("/metrics"),
        "static_configs": [{"targets": [target.to_string()], "labels": labels}],
        "relabel_configs": relabel,
    }))
}
