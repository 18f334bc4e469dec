//! Tests of the MySQL client login with real clients (`mysql_async`, and the `mariadb`
//! command-line client when installed) against `login` on a TCP listener, the fixtures the raw
//! packet tests (`client_login_raw_tests.rs`) share, and the pure helpers.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use bytes::BytesMut;
use mysql_async::prelude::Queryable;
use suture_protocol::mysql::{
    command, encode_err, encode_ok, split_packet, OkPacket, CACHING_SHA2_PASSWORD,
    MYSQL_NATIVE_PASSWORD,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::config::Secret;

pub(super) const MARIADB_VERSION: &str = "5.5.5-10.11.6-MariaDB-0+deb12u1";
/// What a MariaDB 10.11 greeting advertises (CLIENT_MYSQL clear, extended capabilities set).
pub(super) const MARIADB_CAPS: u64 = 0xffff_f7fe | (0x1d << 32);

pub(super) fn users() -> BTreeMap<String, UserConfig> {
    [("app", "s3cret"), ("nopw", "")]
        .into_iter()
        .map(|(name, pw)| {
            let user = UserConfig {
                name: name.to_owned(),
                password: Secret::new(pw),
            };
            (name.to_owned(), user)
        })
        .collect()
}

pub(super) fn settings(
    users: &BTreeMap<String, UserConfig>,
    method: ClientAuthMethod,
) -> LoginSettings<'_> {
    LoginSettings {
        client_auth: method,
        users,
        database: None,
        max_message_size: 64 << 20,
        peer: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    }
}

pub(super) fn greeting(backend_caps: u64) -> Greeting {
    Greeting {
        server_version: MARIADB_VERSION.to_owned(),
        connection_id: 77,
        status: 0x0002,
        character_set: 45,
        capabilities: backend_caps,
    }
}

/// A logged-in client of `nopw`, for tests that start after the login.
pub(super) fn sample_login() -> ClientLogin {
    ClientLogin {
        user: "nopw".into(),
        database: None,
        capabilities: OWN_CAPABILITIES | CLIENT_TRANSACTIONS,
        character_set: 45,
        max_packet: 1 << 24,
        attributes: vec![],
        plugin: MYSQL_NATIVE_PASSWORD,
        scramble: Scramble::fresh(),
        next_seq: 2,
    }
}

// ---------------------------------------------------------------------------------------------
// Real clients over TCP.

/// The two methods that verify a password.
const PLUGIN_METHODS: [ClientAuthMethod; 2] = [
    ClientAuthMethod::MysqlNativePassword,
    ClientAuthMethod::CachingSha2Password,
];

/// What the fake session did with one connection.
#[derive(Debug)]
enum Served {
    LoggedIn(ClientLogin),
    Refused(ClientError),
}

/// Accepts one connection and runs the login, then (logged in) sends the OK and answers
/// COM_PING with OK and COM_QUERY with ERR 1047 until COM_QUIT or EOF; refused, sends the ERR.
async fn serve_one(listener: TcpListener, method: ClientAuthMethod, backend_caps: u64) -> Served {
    let (mut stream, peer) = listener.accept().await.unwrap();
    let users = users();
    let settings = LoginSettings {
        peer: Some(peer.ip()),
        ..settings(&users, method)
    };
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    match login(&settings, &greeting(backend_caps), &mut stream, &mut buf).await {
        Ok(login) => {
            encode_login_ok(&login, 0x0002, &mut out);
            stream.write_all(&out).await.unwrap();
            answer_commands(&mut stream, &mut buf, login.capabilities).await;
            Served::LoggedIn(login)
        }
        Err(err) => {
            if let Some(notice) = err.err_packet("app") {
                notice.encode(err.login_seq().unwrap_or(2), &mut out);
                let _ = stream.write_all(&out).await;
            }
            Served::Refused(err)
        }
    }
}

async fn answer_commands(stream: &mut TcpStream, buf: &mut BytesMut, caps: u64) {
    loop {
        let packet = match split_packet(buf, 1 << 20).unwrap() {
            Some(p) => p,
            None => match wire::fill(stream, buf).await {
                Ok(_) => continue,
                Err(_) => return,
            },
        };
        let mut out = BytesMut::new();
        match packet.payload.first() {
            Some(&command::COM_PING) => {
                encode_ok(&OkPacket::default(), caps, 1, &mut out).unwrap();
            }
            Some(&command::COM_QUERY) => {
                let message = b"suture test: got past authentication";
                encode_err(1047, "08S01", message, caps, 1, &mut out).unwrap();
            }
            _ => return,
        }
        stream.write_all(&out).await.unwrap();
    }
}

