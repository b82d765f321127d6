//! Sockets the kernel programs never saw from the start: connections that
//! predate the daemon, and sockets first seen in softirq (no owner yet).
//!
//! At start-up, every TCP socket on watched ports, in every network
//! namespace, is listed through sock_diag and matched to the process holding
//! it through `/proc/PID/fd`; its owner and last activity (from tcp_info)
//! go into the kernel's socket map, so the programs carry on as if they had
//! seen the socket all along. Later, a socket that still has no owner is
//! resolved the same way, once, when a finding needs it.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use monitor_common::socket::{
    Activity, OWNER_SOURCE_PROC, Owner, PrimedSocket, ROLE_UNKNOWN, role_from_watched_ports,
};
use tracing::debug;

use super::procfs;
use crate::sockdiag;
use crate::{
    event::{Connection, OwnerSource, ProcessRef},
    risk::HostSettings,
};

/// Processes grouped by network namespace inode.
pub(crate) fn processes_by_netns(proc_root: &Path) -> BTreeMap<u32, Vec<u32>> {
    let mut by_netns: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for pid in procfs::pids(proc_root) {
        if let Some(netns) = procfs::netns_inode(proc_root, pid) {
            by_netns.entry(netns).or_default().push(pid);
        }
    }
    by_netns
}

/// A socket that predates the daemon, ready for the kernel map.
#[derive(Clone, Debug)]
pub struct KnownSocket {
    pub cookie: u64,
    pub netns: u32,
    pub state: PrimedSocket,
    /// How many processes hold the socket (fork, fd passing).
    pub holders: usize,
}

/// A watched TCP socket found by a scan, with the processes holding it.
#[derive(Clone, Debug)]
pub struct ScannedSocket {
    pub netns: u32,
    pub socket: sockdiag::DiagSocket,
    pub holders: Vec<u32>,
    /// `ROLE_*` from which side's port is watched.
    pub role: u8,
}

/// One network namespace: its watched sockets and its TCP settings.
#[derive(Clone, Debug)]
pub struct NamespaceScan {
    pub netns: u32,
    pub sockets: Vec<ScannedSocket>,
    pub settings: HostSettings,
}

/// Lists the watched, connected TCP sockets of every network namespace
/// (sock_diag) with the processes holding them (`/proc/PID/fd`), and each
/// namespace's TCP settings. `watched(local_port, remote_port)` selects.
pub fn scan(proc_root: &Path, watched: &dyn Fn(u16, u16) -> bool) -> Vec<NamespaceScan> {
    let mut scans = Vec::new();
    for (netns, pids) in processes_by_netns(proc_root) {
        let Some(&representative) = pids.first() else {
            continue;
        };
        let netns_file = procfs::netns_file(proc_root, representative);
        let dumped = sockdiag::in_netns(Some(&netns_file), || {
            Ok((sockdiag::dump_tcp(None)?, HostSettings::read()))
        });
        let (sockets, settings) = match dumped {
            Ok(dumped) => dumped,
            Err(error) => {
                debug!(netns, %error, "sock_diag dump failed; this namespace is skipped");
                continue;
            }
        };
        let by_inode: HashMap<u32, sockdiag::DiagSocket> = sockets
            .into_iter()
            .filter(|s| {
                s.inode != 0 && s.remote.port() != 0 && watched(s.local.port(), s.remote.port())
            })
            .map(|s| (s.inode, s))
            .collect();
        let mut holders: HashMap<u32, Vec<u32>> = HashMap::new();
        if !by_inode.is_empty() {
            for &pid in &pids {
                for inode in procfs::socket_inodes(proc_root, pid) {
                    if by_inode.contains_key(&inode) {
                        holders.entry(inode).or_default().push(pid);
                    }
                }
            }
        }
        let sockets = by_inode
            .into_iter()
            .map(|(inode, socket)| ScannedSocket {
                netns,
                role: role_for(&socket, watched),
                holders: holders.remove(&inode).unwrap_or_default(),
                socket,
            })
            .collect();
        scans.push(NamespaceScan {
            netns,
            sockets,
            settings,
        });
    }
    scans
}

