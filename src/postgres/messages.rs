//! What each PostgreSQL message in the command phase means for the session's tracker: which
//! client messages start, continue or end a request and what they may do, and which backend
//! messages answer one. The relay calls these per message and moves bytes; nothing here waits.

use std::borrow::Cow;

use bytes::Bytes;
use suture_protocol::pg::{self, TxStatus, HEADER_LEN};

use crate::postgres::book::Tracker;
use crate::postgres::session_state::classify;
use crate::postgres::statement::{Statement, StreamedStatement};
use crate::session::ledger::{Boundary, Reply, Traits, TxState};
use crate::session::progress::Completion;

/// Traits of something Suture cannot read: it may do anything.
const UNKNOWN: Traits = Traits {
    executes: true,
    may_commit: true,
    ends_tx: None,
    waits: true,
    // Not taken to chain: with `may_commit`, that would take any error answering it for a
    // failed COMMIT, which leaves the block, when it is far likelier a statement failing
    // inside the block.
    chains: false,
};
/// Traits of a message the server may make wait (Parse, Bind, Describe) but that runs nothing.
const WAITS: Traits = Traits {
    executes: false,
    may_commit: false,
    ends_tx: None,
    waits: true,
    chains: false,
};

/// Records one client message (`message` is the whole message, header included); returns
/// whether everything up to it may be sent now. Extended-protocol messages are held until their
/// Sync or Flush, so a batch reaches the backend whole or not at all.
pub(crate) fn note_client_message(tag: u8, message: &[u8], tracker: &mut Tracker) -> bool {
    let body = message.get(HEADER_LEN..).unwrap_or_default();
    match tag {
        b'P' => {
            note_parse(body, message, tracker);
            false
        }
        b'B' => {
            tracker.book.portal_traits = match pg::parse_bind_statement(body) {
                Ok(name) => tracker.bound_traits(&String::from_utf8_lossy(name)),
                Err(_) => UNKNOWN,
            };
            tracker.ledger.part(message, true, WAITS, None);
            false
        }
        b'D' => {
            tracker.ledger.part(message, true, WAITS, None);
            false
        }
        b'C' => {
            // Close of a named statement: it no longer needs restoring.
            if let Ok(Some(name)) = pg::parse_close_statement(body) {
                tracker.forget_statement(&String::from_utf8_lossy(name));
            }
            tracker.ledger.close_part(message, None);
            false
        }
        b'E' => {
            let traits = Traits {
                executes: true,
                waits: true,
                ..tracker.book.portal_traits
            };
            tracker.ledger.part(message, true, traits, None);
            false
        }
        b'S' => {
            tracker
                .ledger
                .end(message, Boundary::Sync, Traits::default(), None);
            true
        }
        b'H' => {
            tracker
                .ledger
                .end(message, Boundary::Flush, Traits::default(), None);
            true
        }
        b'Q' => {
            note_query(body, message, tracker);
            true
        }
        b'F' => {
            tracker.dirty = true;
            tracker.tainted = true;
            let traits = Traits {
                may_commit: false,
                ..UNKNOWN
            };
            tracker.ledger.end(message, Boundary::Command, traits, None);
            true
        }
        // COPY data, CopyDone, CopyFail: part of the COPY in flight; send at once.
        b'd' | b'c' | b'f' => {
            tracker.ledger.continuation(message);
            true
        }
        // Anything else the backend answers, with an error.
        _ => {
            tracker
                .ledger
                .end(message, Boundary::Command, UNKNOWN, None);
            true
        }
    }
}

/// What is known of a client request streamed to the backend in pieces (larger than the
/// stream threshold): how it starts, and its statement so far.
#[derive(Debug, Default)]
pub(crate) struct StreamedRequest {
    /// The name of the statement a Parse prepares or a Bind binds, when the first piece had it.
    name: Option<String>,
    statement: StreamedStatement,
}

