//! The network namespaces that have processes, kept up to date from one
//! listing of /proc per refresh instead of a `stat` of every process's
//! `ns/net`: only processes not seen before are looked up. What
//! identifies a process between refreshes is its pid with the inode of its
//! /proc directory (`d_ino` from the listing, no extra call): procfs gives
//! a new process a new inode, so a reused pid is looked up again. Nothing
//! is held open: a namespace whose last process is gone simply drops out.

use std::{
    collections::{BTreeMap, HashMap},
    os::unix::fs::DirEntryExt,
    path::{Path, PathBuf},
};

use super::procfs;

/// Every this many refreshes, every process is looked up again: the only
/// way to see a long-running process that switched namespaces in place
/// (`setns`, `unshare` without a fork), which keeps its pid and inode.
pub const FULL_LOOKUP_EVERY: u32 = 12;

/// A process as the last refresh saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    /// Inode of /proc/PID: tells a reused pid from the process it had.
    dir_inode: u64,
    netns: u32,
    /// Looked up on two refreshes in a row with the same answer: a new
    /// process is checked once more, since `unshare -n` and container
    /// runtimes fork first and switch namespaces a moment later.
    settled: bool,
}

/// What a refresh changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refresh {
    /// `ns/net` looked up (new processes, unsettled ones, or all of them on
    /// a full refresh).
    pub looked_up: usize,
    /// Processes that were gone by the time they were looked up.
    pub vanished: usize,
    /// Namespaces with a first process / without any process any more.
    pub added: Vec<u32>,
    pub dropped: Vec<u32>,
}

/// The network namespaces of the processes under a /proc.
#[derive(Debug)]
pub struct NamespaceTracker {
    proc_root: PathBuf,
    pids: HashMap<u32, Seen>,
    /// Processes per namespace, pids ascending; rebuilt by `refresh`.
    namespaces: BTreeMap<u32, Vec<u32>>,
    refreshes: u32,
}

impl NamespaceTracker {
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Self {
            proc_root: proc_root.into(),
            pids: HashMap::new(),
            namespaces: BTreeMap::new(),
            refreshes: 0,
        }
    }

    pub fn proc_root(&self) -> &Path {
        &self.proc_root
    }

    /// Lists /proc once and looks up the processes it does not know yet.
    pub fn refresh(&mut self) -> Refresh {
        let full = self.refreshes.is_multiple_of(FULL_LOOKUP_EVERY);
        self.refreshes = self.refreshes.wrapping_add(1);
        let mut refresh = Refresh::default();
        let mut pids = HashMap::with_capacity(self.pids.len());
        for (pid, dir_inode) in listed_pids(&self.proc_root) {
            let known = self
                .pids
                .get(&pid)
                .filter(|seen| seen.dir_inode == dir_inode);
            if let Some(seen) = known.filter(|seen| seen.settled && !full) {
                pids.insert(pid, *seen);
                continue;
            }
            refresh.looked_up += 1;
            let Some(netns) = procfs::netns_inode(&self.proc_root, pid) else {
                // Exited since the listing, or not ours to see.
                refresh.vanished += 1;
                continue;
            };
            let settled = known.is_some_and(|seen| seen.netns == netns);
            pids.insert(
                pid,
                Seen {
                    dir_inode,
                    netns,
                    settled,
                },
            );
        }
        self.pids = pids;
        let mut namespaces: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for (&pid, seen) in &self.pids {
            namespaces.entry(seen.netns).or_default().push(pid);
        }
        for members in namespaces.values_mut() {
            members.sort_unstable();
        }
        refresh.added = namespaces
            .keys()
            .filter(|netns| !self.namespaces.contains_key(netns))
            .copied()
            .collect();
        refresh.dropped = self
            .namespaces
            .keys()
            .filter(|netns| !namespaces.contains_key(netns))
            .copied()
            .collect();
        self.namespaces = namespaces;
        refresh
    }

    /// Processes per namespace, as of the last refresh.
    pub fn namespaces(&self) -> &BTreeMap<u32, Vec<u32>> {
        &self.namespaces
    }

    /// `pid` was not in the namespace the tracker had for it (it exited, or
    /// switched): looked up again at the next refresh.
    pub fn forget(&mut self, pid: u32) {
        self.pids.remove(&pid);
    }
}

