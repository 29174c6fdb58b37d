//! The responder endpoint under load: COOKIE challenges (RFC 7296 2.6), half-open limits,
//! routing by SPI, and a legitimate member registering through a flood.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gikev2_proto::crypto::{IkeSuite, SecretBytes, SeededRandom};
use gikev2_proto::ike::{
    Decision, Endpoint, EndpointConfig, Event, Goal, IkeConfig, IkeSa, LocalAuth, PeerAuth,
    RegistrationRequest, SinglePeer,
};
use gikev2_proto::registry::{EncrId, KeId, KwaId, NotifyType, PrfId};
use gikev2_proto::wire::gsa::{GsaPayload, GsaPolicy};
use gikev2_proto::wire::id::IdPayload;
use gikev2_proto::wire::kd::{GroupKeyBag, KdPayload, WrappedKey};
use gikev2_proto::wire::{Message, TrafficSelector, Transform};

const GCKS: &str = "10.0.0.1:500";

fn suite() -> IkeSuite {
    IkeSuite::from_transforms(&[
        Transform::encr(EncrId::AesGcm16, Some(256)),
        Transform::prf(PrfId::HmacSha2_256),
        Transform::ke(KeId::Curve25519),
        Transform::kwa(KwaId::Kw5649_256),
    ])
    .unwrap()
}

fn config(local: &str) -> IkeConfig {
    let k = SecretBytes::from_slice(b"group psk");
    IkeConfig::new(
        vec![suite()],
        IdPayload::fqdn(local).unwrap(),
        LocalAuth::Psk(k.clone()),
        Arc::new(SinglePeer {
            id: None,
            auth: PeerAuth::Psk(k),
        }),
    )
}

fn endpoint(cfg: EndpointConfig, now: Instant, rng: &mut SeededRandom) -> Endpoint {
    Endpoint::new(config("gcks.example"), cfg, GCKS.parse().unwrap(), now, rng)
}

fn member(addr: SocketAddr, now: Instant, rng: &mut SeededRandom) -> IkeSa {
    let goal = Goal::GsaAuth(RegistrationRequest {
        group: IdPayload::key_id(b"g".to_vec()),
        sag: None,
        sender_ids: None,
    });
    IkeSa::initiate(
        config("member.example"),
        goal,
        addr,
        GCKS.parse().unwrap(),
        now,
        rng,
    )
    .unwrap()
}

fn spoofed(i: u32) -> SocketAddr {
    SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 500))
}

fn is_cookie(d: &[u8]) -> bool {
    Message::decode(d)
        .unwrap()
        .notify(NotifyType::Cookie)
        .is_some()
}

/// Sends the first datagram of a fresh initiator from `addr`; returns what came back.
fn probe(
    ep: &mut Endpoint,
    addr: SocketAddr,
    now: Instant,
    rng: &mut SeededRandom,
) -> Vec<Vec<u8>> {
    let mut m = member(addr, now, rng);
    let d = m.poll_transmit().unwrap();
    ep.handle(&d, addr, now, rng);
    let mut out = Vec::new();
    while let Some((to, r)) = ep.poll_transmit() {
        assert_eq!(to, addr);
        out.push(r);
    }
    out
}

/// Runs one member against the endpoint until it settles; returns the member's events.
fn register(
    ep: &mut Endpoint,
    addr: SocketAddr,
    now: Instant,
    rng: &mut SeededRandom,
) -> Vec<Event> {
    let mut m = member(addr, now, rng);
    let mut events = Vec::new();
    for _ in 0..50 {
        let mut moved = false;
        while let Some(d) = m.poll_transmit() {
            moved = true;
            ep.handle(&d, addr, now, rng);
        }
        while let Some((h, e)) = ep.poll_event() {
            moved = true;
            if matches!(e, Event::RegistrationRequested { .. }) {
                let kwk = ep.sa(h).unwrap().key_wrap_key().unwrap();
                let gsa = GsaPayload::new().with_gsa(
                    GsaPolicy::esp(7, TrafficSelector::any(false), TrafficSelector::any(false))
                        .with_transform(Transform::encr(EncrId::AesGcm16, Some(128)))
                        .with_transform(Transform::sn(gikev2_proto::registry::SnId::Seq32)),
                );
                let kd = KdPayload::new().with(GroupKeyBag::esp(7).with_sa_key(WrappedKey::new(
                    0,
                    0,
                    kwk.wrap(&[1; 20]).unwrap(),
                )));
                ep.decide(
                    h,
                    Decision::Accept {
                        gsa,
                        kd,
                        transport_mode: false,
                    },
                    now,
                    rng,
                );
            }
        }
        while let Some((to, d)) = ep.poll_transmit() {
            moved = true;
            if to == addr {
                m.handle(&d, now, rng);
            }
        }
        while let Some(e) = m.poll_event() {
            moved = true;
            events.push(e);
        }
        if !moved {
            return events;
        }
    }
    panic!("did not settle");
}

