//! GSA_REKEY (RFC 9838 2.4.1): the GCKS builds, signs, encrypts and fragments; the member
//! reassembles, decrypts, verifies, replay-checks and installs.

mod group_common;

use std::time::{Duration, Instant};

use gikev2_proto::crypto::SecretBytes;
use gikev2_proto::crypto::sign::{SignatureScheme, SigningKey};
use gikev2_proto::crypto::{EncrAlg, IntegAlg, KeyWrapAlg, Random, SeededRandom};
use gikev2_proto::group::keypath::{KeyPathError, LkhKey};
use gikev2_proto::group::rekey::{RekeyBuildError, data_to_authenticate};
use gikev2_proto::group::{
    BuildContext, GroupAuth, GroupKeys, GroupState, LkhRekey, MemberGrant, RegistrationError,
    RekeyContent, RekeyDrop, RekeyMessage, RekeyReader, RekeySender, RekeySuite, Role, TekState,
    build_registration, read_registration,
};
use gikev2_proto::ike::protect::{self, Opened, Reassembly};
use gikev2_proto::registry::{
    AuthMethod, ExchangeType, PayloadType, ProtocolId, SnId, TransformType,
};
use gikev2_proto::wire::delete::DeletePayload;
use gikev2_proto::wire::gsa::Violation;
use gikev2_proto::wire::header::{HEADER_LEN, Header};
use gikev2_proto::wire::payload::Payload;
use group_common::*;

const BUILT_AT: u64 = NOW + 200;

/// A GCKS group and one registered member with its rekey reader.
struct Setup {
    g: GroupState,
    reader: RekeyReader,
    t0: Instant,
    rng: SeededRandom,
}

fn register(g: &GroupState, grant: &MemberGrant, role: Role, kwk_seed: u8) -> GroupKeys {
    let kwk = ike_kwk(kwk_seed);
    let (gsa, kd) = build_registration(g, grant, &kwk, &BuildContext { now: NOW + 100 }).unwrap();
    read_registration(&gsa, &kd, &kwk, role).unwrap()
}

fn setup(auth: GroupAuth, seed: u64) -> Setup {
    let mut rng = rng(seed);
    let g = group(auth, &mut rng);
    let keys = register(&g, &MemberGrant::default(), Role::Receiver, 0x21);
    let t0 = Instant::now();
    let reader = RekeyReader::new(&keys, t0).unwrap();
    Setup { g, reader, t0, rng }
}

/// A rekey carrying one new counter-mode TEK, unfragmented unless `fragment_size`.
fn tek_rekey(s: &mut Setup, fragment_size: Option<usize>) -> (RekeyMessage, TekState) {
    let t = tek_gcm(&mut s.rng);
    let content = RekeyContent {
        teks: vec![&t],
        ..RekeyContent::default()
    };
    let m = RekeySender::new(fragment_size)
        .build(&mut s.g, &content, BUILT_AT, &mut s.rng)
        .unwrap();
    (m, t)
}

/// Delivers every datagram of a message; returns the result of the last one.
fn deliver(
    r: &mut RekeyReader,
    m: &RekeyMessage,
    now: Instant,
) -> Result<Option<gikev2_proto::group::RekeyUpdate>, RekeyDrop> {
    let mut last = Ok(None);
    for d in &m.datagrams {
        last = r.handle(d, now);
    }
    last
}

/// Decrypts a message with the GCKS's current Rekey SA keys.
fn open_all(g: &GroupState, datagrams: &[Vec<u8>]) -> Opened {
    let sk = g.rekey.as_ref().unwrap().sk_key().unwrap();
    let mut re = Reassembly::default();
    let mut out = None;
    for d in datagrams {
        if let Some(o) = protect::open(&sk, d, &mut re).unwrap() {
            out = Some(o);
        }
    }
    out.expect("complete message")
}

const SCHEMES: [SignatureScheme; 3] = [
    SignatureScheme::Ed25519,
    SignatureScheme::EcdsaP256Sha256,
    SignatureScheme::MlDsa65,
];

#[test]
fn rekey_accepted_with_ed25519_ecdsa_p256_and_ml_dsa_65() {
    for (i, scheme) in SCHEMES.into_iter().enumerate() {
        let mut s = setup(signature(scheme), 100 + i as u64);
        let (m, t) = tek_rekey(&mut s, None);
        assert_eq!(m.datagrams.len(), 1);
        let u = s.reader.handle(&m.datagrams[0], s.t0).unwrap().unwrap();
        assert_eq!(u.message_id, 0);
        assert_eq!(u.via, s.g.rekey.as_ref().unwrap().spi);
        assert_eq!(u.teks.len(), 1);
        assert_eq!(u.teks[0].spi, t.spi);
        assert_eq!(u.teks[0].keys, t.keys().unwrap());
        assert_eq!(u.teks[0].lifetime, Some((LIFETIME - 200) as u32));
        assert!(u.teks[0].inbound && !u.teks[0].outbound);
        assert_eq!((u.atd, u.dtd), (Some(5), Some(10)));
        assert_eq!(s.reader.stats().accepted, 1, "{scheme:?}");
    }
}

