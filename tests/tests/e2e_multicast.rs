//! End to end on a LAN of network namespaces (root; skipped otherwise unless
//! GIKEV2_REQUIRE_ALL=1): a GCKS (`gikev2_gcks::Server` with a registrar built on
//! `group::{GroupState, build_registration}`) and three members that register over UDP, each
//! running the TUN data plane: the sender is the `gm` binary (`gm join --foreground
//! --dataplane tun`), the two receivers are the member runtime with
//! `gikev2_member::dataplane::TunDataPlane` in threads inside their namespaces (so the test
//! holds their engines). A fourth namespace on the bridge never registers.
//!
//! The group's TEK is AES-GCM-256 with "32-bit Sequential Numbers" (one sender, replay
//! protection). Checked: the receivers' applications get exactly what the sender's
//! application sent to the group; a capture on the bridge holds only ESP with the group's SPI
//! towards the group, and none of the payload bytes; the fourth namespace, joined to the
//! group, reads only ciphertext; the ESP it captured, re-injected onto the bridge, is dropped
//! by both receivers as replays (engine counters) and never delivered.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gikev2_esp::dataplane::Config as DpConfig;
use gikev2_esp::{DropReason, Engine};
use gikev2_gcks::{Registrar, RegistrationContext, ServeConfig, Server};
use gikev2_member::config::default_suites;
use gikev2_member::dataplane::TunDataPlane;
use gikev2_member::runtime::{self, RuntimeConfig};
use gikev2_member::{AgentConfig, GroupStatus, MembershipConfig, SystemClock};
use gikev2_proto::crypto::sign::{SignatureScheme, SigningKey};
use gikev2_proto::crypto::{EncrAlg, KeyWrapAlg, SecretBytes, SystemRandom};
use gikev2_proto::group::state::TekProtocol;
use gikev2_proto::group::{
    BuildContext, GroupAuth, GroupPolicy, GroupState, MemberGrant, RekeySaState, RekeySuite,
    TekState, build_registration,
};
use gikev2_proto::ike::{Decision, IkeConfig, LocalAuth, PeerAuth, SinglePeer};
use gikev2_proto::registry::{NotifyType, SnId};
use gikev2_proto::wire::{IdPayload, TrafficSelector};
use gikev2_tests::capture::{self, Capture};
use gikev2_tests::netns::{Bridge, Endpoint, Netns};
use gikev2_tests::{gate, netns, poll_until};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};

const PSK: &[u8] = b"e2e multicast pre-shared key";
const GROUP: &str = "e2e-media";
const DATA_GROUP: Ipv4Addr = Ipv4Addr::new(239, 88, 1, 1);
const DATA_PORT: u16 = 5004;
const REKEY_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 88, 1);
const REKEY_PORT: u16 = 8848;
const GCKS_PORT: u16 = 500;
const LIFETIME: u64 = 3600;
const DATAGRAMS: usize = 20;
const WAIT: Duration = Duration::from_secs(20);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn psk_ike(id: &str) -> IkeConfig {
    let k = SecretBytes::from_slice(PSK);
    IkeConfig::new(
        default_suites(),
        IdPayload::fqdn(id).expect("fqdn"),
        LocalAuth::Psk(k.clone()),
        Arc::new(SinglePeer {
            id: None,
            auth: PeerAuth::Psk(k),
        }),
    )
}

