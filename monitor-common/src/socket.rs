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

impl Owner {
    /// Whether the task `tgid`/`tid` using the socket (`is_send`: writing
    /// to it) becomes its owner: the writer names the thread; a reader
    /// takes over only a socket another process (or nobody) owned.
    #[inline(always)]
    pub const fn taken_over_by(&self, tgid: u32, tid: u32, is_send: bool) -> bool {
        self.tgid != tgid || (is_send && self.tid != tid)
    }

    /// `process_changes` once `tgid` took the socket over from this owner:
    /// one more when it is another process than a known one.
    #[inline(always)]
    pub const fn process_changes_after(&self, tgid: u32) -> u8 {
        let another_process = self.tgid != 0 && self.tgid != tgid;
        self.process_changes.saturating_add(another_process as u8)
    }
}

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

/// The role of a socket whose connect or accept was not seen (it predates
/// the daemon, or its state was lost), from which end uses a watched port:
/// ours makes it the server, the far end's the client; both or neither
/// (every port watched) tell nothing.
#[inline(always)]
pub const fn role_from_watched_ports(local_watched: bool, remote_watched: bool) -> u8 {
    match (local_watched, remote_watched) {
        (true, false) => ROLE_SERVER,
        (false, true) => ROLE_CLIENT,
        _ => ROLE_UNKNOWN,
    }
}

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

/// Per-socket state of a watched socket, kept by the kernel programs in
/// socket-local storage (`BPF_MAP_TYPE_SK_STORAGE`): found through the
/// socket itself (no hash lookup), freed by the kernel with the socket.
/// Only watched sockets get one; a socket without one is not watched.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketState {
    pub owner: Owner,
    /// In jiffies: the hot path reads the inlined jiffies counter instead of
    /// a clock helper; records carry nanoseconds (`TickActivity::to_wire`).
    pub activity: TickActivity,
    /// The errno the socket ended with (`sk_err` at its error report or
    /// CLOSE), 0 while none: the destroy record carries it, so the
    /// outcome survives a lost error or CLOSE record.
    pub end_errno: u32,
    /// `SOCKET_FLAG_*` bits.
    pub flags: u32,
    /// Retransmits per kind not yet handed to userspace (a busy
    /// connection's, see `retransmit_counts_due`).
    pub pending_retransmits: [u8; 4],
    /// When (jiffies, 32 bits) counts were last handed over.
    pub counts_sent_at: u32,
}
const _: () = assert!(core::mem::size_of::<SocketState>() == 96);

/// The error report and the CLOSE of a socket that fails (ETIMEDOUT, a
/// reset) carry the same errno, back to back (their order differs between
/// kernels). `connmon run` needs only the first: whether the end with
/// `errno`, given what the socket's storage noted (`end_errno`), was
/// already reported.
#[inline(always)]
pub const fn end_already_reported(end_errno: u32, errno: u32) -> bool {
    errno != 0 && end_errno == errno
}

/// A watched socket has retransmitted and has not made progress since; the
/// next receive or return to congestion state Open is reported.
pub const SOCKET_FLAG_RETRANSMITTING: u32 = 1 << 0;
/// A record about this socket reached userspace (a retransmit, reset or
/// error), so its end (CLOSE, destroy) must too. A socket userspace never
/// heard of ends without a record: a short connection costs none.
pub const SOCKET_FLAG_REPORTED: u32 = 1 << 1;

/// A socket that predates the daemon, as userspace found it at start-up
/// (owner from /proc, activity from tcp_info): value of the kernel's
/// `PRIMED_SOCKETS` map, keyed by cookie. The programs move it into the
/// socket's storage the first time they see the socket, then delete it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrimedSocket {
    pub owner: Owner,
    /// CLOCK_MONOTONIC nanoseconds, as on the wire.
    pub activity: Activity,
}
const _: () = assert!(core::mem::size_of::<PrimedSocket>() == 80);

