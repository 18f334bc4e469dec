//! The client's side of the login, with Suture as the server: answer SSLRequest and
//! GSSENCRequest with 'N', route a CancelRequest, read the StartupMessage and verify the password
//! (SCRAM-SHA-256 by default, md5 or trust when configured). Authentication failures look exactly
//! like PostgreSQL's (28P01, same text) whether the user or the password was wrong.

use std::sync::Arc;

use bytes::BytesMut;
use suture_protocol::pg::{self, StartupMessage, StartupRequest};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::config::ClientAuthMethod;
use crate::postgres::cancel;
use crate::postgres::client_auth::{self, ScramExchange, ScramKeys, SCRAM_SHA_256};
use crate::postgres::context::{PgKey, PgService};
use crate::postgres::errors::ClientError;
use crate::postgres::wire;

/// A client that authenticated, and what it asked for.
pub(crate) struct ClientLogin {
    pub(crate) user: String,
    pub(crate) database: String,
    pub(crate) options: Option<String>,
    /// Every other startup parameter: run-time settings applied with SET on the backend.
    pub(crate) settings: Vec<(String, String)>,
}

impl ClientLogin {
    /// The sub-pool this client's backends come from.
    pub(crate) fn key(&self) -> PgKey {
        PgKey {
            user: self.user.clone(),
            database: self.database.clone(),
            options: self.options.clone(),
        }
    }
}

/// How the startup phase ended.
pub(crate) enum LoginOutcome {
    /// Authenticated: go on to the session.
    Authenticated(ClientLogin),
    /// The connection carried a CancelRequest, which was handled; close it.
    Cancelled,
}

/// Startup packets larger than this are refused (PostgreSQL's own limit is 10000 bytes).
const MAX_STARTUP_PACKET: usize = 10_000;

