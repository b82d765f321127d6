//! One BTF tracepoint program per hook. Each hands `struct sock *` over as
//! its first argument; none trusts the current task in softirq context.
//!
//! The cost model: the send, receive, state-change and destroy hooks run
//! for every TCP socket of the host. A socket that is not watched pays a
//! protocol check, a port check (two inlined array lookups) or one load of
//! `sk->sk_bpf_storage`, and nothing else. Watched sockets keep their state
//! in socket-local storage, found through the socket itself.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, fexit},
    programs::{BtfTracePointContext, FExitContext},
};
use monitor_common::{
    counters::{
        RESETS_SENT_WITHOUT_SOCKET, RETRANSMIT_ATTEMPTS_FAILED, RETRANSMITS_BASE,
        RETRANSMITTED_SEGMENTS, SOCKETS_REMOVED, UnwatchedRetransmits,
    },
    event::{
        EVENT_DESTROY, EVENT_PROGRESS, EVENT_REPLY_AFTER_IDLE, EVENT_RESET_RECEIVED,
        EVENT_RESET_SENT, EVENT_RETRANSMIT, EVENT_RETRANSMIT_COUNTS, EVENT_SOCKET_ERROR,
        EVENT_STATE_CHANGE, PROGRESS_ACKNOWLEDGED, PROGRESS_DATA_RECEIVED, TcpSnapshot,
        pack_retransmit_counts,
    },
    retransmit::{RETRANSMIT_TIMEOUT, classify_retransmit},
    socket::{
        OWNER_SOURCE_CONNECT, OWNER_SOURCE_RECV, OWNER_SOURCE_SEND, Owner, ROLE_CLIENT,
        ROLE_SERVER, ROLE_UNKNOWN, RecentSocket, SOCKET_FLAG_REPORTED, SOCKET_FLAG_RETRANSMITTING,
        SocketState, count_retransmit, end_already_reported, one_of_kind, retransmit_counts_due,
    },
    tcp::{ETIMEDOUT, TCP_CA_OPEN, TCP_CLOSE, TCP_ESTABLISHED, TCP_SYN_RECV, TCP_SYN_SENT},
};

use crate::{
    emit::{WAKE_LATER, WAKE_NOW, WAKE_WHEN_FILLING, emit},
    kernel::{is_inet, is_inet_tcp, is_tcp, load_btf, off, ports, setting},
    maps::{RECENT_SOCKETS, UNWATCHED_RETRANSMITS, count},
    socket::{
        ByAddress, INSERT_ONLY, LocalStorage, SocketStore, bump_retransmit_epoch, current_owner,
        either_port_watched, first_sight, last_receive, net_of, now_ticks, ports_watched,
        recent_key, retransmit_epoch, socket_cgroup_id, tcp_sock, tuple,
    },
};

#[inline(always)]
fn sock_arg(ctx: &BtfTracePointContext) -> *const u8 {
    ctx.arg::<*const u8>(0)
}

// ---- process context: who owns the socket, and when payload last moved ----

/// `sock:sock_send_length(sk, ret, flags)`: after every sendmsg.
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> i32 {
    on_payload::<LocalStorage>(sock_arg(&ctx), ctx.arg(1), true);
    0
}

/// `sock:sock_recv_length(sk, ret, flags)`: after every recvmsg.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    on_payload::<LocalStorage>(sock_arg(&ctx), ctx.arg(1), false);
    0
}

// Kernels without the send/receive tracepoints (before 6.3, e.g. Debian
// 12's 6.1) get the same facts from the TCP functions' exits, still in the
// caller's context. The loader checks the argument counts in BTF first.

/// `int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)`.
#[fexit(function = "tcp_sendmsg")]
pub fn tcp_sendmsg_exit(ctx: FExitContext) -> i32 {
    // The return value follows the arguments.
    on_payload::<LocalStorage>(ctx.arg::<*const u8>(0), ctx.arg(3), true);
    0
}

