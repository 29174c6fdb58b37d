//! `gcks-load`: registration load against one GCKS on loopback (issue 3).
//!
//! For each store (SQLite, PostgreSQL) and each member credential (PSK, ECDSA P-256 raw
//! public keys, ECDSA P-256 certificates issued by one CA) it provisions a throw-away store (a group with a TEK, N members with their
//! credentials, each authorized as receiver), starts the GCKS runtime in-process on its own
//! threads (the same parts `gcks serve` uses: `Store`, `StoreLoader` + `CredentialCache`,
//! `StoreRegistrar`, `Server`), and registers the N members with `gikev2_member::join`, C at
//! a time, from a separate one-thread runtime. It reports registrations per second,
//! p50/p99 latency, and the GCKS's CPU time per registration, read from the per-thread
//! CPU clocks of Linux (`/proc/self/task/<tid>/schedstat`): every thread of the process
//! except the main thread and the client runtime's `load-gm` threads counts as GCKS
//! (runtime workers, `gcks-credentials`, sqlx SQLite workers). The same run measures the
//! responder's bare public-key cost of one registration with `gikev2_proto::crypto`
//! (X25519 key generation + agreement; ECDSA: plus one signature and one verification;
//! certificates: plus one more verification, the CA's signature on the member's
//! certificate) and prints the ratio.
//!
//! Bounded: N registrations, each with a 10 s deadline; loopback only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use gikev2_gcks::commit_queue::StatsHandle;
use gikev2_gcks::credentials::{CacheConfig, CredentialCache, StoreLoader};
use gikev2_gcks::group_view::GroupViews;
use gikev2_gcks::registrar::unix_now;
use gikev2_gcks::sample_group;
use gikev2_gcks::{Registrar, RegistrationContext, ServeConfig, Server, StoreRegistrar};
use gikev2_member::join::{Joined, join};
use gikev2_policy::{GroupWidePolicy, Identity, MasterKey, NewCredential, Role, Store};
use gikev2_proto::crypto::{
    IkeSuite, KeMethod, PublicKey, SecretBytes, SignatureScheme, SigningKey, SystemRandom,
};
use gikev2_proto::group::{BuildContext, MemberGrant, build_registration};
use gikev2_proto::ike::{Decision, Event};
use gikev2_proto::ike::{
    EndpointConfig, IkeConfig, LocalAuth, PeerAuth, PeerAuthResolver, RegistrationRequest,
    SinglePeer,
};
use gikev2_proto::registry::NotifyType;
use gikev2_proto::registry::{EncrId, KeId, KwaId, PrfId};
use gikev2_proto::wire::{IdPayload, Transform};

const GROUP: &str = "load-group";
const CLIENT_THREAD: &str = "load-gm";

/// Registration load against one in-process GCKS on 127.0.0.1.
#[derive(Debug, Parser)]
#[command(name = "gcks-load")]
struct Args {
    /// Registrations per case (one distinct member each).
    #[arg(long, default_value_t = 200)]
    registrations: usize,
    /// Registrations in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Member credentials to test: psk, ecdsa (raw P-256 keys), cert (P-256 X.509
    /// certificates from one CA, the member's trust anchor) (comma-separated).
    #[arg(long, default_value = "psk,ecdsa,cert")]
    auth: String,
    /// Stores to test: sqlite, postgres (comma-separated); `memory` is the floor: the
    /// group is read from SQLite once, then every registration is decided in memory
    /// (no authorization, capacity, Sender-ID or audit writes).
    #[arg(long, default_value = "sqlite,postgres")]
    store: String,
    /// PostgreSQL server (trust auth); a uniquely named database is created and dropped.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pg: String,
    /// GCKS runtime worker threads; 0 (the default, as `gcks serve --threads 1` runs) is a
    /// current-thread runtime.
    #[arg(long, default_value_t = 0)]
    gcks_threads: usize,
    /// Rounds per case (a fresh store each); the table shows the round with the median
    /// ratio.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Pin the GCKS (and the bare measurements) to CPU 0 and the members to CPU 1, so
    /// they do not disturb each other's caches and the GCKS's CPU clock.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pin: bool,
    /// Iterations of the bare public-key measurement.
    #[arg(long, default_value_t = 300)]
    pk_iterations: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Auth {
    Psk,
    Ecdsa,
    Cert,
}

impl Auth {
    fn name(self) -> &'static str {
        match self {
            Self::Psk => "PSK",
            Self::Ecdsa => "ECDSA P-256 (raw key)",
            Self::Cert => "ECDSA P-256 (certificate)",
        }
    }
}

