//! The report: markdown with every figure, what it means and how it was
//! measured, and an SVG chart (hand-written, no plotting dependency).

use std::{fmt::Write as _, process::Command, time::Duration};

use super::{
    floor,
    peers::Tool,
    stats_check,
    workloads::{
        PipelineResult, blackout, latency,
        memory::{self, SIZES},
        redis::{self, Setup},
        retransmit, scrape,
    },
};

fn floor_setup(watched: bool) -> Setup {
    if watched {
        Setup::WatchedWithFloor
    } else {
        Setup::UnwatchedWithFloor
    }
}

#[derive(Debug, Default)]
pub struct Results {
    pub repetitions: u32,
    pub seconds: u32,
    pub load_before: f64,
    pub load_after: f64,
    pub elapsed: Duration,
    pub pipeline: Vec<PipelineResult>,
    pub retransmit: retransmit::Results,
    pub redis: redis::Results,
    pub memory: memory::Results,
    pub latency: latency::Results,
    pub scrape: scrape::Results,
    pub blackout: blackout::Results,
    /// Whether connmon with its defaults left another program's BPF
    /// statistics alone (checked before the run switches them on).
    pub stats_untouched: Option<stats_check::Verdict>,
    /// Sections that failed, with the error.
    pub failures: Vec<(String, String)>,
}

// Targets from the issue.
/// Hook cost targets: connmon's ns per run over an empty program's on the
/// same hook, in the same window.
const PAYLOAD_WATCHED: f64 = 1.3;
const PAYLOAD_UNWATCHED: f64 = 1.15;
const LIFECYCLE_WATCHED: f64 = 2.0;
const LIFECYCLE_UNWATCHED: f64 = 1.15;
const RETRANSMIT_WATCHED: f64 = 2.0;
/// Machine CPU per redis request with connmon over without, minus one.
const KEEPALIVE_CPU: f64 = 0.01;
const RECONNECT_CPU: f64 = 0.03;
const EVENTS_PER_SECOND: f64 = 2e6;
const CPU_MS_PER_1000: f64 = 1.0;
const RSS_MIB_AT_100K: f64 = 32.0;

pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

fn range(values: &[f64]) -> Option<(f64, f64)> {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let min = finite.iter().copied().reduce(f64::min)?;
    let max = finite.iter().copied().reduce(f64::max)?;
    Some((min, max))
}

fn show(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) => format!("{v:.decimals$}"),
        None => "–".into(),
    }
}

