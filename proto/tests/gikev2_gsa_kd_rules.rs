//! Structural rules of RFC 9838 for GSA (4.4) and KD (4.5) payloads: one test per rule,
//! each showing a valid baseline and the violation when the rule is broken.
//! R-numbers refer to `specs/rfc9838-requirements.tsv`.

use gikev2_proto::registry::{
    EncrId, ExchangeType, GcAuthId, IntegId, KwaId, PrfId, ProtocolId, SnId, TransformType,
};
use gikev2_proto::wire::gsa::{
    GsaPayload, GsaPolicy, GwPolicy, PolicyContext, Spi, Violation, is_aead, is_counter_mode,
};
use gikev2_proto::wire::kd::{GroupKeyBag, KdPayload, MemberKeyBag, WrappedKey, validate_gsa_kd};
use gikev2_proto::wire::transform::Transform;
use gikev2_proto::wire::ts::TrafficSelector;

use PolicyContext::{InbandRekey, Registration, Rekey};

const ED25519_ALG_ID: [u8; 7] = [0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];
const KEK_SPI: (u64, u64) = (0x0102_0304_0506_0708, 0x1112_1314_1516_1718);
const TEK_SPI: u32 = 0x1234_5678;

fn mcast(addr: &str, proto: u8, port: Option<u16>) -> TrafficSelector {
    TrafficSelector::single(addr.parse().unwrap(), proto, port)
}

/// KEK policy for `ctx`: GCAUTH only at registration (4.4.2.1 (**)).
fn kek(ctx: PolicyContext) -> GsaPolicy {
    let p = GsaPolicy::kek(
        KEK_SPI.0,
        KEK_SPI.1,
        mcast("192.0.2.1", 17, Some(848)),
        mcast("239.0.0.1", 17, Some(848)),
    )
    .with_transform(Transform::encr(EncrId::AesGcm16, Some(256)))
    .with_transform(Transform::kwa(KwaId::Kw5649_256));
    let p = if ctx == Registration {
        p.with_transform(Transform::gcauth(
            GcAuthId::DigitalSignature,
            Some(&ED25519_ALG_ID),
        ))
    } else {
        p
    };
    p.with_key_lifetime(3600).with_initial_message_id(5)
}

fn esp() -> GsaPolicy {
    GsaPolicy::esp(
        TEK_SPI,
        TrafficSelector::any(false),
        mcast("239.0.0.1", 0, None),
    )
    .with_transform(Transform::encr(EncrId::AesGcm16, Some(128)))
    .with_transform(Transform::sn(SnId::Unspecified32))
    .with_key_lifetime(1800)
}

fn ah() -> GsaPolicy {
    GsaPolicy::ah(
        0x2000,
        TrafficSelector::any(false),
        mcast("239.0.0.2", 0, None),
    )
    .with_transform(Transform::integ(IntegId::HmacSha2_256_128))
    .with_transform(Transform::sn(SnId::Seq32))
    .with_key_lifetime(1800)
}

fn gsa(ctx: PolicyContext) -> GsaPayload {
    let gw = GwPolicy::new().with_atd(5).with_dtd(10);
    let gw = if ctx == Registration {
        gw.with_sender_id_bits(16)
    } else {
        gw
    };
    GsaPayload::new()
        .with_gsa(kek(ctx))
        .with_gsa(esp())
        .with_gw(gw)
}

fn key(key_id: u32, kwk_id: u32) -> WrappedKey {
    WrappedKey::new(key_id, kwk_id, vec![0x5a; 40])
}

fn kd(ctx: PolicyContext) -> KdPayload {
    let kd = KdPayload::new()
        .with(GroupKeyBag::kek(KEK_SPI.0, KEK_SPI.1).with_sa_key(key(0, 0)))
        .with(GroupKeyBag::esp(TEK_SPI).with_sa_key(key(0, 0)));
    if ctx == Registration {
        kd.with(
            MemberKeyBag::new()
                .with_wrap_key(key(7, 0))
                .with_auth_key(vec![0x30, 0x2a])
                .with_sender_id(1),
        )
    } else {
        kd
    }
}

