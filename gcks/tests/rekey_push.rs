//! The GCKS's GSA_REKEY sender (`gikev2_gcks::rekey`) on a SQLite store, over multicast on
//! loopback, with two members running the member runtime: TEK renewals and a Rekey SA
//! rollover are pushed to the group, the members install what the store holds, and every
//! copy of a message is the same datagram (RFC 9838 2.4.1, 2.4.1.3); a TEK policy added,
//! edited or deleted goes out with a new Rekey SA (3.2.1).
//!
//! The scheduler's clock is passed to `tick`, so the test moves to each renew margin
//! without waiting; the members keep the real clock (the lifetimes in GSA_REKEY are
//! relative, RFC 9838 4.4.2.2.1).

mod common;

use common::{WAIT, add_psk_members, aes_gcm_256_tek, next_event, psk_membership, suite};

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use gikev2_esp::Engine;
use gikev2_gcks::credentials::{CacheConfig, CredentialCache, StoreLoader};
use gikev2_gcks::registrar::unix_now;
use gikev2_gcks::state::ensure_current;
use gikev2_gcks::{
    RekeyScheduler, RekeySchedulerConfig, SentRekey, ServeConfig, Server, StoreRegistrar,
};
use gikev2_member::config::MembershipConfig;
use gikev2_member::runtime::{self, RuntimeConfig};
use gikev2_member::{AgentEvent, AgentHandle, NoDataPlane, SystemClock};
use gikev2_policy::{
    EspMode, GroupId, GroupSpec, GroupWidePolicy, Identity, MasterKey, RekeyConfig, RekeyMode,
    Role, SnPolicy, Store, TekPolicySpec,
};
use gikev2_proto::crypto::{SecretBytes, SignatureScheme, SigningKey, SystemRandom};
use gikev2_proto::ike::{IkeConfig, LocalAuth, PeerAuthResolver};
use gikev2_proto::registry::{EncrId, GcAuthId, KwaId, SnId};
use gikev2_proto::wire::IdPayload;

const GCKS_PSK: &[u8] = b"rekey push gcks psk";
const TEK_LIFETIME: u32 = 600;
const REKEY_LIFETIME: u32 = 3600;

/// A multicast group address and port nobody else in this test run uses.
fn rekey_dst() -> SocketAddrV4 {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    SocketAddrV4::new(Ipv4Addr::new(239, 77, (port >> 8) as u8, port as u8), port)
}

struct World {
    _dir: tempfile::TempDir,
    /// The store's URL, for plain SQL edits.
    url: String,
    store: Arc<Store>,
    group: GroupId,
    gcks: SocketAddr,
    scheduler: RekeyScheduler,
    /// What a scheduler is made of, to start another as a restarted GCKS would.
    parts: (
        RekeySchedulerConfig,
        Vec<Arc<tokio::net::UdpSocket>>,
        Arc<gikev2_gcks::group_view::GroupViews>,
    ),
    stop: tokio::sync::oneshot::Sender<()>,
}

impl World {
    fn new_scheduler(&self) -> RekeyScheduler {
        let (cfg, sockets, views) = self.parts.clone();
        RekeyScheduler::new(self.store.clone(), cfg, sockets).with_views(views)
    }
}

async fn world(dst: SocketAddrV4) -> World {
    world_with(dst, &["a.example", "b.example"], Role::Receiver, None).await
}

/// A group with one AES-GCM TEK; `members` authorized as `role`; `sender_id_bits` for
/// the Sender-ID space.
async fn world_with(
    dst: SocketAddrV4,
    members: &[&str],
    role: Role,
    sender_id_bits: Option<u8>,
) -> World {
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    world_listening(dst, members, role, sender_id_bits, listen).await
}

/// [`world_with`], the server bound to `listen`.
async fn world_listening(
    dst: SocketAddrV4,
    members: &[&str],
    role: Role,
    sender_id_bits: Option<u8>,
    listen: SocketAddr,
) -> World {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("gcks.db").display());
    let key_path = dir.path().join("gcks.key");
    let key = MasterKey::load_or_create(&key_path, &mut SystemRandom::new()).unwrap();
    let store = Arc::new(Store::open(&url, key).await.unwrap());
    let (_, pkcs8) = SigningKey::generate(SignatureScheme::Ed25519).unwrap();
    let signer = store
        .add_signing_key("rekey", SignatureScheme::Ed25519, &pkcs8, 0)
        .await
        .unwrap();
    let group = store
        .create_group(
            &GroupSpec {
                name: "g".into(),
                idg: Identity::key_id(b"g"),
                capacity: 10,
                rekey: RekeyConfig {
                    mode: RekeyMode::Multicast,
                    dst: Some(SocketAddr::V4(dst)),
                    src_addr: None,
                    src_port: None,
                    lifetime: REKEY_LIFETIME,
                    encr: EncrId::AesGcm16,
                    encr_key_bits: Some(256),
                    integ: None,
                    kwa: KwaId::Kw5649_256,
                    gcauth: GcAuthId::DigitalSignature,
                    signing_key: Some(signer),
                },
                tek_lifetime: TEK_LIFETIME,
                policy: GroupWidePolicy {
                    dtd: Some(1),
                    sender_id_bits,
                    ..GroupWidePolicy::default()
                },
            },
            0,
        )
        .await
        .unwrap();
    let tek = aes_gcm_256_tek(
        "239.77.0.1",
        SnPolicy::Fixed(SnId::Unspecified32),
        EspMode::Transport,
    );
    store.add_tek_policy(group, &tek).await.unwrap();
    let roles: Vec<(&str, Role)> = members.iter().map(|&id| (id, role)).collect();
    add_psk_members(&store, group, &roles).await;

    let loader = StoreLoader::start(url.clone(), key_path.clone()).unwrap();
    let url = url.clone();
    let cache = Arc::new(CredentialCache::new(
        Arc::new(loader),
        CacheConfig::default(),
    ));
    cache.preload(&store).await.unwrap();
    let resolver: Arc<dyn PeerAuthResolver> = cache;
    let ike = IkeConfig::new(
        vec![suite()],
        IdPayload::fqdn("gcks.example").unwrap(),
        LocalAuth::Psk(SecretBytes::from_slice(GCKS_PSK)),
        resolver,
    );
    let cfg = ServeConfig {
        listen: vec![listen],
        init_rate_per_source: 100,
        ..ServeConfig::default()
    };
    let registrar = StoreRegistrar::new(store.clone());
    let views = registrar.group_views();
    let server = Server::bind(ike, cfg, registrar).unwrap();
    let mut gcks = server.local_addrs()[0];
    if gcks.ip().is_unspecified() {
        // Bound to every address: members reach it on loopback.
        gcks.set_ip(Ipv4Addr::LOCALHOST.into());
    }
    let config = RekeySchedulerConfig {
        copies: 3,
        spacing: Duration::from_millis(20),
        multicast_ttl: 1,
        multicast_if_v4: Some(Ipv4Addr::LOCALHOST),
        holder: "test-gcks".into(),
        ..RekeySchedulerConfig::default()
    };
    let parts = (config.clone(), server.sockets(), views.clone());
    let scheduler = RekeyScheduler::new(store.clone(), config, server.sockets()).with_views(views);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    World {
        _dir: dir,
        url,
        store,
        group,
        gcks,
        scheduler,
        parts,
        stop,
    }
}

