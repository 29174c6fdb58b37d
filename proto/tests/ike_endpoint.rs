//! The responder endpoint under load: COOKIE challenges (RFC 7296 2.6), half-open limits,
//! routing by SPI, and a legitimate member registering through a flood.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gikev2_proto::crypto::{IkeSuite, SecretBytes, SeededRandom};
use gikev2_proto::ike::{
    Datagram, Decision, Endpoint, EndpointConfig, Event, Goal, IkeConfig, IkeSa, LocalAuth,
    NatStatus, PeerAuth, RegistrationRequest, SaHandle, SinglePeer,
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
    member_to(addr, GCKS.parse().unwrap(), now, rng)
}

/// A member at `addr` that sends its IKE_SA_INIT to `gcks`.
fn member_to(addr: SocketAddr, gcks: SocketAddr, now: Instant, rng: &mut SeededRandom) -> IkeSa {
    let goal = Goal::GsaAuth(RegistrationRequest {
        group: IdPayload::key_id(b"g".to_vec()),
        sag: None,
        sender_ids: None,
    });
    IkeSa::initiate(config("member.example"), goal, addr, gcks, now, rng).unwrap()
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
    drive(ep, &mut m, &mut |_| addr, now, rng).events
}

/// What one [`drive`] saw.
#[derive(Default)]
struct Driven {
    /// The member's events.
    events: Vec<Event>,
    /// Datagrams as the member sent them (its view of the path).
    member_sent: Vec<Datagram>,
    /// Datagrams as the endpoint sent them.
    gcks_sent: Vec<Datagram>,
    /// The handle of the member's SA in the endpoint.
    handle: Option<SaHandle>,
}

