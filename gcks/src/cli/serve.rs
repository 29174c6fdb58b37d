//! `gcks serve`: the key server on the policy store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use gikev2_gcks::credentials::{CacheConfig, CredentialCache, StoreLoader};
use gikev2_gcks::{
    InbandScheduler, RekeyScheduler, RekeySchedulerConfig, ServeConfig, Server, StoreRegistrar,
};
use gikev2_proto::crypto::{IkeSuite, PublicKey};
use gikev2_proto::ike::{EndpointConfig, IkeConfig, IkeLifetimes, LocalAuth, PeerAuthResolver};
use gikev2_proto::registry::{EncrId, KeId, KwaId, PrfId, TransformType};
use gikev2_proto::wire::{IdPayload, Transform};
use tracing::{info, warn};

use super::{admin, files, redacted};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (repeatable). Default: 0.0.0.0 and [::] on UDP 500, 4500
    /// (NAT-T, non-ESP marker) and 848.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,
    /// The GCKS's IKE identity (IDr): an IP address, user@domain or FQDN. Default: the
    /// host name.
    #[arg(long)]
    pub id: Option<String>,
    /// Authenticate the GCKS with the pre-shared key in this file (members verify it).
    #[arg(long, value_name = "FILE", conflicts_with = "key")]
    pub psk_file: Option<PathBuf>,
    /// Authenticate the GCKS with this PKCS#8 private key (PEM or DER).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// The GCKS's certificate chain for --key (PEM or DER, end entity first); without it
    /// members must know the raw public key.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Seconds after its last registration exchange an IKE SA is deleted (RFC 9838
    /// 2.3.4), unless the group needs it (in-band rekey, no Rekey SA).
    #[arg(long, default_value_t = 5)]
    pub ike_idle: u64,
    /// Seconds a cached member credential is used before it is read again.
    #[arg(long, default_value_t = 10)]
    pub credential_ttl: u64,
    /// Milliseconds a group's configuration and key state are used before the store is
    /// read again (0: every registration reads them). Authorizations, capacity and
    /// Sender-IDs are always decided by the store.
    #[arg(long, default_value_t = 1000)]
    pub policy_ttl_ms: u64,
    /// New IKE_SA_INIT requests per second from one address (burst twice that).
    #[arg(long, default_value_t = 20)]
    pub init_rate: u32,
    /// Half-open IKE SAs before every new IKE_SA_INIT must return a COOKIE.
    #[arg(long, default_value_t = 30)]
    pub cookie_threshold: usize,
    /// Runtime threads: 1 (the default) runs the sockets, the endpoint, the registrar and
    /// the store's queue on one thread, the least CPU per registration; 2 or more lets the
    /// socket readers drain the sockets while the endpoint does public-key work. See
    /// docs/performance.md.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: u16,
    /// Milliseconds between two looks at every group by the GSA_REKEY sender (multicast
    /// groups, RFC 9838 2.4.1) and the GSA_INBAND_REKEY sender (in-band groups, 2.4.2),
    /// which renew SAs with a quarter of their lifetime left and push them to the members.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub rekey_tick_ms: u64,
    /// Copies of each GSA_REKEY message, bitwise identical (RFC 9838 2.4.1.3).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=10))]
    pub rekey_copies: u8,
    /// Milliseconds between two copies of a GSA_REKEY message.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub rekey_spacing_ms: u64,
    /// Fragment GSA_REKEY messages larger than this many octets (RFC 9838 2.4.1.2, RFC
    /// 7383); only when every member supports IKE fragmentation. Default: never.
    #[arg(long, value_name = "OCTETS", value_parser = clap::value_parser!(u16).range(576..))]
    pub rekey_fragment_size: Option<u16>,
    /// TTL (hop limit) of multicast GSA_REKEY datagrams.
    #[arg(long, default_value_t = 8)]
    pub multicast_ttl: u32,
    /// IPv4 address of the interface multicast GSA_REKEY leaves from (default: the route's).
    #[arg(long, value_name = "ADDR")]
    pub multicast_if: Option<std::net::Ipv4Addr>,
    /// Index of the interface IPv6 multicast GSA_REKEY leaves from (default: the route's).
    #[arg(long, value_name = "IFINDEX")]
    pub multicast_if6: Option<u32>,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, default_value = "info")]
    pub log: String,
    /// Seconds after which the GCKS rekeys an IKE SA it keeps (in-band groups) with
    /// CREATE_CHILD_SA (RFC 7296 2.8; GSK_w follows, RFC 9838 3.1.1), less a random part
    /// of --ike-rekey-jitter; 0: the GCKS never starts one (the member still may).
    /// Default 14400 (4 h).
    #[arg(long, value_name = "SECS")]
    pub ike_rekey_time: Option<u64>,
    /// Largest random number of seconds taken off --ike-rekey-time, so that the two ends
    /// do not rekey together (strongSwan's rand_time). Default a tenth of it.
    #[arg(long, value_name = "SECS")]
    pub ike_rekey_jitter: Option<u64>,
    /// Seconds after which an IKE SA that no rekey replaced is deleted (strongSwan's
    /// rekey_time + over_time); 0: no hard limit. Default --ike-rekey-time plus a tenth.
    #[arg(long, value_name = "SECS")]
    pub ike_lifetime: Option<u64>,
}

