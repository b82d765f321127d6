//! Every family the daemon updates: its name, help text, labels and
//! buckets, declared and registered here once. (The kernel-side families
//! are `kernel_metrics.rs`'s.) A new family is a field and one statement.

use prometheus::{
    Counter, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, core::Collector,
};

use crate::detect::Outcome;

/// The families a label set can be folded or expired in, by name (the
/// `metric` label of `connmon_series_capped_total`).
pub(super) const RETRANSMITS: &str = "connmon_retransmits_total";
pub(super) const STORMS_STARTED: &str = "connmon_storms_started_total";
pub(super) const RESETS_AFTER_IDLE: &str = "connmon_resets_after_idle_total";
pub(super) const CONNECTION_FAILURES: &str = "connmon_connection_failures_total";
pub(super) const AT_RISK: &str = "connmon_idle_connections_at_risk";
pub(super) const IDLE_REUSE_GAPS: &str = "connmon_idle_reuse_gap_seconds";

/// What a watched connection's per-owner families are labelled with.
const OWNER: [&str; 4] = ["process", "container", "destination", "role"];

pub(super) struct Families {
    pub retransmits: IntCounterVec,
    pub storms_started: IntCounterVec,
    pub storms_ended: IntCounterVec,
    pub storms_active: IntGaugeVec,
    pub storm_duration: HistogramVec,
    pub idle_before_storm: HistogramVec,
    pub resets_after_idle: IntCounterVec,
    pub connection_failures: IntCounterVec,
    pub events: IntCounterVec,
    pub series_capped: IntCounterVec,
    pub fail_fast: IntCounterVec,
    pub alert_deliveries: IntCounterVec,
    pub at_risk: IntGaugeVec,
    pub inferred_timeout: GaugeVec,
    /// Idle-gap evidence per destination (`detect::reuse`): what the fleet
    /// view aggregates across nodes.
    pub idle_reuse_gaps: HistogramVec,
    pub longest_survived_gap: GaugeVec,
    pub shortest_failed_gap: GaugeVec,
    pub degraded_hooks: IntGaugeVec,
    /// The stuck-send scan's own cost (`stuck_scan`).
    pub stuck_scans: IntCounter,
    pub stuck_scan_cpu: Counter,
    pub stuck_scan_namespaces: IntGauge,
    pub stuck_scan_skipped: IntCounter,
}

