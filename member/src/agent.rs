//! The registration agent's core: every group membership of the host, sans-IO (STYLE Q1,
//! Q3). Datagrams, commands and `now` go in through `handle_*` calls and commands; IKE
//! datagrams to send, events, the multicast addresses to listen on and the next deadline
//! come out through `poll_*` calls and getters. Randomness is an argument. The runtime
//! (`runtime.rs`) only moves bytes and time.
//!
//! Calling contract: after any `handle_*` call or command, drain [`Agent::poll_transmit`]
//! and [`Agent::poll_event`], reconcile the sockets with [`Agent::rekey_endpoints`] and
//! [`Agent::membership_ids`], and call [`Agent::handle_timeout`] once
//! [`Agent::poll_timeout`] has passed.
//!
//! What one membership does (RFC 9838):
//! - registers with GSA_AUTH (2.3.1), or GSA_REGISTRATION over a live IKE SA (2.3.2),
//!   with IDg, the SAg of what this host supports (2.3.3, 4.3) and GROUP_SENDER when it
//!   sends (2.3.1);
//! - validates GSA and KD (`group::read_registration`), checks that the ESP engine can
//!   run every Data-Security SA and that the Rekey SA's destination is one address and
//!   port, and otherwise tells the GCKS with GSA_REGISTRATION carrying IDg and
//!   NO_PROPOSAL_CHOSEN or REGISTRATION_FAILED (2.3.2 Figure 8), installing nothing;
//! - installs TEKs in the shared engine, inbound for receivers and outbound for senders
//!   (2.3.3), and the Rekey SA inbound only (R020) as a `RekeyReader`; a registration
//!   replaces what an earlier one installed (R021): SAs no longer listed are deleted
//!   after DTD;
//! - applies GSA_REKEY (2.4.1.4): new TEKs installed, TEKs named in Delete payloads
//!   removed after DTD (R039), a new Rekey SA listened on while the old one waits out its
//!   DTD (R038, done by the reader);
//! - re-registers on soft expiry of a TEK not rekeyed yet (R040) or of the current Rekey
//!   SA (R041), when excluded (2.4.3, R042) or when a rekey cannot be used (2.4.1.4, R037),
//!   after a random delay (R043);
//! - considers itself excluded when the IKE SA closes and the registration brought no
//!   Rekey SA (R023), and re-registers;
//! - does not close the IKE SA itself (R022) unless it leaves the group.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gikev2_esp::{Action, Direction, Engine, Event as EngineEvent, PolicyId, SaId, SpdEntry};
use gikev2_proto::crypto::{DefaultKwk, KeyWrapKey, Random};
use gikev2_proto::group::{
    GroupKeys, HeldSenderIds, RekeyAuth, RekeyDrop, RekeyReader, RekeySpi, RekeyUpdate, Role, Tek,
    read_inband_rekey, read_registration,
};
use gikev2_proto::ike::{CloseReason, Event as IkeEvent, Goal, IkeSa, RegistrationRequest};
use gikev2_proto::registry::{ExchangeType, NotifyType, ProtocolId};
use gikev2_proto::wire::header::NAT_KEEPALIVE;
use gikev2_proto::wire::{DeletePayload, GsaPayload, Header, KdPayload, TrafficSelector};
use tracing::{debug, info, warn};

use crate::config::{MembershipConfig, NAT_T_PORT};
use crate::install::{DataPlane, PlanError, TekContext, TekInfo, sa_configs, selector};
use crate::sag::supported_sag;
use crate::status::{
    AgentEvent, GroupStatus, IkeSaStatus, RekeyCounters, RekeySaStatus, Status, TekStatus,
};

/// Identifies one membership inside the agent (also the engine's `owner` token).
pub type MembershipId = u64;

/// Times the retry delay doubles from `retry_min` after failed registrations (then
/// `retry_max` caps it anyway).
const BACKOFF_DOUBLINGS: u32 = 16;

/// Tunables of the agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Upper bound of the random delay before a re-registration that a rekey, an expiry or
    /// an exclusion asks for (RFC 9838 2.4.3, R043: "the order of seconds").
    pub reregister_jitter: Duration,
    /// First retry delay after a failed registration; doubles up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Soft lifetime of a TEK, as a random percentage of its hard lifetime in this range
    /// (RFC 4301 4.4.2.1), so that members do not all re-register at once.
    pub soft_lifetime_percent: (u8, u8),
    /// How long a leaving membership waits for the GCKS to answer its last messages.
    pub leave_timeout: Duration,
    /// Behind a NAT, a NAT-keepalive goes to the GCKS after this long without another
    /// datagram while the IKE SA stays open (RFC 3948 4; RFC 7296 2.23), so the GCKS can
    /// still reach the member (in-band rekey, RFC 9838 2.4.2). strongSwan's default.
    pub nat_keepalive: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            reregister_jitter: Duration::from_secs(5),
            retry_min: Duration::from_secs(2),
            retry_max: Duration::from_secs(120),
            soft_lifetime_percent: (80, 90),
            leave_timeout: Duration::from_secs(10),
            nat_keepalive: Duration::from_secs(20),
        }
    }
}

/// Where GSA_REKEY messages of a Rekey SA arrive (RFC 9838 4.4.2: one address, UDP, one
/// port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RekeyEndpoint {
    pub addr: IpAddr,
    pub port: u16,
}

impl core::fmt::Display for RekeyEndpoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", SocketAddr::new(self.addr, self.port))
    }
}

/// The endpoint of a Rekey SA's destination selector, if it is one address and port over
/// UDP (or any protocol).
pub fn rekey_endpoint(dst: &TrafficSelector) -> Option<RekeyEndpoint> {
    match dst {
        TrafficSelector::Range {
            ip_protocol: 0 | 17,
            start_port,
            end_port,
            start,
            end,
        } if start == end && start_port == end_port && *start_port != 0 => Some(RekeyEndpoint {
            addr: *start,
            port: *start_port,
        }),
        _ => None,
    }
}

/// An IKE datagram for the GCKS of a membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub membership: MembershipId,
    pub to: SocketAddr,
    /// Prepend the non-ESP marker (port 4500, RFC 3948 2.2).
    pub nat_t: bool,
    pub data: Vec<u8>,
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    #[error(
        "group {0:?} is already joined (`gm status` shows its state; `gm leave --group {0}` \
         first to join it again with other settings)"
    )]
    AlreadyJoined(String),
    #[error("group {0:?} is not joined")]
    NotJoined(String),
    /// RFC 9838 2.5.1: a sender asks for as many Sender-IDs as it has encryption modules.
    #[error(
        "--sender {asked}: this member's data plane seals with {modules} encryption \
         module(s), and a sender asks for as many Sender-IDs (RFC 9838 2.5.1)"
    )]
    SenderIdCount { asked: u32, modules: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// First registration in flight; nothing installed.
    Registering,
    /// Keys installed.
    Up,
    /// A registration failed; retrying later.
    Waiting,
    /// We rejected the group's policy (RFC 9838 2.3.2 Figure 8).
    Rejected,
    /// The GCKS refused us for good (INVALID_GROUP_ID, AUTHORIZATION_FAILED, ...).
    Refused,
    /// Excluded (RFC 9838 2.4.3, R023); re-registering.
    Excluded,
    /// Leaving: the last messages to the GCKS are in flight.
    Leaving,
}

