//! Suture's side of a backend login: answering the server's authentication requests
//! (SCRAM-SHA-256 through `backend_scram`, md5, cleartext, trust) until AuthenticationOk.

use std::time::Duration;

use bytes::BytesMut;
use suture_protocol::pg::{self, Authentication};

use crate::postgres::backend::{refused, BackendError};
use crate::postgres::backend_scram::{ScramError, ScramStart, ServerSignature};
use crate::postgres::client_auth::{UserSecrets, SCRAM_SHA_256};
use crate::postgres::wire::{self, WireError};
use crate::stream::{StreamRead, StreamWrite};

/// Where a SCRAM exchange with the server stands.
enum Scram {
    /// Not begun: the server has not asked for SASL.
    NotStarted,
    /// The client-first message is sent; the server-first message is next.
    Started(ScramStart),
    /// The proof is sent; the server's signature is next.
    Proved(ServerSignature),
    /// The server proved it holds the password's keys.
    Verified,
}

/// Answers the server's authentication requests until AuthenticationOk.
pub(super) async fn authenticate(
    reader: &mut StreamRead,
    writer: &mut StreamWrite,
    rbuf: &mut BytesMut,
    max: usize,
    user: &str,
    secrets: &UserSecrets,
    limit: Duration,
) -> Result<(), BackendError> {
    let password = secrets.password.as_str();
    let mut scram = Scram::NotStarted;
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
            Authentication::Ok => {
                // Once SCRAM has begun, only a server that proved it holds the keys may let
                // Suture in.
                if matches!(scram, Scram::Started(_) | Scram::Proved(_)) {
                    return Err(scram_out_of_order("AuthenticationOk"));
                }
                return Ok(());
            }
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
                let start = ScramStart::new();
                pg::encode_sasl_initial_response(
                    SCRAM_SHA_256,
                    start.message().as_bytes(),
                    &mut out,
                )
                .map_err(WireError::from)?;
                scram = Scram::Started(start);
            }
            Authentication::SaslContinue(data) => {
                let Scram::Started(start) = std::mem::replace(&mut scram, Scram::NotStarted) else {
                    return Err(scram_out_of_order("SASLContinue"));
                };
                scram = Scram::Proved(prove(start, data, secrets, &mut out).await?);
            }
            Authentication::SaslFinal(data) => {
                let Scram::Proved(signature) = &scram else {
                    return Err(scram_out_of_order("SASLFinal"));
                };
                signature.check(data).map_err(scram_failed)?;
                scram = Scram::Verified;
                continue;
            }
            Authentication::Other(code) => {
                return Err(BackendError::UnsupportedAuth(format!("code {code}")))
            }
        }
        wire::write_all(writer, &out, limit).await?;
    }
}

/// Answers the server-first message with the client-final message (into `out`); returns the
/// signature the server must send back.
async fn prove(
    start: ScramStart,
    server_first: &[u8],
    secrets: &UserSecrets,
    out: &mut BytesMut,
) -> Result<ServerSignature, BackendError> {
    let server_first = start
        .parse_server_first(server_first)
        .map_err(scram_failed)?;
    // Cached per salt and iteration count; a miss derives the keys (PBKDF2, about a millisecond
    // at 4096 iterations) on the blocking pool, so other sessions do not stall behind it.
    let keys = secrets
        .backend_keys
        .keys(server_first.salt(), server_first.iterations())
        .await
        .map_err(scram_failed)?;
    let (message, signature) = server_first.client_final(&keys);
    pg::encode_sasl_response(message.as_bytes(), out).map_err(WireError::from)?;
    Ok(signature)
}

fn scram_out_of_order(what: &str) -> BackendError {
    BackendError::UnsupportedAuth(format!("{what} out of order in the SASL exchange"))
}

fn scram_failed(err: ScramError) -> BackendError {
    BackendError::UnsupportedAuth(format!("SCRAM: {err}"))
}
