//! The client's view after its backend was lost inside a transaction (DESIGN §3): the
//! transaction is gone, so the client is shown what PostgreSQL shows for a failed one until it
//! ends it, and no backend is needed meanwhile.
//!
//! - In a transaction block: every request gets an error and ReadyForQuery `E` until the client
//!   sends ROLLBACK (or COMMIT, which PostgreSQL also answers with ROLLBACK in a failed block).
//! - In the implicit transaction an extended-protocol batch opened behind a Flush: the first
//!   message gets the error, everything up to the client's Sync is skipped, and the Sync gets
//!   ReadyForQuery `I` (a simple query there would have committed it, so it fails the same way).
//! - Skipping: the client was already shown an error in an extended batch; everything up to
//!   its Sync is ignored, as the server would, and the Sync gets ReadyForQuery `I`.

use bytes::BytesMut;
use suture_protocol::pg::{self, TxStatus};
use suture_protocol::ProtocolError;

use crate::heal::After;
use crate::postgres::book::PgBook;
use crate::postgres::statement::Statement;
use crate::postgres::wire::{self, WireError};
use crate::session::hooks::{AbortedEnd, LostIo};
use crate::session::ledger::TxEnd;

/// SQLSTATE in_failed_sql_transaction.
const IN_FAILED_TRANSACTION: &str = "25P02";
/// SQLSTATE connection_failure.
const CONNECTION_FAILURE: &str = "08006";
/// What the first request after the loss is told.
pub(crate) const LOST_MESSAGE: &str =
    "connection to the database server was lost inside a transaction; the transaction was rolled back";

/// Serves the client from `mode` until its transaction is over. Reads whole messages from
/// `cbuf` (and the client); what it leaves in `cbuf` comes after the end of the transaction.
pub(crate) async fn serve(io: LostIo<'_, PgBook>, mode: After) -> AbortedEnd {
    let LostIo {
        client_read: client,
        cbuf,
        client_write: writer,
        shared,
        max_message_size,
        write_limit,
    } = io;
    let mut view = View::new(mode);
    loop {
        if view.is_over() {
            return AbortedEnd::TransactionEnded;
        }
        let message = match wire::read_message(client, cbuf, max_message_size).await {
            Ok(message) => message,
            Err(WireError::Protocol(err)) => return AbortedEnd::ClientProtocol(err),
            Err(err) => return AbortedEnd::ClientGone(err),
        };
        if message.tag == b'X' {
            return AbortedEnd::ClientGone(WireError::Closed);
        }
        if message.tag == b'C' {
            // Closing a statement works in an aborted transaction; the session's restorable
            // state must forget it too.
            if let Ok(Some(name)) = pg::parse_close_statement(&message.body) {
                shared
                    .lock()
                    .forget_statement(&String::from_utf8_lossy(name));
            }
        }
        let mut out = BytesMut::new();
        if let Err(err) = view.answer(&message, &mut out) {
            return AbortedEnd::ClientProtocol(err);
        }
        if !out.is_empty() {
            if let Err(err) = wire::write_all(writer, &out, write_limit).await {
                return AbortedEnd::ClientGone(err);
            }
        }
    }
}

/// The state of the client's view, message by message (pure: tested without I/O).
pub(crate) struct View {
    mode: After,
    batch: Batch,
}

impl View {
    pub(crate) fn new(mode: After) -> View {
        View {
            mode,
            batch: Batch::default(),
        }
    }

    /// The transaction is over: the client is outside one again.
    pub(crate) fn is_over(&self) -> bool {
        self.mode == After::Outside
    }

    /// Writes what the client is answered for `message` into `out`.
    pub(crate) fn answer(
        &mut self,
        message: &pg::Message,
        out: &mut BytesMut,
    ) -> Result<(), ProtocolError> {
        match self.mode {
            After::Outside => Ok(()),
            After::Skipping => {
                if message.tag == b'S' {
                    pg::encode_ready_for_query(TxStatus::Idle, out);
                    self.mode = After::Outside;
                }
                Ok(())
            }
            After::Implicit { announced } => {
                if !announced {
                    error_only(out, &mut true)?;
                    self.mode = After::Implicit { announced: true };
                }
                // A Sync ends the implicit transaction; so does a simple query, which would
                // have committed it.
                if matches!(message.tag, b'S' | b'Q' | b'F') {
                    pg::encode_ready_for_query(TxStatus::Idle, out);
                    self.mode = After::Outside;
                }
                Ok(())
            }
            After::Block { announced } => {
                let mut announce = !announced;
                let ended = self.in_block(message, out, &mut announce)?;
                self.mode = if ended {
                    After::Outside
                } else {
                    After::Block {
                        announced: !announce,
                    }
                };
                Ok(())
            }
        }
    }

