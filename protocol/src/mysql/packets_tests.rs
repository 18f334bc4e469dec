//! Golden byte vectors for the generic packets (examples from the MySQL and MariaDB protocol
//! documentation where it gives them, else built from the documented layouts), and
//! encoder → parser round trips.

use bytes::BytesMut;

use super::capability::*;
use super::status::*;
use super::*;
use crate::ProtocolError;

const P41: u64 = CLIENT_PROTOCOL_41 | CLIENT_TRANSACTIONS;
const TRACK: u64 = P41 | CLIENT_SESSION_TRACK;

/// Splits `wire` as one packet: (seq, payload).
fn one(wire: &[u8]) -> (u8, Vec<u8>) {
    let mut buf = BytesMut::from(wire);
    let p = split_packet(&mut buf, 1 << 20).unwrap().unwrap();
    assert!(buf.is_empty());
    (p.seq, p.payload.to_vec())
}

#[test]
fn golden_ok_packet() {
    // MySQL docs: OK with 0 affected rows, AUTOCOMMIT, no warnings.
    let wire = b"\x07\x00\x00\x02\x00\x00\x00\x02\x00\x00\x00";
    let (seq, payload) = one(wire);
    assert_eq!(seq, 2);
    let ok = parse_ok(&payload, P41).unwrap();
    assert_eq!(
        ok,
        OkPacket {
            header: 0,
            affected_rows: 0,
            last_insert_id: 0,
            status: SERVER_STATUS_AUTOCOMMIT,
            warnings: 0,
            info: b"",
            session_state: None,
        }
    );
    assert!(!ok.in_transaction() && !ok.more_results());
    let mut buf = BytesMut::new();
    encode_ok(&ok, P41, 2, &mut buf).unwrap();
    assert_eq!(&buf[..], wire);
    // Same packet for a session-tracking client: nothing follows, so nothing changes.
    let mut buf = BytesMut::new();
    encode_ok(&ok, TRACK, 2, &mut buf).unwrap();
    assert_eq!(&buf[..], wire);
    assert_eq!(parse_ok(&payload, TRACK).unwrap(), ok);
}

#[test]
fn ok_with_info_and_lenenc_values() {
    // UPDATE: 300 rows, insert id 70000, in a transaction, 1 warning, info as servers write it
    // without session tracking: a string<lenenc> (MariaDB 10.11 on the wire).
    let payload = b"\x00\xfc\x2c\x01\xfd\x70\x11\x01\x01\x00\x01\x00\x11Rows matched: 300";
    let ok = parse_ok(payload, P41).unwrap();
    assert_eq!((ok.affected_rows, ok.last_insert_id), (300, 70000));
    assert!(ok.in_transaction());
    assert_eq!((ok.warnings, ok.info), (1, &b"Rows matched: 300"[..]));
    let mut buf = BytesMut::new();
    encode_ok(&ok, P41, 1, &mut buf).unwrap();
    assert_eq!(&buf[4..], payload);
    // A peer that writes the info bare (string<EOF>, as documented) is read as it is.
    let bare = b"\x00\x00\x00\x02\x00\x00\x00Rows matched: 300";
    assert_eq!(parse_ok(bare, P41).unwrap().info, b"Rows matched: 300");
    // With session tracking the info is a string<lenenc>.
    let tracked = b"\x00\x01\x00\x02\x00\x00\x00\x05hello";
    let ok = parse_ok(tracked, TRACK).unwrap();
    assert_eq!(
        (ok.affected_rows, ok.info, ok.session_state),
        (1, &b"hello"[..], None)
    );
    // Pre-4.1 shapes: status only (CLIENT_TRANSACTIONS), or nothing.
    let ok = parse_ok(b"\x00\x00\x00\x03\x00", CLIENT_TRANSACTIONS).unwrap();
    assert_eq!((ok.status, ok.warnings), (3, 0));
    let ok = parse_ok(b"\x00\x00\x00hi", 0).unwrap();
    assert_eq!((ok.status, ok.info), (0, &b"hi"[..]));
}

/// `SET autocommit = OFF; USE test` under session tracking: the OK packet MySQL 8 sends
/// (layout of the OK_Packet documentation, records as in its session state examples).
const TRACKED_OK: &[u8] = b"\x00\x00\x00\x00\x40\x00\x00\
\x00\
\x18\
\x00\x0f\x0aautocommit\x03OFF\
\x01\x05\x04test";

