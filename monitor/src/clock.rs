//! Kernel timestamps (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) to wall time.

use std::time::{Duration, SystemTime};

/// Reads a clock; `None` only if the kernel refuses, which it does not for
/// these two clocks.
fn clock_ns(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Now on CLOCK_MONOTONIC, in the kernel programs' time base.
pub fn monotonic_now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC).unwrap_or(0)
}

/// The offset between the two clocks, taken once: converting per event with
/// a fixed offset keeps event order and spacing exact.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    realtime_at_base_ns: u64,
    monotonic_base_ns: u64,
}

impl WallClock {
    pub fn new() -> Self {
        Self {
            monotonic_base_ns: monotonic_now_ns(),
            realtime_at_base_ns: clock_ns(libc::CLOCK_REALTIME).unwrap_or(0),
        }
    }

    /// A fixed pairing of the clocks, for tests and replays.
    pub fn fixed(monotonic_base_ns: u64, realtime_at_base_ns: u64) -> Self {
        Self {
            realtime_at_base_ns,
            monotonic_base_ns,
        }
    }

    pub fn wall_time(&self, monotonic_ns: u64) -> SystemTime {
        let realtime = (self.realtime_at_base_ns as i128 + monotonic_ns as i128
            - self.monotonic_base_ns as i128)
            .max(0);
        SystemTime::UNIX_EPOCH + Duration::from_nanos(realtime as u64)
    }

    /// RFC 3339 with milliseconds, UTC.
    pub fn rfc3339(&self, monotonic_ns: u64) -> String {
        humantime::format_rfc3339_millis(self.wall_time(monotonic_ns)).to_string()
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_with_a_fixed_offset() {
        let clock = WallClock::fixed(10_000_000_000, 1_700_000_000_000_000_000);
        assert_eq!(clock.rfc3339(10_000_000_000), "2023-11-14T22:13:20.000Z");
        assert_eq!(clock.rfc3339(12_500_000_000), "2023-11-14T22:13:22.500Z");
    }

    #[test]
    fn monotonic_now_advances() {
        let a = monotonic_now_ns();
        let b = monotonic_now_ns();
        assert!(a > 0 && b >= a);
    }
}
