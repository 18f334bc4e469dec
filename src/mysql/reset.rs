//! COM_RESET_CONNECTION, served by Suture: the backend is reset (which rolls back its
//! transaction and clears variables, user variables, temporary tables and prepared
//! statements) and its session tracking turned on again, which the reset would otherwise leave
//! at the server's defaults, so later changes would go unseen; the current database is kept,
//! as the server keeps it. A backend lost on the way is simply replaced: a fresh one has no
//! state either. The session's recorded state starts over, and the client gets OK.

use bytes::BytesMut;

use crate::mysql::book::MyBook;
use crate::mysql::client_login;
use crate::mysql::hooks::MyHooks;
use crate::mysql::manager::MyManager;
use crate::session::hooks::{Hooks, LocalEnd, LocalIo};
use crate::session::link::Link as _;
use crate::wire;

/// Serves one COM_RESET_CONNECTION.
pub(crate) async fn serve(hooks: &MyHooks<'_>, io: LocalIo<'_, MyManager, MyBook>) -> LocalEnd {
    let config = &hooks.svc.core.config;
    let limit = config.timeouts.reset;
    let schema = {
        let t = io.shared.lock();
        t.book
            .state
            .schema()
            .map(str::to_owned)
            .or_else(|| hooks.login().database.clone())
    };
    let mut new_backend = false;
    let conn = io.checkout.conn();
    let mut reset = conn.reset_connection(limit).await;
    if reset.is_ok() {
        if let Some(db) = schema
            .as_deref()
            .filter(|db| conn.state.database.as_deref() != Some(*db))
        {
            reset = conn.init_db(db, limit).await;
        }
    }
    if let Err(err) = reset {
        tracing::info!(pool = %config.name, error = %err, "backend lost during COM_RESET_CONNECTION; replacing it");
        io.checkout.conn().set_broken();
        if let Err(err) = io.checkout.replace().await {
            let notice = hooks.pool_notice(err);
            let mut out = BytesMut::new();
            notice.encode(1, &mut out);
            let _ = wire::write_all(io.client_write, &out, config.timeouts.client_write).await;
            return LocalEnd::End;
        }
        new_backend = true;
        let conn = io.checkout.conn();
        if let Some(db) = schema
            .as_deref()
            .filter(|db| conn.state.database.as_deref() != Some(*db))
        {
            if conn.init_db(db, limit).await.is_err() {
                return LocalEnd::End;
            }
        }
    }
    {
        let status = io.checkout.conn_ref().state.status;
        io.shared.lock().session_reset(schema, status);
    }
    let mut out = BytesMut::with_capacity(16);
    let mut login = hooks.login().clone();
    login.next_seq = 1;
    client_login::encode_login_ok(&login, io.checkout.conn_ref().state.status, &mut out);
    match wire::write_all(io.client_write, &out, config.timeouts.client_write).await {
        Ok(()) => LocalEnd::Served { new_backend },
        Err(_) => LocalEnd::End,
    }
}
