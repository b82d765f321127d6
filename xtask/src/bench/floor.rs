//! The floor: an empty BPF program (`r0 = 0; exit`) attached to each of
//! connmon's hooks the same way connmon attaches (a BTF tracepoint, run by
//! the kernel's `bpf_trace_run`), so a window measures what the hook itself
//! costs next to what connmon's program adds. ns per run on this VM move
//! with its load; the ratio within one window is what it can resolve.
//!
//! Two instructions need no compiler: the programs are loaded with the
//! `bpf` syscall directly (`BPF_PROG_LOAD` of a tracing program typed by
//! the tracepoint's `btf_trace_*` BTF id, then `BPF_RAW_TRACEPOINT_OPEN`).

use std::{
    collections::BTreeMap,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result, bail};

use super::probe::ProgramWindow;

/// connmon's hooks on 6.3+ kernels (all BTF tracepoints).
pub const HOOKS: &[&str] = &[
    "sock_send_length",
    "sock_recv_length",
    "inet_sock_set_state",
    "tcp_retransmit_skb",
    "tcp_cong_state_set",
    "tcp_receive_reset",
    "tcp_send_reset",
    "inet_sk_error_report",
    "tcp_destroy_sock",
];

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_RAW_TP: u32 = 23;

/// The leading fields of `union bpf_attr` for `BPF_PROG_LOAD`, zero-padded
/// to the union's size (the kernel requires unused bytes to be zero).
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    rest: [u8; 48],
}

/// `BPF_RAW_TRACEPOINT_OPEN`: no name (the program's BTF id says where).
#[repr(C)]
struct RawTracepointAttr {
    name: u64,
    prog_fd: u32,
    pad: u32,
    rest: [u8; 128],
}

/// Programs of one helper call each (then `r0 = 0; exit`), attached next
/// to the empty one on `sock_send_length`: what one call costs on this
/// machine, to say where a program's nanoseconds go. The socket argument
/// (`r1 = *(u64 *)(r1 + 0)`) is loaded for the helpers that take it.
pub const HELPER_PROBES: &[(&str, i32, bool)] = &[
    ("get_current_pid_tgid", 14, false),
    ("ktime_get_ns", 5, false),
    ("jiffies64", 118, false),
    ("get_socket_cookie", 46, true),
    ("skc_to_tcp_sock", 137, true),
];

/// The hook the helper probes run on.
pub const PROBE_HOOK: &str = "sock_send_length";

