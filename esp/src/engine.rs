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
use crate::packet::{self, DEFAULT_TTL, NEXT_HEADER_DUMMY, SealPlan};
use crate::replay::{ReplayError, ReplayStateError, Sender, SenderKey};
use crate::sa::{
    Accounting, Direction, DropCounters, DropReason, Event, InstallError, Mode, STATE_ACTIVE,
    STATE_DEAD, STATE_LINGERING, Sa, SaConfig, SaHandle, SaId, SaStats, SealError, Tunnel,
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

    /// The checks every packet of a `seal` call passes first: direction, state, ATD
    /// (RFC 5374 4.2.1) and the time lifetimes (RFC 4301 4.4.2.1). One step per batch.
    #[inline]
    fn seal_admit(&self, sa: &Sa, now: Instant) -> Result<(), SealError> {
        if sa.direction != Direction::Outbound {
            return Err(SealError::NotOutbound);
        }
        if sa.state() != STATE_ACTIVE {
            return Err(SealError::Deleted);
        }
        if now < sa.active_from {
            return Err(SealError::NotYetActive);
        }
        let a = sa.admit_time(now);
        self.emit(sa, a);
        if !a.allowed {
            return Err(SealError::Expired);
        }
        Ok(())
    }

    /// Counts one packet against the lifetimes (RFC 4301 4.4.2.1), then takes its SN and IV.
    #[inline]
    fn seal_number(&self, sa: &Sa, len: usize) -> Result<(u32, [u8; 8]), SealError> {
        let a = sa.account(len);
        self.emit(sa, a);
        if !a.allowed {
            return Err(SealError::Expired);
        }
        let sn = sa.next_sn()?;
        Ok((sn, self.iv_for(sa, sn)?))
    }

    /// The IV of one packet: RFC 8750 implicit IV (0 | SN, not on the wire), or the next
    /// counter-based IV (RFC 6054 3).
    #[inline]
    fn iv_for(&self, sa: &Sa, sn: u32) -> Result<[u8; 8], SealError> {
        match &sa.ivgen {
            _ if sa.implicit_iv => Ok(implicit_iv(sn)),
            Some(g) => g.next(),
            None => Err(SealError::NotOutbound),
        }
    }

    /// The size checks of one planned packet whose output starts at `start` in a buffer of
    /// `len` octets.
    #[inline]
    fn seal_fits(
        plan: &SealPlan,
        start: usize,
        len: usize,
        with_outer: bool,
    ) -> Result<(), SealError> {
        if start + plan.total() > len {
            return Err(SealError::BufferTooSmall {
                needed: start + plan.total(),
            });
        }
        if with_outer && plan.total() > usize::from(u16::MAX) + if plan.v6 { 40 } else { 0 } {
            return Err(SealError::TooLarge);
        }
        Ok(())
    }

    /// `seal`, `seal_esp`, `seal_dummy`: the input is copied (or, for a dummy, zeroed) into
    /// `out`, then sealed there.
    fn seal_copy<'o>(
        &self,
        sa: &SaHandle,
        input: SealInput<'_>,
        out: &'o mut [u8],
        now: Instant,
        with_outer: bool,
    ) -> Result<(&'o mut [u8], IpAddr, IpAddr), SealError> {
        let sa = &*sa.0;
        self.seal_admit(sa, now)?;
        let (packet, plan) = match input {
            SealInput::Packet(packet) => {
                let info = ip::parse(packet).map_err(|_| SealError::BadPacket)?;
                let packet = packet.get(..info.total_len).ok_or(SealError::BadPacket)?;
                (packet, packet::plan(sa, packet, &info, with_outer)?)
            }
            SealInput::Dummy { len, src, dst } => (&[][..], packet::plan_dummy(sa, len, src, dst)),
        };
        Self::seal_fits(&plan, 0, out.len(), with_outer)?;
        let (sn, iv) = self.seal_number(sa, if plan.dummy { 0 } else { packet.len() })?;
        let out = out
            .get_mut(..plan.total())
            .ok_or(SealError::BufferTooSmall {
                needed: plan.total(),
            })?;
        let at = plan.payload_at(usize::from(sa.iv_len));
        let data = out
            .get_mut(at..at + plan.payload_len)
            .ok_or(SealError::BadPacket)?;
        if plan.dummy {
            data.fill(0);
        } else {
            data.copy_from_slice(packet.get(plan.inner_hdr..).ok_or(SealError::BadPacket)?);
            if !plan.tunnel && plan.outer_len > 0 {
                out.get_mut(..plan.outer_len)
                    .ok_or(SealError::BadPacket)?
                    .copy_from_slice(packet.get(..plan.outer_len).ok_or(SealError::BadPacket)?);
            }
        }
        packet::seal_placed(sa, &plan, out, sn, &iv)?;
        Ok((out, plan.src, plan.dst))
    }

    /// Plans sealing the IP packet at `buf[at..]` in place: where the output starts, and the
    /// plan. Moves nothing yet.
    #[inline]
    fn plan_in_place(
        sa: &Sa,
        buf: &[u8],
        at: usize,
        with_outer: bool,
    ) -> Result<(usize, SealPlan), SealError> {
        let packet = buf.get(at..).ok_or(SealError::BadPacket)?;
        let info = ip::parse(packet).map_err(|_| SealError::BadPacket)?;
        let packet = packet.get(..info.total_len).ok_or(SealError::BadPacket)?;
        let plan = packet::plan(sa, packet, &info, with_outer)?;
        // The payload stays where it is; everything before it is written in front.
        let start = (at + plan.inner_hdr)
            .checked_sub(plan.payload_at(usize::from(sa.iv_len)))
            .ok_or(SealError::Headroom {
                needed: plan.payload_at(usize::from(sa.iv_len)) - plan.inner_hdr,
            })?;
        Self::seal_fits(&plan, start, buf.len(), with_outer)?;
        Ok((start, plan))
    }

    /// Seals one planned packet in place: moves a transport-mode header forward (it is a few
    /// octets; the payload never moves), frames, seals, writes the outer header.
    #[inline]
    fn seal_planned<'b>(
        sa: &Sa,
        buf: &'b mut [u8],
        at: usize,
        start: usize,
        plan: &SealPlan,
        sn: u32,
        iv: &[u8; 8],
    ) -> Result<&'b mut [u8], SealError> {
        if !plan.tunnel && plan.outer_len > 0 {
            buf.copy_within(at..at + plan.outer_len, start);
        }
        let out = buf
            .get_mut(start..start + plan.total())
            .ok_or(SealError::BufferTooSmall {
                needed: start + plan.total(),
            })?;
        packet::seal_placed(sa, plan, out, sn, iv)?;
        Ok(out)
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
        self.seal_copy(sa, SealInput::Packet(packet), out, now, true)
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
        self.seal_copy(sa, SealInput::Packet(packet), out, now, false)
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
        self.seal_copy(sa, SealInput::Dummy { len, src, dst }, out, now, false)
            .map(|(esp, src, dst)| EspPacket { esp, src, dst })
    }

    /// [`Engine::seal`] without copying the packet: the IP packet sits at `buf[at..]` (its
    /// own header gives its length) and is sealed where it is. The engine writes up to
    /// [`SEAL_HEADROOM`] octets in front of it (outer header, ESP header, IV; in transport mode
    /// the IP header moves forward to make room for the ESP header) and up to
    /// [`SEAL_TAILROOM`] after it (padding, trailer, ICV). Returns the complete outer IP
    /// packet, a sub-slice of `buf` starting at or after `at - SEAL_HEADROOM`. The same
    /// checks, counters and formats as `seal`.
    pub fn seal_in_place<'b>(
        &self,
        sa: &SaHandle,
        buf: &'b mut [u8],
        at: usize,
        now: Instant,
    ) -> Result<&'b mut [u8], SealError> {
        let sa = &*sa.0;
        self.seal_admit(sa, now)?;
        let (start, plan) = Self::plan_in_place(sa, buf, at, true)?;
        let (sn, iv) = self.seal_number(sa, plan.inner_hdr + plan.payload_len)?;
        Self::seal_planned(sa, buf, at, start, &plan, sn, &iv)
    }

    /// [`Engine::seal_in_place`] for a batch of packets on one SA, as the data plane sends
    /// them: packet `i` sits at `bufs[i][at..]`. The SA's state, ATD and time lifetimes are
    /// checked once for the batch (`now` is the same for every packet); sequence numbers and
    /// IVs are reserved with one atomic step each; on an SA without byte or packet lifetimes
    /// the traffic counters are updated once (with byte or packet lifetimes, per packet, so
    /// that the packet that reaches a limit is the last one, as with single calls). `f` gets
    /// each packet's index and its result (the sealed packet's offset in `bufs[i]` and the
    /// packet), in order. What goes on the wire is the same as with `seal_in_place` called
    /// for each packet in turn.
    pub fn seal_batch<B: AsMut<[u8]>>(
        &self,
        sa: &SaHandle,
        bufs: &mut [B],
        at: usize,
        now: Instant,
        mut f: impl FnMut(usize, Result<(usize, &mut [u8]), SealError>),
    ) {
        let sa = &*sa.0;
        if let Err(e) = self.seal_admit(sa, now) {
            for (i, _) in bufs.iter_mut().enumerate() {
                f(i, Err(e.clone()));
            }
            return;
        }
        let mut base = 0;
        for chunk in bufs.chunks_mut(SEAL_BATCH) {
            self.seal_chunk(sa, chunk, at, base, &mut f);
            base += chunk.len();
        }
    }

    fn seal_chunk<B: AsMut<[u8]>>(
        &self,
        sa: &Sa,
        bufs: &mut [B],
        at: usize,
        base: usize,
        f: &mut impl FnMut(usize, Result<(usize, &mut [u8]), SealError>),
    ) {
        // The common case, planned in one pass from the inner header's fixed offsets: an
        // IPv4 packet on a tunnel-mode SA with IPv4 endpoints. Everything else (IPv6 inner
        // packets, transport mode, malformed packets, missing room) takes `plan_in_place`,
        // which the fast plan agrees with (tests: `seal_batch_matches_single_calls`).
        let fast = FastSeal::new(sa);
        let mut slots = [Slot::Failed; SEAL_BATCH];
        let (mut ok, mut bytes) = (0u64, 0u64);
        for (buf, slot) in bufs.iter_mut().zip(slots.iter_mut()) {
            // Once a packet has reached a hard byte or packet limit, the rest are refused
            // before anything else, as `seal_admit` refuses later single calls (malformed
            // packets included).
            if sa.volume_limited && sa.hard_expired() {
                *slot = Slot::Expired;
                continue;
            }
            let buf = buf.as_mut();
            let planned = fast
                .as_ref()
                .and_then(|f| f.plan(buf, at))
                .and_then(|(start, len)| {
                    let slot = Slot::Fast {
                        start: u32::try_from(start).ok()?,
                        len: u16::try_from(len).ok()?,
                    };
                    Some((slot, len))
                })
                .or_else(|| {
                    Self::plan_in_place(sa, buf, at, true)
                        .ok()
                        .map(|(_, p)| (Slot::General, p.inner_hdr + p.payload_len))
                });
            let Some((s, len)) = planned else {
                continue;
            };
            // Byte lifetimes count the IP packets protected (RFC 4301 4.4.2.1).
            if sa.volume_limited {
                let a = sa.account(len);
                self.emit(sa, a);
                if !a.allowed {
                    *slot = Slot::Expired;
                    continue;
                }
            }
            *slot = s;
            ok += 1;
            bytes += len as u64;
        }
        if !sa.volume_limited {
            sa.account_unlimited(ok, bytes);
        }
        // Sequence numbers and IVs for the packets that go out, in order.
        let sn_base = sa.reserve_sn(ok);
        let mut ivs = IvRun::default();
        let mut j = 0u64;
        for (i, (buf, slot)) in bufs.iter_mut().zip(slots.iter()).enumerate() {
            let buf = buf.as_mut();
            let r = match *slot {
                Slot::Expired => Err(SealError::Expired),
                // Planning is a function of the packet and the SA's configuration: the same
                // error again.
                Slot::Failed => match Self::plan_in_place(sa, buf, at, true) {
                    Err(e) => Err(e),
                    Ok(_) => Err(SealError::BadPacket),
                },
                Slot::Fast { start, len } => {
                    let (start, len) = (start as usize, usize::from(len));
                    let k = j;
                    j += 1;
                    match (&fast, sa.sn_after(sn_base, k)) {
                        (Some(t), Ok(sn)) => ivs
                            .next(sa, sn, ok - k)
                            .and_then(|iv| t.seal(sa, buf, start, len, sn, &iv))
                            .map(|p| (start, p)),
                        (_, Err(e)) => Err(e),
                        (None, _) => Err(SealError::BadPacket),
                    }
                }
                Slot::General => {
                    let k = j;
                    j += 1;
                    Self::plan_in_place(sa, buf, at, true).and_then(|(start, plan)| {
                        let sn = sa.sn_after(sn_base, k)?;
                        let iv = ivs.next(sa, sn, ok - k)?;
                        Self::seal_planned(sa, buf, at, start, &plan, sn, &iv).map(|p| (start, p))
                    })
                }
            };
            f(base + i, r);
        }
    }

    // ---- inbound ----

    /// Opens an ESP packet received with its IP header (IPv4 or IPv6, extension headers
    /// skipped). The result is the inner packet (tunnel) or the reconstructed packet
    /// (transport), written into `out`.
    pub fn open<'o>(&self, packet: &[u8], out: &'o mut [u8], now: Instant) -> Verdict<'o> {
        let (outer, esp_at, end) = match outer_of(packet) {
            Ok(o) => o,
            Err(r) => return self.drop_no_sa(r),
        };
        let (Some(header), Some(esp)) = (packet.get(..esp_at), packet.get(esp_at..end)) else {
            return self.drop_no_sa(DropReason::Malformed);
        };
        let outer = Outer {
            header: Header::Slice(header, outer.header_proto_field()),
            ..outer
        };
        self.open_one(&outer, out, EspSrc::Copy(esp), now)
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
            header: Header::None,
        };
        self.open_one(&outer, out, EspSrc::Copy(esp), now)
    }

    /// [`Engine::open`] without copying: verifies and decrypts the packet where it is, in
    /// `packet` (which then holds unspecified octets if the packet is dropped). The delivered
    /// packet is a sub-slice of `packet`; in transport mode the IP header moves forward over
    /// the ESP header (a few octets; the payload never moves). Same checks, counters and
    /// formats as `open`.
    pub fn open_in_place<'b>(&self, packet: &'b mut [u8], now: Instant) -> Verdict<'b> {
        let (outer, esp_at, end) = match outer_of(packet) {
            Ok(o) => o,
            Err(r) => return self.drop_no_sa(r),
        };
        let Some(buf) = packet.get_mut(..end) else {
            return self.drop_no_sa(DropReason::Malformed);
        };
        self.open_one(
            &outer,
            buf,
            EspSrc::InBuf {
                at: esp_at,
                len: end - esp_at,
            },
            now,
        )
    }

    /// [`Engine::open_esp`] without copying: the ESP packet is `buf[esp_at..]`. In transport
    /// mode the rebuilt IP header is written in front of the payload, which needs
    /// `esp_at + 8 + IV length` to be at least the header's length (20 or 40 octets); with
    /// less room the packet is dropped with [`DropReason::BufferTooSmall`].
    pub fn open_esp_in_place<'b>(
        &self,
        src: IpAddr,
        dst: IpAddr,
        buf: &'b mut [u8],
        esp_at: usize,
        now: Instant,
    ) -> Verdict<'b> {
        let outer = Outer {
            src,
            dst,
            header: Header::None,
        };
        let len = buf.len().saturating_sub(esp_at);
        self.open_one(&outer, buf, EspSrc::InBuf { at: esp_at, len }, now)
    }

    /// [`Engine::open_in_place`] for a batch of received packets, as the data plane gets them
    /// from `recvmmsg`: packet `i` is `bufs[i][..lens[i]]`. Consecutive packets with the same
    /// SPI and outer addresses share one SAD lookup, one state and time lifetime check
    /// (`now` is the same for the batch) and, on SAs without byte or packet lifetimes, one
    /// update of the traffic counters; replay checks and everything else stay per packet, in
    /// order. `f` gets each packet's index and verdict, in order.
    pub fn open_batch<B: AsMut<[u8]>>(
        &self,
        bufs: &mut [B],
        lens: &[usize],
        now: Instant,
        mut f: impl FnMut(usize, Verdict<'_>),
    ) {
        let mut run = Run::default();
        // The outer header of the run of packets being opened: parsed once (RFC 791 3.1 /
        // RFC 8200 3), then, while the next packets' IPv4 headers have the same version/IHL
        // (no options), protocol and addresses, taken again with only their total length
        // read and checked.
        let mut cur: Option<(Outer<'static>, usize)> = None;
        let mut cur_addrs: Option<[u8; 8]> = None;
        for (i, (buf, &len)) in bufs.iter_mut().zip(lens).enumerate() {
            let packet = buf.as_mut();
            let end = match packet.get(..len) {
                None => Err(DropReason::Malformed),
                Some(p) => match same_outer_v4(p, cur_addrs.as_ref()) {
                    Some(r) => r,
                    None => {
                        // Another header: the run's key must be compared in full again.
                        run.addrs_current = false;
                        cur_addrs = None;
                        cur = None;
                        outer_of(p).map(|(o, esp_at, end)| {
                            if let (IpAddr::V4(s), IpAddr::V4(d), 20) = (o.src, o.dst, esp_at) {
                                let (s, d) = (s.octets(), d.octets());
                                cur_addrs = Some([s[0], s[1], s[2], s[3], d[0], d[1], d[2], d[3]]);
                            }
                            cur = Some((o, esp_at));
                            end
                        })
                    }
                },
            };
            let v = match (end, &cur) {
                (Err(r), _) => self.drop_no_sa(r),
                (Ok(_), None) => self.drop_no_sa(DropReason::Malformed),
                (Ok(end), Some((outer, esp_at))) => match packet.get_mut(..end) {
                    None => self.drop_no_sa(DropReason::Malformed),
                    Some(b) => self.open_run(
                        &mut run,
                        outer,
                        b,
                        EspSrc::InBuf {
                            at: *esp_at,
                            len: end - esp_at,
                        },
                        now,
                    ),
                },
            };
            f(i, v);
        }
        run.flush();
    }

    /// [`Engine::open_esp_in_place`] for a batch (the IPv6 raw socket): packet `i` is the
    /// ESP packet `bufs[i][esp_at..esp_at + meta[i].0]`, received from `meta[i].1` for
    /// `meta[i].2`. Shares work between consecutive packets as [`Engine::open_batch`] does.
    pub fn open_esp_batch<B: AsMut<[u8]>>(
        &self,
        bufs: &mut [B],
        meta: &[(usize, IpAddr, IpAddr)],
        esp_at: usize,
        now: Instant,
        mut f: impl FnMut(usize, Verdict<'_>),
    ) {
        let mut run = Run::default();
        for (i, (buf, &(len, src, dst))) in bufs.iter_mut().zip(meta).enumerate() {
            let outer = Outer {
                src,
                dst,
                header: Header::None,
            };
            // Addresses come with each packet: the run's key is compared in full.
            run.addrs_current = false;
            let v = match buf.as_mut().get_mut(..esp_at + len) {
                None => self.drop_no_sa(DropReason::Malformed),
                Some(b) => {
                    self.open_run(&mut run, &outer, b, EspSrc::InBuf { at: esp_at, len }, now)
                }
            };
            f(i, v);
        }
        run.flush();
    }

    fn drop_no_sa<'o>(&self, r: DropReason) -> Verdict<'o> {
        self.drops.bump(r);
        Verdict::Drop(r)
    }

    fn drop_on<'o>(&self, sa: &Sa, r: DropReason) -> Verdict<'o> {
        sa.drops.bump(r);
        self.drop_no_sa(r)
    }

    /// One packet: SAD lookup (under the reader's epoch guard, no reference count traffic),
    /// checks, processing, accounting.
    fn open_one<'o>(
        &self,
        outer: &Outer<'_>,
        buf: &'o mut [u8],
        esp: EspSrc<'_>,
        now: Instant,
    ) -> Verdict<'o> {
        let Some((spi, sn)) = esp.bytes(buf).and_then(packet::esp_header) else {
            return self.drop_no_sa(DropReason::Malformed);
        };
        let r = self.sad.lookup_with(spi, outer.dst, outer.src, |sa| {
            let r = self
                .open_admit(sa, now)
                .and_then(|()| self.process(sa, outer, sn, buf, esp))
                .and_then(|range| self.finish(sa, range));
            if let Err(reason) = r {
                sa.drops.bump(reason);
            }
            r
        });
        match r {
            Some(Ok(range)) => match buf.get_mut(range) {
                Some(p) => Verdict::Deliver(p),
                None => self.drop_no_sa(DropReason::BufferTooSmall),
            },
            Some(Err(reason)) => self.drop_no_sa(reason),
            None => self.drop_no_sa(DropReason::NoSa),
        }
    }

    /// One packet of a batch: the SA and its admission are shared with the previous packet
    /// when the lookup key is the same. Inlined into the two batch loops (one call per
    /// packet less).
    #[inline(always)]
    fn open_run<'o>(
        &self,
        run: &mut Run,
        outer: &Outer<'_>,
        buf: &'o mut [u8],
        esp: EspSrc<'_>,
        now: Instant,
    ) -> Verdict<'o> {
        let Some((spi, sn)) = esp.bytes(buf).and_then(packet::esp_header) else {
            return self.drop_no_sa(DropReason::Malformed);
        };
        // While the outer header is the run's (`addrs_current`), only the SPI can differ.
        let same = if run.addrs_current {
            run.key.is_some_and(|k| k.0 == spi)
        } else {
            run.key == Some((spi, outer.dst, outer.src))
        };
        if !same {
            let key = (spi, outer.dst, outer.src);
            run.flush();
            run.key = Some(key);
            run.addrs_current = true;
            run.sa = self.sad.lookup(spi, outer.dst, outer.src);
            run.admitted = run.sa.as_ref().map(|sa| self.open_admit(sa, now));
        }
        let (Some(sa), Some(admitted)) = (run.sa.as_ref(), run.admitted) else {
            return self.drop_no_sa(DropReason::NoSa);
        };
        if let Err(r) = admitted {
            return self.drop_on(sa, r);
        }
        // A byte or packet limit reached earlier in the run expires the SA for the packets
        // after it, as `open_admit` does for single calls.
        if sa.volume_limited && sa.hard_expired() {
            return self.drop_on(sa, DropReason::Expired);
        }
        let r = match (sa.mode, esp) {
            (Mode::Tunnel(t), EspSrc::InBuf { at, len }) => {
                self.process_tunnel(sa, t, outer, sn, buf, at, len)
            }
            _ => self.process(sa, outer, sn, buf, esp),
        };
        let r = r.and_then(|range| {
            if sa.volume_limited {
                self.finish(sa, range)
            } else {
                run.packets += 1;
                run.bytes += range.len() as u64;
                Ok(range)
            }
        });
        match r {
            Ok(range) => match buf.get_mut(range) {
                Some(p) => Verdict::Deliver(p),
                None => self.drop_on(sa, DropReason::BufferTooSmall),
            },
            Err(reason) => self.drop_on(sa, reason),
        }
    }

    /// State and time lifetime of an inbound SA (RFC 4301 4.4.2.1), before any packet work.
    #[inline]
    fn open_admit(&self, sa: &Sa, now: Instant) -> Result<(), DropReason> {
        if sa.state() == STATE_DEAD {
            return Err(DropReason::NoSa);
        }
        let a = sa.admit_time(now);
        self.emit(sa, a);
        if !a.allowed {
            return Err(DropReason::Expired);
        }
        Ok(())
    }

    /// Inbound processing of one packet on one SA (RFC 4303 3.4); returns where the
    /// delivered packet sits in `buf`. Lifetime accounting is the caller's.
    fn process(
        &self,
        sa: &Sa,
        outer: &Outer<'_>,
        sn: u32,
        buf: &mut [u8],
        esp: EspSrc<'_>,
    ) -> Result<std::ops::Range<usize>, DropReason> {
        let iv_len = usize::from(sa.iv_len);
        let esp_len = esp.len();
        let body_len = body_len(sa, esp_len)?;
        // Preliminary replay check, before any cryptographic work (RFC 4303 3.4.3).
        let sender = replay_sender(sa, outer, esp.bytes(buf))?;
        sa.replay.check(sender, sn).map_err(replay_reason)?;
        // Room for a header in front of the payload (transport mode).
        let front = match (sa.mode, outer.header) {
            (Mode::Tunnel(_), _) => 0,
            (Mode::Transport, Header::Slice(h, _)) => h.len(),
            (Mode::Transport, Header::InBuf(len, _)) => len,
            (Mode::Transport, Header::None) => ip::outer_len(outer.dst.is_ipv6()),
        };
        let esp_at = match esp {
            EspSrc::InBuf { at, .. } => {
                if at + ESP_HEADER_LEN + iv_len < front {
                    return Err(DropReason::BufferTooSmall);
                }
                at
            }
            EspSrc::Copy(bytes) => {
                buf.get_mut(front..front + esp_len)
                    .ok_or(DropReason::BufferTooSmall)?
                    .copy_from_slice(bytes);
                front
            }
        };
        let (payload, next_header) = open_body(sa, sender, sn, buf, esp_at, esp_len, body_len)?;
        match sa.mode {
            Mode::Tunnel(t) => tunnel_inner(sa, t, outer, buf, payload, next_header),
            Mode::Transport => {
                // The IP header goes right in front of the payload (RFC 4303 3.4.4.1: the
                // original header with the next header restored).
                let start = payload.start - front;
                self.transport_header(sa, outer, sn, buf, esp_at, start, payload, next_header)
            }
        }
    }

    /// [`Engine::process`] for a tunnel-mode SA and a packet in the buffer it is opened in
    /// (the batch paths): the same steps in the same order with the same results (RFC 4303
    /// 3.4), without the cases of transport mode and of copied input.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn process_tunnel(
        &self,
        sa: &Sa,
        t: Tunnel,
        outer: &Outer<'_>,
        sn: u32,
        buf: &mut [u8],
        at: usize,
        esp_len: usize,
    ) -> Result<std::ops::Range<usize>, DropReason> {
        let body_len = body_len(sa, esp_len)?;
        // Preliminary replay check, before any cryptographic work (RFC 4303 3.4.3).
        let sender = replay_sender(sa, outer, buf.get(at..at + esp_len))?;
        sa.replay.check(sender, sn).map_err(replay_reason)?;
        let (payload, next_header) = open_body(sa, sender, sn, buf, at, esp_len, body_len)?;
        tunnel_inner(sa, t, outer, buf, payload, next_header)
    }

    /// Transport mode: writes the delivered packet's IP header at `start` (right in front of
    /// the payload), fixes its length, protocol and checksum, and checks the selectors.
    #[allow(clippy::too_many_arguments)]
    fn transport_header(
        &self,
        sa: &Sa,
        outer: &Outer<'_>,
        sn: u32,
        buf: &mut [u8],
        esp_at: usize,
        start: usize,
        payload: std::ops::Range<usize>,
        next_header: u8,
    ) -> Result<std::ops::Range<usize>, DropReason> {
        let front = payload.start - start;
        let total = front + payload.len();
        let proto_field = match outer.header {
            Header::Slice(h, pf) => {
                buf.get_mut(start..payload.start)
                    .ok_or(DropReason::Malformed)?
                    .copy_from_slice(h);
                Some(pf)
            }
            Header::InBuf(len, pf) => {
                let from = esp_at.checked_sub(len).ok_or(DropReason::Malformed)?;
                if from + len > buf.len() {
                    return Err(DropReason::Malformed);
                }
                buf.copy_within(from..esp_at, start);
                Some(pf)
            }
            Header::None => None,
        };
        let head = buf
            .get_mut(start..payload.end)
            .ok_or(DropReason::Malformed)?;
        match proto_field {
            Some(pf) => {
                ip::fix_transport_header(head, outer.dst.is_ipv6(), front, pf, next_header, total)
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
                ip::write_outer(hdr, &p, next_header, payload.len())
                    .ok_or(DropReason::Malformed)?;
            }
        }
        let info = ip::parse(head).map_err(|_| DropReason::BadInner)?;
        if !sa.selectors.is_empty() && !sa.selectors.iter().any(|s| s.matches(&info)) {
            return Err(DropReason::PolicyMismatch);
        }
        Ok(start..payload.end)
    }

    /// Byte and packet lifetimes of one delivered packet (RFC 4301 4.4.2.1).
    #[inline]
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

