//! The fleet's view of path idle timeouts, from a Prometheus that scrapes
//! every node's connmon and evaluates the shipped rules (`connmon-fleet`
//! group): per destination, the timeout lies above the longest idle gap a
//! connection survived and at most the shortest after which one died, on
//! any node. `connmon audit --prometheus-url` uses it.

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;

/// The recorded series of the shipped rules.
const SURVIVED: &str = "destination:connmon_idle_reuse_survived_gap_seconds:max";
const FAILED: &str = "destination:connmon_idle_reuse_failed_gap_seconds:min";

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("querying {url}: {reason}")]
    Query { url: String, reason: String },
    #[error("{url} answered {query} with no vector: {reason}")]
    Answer {
        url: String,
        query: &'static str,
        reason: String,
    },
}

/// What the fleet knows about one destination's path.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FleetWindow {
    /// The timeout is above this: the longest idle gap survived, any node.
    pub above_seconds: Option<f64>,
    /// The timeout is at most this: the shortest idle gap that failed.
    pub at_most_seconds: Option<f64>,
}

/// The fleet's windows, and where they came from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FleetTimeouts {
    /// The Prometheus URL asked.
    pub source: String,
    pub windows: BTreeMap<String, FleetWindow>,
}

impl FleetTimeouts {
    /// Asks the Prometheus at `url` (its HTTP API) for both bounds.
    pub fn query(url: &str, timeout: Duration) -> Result<Self, FleetError> {
        let base = url.trim_end_matches('/');
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .build()
            .into();
        let ask = |query: &'static str| -> Result<BTreeMap<String, f64>, FleetError> {
            let body = agent
                .get(format!("{base}/api/v1/query"))
                .query("query", query)
                .call()
                .and_then(|mut response| response.body_mut().read_to_string())
                .map_err(|error| FleetError::Query {
                    url: base.to_string(),
                    reason: error.to_string(),
                })?;
            per_destination(&body).map_err(|reason| FleetError::Answer {
                url: base.to_string(),
                query,
                reason,
            })
        };
        let mut windows: BTreeMap<String, FleetWindow> = BTreeMap::new();
        for (destination, seconds) in ask(SURVIVED)? {
            windows.entry(destination).or_default().above_seconds = Some(seconds);
        }
        for (destination, seconds) in ask(FAILED)? {
            windows.entry(destination).or_default().at_most_seconds = Some(seconds);
        }
        Ok(Self {
            source: base.to_string(),
            windows,
        })
    }

    /// The fleet's upper bound for `destination`'s path timeout, if any.
    pub fn at_most(&self, destination: &str) -> Option<Duration> {
        self.windows
            .get(destination)?
            .at_most_seconds
            .and_then(|seconds| Duration::try_from_secs_f64(seconds.max(1.0)).ok())
    }
}

impl FleetTimeouts {
    /// A sentence for a finding's hint about `destination`, naming where
    /// the numbers came from; `None` while no node saw its path fail.
    pub fn hint(&self, destination: &str) -> Option<String> {
        let window = self.windows.get(destination)?;
        let at_most = window.at_most_seconds?;
        // As the shipped rule: the longest gap proven to survive, or half
        // the shortest that failed when that is smaller.
        let half = (at_most / 2.0).floor().max(1.0);
        let keepalive = window
            .above_seconds
            .map_or(half, |above| above.floor().min(half));
        let above = window
            .above_seconds
            .map(|above| format!("more than {above:.0}s and "))
            .unwrap_or_default();
        Some(format!(
            "Across the fleet (Prometheus at {}): the path to {destination} forgets idle flows after {above}at most {at_most:.0}s; set keepalive to fire within {keepalive:.0}s of idle.",
            self.source
        ))
    }
}

/// Value per `destination` label of an instant query's vector answer
/// (Prometheus' `/api/v1/query` JSON); samples that are not finite,
/// non-negative numbers are left out.
pub fn per_destination(body: &str) -> Result<BTreeMap<String, f64>, String> {
    let answer: serde_json::Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    if answer["status"] != "success" {
        return Err(format!("status {}: {}", answer["status"], answer["error"]));
    }
    let result = answer["data"]["result"]
        .as_array()
        .ok_or_else(|| format!("result type {}", answer["data"]["resultType"]))?;
    Ok(result
        .iter()
        .filter_map(|sample| {
            let destination = sample["metric"]["destination"].as_str()?;
            let value: f64 = sample["value"][1].as_str()?.parse().ok()?;
            (value.is_finite() && value >= 0.0).then(|| (destination.to_string(), value))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_one_value_per_destination_and_skips_what_is_not_a_gap() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"destination":"10.0.1.5:6379"},"value":[1700000000,"342.5"]},
            {"metric":{"destination":"10.0.3.3:6380"},"value":[1700000000,"NaN"]},
            {"metric":{},"value":[1700000000,"1"]}
        ]}}"#;
        let values = per_destination(body).expect("a vector");
        assert_eq!(values.len(), 1, "{values:?}");
        assert_eq!(values.get("10.0.1.5:6379"), Some(&342.5));
    }

    #[test]
    fn an_error_answer_is_an_error_not_an_empty_fleet() {
        let error =
            per_destination(r#"{"status":"error","error":"parse error"}"#).expect_err("an error");
        assert!(error.contains("parse error"), "{error}");
        assert!(per_destination("<html>").is_err());
    }

    #[test]
    fn the_upper_bound_is_the_path_timeout_candidate() {
        let fleet = FleetTimeouts {
            source: "http://prometheus:9090".into(),
            windows: BTreeMap::from([(
                "10.0.1.5:6379".to_string(),
                FleetWindow {
                    above_seconds: Some(240.0),
                    at_most_seconds: Some(351.2),
                },
            )]),
        };
        assert_eq!(
            fleet.at_most("10.0.1.5:6379"),
            Some(Duration::from_secs_f64(351.2))
        );
        assert_eq!(fleet.at_most("10.0.9.9:6379"), None);
        assert_eq!(
            fleet.hint("10.0.1.5:6379").as_deref(),
            Some(
                "Across the fleet (Prometheus at http://prometheus:9090): the path to 10.0.1.5:6379 forgets idle flows after more than 240s and at most 351s; set keepalive to fire within 175s of idle."
            )
        );
        assert_eq!(fleet.hint("10.0.9.9:6379"), None, "no evidence, no hint");
    }
}
