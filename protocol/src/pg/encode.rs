//! Encoders for the messages Suture writes: to backends (through `postgres-protocol`'s frontend
//! encoders) and to clients (written here). Each appends one whole message to `buf`.
//!
//! Encoders whose input can be unencodable (a string with an embedded NUL, a body over the int32
//! length limit) return a `Result`; on error `buf` is left exactly as it was.

use bytes::{BufMut, BytesMut};
use postgres_protocol::message::frontend;

use super::backend::{auth_code, TxStatus};
use crate::ProtocolError;

/// The largest value of an int32 length field.
const MAX_LENGTH_FIELD: usize = i32::MAX as usize;

/// Runs `write` and truncates `buf` back to its length before the call if it fails.
fn atomically<F>(buf: &mut BytesMut, write: F) -> Result<(), ProtocolError>
where
    F: FnOnce(&mut BytesMut) -> Result<(), ProtocolError>,
{
    let base = buf.len();
    let result = write(buf);
    if result.is_err() {
        buf.truncate(base);
    }
    result
}

/// Maps a `postgres-protocol` encoder failure. Embedded NULs are checked before calling it, so
/// what is left is a length that does not fit an int32.
fn too_large(len: usize) -> impl FnOnce(std::io::Error) -> ProtocolError {
    move |_| ProtocolError::MessageTooLarge {
        len,
        max: MAX_LENGTH_FIELD,
    }
}

fn check_cstr(s: &[u8], what: &'static str) -> Result<(), ProtocolError> {
    if s.contains(&0) {
        Err(ProtocolError::InvalidArgument(what))
    } else {
        Ok(())
    }
}

// ---- to backends ----

/// StartupMessage for protocol 3.0 with the given parameters.
pub fn encode_startup(params: &[(&str, &str)], buf: &mut BytesMut) -> Result<(), ProtocolError> {
    for (name, value) in params {
        if name.is_empty() {
            return Err(ProtocolError::InvalidArgument(
                "empty startup parameter name",
            ));
        }
        check_cstr(name.as_bytes(), "NUL in a startup parameter name")?;
        check_cstr(value.as_bytes(), "NUL in a startup parameter value")?;
    }
    let len = params
        .iter()
        .map(|(n, v)| n.len() + v.len() + 2)
        .sum::<usize>()
        + 9;
    atomically(buf, |buf| {
        frontend::startup_message(params.iter().copied(), buf).map_err(too_large(len))
    })
}

/// SSLRequest.
pub fn encode_ssl_request(buf: &mut BytesMut) {
    frontend::ssl_request(buf);
}

/// CancelRequest.
pub fn encode_cancel_request(process_id: i32, secret_key: i32, buf: &mut BytesMut) {
    frontend::cancel_request(process_id, secret_key, buf);
}

/// PasswordMessage (`p`): the password (or md5 hash) as a C string.
pub fn encode_password(password: &[u8], buf: &mut BytesMut) -> Result<(), ProtocolError> {
    check_cstr(password, "NUL in a password")?;
    atomically(buf, |buf| {
        frontend::password_message(password, buf).map_err(too_large(password.len() + 6))
    })
}

/// SASLInitialResponse (`p`).
pub fn encode_sasl_initial_response(
    mechanism: &str,
    data: &[u8],
    buf: &mut BytesMut,
) -> Result<(), ProtocolError> {
    check_cstr(mechanism.as_bytes(), "NUL in a SASL mechanism name")?;
    let len = mechanism.len() + data.len() + 10;
    atomically(buf, |buf| {
        frontend::sasl_initial_response(mechanism, data, buf).map_err(too_large(len))
    })
}

/// SASLResponse (`p`): the raw data.
pub fn encode_sasl_response(data: &[u8], buf: &mut BytesMut) -> Result<(), ProtocolError> {
    atomically(buf, |buf| {
        frontend::sasl_response(data, buf).map_err(too_large(data.len() + 5))
    })
}

/// Query (`Q`).
pub fn encode_query(sql: &str, buf: &mut BytesMut) -> Result<(), ProtocolError> {
    check_cstr(sql.as_bytes(), "NUL in query text")?;
    atomically(buf, |buf| {
        frontend::query(sql, buf).map_err(too_large(sql.len() + 6))
    })
}

/// Terminate (`X`).
pub fn encode_terminate(buf: &mut BytesMut) {
    frontend::terminate(buf);
}

// ---- to clients ----

/// Writes `tag`, a length placeholder, the body written by `body`, then fills in the length.
fn tagged<F>(tag: u8, buf: &mut BytesMut, body: F) -> Result<(), ProtocolError>
where
    F: FnOnce(&mut BytesMut) -> Result<(), ProtocolError>,
{
    atomically(buf, |buf| {
        buf.put_u8(tag);
        let base = buf.len();
        buf.put_i32(0);
        body(buf)?;
        let len = buf.len() - base;
        let field = i32::try_from(len).map_err(|_| ProtocolError::MessageTooLarge {
            len: len + 1,
            max: MAX_LENGTH_FIELD,
        })?;
        if let Some(slot) = buf.get_mut(base..base + 4) {
            slot.copy_from_slice(&field.to_be_bytes());
        }
        Ok(())
    })
}

/// Writes a body of fixed size, which cannot fail.
fn fixed(tag: u8, body: &[u8], buf: &mut BytesMut) {
    buf.reserve(body.len() + 5);
    buf.put_u8(tag);
    // Callers pass at most a few bytes.
    buf.put_u32(body.len() as u32 + 4);
    buf.put_slice(body);
}

fn put_cstr(s: &[u8], what: &'static str, buf: &mut BytesMut) -> Result<(), ProtocolError> {
    check_cstr(s, what)?;
    buf.put_slice(s);
    buf.put_u8(0);
    Ok(())
}