/// `tcp_sendmsg_exit` for kernels before 5.11 (`ByAddress`).
#[fexit(function = "tcp_sendmsg")]
pub fn tcp_sendmsg_exit_by_address(ctx: FExitContext) -> i32 {
    on_payload::<ByAddress>(ctx.arg::<*const u8>(0), ctx.arg(3), true);
    0
}

/// `int tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len,
/// int flags, int *addr_len)`: the shape from 5.19 until the receive
/// tracepoint came (6.3); later kernels dropped `addr_len` but use the
/// tracepoint.
#[fexit(function = "tcp_recvmsg")]
pub fn tcp_recvmsg_exit(ctx: FExitContext) -> i32 {
    on_payload::<LocalStorage>(ctx.arg::<*const u8>(0), ctx.arg(5), false);
    0
}

/// `int tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len,
/// int nonblock, int flags, int *addr_len)`: the shape before 5.19.
#[fexit(function = "tcp_recvmsg")]
pub fn tcp_recvmsg6_exit(ctx: FExitContext) -> i32 {
    on_payload::<LocalStorage>(ctx.arg::<*const u8>(0), ctx.arg(6), false);
    0
}

/// `tcp_recvmsg6_exit` for kernels before 5.11 (`ByAddress`).
#[fexit(function = "tcp_recvmsg")]
pub fn tcp_recvmsg6_exit_by_address(ctx: FExitContext) -> i32 {
    on_payload::<ByAddress>(ctx.arg::<*const u8>(0), ctx.arg(6), false);
    0
}

/// The hot path: runs on every send and receive of every socket. An
/// unwatched socket leaves after the protocol and port checks; a watched
/// one costs a storage lookup and a compare, and a write only when the
/// owner changed or its activity time is a granule old.
#[inline(always)]
fn on_payload<S: SocketStore>(sk: *const u8, bytes: i32, is_send: bool) {
    // Cheapest first: what most sockets fail leaves soonest.
    if bytes <= 0 || !is_tcp(sk) {
        return;
    }
    let (local_port, remote_port) = ports(sk);
    if !either_port_watched(local_port, remote_port) || !is_inet(sk) {
        return;
    }
    let now = now_ticks();
    let (addrs, hash_ports) = recent_key(sk, local_port, remote_port);
    let epoch = retransmit_epoch();
    let recent = RECENT_SOCKETS.get_ptr_mut(RecentSocket::slot(hash_ports));
    if let Some(recent) = recent {
        // SAFETY: this CPU's slot, from a lookup in this run; per-CPU, so
        // no other writer while this program runs.
        if unsafe { (*recent).is_fresh(addrs, hash_ports, now, is_send, epoch) } {
            return;
        }
    }
    let source = if is_send {
        OWNER_SOURCE_SEND
    } else {
        OWNER_SOURCE_RECV
    };
    let Some(state) = S::storage(sk) else {
        // First seen mid-life: the socket predates connmon (or its storage
        // was refused earlier).
        let Some(state) = first_sight::<S>(sk, current_owner(source, ROLE_UNKNOWN), now, is_send)
        else {
            return;
        };
        let idle_threshold = setting!(idle_threshold_ticks);
        // SAFETY: pointer to this socket's storage, from this run.
        unsafe { (*state).activity.note(now, is_send, idle_threshold) };
        return;
    };
    // SAFETY: pointer to this socket's storage, from this run. Concurrent
    // writers on other CPUs can at worst interleave timestamps.
    let state = unsafe { &mut *state };

    let granularity = setting!(activity_granularity_ticks);
    let last = if is_send {
        state.activity.last_send
    } else {
        state.activity.last_recv
    };
    let stale = now.wrapping_sub(last) >= granularity;
    let progress = !is_send && state.flags & SOCKET_FLAG_RETRANSMITTING != 0;
    if !stale && !progress {
        note_recent(recent, (addrs, hash_ports), state, granularity, epoch);
        return;
    }
    // The owner is refreshed with the activity, at most once a granule:
    // the send that ends an idle gap is always stale, so a storm names the
    // thread that sent the stuck request.
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if state.owner.taken_over_by(tgid, tid, is_send) {
        let previous = state.owner;
        state.owner = current_owner(source, previous.role);
        state.owner.process_changes = previous.process_changes_after(tgid);
    }
    // `connmon run` wants the idle gaps flows survived (the path's idle
    // timeout is above them); judged before this receive is noted. A
    // retransmitting socket's receive is progress instead: its gap, if it
    // was a storm's, is reported with the storm.
    let survived_gap = if is_send || progress || setting!(every_state_change) != 0 {
        None
    } else {
        state
            .activity
            .gap_survived_by_receive(now, setting!(idle_threshold_ticks))
    };
    if state.activity.last_send == 0 && state.activity.last_recv == 0 {
        // The first payload since connect or accept: the handshake was the
        // flow's last packet, so the idle gap runs from the kernel's own
        // receive timestamp.
        state.activity.last_recv = last_receive(sk, now);
    }
    state
        .activity
        .note(now, is_send, setting!(idle_threshold_ticks));
    note_recent(recent, (addrs, hash_ports), state, granularity, epoch);
    if progress {
        state.flags &= !SOCKET_FLAG_RETRANSMITTING;
        emit::<S>(
            EVENT_PROGRESS,
            PROGRESS_DATA_RECEIVED,
            sk,
            Some(state),
            TcpSnapshot::default(),
            WAKE_WHEN_FILLING,
        );
    } else if let Some(gap) = survived_gap {
        // A gap in jiffies times the tick length: no overflow for any real gap
        // (and no 128-bit multiply, which BPF lacks).
        let gap_ms = gap.wrapping_mul(setting!(ns_per_jiffy)) / 1_000_000;
        emit::<S>(
            EVENT_REPLY_AFTER_IDLE,
            gap_ms.min(u32::MAX as u64) as u32,
            sk,
            Some(state),
            TcpSnapshot::default(),
            WAKE_LATER,
        );
    }
}

