//! Registration payloads (RFC 9838 2.3.3, 2.3.4, 5 Tables 2 and 3): the GCKS builds GSA and
//! KD from its group state, the member reads them back into installable keys.

mod group_common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use gikev2_proto::Codec;
use gikev2_proto::crypto::sign::SignatureScheme;
use gikev2_proto::crypto::{IkeSuite, KeyWrapAlg, KeyWrapKey, SecretBytes};
use gikev2_proto::group::keypath::LkhKey;
use gikev2_proto::group::{
    BuildContext, BuildError, GroupAuth, GroupKeys, HeldSenderIds, KwkTooShort, MemberGrant,
    RegistrationError, RekeyAuth, Role, build_inband_rekey, build_registration, read_inband_rekey,
    read_registration,
};
use gikev2_proto::ike::{
    Decision, Event, Goal, IkeConfig, IkeSa, InitRefusal, LocalAuth, PeerAuth, RegistrationRequest,
    SinglePeer,
};
use gikev2_proto::registry::{
    EncrId, GcAuthId, KeId, KwaId, NotifyType, PrfId, SnId, TransformAttrType, TransformType,
};
use gikev2_proto::wire::Transform;
use gikev2_proto::wire::gsa::{GsaPayload, PolicyContext, Violation};
use gikev2_proto::wire::id::IdPayload;
use gikev2_proto::wire::kd::{KdPayload, KeyBag, WrappedKey, validate_gsa_kd};
use gikev2_proto::wire::ts::TrafficSelector;
use group_common::*;

const CTX: BuildContext = BuildContext { now: NOW + 100 };

fn receiver() -> MemberGrant {
    MemberGrant::default()
}

fn sender(ids: &[u32]) -> MemberGrant {
    MemberGrant {
        sender: true,
        sender_ids: ids.to_vec(),
        ..MemberGrant::default()
    }
}

fn build(
    g: &gikev2_proto::group::GroupState,
    m: &MemberGrant,
) -> Result<(GsaPayload, KdPayload), BuildError> {
    build_registration(g, m, &ike_kwk(0x11), &CTX)
}

fn read(gsa: &GsaPayload, kd: &KdPayload, role: Role) -> Result<GroupKeys, RegistrationError> {
    read_registration(gsa, kd, &ike_kwk(0x11), role)
}

#[test]
fn registration_round_trip_member_keys_equal_gcks_keys() {
    for scheme in [
        SignatureScheme::Ed25519,
        SignatureScheme::EcdsaP256Sha256,
        SignatureScheme::MlDsa65,
    ] {
        let g = group(signature(scheme), &mut rng(1));
        let (gsa, kd) = build(&g, &sender(&[3, 4])).unwrap();
        // The wire form decodes to the same payloads and passes the validators.
        let gsa = GsaPayload::read_bytes(&gsa.to_bytes()).unwrap();
        let kd = KdPayload::read_bytes(&kd.to_bytes()).unwrap();
        validate_gsa_kd(&gsa, &kd, PolicyContext::Registration).unwrap();

        let keys = read(&gsa, &kd, Role::Sender { receives: true }).unwrap();
        let kek = g.rekey.as_ref().unwrap();
        let rk = keys.rekey.as_ref().unwrap();
        assert_eq!(rk.spi, kek.spi);
        assert_eq!(rk.suite, kek.suite);
        assert_eq!(rk.keys, kek.keys().unwrap());
        assert_eq!(rk.dst, kek.dst);
        assert_eq!(rk.src, kek.src);
        assert_eq!(rk.lifetime, Some((LIFETIME - 100) as u32));
        assert_eq!(rk.first_message_id, 0);
        match keys.auth.as_ref().unwrap() {
            RekeyAuth::Signature { scheme: s, key } => {
                assert_eq!(*s, scheme);
                assert_eq!(Some(key), g.auth.public_key().as_ref());
            }
            RekeyAuth::Implicit => panic!("signature expected"),
        }
        assert_eq!(keys.teks.len(), 2);
        for (t, s) in keys.teks.iter().zip(&g.teks) {
            assert_eq!(t.spi, s.spi);
            assert_eq!(t.protocol, s.protocol.id());
            assert_eq!(t.encr, s.encr);
            assert_eq!(t.integ, s.integ);
            assert_eq!(t.sn, s.sn);
            assert_eq!(t.keys, s.keys().unwrap());
            assert_eq!(
                (t.src.clone(), t.dst.clone()),
                (s.src.clone(), s.dst.clone())
            );
            assert_eq!(t.lifetime, Some((LIFETIME - 100) as u32));
            assert_eq!(t.counter_mode, s.counter_mode());
        }
        assert_eq!(keys.sender_ids, vec![3, 4]);
        assert_eq!(keys.sender_id_bits, Some(8));
        assert_eq!((keys.atd, keys.dtd), (Some(5), Some(10)));
        assert!(keys.key_path.is_empty());
        // Secrets stay out of Debug output.
        let dbg = format!("{keys:?} {g:?}");
        assert!(dbg.contains("SecretBytes("));
        let km = g.teks[0].keymat().as_bytes();
        assert!(!dbg.contains(&format!("{:?}", &km[..4]).trim_end_matches(']').to_string()));
    }
}

