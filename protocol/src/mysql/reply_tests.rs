//! The reply state machine over the replies servers send, packet by packet (payloads built from
//! the documented layouts; MySQL 8 behaviour MariaDB does not show, such as ERR 4031 with
//! sequence id 0, included).

use super::command::*;
use super::status::*;
use super::*;
use crate::ProtocolError;

const CLASSIC: ReplyOptions = ReplyOptions {
    deprecate_eof: false,
    metadata_flag: false,
    progress_reports: false,
};
const DEPRECATE: ReplyOptions = ReplyOptions {
    deprecate_eof: true,
    ..CLASSIC
};

const AUTOCOMMIT: u16 = SERVER_STATUS_AUTOCOMMIT;

fn ok(status: u16) -> Vec<u8> {
    let s = status.to_le_bytes();
    vec![0x00, 0, 0, s[0], s[1], 0, 0]
}
fn ok_fe(status: u16) -> Vec<u8> {
    let mut p = ok(status);
    p[0] = 0xFE;
    p
}
fn eof(status: u16) -> Vec<u8> {
    let s = status.to_le_bytes();
    vec![0xFE, 0, 0, s[0], s[1]]
}
fn err(code: u16) -> Vec<u8> {
    let c = code.to_le_bytes();
    [&[0xFF, c[0], c[1]][..], b"#HY000boom"].concat()
}
fn column_def(name: &str) -> Vec<u8> {
    let mut p = Vec::new();
    for s in ["def", "test", "t", "t", name, name] {
        put_lenenc_str(s.as_bytes(), &mut p);
    }
    p.extend_from_slice(b"\x0c\x21\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00\x00");
    p
}

/// Feeds backend packets (seq, payload) from the reply's first sequence id on; returns kinds.
fn feed_all(reply: &mut Reply, packets: &[Vec<u8>]) -> Vec<PacketKind> {
    packets
        .iter()
        .map(|p| {
            let seq = reply.next_seq();
            let seen = reply
                .feed(seq, p.len(), &p[..p.len().min(PEEK_LEN)])
                .unwrap();
            seen.kind
        })
        .collect()
}

fn done(status: u16) -> Option<ReplyEnd> {
    Some(ReplyEnd {
        status: Some(status),
        error: None,
        unsolicited: false,
    })
}

#[test]
fn query_ok() {
    let mut r = Reply::new(b"\x03insert into t values (1)", 1, CLASSIC).unwrap();
    assert_eq!(r.shape(), ReplyShape::Query);
    assert!(r.expects_reply());
    assert_eq!(r.next(), Next::Backend);
    let seen = r
        .feed(1, 7, &ok(AUTOCOMMIT | SERVER_STATUS_IN_TRANS))
        .unwrap();
    assert_eq!(seen.kind, PacketKind::Ok);
    assert_eq!(seen.next, Next::Done(done(3).unwrap()));
    assert_eq!(r.end(), done(3));
    assert!(r.feed(2, 7, &ok(2)).is_err(), "nothing after the end");
}

#[test]
fn text_result_set_with_eof_packets() {
    let mut r = Reply::new(b"\x03select a, b from t", 1, CLASSIC).unwrap();
    let kinds = feed_all(
        &mut r,
        &[
            vec![2],
            column_def("a"),
            column_def("b"),
            eof(AUTOCOMMIT),
            b"\x011\x03abc".to_vec(),
            b"\xfb\x00".to_vec(),
            eof(AUTOCOMMIT | SERVER_STATUS_IN_TRANS),
        ],
    );
    use PacketKind::*;
    assert_eq!(
        kinds,
        [ColumnCount, ColumnDef, ColumnDef, Eof, Row, Row, Eof]
    );
    assert_eq!(r.end(), done(3));
    assert_eq!(r.next_seq(), 8);
}