/// What the last registration said about the group as a whole.
#[derive(Debug, Clone)]
struct GroupParams {
    sender_ids: Vec<u32>,
    sender_id_bits: Option<u16>,
    atd: Option<u16>,
    dtd: Option<u16>,
    transport_mode: bool,
    has_rekey: bool,
}

impl GroupParams {
    fn dtd(&self) -> Duration {
        Duration::from_secs(self.dtd.map_or(0, u64::from))
    }
}

#[derive(Debug, Clone)]
struct RekeySaMeta {
    spi: RekeySpi,
    /// The SPIs the GCKS reserved for this SA's replacement (GSA_NEXT_SPI, RFC 9838
    /// 4.4.2.2.3).
    next_spis: Vec<RekeySpi>,
    endpoint: RekeyEndpoint,
    auth: String,
    lifetime: Option<u32>,
    soft_at: Option<Instant>,
    expires: Option<Instant>,
    soft_fired: bool,
}

#[derive(Debug, Clone)]
struct InstalledTek {
    info: TekInfo,
    sa: SaId,
    protocol: ProtocolId,
    algorithm: String,
    sn: String,
    lifetime: Option<u32>,
    installed: Instant,
    expires: Option<Instant>,
    /// Removal after DTD (RFC 9838 2.4.1.4, R039) or after a registration replaced it.
    remove_at: Option<Instant>,
}

/// Shared state a membership needs from the agent.
struct Ctx<'a> {
    engine: &'a Arc<Engine>,
    data_plane: &'a Arc<dyn DataPlane>,
    config: &'a AgentConfig,
    events: &'a mut VecDeque<AgentEvent>,
    next_policy: &'a mut u64,
}

struct Membership {
    id: MembershipId,
    cfg: MembershipConfig,
    local: SocketAddr,
    ike: Option<IkeSa>,
    phase: Phase,
    /// A GSA_AUTH or GSA_REGISTRATION is in flight.
    in_flight: bool,
    params: Option<GroupParams>,
    reader: Option<RekeyReader>,
    rekey_sas: Vec<RekeySaMeta>,
    teks: Vec<InstalledTek>,
    policies: Vec<(TrafficSelector, TrafficSelector, PolicyId)>,
    reregister_at: Option<Instant>,
    failures: u32,
    registrations: u64,
    last_error: Option<String>,
    rejected_with: Option<NotifyType>,
    leave_deadline: Option<Instant>,
    /// When the next NAT-keepalive is due (only while behind a NAT with an IKE SA open).
    keepalive_at: Option<Instant>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A traffic selector as status shows it: `proto 17 239.1.1.1:5000`.
pub fn show_ts(ts: &TrafficSelector) -> String {
    match ts {
        TrafficSelector::Range {
            ip_protocol,
            start_port,
            end_port,
            start,
            end,
        } => {
            let addr = if start == end {
                start.to_string()
            } else {
                format!("{start}-{end}")
            };
            let ports = match (*start_port, *end_port) {
                (0, u16::MAX) => String::new(),
                (a, b) if a == b => format!(":{a}"),
                (a, b) => format!(":{a}-{b}"),
            };
            let proto = if *ip_protocol == 0 {
                String::new()
            } else {
                format!("proto {ip_protocol} ")
            };
            format!("{proto}{addr}{ports}")
        }
        TrafficSelector::Unknown { ty, .. } => format!("{ty:?}"),
    }
}

fn algorithm_name(tek: &Tek) -> String {
    let mut s = match tek.encr {
        Some(e) => match e.key_bits() {
            Some(b) => format!("{}-{b}", e.id()),
            None => e.id().to_string(),
        },
        None => String::new(),
    };
    if let Some(i) = tek.integ {
        if !s.is_empty() {
            s.push('+');
        }
        s.push_str(&i.id().to_string());
    }
    s
}

fn random_below(rng: &mut dyn Random, max: Duration) -> Duration {
    let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(rng.next_u64() % (ms + 1))
}

fn ms_until(t: Instant, now: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)
}

fn secs_until(t: Instant, now: Instant) -> u64 {
    t.saturating_duration_since(now).as_secs()
}

impl Membership {
    fn role(&self) -> Role {
        match self.cfg.sender_ids {
            Some(_) => Role::Sender {
                receives: self.cfg.receive,
            },
            None => Role::Receiver,
        }
    }

    fn emit(&self, cx: &mut Ctx<'_>, e: AgentEvent) {
        cx.events.push_back(e);
    }

    // ------------------------------------------------------------ registration

    fn start_registration(&mut self, cx: &mut Ctx<'_>, now: Instant, rng: &mut dyn Random) {
        self.reregister_at = None;
        let request = RegistrationRequest {
            group: self.cfg.group_id.clone(),
            sag: Some(supported_sag()),
            sender_ids: self.cfg.sender_ids,
        };
        match self.ike.as_mut().filter(|s| s.is_established()) {
            // RFC 9838 2.3.2, 2.4.3: a live IKE SA carries the re-registration.
            Some(sa) => sa.register(request, now, rng),
            None => {
                match IkeSa::initiate(
                    self.cfg.ike.clone(),
                    Goal::GsaAuth(request),
                    self.local,
                    self.cfg.gcks,
                    now,
                    rng,
                ) {
                    Ok(sa) => self.ike = Some(sa),
                    Err(e) => {
                        self.fail(cx, format!("cannot start the IKE SA: {e}"), now, rng);
                        return;
                    }
                }
            }
        }
        self.in_flight = true;
        if matches!(self.phase, Phase::Waiting | Phase::Excluded) && self.teks.is_empty() {
            self.phase = Phase::Registering;
        }
        info!(group = %self.cfg.group, gcks = %self.cfg.gcks, "registering");
    }

    /// A registration attempt failed: retry with exponential backoff.
    fn fail(&mut self, cx: &mut Ctx<'_>, reason: String, now: Instant, rng: &mut dyn Random) {
        warn!(group = %self.cfg.group, %reason, "registration failed");
        self.in_flight = false;
        self.failures = self.failures.saturating_add(1);
        self.last_error = Some(reason.clone());
        if self.phase == Phase::Registering {
            self.phase = Phase::Waiting;
        }
        let exp = self.failures.saturating_sub(1).min(BACKOFF_DOUBLINGS);
        let backoff = cx
            .config
            .retry_min
            .saturating_mul(1u32 << exp)
            .min(cx.config.retry_max);
        let delay = backoff + random_below(rng, cx.config.reregister_jitter);
        self.emit(
            cx,
            AgentEvent::Error {
                group: self.cfg.group.clone(),
                message: reason.clone(),
            },
        );
        self.schedule_at(cx, now + delay, now, reason);
    }

    /// Re-registers after a random delay (RFC 9838 2.4.3, R043).
    fn schedule_reregistration(
        &mut self,
        cx: &mut Ctx<'_>,
        reason: String,
        now: Instant,
        rng: &mut dyn Random,
    ) {
        let at = now + random_below(rng, cx.config.reregister_jitter);
        self.schedule_at(cx, at, now, reason);
    }

