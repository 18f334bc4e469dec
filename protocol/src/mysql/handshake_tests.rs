//! Golden byte vectors for the connection phase and the authentication exchange (examples from
//! the MySQL protocol documentation where it gives them, else built from the documented
//! MySQL and MariaDB layouts), and parse → encode → parse round trips.

use bytes::BytesMut;

use super::capability::*;
use super::*;

fn payload(wire: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::from(wire);
    let p = split_packet(&mut buf, 1 << 20).unwrap().unwrap();
    assert!(buf.is_empty());
    p.payload.to_vec()
}

fn reencode_greeting(hs: &HandshakeV10) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_handshake_v10(hs, &mut buf).unwrap();
    buf.to_vec()
}

/// MySQL docs: the HandshakeV10 of a 5.5.2-m2 server (no CLIENT_PLUGIN_AUTH).
const GREETING_55: &[u8] = b"\x36\x00\x00\x00\x0a5.5.2-m2\x00\x0b\x00\x00\x00\
\x64\x76\x48\x40\x49\x2d\x43\x4a\x00\xff\xf7\x08\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\
\x00\x00\x00\x00\x00\x2a\x34\x64\x7c\x63\x5a\x77\x6b\x34\x5e\x5d\x3a\x00";

#[test]
fn golden_greeting_mysql_55() {
    let hs = parse_handshake_v10(&payload(GREETING_55)).unwrap();
    assert_eq!(hs.server_version, "5.5.2-m2");
    assert_eq!(hs.version(), "5.5.2-m2");
    assert_eq!(hs.connection_id, 11);
    assert_eq!(hs.auth_plugin_data, b"dvH@I-CJ*4d|cZwk4^]:");
    assert_eq!(hs.capabilities, 0xf7ff);
    assert!(!hs.is_mariadb());
    assert_eq!((hs.character_set, hs.status_flags), (8, 2));
    assert_eq!(hs.auth_plugin_name, None);
    assert_eq!(reencode_greeting(&hs), GREETING_55);
}

/// A MySQL 8 greeting: caching_sha2_password, CLIENT_PLUGIN_AUTH, 21 bytes of plugin data.
fn greeting_mysql8() -> Vec<u8> {
    let mut p =
        b"\x0a8.0.36\x00\x2a\x00\x00\x00abcdefgh\x00\xff\xff\xff\x02\x00\xff\xdf\x15".to_vec();
    p.extend_from_slice(&[0; 10]);
    p.extend_from_slice(b"ijklmnopqrst\x00caching_sha2_password\x00");
    p
}

#[test]
fn golden_greeting_mysql8() {
    let p = greeting_mysql8();
    let hs = parse_handshake_v10(&p).unwrap();
    assert_eq!(hs.server_version, "8.0.36");
    assert_eq!(hs.connection_id, 42);
    assert_eq!(hs.auth_plugin_data, b"abcdefghijklmnopqrst");
    assert_eq!(hs.capabilities, 0xdfff_ffff);
    assert_eq!(hs.character_set, 0xff);
    assert_eq!(hs.auth_plugin_name.as_deref(), Some(CACHING_SHA2_PASSWORD));
    assert_eq!(&reencode_greeting(&hs)[4..], &p[..]);
    // Old 5.5 servers left out the NUL after the plugin name.
    let mut no_nul = p.clone();
    no_nul.pop();
    assert_eq!(parse_handshake_v10(&no_nul).unwrap(), hs);
    for cut in 0..p.len() - "caching_sha2_password\0".len() {
        assert!(parse_handshake_v10(&p[..cut]).is_err(), "cut at {cut}");
    }
}

/// A MariaDB 10.11 greeting: `5.5.5-` prefix, CLIENT_MYSQL clear and extended capabilities
/// (PROGRESS, STMT_BULK_OPERATIONS, EXTENDED_METADATA, CACHE_METADATA) in the reserved bytes.
fn greeting_mariadb() -> Vec<u8> {
    let mut p = b"\x0a5.5.5-10.11.6-MariaDB-0+deb12u1\x00\x07\x00\x00\x00".to_vec();
    p.extend_from_slice(b"Wf)?n'Z3\x00\xfe\xf7\x2d\x02\x00\xff\x81\x15");
    p.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0x1d, 0, 0, 0]);
    p.extend_from_slice(b"3O!u_[-@?Y(c\x00mysql_native_password\x00");
    p
}

