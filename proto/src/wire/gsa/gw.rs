//! The group-wide policy substructure (RFC 9838 4.4.3, Figure 17) and its attributes
//! (4.4.3.1).

use super::MAX_GW_ATTRIBUTES;
use super::{set_once, tv};
use crate::codec::{Codec, Reader, put_u16, with_length};
use crate::error::DecodeError;
use crate::registry::GwpAttrType;
use crate::wire::attribute::Attribute;

/// The group-wide (GW) policy (RFC 9838 4.4.3), typed.
///
/// Encoded in the canonical order GWP_ATD, GWP_DTD, GWP_SENDER_ID_BITS, then `unknown`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GwPolicy {
    /// GWP_ATD: Activation Time Delay in seconds (RFC 9838 4.4.3.1.1).
    pub atd: Option<u16>,
    /// GWP_DTD: Deactivation Time Delay in seconds (RFC 9838 4.4.3.1.1).
    pub dtd: Option<u16>,
    /// GWP_SENDER_ID_BITS: IV bits that carry the Sender-ID (RFC 9838 4.4.3.1.2).
    pub sender_id_bits: Option<u16>,
    /// Attributes of types this implementation does not know, in received order.
    pub unknown: Vec<Attribute>,
}

impl GwPolicy {
    /// A GW policy without attributes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets GWP_ATD (seconds).
    pub fn with_atd(mut self, secs: u16) -> Self {
        self.atd = Some(secs);
        self
    }

    /// Sets GWP_DTD (seconds).
    pub fn with_dtd(mut self, secs: u16) -> Self {
        self.dtd = Some(secs);
        self
    }

    /// Sets GWP_SENDER_ID_BITS.
    pub fn with_sender_id_bits(mut self, bits: u16) -> Self {
        self.sender_id_bits = Some(bits);
        self
    }
}

impl<'a> Codec<'a> for GwPolicy {
    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        // RFC 9838 4.4.3: Protocol MUST be zero; RESERVED MUST be zero on transmission.
        out.push(0);
        out.push(0);
        put_u16(out, 0);
        with_length::<2>(out, start + 2, start, |out| {
            if let Some(v) = self.atd {
                Attribute::tv(GwpAttrType::Atd, v).encode(out);
            }
            if let Some(v) = self.dtd {
                Attribute::tv(GwpAttrType::Dtd, v).encode(out);
            }
            if let Some(v) = self.sender_id_bits {
                Attribute::tv(GwpAttrType::SenderIdBits, v).encode(out);
            }
            Attribute::encode_all(&self.unknown, out);
        });
    }

    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let protocol = r.u8("GW policy Protocol")?;
        if protocol != 0 {
            return Err(DecodeError::InvalidValue {
                what: "GW policy Protocol",
                value: protocol.into(),
            });
        }
        // RFC 9838 4.4.3: RESERVED MUST be ignored on receipt.
        let _reserved = r.u8("GW policy RESERVED")?;
        let len = usize::from(r.u16("GW policy length")?);
        let mut body = r.sub(
            len.checked_sub(4).ok_or(DecodeError::InvalidLength {
                what: "GW policy",
                len,
            })?,
            "GW policy",
        )?;
        let mut gw = Self::default();
        // RFC 9838 4.4.3.1: all three attributes are TV and single-valued.
        for a in Attribute::read_all(&mut body, MAX_GW_ATTRIBUTES)? {
            match GwpAttrType::from(a.ty) {
                GwpAttrType::Atd => {
                    let v = tv(&a, "GWP_ATD format (must be TV)")?;
                    set_once(&mut gw.atd, v, "GWP_ATD")?;
                }
                GwpAttrType::Dtd => {
                    let v = tv(&a, "GWP_DTD format (must be TV)")?;
                    set_once(&mut gw.dtd, v, "GWP_DTD")?;
                }
                GwpAttrType::SenderIdBits => {
                    let v = tv(&a, "GWP_SENDER_ID_BITS format (must be TV)")?;
                    set_once(&mut gw.sender_id_bits, v, "GWP_SENDER_ID_BITS")?;
                }
                _ => gw.unknown.push(a),
            }
        }
        Ok(gw)
    }
}
