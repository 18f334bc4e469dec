//! Why opening an authenticated backend connection failed, for both protocols: each step's
//! failure (DNS and TCP, TLS, a deadline, the socket, the server's refusal, authentication,
//! the server's role, the settings read after login), how it is counted, whether the failover
//! hold retries it, and what a client may be told of it (never host names). The protocol
//! supplies the server's refusal (PostgreSQL's ErrorResponse fields, MySQL's ERR) and the error
//! of its post-login queries.

use std::fmt::{Debug, Display};
use std::time::Duration;

use crate::config::{ServerAddr, TlsMode};
use crate::net::connect::ConnectError;
use crate::net::tls::TlsError;
use crate::wire::WireError;

/// A server's refusal of a login, as its protocol reports it.
pub(crate) trait Refusal: Debug + Display + Send + Sync + 'static {
    /// "Not now" rather than "not you": the server is starting, shutting down or killed the
    /// connection, so the failover hold keeps trying.
    fn transient(&self) -> bool;
}

/// Why opening a backend connection failed; every variant says which step. `R` is the
/// server's refusal, `D` the error of the queries that read its settings after login.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoginError<R: Refusal, D: std::error::Error + 'static> {
    /// DNS or TCP connect failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// TLS could not be negotiated.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The server does not offer TLS but the pool's mode requires it.
    #[error("server does not support TLS, but tls mode is {}", .0.as_str())]
    TlsRefused(TlsMode),
    /// A step did not finish in time.
    #[error("{step} timed out after {limit:?}")]
    Timeout {
        /// Which step.
        step: &'static str,
        /// Its deadline.
        limit: Duration,
    },
    /// The socket failed or the server broke the protocol during login.
    #[error("backend login failed: {0}")]
    Wire(#[from] WireError),
    /// The server refused the login (bad password, unknown database, too many connections).
    #[error("server refused login: {0}")]
    Refused(R),
    /// The server asked for an authentication method Suture cannot answer.
    #[error("server asked for an unsupported authentication method ({0})")]
    UnsupportedAuth(String),
    /// No password is configured for this user.
    #[error("no password configured for user {0:?}")]
    UnknownUser(String),
    /// The pool wants a primary and every server reached was read-only.
    #[error("server {0} is read-only and the pool wants a primary")]
    ReadOnly(ServerAddr),
    /// Reading the server's settings after login failed.
    #[error("reading the server's settings after login failed: {0}")]
    Discovery(#[source] Box<D>),
    /// The server wants the password over a secure channel (MySQL caching_sha2_password's
    /// full authentication), and there is no TLS and no usable RSA key.
    #[error(
        "the server wants the password over TLS or its RSA public key, and neither was possible"
    )]
    NoSecureChannel,
}

impl<R: Refusal, D: std::error::Error + 'static> LoginError<R, D> {
    /// Fixed-cardinality label for `suture_backend_connects_total{result}`.
    pub(crate) fn metrics_label(&self) -> &'static str {
        match self {
            LoginError::Connect(err) => err.metrics_label(),
            LoginError::Tls(_) | LoginError::TlsRefused(_) => "tls_error",
            LoginError::Timeout { .. } => "timeout",
            LoginError::Wire(_) | LoginError::Discovery(_) => "error",
            LoginError::Refused(refusal) if refusal.transient() => "refused",
            LoginError::Refused(_)
            | LoginError::UnsupportedAuth(_)
            | LoginError::UnknownUser(_)
            | LoginError::NoSecureChannel => "auth_error",
            LoginError::ReadOnly(_) => "read_only",
        }
    }

    /// Whether the failover hold should keep trying (DESIGN §5): the server could not be
    /// reached, could not finish a login right now, or has the wrong role. A refused password,
    /// an unknown database or a TLS mode the server does not offer are answers, not outages,
    /// and go to the client at once.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            LoginError::Connect(_)
            | LoginError::Tls(_)
            | LoginError::Timeout { .. }
            | LoginError::Wire(_)
            | LoginError::ReadOnly(_)
            | LoginError::Discovery(_) => true,
            LoginError::Refused(refusal) => refusal.transient(),
            LoginError::TlsRefused(_)
            | LoginError::UnsupportedAuth(_)
            | LoginError::UnknownUser(_)
            | LoginError::NoSecureChannel => false,
        }
    }

    /// What a client may be told of this failure: its kind, without host names or addresses.
    pub(crate) fn client_reason(&self) -> &'static str {
        match self {
            LoginError::Connect(_) => "the server could not be reached",
            LoginError::Tls(_) | LoginError::TlsRefused(_) => "TLS could not be negotiated",
            LoginError::Timeout { .. } => "the login timed out",
            LoginError::Wire(_) | LoginError::Discovery(_) => "the connection failed during login",
            LoginError::Refused(_) => "the server refused the login",
            LoginError::UnsupportedAuth(_) => {
                "the server asked for an unsupported authentication method"
            }
            LoginError::UnknownUser(_) => "no password is configured for this user",
            LoginError::ReadOnly(_) => "the server is read-only and the pool wants a primary",
            LoginError::NoSecureChannel => {
                "the server wants the password over TLS or RSA, and neither was possible"
            }
        }
    }
}

/// Runs one login step under `limit`; running out is a [`LoginError::Timeout`] naming it.
pub(crate) async fn bounded<T, R: Refusal, D: std::error::Error + 'static>(
    step: &'static str,
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, LoginError<R, D>>>,
) -> Result<T, LoginError<R, D>> {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or(Err(LoginError::Timeout { step, limit }))
}