#[test]
fn golden_greeting_mariadb_round_trips_prefix_and_extended_capabilities() {
    let p = greeting_mariadb();
    let hs = parse_handshake_v10(&p).unwrap();
    assert!(hs.is_mariadb());
    assert_eq!(hs.server_version, "5.5.5-10.11.6-MariaDB-0+deb12u1");
    assert_eq!(hs.version(), "10.11.6-MariaDB-0+deb12u1");
    assert_eq!(hs.capabilities & CLIENT_MYSQL, 0);
    assert_eq!(
        hs.capabilities >> 32,
        (MARIADB_CLIENT_PROGRESS
            | MARIADB_CLIENT_STMT_BULK_OPERATIONS
            | MARIADB_CLIENT_EXTENDED_METADATA
            | MARIADB_CLIENT_CACHE_METADATA)
            >> 32
    );
    assert_eq!(hs.auth_plugin_data, b"Wf)?n'Z33O!u_[-@?Y(c");
    assert_eq!(hs.character_set, 0x2d);
    assert_eq!(&reencode_greeting(&hs)[4..], &p[..]);
    // A MySQL-flavoured greeting ignores whatever is in the reserved bytes.
    let mut mysql = p.clone();
    let lower_caps = 1 + hs.server_version.len() + 1 + 4 + 8 + 1;
    mysql[lower_caps] |= 1;
    let hs = parse_handshake_v10(&mysql).unwrap();
    assert!(!hs.is_mariadb());
    assert_eq!(hs.capabilities >> 32, 0);
}

#[test]
fn bad_greetings() {
    let mut p = greeting_mysql8();
    p[0] = 9;
    assert!(parse_handshake_v10(&p).is_err());
    assert!(parse_handshake_v10(b"").is_err());
    assert!(parse_handshake_v10(b"\x0a8.0").is_err());
    assert!(parse_handshake_v10(b"\xff\x10\x04Too many connections").is_err());
    let hs = parse_handshake_v10(&greeting_mysql8()).unwrap();
    let mut buf = BytesMut::new();
    for bad in [
        HandshakeV10 {
            auth_plugin_data: vec![1; 7],
            ..hs.clone()
        },
        HandshakeV10 {
            auth_plugin_data: vec![1; 255],
            ..hs.clone()
        },
        HandshakeV10 {
            server_version: "8\0".into(),
            ..hs.clone()
        },
        HandshakeV10 {
            auth_plugin_name: None,
            ..hs.clone()
        },
        HandshakeV10 {
            capabilities: hs.capabilities | MARIADB_CLIENT_PROGRESS,
            ..hs.clone()
        },
    ] {
        assert!(encode_handshake_v10(&bad, &mut buf).is_err(), "{bad:?}");
    }
    assert!(buf.is_empty());
}

/// MySQL docs: a HandshakeResponse41 of user `pam`, database `test`, mysql_native_password.
const RESPONSE_PAM: &[u8] = b"\x54\x00\x00\x01\x8d\xa6\x0f\x00\x00\x00\x00\x01\x08\x00\x00\x00\
\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
\x00\x00\x00\x00pam\x00\x14\xab\x09\xee\xf6\xbc\xb1\x32\
\x3e\x61\x14\x38\x65\xc0\x99\x1d\x95\x7d\x75\xd4\x47test\x00mysql_native_password\x00";

#[test]
fn golden_handshake_response() {
    let ClientHandshake::Response(r) = parse_client_handshake(&payload(RESPONSE_PAM)).unwrap()
    else {
        panic!("not a response");
    };
    assert_eq!(r.capabilities, 0x000f_a68d);
    assert_eq!(r.max_packet_size, 16 << 20);
    assert_eq!(r.character_set, 8);
    assert_eq!(r.username, "pam");
    assert_eq!(r.auth_response.len(), 20);
    assert_eq!(r.auth_response[0], 0xab);
    assert_eq!(r.database.as_deref(), Some("test"));
    assert_eq!(r.auth_plugin_name.as_deref(), Some(MYSQL_NATIVE_PASSWORD));
    assert!(r.attributes.is_empty());
    let mut buf = BytesMut::new();
    encode_handshake_response(&r, 1, &mut buf).unwrap();
    assert_eq!(&buf[..], RESPONSE_PAM);
}

