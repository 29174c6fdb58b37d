//! The member runtime against the real GCKS runtime (`gikev2_gcks::Server`) over loopback
//! UDP: registration of a receiver and a sender with their SAs in the ESP engine, policy
//! rejection (RFC 9838 2.3.2 Figure 8), and a multicast GSA_REKEY applied with DTD.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use gikev2_esp::{Direction, Engine};
use gikev2_member::runtime::{self, CommandError, RuntimeConfig};
use gikev2_member::{AgentEvent, AgentHandle, Clock, NoDataPlane, OffsetClock, SystemClock};
use gikev2_proto::crypto::SystemRandom;
use gikev2_proto::group::{RekeyContent, RekeySender};
use gikev2_proto::registry::ProtocolId;
use gikev2_proto::wire::DeletePayload;

const WAIT: Option<Duration> = Some(Duration::from_secs(20));

fn agent(engine: Arc<Engine>, clock: Arc<dyn Clock>) -> AgentHandle {
    let config = RuntimeConfig {
        multicast_v4_interface: Some(Ipv4Addr::LOCALHOST),
        ..RuntimeConfig::default()
    };
    runtime::spawn(engine, Arc::new(NoDataPlane), config, clock).0
}

#[tokio::test(flavor = "current_thread")]
async fn receiver_and_sender_install_matching_sas_in_their_engines() {
    let port = free_port();
    let rekey = SocketAddr::new(IpAddr::V4(rekey_group(port)), port);
    let gcks = RunningGcks::start(TestGcks::new(group_state(rekey, 2), Policy::Normal)).await;
    let tek_spi = gcks.gcks.state.lock().unwrap().teks[0].spi;

    let (e_recv, e_send) = (Arc::new(Engine::default()), Arc::new(Engine::default()));
    let recv = agent(e_recv.clone(), Arc::new(SystemClock));
    let send = agent(e_send.clone(), Arc::new(SystemClock));
    let r = recv
        .join(member("receiver.test", gcks.addr, None), WAIT)
        .await
        .unwrap();
    let s = send
        .join(member("sender.test", gcks.addr, Some(1)), WAIT)
        .await
        .unwrap();

    // RFC 9838 2.3.3: receivers inbound only, senders (that do not receive) outbound only.
    assert_eq!(r.state, "up");
    assert_eq!(r.role, "receiver");
    assert_eq!(r.teks.len(), 1);
    assert_eq!(r.teks[0].direction, "inbound");
    assert_eq!(r.teks[0].spi, format!("{tek_spi:#010x}"));
    assert!(r.sender_ids.is_empty());
    assert_eq!(s.state, "up");
    assert_eq!(s.role, "sender");
    assert_eq!(s.teks.len(), 1);
    assert_eq!(s.teks[0].direction, "outbound");
    assert_eq!(s.sender_ids, vec![1]);
    assert_eq!(s.sender_id_bits, Some(8));
    assert_eq!(e_recv.sa_count(), 1);
    assert_eq!(e_send.sa_count(), 1);
    // The Rekey SA is listened on, inbound only (R020).
    assert_eq!(r.rekey_sas.len(), 1);
    assert_eq!(r.rekey_sas[0].listen, rekey.to_string());
    assert_eq!(r.rekey_sas[0].auth, "Ed25519");
    // The SAg went with both requests, GROUP_SENDER with the sender's (2.3.1, 2.3.3).
    assert_eq!(
        *gcks.gcks.requests.lock().unwrap(),
        vec![(true, None), (true, Some(1))]
    );

    // Identical keys: what the sender's engine seals, the receiver's engine opens.
    let now = Instant::now();
    for i in 0..3u8 {
        let p = udp([10, 0, 0, 7], &[i; 64]);
        let (spi, esp) = seal(&e_send, &p, now).expect("sender has an active outbound SA");
        assert_eq!(spi, tek_spi);
        assert_eq!(open(&e_recv, &esp, now), Some(p));
    }
    // And not the other way round: the receiver holds no outbound SA.
    assert!(seal(&e_recv, &udp([10, 0, 0, 8], b"x"), now).is_none());

    // A second join of the same group is refused by the agent.
    assert!(matches!(
        recv.join(member("receiver.test", gcks.addr, None), WAIT)
            .await,
        Err(CommandError::Agent(_))
    ));
    // Leaving removes the SAs and tells the GCKS (RFC 9838 2.3.2).
    recv.leave(GROUP).await.unwrap();
    assert_eq!(e_recv.sa_count(), 0);
    let left = gcks.wait_left().await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].1.data, GROUP.as_bytes());
    gcks.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn unsupported_policy_is_rejected_with_gsa_registration() {
    let port = free_port();
    let rekey = SocketAddr::new(IpAddr::V4(rekey_group(port)), port);
    let mut state = group_state(rekey, 2);
    state.teks = vec![tek_ctr(&mut SystemRandom::new())];
    let gcks = RunningGcks::start(TestGcks::new(state, Policy::Normal)).await;
    let engine = Arc::new(Engine::default());
    let a = agent(engine.clone(), Arc::new(SystemClock));
    let e = a
        .join(member("picky.test", gcks.addr, None), WAIT)
        .await
        .unwrap_err();
    // The engine has no AES-CTR: NO_PROPOSAL_CHOSEN, nothing installed.
    assert!(e.to_string().contains("NO_PROPOSAL_CHOSEN"), "{e}");
    let left = gcks.wait_left().await;
    assert_eq!(left.len(), 1, "the GCKS saw the GSA_REGISTRATION");
    assert_eq!(left[0].0.as_text(), Some("picky.test"));
    assert_eq!(left[0].1.data, GROUP.as_bytes());
    let st = a.status().await.unwrap();
    let g = &st.groups[0];
    assert_eq!(g.state, "rejected");
    assert_eq!(g.rejected_with.as_deref(), Some("NO_PROPOSAL_CHOSEN"));
    assert!(g.teks.is_empty() && g.rekey_sas.is_empty());
    assert_eq!(engine.sa_count(), 0);
    gcks.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn kd_not_matching_the_gsa_is_rejected() {
    let port = free_port();
    let rekey = SocketAddr::new(IpAddr::V4(rekey_group(port)), port);
    let gcks = RunningGcks::start(TestGcks::new(group_state(rekey, 2), Policy::MismatchedKd)).await;
    let engine = Arc::new(Engine::default());
    let a = agent(engine.clone(), Arc::new(SystemClock));
    let e = a
        .join(member("strict.test", gcks.addr, None), WAIT)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("REGISTRATION_FAILED"), "{e}");
    assert_eq!(gcks.wait_left().await.len(), 1);
    assert_eq!(engine.sa_count(), 0);
    gcks.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn multicast_rekey_installs_the_new_tek_and_deletes_the_old_after_dtd() {
    const DTD: u16 = 3;
    let port = free_port();
    let rekey = SocketAddr::new(IpAddr::V4(rekey_group(port)), port);
    let gcks = RunningGcks::start(TestGcks::new(group_state(rekey, DTD), Policy::Normal)).await;
    let clock = Arc::new(OffsetClock::new());
    let engine = Arc::new(Engine::default());
    let a = agent(engine.clone(), clock.clone());
    let mut events = a.subscribe().await.unwrap();
    let g = a
        .join(member("listener.test", gcks.addr, None), WAIT)
        .await
        .unwrap();
    assert_eq!(g.state, "up");
    let old_spi = gcks.gcks.state.lock().unwrap().teks[0].spi;
    let old_sa = g.teks[0].sa_id;

    // The GCKS side of a rekey: a new TEK, the old one deleted (RFC 9838 2.4.1, 2.4.3).
    let mut rng = SystemRandom::new();
    let new_tek = tek_gcm(&mut rng);
    let msg = {
        let mut st = gcks.gcks.state.lock().unwrap();
        let content = RekeyContent {
            teks: vec![&new_tek],
            deletes: vec![DeletePayload::child(ProtocolId::Esp, &[old_spi])],
            ..RekeyContent::default()
        };
        RekeySender::new(None)
            .build(&mut st, &content, unix_now(), &mut rng)
            .unwrap()
    };
    // Multicast on loopback: IP_MULTICAST_IF 127.0.0.1 with IP_MULTICAST_LOOP.
    let tx = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    tx.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
        .unwrap();
    tx.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).unwrap();
    tx.set_multicast_loop_v4(true).unwrap();
    let tx = std::net::UdpSocket::from(tx);
    // Two copies, as a GCKS sends them (2.4.1.3); the second is a replay.
    for _ in 0..2 {
        for d in &msg.datagrams {
            tx.send_to(d, rekey).unwrap();
        }
    }
    let rekeyed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Some(e @ AgentEvent::Rekeyed { .. }) => return e,
                Some(_) => continue,
                None => panic!("agent stopped"),
            }
        }
    })
    .await
    .expect("GSA_REKEY applied");
    assert_eq!(
        rekeyed,
        AgentEvent::Rekeyed {
            group: GROUP.into(),
            message_id: Some(0),
            installed: vec![format!("{:#010x}", new_tek.spi)],
            deleting: vec![format!("{old_spi:#010x}")],
            new_rekey_sa: false,
        }
    );
    let st = a.status().await.unwrap();
    let g = &st.groups[0];
    assert_eq!(g.teks.len(), 2);
    let old = g.teks.iter().find(|t| t.sa_id == old_sa).unwrap();
    assert_eq!(old.state, "deleting");
    let new = g.teks.iter().find(|t| t.sa_id != old_sa).unwrap();
    assert_eq!(new.spi, format!("{:#010x}", new_tek.spi));
    assert_eq!(
        (new.state.as_str(), new.direction.as_str()),
        ("active", "inbound")
    );
    let stats = g.rekey_stats.unwrap();
    assert_eq!((stats.accepted, stats.replayed), (1, 1));
    assert_eq!(engine.sa_count(), 2);

    // The new TEK carries the GCKS's keys: a packet sealed with them opens here.
    let sender = Engine::default();
    let now = clock.now();
    install_sender(&sender, &new_tek, now);
    let p = udp([10, 9, 9, 9], b"after the rekey");
    let (_, esp) = seal(&sender, &p, now).unwrap();
    assert_eq!(open(&engine, &esp, now), Some(p));

    // Not yet: the old SA lives out its DTD (R039)...
    clock.advance(Duration::from_secs(u64::from(DTD) - 1));
    let st = a.status().await.unwrap();
    assert_eq!(st.groups[0].teks.len(), 2);
    assert!(engine.stats(gikev2_esp::SaId(old_sa)).is_some());
    // ...then it is gone from the engine.
    clock.advance(Duration::from_secs(2));
    let st = a.status().await.unwrap();
    let g = &st.groups[0];
    assert_eq!(g.teks.len(), 1);
    assert_eq!(g.teks[0].spi, format!("{:#010x}", new_tek.spi));
    assert!(engine.stats(gikev2_esp::SaId(old_sa)).is_none());
    assert_eq!(st.engine_sas, 1);
    gcks.stop().await;
}

