//! Kernel capture: load the programs with this kernel's offsets, attach the
//! hooks this kernel has, and hand out the ring buffer and counters.

pub mod counters;
mod helpers;
pub mod hooks;
pub mod offsets;
pub mod reader;
pub mod stats;

use std::{collections::BTreeSet, io, path::PathBuf};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, FExit, ProgramError},
};
use monitor_common::{
    counters::UnwatchedRetransmits,
    globals::{
        KernelOffsets, ProbeSettings, WATCHED_PORT_WORDS, ring_wake_bytes, watched_port_bits,
    },
    maps,
    socket::PrimedSocket,
};
use tracing::{info, warn};

pub use self::hooks::{HOOKS, Hook};
use self::offsets::KernelBtf;

/// Where the kernel publishes its own BTF.
pub const KERNEL_BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

/// The compiled kernel programs, embedded at build time.
static PROGRAMS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/connmon-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "kernel BTF not readable at {path}: {reason} (connmon needs a kernel built with CONFIG_DEBUG_INFO_BTF)"
    )]
    Btf { path: PathBuf, reason: String },
    #[error("this kernel's BTF has no field {field}, which connmon needs")]
    MissingKernelField { field: String },
    #[error(
        "missing capability {name}, needed to {purpose}; run as root or grant it (e.g. setcap, or the pod's securityContext)"
    )]
    MissingCapability {
        name: &'static str,
        purpose: &'static str,
    },
    #[error("this kernel has no tracepoint {hook}, which connmon needs ({purpose})")]
    MissingTracepoint {
        hook: &'static str,
        purpose: &'static str,
    },
    #[error(
        "not permitted to load BPF programs ({call}); run as root or with CAP_BPF and CAP_PERFMON"
    )]
    Privilege { call: String, source: io::Error },
    #[error("loading the kernel programs failed: {0}")]
    Load(String),
    #[error("attaching {hook} failed: {reason}")]
    Attach { hook: &'static str, reason: String },
    #[error(
        "this kernel is too old for connmon: its tracing programs lack the BPF helper {helper} (added in Linux {since}; \
         see docs/kernels.md); refused while loading {hook}"
    )]
    KernelTooOld {
        hook: &'static str,
        helper: String,
        since: &'static str,
    },
    #[error(
        "cannot tell the kernel's tick length (clock_getres(CLOCK_MONOTONIC_COARSE) failed or is not a tick)"
    )]
    Clock,
    #[error("kernel map {name}: {reason}")]
    Map { name: &'static str, reason: String },
}

/// What to capture and how big the kernel-side tables are.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    /// Ports (local or remote) whose sockets' events reach userspace.
    pub watched_ports: BTreeSet<u16>,
    /// Every port is watched.
    pub watch_all_ports: bool,
    /// Every state change of a watched socket is an event, not only the
    /// ones detection uses (to ESTABLISHED, to CLOSE).
    pub every_state_change: bool,
    /// Idle gap that starts a new burst, nanoseconds.
    pub idle_threshold_ns: u64,
    /// Sockets the kernel map can hold.
    pub socket_map_entries: u32,
    /// Ring buffer size in bytes (a power of two, at least a page).
    pub ring_buffer_bytes: u32,
    /// `--fail-fast on`: aborting sockets needs CAP_NET_ADMIN and
    /// CAP_SYS_ADMIN, checked up front.
    pub fail_fast: bool,
}