/// Runs the member `m` against the endpoint until both settle, accepting its registration.
/// `source` is the path between them: the address the endpoint sees a member datagram
/// come from (a NAT in front of the member rewrites it); the datagram reaches the endpoint
/// at the address the member sent it to. Endpoint datagrams to an address `source` gave
/// are delivered back to the member.
fn drive(
    ep: &mut Endpoint,
    m: &mut IkeSa,
    source: &mut dyn FnMut(&Datagram) -> SocketAddr,
    now: Instant,
    rng: &mut SeededRandom,
) -> Driven {
    let mut seen = Driven::default();
    let mut sources = Vec::new();
    for _ in 0..50 {
        let mut moved = false;
        while let Some(d) = m.poll_datagram() {
            moved = true;
            let from = source(&d);
            sources.push(from);
            ep.handle_at(&d.data, from, d.remote, now, rng);
            seen.member_sent.push(d);
        }
        while let Some((h, e)) = ep.poll_event() {
            moved = true;
            seen.handle = Some(h);
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
        while let Some(d) = ep.poll_datagram() {
            moved = true;
            if sources.contains(&d.remote) {
                m.handle(&d.data, now, rng);
            }
            seen.gcks_sent.push(d);
        }
        while let Some(e) = m.poll_event() {
            moved = true;
            seen.events.push(e);
        }
        if !moved {
            return seen;
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
    ep.handle_timeout(now + Duration::from_secs(31), &mut rng);
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

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// R002 (RFC 9838 2.1.1 makes RFC 7296 2.23 a MUST for the registration IKE SA): a NAT in
/// front of the member. The member sees its own address hashed wrong and moves to port
/// 4500 after IKE_SA_INIT; the GCKS sees the member behind a NAT and follows it to the
/// new mapping, answers there from port 4500, and sends its own requests there later. A
/// replayed old request from elsewhere gets its answer where it came from but does not
/// move the SA.
#[test]
fn a_member_behind_a_nat_moves_to_port_4500_and_the_gcks_follows_it() {
    let now = Instant::now();
    let mut rng = SeededRandom::from_u64(21);
    let mut ep = endpoint(EndpointConfig::default(), now, &mut rng);
    let inside = addr("192.168.1.2:40000");
    let gcks_848 = addr("10.0.0.1:848");
    let gcks_4500 = addr("10.0.0.1:4500");
    // The NAT maps each of the member's flows to its own public port.
    let (via_848, via_4500) = (addr("198.51.100.7:61000"), addr("198.51.100.7:61001"));
    let mut nat = |d: &Datagram| {
        if d.remote.port() == 4500 {
            via_4500
        } else {
            via_848
        }
    };
    let mut m = member_to(inside, gcks_848, now, &mut rng);
    let seen = drive(&mut ep, &mut m, &mut nat, now, &mut rng);
    assert!(
        seen.events
            .iter()
            .any(|e| matches!(e, Event::Registered { .. })),
        "{:?}",
        seen.events
    );
    // The member: behind a NAT, IKE_SA_INIT to 848, everything after it to 4500.
    assert_eq!(
        m.nat(),
        Some(NatStatus {
            peer_behind: false,
            local_behind: true
        })
    );
    assert_eq!(m.remote(), gcks_4500);
    let to: Vec<SocketAddr> = seen.member_sent.iter().map(|d| d.remote).collect();
    assert_eq!(to[0], gcks_848);
    assert!(
        to.len() >= 2 && to[1..].iter().all(|a| *a == gcks_4500),
        "{to:?}"
    );
    // The GCKS: the member behind a NAT; the IKE_SA_INIT answer went back to the first
    // mapping from 848, everything after it to the second from 4500.
    let h = seen.handle.unwrap();
    let sa = ep.sa(h).unwrap();
    assert_eq!(
        sa.nat(),
        Some(NatStatus {
            peer_behind: true,
            local_behind: false
        })
    );
    assert_eq!(
        (sa.remote(), sa.local(), sa.origin()),
        (via_4500, gcks_4500, via_848)
    );
    let paths: Vec<(SocketAddr, SocketAddr)> =
        seen.gcks_sent.iter().map(|d| (d.remote, d.local)).collect();
    assert_eq!(paths[0], (via_848, gcks_848));
    assert!(
        paths.len() >= 2 && paths[1..].iter().all(|p| *p == (via_4500, gcks_4500)),
        "{paths:?}"
    );
    // A copy of the GSA_AUTH request replayed from elsewhere: the cached answer goes
    // there, the SA stays where it is (RFC 7296 2.23: only a new message moves it).
    let replayed = &seen.member_sent[1];
    let elsewhere = addr("203.0.113.66:7000");
    ep.handle_at(&replayed.data, elsewhere, gcks_4500, now, &mut rng);
    let answers: Vec<Datagram> = std::iter::from_fn(|| ep.poll_datagram()).collect();
    assert!(!answers.is_empty());
    assert!(
        answers
            .iter()
            .all(|d| d.remote == elsewhere && d.local == gcks_4500)
    );
    assert_eq!(ep.sa(h).unwrap().remote(), via_4500);
    // The GCKS's own request (closing the SA) goes to the member's current mapping.
    ep.with_sa(h, now, |sa| sa.delete(now, &mut rng));
    let d = ep.poll_datagram().unwrap();
    assert_eq!((d.remote, d.local), (via_4500, gcks_4500));
}

/// Without a NAT the hashes match on both sides and nothing moves: the member stays on
/// the port it chose (RFC 9838 2.1.1: the port used must not change the behaviour).
#[test]
fn without_a_nat_the_ike_sa_stays_on_its_port() {
    let now = Instant::now();
    let mut rng = SeededRandom::from_u64(22);
    let mut ep = endpoint(EndpointConfig::default(), now, &mut rng);
    let me = addr("192.0.2.9:40000");
    let gcks_848 = addr("10.0.0.1:848");
    let mut m = member_to(me, gcks_848, now, &mut rng);
    let seen = drive(&mut ep, &mut m, &mut |_| me, now, &mut rng);
    assert!(
        seen.events
            .iter()
            .any(|e| matches!(e, Event::Registered { .. }))
    );
    assert_eq!(m.nat(), Some(NatStatus::default()));
    assert_eq!(
        ep.sa(seen.handle.unwrap()).unwrap().nat(),
        Some(NatStatus::default())
    );
    assert!(seen.member_sent.iter().all(|d| d.remote == gcks_848));
    assert!(
        seen.gcks_sent
            .iter()
            .all(|d| (d.remote, d.local) == (me, gcks_848))
    );
}

/// The GCKS behind a NAT (a port forward): the member sees the GCKS's hash mismatch and
/// moves to port 4500; the GCKS knows it is behind a NAT, follows that one move to 4500
/// (RFC 7296 2.23: all subsequent traffic on port 4500) but no later change of the
/// member's address ("A host behind a NAT SHOULD NOT do this type of dynamic address
/// update"), answering each request where it came from.
#[test]
fn a_gcks_behind_a_nat_follows_the_move_to_4500_and_nothing_after() {
    let now = Instant::now();
    let mut rng = SeededRandom::from_u64(23);
    let mut ep = endpoint(EndpointConfig::default(), now, &mut rng);
    let public_848 = addr("203.0.113.1:848");
    let public_4500 = addr("203.0.113.1:4500");
    let (flow_848, flow_4500) = (addr("192.0.2.9:40000"), addr("192.0.2.9:40001"));
    let mut m = member_to(flow_848, public_848, now, &mut rng);
    // The port forward rewrites the destination: the GCKS receives at 10.0.0.1.
    let mut received_at = Vec::new();
    for _ in 0..50 {
        let mut moved = false;
        while let Some(d) = m.poll_datagram() {
            moved = true;
            let (from, to) = if d.remote == public_4500 {
                (flow_4500, addr("10.0.0.1:4500"))
            } else {
                (flow_848, addr("10.0.0.1:848"))
            };
            received_at.push(to);
            ep.handle_at(&d.data, from, to, now, &mut rng);
        }
        while let Some((h, e)) = ep.poll_event() {
            moved = true;
            if matches!(e, Event::RegistrationRequested { .. }) {
                ep.decide(
                    h,
                    Decision::Refuse(NotifyType::AuthorizationFailed),
                    now,
                    &mut rng,
                );
            }
        }
        while let Some(d) = ep.poll_datagram() {
            moved = true;
            m.handle(&d.data, now, &mut rng);
        }
        while m.poll_event().is_some() {
            moved = true;
        }
        if !moved {
            break;
        }
    }
    assert_eq!(
        m.nat(),
        Some(NatStatus {
            peer_behind: true,
            local_behind: false
        })
    );
    assert_eq!(m.remote(), public_4500);
    assert_eq!(received_at[0], addr("10.0.0.1:848"));
    let h = SaHandle(1);
    let sa = ep.sa(h).unwrap();
    assert_eq!(
        sa.nat(),
        Some(NatStatus {
            peer_behind: false,
            local_behind: true
        })
    );
    assert_eq!(
        (sa.remote(), sa.local()),
        (flow_4500, addr("10.0.0.1:4500"))
    );
    // The member's address changes; being behind a NAT, the GCKS answers there but stays.
    let moved_to = addr("192.0.2.9:40002");
    m.delete(now, &mut rng);
    let d = m.poll_datagram().unwrap();
    ep.handle_at(&d.data, moved_to, addr("10.0.0.1:4500"), now, &mut rng);
    let answer = ep.poll_datagram().unwrap();
    assert_eq!(answer.remote, moved_to);
}

/// RFC 7296 2.18 through the endpoint: the rekeyed SA keeps its handle (what a runtime
/// tracks), the index follows its new SPIs, and the replaced SPIs stop routing once the
/// old SA is deleted. Rekeys from both sides in turn.
#[test]
fn rekeyed_ike_sa_keeps_its_handle_and_routes_by_its_new_spis() {
    let now = Instant::now();
    let mut rng = SeededRandom::from_u64(23);
    let mut ep = endpoint(EndpointConfig::default(), now, &mut rng);
    let addr: SocketAddr = "192.0.2.50:500".parse().unwrap();
    let mut m = member(addr, now, &mut rng);
    let first = drive(&mut ep, &mut m, &mut |_| addr, now, &mut rng);
    let h = first.handle.expect("an SA");
    assert!(m.is_established());
    let mut seen = vec![m.spis()];
    // The member rekeys, then the GCKS does (through with_sa, as a runtime would).
    for gcks_turn in [false, true] {
        if gcks_turn {
            ep.with_sa(h, now, |sa| sa.rekey(now, &mut rng));
            // `drive` answers only what the member sent first; hand it the request.
            while let Some(d) = ep.poll_datagram() {
                m.handle(&d.data, now, &mut rng);
            }
        } else {
            m.rekey(now, &mut rng);
        }
        let d = drive(&mut ep, &mut m, &mut |_| addr, now, &mut rng);
        let sa = ep.sa(h).expect("same handle");
        assert_eq!(sa.spis(), m.spis());
        assert_eq!(sa.keys(), m.keys());
        assert!(!seen.contains(&m.spis()));
        seen.push(m.spis());
        assert_eq!(sa.local_spis().len(), 1, "old SA deleted");
        assert_eq!(ep.len(), 1);
        assert!(
            d.events.is_empty(),
            "nothing for the member's host: {:?}",
            d.events
        );
        // Even new events come from the same handle.
        while let Some((eh, _)) = ep.poll_event() {
            assert_eq!(eh, h);
        }
    }
    // A registration over the twice-rekeyed SA reaches the same handle.
    m.register(
        RegistrationRequest {
            group: IdPayload::key_id(b"g2".to_vec()),
            sag: None,
            sender_ids: None,
        },
        now,
        &mut rng,
    );
    let d = drive(&mut ep, &mut m, &mut |_| addr, now, &mut rng);
    assert_eq!(d.handle, Some(h));
    assert!(
        d.events
            .iter()
            .any(|e| matches!(e, Event::Registered { .. }))
    );
    // A datagram for the first SPIs is no longer routed.
    let before = ep.stats().unroutable;
    let stale = first.member_sent.last().unwrap().data.clone();
    ep.handle_at(&stale, addr, GCKS.parse().unwrap(), now, &mut rng);
    assert_eq!(ep.stats().unroutable, before + 1);
}
