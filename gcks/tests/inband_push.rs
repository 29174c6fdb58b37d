//! The GCKS's GSA_INBAND_REKEY sender (`gikev2_gcks::inband`) on a SQLite store, through
//! the server over loopback, with two members running the member runtime: a group rekeyed
//! in-band keeps its members' IKE SAs open, and a TEK renewal reaches them over those SAs
//! (RFC 9838 2.4.2) without a registration; the sender keeps its Sender-IDs (4.5.3.3).
//!
//! The sender's clock is passed to `tick`, so the test moves to the renew margin without
//! waiting; members keep the real clock (in-band members get no lifetimes, 4.4.2.2.1).

mod common;

use common::{WAIT, add_psk_members, aes_gcm_256_tek, next_event, psk_membership, suite};

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use gikev2_esp::Engine;
use gikev2_gcks::credentials::{CacheConfig, CredentialCache, StoreLoader};
use gikev2_gcks::registrar::unix_now;
use gikev2_gcks::state::push_margin;
use gikev2_gcks::{InbandScheduler, ServeConfig, Server, StoreRegistrar};
use gikev2_member::config::MembershipConfig;
use gikev2_member::runtime::{self, RuntimeConfig};
use gikev2_member::{AgentEvent, AgentHandle, NoDataPlane, SystemClock};
use gikev2_policy::{
    EspMode, GroupId, GroupSpec, GroupWidePolicy, Identity, MasterKey, RekeyConfig, RekeyMode,
    Role, SnPolicy, Store,
};
use gikev2_proto::crypto::{SecretBytes, SystemRandom};
use gikev2_proto::ike::{IkeConfig, LocalAuth, PeerAuthResolver};
use gikev2_proto::registry::{EncrId, GcAuthId, KwaId, SnId};
use gikev2_proto::wire::IdPayload;

const GCKS_PSK: &[u8] = b"inband push gcks psk";
const TEK_LIFETIME: u32 = 600;
/// The server deletes an idle registration IKE SA after this, unless it is kept.
const IDLE: Duration = Duration::from_millis(200);

struct World {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    group: GroupId,
    gcks: SocketAddr,
    scheduler: InbandScheduler,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// An in-band group with one AES-GCM TEK (a counter mode: senders get Sender-IDs);
/// a.example authorized as sender, b.example as receiver.
async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("gcks.db").display());
    let key_path = dir.path().join("gcks.key");
    let key = MasterKey::load_or_create(&key_path, &mut SystemRandom::new()).unwrap();
    let store = Arc::new(Store::open(&url, key).await.unwrap());
    let group = store
        .create_group(
            &GroupSpec {
                name: "g".into(),
                idg: Identity::key_id(b"g"),
                capacity: 10,
                rekey: RekeyConfig {
                    mode: RekeyMode::Inband,
                    dst: None,
                    src_addr: None,
                    src_port: None,
                    lifetime: 3600,
                    encr: EncrId::AesGcm16,
                    encr_key_bits: Some(256),
                    integ: None,
                    kwa: KwaId::Kw5649_256,
                    gcauth: GcAuthId::Implicit,
                    signing_key: None,
                },
                tek_lifetime: TEK_LIFETIME,
                policy: GroupWidePolicy {
                    dtd: Some(1),
                    sender_id_bits: Some(8),
                    ..GroupWidePolicy::default()
                },
            },
            0,
        )
        .await
        .unwrap();
    // One sender, a multicast destination: 32-bit Sequential Numbers (R077).
    let tek = aes_gcm_256_tek("239.78.0.1", SnPolicy::Auto, EspMode::Transport);
    store.add_tek_policy(group, &tek).await.unwrap();
    add_psk_members(
        &store,
        group,
        &[("a.example", Role::Sender), ("b.example", Role::Receiver)],
    )
    .await;
    let loader = StoreLoader::start(url.clone(), key_path).unwrap();
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
        listen: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 0))],
        init_rate_per_source: 100,
        ike_idle_close: Some(IDLE),
        ..ServeConfig::default()
    };
    let registrar = StoreRegistrar::new(store.clone());
    let views = registrar.group_views();
    let server = Server::bind(ike, cfg, registrar).unwrap();
    let gcks = server.local_addrs()[0];
    let scheduler = InbandScheduler::new(
        store.clone(),
        server.inband_pusher(),
        Duration::from_secs(1),
    )
    .with_views(views);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    World {
        _dir: dir,
        store,
        group,
        gcks,
        scheduler,
        _stop: stop,
    }
}

