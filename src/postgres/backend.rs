//! One authenticated connection to a PostgreSQL server, and how Suture opens it: resolve and
//! connect (re-resolving every time), negotiate TLS per the pool's mode, send the startup
//! message, answer whatever authentication the server asks for (SCRAM-SHA-256, md5, cleartext,
//! trust), and collect ParameterStatus and BackendKeyData up to the first ReadyForQuery. Then one
//! query discovers the server's idle limits and whether it is read-only (DESIGN §5): a pool that
//! wants a primary closes a read-only connection and tries the next server. Every step has its own
//! deadline (DESIGN §6).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use suture_protocol::pg::{self, ErrorFields, TxStatus};
use tokio::io::AsyncReadExt;

use crate::config::{ServerAddr, ServerRole, TlsMode};
use crate::liveness::Probe;
use crate::net::connect::connect_tcp;
use crate::net::login_error::{bounded, LoginError, Refusal};
use crate::ops::pool_state::ServerLimits;
use crate::postgres::backend_auth;
use crate::postgres::context::{BackendContext, PgKey};
use crate::postgres::discovery;
use crate::postgres::wire::{self, WireError};
use crate::session::link::impl_link;
use crate::stream::{self, StreamRead, StreamWrite};

/// The PostgreSQL SSLRequest answer that means "go ahead with TLS".
const SSL_ACCEPTED: u8 = b'S';
/// The PostgreSQL SSLRequest answer that means "no TLS here".
const SSL_REFUSED: u8 = b'N';

/// An authenticated backend connection, idle at a ReadyForQuery when handed out by the pool.
pub(crate) struct BackendConn {
    pub(crate) reader: StreamRead,
    pub(crate) writer: StreamWrite,
    /// Bytes read from the backend and not yet handled.
    pub(crate) rbuf: BytesMut,
    /// The backend's process ID and cancel key.
    pub(crate) process_id: i32,
    pub(crate) secret_key: i32,
    /// The address this connection reached: cancel requests go there.
    pub(crate) addr: SocketAddr,
    /// Reportable parameters as the backend last reported them (ParameterStatus).
    pub(crate) params: BTreeMap<String, String>,
    /// Settings Suture applied with SET on behalf of the current or previous client.
    pub(crate) applied: BTreeMap<String, String>,
    /// Set when the connection must not be reused (protocol out of sync, I/O error, FATAL).
    pub(crate) broken: bool,
    /// Peeks at the TCP socket under the stream to tell whether an idle connection is alive.
    pub(crate) probe: Probe,
    /// The server's `idle_session_timeout` for this user and database, when set (discovered at
    /// login; the pool retires idle connections before it fires).
    pub(crate) idle_limit: Option<Duration>,
    /// The server's `idle_in_transaction_session_timeout` for this user and database, when set.
    pub(crate) idle_in_transaction_limit: Option<Duration>,
    /// `transaction_read_only` was `on` at login.
    pub(crate) read_only: bool,
}

/// A PostgreSQL server's refusal of a login: its ErrorResponse.
#[derive(Debug)]
pub(crate) struct PgRefusal(pub(crate) ErrorFields);

impl std::fmt::Display for PgRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.0.message, self.0.code)
    }
}

/// SQLSTATEs of login refusals that mean "not now" rather than "not you": the server is
/// starting up, shutting down or in recovery (`57P03`), or was shut down or crashed under the
/// login (`57P01`, `57P02`). Class `08` (connection exception) is transient too.
const TRANSIENT_LOGIN_CODES: [&str; 3] = ["57P01", "57P02", "57P03"];

impl Refusal for PgRefusal {
    fn transient(&self) -> bool {
        TRANSIENT_LOGIN_CODES.contains(&self.0.code.as_str()) || self.0.code.starts_with("08")
    }
}

/// Why opening a PostgreSQL backend connection failed.
pub(crate) type BackendError = LoginError<PgRefusal, RunError>;

/// Opens, authenticates and readies one backend connection for `key`.
pub(crate) async fn connect(
    ctx: &BackendContext,
    key: &PgKey,
) -> Result<BackendConn, BackendError> {
    let result = connect_inner(ctx, key).await;
    let label = match &result {
        Ok(_) => "ok",
        Err(err) => err.metrics_label(),
    };
    metrics::counter!("suture_backend_connects_total", "pool" => ctx.pool_name.clone(), "result" => label).increment(1);
    match &result {
        Ok(conn) => ctx.ops.connected(ServerLimits {
            idle_session_timeout: conn.idle_limit,
            idle_in_transaction_session_timeout: conn.idle_in_transaction_limit,
            read_only: conn.read_only,
        }),
        Err(err) => ctx.ops.connect_failed(label, err.to_string()),
    }
    result
}

