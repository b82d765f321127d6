//! `connmon run` settings: defaults, then a TOML file (`--config`), then
//! `CONNMON_*` environment variables, then flags; each layer overrides the
//! one before. Every value is validated once, here; a bad one is a single
//! clear line and exit code 2.
//!
//! Each setting is declared once, in the `settings!` table below: its flag
//! and variable (clap), its TOML key (serde), its default and its parser.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    ops::RangeInclusive,
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

/// Sockets the kernel's socket table may be asked to hold.
pub const SOCKET_MAP_ENTRIES_RANGE: RangeInclusive<u32> = 1024..=4_194_304;
/// Ring buffer sizes the kernel accepts (and connmon allows), in KiB; also a
/// power of two.
pub const RING_BUFFER_KIB_RANGE: RangeInclusive<u32> = 64..=1_048_576;

const ONE_SECOND: Duration = Duration::from_secs(1);

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

/// Generates, from one table of settings, `Settings` (validated values and
/// their defaults), `Layer` (the same settings as one source gives them:
/// flags and environment through clap, the file through serde; every field
/// optional, raw) and `Settings::apply` (a layer over settings).
///
/// An entry: doc comment (the flag's help, ending in `[default: …]`), the
/// clap attribute (`#[arg(skip)]` for a file-only key), then
/// `key [as field]: Raw => Type = default, set parser;` where `parser` turns
/// `&Raw` into `Result<Type, String>` (`merge parser` instead takes
/// `(&mut Type, &Raw)` and adds to the value). `key` is the TOML key and
/// the setting's name in error lines (and, unless `#[arg]` says otherwise,
/// the flag's); `as field` names the `Settings` field when it differs.
macro_rules! settings {
    // Normalises each entry to `key as field`, then generates.
    (@entries [$($done:tt)*]) => { settings!(@generate $($done)*); };
    (@entries [$($done:tt)*]
        $(#[doc = $doc:literal])* #[arg($($arg:tt)*)]
        $key:ident as $field:ident: $raw:ty => $typed:ty = $default:expr, $how:ident $parse:expr;
        $($rest:tt)*
    ) => {
        settings!(@entries [$($done)* {
            [$($doc)*] [$($arg)*] $key $field [$raw] [$typed] [$default] $how [$parse]
        }] $($rest)*);
    };
    (@entries [$($done:tt)*]
        $(#[doc = $doc:literal])* #[arg($($arg:tt)*)]
        $key:ident: $raw:ty => $typed:ty = $default:expr, $how:ident $parse:expr;
        $($rest:tt)*
    ) => {
        settings!(@entries [$($done)* {
            [$($doc)*] [$($arg)*] $key $key [$raw] [$typed] [$default] $how [$parse]
        }] $($rest)*);
    };
    (@generate $({
        [$($doc:literal)*] [$($arg:tt)*] $key:ident $field:ident
        [$raw:ty] [$typed:ty] [$default:expr] $how:ident [$parse:expr]
    })*) => {
        /// Validated settings for the daemon.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub struct Settings {
            $( $(#[doc = $doc])* pub $field: $typed, )*
        }

        impl Default for Settings {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        /// One layer of settings, as the TOML file or flags and environment
        /// give them: every field optional, not yet validated.
        #[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq, clap::Args)]
        #[serde(deny_unknown_fields)]
        pub struct Layer {
            $( $(#[doc = $doc])* #[arg($($arg)*)] pub $key: Option<$raw>, )*
        }

        /// Every TOML key, which is also each setting's name in errors.
        pub const KEYS: &[&str] = &[$( stringify!($key) ),*];

        impl Settings {
            /// Validates each value `layer` gives and sets it.
            fn apply(&mut self, layer: &Layer) -> Result<(), ConfigError> {
                $(
                    if let Some(raw) = &layer.$key {
                        let applied: Result<(), String> =
                            settings!(@$how self.$field, raw, $parse);
                        applied.map_err(|reason| invalid(stringify!($key), reason))?;
                    }
                )*
                Ok(())
            }
        }
    };
    (@set $slot:expr, $raw:expr, $parse:expr) => { $parse($raw).map(|value| $slot = value) };
    (@merge $slot:expr, $raw:expr, $parse:expr) => { $parse(&mut $slot, $raw) };
    ($($entries:tt)*) => { settings!(@entries [] $($entries)*); };
}

// To add a setting: one entry here (see `settings!` for its parts) and a row
// in README's settings table; unit tests check the help's `[default: …]`,
// the `CONNMON_*` name and the README row.
settings! {
    /// TCP ports (local or remote) to watch, comma separated [default: 6379].
    #[arg(long, value_delimiter = ',', value_parser = parse_port, env = "CONNMON_PORTS")]
    ports: Vec<u16> => BTreeSet<u16> = BTreeSet::from([defaults::WATCHED_PORT]), set watched_ports;

    /// Watch every TCP port.
    #[arg(long, env = "CONNMON_ALL_PORTS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    all_ports: bool => bool = false, set given;

    /// No payload either way for this long makes a connection idle [default: 30s].
    #[arg(long, env = "CONNMON_IDLE_THRESHOLD", value_name = "DURATION")]
    idle_threshold: String => Duration = Duration::from_nanos(defaults::IDLE_THRESHOLD_NS),
        set |text| duration_within(text, ONE_SECOND..=Duration::from_secs(7 * 24 * 3600));

    /// RTO retransmits without progress after idle that confirm a storm [default: 3].
    #[arg(long, env = "CONNMON_CONFIRM_RETRANSMITS", value_name = "N")]
    confirm_retransmits: u32 => u32 = 3, set |count| within(count, 1..=15);

    /// HTTP listen address for /metrics, /healthz, /readyz, /api/v1/storms [default: 0.0.0.0:9878].
    // Port 9878 is not taken by any common exporter.
    #[arg(long, env = "CONNMON_LISTEN", value_name = "ADDR:PORT")]
    listen: String => SocketAddr = SocketAddr::from(([0, 0, 0, 0], 9878)), set listen_address;

    /// Findings on stdout: json lines or text for people [default: json].
    /// (`--log-format` used to set this; it now formats the logs.)
    #[arg(long, env = "CONNMON_OUTPUT_FORMAT", value_enum)]
    output_format: Format => Format = Format::Json, set given;

    /// Log lines on stderr (the global `--log-format`) [default: plain].
    #[arg(skip)]
    log_format: LogFormat => LogFormat = LogFormat::Plain, set given;

    /// Sockets the kernel's socket table can hold [default: 65536].
    #[arg(long, env = "CONNMON_SOCKET_MAP_ENTRIES")]
    socket_map_entries: u32 => u32 = defaults::SOCKET_MAP_ENTRIES,
        set |entries| within(entries, SOCKET_MAP_ENTRIES_RANGE);

    /// Event ring buffer size in KiB, a power of two [default: 4096].
    #[arg(long, env = "CONNMON_RING_BUFFER_KIB")]
    ring_buffer_kib: u32 => u32 = defaults::RING_BUFFER_KIB, set ring_buffer_kib;

    /// Port -> service name, for hints and labels (file only: `[services]`);
    /// these add to and override the well-known ones.
    #[arg(skip)]
    services: BTreeMap<String, String> => BTreeMap<u16, String> = KNOWN_SERVICES
        .iter()
        .map(|(port, name)| (*port, (*name).to_string()))
        .collect(),
        merge add_service_names;

    /// Name pods from the kubelet's log directory (e.g. /var/log/pods) [default: off].
    #[arg(long, env = "CONNMON_POD_METADATA_DIR", value_name = "DIR")]
    pod_metadata_dir: PathBuf => Option<PathBuf> = None, set directory;

    /// Push alerts to Alertmanager's v2 API at this base URL (repeat or comma separate).
    #[arg(long = "alertmanager-url", value_delimiter = ',', env = "CONNMON_ALERTMANAGER_URL", value_name = "URL")]
    alertmanager_urls: Vec<String> => Vec<String> = Vec::new(), set http_urls;

    /// POST every finding as JSON to this webhook (repeat or comma separate).
    #[arg(long = "webhook-url", value_delimiter = ',', env = "CONNMON_WEBHOOK_URL", value_name = "URL")]
    webhook_urls: Vec<String> => Vec<String> = Vec::new(), set http_urls;

    /// Runbook link for alerts (each alert links `#<alertname>`).
    #[arg(long, env = "CONNMON_RUNBOOK_URL", value_name = "URL")]
    runbook_url: String => String =
        "https://example.invalid/connmon/docs/runbook.md".to_string(),
        set |url: &String| Ok(url.trim().to_string());

    /// This node's name in alerts [default: the hostname].
    #[arg(long, env = "CONNMON_NODE_NAME")]
    node_name: String => Option<String> = None, set node_name;

    /// Abort the socket of each confirmed storm so the application fails now
    /// and reconnects, instead of hanging [default: off; bare flag: on].
    #[arg(long, env = "CONNMON_FAIL_FAST", value_enum, num_args = 0..=1, default_missing_value = "on")]
    fail_fast: FailFastMode => FailFastMode = FailFastMode::Off, set given;

    /// Idle timeouts of the paths to destination networks, for at-risk
    /// connections: `default = "350s"` and `"CIDR" = "DURATION|PRESET"`
    /// (flags: `--path-timeout`, `--default-path-timeout`).
    #[arg(skip)]
    path_timeouts: BTreeMap<String, String> => PathTimeouts = PathTimeouts::default(),
        set path_timeouts;

    /// How often to look for idle connections at risk [default: 60s].
    #[arg(long, env = "CONNMON_AT_RISK_INTERVAL", value_name = "DURATION")]
    at_risk_interval: String => Duration = Duration::from_secs(60),
        set interval;

    /// How often to look for watched connections whose data is stuck in
    /// the send queue: a peer that stopped reading, a local egress drop
    /// [default: 5s].
    #[arg(long, env = "CONNMON_STUCK_SCAN_INTERVAL", value_name = "DURATION")]
    stuck_scan_interval: String => Duration = Duration::from_secs(5),
        set |text| duration_within(text, Duration::from_millis(100)..=Duration::MAX);

    /// How long a peer's receive window must stay shut, with data waiting,
    /// before the connection is reported as zero_window [default: 10s].
    #[arg(long, env = "CONNMON_ZERO_WINDOW_CONFIRM", value_name = "DURATION")]
    zero_window_confirm: String => Duration =
        Duration::from_nanos(crate::detect::DEFAULT_ZERO_WINDOW_CONFIRM_NS),
        set |text| duration_within(text, Duration::ZERO..=Duration::MAX);

    /// Remove metric label sets (process, container, destination) that
    /// have not changed for this long [default: 24h].
    // Longer than the longest rule window (6 h, ConnmonIdleConnectionStormsRecurring):
    // a label set that comes back after expiring restarts at its first increment,
    // which `increase()` over a window it spans does not see.
    #[arg(long, env = "CONNMON_SERIES_EXPIRY", value_name = "DURATION")]
    series_expiry: String => Duration = Duration::from_secs(24 * 3600),
        set interval;

    /// TLS and basic auth for the HTTP endpoints: a Prometheus exporter
    /// web-config file (as node_exporter's --web.config.file).
    #[arg(long, env = "CONNMON_WEB_CONFIG_FILE", value_name = "FILE")]
    web_config_file as web_config: PathBuf => WebConfig = WebConfig::default(), set web_config;

    /// PEM CA bundle that https alert and webhook URLs are checked against
    /// [default: the bundled Mozilla roots].
    #[arg(long, env = "CONNMON_ALERT_CA_FILE", value_name = "FILE")]
    alert_ca_file as alert_ca_certs: PathBuf => Option<Vec<Vec<u8>>> = None,
        set |path: &PathBuf| in_file(path, read_ca_bundle(path)).map(Some);

    /// Turn on the kernel's BPF run-time accounting for
    /// connmon_bpf_program_run_seconds_total while connmon runs. It costs
    /// every BPF program on the host two clock reads per run, so it is off
    /// unless asked for (or the node sets kernel.bpf_stats_enabled=1)
    /// [default: false].
    #[arg(long, env = "CONNMON_BPF_RUN_TIME_STATS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    bpf_run_time_stats: bool => bool = false, set given;

    /// Only watch sockets in this network namespace (one pod, or a test's
    /// stand-in for a node): an inode number or a path such as
    /// /run/netns/NAME or /proc/PID/ns/net [default: every namespace].
    #[arg(long, env = "CONNMON_NETNS", value_name = "INODE|PATH")]
    netns: String => Option<u32> = None,
        set |text: &String| crate::cli::resolve_netns(text.trim()).map(Some);

    /// A Prometheus scraping every node's connmon with the shipped fleet
    /// rules: the at-risk audits take each destination's path timeout from
    /// the whole fleet's evidence when it is shorter [default: off].
    #[arg(long, env = "CONNMON_PROMETHEUS_URL", value_name = "URL")]
    prometheus_url: String => Option<String> = None,
        set |url: &String| http_url(url).map(Some);
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

// The parsers of the table: each turns one raw value into a valid one or
// says why not (the caller names the setting).

/// A value as given (clap or serde already checked its type).
fn given<T: Clone>(value: &T) -> Result<T, String> {
    Ok(value.clone())
}

/// A number in `range`.
pub(crate) fn within<T: PartialOrd + Copy + std::fmt::Display>(
    value: &T,
    range: RangeInclusive<T>,
) -> Result<T, String> {
    if range.contains(value) {
        Ok(*value)
    } else {
        Err(format!(
            "{value} is outside {}..{}",
            range.start(),
            range.end()
        ))
    }
}

fn duration_within(text: &str, range: RangeInclusive<Duration>) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|error| format!("{text:?}: {error} (e.g. \"30s\", \"5m\")"))?;
    if range.contains(&duration) {
        return Ok(duration);
    }
    let start = humantime::format_duration(*range.start());
    Err(if *range.end() == Duration::MAX {
        format!("{text:?} is shorter than {start}")
    } else {
        let end = humantime::format_duration(*range.end());
        format!("{text:?} is outside {start}..{end}")
    })
}

/// A period of at least a second.
fn interval(text: &str) -> Result<Duration, String> {
    duration_within(text, ONE_SECOND..=Duration::MAX)
}

/// One port of `--ports` (a flag's value parser too).
pub(crate) fn parse_port(value: &str) -> Result<u16, String> {
    match value.trim().parse::<u16>() {
        Ok(0) => Err("port 0 is not a port".into()),
        Ok(port) => Ok(port),
        Err(_) => Err(format!("{value:?} is not a TCP port (1-65535)")),
    }
}

fn watched_ports(ports: &[u16]) -> Result<BTreeSet<u16>, String> {
    if ports.is_empty() {
        return Err("at least one port is needed (or set all_ports)".into());
    }
    if ports.contains(&0) {
        return Err("port 0 is not a port".into());
    }
    Ok(ports.iter().copied().collect())
}

fn listen_address(text: &str) -> Result<SocketAddr, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{text:?} is not an address:port such as 0.0.0.0:9878"))
}

/// A ring buffer size in KiB: a power of two the kernel accepts.
pub(crate) fn ring_buffer_kib(kib: &u32) -> Result<u32, String> {
    if RING_BUFFER_KIB_RANGE.contains(kib) && kib.is_power_of_two() {
        Ok(*kib)
    } else {
        Err(format!(
            "{kib} is not a power of two in {}..{}",
            RING_BUFFER_KIB_RANGE.start(),
            RING_BUFFER_KIB_RANGE.end()
        ))
    }
}

fn add_service_names(
    services: &mut BTreeMap<u16, String>,
    given: &BTreeMap<String, String>,
) -> Result<(), String> {
    for (port, name) in given {
        let port: u16 = port
            .parse()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| format!("{port:?} is not a port"))?;
        if name.trim().is_empty() || name.len() > 64 {
            return Err(format!("port {port}: name must be 1..64 characters"));
        }
        services.insert(port, name.trim().to_string());
    }
    Ok(())
}

fn directory(dir: &Path) -> Result<Option<PathBuf>, String> {
    if dir.is_dir() {
        Ok(Some(dir.to_path_buf()))
    } else {
        Err(format!("{} is not a directory", dir.display()))
    }
}

fn node_name(name: &str) -> Result<Option<String>, String> {
    if name.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(Some(name.trim().to_string()))
}

fn path_timeouts(rules: &BTreeMap<String, String>) -> Result<PathTimeouts, String> {
    let default = match rules.get("default") {
        Some(text) => crate::risk::parse_timeout(text)?,
        None => crate::risk::DEFAULT_PATH_TIMEOUT,
    };
    let mut paths = PathTimeouts::new(default);
    for (cidr, timeout) in rules.iter().filter(|(key, _)| *key != "default") {
        paths.add_rule(&format!("{cidr}={timeout}"))?;
    }
    Ok(paths)
}

fn web_config(path: &Path) -> Result<WebConfig, String> {
    let web = in_file(path, WebConfig::from_file(path))?;
    if let Some(tls) = &web.tls {
        // Load the certificate now, so a bad one is a start-up error.
        crate::http::tls::acceptor(tls).map_err(|error| error.to_string())?;
    }
    Ok(web)
}

/// Names the file a reason is about.
fn in_file<T>(path: &Path, result: Result<T, String>) -> Result<T, String> {
    result.map_err(|reason| format!("{}: {reason}", path.display()))
}

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

fn http_urls(urls: &[String]) -> Result<Vec<String>, String> {
    urls.iter().map(|url| http_url(url)).collect()
}

/// An `http://` or `https://` URL with a host, without a trailing slash.
fn http_url(url: &str) -> Result<String, String> {
    let url = url.trim();
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{url:?} is not an http:// or https:// URL"))?;
    if rest.is_empty() || rest.starts_with('/') || rest.contains(char::is_whitespace) {
        return Err(format!("{url:?} has no host"));
    }
    Ok(url.trim_end_matches('/').to_string())
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
        let too_often = Layer::from_toml("stuck_scan_interval = \"10ms\"\n").expect("valid toml");
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
        let cases = [
            ("series_expiry = \"500ms\"", "series_expiry"),
            ("series_expiry = \"a day\"", "series_expiry"),
            ("ports = []", "ports"),
            ("ports = [0]", "ports"),
            ("idle_threshold = \"soon\"", "idle_threshold"),
            ("idle_threshold = \"10ms\"", "idle_threshold"),
            ("confirm_retransmits = 0", "confirm_retransmits"),
            ("confirm_retransmits = 16", "confirm_retransmits"),
            ("listen = \"localhost\"", "listen"),
            ("socket_map_entries = 5", "socket_map_entries"),
            ("ring_buffer_kib = 100", "ring_buffer_kib"),
            (
                "alertmanager_urls = [\"alertmanager:9093\"]",
                "alertmanager_urls",
            ),
            ("webhook_urls = [\"ftp://hooks.example/x\"]", "webhook_urls"),
            ("alert_ca_file = \"/no/such/ca.pem\"", "alert_ca_file"),
            ("services = { redis = \"x\" }", "services"),
        ];
        for (toml, setting) in cases {
            let layer = Layer::from_toml(toml).expect("valid toml");
            let error = Settings::resolve(&[layer])
                .expect_err("invalid")
                .to_string();
            assert!(error.starts_with(setting), "{toml}: {error}");
            assert!(!error.contains('\n'), "{error}");
        }
    }

    #[test]
    fn durations_out_of_range_say_the_range() {
        let error = |toml: &str| {
            Settings::resolve(&[Layer::from_toml(toml).expect("valid toml")])
                .expect_err("out of range")
                .to_string()
        };
        assert_eq!(
            error("idle_threshold = \"8d\""),
            "idle_threshold: \"8d\" is outside 1s..7days"
        );
        assert_eq!(
            error("at_risk_interval = \"10ms\""),
            "at_risk_interval: \"10ms\" is shorter than 1s"
        );
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
