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
        };
        for _ in 0..1000 {
            let life = settings.jittered_lifetime();
            assert!(
                life >= Duration::from_secs(90) && life <= Duration::from_secs(110),
                "{life:?}"
            );
        }
    }
}
