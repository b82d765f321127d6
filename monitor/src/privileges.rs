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

/// What `run` and `trace` need.
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
        cap: CAP_NET_ADMIN,
        name: "CAP_NET_ADMIN",
        purpose: "list sockets through sock_diag and abort them (--fail-fast)",
        required: false,
    },
    Need {
        cap: CAP_SYS_PTRACE,
        name: "CAP_SYS_PTRACE",
        purpose: "read other processes' /proc/PID/fd and namespaces (owners of connections older than connmon)",
        required: false,
    },
    Need {
        cap: CAP_SYS_ADMIN,
        name: "CAP_SYS_ADMIN",
        purpose: "enter other network namespaces to list their connections at start-up",
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
pub fn missing(set: u64) -> (Vec<Need>, Vec<Need>) {
    let sys_admin = has(set, CAP_SYS_ADMIN);
    let lacking = |need: &&Need| {
        let covered =
            has(set, need.cap) || (sys_admin && matches!(need.cap, CAP_BPF | CAP_PERFMON));
        !covered
    };
    let required = NEEDS
        .iter()
        .filter(|n| n.required)
        .filter(lacking)
        .copied()
        .collect();
    let optional = NEEDS
        .iter()
        .filter(|n| !n.required)
        .filter(lacking)
        .copied()
        .collect();
    (required, optional)
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
        assert_eq!(missing(all), (vec![], vec![]));
        let (required, optional) = missing(all & !(1 << CAP_PERFMON) & !(1 << CAP_SYS_ADMIN));
        assert_eq!(
            required.iter().map(|n| n.name).collect::<Vec<_>>(),
            vec!["CAP_PERFMON"]
        );
        assert_eq!(
            optional.iter().map(|n| n.name).collect::<Vec<_>>(),
            vec!["CAP_SYS_ADMIN"]
        );
        let (required, _) = missing(1 << CAP_SYS_ADMIN);
        assert!(required.is_empty(), "CAP_SYS_ADMIN covers BPF and PERFMON");
    }
}
