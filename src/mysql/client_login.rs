//! The client's side of the MySQL login, with Suture as the server: the greeting
//! (HandshakeV10) advertising only what Suture honours, the client's HandshakeResponse41, the
//! authentication (`client_auth`), the OK that ends the login (sent by the session once a
//! backend is checked out), COM_CHANGE_USER's re-authentication, and the refusal at the
//! connection cap. Authentication failures look exactly like the server's (ERR 1045, 28000,
//! same text) whether the user or the password was wrong.
//!
//! Suture listens on localhost beside its application, so it never offers TLS to clients
//! (an SSLRequest is a protocol violation), nor compression, nor query attributes. Every step
//! here is bounded by the caller: it runs `login` under the client-login deadline.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use bytes::BytesMut;
use suture_protocol::mysql::{
    capability::*, encode_handshake_v10, encode_ok, parse_change_user, parse_client_handshake,
    split_logical_packet, ClientHandshake, HandshakeV10, LogicalPacket, OkPacket, OK_HEADER,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::config::{ClientAuthMethod, PoolConfig, UserConfig};
use crate::mysql::client_auth::{self, Attempt, Plugin, Scramble};
use crate::mysql::errors::{ClientError, MyNotice};
use crate::peer_text;
use crate::wire::{self, WireError};

/// Login packets larger than this are refused whatever the pool's message limit (a login is a
/// few hundred bytes; MySQL caps connection attributes at 64 KiB).
pub(crate) const MAX_LOGIN_PACKET: usize = 64 * 1024 + 1024;
/// The longest database name MySQL and MariaDB accept (NAME_CHAR_LEN).
pub(crate) const MAX_DATABASE_CHARS: usize = 64;
/// Connection attributes kept from a client (each key and value cut to `peer_text::NAME_MAX`).
pub(crate) const MAX_ATTRIBUTES: usize = 32;

/// Capabilities Suture itself implements towards clients, whatever the backend has.
const OWN_CAPABILITIES: u64 = CLIENT_LONG_PASSWORD
    | CLIENT_PROTOCOL_41
    | CLIENT_SECURE_CONNECTION
    | CLIENT_PLUGIN_AUTH
    | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | CLIENT_CONNECT_WITH_DB
    | CLIENT_CONNECT_ATTRS;
/// Capabilities that change what the backend does or sends: advertised only when the backend
/// has them. Never SSL, COMPRESS, QUERY_ATTRIBUTES or MariaDB's extended capabilities (setting
/// CLIENT_LONG_PASSWORD, MariaDB's CLIENT_MYSQL bit, says there are none).
const BACKEND_CAPABILITIES: u64 = CLIENT_LONG_FLAG
    | CLIENT_FOUND_ROWS
    | CLIENT_IGNORE_SPACE
    | CLIENT_INTERACTIVE
    | CLIENT_TRANSACTIONS
    | CLIENT_MULTI_STATEMENTS
    | CLIENT_MULTI_RESULTS
    | CLIENT_PS_MULTI_RESULTS
    | CLIENT_LOCAL_FILES
    | CLIENT_SESSION_TRACK
    | CLIENT_DEPRECATE_EOF;

/// What the session tells the login about the backend side and the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Greeting {
    /// Exactly as the backend sent it (MariaDB's `5.5.5-` prefix kept: drivers gate features
    /// on it).
    pub(crate) server_version: String,
    /// The connection id Suture chose for this client.
    pub(crate) connection_id: u32,
    /// Status flags for the greeting (the backend's).
    pub(crate) status: u16,
    /// The backend's default character set (collation id).
    pub(crate) character_set: u8,
    /// The backend's capabilities: Suture advertises only what the backend also offers.
    pub(crate) capabilities: u64,
}

/// A pool's login rules, and the client's address. Failed logins are answered at once: the
/// caller waits the pool's `auth_failure_delay` before it sends the ERR.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LoginSettings<'a> {
    /// The plugin the greeting offers (`trust`: mysql_native_password, any password of a
    /// configured user accepted).
    pub(crate) client_auth: ClientAuthMethod,
    /// Every user's plaintext password: Suture knows them all.
    pub(crate) users: &'a BTreeMap<String, UserConfig>,
    /// `PoolConfig::database`: when set, every client gets this database.
    pub(crate) database: Option<&'a str>,
    /// The pool's message limit; login packets are also capped at [`MAX_LOGIN_PACKET`].
    pub(crate) max_message_size: usize,
    /// The client's address (`None` for a Unix socket), for the host in ERR 1045.
    pub(crate) peer: Option<IpAddr>,
}

