//! One BTF tracepoint program per hook. Each hands `struct sock *` over as
//! its first argument; none trusts the current task in softirq context.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_jiffies64},
    macros::{btf_tracepoint, fexit},
    programs::{BtfTracePointContext, FExitContext},
};
use monitor_common::{
    counters::{
        RESETS_SENT_WITHOUT_SOCKET, RETRANSMIT_ATTEMPTS_FAILED, RETRANSMITS_BASE,
        RETRANSMITTED_SEGMENTS, RetransmitOwnerKey, SOCKETS_REMOVED,
    },
    event::{
        EVENT_DESTROY, EVENT_PROGRESS, EVENT_RESET_RECEIVED, EVENT_RESET_SENT, EVENT_RETRANSMIT,
        EVENT_SOCKET_ERROR, EVENT_STATE_CHANGE, PROGRESS_ACKNOWLEDGED, PROGRESS_DATA_RECEIVED,
        TcpSnapshot,
    },
    retransmit::{RETRANSMIT_TIMEOUT, classify_retransmit},
    socket::{
        OWNER_SOURCE_CONNECT, OWNER_SOURCE_NONE, OWNER_SOURCE_RECV, OWNER_SOURCE_SEND, ROLE_CLIENT,
        ROLE_SERVER, ROLE_UNKNOWN, SOCKET_FLAG_RETRANSMITTING,
    },
    tcp::{TCP_CA_OPEN, TCP_CLOSE, TCP_ESTABLISHED, TCP_SYN_RECV, TCP_SYN_SENT},
};

use crate::{
    emit::{WAKE_LATER, WAKE_NOW, emit},
    kernel::{is_inet_tcp, load_btf, off, read, setting},
    maps::{RETRANSMITS_BY_OWNER, SOCKETS, count},
    socket::{cookie, current_owner, entry_or_insert, is_watched, net_of, note_activity},
};

/// CLOCK_MONOTONIC nanoseconds.
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a helper without arguments, valid in every program type.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn sock_arg(ctx: &BtfTracePointContext) -> *const u8 {
    ctx.arg::<*const u8>(0)
}

// ---- process context: who owns the socket, and when payload last moved ----

/// `sock:sock_send_length(sk, ret, flags)`: after every sendmsg.
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> i32 {
    on_payload(sock_arg(&ctx), ctx.arg(1), true);
    0
}

/// `sock:sock_recv_length(sk, ret, flags)`: after every recvmsg.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    on_payload(sock_arg(&ctx), ctx.arg(1), false);
    0
}

// Kernels without the send/receive tracepoints (before 6.3, e.g. Debian
// 12's 6.1) get the same facts from the TCP functions' exits, still in the
// caller's context. The loader checks the argument counts in BTF first.

/// `int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)`.
#[fexit(function = "tcp_sendmsg")]
pub fn tcp_sendmsg_exit(ctx: FExitContext) -> i32 {
    // The return value follows the arguments.
    on_payload(ctx.arg::<*const u8>(0), ctx.arg(3), true);
    0
}

/// `int tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len,
/// int flags, int *addr_len)`: the shape from 5.19 until the receive
/// tracepoint came (6.3); later kernels dropped `addr_len` but use the
/// tracepoint.
#[fexit(function = "tcp_recvmsg")]
pub fn tcp_recvmsg_exit(ctx: FExitContext) -> i32 {
    on_payload(ctx.arg::<*const u8>(0), ctx.arg(5), false);
    0
}