fn member(id: &str, gcks: SocketAddr) -> MembershipConfig {
    psk_membership(id, gcks)
}

fn agent() -> AgentHandle {
    let mut config = RuntimeConfig {
        multicast_v4_interface: Some(Ipv4Addr::LOCALHOST),
        ..RuntimeConfig::default()
    };
    // Re-registrations after an exclusion wait a random time up to this (R043).
    config.agent.reregister_jitter = Duration::from_millis(300);
    runtime::spawn(
        Arc::new(Engine::default()),
        Arc::new(NoDataPlane),
        config,
        Arc::new(SystemClock),
    )
    .0
}

/// A socket on the rekey group, as a member's (to see every copy the GCKS sends).
fn listener(dst: SocketAddrV4) -> tokio::net::UdpSocket {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_nonblocking(true).unwrap();
    s.bind(&SocketAddr::V4(dst).into()).unwrap();
    s.join_multicast_v4(dst.ip(), &Ipv4Addr::LOCALHOST).unwrap();
    tokio::net::UdpSocket::from_std(s.into()).unwrap()
}

/// The next `Rekeyed` event of an agent.
/// The event a member of group "g" reports for a GSA_REKEY with `message_id` that
/// installed and deleted these TEKs (hex SPIs), with or without a new Rekey SA.
fn pushed(
    message_id: u32,
    installed: Vec<String>,
    deleting: Vec<String>,
    new_rekey_sa: bool,
) -> AgentEvent {
    AgentEvent::Rekeyed {
        group: "g".into(),
        message_id: Some(message_id),
        installed,
        deleting,
        new_rekey_sa,
    }
}

async fn rekeyed(events: &mut tokio::sync::mpsc::Receiver<AgentEvent>) -> AgentEvent {
    next_event(events, |e| {
        matches!(e, AgentEvent::Rekeyed { .. }).then_some(e)
    })
    .await
}

fn hex(spis: &[u32]) -> Vec<String> {
    spis.iter().map(|s| format!("{s:#010x}")).collect()
}

/// The datagrams of `copies` copies of `sent`, as they arrive on the group, with their
/// source.
async fn copies(rx: &tokio::net::UdpSocket, sent: &SentRekey, copies: usize) -> SocketAddr {
    let mut buf = vec![0u8; 65_535];
    let mut from = None;
    for _ in 0..copies {
        for d in &sent.datagrams {
            let (n, src) = tokio::time::timeout(WAIT, rx.recv_from(&mut buf))
                .await
                .expect("a copy arrives")
                .unwrap();
            // RFC 9838 2.4.1.3 (R034): copies are bitwise identical.
            assert_eq!(&buf[..n], &d[..], "copy of message {}", sent.message_id);
            assert_eq!(*from.get_or_insert(src), src);
        }
    }
    from.unwrap()
}

type Events = tokio::sync::mpsc::Receiver<AgentEvent>;

/// The scheduler's first look at `t0` creates the group's state (the members get it by
/// registering): its Rekey SA and TEK.
async fn first_state(w: &mut World, t0: u64) -> ([u8; 16], u32) {
    assert!(w.scheduler.tick(t0).await.is_empty());
    let first = w.store.group_state(w.group).await.unwrap().unwrap();
    (first.rekey.as_ref().unwrap().spi, first.teks[0].spi)
}

/// Member runtimes registered as a.example and b.example (GROUP_SENDER with
/// `sender_ids`), their events, and the Sender-IDs they got.
async fn members_a_and_b(
    gcks: SocketAddr,
    sender_ids: Option<u32>,
) -> ([(AgentHandle, Events); 2], Vec<u32>) {
    let mut got = Vec::new();
    let mut out = Vec::new();
    for id in ["a.example", "b.example"] {
        let h = agent();
        let events = h.subscribe().await.unwrap();
        let mut cfg = member(id, gcks);
        cfg.sender_ids = sender_ids;
        let g = h.join(cfg, Some(WAIT)).await.unwrap();
        assert_eq!(g.state, "up", "{g:?}");
        got.extend(g.sender_ids.clone());
        out.push((h, events));
    }
    (out.try_into().ok().unwrap(), got)
}