#[test]
fn rekey_ecdsa_signature_length_matches_the_reserved_auth_length() {
    // DER ECDSA signatures are 70-72 octets; every message must still verify.
    let mut s = setup(signature(SignatureScheme::EcdsaP256Sha256), 110);
    for mid in 0..24 {
        let (m, _) = tek_rekey(&mut s, None);
        let u = deliver(&mut s.reader, &m, s.t0).unwrap().unwrap();
        assert_eq!(u.message_id, mid);
        let o = open_all(&s.g, &m.datagrams);
        let Some(Payload::Auth(a)) = o.payloads.last() else {
            panic!("AUTH last");
        };
        assert_eq!(a.method, AuthMethod::DigitalSignature);
        let alg = SignatureScheme::EcdsaP256Sha256.algorithm_identifier();
        assert_eq!(a.data.len(), 1 + alg.len() + 71);
    }
}

#[test]
fn rekey_header_carries_the_rekey_sa_spi_and_gsa_rekey_exchange() {
    let mut s = setup(signature(SignatureScheme::Ed25519), 120);
    let (m, _) = tek_rekey(&mut s, None);
    let h = Header::read_datagram(&m.datagrams[0]).unwrap();
    assert_eq!(h.rekey_spi(), s.g.rekey.as_ref().unwrap().spi);
    assert_eq!(h.exchange, ExchangeType::GsaRekey);
    assert_eq!(h.exchange.value(), 41);
    assert!(h.flags.is_initiator() && !h.flags.is_response());
    assert_eq!(h.next_payload, PayloadType::Sk);
    assert_eq!(h.message_id, 0);
    assert_eq!(s.g.rekey.as_ref().unwrap().next_message_id, 1);
}

#[test]
fn rekey_first_message_id_is_zero() {
    let mut s = setup(signature(SignatureScheme::Ed25519), 130);
    let (m, _) = tek_rekey(&mut s, None);
    assert_eq!(m.message_id, 0);
    deliver(&mut s.reader, &m, s.t0).unwrap().unwrap();

    // A new Rekey SA: the first message over it uses 0 again (2.4.1.3), and the member,
    // which got no GSA_INITIAL_MESSAGE_ID for it, accepts 0 (2.4.1.4).
    let kek2 = kek(&mut s.rng, cbc_suite());
    let content = RekeyContent {
        new_kek: Some(&kek2),
        ..RekeyContent::default()
    };
    let m = RekeySender::default()
        .build(&mut s.g, &content, BUILT_AT, &mut s.rng)
        .unwrap();
    assert_eq!(m.message_id, 1);
    let o = open_all(&s.g, &m.datagrams);
    let Some(Payload::Gsa(gsa)) = o.payloads.first() else {
        panic!("GSA first");
    };
    assert_eq!(gsa.kek().unwrap().attributes.initial_message_id, None);
    let u = deliver(&mut s.reader, &m, s.t0).unwrap().unwrap();
    let new = u.new_rekey.unwrap();
    assert_eq!(new.spi, kek2.spi);
    assert_eq!(new.keys, kek2.keys().unwrap());
    assert_eq!(new.first_message_id, 0);

    s.g.rekey = Some(kek2);
    let (m, _) = tek_rekey(&mut s, None);
    assert_eq!(m.message_id, 0);
    let u = deliver(&mut s.reader, &m, s.t0).unwrap().unwrap();
    assert_eq!(u.via, s.g.rekey.as_ref().unwrap().spi);
}

#[test]
fn rekey_replayed_message_id_rejected() {
    for (i, scheme) in SCHEMES.into_iter().enumerate() {
        let mut s = setup(signature(scheme), 140 + i as u64);
        let (m, _) = tek_rekey(&mut s, None);
        // The copies the GCKS sends are the same bytes (2.4.1.3): the first is taken ...
        assert!(s.reader.handle(&m.datagrams[0], s.t0).unwrap().is_some());
        // ... and every later copy is a replay (2.4.1.4, 8.2.4).
        for _ in 0..3 {
            assert_eq!(
                s.reader.handle(&m.datagrams[0], s.t0),
                Err(RekeyDrop::Replay { message_id: 0 })
            );
        }
        assert_eq!(s.reader.stats().replayed, 3);
        assert_eq!(s.reader.stats().accepted, 1);
    }
}

