//! The client's view after its backend was lost inside a transaction block (DESIGN §3): the
//! transaction is gone, so the client is shown an aborted transaction — every request gets an
//! error and ReadyForQuery with status `E` — until it ends the transaction with ROLLBACK (or
//! COMMIT, which PostgreSQL also answers with ROLLBACK in an aborted transaction). Then the
//! session carries on, on a new backend. No backend is needed meanwhile.

use std::time::Duration;

use bytes::BytesMut;
use suture_protocol::pg::{self, TxStatus};
use suture_protocol::ProtocolError;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::postgres::tracker::{lowercase_statement, Shared};
use crate::postgres::wire::{self, WireError};

/// SQLSTATE in_failed_sql_transaction.
const IN_FAILED_TRANSACTION: &str = "25P02";
/// What the first request after the loss is told.
const LOST_MESSAGE: &str =
    "connection to the database server was lost inside a transaction; the transaction was rolled back";

/// How the aborted-transaction phase ended.
#[derive(Debug)]
pub(crate) enum AbortedEnd {
    /// The client ended the transaction; it now expects a session outside a transaction.
    TransactionEnded,
    /// The client left (or its socket failed, or it sent Terminate).
    ClientGone(WireError),
    /// The client sent bytes that are not valid protocol.
    ClientProtocol(ProtocolError),
}

/// Writes the error (and ReadyForQuery `E`) that answers a request sent before the loss.
pub(crate) fn lost_reply(out: &mut BytesMut) -> Result<(), ProtocolError> {
    error_only(out, &mut true)?;
    pg::encode_ready_for_query(TxStatus::Failed, out);
    Ok(())
}

/// Serves the client until it ends its aborted transaction. `announce` says the client has not
/// been told of the loss yet: its first request then gets 08006 instead of 25P02.
pub(crate) async fn serve<R, W>(
    client: &mut R,
    cbuf: &mut BytesMut,
    writer: &mut W,
    shared: &Shared,
    mut announce: bool,
    max_message_size: usize,
    write_limit: Duration,
) -> AbortedEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut batch = Batch::default();
    loop {
        let message = match wire::read_message(client, cbuf, max_message_size).await {
            Ok(message) => message,
            Err(WireError::Protocol(err)) => return AbortedEnd::ClientProtocol(err),
            Err(err) => return AbortedEnd::ClientGone(err),
        };
        let mut out = BytesMut::new();
        let ended = match message.tag {
            b'Q' => {
                let ends = pg::parse_query(&message.body)
                    .ok()
                    .and_then(transaction_end);
                reply(&mut out, ends, &[], &mut announce)
            }
            b'P' => {
                if let Ok((_, sql)) = pg::parse_parse_message(&message.body) {
                    batch.ends = batch.ends.or(transaction_end(sql));
                }
                batch.push(&message);
                Ok(false)
            }
            b'C' => {
                // Closing a statement works in an aborted transaction; the session state must
                // forget it too.
                if let [b'S', name @ .., 0] = &message.body[..] {
                    if let Ok(name) = std::str::from_utf8(name) {
                        shared.lock().state.forget_prepared(name);
                    }
                }
                batch.push(&message);
                Ok(false)
            }
            b'B' | b'D' | b'E' => {
                batch.push(&message);
                Ok(false)
            }
            b'S' if batch.only_closes() => {
                // PostgreSQL answers Close even in an aborted transaction.
                for _ in &batch.replies {
                    if let Err(err) = pg::encode_empty_reply(b'3', &mut out) {
                        return AbortedEnd::ClientProtocol(err);
                    }
                }
                batch = Batch::default();
                pg::encode_ready_for_query(TxStatus::Failed, &mut out);
                Ok(false)
            }
            b'S' if batch.errored => {
                batch = Batch::default();
                pg::encode_ready_for_query(TxStatus::Failed, &mut out);
                Ok(false)
            }
            b'S' => {
                let batch = std::mem::take(&mut batch);
                reply(&mut out, batch.ends, &batch.replies, &mut announce)
            }
            // A Flush of a batch that does not end the transaction: PostgreSQL would already
            // have sent the error; send it now and only ReadyForQuery at the Sync.
            b'H' if batch.ends.is_none() && !batch.replies.is_empty() && !batch.errored => {
                batch.errored = true;
                error_only(&mut out, &mut announce).map(|()| false)
            }
            b'F' => reply(&mut out, None, &[], &mut announce),
            b'X' => return AbortedEnd::ClientGone(WireError::Closed),
            // Flush, and COPY messages of a copy the backend never started: nothing to answer.
            _ => Ok(false),
        };
        let ended = match ended {
            Ok(ended) => ended,
            Err(err) => return AbortedEnd::ClientProtocol(err),
        };
        if !out.is_empty() {
            if let Err(err) = wire::write_all(writer, &out, write_limit).await {
                return AbortedEnd::ClientGone(err);
            }
        }
        if ended {
            return AbortedEnd::TransactionEnded;
        }
    }
}

/// The extended-protocol messages of one batch, as the replies each would get if the batch
/// ends the transaction.
#[derive(Default)]
struct Batch {
    ends: Option<TxEnd>,
    /// The error for this batch was already sent (at a Flush).
    errored: bool,
    replies: Vec<Reply>,
}

#[derive(Clone, Copy)]
enum Reply {
    ParseComplete,
    BindComplete,
    DescribeStatement,
    DescribePortal,
    Executed,
    CloseComplete,
}

impl Batch {
    fn only_closes(&self) -> bool {
        !self.replies.is_empty()
            && self
                .replies
                .iter()
                .all(|r| matches!(r, Reply::CloseComplete))
    }