/// One registration of `id`, without a runtime (so without retries).
async fn register_once(
    gcks: SocketAddr,
    id: &str,
    sender_ids: Option<u32>,
) -> Result<gikev2_member::join::Joined, gikev2_member::join::JoinError> {
    let c = member(id, gcks);
    gikev2_member::join::join(
        c.ike,
        gcks,
        gikev2_proto::ike::RegistrationRequest {
            group: c.group_id,
            sag: Some(gikev2_member::sag::supported_sag()),
            sender_ids,
        },
        WAIT,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tek_renewals_and_a_rekey_sa_rollover_reach_the_members_by_multicast() {
    let dst = rekey_dst();
    let mut w = world(dst).await;
    let rx = listener(dst);
    let t0 = unix_now();
    let (k1, tek_a) = first_state(&mut w, t0).await;
    let ([(a, mut ea), (b, mut eb)], _) = members_a_and_b(w.gcks, None).await;
    for h in [&a, &b] {
        let st = h.status().await.unwrap();
        assert_eq!(st.groups[0].teks[0].spi, format!("{tek_a:#010x}"));
    }
    assert!(w.scheduler.tick(t0 + 1).await.is_empty(), "nothing changed");

    // 1. The TEK reaches its renew margin (a tenth of 600 s): a new TEK, the old one
    // deleted, over the Rekey SA the members hold, Message ID 0.
    let s = &tick_one(&mut w, t0 + u64::from(TEK_LIFETIME) - 55).await;
    let now = w.store.group_state(w.group).await.unwrap().unwrap();
    let tek_b = now.teks[0].spi;
    assert_ne!(tek_b, tek_a);
    assert_eq!(
        (s.message_id, s.over, s.new_rekey_sa),
        (0, k1, None),
        "first message over the Rekey SA"
    );
    assert_eq!(
        (s.new_teks.clone(), s.deleted_teks.clone()),
        (vec![tek_b], vec![tek_a])
    );
    assert_eq!(now.next_rekey_message_id, 1, "committed before sending");
    // RFC 9838 2.4.1.3: "The GSA, KD and N payloads follow with the same characteristics
    // as in the GSA Registration exchange": the group's TEKs are in transport mode, so the
    // new TEK comes with USE_TRANSPORT_MODE as at registration (2.3.4, docs/interop.md
    // #75).
    assert_eq!(
        rekey_notifies(&w, s).await,
        [gikev2_proto::registry::NotifyType::UseTransportMode]
    );
    let src = copies(&rx, s, 3).await;
    assert_eq!(src, w.gcks, "sent from the GCKS's IKE socket");
    for e in [&mut ea, &mut eb] {
        assert_eq!(
            rekeyed(e).await,
            pushed(0, hex(&[tek_b]), hex(&[tek_a]), false)
        );
    }

    // 2. The Rekey SA reaches its margin, renewed first by a registration (as
    // `ensure_current` does for one): the store no longer has the old SA's counter, so
    // the message over it takes the next ID from the scheduler's copy, and carries the
    // new Rekey SA and the TEK renewed with it.
    let t2 = t0 + u64::from(REKEY_LIFETIME) - 290;
    let cfg = group_cfg(&w).await;
    let renewed = ensure_current(&w.store, &cfg, 0, t2).await.unwrap();
    let (k2, tek_c) = (renewed.rekey.as_ref().unwrap().spi, renewed.teks[0].spi);
    assert_ne!(k2, k1);
    let s = &tick_one(&mut w, t2).await;
    assert_eq!((s.message_id, s.over, s.new_rekey_sa), (1, k1, Some(k2)));
    assert_eq!(
        (s.new_teks.clone(), s.deleted_teks.clone()),
        (vec![tek_c], vec![tek_b])
    );
    copies(&rx, s, 3).await;
    for e in [&mut ea, &mut eb] {
        assert_eq!(
            rekeyed(e).await,
            pushed(1, hex(&[tek_c]), hex(&[tek_b]), true)
        );
    }

    // 3. The next TEK renewal goes over the new Rekey SA, starting again at Message ID 0
    // (RFC 9838 2.4.1.3): the members accept it, so they installed the new KEK.
    let s = &tick_one(&mut w, t2 + u64::from(TEK_LIFETIME) - 55).await;
    let tek_d = w.store.group_state(w.group).await.unwrap().unwrap().teks[0].spi;
    assert_eq!((s.message_id, s.over, s.new_rekey_sa), (0, k2, None));
    copies(&rx, s, 3).await;
    for (h, e) in [(&a, &mut ea), (&b, &mut eb)] {
        assert_eq!(
            rekeyed(e).await,
            pushed(0, hex(&[tek_d]), hex(&[tek_c]), false)
        );
        // The copies arrived here (above); the agent counts them as it reads them.
        let deadline = tokio::time::Instant::now() + WAIT;
        let stats = loop {
            let st = h.status().await.unwrap();
            let stats = st.groups[0].rekey_stats.unwrap();
            if stats.replayed >= 6 || tokio::time::Instant::now() > deadline {
                break stats;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(stats.accepted, 3, "every message accepted once");
        assert_eq!(stats.replayed, 6, "the other copies dropped as replays");
    }
    // 4. A restarted GCKS (a new scheduler, same lease holder) past the next margin: it
    // starts from the store's state and takes the Message ID from the store's counter.
    w.scheduler = w.new_scheduler();
    let s = &tick_one(&mut w, t2 + 2 * (u64::from(TEK_LIFETIME) - 55)).await;
    let tek_e = w.store.group_state(w.group).await.unwrap().unwrap().teks[0].spi;
    assert_eq!((s.message_id, s.over, s.new_rekey_sa), (1, k2, None));
    assert_eq!(
        (s.new_teks.clone(), s.deleted_teks.clone()),
        (vec![tek_e], vec![tek_d])
    );
    copies(&rx, s, 3).await;
    for e in [&mut ea, &mut eb] {
        assert!(matches!(
            rekeyed(e).await,
            AgentEvent::Rekeyed {
                message_id: Some(1),
                ..
            }
        ));
    }
    assert_eq!(
        w.store
            .rekey_lease(w.group)
            .await
            .unwrap()
            .map(|l| l.holder),
        Some("test-gcks".into())
    );
    let _ = w.stop.send(());
}

/// RFC 9838 2.5.1 step 5 (R046): once the Sender-ID space is exhausted and a sender was
/// refused one, the rekey sender excludes every member (2.4.3: Delete of all ESP SAs and
/// of all GIKE_UPDATE SAs, nothing else) over the Rekey SA they hold, with new SAs in the
/// store first, and only then starts a new Sender-ID epoch; the members re-register and
/// get new TEKs and Sender-IDs from 0 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_sender_ids_exclude_every_member_before_a_new_epoch() {
    let dst = rekey_dst();
    let ids = ["a.example", "b.example", "c.example"];
    // Two bits: Sender-IDs 0 to 3.
    let mut w = world_with(dst, &ids, Role::Sender, Some(2)).await;
    let rx = listener(dst);
    let t0 = unix_now();
    let (k1, tek_a) = first_state(&mut w, t0).await;
    // a and b take two Sender-IDs each: the space is full, but nobody wants more yet.
    let ([(a, mut ea), (b, mut eb)], mut before) = members_a_and_b(w.gcks, Some(2)).await;
    before.sort();
    assert_eq!(before, vec![0, 1, 2, 3]);
    assert!(
        w.scheduler.tick(t0 + 1).await.is_empty(),
        "an exhausted space that no sender asks more of is left alone"
    );

    // c asks for one more: refused, and counted.
    let refused = register_once(w.gcks, "c.example", Some(1)).await;
    assert!(
        matches!(
            refused,
            Err(gikev2_member::join::JoinError::Refused(
                gikev2_proto::registry::NotifyType::RegistrationFailed
            ))
        ),
        "{:?}",
        refused.map(|_| ())
    );
    let st = w.store.group_state(w.group).await.unwrap().unwrap();
    assert_eq!((st.next_sender_id, st.sender_id_refusals), (4, 1));

    // The next tick starts over.
    let s = &tick_one(&mut w, t0 + 2).await;
    let now = w.store.group_state(w.group).await.unwrap().unwrap();
    let (k2, tek_b) = (now.rekey.as_ref().unwrap().spi, now.teks[0].spi);
    assert_ne!(k2, k1, "a new Rekey SA");
    assert_ne!(tek_b, tek_a, "a new TEK");
    assert_eq!(
        (s.message_id, s.over, s.excluded_all, s.sender_id_epoch),
        (0, k1, true, Some(1)),
        "over the Rekey SA the members hold, then a new epoch"
    );
    assert_eq!(
        (s.new_rekey_sa, s.new_teks.clone(), s.deleted_teks.clone()),
        (None, vec![], vec![]),
        "no new keys in an exclusion (RFC 9838 3.2.1)"
    );
    assert_eq!(
        (now.sender_id_epoch, now.sender_id_refusals),
        (1, 0),
        "the demand is met"
    );
    copies(&rx, s, 3).await;

    // Both members are excluded, re-register, and hold the new TEK and Sender-IDs of the
    // new epoch.
    let mut after = Vec::new();
    for (h, e) in [(&a, &mut ea), (&b, &mut eb)] {
        assert_eq!(
            rekeyed(e).await,
            pushed(0, vec![], hex(&[tek_a]), false),
            "the Delete of all ESP SAs names the TEK held"
        );
        let why = next_event(e, |e| match e {
            AgentEvent::Excluded { reason, .. } => Some(reason),
            _ => None,
        })
        .await;
        assert!(why.contains("GSA_REKEY Delete"), "{why}");
        let got = next_event(e, |e| match e {
            AgentEvent::GroupUp { sender_ids, .. } => Some(sender_ids),
            _ => None,
        })
        .await;
        after.extend(got);
        let st = h.status().await.unwrap();
        let g = &st.groups[0];
        // (The old TEK stays until DEACTIVATION_TIME_DELAY, RFC 9838 2.4.1.4.)
        assert!(
            g.teks.iter().any(|t| t.spi == format!("{tek_b:#010x}")),
            "{g:?}"
        );
    }
    after.sort();
    assert_eq!(after, vec![0, 1, 2, 3], "Sender-IDs from 0 again");
    let rows = w.store.sender_ids(w.group).await.unwrap();
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| r.epoch == 1), "{rows:?}");
    assert!(
        w.scheduler.tick(t0 + 3).await.is_empty(),
        "full again, but nobody was refused"
    );
    let _ = w.stop.send(());
}

/// RFC 9838 3.2.1 (R053): with forward access control, a member whose authorization
/// is withdrawn must not read what the group sends next. Without a key hierarchy the
/// rekey sender cannot reach the others without reaching it, so it excludes every member
/// over the old Rekey SA with no new keys or policy in that message; the members still
/// authorized re-register and get the new SAs, the one gone is refused. A group without
/// forward access control is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_member_is_cut_off_when_the_group_has_forward_access_control() {
    let dst = rekey_dst();
    let ids = ["a.example", "b.example", "c.example"];
    let mut w = world_with(dst, &ids, Role::Receiver, None).await;
    let rx = listener(dst);
    let t0 = unix_now();
    let (k1, tek_a) = first_state(&mut w, t0).await;
    let ([(a, mut ea), (_b, mut eb)], _) = members_a_and_b(w.gcks, None).await;
    register_once(w.gcks, "c.example", None).await.unwrap();
    assert_eq!(w.store.member_count(w.group).await.unwrap(), 3);
    let withdraw = |id: &'static str| {
        let (store, group) = (w.store.clone(), w.group);
        async move {
            let m = store.member(&Identity::fqdn(id)).await.unwrap().unwrap();
            assert!(store.deauthorize(m.id, group).await.unwrap());
        }
    };

    // 1. Without forward access control: c's authorization withdrawn ends its membership
    // (migrations 0005) and is counted, but nobody is excluded.
    withdraw("c.example").await;
    let st = w.store.group_state(w.group).await.unwrap().unwrap();
    assert_eq!(st.members_removed, 1);
    assert_eq!(w.store.member_count(w.group).await.unwrap(), 2);
    assert!(w.scheduler.tick(t0 + 1).await.is_empty());

    // 2. The administrator turns it on (plain SQL) and withdraws b: every member is
    // excluded for both departures, with nothing but the two Deletes.
    let pool = sqlx::SqlitePool::connect(&w.url).await.unwrap();
    sqlx::query("UPDATE groups SET forward_access_control = 1 WHERE name = 'g'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    withdraw("b.example").await;
    let s = &tick_one(&mut w, t0 + 2).await;
    assert_eq!(
        (s.message_id, s.over, s.excluded_all, s.members_removed),
        (0, k1, true, 2)
    );
    assert_eq!(
        (
            s.new_rekey_sa,
            s.new_teks.clone(),
            s.deleted_teks.clone(),
            s.sender_id_epoch
        ),
        (None, vec![], vec![], None),
        "no keys and no policy over the Rekey SA the withdrawn member holds (3.2.1)"
    );
    let now = w.store.group_state(w.group).await.unwrap().unwrap();
    let (k2, tek_b) = (now.rekey.as_ref().unwrap().spi, now.teks[0].spi);
    assert!(k2 != k1 && tek_b != tek_a, "every SA replaced");
    assert_eq!(now.members_removed, 0, "the departures are acted on");
    copies(&rx, s, 3).await;

    // a comes back with the new TEK; b is refused.
    for e in [&mut ea, &mut eb] {
        assert!(matches!(
            rekeyed(e).await,
            AgentEvent::Rekeyed { message_id: Some(0), ref installed, .. } if installed.is_empty()
        ));
        next_event(e, |e| {
            matches!(e, AgentEvent::Excluded { .. }).then_some(())
        })
        .await;
    }
    next_event(&mut ea, |e| {
        matches!(e, AgentEvent::GroupUp { .. }).then_some(())
    })
    .await;
    let st = a.status().await.unwrap();
    assert!(
        st.groups[0]
            .teks
            .iter()
            .any(|t| t.spi == format!("{tek_b:#010x}")),
        "{st:?}"
    );
    let notify = next_event(&mut eb, |e| match e {
        AgentEvent::Refused { notify, .. } => Some(notify),
        _ => None,
    })
    .await;
    assert!(notify.contains("AUTHORIZATION_FAILED"), "{notify}");
    assert_eq!(w.store.member_count(w.group).await.unwrap(), 1);
    assert!(
        w.scheduler.tick(t0 + 3).await.is_empty(),
        "re-registrations end no membership"
    );
    let _ = w.stop.send(());
}

