//! Suture's side of a MySQL backend login after the greeting: the first auth response for the
//! greeting's plugin, and the exchange up to the server's OK — AuthSwitchRequest to
//! `mysql_native_password` or `caching_sha2_password` (or, over TLS only,
//! `mysql_clear_password`), caching_sha2's fast-auth result, and its full authentication: the
//! cleartext password over TLS, or without TLS the password encrypted with the server's RSA
//! public key (RSA-OAEP, through `mysql_common`). Always with the configured password.
//!
//! Generic over the stream halves so the exchange can be driven by a scripted server in tests;
//! the caller bounds it with the login deadline.

use bytes::BytesMut;
use mysql_common::auth::plugins::caching_sha2_password::scramble_sha256;
use mysql_common::auth::plugins::mysql_native_password::scramble_native;
use suture_protocol::mysql::{
    caching_sha2, encode_auth_data, parse_auth_packet, split_logical_packet, AuthPacket, ErrPacket,
    LogicalPacket, CACHING_SHA2_PASSWORD, MYSQL_NATIVE_PASSWORD,
};
use suture_protocol::ProtocolError;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::mysql::backend::MyBackendError;
use crate::mysql::errors::MyNotice;
use crate::wire::{self, WireError};

/// The plugin that sends the password as it is; Suture answers it only over TLS.
pub(crate) const MYSQL_CLEAR_PASSWORD: &str = "mysql_clear_password";
/// Bytes of the scramble the native and caching_sha2 plugins use.
const SCRAMBLE_LEN: usize = 20;

/// The auth plugins Suture can answer as a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClientPlugin {
    Native,
    CachingSha2,
    /// `mysql_clear_password`: only over TLS.
    Clear,
}

impl ClientPlugin {
    /// The plugin of that name, if Suture speaks it.
    pub(crate) fn named(name: &str) -> Option<ClientPlugin> {
        match name {
            MYSQL_NATIVE_PASSWORD => Some(ClientPlugin::Native),
            CACHING_SHA2_PASSWORD => Some(ClientPlugin::CachingSha2),
            MYSQL_CLEAR_PASSWORD => Some(ClientPlugin::Clear),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            ClientPlugin::Native => MYSQL_NATIVE_PASSWORD,
            ClientPlugin::CachingSha2 => CACHING_SHA2_PASSWORD,
            ClientPlugin::Clear => MYSQL_CLEAR_PASSWORD,
        }
    }

    /// The plugin for the first response to a greeting that named `greeting`: that one when
    /// Suture speaks it (cleartext only over TLS), else mysql_native_password, which the server
    /// then switches away from if it wants another.
    pub(crate) fn for_greeting(greeting: Option<&str>, secure: bool) -> ClientPlugin {
        match greeting.and_then(ClientPlugin::named) {
            Some(ClientPlugin::Clear) if !secure => ClientPlugin::Native,
            Some(plugin) => plugin,
            None => ClientPlugin::Native,
        }
    }

    /// The auth response of this plugin to `scramble` (empty for an empty password).
    pub(crate) fn response(self, scramble: &[u8], password: &str) -> Result<Vec<u8>, WireError> {
        let password = password.as_bytes();
        Ok(match self {
            ClientPlugin::Native => scramble_native(scramble, password)
                .map(|s| s.to_vec())
                .unwrap_or_default(),
            ClientPlugin::CachingSha2 => scramble_sha256(&scramble20(scramble)?, password)
                .map(|s| s.to_vec())
                .unwrap_or_default(),
            ClientPlugin::Clear => nul_terminated(password),
        })
    }
}

fn scramble20(scramble: &[u8]) -> Result<[u8; SCRAMBLE_LEN], WireError> {
    scramble
        .get(..SCRAMBLE_LEN)
        .and_then(|s| <[u8; SCRAMBLE_LEN]>::try_from(s).ok())
        .ok_or(WireError::Protocol(ProtocolError::Malformed(
            "auth plugin data shorter than a 20-byte scramble",
        )))
}

fn nul_terminated(password: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(password.len() + 1);
    out.extend_from_slice(password);
    out.push(0);
    out
}

/// The password, NUL-terminated, XORed with the scramble (repeated): what caching_sha2's full
/// authentication encrypts with the server's public key.
pub(crate) fn xor_with_scramble(password: &str, scramble: &[u8]) -> Vec<u8> {
    let mut bytes = nul_terminated(password.as_bytes());
    if !scramble.is_empty() {
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte ^= scramble[i % scramble.len()];
        }
    }
    bytes
}

/// Where the exchange starts: what the HandshakeResponse41 answered, and how.
#[derive(Clone, Debug)]
pub(crate) struct AuthStart {
    pub(crate) plugin: ClientPlugin,
    /// The greeting's scramble.
    pub(crate) scramble: Vec<u8>,
    /// The sequence id of the server's first packet after the response.
    pub(crate) seq: u8,
    /// The negotiated capabilities (to read OK and ERR packets).
    pub(crate) capabilities: u64,
    /// TLS is in force: the full authentication may send the password as it is.
    pub(crate) secure: bool,
}

