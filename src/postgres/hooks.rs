//! PostgreSQL's part of the shared command phase (`crate::session::hooks::Hooks`): its framers,
//! the cancel key that follows the session from backend to backend, the client's startup
//! settings and restored state on a new backend, the release with DISCARD ALL, and every error
//! the client is shown in PostgreSQL's words.

use bytes::BytesMut;
use suture_protocol::ProtocolError;

use crate::heal::{After, Answer, RefusalReason};
use crate::pool::{Checkout, PoolError};
use crate::postgres::aborted;
use crate::postgres::backend::{BackendConn, BackendError, RunError};
use crate::postgres::book::{PgBook, Shared, Tracker};
use crate::postgres::cancel::{CancelHandle, CancelTarget};
use crate::postgres::client_login::ClientLogin;
use crate::postgres::context::{PgManager, PgService};
use crate::postgres::errors::{ClientError, ClientNotice};
use crate::postgres::framing::{PgBackendFramer, PgClientFramer};
use crate::postgres::lost;
use crate::postgres::restore;
use crate::postgres::session::{apply_settings, release};
use crate::session::core::Core;
use crate::session::hooks::{AbortedEnd, Hooks, LocalEnd, LocalIo, LostIo, Prepare};

/// One PostgreSQL session's hooks.
pub(crate) struct PgHooks<'a> {
    pub(crate) svc: &'a PgService,
    pub(crate) login: &'a ClientLogin,
    pub(crate) cancel: &'a CancelHandle,
    /// The process ID the client was told at login: its identity across heals.
    pub(crate) client_process_id: i32,
}

impl Hooks for PgHooks<'_> {
    const PROTOCOL: &'static str = "postgres";
    type Manager = PgManager;
    type Book = PgBook;
    type Client = PgClientFramer;
    type Backend = PgBackendFramer;
    type Notice = ClientNotice;

    fn core(&self) -> &Core<PgManager> {
        &self.svc.core
    }

    fn client_framer(&self) -> PgClientFramer {
        PgClientFramer::new(self.svc.core.config.limits.max_message_size)
    }

    fn adopt(&self, conn: &BackendConn) -> PgBackendFramer {
        self.cancel.retarget(CancelTarget {
            addr: conn.addr,
            process_id: conn.process_id,
            secret_key: conn.secret_key,
        });
        PgBackendFramer::new(
            self.svc.core.config.limits.max_message_size,
            self.client_process_id,
            conn.process_id,
        )
    }

    /// Applies the client's startup settings and restores its session state.
    async fn prepare<'a>(
        &'a self,
        conn: &'a mut BackendConn,
        shared: &'a Shared,
    ) -> Result<(), Prepare<ClientNotice>> {
        match apply_settings(self.svc, conn, self.login).await {
            Ok(()) => {}
            Err(err @ RunError::Wire(_)) => return Err(Prepare::Lost(err.to_string())),
            Err(err) => {
                let notice = ClientError::Settings(err)
                    .notice(&self.svc.core.config.name)
                    .unwrap_or_else(|| lost::fatal_notice(RefusalReason::BackendUnavailable));
                return Err(Prepare::Settings(notice));
            }
        }
        let state = std::mem::take(&mut shared.lock().book.state);
        let core = &self.svc.core;
        let (limit, max) = (
            core.config.timeouts.reset,
            core.config.limits.max_message_size,
        );
        let restored = restore::restore(conn, &state, limit, max).await;
        shared.lock().book.state = state;
        restored.map_err(|err| match err {
            RunError::Wire(_) => Prepare::Lost(err.to_string()),
            other => Prepare::Restore(other.to_string()),
        })
    }

    async fn release<'a>(&'a self, checkout: Checkout<PgManager>, tracker: &'a Tracker) {
        release(self.svc, checkout, tracker, self.cancel).await;
    }

    fn refusal_notice(&self, reason: RefusalReason) -> ClientNotice {
        lost::fatal_notice(reason)
    }

    fn pool_notice(&self, err: PoolError<BackendError>) -> ClientNotice {
        ClientError::Pool(err)
            .notice(&self.svc.core.config.name)
            .unwrap_or_else(|| lost::fatal_notice(RefusalReason::BackendUnavailable))
    }

    fn violation_notice(&self, err: &ProtocolError) -> ClientNotice {
        ClientNotice {
            severity: "FATAL",
            code: "08P01".to_owned(),
            message: format!("invalid message: {err}"),
            detail: None,
        }
    }

    fn over_budget_notice(&self, bytes: usize) -> ClientNotice {
        ClientNotice {
            severity: "FATAL",
            code: "53200".to_owned(),
            message: format!(
                "out of memory: a message of {bytes} bytes must arrive whole, and client messages already use the memory all sessions may hold (runtime.max_buffered_bytes)"
            ),
            detail: None,
        }
    }

    fn shutdown_notice(&self) -> ClientNotice {
        ClientNotice {
            severity: "FATAL",
            code: "57P01".to_owned(),
            message: "terminating connection because Suture is shutting down".to_owned(),
            detail: None,
        }
    }

    /// PostgreSQL's framer never asks for one: a protocol error.
    async fn serve_local<'a>(&'a self, io: LocalIo<'a, PgManager, PgBook>) -> LocalEnd {
        let notice =
            self.violation_notice(&ProtocolError::Malformed("request not handled by Suture"));
        let mut out = BytesMut::new();
        notice.encode(&mut out);
        let limit = self.svc.core.config.timeouts.client_write;
        let _ = crate::wire::write_all(io.client_write, &out, limit).await;
        LocalEnd::End
    }

    fn encode_notice(
        &self,
        notice: &ClientNotice,
        _book: &PgBook,
        _request_waiting: bool,
        out: &mut BytesMut,
    ) {
        notice.encode(out);
    }

    fn encode_answer(
        &self,
        answer: Answer,
        _index: usize,
        request: Option<&[u8]>,
        _book: &PgBook,
        out: &mut BytesMut,
    ) -> Result<(), ProtocolError> {
        lost::encode_answer(answer, request, out)
    }

    fn is_quit(&self, bytes: &[u8]) -> bool {
        bytes.first() == Some(&b'X')
    }

    async fn serve_lost_transaction<'a>(
        &'a self,
        io: LostIo<'a, PgBook>,
        mode: After,
    ) -> AbortedEnd {
        aborted::serve(io, mode).await
    }
}
