//! Decoding the client messages the proxy must understand: the authentication replies (tag `p`)
//! and the request boundaries it inspects (Query `Q`, Parse `P`). Bodies come from
//! [`Message::body`](super::Message) or a scanner range.

use super::cursor::Cursor;
use crate::ProtocolError;

/// PasswordMessage (tag `p`): the password (cleartext or `md5…` hash) without its NUL.
pub fn parse_password_message(body: &[u8]) -> Result<&[u8], ProtocolError> {
    let mut c = Cursor::new(body);
    let password = c.read_cstr("PasswordMessage is not a C string")?;
    c.finish("bytes after the PasswordMessage string")?;
    Ok(password)
}

/// SASLInitialResponse (tag `p`, sent first in a SASL exchange).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SaslInitialResponse<'a> {
    /// The mechanism the client chose, e.g. `SCRAM-SHA-256`.
    pub mechanism: &'a str,
    /// The client-first message; `None` when the length field is -1.
    pub data: Option<&'a [u8]>,
}

/// Parses a SASLInitialResponse body. The data length must match the bytes left exactly.
pub fn parse_sasl_initial_response(body: &[u8]) -> Result<SaslInitialResponse<'_>, ProtocolError> {
    let mut c = Cursor::new(body);
    let mechanism = c.read_str("SASLInitialResponse mechanism")?;
    let len = c.read_i32("SASLInitialResponse data length")?;
    let data = if len == -1 {
        None
    } else {
        let len = usize::try_from(len)
            .map_err(|_| ProtocolError::Malformed("SASLInitialResponse negative data length"))?;
        Some(c.take(len, "SASLInitialResponse data shorter than its length")?)
    };
    c.finish("bytes after the SASLInitialResponse data")?;
    Ok(SaslInitialResponse { mechanism, data })
}

/// Query (tag `Q`): the SQL text, which must be UTF-8. See [`parse_query_raw`] for other encodings.
pub fn parse_query(body: &[u8]) -> Result<&str, ProtocolError> {
    std::str::from_utf8(parse_query_raw(body)?)
        .map_err(|_| ProtocolError::Malformed("Query text is not UTF-8"))
}

/// Query (tag `Q`): the SQL text as bytes, in whatever `client_encoding` the client uses.
pub fn parse_query_raw(body: &[u8]) -> Result<&[u8], ProtocolError> {
    let mut c = Cursor::new(body);
    let sql = c.read_cstr("Query text is not a C string")?;
    c.finish("bytes after the Query text")?;
    Ok(sql)
}

/// Parse (tag `P`): (statement name, query text); both must be UTF-8. The parameter type list
/// that follows is checked for layout but not returned. See [`parse_parse_message_raw`].
pub fn parse_parse_message(body: &[u8]) -> Result<(&str, &str), ProtocolError> {
    let (name, sql) = parse_parse_message_raw(body)?;
    let name = std::str::from_utf8(name)
        .map_err(|_| ProtocolError::Malformed("Parse statement name is not UTF-8"))?;
    let sql = std::str::from_utf8(sql)
        .map_err(|_| ProtocolError::Malformed("Parse query text is not UTF-8"))?;
    Ok((name, sql))
}

/// Parse (tag `P`): (statement name, query text) as bytes, in the client's encoding.
pub fn parse_parse_message_raw(body: &[u8]) -> Result<(&[u8], &[u8]), ProtocolError> {
    let mut c = Cursor::new(body);
    let name = c.read_cstr("Parse statement name")?;
    let sql = c.read_cstr("Parse query text")?;
    let count = c.read_i16("Parse parameter type count")?;
    let count = usize::try_from(count)
        .map_err(|_| ProtocolError::Malformed("Parse negative parameter type count"))?;
    c.take(count * 4, "Parse parameter types shorter than their count")?;
    c.finish("bytes after the Parse parameter types")?;
    Ok((name, sql))
}

/// Bind (tag `B`): the name of the prepared statement it binds (empty for the unnamed one), as
/// bytes. Only the two names at the front are read; the rest of the body is not checked.
pub fn parse_bind_statement(body: &[u8]) -> Result<&[u8], ProtocolError> {
    let mut c = Cursor::new(body);
    c.read_cstr("Bind portal name")?;
    c.read_cstr("Bind statement name")
}

