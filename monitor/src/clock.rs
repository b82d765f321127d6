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

/// CPU time the calling thread has used so far (CLOCK_THREAD_CPUTIME_ID);
/// zero if it cannot be read.
pub fn thread_cpu_time() -> Duration {
    Duration::from_nanos(clock_ns(libc::CLOCK_THREAD_CPUTIME_ID).unwrap_or(0))
}

/// Kernel timestamps to wall time. The offset between the clocks is read
/// again at every conversion (two vDSO clock reads, no syscall): when the
/// system clock is stepped (NTP, chrony's makestep, an operator), times
/// follow it at once instead of keeping the offset of start-up forever.
/// Events are not reordered by it: consecutive reads differ by the
/// nanoseconds between them, unless the clock was stepped in between.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    source: Source,
}

#[derive(Clone, Copy, Debug)]
enum Source {
    /// This machine's clocks; `fallback_offset_ns` (taken at start) if a
    /// read ever fails.
    System { fallback_offset_ns: i128 },
    /// A fixed pairing, for tests and replays.
    Fixed { offset_ns: i128 },
    /// Clocks read through `read` (monotonic, realtime), for tests.
    #[cfg(test)]
    Clocks { read: fn() -> (u64, u64) },
}

/// CLOCK_REALTIME minus CLOCK_MONOTONIC now, if both can be read.
fn system_offset_ns() -> Option<i128> {
    let monotonic = clock_ns(libc::CLOCK_MONOTONIC)?;
    let realtime = clock_ns(libc::CLOCK_REALTIME)?;
    Some(realtime as i128 - monotonic as i128)
}

impl WallClock {
    pub fn new() -> Self {
        Self {
            source: Source::System {
                fallback_offset_ns: system_offset_ns().unwrap_or(0),
            },
        }
    }

    /// A fixed pairing of the clocks, for tests and replays.
    pub fn fixed(monotonic_base_ns: u64, realtime_at_base_ns: u64) -> Self {
        Self {
            source: Source::Fixed {
                offset_ns: realtime_at_base_ns as i128 - monotonic_base_ns as i128,
            },
        }
    }

    fn offset_ns(&self) -> i128 {
        match self.source {
            Source::System { fallback_offset_ns } => {
                system_offset_ns().unwrap_or(fallback_offset_ns)
            }
            Source::Fixed { offset_ns } => offset_ns,
            #[cfg(test)]
            Source::Clocks { read } => {
                let (monotonic, realtime) = read();
                realtime as i128 - monotonic as i128
            }
        }
    }

    pub fn wall_time(&self, monotonic_ns: u64) -> SystemTime {
        let realtime = (monotonic_ns as i128 + self.offset_ns()).clamp(0, u64::MAX as i128);
        SystemTime::UNIX_EPOCH + Duration::from_nanos(realtime as u64)
    }

    /// `rfc3339` of a kernel timestamp.
    pub fn rfc3339(&self, monotonic_ns: u64) -> String {
        rfc3339(self.wall_time(monotonic_ns))
    }
}

/// RFC 3339 with milliseconds, UTC: how every time connmon prints or
/// sends is written.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
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

    /// A clock stepped while connmon runs (NTP's first sync on a node that
    /// booted with a wrong RTC, an operator's `date -s`) is followed: times
    /// converted after the step carry it.
    #[test]
    fn a_stepped_system_clock_is_followed() {
        use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
        static MONOTONIC: AtomicU64 = AtomicU64::new(10_000_000_000);
        static REALTIME: AtomicU64 = AtomicU64::new(1_700_000_000_000_000_000);
        let clock = WallClock {
            source: Source::Clocks {
                read: || (MONOTONIC.load(Relaxed), REALTIME.load(Relaxed)),
            },
        };
        assert_eq!(clock.rfc3339(10_000_000_000), "2023-11-14T22:13:20.000Z");
        // One second later the clock is stepped back by an hour.
        MONOTONIC.store(11_000_000_000, Relaxed);
        REALTIME.store(1_700_000_001_000_000_000 - 3_600_000_000_000, Relaxed);
        assert_eq!(clock.rfc3339(11_000_000_000), "2023-11-14T21:13:21.000Z");
        assert_eq!(clock.rfc3339(11_500_000_000), "2023-11-14T21:13:21.500Z");
    }

    /// The system clocks: a conversion of now is now, whatever happened to
    /// CLOCK_REALTIME since the clock was made.
    #[test]
    fn now_converts_to_the_system_time_now() {
        let clock = WallClock::new();
        let converted = clock.wall_time(monotonic_now_ns());
        let now = SystemTime::now();
        let apart = now
            .duration_since(converted)
            .unwrap_or_else(|e| e.duration());
        assert!(apart < Duration::from_millis(100), "{apart:?}");
    }
}
