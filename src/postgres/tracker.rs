//! What a session knows about the requests it relays (DESIGN §3): which requests are in
//! flight, how many bytes of the current one reached the backend, whether any reply byte reached
//! the client, the transaction status, and whether the client changed session state (so the
//! backend needs a reset before reuse). Healing decides from this; the relay only records.

use std::collections::VecDeque;
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aho_corasick::{AhoCorasick, AhoCorasickKind};
use bytes::{Bytes, BytesMut};
use suture_protocol::pg::TxStatus;

use crate::heal::LossFacts;
use crate::postgres::session_state::{SessionState, StateOp};

/// SQLSTATE of `idle_session_timeout`: raised only while the backend waits for a request.
pub(crate) const IDLE_SESSION_TIMEOUT: &str = "57P05";
/// SQLSTATE of `idle_in_transaction_session_timeout`.
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
/// SQLSTATEs of a backend terminated by an administrator or a shutdown.
const TERMINATED: [&str; 3] = ["57P01", "57P02", "57P03"];
/// Sent requests are kept for a replay up to this many bytes; larger ones cannot be replayed.
const MAX_RETAINED: usize = 64 * 1024;

/// Per-session request bookkeeping, shared by the two relay directions.
#[derive(Debug)]
pub(crate) struct Tracker {
    /// Requests (Query, Sync, FunctionCall) sent whose ReadyForQuery has not come back.
    pub(crate) pending: usize,
    /// Transaction status from the last ReadyForQuery.
    pub(crate) tx_status: TxStatus,
    /// Bytes written to the backend since the last ReadyForQuery.
    pub(crate) bytes_to_backend: u64,
    /// Bytes forwarded to the client since the last ReadyForQuery.
    pub(crate) bytes_to_client: u64,
    /// The client may have changed session state: reset before the backend is reused.
    pub(crate) dirty: bool,
    /// The client may have created session state Suture cannot rebuild on another backend
    /// (settings, prepared statements, temporary tables, locks, cursors, LISTEN): losing the
    /// backend is reported, not hidden.
    pub(crate) tainted: bool,
    /// What can be rebuilt on a new backend (settings, LISTENs, named prepared statements).
    pub(crate) state: SessionState,
    /// Per request sent and not yet answered: the state change it makes, if any.
    pending_ops: VecDeque<Option<StateOp>>,
    /// Per Parse sent and not yet acknowledged: its name and message, if named.
    pending_parses: VecDeque<Option<(String, Bytes)>>,
    /// An ErrorResponse arrived since the last ReadyForQuery.
    error_since_ready: bool,
    /// SQLSTATE of a FATAL error the backend sent and the client was shown.
    pub(crate) fatal_code: Option<String>,
    /// SQLSTATE of a FATAL error the backend sent while the request could not have run; it
    /// was not forwarded, so the session can heal.
    pub(crate) unsolicited_fatal: Option<String>,
    /// Transaction status when the oldest unanswered request was sent.
    pub(crate) tx_before_request: TxStatus,
    /// An unanswered request may commit.
    pub(crate) may_commit: bool,
    /// Bytes of the unanswered requests already written, kept for a replay.
    pub(crate) sent: BytesMut,
    /// The unanswered requests were too large to keep: they cannot be replayed.
    pub(crate) sent_overflow: bool,
    /// A write to the backend was attempted since the last ReadyForQuery.
    pub(crate) write_attempted: bool,
    /// Bytes at the front of the client buffer that a write to the backend was sending when
    /// it stopped: the request in flight. Dropped when the request is refused, so it is never
    /// sent again; kept when it is replayed.
    pub(crate) in_write: usize,
    /// Times the requests in flight were replayed already.
    pub(crate) replays: u32,
    /// Nothing sent since the last ReadyForQuery executes anything (no Query, Execute,
    /// FunctionCall).
    pub(crate) side_effect_free: bool,
    /// When the backend last answered every request sent to it (None: not since this backend
    /// took over). The pre-write check runs only after it has been idle a while.
    pub(crate) answered_at: Option<Instant>,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            pending: 0,
            tx_status: TxStatus::Idle,
            bytes_to_backend: 0,
            bytes_to_client: 0,
            dirty: false,
            tainted: false,
            state: SessionState::default(),
            pending_ops: VecDeque::new(),
            pending_parses: VecDeque::new(),
            error_since_ready: false,
            fatal_code: None,
            unsolicited_fatal: None,
            tx_before_request: TxStatus::Idle,
            may_commit: false,
            sent: BytesMut::new(),
            sent_overflow: false,
            write_attempted: false,
            side_effect_free: true,
            replays: 0,
            in_write: 0,
            answered_at: None,
        }
    }
}

