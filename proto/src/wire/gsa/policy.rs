//! The GSA policy substructure (RFC 9838 4.4.2, Figure 15) and its attributes (4.4.2.2).

use super::{MAX_GSA_ATTRIBUTES, Spi, set_once, tlv};
use crate::codec::{Codec, Reader, put_u16, with_length};
use crate::error::DecodeError;
use crate::registry::{EncrId, GsaAttrType, ProtocolId, TransformType};
use crate::wire::attribute::Attribute;
use crate::wire::transform::Transform;
use crate::wire::ts::TrafficSelector;

/// The GSA attributes of one policy (RFC 9838 4.4.2.2), typed.
///
/// Encoded in the canonical order GSA_KEY_LIFETIME, GSA_INITIAL_MESSAGE_ID, GSA_NEXT_SPI...,
/// then `unknown` (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GsaAttributes {
    /// GSA_KEY_LIFETIME: seconds the SA is valid (RFC 9838 4.4.2.2.1).
    pub key_lifetime: Option<u32>,
    /// GSA_INITIAL_MESSAGE_ID: the first GSA_REKEY Message ID (RFC 9838 4.4.2.2.2).
    pub initial_message_id: Option<u32>,
    /// GSA_NEXT_SPI: SPIs reserved for the replacement SA (RFC 9838 4.4.2.2.3).
    pub next_spis: Vec<Spi>,
    /// Attributes of types this implementation does not know, in received order.
    pub unknown: Vec<Attribute>,
}

impl GsaAttributes {
    /// True when no attribute is present.
    pub fn is_empty(&self) -> bool {
        self.key_lifetime.is_none()
            && self.initial_message_id.is_none()
            && self.next_spis.is_empty()
            && self.unknown.is_empty()
    }

    fn encode(&self, out: &mut Vec<u8>) {
        if let Some(v) = self.key_lifetime {
            Attribute::tlv(GsaAttrType::KeyLifetime, v.to_be_bytes()).encode(out);
        }
        if let Some(v) = self.initial_message_id {
            Attribute::tlv(GsaAttrType::InitialMessageId, v.to_be_bytes()).encode(out);
        }
        for spi in &self.next_spis {
            Attribute::tlv(GsaAttrType::NextSpi, spi.to_bytes()).encode(out);
        }
        Attribute::encode_all(&self.unknown, out);
    }

    fn read(protocol: ProtocolId, r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut attrs = Self::default();
        for a in Attribute::read_all(r, MAX_GSA_ATTRIBUTES)? {
            match GsaAttrType::from(a.ty) {
                // RFC 9838 4.4.2.2: TLV, single-valued; 4.4.2.2.1: a 4-octet integer.
                GsaAttrType::KeyLifetime => {
                    let v = tlv_u32(
                        &a,
                        "GSA_KEY_LIFETIME",
                        "GSA_KEY_LIFETIME format (must be TLV)",
                    )?;
                    set_once(&mut attrs.key_lifetime, v, "GSA_KEY_LIFETIME")?;
                }
                // RFC 9838 4.4.2.2: TLV, single-valued; 4.4.2.2.2: a 4-octet integer.
                GsaAttrType::InitialMessageId => {
                    let v = tlv_u32(
                        &a,
                        "GSA_INITIAL_MESSAGE_ID",
                        "GSA_INITIAL_MESSAGE_ID format (must be TLV)",
                    )?;
                    set_once(&mut attrs.initial_message_id, v, "GSA_INITIAL_MESSAGE_ID")?;
                }
                // RFC 9838 4.4.2.2.3: TLV, multi-valued, as long as the policy's SPI.
                GsaAttrType::NextSpi => {
                    let bytes = tlv(&a, "GSA_NEXT_SPI format (must be TLV)")?;
                    attrs.next_spis.push(Spi::read_exact(protocol, bytes)?);
                }
                _ => attrs.unknown.push(a),
            }
        }
        Ok(attrs)
    }
}

/// A TLV value that must be a 4-octet big-endian integer.
fn tlv_u32(a: &Attribute, what: &'static str, format: &'static str) -> Result<u32, DecodeError> {
    let v = tlv(a, format)?;
    let bytes: [u8; 4] = v
        .try_into()
        .map_err(|_| DecodeError::InvalidLength { what, len: v.len() })?;
    Ok(u32::from_be_bytes(bytes))
}

