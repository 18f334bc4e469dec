//! Property tests: the framers and the scanner never panic and never exceed their limits on
//! arbitrary bytes, and the scanner reproduces any valid message stream exactly, however it is
//! split into reads.

use bytes::{Buf, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::ProtocolError;

const MAX: usize = 512;
const THRESHOLD: usize = 64;

/// One tagged message: (tag, whole encoded bytes).
fn message() -> impl Strategy<Value = (u8, Vec<u8>)> {
    let small = (
        any::<u8>(),
        prop::collection::vec(any::<u8>(), 0..=MAX - HEADER_LEN),
    );
    let streamable = (
        prop::sample::select(vec![b'D', b'd']),
        prop::collection::vec(any::<u8>(), 0..3 * MAX),
    );
    prop_oneof![small, streamable].prop_map(|(tag, body)| {
        let body = if tag != b'D' && tag != b'd' {
            body.into_iter().take(MAX - HEADER_LEN).collect()
        } else {
            body
        };
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(&body);
        (tag, m)
    })
}

/// Feeds `input` to a scanner in chunks of the given sizes (cycled). With `advance`, the buffer
/// is consumed after every round as a proxy would; otherwise positions keep growing.
/// Returns the tags seen and the concatenation of all returned ranges.
fn scan(
    input: &[u8],
    chunks: &[usize],
    advance: bool,
) -> Result<(Vec<u8>, Vec<u8>, Scanner, usize), ProtocolError> {
    let mut scanner = Scanner::with_stream_threshold(MAX, THRESHOLD);
    let mut buf = BytesMut::new();
    let (mut tags, mut out) = (Vec::new(), Vec::new());
    let mut fed = 0;
    let mut pos = 0;
    let mut i = 0;
    while fed < input.len() {
        let n = chunks[i % chunks.len()].min(input.len() - fed);
        i += 1;
        buf.extend_from_slice(&input[fed..fed + n]);
        fed += n;
        loop {
            let was_in = scanner.in_message();
            match scanner.next(&buf, pos)? {
                Step::Message { tag, start, end } => {
                    assert!(!was_in);
                    assert_eq!(start, pos);
                    assert!(end - start <= MAX && end - start >= HEADER_LEN);
                    tags.push(tag);
                    out.extend_from_slice(&buf[start..end]);
                    pos = end;
                }
                Step::Passthrough { tag, start, end } => {
                    assert_eq!(start, pos);
                    assert!(end > start && end <= buf.len());
                    assert!(tag == b'D' || tag == b'd');
                    if !was_in {
                        tags.push(tag);
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
    let left = buf.len() - pos;
    Ok((tags, out, scanner, left))
}

proptest! {
    #[test]
    fn parse_startup_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64), max in 0usize..80) {
        let mut buf = BytesMut::from(&bytes[..]);
        match parse_startup(&mut buf, max) {
            Ok(Some(_)) => {
                let consumed = bytes.len() - buf.len();
                prop_assert!((8..=max).contains(&consumed));
            }
            Ok(None) | Err(_) => prop_assert_eq!(buf.len(), bytes.len()),
        }
    }

    #[test]
    fn parse_startup_checks_length_first(len in any::<i32>(), max in 8usize..10_000) {
        let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
        let result = parse_startup(&mut buf, max);
        if len < 8 {
            prop_assert_eq!(result, Err(ProtocolError::MessageTooShort { len }));
        } else if len as usize > max {
            prop_assert_eq!(result, Err(ProtocolError::MessageTooLarge { len: len as usize, max }));
        } else {
            prop_assert_eq!(result, Ok(None));
        }
    }

    #[test]
    fn parse_header_bounds(tag in any::<u8>(), len in any::<i32>(), max in 0usize..100_000) {
        let mut bytes = vec![tag];
        bytes.extend_from_slice(&len.to_be_bytes());
        let result = parse_header(&bytes, max);
        if len < 4 {
            prop_assert_eq!(result, Err(ProtocolError::MessageTooShort { len }));
        } else if len as usize + 1 > max {
            prop_assert_eq!(result, Err(ProtocolError::MessageTooLarge { len: len as usize + 1, max }));
        } else {
            prop_assert_eq!(result, Ok(Some(FrameHeader { tag, len: len as usize + 1 })));
        }
        for cut in 0..HEADER_LEN {
            prop_assert_eq!(parse_header(&bytes[..cut], max), Ok(None));
        }
    }

    #[test]
    fn split_message_never_exceeds_max(bytes in prop::collection::vec(any::<u8>(), 0..256), max in 0usize..64) {
        let mut buf = BytesMut::from(&bytes[..]);
        let mut total = 0;
        while let Ok(Some(m)) = split_message(&mut buf, max) {
            prop_assert!(m.body.len() + HEADER_LEN <= max);
            total += m.body.len() + HEADER_LEN;
        }
        prop_assert_eq!(total + buf.len(), bytes.len());
    }

    #[test]
    fn scanner_never_panics_on_garbage(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        chunks in prop::collection::vec(1usize..300, 1..8),
        advance in any::<bool>(),
    ) {
        if let Ok((_, out, _, left)) = scan(&bytes, &chunks, advance) {
            prop_assert_eq!(out.len() + left, bytes.len());
            prop_assert_eq!(&out[..], &bytes[..out.len()]);
        }
    }

    #[test]
    fn scanner_reproduces_valid_streams(
        messages in prop::collection::vec(message(), 0..20),
        chunks in prop::collection::vec(1usize..700, 1..8),
        advance in any::<bool>(),
    ) {
        let input: Vec<u8> = messages.iter().flat_map(|(_, m)| m.iter().copied()).collect();
        let expected_tags: Vec<u8> = messages.iter().map(|(t, _)| *t).collect();
        let (tags, out, scanner, left) = scan(&input, &chunks, advance).unwrap();
        prop_assert_eq!(tags, expected_tags);
        prop_assert_eq!(out, input);
        prop_assert_eq!(left, 0);
        prop_assert!(!scanner.in_message());
    }

    #[test]
    fn scanner_rejects_bad_lengths(tag in any::<u8>(), len in any::<i32>()) {
        let mut bytes = vec![tag];
        bytes.extend_from_slice(&len.to_be_bytes());
        let mut scanner = Scanner::with_stream_threshold(MAX, THRESHOLD);
        let result = scanner.next(&bytes, 0);
        let streamable = tag == b'D' || tag == b'd';
        if len < 4 {
            prop_assert_eq!(result, Err(ProtocolError::MessageTooShort { len }));
        } else if len as usize + 1 > MAX && !streamable {
            prop_assert_eq!(result, Err(ProtocolError::MessageTooLarge { len: len as usize + 1, max: MAX }));
        } else {
            prop_assert!(result.is_ok());
        }
    }
}
