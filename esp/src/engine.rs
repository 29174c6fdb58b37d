//! The shared ESP engine: one SAD, one outbound SPD, every group's SAs, and the per-packet
//! entry points. Sans-IO: packets come in as bytes with `now`, results go into the caller's
//! buffer; lifetime events are polled.
//!
//! Contract (STYLE Q1):
//! - commands: [`Engine::install`], [`Engine::delete`], [`Engine::remove`],
//!   [`Engine::spd`] (`replace`/`update`);
//! - data path (any number of threads, `&self`): [`Engine::classify`], [`Engine::seal`],
//!   [`Engine::seal_esp`], [`Engine::seal_dummy`], [`Engine::open`], [`Engine::open_esp`];
//! - time: [`Engine::poll_timeout`] gives the next deadline, [`Engine::handle_timeout`]
//!   processes everything due (lifetimes, end of DTD lingering, removal of hard-expired SAs);
//! - output: [`Engine::poll_event`] drains lifetime events for the installers.
//!
//! Inbound order (RFC 4303 3.4, STYLE D3): SAD lookup (RFC 4301 4.1 longest match), lifetime,
//! preliminary replay check, ICV verification and decryption, replay commit, trailer and
//! padding, dummy packets, lifetime accounting, inner checks (address preservation, RFC 5374
//! 5.2 item 6; selectors, RFC 4301 5.2 step 4).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::cipher::{CipherFactory, ESP_HEADER_LEN};
use crate::ip::{self, OuterParams, proto};
use crate::packet::{self, DEFAULT_TTL, NEXT_HEADER_DUMMY};
use crate::replay::{ReplayError, ReplayStateError, Sender, SenderKey};
use crate::sa::{
    Accounting, Direction, DropCounters, DropReason, Event, InstallError, Mode, STATE_ACTIVE,
    STATE_DEAD, STATE_LINGERING, Sa, SaConfig, SaHandle, SaId, SaStats, SealError,
};
use crate::sad::Sad;
use crate::spd::{Action, PolicyId, Spd};

/// Engine construction parameters.
#[derive(Clone)]
pub struct EngineConfig {
    /// Builds SA ciphers; defaults to the `gikev2_proto::crypto` backend.
    pub cipher_factory: CipherFactory,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            cipher_factory: crate::backend::new_cipher,
        }
    }
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig").finish_non_exhaustive()
    }
}

/// The outcome of the outbound SPD for one packet.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Send in the clear.
    Bypass,
    /// Drop.
    Discard,
    /// Seal on this SA.
    Protect(SaHandle),
    /// PROTECT, but the policy has no usable SA now (none installed, none past its ATD, or
    /// all expired): the packet is dropped and the agent may want to (re-)register.
    NoActiveSa(PolicyId),
}

/// The result of `open`.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// The reconstructed IP packet, inside the caller's buffer.
    Deliver(&'a mut [u8]),
    Drop(DropReason),
}

/// An ESP packet without its outer IP header, and the addresses that header must carry.
#[derive(Debug)]
pub struct EspPacket<'a> {
    pub esp: &'a mut [u8],
    pub src: IpAddr,
    pub dst: IpAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    SoftLifetime,
    HardLifetime,
    /// End of DTD lingering, or removal of an SA that hit a hard byte/packet limit.
    Remove,
}

type Timer = Reverse<(Instant, SaId, TimerKind)>;

/// The shared ESP engine. `Send + Sync`: share it with `Arc` between workers.
pub struct Engine {
    sad: Sad<Arc<Sa>>,
    spd: Spd,
    /// Outbound SAs per policy, oldest first (RFC 5374 4.2.1: several at once).
    outbound: ArcSwap<HashMap<PolicyId, Arc<[Arc<Sa>]>>>,
    /// Every installed SA, for the control plane.
    registry: Mutex<HashMap<SaId, Arc<Sa>>>,
    timers: Mutex<BinaryHeap<Timer>>,
    events: Mutex<VecDeque<Event>>,
    drops: DropCounters,
    next_id: AtomicU64,
    factory: CipherFactory,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("sad", &self.sad)
            .finish_non_exhaustive()
    }
}