impl<'a> LoginSettings<'a> {
    pub(crate) fn new(config: &'a PoolConfig, peer: Option<IpAddr>) -> LoginSettings<'a> {
        LoginSettings {
            client_auth: config.client_auth,
            users: &config.users,
            database: config.database.as_deref(),
            max_message_size: config.limits.max_message_size,
            peer,
        }
    }

    /// The largest login packet accepted.
    pub(crate) fn login_limit(&self) -> usize {
        self.max_message_size.min(MAX_LOGIN_PACKET)
    }

    /// The client's host as the server shows it: `localhost` for loopback (and for a
    /// socket), else the IP (an IPv4-mapped IPv6 address as IPv4).
    pub(crate) fn client_host(&self) -> String {
        let Some(ip) = self.peer else {
            return "localhost".to_owned();
        };
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if ip.is_loopback() {
            "localhost".to_owned()
        } else {
            ip.to_string()
        }
    }
}

/// A client that authenticated, and what it asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClientLogin {
    pub(crate) user: String,
    /// After the pool's override; `None` when the client named none.
    pub(crate) database: Option<String>,
    /// The session's: the client's ∩ what Suture advertised.
    pub(crate) capabilities: u64,
    pub(crate) character_set: u8,
    /// The client's largest packet.
    pub(crate) max_packet: u32,
    /// At most [`MAX_ATTRIBUTES`], cut like names.
    pub(crate) attributes: Vec<(String, String)>,
    /// The plugin the client authenticated with.
    pub(crate) plugin: &'static str,
    /// The last scramble sent to the client: COM_CHANGE_USER answers it.
    pub(crate) scramble: Scramble,
    /// The sequence id of the packet that ends the login (the OK, or an ERR).
    pub(crate) next_seq: u8,
}

/// What Suture advertises to clients of a backend with capabilities `backend`.
pub(crate) fn advertised(backend: u64) -> u64 {
    OWN_CAPABILITIES | (backend & BACKEND_CAPABILITIES)
}

/// Runs the login on a fresh client connection up to a verified password: greeting, response,
/// authentication. Does not send the final OK (see [`encode_login_ok`]). Bytes the client sent
/// after its last login packet stay in `buf`. The caller bounds it with the login deadline.
pub(crate) async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    settings: &LoginSettings<'_>,
    greeting: &Greeting,
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<ClientLogin, ClientError> {
    let scramble = Scramble::fresh();
    let ours = advertised(greeting.capabilities);
    let handshake = HandshakeV10 {
        server_version: greeting.server_version.clone(),
        connection_id: greeting.connection_id,
        auth_plugin_data: scramble.as_bytes().to_vec(),
        capabilities: ours,
        character_set: greeting.character_set,
        status_flags: greeting.status,
        auth_plugin_name: Some(Plugin::offered(settings.client_auth).name().to_owned()),
    };
    let mut out = BytesMut::with_capacity(128);
    encode_handshake_v10(&handshake, &mut out).map_err(WireError::from)?;
    write_packets(stream, &out).await?;

    let packet = read_login_packet(stream, buf, settings.login_limit(), 1).await?;
    let seq = packet.last_seq.wrapping_add(1);
    let bad = |what: String| ClientError::BadHandshake { what, seq };
    let response = match parse_client_handshake(&packet.payload) {
        Ok(ClientHandshake::Response(response)) => response,
        Ok(ClientHandshake::SslRequest(_)) => {
            return Err(bad(
                "the client asked for TLS, which Suture does not offer: it listens on \
                 localhost only; connect without TLS"
                    .to_owned(),
            ))
        }
        Err(err) => return Err(bad(err.to_string())),
    };
    if response.capabilities & CLIENT_SECURE_CONNECTION == 0 {
        return Err(bad(
            "the client does not support 4.1 authentication (CLIENT_SECURE_CONNECTION)".to_owned(),
        ));
    }
    let verified = client_auth::authenticate(
        settings,
        stream,
        buf,
        Attempt {
            user: &response.username,
            plugin: response.auth_plugin_name.as_deref(),
            capabilities: response.capabilities,
            response: &response.auth_response,
            scramble,
            seq,
            host: &settings.client_host(),
        },
    )
    .await?;
    Ok(ClientLogin {
        user: response.username,
        database: pick_database(settings, response.database, verified.next_seq)?,
        capabilities: response.capabilities & ours,
        character_set: response.character_set,
        max_packet: response.max_packet_size,
        attributes: bounded_attributes(response.attributes),
        plugin: verified.plugin,
        scramble: verified.scramble,
        next_seq: verified.next_seq,
    })
}

