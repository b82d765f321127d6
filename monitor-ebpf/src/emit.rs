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
    socket::{SocketStore, clocks, tuple},
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
pub fn emit<S: SocketStore>(
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
    let record = entry.as_mut_ptr();
    let state = state.unwrap_or(core::ptr::null_mut());
    // The record is written field by field into the reserved entry, never
    // built on the stack first: with 176 bytes the retransmit program's
    // stack (512 bytes) would not hold it beside the socket's start-up
    // state on kernels whose state goes into a hash map.
    // SAFETY: `record` points to this run's reserved entry, sized and
    // aligned for a `SocketEvent`; every field is written exactly once
    // below, through raw pointers (nothing reads the entry before).
    unsafe {
        (&raw mut (*record).kind).write(kind);
        (&raw mut (*record).detail).write(detail);
        (&raw mut (*record).timestamp_ns).write(now);
        (&raw mut (*record).cookie).write(S::cookie(sk));
        // The pointer came from this socket's storage in this run; the
        // kernel keeps it while the socket lives. Null rather than `None`
        // here: LLVM then keeps the register defined on both paths (it
        // would spill an undefined one, which the verifier refuses).
        if !state.is_null() {
            let state = &mut *state;
            state.flags |= SOCKET_FLAG_REPORTED;
            (&raw mut (*record).owner).write(state.owner);
            (&raw mut (*record).activity).write(state.activity.to_wire(&clocks(now)));
        } else {
            (&raw mut (*record).owner).write(Owner::default());
            (&raw mut (*record).activity).write(Activity::default());
        }
        (&raw mut (*record).tuple).write(tuple(sk));
        (&raw mut (*record).tcp).write(tcp);
    }
    // A retransmit can confirm a storm only after an idle gap with nothing
    // received since (the detector requires the same): on busy connections
    // with random loss each wakeup would cost an interrupt for nothing.
    // Read back from the record, so no extra stack. A `false` here only
    // delays the record to the reader's next drain.
    // SAFETY: every field of the record was written just above.
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
