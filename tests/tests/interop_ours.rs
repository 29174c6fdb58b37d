//! Our IKE state machines against strongSwan's charon, through real UDP between two
//! network namespaces: something we did not write has to agree with us.
//!
//! - Our initiator ([`IkeSa::initiate`], childless IKE_AUTH, RFC 6023) in namespace A
//!   against a charon responder in B: PSK, Ed25519 and ECDSA P-256 certificates, AES-GCM
//!   with X25519 or ECP-256, AES-CBC + HMAC-SHA2-256, IKE fragmentation (RFC 7383) on
//!   both sides, and an INVALID_KE_PAYLOAD round (RFC 7296 1.2).
//! - charon initiating to our responder ([`Endpoint`]) in A: PSK, Ed25519 and ECDSA
//!   certificates, and a COOKIE challenge on every IKE_SA_INIT (RFC 7296 2.6).
//! - A capture of our initiator's conversation, decrypted by tshark with the keys charon
//!   logged, shows IKE_SA_INIT then IKE_AUTH with IDi/AUTH and no Child SA.
//!
//! Each test checks both views: our side emitted `Event::Established` with charon's
//! identity, and charon lists the IKE SA as ESTABLISHED with ours, same SPIs; where charon
//! logged its keys, both ends derived the same SK_* values. Certificates are validated on
//! our side by [`CertificateResolver`] (rustls-webpki), on charon's by charon.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use gikev2_proto::crypto::{
    IkeKeys, IkeSuite, KeMethod, PrfAlg, SecretBytes, SignatureScheme, SigningKey, SystemRandom,
};
use gikev2_proto::ike::x509::CertificateResolver;
use gikev2_proto::ike::{
    CloseReason, Endpoint, EndpointConfig, EndpointStats, Event, Goal, IkeConfig, IkeSa, LocalAuth,
    LocalPpk, PeerAuth, PeerAuthResolver, SaHandle, SinglePeer, SinglePpk,
};
use gikev2_proto::registry::{EncrId, ExchangeType, IntegId, KeId, PrfId};
use gikev2_proto::wire::{Header, IdPayload, Transform};
use gikev2_tests::capture::{self, Capture};
use gikev2_tests::charon::{
    Auth, CharonConfig, CharonInstall, CharonPeer, CharonPpk, Identity, IkeSaInfo,
};
use gikev2_tests::driver;
use gikev2_tests::gate;
use gikev2_tests::netns::{self, Pair};
use gikev2_tests::pki::{Credential, KeyType, Pki};
use gikev2_tests::poll_until;

const SECRET: &[u8] = b"interop test secret, not for production";
const CONN: &str = "gikev2";
const GM: &str = "gm1.example";
const GCKS: &str = "gcks.example";

const GCM_X25519: &str = "aes256gcm16-prfsha256-x25519";
const GCM_ECP256: &str = "aes256gcm16-prfsha256-ecp256";
const CBC_ECP256: &str = "aes128-sha256-ecp256";

fn charon_or_skip() -> Option<CharonInstall> {
    gate::require("network namespaces", netns::probe())?;
    gate::require("strongSwan charon", CharonInstall::detect())
}

/// Our suite for a charon proposal string (the three these tests use).
fn suite(proposal: &str) -> IkeSuite {
    let (encr, integ, ke) = match proposal {
        GCM_X25519 => (
            Transform::encr(EncrId::AesGcm16, Some(256)),
            None,
            KeId::Curve25519,
        ),
        GCM_ECP256 => (
            Transform::encr(EncrId::AesGcm16, Some(256)),
            None,
            KeId::Ecp256,
        ),
        CBC_ECP256 => (
            Transform::encr(EncrId::AesCbc, Some(128)),
            Some(Transform::integ(IntegId::HmacSha2_256_128)),
            KeId::Ecp256,
        ),
        other => panic!("no suite for {other}"),
    };
    let mut t = vec![encr, Transform::prf(PrfId::HmacSha2_256)];
    t.extend(integ);
    t.push(Transform::ke(ke));
    IkeSuite::from_transforms(&t).expect("suite")
}

fn fqdn(s: &str) -> IdPayload {
    IdPayload::fqdn(s).expect("FQDN identity")
}

/// How both sides authenticate.
enum Creds {
    Psk,
    Certs(KeyType),
}

/// One side of ours (local credential and how it checks the peer) and charon's `Auth`.
struct Setup {
    local_auth: LocalAuth,
    peer_auth: Arc<dyn PeerAuthResolver>,
    charon_auth: Auth,
}

fn scheme(kt: KeyType) -> SignatureScheme {
    match kt {
        KeyType::Ed25519 => SignatureScheme::Ed25519,
        KeyType::EcdsaP256 => SignatureScheme::EcdsaP256Sha256,
    }
}

/// Credentials for our side named `ours` and charon named `theirs`.
fn setup(creds: &Creds, ours: &str, theirs: &str) -> Setup {
    match creds {
        Creds::Psk => Setup {
            local_auth: LocalAuth::Psk(SecretBytes::from_slice(SECRET)),
            peer_auth: Arc::new(SinglePeer {
                id: Some(fqdn(theirs)),
                auth: PeerAuth::Psk(SecretBytes::from_slice(SECRET)),
            }),
            charon_auth: Auth::Psk(SECRET.to_vec()),
        },
        Creds::Certs(kt) => {
            let pki = Pki::new(*kt, "gikev2 interop CA").expect("CA");
            let mine: Credential = pki.issue(ours).expect("our certificate");
            let charons = pki.issue(theirs).expect("charon's certificate");
            let key = SigningKey::from_pkcs8(scheme(*kt), &mine.key_pkcs8_der).expect("our key");
            let resolver = CertificateResolver::new([pki.ca_der()], Arc::new(SystemTime::now))
                .expect("trust anchor")
                .with_peer_id(fqdn(theirs));
            Setup {
                local_auth: LocalAuth::Signature {
                    key: Arc::new(key),
                    certs: vec![mine.cert_der.clone()],
                },
                peer_auth: Arc::new(resolver),
                charon_auth: Auth::PubKey {
                    own: charons,
                    trusted_cas: vec![pki.ca_der().to_vec()],
                },
            }
        }
    }
}