/// `median (min–max)` of a series.
fn spread(values: &[f64], decimals: usize) -> String {
    match (median(values.to_vec()), range(values)) {
        (Some(m), Some((lo, hi))) if values.len() > 1 => {
            format!("{m:.decimals$} ({lo:.decimals$}–{hi:.decimals$})")
        }
        (Some(m), _) => format!("{m:.decimals$}"),
        _ => "–".into(),
    }
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

impl Results {
    fn samples(&self, tool: Tool) -> impl Iterator<Item = &retransmit::Sample> {
        self.retransmit
            .samples
            .iter()
            .filter(move |s| s.tool == tool)
    }

    /// ns per run of the tool's retransmit program, one value per round.
    pub fn retransmit_ns(&self, tool: Tool) -> Vec<f64> {
        self.samples(tool)
            .filter_map(|s| s.retransmit_program()?.ns_per_run())
            .collect()
    }

    fn retransmit_runs(&self, tool: Tool) -> Vec<f64> {
        self.samples(tool)
            .filter_map(|s| Some(s.retransmit_program()?.runs as f64))
            .collect()
    }

    fn throughput(&self, tool: Tool) -> Vec<f64> {
        self.samples(tool).map(|s| s.throughput_bps).collect()
    }

    /// Median throughput with `tool` over the median with none.
    pub fn throughput_ratio(&self, tool: Tool) -> Option<f64> {
        Some(median(self.throughput(tool))? / median(self.throughput(Tool::None))?)
    }

    /// CPU ms of the tool's process per 1,000 retransmit-program runs: user
    /// time from `stat` (10 ms ticks), or user + system from `schedstat`.
    fn cpu_per_1000(&self, tool: Tool, user_only: bool) -> Vec<f64> {
        self.samples(tool)
            .filter_map(|s| {
                let runs = s.retransmit_program()?.runs as f64;
                let seconds = if user_only {
                    s.cpu?.user_s
                } else {
                    s.cpu_ns? as f64 / 1e9
                };
                (runs > 0.0).then(|| seconds * 1e3 / runs * 1e3)
            })
            .collect()
    }

    fn irq_work_per_second(&self, tool: Tool) -> Vec<f64> {
        self.samples(tool)
            .map(|s| s.irq_work as f64 / self.seconds.max(1) as f64)
            .collect()
    }

    fn irq_work_per_1000(&self, tool: Tool) -> Vec<f64> {
        self.samples(tool)
            .filter_map(|s| {
                let events = s.retransmit_program()?.runs as f64;
                (events > 0.0).then(|| s.irq_work as f64 / events * 1e3)
            })
            .collect()
    }

    fn program_ns(&self, tool: Tool, name: &str) -> Vec<f64> {
        self.samples(tool)
            .filter_map(|s| {
                s.programs
                    .iter()
                    .find(|p| p.name.starts_with(name))?
                    .ns_per_run()
            })
            .collect()
    }

    fn redis_samples(&self, keepalive: bool, setup: Setup) -> impl Iterator<Item = &redis::Sample> {
        self.redis
            .samples
            .iter()
            .filter(move |s| s.keepalive == keepalive && s.setup == setup)
    }

    fn redis_rps(&self, keepalive: bool, setup: Setup) -> Vec<f64> {
        self.redis_samples(keepalive, setup)
            .map(|s| s.requests_per_second)
            .collect()
    }

    /// Median throughput with connmon over the median without.
    pub fn redis_throughput_ratio(&self, keepalive: bool) -> Option<f64> {
        Some(
            median(self.redis_rps(keepalive, Setup::Connmon))?
                / median(self.redis_rps(keepalive, Setup::Without))?,
        )
    }

    fn redis_cpu_per_request(&self, keepalive: bool, setup: Setup) -> Vec<f64> {
        self.redis_samples(keepalive, setup)
            .map(redis::Sample::cpu_us_per_request)
            .collect()
    }

    /// Per round: machine CPU per request with connmon over without, minus
    /// one (paired within the round, so slow drift cancels).
    pub fn redis_cpu_delta(&self, keepalive: bool) -> Vec<f64> {
        self.redis_samples(keepalive, Setup::Connmon)
            .filter_map(|with| {
                let without = self
                    .redis_samples(keepalive, Setup::Without)
                    .find(|s| s.round == with.round)?;
                let base = without.cpu_us_per_request();
                (base > 0.0).then(|| with.cpu_us_per_request() / base - 1.0)
            })
            .collect()
    }

    /// connmon's ns per run on `hook` over the empty program's, per round.
    pub fn hook_ratio(&self, keepalive: bool, watched: bool, hook: &str) -> Vec<f64> {
        self.redis_samples(keepalive, floor_setup(watched))
            .filter_map(|s| s.ratio_to_floor(hook))
            .collect()
    }

    /// ns per run of connmon's program (or the floor's) on `hook`.
    fn hook_ns(&self, keepalive: bool, watched: bool, hook: &str, of_floor: bool) -> Vec<f64> {
        self.redis_samples(keepalive, floor_setup(watched))
            .filter_map(|s| {
                let programs = if of_floor { &s.floor } else { &s.programs };
                programs
                    .iter()
                    .find(|p| p.name == hook || hook.starts_with(&p.name))?
                    .ns_per_run()
            })
            .collect()
    }

    fn hook_runs_per_request(&self, keepalive: bool, hook: &str) -> Vec<f64> {
        self.redis_samples(keepalive, floor_setup(true))
            .filter_map(|s| {
                let runs = s.floor.iter().find(|p| p.name == hook)?.runs;
                Some(runs as f64 / f64::from(s.requests.max(1)))
            })
            .collect()
    }

    /// ns per run of a one-helper-call probe over the empty program on the
    /// same hook, per keep-alive round.
    fn helper_cost(&self, helper: &str) -> Vec<f64> {
        self.redis_samples(true, Setup::WatchedWithFloor)
            .filter_map(|s| {
                let probe = s.floor.iter().find(|p| p.name == helper)?.ns_per_run()?;
                let empty = s
                    .floor
                    .iter()
                    .find(|p| p.name == floor::PROBE_HOOK)?
                    .ns_per_run()?;
                Some(probe - empty)
            })
            .collect()
    }

    /// Share of the machine's CPU time spent in connmon's programs during
    /// the redis windows with connmon (and the floor, which does not count
    /// here) attached.
    fn redis_kernel_share(&self, keepalive: bool) -> Vec<f64> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        self.redis_samples(keepalive, Setup::WatchedWithFloor)
            .filter(|s| s.requests_per_second > 0.0)
            .map(|s| {
                let kernel_ns: u64 = s.programs.iter().map(|p| p.run_time_ns).sum();
                let window_ns = f64::from(s.requests) / s.requests_per_second * 1e9;
                kernel_ns as f64 / (cpus * window_ns) * 100.0
            })
            .collect()
    }

    /// connmon's `tcp_retransmit_skb` ns per run over the empty program's,
    /// in the same retransmit-workload window.
    pub fn retransmit_ratio(&self, tool: Tool) -> Vec<f64> {
        self.samples(tool)
            .filter_map(|s| {
                let connmon = s.retransmit_program()?.ns_per_run()?;
                let floor = s.floor.as_ref()?.ns_per_run()?;
                (floor > 0.0).then(|| connmon / floor)
            })
            .collect()
    }

    fn retransmit_floor_ns(&self, tool: Tool) -> Vec<f64> {
        self.samples(tool)
            .filter_map(|s| s.floor.as_ref()?.ns_per_run())
            .collect()
    }

    fn pipeline_rate(&self, name: &str) -> Option<f64> {
        self.pipeline
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.events_per_second)
    }

    fn connmon_windows(&self, tool: Tool) -> Vec<&retransmit::ConnmonWindow> {
        self.samples(tool)
            .filter_map(|s| s.connmon.as_ref())
            .collect()
    }

    /// connmon's user CPU per 1,000 records it processed (events config).
    fn connmon_cpu_per_1000_records(&self) -> Vec<f64> {
        self.samples(Tool::ConnmonEvents)
            .filter_map(|s| {
                let records = s.connmon.as_ref()?.processed;
                (records > 0.0).then(|| s.cpu.map(|c| c.user_s * 1e6 / records))?
            })
            .collect()
    }
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "?".into())
}

pub fn markdown(results: &Results, chart: &str) -> String {
    let mut md = String::new();
    let r = results;
    let _ = writeln!(md, "# connmon benchmarks\n");
    let _ = writeln!(
        md,
        "Produced by `cargo xtask bench` (one command: installs the peers, builds connmon in release mode, runs every measurement, writes this file and [{chart}]({chart})). Rerun it to reproduce; `--quick` gives a faster, noisier run, `--repetitions N` more rounds.\n"
    );
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(
        md,
        "| run | {} UTC, {:.0} s |",
        command_line("date", &["-u", "+%Y-%m-%d %H:%M"]),
        r.elapsed.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "| machine | Linux {}, {} CPUs ({}) |",
        command_line("uname", &["-r"]),
        command_line("nproc", &[]),
        cpu_model()
    );
    let _ = writeln!(
        md,
        "| connmon | commit {} |",
        command_line("git", &["rev-parse", "--short", "HEAD"])
    );
    let _ = writeln!(
        md,
        "| peers | bcc {} (`tcpretrans-bpfcc`), bpftrace {} |",
        command_line("dpkg-query", &["-W", "-f=${Version}", "bpfcc-tools"]),
        command_line("dpkg-query", &["-W", "-f=${Version}", "bpftrace"])
    );
    let _ = writeln!(
        md,
        "| repetitions | {} rounds; retransmit windows of {} s; medians reported, (min–max) where there are several |",
        r.repetitions, r.seconds
    );
    let _ = writeln!(
        md,
        "| load average | {:.2} before, {:.2} after: anything above 0 is other work on the machine, i.e. noise |\n",
        r.load_before, r.load_after
    );

    for (section, error) in &r.failures {
        let _ = writeln!(md, "**{section} failed in this run:** `{error}`\n");
    }
    if r.load_before > 0.5 || r.load_after > 0.5 {
        let _ = writeln!(
            md,
            "**Noise:** other work was running on this machine during the run (load average above), e.g. other builds and test suites: kernel ns per run are inflated for every tool alike, and throughput ratios move by several percent between rounds. Compare tools within this run; rerun on an idle machine for absolute figures.\n"
        );
    }
    targets(&mut md, r);
    kernel_cost(&mut md, r);
    hot_path(&mut md, r);
    workload_throughput(&mut md, r);
    userspace(&mut md, r);
    latency_section(&mut md, r);
    md.push_str(&scrape::markdown(&r.scrape));
    md.push_str(&blackout_markdown(r));
    accuracy(&mut md, r);
    let _ = writeln!(md, "![chart]({chart})");
    md
}