fn replace_transform(p: GsaPolicy, ty: TransformType, t: Option<Transform>) -> GsaPolicy {
    let mut p = p;
    p.transforms.retain(|x| x.ty != ty);
    p.transforms.extend(t);
    p
}

#[test]
fn baselines_are_valid() {
    for ctx in [Registration, Rekey, InbandRekey] {
        let mut g = gsa(ctx);
        let mut k = kd(ctx);
        if ctx == InbandRekey {
            // Table 3: no GSA_INITIAL_MESSAGE_ID with inband rekey.
            g = GsaPayload::new().with_gsa(esp());
            k = KdPayload::new().with(GroupKeyBag::esp(TEK_SPI).with_sa_key(key(0, 0)));
        }
        assert_eq!(validate_gsa_kd(&g, &k, ctx), Ok(()), "{ctx}");
    }
    assert_eq!(ah().validate(Rekey), Ok(()));
}

#[test]
fn context_from_exchange() {
    assert_eq!(
        PolicyContext::from_exchange(ExchangeType::GsaAuth),
        Some(Registration)
    );
    assert_eq!(
        PolicyContext::from_exchange(ExchangeType::GsaRegistration),
        Some(Registration)
    );
    assert_eq!(
        PolicyContext::from_exchange(ExchangeType::GsaRekey),
        Some(Rekey)
    );
    assert_eq!(
        PolicyContext::from_exchange(ExchangeType::GsaInbandRekey),
        Some(InbandRekey)
    );
    assert_eq!(PolicyContext::from_exchange(ExchangeType::IkeAuth), None);
}

#[test]
fn violations_name_their_section() {
    let msg = Violation::SignatureAlgorithmIdMissing.to_string();
    assert!(msg.contains("RFC 9838 4.4.2.1.1"), "{msg}");
    assert_eq!(
        Violation::NoGsaPolicy.notify(),
        gikev2_proto::registry::NotifyType::InvalidSyntax
    );
}

// ------------------------------------------------------------ GSA policy (4.4.2)

#[test]
fn gsa_protocol_must_have_group_sa() {
    let mut p = esp();
    p.protocol = ProtocolId::Ike;
    assert_eq!(
        p.validate(Registration),
        Err(Violation::InvalidProtocol(ProtocolId::Ike))
    );
}

#[test]
fn gsa_spi_size_must_match_protocol() {
    let mut p = esp();
    p.spi = Spi::Rekey { spi_i: 1, spi_r: 2 };
    assert_eq!(
        p.validate(Registration),
        Err(Violation::SpiSizeMismatch {
            protocol: ProtocolId::Esp,
            size: 16
        })
    );
    // GSA_NEXT_SPI has the policy's SPI shape too (4.4.2.2.3).
    let p = esp().with_next_spi(Spi::Rekey { spi_i: 1, spi_r: 2 });
    assert!(matches!(
        p.validate(Registration),
        Err(Violation::SpiSizeMismatch { .. })
    ));
}

#[test]
fn gsa_reserved_spi_rejected() {
    let mut p = esp();
    p.spi = Spi::Ipsec(255);
    assert!(matches!(
        p.validate(Registration),
        Err(Violation::ReservedSpi { .. })
    ));
    let mut p = kek(Registration);
    p.spi = Spi::Rekey { spi_i: 0, spi_r: 9 };
    assert!(matches!(
        p.validate(Registration),
        Err(Violation::ReservedSpi { .. })
    ));
}

#[test]
fn gsa_kek_dst_must_be_single_multicast_udp_port() {
    // R062.
    for dst in [
        mcast("192.0.2.9", 17, Some(848)), // unicast
        mcast("239.0.0.1", 6, Some(848)),  // not UDP
        mcast("239.0.0.1", 17, None),      // any port
        TrafficSelector::any(false),       // range
    ] {
        let mut p = kek(Registration);
        p.dst = dst;
        assert_eq!(p.validate(Registration), Err(Violation::RekeyDestination));
    }
    // A wildcard source is allowed (4.4.2: "MAY define wildcard IP address and/or port").
    let mut p = kek(Registration);
    p.src = TrafficSelector::any(false);
    assert_eq!(p.validate(Registration), Ok(()));
}

