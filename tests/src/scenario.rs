//! The seed scenario, assembled: the app/middlebox/cache topology with
//! `redis-server`, `connmon run` watching 6379 with a 2 s idle threshold,
//! and a connected `redis` crate client. Fields drop in order: client,
//! connmon, then the namespaces.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::Value;

use crate::{
    connmon::{Daemon, first_finding, first_finding_of},
    process::Process,
    topology::{CACHE_V4, Options, REDIS_PORT, Topology},
};

/// connmon's idle threshold in the scenarios; the middlebox forgets after 3 s.
pub const IDLE_THRESHOLD: &str = "2s";

pub struct SeedScenario {
    pub client: Process,
    pub connmon: Daemon,
    pub topology: Topology,
}

impl SeedScenario {
    /// Topology and redis-server, then connmon (with `connmon_args` added),
    /// then the client over IPv4.
    pub fn start(tag: &str, options: &Options, connmon_args: &[&str]) -> Result<Self> {
        Self::start_with(tag, options, connmon_args, Daemon::start)
    }

    /// As `start`, with connmon started by `start_connmon` (given the
    /// scenario's arguments), e.g. as another user or from another binary.
    pub fn start_with(
        tag: &str,
        options: &Options,
        connmon_args: &[&str],
        start_connmon: impl FnOnce(&[&str]) -> Result<Daemon>,
    ) -> Result<Self> {
        let mut topology = Topology::build(tag, options)?;
        topology.start_redis()?;
        let port = REDIS_PORT.to_string();
        let mut args = vec!["--idle-threshold", IDLE_THRESHOLD, "--ports", &port];
        args.extend_from_slice(connmon_args);
        let connmon = start_connmon(&args)?;
        let client = topology.redis_client(&format!("redis://{CACHE_V4}:{REDIS_PORT}"))?;
        Ok(Self {
            client,
            connmon,
            topology,
        })
    }

    /// Lets the connection idle until the middlebox has forgotten it, then
    /// sends `command` on it; returns how long it was idle at least.
    pub fn resume_after_forgotten(&mut self, command: &str) -> Result<Duration> {
        let idle_since = Instant::now();
        self.topology
            .wait_until_forgotten(Duration::from_secs(30))?;
        let idle_gap = idle_since.elapsed();
        self.client.send_line(command)?;
        Ok(idle_gap)
    }

    /// A second client connected now, idle until the middlebox has forgotten
    /// its flow, then sending `command` on it: a new storm, with its own
    /// process.
    pub fn another_client_resumed_after_forgotten(&self, command: &str) -> Result<Process> {
        let mut client = self
            .topology
            .redis_client(&format!("redis://{CACHE_V4}:{REDIS_PORT}"))?;
        self.topology
            .wait_until_forgotten(Duration::from_secs(30))?;
        client.send_line(command)?;
        Ok(client)
    }

    /// The first finding `event` in the app namespace.
    pub fn finding(&self, event: &str, timeout: Duration) -> Result<Value> {
        first_finding(&self.connmon, event, self.topology.app.inode(), timeout)
    }

    /// The first `storm_started` in the app namespace, which must name the
    /// client's process.
    pub fn client_storm(&self) -> Result<Value> {
        first_finding_of(
            &self.connmon,
            "storm_started",
            self.topology.app.inode(),
            self.client.pid(),
            Duration::from_secs(30),
        )
    }
}