/// Logs in to the first server that accepts; when the pool wants a primary and that server is
/// read-only, closes the connection and carries on with the servers after it.
async fn connect_inner(ctx: &BackendContext, key: &PgKey) -> Result<BackendConn, BackendError> {
    let mut rest: &[ServerAddr] = &ctx.servers;
    loop {
        let (conn, server) = connect_one(ctx, key, rest).await?;
        if !wrong_role(ctx.role, conn.read_only) {
            return Ok(conn);
        }
        tracing::info!(pool = %ctx.pool_name, %server, "backend server is read-only; the pool wants a primary");
        drop(conn);
        let next = rest
            .iter()
            .position(|s| *s == server)
            .map_or(rest.len(), |i| i + 1);
        rest = &rest[next..];
        if rest.is_empty() {
            return Err(BackendError::ReadOnly(server));
        }
    }
}

/// A read-only server for a pool that wants a primary.
pub(crate) fn wrong_role(role: ServerRole, read_only: bool) -> bool {
    role == ServerRole::Primary && read_only
}

async fn connect_one(
    ctx: &BackendContext,
    key: &PgKey,
    servers: &[ServerAddr],
) -> Result<(BackendConn, ServerAddr), BackendError> {
    let secrets = ctx
        .users
        .get(&key.user)
        .ok_or_else(|| BackendError::UnknownUser(key.user.clone()))?;
    let t = &ctx.timeouts;
    let (tcp, server, addr) =
        connect_tcp(&ctx.resolver, servers, t.dns, t.connect, &t.into()).await?;
    let probe = Probe::of(&tcp).map_err(WireError::Io)?;
    let (mut reader, mut writer) = match ctx.tls.mode() {
        TlsMode::Disable => stream::split_plain(tcp),
        mode => {
            bounded("TLS negotiation", t.tls, async {
                let mut tcp = tcp;
                let mut request = BytesMut::new();
                pg::encode_ssl_request(&mut request);
                wire::write_all(&mut tcp, &request, t.tls).await?;
                let answer = tcp.read_u8().await.map_err(WireError::Io)?;
                match answer {
                    SSL_ACCEPTED => Ok(stream::split_tls(
                        ctx.tls.handshake(tcp, &server.host, t.tls).await?,
                    )),
                    SSL_REFUSED if mode == TlsMode::Prefer => Ok(stream::split_plain(tcp)),
                    SSL_REFUSED => Err(BackendError::TlsRefused(mode)),
                    _ => Err(BackendError::Wire(WireError::Protocol(
                        suture_protocol::ProtocolError::Malformed(
                            "unexpected answer to SSLRequest",
                        ),
                    ))),
                }
            })
            .await?
        }
    };
    let mut rbuf = BytesMut::with_capacity(wire::READ_CHUNK);
    let max = ctx.max_message_size;
    let login = async {
        let mut out = BytesMut::new();
        let startup = [
            ("user", key.user.as_str()),
            ("database", key.database.as_str()),
        ];
        pg::encode_startup(&startup, &mut out).map_err(WireError::from)?;
        wire::write_all(&mut writer, &out, t.auth).await?;
        backend_auth::authenticate(
            &mut reader,
            &mut writer,
            &mut rbuf,
            max,
            &key.user,
            secrets,
            t.auth,
        )
        .await?;
        let mut params = BTreeMap::new();
        let mut key_data = (0, 0);
        loop {
            let message = wire::read_message(&mut reader, &mut rbuf, max).await?;
            match message.tag {
                b'S' => {
                    let (name, value) =
                        pg::parse_parameter_status(&message.body).map_err(WireError::from)?;
                    params.insert(name.to_owned(), value.to_owned());
                }
                b'K' => {
                    key_data = pg::parse_backend_key_data(&message.body).map_err(WireError::from)?
                }
                b'E' => return Err(refused(&message.body)),
                b'Z' => break,
                // NoticeResponse and anything else harmless before the first ReadyForQuery.
                _ => {}
            }
        }
        Ok((params, key_data))
    };
    let (params, (process_id, secret_key)) =
        bounded("backend authentication", t.auth, login).await?;
    let mut conn = BackendConn {
        reader,
        writer,
        rbuf,
        process_id,
        secret_key,
        addr,
        params,
        applied: BTreeMap::new(),
        broken: false,
        probe,
        idle_limit: None,
        idle_in_transaction_limit: None,
        read_only: false,
    };
    conn.discover(t.auth, max)
        .await
        .map_err(|err| BackendError::Discovery(Box::new(err)))?;
    Ok((conn, server))
}