/// One ratio target: the hook, which windows, the bound.
struct HookTarget {
    hooks: &'static [&'static str],
    keepalive: bool,
    watched: bool,
    bound: f64,
}

const HOOK_TARGETS: [HookTarget; 4] = [
    HookTarget {
        hooks: &["sock_send_length", "sock_recv_length"],
        keepalive: true,
        watched: true,
        bound: PAYLOAD_WATCHED,
    },
    HookTarget {
        hooks: &["sock_send_length", "sock_recv_length"],
        keepalive: true,
        watched: false,
        bound: PAYLOAD_UNWATCHED,
    },
    HookTarget {
        hooks: &["inet_sock_set_state", "tcp_destroy_sock"],
        keepalive: false,
        watched: true,
        bound: LIFECYCLE_WATCHED,
    },
    HookTarget {
        hooks: &["inet_sock_set_state", "tcp_destroy_sock"],
        keepalive: false,
        watched: false,
        bound: LIFECYCLE_UNWATCHED,
    },
];

fn targets(md: &mut String, r: &Results) {
    let _ = writeln!(
        md,
        "## Targets
"
    );
    let _ = writeln!(
        md,
        "Hook costs are connmon's ns per run **over an empty program on the same hook in the same window** (median of the rounds, min–max in parentheses): this VM's absolute ns move with its load, their ratio much less. CPU per request is the whole machine's busy time (all CPUs, /proc/stat) per redis request, with connmon over without, paired by round.\n"
    );
    let _ = writeln!(md, "| target | measured | |\n|---|---|---|");
    let mut missed = Vec::new();
    for target in &HOOK_TARGETS {
        let mut cells = Vec::new();
        let mut met = Some(true);
        for hook in target.hooks {
            let ratios = r.hook_ratio(target.keepalive, target.watched, hook);
            let value = median(ratios.clone());
            met = match (met, value) {
                (Some(ok), Some(v)) => Some(ok && v <= target.bound),
                _ => None,
            };
            if value.is_some_and(|v| v > target.bound) {
                missed.push((*hook, target.watched, target.keepalive, target.bound));
            }
            cells.push(format!("`{hook}` {}×", spread(&ratios, 2)));
        }
        let _ = writeln!(
            md,
            "| {} ≤ {:.2}× the empty program, {} ({}) | {} | {} |",
            target.hooks.join(", "),
            target.bound,
            if target.watched {
                "port watched"
            } else {
                "port not watched"
            },
            if target.keepalive {
                "redis keep-alive"
            } else {
                "redis, a new connection per request"
            },
            cells.join("; "),
            verdict(met),
        );
    }
    let retransmit = r.retransmit_ratio(Tool::ConnmonEvents);
    let retransmit_median = median(retransmit.clone());
    let _ = writeln!(
        md,
        "| `tcp_retransmit_skb` ≤ {RETRANSMIT_WATCHED:.0}× the empty program, port watched (retransmit workload) | {}× (port not watched: {}×) | {} |",
        spread(&retransmit, 2),
        spread(&r.retransmit_ratio(Tool::ConnmonCounted), 2),
        verdict(retransmit_median.map(|v| v <= RETRANSMIT_WATCHED)),
    );
    let keepalive = r.redis_cpu_delta(true);
    let reconnect = r.redis_cpu_delta(false);
    for (name, deltas, bound) in [
        ("keep-alive", &keepalive, KEEPALIVE_CPU),
        ("new connection per request", &reconnect, RECONNECT_CPU),
    ] {
        let pct: Vec<f64> = deltas.iter().map(|d| d * 100.0).collect();
        let _ = writeln!(
            md,
            "| redis {name}: machine CPU per request ≤ +{:.0} % | {} % | {} |",
            bound * 100.0,
            signed_spread(&pct),
            verdict(median(deltas.clone()).map(|v| v <= bound)),
        );
    }
    let _ = writeln!(
        md,
        "| BPF statistics of other programs untouched by connmon's defaults | {} | {} |",
        r.stats_untouched
            .as_ref()
            .map_or("not measured".to_string(), |v| v.detail.clone()),
        verdict(r.stats_untouched.as_ref().map(|v| v.untouched)),
    );
    let pipeline = r.pipeline_rate("decode+sockets+detect");
    let cpu = median(r.cpu_per_1000(Tool::ConnmonEvents, true));
    let rss_100k = r
        .memory
        .samples
        .iter()
        .find(|s| s.sockets == 100_000)
        .map(|s| s.rss_kib as f64 / 1024.0);
    let _ = writeln!(
        md,
        "| userspace decode + detection ≥ 2 M events/s on one core | {} M/s | {} |",
        show(pipeline.map(|v| v / 1e6), 2),
        verdict(pipeline.map(|v| v >= EVENTS_PER_SECOND)),
    );
    let _ = writeln!(
        md,
        "| user CPU ≤ {CPU_MS_PER_1000} ms per 1,000 kernel events under load | {} ms | {} |",
        show(cpu, 3),
        verdict(cpu.map(|v| v <= CPU_MS_PER_1000)),
    );
    let _ = writeln!(
        md,
        "| resident memory ≤ {RSS_MIB_AT_100K} MiB with 100k tracked sockets | {} MiB | {} |",
        show(rss_100k, 1),
        verdict(rss_100k.map(|v| v <= RSS_MIB_AT_100K)),
    );
    let scrape_p99 = r.scrape.flooded_p99();
    let _ = writeln!(
        md,
        "| `/metrics` p99 ≤ {} ms while the kernel floods records | {} ms | {} |\n",
        scrape::P99_MS_TARGET,
        show(scrape_p99, 1),
        verdict(scrape_p99.map(|v| v <= scrape::P99_MS_TARGET)),
    );
    let _ = writeln!(
        md,
        "Detection latency and accuracy have no numeric target; they are in sections 5 and 6.\n"
    );
    gaps(
        md,
        r,
        &missed,
        retransmit_median.filter(|v| *v > RETRANSMIT_WATCHED),
        (median(keepalive), median(reconnect)),
        cpu,
        rss_100k,
    );
}

/// A signed spread: `+0.4 (-1.2–+2.0)`.
fn signed_spread(values: &[f64]) -> String {
    let Some(mid) = median(values.to_vec()) else {
        return "–".into();
    };
    match range(values) {
        Some((lo, hi)) if values.len() > 1 => format!("{mid:+.1} ({lo:+.1}–{hi:+.1})"),
        _ => format!("{mid:+.1}"),
    }
}

