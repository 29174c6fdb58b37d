//! Whole IKE conversations in memory (STYLE Q5): a member (initiator) and a GCKS
//! (responder) exchange datagrams through a simulated wire with a simulated clock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gikev2_proto::crypto::sign::{SignatureScheme, SigningKey};
use gikev2_proto::crypto::{IkeSuite, SecretBytes, SeededRandom};
use gikev2_proto::ike::{
    CloseReason, Decision, Event, Goal, IkeConfig, IkeSa, InitRefusal, LocalAuth, PeerAuth,
    RegistrationRequest, SinglePeer,
};
use gikev2_proto::registry::{
    EncrId, ExchangeType, IntegId, KeId, KwaId, NotifyType, PrfId, ProtocolId, TransformType,
};
use gikev2_proto::wire::gsa::{GsaPayload, GsaPolicy};
use gikev2_proto::wire::header::Header;
use gikev2_proto::wire::id::IdPayload;
use gikev2_proto::wire::kd::{GroupKeyBag, KdPayload, WrappedKey};
use gikev2_proto::wire::{Message, TrafficSelector, Transform};

fn suite(ke: KeId, addke: Option<KeId>) -> IkeSuite {
    let mut t = vec![
        Transform::encr(EncrId::AesGcm16, Some(256)),
        Transform::prf(PrfId::HmacSha2_256),
        Transform::ke(ke),
    ];
    if let Some(a) = addke {
        t.push(Transform::new(TransformType::AddKe1, a.value()));
    }
    t.push(Transform::kwa(KwaId::Kw5649_256));
    IkeSuite::from_transforms(&t).unwrap()
}

fn cbc_suite() -> IkeSuite {
    IkeSuite::from_transforms(&[
        Transform::encr(EncrId::AesCbc, Some(128)),
        Transform::prf(PrfId::HmacSha2_256),
        Transform::integ(IntegId::HmacSha2_256_128),
        Transform::ke(KeId::Ecp256),
        Transform::kwa(KwaId::Kw5649_128),
    ])
    .unwrap()
}

fn member_id() -> IdPayload {
    IdPayload::fqdn("member1.example").unwrap()
}

fn gcks_id() -> IdPayload {
    IdPayload::fqdn("gcks.example").unwrap()
}

fn psk(s: &str) -> SecretBytes {
    SecretBytes::from_slice(s.as_bytes())
}

fn psk_configs(member_psk: &str, gcks_psk: &str, suites: Vec<IkeSuite>) -> (IkeConfig, IkeConfig) {
    let m = IkeConfig::new(
        suites.clone(),
        member_id(),
        LocalAuth::Psk(psk(member_psk)),
        Arc::new(SinglePeer {
            id: Some(gcks_id()),
            auth: PeerAuth::Psk(psk(member_psk)),
        }),
    );
    let g = IkeConfig::new(
        suites,
        gcks_id(),
        LocalAuth::Psk(psk(gcks_psk)),
        Arc::new(SinglePeer {
            id: Some(member_id()),
            auth: PeerAuth::Psk(psk(gcks_psk)),
        }),
    );
    (m, g)
}

/// A configuration authenticating with `key` (RFC 7427 Digital Signature) and accepting a
/// peer that proves `peer_key` with `scheme` (pinned to `peer_id` when given).
fn sig_config(
    id: IdPayload,
    key: SigningKey,
    peer_id: Option<IdPayload>,
    peer_key: gikev2_proto::crypto::sign::PublicKey,
    scheme: SignatureScheme,
) -> IkeConfig {
    IkeConfig::new(
        vec![suite(KeId::Curve25519, None)],
        id,
        LocalAuth::Signature {
            key: Arc::new(key),
            certs: vec![],
        },
        Arc::new(SinglePeer {
            id: peer_id,
            auth: PeerAuth::PublicKey {
                key: peer_key,
                schemes: vec![scheme],
            },
        }),
    )
}

fn group() -> IdPayload {
    IdPayload::key_id(b"group-1".to_vec())
}

fn request(sender: Option<u32>) -> RegistrationRequest {
    RegistrationRequest {
        group: group(),
        sag: None,
        sender_ids: sender,
    }
}

fn sample_gsa(teks: usize) -> GsaPayload {
    let mut gsa = GsaPayload::new();
    for i in 0..teks {
        gsa = gsa.with_gsa(
            GsaPolicy::esp(
                0x1000 + i as u32,
                TrafficSelector::any(false),
                TrafficSelector::single("239.1.1.1".parse().unwrap(), 17, Some(5000 + i as u16)),
            )
            .with_transform(Transform::encr(EncrId::AesGcm16, Some(256)))
            .with_transform(Transform::sn(gikev2_proto::registry::SnId::Unspecified32)),
        );
    }
    gsa
}

/// Wraps a fresh TEK key for each policy with the IKE SA's default KWK.
fn sample_kd(sa: &IkeSa, teks: usize) -> KdPayload {
    let kwk = sa.key_wrap_key().unwrap();
    let mut kd = KdPayload::new();
    for i in 0..teks {
        let keymat = [i as u8; 36];
        kd = kd.with(
            GroupKeyBag::esp(0x1000 + i as u32).with_sa_key(WrappedKey::new(
                0,
                0,
                kwk.wrap(&keymat).unwrap(),
            )),
        );
    }
    kd
}

/// How the test GCKS answers registration requests.
type Decider = Box<dyn FnMut(&IkeSa, &RegistrationRequest) -> Decision>;

/// One GCKS, one member, a wire that can lose datagrams, and a clock.
struct Pair {
    now: Instant,
    member: IkeSa,
    gcks: Option<IkeSa>,
    gcks_config: IkeConfig,
    rng: SeededRandom,
    member_events: Vec<Event>,
    gcks_events: Vec<Event>,
    /// Datagrams seen on the wire in each direction (member -> gcks, gcks -> member).
    to_gcks: Vec<Vec<u8>>,
    to_member: Vec<Vec<u8>>,
    /// Drop the next n datagrams sent by the GCKS.
    drop_from_gcks: usize,
    /// What the GCKS decides when asked.
    decision: Decider,
    /// The GCKS's IKE SA keys just before it read the first GSA_AUTH or IKE_AUTH request
    /// (after any IKE_INTERMEDIATE; before a PPK is mixed in, RFC 8784 3).
    keys_before_auth: Option<gikev2_proto::crypto::IkeKeys>,
}

const MEMBER: &str = "10.0.0.2:500";
const GCKS: &str = "10.0.0.1:500";

impl Pair {
    fn new(member_cfg: IkeConfig, gcks_cfg: IkeConfig, goal: Goal) -> Self {
        let now = Instant::now();
        let mut rng = SeededRandom::from_u64(7);
        let member = IkeSa::initiate(
            member_cfg,
            goal,
            MEMBER.parse::<SocketAddr>().unwrap(),
            GCKS.parse().unwrap(),
            now,
            &mut rng,
        )
        .unwrap();
        Self {
            now,
            member,
            gcks: None,
            gcks_config: gcks_cfg,
            rng,
            member_events: Vec::new(),
            gcks_events: Vec::new(),
            to_gcks: Vec::new(),
            to_member: Vec::new(),
            drop_from_gcks: 0,
            keys_before_auth: None,
            decision: Box::new(|sa, _| Decision::Accept {
                gsa: sample_gsa(2),
                kd: sample_kd(sa, 2),
                transport_mode: true,
            }),
        }
    }

    /// Steps both sides until nothing moves and no timer is due (bounded).
    fn drive(&mut self) {
        for _ in 0..200 {
            let mut moved = false;
            while let Some(d) = self.member.poll_transmit() {
                moved = true;
                self.to_gcks.push(d.clone());
                match self.gcks.as_mut() {
                    Some(g) => {
                        let ex = Header::read_datagram(&d).map(|h| h.exchange);
                        if self.keys_before_auth.is_none()
                            && matches!(ex, Ok(ExchangeType::GsaAuth | ExchangeType::IkeAuth))
                        {
                            self.keys_before_auth = g.keys().cloned();
                        }
                        g.handle(&d, self.now, &mut self.rng)
                    }
                    None => match IkeSa::respond(
                        self.gcks_config.clone(),
                        &d,
                        GCKS.parse().unwrap(),
                        MEMBER.parse().unwrap(),
                        self.now,
                        &mut self.rng,
                    ) {
                        Ok(sa) => self.gcks = Some(sa),
                        Err(InitRefusal::Reply(r)) => {
                            self.to_member.push(r.clone());
                            self.member.handle(&r, self.now, &mut self.rng);
                        }
                        Err(InitRefusal::Drop) => {}
                    },
                }
            }
            if let Some(g) = self.gcks.as_mut() {
                while let Some(d) = g.poll_transmit() {
                    moved = true;
                    if self.drop_from_gcks > 0 {
                        self.drop_from_gcks -= 1;
                        continue;
                    }
                    self.to_member.push(d.clone());
                    self.member.handle(&d, self.now, &mut self.rng);
                }
                while let Some(e) = g.poll_event() {
                    moved = true;
                    if let Event::RegistrationRequested { request, .. } = &e {
                        let d = (self.decision)(g, request);
                        self.gcks_events.push(e.clone());
                        g.decide(d, self.now, &mut self.rng);
                    } else {
                        self.gcks_events.push(e);
                    }
                }
            }
            while let Some(e) = self.member.poll_event() {
                moved = true;
                self.member_events.push(e);
            }
            if !moved {
                // Jump the clock to the next timer, if any, like quinn's Pair::drive.
                let next = [
                    self.member.poll_timeout(),
                    self.gcks.as_ref().and_then(IkeSa::poll_timeout),
                ]
                .into_iter()
                .flatten()
                .min();
                match next {
                    Some(t) if t <= self.now + Duration::from_secs(600) => {
                        self.now = self.now.max(t);
                        self.member.handle_timeout(self.now, &mut self.rng);
                        if let Some(g) = self.gcks.as_mut() {
                            g.handle_timeout(self.now, &mut self.rng);
                        }
                    }
                    _ => return,
                }
                if self.member.is_closed() && self.gcks.as_ref().is_none_or(IkeSa::is_closed) {
                    return;
                }
                if self.member.is_established() && self.member.poll_timeout().is_none() {
                    return;
                }
            }
        }
        panic!("conversation did not settle");
    }

