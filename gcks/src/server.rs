//! The GCKS runtime: UDP sockets around the sans-IO [`Endpoint`] (STYLE Q6: the runtime only
//! drives). One task owns the endpoint; one task per socket receives (stripping the non-ESP
//! marker and applying the per-source IKE_SA_INIT limit, so a flood is shed before it queues
//! for the endpoint); registration decisions
//! run as their own tasks so a slow policy lookup never stalls the endpoint.
//!
//! Registration decisions come back as a [`Verdict`]: the [`Decision`] for the member and
//! whether its IKE SA must stay open. By convention the GCKS closes the registration IKE
//! SA (RFC 9838 2.3.3, 2.3.4: "after a short period of time the GCKS SHOULD close the IKE
//! SA"); with [`ServeConfig::ike_idle_close`] set, an IKE SA with no pending request is
//! deleted (INFORMATIONAL Delete) that long after its last registration exchange, unless
//! the registrar asked to keep it (in-band rekey, or a member that got no Rekey SA and
//! would otherwise have to consider itself excluded, 2.3.3).
//!
//! Failed authentications are reported to the registrar with the identity the peer
//! claimed ([`AuthFailure`]): the server wraps the configured [`PeerAuthResolver`] to see
//! which identity each GSA_AUTH presented, and drains the endpoint's events after every
//! datagram so that a failure is matched to the datagram that caused it.
//!
//! Ports: 500 and 4500 (RFC 7296 2.23; 4500 carries the four-octet non-ESP marker, RFC 3948)
//! and 848 (GDOI's port, RFC 9838 2.1.1). The IKE SA behaves the same whichever port it
//! arrived on (RFC 9838 2.1.1, R003): the port only decides the framing.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gikev2_policy::Identity;
use gikev2_proto::crypto::{CryptoError, SystemRandom, keywrap::KeyWrapKey};
use gikev2_proto::group::{BuildContext, GroupState, build_inband_rekey};
use gikev2_proto::ike::{
    CloseReason, Decision, Endpoint, EndpointConfig, Event, IkeConfig, PeerAuth, PeerAuthResolver,
    RegistrationRequest, SaHandle,
};
use gikev2_proto::wire::cert::CertPayload;
use gikev2_proto::wire::delete::DeletePayload;
use gikev2_proto::wire::header::{Port4500, classify_port_4500, with_non_esp_marker};
use gikev2_proto::wire::id::IdPayload;
use tokio::net::UdpSocket;

use crate::udp::IkeSocket;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// The NAT-T port, whose datagrams carry the non-ESP marker (RFC 3948 2.2).
pub use gikev2_proto::ike::NAT_T_PORT;
/// Largest datagram we read.
const MAX_DATAGRAM: usize = 65_535;
/// Datagrams processed per wake-up before timers and decisions get a turn (STYLE Q6).
const WORK_BUDGET: usize = 64;
/// A datagram from a reader: source, the address it was sent to, IKE message.
type Received = (SocketAddr, SocketAddr, Vec<u8>);

/// What the runtime needs besides the IKE configuration.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Addresses to bind: typically 0.0.0.0 and [::] on ports 500, 4500 and 848.
    pub listen: Vec<SocketAddr>,
    pub endpoint: EndpointConfig,
    /// New IKE_SA_INIT requests accepted per second from one source address (burst 2x).
    pub init_rate_per_source: u32,
    /// Delete an IKE SA this long after its last registration exchange, unless the
    /// registrar asked to keep it ([`Verdict::keep_ike_sa`]). `None` keeps every IKE SA
    /// until the member deletes it (`gcks serve` always sets a value).
    pub ike_idle_close: Option<Duration>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: vec![
                SocketAddr::from(([0, 0, 0, 0], 500)),
                SocketAddr::from(([0, 0, 0, 0], NAT_T_PORT)),
                SocketAddr::from(([0, 0, 0, 0], 848)),
            ],
            endpoint: EndpointConfig::default(),
            init_rate_per_source: 20,
            ike_idle_close: None,
        }
    }
}

