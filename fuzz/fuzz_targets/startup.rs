//! Fuzz target `startup`: the untagged startup-phase packets of `suture-protocol`
//! (`pg::parse_startup`: StartupMessage, SSLRequest, GSSENCRequest, CancelRequest).
//!
//! Input: bytes 0..2 are a big-endian u16 that gives the `max` packet length (0xffff means
//! `usize::MAX`; the proxy uses 10 000); the rest is what a client sent. Packets are parsed one
//! after the other, as after an SSLRequest the StartupMessage follows on the same buffer.
//!
//! Checked, besides "never panics":
//! - the length field is checked first: below 8 is `MessageTooShort`, above `max` is
//!   `MessageTooLarge`, whether or not the body has arrived;
//! - an incomplete packet is `Ok(None)` and consumes nothing, and so is every prefix of a packet
//!   that parses;
//! - an error consumes nothing; a parsed packet consumes exactly its length field's bytes;
//! - a parsed packet is what the bytes say: re-encoding it with the crate's encoders (or by hand
//!   for GSSENCRequest and minor versions) gives back the packet.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use suture_protocol::pg::{self, StartupRequest};
use suture_protocol::ProtocolError;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, wire)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max = match u16::from_be_bytes(sel) {
        u16::MAX => usize::MAX,
        m => usize::from(m),
    };
    let mut buf = BytesMut::from(wire);
    let mut offset = 0;
    loop {
        let rest = &wire[offset..];
        let Some(len) = check_length(rest, max, &mut buf) else {
            return;
        };
        let result = pg::parse_startup(&mut buf, max);
        match result {
            Ok(Some(request)) => {
                assert_eq!(
                    &buf[..],
                    &rest[len..],
                    "a packet consumed other than its length"
                );
                check_prefixes(&rest[..len], max);
                check_request(&request, &rest[..len]);
                offset += len;
            }
            Ok(None) => panic!("a whole packet of {len} bytes reported incomplete"),
            Err(e) => {
                assert!(
                    matches!(
                        e,
                        ProtocolError::Malformed(_) | ProtocolError::UnsupportedProtocolVersion(_)
                    ),
                    "unexpected error {e:?} for a packet within bounds"
                );
                assert_eq!(&buf[..], rest, "an error consumed bytes");
                return;
            }
        }
    }
});

/// Handles every outcome decided by the length field alone (too short, too large, incomplete)
/// and checks it; returns the packet length when the whole packet is in `rest`.
fn check_length(rest: &[u8], max: usize, buf: &mut BytesMut) -> Option<usize> {
    let expected = match *rest {
        [a, b, c, d, ..] => {
            let raw = i32::from_be_bytes([a, b, c, d]);
            if raw < 8 {
                Err(ProtocolError::MessageTooShort { len: raw })
            } else if raw as usize > max {
                Err(ProtocolError::MessageTooLarge {
                    len: raw as usize,
                    max,
                })
            } else if raw as usize > rest.len() {
                Ok(None)
            } else {
                return Some(raw as usize);
            }
        }
        _ => Ok(None),
    };
    assert_eq!(pg::parse_startup(buf, max), expected);
    assert_eq!(
        &buf[..],
        rest,
        "nothing may be consumed without a whole packet"
    );
    None
}

/// Every strict prefix of a packet that parsed is incomplete and consumes nothing.
fn check_prefixes(packet: &[u8], max: usize) {
    let mut buf = BytesMut::from(packet);
    for cut in (0..packet.len()).rev() {
        buf.truncate(cut);
        assert_eq!(
            pg::parse_startup(&mut buf, max),
            Ok(None),
            "prefix of {cut} bytes"
        );
        assert_eq!(&buf[..], &packet[..cut]);
    }
}

/// The packet the request must have come from.
fn check_request(request: &StartupRequest, packet: &[u8]) {
    let mut encoded = BytesMut::new();
    match request {
        StartupRequest::SslRequest => pg::encode_ssl_request(&mut encoded),
        StartupRequest::GssEncRequest => {
            encoded.extend_from_slice(&8u32.to_be_bytes());
            encoded.extend_from_slice(&pg::GSSENC_REQUEST_CODE.to_be_bytes());
        }
        StartupRequest::Cancel(c) => {
            pg::encode_cancel_request(c.process_id, c.secret_key, &mut encoded);
        }
        StartupRequest::Startup(m) => {
            assert_eq!(
                m.protocol_version >> 16,
                3,
                "accepted a protocol other than 3.x"
            );
            let params: Vec<(&str, &str)> = m
                .params
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            if let Err(e) = pg::encode_startup(&params, &mut encoded) {
                panic!("re-encoding parsed startup parameters failed: {e:?}");
            }
            // The encoder speaks 3.0 only: put the minor version that was parsed back in.
            encoded[4..8].copy_from_slice(&m.protocol_version.to_be_bytes());
            if let Some(user) = m.user() {
                assert!(!user.is_empty());
                assert!(
                    m.database().is_some(),
                    "database does not default to the user"
                );
            }
            if let Some(db) = m.database() {
                assert!(!db.is_empty());
            }
        }
    }
    assert_eq!(
        &encoded[..],
        packet,
        "the request does not re-encode to its packet"
    );
}