fn our_config(
    proposals: &[&str],
    local_id: &str,
    local_auth: LocalAuth,
    peer: Arc<dyn PeerAuthResolver>,
) -> IkeConfig {
    IkeConfig::new(
        proposals.iter().map(|p| suite(p)).collect(),
        fqdn(local_id),
        local_auth,
        peer,
    )
}

/// Our initiator on a UDP socket in namespace A, talking to one charon.
struct InitiatorRun {
    sock: UdpSocket,
    remote: SocketAddr,
    rng: SystemRandom,
    sa: IkeSa,
    events: Vec<Event>,
    /// Headers of every datagram we sent, in order.
    sent: Vec<Header>,
}

impl InitiatorRun {
    /// Starts our initiator towards `charon` (its IKE_SA_INIT is queued, not yet sent).
    fn start(pair: &Pair, charon: &CharonPeer<'_>, config: IkeConfig) -> InitiatorRun {
        let remote = charon.ike_addr();
        let local = SocketAddr::new(pair.link_a.addr(remote.is_ipv6()), 500);
        let sock = pair
            .a
            .udp_socket(local)
            .expect("our UDP 500 in namespace A");
        let mut rng = SystemRandom::new();
        let sa = IkeSa::initiate(
            config,
            Goal::IkeAuth,
            local,
            remote,
            Instant::now(),
            &mut rng,
        )
        .expect("initiate");
        InitiatorRun {
            sock,
            remote,
            rng,
            sa,
            events: Vec::new(),
            sent: Vec::new(),
        }
    }

    /// Runs the socket loop until `done(events so far)` or the timeout.
    fn drive(
        &mut self,
        charon: &CharonPeer<'_>,
        timeout: Duration,
        done: impl Fn(&[Event]) -> bool,
    ) {
        self.drive_until(charon, timeout, 40, |_, events| done(events));
    }

    /// Runs the socket loop until `done(our IKE SA)` or the timeout.
    fn drive_sa(
        &mut self,
        charon: &CharonPeer<'_>,
        timeout: Duration,
        done: impl Fn(&IkeSa) -> bool,
    ) {
        self.drive_until(charon, timeout, 60, |sa, _| done(sa));
    }

    /// Runs the socket loop until `done(our IKE SA, its events)` or the timeout; on a
    /// timeout, fails with the last `tail` lines of charon's log.
    fn drive_until(
        &mut self,
        charon: &CharonPeer<'_>,
        timeout: Duration,
        tail: usize,
        done: impl Fn(&IkeSa, &[Event]) -> bool,
    ) {
        let Self {
            sock,
            remote,
            rng,
            sa,
            events,
            sent,
        } = self;
        let remote = *remote;
        let result = driver::run_udp(sock, timeout, |ev, now| {
            if let driver::Event::Datagram { data, from } = ev
                && from == remote
            {
                sa.handle(data, now, rng);
            }
            if sa.poll_timeout().is_some_and(|t| t <= now) {
                sa.handle_timeout(now, rng);
            }
            let mut out = Vec::new();
            while let Some(d) = sa.poll_transmit() {
                sent.push(Header::read_datagram(&d).expect("we send decodable headers"));
                out.push((d, remote));
            }
            while let Some(e) = sa.poll_event() {
                events.push(e);
            }
            (out, done(sa, events))
        });
        if let Err(e) = result {
            panic!(
                "our initiator: {e}; events {events:?}\ncharon:\n{}",
                charon.log_tail(tail)
            );
        }
    }

    /// Drives until the IKE SA is established or closed.
    fn handshake(&mut self, charon: &CharonPeer<'_>) {
        self.drive(charon, Duration::from_secs(10), |events| {
            events
                .iter()
                .any(|e| matches!(e, Event::Established { .. } | Event::Closed(_)))
        });
    }
}

fn closed(events: &[Event]) -> Option<&CloseReason> {
    events.iter().find_map(|e| match e {
        Event::Closed(r) => Some(r),
        _ => None,
    })
}

fn established_peer(events: &[Event]) -> Option<&IdPayload> {
    events.iter().find_map(|e| match e {
        Event::Established { peer_id } => Some(peer_id),
        _ => None,
    })
}

/// charon's logged SK_* equal ours (both ends ran the same key schedule). With `ppk`
/// (RFC 8784 3) charon must have logged the PPK step, and its SK_d, SK_pi, SK_pr before it
/// (SK_x') give ours as `prf+(PPK, SK_x')` (PRF-HMAC-SHA2-256 in these suites).
fn assert_same_keys_ppk(
    charon: &CharonPeer<'_>,
    info: &IkeSaInfo,
    ours: &IkeKeys,
    ppk: Option<&[u8]>,
) {
    let theirs = charon.keys_for(info).expect("charon logged its IKE keys");
    let pairs = [
        ("SK_d", &theirs.sk_d, &ours.sk_d),
        ("SK_ai", &theirs.sk_ai, &ours.sk_ai),
        ("SK_ar", &theirs.sk_ar, &ours.sk_ar),
        ("SK_ei", &theirs.sk_ei, &ours.sk_ei),
        ("SK_er", &theirs.sk_er, &ours.sk_er),
        ("SK_pi", &theirs.sk_pi, &ours.sk_pi),
        ("SK_pr", &theirs.sk_pr, &ours.sk_pr),
    ];
    for (name, t, o) in pairs {
        assert_eq!(t.as_slice(), o.as_bytes(), "{name} differs from charon's");
    }
    match (ppk, &theirs.before_ppk) {
        (Some(p), Some(primes)) => {
            for (name, prime, o) in [
                ("SK_d", &primes[0], &ours.sk_d),
                ("SK_pi", &primes[1], &ours.sk_pi),
                ("SK_pr", &primes[2], &ours.sk_pr),
            ] {
                let mixed = PrfAlg::HmacSha2_256
                    .prf_plus(p, &[prime], prime.len())
                    .expect("prf+");
                assert_eq!(&mixed, o, "{name} is not prf+(PPK, {name}')");
                assert_ne!(prime.as_slice(), o.as_bytes(), "{name}: PPK mixed in");
            }
        }
        (None, None) => {}
        (ours_ppk, theirs_ppk) => panic!(
            "PPK used by us: {}, by charon: {}",
            ours_ppk.is_some(),
            theirs_ppk.is_some()
        ),
    }
}

