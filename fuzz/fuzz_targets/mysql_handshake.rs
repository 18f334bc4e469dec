//! Fuzz target `mysql_handshake`: every MySQL payload parser of `suture-protocol` that reads
//! what a peer sends outside the row stream: HandshakeV10, the client's SSLRequest /
//! HandshakeResponse41, OK (with session state records), ERR, EOF, COM_STMT_PREPARE_OK, the
//! authentication packets and COM_CHANGE_USER, length-encoded values and statement ids.
//!
//! Input: bytes 0..8 are the little-endian capability flags the parsers are given (MariaDB's
//! extended ones in the high half); the rest is one payload. Every parser runs on it.
//!
//! Checked, besides "never panics": where the crate has an encoder, parse → encode → parse gives
//! the same value (for ERR the code, message and any SQLSTATE that was sent; for a greeting or a
//! client handshake whenever the encoder accepts the parsed value, which it must for a client
//! handshake); an encoded packet's header carries its payload length and the sequence id given;
//! `strip_session_track` output parses as an OK without session state; statement id rewrites
//! change only the four id bytes.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use suture_protocol::mysql::{self, AuthPacket, ClientHandshake, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((caps, payload)) = data.split_first_chunk::<8>() else {
        return;
    };
    let caps = u64::from_le_bytes(*caps);
    greeting(payload);
    client_handshake(payload);
    ok(payload, caps);
    err(payload, caps);
    others(payload, caps);
});

/// One encoded packet: checks its header and returns its payload.
fn framed(buf: &BytesMut, seq: u8) -> &[u8] {
    assert!(buf.len() >= HEADER_LEN);
    let len = usize::from(buf[0]) | usize::from(buf[1]) << 8 | usize::from(buf[2]) << 16;
    assert_eq!(len, buf.len() - HEADER_LEN, "header length");
    assert_eq!(buf[3], seq, "header sequence id");
    &buf[HEADER_LEN..]
}

fn greeting(payload: &[u8]) {
    let Ok(hs) = mysql::parse_handshake_v10(payload) else {
        return;
    };
    let _ = hs.version();
    let mut buf = BytesMut::new();
    if mysql::encode_handshake_v10(&hs, &mut buf).is_ok() {
        let again = mysql::parse_handshake_v10(framed(&buf, 0)).expect("re-encoded greeting");
        assert_eq!(again, hs, "greeting round trip");
    } else {
        assert!(buf.is_empty(), "a failed encoder wrote bytes");
    }
}

fn client_handshake(payload: &[u8]) {
    let Ok(parsed) = mysql::parse_client_handshake(payload) else {
        return;
    };
    let mut buf = BytesMut::new();
    match &parsed {
        ClientHandshake::SslRequest(req) => {
            assert_eq!(payload.len(), mysql::SSL_REQUEST_LEN);
            mysql::encode_ssl_request(req, 1, &mut buf).expect("a parsed SSLRequest encodes");
        }
        ClientHandshake::Response(r) => {
            mysql::encode_handshake_response(r, 1, &mut buf).expect("a parsed response encodes");
        }
    }
    let again = mysql::parse_client_handshake(framed(&buf, 1)).expect("re-encoded handshake");
    assert_eq!(again, parsed, "client handshake round trip");
}

fn ok(payload: &[u8], caps: u64) {
    let Ok(ok) = mysql::parse_ok(payload, caps) else {
        return;
    };
    let mut buf = BytesMut::new();
    mysql::encode_ok(&ok, caps, 2, &mut buf).expect("a parsed OK encodes");
    assert_eq!(
        mysql::parse_ok(framed(&buf, 2), caps),
        Ok(ok),
        "OK round trip"
    );
    if let Some(state) = ok.session_state {
        for change in mysql::session_changes(state) {
            let Ok(change) = change else { break };
            let mut out = Vec::new();
            mysql::put_session_change(&change, &mut out);
            let again: Vec<_> = mysql::session_changes(&out).collect();
            assert_eq!(again, vec![Ok(change)], "session record round trip");
        }
    }
    let mut buf = BytesMut::new();
    let client_caps = caps & !mysql::capability::CLIENT_SESSION_TRACK;
    if mysql::strip_session_track(payload, caps, client_caps, 3, &mut buf).is_ok() {
        let stripped = mysql::parse_ok(framed(&buf, 3), client_caps).expect("stripped OK parses");
        assert_eq!(stripped.session_state, None);
        assert_eq!(
            stripped.status & mysql::status::SERVER_SESSION_STATE_CHANGED,
            0
        );
        assert_eq!(
            (stripped.affected_rows, stripped.last_insert_id),
            (ok.affected_rows, ok.last_insert_id)
        );
    }
}