/// Notes in this CPU's recent-socket slot until when `state`'s activity
/// needs no write. A retransmitting socket's receives are never skipped
/// (the next one is progress).
#[inline(always)]
fn note_recent(
    recent: Option<*mut RecentSocket>,
    (addrs, hash_ports): (u64, u64),
    state: &SocketState,
    granularity: u64,
    epoch: u64,
) {
    let Some(recent) = recent else {
        return;
    };
    let retransmitting = state.flags & SOCKET_FLAG_RETRANSMITTING != 0;
    let note = RecentSocket {
        addrs,
        hash_ports,
        send_fresh_until: state.activity.last_send.wrapping_add(granularity),
        recv_fresh_until: if retransmitting {
            0
        } else {
            state.activity.last_recv.wrapping_add(granularity)
        },
        epoch,
    };
    // SAFETY: this CPU's slot, from a lookup in this run.
    unsafe { *recent = note };
}

/// `sock:inet_sock_set_state(sk, oldstate, newstate)`.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    on_state_change::<LocalStorage>(&ctx)
}

/// `inet_sock_set_state` for kernels before 5.11 (`ByAddress`).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_by_address(ctx: BtfTracePointContext) -> i32 {
    on_state_change::<ByAddress>(&ctx)
}

#[inline(always)]
fn on_state_change<S: SocketStore>(ctx: &BtfTracePointContext) -> i32 {
    let sk = sock_arg(ctx);
    if !is_tcp(sk) {
        return 0;
    }
    let old_state = ctx.arg::<i32>(1) as u8;
    let new_state = ctx.arg::<i32>(2) as u8;
    let every_state_change = setting!(every_state_change) != 0;
    let state = if ports_watched(sk) && is_inet(sk) {
        if new_state == TCP_SYN_SENT {
            // connect(): the one state change that runs in the owner's
            // context. A socket reconnecting keeps its storage.
            let owner = current_owner(OWNER_SOURCE_CONNECT, ROLE_CLIENT);
            match S::storage(sk) {
                Some(state) => {
                    // SAFETY: pointer to this socket's storage, from this run.
                    unsafe { (*state).owner = owner };
                    Some(state)
                }
                None => S::create_storage(
                    sk,
                    &SocketState {
                        owner,
                        ..SocketState::default()
                    },
                ),
            }
        } else if old_state == TCP_SYN_RECV && new_state == TCP_ESTABLISHED {
            // An accepted connection, completed in softirq: the role is
            // known, the owner is whoever first sends or receives on it.
            let mut initial = SocketState::default();
            initial.owner.role = ROLE_SERVER;
            S::create_storage(sk, &initial)
        } else if every_state_change || new_state == TCP_CLOSE {
            S::storage(sk)
        } else {
            return 0;
        }
    } else if new_state == TCP_CLOSE {
        // The kernel clears a closing socket's local port before this
        // runs: a watched server socket is known by its storage.
        match S::existing_storage(sk) {
            Some(state) => Some(state),
            None => return 0,
        }
    } else {
        return 0;
    };
    // The kernel sets sk_err before it closes a socket on error
    // (ETIMEDOUT, ECONNRESET): the CLOSE event says why.
    let errno = if new_state == TCP_CLOSE {
        load_btf::<i32>(sk, off!(sk_err))
    } else {
        0
    };
    // `connmon run` hears only a reported socket's end, once, and any
    // watched socket's timeout (a connect, zero-window probe or keepalive
    // that gave up sends no retransmit first); `trace` every move.
    let wanted = every_state_change
        || (new_state == TCP_CLOSE
            && state.is_some_and(|state| {
                // SAFETY: pointer to this socket's storage, from this run.
                let state = unsafe { &mut *state };
                let wanted = (state.flags & SOCKET_FLAG_REPORTED != 0 || errno as u32 == ETIMEDOUT)
                    && !end_already_reported(state.end_errno, errno as u32);
                if errno != 0 {
                    state.end_errno = errno as u32;
                }
                wanted
            }));
    if !wanted {
        return 0;
    }
    let snapshot = if errno != 0 {
        end_snapshot(sk)
    } else {
        TcpSnapshot::default()
    };
    emit::<S>(
        EVENT_STATE_CHANGE,
        monitor_common::event::state_change_detail(old_state, new_state, errno),
        sk,
        state,
        snapshot,
        WAKE_WHEN_FILLING,
    );
    0
}

