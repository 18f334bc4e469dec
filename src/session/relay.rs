//! The command phase: bytes relayed in both directions at once, message-aware but zero-copy,
//! for both protocols.
//!
//! Each direction reads into its own buffer, has the protocol's framer walk the complete
//! messages (huge rows and requests stream through in pieces) and record what DESIGN §3 needs
//! in the session's ledger, and writes every forwardable prefix.
//! Both directions run as two futures of one task, and either may be dropped when the other
//! ends, so everything they must not lose lives outside them: the buffers, the scanners (a
//! COPY or a large row continues across a heal), and the reply bytes already recorded but not
//! yet written to the client, which are written first on the next call. Writes to the client
//! are single `write` calls, each accounted as it completes, so a dropped write loses nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use suture_protocol::ProtocolError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::liveness::{Liveness, Probe};
use crate::session::budget::{BufferBudget, Reservation};
use crate::session::deadlines::{far_or, quiet_end, BackendWatch, Deadlines};
use crate::session::framing::{BackendFramer, ClientFramer, Scanned, Walked};
use crate::session::on_wake::OnWake;
use crate::session::tracker::{Book, Shared};
use crate::wire::WireError;

/// Held (unsent) extended-protocol bytes above this are sent without waiting for Sync.
const MAX_HELD_BATCH: usize = 1024 * 1024;
/// A backend quiet for less than this is written to without the pre-write check: a fault in
/// that window is caught by the backend direction's read like any other loss.
const PRE_WRITE_CHECK_AFTER: Duration = Duration::from_millis(100);
/// How often the pre-write check lets the backend direction read what is waiting.
const PRE_WRITE_YIELDS: usize = 4;
/// Reads from the client ask for this much room at first and when requests are small: an idle
/// session keeps its buffers, and at 1 KiB they stay within the 16 KiB an idle client may cost
/// (DESIGN §10); a buffer of 8 KiB costs a whole page of memory for the few bytes read into it.
const CLIENT_READ_MIN: usize = 1024;
/// ... and up to this much while large requests (COPY FROM, big parameters) stream in.
const CLIENT_READ_MAX: usize = 64 * 1024;
/// An empty client buffer larger than this is given back (after a large message).
const CLIENT_BUFFER_KEEP: usize = 64 * 1024;
/// Reads from the backend ask for this much room at first and when replies are small.
const BACKEND_READ_MIN: usize = 1024;
/// ... and up to this much while a large result streams (fewer, larger reads and writes).
const BACKEND_READ_MAX: usize = 256 * 1024;

/// Limits a relay runs under.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RelayLimits {
    pub(crate) max_message_size: usize,
    pub(crate) client_write: Duration,
    pub(crate) backend_write: Duration,
}

/// How a relay direction ended.
#[derive(Debug)]
pub(crate) enum RelayEnd {
    /// The client said goodbye (PostgreSQL Terminate, MySQL COM_QUIT).
    ClientTerminated,
    /// The client sent a request Suture answers itself (it is at the front of the client
    /// buffer, `len` bytes long); everything before it was sent.
    Local(usize),
    /// The client closed its socket (or it failed).
    ClientGone(WireError),
    /// The client sent bytes that are not valid protocol.
    ClientProtocol(ProtocolError),
    /// The client buffer would pass the budget of all sessions (`runtime.max_buffered_bytes`)
    /// while a message of this many bytes arrives whole.
    OverBudget(usize),
    /// The backend closed, failed or stopped reading.
    BackendGone(WireError),
    /// The backend reached its maximum lifetime and the session is at rest: swap it.
    Rotate,
    /// The session has been quiet for the health-check interval: check its backend.
    CheckBackend,
    /// Requests the server never makes wait (Close, Sync) got no answer for the health-check
    /// interval: the flow is dead or black-holed.
    Stalled,
}

/// Whether the client's byte stream is at a message boundary, so Suture may write a message of
/// its own into it.
#[derive(Default)]
pub(crate) struct ClientBoundary {
    mid_message: AtomicBool,
}

impl ClientBoundary {
    /// True when a message written now would be read as a whole message.
    pub(crate) fn at_boundary(&self) -> bool {
        !self.mid_message.load(Ordering::Acquire)
    }

    fn set(&self, mid_message: bool) {
        self.mid_message.store(mid_message, Ordering::Release);
    }
}

