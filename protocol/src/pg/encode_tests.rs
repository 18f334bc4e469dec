//! Golden byte vectors for every encoder, and encoder → parser round trips.

use bytes::BytesMut;

use super::*;
use crate::ProtocolError;

fn bytes(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
    let mut buf = BytesMut::new();
    f(&mut buf);
    buf.to_vec()
}

fn try_bytes(f: impl FnOnce(&mut BytesMut) -> Result<(), ProtocolError>) -> Vec<u8> {
    let mut buf = BytesMut::new();
    f(&mut buf).unwrap();
    buf.to_vec()
}

/// Splits `encoded` as one tagged message and checks nothing is left over.
fn one_message(encoded: &[u8]) -> Message {
    let mut buf = BytesMut::from(encoded);
    let m = split_message(&mut buf, 1 << 20).unwrap().unwrap();
    assert!(buf.is_empty());
    m
}

#[test]
fn golden_to_backend() {
    assert_eq!(
        try_bytes(|b| encode_startup(&[("user", "alice"), ("database", "shop")], b)),
        b"\0\0\0\x22\0\x03\0\0user\0alice\0database\0shop\0\0"
    );
    assert_eq!(bytes(encode_ssl_request), b"\0\0\0\x08\x04\xd2\x16\x2f");
    assert_eq!(
        bytes(|b| encode_cancel_request(12345, -2, b)),
        b"\0\0\0\x10\x04\xd2\x16\x2e\0\0\x30\x39\xff\xff\xff\xfe"
    );
    assert_eq!(
        try_bytes(|b| encode_password(b"s3cret", b)),
        b"p\0\0\0\x0bs3cret\0"
    );
    assert_eq!(
        try_bytes(|b| encode_sasl_initial_response("SCRAM-SHA-256", b"n,,", b)),
        b"p\0\0\0\x19SCRAM-SHA-256\0\0\0\0\x03n,,"
    );
    assert_eq!(
        try_bytes(|b| encode_sasl_response(b"c=biws", b)),
        b"p\0\0\0\x0ac=biws"
    );
    assert_eq!(
        try_bytes(|b| encode_query("SELECT 1", b)),
        b"Q\0\0\0\x0dSELECT 1\0"
    );
    assert_eq!(bytes(encode_terminate), b"X\0\0\0\x04");
}

#[test]
fn golden_to_client() {
    assert_eq!(bytes(encode_auth_ok), b"R\0\0\0\x08\0\0\0\0");
    assert_eq!(bytes(encode_auth_cleartext), b"R\0\0\0\x08\0\0\0\x03");
    assert_eq!(
        bytes(|b| encode_auth_md5([1, 2, 3, 4], b)),
        b"R\0\0\0\x0c\0\0\0\x05\x01\x02\x03\x04"
    );
    assert_eq!(
        try_bytes(|b| encode_auth_sasl(&["SCRAM-SHA-256"], b)),
        b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0"
    );
    assert_eq!(
        try_bytes(|b| encode_auth_sasl_continue(b"r=x", b)),
        b"R\0\0\0\x0b\0\0\0\x0br=x"
    );
    assert_eq!(
        try_bytes(|b| encode_auth_sasl_final(b"v=y", b)),
        b"R\0\0\0\x0b\0\0\0\x0cv=y"
    );
    assert_eq!(
        try_bytes(|b| encode_parameter_status("TimeZone", "UTC", b)),
        b"S\0\0\0\x11TimeZone\0UTC\0"
    );
    assert_eq!(
        bytes(|b| encode_backend_key_data(12345, -1, b)),
        b"K\0\0\0\x0c\0\0\x30\x39\xff\xff\xff\xff"
    );
    assert_eq!(
        bytes(|b| encode_ready_for_query(TxStatus::Failed, b)),
        b"Z\0\0\0\x05E"
    );
    assert_eq!(
        try_bytes(|b| encode_error_response("FATAL", "57P01", "bye", Some("d"), b)),
        b"E\0\0\0\x22SFATAL\0VFATAL\0C57P01\0Mbye\0Dd\0\0"
    );
    assert_eq!(
        try_bytes(|b| encode_error_response("ERROR", "40003", "x", None, b)),
        b"E\0\0\0\x1dSERROR\0VERROR\0C40003\0Mx\0\0"
    );
    assert_eq!(
        try_bytes(|b| encode_notice_response("WARNING", "01000", "w", b)),
        b"N\0\0\0\x21SWARNING\0VWARNING\0C01000\0Mw\0\0"
    );
}

