//! Round-trip time and clock offset from one `Ping` and its `Pong`.
//!
//! **Invariant:** pure arithmetic on three timestamps that never panics: a clock that stepped
//! backwards gives an RTT of zero, and an offset too large for `i64` microseconds saturates.

use std::time::{Duration, SystemTime};

/// Round-trip time and clock offset derived from one `Pong`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClockSample {
    pub(crate) rtt: Duration,
    /// Server clock minus agent clock, in microseconds.
    pub(crate) offset_micros: i64,
}

/// Computes RTT and clock offset: `rtt = now - ping_sent_at`, `offset = server_receive_time -
/// (ping_sent_at + rtt / 2)`. A clock that stepped backwards gives an RTT of zero.
pub(crate) fn clock_sample(
    ping_sent_at: SystemTime,
    server_receive_time: SystemTime,
    now: SystemTime,
) -> ClockSample {
    let rtt = now.duration_since(ping_sent_at).unwrap_or(Duration::ZERO);
    let midpoint = ping_sent_at + rtt / 2;
    ClockSample {
        rtt,
        offset_micros: signed_micros(server_receive_time, midpoint),
    }
}

/// `a - b` in microseconds, saturating.
pub(crate) fn signed_micros(a: SystemTime, b: SystemTime) -> i64 {
    match a.duration_since(b) {
        Ok(ahead) => i64::try_from(ahead.as_micros()).unwrap_or(i64::MAX),
        Err(behind) => i64::try_from(behind.duration().as_micros())
            .map(|micros| -micros)
            .unwrap_or(i64::MIN + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(micros: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_micros(micros)
    }

    #[test]
    fn clock_in_sync() {
        // Ping at 0, server receives at 5 ms (its clock agrees), pong back at 10 ms.
        let clock = clock_sample(at(0), at(5_000), at(10_000));
        assert_eq!(clock.rtt, Duration::from_millis(10));
        assert_eq!(clock.offset_micros, 0);
    }

    #[test]
    fn server_clock_ahead() {
        // Server clock is 1 s ahead: it stamps 1.005 s for a receive at agent time 5 ms.
        let clock = clock_sample(at(0), at(1_005_000), at(10_000));
        assert_eq!(clock.rtt, Duration::from_millis(10));
        assert_eq!(clock.offset_micros, 1_000_000);
    }

    #[test]
    fn server_clock_behind() {
        let clock = clock_sample(at(2_000_000), at(1_500_100), at(2_000_200));
        assert_eq!(clock.rtt, Duration::from_micros(200));
        assert_eq!(clock.offset_micros, -500_000);
    }

    #[test]
    fn clock_stepping_backwards_gives_zero_rtt() {
        let clock = clock_sample(at(10_000), at(10_000), at(0));
        assert_eq!(clock.rtt, Duration::ZERO);
        assert_eq!(clock.offset_micros, 0);
    }
}
