//! The connection phase up to authentication: the server greeting (HandshakeV10), the client's
//! reply (HandshakeResponse41) and the short SSLRequest a client sends first to switch to TLS.
//!
//! MariaDB tells itself apart by clearing CLIENT_MYSQL (bit 0) and then sends 4 bytes of extended
//! capabilities in the greeting's reserved bytes (and a client sends its own in the reply's);
//! both show up here as bits 32..64 of the `u64` capabilities. MariaDB's `5.5.5-` version prefix
//! is kept in `server_version` as sent.

use bytes::{BufMut, BytesMut};

use super::frame::framed;
use super::lenenc::{put_lenenc_int, put_lenenc_str, utf8, Reader};
use super::packets::capability::*;
use crate::ProtocolError;

/// The only protocol version of the greeting Suture speaks.
pub const PROTOCOL_VERSION_10: u8 = 10;
/// MariaDB's version prefix, kept for old replication clients.
pub const MARIADB_VERSION_PREFIX: &str = "5.5.5-";
/// Length of the fixed part of HandshakeResponse41 and of SSLRequest.
pub const SSL_REQUEST_LEN: usize = 32;
/// Bytes of the first part of the auth plugin data.
const PART1_LEN: usize = 8;

fn has(caps: u64, flag: u64) -> bool {
    caps & flag != 0
}

/// HandshakeV10: the server's greeting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeV10 {
    /// As sent, e.g. `8.0.36` or `5.5.5-10.11.6-MariaDB-0+deb12u1`.
    pub server_version: String,
    pub connection_id: u32,
    /// The whole auth plugin data (scramble): part 1 and part 2 without the trailing NUL,
    /// usually 20 bytes.
    pub auth_plugin_data: Vec<u8>,
    /// Lower, upper and (MariaDB, when CLIENT_MYSQL is clear) extended capability flags.
    pub capabilities: u64,
    pub character_set: u8,
    pub status_flags: u16,
    /// With CLIENT_PLUGIN_AUTH, e.g. `mysql_native_password` or `caching_sha2_password`.
    pub auth_plugin_name: Option<String>,
}

impl HandshakeV10 {
    /// Whether the server is MariaDB (it clears CLIENT_MYSQL).
    pub fn is_mariadb(&self) -> bool {
        !has(self.capabilities, CLIENT_MYSQL)
    }

    /// The version without MariaDB's `5.5.5-` prefix.
    pub fn version(&self) -> &str {
        self.server_version
            .strip_prefix(MARIADB_VERSION_PREFIX)
            .filter(|v| v.contains("MariaDB"))
            .unwrap_or(&self.server_version)
    }
}

/// Parses a HandshakeV10 payload. An ERR packet (a server refusing the connection, e.g. 1040
/// too many connections) is not a greeting: check the first byte for
/// [`ERR_HEADER`](super::ERR_HEADER) first.
pub fn parse_handshake_v10(payload: &[u8]) -> Result<HandshakeV10, ProtocolError> {
    let mut r = Reader::new(payload);
    if r.u8("empty greeting")? != PROTOCOL_VERSION_10 {
        return Err(ProtocolError::Malformed(
            "greeting protocol version is not 10",
        ));
    }
    let server_version = r
        .cstr_utf8("greeting server version is unterminated or not UTF-8")?
        .to_owned();
    let connection_id = r.u32("greeting connection id")?;
    let part1 = r.take(PART1_LEN, "greeting auth plugin data part 1")?;
    r.u8("greeting filler")?;
    let lower = r.u16("greeting capability flags")?;
    let character_set = r.u8("greeting character set")?;
    let status_flags = r.u16("greeting status flags")?;
    let upper = r.u16("greeting upper capability flags")?;
    let mut capabilities = u64::from(lower) | u64::from(upper) << 16;
    let data_len = usize::from(r.u8("greeting auth plugin data length")?);
    let reserved = r.take(10, "greeting reserved bytes")?;
    if !has(capabilities, CLIENT_MYSQL) {
        let ext = u32::from_le_bytes([reserved[6], reserved[7], reserved[8], reserved[9]]);
        capabilities |= u64::from(ext) << 32;
    }
    let mut auth_plugin_data = part1.to_vec();
    if has(capabilities, CLIENT_SECURE_CONNECTION) {
        let plugin_auth = has(capabilities, CLIENT_PLUGIN_AUTH) && data_len > PART1_LEN;
        let part2_len = if plugin_auth {
            (data_len - PART1_LEN).max(13)
        } else {
            13
        };
        let part2 = r.take(part2_len, "greeting auth plugin data part 2")?;
        // Part 2 ends with a NUL that the data length counts.
        let keep = if plugin_auth {
            data_len - PART1_LEN - 1
        } else {
            12
        };
        auth_plugin_data.extend_from_slice(&part2[..keep]);
    }
    let auth_plugin_name = if has(capabilities, CLIENT_PLUGIN_AUTH) {
        // Some 5.5 servers forgot the NUL: then the name runs to the end.
        let rest = r.take_rest();
        let name = memchr::memchr(0, rest).map_or(rest, |nul| &rest[..nul]);
        Some(utf8(name, "greeting auth plugin name is not UTF-8")?.to_owned())
    } else {
        None
    };
    Ok(HandshakeV10 {
        server_version,
        connection_id,
        auth_plugin_data,
        capabilities,
        character_set,
        status_flags,
        auth_plugin_name,
    })
}

