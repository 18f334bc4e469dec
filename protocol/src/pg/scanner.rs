//! The command-phase scanner: walks tagged messages in a read buffer without copying or
//! allocating, and streams large DataRow / CopyData messages through in pieces.

use super::cursor::peek_i32;
use super::frame::frame_len;
use crate::ProtocolError;

/// Tag of DataRow (backend).
const DATA_ROW: u8 = b'D';
/// Tag of CopyData (both directions).
const COPY_DATA: u8 = b'd';
/// Client requests that may be streamed when large: Query, Parse, Bind, FunctionCall.
const STREAMABLE_REQUESTS: [u8; 4] = [b'Q', b'P', b'B', b'F'];

/// Default size above which an incomplete DataRow / CopyData message is streamed.
pub const DEFAULT_STREAM_THRESHOLD: usize = 64 * 1024;

/// One result of [`Scanner::next`]. Ranges index the `buf` passed to that call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A whole message lies at `buf[start..end]`; its body is
    /// `buf[start + HEADER_LEN..end]` (see [`HEADER_LEN`](super::HEADER_LEN)).
    Message { tag: u8, start: usize, end: usize },
    /// `buf[start..end]` are bytes of a streamed `D`/`d` message (its header included if this is
    /// the first piece); forward them as they are.
    Passthrough { tag: u8, start: usize, end: usize },
    /// Nothing more can be returned from `buf[pos..]` until more bytes arrive.
    NeedMore,
}

/// Walks messages in a read buffer. Streaming state survives the caller consuming the buffer: it
/// counts the bytes of the current message still to come, not offsets.
///
/// Limits: a message returned as [`Step::Message`] is never longer than `max_message_size`
/// (checked from the header before waiting for the body). `D`/`d` messages are exempt from that
/// limit because they are never buffered whole: one that is larger than the limit, or incomplete
/// and larger than the stream threshold, is returned as [`Step::Passthrough`] pieces.
#[derive(Clone, Debug)]
pub struct Scanner {
    max_message_size: usize,
    stream_threshold: usize,
    /// Whether `D` is streamed: DataRow from a backend, but Describe from a client.
    stream_data_row: bool,
    /// Whether large client requests (Query, Parse, Bind, FunctionCall) are streamed; they
    /// stay within `max_message_size`, but are not buffered whole.
    stream_requests: bool,
    /// Tag of the message being streamed.
    streaming_tag: u8,
    /// Bytes of the streamed message not returned yet; 0 between messages.
    remaining: usize,
}

impl Scanner {
    /// A scanner with the default stream threshold (64 KiB) that streams `D` and `d`: use it on
    /// bytes from a backend.
    pub fn new(max_message_size: usize) -> Scanner {
        Scanner::with_stream_threshold(max_message_size, DEFAULT_STREAM_THRESHOLD)
    }

    /// A scanner for bytes from a client: only CopyData (`d`) is streamed, because a client's `D`
    /// is Describe, which must arrive whole and within `max_message_size`.
    pub fn for_client(max_message_size: usize) -> Scanner {
        Scanner {
            stream_data_row: false,
            ..Scanner::new(max_message_size)
        }
    }

    /// A scanner for bytes from a client with its own stream threshold (see
    /// [`Scanner::for_client`]).
    pub fn for_client_with_stream_threshold(
        max_message_size: usize,
        stream_threshold: usize,
    ) -> Scanner {
        Scanner {
            stream_data_row: false,
            ..Scanner::with_stream_threshold(max_message_size, stream_threshold)
        }
    }

    /// This scanner, also streaming incomplete Query, Parse, Bind and FunctionCall messages
    /// longer than the stream threshold (they are still refused beyond `max_message_size`).
    pub fn streaming_requests(self) -> Scanner {
        Scanner {
            stream_requests: true,
            ..self
        }
    }

    /// A scanner that streams incomplete `D`/`d` messages longer than `stream_threshold` bytes.
    pub fn with_stream_threshold(max_message_size: usize, stream_threshold: usize) -> Scanner {
        Scanner {
            max_message_size,
            stream_threshold,
            stream_data_row: true,
            stream_requests: false,
            streaming_tag: 0,
            remaining: 0,
        }
    }

    /// Size above which an incomplete `D`/`d` message is streamed instead of waited for.
    pub fn stream_threshold(&self) -> usize {
        self.stream_threshold
    }

    /// The limit for messages returned whole.
    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// True while in the middle of a streamed message: the next bytes are not a header.
    pub fn in_message(&self) -> bool {
        self.remaining > 0
    }

