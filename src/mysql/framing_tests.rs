//! The MySQL framers on byte streams built by hand: requests split across reads and across
//! physical packets, replies told complete at the right packet, statement ids mapped both ways,
//! session tracking removed for a client that did not ask for it, unsolicited errors kept back.

use bytes::BytesMut;
use suture_protocol::mysql::{capability::*, command, encode_packet, status, OkPacket, OK_HEADER};

use super::*;
use crate::mysql::book::Shared;
use crate::session::framing::{BackendFramer, ClientFramer, Scanned, Walked};

const CLIENT: u64 = CLIENT_PROTOCOL_41 | CLIENT_TRANSACTIONS | CLIENT_SECURE_CONNECTION;
const BACKEND: u64 = CLIENT | CLIENT_SESSION_TRACK;

fn command_bytes(byte: u8, body: &[u8]) -> BytesMut {
    let mut payload = vec![byte];
    payload.extend_from_slice(body);
    let mut out = BytesMut::new();
    encode_packet(0, &payload, &mut out);
    out
}

/// Walks `bytes` arriving in reads of `chunk` bytes; returns what the walk ended with.
fn walk_in_chunks(
    framer: &mut MyClientFramer,
    shared: &Shared,
    bytes: &[u8],
    chunk: usize,
) -> Walked {
    let mut cbuf = BytesMut::new();
    let (mut scanned, mut sendable) = (0, 0);
    let mut last = Walked::NeedMore;
    for piece in bytes.chunks(chunk) {
        cbuf.extend_from_slice(piece);
        last = framer
            .walk(&mut cbuf, &mut scanned, &mut sendable, shared)
            .expect("valid stream");
        // The relay sends and drops what was walked.
        let _ = cbuf.split_to(sendable);
        scanned -= sendable;
        sendable = 0;
    }
    last
}

fn ok_packet(seq: u8, status_flags: u16, caps: u64) -> BytesMut {
    let ok = OkPacket {
        header: OK_HEADER,
        status: status_flags,
        ..OkPacket::default()
    };
    let mut out = BytesMut::new();
    suture_protocol::mysql::encode_ok(&ok, caps, seq, &mut out).expect("encodes");
    out
}

#[test]
fn a_query_longer_than_one_packet_expects_its_reply_after_the_last_packet() {
    let shared = Shared::default();
    let mut framer = MyClientFramer::new(64 << 20, CLIENT);
    let body = vec![b'x'; 17 << 20];
    let mut sql = b"SELECT '".to_vec();
    sql.extend_from_slice(&body);
    sql.push(b'\'');
    let request = command_bytes(command::COM_QUERY, &sql);
    assert_eq!(
        walk_in_chunks(&mut framer, &shared, &request, 256 * 1024),
        Walked::NeedMore
    );
    {
        let t = shared.lock();
        assert_eq!(t.book.pending.len(), 1, "one reply expected");
        assert_eq!(
            t.book.pending[0].reply.next_seq(),
            2,
            "after packets 0 and 1"
        );
        assert_eq!(t.ledger.len(), 1);
    }
    let mut backend = MyBackendFramer::new(64 << 20, CLIENT, BACKEND);
    let mut rbuf = ok_packet(2, status::SERVER_STATUS_AUTOCOMMIT, BACKEND);
    let mut conn = ConnState::default();
    let scanned = backend
        .scan(&mut rbuf, &shared, &mut conn)
        .expect("valid reply");
    assert_eq!(scanned, Scanned::Forward(rbuf.len()));
    assert!(
        shared.lock().ledger.is_empty(),
        "the reply completed the request"
    );
}

#[test]
fn quit_ends_the_walk_at_its_packet() {
    let shared = Shared::default();
    let mut framer = MyClientFramer::new(1 << 20, CLIENT);
    let mut bytes = command_bytes(command::COM_PING, b"");
    let at = bytes.len();
    bytes.extend_from_slice(&command_bytes(command::COM_QUIT, b""));
    assert_eq!(
        walk_in_chunks(&mut framer, &shared, &bytes, 1024),
        Walked::Quit { at }
    );
}

