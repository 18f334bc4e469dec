//! Generic packets of the command phase: capability, status and command constants; OK, ERR and
//! EOF packets (parse and encode); COM_STMT_PREPARE_OK; the statement id at the front of the
//! prepared-statement commands; the rule that tells a result-set terminator from a row.
//!
//! Parsers take a whole payload (header stripped). Encoders append one whole physical packet,
//! header included, with the sequence id given; on error `buf` is left as it was.

use bytes::{BufMut, BytesMut};

use super::frame::{framed, MAX_PAYLOAD_LEN};
use super::lenenc::{put_lenenc_int, put_lenenc_str, Reader};
use crate::ProtocolError;

/// Capability flags (`CLIENT_*`), as one `u64`: the low 32 bits are the protocol's flags, the
/// high 32 MariaDB's extended capabilities (sent in reserved handshake bytes).
pub mod capability {
    /// MySQL: CLIENT_LONG_PASSWORD. MariaDB names it CLIENT_MYSQL and clears it to say "MariaDB":
    /// then the extended capabilities are present.
    pub const CLIENT_LONG_PASSWORD: u64 = 1;
    pub const CLIENT_MYSQL: u64 = 1;
    pub const CLIENT_FOUND_ROWS: u64 = 1 << 1;
    pub const CLIENT_LONG_FLAG: u64 = 1 << 2;
    pub const CLIENT_CONNECT_WITH_DB: u64 = 1 << 3;
    pub const CLIENT_NO_SCHEMA: u64 = 1 << 4;
    pub const CLIENT_COMPRESS: u64 = 1 << 5;
    pub const CLIENT_ODBC: u64 = 1 << 6;
    pub const CLIENT_LOCAL_FILES: u64 = 1 << 7;
    pub const CLIENT_IGNORE_SPACE: u64 = 1 << 8;
    pub const CLIENT_PROTOCOL_41: u64 = 1 << 9;
    pub const CLIENT_INTERACTIVE: u64 = 1 << 10;
    pub const CLIENT_SSL: u64 = 1 << 11;
    pub const CLIENT_IGNORE_SIGPIPE: u64 = 1 << 12;
    pub const CLIENT_TRANSACTIONS: u64 = 1 << 13;
    pub const CLIENT_RESERVED: u64 = 1 << 14;
    pub const CLIENT_SECURE_CONNECTION: u64 = 1 << 15;
    pub const CLIENT_MULTI_STATEMENTS: u64 = 1 << 16;
    pub const CLIENT_MULTI_RESULTS: u64 = 1 << 17;
    pub const CLIENT_PS_MULTI_RESULTS: u64 = 1 << 18;
    pub const CLIENT_PLUGIN_AUTH: u64 = 1 << 19;
    pub const CLIENT_CONNECT_ATTRS: u64 = 1 << 20;
    pub const CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: u64 = 1 << 21;
    pub const CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS: u64 = 1 << 22;
    pub const CLIENT_SESSION_TRACK: u64 = 1 << 23;
    pub const CLIENT_DEPRECATE_EOF: u64 = 1 << 24;
    /// MySQL 8: the column-count packet carries a metadata-follows byte.
    pub const CLIENT_OPTIONAL_RESULTSET_METADATA: u64 = 1 << 25;
    pub const CLIENT_ZSTD_COMPRESSION_ALGORITHM: u64 = 1 << 26;
    /// MySQL 8: COM_QUERY and COM_STMT_EXECUTE carry query attributes.
    pub const CLIENT_QUERY_ATTRIBUTES: u64 = 1 << 27;
    pub const MULTI_FACTOR_AUTHENTICATION: u64 = 1 << 28;
    pub const CLIENT_CAPABILITY_EXTENSION: u64 = 1 << 29;
    pub const CLIENT_SSL_VERIFY_SERVER_CERT: u64 = 1 << 30;
    pub const CLIENT_REMEMBER_OPTIONS: u64 = 1 << 31;
    /// MariaDB: progress reports (ERR packets with code 0xFFFF) during long commands.
    pub const MARIADB_CLIENT_PROGRESS: u64 = 1 << 32;
    pub const MARIADB_CLIENT_COM_MULTI: u64 = 1 << 33;
    pub const MARIADB_CLIENT_STMT_BULK_OPERATIONS: u64 = 1 << 34;
    pub const MARIADB_CLIENT_EXTENDED_METADATA: u64 = 1 << 35;
    /// MariaDB: the column-count packet carries a metadata-follows byte.
    pub const MARIADB_CLIENT_CACHE_METADATA: u64 = 1 << 36;
    pub const MARIADB_CLIENT_BULK_UNIT_RESULTS: u64 = 1 << 37;
}