/// Our initiator (GM) handshaking with a charon responder (GCKS) with `creds`; charon
/// offers `charon_proposals` (`None`: charon's default), `tweak` adjusts both configs
/// first. Returns the run and charon, however the handshake ended.
fn handshake_with_charon<'p>(
    pair: &'p Pair,
    creds: &Creds,
    our_proposals: &[&str],
    charon_proposals: Option<&[&str]>,
    tweak: impl FnOnce(&mut IkeConfig, &mut CharonConfig),
) -> (InitiatorRun, CharonPeer<'p>) {
    let s = setup(creds, GM, GCKS);
    let mut cfg = CharonConfig::responder(
        pair.link_b.v4.into(),
        Identity::Fqdn(GCKS.into()),
        Some(Identity::Fqdn(GM.into())),
        s.charon_auth,
    );
    if let Some(p) = charon_proposals {
        cfg = cfg.with_proposals(p);
    }
    let mut ours = our_config(our_proposals, GM, s.local_auth, s.peer_auth);
    ours.remote_id = Some(fqdn(GCKS));
    tweak(&mut ours, &mut cfg);
    let charon = CharonPeer::start(&pair.b, cfg).expect("charon responder");
    let mut run = InitiatorRun::start(pair, &charon, ours);
    run.handshake(&charon);
    (run, charon)
}

/// Our initiator against a charon responder; returns our run and charon's SA.
fn ours_to_charon<'p>(
    pair: &'p Pair,
    creds: Creds,
    our_proposals: &[&str],
    charon_proposals: &[&str],
    tweak: impl FnOnce(&mut IkeConfig, &mut CharonConfig),
) -> (InitiatorRun, IkeSaInfo, CharonPeer<'p>) {
    let mut ppk = None;
    let (run, charon) = handshake_with_charon(
        pair,
        &creds,
        our_proposals,
        Some(charon_proposals),
        |ours, cfg| {
            tweak(ours, cfg);
            ppk = ours.ppk.as_ref().map(|p| p.secret.clone());
        },
    );
    assert_eq!(
        established_peer(&run.events),
        Some(&fqdn(GCKS)),
        "our initiator: {:?}\ncharon:\n{}",
        run.events,
        charon.log_tail(40)
    );
    assert!(run.sa.is_established());
    let info = charon
        .wait_established(CONN, Duration::from_secs(5))
        .expect("charon lists the IKE SA");
    assert_eq!(info.state, "ESTABLISHED");
    assert!(!info.initiator);
    assert_eq!(info.local_id, GCKS);
    assert_eq!(info.remote_id, GM, "charon authenticated our identity");
    let (spi_i, spi_r) = run.sa.spis();
    assert_eq!((info.spi_i, info.spi_r), (spi_i, spi_r));
    assert_eq!(info.field("child-sas"), None, "childless");
    let ppk = ppk.filter(|_| run.sa.ppk_used());
    assert_same_keys_ppk(
        &charon,
        &info,
        run.sa.keys().expect("our IKE keys"),
        ppk.as_ref().map(SecretBytes::as_bytes),
    );
    (run, info, charon)
}

#[test]
fn ours_to_charon_psk_fqdn_x25519() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("o2c-psk").expect("namespaces");
    let (run, info, _charon) =
        ours_to_charon(&pair, Creds::Psk, &[GCM_X25519], &[GCM_X25519], |_, _| {});
    assert_eq!(info.field("encr-alg"), Some("AES_GCM_16"));
    assert_eq!(info.field("encr-keysize"), Some("256"));
    assert_eq!(info.field("prf-alg"), Some("PRF_HMAC_SHA2_256"));
    assert_eq!(info.field("dh-group"), Some("CURVE_25519"));
    assert_eq!(run.sa.suite().map(|s| s.ke), Some(KeMethod::Curve25519));
}

#[test]
fn ours_to_charon_ed25519_certificates() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("o2c-ed").expect("namespaces");
    let (_run, info, charon) = ours_to_charon(
        &pair,
        Creds::Certs(KeyType::Ed25519),
        &[GCM_X25519],
        &[GCM_X25519],
        |_, _| {},
    );
    assert_eq!(info.field("dh-group"), Some("CURVE_25519"));
    // charon checked our RFC 7427 signature with the key of the certificate we sent.
    assert!(
        charon
            .log()
            .contains("authentication of 'gm1.example' with ED25519 successful"),
        "{}",
        charon.log_tail(40)
    );
}

#[test]
fn ours_to_charon_ecdsa_p256_certificates_ecp256() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("o2c-ec").expect("namespaces");
    let (run, info, _charon) = ours_to_charon(
        &pair,
        Creds::Certs(KeyType::EcdsaP256),
        &[GCM_ECP256],
        &[GCM_ECP256],
        |_, _| {},
    );
    assert_eq!(info.field("dh-group"), Some("ECP_256"));
    assert_eq!(run.sa.suite().map(|s| s.ke), Some(KeMethod::Ecp256));
}

#[test]
fn ours_to_charon_aes_cbc_hmac_sha256_ecp256() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("o2c-cbc").expect("namespaces");
    let (_run, info, _charon) =
        ours_to_charon(&pair, Creds::Psk, &[CBC_ECP256], &[CBC_ECP256], |_, _| {});
    assert_eq!(info.field("encr-alg"), Some("AES_CBC"));
    assert_eq!(info.field("encr-keysize"), Some("128"));
    assert_eq!(info.field("integ-alg"), Some("HMAC_SHA2_256_128"));
    assert_eq!(info.field("dh-group"), Some("ECP_256"));
}

