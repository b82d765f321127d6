//! Socket identity, ownership, the watch filter and per-socket storage.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_SK_STORAGE_GET_F_CREATE},
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_task, bpf_get_socket_cookie, bpf_jiffies64,
            bpf_map_update_elem, bpf_sk_storage_get, bpf_skc_to_tcp_sock,
        },
    },
};
use monitor_common::{
    counters::{LOST_SOCKET_MAP_FULL, SOCKETS_ADDED},
    globals::OFFSET_ABSENT,
    socket::{ClockPair, Owner, RecentSocket, SocketState, TickActivity, Tuple, last_receive_tick},
    tcp::AF_INET6,
};

use crate::{
    kernel::{load_btf, load_btf_16, off, ports, read, read_bytes, setting},
    maps::{
        PRIMED_SOCKETS, RETRANSMIT_EPOCH, SOCKET_STATE, SOCKET_STATE_BY_ADDRESS, WATCHED_PORT_BITS,
        count,
    },
};

/// Jiffies now: the verifier inlines this helper into one load, which
/// makes it the hot path's clock (socket activity is kept in jiffies).
#[inline(always)]
pub fn now_ticks() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_jiffies64() }
}

/// The clocks for converting jiffies to the records' nanoseconds.
#[inline(always)]
pub fn clocks(now_ns: u64) -> ClockPair {
    ClockPair {
        now_ns,
        now_ticks: now_ticks(),
        ns_per_tick: setting!(ns_per_jiffy),
    }
}

/// Whether a TCP port of `sk`, local or remote, is watched (or every port
/// is): two direct loads and two bitmap tests, all an unwatched socket pays
/// on the send, receive and state-change hooks after the protocol check.
/// `sk` as for `load_btf`.
#[inline(always)]
pub fn ports_watched(sk: *const u8) -> bool {
    let (local, remote) = ports(sk);
    either_port_watched(local, remote)
}

/// `ports_watched` for ports already loaded.
#[inline(always)]
pub fn either_port_watched(local: u16, remote: u16) -> bool {
    setting!(watch_all_ports) != 0 || port_watched(local) || port_watched(remote)
}

#[inline(always)]
fn port_watched(port: u16) -> bool {
    let (word, bit) = monitor_common::globals::port_bit(port);
    // SAFETY: `word` is a u16 shifted right by 6, below WATCHED_PORT_WORDS,
    // so the load stays inside the static; volatile, because the loader
    // sets the values, not the compile-time zeros.
    let bits =
        unsafe { core::ptr::read_volatile((&raw const WATCHED_PORT_BITS).cast::<u64>().add(word)) };
    bits & bit != 0
}

/// The recent-socket key of `sk` (`RecentSocket`): its address pair and
/// its hash with the ports, all scalars.
#[inline(always)]
pub fn recent_key(sk: *const u8, local_port: u16, remote_port: u16) -> (u64, u64) {
    // `skc_addrpair`: the remote and local IPv4 address, one u64.
    let addrs = load_btf::<u64>(sk, off!(skc_daddr));
    let hash = load_btf::<u32>(sk, off!(skc_hash));
    (
        addrs,
        RecentSocket::hash_ports(hash, local_port, remote_port),
    )
}

/// The current retransmit epoch (see `RETRANSMIT_EPOCH`).
#[inline(always)]
pub fn retransmit_epoch() -> u64 {
    // SAFETY: a plain load of a live static; a racing increment only makes
    // a recent-socket note miss, which is safe.
    unsafe { core::ptr::read_volatile(&raw const RETRANSMIT_EPOCH) }
}

/// Voids every CPU's recent-socket notes.
#[inline(always)]
pub fn bump_retransmit_epoch() {
    // SAFETY: as in `retransmit_epoch`; a lost increment between two CPUs
    // still changes the value, which is all readers compare.
    unsafe {
        let epoch = core::ptr::read_volatile(&raw const RETRANSMIT_EPOCH);
        core::ptr::write_volatile(&raw mut RETRANSMIT_EPOCH, epoch.wrapping_add(1));
    }
}

