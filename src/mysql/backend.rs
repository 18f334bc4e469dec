//! One authenticated connection to a MySQL or MariaDB server, and how Suture opens it: resolve
//! and connect (re-resolving every time, servers in order), read the greeting (HandshakeV10),
//! switch to TLS per the pool's mode (SSLRequest), log in with HandshakeResponse41 and the
//! configured password (`backend_auth`), turn session tracking on, and discover the server's
//! idle limits and whether it is read-only (DESIGN §5): a pool that wants a primary closes a
//! read-only connection and tries the next server. Every step has its own deadline (DESIGN §6).
//!
//! The commands Suture itself runs on an idle connection, and the idle check, are in
//! `backend_query`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use suture_protocol::mysql::{
    capability::*, command, encode_handshake_response, encode_packet, encode_ssl_request,
    parse_err, parse_handshake_v10, HandshakeResponse41, HandshakeV10, SslRequest, ERR_HEADER,
};
use suture_protocol::ProtocolError;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::config::{ServerAddr, ServerRole, TlsMode};
use crate::liveness::Probe;
use crate::mysql::backend_auth::{self, AuthStart, ClientPlugin};
use crate::mysql::backend_query::MyRunError;
use crate::mysql::errors::{BackendFailure, MyNotice};
use crate::mysql::manager::{MyBackendContext, MyKey, SHAPE_CAPABILITIES};
use crate::net::connect::connect_tcp;
use crate::net::login_error::{bounded, LoginError, Refusal};
use crate::ops::pool_state::ServerLimits;
use crate::session::link::impl_link;
use crate::stream::{self, StreamRead, StreamWrite};
use crate::wire::{self, WireError};

/// utf8mb4_general_ci: the character set (collation id) of every backend login.
pub(crate) const LOGIN_CHARACTER_SET: u8 = 45;
/// The max_packet_size of the login: 1 GiB, the server's own upper bound.
const LOGIN_MAX_PACKET: u32 = 1 << 30;
/// Capabilities Suture asks of every server (each only if the server offers it), besides the
/// client's [`SHAPE_CAPABILITIES`]. Never COMPRESS, nor MariaDB's extended capabilities.
const OWN_CAPABILITIES: u64 = CLIENT_PROTOCOL_41
    | CLIENT_SECURE_CONNECTION
    | CLIENT_PLUGIN_AUTH
    | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | CLIENT_LONG_FLAG
    | CLIENT_TRANSACTIONS
    | CLIENT_SESSION_TRACK
    | CLIENT_CONNECT_ATTRS;
/// What Suture needs the server to speak.
const REQUIRED_CAPABILITIES: u64 = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION;
/// Turns on everything session tracking can report (MariaDB 10.2+, MySQL 5.7+).
pub(crate) const TRACKING_SQL: &str = "SET SESSION session_track_system_variables='*', \
     session_track_schema=ON, session_track_state_change=ON";
/// How long COM_QUIT and the close of a connection Suture ends on purpose may take.
const TERMINATE_LIMIT: Duration = Duration::from_secs(1);

/// What the session's framer keeps current on a connection while it relays.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ConnState {
    /// Status flags of the latest OK or EOF (`status::*`).
    pub(crate) status: u16,
    /// The current database, as far as Suture knows (login, COM_INIT_DB, session tracking).
    pub(crate) database: Option<String>,
}

