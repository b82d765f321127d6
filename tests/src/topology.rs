//! The seed scenario's network: app -- middlebox router -- cache, three
//! namespaces joined by veth pairs. The router forwards through nftables
//! conntrack that forgets established flows after a short idle time and
//! then drops (or resets) their packets, as a NAT gateway or cloud load
//! balancer does. A real `redis-server` runs in the cache namespace.
//!
//! Addresses: app 10.77.1.2 / fd00:77:1::2, router 10.77.1.1 and 10.77.2.1
//! (fd00:77:1::1, fd00:77:2::1), cache 10.77.2.2 / fd00:77:2::2. They exist
//! only inside these namespaces.

use std::{process::Command, time::Duration};

use anyhow::{Context, Result};

use crate::{netns::NetNs, poll, process::Process};

pub const CACHE_V4: &str = "10.77.2.2";
pub const CACHE_V6: &str = "fd00:77:2::2";
pub const REDIS_PORT: u16 = 6379;

/// What the middlebox does with packets of a flow it forgot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StaleFlow {
    /// Silently drop them (the seed scenario).
    Drop,
    /// Answer with a TCP reset.
    Reset,
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Conntrack's established-flow timeout on the router; `None` keeps the
    /// kernel default (5 days): the path never forgets.
    pub forget_after: Option<Duration>,
    pub stale_flow: StaleFlow,
    /// Percentage of forwarded packets dropped at random.
    pub random_loss_percent: Option<u8>,
    /// `net.ipv4.tcp_retries2` in the app and cache namespaces, so a hang
    /// lasts seconds instead of 15 minutes.
    pub tcp_retries2: u8,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            forget_after: Some(Duration::from_secs(3)),
            stale_flow: StaleFlow::Drop,
            random_loss_percent: None,
            tcp_retries2: 4,
        }
    }
}

impl Options {
    /// A path that never forgets an idle flow (no conntrack timeout).
    pub fn intact_path() -> Self {
        Self {
            forget_after: None,
            ..Self::default()
        }
    }
}

/// The three namespaces and the Redis server. Fields drop in order: the
/// server first, then the namespaces.
pub struct Topology {
    /// The server, then its data directory: dropped in this order, so the
    /// server has stopped before its directory is removed.
    redis: Option<(Process, crate::artifacts::RemoveOnDrop)>,
    pub app: NetNs,
    pub router: NetNs,
    pub cache: NetNs,
}

impl Topology {
    pub fn build(tag: &str, options: &Options) -> Result<Self> {
        let topology = Self {
            redis: None,
            app: NetNs::create(&format!("{tag}-app"))?,
            router: NetNs::create(&format!("{tag}-mb"))?,
            cache: NetNs::create(&format!("{tag}-cache"))?,
        };
        topology.wire()?;
        topology.middlebox(options)?;
        for ns in [&topology.app, &topology.cache] {
            ns.sysctl("net.ipv4.tcp_retries2", &options.tcp_retries2.to_string())?;
        }
        Ok(topology)
    }

    fn wire(&self) -> Result<()> {
        let (app, router, cache) = (&self.app, &self.router, &self.cache);
        app.veth_to("eth0", router, "to-app")?;
        cache.veth_to("eth0", router, "to-cache")?;
        for (ns, dev, v4, v6) in [
            (app, "eth0", "10.77.1.2/24", "fd00:77:1::2/64"),
            (router, "to-app", "10.77.1.1/24", "fd00:77:1::1/64"),
            (router, "to-cache", "10.77.2.1/24", "fd00:77:2::1/64"),
            (cache, "eth0", "10.77.2.2/24", "fd00:77:2::2/64"),
        ] {
            ns.ip(&["addr", "add", v4, "dev", dev])?;
            ns.ip(&["-6", "addr", "add", v6, "dev", dev, "nodad"])?;
            ns.ip(&["link", "set", dev, "up"])?;
        }
        app.ip(&["route", "add", "default", "via", "10.77.1.1"])?;
        app.ip(&["-6", "route", "add", "default", "via", "fd00:77:1::1"])?;
        cache.ip(&["route", "add", "default", "via", "10.77.2.1"])?;
        cache.ip(&["-6", "route", "add", "default", "via", "fd00:77:2::1"])?;
        router.sysctl("net.ipv4.ip_forward", "1")?;
        router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        Ok(())
    }

