//! The client's side of the login, with Suture as the server: answer SSLRequest and
//! GSSENCRequest with 'N', route a CancelRequest, read the StartupMessage and verify the password
//! (SCRAM-SHA-256 by default, md5 or trust when configured). Authentication failures look exactly
//! like PostgreSQL's (28P01, same text) whether the user or the password was wrong.

use std::sync::Arc;

use bytes::BytesMut;
use suture_protocol::pg::{self, StartupMessage, StartupRequest};
use tokio::io::AsyncWriteExt;

use crate::config::ClientAuthMethod;
use crate::net::client_socket::ClientSocket;
use crate::peer_text;
use crate::postgres::cancel;
use crate::postgres::client_auth::{self, ScramExchange, ScramKeys, SCRAM_SHA_256};
use crate::postgres::context::{PgKey, PgService};
use crate::postgres::errors::ClientError;
use crate::postgres::wire;

/// A client that authenticated, and what it asked for.
pub(crate) struct ClientLogin {
    pub(crate) user: String,
    pub(crate) database: String,
    /// Run-time settings applied on the backend at checkout: those the `options` parameter
    /// sets, then every other startup parameter (which wins, as in PostgreSQL).
    pub(crate) settings: Vec<(String, String)>,
}

impl ClientLogin {
    /// The sub-pool this client's backends come from.
    pub(crate) fn key(&self) -> PgKey {
        PgKey {
            user: self.user.clone(),
            database: self.database.clone(),
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
    stream: &mut ClientSocket,
    buf: &mut BytesMut,
) -> Result<LoginOutcome, ClientError> {
    let Some(startup) = read_startup(svc, stream, buf).await? else {
        return Ok(LoginOutcome::Cancelled);
    };
    let login = parse_login(&svc.core.config.database, startup)?;
    authenticate(svc, stream, buf, &login.user).await?;
    Ok(LoginOutcome::Authenticated(login))
}

/// Reads up to the StartupMessage, answering SSLRequest and GSSENCRequest (once each) with
/// 'N'; a CancelRequest is routed and gives `None`.
pub(crate) async fn read_startup(
    svc: &PgService,
    stream: &mut ClientSocket,
    buf: &mut BytesMut,
) -> Result<Option<StartupMessage>, ClientError> {
    let mut negotiated = Negotiated::default();
    loop {
        match pg::parse_startup(buf, MAX_STARTUP_PACKET)? {
            None => {
                wire::fill(stream, buf).await?;
            }
            Some(request @ (StartupRequest::SslRequest | StartupRequest::GssEncRequest)) => {
                if !buf.is_empty() {
                    // Bytes after an encryption request would be a protocol violation (and, with
                    // TLS, a buffer-stuffing attack): refuse.
                    return Err(ClientError::Protocol(
                        "data after encryption request".into(),
                    ));
                }
                negotiated.request(&request)?;
                stream.write_all(b"N").await?;
            }
            Some(StartupRequest::Cancel(request)) => {
                if let Some((target, guard)) =
                    svc.cancels.lookup(request.process_id, request.secret_key)
                {
                    if let Err(err) =
                        cancel::forward(target, svc.core.config.timeouts.connect).await
                    {
                        tracing::warn!(error = %err, "could not forward cancel request");
                    }
                    drop(guard);
                }
                return Ok(None);
            }
            Some(StartupRequest::Startup(startup)) => return Ok(Some(startup)),
        }
    }
}

/// The encryption requests a connection made: PostgreSQL answers one SSLRequest and one
/// GSSENCRequest per connection; another is a protocol violation, not a loop to keep a
/// connection busy in.
#[derive(Default)]
struct Negotiated {
    ssl: bool,
    gss: bool,
}

impl Negotiated {
    fn request(&mut self, request: &StartupRequest) -> Result<(), ClientError> {
        let seen = match request {
            StartupRequest::SslRequest => &mut self.ssl,
            _ => &mut self.gss,
        };
        if std::mem::replace(seen, true) {
            return Err(ClientError::Protocol(
                "encryption was already negotiated on this connection".into(),
            ));
        }
        Ok(())
    }
}

/// Splits the startup parameters into what keys the pool and what is applied with SET. User
/// and database names are cut to 63 bytes, as PostgreSQL cuts them.
fn parse_login(
    database_override: &Option<String>,
    startup: StartupMessage,
) -> Result<ClientLogin, ClientError> {
    let user = match startup.user() {
        Some(user) if !user.is_empty() => peer_text::name(user).to_owned(),
        _ => return Err(ClientError::NoUser),
    };
    let database = match database_override {
        Some(db) => db.clone(),
        None => peer_text::name(
            startup
                .database()
                .filter(|d| !d.is_empty())
                .unwrap_or(&user),
        )
        .to_owned(),
    };
    let mut from_options = Vec::new();
    let mut settings = Vec::new();
    for (name, value) in startup.params {
        match name.as_str() {
            "user" | "database" => {}
            "options" => from_options = options_settings(&value)?,
            "replication" => return Err(ClientError::Unsupported("replication connections")),
            // Protocol extensions (`_pq_.*`) are not negotiated: drop them.
            n if n.starts_with("_pq_.") => {}
            _ => settings.push((name, value)),
        }
    }
    from_options.extend(settings);
    Ok(ClientLogin {
        user,
        database,
        settings: from_options,
    })
}

/// The settings an `options` startup parameter makes, as PostgreSQL reads it: arguments split
/// at spaces (a backslash keeps the next character, a space included), each `-c name=value`,
/// `-cname=value` or `--name=value`, with dashes in names read as underscores. Other switches
/// are refused: they are not settings a pooled backend could take on.
fn options_settings(options: &str) -> Result<Vec<(String, String)>, ClientError> {
    let mut args = Vec::new();
    let mut arg = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => arg.extend(chars.next()),
            c if c.is_ascii_whitespace() => {
                if !arg.is_empty() {
                    args.push(std::mem::take(&mut arg));
                }
            }
            c => arg.push(c),
        }
    }
    if !arg.is_empty() {
        args.push(arg);
    }
    let mut settings = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let assignment = if arg == "-c" {
            args.next()
        } else if let Some(rest) = arg.strip_prefix("--") {
            Some(rest.to_owned())
        } else {
            arg.strip_prefix("-c").map(str::to_owned)
        };
        let parsed = assignment.as_deref().and_then(|a| a.split_once('='));
        match parsed {
            Some((name, value)) if !name.is_empty() => {
                settings.push((name.replace('-', "_"), value.to_owned()));
            }
            _ => {
                return Err(ClientError::Unsupported(
                    "startup options other than -c name=value",
                ))
            }
        }
    }
    Ok(settings)
}

