//! Exponential backoff with jitter for transient failures (broker or Redis down): never give up on data,
//! only on shutdown.

use std::time::Duration;

/// Exponential backoff state: 50 ms doubling up to `max`, with ±20% jitter so replicas do not retry in step.
#[derive(Clone, Debug)]
pub struct Backoff {
    /// Delay before the next attempt.
    next: Duration,
    /// Upper bound of a single delay.
    max: Duration,
    /// Attempts made so far (for logs and rate-limited warnings).
    attempts: u32,
}

impl Backoff {
    /// Starts at 50 ms, capped at `max`.
    pub fn new(max: Duration) -> Self {
        Self {
            next: Duration::from_millis(50),
            max,
            attempts: 0,
        }
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The next delay to wait, advancing the state.
    pub fn next_delay(&mut self) -> Duration {
        self.attempts += 1;
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let nanos = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX);
        // Cheap deterministic-enough jitter from the clock; cryptographic randomness is not needed here.
        let seed = u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos()),
        );
        let jitter = (seed % 41) as i64 - 20; // -20..=20 percent
        let adjusted = (nanos as i128 * (100 + i128::from(jitter)) / 100).max(0) as u64;
        Duration::from_nanos(adjusted)
    }

    /// True on the first attempt and then on every power-of-two attempt from the 8th: when to log, so an
    /// outage does not flood the logs.
    pub fn should_log(&self) -> bool {
        let attempts = self.attempts;
        attempts <= 1 || attempts.is_power_of_two() && attempts >= 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_bounded_jitter() {
        let mut backoff = Backoff::new(Duration::from_secs(2));
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(40) && delays[0] <= Duration::from_millis(60));
        assert!(delays[9] <= Duration::from_millis(2400));
        assert!(delays[9] >= Duration::from_millis(1600));
        assert_eq!(backoff.attempts(), 10);
    }
}
