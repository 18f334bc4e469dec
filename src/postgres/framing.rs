//! The PostgreSQL framers the shared relay drives: the client's stream walked with the protocol
//! crate's `Scanner` (large Query, Parse, Bind and COPY data stream through in pieces), each
//! message recorded by `messages`; and the backend's replies walked the same way, with
//! ParameterStatus kept on the connection, notifications rewritten to carry the process ID the
//! client was given, and FATAL errors that prove nothing ran kept from the client.

use std::collections::BTreeMap;

use bytes::BytesMut;
use suture_protocol::pg::{self, Scanner, Step, HEADER_LEN};
use suture_protocol::ProtocolError;

use crate::postgres::book::{PgBook, Shared};
use crate::postgres::messages::{
    classify_backend, note_client_message, note_streamed_piece, BackendMessage, StreamedRequest,
};
use crate::session::framing::{BackendFramer, ClientFramer, Scanned, Walked};
use crate::session::ledger::Reply;
use crate::session::tracker::Unsolicited;

/// The client's stream.
pub(crate) struct PgClientFramer {
    scanner: Scanner,
    max_message_size: usize,
    /// The request being streamed in pieces, if one is.
    streamed: Option<StreamedRequest>,
}

impl PgClientFramer {
    pub(crate) fn new(max_message_size: usize) -> PgClientFramer {
        PgClientFramer {
            scanner: Scanner::for_client(max_message_size).streaming_requests(),
            max_message_size,
            streamed: None,
        }
    }
}

impl ClientFramer for PgClientFramer {
    type Book = PgBook;

    fn walk(
        &mut self,
        cbuf: &mut BytesMut,
        scanned: &mut usize,
        sendable: &mut usize,
        shared: &Shared,
    ) -> Result<Walked, ProtocolError> {
        loop {
            match self.scanner.next(cbuf, *scanned)? {
                Step::Message { tag, start, end } => {
                    if tag == b'X' {
                        return Ok(Walked::Quit { at: start });
                    }
                    if note_client_message(tag, &cbuf[start..end], &mut shared.lock()) {
                        *sendable = end;
                    }
                    *scanned = end;
                }
                Step::Passthrough { tag, start, end } => {
                    let piece = &cbuf[start..end];
                    let mut tracker = shared.lock();
                    if tag == b'd' {
                        tracker.ledger.continuation(piece);
                    } else {
                        let last = !self.scanner.in_message();
                        note_streamed_piece(tag, piece, last, &mut self.streamed, &mut tracker);
                    }
                    *scanned = end;
                    *sendable = end;
                }
                Step::NeedMore => return Ok(Walked::NeedMore),
            }
        }
    }

    fn in_message(&self) -> bool {
        self.scanner.in_message()
    }

    fn remaining(&self) -> usize {
        self.scanner.remaining()
    }

    fn arriving(&self, buf: &[u8]) -> Option<usize> {
        pg::parse_header(buf, usize::MAX)
            .ok()
            .flatten()
            .map(|h| h.len)
    }

    fn restart(&mut self) {
        *self = PgClientFramer::new(self.max_message_size);
    }
}

/// One backend connection's replies.
pub(crate) struct PgBackendFramer {
    scanner: Scanner,
    /// The process ID the client was given; notifications from the client's own backend are
    /// rewritten to carry it.
    client_process_id: i32,
    backend_process_id: i32,
}

impl PgBackendFramer {
    pub(crate) fn new(
        max_message_size: usize,
        client_process_id: i32,
        backend_process_id: i32,
    ) -> PgBackendFramer {
        PgBackendFramer {
            scanner: Scanner::new(max_message_size),
            client_process_id,
            backend_process_id,
        }
    }

    /// A notification from the client's own (current) backend carries the process ID the
    /// client was told at login.
    fn rewrite_notification_pid(&self, message: &mut [u8]) {
        if self.client_process_id == self.backend_process_id {
            return;
        }
        let body = HEADER_LEN.min(message.len());
        if let Ok(pid) = pg::parse_notification_pid(&message[body..]) {
            if pid == self.backend_process_id {
                if let Some(field) = message.get_mut(body..body + 4) {
                    field.copy_from_slice(&self.client_process_id.to_be_bytes());
                }
            }
        }
    }
}

impl BackendFramer for PgBackendFramer {
    type Book = PgBook;
    type Extra = BTreeMap<String, String>;

    /// Walks the complete messages at the front of `rbuf` and records each in the ledger;
    /// ParameterStatus updates `params`.
    fn scan(
        &mut self,
        rbuf: &mut BytesMut,
        shared: &Shared,
        params: &mut BTreeMap<String, String>,
    ) -> Result<Scanned, ProtocolError> {
        let mut pos = 0;
        // Reply bytes that answered nothing on their own, not yet given to the ledger.
        let mut bytes = 0;
        loop {
            match self.scanner.next(rbuf, pos)? {
                Step::Message { tag, start, end } => {
                    let len = end - start;
                    let body = &rbuf[start + HEADER_LEN..end];
                    match classify_backend(tag, body) {
                        BackendMessage::Bytes => bytes += len,
                        BackendMessage::ParameterStatus => {
                            if let Ok((name, value)) = pg::parse_parameter_status(body) {
                                params.insert(name.to_owned(), value.to_owned());
                            }
                        }
                        BackendMessage::Notification => {
                            self.rewrite_notification_pid(&mut rbuf[start..end]);
                        }
                        BackendMessage::ParseComplete => {
                            let mut tracker = shared.lock();
                            tracker.parse_complete();
                            tracker.reply(Reply::Part { answers_part: true }, bytes + len);
                            bytes = 0;
                        }
                        BackendMessage::Completed(done) => {
                            let mut tracker = shared.lock();
                            tracker.ledger.statement_completed(done);
                            tracker.reply(Reply::Part { answers_part: true }, bytes + len);
                            bytes = 0;
                        }
                        BackendMessage::Reply(reply) => {
                            shared.lock().reply(reply, bytes + len);
                            bytes = 0;
                        }
                        BackendMessage::Error => {
                            let mut tracker = shared.lock();
                            if let Ok(fields) = pg::parse_error_fields(body) {
                                if fields.severity == "FATAL" || fields.severity == "PANIC" {
                                    if tracker.fatal_is_unsolicited(&fields.code) {
                                        let idle_timeout = fields.code
                                            == crate::postgres::book::IDLE_SESSION_TIMEOUT;
                                        tracker.unsolicited = Some(Unsolicited {
                                            code: fields.code,
                                            idle_timeout,
                                        });
                                        tracker.reply_bytes(bytes);
                                        return Ok(Scanned::Unsolicited(pos));
                                    }
                                    tracker.fatal_code = Some(fields.code);
                                }
                            }
                            tracker.reply(Reply::Error, bytes + len);
                            bytes = 0;
                        }
                    }
                    pos = end;
                }
                Step::Passthrough { start, end, .. } => {
                    bytes += end - start;
                    pos = end;
                }
                Step::NeedMore => break,
            }
        }
        shared.lock().reply_bytes(bytes);
        Ok(Scanned::Forward(pos))
    }

    fn in_message(&self) -> bool {
        self.scanner.in_message()
    }
}