    fn gcks(&self) -> &IkeSa {
        self.gcks.as_ref().expect("GCKS created an IKE SA")
    }
}

/// Both sides closed the IKE SA with AUTHENTICATION_FAILED (`what` names the case).
fn assert_both_closed_authentication_failed(p: &Pair, what: &str) {
    let failed = Event::Closed(CloseReason::AuthenticationFailed);
    assert!(
        p.gcks_events.contains(&failed),
        "{what}: {:?}",
        p.gcks_events
    );
    assert!(
        p.member_events.contains(&failed),
        "{what}: {:?}",
        p.member_events
    );
}

/// The notifies of a message: type and data, in order.
fn notifies_of(payloads: &[gikev2_proto::wire::payload::Payload]) -> Vec<(NotifyType, Vec<u8>)> {
    use gikev2_proto::wire::payload::Payload;
    payloads
        .iter()
        .filter_map(|x| match x {
            Payload::Notify(n) => Some((n.ty, n.data.clone())),
            _ => None,
        })
        .collect()
}

/// The payload types of a message in order, notifies as `N(TYPE)`.
fn payload_order(payloads: &[gikev2_proto::wire::payload::Payload]) -> Vec<String> {
    use gikev2_proto::wire::payload::Payload;
    payloads
        .iter()
        .map(|x| match x {
            Payload::Notify(n) => format!("N({})", n.ty),
            other => other.ty().to_string(),
        })
        .collect()
}

fn registered(events: &[Event]) -> Vec<(GsaPayload, KdPayload, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Registered {
                gsa,
                kd,
                transport_mode,
                ..
            } => Some((gsa.clone(), kd.clone(), *transport_mode)),
            _ => None,
        })
        .collect()
}

fn exchanges(wire: &[Vec<u8>]) -> Vec<ExchangeType> {
    wire.iter()
        .map(|d| Header::read_datagram(d).unwrap().exchange)
        .collect()
}

#[test]
fn psk_childless_ike_auth_establishes_both_sides() {
    let (m, g) = psk_configs("s3cret", "s3cret", vec![suite(KeId::Curve25519, None)]);
    let mut p = Pair::new(m, g, Goal::IkeAuth);
    p.drive();
    assert!(p.member.is_established());
    assert!(p.gcks().is_established());
    assert_eq!(p.member.peer_id(), Some(&gcks_id()));
    assert_eq!(p.gcks().peer_id(), Some(&member_id()));
    assert_eq!(
        exchanges(&p.to_gcks),
        [ExchangeType::IkeSaInit, ExchangeType::IkeAuth]
    );
    assert_eq!(
        p.member.keys(),
        p.gcks().keys(),
        "both sides derived the same keys"
    );
}

/// RFC 6023 3: "A supporting responder MUST include the Notify payload ... within the
/// IKE_SA_INIT response", also when the initiator did not announce support (strongSwan
/// initiators do not).
#[test]
fn responder_announces_childless_support_unasked() {
    let (mut m, g) = psk_configs("s3cret", "s3cret", vec![suite(KeId::Curve25519, None)]);
    m.childless = false;
    let mut p = Pair::new(m, g, Goal::IkeAuth);
    p.drive();
    let childless = |d: &[u8]| {
        Message::decode(d)
            .unwrap()
            .notify(NotifyType::ChildlessIkev2Supported)
            .is_some()
    };
    assert!(
        !childless(&p.to_gcks[0]),
        "the initiator did not announce it"
    );
    assert!(
        childless(&p.to_member[0]),
        "the responder announces it anyway"
    );
    assert!(p.member.is_established());
    assert!(p.gcks().is_established());
}

/// RFC 6023 3: "The initiator MUST NOT send the modified IKE_AUTH request if the
/// notification was not present." (charon with `childless = never` answers such a request
/// with IDr, AUTH and INVALID_SYNTAX and keeps no IKE SA: we must not get that far.)
#[test]
fn no_childless_ike_auth_without_the_responders_announcement() {
    let (m, mut g) = psk_configs("s3cret", "s3cret", vec![suite(KeId::Curve25519, None)]);
    g.childless = false;
    let mut p = Pair::new(m, g, Goal::IkeAuth);
    p.drive();
    assert!(p.member.is_closed());
    assert!(
        matches!(
            p.member_events.as_slice(),
            [Event::Closed(CloseReason::ProtocolError(_))]
        ),
        "{:?}",
        p.member_events
    );
    assert_eq!(exchanges(&p.to_gcks), [ExchangeType::IkeSaInit]);
}

#[test]
fn gsa_auth_registers_and_member_receives_exactly_what_gcks_sent() {
    let (m, g) = psk_configs("s3cret", "s3cret", vec![suite(KeId::Curve25519, None)]);
    let mut p = Pair::new(m, g, Goal::GsaAuth(request(Some(2))));
    p.drive();
    let got = registered(&p.member_events);
    assert_eq!(got.len(), 1);
    let (gsa, kd, transport) = &got[0];
    assert_eq!(gsa, &sample_gsa(2));
    assert!(transport);
    // The member unwraps the TEK keys with its own copy of the default KWK.
    let kwk = p.member.key_wrap_key().unwrap();
    for (i, bag) in kd.group_bags().enumerate() {
        let wrapped = bag.sa_keys.first().unwrap();
        assert_eq!(
            kwk.unwrap(&wrapped.encrypted).unwrap().as_bytes(),
            &[i as u8; 36]
        );
    }
    // The GCKS saw the GROUP_SENDER count.
    let asked = p.gcks_events.iter().find_map(|e| match e {
        Event::RegistrationRequested {
            request, peer_id, ..
        } => Some((request.clone(), peer_id.clone())),
        _ => None,
    });
    assert_eq!(asked, Some((request(Some(2)), member_id())));
}

/// RFC 7296 2.21.2: a member that cannot authenticate the GCKS (here: not the identity
/// it expects) tells it with AUTHENTICATION_FAILED in an INFORMATIONAL exchange, so the
/// GCKS, which had already admitted it, closes the IKE SA knowing why.
#[test]
fn a_member_refusing_the_gcks_tells_it_with_authentication_failed() {
    let (mut m, g) = psk_configs("s3cret", "s3cret", vec![suite(KeId::Curve25519, None)]);
    m.remote_id = Some(IdPayload::fqdn("another-gcks.example").unwrap());
    let mut p = Pair::new(m, g, Goal::GsaAuth(request(None)));
    p.drive();
    assert!(registered(&p.member_events).is_empty());
    assert!(
        p.member_events
            .contains(&Event::Closed(CloseReason::ResponderNotVerified))
    );
    // The GCKS had decided (and answered) before the member refused it.
    assert!(
        p.gcks_events
            .iter()
            .any(|e| matches!(e, Event::RegistrationRequested { .. }))
    );
    assert!(
        p.gcks_events
            .contains(&Event::Closed(CloseReason::PeerError(
                NotifyType::AuthenticationFailed
            )))
    );
    assert!(p.gcks().is_closed());
    let info = exchanges(&p.to_gcks)
        .into_iter()
        .filter(|e| *e == ExchangeType::Informational)
        .count();
    assert_eq!(info, 1, "one INFORMATIONAL request from the member");
}

#[test]
fn wrong_psk_fails_authentication_on_both_sides() {
    let (m, g) = psk_configs(
        "member-thinks",
        "gcks-thinks",
        vec![suite(KeId::Curve25519, None)],
    );
    let mut p = Pair::new(m, g, Goal::GsaAuth(request(None)));
    p.drive();
    assert_both_closed_authentication_failed(&p, "");
    assert!(registered(&p.member_events).is_empty());
    assert!(
        !p.gcks_events
            .iter()
            .any(|e| matches!(e, Event::RegistrationRequested { .. }))
    );
}

#[test]
fn refusal_reaches_the_member_with_its_notify() {
    let (m, g) = psk_configs("k", "k", vec![suite(KeId::Curve25519, None)]);
    let mut p = Pair::new(m, g, Goal::GsaAuth(request(None)));
    p.decision = Box::new(|_, _| Decision::Refuse(NotifyType::InvalidGroupId));
    p.drive();
    assert!(
        p.member.is_established(),
        "Figure 5: the IKE SA is authenticated"
    );
    assert!(p.member_events.contains(&Event::RegistrationRefused {
        group: group(),
        notify: NotifyType::InvalidGroupId
    }));
}

#[test]
fn ed25519_signatures_authenticate_both_sides() {
    let (mk, _) = SigningKey::generate(SignatureScheme::Ed25519).unwrap();
    let (gk, _) = SigningKey::generate(SignatureScheme::Ed25519).unwrap();
    let (mk_pub, gk_pub) = (mk.public_key(), gk.public_key());
    let m = sig_config(
        member_id(),
        mk,
        Some(gcks_id()),
        gk_pub,
        SignatureScheme::Ed25519,
    );
    let g = sig_config(
        gcks_id(),
        gk,
        Some(member_id()),
        mk_pub,
        SignatureScheme::Ed25519,
    );
    let mut p = Pair::new(m, g, Goal::GsaAuth(request(None)));
    p.drive();
    assert_eq!(registered(&p.member_events).len(), 1);
}

#[test]
fn ml_dsa_65_signature_from_an_unexpected_key_is_refused() {
    let (mk, _) = SigningKey::generate(SignatureScheme::MlDsa65).unwrap();
    let (other, _) = SigningKey::generate(SignatureScheme::MlDsa65).unwrap();
    let (gk, _) = SigningKey::generate(SignatureScheme::EcdsaP256Sha256).unwrap();
    let gk_pub = gk.public_key();
    let m = sig_config(
        member_id(),
        mk,
        None,
        gk_pub,
        SignatureScheme::EcdsaP256Sha256,
    );
    // The GCKS expects another ML-DSA key than the one the member signs with.
    let g = sig_config(
        gcks_id(),
        gk,
        None,
        other.public_key(),
        SignatureScheme::MlDsa65,
    );
    let mut p = Pair::new(m, g, Goal::IkeAuth);
    p.drive();
    assert_both_closed_authentication_failed(&p, "");
}