/// Writes a HandshakeV10 packet (sequence id 0). The auth plugin data must be 8 bytes without
/// CLIENT_SECURE_CONNECTION, 20 with it but without CLIENT_PLUGIN_AUTH, and 8 to 254 bytes with
/// both; extended capabilities need CLIENT_MYSQL clear.
pub fn encode_handshake_v10(hs: &HandshakeV10, buf: &mut BytesMut) -> Result<(), ProtocolError> {
    let caps = hs.capabilities;
    let data = &hs.auth_plugin_data;
    let secure = has(caps, CLIENT_SECURE_CONNECTION);
    let plugin_auth = has(caps, CLIENT_PLUGIN_AUTH);
    let data_ok = match (secure, plugin_auth) {
        (false, _) => data.len() == PART1_LEN,
        (true, false) => data.len() == 20,
        (true, true) => (PART1_LEN..255).contains(&data.len()),
    };
    if !data_ok {
        return Err(ProtocolError::InvalidArgument(
            "auth plugin data length does not fit the capabilities",
        ));
    }
    if has(caps, CLIENT_MYSQL) && caps >> 32 != 0 {
        return Err(ProtocolError::InvalidArgument(
            "extended capabilities need CLIENT_MYSQL clear",
        ));
    }
    if hs.server_version.contains('\0')
        || hs
            .auth_plugin_name
            .as_deref()
            .is_some_and(|n| n.contains('\0'))
    {
        return Err(ProtocolError::InvalidArgument("NUL in a greeting string"));
    }
    if plugin_auth != hs.auth_plugin_name.is_some() {
        return Err(ProtocolError::InvalidArgument(
            "auth plugin name must be given exactly with CLIENT_PLUGIN_AUTH",
        ));
    }
    framed(0, buf, |buf| {
        buf.put_u8(PROTOCOL_VERSION_10);
        buf.put_slice(hs.server_version.as_bytes());
        buf.put_u8(0);
        buf.put_u32_le(hs.connection_id);
        buf.put_slice(&data[..PART1_LEN]);
        buf.put_u8(0);
        buf.put_u16_le(caps as u16);
        buf.put_u8(hs.character_set);
        buf.put_u16_le(hs.status_flags);
        buf.put_u16_le((caps >> 16) as u16);
        buf.put_u8(if plugin_auth { data.len() as u8 + 1 } else { 0 });
        buf.put_bytes(0, 6);
        buf.put_u32_le((caps >> 32) as u32);
        if secure {
            let part2 = &data[PART1_LEN..];
            buf.put_slice(part2);
            buf.put_u8(0);
            buf.put_bytes(0, 12usize.saturating_sub(part2.len()));
        }
        if let Some(name) = &hs.auth_plugin_name {
            buf.put_slice(name.as_bytes());
            buf.put_u8(0);
        }
        Ok(())
    })
}

/// SSLRequest: the fixed first part of HandshakeResponse41, sent alone with CLIENT_SSL before
/// the TLS handshake.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SslRequest {
    /// Client capabilities, MariaDB's extended ones in bits 32..64.
    pub capabilities: u64,
    pub max_packet_size: u32,
    pub character_set: u8,
}

