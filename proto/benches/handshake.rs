//! A whole registration, IKE_SA_INIT (+ IKE_INTERMEDIATE for the hybrid case) then
//! GSA_AUTH (RFC 9838 2.3.1), driven in memory like `tests/ike_pair.rs`, and what the GCKS
//! (the responder) spends on it compared with the public-key operations it cannot avoid.
//!
//! Cases: (a) PSK + X25519, (b) Ed25519 + X25519, (c) ECDSA P-256 + X25519,
//! (d) ML-DSA-65 + X25519 + ML-KEM-768 (IKE_INTERMEDIATE, RFC 9370).
//!
//! Per case:
//! - `pair`: both sides, from `IkeSa::initiate` to the member's `Registered` event,
//!   including the host building the decision (GSA + KD wrapped with the SA's KWK);
//! - `responder`: only the GCKS calls (`IkeSa::respond`, `handle` for every request
//!   datagram, `poll_transmit`/`poll_event`, `decide`), timed inside `iter_custom`
//!   while the member is driven outside the timed sections. Cloning the configuration for
//!   `respond` and building the decision (host work: key wrap) are not counted;
//! - `bare_pk`: the responder's public-key operations alone, on inputs of the same sizes:
//!   X25519 key generation + agreement, ML-KEM-768 encapsulation (d), one signature over
//!   `IKE_SA_INIT response | Ni | MACedID [| IntAuth]` and one verification over the
//!   initiator's octets (b, c, d).
//!
//! Responder protocol overhead = (responder - bare_pk) / bare_pk; see docs/performance.md.
//!
//! Run: `cargo bench -p gikev2-proto --bench handshake`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group};
use gikev2_proto::crypto::ke::KeMethod;
use gikev2_proto::crypto::sign::{PublicKey, SignatureScheme, SigningKey};
use gikev2_proto::crypto::{IkeSuite, SecretBytes, SeededRandom};
use gikev2_proto::ike::{
    Decision, Event, Goal, IkeConfig, IkeSa, LocalAuth, PeerAuth, RegistrationRequest, SinglePeer,
};
use gikev2_proto::registry::{EncrId, ExchangeType, KeId, KwaId, PrfId, SnId, TransformType};
use gikev2_proto::wire::gsa::{GsaPayload, GsaPolicy, GwPolicy};
use gikev2_proto::wire::header::Header;
use gikev2_proto::wire::id::IdPayload;
use gikev2_proto::wire::kd::{GroupKeyBag, KdPayload, MemberKeyBag, WrappedKey};
use gikev2_proto::wire::{TrafficSelector, Transform};

const TEKS: u32 = 4;

fn member_addr() -> SocketAddr {
    "10.0.0.2:500".parse().unwrap()
}

fn gcks_addr() -> SocketAddr {
    "10.0.0.1:500".parse().unwrap()
}

fn suite(addke: Option<KeId>) -> IkeSuite {
    let mut t = vec![
        Transform::encr(EncrId::AesGcm16, Some(256)),
        Transform::prf(PrfId::HmacSha2_256),
        Transform::ke(KeId::Curve25519),
    ];
    if let Some(a) = addke {
        t.push(Transform::new(TransformType::AddKe1, a.value()));
    }
    t.push(Transform::kwa(KwaId::Kw5649_256));
    IkeSuite::from_transforms(&t).unwrap()
}

/// How a case authenticates.
#[derive(Clone, Copy)]
enum Auth {
    Psk,
    Sig(SignatureScheme),
}

struct Case {
    name: &'static str,
    member: IkeConfig,
    gcks: IkeConfig,
    /// The keys, for the bare public-key bench: the GCKS signs with `gcks_key` and
    /// verifies with `member_pub`.
    keys: Option<(SignatureScheme, Arc<SigningKey>, PublicKey, Arc<SigningKey>)>,
    hybrid: bool,
}