fn member(id: &str, gcks: SocketAddr, sender: bool) -> MembershipConfig {
    MembershipConfig {
        sender_ids: sender.then_some(1),
        receive: sender,
        ..psk_membership(id, gcks)
    }
}

fn agent() -> AgentHandle {
    runtime::spawn(
        Arc::new(Engine::default()),
        Arc::new(NoDataPlane),
        RuntimeConfig::default(),
        Arc::new(SystemClock),
    )
    .0
}

/// The TEK SPIs an agent holds and does not delete.
async fn active_teks(h: &AgentHandle) -> Vec<String> {
    let st = h.status().await.unwrap();
    let mut teks: Vec<_> = st.groups[0]
        .teks
        .iter()
        .filter(|t| t.state == "active")
        .map(|t| t.spi.clone())
        .collect();
    teks.sort();
    teks.dedup();
    teks
}

/// Every TEK SPI an agent holds, active or being deleted.
async fn held_teks(h: &AgentHandle) -> Vec<String> {
    let st = h.status().await.unwrap();
    let mut teks: Vec<_> = st.groups[0].teks.iter().map(|t| t.spi.clone()).collect();
    teks.sort();
    teks.dedup();
    teks
}

/// An agent's event subscription.
type Events = tokio::sync::mpsc::Receiver<AgentEvent>;

/// a.example (sender) and b.example (receiver) joined and up, without a Rekey SA (Table
/// 3): each agent, its events, and the Sender-IDs it got.
async fn join_a_and_b(w: &World) -> Vec<(AgentHandle, Events, Vec<u32>)> {
    let mut members = Vec::new();
    for (id, sender) in [("a.example", true), ("b.example", false)] {
        let h = agent();
        let events = h.subscribe().await.unwrap();
        let g = h
            .join(member(id, w.gcks, sender), Some(WAIT))
            .await
            .unwrap();
        assert_eq!(g.state, "up", "{g:?}");
        assert!(g.rekey_sas.is_empty(), "no Rekey SA in-band (Table 3)");
        members.push((h, events, g.sender_ids.clone()));
    }
    members
}

fn hex(spi: u32) -> String {
    format!("{spi:#010x}")
}