#[test]
fn registration_key_lifetime_for_every_policy_with_multicast_rekey() {
    let g = group(GroupAuth::Implicit, &mut rng(2));
    let (gsa, _) = build(&g, &receiver()).unwrap();
    assert_eq!(gsa.gsa_policies().count(), 3);
    for p in gsa.gsa_policies() {
        assert_eq!(
            p.attributes.key_lifetime,
            Some((LIFETIME - 100) as u32),
            "{p:?}"
        );
    }
    // An expired SA is never handed out.
    let late = BuildContext {
        now: NOW + LIFETIME,
    };
    assert_eq!(
        build_registration(&g, &receiver(), &ike_kwk(0x11), &late),
        Err(BuildError::Expired)
    );
}

#[test]
fn registration_initial_message_id_only_when_nonzero() {
    let mut g = group(GroupAuth::Implicit, &mut rng(3));
    let (gsa, kd) = build(&g, &receiver()).unwrap();
    assert_eq!(gsa.kek().unwrap().attributes.initial_message_id, None);
    // RFC 9838 2.4.1.4: without the attribute the member expects 0 first.
    assert_eq!(
        read(&gsa, &kd, Role::Receiver)
            .unwrap()
            .rekey
            .unwrap()
            .first_message_id,
        0
    );

    g.rekey.as_mut().unwrap().next_message_id = 7;
    let (gsa, kd) = build(&g, &receiver()).unwrap();
    assert_eq!(gsa.kek().unwrap().attributes.initial_message_id, Some(7));
    for t in gsa.teks() {
        assert_eq!(t.attributes.initial_message_id, None);
    }
    assert_eq!(
        read(&gsa, &kd, Role::Receiver)
            .unwrap()
            .rekey
            .unwrap()
            .first_message_id,
        7
    );
}

#[test]
fn registration_inband_has_no_rekey_sa_lifetime_next_spi_or_wrap_key() {
    let mut g = group(signature(SignatureScheme::Ed25519), &mut rng(4));
    g.teks[0].next_spis = vec![0x5000];
    g.rekey.as_mut().unwrap().next_message_id = 9;
    let grant = MemberGrant {
        inband: true,
        ..sender(&[1])
    };
    let (gsa, kd) = build(&g, &grant).unwrap();
    validate_gsa_kd(&gsa, &kd, PolicyContext::Registration).unwrap();
    assert!(
        gsa.kek().is_none(),
        "no Rekey SA with inband rekey (Table 3)"
    );
    for p in gsa.gsa_policies() {
        assert_eq!(p.attributes.key_lifetime, None);
        assert_eq!(p.attributes.initial_message_id, None);
        assert!(p.attributes.next_spis.is_empty());
    }
    let member = kd.member().unwrap();
    assert!(member.auth_key.is_none() && member.wrap_keys.is_empty());
    assert_eq!(member.sender_ids, vec![1]);
    let keys = read(&gsa, &kd, Role::Sender { receives: false }).unwrap();
    assert!(keys.rekey.is_none() && keys.auth.is_none());

    // WRAP_KEY MUST NOT be used with inband rekey (4.5.3.1).
    let lkh = MemberGrant {
        inband: true,
        wrap_keys: vec![LkhKey::new(7, SecretBytes::from_slice(&[7; 32]))],
        ..receiver()
    };
    assert_eq!(build(&g, &lkh), Err(BuildError::WrapKeysWithoutRekeySa));

    // Multicast rekey: GSA_NEXT_SPI is passed on.
    let (gsa, _) = build(&g, &sender(&[1])).unwrap();
    assert_eq!(gsa.teks().next().unwrap().attributes.next_spis.len(), 1);
}

