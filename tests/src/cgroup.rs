//! A container-like cgroup v2 path for a test process, removed on drop.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// `<cgroup2 root>/<relative>`, created with its parents; the directories
/// this guard created are removed (deepest first) when it drops, after the
/// processes in it have exited.
pub struct Cgroup {
    created: Vec<PathBuf>,
    path: PathBuf,
}

impl Cgroup {
    pub fn create(relative: &str) -> Result<Self> {
        let mounts = std::fs::read_to_string("/proc/self/mounts")?;
        let root = mounts
            .lines()
            .find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
            })
            .context("no cgroup2 mount on this machine")?;
        let mut created = Vec::new();
        let mut path = root;
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            path.push(part);
            if !path.exists() {
                std::fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
                created.push(path.clone());
            }
        }
        Ok(Self { created, path })
    }

    /// Makes `command`'s process join the cgroup before it runs, so the
    /// sockets it creates belong to the cgroup from the start (the kernel
    /// records a socket's cgroup when the socket is created).
    pub fn spawn_inside(&self, command: &mut std::process::Command) -> Result<()> {
        use std::os::unix::process::CommandExt;
        let procs = std::ffi::CString::new(
            self.path
                .join("cgroup.procs")
                .to_string_lossy()
                .into_owned(),
        )?;
        // SAFETY: between fork and exec the closure only makes
        // async-signal-safe calls (open, write, close) on memory prepared
        // before the fork.
        unsafe {
            command.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0": the writing process itself.
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// Moves a process into the cgroup.
    pub fn add(&self, pid: u32) -> Result<()> {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving {pid} into {}", self.path.display()))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}
