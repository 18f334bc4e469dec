//! Errors of a MySQL client session, each with the ERR packet the client is shown (as a
//! MySQL or MariaDB server words it) and a fixed metrics label. The texts never leak more than
//! the cause class: a backend that cannot be reached is named by its pool, never by host name
//! or address (those go to the log), and peer-supplied names arrive here already cut with
//! `crate::peer_text`.

use std::fmt;
use std::time::Duration;

use bytes::BytesMut;
use suture_protocol::mysql::{capability, encode_err, error_code};
use suture_protocol::ProtocolError;

use crate::pool::PoolError;
use crate::wire::WireError;

/// ER_HANDSHAKE_ERROR: "Bad handshake" (08S01).
pub(crate) const ER_HANDSHAKE_ERROR: u16 = 1043;
/// ER_NET_PACKETS_OUT_OF_ORDER: "Got packets out of order" (08S01).
pub(crate) const ER_NET_PACKETS_OUT_OF_ORDER: u16 = 1156;
/// ER_WRONG_DB_NAME: "Incorrect database name" (42000).
pub(crate) const ER_WRONG_DB_NAME: u16 = 1102;
/// ER_MALFORMED_PACKET: "Malformed communication packet" (HY000).
pub(crate) const ER_MALFORMED_PACKET: u16 = 1835;

/// Why a client session (login, COM_CHANGE_USER or command phase) ended with an error.
///
/// The variants raised by `client_login::login` and `client_login::change_user` carry the
/// sequence id their ERR packet must have ([`ClientError::login_seq`]); for the others the
/// caller knows it (the login's `next_seq` for a failed checkout, the command's for the rest).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// Reading from or writing to the client failed, or it closed mid-packet.
    #[error("client connection: {0}")]
    Wire(#[from] WireError),
    /// The login (or COM_CHANGE_USER) broke the protocol: MySQL's "Bad handshake".
    #[error("bad handshake: {what}")]
    BadHandshake { what: String, seq: u8 },
    /// Wrong password or unknown user: deliberately the same to the client.
    #[error("access denied for user {user:?}@{host:?} (using password: {})", yes_no(*.password))]
    AuthFailed {
        user: String,
        host: String,
        /// Whether the client sent a non-empty auth response.
        password: bool,
        seq: u8,
    },
    /// A caching_sha2_password client asked for the full authentication path (the RSA public
    /// key, or a cleartext password), which needs TLS or RSA that Suture does not offer.
    #[error("caching_sha2_password full authentication requested for user {user:?}@{host:?}")]
    FullAuthUnsupported { user: String, host: String, seq: u8 },
    /// The client named a database longer than the server allows (name cut for display).
    #[error("incorrect database name {name:?}")]
    BadDatabase { name: String, seq: u8 },
    /// The client did not finish logging in within the deadline.
    #[error("login timed out")]
    LoginTimeout,
    /// No backend connection could be had; `detail` is the pool's own account, for the log.
    #[error("no backend connection: {detail}")]
    Pool {
        failure: PoolFailure,
        detail: String,
    },
    /// The server refused the backend login (e.g. unknown database): its ERR, passed through.
    #[error("the server refused the login: ERROR {code} ({sql_state}): {message}")]
    BackendRefused {
        code: u16,
        sql_state: String,
        message: String,
    },
}

fn yes_no(password: bool) -> &'static str {
    if password {
        "YES"
    } else {
        "NO"
    }
}

/// What the client is told of a failed checkout: the kind of failure, without the backend
/// error itself (which may name hosts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PoolFailure {
    /// Too many callers already wait for this sub-pool.
    QueueFull,
    /// No connection became free within the checkout timeout.
    WaitTimeout(Duration),
    /// Opening a connection did not finish within the checkout timeout.
    ConnectTimeout(Duration),
    /// No backend reachable within the failover hold.
    Unavailable { hold: Duration },
    /// No backend reachable and too many callers already held.
    HoldFull,
    /// Opening a connection failed; a host-free reason.
    Connect(&'static str),
}

/// What the client side needs to know of a backend login failure (implemented by the MySQL
/// backend's error type, so a `PoolError` of it converts into a [`ClientError`]).
pub(crate) trait BackendFailure: std::error::Error + 'static {
    /// The kind of failure, without host names or addresses.
    fn client_reason(&self) -> &'static str;
    /// The server's own ERR when the server refused the login (passed through to the client).
    fn refusal(&self) -> Option<MyNotice>;
}