/// Installs `tek` outbound in a sender's engine, as a sending member would.
fn install_sender(e: &Engine, tek: &gikev2_proto::group::TekState, now: Instant) {
    use gikev2_esp::{
        Action, AddrRange, EspAlgorithm, KeyMaterial, Mode, PolicyId, SaConfig, SadKey, Selector,
        SenderIds, SnTransform, SpdEntry, Tunnel,
    };
    let policy = PolicyId(1);
    e.spd().replace(vec![SpdEntry {
        selectors: vec![Selector::addresses(
            AddrRange::any(false),
            AddrRange::single(IpAddr::from(DATA_GROUP)),
        )],
        action: Action::Protect(policy),
    }]);
    let mut c = SaConfig::new(
        tek.spi,
        Direction::Outbound,
        SadKey::Spi(tek.spi),
        Mode::Tunnel(Tunnel::preserving(false)),
        EspAlgorithm::AesGcm16 { key_bits: 256 },
        KeyMaterial::new(tek.keymat().as_bytes().to_vec()),
        SnTransform::Unspecified32,
    );
    c.policy = Some(policy);
    c.sender_ids = Some(SenderIds {
        bits: 8,
        ids: vec![9],
    });
    e.install(c, now).unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn raw_public_keys_both_ways_from_files() {
    use base64::Engine as _;
    use gikev2_member::JoinArgs;
    use gikev2_proto::crypto::sign::{SignatureScheme, SigningKey};
    use gikev2_proto::ike::{IkeConfig, LocalAuth, PeerAuth, SinglePeer};
    use gikev2_proto::wire::IdPayload;

    // The member's ECDSA P-256 key as PKCS#8 DER; the GCKS's Ed25519 public key as PEM.
    let (member_key, member_pkcs8) =
        SigningKey::generate(SignatureScheme::EcdsaP256Sha256).unwrap();
    let (gcks_key, _) = SigningKey::generate(SignatureScheme::Ed25519).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("member.der");
    std::fs::write(&key_file, member_pkcs8.as_bytes()).unwrap();
    let spki = gcks_key.public_key().to_spki().unwrap();
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&spki)
    );
    let gcks_pub = dir.path().join("gcks.pem");
    std::fs::write(&gcks_pub, pem).unwrap();

    let ike = IkeConfig::new(
        gikev2_member::config::default_suites(),
        IdPayload::fqdn("gcks.test").unwrap(),
        LocalAuth::Signature {
            key: Arc::new(gcks_key),
            certs: Vec::new(),
        },
        Arc::new(SinglePeer {
            id: Some(IdPayload::fqdn("rawkey.test").unwrap()),
            auth: PeerAuth::PublicKey {
                key: member_key.public_key(),
                schemes: vec![SignatureScheme::EcdsaP256Sha256],
            },
        }),
    );
    let port = free_port();
    let rekey = SocketAddr::new(IpAddr::V4(rekey_group(port)), port);
    let gcks =
        RunningGcks::start_with(TestGcks::new(group_state(rekey, 2), Policy::Normal), ike).await;
    let args = JoinArgs {
        group: GROUP.into(),
        gcks: gcks.addr.to_string(),
        key: Some(key_file),
        gcks_key: Some(gcks_pub),
        gcks_id: Some("gcks.test".into()),
        id: Some("rawkey.test".into()),
        ..JoinArgs::default()
    };
    let engine = Arc::new(Engine::default());
    let a = agent(engine.clone(), Arc::new(SystemClock));
    let g = a.join_args(&args, WAIT).await.unwrap();
    assert_eq!((g.state.as_str(), g.auth.as_str()), ("up", "raw-key"));
    assert_eq!(engine.sa_count(), 1);
    // A GCKS presenting another identity is refused before any registration.
    let mut wrong = args.clone();
    wrong.group = "g2".into();
    wrong.gcks_id = Some("impostor.test".into());
    let b = agent(Arc::new(Engine::default()), Arc::new(SystemClock));
    let mut events = b.subscribe().await.unwrap();
    b.join_args(&wrong, None).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&e, AgentEvent::Error { message, .. }
            if message.contains("we could not authenticate the GCKS") && message.contains("--gcks-id")),
        "{e:?}"
    );
    let st = b.status().await.unwrap();
    assert_eq!(st.groups[0].state, "waiting");
    assert!(st.groups[0].next_registration_in_ms.is_some());
    gcks.stop().await;
}