/// Numeric entries of /proc with their inodes.
fn listed_pids(proc_root: &Path) -> Vec<(u32, u64)> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            Some((entry.file_name().to_str()?.parse().ok()?, entry.ino()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// A /proc of directories `PID/ns/net`, each a hard link to a file
    /// standing for a namespace, so processes of one namespace share its
    /// inode as they do in procfs.
    struct FakeProc {
        root: PathBuf,
    }

    impl FakeProc {
        fn new(tag: &str) -> Self {
            let root = std::env::temp_dir()
                .join(format!("connmon-namespaces-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(root.join("proc")).expect("mkdir");
            std::fs::create_dir_all(root.join("namespaces")).expect("mkdir");
            std::fs::create_dir_all(root.join("exited")).expect("mkdir");
            Self { root }
        }

        fn proc(&self) -> PathBuf {
            self.root.join("proc")
        }

        /// The inode standing for namespace `name`, made on first use.
        fn namespace(&self, name: &str) -> u32 {
            let path = self.root.join("namespaces").join(name);
            if !path.exists() {
                std::fs::write(&path, name).expect("namespace file");
            }
            u32::try_from(std::fs::metadata(&path).expect("stat").ino()).expect("small inode")
        }

        fn start(&self, pid: u32, namespace: &str) {
            self.namespace(namespace);
            let dir = self.proc().join(pid.to_string()).join("ns");
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::hard_link(
                self.root.join("namespaces").join(namespace),
                dir.join("net"),
            )
            .expect("link");
        }

        /// Moves the process's directory aside rather than deleting it, so
        /// a pid started again cannot get the same directory inode back.
        fn exit(&self, pid: u32) {
            let aside = self.root.join("exited").join(format!(
                "{pid}-{}",
                std::fs::read_dir(self.root.join("exited"))
                    .expect("ls")
                    .count()
            ));
            std::fs::rename(self.proc().join(pid.to_string()), aside).expect("rename");
        }

        /// A process switching namespaces in place (`setns`): same pid,
        /// same directory.
        fn switch(&self, pid: u32, namespace: &str) {
            self.namespace(namespace);
            let net = self.proc().join(pid.to_string()).join("ns/net");
            std::fs::remove_file(&net).expect("rm");
            std::fs::hard_link(self.root.join("namespaces").join(namespace), net).expect("link");
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    fn members(tracker: &NamespaceTracker, netns: u32) -> Vec<u32> {
        tracker
            .namespaces()
            .get(&netns)
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn groups_processes_by_namespace_and_looks_up_only_new_ones() {
        let fake = FakeProc::new("group");
        fake.start(1, "host");
        fake.start(20, "host");
        fake.start(300, "pod");
        std::fs::write(fake.proc().join("self"), "not a pid").expect("write");
        let (host, pod) = (fake.namespace("host"), fake.namespace("pod"));
        let mut tracker = NamespaceTracker::new(fake.proc());
        let first = tracker.refresh();
        assert_eq!(first.looked_up, 3);
        assert_eq!(first.added, vec![host.min(pod), host.max(pod)]);
        assert_eq!(members(&tracker, host), vec![1, 20]);
        assert_eq!(members(&tracker, pod), vec![300]);
        // New processes are checked once more, then left alone.
        assert_eq!(tracker.refresh().looked_up, 3);
        let quiet = tracker.refresh();
        assert_eq!(quiet.looked_up, 0, "{quiet:?}");
        assert!(quiet.added.is_empty() && quiet.dropped.is_empty());
        fake.start(21, "host");
        assert_eq!(tracker.refresh().looked_up, 1);
        assert_eq!(members(&tracker, host), vec![1, 20, 21]);
    }

    #[test]
    fn a_namespace_created_after_start_is_there_at_the_next_refresh() {
        let fake = FakeProc::new("created");
        fake.start(1, "host");
        let mut tracker = NamespaceTracker::new(fake.proc());
        tracker.refresh();
        tracker.refresh();
        fake.start(4000, "new");
        let refresh = tracker.refresh();
        let new = fake.namespace("new");
        assert_eq!(refresh.added, vec![new]);
        assert_eq!(members(&tracker, new), vec![4000]);
    }

    #[test]
    fn a_namespace_whose_last_process_exited_is_dropped() {
        let fake = FakeProc::new("dropped");
        fake.start(1, "host");
        fake.start(50, "pod");
        fake.start(51, "pod");
        let mut tracker = NamespaceTracker::new(fake.proc());
        tracker.refresh();
        tracker.refresh();
        let pod = fake.namespace("pod");
        fake.exit(50);
        let one_left = tracker.refresh();
        assert!(one_left.dropped.is_empty());
        assert_eq!(members(&tracker, pod), vec![51]);
        fake.exit(51);
        let refresh = tracker.refresh();
        assert_eq!(refresh.dropped, vec![pod]);
        assert_eq!(refresh.looked_up, 0);
        assert!(!tracker.namespaces().contains_key(&pod));
        assert_eq!(tracker.pids.len(), 1, "nothing kept of the exited");
    }

    #[test]
    fn a_reused_pid_is_looked_up_again() {
        let fake = FakeProc::new("reused");
        fake.start(1, "host");
        fake.start(77, "host");
        let mut tracker = NamespaceTracker::new(fake.proc());
        tracker.refresh();
        tracker.refresh();
        fake.exit(77);
        fake.start(77, "pod");
        let refresh = tracker.refresh();
        let pod = fake.namespace("pod");
        assert_eq!(refresh.added, vec![pod]);
        assert_eq!(members(&tracker, pod), vec![77]);
        assert_eq!(members(&tracker, fake.namespace("host")), vec![1]);
    }

    #[test]
    fn a_process_that_switched_right_after_it_started_is_seen_on_the_next_refresh() {
        let fake = FakeProc::new("unshare");
        fake.start(1, "host");
        let mut tracker = NamespaceTracker::new(fake.proc());
        tracker.refresh();
        tracker.refresh();
        // Forked in the host's namespace, seen there, then unshared.
        fake.start(90, "host");
        tracker.refresh();
        fake.switch(90, "container");
        let refresh = tracker.refresh();
        let container = fake.namespace("container");
        assert_eq!(refresh.added, vec![container]);
        assert_eq!(members(&tracker, container), vec![90]);
    }

    #[test]
    fn a_settled_process_that_switched_is_seen_at_the_next_full_lookup() {
        let fake = FakeProc::new("setns");
        fake.start(1, "host");
        fake.start(5, "host");
        let mut tracker = NamespaceTracker::new(fake.proc());
        for _ in 0..3 {
            tracker.refresh();
        }
        fake.switch(5, "other");
        let other = fake.namespace("other");
        let mut refreshes = 0;
        while !tracker.namespaces().contains_key(&other) {
            tracker.refresh();
            refreshes += 1;
            assert!(refreshes <= FULL_LOOKUP_EVERY, "never seen");
        }
        // Or at once, when a scan found the namespace was not the pid's.
        fake.switch(5, "host");
        tracker.forget(5);
        tracker.refresh();
        assert!(!tracker.namespaces().contains_key(&other));
    }

    #[test]
    fn a_process_gone_between_listing_and_lookup_is_skipped() {
        let fake = FakeProc::new("vanished");
        fake.start(1, "host");
        // Listed, but its ns/net is gone (the process exited meanwhile).
        std::fs::create_dir_all(fake.proc().join("66")).expect("mkdir");
        let mut tracker = NamespaceTracker::new(fake.proc());
        let refresh = tracker.refresh();
        assert_eq!(refresh.vanished, 1);
        assert_eq!(tracker.namespaces().len(), 1);
        assert!(NamespaceTracker::new(fake.root.join("missing")).refresh() == Refresh::default());
    }
}
