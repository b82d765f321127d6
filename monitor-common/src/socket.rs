//! Per-socket state kept by the kernel programs, and the pieces of it that
//! events carry.

/// Who owns a socket: the last task seen using it in process context.
///
/// `tgid == 0` means no owner is known yet (the socket was first seen in
/// softirq, e.g. it predates the daemon); userspace resolves those from
/// `/proc`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub tgid: u32,
    /// The thread that last wrote to (or connected) the socket.
    pub tid: u32,
    pub cgroup_id: u64,
    /// `task_struct.start_boottime` of the thread group leader: with `tgid`
    /// this identifies a process even after its pid is reused.
    pub start_boottime_ns: u64,
    pub comm: [u8; 16],
    /// `OWNER_SOURCE_*`: which hook recorded the owner.
    pub source: u8,
    /// `ROLE_*`: who opened the connection.
    pub role: u8,
    /// How many times another process took the socket over (fork, fd
    /// passing), saturating: non-zero means the socket is shared.
    pub process_changes: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(core::mem::size_of::<Owner>() == 48);

pub const OWNER_SOURCE_NONE: u8 = 0;
pub const OWNER_SOURCE_CONNECT: u8 = 1;
pub const OWNER_SOURCE_SEND: u8 = 2;
pub const OWNER_SOURCE_RECV: u8 = 3;
/// Found by userspace in /proc (the socket predates the daemon).
pub const OWNER_SOURCE_PROC: u8 = 4;

pub const ROLE_UNKNOWN: u8 = 0;
/// The socket connected out (CLOSE -> SYN_SENT).
pub const ROLE_CLIENT: u8 = 1;
/// The socket was accepted (SYN_RECV -> ESTABLISHED).
pub const ROLE_SERVER: u8 = 2;

/// The connection's addresses as the kernel holds them.
///
/// IPv4 addresses sit in the first four bytes of `saddr`/`daddr`; ports are
/// host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuple {
    pub family: u16,
    pub local_port: u16,
    pub remote_port: u16,
    /// TCP state (`tcp_states.h`) when the event was taken.
    pub state: u8,
    pub _pad0: u8,
    /// Inode of the socket's network namespace (`/proc/<pid>/ns/net`).
    pub netns: u32,
    pub _pad1: u32,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<Tuple>() == 48);

/// Payload activity, `bpf_ktime_get_ns` (CLOCK_MONOTONIC) nanoseconds.
///
/// The send and receive hooks refresh these only when they are older than
/// the activity granularity, so they may lag by up to that much.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    pub last_send_ns: u64,
    pub last_recv_ns: u64,
    /// When payload started flowing again after the last idle gap.
    pub burst_start_ns: u64,
    /// How long the socket had carried no payload before `burst_start_ns`.
    pub idle_before_burst_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Activity>() == 32);

/// Value of the kernel socket map, keyed by the socket cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketState {
    pub owner: Owner,
    pub activity: Activity,
    pub first_seen_ns: u64,
    pub retransmits: u32,
    /// `SOCKET_FLAG_*` bits.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<SocketState>() == 96);

/// A watched socket has retransmitted and has not made progress since; the
/// next receive or return to congestion state Open is reported.
pub const SOCKET_FLAG_RETRANSMITTING: u32 = 1 << 0;
/// The socket's ports matched the watch list once. Remembered because the
/// kernel clears the local port when it unhashes a closing socket, and a
/// server socket's last events (CLOSE, ETIMEDOUT, destroy) must still pass.
pub const SOCKET_FLAG_WATCHED: u32 = 1 << 1;