/// Server status flags (`SERVER_*`) of OK and EOF packets.
pub mod status {
    pub const SERVER_STATUS_IN_TRANS: u16 = 0x0001;
    pub const SERVER_STATUS_AUTOCOMMIT: u16 = 0x0002;
    pub const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
    pub const SERVER_QUERY_NO_GOOD_INDEX_USED: u16 = 0x0010;
    pub const SERVER_QUERY_NO_INDEX_USED: u16 = 0x0020;
    pub const SERVER_STATUS_CURSOR_EXISTS: u16 = 0x0040;
    pub const SERVER_STATUS_LAST_ROW_SENT: u16 = 0x0080;
    pub const SERVER_STATUS_DB_DROPPED: u16 = 0x0100;
    pub const SERVER_STATUS_NO_BACKSLASH_ESCAPES: u16 = 0x0200;
    pub const SERVER_STATUS_METADATA_CHANGED: u16 = 0x0400;
    pub const SERVER_QUERY_WAS_SLOW: u16 = 0x0800;
    pub const SERVER_PS_OUT_PARAMS: u16 = 0x1000;
    pub const SERVER_STATUS_IN_TRANS_READONLY: u16 = 0x2000;
    pub const SERVER_SESSION_STATE_CHANGED: u16 = 0x4000;
}

/// Command bytes: the first payload byte of every command-phase request.
pub mod command {
    pub const COM_SLEEP: u8 = 0x00;
    pub const COM_QUIT: u8 = 0x01;
    pub const COM_INIT_DB: u8 = 0x02;
    pub const COM_QUERY: u8 = 0x03;
    pub const COM_FIELD_LIST: u8 = 0x04;
    pub const COM_CREATE_DB: u8 = 0x05;
    pub const COM_DROP_DB: u8 = 0x06;
    pub const COM_REFRESH: u8 = 0x07;
    pub const COM_SHUTDOWN: u8 = 0x08;
    pub const COM_STATISTICS: u8 = 0x09;
    pub const COM_PROCESS_INFO: u8 = 0x0a;
    pub const COM_CONNECT: u8 = 0x0b;
    pub const COM_PROCESS_KILL: u8 = 0x0c;
    pub const COM_DEBUG: u8 = 0x0d;
    pub const COM_PING: u8 = 0x0e;
    pub const COM_TIME: u8 = 0x0f;
    pub const COM_DELAYED_INSERT: u8 = 0x10;
    pub const COM_CHANGE_USER: u8 = 0x11;
    pub const COM_BINLOG_DUMP: u8 = 0x12;
    pub const COM_TABLE_DUMP: u8 = 0x13;
    pub const COM_CONNECT_OUT: u8 = 0x14;
    pub const COM_REGISTER_SLAVE: u8 = 0x15;
    pub const COM_STMT_PREPARE: u8 = 0x16;
    pub const COM_STMT_EXECUTE: u8 = 0x17;
    pub const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
    pub const COM_STMT_CLOSE: u8 = 0x19;
    pub const COM_STMT_RESET: u8 = 0x1a;
    pub const COM_SET_OPTION: u8 = 0x1b;
    pub const COM_STMT_FETCH: u8 = 0x1c;
    pub const COM_DAEMON: u8 = 0x1d;
    pub const COM_BINLOG_DUMP_GTID: u8 = 0x1e;
    pub const COM_RESET_CONNECTION: u8 = 0x1f;
    /// MariaDB: COM_STMT_BULK_EXECUTE.
    pub const COM_STMT_BULK_EXECUTE: u8 = 0xfa;
}