/// The hot path: runs on every send and receive of every socket. Look up
/// first; write only when the owner changed or the activity time is older
/// than the granularity.
#[inline(always)]
fn on_payload(sk: *const u8, bytes: i32, is_send: bool) {
    if bytes <= 0 || !is_inet_tcp(sk) {
        return;
    }
    let cookie = cookie(sk);
    let now = now_ns();
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    let source = if is_send {
        OWNER_SOURCE_SEND
    } else {
        OWNER_SOURCE_RECV
    };

    let Some(state) = SOCKETS.get_ptr_mut(cookie) else {
        let Some(state) = entry_or_insert(cookie, now, current_owner(source, ROLE_UNKNOWN)) else {
            return;
        };
        // SAFETY: pointer from a socket-map lookup in this run.
        let activity = unsafe { &mut (*state).activity };
        // First seen mid-life (older than connmon, or evicted from the map
        // while idle): the kernel's own receive timestamps say how long it
        // has been quiet, so the idle gap before this send is not lost.
        if is_send && activity.last_recv_ns == 0 && activity.last_send_ns == 0 {
            activity.last_recv_ns = last_receive_ns(sk, now);
        }
        note_activity(activity, now, is_send);
        return;
    };
    // SAFETY: pointer from a socket-map lookup in this run. Concurrent
    // writers on other CPUs can at worst interleave timestamps.
    let state = unsafe { &mut *state };

    // The writer names the thread; a reader only takes over a socket that
    // another process (or nobody) owned.
    let owner_changed = if is_send {
        state.owner.tgid != tgid || state.owner.tid != tid
    } else {
        state.owner.tgid != tgid
    };
    let last = if is_send {
        state.activity.last_send_ns
    } else {
        state.activity.last_recv_ns
    };
    let stale = now.saturating_sub(last) >= setting!(activity_granularity_ns);
    let progress = !is_send && state.flags & SOCKET_FLAG_RETRANSMITTING != 0;
    if !owner_changed && !stale && !progress {
        return;
    }
    if owner_changed {
        let previous = state.owner;
        state.owner = current_owner(source, previous.role);
        let another_process = previous.tgid != 0 && previous.tgid != tgid;
        state.owner.process_changes = previous
            .process_changes
            .saturating_add(u8::from(another_process));
    }
    note_activity(&mut state.activity, now, is_send);
    if progress {
        state.flags &= !SOCKET_FLAG_RETRANSMITTING;
        emit(
            EVENT_PROGRESS,
            PROGRESS_DATA_RECEIVED,
            sk,
            cookie,
            now,
            Some(state),
            TcpSnapshot::default(),
            WAKE_LATER,
        );
    }
}

/// When `sk` last received anything (data or an ACK), from the socket's
/// jiffies timestamps, in `now`'s clock; 0 when unknown.
#[inline(always)]
fn last_receive_ns(sk: *const u8, now: u64) -> u64 {
    let ns_per_jiffy = setting!(ns_per_jiffy);
    let ack = read::<u32>(sk, off!(tcp_rcv_tstamp));
    let data = read::<u32>(sk, off!(icsk_ack_lrcvtime));
    // Both zero: unreadable (or the jiffies counter's own zero, harmless).
    if ns_per_jiffy == 0 || (ack == 0 && data == 0) {
        return 0;
    }
    // SAFETY: a helper without arguments.
    let jiffies = unsafe { bpf_jiffies64() } as u32;
    // The more recent of the two, on wrapping 32-bit jiffies.
    let since_ack = jiffies.wrapping_sub(ack);
    let since_data = jiffies.wrapping_sub(data);
    let quiet = if since_ack < since_data {
        since_ack
    } else {
        since_data
    };
    if quiet > u32::MAX / 2 {
        return 0;
    }
    now.saturating_sub(u64::from(quiet) * ns_per_jiffy)
}

/// `sock:inet_sock_set_state(sk, oldstate, newstate)`.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let sk = sock_arg(&ctx);
    if !is_inet_tcp(sk) {
        return 0;
    }
    let old_state = ctx.arg::<i32>(1) as u8;
    let new_state = ctx.arg::<i32>(2) as u8;
    let cookie = cookie(sk);
    let now = now_ns();

    let state = if new_state == TCP_SYN_SENT {
        // connect(): the one state change that runs in the owner's context.
        let owner = current_owner(OWNER_SOURCE_CONNECT, ROLE_CLIENT);
        entry_or_insert(cookie, now, owner).inspect(|&state| {
            // SAFETY: pointer from a socket-map lookup in this run.
            unsafe { (*state).owner = owner };
        })
    } else if old_state == TCP_SYN_RECV && new_state == TCP_ESTABLISHED {
        // An accepted connection, completed in softirq: the role is known,
        // the owner is whoever first sends or receives on it.
        let mut owner = monitor_common::socket::Owner::default();
        owner.source = OWNER_SOURCE_NONE;
        owner.role = ROLE_SERVER;
        entry_or_insert(cookie, now, owner)
    } else {
        SOCKETS.get_ptr_mut(cookie)
    };
    let wanted =
        setting!(every_state_change) != 0 || new_state == TCP_ESTABLISHED || new_state == TCP_CLOSE;
    if wanted && is_watched(sk, state) {
        // The kernel sets sk_err before it closes a socket on error
        // (ETIMEDOUT, ECONNRESET): the CLOSE event says why.
        let errno = if new_state == TCP_CLOSE {
            load_btf::<i32>(sk, off!(sk_err))
        } else {
            0
        };
        let detail = (errno as u32 & 0xffff) << 16 | (old_state as u32) << 8 | new_state as u32;
        emit(
            EVENT_STATE_CHANGE,
            detail,
            sk,
            cookie,
            now,
            state.map(|s| s as *const _),
            TcpSnapshot::default(),
            WAKE_LATER,
        );
    }
    0
}

