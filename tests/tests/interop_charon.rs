//! The interop harness proven with charon against charon: two namespaces joined by a
//! veth pair, charon A initiates a childless IKE SA to charon B. Each test asserts the SA
//! is ESTABLISHED on both sides with the expected suite and identities, and where tshark
//! is there, that the capture holds IKE_SA_INIT and IKE_AUTH (decrypted with the keys
//! charon logged). Plus a hand-built IKE_SA_INIT from a socket inside a namespace.
//!
//! Gates: network namespaces and charon are required under GIKEV2_REQUIRE_ALL=1; ML-KEM is
//! skipped (never failed) where the installed strongSwan predates it.

use std::net::SocketAddr;
use std::time::Duration;

use gikev2_tests::capture::{self, Capture, IkeMessage};
use gikev2_tests::charon::{
    Auth, CharonConfig, CharonInstall, CharonPeer, Identity, IkeSaInfo, Role,
};
use gikev2_tests::driver;
use gikev2_tests::gate;
use gikev2_tests::ikeprobe::{self, ParsedIke, SaInitRequest, Transform};
use gikev2_tests::netns::{self, Pair};
use gikev2_tests::pki::{KeyType, Pki};

const SECRET: &[u8] = b"interop test secret, not for production";

fn charon_or_skip() -> Option<CharonInstall> {
    gate::require("network namespaces", netns::probe())?;
    gate::require("strongSwan charon", CharonInstall::detect())
}

/// Configs for A (initiator) and B (responder) on `pair`, same auth shape both ways.
fn configs(
    pair: &Pair,
    ipv6: bool,
    ids: (Identity, Identity),
    auth: (Auth, Auth),
) -> (CharonConfig, CharonConfig) {
    let a = CharonConfig::new(
        Role::Initiator,
        pair.link_a.addr(ipv6),
        Some(pair.link_b.addr(ipv6)),
        ids.0.clone(),
        Some(ids.1.clone()),
        auth.0,
    );
    let b = CharonConfig::new(
        Role::Responder,
        pair.link_b.addr(ipv6),
        None,
        ids.1,
        Some(ids.0),
        auth.1,
    );
    (a, b)
}

struct Outcome {
    initiator: IkeSaInfo,
    responder: IkeSaInfo,
    /// `None` when tshark is missing (and not required).
    messages: Option<Vec<IkeMessage>>,
}

/// Starts both charons (and a capture on A's link when tshark is there), initiates from
/// A, and returns both views of the IKE SA.
fn establish(pair: &Pair, a_cfg: CharonConfig, b_cfg: CharonConfig) -> Outcome {
    // The capture first, as in the other capture tests: started after the charons (just
    // before initiating), it missed the IKE_SA_INIT pair now and then although dumpcap
    // had said "Capturing on" (libpcap discards what arrived before its filter was set,
    // which may be after that line). Starting two daemons takes far longer.
    let cap = gate::require("tshark", capture::probe()).map(|()| {
        Capture::start(
            &pair.a,
            &pair.link_a.ifname,
            "udp port 500 or udp port 4500",
        )
        .expect("capture")
    });
    let b = CharonPeer::start(&pair.b, b_cfg).expect("charon B");
    let a = CharonPeer::start(&pair.a, a_cfg).expect("charon A");
    let out = a.initiate();
    assert!(
        out.is_ok(),
        "initiate failed: {out:?}\nA:\n{}\nB:\n{}",
        a.log_tail(30),
        b.log_tail(30)
    );
    let initiator = a.ike_sa("gikev2").unwrap().expect("IKE SA on A");
    assert_eq!(initiator.state, "ESTABLISHED");
    let responder = b
        .wait_established("gikev2", Duration::from_secs(5))
        .expect("IKE SA on B");
    assert!(initiator.initiator && !responder.initiator);
    assert_eq!(initiator.spi_i, responder.spi_i);
    assert_eq!(initiator.spi_r, responder.spi_r);
    assert_ne!(initiator.spi_r, [0; 8]);
    assert_eq!(
        initiator.field("child-sas"),
        None,
        "childless: no CHILD_SA values"
    );
    let messages = cap.map(|cap| {
        // Keys: both sides must have derived the same ones.
        let ka = a.keys_for(&initiator).expect("A logged its IKE keys");
        let kb = b.keys_for(&responder).expect("B logged its IKE keys");
        assert_eq!(
            ka,
            kb.clone_with_id(ka.uniqueid),
            "both ends derive the same SK_*"
        );
        assert!(!ka.sk_ei.is_empty() && !ka.sk_pi.is_empty());
        let opts = capture::ikev2_decryption_entry(&initiator, &ka)
            .map(|e| capture::ikev2_decryption_options(&[e]))
            .unwrap_or_default();
        let pcap = cap
            .stop_after_count("isakmp", 4, Duration::from_secs(5), &opts)
            .expect("4 IKE messages captured");
        let msgs = capture::ike_messages(&pcap, &opts).expect("tshark");
        let _ = std::fs::remove_dir_all(pcap.parent().unwrap());
        msgs
    });
    Outcome {
        initiator,
        responder,
        messages,
    }
}

