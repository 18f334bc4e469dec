//! Errors of a PostgreSQL client session, each with the ErrorResponse the client is shown and a
//! fixed metrics label. The client sees a SQLSTATE and a message that never leak internals beyond
//! the cause class: a backend that cannot be reached is named by its pool, never by host name or
//! address (those go to the log).

use std::io;

use bytes::BytesMut;
use suture_protocol::pg::{self, ErrorFields};
use suture_protocol::ProtocolError;

use crate::pool::PoolError;
use crate::postgres::backend::PgRefusal;
use crate::postgres::backend::{BackendError, RunError};
use crate::postgres::wire::WireError;

/// Why a client session (login or command phase) ended with an error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// Reading from or writing to the client failed, or it closed mid-message.
    #[error("client connection: {0}")]
    Wire(#[from] WireError),
    /// The client broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The startup packet named no user.
    #[error("no user name in startup packet")]
    NoUser,
    /// Wrong password or unknown user (deliberately the same to the client).
    #[error("password authentication failed for user {0:?}")]
    AuthFailed(String),
    /// Something Suture does not proxy.
    #[error("{0} are not supported")]
    Unsupported(&'static str),
    /// The client did not finish logging in within the deadline.
    #[error("login timed out")]
    LoginTimeout,
    /// No backend connection could be had.
    #[error("no backend connection: {0}")]
    Pool(#[from] PoolError<BackendError>),
    /// The startup settings could not be applied on the backend.
    #[error("could not apply startup settings: {0}")]
    Settings(#[from] RunError),
}

impl From<io::Error> for ClientError {
    fn from(err: io::Error) -> Self {
        ClientError::Wire(WireError::Io(err))
    }
}

impl From<ProtocolError> for ClientError {
    fn from(err: ProtocolError) -> Self {
        ClientError::Wire(WireError::Protocol(err))
    }
}

/// An ErrorResponse to send to the client.
pub(crate) struct ClientNotice {
    pub(crate) severity: &'static str,
    pub(crate) code: String,
    pub(crate) message: String,
    pub(crate) detail: Option<String>,
}

impl ClientNotice {
    /// Appends the ErrorResponse. Only a NUL inside a server-provided text can make encoding
    /// fail: the client is then told less rather than nothing.
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        let encoded = pg::encode_error_response(
            self.severity,
            &self.code,
            &self.message,
            self.detail.as_deref(),
            out,
        );
        if encoded.is_err() {
            out.truncate(start);
            let _ = pg::encode_error_response(
                self.severity,
                &self.code,
                "connection failed",
                None,
                out,
            );
        }
    }
}

fn fatal(code: &str, message: impl Into<String>) -> Option<ClientNotice> {
    Some(ClientNotice {
        severity: "FATAL",
        code: code.to_owned(),
        message: message.into(),
        detail: None,
    })
}

fn from_server(fields: &ErrorFields) -> Option<ClientNotice> {
    Some(ClientNotice {
        severity: "FATAL",
        code: fields.code.clone(),
        message: fields.message.clone(),
        detail: fields.detail.clone(),
    })
}

impl ClientError {
    /// What the client of pool `pool` is told, if anything can still be told (not when its
    /// socket failed).
    pub(crate) fn notice(&self, pool: &str) -> Option<ClientNotice> {
        match self {
            ClientError::Wire(WireError::Protocol(err)) => {
                fatal("08P01", format!("invalid message: {err}"))
            }
            ClientError::Wire(WireError::Timeout(_)) | ClientError::Wire(_) => None,
            ClientError::Protocol(what) => fatal("08P01", format!("protocol violation: {what}")),
            ClientError::NoUser => fatal(
                "28000",
                "no PostgreSQL user name specified in startup packet",
            ),
            ClientError::AuthFailed(user) => fatal(
                "28P01",
                format!("password authentication failed for user \"{user}\""),
            ),
            ClientError::Unsupported(what) => {
                fatal("0A000", format!("{what} are not supported by Suture"))
            }
            ClientError::LoginTimeout => {
                fatal("08P01", "timed out waiting for the client to log in")
            }
            ClientError::Pool(PoolError::Connect(BackendError::Refused(PgRefusal(fields)))) => {
                from_server(fields)
            }
            ClientError::Pool(PoolError::QueueFull) => {
                fatal("53300", "sorry, too many clients already")
            }
            ClientError::Pool(err @ PoolError::WaitTimeout(_)) => fatal("53300", err.to_string()),
            ClientError::Pool(PoolError::Unavailable { hold, .. }) => fatal(
                "57P03",
                format!(
                    "the database system of pool \"{pool}\" is not accepting connections: none reachable within the failover hold ({hold:?})"
                ),
            ),
            ClientError::Pool(PoolError::HoldFull { .. }) => fatal(
                "57P03",
                format!(
                    "the database system of pool \"{pool}\" is not accepting connections, and too many clients are already waiting for it"
                ),
            ),
            ClientError::Pool(PoolError::ConnectTimeout(limit)) => fatal(
                "08006",
                format!("could not connect to the database server of pool \"{pool}\": timed out after {limit:?}"),
            ),
            ClientError::Pool(PoolError::Connect(err)) => fatal(
                "08006",
                format!(
                    "could not connect to the database server of pool \"{pool}\": {}",
                    err.client_reason()
                ),
            ),
            ClientError::Settings(RunError::Server(fields)) => from_server(fields),
            ClientError::Settings(err) => fatal(
                "08006",
                format!("could not apply startup settings on the database server of pool \"{pool}\": {err}"),
            ),
        }
    }

    /// Label for `suture_client_connections_total{result}` when the session ends with this error.
    pub(crate) fn metrics_label(&self) -> &'static str {
        match self {
            ClientError::AuthFailed(_) | ClientError::NoUser => "auth_failed",
            ClientError::Pool(PoolError::QueueFull) => "rejected",
            ClientError::Wire(WireError::Protocol(_))
            | ClientError::Protocol(_)
            | ClientError::LoginTimeout => "protocol_error",
            _ => "error",
        }
    }
}
