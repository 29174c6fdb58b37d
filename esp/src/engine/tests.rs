use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::ip::test_packets::{udp4, udp6};
use crate::replay::ReplayPolicy;
use crate::sa::{
    EspAlgorithm, KeyMaterial, Lifetimes, Limits, SaStats, SenderIds, SnTransform, Tunnel,
};
use crate::sad::SadKey;
use crate::spd::{AddrRange, PolicyId, Selector, SpdEntry};

const GROUP: [u8; 4] = [239, 1, 1, 1];
const S1: [u8; 4] = [10, 0, 0, 1];
const S2: [u8; 4] = [10, 0, 0, 2];
const GCM128: EspAlgorithm = EspAlgorithm::AesGcm16 { key_bits: 128 };

fn ip(b: [u8; 4]) -> IpAddr {
    IpAddr::from(b)
}

fn keys(alg: EspAlgorithm, seed: u8) -> KeyMaterial {
    KeyMaterial::new(
        (0..alg.keymat_len())
            .map(|i| seed.wrapping_add(i as u8))
            .collect::<Vec<u8>>(),
    )
}

fn group_sa(spi: u32, dir: Direction, seed: u8) -> SaConfig {
    SaConfig::new(
        spi,
        dir,
        SadKey::SpiDst {
            spi,
            dst: ip(GROUP),
        },
        Mode::Tunnel(Tunnel::preserving(false)),
        GCM128,
        keys(GCM128, seed),
        SnTransform::Sequential32,
    )
}

fn pair(cfg: &SaConfig, t: Instant) -> (Engine, SaHandle, Engine) {
    let tx = Engine::default();
    let mut out = cfg.clone();
    out.direction = Direction::Outbound;
    let h = tx.install(out, t).unwrap();
    let rx = Engine::default();
    let mut inb = cfg.clone();
    inb.direction = Direction::Inbound;
    rx.install(inb, t).unwrap();
    (tx, h, rx)
}

fn seal_vec(e: &Engine, h: &SaHandle, p: &[u8], t: Instant) -> Result<Vec<u8>, SealError> {
    let mut buf = [0u8; 2048];
    e.seal(h, p, &mut buf, t).map(|o| o.to_vec())
}

fn open_vec(e: &Engine, p: &[u8], t: Instant) -> Result<Vec<u8>, DropReason> {
    let mut buf = [0u8; 2048];
    match e.open(p, &mut buf, t) {
        Verdict::Deliver(d) => Ok(d.to_vec()),
        Verdict::Drop(r) => Err(r),
    }
}

#[test]
fn tunnel_with_address_preservation_round_trip() {
    let t = Instant::now();
    let (tx, h, rx) = pair(&group_sa(0x1000, Direction::Outbound, 1), t);
    let inner = udp4(S1, GROUP, 4000, 5000, b"multicast payload");
    let sealed = seal_vec(&tx, &h, &inner, t).unwrap();
    let info = ip::parse(&sealed).unwrap();
    // RFC 5374 3.1: both addresses copied from the inner header.
    assert_eq!((info.src, info.dst), (ip(S1), ip(GROUP)));
    assert_eq!(info.protocol, proto::ESP);
    assert_eq!(ip::ipv4_checksum(&sealed[..20]), 0);
    assert_eq!(&sealed[20..24], &0x1000u32.to_be_bytes());
    assert_eq!(&sealed[24..28], &1u32.to_be_bytes());
    // Inner TTL kept for multicast scope.
    assert_eq!(sealed[8], inner[8]);
    assert_eq!(open_vec(&rx, &sealed, t).unwrap(), inner);
    // The ESP-only variant carries the same SA output format.
    let mut buf = [0u8; 2048];
    let esp = tx.seal_esp(&h, &inner, &mut buf, t).unwrap();
    assert_eq!((esp.src, esp.dst), (ip(S1), ip(GROUP)));
    let esp = esp.esp.to_vec();
    let mut out = [0u8; 2048];
    assert_eq!(
        rx.open_esp(ip(S1), ip(GROUP), &esp, &mut out, t),
        Verdict::Deliver(&mut inner.clone()[..])
    );
    // SAs installed while traffic flows are seen at once.
    let third = seal_vec(&tx, &h, &inner, t).unwrap();
    assert_eq!(open_vec(&rx, &third, t), Ok(inner.clone()));
    let st = rx.stats(SaId(1)).unwrap();
    assert_eq!((st.packets, st.bytes), (3, 3 * inner.len() as u64));
    let mut c2 = group_sa(0x2000, Direction::Inbound, 2);
    c2.lookup = SadKey::SpiDst {
        spi: 0x2000,
        dst: ip(GROUP),
    };
    rx.install(c2.clone(), t).unwrap();
    c2.direction = Direction::Outbound;
    let h2 = tx.install(c2, t).unwrap();
    let s2 = seal_vec(&tx, &h2, &inner, t).unwrap();
    let esp2 = &s2[20..];
    let mut out = [0u8; 2048];
    assert_eq!(
        rx.open_esp(ip(S1), ip(GROUP), esp2, &mut out, t),
        Verdict::Deliver(&mut inner.clone()[..])
    );
    assert_eq!(
        rx.sad()
            .lookup_with(0x2000, ip(GROUP), ip(S1), |sa| sa.spi()),
        Some(0x2000)
    );
}

#[test]
fn tunnel_v6_and_endpoint_tunnel() {
    let t = Instant::now();
    let g: IpAddr = "ff3e::8000:1".parse().unwrap();
    let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let mut cfg = group_sa(7, Direction::Outbound, 3);
    cfg.lookup = SadKey::SpiDst { spi: 7, dst: g };
    cfg.mode = Mode::Tunnel(Tunnel::preserving(true));
    cfg.algorithm = EspAlgorithm::ChaCha20Poly1305;
    cfg.keys = keys(cfg.algorithm, 3);
    let (tx, h, rx) = pair(&cfg, t);
    let IpAddr::V6(g6) = g else { unreachable!() };
    let inner = udp6(src, g6, 1, 2, &[7u8; 333]);
    let sealed = seal_vec(&tx, &h, &inner, t).unwrap();
    let info = ip::parse(&sealed).unwrap();
    assert_eq!((info.src, info.dst), (IpAddr::V6(src), g));
    assert_eq!(sealed[7], inner[7], "hop limit copied");
    assert_eq!(open_vec(&rx, &sealed, t).unwrap(), inner);

    // Plain tunnel between gateways: outer addresses are the endpoints.
    let mut cfg = group_sa(8, Direction::Outbound, 4);
    let (gw_a, gw_b) = (ip([192, 0, 2, 1]), ip([192, 0, 2, 2]));
    cfg.lookup = SadKey::Spi(8);
    cfg.mode = Mode::Tunnel(Tunnel {
        local: gw_a,
        remote: gw_b,
        preserve_src: false,
        preserve_dst: false,
    });
    let (tx, h, rx) = pair(&cfg, t);
    let inner = udp4(S1, [10, 9, 9, 9], 1, 2, b"x");
    let sealed = seal_vec(&tx, &h, &inner, t).unwrap();
    let info = ip::parse(&sealed).unwrap();
    assert_eq!((info.src, info.dst), (gw_a, gw_b));
    assert_eq!(sealed[8], DEFAULT_TTL);
    assert_eq!(open_vec(&rx, &sealed, t).unwrap(), inner);
    // IPv6 inner into an IPv4 tunnel works without preservation...
    let v6 = udp6(src, "2001:db8::2".parse().unwrap(), 1, 2, b"y");
    let sealed = seal_vec(&tx, &h, &v6, t).unwrap();
    assert_eq!(sealed[0] >> 4, 4);
    assert_eq!(open_vec(&rx, &sealed, t).unwrap(), v6);
    // ...but never with address preservation (RFC 5374 4.1.2).
    let (tx4, h4, _) = pair(&group_sa(9, Direction::Outbound, 5), t);
    assert_eq!(seal_vec(&tx4, &h4, &v6, t), Err(SealError::FamilyMismatch));
}

