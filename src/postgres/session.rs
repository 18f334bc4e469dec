//! One PostgreSQL client connection from accept to close, as a chain of stages: login (with the
//! client-login deadline) → checkout of a backend for (user, database) → applying the client's
//! startup settings and options → the login reply → the command phase → releasing the backend
//! (the client's cancel key retired first, then a reset with DISCARD ALL when the client changed
//! session state, or a close when it is not at rest).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::BytesMut;
use suture_protocol::pg::{self, TxStatus};

use crate::net::client_socket::ClientSocket;
use crate::pool::Checkout;
use crate::postgres::backend::{BackendConn, RunError};
use crate::postgres::book::Tracker;
use crate::postgres::cancel::{CancelHandle, CancelTarget};
use crate::postgres::client_login::{self, ClientLogin, LoginOutcome};
use crate::postgres::context::{PgManager, PgService};
use crate::postgres::errors::{ClientError, ClientNotice};
use crate::postgres::hooks::PgHooks;
use crate::postgres::wire;
use crate::session::command_phase;
use crate::session::ledger::TxState;

/// Serves one client connection until it ends. Never panics on client input; every error is
/// reported to the client where the protocol allows and logged. `client_id` names the session
/// in logs.
pub(crate) async fn serve(svc: Arc<PgService>, mut stream: ClientSocket, client_id: u64) {
    let mut buf = BytesMut::with_capacity(1024);
    let login_limit = svc.core.config.timeouts.client_login;
    let login = match tokio::time::timeout(
        login_limit,
        client_login::login(&svc, &mut stream, &mut buf),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(ClientError::LoginTimeout),
    };
    let login = match login {
        Ok(LoginOutcome::Authenticated(login)) => login,
        Ok(LoginOutcome::Cancelled) => return,
        Err(err) => return fail(&svc, &mut stream, err).await,
    };
    let key = login.key();
    let mut checkout = match svc.core.pool.checkout(&key).await {
        Ok(checkout) => checkout,
        Err(err) => return fail(&svc, &mut stream, ClientError::Pool(err)).await,
    };
    if let Err(err) = apply_settings(&svc, checkout.conn(), &login).await {
        return fail(&svc, &mut stream, ClientError::Settings(err)).await;
    }
    let conn = checkout.conn();
    let target = CancelTarget {
        addr: conn.addr,
        process_id: conn.process_id,
        secret_key: conn.secret_key,
    };
    let cancel = svc.cancels.register(conn.process_id, target);
    let reply = match login_reply(conn, &cancel) {
        Ok(reply) => reply,
        Err(err) => return fail(&svc, &mut stream, ClientError::from(err)).await,
    };
    let written = wire::write_all(&mut stream, &reply, svc.core.config.timeouts.client_write).await;
    // Not kept for the whole session.
    drop(reply);
    if let Err(err) = written {
        tracing::debug!(error = %err, "client left during login");
        return;
    }
    metrics::counter!("suture_client_connections_total", "protocol" => "postgres", "result" => "accepted").increment(1);
    tracing::debug!(client = client_id, peer = %stream.peer(), user = %login.user, database = %login.database, backend_id = conn.process_id, "session started");
    let hooks = PgHooks {
        svc: &svc,
        login: &login,
        cancel: &cancel,
        client_process_id: conn.process_id,
    };
    command_phase::run(hooks, stream, buf, checkout, client_id).await;
}