impl Default for Engine {
    fn default() -> Self {
        Self::new(EngineConfig::default())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Engine {
    pub fn new(config: EngineConfig) -> Self {
        Self {
            sad: Sad::new(),
            spd: Spd::default(),
            outbound: ArcSwap::from_pointee(HashMap::new()),
            registry: Mutex::new(HashMap::new()),
            timers: Mutex::new(BinaryHeap::new()),
            events: Mutex::new(VecDeque::new()),
            drops: DropCounters::default(),
            next_id: AtomicU64::new(1),
            factory: config.cipher_factory,
        }
    }

    /// The outbound SPD.
    pub fn spd(&self) -> &Spd {
        &self.spd
    }

    fn build(&self, cfg: SaConfig, now: Instant) -> Result<Arc<Sa>, InstallError> {
        let expected = cfg.algorithm.keymat_len();
        if cfg.keys.len() != expected {
            return Err(InstallError::KeyLength {
                expected,
                got: cfg.keys.len(),
            });
        }
        let cipher = (self.factory)(cfg.algorithm, cfg.keys.expose())?;
        let id = SaId(self.next_id.fetch_add(1, Ordering::Relaxed));
        Ok(Arc::new(Sa::new(id, cfg, cipher, now)?))
    }

    fn register(&self, sa: &Arc<Sa>) {
        let mut timers = lock(&self.timers);
        if let Some(t) = sa.soft_deadline {
            timers.push(Reverse((t, sa.id, TimerKind::SoftLifetime)));
        }
        if let Some(t) = sa.hard_deadline {
            timers.push(Reverse((t, sa.id, TimerKind::HardLifetime)));
        }
        drop(timers);
        lock(&self.registry).insert(sa.id, sa.clone());
    }

    /// Installs one SA. Inbound SAs become visible to `open` at once; outbound SAs serve
    /// their policy once `now + ATD` has passed.
    pub fn install(&self, cfg: SaConfig, now: Instant) -> Result<SaHandle, InstallError> {
        let sa = self.build(cfg, now)?;
        match sa.direction {
            Direction::Inbound => {
                self.sad
                    .insert(sa.lookup, sa.clone())
                    .map_err(|_| InstallError::Duplicate)?;
            }
            Direction::Outbound => {
                if let Some(policy) = sa.policy {
                    let mut dup = false;
                    self.outbound.rcu(|cur| {
                        let mut next = HashMap::clone(cur);
                        let list = next.entry(policy).or_insert_with(|| Arc::from(Vec::new()));
                        dup = list.iter().any(|s| s.spi == sa.spi);
                        if !dup {
                            let mut v: Vec<Arc<Sa>> = list.to_vec();
                            v.push(sa.clone());
                            *list = Arc::from(v);
                        }
                        next
                    });
                    if dup {
                        return Err(InstallError::DuplicateOutbound);
                    }
                }
            }
        }
        self.register(&sa);
        Ok(SaHandle(sa))
    }

    /// Installs many SAs (a rekey carrying several SAs, or a benchmark at scale). Returns one
    /// result per config; a failure does not stop the others.
    pub fn install_batch(
        &self,
        cfgs: Vec<SaConfig>,
        now: Instant,
    ) -> Vec<Result<SaHandle, InstallError>> {
        cfgs.into_iter().map(|c| self.install(c, now)).collect()
    }

    fn unpublish(&self, sa: &Arc<Sa>) {
        match sa.direction {
            Direction::Inbound => {
                self.sad.remove_if(sa.lookup, |cur| Arc::ptr_eq(cur, sa));
            }
            Direction::Outbound => {
                if let Some(policy) = sa.policy {
                    self.outbound.rcu(|cur| {
                        let mut next = HashMap::clone(cur);
                        if let Some(list) = next.get_mut(&policy) {
                            let v: Vec<Arc<Sa>> = list
                                .iter()
                                .filter(|s| !Arc::ptr_eq(s, sa))
                                .cloned()
                                .collect();
                            if v.is_empty() {
                                next.remove(&policy);
                            } else {
                                *list = Arc::from(v);
                            }
                        }
                        next
                    });
                }
            }
        }
    }

    /// Removes an SA at once. Returns false if it was not installed.
    pub fn remove(&self, id: SaId) -> bool {
        let Some(sa) = lock(&self.registry).remove(&id) else {
            return false;
        };
        sa.state.store(STATE_DEAD, Ordering::Release);
        self.unpublish(&sa);
        true
    }

    /// Deletes an SA the RFC 5374 4.2.1 way: an inbound SA keeps receiving for its DTD and is
    /// removed afterwards (by `handle_timeout`); an outbound SA stops at once (senders have
    /// moved to the new SA after its ATD). Returns false if it was not installed.
    pub fn delete(&self, id: SaId, now: Instant) -> bool {
        let Some(sa) = lock(&self.registry).get(&id).cloned() else {
            return false;
        };
        if sa.direction == Direction::Outbound || sa.dtd.is_zero() {
            return self.remove(id);
        }
        if sa
            .state
            .compare_exchange(
                STATE_ACTIVE,
                STATE_LINGERING,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            lock(&self.timers).push(Reverse((now + sa.dtd, id, TimerKind::Remove)));
        }
        true
    }

    /// The earliest pending deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        lock(&self.timers).peek().map(|Reverse((t, _, _))| *t)
    }

    /// Processes every deadline up to `now`: soft/hard time lifetimes (events), removal of
    /// hard-expired SAs and of deleted inbound SAs whose DTD has passed.
    pub fn handle_timeout(&self, now: Instant) {
        loop {
            let due = {
                let mut timers = lock(&self.timers);
                match timers.peek() {
                    Some(Reverse((t, _, _))) if *t <= now => timers.pop(),
                    _ => None,
                }
            };
            let Some(Reverse((_, id, kind))) = due else {
                break;
            };
            let Some(sa) = lock(&self.registry).get(&id).cloned() else {
                continue;
            };
            match kind {
                TimerKind::SoftLifetime | TimerKind::HardLifetime => {
                    let a = sa.check_time(now);
                    self.emit(&sa, a);
                    if sa.hard_expired() {
                        self.remove(id);
                    }
                }
                TimerKind::Remove => {
                    self.remove(id);
                }
            }
        }
    }

    /// The next lifetime event, if any.
    pub fn poll_event(&self) -> Option<Event> {
        lock(&self.events).pop_front()
    }

    fn emit(&self, sa: &Sa, a: Accounting) {
        if !(a.soft_event || a.hard_event) {
            return;
        }
        let mut ev = lock(&self.events);
        if a.soft_event {
            ev.push_back(sa.event(false));
        }
        if a.hard_event {
            ev.push_back(sa.event(true));
        }
        drop(ev);
        if a.hard_event {
            // Removal happens in `handle_timeout`, never on the data path.
            lock(&self.timers).push(Reverse((sa.installed_at, sa.id, TimerKind::Remove)));
        }
    }

    /// Counters of one SA.
    pub fn stats(&self, id: SaId) -> Option<SaStats> {
        lock(&self.registry).get(&id).map(|sa| sa.stats())
    }

    /// Engine-wide count of drops for a reason (including drops with no SA).
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops.get(reason)
    }

