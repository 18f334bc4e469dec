//! Fuzz target `mysql_framing`: MySQL packet framing of `suture-protocol` (`mysql::parse_header`,
//! `split_packet`, `split_logical_packet`), the command-phase `mysql::Scanner` fed the way the
//! relay feeds it, and `mysql::Reply` fed the packets the scanner returns whole.
//!
//! Input: an 8-byte setup, then the stream.
//! - byte 0, bits 0-1: `Scanner::new` (0), `Scanner::with_stream_threshold` (1),
//!   `Scanner::without_streaming` (2 and 3); bit 2: repair the stream into valid packets first
//!   (lengths cut to what is left, and to the limit when the scanner does not stream); bits 3-7:
//!   the command byte of the `Reply` (COM_QUERY, COM_STMT_EXECUTE, ... by index);
//! - byte 1: the payload limit (0..=7 as is, up to 0xef times 8, 0xf0..=0xff 64 KiB to 32 MiB);
//!   byte 2: the stream threshold of kind 1 (times 4; 0xff the default 64 KiB);
//! - bytes 3..8: read sizes, cycled (each byte + 1).
//!
//! Checked, besides "never panics": `parse_header` agrees with a model; `split_packet` and
//! `split_logical_packet` return the stream's bytes in order, never a payload over the limit,
//! consume nothing on `Ok(None)` or error, and check continuation sequence ids. For the scanner,
//! on every step: ranges start where the last ended and lie in the buffer (so together they are
//! exactly the bytes consumed); a `Message` is a whole packet within the limit; a streamed
//! packet's first piece holds its header and `min(len, PEEK_LEN)` payload bytes and its pieces
//! add up to its length; `Part` follows the continuation rule; `NeedMore` and errors happen only
//! where a model of the header says they must. Differentially, the stream scanned in pieces
//! gives the same packets, byte count and error as scanned whole, and a repaired stream gives
//! exactly the packets it was built from.

#![no_main]

use bytes::{Buf, BytesMut};
use libfuzzer_sys::fuzz_target;
use suture_protocol::mysql::{
    self, command, Next, Part, Reply, ReplyOptions, Scanner, Step, DEFAULT_STREAM_THRESHOLD,
    HEADER_LEN, MAX_PAYLOAD_LEN, PEEK_LEN,
};
use suture_protocol::ProtocolError;

const SETUP_LEN: usize = 8;
const COMMANDS: [u8; 12] = [
    command::COM_QUERY,
    command::COM_STMT_EXECUTE,
    command::COM_STMT_PREPARE,
    command::COM_STMT_FETCH,
    command::COM_PING,
    command::COM_SET_OPTION,
    command::COM_CHANGE_USER,
    command::COM_STATISTICS,
    command::COM_FIELD_LIST,
    command::COM_STMT_CLOSE,
    command::COM_INIT_DB,
    command::COM_RESET_CONNECTION,
];

fuzz_target!(|data: &[u8]| {
    let Some((setup, stream)) = data.split_first_chunk::<SETUP_LEN>() else {
        return;
    };
    let setup = Setup::new(setup);
    check_split(stream, setup.max);
    let (input, truth) = if setup.repair {
        let (input, truth) = repair(&setup, stream);
        (input, Some(truth))
    } else {
        (stream.to_vec(), None)
    };
    let whole = run(&setup, &input, false);
    let pieces = run(&setup, &input, true);
    assert_eq!(
        pieces.error, whole.error,
        "error differs when read in pieces"
    );
    assert_eq!(pieces.delivered, whole.delivered, "bytes returned differ");
    let key = |t: &Trace| {
        t.packets
            .iter()
            .map(|p| (p.seq, p.start, p.len, p.part))
            .collect::<Vec<_>>()
    };
    assert_eq!(key(&pieces), key(&whole), "packets differ");
    if let Some(truth) = truth {
        assert_eq!(whole.error, None, "a valid stream was refused");
        assert_eq!(
            whole.delivered,
            input.len(),
            "a valid stream was not returned whole"
        );
        let got: Vec<_> = whole
            .packets
            .iter()
            .map(|p| (p.seq, p.start, p.len))
            .collect();
        assert_eq!(got, truth, "the packets of a valid stream");
    }
    check_reply(&setup, &input, &whole);
});

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Default,
    Threshold,
    Whole,
}

