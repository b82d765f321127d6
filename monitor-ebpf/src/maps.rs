//! The maps shared with userspace, and the read-only globals the loader fills.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
};
use monitor_common::{
    counters::{COUNTER_SLOTS, RetransmitOwnerKey},
    event::SocketEvent,
    globals::{KernelOffsets, ProbeSettings},
    socket::SocketState,
};

/// Kernel struct offsets, resolved from BTF by the loader.
#[unsafe(no_mangle)]
pub static OFFSETS: KernelOffsets = KernelOffsets::ABSENT;

/// Behaviour switches, set by the loader.
#[unsafe(no_mangle)]
pub static SETTINGS: ProbeSettings = ProbeSettings::DEFAULT;

/// Per-socket owner and activity, keyed by socket cookie. Cookies are never
/// reused, so an entry can never describe a different socket than its key,
/// even if `tcp_destroy_sock` was missed; the LRU bounds what such misses
/// cost. The loader sizes it (`--socket-map-entries`).
#[map]
pub static SOCKETS: LruHashMap<u64, SocketState> = LruHashMap::with_max_entries(65_536, 0);

/// Events for watched sockets. The loader sizes it.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// What the programs count instead of emitting (`monitor_common::counters`).
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Retransmits of unwatched sockets by owner, kind and role (no events).
/// Per-CPU: counting needs no atomics; userspace sums the CPUs.
#[map]
pub static RETRANSMITS_BY_OWNER: LruPerCpuHashMap<RetransmitOwnerKey, u64> =
    LruPerCpuHashMap::with_max_entries(4096, 0);

/// Non-zero at index `port` when that TCP port (local or remote) is watched.
#[map]
pub static WATCHED_PORTS: Array<u8> = Array::with_max_entries(65_536, 0);

const _: () = assert!(core::mem::size_of::<SocketEvent>() % 8 == 0);

/// Adds `by` to counter `index` on this CPU.
#[inline(always)]
pub fn count(index: u32, by: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a successful per-CPU array lookup and
        // stays valid for this program run; per-CPU means no other writer.
        unsafe { *slot += by };
    }
}