#[test]
fn hybrid_x25519_ml_kem_768_uses_ike_intermediate() {
    let (m, g) = psk_configs(
        "k",
        "k",
        vec![suite(KeId::Curve25519, Some(KeId::MlKem768))],
    );
    let mut p = Pair::new(m, g, Goal::GsaAuth(request(None)));
    p.drive();
    assert_eq!(registered(&p.member_events).len(), 1);
    assert_eq!(
        exchanges(&p.to_gcks),
        [
            ExchangeType::IkeSaInit,
            ExchangeType::IkeIntermediate,
            ExchangeType::GsaAuth
        ]
    );
    assert_eq!(p.member.keys(), p.gcks().keys());
}

#[test]
fn invalid_ke_payload_makes_the_initiator_retry_with_the_requested_method() {
    let (m, _) = psk_configs("k", "k", vec![suite(KeId::Curve25519, None), cbc_suite()]);
    let (_, g) = psk_configs("k", "k", vec![cbc_suite()]);
    let mut p = Pair::new(m, g, Goal::IkeAuth);
    p.drive();
    assert!(p.member.is_established());
    assert_eq!(p.member.suite(), Some(&cbc_suite()));
    assert_eq!(
        exchanges(&p.to_gcks),
        [
            ExchangeType::IkeSaInit,
            ExchangeType::IkeSaInit,
            ExchangeType::IkeAuth
        ]
    );
}

#[test]
fn no_common_proposal_closes_the_initiator() {
    let (m, _) = psk_configs("k", "k", vec![suite(KeId::Curve25519, None)]);
    let (_, g) = psk_configs("k", "k", vec![cbc_suite()]);
    let mut p = Pair::new(m, g, Goal::IkeAuth);
    // AES-GCM suites only on one side, AES-CBC only on the other: INVALID_KE cannot help.
    p.drive();
    assert!(
        p.member_events
            .contains(&Event::Closed(CloseReason::NoProposalChosen)),
        "{:?}",
        p.member_events
    );
}

#[test]
fn lost_gsa_auth_response_is_resent_from_cache_without_a_second_decision() {
    let (m, g) = psk_configs("k", "k", vec![suite(KeId::Curve25519, None)]);
    let mut p = Pair::new(m, g, Goal::GsaAuth(request(Some(1))));
    // Let IKE_SA_INIT through, then lose the GSA_AUTH response once.
    p.drive_until_gcks_exists();
    p.drop_from_gcks = 1;
    p.drive();
    assert_eq!(registered(&p.member_events).len(), 1);
    let decisions = p
        .gcks_events
        .iter()
        .filter(|e| matches!(e, Event::RegistrationRequested { .. }))
        .count();
    assert_eq!(
        decisions, 1,
        "a retransmitted GSA_AUTH must not be handled twice"
    );
    let auths = exchanges(&p.to_gcks)
        .iter()
        .filter(|e| **e == ExchangeType::GsaAuth)
        .count();
    assert_eq!(auths, 2, "the member retransmitted once");
}

#[test]
fn large_registration_is_fragmented_and_reassembled() {
    let (mut m, mut g) = psk_configs(
        "k",
        "k",
        vec![suite(KeId::Curve25519, Some(KeId::MlKem768))],
    );
    m.fragment_size = Some(400);
    g.fragment_size = Some(400);
    let mut p = Pair::new(m, g, Goal::GsaAuth(request(None)));
    p.decision = Box::new(|sa, _| Decision::Accept {
        gsa: sample_gsa(12),
        kd: sample_kd(sa, 12),
        transport_mode: false,
    });
    p.drive();
    let got = registered(&p.member_events);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, sample_gsa(12));
    assert!(
        p.to_member.iter().all(|d| d.len() <= 400
            || Header::read_datagram(d).unwrap().exchange == ExchangeType::IkeSaInit)
    );
    assert!(p.to_member.len() > 4, "the response went out in fragments");
}

#[test]
fn aes_cbc_hmac_suite_works_end_to_end() {
    let (m, g) = psk_configs("k", "k", vec![cbc_suite()]);
    let mut p = Pair::new(m, g, Goal::GsaAuth(request(None)));
    p.drive();
    assert_eq!(registered(&p.member_events).len(), 1);
}

#[test]
fn second_group_over_gsa_registration_and_leave() {
    let (m, g) = psk_configs("k", "k", vec![suite(KeId::Curve25519, None)]);
    let mut p = Pair::new(m, g, Goal::GsaAuth(request(None)));
    p.drive();
    let other = IdPayload::key_id(b"group-2".to_vec());
    p.member.register(
        RegistrationRequest {
            group: other.clone(),
            sag: None,
            sender_ids: None,
        },
        p.now,
        &mut p.rng,
    );
    p.drive();
    assert_eq!(registered(&p.member_events).len(), 2);
    assert_eq!(
        exchanges(&p.to_gcks).last(),
        Some(&ExchangeType::GsaRegistration)
    );
    p.member.leave(
        other.clone(),
        NotifyType::RegistrationFailed,
        p.now,
        &mut p.rng,
    );
    p.drive();
    assert!(p.gcks_events.iter().any(|e| matches!(e,
        Event::LeaveRequested { group, notify: NotifyType::RegistrationFailed, .. } if *group == other)));
}

#[test]
fn delete_closes_both_sides() {
    let (m, g) = psk_configs("k", "k", vec![suite(KeId::Curve25519, None)]);
    let mut p = Pair::new(m, g, Goal::IkeAuth);
    p.drive();
    p.member.delete(p.now, &mut p.rng);
    p.drive();
    assert!(
        p.member_events
            .contains(&Event::Closed(CloseReason::Deleted))
    );
    assert!(p.gcks_events.contains(&Event::Closed(CloseReason::Deleted)));
}

#[test]
fn unanswered_initiator_gives_up_after_the_retransmission_schedule() {
    let (m, g) = psk_configs("k", "k", vec![suite(KeId::Curve25519, None)]);
    let mut p = Pair::new(m, g, Goal::IkeAuth);
    p.drive_until_gcks_exists();
    p.drop_from_gcks = usize::MAX;
    let start = p.now;
    p.drive();
    assert!(
        p.member_events
            .contains(&Event::Closed(CloseReason::Timeout))
    );
    let waited = p.now - start;
    assert!(
        waited >= Duration::from_secs(160) && waited <= Duration::from_secs(170),
        "{waited:?}"
    );
    let auths = exchanges(&p.to_gcks)
        .iter()
        .filter(|e| **e == ExchangeType::IkeAuth)
        .count();
    assert_eq!(auths, 6, "original + 5 retransmissions");
    assert!(
        p.gcks_events
            .iter()
            .filter(|e| matches!(e, Event::Established { .. }))
            .count()
            == 1
    );
    let _ = ProtocolId::Esp;
}

impl Pair {
    /// Delivers the IKE_SA_INIT request and response only.
    fn drive_until_gcks_exists(&mut self) {
        let d = self.member.poll_transmit().unwrap();
        self.to_gcks.push(d.clone());
        let mut g = match IkeSa::respond(
            self.gcks_config.clone(),
            &d,
            GCKS.parse().unwrap(),
            MEMBER.parse().unwrap(),
            self.now,
            &mut self.rng,
        ) {
            Ok(g) => g,
            Err(e) => panic!("{e:?}"),
        };
        while let Some(r) = g.poll_transmit() {
            self.to_member.push(r.clone());
            self.member.handle(&r, self.now, &mut self.rng);
        }
        self.gcks = Some(g);
    }
}

#[test]
fn signer_needs_a_hash_the_peer_announced() {
    // RFC 7427 4: the GCKS announces only SHA2-256, so the member cannot sign with Ed25519
    // (Identity hash). The member must stop, and say so with Event::Closed.
    let (mk, _) = SigningKey::generate(SignatureScheme::Ed25519).unwrap();
    let (gk, _) = SigningKey::generate(SignatureScheme::Ed25519).unwrap();
    let (mk_pub, gk_pub) = (mk.public_key(), gk.public_key());
    let m = sig_config(member_id(), mk, None, gk_pub, SignatureScheme::Ed25519);
    let mut g = sig_config(gcks_id(), gk, None, mk_pub, SignatureScheme::Ed25519);
    g.signature_hashes = vec![gikev2_proto::registry::HashAlgorithm::Sha2_256];
    let mut p = Pair::new(m, g, Goal::IkeAuth);
    p.drive();
    assert!(
        p.member_events.iter().any(|e| matches!(e, Event::Closed(CloseReason::ProtocolError(why)) if why.contains("RFC 7427"))),
        "{:?}",
        p.member_events
    );
    assert!(!p.member.is_established());
}

/// A GCKS-side resolver with one PSK per member identity.
struct PskTable(Vec<(IdPayload, SecretBytes)>);

impl gikev2_proto::ike::PeerAuthResolver for PskTable {
    fn resolve(
        &self,
        peer_id: &IdPayload,
        _certs: &[gikev2_proto::wire::CertPayload],
    ) -> Option<PeerAuth> {
        self.0
            .iter()
            .find(|(id, _)| id == peer_id)
            .map(|(_, k)| PeerAuth::Psk(k.clone()))
    }
}

#[test]
fn gcks_answers_each_member_with_that_members_psk() {
    // RFC 7296 2.15: the shared key is the pair's; one GCKS serves members with distinct keys.
    let table = Arc::new(PskTable(vec![
        (IdPayload::fqdn("a.example").unwrap(), psk("key of a")),
        (IdPayload::fqdn("b.example").unwrap(), psk("key of b")),
    ]));
    for (name, key) in [("a.example", "key of a"), ("b.example", "key of b")] {
        let mut m = IkeConfig::new(
            vec![suite(KeId::Curve25519, None)],
            IdPayload::fqdn(name).unwrap(),
            LocalAuth::Psk(psk(key)),
            Arc::new(SinglePeer {
                id: Some(gcks_id()),
                auth: PeerAuth::Psk(psk(key)),
            }),
        );
        m.remote_id = Some(gcks_id());
        let g = IkeConfig::new(
            vec![suite(KeId::Curve25519, None)],
            gcks_id(),
            LocalAuth::Psk(psk("the GCKS's fallback key")),
            table.clone(),
        );
        let mut p = Pair::new(m, g, Goal::GsaAuth(request(None)));
        p.drive();
        assert_eq!(
            registered(&p.member_events).len(),
            1,
            "{name}: {:?}",
            p.member_events
        );
    }
}

