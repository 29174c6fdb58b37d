//! Byte-level codec: a [`Reader`] that cannot over-read and a writer helper for
//! length-prefixed structures.
//!
//! Every wire structure implements [`Codec`]: `encode` appends to a `Vec<u8>`, `read` takes
//! from a [`Reader`]. A length field read off the wire never indexes a buffer: it becomes a
//! sub-reader with [`Reader::sub`], so a substructure can never read its neighbour.

use crate::error::DecodeError;

/// One `encode`/`read` pair per wire structure.
pub trait Codec<'a>: Sized {
    /// Appends the wire form of `self` to `out`.
    fn encode(&self, out: &mut Vec<u8>);
    /// Reads one value from `r`, consuming exactly its wire form.
    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError>;

    /// The wire form as a fresh vector.
    fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// Reads one value that must span all of `bytes` (trailing data is an error).
    fn read_bytes(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let v = Self::read(&mut r)?;
        r.expect_empty("value")?;
        Ok(v)
    }
}

/// A cursor over received bytes. All accessors are bounds-checked and return
/// [`DecodeError::Truncated`] instead of panicking.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes not yet consumed.
    pub fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.left() == 0
    }

    /// Offset of the cursor from the start of this reader's buffer.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Takes `len` bytes, or fails with `Truncated` naming `what`.
    pub fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let rest = &self.buf[self.pos..];
        match rest.split_at_checked(len) {
            Some((head, _)) => {
                self.pos += len;
                Ok(head)
            }
            None => Err(DecodeError::Truncated(what)),
        }
    }

    pub fn take_array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take_array::<1>(what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take_array(what)?))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take_array(what)?))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take_array(what)?))
    }

    /// A sub-reader over the next `len` bytes; this reader moves past them.
    pub fn sub(&mut self, len: usize, what: &'static str) -> Result<Reader<'a>, DecodeError> {
        Ok(Reader::new(self.take(len, what)?))
    }

    /// All remaining bytes.
    pub fn rest(&mut self) -> &'a [u8] {
        let r = &self.buf[self.pos..];
        self.pos = self.buf.len();
        r
    }

    /// Peeks at the next byte without consuming it.
    pub fn peek_u8(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    /// Fails with `TrailingData` if anything is left.
    pub fn expect_empty(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingData(what))
        }
    }
}

/// Writes a big-endian length placeholder of `N` bytes (`N` = 1, 2 or 4), runs `body`,
/// then patches the placeholder with the number of bytes counted from `start`.
///
/// `start` is the offset the length counts from (usually the start of the structure's
/// header, since IKEv2 lengths include the header). Lengths that do not fit are a bug in
/// the caller (our own encoder built something too large); they saturate and
/// `debug_assert` fires.
pub fn with_length<const N: usize>(
    out: &mut Vec<u8>,
    len_at: usize,
    start: usize,
    body: impl FnOnce(&mut Vec<u8>),
) {
    debug_assert!(
        len_at + N <= out.len(),
        "length placeholder must already be written"
    );
    body(out);
    let total = out.len() - start;
    let bytes = (total as u64).to_be_bytes();
    debug_assert!(
        N >= 8 || total < (1usize << (8 * N)),
        "length {total} does not fit in {N} octets"
    );
    out[len_at..len_at + N].copy_from_slice(&bytes[8 - N..]);
}

/// Appends a 16-bit big-endian integer.
pub fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends a 32-bit big-endian integer.
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_never_over_reads() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16("a").unwrap(), 0x0102);
        assert_eq!(r.u16("b"), Err(DecodeError::Truncated("b")));
        assert_eq!(r.u8("c").unwrap(), 3);
        assert!(r.is_empty());
        assert_eq!(r.take(1, "d"), Err(DecodeError::Truncated("d")));
    }

    #[test]
    fn sub_reader_is_bounded() {
        let mut r = Reader::new(&[0, 0, 0, 1, 9]);
        let mut s = r.sub(4, "s").unwrap();
        assert_eq!(s.u32("x").unwrap(), 1);
        assert!(s.u8("y").is_err());
        assert_eq!(r.u8("z").unwrap(), 9);
    }

    #[test]
    fn length_prefix_counts_from_start() {
        let mut out = vec![0xaa];
        let start = out.len();
        out.extend_from_slice(&[0, 0]);
        with_length::<2>(&mut out, start, start, |o| o.extend_from_slice(&[1, 2, 3]));
        assert_eq!(out, vec![0xaa, 0, 5, 1, 2, 3]);
    }
}
