//! Entry points for fuzzers and for the panic-freedom tests (STYLE R6): each takes
//! arbitrary bytes, must never panic on them, and asserts that whatever decodes
//! re-encodes to something that decodes to the same value.
//!
//! The seed builders give realistic messages (from the RFC 7296, RFC 7383 and RFC 9838
//! figures) for `fuzz/corpus/` and for tests.

use crate::codec::Codec;
use crate::registry::{
    AuthMethod, EncrId, ExchangeType, HashAlgorithm, IntegId, KeId, KwaId, NotifyType, PayloadType,
    PrfId, ProtocolId, SnId,
};
use crate::wire::delete::DeletePayload;
use crate::wire::header::{Flags, Header, classify_port_4500};
use crate::wire::message::{EncryptedKind, Message, encrypted_layout};
use crate::wire::payload::{Payload, decode_inner_chain, encode_inner};
use crate::wire::rules::{MESSAGE_RULES, check, check_outer};
use crate::wire::sk::{EncryptedFragment, EncryptedPayload};
use crate::wire::{
    AuthPayload, CertPayload, CertReqPayload, GsaPayload, IdPayload, KdPayload, KePayload,
    NoncePayload, NotifyPayload, Proposal, SaPayload, Transform,
};

/// Decodes `data` as an IKE message; if that works, re-encodes it and asserts that the
/// result decodes to the same message and re-encodes to the same bytes. Also runs the
/// header, port-4500, SK layout and rule-table code on the same input.
pub fn fuzz_message(data: &[u8]) {
    let _ = classify_port_4500(data);
    let _ = Header::read_datagram(data);
    let layout = encrypted_layout(data);
    let Ok(msg) = Message::decode(data) else {
        return;
    };
    match (msg.payloads.last(), &layout) {
        (Some(Payload::Sk(sk)), Ok(l)) => {
            assert_eq!(l.kind, EncryptedKind::Sk);
            assert_eq!(l.first_inner, sk.first_inner);
            assert_eq!(data.get(l.body.clone()), Some(sk.data.as_slice()));
        }
        (Some(Payload::Skf(f)), Ok(l)) => {
            assert_eq!(
                l.kind,
                EncryptedKind::Skf {
                    number: f.number(),
                    total: f.total()
                }
            );
            assert_eq!(data.get(l.body.clone()), Some(f.data.as_slice()));
        }
        (Some(Payload::Sk(_) | Payload::Skf(_)), Err(e)) => {
            panic!("message decodes with SK/SKF but its layout does not: {e}")
        }
        (_, l) => assert!(l.is_err(), "layout found without SK/SKF"),
    }
    let bytes = msg.encode();
    let again = Message::decode(&bytes).expect("a re-encoded message must decode");
    let mut expected = msg.clone();
    expected.header.length = again.header.length;
    assert_eq!(again, expected);
    assert_eq!(again.header.length as usize, bytes.len());
    assert_eq!(again.encode(), bytes, "encoding must be stable");
    let _ = check_outer(msg.header.exchange, msg.is_response(), &msg.payloads);
    let _ = check(msg.header.exchange, msg.is_response(), &msg.payloads);
}

/// Decodes `data` as a decrypted inner chain starting with payload type `first`; if that
/// works, asserts that it re-encodes to a chain that decodes to the same payloads, and
/// runs every rule table over it.
pub fn fuzz_payload_chain(first: u8, data: &[u8]) {
    let Ok(chain) = decode_inner_chain(PayloadType::from(first), data) else {
        return;
    };
    let (first_again, bytes) = encode_inner(&chain);
    if chain.is_empty() {
        assert_eq!(first_again, PayloadType::NoNext);
    } else {
        assert_eq!(first_again, PayloadType::from(first));
    }
    let again = decode_inner_chain(first_again, &bytes).expect("a re-encoded chain must decode");
    assert_eq!(again, chain);
    assert_eq!(encode_inner(&again).1, bytes, "encoding must be stable");
    for rule in MESSAGE_RULES {
        let _ = check(rule.exchange, rule.response, &chain);
    }
}

/// Splits a fuzzer input for [`fuzz_payload_chain`]: the first octet is the first
/// payload type, the rest the chain.
pub fn fuzz_payload_chain_input(data: &[u8]) {
    if let Some((first, rest)) = data.split_first() {
        fuzz_payload_chain(*first, rest);
    }
}