/// A second TEK policy for the group of `world_with`: the same AES-GCM-256 to another
/// multicast address.
fn second_tek_policy() -> TekPolicySpec {
    aes_gcm_256_tek(
        "239.77.0.2",
        SnPolicy::Fixed(SnId::Unspecified32),
        EspMode::Transport,
    )
}

/// The Rekey SA an agent listens on as current, as status shows it (32 hex digits).
async fn current_kek(h: &AgentHandle) -> String {
    let st = h.status().await.unwrap();
    let current: Vec<_> = st.groups[0]
        .rekey_sas
        .iter()
        .filter(|r| r.current)
        .map(|r| r.spi.clone())
        .collect();
    assert_eq!(current.len(), 1, "{st:?}");
    current[0].clone()
}

fn kek_hex(spi: &[u8; 16]) -> String {
    spi.iter().map(|b| format!("{b:02x}")).collect()
}

/// The TEK SPIs an agent holds and does not delete, with their algorithms.
async fn active_teks(h: &AgentHandle) -> Vec<(String, String)> {
    let st = h.status().await.unwrap();
    let mut teks: Vec<_> = st.groups[0]
        .teks
        .iter()
        .filter(|t| t.state == "active" && t.direction == "inbound")
        .map(|t| (t.spi.clone(), t.algorithm.clone()))
        .collect();
    teks.sort();
    teks.dedup();
    teks
}

/// The store's Rekey SA SPI and TEK SPIs (in the store's order).
async fn stored(w: &World) -> ([u8; 16], Vec<u32>) {
    let st = w.store.group_state(w.group).await.unwrap().unwrap();
    (
        st.rekey.as_ref().unwrap().spi,
        st.teks.iter().map(|t| t.spi).collect(),
    )
}

