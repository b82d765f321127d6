//! When will the kernel give up on a retransmitting connection?
//!
//! Mirrors `tcp_write_timeout()`: with `TCP_USER_TIMEOUT` set, the kernel
//! aborts that long after the unacknowledged data was first sent. Otherwise
//! it aborts at the first RTO timer that fires once the time since the first
//! send exceeds `tcp_model_timeout(tcp_retries2)`: the time `tcp_retries2`
//! doublings of the 200 ms minimum RTO would take, each capped at 120 s.
//! The timer's own schedule is extrapolated from the retransmits observed.

/// `TCP_RTO_MIN` and `TCP_RTO_MAX` (include/net/tcp.h).
pub const TCP_RTO_MIN_NS: u64 = 200_000_000;
pub const TCP_RTO_MAX_NS: u64 = 120_000_000_000;

/// `tcp_model_timeout(sk, boundary, TCP_RTO_MIN)`.
pub fn model_timeout_ns(retries2: u8) -> u64 {
    let boundary = u64::from(retries2);
    // ilog2(TCP_RTO_MAX / TCP_RTO_MIN) = ilog2(600) = 9
    let linear_backoff_threshold = (TCP_RTO_MAX_NS / TCP_RTO_MIN_NS).ilog2() as u64;
    if boundary <= linear_backoff_threshold {
        ((2u64 << boundary) - 1) * TCP_RTO_MIN_NS
    } else {
        ((2u64 << linear_backoff_threshold) - 1) * TCP_RTO_MIN_NS
            + (boundary - linear_backoff_threshold) * TCP_RTO_MAX_NS
    }
}

/// Monotonic time at which the kernel will abort the connection.
///
/// `first_send_ns`: when the unacknowledged data was first sent.
/// `rto_retransmits_ns`: times of the RTO retransmits seen so far, in order.
pub fn gives_up_at_ns(
    first_send_ns: u64,
    rto_retransmits_ns: &[u64],
    retries2: u8,
    user_timeout_ms: u32,
) -> Option<u64> {
    if user_timeout_ms > 0 {
        return Some(first_send_ns + u64::from(user_timeout_ms) * 1_000_000);
    }
    let &last = rto_retransmits_ns.last()?;
    let deadline = first_send_ns + model_timeout_ns(retries2);
    // The RTO doubles after every timeout retransmit: the next timer fires
    // twice the last observed interval after the last retransmit.
    let mut interval = match rto_retransmits_ns {
        [.., before, last] => last.saturating_sub(*before).saturating_mul(2),
        _ => last
            .saturating_sub(first_send_ns)
            .max(TCP_RTO_MIN_NS)
            .saturating_mul(2),
    }
    .clamp(TCP_RTO_MIN_NS, TCP_RTO_MAX_NS);
    let mut fire = last;
    // Bounded: at most tcp_retries2 (<= 255) timer firings can remain.
    for _ in 0..512 {
        fire += interval;
        if fire >= deadline {
            return Some(fire);
        }
        interval = (interval * 2).min(TCP_RTO_MAX_NS);
    }
    Some(fire)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn model_timeout_matches_the_kernel() {
        // Documented values: tcp_retries2=15 is 924.6 s; 8 is 102.2 s.
        assert_eq!(model_timeout_ns(15), 924_600 * MS);
        assert_eq!(model_timeout_ns(8), 102_200 * MS);
        assert_eq!(model_timeout_ns(4), 6_200 * MS);
    }

    #[test]
    fn seed_scenario_with_tcp_retries2_4_gives_up_near_6_7_s() {
        // Measured: retransmits at 416, 832, 1664 ms after the send (RTOs),
        // ETIMEDOUT at about 6.85 s.
        let give_up = gives_up_at_ns(0, &[416 * MS, 832 * MS, 1664 * MS], 4, 0).expect("estimate");
        assert_eq!(give_up, 6656 * MS);
    }

    #[test]
    fn default_retries2_hangs_about_fifteen_and_a_half_minutes() {
        let give_up = gives_up_at_ns(0, &[200 * MS, 600 * MS, 1400 * MS], 15, 0).expect("estimate");
        let minutes = give_up as f64 / 60e9;
        assert!((15.0..16.0).contains(&minutes), "{minutes} min");
    }

    #[test]
    fn user_timeout_wins() {
        assert_eq!(gives_up_at_ns(1000, &[], 15, 5000), Some(1000 + 5000 * MS));
        assert_eq!(gives_up_at_ns(0, &[], 15, 0), None);
    }
}