#[test]
fn round_trips() {
    let m = one_message(&try_bytes(|b| encode_password(b"pw", b)));
    assert_eq!(m.tag, tag::PASSWORD);
    assert_eq!(parse_password_message(&m.body), Ok(&b"pw"[..]));

    let m = one_message(&try_bytes(|b| {
        encode_sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc", b)
    }));
    assert_eq!(
        parse_sasl_initial_response(&m.body),
        Ok(SaslInitialResponse {
            mechanism: "SCRAM-SHA-256",
            data: Some(b"n,,n=,r=abc")
        })
    );

    let m = one_message(&try_bytes(|b| encode_query("SELECT 'é'", b)));
    assert_eq!(m.tag, tag::QUERY);
    assert_eq!(parse_query(&m.body), Ok("SELECT 'é'"));

    let m = one_message(&bytes(|b| encode_auth_md5([9, 8, 7, 6], b)));
    assert_eq!(
        parse_authentication(&m.body),
        Ok(Authentication::Md5Password { salt: [9, 8, 7, 6] })
    );
    let m = one_message(&bytes(encode_auth_ok));
    assert_eq!(parse_authentication(&m.body), Ok(Authentication::Ok));
    let m = one_message(&bytes(encode_auth_cleartext));
    assert_eq!(
        parse_authentication(&m.body),
        Ok(Authentication::CleartextPassword)
    );
    let m = one_message(&try_bytes(|b| {
        encode_auth_sasl(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"], b)
    }));
    assert_eq!(
        parse_authentication(&m.body),
        Ok(Authentication::Sasl {
            mechanisms: vec!["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
        })
    );
    let m = one_message(&try_bytes(|b| {
        encode_auth_sasl_continue(b"r=1,s=2,i=4096", b)
    }));
    assert_eq!(
        parse_authentication(&m.body),
        Ok(Authentication::SaslContinue(b"r=1,s=2,i=4096"))
    );
    let m = one_message(&try_bytes(|b| encode_auth_sasl_final(b"v=abc", b)));
    assert_eq!(
        parse_authentication(&m.body),
        Ok(Authentication::SaslFinal(b"v=abc"))
    );

    let m = one_message(&try_bytes(|b| {
        encode_parameter_status("client_encoding", "UTF8", b)
    }));
    assert_eq!(m.tag, tag::PARAMETER_STATUS);
    assert_eq!(
        parse_parameter_status(&m.body),
        Ok(("client_encoding", "UTF8"))
    );

    let m = one_message(&bytes(|b| encode_backend_key_data(-7, i32::MAX, b)));
    assert_eq!(parse_backend_key_data(&m.body), Ok((-7, i32::MAX)));

    for s in [TxStatus::Idle, TxStatus::InTransaction, TxStatus::Failed] {
        let m = one_message(&bytes(|b| encode_ready_for_query(s, b)));
        assert_eq!(parse_ready_for_query(&m.body), Ok(s));
    }

    let m = one_message(&try_bytes(|b| {
        encode_error_response("FATAL", "08006", "lost", Some("why"), b)
    }));
    assert_eq!(m.tag, tag::ERROR_RESPONSE);
    assert_eq!(
        parse_error_fields(&m.body),
        Ok(ErrorFields {
            severity: "FATAL".into(),
            code: "08006".into(),
            message: "lost".into(),
            detail: Some("why".into()),
            hint: None
        })
    );
    let m = one_message(&try_bytes(|b| {
        encode_notice_response("NOTICE", "00000", "hi", b)
    }));
    assert_eq!(m.tag, tag::NOTICE_RESPONSE);
    assert_eq!(parse_error_fields(&m.body).unwrap().message, "hi");
}

#[test]
fn startup_round_trips() {
    let mut buf = BytesMut::new();
    encode_startup(&[("user", "u"), ("application_name", "")], &mut buf).unwrap();
    encode_ssl_request(&mut buf);
    encode_cancel_request(1, 2, &mut buf);
    let Some(StartupRequest::Startup(m)) = parse_startup(&mut buf, 10_000).unwrap() else {
        panic!("expected a StartupMessage");
    };
    assert_eq!(m.protocol_version, PROTOCOL_VERSION_3_0);
    assert_eq!(m.user(), Some("u"));
    assert_eq!(m.get("application_name"), Some(""));
    assert_eq!(
        parse_startup(&mut buf, 10_000),
        Ok(Some(StartupRequest::SslRequest))
    );
    assert_eq!(
        parse_startup(&mut buf, 10_000),
        Ok(Some(StartupRequest::Cancel(CancelRequest {
            process_id: 1,
            secret_key: 2
        })))
    );
    assert!(buf.is_empty());
}

#[test]
fn unencodable_input_leaves_buf_untouched() {
    let mut buf = BytesMut::from(&b"keep"[..]);
    assert!(matches!(
        encode_query("SELECT 1\0; DROP", &mut buf),
        Err(ProtocolError::InvalidArgument(_))
    ));
    assert!(encode_password(b"a\0b", &mut buf).is_err());
    assert!(encode_startup(&[("", "x")], &mut buf).is_err());
    assert!(encode_startup(&[("user", "a\0")], &mut buf).is_err());
    assert!(encode_sasl_initial_response("M\0", b"", &mut buf).is_err());
    assert!(encode_auth_sasl(&["SCRAM", ""], &mut buf).is_err());
    assert!(encode_parameter_status("a", "b\0", &mut buf).is_err());
    assert!(encode_error_response("ERROR", "1", "m", Some("d\0"), &mut buf).is_err());
    assert!(encode_notice_response("NOTICE", "1\0", "m", &mut buf).is_err());
    assert_eq!(&buf[..], b"keep");
}

#[test]
fn command_complete_and_empty_replies() {
    let mut buf = BytesMut::new();
    encode_command_complete("ROLLBACK", &mut buf).unwrap();
    assert_eq!(&buf[..], b"C\0\0\0\x0dROLLBACK\0");
    buf.clear();
    for tag in [b'1', b'2', b'3', b'n'] {
        encode_empty_reply(tag, &mut buf).unwrap();
    }
    assert_eq!(&buf[..], b"1\0\0\0\x042\0\0\0\x043\0\0\0\x04n\0\0\0\x04");
    assert!(encode_empty_reply(b'Z', &mut buf).is_err());
    buf.clear();
    encode_no_parameters(&mut buf);
    assert_eq!(&buf[..], b"t\0\0\0\x06\0\0");
}
