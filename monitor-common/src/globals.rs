//! Read-only globals the loader sets before the programs are verified.
//!
//! Rust eBPF has no CO-RE relocations, so every kernel struct offset the
//! programs use is resolved from `/sys/kernel/btf/vmlinux` by the daemon at
//! load time and handed in here. An offset of `u32::MAX` means "absent on
//! this kernel": the programs then skip that read.

/// Byte offsets into kernel structs (BTF names in the comments).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `sock.__sk_common.skc_family` (u16)
    pub skc_family: u32,
    /// `sock.__sk_common.skc_state` (u8)
    pub skc_state: u32,
    /// `sock.__sk_common.skc_num`: local port, host order (u16)
    pub skc_num: u32,
    /// `sock.__sk_common.skc_dport`: remote port, network order (u16)
    pub skc_dport: u32,
    /// `sock.__sk_common.skc_daddr` (4 bytes)
    pub skc_daddr: u32,
    /// `sock.__sk_common.skc_rcv_saddr` (4 bytes)
    pub skc_rcv_saddr: u32,
    /// `sock.__sk_common.skc_v6_daddr` (16 bytes)
    pub skc_v6_daddr: u32,
    /// `sock.__sk_common.skc_v6_rcv_saddr` (16 bytes)
    pub skc_v6_rcv_saddr: u32,
    /// `sock.__sk_common.skc_net` (pointer to `struct net`)
    pub skc_net: u32,
    /// `sock.sk_protocol` (u16)
    pub sk_protocol: u32,
    /// `sock.sk_err` (int)
    pub sk_err: u32,
    /// `net.ns.inum` (u32)
    pub net_ns_inum: u32,
    /// `net.ipv4.sysctl_tcp_retries2` (u8)
    pub net_tcp_retries2: u32,
    /// `tcp_sock.snd_una` (u32)
    pub tcp_snd_una: u32,
    /// `inet_connection_sock.icsk_retransmits` (u8)
    pub icsk_retransmits: u32,
    /// `inet_connection_sock.icsk_backoff` (u8)
    pub icsk_backoff: u32,
    /// `inet_connection_sock.icsk_user_timeout` (u32)
    pub icsk_user_timeout: u32,
    /// Byte holding the `icsk_ca_state` bitfield, and the field's bit shift
    /// and width within that byte.
    pub icsk_ca_state_byte: u32,
    pub icsk_ca_state_shift: u32,
    pub icsk_ca_state_bits: u32,
    /// `sk_buff.cb`, and `tcp_skb_cb.tcp_gso_segs` (u16) inside it.
    pub skb_cb: u32,
    pub tcp_skb_cb_gso_segs: u32,
    /// `task_struct.group_leader`, `task_struct.start_boottime` (u64) and
    /// `task_struct.comm` (16 bytes).
    pub task_group_leader: u32,
    pub task_start_boottime: u32,
    pub task_comm: u32,
    /// `tcp_sock.rcv_tstamp` (u32 jiffies: last ACK received) and
    /// `inet_connection_sock.icsk_ack.lrcvtime` (u32 jiffies: last data
    /// received): how long a socket first seen mid-life has been quiet.
    pub tcp_rcv_tstamp: u32,
    pub icsk_ack_lrcvtime: u32,
    /// `sock.sk_bpf_storage` (pointer): NULL when no BPF program keeps
    /// storage on the socket, so a socket without it is not watched
    /// without a helper call.
    pub sk_bpf_storage: u32,
    /// `sock.sk_cgrp_data.cgroup` (pointer), `cgroup.kn` (pointer),
    /// `kernfs_node.id` (u64): the socket's cgroup v2 id without a task.
    pub sk_cgroup: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// `sock.__sk_common.skc_hash` (u32): the established-table hash.
    pub skc_hash: u32,
    /// `tcp_sock.total_retrans` (u32): segments the socket retransmitted,
    /// counted by the kernel itself; a check on the records connmon saw.
    pub tcp_total_retrans: u32,
    /// `sock.__sk_common.skc_cookie` (atomic64): the cookie once something
    /// (sock_diag) asked for it; read where tracing programs lack the
    /// cookie helper, to find sockets userspace found at start-up.
    pub skc_cookie: u32,
    /// `tcp_sock.write_seq` and `tcp_sock.snd_nxt` (u32): their difference
    /// is what the application wrote that never left the host.
    pub tcp_write_seq: u32,
    pub tcp_snd_nxt: u32,
    /// `tcp_sock.snd_wnd` (u32): the peer's advertised window.
    pub tcp_snd_wnd: u32,
    /// `inet_connection_sock.icsk_probes_out` (u8): unanswered zero-window
    /// or keepalive probes.
    pub icsk_probes_out: u32,
}
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 38 * 4);

