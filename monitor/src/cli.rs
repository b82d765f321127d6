//! Command-line interface.

use std::{collections::BTreeSet, path::PathBuf};

use clap::{Args, Parser, Subcommand};
use monitor_common::defaults;

use crate::{
    capture::CaptureConfig,
    config::{ConfigError, Layer, Settings},
    failfast::FailFastMode,
    output::{Format, LogFormat},
};

#[derive(Debug, Parser)]
#[command(
    name = "connmon",
    version = crate::version::LONG,
    about = "Find the process behind TCP retransmit storms on idle pooled connections"
)]
pub struct Cli {
    /// Log lines on stderr: plain (one escaped line per event) or json (one
    /// object per line) [default: plain]. Findings on stdout are
    /// --output-format's.
    #[arg(
        long,
        global = true,
        env = "CONNMON_LOG_FORMAT",
        value_name = "plain|json",
        value_parser = LogFormat::parse
    )]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: detect retransmit storms on idle connections, name the
    /// process, and report them (JSON lines on stdout, HTTP API).
    Run(Box<RunArgs>),
    /// One look at the host: watched idle connections a middlebox has most
    /// likely forgotten (they will hang on next use), and the settings that
    /// make a hang long.
    Audit(AuditArgs),
    /// Stream retransmits, state changes, resets and socket errors of
    /// watched connections, each with the process that owns the socket.
    Trace(TraceArgs),
    /// A live view of a running daemon for the on-call engineer: storms in
    /// progress (process, container, destination, idle gap, time to
    /// give-up), recent ones, connections at risk, retransmits per process
    /// per second.
    Top(TopArgs),
    /// Write the man pages (connmon.1, connmon-run.1, ...) into a
    /// directory, or print a shell completion script, made from these flags.
    Generate(GenerateArgs),
}

/// How to reach a running daemon whose web config asks for TLS or basic
/// auth (`top`, `audit --daemon-url`).
#[derive(Debug, Args, Clone, Default)]
pub struct DaemonClientArgs {
    /// PEM CA bundle an https daemon's certificate is checked against
    /// [default: the bundled Mozilla roots].
    #[arg(long, value_name = "FILE", env = "CONNMON_DAEMON_CA_FILE")]
    pub daemon_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for a daemon that asks for one.
    #[arg(long, value_name = "FILE", requires = "daemon_key")]
    pub daemon_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "daemon_cert")]
    pub daemon_key: Option<PathBuf>,
    /// Basic auth user; the password is read from CONNMON_DAEMON_PASSWORD
    /// (a flag would show in ps).
    #[arg(long, value_name = "USER", env = "CONNMON_DAEMON_USER")]
    pub daemon_user: Option<String>,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// The daemon to show (https:// when its web config sets TLS).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9878")]
    pub daemon_url: String,
    #[command(flatten)]
    pub client: DaemonClientArgs,
    /// How often to refresh.
    #[arg(long, value_name = "DURATION", default_value = "2s")]
    pub interval: String,
    /// Print one screen (from two samples one interval apart) and exit;
    /// exit 1 when no daemon answers.
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[arg(value_enum)]
    pub what: Generated,
    /// Directory for the man pages (needed for `man`).
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Generated {
    /// Man pages, one per command, into --out-dir.
    Man,
    /// bash completion script, on stdout.
    Bash,
    /// zsh completion script, on stdout.
    Zsh,
    /// fish completion script, on stdout.
    Fish,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// Print JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
    /// Only show sockets in this network namespace: an inode number or a
    /// path such as /run/netns/NAME or /proc/PID/ns/net.
    #[arg(long, value_name = "INODE|PATH")]
    pub netns: Option<String>,
}

impl TraceArgs {
    pub fn format(&self) -> Format {
        if self.json {
            Format::Json
        } else {
            Format::Text
        }
    }
}

