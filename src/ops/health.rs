//! Liveness, startup and readiness (DESIGN §7, field report F4): a heartbeat task on the
//! data-path event loop stamps an atomic, a watchdog thread of its own compares the stamp with
//! the clock and exports the lag, and accept loops report whether they still run and whether
//! accepting keeps failing. The admin thread reads all of it without touching the data path.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the heartbeat task stamps the clock.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(100);
/// How often the watchdog looks.
const WATCHDOG_EVERY: Duration = Duration::from_millis(250);
/// Marks "not failing" in [`AcceptWatch`].
const NOT_FAILING: u64 = u64::MAX;

/// Health state shared by the data path, the watchdog and the admin thread.
#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    stall_threshold: Duration,
    startup_deadline: Instant,
    /// Microseconds since `epoch` at the last heartbeat.
    heartbeat: AtomicU64,
    /// Lateness of the last heartbeat tick, in microseconds.
    tick_late: AtomicU64,
    /// Lag in microseconds, as the watchdog last measured it.
    lag: AtomicU64,
    listeners_up: AtomicBool,
    draining: AtomicBool,
    accept: Vec<Arc<AcceptWatch>>,
}

/// One accept loop's state.
#[derive(Debug)]
pub struct AcceptWatch {
    /// The pool it serves.
    pub pool: String,
    running: AtomicBool,
    /// Microseconds since the health epoch at the first of the current run of failed accepts.
    failing_since: AtomicU64,
    /// Microseconds since the health epoch at the latest failed accept.
    last_failure: AtomicU64,
    epoch: Instant,
}

/// A run of failed accepts counts as stuck only while failures keep coming this often (the
/// loop retries every 100 ms).
const FAILURE_RECENT: Duration = Duration::from_secs(1);

impl AcceptWatch {
    /// The loop started.
    pub fn started(&self) {
        self.running.store(true, Ordering::Release);
    }

    /// The loop ended (on shutdown, or because it broke).
    pub fn stopped(&self) {
        self.running.store(false, Ordering::Release);
    }

