//! Rate limits for log lines a peer can cause at will (failed logins, protocol violations,
//! refusals at the connection cap): per cause, at most `BURST` lines per `WINDOW`. The lines
//! held back are counted; the next line that passes says how many, and so does
//! [`LogLimiter::held_back`] once a window is over with nothing else to say it (DESIGN §6:
//! nothing a client sends can flood the operator, and nothing is hidden from it).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines of one cause let through per window.
const BURST: u32 = 10;
/// The window.
const WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Window {
    started: Instant,
    passed: u32,
    held_back: u64,
}

/// Per-cause windows, shared by the sessions of a pool.
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    causes: Mutex<HashMap<&'static str, Window>>,
}

impl LogLimiter {
    /// Whether a line for `cause` may be logged now; if so, how many were held back before it.
    pub(crate) fn allow(&self, cause: &'static str) -> Option<u64> {
        self.allow_at(cause, Instant::now())
    }

    fn allow_at(&self, cause: &'static str, now: Instant) -> Option<u64> {
        let mut causes = self.causes.lock().unwrap_or_else(|p| p.into_inner());
        let window = causes.entry(cause).or_insert(Window {
            started: now,
            passed: 0,
            held_back: 0,
        });
        if now.duration_since(window.started) >= WINDOW {
            window.started = now;
            window.passed = 0;
        }
        if window.passed >= BURST {
            window.held_back += 1;
            return None;
        }
        window.passed += 1;
        Some(std::mem::take(&mut window.held_back))
    }

    /// The causes whose window is over with lines held back, and how many; they are counted
    /// as reported.
    pub(crate) fn held_back(&self) -> Vec<(&'static str, u64)> {
        self.held_back_at(Instant::now())
    }

    fn held_back_at(&self, now: Instant) -> Vec<(&'static str, u64)> {
        let mut causes = self.causes.lock().unwrap_or_else(|p| p.into_inner());
        causes
            .iter_mut()
            .filter(|(_, w)| w.held_back > 0 && now.duration_since(w.started) >= WINDOW)
            .map(|(cause, w)| (*cause, std::mem::take(&mut w.held_back)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_lines_are_counted_and_reported_with_the_next_window() {
        let limiter = LogLimiter::default();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(limiter.allow_at("auth_failed", t0), Some(0));
        }
        for _ in 0..25 {
            assert_eq!(limiter.allow_at("auth_failed", t0), None);
        }
        // Another cause has its own window.
        assert_eq!(limiter.allow_at("protocol_error", t0), Some(0));
        assert_eq!(limiter.allow_at("auth_failed", t0 + WINDOW), Some(25));
        assert_eq!(limiter.allow_at("auth_failed", t0 + WINDOW), Some(0));
    }

    #[test]
    fn lines_held_back_are_reported_when_nothing_else_comes() {
        let limiter = LogLimiter::default();
        let t0 = Instant::now();
        for _ in 0..BURST + 4 {
            limiter.allow_at("protocol_error", t0);
        }
        assert!(
            limiter.held_back_at(t0).is_empty(),
            "the window is not over yet"
        );
        assert_eq!(
            limiter.held_back_at(t0 + WINDOW),
            vec![("protocol_error", 4)]
        );
        assert!(
            limiter.held_back_at(t0 + WINDOW).is_empty(),
            "reported once"
        );
    }
}
