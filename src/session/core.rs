//! What every session of one pool shares whatever its protocol: the pool's configuration, its
//! backend pool, the replay budget, the log rate limits, the memory budget of client buffers,
//! the operational state the admin port reports, the drain signal and the request-latency
//! histogram. Each protocol's service holds one, next to what only it needs.

use std::sync::{Arc, RwLock};

use crate::config::PoolConfig;
use crate::log_limit::LogLimiter;
use crate::ops::lifecycle::DrainSignal;
use crate::ops::pool_state::PoolOps;
use crate::pool::{Manager, Pool, PoolSettings};
use crate::retry_budget::{RetryBudget, DEFAULT_BURST, DEFAULT_REFILL_PER_SECOND};
use crate::session::budget::BufferBudget;
use crate::session::link::Link;

/// The protocol-agnostic part of a pool's service.
pub(crate) struct Core<M: Manager> {
    pub(crate) config: PoolConfig,
    pub(crate) pool: Pool<M>,
    /// Replays this pool may still make (DESIGN §3 global retry budget).
    pub(crate) replay_budget: RetryBudget,
    /// Log lines clients can cause at will, rate-limited per cause.
    pub(crate) log_limit: Arc<LogLimiter>,
    /// The memory all sessions of the process may hold in client messages held whole.
    pub(crate) buffer_budget: Arc<BufferBudget>,
    /// The pool's operational state (last heal, replay, refusal; logins).
    pub(crate) ops: Arc<PoolOps>,
    /// Tells sessions that shutdown is closing idle clients.
    pub(crate) drain: DrainSignal,
    /// `suture_request_duration_seconds{protocol}`, looked up once.
    pub(crate) request_duration: metrics::Histogram,
}

/// What a pool's core keeps across reloads besides its pool.
pub(crate) struct CoreShared {
    pub(crate) ops: Arc<PoolOps>,
    pub(crate) drain: DrainSignal,
    pub(crate) log_limit: Arc<LogLimiter>,
    pub(crate) buffer_budget: Arc<BufferBudget>,
}

impl<M: Manager> Core<M> {
    /// The core of a pool speaking `protocol` (the metrics label).
    pub(crate) fn new(
        config: PoolConfig,
        pool: Pool<M>,
        shared: CoreShared,
        protocol: &'static str,
    ) -> Core<M> {
        Core {
            request_duration: metrics::histogram!("suture_request_duration_seconds", "protocol" => protocol),
            config,
            pool,
            replay_budget: RetryBudget::new(DEFAULT_BURST, DEFAULT_REFILL_PER_SECOND),
            log_limit: shared.log_limit,
            buffer_budget: shared.buffer_budget,
            ops: shared.ops,
            drain: shared.drain,
        }
    }

    /// What a reload keeps.
    pub(crate) fn shared(&self) -> CoreShared {
        CoreShared {
            ops: Arc::clone(&self.ops),
            drain: self.drain.clone(),
            log_limit: Arc::clone(&self.log_limit),
            buffer_budget: Arc::clone(&self.buffer_budget),
        }
    }

    /// The pool's name (its `pool` metrics label).
    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }

    /// Says goodbye (PostgreSQL Terminate, MySQL COM_QUIT) to every idle backend connection and
    /// closes it (shutdown); returns how many.
    pub(crate) async fn terminate_idle(&self) -> usize
    where
        M::Conn: Link,
    {
        let idle = self.pool.take_all_idle();
        let count = idle.len();
        let mut goodbyes = tokio::task::JoinSet::new();
        for mut conn in idle {
            goodbyes.spawn(async move { conn.terminate().await });
        }
        while goodbyes.join_next().await.is_some() {}
        count
    }
}

/// A protocol manager's backend context (servers, users, deadlines): read on every connect,
/// replaced whole on reload, so connections opened from then on use the new one.
pub(crate) struct Current<T>(RwLock<Arc<T>>);

impl<T> Current<T> {
    pub(crate) fn new(value: Arc<T>) -> Current<T> {
        Current(RwLock::new(value))
    }

    /// The one in force.
    pub(crate) fn get(&self) -> Arc<T> {
        Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts a new one in force.
    pub(crate) fn set(&self, value: Arc<T>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = value;
    }
}

/// A reload a protocol's service prepared: the new configuration and backend context, not in
/// force yet.
pub(crate) struct PreparedReload<C> {
    pub(crate) config: PoolConfig,
    pub(crate) backend: Arc<C>,
}

/// The pool settings of a pool's configuration.
pub(crate) fn pool_settings(config: &PoolConfig) -> PoolSettings {
    PoolSettings {
        min_idle: config.sizes.min_idle,
        max_size: config.sizes.max_size,
        max_waiters: config.sizes.max_waiters,
        checkout_timeout: config.timeouts.checkout,
        idle_timeout: config.timeouts.idle,
        max_lifetime: config.timeouts.max_lifetime,
        failover_hold: config.timeouts.failover_hold,
        max_held: config.sizes.max_held,
        health_check_after: config.timeouts.health_check_after,
        health_check_timeout: config.timeouts.health_check_timeout,
    }
}
