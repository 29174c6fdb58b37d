//! The Linux data plane between two network namespaces (root; skipped otherwise unless
//! GIKEV2_REQUIRE_ALL=1): applications' UDP to a multicast group goes TUN -> seal -> raw
//! ESP on one side and raw ESP -> open -> TUN on the other, in both address families;
//! replayed ESP is dropped and counted; groups are joined and routed with reference counts.

#![cfg(target_os = "linux")]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gikev2_esp::dataplane::{Config, DataPlane};
use gikev2_esp::{
    Action, AddrRange, Direction, DropReason, Engine, EspAlgorithm, KeyMaterial, Mode, PolicyId,
    SaConfig, SadKey, Selector, SnTransform, SpdEntry, Tunnel,
};
use gikev2_tests::netns::{Netns, Pair};
use gikev2_tests::{gate, netns, poll_until};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};

const PORT: u16 = 5000;
const POLICY: PolicyId = PolicyId(1);
const WAIT: Duration = Duration::from_secs(10);

fn group(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0xff3e, 0, 0, 0, 0, 0, 0x4242, 1))
    } else {
        IpAddr::V4(Ipv4Addr::new(239, 77, 1, 1))
    }
}

fn sa(direction: Direction, spi: u32, group: IpAddr) -> SaConfig {
    let alg = EspAlgorithm::AesGcm16 { key_bits: 256 };
    let mut c = SaConfig::new(
        spi,
        direction,
        SadKey::SpiDst { spi, dst: group },
        Mode::Tunnel(Tunnel::preserving(group.is_ipv6())),
        alg,
        KeyMaterial::new(vec![0x5a; alg.keymat_len()]),
        SnTransform::Sequential32,
    );
    if direction == Direction::Outbound {
        c.policy = Some(POLICY);
    }
    c
}

fn sender_engine(group: IpAddr, spi: u32) -> Arc<Engine> {
    let e = Engine::default();
    let mut sel = Selector::addresses(AddrRange::any(group.is_ipv6()), AddrRange::single(group));
    sel.protocol = Some(17);
    e.spd().replace(vec![SpdEntry {
        selectors: vec![sel],
        action: Action::Protect(POLICY),
    }]);
    e.install(sa(Direction::Outbound, spi, group), Instant::now())
        .expect("outbound SA");
    Arc::new(e)
}

fn receiver_engine(group: IpAddr, spi: u32) -> Arc<Engine> {
    let e = Engine::default();
    e.install(sa(Direction::Inbound, spi, group), Instant::now())
        .expect("inbound SA");
    Arc::new(e)
}

fn ifindex(ns: &Netns, ifname: &str) -> u32 {
    ns.exec("cat", &[&format!("/sys/class/net/{ifname}/ifindex")])
        .expect("ifindex")
        .trim()
        .parse()
        .expect("ifindex number")
}

fn start(ns: &Netns, engine: Arc<Engine>, cfg: Config) -> DataPlane {
    ns.in_ns(move || DataPlane::start(engine, cfg))
        .expect("namespace thread")
        .expect("data plane starts")
}

/// An application socket receiving the group on the TUN.
fn app_receiver(ns: &Netns, group: IpAddr, tun_index: u32) -> UdpSocket {
    ns.in_ns(move || -> std::io::Result<UdpSocket> {
        let domain = if group.is_ipv6() {
            Domain::IPV6
        } else {
            Domain::IPV4
        };
        let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_address(true)?;
        // Only the groups joined here, on the TUN (not every group the host joined).
        match group {
            IpAddr::V4(g) => {
                s.set_multicast_all_v4(false)?;
                s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT)).into())?;
                s.join_multicast_v4_n(&g, &InterfaceIndexOrAddress::Index(tun_index))?;
            }
            IpAddr::V6(g) => {
                s.set_only_v6(true)?;
                s.set_multicast_all_v6(false)?;
                s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, PORT)).into())?;
                s.join_multicast_v6(&g, tun_index)?;
            }
        }
        s.set_read_timeout(Some(WAIT))?;
        Ok(s.into())
    })
    .expect("namespace thread")
    .expect("receiver socket")
}

/// A raw ESP socket that sees a copy of every ESP packet its namespace receives, and can
/// send complete packets (to re-inject them).
fn raw_esp(ns: &Netns, v6: bool) -> Socket {
    ns.in_ns(move || -> std::io::Result<Socket> {
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        let s = Socket::new(domain, Type::RAW, Some(Protocol::from(50)))?;
        if v6 {
            s.set_header_included_v6(true)?;
        } else {
            s.set_header_included_v4(true)?;
        }
        s.set_read_timeout(Some(WAIT))?;
        Ok(s)
    })
    .expect("namespace thread")
    .expect("raw ESP socket")
}

fn recv_raw(s: &Socket) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = [0u8; 2048];
    let n = (&*s).read(&mut buf)?;
    Ok(buf[..n].to_vec())
}

