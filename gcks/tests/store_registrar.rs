//! The store-backed registrar and credential cache on a SQLite store, without namespaces:
//! decisions called directly (Sender-IDs under concurrency, which IKE SAs stay open), and
//! raw-key and X.509 members registering over loopback UDP through the cache, including
//! members added while the server runs and a member deleted after it was cached.

mod common;

use common::{aes_gcm_256_tek, suite};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gikev2_gcks::credentials::{CacheConfig, CredentialCache, StoreLoader};
use gikev2_gcks::{Registrar, RegistrationContext, ServeConfig, Server, StoreRegistrar};
use gikev2_member::{JoinError, join};
use gikev2_policy::{
    AuditOutcome, EspMode, GroupId, GroupSpec, GroupWidePolicy, Identity, MasterKey, NewCredential,
    RekeyConfig, RekeyMode, Role, Selector, SnPolicy, Store, TekPolicySpec,
};
use gikev2_proto::crypto::{
    KeyWrapAlg, KeyWrapKey, SecretBytes, SignatureScheme, SigningKey, SystemRandom,
};
use gikev2_proto::ike::{
    CloseReason, Decision, IkeConfig, LocalAuth, LocalPpk, PeerAuth, PeerAuthResolver,
    RegistrationRequest, SinglePeer,
};
use gikev2_proto::registry::{EncrId, GcAuthId, KwaId, NotifyType, SnId};
use gikev2_proto::wire::IdPayload;
use gikev2_tests::pki::{KeyType, Pki};

const GCKS_PSK: &[u8] = b"the gcks's own psk";

struct Fixture {
    _dir: tempfile::TempDir,
    url: String,
    key_path: std::path::PathBuf,
    store: Arc<Store>,
    multicast: GroupId,
}

fn group_spec(name: &str, mode: RekeyMode) -> GroupSpec {
    GroupSpec {
        name: name.into(),
        idg: Identity::key_id(name.as_bytes()),
        capacity: 100,
        rekey: RekeyConfig {
            mode,
            dst: (mode == RekeyMode::Multicast).then(|| "239.1.2.3:848".parse().unwrap()),
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
        tek_lifetime: 600,
        policy: GroupWidePolicy {
            sender_id_bits: Some(8),
            ..GroupWidePolicy::default()
        },
    }
}

fn tek() -> TekPolicySpec {
    aes_gcm_256_tek(
        "239.1.2.4",
        SnPolicy::Fixed(SnId::Unspecified32),
        EspMode::TunnelAddressPreserving,
    )
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("gcks.db").display());
    let key_path = dir.path().join("gcks.key");
    let key = MasterKey::load_or_create(&key_path, &mut SystemRandom::new()).unwrap();
    let store = Arc::new(Store::open(&url, key).await.unwrap());
    let multicast = store
        .create_group(&group_spec("g", RekeyMode::Multicast), 0)
        .await
        .unwrap();
    store.add_tek_policy(multicast, &tek()).await.unwrap();
    let inband = store
        .create_group(&group_spec("ib", RekeyMode::Inband), 0)
        .await
        .unwrap();
    store.add_tek_policy(inband, &tek()).await.unwrap();
    Fixture {
        _dir: dir,
        url,
        key_path,
        store,
        multicast,
    }
}

async fn add_psk_member(store: &Store, id: &str, groups: &[(&str, Role)]) {
    let m = store
        .add_member(
            &Identity::fqdn(id),
            None,
            &NewCredential::Psk(SecretBytes::from_slice(id.as_bytes())),
            0,
        )
        .await
        .unwrap();
    for (g, role) in groups {
        let g = store.group_by_name(g).await.unwrap().unwrap();
        store.authorize(m, g.id, *role, 0).await.unwrap();
    }
}

fn ctx(peer: &str, group: &str, sender: Option<u32>) -> RegistrationContext {
    RegistrationContext {
        peer_id: IdPayload::fqdn(peer).unwrap(),
        request: RegistrationRequest {
            group: IdPayload::key_id(group.as_bytes().to_vec()),
            sag: None,
            sender_ids: sender,
        },
        remote: "192.0.2.1:500".parse().unwrap(),
        kwk: KeyWrapKey::new(KeyWrapAlg::Kw5649_256, &[7; 32]).unwrap(),
        post_quantum_ke: false,
        ppk_used: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_get_distinct_sender_ids_committed_before_the_answer() {
    let f = fixture().await;
    let names: Vec<String> = (0..12).map(|i| format!("s{i}.example")).collect();
    for n in &names {
        add_psk_member(&f.store, n, &[("g", Role::Sender)]).await;
    }
    let registrar = Arc::new(StoreRegistrar::new(f.store.clone()));
    let tasks: Vec<_> = names
        .iter()
        .map(|n| {
            let r = registrar.clone();
            let c = ctx(n, "g", Some(2));
            tokio::spawn(async move { r.register(c).await })
        })
        .collect();
    let mut ids = Vec::new();
    let mut teks = std::collections::BTreeSet::new();
    for t in tasks {
        let v = t.await.unwrap();
        let Decision::Accept { gsa, kd, .. } = v.decision else {
            panic!("refused: {:?}", v.decision)
        };
        assert!(!v.keep_ike_sa, "multicast group: the IKE SA may close");
        ids.extend(kd.member().unwrap().sender_ids.clone());
        for p in gsa.teks() {
            teks.insert(p.spi);
        }
    }
    assert_eq!(
        teks.len(),
        1,
        "one TEK created once despite 12 racing first uses"
    );
    ids.sort_unstable();
    assert_eq!(ids, (0..24).collect::<Vec<u32>>(), "two each, none twice");
    // Committed when the decisions were returned.
    let stored: Vec<u32> = f
        .store
        .sender_ids(f.multicast)
        .await
        .unwrap()
        .iter()
        .map(|s| s.sender_id)
        .collect();
    assert_eq!(stored, ids);
    let audit = f.store.audit_events(100).await.unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|r| r.event.outcome == AuditOutcome::Registered)
            .count(),
        12
    );
}

