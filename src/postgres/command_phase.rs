//! The command phase of one session: relay until the client leaves; when the backend is lost,
//! act on the healing decision (DESIGN §3, §4): swap in a new backend and restore the session,
//! replay a request that provably never ran, show an aborted transaction, or tell the client the
//! truth and close. Finally release the backend.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use suture_protocol::pg::TxStatus;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::heal::{self, Decision, LossFacts, RefusalReason};
use crate::pool::Checkout;
use crate::postgres::aborted::{self, AbortedEnd};
use crate::postgres::backend::{BackendConn, RunError};
use crate::postgres::cancel::{CancelHandle, CancelTarget};
use crate::postgres::client_login::ClientLogin;
use crate::postgres::context::{PgManager, PgService};
use crate::postgres::errors::{ClientError, ClientNotice};
use crate::postgres::relay::{
    self, BackendSide, BackendWatch, ClientBoundary, RelayEnd, RelayLimits,
};
use crate::postgres::restore;
use crate::postgres::session::{apply_settings, release, send_notice};
use crate::postgres::tracker::Shared;
use crate::retry_budget::{replay_backoff, MAX_REPLAYS_PER_REQUEST};

/// One session's command phase.
struct CommandPhase<'a> {
    svc: &'a PgService,
    login: &'a ClientLogin,
    cancel: &'a CancelHandle,
    client_read: OwnedReadHalf,
    client_write: OwnedWriteHalf,
    /// Client bytes not yet sent to a backend.
    cbuf: BytesMut,
    checkout: Checkout<PgManager>,
    shared: Shared,
    boundary: ClientBoundary,
    limits: RelayLimits,
    /// The process ID the client was told at login: its identity across heals.
    client_process_id: i32,
    /// When the current backend is to be rotated out.
    next_rotation: Option<Instant>,
}

/// How long a backend past its lifetime keeps serving when no fresh one could be had.
const ROTATION_RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// How often a heal tries a fresh backend that dies while the session is restored on it.
const SWAP_ATTEMPTS: u32 = 3;

/// Why preparing a new backend for the session failed.
enum Prepare {
    /// The new backend's connection failed.
    Lost(RunError),
    /// The client's startup settings were refused.
    Settings(RunError),
    /// The session state could not be rebuilt.
    Restore(RunError),
}

/// What to do after handling a lost backend.
enum Next {
    /// Relay again, on the new backend.
    Resume,
    /// The session is over.
    End,
}

