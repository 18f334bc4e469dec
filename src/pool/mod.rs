//! The backend connection pool, protocol-agnostic (DESIGN §2, §5).
//!
//! A [`Pool`] holds one sub-pool per key (for PostgreSQL: user, database and startup options).
//! Each sub-pool keeps its idle connections, caps how many are checked out at once with a
//! semaphore of `max_size` permits, bounds how many callers may wait for a permit, keeps
//! `min_idle` warm spares, and retires connections past `idle_timeout` or their jittered
//! `max_lifetime`. Opening and judging a connection is the [`Manager`]'s job; resetting session
//! state before check-in is the session's (it speaks the protocol).

mod settings;

pub(crate) use settings::PoolSettings;

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Opens backend connections and judges them; one per protocol.
pub(crate) trait Manager: Send + Sync + 'static {
    /// Which sub-pool a connection belongs to.
    type Key: Clone + Eq + Hash + Debug + Send + Sync + 'static;
    /// An authenticated backend connection.
    type Conn: Send + 'static;
    /// Why a connection could not be opened.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Opens and authenticates a new connection (the manager applies its own per-step deadlines;
    /// the pool bounds the whole call by the checkout timeout).
    fn connect(
        &self,
        key: &Self::Key,
    ) -> impl Future<Output = Result<Self::Conn, Self::Error>> + Send;

    /// A cheap synchronous check (it never waits) before a connection is handed out or kept
    /// idle: `Err` carries the cause label for `suture_backend_idle_closes_total`.
    fn check_idle(&self, conn: &mut Self::Conn) -> Result<(), &'static str>;
}

/// Why a checkout failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PoolError<E: std::error::Error + 'static> {
    /// Too many callers are already waiting for this sub-pool.
    #[error("too many clients waiting for a backend connection")]
    QueueFull,
    /// No connection became free within the checkout timeout.
    #[error("timed out after {0:?} waiting for a free backend connection")]
    WaitTimeout(Duration),
    /// Opening a new connection did not finish within the checkout timeout.
    #[error("timed out after {0:?} opening a backend connection")]
    ConnectTimeout(Duration),
    /// Opening a new connection failed.
    #[error(transparent)]
    Connect(E),
}

/// A connection with the pool's bookkeeping.
struct Pooled<C> {
    conn: C,
    retire_at: Instant,
    idle_since: Instant,
}

/// One key's connections.
struct SubPool<C> {
    idle: Mutex<Vec<Pooled<C>>>,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
}

