//! `connmon top`: a live view for the on-call engineer on a node, drawn
//! from a running daemon's API (`/api/v1/storms`, `/metrics`): storms in
//! progress with process, container, destination, idle gap and time to
//! give-up; recent ones; connections at risk; retransmits per process per
//! second. It says so when no daemon answers, and keeps asking.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    time::{Duration, Instant, SystemTime},
};

use serde_json::Value;

use crate::{cli::TopArgs, daemon_client::DaemonClient, event::Role, output::escape};

/// One look at the daemon.
struct Sample {
    storms: Value,
    metrics: String,
    at: Instant,
}

pub async fn run(args: TopArgs) -> anyhow::Result<()> {
    let interval = humantime::parse_duration(&args.interval)
        .ok()
        .filter(|interval| *interval >= Duration::from_millis(100))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--interval {:?}: a duration of 100ms or more",
                args.interval
            )
        })?;
    let client = std::sync::Arc::new(
        DaemonClient::new(&args.daemon_url, &args.client, Duration::from_secs(2))
            .map_err(|error| anyhow::anyhow!(error))?,
    );
    let url = client.url().to_string();
    let mut previous: Option<Sample> = None;
    let mut stop = std::pin::pin!(crate::shutdown::signal());
    loop {
        let fetched = {
            let client = client.clone();
            tokio::task::spawn_blocking(move || fetch(&client)).await?
        };
        let screen = match fetched {
            // One screen for scripts still shows rates: a second sample
            // one interval later.
            Ok(sample) if args.once && previous.is_none() => {
                previous = Some(sample);
                tokio::time::sleep(interval).await;
                continue;
            }
            Ok(sample) => {
                let screen = render(&url, &sample, previous.as_ref(), SystemTime::now());
                previous = Some(sample);
                screen
            }
            Err(error) if args.once => {
                anyhow::bail!("no connmon daemon answers at {url} ({error})")
            }
            Err(error) => {
                previous = None;
                format!(
                    "connmon top: no connmon daemon answers at {url} ({error}); asking again every {}\n",
                    humantime::format_duration(interval)
                )
            }
        };
        let mut out = std::io::stdout().lock();
        if !args.once {
            // Home and clear: one screen, redrawn.
            write!(out, "\x1b[H\x1b[2J")?;
        }
        write!(out, "{screen}")?;
        out.flush()?;
        drop(out);
        if args.once {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = &mut stop => return Ok(()),
        }
    }
}

fn fetch(client: &DaemonClient) -> Result<Sample, String> {
    let storms = serde_json::from_str(&client.get("/api/v1/storms")?)
        .map_err(|error| format!("/api/v1/storms: {error}"))?;
    let metrics = client.get("/metrics")?;
    Ok(Sample {
        storms,
        metrics,
        at: Instant::now(),
    })
}

/// A text cell: control characters escaped (process names are chosen by
/// whoever runs the process), `-` when absent.
fn cell(value: &Value) -> String {
    match value {
        Value::String(text) if !text.is_empty() => escape::control(text).into_owned(),
        Value::Number(number) => number.to_string(),
        _ => "-".to_string(),
    }
}

fn destination(record: &Value) -> String {
    cell(Role::from_name(record["role"].as_str()).destination(&record["local"], &record["remote"]))
}

fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |s| format!("{:.0}s", s.max(0.0)))
}

/// Seconds until the kernel gives up on a storm in progress, now.
fn gives_up_in(record: &Value, now: SystemTime) -> Option<f64> {
    let total = record["gives_up_in_seconds"].as_f64()?;
    let confirmed = humantime::parse_rfc3339(record["confirmed_at"].as_str()?).ok()?;
    let since = now.duration_since(confirmed).unwrap_or_default();
    Some(total - since.as_secs_f64())
}

/// A table column: its title, width and alignment. Each table's header
/// and rows are drawn from one list of columns, so they line up.
struct Column {
    title: &'static str,
    width: usize,
    right: bool,
}

const fn left(title: &'static str, width: usize) -> Column {
    Column {
        title,
        width,
        right: false,
    }
}

const fn right(title: &'static str, width: usize) -> Column {
    Column {
        title,
        width,
        right: true,
    }
}

const STORM_COLUMNS: [Column; 7] = [
    left("PROCESS", 16),
    right("PID", 8),
    left("CONTAINER", 12),
    left("DESTINATION", 24),
    right("IDLE", 6),
    right("RETRANS", 8),
    right("GIVES UP IN", 12),
];
const RECENT_COLUMNS: [Column; 7] = [
    left("TIME", 24),
    left("EVENT", 18),
    left("PROCESS", 16),
    right("PID", 8),
    left("DESTINATION", 24),
    right("IDLE", 6),
    left("OUTCOME", 16),
];
const AT_RISK_COLUMNS: [Column; 4] = [
    left("PROCESS", 16),
    left("CONTAINER", 12),
    left("DESTINATION", 24),
    right("CONNECTIONS", 11),
];
const RATE_COLUMNS: [Column; 4] = [
    left("PROCESS", 16),
    left("CONTAINER", 12),
    left("DESTINATION", 24),
    right("PER SECOND", 10),
];

