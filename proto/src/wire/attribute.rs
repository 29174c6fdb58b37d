//! Data attributes in the RFC 7296 3.3.5 format (AF bit, 15-bit type, TV or TLV), shared by
//! transform attributes and by every G-IKEv2 attribute registry (GSA, GW policy, key bags;
//! RFC 9838 4.4.2.2, 4.4.3.1, 4.5.2, 4.5.3).

use crate::codec::{Codec, Reader, put_u16};
use crate::error::DecodeError;

/// The Attribute Format bit: set for TV (2-octet value inline), clear for TLV.
const AF_TV: u16 = 0x8000;

/// The value of an attribute: TV carries 16 bits inline, TLV a variable-length value.
#[derive(Clone, PartialEq, Eq)]
pub enum AttrValue {
    Tv(u16),
    Tlv(Vec<u8>),
}

impl core::fmt::Debug for AttrValue {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Tv(v) => write!(f, "Tv({v})"),
            // Attribute values may be keys (SA_KEY, WRAP_KEY); print only the length.
            Self::Tlv(v) => write!(f, "Tlv({} octets)", v.len()),
        }
    }
}

/// One data attribute. `ty` is the 15-bit type; which registry it belongs to depends on
/// where the attribute sits, so typed views are built by the containing structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub ty: u16,
    pub value: AttrValue,
}

impl Attribute {
    pub fn tv(ty: impl Into<u16>, v: u16) -> Self {
        Self {
            ty: ty.into(),
            value: AttrValue::Tv(v),
        }
    }

    pub fn tlv(ty: impl Into<u16>, v: impl Into<Vec<u8>>) -> Self {
        Self {
            ty: ty.into(),
            value: AttrValue::Tlv(v.into()),
        }
    }

    /// The TV value, if this is a TV attribute.
    pub fn as_tv(&self) -> Option<u16> {
        match self.value {
            AttrValue::Tv(v) => Some(v),
            AttrValue::Tlv(_) => None,
        }
    }

    /// The TLV value, if this is a TLV attribute.
    pub fn as_tlv(&self) -> Option<&[u8]> {
        match &self.value {
            AttrValue::Tlv(v) => Some(v),
            AttrValue::Tv(_) => None,
        }
    }

    /// Reads attributes until `r` is empty, at most `max` of them (bounded input).
    pub fn read_all(r: &mut Reader<'_>, max: usize) -> Result<Vec<Self>, DecodeError> {
        let mut v = Vec::new();
        while !r.is_empty() {
            if v.len() == max {
                return Err(DecodeError::TooMany("attributes"));
            }
            v.push(Self::read(r)?);
        }
        Ok(v)
    }

    pub fn encode_all(attrs: &[Self], out: &mut Vec<u8>) {
        for a in attrs {
            a.encode(out);
        }
    }
}

impl<'a> Codec<'a> for Attribute {
    fn encode(&self, out: &mut Vec<u8>) {
        let ty = self.ty & !AF_TV;
        match &self.value {
            AttrValue::Tv(v) => {
                put_u16(out, AF_TV | ty);
                put_u16(out, *v);
            }
            AttrValue::Tlv(v) => {
                put_u16(out, ty);
                debug_assert!(v.len() <= u16::MAX as usize);
                put_u16(out, v.len() as u16);
                out.extend_from_slice(v);
            }
        }
    }

    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let first = r.u16("attribute type")?;
        let ty = first & !AF_TV;
        let value = if first & AF_TV != 0 {
            AttrValue::Tv(r.u16("attribute value")?)
        } else {
            let len = r.u16("attribute length")? as usize;
            AttrValue::Tlv(r.take(len, "attribute value")?.to_vec())
        };
        Ok(Self { ty, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tv_and_tlv_wire_forms() {
        // Key Length 256 as TV (RFC 7296 3.3.5): 0x800e 0x0100.
        let kl = Attribute::tv(14u16, 256);
        assert_eq!(kl.to_bytes(), [0x80, 0x0e, 0x01, 0x00]);
        let t = Attribute::tlv(18u16, vec![1, 2, 3]);
        assert_eq!(t.to_bytes(), [0x00, 0x12, 0x00, 0x03, 1, 2, 3]);
        assert_eq!(Attribute::read_bytes(&t.to_bytes()).unwrap(), t);
        assert!(Attribute::read_bytes(&[0x00, 0x12, 0x00, 0x04, 1, 2, 3]).is_err());
    }

    #[test]
    fn read_all_is_bounded() {
        let mut bytes = Vec::new();
        for _ in 0..5 {
            Attribute::tv(1u16, 1).encode(&mut bytes);
        }
        assert_eq!(
            Attribute::read_all(&mut Reader::new(&bytes), 5)
                .unwrap()
                .len(),
            5
        );
        assert_eq!(
            Attribute::read_all(&mut Reader::new(&bytes), 4),
            Err(DecodeError::TooMany("attributes"))
        );
    }
}
