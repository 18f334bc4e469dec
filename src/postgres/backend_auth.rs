//! Suture's side of a backend login: answering the server's authentication requests
//! (SCRAM-SHA-256 through postgres-protocol, md5, cleartext, trust) until AuthenticationOk.

use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use suture_protocol::pg::{self, Authentication};

use crate::postgres::backend::{refused, BackendError};
use crate::postgres::wire::{self, WireError};
use crate::stream::{StreamRead, StreamWrite};

/// Answers the server's authentication requests until AuthenticationOk.
pub(super) async fn authenticate(
    reader: &mut StreamRead,
    writer: &mut StreamWrite,
    rbuf: &mut BytesMut,
    max: usize,
    user: &str,
    password: &str,
    limit: Duration,
) -> Result<(), BackendError> {
    let mut scram: Option<ScramSha256> = None;
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
            Authentication::Ok => return Ok(()),
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
                let exchange = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                pg::encode_sasl_initial_response(SCRAM_SHA_256, exchange.message(), &mut out)
                    .map_err(WireError::from)?;
                scram = Some(exchange);
            }
            Authentication::SaslContinue(data) => {
                let mut exchange = scram
                    .take()
                    .ok_or_else(|| scram_out_of_order("SASLContinue"))?;
                // This step derives the salted password (PBKDF2, thousands of HMAC rounds, about
                // a millisecond): off the event loop, so other sessions do not stall behind it.
                let data = data.to_vec();
                let exchange =
                    tokio::task::spawn_blocking(move || exchange.update(&data).map(|()| exchange))
                        .await
                        .map_err(|e| BackendError::UnsupportedAuth(format!("SCRAM: {e}")))?
                        .map_err(|e| BackendError::UnsupportedAuth(format!("SCRAM: {e}")))?;
                pg::encode_sasl_response(exchange.message(), &mut out).map_err(WireError::from)?;
                scram = Some(exchange);
            }
            Authentication::SaslFinal(data) => {
                let exchange = scram
                    .as_mut()
                    .ok_or_else(|| scram_out_of_order("SASLFinal"))?;
                exchange.finish(data).map_err(|e| {
                    BackendError::UnsupportedAuth(format!("SCRAM server signature: {e}"))
                })?;
                continue;
            }
            Authentication::Other(code) => {
                return Err(BackendError::UnsupportedAuth(format!("code {code}")))
            }
        }
        wire::write_all(writer, &out, limit).await?;
    }
}

fn scram_out_of_order(what: &str) -> BackendError {
    BackendError::UnsupportedAuth(format!("{what} before SASL start"))
}