/// The client direction's state that outlives one relay call: the client's stream is framed
/// continuously, whichever backend serves it.
pub(crate) struct ClientStream<F> {
    /// The protocol's framing of the client's stream.
    pub(crate) framer: F,
    /// Bytes at the front of the client buffer already walked and registered in the ledger.
    pub(crate) scanned: usize,
    /// Bytes at the front of the client buffer that may be sent (a whole batch, a command),
    /// and how many of them the backend already accepted: a relay dropped in the middle of a
    /// write carries on from there when it is called again.
    sendable: usize,
    written: usize,
    /// The ledger offset of the first byte of the client buffer.
    pub(crate) base: u64,
    /// Bytes of the client's stream to drop before anything else: the rest of a message whose
    /// start went to a backend that was lost.
    pub(crate) discard: usize,
    /// This session's share of the memory budget for client buffers.
    reservation: Reservation,
    read_size: ReadSize,
}

impl<F> ClientStream<F> {
    pub(crate) fn new(framer: F, budget: Arc<BufferBudget>) -> ClientStream<F> {
        ClientStream {
            framer,
            scanned: 0,
            sendable: 0,
            written: 0,
            base: 0,
            discard: 0,
            reservation: Reservation::new(budget),
            read_size: ReadSize::new(CLIENT_READ_MIN, CLIENT_READ_MAX),
        }
    }

    /// Frames the client's stream afresh from a message boundary (after a loss).
    pub(crate) fn restart(&mut self)
    where
        F: ClientFramer,
    {
        self.framer.restart();
        self.scanned = 0;
        self.sendable = 0;
        self.written = 0;
        self.base = 0;
    }

    /// Makes sure the client buffer may hold what it holds and the whole of the message that
    /// is arriving (its length is in its header); false if that passes the budget.
    fn cover(&mut self, cbuf: &BytesMut) -> bool
    where
        F: ClientFramer,
    {
        let arriving = if self.framer.in_message() {
            0
        } else {
            self.framer
                .arriving(&cbuf[self.scanned..])
                .map_or(0, |len| self.scanned + len)
        };
        self.reservation.cover(cbuf.len().max(arriving))
    }

    /// An empty client buffer that grew for a large message is given back, with its share of
    /// the budget.
    fn shrink(&mut self, cbuf: &mut BytesMut) {
        if cbuf.is_empty() && cbuf.capacity() > CLIENT_BUFFER_KEEP {
            *cbuf = BytesMut::new();
            self.reservation.release();
        }
    }
}

/// The backend direction's state that outlives one relay call, for one backend connection.
pub(crate) struct BackendStream<F> {
    /// The protocol's framing of the backend's replies.
    pub(crate) framer: F,
    /// Bytes at the front of the backend's read buffer that were recorded as forwarded and
    /// must reach the client before anything else does.
    pub(crate) pending: usize,
    read_size: ReadSize,
}

impl<F> BackendStream<F> {
    pub(crate) fn new(framer: F) -> BackendStream<F> {
        BackendStream {
            framer,
            pending: 0,
            read_size: ReadSize::new(BACKEND_READ_MIN, BACKEND_READ_MAX),
        }
    }

    /// Whether the client is between messages once the pending bytes are written.
    pub(crate) fn ends_at_boundary(&self) -> bool
    where
        F: BackendFramer,
    {
        !self.framer.in_message()
    }
}

