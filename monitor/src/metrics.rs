//! Prometheus metrics. Labels have bounded cardinality: process name,
//! container, destination (a watched endpoint as `ip:port`, everything else
//! `other`), kind, role, outcome. No pids, no 4-tuples: those are in the
//! events. Each labelled family has a hard series cap; past it, new label
//! sets are folded into `process="other", container="other",
//! destination="other"` and counted in `connmon_series_capped_total`.
//! Label sets that stay unchanged for the series expiry are removed.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::{
    attribution::{container, procfs, unwatched::OwnerIncrement},
    capture::counters::CounterSnapshot,
    detect::{
        Finding, Storm,
        reuse::{IdleReuse, ReuseOutcome},
    },
    event::{Connection, EventKind, ProcessRef, RetransmitKind, Role, SocketEvent},
    kernel_metrics::{self, KernelCollector, KernelSources},
};

/// Default cap on label sets per metric family.
pub const DEFAULT_SERIES_CAP: usize = 2000;
const OTHER: &str = "other";

pub struct Metrics {
    registry: Registry,
    series_cap: usize,
    retransmits: IntCounterVec,
    storms_started: IntCounterVec,
    storms_ended: IntCounterVec,
    storms_active: IntGaugeVec,
    storm_duration: HistogramVec,
    idle_before_storm: HistogramVec,
    resets_after_idle: IntCounterVec,
    connection_failures: IntCounterVec,
    events: IntCounterVec,
    series_capped: IntCounterVec,
    fail_fast: IntCounterVec,
    alert_deliveries: IntCounterVec,
    at_risk: IntGaugeVec,
    inferred_timeout: prometheus::GaugeVec,
    idle_reuse: IdleReuseMetrics,
    degraded_hooks: IntGaugeVec,
    /// Kernel-side families, read at every scrape.
    kernel: Arc<KernelCollector>,
    state: Mutex<State>,
}

/// Idle-gap evidence per destination (`detect::reuse`): what the fleet view
/// aggregates across nodes.
struct IdleReuseMetrics {
    gaps: HistogramVec,
    longest_survived: prometheus::GaugeVec,
    shortest_failed: prometheus::GaugeVec,
}

const IDLE_REUSE_FAMILY: &str = "connmon_idle_reuse_gap_seconds";

impl IdleReuseMetrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let gaps = HistogramVec::new(
            HistogramOpts::new(
                IDLE_REUSE_FAMILY,
                "Idle gaps before each reuse of a watched connection, by destination, role and outcome: survived (payload came back), blackholed (a storm), reset, peer_closed (the server had closed it). The path's idle timeout lies between the longest survived gap and the shortest blackholed or reset one.",
            )
            // Short ones for tests and chatty pools; then the idle timeouts
            // of real middleboxes: Azure LB 240 s, AWS NAT/NLB 350 s, IPVS
            // 900 s, GCP Cloud NAT 1200 s, Linux keepalive's 7200 s.
            .buckets(vec![
                1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 240.0, 350.0, 600.0, 900.0, 1200.0,
                3600.0, 7200.0,
            ]),
            &["destination", "role", "outcome"],
        )?;
        let longest_survived = prometheus::GaugeVec::new(
            Opts::new(
                "connmon_idle_reuse_longest_survived_gap_seconds",
                "Per destination, the longest idle gap after which a reused connection got payload back: the path's idle timeout is above it.",
            ),
            &["destination"],
        )?;
        let shortest_failed = prometheus::GaugeVec::new(
            Opts::new(
                "connmon_idle_reuse_shortest_failed_gap_seconds",
                "Per destination, the shortest idle gap after which a reused connection was blackholed or reset: the path's idle timeout is at most this.",
            ),
            &["destination"],
        )?;
        registry.register(Box::new(gaps.clone()))?;
        registry.register(Box::new(longest_survived.clone()))?;
        registry.register(Box::new(shortest_failed.clone()))?;
        Ok(Self {
            gaps,
            longest_survived,
            shortest_failed,
        })
    }
}