#[test]
fn golden_ok_with_session_state() {
    let ok = parse_ok(TRACKED_OK, TRACK).unwrap();
    assert_eq!(ok.status, SERVER_SESSION_STATE_CHANGED);
    assert_eq!(ok.info, b"");
    let state = ok.session_state.unwrap();
    let changes: Vec<_> = session_changes(state).collect::<Result<_, _>>().unwrap();
    assert_eq!(
        changes,
        vec![
            SessionChange::SystemVariable {
                name: b"autocommit",
                value: b"OFF"
            },
            SessionChange::Schema(b"test"),
        ]
    );
    let mut buf = BytesMut::new();
    encode_ok(&ok, TRACK, 1, &mut buf).unwrap();
    assert_eq!(&buf[4..], TRACKED_OK);
    // A MariaDB 0xFE-headed OK ending a result set, with tracking: same layout.
    let mut fe = TRACKED_OK.to_vec();
    fe[0] = 0xFE;
    assert_eq!(parse_ok(&fe, TRACK).unwrap().header, 0xFE);
    // Without CLIENT_SESSION_TRACK the same bytes are info text.
    assert_eq!(parse_ok(TRACKED_OK, P41).unwrap().session_state, None);
}

#[test]
fn strip_session_track_for_a_client_that_did_not_ask() {
    let mut buf = BytesMut::new();
    strip_session_track(TRACKED_OK, TRACK, P41 | CLIENT_SESSION_TRACK, 3, &mut buf).unwrap();
    assert_eq!(&buf[..], b"\x07\x00\x00\x03\x00\x00\x00\x00\x00\x00\x00");
    // Info survives as the string<lenenc> servers write for such clients.
    let mut buf = BytesMut::new();
    strip_session_track(
        b"\x00\x01\x00\x03\x40\x00\x00\x02hi\x03\x01\x01x",
        TRACK,
        P41,
        1,
        &mut buf,
    )
    .unwrap();
    assert_eq!(&buf[4..], b"\x00\x01\x00\x03\x00\x00\x00\x02hi");
    assert!(strip_session_track(b"\x01", TRACK, P41, 1, &mut buf).is_err());
}

#[test]
fn bad_ok_packets() {
    for bad in [
        &b""[..],
        b"\x01\x00\x00\x02\x00\x00\x00",
        b"\x00",
        b"\x00\x00",
        b"\x00\x00\x00\x02\x00\x00",
        b"\x00\xfc\x01",
        b"\x00\xfb\x00\x02\x00\x00\x00",
        // Session tracking: info length past the end, state length past the end.
        b"\x00\x00\x00\x00\x40\x00\x00\x05ab",
        b"\x00\x00\x00\x00\x40\x00\x00\x00\x09ab",
    ] {
        assert!(parse_ok(bad, TRACK).is_err(), "{bad:?}");
    }
    let mut buf = BytesMut::new();
    let ok = OkPacket {
        session_state: Some(b"x"),
        ..OkPacket::default()
    };
    assert!(
        encode_ok(&ok, TRACK, 0, &mut buf).is_err(),
        "state without the flag"
    );
    let ok = OkPacket {
        status: SERVER_SESSION_STATE_CHANGED,
        ..ok
    };
    assert!(
        encode_ok(&ok, P41, 0, &mut buf).is_err(),
        "state without CLIENT_SESSION_TRACK"
    );
    let ok = OkPacket {
        header: 7,
        ..OkPacket::default()
    };
    assert!(encode_ok(&ok, P41, 0, &mut buf).is_err());
    assert!(buf.is_empty());
}