impl Families {
    /// Declares every family and registers it, with connmon's build
    /// information and its own process statistics.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let failure_labels = [&OWNER[..], &["mode"]].concat();
        let families = Self {
            retransmits: family(
                registry,
                RETRANSMITS,
                "TCP retransmits by owning process, container, destination (watched endpoint, else other), kind and role.",
                &["process", "container", "destination", "kind", "role"],
            )?,
            storms_started: family(
                registry,
                STORMS_STARTED,
                "Retransmit storms confirmed on idle connections.",
                &OWNER,
            )?,
            storms_ended: family(
                registry,
                "connmon_storms_ended_total",
                "Retransmit storms that ended, by outcome.",
                &["outcome"],
            )?,
            storms_active: family(
                registry,
                "connmon_storms_active",
                "Retransmit storms in progress.",
                &OWNER,
            )?,
            storm_duration: histograms(
                registry,
                "connmon_storm_duration_seconds",
                "Time lost per storm: from the stuck send to the storm's end.",
                vec![
                    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 960.0, 1800.0,
                ],
                &["role", "outcome"],
            )?,
            idle_before_storm: histograms(
                registry,
                "connmon_idle_before_storm_seconds",
                "How long connections were idle before a storm: the path's idle timeout is below the smallest.",
                vec![
                    10.0, 30.0, 60.0, 120.0, 240.0, 350.0, 600.0, 1200.0, 3600.0, 7200.0, 86400.0,
                ],
                &["role"],
            )?,
            resets_after_idle: family(
                registry,
                RESETS_AFTER_IDLE,
                "Connections reset right after resuming from idle.",
                &OWNER,
            )?,
            connection_failures: family(
                registry,
                CONNECTION_FAILURES,
                "Watched connections that failed without a retransmit storm, by mode: egress_blocked (a local firewall drop), connect_stalled (SYN retransmits), keepalive_timeout, zero_window (the peer stopped reading). Each connection once, when first reported (a hanging one is not counted again when it times out).",
                &failure_labels,
            )?,
            events: family(
                registry,
                "connmon_events_total",
                "Kernel events about watched sockets processed, by event.",
                &["event"],
            )?,
            series_capped: family(
                registry,
                "connmon_series_capped_total",
                "Samples folded into label value other by the series cap.",
                &["metric"],
            )?,
            fail_fast: family(
                registry,
                "connmon_fail_fast_total",
                "Sockets of confirmed storms that fail-fast handled, by result: aborted, would_abort (dry run), failed.",
                &["result"],
            )?,
            alert_deliveries: family(
                registry,
                "connmon_alert_deliveries_total",
                "Alert deliveries per receiver (alertmanager-N, webhook-N: the Nth URL of its kind), by result: sent, failed (after retries), dropped (the receiver's queue was full).",
                &["receiver", "result"],
            )?,
            at_risk: family(
                registry,
                AT_RISK,
                "Watched connections quiet for longer than their path's idle timeout: they will hang on next use.",
                &["process", "container", "destination"],
            )?,
            inferred_timeout: family(
                registry,
                "connmon_inferred_path_idle_timeout_seconds",
                "Upper bound of the path's idle timeout per destination: the shortest idle gap that ended in a storm.",
                &["destination"],
            )?,
            idle_reuse_gaps: histograms(
                registry,
                IDLE_REUSE_GAPS,
                "Idle gaps before each reuse of a watched connection, by destination, role and outcome: survived (payload came back), blackholed (a storm), reset, peer_closed (the server had closed it). The path's idle timeout lies between the longest survived gap and the shortest blackholed or reset one.",
                // Short ones for tests and chatty pools; then the idle
                // timeouts of real middleboxes: Azure LB 240 s, AWS NAT/NLB
                // 350 s, IPVS 900 s, GCP Cloud NAT 1200 s, Linux
                // keepalive's 7200 s.
                vec![
                    1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 240.0, 350.0, 600.0, 900.0, 1200.0,
                    3600.0, 7200.0,
                ],
                &["destination", "role", "outcome"],
            )?,
            longest_survived_gap: family(
                registry,
                "connmon_idle_reuse_longest_survived_gap_seconds",
                "Per destination, the longest idle gap after which a reused connection got payload back: the path's idle timeout is above it.",
                &["destination"],
            )?,
            shortest_failed_gap: family(
                registry,
                "connmon_idle_reuse_shortest_failed_gap_seconds",
                "Per destination, the shortest idle gap after which a reused connection was blackholed or reset: the path's idle timeout is at most this.",
                &["destination"],
            )?,
            degraded_hooks: family(
                registry,
                "connmon_degraded_hooks",
                "Optional kernel hooks this kernel lacks or refused (1 each), with the capability lost.",
                &["hook", "lost"],
            )?,
            stuck_scans: registered(
                registry,
                IntCounter::new(
                    "connmon_stuck_scans_total",
                    "Scans for watched connections whose send is stuck (zero window), one per --stuck-scan-interval.",
                )?,
            )?,
            stuck_scan_cpu: registered(
                registry,
                Counter::new(
                    "connmon_stuck_scan_cpu_seconds_total",
                    "CPU time the stuck-send scans took (listing namespaces and dumping their sockets); over connmon_stuck_scans_total, the CPU per scan.",
                )?,
            )?,
            stuck_scan_namespaces: registered(
                registry,
                IntGauge::new(
                    "connmon_stuck_scan_namespaces",
                    "Network namespaces the last stuck-send scan dumped.",
                )?,
            )?,
            stuck_scan_skipped: registered(
                registry,
                IntCounter::new(
                    "connmon_stuck_scan_namespaces_skipped_total",
                    "Namespaces a stuck-send scan could not enter or dump, mostly because their last process exited meanwhile.",
                )?,
            )?,
        };
        // Every outcome from the start, so rules on them see 0 rather than
        // nothing.
        for outcome in Outcome::ALL {
            families.storms_ended.with_label_values(&[outcome.as_str()]);
        }
        register_build_info(registry)?;
        // process_cpu_seconds_total, process_resident_memory_bytes,
        // process_open_fds, process_start_time_seconds, ... of connmon itself.
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(families)
    }
}

fn register_build_info(registry: &Registry) -> Result<(), prometheus::Error> {
    let build_info = IntGauge::with_opts(
        Opts::new(
            "connmon_build_info",
            "connmon's version, the git revision it was built from, the compiler and the CPU architecture; always 1.",
        )
        .const_label("version", crate::version::VERSION)
        .const_label("revision", crate::version::REVISION)
        .const_label("rustversion", crate::version::RUSTC)
        .const_label("arch", std::env::consts::ARCH),
    )?;
    build_info.set(1);
    registered(registry, build_info).map(drop)
}

fn registered<F: Collector + Clone + 'static>(
    registry: &Registry,
    family: F,
) -> Result<F, prometheus::Error> {
    registry.register(Box::new(family.clone()))?;
    Ok(family)
}

/// A labelled family made from its options and label names.
trait Labelled: Collector + Clone + Sized + 'static {
    fn declare(opts: Opts, labels: &[&str]) -> Result<Self, prometheus::Error>;
}

macro_rules! labelled {
    ($($family:ty),*) => {$(
        impl Labelled for $family {
            fn declare(opts: Opts, labels: &[&str]) -> Result<Self, prometheus::Error> {
                Self::new(opts, labels)
            }
        }
    )*};
}

labelled!(IntCounterVec, IntGaugeVec, GaugeVec);

/// Declares a counter or gauge family and registers it.
fn family<F: Labelled>(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<F, prometheus::Error> {
    registered(registry, F::declare(Opts::new(name, help), labels)?)
}

/// Declares a histogram family and registers it.
fn histograms(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
    labels: &[&str],
) -> Result<HistogramVec, prometheus::Error> {
    let opts = HistogramOpts::new(name, help).buckets(buckets);
    registered(registry, HistogramVec::new(opts, labels)?)
}
