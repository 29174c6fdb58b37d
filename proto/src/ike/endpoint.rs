//! The responder's endpoint (STYLE Q2, S3): routes datagrams to IKE SAs by SPI, answers
//! new IKE_SA_INIT requests statelessly while under load (COOKIE, RFC 7296 2.6), limits
//! half-open SAs in total and per source address, and gathers transmits, events and timers
//! of all its SAs so a runtime drives one object.
//!
//! Work per call is proportional to what changed: SAs touched since the last poll are
//! kept in a queue, and timers in a heap, so that ten thousand idle SAs cost nothing.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tracing::{debug, info};

use crate::crypto::{PrfAlg, PrfOutput, Random, random_array};
use crate::registry::{ExchangeType, NotifyType, PayloadType};
use crate::wire::header::{Flags, Header};
use crate::wire::message::Message;
use crate::wire::notify::NotifyPayload;
use crate::wire::payload::Payload;

use super::config::IkeConfig;
use super::sa::{Datagram, Decision, Event, IkeSa, InitRefusal};

/// Identifies one IKE SA inside an [`Endpoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SaHandle(pub u64);

/// DoS limits (strongSwan's defaults: cookies past 30 half-open SAs, 5 per address).
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Half-open SAs before every new IKE_SA_INIT must return a COOKIE.
    pub cookie_threshold: usize,
    /// Half-open SAs from one address before that address must return a COOKIE.
    pub cookie_threshold_per_ip: usize,
    /// Half-open SAs beyond which new requests are dropped even with a valid cookie.
    pub max_half_open: usize,
    /// How long one cookie secret is used before a new one (RFC 7296 2.6: "frequently").
    pub cookie_secret_lifetime: Duration,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            cookie_threshold: 30,
            cookie_threshold_per_ip: 5,
            max_half_open: 10_000,
            cookie_secret_lifetime: Duration::from_secs(120),
        }
    }
}

/// Counters an operator reads (`gcks status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointStats {
    pub datagrams: u64,
    pub cookies_sent: u64,
    pub cookies_rejected: u64,
    pub half_open_dropped: u64,
    pub unroutable: u64,
    pub sas_created: u64,
}

struct CookieSecret {
    version: u8,
    secret: [u8; 32],
    previous: Option<(u8, [u8; 32])>,
    rotated_at: Instant,
}

/// The responder endpoint; see the module documentation.
pub struct Endpoint {
    ike: IkeConfig,
    config: EndpointConfig,
    local: SocketAddr,
    /// Boxed: an `IkeSa` is large, and the table moves its values when it grows or
    /// rehashes away the tombstones that SA churn leaves (docs/performance.md).
    sas: HashMap<SaHandle, Box<IkeSa>>,
    /// By our SPI (SPIr), for every message after IKE_SA_INIT.
    by_spi: HashMap<[u8; 8], SaHandle>,
    /// The SPIs each SA is indexed under in `by_spi` (its current and replaced IKE SAs).
    spis_of: HashMap<SaHandle, Vec<[u8; 8]>>,
    /// By (SPIi, initiator address), for retransmitted IKE_SA_INIT requests.
    by_init: HashMap<([u8; 8], SocketAddr), SaHandle>,
    half_open: HashSet<SaHandle>,
    half_open_per_ip: HashMap<IpAddr, usize>,
    next_handle: u64,
    cookie: CookieSecret,
    dirty: VecDeque<SaHandle>,
    dirty_set: HashSet<SaHandle>,
    timers: BinaryHeap<Reverse<(Instant, SaHandle)>>,
    /// Datagrams ready to send: stateless answers and what the SAs queued.
    outgoing: VecDeque<Datagram>,
    events: VecDeque<(SaHandle, Event)>,
    stats: EndpointStats,
}

impl Endpoint {
    pub fn new(
        ike: IkeConfig,
        config: EndpointConfig,
        local: SocketAddr,
        now: Instant,
        rng: &mut dyn Random,
    ) -> Self {
        Self {
            ike,
            config,
            local,
            sas: HashMap::new(),
            by_spi: HashMap::new(),
            spis_of: HashMap::new(),
            by_init: HashMap::new(),
            half_open: HashSet::new(),
            half_open_per_ip: HashMap::new(),
            next_handle: 1,
            cookie: CookieSecret {
                version: 0,
                secret: random_array(rng),
                previous: None,
                rotated_at: now,
            },
            dirty: VecDeque::new(),
            dirty_set: HashSet::new(),
            timers: BinaryHeap::new(),
            outgoing: VecDeque::new(),
            events: VecDeque::new(),
            stats: EndpointStats::default(),
        }
    }