/// RFC 9838 2.4.2: the members of an in-band group keep their IKE SAs past the server's
/// idle close; a TEK due for renewal is renewed in the store and sent to each of them in
/// a GSA_INBAND_REKEY built for it (2.4.2.1), which they install without registering
/// again; the sender keeps its Sender-ID (no GM_SENDER_ID in the exchange, 4.5.3.3); the
/// old TEK is dropped after GWP_DTD; a TEK with sequential numbers pushed to a sender is
/// marked as given to it; and a tick with nothing new sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tek_renewal_reaches_the_members_of_an_inband_group_over_their_ike_sas() {
    let mut w = world().await;
    let t0 = unix_now();
    // A first look before anyone registered: the group has no TEK yet.
    assert!(w.scheduler.tick(t0).await.is_empty());
    let mut members = join_a_and_b(&w).await;
    assert_eq!(members[0].2.len(), 1, "the sender's Sender-ID");
    let first = w.store.group_state(w.group).await.unwrap().unwrap();
    let old = first.teks[0].spi;
    for (h, _, _) in &members {
        assert_eq!(active_teks(h).await, vec![hex(old)]);
    }
    // What the registrations reported.
    for (_, events, _) in &mut members {
        while events.try_recv().is_ok() {}
    }
    // Nothing due, nothing new (the TEK the registrations created is theirs): nothing sent.
    assert!(w.scheduler.tick(t0).await.is_empty());
    // Past the server's idle close: in-band members' IKE SAs are kept (2.4.2).
    tokio::time::sleep(IDLE * 3).await;

    let due = t0 + u64::from(TEK_LIFETIME) - push_margin(u64::from(TEK_LIFETIME)) + 1;
    let sent = w.scheduler.tick(due).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    let sent = sent.into_iter().next().unwrap().unwrap();
    let now = w.store.group_state(w.group).await.unwrap().unwrap();
    assert_eq!(now.teks.len(), 1);
    let new = now.teks[0].spi;
    assert_ne!(new, old);
    assert_eq!((sent.new_teks, sent.dropped_teks), (vec![new], vec![old]));
    // The sequential-numbers TEK reached the sender in-band: no later sender registration
    // may get it (RFC 9838 4.4.2.1.3, docs/interop.md #65), marked before it was sent.
    assert_eq!(now.teks[0].sn, SnId::Seq32);
    assert!(
        w.store
            .sender_claimed_teks(w.group)
            .await
            .unwrap()
            .contains(&new)
    );

    for (h, events, sender_ids) in &mut members {
        let (id, mut installed, mut deleting) = next_event(events, |e| match e {
            AgentEvent::Rekeyed {
                message_id,
                installed,
                deleting,
                ..
            } => Some((message_id, installed, deleting)),
            AgentEvent::GroupUp { .. } => panic!("registered again instead"),
            _ => None,
        })
        .await;
        // In-band: no Message ID of a Rekey SA. (A sender that also receives holds each
        // TEK in both directions.)
        assert_eq!(id, None);
        installed.dedup();
        deleting.dedup();
        assert_eq!(installed, vec![hex(new)]);
        assert_eq!(deleting, vec![hex(old)]);
        let st = h.status().await.unwrap();
        assert_eq!(st.groups[0].state, "up");
        assert_eq!(&st.groups[0].sender_ids, sender_ids);
        assert_eq!(st.groups[0].registrations, 1, "{st:?}");
    }
    // The old TEK is kept for GWP_DTD (1 s), then removed.
    for (h, _, _) in &members {
        assert_eq!(active_teks(h).await, vec![hex(new)]);
        tokio::time::timeout(WAIT, async {
            while held_teks(h).await.contains(&hex(old)) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the old TEK is removed after GWP_DTD");
        assert_eq!(held_teks(h).await, vec![hex(new)]);
    }
    // Told once.
    assert!(w.scheduler.tick(due).await.is_empty());
}

/// A member whose authorization was withdrawn after it registered gets no new keys from
/// the next push: the GCKS sends it the Delete of the whole Group SA over its IKE SA
/// instead (RFC 9838 2.4.3 Figure 13, 4.6), so it is excluded and, registering again, is
/// refused with AUTHORIZATION_FAILED; the member still authorized gets the new TEK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_no_longer_authorized_is_excluded_instead_of_rekeyed() {
    let mut w = world().await;
    let t0 = unix_now();
    assert!(w.scheduler.tick(t0).await.is_empty());
    let mut members = join_a_and_b(&w).await;
    let old = w.store.group_state(w.group).await.unwrap().unwrap().teks[0].spi;
    for (_, events, _) in &mut members {
        while events.try_recv().is_ok() {}
    }
    let b = w
        .store
        .member(&Identity::fqdn("b.example"))
        .await
        .unwrap()
        .unwrap();
    assert!(w.store.deauthorize(b.id, w.group).await.unwrap());

    let due = t0 + u64::from(TEK_LIFETIME) - push_margin(u64::from(TEK_LIFETIME)) + 1;
    let sent = w.scheduler.tick(due).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    let new = w.store.group_state(w.group).await.unwrap().unwrap().teks[0].spi;
    assert_ne!(new, old);
    // a.example: the new TEK.
    let (ha, ea, _) = &mut members[0];
    let installed = next_event(ea, |e| match e {
        AgentEvent::Rekeyed { installed, .. } => Some(installed),
        _ => None,
    })
    .await;
    assert!(installed.contains(&hex(new)), "{installed:?}");
    assert!(active_teks(ha).await.contains(&hex(new)));
    // b.example: excluded, then refused when it registers again; never the new TEK.
    let (hb, eb, _) = &mut members[1];
    next_event(eb, |e| match e {
        AgentEvent::Excluded { .. } => Some(()),
        AgentEvent::Rekeyed { installed, .. } if !installed.is_empty() => {
            panic!("a withdrawn member got new keys: {installed:?}")
        }
        _ => None,
    })
    .await;
    let notify = next_event(eb, |e| match e {
        AgentEvent::Refused { notify, .. } => Some(notify),
        AgentEvent::GroupUp { .. } => panic!("registered again although not authorized"),
        _ => None,
    })
    .await;
    assert_eq!(notify, "AUTHORIZATION_FAILED");
    assert!(!held_teks(hb).await.contains(&hex(new)));
}