/// `gm join --psk-file --ppk-file --ppk-id --ppk-required --ml-kem` through the agent: a
/// GCKS that accepts only X25519 + ML-KEM-768 and requires the member's PPK (RFC 8784,
/// RFC 9370) admits it; the same join with another PPK is AUTHENTICATION_FAILED.
#[tokio::test(flavor = "current_thread")]
async fn join_args_with_a_required_ppk_and_ml_kem() {
    use gikev2_member::JoinArgs;
    use gikev2_proto::crypto::SecretBytes;
    use gikev2_proto::ike::SinglePpk;

    let dir = tempfile::tempdir().unwrap();
    let (psk, ppk, other) = (
        dir.path().join("psk"),
        dir.path().join("ppk"),
        dir.path().join("other"),
    );
    std::fs::write(&psk, PSK).unwrap();
    std::fs::write(&ppk, b"0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::write(&other, b"fedcba9876543210fedcba9876543210\n").unwrap();
    let mut ike = psk_ike("gcks.test");
    ike.proposals = gikev2_member::config::ml_kem_suites()[..1].to_vec();
    ike.ppk_resolver = Some(Arc::new(SinglePpk {
        id: b"gm-ppk".to_vec(),
        secret: SecretBytes::from_slice(b"0123456789abcdef0123456789abcdef"),
        required: true,
    }));
    let port = free_port();
    let rekey = SocketAddr::new(IpAddr::V4(rekey_group(port)), port);
    let gcks =
        RunningGcks::start_with(TestGcks::new(group_state(rekey, 2), Policy::Normal), ike).await;
    let args = JoinArgs {
        group: GROUP.into(),
        gcks: gcks.addr.to_string(),
        psk_file: Some(psk),
        id: Some("ppk.test".into()),
        ppk_file: Some(ppk),
        ppk_id: Some("gm-ppk".into()),
        ppk_required: true,
        ml_kem: true,
        ..JoinArgs::default()
    };
    let a = agent(Arc::new(Engine::default()), Arc::new(SystemClock));
    let g = a.join_args(&args, WAIT).await.unwrap();
    assert_eq!((g.state.as_str(), g.auth.as_str()), ("up", "psk"));

    let mut wrong = args.clone();
    wrong.ppk_file = Some(other);
    let b = agent(Arc::new(Engine::default()), Arc::new(SystemClock));
    let mut events = b.subscribe().await.unwrap();
    b.join_args(&wrong, None).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&e, AgentEvent::Error { message, .. } if message.contains("authentication failed (AUTHENTICATION_FAILED)")),
        "{e:?}"
    );
}
