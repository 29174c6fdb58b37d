//! GSA payload body (RFC 9838 4.4): the group policies a GCKS hands to its members.
//!
//! The body (after the generic payload header) is a list of substructures whose first octet
//! tells them apart (RFC 9838 4.4.1): zero is the group-wide policy ([`GwPolicy`],
//! Figure 17), anything else is the Protocol field of a GSA policy ([`GsaPolicy`],
//! Figure 15): GIKE_UPDATE for the Rekey SA (the KEK), ESP or AH for Data-Security SAs
//! (TEKs).
//!
//! Parsing checks syntax only: field sizes, attribute formats (TV or TLV as the registries
//! say), lengths and single-valued attributes appearing at most once; every failure is a
//! [`DecodeError`] (INVALID_SYNTAX). The rules of RFC 9838 that depend on the protocol or on
//! the exchange (which transforms, which attributes where) are checked separately by
//! [`GsaPolicy::validate`] and [`GsaPayload::validate`], so that the GCKS can check what it
//! builds and the member what it receives with the same code.
//!
//! # Canonical attribute order
//!
//! Attributes are stored as typed fields, so re-encoding writes them in one canonical
//! order: known attributes by ascending type (GSA: GSA_KEY_LIFETIME, GSA_INITIAL_MESSAGE_ID,
//! each GSA_NEXT_SPI in received order; GW: GWP_ATD, GWP_DTD, GWP_SENDER_ID_BITS), then
//! unknown attributes in received order. Input in that order with zeroed RESERVED fields
//! re-encodes byte for byte; any other valid input re-encodes to the same typed value.

mod gw;
mod policy;
mod validate;

pub use gw::GwPolicy;
pub use policy::{GsaAttributes, GsaPolicy};
pub(crate) use validate::check_spi;
pub(crate) use validate::is_multicast_destination;
pub use validate::{PolicyContext, Violation, is_aead, is_counter_mode, is_implicit_iv};

use crate::codec::{Codec, Reader};
use crate::error::DecodeError;
use crate::registry::ProtocolId;
use crate::wire::attribute::{AttrValue, Attribute};

/// At most this many group policies in one GSA payload (bounded input). A group has one KEK,
/// one GW policy and a handful of TEKs; 64 leaves room for large rekeys.
pub const MAX_GROUP_POLICIES: usize = 64;
/// At most this many attributes in one GSA policy (GSA_NEXT_SPI may repeat).
pub const MAX_GSA_ATTRIBUTES: usize = 64;
/// At most this many attributes in the GW policy (three are defined, each single-valued).
pub const MAX_GW_ATTRIBUTES: usize = 16;

/// The SPI of a group SA (RFC 9838 4.4.2, 4.5.2): 4 octets for ESP and AH, 16 octets for
/// GIKE_UPDATE, where the first 8 become the IKE header's initiator SPI and the last 8 its
/// responder SPI in GSA_REKEY messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Spi {
    /// An ESP or AH SPI.
    Ipsec(u32),
    /// A Rekey SA's IKE SPI pair.
    Rekey { spi_i: u64, spi_r: u64 },
}

impl Spi {
    /// The SPI Size field for this SPI.
    pub const fn size(&self) -> u8 {
        match self {
            Self::Ipsec(_) => 4,
            Self::Rekey { .. } => 16,
        }
    }

    /// The SPI size a protocol uses in GSA policies and group key bags (RFC 9838 4.4.2,
    /// 4.5.2), or `None` for protocols that have no group SA.
    pub const fn size_for(protocol: ProtocolId) -> Option<u8> {
        match protocol {
            ProtocolId::GikeUpdate => Some(16),
            ProtocolId::Esp | ProtocolId::Ah => Some(4),
            _ => None,
        }
    }

    /// True when this SPI has the shape `protocol` uses.
    pub fn fits(&self, protocol: ProtocolId) -> bool {
        Self::size_for(protocol) == Some(self.size())
    }

    /// Appends the SPI as it appears on the network.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Ipsec(v) => out.extend_from_slice(&v.to_be_bytes()),
            Self::Rekey { spi_i, spi_r } => {
                out.extend_from_slice(&spi_i.to_be_bytes());
                out.extend_from_slice(&spi_r.to_be_bytes());
            }
        }
    }

    /// The network form as a fresh vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16);
        self.encode(&mut v);
        v
    }

    /// Reads an SPI of `size` octets for `protocol`. The protocol must be one that has
    /// group SAs and the size must be the one it uses (RFC 9838 4.4.2, 4.5.2).
    pub(crate) fn read_for(
        protocol: ProtocolId,
        size: usize,
        r: &mut Reader<'_>,
    ) -> Result<Self, DecodeError> {
        match Self::size_for(protocol) {
            None => Err(DecodeError::InvalidValue {
                what: "group SA protocol",
                value: protocol.value().into(),
            }),
            Some(want) if usize::from(want) != size => Err(DecodeError::InvalidLength {
                what: "group SA SPI",
                len: size,
            }),
            Some(4) => Ok(Self::Ipsec(r.u32("SPI")?)),
            Some(_) => Ok(Self::Rekey {
                spi_i: r.u64("SPI")?,
                spi_r: r.u64("SPI")?,
            }),
        }
    }

    /// Reads an SPI that must span all of `bytes` (GSA_NEXT_SPI, RFC 9838 4.4.2.2.3).
    pub(crate) fn read_exact(protocol: ProtocolId, bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let spi = Self::read_for(protocol, bytes.len(), &mut r)?;
        r.expect_empty("SPI")?;
        Ok(spi)
    }
}