#[test]
fn a_server_that_refuses_a_long_request_before_its_end_is_followed() {
    let shared = Shared::default();
    let mut framer = MyClientFramer::new(64 << 20, CLIENT);
    let request = command_bytes(command::COM_QUERY, &vec![b'x'; 17 << 20]);
    let (first, rest) = request.split_at((16 << 20) + 1024);
    walk_in_chunks(&mut framer, &shared, first, 256 * 1024);
    // MariaDB answers ERR 1153 once the total passes max_allowed_packet.
    let mut rbuf = BytesMut::new();
    suture_protocol::mysql::encode_err(
        1153,
        "08S01",
        b"Got a packet bigger than 'max_allowed_packet' bytes",
        CLIENT,
        2,
        &mut rbuf,
    )
    .expect("encodes");
    let mut backend = MyBackendFramer::new(64 << 20, CLIENT, BACKEND);
    let mut conn = ConnState::default();
    let len = rbuf.len();
    assert_eq!(
        backend
            .scan(&mut rbuf, &shared, &mut conn)
            .expect("an answer to the request"),
        Scanned::Forward(len)
    );
    walk_in_chunks(&mut framer, &shared, rest, 256 * 1024);
    let t = shared.lock();
    assert!(
        t.ledger.is_empty() && t.book.pending.is_empty(),
        "{:?}",
        t.book.pending
    );
}

/// Appends one packet with `payload` at `seq`.
fn packet(seq: u8, payload: &[u8], out: &mut BytesMut) {
    encode_packet(seq, payload, out);
}

#[test]
fn multi_results_with_deprecate_eof_end_at_the_last_terminator() {
    let caps = CLIENT | CLIENT_DEPRECATE_EOF | CLIENT_MULTI_STATEMENTS | CLIENT_MULTI_RESULTS;
    for backend_caps in [caps, caps | CLIENT_SESSION_TRACK] {
        let shared = Shared::default();
        let mut framer = MyClientFramer::new(1 << 20, caps);
        let request = command_bytes(command::COM_QUERY, b"SELECT 1; SELECT 2");
        walk_in_chunks(&mut framer, &shared, &request, 1024);
        let mut rbuf = BytesMut::new();
        let coldef =
            b"\x03def\x00\x00\x00\x011\x00\x0c\x3f\x00\x01\x00\x00\x00\x08\x81\x00\x00\x00\x00";
        let more = status::SERVER_STATUS_AUTOCOMMIT | status::SERVER_MORE_RESULTS_EXISTS;
        let terminator = |flags: u16| {
            let ok = OkPacket {
                header: 0xFE,
                status: flags,
                ..OkPacket::default()
            };
            let mut out = BytesMut::new();
            suture_protocol::mysql::encode_ok(&ok, backend_caps, 0, &mut out).expect("encodes");
            out[4..].to_vec()
        };
        packet(1, b"\x01", &mut rbuf);
        packet(2, coldef, &mut rbuf);
        packet(3, b"\x011", &mut rbuf);
        packet(4, &terminator(more), &mut rbuf);
        packet(5, b"\x01", &mut rbuf);
        packet(6, coldef, &mut rbuf);
        packet(7, b"\x012", &mut rbuf);
        packet(8, &terminator(status::SERVER_STATUS_AUTOCOMMIT), &mut rbuf);
        let mut backend = MyBackendFramer::new(1 << 20, caps, backend_caps);
        let mut conn = ConnState::default();
        let scanned = backend
            .scan(&mut rbuf, &shared, &mut conn)
            .expect("valid reply");
        assert_eq!(
            scanned,
            Scanned::Forward(rbuf.len()),
            "caps {backend_caps:x}"
        );
        assert!(
            shared.lock().ledger.is_empty(),
            "caps {backend_caps:x}: complete"
        );
    }
}