/// One TEK for UDP to the data group: AES-GCM-256, 32-bit Sequential Numbers.
fn group_state(gcks: Ipv4Addr) -> GroupState {
    let mut rng = SystemRandom::new();
    let suite = RekeySuite::new(
        EncrAlg::AesGcm16 { key_len: 32 },
        None,
        KeyWrapAlg::Kw5649_256,
    )
    .expect("rekey suite");
    let kek = RekeySaState::generate(
        &mut rng,
        TrafficSelector::single(IpAddr::V4(gcks), 17, Some(REKEY_PORT)),
        TrafficSelector::single(IpAddr::V4(REKEY_GROUP), 17, Some(REKEY_PORT)),
        suite,
        unix_now() + LIFETIME,
    );
    let tek = TekState::generate(
        &mut rng,
        TekProtocol::Esp,
        TrafficSelector::any(false),
        TrafficSelector::single(IpAddr::V4(DATA_GROUP), 17, Some(DATA_PORT)),
        Some(EncrAlg::AesGcm16 { key_len: 32 }),
        None,
        SnId::Seq32,
        unix_now() + LIFETIME,
    )
    .expect("TEK");
    let key = SigningKey::generate(SignatureScheme::Ed25519)
        .expect("signing key")
        .0;
    GroupState {
        rekey: Some(kek),
        teks: vec![tek],
        policy: GroupPolicy {
            atd: None,
            dtd: Some(2),
            sender_id_bits: Some(8),
            multiple_senders: false,
        },
        auth: GroupAuth::Signature(Box::new(key)),
    }
}

/// The test GCKS's policy: one group, every PSK member admitted, Sender-IDs from 1.
struct TestRegistrar {
    state: Mutex<GroupState>,
    next_sender: AtomicU32,
}

impl Registrar for TestRegistrar {
    async fn decide(&self, ctx: RegistrationContext) -> Decision {
        if ctx.request.group.data != GROUP.as_bytes() {
            return Decision::Refuse(NotifyType::InvalidGroupId);
        }
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let sender = ctx.request.sender_ids.is_some();
        let grant = MemberGrant {
            sender,
            sender_ids: if sender && state.uses_counter_mode() {
                vec![self.next_sender.fetch_add(1, Ordering::SeqCst)]
            } else {
                Vec::new()
            },
            wrap_keys: Vec::new(),
            inband: false,
        };
        match build_registration(&state, &grant, &ctx.kwk, &BuildContext { now: unix_now() }) {
            Ok((gsa, kd)) => Decision::Accept {
                gsa,
                kd,
                transport_mode: false,
            },
            Err(_) => Decision::Refuse(NotifyType::RegistrationFailed),
        }
    }
}

/// The GCKS on a thread in its namespace; stops when the sender is dropped.
fn start_gcks(ns: &Netns, addr: Ipv4Addr, tek_spi: &mut u32) -> tokio::sync::oneshot::Sender<()> {
    let state = group_state(addr);
    *tek_spi = state.teks[0].spi;
    let registrar = TestRegistrar {
        state: Mutex::new(state),
        next_sender: AtomicU32::new(1),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    ns.spawn_thread(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let cfg = ServeConfig {
                listen: vec![SocketAddr::from((addr, GCKS_PORT))],
                init_rate_per_source: 100,
                ..ServeConfig::default()
            };
            let server = Server::bind(psk_ike("gcks.e2e.test"), cfg, registrar);
            let server = match server {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            server
                .run(async {
                    let _ = stopped.await;
                })
                .await;
        });
    })
    .expect("GCKS thread");
    ready_rx
        .recv_timeout(WAIT)
        .expect("GCKS started")
        .expect("GCKS bound");
    stop
}

