//! Which capabilities connmon has, checked before it touches the kernel, so
//! a missing one is named with what it is for (instead of a bare EPERM).

/// Capability numbers (include/uapi/linux/capability.h).
pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// A capability and what connmon needs it for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    pub cap: u32,
    pub name: &'static str,
    pub purpose: &'static str,
    /// Without it connmon cannot run; otherwise a capability degrades.
    pub required: bool,
}

/// What `run` and `trace` need. The deployment manifests grant exactly the
/// required ones plus CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH
/// (docs/deploy.md); the rest are opt-in.
pub const NEEDS: &[Need] = &[
    Need {
        cap: CAP_BPF,
        name: "CAP_BPF",
        purpose: "load the BPF programs and maps",
        required: true,
    },
    Need {
        cap: CAP_PERFMON,
        name: "CAP_PERFMON",
        purpose: "attach tracepoints and read kernel socket state",
        required: true,
    },
    Need {
        cap: CAP_SYS_PTRACE,
        name: "CAP_SYS_PTRACE",
        purpose: "read other users' /proc/PID/fd links, ns/net and exe (owners of connections older than connmon, executables)",
        required: false,
    },
    Need {
        cap: CAP_DAC_READ_SEARCH,
        name: "CAP_DAC_READ_SEARCH",
        purpose: "list other users' /proc/PID/fd directories (owners of connections older than connmon)",
        required: false,
    },
    Need {
        cap: CAP_SYS_ADMIN,
        name: "CAP_SYS_ADMIN",
        purpose: "enter other network namespaces (setns) for sock_diag (connections found at start-up, the at-risk audit connmon_idle_connections_at_risk, --fail-fast there) and turn on BPF run-time statistics (connmon_bpf_program_run_seconds_total; or sysctl kernel.bpf_stats_enabled=1)",
        required: false,
    },
    Need {
        cap: CAP_NET_ADMIN,
        name: "CAP_NET_ADMIN",
        purpose: "abort sockets through sock_diag SOCK_DESTROY (--fail-fast)",
        required: false,
    },
];

/// The effective capability set, from `CapEff` in /proc/self/status.
pub fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_cap_eff(&status)
}

pub fn parse_cap_eff(status: &str) -> Option<u64> {
    parse_cap(status, "CapEff:")
}

fn has(set: u64, cap: u32) -> bool {
    set & (1u64 << cap) != 0
}

/// Splits `NEEDS` into the missing required and missing optional ones.
/// CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON (older kernels).
/// With `fail_fast` (`--fail-fast on`) aborting sockets was asked for, so
/// CAP_NET_ADMIN and CAP_SYS_ADMIN become required; without it
/// CAP_NET_ADMIN is not used at all.
pub fn missing(set: u64, fail_fast: bool) -> (Vec<Need>, Vec<Need>) {
    let sys_admin = has(set, CAP_SYS_ADMIN);
    let mut required = Vec::new();
    let mut optional = Vec::new();
    for need in NEEDS {
        let covered =
            has(set, need.cap) || (sys_admin && matches!(need.cap, CAP_BPF | CAP_PERFMON));
        if covered || (need.cap == CAP_NET_ADMIN && !fail_fast) {
            continue;
        }
        let for_fail_fast = fail_fast && matches!(need.cap, CAP_NET_ADMIN | CAP_SYS_ADMIN);
        if need.required || for_fail_fast {
            required.push(*need);
        } else {
            optional.push(*need);
        }
    }
    (required, optional)
}

/// Raises every permitted capability into the effective set. In a container
/// running as a non-root user, capabilities arrive as the binary's file
/// capabilities (`setcap ...+p`, no effective bit, so a pod that grants
/// fewer still starts) and are permitted but not yet effective.
pub fn raise_effective() -> std::io::Result<()> {
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget with a valid header and room for the two 32-bit words
    // that version 3 writes.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if data.iter().all(|d| d.effective == d.permitted) {
        return Ok(());
    }
    for word in &mut data {
        word.effective = word.permitted;
    }
    // SAFETY: capset with a valid header and the two words capget filled.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What `run` keeps once its programs are attached and its maps open:
/// reading maps, program statistics and the ring buffer through the file
/// descriptors it already holds needs no capability (since Linux 5.19
/// `kernel.unprivileged_bpf_disabled` only guards creating maps and loading
/// programs), so CAP_BPF and CAP_PERFMON go, and so does everything else a
/// root process holds. Kept, when held: CAP_SYS_PTRACE and
/// CAP_DAC_READ_SEARCH (/proc attribution of owners), CAP_SYS_ADMIN (setns
/// for sock_diag: owners found later, the at-risk audit, fail-fast), and
/// CAP_NET_ADMIN only with `--fail-fast on` (SOCK_DESTROY). `old_kernel`:
/// before 5.19 every bpf(2) call needs CAP_BPF, so it stays.
pub fn steady_state(effective: u64, fail_fast: bool, old_kernel: bool) -> u64 {
    let mut keep = (1 << CAP_SYS_PTRACE) | (1 << CAP_DAC_READ_SEARCH) | (1 << CAP_SYS_ADMIN);
    if fail_fast {
        keep |= 1 << CAP_NET_ADMIN;
    }
    if old_kernel {
        keep |= 1 << CAP_BPF;
    }
    effective & keep
}

/// Whether the running kernel is older than 5.19 (see `steady_state`).
pub fn kernel_before_5_19() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) < (5, 19)
}

/// Names of the capabilities in `set` that connmon knows by name, else
/// their numbers.
pub fn names(set: u64) -> Vec<String> {
    (0..64)
        .filter(|cap| has(set, *cap))
        .map(|cap| {
            NEEDS
                .iter()
                .find(|need| need.cap == cap)
                .map_or_else(|| format!("cap {cap}"), |need| need.name.to_string())
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum DropError {
    #[error("capset on this thread: {0}")]
    Capset(std::io::Error),
    #[error("installing the signal handler: {0}")]
    Handler(std::io::Error),
    #[error("{0} threads still hold more capabilities after {1:?}")]
    Stragglers(usize, std::time::Duration),
}

/// The set every thread is asked to keep (low and high 32-bit words).
static TARGET: [std::sync::atomic::AtomicU32; 2] = [
    std::sync::atomic::AtomicU32::new(0),
    std::sync::atomic::AtomicU32::new(0),
];

/// Sets this thread's effective and permitted sets to `keep` and clears
/// its inheritable set (and so its ambient set). Async-signal-safe: one
/// raw system call on stack data.
fn capset_this_thread(keep: [u32; 2]) -> libc::c_long {
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: keep[0],
            permitted: keep[0],
            inheritable: 0,
        },
        CapData {
            effective: keep[1],
            permitted: keep[1],
            inheritable: 0,
        },
    ];
    // SAFETY: capset with a valid header and the two words version 3 reads.
    unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) }
}

extern "C" fn drop_on_signal(_: libc::c_int) {
    let keep = [
        TARGET[0].load(std::sync::atomic::Ordering::SeqCst),
        TARGET[1].load(std::sync::atomic::Ordering::SeqCst),
    ];
    // A failure shows in /proc, where the caller checks every thread.
    let _ = capset_this_thread(keep);
}

/// The signal that asks a thread to drop its capabilities.
fn drop_signal() -> libc::c_int {
    libc::SIGRTMIN() + 4
}