#[test]
fn transport_mode_round_trip_v4_v6() {
    let t = Instant::now();
    for alg in [
        GCM128,
        EspAlgorithm::AesCbcHmacSha256 { key_bits: 128 },
        EspAlgorithm::AesGmac { key_bits: 128 },
    ] {
        let mut cfg = group_sa(0x42, Direction::Outbound, 9);
        cfg.mode = Mode::Transport;
        cfg.algorithm = alg;
        cfg.keys = keys(alg, 9);
        let (tx, h, rx) = pair(&cfg, t);
        let inner = udp4(S1, GROUP, 1234, 5678, b"transport");
        let sealed = seal_vec(&tx, &h, &inner, t).unwrap();
        let info = ip::parse(&sealed).unwrap();
        assert_eq!(info.protocol, proto::ESP);
        assert_eq!(info.total_len, sealed.len());
        assert_eq!(ip::ipv4_checksum(&sealed[..20]), 0);
        assert_eq!(open_vec(&rx, &sealed, t).unwrap(), inner, "{alg:?}");
        // Without the outer header the engine rebuilds a minimal one.
        let mut buf = [0u8; 2048];
        let esp = tx.seal_esp(&h, &inner, &mut buf, t).unwrap().esp.to_vec();
        let mut out = [0u8; 2048];
        let Verdict::Deliver(d) = rx.open_esp(ip(S1), ip(GROUP), &esp, &mut out, t) else {
            panic!("{alg:?}")
        };
        assert_eq!(&d[20..], &inner[20..]);
        let i = ip::parse(d).unwrap();
        assert_eq!((i.src, i.dst, i.protocol), (ip(S1), ip(GROUP), proto::UDP));
    }
    // IPv6 with a Destination Options header before ESP.
    let g: IpAddr = "ff3e::1".parse().unwrap();
    let mut cfg = group_sa(0x43, Direction::Outbound, 2);
    cfg.mode = Mode::Transport;
    cfg.lookup = SadKey::SpiDst { spi: 0x43, dst: g };
    let (tx, h, rx) = pair(&cfg, t);
    let mut inner = udp6(
        "2001:db8::5".parse().unwrap(),
        "ff3e::1".parse().unwrap(),
        9,
        10,
        b"v6",
    );
    let tail = inner.split_off(40);
    inner[6] = proto::DSTOPTS;
    inner.extend_from_slice(&[proto::UDP, 0, 1, 4, 0, 0, 0, 0]);
    inner.extend_from_slice(&tail);
    let plen = (inner.len() - 40) as u16;
    inner[4..6].copy_from_slice(&plen.to_be_bytes());
    let sealed = seal_vec(&tx, &h, &inner, t).unwrap();
    assert_eq!(sealed[40], proto::ESP, "last Next Header now says ESP");
    assert_eq!(sealed[6], proto::DSTOPTS);
    assert_eq!(open_vec(&rx, &sealed, t).unwrap(), inner);
}

#[test]
fn lookup_precedence_through_the_engine() {
    let t = Instant::now();
    let spi = 0xabcd;
    let me = [192, 0, 2, 10];
    // Three SAs share one SPI, each with its own key: a wrong pick fails the ICV.
    let unicast = {
        let mut c = group_sa(spi, Direction::Inbound, 10);
        c.lookup = SadKey::Spi(spi);
        c.mode = Mode::Transport;
        c
    };
    let any_source = group_sa(spi, Direction::Inbound, 20);
    let mut from_s1 = group_sa(spi, Direction::Inbound, 30);
    from_s1.lookup = SadKey::SpiDstSrc {
        spi,
        dst: ip(GROUP),
        src: ip(S1),
    };
    let rx = Engine::default();
    for c in [&unicast, &any_source, &from_s1] {
        rx.install(c.clone(), t).unwrap();
    }
    // Each sender has sealed `skip` packets before: sequence numbers do not collide across
    // the cases, so the ICV decides, not the replay window.
    let send_after = |cfg: &SaConfig, inner: &[u8], skip: u32| {
        let tx = Engine::default();
        let mut c = cfg.clone();
        c.direction = Direction::Outbound;
        let h = tx.install(c, t).unwrap();
        h.0.seq.store(u64::from(skip), Ordering::Relaxed);
        seal_vec(&tx, &h, inner, t).unwrap()
    };
    let send = |cfg: &SaConfig, inner: &[u8]| send_after(cfg, inner, 0);
    let m1 = udp4(S1, GROUP, 1, 2, b"from s1");
    let m2 = udp4(S2, GROUP, 1, 2, b"from s2");
    let u = udp4(S2, me, 1, 2, b"unicast");
    // SPI + dst + src beats SPI + dst.
    assert_eq!(open_vec(&rx, &send(&from_s1, &m1), t), Ok(m1.clone()));
    assert_eq!(
        open_vec(&rx, &send_after(&any_source, &m1, 10), t),
        Err(DropReason::Integrity)
    );
    // SPI + dst beats SPI.
    assert_eq!(open_vec(&rx, &send(&any_source, &m2), t), Ok(m2));
    // SPI alone for traffic to the unicast address.
    let su = send(&unicast, &u);
    assert_eq!(ip::parse(&su).unwrap().dst, ip(me));
    assert_eq!(open_vec(&rx, &su, t), Ok(u));
    // Unknown SPI.
    let rx2 = Engine::default();
    assert_eq!(open_vec(&rx2, &su, t), Err(DropReason::NoSa));
    assert_eq!(rx2.drops(DropReason::NoSa), 1);
}

#[test]
fn replay_per_sa_and_disabled_for_unspecified_numbers() {
    let t = Instant::now();
    let (tx, h, rx) = pair(&group_sa(5, Direction::Outbound, 1), t);
    let p = udp4(S1, GROUP, 1, 2, b"r");
    let a = seal_vec(&tx, &h, &p, t).unwrap();
    let b = seal_vec(&tx, &h, &p, t).unwrap();
    assert!(open_vec(&rx, &b, t).is_ok());
    assert!(
        open_vec(&rx, &a, t).is_ok(),
        "out of order inside the window"
    );
    assert_eq!(open_vec(&rx, &a, t), Err(DropReason::ReplayDuplicate));
    // A forged copy with a fresh SN fails the ICV and does not move the window.
    let mut forged = b.clone();
    forged[24..28].copy_from_slice(&5000u32.to_be_bytes());
    assert_eq!(open_vec(&rx, &forged, t), Err(DropReason::Integrity));
    let c = seal_vec(&tx, &h, &p, t).unwrap();
    assert!(open_vec(&rx, &c, t).is_ok());
    let st = rx.stats(SaId(1)).unwrap();
    assert!(st.drops.contains(&(DropReason::ReplayDuplicate, 1)));
    assert!(st.drops.contains(&(DropReason::Integrity, 1)));

    // SN transform "32-bit Unspecified Numbers": no replay protection by default.
    let mut cfg = group_sa(6, Direction::Outbound, 1);
    cfg.sn = SnTransform::Unspecified32;
    cfg.replay = ReplayPolicy::default_for(cfg.sn);
    let (tx, h, rx) = pair(&cfg, t);
    let a = seal_vec(&tx, &h, &p, t).unwrap();
    assert!(open_vec(&rx, &a, t).is_ok());
    assert!(open_vec(&rx, &a, t).is_ok());
}

#[test]
fn per_sender_windows_on_a_multi_sender_sa() {
    let t = Instant::now();
    let mut cfg = group_sa(77, Direction::Inbound, 4);
    cfg.sn = SnTransform::Unspecified32;
    cfg.sender_ids = Some(SenderIds {
        bits: 8,
        ids: vec![1],
    });
    cfg.replay = ReplayPolicy::PerSender {
        window: 64,
        key: SenderKey::SenderId,
        max_senders: 2,
    };
    let rx = Engine::default();
    rx.install(cfg.clone(), t).unwrap();
    let sender = |id: u32| {
        let e = Engine::default();
        let mut c = cfg.clone();
        c.direction = Direction::Outbound;
        c.sender_ids = Some(SenderIds {
            bits: 8,
            ids: vec![id],
        });
        let h = e.install(c, t).unwrap();
        (e, h)
    };
    let (e1, h1) = sender(1);
    let (e2, h2) = sender(2);
    let (e3, h3) = sender(3);
    let p = udp4(S1, GROUP, 1, 2, b"m");
    // Both senders start at SN 1: independent windows accept both.
    let a1 = seal_vec(&e1, &h1, &p, t).unwrap();
    let a2 = seal_vec(&e2, &h2, &p, t).unwrap();
    assert_eq!(&a1[24..28], &a2[24..28]);
    assert!(open_vec(&rx, &a1, t).is_ok());
    assert!(open_vec(&rx, &a2, t).is_ok());
    assert_eq!(open_vec(&rx, &a1, t), Err(DropReason::ReplayDuplicate));
    assert_eq!(open_vec(&rx, &a2, t), Err(DropReason::ReplayDuplicate));
    // A third sender exceeds the cap.
    let a3 = seal_vec(&e3, &h3, &p, t).unwrap();
    assert_eq!(open_vec(&rx, &a3, t), Err(DropReason::TooManySenders));
    // Sender-ID keyed windows are per Sender-ID, whatever the source address.
    let mut moved = seal_vec(&e1, &h1, &p, t).unwrap();
    moved[12..16].copy_from_slice(&S2);
    assert_eq!(
        open_vec(&rx, &moved, t),
        Err(DropReason::AddressMismatch),
        "source preserved in the inner header must match"
    );
}