/// Error codes the proxy acts on or sends.
pub mod error_code {
    /// Too many connections (08004).
    pub const ER_CON_COUNT_ERROR: u16 = 1040;
    /// Access denied for user (28000).
    pub const ER_ACCESS_DENIED_ERROR: u16 = 1045;
    /// Unknown command (08S01).
    pub const ER_UNKNOWN_COM_ERROR: u16 = 1047;
    /// Server shutdown in progress (08S01).
    pub const ER_SERVER_SHUTDOWN: u16 = 1053;
    /// Host is not allowed to connect.
    pub const ER_HOST_NOT_PRIVILEGED: u16 = 1130;
    /// Got a packet bigger than max_allowed_packet (08S01).
    pub const ER_NET_PACKET_TOO_LARGE: u16 = 1153;
    /// Query execution was interrupted (KILL QUERY, 70100).
    pub const ER_QUERY_INTERRUPTED: u16 = 1317;
    /// MariaDB: connection was killed (70100), sent with sequence id 0 on shutdown.
    pub const ER_CONNECTION_KILLED: u16 = 1927;
    /// MySQL 8.0.24+: disconnected by the server because of inactivity (wait_timeout), sent with
    /// sequence id 0.
    pub const ER_CLIENT_INTERACTION_TIMEOUT: u16 = 4031;
    /// Client-side: can't connect to the server.
    pub const CR_CONN_HOST_ERROR: u16 = 2003;
    /// Client-side: lost connection to the server during query.
    pub const CR_SERVER_LOST: u16 = 2013;
    /// MariaDB: the error code of a progress report.
    pub const PROGRESS_REPORT: u16 = 0xFFFF;
}

/// Header byte of an OK packet.
pub const OK_HEADER: u8 = 0x00;
/// Header byte of an EOF packet, of an OK packet that ends a result set under
/// CLIENT_DEPRECATE_EOF, and of AuthSwitchRequest.
pub const EOF_HEADER: u8 = 0xFE;
/// Header byte of an ERR packet.
pub const ERR_HEADER: u8 = 0xFF;
/// Header byte of a LOCAL INFILE request.
pub const LOCAL_INFILE_HEADER: u8 = 0xFB;

/// Whether `payload` is an EOF packet: header 0xFE and fewer than 9 bytes. (Both the MySQL and
/// the MariaDB documentation give "length < 9": a text row can also begin with 0xFE, but then
/// its first value is at least 2^24 bytes long.)
pub fn is_eof_packet(payload: &[u8]) -> bool {
    payload.first() == Some(&EOF_HEADER) && payload.len() < 9
}

/// Whether a packet in the rows of a result set is its terminator rather than a row, from its
/// first payload byte and its payload length.
///
/// Without CLIENT_DEPRECATE_EOF the terminator is an EOF packet: 0xFE and fewer than 9 bytes.
/// With it, it is an OK packet headed 0xFE, which may be long (info, session tracking), so the
/// rule is 0xFE and a payload shorter than 0xFFFFFF: a row that starts with 0xFE (an 8-byte
/// length, used only for values of 16 MiB and more) is always longer than that, so its first
/// physical packet is a full 0xFFFFFF bytes. (MariaDB's result-set documentation: "check that
/// the packet length is less than 0xFFFFFF"; MySQL's client library `cli_safe_read_with_ok`
/// takes a 0xFE packet for an OK unless it is longer than MAX_PACKET_LENGTH.)
pub fn is_result_terminator(first_byte: u8, payload_len: usize, deprecate_eof: bool) -> bool {
    first_byte == EOF_HEADER
        && if deprecate_eof {
            payload_len < MAX_PAYLOAD_LEN
        } else {
            payload_len < 9
        }
}

/// Whether the packet is an ERR packet sent with sequence id 0 while no command was in flight
/// (MySQL 8 ERR 4031 on wait_timeout, MariaDB ERR 1927 on shutdown): a reply to a command never
/// has sequence id 0.
pub fn is_unsolicited_err(seq: u8, payload: &[u8]) -> bool {
    seq == 0 && payload.first() == Some(&ERR_HEADER)
}