fn case(name: &'static str, auth: Auth, hybrid: bool) -> Case {
    let suites = vec![suite(hybrid.then_some(KeId::MlKem768))];
    let member_id = IdPayload::fqdn("member1.example").unwrap();
    let gcks_id = IdPayload::fqdn("gcks.example").unwrap();
    let (m_local, m_peer, g_local, g_peer, keys) = match auth {
        Auth::Psk => {
            let psk = || SecretBytes::from_slice(b"a shared key of some length");
            (
                LocalAuth::Psk(psk()),
                PeerAuth::Psk(psk()),
                LocalAuth::Psk(psk()),
                PeerAuth::Psk(psk()),
                None,
            )
        }
        Auth::Sig(scheme) => {
            let mk = Arc::new(SigningKey::generate(scheme).unwrap().0);
            let gk = Arc::new(SigningKey::generate(scheme).unwrap().0);
            let peer = |k: &SigningKey| PeerAuth::PublicKey {
                key: k.public_key(),
                schemes: vec![scheme],
            };
            (
                LocalAuth::Signature {
                    key: mk.clone(),
                    certs: vec![],
                },
                peer(&gk),
                LocalAuth::Signature {
                    key: gk.clone(),
                    certs: vec![],
                },
                peer(&mk),
                Some((scheme, gk, mk.public_key(), mk)),
            )
        }
    };
    let member = IkeConfig::new(
        suites.clone(),
        member_id.clone(),
        m_local,
        Arc::new(SinglePeer {
            id: Some(gcks_id.clone()),
            auth: m_peer,
        }),
    );
    let gcks = IkeConfig::new(
        suites,
        gcks_id,
        g_local,
        Arc::new(SinglePeer {
            id: Some(member_id),
            auth: g_peer,
        }),
    );
    Case {
        name,
        member,
        gcks,
        keys,
        hybrid,
    }
}

fn request() -> RegistrationRequest {
    RegistrationRequest {
        group: IdPayload::key_id(b"group-1".to_vec()),
        sag: None,
        sender_ids: Some(1),
    }
}

/// The group policy of wire.rs: a KEK, 4 TEKs and a GW policy.
fn gsa() -> GsaPayload {
    let kek = GsaPolicy::kek(
        0x0102_0304_0506_0708,
        0x1112_1314_1516_1718,
        TrafficSelector::single("192.0.2.1".parse().unwrap(), 17, Some(848)),
        TrafficSelector::single("239.0.0.1".parse().unwrap(), 17, Some(848)),
    )
    .with_transform(Transform::encr(EncrId::AesGcm16, Some(256)))
    .with_transform(Transform::kwa(KwaId::Kw5649_256))
    .with_transform(Transform::gcauth(
        gikev2_proto::registry::GcAuthId::DigitalSignature,
        Some(SignatureScheme::Ed25519.algorithm_identifier()),
    ))
    .with_key_lifetime(3600);
    let mut gsa = GsaPayload::new().with_gsa(kek);
    for i in 0..TEKS {
        gsa = gsa.with_gsa(
            GsaPolicy::esp(
                0x1000 + i,
                TrafficSelector::any(false),
                TrafficSelector::single("239.1.1.1".parse().unwrap(), 17, Some(5000 + i as u16)),
            )
            .with_transform(Transform::encr(EncrId::AesGcm16, Some(256)))
            .with_transform(Transform::sn(SnId::Unspecified32))
            .with_key_lifetime(1800),
        );
    }
    gsa.with_gw(
        GwPolicy::new()
            .with_atd(5)
            .with_dtd(10)
            .with_sender_id_bits(16),
    )
}

