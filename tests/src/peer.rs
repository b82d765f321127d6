//! `tcp-peer` (this crate's test peer) started in a test's namespace and
//! awaited until it is ready.

use std::{process::Command, time::Duration};

use anyhow::Result;

use crate::{connmon::built_binary, netns::NetNs, process::Process};

/// How long a peer may take to listen or connect.
const READY: Duration = Duration::from_secs(10);

/// `tcp-peer server ADDR` in `ns`, once it listens.
pub fn server(ns: &NetNs, addr: &str) -> Result<Process> {
    let mut command = ns.command(&built_binary("tcp-peer").to_string_lossy());
    command.args(["server", addr]);
    let server = Process::spawn("tcp-peer server", command)?;
    server.stdout.wait_for("listening", READY)?;
    Ok(server)
}

/// `tcp-peer client ADDR` in `ns`, once it has connected and exchanged a
/// line; `prepare` adjusts the command first (e.g. a cgroup to start in).
pub fn client(
    ns: &NetNs,
    addr: &str,
    prepare: impl FnOnce(&mut Command) -> Result<()>,
) -> Result<Process> {
    let mut command = ns.command(&built_binary("tcp-peer").to_string_lossy());
    command.args(["client", addr]);
    prepare(&mut command)?;
    let client = Process::spawn("tcp-peer client", command)?;
    client.stdout.wait_for("connected", READY)?;
    Ok(client)
}
