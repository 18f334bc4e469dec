//! Pool behaviour with an in-memory manager: limits, waiting, reuse and retirement.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

/// Why the fake manager did not connect.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum Refused {
    /// Like a refused TCP connect: the failover hold retries it.
    #[error("connection refused")]
    Down,
    /// Like a bad password: passed straight through.
    #[error("password authentication failed")]
    Auth,
}

struct Counting {
    opened: AtomicUsize,
    attempts: AtomicUsize,
    /// Every connect fails with `Down`.
    refuse: AtomicBool,
    /// The next this many connects fail with `Down`.
    refuse_times: AtomicUsize,
    /// Every connect fails with `Auth`.
    deny: AtomicBool,
    /// The server's idle limit reported for new connections, in ms (0: none).
    idle_limit_ms: AtomicUsize,
    /// Health checks never answer (a black-holed flow).
    blackhole: AtomicBool,
    health_checks: AtomicUsize,
}

struct FakeConn {
    id: usize,
    idle_limit: Option<Duration>,
}

impl Manager for Arc<Counting> {
    type Key = &'static str;
    type Conn = FakeConn;
    type Error = Refused;

    async fn connect(&self, _key: &Self::Key) -> Result<FakeConn, Refused> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if self.deny.load(Ordering::SeqCst) {
            return Err(Refused::Auth);
        }
        if self.refuse.load(Ordering::SeqCst) {
            return Err(Refused::Down);
        }
        let refuse_now = self
            .refuse_times
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refuse_now {
            return Err(Refused::Down);
        }
        let ms = self.idle_limit_ms.load(Ordering::SeqCst);
        Ok(FakeConn {
            id: self.opened.fetch_add(1, Ordering::SeqCst),
            idle_limit: (ms > 0).then(|| Duration::from_millis(ms as u64)),
        })
    }

    fn check_idle(&self, _conn: &mut FakeConn) -> Result<(), &'static str> {
        Ok(())
    }

    fn is_retryable(err: &Refused) -> bool {
        *err == Refused::Down
    }

    fn idle_limit(&self, conn: &FakeConn) -> Option<Duration> {
        conn.idle_limit
    }

    fn conn_id(conn: &FakeConn) -> i64 {
        conn.id as i64
    }

    async fn health_check(&self, _conn: &mut FakeConn) -> bool {
        self.health_checks.fetch_add(1, Ordering::SeqCst);
        if self.blackhole.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        true
    }
}

fn settings(min_idle: usize, max_size: usize, max_waiters: usize) -> PoolSettings {
    PoolSettings {
        min_idle,
        max_size,
        max_waiters,
        checkout_timeout: Duration::from_millis(200),
        idle_timeout: Duration::from_secs(600),
        max_lifetime: Duration::from_secs(3600),
        failover_hold: Duration::ZERO,
        max_held: 1000,
        health_check_after: Duration::ZERO,
        health_check_timeout: Duration::from_millis(100),
    }
}

/// Settings with a failover hold.
fn holding(hold: Duration) -> PoolSettings {
    let mut s = settings(0, 10, 10);
    s.failover_hold = hold;
    s
}

fn manager() -> Arc<Counting> {
    Arc::new(Counting {
        opened: AtomicUsize::new(0),
        attempts: AtomicUsize::new(0),
        refuse: AtomicBool::new(false),
        refuse_times: AtomicUsize::new(0),
        deny: AtomicBool::new(false),
        idle_limit_ms: AtomicUsize::new(0),
        blackhole: AtomicBool::new(false),
        health_checks: AtomicUsize::new(0),
    })
}