/// Words of the watched-port bitmap (`WATCHED_PORT_BITS`): one bit per
/// TCP port, in a read-only global the loader fills, so the programs test
/// a port with one load and a mask.
pub const WATCHED_PORT_WORDS: usize = 1024;

/// The word and the bit of `port` in the watched-port bitmap.
#[inline(always)]
pub const fn port_bit(port: u16) -> (usize, u64) {
    ((port >> 6) as usize, 1u64 << (port & 63))
}

/// The watched-port bitmap for `ports`.
pub fn watched_port_bits(ports: impl IntoIterator<Item = u16>) -> [u64; WATCHED_PORT_WORDS] {
    let mut bits = [0u64; WATCHED_PORT_WORDS];
    for port in ports {
        let (word, bit) = port_bit(port);
        bits[word] |= bit;
    }
    bits
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_ring_a_quarter_full_wakes_the_reader() {
        let wake = ring_wake_bytes(1 << 20);
        assert_eq!(wake, 256 * 1024);
        assert!(!ring_needs_draining(wake - 1, wake));
        assert!(ring_needs_draining(wake, wake));
    }

    use super::*;

    #[test]
    fn every_port_has_its_own_bit() {
        let bits = watched_port_bits([0, 63, 64, 6379, 65535]);
        for port in [0u16, 63, 64, 6379, 65535] {
            let (word, bit) = port_bit(port);
            assert!(word < WATCHED_PORT_WORDS);
            assert_ne!(bits[word] & bit, 0, "port {port}");
        }
        for port in [1u16, 62, 65, 6378, 6380, 65534] {
            let (word, bit) = port_bit(port);
            assert_eq!(bits[word] & bit, 0, "port {port}");
        }
    }
}

/// Marks an offset the running kernel does not have.
pub const OFFSET_ABSENT: u32 = u32::MAX;

impl KernelOffsets {
    /// Every offset absent: the state before the loader fills them in.
    pub const ABSENT: Self = Self {
        skc_family: OFFSET_ABSENT,
        skc_state: OFFSET_ABSENT,
        skc_num: OFFSET_ABSENT,
        skc_dport: OFFSET_ABSENT,
        skc_daddr: OFFSET_ABSENT,
        skc_rcv_saddr: OFFSET_ABSENT,
        skc_v6_daddr: OFFSET_ABSENT,
        skc_v6_rcv_saddr: OFFSET_ABSENT,
        skc_net: OFFSET_ABSENT,
        sk_protocol: OFFSET_ABSENT,
        sk_err: OFFSET_ABSENT,
        net_ns_inum: OFFSET_ABSENT,
        net_tcp_retries2: OFFSET_ABSENT,
        tcp_snd_una: OFFSET_ABSENT,
        icsk_retransmits: OFFSET_ABSENT,
        icsk_backoff: OFFSET_ABSENT,
        icsk_user_timeout: OFFSET_ABSENT,
        icsk_ca_state_byte: OFFSET_ABSENT,
        icsk_ca_state_shift: 0,
        icsk_ca_state_bits: 0,
        skb_cb: OFFSET_ABSENT,
        tcp_skb_cb_gso_segs: OFFSET_ABSENT,
        task_group_leader: OFFSET_ABSENT,
        task_start_boottime: OFFSET_ABSENT,
        task_comm: OFFSET_ABSENT,
        tcp_rcv_tstamp: OFFSET_ABSENT,
        icsk_ack_lrcvtime: OFFSET_ABSENT,
        sk_bpf_storage: OFFSET_ABSENT,
        sk_cgroup: OFFSET_ABSENT,
        cgroup_kn: OFFSET_ABSENT,
        kernfs_node_id: OFFSET_ABSENT,
        skc_hash: OFFSET_ABSENT,
        tcp_total_retrans: OFFSET_ABSENT,
        skc_cookie: OFFSET_ABSENT,
        tcp_write_seq: OFFSET_ABSENT,
        tcp_snd_nxt: OFFSET_ABSENT,
        tcp_snd_wnd: OFFSET_ABSENT,
        icsk_probes_out: OFFSET_ABSENT,
    };
}