fn has(caps: u64, flag: u64) -> bool {
    caps & flag != 0
}

/// An OK packet (header 0x00, or 0xFE when it ends a result set under CLIENT_DEPRECATE_EOF).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OkPacket<'a> {
    pub header: u8,
    pub affected_rows: u64,
    pub last_insert_id: u64,
    /// Server status flags (`status::*`); 0 when the capabilities carry none.
    pub status: u16,
    pub warnings: u16,
    /// Human-readable information, e.g. `Rows matched: 1  Changed: 1  Warnings: 0`.
    pub info: &'a [u8],
    /// The raw session state information (see [`session_changes`](super::session_changes)):
    /// present only with CLIENT_SESSION_TRACK and SERVER_SESSION_STATE_CHANGED.
    pub session_state: Option<&'a [u8]>,
}

impl OkPacket<'_> {
    /// Whether the server is inside a transaction after this command.
    pub fn in_transaction(&self) -> bool {
        self.status & status::SERVER_STATUS_IN_TRANS != 0
    }

    /// Whether more results of the same request follow.
    pub fn more_results(&self) -> bool {
        self.status & status::SERVER_MORE_RESULTS_EXISTS != 0
    }
}

/// Parses an OK packet with the negotiated capabilities `caps`.
pub fn parse_ok(payload: &[u8], caps: u64) -> Result<OkPacket<'_>, ProtocolError> {
    use capability::*;
    let mut r = Reader::new(payload);
    let header = r.u8("empty OK packet")?;
    if header != OK_HEADER && header != EOF_HEADER {
        return Err(ProtocolError::Malformed(
            "OK packet header is not 0x00 or 0xFE",
        ));
    }
    let affected_rows = r.lenenc_int()?;
    let last_insert_id = r.lenenc_int()?;
    let (status, warnings) = if has(caps, CLIENT_PROTOCOL_41) {
        (
            r.u16("OK packet without status flags")?,
            r.u16("OK packet without a warning count")?,
        )
    } else if has(caps, CLIENT_TRANSACTIONS) {
        (r.u16("OK packet without status flags")?, 0)
    } else {
        (0, 0)
    };
    let (info, session_state) = if has(caps, CLIENT_SESSION_TRACK) {
        // The info string is there when anything follows; the state after it when flagged.
        let info = if r.is_empty() {
            &[][..]
        } else {
            r.lenenc_str()?
        };
        let state = if status & status::SERVER_SESSION_STATE_CHANGED != 0 && !r.is_empty() {
            Some(r.lenenc_str()?)
        } else {
            None
        };
        (info, state)
    } else {
        // Servers write the info as a `string<lenenc>` here too (MySQL's and MariaDB's
        // `net_send_ok`), though the protocol documentation says `string<EOF>`; a peer that
        // wrote it bare is read as it is.
        let rest = r.take_rest();
        let mut inner = Reader::new(rest);
        let info = match inner.lenenc_str() {
            Ok(info) if inner.is_empty() => info,
            _ => rest,
        };
        (info, None)
    };
    Ok(OkPacket {
        header,
        affected_rows,
        last_insert_id,
        status,
        warnings,
        info,
        session_state,
    })
}

