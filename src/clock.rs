//! Coarse clocks for checks counted in seconds or tens of milliseconds.
//!
//! A precise clock reading costs about 27 ns on the machines measured here
//! (`clock_gettime` through the vDSO, reading the TSC); the kernel's coarse
//! clocks return the time of the last tick in about 5 ns. A request read
//! the precise clock some fifteen times, for stamps that only an idle timeout
//! or a token's expiry second ever looks at. Durations that are reported
//! (access log, histograms) keep the precise clock.

use std::time::{SystemTime, UNIX_EPOCH};

use rustix::time::{clock_gettime, ClockId};

/// Unix seconds on the precise wall clock: for judgements that must not lag
/// (a token's `iat` and `nbf`, a first verification, revocation entries).
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds on the coarse monotonic clock: behind the precise one by at
/// most a tick (1-10 ms), never going back.
pub fn coarse_millis() -> u64 {
    let t = clock_gettime(ClockId::MonotonicCoarse);
    (t.tv_sec as u64)
        .saturating_mul(1000)
        .saturating_add(t.tv_nsec as u64 / 1_000_000)
}

/// Unix seconds on the coarse wall clock. Behind by at most a tick, so an
/// expiry compared against it holds a few milliseconds longer; never use it
/// where lagging would refuse something (a token's `iat` or `nbf`).
pub fn coarse_unix_secs() -> u64 {
    let t = clock_gettime(ClockId::RealtimeCoarse);
    u64::try_from(t.tv_sec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clocks_follow_the_precise_ones_within_a_tick() {
        let precise = now_unix();
        let coarse = coarse_unix_secs();
        assert!(coarse.abs_diff(precise) <= 1, "{coarse} vs {precise}");

        let before = coarse_millis();
        std::thread::sleep(std::time::Duration::from_millis(60));
        let after = coarse_millis();
        // One tick is at most 10 ms (HZ = 100), plus scheduling slack.
        assert!(
            (50..=1000).contains(&(after - before)),
            "{before} -> {after}"
        );
    }
}
