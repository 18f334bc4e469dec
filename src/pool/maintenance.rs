//! Pool maintenance, in the background: warm spares topped up to `min_idle`, idle connections
//! retired past `idle_timeout`, their lifetime or near the server's idle limit, quiet ones
//! health-checked, and sub-pools nobody uses dropped.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;

use super::{Manager, Pool, Pooled, SubPool, SubPools};

/// A warm spare being opened: it holds a slot of its sub-pool and is counted in `opening`
/// (not an active backend) until it is in the idle list or has failed.
struct Opening<'a> {
    slot: Option<OwnedSemaphorePermit>,
    count: &'a AtomicUsize,
}

impl<'a> Opening<'a> {
    fn new(slot: OwnedSemaphorePermit, count: &'a AtomicUsize) -> Opening<'a> {
        count.fetch_add(1, Ordering::AcqRel);
        Opening {
            slot: Some(slot),
            count,
        }
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        // The slot first, then the count: never an active backend that is not there.
        drop(self.slot.take());
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<M: Manager> Pool<M> {
    /// Opens connections in the background until the sub-pool has `min_idle` idle ones (never
    /// beyond `max_size` in all). One top-up per sub-pool runs at a time.
    pub(super) fn spawn_top_up(&self, key: M::Key, sub: Arc<SubPool<M::Conn>>) {
        let min_idle = self.settings().min_idle;
        if min_idle == 0 || sub.topping_up.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            struct Done<'a>(&'a AtomicBool);
            impl Drop for Done<'_> {
                fn drop(&mut self) {
                    self.0.store(false, Ordering::Release);
                }
            }
            let _done = Done(&sub.topping_up);
            loop {
                // The spare takes a slot while it is opened: a client that checks out meanwhile
                // waits for it instead of opening one more than `max_size`.
                let Ok(slot) = Arc::clone(&sub.permits).try_acquire_owned() else {
                    return;
                };
                let opening = Opening::new(slot, &sub.opening);
                let idle = sub.idle().len() + sub.checking.load(Ordering::Acquire);
                let busy = sub.size.saturating_sub(sub.permits.available_permits());
                if idle >= min_idle || idle + busy > sub.size {
                    return;
                }
                let limit = pool.settings().checkout_timeout;
                match pool.connect_within(&key, limit).await {
                    Ok(Ok(conn)) => {
                        let pooled = pool.fresh(conn);
                        sub.idle().insert(0, pooled);
                        drop(opening);
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

    /// One maintenance pass: retire idle connections past `idle_timeout` (above `min_idle`),
    /// their lifetime or near the server's idle limit, drop unusable ones, health-check those
    /// quiet for `health_check_after` (concurrently, in the background; the good ones come
    /// back), and top every sub-pool up to `min_idle`.
    pub(crate) fn maintain(&self) {
        let now = Instant::now();
        let settings = &self.settings();
        self.drop_unused(now);
        let subs: SubPools<M> = self
            .inner
            .subpools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let check_after = settings.health_check_after;
        for (key, sub) in subs {
            let mut to_check = Vec::new();
            let retired: Vec<(Pooled<M::Conn>, &'static str)> = {
                let mut idle = sub.idle();
                let mut keep = Vec::with_capacity(idle.len());
                let mut retired = Vec::new();
                // Newest last: walk from the newest so the oldest go first.
                for mut pooled in idle.drain(..).rev() {
                    let stale = now.duration_since(pooled.idle_since) >= settings.idle_timeout
                        && keep.len() >= settings.min_idle;
                    if pooled.retire_at <= now {
                        retired.push((pooled, "max_lifetime"));
                    } else if stale || pooled.near_server_idle_limit(now) {
                        retired.push((pooled, "idle_timeout"));
                    } else if let Err(cause) = self.inner.manager.check_idle(&mut pooled.conn) {
                        self.count_idle_close(cause, &pooled.conn);
                    } else if !check_after.is_zero()
                        && now.duration_since(pooled.quiet_since) >= check_after
                    {
                        to_check.push(pooled);
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
            for pooled in to_check {
                self.spawn_health_check(pooled, Arc::clone(&sub));
            }
            self.spawn_top_up(key, sub);
        }
    }

    /// Drops the sub-pools nobody used for `idle_timeout` (closing their idle connections), so
    /// keys that clients stop using cost nothing.
    fn drop_unused(&self, now: Instant) {
        let settings = &self.settings();
        let dropped: Vec<Arc<SubPool<M::Conn>>> = {
            let mut map = self
                .inner
                .subpools
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let unused: Vec<M::Key> = map
                .iter()
                .filter(|(_, sub)| sub.unused(now, settings.idle_timeout))
                .map(|(key, _)| key.clone())
                .collect();
            unused.iter().filter_map(|key| map.remove(key)).collect()
        };
        for sub in dropped {
            let closed = std::mem::take(&mut *sub.idle());
            for _ in &closed {
                self.count_close("idle_timeout");
            }
        }
    }

    /// Checks one idle connection in the background under `health_check_timeout`; puts it back
    /// if it answered, else closes it.
    fn spawn_health_check(&self, mut pooled: Pooled<M::Conn>, sub: Arc<SubPool<M::Conn>>) {
        sub.checking.fetch_add(1, Ordering::AcqRel);
        let pool = self.clone();
        tokio::spawn(async move {
            let limit = pool.settings().health_check_timeout;
            let alive =
                tokio::time::timeout(limit, pool.inner.manager.health_check(&mut pooled.conn))
                    .await
                    .unwrap_or(false);
            if alive {
                pooled.quiet_since = Instant::now();
                sub.idle().push(pooled);
            } else {
                tracing::info!(pool = %pool.inner.name, ?limit, "idle backend connection failed its health check");
                pool.count_close("health_check");
                drop(pooled);
            }
            sub.checking.fetch_sub(1, Ordering::AcqRel);
        });
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
}
