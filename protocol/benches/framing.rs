//! Micro-benchmarks of the PostgreSQL framing in `suture-protocol`: the command-phase [`Scanner`]
//! driven the way the relay drives it (pgbench-style replies, large result streams, client
//! request streams, and streams fed in socket-sized chunks), plus the `frame.rs` helpers
//! [`parse_header`] and [`split_message`] and the per-message parsers the relay calls.
//!
//! Run with `cargo bench -p suture-protocol --bench framing`. Every benchmark reports messages/s
//! (items) and bytes/s. Inputs are built here from constants, with the crate's own encoders where
//! it has one and `postgres-protocol`'s frontend encoders for the extended-protocol requests;
//! RowDescription and DataRow have no encoder in either, so they are written by hand.

use bytes::{Buf, BufMut, BytesMut};
use divan::counter::{BytesCount, ItemsCount};
use divan::{black_box, Bencher};
use postgres_protocol::message::frontend;
use suture_protocol::pg::{self, Scanner, Step, TxStatus};

fn main() {
    divan::main();
}

/// The relay's default `max_message_size` (64 MiB).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// Size of the large result streams: small enough to stay in L2, large enough to be a stream.
const STREAM_BYTES: usize = 256 * 1024;
/// Bytes one socket read delivers in the chunked benchmarks.
const CHUNK: usize = 8 * 1024;
/// The query of `pgbench -S` (simple protocol, `-M simple`).
const PGBENCH_SQL: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;";
/// The same query as `pgbench -S -M extended` sends it.
const PGBENCH_SQL_EXTENDED: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";

// ---- inputs ----

/// A wire stream and how many messages it holds.
struct Input {
    bytes: Vec<u8>,
    messages: usize,
}

impl Input {
    fn new() -> Input {
        Input {
            bytes: Vec::new(),
            messages: 0,
        }
    }

    /// Appends one encoded message (or several, counted as `messages`).
    fn push(&mut self, messages: usize, encode: impl FnOnce(&mut BytesMut)) {
        let mut buf = BytesMut::new();
        encode(&mut buf);
        self.bytes.extend_from_slice(&buf);
        self.messages += messages;
    }

    /// Appends `times` copies of `unit`.
    fn repeat(mut self, unit: &Input, times: usize) -> Input {
        for _ in 0..times {
            self.bytes.extend_from_slice(&unit.bytes);
            self.messages += unit.messages;
        }
        self
    }

    fn counters<'a, 'b>(&self, bencher: Bencher<'a, 'b>) -> Bencher<'a, 'b> {
        bencher
            .counter(ItemsCount::new(self.messages))
            .counter(BytesCount::new(self.bytes.len()))
    }
}

/// Writes a tagged message: tag, int32 length, body.
fn tagged(tag: u8, body: &[u8], buf: &mut BytesMut) {
    buf.put_u8(tag);
    buf.put_i32(i32::try_from(body.len() + 4).expect("bench bodies are small"));
    buf.put_slice(body);
}

/// RowDescription (`T`) of text-format int4 columns with the given names.
fn row_description(names: &[&str], buf: &mut BytesMut) {
    let mut body = BytesMut::new();
    body.put_i16(i16::try_from(names.len()).expect("few columns"));
    for name in names {
        body.put_slice(name.as_bytes());
        body.put_u8(0);
        body.put_i32(16_400); // table OID
        body.put_i16(3); // column number
        body.put_i32(23); // int4
        body.put_i16(4); // type size
        body.put_i32(-1); // type modifier
        body.put_i16(0); // text format
    }
    tagged(b'T', &body, buf);
}

/// DataRow (`D`) with the given column values.
fn data_row(values: &[&[u8]], buf: &mut BytesMut) {
    let mut body = BytesMut::new();
    body.put_i16(i16::try_from(values.len()).expect("few columns"));
    for value in values {
        body.put_i32(i32::try_from(value.len()).expect("bench values are small"));
        body.put_slice(value);
    }
    tagged(b'D', &body, buf);
}

/// A one-column DataRow whose whole message (header included) is `wire_len` bytes.
fn data_row_of_len(wire_len: usize, buf: &mut BytesMut) {
    // 5 header + 2 column count + 4 column length.
    let value_len = wire_len
        .checked_sub(11)
        .expect("a row of at least 11 bytes");
    let value = vec![b'x'; value_len];
    data_row(&[&value], buf);
}

fn command_complete(tag: &str, buf: &mut BytesMut) {
    pg::encode_command_complete(tag, buf).expect("a command tag without NUL");
}

