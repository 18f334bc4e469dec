//! The MySQL framers the shared relay drives. The client's stream: each command (sequence id 0)
//! is one request in the ledger with what it may do; statement ids are rewritten in place to the
//! backend's; LOAD DATA LOCAL INFILE data continues the request while the reply gives the client
//! the turn; COM_QUIT ends the session, and COM_CHANGE_USER and COM_RESET_CONNECTION are served by Suture. The backend's
//! stream: every packet is fed to its command's reply state machine, which says when the reply is
//! complete and with which status flags; PREPARE_OK gets the client-visible statement id,
//! session tracking in OK packets updates the session state (and is removed for clients that did
//! not ask for it), and an ERR with sequence id 0 that answers nothing is kept from the client.

use bytes::{Bytes, BytesMut};
use suture_protocol::mysql::{
    self, capability, command, error_code, parse_header, Next, PacketKind, Part, Reply,
    ReplyOptions, Scanner, Step, HEADER_LEN,
};
use suture_protocol::ProtocolError;

use crate::mysql::backend::ConnState;
use crate::mysql::book::{MyBook, Note, Pending, Shared, Tracker};
use crate::session::framing::{BackendFramer, ClientFramer, Scanned, Walked};
use crate::session::ledger::{Boundary, Reply as LedgerReply, Traits, TxState};
use crate::session::tracker::Unsolicited;

/// Statement id sent for a client id Suture does not know: the backend answers it with
/// "unknown prepared statement handler", as it would have for the client's own bogus id.
const UNKNOWN_STATEMENT: u32 = u32::MAX;

/// What a request may do when its text cannot be read whole (a streamed COM_QUERY).
const ANYTHING: Traits = Traits {
    executes: true,
    may_commit: true,
    ends_tx: None,
    waits: true,
    // MySQL says in every OK packet whether a transaction is open.
    chains: false,
};

/// A command whose packets are still being walked.
#[derive(Debug)]
struct Open {
    /// The first payload bytes of its first packet (command byte and statement id at least).
    head: Vec<u8>,
    /// Its reply is registered when its last packet is walked (a logical packet of several).
    reply_at_end: bool,
    /// The backend answers it with nothing.
    unanswered: bool,
    /// Any of its bytes went to the ledger yet.
    started: bool,
    /// COM_STMT_PREPARE: the statement's text.
    prepare: Option<Bytes>,
    /// COM_QUERY `SET NAMES x COLLATE y`: the collation.
    collation: Option<String>,
    traits: Traits,
    note: Note,
}

/// The client's stream.
pub(crate) struct MyClientFramer {
    scanner: Scanner,
    max_packet: usize,
    opts: ReplyOptions,
    open: Option<Open>,
    /// Inside a packet of LOCAL INFILE data.
    in_client_data: bool,
}

impl MyClientFramer {
    pub(crate) fn new(max_packet: usize, client_caps: u64) -> MyClientFramer {
        MyClientFramer {
            scanner: Scanner::new(max_packet),
            max_packet,
            opts: ReplyOptions::from_capabilities(client_caps),
            open: None,
            in_client_data: false,
        }
    }

