//! Writing events to the ring buffer.

use aya_ebpf::bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use monitor_common::{
    counters::{EVENTS_EMITTED, LOST_RINGBUF_FULL},
    event::{SocketEvent, TcpSnapshot},
    socket::{Activity, Owner, SocketState},
};

use crate::{
    maps::{EVENTS, count},
    socket::tuple,
};

/// Wake the reader now: for events that may confirm a storm. Everything
/// else waits for the reader's periodic drain, because each wakeup costs an
/// IRQ-work interrupt (about 10 µs on a VM) and the drain bounds the delay.
pub const WAKE_NOW: bool = true;
pub const WAKE_LATER: bool = false;

/// Emits one event for `sk`. Owner and activity come from the socket map
/// entry when there is one; the tuple is read fresh (ports are assigned
/// after the SYN_SENT transition, so a cached copy could be incomplete).
#[inline(always)]
pub fn emit(
    kind: u32,
    detail: u32,
    sk: *const u8,
    cookie: u64,
    now: u64,
    state: Option<*const SocketState>,
    tcp: TcpSnapshot,
    wake: bool,
) {
    let Some(mut entry) = EVENTS.reserve::<SocketEvent>(0) else {
        count(LOST_RINGBUF_FULL, 1);
        return;
    };
    let (owner, activity) = match state {
        // SAFETY: the pointer came from a socket-map lookup in this run.
        Some(state) => unsafe { ((*state).owner, (*state).activity) },
        None => (Owner::default(), Activity::default()),
    };
    entry.write(SocketEvent {
        kind,
        detail,
        timestamp_ns: now,
        cookie,
        owner,
        tuple: tuple(sk),
        activity,
        tcp,
    });
    let flags = if wake {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
    count(EVENTS_EMITTED, 1);
}
