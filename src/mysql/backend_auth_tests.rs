//! caching_sha2_password and plugin switches against a scripted server on an in-memory duplex
//! stream, with the bytes a MySQL 8 server sends (MySQL's connection-phase documentation):
//! fast-auth success, full authentication over TLS (cleartext) and without it (the RSA public
//! key request, and the password encrypted with RSA-OAEP, decrypted here with `openssl`),
//! AuthSwitchRequest, an ERR, and a public key that cannot be used.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use bytes::BytesMut;
use suture_protocol::mysql::{capability::*, encode_err, encode_packet, split_packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

const PASSWORD: &str = "s3cret-pw";
const SCRAMBLE: &[u8; 20] = b"abcdefghij0123456789";
const CAPS: u64 = CLIENT_PROTOCOL_41
    | CLIENT_SECURE_CONNECTION
    | CLIENT_PLUGIN_AUTH
    | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA;
const MAX: usize = 1 << 20;

/// The server's end of the conversation.
struct Script {
    stream: DuplexStream,
    buf: BytesMut,
}

impl Script {
    async fn send(&mut self, seq: u8, payload: &[u8]) {
        let mut out = BytesMut::new();
        encode_packet(seq, payload, &mut out);
        self.stream.write_all(&out).await.unwrap();
    }

    async fn more_data(&mut self, seq: u8, data: &[u8]) {
        let mut payload = vec![AUTH_MORE_DATA];
        payload.extend_from_slice(data);
        self.send(seq, &payload).await;
    }

    async fn ok(&mut self, seq: u8) {
        self.send(seq, b"\x00\x00\x00\x02\x00\x00\x00").await;
    }

    /// The client's next packet: (sequence id, payload).
    async fn recv(&mut self) -> (u8, Vec<u8>) {
        loop {
            if let Some(packet) = split_packet(&mut self.buf, MAX).unwrap() {
                return (packet.seq, packet.payload.to_vec());
            }
            let n = self.stream.read_buf(&mut self.buf).await.unwrap();
            assert_ne!(n, 0, "the client closed");
        }
    }
}

const AUTH_MORE_DATA: u8 = 0x01;

fn start(plugin: ClientPlugin, secure: bool) -> AuthStart {
    AuthStart {
        plugin,
        scramble: SCRAMBLE.to_vec(),
        seq: 2,
        capabilities: CAPS,
        secure,
    }
}

/// Runs the client side against `server`, which gets the server's end.
async fn run<F, Fut>(start: AuthStart, server: F) -> Result<AuthOk, MyBackendError>
where
    F: FnOnce(Script) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (client, server_end) = tokio::io::duplex(64 * 1024);
    let script = tokio::spawn(server(Script {
        stream: server_end,
        buf: BytesMut::new(),
    }));
    let (mut reader, mut writer) = tokio::io::split(client);
    let mut rbuf = BytesMut::new();
    let result = authenticate(&mut reader, &mut writer, &mut rbuf, MAX, start, PASSWORD).await;
    drop((reader, writer));
    script.await.unwrap();
    result
}

#[tokio::test]
async fn fast_auth_success() {
    let result = run(
        start(ClientPlugin::CachingSha2, false),
        |mut s| async move {
            s.more_data(2, &[caching_sha2::FAST_AUTH_SUCCESS]).await;
            s.ok(3).await;
        },
    )
    .await;
    assert_eq!(result.unwrap(), AuthOk { status: 2 });
}

#[tokio::test]
async fn full_authentication_over_tls_sends_the_password() {
    let result = run(start(ClientPlugin::CachingSha2, true), |mut s| async move {
        s.more_data(2, &[caching_sha2::PERFORM_FULL_AUTHENTICATION])
            .await;
        let (seq, payload) = s.recv().await;
        assert_eq!(seq, 3);
        assert_eq!(payload, b"s3cret-pw\0");
        s.ok(4).await;
    })
    .await;
    result.unwrap();
}

/// A fresh RSA key pair from `openssl`: (directory holding `key.pem`, public key PEM).
fn rsa_key() -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let status = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let public = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(public.status.success(), "{public:?}");
    (dir, public.stdout)
}

/// Decrypts with the private key in `dir`, RSA-OAEP (SHA-1), as the MySQL server does.
fn rsa_decrypt(dir: &std::path::Path, data: &[u8]) -> Vec<u8> {
    let input = dir.join("encrypted.bin");
    std::fs::write(&input, data).unwrap();
    let out = Command::new("openssl")
        .args([
            "pkeyutl",
            "-decrypt",
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-inkey",
        ])
        .arg(dir.join("key.pem"))
        .arg("-in")
        .arg(&input)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

#[tokio::test]
async fn full_authentication_without_tls_uses_the_rsa_key() {
    let (dir, public_pem) = rsa_key();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let result = run(
        start(ClientPlugin::CachingSha2, false),
        |mut s| async move {
            s.more_data(2, &[caching_sha2::PERFORM_FULL_AUTHENTICATION])
                .await;
            let (seq, payload) = s.recv().await;
            assert_eq!(
                (seq, &payload[..]),
                (3, &[caching_sha2::REQUEST_PUBLIC_KEY][..])
            );
            s.more_data(4, &public_pem).await;
            let (seq, encrypted) = s.recv().await;
            assert_eq!(seq, 5);
            tx.send(encrypted).unwrap();
            s.ok(6).await;
        },
    )
    .await;
    result.unwrap();
    let encrypted = rx.await.unwrap();
    assert_eq!(encrypted.len(), 256, "one RSA-2048 block");
    let plain = rsa_decrypt(dir.path(), &encrypted);
    assert_eq!(plain, xor_with_scramble(PASSWORD, SCRAMBLE));
    // XOR again with the scramble gives the NUL-terminated password back.
    let back: Vec<u8> = plain
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ SCRAMBLE[i % SCRAMBLE.len()])
        .collect();
    assert_eq!(back, b"s3cret-pw\0");
}

