//! Packet framing: the 4-byte header (3-byte little-endian payload length, 1-byte sequence id)
//! in front of every MySQL packet, in both directions and in every phase, and logical packets of
//! 16 MiB and more.
//!
//! A payload of [`MAX_PAYLOAD_LEN`] (0xFFFFFF) bytes means the logical packet goes on in the next
//! physical packet, which carries the next sequence id; a logical packet ends with a shorter
//! physical packet, possibly an empty one.
//!
//! Limits here count payload bytes, like the server's `max_allowed_packet`: `max` is the largest
//! payload accepted, and [`ProtocolError::MessageTooLarge`] reports the payload length.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::ProtocolError;

/// Size of a packet header.
pub const HEADER_LEN: usize = 4;
/// The largest payload of one physical packet; a payload of exactly this size is continued in
/// the next packet.
pub const MAX_PAYLOAD_LEN: usize = 0xFF_FFFF;

/// The header of one physical packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketHeader {
    /// Bytes of payload after the header.
    pub payload_len: usize,
    /// The sequence id.
    pub seq: u8,
}

impl PacketHeader {
    /// Header and payload.
    pub fn packet_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Whether the next packet continues this one's logical packet.
    pub fn is_continued(&self) -> bool {
        self.payload_len == MAX_PAYLOAD_LEN
    }
}

/// Reads a header without checking any limit. `None` if fewer than four bytes are there.
pub(crate) fn peek_header(buf: &[u8]) -> Option<PacketHeader> {
    match *buf {
        [a, b, c, seq, ..] => Some(PacketHeader {
            payload_len: usize::from(a) | usize::from(b) << 8 | usize::from(c) << 16,
            seq,
        }),
        _ => None,
    }
}

/// Looks at the header at the front of `buf` without consuming anything.
///
/// `Ok(None)` if fewer than [`HEADER_LEN`] bytes are there. Fails if the payload length exceeds
/// `max`, whether or not the payload has arrived.
pub fn parse_header(buf: &[u8], max: usize) -> Result<Option<PacketHeader>, ProtocolError> {
    let Some(header) = peek_header(buf) else {
        return Ok(None);
    };
    if header.payload_len > max {
        return Err(ProtocolError::MessageTooLarge {
            len: header.payload_len,
            max,
        });
    }
    Ok(Some(header))
}

/// One physical packet, sliced out of the read buffer without copying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub seq: u8,
    pub payload: Bytes,
}

impl Packet {
    /// Whether the next packet continues this one's logical packet.
    pub fn is_continued(&self) -> bool {
        self.payload.len() == MAX_PAYLOAD_LEN
    }
}

/// Splits one physical packet off the front of `buf`.
///
/// `Ok(None)` while the packet is incomplete; then capacity for the rest is reserved (after the
/// length was checked against `max`) and nothing is consumed.
pub fn split_packet(buf: &mut BytesMut, max: usize) -> Result<Option<Packet>, ProtocolError> {
    let Some(header) = parse_header(buf, max)? else {
        return Ok(None);
    };
    let len = header.packet_len();
    if buf.len() < len {
        buf.reserve(len - buf.len());
        return Ok(None);
    }
    let mut payload = buf.split_to(len).freeze();
    payload.advance(HEADER_LEN);
    Ok(Some(Packet {
        seq: header.seq,
        payload,
    }))
}

/// A whole logical packet: the payloads of its physical packets joined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogicalPacket {
    /// Sequence id of the first physical packet.
    pub seq: u8,
    /// Sequence id of the last physical packet; the next packet of the conversation carries the
    /// one after it.
    pub last_seq: u8,
    pub payload: Bytes,
}

