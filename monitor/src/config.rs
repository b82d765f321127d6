//! `connmon run` settings: defaults, then a TOML file (`--config`), then
//! `CONNMON_*` environment variables, then flags; each layer overrides the
//! one before. Every value is validated once, here; a bad one is a single
//! clear line and exit code 2.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use monitor_common::defaults;
use serde::Deserialize;

use crate::{
    capture::CaptureConfig,
    failfast::FailFastMode,
    http::webconfig::WebConfig,
    output::{Format, LogFormat},
    risk::PathTimeouts,
};

/// Default `/metrics` port: not taken by any common exporter.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9878";

/// Where the runbook is published; alerts link `#<alertname>` in it.
/// Longer than the longest rule window (6 h, ConnmonIdleConnectionStormsRecurring):
/// a label set that comes back after expiring restarts at its first increment,
/// which `increase()` over a window it spans does not see.
pub const DEFAULT_SERIES_EXPIRY: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_RUNBOOK_URL: &str = "https://example.invalid/connmon/docs/runbook.md";

/// Well-known services for ports users commonly watch, used in hints.
pub const KNOWN_SERVICES: &[(u16, &str)] = &[
    (6379, "redis"),
    (5432, "postgres"),
    (3306, "mysql"),
    (5672, "amqp"),
    (11211, "memcached"),
    (27017, "mongodb"),
    (9042, "cassandra"),
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{setting}: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
}

/// Validated settings for the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub ports: BTreeSet<u16>,
    pub all_ports: bool,
    /// No payload either way for this long makes a connection idle.
    pub idle_threshold: Duration,
    /// RTO retransmits without progress after an idle gap that confirm a storm.
    pub confirm_retransmits: u32,
    pub listen: SocketAddr,
    /// Findings on stdout.
    pub output_format: Format,
    /// Log lines on stderr.
    pub log_format: LogFormat,
    pub socket_map_entries: u32,
    pub ring_buffer_kib: u32,
    /// Port -> service name, for hints and labels.
    pub services: BTreeMap<u16, String>,
    /// The kubelet's pod log directory, to name pods (off when `None`).
    pub pod_metadata_dir: Option<PathBuf>,
    /// Alertmanager base URLs for pushed alerts.
    pub alertmanager_urls: Vec<String>,
    /// Generic JSON webhooks, one POST per finding.
    pub webhook_urls: Vec<String>,
    /// Where the runbook lives (alerts link `#<alertname>` in it).
    pub runbook_url: String,
    /// This node's name for alerts (`instance` label); the hostname by default.
    pub node_name: Option<String>,
    /// Abort the sockets of confirmed storms.
    pub fail_fast: FailFastMode,
    /// Idle timeouts of the paths to destination networks (for at-risk
    /// connections).
    pub path_timeouts: PathTimeouts,
    /// How often the daemon looks for at-risk idle connections.
    pub at_risk_interval: Duration,
    /// How often the daemon looks for watched connections whose data is
    /// stuck in the send queue (a peer that stopped reading, a local drop).
    pub stuck_scan_interval: Duration,
    /// How long a peer's receive window must stay shut before the
    /// connection is reported as `zero_window`.
    pub zero_window_confirm: Duration,
    /// Metric label sets unchanged for this long are removed from /metrics.
    pub series_expiry: Duration,
    /// TLS, basic auth and headers for the HTTP endpoints.
    pub web_config: WebConfig,
    /// CA certificates (DER) that https alert and webhook deliveries trust
    /// instead of the bundled Mozilla roots.
    pub alert_ca_certs: Option<Vec<Vec<u8>>>,
    /// Turn on the kernel's BPF run-time accounting (host-wide) for
    /// `connmon_bpf_program_run_seconds_total`. Off by default: it costs
    /// every BPF program on the host, not only connmon's.
    pub bpf_run_time_stats: bool,
    /// Only sockets in this network namespace (inode) are watched.
    pub netns: Option<u32>,
    /// A Prometheus with the fleet rules, for the at-risk audits.
    pub prometheus_url: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            ports: BTreeSet::from([defaults::WATCHED_PORT]),
            all_ports: false,
            idle_threshold: Duration::from_nanos(defaults::IDLE_THRESHOLD_NS),
            confirm_retransmits: 3,
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 9878))),
            output_format: Format::Json,
            log_format: LogFormat::Plain,
            socket_map_entries: defaults::SOCKET_MAP_ENTRIES,
            ring_buffer_kib: defaults::RING_BUFFER_KIB,
            services: KNOWN_SERVICES
                .iter()
                .map(|(port, name)| (*port, (*name).to_string()))
                .collect(),
            pod_metadata_dir: None,
            alertmanager_urls: Vec::new(),
            webhook_urls: Vec::new(),
            runbook_url: DEFAULT_RUNBOOK_URL.to_string(),
            node_name: None,
            fail_fast: FailFastMode::Off,
            path_timeouts: PathTimeouts::default(),
            at_risk_interval: Duration::from_secs(60),
            stuck_scan_interval: Duration::from_secs(5),
            zero_window_confirm: Duration::from_nanos(
                crate::detect::DEFAULT_ZERO_WINDOW_CONFIRM_NS,
            ),
            series_expiry: DEFAULT_SERIES_EXPIRY,
            web_config: WebConfig::default(),
            alert_ca_certs: None,
            bpf_run_time_stats: false,
            netns: None,
            prometheus_url: None,
        }
    }
}

