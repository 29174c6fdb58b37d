//! The SAg payload a member sends in GSA_AUTH and GSA_REGISTRATION (RFC 9838 2.3.3, 4.3):
//! what it is able to use, so that the GCKS can pick a policy it supports.
//!
//! Built from what the code implements, never from a hand-kept list: a Rekey SA transform
//! is listed when `gikev2_proto::crypto` can run it in a GSA_REKEY SK payload
//! (`EncrAlg::sk_supported`), an ESP transform when the `gikev2-esp` engine accepts it
//! (`EspAlgorithm::from_transforms`).
//!
//! One proposal per protocol, both numbered 1: "In the simplest case when no dependency
//! between transforms exists, all Proposals in SAg payload will have the same value in
//! Proposal Num field" (2.3.3). The SPI is empty (2.3.3: SPI size zero). The restriction of
//! RFC 7296 3.3 on mixing AEAD and non-AEAD transforms does not hold in SAg (2.3.3).

use gikev2_esp::{EspAlgorithm, SnTransform};
use gikev2_proto::crypto::{EncrAlg, IntegAlg, KeyWrapAlg};
use gikev2_proto::registry::{EncrId, GcAuthId, IntegId, ProtocolId, SnId};
use gikev2_proto::wire::{Proposal, SaPayload, Transform};

/// ENCR transforms tried for both protocols, strongest first.
const ENCR_CANDIDATES: [(EncrId, Option<u16>); 13] = [
    (EncrId::AesGcm16, Some(256)),
    (EncrId::AesGcm16, Some(192)),
    (EncrId::AesGcm16, Some(128)),
    (EncrId::ChaCha20Poly1305, None),
    (EncrId::AesGcm16Iiv, Some(256)),
    (EncrId::AesGcm16Iiv, Some(128)),
    (EncrId::ChaCha20Poly1305Iiv, None),
    (EncrId::NullAuthAesGmac, Some(256)),
    (EncrId::NullAuthAesGmac, Some(128)),
    (EncrId::AesCbc, Some(256)),
    (EncrId::AesCbc, Some(192)),
    (EncrId::AesCbc, Some(128)),
    (EncrId::AesCtr, Some(256)),
];

const INTEG_CANDIDATES: [IntegId; 3] = [
    IntegId::HmacSha2_256_128,
    IntegId::HmacSha2_384_192,
    IntegId::HmacSha2_512_256,
];

/// Rekey SA transforms (RFC 9838 4.4.2.1, Figure 16): ENCR usable in the SK payload,
/// INTEG for the non-AEAD ones, every KWA, and the GCAUTH methods the member verifies
/// (Digital Signature with any scheme of `SignatureScheme::ALL`, and Implicit, which the
/// GCKS may choose for a group, RFC 9838 2.4.1). GCAUTH is listed without its Signature
/// Algorithm Identifier: one transform per method keeps the SAg short
/// (docs/interop.md #78).
pub fn rekey_transforms() -> Vec<Transform> {
    let mut v: Vec<Transform> = ENCR_CANDIDATES
        .iter()
        .filter_map(|(id, bits)| EncrAlg::from_transform(*id, *bits).ok())
        .filter(|e| e.sk_supported())
        .map(EncrAlg::transform)
        .collect();
    v.extend(
        INTEG_CANDIDATES
            .iter()
            .filter_map(|i| IntegAlg::from_id(*i))
            .map(|i| Transform::integ(i.id())),
    );
    v.extend(
        [
            KeyWrapAlg::Kw5649_256,
            KeyWrapAlg::Kw5649_192,
            KeyWrapAlg::Kw5649_128,
        ]
        .into_iter()
        .map(|k| Transform::kwa(k.id())),
    );
    v.extend(
        [GcAuthId::DigitalSignature, GcAuthId::Implicit]
            .into_iter()
            .map(|g| Transform::gcauth(g, None)),
    );
    v
}

/// ESP transforms (RFC 9838 Figure 16): ENCR and INTEG the engine implements, NONE for
/// INTEG (AEAD), and the Sequence Numbers transforms it accepts.
pub fn esp_transforms() -> Vec<Transform> {
    let integs: Vec<u16> = std::iter::once(0)
        .chain(INTEG_CANDIDATES.iter().map(|i| i.value()))
        .collect();
    let supported = |id: EncrId, bits: Option<u16>| {
        integs
            .iter()
            .any(|i| EspAlgorithm::from_transforms(id.value(), bits, *i).is_ok())
    };
    let mut v: Vec<Transform> = ENCR_CANDIDATES
        .iter()
        .filter(|(id, bits)| supported(*id, *bits))
        .map(|(id, bits)| Transform::encr(*id, *bits))
        .collect();
    let mut used_integ: Vec<u16> = Vec::new();
    for (id, bits) in ENCR_CANDIDATES {
        for i in &integs {
            if EspAlgorithm::from_transforms(id.value(), bits, *i).is_ok()
                && !used_integ.contains(i)
            {
                used_integ.push(*i);
            }
        }
    }
    v.extend(
        used_integ
            .into_iter()
            .map(|i| Transform::integ(IntegId::from(i))),
    );
    v.extend(
        [SnId::Seq32, SnId::Unspecified32]
            .into_iter()
            .filter(|s| SnTransform::from_id(s.value()).is_ok())
            .map(Transform::sn),
    );
    v
}

