//! What a session knows about the requests it relays (DESIGN §3): which requests are in
//! flight, how many bytes of the current one reached the backend, whether any reply byte reached
//! the client, the transaction status, and whether the client changed session state (so the
//! backend needs a reset before reuse). Healing decides from this; the relay only records.

use std::sync::{Mutex, MutexGuard};

use suture_protocol::pg::TxStatus;

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
    /// SQLSTATE of a FATAL error the backend sent (it closes right after).
    pub(crate) fatal_code: Option<String>,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            pending: 0,
            tx_status: TxStatus::Idle,
            bytes_to_backend: 0,
            bytes_to_client: 0,
            dirty: false,
            fatal_code: None,
        }
    }
}

impl Tracker {
    /// A request boundary (Query, Sync, FunctionCall) was forwarded to the backend.
    pub(crate) fn request_sent(&mut self) {
        self.pending += 1;
    }

    /// A ReadyForQuery came back.
    pub(crate) fn ready(&mut self, status: TxStatus) {
        self.pending = self.pending.saturating_sub(1);
        self.tx_status = status;
        if self.pending == 0 {
            self.bytes_to_backend = 0;
            self.bytes_to_client = 0;
        }
    }

    /// True when the backend is between requests and outside a transaction: it can be reused.
    pub(crate) fn at_rest(&self) -> bool {
        self.pending == 0 && self.tx_status == TxStatus::Idle && self.fatal_code.is_none()
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

/// Whether running `sql` might leave session state behind (SET, PREPARE, LISTEN, temp tables,
/// advisory locks, ...). Conservative: anything but a plain SELECT/VALUES/SHOW counts.
pub(crate) fn may_change_session(sql: &str) -> bool {
    let trimmed = sql.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
    let head: String = trimmed
        .chars()
        .take(7)
        .collect::<String>()
        .to_ascii_lowercase();
    let read_only =
        head.starts_with("select") || head.starts_with("values") || head.starts_with("show");
    if !read_only {
        return true;
    }
    if sql.trim_end().trim_end_matches(';').contains(';') {
        // Several statements: judge conservatively rather than split SQL here.
        return true;
    }
    let lower = sql.to_ascii_lowercase();
    STATEFUL_MARKERS.iter().any(|marker| lower.contains(marker))
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
    fn ready_for_query_closes_the_request() {
        let mut t = Tracker::default();
        t.request_sent();
        t.request_sent();
        t.bytes_to_backend = 10;
        t.ready(TxStatus::InTransaction);
        assert_eq!(t.pending, 1);
        assert!(!t.at_rest());
        t.ready(TxStatus::Idle);
        assert!(t.at_rest());
        assert_eq!(t.bytes_to_backend, 0);
    }
}
