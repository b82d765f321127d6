//! The periodic scan for watched connections whose data is stuck in the
//! send queue (`detect::stuck` decides): one sock_diag dump per network
//! namespace, only connected sockets that can send, watched ports selected
//! in the kernel. No kernel program is involved, so the hot paths pay
//! nothing; the cost is one dump per namespace per interval: about 40 ms
//! of CPU for 19,000 watched sockets (release build; 15 ms when none of
//! them is on a watched port, as the kernel still walks them), 0.8 % of a
//! core at the 5 s default. The owner comes from /proc (who holds the
//! socket), so a finding names the process but not the writing thread.

use std::{collections::BTreeSet, path::Path, time::Duration};

use monitor_common::socket::role_from_watched_ports;
use tracing::{debug, warn};

use crate::{
    attribution::{existing::processes_by_netns, procfs},
    clock::monotonic_now_ns,
    detect::stuck::{StuckRow, StuckScan},
    event::Role,
    sockdiag,
};

/// Which sockets a scan looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanScope {
    /// Watched ports at either end; empty: every port.
    pub ports: BTreeSet<u16>,
    /// Only this network namespace (`run --netns`), else every one.
    pub netns: Option<u32>,
}

/// The stuck sockets of every namespace in scope, at `at_ns`. A namespace
/// that cannot be entered or dumped is skipped (logged at debug: a process
/// may exit between the walk of /proc and the dump).
pub fn scan(proc_root: &Path, scope: &ScanScope) -> StuckScan {
    let mut rows = Vec::new();
    let at_ns = monotonic_now_ns();
    for (netns, pids) in processes_by_netns(proc_root) {
        if scope.netns.is_some_and(|only| only != netns) {
            continue;
        }
        let Some(&member) = pids.first() else {
            continue;
        };
        let dumped = sockdiag::in_netns(Some(&procfs::netns_file(proc_root, member)), || {
            // tcp_info only for the few sockets whose probe timer runs.
            let probing: Vec<_> = sockdiag::dump_senders(None, &scope.ports)?
                .iter()
                .filter(|socket| socket.probe_timer_in.is_some())
                .filter_map(|socket| sockdiag::with_tcp_info(socket).ok().flatten())
                .collect();
            Ok((probing, tcp_retries2()))
        });
        let (sockets, retries2) = match dumped {
            Ok(dumped) => dumped,
            Err(error) => {
                debug!(netns, %error, "stuck scan: namespace skipped");
                continue;
            }
        };
        rows.extend(sockets.iter().filter_map(|socket| {
            let role = if scope.ports.is_empty() {
                Role::Unknown
            } else {
                Role::try_from(role_from_watched_ports(
                    scope.ports.contains(&socket.local.port()),
                    scope.ports.contains(&socket.remote.port()),
                ))
                .unwrap_or(Role::Unknown)
            };
            StuckRow::from_diag(socket, netns, role, retries2)
        }));
    }
    StuckScan { at_ns, rows }
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
    scans: tokio::sync::mpsc::Sender<StuckScan>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let scope = scope.clone();
            let scan =
                match tokio::task::spawn_blocking(move || scan(Path::new("/proc"), &scope)).await {
                    Ok(scan) => scan,
                    Err(error) => {
                        warn!(%error, "stuck scan failed; trying again next interval");
                        continue;
                    }
                };
            if scans.send(scan).await.is_err() {
                return;
            }
        }
    })
}
