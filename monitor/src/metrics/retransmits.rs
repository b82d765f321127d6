//! What each kernel record adds: `connmon_events_total`, and for
//! retransmits `connmon_retransmits_total` (watched sockets' per record,
//! unwatched ones' per owner from `attribution::unwatched`).

use std::collections::HashMap;

use super::{
    Metrics, OTHER, State,
    families::RETRANSMITS,
    labels::{destination_addr, owner_labels, process_label, refs},
};
use crate::{
    attribution::unwatched::OwnerIncrement,
    event::{EventKind, RetransmitKind, Role, SocketEvent},
};

/// Resolved retransmit series kept at most, as a multiple of the series
/// cap; past it the cache starts over (the counters live on in the registry).
const RETRANSMIT_CACHE_FACTOR: usize = 4;

/// Retransmit counters already resolved, by what their labels are made of:
/// a retransmit record then costs a lookup, not the formatting and hashing
/// of five label strings.
#[derive(Default)]
pub(super) struct RetransmitCache {
    series: HashMap<RetransmitSeriesKey, Vec<CachedSeries>>,
    count: usize,
}

impl RetransmitCache {
    /// Drops every cached counter (their series may have been removed).
    pub fn clear(&mut self) {
        self.series.clear();
        self.count = 0;
    }
}

/// Everything but the process name that decides a retransmit's labels.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct RetransmitSeriesKey {
    cgroup_id: u64,
    destination: std::net::SocketAddr,
    kind: RetransmitKind,
    role: Role,
}

/// One process name's counter under a `RetransmitSeriesKey`.
struct CachedSeries {
    process: String,
    counter: prometheus::IntCounter,
    /// Folded into `other` by the series cap: each use is counted as such.
    capped: bool,
}

impl Metrics {
    /// Counts a processed record in `connmon_events_total`.
    fn count_event(&self, state: &mut State, event: &SocketEvent) {
        // A few kinds: a scan of the ones seen beats hashing the label.
        let name = event.kind.name();
        match state.event_counters.iter().find(|(seen, _)| *seen == name) {
            Some((_, counter)) => counter.inc(),
            None => {
                let counter = self.families.events.with_label_values(&[name]);
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
            .series
            .get(&key)
            .and_then(|known| known.iter().find(|s| s.process == process))
        {
            series.counter.inc_by(count);
            if series.capped {
                self.families
                    .series_capped
                    .with_label_values(&[RETRANSMITS])
                    .inc_by(count);
            }
            return;
        }
        let [process_value, container, destination, role] = owner_labels(
            &mut state.containers,
            event.owner.as_ref(),
            &event.connection,
            event.role,
        );
        let labels = vec![
            process_value,
            container,
            destination,
            kind.as_str().to_string(),
            role,
        ];
        let (labels, folded) = self.capped_retransmits(state, labels, count);
        let counter = self.families.retransmits.with_label_values(&refs(&labels));
        counter.inc_by(count);
        let cache = &mut state.retransmit_series;
        if cache.count >= RETRANSMIT_CACHE_FACTOR * self.series_cap.max(1) {
            cache.clear();
        }
        cache.count += 1;
        cache.series.entry(key).or_default().push(CachedSeries {
            process: process.to_string(),
            counter,
            capped: folded,
        });
    }

    /// Retransmits of unwatched sockets, counted in the kernel per socket
    /// and handed out per owner (`attribution::unwatched`).
    pub fn observe_unwatched_retransmits(&self, increments: &[OwnerIncrement]) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        for increment in increments {
            let kind = RetransmitKind::try_from(increment.kind)
                .unwrap_or(RetransmitKind::Unknown)
                .as_str();
            let labels = vec![
                process_label(&increment.comm).into_owned(),
                state.containers.short_id(increment.cgroup_id),
                OTHER.to_string(),
                kind.to_string(),
                increment.role.as_str().to_string(),
            ];
            let (labels, _) = self.capped_retransmits(&mut state, labels, increment.count);
            self.families
                .retransmits
                .with_label_values(&refs(&labels))
                .inc_by(increment.count);
        }
    }

    /// The series cap for `count` retransmits under `labels`: the labels to
    /// count them under, and whether they were folded into `other`.
    fn capped_retransmits(
        &self,
        state: &mut State,
        labels: Vec<String>,
        count: u64,
    ) -> (Vec<String>, bool) {
        let admitted = self.capped(&mut state.series, RETRANSMITS, labels.clone(), 3);
        let folded = admitted != labels;
        if folded && count > 1 {
            // `capped` counted one sample; these are `count`.
            self.families
                .series_capped
                .with_label_values(&[RETRANSMITS])
                .inc_by(count - 1);
        }
        (admitted, folded)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{
        DEFAULT_SERIES_CAP, Metrics,
        test_support::{retransmit, retransmit_series},
    };
    use crate::{
        attribution::unwatched::OwnerIncrement,
        event::{EventKind, RetransmitKind, Role},
    };

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

    #[test]
    fn the_series_cap_folds_new_label_sets_into_other() {
        let metrics = Metrics::new(2).expect("metrics");
        for i in 0..5 {
            metrics.observe_event(&retransmit(&format!("proc-{i}"), "10.0.1.5:6379"));
        }
        let text = metrics.render();
        let series = retransmit_series(&text).len();
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