/// Records one piece of a client request streamed in pieces (Query, Parse, Bind,
/// FunctionCall); `state` is `None` before its first piece and is cleared after its last.
/// Such a request is never kept for a replay (it is larger than what the ledger keeps), and a
/// statement it prepares is not restored after a heal.
pub(crate) fn note_streamed_piece(
    tag: u8,
    piece: &[u8],
    last: bool,
    state: &mut Option<StreamedRequest>,
    tracker: &mut Tracker,
) {
    let first = state.is_none();
    let request = state.get_or_insert_with(StreamedRequest::default);
    let text = if first {
        let body = piece.get(HEADER_LEN..).unwrap_or_default();
        match tag {
            b'P' | b'B' => {
                // Parse: name, query; Bind: portal, statement.
                let mut fields = body.splitn(3, |&b| b == 0);
                let first_name = fields.next().unwrap_or_default();
                let second = fields.next();
                let (name, rest) = match (tag, second) {
                    (b'P', _) => (Some(first_name), body.get(first_name.len() + 1..)),
                    (_, Some(statement)) if body.len() > first_name.len() + statement.len() + 1 => {
                        (Some(statement), None)
                    }
                    _ => (None, None),
                };
                request.name = name.map(|n| String::from_utf8_lossy(n).into_owned());
                rest.unwrap_or_default()
            }
            _ => body,
        }
    } else {
        piece
    };
    if matches!(tag, b'Q' | b'P') {
        request.statement.feed(text);
    }
    if first {
        let counted = matches!(tag, b'P' | b'B');
        tracker.ledger.part(piece, counted, WAITS, None);
    } else if !last {
        tracker.ledger.continuation(piece);
    }
    if !last {
        return;
    }
    let Some(request) = state.take() else { return };
    tracker.dirty = true;
    match tag {
        b'Q' => {
            tracker.tainted |= request.statement.judge(|s| s.may_taint_session());
            let traits = Traits {
                executes: true,
                may_commit: request.statement.judge(|s| s.may_commit()),
                ends_tx: None,
                waits: true,
                // Only the head of the text was read; taken not to chain, as UNKNOWN.
                chains: false,
            };
            end_or_continue(tracker, piece, first, Some(traits));
        }
        b'P' => {
            let named = request.name.as_deref().is_some_and(|n| !n.is_empty());
            // A prepared statement this large is not kept for a restore.
            tracker.tainted |= named || request.statement.judge(|s| s.may_taint_session());
            let traits = Traits {
                executes: true,
                may_commit: request.statement.judge(|s| s.may_commit()),
                ends_tx: None,
                waits: true,
                // Only the head of the text was read; taken not to chain, as UNKNOWN.
                chains: false,
            };
            tracker.parse_sent(request.name.as_deref().unwrap_or_default(), traits, None);
            end_or_continue(tracker, piece, first, None);
        }
        b'B' => {
            tracker.book.portal_traits = match request.name.as_deref() {
                Some(name) => tracker.bound_traits(name),
                None => UNKNOWN,
            };
            end_or_continue(tracker, piece, first, None);
        }
        _ => {
            tracker.tainted = true;
            let traits = Traits {
                may_commit: false,
                ..UNKNOWN
            };
            end_or_continue(tracker, piece, first, Some(traits));
        }
    }
}

/// The last piece of a streamed request: it ends the request (a command) or continues it (a
/// part of an extended batch). A first piece was already registered.
fn end_or_continue(tracker: &mut Tracker, piece: &[u8], first: bool, ends: Option<Traits>) {
    match ends {
        Some(traits) if first => tracker.ledger.end(&[], Boundary::Command, traits, None),
        Some(traits) => tracker.ledger.end(piece, Boundary::Command, traits, None),
        None if first => {}
        None => tracker.ledger.continuation(piece),
    }
}

/// SQL text as the classifiers read it: UTF-8 as it is (borrowed, checked with the fast
/// validator once); anything else with the bytes that are not UTF-8 replaced (the words they
/// look for are ASCII), which is the only case that allocates.
fn text_of(raw: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(raw) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => Cow::Owned(String::from_utf8_lossy(raw).into_owned()),
    }
}