    fn schedule_at(&mut self, cx: &mut Ctx<'_>, at: Instant, now: Instant, reason: String) {
        if self.in_flight || self.reregister_at.is_some_and(|t| t <= at) {
            return;
        }
        info!(group = %self.cfg.group, in_ms = ms_until(at, now), %reason, "re-registration scheduled");
        self.reregister_at = Some(at);
        self.emit(
            cx,
            AgentEvent::Reregistering {
                group: self.cfg.group.clone(),
                in_ms: ms_until(at, now),
                reason,
            },
        );
    }

    fn on_ike_event(&mut self, cx: &mut Ctx<'_>, e: IkeEvent, now: Instant, rng: &mut dyn Random) {
        match e {
            IkeEvent::Registered {
                gsa,
                kd,
                transport_mode,
                kwk,
                ..
            } => {
                self.in_flight = false;
                if self.phase == Phase::Leaving {
                    return;
                }
                self.on_policy(cx, &gsa, &kd, kwk, transport_mode, None, now, rng);
            }
            IkeEvent::InbandRekey { gsa, kd, kwk } => {
                if self.phase == Phase::Leaving {
                    return;
                }
                // RFC 9838 2.4.2.2: processed as if received in a registration exchange.
                let tm = self.params.as_ref().is_some_and(|p| p.transport_mode);
                self.on_policy(cx, &gsa, &kd, kwk, tm, Some(()), now, rng);
            }
            IkeEvent::InbandDelete { deletes } => {
                if self.phase == Phase::Leaving {
                    return;
                }
                self.on_inband_delete(cx, &deletes, now, rng);
            }
            IkeEvent::RegistrationRefused { notify, .. } => {
                self.in_flight = false;
                self.on_refused(cx, notify, now, rng);
            }
            IkeEvent::Closed(reason) => {
                debug!(group = %self.cfg.group, ?reason, "IKE SA closed");
                if self.phase == Phase::Leaving {
                    return;
                }
                if self.in_flight {
                    if reason == CloseReason::ResponderNotVerified {
                        // Our configuration does not match the GCKS's credential: no quick
                        // retry fixes that, and each attempt has the GCKS admit us again
                        // (a Sender-ID for a sender). Straight to the longest backoff.
                        self.failures = self.failures.max(BACKOFF_DOUBLINGS + 1);
                    }
                    let why = crate::join::close_reason(&reason);
                    self.fail(cx, format!("IKE SA closed: {why}"), now, rng);
                } else if self.phase == Phase::Up
                    && !self.params.as_ref().is_some_and(|p| p.has_rekey)
                {
                    // RFC 9838 2.3.3 (R023): no GIKE_UPDATE policy and the IKE SA is gone:
                    // nothing can update our keys; we are excluded.
                    self.phase = Phase::Excluded;
                    let reason = "IKE SA closed and the group has no Rekey SA (RFC 9838 2.3.3)";
                    self.emit(
                        cx,
                        AgentEvent::Excluded {
                            group: self.cfg.group.clone(),
                            reason: reason.into(),
                        },
                    );
                    self.schedule_reregistration(cx, reason.into(), now, rng);
                }
            }
            IkeEvent::Established { peer_id } => {
                debug!(group = %self.cfg.group, peer = %peer_id, "IKE SA established");
            }
            other => debug!(group = %self.cfg.group, event = ?other, "ignored IKE event"),
        }
    }

    fn on_refused(
        &mut self,
        cx: &mut Ctx<'_>,
        notify: NotifyType,
        now: Instant,
        rng: &mut dyn Random,
    ) {
        warn!(group = %self.cfg.group, %notify, "the GCKS refused the registration");
        self.emit(
            cx,
            AgentEvent::Refused {
                group: self.cfg.group.clone(),
                notify: notify.to_string(),
            },
        );
        match notify {
            // Transient on the GCKS's side (RFC 9838 4.7.3): try again later.
            NotifyType::RegistrationFailed => {
                self.fail(cx, format!("refused: {notify}"), now, rng);
            }
            _ => {
                // Not a member: nothing we hold may be used any more.
                self.remove_all(cx);
                self.phase = Phase::Refused;
                self.last_error = Some(format!("refused by the GCKS: {notify}"));
                self.emit(
                    cx,
                    AgentEvent::GroupDown {
                        group: self.cfg.group.clone(),
                        reason: format!("refused: {notify}"),
                    },
                );
            }
        }
    }

    /// We cannot use the policy: tell the GCKS (RFC 9838 2.3.2 Figure 8) and install
    /// nothing. With `retry` the member registers again later (2.4.1.4, 2.5.2).
    fn reject(
        &mut self,
        cx: &mut Ctx<'_>,
        notify: NotifyType,
        reason: String,
        retry: bool,
        now: Instant,
        rng: &mut dyn Random,
    ) {
        warn!(group = %self.cfg.group, %notify, %reason, "rejecting the group policy");
        match self.ike.as_mut().filter(|s| !s.is_closed()) {
            Some(sa) => sa.leave(self.cfg.group_id.clone(), notify, now, rng),
            None => warn!(group = %self.cfg.group, "no IKE SA left to report the rejection on"),
        }
        self.rejected_with = Some(notify);
        self.last_error = Some(reason.clone());
        self.emit(
            cx,
            AgentEvent::Rejected {
                group: self.cfg.group.clone(),
                notify: notify.to_string(),
                reason: reason.clone(),
            },
        );
        if retry {
            self.fail(cx, reason, now, rng);
        } else {
            // The GCKS removes us from the group (2.3.2): stop using what we held.
            self.remove_all(cx);
            self.phase = Phase::Rejected;
        }
    }