/// HandshakeResponse41: the client's login.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HandshakeResponse41 {
    pub capabilities: u64,
    pub max_packet_size: u32,
    pub character_set: u8,
    pub username: String,
    /// The scramble computed by the auth plugin (empty for an empty password).
    pub auth_response: Vec<u8>,
    /// With CLIENT_CONNECT_WITH_DB, when sent.
    pub database: Option<String>,
    /// With CLIENT_PLUGIN_AUTH, when sent.
    pub auth_plugin_name: Option<String>,
    /// With CLIENT_CONNECT_ATTRS, in the order sent.
    pub attributes: Vec<(String, String)>,
}

/// What a client sends in reply to the greeting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientHandshake {
    SslRequest(SslRequest),
    Response(HandshakeResponse41),
}

fn parse_fixed(r: &mut Reader<'_>) -> Result<SslRequest, ProtocolError> {
    let lower = r.u32("handshake response capability flags")?;
    let max_packet_size = r.u32("handshake response max packet size")?;
    let character_set = r.u8("handshake response character set")?;
    let filler = r.take(23, "handshake response filler")?;
    let mut capabilities = u64::from(lower);
    if !has(capabilities, CLIENT_MYSQL) {
        let ext = u32::from_le_bytes([filler[19], filler[20], filler[21], filler[22]]);
        capabilities |= u64::from(ext) << 32;
    }
    if !has(capabilities, CLIENT_PROTOCOL_41) {
        return Err(ProtocolError::Malformed(
            "client does not speak protocol 4.1 (HandshakeResponse320)",
        ));
    }
    Ok(SslRequest {
        capabilities,
        max_packet_size,
        character_set,
    })
}

/// Parses the client's reply to the greeting: an SSLRequest (exactly 32 bytes with CLIENT_SSL)
/// or a HandshakeResponse41.
pub fn parse_client_handshake(payload: &[u8]) -> Result<ClientHandshake, ProtocolError> {
    let mut r = Reader::new(payload);
    let fixed = parse_fixed(&mut r)?;
    if r.is_empty() && has(fixed.capabilities, CLIENT_SSL) {
        return Ok(ClientHandshake::SslRequest(fixed));
    }
    let caps = fixed.capabilities;
    let username = r
        .cstr_utf8("handshake response user name is unterminated or not UTF-8")?
        .to_owned();
    let auth_response = if has(caps, CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA) {
        r.lenenc_str()?
    } else if has(caps, CLIENT_SECURE_CONNECTION) {
        let len = r.u8("handshake response auth response length")?;
        r.take(
            usize::from(len),
            "handshake response auth response past the end",
        )?
    } else {
        r.cstr("handshake response auth response is unterminated")?
    }
    .to_vec();
    let mut response = HandshakeResponse41 {
        capabilities: caps,
        max_packet_size: fixed.max_packet_size,
        character_set: fixed.character_set,
        username,
        auth_response,
        ..HandshakeResponse41::default()
    };
    // Fields a client may leave out at the end even when it sets their flag.
    if has(caps, CLIENT_CONNECT_WITH_DB) && !r.is_empty() {
        let db = r.cstr_utf8("handshake response database is unterminated or not UTF-8")?;
        response.database = Some(db.to_owned());
    }
    if has(caps, CLIENT_PLUGIN_AUTH) && !r.is_empty() {
        let name = r.cstr_utf8("handshake response plugin name is unterminated or not UTF-8")?;
        response.auth_plugin_name = Some(name.to_owned());
    }
    if has(caps, CLIENT_CONNECT_ATTRS) && !r.is_empty() {
        response.attributes = parse_attributes(&mut r)?;
    }
    // MySQL 8 may append a zstd compression level; nothing else is read.
    Ok(ClientHandshake::Response(response))
}

/// Connection attributes: a length-encoded total, then key/value `string<lenenc>` pairs.
pub(crate) fn parse_attributes(r: &mut Reader<'_>) -> Result<Vec<(String, String)>, ProtocolError> {
    let total = r.lenenc_int()?;
    let total = usize::try_from(total)
        .map_err(|_| ProtocolError::Malformed("connection attributes past the end"))?;
    let mut a = Reader::new(r.take(total, "connection attributes past the end")?);
    let mut attributes = Vec::new();
    while !a.is_empty() {
        let key = utf8(a.lenenc_str()?, "connection attribute key is not UTF-8")?;
        let value = utf8(a.lenenc_str()?, "connection attribute value is not UTF-8")?;
        attributes.push((key.to_owned(), value.to_owned()));
    }
    Ok(attributes)
}