/// Behaviour switches for the programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeSettings {
    /// The send/receive hooks rewrite a socket's activity time only when it
    /// is at least this many jiffies old: the hot path stays a storage
    /// lookup and a compare.
    pub activity_granularity_ticks: u64,
    /// A gap without payload at least this long starts a new burst, in
    /// jiffies (the socket storage's time base) and in nanoseconds (the
    /// records').
    pub idle_threshold_ticks: u64,
    pub idle_threshold_ns: u64,
    /// Non-zero: every port is watched (emit events for all TCP sockets).
    pub watch_all_ports: u32,
    /// Non-zero: `tp_btf/tcp_retransmit_skb` has the `err` argument (6.x
    /// kernels newer than about 6.2).
    pub retransmit_has_err: u32,
    /// Length of a jiffy in nanoseconds (1e9 / CONFIG_HZ).
    pub ns_per_jiffy: u64,
    /// Non-zero: every state change of a watched socket is an event (the
    /// trace stream shows them). Zero: only the ones detection uses (to
    /// ESTABLISHED, to CLOSE); the rest would cost a record each on every
    /// connection's setup and teardown for nothing.
    pub every_state_change: u32,
    /// Non-zero: a watched socket's retransmits that cannot start a storm
    /// are counted and handed over at most every `retransmit_counts_ticks`
    /// (`EVENT_RETRANSMIT_COUNTS`), not a record each (`connmon run`).
    /// Zero: a record each (`connmon trace` shows every retransmit).
    pub count_busy_retransmits: u32,
    pub retransmit_counts_ticks: u64,
    /// Records written without a wakeup wake the reader anyway once this
    /// many bytes wait in the ring (`ring_wake_bytes`): a burst is drained
    /// while it is written instead of overflowing the ring before the
    /// reader's periodic drain.
    pub ring_wake_bytes: u64,
}
const _: () = assert!(core::mem::size_of::<ProbeSettings>() == 64);

/// `ProbeSettings::ring_wake_bytes` for a ring of `ring_bytes`: a quarter
/// of it, so the reader has the other three quarters of slack to wake up.
pub const fn ring_wake_bytes(ring_bytes: u64) -> u64 {
    ring_bytes / 4
}

/// Whether a record written without a wakeup must wake the reader anyway:
/// `pending` bytes (the kernel's `BPF_RB_AVAIL_DATA`) wait in the ring.
#[inline(always)]
pub const fn ring_needs_draining(pending: u64, wake_bytes: u64) -> bool {
    pending >= wake_bytes
}

impl ProbeSettings {
    pub const DEFAULT: Self = Self {
        activity_granularity_ticks: 250,
        idle_threshold_ticks: 7_500,
        idle_threshold_ns: crate::defaults::IDLE_THRESHOLD_NS,
        watch_all_ports: 0,
        retransmit_has_err: 0,
        ns_per_jiffy: 4_000_000,
        every_state_change: 1,
        count_busy_retransmits: 0,
        retransmit_counts_ticks: 250,
        ring_wake_bytes: ring_wake_bytes(crate::defaults::RING_BUFFER_KIB as u64 * 1024),
    };
}
