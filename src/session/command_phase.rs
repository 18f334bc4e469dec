//! The command phase of one session, for both protocols: relay until the client leaves, rotate
//! or check the backend when the session is quiet, and hand a lost backend to `loss` (DESIGN
//! §3, §4). A new backend always takes the place of the old one inside the pool slot the
//! session holds. Finally the backend is released. What differs between protocols comes from
//! the session's [`Hooks`].

use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::heal::RefusalReason;
use crate::net::client_socket::{ClientRead, ClientSocket, ClientWrite};
use crate::ops::pool_state::EventKind;
use crate::pool::{Checkout, Manager, PoolError};
use crate::session::deadlines::BackendWatch;
use crate::session::hooks::{Hooks, LocalEnd, LocalIo, Prepare};
use crate::session::link::{Link, LinkParts};
use crate::session::on_wake::OnWake;
use crate::session::relay::{
    self, BackendStream, ClientBoundary, ClientStream, RelayEnd, RelayLimits,
};
use crate::session::tracker::Shared;
use crate::wire::{self, WireError};

/// One session's command phase.
pub(crate) struct CommandPhase<H: Hooks> {
    pub(crate) hooks: H,
    pub(crate) client_read: ClientRead,
    pub(crate) client_write: ClientWrite,
    /// Client bytes not yet sent to a backend.
    pub(crate) cbuf: BytesMut,
    /// The framing of the client's stream, which outlives backends.
    pub(crate) client: ClientStream<H::Client>,
    /// The framing of the current backend's stream and its reply bytes not yet written.
    pub(crate) backend: BackendStream<H::Backend>,
    pub(crate) checkout: Checkout<H::Manager>,
    pub(crate) shared: Shared<H::Book>,
    pub(crate) boundary: ClientBoundary,
    pub(crate) limits: RelayLimits,
    /// When the current backend is to be rotated out.
    next_rotation: Option<Instant>,
    /// Names the session in logs.
    pub(crate) client_id: u64,
}

/// How long a backend past its lifetime keeps serving when no fresh one could be had.
const ROTATION_RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// Pause before trying another fresh backend after one died while the session was restored
/// on it.
const FRESH_BACKEND_RETRY: Duration = Duration::from_millis(100);

/// What to do after handling an event of the relay.
pub(crate) enum Next {
    /// Relay again.
    Resume,
    /// The session is over.
    End,
}

/// Runs the command phase of a client whose login is done and whose backend is `checkout`,
/// then releases the backend.
pub(crate) async fn run<H: Hooks>(
    hooks: H,
    stream: ClientSocket,
    cbuf: BytesMut,
    checkout: Checkout<H::Manager>,
    client_id: u64,
) {
    let (client_read, client_write) = stream.into_split();
    let core = hooks.core();
    let limits = RelayLimits {
        max_message_size: core.config.limits.max_message_size,
        client_write: core.config.timeouts.client_write,
        backend_write: core.config.timeouts.backend_write,
    };
    let budget = std::sync::Arc::clone(&core.buffer_budget);
    let request_duration = core.request_duration.clone();
    let mut drain = core.drain.clone();
    let client = ClientStream::new(hooks.client_framer(), budget);
    let backend = BackendStream::new(hooks.adopt(checkout.conn_ref()));
    let mut phase = CommandPhase {
        hooks,
        client_read,
        client_write,
        cbuf,
        client,
        backend,
        next_rotation: checkout.retire_at(),
        checkout,
        shared: Shared::default(),
        boundary: ClientBoundary::default(),
        limits,
        client_id,
    };
    phase.shared.lock().request_duration = request_duration;
    loop {
        let Some(end) = phase.relay_or_drain(&mut drain).await else {
            match phase.close_if_at_rest().await {
                Next::Resume => continue,
                Next::End => break,
            }
        };
        let next = match end {
            RelayEnd::ClientTerminated => {
                tracing::debug!("client terminated the session");
                Next::End
            }
            RelayEnd::ClientGone(WireError::StoppedReading(limit)) => {
                tracing::info!(pool = %phase.pool(), ?limit, "client stopped reading (client_write_timeout); closing its connection");
                Next::End
            }
            RelayEnd::ClientGone(err) => {
                tracing::debug!(error = %err, "client left");
                Next::End
            }
            RelayEnd::ClientProtocol(err) => {
                phase.client_protocol_error(&err).await;
                Next::End
            }
            RelayEnd::OverBudget(bytes) => {
                if let Some(suppressed) = phase.hooks.core().log_limit.allow("over_budget") {
                    tracing::warn!(pool = %phase.pool(), bytes, suppressed, "client refused: its message would pass runtime.max_buffered_bytes");
                }
                let notice = phase.hooks.over_budget_notice(bytes);
                phase.tell(Some(notice)).await;
                Next::End
            }
            RelayEnd::Local(len) => phase.local_request(len).await,
            RelayEnd::Rotate => phase.rotate().await,
            RelayEnd::CheckBackend => phase.check_backend().await,
            RelayEnd::Stalled => {
                let waited = phase.hooks.core().config.timeouts.health_check_after;
                tracing::info!(pool = %phase.pool(), ?waited, "requests the server never makes wait got no answer; backend given up");
                phase.checkout.conn().set_broken();
                phase.backend_lost(&WireError::Timeout(waited)).await
            }
            RelayEnd::BackendGone(err) => {
                phase.checkout.conn().set_broken();
                phase.backend_lost(&err).await
            }
        };
        if let Next::End = next {
            break;
        }
    }
    let tracker = std::mem::take(&mut *phase.shared.lock());
    drop(phase.client_write);
    phase.hooks.release(phase.checkout, &tracker).await;
}

