//! Kernel TCP constants the programs and the daemon both interpret.

/// `AF_INET` and `AF_INET6` as the kernel stores them in `skc_family`.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// The errno a socket ends with when the kernel gives up on it (a
/// retransmit, zero-window probe, keepalive or SYN timer ran out).
pub const ETIMEDOUT: u32 = 110;

/// `enum tcp_ca_state` (include/net/tcp.h): the congestion state machine.
pub const TCP_CA_OPEN: u8 = 0;
pub const TCP_CA_DISORDER: u8 = 1;
pub const TCP_CA_CWR: u8 = 2;
pub const TCP_CA_RECOVERY: u8 = 3;
pub const TCP_CA_LOSS: u8 = 4;

/// TCP socket states (include/net/tcp_states.h).
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_SYN_RECV: u8 = 3;
pub const TCP_CLOSE: u8 = 7;
/// The peer closed its side (its FIN arrived); this side has not yet.
pub const TCP_CLOSE_WAIT: u8 = 8;

/// The name the kernel uses for a socket state, for logs and events.
pub const fn tcp_state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}
