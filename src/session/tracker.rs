//! What a session knows about the requests it relays (DESIGN §3, §4), for both protocols: the
//! ledger of requests in flight, whether the client changed session state (the backend then
//! needs a reset before reuse) or created state that cannot be rebuilt, the fatal errors the
//! backend sent, and the protocol's own book of restorable state. Healing decides from this;
//! the relay only records.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::heal::LossFacts;
use crate::session::ledger::{Completed, Ledger, Reply, TxState};

/// Requests in flight are kept for a replay up to this many bytes together; larger ones cannot
/// be replayed.
const MAX_RETAINED: usize = 64 * 1024;

/// The protocol's part of the tracker: the session state it can rebuild on a new backend and
/// whatever it needs to read requests (prepared statements and what they may do).
pub(crate) trait Book: Default + Send + 'static {
    /// What one request carries besides the ledger's facts (its restorable state change).
    type Note: Send + std::fmt::Debug + 'static;

    /// A request's reply is complete (with an error in it when `errored`), leaving the
    /// backend in `tx_after`: its `note` takes effect. Returns false when the request left
    /// state that cannot be rebuilt (the session is then tainted).
    fn completed(&mut self, note: Self::Note, errored: bool, tx_after: TxState) -> bool;

    /// Every request sent was answered, or the requests in flight were forgotten.
    fn settled(&mut self) {}

    /// Whether the state the backend holds for the session right now can be rebuilt on
    /// another one (MySQL: no long data is waiting for its COM_STMT_EXECUTE). Unlike a taint,
    /// this passes.
    fn restorable(&self) -> bool {
        true
    }
}

/// A fatal error the backend sent that proves nothing in flight ran (or nothing was in
/// flight): it was not forwarded, so the session can heal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Unsolicited {
    /// The server's code (a SQLSTATE, a MySQL error number).
    pub(crate) code: String,
    /// The server raises it only while it waits for a request and its idle limit passed
    /// (PostgreSQL 57P05, MySQL 4031): it read none of the requests in flight (§3 rule 3).
    pub(crate) idle_timeout: bool,
}

/// Per-session request bookkeeping, shared by the two relay directions.
#[derive(Debug)]
pub(crate) struct Tracker<B: Book> {
    /// Requests in flight.
    pub(crate) ledger: Ledger<B::Note>,
    /// The client may have changed session state: reset before the backend is reused.
    pub(crate) dirty: bool,
    /// The client may have created session state Suture cannot rebuild on another backend:
    /// losing the backend is reported, not hidden.
    pub(crate) tainted: bool,
    /// The protocol's restorable state and statement bookkeeping.
    pub(crate) book: B,
    /// Requests completed by the last ledger call, applied right after it.
    done: Vec<Completed<B::Note>>,
    /// Code of a fatal error the backend sent and the client was shown.
    pub(crate) fatal_code: Option<String>,
    /// A fatal error the backend sent while nothing of it could have run; not forwarded.
    pub(crate) unsolicited: Option<Unsolicited>,
    /// Times the requests in flight were replayed already.
    pub(crate) replays: u32,
    /// When the backend last answered every request sent to it (None: not since this backend
    /// took over). The pre-write check runs only after it has been idle a while.
    pub(crate) answered_at: Option<Instant>,
    /// Where each completed request's latency goes (`suture_request_duration_seconds`).
    pub(crate) request_duration: metrics::Histogram,
}

impl<B: Book> Default for Tracker<B> {
    fn default() -> Self {
        Tracker {
            ledger: Ledger::new(MAX_RETAINED),
            dirty: false,
            tainted: false,
            book: B::default(),
            done: Vec::new(),
            fatal_code: None,
            unsolicited: None,
            replays: 0,
            answered_at: None,
            request_duration: metrics::Histogram::noop(),
        }
    }
}

