//! Kernel-side numbers as Prometheus families, read at every scrape.
//!
//! The kernel keeps the counters (a per-CPU array, the programs' own
//! statistics); a scrape reads them and exports them as they are, so
//! nothing is remembered between scrapes and nothing is read per event (as
//! Cloudflare's ebpf_exporter does). `families` turns one reading into the
//! families and is tested without a kernel.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicI64, Ordering},
};

use monitor_common::counters::{
    EVENTS_EMITTED, LOST_RINGBUF_FULL, LOST_SOCKET_MAP_FULL, RETRANSMITS_BASE,
    RETRANSMITTED_SEGMENTS, SOCKETS_ADDED, SOCKETS_REMOVED,
};
use prometheus::{
    CounterVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    core::{Collector, Desc},
    proto::MetricFamily,
};

use crate::{
    capture::{
        counters::{CounterSnapshot, KernelCounters},
        reader::ReaderStats,
        stats::{ProgramStats, ProgramStatsReader},
    },
    event::RetransmitKind,
};

/// Where a scrape reads the kernel-side numbers from.
pub struct KernelSources {
    pub counters: KernelCounters,
    pub programs: ProgramStatsReader,
    pub reader: Arc<ReaderStats>,
}

/// One reading of the kernel-side numbers.
#[derive(Clone, Debug, Default)]
pub struct KernelReading {
    pub counters: CounterSnapshot,
    /// Records userspace could not decode (the ring's reader counts them).
    pub decode_errors: u64,
    pub programs: Vec<(&'static str, ProgramStats)>,
}

/// Why records were lost, as `connmon_lost_records_total` labels them;
/// each is exported from the start, so rules on them see 0, not nothing.
const LOST_REASONS: [&str; 3] = ["ring_buffer_full", "socket_map_full", "decode_error"];

/// The families, built afresh for each scrape.
struct Families {
    lost_records: IntCounterVec,
    kernel_retransmits: IntCounterVec,
    kernel_segments: IntCounter,
    kernel_events_emitted: IntCounter,
    tracked_sockets: IntGaugeVec,
    program_run_seconds: CounterVec,
    program_runs: IntCounterVec,
    program_recursion_misses: IntCounterVec,
    program_verified_instructions: IntGaugeVec,
}

impl Families {
    fn new() -> prometheus::Result<Self> {
        Ok(Self {
            lost_records: IntCounterVec::new(
                Opts::new(
                    "connmon_lost_records_total",
                    "Kernel records lost, by reason: ring_buffer_full, socket_map_full, decode_error.",
                ),
                &["reason"],
            )?,
            kernel_retransmits: IntCounterVec::new(
                Opts::new(
                    "connmon_kernel_retransmits_total",
                    "Retransmit attempts on every TCP socket of the host, by kind.",
                ),
                &["kind"],
            )?,
            kernel_segments: IntCounter::new(
                "connmon_kernel_retransmitted_segments_total",
                "Segments in successful retransmits on every TCP socket of the host: what nstat's TcpRetransSegs counts.",
            )?,
            kernel_events_emitted: IntCounter::new(
                "connmon_kernel_events_emitted_total",
                "Records the kernel programs wrote to the ring buffer; each is processed (connmon_events_total) or lost (connmon_lost_records_total).",
            )?,
            tracked_sockets: IntGaugeVec::new(
                Opts::new(
                    "connmon_tracked_sockets",
                    "Sockets connmon tracks: table=kernel (watched sockets with kernel state), userspace (sockets a record was seen for).",
                ),
                &["table"],
            )?,
            program_run_seconds: CounterVec::new(
                Opts::new(
                    "connmon_bpf_program_run_seconds_total",
                    "Time spent in each BPF program, as the kernel accounts it: it accounts only while BPF run-time statistics are on (sysctl kernel.bpf_stats_enabled=1 on the node, or connmon --bpf-run-time-stats, both costing every BPF program on the host two clock reads per run); otherwise this stays 0.",
                ),
                &["program"],
            )?,
            program_runs: IntCounterVec::new(
                Opts::new(
                    "connmon_bpf_program_runs_total",
                    "Runs of each BPF program, counted by the kernel only while BPF run-time statistics are on (see connmon_bpf_program_run_seconds_total).",
                ),
                &["program"],
            )?,
            program_recursion_misses: IntCounterVec::new(
                Opts::new(
                    "connmon_bpf_program_recursion_misses_total",
                    "Runs the kernel skipped because the program was already running on that CPU (lost events).",
                ),
                &["program"],
            )?,
            program_verified_instructions: IntGaugeVec::new(
                Opts::new(
                    "connmon_bpf_program_verified_instructions",
                    "Instructions the verifier processed per program.",
                ),
                &["program"],
            )?,
        })
    }

