//! Structural rules of RFC 9838 for GSA policies (4.4.1-4.4.3, 2.7, 5) and the error type
//! shared with the KD rules (`wire::kd`).
//!
//! These checks need no keys and no state beyond the message: the GCKS runs them on what it
//! built before sending, the member on what it received before installing anything.
//! Each [`Violation`] names the rule and the section that states it.

use std::net::IpAddr;

use super::{GroupPolicy, GsaPayload, GsaPolicy, Spi};
use crate::registry::{
    EncrId, ExchangeType, GcAuthId, IntegId, NotifyType, ProtocolId, SnId, TransformAttrType,
    TransformType,
};
use crate::wire::attribute::AttrValue;
use crate::wire::ts::TrafficSelector;

/// Where a GSA or KD payload travels; the rules differ (RFC 9838 4.4.2.1, 4.5.2.1, 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyContext {
    /// GSA_AUTH or GSA_REGISTRATION (the member registers).
    Registration,
    /// GSA_REKEY (multicast, under the Rekey SA).
    Rekey,
    /// GSA_INBAND_REKEY (unicast, under the registration IKE SA).
    InbandRekey,
}

impl PolicyContext {
    /// The context of an exchange that carries GSA and KD payloads.
    pub fn from_exchange(ex: ExchangeType) -> Option<Self> {
        match ex {
            ExchangeType::GsaAuth | ExchangeType::GsaRegistration => Some(Self::Registration),
            ExchangeType::GsaRekey => Some(Self::Rekey),
            ExchangeType::GsaInbandRekey => Some(Self::InbandRekey),
            _ => None,
        }
    }
}

impl core::fmt::Display for PolicyContext {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Registration => "GSA_AUTH/GSA_REGISTRATION",
            Self::Rekey => "GSA_REKEY",
            Self::InbandRekey => "GSA_INBAND_REKEY",
        })
    }
}

