//! The command-phase scanner: walks physical packets in a read buffer without copying or
//! allocating, streams large ones through in pieces (row data and LOAD DATA payloads can be
//! huge), and tells which physical packets make up one logical packet.

use super::frame::{peek_header, HEADER_LEN, MAX_PAYLOAD_LEN};
use crate::ProtocolError;

/// Default size above which an incomplete packet is streamed instead of waited for.
pub const DEFAULT_STREAM_THRESHOLD: usize = 64 * 1024;

/// Payload bytes the first piece of a streamed packet always carries (or the whole payload, if
/// shorter): enough for the command byte and statement id of a request, and for the header byte,
/// two length-encoded integers and the status flags of an OK packet.
pub const PEEK_LEN: usize = 32;

/// Where a physical packet stands in its logical packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// A logical packet of one physical packet.
    Whole,
    /// The first of several (its payload is [`MAX_PAYLOAD_LEN`] bytes).
    First,
    /// Neither first nor last.
    Middle,
    /// The last of several (shorter than [`MAX_PAYLOAD_LEN`], possibly empty).
    Last,
}

impl Part {
    /// From whether the packet continues an earlier one and whether the next one continues it.
    pub fn new(continuation: bool, continued: bool) -> Part {
        match (continuation, continued) {
            (false, false) => Part::Whole,
            (false, true) => Part::First,
            (true, true) => Part::Middle,
            (true, false) => Part::Last,
        }
    }

    /// Whether this packet starts a logical packet (its payload begins with the command or
    /// response header byte).
    pub fn starts_logical(self) -> bool {
        matches!(self, Part::Whole | Part::First)
    }

    /// Whether the logical packet ends with this packet.
    pub fn ends_logical(self) -> bool {
        matches!(self, Part::Whole | Part::Last)
    }
}

/// One result of [`Scanner::next`]. Ranges index the `buf` passed to that call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A whole physical packet lies at `buf[start..end]`; its payload is
    /// `buf[start + HEADER_LEN..end]`.
    Message {
        seq: u8,
        part: Part,
        start: usize,
        end: usize,
    },
    /// `buf[start..end]` are bytes of a streamed packet; forward them as they are. The piece
    /// with `first` set begins with the header and holds at least
    /// `min(payload length, PEEK_LEN)` payload bytes.
    Passthrough {
        seq: u8,
        part: Part,
        start: usize,
        end: usize,
        first: bool,
    },
    /// Nothing more can be returned from `buf[pos..]` until more bytes arrive.
    NeedMore,
}

/// Walks packets in a read buffer. Its state survives the caller consuming the buffer: it
/// counts the bytes of the current packet still to come, not offsets.
///
/// Limits: a packet returned as [`Step::Message`] never has a payload longer than
/// `max_packet_size` (checked from the header before waiting for the body). A longer packet, or
/// an incomplete one longer than the stream threshold, is returned as [`Step::Passthrough`]
/// pieces; a scanner made with [`Scanner::without_streaming`] refuses packets over the limit
/// instead. A continuation packet must carry the sequence id after its predecessor's.
#[derive(Clone, Debug)]
pub struct Scanner {
    max_packet_size: usize,
    stream_threshold: usize,
    streaming: bool,
    /// Bytes of the streamed packet not returned yet; 0 between packets.
    remaining: usize,
    /// Sequence id and part of the packet being streamed.
    streaming_seq: u8,
    streaming_part: Part,
    /// Whether the next header continues the logical packet of the previous one.
    continuation: bool,
    /// Sequence id of the last header read.
    last_seq: u8,
}

impl Scanner {
    /// A scanner with the default stream threshold (64 KiB).
    pub fn new(max_packet_size: usize) -> Scanner {
        Scanner::with_stream_threshold(max_packet_size, DEFAULT_STREAM_THRESHOLD)
    }

    /// A scanner that streams incomplete packets longer than `stream_threshold` bytes.
    pub fn with_stream_threshold(max_packet_size: usize, stream_threshold: usize) -> Scanner {
        Scanner {
            max_packet_size,
            stream_threshold,
            streaming: true,
            remaining: 0,
            streaming_seq: 0,
            streaming_part: Part::Whole,
            continuation: false,
            last_seq: 0,
        }
    }