/// The IKE SA lifetimes of `gcks serve` (RFC 7296 2.8), checked against each other.
pub fn ike_lifetimes(a: &ServeArgs) -> Result<IkeLifetimes, String> {
    IkeLifetimes::from_secs(a.ike_rekey_time, a.ike_rekey_jitter, a.ike_lifetime)
        .map_err(|e| format!("--ike-{}: {e}", e.field().replace('_', "-")))
}

/// The IKE SA suites the GCKS accepts, in preference order (RFC 8247; the KWA is
/// negotiated in IKE_SA_INIT, RFC 9838 4.5.4).
/// The IKE suites `gcks serve` accepts, in preference order: first X25519 with ML-KEM-768
/// as additional key exchange 1 (RFC 9370, IKE_INTERMEDIATE), chosen whenever a member
/// offers it, so that the initial IKE SA resists a quantum computer (RFC 9838 6.2; groups
/// with `require_pq_ike` admit members only over such an SA); then X25519 and ECP-256
/// alone (what strongSwan 5.9.8 and members without ML-KEM offer).
pub fn suites() -> Vec<IkeSuite> {
    let mut v = Vec::new();
    for (bits, kwa) in [(256, KwaId::Kw5649_256), (128, KwaId::Kw5649_128)] {
        for (ke, addke) in [
            (KeId::Curve25519, Some(KeId::MlKem768)),
            (KeId::Curve25519, None),
            (KeId::Ecp256, None),
        ] {
            let mut t = vec![
                Transform::encr(EncrId::AesGcm16, Some(bits)),
                Transform::prf(PrfId::HmacSha2_256),
                Transform::ke(ke),
            ];
            if let Some(a) = addke {
                t.push(Transform::new(TransformType::AddKe1, a.value()));
            }
            t.push(Transform::kwa(kwa));
            if let Ok(s) = IkeSuite::from_transforms(&t) {
                v.push(s);
            }
        }
    }
    v
}

fn default_listen() -> Vec<SocketAddr> {
    let mut v: Vec<SocketAddr> = [500, 4500, 848]
        .into_iter()
        .map(|p| SocketAddr::from(([0, 0, 0, 0], p)))
        .collect();
    // IPv6 only where the host has it.
    if std::net::UdpSocket::bind("[::1]:0").is_ok() {
        v.extend(
            [500, 4500, 848]
                .into_iter()
                .map(|p| SocketAddr::from(([0u16; 8], p))),
        );
    }
    v
}

fn init_logging(level: &str) -> Result<(), String> {
    let level = match level {
        "error" => tracing::Level::ERROR,
        "warn" => tracing::Level::WARN,
        "info" => tracing::Level::INFO,
        "debug" => tracing::Level::DEBUG,
        "trace" => tracing::Level::TRACE,
        other => {
            return Err(format!(
                "--log: {other:?} (error, warn, info, debug or trace)"
            ));
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    Ok(())
}

fn host_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "gcks".into())
}

fn local_auth(a: &ServeArgs) -> Result<(LocalAuth, &'static str), String> {
    match (&a.psk_file, &a.key) {
        (Some(p), None) => Ok((LocalAuth::Psk(files::load_psk("--psk-file", p)?), "PSK")),
        (None, Some(k)) => {
            let (key, _, _) = files::load_private_key("--key", k)?;
            let certs = a
                .cert
                .as_deref()
                .map(|c| files::load_certs("--cert", c))
                .transpose()?
                .unwrap_or_default();
            // A certificate for another key makes every member refuse our AUTH (RFC
            // 7296 2.15: the signature must verify under the end entity's key); say so
            // now rather than per member.
            if let (Some(ee), Some(c)) = (certs.first(), a.cert.as_deref()) {
                let cert_key = PublicKey::from_certificate(ee)
                    .map_err(|e| format!("--cert {}: the first certificate: {e}", c.display()))?;
                if cert_key != key.public_key() {
                    return Err(format!(
                        "--cert {}: the first certificate is not for the key in --key {} \
                         (the chain must start with the GCKS's own certificate)",
                        c.display(),
                        k.display()
                    ));
                }
            }
            let kind = if certs.is_empty() {
                "raw public key"
            } else {
                "certificate"
            };
            Ok((
                LocalAuth::Signature {
                    key: Arc::new(key),
                    certs,
                },
                kind,
            ))
        }
        _ => Err("--psk-file or --key: the GCKS needs a credential of its own".into()),
    }
}

