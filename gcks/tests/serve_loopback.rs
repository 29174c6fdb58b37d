//! `Server` over real UDP on loopback: members register on the IKE port and on the NAT-T
//! port (non-ESP marker framing, RFC 3948 2.2), and all get the same group keys.

mod common;

use common::suite;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use gikev2_gcks::{Registrar, RegistrationContext, ServeConfig, Server};
use gikev2_member::{JoinError, join};
use gikev2_proto::crypto::SecretBytes;
use gikev2_proto::ike::{
    Decision, EndpointConfig, IkeConfig, LocalAuth, NatStatus, PeerAuth, RegistrationRequest,
    SinglePeer,
};
use gikev2_proto::registry::{EncrId, NotifyType, SnId};
use gikev2_proto::wire::gsa::{GsaPayload, GsaPolicy, GwPolicy};
use gikev2_proto::wire::id::IdPayload;
use gikev2_proto::wire::kd::{GroupKeyBag, KdPayload, MemberKeyBag, WrappedKey};
use gikev2_proto::wire::{TrafficSelector, Transform};

const KEYMAT: [u8; 36] = [0x5a; 36];

fn config(id: &str) -> IkeConfig {
    let k = SecretBytes::from_slice(b"loopback psk");
    IkeConfig::new(
        vec![suite()],
        IdPayload::fqdn(id).unwrap(),
        LocalAuth::Psk(k.clone()),
        Arc::new(SinglePeer {
            id: None,
            auth: PeerAuth::Psk(k),
        }),
    )
}

/// Admits members of "g" with one TEK; hands out Sender-IDs from a counter; refuses others.
struct Fixed {
    next_sender: AtomicU32,
}

impl Registrar for Fixed {
    async fn decide(&self, ctx: RegistrationContext) -> Decision {
        if ctx.request.group.data != b"g" {
            return Decision::Refuse(NotifyType::InvalidGroupId);
        }
        let gsa = GsaPayload::new()
            .with_gsa(
                GsaPolicy::esp(
                    0x100,
                    TrafficSelector::any(false),
                    TrafficSelector::any(false),
                )
                .with_transform(Transform::encr(EncrId::AesGcm16, Some(256)))
                .with_transform(Transform::sn(SnId::Unspecified32)),
            )
            .with_gw(GwPolicy::new().with_sender_id_bits(8));
        let mut kd = KdPayload::new().with(GroupKeyBag::esp(0x100).with_sa_key(WrappedKey::new(
            0,
            0,
            ctx.kwk.wrap(&KEYMAT).unwrap(),
        )));
        if ctx.request.sender_ids.is_some() {
            kd = kd.with(
                MemberKeyBag::new().with_sender_id(self.next_sender.fetch_add(1, Ordering::SeqCst)),
            );
        }
        Decision::Accept {
            gsa,
            kd,
            transport_mode: false,
        }
    }
}

/// Registers one member; returns its event-equivalent outcome and the unwrapped TEK keys.
async fn member(
    gcks: SocketAddr,
    group: &[u8],
    sender: bool,
) -> Result<(KdPayload, Vec<u8>), JoinError> {
    let request = RegistrationRequest {
        group: IdPayload::key_id(group.to_vec()),
        sag: None,
        sender_ids: sender.then_some(1),
    };
    let j = join(
        config("member.test"),
        gcks,
        request,
        Duration::from_secs(10),
    )
    .await?;
    let keys = j
        .kwk
        .unwrap(&j.kd.group_bags().next().unwrap().sa_keys[0].encrypted)
        .unwrap();
    Ok((j.kd, keys.as_bytes().to_vec()))
}

/// A running `Server` on `listen` with the [`Fixed`] registrar: its bound addresses, the
/// sender that stops it, and its task.
fn serve_fixed(
    listen: Vec<SocketAddr>,
) -> (
    Vec<SocketAddr>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let cfg = ServeConfig {
        listen,
        endpoint: EndpointConfig::default(),
        init_rate_per_source: 50,
        ike_idle_close: None,
    };
    let server = Server::bind(
        config("gcks.test"),
        cfg,
        Fixed {
            next_sender: AtomicU32::new(1),
        },
    )
    .unwrap();
    let addrs = server.local_addrs();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));
    (addrs, stop_tx, task)
}

#[tokio::test(flavor = "current_thread")]
async fn members_register_over_udp_and_nat_t_port_with_identical_keys() {
    let listen = vec![
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.31:4500".parse().unwrap(),
    ];
    let (addrs, stop_tx, task) = serve_fixed(listen);

    let (kd, ka) = member(addrs[0], b"g", true).await.unwrap();
    let (_, kb) = member(addrs[0], b"g", false).await.unwrap();
    let (_, kc) = member(addrs[1], b"g", false).await.unwrap();
    assert_eq!(ka, KEYMAT);
    assert_eq!((&ka, &kb), (&kc, &kc));
    assert_eq!(kd.member().unwrap().sender_ids, vec![1]);

    let refused = member(addrs[0], b"other", false).await;
    assert!(matches!(
        refused,
        Err(JoinError::Refused(NotifyType::InvalidGroupId))
    ));
    stop_tx.send(()).unwrap();
    task.await.unwrap();
}

