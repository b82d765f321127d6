//! What each finding and each idle reuse adds: storms (started, active,
//! ended, their durations and idle gaps, the inferred path timeout), resets
//! after idle, connection failures, and the idle-reuse evidence.

use std::collections::{HashMap, HashSet};

use super::{
    Metrics, State,
    families::{CONNECTION_FAILURES, IDLE_REUSE_GAPS, RESETS_AFTER_IDLE, STORMS_STARTED},
    labels::{destination_addr, owner_labels, refs},
};
use crate::detect::{
    Finding, Storm,
    reuse::{IdleReuse, ReuseOutcome},
};

/// What the storm families remember between findings.
#[derive(Default)]
pub(super) struct StormSeries {
    /// Labels each active storm was counted under, to decrement the same.
    active: HashMap<u64, Vec<String>>,
    /// Destinations with an inferred path timeout.
    inferred_destinations: HashSet<String>,
}

impl Metrics {
    pub fn observe_finding(&self, finding: &Finding) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        match finding {
            Finding::StormStarted(storm) => {
                let labels = self.storm_labels(&mut state, storm);
                let refs = refs(&labels);
                self.families.storms_started.with_label_values(&refs).inc();
                self.families.storms_active.with_label_values(&refs).inc();
                self.families
                    .idle_before_storm
                    .with_label_values(&[storm.role.as_str()])
                    .observe(storm.idle_ns as f64 / 1e9);
                // The path forgot the flow within this idle gap: its timeout
                // is at most the shortest gap seen.
                let idle = storm.idle_ns as f64 / 1e9;
                let gauge = self
                    .families
                    .inferred_timeout
                    .with_label_values(&[&labels[2]]);
                if gauge.get() == 0.0 || idle < gauge.get() {
                    gauge.set(idle);
                }
                state.storms.inferred_destinations.insert(labels[2].clone());
                state.storms.active.insert(storm.id, labels);
            }
            Finding::StormEnded {
                storm,
                outcome,
                ended_ns,
                ..
            } => {
                self.families
                    .storms_ended
                    .with_label_values(&[outcome.as_str()])
                    .inc();
                if let Some(labels) = state.storms.active.remove(&storm.id) {
                    self.families
                        .storms_active
                        .with_label_values(&refs(&labels))
                        .dec();
                }
                self.families
                    .storm_duration
                    .with_label_values(&[storm.role.as_str(), outcome.as_str()])
                    .observe(ended_ns.saturating_sub(storm.started_ns) as f64 / 1e9);
            }
            Finding::ResetAfterIdle(reset) => {
                let labels = owner_labels(
                    &mut state.containers,
                    reset.owner.as_ref(),
                    &reset.connection,
                    reset.role,
                );
                let labels = self.capped(&mut state.series, RESETS_AFTER_IDLE, labels.into(), 3);
                self.families
                    .resets_after_idle
                    .with_label_values(&refs(&labels))
                    .inc();
            }
            // An episode reported while it hung was counted then.
            Finding::ConnectionFailed(failure) if failure.reported_while_hanging => {}
            Finding::ConnectionFailed(failure) => {
                let mut labels = Vec::from(owner_labels(
                    &mut state.containers,
                    failure.owner.as_ref(),
                    &failure.connection,
                    failure.role,
                ));
                labels.push(failure.mode.as_str().to_string());
                let labels = self.capped(&mut state.series, CONNECTION_FAILURES, labels, 3);
                self.families
                    .connection_failures
                    .with_label_values(&refs(&labels))
                    .inc();
            }
        }
    }

    fn storm_labels(&self, state: &mut State, storm: &Storm) -> Vec<String> {
        let labels = owner_labels(
            &mut state.containers,
            storm.owner.as_ref(),
            &storm.connection,
            storm.role,
        );
        self.capped(&mut state.series, STORMS_STARTED, labels.into(), 3)
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
        let labels = self.capped(&mut state.series, IDLE_REUSE_GAPS, labels, 1);
        let gap = reuse.gap_ns as f64 / 1e9;
        let refs = refs(&labels);
        self.families
            .idle_reuse_gaps
            .with_label_values(&refs)
            .observe(gap);
        let (gauge, pick): (_, fn(f64, f64) -> f64) = match reuse.outcome {
            ReuseOutcome::Survived => (&self.families.longest_survived_gap, f64::max),
            outcome if outcome.path_forgot() => (&self.families.shortest_failed_gap, f64::min),
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

    /// Removes the inferred timeouts of destinations no storm series is
    /// labelled with any more (their last one expired).
    pub(super) fn forget_inferred_timeouts(&self, state: &mut State) {
        let storms = state.series.of(STORMS_STARTED);
        let stale: Vec<String> = state
            .storms
            .inferred_destinations
            .iter()
            .filter(|d| !storms.is_some_and(|sets| sets.iter().any(|l| &l[2] == *d)))
            .cloned()
            .collect();
        for destination in stale {
            let _ = self
                .families
                .inferred_timeout
                .remove_label_values(&[&destination]);
            state.storms.inferred_destinations.remove(&destination);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{DEFAULT_SERIES_CAP, Metrics, test_support::retransmit};
    use crate::event::Role;

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
}