/// What each hook does per run, for the gaps: where its nanoseconds go.
fn hook_work(hook: &str, watched: bool) -> &'static str {
    match (hook, watched) {
        ("sock_send_length" | "sock_recv_length", false) => {
            "a direct load for the TCP check and two for the ports, two tests in the read-only port bitmap, then return"
        }
        ("sock_send_length" | "sock_recv_length", true) => {
            "the same checks, the family, the inlined jiffies clock, and this CPU's note of recently written sockets (a per-CPU array slot keyed by the address pair, hash and ports: three more loads); only when the note is missing or a granule old, `bpf_sk_storage_get`, and with a write due `bpf_get_current_pid_tgid` for the owner"
        }
        ("inet_sock_set_state", false) => {
            "the TCP check, the port check, and on a move to CLOSE one load of `sk_bpf_storage`"
        }
        ("inet_sock_set_state", true) => {
            "at connect, the owner (pid, cgroup id, task pointer, then the leader's start time and comm through `bpf_probe_read_kernel`) and the storage's creation (a `GFP_ATOMIC` allocation), at accept only the creation, and at CLOSE a storage lookup; no record unless userspace heard of the socket"
        }
        ("tcp_destroy_sock", false) => {
            "one load of `sk_bpf_storage` and, with every-state-change off, nothing else"
        }
        ("tcp_destroy_sock", true) => {
            "one load of `sk_bpf_storage`, a storage lookup and a per-CPU counter; the kernel frees the storage itself"
        }
        _ => "",
    }
}

/// For every missed target: the gap, where the time goes, the next step.
fn gaps(
    md: &mut String,
    r: &Results,
    missed_hooks: &[(&str, bool, bool, f64)],
    retransmit: Option<f64>,
    (keepalive, reconnect): (Option<f64>, Option<f64>),
    cpu: Option<f64>,
    rss_100k: Option<f64>,
) {
    let mut lines = Vec::new();
    for &(hook, watched, keepalive, bound) in missed_hooks {
        let ratio = median(r.hook_ratio(keepalive, watched, hook)).unwrap_or(f64::NAN);
        let ns = median(r.hook_ns(keepalive, watched, hook, false)).unwrap_or(f64::NAN);
        let floor = median(r.hook_ns(keepalive, watched, hook, true)).unwrap_or(f64::NAN);
        let own = ns - floor;
        // Where a watched send/receive's own time goes: the filter it
        // shares with an unwatched socket, then what only watched ones do.
        let breakdown = if watched && keepalive {
            let unwatched = median(r.hook_ns(keepalive, false, hook, false)).unwrap_or(f64::NAN)
                - median(r.hook_ns(keepalive, false, hook, true)).unwrap_or(f64::NAN);
            let pid = median(r.helper_cost("get_current_pid_tgid")).unwrap_or(f64::NAN);
            format!(
                " Of its {own:.0} ns, {unwatched:.0} ns are the filter an unwatched socket pays too (same hook, same rounds); the other {:.0} ns are the recent-socket note (its key loads and the per-CPU slot) on every run, and on a miss (a socket not written to on this CPU within the granule: redis-benchmark's 50 connections are served by threads that move between the two CPUs) a `bpf_sk_storage_get` call and, with a write due, `bpf_get_current_pid_tgid` (about {pid:.0} ns per call here, section 2).",
                own - unwatched
            )
        } else {
            String::new()
        };
        lines.push(format!(
            "**`{hook}`, port {}: {ratio:.2}× against {bound:.2}×** ({ns:.0} ns against the empty program's {floor:.0} ns: {own:.0} ns of connmon's own). Per run it does {}.{breakdown} The empty program's time is mostly the hook's own (the trampoline and, while statistics are on, the two clock reads that measure it), so the bound leaves connmon {:.0} ns here.",
            if watched { "watched" } else { "not watched" },
            hook_work(hook, watched),
            floor * (bound - 1.0),
        ));
    }
    if let Some(ratio) = retransmit {
        let floor = median(r.retransmit_floor_ns(Tool::ConnmonEvents)).unwrap_or(f64::NAN);
        let ns = median(r.retransmit_ns(Tool::ConnmonEvents)).unwrap_or(f64::NAN);
        lines.push(format!(
            "**`tcp_retransmit_skb`, port watched: {ratio:.2}× against {RETRANSMIT_WATCHED:.0}×** ({ns:.0} ns against the empty program's {floor:.0} ns). On the workload's busy connections a retransmit cannot start a storm, so it is only counted in the socket's storage and handed over as one record per socket per second at most; what remains per run is `bpf_skc_to_tcp_sock` (the congestion state, for the kind), two per-CPU counters (attempts, segments from the skb's GSO count), the port test, the storage lookup and the idle check. A retransmit that can confirm a storm (after an idle gap, nothing received since) is still a full record with a wakeup."
        ));
    }
    for (name, delta, bound, per_request_hook) in [
        ("keep-alive", keepalive, KEEPALIVE_CPU, "sock_send_length"),
        (
            "new connection per request",
            reconnect,
            RECONNECT_CPU,
            "inet_sock_set_state",
        ),
    ] {
        let Some(delta) = delta.filter(|d| *d > bound) else {
            continue;
        };
        let keepalive = name == "keep-alive";
        let base = range(&r.redis_cpu_per_request(keepalive, Setup::Without));
        lines.push(format!(
            "**redis {name}: {:+.1} % machine CPU per request against +{:.0} %.** Without connmon the rounds themselves spread {} µs per request; connmon's programs took {} % of the machine's CPU in these windows (the kernel's run time of its programs), `{per_request_hook}` ran {} times per request, and the rest is connmon's own process (the 100 ms ring-buffer drain, the 5 s read of the unwatched-retransmit map, scrapes). Next step: rerun with more rounds (`--repetitions 9`) on an idle machine; if it stays, the drain's idle wakeups (below) are the next cost to cut.",
            delta * 100.0,
            bound * 100.0,
            base.map_or("–".into(), |(lo, hi)| format!("{lo:.1}–{hi:.1}")),
            show(median(r.redis_kernel_share(keepalive)), 2),
            show(median(r.hook_runs_per_request(keepalive, per_request_hook)), 1),
        ));
    }
    if let Some(ms) = cpu.filter(|ms| *ms > CPU_MS_PER_1000) {
        let per_event = r
            .pipeline_rate("decode+sockets+detect")
            .map(|rate| 1e6 / rate);
        lines.push(format!(
            "**User CPU: {ms:.3} ms per 1,000 events against {CPU_MS_PER_1000} ms.** Part of it does not depend on the events: with the port not watched (no records at all) connmon used {} ms per 1,000 events in the same windows. That is the reader's drain: it wakes every 100 ms to collect records written without a wakeup, and on this VM a wakeup of an idle tokio worker costs about 70 µs of CPU. The rest is per record: decoding and detection alone cost {} ms per 1,000 events (section 4); the ring-buffer reads, the hand-off to the pipeline task in batches of up to 1,024, and the metric updates add to it. Next step: an adaptive drain interval (longer while the ring fills slowly; storm-confirming records wake the reader anyway, so detection latency would not change).",
            show(median(r.cpu_per_1000(Tool::ConnmonCounted, true)), 3),
            show(per_event, 3),
        ));
    }
    if let Some(mib) = rss_100k.filter(|mib| *mib > RSS_MIB_AT_100K) {
        lines.push(format!(
            "**Resident memory: {mib:.1} MiB at 100k sockets against {RSS_MIB_AT_100K:.0} MiB.** The kernel keeps a watched socket's state in the socket itself; userspace keeps only sockets a record was written for. Next step: profile the heap (heaptrack)."
        ));
    }
    if !lines.is_empty() {
        let _ = writeln!(md, "### Gaps\n");
        for line in lines {
            let _ = writeln!(md, "- {line}");
        }
        let _ = writeln!(md);
    }
}