/// What the first pass of `seal_chunk` decided for one packet.
#[derive(Clone, Copy)]
enum Slot {
    /// Not planned: `plan_in_place` gives the error again in the second pass.
    Failed,
    /// Refused by a byte or packet lifetime.
    Expired,
    /// Planned by `FastSeal::plan`: the output starts at `start`, the inner packet has `len`
    /// octets.
    /// (Kept small: the chunk's array of slots is initialised for every chunk.)
    Fast { start: u32, len: u16 },
    /// Planned by `plan_in_place` (planned again in the second pass).
    General,
}

/// What the one-pass plan of a tunnel-mode SA with IPv4 endpoints needs, read once per
/// chunk: the outer header template, the SA's lengths, and the padding mask (RFC 4303 2.4:
/// the alignment, at least 4, is a power of two for every cipher; otherwise no shortcut).
struct FastSeal {
    outer: ip::OuterV4,
    /// Alignment - 1.
    mask: usize,
    iv_len: usize,
    icv_len: usize,
    /// Outer header, ESP header and IV: what goes in front of the inner packet.
    front: usize,
}

impl FastSeal {
    #[inline]
    fn new(sa: &Sa) -> Option<Self> {
        let Mode::Tunnel(t) = sa.mode else {
            return None;
        };
        let (IpAddr::V4(l), IpAddr::V4(r)) = (t.local, t.remote) else {
            return None;
        };
        let align = usize::from(sa.align).max(4);
        if !align.is_power_of_two() {
            return None;
        }
        let iv_len = usize::from(sa.iv_len);
        Some(Self {
            outer: ip::OuterV4::new(l, r, t.preserve_src, t.preserve_dst, DEFAULT_TTL),
            mask: align - 1,
            iv_len,
            icv_len: usize::from(sa.icv_len),
            front: ip::IPV4_MIN_HEADER + ESP_HEADER_LEN + iv_len,
        })
    }

