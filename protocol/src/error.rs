//! The one error type of the protocol crate.

use thiserror::Error;

/// A violation of the wire protocol, or an argument an encoder cannot put on the wire.
///
/// An incomplete buffer is never an error: parsers return `Ok(None)` for that.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A message claims (or would need) more bytes than allowed. `len` counts the whole message as
    /// the limit does.
    #[error("message of {len} bytes exceeds the maximum of {max} bytes")]
    MessageTooLarge { len: usize, max: usize },
    /// The length field of a message is below the smallest valid value.
    #[error("message length {len} is below the protocol minimum")]
    MessageTooShort { len: i32 },
    /// The message does not have the layout the protocol prescribes.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// A startup packet asked for a protocol version Suture does not speak (e.g. 2.0).
    #[error("unsupported protocol version {}.{}", .0 >> 16, .0 & 0xffff)]
    UnsupportedProtocolVersion(u32),
    /// An encoder was given a value that cannot be written (e.g. a string with an embedded NUL).
    #[error("cannot encode message: {0}")]
    InvalidArgument(&'static str),
    /// A MySQL packet carries another sequence id than the conversation is at.
    #[error("packet sequence id {got}, expected {expected}")]
    OutOfSequence { expected: u8, got: u8 },
}

impl ProtocolError {
    /// A fixed, low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ProtocolError::MessageTooLarge { .. } => "message_too_large",
            ProtocolError::MessageTooShort { .. } => "message_too_short",
            ProtocolError::Malformed(_) => "malformed",
            ProtocolError::UnsupportedProtocolVersion(_) => "unsupported_protocol_version",
            ProtocolError::InvalidArgument(_) => "invalid_argument",
            ProtocolError::OutOfSequence { .. } => "out_of_sequence",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_labels() {
        let e = ProtocolError::UnsupportedProtocolVersion(0x0002_0000);
        assert_eq!(e.to_string(), "unsupported protocol version 2.0");
        assert_eq!(e.label(), "unsupported_protocol_version");
        let e = ProtocolError::MessageTooLarge { len: 10, max: 5 };
        assert_eq!(
            e.to_string(),
            "message of 10 bytes exceeds the maximum of 5 bytes"
        );
        let e = ProtocolError::OutOfSequence {
            expected: 1,
            got: 0,
        };
        assert_eq!(e.to_string(), "packet sequence id 0, expected 1");
        assert_eq!(e.label(), "out_of_sequence");
    }
}
