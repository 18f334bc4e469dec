//! The command phase: bytes relayed in both directions at once, message-aware but zero-copy.
//!
//! Each direction reads into its own buffer, walks the complete messages with the protocol
//! crate's `Scanner` (huge DataRow/CopyData messages stream through in pieces), records what
//! DESIGN §3 needs in the shared `Tracker`, and writes every forwardable prefix with a single
//! write. Client→backend, extended-protocol messages (Parse, Bind, Describe, Execute, Close) are
//! held until their Sync or Flush, so a batch reaches the backend whole or not at all; Query,
//! FunctionCall and COPY data go at once. Both directions run as two futures of one task; the
//! buffers live outside them, so dropping one mid-read loses nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use suture_protocol::pg::{self, Scanner, Step, TxStatus, HEADER_LEN};
use suture_protocol::ProtocolError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::liveness::{Liveness, Probe};
use crate::postgres::session_state::classify;
use crate::postgres::tracker::{Shared, Statement};
use crate::postgres::wire::WireError;

/// Held (unsent) extended-protocol bytes above this are sent without waiting for Sync.
const MAX_HELD_BATCH: usize = 1024 * 1024;
/// A backend quiet for less than this is written to without the pre-write check: a fault in
/// that window is caught by the backend direction's read like any other loss.
const PRE_WRITE_CHECK_AFTER: Duration = Duration::from_millis(100);
/// How often the pre-write check lets the backend direction read what is waiting.
const PRE_WRITE_YIELDS: usize = 4;
/// Reads ask for at least this much room in the client buffer.
const CLIENT_READ_CHUNK: usize = 8 * 1024;
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
    /// The backend closed, failed or stopped reading.
    BackendGone(WireError),
    /// The backend reached its maximum lifetime and the session is at rest: swap it.
    Rotate,
    /// The session has been quiet for the health-check interval: check its backend.
    CheckBackend,
    /// A request that executes nothing got no answer for the health-check interval.
    Stalled,
}

/// What the client→backend direction watches about its backend besides the bytes.
pub(crate) struct BackendWatch<'a> {
    /// Peeks at the backend socket before the first write after idle.
    pub(crate) probe: &'a Probe,
    /// When the backend should be rotated out at the next quiet moment.
    pub(crate) retire_at: Option<Instant>,
    /// After this long without a client request, the session's backend gets a health check.
    pub(crate) check_after: Option<Duration>,
    /// Whether the client's stream is between messages (rotation must not cut a message).
    pub(crate) boundary: &'a ClientBoundary,
}

/// A deadline far enough away to mean "never" (tokio timers need an instant).
const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// `at`, or a far-away instant when there is no deadline.
fn far_or(at: Option<Instant>) -> tokio::time::Instant {
    at.unwrap_or_else(|| Instant::now() + FAR).into()
}

/// The client→backend direction's two deadlines, served by one timer.
struct Deadlines {
    /// When the backend should be rotated out (pushed back while the session is busy).
    rotate_at: Option<Instant>,
    check_after: Option<Duration>,
    /// When the session's backend gets a health check if the client stays quiet.
    check_at: Option<Instant>,
}

