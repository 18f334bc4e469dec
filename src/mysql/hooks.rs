//! MySQL's part of the shared command phase (`crate::session::hooks::Hooks`): its framers, a
//! new backend made ready for the session (current database, the variables session tracking
//! reported, multi-statements, every prepared statement prepared again with its id map), the
//! release with COM_RESET_CONNECTION, and every error the client is shown in MySQL's words, at
//! the sequence id the client expects.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use bytes::BytesMut;
use suture_protocol::mysql::{self, capability, command, error_code, parse_header, HEADER_LEN};
use suture_protocol::ProtocolError;

use crate::heal::{After, Answer, RefusalReason};
use crate::mysql::aborted;
use crate::mysql::backend::{MyBackendConn, MyBackendError};
use crate::mysql::backend_query::MyRunError;
use crate::mysql::book::{MyBook, Shared, Tracker};
use crate::mysql::change_user;
use crate::mysql::client_login::ClientLogin;
use crate::mysql::context::MyService;
use crate::mysql::errors::{ClientError, MyNotice};
use crate::mysql::framing::{MyBackendFramer, MyClientFramer};
use crate::mysql::lost;
use crate::mysql::manager::MyManager;
use crate::mysql::reset;
use crate::pool::{Checkout, PoolError};
use crate::session::core::Core;
use crate::session::hooks::{AbortedEnd, Hooks, LocalEnd, LocalIo, LostIo, Prepare};
use crate::session::ledger::TxState;

/// MySQL's ER_OUT_OF_RESOURCES.
const ER_OUT_OF_RESOURCES: u16 = 1041;

/// One MySQL session's hooks.
pub(crate) struct MyHooks<'a> {
    pub(crate) svc: &'a MyService,
    /// The client's login; COM_CHANGE_USER replaces it.
    pub(crate) login: Mutex<ClientLogin>,
    /// The capabilities the client logged in with (COM_CHANGE_USER keeps them).
    pub(crate) capabilities: u64,
}

impl MyHooks<'_> {
    pub(crate) fn new(svc: &MyService, login: ClientLogin) -> MyHooks<'_> {
        MyHooks {
            svc,
            capabilities: login.capabilities,
            login: Mutex::new(login),
        }
    }

    /// The client's current login.
    pub(crate) fn login(&self) -> MutexGuard<'_, ClientLogin> {
        self.login.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The database the client's login asked for.
    fn login_database(&self) -> Option<String> {
        self.login().database.clone()
    }

    fn limit(&self) -> std::time::Duration {
        self.svc.core.config.timeouts.reset
    }

    /// Rebuilds the session's restorable state on `conn`.
    async fn restore(&self, conn: &mut MyBackendConn, shared: &Shared) -> Result<(), MyRunError> {
        let limit = self.limit();
        let (schema, statements, multi, prepared) = {
            let mut t = shared.lock();
            // Until each is prepared again, no backend id is valid.
            if !t.book.statements.is_empty() {
                t.book.statements.unbind_all();
            }
            let state = &t.book.state;
            let schema = state
                .schema()
                .map(str::to_owned)
                .or_else(|| self.login_database());
            let prepared: Vec<_> = t
                .book
                .statements
                .iter()
                .map(|(id, st)| (id, st.backend_id, st.sql.clone()))
                .collect();
            (
                schema,
                state.restore_sql(&Default::default()),
                state.multi_statements(),
                prepared,
            )
        };
        if let Some(db) = schema.filter(|db| conn.state.database.as_deref() != Some(db)) {
            conn.init_db(&db, limit).await?;
        }
        for sql in statements {
            conn.query(&sql, limit).await?;
        }
        let logged_in_multi = self.capabilities & capability::CLIENT_MULTI_STATEMENTS != 0;
        if let Some(on) = multi.filter(|on| *on != logged_in_multi) {
            conn.set_option(on, limit).await?;
        }
        let mut remap = HashMap::new();
        for (id, old, sql) in prepared {
            let ok = conn.prepare(&sql, limit).await?;
            remap.insert(old, ok.statement_id);
            shared.lock().book.statements.rebind(id, ok.statement_id);
        }
        if !remap.is_empty() {
            remap_statement_ids(&mut shared.lock(), &remap);
        }
        Ok(())
    }
}

/// The requests in flight were written with the old backend's statement ids: a replay must
/// carry the new backend's.
fn remap_statement_ids(t: &mut Tracker, remap: &HashMap<u32, u32>) {
    let mut bytes = t.ledger.retained_mut();
    while let Ok(Some(header)) = parse_header(bytes, usize::MAX) {
        let len = header.packet_len().min(bytes.len());
        let (packet, rest) = std::mem::take(&mut bytes).split_at_mut(len);
        let payload = &mut packet[HEADER_LEN..];
        if header.seq == 0 {
            if let Ok(old) = mysql::statement_id(payload) {
                if let Some(&new) = remap.get(&old) {
                    let _ = mysql::set_statement_id(payload, new);
                }
            }
        }
        bytes = rest;
    }
}