    fn collectors(&self) -> [&dyn Collector; 9] {
        [
            &self.lost_records,
            &self.kernel_retransmits,
            &self.kernel_segments,
            &self.kernel_events_emitted,
            &self.tracked_sockets,
            &self.program_run_seconds,
            &self.program_runs,
            &self.program_recursion_misses,
            &self.program_verified_instructions,
        ]
    }
}

fn gauge_value(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The families for one reading (`None`: the kernel side is not loaded
/// yet) and the userspace socket table's size.
pub fn families(
    reading: Option<&KernelReading>,
    userspace_sockets: i64,
) -> prometheus::Result<Vec<MetricFamily>> {
    let f = Families::new()?;
    for reason in LOST_REASONS {
        f.lost_records.with_label_values(&[reason]);
    }
    f.tracked_sockets
        .with_label_values(&["userspace"])
        .set(userspace_sockets);
    if let Some(reading) = reading {
        let counters = &reading.counters;
        for (reason, total) in LOST_REASONS.into_iter().zip([
            counters.get(LOST_RINGBUF_FULL),
            counters.get(LOST_SOCKET_MAP_FULL),
            reading.decode_errors,
        ]) {
            f.lost_records.with_label_values(&[reason]).inc_by(total);
        }
        for kind in RetransmitKind::ALL {
            f.kernel_retransmits
                .with_label_values(&[kind.as_str()])
                .inc_by(counters.get(RETRANSMITS_BASE + u32::from(kind.tag())));
        }
        f.kernel_segments
            .inc_by(counters.get(RETRANSMITTED_SEGMENTS));
        f.kernel_events_emitted.inc_by(counters.get(EVENTS_EMITTED));
        // Storage is freed with its socket; every socket with storage ends
        // in tcp_destroy_sock, which counts the removal.
        let live = counters
            .get(SOCKETS_ADDED)
            .saturating_sub(counters.get(SOCKETS_REMOVED));
        f.tracked_sockets
            .with_label_values(&["kernel"])
            .set(gauge_value(live));
        for (program, stats) in &reading.programs {
            f.program_runs
                .with_label_values(&[program])
                .inc_by(stats.run_count);
            f.program_run_seconds
                .with_label_values(&[program])
                .inc_by(stats.run_time_ns as f64 / 1e9);
            f.program_recursion_misses
                .with_label_values(&[program])
                .inc_by(stats.recursion_misses);
            f.program_verified_instructions
                .with_label_values(&[program])
                .set(gauge_value(stats.verified_instructions));
        }
    }
    // A labelled family without a series yet (no programs before loading)
    // is left out, as the registry would.
    Ok(f.collectors()
        .iter()
        .flat_map(|c| c.collect())
        .filter(|family| !family.get_metric().is_empty())
        .collect())
}

/// Reads the kernel side at every scrape. Shared (`Arc`) between the
/// registry and the daemon, which hands over the sources once the
/// programs are loaded.
pub struct KernelCollector {
    sources: Mutex<Option<KernelSources>>,
    userspace_sockets: AtomicI64,
    descs: Vec<Desc>,
}

impl KernelCollector {
    pub fn new() -> prometheus::Result<Self> {
        let descs = Families::new()?
            .collectors()
            .iter()
            .flat_map(|c| c.desc().into_iter().cloned())
            .collect();
        Ok(Self {
            sources: Mutex::new(None),
            userspace_sockets: AtomicI64::new(0),
            descs,
        })
    }

    pub fn set_sources(&self, sources: KernelSources) {
        if let Ok(mut slot) = self.sources.lock() {
            *slot = Some(sources);
        }
    }

    pub fn set_userspace_sockets(&self, count: usize) {
        self.userspace_sockets
            .store(gauge_value(count as u64), Ordering::Relaxed);
    }

    /// The kernel's counters now, once the sources are set.
    pub fn counters(&self) -> Option<CounterSnapshot> {
        let slot = self.sources.lock().ok()?;
        slot.as_ref()?.counters.snapshot().ok()
    }

    /// The kernel side now; `None` before the sources are set.
    fn read(&self) -> Option<KernelReading> {
        let slot = self.sources.lock().ok()?;
        let sources = slot.as_ref()?;
        let counters = match sources.counters.snapshot() {
            Ok(counters) => counters,
            Err(error) => {
                tracing::warn!(%error, "cannot read kernel counters");
                CounterSnapshot::default()
            }
        };
        Some(KernelReading {
            counters,
            decode_errors: sources.reader.decode_errors.load(Ordering::Relaxed),
            programs: sources.programs.read(),
        })
    }
}

/// The registry's handle on the shared collector.
pub struct Registered(pub Arc<KernelCollector>);

impl Collector for Registered {
    fn desc(&self) -> Vec<&Desc> {
        self.0.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let reading = self.0.read();
        families(
            reading.as_ref(),
            self.0.userspace_sockets.load(Ordering::Relaxed),
        )
        .unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot build the kernel metric families");
            Vec::new()
        })
    }
}

#[cfg(test)]
mod tests {
    use monitor_common::counters::COUNTER_SLOTS;
    use prometheus::{Encoder, TextEncoder};

