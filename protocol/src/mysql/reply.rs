//! Reply framing: a pure state machine the relay feeds every packet of a command's reply with
//! (header and first payload bytes only, never whole rows) that says what each packet is, whose
//! turn it is next, and when the reply is complete with which status flags.
//!
//! Covered: COM_QUERY (OK, ERR, LOCAL INFILE request, text result sets chained by
//! SERVER_MORE_RESULTS_EXISTS), COM_STMT_PREPARE (PREPARE_OK, parameter and column definitions),
//! COM_STMT_EXECUTE (binary result sets, OK/ERR, cursors), COM_STMT_FETCH, the OK/ERR commands
//! (COM_PING, COM_INIT_DB, COM_RESET_CONNECTION, COM_STMT_RESET, ...), COM_SET_OPTION (EOF),
//! COM_STATISTICS, COM_FIELD_LIST, COM_CHANGE_USER (an authentication exchange), and the commands
//! without a reply (COM_QUIT, COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA). Both legs must speak
//! protocol 4.1. An ERR with sequence id 0 as the first packet is an unsolicited error, written
//! by a server that gave up on the idle connection before it read the command.

use super::frame::MAX_PAYLOAD_LEN;
use super::lenenc::Reader;
use super::packets::capability::*;
use super::packets::{
    command, error_code, is_result_terminator, status, terminator_status, CURSOR_TYPE_READ_ONLY,
    EOF_HEADER, ERR_HEADER, LOCAL_INFILE_HEADER, OK_HEADER,
};
use super::scanner::PEEK_LEN;
use crate::ProtocolError;

/// What the capabilities both legs agreed on mean for the shape of replies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyOptions {
    /// CLIENT_DEPRECATE_EOF: no EOF after definitions; result sets end with an OK headed 0xFE.
    pub deprecate_eof: bool,
    /// CLIENT_OPTIONAL_RESULTSET_METADATA (MySQL) or MARIADB_CLIENT_CACHE_METADATA: a
    /// metadata-follows byte after the column count (and in COM_STMT_PREPARE_OK, MySQL).
    pub metadata_flag: bool,
    /// MARIADB_CLIENT_PROGRESS: ERR packets with code 0xFFFF are progress reports.
    pub progress_reports: bool,
}

impl ReplyOptions {
    /// The options for a leg with the negotiated capabilities `caps`.
    pub fn from_capabilities(caps: u64) -> ReplyOptions {
        ReplyOptions {
            deprecate_eof: caps & CLIENT_DEPRECATE_EOF != 0,
            metadata_flag: caps
                & (CLIENT_OPTIONAL_RESULTSET_METADATA | MARIADB_CLIENT_CACHE_METADATA)
                != 0,
            progress_reports: caps & MARIADB_CLIENT_PROGRESS != 0,
        }
    }
}

/// How the backend answers a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyShape {
    /// COM_QUIT, COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA: nothing.
    None,
    /// OK or ERR (or an EOF: COM_SET_OPTION, COM_DEBUG, COM_SHUTDOWN).
    Simple,
    /// COM_QUERY: OK, ERR, LOCAL INFILE request or text result sets.
    Query,
    /// COM_STMT_EXECUTE (and MariaDB's COM_STMT_BULK_EXECUTE): OK, ERR or binary result sets.
    Execute,
    /// COM_STMT_FETCH: binary rows and a terminator.
    Fetch,
    /// COM_STMT_PREPARE: PREPARE_OK and definitions, or ERR.
    Prepare,
    /// COM_FIELD_LIST: column definitions and a terminator.
    FieldList,
    /// COM_STATISTICS: one text packet.
    Statistics,
    /// COM_CHANGE_USER: an authentication exchange.
    ChangeUser,
}