#[derive(Debug)]
struct Setup {
    kind: Kind,
    max: usize,
    threshold: usize,
    reads: [u8; 5],
    repair: bool,
    command: u8,
}

impl Setup {
    fn new(b: &[u8; SETUP_LEN]) -> Setup {
        let kind = match b[0] & 3 {
            0 => Kind::Default,
            1 => Kind::Threshold,
            _ => Kind::Whole,
        };
        let max = match b[1] {
            m @ 0..=7 => usize::from(m),
            m @ 8..=0xef => usize::from(m) * 8,
            m => 1 << (16 + (m - 0xf0) as usize % 10),
        };
        let threshold = match (kind, b[2]) {
            (Kind::Threshold, 0xff) | (Kind::Default, _) => DEFAULT_STREAM_THRESHOLD,
            (Kind::Threshold, t) => usize::from(t) * 4,
            (Kind::Whole, _) => usize::MAX,
        };
        Setup {
            kind,
            max,
            threshold,
            reads: [b[3], b[4], b[5], b[6], b[7]],
            repair: b[0] & 4 != 0,
            command: COMMANDS[usize::from(b[0] >> 3) % COMMANDS.len()],
        }
    }

    fn scanner(&self) -> Scanner {
        let s = match self.kind {
            Kind::Default => Scanner::new(self.max),
            Kind::Threshold => Scanner::with_stream_threshold(self.max, self.threshold),
            Kind::Whole => Scanner::without_streaming(self.max),
        };
        assert_eq!(
            (s.max_packet_size(), s.stream_threshold()),
            (self.max, self.threshold)
        );
        s
    }

    fn streams(&self) -> bool {
        self.kind != Kind::Whole
    }
}

/// The header at `buf[pos..]`: (payload length, seq).
fn header(buf: &[u8], pos: usize) -> Option<(usize, u8)> {
    let h = buf.get(pos..pos + HEADER_LEN)?;
    Some((
        usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16,
        h[3],
    ))
}

/// `parse_header`, `split_packet` and `split_logical_packet` over the raw stream.
fn check_split(stream: &[u8], max: usize) {
    let expected = header(stream, 0).map(|(len, seq)| (len, seq));
    match (mysql::parse_header(stream, max), expected) {
        (Ok(None), None) => {}
        (Ok(Some(h)), Some((len, seq))) => {
            assert!(h.payload_len == len && h.seq == seq && len <= max)
        }
        (Err(ProtocolError::MessageTooLarge { len, max: m }), Some((l, _))) => {
            assert!(len == l && m == max && l > max)
        }
        (r, e) => panic!("parse_header {r:?} where the model says {e:?}"),
    }
    let mut buf = BytesMut::from(stream);
    let mut offset = 0;
    loop {
        let before = buf.len();
        match mysql::split_packet(&mut buf, max) {
            Ok(Some(p)) => {
                assert!(p.payload.len() <= max);
                assert_eq!(
                    &p.payload[..],
                    &stream[offset + HEADER_LEN..offset + HEADER_LEN + p.payload.len()]
                );
                offset += HEADER_LEN + p.payload.len();
                assert_eq!(buf.len(), stream.len() - offset);
            }
            Ok(None) | Err(_) => {
                assert_eq!(buf.len(), before, "consumed without a packet");
                break;
            }
        }
    }
    let mut buf = BytesMut::from(stream);
    let mut offset = 0;
    while let Ok(Some(p)) = mysql::split_logical_packet(&mut buf, max) {
        assert!(p.payload.len() <= max);
        let consumed = stream.len() - offset - buf.len();
        let parts = consumed - p.payload.len();
        assert_eq!(parts % HEADER_LEN, 0);
        assert_eq!(
            p.last_seq,
            p.seq.wrapping_add((parts / HEADER_LEN - 1) as u8)
        );
        offset += consumed;
    }
}

