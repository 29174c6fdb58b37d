//! KD payload body (RFC 9838 4.5): the keys for the SAs of the GSA payload, in key bags.
//!
//! The body (after the generic payload header) is a list of key bags whose first octet tells
//! them apart (RFC 9838 4.5.1): zero is the member key bag ([`MemberKeyBag`], Figure 20),
//! anything else is the Protocol field of a group key bag ([`GroupKeyBag`], Figure 19).
//! Every key travels wrapped ([`WrappedKey`], Figure 21).
//!
//! As for the GSA payload, parsing checks syntax (attribute formats, lengths, AUTH_KEY at
//! most once) and [`KdPayload::validate`] / [`KdPayload::validate_against`] check the rules
//! of RFC 9838 4.5 that depend on the exchange and on the GSA payload.
//!
//! # Canonical attribute order
//!
//! Group key bag: SA_KEY..., then unknown attributes. Member key bag: WRAP_KEY..., AUTH_KEY,
//! GM_SENDER_ID..., then unknown attributes. Repeated attributes keep their received order.
//! Input in that order, with zeroed RESERVED fields and 4-octet GM_SENDER_ID values,
//! re-encodes byte for byte.
//!
//! # GM_SENDER_ID
//!
//! RFC 9838 4.5.3.3 does not give the value's format. We send a 4-octet big-endian unsigned
//! integer (the width of the GROUP_SENDER count, 4.7.4) and accept 1 to 4 octets big-endian
//! on receipt, so that a peer sending a shorter integer still interoperates.

mod validate;

pub use validate::validate_gsa_kd;

pub use crate::wire::gsa::{PolicyContext, Spi, Violation};

use crate::codec::{Codec, Reader, put_u16, put_u32, with_length};
use crate::error::DecodeError;
use crate::registry::{GroupKeyBagAttrType, MemberKeyBagAttrType, ProtocolId};
use crate::wire::attribute::Attribute;
use crate::wire::gsa::{set_once, tlv};

/// At most this many key bags in one KD payload (one per SA of the GSA payload plus the
/// member key bag; the GSA payload allows 64 policies).
pub const MAX_KEY_BAGS: usize = 65;
/// At most this many attributes in one key bag. SA_KEY (in a GSA_REKEY excluding members
/// from an LKH tree) and WRAP_KEY may repeat; a 64 KiB payload holds fewer anyway.
pub const MAX_KEY_BAG_ATTRIBUTES: usize = 1024;
/// Octets of a wrapped key before the encrypted key (Key ID, KWK ID).
pub const WRAPPED_KEY_HEADER: usize = 8;

/// A wrapped key (RFC 9838 4.5.4, Figure 21): the value of SA_KEY and WRAP_KEY.
///
/// `Debug` prints the IDs and the length of the encrypted key, never its bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// ID of the encrypted key; zero for SA keying material (RFC 9838 4.5.4).
    pub key_id: u32,
    /// ID of the key that wrapped it; zero for the default KWK (RFC 9838 4.5.4).
    pub kwk_id: u32,
    /// Output of the key wrap algorithm.
    pub encrypted: Vec<u8>,
}

impl core::fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("WrappedKey")
            .field("key_id", &self.key_id)
            .field("kwk_id", &self.kwk_id)
            .field("encrypted_len", &self.encrypted.len())
            .finish()
    }
}

impl WrappedKey {
    pub fn new(key_id: u32, kwk_id: u32, encrypted: impl Into<Vec<u8>>) -> Self {
        Self {
            key_id,
            kwk_id,
            encrypted: encrypted.into(),
        }
    }

    /// The attribute value (Figure 21).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(WRAPPED_KEY_HEADER + self.encrypted.len());
        put_u32(&mut v, self.key_id);
        put_u32(&mut v, self.kwk_id);
        v.extend_from_slice(&self.encrypted);
        v
    }

    /// Parses an attribute value (Figure 21): at least the two IDs.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let key_id = r.u32("wrapped key Key ID")?;
        let kwk_id = r.u32("wrapped key KWK ID")?;
        Ok(Self {
            key_id,
            kwk_id,
            encrypted: r.rest().to_vec(),
        })
    }
}

/// The GCKS public key for GSA_REKEY signatures: a DER SubjectPublicKeyInfo
/// (RFC 9838 4.5.3.2), kept opaque here. `Debug` prints only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthKey(pub Vec<u8>);

impl core::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "AuthKey({} octets)", self.0.len())
    }
}

impl AuthKey {
    /// The DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> &[u8] {
        &self.0
    }
}

/// Keys for one group SA (RFC 9838 4.5.2, Figure 19).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupKeyBag {
    /// GIKE_UPDATE for the Rekey SA, ESP or AH for Data-Security SAs.
    pub protocol: ProtocolId,
    pub spi: Spi,
    /// SA_KEY attributes (RFC 9838 4.5.2.1), in received order.
    pub sa_keys: Vec<WrappedKey>,
    /// Attributes of types this implementation does not know, in received order.
    pub unknown: Vec<Attribute>,
}