#[test]
fn inband_rekey_payloads_follow_table_3_and_the_sender_keeps_its_sender_ids() {
    let mut g = group(signature(SignatureScheme::Ed25519), &mut rng(4));
    g.teks[0].next_spis = vec![0x5000];
    let (gsa, kd) = build_inband_rekey(&g, true, &ike_kwk(0x11), &CTX).unwrap();
    validate_gsa_kd(&gsa, &kd, PolicyContext::InbandRekey).unwrap();
    // Built as a registration (2.4.2.1) under the rekey rules: no KEK, no lifetimes or
    // GSA_NEXT_SPI (4.4.2.2.1, 4.4.2.2.3), no member key bag (no GM_SENDER_ID, R107; no
    // WRAP_KEY, R097; no AUTH_KEY), no GWP_SENDER_ID_BITS (Table 3 note 1).
    assert!(gsa.kek().is_none());
    assert_eq!(gsa.teks().count(), g.teks.len());
    for p in gsa.gsa_policies() {
        assert_eq!(p.attributes.key_lifetime, None);
        assert!(p.attributes.next_spis.is_empty());
    }
    assert!(kd.member().is_none());
    assert_eq!(gsa.gw().and_then(|gw| gw.sender_id_bits), None);
    // A registration's payloads are not a valid GSA_INBAND_REKEY (they carry Sender-IDs).
    let grant = MemberGrant {
        inband: true,
        ..sender(&[3])
    };
    let (reg_gsa, reg_kd) = build(&g, &grant).unwrap();
    assert!(validate_gsa_kd(&reg_gsa, &reg_kd, PolicyContext::InbandRekey).is_err());

    // The member reads the keys with what it holds: its Sender-IDs and their width.
    let role = Role::Sender { receives: false };
    let held = HeldSenderIds {
        ids: vec![3],
        bits: Some(8),
    };
    let keys = read_inband_rekey(&gsa, &kd, &ike_kwk(0x11), role, &held).unwrap();
    assert_eq!(keys.sender_ids, vec![3]);
    assert_eq!(keys.sender_id_bits, Some(8));
    assert_eq!(keys.teks.len(), g.teks.len());
    for (t, s) in keys.teks.iter().zip(&g.teks) {
        assert_eq!((t.spi, &t.keys), (s.spi, &s.keys().unwrap()));
    }
    // A sender that holds none cannot use the counter-mode TEK (2.4.1.4): re-register.
    let e =
        read_inband_rekey(&gsa, &kd, &ike_kwk(0x11), role, &HeldSenderIds::default()).unwrap_err();
    assert_eq!(e, RegistrationError::SenderWithoutSenderId);
    // ... and a registration read of these payloads is refused the same way.
    assert_eq!(
        read(&gsa, &kd, role).unwrap_err(),
        RegistrationError::SenderWithoutSenderId
    );
}

#[test]
fn registration_gcauth_signature_algorithm_and_auth_key_with_digital_signature() {
    for scheme in [
        SignatureScheme::Ed25519,
        SignatureScheme::EcdsaP256Sha256,
        SignatureScheme::MlDsa65,
    ] {
        let g = group(signature(scheme), &mut rng(5));
        let (gsa, kd) = build(&g, &receiver()).unwrap();
        let gcauth = gsa.kek().unwrap().transform(TransformType::GcAuth).unwrap();
        assert_eq!(GcAuthId::from(gcauth.id), GcAuthId::DigitalSignature);
        assert_eq!(
            gcauth.signature_algorithm_id(),
            Some(scheme.algorithm_identifier())
        );
        let spki = g.auth.public_key().unwrap().to_spki().unwrap();
        assert_eq!(
            kd.member().unwrap().auth_key.as_ref().unwrap().spki_der(),
            &spki[..]
        );
    }
    // Implicit: GCAUTH Implicit, no Signature Algorithm Identifier, no AUTH_KEY (2.4.1).
    let g = group(GroupAuth::Implicit, &mut rng(5));
    let (gsa, kd) = build(&g, &receiver()).unwrap();
    let gcauth = gsa.kek().unwrap().transform(TransformType::GcAuth).unwrap();
    assert_eq!(GcAuthId::from(gcauth.id), GcAuthId::Implicit);
    assert!(
        gcauth
            .attr(TransformAttrType::SignatureAlgorithmId)
            .is_none()
    );
    assert!(kd.member().is_none());
    assert_eq!(
        read(&gsa, &kd, Role::Receiver).unwrap().auth,
        Some(RekeyAuth::Implicit)
    );
}

