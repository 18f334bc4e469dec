//! Fuzz target `scanner`: the command-phase scanner of `suture-protocol` (`pg::Scanner`), fed
//! the way the relay feeds it: reads arriving in pieces, the buffer consumed after each round.
//!
//! Input: an 8-byte setup, then the stream.
//! - byte 0, bits 0-1: `Scanner::new` (backend side), `Scanner::for_client`,
//!   `Scanner::with_stream_threshold` (2), or a client scanner with a stream threshold that also
//!   streams large requests (3: `for_client_with_stream_threshold(..).streaming_requests()`);
//!   bit 2: repair the stream into valid messages
//!   first (see [`repair`]); bit 3: consume the buffer like the client relay (up to the end of
//!   some step of the round, holding the rest) instead of like the backend relay (up to the last
//!   step's end);
//! - byte 1: `max_message_size` (0..=7 as is, up to 0xef times 8, 0xf0..=0xfe 64 KiB to 1 GiB,
//!   0xff `usize::MAX`); byte 2: the stream threshold of kinds 2 and 3 (times 4, 0xfe
//!   the default 64 KiB, 0xff `usize::MAX`);
//! - bytes 3..8: read sizes, cycled (each byte + 1); in the client-relay mode they also pick how
//!   much is consumed.
//!
//! Checked, besides "never panics", on every step: ranges start where the last one ended and lie
//! in the buffer, so together they are exactly the bytes consumed, in order and without overlap;
//! a `Message` is a whole message of at most `max_message_size` bytes; a `Passthrough` is a
//! streamable message that had to be streamed, and its pieces add up to its length; `NeedMore`
//! and errors happen only where a model of the header says they must; scanning stops at an error.
//! Then, differentially: the stream scanned in pieces gives the same messages (tag, offset,
//! length), the same byte count and the same error as the whole stream scanned at once, and a
//! repaired stream gives exactly the messages it was built from.

#![no_main]

use bytes::{Buf, BytesMut};
use libfuzzer_sys::fuzz_target;
use suture_protocol::pg::{Scanner, Step, DEFAULT_STREAM_THRESHOLD, HEADER_LEN};
use suture_protocol::ProtocolError;

const SETUP_LEN: usize = 8;

fuzz_target!(|data: &[u8]| {
    let Some((setup, stream)) = data.split_first_chunk::<SETUP_LEN>() else {
        return;
    };
    let setup = Setup::new(setup);
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
    assert_eq!(pieces.in_message, whole.in_message);
    assert_eq!(
        pieces.messages.len(),
        whole.messages.len(),
        "message count differs"
    );
    for (p, w) in pieces.messages.iter().zip(&whole.messages) {
        assert_eq!(
            (p.tag, p.start, p.len),
            (w.tag, w.start, w.len),
            "messages differ"
        );
        // Read in pieces, more is streamed, never less.
        assert!(
            p.streamed || !w.streamed,
            "streamed whole but not in pieces: {w:?}"
        );
    }
    if let Some(truth) = truth {
        assert_eq!(whole.error, None, "a valid stream was refused");
        assert_eq!(
            whole.delivered,
            input.len(),
            "a valid stream was not returned whole"
        );
        assert!(!whole.in_message);
        let got: Vec<_> = whole
            .messages
            .iter()
            .map(|m| (m.tag, m.start, m.len))
            .collect();
        assert_eq!(got, truth, "the messages of a valid stream");
    }
});

#[derive(Clone, Copy, Debug)]
enum Kind {
    Backend,
    Client,
    Threshold,
    ClientStreaming,
}

#[derive(Debug)]
struct Setup {
    kind: Kind,
    max: usize,
    threshold: usize,
    reads: [u8; 5],
    repair: bool,
    hold: bool,
}

impl Setup {
    fn new(b: &[u8; SETUP_LEN]) -> Setup {
        let kind = match b[0] & 3 {
            0 => Kind::Backend,
            1 => Kind::Client,
            2 => Kind::Threshold,
            _ => Kind::ClientStreaming,
        };
        let max = match b[1] {
            m @ 0..=7 => usize::from(m),
            m @ 8..=0xef => usize::from(m) * 8,
            0xff => usize::MAX,
            m => 1 << (16 + (m - 0xf0)),
        };
        let threshold = match (kind, b[2]) {
            (Kind::Threshold | Kind::ClientStreaming, 0xff) => usize::MAX,
            (Kind::Threshold | Kind::ClientStreaming, 0xfe) => DEFAULT_STREAM_THRESHOLD,
            (Kind::Threshold | Kind::ClientStreaming, t) => usize::from(t) * 4,
            _ => DEFAULT_STREAM_THRESHOLD,
        };
        Setup {
            kind,
            max,
            threshold,
            reads: [b[3], b[4], b[5], b[6], b[7]],
            repair: b[0] & 4 != 0,
            hold: b[0] & 8 != 0,
        }
    }