    /// GSA and KD of a registration (`inband` None) or GSA_INBAND_REKEY: validate, then
    /// install everything or nothing. `kwk` is the GSK_w of the IKE SA that carried them
    /// (RFC 9838 3.1.1), which may be one an IKE SA rekey just replaced.
    #[allow(clippy::too_many_arguments)]
    fn on_policy(
        &mut self,
        cx: &mut Ctx<'_>,
        gsa: &GsaPayload,
        kd: &KdPayload,
        kwk: Option<DefaultKwk>,
        transport_mode: bool,
        inband: Option<()>,
        now: Instant,
        rng: &mut dyn Random,
    ) {
        let kwk: KeyWrapKey = match kwk.as_ref().map(DefaultKwk::key) {
            Some(Ok(k)) => k,
            Some(Err(e)) => {
                return self.reject(
                    cx,
                    NotifyType::NoProposalChosen,
                    format!("no key wrap key: {e}"),
                    false,
                    now,
                    rng,
                );
            }
            None => {
                return self.reject(
                    cx,
                    NotifyType::NoProposalChosen,
                    "no key wrap key: no Key Wrap Algorithm negotiated".into(),
                    false,
                    now,
                    rng,
                );
            }
        };
        let read = match (inband, &self.params) {
            // RFC 9838 2.4.2.2, 4.5.3.3: no Sender-IDs in GSA_INBAND_REKEY; a sender keeps
            // those it registered with.
            (Some(()), Some(p)) => {
                let held = HeldSenderIds {
                    ids: p.sender_ids.clone(),
                    bits: p.sender_id_bits,
                };
                read_inband_rekey(gsa, kd, &kwk, self.role(), &held)
            }
            _ => read_registration(gsa, kd, &kwk, self.role()),
        };
        let keys: GroupKeys = match read {
            Ok(k) => k,
            Err(e) => {
                return self.reject(cx, e.notify(), e.to_string(), e.must_reregister(), now, rng);
            }
        };
        // The Rekey SA: somewhere we can listen, with a suite we can run.
        let mut rekey_meta = None;
        let mut fresh_reader = None;
        if let (Some(r), Some(auth)) = (&keys.rekey, &keys.auth) {
            let Some(endpoint) = rekey_endpoint(&r.dst) else {
                return self.reject(
                    cx,
                    NotifyType::NoProposalChosen,
                    format!(
                        "Rekey SA destination {} is not one address and UDP port (RFC 9838 4.4.2)",
                        show_ts(&r.dst)
                    ),
                    false,
                    now,
                    rng,
                );
            };
            match RekeyReader::new(&keys, now) {
                Ok(reader) => fresh_reader = Some(reader),
                Err(e) => {
                    return self.reject(cx, e.notify(), e.to_string(), false, now, rng);
                }
            }
            let lifetime = r.lifetime;
            let soft = lifetime.map(|l| {
                now + Duration::from_secs(u64::from(l))
                    * u32::from(cx.config.soft_lifetime_percent.1)
                    / 100
            });
            rekey_meta = Some(RekeySaMeta {
                spi: r.spi,
                next_spis: r.next_spis.clone(),
                endpoint,
                auth: match auth {
                    RekeyAuth::Implicit => "implicit".into(),
                    RekeyAuth::Signature { scheme, .. } => format!("{scheme:?}"),
                },
                lifetime,
                soft_at: soft,
                expires: lifetime.map(|l| now + Duration::from_secs(u64::from(l))),
                soft_fired: false,
            });
        }
        let params = GroupParams {
            sender_ids: keys.sender_ids.clone(),
            sender_id_bits: keys.sender_id_bits,
            atd: keys.atd,
            dtd: keys.dtd,
            transport_mode,
            has_rekey: keys.rekey.is_some(),
        };
        // The TEKs, all or nothing.
        let ctx = self.tek_context(&params);
        let mut added: Vec<InstalledTek> = Vec::new();
        let mut kept: Vec<SaId> = Vec::new();
        for tek in &keys.teks {
            let existing: Vec<SaId> = self
                .teks
                .iter()
                .filter(|t| t.info.spi == tek.spi && t.protocol == tek.protocol)
                .map(|t| t.sa)
                .collect();
            if !existing.is_empty() {
                kept.extend(existing);
                continue;
            }
            match self.install_tek(cx, tek, &ctx, now, rng) {
                Ok(v) => added.extend(v),
                Err(e) => {
                    self.uninstall(cx, added);
                    return self.reject(
                        cx,
                        e.notify(),
                        e.to_string(),
                        e.must_reregister(),
                        now,
                        rng,
                    );
                }
            }
        }
        // Everything is usable: commit (RFC 9838 2.3.3, R021: replace the old state).
        let dtd = params.dtd();
        for t in &mut self.teks {
            if kept.contains(&t.sa) {
                t.remove_at = None;
            } else if t.remove_at.is_none() {
                t.remove_at = Some(now + dtd);
            }
        }
        let installed: Vec<String> = added
            .iter()
            .map(|t| format!("{:#010x}", t.info.spi))
            .collect();
        let deleting: Vec<String> = self
            .teks
            .iter()
            .filter(|t| t.remove_at.is_some())
            .map(|t| format!("{:#010x}", t.info.spi))
            .collect();
        self.teks.extend(added);
        match (fresh_reader, self.reader.as_mut()) {
            (Some(_), Some(existing)) => {
                // Keeps the replay floor of a Rekey SA already listened on (2.3.3).
                if let Err(e) = existing.reregistered(&keys, now) {
                    warn!(group = %self.cfg.group, error = %e, "rekey reader");
                }
            }
            (Some(fresh), None) => self.reader = Some(fresh),
            (None, _) => self.reader = None,
        }
        self.rekey_sas = rekey_meta.into_iter().collect();
        self.params = Some(params);
        self.phase = Phase::Up;
        self.failures = 0;
        self.last_error = None;
        self.rejected_with = None;
        self.reregister_at = None;
        match inband {
            None => {
                self.registrations += 1;
                info!(group = %self.cfg.group, teks = keys.teks.len(), rekey_sa = keys.rekey.is_some(), "registered");
                self.emit(
                    cx,
                    AgentEvent::GroupUp {
                        group: self.cfg.group.clone(),
                        teks: keys.teks.len(),
                        rekey_sa: keys.rekey.is_some(),
                        sender_ids: keys.sender_ids.clone(),
                    },
                );
            }
            Some(()) => self.emit(
                cx,
                AgentEvent::Rekeyed {
                    group: self.cfg.group.clone(),
                    message_id: None,
                    installed,
                    deleting,
                    new_rekey_sa: keys.rekey.is_some(),
                },
            ),
        }
    }

    fn tek_context(&self, p: &GroupParams) -> TekContext {
        TekContext {
            owner: self.id,
            transport_mode: p.transport_mode,
            sender_ids: p.sender_ids.clone(),
            sender_id_bits: p.sender_id_bits,
            atd: Duration::from_secs(p.atd.map_or(0, u64::from)),
            dtd: p.dtd(),
        }
    }

    /// The SPD policy of an outbound TEK's selectors, created on first use.
    fn policy_for(&mut self, cx: &mut Ctx<'_>, tek: &Tek) -> Result<PolicyId, PlanError> {
        if let Some((_, _, p)) = self
            .policies
            .iter()
            .find(|(s, d, _)| *s == tek.src && *d == tek.dst)
        {
            return Ok(*p);
        }
        let sel = selector(tek)?;
        let id = PolicyId(*cx.next_policy);
        *cx.next_policy += 1;
        // Group policies go first: they are more specific than the host's defaults.
        cx.engine.spd().update(|v| {
            if !v.iter().any(|e| e.action == Action::Protect(id)) {
                v.insert(
                    0,
                    SpdEntry {
                        selectors: vec![sel],
                        action: Action::Protect(id),
                    },
                );
            }
        });
        self.policies.push((tek.src.clone(), tek.dst.clone(), id));
        Ok(id)
    }