/// Wraps [`Fixed`]: keeps IKE SAs open on request and records authentication failures.
struct Recording {
    inner: Fixed,
    keep: bool,
    failures: std::sync::Mutex<Vec<gikev2_gcks::AuthFailure>>,
    failed: tokio::sync::Notify,
}

impl Registrar for Recording {
    async fn decide(&self, ctx: RegistrationContext) -> Decision {
        self.inner.decide(ctx).await
    }

    async fn register(&self, ctx: RegistrationContext) -> gikev2_gcks::Verdict {
        gikev2_gcks::Verdict {
            decision: self.inner.decide(ctx).await,
            keep_ike_sa: self.keep,
            inband: None,
        }
    }

    async fn authentication_failed(&self, f: gikev2_gcks::AuthFailure) {
        self.failures.lock().unwrap().push(f);
        self.failed.notify_one();
    }
}

async fn start(keep: bool, idle: Option<Duration>) -> (SocketAddr, Arc<Recording>, impl FnOnce()) {
    // The GCKS knows one member, gm.ok, by its PSK.
    let psk = SecretBytes::from_slice(b"loopback psk");
    let ike = IkeConfig::new(
        vec![suite()],
        IdPayload::fqdn("gcks.test").unwrap(),
        LocalAuth::Psk(psk.clone()),
        Arc::new(SinglePeer {
            id: Some(IdPayload::fqdn("gm.ok").unwrap()),
            auth: PeerAuth::Psk(psk),
        }),
    );
    let registrar = Arc::new(Recording {
        inner: Fixed {
            next_sender: AtomicU32::new(1),
        },
        keep,
        failures: std::sync::Mutex::new(Vec::new()),
        failed: tokio::sync::Notify::new(),
    });
    struct Shared(Arc<Recording>);
    impl Registrar for Shared {
        async fn decide(&self, ctx: RegistrationContext) -> Decision {
            self.0.decide(ctx).await
        }
        async fn register(&self, ctx: RegistrationContext) -> gikev2_gcks::Verdict {
            self.0.register(ctx).await
        }
        async fn authentication_failed(&self, f: gikev2_gcks::AuthFailure) {
            self.0.authentication_failed(f).await
        }
    }
    let cfg = ServeConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        init_rate_per_source: 100,
        ike_idle_close: idle,
        ..ServeConfig::default()
    };
    let server = Server::bind(ike, cfg, Shared(registrar.clone())).unwrap();
    let addr = server.local_addrs()[0];
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));
    (addr, registrar, move || {
        let _ = stop_tx.send(());
    })
}

fn member_config(id: &str, psk: &[u8]) -> IkeConfig {
    let k = SecretBytes::from_slice(psk);
    let gcks_psk = SecretBytes::from_slice(b"loopback psk");
    IkeConfig::new(
        vec![suite()],
        IdPayload::fqdn(id).unwrap(),
        LocalAuth::Psk(k),
        Arc::new(SinglePeer {
            id: None,
            auth: PeerAuth::Psk(gcks_psk),
        }),
    )
}