/// Runs the command phase, then releases the backend.
pub(super) async fn run(
    svc: &PgService,
    stream: TcpStream,
    cbuf: BytesMut,
    mut checkout: Checkout<PgManager>,
    login: &ClientLogin,
    cancel: &CancelHandle,
) {
    let (client_read, client_write) = stream.into_split();
    let client_process_id = checkout.conn().process_id;
    let mut phase = CommandPhase {
        svc,
        login,
        cancel,
        client_read,
        client_write,
        cbuf,
        checkout,
        shared: Shared::default(),
        boundary: ClientBoundary::default(),
        limits: RelayLimits {
            max_message_size: svc.config.limits.max_message_size,
            client_write: svc.config.timeouts.client_write,
            backend_write: svc.config.timeouts.backend_write,
        },
        client_process_id,
        next_rotation: None,
    };
    phase.next_rotation = phase.checkout.retire_at();
    loop {
        let end = phase.relay().await;
        let next = match end {
            RelayEnd::ClientTerminated => {
                tracing::debug!("client terminated the session");
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
            RelayEnd::Rotate => phase.rotate().await,
            RelayEnd::CheckBackend => phase.check_backend().await,
            RelayEnd::Stalled => {
                tracing::info!(pool = %phase.pool(), "a request that executes nothing got no answer; backend given up");
                phase.checkout.conn().broken = true;
                let waited = phase.svc.config.timeouts.health_check_after;
                phase
                    .backend_lost(&crate::postgres::wire::WireError::Timeout(waited))
                    .await
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
    release(svc, phase.checkout, &tracker).await;
}

impl CommandPhase<'_> {
    fn pool(&self) -> &str {
        &self.svc.config.name
    }

    /// Swaps a backend past its maximum lifetime for a fresh one while the client is at rest
    /// (DESIGN §4: limits at the server or a proxy in between never reach the client). If no
    /// fresh backend can be had, the old one keeps serving and rotation is tried again later.
    async fn rotate(&mut self) -> Next {
        let fresh = match self.svc.pool.checkout(&self.login.key()).await {
            Ok(mut fresh) => match self.prepare(fresh.conn()).await {
                Ok(()) => Some(fresh),
                Err(_) => None,
            },
            Err(_) => None,
        };
        let Some(fresh) = fresh else {
            tracing::info!(pool = %self.pool(), "no fresh backend for rotation; keeping the current one for now");
            self.next_rotation = Some(Instant::now() + ROTATION_RETRY_AFTER_FAILURE);
            return Next::Resume;
        };
        tracing::debug!(pool = %self.pool(), "rotated a backend past its maximum lifetime");
        self.checkout.count_close("max_lifetime");
        self.checkout.conn().broken = true;
        self.adopt(fresh);
        Next::Resume
    }

    /// Makes `fresh` the session's backend: cancel requests go to it, and its own maximum
    /// lifetime decides the next rotation. The old checkout is dropped (closed or returned).
    fn adopt(&mut self, mut fresh: Checkout<PgManager>) {
        let conn = fresh.conn();
        self.cancel.retarget(CancelTarget {
            addr: conn.addr,
            process_id: conn.process_id,
            secret_key: conn.secret_key,
        });
        self.next_rotation = fresh.retire_at();
        self.checkout = fresh;
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
                self.backend_lost(&crate::postgres::wire::WireError::Io(
                    std::io::Error::other(err.to_string()),
                ))
                .await
            }
        }
    }

    /// Relays in both directions until one side ends.
    async fn relay(&mut self) -> RelayEnd {
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
            writer,
            watch,
            &self.shared,
            self.limits,
        );
        let down = relay::backend_to_client(
            reader,
            rbuf,
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

    async fn client_protocol_error(&mut self, err: ClientError) {
        tracing::info!(pool = %self.pool(), error = %err, "client protocol violation");
        metrics::counter!("suture_client_connections_total", "protocol" => "postgres", "result" => "protocol_error")
            .increment(1);
        if self.boundary.at_boundary() {
            if let Some(notice) = err.notice() {
                send_notice(&mut self.client_write, &notice, self.limits.client_write).await;
            }
        }
    }

    /// Acts on the §3 decision for a lost backend.
    async fn backend_lost(&mut self, lost: &crate::postgres::wire::WireError) -> Next {
        let facts = self.shared.lock().loss_facts();
        let decision = heal::decide(facts);
        tracing::warn!(pool = %self.pool(), error = %lost, ?decision, ?facts, "backend connection lost");
        let decision = self.within_budget(decision).await;
        match decision {
            Decision::Heal | Decision::Replay(_) => {
                if !self.swap_backend().await {
                    return Next::End;
                }
                let mut tracker = self.shared.lock();
                if let Decision::Replay(reason) = decision {
                    // What was written to the dead backend (refused unread, or harmless to run
                    // twice) goes in front of what was never sent.
                    if !tracker.sent.is_empty() {
                        let mut again = std::mem::take(&mut tracker.sent);
                        again.extend_from_slice(&self.cbuf);
                        self.cbuf = again;
                    }
                    metrics::counter!("suture_replays_total", "pool" => self.pool().to_owned(), "reason" => reason.label())
                        .increment(1);
                    tracing::info!(pool = %self.pool(), reason = reason.label(), "request replayed on a new backend");
                } else {
                    metrics::counter!("suture_session_heals_total", "pool" => self.pool().to_owned()).increment(1);
                    tracing::info!(pool = %self.pool(), "backend swapped under an idle session");
                }
                tracker.reset_requests();
                Next::Resume
            }
            Decision::Refuse(RefusalReason::InTransaction) if self.can_show_aborted(facts) => {
                self.count_refusal(RefusalReason::InTransaction);
                self.show_aborted_transaction(facts).await
            }
            Decision::Refuse(
                reason @ (RefusalReason::MaybeExecuted
                | RefusalReason::CommitUnknown
                | RefusalReason::BudgetExhausted),
            ) if self.can_continue_after_error() => {
                self.count_refusal(reason);
                self.error_then_continue(reason).await
            }
            Decision::Refuse(reason) => {
                self.count_refusal(reason);
                self.refuse(reason, facts).await;
                Next::End
            }
        }
    }

    /// A replay happens only while this request has replays left and the pool's budget has a
    /// token; later attempts of one request wait a jittered backoff first.
    async fn within_budget(&self, decision: Decision) -> Decision {
        let Decision::Replay(_) = decision else {
            return decision;
        };
        let attempt = {
            let mut tracker = self.shared.lock();
            tracker.replays += 1;
            tracker.replays
        };
        if attempt > MAX_REPLAYS_PER_REQUEST || !self.svc.replay_budget.try_spend() {
            tracing::warn!(pool = %self.pool(), attempt, "replay refused: budget exhausted");
            return Decision::Refuse(RefusalReason::BudgetExhausted);
        }
        tokio::time::sleep(replay_backoff(attempt)).await;
        decision
    }

    fn count_refusal(&self, reason: RefusalReason) {
        metrics::counter!("suture_replays_refused_total", "pool" => self.pool().to_owned(), "reason" => reason.label())
            .increment(1);
    }

    /// A new backend with the client's settings and restorable state, the client's cancels
    /// pointed at it. On failure the client has been told and the session must end.
    async fn swap_backend(&mut self) -> bool {
        for attempt in 1..=SWAP_ATTEMPTS {
            let mut checkout = match self.svc.pool.checkout(&self.login.key()).await {
                Ok(checkout) => checkout,
                Err(err) => {
                    self.tell(ClientError::Pool(err).notice()).await;
                    return false;
                }
            };
            let prepared = self.prepare(checkout.conn()).await;
            match prepared {
                Ok(()) => {
                    self.adopt(checkout);
                    return true;
                }
                // The new backend died too (the fault that took the old one may have taken
                // it): try another.
                Err(Prepare::Lost(err)) if attempt < SWAP_ATTEMPTS => {
                    tracing::info!(pool = %self.pool(), error = %err, attempt, "new backend lost while restoring the session");
                }
                Err(Prepare::Lost(err)) | Err(Prepare::Restore(err)) => {
                    tracing::warn!(pool = %self.pool(), error = %err, "session state could not be restored on the new backend");
                    self.count_refusal(RefusalReason::TaintedSession);
                    self.tell(Some(refusal_notice(RefusalReason::TaintedSession)))
                        .await;
                    return false;
                }
                Err(Prepare::Settings(err)) => {
                    self.tell(ClientError::Settings(err).notice()).await;
                    return false;
                }
            }
        }
        false
    }

    /// Applies the client's startup settings and restores its session state on `conn`.
    async fn prepare(&mut self, conn: &mut BackendConn) -> Result<(), Prepare> {
        let lost = |err: RunError| match err {
            RunError::Wire(_) => Prepare::Lost(err),
            other => Prepare::Restore(other),
        };
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
        let restored = restore::restore(conn, &state, limit, max).await;
        self.shared.lock().state = state;
        restored.map_err(lost)
    }

    /// Sends `notice` if the client's stream is at a message boundary.
    async fn tell(&mut self, notice: Option<ClientNotice>) {
        if let (Some(notice), true) = (notice, self.boundary.at_boundary()) {
            send_notice(&mut self.client_write, &notice, self.limits.client_write).await;
        }
    }

    /// The aborted-transaction view needs the client at a message boundary, at most one request
    /// in flight (answered here with the error) and no FATAL already forwarded.
    fn can_show_aborted(&self, facts: LossFacts) -> bool {
        let tracker = self.shared.lock();
        self.boundary.at_boundary()
            && tracker.pending <= 1
            && tracker.fatal_code.is_none()
            && !facts.may_commit
    }

    /// Shows the client its transaction as aborted until it ends it, then resumes on a new
    /// backend outside a transaction.
    async fn show_aborted_transaction(&mut self, facts: LossFacts) -> Next {
        self.drop_refused_request();
        let announce = !facts.request_in_flight;
        if !announce {
            let mut out = BytesMut::new();
            if aborted::lost_reply(&mut out).is_err()
                || crate::postgres::wire::write_all(
                    &mut self.client_write,
                    &out,
                    self.limits.client_write,
                )
                .await
                .is_err()
            {
                return Next::End;
            }
        }
        // Whatever was held for the dead backend belongs to the aborted transaction.
        let (max, limit) = (self.limits.max_message_size, self.limits.client_write);
        let end = aborted::serve(
            &mut self.client_read,
            &mut self.cbuf,
            &mut self.client_write,
            &self.shared,
            announce,
            max,
            limit,
        )
        .await;
        match end {
            AbortedEnd::TransactionEnded => {}
            AbortedEnd::ClientGone(err) => {
                tracing::debug!(error = %err, "client left during the aborted transaction");
                return Next::End;
            }
            AbortedEnd::ClientProtocol(err) => {
                self.client_protocol_error(ClientError::from(err)).await;
                return Next::End;
            }
        }
        self.resume_outside_transaction().await
    }

    /// Carries on on a new backend after the client was told of a loss and its transaction (if
    /// any) is over.
    async fn resume_outside_transaction(&mut self) -> Next {
        if !self.swap_backend().await {
            return Next::End;
        }
        let mut tracker = self.shared.lock();
        tracker.reset_requests();
        tracker.tx_status = TxStatus::Idle;
        tracker.replays = 0;
        Next::Resume
    }

    /// Forgets the part of the refused request that was still being written when the backend
    /// was lost, so it is never sent to the next backend.
    fn drop_refused_request(&mut self) {
        let mut tracker = self.shared.lock();
        let n = std::mem::take(&mut tracker.in_write).min(self.cbuf.len());
        bytes::Buf::advance(&mut self.cbuf, n);
    }

    /// A lost request can be answered with an error and the session continue when it was the
    /// only one in flight, the client is at a message boundary and no FATAL reached it.
    fn can_continue_after_error(&self) -> bool {
        let tracker = self.shared.lock();
        self.boundary.at_boundary() && tracker.pending == 1 && tracker.fatal_code.is_none()
    }

    /// Answers the lost request with the §3 error and ReadyForQuery (idle: the transaction,
    /// if any, is over either way), then carries on on a new backend.
    async fn error_then_continue(&mut self, reason: RefusalReason) -> Next {
        self.drop_refused_request();
        let mut notice = refusal_notice(reason);
        notice.severity = "ERROR";
        let mut out = BytesMut::new();
        let encoded = suture_protocol::pg::encode_error_response(
            notice.severity,
            &notice.code,
            &notice.message,
            None,
            &mut out,
        );
        suture_protocol::pg::encode_ready_for_query(TxStatus::Idle, &mut out);
        let limit = self.limits.client_write;
        if encoded.is_err()
            || crate::postgres::wire::write_all(&mut self.client_write, &out, limit)
                .await
                .is_err()
        {
            return Next::End;
        }
        self.resume_outside_transaction().await
    }

    /// Tells the client what it lost (DESIGN §3 table); the session then ends.
    async fn refuse(&mut self, reason: RefusalReason, facts: LossFacts) {
        if !self.boundary.at_boundary() || self.shared.lock().fatal_code.is_some() {
            return;
        }
        // Lost while the client was idle: answer its next request with the error, so the
        // driver reads it as that request's reply (an unsolicited error on an idle connection
        // is dropped by drivers such as tokio-postgres).
        if !facts.request_in_flight && self.cbuf.is_empty() {
            let wait = self.client_read.read_buf(&mut self.cbuf);
            if !matches!(wait.await, Ok(n) if n > 0) {
                return;
            }
        }
        let notice = refusal_notice(reason);
        send_notice(&mut self.client_write, &notice, self.limits.client_write).await;
    }
}

/// What the client is told when a lost backend cannot be hidden (DESIGN §3 table). The
/// connection is closed after it.
fn refusal_notice(reason: RefusalReason) -> ClientNotice {
    let (code, message) = match reason {
        RefusalReason::MaybeExecuted => (
            "40003",
            "connection to the database server was lost while the statement was running; it may or may not have been executed",
        ),
        RefusalReason::InTransaction => (
            "08006",
            "connection to the database server was lost inside a transaction; the transaction was rolled back",
        ),
        RefusalReason::CommitUnknown => (
            "08007",
            "connection to the database server was lost during COMMIT; the transaction outcome is unknown",
        ),
        RefusalReason::BudgetExhausted => (
            "08006",
            "connection to the database server was lost; the statement was not executed and was not retried because the replay budget is used up",
        ),
        RefusalReason::TaintedSession => (
            "08006",
            "connection to the database server was lost and the session state (temporary tables, locks, cursors, SQL-level prepared statements) could not be restored",
        ),
    };
    ClientNotice {
        severity: "FATAL",
        code: code.to_owned(),
        message: message.to_owned(),
        detail: None,
    }
}