#[tokio::test(flavor = "current_thread")]
async fn in_band_groups_keep_the_ike_sa_and_get_no_rekey_sa() {
    let f = fixture().await;
    add_psk_member(
        &f.store,
        "r.example",
        &[("g", Role::Receiver), ("ib", Role::Receiver)],
    )
    .await;
    let registrar = StoreRegistrar::new(f.store.clone());
    let m = registrar.register(ctx("r.example", "g", None)).await;
    let i = registrar.register(ctx("r.example", "ib", None)).await;
    assert!(!m.keep_ike_sa);
    assert!(
        i.keep_ike_sa,
        "RFC 9838 2.4.2: in-band rekey uses the IKE SA"
    );
    let (
        Decision::Accept {
            gsa: gm,
            transport_mode: tm,
            ..
        },
        Decision::Accept { gsa: gi, .. },
    ) = (m.decision, i.decision)
    else {
        panic!("both accepted");
    };
    assert!(gm.kek().is_some() && gi.kek().is_none());
    assert!(!tm, "tunnel-mode TEK policy: no USE_TRANSPORT_MODE");
    // A receiver asking to send is refused, and so is an unknown group.
    assert_eq!(
        registrar
            .register(ctx("r.example", "g", Some(1)))
            .await
            .decision,
        Decision::Refuse(NotifyType::AuthorizationFailed)
    );
    assert_eq!(
        registrar
            .register(ctx("r.example", "nope", None))
            .await
            .decision,
        Decision::Refuse(NotifyType::InvalidGroupId)
    );
}

/// A member that rejects the group's policy (RFC 9838 2.3.3: GSA_REGISTRATION with IDg and
/// NO_PROPOSAL_CHOSEN) is told apart from one that leaves (2.3.2) in the audit log; both
/// free their place.
#[tokio::test(flavor = "current_thread")]
async fn leaving_and_rejecting_the_policy_are_audited_apart() {
    let f = fixture().await;
    add_psk_member(&f.store, "a.example", &[("g", Role::Receiver)]).await;
    add_psk_member(&f.store, "b.example", &[("g", Role::Receiver)]).await;
    let registrar = StoreRegistrar::new(f.store.clone());
    for who in ["a.example", "b.example"] {
        let v = registrar.register(ctx(who, "g", None)).await;
        assert!(matches!(v.decision, Decision::Accept { .. }));
    }
    assert_eq!(f.store.member_count(f.multicast).await.unwrap(), 2);
    let peer = |id: &str| IdPayload::fqdn(id).unwrap();
    let g = IdPayload::key_id(b"g".to_vec());
    registrar
        .left(peer("a.example"), g.clone(), NotifyType::NoProposalChosen)
        .await;
    registrar
        .left(peer("b.example"), g, NotifyType::RegistrationFailed)
        .await;
    assert_eq!(f.store.member_count(f.multicast).await.unwrap(), 0);
    let audit = f.store.audit_events(2).await.unwrap();
    assert_eq!(audit[1].event.reason, "rejected the group's policy");
    assert_eq!(
        audit[0].event.reason,
        "left the group (REGISTRATION_FAILED)"
    );
    assert!(audit.iter().all(|r| r.event.outcome == AuditOutcome::Left));
}