/// Loaded and attached programs. Dropping it detaches every program.
pub struct Capture {
    ebpf: Ebpf,
    store: StateStore,
    attached: Vec<&'static str>,
    degraded: Vec<&'static Hook>,
    program_fds: Vec<(&'static str, aya::programs::ProgramFd)>,
}

impl Capture {
    /// Resolves offsets from BTF, loads the programs and attaches every hook
    /// this kernel has. Required hooks missing are an error naming them;
    /// optional ones are skipped with a warning saying what is lost.
    pub fn start(config: &CaptureConfig) -> Result<Self, CaptureError> {
        if let Some(set) = crate::privileges::effective() {
            let (required, optional) = crate::privileges::missing(set, config.fail_fast);
            if let Some(need) = required.first() {
                return Err(CaptureError::MissingCapability {
                    name: need.name,
                    purpose: need.purpose,
                });
            }
            for need in optional {
                warn!(
                    capability = need.name,
                    lost = need.purpose,
                    "capability missing; this part is degraded"
                );
            }
        }
        let btf_path = PathBuf::from(KERNEL_BTF_PATH);
        let kernel_btf = KernelBtf::from_file(&btf_path)?;
        let (offsets, missing_fields) = offsets::resolve(&kernel_btf)?;
        for field in &missing_fields {
            warn!(field = %field, "kernel has no such field; the value it feeds is reported as 0");
        }

        let plan = choose_hooks(&kernel_btf)?;
        info!(
            hooks = ?plan.hooks.iter().map(|(hook, source)| source.describe(hook)).collect::<Vec<_>>(),
            store = ?plan.store,
            "hooks chosen for this kernel"
        );
        if plan.store == StateStore::ByAddress {
            warn!(
                hook = SOCKET_LOCAL_STORAGE.tracepoint,
                lost = SOCKET_LOCAL_STORAGE.purpose,
                map_entries = config.socket_map_entries,
                "this kernel's BPF tracing programs have no socket-local storage (5.11) or socket cookie \
                 helper (5.12); capability degraded"
            );
        }

        let ns_per_jiffy = ns_per_jiffy().ok_or(CaptureError::Clock)?;
        let idle_threshold_ticks = config.idle_threshold_ns.div_ceil(ns_per_jiffy);
        let settings = ProbeSettings {
            // Refresh activity times at a quarter of the idle threshold, at
            // most once a second and at least once a jiffy: precise enough,
            // and rare writes.
            activity_granularity_ticks: (config.idle_threshold_ns / 4)
                .clamp(1, 1_000_000_000)
                .div_ceil(ns_per_jiffy),
            idle_threshold_ticks,
            idle_threshold_ns: config.idle_threshold_ns,
            watch_all_ports: u32::from(config.watch_all_ports),
            retransmit_has_err: u32::from(
                kernel_btf.tracepoint_args("tcp_retransmit_skb") == Some(3),
            ),
            ns_per_jiffy,
            every_state_change: u32::from(config.every_state_change),
            // `run` (which does not trace every move) counts busy
            // connections' retransmits instead of a record each.
            count_busy_retransmits: u32::from(!config.every_state_change),
            retransmit_counts_ticks: 1_000_000_000u64.div_ceil(ns_per_jiffy),
            ring_wake_bytes: ring_wake_bytes(u64::from(config.ring_buffer_bytes)),
        };

        let watched_port_bits = watched_port_bits(config.watched_ports.iter().copied());
        // One parsed copy of the kernel's BTF at a time: it is large.
        drop(kernel_btf);
        let aya_btf = Btf::from_sys_fs().map_err(|source| CaptureError::Btf {
            path: btf_path.clone(),
            reason: source.to_string(),
        })?;
        let store = plan.store;
        let loaded = load_and_attach(
            &aya_btf,
            config,
            &offsets,
            settings,
            &watched_port_bits,
            plan,
        )?;
        let Loaded {
            ebpf,
            attached,
            programs,
            program_fds,
            degraded,
        } = loaded;
        info!(hooks = ?attached, ?programs, degraded = degraded.len(), "kernel programs attached");
        Ok(Self {
            ebpf,
            store,
            attached,
            degraded,
            program_fds,
        })
    }

    /// Hooks served (by their tracepoint's name, also when a fallback
    /// program serves it), in attach order.
    pub fn attached(&self) -> &[&'static str] {
        &self.attached
    }

    /// Where the programs keep socket state; with `ByAddress`, the
    /// records' cookies are socket addresses, not sock_diag cookies.
    pub fn store(&self) -> StateStore {
        self.store
    }

    /// Optional hooks this kernel lacks or refused: each names the
    /// capability lost (`purpose`).
    pub fn degraded(&self) -> &[&'static Hook] {
        &self.degraded
    }

