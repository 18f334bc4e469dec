//! What the shared relay asks of a protocol about the bytes it moves: walk the client's stream
//! and register each request in the ledger ([`ClientFramer`]), and walk the backend's stream and
//! register each reply ([`BackendFramer`]). The relay itself only moves bytes, keeps buffers and
//! deadlines, and never reads a message.

use bytes::BytesMut;
use suture_protocol::ProtocolError;

use crate::session::tracker::{Book, Shared};

/// How walking the client's bytes ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Walked {
    /// Everything complete was walked; more bytes are needed.
    NeedMore,
    /// The client said goodbye with the message at this position; what comes before it is
    /// to be sent, nothing after it.
    Quit { at: usize },
    /// The request at `start..end` is answered by Suture itself, not by the backend (a command
    /// the protocol handles in the session, such as MySQL's COM_CHANGE_USER); what comes before
    /// it is to be sent first.
    Local { start: usize, end: usize },
}

/// Frames the client's stream, which outlives backends.
pub(crate) trait ClientFramer: Send {
    /// The tracker's book the framer records into.
    type Book: Book;

    /// Walks the complete messages in `cbuf[*scanned..]` (and the pieces of a large message
    /// streamed through), registering each in the ledger, advancing `scanned` past what was
    /// walked and `sendable` to the end of what may be sent to the backend now (a whole
    /// extended-protocol batch, a command). Bytes may be rewritten in place (statement ids).
    fn walk(
        &mut self,
        cbuf: &mut BytesMut,
        scanned: &mut usize,
        sendable: &mut usize,
        shared: &Shared<Self::Book>,
    ) -> Result<Walked, ProtocolError>;

    /// Whether a message is partly walked (its start went on, its end has not arrived).
    fn in_message(&self) -> bool;

    /// Bytes of the message in progress not yet seen.
    fn remaining(&self) -> usize;

    /// The whole length of the message whose header starts `buf`, when the header is there
    /// (the memory budget covers it before it arrives).
    fn arriving(&self, buf: &[u8]) -> Option<usize>;

    /// Frames afresh from a message boundary (after a loss).
    fn restart(&mut self);
}

/// What walking the backend's bytes found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scanned {
    /// `rbuf[..n]` is to be forwarded.
    Forward(usize),
    /// `rbuf[..n]` is to be forwarded, then an error that proves nothing in flight ran, which
    /// must not be (it is recorded in the tracker as unsolicited).
    Unsolicited(usize),
}

/// Frames one backend connection's stream of replies.
pub(crate) trait BackendFramer: Send {
    /// The tracker's book the framer records into.
    type Book: Book;
    /// What the framer may update on the connection itself (PostgreSQL: the parameters it
    /// reports).
    type Extra;

    /// Walks the complete messages at the front of `rbuf`, registering each in the ledger;
    /// may rewrite bytes in place (process IDs in notifications, statement ids).
    fn scan(
        &mut self,
        rbuf: &mut BytesMut,
        shared: &Shared<Self::Book>,
        conn: &mut Self::Extra,
    ) -> Result<Scanned, ProtocolError>;

    /// Whether the client would be inside a message once what was forwarded is written.
    fn in_message(&self) -> bool;
}