#[test]
fn ours_to_charon_fragments_both_ways() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("o2c-frag").expect("namespaces");
    let (run, _info, charon) = ours_to_charon(
        &pair,
        Creds::Certs(KeyType::EcdsaP256),
        &[GCM_ECP256],
        &[GCM_ECP256],
        |ours, theirs| {
            // Small enough that a certificate-bearing IKE_AUTH takes several fragments
            // (RFC 7383 2.5); 576 is the smallest IPv4 size charon accepts.
            ours.fragment_size = Some(300);
            theirs.fragment_size = Some(576);
        },
    );
    let auth_fragments = run
        .sent
        .iter()
        .filter(|h| h.exchange == ExchangeType::IkeAuth)
        .count();
    assert!(
        auth_fragments >= 2,
        "we fragmented IKE_AUTH: {auth_fragments}"
    );
    let log = charon.log();
    assert!(
        log.contains("received fragment #1 of"),
        "charon reassembled ours:\n{}",
        charon.log_tail(40)
    );
    assert!(
        log.contains("splitting IKE message"),
        "charon fragmented its response (and we reassembled it):\n{}",
        charon.log_tail(40)
    );
}

#[test]
fn ours_to_charon_invalid_ke_payload_round() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("o2c-ke").expect("namespaces");
    // We offer X25519 first (and send its KE); charon accepts only ECP-256.
    let (run, info, charon) = ours_to_charon(
        &pair,
        Creds::Psk,
        &[GCM_X25519, GCM_ECP256],
        &[GCM_ECP256],
        |_, _| {},
    );
    let inits = run
        .sent
        .iter()
        .filter(|h| h.exchange == ExchangeType::IkeSaInit)
        .count();
    assert_eq!(inits, 2, "IKE_SA_INIT again after INVALID_KE_PAYLOAD");
    assert_eq!(run.sa.suite().map(|s| s.ke), Some(KeMethod::Ecp256));
    assert_eq!(info.field("dh-group"), Some("ECP_256"));
    assert!(
        charon
            .log()
            .contains("DH group CURVE_25519 unacceptable, requesting ECP_256"),
        "{}",
        charon.log_tail(40)
    );
}

/// What our responder saw while charon initiated.
struct ResponderRun {
    events: Vec<Event>,
    /// Our IKE SA mixed a PPK into its keys (RFC 8784).
    ppk_used: bool,
    stats: EndpointStats,
    spis: Option<([u8; 8], [u8; 8])>,
    /// charon's whole log.
    charon_log: String,
}

/// One step of our responder endpoint under `driver::run_udp`: the datagram handled,
/// timers run, what it sends; its events appended to `events`, the handle of an SA that
/// got established kept in `established`.
fn serve_step(
    ep: &mut Endpoint,
    ev: driver::Event<'_>,
    now: Instant,
    rng: &mut SystemRandom,
    events: &mut Vec<Event>,
    established: &mut Option<SaHandle>,
) -> Vec<(Vec<u8>, SocketAddr)> {
    if let driver::Event::Datagram { data, from } = ev {
        ep.handle(data, from, now, rng);
    }
    if ep.poll_timeout().is_some_and(|t| t <= now) {
        ep.handle_timeout(now, rng);
    }
    let mut out = Vec::new();
    while let Some((to, d)) = ep.poll_transmit() {
        out.push((d, to));
    }
    while let Some((h, e)) = ep.poll_event() {
        if matches!(e, Event::Established { .. }) {
            *established = Some(h);
        }
        events.push(e);
    }
    out
}

/// charon in B initiates to our [`Endpoint`] on UDP 500 in A.
fn charon_to_ours(
    pair: &Pair,
    creds: Creds,
    proposal: &str,
    endpoint: EndpointConfig,
    tweak: impl FnOnce(&mut IkeConfig, &mut CharonConfig),
) -> ResponderRun {
    let s = setup(&creds, GCKS, GM);
    let local = SocketAddr::new(pair.link_a.v4.into(), 500);
    let mut cfg = CharonConfig::initiator(
        pair.link_b.v4.into(),
        local,
        Identity::Fqdn(GM.into()),
        Some(Identity::Fqdn(GCKS.into())),
        s.charon_auth,
    )
    .with_proposals(&[proposal]);
    let mut ours = our_config(&[proposal], GCKS, s.local_auth, s.peer_auth);
    tweak(&mut ours, &mut cfg);
    let ppk = cfg.ppk.as_ref().map(|p| p.secret.clone());
    let charon = CharonPeer::start(&pair.b, cfg).expect("charon initiator");
    let sock = pair
        .a
        .udp_socket(local)
        .expect("our UDP 500 in namespace A");
    let mut rng = SystemRandom::new();
    let mut ep = Endpoint::new(ours, endpoint, local, Instant::now(), &mut rng);
    let mut events = Vec::new();
    let mut established = None;
    let initiated = std::thread::scope(|scope| {
        let initiation = scope.spawn(|| charon.initiate());
        let served = driver::run_udp(&sock, Duration::from_secs(20), |ev, now| {
            let out = serve_step(&mut ep, ev, now, &mut rng, &mut events, &mut established);
            // Serve until charon's swanctl has its answer (it may still retransmit).
            (out, initiation.is_finished())
        });
        let result = initiation.join().expect("initiate thread");
        served.expect("served charon's initiation");
        result
    });
    if let Err(e) = initiated {
        panic!(
            "charon could not initiate: {e}\nours: {events:?}\ncharon:\n{}",
            charon.log_tail(40)
        );
    }
    let sa = established.and_then(|h| ep.sa(h));
    let spis = sa.map(IkeSa::spis);
    let ppk_used = sa.is_some_and(IkeSa::ppk_used);
    assert_eq!(
        established_peer(&events),
        Some(&fqdn(GM)),
        "our responder: {events:?}"
    );
    let info = charon
        .ike_sa(CONN)
        .expect("list-sas")
        .expect("charon's IKE SA");
    assert_eq!(info.state, "ESTABLISHED");
    assert!(info.initiator);
    assert_eq!(info.local_id, GM);
    assert_eq!(info.remote_id, GCKS, "charon authenticated our identity");
    assert_eq!(Some((info.spi_i, info.spi_r)), spis);
    assert_eq!(info.field("remote-port"), Some("500"));
    let keys = sa.and_then(IkeSa::keys).expect("our IKE keys");
    assert_same_keys_ppk(&charon, &info, keys, ppk.as_deref().filter(|_| ppk_used));
    ResponderRun {
        events,
        ppk_used,
        stats: ep.stats().clone(),
        spis,
        charon_log: charon.log(),
    }
}

