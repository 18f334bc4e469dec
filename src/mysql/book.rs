//! The MySQL part of a session's tracker (DESIGN §3, §4): one reply state machine per command
//! in flight (its sequence ids, whose turn it is, how it ends), the prepared statements with
//! their client-visible ids and what each may do, long data waiting for its execute, and the
//! session state the server's session tracking reported. The generic tracker
//! (`crate::session::tracker`) holds the ledger; this book stays aligned with it: one pending
//! entry per request in the ledger, removed when the ledger completes it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use suture_protocol::mysql::{self, Next, Reply};

use crate::mysql::lexer::SqlMode;
use crate::mysql::session_state::SessionState;
use crate::mysql::statement_ids::StatementMap;
use crate::session::ledger::{Traits, TxState};
use crate::session::tracker::{self, Book};

/// Prepared statements a session keeps for re-preparing them on another backend; past either
/// bound its state is not restorable (and the traits of the ones past it are not kept: their
/// executes are taken to possibly commit).
const MAX_STATEMENTS: usize = 10_000;
const MAX_STATEMENT_BYTES: usize = 16 << 20;

/// A MySQL session's tracker.
pub(crate) type Tracker = tracker::Tracker<MyBook>;
/// ... behind its lock.
pub(crate) type Shared = tracker::Shared<MyBook>;

/// What a request changes in the session once it succeeded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum Note {
    #[default]
    None,
    /// COM_INIT_DB of this schema.
    InitDb(String),
    /// COM_SET_OPTION: multi-statements on or off.
    SetOption(bool),
    /// COM_STMT_CLOSE of this client-visible statement id.
    CloseStatement(u32),
    /// COM_STMT_EXECUTE or COM_STMT_RESET of this statement: its long data is consumed.
    StatementUsed(u32),
}

/// One command's reply, from the request to its last packet.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub(crate) reply: Reply,
    /// COM_STMT_PREPARE: the statement text (its PREPARE_OK registers it).
    pub(crate) prepare: Option<Bytes>,
    /// COM_QUERY `SET NAMES x COLLATE y`: the collation, which its OK does not report.
    pub(crate) collation: Option<String>,
    /// The first payload bytes of a request of several packets whose last packet has not
    /// been walked yet: its reply's first sequence id is not known (a server may answer before
    /// the end, with ERR 1153 when the request passes `max_allowed_packet`).
    pub(crate) unfinished: Option<Vec<u8>>,
}

/// The MySQL bookkeeping of one session.
#[derive(Debug, Default)]
pub(crate) struct MyBook {
    /// One entry per request in the ledger, oldest first.
    pub(crate) pending: VecDeque<Pending>,
    /// Prepared statements: client-visible id ↔ backend id, with their text.
    pub(crate) statements: StatementMap,
    /// What each prepared statement may do, by client-visible id. Looked up on every
    /// execute: ordered maps of `u32` cost a few comparisons there, where the std hash maps'
    /// SipHash took about 120 instructions a lookup (callgrind, sysbench point selects).
    statement_traits: BTreeMap<u32, Traits>,
    /// Statements with COM_STMT_SEND_LONG_DATA waiting for their execute: not restorable.
    long_data: BTreeSet<u32>,
    /// Variables, character set, schema and options the server reported.
    pub(crate) state: SessionState,
    /// The backend's status flags after the last complete reply.
    pub(crate) status: u16,
}

impl Book for MyBook {
    type Note = Note;

    /// MySQL session state is not transactional: a change counts once it succeeded.
    fn completed(&mut self, note: Note, errored: bool, _tx_after: TxState) -> bool {
        self.pending.pop_front();
        if errored {
            return true;
        }
        match note {
            Note::None => {}
            Note::InitDb(schema) => self.state.set_schema(Some(schema)),
            Note::SetOption(on) => self.state.set_multi_statements(on),
            Note::CloseStatement(id) => {
                self.statements.closed(id);
                self.statement_traits.remove(&id);
                self.long_data.remove(&id);
            }
            Note::StatementUsed(id) => {
                self.long_data.remove(&id);
            }
        }
        true
    }

    fn settled(&mut self) {
        self.pending.clear();
    }