    /// A scanner that returns every packet whole and refuses those over `max_packet_size`.
    pub fn without_streaming(max_packet_size: usize) -> Scanner {
        Scanner {
            streaming: false,
            ..Scanner::with_stream_threshold(max_packet_size, usize::MAX)
        }
    }

    /// The limit for packets returned whole (payload bytes).
    pub fn max_packet_size(&self) -> usize {
        self.max_packet_size
    }

    /// Size above which an incomplete packet is streamed (`usize::MAX` without streaming).
    pub fn stream_threshold(&self) -> usize {
        self.stream_threshold
    }

    /// True while in the middle of a streamed packet: the next bytes are not a header.
    pub fn in_packet(&self) -> bool {
        self.remaining > 0
    }

    /// Bytes of the streamed packet still to come (0 when not in one).
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// True when the last packet read was continued: the next header belongs to the same
    /// logical packet.
    pub fn in_logical_packet(&self) -> bool {
        self.continuation
    }

    /// The next step starting at `pos` in `buf`. Call repeatedly, advancing `pos` to the returned
    /// `end`, until [`Step::NeedMore`]. A `pos` at or past the end of `buf` is `NeedMore`.
    pub fn next(&mut self, buf: &[u8], pos: usize) -> Result<Step, ProtocolError> {
        let avail = buf.len().saturating_sub(pos);
        if avail == 0 {
            return Ok(Step::NeedMore);
        }
        if self.remaining > 0 {
            let take = avail.min(self.remaining);
            self.remaining -= take;
            return Ok(Step::Passthrough {
                seq: self.streaming_seq,
                part: self.streaming_part,
                start: pos,
                end: pos + take,
                first: false,
            });
        }
        let Some(header) = buf.get(pos..).and_then(peek_header) else {
            return Ok(Step::NeedMore);
        };
        if self.continuation {
            let expected = self.last_seq.wrapping_add(1);
            if header.seq != expected {
                return Err(ProtocolError::OutOfSequence {
                    expected,
                    got: header.seq,
                });
            }
        }
        let len = header.payload_len;
        let total = HEADER_LEN + len;
        let part = Part::new(self.continuation, header.is_continued());
        let whole = len <= self.max_packet_size;
        if whole && avail >= total {
            self.read_header(header.seq, header.payload_len);
            return Ok(Step::Message {
                seq: header.seq,
                part,
                start: pos,
                end: pos + total,
            });
        }
        if !self.streaming {
            if !whole {
                return Err(ProtocolError::MessageTooLarge {
                    len,
                    max: self.max_packet_size,
                });
            }
            return Ok(Step::NeedMore);
        }
        if whole && len <= self.stream_threshold {
            return Ok(Step::NeedMore);
        }
        if avail < HEADER_LEN + len.min(PEEK_LEN) {
            return Ok(Step::NeedMore);
        }
        let take = avail.min(total);
        self.read_header(header.seq, header.payload_len);
        self.remaining = total - take;
        self.streaming_seq = header.seq;
        self.streaming_part = part;
        Ok(Step::Passthrough {
            seq: header.seq,
            part,
            start: pos,
            end: pos + take,
            first: true,
        })
    }