    pub fn stats(&self) -> &EndpointStats {
        &self.stats
    }

    /// IKE SAs currently held (half-open and established).
    pub fn len(&self) -> usize {
        self.sas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sas.is_empty()
    }

    pub fn half_open(&self) -> usize {
        self.half_open.len()
    }

    pub fn sa(&self, h: SaHandle) -> Option<&IkeSa> {
        self.sas.get(&h).map(|sa| &**sa)
    }

    /// Processes one datagram from `remote` to the endpoint's own address (port-4500
    /// marker already stripped).
    pub fn handle(
        &mut self,
        datagram: &[u8],
        remote: SocketAddr,
        now: Instant,
        rng: &mut dyn Random,
    ) {
        self.handle_at(datagram, remote, self.local, now, rng);
    }

    /// Processes one datagram from `remote` that reached us at `local` (port-4500 marker
    /// already stripped). `local` is the address and port the datagram was sent to, as
    /// the socket saw it: NAT detection hashes it (RFC 7296 2.23), and answers leave from
    /// it.
    pub fn handle_at(
        &mut self,
        datagram: &[u8],
        remote: SocketAddr,
        local: SocketAddr,
        now: Instant,
        rng: &mut dyn Random,
    ) {
        self.stats.datagrams += 1;
        let Ok(header) = Header::read_datagram(datagram) else {
            self.stats.unroutable += 1;
            return;
        };
        if header.exchange == ExchangeType::IkeSaInit && header.spi_r == [0; 8] {
            if header.flags.is_response() {
                self.stats.unroutable += 1;
                return;
            }
            if let Some(&h) = self.by_init.get(&(header.spi_i, remote)) {
                self.with_sa(h, now, |sa| {
                    sa.handle_via(datagram, remote, local, now, rng)
                });
                return;
            }
            self.new_sa(datagram, &header, remote, local, now, rng);
            return;
        }
        // Our SPI: SPIr in what the original initiator sends, SPIi in what the original
        // responder sends (RFC 7296 2.2, 3.1); after a rekey we initiated we are the
        // original initiator of the new IKE SA (2.18).
        let ours = if header.flags.is_initiator() {
            header.spi_r
        } else {
            header.spi_i
        };
        match self.by_spi.get(&ours).copied() {
            Some(h) => {
                self.with_sa(h, now, |sa| {
                    sa.handle_via(datagram, remote, local, now, rng)
                });
            }
            None => {
                // RFC 7296 2.21.4 allows INVALID_IKE_SPI here; staying silent gives an
                // attacker nothing to reflect.
                self.stats.unroutable += 1;
            }
        }
    }

    /// Answers the registration request an [`Event::RegistrationRequested`] announced.
    pub fn decide(&mut self, h: SaHandle, decision: Decision, now: Instant, rng: &mut dyn Random) {
        self.with_sa(h, now, |sa| sa.decide(decision, now, rng));
    }

    /// Runs a command on one SA (inband rekey, delete) and keeps the endpoint's
    /// bookkeeping right.
    pub fn with_sa<R>(
        &mut self,
        h: SaHandle,
        now: Instant,
        f: impl FnOnce(&mut IkeSa) -> R,
    ) -> Option<R> {
        let _ = now;
        let sa = self.sas.get_mut(&h)?;
        let r = f(sa);
        if let Some(t) = sa.poll_timeout() {
            self.timers.push(Reverse((t, h)));
        }
        // A rekey (RFC 7296 2.18) gives the SA new SPIs and retires old ones: the handle
        // stays, the index follows.
        let spis = sa.local_spis();
        let known = self.spis_of.entry(h).or_default();
        if *known != spis {
            for old in known.iter().filter(|s| !spis.contains(s)) {
                self.by_spi.remove(old);
            }
            for new in &spis {
                self.by_spi.insert(*new, h);
            }
            *known = spis;
        }
        if self.dirty_set.insert(h) {
            self.dirty.push_back(h);
        }
        Some(r)
    }