trait CloneWithId {
    fn clone_with_id(self, id: Option<u32>) -> Self;
}

impl CloneWithId for gikev2_tests::charon::IkeKeys {
    fn clone_with_id(mut self, id: Option<u32>) -> Self {
        self.uniqueid = id;
        self
    }
}

/// IKE_SA_INIT request + response, IKE_AUTH request + response, in that order, with
/// the payloads a childless IKE_AUTH carries once decrypted (IDi, AUTH; IDr, AUTH).
fn assert_childless_exchanges(msgs: &[IkeMessage], decrypted: bool) {
    let shape: Vec<(u8, bool)> = msgs.iter().map(|m| (m.exchange, m.response)).collect();
    assert!(
        shape.starts_with(&[(34, false), (34, true)])
            && shape.contains(&(35, false))
            && shape.contains(&(35, true)),
        "unexpected exchanges: {shape:?}"
    );
    let init_req = &msgs[0];
    assert!(init_req.initiator && init_req.message_id == 0);
    for want in [33u16, 34, 40] {
        assert!(
            init_req.payloads.contains(&want),
            "IKE_SA_INIT lacks {want}: {:?}",
            init_req.payloads
        );
    }
    if decrypted {
        let auth_req = msgs
            .iter()
            .find(|m| m.exchange == 35 && !m.response)
            .unwrap();
        for want in [35u16, 39] {
            assert!(
                auth_req.payloads.contains(&want),
                "IKE_AUTH request lacks {want}: {:?}",
                auth_req.payloads
            );
        }
        assert!(
            !auth_req.payloads.contains(&33),
            "childless: no SA payload in IKE_AUTH"
        );
        assert!(
            !auth_req.payloads.contains(&44),
            "childless: no TSi in IKE_AUTH"
        );
    }
}

#[test]
fn charon_to_charon_psk_fqdn_x25519() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("psk").expect("namespaces");
    let (a, b) = configs(
        &pair,
        false,
        (
            Identity::Fqdn("gm1.example".into()),
            Identity::Fqdn("gcks.example".into()),
        ),
        (Auth::Psk(SECRET.to_vec()), Auth::Psk(SECRET.to_vec())),
    );
    let out = establish(&pair, a, b);
    assert_eq!(out.initiator.field("dh-group"), Some("CURVE_25519"));
    assert_eq!(out.initiator.field("encr-alg"), Some("AES_GCM_16"));
    assert_eq!(out.initiator.field("encr-keysize"), Some("256"));
    assert_eq!(out.initiator.field("prf-alg"), Some("PRF_HMAC_SHA2_256"));
    assert_eq!(out.initiator.local_id, "gm1.example");
    assert_eq!(out.responder.remote_id, "gm1.example");
    assert_eq!(out.responder.local_id, "gcks.example");
    // MOBIKE off: IKE_AUTH stays on port 500.
    assert_eq!(out.initiator.field("remote-port"), Some("500"));
    if let Some(msgs) = out.messages {
        assert_childless_exchanges(&msgs, true);
    }
}

#[test]
fn charon_to_charon_psk_key_id_over_ipv6() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("pskv6").expect("namespaces");
    let gm = Identity::KeyId(vec![0x67, 0x6d, 0x01]);
    let gcks = Identity::KeyId(vec![0xfe, 0xed, 0x00, 0x01]);
    let (a, b) = configs(
        &pair,
        true,
        (gm.clone(), gcks.clone()),
        (Auth::Psk(SECRET.to_vec()), Auth::Psk(SECRET.to_vec())),
    );
    let out = establish(&pair, a, b);
    assert_eq!(
        out.initiator.field("remote-host"),
        Some(pair.link_b.v6.to_string().as_str())
    );
    assert_eq!(out.initiator.local_id, gm.listed());
    assert_eq!(out.initiator.remote_id, gcks.listed());
    assert_eq!(out.responder.remote_id, "67:6d:01");
    if let Some(msgs) = out.messages {
        assert_childless_exchanges(&msgs, true);
        assert_eq!(msgs[0].src, pair.link_a.v6.to_string());
    }
}

