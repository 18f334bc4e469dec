//! Tests of backend connections against a private MariaDB (`test_server`): the native login,
//! an AuthSwitchRequest, refusals and their labels, TLS modes the server does not offer, the
//! role check, discovery, Suture's own commands, session tracking, and the idle check after
//! the server kills the connection. caching_sha2_password, which MariaDB lacks, is tested on a
//! scripted server in `backend_auth_tests.rs`; a whole MySQL 8.0 login (greeting, response,
//! MySQL discovery, ERR 4031 while idle) on a scripted TCP server here.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use mysql_async::prelude::Queryable;
use suture_protocol::mysql::{session_changes, status, SessionChange};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::config::{Config, PoolConfig};
use crate::mysql::backend_auth::ClientPlugin;
use crate::mysql::manager::MyManager;
use crate::mysql::test_server::mariadb_server::{APP_DB, APP_USER};
use crate::mysql::test_server::{free_port, MariaDbServer};
use crate::net::dns::Resolver;
use crate::ops::pool_state::PoolOps;
use crate::pool::Manager;

const T: Duration = Duration::from_secs(10);

/// A MySQL pool in front of the servers on `ports`, with the harness's users.
fn pool(ports: &[u16], tls: &str, role: &str) -> PoolConfig {
    let servers: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let toml = format!(
        r#"
[pools.my]
protocol = "mysql"
listen = "127.0.0.1:{listen}"
servers = [{servers}]
tls = "{tls}"
role = "{role}"
client_auth = "mysql_native_password"
[pools.my.users.app]
password = "app-secret"
[pools.my.users.root]
password = "root-secret"
[pools.my.users.eduser]
password = "ed-secret"
[pools.my.users.wrong]
password = "not-the-password"
"#,
        listen = free_port(),
        servers = servers.join(", "),
    );
    let mut config = Config::from_sources(&toml, &HashMap::new()).unwrap();
    config.pools.remove("my").unwrap()
}

fn context(ports: &[u16], tls: &str, role: &str) -> MyBackendContext {
    let config = pool(ports, tls, role);
    MyBackendContext::new(&config, Resolver::new(T), Arc::new(PoolOps::default())).unwrap()
}

fn key(user: &str, db: Option<&str>, caps: u64) -> MyKey {
    MyKey::new(user.to_owned(), db.map(str::to_owned), caps)
}

fn app_key(caps: u64) -> MyKey {
    key(APP_USER, Some(APP_DB), caps)
}

/// The session-tracking records of an OK, as (kind, first field) pairs, up to the first one
/// the protocol crate cannot read (it reads a state-change record's `1` as a length-encoded
/// string, which MariaDB does not send).
fn changes(state: &[u8]) -> Vec<(u8, Vec<u8>)> {
    session_changes(state)
        .map_while(Result::ok)
        .map(|c| {
            let first = match c {
                SessionChange::SystemVariable { name, .. } => name.to_vec(),
                SessionChange::Schema(s) | SessionChange::StateChange(s) => s.to_vec(),
                _ => Vec::new(),
            };
            (c.kind(), first)
        })
        .collect()
}

fn text(value: &Option<Vec<u8>>) -> Option<&str> {
    value.as_deref().map(|v| std::str::from_utf8(v).unwrap())
}