    /// `packet::pad_len` with the mask.
    #[inline]
    fn pad(&self, len: usize) -> usize {
        (self.mask + 1 - ((len + 2) & self.mask)) & self.mask
    }

    /// The ESP packet's length for a payload of `len` octets (RFC 4303 2: header, IV,
    /// payload, padding, pad length, next header, ICV).
    #[inline]
    fn esp_len(&self, len: usize) -> usize {
        ESP_HEADER_LEN + self.iv_len + len + self.pad(len) + 2 + self.icv_len
    }

    /// Plans sealing the IPv4 packet at `buf[at..]` in place: the checks of `ip::parse` that
    /// decide whether the packet is usable (RFC 791 3.1: version 4, IHL at least 5 and
    /// within the buffer, total length at least the header and within the buffer; ports
    /// are not needed) and the size checks of `plan_in_place`. Returns where the output
    /// starts and the inner packet's length; `None` for anything else (another version, a
    /// malformed header, missing room), which `plan_in_place` then plans or refuses.
    #[inline]
    fn plan(&self, buf: &[u8], at: usize) -> Option<(usize, usize)> {
        let p = buf.get(at..)?;
        let h: &[u8; ip::IPV4_MIN_HEADER] = p.first_chunk()?;
        let ihl = usize::from(h[0] & 0x0f) * 4;
        if h[0] >> 4 != 4 || ihl < ip::IPV4_MIN_HEADER || p.len() < ihl {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        if len < ihl || len > p.len() {
            return None;
        }
        let start = at.checked_sub(self.front)?;
        let total = ip::IPV4_MIN_HEADER + self.esp_len(len);
        // RFC 791 3.1: the outer total length is 16 bits.
        if start + total > buf.len() || total > usize::from(u16::MAX) {
            return None;
        }
        Some((start, len))
    }

    /// Seals one packet planned by `plan`: the outer header from the template (TOS, DF, TTL
    /// and preserved addresses read from the inner header before it is encrypted), the ESP
    /// header (RFC 4303 2.1, 2.2), padding 1, 2, 3, ... (2.4), pad length, next header 4
    /// (IPv4), then the cipher. The same octets as `seal_planned` with `packet::plan`.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn seal<'b>(
        &self,
        sa: &Sa,
        buf: &'b mut [u8],
        start: usize,
        len: usize,
        sn: u32,
        iv: &[u8; 8],
    ) -> Result<&'b mut [u8], SealError> {
        let pad = self.pad(len);
        let esp_len = ESP_HEADER_LEN + self.iv_len + len + pad + 2 + self.icv_len;
        let total = ip::IPV4_MIN_HEADER + esp_len;
        let too_small = || SealError::BufferTooSmall {
            needed: start + total,
        };
        let out = buf.get_mut(start..start + total).ok_or_else(too_small)?;
        let (head, esp) = out
            .split_first_chunk_mut::<{ ip::IPV4_MIN_HEADER }>()
            .ok_or_else(too_small)?;
        let payload_at = ESP_HEADER_LEN + self.iv_len;
        let inner: &[u8; ip::IPV4_MIN_HEADER] = esp
            .get(payload_at..)
            .and_then(|p| p.first_chunk())
            .ok_or_else(too_small)?;
        self.outer.write(head, inner, total as u16, sn as u16);
        let (hdr, rest) = esp
            .split_first_chunk_mut::<ESP_HEADER_LEN>()
            .ok_or_else(too_small)?;
        let s = sa.spi.to_be_bytes();
        let n = sn.to_be_bytes();
        *hdr = [s[0], s[1], s[2], s[3], n[0], n[1], n[2], n[3]];
        let trailer_at = self.iv_len + len;
        let trailer = rest
            .get_mut(trailer_at..trailer_at + pad + 2)
            .ok_or_else(too_small)?;
        let (padding, tail) = trailer.split_at_mut(pad);
        for (i, b) in padding.iter_mut().enumerate() {
            *b = (i + 1) as u8;
        }
        if let [pl, nh] = tail {
            *pl = pad as u8;
            *nh = proto::IPV4;
        }
        sa.cipher.seal(esp, iv)?;
        Ok(out)
    }
}

