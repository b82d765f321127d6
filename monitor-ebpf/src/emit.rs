//! Writing events to the ring buffer.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::bpf_ktime_get_ns,
};
use monitor_common::{
    counters::{EVENTS_EMITTED, LOST_RINGBUF_FULL},
    event::{EVENT_RETRANSMIT, SocketEvent, TcpSnapshot},
    globals::ring_needs_draining,
    socket::{Activity, Owner, SOCKET_FLAG_REPORTED, SocketState, may_confirm_storm},
};

use crate::{
    kernel::setting,
    maps::{EVENTS, count},
    socket::{clocks, cookie, tuple},
};

/// Wake the reader now: for events that may confirm a storm. Everything
/// else waits for the reader's periodic drain, because each wakeup costs an
/// IRQ-work interrupt (about 10 µs on a VM) and the drain bounds the delay.
pub const WAKE_NOW: u8 = 0;
pub const WAKE_LATER: u8 = 1;
/// Later, unless a quarter of the ring already waits: for the records a
/// burst brings by the thousand (ends of sockets), so the reader drains the
/// ring while it fills. A helper call: the retransmit program, tight on
/// stack, passes only the other two, and the compiler drops the check there.
pub const WAKE_WHEN_FILLING: u8 = 2;

/// Emits one event for `sk`. Owner and activity come from the socket's
/// storage when it has one, which is then marked reported (its end will be
/// reported too); the tuple is read fresh (ports are assigned after the
/// SYN_SENT transition, so a cached copy could be incomplete).
#[inline(always)]
pub fn emit(
    kind: u32,
    detail: u32,
    sk: *const u8,
    state: Option<*mut SocketState>,
    tcp: TcpSnapshot,
    wake: u8,
) {
    // A burst (thousands of sockets timing out in the same jiffy) would
    // fill the ring before the periodic drain: past a quarter full, such a
    // record wakes the reader (the kernel coalesces pending wakeups).
    let filling = wake == WAKE_WHEN_FILLING
        && ring_needs_draining(
            EVENTS.query(BPF_RB_AVAIL_DATA as u64),
            setting!(ring_wake_bytes),
        );
    let Some(mut entry) = EVENTS.reserve::<SocketEvent>(0) else {
        count(LOST_RINGBUF_FULL, 1);
        return;
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let (owner, activity) = match state {
        Some(state) => {
            // SAFETY: the pointer came from this socket's storage in this
            // run; the kernel keeps it while the socket lives.
            let state = unsafe { &mut *state };
            state.flags |= SOCKET_FLAG_REPORTED;
            (state.owner, state.activity.to_wire(&clocks(now)))
        }
        None => (Owner::default(), Activity::default()),
    };
    // Field by field into the reserved record: a whole `SocketEvent` built
    // first would take 176 bytes of the programs' 512-byte stack.
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points to the reserved, writable ring-buffer space
    // of one `SocketEvent`; every field is written before the submit.
    unsafe {
        (*record).kind = kind;
        (*record).detail = detail;
        (*record).timestamp_ns = now;
        (*record).cookie = cookie(sk);
        (*record).owner = owner;
        (*record).tuple = tuple(sk);
        (*record).activity = activity;
        (*record).tcp = tcp;
    }
    // A retransmit can confirm a storm only after an idle gap with nothing
    // received since (the detector requires the same): on busy connections
    // with random loss each wakeup would cost an interrupt for nothing.
    // Read back from the record, so no extra stack. A `false` here only
    // delays the record to the reader's next drain.
    // SAFETY: the record was fully written just above.
    let wake = wake == WAKE_NOW
        && (kind != EVENT_RETRANSMIT
            || may_confirm_storm(
                unsafe { &entry.assume_init_ref().activity },
                setting!(idle_threshold_ns),
            ));
    let wake = wake || filling;
    let flags = if wake {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
    count(EVENTS_EMITTED, 1);
}
