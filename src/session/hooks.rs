//! What a protocol plugs into the shared command phase ([`Hooks`]): its framers, how a new
//! backend is made ready for the session (settings, restored state) and how one is released,
//! and everything the client is told in the protocol's own words — each §3 refusal, the
//! answers to requests a lost backend had accepted, the view of a lost transaction.

use std::future::Future;
use std::time::Duration;

use bytes::BytesMut;
use suture_protocol::ProtocolError;

use crate::heal::{After, Answer, RefusalReason};
use crate::net::client_socket::{ClientRead, ClientWrite};
use crate::pool::{Checkout, Manager, PoolError};
use crate::session::core::Core;
use crate::session::framing::{BackendFramer, ClientFramer};
use crate::session::link::Link;
use crate::session::tracker::{Book, Shared, Tracker};
use crate::wire::WireError;

/// The backend connection type of a protocol.
pub(crate) type ConnOf<H> = <<H as Hooks>::Manager as Manager>::Conn;
/// Why opening one of its backend connections failed.
pub(crate) type ErrorOf<H> = <<H as Hooks>::Manager as Manager>::Error;
/// What its backend framer may update on the connection.
pub(crate) type ExtraOf<H> = <ConnOf<H> as Link>::Extra;

/// Why making a new backend ready for the session failed.
pub(crate) enum Prepare<N> {
    /// The new backend's connection failed (another one may do).
    Lost(String),
    /// The client's own settings were refused: the client is told this.
    Settings(N),
    /// The session state could not be rebuilt.
    Restore(String),
}

/// How serving a lost transaction ended.
#[derive(Debug)]
pub(crate) enum AbortedEnd {
    /// The client ended the transaction; it now expects a session outside a transaction.
    TransactionEnded,
    /// The client left (or its socket failed, or it said goodbye).
    ClientGone(WireError),
    /// The client sent bytes that are not valid protocol.
    ClientProtocol(ProtocolError),
}

/// The client side of a session while it is served without a backend.
pub(crate) struct LostIo<'a, B: Book> {
    pub(crate) client_read: &'a mut ClientRead,
    /// Client bytes read and not yet handled; what is left after the transaction ended is
    /// served by the next backend.
    pub(crate) cbuf: &'a mut BytesMut,
    pub(crate) client_write: &'a mut ClientWrite,
    pub(crate) shared: &'a Shared<B>,
    pub(crate) max_message_size: usize,
    pub(crate) write_limit: Duration,
}

/// What serving a local request may use: the request, the client's socket and the bytes it
/// sent after it, the session's backend (which it may replace) and its tracker.
pub(crate) struct LocalIo<'a, M: Manager, B: Book> {
    /// The whole request, header included; it never went to a backend nor into the ledger.
    pub(crate) request: &'a [u8],
    pub(crate) client_read: &'a mut ClientRead,
    pub(crate) client_write: &'a mut ClientWrite,
    /// Client bytes read and not yet handled.
    pub(crate) cbuf: &'a mut BytesMut,
    pub(crate) checkout: &'a mut Checkout<M>,
    pub(crate) shared: &'a Shared<B>,
}

/// How serving a local request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LocalEnd {
    /// Answered; `new_backend` when the session now has another backend.
    Served { new_backend: bool },
    /// The session is over (the protocol closes it, or the client left).
    End,
}

/// One protocol's part of a session, for the shared command phase.
pub(crate) trait Hooks: Send + Sync {
    /// The `protocol` metrics label.
    const PROTOCOL: &'static str;
    type Manager: Manager<Conn: Link>;
    type Book: Book;
    type Client: ClientFramer<Book = Self::Book>;
    type Backend: BackendFramer<Book = Self::Book, Extra = ExtraOf<Self>>;
    /// A message Suture itself sends the client (an error).
    type Notice: Send + Sync;

    /// What the pool's sessions share.
    fn core(&self) -> &Core<Self::Manager>;

    /// The framer of the client's stream.
    fn client_framer(&self) -> Self::Client;

    /// The connection `conn` now serves the session: the framer of its replies (and the
    /// client's cancels now go to it).
    fn adopt(&self, conn: &ConnOf<Self>) -> Self::Backend;

    /// Makes a new backend ready for the session: the client's own settings, then the
    /// restorable state in `shared`'s book.
    fn prepare<'a>(
        &'a self,
        conn: &'a mut ConnOf<Self>,
        shared: &'a Shared<Self::Book>,
    ) -> impl Future<Output = Result<(), Prepare<Self::Notice>>> + Send + 'a;

    /// The session is over: the backend goes back to the pool if it is at rest (reset when
    /// the client changed its state), or is closed.
    fn release<'a>(
        &'a self,
        checkout: Checkout<Self::Manager>,
        tracker: &'a Tracker<Self::Book>,
    ) -> impl Future<Output = ()> + Send + 'a;

    /// The fatal error that ends a session for `reason` (§3 table).
    fn refusal_notice(&self, reason: RefusalReason) -> Self::Notice;

    /// What the client is told when the pool gives it no backend (naming the pool, never the
    /// server).
    fn pool_notice(&self, err: PoolError<ErrorOf<Self>>) -> Self::Notice;

    /// The client broke the protocol; it is closed after this.
    fn violation_notice(&self, err: &ProtocolError) -> Self::Notice;

    /// A message of `bytes` would pass the memory budget of all sessions.
    fn over_budget_notice(&self, bytes: usize) -> Self::Notice;

    /// Suture is shutting down and closes an idle client.
    fn shutdown_notice(&self) -> Self::Notice;

    /// Serves a request the client framer said Suture answers itself
    /// ([`Walked::Local`](crate::session::framing::Walked::Local), MySQL's COM_CHANGE_USER).
    fn serve_local<'a>(
        &'a self,
        io: LocalIo<'a, Self::Manager, Self::Book>,
    ) -> impl Future<Output = LocalEnd> + Send + 'a;

    /// Appends `notice` as the protocol frames it now: the book knows, for MySQL, which
    /// sequence id a reply in progress has reached, and `request_waiting` says the client sent
    /// a request no backend has seen (the notice answers it).
    fn encode_notice(
        &self,
        notice: &Self::Notice,
        book: &Self::Book,
        request_waiting: bool,
        out: &mut BytesMut,
    );

    /// Appends the answer to one request the lost backend had accepted: the `index`-th in
    /// flight, oldest first; `request` is its bytes when they were kept.
    fn encode_answer(
        &self,
        answer: Answer,
        index: usize,
        request: Option<&[u8]>,
        book: &Self::Book,
        out: &mut BytesMut,
    ) -> Result<(), ProtocolError>;

    /// Whether the client bytes at the front of a buffer say goodbye.
    fn is_quit(&self, bytes: &[u8]) -> bool;

    /// Serves the client from its lost transaction until it ends it (no backend needed).
    fn serve_lost_transaction<'a>(
        &'a self,
        io: LostIo<'a, Self::Book>,
        mode: After,
    ) -> impl Future<Output = AbortedEnd> + Send + 'a;
}