/// Registrations in flight share store transactions (group commit), and each still gets
/// its own audit row and answer.
#[tokio::test(flavor = "current_thread")]
async fn registrations_in_flight_share_one_store_transaction() {
    let f = fixture().await;
    let names: Vec<String> = (0..12).map(|i| format!("r{i}.example")).collect();
    for n in &names {
        add_psk_member(&f.store, n, &[("g", Role::Receiver)]).await;
    }
    add_psk_member(&f.store, "outsider.example", &[("ib", Role::Receiver)]).await;
    let registrar = Arc::new(StoreRegistrar::new(f.store.clone()));
    let stats = registrar.queue_stats();
    let mut tasks: Vec<_> = names
        .iter()
        .map(|n| {
            let r = registrar.clone();
            let c = ctx(n, "g", None);
            tokio::spawn(async move { r.register(c).await })
        })
        .collect();
    {
        let r = registrar.clone();
        tasks.push(tokio::spawn(async move {
            r.register(ctx("outsider.example", "g", None)).await
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        match t.await.unwrap().decision {
            Decision::Accept { .. } => accepted += 1,
            Decision::Refuse(n) => assert_eq!(n, NotifyType::AuthorizationFailed),
        }
    }
    assert_eq!(accepted, 12);
    let s = stats.get();
    assert_eq!(
        s.registrations, 13,
        "every registration went through the queue"
    );
    assert!(
        s.batches < s.registrations,
        "{} batches for {} registrations",
        s.batches,
        s.registrations
    );
    let audit = f.store.audit_events(100).await.unwrap();
    assert_eq!(audit.len(), 13, "one audit row each");
    assert_eq!(
        audit
            .iter()
            .filter(|r| r.event.outcome == AuditOutcome::Refused)
            .count(),
        1
    );
    assert_eq!(f.store.member_count(f.multicast).await.unwrap(), 12);
}

/// The group's view is shared between registrations (policy TTL), but an SA reaching its
/// renew margin is renewed at once, and what depends on the member (authorization,
/// capacity) is read from the store every time.
#[tokio::test(flavor = "current_thread")]
async fn group_views_renew_at_the_margin_and_never_cache_authorizations() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let f = fixture().await;
    add_psk_member(&f.store, "a.example", &[("g", Role::Receiver)]).await;
    add_psk_member(&f.store, "b.example", &[("g", Role::Receiver)]).await;
    let now = Arc::new(AtomicU64::new(1_000));
    let clock = {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::SeqCst))
    };
    let registrar = StoreRegistrar::with_clock(f.store.clone(), clock)
        .with_policy_ttl(Duration::from_secs(3600));
    let tek_spi = |v: &gikev2_gcks::Verdict| match &v.decision {
        Decision::Accept { gsa, .. } => gsa.teks().next().unwrap().spi,
        other => panic!("refused: {other:?}"),
    };
    let first = tek_spi(&registrar.register(ctx("a.example", "g", None)).await);
    now.store(1_500, Ordering::SeqCst); // 100 s of the TEK's 600 left: still handed out
    assert_eq!(
        tek_spi(&registrar.register(ctx("b.example", "g", None)).await),
        first
    );
    now.store(1_541, Ordering::SeqCst); // 59 s left, inside the 60 s margin
    let renewed = tek_spi(&registrar.register(ctx("a.example", "g", None)).await);
    assert_ne!(
        renewed, first,
        "renewed although the policy TTL has not run out"
    );
    let stored = f.store.group_state(f.multicast).await.unwrap().unwrap();
    assert_eq!(stored.teks.len(), 1);
    assert_eq!(
        gikev2_proto::wire::gsa::Spi::Ipsec(stored.teks[0].spi),
        renewed,
        "committed before it was handed out"
    );
    // Revoked in SQL: refused at once, whatever the TTL.
    let b = f
        .store
        .member(&Identity::fqdn("b.example"))
        .await
        .unwrap()
        .unwrap();
    assert!(f.store.deauthorize(b.id, f.multicast).await.unwrap());
    assert_eq!(
        registrar
            .register(ctx("b.example", "g", None))
            .await
            .decision,
        Decision::Refuse(NotifyType::AuthorizationFailed)
    );
    let last = f.store.audit_events(1).await.unwrap();
    assert_eq!(last[0].event.outcome, AuditOutcome::Refused);
    assert!(
        last[0].event.reason.contains("not authorized"),
        "{}",
        last[0].event.reason
    );
}

fn member_ike(id: &str, auth: LocalAuth) -> IkeConfig {
    IkeConfig::new(
        vec![suite()],
        IdPayload::fqdn(id).unwrap(),
        auth,
        Arc::new(SinglePeer {
            id: None,
            auth: PeerAuth::Psk(SecretBytes::from_slice(GCKS_PSK)),
        }),
    )
}

async fn join_g(gcks: SocketAddr, ike: IkeConfig) -> Result<(), JoinError> {
    let req = RegistrationRequest {
        group: IdPayload::key_id(b"g".to_vec()),
        sag: None,
        sender_ids: None,
    };
    join(ike, gcks, req, Duration::from_secs(10))
        .await
        .map(|_| ())
}