#[test]
fn gsa_selectors_same_family() {
    let mut p = esp();
    p.src = TrafficSelector::any(true);
    assert_eq!(
        p.validate(Registration),
        Err(Violation::TrafficSelectorFamilyMismatch)
    );
}

// ------------------------------------------------------------ transforms (4.4.2.1)

#[test]
fn gsa_transform_type_not_allowed_for_protocol() {
    // Figure 16: PRF is never a GSA transform; KWA only for GIKE_UPDATE; ENCR not for AH.
    let cases = [
        (
            kek(Registration).with_transform(Transform::prf(PrfId::HmacSha2_256)),
            TransformType::Prf,
        ),
        (
            kek(Registration).with_transform(Transform::sn(SnId::Seq32)),
            TransformType::Sn,
        ),
        (
            esp().with_transform(Transform::kwa(KwaId::Kw5649_128)),
            TransformType::Kwa,
        ),
        (
            esp().with_transform(Transform::gcauth(GcAuthId::Implicit, None)),
            TransformType::GcAuth,
        ),
        (
            ah().with_transform(Transform::encr(EncrId::AesCbc, Some(128))),
            TransformType::Encr,
        ),
    ];
    for (p, ty) in cases {
        assert_eq!(
            p.validate(Registration),
            Err(Violation::TransformNotAllowed {
                protocol: p.protocol,
                ty
            })
        );
    }
}

#[test]
fn gsa_transform_at_most_one_of_each_type() {
    // R065.
    let p = esp().with_transform(Transform::sn(SnId::Seq32));
    assert_eq!(
        p.validate(Registration),
        Err(Violation::DuplicateTransform {
            ty: TransformType::Sn
        })
    );
}

#[test]
fn gsa_mandatory_transforms_present() {
    // R065, Figure 16.
    let cases = [
        (kek(Registration), TransformType::Encr),
        (kek(Registration), TransformType::Kwa),
        (kek(Registration), TransformType::GcAuth),
        (esp(), TransformType::Encr),
        (esp(), TransformType::Sn), // R048
        (ah(), TransformType::Sn),
    ];
    for (p, ty) in cases {
        let protocol = p.protocol;
        let p = replace_transform(p, ty, None);
        assert_eq!(
            p.validate(Registration),
            Err(Violation::MissingTransform { protocol, ty }),
            "{ty}"
        );
    }
    // AH without INTEG: integrity is its purpose.
    let p = replace_transform(ah(), TransformType::Integ, None);
    assert!(p.validate(Registration).is_err());
}

#[test]
fn gsa_aead_forbids_integ_other_than_none() {
    // R066 (*): AEAD => INTEG absent or NONE.
    let with_none = kek(Registration).with_transform(Transform::integ(IntegId::None));
    assert_eq!(with_none.validate(Registration), Ok(()));
    let with_hmac = kek(Registration).with_transform(Transform::integ(IntegId::HmacSha2_256_128));
    assert_eq!(
        with_hmac.validate(Registration),
        Err(Violation::IntegWithAead)
    );
    let esp_hmac = esp().with_transform(Transform::integ(IntegId::HmacSha2_256_128));
    assert_eq!(
        esp_hmac.validate(Registration),
        Err(Violation::IntegWithAead)
    );
}

#[test]
fn gsa_non_aead_requires_integ() {
    // R066 (*) for GIKE_UPDATE; RFC 8221 4 for ESP.
    let cbc = Some(Transform::encr(EncrId::AesCbc, Some(256)));
    let kek_cbc = replace_transform(kek(Registration), TransformType::Encr, cbc.clone());
    assert_eq!(
        kek_cbc.validate(Registration),
        Err(Violation::IntegRequired)
    );
    let kek_cbc_none = kek_cbc
        .clone()
        .with_transform(Transform::integ(IntegId::None));
    assert_eq!(
        kek_cbc_none.validate(Registration),
        Err(Violation::IntegRequired)
    );
    let kek_cbc_hmac = kek_cbc.with_transform(Transform::integ(IntegId::HmacSha2_256_128));
    assert_eq!(kek_cbc_hmac.validate(Registration), Ok(()));
    let esp_cbc = replace_transform(esp(), TransformType::Encr, cbc);
    assert_eq!(
        esp_cbc.validate(Registration),
        Err(Violation::IntegRequired)
    );
}