#[test]
fn responses_with_lenenc_auth_attributes_and_mariadb_capabilities() {
    let caps = CLIENT_PROTOCOL_41
        | CLIENT_SECURE_CONNECTION
        | CLIENT_PLUGIN_AUTH
        | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
        | CLIENT_CONNECT_ATTRS
        | CLIENT_CONNECT_WITH_DB
        | MARIADB_CLIENT_PROGRESS
        | MARIADB_CLIENT_CACHE_METADATA;
    let r = HandshakeResponse41 {
        capabilities: caps,
        max_packet_size: 1 << 30,
        character_set: 45,
        username: "app".into(),
        auth_response: vec![7; 300],
        database: None,
        auth_plugin_name: Some(CACHING_SHA2_PASSWORD.into()),
        attributes: vec![
            ("_client_name".into(), "libmariadb".into()),
            ("program_name".into(), "mariadb".into()),
        ],
    };
    let mut buf = BytesMut::new();
    encode_handshake_response(&r, 1, &mut buf).unwrap();
    let p = &buf[4..];
    // Extended capabilities sit in the last 4 filler bytes; CLIENT_MYSQL is clear.
    assert_eq!(&p[28..32], &((caps >> 32) as u32).to_le_bytes());
    // The 300-byte auth response is length-encoded: 0xFC 0x2C 0x01.
    assert_eq!(&p[36..39], b"\xfc\x2c\x01");
    let ClientHandshake::Response(back) = parse_client_handshake(p).unwrap() else {
        panic!("not a response");
    };
    // The missing database had to be written as an empty string before the plugin name.
    assert_eq!(back.database.as_deref(), Some(""));
    assert_eq!(
        HandshakeResponse41 {
            database: None,
            ..back
        },
        r
    );
    // Without the lenenc flag a 300-byte auth response cannot be written.
    let short = HandshakeResponse41 {
        capabilities: caps & !CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
        ..r.clone()
    };
    assert!(encode_handshake_response(&short, 1, &mut BytesMut::new()).is_err());
    // Clients may set CLIENT_CONNECT_WITH_DB and stop after the auth response.
    let p = b"\x08\x82\x00\x00\x00\x00\x00\x01\x21\
\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
root\x00\x00";
    let ClientHandshake::Response(r) = parse_client_handshake(p).unwrap() else {
        panic!("not a response");
    };
    assert_eq!(
        (r.username.as_str(), r.auth_response.len(), r.database),
        ("root", 0, None)
    );
}

#[test]
fn golden_ssl_request() {
    let req = SslRequest {
        capabilities: CLIENT_PROTOCOL_41
            | CLIENT_SSL
            | CLIENT_SECURE_CONNECTION
            | CLIENT_LONG_PASSWORD,
        max_packet_size: 16 << 20,
        character_set: 33,
    };
    let mut buf = BytesMut::new();
    encode_ssl_request(&req, 1, &mut buf).unwrap();
    let mut expected = b"\x20\x00\x00\x01\x01\x8a\x00\x00\x00\x00\x00\x01\x21".to_vec();
    expected.extend_from_slice(&[0; 23]);
    assert_eq!(&buf[..], &expected[..]);
    assert_eq!(buf.len(), 4 + SSL_REQUEST_LEN);
    assert_eq!(
        parse_client_handshake(&buf[4..]),
        Ok(ClientHandshake::SslRequest(req))
    );
    let no_ssl = SslRequest {
        capabilities: CLIENT_PROTOCOL_41,
        ..req
    };
    assert!(encode_ssl_request(&no_ssl, 1, &mut BytesMut::new()).is_err());
    // 32 bytes without CLIENT_SSL are a truncated response, not an SSLRequest.
    let mut p = buf[4..].to_vec();
    p[1] &= !0x08;
    assert!(parse_client_handshake(&p).is_err());
    // HandshakeResponse320 (no CLIENT_PROTOCOL_41) is refused.
    assert!(parse_client_handshake(b"\x85\x24\x00\x00\x00old\x00GDSCQYR_").is_err());
}

