//! Tests of the MySQL client login with raw packets over an in-memory pipe: what a driver would
//! never send (garbage, huge lengths, truncated packets, an SSLRequest, other auth plugins),
//! and the exact bytes and sequence ids Suture answers with.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mysql_common::auth::plugins::caching_sha2_password::scramble_sha256;
use mysql_common::auth::plugins::mysql_native_password::scramble_native;
use suture_protocol::mysql::{
    caching_sha2, encode_auth_data, encode_change_user, encode_handshake_response,
    encode_ssl_request, parse_auth_packet, parse_err, parse_handshake_v10, split_packet,
    AuthPacket, ChangeUser, HandshakeResponse41, HandshakeV10, SslRequest, CACHING_SHA2_PASSWORD,
    MYSQL_NATIVE_PASSWORD,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::tests::{greeting, sample_login, settings, users, MARIADB_CAPS, MARIADB_VERSION};
use super::*;

/// A scripted client on one end of a pipe.
struct RawClient {
    io: DuplexStream,
    buf: BytesMut,
}

impl RawClient {
    async fn read(&mut self) -> (u8, Bytes) {
        loop {
            if let Some(p) = split_packet(&mut self.buf, 1 << 20).unwrap() {
                return (p.seq, p.payload);
            }
            assert_ne!(
                self.io.read_buf(&mut self.buf).await.unwrap(),
                0,
                "server closed"
            );
        }
    }

    async fn greeting(&mut self) -> HandshakeV10 {
        let (seq, payload) = self.read().await;
        assert_eq!(seq, 0);
        parse_handshake_v10(&payload).unwrap()
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    async fn respond(&mut self, response: &HandshakeResponse41) {
        let mut out = BytesMut::new();
        encode_handshake_response(response, 1, &mut out).unwrap();
        self.send(&out).await;
    }
}

/// Runs `login` against a scripted client; returns the login result and the client's end.
async fn raw_login<F, Fut>(
    method: ClientAuthMethod,
    backend_caps: u64,
    script: F,
) -> Result<ClientLogin, ClientError>
where
    F: FnOnce(RawClient) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (server_end, client_end) = tokio::io::duplex(1 << 20);
    let client = tokio::spawn(script(RawClient {
        io: client_end,
        buf: BytesMut::new(),
    }));
    let users = users();
    let settings = settings(&users, method);
    let mut server_end = server_end;
    let mut buf = BytesMut::new();
    let limit = Duration::from_secs(5);
    let result = tokio::time::timeout(
        limit,
        login(
            &settings,
            &greeting(backend_caps),
            &mut server_end,
            &mut buf,
        ),
    )
    .await
    .expect("login hung");
    drop(server_end);
    client.await.unwrap();
    result
}

const CLIENT_CAPS: u64 = CLIENT_LONG_PASSWORD
    | CLIENT_PROTOCOL_41
    | CLIENT_SECURE_CONNECTION
    | CLIENT_PLUGIN_AUTH
    | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | CLIENT_CONNECT_WITH_DB
    | CLIENT_TRANSACTIONS
    | CLIENT_SSL
    | CLIENT_COMPRESS;

fn response(user: &str, plugin: &str, auth: Vec<u8>) -> HandshakeResponse41 {
    HandshakeResponse41 {
        capabilities: CLIENT_CAPS,
        max_packet_size: 1 << 24,
        character_set: 45,
        username: user.to_owned(),
        auth_response: auth,
        database: Some("shop".to_owned()),
        auth_plugin_name: Some(plugin.to_owned()),
        attributes: vec![],
    }
}

fn nonce(hs: &HandshakeV10) -> [u8; 20] {
    hs.auth_plugin_data.clone().try_into().unwrap()
}

#[tokio::test]
async fn greeting_advertises_only_what_suture_honours() {
    for backend in [MARIADB_CAPS, 0xffff_ffff, u64::MAX, 0] {
        let result = raw_login(
            ClientAuthMethod::MysqlNativePassword,
            backend,
            move |mut c| async move {
                let hs = c.greeting().await;
                assert_eq!(hs.server_version, MARIADB_VERSION);
                assert_eq!(
                    (hs.connection_id, hs.character_set, hs.status_flags),
                    (77, 45, 2)
                );
                assert_eq!(hs.auth_plugin_name.as_deref(), Some(MYSQL_NATIVE_PASSWORD));
                let caps = hs.capabilities;
                assert_eq!(caps >> 32, 0, "no MariaDB extended capabilities");
                assert!(!hs.is_mariadb(), "CLIENT_MYSQL is set");
                for never in [CLIENT_SSL, CLIENT_COMPRESS, CLIENT_QUERY_ATTRIBUTES] {
                    assert_eq!(caps & never, 0);
                }
                for gated in [
                    CLIENT_SESSION_TRACK,
                    CLIENT_DEPRECATE_EOF,
                    CLIENT_LOCAL_FILES,
                ] {
                    assert_eq!(caps & gated != 0, backend & gated != 0);
                }
                assert_eq!(caps & OWN_CAPABILITIES, OWN_CAPABILITIES);
                assert!(hs.auth_plugin_data.iter().all(|b| b.is_ascii_graphic()));
                assert_eq!(hs.auth_plugin_data.len(), 20);
            },
        )
        .await;
        assert!(matches!(result, Err(ClientError::Wire(WireError::Closed))));
    }
}

#[tokio::test]
async fn session_capabilities_are_the_intersection() {
    let login = raw_login(
        ClientAuthMethod::MysqlNativePassword,
        0,
        |mut c| async move {
            let hs = c.greeting().await;
            let auth = scramble_native(&nonce(&hs), b"s3cret").unwrap().to_vec();
            c.respond(&response("app", MYSQL_NATIVE_PASSWORD, auth))
                .await;
        },
    )
    .await
    .unwrap();
    let expected = CLIENT_CAPS & OWN_CAPABILITIES;
    assert_eq!(login.capabilities, expected);
    assert_eq!(login.character_set, 45);
}

/// The ERR a scripted login with `user` and `password` ends with, as bytes.
async fn refusal_bytes(user: &'static str, password: &'static [u8]) -> Vec<u8> {
    let result = raw_login(
        ClientAuthMethod::MysqlNativePassword,
        MARIADB_CAPS,
        move |mut c| async move {
            let hs = c.greeting().await;
            let auth = scramble_native(&nonce(&hs), password).unwrap().to_vec();
            c.respond(&response(user, MYSQL_NATIVE_PASSWORD, auth))
                .await;
        },
    )
    .await;
    let err = result.unwrap_err();
    let mut out = BytesMut::new();
    err.err_packet("app")
        .unwrap()
        .encode(err.login_seq().unwrap(), &mut out);
    out.to_vec()
}

#[tokio::test]
async fn unknown_user_and_wrong_password_get_the_same_err() {
    let wrong = refusal_bytes("app", b"nope").await;
    let unknown = refusal_bytes("bob", b"nope").await;
    assert_eq!(wrong[3], 2, "sequence id after the response");
    let mut as_app = unknown;
    let at = as_app.windows(5).position(|w| w == b"'bob'").unwrap();
    as_app[at..at + 5].copy_from_slice(b"'app'");
    assert_eq!(as_app, wrong);
    let err = parse_err(&wrong[4..], CLIENT_PROTOCOL_41).unwrap();
    assert_eq!((err.code, err.sql_state_str()), (1045, "28000"));
}

#[tokio::test]
async fn long_user_names_are_cut_in_the_err() {
    let err = raw_login(
        ClientAuthMethod::MysqlNativePassword,
        0,
        |mut c| async move {
            let hs = c.greeting().await;
            let auth = scramble_native(&nonce(&hs), b"x").unwrap().to_vec();
            c.respond(&response(&"u".repeat(5000), MYSQL_NATIVE_PASSWORD, auth))
                .await;
        },
    )
    .await
    .unwrap_err();
    let message = err.err_packet("app").unwrap().message;
    assert!(message.len() < 150, "{message}");
}

#[tokio::test]
async fn another_plugin_is_switched_to_the_offered_one() {
    for (method, offered) in [
        (ClientAuthMethod::MysqlNativePassword, MYSQL_NATIVE_PASSWORD),
        (ClientAuthMethod::CachingSha2Password, CACHING_SHA2_PASSWORD),
    ] {
        let login = raw_login(method, 0, move |mut c| async move {
            c.greeting().await;
            c.respond(&response("app", "client_ed25519", vec![9; 64]))
                .await;
            let (seq, payload) = c.read().await;
            assert_eq!(seq, 2);
            let AuthPacket::Switch(switch) = parse_auth_packet(&payload, CLIENT_CAPS).unwrap()
            else {
                panic!("expected an AuthSwitchRequest");
            };
            assert_eq!(switch.plugin_name, offered);
            assert_eq!(switch.plugin_data.len(), 21);
            let fresh: [u8; 20] = switch.scramble().try_into().unwrap();
            let auth = match offered {
                MYSQL_NATIVE_PASSWORD => scramble_native(&fresh, b"s3cret").unwrap().to_vec(),
                _ => scramble_sha256(&fresh, b"s3cret").unwrap().to_vec(),
            };
            let mut out = BytesMut::new();
            encode_auth_data(&auth, 3, &mut out).unwrap();
            c.send(&out).await;
            if offered == CACHING_SHA2_PASSWORD {
                let (seq, payload) = c.read().await;
                assert_eq!(
                    (seq, &payload[..]),
                    (4, &[1, caching_sha2::FAST_AUTH_SUCCESS][..])
                );
            }
        })
        .await
        .unwrap();
        assert_eq!(login.plugin, offered);
        let after = if offered == CACHING_SHA2_PASSWORD {
            5
        } else {
            4
        };
        assert_eq!(login.next_seq, after);
    }
}

#[tokio::test]
async fn a_full_authentication_request_is_refused_clearly() {
    let err = raw_login(
        ClientAuthMethod::CachingSha2Password,
        0,
        |mut c| async move {
            c.greeting().await;
            let public_key_request = vec![caching_sha2::REQUEST_PUBLIC_KEY];
            c.respond(&response("app", CACHING_SHA2_PASSWORD, public_key_request))
                .await;
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.login_seq(), Some(2));
    let notice = err.err_packet("app").unwrap();
    assert_eq!(notice.code, 1045);
    assert!(
        notice.message.contains("needs TLS or an RSA key exchange"),
        "{}",
        notice.message
    );
}

#[tokio::test]
async fn a_silent_client_runs_into_the_callers_timeout() {
    let (server_end, _client_end) = tokio::io::duplex(1024);
    let users = users();
    let settings = settings(&users, ClientAuthMethod::MysqlNativePassword);
    let (mut server_end, mut buf) = (server_end, BytesMut::new());
    let result = tokio::time::timeout(
        Duration::from_millis(200),
        login(&settings, &greeting(0), &mut server_end, &mut buf),
    )
    .await;
    assert!(result.is_err(), "login returned without a response");
}

/// Sends `bytes` after the greeting and returns how the login ended.
async fn after_greeting(bytes: &'static [u8]) -> ClientError {
    raw_login(
        ClientAuthMethod::MysqlNativePassword,
        0,
        move |mut c| async move {
            c.greeting().await;
            c.send(bytes).await;
        },
    )
    .await
    .unwrap_err()
}

#[tokio::test]
async fn garbage_and_broken_packets_are_clear_errors() {
    let garbage = after_greeting(b"\x05\x00\x00\x01hello").await;
    assert_eq!(garbage.err_packet("app").unwrap().code, 1043);
    assert_eq!(garbage.login_seq(), Some(2));
    // A length far over the limit is refused from the header alone.
    let huge = after_greeting(b"\xff\xff\xff\x01").await;
    assert!(huge.to_string().contains("exceeds the maximum"), "{huge}");
    // A truncated packet, then EOF: nothing to answer.
    let cut = after_greeting(b"\x40\x00\x00\x01\x00\x02").await;
    assert!(matches!(cut, ClientError::Wire(WireError::Closed)), "{cut}");
    assert!(cut.err_packet("app").is_none());
    // A packet with the wrong sequence id.
    let seq = after_greeting(b"\x01\x00\x00\x05\x00").await;
    assert!(seq.to_string().contains("sequence id 5"), "{seq}");
    // Protocol 3.20 (no CLIENT_PROTOCOL_41).
    let old = after_greeting(b"\x05\x00\x00\x01\x01\x00\x00\x00\x00").await;
    assert_eq!(old.metrics_label(), "protocol_error");
}

#[tokio::test]
async fn an_ssl_request_is_refused_with_a_clear_message() {
    let err = raw_login(
        ClientAuthMethod::MysqlNativePassword,
        0,
        |mut c| async move {
            c.greeting().await;
            let req = SslRequest {
                capabilities: CLIENT_CAPS | CLIENT_SSL,
                max_packet_size: 1 << 24,
                character_set: 45,
            };
            let mut out = BytesMut::new();
            encode_ssl_request(&req, 1, &mut out).unwrap();
            c.send(&out).await;
        },
    )
    .await
    .unwrap_err();
    let notice = err.err_packet("app").unwrap();
    assert_eq!((notice.code, notice.sql_state.as_str()), (1043, "08S01"));
    assert!(notice.message.contains("TLS"), "{}", notice.message);
}

#[tokio::test]
async fn change_user_verifies_against_the_last_scramble() {
    let users = users();
    let settings = settings(&users, ClientAuthMethod::MysqlNativePassword);
    let current = ClientLogin {
        capabilities: CLIENT_CAPS & OWN_CAPABILITIES,
        ..sample_login()
    };
    let request = |password: &[u8], plugin: &str| {
        let cu = ChangeUser {
            username: "app".into(),
            auth_response: scramble_native(current.scramble.as_bytes(), password)
                .unwrap()
                .to_vec(),
            database: "other".into(),
            character_set: Some(33),
            auth_plugin_name: Some(plugin.into()),
            attributes: vec![],
        };
        let mut out = BytesMut::new();
        encode_change_user(&cu, current.capabilities, &mut out).unwrap();
        out.split_off(4).freeze()
    };
    let (mut server_end, _client_end) = tokio::io::duplex(1 << 16);
    let mut buf = BytesMut::new();
    let ok = change_user(
        &settings,
        &current,
        &mut server_end,
        &mut buf,
        &request(b"s3cret", MYSQL_NATIVE_PASSWORD),
        1,
    )
    .await
    .unwrap();
    assert_eq!(
        (ok.user.as_str(), ok.database.as_deref()),
        ("app", Some("other"))
    );
    assert_eq!(
        (ok.character_set, ok.next_seq, ok.scramble),
        (33, 1, current.scramble)
    );
    let denied = change_user(
        &settings,
        &current,
        &mut server_end,
        &mut buf,
        &request(b"bad", MYSQL_NATIVE_PASSWORD),
        1,
    )
    .await
    .unwrap_err();
    assert_eq!(denied.login_seq(), Some(1));
    assert_eq!(denied.err_packet("app").unwrap().code, 1045);
    let garbage = change_user(&settings, &current, &mut server_end, &mut buf, b"\x11", 1)
        .await
        .unwrap_err();
    assert_eq!(garbage.err_packet("app").unwrap().code, 1043);
}