/// A structural rule of RFC 9838 broken by a GSA or KD payload. The message names the rule
/// and its section; [`Violation::notify`] is what a responder reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    // ---- GSA payload (4.4.1, 4.4.2) ----
    #[error(
        "GSA payload without any GSA policy: one KEK or TEK policy MUST be present (RFC 9838 4.4.1)"
    )]
    NoGsaPolicy,
    #[error("more than one GSA KEK policy (RFC 9838 4.4.1)")]
    TooManyKekPolicies,
    #[error("more than one GW policy (RFC 9838 4.4.1)")]
    TooManyGwPolicies,
    #[error("ESP and AH policies for the same traffic selectors (RFC 9838 4.4.2)")]
    EspAndAhSameSelectors,
    #[error("two group SAs with protocol {protocol} and SPI {spi} (RFC 9838 4.4.2, 4.5.2)")]
    DuplicateSa { protocol: ProtocolId, spi: Spi },

    // ---- GSA policy substructure (4.4.2) ----
    #[error("protocol {0} has no group SA: valid are GIKE_UPDATE, AH, ESP (RFC 9838 4.4.2, 4.5.2)")]
    InvalidProtocol(ProtocolId),
    #[error(
        "SPI of {size} octets for protocol {protocol}: GIKE_UPDATE uses 16, AH and ESP 4 (RFC 9838 4.4.2)"
    )]
    SpiSizeMismatch { protocol: ProtocolId, size: u8 },
    #[error("reserved SPI {spi} for {protocol} (RFC 4303 2.1, RFC 4302 2.4, RFC 7296 3.1)")]
    ReservedSpi { protocol: ProtocolId, spi: Spi },
    #[error(
        "Rekey SA destination must be one multicast address, UDP and one port (RFC 9838 4.4.2)"
    )]
    RekeyDestination,
    #[error(
        "source and destination traffic selectors of different address families (RFC 9838 4.4.2, RFC 7296 3.13.1)"
    )]
    TrafficSelectorFamilyMismatch,

    // ---- GSA transforms (4.4.2.1, Figure 16) ----
    #[error(
        "transform type {ty} is not valid for protocol {protocol} (RFC 9838 4.4.2.1, Figure 16)"
    )]
    TransformNotAllowed {
        protocol: ProtocolId,
        ty: TransformType,
    },
    #[error("more than one {ty} transform (RFC 9838 4.4.2.1)")]
    DuplicateTransform { ty: TransformType },
    #[error(
        "mandatory {ty} transform missing for protocol {protocol} (RFC 9838 4.4.2.1, Figure 16)"
    )]
    MissingTransform {
        protocol: ProtocolId,
        ty: TransformType,
    },
    #[error("INTEG other than NONE with an AEAD cipher (RFC 9838 4.4.2.1 (*))")]
    IntegWithAead,
    #[error(
        "non-AEAD cipher without an INTEG transform other than NONE (RFC 9838 4.4.2.1 (*), RFC 8221 4)"
    )]
    IntegRequired,
    #[error("GCAUTH transform outside registration, in {0} (RFC 9838 4.4.2.1 (**), 4.4.2.1.1)")]
    GcAuthOutsideRegistration(PolicyContext),
    #[error(
        "GCAUTH Digital Signature without a Signature Algorithm Identifier attribute (RFC 9838 4.4.2.1.1)"
    )]
    SignatureAlgorithmIdMissing,
    #[error(
        "Signature Algorithm Identifier with a GCAUTH method other than Digital Signature (RFC 9838 4.4.2.1.1)"
    )]
    SignatureAlgorithmIdNotAllowed,
    #[error(
        "Signature Algorithm Identifier is not a DER AlgorithmIdentifier (RFC 9838 4.4.2.1.1, RFC 5280 4.1.1.2)"
    )]
    SignatureAlgorithmIdMalformed,
    #[error(
        "Partially Transmitted 64-bit Sequential Numbers on a multicast Data-Security SA (RFC 9838 4.4.2.1.3)"
    )]
    Esn64ForMulticast,
    #[error(
        "32-bit Sequential Numbers on a multicast Data-Security SA with several senders: \
         32-bit Unspecified Numbers MUST be used (RFC 9838 4.4.2.1.3)"
    )]
    SequentialNumbersWithSeveralSenders,
    #[error(
        "implicit-IV cipher {0} where sequence numbers are not unique or on a G-IKEv2 SA (RFC 9838 2.7)"
    )]
    ImplicitIvNotAllowed(EncrId),
    #[error(
        "{0} without a Key Length of 128, 192 or 256, or a fixed-key cipher with one (RFC 7296 3.3.5, RFC 9838 3.4)"
    )]
    KeyLengthInvalid(EncrId),

    // ---- attributes (4.4.2.2, 4.4.3.1, 5) ----
    #[error("{attr} is not used with protocol {protocol} (RFC 9838 4.4.2.2)")]
    AttributeNotForProtocol {
        attr: &'static str,
        protocol: ProtocolId,
    },
    #[error("{attr} MUST NOT be present in {context} (RFC 9838 5, Tables 2 and 3)")]
    AttributeNotInContext {
        attr: &'static str,
        context: PolicyContext,
    },
    #[error("GSA_KEY_LIFETIME missing with multicast rekey (RFC 9838 4.4.2.2.1, 5 Table 2)")]
    KeyLifetimeMissing,

    // ---- KD payload (4.5) ----
    #[error("more than one member key bag (RFC 9838 4.5.3)")]
    TooManyMemberKeyBags,
    #[error("member key bag in {0} (RFC 9838 4.5.3, 5 Table 3)")]
    MemberKeyBagNotInContext(PolicyContext),
    #[error("{count} SA_KEY attributes for {protocol} in {context} (RFC 9838 4.5.2.1)")]
    SaKeyCount {
        protocol: ProtocolId,
        count: usize,
        context: PolicyContext,
    },
    #[error("SA_KEY with non-zero Key ID (RFC 9838 4.5.2.1)")]
    SaKeyNonZeroKeyId,
    #[error("Data-Security SA_KEY with non-zero KWK ID (RFC 9838 4.5.2.1)")]
    SaKeyNonZeroKwkId,
    #[error("WRAP_KEY with zero Key ID (RFC 9838 4.5.3.1)")]
    WrapKeyZeroKeyId,
    #[error("wrapped key without encrypted key bits (RFC 9838 4.5.4)")]
    EmptyEncryptedKey,

    // ---- KD against GSA (4.5, 4.4.2.1.1, 2.5) ----
    #[error("key bag for {protocol} SPI {spi} without a matching GSA policy (RFC 9838 4.5)")]
    KeyBagWithoutPolicy { protocol: ProtocolId, spi: Spi },
    #[error("GSA policy for {protocol} SPI {spi} without a key bag (RFC 9838 4.5)")]
    PolicyWithoutKeyBag { protocol: ProtocolId, spi: Spi },
    #[error("GCAUTH Digital Signature but no AUTH_KEY at registration (RFC 9838 4.4.2.1.1)")]
    AuthKeyMissing,
    #[error("AUTH_KEY without GCAUTH Digital Signature (RFC 9838 4.4.2.1.1, 2.4.1)")]
    AuthKeyNotAllowed,
    #[error(
        "WRAP_KEY without a Rekey SA: key trees serve multicast rekey only (RFC 9838 4.5.3.1, 5 Table 3)"
    )]
    WrapKeyWithoutRekeySa,
    #[error("GM_SENDER_ID without GWP_SENDER_ID_BITS (RFC 9838 5 Table 2 note 1, 2.5.2)")]
    SenderIdBitsMissing,
    #[error("GM_SENDER_ID without a counter-mode Data-Security SA (RFC 9838 5 Table 2 note 1)")]
    SenderIdWithoutCounterMode,
    #[error("Sender-ID {sender_id} does not fit in {bits} bits (RFC 9838 2.5.2)")]
    SenderIdTooLarge { sender_id: u32, bits: u16 },
}