#[test]
fn charon_to_ours_psk() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("c2o-psk").expect("namespaces");
    // `allow`: charon goes childless only where the responder announced it (RFC 6023 3);
    // its own IKE_SA_INIT request does not announce it, our response must anyway.
    let run = charon_to_ours(
        &pair,
        Creds::Psk,
        GCM_X25519,
        EndpointConfig::default(),
        |_, c| c.childless = "allow".into(),
    );
    let init_response = run
        .charon_log
        .lines()
        .find(|l| l.contains("parsed IKE_SA_INIT response 0"))
        .expect("charon parsed our IKE_SA_INIT response");
    assert!(init_response.contains("N(CHDLESS_SUP)"), "{init_response}");
    assert_eq!(run.stats.cookies_sent, 0);
    assert_eq!(run.stats.sas_created, 1);
    assert!(run.spis.is_some());
}

#[test]
fn charon_to_ours_ed25519_certificates() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("c2o-ed").expect("namespaces");
    let run = charon_to_ours(
        &pair,
        Creds::Certs(KeyType::Ed25519),
        GCM_X25519,
        EndpointConfig::default(),
        |_, _| {},
    );
    assert!(!run.events.iter().any(|e| matches!(e, Event::Closed(_))));
}

#[test]
fn charon_to_ours_ecdsa_p256_certificates() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("c2o-ec").expect("namespaces");
    let run = charon_to_ours(
        &pair,
        Creds::Certs(KeyType::EcdsaP256),
        GCM_ECP256,
        EndpointConfig::default(),
        |_, _| {},
    );
    assert!(!run.events.iter().any(|e| matches!(e, Event::Closed(_))));
}

#[test]
fn charon_to_ours_answers_our_cookie_challenge() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("c2o-cookie").expect("namespaces");
    let cfg = EndpointConfig {
        cookie_threshold: 0,
        ..EndpointConfig::default()
    };
    let run = charon_to_ours(&pair, Creds::Psk, GCM_X25519, cfg, |_, _| {});
    assert!(run.stats.cookies_sent >= 1, "{:?}", run.stats);
    assert_eq!(run.stats.cookies_rejected, 0, "{:?}", run.stats);
    assert_eq!(run.stats.sas_created, 1, "{:?}", run.stats);
}

#[test]
fn ours_to_charon_capture_decrypts_with_charons_keys() {
    let Some(_) = charon_or_skip() else { return };
    let Some(()) = gate::require("tshark", capture::probe()) else {
        return;
    };
    let pair = Pair::new("o2c-cap").expect("namespaces");
    let cap = Capture::start(
        &pair.a,
        &pair.link_a.ifname,
        "udp port 500 or udp port 4500",
    )
    .expect("capture");
    let (_run, info, charon) =
        ours_to_charon(&pair, Creds::Psk, &[GCM_X25519], &[GCM_X25519], |_, _| {});
    let keys = charon.keys_for(&info).expect("charon's keys");
    let entry = capture::ikev2_decryption_entry(&info, &keys).expect("Wireshark knows AES-GCM");
    let opts = capture::ikev2_decryption_options(&[entry]);
    let pcap = cap
        .stop_after_count("isakmp", 4, Duration::from_secs(5), &opts)
        .expect("4 IKE messages captured");
    let msgs = capture::ike_messages(&pcap, &opts).expect("tshark");
    let _ = std::fs::remove_dir_all(pcap.parent().expect("capture dir"));
    let shape: Vec<(u8, bool)> = msgs.iter().map(|m| (m.exchange, m.response)).collect();
    assert_eq!(
        shape,
        [(34, false), (34, true), (35, false), (35, true)],
        "IKE_SA_INIT then IKE_AUTH"
    );
    assert_eq!(msgs[0].src, pair.link_a.v4.to_string(), "we initiated");
    for want in [33u16, 34, 40] {
        assert!(
            msgs[0].payloads.contains(&want),
            "SA, KE, Ni: {:?}",
            msgs[0].payloads
        );
    }
    // Inside SK, decrypted with charon's keys: IDi, IDr, AUTH; no SA or TS (childless).
    let auth_req = &msgs[2];
    for want in [35u16, 36, 39] {
        assert!(
            auth_req.payloads.contains(&want),
            "IKE_AUTH request: {:?}",
            auth_req.payloads
        );
    }
    for unwanted in [33u16, 44, 45] {
        assert!(
            !auth_req.payloads.contains(&unwanted),
            "childless: {:?}",
            auth_req.payloads
        );
    }
    let auth_resp = &msgs[3];
    for want in [36u16, 39] {
        assert!(
            auth_resp.payloads.contains(&want),
            "IKE_AUTH response: {:?}",
            auth_resp.payloads
        );
    }
}

