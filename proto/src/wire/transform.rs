//! Transform substructures (RFC 7296 3.3.2), used in proposals (SA, SAg) and, as a bare list,
//! in GSA policy substructures (RFC 9838 4.4.2, 4.4.2.1).

use crate::codec::{Codec, Reader, put_u16, with_length};
use crate::error::DecodeError;
use crate::registry::{
    EncrId, GcAuthId, IntegId, KeId, KwaId, PrfId, SnId, TransformAttrType, TransformType,
};
use crate::wire::attribute::Attribute;

/// "Last Substruc" value of a transform that is followed by another (RFC 7296 3.3.2).
pub const MORE_TRANSFORMS: u8 = 3;
/// At most this many attributes per transform (bounded input; real ones carry one or two).
pub const MAX_TRANSFORM_ATTRIBUTES: usize = 16;
/// At most this many transforms in one proposal or GSA policy.
pub const MAX_TRANSFORMS: usize = 64;

/// One transform: a type, an ID in that type's registry, and its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transform {
    pub ty: TransformType,
    pub id: u16,
    pub attributes: Vec<Attribute>,
}

impl Transform {
    pub fn new(ty: TransformType, id: u16) -> Self {
        Self {
            ty,
            id,
            attributes: Vec::new(),
        }
    }

    pub fn encr(id: EncrId, key_bits: Option<u16>) -> Self {
        let mut t = Self::new(TransformType::Encr, id.value());
        if let Some(bits) = key_bits {
            t.attributes
                .push(Attribute::tv(TransformAttrType::KeyLength, bits));
        }
        t
    }
    pub fn prf(id: PrfId) -> Self {
        Self::new(TransformType::Prf, id.value())
    }
    pub fn integ(id: IntegId) -> Self {
        Self::new(TransformType::Integ, id.value())
    }
    pub fn ke(id: KeId) -> Self {
        Self::new(TransformType::Ke, id.value())
    }
    pub fn sn(id: SnId) -> Self {
        Self::new(TransformType::Sn, id.value())
    }
    pub fn kwa(id: KwaId) -> Self {
        Self::new(TransformType::Kwa, id.value())
    }
    /// A GCAUTH transform; `sig_alg_id` is the DER AlgorithmIdentifier carried in the
    /// Signature Algorithm Identifier attribute (RFC 9838 4.4.2.1.1).
    pub fn gcauth(id: GcAuthId, sig_alg_id: Option<&[u8]>) -> Self {
        let mut t = Self::new(TransformType::GcAuth, id.value());
        if let Some(der) = sig_alg_id {
            t.attributes
                .push(Attribute::tlv(TransformAttrType::SignatureAlgorithmId, der));
        }
        t
    }

    /// The Key Length attribute (RFC 7296 3.3.5), if present.
    pub fn key_length(&self) -> Option<u16> {
        self.attr(TransformAttrType::KeyLength)
            .and_then(Attribute::as_tv)
    }

    /// The Signature Algorithm Identifier attribute (RFC 9838 4.4.2.1.1), if present.
    pub fn signature_algorithm_id(&self) -> Option<&[u8]> {
        self.attr(TransformAttrType::SignatureAlgorithmId)
            .and_then(Attribute::as_tlv)
    }

    pub fn attr(&self, ty: TransformAttrType) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.ty == ty.value())
    }

    /// Encodes a transform list with "Last Substruc" 3 on all but the last one, which gets 0.
    pub fn encode_list(list: &[Self], out: &mut Vec<u8>) {
        for (i, t) in list.iter().enumerate() {
            let last = if i + 1 == list.len() {
                0
            } else {
                MORE_TRANSFORMS
            };
            t.encode_with_last(last, out);
        }
    }

    /// Reads exactly `count` transforms, if given, or until a transform says it is last.
    /// The "Last Substruc" fields must agree with the count (RFC 7296 3.3.2).
    pub fn read_list(r: &mut Reader<'_>, count: Option<usize>) -> Result<Vec<Self>, DecodeError> {
        let mut v = Vec::new();
        loop {
            if v.len() == MAX_TRANSFORMS {
                return Err(DecodeError::TooMany("transforms"));
            }
            let (last, t) = Self::read_with_last(r)?;
            v.push(t);
            let is_last = match last {
                0 => true,
                MORE_TRANSFORMS => false,
                other => {
                    return Err(DecodeError::InvalidValue {
                        what: "transform Last Substruc",
                        value: other.into(),
                    });
                }
            };
            match count {
                Some(n) if v.len() == n && !is_last => {
                    return Err(DecodeError::InvalidValue {
                        what: "transform count",
                        value: n as u64,
                    });
                }
                Some(n) if v.len() < n && is_last => {
                    return Err(DecodeError::InvalidValue {
                        what: "transform count",
                        value: n as u64,
                    });
                }
                _ => {}
            }
            if is_last {
                return Ok(v);
            }
        }
    }

    fn encode_with_last(&self, last: u8, out: &mut Vec<u8>) {
        let start = out.len();
        out.push(last);
        out.push(0);
        put_u16(out, 0);
        with_length::<2>(out, start + 2, start, |out| {
            out.push(self.ty.value());
            out.push(0);
            put_u16(out, self.id);
            Attribute::encode_all(&self.attributes, out);
        });
    }

    fn read_with_last(r: &mut Reader<'_>) -> Result<(u8, Self), DecodeError> {
        let last = r.u8("transform Last Substruc")?;
        let _reserved = r.u8("transform RESERVED")?;
        let len = r.u16("transform length")? as usize;
        if len < 8 {
            return Err(DecodeError::InvalidLength {
                what: "transform",
                len,
            });
        }
        let mut body = r.sub(len - 4, "transform")?;
        let ty = TransformType::read(&mut body)?;
        let _reserved = body.u8("transform RESERVED")?;
        let id = body.u16("transform ID")?;
        let attributes = Attribute::read_all(&mut body, MAX_TRANSFORM_ATTRIBUTES)?;
        Ok((last, Self { ty, id, attributes }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_gcm_256_transform_bytes() {
        // RFC 7296 3.3.2/3.3.5: last=0, len=12, type 1, id 20, Key Length TV 256.
        let t = Transform::encr(EncrId::AesGcm16, Some(256));
        let mut out = Vec::new();
        Transform::encode_list(std::slice::from_ref(&t), &mut out);
        assert_eq!(out, [0, 0, 0, 12, 1, 0, 0, 20, 0x80, 0x0e, 0x01, 0x00]);
        let back = Transform::read_list(&mut Reader::new(&out), Some(1)).unwrap();
        assert_eq!(back, vec![t]);
        assert_eq!(back[0].key_length(), Some(256));
    }

    #[test]
    fn last_substruc_must_match_count() {
        let list = [
            Transform::prf(PrfId::HmacSha2_256),
            Transform::ke(KeId::Curve25519),
        ];
        let mut out = Vec::new();
        Transform::encode_list(&list, &mut out);
        assert_eq!(
            Transform::read_list(&mut Reader::new(&out), None)
                .unwrap()
                .len(),
            2
        );
        assert!(Transform::read_list(&mut Reader::new(&out), Some(1)).is_err());
        assert!(Transform::read_list(&mut Reader::new(&out), Some(3)).is_err());
    }
}