/// How a failing socket ended: RTO retransmits in a row, unanswered
/// probes, bytes that never left the host, the peer's window. Read only at
/// a watched socket's error, never on a hot path.
#[inline(always)]
fn end_snapshot(sk: *const u8) -> TcpSnapshot {
    let tcp = tcp_sock(sk);
    if tcp.is_null() {
        return TcpSnapshot::default();
    }
    let write_seq = load_btf::<u32>(tcp, off!(tcp_write_seq));
    let snd_nxt = load_btf::<u32>(tcp, off!(tcp_snd_nxt));
    TcpSnapshot {
        snd_una: load_btf::<u32>(tcp, off!(tcp_snd_una)),
        user_timeout_ms: load_btf::<u32>(tcp, off!(icsk_user_timeout)),
        rto_retransmits: load_btf::<u8>(tcp, off!(icsk_retransmits)),
        tcp_retries2: load_btf::<u8>(net_of(sk), off!(net_tcp_retries2)),
        probes_out: load_btf::<u8>(tcp, off!(icsk_probes_out)),
        unsent_bytes: write_seq.wrapping_sub(snd_nxt),
        send_window: load_btf::<u32>(tcp, off!(tcp_snd_wnd)).min(u16::MAX as u32) as u16,
        ..TcpSnapshot::default()
    }
}