/// The notifies of `sent`, a GSA_REKEY over the group's current Rekey SA, opened with that
/// SA's keys from the store.
async fn rekey_notifies(w: &World, sent: &SentRekey) -> Vec<gikev2_proto::registry::NotifyType> {
    use gikev2_proto::group::GroupAuth;
    use gikev2_proto::ike::protect::{self, Reassembly};
    use gikev2_proto::wire::TrafficSelector;
    use gikev2_proto::wire::payload::PayloadsExt;
    let cfg = group_cfg(w).await;
    let st = w.store.group_state(w.group).await.unwrap().unwrap();
    assert_eq!(
        st.rekey.as_ref().unwrap().spi,
        sent.over,
        "the stored Rekey SA"
    );
    let state = gikev2_gcks::state::to_proto(
        &cfg,
        &st,
        GroupAuth::Implicit,
        false,
        &TrafficSelector::any(false),
    )
    .unwrap();
    let sk = state.rekey.unwrap().sk_key().unwrap();
    let opened = protect::open(&sk, &sent.datagrams[0], &mut Reassembly::default())
        .unwrap()
        .unwrap();
    opened.payloads.notifies().map(|n| n.ty).collect()
}

/// The one message a tick at `now` sends.
async fn tick_one(w: &mut World, now: u64) -> SentRekey {
    let sent = w.scheduler.tick(now).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    sent.into_iter().next().unwrap().unwrap()
}

/// RFC 9838 3.2.1 (R055): "A G-IKEv2 rekey message MUST NOT change the policy without
/// creating a new KEK." A TEK policy added to a running group (admin API) is pushed with
/// its TEK and a new Rekey SA in the same GSA_REKEY, over the Rekey SA the members hold;
/// the members move to the new KEK (the next message over it has Message ID 0 and they
/// accept it). A scheduled TEK renewal under an unchanged policy is no policy change and
/// keeps the KEK (docs/interop.md #53).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tek_policy_added_to_a_running_group_comes_with_a_new_kek() {
    let dst = rekey_dst();
    let mut w = world(dst).await;
    let rx = listener(dst);
    let t0 = unix_now();
    let (k1, tek_a) = first_state(&mut w, t0).await;
    let ([(a, mut ea), (b, mut eb)], _) = members_a_and_b(w.gcks, None).await;
    assert!(w.scheduler.tick(t0 + 1).await.is_empty(), "nothing changed");

    // 1. A second TEK policy: its TEK and a new Rekey SA in one message over k1.
    w.store
        .add_tek_policy(w.group, &second_tek_policy())
        .await
        .unwrap();
    let s = tick_one(&mut w, t0 + 2).await;
    let (k2, teks) = stored(&w).await;
    assert_ne!(k2, k1, "the store's Rekey SA is replaced");
    assert_eq!(teks.len(), 2);
    assert_eq!(teks[0], tek_a, "the first policy's TEK is kept");
    let tek_p = teks[1];
    assert_eq!(
        (s.message_id, s.over, s.new_rekey_sa, s.policy_changed),
        (0, k1, Some(k2), true),
        "over the KEK the members hold, with a new one"
    );
    assert_eq!(
        (s.new_teks.clone(), s.deleted_teks.clone()),
        (vec![tek_p], vec![])
    );
    let st = w.store.group_state(w.group).await.unwrap().unwrap();
    assert_eq!(
        st.next_rekey_message_id, 0,
        "a new Rekey SA starts at 0 (2.4.1.3)"
    );
    copies(&rx, &s, 3).await;
    for (h, e) in [(&a, &mut ea), (&b, &mut eb)] {
        assert_eq!(rekeyed(e).await, pushed(0, hex(&[tek_p]), vec![], true));
        assert_eq!(current_kek(h).await, kek_hex(&k2));
        let held: Vec<String> = active_teks(h).await.into_iter().map(|t| t.0).collect();
        let mut want = hex(&[tek_a, tek_p]);
        want.sort();
        assert_eq!(held, want);
    }
    assert!(w.scheduler.tick(t0 + 3).await.is_empty(), "told once");

    // 2. Both TEKs past the push margin (a quarter of 600 s left): renewed under the same
    // policies, over k2 from Message ID 0, and the KEK stays.
    let s = tick_one(&mut w, t0 + u64::from(TEK_LIFETIME) - 55).await;
    let (k, renewed) = stored(&w).await;
    assert_eq!(k, k2, "no new KEK for a TEK renewal");
    assert_eq!(
        (s.message_id, s.over, s.new_rekey_sa, s.policy_changed),
        (0, k2, None, false)
    );
    assert_eq!(
        (s.new_teks.clone(), s.deleted_teks.clone()),
        (renewed.clone(), vec![tek_a, tek_p])
    );
    copies(&rx, &s, 3).await;
    for (h, e) in [(&a, &mut ea), (&b, &mut eb)] {
        assert_eq!(
            rekeyed(e).await,
            pushed(0, hex(&renewed), hex(&[tek_a, tek_p]), false),
            "accepted over the new KEK"
        );
        assert_eq!(current_kek(h).await, kek_hex(&k2));
    }
    let _ = w.stop.send(());
}

/// The group's configuration as the store has it now.
async fn group_cfg(w: &World) -> gikev2_policy::GroupConfig {
    w.store
        .group_config(&Identity::key_id(b"g"))
        .await
        .unwrap()
        .unwrap()
}

/// Edits TEK policy `p`'s AES key size with plain SQL, as an operator would.
async fn set_tek_key_bits(w: &World, p: gikev2_policy::TekPolicyId, bits: u16) {
    let pool = sqlx::SqlitePool::connect(&w.url).await.unwrap();
    sqlx::query("UPDATE tek_policies SET encr_key_bits = $2 WHERE id = $1")
        .bind(p.0)
        .bind(i64::from(bits))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

/// RFC 9838 3.2.1 (R055) across a restart: the policy announced to the members is kept in
/// the store (`group_state.announced_policy`), so a TEK policy edited while no GCKS ran
/// is a change for the restarted one: the GSA_REKEY with the edited policy's new TEK also
/// carries a new Rekey SA, over the one the members hold, and they follow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_edited_while_the_gcks_was_down_comes_with_a_new_kek() {
    let dst = rekey_dst();
    let mut w = world(dst).await;
    let p1 = w.store.tek_policies(w.group).await.unwrap()[0].id;
    let rx = listener(dst);
    let t0 = unix_now();
    let (k1, tek_1) = first_state(&mut w, t0).await;
    assert!(
        w.store.announced_policy(w.group).await.unwrap().is_some(),
        "recorded at the first look"
    );
    let ([(a, mut ea), (b, mut eb)], _) = members_a_and_b(w.gcks, None).await;
    // The GCKS stops; the operator edits the policy; another GCKS process starts.
    set_tek_key_bits(&w, p1, 128).await;
    w.scheduler = w.new_scheduler();
    let s = tick_one(&mut w, t0 + 2).await;
    let (k2, teks) = stored(&w).await;
    assert_ne!(k2, k1);
    assert_eq!(
        (s.over, s.new_rekey_sa, s.policy_changed),
        (k1, Some(k2), true)
    );
    assert_eq!(
        (s.deleted_teks.clone(), s.new_teks.clone()),
        (vec![tek_1], teks.clone())
    );
    copies(&rx, &s, 3).await;
    for (h, e) in [(&a, &mut ea), (&b, &mut eb)] {
        assert_eq!(
            rekeyed(e).await,
            pushed(s.message_id, hex(&teks), hex(&[tek_1]), true)
        );
        assert_eq!(current_kek(h).await, kek_hex(&k2));
    }
    // And a third process, with nothing edited since, sees no change.
    w.scheduler = w.new_scheduler();
    assert!(w.scheduler.tick(t0 + 3).await.is_empty(), "told once");
}