/// A receiver: the member runtime and its TUN data plane on a thread in `ns`.
struct Receiver {
    engine: Arc<Engine>,
    dp: Arc<TunDataPlane>,
    group: GroupStatus,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(ns: &Netns, link: &Endpoint, gcks: SocketAddr, id: &str) -> Receiver {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let ifaddr = link.v4;
        let id = id.to_string();
        let thread = ns
            .spawn_thread(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let engine = Arc::new(Engine::default());
                    let cfg = DpConfig {
                        multicast_if_v4: Some(ifaddr),
                        ipv6: false,
                        ..DpConfig::default()
                    };
                    let dp = match TunDataPlane::start(engine.clone(), cfg) {
                        Ok(dp) => Arc::new(dp),
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let rcfg = RuntimeConfig {
                        agent: AgentConfig::default(),
                        multicast_v4_interface: Some(ifaddr),
                        ..RuntimeConfig::default()
                    };
                    let (agent, task) =
                        runtime::spawn(engine.clone(), dp.clone(), rcfg, Arc::new(SystemClock));
                    let member = MembershipConfig {
                        group: GROUP.into(),
                        group_id: IdPayload::key_id(GROUP.as_bytes().to_vec()),
                        gcks,
                        ike: psk_ike(&id),
                        sender_ids: None,
                        receive: false,
                        auth_kind: "psk",
                    };
                    match agent.join(member, Some(WAIT)).await {
                        Ok(g) => {
                            let _ = tx.send(Ok((engine, dp, g)));
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                        }
                    }
                    let _ = stopped.await;
                    let _ = agent.shutdown().await;
                    let _ = task.await;
                });
            })
            .expect("receiver thread");
        let (engine, dp, group) = rx
            .recv_timeout(WAIT * 2)
            .expect("receiver reports")
            .expect("receiver registered");
        Receiver {
            engine,
            dp,
            group,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An application socket in `ns` receiving the data group on the TUN (and only there).
fn app_socket(ns: &Netns, tun_index: u32) -> UdpSocket {
    ns.in_ns(move || -> std::io::Result<UdpSocket> {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_address(true)?;
        s.set_multicast_all_v4(false)?;
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, DATA_PORT)).into())?;
        s.join_multicast_v4_n(&DATA_GROUP, &InterfaceIndexOrAddress::Index(tun_index))?;
        s.set_read_timeout(Some(WAIT))?;
        Ok(s.into())
    })
    .expect("namespace thread")
    .expect("application socket")
}

/// The `gm` binary next to this test's executable (built by `cargo build`, `cargo test` or
/// `cargo nextest run` of the workspace).
fn gm_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .ok_or("no target directory")?;
    let gm = dir.join("gm");
    if gm.is_file() {
        Ok(gm)
    } else {
        Err(format!(
            "{} not built (cargo build -p gikev2-member)",
            gm.display()
        ))
    }
}

