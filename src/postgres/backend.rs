//! One authenticated connection to a PostgreSQL server, and how Suture opens it: resolve and
//! connect (re-resolving every time), negotiate TLS per the pool's mode, send the startup
//! message, answer whatever authentication the server asks for (SCRAM-SHA-256, md5, cleartext,
//! trust), and collect ParameterStatus and BackendKeyData up to the first ReadyForQuery. Every step
//! has its own deadline (DESIGN §6).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use suture_protocol::pg::{self, Authentication, ErrorFields, TxStatus};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::config::TlsMode;
use crate::liveness::{Liveness, Probe};
use crate::net::connect::{connect_tcp, ConnectError};
use crate::net::tls::TlsError;
use crate::postgres::context::{BackendContext, PgKey};
use crate::postgres::wire::{self, WireError};
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
}

/// Why opening a backend connection failed; every variant says which step.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BackendError {
    /// DNS or TCP connect failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// TLS could not be negotiated.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The server does not offer TLS but the pool's mode requires it.
    #[error("server does not support TLS, but tls mode is {0:?}")]
    TlsRefused(TlsMode),
    /// A step did not finish in time.
    #[error("{step} timed out after {limit:?}")]
    Timeout {
        /// Which step.
        step: &'static str,
        /// Its deadline.
        limit: Duration,
    },
    /// The socket failed or the server broke the protocol during login.
    #[error("backend login failed: {0}")]
    Wire(#[from] WireError),
    /// The server refused the login with an error (bad password, unknown database, ...).
    #[error("server refused login: {} ({})", .0.message, .0.code)]
    Refused(ErrorFields),
    /// The server asked for an authentication method Suture cannot answer.
    #[error("server asked for an unsupported authentication method ({0})")]
    UnsupportedAuth(String),
    /// No password is configured for this user.
    #[error("no password configured for user {0:?}")]
    UnknownUser(String),
}

impl BackendError {
    /// Fixed-cardinality label for `suture_backend_connects_total{result}`.
    pub(crate) fn metrics_label(&self) -> &'static str {
        match self {
            BackendError::Connect(err) => err.metrics_label(),
            BackendError::Tls(_) | BackendError::TlsRefused(_) => "tls_error",
            BackendError::Timeout { .. } => "timeout",
            BackendError::Wire(_) => "error",
            BackendError::Refused(_)
            | BackendError::UnsupportedAuth(_)
            | BackendError::UnknownUser(_) => "auth_error",
        }
    }
}

/// Runs `fut` under `limit`, naming `step` if it runs out.
async fn step<T>(
    step: &'static str,
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or(Err(BackendError::Timeout { step, limit }))
}

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
    result
}