impl<C> SubPool<C> {
    fn idle(&self) -> MutexGuard<'_, Vec<Pooled<C>>> {
        // A panic while holding this lock cannot leave the Vec inconsistent; keep serving.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The sub-pools of one pool, by key.
type SubPools<M> = HashMap<<M as Manager>::Key, Arc<SubPool<<M as Manager>::Conn>>>;

struct Inner<M: Manager> {
    name: String,
    manager: M,
    settings: PoolSettings,
    subpools: Mutex<SubPools<M>>,
}

/// A keyed pool of backend connections; cheap to clone.
pub(crate) struct Pool<M: Manager> {
    inner: Arc<Inner<M>>,
}

impl<M: Manager> Clone for Pool<M> {
    fn clone(&self) -> Self {
        Pool {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// A checked-out connection. Dropping it closes the connection; [`Checkout::checkin`] returns it.
pub(crate) struct Checkout<M: Manager> {
    conn: Option<Pooled<M::Conn>>,
    pool: Pool<M>,
    key: M::Key,
    _permit: OwnedSemaphorePermit,
}

impl<M: Manager> Pool<M> {
    /// A pool named `name` (the metrics label) opening connections through `manager`.
    pub(crate) fn new(name: &str, manager: M, settings: PoolSettings) -> Pool<M> {
        Pool {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                manager,
                settings,
                subpools: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn subpool(&self, key: &M::Key) -> Arc<SubPool<M::Conn>> {
        let mut map = self
            .inner
            .subpools
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(sub) = map.get(key) {
            return Arc::clone(sub);
        }
        let sub = Arc::new(SubPool {
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(self.inner.settings.max_size)),
            waiting: AtomicUsize::new(0),
        });
        map.insert(key.clone(), Arc::clone(&sub));
        drop(map);
        self.spawn_top_up(key.clone(), Arc::clone(&sub));
        sub
    }

    /// Hands out a healthy connection for `key`: an idle one if there is one, else a new one.
    /// The whole call is bounded by the checkout timeout. Cancel-safe: a dropped call leaks
    /// neither a permit nor a connection.
    pub(crate) async fn checkout(&self, key: &M::Key) -> Result<Checkout<M>, PoolError<M::Error>> {
        let started = Instant::now();
        let limit = self.inner.settings.checkout_timeout;
        let sub = self.subpool(key);
        let permit = match Arc::clone(&sub.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => self.wait_for_permit(&sub, limit).await?,
        };
        loop {
            let Some(mut pooled) = sub.idle().pop() else {
                break;
            };
            if pooled.retire_at <= Instant::now() {
                self.count_close("max_lifetime");
                continue;
            }
            match self.inner.manager.check_idle(&mut pooled.conn) {
                Ok(()) => {
                    self.record_checkout(started);
                    return Ok(self.wrap(pooled, key, permit));
                }
                Err(cause) => self.count_idle_close(cause),
            }
        }
        let remaining = limit.saturating_sub(started.elapsed());
        let conn = match tokio::time::timeout(remaining, self.inner.manager.connect(key)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(err)) => return Err(PoolError::Connect(err)),
            Err(_) => return Err(PoolError::ConnectTimeout(limit)),
        };
        self.record_checkout(started);
        let pooled = self.fresh(conn);
        Ok(self.wrap(pooled, key, permit))
    }

    async fn wait_for_permit(
        &self,
        sub: &SubPool<M::Conn>,
        limit: Duration,
    ) -> Result<OwnedSemaphorePermit, PoolError<M::Error>> {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        if sub.waiting.fetch_add(1, Ordering::AcqRel) >= self.inner.settings.max_waiters {
            sub.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(PoolError::QueueFull);
        }
        let _waiting = Waiting(&sub.waiting);
        match tokio::time::timeout(limit, Arc::clone(&sub.permits).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; treat it like a timeout if it ever is.
            Ok(Err(_)) | Err(_) => Err(PoolError::WaitTimeout(limit)),
        }
    }

    fn count_close(&self, reason: &'static str) {
        metrics::counter!("suture_backend_closes_total", "pool" => self.inner.name.clone(), "reason" => reason)
            .increment(1);
    }

    fn count_idle_close(&self, cause: &'static str) {
        tracing::info!(pool = %self.inner.name, cause, "idle backend connection found closed");
        metrics::counter!("suture_backend_idle_closes_total", "pool" => self.inner.name.clone(), "cause" => cause)
            .increment(1);
    }

    fn record_checkout(&self, started: Instant) {
        metrics::histogram!("suture_checkout_wait_seconds", "pool" => self.inner.name.clone())
            .record(started.elapsed().as_secs_f64());
    }

    fn fresh(&self, conn: M::Conn) -> Pooled<M::Conn> {
        let now = Instant::now();
        Pooled {
            conn,
            retire_at: now + self.inner.settings.jittered_lifetime(),
            idle_since: now,
        }
    }

    fn wrap(
        &self,
        pooled: Pooled<M::Conn>,
        key: &M::Key,
        permit: OwnedSemaphorePermit,
    ) -> Checkout<M> {
        Checkout {
            conn: Some(pooled),
            pool: self.clone(),
            key: key.clone(),
            _permit: permit,
        }
    }

    /// Opens connections in the background until the sub-pool has `min_idle` idle ones (never
    /// beyond `max_size` in all).
    fn spawn_top_up(&self, key: M::Key, sub: Arc<SubPool<M::Conn>>) {
        let min_idle = self.inner.settings.min_idle;
        if min_idle == 0 {
            return;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            loop {
                let idle = sub.idle().len();
                let busy = pool
                    .inner
                    .settings
                    .max_size
                    .saturating_sub(sub.permits.available_permits());
                if idle >= min_idle || idle + busy >= pool.inner.settings.max_size {
                    return;
                }
                let limit = pool.inner.settings.checkout_timeout;
                match tokio::time::timeout(limit, pool.inner.manager.connect(&key)).await {
                    Ok(Ok(conn)) => {
                        let pooled = pool.fresh(conn);
                        sub.idle().insert(0, pooled);
                    }
                    Ok(Err(err)) => {
                        tracing::warn!(pool = %pool.inner.name, ?key, error = %err, "could not open a warm spare");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(pool = %pool.inner.name, ?key, "timed out opening a warm spare");
                        return;
                    }
                }
            }
        });
    }

    /// One maintenance pass: retire idle connections past `idle_timeout` (above `min_idle`) or
    /// their lifetime, drop unusable ones, and top every sub-pool up to `min_idle`.
    pub(crate) fn maintain(&self) {
        let subs: SubPools<M> = self
            .inner
            .subpools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let now = Instant::now();
        let settings = &self.inner.settings;
        for (key, sub) in subs {
            let retired: Vec<(Pooled<M::Conn>, &'static str)> = {
                let mut idle = sub.idle();
                let mut keep = Vec::with_capacity(idle.len());
                let mut retired = Vec::new();
                // Newest last: walk from the newest so the oldest go first.
                for mut pooled in idle.drain(..).rev() {
                    let expired = pooled.retire_at <= now;
                    let stale = now.duration_since(pooled.idle_since) >= settings.idle_timeout
                        && keep.len() >= settings.min_idle;
                    if expired || stale {
                        retired.push((
                            pooled,
                            if expired {
                                "max_lifetime"
                            } else {
                                "idle_timeout"
                            },
                        ));
                    } else if let Err(cause) = self.inner.manager.check_idle(&mut pooled.conn) {
                        self.count_idle_close(cause);
                    } else {
                        keep.push(pooled);
                    }
                }
                keep.reverse();
                *idle = keep;
                retired
            };
            for (_, reason) in &retired {
                self.count_close(reason);
            }
            drop(retired);
            self.spawn_top_up(key, sub);
        }
    }

    /// Runs [`Pool::maintain`] every `every` until the pool is dropped by everyone else.
    pub(crate) fn spawn_maintenance(&self, every: Duration) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(inner) => Pool { inner }.maintain(),
                    None => return,
                }
            }
        });
    }

    /// Closes every idle connection (shutdown).
    pub(crate) fn close_idle(&self) {
        let map = self
            .inner
            .subpools
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for sub in map.values() {
            let closed = std::mem::take(&mut *sub.idle());
            metrics::counter!("suture_backend_closes_total", "pool" => self.inner.name.clone(), "reason" => "shutdown")
                .increment(closed.len() as u64);
        }
    }

    /// Idle connections of one key (tests and diagnostics).
    #[cfg(test)]
    fn idle_count(&self, key: &M::Key) -> usize {
        self.subpool(key).idle().len()
    }
}

impl<M: Manager> Checkout<M> {
    /// The connection.
    pub(crate) fn conn(&mut self) -> &mut M::Conn {
        // `conn` is only taken by checkin/detach, which consume self.
        match self.conn.as_mut() {
            Some(pooled) => &mut pooled.conn,
            None => unreachable!("a Checkout always holds its connection until consumed"),
        }
    }

    /// Returns a connection whose session state the caller has already reset.
    pub(crate) fn checkin(mut self) {
        let Some(mut pooled) = self.conn.take() else {
            return;
        };
        let pool = &self.pool;
        if pooled.retire_at <= Instant::now() {
            pool.count_close("max_lifetime");
            return;
        }
        if pool.inner.manager.check_idle(&mut pooled.conn).is_err() {
            return;
        }
        pooled.idle_since = Instant::now();
        let sub = pool.subpool(&self.key);
        sub.idle().push(pooled);
    }
}

#[cfg(test)]
mod tests;