/// The floor of the measurement: the same server and group view as `StoreRegistrar`,
/// every registration accepted from memory without touching the store.
struct InMemory(GroupViews);

impl Registrar for InMemory {
    async fn decide(&self, ctx: RegistrationContext) -> Decision {
        let now = unix_now();
        let idg = Identity::new(ctx.request.group.ty, ctx.request.group.data.clone());
        let Ok(Some(view)) = self.0.get(&idg, now).await else {
            return Decision::Refuse(NotifyType::InvalidGroupId);
        };
        let grant = MemberGrant {
            sender: false,
            sender_ids: Vec::new(),
            wrap_keys: Vec::new(),
            inband: view.inband,
        };
        match build_registration(&view.state, &grant, &ctx.kwk, &BuildContext { now }) {
            Ok((gsa, kd)) => Decision::Accept {
                gsa,
                kd,
                transport_mode: view.transport_mode,
            },
            Err(_) => Decision::Refuse(NotifyType::RegistrationFailed),
        }
    }
}

/// Credentials of one case: the GCKS's own and each member's.
struct Creds {
    gcks_key: Option<Arc<SigningKey>>,
    members: Vec<(String, MemberCred)>,
    /// The CA (DER) that issued the members' certificates.
    ca: Option<Vec<u8>>,
}

enum MemberCred {
    Psk(SecretBytes),
    Key(Arc<SigningKey>),
    /// A key and its certificate (DER).
    Cert(Arc<SigningKey>, Vec<u8>),
}

/// A P-256 CA for the certificate case (rcgen).
struct LoadCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    der: Vec<u8>,
}

impl LoadCa {
    fn new() -> Result<Self, String> {
        let e = |e: rcgen::Error| format!("rcgen: {e}");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(e)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gcks-load CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let der = params.self_signed(&key).map_err(e)?.der().to_vec();
        Ok(Self {
            issuer: rcgen::Issuer::new(params, key),
            der,
        })
    }

    /// A P-256 key and a certificate naming `fqdn` (subjectAltName dNSName).
    fn issue(&self, fqdn: &str) -> Result<(SigningKey, Vec<u8>), String> {
        let e = |e: rcgen::Error| format!("rcgen: {e}");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(e)?;
        let mut params = rcgen::CertificateParams::new(vec![fqdn.to_string()]).map_err(e)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, fqdn);
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.issuer).map_err(e)?;
        let signing =
            SigningKey::from_pkcs8(SignatureScheme::EcdsaP256Sha256, &key.serialize_der())
                .map_err(|e| e.to_string())?;
        Ok((signing, cert.der().to_vec()))
    }
}

fn suite() -> IkeSuite {
    IkeSuite::from_transforms(&[
        Transform::encr(EncrId::AesGcm16, Some(256)),
        Transform::prf(PrfId::HmacSha2_256),
        Transform::ke(KeId::Curve25519),
        Transform::kwa(KwaId::Kw5649_256),
    ])
    .expect("built-in suite is valid")
}

fn make_creds(auth: Auth, n: usize) -> Result<Creds, String> {
    let e = |e: gikev2_proto::crypto::CryptoError| e.to_string();
    let gcks_key = match auth {
        Auth::Psk => None,
        Auth::Ecdsa | Auth::Cert => Some(Arc::new(
            SigningKey::generate(SignatureScheme::EcdsaP256Sha256)
                .map_err(e)?
                .0,
        )),
    };
    let ca = (auth == Auth::Cert).then(LoadCa::new).transpose()?;
    let mut members = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("m{i}.load");
        let cred = match auth {
            Auth::Psk => MemberCred::Psk(SecretBytes::from_slice(
                format!("load member {i} pre-shared key").as_bytes(),
            )),
            Auth::Ecdsa => MemberCred::Key(Arc::new(
                SigningKey::generate(SignatureScheme::EcdsaP256Sha256)
                    .map_err(e)?
                    .0,
            )),
            Auth::Cert => {
                let ca = ca.as_ref().ok_or("no CA")?;
                let (key, cert) = ca.issue(&name)?;
                MemberCred::Cert(Arc::new(key), cert)
            }
        };
        members.push((name, cred));
    }
    Ok(Creds {
        gcks_key,
        members,
        ca: ca.map(|c| c.der),
    })
}