/// RFC 9838 2.3 (R004): the IKE SA of a registration is not for unicast Child SAs; a
/// CREATE_CHILD_SA on it gets NO_ADDITIONAL_SAS (RFC 7296 3.10.1) and the SA stays up.
#[test]
fn create_child_sa_on_the_registration_sa_gets_no_additional_sas() {
    use gikev2_proto::crypto::SkKey;
    use gikev2_proto::ike::protect::{self, Reassembly};
    use gikev2_proto::wire::header::Flags;
    use gikev2_proto::wire::nonce::NoncePayload;
    use gikev2_proto::wire::payload::Payload;
    use gikev2_proto::wire::sa::{Proposal, SaPayload};
    use gikev2_proto::wire::tsp::TsPayload;

    let s = suite(KeId::Curve25519, None);
    let (m, g) = psk_configs("s3cret", "s3cret", vec![s.clone()]);
    let mut p = Pair::new(m, g, Goal::IkeAuth);
    p.drive();
    assert!(p.gcks().is_established());
    let keys = p.member.keys().unwrap();
    let to_gcks = SkKey::from_ike_keys(&s, keys, true).unwrap();
    let from_gcks = SkKey::from_ike_keys(&s, keys, false).unwrap();
    let (spi_i, spi_r) = p.member.spis();
    let child = SaPayload::new(vec![Proposal::new(
        1,
        ProtocolId::Esp,
        vec![1, 2, 3, 4],
        vec![
            Transform::encr(EncrId::AesGcm16, Some(256)),
            Transform::new(TransformType::Sn, 0),
        ],
    )]);
    let request = protect::seal(
        &to_gcks,
        &mut p.rng,
        &Header::new(
            spi_i,
            spi_r,
            ExchangeType::CreateChildSa,
            Flags::new(true, false),
            2,
        ),
        &[
            Payload::Sa(child),
            Payload::Nonce(NoncePayload::new(vec![0x42; 32]).unwrap()),
            Payload::TsI(TsPayload::new(vec![TrafficSelector::any(false)])),
            Payload::TsR(TsPayload::new(vec![TrafficSelector::any(false)])),
        ],
        None,
    )
    .unwrap();
    let g = p.gcks.as_mut().unwrap();
    g.handle(&request[0], p.now, &mut p.rng);
    let reply = g.poll_transmit().expect("an answer");
    let opened = protect::open(&from_gcks, &reply, &mut Reassembly::default())
        .unwrap()
        .unwrap();
    assert_eq!(opened.header.exchange, ExchangeType::CreateChildSa);
    assert!(opened.header.flags.is_response());
    let notifies: Vec<NotifyType> = opened
        .payloads
        .iter()
        .filter_map(|p| match p {
            Payload::Notify(n) => Some(n.ty),
            _ => None,
        })
        .collect();
    assert_eq!(notifies, [NotifyType::NoAdditionalSas]);
    assert!(p.gcks().is_established() && !p.gcks().is_closed());
}

// ------------------------------------------- RFC 7296 2.5, 2.21.2, 2.21.3: bad requests

/// A registered pair (GSA_AUTH done, Message ID 1) and the member's SK keys towards and
/// from the GCKS.
fn registered_with_keys() -> (
    Pair,
    gikev2_proto::crypto::SkKey,
    gikev2_proto::crypto::SkKey,
) {
    use gikev2_proto::crypto::SkKey;
    let s = suite(KeId::Curve25519, None);
    let (m, g) = psk_configs("k", "k", vec![s.clone()]);
    let mut p = Pair::new(m, g, Goal::GsaAuth(request(None)));
    p.drive();
    assert_eq!(registered(&p.member_events).len(), 1);
    let keys = p.member.keys().unwrap();
    let to_gcks = SkKey::from_ike_keys(&s, keys, true).unwrap();
    let from_gcks = SkKey::from_ike_keys(&s, keys, false).unwrap();
    (p, to_gcks, from_gcks)
}

/// A GSA_REGISTRATION request (Message ID 2) whose SK payload holds `plaintext`, the
/// inner payload chain written by hand; `first` is the SK header's Next Payload.
fn raw_registration_request(
    p: &mut Pair,
    to_gcks: &gikev2_proto::crypto::SkKey,
    first: u8,
    plaintext: &[u8],
) -> Vec<u8> {
    use gikev2_proto::codec::Codec;
    use gikev2_proto::registry::PayloadType;
    use gikev2_proto::wire::header::Flags;
    let (spi_i, spi_r) = p.member.spis();
    let mut h = Header::new(
        spi_i,
        spi_r,
        ExchangeType::GsaRegistration,
        Flags::new(true, false),
        2,
    );
    h.next_payload = PayloadType::Sk;
    let mut msg = Vec::new();
    h.encode(&mut msg);
    // RFC 7296 3.14: SK generic header; Next Payload names the first inner payload.
    msg.extend_from_slice(&[first, 0x00, 0x00, 0x00]);
    to_gcks
        .seal_append(&mut p.rng, &mut msg, 28, plaintext)
        .unwrap();
    msg
}

/// An answer's exchange and notifies (type, data).
type Answer = (ExchangeType, Vec<(NotifyType, Vec<u8>)>);

/// The GCKS's answer to `request`.
fn gcks_answer(
    p: &mut Pair,
    from_gcks: &gikev2_proto::crypto::SkKey,
    request: &[u8],
) -> Option<Answer> {
    use gikev2_proto::ike::protect::{self, Reassembly};
    let g = p.gcks.as_mut().unwrap();
    g.handle(request, p.now, &mut p.rng);
    let reply = g.poll_transmit()?;
    let opened = protect::open(from_gcks, &reply, &mut Reassembly::default())
        .unwrap()
        .unwrap();
    assert!(opened.header.flags.is_response());
    assert_eq!(opened.header.message_id, 2);
    Some((opened.header.exchange, notifies_of(&opened.payloads)))
}

/// RFC 9838 4.2 (IDg is the RFC 7296 3.5 Identification payload, type 50) with
/// ID_KEY_ID "group-1"; `next` is its Next Payload.
fn idg_bytes(next: u8) -> Vec<u8> {
    let mut b = vec![
        next, 0x00, 0x00, 0x0f, // Next Payload, C=0, Payload Length 4 + 4 + 7 = 15
        0x0b, 0x00, 0x00, 0x00, // ID Type 11 (ID_KEY_ID), RESERVED
    ];
    b.extend_from_slice(b"group-1");
    b
}

#[test]
fn unknown_critical_payload_in_a_request_gets_unsupported_critical_payload() {
    // RFC 7296 2.5: "If a payload type is not recognized and the critical flag is set, the
    // message MUST be rejected and the response to the IKE request containing that payload
    // MUST include a Notify payload UNSUPPORTED_CRITICAL_PAYLOAD [..] the Notification Data
    // contains the one-octet payload type." 2.21.3: not fatal to the IKE SA.
    let (mut p, to_gcks, from_gcks) = registered_with_keys();
    let mut plain = idg_bytes(200);
    plain.extend_from_slice(&[
        0x00, 0x80, 0x00, 0x08, // unknown type 200: Next Payload 0, C=1, Length 8
        0xde, 0xad, 0xbe, 0xef, // body
    ]);
    let req = raw_registration_request(&mut p, &to_gcks, 50, &plain);
    let answer = gcks_answer(&mut p, &from_gcks, &req).expect("an answer");
    assert_eq!(
        answer,
        (
            ExchangeType::GsaRegistration,
            vec![(NotifyType::UnsupportedCriticalPayload, vec![200])]
        )
    );
    assert!(p.gcks().is_established() && !p.gcks().is_closed());
    assert!(
        !p.gcks
            .as_mut()
            .unwrap()
            .poll_event()
            .is_some_and(|e| matches!(e, Event::RegistrationRequested { .. })),
        "a rejected request must not reach the registrar"
    );
}

#[test]
fn unknown_critical_payload_in_ike_sa_init_gets_unsupported_critical_payload() {
    // RFC 7296 2.5 holds for IKE_SA_INIT too: the request is rejected and the (plain)
    // response carries UNSUPPORTED_CRITICAL_PAYLOAD with the one-octet payload type.
    use gikev2_proto::wire::message::Message;
    use gikev2_proto::wire::payload::Payload;
    let (m, g) = psk_configs("s3cret", "s3cret", vec![suite(KeId::Curve25519, None)]);
    let mut p = Pair::new(m, g.clone(), Goal::GsaAuth(request(None)));
    let init = p.member.poll_transmit().expect("IKE_SA_INIT request");
    let mut msg = Message::decode(&init).unwrap();
    msg.payloads.push(Payload::Unknown {
        ty: gikev2_proto::registry::PayloadType::from(200),
        critical: true,
        body: vec![0xde, 0xad],
    });
    let spi_i = msg.header.spi_i;
    let bad = msg.encode();
    let refused = IkeSa::respond(
        g.clone(),
        &bad,
        GCKS.parse().unwrap(),
        MEMBER.parse().unwrap(),
        p.now,
        &mut p.rng,
    );
    let Err(InitRefusal::Reply(reply)) = refused else {
        panic!("expected a reply");
    };
    let answer = Message::decode(&reply).unwrap();
    assert_eq!(answer.header.exchange, ExchangeType::IkeSaInit);
    assert!(answer.header.flags.is_response());
    assert_eq!((answer.header.spi_i, answer.header.spi_r), (spi_i, [0; 8]));
    assert_eq!(
        notifies_of(&answer.payloads),
        vec![(NotifyType::UnsupportedCriticalPayload, vec![200])]
    );
    // The same request without the critical bit is accepted (2.5: skipped).
    let mut msg = Message::decode(&init).unwrap();
    msg.payloads.push(Payload::Unknown {
        ty: gikev2_proto::registry::PayloadType::from(200),
        critical: false,
        body: vec![0xde, 0xad],
    });
    assert!(
        IkeSa::respond(
            g,
            &msg.encode(),
            GCKS.parse().unwrap(),
            MEMBER.parse().unwrap(),
            p.now,
            &mut p.rng,
        )
        .is_ok()
    );
}