#[test]
fn gsa_kek_gcauth_only_in_registration() {
    // R074, R075.
    for ctx in [Rekey, InbandRekey] {
        let p = kek(Registration);
        assert_eq!(
            p.validate(ctx),
            Err(Violation::GcAuthOutsideRegistration(ctx))
        );
        assert_eq!(kek(ctx).validate(Rekey), Ok(()));
    }
}

#[test]
fn gsa_kek_gcauth_signature_requires_sig_alg_attr() {
    // R070.
    let p = replace_transform(
        kek(Registration),
        TransformType::GcAuth,
        Some(Transform::gcauth(GcAuthId::DigitalSignature, None)),
    );
    assert_eq!(
        p.validate(Registration),
        Err(Violation::SignatureAlgorithmIdMissing)
    );
}

#[test]
fn gsa_kek_sig_alg_attr_only_with_digital_signature() {
    // R073.
    let p = replace_transform(
        kek(Registration),
        TransformType::GcAuth,
        Some(Transform::gcauth(GcAuthId::Implicit, Some(&ED25519_ALG_ID))),
    );
    assert_eq!(
        p.validate(Registration),
        Err(Violation::SignatureAlgorithmIdNotAllowed)
    );
    let implicit = replace_transform(
        kek(Registration),
        TransformType::GcAuth,
        Some(Transform::gcauth(GcAuthId::Implicit, None)),
    );
    assert_eq!(implicit.validate(Registration), Ok(()));
}

#[test]
fn gsa_kek_sig_alg_attr_must_be_der_algorithm_identifier() {
    // 4.4.2.1.1: DER AlgorithmIdentifier (RFC 5280 4.1.1.2).
    for bad in [
        &[][..],
        &[0x30, 0x06, 0x06, 0x03, 0x2b, 0x65, 0x70],
        &[0x04, 0x00],
    ] {
        let p = replace_transform(
            kek(Registration),
            TransformType::GcAuth,
            Some(Transform::gcauth(GcAuthId::DigitalSignature, Some(bad))),
        );
        assert_eq!(
            p.validate(Registration),
            Err(Violation::SignatureAlgorithmIdMalformed)
        );
    }
    // Long-form length (ML-DSA/RSA-PSS style identifiers can be longer).
    let mut long = vec![0x30, 0x81, 0x83, 0x06, 0x01, 0x01, 0x04, 0x7e];
    long.extend(std::iter::repeat_n(0u8, 0x7e));
    let p = replace_transform(
        kek(Registration),
        TransformType::GcAuth,
        Some(Transform::gcauth(GcAuthId::DigitalSignature, Some(&long))),
    );
    assert_eq!(p.validate(Registration), Ok(()));
}

#[test]
fn gsa_tek_esn_forbidden_for_multicast() {
    // R078.
    let esn = Some(Transform::sn(SnId::Seq64PartiallyTransmitted));
    let p = replace_transform(esp(), TransformType::Sn, esn.clone());
    assert_eq!(p.validate(Registration), Err(Violation::Esn64ForMulticast));
    // A unicast destination is not a multicast SA.
    let mut p = replace_transform(esp(), TransformType::Sn, esn);
    p.dst = mcast("192.0.2.7", 0, None);
    assert_eq!(p.validate(Registration), Ok(()));
}

#[test]
fn gsa_implicit_iv_forbidden_on_kek() {
    // R051.
    let p = replace_transform(
        kek(Registration),
        TransformType::Encr,
        Some(Transform::encr(EncrId::AesGcm16Iiv, Some(256))),
    );
    assert_eq!(
        p.validate(Registration),
        Err(Violation::ImplicitIvNotAllowed(EncrId::AesGcm16Iiv))
    );
}

