//! The command phase: bytes relayed in both directions at once, message-aware but zero-copy.
//!
//! Each direction reads into its own buffer, walks the complete messages with the protocol
//! crate's `Scanner` (huge DataRow/CopyData messages stream through in pieces), records what
//! DESIGN §3 needs in the session's ledger (`messages`), and writes every forwardable prefix.
//! Both directions run as two futures of one task, and either may be dropped when the other
//! ends, so everything they must not lose lives outside them: the buffers, the scanners (a
//! COPY or a large row continues across a heal), and the reply bytes already recorded but not
//! yet written to the client, which are written first on the next call. Writes to the client
//! are single `write` calls, each accounted as it completes, so a dropped write loses nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use suture_protocol::pg::{self, Scanner, Step, HEADER_LEN};
use suture_protocol::ProtocolError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::liveness::{Liveness, Probe};
use crate::postgres::deadlines::{far_or, quiet_end, BackendWatch, Deadlines};
use crate::postgres::messages::{
    classify_backend, note_client_message, note_streamed_piece, BackendMessage, StreamedRequest,
};
use crate::postgres::tracker::Shared;
use crate::postgres::wire::WireError;
use crate::session::budget::{BufferBudget, Reservation};
use crate::session::ledger::Reply;

/// Held (unsent) extended-protocol bytes above this are sent without waiting for Sync.
const MAX_HELD_BATCH: usize = 1024 * 1024;
/// A backend quiet for less than this is written to without the pre-write check: a fault in
/// that window is caught by the backend direction's read like any other loss.
const PRE_WRITE_CHECK_AFTER: Duration = Duration::from_millis(100);
/// How often the pre-write check lets the backend direction read what is waiting.
const PRE_WRITE_YIELDS: usize = 4;
/// Reads ask for at least this much room in the client buffer.
const CLIENT_READ_CHUNK: usize = 8 * 1024;
/// An empty client buffer larger than this is given back (after a large message).
const CLIENT_BUFFER_KEEP: usize = 64 * 1024;
/// Reads from the backend ask for this much room at first and when replies are small.
const BACKEND_READ_MIN: usize = 8 * 1024;
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
    /// The client sent Terminate.
    ClientTerminated,
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
pub(crate) struct ClientStream {
    pub(crate) scanner: Scanner,
    /// The request being streamed in pieces, if one is.
    pub(crate) streamed: Option<StreamedRequest>,
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
}

impl ClientStream {
    pub(crate) fn new(max_message_size: usize, budget: Arc<BufferBudget>) -> ClientStream {
        ClientStream {
            scanner: Scanner::for_client(max_message_size).streaming_requests(),
            streamed: None,
            scanned: 0,
            sendable: 0,
            written: 0,
            base: 0,
            discard: 0,
            reservation: Reservation::new(budget),
        }
    }

    /// Frames the client's stream afresh from a message boundary (after a loss).
    pub(crate) fn restart(&mut self, max_message_size: usize) {
        self.scanner = Scanner::for_client(max_message_size).streaming_requests();
        self.streamed = None;
        self.scanned = 0;
        self.sendable = 0;
        self.written = 0;
        self.base = 0;
    }