/// A registration request handed to the policy side.
pub struct RegistrationContext {
    pub peer_id: IdPayload,
    pub request: RegistrationRequest,
    pub remote: SocketAddr,
    /// The IKE SA's default key wrap key, to wrap SA keys for this member (RFC 9838 3.1.1).
    pub kwk: KeyWrapKey,
    /// The IKE SA included a post-quantum key exchange (ML-KEM, RFC 9370): what a group
    /// with `require_pq_ike` asks for (RFC 9838 6.2, R129).
    pub post_quantum_ke: bool,
    /// A PPK was mixed into the IKE SA's keys (RFC 8784), so GSK_w is PPK-protected.
    pub ppk_used: bool,
}

/// A registration decision and what it means for the member's IKE SA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    /// Keep the IKE SA open after this exchange: the group is rekeyed in-band over it
    /// (RFC 9838 2.4.2), or the member got no Rekey SA (2.3.3: without GIKE_UPDATE policy
    /// a member whose IKE SA closes must consider itself excluded).
    pub keep_ike_sa: bool,
    /// The member is rekeyed in-band: new keys of its group reach it over this IKE SA
    /// with GSA_INBAND_REKEY ([`InbandPusher`], RFC 9838 2.4.2).
    pub inband: Option<InbandMember>,
}

/// What the server remembers of a member rekeyed in-band, to build its GSA_INBAND_REKEY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InbandMember {
    /// It registered as a sender (RFC 9838 2.3.3): its TEKs are installed outbound.
    pub sender: bool,
}

/// A group's new key state, for every member of the group rekeyed in-band over an IKE
/// SA of this server (RFC 9838 2.4.2).
#[derive(Debug, Clone)]
pub struct InbandPush {
    /// The group (IDg).
    pub group: IdPayload,
    /// The state each member gets, built for it as a registration would be (2.4.2.1).
    pub state: Arc<GroupState>,
    /// Unix time, on the clock of the state's expiry times.
    pub now: u64,
    /// The group's SAs are in transport mode: USE_TRANSPORT_MODE goes with the GSA and
    /// KD, as in the registration response (RFC 9838 2.4.2.1, 2.3.4).
    pub transport_mode: bool,
    /// The identities authorized for the group now. A member whose authorization was
    /// withdrawn since it registered gets no new keys: it is sent the Delete of the whole
    /// Group SA instead (RFC 9838 2.4.3, Figure 13; 4.6, protocol 0), after which it
    /// registers again and is refused.
    pub authorized: Arc<HashSet<Identity>>,
}

/// Hands [`InbandPush`]es to a running [`Server`] ([`Server::inband_pusher`]).
#[derive(Debug, Clone)]
pub struct InbandPusher(mpsc::Sender<InbandPush>);

impl InbandPusher {
    /// Queues `push` for the server; false once the server stopped.
    pub async fn push(&self, push: InbandPush) -> bool {
        self.0.send(push).await.is_ok()
    }
}

/// An initiator failed authentication (the responder sent AUTHENTICATION_FAILED).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    pub remote: SocketAddr,
    /// The identity (IDi) it presented, when the request got that far.
    pub claimed: Option<IdPayload>,
    /// Whether a credential was found for that identity: `false` means an unknown
    /// identity or a refused certificate, `true` an AUTH payload that did not verify
    /// (a wrong PSK or key).
    pub credential_found: bool,
}

/// Decides registrations: the GCKS's policy (the SQL store, or a fixed policy in tests).
pub trait Registrar: Send + Sync + 'static {
    fn decide(&self, ctx: RegistrationContext) -> impl Future<Output = Decision> + Send;

    /// [`Registrar::decide`] plus whether the IKE SA must stay open. The default keeps
    /// nothing open: the decision of `decide`.
    fn register(&self, ctx: RegistrationContext) -> impl Future<Output = Verdict> + Send {
        async move {
            Verdict {
                decision: self.decide(ctx).await,
                keep_ike_sa: false,
                inband: None,
            }
        }
    }

    /// A member left a group, or rejected its policy, with GSA_REGISTRATION carrying IDg
    /// and the error notify `notify` (RFC 9838 2.3.2, Figure 8; 2.3.3).
    fn left(
        &self,
        _peer_id: IdPayload,
        _group: IdPayload,
        _notify: gikev2_proto::registry::NotifyType,
    ) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// An initiator failed authentication (for the audit log).
    fn authentication_failed(&self, _failure: AuthFailure) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// What the credential resolver saw during one `Endpoint::handle` call.
