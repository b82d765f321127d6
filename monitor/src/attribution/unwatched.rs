//! Owners of unwatched sockets that retransmit.
//!
//! The kernel programs keep no state for sockets on unwatched ports (their
//! hooks stay at a protocol and port check); a retransmit of one is counted
//! in the kernel under the socket's cookie, with its cgroup and addresses.
//! This module turns those per-socket counts into per-owner increments for
//! `connmon_retransmits_total`: it names each socket's process lazily,
//! through sock_diag (cookie -> inode) and `/proc/PID/fd` (inode -> pid),
//! searching the socket's own cgroup first. A socket is looked up in the
//! first read that sees it (its owner may not live past a few seconds of
//! retransmits: a client that gives up exits), then again `SCAN_INTERVAL`
//! later if that failed, `ATTEMPTS` times in all; each socket keeps its own
//! schedule, so a lookup for other sockets never delays a new one's. A
//! socket gone before it could be named counts as process `unknown` (its
//! container still comes from the cgroup the kernel recorded).

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use monitor_common::counters::UnwatchedRetransmits;

use super::procfs;
use crate::{event::Role, sockdiag};

/// How long after a failed lookup a socket is looked up again: each
/// lookup reads `/proc` (the processes of one cgroup, or of one network
/// namespace). One read of the map makes at most one lookup, for every
/// socket due.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(10);

/// Lookups after which an unnamed socket counts as `unknown`.
const ATTEMPTS: u8 = 2;

/// Sockets remembered at most (the kernel map holds 16,384).
const CAPACITY: usize = 65_536;

/// Who owns a retransmitting socket, as far as could be found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    /// The process name, `unknown` when it could not be found.
    pub comm: String,
    pub role: Role,
}

/// Retransmits to add to one owner's series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerIncrement {
    pub comm: String,
    pub cgroup_id: u64,
    /// `RETRANSMIT_*`
    pub kind: u8,
    pub role: Role,
    pub count: u64,
}

#[derive(Debug)]
struct Tracked {
    /// Counts already handed out as increments.
    counted: [u32; 4],
    owner: Option<Named>,
    attempts: u8,
    /// When this socket was last looked up (`None`: never, so due now).
    last_lookup: Option<Instant>,
    cgroup_id: u64,
}

impl Tracked {
    /// Whether an unnamed socket is to be looked up at `now`.
    fn due(&self, now: Instant) -> bool {
        self.owner.is_none()
            && self
                .last_lookup
                .is_none_or(|last| now.saturating_duration_since(last) >= SCAN_INTERVAL)
    }
}

/// Per-socket counts in, per-owner increments out.
#[derive(Debug, Default)]
pub struct UnwatchedRetransmitters {
    sockets: HashMap<u64, Tracked>,
}