/// Client → backend. Returns when the client terminates, leaves or errs, or the backend fails.
pub(crate) async fn client_to_backend<C, W, F>(
    client: &mut C,
    cbuf: &mut BytesMut,
    stream: &mut ClientStream<F>,
    backend: &mut W,
    watch: BackendWatch<'_>,
    shared: &Shared<F::Book>,
    limits: RelayLimits,
) -> RelayEnd
where
    C: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    F: ClientFramer,
{
    let probe = watch.probe;
    // One timer, kept across requests, for both the rotation and the health check: re-arming
    // a timer per request would cost a timer-wheel insert and removal on every round trip.
    // The health check is pushed back lazily, when the timer fires, from the client's last read.
    let mut deadlines = Deadlines::new(&watch);
    let timer = std::pin::pin!(tokio::time::sleep_until(far_or(deadlines.next())));
    // Polled only when it fires, not each time a request arrives.
    let mut timer = OnWake::new(timer);
    let mut last_read = Instant::now();
    loop {
        if stream.discard > 0 && stream.scanned == 0 {
            let n = stream.discard.min(cbuf.len());
            cbuf.advance(n);
            stream.discard -= n;
        }
        let mut terminate_at = None;
        let mut local = None;
        if stream.discard == 0 {
            let walked =
                stream
                    .framer
                    .walk(cbuf, &mut stream.scanned, &mut stream.sendable, shared);
            match walked {
                Ok(Walked::NeedMore) => {}
                Ok(Walked::Quit { at }) => {
                    terminate_at = Some(at);
                    stream.sendable = stream.sendable.max(at);
                }
                Ok(Walked::Local { start, end }) => {
                    local = Some(end - start);
                    stream.sendable = start;
                }
                Err(err) => return RelayEnd::ClientProtocol(err),
            }
        }
        if stream.scanned > MAX_HELD_BATCH && local.is_none() {
            stream.sendable = stream.scanned;
        }
        if stream.sendable > 0 {
            let sent = send_requests(
                backend,
                &cbuf[..stream.sendable],
                &mut stream.written,
                probe,
                shared,
                limits.backend_write,
            );
            if let Err(err) = sent.await {
                return RelayEnd::BackendGone(err);
            }
            let sent = std::mem::take(&mut stream.sendable);
            stream.written = 0;
            cbuf.advance(sent);
            stream.base += sent as u64;
            stream.scanned -= sent;
        }
        if terminate_at.is_some() {
            return RelayEnd::ClientTerminated;
        }
        if let Some(len) = local {
            return RelayEnd::Local(len);
        }
        stream.shrink(cbuf);
        if !stream.cover(cbuf) {
            let arriving = cbuf.len() - stream.scanned;
            return RelayEnd::OverBudget(arriving);
        }
        cbuf.reserve(stream.read_size.size);
        let room = cbuf.capacity() - cbuf.len();
        // Reading is the one point where nothing of ours is half done: read_buf is cancel-safe
        // and nothing is held for the backend. Rotation and the health check happen only here.
        let read = if !deadlines.any() || stream.scanned != 0 {
            client.read_buf(cbuf).await
        } else {
            tokio::select! {
                biased;
                read = client.read_buf(cbuf) => read,
                () = &mut timer => {
                    let now = Instant::now();
                    let end = deadlines.fired(now, last_read, || {
                        if !cbuf.is_empty() || !watch.boundary.at_boundary() {
                            return None;
                        }
                        let tracker = shared.lock();
                        Some((tracker.at_rest(), quiet_end(&tracker)))
                    });
                    if let Some(end) = end {
                        return end;
                    }
                    timer.inner_mut().as_mut().reset(far_or(deadlines.next()));
                    continue;
                }
            }
        };
        if watch.check_after.is_some() {
            last_read = Instant::now();
        }
        match read {
            Ok(0) => return RelayEnd::ClientGone(WireError::Closed),
            Ok(n) => stream.read_size.record(n, room),
            Err(err) => return RelayEnd::ClientGone(WireError::Io(err)),
        }
    }
}

/// Sends `bytes[*written..]` to the backend, counting in `written` (and in the ledger) every
/// byte the kernel accepts, as it accepts it (§3 rule 2): a call dropped in the middle carries
/// on where it stopped. Before the first write after the backend was idle, a non-blocking peek
/// checks it is still there (DESIGN §5 pre-write check): a FIN or RST seen then means the
/// request was never sent.
async fn send_requests<W: AsyncWrite + Unpin, B: Book>(
    backend: &mut W,
    bytes: &[u8],
    written: &mut usize,
    probe: &Probe,
    shared: &Shared<B>,
    limit: Duration,
) -> Result<(), WireError> {
    if *written == 0 && shared.lock().wants_pre_write_check(PRE_WRITE_CHECK_AFTER) {
        // Bytes waiting on an idle backend are read by the other direction first: an
        // unsolicited FATAL (57P01, 57P05) then ends the relay before this request is written,
        // so it can go to a new backend. Both directions run in one task, so yielding lets it.
        for _ in 0..PRE_WRITE_YIELDS {
            if probe.check() != Liveness::DataWaiting {
                break;
            }
            tokio::task::yield_now().await;
        }
        match probe.check() {
            Liveness::Fin => return Err(WireError::Closed),
            Liveness::Rst => return Err(WireError::Io(std::io::ErrorKind::ConnectionReset.into())),
            Liveness::Alive | Liveness::DataWaiting => {}
        }
    }
    shared.lock().ledger.write_attempted();
    write_tracked(backend, bytes, written, shared, limit).await
}

/// Writes `bytes[*written..]` to the backend, counting every byte the kernel accepted. The time
/// limit applies to each write: a backend that keeps reading, however slowly, is not cut off.
async fn write_tracked<W: AsyncWrite + Unpin, B: Book>(
    backend: &mut W,
    bytes: &[u8],
    written: &mut usize,
    shared: &Shared<B>,
    limit: Duration,
) -> Result<(), WireError> {
    while *written < bytes.len() {
        let n = match within(limit, backend.write(&bytes[*written..])).await {
            Some(Ok(0)) => return Err(WireError::Closed),
            Some(Ok(n)) => n,
            Some(Err(err)) => return Err(WireError::Io(err)),
            None => return Err(WireError::StoppedReading(limit)),
        };
        *written += n;
        shared.lock().accepted(n);
    }
    match within(limit, backend.flush()).await {
        Some(result) => result.map_err(WireError::Io),
        None => Err(WireError::StoppedReading(limit)),
    }
}