type Claimed = Arc<Mutex<Option<(IdPayload, bool)>>>;

/// Wraps the configured resolver to remember the identity each authentication
/// presented (the endpoint runs on one task, so "the last call" belongs to the datagram
/// being handled).
struct RecordingResolver {
    inner: Arc<dyn PeerAuthResolver>,
    seen: Claimed,
}

impl PeerAuthResolver for RecordingResolver {
    fn resolve(&self, peer_id: &IdPayload, certs: &[CertPayload]) -> Option<PeerAuth> {
        let found = self.inner.resolve(peer_id, certs);
        if let Ok(mut s) = self.seen.lock() {
            *s = Some((peer_id.clone(), found.is_some()));
        }
        found
    }
}

/// Per-IKE-SA bookkeeping of the runtime: pending decisions and the idle close. Idle
/// deadlines sit in a heap with lazy invalidation, so many idle SAs cost nothing per
/// wake-up.
#[derive(Default)]
struct SaTracker {
    /// SAs waiting for the registrar; never closed while waiting.
    pending: HashSet<SaHandle>,
    /// SAs the registrar asked to keep open, with the groups that need them.
    kept: HashMap<SaHandle, HashSet<IdPayload>>,
    /// By group: the SAs of its members rekeyed in-band (RFC 9838 2.4.2).
    inband: HashMap<IdPayload, HashMap<SaHandle, InbandMember>>,
    /// When each idle SA gets deleted (the truth; `heap` may hold stale entries).
    idle_until: HashMap<SaHandle, Instant>,
    heap: BinaryHeap<Reverse<(Instant, SaHandle)>>,
}

impl SaTracker {
    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((t, h))) = self.heap.peek().copied() {
            if self.idle_until.get(&h) == Some(&t) {
                return Some(t);
            }
            self.heap.pop();
        }
        None
    }

    /// After an exchange on `h`: (re)arm the idle timer unless the SA must stay.
    fn touched(&mut self, h: SaHandle, now: Instant, idle: Option<Duration>) {
        let Some(idle) = idle else { return };
        if self.pending.contains(&h) || self.kept.get(&h).is_some_and(|g| !g.is_empty()) {
            self.idle_until.remove(&h);
        } else {
            let t = now + idle;
            self.idle_until.insert(h, t);
            self.heap.push(Reverse((t, h)));
        }
    }

    fn forget(&mut self, h: SaHandle) {
        self.pending.remove(&h);
        if let Some(groups) = self.kept.remove(&h) {
            for g in groups {
                self.left(h, &g);
            }
        }
        self.idle_until.remove(&h);
    }

    /// The member of `h` no longer needs its IKE SA for `group`.
    fn left(&mut self, h: SaHandle, group: &IdPayload) {
        if let Some(g) = self.kept.get_mut(&h) {
            g.remove(group);
        }
        if let Some(members) = self.inband.get_mut(group) {
            members.remove(&h);
            if members.is_empty() {
                self.inband.remove(group);
            }
        }
    }

    /// SAs whose idle time ran out.
    fn due(&mut self, now: Instant) -> Vec<SaHandle> {
        let mut due = Vec::new();
        while let Some(Reverse((t, h))) = self.heap.peek().copied() {
            if t > now {
                break;
            }
            self.heap.pop();
            if self.idle_until.get(&h) == Some(&t) {
                self.idle_until.remove(&h);
                due.push(h);
            }
        }
        due
    }
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A bound server; [`Server::run`] drives it.
pub struct Server<R: Registrar> {
    sockets: Vec<Arc<IkeSocket>>,
    ike: IkeConfig,
    config: ServeConfig,
    registrar: Arc<R>,
    claimed: Claimed,
    inband_tx: mpsc::Sender<InbandPush>,
    inband_rx: mpsc::Receiver<InbandPush>,
}

