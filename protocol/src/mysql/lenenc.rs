//! Length-encoded integers and strings (`int<lenenc>`, `string<lenenc>`), and the bounds-checked
//! little-endian reader every MySQL parser in this crate reads payloads with.
//!
//! An `int<lenenc>` is one byte below 0xFB, or a marker byte followed by the value: 0xFC and two
//! bytes, 0xFD and three, 0xFE and eight (so 1, 3, 4 or 9 bytes in all). 0xFB is NULL in a text
//! row and 0xFF starts an ERR packet; neither is an integer.

use bytes::BufMut;

use crate::ProtocolError;

/// The byte that stands for NULL in a text result-set row.
pub const NULL_MARKER: u8 = 0xFB;

/// Decodes the `int<lenenc>` at the front of `buf`: (value, bytes it took).
pub fn parse_lenenc_int(buf: &[u8]) -> Result<(u64, usize), ProtocolError> {
    let short = || ProtocolError::Malformed("length-encoded integer past the end");
    let (&first, rest) = buf.split_first().ok_or_else(short)?;
    let width = match first {
        0..=0xFA => return Ok((u64::from(first), 1)),
        0xFC => 2,
        0xFD => 3,
        0xFE => 8,
        0xFB => {
            return Err(ProtocolError::Malformed(
                "NULL where a length-encoded integer is expected",
            ))
        }
        0xFF => {
            return Err(ProtocolError::Malformed(
                "0xFF is not a length-encoded integer",
            ))
        }
    };
    let bytes = rest.get(..width).ok_or_else(short)?;
    let value = bytes
        .iter()
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    Ok((value, 1 + width))
}

/// How many bytes [`put_lenenc_int`] writes for `value`.
pub fn lenenc_int_len(value: u64) -> usize {
    match value {
        0..=0xFA => 1,
        0xFB..=0xFFFF => 3,
        0x1_0000..=0xFF_FFFF => 4,
        _ => 9,
    }
}

/// Appends `value` as an `int<lenenc>` in its shortest form.
pub fn put_lenenc_int<B: BufMut>(value: u64, buf: &mut B) {
    let le = value.to_le_bytes();
    match lenenc_int_len(value) {
        1 => buf.put_u8(le[0]),
        3 => {
            buf.put_u8(0xFC);
            buf.put_slice(&le[..2]);
        }
        4 => {
            buf.put_u8(0xFD);
            buf.put_slice(&le[..3]);
        }
        _ => {
            buf.put_u8(0xFE);
            buf.put_slice(&le);
        }
    }
}

/// Decodes the `string<lenenc>` at the front of `buf`: (bytes, bytes it took in all).
pub fn parse_lenenc_str(buf: &[u8]) -> Result<(&[u8], usize), ProtocolError> {
    let (len, n) = parse_lenenc_int(buf)?;
    let end = usize::try_from(len)
        .ok()
        .and_then(|len| len.checked_add(n))
        .ok_or(ProtocolError::Malformed(
            "length-encoded string past the end",
        ))?;
    let s = buf.get(n..end).ok_or(ProtocolError::Malformed(
        "length-encoded string past the end",
    ))?;
    Ok((s, end))
}

/// Appends `s` as a `string<lenenc>`.
pub fn put_lenenc_str<B: BufMut>(s: &[u8], buf: &mut B) {
    put_lenenc_int(s.len() as u64, buf);
    buf.put_slice(s);
}