    /// Hands sockets found at start-up (they predate the programs) to the
    /// kernel, which moves each into the socket's storage when it first
    /// sees the socket. Returns how many were accepted.
    pub fn prime_sockets(
        &mut self,
        known: &[crate::attribution::existing::KnownSocket],
    ) -> Result<usize, CaptureError> {
        let name = maps::PRIMED_SOCKETS;
        let map = self.ebpf.map_mut(name).ok_or(CaptureError::Map {
            name,
            reason: "missing from the object".into(),
        })?;
        let mut primed: aya::maps::HashMap<&mut MapData, u64, PrimedSocket> =
            aya::maps::HashMap::try_from(map).map_err(map_error(name))?;
        let mut added = 0;
        for socket in known {
            if primed.insert(socket.cookie, socket.state, 0).is_ok() {
                added += 1;
            }
        }
        Ok(added)
    }

    /// Statistics of the attached programs. With `run_time`, turns the
    /// kernel's run-time accounting on while the reader lives: it costs two
    /// clock reads per run of every BPF program on the host, not only ours.
    pub fn program_stats(&mut self, run_time: bool) -> stats::ProgramStatsReader {
        let enabled = if run_time {
            match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
                Ok(fd) => Some(fd),
                Err(error) => {
                    warn!(%error, "BPF run-time statistics unavailable");
                    None
                }
            }
        } else {
            None
        };
        stats::ProgramStatsReader::new(std::mem::take(&mut self.program_fds), enabled)
    }

    /// Takes the per-socket retransmit counts of unwatched sockets (once).
    pub fn take_unwatched_retransmits(
        &mut self,
    ) -> Result<aya::maps::HashMap<MapData, u64, UnwatchedRetransmits>, CaptureError> {
        let name = maps::UNWATCHED_RETRANSMITS;
        aya::maps::HashMap::try_from(self.take_map(name)?).map_err(map_error(name))
    }

    /// Takes the event ring buffer (once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, CaptureError> {
        RingBuf::try_from(self.take_map(maps::EVENTS)?).map_err(map_error(maps::EVENTS))
    }

    /// Takes the kernel counters (once).
    pub fn take_counters(&mut self) -> Result<counters::KernelCounters, CaptureError> {
        let array = PerCpuArray::try_from(self.take_map(maps::COUNTERS)?)
            .map_err(map_error(maps::COUNTERS))?;
        Ok(counters::KernelCounters::new(array))
    }

    /// Takes the map `name` out of the object (once).
    fn take_map(&mut self, name: &'static str) -> Result<aya::maps::Map, CaptureError> {
        self.ebpf.take_map(name).ok_or(CaptureError::Map {
            name,
            reason: "already taken".into(),
        })
    }
}

/// A map error as a capture error naming the map.
pub(crate) fn map_error(name: &'static str) -> impl Fn(aya::maps::MapError) -> CaptureError {
    move |error| CaptureError::Map {
        name,
        reason: error.to_string(),
    }
}

/// The kernel tick: the coarse clocks advance once per jiffy, so their
/// resolution is 1e9 / CONFIG_HZ (the socket activity's time base).
fn ns_per_jiffy() -> Option<u64> {
    let mut resolution = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `resolution` is a valid, writable timespec for the call.
    let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut resolution) };
    if rc != 0 || resolution.tv_sec != 0 {
        return None;
    }
    // CONFIG_HZ is 100 to 1000: a tick of 1 to 10 ms.
    u64::try_from(resolution.tv_nsec)
        .ok()
        .filter(|ns| (1_000_000..=10_000_000).contains(ns))
}

fn load_error(error: aya::EbpfError) -> CaptureError {
    if let aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. }) = &error
        && io_error.kind() == io::ErrorKind::PermissionDenied
    {
        return CaptureError::Privilege {
            call: "bpf(BPF_MAP_CREATE)".into(),
            source: io::Error::from(io_error.kind()),
        };
    }
    CaptureError::Load(format!("{error:#}"))
}

fn program_error(hook: &'static str, error: ProgramError) -> CaptureError {
    match &error {
        // EPERM is a missing privilege; EACCES and the rest are the
        // verifier's verdict, whose log's last lines say why.
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            if io_error.raw_os_error() == Some(libc::EPERM) {
                return CaptureError::Privilege {
                    call: format!("bpf(BPF_PROG_LOAD) for {hook}"),
                    source: io::Error::from(io_error.kind()),
                };
            }
            let log = verifier_log.to_string();
            if let Some((helper, since)) = helpers::missing_helper(&log) {
                return CaptureError::KernelTooOld {
                    hook,
                    helper: helper.to_string(),
                    since,
                };
            }
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(12)..].join("\n");
            CaptureError::Attach {
                hook,
                reason: format!(
                    "the kernel refused the program ({io_error}); verifier log ends:\n{tail}"
                ),
            }
        }
        ProgramError::SyscallError(aya::sys::SyscallError { call, io_error })
            if io_error.kind() == io::ErrorKind::PermissionDenied =>
        {
            CaptureError::Privilege {
                call: format!("{call} for {hook}"),
                source: io::Error::from(io_error.kind()),
            }
        }
        _ => CaptureError::Attach {
            hook,
            reason: format!("{error}"),
        },
    }
}