/// Runs the startup phase on a fresh client connection (the caller bounds it with the login
/// deadline). Bytes the client sent after its last login message stay in `buf`.
pub(crate) async fn login(
    svc: &Arc<PgService>,
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<LoginOutcome, ClientError> {
    let startup = loop {
        match pg::parse_startup(buf, MAX_STARTUP_PACKET)? {
            None => {
                wire::fill(stream, buf).await?;
            }
            Some(StartupRequest::SslRequest) | Some(StartupRequest::GssEncRequest) => {
                if !buf.is_empty() {
                    // Bytes after an encryption request would be a protocol violation (and, with
                    // TLS, a buffer-stuffing attack): refuse.
                    return Err(ClientError::Protocol(
                        "data after encryption request".into(),
                    ));
                }
                stream.write_all(b"N").await?;
            }
            Some(StartupRequest::Cancel(request)) => {
                if let Some(target) = svc.cancels.lookup(request.process_id, request.secret_key) {
                    if let Err(err) = cancel::forward(target, svc.config.timeouts.connect).await {
                        tracing::warn!(error = %err, "could not forward cancel request");
                    }
                }
                return Ok(LoginOutcome::Cancelled);
            }
            Some(StartupRequest::Startup(startup)) => break startup,
        }
    };
    let login = parse_login(&svc.config.database, startup)?;
    authenticate(svc, stream, buf, &login.user).await?;
    Ok(LoginOutcome::Authenticated(login))
}

/// Splits the startup parameters into what keys the pool and what is applied with SET.
fn parse_login(
    database_override: &Option<String>,
    startup: StartupMessage,
) -> Result<ClientLogin, ClientError> {
    let user = match startup.user() {
        Some(user) if !user.is_empty() => user.to_owned(),
        _ => return Err(ClientError::NoUser),
    };
    let database = match database_override {
        Some(db) => db.clone(),
        None => startup
            .database()
            .filter(|d| !d.is_empty())
            .unwrap_or(&user)
            .to_owned(),
    };
    let mut options = None;
    let mut settings = Vec::new();
    for (name, value) in startup.params {
        match name.as_str() {
            "user" | "database" => {}
            "options" => options = Some(value).filter(|v| !v.trim().is_empty()),
            "replication" => return Err(ClientError::Unsupported("replication connections")),
            // Protocol extensions (`_pq_.*`) are not negotiated: drop them.
            n if n.starts_with("_pq_.") => {}
            _ => settings.push((name, value)),
        }
    }
    Ok(ClientLogin {
        user,
        database,
        options,
        settings,
    })
}

/// Verifies the client's password per the pool's `client_auth`; does not send AuthenticationOk
/// (the session sends it with the rest of the login reply, in one write).
async fn authenticate(
    svc: &Arc<PgService>,
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    user: &str,
) -> Result<(), ClientError> {
    let secrets = svc.user(user);
    let max = MAX_STARTUP_PACKET.max(1024);
    let failed = || ClientError::AuthFailed(user.to_owned());
    match svc.config.client_auth {
        ClientAuthMethod::Trust => secrets.map(|_| ()).ok_or_else(failed),
        ClientAuthMethod::Md5 => {
            let salt = client_auth::md5_salt();
            let mut out = BytesMut::new();
            pg::encode_auth_md5(salt, &mut out);
            stream.write_all(&out).await?;
            let message = read_password_message(stream, buf, max).await?;
            let response = pg::parse_password_message(&message.body)?;
            match secrets {
                Some(s) if client_auth::md5_matches(user, &s.password, salt, response) => Ok(()),
                _ => Err(failed()),
            }
        }
        ClientAuthMethod::ScramSha256 => {
            let mut out = BytesMut::new();
            pg::encode_auth_sasl(&[SCRAM_SHA_256], &mut out)?;
            stream.write_all(&out).await?;
            let message = read_password_message(stream, buf, max).await?;
            let initial = pg::parse_sasl_initial_response(&message.body)?;
            if initial.mechanism != SCRAM_SHA_256 {
                return Err(ClientError::Protocol(format!(
                    "unsupported SASL mechanism {:?}",
                    initial.mechanism
                )));
            }
            let keys = secrets
                .map(|s| s.scram.clone())
                .unwrap_or_else(ScramKeys::random);
            let client_first = initial.data.unwrap_or_default();
            let (exchange, server_first) =
                ScramExchange::start(keys, client_first).map_err(scram_error)?;
            out.clear();
            pg::encode_auth_sasl_continue(server_first.as_bytes(), &mut out)?;
            stream.write_all(&out).await?;
            let message = read_password_message(stream, buf, max).await?;
            let server_final = match exchange.finish(&message.body) {
                Ok(server_final) if secrets.is_some() => server_final,
                Ok(_) | Err(client_auth::ScramError::WrongPassword) => return Err(failed()),
                Err(err) => return Err(scram_error(err)),
            };
            out.clear();
            pg::encode_auth_sasl_final(server_final.as_bytes(), &mut out)?;
            stream.write_all(&out).await?;
            Ok(())
        }
    }
}

fn scram_error(err: client_auth::ScramError) -> ClientError {
    ClientError::Protocol(err.to_string())
}

/// Reads the client's next message, which must be a PasswordMessage / SASL response ('p').
async fn read_password_message(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    max: usize,
) -> Result<pg::Message, ClientError> {
    let message = wire::read_message(stream, buf, max).await?;
    if message.tag != b'p' {
        return Err(ClientError::Protocol(format!(
            "expected password response, got message type {:?}",
            char::from(message.tag)
        )));
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(params: &[(&str, &str)]) -> StartupMessage {
        StartupMessage {
            protocol_version: 196608,
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn database_defaults_to_user_and_settings_are_kept() {
        let login = parse_login(
            &None,
            startup(&[
                ("user", "app"),
                ("application_name", "psql"),
                ("options", "-c x=1"),
            ]),
        )
        .expect("valid");
        assert_eq!(login.user, "app");
        assert_eq!(login.database, "app");
        assert_eq!(login.options.as_deref(), Some("-c x=1"));
        assert_eq!(
            login.settings,
            vec![("application_name".to_string(), "psql".to_string())]
        );
    }

    #[test]
    fn configured_database_overrides_the_clients() {
        let login = parse_login(
            &Some("real".into()),
            startup(&[("user", "app"), ("database", "x")]),
        )
        .expect("valid");
        assert_eq!(login.database, "real");
    }

    #[test]
    fn missing_user_and_replication_are_refused() {
        assert!(matches!(
            parse_login(&None, startup(&[("database", "x")])),
            Err(ClientError::NoUser)
        ));
        assert!(matches!(
            parse_login(&None, startup(&[("user", "a"), ("replication", "true")])),
            Err(ClientError::Unsupported(_))
        ));
    }
}
