//! Shared fixtures: a test GCKS (`gikev2_gcks::Server` with a Registrar built on
//! `group::{GroupState, build_registration}`), member configurations, packets.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gikev2_esp::{Decision, Engine, Verdict};
use gikev2_gcks::{Registrar, RegistrationContext, ServeConfig, Server};
use gikev2_member::MembershipConfig;
use gikev2_member::config::default_suites;
use gikev2_proto::crypto::sign::{SignatureScheme, SigningKey};
use gikev2_proto::crypto::{EncrAlg, IntegAlg, KeyWrapAlg, SecretBytes, SystemRandom};
use gikev2_proto::group::state::TekProtocol;
use gikev2_proto::group::{
    BuildContext, GroupAuth, GroupPolicy, GroupState, MemberGrant, RekeySaState, RekeySuite,
    TekState, build_registration,
};
use gikev2_proto::ike::{Decision as IkeDecision, IkeConfig, LocalAuth, PeerAuth, SinglePeer};
use gikev2_proto::registry::{NotifyType, SnId};
use gikev2_proto::wire::{IdPayload, TrafficSelector};

pub const PSK: &[u8] = b"member test pre-shared key";
pub const GROUP: &str = "g";
/// Data traffic of the group's TEK: UDP to this address and port.
pub const DATA_GROUP: [u8; 4] = [239, 1, 1, 1];
pub const DATA_PORT: u16 = 5000;
pub const LIFETIME: u64 = 3600;

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A free UDP port on loopback (for the Rekey SA's destination port).
pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or(40_848)
}

/// A multicast group address that differs between tests of one run.
pub fn rekey_group(port: u16) -> Ipv4Addr {
    Ipv4Addr::new(239, 255, (port >> 8) as u8, port as u8)
}

pub fn psk_ike(id: &str) -> IkeConfig {
    let k = SecretBytes::from_slice(PSK);
    IkeConfig::new(
        default_suites(),
        IdPayload::fqdn(id).unwrap(),
        LocalAuth::Psk(k.clone()),
        Arc::new(SinglePeer {
            id: None,
            auth: PeerAuth::Psk(k),
        }),
    )
}

/// A member configuration without files (tests of the runtime and the core).
pub fn member(id: &str, gcks: SocketAddr, sender: Option<u32>) -> MembershipConfig {
    MembershipConfig {
        group: GROUP.into(),
        group_id: IdPayload::key_id(GROUP.as_bytes().to_vec()),
        gcks,
        ike: psk_ike(id),
        sender_ids: sender,
        receive: false,
        auth_kind: "psk",
    }
}

pub fn tek_gcm(rng: &mut SystemRandom) -> TekState {
    TekState::generate(
        rng,
        TekProtocol::Esp,
        TrafficSelector::any(false),
        TrafficSelector::single(IpAddr::from(DATA_GROUP), 17, Some(DATA_PORT)),
        Some(EncrAlg::AesGcm16 { key_len: 32 }),
        None,
        SnId::Unspecified32,
        unix_now() + LIFETIME,
    )
    .unwrap()
}

/// A group with an Ed25519-signed Rekey SA on `rekey` (multicast on loopback), one
/// AES-GCM-256 TEK, 8 Sender-ID bits, ATD 0 and the given DTD.
pub fn group_state(rekey: SocketAddr, dtd: u16) -> GroupState {
    let mut rng = SystemRandom::new();
    let suite = RekeySuite::new(
        EncrAlg::AesGcm16 { key_len: 32 },
        None,
        KeyWrapAlg::Kw5649_256,
    )
    .unwrap();
    let kek = RekeySaState::generate(
        &mut rng,
        TrafficSelector::single("127.0.0.1".parse().unwrap(), 17, Some(848)),
        TrafficSelector::single(rekey.ip(), 17, Some(rekey.port())),
        suite,
        unix_now() + LIFETIME,
    );
    let key = SigningKey::generate(SignatureScheme::Ed25519).unwrap().0;
    GroupState {
        rekey: Some(kek),
        teks: vec![tek_gcm(&mut rng)],
        policy: GroupPolicy {
            atd: None,
            dtd: Some(dtd),
            sender_id_bits: Some(8),
            multiple_senders: true,
        },
        auth: GroupAuth::Signature(Box::new(key)),
    }
}

/// A TEK the engine cannot run: AES-CTR with HMAC-SHA2-256-128 (proto reads it).
pub fn tek_ctr(rng: &mut SystemRandom) -> TekState {
    TekState::generate(
        rng,
        TekProtocol::Esp,
        TrafficSelector::any(false),
        TrafficSelector::single(IpAddr::from(DATA_GROUP), 17, Some(DATA_PORT)),
        Some(EncrAlg::AesCtr { key_len: 32 }),
        Some(IntegAlg::HmacSha2_256_128),
        SnId::Unspecified32,
        unix_now() + LIFETIME,
    )
    .unwrap()
}

/// What the test GCKS hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The group's state as it is.
    Normal,
    /// The GSA of the group with the KD of another group: they do not match.
    MismatchedKd,
}