impl Violation {
    /// The error notify a responder returns (RFC 7296 3.10.1): a payload that breaks the
    /// G-IKEv2 rules is malformed for the receiver.
    pub fn notify(&self) -> NotifyType {
        NotifyType::InvalidSyntax
    }
}

/// True for combined-mode (AEAD) ciphers, which carry their own integrity
/// (RFC 9838 4.4.2.1 (*); RFC 4106, 4309, 4543, 7634, 8750).
pub fn is_aead(id: EncrId) -> bool {
    matches!(
        id,
        EncrId::AesCcm8
            | EncrId::AesCcm12
            | EncrId::AesCcm16
            | EncrId::AesGcm8
            | EncrId::AesGcm12
            | EncrId::AesGcm16
            | EncrId::NullAuthAesGmac
            | EncrId::ChaCha20Poly1305
            | EncrId::AesGcm16Iiv
            | EncrId::ChaCha20Poly1305Iiv
    )
}

/// True for counter-based modes, whose senders need Sender-IDs (RFC 9838 2.5, RFC 6054).
pub fn is_counter_mode(id: EncrId) -> bool {
    id == EncrId::AesCtr || is_aead(id)
}

/// True for ciphers that build their IV from the ESP sequence number (RFC 8750; RFC 9838 2.7).
pub fn is_implicit_iv(id: EncrId) -> bool {
    matches!(id, EncrId::AesGcm16Iiv | EncrId::ChaCha20Poly1305Iiv)
}

/// AES-based ciphers take a Key Length attribute of 128, 192 or 256 bits (RFC 7296 3.3.5;
/// RFC 3602, 3686, 4106, 4309, 4543, 8750); ChaCha20-Poly1305 has a fixed key and none
/// (RFC 7634 2). `None` for ciphers this check does not cover.
fn key_length_ok(id: EncrId, key_length: Option<u16>) -> Option<bool> {
    match id {
        EncrId::AesCbc
        | EncrId::AesCtr
        | EncrId::AesCcm8
        | EncrId::AesCcm12
        | EncrId::AesCcm16
        | EncrId::AesGcm8
        | EncrId::AesGcm12
        | EncrId::AesGcm16
        | EncrId::NullAuthAesGmac
        | EncrId::AesGcm16Iiv => Some(matches!(key_length, Some(128 | 192 | 256))),
        EncrId::ChaCha20Poly1305 | EncrId::ChaCha20Poly1305Iiv => Some(key_length.is_none()),
        _ => None,
    }
}

