//! The periodic scan for watched connections whose data is stuck in the
//! send queue (`detect::stuck` decides): one sock_diag dump per network
//! namespace, only connected sockets that can send, watched ports selected
//! in the kernel. No kernel program is involved, so the hot paths pay
//! nothing; the cost is one dump per namespace per interval: about 40 ms
//! of CPU for 19,000 watched sockets (release build; 15 ms when none of
//! them is on a watched port, as the kernel still walks them), 0.8 % of a
//! core at the 5 s default (`connmon_stuck_scan_cpu_seconds_total` counts
//! it; `cargo xtask bench` measures it). About 1.5 ms of it is per
//! namespace whatever its sockets: the kernel walks the host's whole
//! established table for each namespace's dump, once per address family.
//! Namespaces are found through their processes, remembered between scans
//! (`attribution::namespaces`): a scan lists /proc once and looks up only
//! processes not seen before. The owner comes from /proc (who holds the
//! socket), so a finding names the process but not the writing thread.

use std::{
    collections::BTreeSet,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use monitor_common::socket::role_from_watched_ports;
use tracing::{debug, warn};

use crate::{
    attribution::{namespaces::NamespaceTracker, procfs},
    clock::{monotonic_now_ns, thread_cpu_time},
    detect::stuck::{StuckRow, StuckScan},
    event::Role,
    sockdiag::{self, DiagSocket},
};

/// Which sockets a scan looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanScope {
    /// Watched ports at either end; empty: every port.
    pub ports: BTreeSet<u16>,
    /// Only this network namespace (`run --netns`), else every one.
    pub netns: Option<u32>,
}

/// What a scan cost, for `/metrics`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScanCost {
    /// CPU time of the scan: the scanning thread's and that of each thread
    /// that entered a namespace for it.
    pub cpu: Duration,
    /// Namespaces dumped.
    pub namespaces: usize,
    /// Namespaces skipped: gone before they could be entered (normal, a
    /// process exits), or refused.
    pub skipped: usize,
}

/// One scan, with what it cost.
#[derive(Debug)]
pub struct Scanned {
    pub scan: StuckScan,
    pub cost: ScanCost,
}

/// Scans, remembering the namespaces between scans: /proc is listed once
/// a scan, and only processes not seen before are looked up.
#[derive(Debug)]
pub struct Scanner {
    scope: ScanScope,
    namespaces: NamespaceTracker,
    /// The daemon's own namespace: dumped from the calling thread, with no
    /// thread to enter it.
    own_netns: Option<u32>,
}

impl Scanner {
    pub fn new(proc_root: impl Into<PathBuf>, scope: ScanScope) -> Self {
        let proc_root = proc_root.into();
        let own_netns = std::fs::metadata(proc_root.join("thread-self/ns/net"))
            .ok()
            .and_then(|m| u32::try_from(m.ino()).ok());
        Self {
            scope,
            namespaces: NamespaceTracker::new(proc_root),
            own_netns,
        }
    }

    /// The stuck sockets of every namespace in scope, now. A namespace that
    /// cannot be entered or dumped is skipped (logged at debug, counted in
    /// the cost): a process may exit between the listing of /proc and the
    /// dump.
    pub fn scan(&mut self) -> Scanned {
        let cpu_before = thread_cpu_time();
        let refresh = self.namespaces.refresh();
        if !refresh.added.is_empty() || !refresh.dropped.is_empty() {
            debug!(added = ?refresh.added, dropped = ?refresh.dropped, looked_up = refresh.looked_up, "stuck scan: network namespaces changed");
        }
        let mut cost = ScanCost::default();
        let mut rows = Vec::new();
        let at_ns = monotonic_now_ns();
        let in_scope: Vec<(u32, Vec<u32>)> = self
            .namespaces
            .namespaces()
            .iter()
            .filter(|(netns, _)| self.scope.netns.is_none_or(|only| only == **netns))
            .map(|(netns, pids)| (*netns, pids.clone()))
            .collect();
        for (netns, members) in in_scope {
            let dumped = if Some(netns) == self.own_netns {
                self.dump()
            } else if let Some(file) = self.open(netns, &members) {
                let (dumped, cpu) = sockdiag::in_open_netns(&file, || self.dump());
                cost.cpu += cpu;
                dumped
            } else {
                Err(std::io::Error::other(
                    "no process of it left to enter it by",
                ))
            };
            let (sockets, retries2) = match dumped {
                Ok(dumped) => dumped,
                Err(error) => {
                    cost.skipped += 1;
                    debug!(netns, %error, "stuck scan: namespace skipped");
                    continue;
                }
            };
            cost.namespaces += 1;
            rows.extend(sockets.iter().filter_map(|socket| {
                StuckRow::from_diag(socket, netns, self.role(socket), retries2)
            }));
        }
        cost.cpu += thread_cpu_time().saturating_sub(cpu_before);
        Scanned {
            scan: StuckScan { at_ns, rows },
            cost,
        }
    }