    /// Bytes of the streamed message still to come (0 when not in one).
    pub fn remaining(&self) -> usize {
        self.remaining
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
                tag: self.streaming_tag,
                start: pos,
                end: pos + take,
            });
        }
        let (Some(&tag), Some(raw)) = (buf.get(pos), buf.get(pos + 1..).and_then(peek_i32)) else {
            return Ok(Step::NeedMore);
        };
        let exempt = tag == COPY_DATA || (tag == DATA_ROW && self.stream_data_row);
        let large_request = self.stream_requests && STREAMABLE_REQUESTS.contains(&tag);
        let limit = if exempt {
            usize::MAX
        } else {
            self.max_message_size
        };
        let len = frame_len(raw, limit)?;
        let incomplete_and_large = avail < len && len > self.stream_threshold;
        if exempt && (len > self.max_message_size || incomplete_and_large)
            || large_request && incomplete_and_large
        {
            let take = avail.min(len);
            self.remaining = len - take;
            self.streaming_tag = tag;
            return Ok(Step::Passthrough {
                tag,
                start: pos,
                end: pos + take,
            });
        }
        if avail < len {
            return Ok(Step::NeedMore);
        }
        Ok(Step::Message {
            tag,
            start: pos,
            end: pos + len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_messages_in_order() {
        let buf = b"C\0\0\0\x0dSELECT 1\0Z\0\0\0\x05I";
        let mut s = Scanner::new(1024);
        assert_eq!(
            s.next(buf, 0),
            Ok(Step::Message {
                tag: b'C',
                start: 0,
                end: 14
            })
        );
        assert_eq!(&buf[5..14], b"SELECT 1\0");
        assert_eq!(
            s.next(buf, 14),
            Ok(Step::Message {
                tag: b'Z',
                start: 14,
                end: 20
            })
        );
        assert_eq!(s.next(buf, 20), Ok(Step::NeedMore));
        assert_eq!(s.next(buf, 99), Ok(Step::NeedMore));
    }

    #[test]
    fn small_incomplete_waits() {
        let mut s = Scanner::with_stream_threshold(1024, 16);
        assert_eq!(s.next(b"D\0\0\0\x0aabc", 0), Ok(Step::NeedMore));
        assert_eq!(s.next(b"Z\0\0", 0), Ok(Step::NeedMore));
        assert!(!s.in_message());
    }

    #[test]
    fn large_data_row_streams_across_buffer_consumption() {
        let mut s = Scanner::with_stream_threshold(1024, 16);
        // DataRow of 1 + 36 bytes; 10 bytes available.
        let first = b"D\0\0\0\x24abcde";
        assert_eq!(
            s.next(first, 0),
            Ok(Step::Passthrough {
                tag: b'D',
                start: 0,
                end: 10
            })
        );
        assert!(s.in_message());
        assert_eq!(s.remaining(), 27);
        // The caller consumed the buffer; 30 more bytes arrive: 27 of the row and a ReadyForQuery start.
        let second = [&[b'x'; 27][..], b"Z\0\0"].concat();
        assert_eq!(
            s.next(&second, 0),
            Ok(Step::Passthrough {
                tag: b'D',
                start: 0,
                end: 27
            })
        );
        assert!(!s.in_message());
        assert_eq!(s.next(&second, 27), Ok(Step::NeedMore));
    }

    #[test]
    fn client_scanner_does_not_stream_describe() {
        let mut s = Scanner::for_client(16);
        assert_eq!(
            s.next(b"D\0\0\0\x14", 0),
            Err(ProtocolError::MessageTooLarge { len: 21, max: 16 })
        );
        assert_eq!(
            s.next(b"d\0\0\0\x14", 0),
            Ok(Step::Passthrough {
                tag: b'd',
                start: 0,
                end: 5
            })
        );
        assert_eq!(s.remaining(), 16);
    }

    #[test]
    fn large_client_requests_stream_when_asked_but_stay_within_the_limit() {
        let mut s = Scanner::for_client(1024).streaming_requests();
        // A 200-byte Query with 20 bytes available (threshold 64 KiB by default: use a small one).
        let mut small = Scanner::for_client_with_stream_threshold(1024, 16).streaming_requests();
        assert_eq!(
            small.next(b"Q\0\0\0\xc8select", 0),
            Ok(Step::Passthrough {
                tag: b'Q',
                start: 0,
                end: 11
            })
        );
        assert_eq!(small.remaining(), 201 - 11);
        // A Describe is never streamed, and nothing passes the limit.
        let mut fresh = Scanner::for_client_with_stream_threshold(1024, 16).streaming_requests();
        assert_eq!(fresh.next(b"D\0\0\0\xc8S", 0), Ok(Step::NeedMore));
        assert_eq!(
            s.next(b"Q\0\0\x10\0", 0),
            Err(ProtocolError::MessageTooLarge {
                len: 4097,
                max: 1024
            })
        );
        // Without streaming_requests, a client Query waits until it is whole.
        let mut plain = Scanner::for_client_with_stream_threshold(1024, 16);
        assert_eq!(plain.next(b"Q\0\0\0\xc8select", 0), Ok(Step::NeedMore));
    }

    #[test]
    fn limits() {
        let mut s = Scanner::with_stream_threshold(16, 8);
        assert_eq!(
            s.next(b"E\0\0\0\x10", 0),
            Err(ProtocolError::MessageTooLarge { len: 17, max: 16 })
        );
        assert_eq!(
            s.next(b"Z\0\0\0\x03", 0),
            Err(ProtocolError::MessageTooShort { len: 3 })
        );
        assert_eq!(
            s.next(b"D\0\0\0\x03", 0),
            Err(ProtocolError::MessageTooShort { len: 3 })
        );
        // A complete DataRow over the limit is still passed through, never returned whole.
        let row = b"D\0\0\0\x14aaaaaaaaaaaaaaaa";
        assert_eq!(
            s.next(row, 0),
            Ok(Step::Passthrough {
                tag: b'D',
                start: 0,
                end: 21
            })
        );
        assert!(!s.in_message());
    }
}