#[test]
fn ours_to_charon_then_we_delete_the_ike_sa() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("o2c-del").expect("namespaces");
    let (mut run, _info, charon) =
        ours_to_charon(&pair, Creds::Psk, &[GCM_X25519], &[GCM_X25519], |_, _| {});
    // INFORMATIONAL with Delete(IKE) (RFC 7296 1.4.1); charon answers and drops its SA.
    run.sa.delete(Instant::now(), &mut run.rng);
    run.drive(&charon, Duration::from_secs(10), |e| closed(e).is_some());
    assert_eq!(closed(&run.events), Some(&CloseReason::Deleted));
    poll_until("charon to drop the IKE SA", Duration::from_secs(5), || {
        charon.ike_sa(CONN).ok().flatten().is_none().then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", charon.log_tail(30)));
    assert!(
        charon.log().contains("received DELETE for IKE_SA"),
        "{}",
        charon.log_tail(30)
    );
}

#[test]
fn charon_deletes_the_ike_sa_of_our_initiator() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("o2c-cdel").expect("namespaces");
    let (mut run, _info, charon) =
        ours_to_charon(&pair, Creds::Psk, &[GCM_X25519], &[GCM_X25519], |_, _| {});
    let terminated = std::thread::scope(|scope| {
        let terminate = scope.spawn(|| charon.terminate(CONN));
        run.drive(&charon, Duration::from_secs(10), |e| closed(e).is_some());
        terminate.join().expect("terminate thread")
    });
    terminated.unwrap_or_else(|e| panic!("{e}\n{}", charon.log_tail(30)));
    assert_eq!(closed(&run.events), Some(&CloseReason::Deleted));
    // We answered the Delete request (RFC 7296 1.4.1), so charon did not have to give up.
    charon
        .wait_log("IKE_SA deleted", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}\n{}", charon.log_tail(30)));
    assert!(
        charon.log().contains("parsed INFORMATIONAL response"),
        "{}",
        charon.log_tail(30)
    );
}

#[test]
fn ours_to_charon_refuses_a_certificate_we_do_not_trust() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("o2c-untrusted").expect("namespaces");
    // We trust another CA than the one that issued charon's certificate.
    let stranger = Pki::new(KeyType::Ed25519, "a CA we do not know").expect("CA");
    let resolver = CertificateResolver::new([stranger.ca_der()], Arc::new(SystemTime::now))
        .expect("trust anchor");
    let (run, charon) = handshake_with_charon(
        &pair,
        &Creds::Certs(KeyType::Ed25519),
        &[GCM_X25519],
        None,
        |ours, _| ours.peer_auth = Arc::new(resolver),
    );
    assert_eq!(established_peer(&run.events), None);
    // We refused charon (and told it AUTHENTICATION_FAILED, RFC 7296 2.21.2).
    assert_eq!(
        closed(&run.events),
        Some(&CloseReason::ResponderNotVerified)
    );
    // charon did send a certificate; it was ours to refuse.
    assert!(
        charon.log().contains("sending end entity cert"),
        "{}",
        charon.log_tail(30)
    );
}

#[test]
fn ours_to_charon_without_childless_support_stops_after_ike_sa_init() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("o2c-nochildless").expect("namespaces");
    // charon then leaves CHILDLESS_IKEV2_SUPPORTED out of its IKE_SA_INIT response and
    // would answer a childless IKE_AUTH with INVALID_SYNTAX, keeping no IKE SA.
    let (run, charon) = handshake_with_charon(&pair, &Creds::Psk, &[GCM_X25519], None, |_, cfg| {
        cfg.childless = "never".into()
    });
    // RFC 6023 3: no childless IKE_AUTH without the responder's announcement.
    assert_eq!(established_peer(&run.events), None, "{:?}", run.events);
    assert!(
        matches!(closed(&run.events), Some(CloseReason::ProtocolError(_))),
        "{:?}",
        run.events
    );
    assert!(
        run.sent
            .iter()
            .all(|h| h.exchange == ExchangeType::IkeSaInit),
        "only IKE_SA_INIT was sent"
    );
    assert!(
        !charon
            .log()
            .contains("peer tried to initiate a childless IKE_SA"),
        "{}",
        charon.log_tail(30)
    );
}

#[test]
fn charon_to_ours_fragments_both_ways() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("c2o-frag").expect("namespaces");
    let run = charon_to_ours(
        &pair,
        Creds::Certs(KeyType::EcdsaP256),
        GCM_ECP256,
        EndpointConfig::default(),
        |ours, theirs| {
            ours.fragment_size = Some(300);
            theirs.fragment_size = Some(576);
        },
    );
    // Our responder reassembled charon's fragmented IKE_AUTH request (RFC 7383 2.6) and
    // charon reassembled our fragmented response.
    assert!(
        run.charon_log.contains("splitting IKE message"),
        "charon fragmented its request"
    );
    assert!(
        run.charon_log.contains("received fragment #1 of"),
        "charon reassembled our response"
    );
}

#[test]
fn ours_to_charon_over_ipv6() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("o2c-v6").expect("namespaces");
    let (run, info, _charon) = ours_to_charon(
        &pair,
        Creds::Certs(KeyType::Ed25519),
        &[GCM_X25519],
        &[GCM_X25519],
        |_, theirs| theirs.local_addr = pair.link_b.v6.into(),
    );
    assert_eq!(run.sa.local().ip(), std::net::IpAddr::from(pair.link_a.v6));
    assert_eq!(
        info.field("remote-host"),
        Some(pair.link_a.v6.to_string().as_str())
    );
}

// ------------------------------------------------------------------ RFC 8784 PPK

const PPK_ID: &str = "gikev2-ppk-1";
const PPK: &[u8] = b"0123456789abcdef0123456789abcdef interop PPK";

fn charon_ppk(id: &str, secret: &[u8], required: bool) -> CharonPpk {
    CharonPpk {
        id: id.into(),
        secret: secret.to_vec(),
        required,
        in_conn: true,
    }
}

fn our_ppk(id: &str, secret: &[u8], mandatory: bool) -> LocalPpk {
    LocalPpk {
        id: id.as_bytes().to_vec(),
        secret: SecretBytes::from_slice(secret),
        mandatory,
    }
}

fn our_ppks(required: bool) -> Arc<SinglePpk> {
    Arc::new(SinglePpk {
        id: PPK_ID.as_bytes().to_vec(),
        secret: SecretBytes::from_slice(PPK),
        required,
    })
}

/// RFC 8784 3 with our initiator: USE_PPK, PPK_IDENTITY (PPK_ID_FIXED | id) as charon
/// reads it, and SK_d, SK_pi, SK_pr = prf+(PPK, SK_x') on both ends.
#[test]
fn ours_to_charon_psk_with_ppk() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("o2c-ppk").expect("namespaces");
    let (run, _info, charon) = ours_to_charon(
        &pair,
        Creds::Psk,
        &[GCM_X25519],
        &[GCM_X25519],
        |ours, c| {
            ours.ppk = Some(our_ppk(PPK_ID, PPK, true));
            c.ppk = Some(charon_ppk(PPK_ID, PPK, true));
        },
    );
    assert!(run.sa.ppk_used());
    assert!(
        charon.log().contains("using PPK for PPK_ID"),
        "{}",
        charon.log_tail(40)
    );
}