    /// An accept failed (out of file descriptors and the like).
    pub fn failed(&self) {
        let now = micros(self.epoch.elapsed());
        self.last_failure.store(now, Ordering::Release);
        let _ = self.failing_since.compare_exchange(
            NOT_FAILING,
            now,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// An accept succeeded. Cheap when nothing failed before: one load.
    pub fn succeeded(&self) {
        if self.failing_since.load(Ordering::Relaxed) != NOT_FAILING {
            self.failing_since.store(NOT_FAILING, Ordering::Release);
        }
    }

    /// Why the loop cannot accept, if it has been unable to for longer than `limit`.
    fn stuck(&self, now: Duration, limit: Duration) -> Option<String> {
        if !self.running.load(Ordering::Acquire) {
            return Some(format!("pool {}: accept loop is not running", self.pool));
        }
        let since = self.failing_since.load(Ordering::Acquire);
        if since == NOT_FAILING {
            return None;
        }
        let last = Duration::from_micros(self.last_failure.load(Ordering::Acquire));
        let failing = now.saturating_sub(Duration::from_micros(since));
        (failing > limit && now.saturating_sub(last) < FAILURE_RECENT).then(|| {
            format!(
                "pool {}: every accept has failed for {:.1}s",
                self.pool,
                failing.as_secs_f64()
            )
        })
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX - 1)
}

impl Health {
    /// Health for the listed pools' accept loops.
    pub fn new(stall_threshold: Duration, startup_timeout: Duration, pools: &[String]) -> Health {
        let epoch = Instant::now();
        Health {
            epoch,
            stall_threshold,
            startup_deadline: epoch + startup_timeout,
            heartbeat: AtomicU64::new(0),
            tick_late: AtomicU64::new(0),
            lag: AtomicU64::new(0),
            listeners_up: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            accept: pools
                .iter()
                .map(|pool| {
                    Arc::new(AcceptWatch {
                        pool: pool.clone(),
                        running: AtomicBool::new(false),
                        failing_since: AtomicU64::new(NOT_FAILING),
                        last_failure: AtomicU64::new(0),
                        epoch,
                    })
                })
                .collect(),
        }
    }

    /// The accept watch of `pool`.
    pub fn accept_watch(&self, pool: &str) -> Option<Arc<AcceptWatch>> {
        self.accept.iter().find(|w| w.pool == pool).cloned()
    }

    /// Every listener is bound and its accept loop spawned.
    pub fn set_listeners_up(&self) {
        self.listeners_up.store(true, Ordering::Release);
    }

    pub fn listeners_up(&self) -> bool {
        self.listeners_up.load(Ordering::Acquire)
    }

    /// Shutdown began: readiness fails from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
        metrics::gauge!("suture_draining").set(1.0);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Time since start.
    pub fn uptime(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Whether `/startup` may stop waiting for warm-up.
    pub fn startup_timed_out(&self) -> bool {
        Instant::now() >= self.startup_deadline
    }

    /// Stamps the heartbeat now; called on the data path when it starts, so that a stall
    /// before the heartbeat task first runs is seen too.
    pub fn beat(&self) {
        self.heartbeat
            .store(micros(self.epoch.elapsed()).max(1), Ordering::Release);
    }

    /// Runs on the data-path event loop until the runtime stops: stamps the clock every
    /// [`HEARTBEAT_EVERY`] and notes how late each tick came.
    pub async fn heartbeat(self: Arc<Self>) {
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let scheduled = tick.tick().await;
            let late = tokio::time::Instant::now().saturating_duration_since(scheduled);
            self.tick_late.store(micros(late), Ordering::Release);
            self.beat();
        }
    }

    /// The data-path loop's lag now: how far the heartbeat is overdue, or how late its last
    /// tick came, whichever is more.
    fn measure_lag(&self) -> Duration {
        let stamp = self.heartbeat.load(Ordering::Acquire);
        if stamp == 0 {
            // The data path has not started yet (still deriving secrets, binding listeners):
            // `/startup` covers that time, not liveness.
            return Duration::ZERO;
        }
        let beat = Duration::from_micros(stamp);
        let overdue = self
            .epoch
            .elapsed()
            .saturating_sub(beat)
            .saturating_sub(HEARTBEAT_EVERY);
        let late = Duration::from_micros(self.tick_late.load(Ordering::Acquire));
        overdue.max(late)
    }

    /// The lag the watchdog last measured.
    pub fn lag(&self) -> Duration {
        Duration::from_micros(self.lag.load(Ordering::Acquire))
    }

    /// Why the process is not live: the data-path loop stalled past the threshold, or an
    /// accept loop stopped or cannot accept. `None` when live.
    pub fn liveness_failure(&self) -> Option<String> {
        let lag = self.lag().max(self.measure_lag());
        if lag > self.stall_threshold {
            return Some(format!(
                "data-path event loop stalled for {:.1}s (stall_threshold {:?})",
                lag.as_secs_f64(),
                self.stall_threshold
            ));
        }
        if !self.listeners_up() || self.draining() {
            // Accept loops end on purpose during shutdown and have not started before.
            return None;
        }
        let now = self.epoch.elapsed();
        self.accept
            .iter()
            .find_map(|w| w.stuck(now, self.stall_threshold))
    }

    /// Starts the watchdog thread: it measures the lag, exports it as
    /// `suture_event_loop_lag_seconds` and logs when the loop stalls and when it recovers.
    pub fn spawn_watchdog(self: &Arc<Self>) -> std::io::Result<()> {
        let health = Arc::clone(self);
        std::thread::Builder::new()
            .name("suture-watchdog".into())
            .spawn(move || {
                let lag_gauge = metrics::gauge!("suture_event_loop_lag_seconds");
                let mut stalled = false;
                loop {
                    std::thread::sleep(WATCHDOG_EVERY);
                    let lag = health.measure_lag();
                    health.lag.store(micros(lag), Ordering::Release);
                    lag_gauge.set(lag.as_secs_f64());
                    let now_stalled = lag > health.stall_threshold;
                    if now_stalled && !stalled {
                        tracing::error!(lag = ?lag, threshold = ?health.stall_threshold, "data-path event loop stalled; /healthz fails");
                    } else if stalled && !now_stalled {
                        tracing::warn!(lag = ?lag, "data-path event loop running again");
                    }
                    stalled = now_stalled;
                }
            })
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overdue_heartbeat_is_a_stall() {
        let health = Health::new(Duration::from_millis(50), Duration::ZERO, &["app".into()]);
        // Not stamped yet: the data path is still starting, which is no stall.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(health.liveness_failure(), None);
        // Stamped once, long ago: overdue by more than the period plus the threshold.
        health.heartbeat.store(1, Ordering::Release);
        assert!(health
            .liveness_failure()
            .is_some_and(|why| why.contains("stalled")));
        let beat = || {
            health
                .heartbeat
                .store(micros(health.epoch.elapsed()), Ordering::Release)
        };
        beat();
        assert_eq!(
            health.liveness_failure(),
            None,
            "accept loops count once up"
        );
        health.set_listeners_up();
        let why = health.liveness_failure();
        assert!(
            why.as_deref().is_some_and(|w| w.contains("not running")),
            "{why:?}"
        );
        let watch = health.accept_watch("app").expect("watch");
        watch.started();
        assert_eq!(health.liveness_failure(), None);
        watch.failed();
        std::thread::sleep(Duration::from_millis(60));
        watch.failed();
        beat();
        assert!(health
            .liveness_failure()
            .is_some_and(|why| why.contains("every accept")));
        watch.succeeded();
        assert_eq!(health.liveness_failure(), None);
        health.set_draining();
        watch.stopped();
        assert_eq!(
            health.liveness_failure(),
            None,
            "stopping on shutdown is fine"
        );
    }
}
