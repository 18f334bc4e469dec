//! What a PostgreSQL session knows about the requests it relays (DESIGN §3, §4): the ledger of
//! requests in flight, the session state it can rebuild on a new backend, what each prepared
//! statement may do (so a Bind of a prepared COMMIT is known to commit), whether the client
//! changed session state (the backend then needs a reset before reuse) or created state that
//! cannot be rebuilt, and the FATAL errors the backend sent. Healing decides from this; the
//! relay only records.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::heal::LossFacts;
use crate::postgres::session_state::{SessionState, StateOp};
use crate::session::ledger::{Completed, Ledger, Reply, Traits, TxState};

/// SQLSTATE of `idle_session_timeout`: raised only while the backend waits for a request.
pub(crate) const IDLE_SESSION_TIMEOUT: &str = "57P05";
/// SQLSTATE of `idle_in_transaction_session_timeout`.
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
/// SQLSTATEs of a backend terminated by an administrator or a shutdown.
const TERMINATED: [&str; 3] = ["57P01", "57P02", "57P03"];
/// Requests in flight are kept for a replay up to this many bytes together; larger ones cannot
/// be replayed.
const MAX_RETAINED: usize = 64 * 1024;
/// Prepared statements whose traits are remembered; more taint the session's bookkeeping
/// (they are then all treated as possibly committing).
const MAX_STATEMENT_TRAITS: usize = 10_000;

/// What one request carries besides the ledger's facts: the restorable state change it makes.
pub(crate) type Note = Option<StateOp>;

/// Per-session request bookkeeping, shared by the two relay directions.
#[derive(Debug)]
pub(crate) struct Tracker {
    /// Requests in flight.
    pub(crate) ledger: Ledger<Note>,
    /// The client may have changed session state: reset before the backend is reused.
    pub(crate) dirty: bool,
    /// The client may have created session state Suture cannot rebuild on another backend
    /// (temporary tables, locks, cursors, SQL-level prepared statements): losing the backend is
    /// reported, not hidden.
    pub(crate) tainted: bool,
    /// What can be rebuilt on a new backend (settings, LISTENs, named prepared statements).
    pub(crate) state: SessionState,
    /// What each named prepared statement may do, by name; and the unnamed one.
    statement_traits: HashMap<String, Traits>,
    unnamed_traits: Traits,
    /// Too many statements to remember: every Bind is taken to possibly commit.
    statement_traits_overflow: bool,
    /// What the statement of the last Bind may do: an Execute runs it.
    pub(crate) portal_traits: Traits,
    /// Requests completed by the last ledger call, handed to [`Tracker::completed`].
    done: Vec<Completed<Note>>,
    /// Per Parse sent and not yet acknowledged: its name and message, if named.
    pending_parses: VecDeque<Option<(String, Bytes)>>,
    /// SQLSTATE of a FATAL error the backend sent and the client was shown.
    pub(crate) fatal_code: Option<String>,
    /// SQLSTATE of a FATAL error the backend sent while nothing of it could have run; it was
    /// not forwarded, so the session can heal.
    pub(crate) unsolicited_fatal: Option<String>,
    /// Times the requests in flight were replayed already.
    pub(crate) replays: u32,
    /// When the backend last answered every request sent to it (None: not since this backend
    /// took over). The pre-write check runs only after it has been idle a while.
    pub(crate) answered_at: Option<Instant>,
    /// Where each completed request's latency goes (`suture_request_duration_seconds`).
    pub(crate) request_duration: metrics::Histogram,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            ledger: Ledger::new(MAX_RETAINED),
            dirty: false,
            tainted: false,
            state: SessionState::default(),
            statement_traits: HashMap::new(),
            unnamed_traits: Traits::default(),
            statement_traits_overflow: false,
            portal_traits: Traits::default(),
            done: Vec::new(),
            pending_parses: VecDeque::new(),
            fatal_code: None,
            unsolicited_fatal: None,
            replays: 0,
            answered_at: None,
            request_duration: metrics::Histogram::noop(),
        }
    }
}

impl Tracker {
    /// A Parse was sent; named ones are remembered once the backend acknowledges them, and
    /// what the statement may do is kept for its Binds.
    pub(crate) fn parse_sent(
        &mut self,
        name: &str,
        traits: Traits,
        named: Option<(String, Bytes)>,
    ) {
        if name.is_empty() {
            self.unnamed_traits = traits;
        } else if self.statement_traits.len() < MAX_STATEMENT_TRAITS
            || self.statement_traits.contains_key(name)
        {
            self.statement_traits.insert(name.to_owned(), traits);
        } else {
            self.statement_traits_overflow = true;
        }
        self.pending_parses.push_back(named);
    }

    /// What a Bind of `statement` may do: what its Parse said.
    pub(crate) fn bound_traits(&self, statement: &str) -> Traits {
        let known = if statement.is_empty() {
            Some(self.unnamed_traits)
        } else {
            self.statement_traits.get(statement).copied()
        };
        match known {
            Some(traits) => Traits {
                executes: false,
                ..traits
            },
            // Prepared before Suture could see it (or forgotten): assume the worst.
            None if self.statement_traits_overflow || !statement.is_empty() => Traits {
                executes: false,
                may_commit: true,
                ends_tx: None,
                waits: true,
            },
            None => Traits::default(),
        }
    }