    use super::*;

    fn render(reading: Option<&KernelReading>) -> String {
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&families(reading, 7).expect("families"), &mut text)
            .expect("encode");
        String::from_utf8(text).expect("utf-8")
    }

    #[test]
    fn a_scrape_exports_the_kernels_totals_as_they_are() {
        let mut values = vec![0u64; COUNTER_SLOTS as usize];
        values[LOST_RINGBUF_FULL as usize] = 5;
        values[RETRANSMITS_BASE as usize + 1] = 9;
        values[SOCKETS_ADDED as usize] = 10;
        values[SOCKETS_REMOVED as usize] = 4;
        let reading = KernelReading {
            counters: CounterSnapshot { values },
            decode_errors: 2,
            programs: vec![(
                "tcp_retransmit_skb",
                ProgramStats {
                    run_time_ns: 1_500_000_000,
                    run_count: 3,
                    recursion_misses: 1,
                    verified_instructions: 7132,
                },
            )],
        };
        // Twice the same reading: the same totals, nothing accumulated.
        for _ in 0..2 {
            let text = render(Some(&reading));
            for line in [
                "connmon_lost_records_total{reason=\"ring_buffer_full\"} 5",
                "connmon_lost_records_total{reason=\"socket_map_full\"} 0",
                "connmon_lost_records_total{reason=\"decode_error\"} 2",
                "connmon_kernel_retransmits_total{kind=\"timeout\"} 9",
                "connmon_tracked_sockets{table=\"kernel\"} 6",
                "connmon_tracked_sockets{table=\"userspace\"} 7",
                "connmon_bpf_program_run_seconds_total{program=\"tcp_retransmit_skb\"} 1.5",
                "connmon_bpf_program_recursion_misses_total{program=\"tcp_retransmit_skb\"} 1",
                "connmon_bpf_program_verified_instructions{program=\"tcp_retransmit_skb\"} 7132",
            ] {
                assert!(text.contains(line), "{line} missing in {text}");
            }
        }
    }

    #[test]
    fn before_the_kernel_side_is_loaded_losses_read_zero() {
        let text = render(None);
        for reason in LOST_REASONS {
            assert!(
                text.contains(&format!(
                    "connmon_lost_records_total{{reason=\"{reason}\"}} 0"
                )),
                "{text}"
            );
        }
        assert!(!text.contains("table=\"kernel\""), "{text}");
    }
}
