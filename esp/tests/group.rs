//! A small group through the public API only: two senders share one multi-sender SA with
//! Sender-ID IVs, a receiver keeps per-sender replay windows, then the GCKS rolls the group to
//! a new SA with ATD/DTD (RFC 5374 4.2.1, RFC 9838 4.4.3.1.1).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gikev2_esp::{
    Action, AddrRange, Decision, Direction, DropReason, Engine, EspAlgorithm, Event, KeyMaterial,
    Mode, PolicyId, ReplayPolicy, SaConfig, SadKey, Selector, SenderIds, SenderKey, SnTransform,
    SpdEntry, Tunnel, Verdict,
};

const GROUP: [u8; 4] = [239, 192, 0, 7];
const POLICY: PolicyId = PolicyId(7);

fn ip(b: [u8; 4]) -> IpAddr {
    IpAddr::from(b)
}

fn udp(src: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 16;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&GROUP);
    p[20..22].copy_from_slice(&5004u16.to_be_bytes());
    p[22..24].copy_from_slice(&5004u16.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

/// The policy and keys a GSA payload would carry for one Data-Security SA.
fn gsa(spi: u32, key_seed: u8) -> SaConfig {
    let alg = EspAlgorithm::AesGcm16 { key_bits: 256 };
    let mut c = SaConfig::new(
        spi,
        Direction::Inbound,
        SadKey::SpiDst {
            spi,
            dst: ip(GROUP),
        },
        Mode::Tunnel(Tunnel::preserving(false)),
        alg,
        KeyMaterial::new(vec![key_seed; alg.keymat_len()]),
        SnTransform::Unspecified32,
    );
    c.atd = Duration::from_secs(5);
    c.dtd = Duration::from_secs(10);
    c.policy = Some(POLICY);
    c.inbound_selectors = vec![Selector::addresses(
        AddrRange::prefix(ip([10, 0, 0, 0]), 8),
        AddrRange::single(ip(GROUP)),
    )];
    c
}

fn sender() -> Engine {
    let e = Engine::default();
    e.spd().replace(vec![SpdEntry {
        selectors: vec![Selector::addresses(
            AddrRange::any(false),
            AddrRange::prefix(ip([239, 192, 0, 0]), 16),
        )],
        action: Action::Protect(POLICY),
    }]);
    e
}

fn install_outbound(e: &Engine, spi: u32, seed: u8, sender_id: u32, now: Instant) {
    let mut c = gsa(spi, seed);
    c.direction = Direction::Outbound;
    c.sender_ids = Some(SenderIds {
        bits: 8,
        ids: vec![sender_id],
    });
    e.install(c, now).unwrap();
}

fn install_inbound(e: &Engine, spi: u32, seed: u8, now: Instant) -> gikev2_esp::SaId {
    let mut c = gsa(spi, seed);
    // Local choice (RFC 9838 2.6): per-sender windows keyed by source address.
    c.replay = ReplayPolicy::PerSender {
        window: 1024,
        key: SenderKey::SourceAddress,
        max_senders: 64,
    };
    e.install(c, now).unwrap().id()
}

fn send(e: &Engine, packet: &[u8], now: Instant) -> Option<(u32, Vec<u8>)> {
    let Decision::Protect(sa) = e.classify(packet, now) else {
        return None;
    };
    let mut buf = [0u8; 1600];
    let out = e.seal(&sa, packet, &mut buf, now).ok()?;
    Some((sa.spi(), out.to_vec()))
}

fn recv(e: &Engine, packet: &[u8], now: Instant) -> Result<Vec<u8>, DropReason> {
    let mut buf = [0u8; 1600];
    match e.open(packet, &mut buf, now) {
        Verdict::Deliver(p) => Ok(p.to_vec()),
        Verdict::Drop(r) => Err(r),
    }
}

#[test]
fn two_senders_one_sa_then_rollover() {
    let t0 = Instant::now();
    let (s1, s2) = ([10, 1, 0, 1], [10, 1, 0, 2]);
    let a = sender();
    let b = sender();
    let r = Engine::default();
    // Registration: senders install outbound only, the receiver inbound only (RFC 9838
    // 2.3.3). The first SA's ATD has passed by the time traffic starts.
    install_outbound(&a, 0x1111, 1, 1, t0);
    install_outbound(&b, 0x1111, 1, 2, t0);
    let old_in = install_inbound(&r, 0x1111, 1, t0);
    let t = t0 + Duration::from_secs(5);
    let mut ivs = HashSet::new();
    for i in 0..50u8 {
        for (e, src) in [(&a, s1), (&b, s2)] {
            let p = udp(src, &[i; 100]);
            let (spi, wire) = send(e, &p, t).unwrap();
            assert_eq!(spi, 0x1111);
            assert!(
                ivs.insert(wire[28..36].to_vec()),
                "IV reuse on a shared key"
            );
            assert_eq!(recv(&r, &wire, t), Ok(p));
            // Replays are caught per sender even though both senders use SN i+1.
            assert_eq!(recv(&r, &wire, t), Err(DropReason::ReplayDuplicate));
        }
    }

    // Rekey at t1: new SA 0x2222 with ATD 5 s; old SA deleted with DTD 10 s.
    let t1 = t0 + Duration::from_secs(100);
    install_outbound(&a, 0x2222, 2, 1, t1);
    install_outbound(&b, 0x2222, 2, 2, t1);
    install_inbound(&r, 0x2222, 2, t1);
    assert!(r.delete(old_in, t1));
    // Senders keep the trailing-edge SA until ATD has passed...
    let (spi, late) = send(&a, &udp(s1, b"late"), t1 + Duration::from_secs(4)).unwrap();
    assert_eq!(spi, 0x1111);
    // ...then switch to the leading edge.
    let (spi, fresh) = send(&a, &udp(s1, b"fresh"), t1 + Duration::from_secs(5)).unwrap();
    assert_eq!(spi, 0x2222);
    // The receiver accepts both while the old SA lingers (DTD).
    let t2 = t1 + Duration::from_secs(9);
    assert_eq!(recv(&r, &fresh, t2), Ok(udp(s1, b"fresh")));
    assert_eq!(recv(&r, &late, t2), Ok(udp(s1, b"late")));
    // After DTD the old SA is gone.
    assert_eq!(r.poll_timeout(), Some(t1 + Duration::from_secs(10)));
    r.handle_timeout(t1 + Duration::from_secs(10));
    let (_, very_late) = {
        // A sender that missed the rekey still uses the old SA.
        let c = sender();
        install_outbound(&c, 0x1111, 1, 3, t0);
        send(&c, &udp([10, 1, 0, 3], b"stale"), t2).unwrap()
    };
    assert_eq!(recv(&r, &very_late, t2), Err(DropReason::NoSa));
    assert_eq!(r.sa_count(), 1);
    assert_eq!(r.poll_event(), None);
}

#[test]
fn concurrent_sealers_get_unique_sequence_numbers_and_ivs() {
    let t0 = Instant::now();
    let t = t0 + Duration::from_secs(5);
    let e = Arc::new(sender());
    install_outbound(&e, 0x3333, 3, 9, t0);
    let r = Engine::default();
    let mut c = gsa(0x3333, 3);
    c.replay = ReplayPolicy::PerSa { window: 8192 };
    r.install(c, t0).unwrap();
    let wires: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u8)
            .map(|k| {
                let e = e.clone();
                s.spawn(move || {
                    (0..1000)
                        .map(|i| send(&e, &udp([10, 0, 0, k], &[i as u8; 40]), t).unwrap().1)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let sns: HashSet<_> = wires.iter().map(|w| w[24..28].to_vec()).collect();
    let ivs: HashSet<_> = wires.iter().map(|w| w[28..36].to_vec()).collect();
    assert_eq!((sns.len(), ivs.len()), (4000, 4000));
    for w in &wires {
        assert!(recv(&r, w, t).is_ok());
    }
}

#[test]
fn soft_lifetime_event_reaches_the_installer() {
    let t = Instant::now();
    let r = Engine::default();
    let mut c = gsa(0x4444, 4);
    c.owner = 42;
    c.lifetimes.soft.seconds = Some(3600);
    c.lifetimes.hard.seconds = Some(4000);
    let id = r.install(c, t).unwrap().id();
    r.handle_timeout(t + Duration::from_secs(3600));
    assert_eq!(
        r.poll_event(),
        Some(Event::Expired {
            id,
            spi: 0x4444,
            direction: Direction::Inbound,
            owner: 42,
            hard: false
        })
    );
    assert_eq!(r.poll_timeout(), Some(t + Duration::from_secs(4000)));
}