// ---- softirq / timer context: the socket's owner comes from its storage ----

/// `tcp:tcp_retransmit_skb(sk, skb[, err])`.
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: BtfTracePointContext) -> i32 {
    on_retransmit::<LocalStorage>(&ctx)
}

/// `tcp_retransmit_skb` for kernels before 5.11 (`ByAddress`).
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb_by_address(ctx: BtfTracePointContext) -> i32 {
    on_retransmit::<ByAddress>(&ctx)
}

#[inline(always)]
fn on_retransmit<S: SocketStore>(ctx: &BtfTracePointContext) -> i32 {
    let sk = sock_arg(ctx);
    let skb = ctx.arg::<*const u8>(1);
    let err: i32 = if setting!(retransmit_has_err) != 0 {
        ctx.arg(2)
    } else {
        0
    };
    let tcp = tcp_sock(sk);
    let ca_state = ca_state(tcp);
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

    let state = if ports_watched(sk) {
        S::storage(sk).or_else(|| first_sight::<S>(sk, Owner::default(), now_ticks(), false))
    } else {
        match S::existing_storage(sk) {
            Some(state) => Some(state),
            None => {
                count_unwatched_retransmit::<S>(sk, kind);
                return 0;
            }
        }
    };
    if let Some(state) = state {
        // SAFETY: pointer to this socket's storage, from this run.
        let state = unsafe { &mut *state };
        // A SYN retransmit is never a busy connection's: each reaches
        // userspace (a connect hanging on a dead path).
        if setting!(count_busy_retransmits) != 0
            && !state
                .activity
                .may_confirm_storm(setting!(idle_threshold_ticks))
            && load_btf::<u8>(sk, off!(skc_state)) != TCP_SYN_SENT
        {
            // A busy connection's retransmit cannot start a storm: count
            // it, and hand the counts over at most once a second.
            count_retransmit(&mut state.pending_retransmits, kind);
            let now = now_ticks() as u32;
            if retransmit_counts_due(
                &state.pending_retransmits,
                state.counts_sent_at,
                now,
                setting!(retransmit_counts_ticks) as u32,
            ) {
                hand_over_retransmit_counts::<S>(sk, state, now);
            }
            return 0;
        }
        if state.flags & SOCKET_FLAG_RETRANSMITTING == 0 {
            state.flags |= SOCKET_FLAG_RETRANSMITTING;
            // Recent-socket notes from before may skip this socket's next
            // receive, which is progress now: void them all.
            bump_retransmit_epoch();
        }
    }
    let mut snapshot = TcpSnapshot {
        ca_state,
        tcp_retries2: load_btf::<u8>(net_of(sk), off!(net_tcp_retries2)),
        segments,
        retransmit_kind: kind,
        ..TcpSnapshot::default()
    };
    if !tcp.is_null() {
        snapshot.snd_una = load_btf::<u32>(tcp, off!(tcp_snd_una));
        snapshot.user_timeout_ms = load_btf::<u32>(tcp, off!(icsk_user_timeout));
        snapshot.rto_retransmits = load_btf::<u8>(tcp, off!(icsk_retransmits));
        snapshot.backoff = load_btf::<u8>(tcp, off!(icsk_backoff));
        snapshot.total_retrans_low = load_btf::<u32>(tcp, off!(tcp_total_retrans)) as u8;
    }
    // Only a timeout retransmit can confirm a storm: wake the reader for it
    // (`emit` also checks the socket's activity allows one).
    let wake = if kind == RETRANSMIT_TIMEOUT {
        WAKE_NOW
    } else {
        WAKE_LATER
    };
    emit::<S>(EVENT_RETRANSMIT, err as u32, sk, state, snapshot, wake);
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
    let Some(state) = LocalStorage::existing_storage(sk) else {
        return 0;
    };
    // SAFETY: pointer to this socket's storage, from this run.
    let state = unsafe { &mut *state };
    if state.flags & SOCKET_FLAG_RETRANSMITTING == 0 {
        return 0;
    }
    state.flags &= !SOCKET_FLAG_RETRANSMITTING;
    emit::<LocalStorage>(
        EVENT_PROGRESS,
        PROGRESS_ACKNOWLEDGED,
        sk,
        Some(state),
        TcpSnapshot::default(),
        WAKE_WHEN_FILLING,
    );
    0
}