    fn new_sa(
        &mut self,
        datagram: &[u8],
        header: &Header,
        remote: SocketAddr,
        local: SocketAddr,
        now: Instant,
        rng: &mut dyn Random,
    ) {
        self.rotate_cookie_secret(now, rng);
        let per_ip = self
            .half_open_per_ip
            .get(&remote.ip())
            .copied()
            .unwrap_or(0);
        let busy = self.half_open.len() >= self.config.cookie_threshold
            || per_ip >= self.config.cookie_threshold_per_ip;
        if busy {
            let Ok(msg) = Message::decode(datagram) else {
                return;
            };
            let Some(ni) = msg.payloads.iter().find_map(|p| match p {
                Payload::Nonce(n) => Some(n.as_bytes().to_vec()),
                _ => None,
            }) else {
                return;
            };
            // RFC 7296 2.6: a valid cookie must be the first payload.
            let presented = match msg.payloads.first() {
                Some(Payload::Notify(n)) if n.ty == NotifyType::Cookie => n.cookie_data().ok(),
                _ => None,
            };
            match presented {
                Some(c) if self.cookie_valid(c, &ni, remote.ip(), &header.spi_i) => {}
                Some(_) => {
                    // A stale or forged cookie: answer with a fresh one (RFC 7296 2.6).
                    self.stats.cookies_rejected += 1;
                    self.send_cookie(&ni, remote, local, &header.spi_i);
                    return;
                }
                None => {
                    self.send_cookie(&ni, remote, local, &header.spi_i);
                    return;
                }
            }
        }
        if self.half_open.len() >= self.config.max_half_open {
            self.stats.half_open_dropped += 1;
            return;
        }
        match IkeSa::respond(self.ike.clone(), datagram, local, remote, now, rng) {
            Ok(sa) => {
                let h = SaHandle(self.next_handle);
                self.next_handle += 1;
                self.by_spi.insert(sa.spis().1, h);
                self.by_init.insert((header.spi_i, remote), h);
                self.half_open.insert(h);
                *self.half_open_per_ip.entry(remote.ip()).or_default() += 1;
                self.sas.insert(h, Box::new(sa));
                self.stats.sas_created += 1;
                self.with_sa(h, now, |_| ());
            }
            Err(InitRefusal::Reply(r)) => self.outgoing.push_back(Datagram::new(remote, local, r)),
            Err(InitRefusal::Drop) => {}
        }
    }

    fn rotate_cookie_secret(&mut self, now: Instant, rng: &mut dyn Random) {
        let elapsed = now.duration_since(self.cookie.rotated_at);
        if elapsed >= self.config.cookie_secret_lifetime {
            let c = &mut self.cookie;
            // The previous secret stays valid for one lifetime after it is replaced, so a
            // cookie issued just before a rotation still works; never longer.
            c.previous =
                (elapsed < 2 * self.config.cookie_secret_lifetime).then_some((c.version, c.secret));
            c.version = c.version.wrapping_add(1);
            c.secret = random_array(rng);
            c.rotated_at = now;
        }
    }