/// What the metrics remember between updates.
#[derive(Default)]
struct State {
    /// Label sets seen per family, for the cap.
    series: HashMap<&'static str, HashSet<Vec<String>>>,
    /// Labels each active storm was counted under, to decrement the same.
    active_storm_labels: HashMap<u64, Vec<String>>,
    /// cgroup id -> container label.
    containers: HashMap<u64, String>,
    /// Retransmit counters already resolved, by what their labels are made
    /// of: a retransmit record then costs a lookup, not the formatting and
    /// hashing of five label strings.
    retransmit_series: HashMap<RetransmitSeriesKey, Vec<CachedSeries>>,
    retransmit_series_count: usize,
    /// `connmon_events_total` per event kind, resolved once.
    event_counters: Vec<(&'static str, prometheus::IntCounter)>,
    /// Per capped label set: its value at the last sweep and since when it
    /// has not changed (see `expire_quiet_series`).
    activity: HashMap<(&'static str, Vec<String>), (f64, Instant)>,
    /// Destinations with an inferred path timeout.
    inferred_destinations: HashSet<String>,
}

/// Everything but the process name that decides a retransmit's labels.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct RetransmitSeriesKey {
    cgroup_id: u64,
    destination: std::net::SocketAddr,
    kind: crate::event::RetransmitKind,
    role: Role,
}

/// One process name's counter under a `RetransmitSeriesKey`.
struct CachedSeries {
    process: String,
    counter: prometheus::IntCounter,
    /// Folded into `other` by the series cap: each use is counted as such.
    capped: bool,
}

/// Resolved retransmit series kept at most, as a multiple of the series
/// cap; past it the cache starts over (the counters live on in the registry).
const RETRANSMIT_CACHE_FACTOR: usize = 4;

/// The watched endpoint of a connection: the far side for a client, our
/// side for a server.
fn destination_addr(connection: &Connection, role: Role) -> std::net::SocketAddr {
    role.destination(connection.local, connection.remote)
}

impl Metrics {
    pub fn new(series_cap: usize) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let owner_labels = ["process", "container", "destination", "role"];
        let retransmits = IntCounterVec::new(
            Opts::new(
                "connmon_retransmits_total",
                "TCP retransmits by owning process, container, destination (watched endpoint, else other), kind and role.",
            ),
            &["process", "container", "destination", "kind", "role"],
        )?;
        let storms_started = IntCounterVec::new(
            Opts::new(
                "connmon_storms_started_total",
                "Retransmit storms confirmed on idle connections.",
            ),
            &owner_labels,
        )?;
        let storms_ended = IntCounterVec::new(
            Opts::new(
                "connmon_storms_ended_total",
                "Retransmit storms that ended, by outcome.",
            ),
            &["outcome"],
        )?;
        let storms_active = IntGaugeVec::new(
            Opts::new("connmon_storms_active", "Retransmit storms in progress."),
            &owner_labels,
        )?;
        let storm_duration = HistogramVec::new(
            HistogramOpts::new(
                "connmon_storm_duration_seconds",
                "Time lost per storm: from the stuck send to the storm's end.",
            )
            .buckets(vec![
                1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 960.0, 1800.0,
            ]),
            &["role", "outcome"],
        )?;
        let idle_before_storm = HistogramVec::new(
            HistogramOpts::new(
                "connmon_idle_before_storm_seconds",
                "How long connections were idle before a storm: the path's idle timeout is below the smallest.",
            )
            .buckets(vec![10.0, 30.0, 60.0, 120.0, 240.0, 350.0, 600.0, 1200.0, 3600.0, 7200.0, 86400.0]),
            &["role"],
        )?;
        let resets_after_idle = IntCounterVec::new(
            Opts::new(
                "connmon_resets_after_idle_total",
                "Connections reset right after resuming from idle.",
            ),
            &owner_labels,
        )?;
        let failure_labels: Vec<&str> = owner_labels.iter().copied().chain(["mode"]).collect();
        let connection_failures = IntCounterVec::new(
            Opts::new(
                "connmon_connection_failures_total",
                "Watched connections that failed without a retransmit storm, by mode: egress_blocked (a local firewall drop), connect_stalled (SYN retransmits), keepalive_timeout, zero_window (the peer stopped reading). Each connection once, when first reported (a hanging one is not counted again when it times out).",
            ),
            &failure_labels,
        )?;
        let events = IntCounterVec::new(
            Opts::new(
                "connmon_events_total",
                "Kernel events about watched sockets processed, by event.",
            ),
            &["event"],
        )?;
        let series_capped = IntCounterVec::new(
            Opts::new(
                "connmon_series_capped_total",
                "Samples folded into label value other by the series cap.",
            ),
            &["metric"],
        )?;
        registry.register(Box::new(retransmits.clone()))?;
        registry.register(Box::new(storms_started.clone()))?;
        registry.register(Box::new(storms_ended.clone()))?;
        registry.register(Box::new(storms_active.clone()))?;
        registry.register(Box::new(storm_duration.clone()))?;
        registry.register(Box::new(idle_before_storm.clone()))?;
        registry.register(Box::new(resets_after_idle.clone()))?;
        registry.register(Box::new(connection_failures.clone()))?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(series_capped.clone()))?;
        let kernel = Arc::new(KernelCollector::new()?);
        registry.register(Box::new(kernel_metrics::Registered(kernel.clone())))?;
        let fail_fast = IntCounterVec::new(
            Opts::new(
                "connmon_fail_fast_total",
                "Sockets of confirmed storms that fail-fast handled, by result: aborted, would_abort (dry run), failed.",
            ),
            &["result"],
        )?;
        registry.register(Box::new(fail_fast.clone()))?;
        let alert_deliveries = IntCounterVec::new(
            Opts::new(
                "connmon_alert_deliveries_total",
                "Alert deliveries per receiver (alertmanager-N, webhook-N: the Nth URL of its kind), by result: sent, failed (after retries), dropped (the receiver's queue was full).",
            ),
            &["receiver", "result"],
        )?;
        registry.register(Box::new(alert_deliveries.clone()))?;
        let at_risk = IntGaugeVec::new(
            Opts::new(
                "connmon_idle_connections_at_risk",
                "Watched connections quiet for longer than their path's idle timeout: they will hang on next use.",
            ),
            &["process", "container", "destination"],
        )?;
        registry.register(Box::new(at_risk.clone()))?;
        let inferred_timeout = prometheus::GaugeVec::new(
            Opts::new(
                "connmon_inferred_path_idle_timeout_seconds",
                "Upper bound of the path's idle timeout per destination: the shortest idle gap that ended in a storm.",
            ),
            &["destination"],
        )?;
        registry.register(Box::new(inferred_timeout.clone()))?;
        let idle_reuse = IdleReuseMetrics::register(&registry)?;
        let degraded_hooks = IntGaugeVec::new(
            Opts::new(
                "connmon_degraded_hooks",
                "Optional kernel hooks this kernel lacks or refused (1 each), with the capability lost.",
            ),
            &["hook", "lost"],
        )?;
        registry.register(Box::new(degraded_hooks.clone()))?;
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
        registry.register(Box::new(build_info))?;
        // process_cpu_seconds_total, process_resident_memory_bytes,
        // process_open_fds, process_start_time_seconds, ... of connmon itself.
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        // Present from the start, so rules on them see 0 rather than nothing.
        for outcome in [
            "recovered",
            "timed_out",
            "reset",
            "closed",
            "aborted",
            "monitor_stopped",
            "unknown",
        ] {
            storms_ended.with_label_values(&[outcome]);
        }
        Ok(Self {
            registry,
            series_cap,
            retransmits,
            storms_started,
            storms_ended,
            storms_active,
            storm_duration,
            idle_before_storm,
            resets_after_idle,
            connection_failures,
            events,
            series_capped,
            fail_fast,
            alert_deliveries,
            at_risk,
            inferred_timeout,
            idle_reuse,
            degraded_hooks,
            kernel,
            state: Mutex::new(State::default()),
        })
    }

    /// Applies the series cap: known label sets pass, new ones pass while
    /// the family is under the cap, the rest fold into `other`.
    fn capped(
        &self,
        state: &mut State,
        family: &'static str,
        labels: Vec<String>,
        foldable: usize,
    ) -> Vec<String> {
        let seen = state.series.entry(family).or_default();
        if seen.contains(&labels) || seen.len() < self.series_cap {
            seen.insert(labels.clone());
            return labels;
        }
        self.series_capped.with_label_values(&[family]).inc();
        labels
            .into_iter()
            .enumerate()
            .map(|(i, v)| if i < foldable { OTHER.to_string() } else { v })
            .collect()
    }

    fn container_of(state: &mut State, cgroup_id: u64) -> String {
        if cgroup_id == 0 {
            return String::new();
        }
        state
            .containers
            .entry(cgroup_id)
            .or_insert_with(|| {
                procfs::cgroup_path_by_id(cgroup_id)
                    .and_then(|path| container::workload(&path).container_id)
                    .map(|id| container::short_id(&id))
                    .unwrap_or_default()
            })
            .clone()
    }

    fn owner_labels(
        state: &mut State,
        owner: Option<&ProcessRef>,
        connection: &Connection,
        role: Role,
    ) -> Vec<String> {
        // The process names itself: no control characters in a label value.
        let process = owner.map_or_else(
            || "unknown".to_string(),
            |o| crate::output::escape::control(&o.comm).into_owned(),
        );
        let container = owner
            .map(|o| Self::container_of(state, o.cgroup_id))
            .unwrap_or_default();
        vec![
            process,
            container,
            destination_addr(connection, role).to_string(),
            role.as_str().to_string(),
        ]
    }

    /// Counts a processed record in `connmon_events_total`.
    fn count_event(&self, state: &mut State, event: &SocketEvent) {
        // A few kinds: a scan of the ones seen beats hashing the label.
        let name = event.kind.name();
        match state.event_counters.iter().find(|(seen, _)| *seen == name) {
            Some((_, counter)) => counter.inc(),
            None => {
                let counter = self.events.with_label_values(&[name]);
                counter.inc();
                state.event_counters.push((name, counter));
            }
        }
    }

    /// A record about a socket outside `--netns`: processed (counted in
    /// `connmon_events_total`, so every record the kernel wrote is still
    /// accounted for) but nothing else.
    pub fn observe_out_of_scope(&self, event: &SocketEvent) {
        if let Ok(mut state) = self.state.lock() {
            self.count_event(&mut state, event);
        }
    }

    pub fn observe_event(&self, event: &SocketEvent) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        self.count_event(&mut state, event);
        let counts: Vec<(RetransmitKind, u64)> = match &event.kind {
            EventKind::Retransmit(info) => vec![(info.kind, 1)],
            EventKind::RetransmitCounts { counts } => counts
                .iter()
                .map(|(kind, count)| (*kind, u64::from(*count)))
                .collect(),
            _ => return,
        };
        for (kind, count) in counts {
            self.count_retransmits(&mut state, event, kind, count);
        }
    }

    /// Adds `count` retransmits of `kind` on `event`'s socket to its
    /// owner's series.
    fn count_retransmits(
        &self,
        state: &mut State,
        event: &SocketEvent,
        kind: RetransmitKind,
        count: u64,
    ) {
        let key = RetransmitSeriesKey {
            cgroup_id: event.owner.as_ref().map_or(0, |o| o.cgroup_id),
            destination: destination_addr(&event.connection, event.role),
            kind,
            role: event.role,
        };
        let process = event.owner.as_ref().map_or("unknown", |o| o.comm.as_str());
        if let Some(series) = state
            .retransmit_series
            .get(&key)
            .and_then(|known| known.iter().find(|s| s.process == process))
        {
            series.counter.inc_by(count);
            if series.capped {
                self.series_capped
                    .with_label_values(&["connmon_retransmits_total"])
                    .inc_by(count);
            }
            return;
        }
        let owner = Self::owner_labels(state, event.owner.as_ref(), &event.connection, event.role);
        let labels = vec![
            owner[0].clone(),
            owner[1].clone(),
            owner[2].clone(),
            kind.as_str().to_string(),
            owner[3].clone(),
        ];
        let capped_labels = self.capped(state, "connmon_retransmits_total", labels.clone(), 3);
        let folded = capped_labels != labels;
        if folded && count > 1 {
            // `capped` counted one sample; these are `count`.
            self.series_capped
                .with_label_values(&["connmon_retransmits_total"])
                .inc_by(count - 1);
        }
        let counter = self
            .retransmits
            .with_label_values(&capped_labels.iter().map(String::as_str).collect::<Vec<_>>());
        counter.inc_by(count);
        if state.retransmit_series_count >= RETRANSMIT_CACHE_FACTOR * self.series_cap.max(1) {
            state.retransmit_series.clear();
            state.retransmit_series_count = 0;
        }
        state.retransmit_series_count += 1;
        state
            .retransmit_series
            .entry(key)
            .or_default()
            .push(CachedSeries {
                process: process.to_string(),
                counter,
                capped: folded,
            });
    }

    pub fn observe_finding(&self, finding: &Finding) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        match finding {
            Finding::StormStarted(storm) => {
                let labels = self.storm_labels(&mut state, storm);
                let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
                self.storms_started.with_label_values(&refs).inc();
                self.storms_active.with_label_values(&refs).inc();
                self.idle_before_storm
                    .with_label_values(&[storm.role.as_str()])
                    .observe(storm.idle_ns as f64 / 1e9);
                // The path forgot the flow within this idle gap: its timeout
                // is at most the shortest gap seen.
                let idle = storm.idle_ns as f64 / 1e9;
                let gauge = self.inferred_timeout.with_label_values(&[&labels[2]]);
                if gauge.get() == 0.0 || idle < gauge.get() {
                    gauge.set(idle);
                }
                state.inferred_destinations.insert(labels[2].clone());
                state.active_storm_labels.insert(storm.id, labels);
            }
            Finding::StormEnded {
                storm,
                outcome,
                ended_ns,
                ..
            } => {
                self.storms_ended
                    .with_label_values(&[outcome.as_str()])
                    .inc();
                if let Some(labels) = state.active_storm_labels.remove(&storm.id) {
                    let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
                    self.storms_active.with_label_values(&refs).dec();
                }
                self.storm_duration
                    .with_label_values(&[storm.role.as_str(), outcome.as_str()])
                    .observe(ended_ns.saturating_sub(storm.started_ns) as f64 / 1e9);
            }
            Finding::ResetAfterIdle(reset) => {
                let labels = Self::owner_labels(
                    &mut state,
                    reset.owner.as_ref(),
                    &reset.connection,
                    reset.role,
                );
                let labels = self.capped(&mut state, "connmon_resets_after_idle_total", labels, 3);
                let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
                self.resets_after_idle.with_label_values(&refs).inc();
            }
            // An episode reported while it hung was counted then.
            Finding::ConnectionFailed(failure) if failure.reported_while_hanging => {}
            Finding::ConnectionFailed(failure) => {
                let mut labels = Self::owner_labels(
                    &mut state,
                    failure.owner.as_ref(),
                    &failure.connection,
                    failure.role,
                );
                labels.push(failure.mode.as_str().to_string());
                let labels =
                    self.capped(&mut state, "connmon_connection_failures_total", labels, 3);
                let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
                self.connection_failures.with_label_values(&refs).inc();
            }
        }
    }

    /// One reuse after an idle gap, into the histogram and the per-destination
    /// bounds. Destinations are under the series cap (past it: `other`).
    pub fn observe_idle_reuse(&self, reuse: &IdleReuse) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let labels = vec![
            destination_addr(reuse.connection, reuse.role).to_string(),
            reuse.role.as_str().to_string(),
            reuse.outcome.as_str().to_string(),
        ];
        let labels = self.capped(&mut state, IDLE_REUSE_FAMILY, labels, 1);
        let gap = reuse.gap_ns as f64 / 1e9;
        let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
        self.idle_reuse.gaps.with_label_values(&refs).observe(gap);
        let (gauge, pick): (_, fn(f64, f64) -> f64) = match reuse.outcome {
            ReuseOutcome::Survived => (&self.idle_reuse.longest_survived, f64::max),
            outcome if outcome.path_forgot() => (&self.idle_reuse.shortest_failed, f64::min),
            _ => return,
        };
        let gauge = gauge.with_label_values(&[refs[0]]);
        // A new gauge reads 0: the first gap is taken as it is.
        let kept = if gauge.get() == 0.0 {
            gap
        } else {
            pick(gauge.get(), gap)
        };
        gauge.set(kept);
    }

    fn storm_labels(&self, state: &mut State, storm: &Storm) -> Vec<String> {
        let labels = Self::owner_labels(state, storm.owner.as_ref(), &storm.connection, storm.role);
        self.capped(state, "connmon_storms_started_total", labels, 3)
    }

    /// Retransmits of unwatched sockets, counted in the kernel per socket
    /// and handed out per owner (`attribution::unwatched`).
    pub fn observe_unwatched_retransmits(&self, increments: &[OwnerIncrement]) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        for increment in increments {
            let container = Self::container_of(&mut state, increment.cgroup_id);
            let kind = RetransmitKind::try_from(increment.kind)
                .unwrap_or(RetransmitKind::Unknown)
                .as_str();
            let labels = vec![
                // The process names itself: no control characters in a label.
                crate::output::escape::control(&increment.comm).into_owned(),
                container,
                OTHER.to_string(),
                kind.to_string(),
                increment.role.as_str().to_string(),
            ];
            let folded_from = labels.clone();
            let labels = self.capped(&mut state, "connmon_retransmits_total", labels, 3);
            if labels != folded_from && increment.count > 1 {
                // `capped` counted one sample; these are `count`.
                self.series_capped
                    .with_label_values(&["connmon_retransmits_total"])
                    .inc_by(increment.count - 1);
            }
            self.retransmits
                .with_label_values(&labels.iter().map(String::as_str).collect::<Vec<_>>())
                .inc_by(increment.count);
        }
    }

    /// Replaces the at-risk gauge with a fresh audit's counts, under the
    /// series cap: the label sets with the most connections keep their own
    /// series, the rest are summed under `other`.
    pub fn set_at_risk(&self, counts: &HashMap<(String, String, String), i64>) {
        self.at_risk.reset();
        let mut sets: Vec<_> = counts.iter().collect();
        // Most connections first; names break ties so a scrape is stable.
        sets.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        let keep = self.series_cap.saturating_sub(1).max(1);
        let folded: i64 = if sets.len() > self.series_cap {
            let rest = sets.split_off(keep);
            self.series_capped
                .with_label_values(&["connmon_idle_connections_at_risk"])
                .inc_by(rest.len() as u64);
            rest.iter().map(|(_, count)| **count).sum()
        } else {
            0
        };
        for ((process, container, destination), count) in sets {
            // The process names itself: no control characters in a label.
            let process = crate::output::escape::control(process);
            self.at_risk
                .with_label_values(&[process.as_ref(), container.as_str(), destination.as_str()])
                .set(*count);
        }
        if folded > 0 {
            self.at_risk
                .with_label_values(&[OTHER, OTHER, OTHER])
                .set(folded);
        }
    }

    /// Removes the label sets of processes, containers and destinations
    /// whose samples have not changed for `quiet_for` (no retransmit, storm
    /// or reset since), so /metrics follows what exists now rather than
    /// every name seen since start-up, and frees their places under the
    /// cap. A set seen again starts over from 0, as a restarted target's
    /// counters do. Call it periodically; a set is removed at the first
    /// call `quiet_for` after the call that saw its last change. Returns how
    /// many label sets were removed.
    pub fn expire_quiet_series(&self, now: Instant, quiet_for: Duration) -> usize {
        let Ok(mut state) = self.state.lock() else {
            return 0;
        };
        let state = &mut *state;
        let mut quiet: Vec<(&'static str, Vec<String>)> = Vec::new();
        let mut alive = HashSet::new();
        for (family, sets) in &state.series {
            for labels in sets {
                let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
                let value = match *family {
                    "connmon_retransmits_total" => {
                        self.retransmits.with_label_values(&refs).get() as f64
                    }
                    "connmon_resets_after_idle_total" => {
                        self.resets_after_idle.with_label_values(&refs).get() as f64
                    }
                    "connmon_connection_failures_total" => {
                        self.connection_failures.with_label_values(&refs).get() as f64
                    }
                    "connmon_storms_started_total" => {
                        // An active storm keeps its labels, however long.
                        if self.storms_active.with_label_values(&refs).get() > 0 {
                            f64::NAN
                        } else {
                            self.storms_started.with_label_values(&refs).get() as f64
                        }
                    }
                    _ => continue,
                };
                let key = (*family, labels.clone());
                alive.insert(key.clone());
                match state.activity.get_mut(&key) {
                    // NaN never equals itself: an active storm is always news.
                    Some((seen, since)) if *seen == value => {
                        if now.saturating_duration_since(*since) >= quiet_for {
                            quiet.push(key);
                        }
                    }
                    Some(entry) => *entry = (value, now),
                    None => {
                        state.activity.insert(key, (value, now));
                    }
                }
            }
        }
        state.activity.retain(|key, _| alive.contains(key));
        for (family, labels) in &quiet {
            let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
            let removed = match *family {
                "connmon_retransmits_total" => self.retransmits.remove_label_values(&refs),
                "connmon_resets_after_idle_total" => {
                    self.resets_after_idle.remove_label_values(&refs)
                }
                "connmon_connection_failures_total" => {
                    self.connection_failures.remove_label_values(&refs)
                }
                _ => {
                    let _ = self.storms_active.remove_label_values(&refs);
                    self.storms_started.remove_label_values(&refs)
                }
            };
            if let Err(error) = removed {
                tracing::debug!(%error, family, "expiring a label set");
            }
            if let Some(sets) = state.series.get_mut(family) {
                sets.remove(labels);
            }
            state.activity.remove(&(*family, labels.clone()));
        }
        if !quiet.is_empty() {
            // Cached counters of removed series would count into nothing.
            state.retransmit_series.clear();
            state.retransmit_series_count = 0;
            // A path's inferred timeout goes with its last storm's labels.
            let storms = state.series.get("connmon_storms_started_total");
            let stale: Vec<String> = state
                .inferred_destinations
                .iter()
                .filter(|d| !storms.is_some_and(|sets| sets.iter().any(|l| &l[2] == *d)))
                .cloned()
                .collect();
            for destination in stale {
                let _ = self.inferred_timeout.remove_label_values(&[&destination]);
                state.inferred_destinations.remove(&destination);
            }
        }
        quiet.len()
    }

    /// The optional hooks missing on this kernel (set once at start-up).
    pub fn set_degraded_hooks(&self, hooks: &[&crate::capture::Hook]) {
        for hook in hooks {
            self.degraded_hooks
                .with_label_values(&[hook.tracepoint, hook.purpose])
                .set(1);
        }
    }

    pub fn observe_fail_fast(&self, result: &str) {
        self.fail_fast.with_label_values(&[result]).inc();
    }

    /// The alert delivery counter, handed to the alert senders. Its label
    /// values are bounded: one per configured receiver and result.
    pub fn alert_deliveries(&self) -> IntCounterVec {
        self.alert_deliveries.clone()
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

    /// The text exposition format.
    /// Adds a collector owned elsewhere (the HTTP server's own counters).
    pub fn register(
        &self,
        collector: Box<dyn prometheus::core::Collector>,
    ) -> prometheus::Result<()> {
        self.registry.register(collector)
    }

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
mod tests {
    use super::*;
    use crate::event::{ActivityTimes, OwnerSource, RetransmitInfo, RetransmitKind, TcpState};

    fn retransmit(comm: &str, remote: &str) -> SocketEvent {
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

    #[test]
    fn renders_help_for_every_metric() {
        let text = Metrics::new(DEFAULT_SERIES_CAP).expect("metrics").render();
        for name in [
            "connmon_build_info",
            "connmon_lost_records_total",
            "connmon_storms_ended_total",
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

    #[test]
    fn retransmits_carry_process_destination_kind_and_role_but_no_pid() {
        let metrics = Metrics::new(DEFAULT_SERIES_CAP).expect("metrics");
        metrics.observe_event(&retransmit("invite-svc", "10.0.1.5:6379"));
        let text = metrics.render();
        assert!(
            text.contains(r#"connmon_retransmits_total{container="",destination="10.0.1.5:6379",kind="timeout",process="invite-svc",role="client"} 1"#),
            "{text}"
        );
        assert!(!text.contains("pid="));
    }

    fn retransmit_series(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|l| l.starts_with("connmon_retransmits_total{"))
            .collect()
    }

    /// Short-lived processes leave no series behind: label sets unchanged
    /// for the expiry go, their places under the cap are free again, and a
    /// name that comes back counts from 0 into a live series.
    #[test]
    fn quiet_label_sets_expire_and_free_their_place_under_the_cap() {
        let metrics = Metrics::new(3).expect("metrics");
        for name in ["keeps-busy", "gone-1", "gone-2", "past-cap"] {
            metrics.observe_event(&retransmit(name, "10.0.1.5:6379"));
        }
        let quiet = Duration::from_secs(60);
        let t0 = Instant::now();
        assert_eq!(metrics.expire_quiet_series(t0, quiet), 0);
        metrics.observe_event(&retransmit("keeps-busy", "10.0.1.5:6379"));
        assert_eq!(metrics.expire_quiet_series(t0 + quiet / 2, quiet), 0);
        let removed = metrics.expire_quiet_series(t0 + quiet, quiet);
        assert_eq!(removed, 2, "gone-1 and gone-2");
        let text = metrics.render();
        let series = retransmit_series(&text);
        assert!(!text.contains("gone-"), "{text}");
        assert!(
            series
                .iter()
                .any(|l| l.contains(r#"process="keeps-busy""#) && l.ends_with(" 2")),
            "{text}"
        );
        // The folded series is bounded already and stays.
        assert!(
            series.iter().any(|l| l.contains(r#"process="other""#)),
            "{text}"
        );
        // New names get series of their own again, and count.
        for _ in 0..2 {
            metrics.observe_event(&retransmit("new-1", "10.0.1.5:6379"));
        }
        metrics.observe_event(&retransmit("gone-1", "10.0.1.5:6379"));
        let text = metrics.render();
        let series = retransmit_series(&text);
        assert!(
            series
                .iter()
                .any(|l| l.contains(r#"process="new-1""#) && l.ends_with(" 2")),
            "{text}"
        );
        assert!(
            series
                .iter()
                .any(|l| l.contains(r#"process="gone-1""#) && l.ends_with(" 1")),
            "{text}"
        );
        assert_eq!(series.len(), 4, "{text}");
    }

    /// Many short-lived names over time: /metrics holds what was active in
    /// the last expiry, not everything ever seen.
    #[test]
    fn many_short_lived_process_names_leave_metrics_bounded() {
        let metrics = Metrics::new(DEFAULT_SERIES_CAP).expect("metrics");
        let quiet = Duration::from_secs(60);
        let start = Instant::now();
        for round in 0..20u32 {
            for i in 0..50 {
                metrics.observe_event(&retransmit(&format!("job-{round}-{i}"), "10.0.1.5:6379"));
            }
            metrics.expire_quiet_series(start + quiet * round, quiet);
        }
        let text = metrics.render();
        let series = retransmit_series(&text).len();
        // This round's 50 and the last round's (seen, not yet quiet for a
        // whole expiry at the last sweep).
        assert!(series <= 100, "{series} series:\n{text}");
        assert!(
            !text.contains(r#"process="other""#),
            "nothing folded:\n{text}"
        );
        assert!(!text.contains(r#"job-0-"#), "{text}");
    }

    /// The at-risk gauge is under the series cap like the counters: the
    /// sets with the most connections keep their series, the rest are
    /// summed under `other` and counted as capped.
    #[test]
    fn at_risk_connections_are_under_the_series_cap() {
        let metrics = Metrics::new(3).expect("metrics");
        let counts: HashMap<(String, String, String), i64> = (1..=5)
            .map(|i| {
                (
                    (format!("p{i}"), String::new(), "10.0.1.5:6379".to_string()),
                    i,
                )
            })
            .collect();
        metrics.set_at_risk(&counts);
        let text = metrics.render();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("connmon_idle_connections_at_risk{"))
            .collect();
        assert_eq!(series.len(), 3, "{text}");
        for expected in [r#"process="p5""#, r#"process="p4""#] {
            assert!(series.iter().any(|l| l.contains(expected)), "{text}");
        }
        assert!(
            series
                .iter()
                .any(|l| l.contains(r#"process="other""#) && l.ends_with(" 6")),
            "p1..p3 summed: {text}"
        );
        assert!(
            text.contains(
                r#"connmon_series_capped_total{metric="connmon_idle_connections_at_risk"} 3"#
            ),
            "{text}"
        );
    }

    #[test]
    fn the_series_cap_folds_new_label_sets_into_other() {
        let metrics = Metrics::new(2).expect("metrics");
        for i in 0..5 {
            metrics.observe_event(&retransmit(&format!("proc-{i}"), "10.0.1.5:6379"));
        }
        let text = metrics.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("connmon_retransmits_total{"))
            .count();
        assert_eq!(series, 3, "two allowed and one overflow series:\n{text}");
        assert!(text.contains(r#"process="other""#));
        assert!(
            text.contains(r#"connmon_series_capped_total{metric="connmon_retransmits_total"} 3"#),
            "{text}"
        );
    }

    #[test]
    fn repeated_retransmits_count_like_first_ones_past_the_cap_too() {
        // Later records of a series take the cached counter: the counts and
        // the folding must be what the first record got.
        let metrics = Metrics::new(1).expect("metrics");
        for _ in 0..3 {
            metrics.observe_event(&retransmit("kept", "10.0.1.5:6379"));
            metrics.observe_event(&retransmit("folded", "10.0.1.5:6379"));
            metrics.observe_event(&retransmit("folded", "10.0.1.6:6379"));
        }
        let mut server_side = retransmit("kept", "10.0.1.7:40000");
        server_side.role = Role::Server;
        metrics.observe_event(&server_side);
        let text = metrics.render();
        assert!(
            text.contains(r#"connmon_retransmits_total{container="",destination="10.0.1.5:6379",kind="timeout",process="kept",role="client"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"connmon_retransmits_total{container="other",destination="other",kind="timeout",process="other",role="client"} 6"#),
            "{text}"
        );
        assert!(
            text.contains(r#"connmon_retransmits_total{container="other",destination="other",kind="timeout",process="other",role="server"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"connmon_series_capped_total{metric="connmon_retransmits_total"} 7"#),
            "{text}"
        );
    }

    #[test]
    fn counted_retransmits_of_a_busy_watched_socket_add_to_its_series() {
        let metrics = Metrics::new(DEFAULT_SERIES_CAP).expect("metrics");
        let one = retransmit("app", "10.0.0.2:6379");
        metrics.observe_event(&one);
        let mut counted = one.clone();
        counted.kind = EventKind::RetransmitCounts {
            counts: vec![(RetransmitKind::Timeout, 4), (RetransmitKind::Fast, 250)],
        };
        metrics.observe_event(&counted);
        let text = metrics.render();
        for series in [
            r#"connmon_retransmits_total{container="",destination="10.0.0.2:6379",kind="timeout",process="app",role="client"} 5"#,
            r#"connmon_retransmits_total{container="",destination="10.0.0.2:6379",kind="fast",process="app",role="client"} 250"#,
            r#"connmon_events_total{event="retransmit_counts"} 1"#,
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
    }

    /// The fleet view's evidence: gaps per destination, role and outcome in
    /// a histogram, and per destination the longest gap that survived and
    /// the shortest that did not (a peer's own close counts for neither).
    #[test]
    fn idle_reuse_gaps_bound_the_path_timeout_per_destination() {
        use crate::detect::reuse::{IdleReuse, ReuseOutcome};
        let metrics = Metrics::new(DEFAULT_SERIES_CAP).expect("metrics");
        let x = retransmit("app", "10.0.1.5:6379").connection;
        let y = retransmit("app", "10.0.1.6:6380").connection;
        for (connection, seconds, outcome) in [
            (&x, 200, ReuseOutcome::Survived),
            (&x, 300, ReuseOutcome::Survived),
            (&x, 250, ReuseOutcome::Survived),
            (&x, 400, ReuseOutcome::Blackholed),
            (&x, 380, ReuseOutcome::Reset),
            (&x, 100, ReuseOutcome::PeerClosed),
            (&y, 900, ReuseOutcome::Survived),
        ] {
            metrics.observe_idle_reuse(&IdleReuse {
                role: Role::Client,
                connection,
                gap_ns: seconds * 1_000_000_000,
                outcome,
            });
        }
        let text = metrics.render();
        for line in [
            r#"connmon_idle_reuse_gap_seconds_bucket{destination="10.0.1.5:6379",outcome="survived",role="client",le="240"} 1"#,
            r#"connmon_idle_reuse_gap_seconds_bucket{destination="10.0.1.5:6379",outcome="survived",role="client",le="350"} 3"#,
            r#"connmon_idle_reuse_gap_seconds_count{destination="10.0.1.5:6379",outcome="blackholed",role="client"} 1"#,
            r#"connmon_idle_reuse_gap_seconds_count{destination="10.0.1.5:6379",outcome="reset",role="client"} 1"#,
            r#"connmon_idle_reuse_gap_seconds_count{destination="10.0.1.5:6379",outcome="peer_closed",role="client"} 1"#,
            r#"connmon_idle_reuse_longest_survived_gap_seconds{destination="10.0.1.5:6379"} 300"#,
            r#"connmon_idle_reuse_shortest_failed_gap_seconds{destination="10.0.1.5:6379"} 380"#,
            r#"connmon_idle_reuse_longest_survived_gap_seconds{destination="10.0.1.6:6380"} 900"#,
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        assert!(
            !text.contains(
                r#"connmon_idle_reuse_shortest_failed_gap_seconds{destination="10.0.1.6:6380"}"#
            ),
            "nothing failed on the way to y:\n{text}"
        );
    }

    #[test]
    fn idle_reuse_destinations_past_the_cap_are_other() {
        use crate::detect::reuse::{IdleReuse, ReuseOutcome};
        let metrics = Metrics::new(1).expect("metrics");
        for remote in ["10.0.1.5:6379", "10.0.1.6:6379"] {
            metrics.observe_idle_reuse(&IdleReuse {
                role: Role::Client,
                connection: &retransmit("app", remote).connection,
                gap_ns: 5_000_000_000,
                outcome: ReuseOutcome::Blackholed,
            });
        }
        let text = metrics.render();
        assert!(
            text.contains(r#"connmon_idle_reuse_gap_seconds_count{destination="other",outcome="blackholed",role="client"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"connmon_idle_reuse_shortest_failed_gap_seconds{destination="other"} 5"#
            ),
            "{text}"
        );
    }

    #[test]
    fn unwatched_retransmits_go_to_destination_other() {
        let metrics = Metrics::new(DEFAULT_SERIES_CAP).expect("metrics");
        let increment = |count| OwnerIncrement {
            comm: "curl".into(),
            cgroup_id: 0,
            kind: 2,
            role: Role::Client,
            count,
        };
        // Increments add up (the per-socket deltas are taken upstream).
        metrics.observe_unwatched_retransmits(&[increment(4)]);
        metrics.observe_unwatched_retransmits(&[increment(2)]);
        assert!(metrics.render().contains(
            r#"connmon_retransmits_total{container="",destination="other",kind="fast",process="curl",role="client"} 6"#
        ));
    }
}