#[tokio::test]
async fn checked_in_connection_is_reused() {
    let m = manager();
    let pool = Pool::new("t", Arc::clone(&m), settings(0, 2, 10), Default::default());
    let mut first = pool.checkout(&"k").await.expect("checkout");
    let id = first.conn().id;
    first.checkin();
    let mut second = pool.checkout(&"k").await.expect("checkout");
    assert_eq!(second.conn().id, id);
    assert_eq!(m.opened.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn dropped_checkout_closes_instead_of_reusing() {
    let m = manager();
    let pool = Pool::new("t", Arc::clone(&m), settings(0, 2, 10), Default::default());
    drop(pool.checkout(&"k").await.expect("checkout"));
    let mut again = pool.checkout(&"k").await.expect("checkout");
    assert_eq!(again.conn().id, 1);
}

#[tokio::test]
async fn max_size_makes_callers_wait_then_time_out() {
    let pool = Pool::new("t", manager(), settings(0, 1, 10), Default::default());
    let held = pool.checkout(&"k").await.expect("checkout");
    let err = pool.checkout(&"k").await.err().expect("must time out");
    assert!(matches!(err, PoolError::WaitTimeout(_)), "{err}");
    drop(held);
    assert!(pool.checkout(&"k").await.is_ok());
}

#[tokio::test]
async fn waiter_gets_the_connection_checked_in() {
    let m = manager();
    let pool = Pool::new("t", Arc::clone(&m), settings(0, 1, 10), Default::default());
    let held = pool.checkout(&"k").await.expect("checkout");
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.checkout(&"k").await.map(|mut c| c.conn().id) })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    held.checkin();
    assert_eq!(waiter.await.expect("join").expect("checkout"), 0);
    assert_eq!(m.opened.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn wait_queue_is_bounded() {
    let pool = Pool::new("t", manager(), settings(0, 1, 1), Default::default());
    let _held = pool.checkout(&"k").await.expect("checkout");
    let waiting = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.checkout(&"k").await.is_ok() })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let err = pool.checkout(&"k").await.err().expect("queue is full");
    assert!(matches!(err, PoolError::QueueFull), "{err}");
    assert!(!waiting.await.expect("join"));
}

#[tokio::test]
async fn keys_have_separate_limits() {
    let pool = Pool::new("t", manager(), settings(0, 1, 10), Default::default());
    let _a = pool.checkout(&"a").await.expect("checkout a");
    assert!(pool.checkout(&"b").await.is_ok());
}

#[tokio::test]
async fn connect_errors_are_reported() {
    let m = manager();
    m.refuse.store(true, Ordering::SeqCst);
    let pool = Pool::new("t", m, settings(0, 1, 10), Default::default());
    let err = pool.checkout(&"k").await.err().expect("refused");
    assert!(matches!(err, PoolError::Connect(Refused::Down)), "{err}");
    // The permit came back: a later checkout is not stuck waiting.
    let err = pool.checkout(&"k").await.err().expect("refused again");
    assert!(matches!(err, PoolError::Connect(Refused::Down)), "{err}");
}

#[tokio::test]
async fn min_idle_is_kept_warm() {
    let m = manager();
    let pool = Pool::new("t", Arc::clone(&m), settings(2, 5, 10), Default::default());
    let c = pool.checkout(&"k").await.expect("checkout");
    for _ in 0..50 {
        if pool.idle_count(&"k") >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pool.idle_count(&"k"), 2);
    drop(c);
}

#[tokio::test]
async fn expired_connections_are_not_handed_out() {
    let m = manager();
    let mut s = settings(0, 2, 10);
    s.max_lifetime = Duration::from_millis(30);
    let pool = Pool::new("t", Arc::clone(&m), s, Default::default());
    pool.checkout(&"k").await.expect("checkout").checkin();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut c = pool.checkout(&"k").await.expect("checkout");
    assert_eq!(c.conn().id, 1);
}

#[tokio::test]
async fn idle_timeout_retires_spares_above_min_idle() {
    let m = manager();
    let mut s = settings(0, 3, 10);
    s.idle_timeout = Duration::from_millis(20);
    let pool = Pool::new("t", Arc::clone(&m), s, Default::default());
    pool.checkout(&"k").await.expect("checkout").checkin();
    assert_eq!(pool.idle_count(&"k"), 1);
    tokio::time::sleep(Duration::from_millis(40)).await;
    pool.maintain();
    assert_eq!(pool.idle_count(&"k"), 0);
}