/// The SAg payload: one GIKE_UPDATE proposal and one ESP proposal, both number 1.
pub fn supported_sag() -> SaPayload {
    SaPayload::new(vec![
        Proposal::new(1, ProtocolId::GikeUpdate, Vec::new(), rekey_transforms()),
        Proposal::new(1, ProtocolId::Esp, Vec::new(), esp_transforms()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use gikev2_proto::registry::TransformType;

    fn has(v: &[Transform], ty: TransformType, id: u16, bits: Option<u16>) -> bool {
        v.iter()
            .any(|t| t.ty == ty && t.id == id && t.key_length() == bits)
    }

    #[test]
    fn rekey_proposal_lists_sk_ciphers_integ_and_kwa() {
        let r = rekey_transforms();
        assert!(has(&r, TransformType::Encr, 20, Some(256)));
        assert!(has(&r, TransformType::Encr, 12, Some(128)));
        assert!(has(&r, TransformType::Encr, 28, None));
        // Implicit IV and AES-CTR are never SK payload ciphers (RFC 8750 7).
        assert!(!has(&r, TransformType::Encr, 30, Some(256)));
        assert!(!has(&r, TransformType::Encr, 13, Some(256)));
        assert!(has(&r, TransformType::Integ, 12, None));
        assert!(has(&r, TransformType::Kwa, 3, None));
        // GCAUTH (IANA.md: 1 Implicit, 2 Digital Signature), which Figure 16 makes
        // mandatory for GIKE_UPDATE, without attributes.
        assert!(has(&r, TransformType::GcAuth, 2, None));
        assert!(has(&r, TransformType::GcAuth, 1, None));
        assert!(
            r.iter()
                .filter(|t| t.ty == TransformType::GcAuth)
                .all(|t| t.attributes.is_empty())
        );
        assert!(r.iter().all(|t| t.ty != TransformType::Sn));
    }

    #[test]
    fn esp_proposal_follows_the_engine() {
        let e = esp_transforms();
        assert!(has(&e, TransformType::Encr, 20, Some(256)));
        assert!(has(&e, TransformType::Encr, 30, Some(128)));
        assert!(has(&e, TransformType::Encr, 21, Some(256)));
        // The engine has no AES-192 and no AES-CTR.
        assert!(!has(&e, TransformType::Encr, 20, Some(192)));
        assert!(!has(&e, TransformType::Encr, 13, Some(256)));
        assert!(has(&e, TransformType::Integ, 0, None));
        assert!(has(&e, TransformType::Integ, 12, None));
        assert!(has(&e, TransformType::Sn, 0, None));
        assert!(has(&e, TransformType::Sn, 2, None));
        assert!(!has(&e, TransformType::Sn, 1, None));
    }

    #[test]
    fn sag_has_two_proposals_numbered_one_without_spi() {
        let s = supported_sag();
        assert_eq!(s.proposals.len(), 2);
        assert!(s.proposals.iter().all(|p| p.num == 1 && p.spi.is_empty()));
        assert_eq!(s.proposals[0].protocol, ProtocolId::GikeUpdate);
        assert_eq!(s.proposals[1].protocol, ProtocolId::Esp);
    }

    #[test]
    fn sag_lists_only_transform_types_valid_for_each_protocol() {
        // RFC 9838 2.3.3 (R010): only the types of Figure 16 for each protocol.
        use TransformType::{Encr, GcAuth, Integ, Kwa, Sn};
        for p in supported_sag().proposals {
            let allowed: &[TransformType] = match p.protocol {
                ProtocolId::GikeUpdate => &[Encr, Integ, GcAuth, Kwa],
                ProtocolId::Esp => &[Encr, Sn, Integ],
                ProtocolId::Ah => &[Integ, Sn],
                other => panic!("unexpected protocol {other:?} in SAg"),
            };
            for t in &p.transforms {
                assert!(
                    allowed.contains(&t.ty),
                    "{:?} in a {:?} proposal",
                    t.ty,
                    p.protocol
                );
            }
        }
    }
}
