//! Attribution: from a socket's recorded owner to what on-call acts on:
//! process, executable and cgroup. Looked up in /proc only when a finding is
//! reported (rare), and cached per process identity (pid + start time), so a
//! reused pid never inherits another process's details.

pub mod container;
pub mod existing;
pub mod namespaces;
pub mod pods;
pub mod procfs;
pub mod unwatched;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::event::ProcessRef;

/// What /proc adds to a socket owner.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProcessDetails {
    /// Executable path (`/proc/PID/exe`).
    pub exe: Option<String>,
    /// cgroup v2 path, or the v1 `name=systemd`/first hierarchy's path.
    pub cgroup: Option<String>,
    /// Container, pod and unit, from the cgroup path.
    pub workload: container::Workload,
}

/// Nanoseconds per /proc clock tick.
pub fn tick_ns() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    1_000_000_000 / ticks_per_second
}

/// Caches `ProcessDetails` by (pid, start time).
pub struct Attributor {
    proc_root: PathBuf,
    cache: HashMap<(u32, u64), ProcessDetails>,
    capacity: usize,
}

impl Attributor {
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Self {
            proc_root: proc_root.into(),
            cache: HashMap::new(),
            capacity: 4096,
        }
    }

    /// Details for `owner`; empty when the process is gone or its pid now
    /// belongs to a different process.
    pub fn details(&mut self, owner: &ProcessRef) -> ProcessDetails {
        let key = (owner.pid, owner.start_boottime_ns);
        if let Some(details) = self.cache.get(&key) {
            return details.clone();
        }
        let details = self.read(owner);
        if self.cache.len() >= self.capacity {
            self.cache.clear();
        }
        self.cache.insert(key, details.clone());
        details
    }

    fn read(&self, owner: &ProcessRef) -> ProcessDetails {
        let dir = self.proc_root.join(owner.pid.to_string());
        if !same_process(&dir, owner.start_boottime_ns) {
            return ProcessDetails::default();
        }
        let cgroup = std::fs::read_to_string(dir.join("cgroup"))
            .ok()
            .and_then(|text| cgroup_path(&text));
        ProcessDetails {
            exe: std::fs::read_link(dir.join("exe"))
                .ok()
                .map(|path| path.to_string_lossy().into_owned()),
            workload: cgroup
                .as_deref()
                .map(container::workload)
                .unwrap_or_default(),
            cgroup,
        }
    }
}

/// Container labels by cgroup id, for owners known only by their cgroup id
/// (metrics count per owner without a pid to look up): each cgroup's path is
/// read once from the cgroup tree, then cached.
#[derive(Default)]
pub struct ContainerByCgroup {
    short_ids: HashMap<u64, String>,
}

impl ContainerByCgroup {
    /// The container's short id (`container::short_id`); empty for cgroup 0
    /// (unknown), a cgroup gone or one outside any container.
    pub fn short_id(&mut self, cgroup_id: u64) -> String {
        if cgroup_id == 0 {
            return String::new();
        }
        self.short_ids
            .entry(cgroup_id)
            .or_insert_with(|| {
                procfs::cgroup_path_by_id(cgroup_id)
                    .and_then(|path| container::workload(&path).container_id)
                    .map(|id| container::short_id(&id))
                    .unwrap_or_default()
            })
            .clone()
    }
}

/// Whether /proc/PID is the process that started at `start_boottime_ns`
/// (`task_struct.start_boottime`). /proc reports start time in clock ticks;
/// a start time of 0 (unknown) accepts any.
fn same_process(dir: &Path, start_boottime_ns: u64) -> bool {
    if start_boottime_ns == 0 {
        return dir.exists();
    }
    let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
        return false;
    };
    let Some(start_ticks) = start_time_ticks(&stat) else {
        return false;
    };
    (start_boottime_ns / tick_ns()).abs_diff(start_ticks) <= 1
}

/// Field 22 of /proc/PID/stat (after the parenthesised comm, which may
/// itself contain spaces and parentheses).
pub fn start_time_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Fields after comm start at field 3 (state); starttime is field 22.
    after_comm.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The cgroup path from /proc/PID/cgroup: the v2 line (`0::/path`), else the
/// v1 `name=systemd` line, else the first line.
pub fn cgroup_path(text: &str) -> Option<String> {
    let entries: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some((controllers, path))
        })
        .collect();
    entries
        .iter()
        .find(|(controllers, _)| controllers.is_empty())
        .or_else(|| {
            entries
                .iter()
                .find(|(controllers, _)| *controllers == "name=systemd")
        })
        .or_else(|| entries.first())
        .map(|(_, path)| (*path).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::OwnerSource;

    #[test]
    fn parses_start_time_even_with_odd_comms() {
        let stat = "4242 (my (odd) proc) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 10";
        assert_eq!(start_time_ticks(stat), Some(123456));
        assert_eq!(start_time_ticks("garbage"), None);
    }

    #[test]
    fn picks_the_unified_cgroup_then_systemd() {
        assert_eq!(
            cgroup_path("0::/system.slice/redis-server.service\n").as_deref(),
            Some("/system.slice/redis-server.service")
        );
        let v1 = "12:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n";
        assert_eq!(cgroup_path(v1).as_deref(), Some("/docker/abc"));
        assert_eq!(cgroup_path("").as_deref(), None);
    }

    #[test]
    fn reads_this_process_and_refuses_a_reused_pid() {
        let mut attributor = Attributor::new("/proc");
        let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
        let ticks = start_time_ticks(&stat).expect("start time");
        let tick_ns = tick_ns();
        let me = ProcessRef {
            pid: std::process::id(),
            tid: std::process::id(),
            comm: "test".into(),
            cgroup_id: 0,
            start_boottime_ns: ticks * tick_ns,
            source: OwnerSource::Send,
            shared: false,
        };
        let details = attributor.details(&me);
        assert!(
            details.exe.is_some() && details.cgroup.is_some(),
            "{details:?}"
        );
        let impostor = ProcessRef {
            start_boottime_ns: (ticks + 1000) * tick_ns,
            ..me
        };
        assert_eq!(attributor.details(&impostor), ProcessDetails::default());
    }
}