fn kernel_cost(md: &mut String, r: &Results) {
    let _ = writeln!(md, "## 1. Kernel cost per retransmit event\n");
    let _ = writeln!(
        md,
        "Workload: `iperf3 -P {}` for {} s per window between two network namespaces joined by a veth pair; nftables in the receiver drops {} ‰ of the data segments at random (`numgen random mod 1000 < {}`), so the sender retransmits continuously. Each round attaches each tool in turn (rotating the order) for one window. **ns per event** is the kernel's own accounting for the tool's program on `tcp:tcp_retransmit_skb` (`run_time_ns / run_cnt` from `/proc/PID/fdinfo` of the tool's program file descriptors, with `kernel.bpf_stats_enabled=1` for the run, differenced over the window). **IRQ-work interrupts** are the `IWI` line of `/proc/interrupts` (all CPUs) over the window, per 1,000 retransmit events: every ring-buffer or perf-buffer wakeup raises one, and each costs about 10 µs on this VM (kernel-facts.md) on top of the program's own time. **CPU** is the tool's own process (all threads, `/proc/PID/task/*/schedstat`). All tools see every retransmit of the machine, so *events per window* also counts other work's retransmits.\n",
        retransmit::STREAMS,
        r.seconds,
        retransmit::DROP_PER_MILLE,
        retransmit::DROP_PER_MILLE
    );
    let _ = writeln!(
        md,
        "| tool | ns per event | events per window | IRQ-work interrupts per second | per 1,000 events | tool CPU (user+sys) ms per 1,000 events | throughput vs none |\n|---|---|---|---|---|---|---|"
    );
    for tool in Tool::ALL {
        let ns = r.retransmit_ns(tool);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            tool.label(),
            spread(&ns, 0),
            spread(&r.retransmit_runs(tool), 0),
            spread(&r.irq_work_per_second(tool), 0),
            spread(&r.irq_work_per_1000(tool), 1),
            spread(&r.cpu_per_1000(tool, false), 3),
            show(r.throughput_ratio(tool).map(|v| v * 100.0), 1) + " %",
        );
    }
    let _ = writeln!(
        md,
        "\nconnmon's programs in the same windows (ns per run; the send/receive hooks run on every `sendmsg`/`recvmsg` of the workload):\n"
    );
    let _ = writeln!(
        md,
        "| program | port not watched | port watched |\n|---|---|---|"
    );
    let mut names: Vec<String> = r
        .retransmit
        .samples
        .iter()
        .filter(|s| s.tool.is_connmon())
        .flat_map(|s| s.programs.iter().map(|p| p.name.clone()))
        .collect();
    names.sort();
    names.dedup();
    for name in names {
        let _ = writeln!(
            md,
            "| `{name}` | {} | {} |",
            spread(&r.program_ns(Tool::ConnmonCounted, &name), 0),
            spread(&r.program_ns(Tool::ConnmonEvents, &name), 0),
        );
    }
    let _ = writeln!(
        md,
        "\nAn empty program on `tcp_retransmit_skb`, attached in connmon's windows (the hook's own cost): {} ns per run with the port not watched (connmon {}× that), {} ns with it watched (connmon {}× that).\n",
        spread(&r.retransmit_floor_ns(Tool::ConnmonCounted), 0),
        spread(&r.retransmit_ratio(Tool::ConnmonCounted), 2),
        spread(&r.retransmit_floor_ns(Tool::ConnmonEvents), 0),
        spread(&r.retransmit_ratio(Tool::ConnmonEvents), 2),
    );
    let windows = r.connmon_windows(Tool::ConnmonEvents);
    let wakeups: Vec<f64> = windows.iter().map(|w| w.timeout_events).collect();
    let records: Vec<f64> = windows.iter().map(|w| w.emitted).collect();
    let switches: Vec<f64> = r
        .samples(Tool::ConnmonEvents)
        .filter_map(|s| s.voluntary_switches.map(|v| v as f64 / r.seconds as f64))
        .collect();
    let extra_irq = median(r.irq_work_per_second(Tool::ConnmonEvents))
        .zip(median(r.irq_work_per_second(Tool::None)))
        .map(|(with, without)| (with - without).max(0.0));
    let _ = writeln!(
        md,
        "\n**Wakeups.** connmon writes records with `BPF_RB_NO_WAKEUP` and drains the ring buffer every 100 ms, except resets, errors and a retransmit that can confirm a storm, which wake the reader at once: an RTO retransmit (congestion state Loss) on a connection whose current burst followed an idle gap, with nothing received since. With the workload's port watched, a window had {} records, {} of them RTO retransmits (the workload's connections are busy, so none qualifies); the IRQ-work interrupts above *none*, {} per second, are what connmon's wakeups (resets and errors at the end of each iperf3 run included) cost: at about 10 µs each, {} ms of CPU per second. Before this benchmark every RTO retransmit of a watched socket woke the reader: a quick run with those programs measured 636 wakeups in a 4 s window (161 IRQ-work interrupts per second against 5 with no tool, about 1.6 ms of CPU per second) and 1,572 ns per event for `tcp_retransmit_skb`, since a wakeup costs about 2 µs inside the program too. connmon's threads woke {} times per second (voluntary context switches, all threads: the 100 ms drain, the wakeups, the HTTP scrapes of this benchmark). bcc and bpftrace printing submit every event to a perf buffer with a wakeup each.\n",
        spread(&records, 0),
        spread(&wakeups, 0),
        show(extra_irq, 0),
        show(extra_irq.map(|per_second| per_second * 10e-3), 2),
        spread(&switches, 0),
    );
}