/// One line of a table: `cells` padded to their columns.
fn row<const N: usize>(screen: &mut String, columns: &[Column; N], cells: [String; N]) {
    let cells: Vec<String> = columns
        .iter()
        .zip(cells)
        .map(|(column, cell)| {
            let width = column.width;
            if column.right {
                format!("{cell:>width$}")
            } else {
                format!("{cell:<width$}")
            }
        })
        .collect();
    let _ = writeln!(screen, "{}", cells.join(" "));
}

/// A table's header line.
fn header<const N: usize>(screen: &mut String, columns: &[Column; N]) {
    row(
        screen,
        columns,
        columns.each_ref().map(|column| column.title.to_string()),
    );
}

fn render(url: &str, sample: &Sample, previous: Option<&Sample>, now: SystemTime) -> String {
    let mut screen = String::new();
    let _ = writeln!(
        screen,
        "connmon top: {url} at {} (Ctrl-C quits)\n",
        humantime::format_rfc3339_seconds(now)
    );
    let records = |key: &str| sample.storms[key].as_array().cloned().unwrap_or_default();
    let active = records("active");
    let _ = writeln!(screen, "STORMS IN PROGRESS ({})", active.len());
    header(&mut screen, &STORM_COLUMNS);
    for record in &active {
        row(
            &mut screen,
            &STORM_COLUMNS,
            [
                cell(&record["comm"]),
                cell(&record["pid"]),
                crate::attribution::container::short_id(&cell(&record["container_id"])),
                destination(record),
                seconds(record["idle_seconds"].as_f64()),
                cell(&record["retransmits"]),
                seconds(gives_up_in(record, now)),
            ],
        );
    }
    let recent = records("recent");
    let _ = writeln!(screen, "\nRECENT ({})", recent.len());
    header(&mut screen, &RECENT_COLUMNS);
    for record in recent.iter().take(10) {
        row(
            &mut screen,
            &RECENT_COLUMNS,
            [
                cell(&record["time"]),
                cell(&record["event"]),
                cell(&record["comm"]),
                cell(&record["pid"]),
                destination(record),
                seconds(record["idle_seconds"].as_f64()),
                cell(&record["outcome"]),
            ],
        );
    }
    let at_risk = samples(&sample.metrics, "connmon_idle_connections_at_risk");
    let _ = writeln!(
        screen,
        "\nCONNECTIONS AT RISK (idle past their path's timeout)"
    );
    header(&mut screen, &AT_RISK_COLUMNS);
    for (labels, count) in at_risk.iter().filter(|(_, count)| *count > 0.0) {
        row(
            &mut screen,
            &AT_RISK_COLUMNS,
            [
                label(labels, "process"),
                label(labels, "container"),
                label(labels, "destination"),
                count.to_string(),
            ],
        );
    }
    let _ = writeln!(screen, "\nRETRANSMITS PER SECOND BY PROCESS");
    header(&mut screen, &RATE_COLUMNS);
    match previous {
        None => {
            let _ = writeln!(screen, "(from the next refresh on)");
        }
        Some(previous) => {
            for ((process, container, destination), rate) in
                retransmit_rates(sample, previous).into_iter().take(15)
            {
                row(
                    &mut screen,
                    &RATE_COLUMNS,
                    [process, container, destination, format!("{rate:.1}")],
                );
            }
        }
    }
    screen
}

type Labels = BTreeMap<String, String>;

fn label(labels: &Labels, name: &str) -> String {
    labels
        .get(name)
        .filter(|value| !value.is_empty())
        .map_or_else(
            || "-".to_string(),
            |value| escape::control(value).into_owned(),
        )
}

/// Per process, container and destination: retransmits per second between
/// two samples, highest first; idle series left out.
fn retransmit_rates(sample: &Sample, previous: &Sample) -> Vec<((String, String, String), f64)> {
    let elapsed = sample.at.duration_since(previous.at).as_secs_f64();
    if elapsed <= 0.0 {
        return Vec::new();
    }
    let totals = |metrics: &str| {
        let mut totals: BTreeMap<(String, String, String), f64> = BTreeMap::new();
        for (labels, value) in samples(metrics, "connmon_retransmits_total") {
            let key = (
                label(&labels, "process"),
                label(&labels, "container"),
                label(&labels, "destination"),
            );
            *totals.entry(key).or_default() += value;
        }
        totals
    };
    let before = totals(&previous.metrics);
    let mut rates: Vec<_> = totals(&sample.metrics)
        .into_iter()
        .map(|(key, total)| {
            let delta = total - before.get(&key).copied().unwrap_or(0.0);
            (key, delta.max(0.0) / elapsed)
        })
        .filter(|(_, rate)| *rate > 0.0)
        .collect();
    rates.sort_by(|a, b| b.1.total_cmp(&a.1));
    rates
}