/// `connmon run` flags. Each also reads a `CONNMON_*` variable; both
/// override the `--config` file, which overrides the defaults.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML settings file (see README for the keys).
    #[arg(long, env = "CONNMON_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// TCP ports (local or remote) to watch, comma separated [default: 6379].
    #[arg(long, value_delimiter = ',', value_parser = parse_port, env = "CONNMON_PORTS")]
    pub ports: Option<Vec<u16>>,
    /// Watch every TCP port.
    #[arg(long, env = "CONNMON_ALL_PORTS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub all_ports: Option<bool>,
    /// No payload either way for this long makes a connection idle [default: 30s].
    #[arg(long, env = "CONNMON_IDLE_THRESHOLD", value_name = "DURATION")]
    pub idle_threshold: Option<String>,
    /// RTO retransmits without progress after idle that confirm a storm [default: 3].
    #[arg(long, env = "CONNMON_CONFIRM_RETRANSMITS", value_name = "N")]
    pub confirm_retransmits: Option<u32>,
    /// HTTP listen address for /metrics, /healthz, /readyz, /api/v1/storms [default: 0.0.0.0:9878].
    #[arg(long, env = "CONNMON_LISTEN", value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// Findings on stdout: json lines or text for people [default: json].
    /// (`--log-format` used to set this; it now formats the logs.)
    #[arg(long, env = "CONNMON_OUTPUT_FORMAT", value_enum)]
    pub output_format: Option<Format>,
    /// Sockets the kernel's socket table can hold [default: 65536].
    #[arg(long, env = "CONNMON_SOCKET_MAP_ENTRIES")]
    pub socket_map_entries: Option<u32>,
    /// Event ring buffer size in KiB, a power of two [default: 4096].
    #[arg(long, env = "CONNMON_RING_BUFFER_KIB")]
    pub ring_buffer_kib: Option<u32>,
    /// Name pods from the kubelet's log directory (e.g. /var/log/pods) [default: off].
    #[arg(long, env = "CONNMON_POD_METADATA_DIR", value_name = "DIR")]
    pub pod_metadata_dir: Option<PathBuf>,
    /// Push alerts to Alertmanager's v2 API at this base URL (repeat or comma separate).
    #[arg(
        long,
        value_delimiter = ',',
        env = "CONNMON_ALERTMANAGER_URL",
        value_name = "URL"
    )]
    pub alertmanager_url: Option<Vec<String>>,
    /// POST every finding as JSON to this webhook (repeat or comma separate).
    #[arg(
        long,
        value_delimiter = ',',
        env = "CONNMON_WEBHOOK_URL",
        value_name = "URL"
    )]
    pub webhook_url: Option<Vec<String>>,
    /// Runbook link for alerts (each alert links `#<alertname>`).
    #[arg(long, env = "CONNMON_RUNBOOK_URL", value_name = "URL")]
    pub runbook_url: Option<String>,
    /// This node's name in alerts [default: the hostname].
    #[arg(long, env = "CONNMON_NODE_NAME")]
    pub node_name: Option<String>,
    /// Abort the socket of each confirmed storm so the application fails now
    /// and reconnects, instead of hanging [default: off; bare flag: on].
    #[arg(long, env = "CONNMON_FAIL_FAST", value_enum, num_args = 0..=1, default_missing_value = "on")]
    pub fail_fast: Option<FailFastMode>,
    /// Idle timeout of the path to a network, CIDR=DURATION|PRESET (repeat);
    /// connections quiet for longer are reported at risk.
    #[arg(long, value_name = "CIDR=TIMEOUT")]
    pub path_timeout: Vec<String>,
    /// Idle timeout of every other path [default: 350s].
    #[arg(long, value_name = "TIMEOUT")]
    pub default_path_timeout: Option<String>,
    /// How often to look for idle connections at risk [default: 60s].
    #[arg(long, env = "CONNMON_AT_RISK_INTERVAL", value_name = "DURATION")]
    pub at_risk_interval: Option<String>,
    /// How often to look for watched connections whose data is stuck in
    /// the send queue: a peer that stopped reading, a local egress drop
    /// [default: 5s].
    #[arg(long, env = "CONNMON_STUCK_SCAN_INTERVAL", value_name = "DURATION")]
    pub stuck_scan_interval: Option<String>,
    /// How long a peer's receive window must stay shut, with data waiting,
    /// before the connection is reported as zero_window [default: 10s].
    #[arg(long, env = "CONNMON_ZERO_WINDOW_CONFIRM", value_name = "DURATION")]
    pub zero_window_confirm: Option<String>,
    /// Remove metric label sets (process, container, destination) that
    /// have not changed for this long [default: 24h].
    #[arg(long, env = "CONNMON_SERIES_EXPIRY", value_name = "DURATION")]
    pub series_expiry: Option<String>,
    /// TLS and basic auth for the HTTP endpoints: a Prometheus exporter
    /// web-config file (as node_exporter's --web.config.file).
    #[arg(long, env = "CONNMON_WEB_CONFIG_FILE", value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,
    /// PEM CA bundle that https alert and webhook URLs are checked against
    /// [default: the bundled Mozilla roots].
    #[arg(long, env = "CONNMON_ALERT_CA_FILE", value_name = "FILE")]
    pub alert_ca_file: Option<PathBuf>,
    /// Turn on the kernel's BPF run-time accounting for
    /// connmon_bpf_program_run_seconds_total while connmon runs. It costs
    /// every BPF program on the host two clock reads per run, so it is off
    /// unless asked for (or the node sets kernel.bpf_stats_enabled=1)
    /// [default: false].
    #[arg(long, env = "CONNMON_BPF_RUN_TIME_STATS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub bpf_run_time_stats: Option<bool>,
    /// Only watch sockets in this network namespace (one pod, or a test's
    /// stand-in for a node): an inode number or a path such as
    /// /run/netns/NAME or /proc/PID/ns/net [default: every namespace].
    #[arg(long, env = "CONNMON_NETNS", value_name = "INODE|PATH")]
    pub netns: Option<String>,
    /// A Prometheus scraping every node's connmon with the shipped fleet
    /// rules: the at-risk audits take each destination's path timeout from
    /// the whole fleet's evidence when it is shorter [default: off].
    #[arg(long, env = "CONNMON_PROMETHEUS_URL", value_name = "URL")]
    pub prometheus_url: Option<String>,
}