/// Where one hook's program attaches on this kernel.
#[derive(Clone, Copy, Debug)]
enum Source {
    Tracepoint,
    FExit(&'static hooks::Fallback),
}

impl Source {
    /// The program serving `hook` from this source with `store`; `None`:
    /// the object has no such variant.
    fn program(self, hook: &'static Hook, store: StateStore) -> Option<&'static str> {
        let (local, by_address) = match self {
            Self::Tracepoint => (hook.program, hook.by_address),
            Self::FExit(fallback) => (fallback.program, fallback.by_address),
        };
        match store {
            StateStore::LocalStorage => Some(local),
            StateStore::ByAddress => by_address,
        }
    }

    fn describe(self, hook: &'static Hook) -> String {
        match self {
            Self::Tracepoint => format!("tp_btf/{}", hook.tracepoint),
            Self::FExit(fallback) => format!(
                "fexit/{} (no tracepoint {})",
                fallback.function, hook.tracepoint
            ),
        }
    }
}

/// Where the programs keep a watched socket's state, which decides the
/// program variants attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateStore {
    /// Socket-local storage, sockets named by the kernel's cookie (tracing
    /// programs got `bpf_sk_storage_get` in 5.11, `bpf_get_socket_cookie`
    /// in 5.12).
    LocalStorage,
    /// A hash map keyed by the socket's address, which also names the
    /// socket in the records (5.10).
    ByAddress,
}

/// Functions the kernel has exactly when its tracing programs may call the
/// helper: the helpers' tracing variants (`BPF_CALL_*` definitions).
const TRACING_SK_STORAGE_FN: &str = "bpf_sk_storage_get_tracing";
const TRACING_SOCKET_COOKIE_FN: &str = "bpf_get_socket_ptr_cookie";

/// Not a hook: what a kernel without `StateStore::LocalStorage` lacks,
/// logged and exported with the degraded hooks.
pub static SOCKET_LOCAL_STORAGE: Hook = Hook {
    tracepoint: "socket_local_storage",
    program: "",
    by_address: None,
    required: false,
    purpose: "socket cookies (records name sockets by kernel address; owners from sock_diag and \
              /proc, unwatched retransmits' owners and fail-fast aborts are matched by addresses and \
              ports instead) and unbounded per-socket state (a hash map of --socket-map-entries)",
    fallbacks: &[],
};

/// The hooks to attach with their sources, the state store their programs
/// use, and the capabilities lost.
#[derive(Debug)]
pub struct HookPlan {
    store: StateStore,
    hooks: Vec<(&'static Hook, Source)>,
    degraded: Vec<&'static Hook>,
}

/// Decides per hook, from the kernel's BTF, what serves it (see
/// `plan_hooks`).
fn choose_hooks(kernel_btf: &KernelBtf) -> Result<HookPlan, CaptureError> {
    plan_hooks(
        HOOKS,
        |tracepoint| kernel_btf.tracepoint_args(tracepoint).is_some(),
        |function| kernel_btf.function_args(function),
    )
}

/// What `load_and_attach` gives `Capture`.
struct Loaded {
    ebpf: Ebpf,
    attached: Vec<&'static str>,
    programs: Vec<&'static str>,
    program_fds: Vec<(&'static str, aya::programs::ProgramFd)>,
    degraded: Vec<&'static Hook>,
}

/// Loads the object with `settings` and attaches each planned hook; on an
/// error, whatever was attached is detached again (dropped).
fn load_and_attach(
    aya_btf: &Btf,
    config: &CaptureConfig,
    offsets: &KernelOffsets,
    settings: ProbeSettings,
    watched_port_bits: &[u64; WATCHED_PORT_WORDS],
    plan: HookPlan,
) -> Result<Loaded, CaptureError> {
    let HookPlan {
        store,
        hooks,
        mut degraded,
    } = plan;
    let mut ebpf = EbpfLoader::new()
        .btf(Some(aya_btf))
        .override_global(maps::OFFSETS, offsets, true)
        .override_global(maps::SETTINGS, &settings, true)
        .override_global(maps::WATCHED_PORT_BITS, watched_port_bits, true)
        .map_max_entries(maps::PRIMED_SOCKETS, config.socket_map_entries.max(1))
        .map_max_entries(maps::EVENTS, config.ring_buffer_bytes)
        .map_max_entries(
            maps::SOCKET_STATE_BY_ADDRESS,
            if store == StateStore::ByAddress {
                config.socket_map_entries.max(1)
            } else {
                1
            },
        )
        .load(PROGRAMS_OBJECT)
        .map_err(load_error)?;

    let mut attached = Vec::new();
    let mut programs = Vec::new();
    let mut program_fds = Vec::new();
    for (hook, source) in hooks {
        let started = std::time::Instant::now();
        let fd = match attach(&mut ebpf, aya_btf, hook, source, store) {
            Ok(fd) => fd,
            // Trampolines can be refused (e.g. lockdown or a kernel that
            // blocks them): an optional hook then degrades, as if absent.
            // (A kernel too old for the programs is not a refused
            // trampoline: it stops start-up below, with its reason.)
            Err(error)
                if !hook.required
                    && matches!(source, Source::FExit(_))
                    && !matches!(error, CaptureError::KernelTooOld { .. }) =>
            {
                warn!(
                    hook = source.describe(hook),
                    lost = hook.purpose,
                    %error,
                    "fallback hook refused; capability degraded"
                );
                degraded.push(hook);
                continue;
            }
            Err(error) => return Err(error),
        };
        let program = source.program(hook, store).unwrap_or(hook.program);
        match fd {
            Ok(fd) => {
                info!(
                    program,
                    verified_insns = verified_insns(&fd),
                    load_ms = started.elapsed().as_millis() as u64,
                    "kernel program attached"
                );
                program_fds.push((program, fd));
            }
            Err(error) => warn!(program, %error, "no statistics for this program"),
        }
        attached.push(hook.tracepoint);
        programs.push(program);
    }
    Ok(Loaded {
        ebpf,
        attached,
        programs,
        program_fds,
        degraded,
    })
}

/// First the state store: socket-local storage where tracing programs
/// have it and the cookie helper (both tracing helpers' functions are in
/// BTF), else the by-address map. Then per hook: the BTF tracepoint when
/// the kernel has it, else the first fallback whose function has the
/// expected number of parameters, either with a program variant for the
/// store; else nothing: an error for a required hook, a warning naming the
/// capability lost for an optional one (also returned, for
/// `Capture::degraded`).
fn plan_hooks(
    hooks: &'static [Hook],
    has_tracepoint: impl Fn(&str) -> bool,
    function_args: impl Fn(&str) -> Option<usize>,
) -> Result<HookPlan, CaptureError> {
    let store = if function_args(TRACING_SK_STORAGE_FN).is_some()
        && function_args(TRACING_SOCKET_COOKIE_FN).is_some()
    {
        StateStore::LocalStorage
    } else {
        StateStore::ByAddress
    };
    let mut plan = Vec::new();
    let mut degraded = Vec::new();
    for hook in hooks {
        if has_tracepoint(hook.tracepoint) && Source::Tracepoint.program(hook, store).is_some() {
            plan.push((hook, Source::Tracepoint));
            continue;
        }
        if let Some(fallback) = hook.fallbacks.iter().find(|fallback| {
            function_args(fallback.function) == Some(fallback.args)
                && Source::FExit(fallback).program(hook, store).is_some()
        }) {
            plan.push((hook, Source::FExit(fallback)));
            continue;
        }
        if hook.required {
            return Err(CaptureError::MissingTracepoint {
                hook: hook.tracepoint,
                purpose: hook.purpose,
            });
        }
        warn!(
            tracepoint = hook.tracepoint,
            lost = hook.purpose,
            "tracepoint missing on this kernel; capability degraded"
        );
        degraded.push(hook);
    }
    if store == StateStore::ByAddress {
        degraded.push(&SOCKET_LOCAL_STORAGE);
    }
    Ok(HookPlan {
        store,
        hooks: plan,
        degraded,
    })
}

/// Loads and attaches one hook's program; on success, a second fd on the
/// program (for its statistics) or why there is none.
fn attach(
    ebpf: &mut Ebpf,
    btf: &Btf,
    hook: &'static Hook,
    source: Source,
    store: StateStore,
) -> Result<Result<aya::programs::ProgramFd, ProgramError>, CaptureError> {
    let name = source.program(hook, store).ok_or_else(|| {
        CaptureError::Load(format!("no {store:?} program for {}", hook.tracepoint))
    })?;
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| CaptureError::Load(format!("program {name} missing from the object")))?;
    let fd = match source {
        Source::Tracepoint => {
            let program: &mut BtfTracePoint = program
                .try_into()
                .map_err(|error: ProgramError| CaptureError::Load(error.to_string()))?;
            program
                .load(hook.tracepoint, btf)
                .map_err(|error| program_error(hook.tracepoint, error))?;
            program
                .attach()
                .map_err(|error| program_error(hook.tracepoint, error))?;
            program
                .fd()
                .and_then(|fd| fd.try_clone().map_err(ProgramError::from))
        }
        Source::FExit(fallback) => {
            let program: &mut FExit = program
                .try_into()
                .map_err(|error: ProgramError| CaptureError::Load(error.to_string()))?;
            program
                .load(fallback.function, btf)
                .map_err(|error| program_error(fallback.function, error))?;
            program
                .attach()
                .map_err(|error| program_error(fallback.function, error))?;
            program
                .fd()
                .and_then(|fd| fd.try_clone().map_err(ProgramError::from))
        }
    };
    Ok(fd)
}

/// How many instructions the verifier processed for the program (0 when
/// the kernel does not say); older kernels work much harder on the same
/// code, so this is logged at start-up.
fn verified_insns(fd: &aya::programs::ProgramFd) -> u64 {
    use std::os::fd::{AsFd, AsRawFd};
    let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
    std::fs::read_to_string(path)
        .map(|text| stats::parse_fdinfo(&text).verified_instructions)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn described(plan: &HookPlan) -> Vec<String> {
        plan.hooks
            .iter()
            .map(|(hook, source)| source.describe(hook))
            .collect()
    }

    fn programs(plan: &HookPlan) -> Vec<&'static str> {
        plan.hooks
            .iter()
            .map(|(hook, source)| source.program(hook, plan.store).unwrap())
            .collect()
    }