/// Payload activity in jiffies (`bpf_jiffies64`), the socket storage's time
/// base. 0 means never.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickActivity {
    pub last_send: u64,
    pub last_recv: u64,
    /// When payload started flowing again after the last idle gap.
    pub burst_start: u64,
    /// How long (jiffies) the socket had carried no payload before
    /// `burst_start`.
    pub idle_before_burst: u64,
}
const _: () = assert!(core::mem::size_of::<TickActivity>() == 32);

/// The two clocks at one moment, and the tick length: what converting
/// between jiffies and CLOCK_MONOTONIC nanoseconds needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockPair {
    pub now_ns: u64,
    pub now_ticks: u64,
    pub ns_per_tick: u64,
}

impl ClockPair {
    /// The nanosecond time of tick `then` (0 stays 0: never). Exact to one
    /// tick, never later than `now_ns`.
    #[inline(always)]
    pub fn ns_at(&self, then: u64) -> u64 {
        if then == 0 {
            return 0;
        }
        // At most the jiffies counter itself (about 4.3e9 plus uptime),
        // times at most 10 ms: no overflow. (A saturating multiply would
        // need 128-bit arithmetic, which BPF lacks.)
        let ago = self.now_ticks.saturating_sub(then);
        self.now_ns
            .saturating_sub(ago.wrapping_mul(self.ns_per_tick))
            .max(1)
    }

    /// The tick of nanosecond time `then` (0 stays 0: never).
    #[inline(always)]
    pub fn ticks_at(&self, then_ns: u64) -> u64 {
        if then_ns == 0 || self.ns_per_tick == 0 {
            return 0;
        }
        let ago = self.now_ns.saturating_sub(then_ns) / self.ns_per_tick;
        self.now_ticks.saturating_sub(ago).max(1)
    }
}

/// Slots per CPU of the kernel's recently-written-sockets cache.
pub const RECENT_SLOTS: u32 = 256;

/// A per-CPU note that a watched socket's activity was written recently:
/// until `*_fresh_until` (jiffies) another send or receive on it needs no
/// write, so the hot path can skip even the storage lookup. Keyed by what
/// identifies a connected socket as scalars (the verifier allows no
/// arithmetic on the socket pointer): its address pair and its
/// established-table hash (which mixes in the network namespace) with its
/// ports. `epoch` is the retransmit epoch when noted (a socket starting to
/// retransmit must see its next receive).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecentSocket {
    pub addrs: u64,
    pub hash_ports: u64,
    pub send_fresh_until: u64,
    pub recv_fresh_until: u64,
    pub epoch: u64,
}
const _: () = assert!(core::mem::size_of::<RecentSocket>() == 40);

impl RecentSocket {
    /// `hash_ports` of a socket: `skc_hash` and both ports.
    #[inline(always)]
    pub const fn hash_ports(hash: u32, local_port: u16, remote_port: u16) -> u64 {
        (hash as u64) << 32 | (local_port as u64) << 16 | remote_port as u64
    }

    /// The slot of a socket.
    #[inline(always)]
    pub const fn slot(hash_ports: u64) -> u32 {
        let mixed = (hash_ports >> 32) as u32 ^ hash_ports as u32;
        (mixed ^ (mixed >> 8) ^ (mixed >> 16) ^ (mixed >> 24)) & (RECENT_SLOTS - 1)
    }

    /// Whether a payload on the socket (`addrs`, `hash_ports`) at tick
    /// `now` needs no write.
    #[inline(always)]
    pub fn is_fresh(
        &self,
        addrs: u64,
        hash_ports: u64,
        now: u64,
        is_send: bool,
        epoch: u64,
    ) -> bool {
        let until = if is_send {
            self.send_fresh_until
        } else {
            self.recv_fresh_until
        };
        self.addrs == addrs
            && self.hash_ports == hash_ports
            && hash_ports != 0
            && self.epoch == epoch
            && now < until
    }
}