impl RunArgs {
    fn path_timeout_layer(&self) -> Option<std::collections::BTreeMap<String, String>> {
        if self.path_timeout.is_empty() && self.default_path_timeout.is_none() {
            return None;
        }
        let mut rules = std::collections::BTreeMap::new();
        if let Some(default) = &self.default_path_timeout {
            rules.insert("default".to_string(), default.clone());
        }
        for rule in &self.path_timeout {
            let (cidr, timeout) = rule.split_once('=').unwrap_or((rule.as_str(), ""));
            rules.insert(cidr.to_string(), timeout.to_string());
        }
        Some(rules)
    }

    /// Defaults, then the config file, then environment and flags
    /// (`log_format`: the global `--log-format`).
    pub fn settings(&self, log_format: Option<LogFormat>) -> Result<Settings, ConfigError> {
        let mut layers = Vec::new();
        if let Some(path) = &self.config {
            layers.push(Layer::from_file(path)?);
        }
        layers.push(Layer {
            ports: self.ports.clone(),
            all_ports: self.all_ports,
            idle_threshold: self.idle_threshold.clone(),
            confirm_retransmits: self.confirm_retransmits,
            listen: self.listen.clone(),
            output_format: self.output_format,
            log_format,
            socket_map_entries: self.socket_map_entries,
            ring_buffer_kib: self.ring_buffer_kib,
            services: None,
            pod_metadata_dir: self.pod_metadata_dir.clone(),
            alertmanager_urls: self.alertmanager_url.clone(),
            webhook_urls: self.webhook_url.clone(),
            runbook_url: self.runbook_url.clone(),
            node_name: self.node_name.clone(),
            fail_fast: self.fail_fast,
            path_timeouts: self.path_timeout_layer(),
            at_risk_interval: self.at_risk_interval.clone(),
            stuck_scan_interval: self.stuck_scan_interval.clone(),
            zero_window_confirm: self.zero_window_confirm.clone(),
            series_expiry: self.series_expiry.clone(),
            web_config_file: self.web_config_file.clone(),
            alert_ca_file: self.alert_ca_file.clone(),
            bpf_run_time_stats: self.bpf_run_time_stats,
            netns: self.netns.clone(),
            prometheus_url: self.prometheus_url.clone(),
        });
        Settings::resolve(&layers)
    }
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// TCP ports (local or remote) to audit, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = [defaults::WATCHED_PORT], value_parser = parse_port, env = "CONNMON_PORTS")]
    pub ports: Vec<u16>,
    /// Audit every TCP port.
    #[arg(long)]
    pub all_ports: bool,
    /// Idle timeout of the path to a network: CIDR=DURATION or CIDR=PRESET
    /// (aws-nat-gateway, aws-nlb, aws-vpc-endpoint: 350s; azure-lb: 240s;
    /// gcp-cloud-nat: 1200s). Repeat for several networks.
    #[arg(long, value_name = "CIDR=TIMEOUT")]
    pub path_timeout: Vec<String>,
    /// Idle timeout of every other path [default: 350s].
    #[arg(long, value_name = "TIMEOUT")]
    pub default_path_timeout: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// A running connmon to learn path timeouts from (its recent storms);
    /// skipped silently when none answers.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9878")]
    pub daemon_url: Option<String>,
    /// A Prometheus that scrapes the fleet's connmon instances with the
    /// shipped rules (its base URL, e.g. http://prometheus:9090): each
    /// destination's path timeout is at most the shortest idle gap that
    /// failed on any node [default: off].
    #[arg(long, value_name = "URL")]
    pub prometheus_url: Option<String>,
    #[command(flatten)]
    pub client: DaemonClientArgs,
}