/// What the GCKS host does on `RegistrationRequested`: wraps the group keys with this
/// IKE SA's KWK (RFC 9838 4.5.4).
fn decision(sa: &IkeSa, gsa: &GsaPayload) -> Decision {
    let kwk = sa.key_wrap_key().unwrap();
    let mut kd = KdPayload::new().with(
        GroupKeyBag::kek(0x0102_0304_0506_0708, 0x1112_1314_1516_1718)
            .with_sa_key(WrappedKey::new(0, 0, kwk.wrap(&[0xa5; 68]).unwrap())),
    );
    for i in 0..TEKS {
        kd = kd.with(GroupKeyBag::esp(0x1000 + i).with_sa_key(WrappedKey::new(
            0,
            0,
            kwk.wrap(&[i as u8; 36]).unwrap(),
        )));
    }
    Decision::Accept {
        gsa: gsa.clone(),
        kd: kd.with(MemberKeyBag::new().with_sender_id(1)),
        transport_mode: true,
    }
}

/// Sizes seen in one run, for the bare public-key inputs.
#[derive(Debug, Default, Clone, Copy)]
struct Sizes {
    init_request: usize,
    init_response: usize,
    datagrams_to_gcks: usize,
    datagrams_to_member: usize,
}

/// Time spent in GCKS calls during one registration, by phase.
#[derive(Debug, Default, Clone, Copy)]
struct Phases {
    /// `IkeSa::respond` (IKE_SA_INIT).
    respond: Duration,
    /// `handle` of IKE_INTERMEDIATE requests.
    intermediate: Duration,
    /// `handle` of the GSA_AUTH request (every fragment).
    auth: Duration,
    /// `decide` (builds and protects the GSA_AUTH response).
    decide: Duration,
    /// `poll_transmit` and `poll_event`.
    poll: Duration,
}

impl Phases {
    fn total(&self) -> Duration {
        self.respond + self.intermediate + self.auth + self.decide + self.poll
    }
}

/// One registration; returns the time spent in GCKS calls only.
fn register(case: &Case, gsa: &GsaPayload, rng: &mut SeededRandom) -> (Phases, Sizes) {
    let now = Instant::now();
    let mut sizes = Sizes::default();
    let mut timed = Phases::default();
    let mut member = IkeSa::initiate(
        case.member.clone(),
        Goal::GsaAuth(request()),
        member_addr(),
        gcks_addr(),
        now,
        rng,
    )
    .unwrap();
    let first = member.poll_transmit().unwrap();
    sizes.init_request = first.len();
    sizes.datagrams_to_gcks = 1;
    let cfg = case.gcks.clone();
    let t = Instant::now();
    let gcks = IkeSa::respond(cfg, &first, gcks_addr(), member_addr(), now, rng);
    timed.respond += t.elapsed();
    let Ok(mut gcks) = gcks else {
        panic!("IKE_SA_INIT refused")
    };
    let mut registered = false;
    for _ in 0..50 {
        // GCKS -> member.
        loop {
            let t = Instant::now();
            let d = gcks.poll_transmit();
            timed.poll += t.elapsed();
            let Some(d) = d else { break };
            if sizes.init_response == 0 {
                sizes.init_response = d.len();
            }
            sizes.datagrams_to_member += 1;
            member.handle(&d, now, rng);
        }
        // GCKS events and decisions.
        loop {
            let t = Instant::now();
            let e = gcks.poll_event();
            timed.poll += t.elapsed();
            let Some(e) = e else { break };
            if let Event::RegistrationRequested { .. } = e {
                let d = decision(&gcks, gsa);
                let t = Instant::now();
                gcks.decide(d, now, rng);
                timed.decide += t.elapsed();
            }
        }
        // Member -> GCKS.
        while let Some(d) = member.poll_transmit() {
            sizes.datagrams_to_gcks += 1;
            let intermediate =
                Header::read_datagram(&d).unwrap().exchange == ExchangeType::IkeIntermediate;
            let t = Instant::now();
            gcks.handle(&d, now, rng);
            let dt = t.elapsed();
            if intermediate {
                timed.intermediate += dt;
            } else {
                timed.auth += dt;
            }
        }
        while let Some(e) = member.poll_event() {
            match e {
                Event::Registered { .. } => registered = true,
                Event::Closed(r) => panic!("member closed: {r:?}"),
                _ => {}
            }
        }
        if registered {
            return (timed, sizes);
        }
    }
    panic!("registration did not complete");
}

