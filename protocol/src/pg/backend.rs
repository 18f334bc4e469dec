//! Decoding the backend messages the proxy must understand: authentication requests,
//! ParameterStatus, BackendKeyData, ReadyForQuery, ErrorResponse/NoticeResponse and the process id
//! of a NotificationResponse. Each parser takes a message body (tag and length stripped).

use super::cursor::{peek_i32, Cursor};
use crate::ProtocolError;

/// Transaction status from ReadyForQuery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block (queries rejected until it ends).
    Failed,
}

impl TxStatus {
    /// Decodes the status byte of ReadyForQuery.
    pub fn from_byte(b: u8) -> Option<TxStatus> {
        match b {
            b'I' => Some(TxStatus::Idle),
            b'T' => Some(TxStatus::InTransaction),
            b'E' => Some(TxStatus::Failed),
            _ => None,
        }
    }

    /// The status byte of ReadyForQuery.
    pub fn as_byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }
}

/// Authentication request codes (the int32 that starts an `R` body).
pub mod auth_code {
    pub const OK: i32 = 0;
    pub const CLEARTEXT_PASSWORD: i32 = 3;
    pub const MD5_PASSWORD: i32 = 5;
    pub const SASL: i32 = 10;
    pub const SASL_CONTINUE: i32 = 11;
    pub const SASL_FINAL: i32 = 12;
}

/// An authentication message (tag `R`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authentication<'a> {
    Ok,
    CleartextPassword,
    Md5Password {
        salt: [u8; 4],
    },
    /// The mechanisms the backend offers, in its order of preference.
    Sasl {
        mechanisms: Vec<&'a str>,
    },
    SaslContinue(&'a [u8]),
    SaslFinal(&'a [u8]),
    /// A method Suture does not handle (Kerberos, GSSAPI, SSPI, ...), by code.
    Other(i32),
}

/// Parses an authentication message body (tag `R`).
pub fn parse_authentication(body: &[u8]) -> Result<Authentication<'_>, ProtocolError> {
    let mut c = Cursor::new(body);
    let code = c.read_i32("Authentication code")?;
    let auth = match code {
        auth_code::OK => Authentication::Ok,
        auth_code::CLEARTEXT_PASSWORD => Authentication::CleartextPassword,
        auth_code::MD5_PASSWORD => {
            let s = c.take(4, "AuthenticationMD5Password salt")?;
            Authentication::Md5Password {
                salt: [s[0], s[1], s[2], s[3]],
            }
        }
        auth_code::SASL => {
            let mut mechanisms = Vec::new();
            loop {
                let m = c.read_str("AuthenticationSASL mechanism list")?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m);
            }
            Authentication::Sasl { mechanisms }
        }
        auth_code::SASL_CONTINUE => Authentication::SaslContinue(c.take_rest()),
        auth_code::SASL_FINAL => Authentication::SaslFinal(c.take_rest()),
        other => return Ok(Authentication::Other(other)),
    };
    c.finish("bytes after the Authentication message")?;
    Ok(auth)
}

/// ParameterStatus (tag `S` from the backend): (name, value), both UTF-8.
pub fn parse_parameter_status(body: &[u8]) -> Result<(&str, &str), ProtocolError> {
    let mut c = Cursor::new(body);
    let name = c.read_str("ParameterStatus name is unterminated or not UTF-8")?;
    let value = c.read_str("ParameterStatus value is unterminated or not UTF-8")?;
    c.finish("bytes after the ParameterStatus value")?;
    Ok((name, value))
}

/// BackendKeyData (tag `K`): (process id, secret key). Only 4-byte secret keys (protocol 3.0).
pub fn parse_backend_key_data(body: &[u8]) -> Result<(i32, i32), ProtocolError> {
    let mut c = Cursor::new(body);
    let pid = c.read_i32("BackendKeyData process id")?;
    let secret = c.read_i32("BackendKeyData secret key")?;
    c.finish("BackendKeyData secret key is not 4 bytes")?;
    Ok((pid, secret))
}

/// ReadyForQuery (tag `Z`): the transaction status.
pub fn parse_ready_for_query(body: &[u8]) -> Result<TxStatus, ProtocolError> {
    match body {
        [b] => TxStatus::from_byte(*b).ok_or(ProtocolError::Malformed(
            "ReadyForQuery unknown transaction status",
        )),
        _ => Err(ProtocolError::Malformed("ReadyForQuery body is not 1 byte")),
    }
}

/// The fields of an ErrorResponse or NoticeResponse that the proxy uses.
///
/// Text is decoded lossily: messages come in the session's `client_encoding`, which need not be
/// UTF-8, and an odd byte must not make an error unreadable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorFields {
    /// The non-localized severity (`V`) when sent, else the localized one (`S`).
    pub severity: String,
    /// SQLSTATE (`C`).
    pub code: String,
    /// Primary message (`M`).
    pub message: String,
    /// `D`.
    pub detail: Option<String>,
    /// `H`.
    pub hint: Option<String>,
}