impl Tracker {
    /// A request boundary (Query, Sync, FunctionCall) was forwarded to the backend.
    pub(crate) fn request_sent(&mut self, op: Option<StateOp>) {
        if self.pending == 0 {
            self.tx_before_request = self.tx_status;
        }
        self.pending += 1;
        self.pending_ops.push_back(op);
    }

    /// A Parse was sent; named ones are remembered once the backend acknowledges them.
    pub(crate) fn parse_sent(&mut self, named: Option<(String, Bytes)>) {
        self.pending_parses.push_back(named);
    }

    /// A ParseComplete came back for the oldest unacknowledged Parse.
    pub(crate) fn parse_complete(&mut self) {
        if let Some(Some((name, message))) = self.pending_parses.pop_front() {
            if !self.state.remember_prepared(name, message) {
                self.tainted = true;
            }
        }
    }

    /// A (non-fatal) ErrorResponse came back.
    pub(crate) fn error_received(&mut self) {
        self.error_since_ready = true;
    }

    /// Keeps written request bytes for a possible replay.
    pub(crate) fn retain(&mut self, bytes: &[u8]) {
        if self.sent_overflow || self.sent.len() + bytes.len() > MAX_RETAINED {
            self.sent_overflow = true;
            self.sent = BytesMut::new();
        } else {
            self.sent.extend_from_slice(bytes);
        }
    }

    /// Whether a FATAL error with `code` proves the request was not run (or nothing was in
    /// flight), so it must be kept from the client and the session healed.
    pub(crate) fn fatal_is_unsolicited(&self, code: &str) -> bool {
        // 57P05 is raised only while the backend waits for a request. A terminated backend
        // (57P01-3) or an idle-in-transaction timeout (25P03) is a lost backend like any other:
        // the heal policy decides what the client is told (an aborted transaction, 40003, or
        // nothing at all when nothing was in flight), and the session can continue.
        code == IDLE_SESSION_TIMEOUT && self.bytes_to_client == 0
            || TERMINATED.contains(&code)
            || code == IDLE_IN_TRANSACTION_TIMEOUT
    }

    /// Between requests, outside a transaction, with nothing that a new backend would lack:
    /// the backend can be swapped without the client noticing.
    pub(crate) fn at_rest(&self) -> bool {
        self.pending == 0
            && self.tx_status == TxStatus::Idle
            && !self.tainted
            && self.fatal_code.is_none()
    }

    /// What healing needs to know about a lost backend.
    pub(crate) fn loss_facts(&self) -> LossFacts {
        let in_flight = self.pending > 0;
        LossFacts {
            request_in_flight: in_flight,
            bytes_to_backend: self.bytes_to_backend,
            bytes_to_client: self.bytes_to_client,
            refused_while_idle: self.unsolicited_fatal.as_deref() == Some(IDLE_SESSION_TIMEOUT),
            idle_before_request: if in_flight {
                self.tx_before_request == TxStatus::Idle
            } else {
                true
            },
            in_transaction: self.tx_status != TxStatus::Idle,
            may_commit: self.may_commit,
            state_restorable: !self.tainted,
            request_retained: !self.sent_overflow,
            write_attempted: self.write_attempted,
            side_effect_free: self.side_effect_free,
        }
    }