/// What the login ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AuthOk {
    /// Status flags of the OK packet.
    pub(crate) status: u16,
}

/// The server's ERR as a [`MyNotice`].
pub(crate) fn notice_of(err: &ErrPacket<'_>) -> MyNotice {
    let sql_state = match err.sql_state {
        Some(_) => err.sql_state_str(),
        None => "HY000",
    };
    MyNotice::new(err.code, sql_state, err.message_lossy())
}

/// Reads one logical packet (bytes after it stay in `rbuf`).
pub(crate) async fn read_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
    rbuf: &mut BytesMut,
    max: usize,
) -> Result<LogicalPacket, WireError> {
    loop {
        if let Some(packet) = split_logical_packet(rbuf, max)? {
            return Ok(packet);
        }
        wire::fill(reader, rbuf).await?;
    }
}

/// Writes `payload` as one packet with sequence id `seq` (login packets are small).
async fn send<W: AsyncWrite + Unpin>(
    writer: &mut W,
    seq: u8,
    payload: &[u8],
) -> Result<(), WireError> {
    let mut out = BytesMut::new();
    encode_auth_data(payload, seq, &mut out)?;
    writer.write_all(&out).await?;
    writer.flush().await?;
    Ok(())
}

/// Answers the server's authentication packets with `password` until its OK.
pub(crate) async fn authenticate<R, W>(
    reader: &mut R,
    writer: &mut W,
    rbuf: &mut BytesMut,
    max: usize,
    start: AuthStart,
    password: &str,
) -> Result<AuthOk, MyBackendError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let AuthStart {
        mut plugin,
        mut scramble,
        mut seq,
        capabilities,
        secure,
    } = start;
    // caching_sha2 asked for the RSA key: the next AuthMoreData is the PEM.
    let mut awaiting_key = false;
    loop {
        let packet = read_packet(reader, rbuf, max).await?;
        if packet.seq != seq {
            return Err(WireError::Protocol(ProtocolError::OutOfSequence {
                expected: seq,
                got: packet.seq,
            })
            .into());
        }
        let reply_seq = packet.last_seq.wrapping_add(1);
        seq = reply_seq.wrapping_add(1);
        let reply = match parse_auth_packet(&packet.payload, capabilities)
            .map_err(WireError::from)?
        {
            AuthPacket::Ok(ok) => return Ok(AuthOk { status: ok.status }),
            AuthPacket::Err(err) => return Err(MyBackendError::Refused(notice_of(&err))),
            AuthPacket::Switch(switch) => {
                plugin = ClientPlugin::named(switch.plugin_name)
                    .filter(|p| *p != ClientPlugin::Clear || secure)
                    .ok_or_else(|| MyBackendError::UnsupportedAuth(switch.plugin_name.into()))?;
                scramble = switch.scramble().to_vec();
                awaiting_key = false;
                plugin.response(&scramble, password)?
            }
            AuthPacket::MoreData(data) if plugin == ClientPlugin::CachingSha2 => {
                match more_data(data, awaiting_key, secure, password, &scramble)? {
                    FullAuth::Wait => {
                        // Nothing to answer: the OK comes next.
                        seq = reply_seq;
                        continue;
                    }
                    FullAuth::Send(bytes) => bytes,
                    FullAuth::RequestKey => {
                        awaiting_key = true;
                        vec![caching_sha2::REQUEST_PUBLIC_KEY]
                    }
                }
            }
            AuthPacket::MoreData(_) => {
                return Err(MyBackendError::UnsupportedAuth(format!(
                    "AuthMoreData for {}",
                    plugin.name()
                )))
            }
        };
        send(writer, reply_seq, &reply).await?;
    }
}

/// What to do with one of caching_sha2's AuthMoreData packets.
enum FullAuth {
    /// The fast path succeeded: the OK follows.
    Wait,
    /// Answer with these bytes.
    Send(Vec<u8>),
    /// Ask for the server's RSA public key.
    RequestKey,
}

fn more_data(
    data: &[u8],
    awaiting_key: bool,
    secure: bool,
    password: &str,
    scramble: &[u8],
) -> Result<FullAuth, MyBackendError> {
    if awaiting_key {
        let plain = xor_with_scramble(password, scramble);
        return mysql_common::crypto::encrypt(&plain, data)
            .map(FullAuth::Send)
            .map_err(|_| MyBackendError::NoSecureChannel);
    }
    match data {
        [caching_sha2::FAST_AUTH_SUCCESS] => Ok(FullAuth::Wait),
        [caching_sha2::PERFORM_FULL_AUTHENTICATION] if secure => {
            Ok(FullAuth::Send(nul_terminated(password.as_bytes())))
        }
        [caching_sha2::PERFORM_FULL_AUTHENTICATION] => Ok(FullAuth::RequestKey),
        _ => Err(MyBackendError::UnsupportedAuth(
            "unexpected caching_sha2_password data".into(),
        )),
    }
}

#[cfg(test)]
#[path = "backend_auth_tests.rs"]
mod tests;
