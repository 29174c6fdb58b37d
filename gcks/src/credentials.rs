//! Member credentials for the IKE layer: a [`PeerAuthResolver`] over an in-memory cache
//! of the store's `members` table.
//!
//! `PeerAuthResolver::resolve` is synchronous and runs on the endpoint's task, in the
//! middle of a GSA_AUTH. The choice made here:
//!
//! - the cache is filled with every member when `gcks serve` starts ([`CredentialCache::preload`]);
//! - a hit younger than the TTL (default 10 s) is answered from memory, without I/O;
//! - a miss, or an entry older than the TTL, is looked up at once through a
//!   [`CredentialSource`]: in `gcks serve` a dedicated thread with its own runtime and
//!   its own store connection ([`StoreLoader`]), so the lookup never waits for the task
//!   that is blocked on it. The wait is bounded (250 ms by default); lookups are limited
//!   to a rate (50/s, burst 100) so that a flood of made-up identities costs a bounded
//!   amount of database work; an unknown identity is remembered for one second.
//! - when a lookup is not possible (rate exhausted, timeout, database error) a stale
//!   entry is used if there is one, else the peer is refused (AUTHENTICATION_FAILED).
//!
//! So a member added with `gcks member add` can register at once, a changed PSK or a
//! deleted member takes effect within the TTL, and authorization (checked against the
//! store for every registration) is never cached.
//!
//! The same entries answer the IKE SA's [`PpkResolver`] (RFC 8784): a member's PPK comes
//! with its credential, so the PPK_ID lookup in GSA_AUTH right after `resolve` is a hit.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use gikev2_policy::{Credential, Identity, MasterKey, MemberCredential, MemberPpk, Store};
use gikev2_proto::crypto::SecretBytes;
use gikev2_proto::crypto::{PublicKey, SignatureScheme};
use gikev2_proto::ike::x509::{CertificateResolver, Clock};
use gikev2_proto::ike::{PeerAuth, PeerAuthResolver, PpkResolver};
use gikev2_proto::wire::cert::CertPayload;
use gikev2_proto::wire::id::IdPayload;
use tracing::{debug, info, warn};

/// Tunables of the cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// How long an entry is used before it is looked up again.
    pub ttl: Duration,
    /// How long an unknown identity is remembered as unknown.
    pub negative_ttl: Duration,
    /// Longest wait for one lookup.
    pub lookup_timeout: Duration,
    /// Lookups per second (burst twice that).
    pub lookups_per_second: u32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(10),
            negative_ttl: Duration::from_secs(1),
            lookup_timeout: Duration::from_millis(250),
            lookups_per_second: 50,
        }
    }
}

/// Where the cache looks a member up. Blocking, bounded by `timeout`.
pub trait CredentialSource: Send + Sync {
    fn lookup(
        &self,
        identity: &Identity,
        timeout: Duration,
    ) -> Result<Option<MemberCredential>, String>;
}

/// What the IKE layer needs for one member.
#[derive(Clone)]
enum Resolved {
    /// A PSK or a raw public key.
    Fixed(PeerAuth),
    /// An X.509 member: certificates chaining to its trust anchors, naming its identity.
    Certificate(Arc<CertificateResolver>),
    /// Known identity whose stored credential is unusable (logged when loaded).
    Unusable,
}

#[derive(Clone)]
struct Entry {
    /// `None`: no member has this identity.
    resolved: Option<Resolved>,
    /// The member's PPK (RFC 8784), if it has one.
    ppk: Option<MemberPpk>,
    fetched: Instant,
}