/// Empty programs attached to hooks; detached when dropped.
pub struct Floor {
    programs: Vec<(&'static str, OwnedFd, OwnedFd)>,
}

impl Floor {
    /// Attaches an empty program to every hook this kernel has.
    pub fn attach(hooks: &[&'static str]) -> Result<Self> {
        let btf = btf_rs::Btf::from_file("/sys/kernel/btf/vmlinux").context("kernel BTF")?;
        let mut programs = Vec::new();
        for &hook in hooks {
            // The tracepoint's `btf_trace_*` typedef types the program.
            let Some(btf_id) = btf
                .resolve_ids_by_name(&format!("btf_trace_{hook}"))
                .ok()
                .and_then(|ids| ids.first().copied())
            else {
                continue;
            };
            let program = load_empty(hook, btf_id)?;
            let link =
                attach(&program).with_context(|| format!("attaching the floor to {hook}"))?;
            programs.push((hook, program, link));
        }
        if programs.is_empty() {
            bail!("no hook of connmon's exists on this kernel");
        }
        Ok(Self { programs })
    }

    /// Adds the helper probes on `PROBE_HOOK`, named by helper. A probe
    /// the kernel refuses is left out (said on stderr), never fatal.
    pub fn with_helper_probes(mut self) -> Result<Self> {
        let btf = btf_rs::Btf::from_file("/sys/kernel/btf/vmlinux").context("kernel BTF")?;
        let Some(btf_id) = btf
            .resolve_ids_by_name(&format!("btf_trace_{PROBE_HOOK}"))
            .ok()
            .and_then(|ids| ids.first().copied())
        else {
            return Ok(self);
        };
        for &(helper, id, takes_socket) in HELPER_PROBES {
            let mut insns = Vec::new();
            if takes_socket {
                // r1 = *(u64 *)(r1 + 0): the tracepoint's `struct sock *`.
                insns.push(0x0000_0000_0000_1179u64);
            }
            // call helper
            insns.push(((id as u32 as u64) << 32) | 0x85);
            insns.extend([0x0000_0000_0000_00b7, 0x0000_0000_0000_0095]);
            let loaded =
                load(helper, btf_id, &insns).and_then(|program| Ok((attach(&program)?, program)));
            match loaded {
                Ok((link, program)) => self.programs.push((helper, program, link)),
                Err(error) => eprintln!("bench: helper probe {helper} not loaded: {error:#}"),
            }
        }
        Ok(self)
    }

    /// Each hook's runs since `before` (an earlier `stats`), named by hook.
    pub fn windows(&self, before: &BTreeMap<&'static str, (u64, u64)>) -> Vec<ProgramWindow> {
        self.stats()
            .into_iter()
            .map(|(hook, (runs, time))| {
                let (runs_before, time_before) = before.get(hook).copied().unwrap_or_default();
                ProgramWindow {
                    name: hook.to_string(),
                    runs: runs.saturating_sub(runs_before),
                    run_time_ns: time.saturating_sub(time_before),
                    recursion_misses: 0,
                }
            })
            .collect()
    }

    /// Cumulative (runs, run time ns) per hook, from the kernel's statistics
    /// (`kernel.bpf_stats_enabled=1`).
    pub fn stats(&self) -> BTreeMap<&'static str, (u64, u64)> {
        self.programs
            .iter()
            .map(|(hook, program, _)| {
                let info =
                    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", program.as_raw_fd()))
                        .unwrap_or_default();
                let field = |key: &str| {
                    info.lines()
                        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
                        .and_then(|value| value.trim().parse::<u64>().ok())
                        .unwrap_or(0)
                };
                (*hook, (field("run_cnt"), field("run_time_ns")))
            })
            .collect()
    }
}

fn load_empty(hook: &str, btf_id: u32) -> Result<OwnedFd> {
    // r0 = 0; exit
    load(
        &format!("floor_{}", hook.trim_start_matches("tcp_")),
        btf_id,
        &[0x0000_0000_0000_00b7, 0x0000_0000_0000_0095],
    )
}

/// Loads `insns` (raw 8-byte BPF instructions) as a BTF tracepoint
/// program typed by `btf_id`.
fn load(label: &str, btf_id: u32, insns: &[u64]) -> Result<OwnedFd> {
    let hook = label;
    let license = c"GPL";
    let mut name = [0u8; 16];
    let short = label;
    for (slot, byte) in name.iter_mut().zip(short.bytes().take(15)) {
        *slot = if byte.is_ascii_alphanumeric() {
            byte
        } else {
            b'_'
        };
    }
    let mut log = vec![0u8; 4096];
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_TRACING,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: BPF_TRACE_RAW_TP,
        prog_btf_fd: 0,
        func_info_rec_size: 0,
        func_info: 0,
        func_info_cnt: 0,
        line_info_rec_size: 0,
        line_info: 0,
        line_info_cnt: 0,
        attach_btf_id: btf_id,
        rest: [0; 48],
    };
    // SAFETY: `attr` is a valid, fully initialised BPF_PROG_LOAD attribute
    // whose pointers (instructions, license, log) outlive the call.
    match unsafe { bpf(BPF_PROG_LOAD, &attr) } {
        Ok(fd) => Ok(fd),
        Err(error) => {
            let log = String::from_utf8_lossy(&log);
            bail!(
                "loading the empty program for {hook}: {error}: {}",
                log.trim_end_matches('\0')
            )
        }
    }
}

fn attach(program: &OwnedFd) -> Result<OwnedFd> {
    let attr = RawTracepointAttr {
        name: 0,
        prog_fd: program.as_raw_fd() as u32,
        pad: 0,
        rest: [0; 128],
    };
    // SAFETY: a valid BPF_RAW_TRACEPOINT_OPEN attribute for a loaded
    // program fd.
    Ok(unsafe { bpf(BPF_RAW_TRACEPOINT_OPEN, &attr) }?)
}

/// The `bpf` syscall for a command that returns a new file descriptor.
///
/// # Safety
/// `attr` must be a valid attribute for `command`, and every pointer in it
/// must stay valid for the call.
unsafe fn bpf<Attr>(command: libc::c_long, attr: &Attr) -> std::io::Result<OwnedFd> {
    // SAFETY: the caller vouches for `attr`; the size passed is its own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *const Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new file descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