    fn restorable(&self) -> bool {
        self.long_data.is_empty() && !self.state.tainted()
    }
}

impl MyBook {
    /// The reply being received: the oldest one not complete.
    pub(crate) fn receiving(&mut self) -> Option<&mut Pending> {
        self.pending
            .iter_mut()
            .find(|p| !matches!(p.reply.next(), Next::Done(_)))
    }

    /// Whether the client has the turn inside a reply (LOCAL INFILE data).
    pub(crate) fn client_turn(&self) -> bool {
        self.pending
            .iter()
            .find(|p| !matches!(p.reply.next(), Next::Done(_)))
            .is_some_and(|p| p.reply.next() == Next::Client)
    }

    /// How the session's SQL is read: the server's NO_BACKSLASH_ESCAPES status, and
    /// ANSI_QUOTES from the `sql_mode` session tracking reported.
    pub(crate) fn sql_mode(&self) -> SqlMode {
        let from_status = SqlMode::from_status(self.status);
        match self.state.variable("sql_mode") {
            Some(mode) => SqlMode {
                no_backslash_escapes: from_status.no_backslash_escapes,
                ..from_status.with_sql_mode(mode)
            },
            None => from_status,
        }
    }

    /// A statement the backend prepared as `backend_id`: its client-visible id. Past the
    /// bounds of what a session keeps for re-preparing, its state is not restorable any more.
    pub(crate) fn prepared(
        &mut self,
        backend_id: u32,
        sql: Bytes,
        params: u16,
        columns: u16,
    ) -> u32 {
        let traits = statement_traits(&sql, self.sql_mode(), self.status);
        let id = self.statements.prepared(backend_id, sql, params, columns);
        if self.statements.len() > MAX_STATEMENTS
            || self.statements.sql_bytes() > MAX_STATEMENT_BYTES
        {
            self.state.taint();
        } else {
            self.statement_traits.insert(id, traits);
        }
        id
    }

    /// What an execute of the client's statement `id` may do.
    pub(crate) fn execute_traits(&self, id: u32) -> Traits {
        self.statement_traits.get(&id).copied().unwrap_or(Traits {
            executes: true,
            may_commit: true,
            ends_tx: None,
            waits: true,
            // MySQL says in every OK packet whether a transaction is open.
            chains: false,
        })
    }

    /// The backend's session was reset (COM_RESET_CONNECTION): nothing of it is left but the
    /// current database (`schema`) and the multi-statements option. Client statement ids keep
    /// counting, so an id the client still holds never names a new statement.
    pub(crate) fn reset_session(&mut self, schema: Option<String>) {
        self.state.reset(schema);
        self.statements.clear();
        self.statement_traits.clear();
        self.long_data.clear();
        self.pending.clear();
    }

    /// Long data was sent for statement `id`.
    pub(crate) fn long_data_sent(&mut self, id: u32) {
        self.long_data.insert(id);
    }

    /// The backend's transaction state from status flags.
    pub(crate) fn tx_of(status: u16) -> TxState {
        if status & mysql::status::SERVER_STATUS_IN_TRANS != 0 {
            TxState::InBlock
        } else {
            TxState::Idle
        }
    }
}

impl Tracker {
    /// The backend's session starts over (COM_RESET_CONNECTION, COM_CHANGE_USER): no state,
    /// outside any transaction, nothing to reset before reuse. The ledger keeps its stream
    /// offsets (the relay's are not restarted); nothing is in flight.
    pub(crate) fn session_reset(&mut self, schema: Option<String>, status: u16) {
        self.book.reset_session(schema);
        self.book.status = status;
        self.reply(crate::session::ledger::Reply::Ready(TxState::Idle), 0);
        self.dirty = false;
        self.tainted = false;
        self.fatal_code = None;
        self.unsolicited = None;
    }
}

/// What executing a prepared statement with text `sql` may do.
fn statement_traits(sql: &[u8], mode: SqlMode, status: u16) -> Traits {
    let in_tx = status & mysql::status::SERVER_STATUS_IN_TRANS != 0;
    let facts = crate::mysql::statement::classify(sql, mode, in_tx);
    crate::mysql::statement::combine(&facts).traits()
}