#[test]
fn gsa_implicit_iv_requires_unique_sequence_numbers() {
    // R050: implicit IV on ESP only with 32-bit Sequential Numbers (single sender).
    let iiv = Some(Transform::encr(EncrId::ChaCha20Poly1305Iiv, None));
    let p = replace_transform(esp(), TransformType::Encr, iiv);
    assert_eq!(
        p.validate(Registration),
        Err(Violation::ImplicitIvNotAllowed(EncrId::ChaCha20Poly1305Iiv))
    );
    let p = replace_transform(p, TransformType::Sn, Some(Transform::sn(SnId::Seq32)));
    assert_eq!(p.validate(Registration), Ok(()));
}

#[test]
fn gsa_encr_key_length_attribute_checked() {
    // RFC 7296 3.3.5: AES needs Key Length 128/192/256; RFC 7634: ChaCha20 takes none.
    for (t, ok) in [
        (Transform::encr(EncrId::AesGcm16, None), false),
        (Transform::encr(EncrId::AesGcm16, Some(100)), false),
        (Transform::encr(EncrId::AesGcm16, Some(192)), true),
        (Transform::encr(EncrId::ChaCha20Poly1305, Some(256)), false),
        (Transform::encr(EncrId::ChaCha20Poly1305, None), true),
    ] {
        let id = EncrId::from(t.id);
        let p = replace_transform(esp(), TransformType::Encr, Some(t));
        let want = if ok {
            Ok(())
        } else {
            Err(Violation::KeyLengthInvalid(id))
        };
        assert_eq!(p.validate(Registration), want);
    }
}

// ------------------------------------------------------------ GSA attributes (4.4.2.2, 5)

#[test]
fn gsa_initial_message_id_only_for_gike_update() {
    let p = esp().with_initial_message_id(1);
    assert_eq!(
        p.validate(Registration),
        Err(Violation::AttributeNotForProtocol {
            attr: "GSA_INITIAL_MESSAGE_ID",
            protocol: ProtocolId::Esp
        })
    );
}

#[test]
fn gsa_inband_rekey_forbids_initial_message_id_and_next_spi() {
    // R083, R085, Table 3.
    assert_eq!(
        kek(InbandRekey).validate(InbandRekey),
        Err(Violation::AttributeNotInContext {
            attr: "GSA_INITIAL_MESSAGE_ID",
            context: InbandRekey
        })
    );
    assert_eq!(
        esp()
            .with_next_spi(Spi::Ipsec(0x3000))
            .validate(InbandRekey),
        Err(Violation::AttributeNotInContext {
            attr: "GSA_NEXT_SPI",
            context: InbandRekey
        })
    );
    assert_eq!(
        esp().with_next_spi(Spi::Ipsec(0x3000)).validate(Rekey),
        Ok(())
    );
}

#[test]
fn gsa_rekey_requires_key_lifetime() {
    // R081, Table 2 "S" in GSA_REKEY.
    let mut p = esp();
    p.attributes.key_lifetime = None;
    assert_eq!(p.validate(Rekey), Err(Violation::KeyLifetimeMissing));
    assert_eq!(p.validate(InbandRekey), Ok(()));
}

// ------------------------------------------------------------ GSA payload (4.4.1, 4.4.2)

#[test]
fn gsa_payload_requires_a_gsa_policy() {
    // R060.
    let g = GsaPayload::new().with_gw(GwPolicy::new());
    assert_eq!(g.validate(Registration), Err(Violation::NoGsaPolicy));
    assert_eq!(
        GsaPayload::new().validate(Rekey),
        Err(Violation::NoGsaPolicy)
    );
    assert_eq!(
        GsaPayload::new().with_gsa(esp()).validate(Registration),
        Ok(())
    );
}

#[test]
fn gsa_payload_at_most_one_kek() {
    // R060.
    let mut second = kek(Registration);
    second.spi = Spi::Rekey { spi_i: 5, spi_r: 6 };
    let g = gsa(Registration).with_gsa(second);
    assert_eq!(g.validate(Registration), Err(Violation::TooManyKekPolicies));
}

#[test]
fn gsa_payload_at_most_one_gw() {
    // R060.
    let g = gsa(Registration).with_gw(GwPolicy::new());
    assert_eq!(g.validate(Registration), Err(Violation::TooManyGwPolicies));
}

