//! Classifying a retransmit by the congestion state it was sent in.
//!
//! `tcp:tcp_retransmit_skb` fires for every kind of retransmit. The socket's
//! `icsk_ca_state` at that moment tells them apart: the RTO timer enters
//! `Loss` before it retransmits, fast retransmit runs in `Recovery`, and a
//! tail-loss probe is only scheduled in `Open` or `CWR`.

use crate::tcp::{TCP_CA_CWR, TCP_CA_LOSS, TCP_CA_OPEN, TCP_CA_RECOVERY};

/// Stable numeric kinds, used as array indices in the kernel and as tags on
/// the wire. Never reorder.
pub const RETRANSMIT_UNKNOWN: u8 = 0;
pub const RETRANSMIT_TIMEOUT: u8 = 1;
pub const RETRANSMIT_FAST: u8 = 2;
pub const RETRANSMIT_TAIL_LOSS_PROBE: u8 = 3;

/// Maps `icsk_ca_state` to one of the `RETRANSMIT_*` kinds.
#[inline(always)]
pub const fn classify_retransmit(ca_state: u8) -> u8 {
    match ca_state {
        TCP_CA_LOSS => RETRANSMIT_TIMEOUT,
        TCP_CA_RECOVERY => RETRANSMIT_FAST,
        TCP_CA_OPEN | TCP_CA_CWR => RETRANSMIT_TAIL_LOSS_PROBE,
        _ => RETRANSMIT_UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::TCP_CA_DISORDER;

    #[test]
    fn classifies_each_congestion_state() {
        assert_eq!(classify_retransmit(TCP_CA_LOSS), RETRANSMIT_TIMEOUT);
        assert_eq!(classify_retransmit(TCP_CA_RECOVERY), RETRANSMIT_FAST);
        assert_eq!(classify_retransmit(TCP_CA_OPEN), RETRANSMIT_TAIL_LOSS_PROBE);
        assert_eq!(classify_retransmit(TCP_CA_CWR), RETRANSMIT_TAIL_LOSS_PROBE);
        assert_eq!(classify_retransmit(TCP_CA_DISORDER), RETRANSMIT_UNKNOWN);
        assert_eq!(classify_retransmit(31), RETRANSMIT_UNKNOWN);
    }
}
