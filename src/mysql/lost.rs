//! What a MySQL client is told when its backend was lost and the loss cannot be hidden (DESIGN
//! §3 table), in the words MySQL clients know: error 2013 "Lost connection to MySQL server ..."
//! with what happened to the statement or the transaction, 2003 when no server could be had
//! within the failover hold; and the packets that answer each request the lost backend had
//! accepted, at the sequence id its reply had reached.

use bytes::BytesMut;
use suture_protocol::mysql::{encode_ok, error_code, status, OkPacket, OK_HEADER};

use crate::heal::{Answer, RefusalReason, Told};
use crate::mysql::errors::MyNotice;

/// SQLSTATE of every loss: MySQL reports lost connections as HY000.
const LOST_STATE: &str = "HY000";

/// What the first request after a loss inside a transaction is told.
pub(crate) const LOST_IN_TRANSACTION: &str =
    "Lost connection to MySQL server inside a transaction; the transaction was rolled back";
/// What every later request of that transaction is told until the client ends it.
pub(crate) const TRANSACTION_GONE: &str =
    "Lost connection to MySQL server inside a transaction; the transaction was rolled back: send ROLLBACK to continue";

/// The error of a refusal.
pub(crate) fn refusal(reason: RefusalReason) -> MyNotice {
    let lost = |message: &str| MyNotice::new(error_code::CR_SERVER_LOST, LOST_STATE, message);
    match reason {
        RefusalReason::MaybeExecuted => {
            lost("Lost connection to MySQL server during query; it may have executed")
        }
        RefusalReason::InTransaction => lost(LOST_IN_TRANSACTION),
        RefusalReason::CommitUnknown => {
            lost("Lost connection to MySQL server during COMMIT; the commit outcome is unknown")
        }
        RefusalReason::BudgetExhausted => lost(
            "Lost connection to MySQL server; the statement did not run and was not retried because the replay budget is used up",
        ),
        RefusalReason::TaintedSession => lost(
            "Lost connection to MySQL server; the session's state (user variables, temporary tables, locks, cursors or SQL-level prepared statements) could not be restored",
        ),
        RefusalReason::BackendUnavailable => MyNotice::new(
            error_code::CR_CONN_HOST_ERROR,
            LOST_STATE,
            "Lost connection to MySQL server and no new one could be opened within the failover hold",
        ),
    }
}

/// Appends the OK of a statement Suture answers itself (a ROLLBACK of a lost transaction, a
/// COM_PING) at sequence id `seq`.
pub(crate) fn encode_done(client_caps: u64, seq: u8, out: &mut BytesMut) {
    let ok = OkPacket {
        header: OK_HEADER,
        status: status::SERVER_STATUS_AUTOCOMMIT,
        ..OkPacket::default()
    };
    // A plain OK without session state: nothing to refuse.
    let _ = encode_ok(&ok, client_caps, seq, out);
}

/// Appends the answer to one request the lost backend had accepted; `seq` is where its reply
/// had got to, `None` for a request that gets no reply.
pub(crate) fn encode_answer(answer: Answer, seq: Option<u8>, client_caps: u64, out: &mut BytesMut) {
    let Some(seq) = seq else {
        return;
    };
    match answer {
        // A MySQL request is never a Sync batch, so never owes only a ready marker.
        Answer::Nothing | Answer::ReadyOnly(_) | Answer::Rest { .. } => {}
        Answer::Error(Told::Refusal(reason), _) => refusal(reason).encode(seq, out),
        Answer::Error(Told::Aborted, _) => {
            MyNotice::new(error_code::CR_SERVER_LOST, LOST_STATE, TRANSACTION_GONE).encode(seq, out)
        }
        Answer::RolledBack { .. } => encode_done(client_caps, seq, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use suture_protocol::mysql::{capability, parse_err, parse_ok, split_packet};

    const CAPS: u64 = capability::CLIENT_PROTOCOL_41 | capability::CLIENT_TRANSACTIONS;

    #[test]
    fn a_statement_that_may_have_run_gets_2013_at_its_sequence_id() {
        let mut out = BytesMut::new();
        let answer = Answer::Error(Told::Refusal(RefusalReason::MaybeExecuted), None);
        encode_answer(answer, Some(3), CAPS, &mut out);
        let packet = split_packet(&mut out, 1 << 20)
            .expect("valid")
            .expect("whole");
        assert_eq!(packet.seq, 3);
        let err = parse_err(&packet.payload, CAPS).expect("an ERR");
        assert_eq!(err.code, 2013);
        assert_eq!(err.sql_state, Some(*b"HY000"));
        assert!(String::from_utf8_lossy(err.message).contains("may have executed"));
    }

    #[test]
    fn a_rollback_of_the_lost_transaction_is_ok_and_requests_without_reply_get_nothing() {
        let mut out = BytesMut::new();
        encode_answer(Answer::RolledBack { answered: 0 }, None, CAPS, &mut out);
        assert!(out.is_empty());
        encode_answer(Answer::RolledBack { answered: 0 }, Some(1), CAPS, &mut out);
        let packet = split_packet(&mut out, 1 << 20)
            .expect("valid")
            .expect("whole");
        let ok = parse_ok(&packet.payload, CAPS).expect("an OK");
        assert_eq!(ok.status & status::SERVER_STATUS_IN_TRANS, 0);
    }

    #[test]
    fn no_backend_within_the_hold_is_2003() {
        assert_eq!(refusal(RefusalReason::BackendUnavailable).code, 2003);
        assert_eq!(refusal(RefusalReason::CommitUnknown).code, 2013);
    }
}