/// Writes an OK packet for a peer with capabilities `caps`. The session state is written only
/// with CLIENT_SESSION_TRACK, and needs SERVER_SESSION_STATE_CHANGED in the status; without
/// CLIENT_PROTOCOL_41 the warning count (and without CLIENT_TRANSACTIONS the status) is left out.
pub fn encode_ok(
    ok: &OkPacket<'_>,
    caps: u64,
    seq: u8,
    buf: &mut BytesMut,
) -> Result<(), ProtocolError> {
    use capability::*;
    if ok.header != OK_HEADER && ok.header != EOF_HEADER {
        return Err(ProtocolError::InvalidArgument(
            "OK packet header is not 0x00 or 0xFE",
        ));
    }
    let session_track = has(caps, CLIENT_SESSION_TRACK);
    if ok.session_state.is_some()
        && (!session_track || ok.status & status::SERVER_SESSION_STATE_CHANGED == 0)
    {
        return Err(ProtocolError::InvalidArgument(
            "session state without CLIENT_SESSION_TRACK and SERVER_SESSION_STATE_CHANGED",
        ));
    }
    framed(seq, buf, |buf| {
        buf.put_u8(ok.header);
        put_lenenc_int(ok.affected_rows, buf);
        put_lenenc_int(ok.last_insert_id, buf);
        if has(caps, CLIENT_PROTOCOL_41) {
            buf.put_u16_le(ok.status);
            buf.put_u16_le(ok.warnings);
        } else if has(caps, CLIENT_TRANSACTIONS) {
            buf.put_u16_le(ok.status);
        }
        if session_track {
            if !ok.info.is_empty() || ok.session_state.is_some() {
                put_lenenc_str(ok.info, buf);
            }
            if let Some(state) = ok.session_state {
                put_lenenc_str(state, buf);
            }
        } else if !ok.info.is_empty() {
            // As servers write it (see `parse_ok`).
            put_lenenc_str(ok.info, buf);
        }
        Ok(())
    })
}

/// Rewrites an OK packet a backend sent with session tracking (`backend_caps` has
/// CLIENT_SESSION_TRACK) for a client that did not ask for it (`client_caps`): the session state
/// and SERVER_SESSION_STATE_CHANGED are dropped; the info stays a `string<lenenc>`, as servers
/// write it for such clients.
pub fn strip_session_track(
    payload: &[u8],
    backend_caps: u64,
    client_caps: u64,
    seq: u8,
    buf: &mut BytesMut,
) -> Result<(), ProtocolError> {
    let ok = parse_ok(payload, backend_caps)?;
    let stripped = OkPacket {
        status: ok.status & !status::SERVER_SESSION_STATE_CHANGED,
        session_state: None,
        ..ok
    };
    encode_ok(
        &stripped,
        client_caps & !capability::CLIENT_SESSION_TRACK,
        seq,
        buf,
    )
}

/// An ERR packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrPacket<'a> {
    pub code: u16,
    /// The five-character SQLSTATE after the `#` marker (protocol 4.1), e.g. `*b"28000"`.
    pub sql_state: Option<[u8; 5]>,
    /// The message, in the connection's character set.
    pub message: &'a [u8],
}

impl ErrPacket<'_> {
    /// The SQLSTATE as text, `HY000` when none was sent or it is not ASCII.
    pub fn sql_state_str(&self) -> &str {
        self.sql_state
            .as_ref()
            .and_then(|s| std::str::from_utf8(s).ok())
            .unwrap_or("HY000")
    }

    /// The message decoded lossily (it need not be UTF-8).
    pub fn message_lossy(&self) -> String {
        String::from_utf8_lossy(self.message).into_owned()
    }
}

/// Parses an ERR packet. The SQLSTATE is read when `caps` has CLIENT_PROTOCOL_41 and the `#`
/// marker is there (a server may send an ERR before the capabilities are agreed on); it must be
/// ASCII.
pub fn parse_err(payload: &[u8], caps: u64) -> Result<ErrPacket<'_>, ProtocolError> {
    let mut r = Reader::new(payload);
    if r.u8("empty ERR packet")? != ERR_HEADER {
        return Err(ProtocolError::Malformed("ERR packet header is not 0xFF"));
    }
    let code = r.u16("ERR packet without an error code")?;
    let mut sql_state = None;
    if has(caps, capability::CLIENT_PROTOCOL_41) && payload.get(3) == Some(&b'#') {
        r.take(1, "ERR packet SQLSTATE marker")?;
        let s = r.take(5, "ERR packet SQLSTATE shorter than 5 bytes")?;
        // SQLSTATEs are five ASCII characters; anything else could not be sent on as one.
        if !s.is_ascii() {
            return Err(ProtocolError::Malformed("ERR packet SQLSTATE is not ASCII"));
        }
        sql_state = Some([s[0], s[1], s[2], s[3], s[4]]);
    }
    Ok(ErrPacket {
        code,
        sql_state,
        message: r.take_rest(),
    })
}