/// Transform types a protocol may carry and which of them are mandatory in `ctx`
/// (RFC 9838 4.4.2.1, Figure 16). INTEG of GIKE_UPDATE depends on the cipher and is
/// checked apart; GCAUTH is mandatory at registration only (**).
fn transform_table(
    protocol: ProtocolId,
    ctx: PolicyContext,
) -> (&'static [TransformType], &'static [TransformType]) {
    use TransformType::*;
    match (protocol, ctx) {
        (ProtocolId::GikeUpdate, PolicyContext::Registration) => {
            (&[Encr, Integ, GcAuth, Kwa], &[Encr, GcAuth, Kwa])
        }
        (ProtocolId::GikeUpdate, _) => (&[Encr, Integ, GcAuth, Kwa], &[Encr, Kwa]),
        (ProtocolId::Esp, _) => (&[Encr, Sn, Integ], &[Encr, Sn]),
        (ProtocolId::Ah, _) => (&[Integ, Sn], &[Integ, Sn]),
        _ => (&[], &[]),
    }
}

/// RFC 4303 2.1 / RFC 4302 2.4: SPIs 0..=255 are reserved; RFC 7296 3.1: the initiator's
/// IKE SPI is never zero.
fn spi_reserved(spi: &Spi) -> bool {
    match spi {
        Spi::Ipsec(v) => *v < 256,
        Spi::Rekey { spi_i, .. } => *spi_i == 0,
    }
}

/// The SPI has the size `protocol` uses and is not a reserved value.
pub(crate) fn check_spi(protocol: ProtocolId, spi: &Spi) -> Result<(), Violation> {
    if !spi.fits(protocol) {
        return Err(Violation::SpiSizeMismatch {
            protocol,
            size: spi.size(),
        });
    }
    if spi_reserved(spi) {
        return Err(Violation::ReservedSpi {
            protocol,
            spi: *spi,
        });
    }
    Ok(())
}

/// Checks that `der` is one DER SEQUENCE spanning the whole value whose first element is an
/// OBJECT IDENTIFIER: the outer shape of an AlgorithmIdentifier (RFC 5280 4.1.1.2).
fn is_algorithm_identifier(der: &[u8]) -> bool {
    let Some((&0x30, rest)) = der.split_first() else {
        return false;
    };
    let Some((&first, rest)) = rest.split_first() else {
        return false;
    };
    let (len, content) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        // Long form: 1 or 2 length octets are plenty for an AlgorithmIdentifier.
        let n = usize::from(first & 0x7f);
        if !(1..=2).contains(&n) {
            return false;
        }
        let Some((len_bytes, content)) = rest.split_at_checked(n) else {
            return false;
        };
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, content)
    };
    len == content.len() && content.first() == Some(&0x06)
}

fn is_single_multicast_udp_port(ts: &TrafficSelector) -> bool {
    match ts {
        TrafficSelector::Range {
            ip_protocol,
            start_port,
            end_port,
            start,
            end,
        } => *ip_protocol == 17 && start_port == end_port && start == end && start.is_multicast(),
        TrafficSelector::Unknown { .. } => false,
    }
}

pub(crate) fn is_multicast_destination(ts: &TrafficSelector) -> bool {
    match ts {
        TrafficSelector::Range { start, end, .. } => start.is_multicast() && end.is_multicast(),
        TrafficSelector::Unknown { .. } => false,
    }
}

fn family(ts: &TrafficSelector) -> Option<bool> {
    match ts {
        TrafficSelector::Range { start, .. } => Some(matches!(start, IpAddr::V6(_))),
        TrafficSelector::Unknown { .. } => None,
    }
}

impl GsaPolicy {
    /// Checks the structural rules of one GSA policy for the exchange it travels in
    /// (RFC 9838 4.4.2, 4.4.2.1, 4.4.2.1.1, 4.4.2.1.3, 4.4.2.2, 2.7, 5). Rules that need the
    /// whole payload (KEK count, lifetimes at registration) are in [`GsaPayload::validate`].
    pub fn validate(&self, ctx: PolicyContext) -> Result<(), Violation> {
        let protocol = self.protocol;
        // RFC 9838 4.4.2: Protocol is GIKE_UPDATE, AH or ESP; SPI Size follows.
        if Spi::size_for(protocol).is_none() {
            return Err(Violation::InvalidProtocol(protocol));
        }
        check_spi(protocol, &self.spi)?;
        for spi in &self.attributes.next_spis {
            check_spi(protocol, spi)?;
        }
        self.validate_selectors()?;
        self.validate_transforms(ctx)?;
        self.validate_attributes(ctx)
    }

