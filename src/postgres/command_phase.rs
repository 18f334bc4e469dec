//! The command phase of one session: relay until the client leaves, rotate or check the backend
//! when the session is quiet, and hand a lost backend to `loss` (DESIGN §3, §4). A new backend
//! always takes the place of the old one inside the pool slot the session holds. Finally the
//! backend is released.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::heal::RefusalReason;
use crate::ops::pool_state::EventKind;
use crate::pool::{Checkout, PoolError};
use crate::postgres::backend::{BackendConn, BackendError, RunError};
use crate::postgres::cancel::{CancelHandle, CancelTarget};
use crate::postgres::client_login::ClientLogin;
use crate::postgres::context::{PgManager, PgService};
use crate::postgres::deadlines::BackendWatch;
use crate::postgres::errors::{ClientError, ClientNotice};
use crate::postgres::lost;
use crate::postgres::relay::{
    self, BackendSide, BackendStream, ClientBoundary, ClientStream, RelayEnd, RelayLimits,
};
use crate::postgres::restore;
use crate::postgres::session::{apply_settings, release, send_notice};
use crate::postgres::tracker::Shared;
use crate::postgres::wire::WireError;

/// One session's command phase.
pub(super) struct CommandPhase<'a> {
    pub(super) svc: &'a PgService,
    pub(super) login: &'a ClientLogin,
    pub(super) cancel: &'a CancelHandle,
    pub(super) client_read: OwnedReadHalf,
    pub(super) client_write: OwnedWriteHalf,
    /// Client bytes not yet sent to a backend.
    pub(super) cbuf: BytesMut,
    /// The framing of the client's stream, which outlives backends.
    pub(super) client: ClientStream,
    /// The framing of the current backend's stream and its reply bytes not yet written.
    pub(super) backend: BackendStream,
    pub(super) checkout: Checkout<PgManager>,
    pub(super) shared: Shared,
    pub(super) boundary: ClientBoundary,
    pub(super) limits: RelayLimits,
    /// The process ID the client was told at login: its identity across heals.
    client_process_id: i32,
    /// When the current backend is to be rotated out.
    next_rotation: Option<Instant>,
    /// Names the session in logs.
    pub(super) client_id: u64,
}

/// How long a backend past its lifetime keeps serving when no fresh one could be had.
const ROTATION_RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// Pause before trying another fresh backend after one died while the session was restored
/// on it.
const FRESH_BACKEND_RETRY: Duration = Duration::from_millis(100);

/// Why preparing a new backend for the session failed.
enum Prepare {
    /// The new backend's connection failed.
    Lost(RunError),
    /// The client's startup settings were refused.
    Settings(RunError),
    /// The session state could not be rebuilt.
    Restore(RunError),
}

/// What to do after handling an event of the relay.
pub(super) enum Next {
    /// Relay again.
    Resume,
    /// The session is over.
    End,
}