/// A client over `max_client_connections` is answered as PostgreSQL answers it: after the SSL
/// negotiation libpq starts with (so it reads "sorry, too many clients already", not an error
/// during the SSL exchange), FATAL 53300. A cancel it carries is still routed. Bounded by the
/// client-login deadline; logged, rate-limited.
pub(crate) async fn refuse_at_cap(svc: Arc<PgService>, mut stream: ClientSocket) {
    metrics::counter!("suture_client_connections_total", "protocol" => "postgres", "result" => "rejected")
        .increment(1);
    if let Some(suppressed) = svc.core.log_limit.allow("rejected") {
        tracing::info!(pool = %svc.core.config.name, limit = svc.core.config.sizes.max_client_connections, suppressed, "client refused: too many clients already (max_client_connections)");
    }
    let refuse = async {
        let mut buf = BytesMut::new();
        if let Ok(Some(_)) = client_login::read_startup(&svc, &mut stream, &mut buf).await {
            let notice = ClientNotice {
                severity: "FATAL",
                code: "53300".to_owned(),
                message: "sorry, too many clients already".to_owned(),
                detail: None,
            };
            send_notice(&mut stream, &notice, svc.core.config.timeouts.client_write).await;
        }
    };
    let _ = tokio::time::timeout(svc.core.config.timeouts.client_login, refuse).await;
}

/// Tells the client why it cannot be served, counts and logs it (rate-limited per cause: a
/// client can fail logins at will), and lets the connection close. A failed authentication is
/// answered only after `auth_failure_delay`.
async fn fail(svc: &PgService, stream: &mut ClientSocket, err: ClientError) {
    let label = err.metrics_label();
    metrics::counter!("suture_client_connections_total", "protocol" => "postgres", "result" => label)
        .increment(1);
    if let Some(suppressed) = svc.core.log_limit.allow(label) {
        tracing::info!(pool = %svc.core.config.name, peer = %stream.peer(), error = %err, suppressed, "client refused");
    }
    if matches!(err, ClientError::AuthFailed(_)) {
        tokio::time::sleep(svc.core.config.timeouts.auth_failure_delay).await;
    }
    if let Some(notice) = err.notice(&svc.core.config.name) {
        send_notice(stream, &notice, svc.core.config.timeouts.client_write).await;
    }
}

pub(super) async fn send_notice<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut W,
    notice: &ClientNotice,
    limit: std::time::Duration,
) {
    let mut out = BytesMut::new();
    notice.encode(&mut out);
    // Best effort: the client may already be gone.
    let _ = wire::write_all(writer, &out, limit).await;
}

/// AuthenticationOk, the backend's ParameterStatus set, BackendKeyData (the backend's real
/// process ID with Suture's own key) and ReadyForQuery, in one buffer.
fn login_reply(
    conn: &BackendConn,
    cancel: &CancelHandle,
) -> Result<BytesMut, suture_protocol::ProtocolError> {
    let mut out = BytesMut::with_capacity(512);
    pg::encode_auth_ok(&mut out);
    for (name, value) in &conn.params {
        pg::encode_parameter_status(name, value, &mut out)?;
    }
    pg::encode_backend_key_data(conn.process_id, cancel.secret_key(), &mut out);
    pg::encode_ready_for_query(TxStatus::Idle, &mut out);
    Ok(out)
}

/// Brings the backend's run-time settings to what this client asked for at startup: SET what
/// differs, RESET what a previous client set and this one did not ask for. Nothing is sent
/// when the backend already matches.
pub(crate) async fn apply_settings(
    svc: &PgService,
    conn: &mut BackendConn,
    login: &ClientLogin,
) -> Result<(), RunError> {
    let wanted: BTreeMap<String, String> = login.settings.iter().cloned().collect();
    let Some(sql) = settings_sql(&conn.applied, &conn.params, &wanted) else {
        return Ok(());
    };
    conn.run_internal(
        &sql,
        svc.core.config.timeouts.reset,
        svc.core.config.limits.max_message_size,
    )
    .await?;
    conn.applied = wanted;
    Ok(())
}

