//! The backend connection pool, protocol-agnostic (DESIGN §2, §5).
//!
//! A [`Pool`] holds one sub-pool per key (for PostgreSQL: user and database; startup options
//! are settings applied at checkout, not part of the key). Each sub-pool keeps its idle
//! connections, caps how many are checked out at once with a semaphore of `max_size` permits
//! (a checkout is a slot: a heal or rotation replaces the connection inside it, so a full pool
//! heals as fast as an empty one), bounds how many callers may wait for a permit, keeps
//! `min_idle` warm spares, retires connections past `idle_timeout` or their jittered
//! `max_lifetime`, retires idle ones before the server's own idle limit would close them, and
//! is dropped once nobody has used it for `idle_timeout`.
//! When no backend can be reached, a checkout is held (DESIGN §5: failover hold): it retries with
//! exponential backoff and jitter until `failover_hold` runs out, with at most `max_held` callers
//! held per pool. Maintenance health-checks connections that have been quiet for
//! `health_check_after`, so a black-holed flow is found before a client needs it. Opening and
//! judging a connection is the [`Manager`]'s job; resetting session state before check-in is the
//! session's (it speaks the protocol).

mod maintenance;
mod settings;

pub(crate) use settings::PoolSettings;
use settings::{retire_before, Backoff};

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ops::pool_state::{EventKind, PoolOps};

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

    /// Whether a failed [`Manager::connect`] is worth retrying during the failover hold: true
    /// for connection-level failures (DNS, refused, timeout, TLS, a server that is starting up
    /// or has the wrong role), false when the server refused the login itself (bad password,
    /// unknown database): those pass straight through to the client.
    fn is_retryable(err: &Self::Error) -> bool;

    /// How long the server lets this connection sit idle before it closes it (discovered at
    /// login), if it has such a limit. The pool retires idle connections with a margin before.
    fn idle_limit(&self, conn: &Self::Conn) -> Option<Duration>;

    /// An active round trip on an idle connection (PostgreSQL: an empty query); `false` means
    /// the connection is unusable. The pool bounds it by `health_check_timeout`.
    fn health_check(&self, conn: &mut Self::Conn) -> impl Future<Output = bool> + Send;

    /// The server's identifier of the connection, for logs (PostgreSQL: the backend process
    /// ID).
    fn conn_id(conn: &Self::Conn) -> i64;
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
    /// Opening a new connection failed for a reason retrying cannot fix (or the pool has no
    /// failover hold).
    #[error(transparent)]
    Connect(E),
    /// No backend could be reached within the failover hold; `last` is the last failure seen
    /// (none when the only attempt was cut off by the end of the hold).
    #[error("no backend reachable within the failover hold ({hold:?})")]
    Unavailable {
        /// How long this caller was held.
        waited: Duration,
        /// The configured hold.
        hold: Duration,
        /// Boxed: keeps the error small on the happy path's `Result`.
        last: Option<Box<E>>,
    },
    /// No backend could be reached and `max_held` callers are already held.
    #[error("no backend reachable and too many clients already held waiting for one")]
    HoldFull {
        /// The failure that would have started the hold.
        last: Box<E>,
    },
}

/// A pool's connections and callers, all keys together (for the admin port).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PoolStats {
    /// Idle in the pool (or being health-checked).
    pub(crate) idle: usize,
    /// Checked out (bound to a client session).
    pub(crate) active: usize,
    /// Callers waiting for a free slot.
    pub(crate) waiting: usize,
    /// Callers in the failover hold.
    pub(crate) held: usize,
}

/// A connection with the pool's bookkeeping.
struct Pooled<C> {
    conn: C,
    retire_at: Instant,
    /// Since when no client has used it (for `idle_timeout`).
    idle_since: Instant,
    /// Since when nothing at all went over it (for health checks and the server's idle limit).
    quiet_since: Instant,
    /// Retire it once it has been quiet this long (the server's idle limit minus a margin).
    quiet_limit: Option<Duration>,
}

impl<C> Pooled<C> {
    /// Quiet so long that the server may close it soon.
    fn near_server_idle_limit(&self, now: Instant) -> bool {
        self.quiet_limit
            .is_some_and(|limit| now.duration_since(self.quiet_since) >= limit)
    }
}