    /// `Cookie = <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>)` (RFC 7296 2.6),
    /// with HMAC-SHA2-256 keyed by the secret as the hash.
    fn cookie_mac(secret: &[u8; 32], ni: &[u8], ip: IpAddr, spi_i: &[u8; 8]) -> PrfOutput {
        let ip_bytes = match ip {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        PrfAlg::HmacSha2_256.prf(secret, &[ni, &ip_bytes, spi_i])
    }

    fn cookie_for(
        version: u8,
        secret: &[u8; 32],
        ni: &[u8],
        ip: IpAddr,
        spi_i: &[u8; 8],
    ) -> Vec<u8> {
        let mac = Self::cookie_mac(secret, ni, ip, spi_i);
        let mut c = Vec::with_capacity(1 + mac.len());
        c.push(version);
        c.extend_from_slice(mac.as_bytes());
        c
    }

    fn cookie_valid(&self, cookie: &[u8], ni: &[u8], ip: IpAddr, spi_i: &[u8; 8]) -> bool {
        let Some((&version, mac)) = cookie.split_first() else {
            return false;
        };
        let secret = if version == self.cookie.version {
            &self.cookie.secret
        } else {
            match &self.cookie.previous {
                Some((v, s)) if *v == version => s,
                _ => return false,
            }
        };
        Self::cookie_mac(secret, ni, ip, spi_i).ct_eq(mac)
    }

    fn send_cookie(&mut self, ni: &[u8], remote: SocketAddr, local: SocketAddr, spi_i: &[u8; 8]) {
        let c = Self::cookie_for(
            self.cookie.version,
            &self.cookie.secret,
            ni,
            remote.ip(),
            spi_i,
        );
        let Ok(n) = NotifyPayload::cookie(&c) else {
            return;
        };
        let header = Header::new(
            *spi_i,
            [0; 8],
            ExchangeType::IkeSaInit,
            Flags::new(false, true),
            0,
        );
        self.stats.cookies_sent += 1;
        debug!(%remote, "IKE_SA_INIT answered with a COOKIE");
        let reply = Message::new(header, vec![Payload::Notify(n)]).encode();
        self.outgoing.push_back(Datagram::new(remote, local, reply));
    }

    /// Collects what the SAs touched since the last poll produced.
    fn collect(&mut self) {
        while let Some(h) = self.dirty.pop_front() {
            self.dirty_set.remove(&h);
            let Some(sa) = self.sas.get_mut(&h) else {
                continue;
            };
            // Half-open bookkeeping and the IKE_SA_INIT index use the address the SA
            // was created with; NAT traversal may have moved it since.
            let remote = sa.origin();
            while let Some(d) = sa.poll_datagram() {
                self.outgoing.push_back(d);
            }
            while let Some(e) = sa.poll_event() {
                if matches!(e, Event::Established { .. } | Event::Closed(_))
                    && self.half_open.remove(&h)
                    && let Some(n) = self.half_open_per_ip.get_mut(&remote.ip())
                {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.half_open_per_ip.remove(&remote.ip());
                    }
                }
                self.events.push_back((h, e));
            }
            if sa.is_closed() {
                for s in self.spis_of.remove(&h).unwrap_or_default() {
                    self.by_spi.remove(&s);
                }
                if sa.rekeys() == 0 {
                    self.by_init.remove(&(sa.spis().0, remote));
                } else {
                    // Keyed by the SPIi of IKE_SA_INIT, which a rekey replaced.
                    self.by_init.retain(|_, v| *v != h);
                }
                self.sas.remove(&h);
                info!(handle = h.0, "IKE SA removed");
            }
        }
    }

    /// The next datagram to send, with its destination.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.poll_datagram().map(|d| (d.remote, d.data))
    }

    /// The next datagram to send, with its destination and the local address it leaves
    /// from (the socket it came in on, for an answer).
    pub fn poll_datagram(&mut self) -> Option<Datagram> {
        if self.outgoing.is_empty() {
            self.collect();
        }
        self.outgoing.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<(SaHandle, Event)> {
        if self.events.is_empty() {
            self.collect();
        }
        self.events.pop_front()
    }

    /// When [`Endpoint::handle_timeout`] must next be called.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        // Drop heap entries for SAs that are gone or whose timer moved later.
        while let Some(Reverse((t, h))) = self.timers.peek().copied() {
            match self.sas.get(&h).and_then(|sa| sa.poll_timeout()) {
                Some(cur) if cur <= t => return Some(t),
                Some(cur) => {
                    self.timers.pop();
                    self.timers.push(Reverse((cur, h)));
                }
                None => {
                    self.timers.pop();
                }
            }
        }
        None
    }

    pub fn handle_timeout(&mut self, now: Instant, rng: &mut dyn Random) {
        while let Some(Reverse((t, h))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let due = self
                .sas
                .get(&h)
                .and_then(|sa| sa.poll_timeout())
                .is_some_and(|cur| cur <= now);
            if due {
                self.with_sa(h, now, |sa| sa.handle_timeout(now, rng));
            }
        }
    }

    /// True when `datagram` looks like an IKE_SA_INIT request (for a runtime's rate limits).
    pub fn is_init_request(datagram: &[u8]) -> bool {
        Header::read_datagram(datagram).is_ok_and(|h| {
            h.exchange == ExchangeType::IkeSaInit
                && !h.flags.is_response()
                && h.next_payload != PayloadType::Sk
        })
    }
}