    fn scanner(&self) -> Scanner {
        let s = match self.kind {
            Kind::Backend => Scanner::new(self.max),
            Kind::Client => Scanner::for_client(self.max),
            Kind::Threshold => Scanner::with_stream_threshold(self.max, self.threshold),
            Kind::ClientStreaming => {
                Scanner::for_client_with_stream_threshold(self.max, self.threshold)
                    .streaming_requests()
            }
        };
        assert_eq!(s.max_message_size(), self.max);
        assert_eq!(s.stream_threshold(), self.threshold);
        assert!(!s.in_message());
        s
    }

    /// Whether messages with this tag are exempt from `max_message_size` (they are never
    /// buffered whole).
    fn exempt(&self, tag: u8) -> bool {
        tag == b'd' || (tag == b'D' && !matches!(self.kind, Kind::Client | Kind::ClientStreaming))
    }

    /// Whether messages with this tag are streamed when large and incomplete.
    fn streamable(&self, tag: u8) -> bool {
        self.exempt(tag)
            || matches!(self.kind, Kind::ClientStreaming)
                && matches!(tag, b'Q' | b'P' | b'B' | b'F')
    }

    fn read_byte(&self, round: usize) -> u8 {
        self.reads[round % self.reads.len()]
    }
}

/// Rewrites length fields so that `raw` becomes a stream of valid, whole messages for `setup`
/// (a body is cut to what is left of the input, and to the limit unless its tag is streamed);
/// a tail shorter than a header is dropped. Returns the stream and its (tag, offset, length)s.
fn repair(setup: &Setup, raw: &[u8]) -> (Vec<u8>, Vec<(u8, usize, usize)>) {
    let mut out = Vec::with_capacity(raw.len());
    let mut truth = Vec::new();
    let mut o = 0;
    while raw.len() - o >= HEADER_LEN {
        let mut tag = raw[o];
        let field = u32::from_be_bytes([raw[o + 1], raw[o + 2], raw[o + 3], raw[o + 4]]);
        if !setup.exempt(tag) && setup.max < HEADER_LEN {
            // No message but a streamed one fits such a limit.
            tag = b'd';
        }
        let room = raw.len() - o - HEADER_LEN;
        let cap = if setup.exempt(tag) {
            room
        } else {
            room.min(setup.max - HEADER_LEN)
        };
        let body_len = (field.saturating_sub(4) as usize).min(cap);
        truth.push((tag, out.len(), HEADER_LEN + body_len));
        out.push(tag);
        out.extend_from_slice(&(body_len as u32 + 4).to_be_bytes());
        out.extend_from_slice(&raw[o + HEADER_LEN..o + HEADER_LEN + body_len]);
        o += HEADER_LEN + body_len;
    }
    (out, truth)
}

/// One message as the scanner returned it: whole, or streamed in pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    tag: u8,
    /// Offset in the input.
    start: usize,
    /// Whole length from its header, which for a streamed message may not all have arrived.
    len: usize,
    streamed: bool,
}

#[derive(Debug, Default)]
struct Trace {
    messages: Vec<Seen>,
    /// Bytes covered by the returned ranges.
    delivered: usize,
    /// The error and the input offset of the header it was found at.
    error: Option<(usize, ProtocolError)>,
    in_message: bool,
}

/// The header at `buf[pos..]`: (tag, 1 + length field), if there are 5 bytes.
fn header(buf: &[u8], pos: usize) -> Option<(u8, i64)> {
    let h = buf.get(pos..pos + HEADER_LEN)?;
    Some((
        h[0],
        i64::from(i32::from_be_bytes([h[1], h[2], h[3], h[4]])) + 1,
    ))
}