fn hot_path(md: &mut String, r: &Results) {
    let _ = writeln!(md, "## 2. Hot path: redis-benchmark\n");
    let _ = writeln!(
        md,
        "A real `redis-server` and `redis-benchmark -t set -c {} --csv` on the loopback of a namespace of their own; `-n {}` requests with keep-alive connections (`-k 1`), `-n {}` with a new connection per request (`-k 0`). Each round runs four setups, rotating which goes first: without connmon; connmon with its defaults (6379 watched); connmon watching 6379 with an **empty program** (`r0 = 0; exit`, loaded by the bench with the `bpf` syscall as a BTF tracepoint program, like connmon's) attached to each of connmon's hooks; and the same with 6379 not watched (`--ports 1`). The first two give the machine's CPU per request (busy time of all CPUs from /proc/stat over the window, per request), measured with BPF run-time statistics off as in production; the last two give connmon's ns per run next to the empty program's on the same hook in the same window (statistics on, which adds two clock reads to every run: most of the empty program's time). Medians of the rounds, (min–max).\n",
        redis::CLIENTS,
        r.redis.requests_keepalive,
        r.redis.requests_reconnect
    );
    let _ = writeln!(
        md,
        "| mode | req/s without | req/s with connmon | machine CPU µs per request without | with connmon | difference (paired per round) |\n|---|---|---|---|---|---|"
    );
    for (keepalive, name) in [(true, "keep-alive"), (false, "new connection per request")] {
        let pct: Vec<f64> = r
            .redis_cpu_delta(keepalive)
            .iter()
            .map(|d| d * 100.0)
            .collect();
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} % |",
            spread(&r.redis_rps(keepalive, Setup::Without), 0),
            spread(&r.redis_rps(keepalive, Setup::Connmon), 0),
            spread(&r.redis_cpu_per_request(keepalive, Setup::Without), 2),
            spread(&r.redis_cpu_per_request(keepalive, Setup::Connmon), 2),
            signed_spread(&pct),
        );
    }
    let _ = writeln!(
        md,
        "\nns per run, connmon and the empty program on the same hook, same windows (ratio = connmon / empty, per round):\n"
    );
    let _ = writeln!(
        md,
        "| mode | hook | runs per request | port watched: connmon ns | empty ns | ratio | port not watched: connmon ns | empty ns | ratio |\n|---|---|---|---|---|---|---|---|---|"
    );
    for (keepalive, name) in [(true, "keep-alive"), (false, "new connection")] {
        for hook in floor::HOOKS {
            let runs = r.hook_runs_per_request(keepalive, hook);
            if median(runs.clone()).is_none_or(|runs| runs < 0.01) {
                continue;
            }
            let _ = writeln!(
                md,
                "| {name} | `{hook}` | {} | {} | {} | {}× | {} | {} | {}× |",
                spread(&runs, 2),
                spread(&r.hook_ns(keepalive, true, hook, false), 0),
                spread(&r.hook_ns(keepalive, true, hook, true), 0),
                spread(&r.hook_ratio(keepalive, true, hook), 2),
                spread(&r.hook_ns(keepalive, false, hook, false), 0),
                spread(&r.hook_ns(keepalive, false, hook, true), 0),
                spread(&r.hook_ratio(keepalive, false, hook), 2),
            );
        }
    }
    let _ = writeln!(
        md,
        "\nWhat one helper call costs here: programs that make one call and return, attached to `{}` next to the empty program in the keep-alive windows with 6379 watched (ns per run over the empty program's, median (min–max)): {}. `bpf_jiffies64` is inlined by the verifier (a load), which is why it is the hot path's clock.\n",
        floor::PROBE_HOOK,
        floor::HELPER_PROBES
            .iter()
            .map(|(helper, _, _)| format!(
                "`bpf_{helper}` {} ns",
                spread(&r.helper_cost(helper), 1)
            ))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let _ = writeln!(
        md,
        "\nconnmon's programs took {} % of the machine's CPU time in the keep-alive windows and {} % with a new connection per request (6379 watched; the kernel's run time of its programs over CPUs × window). A difference within the rounds' own spread is noise, not cost.\n",
        spread(&r.redis_kernel_share(true), 2),
        spread(&r.redis_kernel_share(false), 2),
    );
}

fn workload_throughput(md: &mut String, r: &Results) {
    let _ = writeln!(md, "## 3. Throughput of the retransmit workload\n");
    let _ = writeln!(
        md,
        "iperf3's received goodput in the windows of section 1, per tool, divided by the median with no tool attached. Both CPUs are busy with the workload, so whatever a tool costs (kernel time per event, wakeups, its own process) comes out of the workload.\n"
    );
    let _ = writeln!(
        md,
        "| tool | Gbit/s | with / without | retransmitted segments per window (nstat) |\n|---|---|---|---|"
    );
    for tool in Tool::ALL {
        let gbps: Vec<f64> = r.throughput(tool).iter().map(|v| v / 1e9).collect();
        let segments: Vec<f64> = r.samples(tool).map(|s| s.nstat_segments as f64).collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} % | {} |",
            tool.label(),
            spread(&gbps, 2),
            show(r.throughput_ratio(tool).map(|v| v * 100.0), 1),
            spread(&segments, 0),
        );
    }
    let _ = writeln!(md);
}

fn userspace(md: &mut String, r: &Results) {
    let _ = writeln!(md, "## 4. Userspace\n");
    let _ = writeln!(
        md,
        "**Pipeline** (`cargo bench -p connmon --bench pipeline`, criterion, one core, median): a recorded stream of 100,000 kernel records over 10,000 connections (retransmits, acknowledgements, state changes, a few idle storms) decoded, run through the socket table and the storm detector.\n"
    );
    let _ = writeln!(md, "| stage | events per second |\n|---|---|");
    for p in &r.pipeline {
        let _ = writeln!(md, "| {} | {:.2} M |", p.name, p.events_per_second / 1e6);
    }
    let cpu = r.cpu_per_1000(Tool::ConnmonEvents, true);
    let cpu_records = r.connmon_cpu_per_1000_records();
    let cpu_counted = r.cpu_per_1000(Tool::ConnmonCounted, true);
    let _ = writeln!(
        md,
        "\n**User CPU under load**: connmon's user CPU time (`/proc/PID/stat`, all threads) in the retransmit windows of section 1, per 1,000 kernel retransmit events: {} ms with the port watched (a busy connection's retransmits arrive as counts, at most one record per socket per second; {} ms per 1,000 records processed, every kind), {} ms with the port not watched (no events; the scrapes and periodic work only).\n",
        spread(&cpu, 3),
        spread(&cpu_records, 3),
        spread(&cpu_counted, 3),
    );
    md.push_str(&memory_markdown(r));
}