/// An authenticated backend connection, idle between commands when handed out by the pool.
pub(crate) struct MyBackendConn {
    pub(crate) reader: StreamRead,
    pub(crate) writer: StreamWrite,
    /// Bytes read from the backend and not yet handled.
    pub(crate) rbuf: BytesMut,
    /// Peeks at the TCP socket under the stream to tell whether an idle connection is alive.
    pub(crate) probe: Probe,
    /// The address this connection reached.
    pub(crate) addr: SocketAddr,
    /// Set when the connection must not be reused (out of sync, I/O error, fatal error).
    pub(crate) broken: bool,
    /// The server's id of this connection (the greeting's; `KILL` takes it).
    pub(crate) connection_id: u32,
    /// As the greeting sent it (MariaDB's `5.5.5-` prefix kept).
    pub(crate) server_version: String,
    /// Capabilities in force on this connection (what Suture sent ∩ what the server has).
    pub(crate) capabilities: u64,
    /// Everything the server offered in its greeting (clients are offered what it has).
    pub(crate) server_capabilities: u64,
    /// The character set (collation id) of the login.
    pub(crate) character_set: u8,
    /// Session tracking is on: `session_track_system_variables='*'`,
    /// `session_track_schema=ON` and `session_track_state_change=ON` were set after login and
    /// the server has CLIENT_SESSION_TRACK.
    pub(crate) tracking: bool,
    /// The server's `wait_timeout` for this session, when it has one.
    pub(crate) wait_timeout: Option<Duration>,
    /// The server's `interactive_timeout`, when it has one.
    pub(crate) interactive_timeout: Option<Duration>,
    /// The server was read-only at login (`@@read_only`, and for MySQL `@@super_read_only` or
    /// `@@transaction_read_only`).
    pub(crate) read_only: bool,
    pub(crate) state: ConnState,
    /// The pool's message limit: the largest reply Suture's own commands accept.
    pub(crate) max_message_size: usize,
}

/// Why opening a MySQL backend connection failed.
pub(crate) type MyBackendError = LoginError<MyNotice, MyRunError>;

/// Error codes of login refusals that mean "not now" rather than "not you": the server is
/// shutting down (ER_SERVER_SHUTDOWN), killed the connection (ER_CONNECTION_KILLED), or is in
/// offline mode (MySQL's ER_SERVER_OFFLINE_MODE).
const TRANSIENT_LOGIN_CODES: [u16; 3] = [1053, 1927, 3032];

impl Refusal for MyNotice {
    fn transient(&self) -> bool {
        TRANSIENT_LOGIN_CODES.contains(&self.code)
    }
}

impl BackendFailure for MyBackendError {
    fn client_reason(&self) -> &'static str {
        LoginError::client_reason(self)
    }

    fn refusal(&self) -> Option<MyNotice> {
        match self {
            MyBackendError::Refused(notice) => Some(notice.clone()),
            _ => None,
        }
    }
}

/// Opens, authenticates and readies one backend connection for `key`, and reports the outcome
/// (metrics, the pool's operational state).
pub(crate) async fn connect(
    ctx: &MyBackendContext,
    key: &MyKey,
) -> Result<MyBackendConn, MyBackendError> {
    let result = connect_in_order(ctx, key).await;
    let label = result
        .as_ref()
        .err()
        .map_or("ok", MyBackendError::metrics_label);
    metrics::counter!("suture_backend_connects_total", "pool" => ctx.pool_name.clone(), "result" => label).increment(1);
    match &result {
        Err(err) => ctx.ops.connect_failed(label, err.to_string()),
        Ok(conn) => ctx.ops.connected(ServerLimits {
            idle_session_timeout: conn.idle_limit(key.interactive()),
            idle_in_transaction_session_timeout: None,
            read_only: conn.read_only,
        }),
    }
    result
}

/// Logs in to the first server that accepts; a read-only one, when the pool wants a primary,
/// is said goodbye to and the servers after it are tried.
async fn connect_in_order(
    ctx: &MyBackendContext,
    key: &MyKey,
) -> Result<MyBackendConn, MyBackendError> {
    let mut first = 0;
    loop {
        let candidates = ctx.servers.get(first..).unwrap_or_default();
        let (mut conn, server) = connect_one(ctx, key, candidates).await?;
        if ctx.role != ServerRole::Primary || !conn.read_only {
            return Ok(conn);
        }
        tracing::info!(pool = %ctx.pool_name, %server, "backend server is read-only; the pool wants a primary");
        conn.terminate().await;
        first += candidates
            .iter()
            .position(|s| *s == server)
            .map_or(candidates.len(), |at| at + 1);
        if first >= ctx.servers.len() {
            return Err(MyBackendError::ReadOnly(server));
        }
    }
}

/// The capabilities of the login: the client's shape capabilities and Suture's own, as far as
/// the server offers them, with CLIENT_CONNECT_WITH_DB for a database. CLIENT_LONG_PASSWORD
/// (bit 0, which MariaDB reads as CLIENT_MYSQL) is always set: no extended capabilities.
pub(crate) fn login_capabilities(key_caps: u64, server_caps: u64, with_db: bool) -> u64 {
    let db = if with_db { CLIENT_CONNECT_WITH_DB } else { 0 };
    let wanted = (key_caps & SHAPE_CAPABILITIES) | OWN_CAPABILITIES | db;
    (wanted & server_caps & u64::from(u32::MAX)) | CLIENT_LONG_PASSWORD
}