    /// A new command starts at `cbuf[start..end]` (its payload from `start + HEADER_LEN`):
    /// what it is, with client statement ids replaced by the backend's.
    fn begin(
        &mut self,
        payload: &mut [u8],
        part: Part,
        seq: u8,
        whole: bool,
        t: &mut Tracker,
    ) -> Result<Option<Open>, ProtocolError> {
        if seq != 0 {
            return Err(ProtocolError::Malformed(
                "a command must start with sequence id 0",
            ));
        }
        let &byte = payload
            .first()
            .ok_or(ProtocolError::Malformed("empty command packet"))?;
        let local = matches!(
            byte,
            command::COM_CHANGE_USER | command::COM_RESET_CONNECTION
        );
        if byte == command::COM_QUIT || (local && whole) {
            return Ok(None);
        }
        if mysql::reply_shape(byte).is_none() {
            return Err(ProtocolError::Malformed(
                "replication commands are not relayed by Suture",
            ));
        }
        let in_tx = t.ledger.tx().in_transaction();
        let mut note = Note::None;
        let mut unanswered = false;
        let mut collation = None;
        let traits = match byte {
            command::COM_QUERY => {
                t.dirty = true;
                if whole && part == Part::Whole {
                    query_traits(&payload[1..], t, in_tx, &mut collation)
                } else {
                    ANYTHING
                }
            }
            command::COM_STMT_PREPARE => {
                t.dirty = true;
                if !whole {
                    // Too long to keep for a re-prepare on another backend.
                    t.tainted = true;
                }
                Traits::default()
            }
            command::COM_INIT_DB => {
                t.dirty = true;
                note = Note::InitDb(String::from_utf8_lossy(&payload[1..]).into_owned());
                Traits::default()
            }
            command::COM_SET_OPTION => {
                t.dirty = true;
                let on = payload.get(1..3) == Some(&[0, 0]);
                note = Note::SetOption(on);
                Traits::default()
            }
            command::COM_PING
            | command::COM_STATISTICS
            | command::COM_FIELD_LIST
            | command::COM_PROCESS_INFO
            | command::COM_SLEEP
            | command::COM_TIME => Traits::default(),
            b if mysql::has_statement_id(b) => {
                let client_id = mysql::statement_id(payload)?;
                let backend_id = t
                    .book
                    .statements
                    .backend_id(client_id)
                    .unwrap_or(UNKNOWN_STATEMENT);
                mysql::set_statement_id(payload, backend_id)?;
                match b {
                    command::COM_STMT_CLOSE => {
                        unanswered = true;
                        note = Note::CloseStatement(client_id);
                        Traits::default()
                    }
                    command::COM_STMT_SEND_LONG_DATA => {
                        unanswered = true;
                        t.book.long_data_sent(client_id);
                        Traits::default()
                    }
                    command::COM_STMT_RESET => {
                        note = Note::StatementUsed(client_id);
                        Traits::default()
                    }
                    command::COM_STMT_FETCH => ANYTHING,
                    _ => {
                        note = Note::StatementUsed(client_id);
                        if mysql::execute_flags(payload)? & mysql::CURSOR_TYPE_READ_ONLY != 0 {
                            // A cursor lives on its backend only.
                            t.tainted = true;
                        }
                        t.book.execute_traits(client_id)
                    }
                }
            }
            // Administrative commands (COM_REFRESH, COM_PROCESS_KILL, COM_DEBUG, ...).
            _ => ANYTHING,
        };
        let head_len = payload.len().min(mysql::PEEK_LEN);
        let prepare = (byte == command::COM_STMT_PREPARE && whole)
            .then(|| Bytes::copy_from_slice(&payload[1..]));
        let mut open = Open {
            head: payload[..head_len].to_vec(),
            reply_at_end: part != Part::Whole,
            unanswered,
            started: false,
            prepare,
            collation,
            traits,
            note,
        };
        self.expect_reply(&mut open, seq, &mut t.book)?;
        Ok(Some(open))
    }

    /// Registers the reply to a command whose first packet has sequence id `seq` (one entry
    /// per request, commands without a reply included).
    fn expect_reply(
        &self,
        open: &mut Open,
        seq: u8,
        book: &mut MyBook,
    ) -> Result<(), ProtocolError> {
        let reply = Reply::new(&open.head, seq.wrapping_add(1), self.opts)?;
        let prepare = open.prepare.take();
        let unfinished = open.reply_at_end.then(|| open.head.clone());
        book.pending.push_back(Pending {
            reply,
            prepare,
            collation: open.collation.take(),
            unfinished,
        });
        Ok(())
    }

    /// The last packet of a request of several has sequence id `last_seq`: its reply starts
    /// after it (unless the server answered already).
    fn finished(&self, last_seq: u8, book: &mut MyBook) -> Result<(), ProtocolError> {
        if let Some(pending) = book
            .pending
            .iter_mut()
            .rev()
            .find(|p| p.unfinished.is_some())
        {
            if let Some(head) = pending.unfinished.take() {
                pending.reply = Reply::new(&head, last_seq.wrapping_add(1), self.opts)?;
            }
        }
        Ok(())
    }
}