/// Splits one logical packet off the front of `buf`.
///
/// The total payload is checked against `max` as each header arrives, before waiting for its
/// body, and every continuation packet must carry the next sequence id. `Ok(None)` while some
/// part is missing (nothing is consumed). A logical packet of one physical packet is a zero-copy
/// slice; one of several is copied once into a buffer of the checked size.
pub fn split_logical_packet(
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<LogicalPacket>, ProtocolError> {
    let mut offset = 0;
    let mut total = 0usize;
    let mut parts = 0usize;
    let mut first_seq = None;
    let mut last_seq = 0u8;
    loop {
        let Some(header) = buf.get(offset..).and_then(peek_header) else {
            return Ok(None);
        };
        if first_seq.is_some() {
            let expected = last_seq.wrapping_add(1);
            if header.seq != expected {
                return Err(ProtocolError::OutOfSequence {
                    expected,
                    got: header.seq,
                });
            }
        } else {
            first_seq = Some(header.seq);
        }
        total = total.saturating_add(header.payload_len);
        if total > max {
            return Err(ProtocolError::MessageTooLarge { len: total, max });
        }
        let end = offset + header.packet_len();
        if buf.len() < end {
            buf.reserve(end - buf.len());
            return Ok(None);
        }
        last_seq = header.seq;
        parts += 1;
        offset = end;
        if !header.is_continued() {
            break;
        }
    }
    let seq = first_seq.unwrap_or(last_seq);
    let payload = if parts == 1 {
        let mut payload = buf.split_to(offset).freeze();
        payload.advance(HEADER_LEN);
        payload
    } else {
        let mut joined = BytesMut::with_capacity(total);
        let mut packets = buf.split_to(offset);
        while let Some(header) = peek_header(&packets) {
            packets.advance(HEADER_LEN);
            joined.put_slice(packets.get(..header.payload_len).unwrap_or_default());
            packets.advance(header.payload_len.min(packets.len()));
        }
        joined.freeze()
    };
    Ok(Some(LogicalPacket {
        seq,
        last_seq,
        payload,
    }))
}

/// Writes `payload` as one logical packet starting at sequence id `seq`, split into physical
/// packets of at most [`MAX_PAYLOAD_LEN`] bytes (with an empty last packet when the payload is a
/// multiple of it). Returns the sequence id of the packet that would come next.
pub fn encode_packet(seq: u8, payload: &[u8], buf: &mut BytesMut) -> u8 {
    let mut seq = seq;
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_PAYLOAD_LEN);
        buf.reserve(HEADER_LEN + n);
        put_header(n, seq, buf);
        buf.put_slice(&rest[..n]);
        rest = &rest[n..];
        seq = seq.wrapping_add(1);
        if n < MAX_PAYLOAD_LEN {
            return seq;
        }
    }
}

fn put_header(payload_len: usize, seq: u8, buf: &mut BytesMut) {
    let le = (payload_len as u32).to_le_bytes();
    buf.put_slice(&[le[0], le[1], le[2], seq]);
}

