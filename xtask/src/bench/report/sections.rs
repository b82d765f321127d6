//! The numbered sections: what was measured, how, and the tables.

use std::fmt::Write as _;

use super::{
    Results,
    stats::{median, show, signed_spread, spread},
};
use crate::bench::{
    floor,
    peers::Tool,
    workloads::{
        memory::SIZES,
        redis::{self, Setup},
        retransmit, scan,
    },
};

pub(super) fn kernel_cost(md: &mut String, r: &Results) {
    open_section(
        md,
        Some("## 1. Kernel cost per retransmit event"),
        &format!(
            "Workload: `iperf3 -P {}` for {} s per window between two network namespaces joined by a veth pair; nftables in the receiver drops {} ‰ of the data segments at random (`numgen random mod 1000 < {}`), so the sender retransmits continuously. Each round attaches each tool in turn (rotating the order) for one window. **ns per event** is the kernel's own accounting for the tool's program on `tcp:tcp_retransmit_skb` (`run_time_ns / run_cnt` from `/proc/PID/fdinfo` of the tool's program file descriptors, with `kernel.bpf_stats_enabled=1` for the run, differenced over the window). **IRQ-work interrupts** are the `IWI` line of `/proc/interrupts` (all CPUs) over the window, per 1,000 retransmit events: every ring-buffer or perf-buffer wakeup raises one, and each costs about 10 µs on this VM (kernel-facts.md) on top of the program's own time. **CPU** is the tool's own process (all threads, `/proc/PID/task/*/schedstat`). All tools see every retransmit of the machine, so *events per window* also counts other work's retransmits.",
            retransmit::STREAMS,
            r.seconds,
            retransmit::DROP_PER_MILLE,
            retransmit::DROP_PER_MILLE
        ),
        &[
            "tool",
            "ns per event",
            "events per window",
            "IRQ-work interrupts per second",
            "per 1,000 events",
            "tool CPU (user+sys) ms per 1,000 events",
            "throughput vs none",
        ],
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
    open_section(
        md,
        None,
        "\nconnmon's programs in the same windows (ns per run; the send/receive hooks run on every `sendmsg`/`recvmsg` of the workload):",
        &["program", "port not watched", "port watched"],
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

pub(super) fn hot_path(md: &mut String, r: &Results) {
    open_section(
        md,
        Some("## 2. Hot path: redis-benchmark"),
        &format!(
            "A real `redis-server` and `redis-benchmark -t set -c {} --csv` on the loopback of a namespace of their own; `-n {}` requests with keep-alive connections (`-k 1`), `-n {}` with a new connection per request (`-k 0`). Each round runs four setups, rotating which goes first: without connmon; connmon with its defaults (6379 watched); connmon watching 6379 with an **empty program** (`r0 = 0; exit`, loaded by the bench with the `bpf` syscall as a BTF tracepoint program, like connmon's) attached to each of connmon's hooks; and the same with 6379 not watched (`--ports 1`). The first two give the machine's CPU per request (busy time of all CPUs from /proc/stat over the window, per request), measured with BPF run-time statistics off as in production; the last two give connmon's ns per run next to the empty program's on the same hook in the same window (statistics on, which adds two clock reads to every run: most of the empty program's time). Medians of the rounds, (min–max).",
            redis::CLIENTS,
            r.redis.requests_keepalive,
            r.redis.requests_reconnect
        ),
        &[
            "mode",
            "req/s without",
            "req/s with connmon",
            "machine CPU µs per request without",
            "with connmon",
            "difference (paired per round)",
        ],
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
    open_section(
        md,
        None,
        "\nns per run, connmon and the empty program on the same hook, same windows (ratio = connmon / empty, per round):",
        &[
            "mode",
            "hook",
            "runs per request",
            "port watched: connmon ns",
            "empty ns",
            "ratio",
            "port not watched: connmon ns",
            "empty ns",
            "ratio",
        ],
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

pub(super) fn workload_throughput(md: &mut String, r: &Results) {
    open_section(
        md,
        Some("## 3. Throughput of the retransmit workload"),
        "iperf3's received goodput in the windows of section 1, per tool, divided by the median with no tool attached. Both CPUs are busy with the workload, so whatever a tool costs (kernel time per event, wakeups, its own process) comes out of the workload.",
        &[
            "tool",
            "Gbit/s",
            "with / without",
            "retransmitted segments per window (nstat)",
        ],
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

pub(super) fn userspace(md: &mut String, r: &Results) {
    open_section(
        md,
        Some("## 4. Userspace"),
        "**Pipeline** (`cargo bench -p connmon --bench pipeline`, criterion, one core, median): a recorded stream of 100,000 kernel records over 10,000 connections (retransmits, acknowledgements, state changes, a few idle storms) decoded, run through the socket table and the storm detector.",
        &["stage", "events per second"],
    );
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
    open_section(
        &mut md,
        None,
        "**Resident memory** (`VmRSS`) and CPU of `connmon run` with default settings holding the given number of open sockets (both ends of loopback connections on four watched ports in a namespace of their own), opened at about 5,000 connections a second, read once connmon's `connmon_tracked_sockets{table=\"kernel\"}` shows them all (or has not grown for 5 s). The kernel keeps each watched socket's state (96 bytes) in the socket's own storage, freed with it, which is kernel memory, not connmon's; userspace keeps only sockets a record was written for:",
        &[
            "sockets open",
            "tracked in the kernel",
            "records lost",
            "RSS idle before",
            "RSS with the sockets",
            "connmon CPU while they opened",
        ],
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

pub(super) fn latency_section(md: &mut String, r: &Results) {
    let samples = &r.latency.samples;
    let stdout: Vec<f64> = samples.iter().map(|s| s.to_stdout_ms).collect();
    let metrics: Vec<f64> = samples.iter().map(|s| s.to_metrics_ms).collect();
    let confirm: Vec<f64> = samples.iter().map(|s| s.send_to_confirm_ms).collect();
    open_section(
        md,
        Some("## 5. Detection latency"),
        &format!(
            "The seed scenario: app, a middlebox whose conntrack forgets idle flows after 2 s and drops their packets, and a real redis-server; `connmon run --idle-threshold 1s`. A connection sends `PING`, goes idle until the middlebox has forgotten it, and sends `PING` again: the kernel retransmits with backoff and the third RTO retransmit confirms the storm. Latency is measured from `confirmed_at` (the kernel timestamp of the confirming retransmit, in the `storm_started` record, millisecond precision) to the moment this benchmark saw the record on connmon's stdout, and to the moment `connmon_storms_started_total` moved on `/metrics`; both are polled every 2 ms. {} storms.",
            samples.len()
        ),
        &["from the confirming retransmit to", "ms"],
    );
    for (to, values, decimals) in [
        ("`storm_started` on stdout", &stdout, 1),
        ("the counter on `/metrics`", &metrics, 1),
        (
            "(from the stuck send to the confirming retransmit: the kernel's backoff)",
            &confirm,
            0,
        ),
    ] {
        let _ = writeln!(md, "| {to} | {} |", spread(values, decimals));
    }
    let _ = writeln!(md);
}

/// The blackout section (also printed alone by `--only blackout`).
pub fn blackout_markdown(r: &Results) -> String {
    let mut md = String::new();
    open_section(
        &mut md,
        Some("## 5b. A pool blackholed at once"),
        "N pooled connections on a watched port (processes of 1,000 connections, one writer thread each, `tcp-peer pool`), idle past `--idle-threshold 2s`, then every flow blackholed at once (an nftables drop, as a NAT gateway that forgot them) and every thread sends; `tcp_retries2 = 4`, so every client ends with ETIMEDOUT. connmon with default settings otherwise (4 MiB ring). Latency: from each storm's `confirmed_at` (the kernel's time of the confirming retransmit) to this benchmark reading `storm_started` on connmon's stdout. Outcomes right: storms that ended `timed_out` like their client. CPU: connmon's user + system time from the send until every storm ended; memory: peak resident set. Target: nothing lost, every outcome right, at most 100 ms after the confirming retransmit.",
        &[
            "connections",
            "storms found (right pid/tid)",
            "confirming retransmit to `storm_started` p50 / p99 / max ms",
            "send to `storm_started` p50 / max ms",
            "records emitted",
            "lost",
            "outcomes right",
            "connmon CPU s",
            "peak RSS MiB",
        ],
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

/// The stuck-send scan's table (also printed alone by `--only scan`).
pub fn scan_markdown(r: &Results) -> String {
    let mut md = String::new();
    let s = &r.scan;
    open_section(
        &mut md,
        Some("## 5c. The stuck-send scan"),
        &format!(
            "CPU time per scan of `connmon run --stuck-scan-interval {}` (5 s by default; a scan's CPU does not depend on it): `connmon_stuck_scan_cpu_seconds_total` over `connmon_stuck_scans_total` from its `/metrics`, i.e. the daemon's own account of the threads that listed the namespaces and dumped their sockets, not wall time. {} idle established loopback sockets on port {} (both ends of {} connections in a namespace of their own: the bench holds the clients, the servers wait in the listener's accept queue): `--ports {}` watches them, `--ports {}` watches none of them (the kernel still walks them, and copies none). {} scans per round, {} rounds, median (min–max). The number of sockets is `--scan-sockets` (default 4,000, so the bench stays fast; a hand measurement at 19,000 watched sockets gave about 39 ms a scan, 15 ms unwatched). Every namespace on the machine with a process is scanned, other work's too: {} per scan in this run. Part of the cost is per namespace, whatever its sockets: the kernel answers each namespace's dump by walking the host's whole table of established sockets (every bucket, `tcp_ehash_entries`), once per address family.",
            scan::INTERVAL,
            s.sockets,
            scan::PORT,
            s.sockets / 2,
            scan::PORT,
            scan::PORT + 1,
            scan::SCANS_PER_ROUND,
            s.watched_ms.len().max(s.unwatched_ms.len()),
            spread(&s.namespaces, 0),
        ),
        &["sockets on the port", "port", "CPU ms per scan"],
    );
    for (name, values) in [("watched", &s.watched_ms), ("not watched", &s.unwatched_ms)] {
        let _ = writeln!(md, "| {} | {name} | {} |", s.sockets, spread(values, 2));
    }
    let _ = writeln!(md);
    md
}

pub(super) fn accuracy(md: &mut String, r: &Results) {
    open_section(
        md,
        Some("## 6. Accuracy under load"),
        "In the retransmit windows of section 1: retransmitted segments counted by connmon (`connmon_kernel_retransmitted_segments_total`: for each successful retransmit, the skb's GSO segment count, which is what nstat's `TcpRetransSegs` counts; failed attempts are counted apart) against `TcpRetransSegs` of the workload's two namespaces (`/proc/net/snmp` inside each). connmon's counter is host-wide: retransmits elsewhere on the machine during the window (other work) add to it. Lost: `recursion_misses` of connmon's programs (events the kernel did not run a program for) and records the ring buffer or socket map could not take.",
        &[
            "connmon",
            "nstat segments",
            "connmon segments",
            "connmon / nstat",
            "retransmit attempts",
            "recursion misses",
            "records emitted",
            "processed",
            "lost: ring buffer full",
            "lost: socket map full",
            "decode errors",
        ],
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

/// Opens a section or a part of one: its heading, what was measured and
/// how, and the header of its table.
fn open_section(md: &mut String, heading: Option<&str>, intro: &str, columns: &[&str]) {
    if let Some(heading) = heading {
        let _ = writeln!(md, "{heading}\n");
    }
    let _ = writeln!(md, "{intro}\n");
    let _ = writeln!(
        md,
        "| {} |\n{}|",
        columns.join(" | "),
        "|---".repeat(columns.len())
    );
}
