//! The global replay budget (DESIGN §3): a token bucket per pool, so that when a database keeps
//! dying Suture stops replaying and reports instead of hammering it. Protocol-agnostic.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Replays allowed in a burst.
pub(crate) const DEFAULT_BURST: f64 = 100.0;
/// Replays the budget regains per second.
pub(crate) const DEFAULT_REFILL_PER_SECOND: f64 = 10.0;
/// Replays of one request before it is reported instead.
pub(crate) const MAX_REPLAYS_PER_REQUEST: u32 = 3;

/// A token bucket.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    burst: f64,
    refill_per_second: f64,
    state: Mutex<(f64, Instant)>,
}

impl RetryBudget {
    /// A full bucket of `burst` tokens regaining `refill_per_second`.
    pub(crate) fn new(burst: f64, refill_per_second: f64) -> RetryBudget {
        RetryBudget {
            burst,
            refill_per_second,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn try_spend(&self) -> bool {
        self.try_spend_at(Instant::now())
    }

    fn try_spend_at(&self, now: Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = *state;
        let elapsed = now.saturating_duration_since(last).as_secs_f64();
        let tokens = (tokens + elapsed * self.refill_per_second).min(self.burst);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            true
        } else {
            *state = (tokens, now);
            false
        }
    }
}

/// The pause before replay attempt `attempt` (1-based): none for the first, then 50 ms doubling,
/// with ±50 % jitter so replays from many sessions do not arrive together.
pub(crate) fn replay_backoff(attempt: u32) -> Duration {
    if attempt <= 1 {
        return Duration::ZERO;
    }
    let base = Duration::from_millis(50).saturating_mul(1 << (attempt - 2).min(6));
    base.mul_f64(rand::Rng::random_range(&mut rand::rng(), 0.5..1.5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_empties_and_refills() {
        let budget = RetryBudget::new(2.0, 10.0);
        let start = Instant::now();
        assert!(budget.try_spend_at(start));
        assert!(budget.try_spend_at(start));
        assert!(!budget.try_spend_at(start));
        assert!(budget.try_spend_at(start + Duration::from_millis(150)));
        assert!(!budget.try_spend_at(start + Duration::from_millis(160)));
    }

    #[test]
    fn backoff_grows_with_jitter() {
        assert_eq!(replay_backoff(1), Duration::ZERO);
        let second = replay_backoff(2);
        assert!(
            second >= Duration::from_millis(25) && second <= Duration::from_millis(75),
            "{second:?}"
        );
        let third = replay_backoff(3);
        assert!(
            third >= Duration::from_millis(50) && third <= Duration::from_millis(150),
            "{third:?}"
        );
    }
}