#[test]
fn gsa_payload_no_esp_and_ah_for_same_selectors() {
    // R061.
    let mut a = ah();
    a.src = esp().src;
    a.dst = esp().dst;
    let g = gsa(Registration).with_gsa(a);
    assert_eq!(
        g.validate(Registration),
        Err(Violation::EspAndAhSameSelectors)
    );
    // Different selectors are fine.
    assert_eq!(
        gsa(Registration).with_gsa(ah()).validate(Registration),
        Ok(())
    );
}

#[test]
fn gsa_payload_duplicate_sa_rejected() {
    let g = gsa(Registration).with_gsa(esp());
    assert_eq!(
        g.validate(Registration),
        Err(Violation::DuplicateSa {
            protocol: ProtocolId::Esp,
            spi: Spi::Ipsec(TEK_SPI)
        })
    );
}

#[test]
fn gsa_registration_with_kek_requires_key_lifetime_everywhere() {
    // R081: a KEK means multicast rekey is employed.
    let mut tek = esp();
    tek.attributes.key_lifetime = None;
    let g = GsaPayload::new()
        .with_gsa(kek(Registration))
        .with_gsa(tek.clone());
    assert_eq!(g.validate(Registration), Err(Violation::KeyLifetimeMissing));
    // Without a KEK (inband rekey only) the lifetime is optional (Table 3).
    assert_eq!(
        GsaPayload::new().with_gsa(tek).validate(Registration),
        Ok(())
    );
}

#[test]
fn gsa_rekey_forbids_sender_id_bits() {
    // Tables 2 and 3, note 1.
    for ctx in [Rekey, InbandRekey] {
        let g = GsaPayload::new()
            .with_gsa(esp())
            .with_gw(GwPolicy::new().with_sender_id_bits(8));
        assert_eq!(
            g.validate(ctx),
            Err(Violation::AttributeNotInContext {
                attr: "GWP_SENDER_ID_BITS",
                context: ctx
            })
        );
    }
}

// ------------------------------------------------------------ KD payload (4.5)

#[test]
fn kd_member_bag_at_most_one() {
    let k = kd(Registration).with(MemberKeyBag::new());
    assert_eq!(
        k.validate(Registration),
        Err(Violation::TooManyMemberKeyBags)
    );
}

#[test]
fn kd_member_bag_not_in_inband_rekey() {
    // R096, Table 3.
    let k = kd(InbandRekey).with(MemberKeyBag::new());
    assert_eq!(
        k.validate(InbandRekey),
        Err(Violation::MemberKeyBagNotInContext(InbandRekey))
    );
}

#[test]
fn kd_member_bag_in_rekey_allows_wrap_and_auth_keys() {
    // Our reading of 4.5.3 vs Table 2, 2.4.1 and Appendix A.4 (Figure 26).
    let k = kd(Rekey).with(
        MemberKeyBag::new()
            .with_wrap_key(key(16, 11))
            .with_auth_key(vec![0x30, 0x00]),
    );
    assert_eq!(k.validate(Rekey), Ok(()));
}

#[test]
fn kd_gm_sender_id_not_in_rekey() {
    // R027, R107.
    let k = kd(Rekey).with(MemberKeyBag::new().with_sender_id(3));
    assert_eq!(
        k.validate(Rekey),
        Err(Violation::AttributeNotInContext {
            attr: "GM_SENDER_ID",
            context: Rekey
        })
    );
}

#[test]
fn kd_tek_bag_exactly_one_sa_key() {
    // R091.
    for n in [0usize, 2] {
        let mut bag = GroupKeyBag::esp(TEK_SPI);
        bag.sa_keys = vec![key(0, 0); n];
        for ctx in [Registration, Rekey, InbandRekey] {
            assert_eq!(
                bag.validate(ctx),
                Err(Violation::SaKeyCount {
                    protocol: ProtocolId::Esp,
                    count: n,
                    context: ctx
                })
            );
        }
    }
}