/// The reply shape of a command byte; `None` for the replication commands, whose replies are
/// streams the proxy does not relay.
pub fn reply_shape(command_byte: u8) -> Option<ReplyShape> {
    use command::*;
    Some(match command_byte {
        COM_QUIT | COM_STMT_CLOSE | COM_STMT_SEND_LONG_DATA => ReplyShape::None,
        COM_QUERY | COM_PROCESS_INFO => ReplyShape::Query,
        COM_STMT_EXECUTE | COM_STMT_BULK_EXECUTE => ReplyShape::Execute,
        COM_STMT_FETCH => ReplyShape::Fetch,
        COM_STMT_PREPARE => ReplyShape::Prepare,
        COM_FIELD_LIST => ReplyShape::FieldList,
        COM_STATISTICS => ReplyShape::Statistics,
        COM_CHANGE_USER => ReplyShape::ChangeUser,
        COM_BINLOG_DUMP | COM_BINLOG_DUMP_GTID | COM_TABLE_DUMP | COM_REGISTER_SLAVE => {
            return None
        }
        _ => ReplyShape::Simple,
    })
}

/// What one packet of the reply was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketKind {
    Ok,
    Err,
    /// An ERR with sequence id 0 instead of the reply (see [`is_unsolicited_err`](super::is_unsolicited_err)).
    UnsolicitedErr,
    /// An EOF packet (without CLIENT_DEPRECATE_EOF).
    Eof,
    /// MariaDB progress report (ERR with code 0xFFFF); more follows.
    Progress,
    /// 0xFB and a file name: the client must send the file, then an empty packet.
    LocalInfile,
    ColumnCount,
    ColumnDef,
    Row,
    PrepareOk,
    ParamDef,
    AuthSwitch,
    AuthMoreData,
    /// COM_STATISTICS's text.
    Text,
    /// A continuation packet of a logical packet longer than 16 MiB.
    Continuation,
    /// A packet from the client inside the reply (LOCAL INFILE data, an auth response).
    ClientData,
}

/// How a reply ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyEnd {
    /// Status flags of the final OK or EOF; `None` after an ERR or when the reply carries none.
    pub status: Option<u16>,
    /// The error code when the reply ended with an ERR.
    pub error: Option<u16>,
    /// Whether that ERR had sequence id 0 (unsolicited).
    pub unsolicited: bool,
}

/// Whose packet comes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Backend,
    Client,
    Done(ReplyEnd),
}

/// The result of feeding one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub kind: PacketKind,
    pub next: Next,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The first packet of a response, or of the next result after MORE_RESULTS_EXISTS.
    Response,
    ColumnDefs {
        left: u64,
    },
    MetaEof,
    Rows,
    Params {
        left: u64,
        columns: u64,
    },
    ParamsEof {
        columns: u64,
    },
    PrepColumns {
        left: u64,
    },
    PrepColumnsEof,
    FieldList,
    Auth,
    ClientAuth,
    InfileData,
    Done(ReplyEnd),
}

/// The reply to one command, packet by packet.
#[derive(Clone, Debug)]
pub struct Reply {
    shape: ReplyShape,
    opts: ReplyOptions,
    state: State,
    next_seq: u8,
    /// The next packet (either side) continues a logical packet.
    continuation: bool,
    /// COM_STMT_EXECUTE asked for a cursor.
    cursor: bool,
    /// No packet has been fed yet.
    fresh: bool,
    last_status: Option<u16>,
}

impl Reply {
    /// The reply to the command whose payload starts with `request_head` (at least the command
    /// byte; for COM_STMT_EXECUTE the flags byte too). `next_seq` is the sequence id of the
    /// reply's first packet: one after the request's last packet.
    pub fn new(
        request_head: &[u8],
        next_seq: u8,
        opts: ReplyOptions,
    ) -> Result<Reply, ProtocolError> {
        let &command_byte = request_head
            .first()
            .ok_or(ProtocolError::Malformed("empty command packet"))?;
        let shape = reply_shape(command_byte).ok_or(ProtocolError::Malformed(
            "replication command: its reply is not relayed",
        ))?;
        let cursor = command_byte == command::COM_STMT_EXECUTE
            && request_head
                .get(5)
                .is_some_and(|f| f & CURSOR_TYPE_READ_ONLY != 0);
        let state = match shape {
            ReplyShape::None => State::Done(ReplyEnd::default()),
            ReplyShape::Fetch => State::Rows,
            ReplyShape::FieldList => State::FieldList,
            ReplyShape::ChangeUser => State::Auth,
            _ => State::Response,
        };
        Ok(Reply {
            shape,
            opts,
            state,
            next_seq,
            continuation: false,
            cursor,
            fresh: true,
            last_status: None,
        })
    }

    pub fn shape(&self) -> ReplyShape {
        self.shape
    }