#[tokio::test]
async fn native_login_discovery_commands_and_kill() {
    let server = MariaDbServer::start_with(&["--wait-timeout=7", "--interactive-timeout=9"])
        .await
        .unwrap();
    let ctx = context(&[server.port()], "disable", "primary");
    let manager = MyManager::new(Arc::new(ctx));
    let ctx = manager.ctx.get();

    let mut conn = connect(&ctx, &app_key(CLIENT_DEPRECATE_EOF)).await.unwrap();
    assert!(conn.connection_id > 0);
    assert!(
        conn.server_version.contains("MariaDB"),
        "{}",
        conn.server_version
    );
    assert_ne!(conn.capabilities & CLIENT_PROTOCOL_41, 0);
    assert_ne!(conn.capabilities & CLIENT_DEPRECATE_EOF, 0);
    assert_eq!(conn.capabilities & (CLIENT_SSL | CLIENT_COMPRESS), 0);
    assert_eq!(conn.capabilities & CLIENT_INTERACTIVE, 0);
    assert!(conn.tracking, "MariaDB 10.11 has session tracking");
    assert_eq!(conn.wait_timeout, Some(Duration::from_secs(7)));
    assert_eq!(conn.interactive_timeout, Some(Duration::from_secs(9)));
    assert_eq!(manager.idle_limit(&conn), Some(Duration::from_secs(7)));
    assert!(!conn.read_only);
    assert_eq!(conn.state.database.as_deref(), Some(APP_DB));
    assert_ne!(conn.state.status & status::SERVER_STATUS_AUTOCOMMIT, 0);
    assert_eq!(MyManager::conn_id(&conn), i64::from(conn.connection_id));
    let limits = ctx.ops.snapshot().limits.unwrap();
    assert_eq!(limits.idle_session_timeout, Some(Duration::from_secs(7)));

    // Text rows, NULL included.
    let result = conn.query("SELECT 1, NULL, 'x'", T).await.unwrap();
    assert_eq!(result.rows.len(), 1);
    let row: Vec<_> = result.rows[0].iter().map(text).collect();
    assert_eq!(row, [Some("1"), None, Some("x")]);

    // Session tracking: the OK after a SET carries the variable.
    let result = conn.query("SET SESSION sql_mode=''", T).await.unwrap();
    assert_ne!(result.status & status::SERVER_SESSION_STATE_CHANGED, 0);
    let records = changes(&result.session_state);
    assert!(records.contains(&(0, b"sql_mode".to_vec())), "{records:?}");

    // A server error leaves the connection usable.
    match conn.query("SELECT * FROM no_such_table", T).await {
        Err(MyRunError::Server(notice)) => assert_eq!(notice.code, 1146),
        other => panic!("{other:?}"),
    }
    assert!(!conn.broken);
    conn.ping(T).await.unwrap();

    // Transactions show in the status flags.
    conn.query("BEGIN", T).await.unwrap();
    assert_ne!(conn.state.status & status::SERVER_STATUS_IN_TRANS, 0);
    conn.query("ROLLBACK", T).await.unwrap();
    assert_eq!(conn.state.status & status::SERVER_STATUS_IN_TRANS, 0);

    conn.init_db("information_schema", T).await.unwrap();
    assert_eq!(conn.state.database.as_deref(), Some("information_schema"));
    let db = conn.query("SELECT DATABASE()", T).await.unwrap();
    assert_eq!(text(&db.rows[0][0]), Some("information_schema"));
    assert!(matches!(
        conn.init_db("no_such_db", T).await,
        Err(MyRunError::Server(_))
    ));
    conn.init_db(APP_DB, T).await.unwrap();

    let prepared = conn.prepare(b"SELECT ? + 1, ?", T).await.unwrap();
    assert_eq!((prepared.params, prepared.columns), (2, 2));
    conn.ping(T).await.unwrap();

    // COM_SET_OPTION switches multi-statements.
    conn.set_option(false, T).await.unwrap();
    assert_eq!(conn.capabilities & CLIENT_MULTI_STATEMENTS, 0);
    assert!(matches!(
        conn.query("SELECT 1; SELECT 2", T).await,
        Err(MyRunError::Server(_))
    ));
    conn.set_option(true, T).await.unwrap();
    let both = conn.query("SELECT 1; SELECT 2", T).await.unwrap();
    assert_eq!(both.rows.len(), 2);

    // COM_RESET_CONNECTION clears user variables; tracking stays on.
    conn.query("SET @kept = 5", T).await.unwrap();
    conn.reset_connection(T).await.unwrap();
    let gone = conn.query("SELECT @kept", T).await.unwrap();
    assert_eq!(gone.rows[0][0], None);
    let result = conn.query("SET SESSION sql_mode=''", T).await.unwrap();
    assert!(changes(&result.session_state).contains(&(0, b"sql_mode".to_vec())));
    assert!(manager.health_check(&mut conn).await);

    // An interactive client's connection lives by interactive_timeout.
    let interactive = connect(&ctx, &app_key(CLIENT_INTERACTIVE)).await.unwrap();
    assert_ne!(interactive.capabilities & CLIENT_INTERACTIVE, 0);
    assert_eq!(
        manager.idle_limit(&interactive),
        Some(Duration::from_secs(9))
    );

    // The server kills the idle connection: the idle check sees it.
    assert_eq!(manager.check_idle(&mut conn), Ok(()));
    let mut admin = server.admin().await.unwrap();
    admin
        .query_drop(format!("KILL {}", conn.connection_id))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + T;
    let cause = loop {
        match manager.check_idle(&mut conn) {
            Err(cause) => break cause,
            Ok(()) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Ok(()) => panic!("the killed connection still looks alive"),
        }
    };
    assert!(matches!(cause, "fin" | "rst"), "{cause}");
    assert!(conn.ping(T).await.is_err());
    assert!(conn.broken);
    assert_eq!(conn.check_idle(1024), Err("error"));

    let mut interactive = interactive;
    interactive.terminate().await;
    assert!(interactive.broken);
}