// ---- softirq / timer context: the socket's owner comes from the map ----

/// `tcp:tcp_retransmit_skb(sk, skb[, err])`.
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: BtfTracePointContext) -> i32 {
    let sk = sock_arg(&ctx);
    let skb = ctx.arg::<*const u8>(1);
    let err: i32 = if setting!(retransmit_has_err) != 0 {
        ctx.arg(2)
    } else {
        0
    };
    let cookie = cookie(sk);
    let now = now_ns();

    let ca_state = ca_state(sk);
    let kind = classify_retransmit(ca_state);
    count(RETRANSMITS_BASE + kind as u32, 1);
    let segments = if err == 0 {
        let cb = off!(skb_cb);
        // A successful retransmit sends at least one segment.
        // `cb` is a byte array inside `struct sk_buff`: a direct load.
        let segs = load_btf::<u16>(skb, cb.wrapping_add(off!(tcp_skb_cb_gso_segs))).max(1);
        count(RETRANSMITTED_SEGMENTS, segs as u64);
        segs
    } else {
        count(RETRANSMIT_ATTEMPTS_FAILED, 1);
        0
    };

    let state = entry_or_insert(cookie, now, Default::default());
    if let Some(state) = state {
        // SAFETY: pointer from a socket-map lookup in this run.
        unsafe { (*state).retransmits = (*state).retransmits.wrapping_add(1) };
    }
    if !is_watched(sk, state) {
        count_unwatched_retransmit(state, kind);
        return 0;
    }
    if let Some(state) = state {
        // SAFETY: as above.
        unsafe { (*state).flags |= SOCKET_FLAG_RETRANSMITTING };
    }
    let tcp = TcpSnapshot {
        snd_una: read::<u32>(sk, off!(tcp_snd_una)),
        user_timeout_ms: read::<u32>(sk, off!(icsk_user_timeout)),
        rto_retransmits: read::<u8>(sk, off!(icsk_retransmits)),
        backoff: read::<u8>(sk, off!(icsk_backoff)),
        ca_state,
        tcp_retries2: tcp_retries2(sk),
        segments,
        retransmit_kind: kind,
        _pad: 0,
    };
    // Only a timeout retransmit can confirm a storm: wake the reader for it
    // (`emit` also checks the socket's activity allows one).
    let wake = if kind == RETRANSMIT_TIMEOUT {
        WAKE_NOW
    } else {
        WAKE_LATER
    };
    emit(
        EVENT_RETRANSMIT,
        err as u32,
        sk,
        cookie,
        now,
        state.map(|s| s as *const _),
        tcp,
        wake,
    );
    0
}

/// `tcp:tcp_cong_state_set(sk, ca_state)`: a retransmitting socket whose
/// congestion state returns to Open has had its data acknowledged.
#[btf_tracepoint(function = "tcp_cong_state_set")]
pub fn tcp_cong_state_set(ctx: BtfTracePointContext) -> i32 {
    let new_ca_state = ctx.arg::<u64>(1) as u8;
    if new_ca_state != TCP_CA_OPEN {
        return 0;
    }
    let sk = sock_arg(&ctx);
    let cookie = cookie(sk);
    let Some(state) = SOCKETS.get_ptr_mut(cookie) else {
        return 0;
    };
    // SAFETY: pointer from a socket-map lookup in this run.
    let state = unsafe { &mut *state };
    if state.flags & SOCKET_FLAG_RETRANSMITTING == 0 {
        return 0;
    }
    state.flags &= !SOCKET_FLAG_RETRANSMITTING;
    emit(
        EVENT_PROGRESS,
        PROGRESS_ACKNOWLEDGED,
        sk,
        cookie,
        now_ns(),
        Some(state),
        TcpSnapshot::default(),
        WAKE_LATER,
    );
    0
}

