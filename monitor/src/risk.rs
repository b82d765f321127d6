//! Before the hang: which idle connections a middlebox has already
//! forgotten, and which host settings make a hang long. Pure: the audit
//! command and the daemon feed it what sock_diag and /proc/sys say.

use std::{net::IpAddr, str::FromStr, time::Duration};

use ipnet::IpNet;
use serde::Serialize;

use crate::detect::giveup::model_timeout_ns;

/// Documented idle timeouts of common middleboxes.
pub const PRESETS: &[(&str, u64)] = &[
    ("aws-nat-gateway", 350),
    ("aws-nlb", 350),
    ("aws-vpc-endpoint", 350),
    ("azure-lb", 240),
    ("gcp-cloud-nat", 1200),
];

/// The default path timeout: AWS's 350 s, the shortest common one besides
/// Azure's (configure `azure-lb` there).
pub const DEFAULT_PATH_TIMEOUT: Duration = Duration::from_secs(350);

/// A duration (`"350s"`, `"4m"`) or a preset name.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Some((_, seconds)) = PRESETS.iter().find(|(name, _)| *name == text) {
        return Ok(Duration::from_secs(*seconds));
    }
    let duration = humantime::parse_duration(text).map_err(|_| {
        let names: Vec<&str> = PRESETS.iter().map(|(name, _)| *name).collect();
        format!(
            "{text:?} is neither a duration (e.g. 350s) nor a preset ({})",
            names.join(", ")
        )
    })?;
    if duration < Duration::from_secs(1) {
        return Err(format!("{text:?} is shorter than a second"));
    }
    Ok(duration)
}

/// Idle timeouts of the paths to destination networks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathTimeouts {
    rules: Vec<(IpNet, Duration)>,
    default: Duration,
}

impl Default for PathTimeouts {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            default: DEFAULT_PATH_TIMEOUT,
        }
    }
}

impl PathTimeouts {
    pub fn new(default: Duration) -> Self {
        Self {
            rules: Vec::new(),
            default,
        }
    }

    /// Adds `CIDR=DURATION|PRESET`.
    pub fn add_rule(&mut self, rule: &str) -> Result<(), String> {
        let (cidr, timeout) = rule
            .split_once('=')
            .ok_or_else(|| format!("{rule:?} is not CIDR=TIMEOUT"))?;
        let net = IpNet::from_str(cidr.trim())
            .map_err(|_| format!("{cidr:?} is not a CIDR such as 10.0.0.0/8"))?;
        self.rules.push((net, parse_timeout(timeout)?));
        Ok(())
    }

    /// The most specific rule for `ip`, else the default. IPv4-mapped IPv6
    /// addresses match IPv4 rules.
    pub fn for_addr(&self, ip: IpAddr) -> Duration {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.rules
            .iter()
            .filter(|(net, _)| net.contains(&ip))
            .max_by_key(|(net, _)| net.prefix_len())
            .map_or(self.default, |(_, timeout)| *timeout)
    }
}

/// A connection as sock_diag sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionView {
    pub last_data_sent: Option<Duration>,
    pub last_data_recv: Option<Duration>,
    pub last_ack_recv: Option<Duration>,
    pub keepalive_in: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Assessment {
    /// No payload either way for this long.
    pub idle_seconds: u64,
    /// Nothing at all received (not even a keepalive ACK) for this long.
    pub quiet_seconds: u64,
    pub keepalive: bool,
    pub keepalive_next_seconds: Option<u64>,
    pub path_timeout_seconds: u64,
    /// The path has most likely forgotten the flow: the next use hangs.
    pub at_risk: bool,
}

fn min_known(values: &[Option<Duration>]) -> Duration {
    values.iter().flatten().min().copied().unwrap_or_default()
}