#[test]
fn rekey_lower_message_id_rejected() {
    let mut s = setup(signature(SignatureScheme::Ed25519), 150);
    let (m0, _) = tek_rekey(&mut s, None);
    let (m1, _) = tek_rekey(&mut s, None);
    let (m2, _) = tek_rekey(&mut s, None);
    assert_eq!((m0.message_id, m1.message_id, m2.message_id), (0, 1, 2));
    assert_eq!(
        deliver(&mut s.reader, &m1, s.t0)
            .unwrap()
            .unwrap()
            .message_id,
        1
    );
    assert_eq!(
        deliver(&mut s.reader, &m0, s.t0),
        Err(RekeyDrop::Replay { message_id: 0 })
    );
    // Gaps are fine: only order matters (2.4.1.4).
    assert_eq!(
        deliver(&mut s.reader, &m2, s.t0)
            .unwrap()
            .unwrap()
            .message_id,
        2
    );
}

#[test]
fn rekey_initial_message_id_from_registration_is_the_floor() {
    let mut s = setup(signature(SignatureScheme::Ed25519), 160);
    s.g.rekey.as_mut().unwrap().next_message_id = 3;
    let (m3, _) = tek_rekey(&mut s, None);
    let (m4, _) = tek_rekey(&mut s, None);
    // A member registering now learns GSA_INITIAL_MESSAGE_ID 5 (2.3.3, 4.4.2.2.2).
    let keys = register(&s.g, &MemberGrant::default(), Role::Receiver, 0x22);
    assert_eq!(keys.rekey.as_ref().unwrap().first_message_id, 5);
    let mut r = RekeyReader::new(&keys, s.t0).unwrap();
    assert_eq!(
        deliver(&mut r, &m3, s.t0),
        Err(RekeyDrop::Replay { message_id: 3 })
    );
    assert_eq!(
        deliver(&mut r, &m4, s.t0),
        Err(RekeyDrop::Replay { message_id: 4 })
    );
    let (m5, _) = tek_rekey(&mut s, None);
    let (m6, _) = tek_rekey(&mut s, None);
    assert!(deliver(&mut r, &m5, s.t0).unwrap().is_some());
    assert!(deliver(&mut r, &m6, s.t0).unwrap().is_some());

    // A registration answered in parallel may carry an older initial Message ID: it is
    // stale and does not reopen the window (2.3.3).
    let stale = {
        let mut g = GroupState {
            rekey: s.g.rekey.clone(),
            teks: s.g.teks.clone(),
            policy: s.g.policy,
            auth: GroupAuth::Implicit,
        };
        g.rekey.as_mut().unwrap().next_message_id = 5;
        g.auth = std::mem::replace(&mut s.g.auth, GroupAuth::Implicit);
        let k = register(&g, &MemberGrant::default(), Role::Receiver, 0x22);
        s.g.auth = g.auth;
        k
    };
    assert_eq!(stale.rekey.as_ref().unwrap().first_message_id, 5);
    r.reregistered(&stale, s.t0).unwrap();
    assert_eq!(
        deliver(&mut r, &m6, s.t0),
        Err(RekeyDrop::Replay { message_id: 6 })
    );
    let (m7, _) = tek_rekey(&mut s, None);
    assert!(deliver(&mut r, &m7, s.t0).unwrap().is_some());
}

#[test]
fn rekey_flipped_bit_anywhere_rejected() {
    for (i, scheme) in SCHEMES.into_iter().enumerate() {
        let mut s = setup(signature(scheme), 170 + i as u64);
        let (m, _) = tek_rekey(&mut s, None);
        let d = &m.datagrams[0];
        for at in 0..d.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = d.clone();
                bad[at] ^= bit;
                assert!(
                    s.reader.handle(&bad, s.t0).is_err(),
                    "{scheme:?}: flip {bit:#x} at {at} accepted"
                );
            }
        }
        assert_eq!(s.reader.stats().accepted, 0);
        assert!(s.reader.stats().integrity_failed > 0);
        // Nothing was consumed: the genuine message still goes through.
        assert!(s.reader.handle(d, s.t0).unwrap().is_some());
    }
}