#[test]
fn registration_gm_sender_id_only_for_senders() {
    let g = group(GroupAuth::Implicit, &mut rng(6));
    let (_, kd) = build(&g, &sender(&[1, 2])).unwrap();
    assert_eq!(kd.member().unwrap().sender_ids, vec![1, 2]);
    let (_, kd) = build(&g, &receiver()).unwrap();
    assert!(kd.member().is_none_or(|m| m.sender_ids.is_empty()));

    // A sender of a counter-mode group gets at least one (4.5.3.3) ...
    assert_eq!(build(&g, &sender(&[])), Err(BuildError::SenderIdsMissing));
    // ... a receiver none (5 note 1).
    let bad = MemberGrant {
        sender_ids: vec![1],
        ..receiver()
    };
    assert_eq!(build(&g, &bad), Err(BuildError::SenderIdsNotAllowed));

    // Without a counter-mode TEK there are no Sender-IDs and no GWP_SENDER_ID_BITS.
    let mut plain = group(GroupAuth::Implicit, &mut rng(6));
    plain.teks.remove(0);
    assert_eq!(
        build(&plain, &sender(&[1])),
        Err(BuildError::SenderIdsNotAllowed)
    );
    let (gsa, kd) = build(&plain, &sender(&[])).unwrap();
    assert_eq!(gsa.gw().unwrap().sender_id_bits, None);
    assert!(kd.member().is_none());

    // The member refuses to send on a counter-mode SA without a Sender-ID (2.4.1.4).
    let (gsa, kd) = build(&g, &receiver()).unwrap();
    let e = read(&gsa, &kd, Role::Sender { receives: true }).unwrap_err();
    assert_eq!(e, RegistrationError::SenderWithoutSenderId);
    assert!(e.must_reregister());
}

#[test]
fn registration_sender_id_bits_for_senders_and_multi_sender_counter_mode_groups() {
    let mut g = group(GroupAuth::Implicit, &mut rng(7));
    // 4.4.3.1.2: several senders and a counter-mode TEK: every member learns the bits.
    let (gsa, _) = build(&g, &receiver()).unwrap();
    assert_eq!(gsa.gw().unwrap().sender_id_bits, Some(8));
    // 5 note 1: a single-sender group tells only the sender.
    g.policy.multiple_senders = false;
    let (gsa, _) = build(&g, &receiver()).unwrap();
    assert_eq!(gsa.gw().unwrap().sender_id_bits, None);
    let (gsa, _) = build(&g, &sender(&[0])).unwrap();
    assert_eq!(gsa.gw().unwrap().sender_id_bits, Some(8));
    // Counter mode with senders needs the configured width.
    g.policy.sender_id_bits = None;
    assert_eq!(
        build(&g, &sender(&[0])),
        Err(BuildError::SenderIdBitsMissing)
    );
}

#[test]
fn registration_sn_transform_for_every_tek() {
    let mut g = group(GroupAuth::Implicit, &mut rng(8));
    // A single-sender group may give its CBC TEK replay protection (4.4.2.1.3, R077).
    g.policy.multiple_senders = false;
    g.teks[1].sn = SnId::Seq32;
    let (gsa, kd) = build(&g, &receiver()).unwrap();
    let sns: Vec<SnId> = gsa
        .teks()
        .map(|p| SnId::from(p.transform(TransformType::Sn).unwrap().id))
        .collect();
    assert_eq!(sns, vec![SnId::Unspecified32, SnId::Seq32]);
    let keys = read(&gsa, &kd, Role::Receiver).unwrap();
    assert_eq!(keys.teks[1].sn, SnId::Seq32);
}