/// A connection is at risk when nothing crossed the path for longer than
/// the path keeps an idle flow: payload (`idle`) and keepalive ACKs alike
/// (`quiet`). A keepalive that fires sooner keeps `quiet` below the timeout.
pub fn assess(view: &ConnectionView, path_timeout: Duration) -> Assessment {
    let idle = min_known(&[view.last_data_sent, view.last_data_recv]);
    let quiet = min_known(&[view.last_data_sent, view.last_data_recv, view.last_ack_recv]);
    Assessment {
        idle_seconds: idle.as_secs(),
        quiet_seconds: quiet.as_secs(),
        keepalive: view.keepalive_in.is_some(),
        keepalive_next_seconds: view.keepalive_in.map(|d| d.as_secs()),
        path_timeout_seconds: path_timeout.as_secs(),
        at_risk: quiet > path_timeout,
    }
}

/// The fix for an at-risk connection, one line.
pub fn fix(assessment: &Assessment, service: Option<&str>) -> String {
    let keepidle = (assessment.path_timeout_seconds / 2).max(10);
    let redis = if service == Some("redis") {
        "Redis `tcp-keepalive 60` on the server, or "
    } else {
        ""
    };
    if assessment.keepalive {
        format!(
            "keepalive is on but fires too late for a {}s path timeout: set TCP_KEEPIDLE below it (e.g. {keepidle}s)",
            assessment.path_timeout_seconds
        )
    } else {
        format!(
            "enable keepalive below the {}s path timeout: {redis}client SO_KEEPALIVE with TCP_KEEPIDLE={keepidle}s; or TCP_USER_TIMEOUT to fail fast",
            assessment.path_timeout_seconds
        )
    }
}

/// Per-namespace kernel settings that decide how long a hang lasts and when
/// keepalive starts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HostSettings {
    pub tcp_retries2: Option<u8>,
    pub tcp_keepalive_time: Option<u64>,
    pub tcp_keepalive_intvl: Option<u64>,
    pub tcp_keepalive_probes: Option<u64>,
}

/// One setting, its value and what it means in seconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SettingEffect {
    pub setting: &'static str,
    pub value: u64,
    pub effect_seconds: f64,
    pub effect: String,
}

