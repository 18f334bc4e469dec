//! COM_CHANGE_USER, served by Suture as a server serves it: the client authenticates again as
//! the new user (against the last scramble it was sent), the session moves to a backend of that
//! user's sub-pool (its database, its character set), the old backend is released as at the end
//! of a session, and the session starts over with no state, as after a fresh login. A failed
//! authentication gets ERR 1045 and the connection is closed, as servers do.

use bytes::BytesMut;
use suture_protocol::mysql::HEADER_LEN;

use crate::mysql::book::{MyBook, Tracker};
use crate::mysql::client_login::{self, LoginSettings};
use crate::mysql::errors::{ClientError, MyNotice};
use crate::mysql::hooks::MyHooks;
use crate::mysql::manager::MyManager;
use crate::mysql::session::key_of;
use crate::session::hooks::{Hooks, LocalEnd, LocalIo};
use crate::wire;

/// Serves one COM_CHANGE_USER (`io.request`).
pub(crate) async fn serve(hooks: &MyHooks<'_>, io: LocalIo<'_, MyManager, MyBook>) -> LocalEnd {
    let svc = hooks.svc;
    let config = &svc.core.config;
    let write_limit = config.timeouts.client_write;
    let peer = io.client_read.peer().ip();
    let settings = LoginSettings::new(config, peer);
    let current = hooks.login().clone();
    let payload = io.request.get(HEADER_LEN..).unwrap_or_default();
    let changed = {
        let mut stream = tokio::io::join(&mut *io.client_read, &mut *io.client_write);
        let exchange =
            client_login::change_user(&settings, &current, &mut stream, io.cbuf, payload, 1);
        tokio::time::timeout(config.timeouts.client_login, exchange)
            .await
            .unwrap_or(Err(ClientError::LoginTimeout))
    };
    let login = match changed {
        Ok(login) => login,
        Err(err) => {
            if let Some(suppressed) = svc.core.log_limit.allow("change_user") {
                tracing::info!(pool = %config.name, error = %err, suppressed, "COM_CHANGE_USER refused; closing the client");
            }
            if err.is_auth_failure() {
                tokio::time::sleep(config.timeouts.auth_failure_delay).await;
            }
            let seq = err.login_seq();
            if let (Some(notice), Some(seq)) = (err.err_packet(&config.name), seq) {
                send(io.client_write, &notice, seq, write_limit).await;
            }
            return LocalEnd::End;
        }
    };
    let mut fresh = match svc.core.pool.checkout(&key_of(&login)).await {
        Ok(checkout) => checkout,
        Err(err) => {
            let notice = hooks.pool_notice(err);
            send(io.client_write, &notice, login.next_seq, write_limit).await;
            return LocalEnd::End;
        }
    };
    let mut out = BytesMut::with_capacity(16);
    client_login::encode_login_ok(&login, fresh.conn().state.status, &mut out);
    // The old backend goes back as after a session (always reset: it served another user's
    // session), and the session starts over on the new one.
    let mut old_session = Tracker::default();
    old_session.dirty = true;
    old_session.fatal_code = io.shared.lock().fatal_code.clone();
    let status = fresh.conn_ref().state.status;
    io.shared
        .lock()
        .session_reset(login.database.clone(), status);
    let old = std::mem::replace(io.checkout, fresh);
    hooks.release(old, &old_session).await;
    tracing::debug!(pool = %config.name, from = %current.user, to = %login.user, "COM_CHANGE_USER");
    *hooks.login() = login;
    match wire::write_all(io.client_write, &out, write_limit).await {
        Ok(()) => LocalEnd::Served { new_backend: true },
        Err(_) => LocalEnd::End,
    }
}

async fn send<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut W,
    notice: &MyNotice,
    seq: u8,
    limit: std::time::Duration,
) {
    let mut out = BytesMut::new();
    notice.encode(seq, &mut out);
    let _ = wire::write_all(writer, &out, limit).await;
}
