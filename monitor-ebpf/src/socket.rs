//! Socket identity, ownership and the socket map.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_current_cgroup_id, bpf_get_current_task, bpf_get_socket_cookie},
    },
};
use monitor_common::{
    counters::{LOST_SOCKET_MAP_FULL, SOCKETS_ADDED},
    socket::{Activity, Owner, SOCKET_FLAG_WATCHED, SocketState, Tuple},
    tcp::AF_INET6,
};

use crate::{
    kernel::{load_btf, load_btf_16, off, ports, read, read_bytes, setting},
    maps::{SOCKETS, WATCHED_PORTS, count},
};

/// The kernel's cookie for `sk`: never reused, and what sock_diag reports.
#[inline(always)]
pub fn cookie(sk: *const u8) -> u64 {
    // SAFETY: `sk` is the `struct sock *` argument of a BTF tracepoint, the
    // pointer type this helper takes for tracing programs.
    unsafe { bpf_get_socket_cookie(sk as *mut _) }
}

/// The current task as the socket's owner. Only called in process context
/// (connect, send, receive), where the current task is the one using the
/// socket.
#[inline(always)]
pub fn current_owner(source: u8, role: u8) -> Owner {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: helpers without arguments; always valid in tracing programs.
    let (cgroup_id, task) = unsafe { (bpf_get_current_cgroup_id(), bpf_get_current_task()) };
    let leader: *const u8 = read::<u64>(task as *const u8, off!(task_group_leader)) as *const u8;
    let mut owner = Owner {
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        cgroup_id,
        start_boottime_ns: read::<u64>(leader, off!(task_start_boottime)),
        comm: [0; 16],
        source,
        role,
        process_changes: 0,
        _pad: [0; 5],
    };
    // The process name is the thread group leader's comm, not the thread's.
    read_bytes(leader, off!(task_comm), &mut owner.comm);
    owner
}

/// Addresses, ports, state and network namespace of `sk` (as for
/// `load_btf`: a non-NULL BTF-typed argument).
#[inline(always)]
pub fn tuple(sk: *const u8) -> Tuple {
    let family = load_btf::<u16>(sk, off!(skc_family));
    let (local_port, remote_port) = ports(sk);
    let mut tuple = Tuple {
        family,
        local_port,
        remote_port,
        state: load_btf::<u8>(sk, off!(skc_state)),
        _pad0: 0,
        netns: load_btf::<u32>(net_of(sk), off!(net_ns_inum)),
        _pad1: 0,
        local_addr: [0; 16],
        remote_addr: [0; 16],
    };
    if family == AF_INET6 {
        tuple.local_addr = load_btf_16(sk, off!(skc_v6_rcv_saddr));
        tuple.remote_addr = load_btf_16(sk, off!(skc_v6_daddr));
    } else {
        let local = load_btf::<u32>(sk, off!(skc_rcv_saddr));
        let remote = load_btf::<u32>(sk, off!(skc_daddr));
        tuple.local_addr[..4].copy_from_slice(&local.to_ne_bytes());
        tuple.remote_addr[..4].copy_from_slice(&remote.to_ne_bytes());
    }
    tuple
}

/// `sk->skc_net`: the socket's network namespace, itself a BTF-typed
/// pointer the verifier lets `load_btf` read through.
#[inline(always)]
pub fn net_of(sk: *const u8) -> *const u8 {
    load_btf::<u64>(sk, off!(skc_net)) as *const u8
}

/// Whether events for `sk` go to userspace: its local or remote port is
/// watched (or every port is), now or earlier in its life (remembered in
/// its map entry, see `SOCKET_FLAG_WATCHED`).
#[inline(always)]
pub fn is_watched(sk: *const u8, state: Option<*mut SocketState>) -> bool {
    if setting!(watch_all_ports) != 0 {
        return true;
    }
    if let Some(state) = state {
        // SAFETY: pointer from a socket-map lookup in this run.
        if unsafe { (*state).flags } & SOCKET_FLAG_WATCHED != 0 {
            return true;
        }
    }
    let (local, remote) = ports(sk);
    let watched_port = |port: u16| {
        WATCHED_PORTS
            .get(port as u32)
            .is_some_and(|flag| *flag != 0)
    };
    let watched = watched_port(local) || watched_port(remote);
    if watched && let Some(state) = state {
        // SAFETY: as above.
        unsafe { (*state).flags |= SOCKET_FLAG_WATCHED };
    }
    watched
}

/// The map entry for `cookie`, created with `owner` when missing. `None`
/// only when the map refused the insert (counted).
#[inline(always)]
pub fn entry_or_insert(cookie: u64, now: u64, owner: Owner) -> Option<*mut SocketState> {
    if let Some(state) = SOCKETS.get_ptr_mut(cookie) {
        return Some(state);
    }
    let state = SocketState {
        owner,
        activity: Activity::default(),
        first_seen_ns: now,
        retransmits: 0,
        flags: 0,
    };
    if SOCKETS.insert(cookie, state, BPF_NOEXIST as u64).is_err() {
        // Lost a race with another CPU inserting the same socket: use theirs.
        if let Some(state) = SOCKETS.get_ptr_mut(cookie) {
            return Some(state);
        }
        // Counted, not logged: a log call is a BPF subprogram, and kernels
        // before 6.3 lose most of their state pruning across those.
        count(LOST_SOCKET_MAP_FULL, 1);
        return None;
    }
    count(SOCKETS_ADDED, 1);
    SOCKETS.get_ptr_mut(cookie)
}

/// Records payload activity at `now`: a gap of at least the idle threshold
/// since the last payload either way starts a new burst.
#[inline(always)]
pub fn note_activity(activity: &mut Activity, now: u64, is_send: bool) {
    let last_active = if activity.last_send_ns > activity.last_recv_ns {
        activity.last_send_ns
    } else {
        activity.last_recv_ns
    };
    if last_active != 0 {
        let gap = now.saturating_sub(last_active);
        if gap >= setting!(idle_threshold_ns) {
            activity.idle_before_burst_ns = gap;
            activity.burst_start_ns = now;
        }
    } else if activity.burst_start_ns == 0 {
        activity.burst_start_ns = now;
    }
    if is_send {
        activity.last_send_ns = now;
    } else {
        activity.last_recv_ns = now;
    }
}
