//! One MySQL client connection from accept to close: the greeting (the server's own, learned
//! from a backend) → login (with the client-login deadline) → checkout of a backend for the
//! user, database and the capability flags that shape replies → the OK that ends the login →
//! the command phase → releasing the backend.

use std::sync::Arc;

use bytes::BytesMut;

use crate::mysql::client_login::{self, ClientLogin, LoginSettings};
use crate::mysql::context::MyService;
use crate::mysql::errors::{ClientError, MyNotice};
use crate::mysql::hooks::MyHooks;
use crate::mysql::manager::{MyKey, SHAPE_CAPABILITIES};
use crate::net::client_socket::ClientSocket;
use crate::session::command_phase;
use crate::wire;

/// Serves one client connection until it ends. Never panics on client input; every error is
/// reported to the client where the protocol allows and logged.
pub(crate) async fn serve(svc: Arc<MyService>, mut stream: ClientSocket, client_id: u64) {
    let write_limit = svc.core.config.timeouts.client_write;
    let greeting = match svc.greeting().await {
        Ok(greeting) => greeting,
        Err(err) => {
            count("backend_unavailable");
            if let Some(suppressed) = svc.core.log_limit.allow("greeting") {
                tracing::warn!(pool = %svc.core.config.name, error = %err, suppressed, "no server to learn the greeting from; client refused");
            }
            let notice = MyNotice::new(
                suture_protocol::mysql::error_code::CR_CONN_HOST_ERROR,
                "HY000",
                format!(
                    "Can't connect to MySQL server through Suture pool '{}': {}",
                    svc.core.config.name,
                    crate::mysql::errors::BackendFailure::client_reason(&err)
                ),
            );
            let mut out = BytesMut::new();
            notice.encode_before_handshake(&mut out);
            let _ = wire::write_all(&mut stream, &out, write_limit).await;
            return;
        }
    };
    let peer = stream.peer();
    let settings = LoginSettings::new(&svc.core.config, peer.ip());
    let mut buf = BytesMut::with_capacity(1024);
    let login = tokio::time::timeout(
        svc.core.config.timeouts.client_login,
        client_login::login(&settings, &greeting, &mut stream, &mut buf),
    )
    .await
    .unwrap_or(Err(ClientError::LoginTimeout));
    let login = match login {
        Ok(login) => login,
        Err(err) => return fail(&svc, &mut stream, err, None).await,
    };
    let mut checkout = match svc.core.pool.checkout(&key_of(&login)).await {
        Ok(checkout) => checkout,
        Err(err) => {
            let err = ClientError::from(err);
            return fail(&svc, &mut stream, err, Some(login.next_seq)).await;
        }
    };
    let conn = checkout.conn();
    let mut out = BytesMut::with_capacity(64);
    client_login::encode_login_ok(&login, conn.state.status, &mut out);
    let written = wire::write_all(&mut stream, &out, write_limit).await;
    // Not kept for the whole session.
    drop(out);
    if let Err(err) = written {
        tracing::debug!(error = %err, "client left during login");
        return;
    }
    count("accepted");
    tracing::debug!(client = client_id, peer = %peer, user = %login.user, database = ?login.database, backend_id = conn.connection_id, backend = %conn.addr, "session started");
    let hooks = MyHooks::new(&svc, login);
    command_phase::run(hooks, stream, buf, checkout, client_id).await;
}

/// The sub-pool a client's backends come from: its user and database, and what its login
/// fixes about the session (the capability flags that shape replies, the character set).
pub(crate) fn key_of(login: &ClientLogin) -> MyKey {
    MyKey {
        user: login.user.clone(),
        database: login.database.clone(),
        capabilities: login.capabilities & SHAPE_CAPABILITIES,
        character_set: login.character_set,
    }
}

fn count(result: &'static str) {
    metrics::counter!("suture_client_connections_total", "protocol" => "mysql", "result" => result)
        .increment(1);
}

/// A client over `max_client_connections` gets what a server over `max_connections` sends:
/// ERR 1040 instead of the greeting. Logged, rate-limited.
pub(crate) async fn refuse_at_cap(svc: Arc<MyService>, mut stream: ClientSocket) {
    count("rejected");
    if let Some(suppressed) = svc.core.log_limit.allow("rejected") {
        tracing::info!(pool = %svc.core.config.name, limit = svc.core.config.sizes.max_client_connections, suppressed, "client refused: too many connections (max_client_connections)");
    }
    client_login::refuse_at_cap(&mut stream, svc.core.config.timeouts.client_write).await;
}

/// Tells the client why it cannot be served (a failed authentication only after
/// `auth_failure_delay`), counts and logs it, rate-limited per cause. `seq` is the sequence id
/// the ERR gets when the error does not fix one.
async fn fail(svc: &MyService, stream: &mut ClientSocket, err: ClientError, seq: Option<u8>) {
    let label = err.metrics_label();
    count(label);
    if let Some(suppressed) = svc.core.log_limit.allow(label) {
        tracing::info!(pool = %svc.core.config.name, peer = %stream.peer(), error = %err, suppressed, "client refused");
    }
    if err.is_auth_failure() {
        tokio::time::sleep(svc.core.config.timeouts.auth_failure_delay).await;
    }
    let Some(notice) = err.err_packet(&svc.core.config.name) else {
        return;
    };
    let Some(seq) = err.login_seq().or(seq) else {
        return;
    };
    let mut out = BytesMut::new();
    notice.encode(seq, &mut out);
    let _ = wire::write_all(stream, &out, svc.core.config.timeouts.client_write).await;
}