    /// Number of installed SAs (both directions).
    pub fn sa_count(&self) -> usize {
        lock(&self.registry).len()
    }

    /// The SAD (read-only use: lookups and status).
    pub fn sad(&self) -> &Sad<Arc<Sa>> {
        &self.sad
    }

    // ---- outbound ----

    /// The outbound SPD decision for an IP packet (RFC 4301 5.1). For PROTECT, picks the
    /// newest SA of the policy that is active: installed, past its ATD (RFC 5374 4.2.1),
    /// not hard-expired.
    pub fn classify(&self, packet: &[u8], now: Instant) -> Decision {
        let Ok(info) = ip::parse(packet) else {
            return Decision::Discard;
        };
        match self.spd.lookup(&info) {
            Action::Bypass => Decision::Bypass,
            Action::Discard => Decision::Discard,
            Action::Protect(policy) => self
                .current_sa(policy, now)
                .map_or(Decision::NoActiveSa(policy), Decision::Protect),
        }
    }

    /// The SA `classify` would pick for a policy.
    pub fn current_sa(&self, policy: PolicyId, now: Instant) -> Option<SaHandle> {
        let map = self.outbound.load();
        let list = map.get(&policy)?;
        list.iter()
            .rev()
            .find(|sa| {
                sa.state() == STATE_ACTIVE
                    && now >= sa.active_from
                    && !sa.hard_expired()
                    && sa.hard_deadline.is_none_or(|d| now < d)
            })
            .map(|sa| SaHandle(sa.clone()))
    }

