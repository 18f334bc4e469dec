//! The authentication exchange after HandshakeResponse41 (and after COM_CHANGE_USER):
//! AuthSwitchRequest (0xFE), AuthMoreData (0x01) with caching_sha2_password's fast-auth result
//! (0x03 success, 0x04 perform full authentication), the RSA public key request (0x02) and its
//! reply, and the COM_CHANGE_USER request itself.
//!
//! The scrambles (mysql_native_password's SHA1, caching_sha2_password's SHA256) and the RSA
//! encryption of the password are computed by the proxy with `mysql_common`; this module only
//! frames what goes on the wire.

use bytes::{BufMut, BytesMut};

use super::frame::framed;
use super::handshake::{parse_attributes, put_attributes};
use super::lenenc::{utf8, Reader};
use super::packets::capability::*;
use super::packets::{
    command, parse_err, parse_ok, ErrPacket, OkPacket, EOF_HEADER, ERR_HEADER, OK_HEADER,
};
use crate::ProtocolError;

/// Header byte of AuthMoreData.
pub const AUTH_MORE_DATA_HEADER: u8 = 0x01;
/// Auth plugin names Suture speaks.
pub const MYSQL_NATIVE_PASSWORD: &str = "mysql_native_password";
pub const CACHING_SHA2_PASSWORD: &str = "caching_sha2_password";

/// caching_sha2_password's bytes inside AuthMoreData and from the client.
pub mod caching_sha2 {
    /// Client → server: send me your RSA public key (the reply is AuthMoreData with the PEM).
    pub const REQUEST_PUBLIC_KEY: u8 = 0x02;
    /// Server → client (AuthMoreData): the fast path succeeded; an OK packet follows.
    pub const FAST_AUTH_SUCCESS: u8 = 0x03;
    /// Server → client (AuthMoreData): the cache missed; send the password (over TLS) or the
    /// RSA-encrypted password.
    pub const PERFORM_FULL_AUTHENTICATION: u8 = 0x04;
}

/// AuthSwitchRequest: the server asks for another auth plugin, with fresh plugin data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthSwitchRequest<'a> {
    /// Empty for the old (pre-4.1) one-byte request, which asks for mysql_old_password.
    pub plugin_name: &'a str,
    /// The plugin data as sent (for the native and caching_sha2 plugins a 20-byte scramble and
    /// a NUL).
    pub plugin_data: &'a [u8],
}

impl<'a> AuthSwitchRequest<'a> {
    /// The scramble without the trailing NUL servers append.
    pub fn scramble(&self) -> &'a [u8] {
        self.plugin_data
            .strip_suffix(&[0])
            .unwrap_or(self.plugin_data)
    }
}

/// What the server sends during authentication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthPacket<'a> {
    Ok(OkPacket<'a>),
    Err(ErrPacket<'a>),
    Switch(AuthSwitchRequest<'a>),
    /// AuthMoreData: plugin-specific data (the fast-auth result, or a PEM public key).
    MoreData(&'a [u8]),
}

/// Parses a server packet of the authentication exchange with the capabilities `caps`.
pub fn parse_auth_packet(payload: &[u8], caps: u64) -> Result<AuthPacket<'_>, ProtocolError> {
    match payload.split_first() {
        Some((&OK_HEADER, _)) => parse_ok(payload, caps).map(AuthPacket::Ok),
        Some((&ERR_HEADER, _)) => parse_err(payload, caps).map(AuthPacket::Err),
        Some((&EOF_HEADER, rest)) => parse_auth_switch(rest).map(AuthPacket::Switch),
        Some((&AUTH_MORE_DATA_HEADER, rest)) => Ok(AuthPacket::MoreData(rest)),
        Some(_) => Err(ProtocolError::Malformed(
            "unexpected packet during authentication",
        )),
        None => Err(ProtocolError::Malformed(
            "empty packet during authentication",
        )),
    }
}

fn parse_auth_switch(rest: &[u8]) -> Result<AuthSwitchRequest<'_>, ProtocolError> {
    if rest.is_empty() {
        return Ok(AuthSwitchRequest {
            plugin_name: "",
            plugin_data: rest,
        });
    }
    let mut r = Reader::new(rest);
    let name = r.cstr_utf8("AuthSwitchRequest plugin name is unterminated or not UTF-8")?;
    if name.is_empty() {
        return Err(ProtocolError::Malformed(
            "AuthSwitchRequest with an empty plugin name",
        ));
    }
    Ok(AuthSwitchRequest {
        plugin_name: name,
        plugin_data: r.take_rest(),
    })
}

/// Writes an AuthSwitchRequest. `plugin_data` is written as given: for the native and
/// caching_sha2 plugins pass the 20-byte scramble followed by a NUL.
pub fn encode_auth_switch_request(
    plugin_name: &str,
    plugin_data: &[u8],
    seq: u8,
    buf: &mut BytesMut,
) -> Result<(), ProtocolError> {
    if plugin_name.is_empty() || plugin_name.contains('\0') {
        return Err(ProtocolError::InvalidArgument("bad auth plugin name"));
    }
    framed(seq, buf, |buf| {
        buf.put_u8(EOF_HEADER);
        buf.put_slice(plugin_name.as_bytes());
        buf.put_u8(0);
        buf.put_slice(plugin_data);
        Ok(())
    })
}

/// Writes AuthMoreData: 0x01 and `data` (e.g. `[FAST_AUTH_SUCCESS]` or a PEM public key).
pub fn encode_auth_more_data(
    data: &[u8],
    seq: u8,
    buf: &mut BytesMut,
) -> Result<(), ProtocolError> {
    framed(seq, buf, |buf| {
        buf.put_u8(AUTH_MORE_DATA_HEADER);
        buf.put_slice(data);
        Ok(())
    })
}

/// Writes a packet whose payload is `data` as it is: the client's auth switch response, its
/// RSA-encrypted password, the public key request (`[REQUEST_PUBLIC_KEY]`) or, over TLS, the
/// password and a NUL.
pub fn encode_auth_data(data: &[u8], seq: u8, buf: &mut BytesMut) -> Result<(), ProtocolError> {
    framed(seq, buf, |buf| {
        buf.put_slice(data);
        Ok(())
    })
}

/// COM_CHANGE_USER: log in again as another user on the same connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeUser {
    pub username: String,
    pub auth_response: Vec<u8>,
    pub database: String,
    /// Sent by 4.1 clients after the database, when more bytes follow.
    pub character_set: Option<u16>,
    pub auth_plugin_name: Option<String>,
    pub attributes: Vec<(String, String)>,
}

