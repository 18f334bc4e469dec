//! Sizes and time limits of one pool, taken from the pool's configuration.

use std::time::Duration;

use rand::Rng;

/// What a pool needs to know from its configuration.
#[derive(Clone, Debug)]
pub(crate) struct PoolSettings {
    /// Idle connections kept warm per key.
    pub(crate) min_idle: usize,
    /// Connections checked out at once per key.
    pub(crate) max_size: usize,
    /// Callers allowed to wait for a free connection per key.
    pub(crate) max_waiters: usize,
    /// Bound on a whole checkout: waiting for a permit plus opening a connection.
    pub(crate) checkout_timeout: Duration,
    /// Idle connections above `min_idle` are closed after this long.
    pub(crate) idle_timeout: Duration,
    /// Connections are retired after this long, ± `LIFETIME_JITTER`.
    pub(crate) max_lifetime: Duration,
    /// How long a checkout keeps retrying while no backend can be reached (zero: one attempt,
    /// bounded by `checkout_timeout`).
    pub(crate) failover_hold: Duration,
    /// Callers held at once per pool; more fail at once.
    pub(crate) max_held: usize,
    /// Idle connections quiet for this long are health-checked by maintenance (zero: never).
    pub(crate) health_check_after: Duration,
    /// Deadline of one health check.
    pub(crate) health_check_timeout: Duration,
}

/// First pause between connect attempts during the failover hold.
const BACKOFF_START: Duration = Duration::from_millis(50);
/// Longest pause between connect attempts: service resumes within about this much (plus one
/// login) of the server accepting connections again.
const BACKOFF_CAP: Duration = Duration::from_millis(250);

/// Exponential backoff with jitter for the failover hold.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff {
            next: BACKOFF_START,
        }
    }

    /// The next pause: the current step with "equal jitter" (between half of it and all of it),
    /// then the step doubles up to the cap.
    pub(crate) fn pause(&mut self) -> Duration {
        let step = self.next;
        self.next = (step * 2).min(BACKOFF_CAP);
        step.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

/// How long before a server's idle limit (e.g. `idle_session_timeout`) an idle connection is
/// retired: the limit minus a margin of 20 % or 1 s, whichever is larger, never below zero.
pub(crate) fn retire_before(limit: Duration) -> Duration {
    let margin = (limit / 5).max(Duration::from_secs(1));
    limit.saturating_sub(margin)
}

/// Fraction of `max_lifetime` by which each connection's lifetime is randomly shortened or
/// lengthened, so connections opened together do not all retire together.
const LIFETIME_JITTER: f64 = 0.1;

impl PoolSettings {
    /// `max_lifetime` with ±10 % jitter.
    pub(crate) fn jittered_lifetime(&self) -> Duration {
        let factor = 1.0 + rand::rng().random_range(-LIFETIME_JITTER..=LIFETIME_JITTER);
        self.max_lifetime.mul_f64(factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetime_jitter_stays_within_ten_percent() {
        let settings = PoolSettings {
            min_idle: 0,
            max_size: 1,
            max_waiters: 1,
            checkout_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_lifetime: Duration::from_secs(100),
            failover_hold: Duration::ZERO,
            max_held: 1,
            health_check_after: Duration::ZERO,
            health_check_timeout: Duration::from_secs(1),
        };
        for _ in 0..1000 {
            let life = settings.jittered_lifetime();
            assert!(
                life >= Duration::from_secs(90) && life <= Duration::from_secs(110),
                "{life:?}"
            );
        }
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let mut backoff = Backoff::new();
        let pauses: Vec<Duration> = (0..8).map(|_| backoff.pause()).collect();
        let ms = Duration::from_millis;
        assert!(pauses[0] >= ms(25) && pauses[0] <= ms(50), "{pauses:?}");
        assert!(pauses[1] >= ms(50) && pauses[1] <= ms(100), "{pauses:?}");
        for pause in &pauses[3..] {
            assert!(*pause >= ms(125) && *pause <= ms(250), "{pauses:?}");
        }
    }

    #[test]
    fn idle_limit_margin() {
        let s = Duration::from_secs;
        assert_eq!(retire_before(s(0)), s(0));
        assert_eq!(retire_before(Duration::from_millis(500)), s(0));
        assert_eq!(retire_before(s(1)), s(0));
        assert_eq!(retire_before(s(3)), s(2));
        assert_eq!(retire_before(s(10)), s(8));
        assert_eq!(retire_before(s(3600)), s(2880));
    }
}