impl GroupKeyBag {
    /// A bag for the SA `protocol`/`spi` with no keys yet.
    pub fn new(protocol: ProtocolId, spi: Spi) -> Self {
        Self {
            protocol,
            spi,
            sa_keys: Vec::new(),
            unknown: Vec::new(),
        }
    }

    /// A Rekey SA (KEK) bag.
    pub fn kek(spi_i: u64, spi_r: u64) -> Self {
        Self::new(ProtocolId::GikeUpdate, Spi::Rekey { spi_i, spi_r })
    }

    /// An ESP Data-Security SA (TEK) bag.
    pub fn esp(spi: u32) -> Self {
        Self::new(ProtocolId::Esp, Spi::Ipsec(spi))
    }

    /// An AH Data-Security SA (TEK) bag.
    pub fn ah(spi: u32) -> Self {
        Self::new(ProtocolId::Ah, Spi::Ipsec(spi))
    }

    /// Appends an SA_KEY.
    pub fn with_sa_key(mut self, key: WrappedKey) -> Self {
        self.sa_keys.push(key);
        self
    }
}

impl<'a> Codec<'a> for GroupKeyBag {
    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.push(self.protocol.value());
        out.push(self.spi.size());
        put_u16(out, 0);
        with_length::<2>(out, start + 2, start, |out| {
            self.spi.encode(out);
            for k in &self.sa_keys {
                Attribute::tlv(GroupKeyBagAttrType::SaKey, k.to_bytes()).encode(out);
            }
            Attribute::encode_all(&self.unknown, out);
        });
    }

    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let protocol = ProtocolId::read(r)?;
        let spi_size = r.u8("group key bag SPI Size")?;
        let mut body = sub_body(r, "group key bag")?;
        // RFC 9838 4.5.2: GIKE_UPDATE (16-octet SPI), AH or ESP (4-octet SPI).
        let spi = Spi::read_for(protocol, spi_size.into(), &mut body)?;
        let mut bag = Self::new(protocol, spi);
        for a in Attribute::read_all(&mut body, MAX_KEY_BAG_ATTRIBUTES)? {
            match GroupKeyBagAttrType::from(a.ty) {
                // RFC 9838 4.5.2: SA_KEY is TLV; its value is a wrapped key (4.5.4).
                GroupKeyBagAttrType::SaKey => bag.sa_keys.push(WrappedKey::from_bytes(tlv(
                    &a,
                    "SA_KEY format (must be TLV)",
                )?)?),
                _ => bag.unknown.push(a),
            }
        }
        Ok(bag)
    }
}

/// Keys and parameters for one member (RFC 9838 4.5.3, Figure 20).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberKeyBag {
    /// WRAP_KEY attributes: intermediate keys of a key tree (RFC 9838 4.5.3.1).
    pub wrap_keys: Vec<WrappedKey>,
    /// AUTH_KEY: the GSA_REKEY signature key (RFC 9838 4.5.3.2).
    pub auth_key: Option<AuthKey>,
    /// GM_SENDER_ID values for this member (RFC 9838 4.5.3.3).
    pub sender_ids: Vec<u32>,
    /// Attributes of types this implementation does not know, in received order.
    pub unknown: Vec<Attribute>,
}

impl MemberKeyBag {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a WRAP_KEY.
    pub fn with_wrap_key(mut self, key: WrappedKey) -> Self {
        self.wrap_keys.push(key);
        self
    }

    /// Sets AUTH_KEY (a DER SubjectPublicKeyInfo).
    pub fn with_auth_key(mut self, spki_der: impl Into<Vec<u8>>) -> Self {
        self.auth_key = Some(AuthKey(spki_der.into()));
        self
    }

    /// Appends a GM_SENDER_ID.
    pub fn with_sender_id(mut self, id: u32) -> Self {
        self.sender_ids.push(id);
        self
    }
}