impl<E: BackendFailure> From<PoolError<E>> for ClientError {
    fn from(err: PoolError<E>) -> Self {
        if let PoolError::Connect(backend) = &err {
            if let Some(notice) = backend.refusal() {
                return ClientError::BackendRefused {
                    code: notice.code,
                    sql_state: notice.sql_state,
                    message: notice.message,
                };
            }
        }
        let failure = match &err {
            PoolError::QueueFull => PoolFailure::QueueFull,
            PoolError::WaitTimeout(limit) => PoolFailure::WaitTimeout(*limit),
            PoolError::ConnectTimeout(limit) => PoolFailure::ConnectTimeout(*limit),
            PoolError::Unavailable { hold, .. } => PoolFailure::Unavailable { hold: *hold },
            PoolError::HoldFull { .. } => PoolFailure::HoldFull,
            PoolError::Connect(backend) => PoolFailure::Connect(backend.client_reason()),
        };
        ClientError::Pool {
            failure,
            detail: err.to_string(),
        }
    }
}

/// An ERR packet to send to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MyNotice {
    pub(crate) code: u16,
    /// Five ASCII characters.
    pub(crate) sql_state: String,
    pub(crate) message: String,
}

impl MyNotice {
    pub(crate) fn new(code: u16, sql_state: &str, message: impl Into<String>) -> MyNotice {
        MyNotice {
            code,
            sql_state: sql_state.to_owned(),
            message: message.into(),
        }
    }

    /// Appends the ERR packet with sequence id `seq` for a client that speaks protocol 4.1
    /// (every client past the handshake: Suture refuses the others), SQLSTATE included.
    pub(crate) fn encode(&self, seq: u8, buf: &mut BytesMut) {
        self.encode_for(capability::CLIENT_PROTOCOL_41, seq, buf);
    }

    /// Appends the ERR packet for a client whose capabilities are not known yet (instead of the
    /// greeting): as servers do then, without the SQLSTATE marker, which clients would
    /// otherwise show as part of the message.
    pub(crate) fn encode_before_handshake(&self, buf: &mut BytesMut) {
        self.encode_for(0, 0, buf);
    }

    fn encode_for(&self, caps: u64, seq: u8, buf: &mut BytesMut) {
        let message = self.message.as_bytes();
        let encoded = encode_err(self.code, &self.sql_state, message, caps, seq, buf);
        if encoded.is_err() {
            // Only a SQLSTATE a backend sent that is not five ASCII characters gets here.
            let _ = encode_err(self.code, "HY000", message, caps, seq, buf);
        }
    }
}

impl fmt::Display for MyNotice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ERROR {} ({}): {}",
            self.code, self.sql_state, self.message
        )
    }
}

/// The text of ERR 1045, as the server words it.
/// The user name is cut as in logs: a client chooses it, and must not have it echoed back at
/// any length.
pub(crate) fn access_denied(user: &str, host: &str, password: bool) -> String {
    format!(
        "Access denied for user '{}'@'{host}' (using password: {})",
        crate::peer_text::name(user),
        yes_no(password)
    )
}

fn cannot_connect(pool: &str, why: impl fmt::Display) -> Option<MyNotice> {
    Some(MyNotice::new(
        error_code::CR_CONN_HOST_ERROR,
        "HY000",
        format!("Can't connect to MySQL server of pool '{pool}' ({why})"),
    ))
}

