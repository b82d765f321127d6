//! Typed events: what the decoder makes of the kernel's records. Everything
//! downstream (socket table, detection, outputs) works on these.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::Serialize;

/// A process: pid plus start time, so a reused pid is a different process.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ProcessRef {
    pub pid: u32,
    /// The thread that last wrote to (or connected) the socket.
    pub tid: u32,
    /// Process name (thread group leader's comm).
    pub comm: String,
    pub cgroup_id: u64,
    /// Boot-time nanoseconds when the process started.
    pub start_boottime_ns: u64,
    /// Which hook recorded the owner.
    pub source: OwnerSource,
    /// The socket changed hands between processes (fork, fd passing): the
    /// owner is the last process that used it.
    pub shared: bool,
}

impl ProcessRef {
    /// The process a kernel-side `Owner` names (from a record or from
    /// /proc), found by `source`; `None` when it names none (tgid 0).
    pub fn from_owner(
        owner: &monitor_common::socket::Owner,
        source: OwnerSource,
        shared: bool,
    ) -> Option<Self> {
        (owner.tgid != 0).then(|| Self {
            pid: owner.tgid,
            tid: owner.tid,
            comm: comm_to_string(&owner.comm),
            cgroup_id: owner.cgroup_id,
            start_boottime_ns: owner.start_boottime_ns,
            source,
            shared,
        })
    }
}

/// A kernel comm: NUL-terminated within 16 bytes, not necessarily UTF-8.
pub fn comm_to_string(comm: &[u8; 16]) -> String {
    let len = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..len]).into_owned()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerSource {
    Connect,
    Send,
    Receive,
    /// Found in /proc: the socket predates connmon or was never used in
    /// process context while watched.
    Proc,
}

/// Who opened the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Client,
    Server,
    Unknown,
}

/// How a retransmit was triggered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetransmitKind {
    /// The RTO timer fired: nothing was acknowledged for a whole RTO.
    Timeout,
    Fast,
    TailLossProbe,
    Unknown,
}

impl RetransmitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Fast => "fast",
            Self::TailLossProbe => "tail_loss_probe",
            Self::Unknown => "unknown",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Progress {
    DataReceived,
    Acknowledged,
}

/// A TCP state by its kernel number, printed by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcpState(pub u8);

impl TcpState {
    pub fn name(self) -> &'static str {
        monitor_common::tcp::tcp_state_name(self.0)
    }
}

impl Serialize for TcpState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// The connection an event is about. The network namespace is part of the
/// identity: the same addresses in two namespaces are two connections.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Connection {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub netns: u32,
}

impl Connection {
    pub fn from_raw(
        family: u16,
        local: [u8; 16],
        local_port: u16,
        remote: [u8; 16],
        remote_port: u16,
        netns: u32,
    ) -> Self {
        let address = |bytes: [u8; 16]| -> IpAddr {
            if family == monitor_common::tcp::AF_INET6 {
                IpAddr::V6(Ipv6Addr::from(bytes))
            } else {
                IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
            }
        };
        Self {
            local: SocketAddr::new(address(local), local_port),
            remote: SocketAddr::new(address(remote), remote_port),
            netns,
        }
    }
}

/// TCP internals at a retransmit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RetransmitInfo {
    pub kind: RetransmitKind,
    /// 0, or the negative errno of an attempt that failed to go out.
    pub result: i32,
    pub segments: u16,
    /// Consecutive RTO retransmits without an acknowledgement.
    pub rto_retransmits: u8,
    pub backoff: u8,
    pub snd_una: u32,
    /// 0 when `TCP_USER_TIMEOUT` is unset.
    pub user_timeout_ms: u32,
    pub tcp_retries2: u8,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    Retransmit(RetransmitInfo),
    /// `errno`: the socket's error when it closed on one (0 otherwise).
    StateChange {
        old: TcpState,
        new: TcpState,
        errno: i32,
    },
    ResetReceived,
    ResetSent,
    SocketError {
        errno: i32,
    },
    /// The socket is gone; `errno` is what it ended with (0: no error),
    /// as its error or CLOSE record said.
    Destroyed {
        errno: i32,
    },
    Progress {
        progress: Progress,
    },
    /// Retransmits of a busy connection (none could start a storm),
    /// counted in the kernel: how many of each kind since the last count.
    RetransmitCounts {
        counts: Vec<(RetransmitKind, u32)>,
    },
}

impl EventKind {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Retransmit(_) => "retransmit",
            Self::StateChange { .. } => "state_change",
            Self::ResetReceived => "reset_received",
            Self::ResetSent => "reset_sent",
            Self::SocketError { .. } => "socket_error",
            Self::Destroyed { .. } => "destroyed",
            Self::Progress { .. } => "progress",
            Self::RetransmitCounts { .. } => "retransmit_counts",
        }
    }
}

/// Payload activity known for the socket, monotonic nanoseconds; `None`
/// when never seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ActivityTimes {
    pub last_send_ns: Option<u64>,
    pub last_recv_ns: Option<u64>,
    pub burst_start_ns: Option<u64>,
    pub idle_before_burst_ns: u64,
}

/// How a watched socket that failed ended, read by the kernel at its error
/// or CLOSE: what tells a connect, zero-window probe or keepalive timeout
/// from a retransmit storm's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EndState {
    /// RTO retransmits in a row without an acknowledgement.
    pub rto_retransmits: u8,
    /// Zero-window or keepalive probes sent without an answer.
    pub probes_out: u8,
    /// Bytes the application wrote that never left the host.
    pub unsent_bytes: u32,
    /// The peer's last advertised receive window.
    pub send_window: u32,
    pub tcp_retries2: u8,
    /// 0 when `TCP_USER_TIMEOUT` is unset.
    pub user_timeout_ms: u32,
}

/// One decoded kernel event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketEvent {
    /// CLOCK_MONOTONIC nanoseconds.
    pub timestamp_ns: u64,
    /// The kernel's socket cookie.
    pub cookie: u64,
    pub kind: EventKind,
    pub owner: Option<ProcessRef>,
    pub role: Role,
    pub connection: Connection,
    pub state: TcpState,
    pub activity: ActivityTimes,
    /// The end's TCP state: errors, and CLOSE with an error, only.
    pub end: Option<EndState>,
}