#[test]
fn kd_tek_sa_key_ids_zero() {
    // R089, R091.
    let bag = GroupKeyBag::esp(TEK_SPI).with_sa_key(key(1, 0));
    assert_eq!(
        bag.validate(Registration),
        Err(Violation::SaKeyNonZeroKeyId)
    );
    let bag = GroupKeyBag::ah(TEK_SPI).with_sa_key(key(0, 4));
    assert_eq!(
        bag.validate(Registration),
        Err(Violation::SaKeyNonZeroKwkId)
    );
}

#[test]
fn kd_kek_bag_exactly_one_sa_key_in_registration_and_inband() {
    // R092.
    let two = GroupKeyBag::kek(1, 2)
        .with_sa_key(key(0, 1))
        .with_sa_key(key(0, 15));
    for ctx in [Registration, InbandRekey] {
        assert!(matches!(
            two.validate(ctx),
            Err(Violation::SaKeyCount { count: 2, .. })
        ));
    }
}

#[test]
fn kd_kek_bag_at_least_one_sa_key_in_rekey() {
    // R093: LKH exclusion sends several (Appendix A.4: 1{K_sa3}, 15{K_sa3}).
    let two = GroupKeyBag::kek(1, 2)
        .with_sa_key(key(0, 1))
        .with_sa_key(key(0, 15));
    assert_eq!(two.validate(Rekey), Ok(()));
    assert!(matches!(
        GroupKeyBag::kek(1, 2).validate(Rekey),
        Err(Violation::SaKeyCount { count: 0, .. })
    ));
}

#[test]
fn kd_kek_sa_key_id_zero() {
    // R089: Key ID always zero; the KWK ID may name an intermediate key.
    let bag = GroupKeyBag::kek(1, 2).with_sa_key(key(3, 1));
    assert_eq!(bag.validate(Rekey), Err(Violation::SaKeyNonZeroKeyId));
}

#[test]
fn kd_wrap_key_id_nonzero() {
    // R098.
    let bag = MemberKeyBag::new().with_wrap_key(key(0, 3));
    assert_eq!(bag.validate(Registration), Err(Violation::WrapKeyZeroKeyId));
}

#[test]
fn kd_empty_encrypted_key_rejected() {
    let bag = GroupKeyBag::esp(TEK_SPI).with_sa_key(WrappedKey::new(0, 0, vec![]));
    assert_eq!(
        bag.validate(Registration),
        Err(Violation::EmptyEncryptedKey)
    );
}

#[test]
fn kd_duplicate_bag_rejected() {
    let k = kd(Rekey).with(GroupKeyBag::esp(TEK_SPI).with_sa_key(key(0, 0)));
    assert!(matches!(
        k.validate(Rekey),
        Err(Violation::DuplicateSa { .. })
    ));
}

#[test]
fn kd_bag_protocol_must_have_group_sa() {
    let bag = GroupKeyBag::new(ProtocolId::Ike, Spi::Ipsec(TEK_SPI)).with_sa_key(key(0, 0));
    assert_eq!(
        bag.validate(Registration),
        Err(Violation::InvalidProtocol(ProtocolId::Ike))
    );
}

// ------------------------------------------------------------ KD against GSA

#[test]
fn kd_bag_without_policy_rejected() {
    let k = kd(Rekey).with(GroupKeyBag::esp(0x9999).with_sa_key(key(0, 0)));
    assert_eq!(
        k.validate_against(&gsa(Rekey), Rekey),
        Err(Violation::KeyBagWithoutPolicy {
            protocol: ProtocolId::Esp,
            spi: Spi::Ipsec(0x9999)
        })
    );
}

#[test]
fn kd_policy_without_bag_rejected() {
    let g = gsa(Rekey).with_gsa(ah());
    assert_eq!(
        kd(Rekey).validate_against(&g, Rekey),
        Err(Violation::PolicyWithoutKeyBag {
            protocol: ProtocolId::Ah,
            spi: Spi::Ipsec(0x2000)
        })
    );
}

fn member(m: MemberKeyBag) -> KdPayload {
    let mut k = kd(Rekey);
    k.bags.push(m.into());
    k
}