    /// Whether the command gets any reply at all.
    pub fn expects_reply(&self) -> bool {
        self.shape != ReplyShape::None
    }

    /// How the reply ended, once it has.
    pub fn end(&self) -> Option<ReplyEnd> {
        match self.state {
            State::Done(end) => Some(end),
            _ => None,
        }
    }

    /// Whose packet comes next.
    pub fn next(&self) -> Next {
        match self.state {
            State::Done(end) => Next::Done(end),
            State::ClientAuth | State::InfileData => Next::Client,
            _ => Next::Backend,
        }
    }

    /// The sequence id the next packet of the conversation must carry.
    pub fn next_seq(&self) -> u8 {
        self.next_seq
    }

    /// The status flags of the latest OK or EOF seen in this reply (also after an ERR that ended
    /// a multi-statement request: earlier statements may have changed the transaction state).
    pub fn last_status(&self) -> Option<u16> {
        self.last_status
    }

    /// Feeds one physical packet from the backend: its sequence id, payload length and at least
    /// the first `min(payload_len, PEEK_LEN)` bytes of its payload.
    pub fn feed(
        &mut self,
        seq: u8,
        payload_len: usize,
        head: &[u8],
    ) -> Result<Seen, ProtocolError> {
        if head.len() < payload_len.min(PEEK_LEN) {
            return Err(ProtocolError::InvalidArgument(
                "reply packet head shorter than PEEK_LEN",
            ));
        }
        let first = head.first().copied();
        if self.fresh && seq == 0 && seq != self.next_seq && first == Some(ERR_HEADER) {
            let code = err_code(head)?;
            return Ok(self.finish(
                PacketKind::UnsolicitedErr,
                ReplyEnd {
                    status: None,
                    error: Some(code),
                    unsolicited: true,
                },
            ));
        }
        match self.state {
            State::Done(_) => {
                return Err(ProtocolError::Malformed(
                    "backend packet after the reply was complete",
                ))
            }
            // The server may give up on the client's data or auth response with an ERR.
            State::ClientAuth | State::InfileData
                if first == Some(ERR_HEADER) && !self.continuation =>
            {
                self.next_seq = seq;
            }
            State::ClientAuth | State::InfileData => {
                return Err(ProtocolError::Malformed(
                    "backend packet while the client has the turn",
                ))
            }
            _ => {}
        }
        self.check_seq(seq)?;
        self.fresh = false;
        if self.continuation {
            self.continuation = payload_len == MAX_PAYLOAD_LEN;
            return Ok(Seen {
                kind: PacketKind::Continuation,
                next: self.next(),
            });
        }
        let Some(first) = first else {
            return Err(ProtocolError::Malformed("empty packet in a reply"));
        };
        let continued = payload_len == MAX_PAYLOAD_LEN;
        if first == ERR_HEADER {
            if continued {
                return Err(ProtocolError::Malformed("ERR packet of 16 MiB"));
            }
            let code = err_code(head)?;
            if code == error_code::PROGRESS_REPORT && self.opts.progress_reports {
                return Ok(Seen {
                    kind: PacketKind::Progress,
                    next: self.next(),
                });
            }
            return Ok(self.finish(
                PacketKind::Err,
                ReplyEnd {
                    status: None,
                    error: Some(code),
                    unsolicited: false,
                },
            ));
        }
        let kind = self.step(first, payload_len, head)?;
        if continued
            && !matches!(
                kind,
                PacketKind::Row | PacketKind::ColumnDef | PacketKind::ParamDef
            )
        {
            return Err(ProtocolError::Malformed(
                "a 16 MiB packet that is not a row or definition",
            ));
        }
        self.continuation = continued;
        Ok(Seen {
            kind,
            next: self.next(),
        })
    }

    /// Feeds one physical packet from the client inside the reply (LOCAL INFILE data, an auth
    /// response): its sequence id and payload length.
    pub fn feed_client(&mut self, seq: u8, payload_len: usize) -> Result<Seen, ProtocolError> {
        if !matches!(self.state, State::ClientAuth | State::InfileData) {
            return Err(ProtocolError::Malformed(
                "client packet while the backend has the turn",
            ));
        }
        self.check_seq(seq)?;
        let continuation = self.continuation;
        self.continuation = payload_len == MAX_PAYLOAD_LEN;
        match self.state {
            State::InfileData if !continuation && payload_len == 0 => self.state = State::Response,
            State::ClientAuth if !self.continuation => self.state = State::Auth,
            _ => {}
        }
        Ok(Seen {
            kind: PacketKind::ClientData,
            next: self.next(),
        })
    }

