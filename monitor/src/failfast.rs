//! Opt-in fail-fast: when a storm on an idle connection is confirmed, abort
//! the socket (sock_diag `SOCK_DESTROY`) so the application gets an error
//! now and reconnects, instead of hanging until the kernel gives up.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{attribution::procfs, detect::Storm, sockdiag};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FailFastMode {
    /// Report only (the default).
    #[default]
    Off,
    /// Log and report what would be aborted, abort nothing.
    DryRun,
    /// Abort the socket of every confirmed storm.
    On,
}

/// What fail-fast did for one storm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Abort {
    pub storm_id: u64,
    pub dry_run: bool,
    /// `aborted`, `would_abort` or `failed`.
    pub result: &'static str,
    pub error: Option<String>,
}

pub struct FailFast {
    mode: FailFastMode,
    proc_root: PathBuf,
    /// The records' cookies are kernel socket addresses, not sock_diag
    /// cookies (Linux 5.10): the socket is matched by its addresses and
    /// ports in its namespace alone.
    cookies_are_addresses: bool,
}

impl FailFast {
    pub fn new(mode: FailFastMode, proc_root: impl Into<PathBuf>) -> Self {
        Self {
            mode,
            proc_root: proc_root.into(),
            cookies_are_addresses: false,
        }
    }

    /// See `cookies_are_addresses`.
    pub fn with_cookies_as_addresses(mut self, yes: bool) -> Self {
        self.cookies_are_addresses = yes;
        self
    }

    pub fn is_enabled(&self) -> bool {
        self.mode != FailFastMode::Off
    }

    /// Aborts (or, in dry-run, names) the storm's socket.
    pub fn act(&self, storm: &Storm) -> Option<Abort> {
        let (local, remote) = (storm.connection.local, storm.connection.remote);
        match self.mode {
            FailFastMode::Off => None,
            FailFastMode::DryRun => {
                info!(storm_id = storm.id, %local, %remote, "fail-fast dry run: would abort this socket");
                Some(Abort {
                    storm_id: storm.id,
                    dry_run: true,
                    result: "would_abort",
                    error: None,
                })
            }
            FailFastMode::On => {
                let result = self
                    .netns_file(storm)
                    .ok_or_else(|| {
                        std::io::Error::other(format!(
                            "no process left in network namespace {}",
                            storm.connection.netns
                        ))
                    })
                    .and_then(|netns| {
                        let cookie = if self.cookies_are_addresses {
                            sockdiag::ANY_COOKIE
                        } else {
                            storm.cookie
                        };
                        sockdiag::destroy(Some(&netns), cookie, local, remote)
                    });
                Some(match result {
                    Ok(()) => {
                        info!(storm_id = storm.id, %local, %remote, "fail-fast: aborted the socket");
                        Abort {
                            storm_id: storm.id,
                            dry_run: false,
                            result: "aborted",
                            error: None,
                        }
                    }
                    Err(error) => {
                        warn!(storm_id = storm.id, %local, %remote, %error, "fail-fast: could not abort the socket");
                        Abort {
                            storm_id: storm.id,
                            dry_run: false,
                            result: "failed",
                            error: Some(error.to_string()),
                        }
                    }
                })
            }
        }
    }

    /// A namespace file for the socket's network namespace: the owner's, or
    /// any process's that lives there.
    fn netns_file(&self, storm: &Storm) -> Option<PathBuf> {
        let netns = storm.connection.netns;
        let root: &Path = &self.proc_root;
        if let Some(owner) = &storm.owner
            && procfs::netns_inode(root, owner.pid) == Some(netns)
        {
            return Some(procfs::netns_file(root, owner.pid));
        }
        procfs::pids(root)
            .into_iter()
            .find(|&pid| procfs::netns_inode(root, pid) == Some(netns))
            .map(|pid| procfs::netns_file(root, pid))
    }
}