    fn validate_selectors(&self) -> Result<(), Violation> {
        if let (Some(a), Some(b)) = (family(&self.src), family(&self.dst))
            && a != b
        {
            return Err(Violation::TrafficSelectorFamilyMismatch);
        }
        // RFC 9838 4.4.2: the Rekey SA destination is one multicast address, UDP, one port.
        if self.is_kek() && !is_single_multicast_udp_port(&self.dst) {
            return Err(Violation::RekeyDestination);
        }
        Ok(())
    }

    fn validate_transforms(&self, ctx: PolicyContext) -> Result<(), Violation> {
        let protocol = self.protocol;
        let (allowed, mandatory) = transform_table(protocol, ctx);
        // RFC 9838 4.4.2.1: only the types of Figure 16, each at most once.
        let mut seen: Vec<TransformType> = Vec::with_capacity(self.transforms.len());
        for t in &self.transforms {
            if !allowed.contains(&t.ty) {
                return Err(Violation::TransformNotAllowed { protocol, ty: t.ty });
            }
            if seen.contains(&t.ty) {
                return Err(Violation::DuplicateTransform { ty: t.ty });
            }
            seen.push(t.ty);
        }
        // RFC 9838 4.4.2.1 (**), 4.4.2.1.1: GCAUTH only at registration.
        if ctx != PolicyContext::Registration && seen.contains(&TransformType::GcAuth) {
            return Err(Violation::GcAuthOutsideRegistration(ctx));
        }
        // RFC 9838 4.4.2.1: exactly one of each mandatory type.
        if let Some(ty) = mandatory.iter().find(|ty| !seen.contains(ty)) {
            return Err(Violation::MissingTransform { protocol, ty: *ty });
        }

        let integ = self
            .transform(TransformType::Integ)
            .map(|t| IntegId::from(t.id));
        let integ_real = integ.is_some_and(|i| i != IntegId::None);
        match self.encr_id() {
            // RFC 9838 4.4.2.1 (*) for GIKE_UPDATE; RFC 8221 4 and RFC 4303 3.2 for ESP.
            Some(encr) if is_aead(encr) => {
                if integ_real {
                    return Err(Violation::IntegWithAead);
                }
            }
            Some(_) => {
                if !integ_real {
                    return Err(Violation::IntegRequired);
                }
            }
            // AH: integrity is its whole purpose.
            None => {
                if !integ_real {
                    return Err(Violation::IntegRequired);
                }
            }
        }

        // RFC 7296 3.3.5: the key size of the keying material (RFC 9838 3.4, 4.5.2.1)
        // follows from the Key Length attribute.
        if let Some(encr) = self.transform(TransformType::Encr) {
            let id = EncrId::from(encr.id);
            if key_length_ok(id, encr.key_length()) == Some(false) {
                return Err(Violation::KeyLengthInvalid(id));
            }
        }

        // RFC 9838 2.7: implicit-IV ciphers never on a G-IKEv2 SA; on ESP only where
        // sequence numbers are unique (32-bit Sequential Numbers).
        if let Some(encr) = self.encr_id().filter(|e| is_implicit_iv(*e)) {
            let sn = self.transform(TransformType::Sn).map(|t| SnId::from(t.id));
            if self.is_kek() || sn != Some(SnId::Seq32) {
                return Err(Violation::ImplicitIvNotAllowed(encr));
            }
        }

        // RFC 9838 4.4.2.1.3: no ESN on multicast Data-Security SAs.
        if self.is_tek()
            && self
                .transform(TransformType::Sn)
                .is_some_and(|t| SnId::from(t.id) == SnId::Seq64PartiallyTransmitted)
            && is_multicast_destination(&self.dst)
        {
            return Err(Violation::Esn64ForMulticast);
        }

        // RFC 9838 4.4.2.1.1: Signature Algorithm Identifier with Digital Signature only.
        if let Some(gcauth) = self.transform(TransformType::GcAuth) {
            let attr = gcauth
                .attributes
                .iter()
                .find(|a| a.ty == TransformAttrType::SignatureAlgorithmId.value());
            if GcAuthId::from(gcauth.id) == GcAuthId::DigitalSignature {
                match attr.map(|a| &a.value) {
                    None => return Err(Violation::SignatureAlgorithmIdMissing),
                    Some(AttrValue::Tlv(der)) if is_algorithm_identifier(der) => {}
                    Some(_) => return Err(Violation::SignatureAlgorithmIdMalformed),
                }
            } else if attr.is_some() {
                return Err(Violation::SignatureAlgorithmIdNotAllowed);
            }
        }
        Ok(())
    }

