//! Command-line interface.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use clap::{Args, Parser, Subcommand};
use monitor_common::defaults;

use crate::{
    capture::CaptureConfig,
    config::{ConfigError, Layer, SOCKET_MAP_ENTRIES_RANGE, Settings, parse_port},
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

/// `connmon run` flags: `--config`, each setting of the table in
/// `config.rs` (which also reads a `CONNMON_*` variable; both override the
/// file, which overrides the defaults), and the path timeouts.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML settings file (see README for the keys).
    #[arg(long, env = "CONNMON_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub flags: Layer,
    #[command(flatten)]
    pub paths: PathTimeoutArgs,
}

impl RunArgs {
    /// Defaults, then the config file, then environment and flags
    /// (`log_format`: the global `--log-format`).
    pub fn settings(&self, log_format: Option<LogFormat>) -> Result<Settings, ConfigError> {
        let mut layers = Vec::new();
        if let Some(path) = &self.config {
            layers.push(Layer::from_file(path)?);
        }
        layers.push(Layer {
            log_format,
            path_timeouts: self.paths.as_table(),
            ..self.flags.clone()
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
    #[command(flatten)]
    pub paths: PathTimeoutArgs,
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

/// The idle timeouts of the paths to destination networks (`run`,
/// `audit`); connections quiet for longer are at risk.
#[derive(Debug, Args, Clone, Default)]
pub struct PathTimeoutArgs {
    /// Idle timeout of the path to a network: CIDR=DURATION or CIDR=PRESET
    /// (aws-nat-gateway, aws-nlb, aws-vpc-endpoint: 350s; azure-lb: 240s;
    /// gcp-cloud-nat: 1200s). Repeat for several networks.
    #[arg(long, value_name = "CIDR=TIMEOUT")]
    pub path_timeout: Vec<String>,
    /// Idle timeout of every other path [default: 350s].
    #[arg(long, value_name = "TIMEOUT")]
    pub default_path_timeout: Option<String>,
}

impl PathTimeoutArgs {
    /// The flags as the config file's `[path_timeouts]` table (`run`).
    fn as_table(&self) -> Option<BTreeMap<String, String>> {
        if self.path_timeout.is_empty() && self.default_path_timeout.is_none() {
            return None;
        }
        let mut rules = BTreeMap::new();
        if let Some(default) = &self.default_path_timeout {
            rules.insert("default".to_string(), default.clone());
        }
        for rule in &self.path_timeout {
            let (cidr, timeout) = rule.split_once('=').unwrap_or((rule.as_str(), ""));
            rules.insert(cidr.to_string(), timeout.to_string());
        }
        Some(rules)
    }

    /// The flags parsed, each error naming its flag (`audit`).
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
    #[arg(long, default_value_t = defaults::SOCKET_MAP_ENTRIES, value_parser = parse_socket_map_entries, env = "CONNMON_SOCKET_MAP_ENTRIES")]
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

fn parse_socket_map_entries(value: &str) -> Result<u32, String> {
    let entries: u32 = value
        .trim()
        .parse()
        .map_err(|_| format!("{value:?} is not a number of sockets"))?;
    crate::config::within(&entries, SOCKET_MAP_ENTRIES_RANGE)
}

fn parse_ring_kib(value: &str) -> Result<u32, String> {
    let kib: u32 = value
        .trim()
        .parse()
        .map_err(|_| format!("{value:?} is not a number of KiB"))?;
    crate::config::ring_buffer_kib(&kib)
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
        assert_eq!(args.flags.output_format, Some(Format::Text));
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

    /// A scratch directory, removed even when the test fails.
    struct ScratchDir(PathBuf);

    impl ScratchDir {
        fn new(tag: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("connmon-cli-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("scratch dir");
            Self(dir)
        }

        fn path(&self, name: &str) -> String {
            self.0.join(name).to_string_lossy().into_owned()
        }
    }

    impl Drop for ScratchDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn run_settings(args: &[&str]) -> Settings {
        let Command::Run(run) = parse(&[&["run"], args].concat()).expect("valid").command else {
            panic!("not run")
        };
        run.settings(None).expect("valid settings")
    }

    /// One setting of each kind (duration, size, list, bool, path): the
    /// file overrides the default, a flag overrides the file.
    #[test]
    fn run_flags_override_the_file_for_each_kind_of_setting() {
        use std::time::Duration;
        let dir = ScratchDir::new("kinds");
        for pods in ["pods-file", "pods-flag"] {
            std::fs::create_dir_all(dir.path(pods)).expect("dir");
        }
        let file = dir.path("connmon.toml");
        std::fs::write(
            &file,
            format!(
                "idle_threshold = \"5m\"\nring_buffer_kib = 128\nports = [5432]\n\
                 all_ports = true\npod_metadata_dir = {:?}\n",
                dir.path("pods-file")
            ),
        )
        .expect("write");
        let defaults = Settings::default();
        assert_eq!(defaults.idle_threshold, Duration::from_secs(30));
        assert_eq!(defaults.ring_buffer_kib, defaults::RING_BUFFER_KIB);
        assert_eq!(defaults.ports, BTreeSet::from([defaults::WATCHED_PORT]));
        assert!(!defaults.all_ports);
        assert_eq!(defaults.pod_metadata_dir, None);

        let from_file = run_settings(&["--config", &file]);
        assert_eq!(from_file.idle_threshold, Duration::from_secs(300));
        assert_eq!(from_file.ring_buffer_kib, 128);
        assert_eq!(from_file.ports, BTreeSet::from([5432]));
        assert!(from_file.all_ports);
        assert_eq!(
            from_file.pod_metadata_dir,
            Some(PathBuf::from(dir.path("pods-file")))
        );

        let pods_flag = dir.path("pods-flag");
        let from_flags = run_settings(&[
            "--config",
            &file,
            "--idle-threshold",
            "10s",
            "--ring-buffer-kib",
            "256",
            "--ports",
            "3306,11211",
            "--all-ports",
            "false",
            "--pod-metadata-dir",
            &pods_flag,
        ]);
        assert_eq!(from_flags.idle_threshold, Duration::from_secs(10));
        assert_eq!(from_flags.ring_buffer_kib, 256);
        assert_eq!(from_flags.ports, BTreeSet::from([3306, 11211]));
        assert!(!from_flags.all_ports);
        assert_eq!(from_flags.pod_metadata_dir, Some(PathBuf::from(pods_flag)));
    }

    /// The `run` flags, each with its help text.
    fn run_flags() -> Vec<clap::Arg> {
        let command = <Cli as clap::CommandFactory>::command();
        let run = command.find_subcommand("run").expect("run").clone();
        run.get_arguments()
            .filter(|arg| arg.get_long().is_some_and(|long| long != "help"))
            .cloned()
            .collect()
    }

    /// A `[default: X]` in a flag's help is what the daemon uses: given
    /// as the flag's value, X resolves to the defaults. Defaults that are
    /// not a value are listed here.
    #[test]
    fn each_default_the_help_states_is_the_default() {
        const DESCRIBED: &[&str] = &[
            "off",
            "off; bare flag: on",
            "the hostname",
            "every namespace",
            "the bundled Mozilla roots",
        ];
        let mut checked = 0;
        for arg in run_flags() {
            let long = arg.get_long().expect("a flag");
            let help = arg
                .get_long_help()
                .or(arg.get_help())
                .map(ToString::to_string)
                .unwrap_or_default();
            let Some((_, rest)) = help.split_once("[default: ") else {
                continue;
            };
            let stated = rest.split_once(']').expect("closing bracket").0;
            if DESCRIBED.contains(&stated) {
                continue;
            }
            let flag = format!("--{long}");
            assert_eq!(
                run_settings(&[&flag, stated]),
                Settings::default(),
                "{flag} states [default: {stated}]"
            );
            checked += 1;
        }
        assert!(checked >= 10, "only {checked} stated defaults found");
    }

    /// Every setting has a `CONNMON_*` variable named after its flag (the
    /// path timeouts, several values to a flag, have none).
    #[test]
    fn each_run_flag_has_its_environment_variable() {
        for arg in run_flags() {
            let long = arg.get_long().expect("a flag");
            if matches!(long, "path-timeout" | "default-path-timeout") {
                continue;
            }
            let expected = format!("CONNMON_{}", long.to_uppercase().replace('-', "_"));
            assert_eq!(
                arg.get_env().and_then(|env| env.to_str()),
                Some(expected.as_str()),
                "--{long}"
            );
        }
    }

    /// The README's settings reference names every flag, variable and
    /// TOML key of `run`.
    #[test]
    fn the_readme_lists_every_setting() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split_once("### Settings of `connmon run`")
            .expect("settings section")
            .1;
        let section = section.split_once("\n### ").map_or(section, |(it, _)| it);
        let mut names: Vec<String> = Vec::new();
        for arg in run_flags() {
            names.push(format!("`--{}", arg.get_long().expect("a flag")));
            if let Some(env) = arg.get_env() {
                names.push(format!("`{}`", env.to_string_lossy()));
            }
        }
        for key in crate::config::KEYS {
            names.push(if section.contains(&format!("`[{key}]`")) {
                format!("`[{key}]`")
            } else {
                format!("`{key} =")
            });
        }
        let missing: Vec<&String> = names
            .iter()
            .filter(|name| !section.contains(name.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "README settings section lacks {missing:?}"
        );
    }
}