fn note_parse(body: &[u8], message: &[u8], tracker: &mut Tracker) {
    let Ok((name, sql)) = pg::parse_parse_message_raw(body) else {
        tracker.dirty = true;
        tracker.tainted = true;
        tracker.parse_sent("", UNKNOWN, None);
        tracker.ledger.part(message, true, WAITS, None);
        return;
    };
    let sql = text_of(sql);
    let name = text_of(name);
    let statement = Statement::new(&sql);
    tracker.dirty |= !name.is_empty() || statement.may_change_session();
    // State statements through the extended protocol are not tracked.
    tracker.tainted |= classify(&sql).is_some() || statement.may_taint_session();
    let traits = Traits {
        executes: true,
        may_commit: statement.may_commit(),
        ends_tx: statement.ends_transaction(),
        waits: true,
        chains: statement.may_chain(),
    };
    let named = (!name.is_empty()).then(|| (name.to_string(), Bytes::copy_from_slice(message)));
    tracker.parse_sent(&name, traits, named);
    tracker.ledger.part(message, true, WAITS, None);
}

fn note_query(body: &[u8], message: &[u8], tracker: &mut Tracker) {
    let text = pg::parse_query_raw(body).ok().map(text_of);
    let utf8 = matches!(text, Some(Cow::Borrowed(_)));
    let statement = text.as_deref().map(Statement::new);
    let statement = statement.as_ref();
    let mut op = text.as_deref().and_then(classify);
    tracker.dirty |= statement.is_none_or(Statement::may_change_session);
    if op.is_some() && !utf8 {
        // Restoring it would need the client's own bytes, not Suture's reading of them.
        tracker.tainted = true;
        op = None;
    } else if op.is_none() {
        tracker.tainted |= statement.is_none_or(Statement::may_taint_session);
    }
    let traits = match statement {
        Some(s) => Traits {
            executes: !s.executes_nothing(),
            may_commit: s.may_commit(),
            ends_tx: s.ends_transaction(),
            waits: true,
            chains: s.may_chain(),
        },
        None => UNKNOWN,
    };
    tracker.ledger.end(message, Boundary::Command, traits, op);
}

/// What one backend message is, for the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BackendMessage {
    /// Part of a reply that answers nothing on its own (rows, notices): counted, no lock.
    Bytes,
    /// It means something to the ledger (answers a part, an error, the ready marker).
    Reply(Reply),
    /// A ParameterStatus: recorded on the backend, forwarded, part of no reply.
    ParameterStatus,
    /// A NotificationResponse: its process ID may need rewriting; part of no reply.
    Notification,
    /// An ErrorResponse: its severity and code decide.
    Error,
    /// A ParseComplete: answers a Parse, and a named statement becomes restorable.
    ParseComplete,
    /// A CommandComplete or PortalSuspended: answers an Execute, and says what the statement
    /// did to the transaction.
    Completed(Completion),
}

/// Classifies a backend message by its tag (and, for ReadyForQuery, its status).
pub(crate) fn classify_backend(tag: u8, body: &[u8]) -> BackendMessage {
    match tag {
        b'D' | b'N' | b't' | b'G' | b'H' | b'W' | b'd' | b'c' | b'V' => BackendMessage::Bytes,
        b'Z' => match pg::parse_ready_for_query(body) {
            Ok(status) => BackendMessage::Reply(Reply::Ready(tx_state(status))),
            Err(_) => BackendMessage::Bytes,
        },
        b'1' => BackendMessage::ParseComplete,
        b'C' => {
            let tag = body.strip_suffix(b"\0").unwrap_or(body);
            BackendMessage::Completed(Completion::of_tag(tag))
        }
        b's' => BackendMessage::Completed(Completion::Other),
        b'2' | b'3' | b'n' | b'T' | b'I' => {
            BackendMessage::Reply(Reply::Part { answers_part: true })
        }
        b'S' => BackendMessage::ParameterStatus,
        b'A' => BackendMessage::Notification,
        b'E' => BackendMessage::Error,
        _ => BackendMessage::Bytes,
    }
}

/// The ledger's view of a ReadyForQuery status.
pub(crate) fn tx_state(status: TxStatus) -> TxState {
    match status {
        TxStatus::Idle => TxState::Idle,
        TxStatus::InTransaction => TxState::InBlock,
        TxStatus::Failed => TxState::Failed,
    }
}