impl<H: Hooks> CommandPhase<H> {
    pub(crate) fn pool(&self) -> &str {
        self.hooks.core().name()
    }

    /// Swaps a backend past its maximum lifetime for a fresh one while the client is at rest
    /// (DESIGN §4: limits at the server or a proxy in between never reach the client), inside
    /// the session's own pool slot. When the pool has room for one more connection the fresh
    /// one is opened first and the old one keeps serving if that fails; a full pool closes the
    /// old one first, so `max_size` is never passed.
    async fn rotate(&mut self) -> Next {
        let close_first = !self.checkout.has_room();
        if close_first {
            self.checkout.conn().terminate().await;
        }
        match self.replace_backend().await {
            Ok(()) => {
                self.checkout.count_close("max_lifetime");
                tracing::debug!(pool = %self.pool(), "rotated a backend past its maximum lifetime");
                Next::Resume
            }
            Err(_) if !close_first => {
                tracing::info!(pool = %self.pool(), "no fresh backend for rotation; keeping the current one for now");
                self.next_rotation = Some(Instant::now() + ROTATION_RETRY_AFTER_FAILURE);
                Next::Resume
            }
            Err(notice) => {
                self.checkout.count_close("max_lifetime");
                self.tell(Some(notice)).await;
                Next::End
            }
        }
    }

    /// Checks the backend of a quiet session with the protocol's cheapest round trip, so a
    /// black-holed flow is found before the client needs it (DESIGN §5); a failed check is a
    /// lost backend.
    async fn check_backend(&mut self) -> Next {
        let core = self.hooks.core();
        let limit = core.config.timeouts.health_check_timeout;
        let check = core.pool.manager().health_check(self.checkout.conn());
        let healthy = matches!(tokio::time::timeout(limit, check).await, Ok(true));
        if healthy {
            return Next::Resume;
        }
        metrics::counter!("suture_backend_closes_total", "pool" => self.pool().to_owned(), "reason" => "health_check")
            .increment(1);
        self.checkout.conn().set_broken();
        let failed = std::io::Error::other("the health check of the session's backend failed");
        self.backend_lost(&WireError::Io(failed)).await
    }

    /// Relays in both directions until one side ends.
    pub(crate) async fn relay(&mut self) -> RelayEnd {
        let retire_at = self.next_rotation;
        let LinkParts {
            reader,
            writer,
            rbuf,
            probe,
            extra,
        } = self.checkout.conn().parts();
        let check_after =
            Some(self.hooks.core().config.timeouts.health_check_after).filter(|d| !d.is_zero());
        let watch = BackendWatch {
            probe,
            retire_at,
            check_after,
            boundary: &self.boundary,
        };
        let up = relay::client_to_backend(
            &mut self.client_read,
            &mut self.cbuf,
            &mut self.client,
            writer,
            watch,
            &self.shared,
            self.limits,
        );
        let down = relay::backend_to_client(
            reader,
            rbuf,
            &mut self.backend,
            &mut self.client_write,
            &self.shared,
            extra,
            &self.boundary,
            self.limits,
        );
        // Each direction is polled when its own waker fired (its socket became ready), not
        // on every wake-up of the task: a request does not poll the idle backend read, nor a
        // reply the client read.
        let (down, up) = (std::pin::pin!(down), std::pin::pin!(up));
        let (down, up) = (OnWake::new(down), OnWake::new(up));
        // The backend direction is polled first: whatever the backend sent while the session
        // was quiet (an unsolicited fatal error, a FIN) is seen before a new request is written.
        tokio::select! {
            biased;
            end = down => end,
            end = up => end,
        }
    }

    /// The client broke the protocol: it is told so (rate-limited in the log) and closed; its
    /// backend is not replaced for it.
    pub(crate) async fn client_protocol_error(&mut self, err: &suture_protocol::ProtocolError) {
        if let Some(suppressed) = self.hooks.core().log_limit.allow("protocol_error") {
            tracing::info!(pool = %self.pool(), error = %err, suppressed, "client protocol violation; closing its connection");
        }
        metrics::counter!("suture_client_connections_total", "protocol" => H::PROTOCOL, "result" => "protocol_error")
            .increment(1);
        let notice = self.hooks.violation_notice(err);
        self.tell(Some(notice)).await;
    }