#[test]
fn rekey_signature_by_another_key_rejected() {
    for (i, scheme) in SCHEMES.into_iter().enumerate() {
        let mut s = setup(signature(scheme), 180 + i as u64);
        // Same KEK (an insider knows it), a different signing key.
        let mut forger = GroupState {
            rekey: s.g.rekey.clone(),
            teks: Vec::new(),
            policy: s.g.policy,
            auth: match scheme {
                SignatureScheme::MlDsa65 => GroupAuth::Signature(Box::new(
                    SigningKey::ml_dsa_from_seed(scheme, &[0x77; 32]).unwrap(),
                )),
                _ => signature(scheme),
            },
        };
        let t = tek_gcm(&mut s.rng);
        let content = RekeyContent {
            teks: vec![&t],
            ..RekeyContent::default()
        };
        let forged = RekeySender::default()
            .build(&mut forger, &content, BUILT_AT, &mut s.rng)
            .unwrap();
        assert!(matches!(
            deliver(&mut s.reader, &forged, s.t0),
            Err(RekeyDrop::BadSignature(_))
        ));
        assert_eq!(s.reader.stats().bad_signature, 1);
        // The forged message consumed no Message ID.
        let (m, _) = tek_rekey(&mut s, None);
        assert_eq!(m.message_id, forged.message_id);
        assert!(deliver(&mut s.reader, &m, s.t0).unwrap().is_some());
    }
}

#[test]
fn rekey_fragmented_reassembles_in_any_order_and_verifies() {
    for (i, scheme) in SCHEMES.into_iter().enumerate() {
        let mut s = setup(signature(scheme), 190 + i as u64);
        let (m, t) = tek_rekey(&mut s, Some(150));
        assert!(m.datagrams.len() >= 3, "{scheme:?}: {}", m.datagrams.len());
        assert!(m.datagrams.iter().all(|d| d.len() <= 150));
        for d in &m.datagrams {
            assert_eq!(
                Header::read_datagram(d).unwrap().next_payload,
                PayloadType::Skf
            );
        }
        // Reversed, every fragment twice, interleaved with a copy of the first.
        let mut order: Vec<&Vec<u8>> = m.datagrams.iter().rev().flat_map(|d| [d, d]).collect();
        order.insert(1, &m.datagrams[0]);
        let mut done = Vec::new();
        for d in order {
            match s.reader.handle(d, s.t0) {
                Ok(Some(u)) => done.push(u),
                Ok(None) => {}
                // Copies after completion are replays.
                Err(RekeyDrop::Replay { .. }) => {}
                Err(e) => panic!("{scheme:?}: {e}"),
            }
        }
        assert_eq!(done.len(), 1, "{scheme:?}");
        assert_eq!(done[0].teks[0].keys, t.keys().unwrap());
    }
}

#[test]
fn rekey_signature_covers_message_before_fragmentation() {
    // Two GCKS states with the same keys and the same Ed25519 key (deterministic
    // signatures): one sends whole, the other fragments.
    let (key, pkcs8) = SigningKey::generate(SignatureScheme::Ed25519).unwrap();
    let mut s = setup(GroupAuth::Signature(Box::new(key)), 200);
    let mut twin = GroupState {
        rekey: s.g.rekey.clone(),
        teks: Vec::new(),
        policy: s.g.policy,
        auth: GroupAuth::Signature(Box::new(
            SigningKey::from_pkcs8(SignatureScheme::Ed25519, pkcs8.as_bytes()).unwrap(),
        )),
    };
    let t = tek_gcm(&mut s.rng);
    let content = RekeyContent {
        teks: vec![&t],
        ..RekeyContent::default()
    };
    let whole = RekeySender::default()
        .build(&mut twin, &content, BUILT_AT, &mut s.rng)
        .unwrap();
    let frags = RekeySender::new(Some(120))
        .build(&mut s.g, &content, BUILT_AT, &mut s.rng)
        .unwrap();
    assert_eq!(whole.datagrams.len(), 1);
    assert!(frags.datagrams.len() > 2);

    // The signed A | P is the unfragmented message's (2.4.1.2 R031) ...
    let signed = whole.signed_octets.clone().unwrap();
    assert_eq!(frags.signed_octets.as_ref(), Some(&signed));
    // ... whose A names SK (not SKF), counts |A| + |P| and the SK payload as |P| + 4.
    assert_eq!(signed[16], PayloadType::Sk.value());
    assert_eq!(&signed[24..28], &(signed.len() as u32).to_be_bytes());
    let p_len = signed.len() - HEADER_LEN - 4;
    assert_eq!(&signed[30..32], &((p_len + 4) as u16).to_be_bytes());
    assert_eq!(signed[28], PayloadType::Gsa.value());

    // The concatenated fragment plaintexts are the whole message's inner payloads, and
    // the receiver's A | P (fragment 1's header and RESERVED octet, R032) is the same.
    let o_whole = open_all(&s.g, &whole.datagrams);
    let o_frag = open_all(&s.g, &frags.datagrams);
    assert_eq!(o_frag.plaintext, o_whole.plaintext);
    assert_eq!(o_frag.payloads, o_whole.payloads);
    assert_eq!(data_to_authenticate(&o_frag).unwrap(), signed);
    assert_eq!(data_to_authenticate(&o_whole).unwrap(), signed);
    let Some(Payload::Auth(a)) = o_frag.payloads.last() else {
        panic!("AUTH last");
    };
    let sig = &a.data[1 + SignatureScheme::Ed25519.algorithm_identifier().len()..];
    s.g.auth
        .public_key()
        .unwrap()
        .verify(SignatureScheme::Ed25519, &signed, sig)
        .unwrap();

    // Either form verifies at the member; the second is the same Message ID: a replay.
    assert!(deliver(&mut s.reader, &frags, s.t0).unwrap().is_some());
    assert_eq!(
        deliver(&mut s.reader, &whole, s.t0),
        Err(RekeyDrop::Replay { message_id: 0 })
    );
}