    /// Forgets everything about requests in flight (after a heal or a replay was set up).
    pub(crate) fn reset_requests(&mut self) {
        self.pending = 0;
        self.in_write = 0;
        self.pending_ops.clear();
        self.pending_parses.clear();
        self.error_since_ready = false;
        self.clear_in_flight();
        self.fatal_code = None;
        self.unsolicited_fatal = None;
        self.answered_at = None;
    }

    /// A ReadyForQuery came back.
    pub(crate) fn ready(&mut self, status: TxStatus) {
        self.pending = self.pending.saturating_sub(1);
        self.tx_status = status;
        if let Some(Some(op)) = self.pending_ops.pop_front() {
            // A state change counts once it succeeded outside a transaction block (inside
            // one it would depend on the COMMIT: not tracked, so treated as lost state).
            match (self.error_since_ready, status) {
                (true, _) => {}
                (false, TxStatus::Idle) => self.state.apply(op),
                (false, _) => self.tainted = true,
            }
        }
        self.error_since_ready = false;
        if self.pending == 0 {
            self.pending_parses.clear();
            self.clear_in_flight();
            self.replays = 0;
            self.answered_at = Some(Instant::now());
        }
    }

    /// Whether the next write should be preceded by the pre-write check (DESIGN §5): it is
    /// the first of a request, and the backend has been idle for at least `quiet` (or its
    /// history is unknown). A backend that answered a moment ago is not peeked at, which
    /// keeps back-to-back requests at one read and one write each way.
    pub(crate) fn wants_pre_write_check(&self, quiet: Duration) -> bool {
        self.bytes_to_backend == 0 && self.answered_at.is_none_or(|at| at.elapsed() >= quiet)
    }