#[test]
fn registration_several_senders_need_unspecified_sequence_numbers() {
    // 4.4.2.1.3 (R079): a multicast SA with several senders MUST carry "32-bit
    // Unspecified Numbers"; the GCKS refuses to hand out one that promises replay
    // protection, to receivers and senders alike.
    let mut g = group(GroupAuth::Implicit, &mut rng(9));
    assert!(g.policy.multiple_senders);
    assert!(build(&g, &receiver()).is_ok());
    g.teks[1].sn = SnId::Seq32;
    for m in [receiver(), sender(&[0])] {
        assert_eq!(
            build(&g, &m),
            Err(BuildError::Violation(
                Violation::SequentialNumbersWithSeveralSenders
            ))
        );
    }
    // Not a multicast SA: the rule does not apply.
    g.teks[1].dst = TrafficSelector::single("192.0.2.9".parse().unwrap(), 17, Some(5001));
    assert!(build(&g, &receiver()).is_ok());
}

#[test]
fn registration_sender_id_must_fit_sender_id_bits() {
    let g = group(GroupAuth::Implicit, &mut rng(9));
    // The GCKS refuses to promise a Sender-ID that does not fit (2.5.2).
    assert!(matches!(
        build(&g, &sender(&[256])),
        Err(BuildError::Violation(Violation::SenderIdTooLarge {
            sender_id: 256,
            bits: 8
        }))
    ));
    // A member receiving one treats it as fatal and re-registers (2.5.2, R047).
    let (gsa, mut kd) = build(&g, &sender(&[255])).unwrap();
    for b in &mut kd.bags {
        if let KeyBag::Member(m) = b {
            m.sender_ids = vec![300];
        }
    }
    let e = read(&gsa, &kd, Role::Sender { receives: false }).unwrap_err();
    assert!(matches!(
        e,
        RegistrationError::Violation(Violation::SenderIdTooLarge {
            sender_id: 300,
            bits: 8
        })
    ));
    assert!(e.must_reregister());
    assert_eq!(e.notify(), NotifyType::RegistrationFailed);
}

#[test]
fn registration_auth_key_type_must_fit_signature_algorithm() {
    let g = group(signature(SignatureScheme::Ed25519), &mut rng(10));
    let (gsa, mut kd) = build(&g, &receiver()).unwrap();
    let ecdsa = signing_key(SignatureScheme::EcdsaP256Sha256)
        .public_key()
        .to_spki()
        .unwrap();
    for b in &mut kd.bags {
        if let KeyBag::Member(m) = b {
            *m = m.clone().with_auth_key(ecdsa.clone());
        }
    }
    let e = read(&gsa, &kd, Role::Receiver).unwrap_err();
    assert_eq!(
        e,
        RegistrationError::AuthKeyMismatch(SignatureScheme::Ed25519)
    );
    assert_eq!(e.notify(), NotifyType::RegistrationFailed);
}

#[test]
fn registration_key_material_size_must_match_section_3_4() {
    let g = group(GroupAuth::Implicit, &mut rng(11));
    let (gsa, mut kd) = build(&g, &receiver()).unwrap();
    let kwk = ike_kwk(0x11);
    let spi = g.teks[1].spi;
    for b in &mut kd.bags {
        if let KeyBag::Group(bag) = b
            && bag.spi == gikev2_proto::wire::gsa::Spi::Ipsec(spi)
        {
            let mut km = g.teks[1].keymat().as_bytes().to_vec();
            km.push(0);
            bag.sa_keys = vec![WrappedKey::new(0, 0, kwk.wrap(&km).unwrap())];
        }
    }
    let e = read(&gsa, &kd, Role::Receiver).unwrap_err();
    assert!(matches!(
        e,
        RegistrationError::KeyMaterialLength {
            expected: 48,
            got: 49,
            ..
        }
    ));
}

#[test]
fn registration_directions_follow_the_member_role() {
    let g = group(GroupAuth::Implicit, &mut rng(12));
    let (gsa, kd) = build(&g, &sender(&[1])).unwrap();
    for (role, dirs) in [
        (Role::Receiver, (true, false)),
        (Role::Sender { receives: false }, (false, true)),
        (Role::Sender { receives: true }, (true, true)),
    ] {
        let keys = read(&gsa, &kd, role).unwrap();
        for t in &keys.teks {
            assert_eq!((t.inbound, t.outbound), dirs, "{role:?}");
        }
    }
}