/// RFC 9838 3.2.1 (R055), the other policy changes: a TEK policy edited so that its TEK
/// is replaced (another key size, plain SQL) and a TEK policy deleted (admin API) each go
/// out with a new Rekey SA, the edit with the new TEK and the Delete of the old one, the
/// removal with the Delete of its TEK; then a scheduled renewal keeps the last KEK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_or_removed_tek_policy_comes_with_a_new_kek() {
    let dst = rekey_dst();
    let mut w = world(dst).await;
    let p2 = w
        .store
        .add_tek_policy(w.group, &second_tek_policy())
        .await
        .unwrap();
    let p1 = w.store.tek_policies(w.group).await.unwrap()[0].id;
    let rx = listener(dst);
    let t0 = unix_now();
    let (k1, _) = first_state(&mut w, t0).await;
    let (_, teks) = stored(&w).await;
    let (tek_1, tek_2) = (teks[0], teks[1]);
    let ([(a, mut ea), (b, mut eb)], _) = members_a_and_b(w.gcks, None).await;
    assert!(w.scheduler.tick(t0 + 1).await.is_empty(), "nothing changed");

    // 1. The first policy goes from AES-GCM-256 to AES-GCM-128: its TEK is replaced and
    // the message carries a new Rekey SA too.
    set_tek_key_bits(&w, p1, 128).await;
    let s = tick_one(&mut w, t0 + 2).await;
    let (k2, teks) = stored(&w).await;
    assert_ne!(k2, k1);
    let tek_1b = teks[0];
    assert_eq!(teks, vec![tek_1b, tek_2]);
    assert_eq!(
        (s.message_id, s.over, s.new_rekey_sa, s.policy_changed),
        (0, k1, Some(k2), true)
    );
    assert_eq!(
        (s.new_teks.clone(), s.deleted_teks.clone()),
        (vec![tek_1b], vec![tek_1])
    );
    copies(&rx, &s, 3).await;
    for (h, e) in [(&a, &mut ea), (&b, &mut eb)] {
        assert_eq!(
            rekeyed(e).await,
            pushed(0, hex(&[tek_1b]), hex(&[tek_1]), true)
        );
        assert_eq!(current_kek(h).await, kek_hex(&k2));
        let held = active_teks(h).await;
        assert!(
            held.contains(&(hex(&[tek_1b])[0].clone(), "ENCR_AES_GCM_16-128".into())),
            "{held:?}"
        );
    }

    // 2. The second policy deleted: the Delete of its TEK, with a new Rekey SA, over k2.
    assert!(w.store.delete_tek_policy(p2).await.unwrap());
    let s = tick_one(&mut w, t0 + 3).await;
    let (k3, teks) = stored(&w).await;
    assert!(k3 != k2 && k3 != k1);
    assert_eq!(teks, vec![tek_1b]);
    assert_eq!(
        (s.message_id, s.over, s.new_rekey_sa, s.policy_changed),
        (0, k2, Some(k3), true),
        "the first message over k2"
    );
    assert_eq!(
        (s.new_teks.clone(), s.deleted_teks.clone()),
        (vec![], vec![tek_2])
    );
    copies(&rx, &s, 3).await;
    for (h, e) in [(&a, &mut ea), (&b, &mut eb)] {
        assert_eq!(rekeyed(e).await, pushed(0, vec![], hex(&[tek_2]), true));
        assert_eq!(current_kek(h).await, kek_hex(&k3));
    }
    assert!(w.scheduler.tick(t0 + 4).await.is_empty(), "told once");

    // 3. The remaining TEK renewed on schedule: over k3 from Message ID 0, same KEK.
    let s = tick_one(&mut w, t0 + 2 + u64::from(TEK_LIFETIME) - 55).await;
    let (k, teks) = stored(&w).await;
    assert_eq!(k, k3);
    assert_eq!(
        (s.message_id, s.over, s.new_rekey_sa, s.policy_changed),
        (0, k3, None, false)
    );
    assert_eq!(
        (s.new_teks.clone(), s.deleted_teks.clone()),
        (teks.clone(), vec![tek_1b])
    );
    copies(&rx, &s, 3).await;
    for e in [&mut ea, &mut eb] {
        assert_eq!(
            rekeyed(e).await,
            pushed(0, hex(&teks), hex(&[tek_1b]), false)
        );
    }
    let _ = w.stop.send(());
}

/// RFC 9838 4.4.2 (R063): the KEK policy's source selector "SHOULD define a single IP
/// address, an IP protocol (assumed to be UDP) and a single port the GSA_REKEY messages
/// will be originated from". A group with no configured rekey source, a GCKS bound to
/// every address (so the socket says no address; `--multicast-if` does): the selector a
/// member registers with is one address, UDP, one port; the GSA_REKEY datagrams come from
/// exactly there; and the new Rekey SA they carry has the same selector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kek_source_selector_names_the_address_and_port_gsa_rekey_comes_from() {
    use gikev2_proto::group::{RekeyReader, Role as KeyRole, read_registration};
    use gikev2_proto::registry::ProtocolId;
    use gikev2_proto::wire::TrafficSelector;

    let dst = rekey_dst();
    let listen = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let mut w = world_listening(dst, &["a.example"], Role::Receiver, None, listen).await;
    let cfg = group_cfg(&w).await;
    assert_eq!(
        (cfg.group.spec.rekey.src_addr, cfg.group.spec.rekey.src_port),
        (None, None),
        "no configured rekey source"
    );
    let rx = listener(dst);
    let t0 = unix_now();
    let (k1, _) = first_state(&mut w, t0).await;

    let joined = register_once(w.gcks, "a.example", None).await.unwrap();
    let kek_policy = joined.gsa.kek().expect("a KEK policy").clone();
    assert_eq!(kek_policy.protocol, ProtocolId::GikeUpdate);
    let TrafficSelector::Range {
        ip_protocol,
        start_port,
        end_port,
        start,
        end,
    } = kek_policy.src.clone()
    else {
        panic!("{:?}", kek_policy.src)
    };
    assert_eq!(start, end, "one address: {:?}", kek_policy.src);
    assert_eq!(start_port, end_port, "one port: {:?}", kek_policy.src);
    assert_eq!(ip_protocol, 17, "UDP");
    let named = SocketAddr::new(start, start_port);
    assert!(!start.is_unspecified() && start_port != 0, "{named}");
    let keys = read_registration(&joined.gsa, &joined.kd, &joined.kwk, KeyRole::Receiver).unwrap();
    assert_eq!(keys.rekey.as_ref().unwrap().src, kek_policy.src);
    let mut reader = RekeyReader::new(&keys, std::time::Instant::now()).unwrap();

    // The Rekey SA reaches its push margin: a GSA_REKEY with a new Rekey SA.
    let s = &tick_one(&mut w, t0 + u64::from(REKEY_LIFETIME) - 890).await;
    assert_eq!(s.over, k1);
    assert!(s.new_rekey_sa.is_some());
    let from = copies(&rx, s, 3).await;
    assert_eq!(
        from, named,
        "GSA_REKEY comes from the source the KEK policy names"
    );
    let mut update = None;
    for d in &s.datagrams {
        update = reader.handle(d, std::time::Instant::now()).unwrap();
    }
    let update = update.expect("the GSA_REKEY is read");
    assert_eq!(
        update.new_rekey.expect("a new Rekey SA").src,
        kek_policy.src,
        "registrations and GSA_REKEY name the same source"
    );
    let _ = w.stop.send(());
}