fn cert_pair(pair: &Pair, key_type: KeyType, proposal: &str) -> Outcome {
    let pki = Pki::new(key_type, "gikev2 test CA").expect("CA");
    let gm = pki.issue("gm1.example").expect("GM cert");
    let gcks = pki.issue("gcks.example").expect("GCKS cert");
    let (a, b) = configs(
        pair,
        false,
        (
            Identity::Fqdn(gm.fqdn.clone()),
            Identity::Fqdn(gcks.fqdn.clone()),
        ),
        (
            Auth::PubKey {
                own: gm,
                trusted_cas: vec![pki.ca_der().to_vec()],
            },
            Auth::PubKey {
                own: gcks,
                trusted_cas: vec![pki.ca_der().to_vec()],
            },
        ),
    );
    establish(
        pair,
        a.with_proposals(&[proposal]),
        b.with_proposals(&[proposal]),
    )
}

#[test]
fn charon_to_charon_ed25519_certificates() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("ed").expect("namespaces");
    let out = cert_pair(&pair, KeyType::Ed25519, "aes256gcm16-prfsha256-x25519");
    assert_eq!(out.responder.remote_id, "gm1.example");
    if let Some(msgs) = out.messages {
        assert_childless_exchanges(&msgs, true);
        let auth_req = msgs
            .iter()
            .find(|m| m.exchange == 35 && !m.response)
            .unwrap();
        assert!(
            auth_req.payloads.contains(&37),
            "CERT payload expected: {:?}",
            auth_req.payloads
        );
    }
}

#[test]
fn charon_to_charon_ecdsa_p256_certificates_ecp256() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("ecdsa").expect("namespaces");
    let out = cert_pair(&pair, KeyType::EcdsaP256, "aes256gcm16-prfsha256-ecp256");
    assert_eq!(out.initiator.field("dh-group"), Some("ECP_256"));
    if let Some(msgs) = out.messages {
        assert_childless_exchanges(&msgs, true);
    }
}

#[test]
fn charon_to_charon_fragments_a_large_ike_auth() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("frag").expect("namespaces");
    let pki = Pki::new(KeyType::EcdsaP256, "gikev2 test CA").expect("CA");
    let gm = pki.issue("gm1.example").expect("cert");
    let gcks = pki.issue("gcks.example").expect("cert");
    let (mut a, mut b) = configs(
        &pair,
        false,
        (
            Identity::Fqdn(gm.fqdn.clone()),
            Identity::Fqdn(gcks.fqdn.clone()),
        ),
        (
            Auth::PubKey {
                own: gm,
                trusted_cas: vec![pki.ca_der().to_vec()],
            },
            Auth::PubKey {
                own: gcks,
                trusted_cas: vec![pki.ca_der().to_vec()],
            },
        ),
    );
    // The smallest size charon accepts for IPv4 is 576; a certificate-bearing IKE_AUTH
    // is larger once the SK framing is added.
    a.fragment_size = Some(576);
    b.fragment_size = Some(576);
    let b = CharonPeer::start(&pair.b, b).expect("charon B");
    let a = CharonPeer::start(&pair.a, a).expect("charon A");
    a.initiate()
        .unwrap_or_else(|e| panic!("{e}\n{}", a.log_tail(30)));
    b.wait_established("gikev2", Duration::from_secs(5))
        .expect("B established");
    // charon logs each fragment it sends and the reassembly on the other side.
    assert!(
        a.log().contains("splitting IKE message"),
        "{}",
        a.log_tail(40)
    );
    assert!(
        b.log().contains("received fragment #"),
        "{}",
        b.log_tail(40)
    );
}

#[test]
fn charon_to_charon_mlkem768_hybrid() {
    let Some(install) = charon_or_skip() else {
        return;
    };
    if let Err(why) = install.mlkem_support() {
        gate::skip_unsupported("ML-KEM interop with charon", &why);
        return;
    }
    let pair = Pair::new("mlkem").expect("namespaces");
    let (a, b) = configs(
        &pair,
        false,
        (
            Identity::Fqdn("gm1.example".into()),
            Identity::Fqdn("gcks.example".into()),
        ),
        (Auth::Psk(SECRET.to_vec()), Auth::Psk(SECRET.to_vec())),
    );
    let p = "aes256gcm16-prfsha256-x25519-ke1_mlkem768";
    let out = establish(&pair, a.with_proposals(&[p]), b.with_proposals(&[p]));
    assert_eq!(out.initiator.state, "ESTABLISHED");
}