/// The memory table (also printed alone by `--only memory`).
pub fn memory_markdown(r: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "**Resident memory** (`VmRSS`) and CPU of `connmon run` with default settings holding the given number of open sockets (both ends of loopback connections on four watched ports in a namespace of their own), opened at about 5,000 connections a second, read once connmon's `connmon_tracked_sockets{{table=\"kernel\"}}` shows them all (or has not grown for 5 s). The kernel keeps each watched socket's state (96 bytes) in the socket's own storage, freed with it, which is kernel memory, not connmon's; userspace keeps only sockets a record was written for:\n"
    );
    let _ = writeln!(
        md,
        "| sockets open | tracked in the kernel | records lost | RSS idle before | RSS with the sockets | connmon CPU while they opened |\n|---|---|---|---|---|---|"
    );
    for size in SIZES {
        if let Some(s) = r.memory.samples.iter().find(|s| s.sockets == size) {
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.0} | {:.1} MiB | {:.1} MiB | {:.1} s |",
                s.sockets,
                s.tracked,
                s.lost_records,
                s.idle_rss_kib as f64 / 1024.0,
                s.rss_kib as f64 / 1024.0,
                s.cpu_seconds
            );
        }
    }
    let _ = writeln!(md);
    md
}

fn latency_section(md: &mut String, r: &Results) {
    let samples = &r.latency.samples;
    let stdout: Vec<f64> = samples.iter().map(|s| s.to_stdout_ms).collect();
    let metrics: Vec<f64> = samples.iter().map(|s| s.to_metrics_ms).collect();
    let confirm: Vec<f64> = samples.iter().map(|s| s.send_to_confirm_ms).collect();
    let _ = writeln!(md, "## 5. Detection latency\n");
    let _ = writeln!(
        md,
        "The seed scenario: app, a middlebox whose conntrack forgets idle flows after 2 s and drops their packets, and a real redis-server; `connmon run --idle-threshold 1s`. A connection sends `PING`, goes idle until the middlebox has forgotten it, and sends `PING` again: the kernel retransmits with backoff and the third RTO retransmit confirms the storm. Latency is measured from `confirmed_at` (the kernel timestamp of the confirming retransmit, in the `storm_started` record, millisecond precision) to the moment this benchmark saw the record on connmon's stdout, and to the moment `connmon_storms_started_total` moved on `/metrics`; both are polled every 2 ms. {} storms.\n",
        samples.len()
    );
    let _ = writeln!(
        md,
        "| from the confirming retransmit to | ms |\n|---|---|\n| `storm_started` on stdout | {} |\n| the counter on `/metrics` | {} |\n| (from the stuck send to the confirming retransmit: the kernel's backoff) | {} |\n",
        spread(&stdout, 1),
        spread(&metrics, 1),
        spread(&confirm, 0),
    );
}

/// The blackout section (also printed alone by `--only blackout`).
pub fn blackout_markdown(r: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## 5b. A pool blackholed at once\n");
    let _ = writeln!(
        md,
        "N pooled connections on a watched port (processes of 1,000 connections, one writer thread each, `tcp-peer pool`), idle past `--idle-threshold 2s`, then every flow blackholed at once (an nftables drop, as a NAT gateway that forgot them) and every thread sends; `tcp_retries2 = 4`, so every client ends with ETIMEDOUT. connmon with default settings otherwise (4 MiB ring). Latency: from each storm's `confirmed_at` (the kernel's time of the confirming retransmit) to this benchmark reading `storm_started` on connmon's stdout. Outcomes right: storms that ended `timed_out` like their client. CPU: connmon's user + system time from the send until every storm ended; memory: peak resident set. Target: nothing lost, every outcome right, at most 100 ms after the confirming retransmit.\n"
    );
    let _ = writeln!(
        md,
        "| connections | storms found (right pid/tid) | confirming retransmit to `storm_started` p50 / p99 / max ms | send to `storm_started` p50 / max ms | records emitted | lost | outcomes right | connmon CPU s | peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|"
    );
    for row in &r.blackout.rows {
        let at = |values: &[f64], q| format!("{:.0}", connmon_tests::blackout::quantile(values, q));
        let _ = writeln!(
            md,
            "| {} | {} ({}) | {} / {} / {} | {} / {} | {:.0} | {:.0} | {} | {:.2} | {:.1} |",
            row.connections,
            row.found,
            row.found - row.misattributed.len(),
            at(&row.latency_ms, 0.5),
            at(&row.latency_ms, 0.99),
            at(&row.latency_ms, 1.0),
            at(&row.send_to_report_ms, 0.5),
            at(&row.send_to_report_ms, 1.0),
            row.records_emitted,
            row.records_lost,
            row.found - row.wrong_outcome.len(),
            row.cpu_seconds,
            row.peak_rss_kib as f64 / 1024.0,
        );
    }
    for (size, why) in &r.blackout.skipped {
        let _ = writeln!(md, "| {size} | not run: {why} | | | | | | | |");
    }
    let _ = writeln!(md);
    md
}