impl ClientError {
    /// What the client of pool `pool` is told, if anything can still be told (not when its
    /// socket failed, nor after a login timeout: the client is silent, as servers are then).
    pub(crate) fn err_packet(&self, pool: &str) -> Option<MyNotice> {
        use error_code::*;
        match self {
            ClientError::Wire(WireError::Protocol(err)) => Some(match err {
                ProtocolError::MessageTooLarge { .. } => MyNotice::new(
                    ER_NET_PACKET_TOO_LARGE,
                    "08S01",
                    "Got a packet bigger than 'max_allowed_packet' bytes",
                ),
                ProtocolError::OutOfSequence { .. } => MyNotice::new(
                    ER_NET_PACKETS_OUT_OF_ORDER,
                    "08S01",
                    "Got packets out of order",
                ),
                err => MyNotice::new(
                    ER_MALFORMED_PACKET,
                    "HY000",
                    format!("Malformed communication packet: {err}"),
                ),
            }),
            ClientError::Wire(_) | ClientError::LoginTimeout => None,
            ClientError::BadHandshake { what, .. } => Some(MyNotice::new(
                ER_HANDSHAKE_ERROR,
                "08S01",
                format!("Bad handshake: {what}"),
            )),
            ClientError::AuthFailed {
                user,
                host,
                password,
                ..
            } => Some(MyNotice::new(
                ER_ACCESS_DENIED_ERROR,
                "28000",
                access_denied(user, host, *password),
            )),
            ClientError::FullAuthUnsupported { user, host, .. } => Some(MyNotice::new(
                ER_ACCESS_DENIED_ERROR,
                "28000",
                format!(
                    "Access denied for user '{}'@'{host}': caching_sha2_password full \
                     authentication needs TLS or an RSA key exchange, which Suture does not \
                     offer to clients",
                    crate::peer_text::name(user)
                ),
            )),
            ClientError::BadDatabase { name, .. } => Some(MyNotice::new(
                ER_WRONG_DB_NAME,
                "42000",
                format!("Incorrect database name '{name}'"),
            )),
            ClientError::Pool { failure, .. } => match failure {
                PoolFailure::QueueFull => Some(MyNotice::new(
                    ER_CON_COUNT_ERROR,
                    "08004",
                    "Too many connections",
                )),
                PoolFailure::WaitTimeout(limit) => Some(MyNotice::new(
                    ER_CON_COUNT_ERROR,
                    "08004",
                    format!(
                        "Too many connections: no backend connection of pool '{pool}' became free within {limit:?}"
                    ),
                )),
                PoolFailure::ConnectTimeout(limit) => {
                    cannot_connect(pool, format_args!("timed out after {limit:?}"))
                }
                PoolFailure::Unavailable { hold } => cannot_connect(
                    pool,
                    format_args!("none reachable within the failover hold of {hold:?}"),
                ),
                PoolFailure::HoldFull => cannot_connect(
                    pool,
                    "none reachable, and too many clients are already waiting for one",
                ),
                PoolFailure::Connect(reason) => cannot_connect(pool, reason),
            },
            ClientError::BackendRefused {
                code,
                sql_state,
                message,
            } => Some(MyNotice::new(*code, sql_state, message.clone())),
        }
    }

    /// The sequence id of this error's ERR packet when the login or COM_CHANGE_USER exchange
    /// that raised it fixed one.
    pub(crate) fn login_seq(&self) -> Option<u8> {
        match self {
            ClientError::BadHandshake { seq, .. }
            | ClientError::AuthFailed { seq, .. }
            | ClientError::FullAuthUnsupported { seq, .. }
            | ClientError::BadDatabase { seq, .. } => Some(*seq),
            _ => None,
        }
    }

    /// Whether this is a refused authentication (the caller waits `auth_failure_delay` before
    /// it answers).
    pub(crate) fn is_auth_failure(&self) -> bool {
        matches!(
            self,
            ClientError::AuthFailed { .. } | ClientError::FullAuthUnsupported { .. }
        )
    }

    /// Label for `suture_client_connections_total{result}` when the session ends with this
    /// error (the labels PostgreSQL sessions use for the same causes).
    pub(crate) fn metrics_label(&self) -> &'static str {
        match self {
            ClientError::AuthFailed { .. } | ClientError::FullAuthUnsupported { .. } => {
                "auth_failed"
            }
            ClientError::Pool {
                failure: PoolFailure::QueueFull,
                ..
            } => "rejected",
            ClientError::Wire(WireError::Protocol(_))
            | ClientError::BadHandshake { .. }
            | ClientError::LoginTimeout => "protocol_error",
            _ => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use suture_protocol::mysql::parse_err;

    #[derive(Debug, thiserror::Error)]
    enum FakeBackend {
        #[error("connect to db.internal:3306: refused")]
        Down,
        #[error("server said no")]
        Refused,
    }

    impl BackendFailure for FakeBackend {
        fn client_reason(&self) -> &'static str {
            "the server could not be reached"
        }
        fn refusal(&self) -> Option<MyNotice> {
            match self {
                FakeBackend::Down => None,
                FakeBackend::Refused => Some(MyNotice::new(1049, "42000", "Unknown database 'x'")),
            }
        }
    }

    fn notice(err: ClientError) -> MyNotice {
        err.err_packet("app").expect("an ERR")
    }