/// When a socket last received anything (data or an ACK), as a tick of
/// `now`'s 64-bit jiffies, from the kernel's own 32-bit jiffies stamps of
/// the last ACK (`rcv_tstamp`) and the last data (`icsk_ack.lrcvtime`): the
/// more recent of the two, across the 32-bit wrap. 0 when unknown (both
/// stamps 0, or the more recent one is in the future or more than half the
/// 32-bit range ago).
#[inline(always)]
pub const fn last_receive_tick(now: u64, ack_stamp: u32, data_stamp: u32) -> u64 {
    // Both zero: unreadable (or the jiffies counter's own zero, harmless).
    if ack_stamp == 0 && data_stamp == 0 {
        return 0;
    }
    let since_ack = (now as u32).wrapping_sub(ack_stamp);
    let since_data = (now as u32).wrapping_sub(data_stamp);
    let quiet = if since_ack < since_data {
        since_ack
    } else {
        since_data
    };
    if quiet > u32::MAX / 2 {
        return 0;
    }
    now.saturating_sub(quiet as u64)
}

/// A watched socket's retransmits that cannot start a storm are counted,
/// not each written as a record: `pending` per kind, handed over when one
/// count is full or `interval` ticks passed since the last hand-over
/// (`sent_at`, wrapping 32-bit jiffies).
#[inline(always)]
pub fn retransmit_counts_due(pending: &[u8; 4], sent_at: u32, now: u32, interval: u32) -> bool {
    let full = pending[0] == u8::MAX
        || pending[1] == u8::MAX
        || pending[2] == u8::MAX
        || pending[3] == u8::MAX;
    full || now.wrapping_sub(sent_at) >= interval
}

/// One for `kind` (`RETRANSMIT_*`), zero for the others: per-kind counts
/// are added with stores at constant offsets (the verifier refuses a store
/// at a variable offset into the stack).
#[inline(always)]
pub fn one_of_kind(kind: u8) -> [u8; 4] {
    [
        u8::from(kind == 0),
        u8::from(kind == 1),
        u8::from(kind == 2),
        u8::from(kind == 3),
    ]
}

/// Adds one retransmit of `kind` (`RETRANSMIT_*`) to `pending`.
#[inline(always)]
pub fn count_retransmit(pending: &mut [u8; 4], kind: u8) {
    for (count, add) in pending.iter_mut().zip(one_of_kind(kind)) {
        *count = count.saturating_add(add);
    }
}

impl TickActivity {
    /// `may_confirm_storm` on the socket storage's ticks.
    #[inline(always)]
    pub fn may_confirm_storm(&self, idle_threshold: u64) -> bool {
        may_confirm(
            self.last_recv,
            self.burst_start,
            self.idle_before_burst,
            idle_threshold,
        )
    }

    /// Records payload at tick `now`: a gap of at least `idle_threshold`
    /// ticks since the last payload either way starts a new burst. The one
    /// definition of a burst, used by the kernel's send/receive hooks.
    #[inline(always)]
    pub fn note(&mut self, now: u64, is_send: bool, idle_threshold: u64) {
        let last_active = if self.last_send > self.last_recv {
            self.last_send
        } else {
            self.last_recv
        };
        if last_active != 0 {
            let gap = now.saturating_sub(last_active);
            if gap >= idle_threshold {
                self.idle_before_burst = gap;
                self.burst_start = now;
            }
        } else if self.burst_start == 0 {
            self.burst_start = now;
        }
        if is_send {
            self.last_send = now;
        } else {
            self.last_recv = now;
        }
    }

    /// The idle gap (ticks) a receive at tick `now` shows the path
    /// survived, judged before `note` records it: the first receive after a
    /// burst that followed an idle gap (the reply to the request that ended
    /// it), or a receive that itself ends an idle gap (the peer spoke
    /// first). `None` for every other receive.
    #[inline(always)]
    pub fn gap_survived_by_receive(&self, now: u64, idle_threshold: u64) -> Option<u64> {
        if self.may_confirm_storm(idle_threshold) {
            return Some(self.idle_before_burst);
        }
        let last_active = if self.last_send > self.last_recv {
            self.last_send
        } else {
            self.last_recv
        };
        let gap = now.saturating_sub(last_active);
        (last_active != 0 && gap >= idle_threshold).then_some(gap)
    }

