//! Key Exchange payload body (RFC 7296 3.4; KE methods per RFC 9370 and ML-KEM).

use crate::codec::{Codec, Reader, put_u16};
use crate::error::DecodeError;
use crate::registry::KeId;

/// A KE payload: the key exchange method and the public value (or, for ML-KEM, the
/// encapsulation key or ciphertext). Public data, so the derived `Debug` is safe.
#[derive(Clone, PartialEq, Eq)]
pub struct KePayload {
    pub method: KeId,
    pub data: Vec<u8>,
}

impl KePayload {
    pub fn new(method: KeId, data: impl Into<Vec<u8>>) -> Self {
        Self {
            method,
            data: data.into(),
        }
    }
}

impl core::fmt::Debug for KePayload {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KePayload")
            .field("method", &self.method)
            .field("data_len", &self.data.len())
            .finish()
    }
}

impl<'a> Codec<'a> for KePayload {
    fn encode(&self, out: &mut Vec<u8>) {
        self.method.encode(out);
        put_u16(out, 0);
        out.extend_from_slice(&self.data);
    }

    /// Reads the whole remaining body (the payload header delimits it).
    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let method = KeId::read(r)?;
        let _reserved = r.u16("KE RESERVED")?;
        Ok(Self {
            method,
            data: r.rest().to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ke_wire_form() {
        let ke = KePayload::new(KeId::Curve25519, vec![9u8; 32]);
        let b = ke.to_bytes();
        assert_eq!(&b[..4], &[0, 31, 0, 0]);
        assert_eq!(b.len(), 36);
        assert_eq!(KePayload::read_bytes(&b).unwrap(), ke);
        assert!(KePayload::read_bytes(&[0, 31, 0]).is_err());
    }
}
