//! Pool behaviour with an in-memory manager: limits, waiting, reuse and retirement.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;

#[derive(Debug, thiserror::Error)]
#[error("refused")]
struct Refused;

struct Counting {
    opened: AtomicUsize,
    refuse: AtomicBool,
}

struct FakeConn {
    id: usize,
}

impl Manager for Arc<Counting> {
    type Key = &'static str;
    type Conn = FakeConn;
    type Error = Refused;

    async fn connect(&self, _key: &Self::Key) -> Result<FakeConn, Refused> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(Refused);
        }
        Ok(FakeConn {
            id: self.opened.fetch_add(1, Ordering::SeqCst),
        })
    }

    fn check_idle(&self, _conn: &mut FakeConn) -> Result<(), &'static str> {
        Ok(())
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
    }
}

fn manager() -> Arc<Counting> {
    Arc::new(Counting {
        opened: AtomicUsize::new(0),
        refuse: AtomicBool::new(false),
    })
}

#[tokio::test]
async fn checked_in_connection_is_reused() {
    let m = manager();
    let pool = Pool::new("t", Arc::clone(&m), settings(0, 2, 10));
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
    let pool = Pool::new("t", Arc::clone(&m), settings(0, 2, 10));
    drop(pool.checkout(&"k").await.expect("checkout"));
    let mut again = pool.checkout(&"k").await.expect("checkout");
    assert_eq!(again.conn().id, 1);
}

#[tokio::test]
async fn max_size_makes_callers_wait_then_time_out() {
    let pool = Pool::new("t", manager(), settings(0, 1, 10));
    let held = pool.checkout(&"k").await.expect("checkout");
    let err = pool.checkout(&"k").await.err().expect("must time out");
    assert!(matches!(err, PoolError::WaitTimeout(_)), "{err}");
    drop(held);
    assert!(pool.checkout(&"k").await.is_ok());
}

#[tokio::test]
async fn waiter_gets_the_connection_checked_in() {
    let m = manager();
    let pool = Pool::new("t", Arc::clone(&m), settings(0, 1, 10));
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
    let pool = Pool::new("t", manager(), settings(0, 1, 1));
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
    let pool = Pool::new("t", manager(), settings(0, 1, 10));
    let _a = pool.checkout(&"a").await.expect("checkout a");
    assert!(pool.checkout(&"b").await.is_ok());
}

#[tokio::test]
async fn connect_errors_are_reported() {
    let m = manager();
    m.refuse.store(true, Ordering::SeqCst);
    let pool = Pool::new("t", m, settings(0, 1, 10));
    let err = pool.checkout(&"k").await.err().expect("refused");
    assert!(matches!(err, PoolError::Connect(Refused)), "{err}");
    // The permit came back: a later checkout is not stuck waiting.
    let err = pool.checkout(&"k").await.err().expect("refused again");
    assert!(matches!(err, PoolError::Connect(Refused)), "{err}");
}

#[tokio::test]
async fn min_idle_is_kept_warm() {
    let m = manager();
    let pool = Pool::new("t", Arc::clone(&m), settings(2, 5, 10));
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
    let pool = Pool::new("t", Arc::clone(&m), s);
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
    let pool = Pool::new("t", Arc::clone(&m), s);
    pool.checkout(&"k").await.expect("checkout").checkin();
    assert_eq!(pool.idle_count(&"k"), 1);
    tokio::time::sleep(Duration::from_millis(40)).await;
    pool.maintain();
    assert_eq!(pool.idle_count(&"k"), 0);
}