/// One key's connections.
struct SubPool<C> {
    idle: Mutex<Vec<Pooled<C>>>,
    permits: Arc<Semaphore>,
    /// `max_size` when it was created (a reload changes the size of new sub-pools only).
    size: usize,
    waiting: AtomicUsize,
    /// Idle connections taken out for a health check.
    checking: AtomicUsize,
    /// A top-up task is running.
    topping_up: AtomicBool,
    /// Warm spares being opened: each holds a slot, and is not a backend serving a client.
    opening: AtomicUsize,
    /// When a caller last took or gave back a connection (for dropping unused sub-pools).
    last_used: Mutex<Instant>,
}

impl<C> SubPool<C> {
    fn idle(&self) -> MutexGuard<'_, Vec<Pooled<C>>> {
        // A panic while holding this lock cannot leave the Vec inconsistent; keep serving.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Nobody holds, waits for, checks or opens a connection of it, and nobody used it for
    /// `unused_for`.
    fn unused(&self, now: Instant, unused_for: Duration) -> bool {
        let last = *self.last_used.lock().unwrap_or_else(|p| p.into_inner());
        self.permits.available_permits() == self.size
            && self.waiting.load(Ordering::Acquire) == 0
            && self.checking.load(Ordering::Acquire) == 0
            && !self.topping_up.load(Ordering::Acquire)
            && now.duration_since(last) >= unused_for
    }
}

/// The sub-pools of one pool, by key.
type SubPools<M> = HashMap<<M as Manager>::Key, Arc<SubPool<<M as Manager>::Conn>>>;