/// Close (tag `C`) of a prepared statement (`S`): its name, as bytes; `None` for a portal.
pub fn parse_close_statement(body: &[u8]) -> Result<Option<&[u8]>, ProtocolError> {
    let mut c = Cursor::new(body);
    let kind = c.take(1, "Close without a kind")?;
    let name = c.read_cstr("Close name")?;
    c.finish("bytes after the Close name")?;
    Ok((kind == b"S").then_some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_password() {
        assert_eq!(parse_password_message(b"s3cret\0"), Ok(&b"s3cret"[..]));
        assert_eq!(parse_password_message(b"\0"), Ok(&b""[..]));
        assert!(parse_password_message(b"s3cret").is_err());
        assert!(parse_password_message(b"a\0b\0").is_err());
        assert!(parse_password_message(b"").is_err());
    }

    #[test]
    fn golden_sasl_initial_response() {
        let body = b"SCRAM-SHA-256\0\0\0\0\x03n,,";
        assert_eq!(
            parse_sasl_initial_response(body),
            Ok(SaslInitialResponse {
                mechanism: "SCRAM-SHA-256",
                data: Some(b"n,,")
            })
        );
        assert_eq!(
            parse_sasl_initial_response(b"PLAIN\0\xff\xff\xff\xff"),
            Ok(SaslInitialResponse {
                mechanism: "PLAIN",
                data: None
            })
        );
        assert_eq!(
            parse_sasl_initial_response(b"M\0\0\0\0\0"),
            Ok(SaslInitialResponse {
                mechanism: "M",
                data: Some(b"")
            })
        );
        // Too short, too long, negative length, missing length.
        assert!(parse_sasl_initial_response(b"M\0\0\0\0\x04abc").is_err());
        assert!(parse_sasl_initial_response(b"M\0\0\0\0\x02abc").is_err());
        assert!(parse_sasl_initial_response(b"M\0\xff\xff\xff\xfe").is_err());
        assert!(parse_sasl_initial_response(b"M\0\0\0").is_err());
        assert!(parse_sasl_initial_response(b"\xff\0\0\0\0\0").is_err());
    }

    #[test]
    fn golden_query() {
        assert_eq!(parse_query(b"SELECT 1\0"), Ok("SELECT 1"));
        assert_eq!(
            parse_query_raw(b"SELECT '\xe9'\0"),
            Ok(&b"SELECT '\xe9'"[..])
        );
        assert!(parse_query(b"SELECT '\xe9'\0").is_err());
        assert!(parse_query(b"SELECT 1").is_err());
        assert!(parse_query(b"SELECT 1\0\0").is_err());
    }

    #[test]
    fn golden_parse() {
        assert_eq!(
            parse_parse_message(b"s1\0SELECT $1\0\0\x01\0\0\0\x17"),
            Ok(("s1", "SELECT $1"))
        );
        assert_eq!(
            parse_parse_message(b"\0SELECT 1\0\0\0"),
            Ok(("", "SELECT 1"))
        );
        assert!(parse_parse_message(b"\0SELECT 1\0\0\x01").is_err());
        assert!(parse_parse_message(b"\0SELECT 1\0\0\0\0").is_err());
        assert!(parse_parse_message(b"\0SELECT 1\0\xff\xff").is_err());
        assert!(parse_parse_message(b"\0SELECT 1\0").is_err());
    }

    #[test]
    fn bind_and_close_name_their_statement() {
        assert_eq!(parse_bind_statement(b"\0s1\0\0\0\0\0\0\0"), Ok(&b"s1"[..]));
        assert_eq!(parse_bind_statement(b"portal\0\0"), Ok(&b""[..]));
        assert!(parse_bind_statement(b"portal").is_err());
        assert_eq!(parse_close_statement(b"Ss1\0"), Ok(Some(&b"s1"[..])));
        assert_eq!(parse_close_statement(b"Pp\0"), Ok(None));
        assert!(parse_close_statement(b"S").is_err());
        assert!(parse_close_statement(b"").is_err());
    }
}