pub(crate) fn put_attributes(attributes: &[(String, String)], buf: &mut BytesMut) {
    let mut block = Vec::new();
    for (k, v) in attributes {
        put_lenenc_str(k.as_bytes(), &mut block);
        put_lenenc_str(v.as_bytes(), &mut block);
    }
    put_lenenc_str(&block, buf);
}

fn put_fixed(fixed: &SslRequest, buf: &mut BytesMut) {
    let caps = fixed.capabilities;
    buf.put_u32_le(caps as u32);
    buf.put_u32_le(fixed.max_packet_size);
    buf.put_u8(fixed.character_set);
    buf.put_bytes(0, 19);
    buf.put_u32_le(if has(caps, CLIENT_MYSQL) {
        0
    } else {
        (caps >> 32) as u32
    });
}

fn check_fixed(caps: u64) -> Result<(), ProtocolError> {
    if !has(caps, CLIENT_PROTOCOL_41) {
        return Err(ProtocolError::InvalidArgument(
            "CLIENT_PROTOCOL_41 is required",
        ));
    }
    if has(caps, CLIENT_MYSQL) && caps >> 32 != 0 {
        return Err(ProtocolError::InvalidArgument(
            "extended capabilities need CLIENT_MYSQL clear",
        ));
    }
    Ok(())
}

/// Writes an SSLRequest (its capabilities must have CLIENT_SSL and CLIENT_PROTOCOL_41).
pub fn encode_ssl_request(
    req: &SslRequest,
    seq: u8,
    buf: &mut BytesMut,
) -> Result<(), ProtocolError> {
    check_fixed(req.capabilities)?;
    if !has(req.capabilities, CLIENT_SSL) {
        return Err(ProtocolError::InvalidArgument(
            "SSLRequest without CLIENT_SSL",
        ));
    }
    framed(seq, buf, |buf| {
        put_fixed(req, buf);
        Ok(())
    })
}

/// Writes a HandshakeResponse41. Optional fields are written when present, and a missing
/// database or plugin name as an empty string when a later field must follow it.
pub fn encode_handshake_response(
    resp: &HandshakeResponse41,
    seq: u8,
    buf: &mut BytesMut,
) -> Result<(), ProtocolError> {
    let caps = resp.capabilities;
    check_fixed(caps)?;
    let nul = |s: &str| s.contains('\0');
    if nul(&resp.username)
        || resp.database.as_deref().is_some_and(nul)
        || resp.auth_plugin_name.as_deref().is_some_and(nul)
    {
        return Err(ProtocolError::InvalidArgument(
            "NUL in a handshake response string",
        ));
    }
    let lenenc = has(caps, CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA);
    let secure = has(caps, CLIENT_SECURE_CONNECTION);
    if !lenenc && secure && resp.auth_response.len() > 255 {
        return Err(ProtocolError::InvalidArgument(
            "auth response over 255 bytes needs CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA",
        ));
    }
    if !lenenc && !secure && resp.auth_response.contains(&0) {
        return Err(ProtocolError::InvalidArgument(
            "NUL in a NUL-terminated auth response",
        ));
    }
    let with = |flag: u64, present: bool| has(caps, flag) && present;
    let attrs = with(CLIENT_CONNECT_ATTRS, !resp.attributes.is_empty());
    let plugin = with(CLIENT_PLUGIN_AUTH, resp.auth_plugin_name.is_some() || attrs);
    let db = with(
        CLIENT_CONNECT_WITH_DB,
        resp.database.is_some() || plugin || attrs,
    );
    let fixed = SslRequest {
        capabilities: caps,
        max_packet_size: resp.max_packet_size,
        character_set: resp.character_set,
    };
    framed(seq, buf, |buf| {
        put_fixed(&fixed, buf);
        buf.put_slice(resp.username.as_bytes());
        buf.put_u8(0);
        if lenenc {
            put_lenenc_int(resp.auth_response.len() as u64, buf);
            buf.put_slice(&resp.auth_response);
        } else if secure {
            buf.put_u8(resp.auth_response.len() as u8);
            buf.put_slice(&resp.auth_response);
        } else {
            buf.put_slice(&resp.auth_response);
            buf.put_u8(0);
        }
        if db {
            buf.put_slice(resp.database.as_deref().unwrap_or("").as_bytes());
            buf.put_u8(0);
        }
        if plugin {
            buf.put_slice(resp.auth_plugin_name.as_deref().unwrap_or("").as_bytes());
            buf.put_u8(0);
        }
        if attrs {
            put_attributes(&resp.attributes, buf);
        }
        Ok(())
    })
}