/// Parses an ErrorResponse / NoticeResponse body (tag `E` / `N`). Unknown field types are
/// skipped; severity, code and message are required.
pub fn parse_error_fields(body: &[u8]) -> Result<ErrorFields, ProtocolError> {
    let mut c = Cursor::new(body);
    let mut localized_severity = None;
    let mut severity = None;
    let mut code = None;
    let mut message = None;
    let mut detail = None;
    let mut hint = None;
    loop {
        let field = c.read_u8("ErrorResponse without terminator")?;
        if field == 0 {
            break;
        }
        let value = c.read_cstr("ErrorResponse field is not a C string")?;
        let slot = match field {
            b'S' => &mut localized_severity,
            b'V' => &mut severity,
            b'C' => &mut code,
            b'M' => &mut message,
            b'D' => &mut detail,
            b'H' => &mut hint,
            _ => continue,
        };
        *slot = Some(String::from_utf8_lossy(value).into_owned());
    }
    c.finish("bytes after the ErrorResponse terminator")?;
    Ok(ErrorFields {
        severity: severity
            .or(localized_severity)
            .ok_or(ProtocolError::Malformed("ErrorResponse without severity"))?,
        code: code.ok_or(ProtocolError::Malformed("ErrorResponse without SQLSTATE"))?,
        message: message.ok_or(ProtocolError::Malformed("ErrorResponse without message"))?,
        detail,
        hint,
    })
}

/// NotificationResponse (tag `A`): the process id of the notifying backend (first 4 bytes).
pub fn parse_notification_pid(body: &[u8]) -> Result<i32, ProtocolError> {
    peek_i32(body).ok_or(ProtocolError::Malformed(
        "NotificationResponse shorter than a process id",
    ))
}