/// Reads little-endian integers, length-encoded values and NUL-terminated strings from the front
/// of a payload. Every read fails with `Malformed(what)` instead of panicking when bytes are
/// missing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
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

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ProtocolError> {
        let (head, tail) = self
            .buf
            .split_first_chunk::<N>()
            .ok_or(ProtocolError::Malformed(what))?;
        self.buf = tail;
        Ok(*head)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, ProtocolError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn lenenc_int(&mut self) -> Result<u64, ProtocolError> {
        let (v, n) = parse_lenenc_int(self.buf)?;
        self.buf = self.buf.get(n..).unwrap_or_default();
        Ok(v)
    }

    pub(crate) fn lenenc_str(&mut self) -> Result<&'a [u8], ProtocolError> {
        let (s, n) = parse_lenenc_str(self.buf)?;
        self.buf = self.buf.get(n..).unwrap_or_default();
        Ok(s)
    }

    /// Reads a NUL-terminated string and returns it without the NUL.
    pub(crate) fn cstr(&mut self, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        let nul = memchr::memchr(0, self.buf).ok_or(ProtocolError::Malformed(what))?;
        let (s, tail) = self.buf.split_at(nul);
        self.buf = tail.get(1..).unwrap_or_default();
        Ok(s)
    }

    /// A NUL-terminated string that must be UTF-8.
    pub(crate) fn cstr_utf8(&mut self, what: &'static str) -> Result<&'a str, ProtocolError> {
        let s = self.cstr(what)?;
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

/// `s` as UTF-8, or `Malformed(what)`.
pub(crate) fn utf8<'a>(s: &'a [u8], what: &'static str) -> Result<&'a str, ProtocolError> {
    std::str::from_utf8(s).map_err(|_| ProtocolError::Malformed(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put_lenenc_int(v, &mut out);
        out
    }

    /// Golden vectors from the protocol documentation's `int<lenenc>` table.
    #[test]
    fn golden_lenenc_ints() {
        let cases: [(u64, &[u8]); 8] = [
            (0, b"\x00"),
            (250, b"\xfa"),
            (251, b"\xfc\xfb\x00"),
            (0xFFFF, b"\xfc\xff\xff"),
            (0x1_0000, b"\xfd\x00\x00\x01"),
            (0xFF_FFFF, b"\xfd\xff\xff\xff"),
            (0x100_0000, b"\xfe\x00\x00\x00\x01\x00\x00\x00\x00"),
            (u64::MAX, b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff"),
        ];
        for (v, bytes) in cases {
            assert_eq!(encoded(v), bytes, "{v}");
            assert_eq!(lenenc_int_len(v), bytes.len());
            assert_eq!(parse_lenenc_int(bytes), Ok((v, bytes.len())));
            let mut long = bytes.to_vec();
            long.push(0x42);
            assert_eq!(parse_lenenc_int(&long), Ok((v, bytes.len())));
            for cut in 0..bytes.len() {
                assert!(parse_lenenc_int(&bytes[..cut]).is_err(), "{v} cut at {cut}");
            }
        }
        // Non-shortest forms decode too: servers never send them, but they are valid.
        assert_eq!(parse_lenenc_int(b"\xfc\x01\x00"), Ok((1, 3)));
    }

    #[test]
    fn null_and_ff_are_not_integers() {
        assert!(parse_lenenc_int(b"\xfb").is_err());
        assert!(parse_lenenc_int(b"\xff\x00\x00").is_err());
        assert!(parse_lenenc_int(b"").is_err());
    }

    #[test]
    fn lenenc_strings() {
        assert_eq!(parse_lenenc_str(b"\x03defX"), Ok((&b"def"[..], 4)));
        assert_eq!(parse_lenenc_str(b"\x00"), Ok((&b""[..], 1)));
        assert!(parse_lenenc_str(b"\x04def").is_err());
        assert!(parse_lenenc_str(b"\xfe\xff\xff\xff\xff\xff\xff\xff\xffx").is_err());
        let mut out = Vec::new();
        put_lenenc_str(b"def", &mut out);
        assert_eq!(out, b"\x03def");
        let long = vec![b'a'; 300];
        let mut out = Vec::new();
        put_lenenc_str(&long, &mut out);
        assert_eq!(&out[..3], b"\xfc\x2c\x01");
        assert_eq!(parse_lenenc_str(&out), Ok((&long[..], 303)));
    }

    #[test]
    fn reader_reads_in_bounds_and_fails_past_end() {
        let mut r = Reader::new(b"\x01\x02\x00\x04\x00\x00\x00ab\0\x02xyz");
        assert_eq!(r.u8("a"), Ok(1));
        assert_eq!(r.u16("b"), Ok(2));
        assert_eq!(r.u32("d"), Ok(4));
        assert_eq!(r.cstr_utf8("e"), Ok("ab"));
        assert_eq!(r.lenenc_str(), Ok(&b"xy"[..]));
        assert_eq!(r.finish("f"), Err(ProtocolError::Malformed("f")));
        assert_eq!(r.u16("g"), Err(ProtocolError::Malformed("g")));
        assert_eq!(r.cstr("h"), Err(ProtocolError::Malformed("h")));
        assert_eq!(r.take_rest(), b"z");
        assert!(r.is_empty());
        assert_eq!(r.u8("i"), Err(ProtocolError::Malformed("i")));
        assert_eq!(r.take(1, "j"), Err(ProtocolError::Malformed("j")));
        assert!(r.lenenc_int().is_err());
    }
}