#[tokio::test]
async fn refusals_auth_switch_tls_and_role() {
    let server = MariaDbServer::start().await.unwrap();
    let port = server.port();
    let ctx = context(&[port], "disable", "primary");

    let err = connect(&ctx, &key("wrong", None, 0)).await.err().unwrap();
    // A user the server does not know: ER_ACCESS_DENIED_ERROR, or MariaDB's
    // ER_ACCESS_DENIED_NO_PASSWORD_ERROR (1698).
    match &err {
        MyBackendError::Refused(notice) => {
            assert!(matches!(notice.code, 1045 | 1698), "{notice}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.metrics_label(), "auth_error");
    assert!(!err.is_retryable());
    assert_eq!(err.refusal().map(|n| n.sql_state), Some("28000".to_owned()));
    assert!(!ctx.ops.logged_in());

    // A wrong password for an existing user.
    let mut bad = pool(&[port], "disable", "primary");
    let app = bad.users.get_mut(APP_USER).unwrap();
    app.password = crate::config::Secret::new("nope");
    let bad = MyBackendContext::new(&bad, Resolver::new(T), Arc::new(PoolOps::default())).unwrap();
    let err = connect(&bad, &app_key(0)).await.err().unwrap();
    assert!(
        matches!(&err, MyBackendError::Refused(n) if n.code == 1045),
        "{err:?}"
    );
    assert_eq!(err.metrics_label(), "auth_error");
    assert!(!err.is_retryable());
    assert_eq!(bad.ops.snapshot().connect.unwrap().result, "auth_error");

    let err = connect(&ctx, &key("root", Some("no_such_db"), 0))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, MyBackendError::Refused(n) if n.code == 1049),
        "{err:?}"
    );
    assert!(!err.is_retryable());

    let err = connect(&ctx, &key("stranger", None, 0))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, MyBackendError::UnknownUser(_)), "{err:?}");
    assert!(!err.is_retryable());

    // An ed25519 account: the server switches to a plugin Suture does not speak.
    let err = connect(&ctx, &key("eduser", Some(APP_DB), 0))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, MyBackendError::UnsupportedAuth(p) if p == "client_ed25519"),
        "{err:?}"
    );
    assert!(!err.is_retryable());

    // A first response for caching_sha2_password, which MariaDB lacks: it switches the
    // account back to mysql_native_password with a fresh scramble.
    let mut forced = context(&[port], "disable", "primary");
    forced.first_plugin = Some(ClientPlugin::CachingSha2);
    let mut conn = connect(&forced, &app_key(0)).await.unwrap();
    conn.ping(T).await.unwrap();

    // TLS: MariaDB here has no certificate, so it offers none.
    let require = context(&[port], "require", "primary");
    let err = connect(&require, &app_key(0)).await.err().unwrap();
    assert!(
        matches!(err, MyBackendError::TlsRefused(TlsMode::Require)),
        "{err:?}"
    );
    assert_eq!(err.metrics_label(), "tls_error");
    assert!(!err.is_retryable());
    let prefer = context(&[port], "prefer", "primary");
    let mut conn = connect(&prefer, &app_key(0)).await.unwrap();
    assert_eq!(conn.capabilities & CLIENT_SSL, 0);
    conn.ping(T).await.unwrap();

    // A read-only server: a pool that wants a primary tries every server, then refuses.
    server.set_global("read_only = 1").await.unwrap();
    let primary = context(&[port, port], "disable", "primary");
    let err = connect(&primary, &app_key(0)).await.err().unwrap();
    assert!(
        matches!(&err, MyBackendError::ReadOnly(s) if s.port == port),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert_eq!(err.metrics_label(), "read_only");
    let any = context(&[port], "disable", "any");
    let conn = connect(&any, &app_key(0)).await.unwrap();
    assert!(conn.read_only);
}

