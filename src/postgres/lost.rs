//! What a PostgreSQL client is told when its backend was lost and the loss cannot be hidden
//! (DESIGN §3 table): the SQLSTATE and message of each refusal, and the bytes that answer each
//! request the lost backend had accepted, as `heal::answers` decided.

use bytes::BytesMut;
use suture_protocol::pg;
use suture_protocol::ProtocolError;

use crate::heal::{Answer, RefusalReason, Told};
use crate::postgres::aborted::{self, LOST_MESSAGE};
use crate::postgres::errors::ClientNotice;
use crate::postgres::messages::tx_status;

/// SQLSTATE and message of a refusal.
pub(crate) fn refusal(reason: RefusalReason) -> (&'static str, &'static str) {
    match reason {
        RefusalReason::MaybeExecuted => (
            "40003",
            "connection to the database server was lost while the statement was running; it may or may not have been executed",
        ),
        RefusalReason::InTransaction => ("08006", LOST_MESSAGE),
        RefusalReason::CommitUnknown => (
            "08007",
            "connection to the database server was lost during COMMIT; the transaction outcome is unknown",
        ),
        RefusalReason::BudgetExhausted => (
            "08006",
            "connection to the database server was lost; the statement was not executed and was not retried because the replay budget is used up",
        ),
        RefusalReason::TaintedSession => (
            "08006",
            "connection to the database server was lost and the session state (temporary tables, locks, cursors, SQL-level prepared statements) could not be restored",
        ),
        RefusalReason::BackendUnavailable => (
            "57P03",
            "the connection to the database server was lost and no new one could be opened within the failover hold",
        ),
    }
}

/// The FATAL error that ends a session for `reason`.
pub(crate) fn fatal_notice(reason: RefusalReason) -> ClientNotice {
    let (code, message) = refusal(reason);
    ClientNotice {
        severity: "FATAL",
        code: code.to_owned(),
        message: message.to_owned(),
        detail: None,
    }
}

/// Appends the answer to one request the lost backend had accepted. `request` is its bytes, if
/// they were kept (needed only to answer a ROLLBACK batch part by part); without them a ROLLBACK
/// is answered as a simple query.
pub(crate) fn encode_answer(
    answer: Answer,
    request: Option<&[u8]>,
    out: &mut BytesMut,
) -> Result<(), ProtocolError> {
    match answer {
        Answer::Nothing => {}
        Answer::ReadyOnly(tx) => pg::encode_ready_for_query(tx_status(tx), out),
        Answer::Rest { closes, ready } => {
            for _ in 0..closes {
                pg::encode_empty_reply(b'3', out)?;
            }
            pg::encode_ready_for_query(tx_status(ready), out);
        }
        Answer::Error(told, ready) => {
            let (code, message) = match told {
                Told::Refusal(reason) => refusal(reason),
                Told::Aborted => (
                    "25P02",
                    "current transaction is aborted, commands ignored until end of transaction block",
                ),
            };
            pg::encode_error_response("ERROR", code, message, None, out)?;
            if let Some(tx) = ready {
                pg::encode_ready_for_query(tx_status(tx), out);
            }
        }
        Answer::RolledBack { answered } => match request {
            Some(bytes) => aborted::rolled_back(bytes, answered, out)?,
            None => {
                pg::encode_command_complete("ROLLBACK", out)?;
                pg::encode_ready_for_query(pg::TxStatus::Idle, out);
            }
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::ledger::TxState;

    #[test]
    fn each_answer_has_its_shape() {
        let mut out = BytesMut::new();
        encode_answer(
            Answer::Error(
                Told::Refusal(RefusalReason::MaybeExecuted),
                Some(TxState::Idle),
            ),
            None,
            &mut out,
        )
        .expect("encodes");
        assert_eq!(out[0], b'E');
        assert!(out.windows(5).any(|w| w == b"40003"));
        assert_eq!(&out[out.len() - 6..], b"Z\0\0\0\x05I");
        out.clear();
        encode_answer(Answer::Error(Told::Aborted, None), None, &mut out).expect("encodes");
        assert!(out.windows(5).any(|w| w == b"25P02"));
        assert_ne!(out[out.len() - 6], b'Z');
        out.clear();
        encode_answer(Answer::Nothing, None, &mut out).expect("encodes");
        assert!(out.is_empty());
        encode_answer(Answer::RolledBack { answered: 0 }, None, &mut out).expect("encodes");
        assert_eq!(out[0], b'C');
        out.clear();
        let rest = Answer::Rest {
            closes: 2,
            ready: TxState::InBlock,
        };
        encode_answer(rest, None, &mut out).expect("encodes");
        assert_eq!(&out[..], b"3\0\0\0\x043\0\0\0\x04Z\0\0\0\x05T");
    }
}