    fn validate_attributes(&self, ctx: PolicyContext) -> Result<(), Violation> {
        let a = &self.attributes;
        // RFC 9838 4.4.2.2: GSA_INITIAL_MESSAGE_ID is used in GIKE_UPDATE only.
        if a.initial_message_id.is_some() && !self.is_kek() {
            return Err(Violation::AttributeNotForProtocol {
                attr: "GSA_INITIAL_MESSAGE_ID",
                protocol: self.protocol,
            });
        }
        if ctx == PolicyContext::InbandRekey {
            // RFC 9838 4.4.2.2.2, 4.4.2.2.3, 5 Table 3.
            if a.initial_message_id.is_some() {
                return Err(Violation::AttributeNotInContext {
                    attr: "GSA_INITIAL_MESSAGE_ID",
                    context: ctx,
                });
            }
            if !a.next_spis.is_empty() {
                return Err(Violation::AttributeNotInContext {
                    attr: "GSA_NEXT_SPI",
                    context: ctx,
                });
            }
        }
        // RFC 9838 4.4.2.2.1, 5 Table 2: GSA_REKEY means multicast rekey is employed.
        if ctx == PolicyContext::Rekey && a.key_lifetime.is_none() {
            return Err(Violation::KeyLifetimeMissing);
        }
        Ok(())
    }
}

impl GsaPayload {
    /// Checks the structural rules of a whole GSA payload for the exchange it travels in
    /// (RFC 9838 4.4.1, 4.4.2, 4.4.2.2.1, 4.4.3.1, 5), including [`GsaPolicy::validate`] for
    /// every GSA policy. Returns the first rule broken.
    pub fn validate(&self, ctx: PolicyContext) -> Result<(), Violation> {
        // RFC 9838 4.4.1: at most one KEK, at most one GW policy, at least one GSA policy.
        let mut keks = 0usize;
        let mut gws = 0usize;
        let mut gsas = 0usize;
        for p in &self.policies {
            match p {
                GroupPolicy::Gsa(g) => {
                    gsas += 1;
                    if g.is_kek() {
                        keks += 1;
                    }
                }
                GroupPolicy::Gw(_) => gws += 1,
            }
        }
        if keks > 1 {
            return Err(Violation::TooManyKekPolicies);
        }
        if gws > 1 {
            return Err(Violation::TooManyGwPolicies);
        }
        if gsas == 0 {
            return Err(Violation::NoGsaPolicy);
        }

        let policies: Vec<&GsaPolicy> = self.gsa_policies().collect();
        for (i, p) in policies.iter().enumerate() {
            p.validate(ctx)?;
            for q in policies.iter().skip(i + 1) {
                // One SA per (protocol, SPI): key bags are matched on it (RFC 9838 4.5.2).
                if p.protocol == q.protocol && p.spi == q.spi {
                    return Err(Violation::DuplicateSa {
                        protocol: p.protocol,
                        spi: p.spi,
                    });
                }
                // RFC 9838 4.4.2: never ESP and AH for the same traffic selectors.
                let esp_ah = matches!(
                    (p.protocol, q.protocol),
                    (ProtocolId::Esp, ProtocolId::Ah) | (ProtocolId::Ah, ProtocolId::Esp)
                );
                if esp_ah && p.src == q.src && p.dst == q.dst {
                    return Err(Violation::EspAndAhSameSelectors);
                }
            }
        }

        // RFC 9838 4.4.2.2.1: with multicast rekey (a KEK is handed out) every GSA policy
        // carries GSA_KEY_LIFETIME (5 Table 2: "S" at registration and in GSA_REKEY).
        if ctx == PolicyContext::Registration
            && keks == 1
            && policies.iter().any(|p| p.attributes.key_lifetime.is_none())
        {
            return Err(Violation::KeyLifetimeMissing);
        }

        // RFC 9838 5 Tables 2 and 3, note 1: GWP_SENDER_ID_BITS never in rekeys.
        if ctx != PolicyContext::Registration
            && self.gw().is_some_and(|gw| gw.sender_id_bits.is_some())
        {
            return Err(Violation::AttributeNotInContext {
                attr: "GWP_SENDER_ID_BITS",
                context: ctx,
            });
        }
        Ok(())
    }
}