    /// A kernel from 5.12 on: its tracing programs have socket-local
    /// storage and the cookie helper; `others` answers for the rest.
    fn with_tracing_helpers(
        others: impl Fn(&str) -> Option<usize>,
    ) -> impl Fn(&str) -> Option<usize> {
        move |function| match function {
            TRACING_SK_STORAGE_FN => Some(5),
            TRACING_SOCKET_COOKIE_FN => Some(1),
            other => others(other),
        }
    }

    /// Linux 6.18: every tracepoint exists; no fallback is used.
    #[test]
    fn every_tracepoint_present_uses_tracepoints_only() {
        let plan = plan_hooks(HOOKS, |_| true, with_tracing_helpers(|_| None)).unwrap();
        assert_eq!(plan.store, StateStore::LocalStorage);
        assert_eq!(plan.hooks.len(), HOOKS.len());
        assert!(plan.degraded.is_empty());
        assert!(described(&plan).iter().all(|d| d.starts_with("tp_btf/")));
        let hook_programs: Vec<_> = HOOKS.iter().map(|hook| hook.program).collect();
        assert_eq!(programs(&plan), hook_programs);
    }

    /// Linux 6.1: no send/receive tracepoints; the TCP functions' exits
    /// serve them, with the argument counts the programs were written for.
    #[test]
    fn missing_send_receive_tracepoints_fall_back_to_fexit() {
        let plan = plan_hooks(
            HOOKS,
            |tp| !matches!(tp, "sock_send_length" | "sock_recv_length"),
            with_tracing_helpers(|function| match function {
                "tcp_sendmsg" => Some(3),
                "tcp_recvmsg" => Some(5),
                _ => None,
            }),
        )
        .unwrap();
        assert_eq!(plan.store, StateStore::LocalStorage);
        assert!(plan.degraded.is_empty());
        let described = described(&plan);
        assert!(described.contains(&"fexit/tcp_sendmsg (no tracepoint sock_send_length)".into()));
        assert!(described.contains(&"fexit/tcp_recvmsg (no tracepoint sock_recv_length)".into()));
        assert_eq!(plan.hooks.len(), HOOKS.len());
        assert!(programs(&plan).contains(&"tcp_recvmsg_exit"));
    }