fn signature(pkcs8: &[u8], certs: Vec<Vec<u8>>) -> LocalAuth {
    LocalAuth::Signature {
        key: Arc::new(SigningKey::from_pkcs8(SignatureScheme::Ed25519, pkcs8).unwrap()),
        certs,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_key_and_x509_members_authenticate_through_the_credential_cache() {
    let f = fixture().await;
    let loader = StoreLoader::start(f.url.clone(), f.key_path.clone()).unwrap();
    let cache = Arc::new(CredentialCache::new(
        Arc::new(loader),
        CacheConfig::default(),
    ));
    assert_eq!(cache.preload(&f.store).await.unwrap(), 0);
    let resolver: Arc<dyn PeerAuthResolver> = cache.clone();
    let ike = IkeConfig::new(
        vec![suite()],
        IdPayload::fqdn("gcks.example").unwrap(),
        LocalAuth::Psk(SecretBytes::from_slice(GCKS_PSK)),
        resolver,
    );
    let cfg = ServeConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        init_rate_per_source: 100,
        ..ServeConfig::default()
    };
    let server = Server::bind(ike, cfg, StoreRegistrar::new(f.store.clone())).unwrap();
    let addr = server.local_addrs()[0];
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    // Members added while the server runs: the cache misses and looks them up at once.
    let pki = Pki::new(KeyType::Ed25519, "members-ca").unwrap();
    let raw = pki.issue("raw.example").unwrap();
    let cert = pki.issue("cert.example").unwrap();
    let g = f.store.group_by_name("g").await.unwrap().unwrap().id;
    let raw_spki = SigningKey::from_pkcs8(SignatureScheme::Ed25519, &raw.key_pkcs8_der)
        .unwrap()
        .public_key()
        .to_spki()
        .unwrap();
    let m = f
        .store
        .add_member(
            &Identity::fqdn("raw.example"),
            None,
            &NewCredential::RawPublicKey { spki: raw_spki },
            0,
        )
        .await
        .unwrap();
    f.store.authorize(m, g, Role::Receiver, 0).await.unwrap();
    let anchor = f
        .store
        .add_trust_anchor("members-ca", pki.ca_der())
        .await
        .unwrap();
    let m = f
        .store
        .add_member(
            &Identity::fqdn("cert.example"),
            None,
            &NewCredential::X509 {
                trust_anchors: vec![anchor],
            },
            0,
        )
        .await
        .unwrap();
    f.store.authorize(m, g, Role::Receiver, 0).await.unwrap();

    join_g(
        addr,
        member_ike("raw.example", signature(&raw.key_pkcs8_der, vec![])),
    )
    .await
    .expect("raw public key member");
    join_g(
        addr,
        member_ike(
            "cert.example",
            signature(&cert.key_pkcs8_der, vec![cert.cert_der.clone()]),
        ),
    )
    .await
    .expect("X.509 member");
    assert_eq!(cache.len(), 2);

    // A certificate for the same name from another CA is refused, and audited.
    let rogue = Pki::new(KeyType::Ed25519, "rogue-ca")
        .unwrap()
        .issue("cert.example")
        .unwrap();
    let r = join_g(
        addr,
        member_ike(
            "cert.example",
            signature(&rogue.key_pkcs8_der, vec![rogue.cert_der.clone()]),
        ),
    )
    .await;
    assert!(
        matches!(r, Err(JoinError::Closed(CloseReason::AuthenticationFailed))),
        "{r:?}",
        r = r.err()
    );

    // Deleted after it was cached: still authenticates within the TTL, but authorization
    // is read from the store for every registration.
    assert!(
        f.store
            .delete_member(&Identity::fqdn("raw.example"))
            .await
            .unwrap()
    );
    let r = join_g(
        addr,
        member_ike("raw.example", signature(&raw.key_pkcs8_der, vec![])),
    )
    .await;
    assert!(
        matches!(r, Err(JoinError::Refused(NotifyType::AuthorizationFailed))),
        "{:?}",
        r.err()
    );
    // The failure is audited just after the answer leaves: a bounded poll.
    let mut audited = false;
    for _ in 0..100 {
        let events = f.store.audit_events(50).await.unwrap();
        if events.iter().any(|e| {
            e.event.outcome == AuditOutcome::Refused
                && e.event.peer == Some(Identity::fqdn("cert.example"))
                && e.event.reason.contains("certificate was refused")
        }) {
            audited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(audited, "audit row for the rogue certificate");
    let _ = stop.send(());
    task.await.unwrap();
}

/// RFC 9838 4.4.2.1.3 (R079): once a group has two senders, a TEK policy with "32-bit
/// Sequential Numbers" is a configuration error: registrations are refused with
/// REGISTRATION_FAILED and the audit row names the field to change.
#[tokio::test(flavor = "current_thread")]
async fn several_senders_and_sequential_numbers_refuse_with_the_field_named() {
    let f = fixture().await;
    let seq = f
        .store
        .create_group(&group_spec("seq", RekeyMode::Multicast), 0)
        .await
        .unwrap();
    let mut spec = tek();
    spec.sn = SnPolicy::Fixed(SnId::Seq32);
    spec.dst = Selector::host_port("239.1.2.9".parse().unwrap(), 5004);
    f.store.add_tek_policy(seq, &spec).await.unwrap();
    add_psk_member(&f.store, "one.example", &[("seq", Role::Sender)]).await;
    add_psk_member(&f.store, "rx.example", &[("seq", Role::Receiver)]).await;
    // One sender: sequential numbers are what the policy asks for (R077).
    let registrar = StoreRegistrar::new(f.store.clone()).with_policy_ttl(Duration::ZERO);
    let accepted = registrar.register(ctx("rx.example", "seq", None)).await;
    assert!(
        matches!(accepted.decision, Decision::Accept { .. }),
        "{:?}",
        accepted.decision
    );
    add_psk_member(&f.store, "two.example", &[("seq", Role::Sender)]).await;
    let refused = registrar.register(ctx("rx.example", "seq", None)).await;
    assert_eq!(
        refused.decision,
        Decision::Refuse(NotifyType::RegistrationFailed)
    );
    let last = f.store.audit_events(1).await.unwrap();
    assert_eq!(last[0].event.outcome, AuditOutcome::Refused);
    assert!(
        last[0].event.reason.contains("tek_policies.sn_id")
            && last[0].event.reason.contains("4.4.2.1.3"),
        "{}",
        last[0].event.reason
    );
}

/// The one TEK policy of an accepted registration: (SPI, SN transform, GSA_KEY_LIFETIME).
fn granted_tek(d: &Decision) -> (gikev2_proto::wire::gsa::Spi, SnId, u32) {
    let Decision::Accept { gsa, .. } = d else {
        panic!("{d:?}")
    };
    let teks: Vec<_> = gsa.teks().collect();
    assert_eq!(teks.len(), 1, "{gsa:?}");
    let sn = teks[0]
        .transform(gikev2_proto::registry::TransformType::Sn)
        .expect("every TEK carries the SN transform (RFC 9838 2.6)");
    (
        teks[0].spi,
        SnId::from(sn.id),
        teks[0].attributes.key_lifetime.expect("GSA_KEY_LIFETIME"),
    )
}

/// RFC 9838 4.4.2.1.3 (R077) and 2.6 (R049) at registration, with `--sn auto`: the only
/// sender gets "32-bit Sequential Numbers" on the multicast TEK, with a lifetime in which
/// a sender at the policy's packet rate cannot wrap them. A second sender, authorized after
/// the group's view was cached, gets a new TEK with "32-bit Unspecified Numbers" at once
/// (the view is loaded again, not used for another hour), and so does the next receiver.
#[tokio::test(flavor = "current_thread")]
async fn auto_sequence_numbers_are_sequential_for_one_sender_within_the_packet_rate() {
    let f = fixture().await;
    let g = f
        .store
        .create_group(&group_spec("auto", RekeyMode::Multicast), 0)
        .await
        .unwrap();
    let mut spec = tek();
    spec.sn = SnPolicy::Auto;
    spec.max_packet_rate = 10_000_000;
    spec.dst = Selector::host_port("239.1.2.11".parse().unwrap(), 5004);
    f.store.add_tek_policy(g, &spec).await.unwrap();
    add_psk_member(&f.store, "one.example", &[("auto", Role::Sender)]).await;
    add_psk_member(&f.store, "rx.example", &[("auto", Role::Receiver)]).await;
    let registrar = StoreRegistrar::new(f.store.clone()).with_policy_ttl(Duration::from_secs(3600));

    let first = registrar
        .register(ctx("one.example", "auto", Some(1)))
        .await;
    let (spi1, sn, lifetime) = granted_tek(&first.decision);
    assert_eq!(sn, SnId::Seq32, "one sender: sequential numbers (R077)");
    // (2^32 - 1) / 10,000,000 = 429 s, less than the group's 600 s (R049).
    assert!(
        (1..=429).contains(&lifetime),
        "GSA_KEY_LIFETIME {lifetime} s"
    );
    assert!(u64::from(lifetime) * 10_000_000 <= u64::from(u32::MAX));
    let (spi, sn, _) = granted_tek(
        &registrar
            .register(ctx("rx.example", "auto", None))
            .await
            .decision,
    );
    assert_eq!((spi, sn), (spi1, SnId::Seq32), "the same TEK");

    add_psk_member(&f.store, "two.example", &[("auto", Role::Sender)]).await;
    let second = registrar
        .register(ctx("two.example", "auto", Some(1)))
        .await;
    let (spi2, sn, lifetime) = granted_tek(&second.decision);
    assert_ne!(spi2, spi1, "a new TEK");
    assert_eq!(sn, SnId::Unspecified32, "two senders (R079)");
    assert!(
        (430..=600).contains(&lifetime),
        "the group's lifetime: {lifetime} s"
    );
    let (spi, sn, _) = granted_tek(
        &registrar
            .register(ctx("rx.example", "auto", None))
            .await
            .decision,
    );
    assert_eq!((spi, sn), (spi2, SnId::Unspecified32));
    let st = f.store.group_state(g).await.unwrap().unwrap();
    assert_eq!(st.teks.len(), 1);
    assert_eq!(st.teks[0].sn, SnId::Unspecified32);
}

/// The SPI of the one TEK of an accepted registration, which must have "32-bit
/// Sequential Numbers".
fn sequential_spi(d: &Decision) -> u32 {
    match granted_tek(d) {
        (gikev2_proto::wire::gsa::Spi::Ipsec(spi), SnId::Seq32, _) => spi,
        other => panic!("{other:?}"),
    }
}

/// One registration of `who` to the group "restart": the SPI of its sequential TEK.
async fn register(r: &StoreRegistrar, who: &str, sender: bool) -> u32 {
    sequential_spi(
        &r.register(ctx(who, "restart", sender.then_some(1)))
            .await
            .decision,
    )
}

/// RFC 9838 4.4.2.1.3 (R077) with RFC 4303 3.4.3, docs/interop.md #65: a TEK with
/// sequential numbers goes to at most one sender registration. The only sender registers
/// again (as a restarted `gm` would, its counter back at 1): the GCKS replaces the TEK
/// first (new SPI, still sequential numbers) and hands it the new one, in the store at
/// once; receivers registering in between get the sender's TEK and replace nothing. Another
/// GCKS process with an old view of the group does the same. The rule holds for a policy
/// fixed to sequential numbers too.
#[tokio::test(flavor = "current_thread")]
async fn a_sender_registering_again_gets_a_new_sequential_tek() {
    let f = fixture().await;
    let g = f
        .store
        .create_group(&group_spec("restart", RekeyMode::Multicast), 0)
        .await
        .unwrap();
    let mut spec = tek();
    spec.sn = SnPolicy::Auto;
    spec.dst = Selector::host_port("239.1.2.12".parse().unwrap(), 5004);
    f.store.add_tek_policy(g, &spec).await.unwrap();
    add_psk_member(&f.store, "one.example", &[("restart", Role::Sender)]).await;
    add_psk_member(&f.store, "rx.example", &[("restart", Role::Receiver)]).await;
    // Views kept an hour: what decides is the store, not a view.
    let ttl = Duration::from_secs(3600);
    let a = StoreRegistrar::new(f.store.clone()).with_policy_ttl(ttl);
    let b = StoreRegistrar::new(f.store.clone()).with_policy_ttl(ttl);
    let stored = || async {
        let st = f.store.group_state(g).await.unwrap().unwrap();
        let teks: Vec<(u32, SnId)> = st.teks.iter().map(|t| (t.spi, t.sn)).collect();
        (teks, f.store.sender_claimed_teks(g).await.unwrap())
    };

    let spi1 = register(&b, "rx.example", false).await; // b's view: the first TEK
    assert_eq!(stored().await, (vec![(spi1, SnId::Seq32)], vec![]));
    assert_eq!(
        register(&a, "one.example", true).await,
        spi1,
        "the first sender: kept"
    );
    assert_eq!(stored().await, (vec![(spi1, SnId::Seq32)], vec![spi1]));
    assert_eq!(
        register(&a, "rx.example", false).await,
        spi1,
        "a receiver: kept"
    );
    assert_eq!(stored().await.1, vec![spi1]);

    let spi2 = register(&a, "one.example", true).await;
    assert_ne!(spi2, spi1, "the sender again: a new TEK");
    assert_eq!(stored().await, (vec![(spi2, SnId::Seq32)], vec![spi2]));
    let audit = f.store.audit_events(1).await.unwrap().remove(0).event;
    assert_eq!(audit.outcome, AuditOutcome::Registered);
    assert!(
        audit.reason.contains(&format!("TEK SPIs [{spi2:#010x}]")),
        "the audit row names the TEK given: {}",
        audit.reason
    );
    assert_eq!(register(&a, "rx.example", false).await, spi2);
    assert_eq!(stored().await.1, vec![spi2], "a receiver claims nothing");

    // b still holds a view with the first TEK (gone) and the store's says spi2 was given.
    let spi3 = register(&b, "one.example", true).await;
    assert!(spi3 != spi1 && spi3 != spi2, "{spi3:#x}");
    assert_eq!(stored().await, (vec![(spi3, SnId::Seq32)], vec![spi3]));

    // A TEK policy fixed to sequential numbers.
    let fixed = f
        .store
        .create_group(&group_spec("fixed", RekeyMode::Multicast), 0)
        .await
        .unwrap();
    spec.sn = SnPolicy::Fixed(SnId::Seq32);
    spec.dst = Selector::host_port("239.1.2.13".parse().unwrap(), 5004);
    f.store.add_tek_policy(fixed, &spec).await.unwrap();
    add_psk_member(&f.store, "fx.example", &[("fixed", Role::Sender)]).await;
    let fx = || async {
        sequential_spi(
            &a.register(ctx("fx.example", "fixed", Some(1)))
                .await
                .decision,
        )
    };
    let (first, second) = (fx().await, fx().await);
    assert_ne!(first, second);
}

/// RFC 9838 3.1 (R052): no KWK shorter than the group's keys. A member whose IKE SA
/// negotiated KW_5649_128 is refused with NO_PROPOSAL_CHOSEN before anything is stored;
/// a group whose Rekey SA uses KW_5649_128 for 256-bit keys is a configuration error that
/// names `groups.rekey_kwa_id`.
#[tokio::test(flavor = "current_thread")]
async fn key_wrap_keys_shorter_than_the_group_keys_are_refused() {
    let f = fixture().await;
    add_psk_member(&f.store, "kw.example", &[("g", Role::Receiver)]).await;
    let registrar = StoreRegistrar::new(f.store.clone());
    let mut short = ctx("kw.example", "g", None);
    short.kwk = KeyWrapKey::new(KeyWrapAlg::Kw5649_128, &[7; 16]).unwrap();
    let v = registrar.register(short).await;
    assert_eq!(v.decision, Decision::Refuse(NotifyType::NoProposalChosen));
    assert_eq!(f.store.member_count(f.multicast).await.unwrap(), 0);
    let last = f.store.audit_events(1).await.unwrap();
    assert_eq!(last[0].event.outcome, AuditOutcome::Refused);
    assert!(
        last[0].event.reason.contains("3.1"),
        "{}",
        last[0].event.reason
    );
    // The same member with a 256-bit KWK is admitted.
    let v = registrar.register(ctx("kw.example", "g", None)).await;
    assert!(
        matches!(v.decision, Decision::Accept { .. }),
        "{:?}",
        v.decision
    );

    let mut spec = group_spec("kw128", RekeyMode::Multicast);
    spec.rekey.kwa = KwaId::Kw5649_128;
    spec.rekey.dst = Some("239.1.2.10:848".parse().unwrap());
    let g = f.store.create_group(&spec, 0).await.unwrap();
    f.store.add_tek_policy(g, &tek()).await.unwrap();
    add_psk_member(&f.store, "kw2.example", &[("kw128", Role::Receiver)]).await;
    let v = registrar.register(ctx("kw2.example", "kw128", None)).await;
    assert_eq!(v.decision, Decision::Refuse(NotifyType::RegistrationFailed));
    let last = f.store.audit_events(1).await.unwrap();
    assert!(
        last[0].event.reason.contains("groups.rekey_kwa_id"),
        "{}",
        last[0].event.reason
    );
}

// ------------------------------------------------------------------ RFC 8784, R129

const PPK: &[u8] = b"a 32-octet PPK of high entropy!!";

/// `gcks serve` in miniature: the store registrar and the credential cache, which also
/// answers the IKE SA's PPK lookups, offering X25519 + ML-KEM-768 first (RFC 9370).
async fn serve_with_ppks(
    f: &Fixture,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let loader = StoreLoader::start(f.url.clone(), f.key_path.clone()).unwrap();
    let cache = Arc::new(CredentialCache::new(
        Arc::new(loader),
        CacheConfig::default(),
    ));
    cache.preload(&f.store).await.unwrap();
    let resolver: Arc<dyn PeerAuthResolver> = cache.clone();
    let mut ike = IkeConfig::new(
        gikev2_member::config::ml_kem_suites(),
        IdPayload::fqdn("gcks.example").unwrap(),
        LocalAuth::Psk(SecretBytes::from_slice(GCKS_PSK)),
        resolver,
    );
    ike.ppk_resolver = Some(cache);
    let cfg = ServeConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        init_rate_per_source: 100,
        ..ServeConfig::default()
    };
    let server = Server::bind(ike, cfg, StoreRegistrar::new(f.store.clone())).unwrap();
    let addr = server.local_addrs()[0];
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    (addr, stop, task)
}

/// A PSK member (PSK = its identity, as [`add_psk_member`] stores it) with an optional PPK
/// and the hybrid ML-KEM suite first or not.
fn psk_member(id: &str, ppk: Option<(&[u8], bool)>, ml_kem: bool) -> IkeConfig {
    let psk = SecretBytes::from_slice(id.as_bytes());
    let suites = if ml_kem {
        gikev2_member::config::ml_kem_suites()
    } else {
        gikev2_member::config::default_suites()
    };
    let mut c = IkeConfig::new(
        suites,
        IdPayload::fqdn(id).unwrap(),
        LocalAuth::Psk(psk.clone()),
        Arc::new(SinglePeer {
            id: None,
            auth: PeerAuth::Psk(psk),
        }),
    );
    c.ppk = ppk.map(|(secret, mandatory)| LocalPpk {
        id: b"ppk-1".to_vec(),
        secret: SecretBytes::from_slice(secret),
        mandatory,
    });
    c
}

async fn join_group(
    gcks: SocketAddr,
    group: &str,
    ike: IkeConfig,
) -> Result<gikev2_member::Joined, JoinError> {
    let req = RegistrationRequest {
        group: IdPayload::key_id(group.as_bytes().to_vec()),
        sag: None,
        sender_ids: None,
    };
    join(ike, gcks, req, Duration::from_secs(10)).await
}

/// RFC 8784 end to end through the store: a member with a PPK in `members.ppk_enc`
/// registers with SK_d mixed with it and unwraps the group keys; with the PPK required,
/// no PPK or a wrong one is AUTHENTICATION_FAILED; a member without a stored PPK but an
/// optional one of its own falls back through NO_PPK_AUTH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_register_with_their_ppk_from_the_store() {
    let f = fixture().await;
    add_psk_member(&f.store, "ppk.example", &[("g", Role::Receiver)]).await;
    add_psk_member(&f.store, "plain.example", &[("g", Role::Receiver)]).await;
    let ppk_member = Identity::fqdn("ppk.example");
    let secret = SecretBytes::from_slice(PPK);
    assert!(
        f.store
            .set_member_ppk(&ppk_member, Some((b"ppk-1", &secret)), true)
            .await
            .unwrap()
    );
    let (addr, stop, task) = serve_with_ppks(&f).await;

    let j = join_group(
        addr,
        "g",
        psk_member("ppk.example", Some((PPK, true)), false),
    )
    .await
    .expect("member with its PPK");
    assert!(j.sa.ppk_used());
    let bag = j.kd.group_bags().next().expect("a TEK");
    assert!(j.kwk.unwrap(&bag.sa_keys[0].encrypted).is_ok());

    for (what, cfg) in [
        ("no PPK", psk_member("ppk.example", None, false)),
        (
            "a wrong PPK",
            psk_member(
                "ppk.example",
                Some((b"another 32-octet PPK, not stored", true)),
                false,
            ),
        ),
        (
            "a wrong optional PPK",
            psk_member(
                "ppk.example",
                Some((b"another 32-octet PPK, not stored", false)),
                false,
            ),
        ),
    ] {
        let r = join_group(addr, "g", cfg).await;
        assert!(
            matches!(r, Err(JoinError::Closed(CloseReason::AuthenticationFailed))),
            "{what}: {:?}",
            r.err()
        );
    }

    let j = join_group(
        addr,
        "g",
        psk_member("plain.example", Some((PPK, false)), false),
    )
    .await
    .expect("optional PPK unknown to the GCKS: NO_PPK_AUTH");
    assert!(!j.sa.ppk_used());
    let r = join_group(
        addr,
        "g",
        psk_member("plain.example", Some((PPK, true)), false),
    )
    .await;
    assert!(
        matches!(r, Err(JoinError::Closed(CloseReason::AuthenticationFailed))),
        "{:?}",
        r.err()
    );
    let _ = stop.send(());
    task.await.unwrap();
}

/// R129 (RFC 9838 6.2): a group with `require_pq_ike` admits a member only over an IKE SA
/// with ML-KEM (RFC 9370); without it, NO_PROPOSAL_CHOSEN and an audit row saying why,
/// even with a PPK (which protects the group keys, not the rest of the SA). Groups without
/// the setting still admit X25519 alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_pq_ike_groups_admit_only_ml_kem_ike_sas() {
    let f = fixture().await;
    let mut spec = group_spec("pq", RekeyMode::Multicast);
    spec.policy.require_pq_ike = true;
    spec.rekey.dst = Some("239.1.2.5:848".parse().unwrap());
    let pq = f.store.create_group(&spec, 0).await.unwrap();
    let mut t = tek();
    t.dst = Selector::host_port("239.1.2.6".parse().unwrap(), 5004);
    f.store.add_tek_policy(pq, &t).await.unwrap();
    add_psk_member(
        &f.store,
        "pq.example",
        &[("pq", Role::Receiver), ("g", Role::Receiver)],
    )
    .await;
    let secret = SecretBytes::from_slice(PPK);
    f.store
        .set_member_ppk(
            &Identity::fqdn("pq.example"),
            Some((b"ppk-1", &secret)),
            false,
        )
        .await
        .unwrap();
    let (addr, stop, task) = serve_with_ppks(&f).await;

    let r = join_group(
        addr,
        "pq",
        psk_member("pq.example", Some((PPK, true)), false),
    )
    .await;
    assert!(
        matches!(r, Err(JoinError::Refused(NotifyType::NoProposalChosen))),
        "{:?}",
        r.err()
    );
    let last = f.store.audit_events(1).await.unwrap();
    assert_eq!(last[0].event.outcome, AuditOutcome::Refused);
    assert!(
        last[0].event.reason.contains("post-quantum"),
        "{}",
        last[0].event.reason
    );
    assert_eq!(f.store.member_count(pq).await.unwrap(), 0);

    let j = join_group(
        addr,
        "pq",
        psk_member("pq.example", Some((PPK, true)), true),
    )
    .await
    .expect("X25519 + ML-KEM-768 (and the PPK)");
    assert!(j.sa.post_quantum_ke() && j.sa.ppk_used());
    assert_eq!(f.store.member_count(pq).await.unwrap(), 1);

    let j = join_group(addr, "g", psk_member("pq.example", None, false))
        .await
        .expect("a group without the setting");
    assert!(!j.sa.post_quantum_ke());
    let _ = stop.send(());
    task.await.unwrap();
}