    fn check_seq(&mut self, seq: u8) -> Result<(), ProtocolError> {
        if seq != self.next_seq {
            return Err(ProtocolError::OutOfSequence {
                expected: self.next_seq,
                got: seq,
            });
        }
        self.next_seq = seq.wrapping_add(1);
        Ok(())
    }

    fn finish(&mut self, kind: PacketKind, end: ReplyEnd) -> Seen {
        self.fresh = false;
        self.state = State::Done(end);
        Seen {
            kind,
            next: Next::Done(end),
        }
    }

    /// A terminating OK or EOF with these status flags: the reply is done unless more results
    /// follow.
    fn terminated(&mut self, flags: u16) {
        self.last_status = Some(flags);
        self.state = if flags & status::SERVER_MORE_RESULTS_EXISTS != 0
            && matches!(self.shape, ReplyShape::Query | ReplyShape::Execute)
        {
            State::Response
        } else {
            State::Done(ReplyEnd {
                status: Some(flags),
                error: None,
                unsolicited: false,
            })
        };
    }

    fn eof_status(&self, first: u8, len: usize, head: &[u8]) -> Result<u16, ProtocolError> {
        if first != EOF_HEADER || len >= 9 {
            return Err(ProtocolError::Malformed("expected an EOF packet"));
        }
        terminator_status(head, false)
    }

    /// Interprets a packet that is not an ERR and starts a logical packet.
    fn step(&mut self, first: u8, len: usize, head: &[u8]) -> Result<PacketKind, ProtocolError> {
        let deprecate = self.opts.deprecate_eof;
        let terminator = is_result_terminator(first, len, deprecate);
        Ok(match self.state {
            State::Response => self.response(first, len, head)?,
            State::ColumnDefs { left } => {
                self.state = match left {
                    0 | 1 if deprecate => State::Rows,
                    0 | 1 => State::MetaEof,
                    n => State::ColumnDefs { left: n - 1 },
                };
                PacketKind::ColumnDef
            }
            State::MetaEof => {
                let flags = self.eof_status(first, len, head)?;
                self.last_status = Some(flags);
                let cursor = flags & status::SERVER_STATUS_CURSOR_EXISTS != 0
                    && flags & status::SERVER_MORE_RESULTS_EXISTS == 0;
                if self.cursor && cursor {
                    self.terminated(flags);
                } else {
                    self.state = State::Rows;
                }
                PacketKind::Eof
            }
            State::Rows | State::FieldList if terminator => {
                self.terminated(terminator_status(head, deprecate)?);
                if deprecate {
                    PacketKind::Ok
                } else {
                    PacketKind::Eof
                }
            }
            State::Rows => PacketKind::Row,
            State::FieldList => PacketKind::ColumnDef,
            State::Params { left, columns } => {
                self.state = match left {
                    0 | 1 if !deprecate => State::ParamsEof { columns },
                    0 | 1 => self.prep_columns(columns),
                    n => State::Params {
                        left: n - 1,
                        columns,
                    },
                };
                PacketKind::ParamDef
            }
            State::ParamsEof { columns } => {
                let flags = self.eof_status(first, len, head)?;
                self.last_status = Some(flags);
                self.state = self.prep_columns(columns);
                PacketKind::Eof
            }
            State::PrepColumns { left } => {
                self.state = match left {
                    0 | 1 if !deprecate => State::PrepColumnsEof,
                    0 | 1 => self.prep_done(),
                    n => State::PrepColumns { left: n - 1 },
                };
                PacketKind::ColumnDef
            }
            State::PrepColumnsEof => {
                let flags = self.eof_status(first, len, head)?;
                self.last_status = Some(flags);
                self.state = self.prep_done();
                PacketKind::Eof
            }
            State::Auth => self.auth(first, len, head)?,
            State::ClientAuth | State::InfileData | State::Done(_) => {
                return Err(ProtocolError::Malformed("unexpected backend packet"))
            }
        })
    }