/// Writes an ERR packet. `sql_state` must be five ASCII characters; it is written (with its
/// `#` marker) only when `caps` has CLIENT_PROTOCOL_41.
pub fn encode_err(
    code: u16,
    sql_state: &str,
    message: &[u8],
    caps: u64,
    seq: u8,
    buf: &mut BytesMut,
) -> Result<(), ProtocolError> {
    if sql_state.len() != 5 || !sql_state.is_ascii() {
        return Err(ProtocolError::InvalidArgument(
            "SQLSTATE is not 5 ASCII characters",
        ));
    }
    framed(seq, buf, |buf| {
        buf.put_u8(ERR_HEADER);
        buf.put_u16_le(code);
        if has(caps, capability::CLIENT_PROTOCOL_41) {
            buf.put_u8(b'#');
            buf.put_slice(sql_state.as_bytes());
        }
        buf.put_slice(message);
        Ok(())
    })
}

/// An EOF packet (protocol 4.1 form).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EofPacket {
    pub warnings: u16,
    pub status: u16,
}

/// Parses an EOF packet: 0xFE, and with CLIENT_PROTOCOL_41 the warning count and status flags.
pub fn parse_eof(payload: &[u8], caps: u64) -> Result<EofPacket, ProtocolError> {
    if !is_eof_packet(payload) {
        return Err(ProtocolError::Malformed("not an EOF packet"));
    }
    let mut r = Reader::new(payload);
    r.u8("empty EOF packet")?;
    if !has(caps, capability::CLIENT_PROTOCOL_41) {
        return Ok(EofPacket::default());
    }
    Ok(EofPacket {
        warnings: r.u16("EOF packet without a warning count")?,
        status: r.u16("EOF packet without status flags")?,
    })
}

/// Writes an EOF packet (with warnings and status when `caps` has CLIENT_PROTOCOL_41).
pub fn encode_eof(eof: &EofPacket, caps: u64, seq: u8, buf: &mut BytesMut) {
    buf.reserve(9);
    let p41 = has(caps, capability::CLIENT_PROTOCOL_41);
    buf.put_slice(&[if p41 { 5 } else { 1 }, 0, 0, seq, EOF_HEADER]);
    if p41 {
        buf.put_u16_le(eof.warnings);
        buf.put_u16_le(eof.status);
    }
}

/// The status flags of the packet that ends a result set or a command (an OK, or an EOF when
/// `deprecate_eof` is false and the header is 0xFE), from the first bytes of its payload.
pub fn terminator_status(head: &[u8], deprecate_eof: bool) -> Result<u16, ProtocolError> {
    let mut r = Reader::new(head);
    let header = r.u8("empty terminator packet")?;
    if header == EOF_HEADER && !deprecate_eof {
        r.u16("EOF packet without a warning count")?;
        return r.u16("EOF packet without status flags");
    }
    r.lenenc_int()?;
    r.lenenc_int()?;
    r.u16("OK packet without status flags")
}

/// COM_STMT_PREPARE_OK: the reply to a successful COM_STMT_PREPARE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrepareOk {
    pub statement_id: u32,
    pub columns: u16,
    pub params: u16,
    pub warnings: u16,
    /// MySQL with CLIENT_OPTIONAL_RESULTSET_METADATA: whether the definitions follow (1) or
    /// not (0).
    pub metadata_follows: Option<u8>,
}

/// Parses COM_STMT_PREPARE_OK: 0x00, statement id, column and parameter counts, a reserved
/// byte, then (when the payload is long enough) the warning count and a metadata-follows byte.
pub fn parse_prepare_ok(payload: &[u8]) -> Result<PrepareOk, ProtocolError> {
    let mut r = Reader::new(payload);
    if r.u8("empty COM_STMT_PREPARE_OK")? != OK_HEADER {
        return Err(ProtocolError::Malformed(
            "COM_STMT_PREPARE_OK status is not 0x00",
        ));
    }
    let statement_id = r.u32("COM_STMT_PREPARE_OK statement id")?;
    let columns = r.u16("COM_STMT_PREPARE_OK column count")?;
    let params = r.u16("COM_STMT_PREPARE_OK parameter count")?;
    r.u8("COM_STMT_PREPARE_OK reserved byte")?;
    let warnings = if r.is_empty() {
        0
    } else {
        r.u16("COM_STMT_PREPARE_OK warning count")?
    };
    let metadata_follows = if r.is_empty() {
        None
    } else {
        Some(r.u8("COM_STMT_PREPARE_OK metadata flag")?)
    };
    r.finish("bytes after COM_STMT_PREPARE_OK")?;
    Ok(PrepareOk {
        statement_id,
        columns,
        params,
        warnings,
        metadata_follows,
    })
}

