//! What the benchmark needs from the machine, and guards that give it back.

use std::{
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use connmon_tests::cmd;

use crate::setup::Project;

/// Debian packages of the peers and workloads (on top of `cargo xtask
/// setup`'s): bcc's tools, bpftrace, redis-benchmark, iperf3, and the kernel
/// headers bcc compiles against.
const PACKAGES: &[&str] = &[
    "bpfcc-tools",
    "bpftrace",
    "redis-tools",
    "iperf3",
    "linux-headers-amd64",
];

/// Ctrl-C and SIGTERM set a flag; the benchmark checks it between steps and
/// returns an error, so every guard on the way out runs.
pub mod interrupt {
    use std::sync::atomic::{AtomicBool, Ordering};

    static INTERRUPTED: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_signal(_: libc::c_int) {
        INTERRUPTED.store(true, Ordering::SeqCst);
    }

    pub fn install() {
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: the handler only stores to an atomic, which is
            // async-signal-safe.
            unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
        }
    }

    pub fn check() -> anyhow::Result<()> {
        if INTERRUPTED.load(Ordering::SeqCst) {
            anyhow::bail!("interrupted; cleaning up");
        }
        Ok(())
    }
}

/// Sleeps in short steps, returning early with an error on Ctrl-C.
pub fn pause(duration: std::time::Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + duration;
    while std::time::Instant::now() < deadline {
        interrupt::check()?;
        std::thread::sleep(std::time::Duration::from_millis(20).min(duration));
    }
    interrupt::check()
}

/// The 1-minute load average: other work on the machine is noise.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

pub fn ensure_packages() -> Result<()> {
    crate::setup::ensure_packages(PACKAGES, "bench")
}

/// A kernel source tree bcc can compile against. Debian has no headers for
/// this kernel, and splits the newest it has into an arch tree and a common
/// tree; bcc wants one tree, so both are merged into `.cache/` once.
pub fn bcc_kernel_source(project: &Project) -> Result<PathBuf> {
    let mut arch_trees: Vec<PathBuf> = std::fs::read_dir("/usr/src")?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("linux-headers-"))
                && path.to_string_lossy().ends_with("-amd64")
        })
        .collect();
    arch_trees.sort();
    let arch = arch_trees
        .pop()
        .context("no /usr/src/linux-headers-*-amd64 (linux-headers-amd64 not installed?)")?;
    let arch_name = arch
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .context("headers tree name")?;
    let common = PathBuf::from(format!(
        "/usr/src/{}-common",
        arch_name.trim_end_matches("-amd64")
    ));
    let tree = project.cache().join("bench").join(&arch_name);
    if tree.join("include/linux/kconfig.h").is_file() && tree.join(".config").is_file() {
        return Ok(tree);
    }
    eprintln!(
        "bench: merging {} and {} for bcc",
        common.display(),
        arch.display()
    );
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(&tree)?;
    for source in [&common, &arch] {
        let from = format!("{}/.", source.display());
        cmd::run("cp", &["-a", &from, &tree.to_string_lossy()])?;
    }
    Ok(tree)
}

/// A private directory for scripts and peers' output, removed on drop.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn create() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("connmon-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// tracefs at /sys/kernel/tracing, mounted for the run when the machine has
/// none (a fresh host often has neither tracefs nor debugfs mounted) and
/// unmounted on drop. connmon needs none (it attaches BTF tracepoints), but
/// bcc and bpftrace find tracepoints there; without it bcc's `tcpretrans`
/// falls back to kprobes, which this kernel lacks.
pub struct Tracefs {
    mounted_here: bool,
}

const TRACEFS: &str = "/sys/kernel/tracing";

impl Tracefs {
    pub fn ensure() -> Result<Self> {
        if Path::new(TRACEFS).join("events").is_dir() {
            return Ok(Self {
                mounted_here: false,
            });
        }
        cmd::run("mount", &["-t", "tracefs", "nodev", TRACEFS])
            .context("mounting tracefs for the peers (bcc, bpftrace)")?;
        Ok(Self { mounted_here: true })
    }
}

impl Drop for Tracefs {
    fn drop(&mut self) {
        if self.mounted_here {
            let _ = Command::new("umount").arg(TRACEFS).output();
        }
    }
}

/// A host sysctl set for the run, restored on drop.
pub struct Sysctl {
    key: String,
    old: String,
}

impl Sysctl {
    pub fn set(key: &str, value: &str) -> Result<Self> {
        let old = cmd::stdout("sysctl", &["-n", key])?.trim().to_string();
        cmd::run("sysctl", &["-qw", &format!("{key}={value}")])?;
        Ok(Self {
            key: key.to_string(),
            old,
        })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = Command::new("sysctl")
            .args(["-qw", &format!("{}={}", self.key, self.old)])
            .output();
    }
}

/// Runs `work` on a thread that has entered network namespace `name`:
/// sockets it creates live in that namespace and stay usable anywhere.
pub fn in_netns<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = Path::new("/run/netns").join(name);
    let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd; it changes only this thread,
        // which exits when `work` is done.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        work()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
}
