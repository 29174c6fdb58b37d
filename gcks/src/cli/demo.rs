//! `gcks demo`: the real registration path (SQLite store, credential cache, store-backed
//! registrar, UDP on loopback) with a throw-away store in a temporary directory. Three
//! members register (one sender, two receivers), a fourth that is not authorized is
//! refused, and the demo checks that every member holds the same group keys.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gikev2_gcks::credentials::{CacheConfig, CredentialCache, StoreLoader};
use gikev2_gcks::registrar::unix_now;
use gikev2_gcks::sample_group;
use gikev2_gcks::{ServeConfig, Server, StoreRegistrar};
use gikev2_member::{JoinError, join};
use gikev2_policy::{GroupWidePolicy, Identity, NewCredential, Role, Store};
use gikev2_proto::crypto::{IkeSuite, SecretBytes};
use gikev2_proto::group::{GroupKeys, Role as KeyRole, read_registration};
use gikev2_proto::ike::{
    IkeConfig, LocalAuth, PeerAuth, PeerAuthResolver, RegistrationRequest, SinglePeer,
};
use gikev2_proto::registry::{EncrId, KeId, KwaId, NotifyType, PrfId};
use gikev2_proto::wire::{IdPayload, Transform};

use super::admin::open_store;

const GROUP: &str = "demo-group";
const PSK: &[u8] = b"demo group pre-shared key";

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!("gcks-demo-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
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

fn member_config(id: &str) -> Result<IkeConfig, String> {
    let psk = SecretBytes::from_slice(PSK);
    Ok(IkeConfig::new(
        vec![suite()],
        IdPayload::fqdn(id).map_err(|e| e.to_string())?,
        LocalAuth::Psk(psk.clone()),
        Arc::new(SinglePeer {
            id: None,
            auth: PeerAuth::Psk(psk),
        }),
    ))
}

/// The group, its TEK policy, a GSA_REKEY signing key, four members, three authorized.
async fn provision(store: &Store) -> Result<(), String> {
    let now = unix_now();
    let e = |e: gikev2_policy::StoreError| e.to_string();
    let group = sample_group::create(
        store,
        GROUP,
        "demo-rekey",
        10,
        GroupWidePolicy {
            sender_id_bits: Some(8),
            ..GroupWidePolicy::default()
        },
        now,
    )
    .await?;
    for (name, role) in [
        ("sender.demo", Some(Role::Sender)),
        ("receiver1.demo", Some(Role::Receiver)),
        ("receiver2.demo", Some(Role::Receiver)),
        ("intruder.demo", None),
    ] {
        let m = store
            .add_member(
                &Identity::fqdn(name),
                None,
                &NewCredential::Psk(SecretBytes::from_slice(PSK)),
                now,
            )
            .await
            .map_err(e)?;
        if let Some(r) = role {
            store.authorize(m, group, r, now).await.map_err(e)?;
        }
    }
    Ok(())
}

/// TEK SPI -> encryption key, and the Rekey SA keys, as one member holds them.
fn fingerprint(k: &GroupKeys) -> Vec<(u32, Vec<u8>)> {
    let mut v: Vec<(u32, Vec<u8>)> = k
        .teks
        .iter()
        .map(|t| (t.spi, t.keys.encr.as_bytes().to_vec()))
        .collect();
    if let Some(r) = &k.rekey {
        v.push((0, r.keys.keymat().as_bytes().to_vec()));
    }
    v
}

pub fn run() -> Result<(), String> {
    let dir = TempDir::new()?;
    let url = format!("sqlite://{}?mode=rwc", dir.0.join("gcks.db").display());
    let key_path = dir.0.join("gcks.key");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let store = Arc::new(rt.block_on(open_store(&url, &key_path))?);
    rt.block_on(provision(&store))?;
    gikev2_member::outln!(
        "gcks demo: SQLite store in {} with group {GROUP} (AES-GCM-256 TEK, signed GSA_REKEY), 4 members",
        dir.0.display()
    );
    let cache = Arc::new(CredentialCache::new(
        Arc::new(StoreLoader::start(url.clone(), key_path.clone())?),
        CacheConfig::default(),
    ));
    rt.block_on(cache.preload(&store))
        .map_err(|e| e.to_string())?;
    let resolver: Arc<dyn PeerAuthResolver> = cache;
    let ike = IkeConfig::new(
        vec![suite()],
        IdPayload::fqdn("gcks.demo").map_err(|e| e.to_string())?,
        LocalAuth::Psk(SecretBytes::from_slice(PSK)),
        resolver,
    );
    let cfg = ServeConfig {
        listen: vec!["127.0.0.1:0".parse().map_err(|_| "address")?],
        ike_idle_close: Some(Duration::from_secs(2)),
        ..Default::default()
    };
    let result = rt.block_on(async {
        let server = Server::bind(ike, cfg, StoreRegistrar::new(store.clone()))
            .map_err(|e| e.to_string())?;
        let gcks = *server.local_addrs().first().ok_or("no socket")?;
        gikev2_member::outln!("gcks listening on {gcks} (UDP, loopback)");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        let outcome = members(gcks).await;
        let _ = stop.send(());
        task.await.map_err(|e| e.to_string())?;
        outcome
    });
    let audit = rt
        .block_on(store.audit_events(10))
        .map_err(|e| e.to_string())?;
    gikev2_member::outln!("audit log ({} events, newest first):", audit.len());
    for r in audit {
        gikev2_member::outln!(
            "  {:<10} {:<16} {}",
            r.event.outcome.to_string(),
            r.event
                .peer
                .as_ref()
                .map(super::names::show_identity)
                .unwrap_or_default(),
            r.event.reason
        );
    }
    rt.block_on(store.close());
    result
}

async fn members(gcks: std::net::SocketAddr) -> Result<(), String> {
    let start = Instant::now();
    let mut held = Vec::new();
    for (name, sender) in [
        ("sender.demo", true),
        ("receiver1.demo", false),
        ("receiver2.demo", false),
    ] {
        let request = RegistrationRequest {
            group: IdPayload::key_id(GROUP.as_bytes().to_vec()),
            sag: Some(gikev2_member::sag::supported_sag()),
            sender_ids: sender.then_some(1),
        };
        let joined = join(member_config(name)?, gcks, request, Duration::from_secs(10))
            .await
            .map_err(|e| format!("{name}: {e}"))?;
        let role = if sender {
            KeyRole::Sender { receives: true }
        } else {
            KeyRole::Receiver
        };
        let keys = read_registration(&joined.gsa, &joined.kd, &joined.kwk, role)
            .map_err(|e| format!("{name}: {e}"))?;
        let spis: Vec<String> = keys
            .teks
            .iter()
            .map(|t| format!("{:#010x}", t.spi))
            .collect();
        gikev2_member::outln!(
            "member {name:<15} registered: {}, TEK SPI {}, Rekey SA {}, Sender-IDs {:?}",
            if sender { "sender  " } else { "receiver" },
            spis.join(","),
            if keys.rekey.is_some() { "yes" } else { "no" },
            keys.sender_ids
        );
        held.push(fingerprint(&keys));
    }
    let refused = join(
        member_config("intruder.demo")?,
        gcks,
        RegistrationRequest {
            group: IdPayload::key_id(GROUP.as_bytes().to_vec()),
            sag: None,
            sender_ids: None,
        },
        Duration::from_secs(10),
    )
    .await;
    let authorization_failed = matches!(
        refused,
        Err(JoinError::Refused(NotifyType::AuthorizationFailed))
    );
    match &refused {
        Err(JoinError::Refused(n)) => {
            gikev2_member::outln!(
                "member {:<15} refused: {n} (not authorized for {GROUP})",
                "intruder.demo"
            )
        }
        Err(e) => return Err(format!("intruder.demo: unexpected {e}")),
        Ok(_) => return Err("intruder.demo was admitted".into()),
    }
    let identical =
        held.windows(2).all(|w| w[0] == w[1]) && held.first().is_some_and(|k| !k.is_empty());
    gikev2_member::outln!(
        "3 members registered in {:.1} ms; all hold the same TEK and Rekey SA keys: {identical}",
        start.elapsed().as_secs_f64() * 1e3
    );
    if !authorization_failed {
        return Err("intruder.demo: expected AUTHORIZATION_FAILED".into());
    }
    if identical {
        Ok(())
    } else {
        Err("members hold different keys".into())
    }
}