    /// The sockets in scope of the calling thread's namespace whose probe
    /// timer runs, with tcp_info (fetched for those few only), and the
    /// namespace's `tcp_retries2`.
    fn dump(&self) -> std::io::Result<(Vec<DiagSocket>, u8)> {
        let probing: Vec<_> = sockdiag::dump_senders(None, &self.scope.ports)?
            .iter()
            .filter(|socket| socket.probe_timer_in.is_some())
            .filter_map(|socket| sockdiag::with_tcp_info(socket).ok().flatten())
            .collect();
        Ok((probing, tcp_retries2()))
    }

    /// `netns` opened through one of its processes, checked to be it: a
    /// process that exited (its pid maybe reused) or switched namespaces
    /// since the refresh is skipped and looked up again next time.
    fn open(&mut self, netns: u32, members: &[u32]) -> Option<std::fs::File> {
        for &pid in members {
            let file = std::fs::File::open(procfs::netns_file(self.namespaces.proc_root(), pid));
            let is_it = |file: &std::fs::File| {
                file.metadata()
                    .is_ok_and(|m| u32::try_from(m.ino()).ok() == Some(netns))
            };
            match file {
                Ok(file) if is_it(&file) => return Some(file),
                _ => self.namespaces.forget(pid),
            }
        }
        None
    }

    fn role(&self, socket: &DiagSocket) -> Role {
        let ports = &self.scope.ports;
        if ports.is_empty() {
            return Role::Unknown;
        }
        Role::try_from(role_from_watched_ports(
            ports.contains(&socket.local.port()),
            ports.contains(&socket.remote.port()),
        ))
        .unwrap_or(Role::Unknown)
    }
}

/// `net.ipv4.tcp_retries2` of the calling thread's namespace (15, the
/// kernel's default, when it cannot be read).
fn tcp_retries2() -> u8 {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_retries2")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(15)
}

/// Scans every `interval`, off the async threads, and hands each scan to
/// the pipeline. Stops when the pipeline is gone.
pub fn spawn(
    scope: ScanScope,
    interval: Duration,
    scans: tokio::sync::mpsc::Sender<Scanned>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut scanner = Some(Scanner::new(Path::new("/proc"), scope.clone()));
        loop {
            tick.tick().await;
            // The scanner (what it knows of the namespaces) goes to the
            // blocking thread and comes back with the scan.
            let mut taken = scanner
                .take()
                .unwrap_or_else(|| Scanner::new(Path::new("/proc"), scope.clone()));
            let scanned = match tokio::task::spawn_blocking(move || {
                let scanned = taken.scan();
                (taken, scanned)
            })
            .await
            {
                Ok((returned, scanned)) => {
                    scanner = Some(returned);
                    scanned
                }
                Err(error) => {
                    warn!(%error, "stuck scan failed; trying again next interval");
                    continue;
                }
            };
            if scans.send(scanned).await.is_err() {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our own namespace, dumped without a thread to enter it, and the
    /// scan's cost counted.
    #[test]
    fn a_scan_covers_our_namespace_and_counts_its_cost() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let own = procfs::netns_inode(Path::new("/proc"), std::process::id()).expect("netns");
        let mut scanner = Scanner::new(
            "/proc",
            ScanScope {
                ports: BTreeSet::from([port]),
                netns: Some(own),
            },
        );
        assert_eq!(scanner.own_netns, Some(own));
        for _ in 0..2 {
            let scanned = scanner.scan();
            assert_eq!(scanned.cost.namespaces, 1, "{:?}", scanned.cost);
            assert_eq!(scanned.cost.skipped, 0);
            assert!(scanned.cost.cpu > Duration::ZERO);
            // Nothing of ours is stuck.
            assert!(scanned.scan.rows.is_empty());
        }
    }
}