/// Capabilities are per thread, and capset(2) only changes the caller's:
/// every thread of the process (the async runtime's workers and blocking
/// threads exist already) is asked with a signal to set its own, the way
/// libcap's psx does, until /proc shows each one holding no more than
/// `keep`. Irreversible: nothing dropped from the permitted set comes back.
pub fn drop_all_threads_to(keep: u64) -> Result<(), DropError> {
    use std::time::{Duration, Instant};
    let words = [keep as u32, (keep >> 32) as u32];
    TARGET[0].store(words[0], std::sync::atomic::Ordering::SeqCst);
    TARGET[1].store(words[1], std::sync::atomic::Ordering::SeqCst);
    // SAFETY: a zeroed sigaction is valid; the handler only makes one
    // async-signal-safe system call. SA_RESTART keeps interrupted calls
    // going.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = drop_on_signal as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(drop_signal(), &action, std::ptr::null_mut()) != 0 {
            return Err(DropError::Handler(std::io::Error::last_os_error()));
        }
    }
    if capset_this_thread(words) != 0 {
        return Err(DropError::Capset(std::io::Error::last_os_error()));
    }
    // SAFETY: getpid and gettid have no preconditions.
    let (pid, me) = unsafe { (libc::getpid(), libc::gettid()) };
    let patience = Duration::from_secs(2);
    let deadline = Instant::now() + patience;
    loop {
        // Threads may start while this runs; they inherit whatever their
        // creator held, so the check repeats until none holds more.
        let behind = threads_holding_more_than(keep);
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(DropError::Stragglers(behind.len(), patience));
        }
        for tid in behind {
            if tid == me {
                let _ = capset_this_thread(words);
            } else {
                // SAFETY: tgkill to a thread of this process with a signal
                // whose handler is installed above.
                unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, drop_signal()) };
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Threads of this process whose permitted set has anything beyond `keep`.
fn threads_holding_more_than(keep: u64) -> Vec<libc::pid_t> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let tid = task.file_name().to_str()?.parse::<libc::pid_t>().ok()?;
            let status = std::fs::read_to_string(task.path().join("status")).ok()?;
            let permitted = parse_cap(&status, "CapPrm:")?;
            (permitted & !keep != 0).then_some(tid)
        })
        .collect()
}

fn parse_cap(status: &str, field: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// `_LINUX_CAPABILITY_VERSION_3` (64-bit sets as two 32-bit words).
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set() {
        assert_eq!(
            parse_cap_eff("Name:\tx\nCapEff:\t000001ffffffffff\n"),
            Some(0x1ff_ffff_ffff)
        );
        assert_eq!(parse_cap_eff("Name:\tx\n"), None);
    }

    #[test]
    fn names_what_is_missing() {
        let all: u64 = NEEDS.iter().fold(0, |set, need| set | (1 << need.cap));
        assert_eq!(missing(all, true), (vec![], vec![]));
        let names = |needs: Vec<Need>| needs.iter().map(|n| n.name).collect::<Vec<_>>();
        let (required, optional) =
            missing(all & !(1 << CAP_PERFMON) & !(1 << CAP_SYS_ADMIN), false);
        assert_eq!(names(required), vec!["CAP_PERFMON"]);
        assert_eq!(names(optional), vec!["CAP_SYS_ADMIN"]);
        let (required, _) = missing(1 << CAP_SYS_ADMIN, false);
        assert!(required.is_empty(), "CAP_SYS_ADMIN covers BPF and PERFMON");
    }

    #[test]
    fn net_admin_only_matters_for_fail_fast() {
        let all: u64 = NEEDS.iter().fold(0, |set, need| set | (1 << need.cap));
        let without = all & !(1 << CAP_NET_ADMIN) & !(1 << CAP_SYS_ADMIN);
        let names = |needs: Vec<Need>| needs.iter().map(|n| n.name).collect::<Vec<_>>();
        let (required, optional) = missing(without, false);
        assert!(required.is_empty());
        assert_eq!(names(optional), vec!["CAP_SYS_ADMIN"]);
        let (required, optional) = missing(without, true);
        assert_eq!(names(required), vec!["CAP_SYS_ADMIN", "CAP_NET_ADMIN"]);
        assert!(optional.is_empty());
    }

    #[test]
    fn the_steady_state_keeps_only_what_attribution_and_fail_fast_use() {
        let root = u64::MAX >> 23; // CAP_CHOWN .. CAP_CHECKPOINT_RESTORE
        let names = |set| names(set);
        assert_eq!(
            names(steady_state(root, false, false)),
            vec!["CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE", "CAP_SYS_ADMIN"]
        );
        assert_eq!(
            names(steady_state(root, true, false)),
            vec![
                "CAP_DAC_READ_SEARCH",
                "CAP_NET_ADMIN",
                "CAP_SYS_PTRACE",
                "CAP_SYS_ADMIN"
            ]
        );
        assert!(names(steady_state(root, false, true)).contains(&"CAP_BPF".to_string()));
        // Nothing is kept that was not held.
        let pod = (1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_SYS_PTRACE);
        assert_eq!(steady_state(pod, true, false), 1 << CAP_SYS_PTRACE);
    }

    #[test]
    fn raising_the_effective_set_is_harmless() {
        raise_effective().expect("capget/capset on ourselves");
    }
}