    /// Nothing is in flight any more: drop what was kept about the last requests.
    fn clear_in_flight(&mut self) {
        self.bytes_to_backend = 0;
        self.bytes_to_client = 0;
        self.may_commit = false;
        self.sent.clear();
        self.sent_overflow = false;
        self.write_attempted = false;
        self.side_effect_free = true;
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

/// One statement's text in lower case, without surrounding space and a trailing semicolon: the
/// form the statement classifiers match words against.
pub(crate) fn lowercase_statement(sql: &str) -> String {
    sql.trim()
        .trim_end_matches(';')
        .trim_end()
        .to_ascii_lowercase()
}

/// Whether running `sql` twice is the same as running it once, as far as anyone can tell:
/// opening a transaction block or showing a setting.
#[cfg(test)]
pub(crate) fn executes_nothing(sql: &str) -> bool {
    Statement::new(sql).executes_nothing()
}

/// Whether `sql` may create session state that cannot be rebuilt on a new backend. Plain
/// reads and writes (SELECT, INSERT, UPDATE, DELETE, DDL on real tables) do not.
#[cfg(test)]
pub(crate) fn may_taint_session(sql: &str) -> bool {
    Statement::new(sql).may_taint_session()
}

/// Whether running `sql` might leave session state behind (SET, PREPARE, LISTEN, temp tables,
/// advisory locks, ...). Conservative: anything but a plain SELECT/VALUES/SHOW counts.
#[cfg(test)]
pub(crate) fn may_change_session(sql: &str) -> bool {
    Statement::new(sql).may_change_session()
}

/// Statement starts that leave session state behind.
const TAINTING_STARTS: &[&str] = &[
    "set",
    "reset",
    "discard",
    "prepare",
    "declare",
    "listen",
    "load",
    "create temp",
    "create local temp",
    "create global temp",
    "create unlogged temp",
    "do",
    "call",
    "lock",
];
/// Function names and clauses that leave session state behind wherever they appear.
const TAINTING_ANYWHERE: &[&str] = &[
    "set_config",
    "advisory",
    "into temp",
    "lo_",
    "dblink",
    "with hold",
    "currval",
];
/// Words which, anywhere in a read-only looking statement, may still change session state.
const STATEFUL_MARKERS: &[&str] = &[
    "set_config",
    "advisory",
    "into",
    "pg_",
    "lo_",
    "dblink",
    "prepare",
    "declare",
    "listen",
    "temp",
    "currval",
];
/// A word that makes a statement one that may commit.
const COMMIT: &str = "commit";

/// Bits of [`Statement::markers`]: one per pattern, in the order the automaton is built.
const STATEFUL_BITS: u32 = (1 << STATEFUL_MARKERS.len()) - 1;
const TAINTING_BITS: u32 = ((1 << TAINTING_ANYWHERE.len()) - 1) << STATEFUL_MARKERS.len();
const COMMIT_BIT: u32 = 1 << (STATEFUL_MARKERS.len() + TAINTING_ANYWHERE.len());

/// Every marker word, found in one case-insensitive pass over a statement.
static MARKERS: LazyLock<AhoCorasick> = LazyLock::new(|| {
    let patterns = STATEFUL_MARKERS
        .iter()
        .chain(TAINTING_ANYWHERE)
        .chain([&COMMIT]);
    // A DFA: more memory at build time (a few KiB for these patterns), fewest instructions
    // per byte scanned, which is what every simple query pays.
    AhoCorasick::builder()
        .kind(Some(AhoCorasickKind::DFA))
        .ascii_case_insensitive(true)
        .build(patterns)
        .expect("fixed marker patterns always build")
});

/// One statement as the classifiers see it: its text and which marker words it contains,
/// found once per message in a single pass, without copying or lowering the text.
pub(crate) struct Statement<'a> {
    text: &'a str,
    markers: u32,
    /// More than one statement (a `;` before the trailing ones).
    several: bool,
}

impl<'a> Statement<'a> {
    pub(crate) fn new(text: &'a str) -> Statement<'a> {
        let mut markers = 0;
        for found in MARKERS.find_overlapping_iter(text) {
            markers |= 1 << found.pattern().as_u32();
        }
        let several = text.trim_end().trim_end_matches(';').contains(';');
        Statement {
            text,
            markers,
            several,
        }
    }

    /// The same as the function `executes_nothing` on the text.
    pub(crate) fn executes_nothing(&self) -> bool {
        let head = self.text.trim_start();
        if !["begin", "start", "show"]
            .iter()
            .any(|word| starts_with_word_prefix(head, word))
        {
            return false;
        }
        let mut words = self.text.trim().trim_end_matches(';').split_whitespace();
        let first = [words.next(), words.next(), words.next()];
        let is =
            |word: Option<&str>, want: &str| word.is_some_and(|w| w.eq_ignore_ascii_case(want));
        match first {
            [w, None, None] => is(w, "begin"),
            [w, second, None] if is(w, "begin") => is(second, "work") || is(second, "transaction"),
            [w, second, None] if is(w, "start") => is(second, "transaction"),
            [w, Some(_), None] => is(w, "show"),
            _ => false,
        }
    }

    /// Whether the statement may commit a transaction (so a lost reply means "outcome
    /// unknown").
    pub(crate) fn may_commit(&self) -> bool {
        starts_with_word_prefix(self.text.trim_start(), "end") || self.markers & COMMIT_BIT != 0
    }

    /// The same as the function `may_taint_session` on the text.
    pub(crate) fn may_taint_session(&self) -> bool {
        let head = self.text.trim_start();
        let first = head.as_bytes().first().map(u8::to_ascii_lowercase);
        let starts = TAINTING_STARTS.iter().any(|start| {
            first == start.as_bytes().first().copied()
                && starts_with_word_prefix(head, start)
                && head[start.len()..]
                    .chars()
                    .next()
                    .is_none_or(|c| !c.is_alphanumeric() && c != '_')
        });
        starts || self.several || self.markers & TAINTING_BITS != 0
    }

    /// The same as the function `may_change_session` on the text.
    pub(crate) fn may_change_session(&self) -> bool {
        let head = self
            .text
            .trim_start_matches(|c: char| c.is_whitespace() || c == '(');
        let read_only = ["select", "values", "show"]
            .iter()
            .any(|word| starts_with_word_prefix(head, word));
        // Several statements: judge conservatively rather than split SQL here.
        !read_only || self.several || self.markers & STATEFUL_BITS != 0
    }
}

/// Whether `text` starts with the ASCII `prefix`, ignoring case (a prefix, not a whole word).
fn starts_with_word_prefix(text: &str, prefix: &str) -> bool {
    text.as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_reads_leave_no_state() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 12;\n",
            "  select 1",
            "(SELECT 1)",
            "SHOW x",
            "values (1)",
        ] {
            assert!(!may_change_session(sql), "{sql}");
        }
    }