fn tun_index(ns: &Netns, name: &str) -> Option<u32> {
    ns.exec("cat", &[&format!("/sys/class/net/{name}/ifindex")])
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[test]
fn three_members_carry_group_traffic_as_esp_and_replays_are_dropped() {
    if gate::require("network namespaces", netns::probe()).is_none()
        || gate::require("dumpcap and tshark", capture::probe()).is_none()
    {
        return;
    }
    let Some(gm) = gate::require("the gm binary", gm_binary()) else {
        return;
    };
    let started = Instant::now();
    let lan = Bridge::new("e2e").expect("bridge");
    let ns_gcks = Netns::new("gcks").expect("netns");
    let ns_send = Netns::new("sender").expect("netns");
    let ns_r1 = Netns::new("recv1").expect("netns");
    let ns_r2 = Netns::new("recv2").expect("netns");
    let ns_eve = Netns::new("eve").expect("netns");
    let l_gcks = lan.attach(&ns_gcks).expect("attach");
    let l_send = lan.attach(&ns_send).expect("attach");
    let l_r1 = lan.attach(&ns_r1).expect("attach");
    let l_r2 = lan.attach(&ns_r2).expect("attach");
    let l_eve = lan.attach(&ns_eve).expect("attach");
    let cap = Capture::start(lan.hub(), "br0", "").expect("capture on the bridge");

    let mut tek_spi = 0;
    let _gcks = start_gcks(&ns_gcks, l_gcks.v4, &mut tek_spi);
    let gcks_addr = SocketAddr::from((l_gcks.v4, GCKS_PORT));

    // The receivers register and join the data group on their links.
    let r1 = Receiver::start(&ns_r1, &l_r1, gcks_addr, "recv1.e2e.test");
    let r2 = Receiver::start(&ns_r2, &l_r2, gcks_addr, "recv2.e2e.test");
    for r in [&r1, &r2] {
        assert_eq!(r.group.state, "up");
        assert_eq!(r.group.teks.len(), 1);
        assert_eq!(r.group.teks[0].direction, "inbound");
        assert_eq!(r.group.teks[0].spi, format!("{tek_spi:#010x}"));
        assert_eq!(r.group.teks[0].sn, "32-bit Sequential Numbers");
        assert_eq!(r.dp.inner().joined(), vec![IpAddr::V4(DATA_GROUP)]);
    }

    // The sender: `gm join --foreground --dataplane tun` in its namespace.
    let dir = tempfile::tempdir().expect("temp dir");
    let psk = dir.path().join("psk");
    std::fs::write(&psk, PSK).expect("psk file");
    let events = dir.path().join("gm.events");
    let log = dir.path().join("gm.log");
    let mut cmd = ns_send.command(&gm);
    cmd.args([
        "join",
        "--foreground",
        "--dataplane",
        "tun",
        "--group",
        GROUP,
    ])
    .arg("--gcks")
    .arg(gcks_addr.to_string())
    .arg("--psk-file")
    .arg(&psk)
    .args(["--sender", "1", "--id", "sender.e2e.test"])
    .arg("--multicast-if")
    .arg(l_send.v4.to_string())
    .stdin(std::process::Stdio::null())
    .stdout(std::fs::File::create(&events).expect("events file"))
    .stderr(std::fs::File::create(&log).expect("log file"));
    ns_send.spawn(&mut cmd).expect("gm join --foreground");
    let sender_up = poll_until("the sender's group-up and route", WAIT, || {
        let ev = std::fs::read_to_string(&events).ok()?;
        let routes = ns_send.ip(&["route", "show", "table", "main"]).ok()?;
        (ev.contains("\"group-up\"") && routes.contains(&format!("{DATA_GROUP} dev gmtun0")))
            .then_some(())
    });
    if let Err(e) = sender_up {
        panic!(
            "{e}\nevents: {}\nlog: {}",
            std::fs::read_to_string(&events).unwrap_or_default(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    // Eve, on the same LAN without registering: joined to the group, reading UDP and ESP.
    let eve_udp = ns_eve
        .in_ns(move || -> std::io::Result<UdpSocket> {
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
            s.set_reuse_address(true)?;
            s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, DATA_PORT)).into())?;
            s.join_multicast_v4(&DATA_GROUP, &l_eve.v4)?;
            s.set_nonblocking(true)?;
            Ok(s.into())
        })
        .expect("namespace thread")
        .expect("eve's UDP socket");
    let eve_raw = ns_eve
        .in_ns(move || -> std::io::Result<Socket> {
            let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(50)))?;
            s.set_header_included_v4(true)?;
            s.set_multicast_if_v4(&l_eve.v4)?;
            s.set_read_timeout(Some(WAIT))?;
            Ok(s)
        })
        .expect("namespace thread")
        .expect("eve's raw ESP socket");

    // The applications.
    let apps: Vec<UdpSocket> = [(&ns_r1, &r1), (&ns_r2, &r2)]
        .iter()
        .map(|(ns, r)| app_socket(ns, r.dp.inner().tun_index()))
        .collect();
    let app_tx = ns_send
        .udp_socket(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
        .expect("sender application socket");
    let marker = format!("e2e-{:x}-", std::process::id());
    let payloads: Vec<Vec<u8>> = (0..DATAGRAMS)
        .map(|i| format!("{marker}{i:02} {}", "media ".repeat(i + 1)).into_bytes())
        .collect();
    let mut eve_esp: Vec<Vec<u8>> = Vec::new();
    for p in &payloads {
        app_tx
            .send_to(p, SocketAddr::from((DATA_GROUP, DATA_PORT)))
            .expect("application send");
        for app in &apps {
            let mut buf = [0u8; 2048];
            let (n, from) = app.recv_from(&mut buf).expect("datagram through the group");
            assert_eq!(&buf[..n], &p[..], "exactly the plaintext that was sent");
            assert_eq!(from.ip(), IpAddr::V4(l_send.v4), "the sender's address");
        }
        let mut buf = [0u8; 2048];
        let n = (&eve_raw).read(&mut buf).expect("eve sees the ESP");
        eve_esp.push(buf[..n].to_vec());
    }

    // Eve holds ESP with the group's SPI from the sender to the group, nothing readable.
    for esp in &eve_esp {
        assert_eq!(esp[9], 50);
        assert_eq!(esp[12..16], l_send.v4.octets());
        assert_eq!(esp[16..20], DATA_GROUP.octets());
        let ihl = usize::from(esp[0] & 0x0f) * 4;
        assert_eq!(esp[ihl..ihl + 4], tek_spi.to_be_bytes());
        assert!(
            !esp.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "plaintext visible to eve"
        );
    }
    let mut buf = [0u8; 2048];
    assert!(
        eve_udp.recv(&mut buf).is_err(),
        "eve's UDP socket received something"
    );

    // Replay: eve re-injects everything she captured onto the LAN.
    for esp in &eve_esp {
        eve_raw
            .send_to(esp, &SocketAddr::from((DATA_GROUP, 0)).into())
            .expect("re-inject");
    }
    for r in [&r1, &r2] {
        poll_until("replays dropped and counted", WAIT, || {
            (r.engine.drops(DropReason::ReplayDuplicate) >= DATAGRAMS as u64).then_some(())
        })
        .expect("replay counters");
        let st = r.dp.stats();
        assert_eq!(st.delivered, DATAGRAMS as u64, "{st:?}");
        assert!(st.rx_dropped >= DATAGRAMS as u64, "{st:?}");
        assert_eq!(r.engine.drops(DropReason::Integrity), 0);
        let sa = r.engine.stats(gikev2_esp::SaId(r.group.teks[0].sa_id));
        let sa = sa.expect("the inbound SA");
        assert_eq!(sa.packets, DATAGRAMS as u64);
        assert!(
            sa.drops
                .iter()
                .any(|(why, n)| *why == DropReason::ReplayDuplicate && *n >= DATAGRAMS as u64),
            "{sa:?}"
        );
    }
    for app in &apps {
        app.set_nonblocking(true).unwrap();
        assert!(
            app.recv(&mut buf).is_err(),
            "a replay reached an application"
        );
    }

    // The wire: every packet to the group (but IGMP) is ESP with the group's SPI, from the
    // sender's address (the originals and eve's replays); no UDP to the group; the payload
    // marker appears nowhere in the capture.
    let on_wire = 2 * DATAGRAMS;
    let to_group = format!("ip.dst == {DATA_GROUP} && !igmp");
    let pcap = cap
        .stop_after_count(&format!("{to_group} && esp"), on_wire, WAIT, &[])
        .expect("ESP in the capture");
    let rows = capture::tshark_fields(&pcap, &to_group, &["ip.proto", "esp.spi", "ip.src"], &[])
        .expect("tshark");
    assert!(rows.len() >= on_wire, "{} packets to the group", rows.len());
    for row in &rows {
        assert_eq!(row[0], "50", "{row:?}");
        let spi = u32::from_str_radix(row[1].trim_start_matches("0x"), 16).expect("SPI");
        assert_eq!(spi, tek_spi, "{row:?}");
        assert_eq!(row[2], l_send.v4.to_string(), "{row:?}");
    }
    let raw = std::fs::read(&pcap).expect("pcap");
    assert!(
        !raw.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "plaintext on the wire"
    );
    let _ = std::fs::remove_dir_all(pcap.parent().expect("capture dir"));

    // The sender's TUN is its own; the gm process quits with its namespace.
    assert!(tun_index(&ns_send, "gmtun0").is_some());
    eprintln!("e2e_multicast: {:?}", started.elapsed());
}