#[test]
fn unknown_non_critical_payload_in_a_request_is_skipped() {
    // RFC 7296 2.5: without the critical flag the payload is skipped.
    let (mut p, to_gcks, _) = registered_with_keys();
    let mut plain = idg_bytes(200);
    plain.extend_from_slice(&[0x00, 0x00, 0x00, 0x08, 0xde, 0xad, 0xbe, 0xef]);
    let req = raw_registration_request(&mut p, &to_gcks, 50, &plain);
    let g = p.gcks.as_mut().unwrap();
    g.handle(&req, p.now, &mut p.rng);
    let mut events = Vec::new();
    while let Some(e) = g.poll_event() {
        events.push(e);
    }
    assert!(
        events.iter().any(|e| matches!(e,
            Event::RegistrationRequested { request, .. } if request.group == group())),
        "{events:?}"
    );
}

#[test]
fn malformed_payload_in_a_request_gets_invalid_syntax_and_ends_the_ike_sa() {
    // RFC 7296 2.21.3: "After the IKE SA is authenticated, all requests having errors MUST
    // result in a response notifying the other end of the error"; INVALID_SYNTAX "is
    // considered fatal in both peers". The IDg payload here is 6 octets: shorter than the
    // ID Type and RESERVED fields of RFC 7296 3.5.
    let (mut p, to_gcks, from_gcks) = registered_with_keys();
    let plain = [
        0x00, 0x00, 0x00, 0x06, // IDg: Next Payload 0, C=0, Payload Length 6
        0x0b, 0x00, // ID Type 11, one octet of RESERVED, then nothing
    ];
    let req = raw_registration_request(&mut p, &to_gcks, 50, &plain);
    let answer = gcks_answer(&mut p, &from_gcks, &req).expect("an answer");
    assert_eq!(
        answer,
        (
            ExchangeType::GsaRegistration,
            vec![(NotifyType::InvalidSyntax, Vec::new())]
        )
    );
    assert!(p.gcks().is_closed());
}

#[test]
fn member_ends_the_ike_sa_on_an_invalid_syntax_response() {
    // RFC 7296 2.21.3: INVALID_SYNTAX is fatal in both peers. A GSA_REGISTRATION request
    // for a group the GCKS has never heard of is fine; the GCKS here answers with
    // INVALID_SYNTAX as if it found the request malformed.
    let (m, g) = psk_configs("k", "k", vec![suite(KeId::Curve25519, None)]);
    let mut p = Pair::new(m, g, Goal::GsaAuth(request(None)));
    p.drive();
    assert!(p.member.is_established());
    p.decision = Box::new(|_, _| Decision::Refuse(NotifyType::InvalidSyntax));
    p.member.register(request(None), p.now, &mut p.rng);
    p.drive();
    assert!(
        p.member_events
            .contains(&Event::Closed(CloseReason::PeerError(
                NotifyType::InvalidSyntax
            ))),
        "{:?}",
        p.member_events
    );
}

#[test]
fn inband_rekey_of_a_transport_mode_group_carries_use_transport_mode() {
    // RFC 9838 2.4.2.1: "The GSA, KD and N payloads are built in the same manner as in a
    // registration exchange", whose response carries USE_TRANSPORT_MODE when the SAs are
    // in transport mode (2.3.4). Figure 11: `SK{GSA, KD, [N]}`.
    use gikev2_proto::ike::protect::{self, Reassembly};
    let (mut p, _, from_gcks) = registered_with_keys();
    for (transport_mode, want) in [
        (true, vec!["GSA", "KD", "N(USE_TRANSPORT_MODE)"]),
        (false, vec!["GSA", "KD"]),
    ] {
        let (now, g) = (p.now, p.gcks.as_mut().unwrap());
        let kd = sample_kd(g, 1);
        g.inband_rekey(sample_gsa(1), kd, transport_mode, now, &mut p.rng);
        let d = g.poll_transmit().expect("a GSA_INBAND_REKEY request");
        let opened = protect::open(&from_gcks, &d, &mut Reassembly::default())
            .unwrap()
            .unwrap();
        assert_eq!(opened.header.exchange, ExchangeType::GsaInbandRekey);
        let order = payload_order(&opened.payloads);
        assert_eq!(order, want);
        p.member.handle(&d, p.now, &mut p.rng);
        p.drive();
    }
}

// ------------------------------------------------------------------ RFC 8784 PPK

mod ppk {
    use super::*;
    use gikev2_proto::crypto::{IkeKeys, KeyWrapAlg, KeyWrapKey, SkKey};
    use gikev2_proto::ike::protect::{self, Reassembly};
    use gikev2_proto::ike::{LocalPpk, SinglePpk};
    use gikev2_proto::wire::payload::Payload;

    const PPK: [u8; 32] = [0xa5; 32];

    fn member_ppk(id: &str, secret: &[u8], mandatory: bool) -> LocalPpk {
        LocalPpk {
            id: id.as_bytes().to_vec(),
            secret: SecretBytes::from_slice(secret),
            mandatory,
        }
    }

    fn gcks_ppks(id: &str, required: bool) -> Arc<SinglePpk> {
        Arc::new(SinglePpk {
            id: id.as_bytes().to_vec(),
            secret: SecretBytes::from_slice(&PPK),
            required,
        })
    }

    /// A GSA_AUTH run with these PPK settings (same seed as every [`Pair`], so the same
    /// nonces, SPIs and key exchange as the run without PPK).
    fn run(suites: Vec<IkeSuite>, member: Option<LocalPpk>, gcks: Option<Arc<SinglePpk>>) -> Pair {
        let (mut m, mut g) = psk_configs("k", "k", suites);
        m.ppk = member;
        g.ppk_resolver = gcks.map(|r| r as Arc<dyn gikev2_proto::ike::PpkResolver>);
        let mut p = Pair::new(m, g, Goal::GsaAuth(request(None)));
        p.drive();
        p
    }

    /// SK_d', SK_pi', SK_pr' (and the rest): the keys before GSA_AUTH.
    fn plain_keys(p: &Pair) -> IkeKeys {
        p.keys_before_auth
            .clone()
            .expect("GSA_AUTH reached the GCKS")
    }

    fn has_use_ppk(d: &[u8]) -> bool {
        Message::decode(d)
            .unwrap()
            .notify(NotifyType::UsePpk)
            .is_some()
    }

    /// The notifies (type, data) in the protected message `d`, opened with the keys the
    /// sender's SK payload used (SK_e/SK_a do not depend on the PPK).
    fn notifies(p: &Pair, d: &[u8], from_member: bool) -> Vec<(NotifyType, Vec<u8>)> {
        let s = p.member.suite().unwrap().clone();
        let key = SkKey::from_ike_keys(&s, p.member.keys().unwrap(), from_member).unwrap();
        let opened = protect::open(&key, d, &mut Reassembly::default())
            .unwrap()
            .unwrap();
        opened
            .payloads
            .iter()
            .filter_map(|x| match x {
                Payload::Notify(n) => Some((n.ty, n.data.clone())),
                _ => None,
            })
            .collect()
    }

    fn only(v: &[(NotifyType, Vec<u8>)], ty: NotifyType) -> Vec<Vec<u8>> {
        v.iter()
            .filter(|(t, _)| *t == ty)
            .map(|(_, d)| d.clone())
            .collect()
    }

    /// RFC 7296 3.2: "implementations SHOULD send the payloads [..] in the order shown in
    /// the figures"; RFC 9838 Figure 4: `SK{IDr, [CERT,] AUTH, GSA, KD, [N]}`. The
    /// PPK_IDENTITY notify (RFC 8784 3) is one of the trailing [N].
    #[test]
    fn gsa_auth_response_keeps_the_figure_4_order_with_ppk_identity() {
        let p = run(
            vec![suite(KeId::Curve25519, None)],
            Some(member_ppk("ppk-1", &PPK, true)),
            Some(gcks_ppks("ppk-1", true)),
        );
        let d = p
            .to_member
            .iter()
            .find(|d| Header::read_datagram(d).unwrap().exchange == ExchangeType::GsaAuth)
            .expect("a GSA_AUTH response");
        let s = p.member.suite().unwrap().clone();
        let key = SkKey::from_ike_keys(&s, p.member.keys().unwrap(), false).unwrap();
        let opened = protect::open(&key, d, &mut Reassembly::default())
            .unwrap()
            .unwrap();
        let order = payload_order(&opened.payloads);
        assert_eq!(
            order,
            [
                "IDr",
                "AUTH",
                "GSA",
                "KD",
                "N(PPK_IDENTITY)",
                "N(USE_TRANSPORT_MODE)"
            ]
        );
    }

    /// RFC 8784 3: USE_PPK both ways, PPK_IDENTITY = PPK_ID_FIXED | id, SK_d, SK_pi and
    /// SK_pr are prf+(PPK, SK_x') on both sides, and the group keys travel under the GSK_w
    /// of the mixed SK_d.
    #[test]
    fn ppk_mixes_into_the_keys_and_both_sides_agree() {
        let suites = vec![suite(KeId::Curve25519, None)];
        let p = run(
            suites,
            Some(member_ppk("ppk1", &PPK, false)),
            Some(gcks_ppks("ppk1", false)),
        );
        assert_eq!(registered(&p.member_events).len(), 1);
        assert!(p.member.ppk_used() && p.gcks().ppk_used());
        assert!(has_use_ppk(&p.to_gcks[0]) && has_use_ppk(&p.to_member[0]));
        let plain = plain_keys(&p);
        let keys = p.member.keys().unwrap();
        assert_eq!(Some(keys), p.gcks().keys(), "both sides agree");
        assert_eq!(keys, &plain.with_ppk(&PPK).unwrap());
        assert_ne!(keys.sk_d, plain.sk_d);
        let req = notifies(&p, &p.to_gcks[1], true);
        assert_eq!(only(&req, NotifyType::PpkIdentity), [b"\x02ppk1".to_vec()]);
        assert_eq!(
            only(&req, NotifyType::NoPpkAuth).len(),
            1,
            "optional PPK: NO_PPK_AUTH is sent"
        );
        let resp = notifies(&p, &p.to_member[1], false);
        assert_eq!(only(&resp, NotifyType::PpkIdentity), [Vec::<u8>::new()]);
        // A mandatory PPK sends no NO_PPK_AUTH and ends the same way.
        let p = run(
            vec![suite(KeId::Curve25519, None)],
            Some(member_ppk("ppk1", &PPK, true)),
            Some(gcks_ppks("ppk1", true)),
        );
        assert!(p.member.ppk_used() && p.gcks().ppk_used());
        let req = notifies(&p, &p.to_gcks[1], true);
        assert!(only(&req, NotifyType::NoPpkAuth).is_empty());
        assert_eq!(p.member.keys(), p.gcks().keys());
    }