/// Where a watched socket's state lives and what names the socket in the
/// records. Chosen per kernel by the loader (which program variant it
/// attaches), so each program is compiled for one store and carries no
/// test or code of the other.
pub trait SocketStore {
    /// What names `sk` in the records; taken only when a record is written
    /// or a socket is first seen, never on the hot path.
    fn cookie(sk: *const u8) -> u64;
    /// The state of a socket that has one (a watched socket), without
    /// creating it.
    fn storage(sk: *const u8) -> Option<*mut SocketState>;
    /// `storage` for the paths where the ports no longer tell (a closing
    /// socket has lost its local port) and for events of any socket.
    fn existing_storage(sk: *const u8) -> Option<*mut SocketState>;
    /// Gives `sk` its state, starting as `initial`; `None` when refused
    /// (full or out of memory: counted). Used only after `storage` missed.
    fn create_storage(sk: *const u8, initial: &SocketState) -> Option<*mut SocketState>;
    /// Frees `sk`'s state at the socket's end where it does not go with
    /// the socket.
    fn release(sk: *const u8);
    /// The key userspace primed `sk` under (`PRIMED_SOCKETS`).
    fn primed_key(sk: *const u8) -> u64;
}

/// Linux 5.12 and newer: the state is socket-local storage (`SOCKET_STATE`,
/// tracing programs got it in 5.11) and the kernel's socket cookie (the
/// helper, 5.12) names the socket: never reused, and what sock_diag
/// reports.
pub struct LocalStorage;

impl SocketStore for LocalStorage {
    #[inline(always)]
    fn cookie(sk: *const u8) -> u64 {
        // SAFETY: `sk` is the `struct sock *` argument of a BTF tracepoint
        // or fexit program, the pointer type this helper takes for tracing
        // programs.
        unsafe { bpf_get_socket_cookie(sk as *mut _) }
    }

    #[inline(always)]
    fn storage(sk: *const u8) -> Option<*mut SocketState> {
        // SAFETY: `SOCKET_STATE` is an sk-storage map (the loader relocates
        // its address to the map); `sk` is a BTF-typed `struct sock *`,
        // which the helper takes in tracing programs; NULL value and flags
        // 0 only look up.
        let state = unsafe {
            bpf_sk_storage_get(
                core::ptr::addr_of!(SOCKET_STATE).cast_mut().cast(),
                sk as *mut _,
                core::ptr::null_mut(),
                0,
            )
        } as *mut SocketState;
        (!state.is_null()).then_some(state)
    }

    /// First one direct load: a socket that no BPF program keeps storage
    /// on has `sk_bpf_storage == NULL`, and most sockets are such.
    #[inline(always)]
    fn existing_storage(sk: *const u8) -> Option<*mut SocketState> {
        let field = off!(sk_bpf_storage);
        if field != OFFSET_ABSENT && load_btf::<u64>(sk, field) == 0 {
            return None;
        }
        Self::storage(sk)
    }

    #[inline(always)]
    fn create_storage(sk: *const u8, initial: &SocketState) -> Option<*mut SocketState> {
        // SAFETY: as in `storage`; `initial` is a whole value on the stack
        // that the helper copies into the new storage.
        let state = unsafe {
            bpf_sk_storage_get(
                core::ptr::addr_of!(SOCKET_STATE).cast_mut().cast(),
                sk as *mut _,
                (initial as *const SocketState).cast_mut().cast(),
                BPF_SK_STORAGE_GET_F_CREATE as u64,
            )
        } as *mut SocketState;
        if state.is_null() {
            count(LOST_SOCKET_MAP_FULL, 1);
            return None;
        }
        count(SOCKETS_ADDED, 1);
        Some(state)
    }

    /// The kernel frees the storage with the socket.
    #[inline(always)]
    fn release(_sk: *const u8) {}

    #[inline(always)]
    fn primed_key(sk: *const u8) -> u64 {
        Self::cookie(sk)
    }
}

/// Linux 5.10 (tracing programs have neither socket-local storage nor the
/// cookie helper): the state lives in a hash map keyed by the socket's
/// address (`SOCKET_STATE_BY_ADDRESS`), deleted when the socket is
/// destroyed, and the address names the socket: unique while the socket
/// lives, which is as long as userspace tracks it (it matches sockets to
/// sock_diag and /proc by addresses and ports instead of by cookie).
pub struct ByAddress;

impl SocketStore for ByAddress {
    #[inline(always)]
    fn cookie(sk: *const u8) -> u64 {
        sk as u64
    }

    #[inline(always)]
    fn storage(sk: *const u8) -> Option<*mut SocketState> {
        SOCKET_STATE_BY_ADDRESS.get_ptr_mut(&(sk as u64))
    }

    #[inline(always)]
    fn existing_storage(sk: *const u8) -> Option<*mut SocketState> {
        Self::storage(sk)
    }

