//! Packets per second through the Linux data plane between two network namespaces, against
//! a plaintext baseline over the same veth link, measured in the same run.
//!
//! ```text
//! ESP:       app (A) -> route -> TUN -> seal -> raw ESP -> veth -> raw ESP -> open -> TUN -> app (B)
//! plaintext: app (A) -> veth -> app (B)                   (UDP to a multicast group, no ESP)
//! ```
//!
//! 1400-octet UDP payloads to a multicast group, AES-GCM-16-256 ("32-bit Sequential Numbers",
//! replay window on). Side A's threads (the sending application, the data plane's workers)
//! run on CPU 0, side B's on CPU 1 (`sched_setaffinity`, inherited by the workers); the
//! kernel's veth receive path runs in softirq on the sending CPU.
//!
//! Run (root, network namespaces): `cargo bench -p gikev2-esp --bench throughput`.
//! Environment: `GIKEV2_BENCH_SECS` (seconds per measurement, default 2),
//! `GIKEV2_BENCH_PIN=0` (no pinning), `GIKEV2_BENCH_ROUNDS` (alternating rounds, default 3).
//! Without root it prints a skip line and exits 0.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gikev2_esp::dataplane::{Config, DataPlane};
use gikev2_esp::{
    Action, AddrRange, Direction, DropReason, Engine, EspAlgorithm, KeyMaterial, Mode, PolicyId,
    SaConfig, SadKey, Selector, SnTransform, SpdEntry, Tunnel,
};
use gikev2_tests::netns::{self, Netns, Pair};
use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};

const PAYLOAD: usize = 1400;
const ESP_GROUP: Ipv4Addr = Ipv4Addr::new(239, 77, 9, 1);
const PLAIN_GROUP: Ipv4Addr = Ipv4Addr::new(239, 77, 9, 2);
const PORT: u16 = 5000;
const SPI: u32 = 0x7e57_0001;
const POLICY: PolicyId = PolicyId(1);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pin(cpu: usize) {
    if std::env::var("GIKEV2_BENCH_PIN").is_ok_and(|v| v == "0") {
        return;
    }
    let mut set = CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = sched_setaffinity(Pid::from_raw(0), &set);
    }
}

fn sa(direction: Direction) -> SaConfig {
    let alg = EspAlgorithm::AesGcm16 { key_bits: 256 };
    let mut c = SaConfig::new(
        SPI,
        direction,
        SadKey::SpiDst {
            spi: SPI,
            dst: IpAddr::V4(ESP_GROUP),
        },
        Mode::Tunnel(Tunnel::preserving(false)),
        alg,
        KeyMaterial::new(vec![0x42; alg.keymat_len()]),
        SnTransform::Sequential32,
    );
    if direction == Direction::Outbound {
        c.policy = Some(POLICY);
    }
    c
}

fn engines() -> (Arc<Engine>, Arc<Engine>) {
    let now = Instant::now();
    let tx = Engine::default();
    let mut sel = Selector::addresses(AddrRange::any(false), AddrRange::single(ESP_GROUP.into()));
    sel.protocol = Some(17);
    tx.spd().replace(vec![SpdEntry {
        selectors: vec![sel],
        action: Action::Protect(POLICY),
    }]);
    tx.install(sa(Direction::Outbound), now)
        .expect("outbound SA");
    let rx = Engine::default();
    rx.install(sa(Direction::Inbound), now).expect("inbound SA");
    (Arc::new(tx), Arc::new(rx))
}

/// A receiving application socket joined to `group` on interface `ifindex`.
fn receiver(ns: &Netns, group: Ipv4Addr, ifindex: u32, cpu: usize) -> UdpSocket {
    ns.in_ns(move || -> std::io::Result<UdpSocket> {
        pin(cpu);
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_address(true)?;
        s.set_multicast_all_v4(false)?;
        let _ = s.set_recv_buffer_size(8 << 20);
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT)).into())?;
        s.join_multicast_v4_n(&group, &InterfaceIndexOrAddress::Index(ifindex))?;
        s.set_read_timeout(Some(Duration::from_millis(300)))?;
        Ok(s.into())
    })
    .expect("namespace thread")
    .expect("receiver socket")
}

fn ifindex(ns: &Netns, ifname: &str) -> u32 {
    ns.exec("cat", &[&format!("/sys/class/net/{ifname}/ifindex")])
        .expect("ifindex")
        .trim()
        .parse()
        .expect("ifindex")
}

/// What one measurement saw at the receiving application.
#[derive(Debug, Clone, Copy)]
struct Measured {
    sent: u64,
    received: u64,
    pps: f64,
}