/// The backend's reply to one `pgbench -S` transaction in simple protocol: RowDescription,
/// DataRow, CommandComplete, ReadyForQuery (66 bytes).
fn pgbench_simple_reply() -> Input {
    let mut input = Input::new();
    input.push(1, |b| row_description(&["abalance"], b));
    input.push(1, |b| data_row(&[b"0"], b));
    input.push(1, |b| command_complete("SELECT 1", b));
    input.push(1, |b| pg::encode_ready_for_query(TxStatus::Idle, b));
    input
}

/// The reply with `-M extended`: ParseComplete and BindComplete, then the simple reply.
fn pgbench_extended_reply() -> Input {
    let mut input = Input::new();
    input.push(1, |b| {
        pg::encode_empty_reply(b'1', b).expect("a body-less tag")
    });
    input.push(1, |b| {
        pg::encode_empty_reply(b'2', b).expect("a body-less tag")
    });
    input.repeat(&pgbench_simple_reply(), 1)
}

/// A query result of about [`STREAM_BYTES`]: RowDescription, DataRows of `row_len` wire bytes
/// each, CommandComplete, ReadyForQuery.
fn result_stream(row_len: usize) -> Input {
    let rows = STREAM_BYTES.div_ceil(row_len);
    let mut row = Input::new();
    row.push(1, |b| data_row_of_len(row_len, b));
    let mut input = Input::new();
    input.push(1, |b| row_description(&["payload"], b));
    let mut input = input.repeat(&row, rows);
    input.push(1, |b| command_complete(&format!("SELECT {rows}"), b));
    input.push(1, |b| pg::encode_ready_for_query(TxStatus::Idle, b));
    input
}

/// One `pgbench -S` request in simple protocol: Query.
fn simple_query() -> Input {
    let mut input = Input::new();
    input.push(1, |b| {
        pg::encode_query(PGBENCH_SQL, b).expect("SQL without NUL")
    });
    input
}

/// One `pgbench -S -M extended` request: Parse, Bind, Describe (portal), Execute, Sync.
fn extended_batch() -> Input {
    let mut input = Input::new();
    input.push(5, |b| {
        frontend::parse("", PGBENCH_SQL_EXTENDED, [], b).expect("Parse encodes");
        // `BindError` is not `Debug`, hence no `expect` on it.
        let bound = frontend::bind(
            "",
            "",
            [0],
            [&b"12345"[..]],
            |value, b| {
                b.put_slice(value);
                Ok(postgres_protocol::IsNull::No)
            },
            [0],
            b,
        );
        assert!(bound.is_ok(), "Bind encodes");
        frontend::describe(b'P', "", b).expect("Describe encodes");
        frontend::execute("", 0, b).expect("Execute encodes");
        frontend::sync(b);
    });
    input
}

/// The streams of the chunked benchmarks, all about [`STREAM_BYTES`] long.
#[derive(Clone, Copy, Debug)]
enum Stream {
    /// Back-to-back `pgbench -S` replies (simple protocol).
    PgbenchReplies,
    /// A result of 20-byte DataRows.
    Rows20,
    /// A result of 1000-byte DataRows.
    Rows1000,
    /// A result of 60 KiB DataRows: below the 64 KiB stream threshold, so each is held in the
    /// read buffer until it is whole (rescanned after every read until then).
    Rows60K,
    /// A result of 100 KiB DataRows: above the 64 KiB stream threshold, so they are passed
    /// through in pieces instead of being waited for whole.
    Rows100K,
    /// Back-to-back `pgbench -S -M extended` requests, scanned as from a client.
    ClientExtended,
}

impl Stream {
    fn input(self) -> Input {
        let reps = |unit: Input| {
            let times = STREAM_BYTES.div_ceil(unit.bytes.len());
            Input::new().repeat(&unit, times)
        };
        match self {
            Stream::PgbenchReplies => reps(pgbench_simple_reply()),
            Stream::Rows20 => result_stream(20),
            Stream::Rows1000 => result_stream(1000),
            Stream::Rows60K => result_stream(60 * 1024),
            Stream::Rows100K => result_stream(100 * 1024),
            Stream::ClientExtended => reps(extended_batch()),
        }
    }

    fn scanner(self) -> Scanner {
        match self {
            Stream::ClientExtended => Scanner::for_client(MAX_MESSAGE),
            _ => Scanner::new(MAX_MESSAGE),
        }
    }
}

// ---- the relay's loop ----

/// What a scan saw: enough to check the input and to keep the work from being optimized away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tally {
    /// Whole messages ([`Step::Message`]).
    messages: usize,
    /// Streamed messages (the [`Step::Passthrough`] that starts one).
    streamed: usize,
    /// Sum of the tags of whole messages.
    tags: usize,
}

