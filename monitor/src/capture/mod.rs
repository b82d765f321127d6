//! Kernel capture: load the programs with this kernel's offsets, attach the
//! hooks this kernel has, and hand out the ring buffer and counters.

pub mod counters;
pub mod hooks;
pub mod offsets;
pub mod reader;
pub mod stats;

use std::{collections::BTreeSet, io, path::PathBuf};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, ProgramError},
};
use monitor_common::globals::ProbeSettings;
use tracing::{info, warn};

pub use self::hooks::{HOOKS, Hook};
use self::offsets::KernelBtf;

/// `BPF_NOEXIST` (include/uapi/linux/bpf.h): insert only if absent.
const BPF_NOEXIST: u64 = 1;

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

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            watched_ports: BTreeSet::from([6379]),
            watch_all_ports: false,
            idle_threshold_ns: 30_000_000_000,
            socket_map_entries: 65_536,
            ring_buffer_bytes: 1 << 20,
            fail_fast: false,
        }
    }
}

/// Loaded and attached programs. Dropping it detaches every program.
pub struct Capture {
    ebpf: Ebpf,
    attached: Vec<&'static str>,
    degraded: Vec<String>,
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

        let available: Vec<&'static Hook> = HOOKS
            .iter()
            .filter(|hook| kernel_btf.tracepoint_args(hook.tracepoint).is_some())
            .collect();
        let mut degraded = Vec::new();
        for hook in HOOKS
            .iter()
            .filter(|hook| !available.iter().any(|a| a.tracepoint == hook.tracepoint))
        {
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
            degraded.push(format!("{}: {}", hook.tracepoint, hook.purpose));
        }

        let settings = ProbeSettings {
            // Refresh activity times at a quarter of the idle threshold, at
            // most once a second: precise enough, and rare writes.
            activity_granularity_ns: (config.idle_threshold_ns / 4).clamp(1_000_000, 1_000_000_000),
            idle_threshold_ns: config.idle_threshold_ns,
            watch_all_ports: u32::from(config.watch_all_ports),
            retransmit_has_err: u32::from(
                kernel_btf.tracepoint_args("tcp_retransmit_skb") == Some(3),
            ),
            ns_per_jiffy: ns_per_jiffy(),
        };