#[tokio::test]
async fn an_unusable_public_key_is_no_secure_channel() {
    let result = run(
        start(ClientPlugin::CachingSha2, false),
        |mut s| async move {
            s.more_data(2, &[caching_sha2::PERFORM_FULL_AUTHENTICATION])
                .await;
            let _ = s.recv().await;
            s.more_data(4, b"not a PEM key").await;
        },
    )
    .await;
    let err = result.unwrap_err();
    assert!(matches!(err, MyBackendError::NoSecureChannel), "{err:?}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn switch_to_caching_sha2_answers_the_new_scramble() {
    let fresh = *b"ZYXWVUTSRQPONMLKJIHG";
    let result = run(
        start(ClientPlugin::Native, false),
        move |mut s| async move {
            let mut switch = vec![0xfe];
            switch.extend_from_slice(b"caching_sha2_password\0");
            switch.extend_from_slice(&fresh);
            switch.push(0);
            s.send(2, &switch).await;
            let (seq, response) = s.recv().await;
            assert_eq!(seq, 3);
            let expected = scramble_sha256(&fresh, PASSWORD.as_bytes()).unwrap();
            assert_eq!(response, expected);
            s.more_data(4, &[caching_sha2::FAST_AUTH_SUCCESS]).await;
            s.ok(5).await;
        },
    )
    .await;
    result.unwrap();
}

#[tokio::test]
async fn switch_to_native_and_an_err() {
    let fresh = *b"01234567890123456789";
    let result = run(
        start(ClientPlugin::CachingSha2, false),
        move |mut s| async move {
            let mut switch = vec![0xfe];
            switch.extend_from_slice(b"mysql_native_password\0");
            switch.extend_from_slice(&fresh);
            switch.push(0);
            s.send(2, &switch).await;
            let (seq, response) = s.recv().await;
            assert_eq!(seq, 3);
            assert_eq!(
                response,
                scramble_native(&fresh, PASSWORD.as_bytes()).unwrap()
            );
            let mut err = BytesMut::new();
            encode_err(1045, "28000", b"Access denied", CAPS, 4, &mut err).unwrap();
            s.stream.write_all(&err).await.unwrap();
        },
    )
    .await;
    match result.unwrap_err() {
        MyBackendError::Refused(notice) => {
            assert_eq!((notice.code, notice.sql_state.as_str()), (1045, "28000"));
            assert_eq!(notice.message, "Access denied");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn cleartext_only_over_tls_and_unknown_plugins() {
    let switch_to = |name: &'static [u8]| {
        move |mut s: Script| async move {
            let mut switch = vec![0xfe];
            switch.extend_from_slice(name);
            switch.push(0);
            s.send(2, &switch).await;
        }
    };
    let err = run(
        start(ClientPlugin::Native, false),
        switch_to(b"mysql_clear_password"),
    )
    .await
    .unwrap_err();
    assert!(matches!(&err, MyBackendError::UnsupportedAuth(p) if p == "mysql_clear_password"));
    let err = run(
        start(ClientPlugin::Native, false),
        switch_to(b"client_ed25519"),
    )
    .await
    .unwrap_err();
    assert!(matches!(&err, MyBackendError::UnsupportedAuth(p) if p == "client_ed25519"));

    let result = run(start(ClientPlugin::Native, true), |mut s| async move {
        s.send(2, b"\xfemysql_clear_password\0").await;
        let (seq, response) = s.recv().await;
        assert_eq!((seq, &response[..]), (3, &b"s3cret-pw\0"[..]));
        s.ok(4).await;
    })
    .await;
    result.unwrap();
}

#[tokio::test]
async fn out_of_sequence_is_a_wire_error() {
    let result = run(start(ClientPlugin::Native, false), |mut s| async move {
        s.ok(7).await;
    })
    .await;
    assert!(matches!(result, Err(MyBackendError::Wire(_))), "{result:?}");
}

#[test]
fn first_plugin_follows_the_greeting() {
    assert_eq!(
        ClientPlugin::for_greeting(Some("caching_sha2_password"), false),
        ClientPlugin::CachingSha2
    );
    assert_eq!(
        ClientPlugin::for_greeting(Some("mysql_native_password"), false),
        ClientPlugin::Native
    );
    assert_eq!(
        ClientPlugin::for_greeting(Some("client_ed25519"), false),
        ClientPlugin::Native
    );
    assert_eq!(ClientPlugin::for_greeting(None, true), ClientPlugin::Native);
    assert_eq!(
        ClientPlugin::for_greeting(Some("mysql_clear_password"), false),
        ClientPlugin::Native
    );
    assert_eq!(
        ClientPlugin::for_greeting(Some("mysql_clear_password"), true),
        ClientPlugin::Clear
    );
    // An empty password gives an empty response for the scrambling plugins.
    assert!(ClientPlugin::Native
        .response(SCRAMBLE, "")
        .unwrap()
        .is_empty());
    assert!(ClientPlugin::CachingSha2
        .response(SCRAMBLE, "")
        .unwrap()
        .is_empty());
    assert_eq!(
        ClientPlugin::CachingSha2
            .response(SCRAMBLE, "x")
            .unwrap()
            .len(),
        32
    );
    assert_eq!(
        ClientPlugin::Native.response(SCRAMBLE, "x").unwrap().len(),
        20
    );
    assert!(ClientPlugin::CachingSha2.response(b"short", "x").is_err());
}
