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
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
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
    fn raising_the_effective_set_is_harmless() {
        raise_effective().expect("capget/capset on ourselves");
    }
}
