//! KD payload (RFC 9838 4.5). Placeholder body kept as raw octets until the typed codec lands.

use crate::codec::{Codec, Reader};
use crate::error::DecodeError;

/// The body of a KD payload (after the generic payload header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KdPayload {
    pub raw: Vec<u8>,
}

impl<'a> Codec<'a> for KdPayload {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.raw);
    }
    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(Self { raw: r.rest().to_vec() })
    }
}