/// Verifies the client's password per the pool's `client_auth`; does not send AuthenticationOk
/// (the session sends it with the rest of the login reply, in one write).
async fn authenticate(
    svc: &Arc<PgService>,
    stream: &mut ClientSocket,
    buf: &mut BytesMut,
    user: &str,
) -> Result<(), ClientError> {
    let secrets = svc.user(user);
    let max = MAX_STARTUP_PACKET.max(1024);
    let failed = || ClientError::AuthFailed(user.to_owned());
    match svc.core.config.client_auth {
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
        // The configuration refuses MySQL methods on a PostgreSQL pool; SCRAM if one got here.
        ClientAuthMethod::ScramSha256
        | ClientAuthMethod::MysqlNativePassword
        | ClientAuthMethod::CachingSha2Password => {
            let mut out = BytesMut::new();
            pg::encode_auth_sasl(&[SCRAM_SHA_256], &mut out)?;
            stream.write_all(&out).await?;
            let message = read_password_message(stream, buf, max).await?;
            let initial = pg::parse_sasl_initial_response(&message.body)?;
            if initial.mechanism != SCRAM_SHA_256 {
                return Err(ClientError::Protocol(format!(
                    "unsupported SASL mechanism {:?}",
                    peer_text::bounded(initial.mechanism)
                )));
            }
            let keys = secrets
                .map(|s| s.scram.clone())
                .unwrap_or_else(|| ScramKeys::mock(user, &svc.mock_secret));
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
    stream: &mut ClientSocket,
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
        assert_eq!(
            login.settings,
            vec![
                ("x".to_string(), "1".to_string()),
                ("application_name".to_string(), "psql".to_string())
            ]
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
    fn long_names_are_cut_like_postgresql_cuts_them() {
        let long = "u".repeat(9_900);
        let login = parse_login(&None, startup(&[("user", &long)])).expect("valid");
        assert_eq!(login.user.len(), 63);
        assert_eq!(login.database.len(), 63);
    }

    #[test]
    fn each_encryption_request_is_answered_once() {
        let mut n = Negotiated::default();
        assert!(n.request(&StartupRequest::SslRequest).is_ok());
        assert!(n.request(&StartupRequest::GssEncRequest).is_ok());
        assert!(n.request(&StartupRequest::SslRequest).is_err());
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

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn options_are_read_as_postgresql_reads_them() {
        let got = options_settings(r"-c search_path=a,\ b  -cstatement_timeout=5s --work-mem=64MB")
            .expect("valid");
        assert_eq!(
            got,
            pairs(&[
                ("search_path", "a, b"),
                ("statement_timeout", "5s"),
                ("work_mem", "64MB")
            ])
        );
        assert_eq!(options_settings("  ").expect("empty"), vec![]);
        for bad in ["-d 5", "-c", "-c nothing", "--=x", "plain"] {
            assert!(options_settings(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn explicit_parameters_win_over_options() {
        let login = parse_login(
            &None,
            startup(&[
                ("user", "app"),
                ("options", "-c application_name=o"),
                ("application_name", "p"),
            ]),
        )
        .expect("valid");
        let applied: std::collections::BTreeMap<_, _> = login.settings.into_iter().collect();
        assert_eq!(
            applied.get("application_name").map(String::as_str),
            Some("p")
        );
    }
}