/// The samples of one metric family in Prometheus' text format.
fn samples(metrics: &str, family: &str) -> Vec<(Labels, f64)> {
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(family)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(rest) => {
                    let (labels, value) = split_labels(rest)?;
                    (labels, value)
                }
                None if rest.starts_with(' ') => (Labels::new(), rest),
                None => return None,
            };
            Some((labels, value.trim().parse().ok()?))
        })
        .collect()
}

/// `a="x",b="y\"z"} 3` -> ({a: x, b: y"z}, " 3").
fn split_labels(text: &str) -> Option<(Labels, &str)> {
    let mut labels = Labels::new();
    let mut rest = text;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        rest = rest.strip_prefix(',').unwrap_or(rest);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (name, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (index, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break index,
                other => value.push(other),
            }
        };
        labels.insert(name.to_string(), value);
        rest = &after[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "# HELP connmon_retransmits_total x\n\
        connmon_retransmits_total{container=\"\",destination=\"10.0.0.2:6379\",kind=\"timeout\",process=\"app \\\"x\\\"\",role=\"client\"} 4\n\
        connmon_retransmits_total{container=\"\",destination=\"10.0.0.2:6379\",kind=\"fast\",process=\"app \\\"x\\\"\",role=\"client\"} 2\n\
        connmon_idle_connections_at_risk{container=\"abc\",destination=\"10.0.0.3:5432\",process=\"worker\"} 2\n\
        connmon_idle_connections_at_risk_other 7\n";

    #[test]
    fn prometheus_samples_are_read_with_escaped_labels() {
        let samples = samples(METRICS, "connmon_retransmits_total");
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].0["process"], "app \"x\"");
        assert_eq!(samples[0].1, 4.0);
        let at_risk = super::samples(METRICS, "connmon_idle_connections_at_risk");
        assert_eq!(at_risk.len(), 1, "{at_risk:?}");
    }

    #[test]
    fn headers_and_rows_keep_their_columns() {
        let mut screen = String::new();
        header(&mut screen, &STORM_COLUMNS);
        row(
            &mut screen,
            &RATE_COLUMNS,
            [
                "app".into(),
                "-".into(),
                "10.0.0.2:6379".into(),
                "2.5".into(),
            ],
        );
        let expected = format!(
            "{:<16} {:>8} {:<12} {:<24} {:>6} {:>8} {:>12}\n{:<16} {:<12} {:<24} {:>10}\n",
            "PROCESS",
            "PID",
            "CONTAINER",
            "DESTINATION",
            "IDLE",
            "RETRANS",
            "GIVES UP IN",
            "app",
            "-",
            "10.0.0.2:6379",
            "2.5"
        );
        assert_eq!(screen, expected);
    }

    #[test]
    fn the_screen_shows_storms_risk_and_rates() {
        let now = SystemTime::now();
        let confirmed = humantime::format_rfc3339_millis(now - Duration::from_secs(10));
        let storms = serde_json::json!({
            "schema_version": 1,
            "active": [{"event": "storm_started", "comm": "invite\u{1b}[31m", "pid": 42,
                "container_id": null, "role": "client", "remote": "10.0.0.2:6379",
                "local": "10.0.0.1:5000", "idle_seconds": 361.2, "retransmits": 4,
                "confirmed_at": confirmed.to_string(), "gives_up_in_seconds": 900.0}],
            "recent": [],
        });
        let previous = Sample {
            storms: storms.clone(),
            metrics: String::new(),
            at: Instant::now() - Duration::from_secs(2),
        };
        let sample = Sample {
            storms,
            metrics: METRICS.to_string(),
            at: Instant::now(),
        };
        let screen = render("http://x", &sample, Some(&previous), now);
        assert!(screen.contains("STORMS IN PROGRESS (1)"), "{screen}");
        assert!(screen.contains("invite\\x1b[31m"), "escaped: {screen}");
        assert!(!screen.contains('\u{1b}'), "{screen}");
        assert!(screen.contains("10.0.0.2:6379"), "{screen}");
        assert!(screen.contains("361s"), "idle: {screen}");
        assert!(screen.contains("890s"), "gives up in 900 - 10 s: {screen}");
        assert!(screen.contains("worker"), "at risk: {screen}");
        // 6 retransmits over about 2 s.
        let rate_line = screen
            .lines()
            .find(|line| line.starts_with("app \"x\""))
            .unwrap_or_else(|| panic!("{screen}"));
        let rate: f64 = rate_line
            .split_whitespace()
            .last()
            .and_then(|v| v.parse().ok())
            .unwrap_or_default();
        assert!((2.5..=3.5).contains(&rate), "{rate_line}");
    }
}
