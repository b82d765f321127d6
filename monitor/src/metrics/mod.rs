//! Prometheus metrics. Labels have bounded cardinality: process name,
//! container, destination (a watched endpoint as `ip:port`, everything else
//! `other`), kind, role, outcome. No pids, no 4-tuples: those are in the
//! events. Each labelled family has a hard series cap; past it, new label
//! sets are folded into `process="other", container="other",
//! destination="other"` and counted in `connmon_series_capped_total`.
//! Label sets that stay unchanged for the series expiry are removed.
//!
//! One job a module: `families` declares and registers every family,
//! `labels` makes label values and applies the series cap, `retransmits`
//! counts records and retransmits, `findings` storms, resets, failures and
//! idle reuse, `at_risk` the audit's gauge, `expiry` removes quiet label
//! sets. This module holds them together and renders the exposition.

mod at_risk;
mod expiry;
mod families;
mod findings;
mod labels;
mod retransmits;

use std::sync::{Arc, Mutex};

use prometheus::{Encoder, IntCounterVec, Registry, TextEncoder};

use self::{
    expiry::Activity, families::Families, findings::StormSeries, labels::SeenSeries,
    retransmits::RetransmitCache,
};
use crate::{
    attribution::ContainerByCgroup,
    capture::counters::CounterSnapshot,
    kernel_metrics::{self, KernelCollector, KernelSources},
};

/// Default cap on label sets per metric family.
pub const DEFAULT_SERIES_CAP: usize = 2000;
const OTHER: &str = "other";

pub struct Metrics {
    registry: Registry,
    series_cap: usize,
    families: Families,
    /// Kernel-side families, read at every scrape.
    kernel: Arc<KernelCollector>,
    state: Mutex<State>,
}

/// What the metrics remember between updates.
#[derive(Default)]
struct State {
    series: SeenSeries,
    containers: ContainerByCgroup,
    retransmit_series: RetransmitCache,
    /// `connmon_events_total` per event kind, resolved once.
    event_counters: Vec<(&'static str, prometheus::IntCounter)>,
    storms: StormSeries,
    activity: Activity,
}

impl Metrics {
    pub fn new(series_cap: usize) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let families = Families::register(&registry)?;
        let kernel = Arc::new(KernelCollector::new()?);
        registry.register(Box::new(kernel_metrics::Registered(kernel.clone())))?;
        Ok(Self {
            registry,
            series_cap,
            families,
            kernel,
            state: Mutex::new(State::default()),
        })
    }

    /// The optional hooks missing on this kernel (set once at start-up).
    pub fn set_degraded_hooks(&self, hooks: &[&crate::capture::Hook]) {
        for hook in hooks {
            self.families
                .degraded_hooks
                .with_label_values(&[hook.tracepoint, hook.purpose])
                .set(1);
        }
    }

    /// What a stuck-send scan cost.
    pub fn observe_stuck_scan(&self, cost: &crate::stuck_scan::ScanCost) {
        // CPU first: a scrape never sees a scan counted without its CPU.
        self.families.stuck_scan_cpu.inc_by(cost.cpu.as_secs_f64());
        self.families.stuck_scans.inc();
        self.families
            .stuck_scan_namespaces
            .set(i64::try_from(cost.namespaces).unwrap_or(i64::MAX));
        self.families
            .stuck_scan_skipped
            .inc_by(u64::try_from(cost.skipped).unwrap_or(u64::MAX));
    }

    pub fn observe_fail_fast(&self, result: &str) {
        self.families.fail_fast.with_label_values(&[result]).inc();
    }

    /// The alert delivery counter, handed to the alert senders. Its label
    /// values are bounded: one per configured receiver and result.
    pub fn alert_deliveries(&self) -> IntCounterVec {
        self.families.alert_deliveries.clone()
    }

    pub fn set_userspace_sockets(&self, count: usize) {
        self.kernel.set_userspace_sockets(count);
    }

    /// Hands over the kernel-side sources, read at every scrape.
    pub fn set_kernel_sources(&self, sources: KernelSources) {
        self.kernel.set_sources(sources);
    }

    /// The kernel's counters now, once the sources are set.
    pub fn kernel_counters(&self) -> Option<CounterSnapshot> {
        self.kernel.counters()
    }

    /// Adds a collector owned elsewhere (the HTTP server's own counters).
    pub fn register(
        &self,
        collector: Box<dyn prometheus::core::Collector>,
    ) -> prometheus::Result<()> {
        self.registry.register(collector)
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

#[cfg(test)]
mod test_support {
    use crate::event::{
        ActivityTimes, Connection, EventKind, OwnerSource, ProcessRef, RetransmitInfo,
        RetransmitKind, Role, SocketEvent, TcpState,
    };

    /// A timeout retransmit by `comm` on a client connection to `remote`.
    pub fn retransmit(comm: &str, remote: &str) -> SocketEvent {
        SocketEvent {
            timestamp_ns: 1,
            cookie: 1,
            kind: EventKind::Retransmit(RetransmitInfo {
                kind: RetransmitKind::Timeout,
                result: 0,
                segments: 1,
                rto_retransmits: 1,
                backoff: 0,
                snd_una: 0,
                user_timeout_ms: 0,
                tcp_retries2: 15,
                total_retrans_low: 0,
            }),
            owner: Some(ProcessRef {
                pid: 1,
                tid: 1,
                comm: comm.into(),
                cgroup_id: 0,
                start_boottime_ns: 0,
                source: OwnerSource::Send,
                shared: false,
            }),
            role: Role::Client,
            connection: Connection {
                local: "10.0.0.1:5000".parse().expect("addr"),
                remote: remote.parse().expect("addr"),
                netns: 1,
            },
            state: TcpState(1),
            activity: ActivityTimes::default(),
            end: None,
        }
    }

    /// The `connmon_retransmits_total` series of an exposition.
    pub fn retransmit_series(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|l| l.starts_with("connmon_retransmits_total{"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{DEFAULT_SERIES_CAP, Metrics};

    #[test]
    fn renders_help_for_every_metric() {
        let text = Metrics::new(DEFAULT_SERIES_CAP).expect("metrics").render();
        for name in [
            "connmon_build_info",
            "connmon_lost_records_total",
            "connmon_storms_ended_total",
            "connmon_stuck_scans_total",
            "connmon_stuck_scan_cpu_seconds_total",
        ] {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} missing:\n{text}"
            );
        }
    }

    #[test]
    fn build_info_names_the_revision_and_process_metrics_are_exported() {
        let text = Metrics::new(DEFAULT_SERIES_CAP).expect("metrics").render();
        let build_info = text
            .lines()
            .find(|line| line.starts_with("connmon_build_info{"))
            .unwrap_or_else(|| panic!("no connmon_build_info:\n{text}"));
        assert!(
            build_info.contains(&format!("revision=\"{}\"", crate::version::REVISION)),
            "{build_info}"
        );
        assert!(
            build_info.contains(&format!("version=\"{}\"", crate::version::VERSION)),
            "{build_info}"
        );
        assert!(build_info.ends_with(" 1"), "{build_info}");
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            let value: f64 = text
                .lines()
                .find_map(|line| line.strip_prefix(&format!("{name} ")))
                .and_then(|value| value.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing:\n{text}"));
            if name != "process_cpu_seconds_total" {
                assert!(value > 0.0, "{name} = {value}");
            }
        }
    }
}
