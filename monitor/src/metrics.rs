//! Prometheus metrics. Labels are bounded: no pids, no 4-tuples (those are
//! in the events).

use prometheus::{Encoder, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use crate::{
    capture::counters::CounterSnapshot,
    detect::{Finding, Outcome},
    event::{EventKind, SocketEvent},
};

pub struct Metrics {
    registry: Registry,
    events: IntCounterVec,
    retransmits: IntCounterVec,
    storms_started: IntCounterVec,
    storms_ended: IntCounterVec,
    storms_active: IntGauge,
    resets_after_idle: IntCounterVec,
    lost_records: IntCounterVec,
    kernel_retransmits: IntCounterVec,
    lost_seen: std::sync::Mutex<(u64, u64, [u64; 4])>,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let events = IntCounterVec::new(
            Opts::new(
                "connmon_events_total",
                "Kernel events about watched sockets processed, by event.",
            ),
            &["event"],
        )?;
        let retransmits = IntCounterVec::new(
            Opts::new(
                "connmon_watched_retransmits_total",
                "Retransmits on watched sockets, by kind.",
            ),
            &["kind"],
        )?;
        let storms_started = IntCounterVec::new(
            Opts::new(
                "connmon_storms_started_total",
                "Retransmit storms confirmed on idle connections, by role.",
            ),
            &["role"],
        )?;
        let storms_ended = IntCounterVec::new(
            Opts::new(
                "connmon_storms_ended_total",
                "Retransmit storms that ended, by outcome.",
            ),
            &["outcome"],
        )?;
        let storms_active =
            IntGauge::new("connmon_storms_active", "Retransmit storms in progress.")?;
        let resets_after_idle = IntCounterVec::new(
            Opts::new(
                "connmon_resets_after_idle_total",
                "Connections reset right after resuming from idle, by role.",
            ),
            &["role"],
        )?;
        let lost_records = IntCounterVec::new(
            Opts::new(
                "connmon_lost_records_total",
                "Kernel records lost, by reason.",
            ),
            &["reason"],
        )?;
        let kernel_retransmits = IntCounterVec::new(
            Opts::new(
                "connmon_kernel_retransmits_total",
                "Retransmit attempts on every TCP socket of the host, by kind.",
            ),
            &["kind"],
        )?;
        for collector in [
            &events,
            &retransmits,
            &storms_started,
            &storms_ended,
            &resets_after_idle,
            &lost_records,
            &kernel_retransmits,
        ] {
            registry.register(Box::new(collector.clone()))?;
        }
        registry.register(Box::new(storms_active.clone()))?;
        let build_info = IntGauge::with_opts(
            Opts::new("connmon_build_info", "connmon's version; always 1.")
                .const_label("version", env!("CARGO_PKG_VERSION")),
        )?;
        build_info.set(1);
        registry.register(Box::new(build_info))?;
        for reason in ["ring_buffer_full", "socket_map_full"] {
            lost_records.with_label_values(&[reason]);
        }
        Ok(Self {
            registry,
            events,
            retransmits,
            storms_started,
            storms_ended,
            storms_active,
            resets_after_idle,
            lost_records,
            kernel_retransmits,
            lost_seen: std::sync::Mutex::new((0, 0, [0; 4])),
        })
    }

    pub fn observe_event(&self, event: &SocketEvent) {
        self.events.with_label_values(&[event.kind.name()]).inc();
        if let EventKind::Retransmit(info) = &event.kind {
            self.retransmits
                .with_label_values(&[info.kind.as_str()])
                .inc();
        }
    }

    pub fn observe_finding(&self, finding: &Finding) {
        match finding {
            Finding::StormStarted(storm) => {
                self.storms_started
                    .with_label_values(&[role_label(storm.role)])
                    .inc();
                self.storms_active.inc();
            }
            Finding::StormEnded { outcome, .. } => {
                self.storms_ended
                    .with_label_values(&[Outcome::as_str(*outcome)])
                    .inc();
                self.storms_active.dec();
            }
            Finding::ResetAfterIdle(reset) => self
                .resets_after_idle
                .with_label_values(&[role_label(reset.role)])
                .inc(),
        }
    }

    /// Brings the kernel-side counters up to date (called at scrape time).
    pub fn observe_kernel(&self, counters: &CounterSnapshot) {
        use monitor_common::counters::{LOST_RINGBUF_FULL, LOST_SOCKET_MAP_FULL, RETRANSMITS_BASE};
        let Ok(mut seen) = self.lost_seen.lock() else {
            return;
        };
        let ring = counters.get(LOST_RINGBUF_FULL);
        let map = counters.get(LOST_SOCKET_MAP_FULL);
        self.lost_records
            .with_label_values(&["ring_buffer_full"])
            .inc_by(ring.saturating_sub(seen.0));
        self.lost_records
            .with_label_values(&["socket_map_full"])
            .inc_by(map.saturating_sub(seen.1));
        seen.0 = seen.0.max(ring);
        seen.1 = seen.1.max(map);
        for (kind, label) in ["unknown", "timeout", "fast", "tail_loss_probe"]
            .iter()
            .enumerate()
        {
            let total = counters.get(RETRANSMITS_BASE + kind as u32);
            self.kernel_retransmits
                .with_label_values(&[label])
                .inc_by(total.saturating_sub(seen.2[kind]));
            seen.2[kind] = seen.2[kind].max(total);
        }
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

fn role_label(role: crate::event::Role) -> &'static str {
    match role {
        crate::event::Role::Client => "client",
        crate::event::Role::Server => "server",
        crate::event::Role::Unknown => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_help_for_every_metric() {
        let metrics = Metrics::new().expect("metrics");
        let text = metrics.render();
        for name in [
            "connmon_build_info",
            "connmon_storms_active",
            "connmon_lost_records_total",
        ] {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} missing:\n{text}"
            );
        }
    }

    #[test]
    fn kernel_counters_are_exported_as_deltas() {
        let metrics = Metrics::new().expect("metrics");
        let mut values = vec![0u64; monitor_common::counters::COUNTER_SLOTS as usize];
        values[monitor_common::counters::LOST_RINGBUF_FULL as usize] = 5;
        metrics.observe_kernel(&CounterSnapshot {
            values: values.clone(),
        });
        metrics.observe_kernel(&CounterSnapshot { values });
        assert!(
            metrics
                .render()
                .contains("connmon_lost_records_total{reason=\"ring_buffer_full\"} 5")
        );
    }
}