/// `tcp:tcp_receive_reset(sk)`.
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> i32 {
    emit_for_watched::<LocalStorage>(sock_arg(&ctx), EVENT_RESET_RECEIVED, 0, WAKE_NOW);
    0
}

/// `tcp_receive_reset` for kernels before 5.11 (`ByAddress`).
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset_by_address(ctx: BtfTracePointContext) -> i32 {
    emit_for_watched::<ByAddress>(sock_arg(&ctx), EVENT_RESET_RECEIVED, 0, WAKE_NOW);
    0
}

/// `tcp:tcp_send_reset(sk, skb, reason)`: `sk` is NULL for a reset that
/// answers a packet of no known socket.
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: BtfTracePointContext) -> i32 {
    on_reset_sent::<LocalStorage>(&ctx)
}

/// `tcp_send_reset` for kernels before 5.11 (`ByAddress`).
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset_by_address(ctx: BtfTracePointContext) -> i32 {
    on_reset_sent::<ByAddress>(&ctx)
}

#[inline(always)]
fn on_reset_sent<S: SocketStore>(ctx: &BtfTracePointContext) -> i32 {
    let sk = sock_arg(ctx);
    if sk.is_null() {
        count(RESETS_SENT_WITHOUT_SOCKET, 1);
        return 0;
    }
    emit_for_watched::<S>(sk, EVENT_RESET_SENT, 0, WAKE_NOW);
    0
}

/// `sock:inet_sk_error_report(sk)`: ETIMEDOUT when the kernel gives up.
#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: BtfTracePointContext) -> i32 {
    let sk = sock_arg(&ctx);
    if !is_inet_tcp(sk) {
        return 0;
    }
    let errno = load_btf::<i32>(sk, off!(sk_err)) as u32;
    // Null rather than `None` across the snapshot's helper calls: LLVM then
    // keeps the register defined on the no-storage path (as in `emit`).
    let state = LocalStorage::existing_storage(sk).unwrap_or(core::ptr::null_mut());
    if !state.is_null() {
        // SAFETY: pointer to this socket's storage, from this run.
        let state = unsafe { &mut *state };
        // A failing socket's CLOSE came first on this kernel and said it
        // (`connmon run`; `trace` shows both).
        if setting!(every_state_change) == 0 && end_already_reported(state.end_errno, errno) {
            return 0;
        }
        if errno != 0 {
            state.end_errno = errno;
        }
    } else if !ports_watched(sk) {
        return 0;
    }
    // Only a watched socket's error gets this far.
    let snapshot = end_snapshot(sk);
    let state = (!state.is_null()).then_some(state);
    emit::<LocalStorage>(EVENT_SOCKET_ERROR, errno, sk, state, snapshot, WAKE_NOW);
    0
}

/// `tcp:tcp_destroy_sock(sk)`: the socket's last event. Its storage goes
/// with the socket; a record only for a socket userspace heard of.
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: BtfTracePointContext) -> i32 {
    on_destroy::<LocalStorage>(&ctx)
}

/// `tcp_destroy_sock` for kernels before 5.11 (`ByAddress`), which also
/// frees the socket's map entry.
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy_sock_by_address(ctx: BtfTracePointContext) -> i32 {
    on_destroy::<ByAddress>(&ctx)
}