    fn install_tek(
        &mut self,
        cx: &mut Ctx<'_>,
        tek: &Tek,
        ctx: &TekContext,
        now: Instant,
        rng: &mut dyn Random,
    ) -> Result<Vec<InstalledTek>, PlanError> {
        let policy = if tek.outbound {
            Some(self.policy_for(cx, tek)?)
        } else {
            None
        };
        let (lo, hi) = cx.config.soft_lifetime_percent;
        let (lo, hi) = (u64::from(lo.min(hi)), u64::from(hi.max(lo)));
        let soft = tek.lifetime.map(|l| {
            let pct = lo + rng.next_u64() % (hi - lo + 1);
            u64::from(l) * pct / 100
        });
        let configs = sa_configs(tek, ctx, policy, soft)?;
        let mut done: Vec<InstalledTek> = Vec::new();
        for c in configs {
            let direction = c.direction;
            match cx.engine.install(c, now) {
                Ok(h) => {
                    let info = TekInfo {
                        group: self.cfg.group.clone(),
                        spi: tek.spi,
                        direction,
                        src: tek.src.clone(),
                        dst: tek.dst.clone(),
                        policy: if direction == Direction::Outbound {
                            policy
                        } else {
                            None
                        },
                    };
                    cx.data_plane.sa_installed(&info);
                    done.push(InstalledTek {
                        info,
                        sa: h.id(),
                        protocol: tek.protocol,
                        algorithm: algorithm_name(tek),
                        sn: tek.sn.to_string(),
                        lifetime: tek.lifetime,
                        installed: now,
                        expires: tek
                            .lifetime
                            .map(|l| now + Duration::from_secs(u64::from(l))),
                        remove_at: None,
                    });
                }
                Err(source) => {
                    self.uninstall(cx, done);
                    return Err(PlanError::Engine {
                        spi: tek.spi,
                        source,
                    });
                }
            }
        }
        Ok(done)
    }

    fn uninstall(&mut self, cx: &mut Ctx<'_>, teks: Vec<InstalledTek>) {
        for t in teks {
            cx.engine.remove(t.sa);
            cx.data_plane.sa_removed(&t.info);
        }
    }

    /// Removes every SA and SPD entry of the group and stops listening for rekeys.
    fn remove_all(&mut self, cx: &mut Ctx<'_>) {
        let teks = std::mem::take(&mut self.teks);
        self.uninstall(cx, teks);
        let ids: Vec<PolicyId> = self.policies.drain(..).map(|(_, _, p)| p).collect();
        if !ids.is_empty() {
            cx.engine.spd().update(|v| {
                v.retain(|e| !matches!(e.action, Action::Protect(p) if ids.contains(&p)))
            });
        }
        self.reader = None;
        self.rekey_sas.clear();
        self.params = None;
    }

    // ------------------------------------------------------------ rekey

    fn on_rekey(&mut self, cx: &mut Ctx<'_>, datagram: &[u8], now: Instant, rng: &mut dyn Random) {
        let Some(reader) = self.reader.as_mut() else {
            return;
        };
        match reader.handle(datagram, now) {
            Ok(None) => {}
            Ok(Some(u)) => self.apply_rekey(cx, u, now, rng),
            Err(RekeyDrop::Content(e)) => {
                // Authentic but unusable: the current policy must come from a registration
                // (RFC 9838 2.4.1.4).
                warn!(group = %self.cfg.group, error = %e, "unusable GSA_REKEY");
                self.last_error = Some(format!("unusable GSA_REKEY: {e}"));
                self.schedule_reregistration(cx, format!("unusable GSA_REKEY: {e}"), now, rng);
            }
            Err(d) => debug!(group = %self.cfg.group, drop = %d, "GSA_REKEY dropped"),
        }
    }

    /// Whether the GCKS announced `spi` for the replacement of one of our Rekey SAs
    /// (GSA_NEXT_SPI, RFC 9838 4.4.2.2.3).
    fn announced_next(&self, spi: &RekeySpi) -> bool {
        self.rekey_sas.iter().any(|m| m.next_spis.contains(spi))
    }

    /// A GSA_REKEY arrived over an announced next Rekey SA that no rekey told us about:
    /// one was lost; re-register (RFC 9838 4.4.2.2.3, R084).
    fn lost_rekey(&mut self, cx: &mut Ctx<'_>, spi: &RekeySpi, now: Instant, rng: &mut dyn Random) {
        let why = format!(
            "GSA_REKEY over the announced next Rekey SA {} (GSA_NEXT_SPI): the rekey that \
             created it was lost",
            hex(spi)
        );
        warn!(group = %self.cfg.group, "{why}");
        self.last_error = Some(why.clone());
        self.schedule_reregistration(cx, why, now, rng);
    }

    fn apply_rekey(
        &mut self,
        cx: &mut Ctx<'_>,
        u: RekeyUpdate,
        now: Instant,
        rng: &mut dyn Random,
    ) {
        info!(group = %self.cfg.group, message_id = u.message_id, teks = u.teks.len(), deletes = u.deletes.len(), "GSA_REKEY");
        let Some(params) = self.params.as_mut() else {
            return;
        };
        if u.atd.is_some() {
            params.atd = u.atd;
        }
        if u.dtd.is_some() {
            params.dtd = u.dtd;
        }
        let params = params.clone();
        let dtd = params.dtd();
        if let Some(sa) = &u.new_rekey {
            match rekey_endpoint(&sa.dst) {
                Some(endpoint) => {
                    let auth = self
                        .rekey_sas
                        .last()
                        .map(|m| m.auth.clone())
                        .unwrap_or_default();
                    self.rekey_sas.push(RekeySaMeta {
                        spi: sa.spi,
                        next_spis: sa.next_spis.clone(),
                        endpoint,
                        auth,
                        lifetime: sa.lifetime,
                        soft_at: sa.lifetime.map(|l| {
                            now + Duration::from_secs(u64::from(l))
                                * u32::from(cx.config.soft_lifetime_percent.1)
                                / 100
                        }),
                        expires: sa.lifetime.map(|l| now + Duration::from_secs(u64::from(l))),
                        soft_fired: false,
                    });
                }
                None => self.schedule_reregistration(
                    cx,
                    format!(
                        "new Rekey SA destination {} is not one address and port",
                        show_ts(&sa.dst)
                    ),
                    now,
                    rng,
                ),
            }
        }
        let before: Vec<SaId> = self.teks.iter().map(|t| t.sa).collect();
        let ctx = self.tek_context(&params);
        let mut installed = Vec::new();
        for tek in &u.teks {
            if self
                .teks
                .iter()
                .any(|t| t.info.spi == tek.spi && t.protocol == tek.protocol)
            {
                continue;
            }
            match self.install_tek(cx, tek, &ctx, now, rng) {
                Ok(v) => {
                    installed.push(format!("{:#010x}", tek.spi));
                    self.teks.extend(v);
                }
                Err(e) => {
                    warn!(group = %self.cfg.group, error = %e, "cannot install a rekeyed SA");
                    self.last_error = Some(e.to_string());
                    self.schedule_reregistration(cx, e.to_string(), now, rng);
                }
            }
        }
        let deleting = self.retire_deleted(&u.deletes, &before, now + dtd);
        self.emit(
            cx,
            AgentEvent::Rekeyed {
                group: self.cfg.group.clone(),
                message_id: Some(u.message_id),
                installed,
                deleting,
                new_rekey_sa: u.new_rekey.is_some(),
            },
        );
        if u.excluded {
            // RFC 9838 2.4.3 (R042, R043).
            self.phase = Phase::Excluded;
            self.emit(
                cx,
                AgentEvent::Excluded {
                    group: self.cfg.group.clone(),
                    reason: "excluded by GSA_REKEY Delete (RFC 9838 2.4.3)".into(),
                },
            );
            self.schedule_reregistration(cx, "excluded from the group".into(), now, rng);
        }
        if u.must_reregister {
            // RFC 9838 2.4.1.4 (R036, R037).
            self.schedule_reregistration(
                cx,
                "counter-mode SA for a sender without a Sender-ID".into(),
                now,
                rng,
            );
        }
    }

