//! One PostgreSQL client connection from accept to close, as a chain of stages: login (with the
//! client-login deadline) → checkout of a backend for (user, database, options) → applying the
//! client's startup settings → the login reply → the relay → releasing the backend (reset with
//! DISCARD ALL when the client changed session state, or closed when it is not at rest).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::BytesMut;
use suture_protocol::pg::{self, TxStatus};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::heal::{self, Decision, RefusalReason, ReplayReason};
use crate::pool::Checkout;
use crate::postgres::backend::{BackendConn, RunError};
use crate::postgres::cancel::{CancelHandle, CancelTarget};
use crate::postgres::client_login::{self, ClientLogin, LoginOutcome};
use crate::postgres::context::{PgKey, PgManager, PgService};
use crate::postgres::errors::{ClientError, ClientNotice};
use crate::postgres::relay::{self, BackendSide, ClientBoundary, RelayEnd, RelayLimits};
use crate::postgres::restore;
use crate::postgres::tracker::{Shared, Tracker};
use crate::postgres::wire;

/// Serves one client connection until it ends. Never panics on client input; every error is
/// reported to the client where the protocol allows and logged.
pub(crate) async fn serve(svc: Arc<PgService>, mut stream: TcpStream) {
    let mut buf = BytesMut::with_capacity(1024);
    let login_limit = svc.config.timeouts.client_login;
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
    let key = PgKey {
        user: login.user.clone(),
        database: login.database.clone(),
        options: login.options.clone(),
    };
    let mut checkout = match svc.pool.checkout(&key).await {
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
    if let Err(err) = wire::write_all(&mut stream, &reply, svc.config.timeouts.client_write).await {
        tracing::debug!(error = %err, "client left during login");
        return;
    }
    metrics::counter!("suture_client_connections_total", "protocol" => "postgres", "result" => "accepted").increment(1);
    tracing::debug!(user = %login.user, database = %login.database, backend_pid = conn.process_id, "session started");
    run_session(&svc, stream, buf, checkout, &login, &cancel).await;
}

/// Tells the client why it cannot be served, counts and logs it, and lets the connection close.
async fn fail(svc: &PgService, stream: &mut TcpStream, err: ClientError) {
    metrics::counter!("suture_client_connections_total", "protocol" => "postgres", "result" => err.metrics_label())
        .increment(1);
    tracing::info!(pool = %svc.config.name, error = %err, "client refused");
    if let Some(notice) = err.notice() {
        send_notice(stream, &notice, svc.config.timeouts.client_write).await;
    }
}

async fn send_notice<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut W,
    notice: &ClientNotice,
    limit: std::time::Duration,
) {
    let mut out = BytesMut::new();
    let encoded = pg::encode_error_response(
        notice.severity,
        &notice.code,
        &notice.message,
        notice.detail.as_deref(),
        &mut out,
    );
    if encoded.is_err() {
        // Only a NUL inside a server-provided text can get here: say less rather than nothing.
        out.clear();
        let _ = pg::encode_error_response(
            notice.severity,
            &notice.code,
            "connection failed",
            None,
            &mut out,
        );
    }
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
async fn apply_settings(
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
        svc.config.timeouts.reset,
        svc.config.limits.max_message_size,
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

/// The command phase: relay until the client leaves; when the backend is lost, heal, replay or
/// tell the client per DESIGN §3; finally release the backend.
async fn run_session(
    svc: &PgService,
    stream: TcpStream,
    mut cbuf: BytesMut,
    mut checkout: Checkout<PgManager>,
    login: &ClientLogin,
    cancel: &CancelHandle,
) {
    let (mut client_read, mut client_write) = stream.into_split();
    let shared = Shared::default();
    let boundary = ClientBoundary::default();
    let limits = RelayLimits {
        max_message_size: svc.config.limits.max_message_size,
        client_write: svc.config.timeouts.client_write,
        backend_write: svc.config.timeouts.backend_write,
    };
    // The process ID the client was told at login stays its identity across heals.
    let client_process_id = checkout.conn().process_id;
    loop {
        let end = {
            let BackendConn {
                reader,
                writer,
                rbuf,
                params,
                process_id,
                probe,
                ..
            } = checkout.conn();
            let side = BackendSide {
                client_process_id,
                backend_process_id: *process_id,
                params,
                boundary: &boundary,
            };
            let up = relay::client_to_backend(
                &mut client_read,
                &mut cbuf,
                writer,
                probe,
                &shared,
                limits,
            );
            let down =
                relay::backend_to_client(reader, rbuf, &mut client_write, &shared, side, limits);
            tokio::select! {
                end = up => end,
                end = down => end,
            }
        };
        let lost = match end {
            RelayEnd::ClientTerminated => {
                tracing::debug!("client terminated the session");
                break;
            }
            RelayEnd::ClientGone(err) => {
                tracing::debug!(error = %err, "client left");
                break;
            }
            RelayEnd::ClientProtocol(err) => {
                tracing::info!(pool = %svc.config.name, error = %err, "client protocol violation");
                metrics::counter!("suture_client_connections_total", "protocol" => "postgres", "result" => "protocol_error")
                    .increment(1);
                if boundary.at_boundary() {
                    if let Some(notice) = ClientError::from(err).notice() {
                        send_notice(&mut client_write, &notice, limits.client_write).await;
                    }
                }
                break;
            }
            RelayEnd::BackendGone(err) => err,
        };
        checkout.conn().broken = true;
        let facts = shared.lock().loss_facts();
        let decision = heal::decide(facts);
        let pool = svc.config.name.as_str();
        tracing::warn!(pool, error = %lost, ?decision, ?facts, "backend connection lost");
        match decision {
            Decision::Heal | Decision::Replay(_) => {
                let replacement = match reconnect(svc, login).await {
                    Ok(replacement) => replacement,
                    Err(err) => {
                        if boundary.at_boundary() {
                            if let Some(notice) = err.notice() {
                                send_notice(&mut client_write, &notice, limits.client_write).await;
                            }
                        }
                        return;
                    }
                };
                checkout = replacement;
                let state = std::mem::take(&mut shared.lock().state);
                let restored = restore::restore(
                    checkout.conn(),
                    &state,
                    svc.config.timeouts.reset,
                    svc.config.limits.max_message_size,
                )
                .await;
                shared.lock().state = state;
                if let Err(err) = restored {
                    tracing::warn!(pool, error = %err, "session state could not be restored on the new backend");
                    let reason = RefusalReason::TaintedSession;
                    metrics::counter!("suture_replays_refused_total", "pool" => pool.to_owned(), "reason" => reason.label())
                        .increment(1);
                    if boundary.at_boundary() {
                        send_notice(
                            &mut client_write,
                            &refusal_notice(reason),
                            limits.client_write,
                        )
                        .await;
                    }
                    return;
                }
                let conn = checkout.conn();
                cancel.retarget(CancelTarget {
                    addr: conn.addr,
                    process_id: conn.process_id,
                    secret_key: conn.secret_key,
                });
                let mut tracker = shared.lock();
                if let Decision::Replay(reason) = decision {
                    if reason == ReplayReason::RefusedWhileIdle {
                        // The request was written and refused unread: put it back in front.
                        let mut again = std::mem::take(&mut tracker.sent);
                        again.extend_from_slice(&cbuf);
                        cbuf = again;
                    }
                    metrics::counter!("suture_replays_total", "pool" => pool.to_owned(), "reason" => reason.label())
                        .increment(1);
                    tracing::info!(
                        pool,
                        reason = reason.label(),
                        "request replayed on a new backend"
                    );
                } else {
                    metrics::counter!("suture_session_heals_total", "pool" => pool.to_owned())
                        .increment(1);
                    tracing::info!(pool, "backend swapped under an idle session");
                }
                tracker.reset_requests();
            }
            Decision::Refuse(reason) => {
                metrics::counter!("suture_replays_refused_total", "pool" => pool.to_owned(), "reason" => reason.label())
                    .increment(1);
                let forwarded_fatal = shared.lock().fatal_code.is_some();
                if !boundary.at_boundary() || forwarded_fatal {
                    return;
                }
                // Lost while the client was idle: answer its next request with the error, so
                // the driver reads it as that request's reply (an unsolicited error on an idle
                // connection is dropped by drivers such as tokio-postgres).
                if !facts.request_in_flight && cbuf.is_empty() {
                    let wait = client_read.read_buf(&mut cbuf);
                    if !matches!(wait.await, Ok(n) if n > 0) {
                        return;
                    }
                }
                let notice = refusal_notice(reason);
                send_notice(&mut client_write, &notice, limits.client_write).await;
                return;
            }
        }
    }
    let tracker = std::mem::take(&mut *shared.lock());
    drop(client_write);
    release(svc, checkout, &tracker).await;
}

/// A fresh backend for the session, with the client's startup settings applied.
async fn reconnect(
    svc: &PgService,
    login: &ClientLogin,
) -> Result<Checkout<PgManager>, ClientError> {
    let key = PgKey {
        user: login.user.clone(),
        database: login.database.clone(),
        options: login.options.clone(),
    };
    let mut checkout = svc.pool.checkout(&key).await?;
    apply_settings(svc, checkout.conn(), login).await?;
    Ok(checkout)
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
        RefusalReason::TaintedSession => (
            "08006",
            "connection to the database server was lost and the session state (settings, prepared statements, temporary tables, locks) could not be restored",
        ),
    };
    ClientNotice {
        severity: "FATAL",
        code: code.to_owned(),
        message: message.to_owned(),
        detail: None,
    }
}

/// Returns the backend to the pool if it is at rest (reset first if the session may have
/// changed state), else closes it.
async fn release(svc: &PgService, mut checkout: Checkout<PgManager>, tracker: &Tracker) {
    let conn = checkout.conn();
    let (limit, max) = (
        svc.config.timeouts.reset,
        svc.config.limits.max_message_size,
    );
    // Dropping the checkout closes the connection: done when it is broken, or when requests are
    // still unanswered (its state is unknown).
    if conn.broken || tracker.pending > 0 || tracker.fatal_code.is_some() {
        return;
    }
    let mut statements = Vec::new();
    if tracker.tx_status != TxStatus::Idle {
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
            tracing::info!(pool = %svc.config.name, error = %err, "backend reset failed; closing it");
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