    /// The KD a member unwraps is the GCKS's only with the right PPK: GSK_w comes from the
    /// mixed SK_d (RFC 9838 6.2), so the key without the PPK (what breaking the key
    /// exchange yields) does not unwrap it, and a wrong PPK fails authentication.
    #[test]
    fn group_keys_unwrap_only_with_the_right_ppk() {
        let suites = vec![suite(KeId::Curve25519, None)];
        let p = run(
            suites.clone(),
            Some(member_ppk("ppk1", &PPK, true)),
            Some(gcks_ppks("ppk1", true)),
        );
        let plain = plain_keys(&p);
        let (_, kd, _) = registered(&p.member_events).pop().expect("registered");
        let wrapped = &kd.group_bags().next().unwrap().sa_keys[0].encrypted;
        let kwk = p.member.key_wrap_key().unwrap();
        assert_eq!(kwk.unwrap(wrapped).unwrap().as_bytes(), &[0u8; 36]);
        let kwa = KeyWrapAlg::Kw5649_256;
        let without = KeyWrapKey::new(kwa, plain.default_kwk(kwa).unwrap().as_bytes()).unwrap();
        assert!(without.unwrap(wrapped).is_err(), "no PPK, no group keys");

        let p = run(
            suites,
            Some(member_ppk("ppk1", &[0x5a; 32], true)),
            Some(gcks_ppks("ppk1", true)),
        );
        assert!(registered(&p.member_events).is_empty());
        assert_both_closed_authentication_failed(&p, "");
    }

    /// RFC 8784 3, Table 1: an unknown PPK_ID when the PPK is mandatory for the member
    /// (on either side) ends in AUTHENTICATION_FAILED.
    #[test]
    fn mandatory_ppk_with_unknown_id_is_refused() {
        for (member_mandatory, gcks_required) in [(true, false), (false, true), (true, true)] {
            let p = run(
                vec![suite(KeId::Curve25519, None)],
                Some(member_ppk("not-known", &PPK, member_mandatory)),
                Some(gcks_ppks("ppk1", gcks_required)),
            );
            assert_both_closed_authentication_failed(&p, "");
            assert!(registered(&p.member_events).is_empty());
            assert!(
                !p.gcks_events
                    .iter()
                    .any(|e| matches!(e, Event::RegistrationRequested { .. }))
            );
        }
    }

    /// RFC 8784 3, Table 1: PPK optional on both sides, PPK_ID unknown, NO_PPK_AUTH sent:
    /// the responder authenticates the member with NO_PPK_AUTH and both continue without
    /// the PPK (no PPK_IDENTITY in the response).
    #[test]
    fn optional_ppk_falls_back_through_no_ppk_auth() {
        let suites = vec![suite(KeId::Curve25519, None)];
        let p = run(
            suites,
            Some(member_ppk("not-known", &PPK, false)),
            Some(gcks_ppks("ppk1", false)),
        );
        assert_eq!(registered(&p.member_events).len(), 1);
        assert!(!p.member.ppk_used() && !p.gcks().ppk_used());
        let plain = plain_keys(&p);
        assert_eq!(p.member.keys(), Some(&plain));
        assert_eq!(p.gcks().keys(), Some(&plain));
        let resp = notifies(&p, &p.to_member[1], false);
        assert!(only(&resp, NotifyType::PpkIdentity).is_empty());
    }

    /// RFC 8784 3: without USE_PPK from the responder an optional PPK is skipped and a
    /// mandatory one aborts after IKE_SA_INIT; Table 1 row 3: a responder that requires a
    /// PPK refuses an initiator that sent no USE_PPK.
    #[test]
    fn missing_use_ppk_aborts_only_where_the_ppk_is_mandatory() {
        let suites = vec![suite(KeId::Curve25519, None)];
        let p = run(suites.clone(), Some(member_ppk("ppk1", &PPK, false)), None);
        assert!(!has_use_ppk(&p.to_member[0]));
        assert_eq!(registered(&p.member_events).len(), 1);
        assert!(!p.member.ppk_used());

        let p = run(suites.clone(), Some(member_ppk("ppk1", &PPK, true)), None);
        assert_eq!(exchanges(&p.to_gcks), [ExchangeType::IkeSaInit]);
        assert!(matches!(
            p.member_events.as_slice(),
            [Event::Closed(CloseReason::ProtocolError(_))]
        ));

        let p = run(suites.clone(), None, Some(gcks_ppks("ppk1", true)));
        assert!(
            !has_use_ppk(&p.to_member[0]),
            "USE_PPK only answers USE_PPK"
        );
        assert!(
            p.gcks_events
                .contains(&Event::Closed(CloseReason::AuthenticationFailed))
        );
        assert!(registered(&p.member_events).is_empty());

        let p = run(suites, None, Some(gcks_ppks("ppk1", false)));
        assert_eq!(registered(&p.member_events).len(), 1);
        assert!(!p.gcks().ppk_used());
    }

    /// RFC 9370 2.2.2 with RFC 8784: the PPK is mixed into the keys after the last
    /// IKE_INTERMEDIATE exchange (hybrid X25519 + ML-KEM-768), once.
    #[test]
    fn ppk_with_ml_kem_768_applies_after_the_last_intermediate() {
        let suites = vec![suite(KeId::Curve25519, Some(KeId::MlKem768))];
        let p = run(
            suites,
            Some(member_ppk("ppk1", &PPK, false)),
            Some(gcks_ppks("ppk1", true)),
        );
        assert_eq!(
            exchanges(&p.to_gcks),
            [
                ExchangeType::IkeSaInit,
                ExchangeType::IkeIntermediate,
                ExchangeType::GsaAuth
            ]
        );
        assert_eq!(registered(&p.member_events).len(), 1);
        assert!(p.member.ppk_used() && p.gcks().ppk_used());
        assert!(p.member.post_quantum_ke() && p.gcks().post_quantum_ke());
        assert_eq!(p.member.keys(), p.gcks().keys());
        let plain = plain_keys(&p);
        assert_eq!(p.member.keys(), Some(&plain.with_ppk(&PPK).unwrap()));
    }
}

// ------------------------------------------------------------------ IKE SA rekey

mod ike_rekey {
    use super::*;
    use gikev2_proto::crypto::SkKey;
    use gikev2_proto::ike::protect::{self, Reassembly};
    use gikev2_proto::wire::header::Flags;
    use gikev2_proto::wire::ke::KePayload;
    use gikev2_proto::wire::nonce::NoncePayload;
    use gikev2_proto::wire::payload::Payload;
    use gikev2_proto::wire::sa::{Proposal, SaPayload};

    /// A registered member and its GCKS, with no rekey timer of their own.
    fn registered_pair() -> Pair {
        let (mut m, mut g) = psk_configs("s3cret", "s3cret", vec![suite(KeId::Curve25519, None)]);
        m.rekey_after = None;
        g.rekey_after = None;
        let mut p = Pair::new(m, g, Goal::GsaAuth(request(None)));
        p.drive();
        assert!(p.member.is_established() && p.gcks().is_established());
        assert_eq!(registered(&p.member_events).len(), 1);
        p
    }

    fn headers(wire: &[Vec<u8>]) -> Vec<Header> {
        wire.iter()
            .map(|d| Header::read_datagram(d).unwrap())
            .collect()
    }

    /// Both sides hold the same new SA: SPIs, seven keys, GSK_w (a key wrapped by one
    /// unwraps with the other), all different from before; the old SA is gone.
    fn assert_rekeyed(
        p: &Pair,
        old_spis: ([u8; 8], [u8; 8]),
        old_keys: &gikev2_proto::crypto::IkeKeys,
    ) {
        let (m, g) = (&p.member, p.gcks());
        assert_eq!(m.spis(), g.spis());
        assert_ne!(m.spis().0, old_spis.0);
        assert_ne!(m.spis().1, old_spis.1);
        assert_eq!(m.keys(), g.keys());
        let new = m.keys().unwrap();
        assert_ne!(new.sk_d, old_keys.sk_d);
        assert_ne!(new.sk_ei, old_keys.sk_ei);
        assert_ne!(new.sk_pi, old_keys.sk_pi);
        let wrapped = g.key_wrap_key().unwrap().wrap(&[7; 32]).unwrap();
        assert_eq!(
            m.key_wrap_key()
                .unwrap()
                .unwrap(&wrapped)
                .unwrap()
                .as_bytes(),
            &[7; 32]
        );
        assert_eq!(m.local_spis().len(), 1, "member still holds a replaced SA");
        assert_eq!(g.local_spis().len(), 1, "GCKS still holds a replaced SA");
        assert!(!m.is_closed() && !g.is_closed());
    }

    /// After a rekey, GSA_INBAND_REKEY and GSA_REGISTRATION run over the new SA with
    /// Message IDs from 0 (RFC 7296 2.18) and GSK_w of the new SK_d (RFC 9838 3.1.1).
    fn registration_and_inband_rekey_work(p: &mut Pair) {
        let spis = p.member.spis();
        let (to_gcks, to_member) = (p.to_gcks.len(), p.to_member.len());
        let kd = sample_kd(p.gcks(), 1);
        let kwk_member = p.member.key_wrap_key().unwrap();
        let (now, g) = (p.now, p.gcks.as_mut().unwrap());
        g.inband_rekey(sample_gsa(1), kd.clone(), false, now, &mut p.rng);
        p.drive();
        let carried = p.member_events.iter().find_map(|e| match e {
            Event::InbandRekey { gsa, kd: got, kwk } if gsa == &sample_gsa(1) && got == &kd => {
                Some(kwk.clone().expect("the carrying IKE SA's GSK_w"))
            }
            _ => None,
        });
        let carried = carried.expect("the GSA_INBAND_REKEY event").key().unwrap();
        // The member unwraps the TEK with its own GSK_w of the new SA, which the event
        // hands over as the key of the IKE SA that carried it.
        let gikev2_proto::wire::kd::KeyBag::Group(bag) = &kd.bags[0] else {
            panic!("a group key bag");
        };
        let wrapped = &bag.sa_keys[0].encrypted;
        assert_eq!(kwk_member.unwrap(wrapped).unwrap().as_bytes(), &[0u8; 36]);
        assert_eq!(carried.unwrap(wrapped).unwrap().as_bytes(), &[0u8; 36]);
        p.member.register(
            RegistrationRequest {
                group: IdPayload::key_id(b"group-2".to_vec()),
                sag: None,
                sender_ids: None,
            },
            p.now,
            &mut p.rng,
        );
        p.drive();
        assert_eq!(registered(&p.member_events).len(), 2);
        let sent: Vec<Header> = headers(&p.to_member[to_member..])
            .into_iter()
            .chain(headers(&p.to_gcks[to_gcks..]))
            .collect();
        assert!(sent.iter().all(|h| (h.spi_i, h.spi_r) == spis));
        let inband = sent
            .iter()
            .find(|h| h.exchange == ExchangeType::GsaInbandRekey)
            .unwrap();
        let registration = sent
            .iter()
            .find(|h| h.exchange == ExchangeType::GsaRegistration)
            .unwrap();
        assert_eq!((inband.message_id, registration.message_id), (0, 0));
    }