#[test]
fn session_tracking_is_removed_from_every_ok_for_a_client_without_it() {
    let caps = CLIENT | CLIENT_DEPRECATE_EOF | CLIENT_MULTI_STATEMENTS | CLIENT_MULTI_RESULTS;
    let backend_caps = caps | CLIENT_SESSION_TRACK;
    let shared = Shared::default();
    let mut framer = MyClientFramer::new(1 << 20, caps);
    let request = command_bytes(
        command::COM_QUERY,
        b"CREATE TABLE m (a INT); INSERT INTO m VALUES (1)",
    );
    walk_in_chunks(&mut framer, &shared, &request, 1024);
    let mut rbuf = BytesMut::new();
    packet(1, &[0, 0, 0, 10, 0, 0, 0], &mut rbuf);
    // With tracking agreed, and a session state the client must not see.
    let mut second = vec![0, 1, 0, 0x02, 0x40, 0, 0, 5];
    second.extend_from_slice(b"Rows!");
    second.extend_from_slice(b"\x03\x02\x01\x31");
    packet(2, &second, &mut rbuf);
    let mut backend = MyBackendFramer::new(1 << 20, caps, backend_caps);
    let mut conn = ConnState::default();
    let scanned = backend
        .scan(&mut rbuf, &shared, &mut conn)
        .expect("valid reply");
    let mut expected = BytesMut::new();
    packet(1, &[0, 0, 0, 10, 0, 0, 0], &mut expected);
    packet(2, b"\x00\x01\x00\x02\x00\x00\x00\x05Rows!", &mut expected);
    assert_eq!(scanned, Scanned::Forward(expected.len()));
    assert_eq!(&rbuf[..], &expected[..]);
    assert!(shared.lock().ledger.is_empty());
}

#[test]
fn an_err_4031_with_sequence_id_0_is_kept_from_the_client_as_an_idle_timeout() {
    // MySQL 8 writes this before it closes an idle connection (wait_timeout), packet built
    // from the protocol documentation: ERR, code 4031, SQLSTATE HY000, sequence id 0.
    let mut err = BytesMut::new();
    suture_protocol::mysql::encode_err(
        4031,
        "HY000",
        b"The client was disconnected by the server because of inactivity.",
        CLIENT,
        0,
        &mut err,
    )
    .expect("encodes");
    // Idle, nothing in flight.
    let shared = Shared::default();
    let mut backend = MyBackendFramer::new(1 << 20, CLIENT, BACKEND);
    let mut conn = ConnState::default();
    let mut rbuf = err.clone();
    assert_eq!(
        backend
            .scan(&mut rbuf, &shared, &mut conn)
            .expect("recognised"),
        Scanned::Unsolicited(0)
    );
    let unsolicited = shared.lock().unsolicited.clone().expect("recorded");
    assert!(unsolicited.idle_timeout && unsolicited.code == "4031");
    // A query the server had not read when it gave up: the same, and it provably did not run.
    let shared = Shared::default();
    let mut framer = MyClientFramer::new(1 << 20, CLIENT);
    walk_in_chunks(
        &mut framer,
        &shared,
        &command_bytes(command::COM_QUERY, b"UPDATE t SET a = 1"),
        1024,
    );
    let mut backend = MyBackendFramer::new(1 << 20, CLIENT, BACKEND);
    let mut rbuf = err;
    assert_eq!(
        backend
            .scan(&mut rbuf, &shared, &mut conn)
            .expect("recognised"),
        Scanned::Unsolicited(0)
    );
    let t = shared.lock();
    assert!(t.unsolicited.as_ref().is_some_and(|u| u.idle_timeout));
    assert!(
        t.oldest_unanswered(),
        "no byte of a reply went to the client"
    );
}