#[test]
fn sender_id_ivs_of_two_senders_never_collide_on_the_wire() {
    let t = Instant::now();
    let mut ivs = HashSet::new();
    for id in [1u32, 2] {
        let e = Engine::default();
        let mut c = group_sa(3, Direction::Outbound, 8);
        c.sn = SnTransform::Unspecified32;
        c.sender_ids = Some(SenderIds {
            bits: 16,
            ids: vec![id],
        });
        let h = e.install(c, t).unwrap();
        for _ in 0..200 {
            let s = seal_vec(&e, &h, &udp4(S1, GROUP, 1, 2, b"z"), t).unwrap();
            let iv: [u8; 8] = s[28..36].try_into().unwrap();
            assert_eq!(u16::from_be_bytes([iv[0], iv[1]]) as u32, id);
            assert!(ivs.insert(iv), "IV reused across senders");
        }
    }
    assert_eq!(ivs.len(), 400);
}

#[test]
fn exhaustion_refuses_to_send() {
    let t = Instant::now();
    // 60 Sender-ID bits leave a 4-bit counter: 16 packets per Sender-ID, two IDs in turn.
    let mut c = group_sa(11, Direction::Outbound, 1);
    c.sn = SnTransform::Unspecified32;
    c.sender_ids = Some(SenderIds {
        bits: 60,
        ids: vec![5, 6],
    });
    let e = Engine::default();
    let h = e.install(c, t).unwrap();
    let p = udp4(S1, GROUP, 1, 2, b"e");
    for _ in 0..32 {
        seal_vec(&e, &h, &p, t).unwrap();
    }
    assert_eq!(seal_vec(&e, &h, &p, t), Err(SealError::IvExhausted));
    // RFC 4303 3.3.3: the sequence number must not cycle on a Sequential SA...
    let e = Engine::default();
    let h = e.install(group_sa(12, Direction::Outbound, 1), t).unwrap();
    h.0.seq.store(u64::from(u32::MAX) - 1, Ordering::Relaxed);
    let last = seal_vec(&e, &h, &p, t).unwrap();
    assert_eq!(&last[24..28], &u32::MAX.to_be_bytes());
    assert_eq!(seal_vec(&e, &h, &p, t), Err(SealError::SequenceExhausted));
    // ...and rolls over on an Unspecified one.
    let mut c = group_sa(13, Direction::Outbound, 1);
    c.sn = SnTransform::Unspecified32;
    let h = e.install(c, t).unwrap();
    h.0.seq.store(u64::from(u32::MAX), Ordering::Relaxed);
    let wrapped = seal_vec(&e, &h, &p, t).unwrap();
    assert_eq!(&wrapped[24..28], &0u32.to_be_bytes());
}

#[test]
fn implicit_iv_needs_sequential_numbers_and_round_trips() {
    let t = Instant::now();
    let alg = EspAlgorithm::AesGcm16Iiv { key_bits: 128 };
    let mut c = group_sa(21, Direction::Outbound, 6);
    c.algorithm = alg;
    c.keys = keys(alg, 6);
    let (tx, h, rx) = pair(&c, t);
    let p = udp4(S1, GROUP, 1, 2, b"iiv");
    let s = seal_vec(&tx, &h, &p, t).unwrap();
    // 20 outer + 8 ESP header, no IV: the payload follows the SN directly.
    assert_eq!(s.len(), 20 + 8 + p.len() + pad_of(p.len()) + 2 + 16);
    assert_eq!(open_vec(&rx, &s, t), Ok(p));
    c.sn = SnTransform::Unspecified32;
    assert_eq!(
        Engine::default().install(c, t).err(),
        Some(InstallError::ImplicitIvNeedsSequential)
    );
}

fn pad_of(len: usize) -> usize {
    crate::packet::pad_len(len, 4)
}

#[test]
fn hard_and_soft_lifetimes_packets_bytes_time() {
    let t = Instant::now();
    // Packets: soft at 2, hard at 3.
    let mut c = group_sa(30, Direction::Outbound, 1);
    c.owner = 99;
    c.lifetimes = Lifetimes {
        soft: Limits {
            packets: Some(2),
            ..Limits::default()
        },
        hard: Limits {
            packets: Some(3),
            ..Limits::default()
        },
    };
    let e = Engine::default();
    let h = e.install(c, t).unwrap();
    let p = udp4(S1, GROUP, 1, 2, b"l");
    seal_vec(&e, &h, &p, t).unwrap();
    assert_eq!(e.poll_event(), None);
    seal_vec(&e, &h, &p, t).unwrap();
    let soft = Event::Expired {
        id: h.id(),
        spi: 30,
        direction: Direction::Outbound,
        owner: 99,
        hard: false,
    };
    assert_eq!(e.poll_event(), Some(soft));
    seal_vec(&e, &h, &p, t).unwrap();
    let Some(Event::Expired { hard: true, .. }) = e.poll_event() else {
        panic!("hard event at the third packet")
    };
    assert_eq!(seal_vec(&e, &h, &p, t), Err(SealError::Expired));
    assert_eq!(e.poll_event(), None, "each event once");
    // The hard-expired SA is removed at the next timeout handling.
    assert_eq!(e.poll_timeout(), Some(t));
    e.handle_timeout(t);
    assert_eq!(e.sa_count(), 0);
    assert_eq!(seal_vec(&e, &h, &p, t), Err(SealError::Deleted));

    // Bytes, inbound: soft at 100, hard at 150 octets delivered.
    let mut c = group_sa(31, Direction::Outbound, 1);
    let (tx, h, _) = pair(&c, t);
    c.lifetimes.soft.bytes = Some(100);
    c.lifetimes.hard.bytes = Some(150);
    let (_, _, rx) = pair(&c, t);
    let p = udp4(S1, GROUP, 1, 2, &[0; 32]); // 60 octets
    for _ in 0..2 {
        let s = seal_vec(&tx, &h, &p, t).unwrap();
        assert!(open_vec(&rx, &s, t).is_ok());
    }
    assert!(matches!(
        rx.poll_event(),
        Some(Event::Expired { hard: false, .. })
    ));
    let s = seal_vec(&tx, &h, &p, t).unwrap();
    assert_eq!(open_vec(&rx, &s, t), Err(DropReason::Expired), "180 > 150");
    assert!(matches!(
        rx.poll_event(),
        Some(Event::Expired {
            hard: true,
            direction: Direction::Inbound,
            ..
        })
    ));

    // Time: soft at 10 s, hard at 20 s, driven by handle_timeout without traffic.
    let mut c = group_sa(32, Direction::Inbound, 1);
    c.lifetimes.soft.seconds = Some(10);
    c.lifetimes.hard.seconds = Some(20);
    let e = Engine::default();
    e.install(c, t).unwrap();
    assert_eq!(e.poll_timeout(), Some(t + Duration::from_secs(10)));
    e.handle_timeout(t + Duration::from_secs(9));
    assert_eq!(e.poll_event(), None);
    e.handle_timeout(t + Duration::from_secs(10));
    assert!(matches!(
        e.poll_event(),
        Some(Event::Expired {
            hard: false,
            spi: 32,
            ..
        })
    ));
    assert_eq!(e.poll_timeout(), Some(t + Duration::from_secs(20)));
    e.handle_timeout(t + Duration::from_secs(25));
    assert!(matches!(
        e.poll_event(),
        Some(Event::Expired {
            hard: true,
            spi: 32,
            ..
        })
    ));
    assert_eq!(e.sa_count(), 0);
    assert!(e.sad().is_empty());

    // Time on the data path: an outbound SA past its hard time refuses before any timer ran.
    let mut c = group_sa(33, Direction::Outbound, 1);
    c.lifetimes.hard.seconds = Some(5);
    let e = Engine::default();
    let h = e.install(c, t).unwrap();
    let p = udp4(S1, GROUP, 1, 2, b"l");
    assert!(seal_vec(&e, &h, &p, t + Duration::from_secs(4)).is_ok());
    assert_eq!(
        seal_vec(&e, &h, &p, t + Duration::from_secs(5)),
        Err(SealError::Expired)
    );
    assert!(matches!(
        e.poll_event(),
        Some(Event::Expired { hard: true, .. })
    ));
}

