//! Expiry of quiet label sets, so /metrics follows what exists now.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use super::{
    Metrics,
    families::{CONNECTION_FAILURES, RESETS_AFTER_IDLE, RETRANSMITS, STORMS_STARTED},
    labels::refs,
};

/// Per capped label set: its value at the last sweep and since when it has
/// not changed.
pub(super) type Activity = HashMap<(&'static str, Vec<String>), (f64, Instant)>;

impl Metrics {
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
        for (family, sets) in state.series.iter() {
            for labels in sets {
                let Some(value) = self.expiry_value(family, &refs(labels)) else {
                    continue;
                };
                let key = (family, labels.clone());
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
            if let Err(error) = self.remove_series(family, &refs(labels)) {
                tracing::debug!(%error, family, "expiring a label set");
            }
            state.series.forget(family, labels);
            state.activity.remove(&(*family, labels.clone()));
        }
        if !quiet.is_empty() {
            // Cached counters of removed series would count into nothing.
            state.retransmit_series.clear();
            // A path's inferred timeout goes with its last storm's labels.
            self.forget_inferred_timeouts(state);
        }
        quiet.len()
    }

    /// What a label set's sample reads now, for telling whether it changed;
    /// `None` for families that do not expire.
    fn expiry_value(&self, family: &str, labels: &[&str]) -> Option<f64> {
        let families = &self.families;
        Some(match family {
            RETRANSMITS => families.retransmits.with_label_values(labels).get() as f64,
            RESETS_AFTER_IDLE => families.resets_after_idle.with_label_values(labels).get() as f64,
            CONNECTION_FAILURES => {
                families.connection_failures.with_label_values(labels).get() as f64
            }
            STORMS_STARTED => {
                // An active storm keeps its labels, however long.
                if families.storms_active.with_label_values(labels).get() > 0 {
                    f64::NAN
                } else {
                    families.storms_started.with_label_values(labels).get() as f64
                }
            }
            _ => return None,
        })
    }

    /// Removes a label set's series from its family (a storm's from both
    /// the started and the active family).
    fn remove_series(&self, family: &str, labels: &[&str]) -> prometheus::Result<()> {
        let families = &self.families;
        match family {
            RETRANSMITS => families.retransmits.remove_label_values(labels),
            RESETS_AFTER_IDLE => families.resets_after_idle.remove_label_values(labels),
            CONNECTION_FAILURES => families.connection_failures.remove_label_values(labels),
            _ => {
                let _ = families.storms_active.remove_label_values(labels);
                families.storms_started.remove_label_values(labels)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::{
        DEFAULT_SERIES_CAP, Metrics,
        test_support::{retransmit, retransmit_series},
    };

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
}
