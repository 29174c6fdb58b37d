//! Authentication payload body (RFC 7296 3.8; RFC 7427 for method 14; RFC 9838 4.8).

use crate::codec::{Codec, Reader};
use crate::error::DecodeError;
use crate::registry::AuthMethod;

/// AUTH: the method and the authentication data (a signature, a MIC, or for method 14 an
/// ASN.1 AlgorithmIdentifier prefix followed by the signature, RFC 7427 3).
#[derive(Clone, PartialEq, Eq)]
pub struct AuthPayload {
    pub method: AuthMethod,
    pub data: Vec<u8>,
}

impl AuthPayload {
    pub fn new(method: AuthMethod, data: impl Into<Vec<u8>>) -> Self {
        Self {
            method,
            data: data.into(),
        }
    }
}

impl core::fmt::Debug for AuthPayload {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AuthPayload")
            .field("method", &self.method)
            .field("data_len", &self.data.len())
            .finish()
    }
}

impl<'a> Codec<'a> for AuthPayload {
    fn encode(&self, out: &mut Vec<u8>) {
        self.method.encode(out);
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&self.data);
    }

    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let method = AuthMethod::read(r)?;
        let _reserved = r.take(3, "AUTH RESERVED")?;
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
    fn auth_wire_form() {
        let a = AuthPayload::new(AuthMethod::DigitalSignature, vec![1, 2, 3]);
        assert_eq!(a.to_bytes(), [14, 0, 0, 0, 1, 2, 3]);
        assert_eq!(AuthPayload::read_bytes(&a.to_bytes()).unwrap(), a);
        assert!(AuthPayload::read_bytes(&[14, 0, 0]).is_err());
        assert!(!format!("{a:?}").contains("[1, 2, 3]"));
    }
}