#[test]
fn deprecate_eof_result_set_and_a_row_that_begins_with_fe() {
    let mut r = Reply::new(b"\x03select big from t", 1, DEPRECATE).unwrap();
    use PacketKind::*;
    assert_eq!(
        feed_all(&mut r, &[vec![1], column_def("big")]),
        [ColumnCount, ColumnDef]
    );
    // A row whose only value is 2^24 bytes: 0xFE and an 8-byte length, in a 0xFFFFFF packet.
    let head = b"\xfe\x00\x00\x00\x01\x00\x00\x00\x00xxxxxxxxxxxxxxxxxxxxxxx";
    let seen = r.feed(3, MAX_PAYLOAD_LEN, head).unwrap();
    assert_eq!((seen.kind, seen.next), (Row, Next::Backend));
    // Its continuation starts with 0xFE too and is short: still part of the row.
    let seen = r.feed(4, 10, b"\xfe\x00\x00\x02\x00\x00\x00xyz").unwrap();
    assert_eq!((seen.kind, seen.next), (Continuation, Next::Backend));
    // A short row starting with 0x00 (an empty string) is a row, not an OK.
    assert_eq!(r.feed(5, 1, b"\x00").unwrap().kind, Row);
    // The terminator: an OK headed 0xFE, with info and session state it may be long.
    let mut term = ok_fe(AUTOCOMMIT | SERVER_SESSION_STATE_CHANGED);
    term.extend_from_slice(&[0; 40]);
    let seen = r.feed(6, term.len(), &term[..PEEK_LEN]).unwrap();
    assert_eq!(seen.kind, Ok);
    assert_eq!(r.end(), done(AUTOCOMMIT | SERVER_SESSION_STATE_CHANGED));
}

#[test]
fn multi_results_chain_until_the_last() {
    let mut r = Reply::new(b"\x03update t set a=1; select 1; begin", 1, DEPRECATE).unwrap();
    use PacketKind::*;
    let kinds = feed_all(
        &mut r,
        &[
            ok(AUTOCOMMIT | SERVER_MORE_RESULTS_EXISTS),
            vec![1],
            column_def("1"),
            b"\x011".to_vec(),
            ok_fe(AUTOCOMMIT | SERVER_MORE_RESULTS_EXISTS),
        ],
    );
    assert_eq!(kinds, [Ok, ColumnCount, ColumnDef, Row, Ok]);
    assert_eq!(r.end(), None);
    assert_eq!(
        r.last_status(),
        Some(AUTOCOMMIT | SERVER_MORE_RESULTS_EXISTS)
    );
    feed_all(&mut r, &[ok(AUTOCOMMIT | SERVER_STATUS_IN_TRANS)]);
    assert_eq!(r.end(), done(AUTOCOMMIT | SERVER_STATUS_IN_TRANS));
}

#[test]
fn err_ends_the_reply_anywhere() {
    let mut r = Reply::new(b"\x03select 1; select 2", 1, CLASSIC).unwrap();
    feed_all(
        &mut r,
        &[
            ok(SERVER_STATUS_IN_TRANS | SERVER_MORE_RESULTS_EXISTS),
            vec![1],
            column_def("x"),
        ],
    );
    let e = err(1317);
    let seen = r.feed(4, e.len(), &e).unwrap();
    assert_eq!(seen.kind, PacketKind::Err);
    let end = ReplyEnd {
        status: None,
        error: Some(1317),
        unsolicited: false,
    };
    assert_eq!(seen.next, Next::Done(end));
    assert_eq!(
        r.last_status(),
        Some(SERVER_STATUS_IN_TRANS | SERVER_MORE_RESULTS_EXISTS)
    );
}