/// One GSA policy substructure (RFC 9838 4.4.2, Figure 15).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GsaPolicy {
    /// GIKE_UPDATE for the Rekey SA, ESP or AH for Data-Security SAs.
    pub protocol: ProtocolId,
    pub spi: Spi,
    /// Source traffic selector (one substructure, RFC 7296 3.13.1).
    pub src: TrafficSelector,
    /// Destination traffic selector (one substructure, RFC 7296 3.13.1).
    pub dst: TrafficSelector,
    /// GSA transforms (RFC 9838 4.4.2.1), in wire order.
    pub transforms: Vec<Transform>,
    pub attributes: GsaAttributes,
}

impl GsaPolicy {
    /// A policy with no transforms or attributes yet.
    pub fn new(protocol: ProtocolId, spi: Spi, src: TrafficSelector, dst: TrafficSelector) -> Self {
        Self {
            protocol,
            spi,
            src,
            dst,
            transforms: Vec::new(),
            attributes: GsaAttributes::default(),
        }
    }

    /// A Rekey SA (KEK) policy; `spi_i`/`spi_r` become the GSA_REKEY header SPIs.
    pub fn kek(spi_i: u64, spi_r: u64, src: TrafficSelector, dst: TrafficSelector) -> Self {
        Self::new(
            ProtocolId::GikeUpdate,
            Spi::Rekey { spi_i, spi_r },
            src,
            dst,
        )
    }

    /// An ESP Data-Security SA (TEK) policy.
    pub fn esp(spi: u32, src: TrafficSelector, dst: TrafficSelector) -> Self {
        Self::new(ProtocolId::Esp, Spi::Ipsec(spi), src, dst)
    }

    /// An AH Data-Security SA (TEK) policy.
    pub fn ah(spi: u32, src: TrafficSelector, dst: TrafficSelector) -> Self {
        Self::new(ProtocolId::Ah, Spi::Ipsec(spi), src, dst)
    }

    /// Appends a transform.
    pub fn with_transform(mut self, t: Transform) -> Self {
        self.transforms.push(t);
        self
    }

    /// Sets GSA_KEY_LIFETIME (seconds).
    pub fn with_key_lifetime(mut self, secs: u32) -> Self {
        self.attributes.key_lifetime = Some(secs);
        self
    }

    /// Sets GSA_INITIAL_MESSAGE_ID.
    pub fn with_initial_message_id(mut self, id: u32) -> Self {
        self.attributes.initial_message_id = Some(id);
        self
    }

    /// Appends a GSA_NEXT_SPI.
    pub fn with_next_spi(mut self, spi: Spi) -> Self {
        self.attributes.next_spis.push(spi);
        self
    }

    /// True for the Rekey SA policy (GIKE_UPDATE).
    pub fn is_kek(&self) -> bool {
        self.protocol == ProtocolId::GikeUpdate
    }

    /// True for a Data-Security SA policy (ESP or AH).
    pub fn is_tek(&self) -> bool {
        matches!(self.protocol, ProtocolId::Esp | ProtocolId::Ah)
    }

    /// The first transform of type `ty`, if any.
    pub fn transform(&self, ty: TransformType) -> Option<&Transform> {
        self.transforms.iter().find(|t| t.ty == ty)
    }

    /// The encryption algorithm, if an ENCR transform is present.
    pub fn encr_id(&self) -> Option<EncrId> {
        self.transform(TransformType::Encr)
            .map(|t| EncrId::from(t.id))
    }
}

impl<'a> Codec<'a> for GsaPolicy {
    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.push(self.protocol.value());
        out.push(self.spi.size());
        put_u16(out, 0);
        with_length::<2>(out, start + 2, start, |out| {
            self.spi.encode(out);
            self.src.encode(out);
            self.dst.encode(out);
            Transform::encode_list(&self.transforms, out);
            self.attributes.encode(out);
        });
    }

    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let protocol = ProtocolId::read(r)?;
        let spi_size = r.u8("GSA policy SPI Size")?;
        let len = usize::from(r.u16("GSA policy length")?);
        let mut body = r.sub(
            len.checked_sub(4).ok_or(DecodeError::InvalidLength {
                what: "GSA policy",
                len,
            })?,
            "GSA policy",
        )?;
        // RFC 9838 4.4.2: GIKE_UPDATE (16-octet SPI), AH or ESP (4-octet SPI).
        let spi = Spi::read_for(protocol, spi_size.into(), &mut body)?;
        let src = TrafficSelector::read(&mut body)?;
        let dst = TrafficSelector::read(&mut body)?;
        // RFC 9838 4.4.2: the transform list ends with "Last Substruc" 0; the rest are
        // GSA attributes.
        let transforms = Transform::read_list(&mut body, None)?;
        let attributes = GsaAttributes::read(protocol, &mut body)?;
        Ok(Self {
            protocol,
            spi,
            src,
            dst,
            transforms,
            attributes,
        })
    }
}