    /// The same activity in nanoseconds, as records carry it.
    #[inline(always)]
    pub fn to_wire(&self, clocks: &ClockPair) -> Activity {
        Activity {
            last_send_ns: clocks.ns_at(self.last_send),
            last_recv_ns: clocks.ns_at(self.last_recv),
            burst_start_ns: clocks.ns_at(self.burst_start),
            // A gap between two jiffies values: no overflow, as in `ns_at`.
            idle_before_burst_ns: self.idle_before_burst.wrapping_mul(clocks.ns_per_tick),
        }
    }

    /// Nanosecond activity (a primed socket's) in ticks.
    #[inline(always)]
    pub fn from_wire(activity: &Activity, clocks: &ClockPair) -> Self {
        let per_tick = if clocks.ns_per_tick == 0 {
            1
        } else {
            clocks.ns_per_tick
        };
        Self {
            last_send: clocks.ticks_at(activity.last_send_ns),
            last_recv: clocks.ticks_at(activity.last_recv_ns),
            burst_start: clocks.ticks_at(activity.burst_start_ns),
            idle_before_burst: activity.idle_before_burst_ns / per_tick,
        }
    }
}

/// Whether a retransmit on a socket with this activity can confirm a storm:
/// its current burst followed an idle gap of at least `idle_threshold_ns`,
/// and nothing was received since the burst began. The kernel wakes the
/// reader only for such retransmits; the detector requires the same.
#[inline(always)]
pub fn may_confirm_storm(activity: &Activity, idle_threshold_ns: u64) -> bool {
    may_confirm(
        activity.last_recv_ns,
        activity.burst_start_ns,
        activity.idle_before_burst_ns,
        idle_threshold_ns,
    )
}

/// The rule itself, in any one time unit.
#[inline(always)]
const fn may_confirm(
    last_recv: u64,
    burst_start: u64,
    idle_before_burst: u64,
    threshold: u64,
) -> bool {
    let received_since = last_recv != 0 && last_recv >= burst_start;
    idle_before_burst >= threshold && !received_since
}

#[cfg(test)]
mod tests {
    use super::*;

    const THRESHOLD: u64 = 100;

    #[test]
    fn first_payload_starts_a_burst_without_an_idle_gap() {
        let mut activity = TickActivity::default();
        activity.note(1_000, true, THRESHOLD);
        assert_eq!(activity.burst_start, 1_000);
        assert_eq!(activity.idle_before_burst, 0);
        assert_eq!(activity.last_send, 1_000);
    }

    #[test]
    fn a_gap_past_the_threshold_starts_a_new_burst_and_remembers_the_gap() {
        let mut activity = TickActivity::default();
        activity.note(1_000, false, THRESHOLD);
        activity.note(1_050, true, THRESHOLD);
        assert_eq!(activity.burst_start, 1_000, "50 ticks is not idle");
        activity.note(1_300, true, THRESHOLD);
        assert_eq!(activity.burst_start, 1_300);
        assert_eq!(activity.idle_before_burst, 250);
        assert_eq!((activity.last_send, activity.last_recv), (1_300, 1_000));
    }

    #[test]
    fn ticks_convert_to_nanoseconds_against_the_clock_pair() {
        let clocks = ClockPair {
            now_ns: 10_000_000_000,
            now_ticks: 5_000,
            ns_per_tick: 4_000_000,
        };
        assert_eq!(clocks.ns_at(0), 0, "never stays never");
        assert_eq!(clocks.ns_at(5_000), 10_000_000_000);
        assert_eq!(clocks.ns_at(4_750), 9_000_000_000);
        // A tick after now (a racing CPU) is now, not the future.
        assert_eq!(clocks.ns_at(5_001), 10_000_000_000);
        assert_eq!(clocks.ticks_at(9_000_000_000), 4_750);
        assert_eq!(clocks.ticks_at(0), 0);
        let activity = TickActivity {
            last_send: 4_750,
            last_recv: 4_000,
            burst_start: 4_750,
            idle_before_burst: 750,
        };
        let wire = activity.to_wire(&clocks);
        assert_eq!(wire.last_send_ns, 9_000_000_000);
        assert_eq!(wire.last_recv_ns, 6_000_000_000);
        assert_eq!(wire.idle_before_burst_ns, 3_000_000_000);
        assert_eq!(TickActivity::from_wire(&wire, &clocks), activity);
    }