async fn open_store(url: &str, key_path: &Path) -> Result<Store, String> {
    let mut rng = SystemRandom::new();
    let key = MasterKey::load_or_create(key_path, &mut rng).map_err(|e| e.to_string())?;
    Store::open(url, key).await.map_err(|e| e.to_string())
}

/// The group (signed multicast rekey, one AES-GCM-256 TEK) and every member, authorized.
async fn provision(store: &Store, creds: &Creds) -> Result<(), String> {
    let now = unix_now();
    let e = |e: gikev2_policy::StoreError| e.to_string();
    let group = sample_group::create(
        store,
        GROUP,
        "load-rekey",
        u32::try_from(creds.members.len() + 10).unwrap_or(u32::MAX),
        GroupWidePolicy::default(),
        now,
    )
    .await?;
    let anchor = match &creds.ca {
        Some(der) => Some(store.add_trust_anchor("load-ca", der).await.map_err(e)?),
        None => None,
    };
    for (name, cred) in &creds.members {
        let c = match cred {
            MemberCred::Psk(p) => NewCredential::Psk(p.clone()),
            MemberCred::Key(k) => NewCredential::RawPublicKey {
                spki: k.public_key().to_spki().map_err(|e| e.to_string())?,
            },
            MemberCred::Cert(..) => NewCredential::X509 {
                trust_anchors: anchor.into_iter().collect(),
            },
        };
        let m = store
            .add_member(&Identity::fqdn(name), None, &c, now)
            .await
            .map_err(e)?;
        store
            .authorize(m, group, Role::Receiver, now)
            .await
            .map_err(e)?;
    }
    Ok(())
}

fn member_config(name: &str, cred: &MemberCred, gcks_key: Option<&SigningKey>) -> IkeConfig {
    let id = IdPayload::fqdn(name).expect("generated names are valid FQDNs");
    let (local, peer) = match (cred, gcks_key) {
        (MemberCred::Psk(p), _) => (LocalAuth::Psk(p.clone()), PeerAuth::Psk(p.clone())),
        (MemberCred::Key(k), Some(g)) => (
            LocalAuth::Signature {
                key: k.clone(),
                certs: Vec::new(),
            },
            PeerAuth::PublicKey {
                key: g.public_key(),
                schemes: vec![SignatureScheme::EcdsaP256Sha256],
            },
        ),
        (MemberCred::Cert(k, cert), Some(g)) => (
            LocalAuth::Signature {
                key: k.clone(),
                certs: vec![cert.clone()],
            },
            PeerAuth::PublicKey {
                key: g.public_key(),
                schemes: vec![SignatureScheme::EcdsaP256Sha256],
            },
        ),
        (MemberCred::Key(_) | MemberCred::Cert(..), None) => {
            unreachable!("ECDSA cases have a GCKS key")
        }
    };
    IkeConfig::new(
        vec![suite()],
        id,
        local,
        Arc::new(SinglePeer {
            id: None,
            auth: peer,
        }),
    )
}

/// CPU time (ns) of every thread of this process, by thread id, with its name.
fn thread_cpu() -> HashMap<u32, (String, u64)> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let ns = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if let Some(ns) = ns {
            out.insert(tid, (comm.trim().to_string(), ns));
        }
    }
    out
}

/// CPU time (ns) of the calling thread, exact: `CLOCK_THREAD_CPUTIME_ID`. (The
/// thread's `schedstat` advances only at scheduler ticks while it runs, 4 ms here, which
/// made a 15 ms bare measurement off by up to a quarter.)
fn own_cpu_ns() -> u64 {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// The kernel's bare cost of the GCKS's datagrams in one registration, CPU ns: it sends
/// three (IKE_SA_INIT, GSA_AUTH and Delete; on loopback the sender's CPU also delivers
/// them) and receives three, so three `send_to` + `recv_from` pairs of 300 octets
/// between two blocking loopback sockets on this thread. No runtime, no readiness
/// polling: a lower bound of what any UDP server pays.
fn bare_udp_ns(iterations: usize) -> Result<f64, String> {
    let e = |e: std::io::Error| e.to_string();
    let a = std::net::UdpSocket::bind("127.0.0.1:0").map_err(e)?;
    let b = std::net::UdpSocket::bind("127.0.0.1:0").map_err(e)?;
    let to = b.local_addr().map_err(e)?;
    let out = [0x5au8; 300];
    let mut buf = [0u8; 2048];
    let mut once = || -> Result<(), String> {
        for _ in 0..3 {
            a.send_to(&out, to).map_err(e)?;
            b.recv_from(&mut buf).map_err(e)?;
        }
        Ok(())
    };
    for _ in 0..iterations / 10 + 1 {
        once()?;
    }
    let t0 = own_cpu_ns();
    for _ in 0..iterations {
        once()?;
    }
    Ok((own_cpu_ns() - t0) as f64 / iterations.max(1) as f64)
}

/// Whole-process user+system CPU (ns), dead threads included (clock ticks, 100 Hz).
fn process_cpu_ns() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // Fields after the ")" that ends comm: utime is field 14, stime 15 (1-based).
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) * 10_000_000
}