/// Registers as gm.ok with our own socket and keeps serving the IKE SA afterwards;
/// returns when the GCKS deleted it (true) or `watch` passed (false).
async fn register_then_watch(gcks: SocketAddr, watch: Duration) -> bool {
    use gikev2_proto::crypto::SystemRandom;
    use gikev2_proto::ike::{CloseReason, Event, Goal, IkeSa};
    use std::time::Instant;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(gcks).await.unwrap();
    let mut rng = SystemRandom::new();
    let request = RegistrationRequest {
        group: IdPayload::key_id(b"g".to_vec()),
        sag: None,
        sender_ids: None,
    };
    let mut sa = IkeSa::initiate(
        member_config("gm.ok", b"loopback psk"),
        Goal::GsaAuth(request),
        sock.local_addr().unwrap(),
        gcks,
        Instant::now(),
        &mut rng,
    )
    .unwrap();
    let mut registered_at = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 65_535];
    loop {
        while let Some(d) = sa.poll_transmit() {
            sock.send(&d).await.unwrap();
        }
        while let Some(e) = sa.poll_event() {
            match e {
                Event::Registered { .. } => registered_at = Some(Instant::now()),
                Event::Closed(CloseReason::Deleted) => {
                    assert!(registered_at.is_some(), "deleted before registering");
                    return true;
                }
                Event::Closed(other) => panic!("IKE SA closed: {other:?}"),
                _ => {}
            }
        }
        let now = Instant::now();
        let end = match registered_at {
            Some(t) => (t + watch).min(deadline),
            None => deadline,
        };
        if now >= end {
            assert!(registered_at.is_some(), "no registration within 10 s");
            return false;
        }
        let wait = sa
            .poll_timeout()
            .map_or(end, |t| t.min(end))
            .saturating_duration_since(now);
        match tokio::time::timeout(wait, sock.recv(&mut buf)).await {
            Ok(Ok(n)) => sa.handle(&buf[..n], Instant::now(), &mut rng),
            Ok(Err(_)) => {}
            Err(_) => sa.handle_timeout(Instant::now(), &mut rng),
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn idle_registration_ike_sas_are_deleted_unless_the_registrar_keeps_them() {
    // RFC 9838 2.3.4: "after a short period of time the GCKS SHOULD close the IKE SA".
    let (addr, _, stop) = start(false, Some(Duration::from_millis(200))).await;
    assert!(
        register_then_watch(addr, Duration::from_secs(5)).await,
        "the GCKS deletes the idle IKE SA"
    );
    stop();
    // In-band rekey (or no Rekey SA): the IKE SA must stay (2.3.3, 2.4.2). Watching for
    // five idle periods is enough to see a delete that should not come.
    let (addr, _, stop) = start(true, Some(Duration::from_millis(200))).await;
    assert!(
        !register_then_watch(addr, Duration::from_secs(1)).await,
        "a kept IKE SA is not deleted"
    );
    stop();
}

#[tokio::test(flavor = "current_thread")]
async fn authentication_failures_reach_the_registrar_with_the_claimed_identity() {
    let (addr, rec, stop) = start(false, None).await;
    let request = || RegistrationRequest {
        group: IdPayload::key_id(b"g".to_vec()),
        sag: None,
        sender_ids: None,
    };
    let wrong_psk = join(
        member_config("gm.ok", b"not the psk"),
        addr,
        request(),
        Duration::from_secs(10),
    )
    .await;
    assert!(
        matches!(wrong_psk, Err(JoinError::Closed(_))),
        "{:?}",
        wrong_psk.err()
    );
    let unknown = join(
        member_config("gm.unknown", b"loopback psk"),
        addr,
        request(),
        Duration::from_secs(10),
    )
    .await;
    assert!(matches!(unknown, Err(JoinError::Closed(_))));
    // The hook runs on its own task: wait (bounded) until both arrived.
    tokio::time::timeout(Duration::from_secs(5), async {
        while rec.failures.lock().unwrap().len() < 2 {
            rec.failed.notified().await;
        }
    })
    .await
    .expect("two failures reported");
    let f = rec.failures.lock().unwrap().clone();
    assert_eq!(f[0].claimed, Some(IdPayload::fqdn("gm.ok").unwrap()));
    assert!(f[0].credential_found, "known identity, wrong PSK");
    assert_eq!(f[1].claimed, Some(IdPayload::fqdn("gm.unknown").unwrap()));
    assert!(!f[1].credential_found, "unknown identity");
    assert!(f[0].remote.ip().is_loopback());
    stop();
}

/// A GCKS bound to the wildcard address learns where each datagram was sent
/// (`IP_PKTINFO`/`IPV6_RECVPKTINFO`) and hashes that address into NAT_DETECTION_SOURCE_IP
/// (RFC 7296 2.23). Hashing the wildcard address instead would make every member see a
/// NAT and move to port 4500, where this server does not listen; here members on
/// 127.0.0.1 and ::1 see no NAT, and their SA stays on the port they chose.
#[tokio::test(flavor = "current_thread")]
async fn a_wildcard_bound_gcks_hashes_the_address_members_reached() {
    let (addrs, stop_tx, task) = serve_fixed(vec![
        "0.0.0.0:0".parse().unwrap(),
        "[::]:0".parse().unwrap(),
    ]);
    let ports: Vec<u16> = addrs.iter().map(|a| a.port()).collect();
    let v6_loopback = std::net::UdpSocket::bind("[::1]:0").is_ok();
    for (gcks, available) in [
        (SocketAddr::from(([127, 0, 0, 1], ports[0])), true),
        (
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, ports[1])),
            v6_loopback,
        ),
    ] {
        if !available {
            eprintln!("skipping {gcks}: no IPv6 loopback");
            continue;
        }
        let request = RegistrationRequest {
            group: IdPayload::key_id(b"g".to_vec()),
            sag: None,
            sender_ids: None,
        };
        let j = join(
            config("member.test"),
            gcks,
            request,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(j.sa.nat(), Some(NatStatus::default()), "{gcks}");
        assert_eq!(j.sa.remote(), gcks);
    }
    stop_tx.send(()).unwrap();
    task.await.unwrap();
}