/// Blasts 1400-octet datagrams to `group` from a thread in `tx_ns` (on CPU 0) for `secs`
/// seconds, counting at `rx` (read on a thread on CPU 1).
fn measure(
    tx_ns: &Netns,
    rx: UdpSocket,
    group: Ipv4Addr,
    multicast_if: Option<Ipv4Addr>,
    secs: u64,
) -> Measured {
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let counter = std::thread::spawn(move || {
        pin(1);
        let mut buf = [0u8; 2048];
        let (mut n, mut first, mut last) = (0u64, None, None);
        loop {
            match rx.recv(&mut buf) {
                Ok(len) if len == PAYLOAD => {
                    let t = Instant::now();
                    first.get_or_insert(t);
                    last = Some(t);
                    n += 1;
                }
                Ok(_) => {}
                Err(_) if d.load(Ordering::Relaxed) => break,
                Err(_) => {}
            }
        }
        (n, first, last)
    });
    let sent = tx_ns
        .in_ns(move || {
            pin(0);
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("sender socket");
            if let Some(a) = multicast_if {
                let s2 = socket2::SockRef::from(&s);
                s2.set_multicast_if_v4(&a).expect("multicast if");
            }
            let payload = [0xa5u8; PAYLOAD];
            let to = SocketAddr::from((group, PORT));
            let end = Instant::now() + Duration::from_secs(secs);
            let mut sent = 0u64;
            while Instant::now() < end {
                for _ in 0..64 {
                    if s.send_to(&payload, to).is_ok() {
                        sent += 1;
                    }
                }
            }
            sent
        })
        .expect("sender thread");
    done.store(true, Ordering::Relaxed);
    let (received, first, last) = counter.join().expect("counter");
    let span = match (first, last) {
        (Some(f), Some(l)) if l > f => (l - f).as_secs_f64(),
        _ => f64::INFINITY,
    };
    Measured {
        sent,
        received,
        pps: received.saturating_sub(1) as f64 / span,
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it with no argument: do
    // the quick version then.
    let bench = std::env::args().any(|a| a == "--bench");
    if let Err(e) = netns::probe() {
        println!("throughput: SKIP (network namespaces: {e})");
        return;
    }
    let secs = env_u64("GIKEV2_BENCH_SECS", if bench { 2 } else { 1 });
    let rounds = env_u64("GIKEV2_BENCH_ROUNDS", if bench { 3 } else { 1 });
    let pair = Pair::new("tput").expect("namespaces");
    let (ea, eb) = engines();
    let (a_if, b_if) = (
        ifindex(&pair.a, &pair.link_a.ifname),
        ifindex(&pair.b, &pair.link_b.ifname),
    );
    let cfg = |addr: Ipv4Addr, ifx: u32| Config {
        mtu: 1500,
        ipv6: false,
        multicast_if_v4: Some(addr),
        multicast_if_v6: ifx,
        ..Config::default()
    };
    let (ca, cb) = (cfg(pair.link_a.v4, a_if), cfg(pair.link_b.v4, b_if));
    let (ea2, eb2) = (ea.clone(), eb.clone());
    let dpa = pair
        .a
        .in_ns(move || {
            pin(0);
            DataPlane::start(ea2, ca)
        })
        .expect("thread")
        .expect("data plane A");
    let dpb = pair
        .b
        .in_ns(move || {
            pin(1);
            DataPlane::start(eb2, cb)
        })
        .expect("thread")
        .expect("data plane B");
    dpa.add_route(ESP_GROUP.into(), 32).expect("route");
    dpb.join(ESP_GROUP.into()).expect("join");
    // The plaintext group leaves A by the veth link.
    pair.a
        .ip(&[
            "route",
            "add",
            &format!("{PLAIN_GROUP}/32"),
            "dev",
            &pair.link_a.ifname,
        ])
        .expect("plaintext route");

    println!("throughput: {}", machine());
    println!(
        "throughput: {PAYLOAD}-octet UDP payloads, AES-GCM-16-256, {secs} s per measurement, \
         {rounds} round(s), pinning {}",
        if std::env::var("GIKEV2_BENCH_PIN").is_ok_and(|v| v == "0") {
            "off"
        } else {
            "A on CPU 0, B on CPU 1"
        }
    );
    let mut esp = Vec::new();
    let mut plain = Vec::new();
    for round in 0..rounds {
        let rx = receiver(&pair.b, PLAIN_GROUP, b_if, 1);
        let p = measure(&pair.a, rx, PLAIN_GROUP, Some(pair.link_a.v4), secs);
        let rx = receiver(&pair.b, ESP_GROUP, dpb.tun_index(), 1);
        let e = measure(&pair.a, rx, ESP_GROUP, None, secs);
        println!(
            "round {round}: plaintext {:>9.0} pps ({:.2} Gbit/s payload; sent {}, received {}) \
             | ESP {:>9.0} pps ({:.2} Gbit/s; sent {}, received {}) | ratio {:.2}",
            p.pps,
            p.pps * PAYLOAD as f64 * 8e-9,
            p.sent,
            p.received,
            e.pps,
            e.pps * PAYLOAD as f64 * 8e-9,
            e.sent,
            e.received,
            e.pps / p.pps
        );
        plain.push(p.pps);
        esp.push(e.pps);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (mp, me) = (median(&mut plain), median(&mut esp));
    let (sa, sb) = (dpa.stats(), dpb.stats());
    println!(
        "median: plaintext {mp:.0} pps, ESP {me:.0} pps, ESP/plaintext {:.2}",
        me / mp
    );
    println!(
        "data plane A: TUN reads {}, ESP sent {} in {} sendmmsg calls ({:.1}/call), seal errors {}, send errors {}",
        sa.tun_read,
        sa.esp_sent,
        sa.send_batches,
        sa.esp_sent as f64 / sa.send_batches.max(1) as f64,
        sa.tx_seal_error,
        sa.tx_send_error
    );
    println!(
        "data plane B: ESP received {} in {} recvmmsg calls ({:.1}/call), delivered {}, dropped {} (replay {}, integrity {}), truncated {}, TUN write errors {}",
        sb.esp_received,
        sb.recv_batches,
        sb.esp_received as f64 / sb.recv_batches.max(1) as f64,
        sb.delivered,
        sb.rx_dropped,
        eb.drops(DropReason::ReplayDuplicate) + eb.drops(DropReason::ReplayTooOld),
        eb.drops(DropReason::Integrity),
        sb.rx_truncated,
        sb.tun_write_error
    );
    dpa.stop();
    dpb.stop();
}