/// Runs the command phase, then releases the backend.
pub(super) async fn run(
    svc: &PgService,
    stream: TcpStream,
    cbuf: BytesMut,
    checkout: Checkout<PgManager>,
    login: &ClientLogin,
    cancel: &CancelHandle,
    client_id: u64,
) {
    let (client_read, client_write) = stream.into_split();
    let max = svc.config.limits.max_message_size;
    let mut phase = CommandPhase {
        svc,
        login,
        cancel,
        client_read,
        client_write,
        cbuf,
        client: ClientStream::new(max, std::sync::Arc::clone(&svc.buffer_budget)),
        backend: BackendStream::new(max),
        checkout,
        shared: Shared::default(),
        boundary: ClientBoundary::default(),
        limits: RelayLimits {
            max_message_size: max,
            client_write: svc.config.timeouts.client_write,
            backend_write: svc.config.timeouts.backend_write,
        },
        client_process_id: 0,
        next_rotation: None,
        client_id,
    };
    phase.client_process_id = phase.checkout.conn().process_id;
    phase.next_rotation = phase.checkout.retire_at();
    phase.shared.lock().request_duration = svc.request_duration.clone();
    let mut drain = svc.drain.clone();
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
                phase.client_protocol_error(ClientError::from(err)).await;
                return;
            }
            RelayEnd::OverBudget(bytes) => {
                let notice = ClientNotice {
                    severity: "FATAL",
                    code: "53200".to_owned(),
                    message: format!(
                        "out of memory: a message of {bytes} bytes must arrive whole, and client messages already use the memory all sessions may hold (runtime.max_buffered_bytes)"
                    ),
                    detail: None,
                };
                if let Some(suppressed) = svc.log_limit.allow("over_budget") {
                    tracing::warn!(pool = %phase.pool(), bytes, suppressed, "client refused: its message would pass runtime.max_buffered_bytes");
                }
                phase.tell(Some(notice)).await;
                return;
            }
            RelayEnd::Rotate => phase.rotate().await,
            RelayEnd::CheckBackend => phase.check_backend().await,
            RelayEnd::Stalled => {
                let waited = svc.config.timeouts.health_check_after;
                tracing::info!(pool = %phase.pool(), ?waited, "requests the server never makes wait got no answer; backend given up");
                phase.checkout.conn().broken = true;
                phase.backend_lost(&WireError::Timeout(waited)).await
            }
            RelayEnd::BackendGone(err) => {
                phase.checkout.conn().broken = true;
                phase.backend_lost(&err).await
            }
        };
        if let Next::End = next {
            break;
        }
    }
    let tracker = std::mem::take(&mut *phase.shared.lock());
    drop(phase.client_write);
    release(svc, phase.checkout, &tracker, cancel).await;
}