/// A token bucket for lookups.
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant) -> bool {
        let burst = self.rate * 2.0;
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Most entries kept; past that, unknown identities are no longer remembered.
const MAX_ENTRIES: usize = 1 << 20;

/// The cache and resolver; see the module documentation.
pub struct CredentialCache {
    entries: RwLock<HashMap<Identity, Entry>>,
    source: Arc<dyn CredentialSource>,
    config: CacheConfig,
    bucket: Mutex<Bucket>,
    clock: Clock,
}

fn schemes_for(key: &PublicKey) -> Vec<SignatureScheme> {
    SignatureScheme::ALL
        .into_iter()
        .filter(|s| key.key_type().fits(*s))
        .collect()
}

impl CredentialCache {
    pub fn new(source: Arc<dyn CredentialSource>, config: CacheConfig) -> Self {
        let rate = f64::from(config.lookups_per_second.max(1));
        Self {
            entries: RwLock::new(HashMap::new()),
            source,
            bucket: Mutex::new(Bucket {
                rate,
                tokens: rate * 2.0,
                at: Instant::now(),
            }),
            config,
            clock: Arc::new(SystemTime::now),
        }
    }

    /// Loads every member of `store` (at start, so that registrations never wait).
    /// Returns how many were loaded.
    pub async fn preload(&self, store: &Store) -> Result<usize, gikev2_policy::StoreError> {
        let members = store.members().await?;
        let mut loaded = HashMap::with_capacity(members.len());
        let now = Instant::now();
        for m in &members {
            if let Some(c) = store.member_credential(&m.identity).await? {
                loaded.insert(
                    m.identity.clone(),
                    Entry {
                        resolved: Some(self.resolved(&c)),
                        ppk: c.ppk.clone(),
                        fetched: now,
                    },
                );
            }
        }
        let n = loaded.len();
        if let Ok(mut e) = self.entries.write() {
            e.extend(loaded);
        }
        Ok(n)
    }

    fn resolved(&self, c: &MemberCredential) -> Resolved {
        match &c.credential {
            Credential::Psk(psk) => Resolved::Fixed(PeerAuth::Psk(psk.clone())),
            Credential::RawPublicKey { spki } => match PublicKey::from_spki(spki) {
                Ok(key) => Resolved::Fixed(PeerAuth::PublicKey {
                    schemes: schemes_for(&key),
                    key,
                }),
                Err(e) => {
                    warn!(member = %c.member.identity, error = %e, "stored raw public key unusable");
                    Resolved::Unusable
                }
            },
            Credential::X509 { trust_anchors } => {
                match CertificateResolver::new(
                    trust_anchors.iter().map(|a| a.cert_der.as_slice()),
                    self.clock.clone(),
                ) {
                    Ok(r) => Resolved::Certificate(Arc::new(r)),
                    Err(e) => {
                        warn!(member = %c.member.identity, error = %e, "trust anchors unusable");
                        Resolved::Unusable
                    }
                }
            }
        }
    }

    /// Entries held (for tests and status).
    pub fn len(&self) -> usize {
        self.entries.read().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn fresh(&self, e: &Entry, now: Instant) -> bool {
        let ttl = if e.resolved.is_some() {
            self.config.ttl
        } else {
            self.config.negative_ttl
        };
        now.duration_since(e.fetched) < ttl
    }

    /// The entry for `id`: cached, or looked up now (see the module documentation).
    fn entry(&self, id: &Identity) -> Option<Entry> {
        let now = Instant::now();
        let cached = self.entries.read().ok().and_then(|e| e.get(id).cloned());
        if let Some(e) = &cached
            && self.fresh(e, now)
        {
            return cached;
        }
        let allowed = self.bucket.lock().map(|mut b| b.take(now)).unwrap_or(false);
        if !allowed {
            debug!(peer = %id, "credential lookup rate exhausted");
            return cached;
        }
        match self.source.lookup(id, self.config.lookup_timeout) {
            Ok(found) => {
                let e = Entry {
                    resolved: found.as_ref().map(|c| self.resolved(c)),
                    ppk: found.as_ref().and_then(|c| c.ppk.clone()),
                    fetched: Instant::now(),
                };
                if let Ok(mut map) = self.entries.write()
                    && (e.resolved.is_some() || map.len() < MAX_ENTRIES)
                {
                    map.insert(id.clone(), e.clone());
                }
                Some(e)
            }
            Err(why) => {
                warn!(peer = %id, error = %why, "credential lookup failed");
                cached
            }
        }
    }
}

impl PeerAuthResolver for CredentialCache {
    fn resolve(&self, peer_id: &IdPayload, certs: &[CertPayload]) -> Option<PeerAuth> {
        let id = Identity::new(peer_id.ty, peer_id.data.clone());
        match self.entry(&id)?.resolved? {
            Resolved::Fixed(a) => Some(a),
            Resolved::Certificate(r) => r.resolve(peer_id, certs),
            Resolved::Unusable => None,
        }
    }
}

/// RFC 8784 3, Table 1 from the store: the PPK whose PPK_ID is the member's, and whether
/// the member must use it (`members.ppk_required`).
impl PpkResolver for CredentialCache {
    fn ppk(&self, peer_id: &IdPayload, ppk_id: &[u8]) -> Option<SecretBytes> {
        let id = Identity::new(peer_id.ty, peer_id.data.clone());
        let ppk = self.entry(&id)?.ppk?;
        (ppk.id == ppk_id).then_some(ppk.secret)
    }

    fn ppk_required(&self, peer_id: &IdPayload) -> bool {
        let id = Identity::new(peer_id.ty, peer_id.data.clone());
        self.entry(&id)
            .and_then(|e| e.ppk)
            .is_some_and(|p| p.required)
    }
}

type Request = (
    Identity,
    SyncSender<Result<Option<MemberCredential>, String>>,
);

/// Looks members up on a thread of its own with its own runtime and store connection.
pub struct StoreLoader {
    tx: Mutex<SyncSender<Request>>,
}

impl StoreLoader {
    /// Opens a second connection to the store at `url` (master key read from `key_path`)
    /// on a new thread; fails when that store cannot be opened.
    pub fn start(url: String, key_path: PathBuf) -> Result<Self, String> {
        let (tx, rx) = mpsc::sync_channel::<Request>(64);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        std::thread::Builder::new()
            .name("gcks-credentials".into())
            .spawn(move || Self::serve(url, key_path, rx, ready_tx))
            .map_err(|e| format!("cannot start the credential loader: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self { tx: Mutex::new(tx) }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the credential loader stopped".into()),
        }
    }

    fn serve(
        url: String,
        key_path: PathBuf,
        rx: Receiver<Request>,
        ready: mpsc::Sender<Result<(), String>>,
    ) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready.send(Err(format!("credential loader runtime: {e}")));
                return;
            }
        };
        let opts = gikev2_policy::StoreOptions {
            max_connections: 1,
            ..Default::default()
        };
        let store = rt.block_on(async {
            let key = MasterKey::load(&key_path).map_err(|e| e.to_string())?;
            Store::open_with(&url, key, &opts)
                .await
                .map_err(|e| e.to_string())
        });
        let store = match store {
            Ok(s) => {
                let _ = ready.send(Ok(()));
                s
            }
            Err(e) => {
                let _ = ready.send(Err(format!("credential loader: {e}")));
                return;
            }
        };
        info!("credential loader ready");
        while let Ok((id, reply)) = rx.recv() {
            let r = rt
                .block_on(store.member_credential(&id))
                .map_err(|e| e.to_string());
            let _ = reply.send(r);
        }
        rt.block_on(store.close());
    }
}