/// Re-authenticates a client that sent COM_CHANGE_USER (`request_payload`, command byte
/// included) in the session `current`, as a server does: the response answers the last
/// scramble sent to the client, with an AuthSwitchRequest when the client picked a plugin
/// Suture does not verify. `next_seq` is the sequence id of Suture's first reply. Touches no
/// backend and sends no OK: the caller resets or replaces the backend for the returned login,
/// then sends [`encode_login_ok`] (or an ERR with the error's `login_seq`).
pub(crate) async fn change_user<S: AsyncRead + AsyncWrite + Unpin>(
    settings: &LoginSettings<'_>,
    current: &ClientLogin,
    stream: &mut S,
    buf: &mut BytesMut,
    request_payload: &[u8],
    next_seq: u8,
) -> Result<ClientLogin, ClientError> {
    let request = parse_change_user(request_payload, current.capabilities).map_err(|err| {
        ClientError::BadHandshake {
            what: format!("COM_CHANGE_USER: {err}"),
            seq: next_seq,
        }
    })?;
    let verified = client_auth::authenticate(
        settings,
        stream,
        buf,
        Attempt {
            user: &request.username,
            plugin: request.auth_plugin_name.as_deref(),
            capabilities: current.capabilities,
            response: &request.auth_response,
            scramble: current.scramble,
            seq: next_seq,
            host: &settings.client_host(),
        },
    )
    .await?;
    let database = Some(request.database).filter(|d| !d.is_empty());
    Ok(ClientLogin {
        user: request.username,
        database: pick_database(settings, database, verified.next_seq)?,
        capabilities: current.capabilities,
        // Collations past 255 do not fit the handshake's byte: keep the current one then.
        character_set: request
            .character_set
            .and_then(|c| u8::try_from(c).ok())
            .unwrap_or(current.character_set),
        max_packet: current.max_packet,
        attributes: bounded_attributes(request.attributes),
        plugin: verified.plugin,
        scramble: verified.scramble,
        next_seq: verified.next_seq,
    })
}

/// The OK that ends a successful login (or COM_CHANGE_USER), with the backend's `status`
/// flags, at the login's `next_seq`.
pub(crate) fn encode_login_ok(login: &ClientLogin, status: u16, buf: &mut BytesMut) {
    let ok = OkPacket {
        header: OK_HEADER,
        status: status & !suture_protocol::mysql::status::SERVER_SESSION_STATE_CHANGED,
        ..OkPacket::default()
    };
    // An OK header and no session state: encode_ok has nothing to refuse.
    let _ = encode_ok(&ok, login.capabilities, login.next_seq, buf);
}

/// What a server over its connection limit sends instead of a greeting: ERR 1040 "Too many
/// connections" with sequence id 0 (without a SQLSTATE, since the client's capabilities are
/// not known), written within `limit`. Best effort: the client may be gone already.
pub(crate) async fn refuse_at_cap<S: AsyncWrite + Unpin>(stream: &mut S, limit: Duration) {
    let notice = MyNotice::new(
        suture_protocol::mysql::error_code::ER_CON_COUNT_ERROR,
        "08004",
        "Too many connections",
    );
    let mut out = BytesMut::new();
    notice.encode_before_handshake(&mut out);
    let _ = wire::write_all(stream, &out, limit).await;
}

/// The database the client gets: the pool's when it sets one, else the one the client named
/// (none when empty). A name longer than MySQL allows is refused as the server refuses it
/// (ER_WRONG_DB_NAME), so no client-chosen text of any length becomes a pool key.
fn pick_database(
    settings: &LoginSettings<'_>,
    asked: Option<String>,
    seq: u8,
) -> Result<Option<String>, ClientError> {
    if let Some(db) = settings.database {
        return Ok(Some(db.to_owned()));
    }
    match asked.filter(|d| !d.is_empty()) {
        Some(db) if db.chars().count() > MAX_DATABASE_CHARS => Err(ClientError::BadDatabase {
            name: peer_text::name(&db).to_owned(),
            seq,
        }),
        db => Ok(db),
    }
}

fn bounded_attributes(attributes: Vec<(String, String)>) -> Vec<(String, String)> {
    attributes
        .into_iter()
        .take(MAX_ATTRIBUTES)
        .map(|(k, v)| {
            (
                peer_text::name(&k).to_owned(),
                peer_text::name(&v).to_owned(),
            )
        })
        .collect()
}

/// Writes login packets (the login deadline bounds it).
pub(crate) async fn write_packets<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
) -> Result<(), WireError> {
    stream.write_all(bytes).await?;
    stream.flush().await?;
    Ok(())
}

/// Reads the client's next login packet, which must carry sequence id `seq`. Bad framing is a
/// bad handshake (answered with sequence id `seq + 1`); EOF is a closed connection.
pub(crate) async fn read_login_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max: usize,
    seq: u8,
) -> Result<LogicalPacket, ClientError> {
    let bad = |what: String| ClientError::BadHandshake {
        what,
        seq: seq.wrapping_add(1),
    };
    loop {
        match split_logical_packet(buf, max) {
            Ok(Some(packet)) if packet.seq == seq => return Ok(packet),
            Ok(Some(packet)) => {
                return Err(bad(format!(
                    "packet sequence id {}, expected {seq}",
                    packet.seq
                )))
            }
            Ok(None) => {
                wire::fill(stream, buf).await?;
            }
            Err(err) => return Err(bad(err.to_string())),
        }
    }
}

#[cfg(test)]
#[path = "client_login_raw_tests.rs"]
mod raw_tests;
#[cfg(test)]
#[path = "client_login_tests.rs"]
mod tests;
