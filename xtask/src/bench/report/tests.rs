use std::time::Duration;

use super::{machine::Machine, *};
use crate::bench::{
    floor,
    peers::Tool,
    probe::ProgramWindow,
    workloads::{memory::SIZES, redis::Setup},
};

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

fn window(name: &str, runs: u64, run_time_ns: u64) -> ProgramWindow {
    ProgramWindow {
        name: name.into(),
        runs,
        run_time_ns,
        recursion_misses: runs / 1000,
    }
}

/// A run with a figure in every section and every target missed, so
/// each table, each gap and the chart have something to render.
fn constructed() -> Results {
    let mut retransmit_samples = Vec::new();
    for round in 0..3u64 {
        for (i, tool) in Tool::ALL.into_iter().enumerate() {
            let i = i as u64;
            let connmon = tool.is_connmon();
            let programs = if connmon {
                vec![
                    window(
                        "tcp_retransmit_skb",
                        10_000 + round,
                        9_000_000 + round * 77_000,
                    ),
                    window("sock_send_length", 50_000, 4_000_000 + i * 1000),
                ]
            } else {
                vec![window("kprobe", 9_000 + i, 5_000_000 * (i + 1))]
            };
            retransmit_samples.push(retransmit::Sample {
                tool,
                throughput_bps: 9e9 - (i * 1e8 as u64 + round * 3e7 as u64) as f64,
                programs,
                cpu: Some(crate::bench::probe::Cpu {
                    user_s: 0.013 * (i + 1) as f64 + round as f64 * 0.001,
                    system_s: 0.2,
                }),
                cpu_ns: Some(30_000_000 + i * 1_000_000 + round),
                irq_work: 100 + i * 40 + round,
                voluntary_switches: Some(400 + round),
                nstat_segments: 12_000 + round * 10,
                connmon: connmon.then_some(retransmit::ConnmonWindow {
                    segments: 11_900.0 + round as f64,
                    attempts: 12_100.0,
                    emitted: 300.0 + round as f64,
                    processed: 300.0,
                    lost_ring_buffer: 1.0,
                    lost_socket_map: 0.0,
                    decode_errors: 0.0,
                    timeout_events: 12.0,
                }),
                floor: connmon.then_some(window("tcp_retransmit_skb", 10_000, 2_000_000)),
            });
        }
    }
    let mut redis_samples = Vec::new();
    for round in 0..3u32 {
        for keepalive in [true, false] {
            for setup in Setup::ALL {
                let with_floor =
                    matches!(setup, Setup::WatchedWithFloor | Setup::UnwatchedWithFloor);
                let watched = setup == Setup::WatchedWithFloor;
                let hooks = [
                    "sock_send_length",
                    "inet_sock_set_state",
                    "tcp_destroy_sock",
                ];
                let programs = hooks
                    .iter()
                    .map(|hook| {
                        window(
                            hook,
                            100_000,
                            if watched { 9_000_000 } else { 6_000_000 } + u64::from(round) * 10_000,
                        )
                    })
                    .collect();
                let mut floor: Vec<ProgramWindow> = hooks
                    .iter()
                    .map(|hook| window(hook, 100_000, 4_000_000))
                    .collect();
                floor.extend(
                    floor::HELPER_PROBES
                        .iter()
                        .enumerate()
                        .map(|(i, (helper, _, _))| {
                            window(helper, 100_000, 4_500_000 + i as u64 * 300_000)
                        }),
                );
                redis_samples.push(redis::Sample {
                    round,
                    keepalive,
                    setup,
                    requests: 200_000,
                    // The kernel share divides by this machine's CPUs:
                    // with 0 it is not computed, and the text is the
                    // same everywhere.
                    requests_per_second: if with_floor {
                        0.0
                    } else {
                        90_000.0
                            - f64::from(round) * 1000.0
                            - if setup == Setup::Connmon { 2000.0 } else { 0.0 }
                    },
                    machine_busy_ns: 2_000_000_000
                        + u64::from(setup == Setup::Connmon) * 100_000_000
                        + u64::from(round) * 1_000_000,
                    programs: if with_floor { programs } else { Vec::new() },
                    floor: if with_floor { floor } else { Vec::new() },
                });
            }
        }
    }
    Results {
        repetitions: 3,
        seconds: 4,
        load_before: 0.7,
        load_after: 0.2,
        elapsed: Duration::from_secs(321),
        pipeline: vec![PipelineResult {
            name: "decode+sockets+detect".into(),
            events_per_second: 1.5e6,
        }],
        retransmit: retransmit::Results {
            samples: retransmit_samples,
        },
        redis: redis::Results {
            samples: redis_samples,
            requests_keepalive: 200_000,
            requests_reconnect: 20_000,
        },
        memory: memory::Results {
            samples: SIZES
                .iter()
                .map(|&sockets| memory::Sample {
                    sockets,
                    tracked: sockets as f64,
                    lost_records: 0.0,
                    idle_rss_kib: 9_000,
                    rss_kib: 9_000 + sockets / 2,
                    cpu_seconds: sockets as f64 / 10_000.0,
                })
                .collect(),
        },
        latency: latency::Results {
            samples: (0..4)
                .map(|i| latency::Sample {
                    to_stdout_ms: 3.0 + f64::from(i),
                    to_metrics_ms: 5.0 + f64::from(i),
                    send_to_confirm_ms: 1400.0 + f64::from(i),
                })
                .collect(),
        },
        scrape: scrape::Results {
            quiet_ms: vec![2.0, 3.0, 4.0],
            flooded_ms: vec![20.0, 30.0, 140.0],
            records_per_second: 5000.0,
            lost: 0.0,
        },
        blackout: blackout::Results {
            rows: vec![connmon_tests::blackout::Report {
                connections: 1000,
                found: 998,
                misattributed: vec!["one".into()],
                wrong_outcome: vec!["two".into(), "three".into()],
                latency_ms: vec![5.0, 8.0, 40.0],
                send_to_report_ms: vec![1500.0, 1600.0],
                records_emitted: 5000.0,
                records_lost: 0.0,
                cpu_seconds: 1.25,
                peak_rss_kib: 30_000,
                ..Default::default()
            }],
            skipped: vec![(10_000, "too few file descriptors".into())],
        },
        scan: scan::Results {
            sockets: 4000,
            watched_ms: vec![9.5, 10.25, 12.0],
            unwatched_ms: vec![4.0, 4.5, 5.125],
            namespaces: vec![3.0, 3.0, 4.0],
        },
        stats_untouched: Some(stats_check::Verdict {
            untouched: false,
            detail: "bpf_stats_enabled was switched on".into(),
        }),
        failures: vec![("latency".into(), "no storm seen".into())],
    }
}

/// `bench/report.md`'s format is pinned: a constructed run renders as it
/// did when the report was one file (testdata/, recorded then).
#[test]
fn a_constructed_run_renders_as_recorded() {
    let results = constructed();
    let machine = Machine {
        date: "2026-01-01 00:00".into(),
        kernel: "6.18.0".into(),
        cpus: "2".into(),
        cpu_model: "test CPU".into(),
        commit: "0000000".into(),
        bcc: "0.1".into(),
        bpftrace: "0.2".into(),
    };
    assert_renders_as(
        &render(&results, "report.svg", &machine),
        include_str!("testdata/constructed.md"),
    );
    assert_renders_as(&chart(&results), include_str!("testdata/constructed.svg"));
}

fn assert_renders_as(rendered: &str, recorded: &str) {
    for (number, (line, expected)) in rendered.lines().zip(recorded.lines()).enumerate() {
        assert_eq!(line, expected, "line {}", number + 1);
    }
    assert_eq!(rendered, recorded, "the same lines, but not as many");
}