#[test]
fn charon_answers_a_hand_built_ike_sa_init_from_our_namespace() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("probe").expect("namespaces");
    let cfg = CharonConfig::new(
        Role::Responder,
        pair.link_b.v4.into(),
        None,
        Identity::Fqdn("gcks.example".into()),
        None,
        Auth::Psk(SECRET.to_vec()),
    );
    let charon = CharonPeer::start(&pair.b, cfg).expect("charon");
    let sock = pair
        .a
        .udp_socket(SocketAddr::new(pair.link_a.v4.into(), 500))
        .expect("our UDP 500 inside namespace A");

    // An acceptable proposal: a full IKE_SA_INIT response.
    let req = SaInitRequest::aes256gcm_sha256_x25519();
    let reply = ikeprobe::exchange(
        &sock,
        charon.ike_addr(),
        &req.encode(),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", charon.log_tail(20)));
    assert!(reply.is_response());
    assert_eq!(reply.exchange, ikeprobe::IKE_SA_INIT);
    assert_eq!(reply.spi_i, req.spi_i);
    assert_ne!(reply.spi_r, [0; 8]);
    assert_eq!(reply.message_id, 0);
    let types = reply.payload_types();
    for want in [ikeprobe::PT_SA, ikeprobe::PT_KE, ikeprobe::PT_NONCE] {
        assert!(types.contains(&want), "{types:?}");
    }
    assert_eq!(reply.ke_group(), Some(31));
    assert!(
        reply.notify_types().contains(&16430),
        "fragmentation supported: {:?}",
        reply.notify_types()
    );
    assert!(
        reply.notify_types().contains(&16418),
        "childless supported: {:?}",
        reply.notify_types()
    );
    // charon keeps a half-open SA for it.
    charon
        .wait_log("IKE_SA_INIT response 0", Duration::from_secs(5))
        .expect("logged");

    // Nothing acceptable (3DES): NO_PROPOSAL_CHOSEN, and no SA.
    let mut bad = SaInitRequest::aes256gcm_sha256_x25519();
    bad.transforms[0] = Transform {
        kind: 1,
        id: 3,
        key_len: None,
    };
    let reply = ikeprobe::exchange(
        &sock,
        charon.ike_addr(),
        &bad.encode(),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", charon.log_tail(20)));
    assert!(reply.is_response());
    assert_eq!(reply.notify_types(), [ikeprobe::NO_PROPOSAL_CHOSEN]);
    assert_eq!(
        reply.spi_r, [0; 8],
        "no responder SPI with an error (RFC 7296 2.6)"
    );

    // A KE payload of the wrong group: INVALID_KE_PAYLOAD naming the group charon wants.
    let mut wrong_ke = SaInitRequest::aes256gcm_sha256_x25519();
    wrong_ke.ke_group = 19;
    wrong_ke.ke_data = ikeprobe::pseudo_random_bytes(64);
    let reply = ikeprobe::exchange(
        &sock,
        charon.ike_addr(),
        &wrong_ke.encode(),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", charon.log_tail(20)));
    assert_eq!(reply.notify_types(), [ikeprobe::INVALID_KE_PAYLOAD]);
}

#[test]
fn charon_initiates_to_a_responder_of_ours_driven_from_a_namespace() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("resp").expect("namespaces");
    // "Our" responder: a socket in namespace A on a non-standard port, driven by the
    // driver loop. It answers IKE_SA_INIT with NO_PROPOSAL_CHOSEN; the real responder
    // will take this place.
    let ours = SocketAddr::new(pair.link_a.v4.into(), 5000);
    let sock = pair.a.udp_socket(ours).expect("socket in A");
    let cfg = CharonConfig::initiator(
        pair.link_b.v4.into(),
        ours,
        Identity::Fqdn("gm1.example".into()),
        Some(Identity::Fqdn("gcks.example".into())),
        Auth::Psk(SECRET.to_vec()),
    );
    let charon = CharonPeer::start(&pair.b, cfg).expect("charon");
    let mut seen = Vec::new();
    std::thread::scope(|s| {
        let initiation = s.spawn(|| charon.initiate());
        driver::run_udp(&sock, Duration::from_secs(10), |event, _now| match event {
            driver::Event::Datagram { data, from } => {
                let req = ParsedIke::parse(data).expect("charon's request parses");
                seen.push((req.exchange, req.is_response(), req.payload_types()));
                let reply = ikeprobe::error_response(&req, ikeprobe::NO_PROPOSAL_CHOSEN, &[]);
                (vec![(reply, from)], true)
            }
            _ => (Vec::new(), false),
        })
        .expect("charon's IKE_SA_INIT reached our socket");
        let result = initiation.join().expect("initiate thread");
        assert!(result.is_err(), "charon must fail to establish: {result:?}");
    });
    assert_eq!(seen.len(), 1);
    let (exchange, response, payloads) = &seen[0];
    assert_eq!((*exchange, *response), (ikeprobe::IKE_SA_INIT, false));
    assert_eq!(
        &payloads[..3],
        &[ikeprobe::PT_SA, ikeprobe::PT_KE, ikeprobe::PT_NONCE]
    );
    charon
        .wait_log(
            "received NO_PROPOSAL_CHOSEN notify error",
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", charon.log_tail(20)));
    assert_eq!(
        charon.ike_sa_state("gikev2").unwrap(),
        None,
        "no IKE SA left"
    );
}
