//! Reconnection delays: exponential with full jitter, from 1 s up to 30 s (the HealthHub client tutorial's bounds).
//!
//! Full jitter (a random delay between the floor and the current ceiling) keeps a ward's worth of
//! devices from reconnecting in lockstep after a relay restart.

use rand::Rng;
use std::time::Duration;

/// The delay before each reconnection attempt.
#[derive(Debug, Clone)]
pub struct Backoff {
    floor: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// The HealthHub client tutorial's bounds: 1 s to 30 s.
    pub fn new() -> Backoff {
        Backoff::with_bounds(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// Other bounds.
    pub fn with_bounds(floor: Duration, cap: Duration) -> Backoff {
        Backoff {
            floor,
            cap,
            attempt: 0,
        }
    }

    /// The ceiling of the next delay: floor × 2^attempt, at most the cap.
    pub fn ceiling(&self) -> Duration {
        self.floor
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap)
    }

    /// The next delay, drawn between the floor and the ceiling.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let span = ceiling.saturating_sub(self.floor).as_millis() as u64;
        self.floor + Duration::from_millis(rng.random_range(0..=span))
    }

    /// After a connection that stayed up: start again from the floor.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut backoff = Backoff::new();
        let ceilings: Vec<u64> = (0..7)
            .map(|_| {
                let ceiling = backoff.ceiling();
                let delay = backoff.next_delay(&mut rng);
                assert!(
                    delay >= Duration::from_secs(1) && delay <= ceiling,
                    "{delay:?} within 1 s..{ceiling:?}"
                );
                ceiling.as_secs()
            })
            .collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 30, 30]);
        let delays: Vec<Duration> = (0..20).map(|_| backoff.next_delay(&mut rng)).collect();
        assert!(delays.iter().any(|d| *d != delays[0]), "jittered");
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_secs(1));
    }
}