    #[test]
    fn gcks_rekeys_the_ike_sa_and_the_member_follows() {
        let mut p = registered_pair();
        let old_spis = p.member.spis();
        let old_keys = p.member.keys().unwrap().clone();
        let (to_gcks, to_member) = (p.to_gcks.len(), p.to_member.len());
        let (now, g) = (p.now, p.gcks.as_mut().unwrap());
        g.rekey(now, &mut p.rng);
        p.drive();
        assert_eq!((p.member.rekeys(), p.gcks().rekeys()), (1, 1));
        assert_rekeyed(&p, old_spis, &old_keys);
        // RFC 7296 2.18: the GCKS initiated the rekey, so it is the new SA's original
        // initiator: SPIi is its SPI and its requests carry the I flag.
        let from_gcks = headers(&p.to_member[to_member..]);
        let from_member = headers(&p.to_gcks[to_gcks..]);
        let ccsa = &from_gcks[0];
        assert_eq!(ccsa.exchange, ExchangeType::CreateChildSa);
        assert!(!ccsa.flags.is_response());
        assert_eq!(
            (ccsa.spi_i, ccsa.spi_r),
            old_spis,
            "rekey runs on the old SA"
        );
        let delete = &from_gcks[1];
        assert_eq!(delete.exchange, ExchangeType::Informational);
        assert_eq!(
            (delete.spi_i, delete.spi_r),
            old_spis,
            "old SA deleted on itself"
        );
        assert_eq!(from_member.len(), 2, "CREATE_CHILD_SA and Delete responses");
        registration_and_inband_rekey_work(&mut p);
        let first_new = headers(&p.to_member[to_member + 2..]);
        assert!(
            first_new[0].flags.is_initiator(),
            "GCKS is the new original initiator"
        );
    }

    #[test]
    fn member_rekeys_the_ike_sa_and_the_gcks_follows() {
        let mut p = registered_pair();
        let old_spis = p.member.spis();
        let old_keys = p.member.keys().unwrap().clone();
        let old_kwk = p.gcks().key_wrap_key().unwrap().wrap(&[7; 32]).unwrap();
        p.member.rekey(p.now, &mut p.rng);
        p.drive();
        assert_eq!((p.member.rekeys(), p.gcks().rekeys()), (1, 1));
        assert_rekeyed(&p, old_spis, &old_keys);
        // The member initiated: its CREATE_CHILD_SA ran on the old SA with the I flag
        // (the member was the original initiator), and the new SPIi is the member's.
        let ccsa = headers(&p.to_gcks)
            .into_iter()
            .find(|h| h.exchange == ExchangeType::CreateChildSa)
            .unwrap();
        assert_eq!((ccsa.spi_i, ccsa.spi_r), old_spis);
        assert!(ccsa.flags.is_initiator());
        // GSK_w changed: a key wrapped with the old one no longer unwraps.
        assert!(p.member.key_wrap_key().unwrap().unwrap(&old_kwk).is_err());
        registration_and_inband_rekey_work(&mut p);
        // And a second rekey, now from the GCKS, starts from the new SK_d.
        let spis = p.member.spis();
        let keys = p.member.keys().unwrap().clone();
        let (now, g) = (p.now, p.gcks.as_mut().unwrap());
        g.rekey(now, &mut p.rng);
        p.drive();
        assert_eq!((p.member.rekeys(), p.gcks().rekeys()), (2, 2));
        assert_rekeyed(&p, spis, &keys);
    }

    #[test]
    fn the_rekey_timer_fires_and_poll_timeout_shows_it() {
        let (mut m, mut g) = psk_configs("s3cret", "s3cret", vec![suite(KeId::Curve25519, None)]);
        m.rekey_after = Some(Duration::from_secs(1000));
        m.rekey_jitter = Duration::ZERO;
        g.rekey_after = None;
        let mut p = Pair::new(m, g, Goal::GsaAuth(request(None)));
        p.drive();
        let established = p.now;
        assert_eq!(
            p.member.rekey_time(),
            Some(established + Duration::from_secs(1000))
        );
        assert_eq!(p.member.poll_timeout(), p.member.rekey_time());
        assert_eq!(p.gcks().rekey_time(), None);
        let old_spis = p.member.spis();
        let old_keys = p.member.keys().unwrap().clone();
        p.now += Duration::from_secs(999);
        p.member.handle_timeout(p.now, &mut p.rng);
        assert!(p.member.poll_transmit().is_none(), "not yet");
        p.now += Duration::from_secs(1);
        p.member.handle_timeout(p.now, &mut p.rng);
        p.drive();
        assert_eq!((p.member.rekeys(), p.gcks().rekeys()), (1, 1));
        assert_rekeyed(&p, old_spis, &old_keys);
        // The next rekey is scheduled from this one.
        assert_eq!(
            p.member.rekey_time(),
            Some(established + Duration::from_secs(2000))
        );
    }

    #[test]
    fn the_hard_lifetime_deletes_the_ike_sa() {
        let (mut m, mut g) = psk_configs("s3cret", "s3cret", vec![suite(KeId::Curve25519, None)]);
        m.rekey_after = None;
        m.lifetime = Some(Duration::from_secs(700));
        g.rekey_after = None;
        g.lifetime = None;
        let mut p = Pair::new(m, g, Goal::IkeAuth);
        p.drive();
        assert!(p.member.is_established() && !p.member.is_closed());
        p.now += Duration::from_secs(700);
        p.member.handle_timeout(p.now, &mut p.rng);
        p.drive();
        assert!(p.member.is_closed());
        assert!(
            p.member_events
                .contains(&Event::Closed(CloseReason::Deleted))
        );
        assert!(p.gcks().is_closed());
        assert!(p.gcks_events.contains(&Event::Closed(CloseReason::Deleted)));
    }

    #[test]
    fn simultaneous_rekeys_leave_one_new_sa_on_both_sides() {
        let mut winners = Vec::new();
        for seed in 0..8u64 {
            let mut p = registered_pair();
            p.rng = SeededRandom::from_u64(100 + seed);
            let old_spis = p.member.spis();
            let old_keys = p.member.keys().unwrap().clone();
            let (to_gcks, to_member) = (p.to_gcks.len(), p.to_member.len());
            // Both requests are on the wire before either side sees the other's.
            p.member.rekey(p.now, &mut p.rng);
            let (now, g) = (p.now, p.gcks.as_mut().unwrap());
            g.rekey(now, &mut p.rng);
            p.drive();
            assert_rekeyed(&p, old_spis, &old_keys);
            // RFC 7296 2.8.2: two deletes, the old SA (by the winner) and the redundant
            // new SA (by its creator, the loser); nothing timed out.
            let deletes = headers(&p.to_gcks[to_gcks..])
                .into_iter()
                .chain(headers(&p.to_member[to_member..]))
                .filter(|h| h.exchange == ExchangeType::Informational && !h.flags.is_response())
                .count();
            assert_eq!(deletes, 2, "seed {seed}");
            // The survivor's original initiator is the side whose SPI is SPIi.
            let member_won = p.member.local_spis()[0] == p.member.spis().0;
            winners.push(member_won);
            registration_and_inband_rekey_work(&mut p);
        }
        // The seeds cover both outcomes of the nonce comparison.
        assert!(
            winners.contains(&true) && winners.contains(&false),
            "{winners:?}"
        );
    }

    /// A CREATE_CHILD_SA rekey request built by hand on the member's current SA.
    fn rekey_request(p: &mut Pair, proposal: Vec<Transform>, ke: KeId, mid: u32) -> Vec<Payload> {
        let s = p.member.suite().unwrap().clone();
        let keys = p.member.keys().unwrap();
        let to_gcks = SkKey::from_ike_keys(&s, keys, true).unwrap();
        let from_gcks = SkKey::from_ike_keys(&s, keys, false).unwrap();
        let (spi_i, spi_r) = p.member.spis();
        let method = gikev2_proto::crypto::KeMethod::from_id(ke).unwrap();
        let share = method.start(&mut p.rng).unwrap();
        let request = protect::seal(
            &to_gcks,
            &mut p.rng,
            &Header::new(
                spi_i,
                spi_r,
                ExchangeType::CreateChildSa,
                Flags::new(true, false),
                mid,
            ),
            &[
                Payload::Sa(SaPayload::new(vec![Proposal::new(
                    1,
                    ProtocolId::Ike,
                    vec![9; 8],
                    proposal,
                )])),
                Payload::Nonce(NoncePayload::new(vec![0x42; 32]).unwrap()),
                Payload::Ke(KePayload::new(ke, share.pub_key().to_vec())),
            ],
            None,
        )
        .unwrap();
        let g = p.gcks.as_mut().unwrap();
        g.handle(&request[0], p.now, &mut p.rng);
        let reply = g.poll_transmit().expect("an answer");
        let opened = protect::open(&from_gcks, &reply, &mut Reassembly::default())
            .unwrap()
            .unwrap();
        assert_eq!(opened.header.exchange, ExchangeType::CreateChildSa);
        assert!(opened.header.flags.is_response());
        opened.payloads
    }

