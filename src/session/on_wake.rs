//! A future polled only when it asked to be. [`OnWake`] hands its inner future a waker of its
//! own and, when the task is polled because something else woke it (a socket became
//! readable), skips the inner future unless that waker fired since its last poll. A `select!`
//! of a busy future and a rare one (the drain signal, a timer due in a minute) then pays for
//! the rare one when it has news, not on every wake-up of the busy one.
//!
//! The contract every future already keeps makes this safe: a future that returns `Pending`
//! has arranged for its waker to be called when it can make progress.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// The waker the inner future sees: it notes that it fired, then wakes the task.
#[derive(Default)]
struct Flag {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

/// `inner`, polled on the first poll and afterwards only when its own waker fired (or after
/// [`OnWake::inner_mut`]).
pub(crate) struct OnWake<F> {
    inner: F,
    flag: Arc<Flag>,
    waker: Waker,
    /// The task waker last given to the flag, to tell cheaply whether it changed.
    task: Option<Waker>,
}

impl<F: Future + Unpin> OnWake<F> {
    pub(crate) fn new(inner: F) -> OnWake<F> {
        let flag = Arc::new(Flag::default());
        flag.woken.store(true, Ordering::Relaxed);
        OnWake {
            inner,
            waker: Waker::from(Arc::clone(&flag)),
            flag,
            task: None,
        }
    }

    /// The inner future, for a change that needs it polled again (a timer reset to a new
    /// deadline): the next poll polls it whether or not it woke.
    pub(crate) fn inner_mut(&mut self) -> &mut F {
        self.flag.woken.store(true, Ordering::Release);
        &mut self.inner
    }
}

impl<F: Future + Unpin> Future for OnWake<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        if !this.task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            let task = cx.waker().clone();
            *this
                .flag
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(task.clone());
            this.task = Some(task);
        }
        // Cleared before the poll: a wake during it sets it again and is not lost.
        if !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let mut inner_cx = Context::from_waker(&this.waker);
        Pin::new(&mut this.inner).poll(&mut inner_cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A future that counts its polls and is ready after `ready_after` of them, waking itself
    /// each time it returns Pending.
    struct Counted {
        polls: usize,
        ready_after: usize,
        wake_self: bool,
    }

    impl Future for Counted {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            if self.polls >= self.ready_after {
                return Poll::Ready(self.polls);
            }
            if self.wake_self {
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_future_that_wakes_itself_is_polled_until_ready() {
        let counted = Counted {
            polls: 0,
            ready_after: 5,
            wake_self: true,
        };
        assert_eq!(OnWake::new(counted).await, 5);
    }

    #[tokio::test]
    async fn a_future_that_did_not_wake_is_not_polled_again() {
        let mut quiet = OnWake::new(Counted {
            polls: 0,
            ready_after: 100,
            wake_self: false,
        });
        for _ in 0..10 {
            let polled = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut quiet).poll(cx)));
            assert!(polled.await.is_pending());
        }
        assert_eq!(
            quiet.inner_mut().polls,
            1,
            "polled once, then only when woken"
        );
        // inner_mut() rearmed it: polled on the next poll.
        let polled = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut quiet).poll(cx)));
        assert!(polled.await.is_pending());
        assert_eq!(quiet.inner_mut().polls, 2);
    }

    #[tokio::test]
    async fn a_timer_fires_through_it_after_a_reset() {
        let timer = Box::pin(tokio::time::sleep(Duration::from_secs(3600)));
        let mut timer = OnWake::new(timer);
        let busy = async {
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
        };
        tokio::select! {
            biased;
            () = &mut timer => panic!("an hour passed"),
            () = busy => {}
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(20);
        timer.inner_mut().as_mut().reset(deadline);
        (&mut timer).await;
        assert!(tokio::time::Instant::now() >= deadline);
    }
}
