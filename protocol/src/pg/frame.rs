//! Tagged message framing: the 5-byte header (tag byte, int32 length) used by every message after
//! the startup packet, in both directions.

use bytes::{Buf, Bytes, BytesMut};

use super::cursor::peek_i32;
use crate::ProtocolError;

/// Size of a tagged message header: one tag byte and an int32 length.
pub const HEADER_LEN: usize = 5;

/// The header of a tagged message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The message type byte.
    pub tag: u8,
    /// Total bytes of the message including the tag byte: 1 + the int32 length field.
    pub len: usize,
}

impl FrameHeader {
    /// Bytes of the body (the message without tag and length).
    pub fn body_len(&self) -> usize {
        self.len.saturating_sub(HEADER_LEN)
    }
}

/// Looks at the header at the front of `buf` without consuming anything.
///
/// `Ok(None)` if fewer than [`HEADER_LEN`] bytes are there. Fails if the length field is below 4
/// or if the whole message (1 + length) would exceed `max_message_size`.
pub fn parse_header(
    buf: &[u8],
    max_message_size: usize,
) -> Result<Option<FrameHeader>, ProtocolError> {
    let (Some(&tag), Some(raw)) = (buf.first(), buf.get(1..).and_then(peek_i32)) else {
        return Ok(None);
    };
    let len = frame_len(raw, max_message_size)?;
    Ok(Some(FrameHeader { tag, len }))
}

/// Checks an int32 length field and returns the whole message size (1 + length).
pub(crate) fn frame_len(raw: i32, max_message_size: usize) -> Result<usize, ProtocolError> {
    let body_and_len =
        usize::try_from(raw).map_err(|_| ProtocolError::MessageTooShort { len: raw })?;
    if body_and_len < 4 {
        return Err(ProtocolError::MessageTooShort { len: raw });
    }
    let len = body_and_len.saturating_add(1);
    if len > max_message_size {
        return Err(ProtocolError::MessageTooLarge {
            len,
            max: max_message_size,
        });
    }
    Ok(len)
}

/// A whole tagged message, sliced out of the read buffer without copying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The message type byte.
    pub tag: u8,
    /// The body: everything after the tag and the length field.
    pub body: Bytes,
}

/// Splits one whole message off the front of `buf`.
///
/// `Ok(None)` while the message is incomplete; then capacity for the rest is reserved (the length
/// has been checked against `max_message_size` first), and nothing is consumed.
pub fn split_message(
    buf: &mut BytesMut,
    max_message_size: usize,
) -> Result<Option<Message>, ProtocolError> {
    let Some(header) = parse_header(buf, max_message_size)? else {
        return Ok(None);
    };
    if buf.len() < header.len {
        buf.reserve(header.len - buf.len());
        return Ok(None);
    }
    let mut body = buf.split_to(header.len).freeze();
    // Dropping the header by advancing keeps one reference-counted handle per message.
    body.advance(HEADER_LEN);
    Ok(Some(Message {
        tag: header.tag,
        body,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_needs_five_bytes() {
        assert_eq!(parse_header(b"", 100), Ok(None));
        assert_eq!(parse_header(b"Z\0\0\0", 100), Ok(None));
        assert_eq!(
            parse_header(b"Z\0\0\0\x05I", 100),
            Ok(Some(FrameHeader { tag: b'Z', len: 6 }))
        );
    }

    #[test]
    fn header_length_bounds() {
        assert_eq!(
            parse_header(b"X\0\0\0\x04", 5),
            Ok(Some(FrameHeader { tag: b'X', len: 5 }))
        );
        assert_eq!(
            parse_header(b"X\0\0\0\x03", 100),
            Err(ProtocolError::MessageTooShort { len: 3 })
        );
        assert_eq!(
            parse_header(b"X\xff\xff\xff\xff", 100),
            Err(ProtocolError::MessageTooShort { len: -1 })
        );
        assert_eq!(
            parse_header(b"D\0\0\0\x64", 100),
            Err(ProtocolError::MessageTooLarge { len: 101, max: 100 })
        );
        assert_eq!(
            parse_header(b"D\x7f\xff\xff\xff", usize::MAX),
            Ok(Some(FrameHeader {
                tag: b'D',
                len: 0x8000_0000
            }))
        );
    }

    #[test]
    fn split_whole_messages() {
        let mut buf = BytesMut::from(&b"Z\0\0\0\x05IX\0\0\0\x04C\0\0"[..]);
        let m = split_message(&mut buf, 100).unwrap().unwrap();
        assert_eq!(m.tag, b'Z');
        assert_eq!(&m.body[..], b"I");
        let m = split_message(&mut buf, 100).unwrap().unwrap();
        assert_eq!(m.tag, b'X');
        assert!(m.body.is_empty());
        assert_eq!(split_message(&mut buf, 100), Ok(None));
        assert_eq!(&buf[..], b"C\0\0");
    }

    #[test]
    fn split_incomplete_consumes_nothing() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x0dSELECT"[..]);
        assert_eq!(split_message(&mut buf, 100), Ok(None));
        assert_eq!(buf.len(), 11);
        assert!(buf.capacity() >= 14);
        buf.extend_from_slice(b" 1\0");
        let m = split_message(&mut buf, 100).unwrap().unwrap();
        assert_eq!(&m.body[..], b"SELECT 1\0");
        assert!(buf.is_empty());
    }
}