impl Hooks for MyHooks<'_> {
    const PROTOCOL: &'static str = "mysql";
    type Manager = MyManager;
    type Book = MyBook;
    type Client = MyClientFramer;
    type Backend = MyBackendFramer;
    type Notice = MyNotice;

    fn core(&self) -> &Core<MyManager> {
        &self.svc.core
    }

    fn client_framer(&self) -> MyClientFramer {
        MyClientFramer::new(
            self.svc.core.config.limits.max_message_size,
            self.capabilities,
        )
    }

    fn adopt(&self, conn: &MyBackendConn) -> MyBackendFramer {
        MyBackendFramer::new(
            self.svc.core.config.limits.max_message_size,
            self.capabilities,
            conn.capabilities,
        )
    }

    async fn prepare<'a>(
        &'a self,
        conn: &'a mut MyBackendConn,
        shared: &'a Shared,
    ) -> Result<(), Prepare<MyNotice>> {
        self.restore(conn, shared).await.map_err(|err| match err {
            MyRunError::Server(notice) => Prepare::Restore(notice.to_string()),
            other => Prepare::Lost(other.to_string()),
        })
    }

    /// Back to the pool when at rest: ROLLBACK when the client left inside a transaction,
    /// COM_RESET_CONNECTION when it may have changed the session, so the next client finds a
    /// fresh session.
    async fn release<'a>(&'a self, mut checkout: Checkout<MyManager>, tracker: &'a Tracker) {
        let limit = self.limit();
        let conn = checkout.conn();
        if conn.broken || !tracker.ledger.is_empty() || tracker.fatal_code.is_some() {
            return;
        }
        let in_tx = tracker.ledger.tx() != TxState::Idle;
        if in_tx {
            if let Err(err) = conn.query("ROLLBACK", limit).await {
                tracing::info!(pool = %self.svc.core.config.name, error = %err, "backend reset failed; closing it");
                return;
            }
        }
        if tracker.dirty || tracker.tainted || in_tx {
            if let Err(err) = conn.reset_connection(limit).await {
                tracing::info!(pool = %self.svc.core.config.name, error = %err, "backend reset failed; closing it");
                return;
            }
            if let Some(db) = self
                .login_database()
                .filter(|db| conn.state.database.as_deref() != Some(db.as_str()))
            {
                if conn.init_db(&db, limit).await.is_err() {
                    return;
                }
            }
        }
        conn.rbuf.clear();
        checkout.checkin();
    }

    fn refusal_notice(&self, reason: RefusalReason) -> MyNotice {
        lost::refusal(reason)
    }

    fn pool_notice(&self, err: PoolError<MyBackendError>) -> MyNotice {
        ClientError::from(err)
            .err_packet(&self.svc.core.config.name)
            .unwrap_or_else(|| lost::refusal(RefusalReason::BackendUnavailable))
    }

    fn violation_notice(&self, err: &ProtocolError) -> MyNotice {
        MyNotice::new(
            crate::mysql::errors::ER_NET_PACKETS_OUT_OF_ORDER,
            "08S01",
            format!("Got packets out of order or a malformed packet: {err}"),
        )
    }

    fn over_budget_notice(&self, bytes: usize) -> MyNotice {
        MyNotice::new(
            ER_OUT_OF_RESOURCES,
            "HY000",
            format!(
                "Out of memory: a packet of {bytes} bytes must arrive whole, and client packets already use the memory all sessions may hold (runtime.max_buffered_bytes)"
            ),
        )
    }

    fn shutdown_notice(&self) -> MyNotice {
        MyNotice::new(
            error_code::ER_SERVER_SHUTDOWN,
            "08S01",
            "Server shutdown in progress",
        )
    }

    /// COM_CHANGE_USER and COM_RESET_CONNECTION (the framer sends nothing else here).
    async fn serve_local<'a>(&'a self, io: LocalIo<'a, MyManager, MyBook>) -> LocalEnd {
        match io.request.get(HEADER_LEN) {
            Some(&command::COM_RESET_CONNECTION) => reset::serve(self, io).await,
            _ => change_user::serve(self, io).await,
        }
    }

    /// At the sequence id of the reply in progress; otherwise 1 when it answers a command the
    /// client sent, 0 when it comes unasked.
    fn encode_notice(
        &self,
        notice: &MyNotice,
        book: &MyBook,
        request_waiting: bool,
        out: &mut BytesMut,
    ) {
        let seq = book
            .pending
            .iter()
            .find(|p| p.reply.expects_reply() && p.reply.end().is_none())
            .map(|p| p.reply.next_seq())
            .unwrap_or(u8::from(request_waiting));
        notice.encode(seq, out);
    }

    fn encode_answer(
        &self,
        answer: Answer,
        index: usize,
        _request: Option<&[u8]>,
        book: &MyBook,
        out: &mut BytesMut,
    ) -> Result<(), ProtocolError> {
        let seq = match book.pending.get(index) {
            Some(p) if !p.reply.expects_reply() => None,
            Some(p) => Some(p.reply.next_seq()),
            None => Some(1),
        };
        lost::encode_answer(answer, seq, self.capabilities, out);
        Ok(())
    }

    fn is_quit(&self, bytes: &[u8]) -> bool {
        bytes.len() > HEADER_LEN && bytes[3] == 0 && bytes[HEADER_LEN] == command::COM_QUIT
    }

    async fn serve_lost_transaction<'a>(
        &'a self,
        io: LostIo<'a, MyBook>,
        mode: After,
    ) -> AbortedEnd {
        aborted::serve(io, mode, self.capabilities).await
    }
}