/// The `local_address` column of `/proc/net/udp` (IPv4) or `/proc/net/udp6` for `addr`:
/// each 32-bit word of the address as the kernel holds it (network order) printed as a
/// native integer, then the port, in upper-case hex.
fn proc_net_udp_local(addr: SocketAddr) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let octets: Vec<u8> = match addr.ip() {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    for w in octets.chunks_exact(4) {
        let _ = write!(s, "{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
    let _ = write!(s, ":{:04X}", addr.port());
    s
}

/// Whether a UDP socket of this network namespace is bound to exactly `addr` (same
/// address, same port). The server's sockets set SO_REUSEADDR, so that a `gm` on the same
/// host can bind a group address on port 848 beside a wildcard socket; but that also lets
/// a second `gcks serve` bind the very same address and port, and Linux then hands every
/// datagram to the newest socket: the first server would go silently deaf. Port 0 (any
/// free port) never collides. Where `/proc/net` cannot be read, no socket is assumed.
fn udp_address_taken(addr: SocketAddr) -> bool {
    if addr.port() == 0 {
        return false;
    }
    let table = if addr.is_ipv6() {
        "/proc/net/udp6"
    } else {
        "/proc/net/udp"
    };
    let Ok(text) = std::fs::read_to_string(table) else {
        return false;
    };
    let want = proc_net_udp_local(addr);
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .any(|local| local == want)
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    if udp_address_taken(addr) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another socket is already bound to this address and port (is another `gcks \
             serve` running? see `ss -ulpn`)",
        ));
    }
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Bind v4 and v6 separately, as strongSwan does.
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// What a registration task hands back to the endpoint task.
struct Decided {
    handle: SaHandle,
    group: IdPayload,
    verdict: Verdict,
}

impl<R: Registrar> Server<R> {
    pub fn bind(mut ike: IkeConfig, config: ServeConfig, registrar: R) -> Result<Self, ServeError> {
        let mut sockets = Vec::new();
        for &addr in &config.listen {
            let s = bind_udp(addr)
                .and_then(|s| IkeSocket::new(Arc::new(s)))
                .map_err(|source| ServeError::Bind { addr, source })?;
            sockets.push(Arc::new(s));
        }
        let claimed: Claimed = Arc::new(Mutex::new(None));
        ike.peer_auth = Arc::new(RecordingResolver {
            inner: ike.peer_auth.clone(),
            seen: claimed.clone(),
        });
        let (inband_tx, inband_rx) = mpsc::channel(64);
        Ok(Self {
            sockets,
            ike,
            config,
            registrar: Arc::new(registrar),
            claimed,
            inband_tx,
            inband_rx,
        })
    }

    /// Where the in-band rekey sender hands new group states to this server, which sends
    /// each member of the group its GSA_INBAND_REKEY (RFC 9838 2.4.2).
    pub fn inband_pusher(&self) -> InbandPusher {
        InbandPusher(self.inband_tx.clone())
    }