#[test]
fn atd_rollover_and_dtd_lingering() {
    let t = Instant::now();
    let policy = PolicyId(1);
    let e = Engine::default();
    e.spd().replace(vec![SpdEntry {
        selectors: vec![Selector::addresses(
            AddrRange::any(false),
            AddrRange::single(ip(GROUP)),
        )],
        action: Action::Protect(policy),
    }]);
    let p = udp4(S1, GROUP, 1, 2, b"roll");
    assert!(matches!(
        e.classify(&p, t),
        Decision::NoActiveSa(PolicyId(1))
    ));
    let mut old = group_sa(100, Direction::Outbound, 1);
    old.policy = Some(policy);
    let old = e.install(old, t).unwrap();
    let Decision::Protect(h) = e.classify(&p, t) else {
        panic!()
    };
    assert_eq!(h.spi(), 100);
    // The leading-edge SA arrives with ATD = 30 s.
    let t1 = t + Duration::from_secs(60);
    let mut new = group_sa(101, Direction::Outbound, 2);
    new.policy = Some(policy);
    new.atd = Duration::from_secs(30);
    let new = e.install(new, t1).unwrap();
    assert_eq!(seal_vec(&e, &new, &p, t1), Err(SealError::NotYetActive));
    let Decision::Protect(h) = e.classify(&p, t1 + Duration::from_secs(29)) else {
        panic!()
    };
    assert_eq!(h.spi(), 100, "old SA until ATD has passed");
    let t2 = t1 + Duration::from_secs(30);
    let Decision::Protect(h) = e.classify(&p, t2) else {
        panic!()
    };
    assert_eq!(h.spi(), 101);
    assert!(seal_vec(&e, &new, &p, t2).is_ok());
    // Deleting the old outbound SA stops it at once.
    assert!(e.delete(old.id(), t2));
    assert_eq!(seal_vec(&e, &old, &p, t2), Err(SealError::Deleted));

    // Inbound: a deleted SA keeps receiving for DTD seconds.
    let mut c = group_sa(200, Direction::Outbound, 7);
    c.dtd = Duration::from_secs(10);
    let (tx, h, rx) = pair(&c, t);
    let id = rx.sad().lookup(200, ip(GROUP), ip(S1)).unwrap().id();
    assert!(rx.delete(id, t));
    assert!(rx.stats(id).unwrap().deleting);
    let s = seal_vec(&tx, &h, &p, t + Duration::from_secs(9)).unwrap();
    assert!(open_vec(&rx, &s, t + Duration::from_secs(9)).is_ok());
    assert_eq!(rx.poll_timeout(), Some(t + Duration::from_secs(10)));
    rx.handle_timeout(t + Duration::from_secs(10));
    let s = seal_vec(&tx, &h, &p, t + Duration::from_secs(11)).unwrap();
    assert_eq!(
        open_vec(&rx, &s, t + Duration::from_secs(11)),
        Err(DropReason::NoSa)
    );
    // A new SA installed under the same key is not removed by the old timer.
    let mut again = c.clone();
    again.direction = Direction::Inbound;
    rx.install(again, t).unwrap();
    rx.handle_timeout(t + Duration::from_secs(100));
    assert_eq!(rx.sa_count(), 1);
}

#[test]
fn dummy_packets_are_discarded_without_error() {
    let t = Instant::now();
    let (tx, h, rx) = pair(&group_sa(0x59, Direction::Outbound, 1), t);
    let mut buf = [0u8; 256];
    let d = tx
        .seal_dummy(&h, 37, ip(S1), ip(GROUP), &mut buf, t)
        .unwrap();
    assert_eq!((d.src, d.dst), (ip(S1), ip(GROUP)));
    assert_eq!(d.esp.len(), 8 + 8 + 37 + 1 + 2 + 16);
    let esp = d.esp.to_vec();
    let mut out = [0u8; 256];
    assert_eq!(
        rx.open_esp(ip(S1), ip(GROUP), &esp, &mut out, t),
        Verdict::Drop(DropReason::Dummy)
    );
    // Authenticated: it moved the replay window like any packet.
    assert_eq!(
        rx.open_esp(ip(S1), ip(GROUP), &esp, &mut out, t),
        Verdict::Drop(DropReason::ReplayDuplicate)
    );
    // The next real packet still goes through.
    let p = udp4(S1, GROUP, 1, 2, b"after dummy");
    let s = seal_vec(&tx, &h, &p, t).unwrap();
    assert_eq!(open_vec(&rx, &s, t), Ok(p));
}

#[test]
fn spd_bypass_discard_protect() {
    let t = Instant::now();
    let e = Engine::default();
    let any = AddrRange::any(false);
    e.spd().replace(vec![
        SpdEntry {
            selectors: vec![Selector::addresses(
                any,
                AddrRange::single(ip([10, 9, 9, 9])),
            )],
            action: Action::Bypass,
        },
        SpdEntry {
            selectors: vec![Selector::addresses(any, AddrRange::single(ip(GROUP)))],
            action: Action::Protect(PolicyId(4)),
        },
    ]);
    assert!(matches!(
        e.classify(&udp4(S1, [10, 9, 9, 9], 1, 2, b""), t),
        Decision::Bypass
    ));
    assert!(matches!(
        e.classify(&udp4(S1, [10, 9, 9, 8], 1, 2, b""), t),
        Decision::Discard
    ));
    assert!(matches!(e.classify(&[0x45, 0], t), Decision::Discard));
    assert!(matches!(
        e.classify(&udp4(S1, GROUP, 1, 2, b""), t),
        Decision::NoActiveSa(PolicyId(4))
    ));
}

#[test]
fn inbound_checks_address_preservation_selectors_and_direction() {
    let t = Instant::now();
    let mut c = group_sa(300, Direction::Outbound, 1);
    c.inbound_selectors = vec![Selector {
        protocol: Some(proto::UDP),
        ..Selector::addresses(AddrRange::any(false), AddrRange::single(ip(GROUP)))
    }];
    let (tx, h, rx) = pair(&c, t);
    let p = udp4(S1, GROUP, 1, 2, b"ok");
    let mut s = seal_vec(&tx, &h, &p, t).unwrap();
    // The outer source is not covered by the ICV but must equal the preserved inner one.
    s[12..16].copy_from_slice(&S2);
    let c2 = ip::ipv4_checksum(&{
        let mut h = s[..20].to_vec();
        h[10] = 0;
        h[11] = 0;
        h
    });
    s[10..12].copy_from_slice(&c2.to_be_bytes());
    assert_eq!(open_vec(&rx, &s, t), Err(DropReason::AddressMismatch));
    // An inner packet outside the selectors (TCP) is dropped.
    let mut tcp = udp4(S1, GROUP, 1, 2, b"tcp?");
    tcp[9] = proto::TCP;
    tcp[10..12].fill(0);
    let c3 = ip::ipv4_checksum(&tcp[..20]);
    tcp[10..12].copy_from_slice(&c3.to_be_bytes());
    let s = seal_vec(&tx, &h, &tcp, t).unwrap();
    assert_eq!(open_vec(&rx, &s, t), Err(DropReason::PolicyMismatch));
    // Inbound SAs do not seal.
    let inb = Engine::default()
        .install(group_sa(301, Direction::Inbound, 1), t)
        .unwrap();
    assert_eq!(seal_vec(&rx, &inb, &p, t), Err(SealError::NotOutbound));
}