/// Most packets `seal_batch` plans at once (its stack array); longer batches are taken in
/// chunks of this size.
const SEAL_BATCH: usize = 64;

/// Most octets `seal_in_place` writes in front of the packet: an IPv6 outer header (40), the
/// ESP header (8) and a CBC IV (16).
pub const SEAL_HEADROOM: usize = 64;
/// Most octets `seal_in_place` writes after the packet: padding (at most 15 with a 16-octet
/// block, RFC 4303 2.4), pad length and next header (2), ICV (16).
pub const SEAL_TAILROOM: usize = 33;

/// The RFC 8750 4 implicit IV: four zero octets, then the SN.
#[inline]
fn implicit_iv(sn: u32) -> [u8; 8] {
    let mut iv = [0u8; 8];
    iv[4..].copy_from_slice(&sn.to_be_bytes());
    iv
}

/// IVs reserved for a batch: `left` consecutive counter values from `next`.
#[derive(Default)]
struct IvRun {
    next: u64,
    left: u64,
}

impl IvRun {
    /// The IV for one packet; `want` is how many packets of the batch still need one.
    #[inline]
    fn next(&mut self, sa: &Sa, sn: u32, want: u64) -> Result<[u8; 8], SealError> {
        let g = match &sa.ivgen {
            _ if sa.implicit_iv => return Ok(implicit_iv(sn)),
            Some(g) => g,
            None => return Err(SealError::NotOutbound),
        };
        if self.left == 0 {
            (self.next, self.left) = g.reserve(want.max(1))?;
        }
        let iv = self.next;
        self.next = self.next.wrapping_add(1);
        self.left -= 1;
        Ok(iv.to_be_bytes())
    }
}