/// One layer of settings, as the TOML file or flags/environment give them:
/// every field optional, raw strings not yet validated.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    pub ports: Option<Vec<u16>>,
    pub all_ports: Option<bool>,
    pub idle_threshold: Option<String>,
    pub confirm_retransmits: Option<u32>,
    pub listen: Option<String>,
    pub output_format: Option<Format>,
    pub log_format: Option<LogFormat>,
    pub socket_map_entries: Option<u32>,
    pub ring_buffer_kib: Option<u32>,
    pub services: Option<BTreeMap<String, String>>,
    pub pod_metadata_dir: Option<PathBuf>,
    pub alertmanager_urls: Option<Vec<String>>,
    pub webhook_urls: Option<Vec<String>>,
    pub runbook_url: Option<String>,
    pub node_name: Option<String>,
    pub fail_fast: Option<FailFastMode>,
    /// `default = "350s"` and `"CIDR" = "DURATION|PRESET"` entries.
    pub path_timeouts: Option<BTreeMap<String, String>>,
    pub at_risk_interval: Option<String>,
    pub stuck_scan_interval: Option<String>,
    pub zero_window_confirm: Option<String>,
    pub series_expiry: Option<String>,
    /// A Prometheus exporter web-config file (TLS, basic auth).
    pub web_config_file: Option<PathBuf>,
    /// PEM CA bundle for https alert and webhook URLs.
    pub alert_ca_file: Option<PathBuf>,
    pub bpf_run_time_stats: Option<bool>,
    /// A namespace inode or file (`/run/netns/NAME`, `/proc/PID/ns/net`).
    pub netns: Option<String>,
    pub prometheus_url: Option<String>,
}

impl Layer {
    /// Reads a TOML layer from `path`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let file_error = |reason: String| ConfigError::File {
            path: path.to_path_buf(),
            reason,
        };
        // Anyone could rewrite a world-writable file (ports, webhooks)
        // under a privileged daemon: refuse it.
        let metadata = std::fs::metadata(path).map_err(|error| file_error(error.to_string()))?;
        if std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o002 != 0 {
            return Err(file_error(
                "is world-writable; refusing it (chmod o-w)".into(),
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|error| file_error(error.to_string()))?;
        Self::from_toml(&text).map_err(file_error)
    }

    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|error| error.message().replace('\n', " ").trim().to_string())
    }
}

impl Settings {
    /// Applies `layers` over the defaults, in order.
    pub fn resolve(layers: &[Layer]) -> Result<Self, ConfigError> {
        let mut settings = Self::default();
        for layer in layers {
            settings.apply(layer)?;
        }
        Ok(settings)
    }