impl<'a> Codec<'a> for MemberKeyBag {
    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        // RFC 9838 4.5.3: Protocol MUST be zero; RESERVED MUST be zero on transmission.
        out.push(0);
        out.push(0);
        put_u16(out, 0);
        with_length::<2>(out, start + 2, start, |out| {
            for k in &self.wrap_keys {
                Attribute::tlv(MemberKeyBagAttrType::WrapKey, k.to_bytes()).encode(out);
            }
            if let Some(k) = &self.auth_key {
                Attribute::tlv(MemberKeyBagAttrType::AuthKey, k.0.as_slice()).encode(out);
            }
            for id in &self.sender_ids {
                Attribute::tlv(MemberKeyBagAttrType::GmSenderId, id.to_be_bytes()).encode(out);
            }
            Attribute::encode_all(&self.unknown, out);
        });
    }

    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let protocol = r.u8("member key bag Protocol")?;
        if protocol != 0 {
            return Err(DecodeError::InvalidValue {
                what: "member key bag Protocol",
                value: protocol.into(),
            });
        }
        // RFC 9838 4.5.3: RESERVED MUST be ignored on receipt.
        let _reserved = r.u8("member key bag RESERVED")?;
        let mut body = sub_body(r, "member key bag")?;
        let mut bag = Self::default();
        // RFC 9838 4.5.3: all TLV; WRAP_KEY and GM_SENDER_ID multi-valued, AUTH_KEY not.
        for a in Attribute::read_all(&mut body, MAX_KEY_BAG_ATTRIBUTES)? {
            match MemberKeyBagAttrType::from(a.ty) {
                MemberKeyBagAttrType::WrapKey => bag.wrap_keys.push(WrappedKey::from_bytes(tlv(
                    &a,
                    "WRAP_KEY format (must be TLV)",
                )?)?),
                MemberKeyBagAttrType::AuthKey => {
                    // RFC 9838 4.5.3.2: multiple AUTH_KEY attributes MUST NOT be sent.
                    let der = tlv(&a, "AUTH_KEY format (must be TLV)")?;
                    set_once(&mut bag.auth_key, AuthKey(der.to_vec()), "AUTH_KEY")?;
                }
                MemberKeyBagAttrType::GmSenderId => {
                    let v = tlv(&a, "GM_SENDER_ID format (must be TLV)")?;
                    bag.sender_ids.push(sender_id(v)?);
                }
                _ => bag.unknown.push(a),
            }
        }
        Ok(bag)
    }
}

/// A GM_SENDER_ID value: 1 to 4 octets, big-endian (see the module documentation).
fn sender_id(v: &[u8]) -> Result<u32, DecodeError> {
    if v.is_empty() || v.len() > 4 {
        return Err(DecodeError::InvalidLength {
            what: "GM_SENDER_ID",
            len: v.len(),
        });
    }
    Ok(v.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
}

/// Reads the Length field of a key bag header and returns a reader over the rest of the bag.
fn sub_body<'a>(r: &mut Reader<'a>, what: &'static str) -> Result<Reader<'a>, DecodeError> {
    let len = usize::from(r.u16(what)?);
    let body_len = len
        .checked_sub(4)
        .ok_or(DecodeError::InvalidLength { what, len })?;
    r.sub(body_len, what)
}

/// One key bag of the KD payload (RFC 9838 4.5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyBag {
    /// Keys for one group SA.
    Group(GroupKeyBag),
    /// Keys and parameters for the receiving member.
    Member(MemberKeyBag),
}

impl From<GroupKeyBag> for KeyBag {
    fn from(b: GroupKeyBag) -> Self {
        Self::Group(b)
    }
}

impl From<MemberKeyBag> for KeyBag {
    fn from(b: MemberKeyBag) -> Self {
        Self::Member(b)
    }
}

impl<'a> Codec<'a> for KeyBag {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Group(b) => b.encode(out),
            Self::Member(b) => b.encode(out),
        }
    }

    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        // RFC 9838 4.5.1: the first octet is zero for the member key bag, a protocol
        // otherwise.
        match r.peek_u8() {
            None => Err(DecodeError::Truncated("key bag")),
            Some(0) => Ok(Self::Member(MemberKeyBag::read(r)?)),
            Some(_) => Ok(Self::Group(GroupKeyBag::read(r)?)),
        }
    }
}

/// The body of a KD payload (after the generic payload header): the key bags in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KdPayload {
    pub bags: Vec<KeyBag>,
}

impl KdPayload {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a key bag (group or member).
    pub fn with(mut self, bag: impl Into<KeyBag>) -> Self {
        self.bags.push(bag.into());
        self
    }

    /// The group key bags, in order.
    pub fn group_bags(&self) -> impl Iterator<Item = &GroupKeyBag> {
        self.bags.iter().filter_map(|b| match b {
            KeyBag::Group(g) => Some(g),
            KeyBag::Member(_) => None,
        })
    }

    /// The first member key bag, if any. [`KdPayload::validate`] rejects more than one.
    pub fn member(&self) -> Option<&MemberKeyBag> {
        self.bags.iter().find_map(|b| match b {
            KeyBag::Member(m) => Some(m),
            KeyBag::Group(_) => None,
        })
    }

    /// The key bag of the SA `protocol`/`spi`, if present.
    pub fn bag_for(&self, protocol: ProtocolId, spi: &Spi) -> Option<&GroupKeyBag> {
        self.group_bags()
            .find(|b| b.protocol == protocol && b.spi == *spi)
    }

    /// The Rekey SA (GIKE_UPDATE) key bag, if present.
    pub fn kek(&self) -> Option<&GroupKeyBag> {
        self.group_bags()
            .find(|b| b.protocol == ProtocolId::GikeUpdate)
    }
}

impl<'a> Codec<'a> for KdPayload {
    fn encode(&self, out: &mut Vec<u8>) {
        for b in &self.bags {
            b.encode(out);
        }
    }

    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let mut bags = Vec::new();
        while !r.is_empty() {
            if bags.len() == MAX_KEY_BAGS {
                return Err(DecodeError::TooMany("key bags"));
            }
            bags.push(KeyBag::read(r)?);
        }
        Ok(Self { bags })
    }
}