#[test]
fn registration_unsupported_algorithm_answers_no_proposal_chosen() {
    let g = group(GroupAuth::Implicit, &mut rng(13));
    let (mut gsa, kd) = build(&g, &receiver()).unwrap();
    for p in &mut gsa.policies {
        if let gikev2_proto::wire::gsa::GroupPolicy::Gsa(p) = p
            && p.is_kek()
        {
            for t in &mut p.transforms {
                if t.ty == TransformType::Kwa {
                    *t = Transform::kwa(KwaId::KwArx);
                }
            }
        }
    }
    let e = read(&gsa, &kd, Role::Receiver).unwrap_err();
    assert!(matches!(e, RegistrationError::Unsupported(_)));
    assert_eq!(e.notify(), NotifyType::NoProposalChosen);

    // A wrong default KWK cannot open the keys: REGISTRATION_FAILED.
    let (gsa, kd) = build(&g, &receiver()).unwrap();
    let e = read_registration(&gsa, &kd, &ike_kwk(0x12), Role::Receiver).unwrap_err();
    assert!(matches!(e, RegistrationError::KeyUnwrap(_)));
    assert_eq!(e.notify(), NotifyType::RegistrationFailed);
}

#[test]
fn registration_key_tree_path_becomes_the_working_key_path() {
    // RFC 9838 A.2 Figure 23: KD(GP(SA1)(1{K_sa1}),MP(3{1},7{3},GSK_w{7})).
    let g = group(signature(SignatureScheme::Ed25519), &mut rng(14));
    let path: Vec<LkhKey> = [1u32, 3, 7]
        .iter()
        .map(|id| LkhKey::new(*id, SecretBytes::from_slice(&[*id as u8; 32])))
        .collect();
    let grant = MemberGrant {
        wrap_keys: path,
        ..receiver()
    };
    let (gsa, kd) = build(&g, &grant).unwrap();
    let kek_bag = kd.kek().unwrap();
    assert_eq!(kek_bag.sa_keys.len(), 1);
    assert_eq!(
        (kek_bag.sa_keys[0].key_id, kek_bag.sa_keys[0].kwk_id),
        (0, 1)
    );
    let wraps: Vec<(u32, u32)> = kd
        .member()
        .unwrap()
        .wrap_keys
        .iter()
        .map(|w| (w.key_id, w.kwk_id))
        .collect();
    assert_eq!(wraps, vec![(7, 0), (3, 7), (1, 3)]);
    let keys = read(&gsa, &kd, Role::Receiver).unwrap();
    assert_eq!(keys.key_path.ids(), vec![1, 3, 7]);
    assert_eq!(
        keys.rekey.unwrap().keys,
        g.rekey.as_ref().unwrap().keys().unwrap()
    );
}

#[test]
fn registration_without_any_sa_is_refused() {
    let mut g = group(GroupAuth::Implicit, &mut rng(15));
    g.teks.clear();
    let inband = MemberGrant {
        inband: true,
        ..receiver()
    };
    assert_eq!(build(&g, &inband), Err(BuildError::EmptyGroup));
    // A Rekey SA alone is a valid group policy (4.4.1).
    let (gsa, kd) = build(&g, &receiver()).unwrap();
    assert!(read(&gsa, &kd, Role::Receiver).unwrap().teks.is_empty());
}

