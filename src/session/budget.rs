//! The memory all sessions together may spend on client messages that must be held whole
//! before they can be sent on (DESIGN §6): `runtime.max_buffered_bytes`. A session holds a
//! reservation for what its client buffer holds beyond a small free allowance; one that would
//! pass the budget is refused with a clear error instead of growing the process. Large
//! queries, Parse, Bind and COPY data stream through and need none of it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// What every session may hold without a reservation.
pub(crate) const FREE_PER_SESSION: usize = 128 * 1024;

/// Bytes still free for all sessions together.
#[derive(Debug)]
pub(crate) struct BufferBudget {
    left: AtomicUsize,
}

impl BufferBudget {
    pub(crate) fn new(bytes: usize) -> Arc<BufferBudget> {
        Arc::new(BufferBudget {
            left: AtomicUsize::new(bytes),
        })
    }

    fn take(&self, bytes: usize) -> bool {
        self.left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(bytes)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.left.fetch_add(bytes, Ordering::AcqRel);
    }
}

/// One session's share of the budget; given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<BufferBudget>,
    held: usize,
}

impl Reservation {
    pub(crate) fn new(budget: Arc<BufferBudget>) -> Reservation {
        Reservation { budget, held: 0 }
    }

    /// Makes the reservation cover a client buffer of `bytes` (beyond the free allowance);
    /// false if the budget cannot.
    pub(crate) fn cover(&mut self, bytes: usize) -> bool {
        let need = bytes.saturating_sub(FREE_PER_SESSION);
        if need <= self.held {
            return true;
        }
        if !self.budget.take(need - self.held) {
            return false;
        }
        self.held = need;
        true
    }

    /// The client buffer is back to small: give everything back.
    pub(crate) fn release(&mut self) {
        self.budget.give_back(std::mem::take(&mut self.held));
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_share_the_budget_and_give_it_back() {
        let budget = BufferBudget::new(1 << 20);
        let mut a = Reservation::new(Arc::clone(&budget));
        let mut b = Reservation::new(Arc::clone(&budget));
        assert!(
            a.cover(FREE_PER_SESSION),
            "the free allowance needs nothing"
        );
        assert!(a.cover(FREE_PER_SESSION + 700 * 1024));
        assert!(
            !b.cover(FREE_PER_SESSION + 400 * 1024),
            "only 324 KiB are left"
        );
        a.release();
        assert!(b.cover(FREE_PER_SESSION + 400 * 1024));
        drop(b);
        let mut c = Reservation::new(budget);
        assert!(c.cover(FREE_PER_SESSION + (1 << 20)));
    }
}