/// What `seal_copy` protects.
enum SealInput<'a> {
    Packet(&'a [u8]),
    Dummy {
        len: usize,
        src: IpAddr,
        dst: IpAddr,
    },
}

/// What the receive path knows of the outer header.
#[derive(Clone, Copy)]
struct Outer<'a> {
    src: IpAddr,
    dst: IpAddr,
    header: Header<'a>,
}

impl Outer<'_> {
    fn header_proto_field(&self) -> usize {
        match self.header {
            Header::Slice(_, pf) | Header::InBuf(_, pf) => pf,
            Header::None => 0,
        }
    }
}

/// The outer IP header up to ESP, which transport mode keeps, and where its protocol field
/// is.
#[derive(Clone, Copy)]
enum Header<'a> {
    /// Not received (raw IPv6 sockets strip it).
    None,
    /// In the caller's input, apart from the buffer the packet is opened in.
    Slice(&'a [u8], usize),
    /// The `len` octets right before the ESP packet in the buffer it is opened in.
    InBuf(usize, usize),
}

/// Where the ESP packet is.
#[derive(Clone, Copy)]
enum EspSrc<'a> {
    /// Already in the buffer it is opened in, at `at`.
    InBuf { at: usize, len: usize },
    /// In the caller's input: copied into the output buffer once the SA is known.
    Copy(&'a [u8]),
}