/// Runs `io` with a time limit, arming the timer only if it does not finish on its first poll
/// (the usual case for a write: the socket buffer has room), which saves a clock read and a
/// timer per write. `None` when the limit passed.
async fn within<F: std::future::Future>(limit: Duration, io: F) -> Option<F::Output> {
    let mut io = std::pin::pin!(io);
    let first = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match io.as_mut().poll(cx) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        })
    })
    .await;
    match first {
        Some(output) => Some(output),
        None => tokio::time::timeout(limit, io).await.ok(),
    }
}

/// Backend → client. Returns when either side fails or closes.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn backend_to_client<R, C, F>(
    backend: &mut R,
    rbuf: &mut BytesMut,
    stream: &mut BackendStream<F>,
    client: &mut C,
    shared: &Shared<F::Book>,
    conn: &mut F::Extra,
    boundary: &ClientBoundary,
    limits: RelayLimits,
) -> RelayEnd
where
    R: AsyncRead + Unpin,
    C: AsyncWrite + Unpin,
    F: BackendFramer,
{
    loop {
        if let Err(err) = write_pending(client, rbuf, stream, boundary, limits.client_write).await {
            return RelayEnd::ClientGone(err);
        }
        match stream.framer.scan(rbuf, shared, conn) {
            Ok(Scanned::Forward(pos)) => stream.pending = pos,
            Ok(Scanned::Unsolicited(pos)) => {
                // Forward what came before it, keep the error from the client and let the
                // session heal.
                stream.pending = pos;
                if let Err(err) =
                    write_pending(client, rbuf, stream, boundary, limits.client_write).await
                {
                    return RelayEnd::ClientGone(err);
                }
                return RelayEnd::BackendGone(WireError::Closed);
            }
            Err(err) => return RelayEnd::BackendGone(WireError::Protocol(err)),
        }
        if stream.pending > 0 {
            continue;
        }
        stream.read_size.prepare(rbuf);
        let room = rbuf.capacity() - rbuf.len();
        match backend.read_buf(rbuf).await {
            Ok(0) => return RelayEnd::BackendGone(WireError::Closed),
            Ok(n) => stream.read_size.record(n, room),
            Err(err) => return RelayEnd::BackendGone(WireError::Io(err)),
        }
    }
}

/// Writes the recorded bytes at the front of `rbuf` to the client, one `write` at a time, each
/// accounted as soon as it completes (cancel-safe). The time limit applies to each write: a
/// client that keeps reading, however slowly, is served.
pub(crate) async fn write_pending<C, F>(
    client: &mut C,
    rbuf: &mut BytesMut,
    stream: &mut BackendStream<F>,
    boundary: &ClientBoundary,
    limit: Duration,
) -> Result<(), WireError>
where
    C: AsyncWrite + Unpin,
    F: BackendFramer,
{
    if stream.pending == 0 {
        return Ok(());
    }
    boundary.set(true);
    while stream.pending > 0 {
        let n = match within(limit, client.write(&rbuf[..stream.pending])).await {
            Some(Ok(0)) => return Err(WireError::Closed),
            Some(Ok(n)) => n,
            Some(Err(err)) => return Err(WireError::Io(err)),
            None => return Err(WireError::StoppedReading(limit)),
        };
        rbuf.advance(n);
        stream.pending -= n;
    }
    match within(limit, client.flush()).await {
        Some(Ok(())) => {}
        Some(Err(err)) => return Err(WireError::Io(err)),
        None => return Err(WireError::StoppedReading(limit)),
    }
    boundary.set(stream.framer.in_message());
    Ok(())
}

/// How much room the next read of one direction gets: it doubles while reads fill the buffer
/// (a large result or request streaming) and halves back when messages are small, so an idle
/// session holds small buffers and a streaming one makes few system calls.
#[derive(Debug)]
struct ReadSize {
    size: usize,
    min: usize,
    max: usize,
}

impl ReadSize {
    fn new(min: usize, max: usize) -> ReadSize {
        ReadSize {
            size: min,
            min,
            max,
        }
    }

    /// Makes room in `buf` for the next read, giving back a large allocation once the buffer is
    /// empty and reads are small again.
    fn prepare(&self, buf: &mut BytesMut) {
        if buf.is_empty() && buf.capacity() > 4 * self.size {
            *buf = BytesMut::new();
        }
        buf.reserve(self.size);
    }

    /// A read returned `n` bytes into `room` bytes of space.
    fn record(&mut self, n: usize, room: usize) {
        if n >= room {
            self.size = (self.size * 2).min(self.max);
        } else if n < self.size / 4 {
            self.size = (self.size / 2).max(self.min);
        }
    }
}