/// Our optional PPK with an id charon does not know: charon takes our NO_PPK_AUTH (AUTH
/// computed with SK_pi', RFC 8784 3) and both continue without the PPK.
#[test]
fn ours_to_charon_unknown_ppk_falls_back_to_no_ppk_auth() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("o2c-noppk").expect("namespaces");
    let (run, _info, charon) = ours_to_charon(
        &pair,
        Creds::Psk,
        &[GCM_X25519],
        &[GCM_X25519],
        |ours, c| {
            ours.ppk = Some(our_ppk("not-known-to-charon", PPK, false));
            // No ppk_id in the connection: charon looks the PPK_ID up among its
            // secrets, finds none, and takes NO_PPK_AUTH (with one, 5.9.8 refuses).
            c.ppk = Some(CharonPpk {
                in_conn: false,
                ..charon_ppk(PPK_ID, PPK, false)
            });
        },
    );
    assert!(!run.sa.ppk_used());
    assert!(
        !charon.log().contains("using PPK for PPK_ID"),
        "{}",
        charon.log_tail(40)
    );
}

/// The same PPK_ID with another secret: charon cannot verify our AUTH (SK_pi differs)
/// and no IKE SA comes up on either end.
#[test]
fn ours_to_charon_mismatched_ppk_is_refused() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("o2c-badppk").expect("namespaces");
    let (run, charon) = handshake_with_charon(
        &pair,
        &Creds::Psk,
        &[GCM_X25519],
        Some(&[GCM_X25519]),
        |ours, cfg| {
            cfg.ppk = Some(charon_ppk(PPK_ID, PPK, true));
            ours.ppk = Some(our_ppk(
                PPK_ID,
                b"another PPK under the same PPK_ID!!",
                true,
            ));
        },
    );
    assert_eq!(
        closed(&run.events),
        Some(&CloseReason::AuthenticationFailed),
        "{:?}\ncharon:\n{}",
        run.events,
        charon.log_tail(40)
    );
    assert!(established_peer(&run.events).is_none());
    assert!(
        charon
            .ike_sa(CONN)
            .expect("list-sas")
            .is_none_or(|i| i.state != "ESTABLISHED")
    );
}

/// charon initiating with a mandatory PPK to our responder (GSA side of RFC 8784 3):
/// our USE_PPK answer, PPK lookup by charon's PPK_IDENTITY, the empty PPK_IDENTITY in
/// our response, and keys equal to charon's mixed with the PPK.
#[test]
fn charon_to_ours_psk_with_ppk() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("c2o-ppk").expect("namespaces");
    let run = charon_to_ours(
        &pair,
        Creds::Psk,
        GCM_X25519,
        EndpointConfig::default(),
        |ours, c| {
            c.childless = "allow".into();
            c.ppk = Some(charon_ppk(PPK_ID, PPK, true));
            ours.ppk_resolver = Some(our_ppks(true));
        },
    );
    assert!(run.ppk_used);
    assert!(
        run.charon_log.contains("using PPK for PPK_ID"),
        "charon marked the SA as using the PPK"
    );
}

/// charon with an optional PPK our responder does not know: we authenticate charon with
/// its NO_PPK_AUTH and answer without PPK_IDENTITY (RFC 8784 3, Table 1).
#[test]
fn charon_to_ours_unknown_ppk_falls_back_to_no_ppk_auth() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("c2o-noppk").expect("namespaces");
    let run = charon_to_ours(
        &pair,
        Creds::Psk,
        GCM_X25519,
        EndpointConfig::default(),
        |ours, c| {
            c.childless = "allow".into();
            c.ppk = Some(charon_ppk("not-known-to-us", PPK, false));
            ours.ppk_resolver = Some(our_ppks(false));
        },
    );
    assert!(!run.ppk_used);
    assert!(!run.charon_log.contains("using PPK for PPK_ID"));
}

// ------------------------------------------------------------------ IKE SA rekey