#[test]
fn local_infile_hands_the_turn_to_the_client() {
    let mut r = Reply::new(b"\x03load data local infile 'x' into table t", 1, CLASSIC).unwrap();
    let seen = r.feed(1, 2, b"\xfbx").unwrap();
    assert_eq!(
        (seen.kind, seen.next),
        (PacketKind::LocalInfile, Next::Client)
    );
    assert!(
        r.feed(2, 7, &ok(2)).is_err(),
        "the backend does not have the turn"
    );
    // The file in two packets, the first a full 16 MiB one whose continuation is empty;
    // only then the empty packet that ends the file.
    assert_eq!(
        r.feed_client(2, MAX_PAYLOAD_LEN).unwrap().next,
        Next::Client
    );
    assert_eq!(r.feed_client(3, 0).unwrap().next, Next::Client);
    assert_eq!(
        r.feed_client(4, 0).unwrap(),
        Seen {
            kind: PacketKind::ClientData,
            next: Next::Backend
        }
    );
    assert!(r.feed_client(5, 0).is_err());
    feed_all(&mut r, &[ok(AUTOCOMMIT)]);
    assert_eq!(r.end(), done(AUTOCOMMIT));
    // The server may refuse the data with an ERR while the client still has the turn.
    let mut r = Reply::new(b"\x03load data local infile 'x' into table t", 1, CLASSIC).unwrap();
    r.feed(1, 2, b"\xfbx").unwrap();
    r.feed_client(2, 100).unwrap();
    let e = err(1148);
    assert_eq!(r.feed(3, e.len(), &e).unwrap().kind, PacketKind::Err);
}

#[test]
fn prepare_with_and_without_eof() {
    let prep = |cols: u16, params: u16| {
        let mut p = vec![0, 1, 0, 0, 0];
        p.extend_from_slice(&cols.to_le_bytes());
        p.extend_from_slice(&params.to_le_bytes());
        p.extend_from_slice(&[0, 0, 0]);
        p
    };
    use PacketKind::*;
    let mut r = Reply::new(b"\x16select ? + ?, a from t", 1, CLASSIC).unwrap();
    let kinds = feed_all(
        &mut r,
        &[
            prep(1, 2),
            column_def("?"),
            column_def("?"),
            eof(AUTOCOMMIT),
            column_def("a"),
            eof(AUTOCOMMIT),
        ],
    );
    assert_eq!(kinds, [PrepareOk, ParamDef, ParamDef, Eof, ColumnDef, Eof]);
    assert_eq!(r.end(), done(AUTOCOMMIT));
    let mut r = Reply::new(b"\x16select ? + ?, a from t", 1, DEPRECATE).unwrap();
    let kinds = feed_all(
        &mut r,
        &[
            prep(1, 2),
            column_def("?"),
            column_def("?"),
            column_def("a"),
        ],
    );
    assert_eq!(kinds, [PrepareOk, ParamDef, ParamDef, ColumnDef]);
    assert_eq!(r.end(), Some(ReplyEnd::default()));
    let mut r = Reply::new(b"\x16do 1", 1, CLASSIC).unwrap();
    feed_all(&mut r, &[prep(0, 0)]);
    assert_eq!(r.end(), Some(ReplyEnd::default()));
    let mut r = Reply::new(b"\x16select a from t", 1, CLASSIC).unwrap();
    assert_eq!(
        feed_all(&mut r, &[prep(1, 0), column_def("a"), eof(0)]),
        [PrepareOk, ColumnDef, Eof]
    );
    // An EOF where an EOF must be, or nothing.
    let mut r = Reply::new(b"\x16select ?", 1, CLASSIC).unwrap();
    feed_all(&mut r, &[prep(0, 1), column_def("?")]);
    assert!(r.feed(3, 3, b"\x03def").is_err());
    let mut r = Reply::new(b"\x16select", 1, CLASSIC).unwrap();
    let e = err(1064);
    assert_eq!(r.feed(1, e.len(), &e).unwrap().kind, Err);
}