impl AuditArgs {
    pub fn path_timeouts(&self) -> Result<crate::risk::PathTimeouts, String> {
        let default = match &self.default_path_timeout {
            Some(text) => crate::risk::parse_timeout(text)
                .map_err(|e| format!("--default-path-timeout: {e}"))?,
            None => crate::risk::DEFAULT_PATH_TIMEOUT,
        };
        let mut paths = crate::risk::PathTimeouts::new(default);
        for rule in &self.path_timeout {
            paths
                .add_rule(rule)
                .map_err(|e| format!("--path-timeout: {e}"))?;
        }
        Ok(paths)
    }
}

/// How the kernel side is set up.
#[derive(Debug, Args, Clone)]
pub struct CaptureArgs {
    /// TCP ports (local or remote) to watch, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = [defaults::WATCHED_PORT], value_parser = parse_port, env = "CONNMON_PORTS")]
    pub ports: Vec<u16>,
    /// Watch every TCP port (overrides --ports).
    #[arg(long, env = "CONNMON_ALL_PORTS")]
    pub all_ports: bool,
    /// Sockets the kernel's socket table can hold.
    #[arg(long, default_value_t = defaults::SOCKET_MAP_ENTRIES, value_parser = clap::value_parser!(u32).range(1024..=4_194_304), env = "CONNMON_SOCKET_MAP_ENTRIES")]
    pub socket_map_entries: u32,
    /// Event ring buffer size in KiB (a power of two, at least 64).
    #[arg(long, default_value_t = 1024, value_parser = parse_ring_kib, env = "CONNMON_RING_BUFFER_KIB")]
    pub ring_buffer_kib: u32,
}

impl CaptureArgs {
    pub fn to_config(&self, idle_threshold_ns: u64) -> CaptureConfig {
        CaptureConfig {
            watched_ports: self.ports.iter().copied().collect::<BTreeSet<u16>>(),
            watch_all_ports: self.all_ports,
            // The trace stream shows every state change.
            every_state_change: true,
            idle_threshold_ns,
            socket_map_entries: self.socket_map_entries,
            ring_buffer_bytes: self.ring_buffer_kib * 1024,
            fail_fast: false,
        }
    }
}

fn parse_port(value: &str) -> Result<u16, String> {
    match value.trim().parse::<u16>() {
        Ok(0) => Err("port 0 is not a port".into()),
        Ok(port) => Ok(port),
        Err(_) => Err(format!("{value:?} is not a TCP port (1-65535)")),
    }
}

