//! The PostgreSQL part of a session's tracker (DESIGN §3, §4): the session state it can
//! rebuild on a new backend, what each prepared statement may do (so a Bind of a prepared COMMIT
//! is known to commit), the Parses awaiting their ParseComplete, and which FATAL errors prove
//! that nothing in flight ran. The generic tracker (`crate::session::tracker`) holds the ledger.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use crate::postgres::session_state::{SessionState, StateOp};
use crate::session::ledger::{Traits, TxState};
use crate::session::tracker::{self, Book};

/// SQLSTATE of `idle_session_timeout`: raised only while the backend waits for a request.
pub(crate) const IDLE_SESSION_TIMEOUT: &str = "57P05";
/// SQLSTATE of `idle_in_transaction_session_timeout`.
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
/// SQLSTATEs of a backend terminated by an administrator or a shutdown.
const TERMINATED: [&str; 3] = ["57P01", "57P02", "57P03"];
/// Prepared statements whose traits are remembered; more taint the session's bookkeeping
/// (they are then all treated as possibly committing).
const MAX_STATEMENT_TRAITS: usize = 10_000;

/// What one request carries besides the ledger's facts: the restorable state change it makes.
pub(crate) type Note = Option<StateOp>;

/// A PostgreSQL session's tracker.
pub(crate) type Tracker = tracker::Tracker<PgBook>;
/// ... behind its lock.
pub(crate) type Shared = tracker::Shared<PgBook>;

/// The PostgreSQL bookkeeping of one session.
#[derive(Debug, Default)]
pub(crate) struct PgBook {
    /// What can be rebuilt on a new backend (settings, LISTENs, named prepared statements).
    pub(crate) state: SessionState,
    /// What each named prepared statement may do, by name; and the unnamed one.
    statement_traits: HashMap<String, Traits>,
    unnamed_traits: Traits,
    /// Too many statements to remember: every Bind is taken to possibly commit.
    statement_traits_overflow: bool,
    /// What the statement of the last Bind may do: an Execute runs it.
    pub(crate) portal_traits: Traits,
    /// Per Parse sent and not yet acknowledged: its name and message, if named.
    pending_parses: VecDeque<Option<(String, Bytes)>>,
}

impl Book for PgBook {
    type Note = Note;

    /// A state change counts once it succeeded outside a transaction block (inside one it
    /// would depend on the COMMIT: not tracked, so treated as lost state).
    fn completed(&mut self, note: Note, errored: bool, tx_after: TxState) -> bool {
        let (Some(op), false) = (note, errored) else {
            return true;
        };
        if tx_after != TxState::Idle {
            return false;
        }
        if matches!(op, StateOp::DeallocateAll | StateOp::DiscardAll) {
            self.forget_all_statements();
        }
        if let StateOp::Deallocate { name } = &op {
            self.statement_traits.remove(name);
        }
        self.state.apply(op);
        true
    }

    fn settled(&mut self) {
        self.pending_parses.clear();
    }
}

impl PgBook {
    /// Every prepared statement is gone (DEALLOCATE ALL, DISCARD ALL).
    fn forget_all_statements(&mut self) {
        self.statement_traits.clear();
        self.statement_traits_overflow = false;
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
            self.book.unnamed_traits = traits;
        } else if self.book.statement_traits.len() < MAX_STATEMENT_TRAITS
            || self.book.statement_traits.contains_key(name)
        {
            self.book.statement_traits.insert(name.to_owned(), traits);
        } else {
            self.book.statement_traits_overflow = true;
        }
        self.book.pending_parses.push_back(named);
    }

    /// What a Bind of `statement` may do: what its Parse said.
    pub(crate) fn bound_traits(&self, statement: &str) -> Traits {
        let known = if statement.is_empty() {
            Some(self.book.unnamed_traits)
        } else {
            self.book.statement_traits.get(statement).copied()
        };
        match known {
            Some(traits) => Traits {
                executes: false,
                ..traits
            },
            // Prepared before Suture could see it (or forgotten): assume the worst.
            None if self.book.statement_traits_overflow || !statement.is_empty() => Traits {
                executes: false,
                may_commit: true,
                ends_tx: None,
                waits: true,
                // Taken not to chain, as `messages::UNKNOWN` (its errors are not a failed
                // COMMIT's).
                chains: false,
            },
            None => Traits::default(),
        }
    }

    /// A named statement was closed or deallocated.
    pub(crate) fn forget_statement(&mut self, name: &str) {
        self.book.statement_traits.remove(name);
        self.book.state.forget_prepared(name);
    }

    /// A ParseComplete came back for the oldest unacknowledged Parse.
    pub(crate) fn parse_complete(&mut self) {
        if let Some(Some((name, message))) = self.book.pending_parses.pop_front() {
            if !self.book.state.remember_prepared(name, message) {
                self.tainted = true;
            }
        }
    }

    /// Whether a FATAL error with `code` proves nothing in flight ran (or nothing was in
    /// flight), so it must be kept from the client and the session healed.
    pub(crate) fn fatal_is_unsolicited(&self, code: &str) -> bool {
        // 57P05 is raised only while the backend waits for a request. A terminated backend
        // (57P01-3) or an idle-in-transaction timeout (25P03) is a lost backend like any other:
        // the heal policy decides what the client is told (an aborted transaction, 40003, or
        // nothing at all when nothing was in flight), and the session can continue.
        code == IDLE_SESSION_TIMEOUT && self.oldest_unanswered()
            || TERMINATED.contains(&code)
            || code == IDLE_IN_TRANSACTION_TIMEOUT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::ledger::{Boundary, Reply};

    fn complete_all(t: &mut Tracker, reply: Reply) {
        t.reply(reply, 6);
    }

    #[test]
    fn a_set_counts_once_answered_outside_a_transaction() {
        let mut t = Tracker::default();
        let op = crate::postgres::session_state::classify("SET a = 1");
        t.ledger.end(b"Q", Boundary::Command, Traits::default(), op);
        complete_all(&mut t, Reply::Ready(TxState::Idle));
        assert_eq!(t.book.state.restore_sql().as_deref(), Some("SET a = 1"));
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
            chains: false,
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