async fn listener() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

fn opts(port: u16, user: &str, pass: &str) -> mysql_async::Opts {
    mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some(user))
        .pass(Some(pass))
        .db_name(Some("shop"))
        .prefer_socket(false)
        .max_allowed_packet(Some(16 << 20))
        .wait_timeout(Some(28_800))
        .into()
}

async fn connect_with(
    method: ClientAuthMethod,
    user: &str,
    pass: &str,
) -> (Result<(), mysql_async::Error>, Served) {
    let (listener, port) = listener().await;
    let server = tokio::spawn(serve_one(listener, method, MARIADB_CAPS));
    let client = async {
        let mut conn = mysql_async::Conn::new(opts(port, user, pass)).await?;
        conn.ping().await?;
        conn.disconnect().await
    };
    let client = tokio::time::timeout(Duration::from_secs(10), client)
        .await
        .expect("client timed out");
    (client, server.await.unwrap())
}

fn logged_in(served: Served) -> ClientLogin {
    match served {
        Served::LoggedIn(login) => login,
        Served::Refused(err) => panic!("refused: {err}"),
    }
}

#[tokio::test]
async fn mysql_async_logs_in_with_native_password() {
    let (client, served) =
        connect_with(ClientAuthMethod::MysqlNativePassword, "app", "s3cret").await;
    client.unwrap();
    let login = logged_in(served);
    assert_eq!(
        (login.user.as_str(), login.database.as_deref()),
        ("app", Some("shop"))
    );
    assert_eq!((login.plugin, login.next_seq), (MYSQL_NATIVE_PASSWORD, 2));
    assert_eq!(login.max_packet, 16 << 20);
    assert_eq!(login.capabilities & (CLIENT_SSL | CLIENT_COMPRESS), 0);
    assert_ne!(login.capabilities & CLIENT_DEPRECATE_EOF, 0);
    assert!(login.attributes.len() <= MAX_ATTRIBUTES);
}

#[tokio::test]
async fn mysql_async_logs_in_with_caching_sha2_fast_auth() {
    let (client, served) =
        connect_with(ClientAuthMethod::CachingSha2Password, "app", "s3cret").await;
    client.unwrap();
    let login = logged_in(served);
    // Greeting 0, response 1, AuthMoreData 2, OK 3.
    assert_eq!((login.plugin, login.next_seq), (CACHING_SHA2_PASSWORD, 3));
}

#[tokio::test]
async fn mysql_async_with_an_empty_password() {
    for method in PLUGIN_METHODS {
        let (client, served) = connect_with(method, "nopw", "").await;
        client.unwrap();
        // No AuthMoreData for an empty password: the OK follows the response.
        assert_eq!(logged_in(served).next_seq, 2, "{method:?}");
    }
}

fn server_error(client: Result<(), mysql_async::Error>) -> mysql_async::ServerError {
    match client {
        Err(mysql_async::Error::Server(err)) => err,
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[tokio::test]
async fn mysql_async_wrong_password_is_access_denied() {
    for method in PLUGIN_METHODS {
        let (client, served) = connect_with(method, "app", "wrong").await;
        let err = server_error(client);
        assert_eq!((err.code, err.state.as_str()), (1045, "28000"));
        assert_eq!(
            err.message,
            "Access denied for user 'app'@'localhost' (using password: YES)"
        );
        let Served::Refused(refused) = served else {
            panic!("logged in with a wrong password")
        };
        assert_eq!(refused.metrics_label(), "auth_failed");
        assert!(refused.is_auth_failure());
    }
    let (client, _) = connect_with(ClientAuthMethod::MysqlNativePassword, "app", "").await;
    assert!(server_error(client)
        .message
        .ends_with("(using password: NO)"));
}

#[tokio::test]
async fn trust_takes_any_password_of_a_known_user_only() {
    let (client, _) = connect_with(ClientAuthMethod::Trust, "app", "anything").await;
    client.unwrap();
    let (client, _) = connect_with(ClientAuthMethod::Trust, "stranger", "anything").await;
    assert_eq!(server_error(client).code, 1045);
}

#[tokio::test]
async fn refusal_at_the_cap_is_what_a_full_server_sends() {
    let (listener, port) = listener().await;
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        refuse_at_cap(&mut stream, Duration::from_secs(5)).await;
    });
    let client = mysql_async::Conn::new(opts(port, "app", "s3cret")).await;
    server.await.unwrap();
    let err = match client {
        Err(mysql_async::Error::Server(err)) => err,
        other => panic!("expected a server error, got {:?}", other.map(|_| ())),
    };
    assert_eq!(
        (err.code, err.message.as_str()),
        (1040, "Too many connections")
    );
}

