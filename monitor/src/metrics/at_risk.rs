//! The at-risk gauge: the periodic audit's idle connections past their
//! path's timeout, per process, container and destination.

use std::collections::HashMap;

use super::{Metrics, OTHER, families::AT_RISK, labels::process_label};

impl Metrics {
    /// Replaces the at-risk gauge with a fresh audit's counts, under the
    /// series cap: the label sets with the most connections keep their own
    /// series, the rest are summed under `other`.
    pub fn set_at_risk(&self, counts: &HashMap<(String, String, String), i64>) {
        let at_risk = &self.families.at_risk;
        at_risk.reset();
        let mut sets: Vec<_> = counts.iter().collect();
        // Most connections first; names break ties so a scrape is stable.
        sets.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        let keep = self.series_cap.saturating_sub(1).max(1);
        let folded: i64 = if sets.len() > self.series_cap {
            let rest = sets.split_off(keep);
            self.families
                .series_capped
                .with_label_values(&[AT_RISK])
                .inc_by(rest.len() as u64);
            rest.iter().map(|(_, count)| **count).sum()
        } else {
            0
        };
        for ((process, container, destination), count) in sets {
            at_risk
                .with_label_values(&[&process_label(process), container.as_str(), destination])
                .set(*count);
        }
        if folded > 0 {
            at_risk
                .with_label_values(&[OTHER, OTHER, OTHER])
                .set(folded);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::Metrics;

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
}