/// The SN transform of the inbound TEK `spi` an agent holds, as its status shows it.
async fn held_tek(h: &AgentHandle, spi: u32) -> Option<String> {
    let st = h.status().await.unwrap();
    st.groups[0]
        .teks
        .iter()
        .find(|t| t.spi == format!("{spi:#010x}") && t.direction == "inbound")
        .map(|t| t.sn.clone())
}

/// RFC 9838 4.4.2.1.3 (R077) and 2.6 (R049), pushed by multicast, with
/// `tek_policies.sn_id` NULL (`--sn auto`) and `max_packet_rate` 10,000,000: with one
/// sender authorized the TEK has "32-bit Sequential Numbers" and lives (2^32 - 1) /
/// 10,000,000 = 429 s instead of the group's 600 s, and its scheduled renewal keeps both
/// (no policy change, same KEK). When a second sender is authorized the next tick replaces
/// it with a TEK with "32-bit Unspecified Numbers" (new SPI and keys, the group's
/// lifetime) in a GSA_REKEY that also carries a new Rekey SA: the SN transform members
/// hold changed, a policy change (3.2.1, docs/interop.md #58).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sender_replaces_the_sequential_tek_by_multicast() {
    use gikev2_proto::group::{RekeyReader, Role as KeyRole, read_registration};

    let dst = rekey_dst();
    let mut w = world_with(dst, &["a.example", "b.example"], Role::Receiver, Some(8)).await;
    let pool = sqlx::SqlitePool::connect(&w.url).await.unwrap();
    let sql = |q: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query(q).execute(&pool).await.unwrap() }
    };
    sql("UPDATE tek_policies SET sn_id = NULL, max_packet_rate = 10000000").await;
    sql(
        "UPDATE authorizations SET role = 'sender' WHERE member_id = \
         (SELECT id FROM members WHERE id_value = CAST('a.example' AS BLOB))",
    )
    .await;
    let bound = u64::from(u32::MAX) / 10_000_000;
    assert_eq!(bound, 429);
    let rx = listener(dst);
    let t0 = unix_now();
    let (k1, tek_1) = first_state(&mut w, t0).await;

    // a, the only sender, registers: sequential numbers, 429 s.
    let joined = register_once(w.gcks, "a.example", Some(1)).await.unwrap();
    let keys = read_registration(
        &joined.gsa,
        &joined.kd,
        &joined.kwk,
        KeyRole::Sender { receives: true },
    )
    .unwrap();
    assert_eq!(keys.teks.len(), 1);
    assert_eq!((keys.teks[0].spi, keys.teks[0].sn), (tek_1, SnId::Seq32));
    let life = u64::from(keys.teks[0].lifetime.unwrap());
    assert!(life <= bound, "GSA_KEY_LIFETIME {life} s (R049)");
    let mut reader = RekeyReader::new(&keys, std::time::Instant::now()).unwrap();
    let read = |reader: &mut RekeyReader, s: &SentRekey| {
        let mut update = None;
        for d in &s.datagrams {
            update = reader.handle(d, std::time::Instant::now()).unwrap();
        }
        update.expect("the GSA_REKEY is read")
    };
    // b, a receiver, runs the member runtime.
    let b = agent();
    let mut eb = b.subscribe().await.unwrap();
    assert_eq!(
        b.join(member("b.example", w.gcks), Some(WAIT))
            .await
            .unwrap()
            .state,
        "up"
    );
    assert_eq!(
        held_tek(&b, tek_1).await.as_deref(),
        Some("32-bit Sequential Numbers")
    );
    assert!(w.scheduler.tick(t0 + 1).await.is_empty(), "nothing changed");

    // 1. Renewed on schedule, a quarter of its own 429 s early: sequential again, 429 s,
    // same KEK.
    let s = tick_one(&mut w, t0 + bound - 108).await;
    let (_, teks) = stored(&w).await;
    let tek_2 = teks[0];
    assert_eq!(
        (s.message_id, s.over, s.new_rekey_sa, s.policy_changed),
        (0, k1, None, false)
    );
    assert_eq!(
        (s.new_teks.clone(), s.deleted_teks.clone()),
        (vec![tek_2], vec![tek_1])
    );
    let u = read(&mut reader, &s);
    assert_eq!((u.teks[0].spi, u.teks[0].sn), (tek_2, SnId::Seq32));
    let life = u64::from(u.teks[0].lifetime.unwrap());
    assert!(
        (bound - 1..=bound).contains(&life),
        "pushed GSA_KEY_LIFETIME {life} s (R049)"
    );
    copies(&rx, &s, 3).await;
    assert_eq!(
        rekeyed(&mut eb).await,
        pushed(0, hex(&[tek_2]), hex(&[tek_1]), false)
    );

    // 2. b becomes a second sender: its TEK is replaced at the next tick, with
    // unspecified numbers and a new KEK, over the KEK the members hold.
    sql(
        "UPDATE authorizations SET role = 'sender' WHERE member_id = \
         (SELECT id FROM members WHERE id_value = CAST('b.example' AS BLOB))",
    )
    .await;
    pool.close().await;
    let t1 = t0 + bound - 107;
    let s = tick_one(&mut w, t1).await;
    let (k2, teks) = stored(&w).await;
    let tek_3 = teks[0];
    assert_ne!(tek_3, tek_2);
    assert_ne!(k2, k1);
    assert_eq!(
        (s.message_id, s.over, s.new_rekey_sa, s.policy_changed),
        (1, k1, Some(k2), true),
        "another SN transform is a policy change: a new KEK (3.2.1)"
    );
    assert_eq!(
        (s.new_teks.clone(), s.deleted_teks.clone()),
        (vec![tek_3], vec![tek_2])
    );
    let st = w.store.group_state(w.group).await.unwrap().unwrap();
    assert_eq!(st.teks[0].sn, SnId::Unspecified32);
    assert_eq!(st.teks[0].expires, t1 + u64::from(TEK_LIFETIME));
    let u = read(&mut reader, &s);
    assert_eq!((u.teks[0].spi, u.teks[0].sn), (tek_3, SnId::Unspecified32));
    assert!(u.new_rekey.is_some());
    let life = u64::from(u.teks[0].lifetime.unwrap());
    assert!(
        life > bound && life <= u64::from(TEK_LIFETIME),
        "the group's lifetime: {life} s"
    );
    copies(&rx, &s, 3).await;
    assert_eq!(
        rekeyed(&mut eb).await,
        pushed(1, hex(&[tek_3]), hex(&[tek_2]), true)
    );
    assert_eq!(
        held_tek(&b, tek_3).await.as_deref(),
        Some("32-bit Unspecified Numbers")
    );
    assert!(w.scheduler.tick(t1 + 1).await.is_empty(), "told once");
    let _ = w.stop.send(());
}