    /// The bound addresses (with the ports the OS chose for port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets.iter().map(|s| s.bound()).collect()
    }

    /// The bound sockets, shared: the rekey sender sends GSA_REKEY from the IKE port
    /// ([`crate::rekey`]).
    pub fn sockets(&self) -> Vec<Arc<UdpSocket>> {
        self.sockets.iter().map(|s| s.socket.clone()).collect()
    }

    /// Serves until `shutdown` completes.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let (dg_tx, mut dg_rx) = mpsc::channel::<Received>(1024);
        let (dec_tx, mut dec_rx) = mpsc::channel::<Decided>(256);
        // The per-source IKE_SA_INIT limit is applied by the readers, so that a flood is
        // shed before it queues for the endpoint (which does the public-key work).
        let limiter = Arc::new(Mutex::new(RateLimiter::new(
            self.config.init_rate_per_source,
        )));
        let mut readers = Vec::new();
        for s in &self.sockets {
            let s = s.clone();
            let tx = dg_tx.clone();
            let limiter = limiter.clone();
            let nat_t = s.bound().port() == NAT_T_PORT;
            readers.push(tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                loop {
                    match s.recv(&mut buf).await {
                        Ok((n, from, to)) => {
                            let data = &buf[..n];
                            let ike = if nat_t {
                                match classify_port_4500(data) {
                                    Ok(Port4500::Ike(m)) => m,
                                    _ => continue, // ESP or keepalive: not ours
                                }
                            } else {
                                data
                            };
                            if Endpoint::is_init_request(ike) {
                                let allowed = limiter
                                    .lock()
                                    .map(|mut l| l.allow(from.ip(), Instant::now()))
                                    .unwrap_or(true);
                                if !allowed {
                                    debug!(%from, "IKE_SA_INIT rate limit");
                                    continue;
                                }
                            }
                            if tx.send((from, to, ike.to_vec())).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => debug!(error = %e, "recv_from"),
                    }
                }
            }));
        }
        drop(dg_tx);
        let mut rng = SystemRandom::new();
        let local = self
            .sockets
            .first()
            .map_or(SocketAddr::from(([0; 4], 0)), |s| s.bound());
        let mut endpoint = Endpoint::new(
            self.ike.clone(),
            self.config.endpoint.clone(),
            local,
            Instant::now(),
            &mut rng,
        );
        let mut tracker = SaTracker::default();
        let idle = self.config.ike_idle_close;
        tokio::pin!(shutdown);
        loop {
            let timeout = [endpoint.poll_timeout(), tracker.next_deadline()]
                .into_iter()
                .flatten()
                .min();
            let sleep = async {
                match timeout {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => break,
                Some((from, to, data)) = dg_rx.recv() => {
                    let now = Instant::now();
                    let mut batch = vec![(from, to, data)];
                    while batch.len() < WORK_BUDGET {
                        match dg_rx.try_recv() {
                            Ok(d) => batch.push(d),
                            Err(_) => break,
                        }
                    }
                    // The readers stripped the non-ESP marker and applied the rate limit.
                    for (from, to, ike) in batch {
                        endpoint.handle_at(&ike, from, to, now, &mut rng);
                        let claimed = self.claimed.lock().ok().and_then(|mut c| c.take());
                        // Events now, so an authentication failure meets its claim.
                        let origin = Some((from, claimed));
                        self.drain_events(&mut endpoint, &mut tracker, &dec_tx, origin, now);
                    }
                }
                Some(d) = dec_rx.recv() => {
                    let now = Instant::now();
                    tracker.pending.remove(&d.handle);
                    if d.verdict.keep_ike_sa && endpoint.sa(d.handle).is_some() {
                        if let Some(m) = d.verdict.inband {
                            tracker
                                .inband
                                .entry(d.group.clone())
                                .or_default()
                                .insert(d.handle, m);
                        }
                        tracker.kept.entry(d.handle).or_default().insert(d.group);
                    }
                    if endpoint.sa(d.handle).is_some() {
                        endpoint.decide(d.handle, d.verdict.decision, now, &mut rng);
                        tracker.touched(d.handle, now, idle);
                    }
                }
                Some(p) = self.inband_rx.recv() => {
                    let now = Instant::now();
                    let idle = self.config.ike_idle_close;
                    push_inband(&mut endpoint, &mut tracker, &p, idle, now, &mut rng);
                }
                _ = sleep => {
                    let now = Instant::now();
                    endpoint.handle_timeout(now, &mut rng);
                    for h in tracker.due(now) {
                        if tracker.pending.contains(&h) {
                            continue;
                        }
                        debug!(handle = h.0, "closing the idle registration IKE SA");
                        endpoint.with_sa(h, now, |sa| sa.delete(now, &mut rng));
                    }
                }
            }
            self.drain_events(&mut endpoint, &mut tracker, &dec_tx, None, Instant::now());
            while let Some(d) = endpoint.poll_datagram() {
                // The socket the datagram leaves from: the one bound to its local address
                // (the port the request came in on, or the SA's after NAT traversal moved
                // it to 4500, RFC 7296 2.23).
                let Some(s) = self.socket_for(d.local) else {
                    debug!(local = %d.local, "no socket for this local address");
                    continue;
                };
                let out = if s.bound().port() == NAT_T_PORT {
                    with_non_esp_marker(&d.data)
                } else {
                    d.data
                };
                if let Err(e) = s.send(&out, d.remote, d.local).await {
                    debug!(error = %e, to = %d.remote, "send");
                }
            }
            if let Ok(mut l) = limiter.lock() {
                l.prune(Instant::now());
            }
        }
        for r in readers {
            r.abort();
        }
    }

    /// The socket bound to `local`: same family and port, and the same address unless
    /// bound to the wildcard one; else the first of the family.
    fn socket_for(&self, local: SocketAddr) -> Option<&IkeSocket> {
        let family = |s: &&Arc<IkeSocket>| s.bound().is_ipv4() == local.is_ipv4();
        self.sockets
            .iter()
            .filter(family)
            .find(|s| {
                let b = s.bound();
                b.port() == local.port() && (b.ip().is_unspecified() || b.ip() == local.ip())
            })
            .or_else(|| self.sockets.iter().find(family))
            .map(|s| &**s)
    }

    /// Handles every event the endpoint has: registration requests go to the registrar
    /// on their own task, leaves and authentication failures too.
    fn drain_events(
        &self,
        endpoint: &mut Endpoint,
        tracker: &mut SaTracker,
        dec_tx: &mpsc::Sender<Decided>,
        origin: Option<(SocketAddr, Option<(IdPayload, bool)>)>,
        now: Instant,
    ) {
        let idle = self.config.ike_idle_close;
        let (from, mut claimed) = match origin {
            Some((from, claimed)) => (Some(from), claimed),
            None => (None, None),
        };
        while let Some((h, e)) = endpoint.poll_event() {
            match e {
                Event::RegistrationRequested {
                    peer_id,
                    request,
                    kwk,
                } => {
                    let Some(sa) = endpoint.sa(h) else { continue };
                    let remote = sa.remote();
                    let (post_quantum_ke, ppk_used) = (sa.post_quantum_ke(), sa.ppk_used());
                    let group = request.group.clone();
                    tracker.pending.insert(h);
                    tracker.idle_until.remove(&h);
                    // The GSK_w of the IKE SA the request came on, which carries the
                    // answer even if a rekey replaces it meanwhile (RFC 9838 3.1.1).
                    let kwk = match kwk
                        .ok_or(CryptoError::NoProposalChosen(
                            "no Key Wrap Algorithm negotiated",
                        ))
                        .and_then(|k| k.key())
                    {
                        Ok(k) => k,
                        Err(err) => {
                            warn!(error = %err, "no key wrap key; refusing");
                            let _ = dec_tx.try_send(Decided {
                                handle: h,
                                group,
                                verdict: Verdict {
                                    decision: Decision::Refuse(
                                        gikev2_proto::registry::NotifyType::NoProposalChosen,
                                    ),
                                    keep_ike_sa: false,
                                    inband: None,
                                },
                            });
                            continue;
                        }
                    };
                    let registrar = self.registrar.clone();
                    let tx = dec_tx.clone();
                    tokio::spawn(async move {
                        let verdict = registrar
                            .register(RegistrationContext {
                                peer_id,
                                request,
                                remote,
                                kwk,
                                post_quantum_ke,
                                ppk_used,
                            })
                            .await;
                        let _ = tx
                            .send(Decided {
                                handle: h,
                                group,
                                verdict,
                            })
                            .await;
                    });
                }
                Event::LeaveRequested {
                    peer_id,
                    group,
                    notify,
                } => {
                    tracker.left(h, &group);
                    tracker.touched(h, now, idle);
                    let registrar = self.registrar.clone();
                    tokio::spawn(async move { registrar.left(peer_id, group, notify).await });
                }
                Event::Established { peer_id } => {
                    let peer = crate::registrar::identity(&peer_id);
                    match from {
                        Some(remote) => info!(%peer, %remote, "member authenticated"),
                        None => info!(%peer, "member authenticated"),
                    }
                }
                Event::Closed(reason) => {
                    debug!(?reason, "IKE SA closed");
                    // The SA is gone by now; a failed GSA_AUTH closes it while its
                    // datagram is handled, so `from` is its peer.
                    let remote = endpoint.sa(h).map(|sa| sa.remote()).or(from);
                    tracker.forget(h);
                    if reason == CloseReason::AuthenticationFailed {
                        let (claimed, credential_found) = match claimed.take() {
                            Some((id, found)) => (Some(id), found),
                            None => (None, false),
                        };
                        let failure = AuthFailure {
                            remote: remote.unwrap_or(SocketAddr::from(([0; 4], 0))),

                            claimed,
                            credential_found,
                        };
                        let registrar = self.registrar.clone();
                        tokio::spawn(async move { registrar.authentication_failed(failure).await });
                    }
                }
                _ => {}
            }
        }
    }
}

