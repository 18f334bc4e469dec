//! The client→backend direction's two deadlines, served by one timer: rotating a backend past
//! its maximum lifetime at the next quiet moment, and checking the backend of a session that
//! stayed quiet for the health-check interval (DESIGN §4, §5).

use std::time::{Duration, Instant};

use crate::liveness::Probe;
use crate::session::ledger::TxState;
use crate::session::relay::{ClientBoundary, RelayEnd};
use crate::session::tracker::{Book, Tracker};

/// How long to wait before looking again when a rotation is due but the session is busy.
const ROTATION_RETRY: Duration = Duration::from_millis(500);

/// A deadline far enough away to mean "never" (tokio timers need an instant).
const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// `at`, or a far-away instant when there is no deadline.
pub(crate) fn far_or(at: Option<Instant>) -> tokio::time::Instant {
    at.unwrap_or_else(|| Instant::now() + FAR).into()
}

/// What the client→backend direction watches about its backend besides the bytes.
pub(crate) struct BackendWatch<'a> {
    /// Peeks at the backend socket before the first write after idle.
    pub(crate) probe: &'a Probe,
    /// When the backend should be rotated out at the next quiet moment.
    pub(crate) retire_at: Option<Instant>,
    /// After this long without a client request, the session's backend gets a health check.
    pub(crate) check_after: Option<Duration>,
    /// Whether the client's stream is between messages (rotation must not cut a message).
    pub(crate) boundary: &'a ClientBoundary,
}

/// The two deadlines.
pub(crate) struct Deadlines {
    /// When the backend should be rotated out (pushed back while the session is busy).
    rotate_at: Option<Instant>,
    check_after: Option<Duration>,
    /// When the session's backend gets a health check if the client stays quiet.
    check_at: Option<Instant>,
}

impl Deadlines {
    /// The deadlines of a relay that starts now.
    pub(crate) fn new(watch: &BackendWatch<'_>) -> Deadlines {
        Deadlines {
            rotate_at: watch.retire_at,
            check_after: watch.check_after,
            check_at: watch.check_after.map(|after| Instant::now() + after),
        }
    }

    /// Whether any deadline is set.
    pub(crate) fn any(&self) -> bool {
        self.rotate_at.is_some() || self.check_after.is_some()
    }

    /// The earlier deadline, if any.
    pub(crate) fn next(&self) -> Option<Instant> {
        match (self.rotate_at, self.check_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The timer fired at `now`. `at_boundary` says, when the client's stream is between
    /// messages, whether the session is at rest and what a due health check ends with.
    /// Returns how the relay should end, or None to go on (deadlines moved on).
    pub(crate) fn fired(
        &mut self,
        now: Instant,
        last_read: Instant,
        at_boundary: impl Fn() -> Option<(bool, Option<RelayEnd>)>,
    ) -> Option<RelayEnd> {
        if self.rotate_at.is_some_and(|at| now >= at) {
            if let Some((true, _)) = at_boundary() {
                return Some(RelayEnd::Rotate);
            }
            self.rotate_at = Some(now + ROTATION_RETRY);
        }
        if let (Some(at), Some(after)) = (self.check_at, self.check_after) {
            if now >= at {
                let due = last_read + after;
                if now < due {
                    self.check_at = Some(due);
                } else {
                    self.check_at = Some(now + after);
                    if let Some((_, Some(end))) = at_boundary() {
                        return Some(end);
                    }
                }
            }
        }
        None
    }
}

/// What a session quiet for the whole health-check interval should do: check its backend when
/// nothing is in flight and no transaction is open; give the backend up when only requests the
/// server never makes wait (Close, Sync: tokio-postgres closes a statement after each query)
/// went unanswered all that time. Anything that may wait is left alone, however long it takes:
/// a Parse or a statement waiting for a lock looks exactly like a black-holed flow, and a flow
/// that really is gone fails the request's writes or TCP_USER_TIMEOUT.
pub(crate) fn quiet_end<B: Book>(tracker: &Tracker<B>) -> Option<RelayEnd> {
    let ledger = &tracker.ledger;
    if ledger.tx() != TxState::Idle {
        return None;
    }
    if ledger.is_empty() {
        return Some(RelayEnd::CheckBackend);
    }
    ledger
        .in_flight()
        .all(|r| !r.traits.waits && !r.answered_bytes && r.boundary.is_some())
        .then_some(RelayEnd::Stalled)
}