impl CommandPhase<'_> {
    pub(super) fn pool(&self) -> &str {
        &self.svc.config.name
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

    /// Checks the backend of a quiet session with an empty query, so a black-holed flow is
    /// found before the client needs it (DESIGN §5); a failed check is a lost backend.
    async fn check_backend(&mut self) -> Next {
        let (limit, max) = (
            self.svc.config.timeouts.health_check_timeout,
            self.svc.config.limits.max_message_size,
        );
        match self.checkout.conn().run_internal("", limit, max).await {
            Ok(()) => Next::Resume,
            Err(err) => {
                metrics::counter!("suture_backend_closes_total", "pool" => self.pool().to_owned(), "reason" => "health_check")
                    .increment(1);
                self.checkout.conn().broken = true;
                self.backend_lost(&WireError::Io(std::io::Error::other(err.to_string())))
                    .await
            }
        }
    }

    /// Relays in both directions until one side ends.
    pub(super) async fn relay(&mut self) -> RelayEnd {
        let retire_at = self.next_rotation;
        let BackendConn {
            reader,
            writer,
            rbuf,
            params,
            process_id,
            probe,
            ..
        } = self.checkout.conn();
        let side = BackendSide {
            client_process_id: self.client_process_id,
            backend_process_id: *process_id,
            params,
            boundary: &self.boundary,
        };
        let check_after =
            Some(self.svc.config.timeouts.health_check_after).filter(|d| !d.is_zero());
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
            side,
            self.limits,
        );
        // The backend direction is polled first: whatever the backend sent while the session
        // was quiet (an unsolicited FATAL, a FIN) is seen before a new request is written.
        tokio::select! {
            biased;
            end = down => end,
            end = up => end,
        }
    }

    pub(super) async fn client_protocol_error(&mut self, err: ClientError) {
        if let Some(suppressed) = self.svc.log_limit.allow("protocol_error") {
            tracing::info!(pool = %self.pool(), error = %err, suppressed, "client protocol violation; closing its connection");
        }
        metrics::counter!("suture_client_connections_total", "protocol" => "postgres", "result" => "protocol_error")
            .increment(1);
        let notice = err.notice(self.pool());
        self.tell(notice).await;
    }

    /// A new backend in the session's own pool slot, with the client's settings and
    /// restorable state, the client's cancels pointed at it. Fresh backends that die while the
    /// session is restored on them are retried until the failover hold runs out. On failure
    /// the refusal is counted and the notice to send the client is returned.
    pub(super) async fn replace_backend(&mut self) -> Result<(), ClientNotice> {
        let timeouts = &self.svc.config.timeouts;
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
                return Err(self.pool_notice(err));
            }
            self.adopt_current();
            let lost = match self.prepare().await {
                Ok(()) => return Ok(()),
                Err(Prepare::Lost(err)) => err,
                Err(Prepare::Restore(err)) => {
                    tracing::warn!(pool = %self.pool(), error = %err, "session state could not be restored on the new backend");
                    self.count_refusal(RefusalReason::TaintedSession);
                    return Err(lost::fatal_notice(RefusalReason::TaintedSession));
                }
                Err(Prepare::Settings(err)) => {
                    let notice = ClientError::Settings(err).notice(self.pool());
                    return Err(notice
                        .unwrap_or_else(|| lost::fatal_notice(RefusalReason::BackendUnavailable)));
                }
            };
            self.checkout.conn().broken = true;
            if Instant::now() >= deadline {
                tracing::warn!(pool = %self.pool(), error = %lost, "every new backend was lost while the session was restored on it");
                self.count_refusal(RefusalReason::BackendUnavailable);
                return Err(lost::fatal_notice(RefusalReason::BackendUnavailable));
            }
            tracing::info!(pool = %self.pool(), error = %lost, "new backend lost while restoring the session; trying another");
            tokio::time::sleep(FRESH_BACKEND_RETRY).await;
        }
    }

    /// What the client is told when the pool gives no backend (it names the pool, not the
    /// server).
    fn pool_notice(&self, err: PoolError<BackendError>) -> ClientNotice {
        ClientError::Pool(err)
            .notice(self.pool())
            .unwrap_or_else(|| lost::fatal_notice(RefusalReason::BackendUnavailable))
    }

    /// The connection now in the slot serves the session: its framing starts afresh, the
    /// client's cancels go to it, and its own maximum lifetime decides the next rotation.
    fn adopt_current(&mut self) {
        self.backend = BackendStream::new(self.limits.max_message_size);
        self.next_rotation = self.checkout.retire_at();
        let conn = self.checkout.conn();
        self.cancel.retarget(CancelTarget {
            addr: conn.addr,
            process_id: conn.process_id,
            secret_key: conn.secret_key,
        });
    }

    /// Applies the client's startup settings and restores its session state on the current
    /// backend.
    async fn prepare(&mut self) -> Result<(), Prepare> {
        let conn = self.checkout.conn();
        match apply_settings(self.svc, conn, self.login).await {
            Ok(()) => {}
            Err(err @ RunError::Wire(_)) => return Err(Prepare::Lost(err)),
            Err(err) => return Err(Prepare::Settings(err)),
        }
        let state = std::mem::take(&mut self.shared.lock().state);
        let (limit, max) = (
            self.svc.config.timeouts.reset,
            self.svc.config.limits.max_message_size,
        );
        let restored = restore::restore(self.checkout.conn(), &state, limit, max).await;
        self.shared.lock().state = state;
        restored.map_err(|err| match err {
            RunError::Wire(_) => Prepare::Lost(err),
            other => Prepare::Restore(other),
        })
    }

    /// Sends `notice` if the client's stream is at a message boundary.
    pub(super) async fn tell(&mut self, notice: Option<ClientNotice>) {
        if let (Some(notice), true) = (notice, self.boundary.at_boundary()) {
            send_notice(&mut self.client_write, &notice, self.limits.client_write).await;
        }
    }

    pub(super) fn count_refusal(&self, reason: RefusalReason) {
        self.svc.ops.record(EventKind::Refusal, reason.label());
        tracing::warn!(pool = %self.pool(), client = self.client_id, cause = reason.label(), backend_pid = self.checkout.conn_ref().process_id, "backend loss reported to the client");
        metrics::counter!("suture_replays_refused_total", "pool" => self.pool().to_owned(), "reason" => reason.label())
            .increment(1);
    }
}