    #[test]
    fn a_recent_write_is_fresh_only_for_the_same_socket_and_epoch() {
        let hash_ports = RecentSocket::hash_ports(0x9e37_79b9, 40_000, 6379);
        let recent = RecentSocket {
            addrs: 0x0100_007f_0200_007f,
            hash_ports,
            send_fresh_until: 1_100,
            recv_fresh_until: 1_050,
            epoch: 7,
        };
        let addrs = recent.addrs;
        assert!(recent.is_fresh(addrs, hash_ports, 1_099, true, 7));
        assert!(
            !recent.is_fresh(addrs, hash_ports, 1_100, true, 7),
            "a granule old"
        );
        assert!(
            !recent.is_fresh(addrs, hash_ports, 1_060, false, 7),
            "receive granule passed"
        );
        let other = RecentSocket::hash_ports(0x9e37_79b9, 40_001, 6379);
        assert!(
            !recent.is_fresh(addrs, other, 1_000, true, 7),
            "another socket"
        );
        assert!(
            !recent.is_fresh(addrs + 1, hash_ports, 1_000, true, 7),
            "other addresses"
        );
        assert!(
            !recent.is_fresh(addrs, hash_ports, 1_000, true, 8),
            "a retransmit since"
        );
        assert!(
            !RecentSocket::default().is_fresh(0, 0, 0, true, 0),
            "an empty slot"
        );
        assert!(RecentSocket::slot(u64::MAX) < RECENT_SLOTS);
        assert_ne!(
            RecentSocket::slot(hash_ports),
            RecentSocket::slot(other),
            "neighbours spread"
        );
    }

    #[test]
    fn busy_retransmit_counts_are_handed_over_when_full_or_old() {
        let mut pending = [0u8; 4];
        count_retransmit(&mut pending, 2);
        count_retransmit(&mut pending, 2);
        count_retransmit(&mut pending, 3);
        assert_eq!(pending, [0, 0, 2, 1]);
        assert!(!retransmit_counts_due(&pending, 1_000, 1_100, 250));
        assert!(
            retransmit_counts_due(&pending, 1_000, 1_250, 250),
            "a second old"
        );
        assert!(
            retransmit_counts_due(&pending, u32::MAX - 10, 240, 250),
            "across the wrap"
        );
        pending[1] = u8::MAX;
        assert!(retransmit_counts_due(&pending, 1_000, 1_001, 250), "full");
        count_retransmit(&mut pending, 1);
        assert_eq!(pending[1], u8::MAX, "saturates rather than wraps");
    }

    #[test]
    fn only_the_second_of_an_error_and_close_with_one_errno_is_skipped() {
        const ETIMEDOUT: u32 = 110;
        assert!(!end_already_reported(0, ETIMEDOUT), "the first of the pair");
        assert!(end_already_reported(ETIMEDOUT, ETIMEDOUT), "the second");
        assert!(!end_already_reported(0, 0), "an orderly close is reported");
        assert!(!end_already_reported(ETIMEDOUT, 0));
        assert!(!end_already_reported(104, ETIMEDOUT), "another error");
    }

    #[test]
    fn a_reply_after_an_idle_burst_or_a_peer_ending_the_gap_shows_the_gap_survived() {
        let mut activity = TickActivity::default();
        activity.note(1_000, true, THRESHOLD);
        activity.note(1_010, false, THRESHOLD);
        assert_eq!(
            activity.gap_survived_by_receive(1_020, THRESHOLD),
            None,
            "busy"
        );
        // A request after 290 idle ticks, answered 5 ticks later.
        activity.note(1_300, true, THRESHOLD);
        assert_eq!(
            activity.gap_survived_by_receive(1_305, THRESHOLD),
            Some(290)
        );
        activity.note(1_305, false, THRESHOLD);
        assert_eq!(
            activity.gap_survived_by_receive(1_306, THRESHOLD),
            None,
            "only the first reply"
        );
        // The peer speaks first after 400 quiet ticks.
        assert_eq!(
            activity.gap_survived_by_receive(1_705, THRESHOLD),
            Some(400)
        );
        assert_eq!(
            TickActivity::default().gap_survived_by_receive(5_000, THRESHOLD),
            None,
            "no payload before"
        );
    }