    /// One message inside the failed transaction block; returns whether it ended the block.
    fn in_block(
        &mut self,
        message: &pg::Message,
        out: &mut BytesMut,
        announce: &mut bool,
    ) -> Result<bool, ProtocolError> {
        let batch = &mut self.batch;
        match message.tag {
            b'Q' => {
                let ends = pg::parse_query_raw(&message.body).ok().and_then(|sql| {
                    Statement::new(&String::from_utf8_lossy(sql)).ends_transaction()
                });
                reply(out, ends, &[], announce)
            }
            b'P' => {
                if let Ok((_, sql)) = pg::parse_parse_message_raw(&message.body) {
                    let sql = String::from_utf8_lossy(sql);
                    batch.ends = batch.ends.or(Statement::new(&sql).ends_transaction());
                }
                batch.push(message);
                Ok(false)
            }
            b'B' | b'D' | b'E' | b'C' => {
                batch.push(message);
                Ok(false)
            }
            b'S' if batch.only_closes() => {
                // PostgreSQL answers Close even in an aborted transaction.
                for _ in &batch.replies {
                    pg::encode_empty_reply(b'3', out)?;
                }
                *batch = Batch::default();
                pg::encode_ready_for_query(TxStatus::Failed, out);
                Ok(false)
            }
            b'S' if batch.errored => {
                *batch = Batch::default();
                pg::encode_ready_for_query(TxStatus::Failed, out);
                Ok(false)
            }
            b'S' => {
                let batch = std::mem::take(batch);
                reply(out, batch.ends, &batch.replies, announce)
            }
            // A Flush of a batch that does not end the transaction: PostgreSQL would already
            // have sent the error; send it now and only ReadyForQuery at the Sync.
            b'H' if batch.ends.is_none() && !batch.replies.is_empty() && !batch.errored => {
                batch.errored = true;
                error_only(out, announce).map(|()| false)
            }
            b'F' => reply(out, None, &[], announce),
            // Flush, and COPY messages of a copy the backend never started: nothing to answer.
            _ => Ok(false),
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

/// What a request made of `request` (whole messages) is answered with when it ends the lost
/// transaction with ROLLBACK: every part succeeds, the statement reports ROLLBACK, and
/// ReadyForQuery is idle. The first `answered` parts were answered by the lost backend and
/// are left out.
pub(crate) fn rolled_back(
    request: &[u8],
    answered: u32,
    out: &mut BytesMut,
) -> Result<(), ProtocolError> {
    let mut buf = BytesMut::from(request);
    let mut batch = Batch::default();
    while let Some(message) = pg::split_message(&mut buf, usize::MAX)? {
        if !matches!(message.tag, b'S' | b'H' | b'Q') {
            batch.push(&message);
        }
    }
    let answered = usize::try_from(answered).unwrap_or(usize::MAX);
    match batch.replies.get(answered..) {
        // A simple query, or parts still to answer.
        Some(rest) if batch.replies.is_empty() || !rest.is_empty() => {
            reply(out, Some(TxEnd::Rollback), rest, &mut false).map(|_| ())
        }
        // Every part was answered: only the ready marker is left.
        _ => {
            pg::encode_ready_for_query(TxStatus::Idle, out);
            Ok(())
        }
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
        (CONNECTION_FAILURE, LOST_MESSAGE)
    } else {
        (
            IN_FAILED_TRANSACTION,
            "current transaction is aborted, commands ignored until end of transaction block",
        )
    };
    pg::encode_error_response("ERROR", code, message, None, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(tag: u8, body: &[u8]) -> pg::Message {
        pg::Message {
            tag,
            body: Bytes::copy_from_slice(body),
        }
    }

    fn answer(view: &mut View, tag: u8, body: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        view.answer(&msg(tag, body), &mut out).expect("encodes");
        out
    }

    #[test]
    fn commit_as_first_request_after_the_loss_fails_and_ends_the_transaction() {
        let mut view = View::new(After::Block { announced: false });
        let out = answer(&mut view, b'Q', b"COMMIT\0");
        assert!(
            out.windows(5).any(|w| w == b"08006"),
            "COMMIT must not look successful"
        );
        assert!(!out.windows(8).any(|w| w == b"ROLLBACK"));
        assert_eq!(out.last(), Some(&b'I'));
        assert!(view.is_over());
        // Once told, a COMMIT ends the aborted transaction the way PostgreSQL does.
        let mut view = View::new(After::Block { announced: true });
        let out = answer(&mut view, b'Q', b"COMMIT\0");
        assert!(out.windows(8).any(|w| w == b"ROLLBACK"));
    }

    #[test]
    fn first_request_hears_of_the_loss_then_25p02_until_rollback() {
        let mut view = View::new(After::Block { announced: false });
        let out = answer(&mut view, b'Q', b"SELECT 1\0");
        assert!(out.windows(5).any(|w| w == b"08006"));
        let out = answer(&mut view, b'Q', b"SELECT 1\0");
        assert!(out.windows(5).any(|w| w == b"25P02"));
        assert_eq!(out.last(), Some(&b'E'));
        assert!(answer(&mut view, b'P', b"\0ROLLBACK\0\0\0").is_empty());
        assert!(answer(&mut view, b'B', b"\0\0\0\0\0\0\0\0").is_empty());
        assert!(answer(&mut view, b'D', b"P\0").is_empty());
        assert!(answer(&mut view, b'E', b"\0\0\0\0\0").is_empty());
        let out = answer(&mut view, b'S', b"");
        assert_eq!(
            &out[..],
            b"1\0\0\0\x042\0\0\0\x04n\0\0\0\x04C\0\0\0\x0dROLLBACK\0Z\0\0\0\x05I".as_slice()
        );
        assert!(view.is_over());
    }

    #[test]
    fn a_lost_implicit_transaction_fails_once_and_ends_at_the_sync() {
        let mut view = View::new(After::Implicit { announced: false });
        let out = answer(&mut view, b'B', b"\0\0\0\0\0\0\0\0");
        assert!(out.windows(5).any(|w| w == b"08006"));
        assert!(answer(&mut view, b'E', b"\0\0\0\0\0").is_empty());
        assert!(!view.is_over());
        let out = answer(&mut view, b'S', b"");
        assert_eq!(&out[..], b"Z\0\0\0\x05I");
        assert!(view.is_over());
        // A Sync straight away gets both.
        let mut view = View::new(After::Implicit { announced: false });
        let out = answer(&mut view, b'S', b"");
        assert!(out.windows(5).any(|w| w == b"08006"));
        assert_eq!(out.last(), Some(&b'I'));
    }

    #[test]
    fn skipping_ignores_everything_up_to_the_sync() {
        let mut view = View::new(After::Skipping);
        assert!(answer(&mut view, b'E', b"\0\0\0\0\0").is_empty());
        assert!(answer(&mut view, b'Q', b"SELECT 1\0").is_empty());
        assert_eq!(&answer(&mut view, b'S', b"")[..], b"Z\0\0\0\x05I");
        assert!(view.is_over());
    }

    #[test]
    fn a_rollback_batch_is_answered_part_by_part() {
        let mut request = BytesMut::new();
        for (tag, body) in [
            (b'P', &b"\0ROLLBACK\0\0\0"[..]),
            (b'B', b"\0\0\0\0\0\0\0\0"),
            (b'E', b"\0\0\0\0\0"),
            (b'S', b""),
        ] {
            request.extend_from_slice(&[tag]);
            request.extend_from_slice(&u32::try_from(body.len() + 4).unwrap_or(0).to_be_bytes());
            request.extend_from_slice(body);
        }
        let mut out = BytesMut::new();
        rolled_back(&request, 0, &mut out).expect("encodes");
        assert_eq!(
            &out[..],
            b"1\0\0\0\x042\0\0\0\x04C\0\0\0\x0dROLLBACK\0Z\0\0\0\x05I".as_slice()
        );
        // What the lost backend answered is not answered again.
        out.clear();
        rolled_back(&request, 2, &mut out).expect("encodes");
        assert_eq!(&out[..], b"C\0\0\0\x0dROLLBACK\0Z\0\0\0\x05I".as_slice());
        out.clear();
        rolled_back(&request, 3, &mut out).expect("encodes");
        assert_eq!(&out[..], b"Z\0\0\0\x05I".as_slice());
    }
}