fn accuracy(md: &mut String, r: &Results) {
    let _ = writeln!(md, "## 6. Accuracy under load\n");
    let _ = writeln!(
        md,
        "In the retransmit windows of section 1: retransmitted segments counted by connmon (`connmon_kernel_retransmitted_segments_total`: for each successful retransmit, the skb's GSO segment count, which is what nstat's `TcpRetransSegs` counts; failed attempts are counted apart) against `TcpRetransSegs` of the workload's two namespaces (`/proc/net/snmp` inside each). connmon's counter is host-wide: retransmits elsewhere on the machine during the window (other work) add to it. Lost: `recursion_misses` of connmon's programs (events the kernel did not run a program for) and records the ring buffer or socket map could not take.\n"
    );
    let _ = writeln!(
        md,
        "| connmon | nstat segments | connmon segments | connmon / nstat | retransmit attempts | recursion misses | records emitted | processed | lost: ring buffer full | lost: socket map full | decode errors |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for tool in [Tool::ConnmonCounted, Tool::ConnmonEvents] {
        let samples: Vec<&retransmit::Sample> = r.samples(tool).collect();
        let nstat: Vec<f64> = samples.iter().map(|s| s.nstat_segments as f64).collect();
        let windows: Vec<&retransmit::ConnmonWindow> =
            samples.iter().filter_map(|s| s.connmon.as_ref()).collect();
        let of = |f: fn(&retransmit::ConnmonWindow) -> f64| -> Vec<f64> {
            windows.iter().map(|w| f(w)).collect()
        };
        let ratios: Vec<f64> = samples
            .iter()
            .filter_map(|s| {
                let counted = s.connmon.as_ref()?.segments;
                (s.nstat_segments > 0).then(|| counted / s.nstat_segments as f64 * 100.0)
            })
            .collect();
        let misses: Vec<f64> = samples
            .iter()
            .map(|s| s.programs.iter().map(|p| p.recursion_misses as f64).sum())
            .collect();
        let sum = |values: Vec<f64>| values.iter().sum::<f64>();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} % | {} | {} (all windows) | {} | {} | {} | {} | {} |",
            tool.short(),
            spread(&nstat, 0),
            spread(&of(|w| w.segments), 0),
            spread(&ratios, 2),
            spread(&of(|w| w.attempts), 0),
            sum(misses),
            spread(&of(|w| w.emitted), 0),
            spread(&of(|w| w.processed), 0),
            sum(of(|w| w.lost_ring_buffer)),
            sum(of(|w| w.lost_socket_map)),
            sum(of(|w| w.decode_errors)),
        );
    }
    let _ = writeln!(md);
}

/// Two panels: kernel ns per retransmit event per tool (log scale, with
/// the target), and throughput with each tool attached.
pub fn chart(results: &Results) -> String {
    let tools: Vec<Tool> = Tool::ALL.into_iter().filter(|t| *t != Tool::None).collect();
    let (width, row, left, top) = (900.0, 26.0, 330.0, 60.0);
    let panel_a = top + row * tools.len() as f64 + 40.0;
    let mut rows_b: Vec<(String, Option<f64>)> = tools
        .iter()
        .map(|t| {
            (
                format!("iperf3 retransmits: {}", t.short()),
                results.throughput_ratio(*t),
            )
        })
        .collect();
    rows_b.push((
        "redis keep-alive: connmon".into(),
        results.redis_throughput_ratio(true),
    ));
    rows_b.push((
        "redis new conn/request: connmon".into(),
        results.redis_throughput_ratio(false),
    ));
    let top_b = panel_a + 50.0;
    let height = top_b + row * rows_b.len() as f64 + 50.0;
    let plot = width - left - 80.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(
        svg,
        r##"<rect width="100%" height="100%" fill="#fff"/><text x="10" y="24" font-size="16" font-weight="bold">Kernel time per retransmit event (ns, log scale; median) — the dashed line is an empty program on the same hook</text>"##
    );
    // Log axis 10 ns .. 100 µs.
    let (lo, hi) = (1.0f64, 5.0f64);
    let x_of = |ns: f64| left + (ns.max(10.0).log10() - lo) / (hi - lo) * plot;
    for decade in 1..=5 {
        let x = x_of(10f64.powi(decade));
        let label = match decade {
            1 => "10 ns",
            2 => "100 ns",
            3 => "1 µs",
            4 => "10 µs",
            _ => "100 µs",
        };
        let _ = writeln!(
            svg,
            r##"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle" fill="#555">{label}</text>"##,
            top - 10.0,
            panel_a - 30.0,
            top - 14.0
        );
    }
    for (i, tool) in tools.iter().enumerate() {
        let y = top + i as f64 * row;
        let ns = median(results.retransmit_ns(*tool));
        let color = if tool.is_connmon() { "#2a7" } else { "#888" };
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            left - 8.0,
            y + 15.0,
            tool.short()
        );
        if let Some(ns) = ns {
            let _ = writeln!(
                svg,
                r#"<rect x="{left}" y="{}" width="{:.1}" height="18" fill="{color}"/><text x="{:.1}" y="{}">{ns:.0} ns</text>"#,
                y + 2.0,
                (x_of(ns) - left).max(1.0),
                x_of(ns) + 6.0,
                y + 15.0
            );
        }
    }
    // The empty program on the same hook: the floor connmon is held to.
    if let Some(floor) = median(results.retransmit_floor_ns(Tool::ConnmonEvents)) {
        let floor_x = x_of(floor);
        let _ = writeln!(
            svg,
            r##"<line x1="{floor_x}" y1="{}" x2="{floor_x}" y2="{}" stroke="#c33" stroke-dasharray="4 3"/><text x="{floor_x}" y="{}" fill="#c33" text-anchor="middle">empty program {floor:.0} ns</text>"##,
            top - 6.0,
            panel_a - 30.0,
            panel_a - 16.0
        );
    }

    let _ = writeln!(
        svg,
        r#"<text x="10" y="{}" font-size="16" font-weight="bold">Throughput with the tool attached / without (median, %)</text>"#,
        top_b - 26.0
    );
    let x_pct = |pct: f64| left + pct.clamp(0.0, 110.0) / 110.0 * plot;
    for pct in [0.0, 25.0, 50.0, 75.0, 100.0] {
        let x = x_pct(pct);
        let _ = writeln!(
            svg,
            r##"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle" fill="#555">{pct:.0} %</text>"##,
            top_b - 6.0,
            top_b + row * rows_b.len() as f64,
            top_b + row * rows_b.len() as f64 + 16.0
        );
    }
    for (i, (label, ratio)) in rows_b.iter().enumerate() {
        let y = top_b + i as f64 * row;
        let color = if label.contains("connmon") {
            "#2a7"
        } else {
            "#888"
        };
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{label}</text>"#,
            left - 8.0,
            y + 15.0
        );
        if let Some(ratio) = ratio {
            let pct = ratio * 100.0;
            let _ = writeln!(
                svg,
                r#"<rect x="{left}" y="{}" width="{:.1}" height="18" fill="{color}"/><text x="{:.1}" y="{}">{pct:.1} %</text>"#,
                y + 2.0,
                (x_pct(pct) - left).max(1.0),
                x_pct(pct) + 6.0,
                y + 15.0
            );
        }
    }
    let _ = writeln!(svg, "</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_series() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![f64::NAN]), None);
    }

    #[test]
    fn an_empty_run_still_renders() {
        let results = Results::default();
        assert!(markdown(&results, "report.svg").contains("## Targets"));
        assert!(chart(&results).starts_with("<svg"));
    }
}
