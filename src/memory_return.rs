//! Giving memory back to the system after a burst of client connections.
//!
//! A burst of thousands of logins (most of them refused) allocates login buffers, session
//! futures and socket state that are all freed a second later. glibc's allocator keeps those
//! pages: it returns memory on its own only from the top of each arena, so after a burst the
//! process stays near its peak (measured: 9.5 MiB before a 5,000-attempt burst, 28.5 MiB at its
//! peak and still 28.5 MiB afterwards; docs/performance.md). `malloc_trim(0)` hands every free page
//! of every arena back. It walks and locks the arenas, so it is called only when the number of
//! open connections has fallen well below the peak since the last call, off the event loop.
//!
//! The connection count (`Tide`) is process-wide: every accepted client connection, the ones
//! refused at `max_client_connections` included, holds a [`TideMark`] while it lives.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How often the trimmer looks at the connection count.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// The fall from the peak, in connections, that is worth a trim: at 14–25 KiB per connection,
/// 256 of them are 4–6 MiB.
const MIN_FALL: usize = 256;

/// Open client connections and their peak since the last trim.
#[derive(Debug, Default)]
pub(crate) struct Tide {
    open: AtomicUsize,
    peak: AtomicUsize,
}

/// One open client connection; dropping it closes the count.
#[derive(Debug)]
pub(crate) struct TideMark<'a>(&'a Tide);

impl Tide {
    pub(crate) const fn new() -> Tide {
        Tide {
            open: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// Counts a connection until the mark is dropped.
    pub(crate) fn enter(&self) -> TideMark<'_> {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(open, Ordering::Relaxed);
        TideMark(self)
    }

    /// Whether the count has fallen by `MIN_FALL` or more from its peak; if so the peak is
    /// reset to the current count, so one fall asks for one trim.
    fn take_fall(&self) -> bool {
        let open = self.open.load(Ordering::Relaxed);
        let peak = self.peak.load(Ordering::Relaxed);
        if peak < open.saturating_add(MIN_FALL) {
            return false;
        }
        // A connection opened since the loads raised the peak itself: the next check sees it.
        self.peak
            .compare_exchange(peak, open, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

impl Drop for TideMark<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The process's client connections.
pub(crate) static CLIENTS: Tide = Tide::new();

/// Checks `CLIENTS` every `CHECK_EVERY` and trims the allocator after each large fall.
pub(crate) fn spawn_trimmer() {
    tokio::spawn(async {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if CLIENTS.take_fall() {
                let released = tokio::task::spawn_blocking(trim_allocator)
                    .await
                    .unwrap_or(false);
                tracing::debug!(
                    released,
                    open = CLIENTS.open.load(Ordering::Relaxed),
                    "client connections fell well below their peak: allocator trimmed"
                );
            }
        }
    });
}

/// Returns the allocator's free pages to the system; whether any were returned.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim_allocator() -> bool {
    // SAFETY: malloc_trim takes no pointers and holds each arena's lock while it walks it;
    // glibc documents it as safe to call from any thread at any time (MT-Safe).
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other allocators (musl's, the system allocators elsewhere) have no such call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_allocator() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fall_of_min_fall_asks_for_one_trim() {
        let tide = Tide::new();
        let marks: Vec<_> = (0..MIN_FALL + 10).map(|_| tide.enter()).collect();
        assert!(!tide.take_fall(), "no fall while all are open");
        drop(marks);
        assert!(tide.take_fall(), "all closed: a fall of {}", MIN_FALL + 10);
        assert!(!tide.take_fall(), "the same fall asks once");
    }

    #[test]
    fn a_small_fall_does_not_trim() {
        let tide = Tide::new();
        let mut marks: Vec<_> = (0..MIN_FALL * 2).map(|_| tide.enter()).collect();
        marks.truncate(MIN_FALL + 1);
        assert!(!tide.take_fall(), "fell by {}", MIN_FALL - 1);
        marks.truncate(MIN_FALL);
        assert!(tide.take_fall(), "fell by {MIN_FALL}");
        // The peak is now the open count: only a new fall from it counts.
        let more: Vec<_> = (0..10).map(|_| tide.enter()).collect();
        drop(more);
        assert!(!tide.take_fall());
    }

    #[test]
    fn trimming_is_harmless_while_memory_is_in_use() {
        let kept: Vec<Vec<u8>> = (0..1000).map(|i| vec![(i % 251) as u8; 4096]).collect();
        let freed: Vec<Vec<u8>> = (0..1000).map(|_| vec![7u8; 4096]).collect();
        drop(freed);
        trim_allocator();
        assert!(kept
            .iter()
            .enumerate()
            .all(|(i, v)| v.iter().all(|&b| b == (i % 251) as u8)));
    }
}