/// Scans `input` whole (one read) or in pieces of the setup's read sizes, consuming the buffer
/// after every round like the relay, and checks every step.
fn run(setup: &Setup, input: &[u8], in_pieces: bool) -> Trace {
    let mut scanner = setup.scanner();
    let mut trace = Trace::default();
    let mut buf = BytesMut::new();
    // Input offset of buf[0], scan position in buf, bytes of input fed so far.
    let (mut base, mut pos, mut fed) = (0, 0, 0);
    // The harness's own count of the streamed message's bytes still to come.
    let (mut stream_tag, mut stream_left) = (0u8, 0usize);
    let mut round = 0;
    loop {
        let n = if in_pieces {
            usize::from(setup.read_byte(round)) + 1
        } else {
            input.len()
        };
        let n = n.min(input.len() - fed);
        buf.extend_from_slice(&input[fed..fed + n]);
        fed += n;
        let mut ends = Vec::new();
        loop {
            let was_in = scanner.in_message();
            assert_eq!(was_in, stream_left > 0, "in_message() disagrees");
            assert_eq!(scanner.remaining(), stream_left, "remaining() disagrees");
            let avail = buf.len() - pos;
            // Past the end of the buffer there is never anything.
            assert_eq!(
                scanner.clone().next(&buf, buf.len() + 1),
                Ok(Step::NeedMore)
            );
            match scanner.next(&buf, pos) {
                Ok(Step::Message { tag, start, end }) => {
                    assert!(!was_in, "a whole message in the middle of a streamed one");
                    assert_eq!(start, pos, "a gap or an overlap before a message");
                    assert!(end <= buf.len() && end >= start + HEADER_LEN);
                    let len = end - start;
                    assert!(
                        len <= setup.max,
                        "Message of {len} bytes over {}",
                        setup.max
                    );
                    assert_eq!(header(&buf, start), Some((tag, len as i64)));
                    trace.messages.push(Seen {
                        tag,
                        start: base + start,
                        len,
                        streamed: false,
                    });
                    trace.delivered += len;
                    pos = end;
                    ends.push(end);
                }
                Ok(Step::Passthrough { tag, start, end }) => {
                    assert_eq!(start, pos, "a gap or an overlap before a piece");
                    assert!(end > start && end <= buf.len(), "piece out of the buffer");
                    let take = end - start;
                    if was_in {
                        assert_eq!(tag, stream_tag, "a piece changed tag");
                        assert_eq!(take, avail.min(stream_left), "a piece of the wrong size");
                        stream_left -= take;
                    } else {
                        assert!(
                            setup.streamable(tag),
                            "streamed a {:?} message",
                            tag as char
                        );
                        let (htag, full) = header(&buf, start).expect("streamed without header");
                        assert_eq!(htag, tag);
                        let full = usize::try_from(full).expect("a negative length streamed");
                        assert!(full >= HEADER_LEN, "a short length streamed");
                        assert!(
                            full > setup.max || (avail < full && full > setup.threshold),
                            "streamed a {full}-byte message that could be returned whole"
                        );
                        assert_eq!(take, avail.min(full), "first piece of the wrong size");
                        trace.messages.push(Seen {
                            tag,
                            start: base + start,
                            len: full,
                            streamed: true,
                        });
                        stream_tag = tag;
                        stream_left = full - take;
                    }
                    trace.delivered += take;
                    pos = end;
                    ends.push(end);
                }
                Ok(Step::NeedMore) => {
                    assert!(
                        avail == 0 || !was_in,
                        "NeedMore with streamed bytes at hand"
                    );
                    if let Some((tag, full)) = header(&buf, pos) {
                        assert!(full >= HEADER_LEN as i64, "NeedMore on a bad length");
                        let full = full as usize;
                        assert!(full > avail, "NeedMore on a whole message");
                        if setup.streamable(tag) {
                            assert!(full <= setup.max && full <= setup.threshold);
                        } else {
                            assert!(full <= setup.max, "NeedMore on a message over the limit");
                        }
                    }
                    break;
                }
                Err(e) => {
                    assert!(!was_in, "an error in the middle of a streamed message");
                    let (tag, full) = header(&buf, pos).expect("an error without a header");
                    let expected = if full < HEADER_LEN as i64 {
                        ProtocolError::MessageTooShort {
                            len: (full - 1) as i32,
                        }
                    } else {
                        assert!(!setup.exempt(tag), "an exempt tag over the limit");
                        ProtocolError::MessageTooLarge {
                            len: full as usize,
                            max: setup.max,
                        }
                    };
                    assert_eq!(e, expected);
                    assert_eq!(trace.delivered, base + pos, "ranges do not cover the bytes");
                    // Stop, as the relay does.
                    trace.error = Some((base + pos, e));
                    trace.in_message = scanner.in_message();
                    return trace;
                }
            }
        }
        // Consume what was forwarded: everything (backend relay) or up to the end of one step
        // of this round, keeping the rest for later (client relay holding a batch).
        let consumed = if setup.hold {
            match usize::from(setup.read_byte(round + 2)) % (ends.len() + 1) {
                0 => 0,
                i => ends[i - 1],
            }
        } else {
            pos
        };
        buf.advance(consumed);
        base += consumed;
        pos -= consumed;
        round += 1;
        if fed == input.len() {
            break;
        }
    }
    assert_eq!(
        trace.delivered,
        base + pos,
        "returned ranges do not cover the scanned bytes"
    );
    trace.in_message = scanner.in_message();
    trace
}
