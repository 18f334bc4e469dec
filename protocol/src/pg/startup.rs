//! The startup phase: untagged packets a client sends first (StartupMessage, SSLRequest,
//! GSSENCRequest, CancelRequest). Each is an int32 length (counting itself) and an int32 code.

use bytes::{Buf, BytesMut};

use super::cursor::{peek_i32, Cursor};
use crate::ProtocolError;

/// Protocol version 3.0, the only major version Suture speaks.
pub const PROTOCOL_VERSION_3_0: u32 = 0x0003_0000;
/// Request code of SSLRequest (1234.5679).
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
/// Request code of GSSENCRequest (1234.5680).
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// Request code of CancelRequest (1234.5678).
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// Length of SSLRequest and GSSENCRequest packets.
const BARE_REQUEST_LEN: usize = 8;
/// Length of a CancelRequest packet with a 4-byte secret key.
const CANCEL_REQUEST_LEN: usize = 16;

/// One packet of the startup phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartupRequest {
    SslRequest,
    GssEncRequest,
    Cancel(CancelRequest),
    Startup(StartupMessage),
}

/// CancelRequest: which backend to cancel, and the key proving the right to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CancelRequest {
    pub process_id: i32,
    pub secret_key: i32,
}

/// StartupMessage: the protocol version and the connection parameters, in the order sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartupMessage {
    /// Major version in the high 16 bits, minor in the low 16 (3.0 is `0x0003_0000`).
    pub protocol_version: u32,
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    /// The value of a parameter. If a name is sent twice the last value wins, as in PostgreSQL.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The user name; `None` if missing or empty (PostgreSQL refuses both).
    pub fn user(&self) -> Option<&str> {
        self.get("user").filter(|u| !u.is_empty())
    }

    /// The database; like PostgreSQL, defaults to the user name when missing or empty.
    pub fn database(&self) -> Option<&str> {
        self.get("database")
            .filter(|d| !d.is_empty())
            .or_else(|| self.user())
    }
}

/// Parses one startup-phase packet from the front of `buf` and advances `buf` past it.
///
/// `Ok(None)` while the packet is incomplete (nothing is consumed). The length is checked
/// (`8 <= length <= max_len`) before waiting for the body. Protocol 3.x is accepted and its minor
/// version kept; any other version is [`ProtocolError::UnsupportedProtocolVersion`].
pub fn parse_startup(
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<Option<StartupRequest>, ProtocolError> {
    let Some(raw_len) = peek_i32(buf) else {
        return Ok(None);
    };
    let len =
        usize::try_from(raw_len).map_err(|_| ProtocolError::MessageTooShort { len: raw_len })?;
    if len < BARE_REQUEST_LEN {
        return Err(ProtocolError::MessageTooShort { len: raw_len });
    }
    if len > max_len {
        return Err(ProtocolError::MessageTooLarge { len, max: max_len });
    }
    let Some(packet) = buf.get(..len) else {
        return Ok(None);
    };
    let request = parse_packet(packet)?;
    buf.advance(len);
    Ok(Some(request))
}

/// Decodes a whole startup packet, length field included.
fn parse_packet(packet: &[u8]) -> Result<StartupRequest, ProtocolError> {
    let mut c = Cursor::new(packet);
    c.read_i32("startup packet length")?;
    // Reinterpret the code as unsigned: request codes and versions are compared as bit patterns.
    let code = c.read_i32("startup packet code")? as u32;
    match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => {
            if packet.len() != BARE_REQUEST_LEN {
                return Err(ProtocolError::Malformed(
                    "SSLRequest/GSSENCRequest length is not 8",
                ));
            }
            Ok(if code == SSL_REQUEST_CODE {
                StartupRequest::SslRequest
            } else {
                StartupRequest::GssEncRequest
            })
        }
        CANCEL_REQUEST_CODE => {
            if packet.len() != CANCEL_REQUEST_LEN {
                return Err(ProtocolError::Malformed("CancelRequest length is not 16"));
            }
            let process_id = c.read_i32("CancelRequest process id")?;
            let secret_key = c.read_i32("CancelRequest secret key")?;
            Ok(StartupRequest::Cancel(CancelRequest {
                process_id,
                secret_key,
            }))
        }
        v if v >> 16 == 3 => Ok(StartupRequest::Startup(StartupMessage {
            protocol_version: v,
            params: parse_params(c)?,
        })),
        v => Err(ProtocolError::UnsupportedProtocolVersion(v)),
    }
}