impl core::fmt::Display for Spi {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Ipsec(v) => write!(f, "{v:08x}"),
            Self::Rekey { spi_i, spi_r } => write!(f, "{spi_i:016x}{spi_r:016x}"),
        }
    }
}

/// One substructure of the GSA payload (RFC 9838 4.4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupPolicy {
    /// A GSA policy: the KEK (GIKE_UPDATE) or a TEK (ESP, AH).
    Gsa(GsaPolicy),
    /// The group-wide policy.
    Gw(GwPolicy),
}

impl From<GsaPolicy> for GroupPolicy {
    fn from(p: GsaPolicy) -> Self {
        Self::Gsa(p)
    }
}

impl From<GwPolicy> for GroupPolicy {
    fn from(p: GwPolicy) -> Self {
        Self::Gw(p)
    }
}

impl<'a> Codec<'a> for GroupPolicy {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Gsa(p) => p.encode(out),
            Self::Gw(p) => p.encode(out),
        }
    }

    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        // RFC 9838 4.4.1: the first octet is zero for GW policy, a protocol ID otherwise.
        match r.peek_u8() {
            None => Err(DecodeError::Truncated("group policy")),
            Some(0) => Ok(Self::Gw(GwPolicy::read(r)?)),
            Some(_) => Ok(Self::Gsa(GsaPolicy::read(r)?)),
        }
    }
}

/// The body of a GSA payload (after the generic payload header): the group policies in
/// the order they appear.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GsaPayload {
    pub policies: Vec<GroupPolicy>,
}

impl GsaPayload {
    /// An empty payload, to be filled with the `with_*` builders.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a policy (GSA or GW).
    pub fn with(mut self, policy: impl Into<GroupPolicy>) -> Self {
        self.policies.push(policy.into());
        self
    }

    /// Appends a GSA policy (KEK or TEK).
    pub fn with_gsa(self, policy: GsaPolicy) -> Self {
        self.with(policy)
    }

    /// Appends the group-wide policy.
    pub fn with_gw(self, policy: GwPolicy) -> Self {
        self.with(policy)
    }

    /// Every GSA policy (KEK and TEKs), in order.
    pub fn gsa_policies(&self) -> impl Iterator<Item = &GsaPolicy> {
        self.policies.iter().filter_map(|p| match p {
            GroupPolicy::Gsa(g) => Some(g),
            GroupPolicy::Gw(_) => None,
        })
    }

    /// The first Rekey SA (GIKE_UPDATE) policy, if any. [`GsaPayload::validate`] rejects
    /// payloads with more than one.
    pub fn kek(&self) -> Option<&GsaPolicy> {
        self.gsa_policies().find(|p| p.is_kek())
    }

    /// The Data-Security SA (ESP, AH) policies, in order.
    pub fn teks(&self) -> impl Iterator<Item = &GsaPolicy> {
        self.gsa_policies().filter(|p| p.is_tek())
    }

    /// The first group-wide policy, if any. [`GsaPayload::validate`] rejects payloads with
    /// more than one.
    pub fn gw(&self) -> Option<&GwPolicy> {
        self.policies.iter().find_map(|p| match p {
            GroupPolicy::Gw(g) => Some(g),
            GroupPolicy::Gsa(_) => None,
        })
    }

    /// The GSA policy for a given SA, if present.
    pub fn policy_for(&self, protocol: ProtocolId, spi: &Spi) -> Option<&GsaPolicy> {
        self.gsa_policies()
            .find(|p| p.protocol == protocol && p.spi == *spi)
    }

    /// True when some TEK uses a counter-based cipher, so that senders need Sender-IDs
    /// (RFC 9838 2.5).
    pub fn uses_counter_mode(&self) -> bool {
        self.teks()
            .any(|p| p.encr_id().is_some_and(is_counter_mode))
    }
}

impl<'a> Codec<'a> for GsaPayload {
    fn encode(&self, out: &mut Vec<u8>) {
        for p in &self.policies {
            p.encode(out);
        }
    }

    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let mut policies = Vec::new();
        while !r.is_empty() {
            if policies.len() == MAX_GROUP_POLICIES {
                return Err(DecodeError::TooMany("group policies"));
            }
            policies.push(GroupPolicy::read(r)?);
        }
        Ok(Self { policies })
    }
}

/// The TLV value of `a`; `format` names the rule broken if it came in TV format.
pub(crate) fn tlv<'b>(a: &'b Attribute, format: &'static str) -> Result<&'b [u8], DecodeError> {
    match &a.value {
        AttrValue::Tlv(v) => Ok(v),
        AttrValue::Tv(v) => Err(DecodeError::InvalidValue {
            what: format,
            value: (*v).into(),
        }),
    }
}

/// The TV value of `a`; `format` names the rule broken if it came in TLV format.
pub(crate) fn tv(a: &Attribute, format: &'static str) -> Result<u16, DecodeError> {
    match &a.value {
        AttrValue::Tv(v) => Ok(*v),
        AttrValue::Tlv(v) => Err(DecodeError::InvalidValue {
            what: format,
            value: v.len() as u64,
        }),
    }
}

/// Stores a single-valued attribute, refusing a second instance.
pub(crate) fn set_once<T>(
    slot: &mut Option<T>,
    v: T,
    what: &'static str,
) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::TooMany(what));
    }
    *slot = Some(v);
    Ok(())
}