async fn connect_inner(ctx: &BackendContext, key: &PgKey) -> Result<BackendConn, BackendError> {
    let secrets = ctx
        .users
        .get(&key.user)
        .ok_or_else(|| BackendError::UnknownUser(key.user.clone()))?;
    let t = &ctx.timeouts;
    let (tcp, server, addr) = connect_tcp(&ctx.resolver, &ctx.servers, t.dns, t.connect).await?;
    let probe = Probe::of(&tcp).map_err(WireError::Io)?;
    let (mut reader, mut writer) = match ctx.tls.mode() {
        TlsMode::Disable => stream::split_plain(tcp),
        mode => {
            step("TLS negotiation", t.tls, async {
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
        let mut startup: Vec<(&str, &str)> = vec![("user", &key.user), ("database", &key.database)];
        if let Some(options) = &key.options {
            startup.push(("options", options));
        }
        pg::encode_startup(&startup, &mut out).map_err(WireError::from)?;
        wire::write_all(&mut writer, &out, t.auth).await?;
        authenticate(
            &mut reader,
            &mut writer,
            &mut rbuf,
            max,
            &key.user,
            &secrets.password,
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
    let (params, (process_id, secret_key)) = step("backend authentication", t.auth, login).await?;
    Ok(BackendConn {
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
    })
}

/// The server's ErrorResponse as a login refusal.
fn refused(body: &[u8]) -> BackendError {
    match pg::parse_error_fields(body) {
        Ok(fields) => BackendError::Refused(fields),
        Err(err) => BackendError::Wire(WireError::Protocol(err)),
    }
}

/// Answers the server's authentication requests until AuthenticationOk.
async fn authenticate(
    reader: &mut StreamRead,
    writer: &mut StreamWrite,
    rbuf: &mut BytesMut,
    max: usize,
    user: &str,
    password: &str,
    limit: Duration,
) -> Result<(), BackendError> {
    let mut scram: Option<ScramSha256> = None;
    loop {
        let message = wire::read_message(reader, rbuf, max).await?;
        match message.tag {
            b'E' => return Err(refused(&message.body)),
            b'R' => {}
            other => {
                return Err(BackendError::UnsupportedAuth(format!(
                    "unexpected message {:?}",
                    other as char
                )));
            }
        }
        let mut out = BytesMut::new();
        match pg::parse_authentication(&message.body).map_err(WireError::from)? {
            Authentication::Ok => return Ok(()),
            Authentication::CleartextPassword => {
                pg::encode_password(password.as_bytes(), &mut out).map_err(WireError::from)?
            }
            Authentication::Md5Password { salt } => {
                let hash = postgres_protocol::authentication::md5_hash(
                    user.as_bytes(),
                    password.as_bytes(),
                    salt,
                );
                pg::encode_password(hash.as_bytes(), &mut out).map_err(WireError::from)?;
            }
            Authentication::Sasl { mechanisms } => {
                if !mechanisms.contains(&SCRAM_SHA_256) {
                    return Err(BackendError::UnsupportedAuth(mechanisms.join(", ")));
                }
                // Channel binding is not used: the client side says "n" (does not support it),
                // which servers accept with or without TLS.
                let exchange = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                pg::encode_sasl_initial_response(SCRAM_SHA_256, exchange.message(), &mut out)
                    .map_err(WireError::from)?;
                scram = Some(exchange);
            }
            Authentication::SaslContinue(data) => {
                let exchange = scram
                    .as_mut()
                    .ok_or_else(|| scram_out_of_order("SASLContinue"))?;
                exchange
                    .update(data)
                    .map_err(|e| BackendError::UnsupportedAuth(format!("SCRAM: {e}")))?;
                pg::encode_sasl_response(exchange.message(), &mut out).map_err(WireError::from)?;
            }
            Authentication::SaslFinal(data) => {
                let exchange = scram
                    .as_mut()
                    .ok_or_else(|| scram_out_of_order("SASLFinal"))?;
                exchange.finish(data).map_err(|e| {
                    BackendError::UnsupportedAuth(format!("SCRAM server signature: {e}"))
                })?;
                continue;
            }
            Authentication::Other(code) => {
                return Err(BackendError::UnsupportedAuth(format!("code {code}")))
            }
        }
        wire::write_all(writer, &out, limit).await?;
    }
}

fn scram_out_of_order(what: &str) -> BackendError {
    BackendError::UnsupportedAuth(format!("{what} before SASL start"))
}

impl BackendConn {
    /// Checks an idle connection without waiting: FIN, RST or an unsolicited ErrorResponse make
    /// it unusable (returns the cause label); ParameterStatus, notices and notifications that
    /// arrived while idle are read and kept track of.
    pub(crate) fn check_idle(&mut self, max: usize) -> Result<(), &'static str> {
        if self.broken {
            return Err("error");
        }
        match self.probe.check() {
            Liveness::Alive => Ok(()),
            Liveness::DataWaiting => self.read_unsolicited(max),
            dead => Err(dead.cause()),
        }
    }

    fn read_unsolicited(&mut self, max: usize) -> Result<(), &'static str> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut chunk = [0u8; 4096];
        loop {
            let mut read = tokio::io::ReadBuf::new(&mut chunk);
            match std::pin::Pin::new(&mut self.reader).poll_read(&mut cx, &mut read) {
                std::task::Poll::Pending => break,
                std::task::Poll::Ready(Err(_)) => return Err("rst"),
                std::task::Poll::Ready(Ok(())) if read.filled().is_empty() => return Err("fin"),
                std::task::Poll::Ready(Ok(())) => {
                    if self.rbuf.len() + read.filled().len() > max {
                        return Err("server_error");
                    }
                    self.rbuf.extend_from_slice(read.filled());
                }
            }
        }
        loop {
            match pg::split_message(&mut self.rbuf, max) {
                Ok(None) => return Ok(()),
                Ok(Some(message)) => match message.tag {
                    b'E' => {
                        let fatal = pg::parse_error_fields(&message.body).ok();
                        return Err(match fatal.as_ref().map(|f| f.code.as_str()) {
                            Some(crate::postgres::tracker::IDLE_SESSION_TIMEOUT) => {
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
        let result = tokio::time::timeout(limit, self.run_internal_inner(sql, max)).await;
        let result = result.unwrap_or(Err(RunError::Wire(WireError::Timeout(limit))));
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    async fn run_internal_inner(&mut self, sql: &str, max: usize) -> Result<(), RunError> {
        let mut out = BytesMut::new();
        pg::encode_query(sql, &mut out).map_err(WireError::from)?;
        tokio::io::AsyncWriteExt::write_all(&mut self.writer, &out)
            .await
            .map_err(WireError::Io)?;
        tokio::io::AsyncWriteExt::flush(&mut self.writer)
            .await
            .map_err(WireError::Io)?;
        let mut error = None;
        loop {
            let message = wire::read_message(&mut self.reader, &mut self.rbuf, max).await?;
            match message.tag {
                b'S' => {
                    let (name, value) =
                        pg::parse_parameter_status(&message.body).map_err(WireError::from)?;
                    self.params.insert(name.to_owned(), value.to_owned());
                }
                b'E' => {
                    error = Some(pg::parse_error_fields(&message.body).map_err(WireError::from)?)
                }
                b'Z' => {
                    let status =
                        pg::parse_ready_for_query(&message.body).map_err(WireError::from)?;
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