impl UnwatchedRetransmitters {
    /// Accounts one read of the kernel map. `resolve` names the sockets
    /// given (called at most once per read, only with sockets due: unnamed
    /// and new, or last looked up `SCAN_INTERVAL` ago); a socket it leaves
    /// out stays unnamed.
    pub fn account(
        &mut self,
        now: Instant,
        entries: &[(u64, UnwatchedRetransmits)],
        resolve: impl FnOnce(&[(u64, UnwatchedRetransmits)]) -> HashMap<u64, Named>,
    ) -> Vec<OwnerIncrement> {
        let mut increments = Vec::new();
        let present: HashSet<u64> = entries.iter().map(|(cookie, _)| *cookie).collect();
        // Sockets the kernel map no longer has (evicted): hand out what was
        // last seen of the unnamed ones rather than lose it.
        self.sockets.retain(|cookie, tracked| {
            let keep = present.contains(cookie);
            if !keep && tracked.owner.is_none() && tracked.counted != [0; 4] {
                // Counted was never handed out for unnamed sockets: see below.
                push_increments(
                    &mut increments,
                    &unknown(),
                    tracked.cgroup_id,
                    [0; 4],
                    tracked.counted,
                );
            }
            keep
        });
        // Due per socket, not by one clock for all: a lookup made for other
        // sockets must not push a new socket's first lookup past its
        // owner's life.
        let pending: Vec<(u64, UnwatchedRetransmits)> = entries
            .iter()
            .filter(|(cookie, _)| match self.sockets.get(cookie) {
                Some(tracked) => tracked.due(now),
                // Past capacity a new socket is counted unnamed anyway.
                None => self.sockets.len() < CAPACITY,
            })
            .copied()
            .collect();
        let looked_up: HashSet<u64> = pending.iter().map(|(cookie, _)| *cookie).collect();
        let named = if pending.is_empty() {
            HashMap::new()
        } else {
            resolve(&pending)
        };
        for (cookie, counts) in entries {
            if !self.sockets.contains_key(cookie) && self.sockets.len() >= CAPACITY {
                // Over capacity: count without a name rather than not at all.
                push_increments(
                    &mut increments,
                    &unknown(),
                    counts.cgroup_id,
                    [0; 4],
                    counts.by_kind,
                );
                continue;
            }
            let tracked = self.sockets.entry(*cookie).or_insert(Tracked {
                counted: [0; 4],
                owner: None,
                attempts: 0,
                last_lookup: None,
                cgroup_id: counts.cgroup_id,
            });
            if tracked.owner.is_none() && looked_up.contains(cookie) {
                tracked.attempts = tracked.attempts.saturating_add(1);
                tracked.last_lookup = Some(now);
                tracked.owner = named
                    .get(cookie)
                    .cloned()
                    .or_else(|| (tracked.attempts >= ATTEMPTS).then(unknown));
                if tracked.owner.is_some() {
                    // From zero: nothing was handed out while unnamed.
                    tracked.counted = [0; 4];
                }
            }
            match &tracked.owner {
                Some(owner) => {
                    push_increments(
                        &mut increments,
                        owner,
                        counts.cgroup_id,
                        tracked.counted,
                        counts.by_kind,
                    );
                    tracked.counted = counts.by_kind;
                }
                // Unnamed: remember the counts (handed out when named, or
                // as `unknown` if the socket vanishes first).
                None => tracked.counted = counts.by_kind,
            }
        }
        increments
    }

    /// Sockets remembered.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }
}

fn unknown() -> Named {
    Named {
        comm: "unknown".into(),
        role: Role::Unknown,
    }
}

fn push_increments(
    increments: &mut Vec<OwnerIncrement>,
    owner: &Named,
    cgroup_id: u64,
    before: [u32; 4],
    now: [u32; 4],
) {
    for (kind, (now, before)) in now.iter().zip(before).enumerate() {
        let count = u64::from(now.wrapping_sub(before));
        if count == 0 {
            continue;
        }
        increments.push(OwnerIncrement {
            comm: owner.comm.clone(),
            cgroup_id,
            kind: kind as u8,
            role: owner.role,
            count,
        });
    }
}

/// Names sockets from /proc and sock_diag: per network namespace one
/// sock_diag dump (cookie -> inode; without CAP_SYS_ADMIN to enter the
/// namespace, the namespace's `/proc/PID/net/tcp` by addresses), then the
/// open sockets of the processes in the socket's cgroup, or of every
/// process in the namespace when the cgroup is unknown.
pub fn resolve_from_proc(
    proc_root: &Path,
    pending: &[(u64, UnwatchedRetransmits)],
) -> HashMap<u64, Named> {
    let mut named = HashMap::new();
    let mut by_netns: HashMap<u32, Vec<&(u64, UnwatchedRetransmits)>> = HashMap::new();
    for entry in pending {
        by_netns.entry(entry.1.tuple.netns).or_default().push(entry);
    }
    let mut pids_by_netns: HashMap<u32, Vec<u32>> = HashMap::new();
    for pid in procfs::pids(proc_root) {
        if let Some(netns) = procfs::netns_inode(proc_root, pid)
            && by_netns.contains_key(&netns)
        {
            pids_by_netns.entry(netns).or_default().push(pid);
        }
    }
    let mut cgroup_pids: HashMap<u64, Vec<u32>> = HashMap::new();
    for (netns, sockets) in by_netns {
        let Some(pids) = pids_by_netns.get(&netns) else {
            continue;
        };
        let Some(&representative) = pids.first() else {
            continue;
        };
        let netns_file = procfs::netns_file(proc_root, representative);
        let dumped = sockdiag::in_netns(Some(&netns_file), || {
            Ok((sockdiag::dump_tcp(None)?, ephemeral_ports()))
        });
        let (inodes, ephemeral): (HashMap<u64, u32>, _) = match dumped {
            Ok((sockets, ephemeral)) => (
                sockets.iter().map(|s| (s.cookie, s.inode)).collect(),
                ephemeral,
            ),
            Err(_) => (HashMap::new(), None),
        };
        for (cookie, counts) in sockets {
            let (local, remote) = (counts.tuple.local(), counts.tuple.remote());
            let inode = inodes
                .get(cookie)
                .copied()
                .or_else(|| procfs::tcp_socket_inode(proc_root, representative, local, remote));
            let Some(inode) = inode.filter(|&inode| inode != 0) else {
                continue;
            };
            let in_cgroup = cgroup_pids
                .entry(counts.cgroup_id)
                .or_insert_with(|| cgroup_members(counts.cgroup_id));
            let owner = in_cgroup
                .iter()
                .chain(pids.iter())
                .find(|&&pid| procfs::socket_inodes(proc_root, pid).contains(&inode));
            let Some(&pid) = owner else {
                continue;
            };
            let Some(comm) = procfs::comm(proc_root, pid) else {
                continue;
            };
            named.insert(
                *cookie,
                Named {
                    comm,
                    role: role_by_ports(local.port(), remote.port(), ephemeral),
                },
            );
        }
    }
    named
}