struct Inner<M: Manager> {
    name: String,
    manager: M,
    /// Replaced whole on reload.
    settings: RwLock<PoolSettings>,
    /// Where idle closes and refusals are reported for `/status`.
    ops: Arc<PoolOps>,
    subpools: Mutex<SubPools<M>>,
    /// Callers in the failover hold, all keys together.
    held: AtomicUsize,
    /// `suture_checkout_wait_seconds{pool}`, looked up once (a lookup takes the recorder's lock).
    checkout_wait: metrics::Histogram,
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
    pub(crate) fn new(
        name: &str,
        manager: M,
        settings: PoolSettings,
        ops: Arc<PoolOps>,
    ) -> Pool<M> {
        Pool {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                manager,
                settings: RwLock::new(settings),
                ops,
                subpools: Mutex::new(HashMap::new()),
                held: AtomicUsize::new(0),
                checkout_wait: metrics::histogram!("suture_checkout_wait_seconds", "pool" => name.to_owned()),
            }),
        }
    }

    /// The current settings (a copy: a reload may replace them at any time).
    pub(crate) fn settings(&self) -> PoolSettings {
        self.inner
            .settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the settings (reload). `max_size` applies to sub-pools created from now on.
    pub(crate) fn set_settings(&self, settings: PoolSettings) {
        *self
            .inner
            .settings
            .write()
            .unwrap_or_else(|p| p.into_inner()) = settings;
    }

    /// The connection manager.
    pub(crate) fn manager(&self) -> &M {
        &self.inner.manager
    }

    /// Idle and checked-out connections and waiting and held callers, all keys together.
    pub(crate) fn stats(&self) -> PoolStats {
        let map = self
            .inner
            .subpools
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut stats = PoolStats {
            held: self.inner.held.load(Ordering::Acquire),
            ..PoolStats::default()
        };
        for sub in map.values() {
            stats.idle += sub.idle().len() + sub.checking.load(Ordering::Acquire);
            let in_use = sub.size.saturating_sub(sub.permits.available_permits());
            stats.active += in_use.saturating_sub(sub.opening.load(Ordering::Acquire));
            stats.waiting += sub.waiting.load(Ordering::Acquire);
        }
        stats
    }

    /// Opens a backend connection for `key` within `limit`. The manager's login (DNS, TCP,
    /// TLS, authentication) is a future of kilobytes: boxed, so the futures that may await it
    /// do not carry it inline, above all every session's, for as long as the session lives,
    /// since a heal or a rotation opens a backend (DESIGN §10: an idle client costs at most
    /// 16 KiB).
    async fn connect_within(
        &self,
        key: &M::Key,
        limit: Duration,
    ) -> Result<Result<M::Conn, M::Error>, tokio::time::error::Elapsed> {
        tokio::time::timeout(limit, Box::pin(self.inner.manager.connect(key))).await
    }

    /// Opens one connection for `key` at start, so a pool with warm spares has logged in
    /// before its first client; the sub-pool is created (and topped up to `min_idle`) only if
    /// that works. Connection-level failures are retried with backoff (up to 30 s apart)
    /// until `give_up_after`.
    pub(crate) async fn warm(&self, key: &M::Key, give_up_after: Duration) -> Result<(), M::Error> {
        let deadline = Instant::now() + give_up_after;
        let mut pause = Duration::from_millis(250);
        loop {
            let limit = self.settings().checkout_timeout;
            match self.connect_within(key, limit).await {
                Ok(Ok(conn)) => {
                    let pooled = self.fresh(conn);
                    let sub = self.subpool(key);
                    sub.idle().push(pooled);
                    return Ok(());
                }
                Ok(Err(err)) if !M::is_retryable(&err) || Instant::now() >= deadline => {
                    return Err(err)
                }
                Ok(Err(err)) => {
                    tracing::debug!(pool = %self.inner.name, ?key, error = %err, "warm-up failed; retrying");
                }
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                // Timed out without an error to report: leave it to the clients.
                return Ok(());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(30));
        }
    }

    fn subpool(&self, key: &M::Key) -> Arc<SubPool<M::Conn>> {
        let mut map = self
            .inner
            .subpools
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(sub) = map.get(key) {
            // Under the map lock, so maintenance never drops a sub-pool just handed out.
            sub.touch();
            return Arc::clone(sub);
        }
        let size = self.settings().max_size;
        let sub = Arc::new(SubPool {
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size)),
            size,
            waiting: AtomicUsize::new(0),
            checking: AtomicUsize::new(0),
            topping_up: AtomicBool::new(false),
            opening: AtomicUsize::new(0),
            last_used: Mutex::new(Instant::now()),
        });
        map.insert(key.clone(), Arc::clone(&sub));
        drop(map);
        self.spawn_top_up(key.clone(), Arc::clone(&sub));
        sub
    }

    /// Hands out a healthy connection for `key`: an idle one if there is one, else a new one.
    /// Waiting for a free slot is bounded by the checkout timeout. Opening a connection is
    /// bounded by the failover hold: connection-level failures are retried with backoff until it
    /// runs out ([`PoolError::Unavailable`]); with no hold, by the rest of the checkout timeout.
    /// Both are measured from the start of the checkout.
    /// Cancel-safe: a dropped call leaks neither a permit, a connection nor a held count.
    pub(crate) async fn checkout(&self, key: &M::Key) -> Result<Checkout<M>, PoolError<M::Error>> {
        let started = Instant::now();
        let limit = self.settings().checkout_timeout;
        let sub = self.subpool(key);
        let permit = match Arc::clone(&sub.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => self.wait_for_permit(&sub, limit).await?,
        };
        let pooled = self.fill_slot(key, &sub, started).await?;
        self.record_checkout(started);
        Ok(self.wrap(pooled, key, permit))
    }

    /// A connection for a slot the caller already holds: an idle one if there is one, else a
    /// new one (held through the failover hold, or bounded by the checkout timeout without
    /// one), all measured from `started`.
    async fn fill_slot(
        &self,
        key: &M::Key,
        sub: &SubPool<M::Conn>,
        started: Instant,
    ) -> Result<Pooled<M::Conn>, PoolError<M::Error>> {
        if let Some(pooled) = self.take_idle(sub).await {
            return Ok(pooled);
        }
        let settings = &self.settings();
        if settings.failover_hold.is_zero() {
            let limit = settings.checkout_timeout;
            let remaining = limit.saturating_sub(started.elapsed());
            return match self.connect_within(key, remaining).await {
                Ok(Ok(conn)) => Ok(self.fresh(conn)),
                Ok(Err(err)) => Err(PoolError::Connect(err)),
                Err(_) => Err(PoolError::ConnectTimeout(limit)),
            };
        }
        self.open_held(key, sub, started).await
    }

    /// The newest usable idle connection, retiring unusable ones on the way. One that has been
    /// quiet longer than `health_check_after` is checked first, so a black-holed flow is never
    /// handed out (not cancel-safe in the sense that a dropped call closes the connection being
    /// checked, which is harmless).
    async fn take_idle(&self, sub: &SubPool<M::Conn>) -> Option<Pooled<M::Conn>> {
        loop {
            let mut pooled = sub.idle().pop()?;
            let now = Instant::now();
            if pooled.retire_at <= now {
                self.count_close("max_lifetime");
                continue;
            }
            if pooled.near_server_idle_limit(now) {
                self.count_close("idle_timeout");
                continue;
            }
            if let Err(cause) = self.inner.manager.check_idle(&mut pooled.conn) {
                self.count_idle_close(cause, &pooled.conn);
                continue;
            }
            let check_after = self.settings().health_check_after;
            if !check_after.is_zero() && now.duration_since(pooled.quiet_since) >= check_after {
                if !self.inner.manager.health_check(&mut pooled.conn).await {
                    self.count_close("health_check");
                    continue;
                }
                pooled.quiet_since = Instant::now();
            }
            return Some(pooled);
        }
    }

    /// Opens a connection, retrying connection-level failures with backoff and jitter until
    /// the failover hold runs out. Every attempt resolves the servers afresh (the manager's
    /// job), and a connection checked in meanwhile is taken instead.
    async fn open_held(
        &self,
        key: &M::Key,
        sub: &SubPool<M::Conn>,
        started: Instant,
    ) -> Result<Pooled<M::Conn>, PoolError<M::Error>> {
        let hold = self.settings().failover_hold;
        let deadline = started + hold;
        let mut backoff = Backoff::new();
        let mut held: Option<Held<'_>> = None;
        let mut last: Option<M::Error> = None;
        let mut attempts: u32 = 0;
        loop {
            attempts += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.connect_within(key, remaining).await {
                Ok(Ok(conn)) => {
                    if held.is_some() {
                        tracing::info!(pool = %self.inner.name, ?key, attempts, waited = ?started.elapsed(), "backend reachable again; held request released");
                    }
                    return Ok(self.fresh(conn));
                }
                Ok(Err(err)) if !M::is_retryable(&err) => return Err(PoolError::Connect(err)),
                Ok(Err(err)) => last = Some(err),
                // The hold ran out during the attempt.
                Err(_) => {}
            }
            if held.is_none() {
                match Held::enter(self) {
                    Some(entered) => {
                        tracing::warn!(pool = %self.inner.name, ?key, error = %DisplayLast(&last), ?hold, "backend unreachable; holding the request");
                        held = Some(entered);
                    }
                    None => {
                        self.count_unavailable();
                        tracing::warn!(pool = %self.inner.name, ?key, error = %DisplayLast(&last), max_held = self.settings().max_held, "backend unreachable and the failover hold is full");
                        return Err(match last {
                            Some(last) => PoolError::HoldFull {
                                last: Box::new(last),
                            },
                            None => PoolError::Unavailable {
                                waited: started.elapsed(),
                                hold,
                                last: None,
                            },
                        });
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                self.count_unavailable();
                tracing::warn!(pool = %self.inner.name, ?key, attempts, error = %DisplayLast(&last), ?hold, "no backend reachable within the failover hold");
                return Err(PoolError::Unavailable {
                    waited: started.elapsed(),
                    hold,
                    last: last.map(Box::new),
                });
            }
            tokio::time::sleep(backoff.pause().min(deadline - now)).await;
            if let Some(pooled) = self.take_idle(sub).await {
                return Ok(pooled);
            }
        }
    }

    fn count_unavailable(&self) {
        self.inner
            .ops
            .record(EventKind::Refusal, "backend_unavailable");
        metrics::counter!("suture_replays_refused_total", "pool" => self.inner.name.clone(), "reason" => "backend_unavailable")
            .increment(1);
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
        if sub.waiting.fetch_add(1, Ordering::AcqRel) >= self.settings().max_waiters {
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

    fn count_idle_close(&self, cause: &'static str, conn: &M::Conn) {
        self.inner.ops.record(EventKind::IdleClose, cause);
        tracing::info!(pool = %self.inner.name, cause, backend_id = M::conn_id(conn), "idle backend connection found closed");
        metrics::counter!("suture_backend_idle_closes_total", "pool" => self.inner.name.clone(), "cause" => cause)
            .increment(1);
    }

    fn record_checkout(&self, started: Instant) {
        self.inner
            .checkout_wait
            .record(started.elapsed().as_secs_f64());
    }

    fn fresh(&self, conn: M::Conn) -> Pooled<M::Conn> {
        let now = Instant::now();
        let quiet_limit = self.inner.manager.idle_limit(&conn).map(retire_before);
        Pooled {
            conn,
            retire_at: now + self.settings().jittered_lifetime(),
            idle_since: now,
            quiet_since: now,
            quiet_limit,
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

    /// Takes every idle connection out of the pool (shutdown), counted as closed for
    /// `shutdown`; the caller says goodbye to each.
    pub(crate) fn take_all_idle(&self) -> Vec<M::Conn> {
        let map = self
            .inner
            .subpools
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut all = Vec::new();
        for sub in map.values() {
            all.extend(std::mem::take(&mut *sub.idle()).into_iter().map(|p| p.conn));
        }
        metrics::counter!("suture_backend_closes_total", "pool" => self.inner.name.clone(), "reason" => "shutdown")
            .increment(all.len() as u64);
        all
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

    /// The connection, to look at.
    pub(crate) fn conn_ref(&self) -> &M::Conn {
        match self.conn.as_ref() {
            Some(pooled) => &pooled.conn,
            None => unreachable!("a Checkout always holds its connection until consumed"),
        }
    }

    /// When the connection reaches its (jittered) maximum lifetime: a session holding it should
    /// swap it for a fresh one at its next quiet moment.
    pub(crate) fn retire_at(&self) -> Option<Instant> {
        self.conn.as_ref().map(|pooled| pooled.retire_at)
    }

    /// Counts a close the holder makes for `reason` (the connection itself closes on drop).
    pub(crate) fn count_close(&self, reason: &'static str) {
        self.pool.count_close(reason);
    }

    /// Replaces the connection inside this slot with an idle one of the same key or a new one
    /// (held through the failover hold like a checkout, without waiting for another slot).
    /// The old connection is closed once the new one is in; on failure it stays (the caller
    /// has usually found it dead already).
    pub(crate) async fn replace(&mut self) -> Result<(), PoolError<M::Error>> {
        let started = Instant::now();
        let pool = self.pool.clone();
        let sub = pool.subpool(&self.key);
        let fresh = pool.fill_slot(&self.key, &sub, started).await?;
        pool.record_checkout(started);
        drop(self.conn.replace(fresh));
        Ok(())
    }

    /// Whether a new connection for this key can be opened without passing `max_size` (an idle
    /// one is there to take, or fewer than `max_size` exist).
    pub(crate) fn has_room(&self) -> bool {
        let sub = self.pool.subpool(&self.key);
        let idle = sub.idle().len();
        let max = sub.size;
        let in_use = max.saturating_sub(sub.permits.available_permits());
        idle > 0 || idle + in_use < max
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
        let now = Instant::now();
        pooled.idle_since = now;
        pooled.quiet_since = now;
        let sub = pool.subpool(&self.key);
        sub.idle().push(pooled);
    }
}

/// One caller in the failover hold: counted per pool and shown as `suture_held_requests`.
struct Held<'a> {
    name: &'a str,
    held: &'a AtomicUsize,
}

impl<'a> Held<'a> {
    /// Enters the hold, unless `max_held` callers are already in it.
    fn enter<M: Manager>(pool: &'a Pool<M>) -> Option<Held<'a>> {
        let inner = &*pool.inner;
        let before = inner.held.fetch_add(1, Ordering::AcqRel);
        if before >= pool.settings().max_held {
            inner.held.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        metrics::gauge!("suture_held_requests", "pool" => inner.name.clone()).increment(1.0);
        Some(Held {
            name: &inner.name,
            held: &inner.held,
        })
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.held.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("suture_held_requests", "pool" => self.name.to_owned()).decrement(1.0);
    }
}

/// The last connect failure for a log line.
struct DisplayLast<'a, E>(&'a Option<E>);

impl<E: std::fmt::Display> std::fmt::Display for DisplayLast<'_, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(err) => err.fmt(f),
            None => f.write_str("the attempt did not finish in time"),
        }
    }
}

#[cfg(test)]
mod tests;