#[test]
fn buffers_too_small_and_malformed_input() {
    let t = Instant::now();
    let (tx, h, rx) = pair(&group_sa(400, Direction::Outbound, 1), t);
    let p = udp4(S1, GROUP, 1, 2, &[1; 100]);
    let mut small = [0u8; 64];
    assert!(matches!(
        tx.seal(&h, &p, &mut small, t),
        Err(SealError::BufferTooSmall { needed }) if needed > 64
    ));
    // A refused seal consumed no sequence number.
    let s = seal_vec(&tx, &h, &p, t).unwrap();
    assert_eq!(&s[24..28], &1u32.to_be_bytes());
    let mut small = [0u8; 64];
    assert_eq!(
        rx.open(&s, &mut small, t),
        Verdict::Drop(DropReason::BufferTooSmall)
    );
    // Truncations and bit flips never deliver and never panic.
    for n in 0..s.len() {
        assert!(open_vec(&rx, &s[..n], t).is_err(), "prefix {n}");
    }
    for i in 20..s.len() {
        let mut bad = s.clone();
        bad[i] ^= 1;
        let r = open_vec(&rx, &bad, t);
        assert!(r.is_err(), "flip at {i}");
    }
    assert!(open_vec(&rx, &s, t).is_ok());
    assert_eq!(seal_vec(&tx, &h, &[0x45; 10], t), Err(SealError::BadPacket));
}

#[test]
fn keys_are_not_printed() {
    let c = group_sa(1, Direction::Inbound, 0xee);
    let dbg = format!("{c:?}");
    assert!(dbg.contains("redacted"));
    assert!(!dbg.contains("238, 239"), "{dbg}");
    let e = Engine::default();
    let h = e.install(c, Instant::now()).unwrap();
    let dbg = format!("{h:?}");
    assert!(!dbg.contains("238"), "{dbg}");
}

#[test]
fn install_errors() {
    let t = Instant::now();
    let e = Engine::default();
    e.install(group_sa(1, Direction::Inbound, 1), t).unwrap();
    assert_eq!(
        e.install(group_sa(1, Direction::Inbound, 1), t).err(),
        Some(InstallError::Duplicate)
    );
    let mut c = group_sa(2, Direction::Inbound, 1);
    c.keys = KeyMaterial::new(vec![0; 16]);
    assert_eq!(
        e.install(c, t).err(),
        Some(InstallError::KeyLength {
            expected: 20,
            got: 16
        })
    );
    let mut c = group_sa(3, Direction::Outbound, 1);
    c.sender_ids = Some(SenderIds {
        bits: 8,
        ids: vec![300],
    });
    assert_eq!(
        e.install(c, t).err(),
        Some(InstallError::SenderIdTooLarge { id: 300, bits: 8 })
    );
    let mut c = group_sa(4, Direction::Inbound, 1);
    c.replay = ReplayPolicy::PerSender {
        window: 64,
        key: SenderKey::SenderId,
        max_senders: 4,
    };
    assert_eq!(
        e.install(c, t).err(),
        Some(InstallError::SenderIdReplayNeedsIv)
    );
    // Batch install reports duplicates per entry.
    let r = e.install_batch(
        vec![
            group_sa(1, Direction::Inbound, 1),
            group_sa(5, Direction::Inbound, 1),
            group_sa(5, Direction::Inbound, 1),
        ],
        t,
    );
    assert_eq!(r[0].as_ref().err(), Some(&InstallError::Duplicate));
    assert!(r[1].is_ok());
    assert_eq!(r[2].as_ref().err(), Some(&InstallError::Duplicate));
    assert_eq!(e.sa_count(), 2);
    assert_eq!(e.sad().len(), 2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Hostile input: arbitrary bytes, or a valid packet with arbitrary edits, never panic and
    /// never deliver something that was not sealed.
    #[test]
    fn open_never_panics(junk in prop::collection::vec(any::<u8>(), 0..200),
                         edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4)) {
        let t = Instant::now();
        let (tx, h, rx) = pair(&group_sa(9, Direction::Outbound, 1), t);
        let _ = open_vec(&rx, &junk, t);
        let mut out = [0u8; 256];
        let _ = rx.open_esp(ip(S1), ip(GROUP), &junk, &mut out, t);
        let s = seal_vec(&tx, &h, &udp4(S1, GROUP, 1, 2, b"hostile"), t).unwrap();
        let mut bad = s.clone();
        for (i, v) in edits {
            let i = 20 + i % (bad.len() - 20);
            bad[i] ^= v | 1;
        }
        prop_assert!(open_vec(&rx, &bad, t).is_err());
    }
}

// ---- in-place and batch paths: the same bytes, verdicts and counters as the copying calls ----

/// Two engines with the same outbound SA, so that the n-th packet of each gets the same SN
/// and IV: one sealed through `seal`, the other through the in-place or batch path.
fn twins(cfg: &SaConfig, t: Instant) -> ((Engine, SaHandle), (Engine, SaHandle)) {
    let mut out = cfg.clone();
    out.direction = Direction::Outbound;
    let a = Engine::default();
    let ha = a.install(out.clone(), t).unwrap();
    let b = Engine::default();
    let hb = b.install(out, t).unwrap();
    ((a, ha), (b, hb))
}

/// The packet at `SEAL_HEADROOM` in a buffer with tailroom.
fn placed(p: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; SEAL_HEADROOM + p.len() + SEAL_TAILROOM];
    buf[SEAL_HEADROOM..SEAL_HEADROOM + p.len()].copy_from_slice(p);
    buf
}

/// The configurations the in-place paths must agree on: tunnel v4 and v6, transport v4 and
/// v6 (with an extension header), for every algorithm.
fn in_place_cases() -> Vec<(SaConfig, Vec<u8>)> {
    let g6: IpAddr = "ff3e::1".parse().unwrap();
    let s6: Ipv6Addr = "2001:db8::5".parse().unwrap();
    let mut v6_ext = udp6(s6, "ff3e::1".parse().unwrap(), 9, 10, b"six with options");
    let tail = v6_ext.split_off(40);
    v6_ext[6] = proto::DSTOPTS;
    v6_ext.extend_from_slice(&[proto::UDP, 0, 1, 4, 0, 0, 0, 0]);
    v6_ext.extend_from_slice(&tail);
    let plen = (v6_ext.len() - 40) as u16;
    v6_ext[4..6].copy_from_slice(&plen.to_be_bytes());
    let mut out = Vec::new();
    for alg in [
        GCM128,
        EspAlgorithm::AesGcm16Iiv { key_bits: 256 },
        EspAlgorithm::AesGmac { key_bits: 128 },
        EspAlgorithm::ChaCha20Poly1305,
        EspAlgorithm::AesCbcHmacSha256 { key_bits: 128 },
    ] {
        for (transport, v6) in [(false, false), (false, true), (true, false), (true, true)] {
            let mut c = group_sa(0x77, Direction::Outbound, 3);
            c.algorithm = alg;
            c.keys = keys(alg, 3);
            if transport {
                c.mode = Mode::Transport;
            }
            if v6 {
                c.lookup = SadKey::SpiDst { spi: 0x77, dst: g6 };
                if !transport {
                    c.mode = Mode::Tunnel(Tunnel::preserving(true));
                }
            }
            let p = if v6 {
                v6_ext.clone()
            } else {
                udp4(S1, GROUP, 7, 8, b"in place, same bytes")
            };
            out.push((c, p));
        }
    }
    out
}

