//! The steps a storm test takes on its own idle connection: let it idle
//! past the threshold, blackhole its port, send, and find the storm.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::Value;

use crate::{
    connmon::{Daemon, first_finding_of},
    netns::NetNs,
    process::Process,
};

/// Once `idle_until` has passed (the connection's idle gap: the absence of
/// traffic, nothing to poll for), drops every packet to `port` in `ns`
/// and sends `line` on `client`: the request that hangs.
pub fn send_into_blackhole_after_idle(
    ns: &NetNs,
    port: u16,
    client: &mut Process,
    idle_until: Instant,
    line: &str,
) -> Result<()> {
    std::thread::sleep(idle_until.saturating_duration_since(Instant::now()));
    ns.blackhole_tcp_port(port)?;
    client.send_line(line)
}

/// `send_into_blackhole_after_idle`, then the first `storm_started` in
/// `ns`, which must name `client`'s process.
pub fn storm_after_idle(
    connmon: &Daemon,
    ns: &NetNs,
    port: u16,
    client: &mut Process,
    idle_until: Instant,
    line: &str,
) -> Result<Value> {
    send_into_blackhole_after_idle(ns, port, client, idle_until, line)?;
    first_finding_of(
        connmon,
        "storm_started",
        ns.inode(),
        client.pid(),
        Duration::from_secs(30),
    )
}