/// Runs the server until SIGINT or SIGTERM.
pub fn run(url: String, key_path: PathBuf, a: ServeArgs) -> Result<(), String> {
    init_logging(&a.log)?;
    let lifetimes = ike_lifetimes(&a)?;
    let (auth, auth_kind) = local_auth(&a)?;
    let id_text = a.id.clone().unwrap_or_else(host_id);
    let id: IdPayload = gikev2_member::config::parse_id("id", &id_text)
        .map_err(|e| format!("--id: {}", e.reason))?;
    let listen = if a.listen.is_empty() {
        default_listen()
    } else {
        a.listen.clone()
    };
    // One thread: everything on it, no cross-thread wake-ups (measured a third less CPU
    // per registration with certificates on SQLite). Several: the socket readers keep
    // draining the sockets while the endpoint task does public-key work. Since the readers
    // shed rate-limited IKE_SA_INITs themselves, both ride out the flood test on a host
    // loaded with two CPU hogs alike (a real member registers in 0.8 s or, after one
    // retransmission, 4.8 s). docs/performance.md, "gcks: registration load".
    let rt = if a.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(a.threads))
            .enable_all()
            .build()
    }
    .map_err(|e| format!("runtime: {e}"))?;
    // The master key file is created (0600) and the schema migrated by this first open.
    let store = Arc::new(rt.block_on(admin::open_store(&url, &key_path))?);
    let loader = StoreLoader::start(url.clone(), key_path.clone())?;
    let cache = Arc::new(CredentialCache::new(
        Arc::new(loader),
        CacheConfig {
            ttl: Duration::from_secs(a.credential_ttl),
            ..CacheConfig::default()
        },
    ));
    let loaded = rt
        .block_on(cache.preload(&store))
        .map_err(|e| format!("loading member credentials: {e}"))?;
    let resolver: Arc<dyn PeerAuthResolver> = cache.clone();
    let mut ike = IkeConfig::new(suites(), id, auth, resolver);
    ike.set_lifetimes(lifetimes);
    // Members' PPKs (RFC 8784) from the same cache: USE_PPK is answered, the PPK_ID
    // looked up in the member's row (`gcks member set-ppk`).
    ike.ppk_resolver = Some(cache.clone());
    let cfg = ServeConfig {
        listen,
        endpoint: EndpointConfig {
            cookie_threshold: a.cookie_threshold,
            ..EndpointConfig::default()
        },
        init_rate_per_source: a.init_rate,
        ike_idle_close: Some(Duration::from_secs(a.ike_idle)),
    };
    let rekey_config = RekeySchedulerConfig {
        tick: Duration::from_millis(a.rekey_tick_ms),
        copies: a.rekey_copies,
        spacing: Duration::from_millis(a.rekey_spacing_ms),
        fragment_size: a.rekey_fragment_size.map(usize::from),
        multicast_ttl: a.multicast_ttl,
        multicast_if_v4: a.multicast_if,
        multicast_if_v6: a.multicast_if6,
        ..RekeySchedulerConfig::default()
    };
    rt.block_on(async move {
        let registrar = StoreRegistrar::new(store.clone())
            .with_policy_ttl(Duration::from_millis(a.policy_ttl_ms));
        let views = registrar.group_views();
        let views_for_inband = views.clone();
        let server =
            Server::bind(ike, cfg, registrar).map_err(|e| format!("--listen: {e}"))?;
        // The GSA_REKEY sender (RFC 9838 2.4.1), from the server's IKE sockets.
        let rekey = RekeyScheduler::new(store.clone(), rekey_config, server.sockets())
            .with_views(views);
        let (rekey_stop, rekey_stopped) = tokio::sync::oneshot::channel::<()>();
        let rekey_task = tokio::spawn(rekey.run(async {
            let _ = rekey_stopped.await;
        }));
        // The GSA_INBAND_REKEY sender (RFC 9838 2.4.2), through the server's IKE SAs.
        let inband = InbandScheduler::new(
            store.clone(),
            server.inband_pusher(),
            Duration::from_millis(a.rekey_tick_ms),
        )
        .with_views(views_for_inband);
        let (inband_stop, inband_stopped) = tokio::sync::oneshot::channel::<()>();
        let inband_task = tokio::spawn(inband.run(async {
            let _ = inband_stopped.await;
        }));
        let addrs: Vec<String> = server.local_addrs().iter().map(|a| a.to_string()).collect();
        info!(
            store = %redacted(&url),
            backend = ?store.kind(),
            members = loaded,
            "gcks serving"
        );
        // One line on stdout for people and scripts: the server is ready.
        gikev2_member::outln!(
            "gcks: serving on {} as {id_text} ({auth_kind}); store {} ({loaded} member credentials)",
            addrs.join(", "),
            redacted(&url)
        );
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        let shutdown = async {
            let term = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(e) => {
                        warn!(error = %e, "no SIGTERM handler");
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term => {},
            }
            info!("shutting down");
        };
        server.run(shutdown).await;
        // The sender gives its leases up, so another GCKS can take over at once.
        let _ = rekey_stop.send(());
        let _ = rekey_task.await;
        let _ = inband_stop.send(());
        let _ = inband_task.await;
        store.close().await;
        Ok::<(), String>(())
    })
}
