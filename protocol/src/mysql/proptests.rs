//! Property tests: framing, the scanner and every parser never panic and never exceed their
//! limits on arbitrary bytes; the scanner reproduces any valid packet stream exactly however it
//! is split into reads; encoders and parsers round-trip.

use bytes::{Buf, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::ProtocolError;

const MAX: usize = 512;
const THRESHOLD: usize = 64;

fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = (payload.len() as u32).to_le_bytes()[..3].to_vec();
    p.push(seq);
    p.extend_from_slice(payload);
    p
}

/// Feeds `input` to a scanner in chunks (cycled), consuming the buffer after every round when
/// `advance`. Returns the concatenation of all returned ranges and the bytes left over.
fn scan(
    input: &[u8],
    chunks: &[usize],
    advance: bool,
) -> Result<(Vec<u8>, usize, Vec<u8>), ProtocolError> {
    let mut scanner = Scanner::with_stream_threshold(MAX, THRESHOLD);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut seqs = Vec::new();
    let (mut fed, mut pos, mut i) = (0, 0, 0);
    while fed < input.len() {
        let n = chunks[i % chunks.len()].min(input.len() - fed);
        i += 1;
        buf.extend_from_slice(&input[fed..fed + n]);
        fed += n;
        loop {
            let was_in = scanner.in_packet();
            match scanner.next(&buf, pos)? {
                Step::Message {
                    seq, start, end, ..
                } => {
                    assert!(!was_in);
                    assert_eq!(start, pos);
                    assert!(end - start >= HEADER_LEN && end - start - HEADER_LEN <= MAX);
                    seqs.push(seq);
                    out.extend_from_slice(&buf[start..end]);
                    pos = end;
                }
                Step::Passthrough {
                    seq,
                    start,
                    end,
                    first,
                    ..
                } => {
                    assert_eq!(start, pos);
                    assert_eq!(first, !was_in);
                    assert!(end > start && end <= buf.len());
                    if first {
                        seqs.push(seq);
                        let len = usize::from(buf[start])
                            | usize::from(buf[start + 1]) << 8
                            | usize::from(buf[start + 2]) << 16;
                        assert!(end - start >= HEADER_LEN + len.min(PEEK_LEN));
                    }
                    out.extend_from_slice(&buf[start..end]);
                    pos = end;
                }
                Step::NeedMore => break,
            }
        }
        if advance {
            buf.advance(pos);
            pos = 0;
        }
    }
    Ok((out, buf.len() - pos, seqs))
}

fn stream() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    prop::collection::vec(
        (any::<u8>(), prop::collection::vec(any::<u8>(), 0..3 * MAX)),
        0..16,
    )
    .prop_map(|ps| {
        let mut wire = Vec::new();
        let mut seqs = Vec::new();
        for (seq, payload) in ps {
            seqs.push(seq);
            wire.extend_from_slice(&packet(seq, &payload));
        }
        (wire, seqs)
    })
}

fn any_caps() -> impl Strategy<Value = u64> {
    any::<u64>()
}