/// The server's ErrorResponse as a login refusal.
pub(super) fn refused(body: &[u8]) -> BackendError {
    match pg::parse_error_fields(body) {
        Ok(fields) => BackendError::Refused(PgRefusal(fields)),
        Err(err) => BackendError::Wire(WireError::Protocol(err)),
    }
}

// The parameters the backend reports (ParameterStatus) are what the relay keeps current.
impl_link!(BackendConn, params: BTreeMap<String, String>);

/// How long a Terminate to a backend Suture closes on purpose may take.
const TERMINATE_LIMIT: Duration = Duration::from_millis(200);

impl BackendConn {
    /// Tells the backend the session is over (Terminate) and marks the connection unusable;
    /// best effort, briefly bounded.
    pub(crate) async fn terminate(&mut self) {
        self.broken = true;
        let mut out = BytesMut::new();
        pg::encode_terminate(&mut out);
        let _ = wire::write_all(&mut self.writer, &out, TERMINATE_LIMIT).await;
        let _ = tokio::time::timeout(
            TERMINATE_LIMIT,
            tokio::io::AsyncWriteExt::shutdown(&mut self.writer),
        )
        .await;
    }

    /// Checks an idle connection without waiting: FIN, RST or an unsolicited ErrorResponse make
    /// it unusable (returns the cause label); ParameterStatus, notices and notifications that
    /// arrived while idle are read and kept track of.
    pub(crate) fn check_idle(&mut self, max: usize) -> Result<(), &'static str> {
        if crate::liveness::data_waiting(self.broken, &self.probe)? {
            self.read_unsolicited(max)
        } else {
            Ok(())
        }
    }

    fn read_unsolicited(&mut self, max: usize) -> Result<(), &'static str> {
        crate::liveness::read_ready(&mut self.reader, &mut self.rbuf, max)?;
        loop {
            match pg::split_message(&mut self.rbuf, max) {
                Ok(None) => return Ok(()),
                Ok(Some(message)) => match message.tag {
                    b'E' => {
                        let fatal = pg::parse_error_fields(&message.body).ok();
                        return Err(match fatal.as_ref().map(|f| f.code.as_str()) {
                            Some(crate::postgres::book::IDLE_SESSION_TIMEOUT) => {
                                "idle_timeout_notice"
                            }
                            _ => "server_error",
                        });
                    }
                    b'S' => {
                        if let Ok((name, value)) = pg::parse_parameter_status(&message.body) {
                            self.params.insert(name.to_owned(), value.to_owned());
                        }
                    }
                    // Notices and notifications while nobody listens: nothing to do.
                    _ => {}
                },
                Err(_) => return Err("server_error"),
            }
        }
    }

    /// Runs one simple query Suture itself issues (SET, RESET, DISCARD ALL), reading through
    /// its ReadyForQuery and recording ParameterStatus. Fails on an ErrorResponse, a status
    /// other than idle, or the deadline; the connection is then marked broken.
    pub(crate) async fn run_internal(
        &mut self,
        sql: &str,
        limit: Duration,
        max: usize,
    ) -> Result<(), RunError> {
        let result = tokio::time::timeout(limit, self.run_internal_inner(sql, max, None)).await;
        let result = result.unwrap_or(Err(RunError::Wire(WireError::Timeout(limit))));
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    /// Puts messages read during Suture's own queries back in front of the read buffer, where
    /// the relay forwards them to the client.
    pub(crate) fn requeue(&mut self, mut kept: BytesMut) {
        if !kept.is_empty() {
            kept.extend_from_slice(&self.rbuf);
            self.rbuf = kept;
        }
    }

    /// The server's idle limit for this connection (`idle_session_timeout`), if it has one.
    pub(crate) fn idle_limit(&self) -> Option<Duration> {
        self.idle_limit
    }

    /// Reads the idle limits and `transaction_read_only` into this connection.
    async fn discover(&mut self, limit: Duration, max: usize) -> Result<(), RunError> {
        let values = self
            .query_values(discovery::DISCOVERY_SQL, limit, max)
            .await?;
        let value = |i: usize| values.get(i).and_then(|v| v.as_deref());
        self.idle_limit = value(0).and_then(discovery::parse_pg_interval);
        self.idle_in_transaction_limit = value(1).and_then(discovery::parse_pg_interval);
        self.read_only = value(2) == Some("on");
        Ok(())
    }

    /// Runs one simple query Suture itself issues and returns the columns of its first row as
    /// text (NULL as `None`; no row: empty). Same rules as [`BackendConn::run_internal`].
    pub(crate) async fn query_values(
        &mut self,
        sql: &str,
        limit: Duration,
        max: usize,
    ) -> Result<Vec<Option<String>>, RunError> {
        let mut row = None;
        let result =
            tokio::time::timeout(limit, self.run_internal_inner(sql, max, Some(&mut row))).await;
        let result = result.unwrap_or(Err(RunError::Wire(WireError::Timeout(limit))));
        if result.is_err() {
            self.broken = true;
        }
        result.map(|()| row.unwrap_or_default())
    }

    async fn run_internal_inner(
        &mut self,
        sql: &str,
        max: usize,
        mut first_row: Option<&mut Option<Vec<Option<String>>>>,
    ) -> Result<(), RunError> {
        let mut out = BytesMut::new();
        pg::encode_query(sql, &mut out).map_err(WireError::from)?;
        tokio::io::AsyncWriteExt::write_all(&mut self.writer, &out)
            .await
            .map_err(WireError::Io)?;
        tokio::io::AsyncWriteExt::flush(&mut self.writer)
            .await
            .map_err(WireError::Io)?;
        let mut error = None;
        // Notifications that arrive meanwhile belong to the client: they are put back in front
        // of the read buffer, where the relay forwards them (pid rewritten) as usual.
        let mut notifications = BytesMut::new();
        loop {
            let message = wire::read_message(&mut self.reader, &mut self.rbuf, max).await?;
            match message.tag {
                b'A' => keep_message(&mut notifications, &message)?,

                b'S' => {
                    let (name, value) =
                        pg::parse_parameter_status(&message.body).map_err(WireError::from)?;
                    self.params.insert(name.to_owned(), value.to_owned());
                }
                b'E' => {
                    error = Some(pg::parse_error_fields(&message.body).map_err(WireError::from)?)
                }
                b'D' => {
                    if let Some(slot) = first_row.as_deref_mut() {
                        if slot.is_none() {
                            *slot = Some(
                                pg::parse_data_row_text(&message.body).map_err(WireError::from)?,
                            );
                        }
                    }
                }
                b'Z' => {
                    let status =
                        pg::parse_ready_for_query(&message.body).map_err(WireError::from)?;
                    self.requeue(notifications);
                    return match (error, status) {
                        (Some(fields), _) => Err(RunError::Server(fields)),
                        (None, TxStatus::Idle) => Ok(()),
                        (None, _) => Err(RunError::NotIdle),
                    };
                }
                _ => {}
            }
        }
    }
}