#[test]
fn in_place_seal_and_open_match_the_copying_calls() {
    let t = Instant::now();
    for (cfg, p) in in_place_cases() {
        let what = format!("{:?} {:?} v6={}", cfg.algorithm, cfg.mode, p[0] >> 4 == 6);
        let ((a, ha), (b, hb)) = twins(&cfg, t);
        let rx = Engine::default();
        let mut inb = cfg.clone();
        inb.direction = Direction::Inbound;
        rx.install(inb, t).unwrap();
        for _ in 0..3 {
            let want = seal_vec(&a, &ha, &p, t).unwrap();
            let mut buf = placed(&p);
            let got = b.seal_in_place(&hb, &mut buf, SEAL_HEADROOM, t).unwrap();
            assert_eq!(got, &want[..], "{what}");
            // Open in place: the same packet `open` delivers.
            let mut copy = want.clone();
            let Verdict::Deliver(d) = rx.open_in_place(&mut copy, t) else {
                panic!("{what}")
            };
            assert_eq!(d, &p[..], "{what}");
        }
        let sb = b.stats(hb.id()).map(|s| SaStats { id: ha.id(), ..s });
        assert_eq!(a.stats(ha.id()), sb, "{what}");
        // The ESP-only form through `open_esp_in_place`, with room for a rebuilt header.
        let mut esp_buf = [0u8; 2048];
        let esp = a.seal_esp(&ha, &p, &mut esp_buf, t).unwrap();
        let (src, dst, esp) = (esp.src, esp.dst, esp.esp.to_vec());
        let mut out = [0u8; 2048];
        let want = match rx.open_esp(src, dst, &esp, &mut out, t) {
            Verdict::Deliver(d) => d.to_vec(),
            Verdict::Drop(r) => panic!("{what}: {r:?}"),
        };
        let mut buf = vec![0u8; 40 + esp.len()];
        buf[40..].copy_from_slice(&esp);
        // Replay protection refuses the same packet twice: a second receiver.
        let rx2 = Engine::default();
        let mut inb = cfg.clone();
        inb.direction = Direction::Inbound;
        rx2.install(inb, t).unwrap();
        match rx2.open_esp_in_place(src, dst, &mut buf, 40, t) {
            Verdict::Deliver(d) => assert_eq!(d, &want[..], "{what}"),
            Verdict::Drop(r) => panic!("{what}: {r:?}"),
        }
    }
}

#[test]
fn in_place_refuses_missing_room() {
    let t = Instant::now();
    let (tx, h, rx) = pair(&group_sa(0x78, Direction::Outbound, 1), t);
    let p = udp4(S1, GROUP, 1, 2, b"room");
    // 20 outer + 8 ESP + 8 IV in front of the packet.
    let mut buf = vec![0u8; 35 + p.len() + SEAL_TAILROOM];
    buf[35..35 + p.len()].copy_from_slice(&p);
    assert_eq!(
        tx.seal_in_place(&h, &mut buf, 35, t).err(),
        Some(SealError::Headroom { needed: 36 })
    );
    let mut buf = vec![0u8; 36 + p.len() + 2];
    buf[36..36 + p.len()].copy_from_slice(&p);
    assert!(matches!(
        tx.seal_in_place(&h, &mut buf, 36, t),
        Err(SealError::BufferTooSmall { .. })
    ));
    // Nothing was counted or numbered for the refused packets.
    assert_eq!(h.stats().packets, 0);
    let mut buf = placed(&p);
    let sealed = tx
        .seal_in_place(&h, &mut buf, SEAL_HEADROOM, t)
        .unwrap()
        .to_vec();
    assert_eq!(&sealed[24..28], &1u32.to_be_bytes());
    // Transport mode over a raw IPv6 socket needs room in front of the ESP packet.
    let mut c = group_sa(0x79, Direction::Outbound, 1);
    c.mode = Mode::Transport;
    let (tx, h, rx6) = pair(&c, t);
    let mut b = [0u8; 2048];
    let esp = tx.seal_esp(&h, &p, &mut b, t).unwrap().esp.to_vec();
    let mut buf = esp.clone();
    assert_eq!(
        rx6.open_esp_in_place(ip(S1), ip(GROUP), &mut buf, 0, t),
        Verdict::Drop(DropReason::BufferTooSmall)
    );
    assert_eq!(open_vec(&rx, &sealed, t), Ok(p));
}

/// Seals `n` packets through `seal_batch` on one engine and one by one through
/// `seal_in_place` on its twin; the results, events and counters must agree.
fn batch_matches_singles(
    cfg: &SaConfig,
    packets: &[Vec<u8>],
    t: Instant,
) -> Vec<Result<Vec<u8>, SealError>> {
    let ((a, ha), (b, hb)) = twins(cfg, t);
    let singles: Vec<Result<Vec<u8>, SealError>> = packets
        .iter()
        .map(|p| {
            let mut buf = placed(p);
            a.seal_in_place(&ha, &mut buf, SEAL_HEADROOM, t)
                .map(|s| s.to_vec())
        })
        .collect();
    let mut bufs: Vec<Vec<u8>> = packets.iter().map(|p| placed(p)).collect();
    let mut batch = Vec::new();
    b.seal_batch(&hb, &mut bufs, SEAL_HEADROOM, t, |i, r| {
        assert_eq!(i, batch.len());
        batch.push(r.map(|(_, s)| s.to_vec()));
    });
    assert_eq!(batch, singles);
    let (sa, sb) = (a.stats(ha.id()).unwrap(), b.stats(hb.id()).unwrap());
    assert_eq!(
        (sa.packets, sa.bytes, sa.soft_expired, sa.hard_expired),
        (sb.packets, sb.bytes, sb.soft_expired, sb.hard_expired)
    );
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    while let Some(e) = a.poll_event() {
        ea.push(e);
    }
    while let Some(e) = b.poll_event() {
        eb.push(e);
    }
    assert_eq!(ea.len(), eb.len());
    singles
}