#[test]
fn rekey_payloads_carry_no_gcauth_gm_sender_id_or_sender_id_bits() {
    let mut s = setup(signature(SignatureScheme::Ed25519), 210);
    let kek2 = kek(&mut s.rng, gcm_suite());
    let t = tek_gcm(&mut s.rng);
    let content = RekeyContent {
        new_kek: Some(&kek2),
        teks: vec![&t],
        ..RekeyContent::default()
    };
    let m = RekeySender::default()
        .build(&mut s.g, &content, BUILT_AT, &mut s.rng)
        .unwrap();
    let o = open_all(&s.g, &m.datagrams);
    let types: Vec<PayloadType> = o.payloads.iter().map(Payload::ty).collect();
    assert_eq!(
        types,
        [PayloadType::Gsa, PayloadType::Kd, PayloadType::Auth]
    );
    let (Payload::Gsa(gsa), Payload::Kd(kd)) = (&o.payloads[0], &o.payloads[1]) else {
        panic!("GSA, KD");
    };
    assert!(
        gsa.kek()
            .unwrap()
            .transform(TransformType::GcAuth)
            .is_none()
    );
    assert!(gsa.gw().unwrap().sender_id_bits.is_none());
    assert!(kd.member().is_none());
    for p in gsa.gsa_policies() {
        assert_eq!(p.attributes.key_lifetime, Some((LIFETIME - 200) as u32));
    }
    // SA keys under GSK_w of the current Rekey SA (KWK ID 0).
    for b in kd.group_bags() {
        assert!(b.sa_keys.iter().all(|k| k.kwk_id == 0 && k.key_id == 0));
    }
    assert!(deliver(&mut s.reader, &m, s.t0).unwrap().is_some());
}

#[test]
fn rekey_several_senders_need_unspecified_sequence_numbers() {
    // 4.4.2.1.3 (R079): a new multicast TEK of a group with several senders MUST carry
    // "32-bit Unspecified Numbers"; with a single sender "32-bit Sequential Numbers" is
    // what the GCKS should use (R077).
    let mut s = setup(signature(SignatureScheme::Ed25519), 211);
    assert!(s.g.policy.multiple_senders);
    let mut t = tek_cbc(&mut s.rng);
    t.sn = SnId::Seq32;
    let content = RekeyContent {
        teks: vec![&t],
        ..RekeyContent::default()
    };
    assert!(matches!(
        RekeySender::default().build(&mut s.g, &content, BUILT_AT, &mut s.rng),
        Err(RekeyBuildError::Violation(
            Violation::SequentialNumbersWithSeveralSenders
        ))
    ));
    s.g.policy.multiple_senders = false;
    let m = RekeySender::default()
        .build(&mut s.g, &content, BUILT_AT, &mut s.rng)
        .unwrap();
    assert!(deliver(&mut s.reader, &m, s.t0).unwrap().is_some());
}

#[test]
fn rekey_kwk_must_not_be_shorter_than_the_keys_it_carries() {
    // 3.1 (R052): a Rekey SA with KW_5649_128 must not carry 256-bit keys, whether the
    // group already has them or the rekey brings them.
    let mut s = setup(signature(SignatureScheme::Ed25519), 212);
    let short = RekeySuite::new(
        EncrAlg::AesCbc { key_len: 16 },
        Some(IntegAlg::HmacSha2_256_128),
        KeyWrapAlg::Kw5649_128,
    )
    .unwrap();
    s.g.rekey = Some(kek(&mut s.rng, short));
    let t = tek_gcm(&mut s.rng);
    let content = RekeyContent {
        teks: vec![&t],
        ..RekeyContent::default()
    };
    assert!(matches!(
        RekeySender::default().build(&mut s.g, &content, BUILT_AT, &mut s.rng),
        Err(RekeyBuildError::KwkTooShort(_))
    ));
    // With 128-bit keys only, KW_5649_128 is enough.
    s.g.teks.clear();
    let t = tek_cbc(&mut s.rng);
    assert_eq!(t.encr, Some(EncrAlg::AesCbc { key_len: 16 }));
    let content = RekeyContent {
        teks: vec![&t],
        ..RekeyContent::default()
    };
    assert!(
        RekeySender::default()
            .build(&mut s.g, &content, BUILT_AT, &mut s.rng)
            .is_ok()
    );
}