/// The statements that move a backend from `applied` (what Suture set before) to `wanted`;
/// `None` when nothing needs to change. `set_config` is used rather than `SET` because it takes
/// the value as the startup packet does (a list such as `a, b` stays a list).
fn settings_sql(
    applied: &BTreeMap<String, String>,
    reported: &BTreeMap<String, String>,
    wanted: &BTreeMap<String, String>,
) -> Option<String> {
    let mut resets = Vec::new();
    for name in applied.keys().filter(|name| !wanted.contains_key(*name)) {
        resets.push(format!("RESET {}", quote_guc_name(name)));
    }
    let mut sets = Vec::new();
    for (name, value) in wanted {
        let current = applied.get(name).or_else(|| reported.get(name));
        if current != Some(value) {
            sets.push(format!(
                "set_config({}, {}, false)",
                quote_literal(name),
                quote_literal(value)
            ));
        }
    }
    if resets.is_empty() && sets.is_empty() {
        return None;
    }
    let mut sql = resets.join("; ");
    if !sets.is_empty() {
        if !sql.is_empty() {
            sql.push_str("; ");
        }
        sql.push_str("SELECT ");
        sql.push_str(&sets.join(", "));
    }
    Some(sql)
}

/// A SQL string literal (standard_conforming_strings on, PostgreSQL's default since 9.1).
fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A setting name as identifiers: `a.b` → `"a"."b"`.
fn quote_guc_name(name: &str) -> String {
    name.split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// Returns the backend to the pool if it is at rest (reset first if the session may have
/// changed state), else closes it. The client's cancel key is retired first, and the reset
/// waits for the client's cancels still on their way, so none can reach the next client's
/// statements.
pub(crate) async fn release(
    svc: &PgService,
    mut checkout: Checkout<PgManager>,
    tracker: &Tracker,
    cancel: &CancelHandle,
) {
    let settled = cancel.retire(svc.core.config.timeouts.connect).await;
    let conn = checkout.conn();
    let (limit, max) = (
        svc.core.config.timeouts.reset,
        svc.core.config.limits.max_message_size,
    );
    // Dropping the checkout closes the connection: done when it is broken, when requests are
    // still unanswered (its state is unknown), inside an implicit transaction, or when a cancel
    // of this client might still arrive.
    let tx = tracker.ledger.tx();
    if !settled
        || conn.broken
        || !tracker.ledger.is_empty()
        || tracker.fatal_code.is_some()
        || matches!(tx, TxState::Implicit | TxState::ImplicitFailed)
    {
        return;
    }
    let mut statements = Vec::new();
    if tx != TxState::Idle {
        // The client left inside a transaction (drivers that open one implicitly do this all
        // the time): roll it back instead of paying for a new backend login.
        statements.push("ROLLBACK");
    }
    let discard = tracker.dirty || !statements.is_empty();
    if discard {
        statements.push("DISCARD ALL");
    }
    for sql in statements {
        if let Err(err) = conn.run_internal(sql, limit, max).await {
            tracing::info!(pool = %svc.core.config.name, error = %err, "backend reset failed; closing it");
            return;
        }
    }
    if discard {
        conn.applied.clear();
    }
    conn.rbuf.clear();
    checkout.checkin();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn nothing_to_do_when_backend_matches() {
        let reported = map(&[("application_name", "psql"), ("client_encoding", "UTF8")]);
        assert_eq!(
            settings_sql(&map(&[]), &reported, &map(&[("client_encoding", "UTF8")])),
            None
        );
        assert_eq!(
            settings_sql(
                &map(&[("application_name", "psql")]),
                &reported,
                &map(&[("application_name", "psql")])
            ),
            None
        );
    }

    #[test]
    fn differing_settings_are_set_and_stale_ones_reset() {
        let sql = settings_sql(
            &map(&[("application_name", "old"), ("x.y", "1")]),
            &map(&[]),
            &map(&[("application_name", "it's new"), ("search_path", "a, b")]),
        );
        assert_eq!(
            sql.as_deref(),
            Some(
                "RESET \"x\".\"y\"; SELECT set_config('application_name', 'it''s new', false), \
                 set_config('search_path', 'a, b', false)"
            )
        );
    }
}