/// Sends `push` to every member of its group rekeyed in-band over an IKE SA of
/// `endpoint`: GSA and KD built for that member as a registration would be, wrapped with
/// its IKE SA's default KWK (RFC 9838 2.4.2.1, 3.1.1). An IKE SA busy with another
/// exchange queues it (RFC 7296 2.3, window of one). A member no longer authorized gets
/// the Delete of the whole Group SA instead; its IKE SA is then no longer kept for the
/// group, so the idle close (`idle`) applies to it again.
fn push_inband(
    endpoint: &mut Endpoint,
    tracker: &mut SaTracker,
    push: &InbandPush,
    idle: Option<Duration>,
    now: Instant,
    rng: &mut SystemRandom,
) {
    let Some(members) = tracker.inband.get(&push.group) else {
        debug!(group = %push.group, "no member rekeyed in-band here");
        return;
    };
    let ctx = BuildContext { now: push.now };
    let (mut sent, mut failed) = (0usize, 0usize);
    let mut withdrawn = Vec::new();
    for (&h, m) in members {
        let peer = endpoint.sa(h).and_then(|sa| sa.peer_id().cloned());
        if let Some(peer) =
            peer.filter(|p| !push.authorized.contains(&crate::registrar::identity(p)))
        {
            // RFC 9838 2.4.3 (Figure 13), 4.6: the Delete of the whole Group SA over the
            // member's IKE SA; it drops its SAs after GWP_DTD and registers again.
            endpoint.with_sa(h, now, |sa| {
                sa.inband_delete(vec![DeletePayload::whole_group()], now, rng)
            });
            info!(
                group = %push.group,
                member = %peer,
                "member no longer authorized: excluded by GSA_INBAND_REKEY (Delete of the \
                 whole Group SA) instead of new keys"
            );
            withdrawn.push(h);
            continue;
        }
        let built = endpoint.sa(h).map(|sa| {
            sa.key_wrap_key()
                .map_err(|e| e.to_string())
                .and_then(|kwk| {
                    build_inband_rekey(&push.state, m.sender, &kwk, &ctx).map_err(|e| e.to_string())
                })
        });
        match built {
            Some(Ok((gsa, kd))) => {
                endpoint.with_sa(h, now, |sa| {
                    sa.inband_rekey(gsa, kd, push.transport_mode, now, rng)
                });
                sent += 1;
            }
            Some(Err(e)) => {
                failed += 1;
                warn!(group = %push.group, handle = h.0, error = %e, "GSA_INBAND_REKEY not built");
            }
            None => {}
        }
    }
    for h in withdrawn {
        // Not kept for this group any more: the idle close applies again (unless another
        // group keeps the IKE SA).
        tracker.left(h, &push.group);
        tracker.touched(h, now, idle);
    }
    info!(group = %push.group, members = sent, failed, "GSA_INBAND_REKEY sent");
}