/// Decodes `data` as a GSA payload body (RFC 9838 4.4); if that works, asserts that it
/// re-encodes (in canonical attribute order) to bytes that decode to the same policies and
/// re-encode identically, and runs the structural rules for every exchange.
pub fn fuzz_gsa(data: &[u8]) {
    use crate::wire::gsa::PolicyContext;
    let Ok(gsa) = GsaPayload::read_bytes(data) else {
        return;
    };
    let bytes = gsa.to_bytes();
    let again = GsaPayload::read_bytes(&bytes).expect("a re-encoded GSA body must decode");
    assert_eq!(again, gsa);
    assert_eq!(again.to_bytes(), bytes, "encoding must be stable");
    for ctx in [
        PolicyContext::Registration,
        PolicyContext::Rekey,
        PolicyContext::InbandRekey,
    ] {
        let _ = gsa.validate(ctx);
    }
}

/// Decodes `data` as a KD payload body (RFC 9838 4.5) with the same round-trip assertions
/// as [`fuzz_gsa`], and runs the KD rules for every exchange.
pub fn fuzz_kd(data: &[u8]) {
    use crate::wire::gsa::PolicyContext;
    let Ok(kd) = KdPayload::read_bytes(data) else {
        return;
    };
    let bytes = kd.to_bytes();
    let again = KdPayload::read_bytes(&bytes).expect("a re-encoded KD body must decode");
    assert_eq!(again, kd);
    assert_eq!(again.to_bytes(), bytes, "encoding must be stable");
    for ctx in [
        PolicyContext::Registration,
        PolicyContext::Rekey,
        PolicyContext::InbandRekey,
    ] {
        let _ = kd.validate(ctx);
    }
}

/// Splits a fuzzer input into a GSA body and a KD body (the first two octets give the GSA
/// body's length), runs [`fuzz_gsa`] and [`fuzz_kd`] on them, and checks the pair with
/// `validate_gsa_kd` for every exchange.
pub fn fuzz_gsa_kd(data: &[u8]) {
    use crate::wire::gsa::PolicyContext;
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let (gsa, kd) = rest.split_at(usize::from(u16::from_be_bytes(*len)).min(rest.len()));
    fuzz_gsa(gsa);
    fuzz_kd(kd);
    if let (Ok(gsa), Ok(kd)) = (GsaPayload::read_bytes(gsa), KdPayload::read_bytes(kd)) {
        for ctx in [
            PolicyContext::Registration,
            PolicyContext::Rekey,
            PolicyContext::InbandRekey,
        ] {
            let _ = crate::wire::kd::validate_gsa_kd(&gsa, &kd, ctx);
        }
        // The member's reading of them, at registration and in GSA_INBAND_REKEY (RFC 9838
        // 2.3.3, 2.4.2.2): validation, unwrapping and key sizes, for both roles.
        use crate::group::{HeldSenderIds, Role, read_inband_rekey, read_registration};
        let kwk = fuzz_kwk();
        let held = HeldSenderIds {
            ids: vec![1],
            bits: Some(8),
        };
        for role in [Role::Receiver, Role::Sender { receives: true }] {
            let _ = read_registration(&gsa, &kd, &kwk, role);
            let _ = read_inband_rekey(&gsa, &kd, &kwk, role, &held);
        }
    }
}

/// The key wrap key [`fuzz_gsa_kd`] reads with, and [`seed_gsa_kd`]'s payloads are
/// wrapped under.
fn fuzz_kwk() -> crate::crypto::KeyWrapKey {
    crate::crypto::KeyWrapKey::new(crate::crypto::KeyWrapAlg::Kw5649_256, &[7; 32])
        .expect("a 32-octet KW-256 key")
}

