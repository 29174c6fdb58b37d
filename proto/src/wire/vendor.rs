//! Vendor ID payload body (RFC 7296 3.12). Unfamiliar Vendor IDs MUST be ignored.

use crate::codec::{Codec, Reader};
use crate::error::DecodeError;

/// A Vendor ID: an opaque constant chosen by its vendor (RFC 7296 3.12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VendorIdPayload(pub Vec<u8>);

impl<'a> Codec<'a> for VendorIdPayload {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0);
    }

    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(Self(r.rest().to_vec()))
    }
}