fn parse_ring_kib(value: &str) -> Result<u32, String> {
    let kib: u32 = value
        .trim()
        .parse()
        .map_err(|_| format!("{value:?} is not a number of KiB"))?;
    if !(64..=1_048_576).contains(&kib) || !kib.is_power_of_two() {
        return Err(format!(
            "{kib} KiB: the ring buffer must be a power of two between 64 and 1048576 KiB"
        ));
    }
    Ok(kib)
}

/// Resolves `--netns`: an inode number, or a namespace file to stat.
pub fn resolve_netns(value: &str) -> Result<u32, String> {
    if let Ok(inode) = value.parse::<u32>() {
        return Ok(inode);
    }
    let path = PathBuf::from(value);
    let metadata = std::fs::metadata(&path).map_err(|error| format!("--netns {value}: {error}"))?;
    let inode = std::os::unix::fs::MetadataExt::ino(&metadata);
    u32::try_from(inode)
        .map_err(|_| format!("--netns {value}: inode {inode} is not a namespace inode"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("connmon").chain(args.iter().copied()))
    }

    #[test]
    fn trace_defaults_to_redis() {
        let Command::Trace(args) = parse(&["trace"]).expect("valid").command else {
            panic!()
        };
        assert_eq!(args.capture.ports, vec![6379]);
        assert!(!args.json);
    }

    #[test]
    fn ports_are_a_list() {
        let Command::Trace(args) = parse(&["trace", "--ports", "6379,5432, 3306"])
            .expect("valid")
            .command
        else {
            panic!()
        };
        assert_eq!(args.capture.ports, vec![6379, 5432, 3306]);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for bad in [
            &["trace", "--ports", "0"][..],
            &["trace", "--ports", "70000"],
            &["trace", "--ports", "redis"],
            &["trace", "--ring-buffer-kib", "100"],
            &["trace", "--socket-map-entries", "10"],
            &["trace", "--bogus"],
        ] {
            let error = parse(bad).expect_err("invalid");
            assert_eq!(error.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn run_flags_override_the_config_file() {
        let dir = std::env::temp_dir().join(format!("connmon-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("connmon.toml");
        std::fs::write(&file, "ports = [5432]\nidle_threshold = \"5m\"\n").expect("write");
        let file_arg = file.to_string_lossy().into_owned();
        let Command::Run(args) = parse(&["run", "--config", &file_arg, "--idle-threshold", "10s"])
            .expect("valid")
            .command
        else {
            panic!()
        };
        let settings = args.settings(None).expect("valid settings");
        assert_eq!(
            settings.ports.iter().copied().collect::<Vec<_>>(),
            vec![5432]
        );
        assert_eq!(settings.idle_threshold, std::time::Duration::from_secs(10));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn log_format_is_global_and_the_old_findings_flag_says_what_replaced_it() {
        let cli =
            parse(&["run", "--log-format", "json", "--output-format", "text"]).expect("valid");
        assert_eq!(cli.log_format, Some(LogFormat::Json));
        let Command::Run(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.output_format, Some(Format::Text));
        let settings = args.settings(cli.log_format).expect("valid");
        assert_eq!(settings.log_format, LogFormat::Json);
        assert_eq!(settings.output_format, Format::Text);
        let cli = parse(&["--log-format", "json", "trace"]).expect("valid");
        assert_eq!(cli.log_format, Some(LogFormat::Json));
        let error = parse(&["run", "--log-format", "text"]).expect_err("old flag");
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("--output-format"), "{error}");
    }

    #[test]
    fn version_names_the_revision() {
        let error = parse(&["--version"]).expect_err("prints the version");
        let text = error.to_string();
        assert!(text.contains(crate::version::VERSION), "{text}");
        assert!(
            text.contains(&format!("revision {}", crate::version::REVISION)),
            "{text}"
        );
    }

    #[test]
    fn netns_accepts_inodes_and_paths() {
        assert_eq!(resolve_netns("4026531840"), Ok(4026531840));
        assert!(resolve_netns("/proc/self/ns/net").is_ok());
        assert!(resolve_netns("/no/such/netns").is_err());
    }
}
