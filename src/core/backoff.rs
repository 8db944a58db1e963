//! The one backoff: exponential from a base, capped, with a choice of jitter. The pool loop's
//! error backoff, start-up retries, the clean-up of a half-made ENI and the simulated SDK's
//! retries all draw their waits from it; each keeps its own attempt count.

use std::time::Duration;

use super::rng::XorShift64;

/// How a wait is randomized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// The exponential wait itself.
    None,
    /// Half fixed, half random: a fleet spreads out and no wait is short.
    Equal,
    /// Anywhere from 0 to the exponential wait (the AWS SDKs' retries).
    Full,
}

/// `base × 2^attempt`, at most `cap`, jittered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first wait (before jitter).
    pub base: Duration,
    /// The longest wait (before jitter).
    pub cap: Duration,
    /// Randomization.
    pub jitter: Jitter,
}

impl Backoff {
    /// A backoff.
    pub const fn new(base: Duration, cap: Duration, jitter: Jitter) -> Self {
        Self { base, cap, jitter }
    }

    /// The wait before retry `attempt` (0 for the first retry).
    pub fn delay(&self, attempt: u32, rng: &mut XorShift64) -> Duration {
        self.delay_capped(attempt, self.cap, rng)
    }

    /// As [`Self::delay`] with another cap (a throttled call's, say).
    pub fn delay_capped(&self, attempt: u32, cap: Duration, rng: &mut XorShift64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.min(16)).min(cap);
        match self.jitter {
            Jitter::None => exp,
            Jitter::Equal => exp.mul_f64(0.5 + 0.5 * rng.next_f64()),
            Jitter::Full => exp.mul_f64(rng.next_f64()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn waits_stay_within_their_bounds(attempt in 0u32..64, seed in any::<u64>(),
                                          base_ms in 1u64..2_000, cap_ms in 1u64..120_000) {
            let mut rng = XorShift64::new(seed);
            let (base, cap) = (Duration::from_millis(base_ms), Duration::from_millis(cap_ms));
            let exp = base.saturating_mul(1u32 << attempt.min(16)).min(cap);
            let none = Backoff::new(base, cap, Jitter::None).delay(attempt, &mut rng);
            prop_assert_eq!(none, exp);
            let eq = Backoff::new(base, cap, Jitter::Equal).delay(attempt, &mut rng);
            prop_assert!(eq >= exp / 2 && eq <= exp);
            let full = Backoff::new(base, cap, Jitter::Full).delay(attempt, &mut rng);
            prop_assert!(full <= exp);
        }
    }

    #[test]
    fn doubles_then_caps() {
        let b = Backoff::new(
            Duration::from_millis(500),
            Duration::from_secs(60),
            Jitter::None,
        );
        let mut rng = XorShift64::new(1);
        let waits: Vec<u64> = (0..10)
            .map(|a| b.delay(a, &mut rng).as_millis() as u64)
            .collect();
        assert_eq!(
            waits,
            [
                500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000
            ]
        );
        assert_eq!(
            b.delay_capped(9, Duration::from_secs(20), &mut rng),
            Duration::from_secs(20)
        );
    }
}