    fn read_header(&mut self, seq: u8, payload_len: usize) {
        self.last_seq = seq;
        self.continuation = payload_len == MAX_PAYLOAD_LEN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = (payload.len() as u32).to_le_bytes()[..3].to_vec();
        p.push(seq);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn whole_packets_in_order() {
        // An OK packet and the start of the next.
        let buf = [
            packet(1, b"\x00\x00\x00\x02\x00\x00\x00"),
            b"\x05\x00".to_vec(),
        ]
        .concat();
        let mut s = Scanner::new(1024);
        assert_eq!(
            s.next(&buf, 0),
            Ok(Step::Message {
                seq: 1,
                part: Part::Whole,
                start: 0,
                end: 11
            })
        );
        assert_eq!(s.next(&buf, 11), Ok(Step::NeedMore));
        assert_eq!(s.next(&buf, 99), Ok(Step::NeedMore));
        assert!(!s.in_logical_packet());
    }

    #[test]
    fn large_rows_stream_across_buffer_consumption() {
        let mut s = Scanner::with_stream_threshold(1024, 16);
        // A 100-byte row; only the header and 10 payload bytes have arrived: not yet PEEK_LEN.
        let row = packet(4, &[b'r'; 100]);
        assert_eq!(s.next(&row[..14], 0), Ok(Step::NeedMore));
        assert_eq!(
            s.next(&row[..40], 0),
            Ok(Step::Passthrough {
                seq: 4,
                part: Part::Whole,
                start: 0,
                end: 40,
                first: true
            })
        );
        assert!(s.in_packet());
        assert_eq!(s.remaining(), 64);
        // The caller consumed the buffer; the rest of the row and the next header arrive.
        let second = [&row[40..], &b"\x07\x00"[..]].concat();
        assert_eq!(
            s.next(&second, 0),
            Ok(Step::Passthrough {
                seq: 4,
                part: Part::Whole,
                start: 0,
                end: 64,
                first: false
            })
        );
        assert!(!s.in_packet());
        assert_eq!(s.next(&second, 64), Ok(Step::NeedMore));
    }

    #[test]
    fn small_incomplete_packets_wait() {
        let mut s = Scanner::with_stream_threshold(1024, 16);
        assert_eq!(s.next(b"\x0a\x00\x00\x01abc", 0), Ok(Step::NeedMore));
        assert_eq!(s.next(b"\x0a\x00", 0), Ok(Step::NeedMore));
        assert!(!s.in_packet());
    }

    #[test]
    fn over_the_limit_streams_or_fails() {
        let big = packet(0, &[b'q'; 40]);
        let mut s = Scanner::with_stream_threshold(16, 1 << 20);
        assert_eq!(
            s.next(&big, 0),
            Ok(Step::Passthrough {
                seq: 0,
                part: Part::Whole,
                start: 0,
                end: 44,
                first: true
            })
        );
        assert!(!s.in_packet());
        let mut s = Scanner::without_streaming(16);
        assert_eq!(
            s.next(&big[..4], 0),
            Err(ProtocolError::MessageTooLarge { len: 40, max: 16 })
        );
        assert_eq!(
            s.next(&big[..10], 0).map(|_| ()),
            Err(ProtocolError::MessageTooLarge { len: 40, max: 16 })
        );
        assert_eq!(s.next(&packet(0, &[1; 16])[..10], 0), Ok(Step::NeedMore));
    }

    #[test]
    fn continuation_packets_form_one_logical_packet() {
        let mut s = Scanner::with_stream_threshold(64, 64);
        // The header of a 16 MiB - 1 payload (seq 0), then 32 bytes of it.
        let mut first = b"\xff\xff\xff\x00".to_vec();
        first.extend_from_slice(&[b'x'; 32]);
        assert_eq!(
            s.next(&first, 0),
            Ok(Step::Passthrough {
                seq: 0,
                part: Part::First,
                start: 0,
                end: 36,
                first: true
            })
        );
        assert!(s.in_logical_packet());
        let left = s.remaining();
        assert_eq!(left, MAX_PAYLOAD_LEN - 32);
        let rest = vec![b'x'; left];
        assert!(
            matches!(s.next(&rest, 0), Ok(Step::Passthrough { first: false, end, .. }) if end == left)
        );
        // A continuation with a wrong sequence id is refused and nothing changes.
        assert_eq!(
            s.next(b"\x00\x00\x00\x05", 0),
            Err(ProtocolError::OutOfSequence {
                expected: 1,
                got: 5
            })
        );
        assert_eq!(
            s.next(b"\x00\x00\x00\x01", 0),
            Ok(Step::Message {
                seq: 1,
                part: Part::Last,
                start: 0,
                end: 4
            })
        );
        assert!(!s.in_logical_packet());
        assert!(Part::Last.ends_logical() && !Part::Last.starts_logical());
        assert!(Part::First.starts_logical() && !Part::Middle.ends_logical());
    }
}