    #[test]
    fn the_rule_is_the_same_in_ticks_and_nanoseconds() {
        let ticks = TickActivity {
            last_send: 50,
            last_recv: 10,
            burst_start: 50,
            idle_before_burst: 40,
        };
        assert!(ticks.may_confirm_storm(30));
        assert!(!ticks.may_confirm_storm(41));
        let clocks = ClockPair {
            now_ns: 1_000_000,
            now_ticks: 100,
            ns_per_tick: 1_000,
        };
        assert!(may_confirm_storm(&ticks.to_wire(&clocks), 30_000));
        assert!(!may_confirm_storm(&ticks.to_wire(&clocks), 41_000));
    }

    #[test]
    fn the_last_receive_is_the_more_recent_stamp_across_the_wrap() {
        assert_eq!(last_receive_tick(10_000, 9_000, 9_500), 9_500, "data later");
        assert_eq!(last_receive_tick(10_000, 9_800, 9_500), 9_800, "ACK later");
        assert_eq!(last_receive_tick(10_000, 0, 0), 0, "unreadable");
        assert_eq!(last_receive_tick(10_000, 0, 9_000), 9_000);
        // `now` past the 32-bit wrap, a stamp from just before it.
        let now = (1u64 << 32) + 100;
        assert_eq!(
            last_receive_tick(now, u32::MAX - 99, u32::MAX - 199),
            now - 200
        );
        // Stamps ahead of `now` read as more than half the range ago.
        assert_eq!(last_receive_tick(10_000, 10_001, 10_002), 0);
        assert_eq!(last_receive_tick(10_000, 10_000, 0), 10_000);
    }

    #[test]
    fn the_writer_names_the_thread_and_a_reader_only_another_process() {
        let owner = Owner {
            tgid: 10,
            tid: 11,
            ..Owner::default()
        };
        assert!(!owner.taken_over_by(10, 11, true));
        assert!(owner.taken_over_by(10, 12, true), "another writing thread");
        assert!(!owner.taken_over_by(10, 12, false), "a reading thread");
        assert!(owner.taken_over_by(20, 20, false), "another process");
        assert!(Owner::default().taken_over_by(20, 20, false), "nobody's");
        assert_eq!(owner.process_changes_after(10), 0);
        assert_eq!(owner.process_changes_after(20), 1);
        assert_eq!(Owner::default().process_changes_after(20), 0, "nobody's");
        let busy = Owner {
            process_changes: u8::MAX,
            ..owner
        };
        assert_eq!(busy.process_changes_after(20), u8::MAX, "saturates");
    }

    #[test]
    fn a_role_is_inferred_only_when_one_end_is_watched() {
        assert_eq!(role_from_watched_ports(true, false), ROLE_SERVER);
        assert_eq!(role_from_watched_ports(false, true), ROLE_CLIENT);
        assert_eq!(role_from_watched_ports(true, true), ROLE_UNKNOWN);
        assert_eq!(role_from_watched_ports(false, false), ROLE_UNKNOWN);
    }

    #[test]
    fn only_an_idle_burst_with_nothing_received_may_confirm_a_storm() {
        let idle = Activity {
            last_send_ns: 50,
            last_recv_ns: 10,
            burst_start_ns: 50,
            idle_before_burst_ns: 40,
        };
        assert!(may_confirm_storm(&idle, 30));
        assert!(!may_confirm_storm(&idle, 41), "gap below the threshold");
        let answered = Activity {
            last_recv_ns: 60,
            ..idle
        };
        assert!(
            !may_confirm_storm(&answered, 30),
            "received since the burst"
        );
    }
}