#[test]
fn golden_auth_packets() {
    const P41: u64 = CLIENT_PROTOCOL_41;
    // AuthSwitchRequest to mysql_native_password with a 20-byte scramble and its NUL.
    let switch = b"\xfemysql_native_password\x00abcdefghijklmnopqrst\x00";
    let AuthPacket::Switch(s) = parse_auth_packet(switch, P41).unwrap() else {
        panic!("not a switch");
    };
    assert_eq!(s.plugin_name, MYSQL_NATIVE_PASSWORD);
    assert_eq!(s.scramble(), b"abcdefghijklmnopqrst");
    let mut buf = BytesMut::new();
    encode_auth_switch_request(s.plugin_name, s.plugin_data, 2, &mut buf).unwrap();
    assert_eq!(&buf[4..], switch);
    assert_eq!(buf[3], 2);
    // The old one-byte switch (mysql_old_password).
    assert!(matches!(
        parse_auth_packet(b"\xfe", P41),
        Ok(AuthPacket::Switch(AuthSwitchRequest {
            plugin_name: "",
            ..
        }))
    ));
    // caching_sha2_password: fast auth success, perform full authentication, a public key.
    assert_eq!(
        parse_auth_packet(b"\x01\x03", P41),
        Ok(AuthPacket::MoreData(&[caching_sha2::FAST_AUTH_SUCCESS][..]))
    );
    assert_eq!(
        parse_auth_packet(b"\x01\x04", P41),
        Ok(AuthPacket::MoreData(
            &[caching_sha2::PERFORM_FULL_AUTHENTICATION][..]
        ))
    );
    let pem = b"-----BEGIN PUBLIC KEY-----\nMIIBIjANBg\n-----END PUBLIC KEY-----\n";
    let mut buf = BytesMut::new();
    encode_auth_more_data(pem, 4, &mut buf).unwrap();
    assert_eq!(buf[4], AUTH_MORE_DATA_HEADER);
    assert_eq!(
        parse_auth_packet(&buf[4..], P41),
        Ok(AuthPacket::MoreData(&pem[..]))
    );
    let mut buf = BytesMut::new();
    encode_auth_data(&[caching_sha2::REQUEST_PUBLIC_KEY], 3, &mut buf).unwrap();
    assert_eq!(&buf[..], b"\x01\x00\x00\x03\x02");
    assert!(matches!(
        parse_auth_packet(b"\x00\x00\x00\x02\x00\x00\x00", P41),
        Ok(AuthPacket::Ok(_))
    ));
    assert!(matches!(
        parse_auth_packet(b"\xff\x15\x04#28000Access denied", P41),
        Ok(AuthPacket::Err(ErrPacket { code: 1045, .. }))
    ));
    for bad in [&b""[..], b"\x02", b"\xfe\x00abc", b"\xfemysql"] {
        assert!(parse_auth_packet(bad, P41).is_err(), "{bad:?}");
    }
    assert!(encode_auth_switch_request("", b"", 0, &mut BytesMut::new()).is_err());
}

#[test]
fn golden_change_user() {
    let caps =
        CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH | CLIENT_CONNECT_ATTRS;
    let p = b"\x11bob\x00\x14abcdefghijklmnopqrstshop\x00\x21\x00mysql_native_password\x00\x07\x03_os\x02\x4c\x78";
    let cu = parse_change_user(p, caps).unwrap();
    assert_eq!(cu.username, "bob");
    assert_eq!(cu.auth_response, b"abcdefghijklmnopqrst");
    assert_eq!(cu.database, "shop");
    assert_eq!(cu.character_set, Some(33));
    assert_eq!(cu.auth_plugin_name.as_deref(), Some(MYSQL_NATIVE_PASSWORD));
    assert_eq!(cu.attributes, vec![("_os".to_owned(), "Lx".to_owned())]);
    let mut buf = BytesMut::new();
    encode_change_user(&cu, caps, &mut buf).unwrap();
    assert_eq!(&buf[4..], &p[..]);
    assert_eq!(buf[3], 0);
    // A short 4.0-style request ends after the database.
    let short = parse_change_user(b"\x11bob\x00\x00shop\x00", caps).unwrap();
    assert_eq!((short.character_set, short.auth_plugin_name), (None, None));
    for bad in [
        &b""[..],
        b"\x03bob\x00",
        b"\x11bob",
        b"\x11bob\x00\x05ab",
        b"\x11bob\x00\x00shop",
    ] {
        assert!(parse_change_user(bad, caps).is_err(), "{bad:?}");
    }
}