/// The test GCKS's policy: one group "g" in a `GroupState`.
pub struct TestGcks {
    pub state: Mutex<GroupState>,
    pub policy: Policy,
    next_sender: AtomicU32,
    /// (peer, group) of every GSA_REGISTRATION leave or policy rejection (2.3.2 Figure 8).
    pub left: Mutex<Vec<(IdPayload, IdPayload)>>,
    pub left_notify: tokio::sync::Notify,
    /// Registration requests seen, with the SAg presence and GROUP_SENDER count.
    pub requests: Mutex<Vec<(bool, Option<u32>)>>,
}

impl TestGcks {
    pub fn new(state: GroupState, policy: Policy) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(state),
            policy,
            next_sender: AtomicU32::new(1),
            left: Mutex::new(Vec::new()),
            left_notify: tokio::sync::Notify::new(),
            requests: Mutex::new(Vec::new()),
        })
    }
}

pub struct Shared(pub Arc<TestGcks>);

impl Registrar for Shared {
    async fn decide(&self, ctx: RegistrationContext) -> IkeDecision {
        let g = &self.0;
        g.requests
            .lock()
            .unwrap()
            .push((ctx.request.sag.is_some(), ctx.request.sender_ids));
        if ctx.request.group.data != GROUP.as_bytes() {
            return IkeDecision::Refuse(NotifyType::InvalidGroupId);
        }
        let state = g.state.lock().unwrap();
        let sender = ctx.request.sender_ids.is_some();
        let grant = MemberGrant {
            sender,
            sender_ids: if sender && state.uses_counter_mode() {
                vec![g.next_sender.fetch_add(1, Ordering::SeqCst)]
            } else {
                Vec::new()
            },
            wrap_keys: Vec::new(),
            inband: false,
        };
        let bc = BuildContext { now: unix_now() };
        let Ok((gsa, kd)) = build_registration(&state, &grant, &ctx.kwk, &bc) else {
            return IkeDecision::Refuse(NotifyType::RegistrationFailed);
        };
        let kd = match g.policy {
            Policy::Normal => kd,
            Policy::MismatchedKd => {
                let other = group_state("239.0.0.9:999".parse().unwrap(), 1);
                build_registration(&other, &grant, &ctx.kwk, &bc).unwrap().1
            }
        };
        IkeDecision::Accept {
            gsa,
            kd,
            transport_mode: false,
        }
    }

    async fn left(
        &self,
        peer_id: IdPayload,
        group: IdPayload,
        _notify: gikev2_proto::registry::NotifyType,
    ) {
        self.0.left.lock().unwrap().push((peer_id, group));
        self.0.left_notify.notify_waiters();
        self.0.left_notify.notify_one();
    }
}

/// A running test GCKS on loopback.
pub struct RunningGcks {
    pub addr: SocketAddr,
    pub gcks: Arc<TestGcks>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningGcks {
    pub async fn start(gcks: Arc<TestGcks>) -> Self {
        Self::start_with(gcks, psk_ike("gcks.test")).await
    }

    /// With the GCKS's own IKE configuration (credentials).
    pub async fn start_with(gcks: Arc<TestGcks>, ike: IkeConfig) -> Self {
        let cfg = ServeConfig {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            init_rate_per_source: 100,
            ..ServeConfig::default()
        };
        let server = Server::bind(ike, cfg, Shared(gcks.clone())).unwrap();
        let addr = server.local_addrs()[0];
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            gcks,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// Waits (bounded) until a member left or rejected the policy.
    pub async fn wait_left(&self) -> Vec<(IdPayload, IdPayload)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.gcks.left_notify.notified();
            {
                let l = self.gcks.left.lock().unwrap();
                if !l.is_empty() {
                    return l.clone();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.gcks.left.lock().unwrap().clone();
            }
        }
    }
}

/// An IPv4/UDP packet from `src` to the TEK's group and port.
pub fn udp(src: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 16;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&DATA_GROUP);
    p[20..22].copy_from_slice(&DATA_PORT.to_be_bytes());
    p[22..24].copy_from_slice(&DATA_PORT.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

/// Seals `packet` with the sender engine's SPD and SA; returns (SPI, ESP packet).
pub fn seal(e: &Engine, packet: &[u8], now: std::time::Instant) -> Option<(u32, Vec<u8>)> {
    let Decision::Protect(sa) = e.classify(packet, now) else {
        return None;
    };
    let mut buf = [0u8; 2048];
    let out = e.seal(&sa, packet, &mut buf, now).ok()?;
    Some((sa.spi(), out.to_vec()))
}

/// Opens an ESP packet with the receiver engine.
pub fn open(e: &Engine, packet: &[u8], now: std::time::Instant) -> Option<Vec<u8>> {
    let mut buf = [0u8; 2048];
    match e.open(packet, &mut buf, now) {
        Verdict::Deliver(p) => Some(p.to_vec()),
        Verdict::Drop(_) => None,
    }
}

/// Hex of `bytes`, lower case.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
