//! Before the hang: `connmon audit` lists the idle connection a middlebox
//! has forgotten, before it is used, with the process and the fix; the
//! daemon exports the same as a gauge.

use std::{process::Command, time::Duration};

use anyhow::{Context, Result};
use connmon_tests::{
    connmon::{Daemon, binary, first_finding},
    poll,
    topology::{CACHE_V4, Options, REDIS_PORT, Topology},
};
use serde_json::Value;

#[test]
fn audit_lists_the_forgotten_connection_before_it_is_used() -> Result<()> {
    let mut topology = Topology::build("audit", &Options::default())?;
    topology.start_redis()?;
    let connmon = Daemon::start(&[
        "--idle-threshold",
        "2s",
        "--ports",
        &REDIS_PORT.to_string(),
        "--default-path-timeout",
        "2s",
        "--at-risk-interval",
        "1s",
    ])?;
    let mut client = topology.redis_client(&format!("redis://{CACHE_V4}:{REDIS_PORT}"))?;
    topology.wait_until_forgotten(Duration::from_secs(30))?;

    let output = Command::new(binary())
        .args([
            "audit",
            "--json",
            "--ports",
            &REDIS_PORT.to_string(),
            "--path-timeout",
            "10.77.0.0/16=2s",
        ])
        .output()
        .context("running connmon audit")?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout)?;
    let connections = report["connections"].as_array().context("connections")?;
    let ours = connections
        .iter()
        .find(|c| {
            c["netns"] == topology.app.inode() && c["remote"] == format!("{CACHE_V4}:{REDIS_PORT}")
        })
        .with_context(|| format!("the client's connection is not listed: {report:#}"))?;
    assert_eq!(ours["verdict"], "will hang on next use", "{ours}");
    assert_eq!(ours["at_risk"], true);
    assert_eq!(ours["pid"], client.pid(), "{ours}");
    assert_eq!(ours["comm"], "cmt-redis-clien", "{ours}");
    assert_eq!(ours["keepalive"], false);
    assert_eq!(ours["path_timeout_seconds"], 2);
    assert!(ours["quiet_seconds"].as_u64().unwrap_or(0) >= 2, "{ours}");
    assert!(
        ours["fix"]
            .as_str()
            .unwrap_or_default()
            .contains("tcp-keepalive"),
        "{ours}"
    );
    let settings = report["host_settings"].to_string();
    assert!(
        settings.contains("tcp_retries2") && settings.contains("tcp_keepalive_time"),
        "{settings}"
    );

    // The human table says the same.
    let table = Command::new(binary())
        .args(["audit", "--path-timeout", "10.77.0.0/16=2s"])
        .output()?;
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("will hang on next use")
            && text.contains(&format!("cmt-redis-clien[{}]", client.pid())),
        "{text}"
    );

    // And the daemon's gauge.
    let series = format!(
        "connmon_idle_connections_at_risk{{container=\"\",destination=\"{CACHE_V4}:{REDIS_PORT}\",process=\"cmt-redis-clien\"}}"
    );
    poll::until("the at-risk gauge", Duration::from_secs(20), || {
        // The series appears with the first connection at risk.
        Ok(connmon
            .metric_if_present(&series)?
            .is_some_and(|at_risk| at_risk >= 1.0)
            .then_some(()))
    })?;

    // Once the connection hangs, the daemon's storm tells audit how short
    // the path's idle timeout really is.
    client.send_line("set")?;
    first_finding(
        &connmon,
        "storm_started",
        topology.app.inode(),
        Duration::from_secs(30),
    )?;
    let daemon_url = format!("http://{}", connmon.listen);
    let output = Command::new(binary())
        .args(["audit", "--json", "--daemon-url", &daemon_url])
        .output()?;
    let report: Value = serde_json::from_slice(&output.stdout)?;
    let inferred = report["inferred_path_timeouts"][format!("{CACHE_V4}:{REDIS_PORT}")].as_f64();
    assert!(
        inferred.is_some_and(|seconds| (2.0..60.0).contains(&seconds)),
        "{report:#}"
    );
    Ok(())
}
