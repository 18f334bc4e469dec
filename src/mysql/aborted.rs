//! The client's view after its backend was lost inside a transaction (DESIGN §3): the
//! transaction is gone, so until the client ends it every statement gets error 2013 saying so,
//! and no backend is needed meanwhile. ROLLBACK (or COM_RESET_CONNECTION) gets OK and ends it;
//! COMMIT, and every statement that would have committed it (BEGIN, DDL, `SET autocommit=1`),
//! gets the error and ends it too; COM_PING gets OK, COM_STMT_CLOSE and long data nothing;
//! COM_QUIT ends the session.

use bytes::BytesMut;
use suture_protocol::mysql::{self, command, split_logical_packet};
use suture_protocol::ProtocolError;

use crate::heal::After;
use crate::mysql::book::{MyBook, Note};
use crate::mysql::errors::MyNotice;
use crate::mysql::lost::{encode_done, LOST_IN_TRANSACTION, TRANSACTION_GONE};
use crate::mysql::statement;
use crate::session::hooks::{AbortedEnd, LostIo};
use crate::session::ledger::{Traits, TxEnd, TxState};
use crate::session::tracker::Book as _;
use crate::wire::{self, WireError};

/// Serves the client from `mode` until its transaction is over; `client_caps` are the
/// capabilities it logged in with.
pub(crate) async fn serve(io: LostIo<'_, MyBook>, mode: After, client_caps: u64) -> AbortedEnd {
    let LostIo {
        client_read,
        cbuf,
        client_write,
        shared,
        max_message_size,
        write_limit,
    } = io;
    let After::Block { mut announced } = mode else {
        return AbortedEnd::TransactionEnded;
    };
    loop {
        let packet = loop {
            match split_logical_packet(cbuf, max_message_size) {
                Ok(Some(packet)) => break packet,
                Ok(None) => {}
                Err(err) => return AbortedEnd::ClientProtocol(err),
            }
            if let Err(err) = wire::fill(client_read, cbuf).await {
                return AbortedEnd::ClientGone(err);
            }
        };
        if packet.seq != 0 {
            return AbortedEnd::ClientProtocol(ProtocolError::Malformed(
                "a command must start with sequence id 0",
            ));
        }
        let traits = {
            let mut tracker = shared.lock();
            let book = &mut tracker.book;
            match answer_kind(&packet.payload, book) {
                Kind::Quit => return AbortedEnd::ClientGone(WireError::Closed),
                Kind::Silent(note) => {
                    // Forgotten by the server as well, transaction or not.
                    let _ = book.completed(note, false, TxState::InBlock);
                    continue;
                }
                Kind::Statement(traits) => traits,
            }
        };
        let seq = packet.last_seq.wrapping_add(1);
        let mut out = BytesMut::new();
        let ended = match traits.ends_tx {
            Some(TxEnd::Rollback) => {
                encode_done(client_caps, seq, &mut out);
                true
            }
            Some(TxEnd::Commit) => {
                gone(announced).encode(seq, &mut out);
                true
            }
            None if packet.payload.first() == Some(&command::COM_PING) => {
                encode_done(client_caps, seq, &mut out);
                false
            }
            None => {
                gone(announced).encode(seq, &mut out);
                false
            }
        };
        announced = true;
        if let Err(err) = wire::write_all(client_write, &out, write_limit).await {
            return AbortedEnd::ClientGone(err);
        }
        if ended {
            return AbortedEnd::TransactionEnded;
        }
    }
}

/// The error for a statement of the lost transaction: the first one learns it was rolled back,
/// later ones how to go on.
fn gone(announced: bool) -> MyNotice {
    let message = if announced {
        TRANSACTION_GONE
    } else {
        LOST_IN_TRANSACTION
    };
    MyNotice::new(mysql::error_code::CR_SERVER_LOST, "HY000", message)
}

/// How a command is served inside the lost transaction.
enum Kind {
    Quit,
    /// No reply; its effect on the session's bookkeeping.
    Silent(Note),
    /// A reply: the command ends the transaction as `ends_tx` says.
    Statement(Traits),
}

fn answer_kind(payload: &[u8], book: &MyBook) -> Kind {
    let Some(&byte) = payload.first() else {
        return Kind::Statement(Traits::default());
    };
    let statement_id = mysql::statement_id(payload).ok();
    match byte {
        command::COM_QUIT => Kind::Quit,
        command::COM_STMT_CLOSE => {
            Kind::Silent(statement_id.map_or(Note::None, Note::CloseStatement))
        }
        command::COM_STMT_SEND_LONG_DATA => Kind::Silent(Note::None),
        command::COM_RESET_CONNECTION => Kind::Statement(Traits {
            ends_tx: Some(TxEnd::Rollback),
            ..Traits::default()
        }),
        command::COM_QUERY => {
            let facts = statement::classify(&payload[1..], book.sql_mode(), true);
            Kind::Statement(statement::combine(&facts).traits())
        }
        command::COM_STMT_EXECUTE => {
            Kind::Statement(statement_id.map_or(Traits::default(), |id| book.execute_traits(id)))
        }
        _ => Kind::Statement(Traits::default()),
    }
}