    /// RFC 9838 2.4.1.4 (R039), 2.4.3: the Data-Security SAs among `before` that Delete
    /// payloads name leave at `at` (after DTD); a zero SPI names all of its protocol, and
    /// protocol 0 deletes the whole Group SA, "all Data-Security SAs and Rekey SA" (4.6).
    /// Returns the SPIs now being deleted.
    fn retire_deleted(
        &mut self,
        deletes: &[DeletePayload],
        before: &[SaId],
        at: Instant,
    ) -> Vec<String> {
        let mut deleting = Vec::new();
        for d in deletes {
            let whole = d.is_whole_group();
            if !whole && !matches!(d.protocol, ProtocolId::Esp | ProtocolId::Ah) {
                continue;
            }
            let all = whole || d.is_all_of_protocol();
            let spis: Vec<u32> = d.child_spis().collect();
            for t in &mut self.teks {
                let named = (whole || t.protocol == d.protocol)
                    && before.contains(&t.sa)
                    && (all || spis.contains(&t.info.spi));
                if named && t.remove_at.is_none() {
                    t.remove_at = Some(at);
                    deleting.push(format!("{:#010x}", t.info.spi));
                }
            }
        }
        deleting.dedup();
        deleting
    }

    /// Delete payloads of a GSA_INBAND_REKEY (RFC 9838 2.4.3, Figure 13): the SAs they name
    /// go after DTD as in GSA_REKEY; GIKE_UPDATE with a zero SPI (or protocol 0) excludes
    /// us, and we MUST re-register to stay (over this IKE SA, with GSA_REGISTRATION).
    fn on_inband_delete(
        &mut self,
        cx: &mut Ctx<'_>,
        deletes: &[DeletePayload],
        now: Instant,
        rng: &mut dyn Random,
    ) {
        info!(group = %self.cfg.group, deletes = deletes.len(), "GSA_INBAND_REKEY Delete");
        let dtd = self
            .params
            .as_ref()
            .map_or(Duration::ZERO, GroupParams::dtd);
        let before: Vec<SaId> = self.teks.iter().map(|t| t.sa).collect();
        let deleting = self.retire_deleted(deletes, &before, now + dtd);
        self.emit(
            cx,
            AgentEvent::Rekeyed {
                group: self.cfg.group.clone(),
                message_id: None,
                installed: Vec::new(),
                deleting,
                new_rekey_sa: false,
            },
        );
        if deletes.iter().any(DeletePayload::excludes_member) {
            self.phase = Phase::Excluded;
            self.emit(
                cx,
                AgentEvent::Excluded {
                    group: self.cfg.group.clone(),
                    reason: "excluded by GSA_INBAND_REKEY Delete (RFC 9838 2.4.3)".into(),
                },
            );
            self.schedule_reregistration(cx, "excluded from the group".into(), now, rng);
        }
    }

    // ------------------------------------------------------------ time

    fn on_engine_event(
        &mut self,
        cx: &mut Ctx<'_>,
        id: SaId,
        hard: bool,
        now: Instant,
        rng: &mut dyn Random,
    ) {
        let Some(pos) = self.teks.iter().position(|t| t.sa == id) else {
            return;
        };
        if hard {
            // The engine removes hard-expired SAs itself.
            let t = self.teks.remove(pos);
            cx.data_plane.sa_removed(&t.info);
            return;
        }
        let t = &self.teks[pos];
        let superseded = self.teks.iter().any(|o| {
            o.sa != t.sa
                && o.remove_at.is_none()
                && o.info.direction == t.info.direction
                && o.info.src == t.info.src
                && o.info.dst == t.info.dst
                && o.installed > t.installed
        });
        if !superseded && t.remove_at.is_none() {
            // RFC 9838 2.4.1.4 (R040).
            let reason = format!("soft lifetime of ESP SA {:#010x}", t.info.spi);
            self.schedule_reregistration(cx, reason, now, rng);
        }
    }