    #[test]
    fn access_denied_is_worded_as_the_server_words_it() {
        let err = ClientError::AuthFailed {
            user: "app".into(),
            host: "localhost".into(),
            password: true,
            seq: 2,
        };
        assert_eq!(err.login_seq(), Some(2));
        assert_eq!(err.metrics_label(), "auth_failed");
        let n = notice(err);
        assert_eq!((n.code, n.sql_state.as_str()), (1045, "28000"));
        assert_eq!(
            n.message,
            "Access denied for user 'app'@'localhost' (using password: YES)"
        );
        assert_eq!(
            access_denied("x", "10.0.0.1", false),
            "Access denied for user 'x'@'10.0.0.1' (using password: NO)"
        );
    }

    #[test]
    fn pool_errors_map_to_server_codes_without_host_names() {
        let full: ClientError = PoolError::<FakeBackend>::QueueFull.into();
        assert_eq!(full.metrics_label(), "rejected");
        let n = notice(full);
        assert_eq!(
            (n.code, &n.sql_state[..], &n.message[..]),
            (1040, "08004", "Too many connections")
        );

        let down: ClientError = PoolError::Connect(FakeBackend::Down).into();
        assert!(down.to_string().contains("db.internal"), "the log keeps it");
        let n = notice(down);
        assert_eq!((n.code, &n.sql_state[..]), (2003, "HY000"));
        assert_eq!(
            n.message,
            "Can't connect to MySQL server of pool 'app' (the server could not be reached)"
        );

        let held: ClientError = PoolError::<FakeBackend>::Unavailable {
            waited: Duration::from_secs(30),
            hold: Duration::from_secs(30),
            last: Some(Box::new(FakeBackend::Down)),
        }
        .into();
        assert_eq!(held.metrics_label(), "error");
        let n = notice(held);
        assert_eq!(n.code, 2003);
        assert!(n.message.contains("failover hold of 30s"), "{}", n.message);
        assert!(!n.message.contains("db.internal"));

        let refused: ClientError = PoolError::Connect(FakeBackend::Refused).into();
        let n = notice(refused);
        assert_eq!((n.code, &n.sql_state[..]), (1049, "42000"));
        assert_eq!(n.message, "Unknown database 'x'");
    }

    #[test]
    fn silent_ends_send_nothing() {
        assert!(ClientError::LoginTimeout.err_packet("app").is_none());
        assert_eq!(ClientError::LoginTimeout.metrics_label(), "protocol_error");
        assert!(ClientError::Wire(WireError::Closed)
            .err_packet("app")
            .is_none());
    }

    #[test]
    fn protocol_errors_have_their_server_codes() {
        let wire = |err| ClientError::Wire(WireError::Protocol(err));
        let big = notice(wire(ProtocolError::MessageTooLarge { len: 9, max: 1 }));
        assert_eq!((big.code, &big.sql_state[..]), (1153, "08S01"));
        let order = notice(wire(ProtocolError::OutOfSequence {
            expected: 1,
            got: 3,
        }));
        assert_eq!(order.code, 1156);
        let bad = ClientError::BadHandshake {
            what: "TLS".into(),
            seq: 2,
        };
        assert_eq!(bad.metrics_label(), "protocol_error");
        assert_eq!(notice(bad).code, 1043);
    }

    #[test]
    fn encoding_keeps_or_drops_the_sqlstate() {
        let n = MyNotice::new(1040, "08004", "Too many connections");
        let mut buf = BytesMut::new();
        n.encode(3, &mut buf);
        assert_eq!(buf[3], 3);
        let err = parse_err(&buf[4..], capability::CLIENT_PROTOCOL_41).expect("ERR");
        assert_eq!((err.code, err.sql_state_str()), (1040, "08004"));
        assert_eq!(err.message, b"Too many connections");
        buf.clear();
        n.encode_before_handshake(&mut buf);
        assert_eq!(
            &buf[..],
            b"\x17\x00\x00\x00\xff\x10\x04Too many connections"
        );
        // A bad SQLSTATE from a backend still gives an ERR.
        buf.clear();
        MyNotice::new(1, "bad", "m").encode(1, &mut buf);
        let err = parse_err(&buf[4..], capability::CLIENT_PROTOCOL_41).expect("ERR");
        assert_eq!(err.sql_state_str(), "HY000");
    }
}