#[tokio::test]
async fn server_down_is_a_retryable_connect_error() {
    let ctx = context(&[free_port()], "disable", "primary");
    let err = connect(&ctx, &app_key(0)).await.err().unwrap();
    assert!(matches!(err, MyBackendError::Connect(_)), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(err.metrics_label(), "refused");
    assert_eq!(err.client_reason(), "the server could not be reached");
    assert!(err.refusal().is_none());
    assert!(!ctx.ops.logged_in());
}

#[test]
fn login_capabilities_are_what_both_sides_have() {
    let mariadb = 0xffff_f7fe_u64 | (0x1d << 32);
    let caps = login_capabilities(
        CLIENT_MULTI_STATEMENTS | CLIENT_DEPRECATE_EOF | CLIENT_SSL | CLIENT_COMPRESS,
        mariadb,
        true,
    );
    assert_ne!(
        caps & CLIENT_LONG_PASSWORD,
        0,
        "no MariaDB extended capabilities"
    );
    assert_eq!(caps >> 32, 0);
    for flag in [
        CLIENT_PROTOCOL_41,
        CLIENT_SECURE_CONNECTION,
        CLIENT_PLUGIN_AUTH,
        CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
        CLIENT_TRANSACTIONS,
        CLIENT_SESSION_TRACK,
        CLIENT_CONNECT_ATTRS,
        CLIENT_CONNECT_WITH_DB,
        CLIENT_MULTI_STATEMENTS,
        CLIENT_DEPRECATE_EOF,
    ] {
        assert_ne!(caps & flag, 0, "{flag:#x}");
    }
    assert_eq!(
        caps & (CLIENT_SSL | CLIENT_COMPRESS | CLIENT_INTERACTIVE),
        0
    );
    // What the server lacks is not asked for; no database, no CONNECT_WITH_DB.
    let old = login_capabilities(CLIENT_DEPRECATE_EOF, mariadb & !CLIENT_DEPRECATE_EOF, false);
    assert_eq!(old & (CLIENT_DEPRECATE_EOF | CLIENT_CONNECT_WITH_DB), 0);
}

#[test]
fn discovery_values() {
    assert_eq!(seconds(Some(b"28800")), Some(Duration::from_secs(28800)));
    assert_eq!(seconds(Some(b"0")), None);
    assert_eq!(seconds(Some(b"x")), None);
    assert_eq!(seconds(None), None);
    assert!(flag(Some(b"1")) && flag(Some(b"ON")) && flag(Some(b"on")));
    assert!(!flag(Some(b"0")) && !flag(Some(b"OFF")) && !flag(None));
    assert!(!discovery_sql(true).contains("super_read_only"));
    assert!(discovery_sql(false).contains("super_read_only"));
}

#[test]
fn which_login_failures_the_hold_retries() {
    let refused = |code| MyBackendError::Refused(MyNotice::new(code, "HY000", "m"));
    assert!(refused(1053).is_retryable(), "shutting down");
    assert_eq!(refused(1053).metrics_label(), "refused");
    assert!(!refused(1045).is_retryable(), "bad password");
    assert!(!refused(1049).is_retryable(), "unknown database");
    assert!(!refused(1040).is_retryable(), "too many connections");
    assert_eq!(refused(1040).metrics_label(), "auth_error");
    assert!(!MyBackendError::NoSecureChannel.is_retryable());
    assert_eq!(
        MyBackendError::NoSecureChannel.metrics_label(),
        "auth_error"
    );
    assert!(MyBackendError::Timeout {
        step: "backend authentication",
        limit: T
    }
    .is_retryable());
}

/// The server's end of a scripted MySQL 8.0 login on a TCP socket.
struct Mysql8 {
    stream: tokio::net::TcpStream,
    buf: BytesMut,
}

impl Mysql8 {
    async fn send(&mut self, seq: u8, payload: &[u8]) {
        let mut out = BytesMut::new();
        suture_protocol::mysql::encode_packet(seq, payload, &mut out);
        self.stream.write_all(&out).await.unwrap();
    }

    async fn recv(&mut self) -> (u8, Vec<u8>) {
        loop {
            if let Some(p) = suture_protocol::mysql::split_packet(&mut self.buf, 1 << 20).unwrap() {
                return (p.seq, p.payload.to_vec());
            }
            assert_ne!(self.stream.read_buf(&mut self.buf).await.unwrap(), 0);
        }
    }
}

/// What MySQL 8.0 offers (CLIENT_MYSQL set: no extended capabilities).
const MYSQL8_CAPS: u64 = 0xdfff_ffff;

#[tokio::test]
async fn mysql8_login_discovery_and_unsolicited_timeout_err() {
    use mysql_common::auth::plugins::caching_sha2_password::scramble_sha256;
    use suture_protocol::mysql::{
        encode_err, encode_handshake_v10, parse_client_handshake, ClientHandshake,
    };

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let scramble = *b"k3y-scramble-0123456";
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut s = Mysql8 {
            stream,
            buf: BytesMut::new(),
        };
        let greeting = HandshakeV10 {
            server_version: "8.0.36".into(),
            connection_id: 77,
            auth_plugin_data: scramble.to_vec(),
            capabilities: MYSQL8_CAPS,
            character_set: 255,
            status_flags: status::SERVER_STATUS_AUTOCOMMIT,
            auth_plugin_name: Some("caching_sha2_password".into()),
        };
        let mut out = BytesMut::new();
        encode_handshake_v10(&greeting, &mut out).unwrap();
        s.stream.write_all(&out).await.unwrap();

        let (seq, payload) = s.recv().await;
        assert_eq!(seq, 1);
        let ClientHandshake::Response(login) = parse_client_handshake(&payload).unwrap() else {
            panic!("an SSLRequest with tls = disable");
        };
        assert_eq!(login.username, APP_USER);
        assert_eq!(login.database.as_deref(), Some(APP_DB));
        assert_eq!(
            login.auth_plugin_name.as_deref(),
            Some("caching_sha2_password")
        );
        let expected = scramble_sha256(&scramble, b"app-secret").unwrap();
        assert_eq!(login.auth_response, expected);
        assert_eq!((login.character_set, login.max_packet_size), (45, 1 << 30));
        assert!(login
            .attributes
            .contains(&("_client_name".to_owned(), "suture".to_owned())));
        let caps = login.capabilities;
        assert_eq!(
            caps & (CLIENT_COMPRESS | CLIENT_SSL | CLIENT_QUERY_ATTRIBUTES),
            0
        );
        assert_ne!(caps & CLIENT_DEPRECATE_EOF, 0);
        assert_ne!(caps & CLIENT_SESSION_TRACK, 0);

        s.send(2, &[0x01, 0x03]).await; // fast-auth success
        s.send(3, b"\x00\x00\x00\x02\x00\x00\x00").await;

        let (seq, query) = s.recv().await;
        assert_eq!((seq, query[0]), (0, 0x03));
        assert_eq!(&query[1..], TRACKING_SQL.as_bytes());
        s.send(1, b"\x00\x00\x00\x02\x00\x00\x00").await;

        let (_, query) = s.recv().await;
        let sql = String::from_utf8(query[1..].to_vec()).unwrap();
        assert!(sql.contains("@@super_read_only"), "{sql}");
        s.send(1, &[5]).await;
        for seq in 2..7 {
            s.send(seq, b"\x03def\x00\x00\x00\x01x\x00\x0c\x3f\x00")
                .await;
        }
        s.send(7, b"\x0528800\x03600\x010\x011\x010").await;
        s.send(8, b"\xfe\x00\x00\x02\x00\x00\x00").await;

        // wait_timeout passes: MySQL ≥ 8.0.24 says so with sequence id 0, then closes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut err = BytesMut::new();
        let text = b"The client was disconnected by the server because of inactivity.";
        encode_err(4031, "HY000", text, caps, 0, &mut err).unwrap();
        s.stream.write_all(&err).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
    });

    let ctx = context(&[port], "disable", "any");
    let mut conn = connect(&ctx, &app_key(CLIENT_DEPRECATE_EOF)).await.unwrap();
    assert_eq!(
        (conn.connection_id, &conn.server_version[..]),
        (77, "8.0.36")
    );
    assert!(conn.tracking);
    assert_eq!(conn.wait_timeout, Some(Duration::from_secs(28800)));
    assert_eq!(conn.interactive_timeout, Some(Duration::from_secs(600)));
    assert!(conn.read_only, "super_read_only = 1");
    let deadline = std::time::Instant::now() + T;
    let cause = loop {
        match conn.check_idle(1 << 20) {
            Err(cause) => break cause,
            Ok(()) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Ok(()) => panic!("the unsolicited ERR went unseen"),
        }
    };
    assert_eq!(cause, "idle_timeout_notice");
    server.abort();
}