/// `tcp:tcp_receive_reset(sk)`.
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> i32 {
    emit_for_watched(sock_arg(&ctx), EVENT_RESET_RECEIVED, 0, WAKE_NOW);
    0
}

/// `tcp:tcp_send_reset(sk, skb, reason)`: `sk` is NULL for a reset that
/// answers a packet of no known socket.
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: BtfTracePointContext) -> i32 {
    let sk = sock_arg(&ctx);
    if sk.is_null() {
        count(RESETS_SENT_WITHOUT_SOCKET, 1);
        return 0;
    }
    emit_for_watched(sk, EVENT_RESET_SENT, 0, WAKE_NOW);
    0
}

/// `sock:inet_sk_error_report(sk)`: ETIMEDOUT when the kernel gives up.
#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: BtfTracePointContext) -> i32 {
    let sk = sock_arg(&ctx);
    if !is_inet_tcp(sk) {
        return 0;
    }
    let errno = load_btf::<i32>(sk, off!(sk_err));
    emit_for_watched(sk, EVENT_SOCKET_ERROR, errno as u32, WAKE_NOW);
    0
}

/// `tcp:tcp_destroy_sock(sk)`: the socket's last event; its entry goes.
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: BtfTracePointContext) -> i32 {
    let sk = sock_arg(&ctx);
    emit_for_watched(sk, EVENT_DESTROY, 0, WAKE_LATER);
    let cookie = cookie(sk);
    if SOCKETS.remove(cookie).is_ok() {
        count(SOCKETS_REMOVED, 1);
    }
    0
}

/// `sk`: a non-NULL socket argument (see `load_btf`).
#[inline(always)]
fn emit_for_watched(sk: *const u8, kind: u32, detail: u32, wake: bool) {
    let cookie = cookie(sk);
    let state = SOCKETS.get_ptr_mut(cookie);
    if !is_watched(sk, state) {
        return;
    }
    emit(
        kind,
        detail,
        sk,
        cookie,
        now_ns(),
        state.map(|s| s as *const _),
        TcpSnapshot::default(),
        wake,
    );
}

/// Aggregates a retransmit of an unwatched socket by its owner, in the
/// kernel: per-process totals without an event each.
#[inline(always)]
fn count_unwatched_retransmit(state: Option<*mut monitor_common::socket::SocketState>, kind: u8) {
    let mut key = RetransmitOwnerKey {
        kind,
        ..RetransmitOwnerKey::default()
    };
    if let Some(state) = state {
        // SAFETY: pointer from a socket-map lookup in this run.
        let owner = unsafe { &(*state).owner };
        key.cgroup_id = owner.cgroup_id;
        key.comm = owner.comm;
        key.role = owner.role;
    }
    match RETRANSMITS_BY_OWNER.get_ptr_mut(&key) {
        // SAFETY: pointer to this CPU's slot from a lookup in this run;
        // per-CPU, so no other writer.
        Some(count) => unsafe { *count += 1 },
        None => {
            let _ = RETRANSMITS_BY_OWNER.insert(&key, &1, 0);
        }
    }
}

#[inline(always)]
fn ca_state(sk: *const u8) -> u8 {
    let byte = read::<u8>(sk, off!(icsk_ca_state_byte));
    let bits = off!(icsk_ca_state_bits);
    let mask = if bits >= 8 { 0xff } else { (1u32 << bits) - 1 };
    ((byte as u32 >> (off!(icsk_ca_state_shift) & 7)) & mask) as u8
}

#[inline(always)]
fn tcp_retries2(sk: *const u8) -> u8 {
    load_btf::<u8>(net_of(sk), off!(net_tcp_retries2))
}
