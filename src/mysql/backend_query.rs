//! The commands Suture itself runs on an idle MySQL backend connection (COM_QUERY, COM_PING,
//! COM_RESET_CONNECTION, COM_INIT_DB, COM_SET_OPTION, COM_STMT_PREPARE, COM_STMT_CLOSE), and the
//! idle check. Each command is bounded by its deadline and reads its whole reply through
//! `suture_protocol::mysql::Reply`, so the connection never falls out of step; the status
//! flags (and the database, after COM_INIT_DB) are kept in `conn.state`. Any failure other
//! than the server's own ERR marks the connection broken.

use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use suture_protocol::mysql::{
    capability::CLIENT_MULTI_STATEMENTS, command, encode_packet, error_code, is_unsolicited_err,
    parse_err, parse_lenenc_str, parse_ok, parse_prepare_ok, split_packet, Next, PacketKind,
    PrepareOk, Reply, ReplyOptions, MAX_PAYLOAD_LEN, NULL_MARKER,
};
use suture_protocol::ProtocolError;
use tokio::io::AsyncWriteExt;

use crate::liveness;
use crate::mysql::backend::{MyBackendConn, TRACKING_SQL};
use crate::mysql::backend_auth::notice_of;
use crate::mysql::errors::MyNotice;
use crate::wire::{self, WireError};

/// COM_SET_OPTION's operations.
const MULTI_STATEMENTS_ON: u16 = 0;
const MULTI_STATEMENTS_OFF: u16 = 1;

/// Why a command Suture issued on its own failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MyRunError {
    /// The connection failed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The reply did not complete in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The server answered with an ERR.
    #[error("{0}")]
    Server(MyNotice),
    /// The reply broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(#[from] ProtocolError),
}

/// What a COM_QUERY returned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct QueryResult {
    /// The text rows of its result sets, each value as sent (NULL as `None`).
    pub(crate) rows: Vec<Vec<Option<Vec<u8>>>>,
    /// Status flags of the reply's last OK or EOF.
    pub(crate) status: u16,
    /// The raw session-tracking bytes of the last OK, if it had any.
    pub(crate) session_state: Vec<u8>,
}

/// What one reply held, as far as Suture's own commands care.
#[derive(Debug, Default)]
struct Answer {
    /// Raw text rows (continuations joined).
    rows: Vec<Vec<u8>>,
    /// The payload of a COM_STMT_PREPARE_OK.
    prepare_ok: Option<Vec<u8>>,
    session_state: Vec<u8>,
}

/// Splits a text-protocol row into its values.
pub(crate) fn parse_text_row(mut row: &[u8]) -> Result<Vec<Option<Vec<u8>>>, ProtocolError> {
    let mut values = Vec::new();
    while let Some(&first) = row.first() {
        if first == NULL_MARKER {
            values.push(None);
            row = &row[1..];
        } else {
            let (value, used) = parse_lenenc_str(row)?;
            values.push(Some(value.to_vec()));
            row = row.get(used..).unwrap_or_default();
        }
    }
    Ok(values)
}

impl MyBackendConn {
    /// Runs one COM_QUERY and returns its rows; `limit` bounds the whole round trip.
    pub(crate) async fn query(
        &mut self,
        sql: &str,
        limit: Duration,
    ) -> Result<QueryResult, MyRunError> {
        let answer = self
            .command(command::COM_QUERY, sql.as_bytes(), limit)
            .await?;
        let rows = answer
            .rows
            .iter()
            .map(|row| parse_text_row(row))
            .collect::<Result<Vec<_>, _>>()
            .inspect_err(|_| self.broken = true)?;
        Ok(QueryResult {
            rows,
            status: self.state.status,
            session_state: answer.session_state,
        })
    }

    /// COM_PING: the cheapest round trip.
    pub(crate) async fn ping(&mut self, limit: Duration) -> Result<(), MyRunError> {
        self.command(command::COM_PING, &[], limit).await.map(drop)
    }

    /// COM_RESET_CONNECTION (rolls back, resets session and user variables, temporary tables,
    /// locks and prepared statements; keeps the database), then turns session tracking on
    /// again if it was on: the reset put the tracking variables back to their global values.
    pub(crate) async fn reset_connection(&mut self, limit: Duration) -> Result<(), MyRunError> {
        let started = Instant::now();
        self.command(command::COM_RESET_CONNECTION, &[], limit)
            .await?;
        if self.tracking {
            let rest = limit.saturating_sub(started.elapsed());
            self.query(TRACKING_SQL, rest).await?;
        }
        Ok(())
    }

    /// COM_INIT_DB: makes `db` the current database.
    pub(crate) async fn init_db(&mut self, db: &str, limit: Duration) -> Result<(), MyRunError> {
        self.command(command::COM_INIT_DB, db.as_bytes(), limit)
            .await?;
        self.state.database = Some(db.to_owned());
        Ok(())
    }

    /// COM_SET_OPTION: turns multi-statement queries on or off (and the capability with it).
    pub(crate) async fn set_option(
        &mut self,
        multi_statements: bool,
        limit: Duration,
    ) -> Result<(), MyRunError> {
        let op = if multi_statements {
            MULTI_STATEMENTS_ON
        } else {
            MULTI_STATEMENTS_OFF
        };
        self.command(command::COM_SET_OPTION, &op.to_le_bytes(), limit)
            .await?;
        if multi_statements {
            self.capabilities |= CLIENT_MULTI_STATEMENTS;
        } else {
            self.capabilities &= !CLIENT_MULTI_STATEMENTS;
        }
        Ok(())
    }

