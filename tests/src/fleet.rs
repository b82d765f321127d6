//! Several "nodes" on one machine for the fleet view: each is a seed
//! topology (app -- middlebox -- cache) watched by its own connmon scoped to
//! the node's app namespace (`--netns`). Every node's cache has the same
//! addresses, as one service behind the same kind of middlebox would: the
//! same `destination` label on every node.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::{
    artifacts::RemoveOnDrop,
    connmon::Daemon,
    poll,
    process::Process,
    topology::{Options, Topology},
};

/// A port on the cache whose flows the middlebox never forgets.
pub const KEPT_PORT: u16 = 6380;

/// One node. Fields drop in order: clients, connmon, the second Redis,
/// then the namespaces (and the first Redis).
pub struct Node {
    pub clients: Vec<Process>,
    pub connmon: Option<Daemon>,
    kept_redis: Option<(Process, RemoveOnDrop)>,
    pub topology: Topology,
    pub name: String,
}

impl Node {
    /// A node whose middlebox forgets idle flows to the Redis port after
    /// `forget_after` (and never those to `KEPT_PORT`), with Redis on both.
    pub fn build(name: &str, forget_after: Duration) -> Result<Self> {
        let mut topology = Topology::build(name, &Options::intact_path())?;
        // A conntrack timeout policy of its own for the Redis port: a
        // middlebox with an idle timeout on that service only.
        topology.router.nft(&format!(
            "table inet cmt_fleet {{
  ct timeout forget_idle {{
    protocol tcp;
    l3proto ip;
    policy = {{ established: {} }}
  }}
  chain forward {{
    type filter hook forward priority -10; policy accept;
    ct state new tcp dport {} ct timeout set \"forget_idle\"
  }}
}}
",
            forget_after.as_secs().max(1),
            crate::topology::REDIS_PORT
        ))?;
        topology.start_redis()?;
        let mut node = Self {
            clients: Vec::new(),
            connmon: None,
            kept_redis: None,
            topology,
            name: name.to_string(),
        };
        node.start_kept_redis()?;
        Ok(node)
    }

    fn start_kept_redis(&mut self) -> Result<()> {
        let cache = &self.topology.cache;
        let dir = std::env::temp_dir().join(format!("{}-redis-kept", cache.name()));
        std::fs::create_dir_all(&dir)?;
        let dir = RemoveOnDrop(dir);
        let port = KEPT_PORT.to_string();
        let mut command = cache.command("redis-server");
        command
            .args([
                "--bind",
                "0.0.0.0",
                "--port",
                &port,
                "--protected-mode",
                "no",
            ])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--tcp-keepalive", "0", "--timeout", "0", "--dir"])
            .arg(&dir.0);
        self.kept_redis = Some((Process::spawn("redis-server kept", command)?, dir));
        poll::until(
            "the second redis-server to answer PING",
            Duration::from_secs(20),
            || {
                let pong = cache.exec("redis-cli", &["-h", "127.0.0.1", "-p", &port, "ping"]);
                Ok(pong.ok().filter(|reply| reply.trim() == "PONG").map(|_| ()))
            },
        )
        .context("the second redis-server did not start")
    }

    /// connmon watching this node's app namespace only.
    pub fn start_connmon(&mut self, args: &[&str]) -> Result<()> {
        let netns = format!("/run/netns/{}", self.topology.app.name());
        let mut full = vec!["--netns", &netns, "--node-name", &self.name];
        full.extend_from_slice(args);
        self.connmon = Some(Daemon::start(&full)?);
        Ok(())
    }

    /// A connected `cmt-redis-client` in the app namespace; its index.
    pub fn connect(&mut self, url: &str) -> Result<usize> {
        self.clients.push(self.topology.redis_client(url)?);
        Ok(self.clients.len() - 1)
    }
}

/// Lines printed so far by `process` that start with `prefix`.
pub fn lines_starting(process: &Process, prefix: &str) -> usize {
    process
        .stdout
        .snapshot()
        .iter()
        .filter(|line| line.starts_with(prefix))
        .count()
}