impl CredentialSource for StoreLoader {
    fn lookup(
        &self,
        identity: &Identity,
        timeout: Duration,
    ) -> Result<Option<MemberCredential>, String> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.tx
            .lock()
            .map_err(|_| "credential loader poisoned".to_string())?
            .try_send((identity.clone(), tx))
            .map_err(|_| "credential loader busy or stopped".to_string())?;
        rx.recv_timeout(timeout)
            .map_err(|_| format!("no answer from the store within {timeout:?}"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gikev2_policy::{CredentialKind, Member, MemberId};
    use gikev2_proto::crypto::SecretBytes;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A source with a fixed member table that counts lookups.
    struct Table {
        members: Mutex<HashMap<Identity, SecretBytes>>,
        lookups: AtomicUsize,
    }

    impl CredentialSource for Table {
        fn lookup(&self, id: &Identity, _: Duration) -> Result<Option<MemberCredential>, String> {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            Ok(self
                .members
                .lock()
                .unwrap()
                .get(id)
                .map(|psk| MemberCredential {
                    member: Member {
                        id: MemberId(1),
                        identity: id.clone(),
                        name: None,
                        credential: CredentialKind::Psk,
                        created: 0,
                        ppk_id: None,
                        ppk_required: false,
                    },
                    credential: Credential::Psk(psk.clone()),
                    ppk: None,
                }))
        }
    }

    fn table() -> Arc<Table> {
        Arc::new(Table {
            members: Mutex::new(HashMap::new()),
            lookups: AtomicUsize::new(0),
        })
    }

    fn psk_of(a: Option<PeerAuth>) -> Option<Vec<u8>> {
        match a? {
            PeerAuth::Psk(p) => Some(p.as_bytes().to_vec()),
            PeerAuth::PublicKey { .. } => None,
        }
    }

    #[test]
    fn a_miss_is_looked_up_and_then_served_from_memory() {
        let t = table();
        let cache = CredentialCache::new(t.clone(), CacheConfig::default());
        let id = IdPayload::fqdn("gm1.example").unwrap();
        assert!(cache.resolve(&id, &[]).is_none());
        assert_eq!(t.lookups.load(Ordering::SeqCst), 1);
        // Remembered as unknown: no second lookup within the negative TTL.
        assert!(cache.resolve(&id, &[]).is_none());
        assert_eq!(t.lookups.load(Ordering::SeqCst), 1);

        let cache = CredentialCache::new(t.clone(), CacheConfig::default());
        t.members.lock().unwrap().insert(
            Identity::fqdn("gm1.example"),
            SecretBytes::from_slice(b"k1"),
        );
        assert_eq!(psk_of(cache.resolve(&id, &[])).as_deref(), Some(&b"k1"[..]));
        assert_eq!(psk_of(cache.resolve(&id, &[])).as_deref(), Some(&b"k1"[..]));
        assert_eq!(
            t.lookups.load(Ordering::SeqCst),
            2,
            "second answer from memory"
        );
    }

    #[test]
    fn expired_entries_are_reloaded_and_lookups_are_rate_limited() {
        let t = table();
        t.members.lock().unwrap().insert(
            Identity::fqdn("gm1.example"),
            SecretBytes::from_slice(b"old"),
        );
        let cfg = CacheConfig {
            ttl: Duration::ZERO,
            negative_ttl: Duration::ZERO,
            lookups_per_second: 1,
            ..CacheConfig::default()
        };
        let cache = CredentialCache::new(t.clone(), cfg);
        let id = IdPayload::fqdn("gm1.example").unwrap();
        assert_eq!(
            psk_of(cache.resolve(&id, &[])).as_deref(),
            Some(&b"old"[..])
        );
        t.members.lock().unwrap().insert(
            Identity::fqdn("gm1.example"),
            SecretBytes::from_slice(b"new"),
        );
        // TTL zero: every call looks up again while the budget (burst 2) lasts.
        assert_eq!(
            psk_of(cache.resolve(&id, &[])).as_deref(),
            Some(&b"new"[..])
        );
        assert_eq!(t.lookups.load(Ordering::SeqCst), 2);
        // Budget exhausted: the stale entry answers, no lookup.
        t.members.lock().unwrap().clear();
        assert_eq!(
            psk_of(cache.resolve(&id, &[])).as_deref(),
            Some(&b"new"[..])
        );
        assert_eq!(t.lookups.load(Ordering::SeqCst), 2);
        // An identity never seen is refused without a lookup while the budget is empty.
        assert!(
            cache
                .resolve(&IdPayload::fqdn("x.example").unwrap(), &[])
                .is_none()
        );
        assert_eq!(t.lookups.load(Ordering::SeqCst), 2);
    }
}