/// Reads name/value C-string pairs up to the terminating empty name, which must be the last byte.
fn parse_params(mut c: Cursor<'_>) -> Result<Vec<(String, String)>, ProtocolError> {
    let mut params = Vec::new();
    loop {
        let name = c.read_str("startup parameter name is unterminated or not UTF-8")?;
        if name.is_empty() {
            c.finish("bytes after the startup parameter terminator")?;
            return Ok(params);
        }
        let value = c.read_str("startup parameter value is unterminated or not UTF-8")?;
        params.push((name.to_owned(), value.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Option<StartupRequest>, ProtocolError> {
        parse_startup(&mut BytesMut::from(bytes), 10_000)
    }

    #[test]
    fn golden_startup_message() {
        // length 34, version 3.0, user=alice, database=shop, terminator.
        let bytes = b"\0\0\0\x22\0\x03\0\0user\0alice\0database\0shop\0\0";
        assert_eq!(bytes.len(), 34);
        let mut buf = BytesMut::from(&bytes[..]);
        buf.extend_from_slice(b"next");
        let req = parse_startup(&mut buf, 10_000).unwrap().unwrap();
        assert_eq!(&buf[..], b"next");
        let StartupRequest::Startup(m) = req else {
            panic!("not a startup message: {req:?}");
        };
        assert_eq!(m.protocol_version, PROTOCOL_VERSION_3_0);
        assert_eq!(
            m.params,
            vec![
                ("user".to_owned(), "alice".to_owned()),
                ("database".to_owned(), "shop".to_owned())
            ]
        );
        assert_eq!(m.user(), Some("alice"));
        assert_eq!(m.database(), Some("shop"));
        assert_eq!(m.get("application_name"), None);
    }

    #[test]
    fn database_defaults_to_user_and_last_value_wins() {
        let m = StartupMessage {
            protocol_version: PROTOCOL_VERSION_3_0,
            params: vec![
                ("user".into(), "bob".into()),
                ("database".into(), "".into()),
                ("x".into(), "1".into()),
                ("x".into(), "2".into()),
            ],
        };
        assert_eq!(m.database(), Some("bob"));
        assert_eq!(m.get("x"), Some("2"));
        let m = StartupMessage {
            protocol_version: PROTOCOL_VERSION_3_0,
            params: vec![("user".into(), "".into())],
        };
        assert_eq!(m.user(), None);
        assert_eq!(m.database(), None);
    }

    #[test]
    fn minor_version_kept() {
        let req = parse(b"\0\0\0\x09\0\x03\0\x02\0").unwrap().unwrap();
        assert_eq!(
            req,
            StartupRequest::Startup(StartupMessage {
                protocol_version: 0x0003_0002,
                params: vec![]
            })
        );
    }

    #[test]
    fn golden_special_requests() {
        assert_eq!(
            parse(b"\0\0\0\x08\x04\xd2\x16\x2f").unwrap(),
            Some(StartupRequest::SslRequest)
        );
        assert_eq!(
            parse(b"\0\0\0\x08\x04\xd2\x16\x30").unwrap(),
            Some(StartupRequest::GssEncRequest)
        );
        assert_eq!(
            parse(b"\0\0\0\x10\x04\xd2\x16\x2e\0\0\x30\x39\xff\xff\xff\xfe").unwrap(),
            Some(StartupRequest::Cancel(CancelRequest {
                process_id: 12345,
                secret_key: -2
            }))
        );
    }

    #[test]
    fn incomplete_is_none_and_consumes_nothing() {
        let full = b"\0\0\0\x22\0\x03\0\0user\0alice\0database\0shop\0\0";
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(parse_startup(&mut buf, 10_000), Ok(None), "cut at {cut}");
            assert_eq!(buf.len(), cut);
        }
    }

    #[test]
    fn length_checked_before_body() {
        assert_eq!(
            parse(b"\0\0\0\x07"),
            Err(ProtocolError::MessageTooShort { len: 7 })
        );
        assert_eq!(
            parse(b"\x80\0\0\0"),
            Err(ProtocolError::MessageTooShort { len: i32::MIN })
        );
        assert_eq!(
            parse_startup(&mut BytesMut::from(&b"\0\0\x27\x11"[..]), 10_000),
            Err(ProtocolError::MessageTooLarge {
                len: 10_001,
                max: 10_000
            })
        );
    }

    #[test]
    fn rejects_bad_layouts() {
        // Protocol 2.0.
        assert_eq!(
            parse(b"\0\0\0\x09\0\x02\0\0\0"),
            Err(ProtocolError::UnsupportedProtocolVersion(0x0002_0000))
        );
        // SSLRequest with extra bytes; CancelRequest too short.
        assert!(parse(b"\0\0\0\x09\x04\xd2\x16\x2f\0").is_err());
        assert!(parse(b"\0\0\0\x0c\x04\xd2\x16\x2e\0\0\0\x01").is_err());
        // Missing terminator, value without NUL, bytes after the terminator, invalid UTF-8.
        assert!(parse(b"\0\0\0\x08\0\x03\0\0").is_err());
        assert!(parse(b"\0\0\0\x0e\0\x03\0\0user\0a").is_err());
        assert!(parse(b"\0\0\0\x0a\0\x03\0\0\0x").is_err());
        assert!(parse(b"\0\0\0\x0d\0\x03\0\0u\0\xff\0\0").is_err());
    }
}