#[test]
fn golden_err_packet() {
    // MySQL docs: ERR 1096 "No tables used", SQLSTATE HY000.
    let wire = b"\x17\x00\x00\x01\xff\x48\x04\x23HY000No tables used";
    let (seq, payload) = one(wire);
    let err = parse_err(&payload, P41).unwrap();
    assert_eq!(err.code, 1096);
    assert_eq!(err.sql_state, Some(*b"HY000"));
    assert_eq!(err.sql_state_str(), "HY000");
    assert_eq!(err.message, b"No tables used");
    let mut buf = BytesMut::new();
    encode_err(1096, "HY000", b"No tables used", P41, seq, &mut buf).unwrap();
    assert_eq!(&buf[..], wire);
    // Before protocol 4.1 is agreed on (e.g. 1040 too many connections), no SQLSTATE.
    let err = parse_err(b"\xff\x10\x04Too many connections", 0).unwrap();
    assert_eq!(
        (err.code, err.sql_state, err.sql_state_str()),
        (1040, None, "HY000")
    );
    assert_eq!(err.message_lossy(), "Too many connections");
    let err = parse_err(b"\xff\x10\x04Too many", P41).unwrap();
    assert_eq!(err.sql_state, None);
    // MySQL 8 ER_CLIENT_INTERACTION_TIMEOUT, sent with sequence id 0.
    let wire = b"\x49\x00\x00\x00\xff\xbf\x0f#HY000The client was disconnected by the server because of inactivity.";
    let (seq, payload) = one(&wire[..]);
    let err = parse_err(&payload, P41).unwrap();
    assert_eq!(err.code, error_code::ER_CLIENT_INTERACTION_TIMEOUT);
    assert!(is_unsolicited_err(seq, &payload));
    assert!(!is_unsolicited_err(1, &payload));
    assert!(!is_unsolicited_err(0, b"\x00"));
    for bad in [&b""[..], b"\xfe\x01\x02", b"\xff\x01", b"\xff\x01\x02#HY0"] {
        assert!(parse_err(bad, P41).is_err(), "{bad:?}");
    }
    // Found by fuzz/mysql_handshake: a SQLSTATE of non-ASCII bytes could not be sent on as one
    // (it re-encoded as HY000); it is refused.
    assert_eq!(
        parse_err(b"\xff\x48\x04#CY\x00\xa200No ", P41),
        Err(ProtocolError::Malformed("ERR packet SQLSTATE is not ASCII"))
    );
    assert!(encode_err(1, "HY00", b"", P41, 0, &mut buf).is_err());
    assert!(encode_err(1, "HY00\u{e9}", b"", P41, 0, &mut buf).is_err());
}

#[test]
fn golden_eof_packet() {
    // MySQL docs: EOF, 0 warnings, AUTOCOMMIT.
    let wire = b"\x05\x00\x00\x05\xfe\x00\x00\x02\x00";
    let (seq, payload) = one(wire);
    assert!(is_eof_packet(&payload));
    let eof = parse_eof(&payload, P41).unwrap();
    assert_eq!(
        eof,
        EofPacket {
            warnings: 0,
            status: SERVER_STATUS_AUTOCOMMIT
        }
    );
    let mut buf = BytesMut::new();
    encode_eof(&eof, P41, seq, &mut buf);
    assert_eq!(&buf[..], wire);
    assert_eq!(terminator_status(&payload, false), Ok(2));
    let mut buf = BytesMut::new();
    encode_eof(&eof, 0, 9, &mut buf);
    assert_eq!(&buf[..], b"\x01\x00\x00\x09\xfe");
    assert_eq!(parse_eof(b"\xfe", 0), Ok(EofPacket::default()));
    assert!(parse_eof(b"\xfe\x00", P41).is_err());
    assert!(parse_eof(b"\x00\x00\x00\x02\x00", P41).is_err());
    assert!(parse_eof(&[0xfe; 9], P41).is_err());
}

/// The precise rule: a 0xFE packet ends the rows when it is shorter than 9 bytes (EOF) or, under
/// CLIENT_DEPRECATE_EOF, shorter than 0xFFFFFF (an OK headed 0xFE); a row whose first value has
/// an 8-byte length is at least 9 + 2^24 bytes, so its first physical packet is 0xFFFFFF long.
#[test]
fn deprecate_eof_terminator_versus_row() {
    assert!(is_result_terminator(0xFE, 5, false));
    assert!(is_result_terminator(0xFE, 8, false));
    assert!(!is_result_terminator(0xFE, 9, false));
    assert!(is_result_terminator(0xFE, 7, true));
    assert!(is_result_terminator(0xFE, 500, true));
    assert!(is_result_terminator(0xFE, MAX_PAYLOAD_LEN - 1, true));
    assert!(!is_result_terminator(0xFE, MAX_PAYLOAD_LEN, true));
    assert!(!is_result_terminator(0xFE, MAX_PAYLOAD_LEN, false));
    assert!(!is_result_terminator(0x00, 7, true));
    assert!(!is_result_terminator(0xFB, 1, true));
    // The OK terminator's status flags, after two length-encoded integers.
    assert_eq!(
        terminator_status(b"\xfe\x00\x00\x22\x00\x00\x00", true),
        Ok(SERVER_STATUS_AUTOCOMMIT | 0x20)
    );
    assert_eq!(
        terminator_status(b"\xfe\xfc\x00\x01\x00\x0a\x00\x00\x00", true),
        Ok(SERVER_STATUS_AUTOCOMMIT | SERVER_MORE_RESULTS_EXISTS)
    );
    assert!(terminator_status(b"\xfe\x00\x00\x22", true).is_err());
    assert!(terminator_status(b"", false).is_err());
}