/// A real C client (libmariadb) accepts the greeting and authenticates: it gets as far as its
/// query, which the test server answers with an ERR.
#[tokio::test]
async fn mariadb_cli_gets_past_authentication() {
    let cli = std::path::Path::new("/usr/bin/mariadb");
    if !cli.exists() {
        eprintln!("skipped: {} is not installed", cli.display());
        return;
    }
    for (method, password, marker) in [
        ("native", "s3cret", "got past authentication"),
        (
            "native",
            "wrong",
            "Access denied for user 'app'@'localhost' (using password: YES)",
        ),
        ("sha2", "s3cret", "got past authentication"),
    ] {
        let method = match method {
            "native" => ClientAuthMethod::MysqlNativePassword,
            _ => ClientAuthMethod::CachingSha2Password,
        };
        let (listener, port) = listener().await;
        let server = tokio::spawn(serve_one(listener, method, MARIADB_CAPS));
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(cli)
                .args(["--no-defaults", "-h127.0.0.1", "--skip-ssl"])
                .arg(format!("-P{port}"))
                .args(["-uapp", &format!("-p{password}"), "-e", "select 1"])
                .output()
        })
        .await
        .unwrap()
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        assert!(stderr.contains(marker), "{method:?}: {stderr}");
    }
}

// ---------------------------------------------------------------------------------------------
// Pure helpers.

#[test]
fn the_pool_database_overrides_the_clients() {
    let users = users();
    let mut s = settings(&users, ClientAuthMethod::Trust);
    let pick = |s: &LoginSettings<'_>, asked: Option<&str>| {
        pick_database(s, asked.map(str::to_owned), 2).map_err(|e| e.to_string())
    };
    assert_eq!(pick(&s, Some("shop")), Ok(Some("shop".into())));
    assert_eq!(pick(&s, Some("")), Ok(None));
    let long = "d".repeat(MAX_DATABASE_CHARS + 1);
    let err = pick_database(&s, Some(long.clone()), 3).unwrap_err();
    assert_eq!(err.login_seq(), Some(3));
    let notice = err.err_packet("app").unwrap();
    assert_eq!((notice.code, notice.sql_state.as_str()), (1102, "42000"));
    assert!(notice.message.len() < 100, "{}", notice.message);
    let fits = "é".repeat(MAX_DATABASE_CHARS);
    assert_eq!(pick(&s, Some(&fits)), Ok(Some(fits.clone())));
    s.database = Some("real");
    assert_eq!(pick(&s, None), Ok(Some("real".into())));
    assert_eq!(pick(&s, Some(&long)), Ok(Some("real".into())));
}

#[test]
fn hosts_are_shown_as_the_server_shows_them() {
    let users = users();
    let mut s = settings(&users, ClientAuthMethod::Trust);
    assert_eq!(s.client_host(), "localhost");
    s.peer = Some(IpAddr::V6(Ipv6Addr::LOCALHOST));
    assert_eq!(s.client_host(), "localhost");
    s.peer = Some("::ffff:10.1.2.3".parse().unwrap());
    assert_eq!(s.client_host(), "10.1.2.3");
    s.peer = Some("fd00::1".parse().unwrap());
    assert_eq!(s.client_host(), "fd00::1");
    s.peer = None;
    assert_eq!(s.client_host(), "localhost");
}

#[test]
fn attributes_are_bounded() {
    let many: Vec<_> = (0..100)
        .map(|i| (format!("k{i}"), "v".repeat(1000)))
        .collect();
    let kept = bounded_attributes(many);
    assert_eq!(kept.len(), MAX_ATTRIBUTES);
    assert!(kept.iter().all(|(_, v)| v.len() == peer_text::NAME_MAX));
}

#[test]
fn the_login_ok_drops_the_session_state_flag() {
    let login = ClientLogin {
        capabilities: OWN_CAPABILITIES | CLIENT_SESSION_TRACK,
        next_seq: 3,
        ..sample_login()
    };
    let mut out = BytesMut::new();
    encode_login_ok(&login, 0x4002, &mut out);
    assert_eq!(&out[..], b"\x07\x00\x00\x03\x00\x00\x00\x02\x00\x00\x00");
}
