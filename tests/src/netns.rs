//! Network namespaces made by a test, deleted when the guard drops.

use std::{os::unix::fs::MetadataExt, process::Command};

use anyhow::{Context, Result, bail};

use crate::cmd;

/// A network namespace `cmt-<pid>-<suffix>` with loopback up.
pub struct NetNs {
    name: String,
    inode: u32,
}

impl NetNs {
    pub fn create(suffix: &str) -> Result<Self> {
        let name = format!("cmt-{}-{suffix}", std::process::id());
        // A namespace left by a crashed earlier run of this same pid.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        cmd::run("ip", &["netns", "add", &name])?;
        // From here on, dropping the guard deletes the namespace.
        let mut ns = Self { name, inode: 0 };
        ns.inode = std::fs::metadata(format!("/run/netns/{}", ns.name))
            .with_context(|| format!("stat /run/netns/{}", ns.name))?
            .ino() as u32;
        ns.ip(&["link", "set", "lo", "up"])?;
        // Orphaned sockets must not retransmit into the next test.
        ns.sysctl("net.ipv4.tcp_orphan_retries", "1")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's inode: what connmon reports as `netns`.
    pub fn inode(&self) -> u32 {
        self.inode
    }

    /// `ip -n NAME args...`
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        cmd::run("ip", &full).map(|_| ())
    }

    /// A veth pair: `local` in this namespace, `remote` in `peer`.
    pub fn veth_to(&self, local: &str, peer: &NetNs, remote: &str) -> Result<()> {
        self.ip(&[
            "link", "add", local, "type", "veth", "peer", "name", remote, "netns", &peer.name,
        ])
    }

    /// Runs a program inside the namespace to completion; returns stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        cmd::stdout("ip", &full)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`
    /// execs it, so the child's pid is the program's).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Loads an nftables ruleset into the namespace.
    pub fn nft(&self, ruleset: &str) -> Result<()> {
        let path = std::env::temp_dir().join(format!("{}-{}.nft", self.name, ruleset.len()));
        std::fs::write(&path, ruleset).with_context(|| format!("writing {}", path.display()))?;
        let result = self.exec("nft", &["-f", &path.to_string_lossy()]);
        let _ = std::fs::remove_file(&path);
        result.map(|_| ())
    }

    /// Drops every inbound TCP segment to `port` in this namespace: the
    /// sender's retransmits go out (and count) but nothing arrives.
    pub fn blackhole_tcp_port(&self, port: u16) -> Result<()> {
        self.nft(&format!(
            "table inet cmt_blackhole {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    tcp dport {port} drop\n  }}\n}}\n"
        ))
    }

    /// Waits until the kernel says the connection to remote `port` has
    /// carried nothing either way (`ss` `lastsnd`, `lastrcv`) for `quiet`.
    pub fn wait_until_idle(&self, port: u16, quiet: std::time::Duration) -> Result<()> {
        crate::poll::until(
            "the connection to idle",
            quiet + std::time::Duration::from_secs(20),
            || {
                let ss = self.exec("ss", &["-tni", "dport", "=", &format!(":{port}")])?;
                Ok(idle_ms(&ss)
                    .filter(|ms| *ms >= quiet.as_millis() as u64)
                    .map(|_| ()))
            },
        )
    }

    /// The namespace's own `TcpRetransSegs` (from its /proc/net/snmp):
    /// ground truth for retransmitted segments.
    pub fn retransmitted_segments(&self) -> Result<u64> {
        let snmp = self.exec("cat", &["/proc/net/snmp"])?;
        parse_snmp(&snmp, "Tcp", "RetransSegs")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Abort sockets first so none lives on as an orphan after the
        // namespace is gone.
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.name, "ss", "-K", "-t", "-a"])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// The shorter of `lastsnd` and `lastrcv` in `ss -ti` output.
fn idle_ms(ss: &str) -> Option<u64> {
    let field = |name: &str| -> Option<u64> {
        ss.split_whitespace()
            .find_map(|word| word.strip_prefix(name))
            .and_then(|value| value.parse().ok())
    };
    Some(field("lastsnd:")?.min(field("lastrcv:")?))
}

/// A value from /proc/net/snmp: a header line and a value line per protocol.
pub fn parse_snmp(snmp: &str, protocol: &str, field: &str) -> Result<u64> {
    let prefix = format!("{protocol}:");
    let mut lines = snmp.lines().filter(|line| line.starts_with(&prefix));
    let (Some(header), Some(values)) = (lines.next(), lines.next()) else {
        bail!("no {protocol} lines in /proc/net/snmp");
    };
    let index = header
        .split_whitespace()
        .position(|name| name == field)
        .with_context(|| format!("no {field} in {protocol}"))?;
    values
        .split_whitespace()
        .nth(index)
        .and_then(|value| value.parse().ok())
        .with_context(|| format!("unreadable {protocol} {field}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_retrans_segs() -> Result<()> {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm RtoMin RetransSegs InErrs\nTcp: 1 200 17 0\n";
        assert_eq!(parse_snmp(snmp, "Tcp", "RetransSegs")?, 17);
        assert!(parse_snmp(snmp, "Udp", "InDatagrams").is_err());
        Ok(())
    }
}