/// A token bucket per source address for new IKE_SA_INIT requests.
struct RateLimiter {
    rate: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
    last_prune: Option<Instant>,
}

impl RateLimiter {
    fn new(per_second: u32) -> Self {
        Self {
            rate: f64::from(per_second.max(1)),
            buckets: HashMap::new(),
            last_prune: None,
        }
    }

    fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let burst = self.rate * 2.0;
        let (tokens, at) = self.buckets.entry(ip).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn prune(&mut self, now: Instant) {
        if self
            .last_prune
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(10))
        {
            return;
        }
        self.last_prune = Some(now);
        let full = Duration::from_secs_f64(2.0);
        self.buckets
            .retain(|_, (_, at)| now.duration_since(*at) < full * 30);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ports_are_ikev2_and_gdoi() {
        // RFC 9838 2.1.1: G-IKEv2 SHOULD use the IKEv2 ports (500, 4500); 848 is allowed.
        let ports: Vec<u16> = ServeConfig::default()
            .listen
            .iter()
            .map(SocketAddr::port)
            .collect();
        assert_eq!(ports, [500, 4500, 848]);
    }

    #[test]
    fn an_address_and_port_already_bound_is_refused() {
        // Another process's socket is the case that matters; one of ours shows the same
        // /proc/net/udp entry.
        let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        assert!(udp_address_taken(addr));
        let e = bind_udp(addr).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
        assert!(e.to_string().contains("another `gcks serve`"), "{e}");
        // Same port, another address: a distinct binding (a gm's group address beside a
        // wildcard socket is the same shape).
        let other = SocketAddr::new(IpAddr::from([127, 0, 0, 2]), addr.port());
        assert!(!udp_address_taken(other));
        drop(held);
        assert!(!udp_address_taken(addr));
    }