/// Seeds for [`fuzz_gsa_kd`]: what the GCKS builds (`build_registration`,
/// `build_inband_rekey`) for a group with a multicast Rekey SA and an AES-GCM TEK
/// with several senders, for a receiver, a sender with Sender-IDs, an in-band member and
/// an in-band rekey, framed as the target reads them (two octets of GSA length, GSA body,
/// KD body) and wrapped with the key the target reads with.
pub fn seed_gsa_kd() -> Vec<(&'static str, Vec<u8>)> {
    use crate::crypto::{EncrAlg, KeyWrapAlg, SeededRandom};
    use crate::group::state::TekProtocol;
    use crate::group::{
        BuildContext, GroupAuth, GroupPolicy, GroupState, MemberGrant, RekeySaState, RekeySuite,
        TekState, build_inband_rekey, build_registration,
    };
    use crate::registry::SnId;
    use crate::wire::TrafficSelector;
    let mut rng = SeededRandom::from_u64(0x6a);
    let now = 1_000_000;
    let suite = RekeySuite::new(
        EncrAlg::AesGcm16 { key_len: 32 },
        None,
        KeyWrapAlg::Kw5649_256,
    )
    .expect("AES-GCM-256 with KW-256");
    let tek = TekState::generate(
        &mut rng,
        TekProtocol::Esp,
        TrafficSelector::any(false),
        TrafficSelector::single([239, 1, 1, 1].into(), 17, Some(5004)),
        Some(EncrAlg::AesGcm16 { key_len: 32 }),
        None,
        SnId::Unspecified32,
        now + 3600,
    )
    .expect("an AES-GCM TEK");
    let state = GroupState {
        rekey: Some(RekeySaState::generate(
            &mut rng,
            TrafficSelector::single([192, 0, 2, 1].into(), 17, Some(848)),
            TrafficSelector::single([239, 9, 9, 9].into(), 17, Some(848)),
            suite,
            now + 86_400,
        )),
        teks: vec![tek],
        policy: GroupPolicy {
            atd: Some(1),
            dtd: Some(4),
            sender_id_bits: Some(8),
            multiple_senders: true,
        },
        // Implicit: the seeds stay the same from run to run (a signing key would not).
        auth: GroupAuth::Implicit,
    };
    let (kwk, ctx) = (fuzz_kwk(), BuildContext { now });
    let frame = |(gsa, kd): (GsaPayload, KdPayload)| {
        let g = gsa.to_bytes();
        let mut v = (g.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(&g);
        v.extend_from_slice(&kd.to_bytes());
        v
    };
    let grant = |sender: bool, inband: bool| MemberGrant {
        sender,
        sender_ids: if sender { vec![1, 2] } else { Vec::new() },
        wrap_keys: Vec::new(),
        inband,
    };
    let built = |m: MemberGrant| frame(build_registration(&state, &m, &kwk, &ctx).expect("built"));
    vec![
        ("registration_receiver", built(grant(false, false))),
        ("registration_sender", built(grant(true, false))),
        ("registration_inband", built(grant(true, true))),
        (
            "inband_rekey",
            frame(build_inband_rekey(&state, true, &kwk, &ctx).expect("built")),
        ),
    ]
}

/// Drives a GCKS responder [`crate::ike::Endpoint`] with a sequence of datagrams (issue 3:
/// the responder state machine under arbitrary input). `data` is split into datagrams, each
/// prefixed by a two-octet length (the rest is the last datagram); the clock advances between
/// datagrams so timers fire; registration requests are refused. Must never panic.
pub fn fuzz_responder(data: &[u8], start: std::time::Instant) {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use crate::crypto::{IkeSuite, SecretBytes, SeededRandom};
    use crate::ike::{
        Decision, Endpoint, EndpointConfig, Event, IkeConfig, LocalAuth, PeerAuth, SinglePeer,
    };

    let Ok(suite) = IkeSuite::from_transforms(&ike_sa_init_sa().proposals[0].transforms) else {
        return;
    };
    let psk = SecretBytes::from_slice(b"fuzz");
    let Ok(id) = IdPayload::fqdn("gcks.fuzz") else {
        return;
    };
    let config = IkeConfig::new(
        vec![suite],
        id,
        LocalAuth::Psk(psk.clone()),
        Arc::new(SinglePeer {
            id: None,
            auth: PeerAuth::Psk(psk),
        }),
    );
    let mut rng = SeededRandom::from_u64(0x6675_7a7a);
    let local = SocketAddr::from(([10, 0, 0, 1], 500));
    let cfg = EndpointConfig {
        cookie_threshold: 4,
        cookie_threshold_per_ip: 2,
        ..Default::default()
    };
    let mut ep = Endpoint::new(config, cfg, local, start, &mut rng);
    let mut rest = data;
    let mut now = start;
    let mut i = 0u8;
    while !rest.is_empty() {
        let datagram = match rest.split_first_chunk::<2>() {
            Some((len, tail)) => {
                let n = usize::from(u16::from_be_bytes(*len)).min(tail.len());
                let (d, t) = tail.split_at(n);
                rest = t;
                d
            }
            None => std::mem::take(&mut rest),
        };
        // Sources and ports vary so that NAT traversal's moves (RFC 7296 2.23) are driven
        // too: four addresses, each from port 500 or a NAT's port to our 500 or 4500.
        let (port, to) = if i & 4 == 0 {
            (500, 500)
        } else {
            (61000, 4500)
        };
        let from = SocketAddr::from(([10, 0, 1, i % 4], port));
        i = i.wrapping_add(1);
        ep.handle_at(
            datagram,
            from,
            SocketAddr::new(local.ip(), to),
            now,
            &mut rng,
        );
        while let Some((h, e)) = ep.poll_event() {
            if matches!(e, Event::RegistrationRequested { .. }) {
                ep.decide(
                    h,
                    Decision::Refuse(NotifyType::AuthorizationFailed),
                    now,
                    &mut rng,
                );
            }
        }
        while ep.poll_datagram().is_some() {}
        now += Duration::from_secs(7);
        if ep.poll_timeout().is_some_and(|t| t <= now) {
            ep.handle_timeout(now, &mut rng);
        }
    }
}

/// Seeds for [`fuzz_responder`]: the registration IKE_SA_INIT request, alone, retransmitted,
/// and from several sources (enough to cross the fuzz endpoint's cookie thresholds).
pub fn seed_responder() -> Vec<(&'static str, Vec<u8>)> {
    let init = ike_sa_init_request().encode();
    let frame = |copies: usize| {
        let mut v = Vec::new();
        for _ in 0..copies {
            v.extend_from_slice(&(init.len() as u16).to_be_bytes());
            v.extend_from_slice(&init);
        }
        v
    };
    vec![
        ("init", frame(1)),
        ("init_retransmitted", frame(2)),
        ("init_flood", frame(6)),
    ]
}

const SPI_I: [u8; 8] = [0x5a, 0x3c, 0x11, 0x90, 0x0b, 0xee, 0x42, 0x07];
const SPI_R: [u8; 8] = [0xc4, 0x28, 0x7d, 0x01, 0x6f, 0x93, 0x2a, 0xb5];

fn n(p: NotifyPayload) -> Payload {
    Payload::Notify(p)
}

fn nonce(fill: u8) -> Payload {
    Payload::Nonce(NoncePayload::new(vec![fill; 32]).expect("32 is a valid nonce length"))
}

fn ike_sa_init_sa() -> SaPayload {
    SaPayload::new(vec![Proposal::new(
        1,
        ProtocolId::Ike,
        Vec::new(),
        vec![
            Transform::encr(EncrId::AesGcm16, Some(256)),
            Transform::prf(PrfId::HmacSha2_256),
            Transform::ke(KeId::Curve25519),
            Transform::kwa(KwaId::Kw5649_256),
        ],
    )])
}

/// The IKE_SA_INIT request of a G-IKEv2 registration (RFC 7296 1.2; RFC 9838 2.3.3):
/// `HDR, SA(AES-GCM-16-256, PRF-HMAC-SHA2-256, Curve25519, KW_5649_256), KE, Ni,
/// N(NAT_DETECTION_SOURCE_IP), N(NAT_DETECTION_DESTINATION_IP),
/// N(IKEV2_FRAGMENTATION_SUPPORTED), N(SIGNATURE_HASH_ALGORITHMS)`.
pub fn ike_sa_init_request() -> Message {
    Message::new(
        Header::new(
            SPI_I,
            [0; 8],
            ExchangeType::IkeSaInit,
            Flags::new(true, false),
            0,
        ),
        vec![
            Payload::Sa(ike_sa_init_sa()),
            Payload::Ke(KePayload::new(KeId::Curve25519, vec![0x85; 32])),
            nonce(0xa1),
            n(NotifyPayload::nat_detection_source_ip([0x11; 20])),
            n(NotifyPayload::nat_detection_destination_ip([0x22; 20])),
            n(NotifyPayload::ikev2_fragmentation_supported()),
            n(NotifyPayload::signature_hash_algorithms(&[
                HashAlgorithm::Sha2_256,
                HashAlgorithm::Identity,
            ])),
        ],
    )
}

/// Every seed message as (file name, encoded bytes).
pub fn seed_messages() -> Vec<(&'static str, Vec<u8>)> {
    let init_resp = Message::new(
        Header::new(
            SPI_I,
            SPI_R,
            ExchangeType::IkeSaInit,
            Flags::new(false, true),
            0,
        ),
        vec![
            Payload::Sa(ike_sa_init_sa()),
            Payload::Ke(KePayload::new(KeId::Curve25519, vec![0x96; 32])),
            nonce(0xb2),
            Payload::CertReq(CertReqPayload::x509(&[[0x33; 20]])),
            n(NotifyPayload::nat_detection_source_ip([0x44; 20])),
            n(NotifyPayload::nat_detection_destination_ip([0x55; 20])),
            n(NotifyPayload::ikev2_fragmentation_supported()),
            n(NotifyPayload::intermediate_exchange_supported()),
        ],
    );
    let cookie = NotifyPayload::cookie(&[0xc0; 16]).expect("16 is a valid cookie length");
    let cookie_resp = Message::new(
        Header::new(
            SPI_I,
            [0; 8],
            ExchangeType::IkeSaInit,
            Flags::new(false, true),
            0,
        ),
        vec![n(cookie.clone())],
    );
    let mut retry = ike_sa_init_request();
    retry.payloads.insert(0, n(cookie));
    let invalid_ke = Message::new(
        Header::new(
            SPI_I,
            [0; 8],
            ExchangeType::IkeSaInit,
            Flags::new(false, true),
            0,
        ),
        vec![n(NotifyPayload::invalid_ke_payload(KeId::MlKem768))],
    );
    let sk = |ex, flags, mid, first, len| {
        Message::new(
            Header::new(SPI_I, SPI_R, ex, flags, mid),
            vec![Payload::Sk(EncryptedPayload::new(first, vec![0x5e; len]))],
        )
        .encode()
    };
    let frag = |number, total, first, len| {
        let mut h = Header::new(
            [0; 8],
            [0; 8],
            ExchangeType::GsaRekey,
            Flags::new(true, false),
            7,
        );
        h.set_rekey_spi(&[0x7a; 16]);
        Message::new(
            h,
            vec![Payload::Skf(
                EncryptedFragment::new(first, number, total, vec![0x6f; len])
                    .expect("valid fragment numbers"),
            )],
        )
        .encode()
    };
    let plain_info = Message::new(
        Header::new(
            SPI_I,
            SPI_R,
            ExchangeType::Informational,
            Flags::new(false, true),
            3,
        ),
        vec![n(NotifyPayload::error(NotifyType::InvalidIkeSpi))],
    );
    vec![
        ("ike_sa_init_request", ike_sa_init_request().encode()),
        ("ike_sa_init_response", init_resp.encode()),
        ("ike_sa_init_cookie_response", cookie_resp.encode()),
        ("ike_sa_init_cookie_retry", retry.encode()),
        ("ike_sa_init_invalid_ke", invalid_ke.encode()),
        (
            "gsa_auth_request",
            sk(
                ExchangeType::GsaAuth,
                Flags::new(true, false),
                1,
                PayloadType::IdI,
                200,
            ),
        ),
        (
            "gsa_auth_response",
            sk(
                ExchangeType::GsaAuth,
                Flags::new(false, true),
                1,
                PayloadType::IdR,
                400,
            ),
        ),
        (
            "gsa_registration_request",
            sk(
                ExchangeType::GsaRegistration,
                Flags::new(true, false),
                2,
                PayloadType::IdG,
                64,
            ),
        ),
        (
            "ike_intermediate_request",
            sk(
                ExchangeType::IkeIntermediate,
                Flags::new(true, false),
                1,
                PayloadType::Ke,
                1216,
            ),
        ),
        (
            "gsa_rekey",
            sk(
                ExchangeType::GsaRekey,
                Flags::new(true, false),
                5,
                PayloadType::Gsa,
                300,
            ),
        ),
        ("gsa_rekey_fragment_1", frag(1, 2, PayloadType::Gsa, 500)),
        ("gsa_rekey_fragment_2", frag(2, 2, PayloadType::NoNext, 120)),
        (
            "informational_empty_response",
            sk(
                ExchangeType::Informational,
                Flags::new(false, true),
                4,
                PayloadType::NoNext,
                32,
            ),
        ),
        ("informational_plain_invalid_spi", plain_info.encode()),
    ]
}

/// Every seed inner chain as (file name, first payload type octet followed by the chain).
pub fn seed_inner_chains() -> Vec<(&'static str, Vec<u8>)> {
    let sag = SaPayload::new(vec![
        Proposal::new(
            1,
            ProtocolId::GikeUpdate,
            Vec::new(),
            vec![
                Transform::encr(EncrId::AesGcm16, Some(256)),
                Transform::kwa(KwaId::Kw5649_256),
            ],
        ),
        Proposal::new(
            1,
            ProtocolId::Esp,
            Vec::new(),
            vec![
                Transform::encr(EncrId::AesGcm16, Some(128)),
                Transform::integ(IntegId::None),
                Transform::sn(SnId::Unspecified32),
            ],
        ),
    ]);
    let gsa = || GsaPayload::read_bytes(&[]).expect("an empty GSA body decodes");
    let kd = || KdPayload::read_bytes(&[]).expect("an empty KD body decodes");
    let sig = || AuthPayload::new(AuthMethod::DigitalSignature, vec![0x30; 80]);
    let chains: Vec<(&'static str, Vec<Payload>)> = vec![
        (
            "gsa_auth_request",
            vec![
                Payload::IdI(IdPayload::fqdn("gm1.example.com").expect("valid FQDN")),
                Payload::Cert(CertPayload::x509(vec![0x30, 0x82, 0x01, 0x0a])),
                Payload::CertReq(CertReqPayload::x509(&[[0x33; 20]])),
                Payload::Auth(sig()),
                Payload::IdG(IdPayload::key_id(b"group-239.1.1.1".to_vec())),
                Payload::Sa(sag),
                n(NotifyPayload::group_sender(2)),
            ],
        ),
        (
            "gsa_auth_response",
            vec![
                Payload::IdR(IdPayload::fqdn("gcks.example.com").expect("valid FQDN")),
                Payload::Auth(sig()),
                Payload::Gsa(gsa()),
                Payload::Kd(kd()),
                n(NotifyPayload::use_transport_mode()),
            ],
        ),
        (
            "gsa_auth_error",
            vec![
                Payload::IdR(IdPayload::fqdn("gcks.example.com").expect("valid FQDN")),
                Payload::Auth(sig()),
                n(NotifyPayload::error(NotifyType::AuthorizationFailed)),
            ],
        ),
        (
            "gsa_registration_leave",
            vec![
                Payload::IdG(IdPayload::key_id(b"group-239.1.1.1".to_vec())),
                n(NotifyPayload::error(NotifyType::RegistrationFailed)),
            ],
        ),
        (
            "gsa_rekey",
            vec![
                Payload::Gsa(gsa()),
                Payload::Kd(kd()),
                Payload::Delete(DeletePayload::child(ProtocolId::Esp, &[0x1234_5678])),
                Payload::Auth(sig()),
            ],
        ),
        (
            "gsa_rekey_exclusion",
            vec![
                Payload::Delete(DeletePayload::all_of(ProtocolId::Esp)),
                Payload::Delete(DeletePayload::all_of(ProtocolId::GikeUpdate)),
                Payload::Delete(DeletePayload::whole_group()),
            ],
        ),
        (
            "ike_intermediate_mlkem",
            vec![Payload::Ke(KePayload::new(
                KeId::MlKem768,
                vec![0x4d; 1184],
            ))],
        ),
        ("empty", Vec::new()),
    ];
    chains
        .into_iter()
        .map(|(name, chain)| {
            let (first, bytes) = encode_inner(&chain);
            let mut v = vec![first.value()];
            v.extend_from_slice(&bytes);
            (name, v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_survive_their_own_fuzzers() {
        for (name, m) in seed_messages() {
            let msg = Message::decode(&m).unwrap_or_else(|e| panic!("{name}: {e}"));
            fuzz_message(&m);
            let protection = check_outer(msg.header.exchange, msg.is_response(), &msg.payloads);
            assert!(protection.is_ok(), "{name}: {protection:?}");
        }
        for (name, c) in seed_inner_chains() {
            let (first, rest) = c.split_first().unwrap();
            assert!(
                decode_inner_chain(PayloadType::from(*first), rest).is_ok(),
                "{name}"
            );
            fuzz_payload_chain_input(&c);
        }
    }
}