    /// A named statement was closed or deallocated.
    pub(crate) fn forget_statement(&mut self, name: &str) {
        self.statement_traits.remove(name);
        self.state.forget_prepared(name);
    }

    /// Every prepared statement is gone (DEALLOCATE ALL, DISCARD ALL).
    fn forget_all_statements(&mut self) {
        self.statement_traits.clear();
        self.statement_traits_overflow = false;
    }

    /// A ParseComplete came back for the oldest unacknowledged Parse.
    pub(crate) fn parse_complete(&mut self) {
        if let Some(Some((name, message))) = self.pending_parses.pop_front() {
            if !self.state.remember_prepared(name, message) {
                self.tainted = true;
            }
        }
    }

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
    /// transaction block (inside one it would depend on the COMMIT: not tracked, so treated as
    /// lost state).
    pub(crate) fn completed(&mut self, done: Completed<Note>) {
        // The one clock read at a request's end; it also stamps `answered_at` below.
        let now = Instant::now();
        self.request_duration
            .record(now.saturating_duration_since(done.started).as_secs_f64());
        if let (Some(op), false) = (done.note, done.errored) {
            if done.tx_after == TxState::Idle {
                if matches!(op, StateOp::DeallocateAll | StateOp::DiscardAll) {
                    self.forget_all_statements();
                }
                if let StateOp::Deallocate { name } = &op {
                    self.statement_traits.remove(name);
                }
                self.state.apply(op);
            } else {
                self.tainted = true;
            }
        }
        if self.ledger.is_empty() {
            self.pending_parses.clear();
            self.replays = 0;
            self.answered_at = Some(now);
        }
    }

    /// Whether a FATAL error with `code` proves nothing in flight ran (or nothing was in
    /// flight), so it must be kept from the client and the session healed.
    pub(crate) fn fatal_is_unsolicited(&self, code: &str) -> bool {
        // 57P05 is raised only while the backend waits for a request. A terminated backend
        // (57P01-3) or an idle-in-transaction timeout (25P03) is a lost backend like any other:
        // the heal policy decides what the client is told (an aborted transaction, 40003, or
        // nothing at all when nothing was in flight), and the session can continue.
        let unanswered = self
            .ledger
            .in_flight()
            .next()
            .is_none_or(|r| !r.answered_bytes);
        code == IDLE_SESSION_TIMEOUT && unanswered
            || TERMINATED.contains(&code)
            || code == IDLE_IN_TRANSACTION_TIMEOUT
    }

    /// Between requests, outside a transaction, with nothing that a new backend would lack:
    /// the backend can be swapped without the client noticing.
    pub(crate) fn at_rest(&self) -> bool {
        self.ledger.is_empty()
            && self.ledger.tx() == TxState::Idle
            && !self.tainted
            && self.fatal_code.is_none()
    }

    /// What healing needs to know about a lost backend.
    pub(crate) fn loss_facts(&self) -> LossFacts {
        LossFacts::from_ledger(
            self.ledger.tx(),
            self.ledger.in_flight(),
            self.unsolicited_fatal.as_deref() == Some(IDLE_SESSION_TIMEOUT),
            !self.tainted,
            self.replays,
        )
    }

    /// Forgets everything about requests in flight (the session moves to a new backend, which
    /// starts in `tx`).
    pub(crate) fn reset_requests(&mut self, tx: TxState) {
        self.ledger.clear(tx);
        self.pending_parses.clear();
        self.fatal_code = None;
        self.unsolicited_fatal = None;
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
}

/// The tracker behind a lock; each direction holds it only for a moment per message.
#[derive(Default)]
pub(crate) struct Shared {
    tracker: Mutex<Tracker>,
}

impl Shared {
    /// Locks the tracker.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::ledger::Boundary;

    fn complete_all(t: &mut Tracker, reply: Reply) {
        t.reply(reply, 6);
    }

    #[test]
    fn a_set_counts_once_answered_outside_a_transaction() {
        let mut t = Tracker::default();
        let op = crate::postgres::session_state::classify("SET a = 1");
        t.ledger.end(b"Q", Boundary::Command, Traits::default(), op);
        complete_all(&mut t, Reply::Ready(TxState::Idle));
        assert_eq!(t.state.restore_sql().as_deref(), Some("SET a = 1"));
        assert!(!t.tainted);
        let op = crate::postgres::session_state::classify("SET b = 2");
        t.ledger.end(b"Q", Boundary::Command, Traits::default(), op);
        complete_all(&mut t, Reply::Ready(TxState::InBlock));
        assert!(t.tainted, "a SET inside a transaction is not tracked");
    }

    #[test]
    fn binds_know_what_their_statement_may_do() {
        let mut t = Tracker::default();
        let commit = Traits {
            executes: false,
            may_commit: true,
            ends_tx: Some(crate::session::ledger::TxEnd::Commit),
            waits: true,
        };
        t.parse_sent("c1", commit, None);
        t.parse_sent("", Traits::default(), None);
        assert_eq!(t.bound_traits("c1"), commit);
        assert_eq!(t.bound_traits(""), Traits::default());
        assert!(t.bound_traits("never-seen").may_commit);
        t.forget_statement("c1");
        assert!(
            t.bound_traits("c1").may_commit,
            "unknown again: the worst is assumed"
        );
    }
}