/// charon's IKE SA of `conn` with these SPIs, once it is ESTABLISHED.
fn charon_sa_with(charon: &CharonPeer<'_>, spis: ([u8; 8], [u8; 8])) -> IkeSaInfo {
    poll_until(
        "charon lists the rekeyed IKE SA",
        Duration::from_secs(5),
        || {
            charon.list_sas().ok()?.into_iter().find(|sa| {
                sa.conn == CONN && sa.state == "ESTABLISHED" && (sa.spi_i, sa.spi_r) == spis
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", charon.log_tail(60)))
}

/// charon's keys of the IKE SA a rekey made are the last of two `Sk_d` blocks: when charon
/// initiated the rekey it logs them under the tag of the IKE SA the rekey ran on (not
/// found by the new SA's unique id), as responder under the new one. They equal ours, and
/// differ from the first block's.
fn assert_rekeyed_keys_match(charon: &CharonPeer<'_>, ours: &IkeKeys) {
    let logged = charon.ike_keys();
    let [first, theirs] = logged.as_slice() else {
        panic!("charon logged {} key blocks, not 2", logged.len());
    };
    let pairs = [
        ("SK_d", &theirs.sk_d, &ours.sk_d),
        ("SK_ai", &theirs.sk_ai, &ours.sk_ai),
        ("SK_ar", &theirs.sk_ar, &ours.sk_ar),
        ("SK_ei", &theirs.sk_ei, &ours.sk_ei),
        ("SK_er", &theirs.sk_er, &ours.sk_er),
        ("SK_pi", &theirs.sk_pi, &ours.sk_pi),
        ("SK_pr", &theirs.sk_pr, &ours.sk_pr),
    ];
    for (name, t, o) in pairs {
        assert_eq!(
            t.as_slice(),
            o.as_bytes(),
            "{name} of the new SA differs from charon's"
        );
    }
    assert_ne!(first.sk_d, theirs.sk_d);
}

/// charon no longer lists an IKE SA with these SPIs (the replaced one was deleted).
fn charon_forgot(charon: &CharonPeer<'_>, spis: ([u8; 8], [u8; 8])) {
    poll_until(
        "charon drops the replaced IKE SA",
        Duration::from_secs(5),
        || {
            let sas = charon.list_sas().ok()?;
            (!sas.iter().any(|sa| (sa.spi_i, sa.spi_r) == spis)).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", charon.log_tail(60)));
}

/// Our initiator rekeys its IKE SA with a charon responder (RFC 7296 1.3.2, 2.18): charon
/// lists the new SPIs, its logged keys of the new SA equal ours, the old SA is gone on
/// both sides, and the new SA carries an exchange from Message ID 0 (our Delete).
#[test]
fn ours_to_charon_rekeys_the_ike_sa() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("o2c-rekey").expect("namespaces");
    let (mut run, _info, charon) =
        ours_to_charon(&pair, Creds::Psk, &[GCM_X25519], &[GCM_X25519], |_, _| {});
    let old = run.sa.spis();
    let old_keys = run.sa.keys().expect("keys").clone();
    run.sa.rekey(Instant::now(), &mut run.rng);
    run.drive_sa(&charon, Duration::from_secs(10), |sa| {
        sa.rekeys() == 1 && sa.local_spis().len() == 1
    });
    let new = run.sa.spis();
    assert_ne!(new.0, old.0);
    assert_ne!(new.1, old.1);
    let info = charon_sa_with(&charon, new);
    // `initiator` is charon's own role: we initiated the rekey, so we are the new SA's
    // original initiator (RFC 7296 2.18) and charon its responder.
    assert!(!info.initiator);
    charon_forgot(&charon, old);
    let keys = run.sa.keys().expect("keys").clone();
    assert_ne!(keys.sk_d, old_keys.sk_d);
    assert_rekeyed_keys_match(&charon, &keys);
    let ccsa = run
        .sent
        .iter()
        .find(|h| h.exchange == ExchangeType::CreateChildSa)
        .expect("we sent CREATE_CHILD_SA");
    assert_eq!((ccsa.spi_i, ccsa.spi_r), old);
    // The new SA works: our Delete on it, Message ID 0, answered by charon.
    run.sa.delete(Instant::now(), &mut run.rng);
    run.drive_sa(&charon, Duration::from_secs(10), IkeSa::is_closed);
    assert_eq!(closed(&run.events), Some(&CloseReason::Deleted));
    let last = run.sent.last().expect("our Delete");
    assert_eq!(
        (last.exchange, last.message_id, (last.spi_i, last.spi_r)),
        (ExchangeType::Informational, 0, new)
    );
}

/// charon rekeys its IKE SA with our responder (`swanctl --rekey --ike`): our SA keeps
/// its endpoint handle, takes charon's new SPIs, derives the keys charon logged, and the
/// old SA is deleted by charon (the rekey's initiator).
#[test]
fn charon_rekeys_the_ike_sa_with_ours() {
    let Some(_) = charon_or_skip() else { return };
    let pair = Pair::new("c2o-rekey").expect("namespaces");
    let s = setup(&Creds::Psk, GCKS, GM);
    let local = SocketAddr::new(pair.link_a.v4.into(), 500);
    let mut cfg = CharonConfig::initiator(
        pair.link_b.v4.into(),
        local,
        Identity::Fqdn(GM.into()),
        Some(Identity::Fqdn(GCKS.into())),
        s.charon_auth,
    )
    .with_proposals(&[GCM_X25519]);
    cfg.childless = "allow".into();
    let ours = our_config(&[GCM_X25519], GCKS, s.local_auth, s.peer_auth);
    let charon = CharonPeer::start(&pair.b, cfg).expect("charon initiator");
    let sock = pair
        .a
        .udp_socket(local)
        .expect("our UDP 500 in namespace A");
    let mut rng = SystemRandom::new();
    let mut ep = Endpoint::new(
        ours,
        EndpointConfig::default(),
        local,
        Instant::now(),
        &mut rng,
    );
    let mut events = Vec::new();
    let mut established = None;
    let mut old = None;
    let outcome = std::thread::scope(|scope| {
        let initiation = scope.spawn(|| charon.initiate());
        let mut rekey = None;
        let served = driver::run_udp(&sock, Duration::from_secs(30), |ev, now| {
            let out = serve_step(&mut ep, ev, now, &mut rng, &mut events, &mut established);
            let sa = established.and_then(|h| ep.sa(h));
            if rekey.is_none() && initiation.is_finished() && sa.is_some() {
                old = sa.map(IkeSa::spis);
                rekey = Some(scope.spawn(|| charon.swanctl(&["--rekey", "--ike", CONN])));
            }
            let done = rekey.as_ref().is_some_and(|r| r.is_finished())
                && sa.is_some_and(|sa| sa.rekeys() == 1 && sa.local_spis().len() == 1);
            (out, done)
        });
        let initiated = initiation.join().expect("initiate thread");
        let rekeyed = rekey.map(|r| r.join().expect("rekey thread"));
        (served, initiated, rekeyed)
    });
    let (served, initiated, rekeyed) = outcome;
    if let Err(e) = served.and(initiated).and(rekeyed.expect("rekey started")) {
        panic!("{e}\nours: {events:?}\ncharon:\n{}", charon.log_tail(60));
    }
    let h = established.expect("established");
    let sa = ep.sa(h).expect("the same handle after the rekey");
    let (old, new) = (old.expect("spis before"), sa.spis());
    assert_ne!(new.0, old.0);
    assert_ne!(new.1, old.1);
    assert_eq!(ep.len(), 1);
    let info = charon_sa_with(&charon, new);
    assert!(
        info.initiator,
        "charon initiated the rekey: original initiator (2.18)"
    );
    charon_forgot(&charon, old);
    assert_rekeyed_keys_match(&charon, sa.keys().expect("keys"));
    assert!(
        !events.iter().any(|e| matches!(e, Event::Closed(_))),
        "{events:?}"
    );
}