#[test]
fn spoofed_flood_triggers_cookies_and_a_real_member_still_registers() {
    let now = Instant::now();
    let mut rng = SeededRandom::from_u64(11);
    let mut ep = endpoint(EndpointConfig::default(), now, &mut rng);
    // 30 spoofed sources fill the half-open budget; they never answer.
    for i in 0..30 {
        let replies = probe(&mut ep, spoofed(i), now, &mut rng);
        assert!(!is_cookie(&replies[0]), "cookie before the threshold");
    }
    assert_eq!(ep.half_open(), 30);
    // Past the threshold, every new request gets a stateless COOKIE and no state.
    for i in 30..200 {
        let replies = probe(&mut ep, spoofed(i), now, &mut rng);
        assert_eq!(replies.len(), 1);
        assert!(is_cookie(&replies[0]));
    }
    assert_eq!(ep.len(), 30, "cookie answers keep no state");
    assert_eq!(ep.stats().cookies_sent, 170);
    // A real member answers the cookie and registers.
    let events = register(&mut ep, "192.0.2.7:500".parse().unwrap(), now, &mut rng);
    assert!(
        events.iter().any(|e| matches!(e, Event::Registered { .. })),
        "{events:?}"
    );
}

#[test]
fn per_address_threshold_applies_to_one_source_only() {
    let now = Instant::now();
    let mut rng = SeededRandom::from_u64(12);
    let mut ep = endpoint(EndpointConfig::default(), now, &mut rng);
    let busy: SocketAddr = "10.9.9.9:500".parse().unwrap();
    for _ in 0..5 {
        assert!(!is_cookie(&probe(&mut ep, busy, now, &mut rng)[0]));
    }
    assert!(is_cookie(&probe(&mut ep, busy, now, &mut rng)[0]));
    assert!(!is_cookie(
        &probe(&mut ep, "10.9.9.10:500".parse().unwrap(), now, &mut rng)[0]
    ));
}

#[test]
fn forged_cookie_is_not_accepted() {
    let now = Instant::now();
    let mut rng = SeededRandom::from_u64(13);
    let cfg = EndpointConfig {
        cookie_threshold: 0,
        ..Default::default()
    };
    let mut ep = endpoint(cfg, now, &mut rng);
    let addr: SocketAddr = "10.2.0.1:500".parse().unwrap();
    let mut m = member(addr, now, &mut rng);
    let first = m.poll_transmit().unwrap();
    ep.handle(&first, addr, now, &mut rng);
    let (_, cookie_reply) = ep.poll_transmit().unwrap();
    // Corrupt the cookie the member will echo.
    let mut forged = cookie_reply.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0xff;
    m.handle(&forged, now, &mut rng);
    let retry = m
        .poll_transmit()
        .expect("member retries with the (forged) cookie");
    ep.handle(&retry, addr, now, &mut rng);
    let (_, answer) = ep.poll_transmit().unwrap();
    assert!(is_cookie(&answer), "a forged cookie gets a fresh challenge");
    assert_eq!(ep.len(), 0);
    assert_eq!(ep.stats().cookies_rejected, 1);
    // The genuine cookie works.
    m.handle(&answer, now, &mut rng);
    let retry = m.poll_transmit().unwrap();
    ep.handle(&retry, addr, now, &mut rng);
    assert_eq!(ep.len(), 1);
}

#[test]
fn cookie_from_the_previous_secret_is_accepted_but_not_older() {
    let addr: SocketAddr = "10.3.0.1:500".parse().unwrap();
    // Challenge at t0+1 s; answer after one rotation (accepted) or two (refused).
    for (age, accepted) in [
        (Duration::from_secs(130), true),
        (Duration::from_secs(250), false),
    ] {
        let t0 = Instant::now();
        let mut rng = SeededRandom::from_u64(14);
        let cfg = EndpointConfig {
            cookie_threshold: 0,
            ..Default::default()
        };
        let mut ep = endpoint(cfg, t0, &mut rng);
        let mut m = member(addr, t0, &mut rng);
        let first = m.poll_transmit().unwrap();
        ep.handle(&first, addr, t0 + Duration::from_secs(1), &mut rng);
        let (_, challenge) = ep.poll_transmit().unwrap();
        m.handle(&challenge, t0, &mut rng);
        let retry = m.poll_transmit().unwrap();
        ep.handle(&retry, addr, t0 + age, &mut rng);
        while ep.poll_transmit().is_some() {}
        assert_eq!(ep.len() == 1, accepted, "cookie aged {age:?}");
    }
}

#[test]
fn half_open_sas_expire_and_are_removed() {
    let now = Instant::now();
    let mut rng = SeededRandom::from_u64(15);
    let mut ep = endpoint(EndpointConfig::default(), now, &mut rng);
    for i in 0..10 {
        probe(&mut ep, spoofed(i), now, &mut rng);
    }
    assert_eq!(ep.len(), 10);
    let t = ep.poll_timeout().expect("half-open timers are armed");
    assert!(t <= now + Duration::from_secs(30));
    ep.handle_timeout(now + Duration::from_secs(31));
    let mut closed = 0;
    while let Some((_, e)) = ep.poll_event() {
        if matches!(e, Event::Closed(_)) {
            closed += 1;
        }
    }
    assert_eq!(closed, 10);
    assert_eq!(ep.len(), 0);
    assert_eq!(ep.half_open(), 0);
    assert_eq!(ep.poll_timeout(), None);
}