    fn push(&mut self, message: &pg::Message) {
        let reply = match message.tag {
            b'P' => Reply::ParseComplete,
            b'B' => Reply::BindComplete,
            b'D' if message.body.first() == Some(&b'S') => Reply::DescribeStatement,
            b'D' => Reply::DescribePortal,
            b'E' => Reply::Executed,
            _ => Reply::CloseComplete,
        };
        self.replies.push(reply);
    }
}

/// Answers one request; returns whether it ended the transaction.
fn reply(
    out: &mut BytesMut,
    ends: Option<TxEnd>,
    replies: &[Reply],
    announce: &mut bool,
) -> Result<bool, ProtocolError> {
    if ends == Some(TxEnd::Commit) && *announce {
        // The client asks to commit a transaction it has not yet heard is gone: that is the
        // request that must fail, never one that looks like success.
        error_only(out, announce)?;
        pg::encode_ready_for_query(TxStatus::Idle, out);
        return Ok(true);
    }
    if ends.is_some() {
        for reply in replies {
            match reply {
                Reply::ParseComplete => pg::encode_empty_reply(b'1', out)?,
                Reply::BindComplete => pg::encode_empty_reply(b'2', out)?,
                Reply::DescribeStatement => {
                    pg::encode_no_parameters(out);
                    pg::encode_empty_reply(b'n', out)?;
                }
                Reply::DescribePortal => pg::encode_empty_reply(b'n', out)?,
                Reply::Executed => pg::encode_command_complete("ROLLBACK", out)?,
                Reply::CloseComplete => pg::encode_empty_reply(b'3', out)?,
            }
        }
        if replies.is_empty() {
            pg::encode_command_complete("ROLLBACK", out)?;
        }
        pg::encode_ready_for_query(TxStatus::Idle, out);
        *announce = false;
        return Ok(true);
    }
    error_only(out, announce)?;
    pg::encode_ready_for_query(TxStatus::Failed, out);
    Ok(false)
}

/// The error a request gets in the aborted transaction, without ReadyForQuery.
fn error_only(out: &mut BytesMut, announce: &mut bool) -> Result<(), ProtocolError> {
    let (code, message) = if std::mem::take(announce) {
        ("08006", LOST_MESSAGE)
    } else {
        (
            IN_FAILED_TRANSACTION,
            "current transaction is aborted, commands ignored until end of transaction block",
        )
    };
    pg::encode_error_response("ERROR", code, message, None, out)
}

/// How a statement ends a transaction block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TxEnd {
    Rollback,
    Commit,
}

/// Whether `sql` ends the transaction block: ROLLBACK, ABORT, COMMIT or END (with an optional
/// WORK or TRANSACTION). Not ROLLBACK TO SAVEPOINT, not the two-phase forms, not AND CHAIN.
fn transaction_end(sql: &str) -> Option<TxEnd> {
    let lower = lowercase_statement(sql);
    let words: Vec<&str> = lower.split_whitespace().collect();
    match words.as_slice() {
        ["rollback" | "abort"] | ["rollback" | "abort", "work" | "transaction"] => {
            Some(TxEnd::Rollback)
        }
        ["commit" | "end"] | ["commit" | "end", "work" | "transaction"] => Some(TxEnd::Commit),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_ends_are_recognised() {
        for sql in [
            "ROLLBACK",
            "rollback;",
            " abort work ",
            "COMMIT TRANSACTION",
            "end",
        ] {
            assert!(transaction_end(sql).is_some(), "{sql}");
        }
        for sql in [
            "ROLLBACK TO SAVEPOINT a",
            "COMMIT PREPARED 'x'",
            "COMMIT AND CHAIN",
            "SELECT 1",
            "",
        ] {
            assert!(transaction_end(sql).is_none(), "{sql}");
        }
    }

    #[test]
    fn commit_as_first_request_after_the_loss_fails_and_ends_the_transaction() {
        let mut announce = true;
        let mut out = BytesMut::new();
        assert!(reply(&mut out, Some(TxEnd::Commit), &[], &mut announce).expect("encode"));
        assert!(
            out.windows(5).any(|w| w == b"08006"),
            "COMMIT must not look successful"
        );
        assert!(!out.windows(8).any(|w| w == b"ROLLBACK"));
        assert_eq!(out.last(), Some(&b'I'));
        out.clear();
        // Once told, a COMMIT ends the aborted transaction the way PostgreSQL does.
        assert!(reply(&mut out, Some(TxEnd::Commit), &[], &mut announce).expect("encode"));
        assert!(out.windows(8).any(|w| w == b"ROLLBACK"));
    }

    #[test]
    fn first_request_hears_of_the_loss_then_25p02_until_rollback() {
        let mut announce = true;
        let mut out = BytesMut::new();
        assert!(!reply(&mut out, None, &[], &mut announce).expect("encode"));
        assert!(out.windows(5).any(|w| w == b"08006"));
        out.clear();
        assert!(!reply(&mut out, None, &[], &mut announce).expect("encode"));
        assert!(out.windows(5).any(|w| w == b"25P02"));
        assert_eq!(out.last(), Some(&b'E'));
        out.clear();
        let replies = [
            Reply::ParseComplete,
            Reply::BindComplete,
            Reply::DescribePortal,
            Reply::Executed,
        ];
        assert!(reply(&mut out, Some(TxEnd::Rollback), &replies, &mut announce).expect("encode"));
        assert_eq!(
            &out[..],
            b"1\0\0\0\x042\0\0\0\x04n\0\0\0\x04C\0\0\0\x0dROLLBACK\0Z\0\0\0\x05I".as_slice()
        );
    }
}