        let aya_btf = Btf::from_sys_fs().map_err(|source| CaptureError::Btf {
            path: btf_path.clone(),
            reason: source.to_string(),
        })?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&aya_btf))
            .override_global("OFFSETS", &offsets, true)
            .override_global("SETTINGS", &settings, true)
            .map_max_entries("SOCKETS", config.socket_map_entries)
            .map_max_entries("EVENTS", config.ring_buffer_bytes)
            .load(PROGRAMS_OBJECT)
            .map_err(load_error)?;

        // The kernel programs' own warnings (e.g. a full socket map) go to
        // our log; a missing logger is not fatal.
        match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => spawn_kernel_logger(logger),
            Err(error) => warn!(%error, "kernel program logging unavailable"),
        }

        fill_watched_ports(&mut ebpf, &config.watched_ports)?;

        let mut attached = Vec::new();
        let mut program_fds = Vec::new();
        for hook in available {
            let program: &mut BtfTracePoint = ebpf
                .program_mut(hook.program)
                .ok_or_else(|| {
                    CaptureError::Load(format!("program {} missing from the object", hook.program))
                })?
                .try_into()
                .map_err(|error: ProgramError| CaptureError::Load(error.to_string()))?;
            program
                .load(hook.tracepoint, &aya_btf)
                .map_err(|error| program_error(hook.tracepoint, error))?;
            program
                .attach()
                .map_err(|error| program_error(hook.tracepoint, error))?;
            // A second fd on the program, for its statistics in fdinfo.
            match program
                .fd()
                .and_then(|fd| fd.try_clone().map_err(ProgramError::from))
            {
                Ok(fd) => program_fds.push((hook.program, fd)),
                Err(error) => {
                    warn!(program = hook.program, %error, "no statistics for this program")
                }
            }
            attached.push(hook.tracepoint);
        }
        info!(hooks = ?attached, "kernel programs attached");
        Ok(Self {
            ebpf,
            attached,
            degraded,
            program_fds,
        })
    }

    /// Tracepoints attached, in attach order.
    pub fn attached(&self) -> &[&'static str] {
        &self.attached
    }

    /// Capabilities lost to missing optional hooks.
    pub fn degraded(&self) -> &[String] {
        &self.degraded
    }

    /// Writes sockets found at start-up (they predate the programs) into the
    /// socket map. Entries the programs created meanwhile are newer and
    /// win. Returns how many were added.
    pub fn prime_sockets(
        &mut self,
        known: &[crate::attribution::existing::KnownSocket],
    ) -> Result<usize, CaptureError> {
        let map = self.ebpf.map_mut("SOCKETS").ok_or(CaptureError::Map {
            name: "SOCKETS",
            reason: "missing from the object".into(),
        })?;
        let mut sockets: aya::maps::HashMap<
            &mut MapData,
            u64,
            monitor_common::socket::SocketState,
        > = aya::maps::HashMap::try_from(map).map_err(|error| CaptureError::Map {
            name: "SOCKETS",
            reason: error.to_string(),
        })?;
        let mut added = 0;
        for socket in known {
            // An entry the programs made meanwhile is fresher: don't replace it.
            if sockets
                .insert(socket.cookie, socket.state, BPF_NOEXIST)
                .is_ok()
            {
                added += 1;
            }
        }
        Ok(added)
    }

    /// Statistics of the attached programs. Turns the kernel's run-time
    /// accounting on while the reader lives (it costs a clock read per run).
    pub fn program_stats(&mut self) -> stats::ProgramStatsReader {
        let enabled = match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => Some(fd),
            Err(error) => {
                warn!(%error, "BPF run-time statistics unavailable");
                None
            }
        };
        stats::ProgramStatsReader::new(std::mem::take(&mut self.program_fds), enabled)
    }

    /// Takes the per-owner retransmit counts of unwatched sockets (once).
    pub fn take_retransmits_by_owner(
        &mut self,
    ) -> Result<
        aya::maps::PerCpuHashMap<MapData, monitor_common::counters::RetransmitOwnerKey, u64>,
        CaptureError,
    > {
        let map = self
            .ebpf
            .take_map("RETRANSMITS_BY_OWNER")
            .ok_or(CaptureError::Map {
                name: "RETRANSMITS_BY_OWNER",
                reason: "already taken".into(),
            })?;
        aya::maps::PerCpuHashMap::try_from(map).map_err(|error| CaptureError::Map {
            name: "RETRANSMITS_BY_OWNER",
            reason: error.to_string(),
        })
    }

    /// Takes the socket map (once, after `prime_sockets`), to count its live
    /// entries: with the insert and delete counters that gives the LRU's
    /// evictions.
    pub fn take_socket_map(
        &mut self,
    ) -> Result<aya::maps::HashMap<MapData, u64, monitor_common::socket::SocketState>, CaptureError>
    {
        let map = self.ebpf.take_map("SOCKETS").ok_or(CaptureError::Map {
            name: "SOCKETS",
            reason: "already taken".into(),
        })?;
        aya::maps::HashMap::try_from(map).map_err(|error| CaptureError::Map {
            name: "SOCKETS",
            reason: error.to_string(),
        })
    }

    /// Takes the event ring buffer (once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, CaptureError> {
        let map = self.ebpf.take_map("EVENTS").ok_or(CaptureError::Map {
            name: "EVENTS",
            reason: "already taken".into(),
        })?;
        RingBuf::try_from(map).map_err(|error| CaptureError::Map {
            name: "EVENTS",
            reason: error.to_string(),
        })
    }

    /// Takes the kernel counters (once).
    pub fn take_counters(&mut self) -> Result<counters::KernelCounters, CaptureError> {
        let map = self.ebpf.take_map("COUNTERS").ok_or(CaptureError::Map {
            name: "COUNTERS",
            reason: "already taken".into(),
        })?;
        let array = PerCpuArray::try_from(map).map_err(|error| CaptureError::Map {
            name: "COUNTERS",
            reason: error.to_string(),
        })?;
        Ok(counters::KernelCounters::new(array))
    }
}

/// The kernel tick: the coarse clocks advance once per jiffy, so their
/// resolution is 1e9 / CONFIG_HZ. 0 (unknown) switches the estimate off.
fn ns_per_jiffy() -> u64 {
    let mut resolution = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `resolution` is a valid, writable timespec for the call.
    let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut resolution) };
    if rc != 0 || resolution.tv_sec != 0 {
        return 0;
    }
    u64::try_from(resolution.tv_nsec).unwrap_or(0)
}

fn fill_watched_ports(ebpf: &mut Ebpf, ports: &BTreeSet<u16>) -> Result<(), CaptureError> {
    let map = ebpf.map_mut("WATCHED_PORTS").ok_or(CaptureError::Map {
        name: "WATCHED_PORTS",
        reason: "missing from the object".into(),
    })?;
    let mut array: Array<&mut MapData, u8> =
        Array::try_from(map).map_err(|error| CaptureError::Map {
            name: "WATCHED_PORTS",
            reason: error.to_string(),
        })?;
    for &port in ports {
        array
            .set(u32::from(port), 1, 0)
            .map_err(|error| CaptureError::Map {
                name: "WATCHED_PORTS",
                reason: error.to_string(),
            })?;
    }
    Ok(())
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
        ProgramError::LoadError { io_error, .. }
            if io_error.kind() == io::ErrorKind::PermissionDenied =>
        {
            CaptureError::Privilege {
                call: format!("bpf(BPF_PROG_LOAD) for {hook}"),
                source: io::Error::from(io_error.kind()),
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

fn spawn_kernel_logger(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer's fd, which stays open and the
    // same until the logger (moved into the AsyncFd) is dropped with it.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let Ok(mut logger) = registered else {
        warn!("kernel program logging unavailable: cannot poll its buffer");
        return;
    };
    tokio::spawn(async move {
        while let Ok(mut guard) = logger.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}