proptest! {
    #[test]
    fn parse_header_bounds(b in any::<[u8; 4]>(), max in 0usize..0x200_0000) {
        let len = usize::from(b[0]) | usize::from(b[1]) << 8 | usize::from(b[2]) << 16;
        let r = parse_header(&b, max);
        if len > max {
            prop_assert_eq!(r, Err(ProtocolError::MessageTooLarge { len, max }));
        } else {
            prop_assert_eq!(r, Ok(Some(PacketHeader { payload_len: len, seq: b[3] })));
        }
        for cut in 0..HEADER_LEN {
            prop_assert_eq!(parse_header(&b[..cut], max), Ok(None));
        }
    }

    #[test]
    fn split_packet_never_exceeds_max(bytes in prop::collection::vec(any::<u8>(), 0..256), max in 0usize..64) {
        let mut buf = BytesMut::from(&bytes[..]);
        let mut total = 0;
        while let Ok(Some(p)) = split_packet(&mut buf, max) {
            prop_assert!(p.payload.len() <= max);
            total += p.payload.len() + HEADER_LEN;
        }
        prop_assert_eq!(total + buf.len(), bytes.len());
    }

    #[test]
    fn split_logical_packet_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256), max in 0usize..300) {
        let mut buf = BytesMut::from(&bytes[..]);
        match split_logical_packet(&mut buf, max) {
            Ok(Some(p)) => {
                prop_assert!(p.payload.len() <= max);
                prop_assert_eq!(bytes.len() - buf.len(), p.payload.len() + HEADER_LEN);
            }
            Ok(None) | Err(_) => prop_assert_eq!(buf.len(), bytes.len()),
        }
    }

    #[test]
    fn encode_packet_round_trips(seq in any::<u8>(), payload in prop::collection::vec(any::<u8>(), 0..600)) {
        let mut buf = BytesMut::new();
        prop_assert_eq!(encode_packet(seq, &payload, &mut buf), seq.wrapping_add(1));
        let p = split_logical_packet(&mut buf, 600).unwrap().unwrap();
        prop_assert_eq!((p.seq, p.last_seq), (seq, seq));
        prop_assert_eq!(&p.payload[..], &payload[..]);
    }

    #[test]
    fn scanner_never_panics_on_garbage(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        chunks in prop::collection::vec(1usize..300, 1..8),
        advance in any::<bool>(),
    ) {
        if let Ok((out, left, _)) = scan(&bytes, &chunks, advance) {
            prop_assert_eq!(out.len() + left, bytes.len());
            prop_assert_eq!(&out[..], &bytes[..out.len()]);
        }
    }

    #[test]
    fn scanner_reproduces_valid_streams(
        (wire, seqs) in stream(),
        chunks in prop::collection::vec(1usize..700, 1..8),
        advance in any::<bool>(),
    ) {
        let (out, left, got) = scan(&wire, &chunks, advance).unwrap();
        prop_assert_eq!(out, wire);
        prop_assert_eq!(left, 0);
        prop_assert_eq!(got, seqs);
    }

    #[test]
    fn lenenc_round_trips(v in any::<u64>(), tail in prop::collection::vec(any::<u8>(), 0..4)) {
        let mut out = Vec::new();
        put_lenenc_int(v, &mut out);
        prop_assert_eq!(out.len(), lenenc_int_len(v));
        out.extend_from_slice(&tail);
        prop_assert_eq!(parse_lenenc_int(&out), Ok((v, lenenc_int_len(v))));
    }

    #[test]
    fn parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200), caps in any_caps()) {
        let _ = parse_lenenc_str(&bytes);
        let _ = parse_eof(&bytes, caps);
        let _ = parse_prepare_ok(&bytes);
        let _ = parse_auth_packet(&bytes, caps);
        let _ = parse_change_user(&bytes, caps);
        let _ = statement_id(&bytes);
        let _ = terminator_status(&bytes, caps & 1 != 0);
        for c in session_changes(&bytes) {
            let _ = c;
        }
        if let Ok(err) = parse_err(&bytes, caps) {
            let _ = err.message_lossy();
            let mut buf = BytesMut::new();
            if encode_err(err.code, err.sql_state_str(), err.message, caps, 1, &mut buf).is_ok() {
                let again = parse_err(&buf[4..], caps).unwrap();
                prop_assert_eq!(again.code, err.code);
            }
        }
        if let Ok(ok) = parse_ok(&bytes, caps) {
            let mut buf = BytesMut::new();
            encode_ok(&ok, caps, 1, &mut buf).unwrap();
            prop_assert_eq!(parse_ok(&buf[4..], caps).unwrap(), ok);
        }
        if let Ok(hs) = parse_handshake_v10(&bytes) {
            let mut buf = BytesMut::new();
            if encode_handshake_v10(&hs, &mut buf).is_ok() {
                prop_assert_eq!(parse_handshake_v10(&buf[4..]).unwrap(), hs);
            }
        }
        if let Ok(ClientHandshake::Response(r)) = parse_client_handshake(&bytes) {
            let mut buf = BytesMut::new();
            encode_handshake_response(&r, 1, &mut buf).unwrap();
            prop_assert_eq!(parse_client_handshake(&buf[4..]).unwrap(), ClientHandshake::Response(r));
        }
    }

    #[test]
    fn reply_never_panics(
        command in prop::collection::vec(any::<u8>(), 1..8),
        packets in prop::collection::vec((any::<bool>(), any::<bool>(), prop::collection::vec(any::<u8>(), 0..40)), 0..30),
        caps in any_caps(),
    ) {
        let Ok(mut reply) = Reply::new(&command, 1, ReplyOptions::from_capabilities(caps)) else {
            return Ok(());
        };
        for (client, good_seq, payload) in packets {
            let seq = if good_seq { reply.next_seq() } else { payload.first().copied().unwrap_or(0) };
            let result = if client {
                reply.feed_client(seq, payload.len())
            } else {
                reply.feed(seq, payload.len(), &payload)
            };
            if let Ok(seen) = result {
                prop_assert_eq!(seen.next, reply.next());
                if let Next::Done(end) = seen.next {
                    prop_assert_eq!(reply.end(), Some(end));
                }
            }
        }
    }
}
