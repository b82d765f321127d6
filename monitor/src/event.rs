//! Typed events: what the decoder makes of the kernel's records. Everything
//! downstream (socket table, detection, outputs) works on these.

use std::net::SocketAddr;

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

/// The kernel-side `Owner` of a process, as a record carries it, with
/// `role` (`ROLE_*`): `from_owner`'s inverse.
pub fn wire_owner(process: Option<&ProcessRef>, role: u8) -> monitor_common::socket::Owner {
    let mut owner = monitor_common::socket::Owner {
        role,
        ..Default::default()
    };
    if let Some(process) = process {
        owner.tgid = process.pid;
        owner.tid = process.tid;
        owner.cgroup_id = process.cgroup_id;
        owner.start_boottime_ns = process.start_boottime_ns;
        owner.source = process.source.tag();
        owner.process_changes = u8::from(process.shared);
        // The kernel's comm is 16 bytes, not always NUL-terminated.
        let name = process.comm.as_bytes();
        let len = name.len().min(owner.comm.len());
        owner.comm[..len].copy_from_slice(&name[..len]);
    }
    owner
}

/// A kernel comm: NUL-terminated within 16 bytes, not necessarily UTF-8.
pub fn comm_to_string(comm: &[u8; 16]) -> String {
    let len = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..len]).into_owned()
}

/// `TryFrom<tag type>` (the error is the unknown tag) and `tag()` for a
/// typed enum and the wire's integer tags, from one list of pairs.
macro_rules! wire_tags {
    ($enum:ident: $int:ty { $($variant:ident = $tag:path),* $(,)? }) => {
        impl TryFrom<$int> for $enum {
            type Error = $int;

            fn try_from(tag: $int) -> Result<Self, $int> {
                match tag {
                    $($tag => Ok(Self::$variant),)*
                    other => Err(other),
                }
            }
        }

        impl $enum {
            /// The wire's tag.
            pub fn tag(self) -> $int {
                match self {
                    $(Self::$variant => $tag,)*
                }
            }
        }
    };
}

wire_tags!(OwnerSource: u8 {
    Connect = monitor_common::socket::OWNER_SOURCE_CONNECT,
    Send = monitor_common::socket::OWNER_SOURCE_SEND,
    Receive = monitor_common::socket::OWNER_SOURCE_RECV,
    Proc = monitor_common::socket::OWNER_SOURCE_PROC,
});
wire_tags!(Role: u8 {
    Client = monitor_common::socket::ROLE_CLIENT,
    Server = monitor_common::socket::ROLE_SERVER,
    Unknown = monitor_common::socket::ROLE_UNKNOWN,
});
wire_tags!(RetransmitKind: u8 {
    Timeout = monitor_common::retransmit::RETRANSMIT_TIMEOUT,
    Fast = monitor_common::retransmit::RETRANSMIT_FAST,
    TailLossProbe = monitor_common::retransmit::RETRANSMIT_TAIL_LOSS_PROBE,
    Unknown = monitor_common::retransmit::RETRANSMIT_UNKNOWN,
});

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

impl Role {
    /// The name findings, trace events and metric labels use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
            Self::Unknown => "unknown",
        }
    }

    /// The role a record names (`as_str`), e.g. one read back from
    /// `/api/v1/storms`; anything else is unknown.
    pub fn from_name(name: Option<&str>) -> Self {
        match name {
            Some("client") => Self::Client,
            Some("server") => Self::Server,
            _ => Self::Unknown,
        }
    }

    /// The watched service's end of a connection and then the other: our
    /// side for a server, the far side for a client (and when unknown).
    pub fn service_then_peer<T>(self, local: T, remote: T) -> (T, T) {
        match self {
            Self::Server => (local, remote),
            Self::Client | Self::Unknown => (remote, local),
        }
    }

    /// The watched service's end (`service_then_peer`): a metric's or an
    /// alert's `destination`.
    pub fn destination<T>(self, local: T, remote: T) -> T {
        self.service_then_peer(local, remote).0
    }
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
    /// Every kind, in wire-tag order.
    pub const ALL: [Self; 4] = [
        Self::Unknown,
        Self::Timeout,
        Self::Fast,
        Self::TailLossProbe,
    ];

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

wire_tags!(Progress: u32 {
    DataReceived = monitor_common::event::PROGRESS_DATA_RECEIVED,
    Acknowledged = monitor_common::event::PROGRESS_ACKNOWLEDGED,
});

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
    /// The connection a record's tuple names.
    pub fn from_tuple(tuple: &monitor_common::socket::Tuple) -> Self {
        Self {
            local: tuple.local(),
            remote: tuple.remote(),
            netns: tuple.netns,
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
    /// Low byte of the kernel's count of the socket's retransmitted
    /// segments, this one included (`TcpSnapshot::total_retrans_low`).
    #[serde(skip)]
    pub total_retrans_low: u8,
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
        /// As `RetransmitInfo::total_retrans_low`, at the end.
        #[serde(skip)]
        total_retrans_low: u8,
    },
    Progress {
        progress: Progress,
    },
    /// Retransmits of a busy connection (none could start a storm),
    /// counted in the kernel: how many of each kind since the last count.
    RetransmitCounts {
        counts: Vec<(RetransmitKind, u32)>,
    },
    /// Payload arrived after an idle gap of `gap_ns`: the path still knew
    /// the flow after that long (`connmon run` only).
    ReplyAfterIdle {
        gap_ns: u64,
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
            Self::ReplyAfterIdle { .. } => "reply_after_idle",
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

impl ActivityTimes {
    /// A record's activity: 0 on the wire is never.
    pub fn from_wire(activity: &monitor_common::socket::Activity) -> Self {
        let seen = |ns: u64| (ns != 0).then_some(ns);
        Self {
            last_send_ns: seen(activity.last_send_ns),
            last_recv_ns: seen(activity.last_recv_ns),
            burst_start_ns: seen(activity.burst_start_ns),
            idle_before_burst_ns: activity.idle_before_burst_ns,
        }
    }

    /// The same activity as records carry it.
    pub fn to_wire(&self) -> monitor_common::socket::Activity {
        monitor_common::socket::Activity {
            last_send_ns: self.last_send_ns.unwrap_or(0),
            last_recv_ns: self.last_recv_ns.unwrap_or(0),
            burst_start_ns: self.burst_start_ns.unwrap_or(0),
            idle_before_burst_ns: self.idle_before_burst_ns,
        }
    }
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
    /// The peer's last advertised receive window, clamped to 65535.
    pub send_window: u16,
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

#[cfg(test)]
impl SocketEvent {
    /// A client socket's event in namespace 1 with no owner known, for
    /// tests.
    pub(crate) fn unowned(cookie: u64, kind: EventKind, local: &str, remote: &str) -> Self {
        Self {
            timestamp_ns: 1,
            cookie,
            kind,
            owner: None,
            role: Role::Client,
            connection: Connection {
                local: local.parse().expect("addr"),
                remote: remote.parse().expect("addr"),
                netns: 1,
            },
            state: TcpState(monitor_common::tcp::TCP_ESTABLISHED),
            activity: ActivityTimes::default(),
            end: None,
        }
    }
}