#[test]
fn rekey_kek_rollover_retires_the_old_rekey_sa_after_dtd() {
    let mut s = setup(signature(SignatureScheme::Ed25519), 220);
    let kek2 = kek(&mut s.rng, gcm_suite());
    let content = RekeyContent {
        new_kek: Some(&kek2),
        ..RekeyContent::default()
    };
    let m = RekeySender::default()
        .build(&mut s.g, &content, BUILT_AT, &mut s.rng)
        .unwrap();
    deliver(&mut s.reader, &m, s.t0).unwrap().unwrap();
    let kek1 = s.g.rekey.replace(kek2.clone()).unwrap();
    assert_eq!(s.reader.rekey_spis(), vec![kek1.spi, kek2.spi]);
    // DTD is 10 s: until then the old Rekey SA still works (2.4.1.4).
    assert_eq!(
        s.reader.poll_timeout(),
        Some(s.t0 + Duration::from_secs(10))
    );
    s.g.rekey = Some(kek1);
    let (old, _) = tek_rekey(&mut s, None);
    assert!(
        deliver(&mut s.reader, &old, s.t0 + Duration::from_secs(9))
            .unwrap()
            .is_some()
    );
    let (old2, _) = tek_rekey(&mut s, None);
    assert_eq!(
        deliver(&mut s.reader, &old2, s.t0 + Duration::from_secs(10)),
        Err(RekeyDrop::UnknownSpi)
    );
    assert_eq!(s.reader.rekey_spis(), vec![kek2.spi]);
    s.g.rekey = Some(kek2);
    let (m, _) = tek_rekey(&mut s, None);
    assert!(
        deliver(&mut s.reader, &m, s.t0 + Duration::from_secs(11))
            .unwrap()
            .is_some()
    );
}

#[test]
fn rekey_implicit_auth_has_no_auth_payload() {
    let mut s = setup(GroupAuth::Implicit, 230);
    let (m, _) = tek_rekey(&mut s, None);
    assert!(m.signed_octets.is_none());
    let o = open_all(&s.g, &m.datagrams);
    assert!(o.payloads.iter().all(|p| !matches!(p, Payload::Auth(_))));
    assert!(deliver(&mut s.reader, &m, s.t0).unwrap().is_some());

    // A signed message where the group is implicit: AUTH MUST NOT be there (2.4.1).
    let mut signer = GroupState {
        rekey: s.g.rekey.clone(),
        teks: Vec::new(),
        policy: s.g.policy,
        auth: signature(SignatureScheme::Ed25519),
    };
    let t = tek_gcm(&mut s.rng);
    let content = RekeyContent {
        teks: vec![&t],
        ..RekeyContent::default()
    };
    let signed = RekeySender::default()
        .build(&mut signer, &content, BUILT_AT, &mut s.rng)
        .unwrap();
    assert_eq!(
        deliver(&mut s.reader, &signed, s.t0),
        Err(RekeyDrop::AuthNotAllowed)
    );

    // And the converse: a signing group's member refuses an unsigned message.
    let mut s2 = setup(signature(SignatureScheme::Ed25519), 231);
    let mut implicit = GroupState {
        rekey: s2.g.rekey.clone(),
        teks: Vec::new(),
        policy: s2.g.policy,
        auth: GroupAuth::Implicit,
    };
    let unsigned = RekeySender::default()
        .build(&mut implicit, &content, BUILT_AT, &mut s2.rng)
        .unwrap();
    assert_eq!(
        deliver(&mut s2.reader, &unsigned, s2.t0),
        Err(RekeyDrop::AuthMissing)
    );
}

