//! Evaluation of a member's SAg payload against the group's policy (RFC 9838 2.3.3, 2.3.4,
//! 4.3): "If the group member did not include all of the ESP, AH or GIKE_UPDATE Transforms
//! that match the current group policy [..], then the GCKS SHOULD return a
//! NO_PROPOSAL_CHOSEN Notification." This GCKS does not adapt the policy to members; it
//! checks.
//!
//! Rules, per group SA policy (the KEK and each TEK the member would get):
//! - ENCR, INTEG (when the policy has one) and KWA are what the member must list: a
//!   proposal for the policy's protocol covers the policy when it lists the policy's
//!   ENCR with the same Key Length, its INTEG and its KWA. An AEAD policy needs no INTEG
//!   from the member.
//! - SN and GCAUTH restrict only when the proposal lists that type at all (a member
//!   that lists no GCAUTH has said nothing about it).
//! - Proposal numbers tie protocols together (2.3.3): some number N must have, for every
//!   protocol of the policy that the SAg mentions, a proposal numbered N that covers it.
//!   A protocol the SAg has no proposal for is not restricted (proposals per protocol
//!   "may be included", 2.3.3); an empty SAg restricts nothing.
//! - SPI fields of SAg proposals are ignored (2.3.3: "The GCKS MUST NOT use SPI length and
//!   SPI fields in the SAg payload").

use std::collections::BTreeSet;
use std::fmt::Write as _;

use gikev2_proto::registry::{EncrId, GcAuthId, IntegId, KwaId, ProtocolId, SnId, TransformType};
use gikev2_proto::wire::gsa::GsaPolicy;
use gikev2_proto::wire::{Proposal, SaPayload, Transform};

/// ChaCha20-Poly1305 has no Key Length attribute, or a redundant 256 (RFC 7634).
fn key_bits(t: &Transform) -> Option<u16> {
    match EncrId::from(t.id) {
        EncrId::ChaCha20Poly1305 | EncrId::ChaCha20Poly1305Iiv => None,
        _ => t.key_length(),
    }
}

fn same(a: &Transform, b: &Transform) -> bool {
    a.ty == b.ty && a.id == b.id && (a.ty != TransformType::Encr || key_bits(a) == key_bits(b))
}

/// A readable name of a transform ("ENCR_AES_GCM_16/256").
pub fn describe(t: &Transform) -> String {
    let name = match t.ty {
        TransformType::Encr => EncrId::from(t.id).name(),
        TransformType::Integ => IntegId::from(t.id).name(),
        TransformType::Kwa => KwaId::from(t.id).name(),
        TransformType::Sn => SnId::from(t.id).name(),
        TransformType::GcAuth => GcAuthId::from(t.id).name(),
        _ => None,
    };
    let mut s = match name {
        Some(n) => n.to_string(),
        None => format!("{}({})", t.ty.name().unwrap_or("TRANSFORM"), t.id),
    };
    if t.ty == TransformType::Encr
        && let Some(bits) = key_bits(t)
    {
        let _ = write!(s, "/{bits}");
    }
    s
}

/// Why `proposal` does not cover `policy`, or `None` when it does.
fn uncovered(proposal: &Proposal, policy: &GsaPolicy) -> Option<String> {
    for t in &policy.transforms {
        let listed: Vec<&Transform> = proposal.transforms_of(t.ty).collect();
        let required = matches!(
            t.ty,
            TransformType::Encr | TransformType::Integ | TransformType::Kwa
        );
        // INTEG NONE in a policy is the same as no INTEG.
        if t.ty == TransformType::Integ && t.id == 0 {
            continue;
        }
        if (required || !listed.is_empty()) && !listed.iter().any(|l| same(l, t)) {
            return Some(describe(t));
        }
    }
    None
}

fn protocol_name(p: ProtocolId) -> &'static str {
    p.name().unwrap_or("protocol")
}