impl Deadlines {
    /// The earlier deadline, if any.
    fn next(&self) -> Option<Instant> {
        match (self.rotate_at, self.check_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The timer fired at `now`. `at_boundary` says, when the client's stream is between
    /// messages, whether the session is at rest and what a due health check ends with.
    /// Returns how the relay should end, or None to go on (deadlines moved on).
    fn fired(
        &mut self,
        now: Instant,
        last_read: Instant,
        at_boundary: impl Fn() -> Option<(bool, Option<RelayEnd>)>,
    ) -> Option<RelayEnd> {
        if self.rotate_at.is_some_and(|at| now >= at) {
            if let Some((true, _)) = at_boundary() {
                return Some(RelayEnd::Rotate);
            }
            self.rotate_at = Some(now + ROTATION_RETRY);
        }
        if let (Some(at), Some(after)) = (self.check_at, self.check_after) {
            if now >= at {
                let due = last_read + after;
                if now < due {
                    self.check_at = Some(due);
                } else {
                    self.check_at = Some(now + after);
                    if let Some((_, Some(end))) = at_boundary() {
                        return Some(end);
                    }
                }
            }
        }
        None
    }
}

/// What a session quiet for the whole health-check interval should do, if anything.
fn quiet_end(tracker: &crate::postgres::tracker::Tracker) -> Option<RelayEnd> {
    if tracker.pending == 0 && tracker.tx_status == TxStatus::Idle {
        return Some(RelayEnd::CheckBackend);
    }
    // A request that executes nothing (Close, Sync) answers at once; no answer at all for the
    // whole interval means the flow is dead or black-holed.
    if tracker.pending > 0 && tracker.side_effect_free && tracker.bytes_to_client == 0 {
        return Some(RelayEnd::Stalled);
    }
    None
}

/// How long to wait before looking again when a rotation is due but the session is busy.
const ROTATION_RETRY: Duration = Duration::from_millis(500);

/// Whether the client's byte stream is at a message boundary, so Suture may still write an
/// ErrorResponse of its own into it.
#[derive(Default)]
pub(crate) struct ClientBoundary {
    mid_message: AtomicBool,
}

impl ClientBoundary {
    /// True when an ErrorResponse written now would be read as a whole message.
    pub(crate) fn at_boundary(&self) -> bool {
        !self.mid_message.load(Ordering::Acquire)
    }
}

/// Client → backend. Returns when the client terminates, leaves or errs, or the backend fails.
pub(crate) async fn client_to_backend<C, B>(
    client: &mut C,
    cbuf: &mut BytesMut,
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
    let mut deadlines = Deadlines {
        rotate_at: watch.retire_at,
        check_after: watch.check_after,
        check_at: watch.check_after.map(|after| Instant::now() + after),
    };
    let timer = tokio::time::sleep_until(far_or(deadlines.next()));
    tokio::pin!(timer);
    let mut last_read = Instant::now();
    let mut scanner = Scanner::for_client(limits.max_message_size);
    // cbuf[..scanned] has been walked; cbuf[..flush_to] may be sent.
    let mut scanned = 0;
    loop {
        let mut flush_to = 0;
        let mut terminate_at = None;
        loop {
            match scanner.next(cbuf, scanned) {
                Ok(Step::Message { tag, start, end }) => {
                    if tag == b'X' {
                        terminate_at = Some(start);
                        break;
                    }
                    if note_client_message(tag, &cbuf[start..end], shared) {
                        flush_to = end;
                    }
                    scanned = end;
                }
                Ok(Step::Passthrough { end, .. }) => {
                    scanned = end;
                    flush_to = end;
                }
                Ok(Step::NeedMore) => break,
                Err(err) => return RelayEnd::ClientProtocol(err),
            }
        }
        if let Some(at) = terminate_at {
            if at > 0 {
                shared.lock().in_write = at;
                let sent = send_requests(backend, &cbuf[..at], probe, shared, limits.backend_write);
                if let Err(err) = sent.await {
                    return RelayEnd::BackendGone(err);
                }
            }
            return RelayEnd::ClientTerminated;
        }
        if scanned > MAX_HELD_BATCH {
            flush_to = scanned;
        }
        if flush_to > 0 {
            shared.lock().in_write = flush_to;
            let sent = send_requests(
                backend,
                &cbuf[..flush_to],
                probe,
                shared,
                limits.backend_write,
            );
            if let Err(err) = sent.await {
                return RelayEnd::BackendGone(err);
            }
            cbuf.advance(flush_to);
            shared.lock().in_write = 0;
            scanned -= flush_to;
        }
        cbuf.reserve(CLIENT_READ_CHUNK);
        // Reading is the one point where nothing of ours is half done: read_buf is cancel-safe
        // and nothing is held for the backend. Rotation and the health check happen only here.
        let read = match (watch.retire_at, watch.check_after) {
            (None, None) => client.read_buf(cbuf).await,
            _ if scanned != 0 => client.read_buf(cbuf).await,
            _ => tokio::select! {
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
            },
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

/// Records one client message (`message` is the whole message, header included); returns
/// whether it ends a batch (so everything up to it is sent).
fn note_client_message(tag: u8, message: &[u8], shared: &Shared) -> bool {
    let body = message.get(HEADER_LEN..).unwrap_or_default();
    match tag {
        // Parse, Bind, Describe, Execute, Close: held until Sync or Flush.
        b'P' => {
            let mut tracker = shared.lock();
            match pg::parse_parse_message(body) {
                Ok((name, sql)) => {
                    let statement = Statement::new(sql);
                    tracker.dirty |= !name.is_empty() || statement.may_change_session();
                    // State statements through the extended protocol are not tracked.
                    tracker.tainted |= classify(sql).is_some() || statement.may_taint_session();
                    tracker.may_commit |= statement.may_commit();
                    let named = (!name.is_empty())
                        .then(|| (name.to_owned(), Bytes::copy_from_slice(message)));
                    tracker.parse_sent(named);
                }
                Err(_) => {
                    tracker.dirty = true;
                    tracker.tainted = true;
                    tracker.may_commit = true;
                    tracker.parse_sent(None);
                }
            }
            false
        }
        b'C' => {
            // Close of a named statement: it no longer needs restoring.
            if let [b'S', name @ .., 0] = body {
                if let Ok(name) = std::str::from_utf8(name) {
                    shared.lock().state.forget_prepared(name);
                }
            }
            false
        }
        b'E' => {
            shared.lock().side_effect_free = false;
            false
        }
        b'B' | b'D' => false,
        b'S' => {
            shared.lock().request_sent(None);
            true
        }
        b'Q' => {
            let sql = pg::parse_query(body).ok();
            let op = sql.and_then(classify);
            let statement = sql.map(Statement::new);
            let statement = statement.as_ref();
            let mut tracker = shared.lock();
            tracker.dirty |= statement.is_none_or(Statement::may_change_session);
            tracker.may_commit |= statement.is_none_or(Statement::may_commit);
            if op.is_some() && tracker.tx_status != TxStatus::Idle {
                tracker.tainted = true;
            }
            if op.is_none() {
                tracker.tainted |= statement.is_none_or(Statement::may_taint_session);
            }
            tracker.side_effect_free &= statement.is_some_and(Statement::executes_nothing);
            tracker.request_sent(op);
            true
        }
        b'F' => {
            let mut tracker = shared.lock();
            tracker.dirty = true;
            tracker.tainted = true;
            tracker.side_effect_free = false;
            tracker.request_sent(None);
            true
        }
        // Flush, CopyData, CopyDone, CopyFail and anything else: send now.
        _ => true,
    }
}

/// Sends requests to the backend. Before the first write after the backend was idle, a
/// non-blocking peek checks it is still there (DESIGN §5 pre-write check): a FIN or RST seen
/// then means the request was never sent. Every byte the kernel accepts is counted (§3 rule
/// 2), and what was written is kept for a replay.
async fn send_requests<B: AsyncWrite + Unpin>(
    backend: &mut B,
    bytes: &[u8],
    probe: &Probe,
    shared: &Shared,
    limit: Duration,
) -> Result<(), WireError> {
    if shared.lock().wants_pre_write_check(PRE_WRITE_CHECK_AFTER) {
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
    shared.lock().write_attempted = true;
    write_tracked(backend, bytes, shared, limit).await?;
    shared.lock().retain(bytes);
    Ok(())
}

/// Writes `bytes` to the backend, counting every byte the kernel accepted.
async fn write_tracked<B: AsyncWrite + Unpin>(
    backend: &mut B,
    mut bytes: &[u8],
    shared: &Shared,
    limit: Duration,
) -> Result<(), WireError> {
    let write = async {
        while !bytes.is_empty() {
            let n = backend.write(bytes).await.map_err(WireError::Io)?;
            if n == 0 {
                return Err(WireError::Closed);
            }
            shared.lock().bytes_to_backend += n as u64;
            bytes = &bytes[n..];
        }
        backend.flush().await.map_err(WireError::Io)
    };
    within(limit, write)
        .await
        .unwrap_or(Err(WireError::Timeout(limit)))
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
    bbuf: &mut BytesMut,
    client: &mut C,
    shared: &Shared,
    side: BackendSide<'_>,
    limits: RelayLimits,
) -> RelayEnd
where
    B: AsyncRead + Unpin,
    C: AsyncWrite + Unpin,
{
    let mut scanner = Scanner::new(limits.max_message_size);
    let mut read_size = ReadSize::default();
    loop {
        let mut pos = 0;
        // End of the last ReadyForQuery in this batch: bytes after it belong to the next request.
        let mut ready_end = 0;
        loop {
            match scanner.next(bbuf, pos) {
                Ok(Step::Message { tag, start, end }) => {
                    if tag == b'Z' {
                        ready_end = end;
                    }
                    if tag == b'S' {
                        record_parameter_status(&bbuf[start..end], side.params);
                    } else if note_backend_message(tag, &mut bbuf[start..end], shared, &side)
                        == Seen::Unsolicited
                    {
                        // Forward what came before it, keep the error from the client and let
                        // the session heal.
                        if pos > 0 {
                            if let Err(err) =
                                write_client(client, &bbuf[..pos], limits.client_write).await
                            {
                                return RelayEnd::ClientGone(err);
                            }
                        }
                        return RelayEnd::BackendGone(WireError::Closed);
                    }
                    pos = end;
                }
                Ok(Step::Passthrough { end, .. }) => pos = end,
                Ok(Step::NeedMore) => break,
                Err(err) => return RelayEnd::BackendGone(WireError::Protocol(err)),
            }
        }
        if pos > 0 {
            side.boundary.mid_message.store(true, Ordering::Release);
            let written = write_client(client, &bbuf[..pos], limits.client_write).await;
            if let Err(err) = written {
                return RelayEnd::ClientGone(err);
            }
            side.boundary
                .mid_message
                .store(scanner.in_message(), Ordering::Release);
            shared.lock().bytes_to_client += (pos - ready_end) as u64;
            bbuf.advance(pos);
        }
        read_size.prepare(bbuf);
        let room = bbuf.capacity() - bbuf.len();
        match backend.read_buf(bbuf).await {
            Ok(0) => return RelayEnd::BackendGone(WireError::Closed),
            Ok(n) => read_size.record(n, room),
            Err(err) => return RelayEnd::BackendGone(WireError::Io(err)),
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

async fn write_client<C: AsyncWrite + Unpin>(
    client: &mut C,
    bytes: &[u8],
    limit: Duration,
) -> Result<(), WireError> {
    let write = async {
        client.write_all(bytes).await?;
        client.flush().await
    };
    match within(limit, write).await {
        Some(result) => result.map_err(WireError::Io),
        None => Err(WireError::Timeout(limit)),
    }
}

/// What the backend→client direction makes of one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// Forward it.
    Forward,
    /// A fatal error that proves nothing in flight ran: do not forward it.
    Unsolicited,
}

/// Records one backend message (`message` is the whole message, header included; it may be
/// rewritten in place).
fn note_backend_message(
    tag: u8,
    message: &mut [u8],
    shared: &Shared,
    side: &BackendSide<'_>,
) -> Seen {
    let body_start = HEADER_LEN.min(message.len());
    match tag {
        b'Z' => {
            if let Ok(status) = pg::parse_ready_for_query(&message[body_start..]) {
                shared.lock().ready(status);
            }
        }
        b'A' if side.client_process_id != side.backend_process_id => {
            if let Ok(pid) = pg::parse_notification_pid(&message[body_start..]) {
                if pid == side.backend_process_id {
                    if let Some(field) = message.get_mut(body_start..body_start + 4) {
                        field.copy_from_slice(&side.client_process_id.to_be_bytes());
                    }
                }
            }
        }
        b'1' => shared.lock().parse_complete(),
        b'E' => {
            if let Ok(fields) = pg::parse_error_fields(&message[body_start..]) {
                shared.lock().error_received();
                if fields.severity == "FATAL" || fields.severity == "PANIC" {
                    let mut tracker = shared.lock();
                    if tracker.fatal_is_unsolicited(&fields.code) {
                        tracker.unsolicited_fatal = Some(fields.code);
                        return Seen::Unsolicited;
                    }
                    tracker.fatal_code = Some(fields.code);
                }
            }
        }
        _ => {}
    }
    Seen::Forward
}

/// Applies a ParameterStatus message to the backend's recorded parameters.
fn record_parameter_status(
    message: &[u8],
    params: &mut std::collections::BTreeMap<String, String>,
) {
    if let Some(body) = message.get(HEADER_LEN..) {
        if let Ok((name, value)) = pg::parse_parameter_status(body) {
            params.insert(name.to_owned(), value.to_owned());
        }
    }
}