    /// A request Suture answers itself (MySQL COM_CHANGE_USER): everything before it was sent
    /// and answered, it is at the front of the client buffer, never registered in the ledger
    /// nor sent. The protocol serves it; a backend it swapped in is adopted.
    async fn local_request(&mut self, len: usize) -> Next {
        let request = self.cbuf.split_to(len.min(self.cbuf.len()));
        let io = LocalIo {
            request: &request,
            client_read: &mut self.client_read,
            client_write: &mut self.client_write,
            cbuf: &mut self.cbuf,
            checkout: &mut self.checkout,
            shared: &self.shared,
        };
        match self.hooks.serve_local(io).await {
            LocalEnd::Served { new_backend } => {
                if new_backend {
                    self.adopt_current();
                }
                Next::Resume
            }
            LocalEnd::End => Next::End,
        }
    }

    /// A new backend in the session's own pool slot, with the client's settings and
    /// restorable state, the client's cancels pointed at it. Fresh backends that die while the
    /// session is restored on them are retried until the failover hold runs out. On failure
    /// the refusal is counted and the notice to send the client is returned.
    pub(crate) async fn replace_backend(&mut self) -> Result<(), H::Notice> {
        let timeouts = &self.hooks.core().config.timeouts;
        let patience = if timeouts.failover_hold.is_zero() {
            timeouts.checkout
        } else {
            timeouts.failover_hold
        };
        let deadline = Instant::now() + patience;
        loop {
            if let Err(err) = self.checkout.replace().await {
                tracing::warn!(pool = %self.pool(), error = %err, "no new backend for the session");
                let unavailable = matches!(
                    err,
                    PoolError::Unavailable { .. } | PoolError::HoldFull { .. }
                );
                if !unavailable {
                    self.count_refusal(RefusalReason::BackendUnavailable);
                }
                return Err(self.hooks.pool_notice(err));
            }
            self.adopt_current();
            let lost = match self.hooks.prepare(self.checkout.conn(), &self.shared).await {
                Ok(()) => return Ok(()),
                Err(Prepare::Lost(err)) => err,
                Err(Prepare::Restore(err)) => {
                    tracing::warn!(pool = %self.pool(), error = %err, "session state could not be restored on the new backend");
                    self.count_refusal(RefusalReason::TaintedSession);
                    return Err(self.hooks.refusal_notice(RefusalReason::TaintedSession));
                }
                Err(Prepare::Settings(notice)) => return Err(notice),
            };
            self.checkout.conn().set_broken();
            if Instant::now() >= deadline {
                tracing::warn!(pool = %self.pool(), error = %lost, "every new backend was lost while the session was restored on it");
                self.count_refusal(RefusalReason::BackendUnavailable);
                return Err(self.hooks.refusal_notice(RefusalReason::BackendUnavailable));
            }
            tracing::info!(pool = %self.pool(), error = %lost, "new backend lost while restoring the session; trying another");
            tokio::time::sleep(FRESH_BACKEND_RETRY).await;
        }
    }

    /// The connection now in the slot serves the session: its framing starts afresh, the
    /// client's cancels go to it, and its own maximum lifetime decides the next rotation.
    fn adopt_current(&mut self) {
        self.backend = BackendStream::new(self.hooks.adopt(self.checkout.conn_ref()));
        self.next_rotation = self.checkout.retire_at();
    }

    /// Sends `notice` if the client's stream is at a message boundary.
    pub(crate) async fn tell(&mut self, notice: Option<H::Notice>) {
        if let (Some(notice), true) = (notice, self.boundary.at_boundary()) {
            self.send_notice(&notice).await;
        }
    }

    /// Sends `notice` (best effort: the client may already be gone).
    pub(crate) async fn send_notice(&mut self, notice: &H::Notice) {
        let mut out = BytesMut::new();
        let waiting = !self.cbuf.is_empty();
        self.hooks
            .encode_notice(notice, &self.shared.lock().book, waiting, &mut out);
        let _ = wire::write_all(&mut self.client_write, &out, self.limits.client_write).await;
    }

    pub(crate) fn count_refusal(&self, reason: RefusalReason) {
        self.hooks
            .core()
            .ops
            .record(EventKind::Refusal, reason.label());
        let backend_id = <H::Manager as Manager>::conn_id(self.checkout.conn_ref());
        tracing::warn!(pool = %self.pool(), client = self.client_id, cause = reason.label(), backend_id, "backend loss reported to the client");
        metrics::counter!("suture_replays_refused_total", "pool" => self.pool().to_owned(), "reason" => reason.label())
            .increment(1);
    }
}