    fn seal_common<'o>(
        &self,
        sa: &SaHandle,
        input: SealInput<'_>,
        out: &'o mut [u8],
        now: Instant,
        with_outer: bool,
    ) -> Result<(&'o mut [u8], IpAddr, IpAddr), SealError> {
        let sa = &*sa.0;
        if sa.direction != Direction::Outbound {
            return Err(SealError::NotOutbound);
        }
        if sa.state() != STATE_ACTIVE {
            return Err(SealError::Deleted);
        }
        if now < sa.active_from {
            return Err(SealError::NotYetActive);
        }
        let a = sa.check_time(now);
        self.emit(sa, a);
        if !a.allowed {
            return Err(SealError::Expired);
        }
        let (packet, plan) = match input {
            SealInput::Packet(packet) => {
                let info = ip::parse(packet).map_err(|_| SealError::BadPacket)?;
                let packet = packet.get(..info.total_len).ok_or(SealError::BadPacket)?;
                (packet, packet::plan(sa, packet, &info, with_outer)?)
            }
            SealInput::Dummy { len, src, dst } => (&[][..], packet::plan_dummy(sa, len, src, dst)),
        };
        if plan.total() > out.len() {
            return Err(SealError::BufferTooSmall {
                needed: plan.total(),
            });
        }
        if with_outer && plan.total() > usize::from(u16::MAX) + if plan.v6 { 40 } else { 0 } {
            return Err(SealError::TooLarge);
        }
        let a = sa.account(if plan.dummy { 0 } else { packet.len() });
        self.emit(sa, a);
        if !a.allowed {
            return Err(SealError::Expired);
        }
        let sn = sa.next_sn()?;
        let iv = match &sa.ivgen {
            _ if sa.algorithm.implicit_iv() => {
                let mut iv = [0u8; 8];
                iv[4..].copy_from_slice(&sn.to_be_bytes());
                iv
            }
            Some(g) => g.next()?,
            None => return Err(SealError::NotOutbound),
        };
        let (src, dst) = (plan.src, plan.dst);
        let out = packet::write_sealed(sa, &plan, packet, out, sn, &iv)?;
        Ok((out, src, dst))
    }

    /// Seals an IP packet on an outbound SA and writes the complete outer IP packet (tunnel:
    /// new outer header, RFC 5374 address preservation as configured; transport: the original
    /// header with protocol ESP) into `out`.
    pub fn seal<'o>(
        &self,
        sa: &SaHandle,
        packet: &[u8],
        out: &'o mut [u8],
        now: Instant,
    ) -> Result<&'o mut [u8], SealError> {
        self.seal_common(sa, SealInput::Packet(packet), out, now, true)
            .map(|(o, _, _)| o)
    }

    /// Like [`Engine::seal`] but writes only the ESP packet (SPI to ICV) and returns the outer
    /// addresses, for sockets that build the IP header themselves.
    pub fn seal_esp<'o>(
        &self,
        sa: &SaHandle,
        packet: &[u8],
        out: &'o mut [u8],
        now: Instant,
    ) -> Result<EspPacket<'o>, SealError> {
        self.seal_common(sa, SealInput::Packet(packet), out, now, false)
            .map(|(esp, src, dst)| EspPacket { esp, src, dst })
    }

    /// Writes a dummy ESP packet (RFC 4303 2.6: Next Header 59, `len` octets of payload, all
    /// other fields present) for traffic flow confidentiality; `src`/`dst` are echoed as the
    /// addresses to send it with. Receivers discard it without error.
    pub fn seal_dummy<'o>(
        &self,
        sa: &SaHandle,
        len: usize,
        src: IpAddr,
        dst: IpAddr,
        out: &'o mut [u8],
        now: Instant,
    ) -> Result<EspPacket<'o>, SealError> {
        self.seal_common(sa, SealInput::Dummy { len, src, dst }, out, now, false)
            .map(|(esp, src, dst)| EspPacket { esp, src, dst })
    }

    // ---- inbound ----

    /// Opens an ESP packet received with its IP header (IPv4 or IPv6, extension headers
    /// skipped). The result is the inner packet (tunnel) or the reconstructed packet
    /// (transport), written into `out`.
    pub fn open<'o>(&self, packet: &[u8], out: &'o mut [u8], now: Instant) -> Verdict<'o> {
        let Ok(info) = ip::parse(packet) else {
            return self.drop_no_sa(DropReason::Malformed);
        };
        if info.protocol != proto::ESP {
            return self.drop_no_sa(DropReason::Malformed);
        }
        let (Some(header), Some(esp)) = (
            packet.get(..info.payload_offset),
            packet.get(info.payload_offset..info.total_len),
        ) else {
            return self.drop_no_sa(DropReason::Malformed);
        };
        let outer = Outer {
            src: info.src,
            dst: info.dst,
            header: Some((header, info.protocol_field)),
        };
        self.open_inner(outer, esp, out, now)
    }

    /// Opens an ESP packet (SPI to ICV) whose outer addresses the caller read separately
    /// (e.g. from a raw IPv6 socket, which strips the header). In transport mode the
    /// delivered packet gets a fresh minimal IP header.
    pub fn open_esp<'o>(
        &self,
        src: IpAddr,
        dst: IpAddr,
        esp: &[u8],
        out: &'o mut [u8],
        now: Instant,
    ) -> Verdict<'o> {
        let outer = Outer {
            src,
            dst,
            header: None,
        };
        self.open_inner(outer, esp, out, now)
    }

    fn drop_no_sa<'o>(&self, r: DropReason) -> Verdict<'o> {
        self.drops.bump(r);
        Verdict::Drop(r)
    }

    fn open_inner<'o>(
        &self,
        outer: Outer<'_>,
        esp: &[u8],
        out: &'o mut [u8],
        now: Instant,
    ) -> Verdict<'o> {
        let Some((spi, sn)) = packet::esp_header(esp) else {
            return self.drop_no_sa(DropReason::Malformed);
        };
        let r = self.sad.lookup_with(spi, outer.dst, outer.src, |sa| {
            let r = self.process(sa, &outer, sn, esp, out, now);
            if let Err(reason) = r {
                sa.drops.bump(reason);
            }
            r
        });
        match r {
            Some(Ok(range)) => match out.get_mut(range) {
                Some(p) => Verdict::Deliver(p),
                None => self.drop_no_sa(DropReason::BufferTooSmall),
            },
            Some(Err(reason)) => self.drop_no_sa(reason),
            None => self.drop_no_sa(DropReason::NoSa),
        }
    }

    /// Inbound processing on one SA; returns where the delivered packet sits in `out`.
    fn process(
        &self,
        sa: &Sa,
        outer: &Outer<'_>,
        sn: u32,
        esp: &[u8],
        out: &mut [u8],
        now: Instant,
    ) -> Result<std::ops::Range<usize>, DropReason> {
        if sa.state() == STATE_DEAD {
            return Err(DropReason::NoSa);
        }
        let a = sa.check_time(now);
        self.emit(sa, a);
        if !a.allowed {
            return Err(DropReason::Expired);
        }
        let (iv_len, icv_len, align) = (sa.cipher.iv_len(), sa.cipher.icv_len(), sa.cipher.align());
        let body_len = esp
            .len()
            .checked_sub(ESP_HEADER_LEN + iv_len + icv_len)
            .ok_or(DropReason::Malformed)?;
        if body_len < 2 || body_len % align.max(1) != 0 {
            return Err(DropReason::Malformed);
        }
        // Preliminary replay check, before any cryptographic work (RFC 4303 3.4.3).
        let sender = match sa.replay.sender_key() {
            None => Sender::Sa,
            Some(SenderKey::SourceAddress) => Sender::Address(outer.src),
            Some(SenderKey::SenderId) => {
                let iv = esp
                    .get(ESP_HEADER_LEN..ESP_HEADER_LEN + 8)
                    .and_then(|s| <[u8; 8]>::try_from(s).ok())
                    .ok_or(DropReason::Malformed)?;
                let bits = u32::from(sa.sender_id_bits).clamp(1, 63);
                Sender::Id((u64::from_be_bytes(iv) >> (64 - bits)) as u32)
            }
        };
        sa.replay.check(sender, sn).map_err(replay_reason)?;
        // Room for a header in front (transport mode) and the whole ESP packet.
        let front = match (sa.mode, outer.header) {
            (Mode::Tunnel(_), _) => 0,
            (Mode::Transport, Some((h, _))) => h.len(),
            (Mode::Transport, None) => ip::outer_len(outer.dst.is_ipv6()),
        };
        let esp_out = out
            .get_mut(front..front + esp.len())
            .ok_or(DropReason::BufferTooSmall)?;
        esp_out.copy_from_slice(esp);
        sa.cipher.open(esp_out).map_err(|_| DropReason::Integrity)?;
        // Only authenticated packets move the window.
        sa.replay.commit(sender, sn).map_err(replay_reason)?;
        let body_start = front + ESP_HEADER_LEN + iv_len;
        let body = out
            .get(body_start..body_start + body_len)
            .ok_or(DropReason::Malformed)?;
        let (payload_len, next_header) = packet::strip_trailer(body)?;
        if next_header == NEXT_HEADER_DUMMY {
            return Err(DropReason::Dummy);
        }
        let payload = body_start..body_start + payload_len;
        match sa.mode {
            Mode::Tunnel(t) => {
                let inner = out.get(payload.clone()).ok_or(DropReason::Malformed)?;
                let info = ip::parse(inner).map_err(|_| DropReason::BadInner)?;
                let expect = if info.is_v6() {
                    proto::IPV6
                } else {
                    proto::IPV4
                };
                if next_header != expect {
                    return Err(DropReason::BadInner);
                }
                // RFC 5374 5.2 item 6: preserved addresses must agree.
                if (t.preserve_src && info.src != outer.src)
                    || (t.preserve_dst && info.dst != outer.dst)
                {
                    return Err(DropReason::AddressMismatch);
                }
                if !sa.selectors.is_empty() && !sa.selectors.iter().any(|s| s.matches(&info)) {
                    return Err(DropReason::PolicyMismatch);
                }
                // Anything after the inner packet is TFC padding (RFC 4303 2.4).
                self.finish(sa, payload.start..payload.start + info.total_len)
            }
            Mode::Transport => {
                out.copy_within(payload, front);
                let total = front + payload_len;
                let head = out.get_mut(..total).ok_or(DropReason::Malformed)?;
                match outer.header {
                    Some((h, proto_field)) => {
                        head.get_mut(..front)
                            .ok_or(DropReason::Malformed)?
                            .copy_from_slice(h);
                        ip::fix_transport_header(
                            head,
                            outer.dst.is_ipv6(),
                            front,
                            proto_field,
                            next_header,
                            total,
                        )
                        .ok_or(DropReason::Malformed)?;
                    }
                    None => {
                        let p = OuterParams {
                            src: outer.src,
                            dst: outer.dst,
                            tos: 0,
                            ttl: DEFAULT_TTL,
                            dont_fragment: false,
                            ident: sn as u16,
                        };
                        let hdr = head.get_mut(..front).ok_or(DropReason::Malformed)?;
                        ip::write_outer(hdr, &p, next_header, payload_len)
                            .ok_or(DropReason::Malformed)?;
                    }
                }
                let info = ip::parse(head).map_err(|_| DropReason::BadInner)?;
                if !sa.selectors.is_empty() && !sa.selectors.iter().any(|s| s.matches(&info)) {
                    return Err(DropReason::PolicyMismatch);
                }
                self.finish(sa, 0..total)
            }
        }
    }

    fn finish(
        &self,
        sa: &Sa,
        range: std::ops::Range<usize>,
    ) -> Result<std::ops::Range<usize>, DropReason> {
        let a = sa.account(range.len());
        self.emit(sa, a);
        if a.allowed {
            Ok(range)
        } else {
            Err(DropReason::Expired)
        }
    }
}

/// What `seal_common` protects.
enum SealInput<'a> {
    Packet(&'a [u8]),
    Dummy {
        len: usize,
        src: IpAddr,
        dst: IpAddr,
    },
}

/// What the receive path knows of the outer header.
struct Outer<'a> {
    src: IpAddr,
    dst: IpAddr,
    /// The header bytes up to ESP, and where its protocol field is (transport mode keeps it).
    header: Option<(&'a [u8], usize)>,
}

fn replay_reason(e: ReplayStateError) -> DropReason {
    match e {
        ReplayStateError::Window(ReplayError::Zero) => DropReason::SequenceZero,
        ReplayStateError::Window(ReplayError::TooOld) => DropReason::ReplayTooOld,
        ReplayStateError::Window(ReplayError::Duplicate) => DropReason::ReplayDuplicate,
        ReplayStateError::TooManySenders => DropReason::TooManySenders,
    }
}

#[cfg(test)]
mod tests;