#[test]
fn seal_batch_matches_single_calls() {
    let t = Instant::now();
    let p = udp4(S1, GROUP, 1, 2, b"batch");
    let bad = vec![0x45, 0, 0, 1];
    let v6 = udp6(
        "2001:db8::1".parse().unwrap(),
        "ff3e::1".parse().unwrap(),
        1,
        2,
        b"x",
    );
    // Plain: every packet goes out; a malformed one and a wrong-family one in the middle.
    let mixed = vec![p.clone(), bad, p.clone(), v6, p.clone()];
    let r = batch_matches_singles(&group_sa(0x80, Direction::Outbound, 1), &mixed, t);
    assert_eq!(r.iter().filter(|r| r.is_ok()).count(), 3);
    for (cfg, _) in in_place_cases() {
        let ps = vec![p.clone(); 5];
        if cfg.lookup.spi() == 0x77
            && matches!(cfg.lookup, SadKey::SpiDst { dst, .. } if dst.is_ipv4())
        {
            batch_matches_singles(&cfg, &ps, t);
        }
    }
    // The one-pass IPv4 tunnel plan and the outer header template against the general path:
    // TOS, DF, TTL, IPv4 options, octets after the packet's total length, every combination
    // of preserved and configured endpoint addresses; IPv6 and malformed packets, and
    // packets without head- or tailroom, in between (planned by the general path or
    // refused with the same error).
    let mut dscp_df = udp4(S2, GROUP, 3, 4, b"tos, df and ttl copied");
    dscp_df[1] = 0xb8;
    dscp_df[6] = 0x40;
    dscp_df[8] = 1;
    let c = crate::ip::ipv4_checksum(&{
        let mut h = dscp_df[..20].to_vec();
        h[10..12].fill(0);
        h
    });
    dscp_df[10..12].copy_from_slice(&c.to_be_bytes());
    let mut options = udp4(S1, GROUP, 5, 6, b"with options");
    options.splice(20..20, [1u8, 1, 1, 0]);
    options[0] = 0x46;
    let total = options.len() as u16;
    options[2..4].copy_from_slice(&total.to_be_bytes());
    let mut trailing = udp4(S1, GROUP, 5, 6, b"trailing octets after the packet");
    trailing.extend_from_slice(&[0xaa; 7]);
    let mut bad_total = p.clone();
    bad_total[2..4].copy_from_slice(&0xffffu16.to_be_bytes());
    let mut bad_ihl = p.clone();
    bad_ihl[0] = 0x44;
    let v6 = udp6(
        "2001:db8::1".parse().unwrap(),
        "ff3e::1".parse().unwrap(),
        1,
        2,
        b"x",
    );
    let mixed = vec![
        p.clone(),
        dscp_df,
        options,
        trailing,
        bad_total,
        p.clone(),
        bad_ihl,
        v6,
        vec![0x45],
        p.clone(),
    ];
    let (local, remote) = (ip([192, 0, 2, 1]), ip([198, 51, 100, 7]));
    for (preserve_src, preserve_dst) in [(true, true), (true, false), (false, true), (false, false)]
    {
        for alg in [
            GCM128,
            EspAlgorithm::AesGcm16Iiv { key_bits: 128 },
            EspAlgorithm::AesGmac { key_bits: 256 },
            EspAlgorithm::ChaCha20Poly1305,
            EspAlgorithm::AesCbcHmacSha256 { key_bits: 256 },
        ] {
            let mut c = group_sa(0x85, Direction::Outbound, 1);
            c.algorithm = alg;
            c.keys = keys(alg, 1);
            c.mode = Mode::Tunnel(Tunnel {
                local,
                remote,
                preserve_src,
                preserve_dst,
            });
            let r = batch_matches_singles(&c, &mixed, t);
            // IPv6 in an IPv4 tunnel only without address preservation (RFC 5374 4.1.2).
            let v6_ok = !(preserve_src || preserve_dst);
            assert_eq!(
                r.iter().filter(|r| r.is_ok()).count(),
                6 + usize::from(v6_ok),
                "{alg:?} {preserve_src} {preserve_dst}"
            );
            // Room: a packet too close to the front of its buffer, and one without tailroom.
            let ((a, ha), (b, hb)) = twins(&c, t);
            let q = udp4(S1, GROUP, 1, 2, b"room");
            let mut bufs = vec![placed(&q), placed(&q), placed(&q)];
            let mut short_front = vec![0u8; 25 + q.len() + SEAL_TAILROOM];
            short_front[25..25 + q.len()].copy_from_slice(&q);
            let no_tail = bufs[1][..SEAL_HEADROOM + q.len()].to_vec();
            bufs[1] = no_tail;
            let mut singles = Vec::new();
            for (k, buf) in bufs.iter().enumerate() {
                let mut buf = buf.clone();
                singles.push(
                    a.seal_in_place(&ha, &mut buf, SEAL_HEADROOM, t)
                        .map(|s| s.to_vec()),
                );
                if k == 0 {
                    let mut f = short_front.clone();
                    assert!(matches!(
                        a.seal_in_place(&ha, &mut f, 25, t),
                        Err(SealError::Headroom { .. })
                    ));
                }
            }
            let mut batch = Vec::new();
            b.seal_batch(&hb, &mut bufs, SEAL_HEADROOM, t, |_, r| {
                batch.push(r.map(|(_, s)| s.to_vec()))
            });
            assert_eq!(batch, singles);
            assert!(matches!(batch[1], Err(SealError::BufferTooSmall { .. })));
            let mut fronts = vec![short_front.clone()];
            let mut batch = Vec::new();
            b.seal_batch(&hb, &mut fronts, 25, t, |_, r| {
                batch.push(r.map(|(_, s)| s.to_vec()))
            });
            assert!(matches!(batch[0], Err(SealError::Headroom { .. })));
            assert_eq!(
                a.stats(ha.id()).unwrap().packets,
                b.stats(hb.id()).unwrap().packets
            );
        }
    }
    // A byte limit reached inside a batch that mixes the fast and the general plans.
    let mut c = group_sa(0x86, Direction::Outbound, 1);
    c.mode = Mode::Tunnel(Tunnel {
        local: ip([192, 0, 2, 1]),
        remote: ip([198, 51, 100, 7]),
        preserve_src: false,
        preserve_dst: false,
    });
    c.lifetimes.soft.bytes = Some(60);
    c.lifetimes.hard.bytes = Some(150);
    let r = batch_matches_singles(&c, &mixed, t);
    assert!(r.contains(&Err(SealError::Expired)));
    // A hard packet limit reached inside the batch: the packet that reaches it is the last.
    let mut c = group_sa(0x81, Direction::Outbound, 1);
    c.lifetimes = Lifetimes {
        soft: Limits {
            packets: Some(3),
            ..Limits::default()
        },
        hard: Limits {
            packets: Some(5),
            ..Limits::default()
        },
    };
    let r = batch_matches_singles(&c, &vec![p.clone(); 8], t);
    assert_eq!(r.iter().filter(|r| r.is_ok()).count(), 5);
    assert_eq!(r[5], Err(SealError::Expired));
    // IV space of the first Sender-ID (4 counter bits: 16 IVs) ends inside the batch; the
    // batch moves on to the second and then runs out, as single calls do (RFC 6054 5).
    let mut c = group_sa(0x82, Direction::Outbound, 1);
    c.sn = SnTransform::Unspecified32;
    c.sender_ids = Some(SenderIds {
        bits: 60,
        ids: vec![5, 6],
    });
    let r = batch_matches_singles(&c, &vec![p.clone(); 40], t);
    assert_eq!(r.iter().filter(|r| r.is_ok()).count(), 32);
    assert_eq!(r[32], Err(SealError::IvExhausted));
    let ivs: HashSet<Vec<u8>> = r.iter().flatten().map(|s| s[28..36].to_vec()).collect();
    assert_eq!(ivs.len(), 32, "no IV twice");
    // "32-bit Sequential Numbers" run out inside the batch (RFC 4303 3.3.3).
    let c = group_sa(0x83, Direction::Outbound, 1);
    let ((a, ha), (b, hb)) = twins(&c, t);
    ha.0.seq.store(u64::from(u32::MAX) - 2, Ordering::Relaxed);
    hb.0.seq.store(u64::from(u32::MAX) - 2, Ordering::Relaxed);
    let singles: Vec<_> = (0..4)
        .map(|_| {
            a.seal_in_place(&ha, &mut placed(&p), SEAL_HEADROOM, t)
                .map(|s| s[24..28].to_vec())
        })
        .collect();
    let mut bufs = vec![placed(&p); 4];
    let mut batch = Vec::new();
    b.seal_batch(&hb, &mut bufs, SEAL_HEADROOM, t, |_, r| {
        batch.push(r.map(|(_, s)| s[24..28].to_vec()))
    });
    assert_eq!(batch, singles);
    assert_eq!(batch[1], Ok(u32::MAX.to_be_bytes().to_vec()));
    assert_eq!(batch[2], Err(SealError::SequenceExhausted));
    // Refusals for the whole batch: not yet active (ATD).
    let mut c = group_sa(0x84, Direction::Outbound, 1);
    c.atd = Duration::from_secs(5);
    let r = batch_matches_singles(&c, &vec![p.clone(); 2], t);
    assert_eq!(r, vec![Err(SealError::NotYetActive); 2]);
}