/// Appends a whole message (header rebuilt) to `out`, to be relayed later.
pub(crate) fn keep_message(out: &mut BytesMut, message: &pg::Message) -> Result<(), WireError> {
    let len = u32::try_from(message.body.len() + 4).map_err(|_| {
        WireError::Protocol(suture_protocol::ProtocolError::Malformed(
            "message too long",
        ))
    })?;
    out.extend_from_slice(&[message.tag]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&message.body);
    Ok(())
}

/// Why a query Suture issued on its own failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    /// The connection failed or timed out.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The server answered with an error.
    #[error("{} ({})", .0.message, .0.code)]
    Server(ErrorFields),
    /// The query left a transaction open.
    #[error("connection left inside a transaction")]
    NotIdle,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_decision() {
        assert!(wrong_role(ServerRole::Primary, true));
        assert!(!wrong_role(ServerRole::Primary, false));
        assert!(!wrong_role(ServerRole::Any, true));
        assert!(!wrong_role(ServerRole::Any, false));
    }

    fn refusal(code: &str) -> BackendError {
        BackendError::Refused(PgRefusal(ErrorFields {
            severity: "FATAL".into(),
            code: code.into(),
            message: "m".into(),
            detail: None,
            hint: None,
        }))
    }

    #[test]
    fn which_login_failures_the_hold_retries() {
        assert!(
            refusal("57P03").is_retryable(),
            "starting up / shutting down"
        );
        assert!(refusal("57P01").is_retryable());
        assert!(refusal("08006").is_retryable());
        assert!(!refusal("28P01").is_retryable(), "bad password");
        assert!(!refusal("3D000").is_retryable(), "unknown database");
        assert!(!refusal("53300").is_retryable(), "too many connections");
        assert_eq!(refusal("57P03").metrics_label(), "refused");
        assert_eq!(refusal("28P01").metrics_label(), "auth_error");
        let read_only = BackendError::ReadOnly(ServerAddr {
            host: "db".into(),
            port: 5432,
        });
        assert!(read_only.is_retryable());
        assert_eq!(read_only.metrics_label(), "read_only");
        assert!(!BackendError::UnknownUser("x".into()).is_retryable());
        assert!(!BackendError::TlsRefused(TlsMode::Require).is_retryable());
        assert!(BackendError::Timeout {
            step: "backend authentication",
            limit: Duration::from_secs(1)
        }
        .is_retryable());
    }
}