/// Walks `buf` as the relay does: `next` from `pos`, moving to each step's end, until
/// `NeedMore`. Returns where it stopped (the relay forwards and consumes `buf[..pos]`).
fn scan(scanner: &mut Scanner, buf: &[u8], mut pos: usize, tally: &mut Tally) -> usize {
    loop {
        let between_messages = !scanner.in_message();
        match scanner.next(buf, pos) {
            Ok(Step::Message { tag, end, .. }) => {
                tally.messages += 1;
                tally.tags += usize::from(tag);
                pos = end;
            }
            Ok(Step::Passthrough { end, .. }) => {
                tally.streamed += usize::from(between_messages);
                pos = end;
            }
            Ok(Step::NeedMore) => return pos,
            Err(err) => panic!("bench input is valid: {err}"),
        }
    }
}

/// Scans one whole buffer from a fresh scanner.
fn scan_whole(mut scanner: Scanner, buf: &[u8]) -> Tally {
    let mut tally = Tally::default();
    let pos = scan(&mut scanner, buf, 0, &mut tally);
    debug_assert_eq!(pos, buf.len());
    tally
}

/// Feeds `stream` through a read buffer `chunk` bytes at a time as the backend→client relay
/// loop does: append what the socket delivered, scan from the start, consume what was scanned
/// (an incomplete message stays and is scanned again after the next read).
fn scan_chunked(mut scanner: Scanner, stream: &[u8], chunk: usize, buf: &mut BytesMut) -> Tally {
    buf.clear();
    let mut tally = Tally::default();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        let pos = scan(&mut scanner, buf, 0, &mut tally);
        buf.advance(pos);
    }
    assert!(buf.is_empty(), "the stream ends on a message boundary");
    tally
}

/// Checks that scanning `input` sees every message once, whole or streamed.
fn check(input: &Input, tally: Tally) {
    assert_eq!(
        tally.messages + tally.streamed,
        input.messages,
        "scanner saw every message: {tally:?}"
    );
}

/// Checks that `scanner()` sees every message of `input` once, then benchmarks scanning it
/// whole with a fresh scanner per iteration.
fn bench_scan_whole(bencher: Bencher, input: &Input, scanner: fn() -> Scanner) {
    check(input, scan_whole(scanner(), &input.bytes));
    input
        .counters(bencher)
        .bench(|| scan_whole(scanner(), black_box(&input.bytes)));
}

/// The relay's backend-side scanner.
fn backend_scanner() -> Scanner {
    Scanner::new(MAX_MESSAGE)
}

/// The relay's client-side scanner.
fn client_scanner() -> Scanner {
    Scanner::for_client(MAX_MESSAGE)
}

/// Backend → client: whole buffers of replies, as one socket read would hold them.
mod backend {
    use super::*;

    /// `replies` back-to-back `pgbench -S` replies (1 = one transaction per read, as pgbench
    /// with one client does; 64 = a pipelining or busy-connection read).
    #[divan::bench(args = [1, 64])]
    fn pgbench_simple_reply(bencher: Bencher, replies: usize) {
        let input = Input::new().repeat(&super::pgbench_simple_reply(), replies);
        bench_scan_whole(bencher, &input, backend_scanner);
    }

    /// The same with `-M extended` (ParseComplete, BindComplete first).
    #[divan::bench(args = [1, 64])]
    fn pgbench_extended_reply(bencher: Bencher, replies: usize) {
        let input = Input::new().repeat(&super::pgbench_extended_reply(), replies);
        bench_scan_whole(bencher, &input, backend_scanner);
    }

    /// A 256 KiB result of DataRows of `row_len` wire bytes, all in one buffer.
    #[divan::bench(args = [20, 1000])]
    fn result_stream(bencher: Bencher, row_len: usize) {
        let input = super::result_stream(row_len);
        bench_scan_whole(bencher, &input, backend_scanner);
    }
}

/// Client → backend: request streams, scanned with `Scanner::for_client`.
mod client {
    use super::*;

    /// `requests` back-to-back `pgbench -S` Query messages.
    #[divan::bench(args = [1, 64])]
    fn simple_query(bencher: Bencher, requests: usize) {
        let input = Input::new().repeat(&super::simple_query(), requests);
        bench_scan_whole(bencher, &input, client_scanner);
    }

    /// `requests` back-to-back Parse/Bind/Describe/Execute/Sync batches.
    #[divan::bench(args = [1, 64])]
    fn extended_batch(bencher: Bencher, requests: usize) {
        let input = Input::new().repeat(&super::extended_batch(), requests);
        bench_scan_whole(bencher, &input, client_scanner);
    }
}