    fn handle_timeout(&mut self, cx: &mut Ctx<'_>, now: Instant, rng: &mut dyn Random) {
        if let Some(sa) = self.ike.as_mut()
            && sa.poll_timeout().is_some_and(|t| t <= now)
        {
            sa.handle_timeout(now, rng);
        }
        if let Some(r) = self.reader.as_mut() {
            r.handle_timeout(now);
            let live = r.rekey_spis();
            self.rekey_sas.retain(|m| live.contains(&m.spi));
        }
        // R041: the current Rekey SA is about to expire and was not replaced.
        let current = self.rekey_sas.last().map(|m| m.spi);
        let mut soft = false;
        for m in &mut self.rekey_sas {
            if !m.soft_fired && m.soft_at.is_some_and(|t| t <= now) {
                m.soft_fired = true;
                soft |= Some(m.spi) == current;
            }
        }
        if soft {
            self.schedule_reregistration(cx, "soft lifetime of the Rekey SA".into(), now, rng);
        }
        let (due, keep): (Vec<InstalledTek>, Vec<InstalledTek>) = std::mem::take(&mut self.teks)
            .into_iter()
            .partition(|t| t.remove_at.is_some_and(|r| r <= now));
        self.teks = keep;
        if !due.is_empty() {
            debug!(group = %self.cfg.group, n = due.len(), "SAs removed after DTD");
        }
        self.uninstall(cx, due);
        if self.reregister_at.is_some_and(|t| t <= now) && !self.in_flight {
            self.start_registration(cx, now, rng);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let ike = self.ike.as_ref().and_then(IkeSa::poll_timeout);
        let reader = self.reader.as_ref().and_then(RekeyReader::poll_timeout);
        let teks = self.teks.iter().filter_map(|t| t.remove_at).min();
        let soft = self
            .rekey_sas
            .iter()
            .filter(|m| !m.soft_fired)
            .filter_map(|m| m.soft_at)
            .min();
        let leave = if self.phase == Phase::Leaving {
            self.leave_deadline
        } else {
            None
        };
        [
            ike,
            reader,
            teks,
            soft,
            self.reregister_at,
            leave,
            self.keepalive_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn finished(&self, now: Instant) -> bool {
        self.phase == Phase::Leaving
            && (self.ike.as_ref().is_none_or(IkeSa::is_closed)
                || self.leave_deadline.is_some_and(|d| now >= d))
    }

    fn state_name(&self) -> &'static str {
        match (self.phase, self.in_flight) {
            (Phase::Registering, _) => "registering",
            (Phase::Up, true) => "reregistering",
            (Phase::Up, false) => "up",
            (Phase::Waiting, _) => "waiting",
            (Phase::Rejected, _) => "rejected",
            (Phase::Refused, _) => "refused",
            (Phase::Excluded, _) => "excluded",
            (Phase::Leaving, _) => "leaving",
        }
    }

    fn status(&self, engine: &Engine, now: Instant) -> GroupStatus {
        let p = self.params.as_ref();
        let current = self.rekey_sas.last().map(|m| m.spi);
        GroupStatus {
            group: self.cfg.group.clone(),
            gcks: self.cfg.gcks.to_string(),
            state: self.state_name().into(),
            role: match self.role() {
                Role::Receiver => "receiver",
                Role::Sender { receives: false } => "sender",
                Role::Sender { receives: true } => "sender+receiver",
            }
            .into(),
            auth: self.cfg.auth_kind.into(),
            sender_ids: p.map(|p| p.sender_ids.clone()).unwrap_or_default(),
            sender_id_bits: p.and_then(|p| p.sender_id_bits),
            atd: p.and_then(|p| p.atd),
            dtd: p.and_then(|p| p.dtd),
            transport_mode: p.is_some_and(|p| p.transport_mode),
            ike_sa: self.ike.as_ref().map(|sa| {
                let (i, r) = sa.spis();
                IkeSaStatus {
                    spi_i: hex(&i),
                    spi_r: hex(&r),
                    established: sa.is_established(),
                    remote: sa.remote().to_string(),
                    nat: sa.nat().map(|n| {
                        match (n.local_behind, n.peer_behind) {
                            (false, false) => "none",
                            (true, false) => "member",
                            (false, true) => "gcks",
                            (true, true) => "both",
                        }
                        .to_string()
                    }),
                }
            }),
            rekey_sas: self
                .rekey_sas
                .iter()
                .map(|m| RekeySaStatus {
                    spi: hex(&m.spi),
                    listen: m.endpoint.to_string(),
                    auth: m.auth.clone(),
                    lifetime_s: m.lifetime,
                    expires_in_s: m.expires.map(|t| secs_until(t, now)),
                    current: Some(m.spi) == current,
                })
                .collect(),
            rekey_stats: self.reader.as_ref().map(|r| {
                let s = r.stats();
                RekeyCounters {
                    accepted: s.accepted,
                    replayed: s.replayed,
                    integrity_failed: s.integrity_failed,
                    bad_signature: s.bad_signature,
                    malformed: s.malformed,
                    unknown_spi: s.unknown_spi,
                    bad_content: s.bad_content,
                }
            }),
            teks: self
                .teks
                .iter()
                .map(|t| {
                    let stats = engine.stats(t.sa);
                    TekStatus {
                        spi: format!("{:#010x}", t.info.spi),
                        protocol: t.protocol.to_string(),
                        direction: match t.info.direction {
                            Direction::Inbound => "inbound",
                            Direction::Outbound => "outbound",
                        }
                        .into(),
                        algorithm: t.algorithm.clone(),
                        sn: t.sn.clone(),
                        src: show_ts(&t.info.src),
                        dst: show_ts(&t.info.dst),
                        lifetime_s: t.lifetime,
                        expires_in_s: t.expires.map(|e| secs_until(e, now)),
                        state: if t.remove_at.is_some() {
                            "deleting"
                        } else {
                            "active"
                        }
                        .into(),
                        deleted_in_ms: t.remove_at.map(|r| ms_until(r, now)),
                        packets: stats.as_ref().map_or(0, |s| s.packets),
                        bytes: stats.as_ref().map_or(0, |s| s.bytes),
                        sa_id: t.sa.0,
                    }
                })
                .collect(),
            registrations: self.registrations,
            next_registration_in_ms: self.reregister_at.map(|t| ms_until(t, now)),
            last_error: self.last_error.clone(),
            rejected_with: self.rejected_with.map(|n| n.to_string()),
        }
    }
}

/// Every group membership of the host and the shared ESP engine they install into. See
/// the module documentation for the calling contract.
pub struct Agent {
    engine: Arc<Engine>,
    data_plane: Arc<dyn DataPlane>,
    config: AgentConfig,
    memberships: BTreeMap<MembershipId, Membership>,
    next_id: MembershipId,
    next_policy: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<AgentEvent>,
    /// GSA_REKEY datagrams no membership knew the SPI of.
    unknown_rekeys: u64,
}

impl core::fmt::Debug for Agent {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Agent")
            .field("memberships", &self.memberships.len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// First SPD policy id the agent allocates (kept apart from ids other SPD users pick).
const POLICY_BASE: u64 = 0x4d45_4d42_0000_0000;

macro_rules! ctx {
    ($self:ident) => {
        Ctx {
            engine: &$self.engine,
            data_plane: &$self.data_plane,
            config: &$self.config,
            events: &mut $self.events,
            next_policy: &mut $self.next_policy,
        }
    };
}

impl Agent {
    pub fn new(engine: Arc<Engine>, data_plane: Arc<dyn DataPlane>, config: AgentConfig) -> Self {
        data_plane.attach(engine.clone());
        Self {
            engine,
            data_plane,
            config,
            memberships: BTreeMap::new(),
            next_id: 1,
            next_policy: POLICY_BASE,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            unknown_rekeys: 0,
        }
    }

    /// The shared engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Starts a membership; its IKE datagrams leave from `local` (the runtime's socket).
    pub fn join(
        &mut self,
        cfg: MembershipConfig,
        local: SocketAddr,
        now: Instant,
        rng: &mut dyn Random,
    ) -> Result<MembershipId, AgentError> {
        if self.memberships.values().any(|m| m.cfg.group == cfg.group) {
            return Err(AgentError::AlreadyJoined(cfg.group));
        }
        if let (Some(asked), Some(modules)) = (cfg.sender_ids, self.data_plane.encryption_modules())
            && asked != modules
        {
            return Err(AgentError::SenderIdCount { asked, modules });
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut m = Membership {
            id,
            cfg,
            local,
            ike: None,
            phase: Phase::Registering,
            in_flight: false,
            params: None,
            reader: None,
            rekey_sas: Vec::new(),
            teks: Vec::new(),
            policies: Vec::new(),
            reregister_at: None,
            failures: 0,
            registrations: 0,
            last_error: None,
            rejected_with: None,
            leave_deadline: None,
            keepalive_at: None,
        };
        let mut cx = ctx!(self);
        m.start_registration(&mut cx, now, rng);
        self.memberships.insert(id, m);
        self.pump(id, now, rng);
        Ok(id)
    }

    /// Leaves a group: its SAs are removed at once; the GCKS is told with GSA_REGISTRATION
    /// (IDg, REGISTRATION_FAILED; RFC 9838 2.3.2) and the IKE SA is deleted.
    pub fn leave(
        &mut self,
        group: &str,
        now: Instant,
        rng: &mut dyn Random,
    ) -> Result<(), AgentError> {
        let id = self
            .membership_id(group)
            .ok_or_else(|| AgentError::NotJoined(group.into()))?;
        let leave_timeout = self.config.leave_timeout;
        let mut cx = ctx!(self);
        let Some(m) = self.memberships.get_mut(&id) else {
            return Err(AgentError::NotJoined(group.into()));
        };
        if m.phase == Phase::Leaving {
            return Ok(());
        }
        m.remove_all(&mut cx);
        m.reregister_at = None;
        m.in_flight = false;
        m.phase = Phase::Leaving;
        m.leave_deadline = Some(now + leave_timeout);
        if let Some(sa) = m.ike.as_mut().filter(|s| s.is_established()) {
            sa.leave(
                m.cfg.group_id.clone(),
                NotifyType::RegistrationFailed,
                now,
                rng,
            );
            sa.delete(now, rng);
        } else if let Some(sa) = m.ike.as_mut() {
            sa.delete(now, rng);
        }
        cx.events.push_back(AgentEvent::GroupDown {
            group: group.into(),
            reason: "left".into(),
        });
        self.pump(id, now, rng);
        self.reap(now);
        Ok(())
    }

    /// The membership of a group, by name.
    pub fn membership_id(&self, group: &str) -> Option<MembershipId> {
        self.memberships
            .values()
            .find(|m| m.cfg.group == group)
            .map(|m| m.id)
    }

    /// Memberships alive (the runtime keeps one IKE socket for each).
    pub fn membership_ids(&self) -> Vec<MembershipId> {
        self.memberships.keys().copied().collect()
    }

    /// An IKE datagram arrived for a membership (without the non-ESP marker).
    pub fn handle_ike(
        &mut self,
        id: MembershipId,
        datagram: &[u8],
        now: Instant,
        rng: &mut dyn Random,
    ) {
        if let Some(sa) = self.memberships.get_mut(&id).and_then(|m| m.ike.as_mut()) {
            sa.handle(datagram, now, rng);
        }
        self.pump(id, now, rng);
        self.reap(now);
    }

    /// A datagram arrived on a rekey endpoint: routed by its Rekey SA SPI.
    pub fn handle_rekey(
        &mut self,
        at: RekeyEndpoint,
        datagram: &[u8],
        now: Instant,
        rng: &mut dyn Random,
    ) {
        let Ok(h) = Header::read_datagram(datagram) else {
            self.unknown_rekeys += 1;
            return;
        };
        if h.exchange != ExchangeType::GsaRekey {
            self.unknown_rekeys += 1;
            return;
        }
        let spi = h.rekey_spi();
        let target = self.memberships.values().find(|m| {
            m.reader
                .as_ref()
                .is_some_and(|r| r.rekey_spis().contains(&spi))
        });
        let Some(id) = target.map(|m| m.id) else {
            self.unknown_rekeys += 1;
            // RFC 9838 4.4.2.2.3 (R084): an SPI the GCKS reserved for a Rekey SA's
            // replacement, which we never heard of: the rekey that created it was lost.
            let announced = self
                .memberships
                .values()
                .find(|m| m.announced_next(&spi))
                .map(|m| m.id);
            let Some(id) = announced else {
                debug!(%at, "GSA_REKEY for no Rekey SA of ours");
                return;
            };
            let mut cx = ctx!(self);
            if let Some(m) = self.memberships.get_mut(&id) {
                m.lost_rekey(&mut cx, &spi, now, rng);
            }
            self.pump(id, now, rng);
            return;
        };
        let mut cx = ctx!(self);
        if let Some(m) = self.memberships.get_mut(&id) {
            m.on_rekey(&mut cx, datagram, now, rng);
        }
        self.pump(id, now, rng);
    }

    /// Processes everything due at `now`: engine lifetimes and DTD removals, IKE
    /// retransmissions, Rekey SA expiry, scheduled re-registrations.
    pub fn handle_timeout(&mut self, now: Instant, rng: &mut dyn Random) {
        self.engine.handle_timeout(now);
        while let Some(EngineEvent::Expired {
            id, owner, hard, ..
        }) = self.engine.poll_event()
        {
            let mut cx = ctx!(self);
            if let Some(m) = self.memberships.get_mut(&owner) {
                m.on_engine_event(&mut cx, id, hard, now, rng);
            }
        }
        let ids: Vec<MembershipId> = self.memberships.keys().copied().collect();
        for id in ids {
            let mut cx = ctx!(self);
            if let Some(m) = self.memberships.get_mut(&id) {
                m.handle_timeout(&mut cx, now, rng);
            }
            self.pump(id, now, rng);
        }
        self.reap(now);
    }

    /// The next deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.memberships
            .values()
            .filter_map(Membership::poll_timeout)
            .chain(self.engine.poll_timeout())
            .min()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<AgentEvent> {
        self.events.pop_front()
    }

    /// Where to listen for GSA_REKEY messages now.
    pub fn rekey_endpoints(&self) -> BTreeSet<RekeyEndpoint> {
        self.memberships
            .values()
            .filter(|m| m.reader.is_some())
            .flat_map(|m| m.rekey_sas.iter().map(|r| r.endpoint))
            .collect()
    }

    /// The state of every membership (never keys).
    pub fn status(&self, now: Instant) -> Status {
        Status {
            groups: self
                .memberships
                .values()
                .map(|m| m.status(&self.engine, now))
                .collect(),
            engine_sas: self.engine.sa_count(),
        }
    }

    /// Engine SA ids of a group's TEKs with their direction (for tests and diagnostics).
    pub fn installed(&self, group: &str) -> Vec<(u32, Direction, SaId)> {
        self.memberships
            .values()
            .filter(|m| m.cfg.group == group)
            .flat_map(|m| m.teks.iter().map(|t| (t.info.spi, t.info.direction, t.sa)))
            .collect()
    }

    /// Drains a membership's IKE SA: events first (they may queue requests), then
    /// datagrams; drops the SA once closed.
    fn pump(&mut self, id: MembershipId, now: Instant, rng: &mut dyn Random) {
        for _ in 0..64 {
            let mut cx = ctx!(self);
            let Some(m) = self.memberships.get_mut(&id) else {
                return;
            };
            if let Some(sa) = m.ike.as_mut() {
                let mut sent = false;
                while let Some(d) = sa.poll_datagram() {
                    // To the GCKS's address, or its port 4500 once NAT detection moved the
                    // IKE SA there (RFC 7296 2.23), where the marker goes first.
                    self.transmits.push_back(Transmit {
                        membership: id,
                        to: d.remote,
                        nat_t: d.remote.port() == NAT_T_PORT,
                        data: d.data,
                    });
                    sent = true;
                }
                // RFC 3948 4: behind a NAT, a keepalive when nothing else was sent for a
                // while keeps the NAT's mapping for the GCKS's messages.
                let behind = !sa.is_closed() && sa.nat().is_some_and(|n| n.local_behind);
                if !behind {
                    m.keepalive_at = None;
                } else if sent || m.keepalive_at.is_none() {
                    m.keepalive_at = Some(now + self.config.nat_keepalive);
                } else if m.keepalive_at.is_some_and(|t| t <= now) {
                    self.transmits.push_back(Transmit {
                        membership: id,
                        to: sa.remote(),
                        nat_t: false,
                        data: vec![NAT_KEEPALIVE],
                    });
                    m.keepalive_at = Some(now + self.config.nat_keepalive);
                }
            } else {
                m.keepalive_at = None;
            }
            let mut evs = Vec::new();
            if let Some(sa) = m.ike.as_mut() {
                while let Some(e) = sa.poll_event() {
                    evs.push(e);
                }
            }
            if evs.is_empty() {
                if m.ike.as_ref().is_some_and(IkeSa::is_closed) {
                    m.ike = None;
                }
                return;
            }
            for e in evs {
                m.on_ike_event(&mut cx, e, now, rng);
            }
        }
    }

    /// Forgets memberships that have finished leaving.
    fn reap(&mut self, now: Instant) {
        self.memberships.retain(|_, m| !m.finished(now));
    }
}