/// The ReadyForQuery status for a ledger state.
pub(crate) fn tx_status(tx: TxState) -> TxStatus {
    match tx {
        TxState::Idle | TxState::Implicit | TxState::ImplicitFailed => TxStatus::Idle,
        TxState::InBlock => TxStatus::InTransaction,
        TxState::Failed => TxStatus::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&u32::try_from(body.len() + 4).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn query(sql: &[u8]) -> Vec<u8> {
        let mut body = sql.to_vec();
        body.push(0);
        message(b'Q', &body)
    }

    fn note(tracker: &mut Tracker, bytes: &[u8]) -> bool {
        note_client_message(bytes[0], bytes, tracker)
    }

    #[test]
    fn a_prepared_commit_is_known_to_commit_when_bound_later() {
        let mut t = Tracker::default();
        assert!(!note(&mut t, &message(b'P', b"c1\0COMMIT\0\0\0")));
        assert!(note(&mut t, &message(b'S', b"")));
        let mut done = BytesMut::new();
        done.extend_from_slice(b"x");
        let traits: Vec<_> = t.ledger.in_flight().map(|r| r.traits).collect();
        assert!(!traits[0].may_commit, "parsing COMMIT commits nothing");
        assert!(!note(&mut t, &message(b'B', b"\0c1\0\0\0\0\0\0\0")));
        assert!(!note(&mut t, &message(b'E', b"\0\0\0\0\0")));
        assert!(note(&mut t, &message(b'S', b"")));
        let last = t.ledger.in_flight().last().map(|r| r.traits);
        assert!(last.is_some_and(|tr| tr.may_commit && tr.executes));
    }

    /// A statement Suture never saw prepared may do anything, but an error answering it is
    /// not a failed COMMIT: inside a block, the block is failed, not left.
    #[test]
    fn an_unknown_statement_failing_in_a_block_leaves_it_failed() {
        let mut t = Tracker::default();
        t.ledger.clear(TxState::InBlock);
        let batch = [
            message(b'B', b"\0never-seen\0\0\0\0\0\0\0"),
            message(b'E', b"\0\0\0\0\0"),
            message(b'S', b""),
        ];
        for m in &batch {
            note(&mut t, m);
        }
        let sent: usize = batch.iter().map(Vec::len).sum();
        t.ledger.accepted(sent, &mut |_| {});
        t.ledger
            .reply(Reply::Part { answers_part: true }, 5, &mut |_| {});
        t.ledger.reply(Reply::Error, 30, &mut |_| {});
        let owed = t.ledger.owes_only_ready().map(|o| o.ready);
        assert_eq!(owed, Some(TxState::Failed));
    }

    #[test]
    fn a_non_utf8_query_is_an_ordinary_query() {
        let mut t = Tracker::default();
        assert!(note(&mut t, &query(b"INSERT INTO t VALUES ('caf\xe9')")));
        assert!(!t.tainted);
        assert!(t.ledger.in_flight().all(|r| r.traits.executes));
        // A SET in another encoding cannot be restored from Suture's reading of it.
        assert!(note(&mut t, &query(b"SET application_name = 'caf\xe9'")));
        assert!(t.tainted);
    }

    #[test]
    fn begin_and_show_execute_nothing_and_rollback_ends_a_block() {
        let mut t = Tracker::default();
        note(&mut t, &query(b"BEGIN"));
        note(&mut t, &query(b"ROLLBACK"));
        let r: Vec<_> = t.ledger.in_flight().collect();
        assert!(!r[0].traits.executes);
        assert_eq!(
            r[1].traits.ends_tx,
            Some(crate::session::ledger::TxEnd::Rollback)
        );
    }

    #[test]
    fn backend_messages_that_answer() {
        assert_eq!(
            classify_backend(b'Z', b"T"),
            BackendMessage::Reply(Reply::Ready(TxState::InBlock))
        );
        assert_eq!(classify_backend(b'D', b""), BackendMessage::Bytes);
        assert_eq!(
            classify_backend(b'C', b"INSERT 0 1\0"),
            BackendMessage::Completed(Completion::Other)
        );
        assert_eq!(
            classify_backend(b'C', b"COMMIT\0"),
            BackendMessage::Completed(Completion::Ended)
        );
        assert_eq!(classify_backend(b'A', b""), BackendMessage::Notification);
    }
}