    /// 5.12 to 5.18: `tcp_recvmsg` still has `nonblock` (six parameters).
    #[test]
    fn six_parameter_recvmsg_gets_its_own_program() {
        let plan = plan_hooks(
            HOOKS,
            |tp| !matches!(tp, "sock_send_length" | "sock_recv_length"),
            with_tracing_helpers(|function| match function {
                "tcp_sendmsg" => Some(3),
                "tcp_recvmsg" => Some(6),
                _ => None,
            }),
        )
        .unwrap();
        assert!(plan.degraded.is_empty());
        assert!(programs(&plan).contains(&"tcp_recvmsg6_exit"));
    }

    /// Linux 5.10: no socket-local storage or cookie helper for tracing
    /// programs, no congestion-state or error-report tracepoint, a
    /// six-parameter `tcp_recvmsg`: every program is the by-address
    /// variant, and each thing lost is named.
    #[test]
    fn kernel_without_tracing_socket_helpers_uses_by_address_programs() {
        let plan = plan_hooks(
            HOOKS,
            |tp| {
                !matches!(
                    tp,
                    "sock_send_length"
                        | "sock_recv_length"
                        | "tcp_cong_state_set"
                        | "inet_sk_error_report"
                )
            },
            |function| match function {
                "tcp_sendmsg" => Some(3),
                "tcp_recvmsg" => Some(6),
                _ => None,
            },
        )
        .unwrap();
        assert_eq!(plan.store, StateStore::ByAddress);
        let programs = programs(&plan);
        assert_eq!(programs.len(), 7, "{programs:?}");
        assert!(
            programs.iter().all(|p| p.ends_with("_by_address")),
            "{programs:?}"
        );
        assert!(programs.contains(&"tcp_recvmsg6_exit_by_address"));
        let degraded: Vec<_> = plan.degraded.iter().map(|hook| hook.tracepoint).collect();
        assert_eq!(
            degraded,
            [
                "tcp_cong_state_set",
                "inet_sk_error_report",
                "socket_local_storage"
            ]
        );
    }