/// Checks that the SAg lets the member use every policy in `policies`; the error says
/// which transform is missing (for the audit log; the member gets NO_PROPOSAL_CHOSEN).
pub fn check(sag: &SaPayload, policies: &[&GsaPolicy]) -> Result<(), String> {
    if sag.proposals.is_empty() {
        return Ok(());
    }
    let mentioned: BTreeSet<u8> = sag.proposals.iter().map(|p| p.protocol.value()).collect();
    let constrained: Vec<&GsaPolicy> = policies
        .iter()
        .copied()
        .filter(|p| mentioned.contains(&p.protocol.value()))
        .collect();
    if constrained.is_empty() {
        return Ok(());
    }
    let numbers: BTreeSet<u8> = sag.proposals.iter().map(|p| p.num).collect();
    let mut first_gap: Option<String> = None;
    for n in numbers {
        let mut gap = None;
        for policy in &constrained {
            let candidates = sag
                .proposals
                .iter()
                .filter(|p| p.num == n && p.protocol == policy.protocol);
            let mut why = None;
            let mut ok = false;
            for c in candidates {
                match uncovered(c, policy) {
                    None => {
                        ok = true;
                        break;
                    }
                    Some(w) => why = why.or(Some(w)),
                }
            }
            if !ok {
                gap = Some(match why {
                    Some(t) => format!(
                        "SAg proposal {n} for {} lacks the group's {t}",
                        protocol_name(policy.protocol)
                    ),
                    None => format!(
                        "SAg has no proposal {n} for {}",
                        protocol_name(policy.protocol)
                    ),
                });
                break;
            }
        }
        match gap {
            None => return Ok(()),
            Some(g) => first_gap = first_gap.or(Some(g)),
        }
    }
    Err(first_gap.unwrap_or_else(|| "SAg does not match the group policy".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gikev2_proto::wire::TrafficSelector;

    fn tek() -> GsaPolicy {
        GsaPolicy::esp(
            0x1000,
            TrafficSelector::any(false),
            TrafficSelector::any(false),
        )
        .with_transform(Transform::encr(EncrId::AesGcm16, Some(256)))
        .with_transform(Transform::sn(SnId::Unspecified32))
    }

    fn kek() -> GsaPolicy {
        GsaPolicy::kek(
            1,
            2,
            TrafficSelector::any(false),
            TrafficSelector::any(false),
        )
        .with_transform(Transform::encr(EncrId::AesCbc, Some(128)))
        .with_transform(Transform::integ(IntegId::HmacSha2_256_128))
        .with_transform(Transform::kwa(KwaId::Kw5649_128))
        .with_transform(Transform::gcauth(GcAuthId::Implicit, None))
    }

    fn esp(num: u8, t: Vec<Transform>) -> Proposal {
        Proposal::new(num, ProtocolId::Esp, Vec::new(), t)
    }

    fn gike(num: u8, t: Vec<Transform>) -> Proposal {
        Proposal::new(num, ProtocolId::GikeUpdate, Vec::new(), t)
    }

    fn full_gike(num: u8) -> Proposal {
        gike(
            num,
            vec![
                Transform::encr(EncrId::AesCbc, Some(128)),
                Transform::integ(IntegId::HmacSha2_256_128),
                Transform::kwa(KwaId::Kw5649_128),
            ],
        )
    }

    #[test]
    fn matching_and_empty_sag_pass() {
        let (t, k) = (tek(), kek());
        let sag = SaPayload::new(vec![
            esp(
                1,
                vec![
                    Transform::encr(EncrId::AesGcm16, Some(128)),
                    Transform::encr(EncrId::AesGcm16, Some(256)),
                    Transform::sn(SnId::Unspecified32),
                    Transform::sn(SnId::Seq32),
                ],
            ),
            full_gike(1),
        ]);
        assert_eq!(check(&sag, &[&k, &t]), Ok(()));
        assert_eq!(check(&SaPayload::new(vec![]), &[&k, &t]), Ok(()));
        // Only ESP mentioned: the Rekey SA is not restricted.
        let only_esp = SaPayload::new(vec![esp(
            1,
            vec![Transform::encr(EncrId::AesGcm16, Some(256))],
        )]);
        assert_eq!(check(&only_esp, &[&k, &t]), Ok(()));
    }

    /// RFC 9838 2.3.3 (R011): the GCKS does not use the SPI Size and SPI fields of the SAg:
    /// the same proposals with SPIs get the same answers.
    #[test]
    fn sag_spis_are_ignored() {
        let (t, k) = (tek(), kek());
        let with_spi =
            |p: Proposal, spi: &[u8]| Proposal::new(p.num, p.protocol, spi.to_vec(), p.transforms);
        let good = vec![
            esp(1, vec![Transform::encr(EncrId::AesGcm16, Some(256))]),
            full_gike(1),
        ];
        let bad = vec![esp(1, vec![Transform::encr(EncrId::AesGcm16, Some(128))])];
        for (proposals, acceptable) in [(good, true), (bad, false)] {
            let plain = check(&SaPayload::new(proposals.clone()), &[&k, &t]);
            assert_eq!(plain.is_ok(), acceptable, "{plain:?}");
            let spied: Vec<Proposal> = proposals
                .into_iter()
                .map(|p| with_spi(p, &[0xde, 0xad, 0xbe, 0xef]))
                .collect();
            assert_eq!(check(&SaPayload::new(spied), &[&k, &t]), plain);
        }
    }

    #[test]
    fn a_missing_cipher_or_key_length_is_named() {
        let t = tek();
        let sag = SaPayload::new(vec![esp(
            1,
            vec![Transform::encr(EncrId::AesGcm16, Some(128))],
        )]);
        let e = check(&sag, &[&t]).unwrap_err();
        assert!(e.contains("ENCR_AES_GCM_16/256"), "{e}");
        let sag = SaPayload::new(vec![esp(
            1,
            vec![
                Transform::encr(EncrId::AesGcm16, Some(256)),
                Transform::sn(SnId::Seq32),
            ],
        )]);
        let e = check(&sag, &[&t]).unwrap_err();
        assert!(
            e.contains("32-bit Unspecified"),
            "listed SN types restrict: {e}"
        );
        let k = kek();
        let sag = SaPayload::new(vec![gike(
            1,
            vec![
                Transform::encr(EncrId::AesCbc, Some(128)),
                Transform::kwa(KwaId::Kw5649_128),
            ],
        )]);
        let e = check(&sag, &[&k]).unwrap_err();
        assert!(e.contains("AUTH_HMAC_SHA2_256_128"), "{e}");
    }

    #[test]
    fn proposal_numbers_bind_protocols_together() {
        let (t, k) = (tek(), kek());
        // ESP only in set 1, GIKE_UPDATE only in set 2: no set serves both.
        let split = SaPayload::new(vec![
            esp(1, vec![Transform::encr(EncrId::AesGcm16, Some(256))]),
            full_gike(2),
        ]);
        assert!(check(&split, &[&k, &t]).is_err());
        let joined = SaPayload::new(vec![
            esp(1, vec![Transform::encr(EncrId::AesCbc, Some(256))]),
            full_gike(1),
            esp(2, vec![Transform::encr(EncrId::AesGcm16, Some(256))]),
            full_gike(2),
        ]);
        assert_eq!(check(&joined, &[&k, &t]), Ok(()));
    }
}