    #[test]
    fn writes_settings_and_stateful_functions_count() {
        for sql in [
            "SET search_path = x",
            "select set_config('a.b', '1', false)",
            "SELECT pg_advisory_lock(1)",
            "select * into temp t from x",
            "PREPARE p AS SELECT 1",
            "LISTEN c",
            "select 1; set x = 1",
            "BEGIN",
            "INSERT INTO t VALUES (1)",
            "",
        ] {
            assert!(may_change_session(sql), "{sql}");
        }
    }

    #[test]
    fn only_unrebuildable_state_taints() {
        for sql in [
            "SELECT pg_backend_pid()",
            "INSERT INTO t VALUES (1)",
            "update t set x = 1",
            "SELECT settings FROM t",
        ] {
            assert!(!may_taint_session(sql), "{sql}");
        }
        for sql in [
            "SET search_path = x",
            "set_config('a', 'b', false)",
            "select pg_advisory_lock(1)",
            "CREATE TEMP TABLE t (x int)",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "LISTEN ch",
            "select 1; set x = 1",
        ] {
            assert!(may_taint_session(sql), "{sql}");
        }
    }

    #[test]
    fn only_begin_and_show_execute_nothing() {
        for sql in ["BEGIN", "begin;", "START TRANSACTION", "show search_path"] {
            assert!(executes_nothing(sql), "{sql}");
        }
        for sql in [
            "BEGIN; INSERT INTO t VALUES (1)",
            "SELECT 1",
            "START TRANSACTION READ ONLY; DELETE FROM t",
            "COMMIT",
        ] {
            assert!(!executes_nothing(sql), "{sql}");
        }
    }

    #[test]
    fn markers_match_in_any_case_and_commits_are_seen() {
        assert!(may_change_session("SELECT PG_ADVISORY_LOCK(1)"));
        assert!(may_taint_session("Select Set_Config('a', 'b', false)"));
        assert!(may_taint_session("cReAtE tEmP table t (x int)"));
        assert!(!may_taint_session("CREATE TEMPLATE_TABLE t (x int)"));
        assert!(!may_taint_session("settle_accounts()"));
        assert!(executes_nothing("Begin Work"));
        assert!(!executes_nothing("begins"));
        for (sql, commits) in [
            ("COMMIT", true),
            ("end", true),
            ("update t set x = 1; Commit", true),
            ("prepare transaction 'x'", false),
            ("SELECT 1", false),
        ] {
            assert_eq!(Statement::new(sql).may_commit(), commits, "{sql}");
        }
    }

    #[test]
    fn ready_for_query_closes_the_request() {
        let mut t = Tracker::default();
        t.request_sent(None);
        t.request_sent(None);
        t.bytes_to_backend = 10;
        t.ready(TxStatus::InTransaction);
        assert_eq!(t.pending, 1);
        assert_eq!(t.bytes_to_backend, 10);
        t.ready(TxStatus::Idle);
        assert_eq!((t.pending, t.tx_status), (0, TxStatus::Idle));
        assert_eq!(t.bytes_to_backend, 0);
    }
}