    #[test]
    fn proc_net_udp_addresses_are_the_kernels_words() {
        let v4: SocketAddr = "127.0.0.1:5500".parse().unwrap();
        let v6: SocketAddr = "[::1]:848".parse().unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(proc_net_udp_local(v4), "0100007F:157C");
            assert_eq!(
                proc_net_udp_local(v6),
                "00000000000000000000000001000000:0350"
            );
        } else {
            assert_eq!(proc_net_udp_local(v4), "7F000001:157C");
        }
    }

    #[test]
    fn idle_deadlines_rearm_and_skip_kept_and_pending_sas() {
        let mut t = SaTracker::default();
        let t0 = Instant::now();
        let idle = Some(Duration::from_secs(5));
        let (a, b, c) = (SaHandle(1), SaHandle(2), SaHandle(3));
        t.touched(a, t0, idle);
        t.touched(b, t0, idle);
        t.touched(a, t0 + Duration::from_secs(3), idle);
        t.kept
            .entry(c)
            .or_default()
            .insert(IdPayload::key_id(b"g".to_vec()));
        t.touched(c, t0, idle);
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(5)));
        assert_eq!(
            t.due(t0 + Duration::from_secs(5)),
            vec![b],
            "a was re-armed"
        );
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(8)));
        t.pending.insert(a);
        t.touched(a, t0 + Duration::from_secs(4), idle);
        assert_eq!(t.next_deadline(), None, "pending SAs are not closed");
        assert!(t.due(t0 + Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn rate_limiter_allows_a_burst_then_the_rate() {
        let mut l = RateLimiter::new(10);
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let allowed = (0..100).filter(|_| l.allow(ip, t0)).count();
        assert_eq!(allowed, 20, "burst is twice the rate");
        assert!(!l.allow(ip, t0));
        assert!(
            l.allow(ip, t0 + Duration::from_millis(150)),
            "refills at the rate"
        );
        assert!(
            l.allow("192.0.2.2".parse().unwrap(), t0),
            "other sources are not affected"
        );
    }
}