/// Reads the server's greeting (or the ERR it sends instead, e.g. too many connections).
async fn read_greeting(
    tcp: &mut TcpStream,
    rbuf: &mut BytesMut,
    max: usize,
) -> Result<HandshakeV10, MyBackendError> {
    let packet = backend_auth::read_packet(tcp, rbuf, max).await?;
    if packet.payload.first() == Some(&ERR_HEADER) {
        let err = parse_err(&packet.payload, 0).map_err(WireError::from)?;
        return Err(MyBackendError::Refused(backend_auth::notice_of(&err)));
    }
    let greeting = parse_handshake_v10(&packet.payload).map_err(WireError::from)?;
    if greeting.capabilities & REQUIRED_CAPABILITIES != REQUIRED_CAPABILITIES {
        return Err(WireError::Protocol(ProtocolError::Malformed(
            "server does not speak protocol 4.1 with secure connection",
        ))
        .into());
    }
    if !rbuf.is_empty() {
        return Err(WireError::Protocol(ProtocolError::Malformed(
            "server sent bytes after its greeting",
        ))
        .into());
    }
    Ok(greeting)
}

async fn connect_one(
    ctx: &MyBackendContext,
    key: &MyKey,
    servers: &[ServerAddr],
) -> Result<(MyBackendConn, ServerAddr), MyBackendError> {
    let password = ctx
        .users
        .get(&key.user)
        .ok_or_else(|| MyBackendError::UnknownUser(key.user.clone()))?;
    let t = &ctx.timeouts;
    let max = ctx.max_message_size;
    let (mut tcp, server, addr) =
        connect_tcp(&ctx.resolver, servers, t.dns, t.connect, &t.into()).await?;
    let probe = Probe::of(&tcp).map_err(WireError::Io)?;
    let mut rbuf = BytesMut::with_capacity(wire::READ_CHUNK);
    let greeting = bounded(
        "backend greeting",
        t.auth,
        read_greeting(&mut tcp, &mut rbuf, max),
    )
    .await?;
    let mut caps = login_capabilities(
        key.capabilities,
        greeting.capabilities,
        key.database.is_some(),
    );
    let mut seq = 1;
    let mode = ctx.tls.mode();
    let offers_tls = greeting.capabilities & CLIENT_SSL != 0;
    let (mut reader, mut writer) = match mode {
        TlsMode::Disable => stream::split_plain(tcp),
        TlsMode::Prefer if !offers_tls => stream::split_plain(tcp),
        _ if !offers_tls => return Err(MyBackendError::TlsRefused(mode)),
        _ => {
            caps |= CLIENT_SSL;
            let request = SslRequest {
                capabilities: caps,
                max_packet_size: LOGIN_MAX_PACKET,
                character_set: LOGIN_CHARACTER_SET,
            };
            let mut out = BytesMut::new();
            encode_ssl_request(&request, seq, &mut out).map_err(WireError::from)?;
            seq += 1;
            wire::write_all(&mut tcp, &out, t.tls).await?;
            stream::split_tls(ctx.tls.handshake(tcp, &server.host, t.tls).await?)
        }
    };
    let secure = caps & CLIENT_SSL != 0;
    let character_set = match key.character_set {
        0 => LOGIN_CHARACTER_SET,
        wanted => wanted,
    };
    let login = async {
        #[cfg_attr(not(test), allow(unused_mut))]
        let mut plugin = ClientPlugin::for_greeting(greeting.auth_plugin_name.as_deref(), secure);
        #[cfg(test)]
        if let Some(forced) = ctx.first_plugin {
            plugin = forced;
        }
        let response = HandshakeResponse41 {
            capabilities: caps,
            max_packet_size: LOGIN_MAX_PACKET,
            character_set,
            username: key.user.clone(),
            auth_response: plugin.response(&greeting.auth_plugin_data, password.expose())?,
            database: key.database.clone(),
            auth_plugin_name: Some(plugin.name().to_owned()),
            attributes: vec![
                ("_client_name".to_owned(), "suture".to_owned()),
                (
                    "_client_version".to_owned(),
                    env!("CARGO_PKG_VERSION").to_owned(),
                ),
            ],
        };
        let mut out = BytesMut::new();
        encode_handshake_response(&response, seq, &mut out).map_err(WireError::from)?;
        wire::write_all(&mut writer, &out, t.auth).await?;
        let start = AuthStart {
            plugin,
            scramble: greeting.auth_plugin_data.clone(),
            seq: seq.wrapping_add(1),
            capabilities: caps,
            secure,
        };
        backend_auth::authenticate(
            &mut reader,
            &mut writer,
            &mut rbuf,
            max,
            start,
            password.expose(),
        )
        .await
    };
    let ok = bounded("backend authentication", t.auth, login).await?;
    let mut conn = MyBackendConn {
        reader,
        writer,
        rbuf,
        probe,
        addr,
        broken: false,
        connection_id: greeting.connection_id,
        server_version: greeting.server_version.clone(),
        capabilities: caps,
        server_capabilities: greeting.capabilities,
        character_set,
        tracking: false,
        wait_timeout: None,
        interactive_timeout: None,
        read_only: false,
        state: ConnState {
            status: ok.status,
            database: key.database.clone(),
        },
        max_message_size: max,
    };
    conn.settle(greeting.is_mariadb(), t.auth)
        .await
        .map_err(|err| MyBackendError::Discovery(Box::new(err)))?;
    Ok((conn, server))
}

