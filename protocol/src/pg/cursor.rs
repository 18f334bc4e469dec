//! A bounds-checked reader over a message body. Every read fails with `Malformed` instead of
//! panicking when the body is too short.

use crate::ProtocolError;

/// Reads big-endian integers and C strings from the front of a byte slice.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf }
    }

    /// Takes all bytes not read yet.
    pub(crate) fn take_rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Takes `n` bytes, or fails with `what` if fewer are left.
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        if n > self.buf.len() {
            return Err(ProtocolError::Malformed(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn read_u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        let (&first, tail) = self
            .buf
            .split_first()
            .ok_or(ProtocolError::Malformed(what))?;
        self.buf = tail;
        Ok(first)
    }

    pub(crate) fn read_i16(&mut self, what: &'static str) -> Result<i16, ProtocolError> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn read_i32(&mut self, what: &'static str) -> Result<i32, ProtocolError> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a NUL-terminated string and returns it without the NUL.
    pub(crate) fn read_cstr(&mut self, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        let nul = memchr::memchr(0, self.buf).ok_or(ProtocolError::Malformed(what))?;
        let (s, tail) = self.buf.split_at(nul);
        // `tail` starts with the NUL found above.
        self.buf = tail.get(1..).unwrap_or_default();
        Ok(s)
    }

    /// Reads a NUL-terminated string that must be valid UTF-8.
    pub(crate) fn read_str(&mut self, what: &'static str) -> Result<&'a str, ProtocolError> {
        let s = self.read_cstr(what)?;
        std::str::from_utf8(s).map_err(|_| ProtocolError::Malformed(what))
    }

    /// Fails with `what` if any bytes are left.
    pub(crate) fn finish(&self, what: &'static str) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::Malformed(what))
        }
    }
}

/// Reads a big-endian `i32` from the first four bytes of `b`, if there are four.
pub(crate) fn peek_i32(b: &[u8]) -> Option<i32> {
    match b {
        [a, b, c, d, ..] => Some(i32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_bounds_and_fails_past_end() {
        let mut c = Cursor::new(b"\x00\x01\x00\x00\x00\x02ab\0z");
        assert_eq!(c.read_i16("a"), Ok(1));
        assert_eq!(c.read_i32("b"), Ok(2));
        assert_eq!(c.read_str("c"), Ok("ab"));
        assert_eq!(c.read_cstr("d"), Err(ProtocolError::Malformed("d")));
        assert_eq!(c.read_u8("e"), Ok(b'z'));
        assert_eq!(c.read_u8("f"), Err(ProtocolError::Malformed("f")));
        assert_eq!(c.read_i32("g"), Err(ProtocolError::Malformed("g")));
        assert_eq!(c.finish("h"), Ok(()));
        let mut c = Cursor::new(b"xy");
        assert_eq!(c.finish("i"), Err(ProtocolError::Malformed("i")));
        assert_eq!(c.take_rest(), b"xy");
        assert_eq!(c.take_rest(), b"");
        assert_eq!(peek_i32(b"\0\0\0"), None);
        assert_eq!(peek_i32(b"\xff\xff\xff\xff\x01"), Some(-1));
    }
}