    #[inline(always)]
    fn create_storage(sk: *const u8, initial: &SocketState) -> Option<*mut SocketState> {
        let key = sk as u64;
        // SAFETY: the map is a hash of u64 to SocketState; key and value
        // point to whole values; the helper copies both.
        let inserted = unsafe {
            bpf_map_update_elem(
                core::ptr::addr_of!(SOCKET_STATE_BY_ADDRESS)
                    .cast_mut()
                    .cast(),
                (&raw const key).cast(),
                (initial as *const SocketState).cast(),
                INSERT_ONLY,
            )
        };
        // Full (the loader's size) or out of memory: counted as refused.
        if inserted != 0 {
            count(LOST_SOCKET_MAP_FULL, 1);
            return None;
        }
        count(SOCKETS_ADDED, 1);
        Self::storage(sk)
    }

    #[inline(always)]
    fn release(sk: *const u8) {
        let _ = SOCKET_STATE_BY_ADDRESS.remove(&(sk as u64));
    }

    /// The cookie sock_diag itself stored in the socket when userspace
    /// listed it at start-up (0: never listed, so not primed).
    #[inline(always)]
    fn primed_key(sk: *const u8) -> u64 {
        let field = off!(skc_cookie);
        if field == OFFSET_ABSENT {
            return 0;
        }
        load_btf::<u64>(sk, field)
    }
}

/// A watched socket seen for the first time mid-life (it predates the
/// daemon): its storage starts from what userspace learned at start-up
/// when it did (owner, role, activity), else from `owner` and the
/// socket's own receive timestamps, so the idle gap before this moment is
/// not lost. `owner` is the current task in process context (`is_send`
/// says which hook), or no one (tgid 0) in softirq.
#[inline(always)]
pub fn first_sight<S: SocketStore>(
    sk: *const u8,
    owner: Owner,
    now: u64,
    is_send: bool,
) -> Option<*mut SocketState> {
    let mut initial = SocketState {
        owner,
        ..SocketState::default()
    };
    let cookie = S::primed_key(sk);
    if let Some(primed) = PRIMED_SOCKETS.get_ptr(&cookie) {
        // SAFETY: pointer from a lookup in this run; copied before the
        // entry is deleted.
        let primed = unsafe { *primed };
        let previous = primed.owner;
        // The same rule as a known socket's.
        if owner.tgid != 0 && previous.taken_over_by(owner.tgid, owner.tid, is_send) {
            initial.owner.role = previous.role;
            initial.owner.process_changes = previous.process_changes_after(owner.tgid);
        } else {
            initial.owner = previous;
        }
        // SAFETY: a helper without arguments.
        let now_ns = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
        initial.activity = TickActivity::from_wire(&primed.activity, &clocks(now_ns));
        let _ = PRIMED_SOCKETS.remove(&cookie);
    } else {
        initial.activity.last_recv = last_receive(sk, now);
    }
    S::create_storage(sk, &initial)
}

/// When `sk` last received anything (data or an ACK), in jiffies, from the
/// socket's own 32-bit jiffies timestamps; 0 when unknown.
#[inline(always)]
pub fn last_receive(sk: *const u8, now: u64) -> u64 {
    let tcp = tcp_sock(sk);
    if tcp.is_null() {
        return 0;
    }
    let ack = load_btf::<u32>(tcp, off!(tcp_rcv_tstamp));
    let data = load_btf::<u32>(tcp, off!(icsk_ack_lrcvtime));
    last_receive_tick(now, ack, data)
}

/// `sk` as a `struct tcp_sock *` the verifier lets programs load fields
/// of directly (they lie beyond `struct sock`); NULL when it is not a full
/// TCP socket.
#[inline(always)]
pub fn tcp_sock(sk: *const u8) -> *const u8 {
    // SAFETY: `sk` as in `SocketStore::cookie`; the helper checks the socket's type and
    // returns NULL when it is no `tcp_sock`.
    unsafe { bpf_skc_to_tcp_sock(sk as *mut _) as *const u8 }
}

/// The current task as the socket's owner. Only called in process context
/// (connect, send, receive), where the current task is the one using the
/// socket, and only when the owner changed or the socket is new.
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

/// The cgroup v2 id of `sk` (its creator's cgroup), from the socket itself:
/// retransmits run in softirq, where the current task says nothing. 0 when
/// this kernel's layout is unknown.
#[inline(always)]
pub fn socket_cgroup_id(sk: *const u8) -> u64 {
    let cgroup = load_btf::<u64>(sk, off!(sk_cgroup)) as *const u8;
    if cgroup.is_null() {
        return 0;
    }
    let node = load_btf::<u64>(cgroup, off!(cgroup_kn)) as *const u8;
    if node.is_null() {
        return 0;
    }
    load_btf::<u64>(node, off!(kernfs_node_id))
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

/// `BPF_NOEXIST` as the map helpers' flag.
pub const INSERT_ONLY: u64 = BPF_NOEXIST as u64;