impl<B: Book> Tracker<B> {
    /// A backend message of `len` bytes (with the bytes before it that answered nothing on
    /// their own) for the ledger; completed requests are applied.
    pub(crate) fn reply(&mut self, reply: Reply, len: usize) {
        let mut done = std::mem::take(&mut self.done);
        self.ledger.reply(reply, len, &mut |c| done.push(c));
        for c in done.drain(..) {
            self.completed(c);
        }
        self.done = done;
    }

    /// Reply bytes that answered nothing on their own (rows, definitions, notices), counted
    /// for the oldest request in flight.
    pub(crate) fn reply_bytes(&mut self, bytes: usize) {
        if bytes > 0 {
            self.reply(
                Reply::Part {
                    answers_part: false,
                },
                bytes,
            );
        }
    }

    /// The backend's socket accepted `n` more bytes.
    pub(crate) fn accepted(&mut self, n: usize) {
        let mut done = std::mem::take(&mut self.done);
        self.ledger.accepted(n, &mut |c| done.push(c));
        for c in done.drain(..) {
            self.completed(c);
        }
        self.done = done;
    }

    /// A request's reply is complete: its state change counts once it succeeded outside a
    /// transaction block (inside one it would depend on the COMMIT: the book decides).
    pub(crate) fn completed(&mut self, done: Completed<B::Note>) {
        // The one clock read at a request's end; it also stamps `answered_at` below.
        let now = Instant::now();
        self.request_duration
            .record(now.saturating_duration_since(done.started).as_secs_f64());
        if !self.book.completed(done.note, done.errored, done.tx_after) {
            self.tainted = true;
        }
        if self.ledger.is_empty() {
            self.book.settled();
            self.replays = 0;
            self.answered_at = Some(now);
        }
    }

    /// Between requests, outside a transaction, with nothing that a new backend would lack:
    /// the backend can be swapped without the client noticing.
    pub(crate) fn at_rest(&self) -> bool {
        self.ledger.is_empty()
            && self.ledger.tx() == TxState::Idle
            && !self.tainted
            && self.book.restorable()
            && self.fatal_code.is_none()
    }

    /// What healing needs to know about a lost backend.
    pub(crate) fn loss_facts(&self) -> LossFacts {
        LossFacts::from_ledger(
            self.ledger.tx(),
            self.ledger.in_flight(),
            self.unsolicited.as_ref().is_some_and(|u| u.idle_timeout),
            !self.tainted && self.book.restorable(),
            self.replays,
        )
    }

    /// Forgets everything about requests in flight (the session moves to a new backend, which
    /// starts in `tx`).
    pub(crate) fn reset_requests(&mut self, tx: TxState) {
        self.ledger.clear(tx);
        self.book.settled();
        self.fatal_code = None;
        self.unsolicited = None;
        self.answered_at = None;
    }

    /// Whether the next write should be preceded by the pre-write check (DESIGN §5): it is
    /// the first of a request after every earlier one was answered, and the backend has been
    /// idle for at least `quiet` (or its history is unknown). A backend that answered a moment
    /// ago is not peeked at, which keeps back-to-back requests at one read and one write each
    /// way.
    pub(crate) fn wants_pre_write_check(&self, quiet: Duration) -> bool {
        self.ledger.none_sent() && self.answered_at.is_none_or(|at| at.elapsed() >= quiet)
    }

    /// Whether the oldest request in flight has had none of its reply forwarded (or none is in
    /// flight): an idle-only fatal error then proves it did not run.
    pub(crate) fn oldest_unanswered(&self) -> bool {
        self.ledger
            .in_flight()
            .next()
            .is_none_or(|r| !r.answered_bytes)
    }
}

/// The tracker behind a lock; each direction holds it only for a moment per message.
pub(crate) struct Shared<B: Book> {
    tracker: Mutex<Tracker<B>>,
}

impl<B: Book> Default for Shared<B> {
    fn default() -> Self {
        Shared {
            tracker: Mutex::new(Tracker::default()),
        }
    }
}

impl<B: Book> Shared<B> {
    /// Locks the tracker.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Tracker<B>> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }
}
