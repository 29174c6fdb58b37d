//! The network-namespace harness itself: links carry traffic in both address families,
//! threads and processes run inside namespaces, and everything is gone after `Drop`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use gikev2_tests::netns::{Bridge, Netns, Pair};
use gikev2_tests::{gate, netns, poll_until};

fn netns_or_skip() -> bool {
    gate::require("network namespaces", netns::probe()).is_some()
}

fn recv_within(sock: &UdpSocket, timeout: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    sock.set_read_timeout(Some(timeout)).ok()?;
    let mut buf = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf).ok()?;
    Some((buf[..n].to_vec(), from))
}

#[test]
fn veth_pair_carries_udp_over_ipv4_and_ipv6() {
    if !netns_or_skip() {
        return;
    }
    let pair = Pair::new("udp").expect("pair");
    for ipv6 in [false, true] {
        let to = SocketAddr::new(pair.link_b.addr(ipv6), 5500);
        let server = pair.b.udp_socket(to).expect("server socket in b");
        let client = pair
            .a
            .udp_socket(SocketAddr::new(pair.link_a.addr(ipv6), 0))
            .expect("client socket in a");
        client.send_to(b"hello from a", to).expect("send");
        let (data, from) = recv_within(&server, Duration::from_secs(5)).expect("datagram in b");
        assert_eq!(data, b"hello from a");
        assert_eq!(from.ip(), pair.link_a.addr(ipv6));
        // and back, to the client's ephemeral port
        server.send_to(b"reply", from).expect("reply");
        let (data, _) = recv_within(&client, Duration::from_secs(5)).expect("reply in a");
        assert_eq!(data, b"reply");
    }
}

#[test]
fn sockets_made_in_a_namespace_cannot_see_the_host_or_other_namespaces() {
    if !netns_or_skip() {
        return;
    }
    let pair = Pair::new("iso").expect("pair");
    // b's address does not exist in a: binding to it there fails.
    let err = pair
        .a
        .udp_socket(SocketAddr::new(pair.link_b.addr(false), 0))
        .expect_err("b's address is not local in a");
    assert!(err.to_string().contains("binding"), "{err}");
    // A lone namespace has only loopback: no route to the pair's subnet.
    let lone = Netns::new("lone").expect("netns");
    let routes = lone.ip(&["route", "show"]).expect("ip route");
    assert!(routes.trim().is_empty(), "unexpected routes: {routes}");
    let links = lone.ip(&["-o", "link", "show"]).expect("ip link");
    assert_eq!(links.lines().count(), 1, "{links}");
}

#[test]
fn drop_kills_processes_and_deletes_the_namespace() {
    if !netns_or_skip() {
        return;
    }
    let ns = Netns::new("drop").expect("netns");
    let name = ns.name().to_string();
    assert!(Path::new(&format!("/run/netns/{name}")).exists());
    assert!(name.contains(&std::process::id().to_string()));
    let tracked = ns
        .spawn(ns.command("sleep").arg("600"))
        .expect("tracked sleep");
    // Not handed to the namespace: found through `ip netns pids` and killed anyway.
    let mut untracked = ns
        .command("sleep")
        .arg("600")
        .spawn()
        .expect("untracked sleep");
    let untracked_pid = untracked.id();
    poll_until(
        "both sleeps in the namespace",
        Duration::from_secs(5),
        || {
            let pids = ns.pids();
            (pids.contains(&tracked) && pids.contains(&untracked_pid)).then_some(())
        },
    )
    .expect("pids");
    drop(ns);
    assert!(!Path::new(&format!("/run/netns/{name}")).exists());
    let status = untracked.wait().expect("wait");
    assert!(!status.success(), "killed, not exited: {status}");
    assert!(!Path::new(&format!("/proc/{tracked}")).exists());
    let listed = netns::run(std::process::Command::new("ip").args(["netns", "list"])).unwrap();
    assert!(!listed.contains(&name), "{listed}");
}

#[test]
fn namespace_names_are_unique() {
    if !netns_or_skip() {
        return;
    }
    let a = Netns::new("same").expect("a");
    let b = Netns::new("same").expect("b");
    assert_ne!(a.name(), b.name());
    let out = a
        .exec("ip", &["-o", "addr", "show", "lo"])
        .expect("exec in ns");
    assert!(out.contains("127.0.0.1"), "{out}");
}

#[test]
fn bridge_floods_multicast_to_every_member() {
    if !netns_or_skip() {
        return;
    }
    let lan = Bridge::new("mc").expect("bridge");
    let sender = Netns::new("mcsend").expect("netns");
    let members: Vec<Netns> = (0..2)
        .map(|i| Netns::new(&format!("mcrecv{i}")).unwrap())
        .collect();
    let tx_end = lan.attach(&sender).expect("attach sender");
    let group = Ipv4Addr::new(239, 192, 0, 7);
    let mut receivers = Vec::new();
    for m in &members {
        let end = lan.attach(m).expect("attach member");
        let sock = m
            .udp_socket(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8848))
            .expect("receiver");
        sock.join_multicast_v4(&group, &end.v4).expect("join");
        receivers.push(sock);
    }
    let tx = sender
        .udp_socket(SocketAddr::new(IpAddr::V4(tx_end.v4), 0))
        .expect("sender socket");
    // IGMP joins are not needed with snooping off; the first datagram must arrive.
    tx.send_to(b"rekey", SocketAddr::new(IpAddr::V4(group), 8848))
        .expect("send");
    for sock in &receivers {
        let (data, from) = recv_within(sock, Duration::from_secs(5)).expect("multicast copy");
        assert_eq!(data, b"rekey");
        assert_eq!(from.ip(), IpAddr::V4(tx_end.v4));
    }
}