/// Parses a COM_CHANGE_USER payload (command byte included) with the client's capabilities.
pub fn parse_change_user(payload: &[u8], caps: u64) -> Result<ChangeUser, ProtocolError> {
    let mut r = Reader::new(payload);
    if r.u8("empty COM_CHANGE_USER")? != command::COM_CHANGE_USER {
        return Err(ProtocolError::Malformed("not a COM_CHANGE_USER"));
    }
    let username = r
        .cstr_utf8("COM_CHANGE_USER user name is unterminated or not UTF-8")?
        .to_owned();
    let auth_response = if caps & CLIENT_SECURE_CONNECTION != 0 {
        let len = r.u8("COM_CHANGE_USER auth response length")?;
        r.take(
            usize::from(len),
            "COM_CHANGE_USER auth response past the end",
        )?
    } else {
        r.cstr("COM_CHANGE_USER auth response is unterminated")?
    }
    .to_vec();
    let database = r
        .cstr_utf8("COM_CHANGE_USER database is unterminated or not UTF-8")?
        .to_owned();
    let mut cu = ChangeUser {
        username,
        auth_response,
        database,
        ..ChangeUser::default()
    };
    if !r.is_empty() {
        cu.character_set = Some(r.u16("COM_CHANGE_USER character set")?);
        if caps & CLIENT_PLUGIN_AUTH != 0 && !r.is_empty() {
            let name = r.cstr("COM_CHANGE_USER plugin name is unterminated")?;
            cu.auth_plugin_name =
                Some(utf8(name, "COM_CHANGE_USER plugin name is not UTF-8")?.to_owned());
        }
        if caps & CLIENT_CONNECT_ATTRS != 0 && !r.is_empty() {
            cu.attributes = parse_attributes(&mut r)?;
        }
    }
    Ok(cu)
}

/// Writes a COM_CHANGE_USER request (sequence id 0) for a backend with capabilities `caps`
/// (CLIENT_SECURE_CONNECTION is assumed: the auth response is length-prefixed).
pub fn encode_change_user(
    cu: &ChangeUser,
    caps: u64,
    buf: &mut BytesMut,
) -> Result<(), ProtocolError> {
    let nul = |s: &str| s.contains('\0');
    if nul(&cu.username) || nul(&cu.database) || cu.auth_plugin_name.as_deref().is_some_and(nul) {
        return Err(ProtocolError::InvalidArgument(
            "NUL in a COM_CHANGE_USER string",
        ));
    }
    if caps & CLIENT_SECURE_CONNECTION == 0 || cu.auth_response.len() > 255 {
        return Err(ProtocolError::InvalidArgument(
            "COM_CHANGE_USER needs CLIENT_SECURE_CONNECTION and an auth response of at most 255 bytes",
        ));
    }
    let attrs = caps & CLIENT_CONNECT_ATTRS != 0 && !cu.attributes.is_empty();
    let plugin = caps & CLIENT_PLUGIN_AUTH != 0 && (cu.auth_plugin_name.is_some() || attrs);
    let charset = cu.character_set.is_some() || plugin || attrs;
    framed(0, buf, |buf| {
        buf.put_u8(command::COM_CHANGE_USER);
        buf.put_slice(cu.username.as_bytes());
        buf.put_u8(0);
        buf.put_u8(cu.auth_response.len() as u8);
        buf.put_slice(&cu.auth_response);
        buf.put_slice(cu.database.as_bytes());
        buf.put_u8(0);
        if charset {
            buf.put_u16_le(cu.character_set.unwrap_or(0));
        }
        if plugin {
            buf.put_slice(cu.auth_plugin_name.as_deref().unwrap_or("").as_bytes());
            buf.put_u8(0);
        }
        if attrs {
            put_attributes(&cu.attributes, buf);
        }
        Ok(())
    })
}