/// What a COM_QUERY of `sql` may do; it taints the session when it creates state Suture cannot
/// rebuild. `collation` gets the collation a `SET NAMES x COLLATE y` chose.
fn query_traits(
    sql: &[u8],
    t: &mut Tracker,
    in_tx: bool,
    collation: &mut Option<String>,
) -> Traits {
    let facts = crate::mysql::statement::classify(sql, t.book.sql_mode(), in_tx);
    let single = facts.len() == 1;
    let facts = crate::mysql::statement::combine(&facts);
    if facts.chooses_collation {
        // Servers report the character set of `SET NAMES x COLLATE y`, not the collation.
        *collation = crate::mysql::statement::names_collation(sql, t.book.sql_mode());
        if !single || collation.is_none() {
            // Which OK of several answers it is not followed.
            t.book.state.taint();
            t.tainted = true;
        }
    }
    if facts.taints {
        // Tracking may not tell (a user variable beside a tracked one in one SET).
        t.book.state.taint();
        t.tainted = true;
    }
    facts.traits()
}

impl ClientFramer for MyClientFramer {
    type Book = MyBook;

    fn walk(
        &mut self,
        cbuf: &mut BytesMut,
        scanned: &mut usize,
        sendable: &mut usize,
        shared: &Shared,
    ) -> Result<Walked, ProtocolError> {
        let mut t = shared.lock();
        loop {
            let (seq, part, start, end, first, whole) = match self.scanner.next(cbuf, *scanned)? {
                Step::Message {
                    seq,
                    part,
                    start,
                    end,
                } => (seq, part, start, end, true, true),
                Step::Passthrough {
                    seq,
                    part,
                    start,
                    end,
                    first,
                } => (seq, part, start, end, first, false),
                Step::NeedMore => return Ok(Walked::NeedMore),
            };
            let packet_done = whole || !self.scanner.in_packet();
            if first && self.open.is_none() && !self.in_client_data {
                if t.book.client_turn() {
                    let len = end - start - HEADER_LEN;
                    let len = if whole {
                        len
                    } else {
                        header_payload_len(&cbuf[start..end])?
                    };
                    if let Some(pending) = t.book.receiving() {
                        pending.reply.feed_client(seq, len)?;
                    }
                    self.in_client_data = true;
                } else {
                    if !part.starts_logical() {
                        return Err(ProtocolError::Malformed(
                            "a continuation packet where a command must start",
                        ));
                    }
                    let payload = &mut cbuf[start + HEADER_LEN..end];
                    match self.begin(payload, part, seq, whole, &mut t)? {
                        Some(open) => self.open = Some(open),
                        None if payload.first() == Some(&command::COM_QUIT) => {
                            return Ok(Walked::Quit { at: start })
                        }
                        None => return Ok(Walked::Local { start, end }),
                    }
                }
            }
            let bytes = &cbuf[start..end];
            if self.in_client_data {
                t.ledger.continuation(bytes);
                self.in_client_data = !packet_done;
            } else if let Some(open) = self.open.as_mut() {
                let done = packet_done && part.ends_logical();
                let note = std::mem::take(&mut open.note);
                if open.started && !t.ledger.newest_is_open() {
                    // The server answered it before its end.
                    t.ledger.unowned(bytes);
                } else {
                    match (done, open.started, open.unanswered) {
                        (true, _, true) => t.ledger.end_unanswered(bytes, open.traits, note),
                        (true, _, false) => {
                            t.ledger.end(bytes, Boundary::Command, open.traits, note)
                        }
                        (false, false, _) => t.ledger.part(bytes, false, open.traits, note),
                        (false, true, _) => t.ledger.continuation(bytes),
                    }
                }
                open.started = true;
                if done && self.open.take().is_some_and(|open| open.reply_at_end) {
                    self.finished(seq, &mut t.book)?;
                }
            } else {
                t.ledger.continuation(bytes);
            }
            *scanned = end;
            *sendable = end;
        }
    }

    fn in_message(&self) -> bool {
        self.scanner.in_packet() || self.open.is_some() || self.in_client_data
    }

    fn remaining(&self) -> usize {
        self.scanner.remaining()
    }