fn err(payload: &[u8], caps: u64) {
    let Ok(err) = mysql::parse_err(payload, caps) else {
        return;
    };
    let _ = err.message_lossy();
    let mut buf = BytesMut::new();
    mysql::encode_err(
        err.code,
        err.sql_state_str(),
        err.message,
        caps,
        1,
        &mut buf,
    )
    .expect("a parsed ERR encodes");
    let again = mysql::parse_err(framed(&buf, 1), caps).expect("re-encoded ERR");
    assert_eq!(
        (again.code, again.message),
        (err.code, err.message),
        "ERR round trip"
    );
    if err.sql_state.is_some() {
        assert_eq!(again.sql_state, err.sql_state);
    }
}

fn others(payload: &[u8], caps: u64) {
    if let Ok(eof) = mysql::parse_eof(payload, caps) {
        let mut buf = BytesMut::new();
        mysql::encode_eof(&eof, caps, 4, &mut buf);
        assert_eq!(mysql::parse_eof(framed(&buf, 4), caps), Ok(eof));
    }
    let _ = mysql::is_eof_packet(payload);
    let _ = mysql::terminator_status(payload, caps & 1 == 0);
    if let Ok(prep) = mysql::parse_prepare_ok(payload) {
        let mut buf = BytesMut::new();
        mysql::encode_prepare_ok(&prep, 1, &mut buf);
        assert_eq!(mysql::parse_prepare_ok(framed(&buf, 1)), Ok(prep));
    }
    match mysql::parse_auth_packet(payload, caps) {
        Ok(AuthPacket::Switch(s)) if !s.plugin_name.is_empty() => {
            let mut buf = BytesMut::new();
            mysql::encode_auth_switch_request(s.plugin_name, s.plugin_data, 2, &mut buf)
                .expect("a parsed switch encodes");
            assert_eq!(
                mysql::parse_auth_packet(framed(&buf, 2), caps),
                Ok(AuthPacket::Switch(s))
            );
            let _ = s.scramble();
        }
        Ok(AuthPacket::MoreData(d)) => {
            let mut buf = BytesMut::new();
            mysql::encode_auth_more_data(d, 3, &mut buf).expect("more data encodes");
            assert_eq!(
                mysql::parse_auth_packet(framed(&buf, 3), caps),
                Ok(AuthPacket::MoreData(d))
            );
        }
        _ => {}
    }
    if let Ok(cu) = mysql::parse_change_user(payload, caps) {
        let mut buf = BytesMut::new();
        if mysql::encode_change_user(&cu, caps, &mut buf).is_ok() {
            assert_eq!(
                mysql::parse_change_user(framed(&buf, 0), caps),
                Ok(cu),
                "COM_CHANGE_USER round trip"
            );
        }
    }
    if let Ok(id) = mysql::statement_id(payload) {
        let mut copy = payload.to_vec();
        mysql::set_statement_id(&mut copy, !id).expect("rewrite");
        assert_eq!(mysql::statement_id(&copy), Ok(!id));
        assert_eq!(copy[0], payload[0]);
        assert_eq!(copy[5..], payload[5..]);
    }
    let _ = mysql::execute_flags(payload);
    if let Ok((v, n)) = mysql::parse_lenenc_int(payload) {
        assert!(n == 1 || n == 3 || n == 4 || n == 9);
        assert!(mysql::lenenc_int_len(v) <= n);
    }
    if let Ok((s, n)) = mysql::parse_lenenc_str(payload) {
        assert_eq!(&payload[n - s.len()..n], s);
    }
    for change in mysql::session_changes(payload) {
        if change.is_err() {
            break;
        }
    }
}