/// RFC 9838 4.4.2.1.3 (R077) with RFC 4303 3.4.3, docs/interop.md #65: a TEK with
/// sequential numbers goes to at most one sender registration. The only sender registers
/// (its TEK stays: nothing to push), then registers again as a restarted `gm` would: it
/// gets a new TEK with sequential numbers, and the next tick pushes that TEK to the
/// receivers in a GSA_REKEY over the KEK they hold, with a Delete of the old one and no new
/// KEK (the policy is unchanged, docs/interop.md #53). A TEK the scheduler pushed while a
/// sender was authorized reached that sender too, so the sender's next registration
/// replaces it as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_registering_again_gets_a_new_sequential_tek_pushed_without_a_new_kek() {
    use gikev2_proto::group::{Role as KeyRole, read_registration};

    let dst = rekey_dst();
    let mut w = world_with(dst, &["a.example", "b.example"], Role::Receiver, Some(8)).await;
    let pool = sqlx::SqlitePool::connect(&w.url).await.unwrap();
    sqlx::query("UPDATE tek_policies SET sn_id = NULL")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE authorizations SET role = 'sender' WHERE member_id = \
         (SELECT id FROM members WHERE id_value = CAST('a.example' AS BLOB))",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let gcks = w.gcks;
    // a registers as a sender: the SPI of its one TEK, which has sequential numbers.
    let a_registers = || async move {
        let joined = register_once(gcks, "a.example", Some(1)).await.unwrap();
        let keys = read_registration(
            &joined.gsa,
            &joined.kd,
            &joined.kwk,
            KeyRole::Sender { receives: true },
        )
        .unwrap();
        assert_eq!(keys.teks.len(), 1);
        assert_eq!(keys.teks[0].sn, SnId::Seq32);
        keys.teks[0].spi
    };
    let rx = listener(dst);
    let t0 = unix_now();
    let (k1, tek_1) = first_state(&mut w, t0).await;
    // b, a receiver, runs the member runtime.
    let b = agent();
    let mut eb = b.subscribe().await.unwrap();
    assert_eq!(
        b.join(member("b.example", w.gcks), Some(WAIT))
            .await
            .unwrap()
            .state,
        "up"
    );
    assert_eq!(
        held_tek(&b, tek_1).await.as_deref(),
        Some("32-bit Sequential Numbers")
    );

    // 1. The first sender registration keeps the TEK.
    assert_eq!(a_registers().await, tek_1);
    assert!(w.scheduler.tick(t0 + 1).await.is_empty(), "nothing changed");

    // 2. a again: a new TEK, pushed to b over the KEK it holds, no new KEK.
    let tek_2 = a_registers().await;
    assert_ne!(tek_2, tek_1);
    assert_eq!(stored(&w).await, (k1, vec![tek_2]));
    let s = tick_one(&mut w, t0 + 2).await;
    assert_eq!(
        (s.message_id, s.over, s.new_rekey_sa, s.policy_changed),
        (0, k1, None, false),
        "a new TEK under the same policy keeps the KEK (docs/interop.md #53)"
    );
    assert_eq!(
        (s.new_teks.clone(), s.deleted_teks.clone()),
        (vec![tek_2], vec![tek_1])
    );
    copies(&rx, &s, 3).await;
    assert_eq!(
        rekeyed(&mut eb).await,
        pushed(0, hex(&[tek_2]), hex(&[tek_1]), false)
    );
    assert_eq!(
        held_tek(&b, tek_2).await.as_deref(),
        Some("32-bit Sequential Numbers")
    );
    assert!(w.scheduler.tick(t0 + 3).await.is_empty(), "told once");

    // 3. A scheduled renewal pushed while a is authorized to send: a got it too, so its
    // next registration replaces it.
    let renewal = u64::from(TEK_LIFETIME) - u64::from(TEK_LIFETIME) / 4 + 10;
    let s = tick_one(&mut w, t0 + renewal).await;
    let (_, teks) = stored(&w).await;
    let tek_3 = teks[0];
    assert_eq!(
        (s.message_id, s.new_rekey_sa, s.new_teks.clone()),
        (1, None, vec![tek_3])
    );
    assert_eq!(
        w.store.sender_claimed_teks(w.group).await.unwrap(),
        vec![tek_3]
    );
    let tek_4 = a_registers().await;
    assert!(tek_4 != tek_3 && tek_4 != tek_2, "{tek_4:#x}");
    assert_eq!(
        w.store.sender_claimed_teks(w.group).await.unwrap(),
        vec![tek_4]
    );
    let _ = w.stop.send(());
}

/// A group row an SQL edit made unreadable (an address SQLite's CHECK lets through) does
/// not stop the GSA_REKEY of the other groups: the tick reports it, naming the row, and
/// still pushes the other group's change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_group_row_does_not_stop_the_other_groups() {
    let dst = rekey_dst();
    let mut w = world(dst).await;
    let rx = listener(dst);
    let t0 = unix_now();
    first_state(&mut w, t0).await;
    let pool = sqlx::SqlitePool::connect(&w.url).await.unwrap();
    sqlx::query(
        "INSERT INTO groups (name, idg_type, idg_value, capacity, rekey_mode, \
         rekey_dst_addr, rekey_dst_port, rekey_lifetime_secs, rekey_encr_id, \
         rekey_encr_key_bits, rekey_kwa_id, gcauth_id, tek_lifetime_secs, created_at) \
         VALUES ('broken', 11, CAST('broken' AS BLOB), 5, 'multicast', '239.0.0.999', 848, \
         86400, 20, 256, 3, 1, 3600, 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    // A change in the readable group: its TEK is replaced and pushed.
    sqlx::query("UPDATE tek_policies SET encr_key_bits = 128")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (sent, refused): (Vec<_>, Vec<_>) = w
        .scheduler
        .tick(t0 + 1)
        .await
        .into_iter()
        .partition(Result::is_ok);
    assert_eq!((sent.len(), refused.len()), (1, 1), "{sent:?} {refused:?}");
    let e = refused[0].as_ref().unwrap_err().to_string();
    assert!(
        e.contains("groups.rekey_dst_addr of group \"broken\""),
        "{e}"
    );
    let s = sent[0].as_ref().unwrap();
    assert!(s.policy_changed, "{s:?}");
    copies(&rx, s, 3).await;
}