    fn arriving(&self, buf: &[u8]) -> Option<usize> {
        parse_header(buf, usize::MAX)
            .ok()
            .flatten()
            .map(|h| h.packet_len())
    }

    fn restart(&mut self) {
        let opts = self.opts;
        *self = MyClientFramer::new(self.max_packet, 0);
        self.opts = opts;
    }
}

/// The payload length in the header at the front of `piece`.
fn header_payload_len(piece: &[u8]) -> Result<usize, ProtocolError> {
    parse_header(piece, usize::MAX)?
        .map(|h| h.payload_len)
        .ok_or(ProtocolError::Malformed(
            "packet piece shorter than its header",
        ))
}

/// How the reply whose last packet is being streamed ends, once that packet has passed.
#[derive(Clone, Copy, Debug)]
struct Ending {
    errored: bool,
    tx: TxState,
}

/// One backend connection's replies.
pub(crate) struct MyBackendFramer {
    scanner: Scanner,
    opts: ReplyOptions,
    client_caps: u64,
    backend_caps: u64,
    /// OK packets are rewritten without session tracking for the client.
    strip: bool,
    ending: Option<Ending>,
}

impl MyBackendFramer {
    pub(crate) fn new(max_packet: usize, client_caps: u64, backend_caps: u64) -> MyBackendFramer {
        let track = capability::CLIENT_SESSION_TRACK;
        MyBackendFramer {
            scanner: Scanner::new(max_packet),
            opts: ReplyOptions::from_capabilities(client_caps),
            client_caps,
            backend_caps,
            strip: backend_caps & track != 0 && client_caps & track == 0,
            ending: None,
        }
    }

    /// The reply is complete: the ledger learns it with the reply bytes before it.
    fn finish(t: &mut Tracker, ending: Ending, bytes: usize) {
        if ending.errored {
            t.reply(LedgerReply::Error, bytes);
            t.reply(LedgerReply::Ready(ending.tx), 0);
        } else {
            t.reply(LedgerReply::Ready(ending.tx), bytes);
        }
    }

    /// An OK packet (`payload`) of a reply: the status and session state it reports.
    fn note_ok(&self, payload: &[u8], t: &mut Tracker, conn: &mut ConnState) {
        let Ok(ok) = mysql::parse_ok(payload, self.backend_caps) else {
            return;
        };
        conn.status = ok.status;
        if ok.status & mysql::status::SERVER_SESSION_STATE_CHANGED != 0 {
            t.dirty = true;
        }
        if let Some(state) = ok.session_state {
            let book = &mut t.book;
            let collation = book.pending.front().and_then(|p| p.collation.as_deref());
            if let Err(taint) = book.state.apply_tracking(state, collation) {
                tracing::debug!(cause = taint.label(), "session state Suture cannot rebuild");
                t.tainted = true;
            }
            conn.database = t.book.state.schema().map(str::to_owned);
        }
    }

    /// Rewrites the OK packet at `rbuf[start..end]` without session tracking; returns its new
    /// end.
    fn strip_ok(
        &self,
        rbuf: &mut BytesMut,
        start: usize,
        end: usize,
        seq: u8,
    ) -> Result<usize, ProtocolError> {
        let mut stripped = BytesMut::with_capacity(end - start);
        mysql::strip_session_track(
            &rbuf[start + HEADER_LEN..end],
            self.backend_caps,
            self.client_caps,
            seq,
            &mut stripped,
        )?;
        if stripped[..] == rbuf[start..end] {
            return Ok(end);
        }
        let tail = rbuf.split_off(end);
        rbuf.truncate(start);
        rbuf.extend_from_slice(&stripped);
        rbuf.unsplit(tail);
        Ok(start + stripped.len())
    }
}

/// An ERR with sequence id 0 that answers nothing: kept from the client, recorded.
fn unsolicited(t: &mut Tracker, code: u16, bytes: usize) {
    t.unsolicited = Some(Unsolicited {
        code: code.to_string(),
        idle_timeout: code == error_code::ER_CLIENT_INTERACTION_TIMEOUT,
    });
    t.reply_bytes(bytes);
}