/// AuthenticationOk.
pub fn encode_auth_ok(buf: &mut BytesMut) {
    fixed(b'R', &auth_code::OK.to_be_bytes(), buf);
}

/// AuthenticationCleartextPassword.
pub fn encode_auth_cleartext(buf: &mut BytesMut) {
    fixed(b'R', &auth_code::CLEARTEXT_PASSWORD.to_be_bytes(), buf);
}

/// AuthenticationMD5Password with its salt.
pub fn encode_auth_md5(salt: [u8; 4], buf: &mut BytesMut) {
    let c = auth_code::MD5_PASSWORD.to_be_bytes();
    fixed(
        b'R',
        &[c[0], c[1], c[2], c[3], salt[0], salt[1], salt[2], salt[3]],
        buf,
    );
}

/// AuthenticationSASL listing the mechanisms offered.
pub fn encode_auth_sasl(mechanisms: &[&str], buf: &mut BytesMut) -> Result<(), ProtocolError> {
    tagged(b'R', buf, |buf| {
        buf.put_i32(auth_code::SASL);
        for m in mechanisms {
            if m.is_empty() {
                return Err(ProtocolError::InvalidArgument("empty SASL mechanism name"));
            }
            put_cstr(m.as_bytes(), "NUL in a SASL mechanism name", buf)?;
        }
        buf.put_u8(0);
        Ok(())
    })
}

/// AuthenticationSASLContinue with the server-first message.
pub fn encode_auth_sasl_continue(data: &[u8], buf: &mut BytesMut) -> Result<(), ProtocolError> {
    tagged(b'R', buf, |buf| {
        buf.put_i32(auth_code::SASL_CONTINUE);
        buf.put_slice(data);
        Ok(())
    })
}

/// AuthenticationSASLFinal with the server-final message.
pub fn encode_auth_sasl_final(data: &[u8], buf: &mut BytesMut) -> Result<(), ProtocolError> {
    tagged(b'R', buf, |buf| {
        buf.put_i32(auth_code::SASL_FINAL);
        buf.put_slice(data);
        Ok(())
    })
}

/// ParameterStatus (`S`).
pub fn encode_parameter_status(
    name: &str,
    value: &str,
    buf: &mut BytesMut,
) -> Result<(), ProtocolError> {
    tagged(b'S', buf, |buf| {
        put_cstr(name.as_bytes(), "NUL in a parameter name", buf)?;
        put_cstr(value.as_bytes(), "NUL in a parameter value", buf)
    })
}

/// BackendKeyData (`K`) with a 4-byte secret key.
pub fn encode_backend_key_data(pid: i32, secret: i32, buf: &mut BytesMut) {
    let p = pid.to_be_bytes();
    let s = secret.to_be_bytes();
    fixed(b'K', &[p[0], p[1], p[2], p[3], s[0], s[1], s[2], s[3]], buf);
}

/// ReadyForQuery (`Z`).
pub fn encode_ready_for_query(status: TxStatus, buf: &mut BytesMut) {
    fixed(b'Z', &[status.as_byte()], buf);
}

/// ErrorResponse (`E`) with fields S and V (both `severity`), C, M and, if given, D.
/// `severity` is e.g. `FATAL` or `ERROR`.
pub fn encode_error_response(
    severity: &str,
    code: &str,
    message: &str,
    detail: Option<&str>,
    buf: &mut BytesMut,
) -> Result<(), ProtocolError> {
    tagged(b'E', buf, |buf| {
        put_fields(severity, code, message, buf)?;
        if let Some(detail) = detail {
            buf.put_u8(b'D');
            put_cstr(detail.as_bytes(), "NUL in an error detail", buf)?;
        }
        buf.put_u8(0);
        Ok(())
    })
}

/// NoticeResponse (`N`) with fields S and V (both `severity`), C and M.
pub fn encode_notice_response(
    severity: &str,
    code: &str,
    message: &str,
    buf: &mut BytesMut,
) -> Result<(), ProtocolError> {
    tagged(b'N', buf, |buf| {
        put_fields(severity, code, message, buf)?;
        buf.put_u8(0);
        Ok(())
    })
}

fn put_fields(
    severity: &str,
    code: &str,
    message: &str,
    buf: &mut BytesMut,
) -> Result<(), ProtocolError> {
    for (field, value, what) in [
        (b'S', severity, "NUL in an error severity"),
        (b'V', severity, "NUL in an error severity"),
        (b'C', code, "NUL in an error code"),
        (b'M', message, "NUL in an error message"),
    ] {
        buf.put_u8(field);
        put_cstr(value.as_bytes(), what, buf)?;
    }
    Ok(())
}

/// CommandComplete (`C`) with its command tag, e.g. `ROLLBACK`.
pub fn encode_command_complete(command_tag: &str, buf: &mut BytesMut) -> Result<(), ProtocolError> {
    tagged(b'C', buf, |buf| {
        put_cstr(command_tag.as_bytes(), "NUL in a command tag", buf)
    })
}

/// A body-less reply to an extended-protocol message: ParseComplete (`1`), BindComplete (`2`),
/// CloseComplete (`3`) or NoData (`n`). Other tags are not body-less and are refused.
pub fn encode_empty_reply(tag: u8, buf: &mut BytesMut) -> Result<(), ProtocolError> {
    match tag {
        b'1' | b'2' | b'3' | b'n' => {
            fixed(tag, &[], buf);
            Ok(())
        }
        _ => Err(ProtocolError::InvalidArgument("not a body-less reply tag")),
    }
}

/// ParameterDescription (`t`) with no parameters.
pub fn encode_no_parameters(buf: &mut BytesMut) {
    fixed(b't', &[0, 0], buf);
}