/// CPU (ns, 100 Hz ticks) of the PostgreSQL backends serving database `db`, by pid.
fn pg_backend_cpu(server: &str, db: &str) -> HashMap<u32, u64> {
    let sql = format!(
        "SELECT pid FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()"
    );
    let mut out = HashMap::new();
    for pid in psql(server, &sql)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse::<u32>().ok())
    {
        let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        out.insert(pid, (ticks(11) + ticks(12)) * 10_000_000);
    }
    out
}

/// GCKS CPU between two snapshots: every thread except the main one and the clients.
/// Also returns the client threads' CPU.
fn split_cpu(
    before: &HashMap<u32, (String, u64)>,
    after: &HashMap<u32, (String, u64)>,
    by_kind: &mut Vec<(String, u64)>,
) -> (u64, u64, usize) {
    let main = std::process::id();
    let (mut gcks, mut clients, mut vanished) = (0u64, 0u64, 0usize);
    for (tid, (name, ns)) in after {
        if *tid == main {
            continue;
        }
        let d = ns.saturating_sub(before.get(tid).map_or(0, |b| b.1));
        if name.starts_with(CLIENT_THREAD) {
            clients += d;
        } else {
            gcks += d;
            let kind = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
            match by_kind.iter_mut().find(|(k, _)| k == kind) {
                Some((_, v)) => *v += d,
                None => by_kind.push((kind.to_string(), d)),
            }
        }
    }
    by_kind.sort_by_key(|k| std::cmp::Reverse(k.1));
    for (tid, (name, _)) in before {
        if !after.contains_key(tid) && !name.starts_with(CLIENT_THREAD) {
            vanished += 1;
        }
    }
    (gcks, clients, vanished)
}

/// The responder's bare public-key work for one registration, CPU ns per iteration.
fn bare_pk_ns(auth: Auth, iterations: usize) -> Result<f64, String> {
    let e = |e: gikev2_proto::crypto::CryptoError| e.to_string();
    let mut rng = SystemRandom::new();
    let initiator = KeMethod::Curve25519.start(&mut rng).map_err(e)?;
    let peer_pub = initiator.pub_key().to_vec();
    let gcks = SigningKey::generate(SignatureScheme::EcdsaP256Sha256)
        .map_err(e)?
        .0;
    let member = SigningKey::generate(SignatureScheme::EcdsaP256Sha256)
        .map_err(e)?
        .0;
    let member_pub: PublicKey = member.public_key();
    // Signed octets of about the size of a real AUTH input (IKE_SA_INIT message | nonce |
    // prf(SK_p, ID)).
    let octets = vec![0x5au8; 400];
    let member_sig = member.sign(&octets).map_err(e)?;
    let once = |rng: &mut SystemRandom| -> Result<(), String> {
        let (ours, secret) = KeMethod::Curve25519
            .start_and_complete(rng, &peer_pub)
            .map_err(e)?;
        std::hint::black_box((ours, secret));
        if auth != Auth::Psk {
            let sig = gcks.sign(&octets).map_err(e)?;
            std::hint::black_box(sig);
            member_pub
                .verify(SignatureScheme::EcdsaP256Sha256, &octets, &member_sig)
                .map_err(e)?;
        }
        if auth == Auth::Cert {
            // The certificate's signature by the CA: one more P-256 verification (the
            // to-be-signed part of a certificate is about as long as the AUTH input).
            member_pub
                .verify(SignatureScheme::EcdsaP256Sha256, &octets, &member_sig)
                .map_err(e)?;
        }
        Ok(())
    };
    for _ in 0..iterations / 10 + 1 {
        once(&mut rng)?;
    }
    let t0 = own_cpu_ns();
    for _ in 0..iterations {
        once(&mut rng)?;
    }
    let t1 = own_cpu_ns();
    Ok((t1 - t0) as f64 / iterations.max(1) as f64)
}

