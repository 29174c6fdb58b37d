//! Encrypted payload (SK, RFC 7296 3.14) and Encrypted Fragment payload (SKF, RFC 7383
//! 2.5) bodies. Both are opaque here: IV, ciphertext, padding and ICV are the crypto
//! layer's business (`crate::crypto`); the wire layer only delimits them and gives the
//! byte ranges it needs (see [`crate::wire::message::encrypted_layout`]).

use crate::codec::{Codec, Reader, put_u16};
use crate::error::DecodeError;
use crate::registry::PayloadType;

/// The body of an SK payload. `first_inner` is the Next Payload field of the SK header,
/// which names the first payload inside (RFC 7296 3.2, 3.14); the decrypted inner chain is
/// decoded from that type with [`crate::wire::payload::decode_inner_chain`].
///
/// `header_octet` is the octet holding the critical bit and RESERVED, kept verbatim: it is
/// covered by the ICV (RFC 5282 5.1) and, for GSA_REKEY, by the signature; RFC 9838
/// 2.4.1.2 makes a reassembled SK carry the RESERVED value of fragment 1.
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptedPayload {
    pub first_inner: PayloadType,
    pub header_octet: u8,
    /// IV | encrypted inner payloads, padding, pad length | ICV.
    pub data: Vec<u8>,
}

impl EncryptedPayload {
    pub fn new(first_inner: PayloadType, data: Vec<u8>) -> Self {
        Self {
            first_inner,
            header_octet: 0,
            data,
        }
    }
}

impl core::fmt::Debug for EncryptedPayload {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EncryptedPayload")
            .field("first_inner", &self.first_inner)
            .field("header_octet", &self.header_octet)
            .field("data_len", &self.data.len())
            .finish()
    }
}

impl<'a> Codec<'a> for EncryptedPayload {
    /// The body only: the generic header (with `first_inner` and `header_octet`) is
    /// written by the payload chain encoder.
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.data);
    }

    /// Reads the body; the caller sets `first_inner` and `header_octet` from the header.
    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(Self::new(PayloadType::NoNext, r.rest().to_vec()))
    }
}

/// Length of the SKF fields before the IV: Fragment Number, Total Fragments.
pub const SKF_FIELDS_LEN: usize = 4;

/// The body of an SKF payload (RFC 7383 2.5). `first_inner` is the Next Payload field:
/// the first inner payload type in fragment 1, zero in the others.
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptedFragment {
    pub first_inner: PayloadType,
    pub header_octet: u8,
    number: u16,
    total: u16,
    /// IV | encrypted chunk, padding, pad length | ICV.
    pub data: Vec<u8>,
}

impl EncryptedFragment {
    /// A fragment; `1 <= number <= total` (RFC 7383 2.5), else `InvalidValue`.
    pub fn new(
        first_inner: PayloadType,
        number: u16,
        total: u16,
        data: Vec<u8>,
    ) -> Result<Self, DecodeError> {
        check_numbers(number, total)?;
        Ok(Self {
            first_inner,
            header_octet: 0,
            number,
            total,
            data,
        })
    }

    /// Fragment Number, 1-based.
    pub fn number(&self) -> u16 {
        self.number
    }

    /// Total Fragments.
    pub fn total(&self) -> u16 {
        self.total
    }
}

impl core::fmt::Debug for EncryptedFragment {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EncryptedFragment")
            .field("first_inner", &self.first_inner)
            .field("number", &self.number)
            .field("total", &self.total)
            .field("data_len", &self.data.len())
            .finish()
    }
}

/// "check that the Fragment Number and the Total Fragments fields contain non-zero values;
/// check that the value in the Fragment Number field is less than or equal to the value
/// in the Total Fragments field" (RFC 7383 2.6). Such fragments are silently discarded by
/// the receiver; the decoder reports them as `InvalidValue`.
fn check_numbers(number: u16, total: u16) -> Result<(), DecodeError> {
    if total == 0 {
        return Err(DecodeError::InvalidValue {
            what: "SKF Total Fragments",
            value: 0,
        });
    }
    if number == 0 || number > total {
        return Err(DecodeError::InvalidValue {
            what: "SKF Fragment Number",
            value: number.into(),
        });
    }
    Ok(())
}

impl<'a> Codec<'a> for EncryptedFragment {
    fn encode(&self, out: &mut Vec<u8>) {
        put_u16(out, self.number);
        put_u16(out, self.total);
        out.extend_from_slice(&self.data);
    }

    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let number = r.u16("SKF Fragment Number")?;
        let total = r.u16("SKF Total Fragments")?;
        Self::new(PayloadType::NoNext, number, total, r.rest().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_numbers_validated() {
        assert!(EncryptedFragment::read_bytes(&[0, 1, 0, 2, 9]).is_ok());
        assert!(EncryptedFragment::read_bytes(&[0, 2, 0, 2]).is_ok());
        assert!(EncryptedFragment::read_bytes(&[0, 0, 0, 2]).is_err());
        assert!(EncryptedFragment::read_bytes(&[0, 3, 0, 2]).is_err());
        assert!(EncryptedFragment::read_bytes(&[0, 0, 0, 0]).is_err());
        assert!(EncryptedFragment::read_bytes(&[0, 1, 0]).is_err());
        let f = EncryptedFragment::new(PayloadType::Gsa, 1, 3, vec![1, 2]).unwrap();
        assert_eq!(f.to_bytes(), [0, 1, 0, 3, 1, 2]);
        assert!(!format!("{f:?}").contains("[1, 2]"));
    }
}