fn run(v6: bool) {
    if gate::require("network namespaces", netns::probe()).is_none() {
        return;
    }
    let pair = Pair::new(if v6 { "dp6" } else { "dp4" }).expect("namespaces");
    let g = group(v6);
    let spi = 0x0dab_0001;
    let (ea, eb) = (sender_engine(g, spi), receiver_engine(g, spi));
    let cfg_a = Config {
        tun_name: "gmtun0".into(),
        multicast_if_v4: Some(pair.link_a.v4),
        multicast_if_v6: ifindex(&pair.a, &pair.link_a.ifname),
        ..Config::default()
    };
    let cfg_b = Config {
        tun_name: "gmtun0".into(),
        multicast_if_v4: Some(pair.link_b.v4),
        multicast_if_v6: ifindex(&pair.b, &pair.link_b.ifname),
        ..Config::default()
    };
    let dpa = start(&pair.a, ea.clone(), cfg_a);
    let dpb = start(&pair.b, eb.clone(), cfg_b);
    assert!(dpa.running() && dpb.running());
    let prefix = if v6 { 128 } else { 32 };
    dpa.add_route(g, prefix).expect("route into the TUN");
    dpa.add_route(g, prefix).expect("second reference");
    dpb.join(g).expect("join");
    assert_eq!(dpb.joined(), vec![g]);
    assert_eq!(dpa.routes(), vec![(g, prefix)]);
    let shown = pair
        .a
        .ip(&[
            if v6 { "-6" } else { "-4" },
            "route",
            "show",
            "table",
            "all",
        ])
        .unwrap();
    assert!(
        shown.contains(&format!("{g} dev gmtun0")),
        "route missing: {shown}"
    );

    let app = app_receiver(&pair.b, g, dpb.tun_index());
    let copy = raw_esp(&pair.b, v6);
    // IPv4: bound to no address: a socket bound to an interface's address sends multicast
    // out of that interface (the kernel's "special hack"), not along the route into the
    // TUN. IPv6: bound to the global address (the TUN has none, and the route's source
    // would be link-local).
    let any = if v6 {
        pair.link_a.addr(true)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    let sender = pair
        .a
        .udp_socket(SocketAddr::new(any, 0))
        .expect("sender socket");
    let src = SocketAddr::new(pair.link_a.addr(v6), sender.local_addr().unwrap().port());
    let mut sent_esp = Vec::new();
    for i in 0..5u8 {
        let payload = format!("group datagram {i} over ESP");
        sender
            .send_to(payload.as_bytes(), SocketAddr::new(g, PORT))
            .expect("send");
        let mut buf = [0u8; 2048];
        let (n, from) = app.recv_from(&mut buf).expect("delivered through the TUN");
        assert_eq!(&buf[..n], payload.as_bytes());
        assert_eq!(from, src, "address preservation: the sender's own address");
        let esp = recv_raw(&copy).unwrap_or_else(|e| {
            panic!(
                "no ESP copy: {e}; sender {:?}; receiver {:?}",
                dpa.stats(),
                dpb.stats()
            )
        });
        // What the wire carried is ESP with our SPI, never the payload in the clear.
        let esp_off = if v6 { 0 } else { 20 };
        assert_eq!(esp[esp_off..esp_off + 4], spi.to_be_bytes());
        assert!(
            !esp.windows(payload.len()).any(|w| w == payload.as_bytes()),
            "plaintext on the wire"
        );
        sent_esp.push(esp);
    }
    poll_until("receiver counters", WAIT, || {
        (dpb.stats().delivered >= 5).then_some(())
    })
    .unwrap();
    // The TX worker publishes its counters after the batch is on the wire.
    let a = poll_until("sender counters", WAIT, || {
        Some(dpa.stats()).filter(|s| s.esp_sent >= 5)
    })
    .unwrap();
    assert_eq!(a.esp_sent, 5, "{a:?}");
    assert!(a.send_batches >= 1 && a.send_batches <= 5, "{a:?}");
    assert_eq!(a.tx_send_error + a.tx_seal_error, 0, "{a:?}");

    // Re-injected copies are replays: dropped and counted, never delivered. IPv4 copies
    // are complete packets (sent as they are); IPv6 copies are the ESP part, sent from the
    // sender's address so that the kernel builds the same header.
    let inject = raw_esp(&pair.a, v6);
    if v6 {
        inject.set_header_included_v6(false).unwrap();
        inject
            .bind(&SocketAddr::new(pair.link_a.addr(true), 0).into())
            .unwrap();
        inject
            .set_multicast_if_v6(ifindex(&pair.a, &pair.link_a.ifname))
            .unwrap();
    } else {
        inject.set_multicast_if_v4(&pair.link_a.v4).unwrap();
    }
    for p in &sent_esp {
        inject
            .send_to(p, &SocketAddr::new(g, 0).into())
            .expect("re-inject");
    }
    poll_until("replays counted", WAIT, || {
        (eb.drops(DropReason::ReplayDuplicate) >= 5).then_some(())
    })
    .unwrap();
    assert_eq!(dpb.stats().delivered, 5);
    assert!(dpb.stats().rx_dropped >= 5);

    // Reference counts: one removal keeps the route, the second deletes it.
    dpa.remove_route(g, prefix).unwrap();
    assert_eq!(dpa.routes().len(), 1);
    dpa.remove_route(g, prefix).unwrap();
    assert!(dpa.routes().is_empty());
    dpb.leave(g).unwrap();
    assert!(dpb.joined().is_empty());
    dpa.stop();
    dpb.stop();
    // Closing the TUN unregisters it; the kernel finishes that asynchronously.
    poll_until("the TUN to disappear", WAIT, || {
        let links = pair.a.ip(&["-o", "link", "show"]).ok()?;
        (!links.contains("gmtun0")).then_some(())
    })
    .unwrap();
}

#[test]
fn ipv4_group_traffic_is_sealed_opened_and_replays_are_dropped() {
    run(false);
}

#[test]
fn ipv6_group_traffic_is_sealed_opened_and_replays_are_dropped() {
    run(true);
}