struct Outcome {
    ok: usize,
    failed: usize,
    first_error: Option<String>,
    wall: Duration,
    latencies: Vec<Duration>,
    gcks_cpu_ns: u64,
    client_cpu_ns: u64,
    process_cpu_ns: u64,
    vanished: usize,
    /// GCKS CPU (ns) by thread name without its number, largest first.
    by_thread: Vec<(String, u64)>,
    /// CPU of the PostgreSQL backends serving the store (another process).
    pg_cpu_ns: u64,
    /// Store transactions that committed the registrations, and registrations in them.
    batches: (u64, u64),
}

/// The GCKS's address, its stop switch and its thread.
type RunningGcks = (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<Result<(), String>>,
    StatsHandle,
);

/// Runs the GCKS on its own runtime (threads `gcks-srv`) until `stop` fires.
fn start_gcks(
    url: String,
    key_path: PathBuf,
    creds_gcks: Option<Arc<SigningKey>>,
    psk_any: Option<SecretBytes>,
    threads: usize,
    in_memory: bool,
    pin: bool,
) -> Result<RunningGcks, String> {
    let (addr_tx, addr_rx) =
        std::sync::mpsc::channel::<Result<(SocketAddr, StatsHandle), String>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = std::thread::Builder::new()
        .name("gcks-main".into())
        .spawn(move || -> Result<(), String> {
            // Threads started from here (sqlx's SQLite worker, the credential loader)
            // inherit the CPU.
            if pin {
                pin_to(0);
            }
            let ready = addr_tx.clone();
            let fail = |m: String| {
                let _ = addr_tx.send(Err(m.clone()));
                m
            };
            // 0 worker threads: a current-thread runtime, everything on `gcks-main`
            // (as `gcks serve` runs).
            let rt = if threads == 0 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads)
                    .thread_name("gcks-srv")
                    .enable_all()
                    .build()
            }
            .map_err(|e| fail(e.to_string()))?;
            let store = Arc::new(rt.block_on(open_store(&url, &key_path)).map_err(&fail)?);
            let loader = StoreLoader::start(url.clone(), key_path.clone()).map_err(&fail)?;
            let cache = Arc::new(CredentialCache::new(
                Arc::new(loader),
                CacheConfig::default(),
            ));
            rt.block_on(cache.preload(&store))
                .map_err(|e| fail(e.to_string()))?;
            let resolver: Arc<dyn PeerAuthResolver> = cache;
            let local = match (creds_gcks, psk_any) {
                (Some(k), _) => LocalAuth::Signature {
                    key: k,
                    certs: Vec::new(),
                },
                // With PSKs the responder answers each member with that member's key
                // (RFC 7296 2.15); this one is a placeholder.
                (None, Some(p)) => LocalAuth::Psk(p),
                (None, None) => return Err(fail("no GCKS credential".into())),
            };
            let ike = IkeConfig::new(
                vec![suite()],
                IdPayload::fqdn("gcks.load").map_err(|e| fail(e.to_string()))?,
                local,
                resolver,
            );
            let cfg = ServeConfig {
                listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
                // Every member comes from 127.0.0.1: lift the per-source limits.
                endpoint: EndpointConfig {
                    cookie_threshold: 100_000,
                    cookie_threshold_per_ip: 100_000,
                    ..EndpointConfig::default()
                },
                init_rate_per_source: 1_000_000,
                ike_idle_close: Some(Duration::from_secs(1)),
            };
            rt.block_on(async move {
                let stop = async {
                    let _ = stop_rx.await;
                };
                if in_memory {
                    let registrar = InMemory(GroupViews::new(store.clone(), Duration::MAX));
                    let server =
                        Server::bind(ike, cfg, registrar).map_err(|e| fail(e.to_string()))?;
                    let addr = *server.local_addrs().first().ok_or("no socket")?;
                    let _ = ready.send(Ok((addr, StatsHandle::default())));
                    server.run(stop).await;
                } else {
                    let registrar = StoreRegistrar::new(store.clone());
                    let stats = registrar.queue_stats();
                    let server =
                        Server::bind(ike, cfg, registrar).map_err(|e| fail(e.to_string()))?;
                    let addr = *server.local_addrs().first().ok_or("no socket")?;
                    let _ = ready.send(Ok((addr, stats)));
                    server.run(stop).await;
                }
                store.close().await;
                Ok(())
            })
        })
        .map_err(|e| e.to_string())?;
    match addr_rx.recv() {
        Ok(Ok((addr, stats))) => Ok((addr, stop_tx, handle, stats)),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => Err("the GCKS thread stopped".into()),
    }
}