/// Rewrites length fields so `raw` becomes a stream of valid, whole packets (cut to what is
/// left, and to the limit unless streamed; never 0xFFFFFF so no continuation is claimed).
fn repair(setup: &Setup, raw: &[u8]) -> (Vec<u8>, Vec<(u8, usize, usize)>) {
    let mut out = Vec::with_capacity(raw.len());
    let mut truth = Vec::new();
    let mut o = 0;
    while let Some((len, seq)) = header(raw, o) {
        let room = raw.len() - o - HEADER_LEN;
        let mut cap = room.min(MAX_PAYLOAD_LEN - 1);
        if !setup.streams() {
            cap = cap.min(setup.max);
        }
        let len = len.min(cap);
        truth.push((seq, out.len(), HEADER_LEN + len));
        out.extend_from_slice(&(len as u32).to_le_bytes()[..3]);
        out.push(seq);
        out.extend_from_slice(&raw[o + HEADER_LEN..o + HEADER_LEN + len]);
        o += HEADER_LEN + len;
    }
    (out, truth)
}

#[derive(Clone, Copy, Debug)]
struct Seen {
    seq: u8,
    start: usize,
    len: usize,
    part: Part,
    whole: bool,
}

#[derive(Debug, Default)]
struct Trace {
    packets: Vec<Seen>,
    delivered: usize,
    error: Option<(usize, ProtocolError)>,
}

