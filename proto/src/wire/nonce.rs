//! Nonce payload body (RFC 7296 3.9).

use crate::codec::{Codec, Reader};
use crate::error::DecodeError;

/// Smallest nonce allowed on the wire (RFC 7296 3.9).
pub const MIN_NONCE_LEN: usize = 16;
/// Largest nonce allowed on the wire (RFC 7296 3.9).
pub const MAX_NONCE_LEN: usize = 256;

/// Ni or Nr: "The size of the Nonce Data MUST be between 16 and 256 octets, inclusive"
/// (RFC 7296 3.9). The constructor and the decoder both enforce it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoncePayload(Vec<u8>);

impl NoncePayload {
    /// A nonce of 16..=256 octets; anything else is refused.
    pub fn new(data: impl Into<Vec<u8>>) -> Result<Self, DecodeError> {
        let data = data.into();
        if !(MIN_NONCE_LEN..=MAX_NONCE_LEN).contains(&data.len()) {
            return Err(DecodeError::InvalidLength {
                what: "nonce",
                len: data.len(),
            });
        }
        Ok(Self(data))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl<'a> Codec<'a> for NoncePayload {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0);
    }

    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Self::new(r.rest())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_bounds() {
        assert!(NoncePayload::read_bytes(&[0u8; 15]).is_err());
        assert!(NoncePayload::read_bytes(&[0u8; 257]).is_err());
        for len in [16, 32, 256] {
            let n = NoncePayload::read_bytes(&vec![7u8; len]).unwrap();
            assert_eq!(n.as_bytes().len(), len);
            assert_eq!(n.to_bytes(), vec![7u8; len]);
        }
    }
}