/// Streams of about 256 KiB delivered 8 KiB at a time, so messages straddle reads: the cost of
/// partial frames (rescanning an incomplete header, carrying its bytes over) and of the
/// `BytesMut` append/consume the relay does around the scan.
mod chunked {
    use super::*;

    const STREAMS: [Stream; 6] = [
        Stream::PgbenchReplies,
        Stream::Rows20,
        Stream::Rows1000,
        Stream::Rows60K,
        Stream::Rows100K,
        Stream::ClientExtended,
    ];

    /// The relay's loop: append a chunk, scan, consume.
    #[divan::bench(args = STREAMS)]
    fn scan_8k(bencher: Bencher, stream: Stream) {
        let input = stream.input();
        let mut buf = BytesMut::with_capacity(4 * CHUNK);
        check(
            &input,
            scan_chunked(stream.scanner(), &input.bytes, CHUNK, &mut buf),
        );
        input.counters(bencher).bench_local(|| {
            scan_chunked(stream.scanner(), black_box(&input.bytes), CHUNK, &mut buf)
        });
    }

    /// Baseline for `scan_8k`: the same buffer appends and consumes with no scanning
    /// (everything appended is consumed at once, so nothing is carried over).
    #[divan::bench(args = STREAMS)]
    fn copy_only_8k(bencher: Bencher, stream: Stream) {
        let input = stream.input();
        let mut buf = BytesMut::with_capacity(4 * CHUNK);
        input.counters(bencher).bench_local(|| {
            buf.clear();
            for piece in black_box(&input.bytes).chunks(CHUNK) {
                buf.extend_from_slice(piece);
                let n = black_box(buf.len());
                buf.advance(n);
            }
        });
    }
}

/// The `frame.rs` helpers, which the proxy uses outside the relay (login, Suture's own queries).
mod frame {
    use super::*;

    const STREAMS: [Stream; 3] = [Stream::PgbenchReplies, Stream::Rows20, Stream::Rows1000];

    /// `parse_header` over every message of a whole buffer.
    #[divan::bench(args = STREAMS)]
    fn parse_header(bencher: Bencher, stream: Stream) {
        let input = stream.input();
        input.counters(bencher).bench(|| {
            let buf = black_box(&input.bytes[..]);
            let (mut pos, mut tags) = (0, 0usize);
            while let Some(header) =
                pg::parse_header(&buf[pos..], MAX_MESSAGE).expect("valid headers")
            {
                tags += usize::from(header.tag);
                pos += header.len;
            }
            tags
        });
    }

    /// `split_message` until the buffer is empty: a `Bytes` per message (refcount, no copy).
    #[divan::bench(args = STREAMS)]
    fn split_message(bencher: Bencher, stream: Stream) {
        let input = stream.input();
        input
            .counters(bencher)
            .with_inputs(|| BytesMut::from(&input.bytes[..]))
            .bench_local_values(|mut buf| {
                let mut tags = 0usize;
                while let Some(message) =
                    pg::split_message(&mut buf, MAX_MESSAGE).expect("valid messages")
                {
                    tags += usize::from(message.tag);
                }
                tags
            });
    }
}

/// The Parse body parser, which the client→backend relay runs on every Parse it scans.
mod parse {
    use super::*;

    /// The query text of the Parse.
    #[derive(Clone, Copy, Debug)]
    enum Sql {
        /// `pgbench -S -M extended`'s query (52 bytes).
        Pgbench,
        /// A 4 KiB query, as ORMs send: shows the per-byte cost of the C-string and UTF-8 scans.
        Long4K,
    }

    /// `parse_parse_message` on one Parse body.
    #[divan::bench(args = [Sql::Pgbench, Sql::Long4K])]
    fn parse_message(bencher: Bencher, sql: Sql) {
        let text = match sql {
            Sql::Pgbench => PGBENCH_SQL_EXTENDED.to_owned(),
            Sql::Long4K => {
                let pad = "x".repeat(4096 - PGBENCH_SQL_EXTENDED.len() - 6);
                format!("{PGBENCH_SQL_EXTENDED} /*{pad}*/")
            }
        };
        let mut buf = BytesMut::new();
        frontend::parse("", &text, [], &mut buf).expect("Parse encodes");
        let body = &buf[pg::HEADER_LEN..];
        bencher
            .counter(ItemsCount::new(1usize))
            .counter(BytesCount::new(buf.len()))
            .bench(|| pg::parse_parse_message(black_box(body)).expect("a valid Parse"));
    }
}