#[test]
fn open_batch_matches_single_calls() {
    let t = Instant::now();
    let c1 = group_sa(0x90, Direction::Outbound, 1);
    let c2 = group_sa(0x91, Direction::Outbound, 2);
    let (tx1, h1, _) = pair(&c1, t);
    let (tx2, h2, _) = pair(&c2, t);
    let p = udp4(S1, GROUP, 1, 2, b"open batch");
    let s1: Vec<Vec<u8>> = (0..5)
        .map(|_| seal_vec(&tx1, &h1, &p, t).unwrap())
        .collect();
    let s2: Vec<Vec<u8>> = (0..4)
        .map(|_| seal_vec(&tx2, &h2, &p, t).unwrap())
        .collect();
    let mut tampered = s2[3].clone();
    let at = tampered.len() - 1;
    tampered[at] ^= 1;
    // Runs of one SA, a switch, a duplicate inside a run, a forgery, an unknown SPI, junk.
    let mut unknown = s2[0].clone();
    unknown[20..24].copy_from_slice(&0xdead_u32.to_be_bytes());
    // Outer headers that share the previous packet's addresses but not the rest: a total
    // length beyond what was received, one shorter than the header, another protocol, an
    // IPv4 option (IHL 6); and a packet from another source (same SPI).
    let mut too_long = s1[0].clone();
    too_long[2..4].copy_from_slice(&((s1[0].len() + 1) as u16).to_be_bytes());
    let mut too_short = s1[0].clone();
    too_short[2..4].copy_from_slice(&19u16.to_be_bytes());
    let mut not_esp = s1[0].clone();
    not_esp[9] = proto::UDP;
    let mut with_option = s1[2].clone();
    with_option.splice(20..20, [1u8, 1, 1, 0]);
    with_option[0] = 0x46;
    let total = with_option.len() as u16;
    with_option[2..4].copy_from_slice(&total.to_be_bytes());
    // RFC 5374 5.2 item 6: an outer source that is not the inner one; an ESP packet too
    // short for IV and ICV.
    let mut mismatch = seal_vec(&tx2, &h2, &p, t).unwrap();
    mismatch[12..16].copy_from_slice(&S2);
    let mut short_esp = s2[0][..20 + 8 + 8 + 16].to_vec();
    let short_len = short_esp.len() as u16;
    short_esp[2..4].copy_from_slice(&short_len.to_be_bytes());
    // A header with other addresses whose ESP header is cut short, then a packet with the
    // same addresses: its lookup key is compared in full (no SA for that destination).
    let mut other_dst = s2[2].clone();
    other_dst[16..20].copy_from_slice(&[239, 9, 9, 9]);
    let mut other_dst_truncated = other_dst[..24].to_vec();
    other_dst_truncated[2..4].copy_from_slice(&24u16.to_be_bytes());
    let other_src = seal_vec(&tx1, &h1, &udp4(S2, GROUP, 1, 2, b"from S2"), t).unwrap();
    let inputs = vec![
        s1[0].clone(),
        too_long,
        too_short,
        not_esp,
        other_src,
        with_option,
        s1[1].clone(),
        s1[1].clone(),
        s2[0].clone(),
        s2[1].clone(),
        s2[1].clone(),
        tampered,
        s1[2].clone(),
        unknown,
        vec![0x45, 1, 2],
        s1[3].clone(),
        s1[4].clone(),
        s2[2].clone(),
        s1[3].clone(),
        mismatch,
        short_esp,
        s2[3].clone(),
        other_dst_truncated,
        other_dst,
    ];
    let mk = || {
        let e = Engine::default();
        for c in [&c1, &c2] {
            let mut inb = c.clone();
            inb.direction = Direction::Inbound;
            if inb.spi == 0x90 {
                inb.lifetimes.hard.packets = Some(3);
            }
            e.install(inb, t).unwrap();
        }
        e
    };
    let (a, b) = (mk(), mk());
    let singles: Vec<Result<Vec<u8>, DropReason>> = inputs
        .iter()
        .map(|s| {
            let mut buf = s.clone();
            match a.open_in_place(&mut buf, t) {
                Verdict::Deliver(d) => Ok(d.to_vec()),
                Verdict::Drop(r) => Err(r),
            }
        })
        .collect();
    let mut bufs: Vec<Vec<u8>> = inputs
        .iter()
        .map(|s| {
            let mut b = s.clone();
            b.resize(s.len() + 100, 0xee);
            b
        })
        .collect();
    let lens: Vec<usize> = inputs.iter().map(Vec::len).collect();
    let mut batch = Vec::new();
    b.open_batch(&mut bufs, &lens, t, |i, v| {
        assert_eq!(i, batch.len());
        batch.push(match v {
            Verdict::Deliver(d) => Ok(d.to_vec()),
            Verdict::Drop(r) => Err(r),
        });
    });
    assert_eq!(batch, singles);
    assert_eq!(singles[1..4], [const { Err(DropReason::Malformed) }; 3]);
    assert_eq!(singles[10], Err(DropReason::ReplayDuplicate));
    assert_eq!(singles[11], Err(DropReason::Integrity));
    assert_eq!(singles[13], Err(DropReason::NoSa));
    // SA 0x90 delivers three packets (the first, the one from S2 and the one with an IPv4
    // option), then its hard packet limit expires it.
    assert_eq!(singles[6..8], [const { Err(DropReason::Expired) }; 2]);
    assert_eq!(singles[15], Err(DropReason::Expired));
    assert_eq!(
        singles[22..],
        [Err(DropReason::Malformed), Err(DropReason::NoSa)]
    );
    assert_eq!(singles[19], Err(DropReason::AddressMismatch));
    assert_eq!(singles[20], Err(DropReason::Malformed));
    // s2[3] (index 21) is delivered too.
    assert_eq!(singles.iter().filter(|r| r.is_ok()).count(), 7);
    for r in DropReason::ALL {
        assert_eq!(a.drops(r), b.drops(r), "{r:?}");
    }
    let mut ka: Vec<SadKey> = a.sad().keys();
    ka.sort_by_key(|k| k.spi());
    for k in ka {
        let (sa, sb) = (
            a.sad().get(k).unwrap().stats(),
            b.sad().get(k).unwrap().stats(),
        );
        assert_eq!(
            (sa.packets, sa.bytes, sa.drops),
            (sb.packets, sb.bytes, sb.drops),
            "{k:?}"
        );
    }
    // The ESP-only batch (IPv6 raw socket path) agrees with `open_esp`.
    let (tx, h, _) = pair(&c2, t);
    let esps: Vec<Vec<u8>> = (0..3)
        .map(|_| {
            let mut b = [0u8; 2048];
            tx.seal_esp(&h, &p, &mut b, t).unwrap().esp.to_vec()
        })
        .collect();
    let e = mk();
    let mut bufs: Vec<Vec<u8>> = esps
        .iter()
        .map(|s| [vec![0u8; 40], s.clone()].concat())
        .collect();
    let meta: Vec<(usize, IpAddr, IpAddr)> =
        esps.iter().map(|s| (s.len(), ip(S1), ip(GROUP))).collect();
    let mut n = 0;
    e.open_esp_batch(&mut bufs, &meta, 40, t, |_, v| {
        assert_eq!(v, Verdict::Deliver(&mut p.clone()[..]));
        n += 1;
    });
    assert_eq!(n, 3);
}

/// The reference for `tunnel_inner`: `ip::parse` and the checks in their RFC order.
fn tunnel_inner_reference(
    sa: &Sa,
    t: Tunnel,
    outer: &Outer<'_>,
    inner: &[u8],
    next_header: u8,
) -> Result<usize, DropReason> {
    let info = ip::parse(inner).map_err(|_| DropReason::BadInner)?;
    let expect = if info.is_v6() {
        proto::IPV6
    } else {
        proto::IPV4
    };
    if next_header != expect {
        return Err(DropReason::BadInner);
    }
    if (t.preserve_src && info.src != outer.src) || (t.preserve_dst && info.dst != outer.dst) {
        return Err(DropReason::AddressMismatch);
    }
    if !sa.selectors.is_empty() && !sa.selectors.iter().any(|s| s.matches(&info)) {
        return Err(DropReason::PolicyMismatch);
    }
    Ok(info.total_len)
}

proptest! {
    /// The IPv4 shortcut of `tunnel_inner` (no selectors, Next Header 4) gives what the
    /// general checks give, for arbitrary inner headers and both address preservations.
    #[test]
    fn tunnel_inner_shortcut_matches_parse(
        mut inner in prop::collection::vec(any::<u8>(), 0..64),
        version in prop::sample::select(vec![4u8, 6, 5]),
        next_header in prop::sample::select(vec![proto::IPV4, proto::IPV6, proto::UDP]),
        preserve_src in any::<bool>(),
        preserve_dst in any::<bool>(),
        same_addrs in any::<bool>(),
        len_ok in any::<bool>(),
    ) {
        if let Some(b) = inner.first_mut() {
            *b = (version << 4) | (*b & 0x0f);
        }
        if inner.len() >= 20 {
            if len_ok {
                inner[0] = (version << 4) | 5;
                let n = inner.len() as u16;
                inner[2..4].copy_from_slice(&(n - (n % 3)).max(20).to_be_bytes());
            }
            if same_addrs {
                inner[12..16].copy_from_slice(&S1);
                inner[16..20].copy_from_slice(&GROUP);
            }
        }
        let t0 = Instant::now();
        let mut c = group_sa(0x99, Direction::Inbound, 1);
        let tun = Tunnel { preserve_src, preserve_dst, ..Tunnel::preserving(false) };
        c.mode = Mode::Tunnel(tun);
        let e = Engine::default();
        let h = e.install(c, t0).unwrap();
        let outer = Outer { src: ip(S1), dst: ip(GROUP), header: Header::None };
        let mut buf = vec![0u8; 8];
        buf.extend_from_slice(&inner);
        let got = tunnel_inner(&h.0, tun, &outer, &buf, 8..buf.len(), next_header);
        let want = tunnel_inner_reference(&h.0, tun, &outer, &inner, next_header);
        prop_assert_eq!(got.map(|r| (r.start, r.len())), want.map(|n| (8, n)));
    }
}