#[tokio::test]
async fn hold_retries_until_the_server_accepts() {
    let m = manager();
    m.refuse_times.store(4, Ordering::SeqCst);
    let pool = Pool::new(
        "t",
        Arc::clone(&m),
        holding(Duration::from_secs(5)),
        Default::default(),
    );
    let started = Instant::now();
    let mut c = pool.checkout(&"k").await.expect("held, then served");
    assert_eq!(c.conn().id, 0);
    assert_eq!(m.attempts.load(Ordering::SeqCst), 5);
    // Four pauses of at most 50 + 100 + 200 + 250 ms.
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(pool.inner.held.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn hold_resumes_soon_after_a_long_outage() {
    let m = manager();
    m.refuse.store(true, Ordering::SeqCst);
    let pool = Pool::new(
        "t",
        Arc::clone(&m),
        holding(Duration::from_secs(5)),
        Default::default(),
    );
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.checkout(&"k").await.map(|_| Instant::now()) })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(pool.inner.held.load(Ordering::SeqCst), 1);
    let back = Instant::now();
    m.refuse.store(false, Ordering::SeqCst);
    let served = waiter.await.expect("join").expect("served");
    // The backoff is capped at 250 ms.
    assert!(served.duration_since(back) <= Duration::from_millis(300));
    assert_eq!(pool.inner.held.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn hold_runs_out_with_unavailable() {
    let m = manager();
    m.refuse.store(true, Ordering::SeqCst);
    let hold = Duration::from_millis(400);
    let pool = Pool::new("t", Arc::clone(&m), holding(hold), Default::default());
    let started = Instant::now();
    let err = pool.checkout(&"k").await.err().expect("unavailable");
    let took = started.elapsed();
    match &err {
        PoolError::Unavailable {
            waited,
            hold: h,
            last,
        } => {
            assert_eq!(*h, hold);
            assert!(*waited >= hold, "{waited:?}");
            assert_eq!(last.as_deref(), Some(&Refused::Down));
        }
        other => panic!("expected Unavailable, got {other}"),
    }
    assert_eq!(
        err.to_string(),
        "no backend reachable within the failover hold (400ms)"
    );
    assert!(
        took >= hold && took < hold + Duration::from_millis(200),
        "{took:?}"
    );
    assert!(m.attempts.load(Ordering::SeqCst) >= 3);
    assert_eq!(pool.inner.held.load(Ordering::SeqCst), 0);
    // The permit came back.
    m.refuse.store(false, Ordering::SeqCst);
    assert!(pool.checkout(&"k").await.is_ok());
}

#[tokio::test]
async fn auth_refusals_are_not_held() {
    let m = manager();
    m.deny.store(true, Ordering::SeqCst);
    let pool = Pool::new(
        "t",
        Arc::clone(&m),
        holding(Duration::from_secs(5)),
        Default::default(),
    );
    let started = Instant::now();
    let err = pool.checkout(&"k").await.err().expect("denied");
    assert!(matches!(err, PoolError::Connect(Refused::Auth)), "{err}");
    assert_eq!(m.attempts.load(Ordering::SeqCst), 1);
    assert!(started.elapsed() < Duration::from_millis(100));
}

#[tokio::test]
async fn held_callers_are_bounded() {
    let m = manager();
    m.refuse.store(true, Ordering::SeqCst);
    let mut s = holding(Duration::from_secs(5));
    s.max_held = 1;
    let pool = Pool::new("t", Arc::clone(&m), s, Default::default());
    let first = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.checkout(&"k").await.is_ok() })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(pool.inner.held.load(Ordering::SeqCst), 1);
    let started = Instant::now();
    let err = pool.checkout(&"other").await.err().expect("hold is full");
    assert!(
        matches!(&err, PoolError::HoldFull { last } if **last == Refused::Down),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_millis(100));
    m.refuse.store(false, Ordering::SeqCst);
    assert!(first.await.expect("join"));
}