impl BackendFramer for MyBackendFramer {
    type Book = MyBook;
    type Extra = ConnState;

    fn scan(
        &mut self,
        rbuf: &mut BytesMut,
        shared: &Shared,
        conn: &mut ConnState,
    ) -> Result<Scanned, ProtocolError> {
        let mut pos = 0;
        // Reply bytes not yet given to the ledger.
        let mut bytes = 0;
        // Every packet feeds its reply's state machine in the book: one lock for the whole read.
        let mut t = shared.lock();
        loop {
            let step = self.scanner.next(rbuf, pos)?;
            let (seq, start, mut end, first, whole) = match step {
                Step::Message {
                    seq, start, end, ..
                } => (seq, start, end, true, true),
                Step::Passthrough {
                    seq,
                    start,
                    end,
                    first,
                    ..
                } => (seq, start, end, first, false),
                Step::NeedMore => break,
            };
            if !first {
                bytes += end - start;
                pos = end;
                if !self.scanner.in_packet() {
                    if let Some(ending) = self.ending.take() {
                        Self::finish(&mut t, ending, bytes);
                        bytes = 0;
                    }
                }
                continue;
            }
            let payload_len = if whole {
                end - start - HEADER_LEN
            } else {
                header_payload_len(&rbuf[start..end])?
            };
            let payload = &rbuf[start + HEADER_LEN..end];
            let Some(pending) = t.book.receiving() else {
                if mysql::is_unsolicited_err(seq, payload) {
                    let code = mysql::parse_err(payload, self.backend_caps)?.code;
                    unsolicited(&mut t, code, bytes);
                    return Ok(Scanned::Unsolicited(pos));
                }
                return Err(ProtocolError::Malformed(
                    "the server sent a packet no command asked for",
                ));
            };
            if let Some(head) = pending.unfinished.take() {
                // The server answers before the request's last packet: it gave up on it.
                pending.reply = Reply::new(&head, seq, self.opts)?;
            }
            let seen = pending.reply.feed(seq, payload_len, payload)?;
            let last_status = pending.reply.last_status();
            let prepare = match seen.kind {
                PacketKind::PrepareOk => pending.prepare.take(),
                _ => None,
            };
            match seen.kind {
                PacketKind::UnsolicitedErr => {
                    let code = mysql::parse_err(payload, self.backend_caps)?.code;
                    unsolicited(&mut t, code, bytes);
                    return Ok(Scanned::Unsolicited(pos));
                }
                PacketKind::PrepareOk if whole => {
                    let ok = mysql::parse_prepare_ok(payload)?;
                    let sql = prepare.unwrap_or_default();
                    let id = t.book.prepared(ok.statement_id, sql, ok.params, ok.columns);
                    if let Some(slot) = rbuf.get_mut(start + HEADER_LEN + 1..start + HEADER_LEN + 5)
                    {
                        slot.copy_from_slice(&id.to_le_bytes());
                    }
                }
                PacketKind::Ok if whole => {
                    self.note_ok(payload, &mut t, conn);
                    if self.strip {
                        end = self.strip_ok(rbuf, start, end, seq)?;
                    }
                }
                _ => {}
            }
            let len = end - start;
            pos = end;
            match seen.next {
                Next::Done(reply_end) => {
                    let status = reply_end.status.or(last_status);
                    let tx = match status {
                        Some(status) => {
                            t.book.status = status;
                            conn.status = status;
                            MyBook::tx_of(status)
                        }
                        None => t.ledger.tx(),
                    };
                    let ending = Ending {
                        errored: reply_end.error.is_some(),
                        tx,
                    };
                    if whole || !self.scanner.in_packet() {
                        Self::finish(&mut t, ending, bytes + len);
                        bytes = 0;
                    } else {
                        self.ending = Some(ending);
                        bytes += len;
                    }
                }
                Next::Backend | Next::Client => bytes += len,
            }
        }
        t.reply_bytes(bytes);
        Ok(Scanned::Forward(pos))
    }

    fn in_message(&self) -> bool {
        self.scanner.in_packet()
    }
}

#[cfg(test)]
#[path = "framing_tests.rs"]
mod tests;