fn run(setup: &Setup, input: &[u8], in_pieces: bool) -> Trace {
    let mut scanner = setup.scanner();
    let mut trace = Trace::default();
    let mut buf = BytesMut::new();
    let (mut base, mut pos, mut fed, mut round) = (0usize, 0usize, 0usize, 0usize);
    let mut left = 0usize;
    // The model's continuation state: Some(seq) when the last header was continued.
    let mut continued: Option<u8> = None;
    loop {
        let n = if in_pieces {
            usize::from(setup.reads[round % 5]) + 1
        } else {
            input.len()
        };
        let n = n.min(input.len() - fed);
        buf.extend_from_slice(&input[fed..fed + n]);
        fed += n;
        loop {
            assert_eq!(scanner.in_packet(), left > 0);
            assert_eq!(scanner.remaining(), left);
            assert_eq!(scanner.in_logical_packet(), continued.is_some());
            assert_eq!(
                scanner.clone().next(&buf, buf.len() + 1),
                Ok(Step::NeedMore)
            );
            let avail = buf.len() - pos;
            match scanner.next(&buf, pos) {
                Ok(Step::Message {
                    seq,
                    part,
                    start,
                    end,
                }) => {
                    assert_eq!((left, start), (0, pos));
                    let (len, hseq) = header(&buf, start).expect("a message without a header");
                    assert_eq!((hseq, end - start), (seq, HEADER_LEN + len));
                    assert!(len <= setup.max, "a Message over the limit");
                    assert_eq!(part, Part::new(continued.is_some(), len == MAX_PAYLOAD_LEN));
                    continued = (len == MAX_PAYLOAD_LEN).then_some(seq);
                    trace.packets.push(Seen {
                        seq,
                        start: base + start,
                        len: end - start,
                        part,
                        whole: true,
                    });
                    trace.delivered += end - start;
                    pos = end;
                }
                Ok(Step::Passthrough {
                    seq,
                    part,
                    start,
                    end,
                    first,
                }) => {
                    assert_eq!(start, pos);
                    assert!(end > start && end <= buf.len());
                    assert!(setup.streams(), "streamed without streaming");
                    assert_eq!(first, left == 0);
                    if first {
                        let (len, hseq) = header(&buf, start).expect("streamed without a header");
                        assert_eq!(hseq, seq);
                        let total = HEADER_LEN + len;
                        assert!(len > setup.max || (avail < total && len > setup.threshold));
                        assert!(
                            end - start >= HEADER_LEN + len.min(PEEK_LEN),
                            "first piece too short"
                        );
                        assert_eq!(end - start, avail.min(total));
                        assert_eq!(part, Part::new(continued.is_some(), len == MAX_PAYLOAD_LEN));
                        continued = (len == MAX_PAYLOAD_LEN).then_some(seq);
                        left = total - (end - start);
                        trace.packets.push(Seen {
                            seq,
                            start: base + start,
                            len: total,
                            part,
                            whole: false,
                        });
                    } else {
                        assert_eq!(end - start, avail.min(left));
                        left -= end - start;
                    }
                    trace.delivered += end - start;
                    pos = end;
                }
                Ok(Step::NeedMore) => {
                    assert!(
                        avail == 0 || left == 0,
                        "NeedMore with streamed bytes at hand"
                    );
                    if let Some((len, seq)) = header(&buf, pos) {
                        if let Some(prev) = continued {
                            assert_eq!(seq, prev.wrapping_add(1), "NeedMore on a bad continuation");
                        }
                        assert!(len <= setup.max || setup.streams());
                        assert!(avail < HEADER_LEN + len, "NeedMore on a whole packet");
                        if setup.streams() && (len > setup.max || len > setup.threshold) {
                            assert!(avail < HEADER_LEN + len.min(PEEK_LEN));
                        }
                    }
                    break;
                }
                Err(e) => {
                    assert_eq!(left, 0, "an error in the middle of a packet");
                    let (len, seq) = header(&buf, pos).expect("an error without a header");
                    let expected = match continued {
                        Some(prev) if seq != prev.wrapping_add(1) => ProtocolError::OutOfSequence {
                            expected: prev.wrapping_add(1),
                            got: seq,
                        },
                        _ => {
                            assert!(
                                !setup.streams() && len > setup.max,
                                "unexpected error {e:?}"
                            );
                            ProtocolError::MessageTooLarge {
                                len,
                                max: setup.max,
                            }
                        }
                    };
                    assert_eq!(e, expected);
                    trace.error = Some((base + pos, e));
                    return trace;
                }
            }
        }
        buf.advance(pos);
        base += pos;
        pos = 0;
        round += 1;
        if fed == input.len() {
            break;
        }
    }
    assert_eq!(trace.delivered, base);
    trace
}

/// Feeds the packets the scanner returned whole to a `Reply` for the setup's command, as the
/// backend relay would, and checks it stays consistent.
fn check_reply(setup: &Setup, input: &[u8], trace: &Trace) {
    let request = [setup.command, 1, 0, 0, 0, setup.reads[0] & 1];
    let opts = ReplyOptions::from_capabilities(
        u64::from(setup.reads[1]) << 24 | u64::from(setup.reads[2]) << 32,
    );
    let Ok(mut reply) = Reply::new(&request, 1, opts) else {
        return;
    };
    for p in &trace.packets {
        let payload_len = p.len - HEADER_LEN;
        let head_end = (p.start + HEADER_LEN + payload_len.min(PEEK_LEN)).min(input.len());
        let head = &input[p.start + HEADER_LEN..head_end];
        if !p.whole && head.len() < payload_len.min(PEEK_LEN) {
            break;
        }
        let result = match reply.next() {
            Next::Client => reply.feed_client(p.seq, payload_len),
            _ => reply.feed(p.seq, payload_len, head),
        };
        match result {
            Ok(seen) => {
                assert_eq!(seen.next, reply.next());
                if let Next::Done(end) = seen.next {
                    assert_eq!(reply.end(), Some(end));
                    break;
                }
            }
            Err(_) => break,
        }
    }
}