    fn apply(&mut self, layer: &Layer) -> Result<(), ConfigError> {
        if let Some(ports) = &layer.ports {
            if ports.is_empty() {
                return Err(invalid(
                    "ports",
                    "at least one port is needed (or set all_ports)",
                ));
            }
            if ports.contains(&0) {
                return Err(invalid("ports", "port 0 is not a port"));
            }
            self.ports = ports.iter().copied().collect();
        }
        if let Some(all_ports) = layer.all_ports {
            self.all_ports = all_ports;
        }
        if let Some(text) = &layer.idle_threshold {
            let threshold = humantime::parse_duration(text.trim()).map_err(|error| {
                invalid(
                    "idle_threshold",
                    format!("{text:?}: {error} (e.g. \"30s\", \"5m\")"),
                )
            })?;
            if threshold < Duration::from_secs(1) || threshold > Duration::from_secs(7 * 24 * 3600)
            {
                return Err(invalid(
                    "idle_threshold",
                    format!("{text:?} is outside 1s..7d"),
                ));
            }
            self.idle_threshold = threshold;
        }
        if let Some(count) = layer.confirm_retransmits {
            if !(1..=15).contains(&count) {
                return Err(invalid(
                    "confirm_retransmits",
                    format!("{count} is outside 1..15"),
                ));
            }
            self.confirm_retransmits = count;
        }
        if let Some(text) = &layer.listen {
            self.listen = text.trim().parse().map_err(|_| {
                invalid(
                    "listen",
                    format!("{text:?} is not an address:port such as 0.0.0.0:9878"),
                )
            })?;
        }
        if let Some(format) = layer.output_format {
            self.output_format = format;
        }
        if let Some(format) = layer.log_format {
            self.log_format = format;
        }
        if let Some(entries) = layer.socket_map_entries {
            if !(1024..=4_194_304).contains(&entries) {
                return Err(invalid(
                    "socket_map_entries",
                    format!("{entries} is outside 1024..4194304"),
                ));
            }
            self.socket_map_entries = entries;
        }
        if let Some(kib) = layer.ring_buffer_kib {
            if !(64..=1_048_576).contains(&kib) || !kib.is_power_of_two() {
                return Err(invalid(
                    "ring_buffer_kib",
                    format!("{kib} is not a power of two in 64..1048576"),
                ));
            }
            self.ring_buffer_kib = kib;
        }
        if let Some(dir) = &layer.pod_metadata_dir {
            if !dir.is_dir() {
                return Err(invalid(
                    "pod_metadata_dir",
                    format!("{} is not a directory", dir.display()),
                ));
            }
            self.pod_metadata_dir = Some(dir.clone());
        }
        if let Some(urls) = &layer.alertmanager_urls {
            self.alertmanager_urls = urls
                .iter()
                .map(|url| http_url("alertmanager_urls", url))
                .collect::<Result<_, _>>()?;
        }
        if let Some(urls) = &layer.webhook_urls {
            self.webhook_urls = urls
                .iter()
                .map(|url| http_url("webhook_urls", url))
                .collect::<Result<_, _>>()?;
        }
        if let Some(url) = &layer.runbook_url {
            self.runbook_url = url.trim().to_string();
        }
        if let Some(url) = &layer.prometheus_url {
            self.prometheus_url = Some(http_url("prometheus_url", url)?);
        }
        if let Some(netns) = &layer.netns {
            self.netns =
                Some(crate::cli::resolve_netns(netns.trim()).map_err(|e| invalid("netns", e))?);
        }
        if let Some(name) = &layer.node_name {
            if name.trim().is_empty() {
                return Err(invalid("node_name", "must not be empty"));
            }
            self.node_name = Some(name.trim().to_string());
        }
        if let Some(rules) = &layer.path_timeouts {
            let default = match rules.get("default") {
                Some(text) => {
                    crate::risk::parse_timeout(text).map_err(|e| invalid("path_timeouts", e))?
                }
                None => crate::risk::DEFAULT_PATH_TIMEOUT,
            };
            let mut paths = PathTimeouts::new(default);
            for (cidr, timeout) in rules.iter().filter(|(key, _)| *key != "default") {
                paths
                    .add_rule(&format!("{cidr}={timeout}"))
                    .map_err(|e| invalid("path_timeouts", e))?;
            }
            self.path_timeouts = paths;
        }
        if let Some(text) = &layer.at_risk_interval {
            let interval = humantime::parse_duration(text.trim())
                .map_err(|error| invalid("at_risk_interval", format!("{text:?}: {error}")))?;
            if interval < Duration::from_secs(1) {
                return Err(invalid(
                    "at_risk_interval",
                    format!("{text:?} is shorter than 1s"),
                ));
            }
            self.at_risk_interval = interval;
        }
        if let Some(text) = &layer.stuck_scan_interval {
            self.stuck_scan_interval =
                duration_at_least("stuck_scan_interval", text, Duration::from_millis(100))?;
        }
        if let Some(text) = &layer.zero_window_confirm {
            self.zero_window_confirm =
                duration_at_least("zero_window_confirm", text, Duration::ZERO)?;
        }
        if let Some(text) = &layer.series_expiry {
            let expiry = humantime::parse_duration(text.trim())
                .map_err(|error| invalid("series_expiry", format!("{text:?}: {error}")))?;
            if expiry < Duration::from_secs(1) {
                return Err(invalid(
                    "series_expiry",
                    format!("{text:?} is shorter than 1s"),
                ));
            }
            self.series_expiry = expiry;
        }
        if let Some(path) = &layer.web_config_file {
            let web = WebConfig::from_file(path).map_err(|reason| {
                invalid("web_config_file", format!("{}: {reason}", path.display()))
            })?;
            if let Some(tls) = &web.tls {
                // Load the certificate now, so a bad one is a start-up error.
                crate::http::tls::acceptor(tls)
                    .map_err(|error| invalid("web_config_file", error.to_string()))?;
            }
            self.web_config = web;
        }
        if let Some(path) = &layer.alert_ca_file {
            self.alert_ca_certs = Some(read_ca_bundle(path).map_err(|reason| {
                invalid("alert_ca_file", format!("{}: {reason}", path.display()))
            })?);
        }
        if let Some(on) = layer.bpf_run_time_stats {
            self.bpf_run_time_stats = on;
        }
        if let Some(mode) = layer.fail_fast {
            self.fail_fast = mode;
        }
        if let Some(services) = &layer.services {
            for (port, name) in services {
                let port: u16 = port
                    .parse()
                    .ok()
                    .filter(|port| *port != 0)
                    .ok_or_else(|| invalid("services", format!("{port:?} is not a port")))?;
                if name.trim().is_empty() || name.len() > 64 {
                    return Err(invalid(
                        "services",
                        format!("port {port}: name must be 1..64 characters"),
                    ));
                }
                self.services.insert(port, name.trim().to_string());
            }
        }
        Ok(())
    }