#[tokio::test]
async fn dropped_held_checkout_leaves_the_hold() {
    let m = manager();
    m.refuse.store(true, Ordering::SeqCst);
    let pool = Pool::new(
        "t",
        Arc::clone(&m),
        holding(Duration::from_secs(5)),
        Default::default(),
    );
    let attempt = tokio::time::timeout(Duration::from_millis(200), pool.checkout(&"k")).await;
    assert!(attempt.is_err(), "still held");
    assert_eq!(pool.inner.held.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn idle_connections_retire_before_the_server_idle_limit() {
    let m = manager();
    // Server limit 1.2 s: retired after 1.2 s - 1 s margin = 200 ms of quiet.
    m.idle_limit_ms.store(1200, Ordering::SeqCst);
    let pool = Pool::new("t", Arc::clone(&m), settings(0, 3, 10), Default::default());
    pool.checkout(&"k").await.expect("checkout").checkin();
    pool.checkout(&"k").await.expect("checkout").checkin();
    pool.maintain();
    assert_eq!(pool.idle_count(&"k"), 1, "not yet");
    tokio::time::sleep(Duration::from_millis(250)).await;
    pool.maintain();
    assert_eq!(pool.idle_count(&"k"), 0, "maintenance retires it");

    pool.checkout(&"k").await.expect("checkout").checkin();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let mut c = pool.checkout(&"k").await.expect("checkout");
    assert_eq!(
        c.conn().id,
        2,
        "checkout does not hand out one near the limit"
    );
}

#[tokio::test]
async fn quiet_connections_are_health_checked_and_kept() {
    let m = manager();
    let mut s = settings(0, 3, 10);
    s.health_check_after = Duration::from_millis(50);
    let pool = Pool::new("t", Arc::clone(&m), s, Default::default());
    pool.checkout(&"k").await.expect("checkout").checkin();
    pool.maintain();
    assert_eq!(
        m.health_checks.load(Ordering::SeqCst),
        0,
        "not quiet long enough"
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    pool.maintain();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(m.health_checks.load(Ordering::SeqCst), 1);
    assert_eq!(pool.idle_count(&"k"), 1, "a good connection comes back");
    let mut c = pool.checkout(&"k").await.expect("checkout");
    assert_eq!(c.conn().id, 0);
}

#[tokio::test]
async fn black_holed_connections_fail_the_health_check_without_blocking_maintenance() {
    let m = manager();
    m.blackhole.store(true, Ordering::SeqCst);
    let mut s = settings(2, 3, 10);
    s.health_check_after = Duration::from_millis(50);
    s.health_check_timeout = Duration::from_millis(100);
    let pool = Pool::new("t", Arc::clone(&m), s, Default::default());
    let a = pool.checkout(&"k").await.expect("checkout");
    let b = pool.checkout(&"k").await.expect("checkout");
    a.checkin();
    b.checkin();
    tokio::time::sleep(Duration::from_millis(80)).await;
    let started = Instant::now();
    pool.maintain();
    assert!(
        started.elapsed() < Duration::from_millis(20),
        "maintenance did not wait"
    );
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(
        m.health_checks.load(Ordering::SeqCst),
        2,
        "checked concurrently"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Both failed and were closed; the next pass tops the pool up with new ones.
    m.blackhole.store(false, Ordering::SeqCst);
    pool.maintain();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(pool.idle_count(&"k"), 2);
    let mut c = pool.checkout(&"k").await.expect("checkout");
    assert!(c.conn().id >= 2, "a black-holed connection was handed out");
}

#[tokio::test]
async fn a_full_pool_replaces_a_connection_inside_its_slot() {
    let m = manager();
    let pool = Pool::new("t", Arc::clone(&m), settings(0, 2, 10), Default::default());
    let mut a = pool.checkout(&"k").await.expect("checkout");
    let _b = pool.checkout(&"k").await.expect("checkout");
    assert!(!a.has_room(), "both slots are taken");
    let before = a.conn().id;
    let started = Instant::now();
    a.replace()
        .await
        .expect("a new connection in the same slot");
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "no wait for another slot"
    );
    assert_ne!(a.conn().id, before);
    // Still two slots in use: a third caller waits and times out.
    let err = pool.checkout(&"k").await.err().expect("pool is full");
    assert!(matches!(err, PoolError::WaitTimeout(_)), "{err}");
}

#[tokio::test]
async fn replace_takes_an_idle_connection_first_and_keeps_the_old_one_on_failure() {
    let m = manager();
    let pool = Pool::new("t", Arc::clone(&m), settings(0, 3, 10), Default::default());
    let spare = pool.checkout(&"k").await.expect("checkout");
    let spare_id = {
        let mut s = spare;
        let id = s.conn().id;
        s.checkin();
        id
    };
    let mut a = pool.checkout(&"k").await.expect("checkout");
    let mut b = pool.checkout(&"k").await.expect("checkout");
    assert!(b.has_room());
    b.replace().await.expect("replace");
    assert!(a.conn().id == spare_id || b.conn().id == spare_id);
    m.refuse.store(true, Ordering::SeqCst);
    let kept = a.conn().id;
    assert!(a.replace().await.is_err());
    assert_eq!(
        a.conn().id,
        kept,
        "the old connection stays when none can be had"
    );
}

#[tokio::test]
async fn unused_sub_pools_are_dropped_with_their_spares() {
    let m = manager();
    let mut s = settings(1, 2, 10);
    s.idle_timeout = Duration::from_millis(50);
    let pool = Pool::new("t", Arc::clone(&m), s, Default::default());
    let c = pool.checkout(&"gone").await.expect("checkout");
    c.checkin();
    let held = pool.checkout(&"busy").await.expect("checkout");
    tokio::time::sleep(Duration::from_millis(80)).await;
    pool.maintain();
    let keys: Vec<&str> = pool
        .inner
        .subpools
        .lock()
        .map(|m| m.keys().copied().collect())
        .unwrap_or_default();
    assert_eq!(
        keys,
        vec!["busy"],
        "the unused sub-pool is gone, the busy one stays"
    );
    drop(held);
}