    fn prep_columns(&self, columns: u64) -> State {
        if columns == 0 {
            self.prep_done()
        } else {
            State::PrepColumns { left: columns }
        }
    }

    fn prep_done(&self) -> State {
        State::Done(ReplyEnd {
            status: self.last_status,
            error: None,
            unsolicited: false,
        })
    }

    fn response(
        &mut self,
        first: u8,
        len: usize,
        head: &[u8],
    ) -> Result<PacketKind, ProtocolError> {
        match (self.shape, first) {
            (ReplyShape::Prepare, OK_HEADER) => {
                let mut r = Reader::new(head);
                r.take(5, "COM_STMT_PREPARE_OK too short")?;
                let columns = u64::from(r.u16("COM_STMT_PREPARE_OK column count")?);
                let params = u64::from(r.u16("COM_STMT_PREPARE_OK parameter count")?);
                let suppressed = self.opts.metadata_flag && len >= 13 && head.get(12) == Some(&0);
                self.state = if suppressed || (params == 0 && columns == 0) {
                    self.prep_done()
                } else if params == 0 {
                    State::PrepColumns { left: columns }
                } else {
                    State::Params {
                        left: params,
                        columns,
                    }
                };
                Ok(PacketKind::PrepareOk)
            }
            (ReplyShape::Prepare, _) => Err(ProtocolError::Malformed(
                "unexpected reply to COM_STMT_PREPARE",
            )),
            (ReplyShape::Statistics, _) => {
                self.state = State::Done(ReplyEnd::default());
                Ok(PacketKind::Text)
            }
            (_, OK_HEADER) => {
                self.terminated(terminator_status(head, true)?);
                Ok(PacketKind::Ok)
            }
            (ReplyShape::Simple, EOF_HEADER) if len < MAX_PAYLOAD_LEN => {
                let deprecate = self.opts.deprecate_eof;
                self.terminated(terminator_status(head, deprecate)?);
                Ok(if deprecate {
                    PacketKind::Ok
                } else {
                    PacketKind::Eof
                })
            }
            (ReplyShape::Simple, _) => {
                Err(ProtocolError::Malformed("unexpected reply to a command"))
            }
            (ReplyShape::Query, LOCAL_INFILE_HEADER) => {
                self.state = State::InfileData;
                Ok(PacketKind::LocalInfile)
            }
            (ReplyShape::Query | ReplyShape::Execute, _) => {
                let mut r = Reader::new(head);
                let columns = r.lenenc_int()?;
                if columns == 0 {
                    return Err(ProtocolError::Malformed("result set of zero columns"));
                }
                let metadata =
                    !self.opts.metadata_flag || r.u8("column count without metadata flag")? != 0;
                self.state = match (metadata, self.opts.deprecate_eof) {
                    (true, _) => State::ColumnDefs { left: columns },
                    (false, true) => State::Rows,
                    (false, false) => State::MetaEof,
                };
                Ok(PacketKind::ColumnCount)
            }
            _ => Err(ProtocolError::Malformed("unexpected packet in a reply")),
        }
    }

    fn auth(&mut self, first: u8, len: usize, head: &[u8]) -> Result<PacketKind, ProtocolError> {
        use super::auth::{caching_sha2::FAST_AUTH_SUCCESS, AUTH_MORE_DATA_HEADER};
        match first {
            OK_HEADER => {
                self.terminated(terminator_status(head, true)?);
                Ok(PacketKind::Ok)
            }
            EOF_HEADER => {
                self.state = State::ClientAuth;
                Ok(PacketKind::AuthSwitch)
            }
            AUTH_MORE_DATA_HEADER => {
                let fast_ok = len == 2 && head.get(1) == Some(&FAST_AUTH_SUCCESS);
                if !fast_ok {
                    self.state = State::ClientAuth;
                }
                Ok(PacketKind::AuthMoreData)
            }
            _ => Err(ProtocolError::Malformed(
                "unexpected packet during COM_CHANGE_USER",
            )),
        }
    }
}

fn err_code(head: &[u8]) -> Result<u16, ProtocolError> {
    match *head {
        [_, a, b, ..] => Ok(u16::from_le_bytes([a, b])),
        _ => Err(ProtocolError::Malformed("ERR packet without an error code")),
    }
}