impl HostSettings {
    /// Reads `/proc/sys/net/ipv4/*` of the calling thread's namespace.
    pub fn read() -> Self {
        let read = |name: &str| -> Option<u64> {
            std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        Self {
            tcp_retries2: read("tcp_retries2").and_then(|v| u8::try_from(v).ok()),
            tcp_keepalive_time: read("tcp_keepalive_time"),
            tcp_keepalive_intvl: read("tcp_keepalive_intvl"),
            tcp_keepalive_probes: read("tcp_keepalive_probes"),
        }
    }

    /// What each setting does to an idle connection whose path forgot it,
    /// given the shortest path timeout in use.
    pub fn effects(&self, shortest_path_timeout: Duration) -> Vec<SettingEffect> {
        let mut effects = Vec::new();
        if let Some(retries2) = self.tcp_retries2 {
            let hang = model_timeout_ns(retries2) as f64 / 1e9;
            effects.push(SettingEffect {
                setting: "net.ipv4.tcp_retries2",
                value: u64::from(retries2),
                effect_seconds: hang,
                effect: format!("a request on a dead connection hangs about {hang:.0}s before the kernel gives up"),
            });
        }
        if let Some(time) = self.tcp_keepalive_time {
            let late = time > shortest_path_timeout.as_secs();
            effects.push(SettingEffect {
                setting: "net.ipv4.tcp_keepalive_time",
                value: time,
                effect_seconds: time as f64,
                effect: if late {
                    format!(
                        "sockets with SO_KEEPALIVE but no TCP_KEEPIDLE send their first probe after {time}s, after a {}s path has forgotten them",
                        shortest_path_timeout.as_secs()
                    )
                } else {
                    format!("keepalive probes start after {time}s idle, within the path timeout")
                },
            });
        }
        if let (Some(interval), Some(probes)) =
            (self.tcp_keepalive_intvl, self.tcp_keepalive_probes)
        {
            effects.push(SettingEffect {
                setting: "net.ipv4.tcp_keepalive_intvl x tcp_keepalive_probes",
                value: interval * probes,
                effect_seconds: (interval * probes) as f64,
                effect: format!(
                    "a dead peer is detected {}s after the first unanswered probe",
                    interval * probes
                ),
            });
        }
        effects
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Option<Duration> {
        Some(Duration::from_secs(s))
    }

    #[test]
    fn presets_and_durations_parse() {
        assert_eq!(
            parse_timeout("aws-nat-gateway"),
            Ok(Duration::from_secs(350))
        );
        assert_eq!(parse_timeout("azure-lb"), Ok(Duration::from_secs(240)));
        assert_eq!(
            parse_timeout("gcp-cloud-nat"),
            Ok(Duration::from_secs(1200))
        );
        assert_eq!(parse_timeout("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_timeout("soon").expect_err("bad").contains("preset"));
    }

    #[test]
    fn the_most_specific_cidr_wins() {
        let mut paths = PathTimeouts::new(Duration::from_secs(350));
        paths.add_rule("10.0.0.0/8=azure-lb").expect("rule");
        paths.add_rule("10.1.0.0/16=gcp-cloud-nat").expect("rule");
        paths.add_rule("fd00::/8=60s").expect("rule");
        assert_eq!(
            paths.for_addr("10.2.3.4".parse().expect("ip")),
            Duration::from_secs(240)
        );
        assert_eq!(
            paths.for_addr("10.1.3.4".parse().expect("ip")),
            Duration::from_secs(1200)
        );
        assert_eq!(
            paths.for_addr("::ffff:10.1.3.4".parse().expect("ip")),
            Duration::from_secs(1200)
        );
        assert_eq!(
            paths.for_addr("fd00:77::2".parse().expect("ip")),
            Duration::from_secs(60)
        );
        assert_eq!(
            paths.for_addr("192.0.2.1".parse().expect("ip")),
            Duration::from_secs(350)
        );
        assert!(paths.add_rule("10.0.0.0/8").is_err());
        assert!(paths.add_rule("nonsense=5s").is_err());
    }

    #[test]
    fn idle_past_the_path_timeout_without_keepalive_is_at_risk() {
        let view = ConnectionView {
            last_data_sent: secs(400),
            last_data_recv: secs(401),
            last_ack_recv: secs(400),
            keepalive_in: None,
        };
        let assessment = assess(&view, Duration::from_secs(350));
        assert!(assessment.at_risk);
        assert_eq!(
            (assessment.idle_seconds, assessment.quiet_seconds),
            (400, 400)
        );
        assert!(fix(&assessment, Some("redis")).contains("tcp-keepalive"));
    }

    #[test]
    fn keepalive_acks_keep_an_idle_connection_safe() {
        // No payload for an hour, but a keepalive probe was ACKed 50 s ago.
        let view = ConnectionView {
            last_data_sent: secs(3600),
            last_data_recv: secs(3600),
            last_ack_recv: secs(50),
            keepalive_in: secs(10),
        };
        let assessment = assess(&view, Duration::from_secs(350));
        assert!(!assessment.at_risk);
        assert!(assessment.keepalive);
        assert_eq!(assessment.idle_seconds, 3600);
    }

    #[test]
    fn recently_used_is_safe() {
        let view = ConnectionView {
            last_data_sent: secs(5),
            last_data_recv: secs(5),
            last_ack_recv: secs(5),
            keepalive_in: None,
        };
        assert!(!assess(&view, Duration::from_secs(350)).at_risk);
    }

    #[test]
    fn host_settings_say_how_long_a_hang_lasts() {
        let host = HostSettings {
            tcp_retries2: Some(15),
            tcp_keepalive_time: Some(7200),
            tcp_keepalive_intvl: Some(75),
            tcp_keepalive_probes: Some(9),
        };
        let effects = host.effects(Duration::from_secs(350));
        assert_eq!(effects[0].effect_seconds.round(), 925.0);
        assert!(
            effects[1]
                .effect
                .contains("after a 350s path has forgotten")
        );
        assert_eq!(effects[2].value, 675);
    }
}