/// Writes one physical packet whose payload `body` writes, filling in the length afterwards.
/// The payload must stay below [`MAX_PAYLOAD_LEN`]; on any error `buf` is left as it was.
pub(crate) fn framed<F>(seq: u8, buf: &mut BytesMut, body: F) -> Result<(), ProtocolError>
where
    F: FnOnce(&mut BytesMut) -> Result<(), ProtocolError>,
{
    let base = buf.len();
    buf.put_slice(&[0, 0, 0, seq]);
    let result = body(buf).and_then(|()| {
        let len = buf.len() - base - HEADER_LEN;
        if len >= MAX_PAYLOAD_LEN {
            return Err(ProtocolError::MessageTooLarge {
                len,
                max: MAX_PAYLOAD_LEN - 1,
            });
        }
        let le = (len as u32).to_le_bytes();
        if let Some(slot) = buf.get_mut(base..base + 3) {
            slot.copy_from_slice(&le[..3]);
        }
        Ok(())
    });
    if result.is_err() {
        buf.truncate(base);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_header() {
        // COM_QUERY "select 1" from the protocol documentation: 09 00 00 00 03 73 65 6c ...
        let wire = b"\x09\x00\x00\x00\x03select 1";
        assert_eq!(
            parse_header(wire, 100),
            Ok(Some(PacketHeader {
                payload_len: 9,
                seq: 0
            }))
        );
        for cut in 0..HEADER_LEN {
            assert_eq!(parse_header(&wire[..cut], 100), Ok(None));
        }
        assert_eq!(
            parse_header(b"\xff\xff\xff\x07", usize::MAX),
            Ok(Some(PacketHeader {
                payload_len: MAX_PAYLOAD_LEN,
                seq: 7
            }))
        );
        assert!(PacketHeader {
            payload_len: MAX_PAYLOAD_LEN,
            seq: 0
        }
        .is_continued());
        assert_eq!(
            parse_header(b"\x0a\x00\x00\x00", 9),
            Err(ProtocolError::MessageTooLarge { len: 10, max: 9 })
        );
    }

    #[test]
    fn split_whole_packets_zero_copy() {
        let mut buf =
            BytesMut::from(&b"\x09\x00\x00\x00\x03select 1\x01\x00\x00\x00\x01\x05\x00"[..]);
        let p = split_packet(&mut buf, 100).unwrap().unwrap();
        assert_eq!(p.seq, 0);
        assert_eq!(&p.payload[..], b"\x03select 1");
        assert!(!p.is_continued());
        let p = split_packet(&mut buf, 100).unwrap().unwrap();
        assert_eq!(&p.payload[..], b"\x01");
        assert_eq!(split_packet(&mut buf, 100), Ok(None));
        assert_eq!(&buf[..], b"\x05\x00");
        // An empty packet is a packet.
        let mut buf = BytesMut::from(&b"\x00\x00\x00\x03"[..]);
        let p = split_packet(&mut buf, 0).unwrap().unwrap();
        assert_eq!((p.seq, p.payload.len()), (3, 0));
    }

    #[test]
    fn split_incomplete_consumes_nothing_and_checks_length_first() {
        let mut buf = BytesMut::from(&b"\x09\x00\x00\x00\x03sel"[..]);
        assert_eq!(split_packet(&mut buf, 100), Ok(None));
        assert_eq!(buf.len(), 8);
        assert!(buf.capacity() >= 13);
        let mut buf = BytesMut::from(&b"\xff\xff\xff\x00"[..]);
        assert_eq!(
            split_packet(&mut buf, 1 << 20),
            Err(ProtocolError::MessageTooLarge {
                len: MAX_PAYLOAD_LEN,
                max: 1 << 20
            })
        );
        assert_eq!(buf.len(), 4);
    }

    fn big_logical(len: usize, seq: u8) -> (Vec<u8>, BytesMut) {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let mut buf = BytesMut::new();
        let next = encode_packet(seq, &payload, &mut buf);
        let parts = len / MAX_PAYLOAD_LEN + 1;
        assert_eq!(next, seq.wrapping_add(parts as u8));
        assert_eq!(buf.len(), len + parts * HEADER_LEN);
        (payload, buf)
    }

    #[test]
    fn logical_packets_of_16_mib_and_more() {
        // Exactly 16 MiB - 1: two physical packets, the second empty.
        let (payload, wire) = big_logical(MAX_PAYLOAD_LEN, 0xff);
        assert_eq!(&wire[..4], b"\xff\xff\xff\xff");
        assert_eq!(&wire[wire.len() - 4..], b"\x00\x00\x00\x00");
        let mut buf = wire.clone();
        let p = split_logical_packet(&mut buf, MAX_PAYLOAD_LEN)
            .unwrap()
            .unwrap();
        assert_eq!((p.seq, p.last_seq), (0xff, 0));
        assert_eq!(p.payload.len(), payload.len());
        assert!(p.payload == payload);
        assert!(buf.is_empty());
        // Every prefix is incomplete; the limit counts all parts.
        for cut in [0, 3, 4, 100, MAX_PAYLOAD_LEN + 4, MAX_PAYLOAD_LEN + 7] {
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(
                split_logical_packet(&mut buf, MAX_PAYLOAD_LEN),
                Ok(None),
                "{cut}"
            );
            assert_eq!(buf.len(), cut);
        }
        let (_, wire) = big_logical(MAX_PAYLOAD_LEN + 10, 0);
        let mut buf = BytesMut::from(&wire[..MAX_PAYLOAD_LEN + 8]);
        assert_eq!(
            split_logical_packet(&mut buf, MAX_PAYLOAD_LEN + 9),
            Err(ProtocolError::MessageTooLarge {
                len: MAX_PAYLOAD_LEN + 10,
                max: MAX_PAYLOAD_LEN + 9
            })
        );
        // A continuation with the wrong sequence id.
        let mut bad = wire.clone();
        bad[MAX_PAYLOAD_LEN + 7] = 5;
        assert_eq!(
            split_logical_packet(&mut bad, usize::MAX),
            Err(ProtocolError::OutOfSequence {
                expected: 1,
                got: 5
            })
        );
        // A small one is a zero-copy slice.
        let mut buf = BytesMut::from(&b"\x01\x00\x00\x00\x0e"[..]);
        let p = split_logical_packet(&mut buf, 10).unwrap().unwrap();
        assert_eq!((p.seq, p.last_seq, &p.payload[..]), (0, 0, &b"\x0e"[..]));
    }

    #[test]
    fn framed_fills_length_and_rolls_back() {
        let mut buf = BytesMut::from(&b"keep"[..]);
        framed(3, &mut buf, |b| {
            b.put_slice(b"\x00\x00\x00\x02\x00\x00\x00");
            Ok(())
        })
        .unwrap();
        assert_eq!(
            &buf[..],
            b"keep\x07\x00\x00\x03\x00\x00\x00\x02\x00\x00\x00"
        );
        let err = framed(0, &mut buf, |b| {
            b.put_u8(1);
            Err(ProtocolError::InvalidArgument("x"))
        });
        assert_eq!(err, Err(ProtocolError::InvalidArgument("x")));
        assert_eq!(buf.len(), 15);
        let err = framed(0, &mut buf, |b| {
            b.put_bytes(0, MAX_PAYLOAD_LEN);
            Ok(())
        });
        assert!(matches!(err, Err(ProtocolError::MessageTooLarge { .. })));
        assert_eq!(buf.len(), 15);
    }
}