fn run_case(
    in_memory: bool,
    url: &str,
    pg: Option<(&str, &str)>,
    dir: &Path,
    auth: Auth,
    a: &Args,
) -> Result<Outcome, String> {
    let key_path = dir.join("gcks.key");
    let creds = make_creds(auth, a.registrations)?;
    let setup = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    setup.block_on(async {
        let store = open_store(url, &key_path).await?;
        let r = provision(&store, &creds).await;
        store.close().await;
        r
    })?;
    drop(setup);
    let psk_any = match creds.members.first() {
        Some((_, MemberCred::Psk(p))) => Some(p.clone()),
        _ => None,
    };
    let (gcks, stop, handle, batches) = start_gcks(
        url.to_string(),
        key_path,
        creds.gcks_key.clone(),
        psk_any,
        a.gcks_threads,
        in_memory,
        a.pin,
    )?;
    let pin = a.pin;
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .on_thread_start(move || {
            if pin {
                pin_to(1);
            }
        })
        .thread_name(CLIENT_THREAD)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    // Let the server settle, then snapshot.
    std::thread::sleep(Duration::from_millis(300));
    let creds = Arc::new(creds);
    let next = Arc::new(AtomicUsize::new(0));
    let pg0 = pg.map(|(s, d)| pg_backend_cpu(s, d)).unwrap_or_default();
    let cpu0 = thread_cpu();
    let batches0 = batches.get();
    let proc0 = process_cpu_ns();
    let main0 = own_cpu_ns();
    let start = Instant::now();
    let results: Vec<Result<Duration, String>> = clients.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..a.concurrency.max(1) {
            let creds = creds.clone();
            let next = next.clone();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((name, cred)) = creds.members.get(i) else {
                        break;
                    };
                    let ike = member_config(name, cred, creds.gcks_key.as_deref());
                    let request = RegistrationRequest {
                        group: IdPayload::key_id(GROUP.as_bytes().to_vec()),
                        sag: Some(gikev2_member::sag::supported_sag()),
                        sender_ids: None,
                    };
                    let t = Instant::now();
                    let r = join(ike, gcks, request, Duration::from_secs(10)).await;
                    out.push(match r {
                        Ok(joined) => {
                            let latency = t.elapsed();
                            tokio::spawn(stay_until_closed(joined));
                            Ok(latency)
                        }
                        Err(e) => Err(format!("{name}: {e}")),
                    });
                }
                out
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            if let Ok(v) = t.await {
                all.extend(v);
            }
        }
        all
    });
    let wall = start.elapsed();
    // The GCKS deletes each idle IKE SA 1 s after its registration: part of the cost.
    std::thread::sleep(Duration::from_millis(1_500));
    let cpu1 = thread_cpu();
    let batches1 = batches.get();
    let proc1 = process_cpu_ns();
    let main1 = own_cpu_ns();
    let pg1 = pg.map(|(s, d)| pg_backend_cpu(s, d)).unwrap_or_default();
    let pg_cpu_ns: u64 = pg1
        .iter()
        .map(|(pid, ns)| ns.saturating_sub(pg0.get(pid).copied().unwrap_or(0)))
        .sum();
    let mut by_thread = Vec::new();
    let (gcks_cpu_ns, client_cpu_ns, vanished) = split_cpu(&cpu0, &cpu1, &mut by_thread);
    let _ = stop.send(());
    let served = handle
        .join()
        .map_err(|_| "the GCKS thread panicked".to_string())?;
    drop(clients);
    served?;
    let mut latencies = Vec::new();
    let (mut failed, mut first_error) = (0, None);
    for r in results {
        match r {
            Ok(d) => latencies.push(d),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    latencies.sort();
    Ok(Outcome {
        ok: latencies.len(),
        failed,
        first_error,
        wall,
        latencies,
        gcks_cpu_ns,
        client_cpu_ns,
        process_cpu_ns: (proc1.saturating_sub(proc0))
            .saturating_sub(client_cpu_ns)
            .saturating_sub(main1.saturating_sub(main0)),
        vanished,
        by_thread,
        pg_cpu_ns,
        batches: (
            batches1.batches - batches0.batches,
            batches1.registrations - batches0.registrations,
        ),
    })
}

/// Plays the member after its registration, as `gm` does: answers what the GCKS sends on
/// the IKE SA (its Delete when it closes the idle SA, RFC 9838 2.3.4) until the SA closes
/// or 10 s pass. Without it the GCKS's Delete meets a closed port and is retransmitted.
async fn stay_until_closed(joined: Joined) {
    let Joined { mut sa, socket, .. } = joined;
    let mut rng = SystemRandom::new();
    let mut buf = vec![0u8; 65_535];
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let Ok(Ok(n)) = tokio::time::timeout_at(end, socket.recv(&mut buf)).await else {
            return;
        };
        sa.handle(&buf[..n], Instant::now(), &mut rng);
        while let Some(d) = sa.poll_transmit() {
            let _ = socket.send(&d).await;
        }
        while let Some(e) = sa.poll_event() {
            if matches!(e, Event::Closed(_)) {
                return;
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Result<Self, String> {
        let p = std::env::temp_dir().join(format!(
            "gcks-load-{tag}-{}-{}",
            std::process::id(),
            nanos()
        ));
        std::fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs one statement on the `postgres` database with psql.
fn psql(server: &str, sql: &str) -> Result<String, String> {
    let out = std::process::Command::new("psql")
        .arg(format!("{server}/postgres"))
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-A", "-t", "-c", sql])
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "psql: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A PostgreSQL database dropped on drop.
struct PgDb {
    server: String,
    name: String,
}

impl PgDb {
    fn create(server: &str, tag: &str) -> Result<Self, String> {
        let name = format!("gcks_load_{tag}_{}_{}", std::process::id(), nanos());
        psql(server, &format!("CREATE DATABASE {name}"))?;
        Ok(Self {
            server: server.to_string(),
            name,
        })
    }

    fn url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        if let Err(e) = psql(
            &self.server,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        ) {
            eprintln!("gcks-load: dropping {}: {e}", self.name);
        }
    }
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("gcks-load: error: {e}");
        std::process::exit(1);
    }
}

/// Runs the calling thread (and the threads it starts later) on `cpu` only; a machine
/// with one CPU is left alone.
fn pin_to(cpu: usize) {
    use nix::sched::{CpuSet, sched_setaffinity};
    let mut set = CpuSet::new();
    if set.set(cpu).is_ok()
        && let Err(e) = sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
    {
        eprintln!("gcks-load: cannot pin to CPU {cpu}: {e}");
    }
}

fn run(a: Args) -> Result<(), String> {
    if a.pin {
        pin_to(0);
    }
    let auths: Vec<Auth> = a
        .auth
        .split(',')
        .map(|s| match s.trim() {
            "psk" => Ok(Auth::Psk),
            "ecdsa" => Ok(Auth::Ecdsa),
            "cert" => Ok(Auth::Cert),
            o => Err(format!("--auth: {o:?} (psk, ecdsa, cert)")),
        })
        .collect::<Result<_, _>>()?;
    let stores: Vec<&str> = a
        .store
        .split(',')
        .map(|s| match s.trim() {
            s @ ("sqlite" | "postgres" | "memory") => Ok(s),
            o => Err(format!("--store: {o:?} (sqlite, postgres, memory)")),
        })
        .collect::<Result<_, _>>()?;
    println!(
        "gcks-load: {} registrations per case, {} in flight, GCKS runtime {} worker threads, \
         members on 1 client thread; X25519, AES-GCM-256, KW-256",
        a.registrations, a.concurrency, a.gcks_threads
    );
    let mut rows = Vec::new();
    for &store in &stores {
        let pg_ok = if store == "postgres" {
            match psql(&a.pg, "SELECT 1") {
                Ok(_) => true,
                Err(e) => {
                    println!("postgres: skipped ({} unreachable: {e})", a.pg);
                    false
                }
            }
        } else {
            true
        };
        if !pg_ok {
            continue;
        }
        for &auth in &auths {
            let tag = match auth {
                Auth::Psk => "psk",
                Auth::Ecdsa => "ecdsa",
                Auth::Cert => "cert",
            };
            let mut rounds = Vec::new();
            for _ in 0..a.rounds.max(1) {
                // A fresh store each round.
                let dir = TempDir::new(tag)?;
                let pg_db = if store == "postgres" {
                    Some(PgDb::create(&a.pg, tag)?)
                } else {
                    None
                };
                let url = match &pg_db {
                    Some(p) => p.url(),
                    None => format!("sqlite://{}?mode=rwc", dir.0.join("gcks.db").display()),
                };
                let pg_ref = pg_db.as_ref().map(|p| (a.pg.as_str(), p.name.as_str()));
                // The bare cost just before and just after the case, so that both see
                // the machine as the case did (it is shared).
                let pk_before = bare_pk_ns(auth, a.pk_iterations)?;
                let o = run_case(store == "memory", &url, pg_ref, &dir.0, auth, &a)?;
                let pk = (pk_before + bare_pk_ns(auth, a.pk_iterations)?) / 2.0;
                let udp = bare_udp_ns(a.pk_iterations * 20)?;
                println!(
                    "{store}/{}: round: GCKS CPU/reg {:.3} ms, bare PK {:.3} ms, ratio {:.2}",
                    auth.name(),
                    o.gcks_cpu_ns as f64 / o.ok.max(1) as f64 / 1e6,
                    pk / 1e6,
                    o.gcks_cpu_ns as f64 / o.ok.max(1) as f64 / pk
                );
                rounds.push((o, pk, udp));
            }
            // The round with the median ratio.
            rounds.sort_by(|x, y| {
                let r = |(o, pk, _): &(Outcome, f64, f64)| {
                    o.gcks_cpu_ns as f64 / o.ok.max(1) as f64 / pk
                };
                r(x).total_cmp(&r(y))
            });
            let mid = rounds.len() / 2;
            let Some((o, pk, udp)) = rounds.into_iter().nth(mid) else {
                continue;
            };
            if let Some(e) = &o.first_error {
                println!("{store}/{}: {} failed, first: {e}", auth.name(), o.failed);
            }
            if o.vanished > 0 {
                println!(
                    "{store}/{}: {} GCKS threads ended during the window (their CPU is missing \
                     from the thread sum; see the process figure)",
                    auth.name(),
                    o.vanished
                );
            }
            let total = o.gcks_cpu_ns.max(1) as f64;
            let parts: Vec<String> = o
                .by_thread
                .iter()
                .map(|(k, v)| format!("{k} {:.0}%", *v as f64 * 100.0 / total))
                .collect();
            println!(
                "{store}/{}: GCKS CPU by thread: {}; {} registrations committed in {} store \
                 transactions ({:.1} per batch)",
                auth.name(),
                parts.join(", "),
                o.batches.1,
                o.batches.0,
                o.batches.1 as f64 / o.batches.0.max(1) as f64
            );
            rows.push((store, auth, o, pk, udp));
        }
    }
    println!();
    println!(
        "| store | member auth | ok/total | reg/s | p50 ms | p99 ms | GCKS CPU/reg ms (threads) | \
         same (process - clients) | PG backend CPU/reg ms | clients CPU/reg ms | bare PK ms | \
         ratio | ratio incl. PG backend | bare UDP ms | ratio to PK + UDP |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (store, auth, o, pk, udp) in &rows {
        let n = o.ok.max(1) as f64;
        let per = o.gcks_cpu_ns as f64 / n / 1e6;
        let bare = pk / 1e6;
        let pg_per = o.pg_cpu_ns as f64 / n / 1e6;
        println!(
            "| {store} | {} | {}/{} | {:.0} | {:.2} | {:.2} | {:.3} | {:.3} | {} | {:.3} | {:.3} | {:.1} | {} | {:.3} | {:.2} |",
            auth.name(),
            o.ok,
            o.ok + o.failed,
            o.ok as f64 / o.wall.as_secs_f64(),
            percentile(&o.latencies, 0.50),
            percentile(&o.latencies, 0.99),
            per,
            o.process_cpu_ns as f64 / n / 1e6,
            if *store == "postgres" {
                format!("{:.3}", pg_per)
            } else {
                "-".into()
            },
            o.client_cpu_ns as f64 / n / 1e6,
            bare,
            per / bare,
            if *store == "postgres" {
                format!("{:.1}", (per + pg_per) / bare)
            } else {
                "-".into()
            },
            udp / 1e6,
            per / (bare + udp / 1e6),
        );
    }
    Ok(())
}