/// Inputs for the responder's bare public-key operations.
struct BarePk {
    x25519_peer: Vec<u8>,
    mlkem_peer: Option<Vec<u8>>,
    /// What the GCKS signs and the member's signature it verifies.
    sign: Option<(Arc<SigningKey>, Vec<u8>)>,
    verify: Option<(SignatureScheme, PublicKey, Vec<u8>, Vec<u8>)>,
}

impl BarePk {
    fn new(case: &Case, sizes: Sizes, rng: &mut SeededRandom) -> Self {
        let x25519_peer = KeMethod::Curve25519.start(rng).unwrap().pub_key().to_vec();
        let mlkem_peer = case
            .hybrid
            .then(|| KeMethod::MlKem768.start(rng).unwrap().pub_key().to_vec());
        // RFC 7296 2.15: RealMessage | peer Nonce (32) | MACedID (PRF-HMAC-SHA2-256: 32),
        // plus IntAuth (32) after IKE_INTERMEDIATE (RFC 9242 3.3.2).
        let extra = 32 + 32 + if case.hybrid { 32 } else { 0 };
        let (sign, verify) = match &case.keys {
            None => (None, None),
            Some((scheme, gcks_key, member_pub, member_key)) => {
                let ours = vec![0x5a; sizes.init_response + extra];
                let theirs = vec![0xa5; sizes.init_request + extra];
                let sig = member_key.sign(&theirs).unwrap();
                (
                    Some((gcks_key.clone(), ours)),
                    Some((*scheme, member_pub.clone(), theirs, sig)),
                )
            }
        };
        Self {
            x25519_peer,
            mlkem_peer,
            sign,
            verify,
        }
    }

    fn run(&self, rng: &mut SeededRandom) {
        black_box(
            KeMethod::Curve25519
                .start_and_complete(rng, &self.x25519_peer)
                .unwrap(),
        );
        if let Some(ek) = &self.mlkem_peer {
            black_box(KeMethod::MlKem768.start_and_complete(rng, ek).unwrap());
        }
        if let Some((scheme, key, msg, sig)) = &self.verify {
            key.verify(*scheme, msg, sig).unwrap();
        }
        if let Some((key, msg)) = &self.sign {
            black_box(key.sign(msg).unwrap());
        }
    }
}

fn cases() -> [Case; 4] {
    [
        case("a_psk_x25519", Auth::Psk, false),
        case(
            "b_ed25519_x25519",
            Auth::Sig(SignatureScheme::Ed25519),
            false,
        ),
        case(
            "c_ecdsa_p256_x25519",
            Auth::Sig(SignatureScheme::EcdsaP256Sha256),
            false,
        ),
        case(
            "d_mldsa65_x25519_mlkem768",
            Auth::Sig(SignatureScheme::MlDsa65),
            true,
        ),
    ]
}

fn bench_handshake(c: &mut Criterion) {
    let cases = cases();
    let gsa = gsa();
    let mut g = c.benchmark_group("handshake");
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(30);
    for case in &cases {
        let mut rng = SeededRandom::from_u64(7);
        let (_, sizes) = register(case, &gsa, &mut rng);
        eprintln!("handshake {}: {sizes:?}", case.name);

        g.bench_function(BenchmarkId::new("pair", case.name), |b| {
            b.iter(|| register(case, &gsa, &mut rng))
        });
        g.bench_function(BenchmarkId::new("responder", case.name), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| register(case, &gsa, &mut rng).0.total())
                    .sum::<Duration>()
            })
        });
        let bare = BarePk::new(case, sizes, &mut rng);
        g.bench_function(BenchmarkId::new("bare_pk", case.name), |b| {
            b.iter(|| bare.run(&mut rng))
        });
    }
    g.finish();
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// How many times the scheduler has put this thread on a CPU (third field of
/// `/proc/thread-self/schedstat`); `None` where that file does not exist.
fn times_scheduled() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().nth(2)?.parse().ok()
}