/// Writes COM_STMT_PREPARE_OK (12 bytes of payload, 13 with a metadata-follows byte).
pub fn encode_prepare_ok(ok: &PrepareOk, seq: u8, buf: &mut BytesMut) {
    let len = if ok.metadata_follows.is_some() {
        13
    } else {
        12
    };
    buf.reserve(4 + len);
    buf.put_slice(&[len as u8, 0, 0, seq, OK_HEADER]);
    buf.put_u32_le(ok.statement_id);
    buf.put_u16_le(ok.columns);
    buf.put_u16_le(ok.params);
    buf.put_u8(0);
    buf.put_u16_le(ok.warnings);
    if let Some(m) = ok.metadata_follows {
        buf.put_u8(m);
    }
}

/// Whether requests with this command byte begin with a 4-byte statement id.
pub fn has_statement_id(command_byte: u8) -> bool {
    use command::*;
    matches!(
        command_byte,
        COM_STMT_EXECUTE
            | COM_STMT_SEND_LONG_DATA
            | COM_STMT_CLOSE
            | COM_STMT_RESET
            | COM_STMT_FETCH
            | COM_STMT_BULK_EXECUTE
    )
}

/// The statement id of a COM_STMT_EXECUTE / SEND_LONG_DATA / CLOSE / RESET / FETCH (or MariaDB
/// COM_STMT_BULK_EXECUTE) payload: the little-endian u32 after the command byte.
pub fn statement_id(payload: &[u8]) -> Result<u32, ProtocolError> {
    match *payload {
        [c, a, b, d, e, ..] if has_statement_id(c) => Ok(u32::from_le_bytes([a, b, d, e])),
        [c, ..] if !has_statement_id(c) => Err(ProtocolError::Malformed(
            "command does not carry a statement id",
        )),
        _ => Err(ProtocolError::Malformed(
            "statement command shorter than its id",
        )),
    }
}

/// Rewrites the statement id of such a payload in place (client ids are mapped to backend ids).
pub fn set_statement_id(payload: &mut [u8], id: u32) -> Result<(), ProtocolError> {
    statement_id(payload)?;
    if let Some(slot) = payload.get_mut(1..5) {
        slot.copy_from_slice(&id.to_le_bytes());
    }
    Ok(())
}

/// COM_STMT_EXECUTE cursor flag: open a read-only cursor.
pub const CURSOR_TYPE_READ_ONLY: u8 = 0x01;

/// The flags byte of a COM_STMT_EXECUTE payload (cursor type, `CURSOR_TYPE_*`).
pub fn execute_flags(payload: &[u8]) -> Result<u8, ProtocolError> {
    match *payload {
        [command::COM_STMT_EXECUTE, _, _, _, _, flags, ..] => Ok(flags),
        [command::COM_STMT_EXECUTE, ..] => Err(ProtocolError::Malformed(
            "COM_STMT_EXECUTE shorter than its flags",
        )),
        _ => Err(ProtocolError::Malformed("not a COM_STMT_EXECUTE")),
    }
}

/// The payload of a command that is its byte and a string: COM_QUERY's SQL text (without
/// CLIENT_QUERY_ATTRIBUTES), COM_INIT_DB's schema, COM_STMT_PREPARE's SQL text.
pub fn command_text(payload: &[u8], command_byte: u8) -> Result<&[u8], ProtocolError> {
    match payload.split_first() {
        Some((&c, text)) if c == command_byte => Ok(text),
        Some(_) => Err(ProtocolError::Malformed("unexpected command byte")),
        None => Err(ProtocolError::Malformed("empty command packet")),
    }
}