#[test]
fn golden_prepare_ok() {
    // MySQL docs: statement 1, 1 column, 2 parameters, no warnings.
    let wire = b"\x0c\x00\x00\x01\x00\x01\x00\x00\x00\x01\x00\x02\x00\x00\x00\x00";
    let (seq, payload) = one(wire);
    let ok = parse_prepare_ok(&payload).unwrap();
    assert_eq!(
        ok,
        PrepareOk {
            statement_id: 1,
            columns: 1,
            params: 2,
            warnings: 0,
            metadata_follows: None
        }
    );
    let mut buf = BytesMut::new();
    encode_prepare_ok(&ok, seq, &mut buf);
    assert_eq!(&buf[..], wire);
    let with_flag = PrepareOk {
        metadata_follows: Some(1),
        ..ok
    };
    let mut buf = BytesMut::new();
    encode_prepare_ok(&with_flag, 1, &mut buf);
    assert_eq!(parse_prepare_ok(&buf[4..]), Ok(with_flag));
    assert!(parse_prepare_ok(&payload[..9]).is_err());
    assert!(parse_prepare_ok(&[&payload[..], b"\x01\x02"].concat()).is_err());
    assert!(parse_prepare_ok(b"\xff\x01\x00\x00\x00\x01\x00\x02\x00\x00").is_err());
    // Old servers end after the reserved byte.
    assert_eq!(parse_prepare_ok(&payload[..10]).map(|p| p.params), Ok(2));
}

#[test]
fn statement_ids_are_read_and_rewritten_in_place() {
    use super::command::*;
    // COM_STMT_EXECUTE of statement 1, no cursor, iteration count 1.
    let mut exec = b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00".to_vec();
    assert_eq!(statement_id(&exec), Ok(1));
    assert_eq!(execute_flags(&exec), Ok(0));
    set_statement_id(&mut exec, 0x0102_0304).unwrap();
    assert_eq!(&exec[..5], b"\x17\x04\x03\x02\x01");
    assert_eq!(statement_id(&exec), Ok(0x0102_0304));
    for c in [
        COM_STMT_SEND_LONG_DATA,
        COM_STMT_CLOSE,
        COM_STMT_RESET,
        COM_STMT_FETCH,
        COM_STMT_BULK_EXECUTE,
    ] {
        assert!(has_statement_id(c));
        let mut p = vec![c, 9, 0, 0, 0];
        assert_eq!(statement_id(&p), Ok(9));
        set_statement_id(&mut p, 10).unwrap();
        assert_eq!(p, [c, 10, 0, 0, 0]);
    }
    let mut query = b"\x03select 1".to_vec();
    assert!(!has_statement_id(COM_QUERY));
    assert!(statement_id(&query).is_err());
    assert!(set_statement_id(&mut query, 1).is_err());
    assert_eq!(&query[..], b"\x03select 1");
    assert!(statement_id(b"\x19\x01\x00").is_err());
    assert!(statement_id(b"").is_err());
    assert_eq!(
        execute_flags(b"\x17\x01\x00\x00\x00\x01"),
        Ok(CURSOR_TYPE_READ_ONLY)
    );
    assert!(execute_flags(b"\x17\x01\x00").is_err());
    assert!(execute_flags(b"\x19\x01\x00\x00\x00\x00").is_err());
    assert_eq!(
        command_text(b"\x03select 1", COM_QUERY),
        Ok(&b"select 1"[..])
    );
    assert_eq!(command_text(b"\x02test", COM_INIT_DB), Ok(&b"test"[..]));
    assert!(command_text(b"\x02test", COM_QUERY).is_err());
    assert!(command_text(b"", COM_QUERY).is_err());
}

#[test]
fn encoders_refuse_oversized_payloads() {
    let mut buf = BytesMut::new();
    let big = vec![b'x'; MAX_PAYLOAD_LEN];
    assert_eq!(
        encode_err(1, "HY000", &big, P41, 0, &mut buf),
        Err(ProtocolError::MessageTooLarge {
            len: MAX_PAYLOAD_LEN + 9,
            max: MAX_PAYLOAD_LEN - 1
        })
    );
    assert!(buf.is_empty());
}