#[test]
fn kd_auth_key_required_with_digital_signature() {
    // R069.
    let k = member(MemberKeyBag::new().with_wrap_key(key(7, 0)));
    assert_eq!(
        k.validate_against(&gsa(Registration), Registration),
        Err(Violation::AuthKeyMissing)
    );
    assert_eq!(
        kd(Rekey).validate_against(&gsa(Registration), Registration),
        Err(Violation::AuthKeyMissing)
    );
}

#[test]
fn kd_auth_key_forbidden_with_implicit() {
    // R067, R030.
    let mut g = gsa(Registration);
    if let Some(gikev2_proto::wire::gsa::GroupPolicy::Gsa(p)) = g.policies.first_mut() {
        *p = replace_transform(
            p.clone(),
            TransformType::GcAuth,
            Some(Transform::gcauth(GcAuthId::Implicit, None)),
        );
    }
    let k = member(MemberKeyBag::new().with_auth_key(vec![0x30, 0x00]));
    assert_eq!(
        k.validate_against(&g, Registration),
        Err(Violation::AuthKeyNotAllowed)
    );
    assert_eq!(kd(Rekey).validate_against(&g, Registration), Ok(()));
}

#[test]
fn kd_wrap_key_requires_rekey_sa() {
    // R097, Table 3: no key tree without a multicast Rekey SA.
    let g = GsaPayload::new().with_gsa(esp());
    let k = KdPayload::new()
        .with(GroupKeyBag::esp(TEK_SPI).with_sa_key(key(0, 0)))
        .with(MemberKeyBag::new().with_wrap_key(key(7, 0)));
    assert_eq!(
        k.validate_against(&g, Registration),
        Err(Violation::WrapKeyWithoutRekeySa)
    );
}

#[test]
fn kd_sender_id_requires_sender_id_bits() {
    // Table 2 note 1, 2.5.2.
    let g = GsaPayload::new().with_gsa(esp());
    let k = KdPayload::new()
        .with(GroupKeyBag::esp(TEK_SPI).with_sa_key(key(0, 0)))
        .with(MemberKeyBag::new().with_sender_id(1));
    assert_eq!(
        k.validate_against(&g, Registration),
        Err(Violation::SenderIdBitsMissing)
    );
    let g = g.with_gw(GwPolicy::new().with_sender_id_bits(8));
    assert_eq!(k.validate_against(&g, Registration), Ok(()));
}

#[test]
fn kd_sender_id_requires_counter_mode() {
    // Table 2 note 1: Sender-IDs only with a counter-mode Data-Security SA.
    let cbc = replace_transform(
        esp(),
        TransformType::Encr,
        Some(Transform::encr(EncrId::AesCbc, Some(128))),
    )
    .with_transform(Transform::integ(IntegId::HmacSha2_256_128));
    let g = GsaPayload::new()
        .with_gsa(cbc)
        .with_gw(GwPolicy::new().with_sender_id_bits(8));
    let k = KdPayload::new()
        .with(GroupKeyBag::esp(TEK_SPI).with_sa_key(key(0, 0)))
        .with(MemberKeyBag::new().with_sender_id(1));
    assert_eq!(
        k.validate_against(&g, Registration),
        Err(Violation::SenderIdWithoutCounterMode)
    );
    assert!(is_counter_mode(EncrId::AesCtr) && !is_aead(EncrId::AesCtr));
    assert!(!is_counter_mode(EncrId::AesCbc));
}

#[test]
fn kd_sender_id_must_fit_bits() {
    // 2.5.2: a Sender-ID that does not fit GWP_SENDER_ID_BITS is fatal.
    let g = GsaPayload::new()
        .with_gsa(esp())
        .with_gw(GwPolicy::new().with_sender_id_bits(8));
    let k = |id| {
        KdPayload::new()
            .with(GroupKeyBag::esp(TEK_SPI).with_sa_key(key(0, 0)))
            .with(MemberKeyBag::new().with_sender_id(id))
    };
    assert_eq!(k(255).validate_against(&g, Registration), Ok(()));
    assert_eq!(
        k(256).validate_against(&g, Registration),
        Err(Violation::SenderIdTooLarge {
            sender_id: 256,
            bits: 8
        })
    );
}