#[inline(always)]
fn on_destroy<S: SocketStore>(ctx: &BtfTracePointContext) -> i32 {
    let sk = sock_arg(ctx);
    let state = S::existing_storage(sk);
    let every_state_change = setting!(every_state_change) != 0;
    let (reported, end_errno) = match state {
        Some(state) => {
            count(SOCKETS_REMOVED, 1);
            // SAFETY: pointer to this socket's storage, from this run.
            let state = unsafe { &mut *state };
            if state.pending_retransmits != [0; 4] {
                hand_over_retransmit_counts::<S>(sk, state, now_ticks() as u32);
            }
            (state.flags & SOCKET_FLAG_REPORTED != 0, state.end_errno)
        }
        None => (false, 0),
    };
    if reported || (every_state_change && (state.is_some() || ports_watched(sk))) {
        // The end's errno again: a storm whose error or CLOSE record was
        // lost still ends with its real outcome; and the kernel's count of
        // retransmits, which shows one no record showed.
        let tcp = tcp_sock(sk);
        let snapshot = TcpSnapshot {
            total_retrans_low: if tcp.is_null() {
                0
            } else {
                load_btf::<u32>(tcp, off!(tcp_total_retrans)) as u8
            },
            ..TcpSnapshot::default()
        };
        emit::<S>(
            EVENT_DESTROY,
            end_errno,
            sk,
            state,
            snapshot,
            WAKE_WHEN_FILLING,
        );
    }
    if state.is_some() {
        S::release(sk);
    }
    0
}

/// Writes the socket's pending retransmit counts as one record.
#[inline(always)]
fn hand_over_retransmit_counts<S: SocketStore>(sk: *const u8, state: &mut SocketState, now: u32) {
    let counts = pack_retransmit_counts(state.pending_retransmits);
    state.pending_retransmits = [0; 4];
    state.counts_sent_at = now;
    emit::<S>(
        EVENT_RETRANSMIT_COUNTS,
        counts,
        sk,
        Some(state),
        TcpSnapshot::default(),
        WAKE_LATER,
    );
}

/// Resets and errors: rare, so every one of a watched socket is emitted.
/// `sk`: a non-NULL socket argument (see `load_btf`).
#[inline(always)]
fn emit_for_watched<S: SocketStore>(sk: *const u8, kind: u32, detail: u32, wake: u8) {
    let state = S::existing_storage(sk);
    if state.is_none() && !ports_watched(sk) {
        return;
    }
    emit::<S>(kind, detail, sk, state, TcpSnapshot::default(), wake);
}

/// Counts a retransmit of an unwatched socket under its cookie, in the
/// kernel: per-socket totals without an event each; userspace names the
/// owner. Not atomic: one socket's retransmits run under its lock.
#[inline(always)]
fn count_unwatched_retransmit<S: SocketStore>(sk: *const u8, kind: u8) {
    let cookie = S::cookie(sk);
    let one = one_of_kind(kind).map(u32::from);
    match UNWATCHED_RETRANSMITS.get_ptr_mut(&cookie) {
        Some(counts) => {
            // SAFETY: pointer from a lookup in this run.
            let counts = unsafe { &mut (*counts).by_kind };
            for (count, add) in counts.iter_mut().zip(one) {
                *count = count.wrapping_add(add);
            }
        }
        None => {
            let counts = UnwatchedRetransmits {
                by_kind: one,
                cgroup_id: socket_cgroup_id(sk),
                tuple: tuple(sk),
            };
            let _ = UNWATCHED_RETRANSMITS.insert(&cookie, &counts, INSERT_ONLY);
        }
    }
}

/// `icsk_ca_state` of a `tcp_sock` (NULL: 0, Open).
#[inline(always)]
fn ca_state(tcp: *const u8) -> u8 {
    if tcp.is_null() {
        return 0;
    }
    let byte = load_btf::<u8>(tcp, off!(icsk_ca_state_byte));
    let bits = off!(icsk_ca_state_bits);
    let mask = if bits >= 8 { 0xff } else { (1u32 << bits) - 1 };
    ((byte as u32 >> (off!(icsk_ca_state_shift) & 7)) & mask) as u8
}
