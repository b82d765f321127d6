//! The maps shared with userspace, and the read-only globals the loader fills.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use monitor_common::{
    counters::{COUNTER_SLOTS, UnwatchedRetransmits},
    defaults::{RING_BUFFER_KIB, SOCKET_MAP_ENTRIES},
    event::SocketEvent,
    globals::{KernelOffsets, ProbeSettings, WATCHED_PORT_WORDS},
    socket::{PrimedSocket, RECENT_SLOTS, RecentSocket, SocketState},
};

/// Kernel struct offsets, resolved from BTF by the loader.
#[unsafe(no_mangle)]
pub static OFFSETS: KernelOffsets = KernelOffsets::ABSENT;

/// Behaviour switches, set by the loader.
#[unsafe(no_mangle)]
pub static SETTINGS: ProbeSettings = ProbeSettings::DEFAULT;

/// Owner and activity of each watched socket, in the socket itself: a
/// lookup is an indexed load from the socket's storage cache (no hash, no
/// global lock), and the kernel frees the value with the socket, so no
/// entry outlives its socket and nothing is ever evicted.
#[btf_map]
pub static SOCKET_STATE: SkStorage<SocketState> = SkStorage::new();

/// Where tracing programs lack socket-local storage (before Linux 5.11;
/// the `ByAddress` program variants): each watched socket's state keyed
/// by the socket's address, deleted when the socket is destroyed. Not
/// preallocated; the loader sizes it (`--socket-map-entries`) on those
/// kernels and leaves it at one entry elsewhere.
#[map]
pub static SOCKET_STATE_BY_ADDRESS: HashMap<u64, SocketState> =
    HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

/// Watched sockets that predate the daemon, written by userspace at
/// start-up and moved into `SOCKET_STATE` the first time a program sees
/// the socket. Not preallocated: it costs memory only for what it holds.
/// The loader sizes it (`--socket-map-entries`).
#[map]
pub static PRIMED_SOCKETS: HashMap<u64, PrimedSocket> =
    HashMap::with_max_entries(SOCKET_MAP_ENTRIES, BPF_F_NO_PREALLOC);

/// Retransmits of unwatched sockets by cookie (no events; userspace names
/// the owners). Only the retransmit path touches it; the LRU bounds it.
#[map]
pub static UNWATCHED_RETRANSMITS: LruHashMap<u64, UnwatchedRetransmits> =
    LruHashMap::with_max_entries(16_384, 0);

/// Watched sockets written to recently, per CPU (`RecentSocket`): a send
/// or receive on one within its granule skips the storage lookup. An
/// inlined per-CPU array lookup on kernels that inline them (6.10+).
#[map]
pub static RECENT_SOCKETS: PerCpuArray<RecentSocket> =
    PerCpuArray::with_max_entries(RECENT_SLOTS, 0);

/// Bumped whenever a watched socket starts retransmitting: recent-socket
/// notes from before it are void (that socket's next receive is progress).
#[unsafe(no_mangle)]
pub static mut RETRANSMIT_EPOCH: u64 = 0;

/// Events for watched sockets. The loader sizes it.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BUFFER_KIB * 1024, 0);

/// What the programs count instead of emitting (`monitor_common::counters`).
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// One bit per TCP port (local or remote) that is watched
/// (`monitor_common::globals::port_bit`), set by the loader: a port test is
/// one load from read-only memory and a mask.
#[unsafe(no_mangle)]
pub static WATCHED_PORT_BITS: [u64; WATCHED_PORT_WORDS] = [0; WATCHED_PORT_WORDS];

const _: () = assert!(core::mem::size_of::<SocketEvent>() % 8 == 0);

/// Each static the loader finds by name carries the name
/// `monitor_common::maps` gives it: a build error otherwise.
macro_rules! named_as_shared {
    ($($name:ident),* $(,)?) => {$(
        const _: () = {
            let _ = &raw const $name;
            assert!(monitor_common::maps::same_name(
                monitor_common::maps::$name,
                stringify!($name),
            ));
        };
    )*};
}
named_as_shared!(
    OFFSETS,
    SETTINGS,
    WATCHED_PORT_BITS,
    EVENTS,
    COUNTERS,
    PRIMED_SOCKETS,
    UNWATCHED_RETRANSMITS,
    SOCKET_STATE_BY_ADDRESS,
);

/// Adds `by` to counter `index` on this CPU.
#[inline(always)]
pub fn count(index: u32, by: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a successful per-CPU array lookup and
        // stays valid for this program run; per-CPU means no other writer.
        unsafe { *slot += by };
    }
}
