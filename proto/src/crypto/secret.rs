//! Secret byte strings: zeroized on drop, never printed.

use zeroize::{Zeroize, ZeroizeOnDrop};

/// Secret bytes of any length (keys, shared secrets, keying material).
///
/// The buffer is wiped when dropped; `Debug` prints only the length.
#[derive(Clone, Default, Zeroize, ZeroizeOnDrop)]
pub struct SecretBytes(Vec<u8>);

/// Constant time in the content (lengths are not secret).
impl PartialEq for SecretBytes {
    fn eq(&self, other: &Self) -> bool {
        super::ct_eq(&self.0, &other.0)
    }
}

impl Eq for SecretBytes {}

impl SecretBytes {
    /// Takes ownership of `bytes` (they are wiped when this value drops).
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    pub fn from_slice(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }

    /// `len` zero bytes, to be filled in place.
    pub fn zeroed(len: usize) -> Self {
        Self(vec![0; len])
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_mut_bytes(&mut self) -> &mut [u8] {
        &mut self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A copy of the `len` bytes at `offset` as a new secret, or `None` if out of range.
    pub fn copy_range(&self, offset: usize, len: usize) -> Option<Self> {
        let end = offset.checked_add(len)?;
        self.0.get(offset..end).map(Self::from_slice)
    }

    /// Appends bytes (the old allocation is wiped if the vector has to grow).
    pub fn extend_from_slice(&mut self, more: &[u8]) {
        if self.0.capacity() - self.0.len() < more.len() {
            let mut grown = Vec::with_capacity(self.0.len() + more.len());
            grown.extend_from_slice(&self.0);
            self.0.zeroize();
            self.0 = grown;
        }
        self.0.extend_from_slice(more);
    }
}

impl core::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SecretBytes({} octets)", self.0.len())
    }
}

impl AsRef<[u8]> for SecretBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_and_slices() {
        let mut s = SecretBytes::from_slice(&[1, 2, 3, 4]);
        assert_eq!(format!("{s:?}"), "SecretBytes(4 octets)");
        assert_eq!(s.copy_range(1, 2).unwrap().as_bytes(), &[2, 3]);
        assert!(s.copy_range(3, 2).is_none());
        assert!(s.copy_range(usize::MAX, 2).is_none());
        s.extend_from_slice(&[5; 100]);
        assert_eq!(s.len(), 104);
    }
}