/// A real GSA_AUTH in memory: the GCKS answers with `build_registration` and the IKE SA's
/// default KWK, the member reads the payloads with its own IKE SA's KWK.
#[test]
fn registration_over_gsa_auth_with_the_ike_sa_default_kwk() {
    let suite = IkeSuite::from_transforms(&[
        Transform::encr(EncrId::AesGcm16, Some(256)),
        Transform::prf(PrfId::HmacSha2_256),
        Transform::ke(KeId::Curve25519),
        Transform::kwa(KwaId::Kw5649_256),
    ])
    .unwrap();
    let member_id = IdPayload::fqdn("gm.example").unwrap();
    let gcks_id = IdPayload::fqdn("gcks.example").unwrap();
    let psk = || SecretBytes::from_slice(b"group psk");
    let cfg = |me: &IdPayload, peer: &IdPayload| {
        IkeConfig::new(
            vec![suite.clone()],
            me.clone(),
            LocalAuth::Psk(psk()),
            Arc::new(SinglePeer {
                id: Some(peer.clone()),
                auth: PeerAuth::Psk(psk()),
            }),
        )
    };
    let (m_addr, g_addr): (SocketAddr, SocketAddr) = (
        "10.0.0.2:500".parse().unwrap(),
        "10.0.0.1:500".parse().unwrap(),
    );
    let now = Instant::now();
    let mut r = rng(16);
    let state = group(signature(SignatureScheme::Ed25519), &mut r);
    let request = RegistrationRequest {
        group: IdPayload::key_id(b"group-1".to_vec()),
        sag: None,
        sender_ids: Some(2),
    };
    let mut member = IkeSa::initiate(
        cfg(&member_id, &gcks_id),
        Goal::GsaAuth(request),
        m_addr,
        g_addr,
        now,
        &mut r,
    )
    .unwrap();
    let mut gcks: Option<IkeSa> = None;
    let mut registered = None;
    for _ in 0..50 {
        let mut moved = false;
        while let Some(d) = member.poll_transmit() {
            moved = true;
            match gcks.as_mut() {
                Some(g) => g.handle(&d, now, &mut r),
                None => {
                    match IkeSa::respond(cfg(&gcks_id, &member_id), &d, g_addr, m_addr, now, &mut r)
                    {
                        Ok(sa) => gcks = Some(sa),
                        Err(InitRefusal::Reply(x)) => member.handle(&x, now, &mut r),
                        Err(InitRefusal::Drop) => {}
                    }
                }
            }
        }
        if let Some(g) = gcks.as_mut() {
            while let Some(e) = g.poll_event() {
                moved = true;
                if let Event::RegistrationRequested { request, .. } = e {
                    let grant = sender(&[10, 11][..request.sender_ids.unwrap_or(1) as usize]);
                    let kwk = g.key_wrap_key().unwrap();
                    let (gsa, kd) = build_registration(&state, &grant, &kwk, &CTX).unwrap();
                    g.decide(
                        Decision::Accept {
                            gsa,
                            kd,
                            transport_mode: false,
                        },
                        now,
                        &mut r,
                    );
                }
            }
            while let Some(d) = g.poll_transmit() {
                moved = true;
                member.handle(&d, now, &mut r);
            }
        }
        while let Some(e) = member.poll_event() {
            moved = true;
            if let Event::Registered { gsa, kd, .. } = e {
                registered = Some((gsa, kd));
            }
        }
        if !moved {
            break;
        }
    }
    let (gsa, kd) = registered.expect("member registered");
    let keys = read_registration(
        &gsa,
        &kd,
        &member.key_wrap_key().unwrap(),
        Role::Sender { receives: true },
    )
    .unwrap();
    assert_eq!(keys.sender_ids, vec![10, 11]);
    assert_eq!(
        keys.rekey.unwrap().keys,
        state.rekey.as_ref().unwrap().keys().unwrap()
    );
    for (t, s) in keys.teks.iter().zip(&state.teks) {
        assert_eq!(t.keys, s.keys().unwrap());
    }
}

#[test]
fn registration_kwk_must_not_be_shorter_than_the_group_keys() {
    // 3.1 (R052): the fixture group has AES-256 keys; a member whose IKE SA negotiated
    // KW_5649_128 would get them under a 128-bit KWK: refused.
    let g = group(GroupAuth::Implicit, &mut rng(10));
    assert_eq!(g.longest_encryption_key(), 32);
    let short = KeyWrapKey::new(KeyWrapAlg::Kw5649_128, &[0x11; 16]).unwrap();
    assert_eq!(
        build_registration(&g, &receiver(), &short, &CTX),
        Err(BuildError::KwkTooShort(KwkTooShort {
            kwa: KeyWrapAlg::Kw5649_128,
            key: 32
        }))
    );
    let ok = KeyWrapKey::new(KeyWrapAlg::Kw5649_256, &[0x11; 32]).unwrap();
    assert!(build_registration(&g, &receiver(), &ok, &CTX).is_ok());
}