/// Reads a `SELECT @@...` value as whole seconds; `None` for zero and for anything else.
fn seconds(value: Option<&[u8]>) -> Option<Duration> {
    let secs: u64 = std::str::from_utf8(value?).ok()?.trim().parse().ok()?;
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// Reads a boolean system variable as `SELECT @@...` shows it (`1`/`0`, `ON`/`OFF`).
fn flag(value: Option<&[u8]>) -> bool {
    value.is_some_and(|v| v == b"1" || v.eq_ignore_ascii_case(b"ON"))
}

/// The discovery query: idle limits, then the variables that make a server read-only
/// (`super_read_only` and `transaction_read_only` are MySQL's; MariaDB 10.11 would refuse the
/// first).
pub(crate) fn discovery_sql(mariadb: bool) -> &'static str {
    if mariadb {
        "SELECT @@wait_timeout, @@interactive_timeout, @@read_only"
    } else {
        "SELECT @@wait_timeout, @@interactive_timeout, @@read_only, @@super_read_only, \
         @@transaction_read_only"
    }
}

impl MyBackendConn {
    /// After login: session tracking on when the server has it (left off if the server
    /// refuses the SET), then the idle limits and the role.
    async fn settle(&mut self, mariadb: bool, limit: Duration) -> Result<(), MyRunError> {
        if self.capabilities & CLIENT_SESSION_TRACK != 0 {
            self.tracking = match self.query(TRACKING_SQL, limit).await {
                Ok(_) => true,
                Err(MyRunError::Server(notice)) => {
                    tracing::debug!(%notice, "backend refused to turn session tracking on");
                    false
                }
                Err(err) => return Err(err),
            };
        }
        let result = self.query(discovery_sql(mariadb), limit).await?;
        let row = result.rows.into_iter().next().unwrap_or_default();
        let value = |i: usize| row.get(i).and_then(|v| v.as_deref());
        self.wait_timeout = seconds(value(0));
        self.interactive_timeout = seconds(value(1));
        self.read_only = (2..row.len()).any(|i| flag(value(i)));
        Ok(())
    }

    /// Says goodbye (COM_QUIT) and closes, best effort within a second; the connection is
    /// unusable afterwards.
    pub(crate) async fn terminate(&mut self) {
        self.broken = true;
        let mut out = BytesMut::new();
        encode_packet(0, &[command::COM_QUIT], &mut out);
        let goodbye = async {
            if self.writer.write_all(&out).await.is_ok() {
                let _ = self.writer.flush().await;
            }
            let _ = self.writer.shutdown().await;
        };
        let _ = tokio::time::timeout(TERMINATE_LIMIT, goodbye).await;
    }
}

// The status flags and current database are what the relay keeps current.
impl_link!(MyBackendConn, state: ConnState);

#[cfg(test)]
#[path = "backend_tests.rs"]
mod tests;