/// Median, minimum, and mean over the runs the scheduler did not interrupt.
struct Stats {
    median: f64,
    min: f64,
    clean_mean: f64,
    clean: usize,
}

impl Stats {
    fn of(mut v: Vec<(Duration, bool)>) -> Self {
        let clean: Vec<f64> = v.iter().filter(|x| x.1).map(|x| micros(x.0)).collect();
        v.sort();
        Self {
            median: micros(v[v.len() / 2].0),
            min: micros(v[0].0),
            clean_mean: clean.iter().sum::<f64>() / clean.len().max(1) as f64,
            clean: clean.len(),
        }
    }
}

/// The overhead figure on a shared machine: responder runs and bare public-key runs
/// alternate, so that both see the same background load. Reports medians, minima, and
/// means over the runs during which this thread was not descheduled (from schedstat,
/// read outside the timed sections), so that a mean is not another process's time slice.
fn paired_report() {
    const RUNS: usize = 400;
    let gsa = gsa();
    eprintln!(
        "\npaired ({RUNS} alternating runs; µs): case | responder median (respond / \
         intermediate / auth / decide / poll) | bare_pk median | overhead | responder min | \
         bare_pk min | overhead | responder clean mean (runs) | bare_pk clean mean (runs) | overhead"
    );
    for case in &cases() {
        let mut rng = SeededRandom::from_u64(11);
        let (_, sizes) = register(case, &gsa, &mut rng);
        let bare = BarePk::new(case, sizes, &mut rng);
        let mut resp = Vec::with_capacity(RUNS);
        let mut pk = Vec::with_capacity(RUNS);
        let mut phases: [Vec<Duration>; 5] = Default::default();
        for _ in 0..RUNS {
            let s0 = times_scheduled();
            let (p, _) = register(case, &gsa, &mut rng);
            let s1 = times_scheduled();
            resp.push((p.total(), s0.is_some() && s0 == s1));
            for (v, d) in
                phases
                    .iter_mut()
                    .zip([p.respond, p.intermediate, p.auth, p.decide, p.poll])
            {
                v.push(d);
            }
            let t = Instant::now();
            bare.run(&mut rng);
            let d = t.elapsed();
            let s2 = times_scheduled();
            pk.push((d, s1.is_some() && s1 == s2));
        }
        let (r, b) = (Stats::of(resp), Stats::of(pk));
        let ph: Vec<String> = phases
            .iter_mut()
            .map(|v| format!("{:.1}", micros(median(v))))
            .collect();
        let over = |r: f64, b: f64| 100.0 * (r - b) / b;
        eprintln!(
            "paired {} | {:.1} ({}) | {:.1} | {:+.1}% | {:.1} | {:.1} | {:+.1}% | {:.1} ({}) | \
             {:.1} ({}) | {:+.1}%",
            case.name,
            r.median,
            ph.join(" / "),
            b.median,
            over(r.median, b.median),
            r.min,
            b.min,
            over(r.min, b.min),
            r.clean_mean,
            r.clean,
            b.clean_mean,
            b.clean,
            over(r.clean_mean, b.clean_mean),
        );
    }
}

criterion_group!(benches, bench_handshake);

fn main() {
    benches();
    // `cargo bench` passes --bench; `cargo test --benches` does not (quick smoke run).
    // Not when listing or profiling one bench (`--profile-time`).
    let args: Vec<String> = std::env::args().collect();
    let has = |f: &str| args.iter().any(|a| a == f);
    if has("--bench") && !has("--list") && !has("--test") && !has("--profile-time") {
        paired_report();
    }
    Criterion::default().configure_from_args().final_summary();
}