/// The watched sockets of every namespace, with owners and last activity,
/// ready for the kernel. `now_ns` is CLOCK_MONOTONIC, the records' time
/// base.
pub fn inventory(
    proc_root: &Path,
    watched: &dyn Fn(u16, u16) -> bool,
    now_ns: u64,
) -> Vec<KnownSocket> {
    let mut known = Vec::new();
    for scanned in scan(proc_root, watched)
        .into_iter()
        .flat_map(|scan| scan.sockets)
    {
        let (socket, pids, role) = (&scanned.socket, &scanned.holders, scanned.role);
        let mut owner = pids
            .first()
            .and_then(|&pid| procfs::owner_of(proc_root, pid, OWNER_SOURCE_PROC, role))
            .unwrap_or(Owner {
                role,
                ..Owner::default()
            });
        // Held by several processes: which one writes is unknown until the
        // kernel sees it; say the socket is shared.
        owner.process_changes = u8::try_from(pids.len().saturating_sub(1)).unwrap_or(u8::MAX);
        let ago = |ms: Option<u32>| {
            ms.map(|ms| now_ns.saturating_sub(u64::from(ms) * 1_000_000))
                .unwrap_or(0)
        };
        let (last_send_ns, last_recv_ns) =
            (ago(socket.last_data_sent_ms), ago(socket.last_data_recv_ms));
        known.push(KnownSocket {
            cookie: socket.cookie,
            netns: scanned.netns,
            holders: pids.len(),
            state: PrimedSocket {
                owner,
                activity: Activity {
                    last_send_ns,
                    last_recv_ns,
                    burst_start_ns: last_send_ns.max(last_recv_ns),
                    idle_before_burst_ns: 0,
                },
            },
        });
    }
    known
}

/// `ROLE_*` inferred from which end's port is watched.
fn role_for(socket: &sockdiag::DiagSocket, watched: &dyn Fn(u16, u16) -> bool) -> u8 {
    role_from_watched_ports(
        watched(socket.local.port(), 0),
        watched(0, socket.remote.port()),
    )
}

/// Resolves owners of sockets the kernel never saw used in process context,
/// once per socket.
pub struct OwnerResolver {
    proc_root: PathBuf,
    cache: HashMap<u64, Option<ProcessRef>>,
}

impl OwnerResolver {
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Self {
            proc_root: proc_root.into(),
            cache: HashMap::new(),
        }
    }

    /// The process holding the socket `cookie` in `connection.netns`.
    pub fn resolve(&mut self, cookie: u64, connection: &Connection) -> Option<ProcessRef> {
        if let Some(cached) = self.cache.get(&cookie) {
            return cached.clone();
        }
        let owner = self.lookup(cookie, connection);
        if self.cache.len() >= 16_384 {
            self.cache.clear();
        }
        self.cache.insert(cookie, owner.clone());
        owner
    }

    fn lookup(&self, cookie: u64, connection: &Connection) -> Option<ProcessRef> {
        let proc_root = &self.proc_root;
        let pids: Vec<u32> = procfs::pids(proc_root)
            .into_iter()
            .filter(|&pid| procfs::netns_inode(proc_root, pid) == Some(connection.netns))
            .collect();
        let representative = *pids.first()?;
        // By cookie through sock_diag (exact, but entering the namespace
        // needs CAP_SYS_ADMIN); else by addresses in the namespace's
        // /proc/PID/net/tcp{,6}, which only needs to read /proc.
        let by_cookie = sockdiag::dump_tcp(Some(&procfs::netns_file(proc_root, representative)))
            .ok()
            .and_then(|sockets| sockets.iter().find(|s| s.cookie == cookie).map(|s| s.inode));
        let inode = by_cookie.or_else(|| {
            procfs::tcp_socket_inode(
                proc_root,
                representative,
                connection.local,
                connection.remote,
            )
        })?;
        let pid = pids
            .into_iter()
            .find(|&pid| procfs::socket_inodes(proc_root, pid).contains(&inode))?;
        let owner = procfs::owner_of(proc_root, pid, OWNER_SOURCE_PROC, ROLE_UNKNOWN)?;
        ProcessRef::from_owner(&owner, OwnerSource::Proc, false)
    }
}