    /// Makes sure the client buffer may hold what it holds and the whole of the message that
    /// is arriving (its length is in its header); false if that passes the budget.
    fn cover(&mut self, cbuf: &BytesMut) -> bool {
        let arriving = if self.scanner.in_message() {
            0
        } else {
            pg::parse_header(&cbuf[self.scanned..], usize::MAX)
                .ok()
                .flatten()
                .map_or(0, |h| self.scanned + h.len)
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
pub(crate) struct BackendStream {
    pub(crate) scanner: Scanner,
    /// Bytes at the front of the backend's read buffer that were recorded as forwarded and
    /// must reach the client before anything else does.
    pub(crate) pending: usize,
    read_size: ReadSize,
}

impl BackendStream {
    pub(crate) fn new(max_message_size: usize) -> BackendStream {
        BackendStream {
            scanner: Scanner::new(max_message_size),
            pending: 0,
            read_size: ReadSize::default(),
        }
    }

    /// Whether the client is between messages once the pending bytes are written.
    pub(crate) fn ends_at_boundary(&self) -> bool {
        !self.scanner.in_message()
    }
}

/// Client → backend. Returns when the client terminates, leaves or errs, or the backend fails.
pub(crate) async fn client_to_backend<C, B>(
    client: &mut C,
    cbuf: &mut BytesMut,
    stream: &mut ClientStream,
    backend: &mut B,
    watch: BackendWatch<'_>,
    shared: &Shared,
    limits: RelayLimits,
) -> RelayEnd
where
    C: AsyncRead + Unpin,
    B: AsyncWrite + Unpin,
{
    let probe = watch.probe;
    // One timer, kept across requests, for both the rotation and the health check: re-arming
    // a timer per request would cost a timer-wheel insert and removal on every round trip.
    // The health check is pushed back lazily, when the timer fires, from the client's last read.
    let mut deadlines = Deadlines::new(&watch);
    let timer = tokio::time::sleep_until(far_or(deadlines.next()));
    tokio::pin!(timer);
    let mut last_read = Instant::now();
    loop {
        if stream.discard > 0 && stream.scanned == 0 {
            let n = stream.discard.min(cbuf.len());
            cbuf.advance(n);
            stream.discard -= n;
        }
        let mut terminate_at = None;
        if stream.discard == 0 {
            loop {
                match stream.scanner.next(cbuf, stream.scanned) {
                    Ok(Step::Message { tag, start, end }) => {
                        if tag == b'X' {
                            terminate_at = Some(start);
                            break;
                        }
                        if note_client_message(tag, &cbuf[start..end], &mut shared.lock()) {
                            stream.sendable = end;
                        }
                        stream.scanned = end;
                    }
                    Ok(Step::Passthrough { tag, start, end }) => {
                        let piece = &cbuf[start..end];
                        let mut tracker = shared.lock();
                        if tag == b'd' {
                            tracker.ledger.continuation(piece);
                        } else {
                            let last = !stream.scanner.in_message();
                            note_streamed_piece(
                                tag,
                                piece,
                                last,
                                &mut stream.streamed,
                                &mut tracker,
                            );
                        }
                        stream.scanned = end;
                        stream.sendable = end;
                    }
                    Ok(Step::NeedMore) => break,
                    Err(err) => return RelayEnd::ClientProtocol(err),
                }
            }
        }
        if let Some(at) = terminate_at {
            stream.sendable = stream.sendable.max(at);
        }
        if stream.scanned > MAX_HELD_BATCH {
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
        stream.shrink(cbuf);
        if !stream.cover(cbuf) {
            let arriving = cbuf.len() - stream.scanned;
            return RelayEnd::OverBudget(arriving);
        }
        cbuf.reserve(CLIENT_READ_CHUNK);
        // Reading is the one point where nothing of ours is half done: read_buf is cancel-safe
        // and nothing is held for the backend. Rotation and the health check happen only here.
        let read = if !deadlines.any() || stream.scanned != 0 {
            client.read_buf(cbuf).await
        } else {
            tokio::select! {
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
                    timer.as_mut().reset(far_or(deadlines.next()));
                    continue;
                }
            }
        };
        if watch.check_after.is_some() {
            last_read = Instant::now();
        }
        match read {
            Ok(0) => return RelayEnd::ClientGone(WireError::Closed),
            Ok(_) => {}
            Err(err) => return RelayEnd::ClientGone(WireError::Io(err)),
        }
    }
}

/// Sends `bytes[*written..]` to the backend, counting in `written` (and in the ledger) every
/// byte the kernel accepts, as it accepts it (§3 rule 2): a call dropped in the middle carries
/// on where it stopped. Before the first write after the backend was idle, a non-blocking peek
/// checks it is still there (DESIGN §5 pre-write check): a FIN or RST seen then means the
/// request was never sent.
async fn send_requests<B: AsyncWrite + Unpin>(
    backend: &mut B,
    bytes: &[u8],
    written: &mut usize,
    probe: &Probe,
    shared: &Shared,
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
async fn write_tracked<B: AsyncWrite + Unpin>(
    backend: &mut B,
    bytes: &[u8],
    written: &mut usize,
    shared: &Shared,
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

/// What the backend→client direction needs to know about its session.
pub(crate) struct BackendSide<'a> {
    /// The process ID the client was given; notifications from the client's own backend are
    /// rewritten to carry it.
    pub(crate) client_process_id: i32,
    pub(crate) backend_process_id: i32,
    /// The backend's reportable parameters, updated from ParameterStatus.
    pub(crate) params: &'a mut std::collections::BTreeMap<String, String>,
    pub(crate) boundary: &'a ClientBoundary,
}

/// Backend → client. Returns when either side fails or closes.
pub(crate) async fn backend_to_client<B, C>(
    backend: &mut B,
    rbuf: &mut BytesMut,
    stream: &mut BackendStream,
    client: &mut C,
    shared: &Shared,
    mut side: BackendSide<'_>,
    limits: RelayLimits,
) -> RelayEnd
where
    B: AsyncRead + Unpin,
    C: AsyncWrite + Unpin,
{
    loop {
        if let Err(err) =
            write_pending(client, rbuf, stream, side.boundary, limits.client_write).await
        {
            return RelayEnd::ClientGone(err);
        }
        match scan_backend(rbuf, stream, shared, &mut side) {
            Ok(Scanned::Forward(pos)) => stream.pending = pos,
            Ok(Scanned::Unsolicited(pos)) => {
                // Forward what came before it, keep the error from the client and let the
                // session heal.
                stream.pending = pos;
                if let Err(err) =
                    write_pending(client, rbuf, stream, side.boundary, limits.client_write).await
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
pub(crate) async fn write_pending<C: AsyncWrite + Unpin>(
    client: &mut C,
    rbuf: &mut BytesMut,
    stream: &mut BackendStream,
    boundary: &ClientBoundary,
    limit: Duration,
) -> Result<(), WireError> {
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
    boundary.set(!stream.ends_at_boundary());
    Ok(())
}

/// What walking the backend's bytes found.
enum Scanned {
    /// `rbuf[..n]` is to be forwarded.
    Forward(usize),
    /// `rbuf[..n]` is to be forwarded, then an error that proves nothing in flight ran, which
    /// must not be.
    Unsolicited(usize),
}

/// Walks the complete messages at the front of `rbuf` and records each in the ledger.
fn scan_backend(
    rbuf: &mut BytesMut,
    stream: &mut BackendStream,
    shared: &Shared,
    side: &mut BackendSide<'_>,
) -> Result<Scanned, ProtocolError> {
    let mut pos = 0;
    // Reply bytes that answered nothing on their own, not yet given to the ledger.
    let mut bytes = 0;
    loop {
        match stream.scanner.next(rbuf, pos)? {
            Step::Message { tag, start, end } => {
                let len = end - start;
                let body = &rbuf[start + HEADER_LEN..end];
                match classify_backend(tag, body) {
                    BackendMessage::Bytes => bytes += len,
                    BackendMessage::ParameterStatus => {
                        if let Ok((name, value)) = pg::parse_parameter_status(body) {
                            side.params.insert(name.to_owned(), value.to_owned());
                        }
                    }
                    BackendMessage::Notification => {
                        rewrite_notification_pid(&mut rbuf[start..end], side);
                    }
                    BackendMessage::ParseComplete => {
                        let mut tracker = shared.lock();
                        tracker.parse_complete();
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
                                    tracker.unsolicited_fatal = Some(fields.code);
                                    if bytes > 0 {
                                        tracker.reply(
                                            Reply::Part {
                                                answers_part: false,
                                            },
                                            bytes,
                                        );
                                    }
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
    if bytes > 0 {
        shared.lock().reply(
            Reply::Part {
                answers_part: false,
            },
            bytes,
        );
    }
    Ok(Scanned::Forward(pos))
}

/// A notification from the client's own (current) backend carries the process ID the client
/// was told at login.
fn rewrite_notification_pid(message: &mut [u8], side: &BackendSide<'_>) {
    if side.client_process_id == side.backend_process_id {
        return;
    }
    let body = HEADER_LEN.min(message.len());
    if let Ok(pid) = pg::parse_notification_pid(&message[body..]) {
        if pid == side.backend_process_id {
            if let Some(field) = message.get_mut(body..body + 4) {
                field.copy_from_slice(&side.client_process_id.to_be_bytes());
            }
        }
    }
}

/// How much room the next backend read gets: it doubles while reads fill the buffer (a large
/// result streaming) and halves back when replies are small, so an idle session holds a small
/// buffer and a streaming one makes few system calls.
#[derive(Debug)]
struct ReadSize {
    size: usize,
}

impl Default for ReadSize {
    fn default() -> Self {
        ReadSize {
            size: BACKEND_READ_MIN,
        }
    }
}

impl ReadSize {
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
            self.size = (self.size * 2).min(BACKEND_READ_MAX);
        } else if n < self.size / 4 {
            self.size = (self.size / 2).max(BACKEND_READ_MIN);
        }
    }
}