    /// COM_STMT_PREPARE: prepares `sql`; the parameter and column definitions are read too.
    pub(crate) async fn prepare(
        &mut self,
        sql: &[u8],
        limit: Duration,
    ) -> Result<PrepareOk, MyRunError> {
        let answer = self.command(command::COM_STMT_PREPARE, sql, limit).await?;
        let payload = answer.prepare_ok.unwrap_or_default();
        parse_prepare_ok(&payload)
            .inspect_err(|_| self.broken = true)
            .map_err(MyRunError::from)
    }

    /// Checks an idle connection without waiting: FIN, RST or any packet while idle (an
    /// unsolicited ERR) make it unusable; `Err` carries the cause label.
    pub(crate) fn check_idle(&mut self, max: usize) -> Result<(), &'static str> {
        if liveness::data_waiting(self.broken, &self.probe)? {
            self.read_unsolicited(max)
        } else {
            Ok(())
        }
    }

    /// Reads what arrived while idle. Over TLS the bytes may be only TLS records (session
    /// tickets) that carry no data; any MySQL byte while idle means the server gave up on the
    /// connection.
    fn read_unsolicited(&mut self, max: usize) -> Result<(), &'static str> {
        liveness::read_ready(&mut self.reader, &mut self.rbuf, max)?;
        if self.rbuf.is_empty() {
            return Ok(());
        }
        match split_packet(&mut self.rbuf, max) {
            Ok(Some(packet)) if is_unsolicited_err(packet.seq, &packet.payload) => {
                let timeout = parse_err(&packet.payload, self.capabilities)
                    .is_ok_and(|err| err.code == error_code::ER_CLIENT_INTERACTION_TIMEOUT);
                Err(if timeout {
                    "idle_timeout_notice"
                } else {
                    "server_error"
                })
            }
            _ => Err("server_error"),
        }
    }

    /// How long the server lets this connection idle: `interactive_timeout` for an
    /// interactive client, `wait_timeout` for the others.
    pub(crate) fn idle_limit(&self, interactive: bool) -> Option<Duration> {
        if interactive {
            self.interactive_timeout
        } else {
            self.wait_timeout
        }
    }

    /// Sends one command and reads its whole reply within `limit`; anything but the server's
    /// ERR marks the connection broken.
    async fn command(
        &mut self,
        command_byte: u8,
        body: &[u8],
        limit: Duration,
    ) -> Result<Answer, MyRunError> {
        let mut payload = Vec::with_capacity(1 + body.len());
        payload.put_u8(command_byte);
        payload.put_slice(body);
        let result = tokio::time::timeout(limit, self.exchange(&payload))
            .await
            .unwrap_or(Err(MyRunError::Timeout(limit)));
        if matches!(&result, Err(err) if !matches!(err, MyRunError::Server(_))) {
            self.broken = true;
        }
        result
    }

    async fn exchange(&mut self, payload: &[u8]) -> Result<Answer, MyRunError> {
        if !self.rbuf.is_empty() {
            return Err(ProtocolError::Malformed("backend sent bytes while idle").into());
        }
        let mut out = BytesMut::new();
        let next_seq = encode_packet(0, payload, &mut out);
        self.writer.write_all(&out).await.map_err(WireError::Io)?;
        self.writer.flush().await.map_err(WireError::Io)?;
        let opts = ReplyOptions::from_capabilities(self.capabilities);
        let mut reply = Reply::new(payload, next_seq, opts)?;
        let mut answer = Answer::default();
        let mut error = None;
        // Every byte kept of the reply, against the message limit.
        let mut kept = 0usize;
        let max = self.max_message_size;
        while reply.end().is_none() {
            let packet = loop {
                if let Some(packet) = split_packet(&mut self.rbuf, max.min(MAX_PAYLOAD_LEN))? {
                    break packet;
                }
                wire::fill(&mut self.reader, &mut self.rbuf).await?;
            };
            let body = &packet.payload[..];
            let seen = reply.feed(packet.seq, body.len(), body)?;
            match seen.kind {
                PacketKind::Row | PacketKind::Continuation => {
                    kept += body.len();
                    if kept > max {
                        return Err(ProtocolError::MessageTooLarge { len: kept, max }.into());
                    }
                    match answer.rows.last_mut() {
                        Some(row) if seen.kind == PacketKind::Continuation => {
                            row.extend_from_slice(body)
                        }
                        _ => answer.rows.push(body.to_vec()),
                    }
                }
                PacketKind::Ok => {
                    let ok = parse_ok(body, self.capabilities)?;
                    answer.session_state = ok.session_state.unwrap_or_default().to_vec();
                }
                PacketKind::PrepareOk => answer.prepare_ok = Some(body.to_vec()),
                PacketKind::Err | PacketKind::UnsolicitedErr => {
                    let err = parse_err(body, self.capabilities)?;
                    error = Some(notice_of(&err));
                    if seen.kind == PacketKind::UnsolicitedErr {
                        self.broken = true;
                    }
                }
                _ => {}
            }
            if seen.next == Next::Client {
                return Err(ProtocolError::Malformed(
                    "the backend wants data from Suture (LOCAL INFILE)",
                )
                .into());
            }
        }
        let end = reply.end().unwrap_or_default();
        if let Some(status) = end.status.or(reply.last_status()) {
            self.state.status = status;
        }
        match error {
            Some(notice) => Err(MyRunError::Server(notice)),
            None => Ok(answer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_rows() {
        let row = b"\x01a\xfb\x00\x03xyz";
        assert_eq!(
            parse_text_row(row).expect("row"),
            vec![
                Some(b"a".to_vec()),
                None,
                Some(Vec::new()),
                Some(b"xyz".to_vec())
            ]
        );
        assert_eq!(
            parse_text_row(b"").expect("empty row"),
            Vec::<Option<Vec<u8>>>::new()
        );
        assert!(parse_text_row(b"\x05ab").is_err());
    }
}