    #[test]
    fn rekey_with_the_wrong_ke_group_gets_invalid_ke_payload() {
        let mut p = registered_pair();
        let ours = suite(KeId::Curve25519, None).transforms();
        let answer = rekey_request(&mut p, ours, KeId::Ecp256, 2);
        match answer.as_slice() {
            [Payload::Notify(n)] => {
                assert_eq!(n.ty, NotifyType::InvalidKePayload);
                assert_eq!(n.invalid_ke_group().unwrap(), KeId::Curve25519);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p.gcks().rekeys(), 0);
        assert!(p.gcks().is_established());
    }

    #[test]
    fn rekey_requiring_an_additional_key_exchange_is_refused() {
        let mut p = registered_pair();
        // RFC 9370 2.2.4 (IKE_FOLLOWUP_KE) is not implemented: ADDKE1 = ML-KEM-768
        // without NONE gets NO_PROPOSAL_CHOSEN; the SA stays.
        let with_addke = suite(KeId::Curve25519, Some(KeId::MlKem768)).transforms();
        let answer = rekey_request(&mut p, with_addke, KeId::Curve25519, 2);
        match answer.as_slice() {
            [Payload::Notify(n)] => assert_eq!(n.ty, NotifyType::NoProposalChosen),
            other => panic!("{other:?}"),
        }
        assert_eq!(p.gcks().rekeys(), 0);
        assert!(p.gcks().is_established());
        // With NONE allowed in the slot, the rekey goes through without it.
        let mut optional = suite(KeId::Curve25519, Some(KeId::MlKem768)).transforms();
        optional.push(Transform::new(TransformType::AddKe1, 0));
        let answer = rekey_request(&mut p, optional, KeId::Curve25519, 3);
        let Some(Payload::Sa(sa)) = answer.first() else {
            panic!("{answer:?}");
        };
        assert_eq!(sa.proposals[0].spi.len(), 8);
        assert!(
            sa.proposals[0]
                .transforms_of(TransformType::AddKe1)
                .next()
                .is_none()
        );
        assert_eq!(p.gcks().rekeys(), 1);
    }

    /// A KD with one TEK key (`[i; 36]` for TEK i) wrapped with `kwk`.
    fn kd_wrapped_with(kwk: &gikev2_proto::crypto::KeyWrapKey, teks: usize) -> KdPayload {
        (0..teks).fold(KdPayload::new(), |kd, i| {
            kd.with(
                GroupKeyBag::esp(0x1000 + i as u32).with_sa_key(WrappedKey::new(
                    0,
                    0,
                    kwk.wrap(&[i as u8; 36]).unwrap(),
                )),
            )
        })
    }

    /// The TEK keys of `kd` unwrapped with `kwk`.
    fn unwrapped(kd: &KdPayload, kwk: &gikev2_proto::crypto::KeyWrapKey) -> Vec<Vec<u8>> {
        kd.group_bags()
            .map(|b| match kwk.unwrap(&b.sa_keys[0].encrypted) {
                Ok(k) => k.as_bytes().to_vec(),
                Err(e) => panic!("TEK key does not unwrap: {e}"),
            })
            .collect()
    }

    /// RFC 9838 3.1.1 ("Every IKE SA ... will have its own GSK_w"): a GSA_INBAND_REKEY
    /// the GCKS queued behind its own IKE SA rekey leaves on the new SA, so its KD is
    /// wrapped again with the new SA's GSK_w, and the member's event hands it that key.
    #[test]
    fn inband_rekey_queued_behind_an_ike_rekey_is_wrapped_for_the_new_sa() {
        let mut p = registered_pair();
        let old_spis = p.member.spis();
        let (now, g) = (p.now, p.gcks.as_mut().unwrap());
        g.rekey(now, &mut p.rng);
        // Built for the current (old) SA; the window is busy with the rekey.
        let kd = kd_wrapped_with(&g.key_wrap_key().unwrap(), 2);
        g.inband_rekey(sample_gsa(2), kd.clone(), false, now, &mut p.rng);
        p.drive();
        assert_eq!((p.member.rekeys(), p.gcks().rekeys()), (1, 1));
        let carried = p
            .member_events
            .iter()
            .find_map(|e| match e {
                Event::InbandRekey { gsa, kd, kwk } if gsa == &sample_gsa(2) => {
                    Some((kd.clone(), kwk.clone().expect("GSK_w of the carrying SA")))
                }
                _ => None,
            })
            .expect("the GSA_INBAND_REKEY arrived");
        let (got, kwk) = (carried.0, carried.1.key().unwrap());
        assert_ne!(got, kd, "wrapped again");
        // It came on the new SA, with the new SA's key, which unwraps it.
        let inband = headers(&p.to_member)
            .into_iter()
            .find(|h| h.exchange == ExchangeType::GsaInbandRekey)
            .unwrap();
        assert_ne!((inband.spi_i, inband.spi_r), old_spis);
        assert_eq!((inband.spi_i, inband.spi_r), p.member.spis());
        assert_eq!(unwrapped(&got, &kwk), vec![vec![0u8; 36], vec![1u8; 36]]);
        assert_eq!(
            unwrapped(&got, &p.member.key_wrap_key().unwrap()),
            vec![vec![0u8; 36], vec![1u8; 36]]
        );
    }

    /// SPIi and SPIr of an IKE SA.
    type Spis = ([u8; 8], [u8; 8]);

    /// A registered pair where the GCKS starts an IKE SA rekey and the member a
    /// GSA_REGISTRATION at once: the pair, the old SPIs, and the two requests, neither
    /// delivered (both on the old SA).
    fn gcks_rekey_crossing_a_registration() -> (Pair, Spis, Vec<u8>, Vec<u8>) {
        let mut p = registered_pair();
        let old_spis = p.member.spis();
        let (now, g) = (p.now, p.gcks.as_mut().unwrap());
        g.rekey(now, &mut p.rng);
        let ccsa = g.poll_transmit().expect("CREATE_CHILD_SA request");
        p.member.register(request(None), now, &mut p.rng);
        let reg = p.member.poll_transmit().expect("GSA_REGISTRATION request");
        let h = Header::read_datagram(&reg).unwrap();
        assert_eq!(h.exchange, ExchangeType::GsaRegistration);
        assert_eq!((h.spi_i, h.spi_r), old_spis, "sent on the old SA");
        (p, old_spis, ccsa, reg)
    }

    /// A GSA_REGISTRATION that crosses the GCKS's IKE SA rekey on the wire is answered on
    /// the SA it came on (RFC 7296 2.8), with a KD wrapped with that SA's GSK_w (the
    /// request event's key, RFC 9838 3.1.1); the member unwraps it with the same key
    /// (the answer event's), although its current SA is the new one by then.
    #[test]
    fn registration_crossing_an_ike_rekey_is_wrapped_for_the_sa_it_came_on() {
        let (mut p, old_spis, ccsa, reg) = gcks_rekey_crossing_a_registration();
        let now = p.now;
        // The GCKS reads the registration, then the member answers the rekey and the
        // GCKS completes it, all before the GCKS's host decides.
        let g = p.gcks.as_mut().unwrap();
        g.handle(&reg, now, &mut p.rng);
        let kwk_old = match g.poll_event() {
            Some(Event::RegistrationRequested { kwk, .. }) => kwk.expect("GSK_w").key().unwrap(),
            other => panic!("{other:?}"),
        };
        p.member.handle(&ccsa, now, &mut p.rng);
        let ccsa_response = p.member.poll_transmit().expect("CREATE_CHILD_SA response");
        let g = p.gcks.as_mut().unwrap();
        g.handle(&ccsa_response, now, &mut p.rng);
        assert_eq!(g.rekeys(), 1);
        assert_ne!(g.spis(), old_spis);
        // The host wraps with the key the request event gave, then decides.
        let kd = kd_wrapped_with(&kwk_old, 1);
        g.decide(
            Decision::Accept {
                gsa: sample_gsa(1),
                kd: kd.clone(),
                transport_mode: false,
            },
            now,
            &mut p.rng,
        );
        p.drive();
        let answers = p
            .member_events
            .iter()
            .filter_map(|e| match e {
                Event::Registered { kd, kwk, .. } => Some((kd.clone(), kwk.clone())),
                _ => None,
            })
            .collect::<Vec<_>>();
        assert_eq!(answers.len(), 2, "the first registration and this one");
        let (got, kwk) = answers[1].clone();
        assert_eq!(got, kd);
        assert_eq!(p.member.rekeys(), 1);
        assert_eq!(
            unwrapped(&got, &kwk.expect("GSK_w of the carrying SA").key().unwrap()),
            vec![vec![0u8; 36]]
        );
        // The member's current SA is the new one, whose GSK_w differs.
        assert!(
            p.member
                .key_wrap_key()
                .unwrap()
                .unwrap(&got.group_bags().next().unwrap().sa_keys[0].encrypted)
                .is_err()
        );
    }

    /// RFC 7296 2.8: the member's GSA_REGISTRATION went out on the IKE SA the GCKS was
    /// rekeying and was lost; the GCKS deletes the old SA, and the member sends the
    /// request again on the new SA instead of waiting on a deleted one.
    #[test]
    fn request_unanswered_on_a_deleted_replaced_sa_goes_again_on_the_new_one() {
        let (mut p, old_spis, ccsa, _lost) = gcks_rekey_crossing_a_registration();
        let now = p.now;
        p.member.handle(&ccsa, now, &mut p.rng);
        let to_member = p.to_member.len();
        p.drive();
        assert_eq!((p.member.rekeys(), p.gcks().rekeys()), (1, 1));
        let sent = headers(&p.to_gcks);
        let again = sent
            .iter()
            .filter(|h| h.exchange == ExchangeType::GsaRegistration && !h.flags.is_response())
            .collect::<Vec<_>>();
        assert_eq!(again.len(), 1, "sent once more, on the new SA");
        assert_eq!((again[0].spi_i, again[0].spi_r), p.member.spis());
        assert_eq!(again[0].message_id, 0, "the new SA's first request");
        // The old SA's Delete came first, then the answer on the new SA.
        let from_gcks = headers(&p.to_member[to_member..]);
        assert!(
            from_gcks.iter().any(
                |h| h.exchange == ExchangeType::Informational && (h.spi_i, h.spi_r) == old_spis
            )
        );
        let answers = registered(&p.member_events);
        assert_eq!(answers.len(), 2, "the first registration and this one");
        assert_eq!(
            unwrapped(&answers[1].1, &p.member.key_wrap_key().unwrap()),
            vec![vec![0u8; 36], vec![1u8; 36]]
        );
    }
}