#[test]
fn execute_with_and_without_a_cursor_and_fetch() {
    use PacketKind::*;
    // COM_STMT_EXECUTE statement 1, CURSOR_TYPE_READ_ONLY: metadata, then an EOF with
    // SERVER_STATUS_CURSOR_EXISTS ends the reply; the rows come with COM_STMT_FETCH.
    let mut r = Reply::new(b"\x17\x01\x00\x00\x00\x01\x01\x00\x00\x00", 1, CLASSIC).unwrap();
    let kinds = feed_all(
        &mut r,
        &[
            vec![1],
            column_def("a"),
            eof(AUTOCOMMIT | SERVER_STATUS_CURSOR_EXISTS),
        ],
    );
    assert_eq!(kinds, [ColumnCount, ColumnDef, Eof]);
    assert_eq!(r.end(), done(AUTOCOMMIT | SERVER_STATUS_CURSOR_EXISTS));
    // Under CLIENT_DEPRECATE_EOF the cursor's terminator is an OK headed 0xFE.
    let mut r = Reply::new(b"\x17\x01\x00\x00\x00\x01\x01\x00\x00\x00", 1, DEPRECATE).unwrap();
    feed_all(
        &mut r,
        &[vec![1], column_def("a"), ok_fe(SERVER_STATUS_CURSOR_EXISTS)],
    );
    assert_eq!(r.end(), done(SERVER_STATUS_CURSOR_EXISTS));
    // Without a cursor: binary rows (header 0x00) and an EOF.
    let mut r = Reply::new(b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00", 1, CLASSIC).unwrap();
    let kinds = feed_all(
        &mut r,
        &[
            vec![1],
            column_def("a"),
            eof(0),
            b"\x00\x00\x01".to_vec(),
            eof(AUTOCOMMIT),
        ],
    );
    assert_eq!(kinds, [ColumnCount, ColumnDef, Eof, Row, Eof]);
    assert_eq!(r.end(), done(AUTOCOMMIT));
    // An INSERT: just an OK.
    let mut r = Reply::new(b"\x17\x02\x00\x00\x00\x00\x01\x00\x00\x00", 1, CLASSIC).unwrap();
    feed_all(&mut r, &[ok(AUTOCOMMIT)]);
    assert_eq!(r.end(), done(AUTOCOMMIT));
    // COM_STMT_FETCH: rows until LAST_ROW_SENT (or CURSOR_EXISTS for more).
    let mut r = Reply::new(b"\x1c\x01\x00\x00\x00\x05\x00\x00\x00", 1, CLASSIC).unwrap();
    assert_eq!(r.shape(), ReplyShape::Fetch);
    let kinds = feed_all(
        &mut r,
        &[b"\x00\x00\x07".to_vec(), eof(SERVER_STATUS_LAST_ROW_SENT)],
    );
    assert_eq!(kinds, [Row, Eof]);
    assert_eq!(r.end(), done(SERVER_STATUS_LAST_ROW_SENT));
}

#[test]
fn optional_metadata_skips_definitions() {
    let opts = ReplyOptions {
        metadata_flag: true,
        ..DEPRECATE
    };
    let mut r = Reply::new(b"\x03select 1", 1, opts).unwrap();
    use PacketKind::*;
    let kinds = feed_all(&mut r, &[vec![1, 0], b"\x011".to_vec(), ok_fe(AUTOCOMMIT)]);
    assert_eq!(kinds, [ColumnCount, Row, Ok]);
    let mut r = Reply::new(b"\x03select 1", 1, opts).unwrap();
    let kinds = feed_all(
        &mut r,
        &[
            vec![1, 1],
            column_def("1"),
            b"\x011".to_vec(),
            ok_fe(AUTOCOMMIT),
        ],
    );
    assert_eq!(kinds, [ColumnCount, ColumnDef, Row, Ok]);
    let mut r = Reply::new(b"\x03select 1", 1, opts).unwrap();
    assert!(r.feed(1, 1, &[1]).is_err(), "the flag byte is missing");
    let caps = capability::CLIENT_DEPRECATE_EOF | capability::MARIADB_CLIENT_CACHE_METADATA;
    assert_eq!(ReplyOptions::from_capabilities(caps), opts);
}

#[test]
fn simple_commands() {
    for cmd in [
        COM_PING,
        COM_INIT_DB,
        COM_RESET_CONNECTION,
        COM_STMT_RESET,
        COM_REFRESH,
    ] {
        let mut r = Reply::new(&[cmd], 1, CLASSIC).unwrap();
        assert_eq!(r.shape(), ReplyShape::Simple);
        feed_all(&mut r, &[ok(AUTOCOMMIT)]);
        assert_eq!(r.end(), done(AUTOCOMMIT), "{cmd}");
    }
    // COM_SET_OPTION answers with an EOF (an OK headed 0xFE under CLIENT_DEPRECATE_EOF).
    let mut r = Reply::new(b"\x1b\x00\x00", 1, CLASSIC).unwrap();
    assert_eq!(feed_all(&mut r, &[eof(AUTOCOMMIT)]), [PacketKind::Eof]);
    assert_eq!(r.end(), done(AUTOCOMMIT));
    let mut r = Reply::new(b"\x1b\x01\x00", 1, DEPRECATE).unwrap();
    assert_eq!(feed_all(&mut r, &[ok_fe(AUTOCOMMIT)]), [PacketKind::Ok]);
    assert_eq!(r.end(), done(AUTOCOMMIT));
    // COM_STATISTICS: one text packet.
    let mut r = Reply::new(&[COM_STATISTICS], 1, CLASSIC).unwrap();
    assert_eq!(
        feed_all(&mut r, &[b"Uptime: 5  Threads: 1".to_vec()]),
        [PacketKind::Text]
    );
    assert_eq!(r.end(), Some(ReplyEnd::default()));
    // COM_FIELD_LIST: definitions and an EOF.
    let mut r = Reply::new(b"\x04t\x00", 1, CLASSIC).unwrap();
    assert_eq!(
        feed_all(&mut r, &[column_def("a"), eof(2)]),
        [PacketKind::ColumnDef, PacketKind::Eof]
    );
    assert_eq!(r.end(), done(2));
}

#[test]
fn commands_without_a_reply_and_unsupported_ones() {
    for cmd in [
        &[COM_QUIT][..],
        b"\x19\x01\x00\x00\x00",
        b"\x18\x01\x00\x00\x00\x00\x00data",
    ] {
        let mut r = Reply::new(cmd, 1, CLASSIC).unwrap();
        assert!(!r.expects_reply());
        assert_eq!(r.end(), Some(ReplyEnd::default()));
        assert!(r.feed(1, 7, &ok(2)).is_err());
    }
    assert!(Reply::new(&[COM_BINLOG_DUMP], 1, CLASSIC).is_err());
    assert_eq!(reply_shape(COM_BINLOG_DUMP_GTID), None);
    assert!(Reply::new(b"", 1, CLASSIC).is_err());
    // An unknown command gets an ERR from the server.
    assert_eq!(reply_shape(0x42), Some(ReplyShape::Simple));
}

#[test]
fn change_user_auth_exchanges() {
    use PacketKind::*;
    // AuthSwitchRequest, the client's scramble, caching_sha2 fast auth success, OK.
    let mut r = Reply::new(b"\x11bob\x00", 1, CLASSIC).unwrap();
    let switch = b"\xfecaching_sha2_password\x00abcdefghijklmnopqrst\x00";
    let seen = r.feed(1, switch.len(), &switch[..PEEK_LEN]).unwrap();
    assert_eq!((seen.kind, seen.next), (AuthSwitch, Next::Client));
    assert_eq!(r.feed_client(2, 32).unwrap().next, Next::Backend);
    assert_eq!(
        r.feed(3, 2, b"\x01\x03").unwrap(),
        Seen {
            kind: AuthMoreData,
            next: Next::Backend
        }
    );
    assert_eq!(r.feed(4, 7, &ok(AUTOCOMMIT)).unwrap().kind, Ok);
    assert_eq!(r.end(), done(AUTOCOMMIT));
    // Full authentication: 0x04, the client asks for the key, the server sends it, the client
    // sends the encrypted password, OK.
    let mut r = Reply::new(b"\x11bob\x00", 1, CLASSIC).unwrap();
    assert_eq!(r.feed(1, 2, b"\x01\x04").unwrap().next, Next::Client);
    assert_eq!(r.feed_client(2, 1).unwrap().next, Next::Backend);
    let pem = b"\x01-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqh";
    assert_eq!(r.feed(3, 450, &pem[..PEEK_LEN]).unwrap().next, Next::Client);
    r.feed_client(4, 256).unwrap();
    let e = err(1045);
    assert_eq!(r.feed(5, e.len(), &e).unwrap().kind, Err);
}

#[test]
fn unsolicited_err_with_sequence_id_zero() {
    // MySQL 8 wrote ERR 4031 on wait_timeout before reading the command.
    let mut payload = vec![0xFF, 0xBF, 0x0F];
    payload.extend_from_slice(
        b"#HY000The client was disconnected by the server because of inactivity.",
    );
    let mut r = Reply::new(b"\x03select 1", 1, CLASSIC).unwrap();
    let seen = r.feed(0, payload.len(), &payload[..PEEK_LEN]).unwrap();
    assert_eq!(seen.kind, PacketKind::UnsolicitedErr);
    let end = ReplyEnd {
        status: None,
        error: Some(error_code::ER_CLIENT_INTERACTION_TIMEOUT),
        unsolicited: true,
    };
    assert_eq!(seen.next, Next::Done(end));
    assert!(is_unsolicited_err(0, &payload));
    // Anything else with a wrong sequence id is out of sync.
    let mut r = Reply::new(b"\x03select 1", 1, CLASSIC).unwrap();
    assert_eq!(
        r.feed(0, 7, &ok(2)),
        Err(ProtocolError::OutOfSequence {
            expected: 1,
            got: 0
        })
    );
    assert_eq!(
        r.feed(2, 7, &ok(2)),
        Err(ProtocolError::OutOfSequence {
            expected: 1,
            got: 2
        })
    );
    // Mid-reply, sequence id 0 is not unsolicited.
    let mut r = Reply::new(b"\x03select 1", 1, CLASSIC).unwrap();
    r.feed(1, 1, &[1]).unwrap();
    assert!(r.feed(0, payload.len(), &payload[..PEEK_LEN]).is_err());
}

#[test]
fn progress_reports_and_contract_checks() {
    let opts = ReplyOptions {
        progress_reports: true,
        ..CLASSIC
    };
    let progress = b"\xff\xff\xff\x01\x02\x00\x10\x00\x05stage".to_vec();
    let mut r = Reply::new(b"\x03alter table t engine=innodb", 1, opts).unwrap();
    assert_eq!(
        r.feed(1, progress.len(), &progress).unwrap().kind,
        PacketKind::Progress
    );
    feed_all(&mut r, &[ok(2)]);
    assert_eq!(r.end(), done(2));
    // Without MARIADB_CLIENT_PROGRESS it is an ERR.
    let mut r = Reply::new(b"\x03alter", 1, CLASSIC).unwrap();
    assert_eq!(
        r.feed(1, progress.len(), &progress).unwrap().kind,
        PacketKind::Err
    );
    // The head must cover min(len, PEEK_LEN) bytes; a packet is never empty.
    let mut r = Reply::new(b"\x03select 1", 1, CLASSIC).unwrap();
    assert!(matches!(
        r.feed(1, 7, b"\x00"),
        Err(ProtocolError::InvalidArgument(_))
    ));
    assert!(r.feed(1, 0, b"").is_err());
    // A 16 MiB OK is not something a server sends.
    let mut r = Reply::new(b"\x03select 1", 1, CLASSIC).unwrap();
    assert!(r.feed(1, MAX_PAYLOAD_LEN, &[0; PEEK_LEN]).is_err());
    // A result set of zero columns is malformed.
    let mut r = Reply::new(b"\x03select 1", 1, CLASSIC).unwrap();
    assert!(r.feed(1, 3, b"\xfc\x00\x00").is_err());
}