/// The processes of cgroup v2 `id` (empty when unknown).
fn cgroup_members(id: u64) -> Vec<u32> {
    if id == 0 {
        return Vec::new();
    }
    let Some(root) = procfs::cgroup2_root() else {
        return Vec::new();
    };
    let Some(path) = procfs::cgroup_path_by_id(id) else {
        return Vec::new();
    };
    let procs: PathBuf = root.join(path.trim_start_matches('/')).join("cgroup.procs");
    std::fs::read_to_string(procs)
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// This network namespace's ephemeral port range.
fn ephemeral_ports() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    Some((parts.next()?.ok()?, parts.next()?.ok()?))
}

/// Which end opened the connection, from which port is ephemeral: the
/// kernel keeps no role for unwatched sockets.
pub fn role_by_ports(local: u16, remote: u16, ephemeral: Option<(u16, u16)>) -> Role {
    let Some((low, high)) = ephemeral else {
        return Role::Unknown;
    };
    let is_ephemeral = |port: u16| (low..=high).contains(&port);
    match (is_ephemeral(local), is_ephemeral(remote)) {
        (true, false) => Role::Client,
        (false, true) => Role::Server,
        _ => Role::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(timeouts: u32, fast: u32) -> UnwatchedRetransmits {
        UnwatchedRetransmits {
            by_kind: [0, timeouts, fast, 0],
            cgroup_id: 7,
            ..UnwatchedRetransmits::default()
        }
    }

    fn app() -> Named {
        Named {
            comm: "app".into(),
            role: Role::Client,
        }
    }

    #[test]
    fn a_named_socket_hands_out_only_what_is_new() {
        let mut table = UnwatchedRetransmitters::default();
        let t0 = Instant::now();
        let first = table.account(t0, &[(1, counts(2, 1))], |pending| {
            assert_eq!(pending.len(), 1);
            HashMap::from([(1, app())])
        });
        assert_eq!(first.iter().map(|i| i.count).sum::<u64>(), 3);
        assert!(first.iter().all(|i| i.comm == "app" && i.cgroup_id == 7));
        let second = table.account(t0, &[(1, counts(5, 1))], |_| {
            panic!("a named socket is not looked up again")
        });
        assert_eq!(
            second,
            vec![OwnerIncrement {
                comm: "app".into(),
                cgroup_id: 7,
                kind: 1,
                role: Role::Client,
                count: 3,
            }]
        );
    }

    #[test]
    fn lookups_are_rate_bounded_and_counts_wait_for_a_name() {
        let mut table = UnwatchedRetransmitters::default();
        let t0 = Instant::now();
        assert!(
            table
                .account(t0, &[(1, counts(1, 0))], |_| HashMap::new())
                .is_empty()
        );
        // Within the interval: no lookup, nothing handed out yet.
        let soon = t0 + SCAN_INTERVAL / 2;
        assert!(
            table
                .account(soon, &[(1, counts(2, 0))], |_| panic!("rate-bounded"))
                .is_empty()
        );
        let later = t0 + SCAN_INTERVAL;
        let named = table.account(later, &[(1, counts(4, 0))], |_| HashMap::from([(1, app())]));
        assert_eq!(named.iter().map(|i| i.count).sum::<u64>(), 4, "{named:?}");
    }

    #[test]
    fn a_socket_that_cannot_be_named_counts_as_unknown() {
        let mut table = UnwatchedRetransmitters::default();
        let t0 = Instant::now();
        let mut handed = Vec::new();
        for round in 0..u32::from(ATTEMPTS) {
            handed.extend(
                table.account(t0 + SCAN_INTERVAL * round, &[(9, counts(3, 0))], |_| {
                    HashMap::new()
                }),
            );
        }
        assert_eq!(handed.len(), 1, "{handed:?}");
        assert_eq!(handed[0].comm, "unknown");
        assert_eq!(handed[0].count, 3);
    }

    #[test]
    fn an_unnamed_socket_that_vanishes_is_counted_as_unknown() {
        let mut table = UnwatchedRetransmitters::default();
        let t0 = Instant::now();
        assert!(
            table
                .account(t0, &[(4, counts(0, 2))], |_| HashMap::new())
                .is_empty()
        );
        let gone = table.account(t0 + SCAN_INTERVAL, &[], |_| panic!("nothing pending"));
        assert_eq!(gone.len(), 1);
        assert_eq!(
            (gone[0].comm.as_str(), gone[0].count, gone[0].kind),
            ("unknown", 2, 2)
        );
        assert!(table.is_empty());
    }

    /// Modelled on the kernel test that flaked: one socket whose owner
    /// is never found (so it keeps being looked up), and a client that
    /// starts retransmitting just after that socket's first lookup, gives
    /// up 6 s later and exits (tcp_retries2 = 4). Reads come every 5 s,
    /// as in the daemon.
    #[test]
    fn a_new_socket_is_looked_up_while_its_owner_lives_despite_lookups_for_others() {
        const READ: Duration = Duration::from_secs(5);
        let mut table = UnwatchedRetransmitters::default();
        let t0 = Instant::now();
        // The late client's owner lives from t0 + 1 s to t0 + 7 s.
        let alive = |at: Instant| at > t0 && at < t0 + Duration::from_secs(7);
        let reads: [(Instant, Vec<(u64, UnwatchedRetransmits)>); 5] = [
            (t0, vec![(1, counts(1, 0))]),
            (t0 + READ, vec![(1, counts(2, 0)), (2, counts(2, 0))]),
            (t0 + READ * 2, vec![(1, counts(3, 0)), (2, counts(4, 0))]),
            (t0 + READ * 3, vec![(1, counts(3, 0)), (2, counts(4, 0))]),
            (t0 + READ * 4, vec![(1, counts(3, 0)), (2, counts(4, 0))]),
        ];
        let mut handed = Vec::new();
        for (at, entries) in reads {
            handed.extend(table.account(at, &entries, |pending| {
                pending
                    .iter()
                    .filter(|(cookie, _)| *cookie == 2 && alive(at))
                    .map(|(cookie, _)| (*cookie, app()))
                    .collect()
            }));
        }
        let total = |comm: &str| {
            handed
                .iter()
                .filter(|i| i.comm == comm)
                .map(|i| i.count)
                .sum::<u64>()
        };
        assert_eq!(total("app"), 4, "the live owner, named: {handed:?}");
        // Socket 1 alone ends as `unknown`, once its attempts are spent.
        assert_eq!(total("unknown"), 3, "{handed:?}");
    }

    #[test]
    fn a_socket_is_looked_up_again_only_after_the_interval() {
        let mut table = UnwatchedRetransmitters::default();
        let t0 = Instant::now();
        let mut lookups = Vec::new();
        for at in [0, 5, 10, 15, 20, 25].map(|s| t0 + Duration::from_secs(s)) {
            table.account(at, &[(3, counts(1, 0))], |pending| {
                lookups.push((at - t0, pending.len()));
                HashMap::new()
            });
        }
        assert_eq!(
            lookups,
            vec![(Duration::ZERO, 1), (SCAN_INTERVAL, 1)],
            "at once, then once more {SCAN_INTERVAL:?} later, then given up"
        );
    }

    #[test]
    fn role_comes_from_which_port_is_ephemeral() {
        let range = Some((32768, 60999));
        assert_eq!(role_by_ports(40000, 5432, range), Role::Client);
        assert_eq!(role_by_ports(5432, 40000, range), Role::Server);
        assert_eq!(role_by_ports(40000, 40001, range), Role::Unknown);
        assert_eq!(role_by_ports(40000, 5432, None), Role::Unknown);
    }
}