#[test]
fn rekey_delete_with_zero_gike_update_spi_excludes_member() {
    let mut s = setup(signature(SignatureScheme::Ed25519), 240);
    let tek_spi = s.g.teks[0].spi;
    let content = RekeyContent {
        deletes: vec![
            DeletePayload::child(ProtocolId::Esp, &[tek_spi]),
            DeletePayload::all_of(ProtocolId::GikeUpdate),
        ],
        ..RekeyContent::default()
    };
    let m = RekeySender::default()
        .build(&mut s.g, &content, BUILT_AT, &mut s.rng)
        .unwrap();
    let u = deliver(&mut s.reader, &m, s.t0).unwrap().unwrap();
    assert!(u.excluded);
    assert!(u.new_rekey.is_none() && u.teks.is_empty());
    assert_eq!(u.deletes.len(), 2);
    assert_eq!(u.deletes[0].child_spis().collect::<Vec<_>>(), vec![tek_spi]);
    assert!(s.reader.is_excluded());
    let (m, _) = tek_rekey(&mut s, None);
    assert_eq!(deliver(&mut s.reader, &m, s.t0), Err(RekeyDrop::Excluded));

    // Nothing at all to say is refused by the builder.
    assert!(matches!(
        RekeySender::default().build(&mut s.g, &RekeyContent::default(), BUILT_AT, &mut s.rng),
        Err(RekeyBuildError::Empty)
    ));
}

#[test]
fn rekey_new_auth_key_replaces_the_verifier() {
    let mut s = setup(signature(SignatureScheme::Ed25519), 250);
    let (next, pkcs8) = SigningKey::generate(SignatureScheme::Ed25519).unwrap();
    let next_pk = next.public_key();
    let t = tek_gcm(&mut s.rng);
    let content = RekeyContent {
        teks: vec![&t],
        new_auth_key: Some(&next_pk),
        ..RekeyContent::default()
    };
    // Announced in a message signed with the current key (2.4.1).
    let m = RekeySender::default()
        .build(&mut s.g, &content, BUILT_AT, &mut s.rng)
        .unwrap();
    assert!(
        deliver(&mut s.reader, &m, s.t0)
            .unwrap()
            .unwrap()
            .auth_key_changed
    );
    let old = std::mem::replace(&mut s.g.auth, GroupAuth::Signature(Box::new(next)));
    let (m, _) = tek_rekey(&mut s, None);
    assert!(deliver(&mut s.reader, &m, s.t0).unwrap().is_some());
    // The retired key no longer verifies.
    s.g.auth = old;
    let (m, _) = tek_rekey(&mut s, None);
    assert!(matches!(
        deliver(&mut s.reader, &m, s.t0),
        Err(RekeyDrop::BadSignature(_))
    ));
    drop(pkcs8);
}

#[test]
fn rekey_sender_without_sender_id_must_reregister() {
    let mut r = rng(260);
    let mut g = group(signature(SignatureScheme::Ed25519), &mut r);
    g.teks.remove(0); // no counter mode at registration: no Sender-ID
    let keys = register(
        &g,
        &MemberGrant {
            sender: true,
            ..MemberGrant::default()
        },
        Role::Sender { receives: false },
        0x23,
    );
    assert!(keys.sender_ids.is_empty());
    let t0 = Instant::now();
    let mut reader = RekeyReader::new(&keys, t0).unwrap();
    let t = tek_gcm(&mut r);
    let content = RekeyContent {
        teks: vec![&t],
        ..RekeyContent::default()
    };
    let m = RekeySender::default()
        .build(&mut g, &content, BUILT_AT, &mut r)
        .unwrap();
    let u = deliver(&mut reader, &m, t0).unwrap().unwrap();
    assert!(u.must_reregister);
    assert!(u.teks.is_empty(), "counter-mode SA not installed (2.4.1.4)");
}