/// The columns of one DataRow (tag `D`) as text, NULL as `None`. Every length is checked against
/// the body, so a malformed row is an error, never a panic.
pub fn parse_data_row_text(body: &[u8]) -> Result<Vec<Option<String>>, ProtocolError> {
    fn malformed(what: &'static str) -> ProtocolError {
        ProtocolError::Malformed(what)
    }
    let count = body
        .get(..2)
        .map(|b| i16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| malformed("DataRow shorter than its column count"))?;
    let count =
        usize::try_from(count).map_err(|_| malformed("DataRow column count is negative"))?;
    let mut pos = 2;
    // Every column takes at least its 4-byte length: a count the body cannot hold reserves no
    // more than the body could.
    let mut values = Vec::with_capacity(count.min(body.len().saturating_sub(2) / 4));
    for _ in 0..count {
        let len = body
            .get(pos..pos + 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| malformed("DataRow column length past the end"))?;
        pos += 4;
        if len < 0 {
            values.push(None);
            continue;
        }
        let len = usize::try_from(len).map_err(|_| malformed("DataRow column length"))?;
        let value = pos
            .checked_add(len)
            .and_then(|end| body.get(pos..end))
            .ok_or_else(|| malformed("DataRow column value past the end"))?;
        pos += len;
        values.push(Some(String::from_utf8_lossy(value).into_owned()));
    }
    if pos != body.len() {
        return Err(malformed("bytes after the last DataRow column"));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_status_bytes() {
        for s in [TxStatus::Idle, TxStatus::InTransaction, TxStatus::Failed] {
            assert_eq!(TxStatus::from_byte(s.as_byte()), Some(s));
        }
        assert_eq!(TxStatus::from_byte(b'X'), None);
    }

    #[test]
    fn golden_authentication() {
        assert_eq!(parse_authentication(b"\0\0\0\0"), Ok(Authentication::Ok));
        assert_eq!(
            parse_authentication(b"\0\0\0\x03"),
            Ok(Authentication::CleartextPassword)
        );
        assert_eq!(
            parse_authentication(b"\0\0\0\x05\x01\x02\x03\x04"),
            Ok(Authentication::Md5Password { salt: [1, 2, 3, 4] })
        );
        assert_eq!(
            parse_authentication(b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"),
            Ok(Authentication::Sasl {
                mechanisms: vec!["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
            })
        );
        assert_eq!(
            parse_authentication(b"\0\0\0\x0br=abc,s=xyz,i=4096"),
            Ok(Authentication::SaslContinue(b"r=abc,s=xyz,i=4096"))
        );
        assert_eq!(
            parse_authentication(b"\0\0\0\x0cv=sig"),
            Ok(Authentication::SaslFinal(b"v=sig"))
        );
        assert_eq!(
            parse_authentication(b"\0\0\0\x07"),
            Ok(Authentication::Other(7))
        );
    }

    #[test]
    fn bad_authentication() {
        assert!(parse_authentication(b"").is_err());
        assert!(parse_authentication(b"\0\0\0").is_err());
        assert!(parse_authentication(b"\0\0\0\0\0").is_err());
        assert!(parse_authentication(b"\0\0\0\x05\x01\x02\x03").is_err());
        assert!(parse_authentication(b"\0\0\0\x05\x01\x02\x03\x04\x05").is_err());
        assert!(parse_authentication(b"\0\0\0\x0aSCRAM-SHA-256\0").is_err());
        assert!(parse_authentication(b"\0\0\0\x0aSCRAM\0\0x").is_err());
    }

    #[test]
    fn golden_parameter_status() {
        assert_eq!(
            parse_parameter_status(b"TimeZone\0Europe/Paris\0"),
            Ok(("TimeZone", "Europe/Paris"))
        );
        assert_eq!(
            parse_parameter_status(b"application_name\0\0"),
            Ok(("application_name", ""))
        );
        assert!(parse_parameter_status(b"TimeZone\0UTC").is_err());
        assert!(parse_parameter_status(b"a\0b\0c").is_err());
    }

    #[test]
    fn golden_backend_key_data() {
        assert_eq!(
            parse_backend_key_data(b"\0\0\x30\x39\x80\0\0\x01"),
            Ok((12345, i32::MIN + 1))
        );
        assert!(parse_backend_key_data(b"\0\0\x30\x39\0\0\0").is_err());
        // Protocol 3.2 style long keys are refused.
        assert!(parse_backend_key_data(&[0u8; 40]).is_err());
    }

    #[test]
    fn golden_ready_for_query() {
        assert_eq!(parse_ready_for_query(b"I"), Ok(TxStatus::Idle));
        assert_eq!(parse_ready_for_query(b"T"), Ok(TxStatus::InTransaction));
        assert_eq!(parse_ready_for_query(b"E"), Ok(TxStatus::Failed));
        assert!(parse_ready_for_query(b"X").is_err());
        assert!(parse_ready_for_query(b"").is_err());
        assert!(parse_ready_for_query(b"II").is_err());
    }

    #[test]
    fn golden_error_fields() {
        let body = b"SFATAL\0VFATAL\0C57P05\0Mterminating connection due to idle-session timeout\0Fpostgres.c\0L3000\0\0";
        assert_eq!(
            parse_error_fields(body),
            Ok(ErrorFields {
                severity: "FATAL".into(),
                code: "57P05".into(),
                message: "terminating connection due to idle-session timeout".into(),
                detail: None,
                hint: None,
            })
        );
        // Localized severity only, detail and hint, non-UTF-8 text.
        let body = b"SFEHLER\0C42P01\0MRelation \xe9\0Dd\0Hh\0\0";
        let f = parse_error_fields(body).unwrap();
        assert_eq!(f.severity, "FEHLER");
        assert_eq!(f.message, "Relation \u{fffd}");
        assert_eq!(f.detail.as_deref(), Some("d"));
        assert_eq!(f.hint.as_deref(), Some("h"));
        // V wins over S whatever the order.
        let f = parse_error_fields(b"VERROR\0SERREUR\0C1\0M2\0\0").unwrap();
        assert_eq!(f.severity, "ERROR");
    }

    #[test]
    fn bad_error_fields() {
        assert!(parse_error_fields(b"").is_err());
        assert!(parse_error_fields(b"SERROR\0C1\0M2\0").is_err());
        assert!(parse_error_fields(b"SERROR\0C1\0M2").is_err());
        assert!(parse_error_fields(b"SERROR\0C1\0M2\0\0x").is_err());
        assert!(parse_error_fields(b"C1\0M2\0\0").is_err());
        assert!(parse_error_fields(b"SERROR\0M2\0\0").is_err());
        assert!(parse_error_fields(b"SERROR\0C1\0\0").is_err());
    }

    #[test]
    fn golden_notification_pid() {
        assert_eq!(
            parse_notification_pid(b"\0\0\x01\0chan\0payload\0"),
            Ok(256)
        );
        assert!(parse_notification_pid(b"\0\0\x01").is_err());
    }

    fn row(columns: &[Option<&[u8]>]) -> Vec<u8> {
        let mut body = (columns.len() as i16).to_be_bytes().to_vec();
        for column in columns {
            match column {
                Some(v) => {
                    body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    body.extend_from_slice(v);
                }
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        body
    }

    #[test]
    fn data_rows() {
        let body = row(&[Some(b"5min"), None, Some(b"")]);
        let values = parse_data_row_text(&body).expect("valid row");
        assert_eq!(
            values,
            vec![Some("5min".to_owned()), None, Some(String::new())]
        );
        assert_eq!(parse_data_row_text(&row(&[])).expect("no columns"), vec![]);
    }

    #[test]
    fn malformed_data_rows_are_errors() {
        let good = row(&[Some(b"on"), Some(b"1s")]);
        for cut in 0..good.len() {
            assert!(parse_data_row_text(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = good.clone();
        extra.push(0);
        assert!(parse_data_row_text(&extra).is_err());
        let mut huge = 1i16.to_be_bytes().to_vec();
        huge.extend_from_slice(&i32::MAX.to_be_bytes());
        assert!(parse_data_row_text(&huge).is_err());
        assert!(parse_data_row_text(&(-1i16).to_be_bytes()).is_err());
    }
}