impl EspSrc<'_> {
    fn len(&self) -> usize {
        match self {
            Self::InBuf { len, .. } => *len,
            Self::Copy(b) => b.len(),
        }
    }

    fn bytes<'s>(&'s self, buf: &'s [u8]) -> Option<&'s [u8]> {
        match *self {
            Self::InBuf { at, len } => buf.get(at..at + len),
            Self::Copy(b) => Some(b),
        }
    }
}

/// The outer header of a received packet: addresses, header (in the buffer), where ESP
/// starts and where the packet ends.
fn outer_of(packet: &[u8]) -> Result<(Outer<'static>, usize, usize), DropReason> {
    // The outer header's ports are never looked at (its next layer is ESP).
    let info = ip::parse_no_ports(packet).map_err(|_| DropReason::Malformed)?;
    if info.protocol != proto::ESP {
        return Err(DropReason::Malformed);
    }
    Ok((
        Outer {
            src: info.src,
            dst: info.dst,
            header: Header::InBuf(info.payload_offset, info.protocol_field),
        },
        info.payload_offset,
        info.total_len,
    ))
}

/// For an IPv4 header without options, protocol ESP and the addresses `addrs` (source,
/// destination) of the current run's outer header, which `outer_of` parsed: the same checks
/// of the total length (RFC 791 3.1: at least the header, at most what was received) and
/// the same result as `outer_of` (where the packet ends), without reading the header again.
/// `None` when the header differs (or there is no current one): the caller parses it.
#[inline(always)]
fn same_outer_v4(p: &[u8], addrs: Option<&[u8; 8]>) -> Option<Result<usize, DropReason>> {
    let addrs = addrs?;
    let h: &[u8; ip::IPV4_MIN_HEADER] = p.first_chunk()?;
    if h[0] != 0x45 || h[9] != proto::ESP || h[12..20] != addrs[..] {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    Some(if total < ip::IPV4_MIN_HEADER || total > p.len() {
        Err(DropReason::Malformed)
    } else {
        Ok(total)
    })
}

/// Whose replay window a packet is checked against (RFC 4303 3.4.3; RFC 9838 2.6: per SA,
/// or per sender by source address or by the Sender-ID in the IV's leading bits).
#[inline]
fn replay_sender(sa: &Sa, outer: &Outer<'_>, esp: Option<&[u8]>) -> Result<Sender, DropReason> {
    Ok(match sa.replay.sender_key() {
        None => Sender::Sa,
        Some(SenderKey::SourceAddress) => Sender::Address(outer.src),
        Some(SenderKey::SenderId) => {
            let iv = esp
                .and_then(|e| e.get(ESP_HEADER_LEN..ESP_HEADER_LEN + 8))
                .and_then(|s| <[u8; 8]>::try_from(s).ok())
                .ok_or(DropReason::Malformed)?;
            let bits = u32::from(sa.sender_id_bits).clamp(1, 63);
            Sender::Id((u64::from_be_bytes(iv) >> (64 - bits)) as u32)
        }
    })
}

/// Tunnel mode: checks the decrypted inner packet at `payload` in `buf` (its header, the
/// next header value, RFC 5374 5.2 item 6 address preservation, the SA's selectors, RFC
/// 4301 5.2 step 4) and returns where it sits; anything after its total length is TFC
/// padding (RFC 4303 2.4).
/// The length of the body (payload, padding, Pad Length, Next Header) of an `esp_len`-octet
/// ESP packet on `sa`: what is left after the header, IV and ICV, at least the two trailer
/// octets and a multiple of the cipher's block (RFC 4303 2.4, 3.4.2).
#[inline(always)]
fn body_len(sa: &Sa, esp_len: usize) -> Result<usize, DropReason> {
    let body_len = esp_len
        .checked_sub(ESP_HEADER_LEN + usize::from(sa.iv_len) + usize::from(sa.icv_len))
        .ok_or(DropReason::Malformed)?;
    if body_len < 2 || packet::rem(body_len, usize::from(sa.align).max(1)) != 0 {
        return Err(DropReason::Malformed);
    }
    Ok(body_len)
}

/// Verifies and decrypts the ESP packet at `esp_at` in place, then moves the replay window
/// (only authenticated packets do, RFC 4303 3.4.3) and strips the trailer (3.4.4.1):
/// where the payload sits and its Next Header. A dummy packet (Next Header 59, 2.6) is
/// dropped.
#[inline(always)]
fn open_body(
    sa: &Sa,
    sender: Sender,
    sn: u32,
    buf: &mut [u8],
    esp_at: usize,
    esp_len: usize,
    body_len: usize,
) -> Result<(std::ops::Range<usize>, u8), DropReason> {
    let esp_buf = buf
        .get_mut(esp_at..esp_at + esp_len)
        .ok_or(DropReason::BufferTooSmall)?;
    sa.cipher.open(esp_buf).map_err(|_| DropReason::Integrity)?;
    sa.replay.commit(sender, sn).map_err(replay_reason)?;
    let body_start = esp_at + ESP_HEADER_LEN + usize::from(sa.iv_len);
    let body = buf
        .get(body_start..body_start + body_len)
        .ok_or(DropReason::Malformed)?;
    let (payload_len, next_header) = packet::strip_trailer(body)?;
    if next_header == NEXT_HEADER_DUMMY {
        return Err(DropReason::Dummy);
    }
    Ok((body_start..body_start + payload_len, next_header))
}

#[inline(always)]
fn tunnel_inner(
    sa: &Sa,
    t: Tunnel,
    outer: &Outer<'_>,
    buf: &[u8],
    payload: std::ops::Range<usize>,
    next_header: u8,
) -> Result<std::ops::Range<usize>, DropReason> {
    let inner = buf.get(payload.clone()).ok_or(DropReason::Malformed)?;
    // The common case without selectors: an IPv4 packet, Next Header 4. The checks of
    // `ip::parse` on the fixed 20 octets (RFC 791 3.1), then the addresses.
    if sa.selectors.is_empty()
        && next_header == proto::IPV4
        && let Some(h) = inner.first_chunk::<{ ip::IPV4_MIN_HEADER }>()
        && h[0] >> 4 == 4
    {
        let ihl = usize::from(h[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
        if ihl < ip::IPV4_MIN_HEADER || inner.len() < ihl || total < ihl || total > inner.len() {
            return Err(DropReason::BadInner);
        }
        let src = IpAddr::from([h[12], h[13], h[14], h[15]]);
        let dst = IpAddr::from([h[16], h[17], h[18], h[19]]);
        // RFC 5374 5.2 item 6: preserved addresses must agree.
        if (t.preserve_src && src != outer.src) || (t.preserve_dst && dst != outer.dst) {
            return Err(DropReason::AddressMismatch);
        }
        return Ok(payload.start..payload.start + total);
    }
    // Ports are read only when there are selectors to check them against.
    let info = if sa.selectors.is_empty() {
        ip::parse_no_ports(inner)
    } else {
        ip::parse(inner)
    }
    .map_err(|_| DropReason::BadInner)?;
    let expect = if info.is_v6() {
        proto::IPV6
    } else {
        proto::IPV4
    };
    if next_header != expect {
        return Err(DropReason::BadInner);
    }
    // RFC 5374 5.2 item 6: preserved addresses must agree.
    if (t.preserve_src && info.src != outer.src) || (t.preserve_dst && info.dst != outer.dst) {
        return Err(DropReason::AddressMismatch);
    }
    if !sa.selectors.is_empty() && !sa.selectors.iter().any(|s| s.matches(&info)) {
        return Err(DropReason::PolicyMismatch);
    }
    Ok(payload.start..payload.start + info.total_len)
}

/// A run of consecutive packets with the same lookup key in `open_batch`.
#[derive(Default)]
struct Run {
    key: Option<(u32, IpAddr, IpAddr)>,
    /// The addresses of `key` are those of the outer header `open_batch` is using (it
    /// clears this whenever it parses another header).
    addrs_current: bool,
    sa: Option<Arc<Sa>>,
    admitted: Option<Result<(), DropReason>>,
    /// Delivered and not yet counted (SAs without byte or packet lifetimes).
    packets: u64,
    bytes: u64,
}

impl Run {
    /// Counts the run's delivered packets (RFC 4301 4.4.2.1 byte/packet counters).
    fn flush(&mut self) {
        if let Some(sa) = &self.sa {
            sa.account_unlimited(self.packets, self.bytes);
        }
        self.packets = 0;
        self.bytes = 0;
    }
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