#[test]
fn rekey_key_tree_exclusion_cuts_off_the_excluded_member() {
    // RFC 9838 Appendix A: A(1,3,7), E(2,5,11), F(2,5,12), G(2,6,13); exclude F.
    let key = |id: u32| LkhKey::new(id, SecretBytes::from_slice(&[id as u8 ^ 0xa5; 32]));
    let mut r = rng(270);
    let mut g = group(signature(SignatureScheme::Ed25519), &mut r);
    let t0 = Instant::now();
    let mut readers: Vec<(char, RekeyReader)> = [
        ('A', [1, 3, 7]),
        ('E', [2, 5, 11]),
        ('F', [2, 5, 12]),
        ('G', [2, 6, 13]),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (name, path))| {
        let grant = MemberGrant {
            wrap_keys: path.iter().map(|id| key(*id)).collect(),
            ..MemberGrant::default()
        };
        let keys = register(&g, &grant, Role::Receiver, 0x30 + i as u8);
        assert_eq!(keys.key_path.ids(), path.to_vec());
        (name, RekeyReader::new(&keys, t0).unwrap())
    })
    .collect();

    // Figure 26: KD(GP(SA3)(1{K_sa3},15{K_sa3}),MP(6{15},16{15},11{16})).
    let kek3 = kek(&mut r, gcm_suite());
    let content = RekeyContent {
        new_kek: Some(&kek3),
        lkh: Some(LkhRekey {
            kek_under: vec![key(1), key(15)],
            wrap_keys: vec![
                (key(15), Some(key(6))),
                (key(15), Some(key(16))),
                (key(16), Some(key(11))),
            ],
        }),
        ..RekeyContent::default()
    };
    let m = RekeySender::default()
        .build(&mut g, &content, BUILT_AT, &mut r)
        .unwrap();
    for (name, reader) in &mut readers {
        let got = deliver(reader, &m, t0);
        if *name == 'F' {
            assert_eq!(
                got,
                Err(RekeyDrop::Content(RegistrationError::KeyUnwrap(
                    KeyPathError::Unreachable
                )))
            );
        } else {
            let u = got.unwrap().unwrap();
            assert_eq!(u.new_rekey.unwrap().keys, kek3.keys().unwrap(), "{name}");
        }
    }
    let paths: Vec<Vec<u32>> = readers.iter().map(|(_, r)| r.key_path().ids()).collect();
    assert_eq!(paths[0], vec![1, 3, 7]);
    assert_eq!(paths[1], vec![15, 16, 11]);
    assert_eq!(paths[3], vec![15, 6, 13]);

    // The next message goes over SA3: F cannot even find the Rekey SA.
    g.rekey = Some(kek3);
    let t = tek_gcm(&mut r);
    let content = RekeyContent {
        teks: vec![&t],
        ..RekeyContent::default()
    };
    let m = RekeySender::default()
        .build(&mut g, &content, BUILT_AT, &mut r)
        .unwrap();
    for (name, reader) in &mut readers {
        let got = deliver(reader, &m, t0);
        if *name == 'F' {
            assert_eq!(got, Err(RekeyDrop::UnknownSpi));
        } else {
            assert_eq!(got.unwrap().unwrap().teks[0].keys, t.keys().unwrap());
        }
    }
}

#[test]
fn rekey_message_id_never_wraps() {
    let mut s = setup(GroupAuth::Implicit, 280);
    s.g.rekey.as_mut().unwrap().next_message_id = u32::MAX;
    let t = tek_gcm(&mut s.rng);
    let content = RekeyContent {
        teks: vec![&t],
        ..RekeyContent::default()
    };
    assert!(matches!(
        RekeySender::default().build(&mut s.g, &content, BUILT_AT, &mut s.rng),
        Err(RekeyBuildError::MessageIdsExhausted)
    ));
    assert_eq!(s.g.rekey.as_ref().unwrap().next_message_id, u32::MAX);
}

#[test]
fn rekey_reader_survives_garbage() {
    let mut s = setup(signature(SignatureScheme::Ed25519), 290);
    let (m, _) = tek_rekey(&mut s, None);
    let d = &m.datagrams[0];
    let mut r = rng(291);
    for len in [0, 1, 27, 28, 29, 40, d.len() - 1] {
        assert!(s.reader.handle(&d[..len], s.t0).is_err());
    }
    for _ in 0..200 {
        let mut junk = vec![0u8; (r.next_u64() % 600) as usize];
        r.fill(&mut junk);
        // Keep the real header now and then so that the SPI routes.
        if junk.len() > HEADER_LEN && r.next_u64().is_multiple_of(2) {
            junk[..HEADER_LEN].copy_from_slice(&d[..HEADER_LEN]);
            let len = junk.len() as u32;
            junk[24..28].copy_from_slice(&len.to_be_bytes());
        }
        assert!(s.reader.handle(&junk, s.t0).is_err());
    }
    assert!(s.reader.handle(d, s.t0).unwrap().is_some());
}

#[test]
fn rekey_auth_algorithm_identifier_must_match_gcauth() {
    // RFC 9838 4.4.2.1.1 (R072): the AlgorithmIdentifier in the AUTH payload must match the
    // GCAUTH transform's Signature Algorithm Identifier, even when the signature verifies
    // under some key: a member registered for ECDSA refuses an Ed25519-signed rekey.
    let mut s = setup(signature(SignatureScheme::EcdsaP256Sha256), 230);
    let mut other = GroupState {
        rekey: s.g.rekey.clone(),
        teks: Vec::new(),
        policy: s.g.policy,
        auth: signature(SignatureScheme::Ed25519),
    };
    let t = tek_gcm(&mut s.rng);
    let content = RekeyContent {
        teks: vec![&t],
        ..RekeyContent::default()
    };
    let m = RekeySender::default()
        .build(&mut other, &content, BUILT_AT, &mut s.rng)
        .unwrap();
    match deliver(&mut s.reader, &m, s.t0) {
        Err(RekeyDrop::BadSignature(e)) => {
            assert!(e.to_string().contains("AlgorithmIdentifier"), "{e}")
        }
        other => panic!("expected BadSignature, got {other:?}"),
    }
}