    /// 5.11 has socket-local storage for tracing programs but not the
    /// cookie helper: the by-address variants, which need neither.
    #[test]
    fn storage_without_cookie_helper_is_not_enough() {
        let plan = plan_hooks(
            HOOKS,
            |_| true,
            |function| (function == TRACING_SK_STORAGE_FN).then_some(5),
        )
        .unwrap();
        assert_eq!(plan.store, StateStore::ByAddress);
        // The send/receive tracepoints (6.3+) have no by-address variant.
        assert!(
            plan.degraded
                .iter()
                .any(|hook| hook.tracepoint == "sock_send_length")
        );
    }

    /// A fallback whose function has another shape is not used: the
    /// program would read the wrong argument as the return value.
    #[test]
    fn fallback_with_other_shape_degrades_the_capability() {
        let plan = plan_hooks(
            HOOKS,
            |tp| tp != "sock_recv_length",
            with_tracing_helpers(|function| (function == "tcp_recvmsg").then_some(4)),
        )
        .unwrap();
        assert_eq!(plan.hooks.len(), HOOKS.len() - 1);
        assert_eq!(plan.degraded.len(), 1);
        assert_eq!(plan.degraded[0].tracepoint, "sock_recv_length");
        assert!(
            plan.degraded[0]
                .purpose
                .contains("recovery by received data")
        );
    }

    #[test]
    fn missing_required_tracepoint_is_an_error_naming_it() {
        let error = plan_hooks(
            HOOKS,
            |tp| tp != "tcp_retransmit_skb",
            with_tracing_helpers(|_| None),
        )
        .unwrap_err();
        assert!(
            matches!(
                error,
                CaptureError::MissingTracepoint {
                    hook: "tcp_retransmit_skb",
                    ..
                }
            ),
            "{error}"
        );
    }
}