    fn middlebox(&self, options: &Options) -> Result<()> {
        let loss = options
            .random_loss_percent
            .map(|percent| format!("    numgen random mod 100 < {percent} drop\n"))
            .unwrap_or_default();
        let stale = match options.stale_flow {
            StaleFlow::Drop => "ct state invalid drop",
            StaleFlow::Reset => "ct state invalid meta l4proto tcp reject with tcp reset",
        };
        self.router.nft(&format!(
            "table inet cmt_middlebox {{
  chain forward {{
    type filter hook forward priority 0; policy drop;
{loss}    ct state established,related accept
    {stale}
    ct state new accept
  }}
  chain input {{
    # Packets of a forgotten flow addressed to the router itself (after
    # masquerade) must not draw a reset from its own stack.
    type filter hook input priority 0; policy accept;
    ct state invalid drop
  }}
  chain postrouting {{
    type nat hook postrouting priority 100;
    oifname \"to-cache\" masquerade
  }}
}}
"
        ))?;
        // Present once conntrack is in use in the namespace.
        self.router
            .sysctl("net.netfilter.nf_conntrack_tcp_loose", "0")?;
        if let Some(forget_after) = options.forget_after {
            self.router.sysctl(
                "net.netfilter.nf_conntrack_tcp_timeout_established",
                &forget_after.as_secs().max(1).to_string(),
            )?;
        }
        Ok(())
    }

    /// Starts `redis-server` in the cache namespace (v4 and v6) and waits
    /// until it answers.
    pub fn start_redis(&mut self) -> Result<()> {
        let dir = std::env::temp_dir().join(format!("{}-redis", self.cache.name()));
        std::fs::create_dir_all(&dir)?;
        let dir = crate::artifacts::RemoveOnDrop(dir);
        let mut command = redis_server(&self.cache, &["0.0.0.0", "::"], REDIS_PORT, 0);
        command.arg("--dir").arg(&dir.0);
        self.redis = Some((Process::spawn("redis-server", command)?, dir));
        poll::until(
            "redis-server to answer PING",
            Duration::from_secs(20),
            || {
                let pong = self.cache.exec(
                    "redis-cli",
                    &["-h", "127.0.0.1", "-p", &REDIS_PORT.to_string(), "ping"],
                );
                Ok(pong.ok().filter(|reply| reply.trim() == "PONG").map(|_| ()))
            },
        )
        .context("redis-server did not start")?;
        // One round trip each way through the router, so neighbour discovery
        // is done before a test's own connection (a first SYN stuck behind
        // ND is retransmitted, which leaves the connection with a 3 s RTO).
        for host in [CACHE_V4, CACHE_V6] {
            self.app.exec(
                "redis-cli",
                &["-h", host, "-p", &REDIS_PORT.to_string(), "ping"],
            )?;
        }
        Ok(())
    }

    /// Waits until the app's connection to Redis has been idle past
    /// connmon's 2 s threshold (`scenario::IDLE_THRESHOLD`), measured by
    /// the kernel itself.
    pub fn wait_until_idle_past_threshold(&self) -> Result<()> {
        self.app
            .wait_until_idle(REDIS_PORT, Duration::from_millis(2500))
    }

    pub fn redis_pid(&self) -> Option<u32> {
        self.redis.as_ref().map(|(server, _)| server.pid())
    }

    /// `redis-cli` in the cache namespace.
    pub fn redis_cli(&self, args: &[&str]) -> Result<String> {
        let port = REDIS_PORT.to_string();
        let mut full = vec!["-h", "127.0.0.1", "-p", &port];
        full.extend_from_slice(args);
        self.cache.exec("redis-cli", &full)
    }

    /// The `redis` crate client (`cmt-redis-client`) in the app namespace,
    /// connected to `url` and warmed up with one SET.
    pub fn redis_client(&self, url: &str) -> Result<Process> {
        let mut command =
            self.app_command(&crate::connmon::built_binary("cmt-redis-client").to_string_lossy());
        command.arg(url);
        let client = Process::spawn("cmt-redis-client", command)?;
        client
            .stdout
            .wait_for("connected", Duration::from_secs(20))?;
        Ok(client)
    }

    /// A command run in the app namespace.
    pub fn app_command(&self, program: &str) -> Command {
        self.app.command(program)
    }

    /// Waits until the router has forgotten every flow to the cache's Redis
    /// port (conntrack has no live entry): the next packet is stale.
    pub fn wait_until_forgotten(&self, timeout: Duration) -> Result<()> {
        poll::until("the middlebox to forget the idle flow", timeout, || {
            let table = self.router.exec(
                "conntrack",
                &["-L", "-p", "tcp", "--dport", &REDIS_PORT.to_string()],
            )?;
            Ok((live_flows(&table) == 0).then_some(()))
        })
    }
}

/// `redis-server` in `ns` as the tests run it: listening on `port` at the
/// `bind` addresses, in the foreground, storing nothing, with no keepalive
/// of its own, and closing a client idle for `idle_timeout_seconds` (0:
/// never).
pub fn redis_server(ns: &NetNs, bind: &[&str], port: u16, idle_timeout_seconds: u32) -> Command {
    let mut command = ns.command("redis-server");
    command.arg("--bind").args(bind);
    command.args([
        "--port",
        &port.to_string(),
        "--protected-mode",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--tcp-keepalive",
        "0",
        "--timeout",
        &idle_timeout_seconds.to_string(),
    ]);
    command
}

/// Established flows listed by `conntrack -L` (closed ones linger in
/// TIME_WAIT and do not matter). The dump skips expired entries; the seconds
/// column is truncated, so "0" can still be live.
pub fn live_flows(table: &str) -> usize {
    table
        .lines()
        .filter(|line| line.starts_with("tcp") && line.contains(" ESTABLISHED "))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_listed_conntrack_entries() {
        let table = "tcp      6 2 ESTABLISHED src=10.77.1.2 dst=10.77.2.2 sport=1 dport=6379\n\
                     tcp      6 0 ESTABLISHED src=10.77.1.2 dst=10.77.2.2 sport=2 dport=6379\n\
                     tcp      6 119 TIME_WAIT src=10.77.1.2 dst=10.77.2.2 sport=3 dport=6379\n";
        assert_eq!(live_flows(table), 2);
        assert_eq!(live_flows(""), 0);
    }
}