    /// The service name for a port, if known.
    pub fn service(&self, port: u16) -> Option<&str> {
        self.services.get(&port).map(String::as_str)
    }

    pub fn capture_config(&self) -> CaptureConfig {
        CaptureConfig {
            watched_ports: self.ports.clone(),
            watch_all_ports: self.all_ports,
            // Detection needs only connection setup and close.
            every_state_change: false,
            idle_threshold_ns: self.idle_threshold.as_nanos() as u64,
            socket_map_entries: self.socket_map_entries,
            ring_buffer_bytes: self.ring_buffer_kib * 1024,
            fail_fast: self.fail_fast == FailFastMode::On,
        }
    }
}

/// An `http://host:port[/path]` URL (this build speaks plain HTTP only).
/// The certificates of a PEM bundle, as DER.
pub(crate) fn read_ca_bundle(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let pem = std::fs::read(path).map_err(|error| error.to_string())?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item.map_err(|error| error.to_string())? {
            ureq::tls::PemItem::Certificate(cert) => certs.push(cert.der().to_vec()),
            _ => return Err("holds something other than certificates".into()),
        }
    }
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(certs)
}

fn http_url(setting: &'static str, url: &str) -> Result<String, ConfigError> {
    let url = url.trim();
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| {
            invalid(
                setting,
                format!("{url:?} is not an http:// or https:// URL"),
            )
        })?;
    if rest.is_empty() || rest.starts_with('/') || rest.contains(char::is_whitespace) {
        return Err(invalid(setting, format!("{url:?} has no host")));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// A duration setting of at least `minimum`.
fn duration_at_least(
    setting: &'static str,
    text: &str,
    minimum: Duration,
) -> Result<Duration, ConfigError> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|error| invalid(setting, format!("{text:?}: {error}")))?;
    if duration < minimum {
        return Err(invalid(
            setting,
            format!(
                "{text:?} is shorter than {}",
                humantime::format_duration(minimum)
            ),
        ));
    }
    Ok(duration)
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuck_scan_settings_take_durations_and_name_a_bad_one() {
        let defaults = Settings::resolve(&[]).expect("defaults");
        assert_eq!(defaults.stuck_scan_interval, Duration::from_secs(5));
        assert_eq!(defaults.zero_window_confirm, Duration::from_secs(10));
        let file = Layer::from_toml("stuck_scan_interval = \"1s\"\nzero_window_confirm = \"2s\"\n")
            .expect("valid toml");
        let settings = Settings::resolve(&[file]).expect("valid");
        assert_eq!(settings.stuck_scan_interval, Duration::from_secs(1));
        assert_eq!(settings.zero_window_confirm, Duration::from_secs(2));
        let too_often = Layer {
            stuck_scan_interval: Some("10ms".into()),
            ..Layer::default()
        };
        let error = Settings::resolve(&[too_often]).expect_err("too often");
        assert!(error.to_string().contains("stuck_scan_interval"), "{error}");
    }

    #[test]
    fn netns_scope_takes_an_inode_or_a_namespace_file_and_names_a_bad_one() {
        assert_eq!(Settings::resolve(&[]).expect("defaults").netns, None);
        let file = Layer::from_toml("netns = \"4026531840\"\n").expect("valid toml");
        assert_eq!(
            Settings::resolve(&[file]).expect("valid").netns,
            Some(4026531840)
        );
        let own = Layer {
            netns: Some("/proc/self/ns/net".into()),
            ..Layer::default()
        };
        assert!(Settings::resolve(&[own]).expect("valid").netns.is_some());
        let missing = Layer {
            netns: Some("/run/netns/no-such-namespace".into()),
            ..Layer::default()
        };
        let error = Settings::resolve(&[missing]).expect_err("no such file");
        assert!(error.to_string().contains("netns"), "{error}");
    }

    #[test]
    fn prometheus_url_must_be_an_http_url() {
        let file =
            Layer::from_toml("prometheus_url = \"http://prometheus:9090/\"\n").expect("toml");
        assert_eq!(
            Settings::resolve(&[file])
                .expect("valid")
                .prometheus_url
                .as_deref(),
            Some("http://prometheus:9090")
        );
        let bad = Layer::from_toml("prometheus_url = \"prometheus:9090\"\n").expect("toml");
        let error = Settings::resolve(&[bad]).expect_err("no scheme");
        assert!(error.to_string().contains("prometheus_url"), "{error}");
    }

    #[test]
    fn defaults_watch_redis_with_a_30s_idle_threshold() {
        let settings = Settings::resolve(&[]).expect("defaults");
        assert_eq!(settings.ports, BTreeSet::from([6379]));
        assert_eq!(settings.idle_threshold, Duration::from_secs(30));
        assert_eq!(settings.confirm_retransmits, 3);
        assert_eq!(settings.listen.port(), 9878);
        assert_eq!(settings.service(6379), Some("redis"));
        assert_eq!(settings.series_expiry, Duration::from_secs(24 * 3600));
        let file = Layer::from_toml("series_expiry = \"7h\"\n").expect("valid toml");
        let settings = Settings::resolve(&[file]).expect("valid");
        assert_eq!(settings.series_expiry, Duration::from_secs(7 * 3600));
    }

    #[test]
    fn later_layers_override_earlier_ones() {
        let file = Layer::from_toml(
            "ports = [6379, 5432]\nidle_threshold = \"5m\"\nconfirm_retransmits = 4\n[services]\n7000 = \"cache\"\n",
        )
        .expect("valid toml");
        let flags = Layer {
            idle_threshold: Some("10s".into()),
            ..Layer::default()
        };
        let settings = Settings::resolve(&[file, flags]).expect("valid");
        assert_eq!(settings.ports, BTreeSet::from([5432, 6379]));
        assert_eq!(settings.idle_threshold, Duration::from_secs(10));
        assert_eq!(settings.confirm_retransmits, 4);
        assert_eq!(settings.service(7000), Some("cache"));
        assert_eq!(settings.service(5432), Some("postgres"));
    }

    #[test]
    fn every_bad_value_names_its_setting_in_one_line() {
        let cases: Vec<(Layer, &str)> = vec![
            (
                Layer {
                    series_expiry: Some("500ms".into()),
                    ..Layer::default()
                },
                "series_expiry",
            ),
            (
                Layer {
                    series_expiry: Some("a day".into()),
                    ..Layer::default()
                },
                "series_expiry",
            ),
            (
                Layer {
                    ports: Some(vec![]),
                    ..Layer::default()
                },
                "ports",
            ),
            (
                Layer {
                    ports: Some(vec![0]),
                    ..Layer::default()
                },
                "ports",
            ),
            (
                Layer {
                    idle_threshold: Some("soon".into()),
                    ..Layer::default()
                },
                "idle_threshold",
            ),
            (
                Layer {
                    idle_threshold: Some("10ms".into()),
                    ..Layer::default()
                },
                "idle_threshold",
            ),
            (
                Layer {
                    confirm_retransmits: Some(0),
                    ..Layer::default()
                },
                "confirm_retransmits",
            ),
            (
                Layer {
                    confirm_retransmits: Some(16),
                    ..Layer::default()
                },
                "confirm_retransmits",
            ),
            (
                Layer {
                    listen: Some("localhost".into()),
                    ..Layer::default()
                },
                "listen",
            ),
            (
                Layer {
                    socket_map_entries: Some(5),
                    ..Layer::default()
                },
                "socket_map_entries",
            ),
            (
                Layer {
                    ring_buffer_kib: Some(100),
                    ..Layer::default()
                },
                "ring_buffer_kib",
            ),
            (
                Layer {
                    alertmanager_urls: Some(vec!["alertmanager:9093".into()]),
                    ..Layer::default()
                },
                "alertmanager_urls",
            ),
            (
                Layer {
                    webhook_urls: Some(vec!["ftp://hooks.example/x".into()]),
                    ..Layer::default()
                },
                "webhook_urls",
            ),
            (
                Layer {
                    alert_ca_file: Some("/no/such/ca.pem".into()),
                    ..Layer::default()
                },
                "alert_ca_file",
            ),
            (
                Layer {
                    services: Some(BTreeMap::from([("redis".into(), "x".into())])),
                    ..Layer::default()
                },
                "services",
            ),
        ];
        for (layer, setting) in cases {
            let error = Settings::resolve(&[layer])
                .expect_err("invalid")
                .to_string();
            assert!(error.starts_with(setting), "{error}");
            assert!(!error.contains('\n'), "{error}");
        }
    }

    #[test]
    fn log_format_formats_logs_and_text_points_to_output_format() {
        let file = Layer::from_toml("output_format = \"text\"\nlog_format = \"json\"\n")
            .expect("valid toml");
        let settings = Settings::resolve(&[file]).expect("valid");
        assert_eq!(settings.output_format, Format::Text);
        assert_eq!(settings.log_format, LogFormat::Json);
        let defaults = Settings::resolve(&[]).expect("defaults");
        assert_eq!(defaults.output_format, Format::Json);
        assert_eq!(defaults.log_format, LogFormat::Plain);
        // The old meaning of log_format: refused, saying what replaced it.
        let old = Layer::from_toml("log_format = \"text\"\n").expect_err("old key");
        assert!(old.contains("output_format"), "{old}");
        assert!(!old.contains('\n'), "{old}");
    }

    #[test]
    fn unknown_and_mistyped_file_keys_are_rejected() {
        let unknown = Layer::from_toml("idle_treshold = \"5s\"\n").expect_err("typo");
        assert!(unknown.contains("idle_treshold"), "{unknown}");
        assert!(!unknown.contains('\n'));
        let mistyped = Layer::from_toml("ports = \"6379\"\n").expect_err("wrong type");
        assert!(!mistyped.contains('\n'), "{mistyped}");
        let dir = std::env::temp_dir().join(format!("connmon-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let open = dir.join("open.toml");
        std::fs::write(&open, "ports = [6379]\n").expect("write");
        std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .expect("chmod");
        let refused = Layer::from_file(&open)
            .expect_err("world-writable")
            .to_string();
        assert!(refused.contains("world-writable"), "{refused}");
        std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .expect("chmod");
        assert!(Layer::from_file(&open).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
        let missing = Layer::from_file(Path::new("/no/such/connmon.toml")).expect_err("missing");
        assert!(
            missing
                .to_string()
                .starts_with("config file /no/such/connmon.toml")
        );
    }
}
