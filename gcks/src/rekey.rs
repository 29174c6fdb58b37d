//! The multicast rekey sender: GSA_REKEY messages pushed to a group when its key state
//! changes (RFC 9838 2.4.1), so members switch to new SAs without re-registering.
//!
//! Every tick the scheduler looks at each group with multicast rekey whose rekey lease it
//! holds (one GCKS process sends for a group, [`gikev2_policy::Store::acquire_rekey_lease`]):
//!
//! 1. It makes the group's key state current ([`crate::state::ensure_current_with`]): an
//!    SA is renewed a quarter of its lifetime before it expires
//!    ([`crate::state::push_margin`]), before members' soft lifetime would make them
//!    re-register (2.4.1.4) and before registrations would renew it themselves (at the
//!    later [`crate::state::renew_margin`]); whichever renews, the other sees the result.
//! 2. It compares that state with the one the members were last given, the *announced*
//!    state (at start, or when the lease is taken over, the state the store had before
//!    this tick renewed anything).
//! 3. When TEKs or the Rekey SA changed, it builds one GSA_REKEY over the announced Rekey
//!    SA, the KEK the members hold (2.4.1): the new TEKs and, when it was replaced, the new
//!    Rekey SA in GSA and KD; a Delete of the TEKs that are gone (2.4.3), which members keep
//!    for DEACTIVATION_TIME_DELAY (2.4.1.4). With GCAUTH Digital Signature it is signed with
//!    the group's signing key (2.4.1.1).
//!
//!    "A G-IKEv2 rekey message MUST NOT change the policy without creating a new KEK"
//!    (3.2.1, R055): when the message changes the group's policy as the members were
//!    given it (`GivenPolicy`: a TEK policy added, removed, or edited so that its TEK is
//!    replaced, or the group-wide policy a GSA carries) and the Rekey SA was not due, a
//!    new Rekey SA is committed first, like a scheduled renewal, and goes in the same
//!    message. A TEK renewed under an unchanged TEK policy keeps the KEK
//!    (docs/interop.md #53). A TEK with sequential numbers in the message is marked as
//!    given to the group's senders first (when one is authorized), so that no later sender
//!    registration gets it (RFC 9838 4.4.2.1.3; docs/interop.md #65); one a sender
//!    registration had replaced goes out like any TEK a registration renewed, with the KEK.
//! 4. The same datagrams go out [`RekeySchedulerConfig::copies`] times,
//!    [`RekeySchedulerConfig::spacing`] apart: "bitwise identical and ... within a short
//!    time interval" (2.4.1.3, R034). There is no response and no IKE window (2.4.1, R026).
//!
//! Message IDs: over the Rekey SA that is still current the ID comes from the store,
//! committed before the message is built ([`gikev2_policy::Store::next_rekey_message_id`]),
//! so no ID is sent twice, across restarts and processes. When a registration renewed the
//! Rekey SA before the scheduler saw it, the old SA's counter is no longer in the store;
//! the scheduler then continues its own copy of that counter, which is exact because only
//! the lease holder takes rekey Message IDs. The first message over a new Rekey SA has
//! Message ID 0 (2.4.1.3).
//!
//! Sender-IDs (RFC 9838 2.5.1 step 5, R046): when a group's Sender-ID space is exhausted
//! and a sender was refused one (`group_state.sender_id_refusals`), the scheduler starts
//! over ([`RekeyScheduler::tick`] does it in place of a renewal): it replaces every SA of
//! the group, excludes every member with a GSA_REKEY over the Rekey SA they hold that
//! carries only a Delete of all ESP SAs and one of all GIKE_UPDATE SAs (zero SPIs, 2.4.3),
//! and only then starts a new Sender-ID epoch. Members re-register after a random delay
//! and get the new SAs and new Sender-IDs, which are only ever used with the new TEKs.
//!
//! Forward access control (RFC 9838 3.2.1, `groups.forward_access_control`): when a
//! membership ended (a member left, was deleted or lost its authorization;
//! `group_state.members_removed`), the scheduler starts over the same way, without a new
//! Sender-ID epoch. Without a key hierarchy the GCKS cannot give new keys to the others
//! without giving them to the one gone, so none are sent over the old Rekey SA: the
//! members still authorized get them by re-registering over their own IKE SA (which also
//! meets 3.2.1's "two sequential rekey messages": no policy change ever reaches a denied
//! member).
//!
//! What is not pushed (members catch up by re-registering at soft expiry, 2.4.1.4): a
//! renewal made while no process held the lease, and policy edits that renew no SA (a TEK
//! policy edit that keeps the TEK's key size, a GWP_ATD/GWP_DTD edit); these go out, with
//! a new KEK, in the next message that carries the edited TEK policy or a GSA. The policy
//! last announced is kept in the store (`group_state.announced_policy`), so an edit made
//! while no process ran, or before a process took the group's lease over, is a change too;
//! only an edit made before the first look at a group ever is taken as already given.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use gikev2_policy::{
    GroupConfig, GroupId, GroupState as StoredState, RekeyMode, SnPolicy, Store, StoreError,
    TekPolicyId, TekPolicySpec, TekSaRecord,
};
use gikev2_proto::crypto::{Random, SystemRandom};
use gikev2_proto::group::{GroupAuth, RekeyBuildError, RekeyContent, RekeySender, RekeySpi};
use gikev2_proto::registry::{ProtocolId, SnId};
use gikev2_proto::wire::DeletePayload;
use gikev2_proto::wire::notify::NotifyPayload;
use tokio::net::UdpSocket;
use tracing::{Instrument, debug, info, warn};

use crate::group_view::GroupViews;
use crate::rekey_source::{MulticastOptions, RekeySources};
use crate::state::{
    StateFailure, TickGroups, Ticks, ensure_current_with, group_auth, plan_new_kek, plan_with,
    push_margin, tick_groups, to_proto,
};

/// How the scheduler runs and sends.
#[derive(Debug, Clone)]
pub struct RekeySchedulerConfig {
    /// How often every group is looked at.
    pub tick: Duration,
    /// Copies of each GSA_REKEY (RFC 9838 2.4.1.3); at least 1.
    pub copies: u8,
    /// Time between two copies.
    pub spacing: Duration,
    /// Seconds a rekey lease lasts; renewed every tick.
    pub lease_ttl: u64,
    /// This process's name in the lease table.
    pub holder: String,
    /// IKE fragmentation threshold for GSA_REKEY (RFC 9838 2.4.1.2): the largest message
    /// sent whole, in octets. `None` never fragments.
    pub fragment_size: Option<usize>,
    /// IP_MULTICAST_TTL / IPV6_MULTICAST_HOPS of the datagrams.
    pub multicast_ttl: u32,
    /// IPv4 interface (by address) multicast leaves from; `None`: the routing table's.
    pub multicast_if_v4: Option<Ipv4Addr>,
    /// IPv6 interface (by index) multicast leaves from; `None`: the routing table's.
    pub multicast_if_v6: Option<u32>,
}

impl Default for RekeySchedulerConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            copies: 3,
            spacing: Duration::from_secs(1),
            lease_ttl: 30,
            holder: default_holder(),
            fragment_size: None,
            multicast_ttl: 8,
            multicast_if_v4: None,
            multicast_if_v6: None,
        }
    }
}

/// `host:pid:random`, unique per process.
pub fn default_holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mut r = [0u8; 4];
    SystemRandom::new().fill(&mut r);
    format!(
        "{host}:{}:{:08x}",
        std::process::id(),
        u32::from_be_bytes(r)
    )
}

/// One GSA_REKEY the scheduler sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentRekey {
    /// The group's name.
    pub group: String,
    pub message_id: u32,
    /// The Rekey SA it went over (the one the members held).
    pub over: RekeySpi,
    /// The Rekey SA it introduced, if any.
    pub new_rekey_sa: Option<RekeySpi>,
    pub new_teks: Vec<u32>,
    pub deleted_teks: Vec<u32>,
    /// Every member excluded (Delete of all ESP and GIKE_UPDATE SAs, RFC 9838 2.4.3).
    pub excluded_all: bool,
    /// The Sender-ID epoch started after excluding every member (2.5.1 step 5).
    pub sender_id_epoch: Option<u64>,
    /// The ended memberships every member was excluded for (forward access control).
    pub members_removed: u64,
    /// The message changed the group's policy, so it also introduced a new Rekey SA
    /// (RFC 9838 3.2.1, R055; docs/interop.md #53).
    pub policy_changed: bool,
    pub dst: SocketAddr,
    /// The datagrams (ciphertext), each sent [`RekeySchedulerConfig::copies`] times.
    pub datagrams: Vec<Vec<u8>>,
}

/// Why a group's rekey could not be sent (the group is tried again next tick).
#[derive(Debug, thiserror::Error)]
pub enum RekeyError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("group {group}: {source}")]
    State { group: String, source: StateFailure },
    #[error("group {group}: {reason}")]
    Policy { group: String, reason: String },
    #[error("group {group}: building GSA_REKEY: {source}")]
    Build {
        group: String,
        source: RekeyBuildError,
    },
    #[error("group {group}: no socket to send GSA_REKEY from ({reason})")]
    Socket { group: String, reason: String },
}

/// What the members of a group were last given.
struct Announced {
    state: StoredState,
    /// The next Message ID over `state`'s Rekey SA, as far as this process knows.
    next_message_id: u64,
    /// The policy that came with it.
    policy: GivenPolicy,
}

impl Announced {
    fn new(state: StoredState, policy: GivenPolicy) -> Self {
        let next_message_id = state.next_rekey_message_id;
        Self {
            state,
            next_message_id,
            policy,
        }
    }

    /// Members given `state` by registering: the group's current policy.
    fn current(cfg: &GroupConfig, state: StoredState) -> Self {
        let policy = GivenPolicy::current(cfg, &state);
        Self::new(state, policy)
    }
}

/// The group's policy as the members were given it, for RFC 9838 3.2.1's "A G-IKEv2
/// rekey message MUST NOT change the policy without creating a new KEK" (R055). Policy
/// is read as the TEK policies (selectors, protocol, algorithms, mode, SN transform) and
/// the group-wide policy (docs/interop.md #53); TEK SPIs and keys are not policy, so a TEK
/// renewed under an unchanged TEK policy changes nothing here. The SN transform is the one
/// the TEK carried: a TEK of an `auto` policy replaced because a second sender was
/// authorized goes from sequential to unspecified numbers, a policy change
/// (docs/interop.md #58).
///
/// It is kept in the store (`group_state.announced_policy`, [`GivenPolicy::to_text`]) so
/// that a process starting, or taking the group's lease over, knows what the members hold
/// even if the policy was edited while no process ran.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GivenPolicy {
    /// For each TEK policy the members hold a TEK of, the policy that TEK came with
    /// ([`as_given`]), as [`given_text`] writes it.
    teks: BTreeMap<TekPolicyId, String>,
    /// GWP_ATD and GWP_DTD, the group-wide attributes a GSA_REKEY carries with every GSA
    /// (GWP_SENDER_ID_BITS never travels in one, RFC 9838 5 Table 2).
    gw: (Option<u16>, Option<u16>),
}

fn gw_of(cfg: &GroupConfig) -> (Option<u16>, Option<u16>) {
    let p = &cfg.group.spec.policy;
    (p.atd, p.dtd)
}

/// A TEK policy as the members of a TEK with transform `sn` were given it in the GSA: the
/// SN transform fixed to the TEK's, and without `max_packet_rate`, which is not on the
/// wire (a TEK replaced because the rate was raised is no policy change).
fn as_given(spec: &TekPolicySpec, sn: SnId) -> TekPolicySpec {
    TekPolicySpec {
        sn: SnPolicy::Fixed(sn),
        max_packet_rate: 0,
        ..spec.clone()
    }
}

/// The policy of `cur`'s TEK `t` as a GSA gives it now, as text to compare and to store:
/// the `Debug` form of [`as_given`], one line. Equal specs give equal texts; a new
/// release that printed a spec differently would only make one GSA_REKEY carry a new KEK
/// it did not need, the safe side of R055.
fn given_text(cfg: &GroupConfig, t: &TekSaRecord) -> Option<String> {
    tek_policy_spec(cfg, t.policy).map(|spec| spec_text(spec, t.sn))
}

/// `spec` as members of a TEK with transform `sn` were given it, as text ([`given_text`]).
fn spec_text(spec: &TekPolicySpec, sn: SnId) -> String {
    format!("{:?}", as_given(spec, sn))
}

fn tek_policy_spec(cfg: &GroupConfig, id: TekPolicyId) -> Option<&TekPolicySpec> {
    cfg.teks.iter().find(|p| p.id == id).map(|p| &p.spec)
}

fn tek_of(s: &StoredState, spi: u32) -> Option<&TekSaRecord> {
    s.teks.iter().find(|t| t.spi == spi)
}

fn tek_policy_of(s: &StoredState, spi: u32) -> Option<TekPolicyId> {
    tek_of(s, spi).map(|t| t.policy)
}

impl GivenPolicy {
    /// The stored form: a `tek <id> <text>` line per TEK policy and a `gw <atd> <dtd>`
    /// line (`-` for an absent attribute).
    fn to_text(&self) -> String {
        let opt = |v: Option<u16>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        let mut out = String::new();
        for (id, text) in &self.teks {
            out.push_str(&format!("tek {} {text}\n", id.0));
        }
        out.push_str(&format!("gw {} {}\n", opt(self.gw.0), opt(self.gw.1)));
        out
    }

    /// Reads [`GivenPolicy::to_text`]; `None` for text it did not write.
    fn from_text(text: &str) -> Option<Self> {
        let opt = |v: &str| match v {
            "-" => Some(None),
            v => v.parse().ok().map(Some),
        };
        let mut teks = BTreeMap::new();
        let mut gw = None;
        for line in text.lines() {
            match line.split_once(' ')? {
                ("tek", rest) => {
                    let (id, spec) = rest.split_once(' ')?;
                    teks.insert(TekPolicyId(id.parse().ok()?), spec.to_string());
                }
                ("gw", rest) => {
                    let (atd, dtd) = rest.split_once(' ')?;
                    gw = Some((opt(atd)?, opt(dtd)?));
                }
                _ => return None,
            }
        }
        Some(Self { teks, gw: gw? })
    }

    /// What registering members holding `state` got: `cfg`'s policy. At the first look
    /// at a group ever, the scheduler cannot know better; after that the store keeps
    /// what was announced (`Store::announced_policy`).
    fn current(cfg: &GroupConfig, state: &StoredState) -> Self {
        let teks = state
            .teks
            .iter()
            .filter_map(|t| Some((t.policy, given_text(cfg, t)?)))
            .collect();
        Self {
            teks,
            gw: gw_of(cfg),
        }
    }

    /// Whether a GSA_REKEY telling `told` (from `old` to `cur`) changes the policy the
    /// members hold: a new TEK of a TEK policy they hold no TEK of (a policy added) or
    /// whose policy is not the one they were given (edited); a TEK deleted whose policy
    /// has no TEK left (a policy removed); a GSA whose group-wide policy differs.
    fn changed_by(
        &self,
        cfg: &GroupConfig,
        old: &StoredState,
        cur: &StoredState,
        told: &Changes,
    ) -> bool {
        let added_or_edited = told.new.iter().any(|&spi| {
            tek_of(cur, spi).is_none_or(|t| self.teks.get(&t.policy) != given_text(cfg, t).as_ref())
        });
        let removed = told.gone.iter().any(|&spi| {
            tek_policy_of(old, spi).is_none_or(|p| !cur.teks.iter().any(|t| t.policy == p))
        });
        let carries_gsa = told.kek.is_some() || !told.new.is_empty();
        added_or_edited || removed || (carries_gsa && self.gw != gw_of(cfg))
    }

    /// What the members hold once they got `told`, which took them to `cur`.
    fn after(&self, cfg: &GroupConfig, cur: &StoredState, told: &Changes) -> Self {
        let (sent, kept): (Vec<_>, Vec<_>) =
            cur.teks.iter().partition(|t| told.new.contains(&t.spi));
        let mut teks = BTreeMap::new();
        // A TEK policy just sent is held as sent; the others as they were given before
        // (or, for a TEK the members got by registering only, as `cfg` has it).
        for t in sent {
            if let Some(spec) = given_text(cfg, t) {
                teks.insert(t.policy, spec);
            }
        }
        for t in kept {
            if let Some(spec) = self
                .teks
                .get(&t.policy)
                .cloned()
                .or_else(|| given_text(cfg, t))
            {
                teks.entry(t.policy).or_insert(spec);
            }
        }
        let carries_gsa = told.kek.is_some() || !told.new.is_empty();
        Self {
            teks,
            gw: if carries_gsa { gw_of(cfg) } else { self.gw },
        }
    }
}

fn rekey_spi(s: &StoredState) -> Option<RekeySpi> {
    s.rekey.as_ref().map(|r| r.spi)
}

fn tek_spis(s: &StoredState) -> Vec<u32> {
    s.teks.iter().map(|t| t.spi).collect()
}

/// What a GSA_REKEY must tell members who hold `old` so they hold `cur`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Changes {
    /// The Rekey SA of `cur`, when it is not `old`'s.
    kek: Option<RekeySpi>,
    /// TEKs of `cur` that `old` does not have.
    new: Vec<u32>,
    /// TEKs of `old` that `cur` dropped.
    gone: Vec<u32>,
    /// Instead of the above: every member excluded (RFC 9838 2.4.3), no new keys.
    exclude_all: bool,
}

impl Changes {
    fn is_empty(&self) -> bool {
        self.kek.is_none() && self.new.is_empty() && self.gone.is_empty() && !self.exclude_all
    }

    fn exclusion() -> Self {
        Self {
            kek: None,
            new: Vec::new(),
            gone: Vec::new(),
            exclude_all: true,
        }
    }
}

/// True when `state`'s Sender-ID counter reached the end of the group's space and a
/// sender was refused a Sender-ID since (RFC 9838 2.5.1 step 5). The refusal is the
/// demand: a group whose senders exactly fill the space is left alone.
fn sender_ids_wanted(cfg: &GroupConfig, state: &StoredState) -> bool {
    let Some(bits) = cfg.group.spec.policy.sender_id_bits else {
        return false;
    };
    state.sender_id_refusals > 0 && state.next_sender_id >= 1u64 << u32::from(bits).min(32)
}

/// The ended memberships that call for excluding every member: those of a group with
/// forward access control (RFC 9838 3.2.1).
fn departures(cfg: &GroupConfig, state: &StoredState) -> u64 {
    if cfg.group.spec.policy.forward_access_control {
        state.members_removed
    } else {
        0
    }
}

/// A margin no SA meets: [`plan_with`] replaces every SA of the group.
fn replace_all(_lifetime: u64) -> u64 {
    u64::MAX
}

fn changes(old: &StoredState, cur: &StoredState) -> Changes {
    let kek = rekey_spi(cur).filter(|s| rekey_spi(old) != Some(*s));
    let (old_teks, cur_teks) = (tek_spis(old), tek_spis(cur));
    let new: Vec<u32> = cur_teks
        .iter()
        .copied()
        .filter(|s| !old_teks.contains(s))
        .collect();
    let gone: Vec<u32> = old_teks
        .iter()
        .copied()
        .filter(|s| !cur_teks.contains(s))
        .collect();
    Changes {
        kek,
        new,
        gone,
        exclude_all: false,
    }
}

/// Sends GSA_REKEY messages for the groups of a store.
pub struct RekeyScheduler {
    store: Arc<Store>,
    config: RekeySchedulerConfig,
    /// The sockets GSA_REKEY leaves from (a server socket when one fits the group's rekey
    /// source, so normally the GCKS's port 848) and the KEK policy's source selector
    /// naming them, shared with the registrar's views (RFC 9838 4.4.2, R063).
    sources: Arc<RekeySources>,
    announced: HashMap<GroupId, Announced>,
    views: Option<Arc<GroupViews>>,
    lease_until: HashMap<GroupId, u64>,
}

impl RekeyScheduler {
    /// A `tick` under 10 ms is taken as 10 ms, `copies` under 1 as 1.
    pub fn new(
        store: Arc<Store>,
        mut config: RekeySchedulerConfig,
        sockets: Vec<Arc<UdpSocket>>,
    ) -> Self {
        config.tick = config.tick.max(Duration::from_millis(10));
        config.copies = config.copies.max(1);
        let sources = Arc::new(RekeySources::new(
            sockets,
            MulticastOptions {
                ttl: config.multicast_ttl,
                if_v4: config.multicast_if_v4,
                if_v6: config.multicast_if_v6,
            },
        ));
        Self {
            store,
            config,
            sources,
            announced: HashMap::new(),
            views: None,
            lease_until: HashMap::new(),
        }
    }

    /// The registrar's group views, dropped after every change this scheduler sends, so
    /// that the next registration hands out the new SAs at once. They take the KEK
    /// policy's source selector from this scheduler's [`RekeySources`], so registrations
    /// and GSA_REKEY messages name the same source (RFC 9838 4.4.2, R063).
    pub fn with_views(mut self, views: Arc<GroupViews>) -> Self {
        views.use_rekey_sources(self.sources.clone());
        self.views = Some(views);
        self
    }

    /// Where this scheduler's GSA_REKEY messages leave from.
    pub fn sources(&self) -> &Arc<RekeySources> {
        &self.sources
    }

    /// Records what the members of group `id` now hold: in memory, and in the store when
    /// the policy changed (R055 across restarts, `Store::set_announced_policy`).
    async fn remember(&mut self, id: GroupId, a: Announced) -> Result<(), StoreError> {
        if self
            .announced
            .get(&id)
            .is_none_or(|prev| prev.policy != a.policy)
        {
            self.store
                .set_announced_policy(id, &a.policy.to_text())
                .await?;
        }
        self.announced.insert(id, a);
        Ok(())
    }

    /// Runs a tick every [`RekeySchedulerConfig::tick`] until `shutdown` completes.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        let mut ticks = Ticks::new(self.config.tick, shutdown);
        while let Some(now) = ticks.next().await {
            for e in self.tick(now).await.into_iter().filter_map(Result::err) {
                warn!(error = %e, "GSA_REKEY not sent");
            }
        }
        for group in self.lease_until.keys() {
            let _ = self
                .store
                .release_rekey_lease(*group, &self.config.holder)
                .await;
        }
    }

    /// Looks at every multicast group at Unix time `now`; sends what changed. The first
    /// copy of each message is sent before this returns, the others on their own task.
    pub async fn tick(&mut self, now: u64) -> Vec<Result<SentRekey, RekeyError>> {
        let groups = match self.store.group_rows().await {
            Ok(g) => g,
            Err(e) => return vec![Err(e.into())],
        };
        let TickGroups {
            groups,
            seen,
            unreadable,
        } = tick_groups(groups, RekeyMode::Multicast);
        let mut out: Vec<_> = unreadable.into_iter().map(|e| Err(e.into())).collect();
        for g in groups {
            // A span per group (STYLE); attached to the future, not entered across awaits.
            let span = tracing::info_span!("rekey", group = %g.spec.name);
            match self.group_tick(&g.spec.idg, now).instrument(span).await {
                Ok(Some(sent)) => out.push(Ok(sent)),
                Ok(None) => {}
                Err(e) => out.push(Err(e)),
            }
        }
        self.announced.retain(|id, _| seen.contains(id));
        self.lease_until.retain(|id, _| seen.contains(id));
        out
    }

    async fn holds_lease(&mut self, group: GroupId, now: u64) -> Result<bool, StoreError> {
        let ttl = self.config.lease_ttl.max(2);
        if self
            .lease_until
            .get(&group)
            .is_some_and(|&until| until > now.saturating_add(ttl / 2))
        {
            return Ok(true);
        }
        let held = self
            .store
            .acquire_rekey_lease(group, &self.config.holder, ttl, now)
            .await?;
        if held {
            self.lease_until.insert(group, now.saturating_add(ttl));
        } else {
            self.lease_until.remove(&group);
        }
        Ok(held)
    }

    async fn group_tick(
        &mut self,
        idg: &gikev2_policy::Identity,
        now: u64,
    ) -> Result<Option<SentRekey>, RekeyError> {
        let Some(cfg) = self.store.group_config(idg).await? else {
            return Ok(None);
        };
        let id = cfg.group.id;
        let name = cfg.group.spec.name.clone();
        let state_err = |source| RekeyError::State {
            group: name.clone(),
            source,
        };
        let policy_err = |reason: String| RekeyError::Policy {
            group: name.clone(),
            reason,
        };
        if !self.holds_lease(id, now).await? {
            // Another process sends; start from what the store has if we take over.
            self.announced.remove(&id);
            return Ok(None);
        }
        let before = self
            .store
            .group_state(id)
            .await?
            .ok_or_else(|| policy_err("no group_state row".into()))?;
        // First look (start, or the lease taken over): the members have what the store
        // has, so an SA due for renewal now (after a restart, say) is still pushed, and
        // the policy the store says was last announced (R055: a policy edited while no
        // process ran is a change, and goes out with a new KEK).
        if !self.announced.contains_key(&id) {
            let first = match self.store.announced_policy(id).await?.as_deref() {
                Some(text) => match GivenPolicy::from_text(text) {
                    Some(policy) => Announced::new(before.clone(), policy),
                    None => {
                        warn!(group = %name, "announced policy unreadable; taking the current one");
                        Announced::current(&cfg, before.clone())
                    }
                },
                None => Announced::current(&cfg, before.clone()),
            };
            self.store
                .set_announced_policy(id, &first.policy.to_text())
                .await?;
            self.announced.insert(id, first);
        }
        let Some(prev) = self.announced.get(&id) else {
            return Ok(None);
        };
        let old = prev.state.clone();
        let given = prev.policy.clone();
        let mut next_mid = prev.next_message_id;
        // One count for the whole tick: TEK sequence numbers are chosen with it (a TEK
        // with sequential numbers is due once a second sender is authorized, R077) and
        // the message's policy is built with it.
        let senders = self.store.sender_count(id).await?;
        let due = {
            let mut rng = SystemRandom::new();
            plan_with(&cfg, &before, senders, now, &mut rng, push_margin)
                .map_err(policy_err)?
                .is_some()
        };
        let pending = changes(&old, &before);
        let old_spi = rekey_spi(&old);
        if rekey_spi(&before) == old_spi {
            next_mid = next_mid.max(before.next_rekey_message_id);
        }
        let set_mid = |s: &mut Self, m: u64| {
            if let Some(a) = s.announced.get_mut(&id) {
                a.next_message_id = m;
            }
        };
        set_mid(self, next_mid);
        let start_over = sender_ids_wanted(&cfg, &before) || departures(&cfg, &before) > 0;
        if !due && pending.is_empty() && !start_over {
            return Ok(None);
        }
        let usable_kek = old.rekey.as_ref().is_some_and(|r| r.expires > now);
        let Some(over) = old_spi.filter(|_| usable_kek) else {
            // The members hold no Rekey SA we could send over: they re-register.
            let cur = ensure_current_with(&self.store, &cfg, senders, now, push_margin)
                .await
                .map_err(state_err)?;
            debug!("no current Rekey SA to announce over; members re-register");
            self.remember(id, Announced::current(&cfg, cur)).await?;
            return Ok(None);
        };
        // The Message ID first, committed (over the still-current Rekey SA), or from our
        // copy of the counter of a Rekey SA the store already replaced.
        let message_id = if rekey_spi(&before) == Some(over) {
            self.store.next_rekey_message_id(id, &over).await?
        } else {
            u32::try_from(next_mid)
                .map_err(|_| policy_err("GSA_REKEY Message IDs exhausted".into()))?
        };
        set_mid(self, u64::from(message_id) + 1);
        if start_over {
            return self
                .start_over(&cfg, &old, &before, senders, message_id, now)
                .await
                .map(Some);
        }
        let cur = if due {
            ensure_current_with(&self.store, &cfg, senders, now, push_margin)
                .await
                .map_err(state_err)?
        } else {
            before
        };
        let told = changes(&old, &cur);
        if told.is_empty() {
            return Ok(None);
        }
        // RFC 9838 3.2.1 (R055): "A G-IKEv2 rekey message MUST NOT change the policy
        // without creating a new KEK". A message that changes it and does not already
        // carry a new Rekey SA (a scheduled renewal) gets one, committed first.
        let policy_changed = given.changed_by(&cfg, &old, &cur, &told);
        let (cur, told) = if policy_changed && told.kek.is_none() {
            let cur = self.new_kek(&cfg, &cur, now).await?;
            let told = changes(&old, &cur);
            if told.kek.is_none() {
                return Err(policy_err(
                    "a policy change without a new Rekey SA is not sent".into(),
                ));
            }
            (cur, told)
        } else {
            (cur, told)
        };
        let now_given = given.after(&cfg, &cur, &told);
        // RFC 9838 4.4.2.1.3 (R077): the message reaches the group's senders too, so a
        // TEK with sequential numbers it carries while a sender is authorized goes to no
        // later sender registration (that one gets a new TEK, docs/interop.md #65);
        // committed before the message is sent.
        if senders > 0 {
            let sequential: Vec<u32> = told
                .new
                .iter()
                .copied()
                .filter(|&spi| tek_of(&cur, spi).is_some_and(|t| t.sn == SnId::Seq32))
                .collect();
            self.store.mark_teks_sender_claimed(id, &sequential).await?;
        }
        let mut sent = self
            .send(&cfg, &old, &cur, told, senders, message_id, now)
            .await?;
        sent.policy_changed = policy_changed;
        if let Some(v) = &self.views {
            v.invalidate();
        }
        info!(
            message_id = sent.message_id,
            new_teks = ?sent.new_teks.iter().map(|s| format!("{s:#010x}")).collect::<Vec<_>>(),
            deleted_teks = ?sent.deleted_teks.iter().map(|s| format!("{s:#010x}")).collect::<Vec<_>>(),
            new_rekey_sa = sent.new_rekey_sa.is_some(),
            policy_changed,
            dst = %sent.dst,
            copies = self.config.copies,
            "GSA_REKEY sent"
        );
        self.remember(id, Announced::new(cur, now_given)).await?;
        Ok(Some(sent))
    }

    /// Replaces the group's Rekey SA in the store, keeping `cur`'s TEKs, for a GSA_REKEY
    /// that changes the policy (RFC 9838 3.2.1, R055). Committed with the generation check
    /// like a scheduled renewal; the Message ID counter of the new SA starts at 0
    /// (2.4.1.3). A registration that renewed an SA meanwhile makes this a generation
    /// conflict: the next tick decides again (with another Message ID over the old SA).
    /// Returns the state the store then has.
    async fn new_kek(
        &self,
        cfg: &GroupConfig,
        cur: &StoredState,
        now: u64,
    ) -> Result<StoredState, RekeyError> {
        let id = cfg.group.id;
        let policy_err = |reason: String| RekeyError::Policy {
            group: cfg.group.spec.name.clone(),
            reason,
        };
        let next = {
            let mut rng = SystemRandom::new();
            plan_new_kek(cfg, cur, now, &mut rng)
        }
        .map_err(policy_err)?
        .ok_or_else(|| policy_err("no Rekey SA to replace".into()))?;
        let generation = self
            .store
            .commit_group_state(id, cur.generation, &next, now)
            .await?;
        info!(
            generation,
            "policy changed: new Rekey SA committed (RFC 9838 3.2.1)"
        );
        self.store
            .group_state(id)
            .await?
            .ok_or_else(|| policy_err("no group_state row".into()))
    }

    /// Excludes every member and starts the group over: before a new Sender-ID is handed
    /// out (RFC 9838 2.5.1 step 5, R046), or for forward access control after memberships
    /// ended (3.2.1). `message_id` was taken over `old`'s Rekey SA, which the members hold.
    /// 1. Every SA of the group is replaced in the store, so that registrations from here
    ///    on get new TEKs and a new Rekey SA (a sender is still refused a Sender-ID until
    ///    step 3).
    /// 2. The exclusion goes over the old Rekey SA: a Delete of all ESP SAs, then one of
    ///    all GIKE_UPDATE SAs (zero SPIs, 2.4.3), and no new keys or policy (3.2.1,
    ///    R053).
    /// 3. When Sender-IDs were wanted, the new Sender-ID epoch starts: values from 0
    ///    again, only ever used with the new TEKs. The departures acted on are taken off
    ///    the store's count.
    async fn start_over(
        &mut self,
        cfg: &GroupConfig,
        old: &StoredState,
        before: &StoredState,
        senders: u64,
        message_id: u32,
        now: u64,
    ) -> Result<SentRekey, RekeyError> {
        let id = cfg.group.id;
        let name = cfg.group.spec.name.clone();
        let fresh = {
            let mut rng = SystemRandom::new();
            plan_with(cfg, before, senders, now, &mut rng, replace_all)
        }
        .map_err(|reason| RekeyError::Policy {
            group: name.clone(),
            reason,
        })?
        .ok_or_else(|| RekeyError::Policy {
            group: name.clone(),
            reason: "no SA to replace".into(),
        })?;
        // A registration that renewed an SA meanwhile makes this a generation conflict:
        // the next tick tries again (with another Message ID; IDs are never reused).
        self.store
            .commit_group_state(id, before.generation, &fresh, now)
            .await?;
        crate::state::log_shortened_teks(cfg, before, &fresh);
        let cur = self
            .store
            .group_state(id)
            .await?
            .ok_or_else(|| RekeyError::Policy {
                group: name.clone(),
                reason: "no group_state row".into(),
            })?;
        if let Some(v) = &self.views {
            v.invalidate();
        }
        let mut sent = self
            .send(
                cfg,
                old,
                &cur,
                Changes::exclusion(),
                senders,
                message_id,
                now,
            )
            .await?;
        if sender_ids_wanted(cfg, before) {
            let epoch = self.store.reset_sender_ids(id).await?;
            sent.sender_id_epoch = Some(epoch);
            warn!(
                message_id = sent.message_id,
                sender_ids_refused = before.sender_id_refusals,
                epoch,
                dst = %sent.dst,
                copies = self.config.copies,
                "Sender-IDs exhausted: every member excluded by GSA_REKEY (Delete of all \
                 SAs), new SAs and a new Sender-ID epoch; members re-register \
                 (raise groups.sender_id_bits if this repeats)"
            );
        }
        let removed = departures(cfg, before);
        if removed > 0 {
            self.store.acknowledge_members_removed(id, removed).await?;
            sent.members_removed = removed;
            info!(
                message_id = sent.message_id,
                members_removed = removed,
                dst = %sent.dst,
                copies = self.config.copies,
                "forward access control: every member excluded by GSA_REKEY (Delete of all \
                 SAs) after memberships ended; new SAs; authorized members re-register"
            );
        }
        self.remember(id, Announced::current(cfg, cur)).await?;
        Ok(sent)
    }

    /// Builds the message over `old`'s Rekey SA announcing `told`, the changes from `old`
    /// to `cur`, and sends it; `senders` members are authorized to send.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &mut self,
        cfg: &GroupConfig,
        old: &StoredState,
        cur: &StoredState,
        told: Changes,
        senders: u64,
        message_id: u32,
        now: u64,
    ) -> Result<SentRekey, RekeyError> {
        let name = cfg.group.spec.name.clone();
        let policy_err = |reason: String| RekeyError::Policy {
            group: name.clone(),
            reason,
        };
        let dst =
            cfg.group.spec.rekey.dst.ok_or_else(|| {
                policy_err("multicast rekey without groups.rekey_dst_addr".into())
            })?;
        let auth = group_auth(&self.store, cfg)
            .await
            .map_err(|source| RekeyError::State {
                group: name.clone(),
                source,
            })?;
        // Only `old`'s Rekey SA is needed (the message goes over it): its TEKs may belong to
        // a TEK policy edited since (another key size), which `to_proto` would refuse.
        let over_sa = StoredState {
            teks: Vec::new(),
            ..old.clone()
        };
        // The same source selector registrations hand out (RFC 9838 4.4.2, R063).
        let rekey_src = self.sources.selector(cfg);
        let mut group =
            to_proto(cfg, &over_sa, auth, senders > 1, &rekey_src).map_err(&policy_err)?;
        let Some(k) = group.rekey.as_mut() else {
            return Err(policy_err("no Rekey SA".into()));
        };
        k.next_message_id = message_id;
        let over = k.spi;
        let target = to_proto(cfg, cur, GroupAuth::Implicit, senders > 1, &rekey_src)
            .map_err(&policy_err)?;
        let Changes {
            kek,
            new,
            gone,
            exclude_all,
        } = told;
        let deletes = if exclude_all {
            // RFC 9838 2.4.3: all Data-Security SAs, then the Rekey SA (the exclusion).
            vec![
                DeletePayload::all_of(ProtocolId::Esp),
                DeletePayload::all_of(ProtocolId::GikeUpdate),
            ]
        } else if gone.is_empty() {
            Vec::new()
        } else {
            vec![DeletePayload::child(ProtocolId::Esp, &gone)]
        };
        let teks: Vec<_> = target
            .teks
            .iter()
            .filter(|t| new.contains(&t.spi))
            .collect();
        // RFC 9838 2.4.1.3: "The GSA, KD and N payloads follow with the same
        // characteristics as in the GSA Registration exchange": new TEKs come with
        // USE_TRANSPORT_MODE when the group's SAs are in transport mode (2.3.4,
        // docs/interop.md #75).
        let notifies = if !teks.is_empty() && crate::group_view::transport_mode(cfg) {
            vec![NotifyPayload::use_transport_mode()]
        } else {
            Vec::new()
        };
        let content = RekeyContent {
            new_kek: target.rekey.as_ref().filter(|_| kek.is_some()),
            teks,
            deletes,
            notifies,
            ..RekeyContent::default()
        };
        let msg = {
            let mut rng = SystemRandom::new();
            RekeySender::new(self.config.fragment_size)
                .build(&mut group, &content, now, &mut rng)
                .map_err(|source| RekeyError::Build {
                    group: name.clone(),
                    source,
                })?
        };
        let r = &cfg.group.spec.rekey;
        let (socket, _) = self
            .sources
            .socket_for(dst, r.src_addr, r.src_port)
            .map_err(|reason| RekeyError::Socket {
                group: name.clone(),
                reason,
            })?;
        for d in &msg.datagrams {
            socket
                .send_to(d, dst)
                .await
                .map_err(|e| RekeyError::Socket {
                    group: name.clone(),
                    reason: format!("sending to {dst}: {e}"),
                })?;
        }
        let copies = self.config.copies;
        if copies > 1 {
            let (datagrams, spacing) = (msg.datagrams.clone(), self.config.spacing);
            tokio::spawn(async move {
                for _ in 1..copies {
                    tokio::time::sleep(spacing).await;
                    for d in &datagrams {
                        if let Err(e) = socket.send_to(d, dst).await {
                            debug!(error = %e, %dst, "GSA_REKEY copy");
                        }
                    }
                }
            });
        }
        Ok(SentRekey {
            group: name,
            message_id: msg.message_id,
            over,
            new_rekey_sa: kek,
            new_teks: new,
            deleted_teks: gone,
            excluded_all: exclude_all,
            sender_id_epoch: None,
            members_removed: 0,
            policy_changed: false,
            dst,
            datagrams: msg.datagrams,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gikev2_policy::{RekeySaRecord, TekPolicyId, TekSaRecord};
    use gikev2_proto::crypto::SecretBytes;

    fn state(kek: u8, teks: &[u32]) -> StoredState {
        let teks: Vec<(i64, u32)> = teks.iter().map(|&spi| (1, spi)).collect();
        state_of(kek, &teks)
    }

    /// A state with Rekey SA `[kek; 16]` and TEKs given as (TEK policy, SPI).
    fn state_of(kek: u8, teks: &[(i64, u32)]) -> StoredState {
        StoredState {
            rekey: Some(RekeySaRecord {
                spi: [kek; 16],
                keymat: SecretBytes::from_slice(&[0; 8]),
                expires: 100,
            }),
            teks: teks
                .iter()
                .map(|&(policy, spi)| TekSaRecord {
                    policy: TekPolicyId(policy),
                    spi,
                    keymat: SecretBytes::from_slice(&[0; 8]),
                    sn: SnId::Unspecified32,
                    created: 0,
                    expires: 100,
                })
                .collect(),
            ..crate::state::tests::empty()
        }
    }

    /// RFC 9838 3.2.1 (R055) as docs/interop.md #53 reads it: which GSA_REKEY messages
    /// change the policy, and so must carry a new KEK.
    #[test]
    fn policy_changes_are_tek_policies_added_removed_or_edited_and_gw_edits() {
        // TEK policy 7 only; with a second one, 8.
        let one = crate::state::tests::cfg(RekeyMode::Multicast);
        let mut two = one.clone();
        let mut p8 = two.teks[0].clone();
        p8.id = TekPolicyId(8);
        p8.spec.dst.start_port = 5006;
        p8.spec.dst.end_port = 5006;
        two.teks.push(p8);
        let changed = |given: &GivenPolicy, cfg, old: &StoredState, cur: &StoredState| {
            given.changed_by(cfg, old, cur, &changes(old, cur))
        };

        let old = state_of(1, &[(7, 10)]);
        let given = GivenPolicy::current(&one, &old);
        let renewed = state_of(1, &[(7, 11)]);
        assert!(
            !changed(&given, &one, &old, &renewed),
            "a TEK renewed under an unchanged policy"
        );
        let added = state_of(1, &[(7, 10), (8, 12)]);
        assert!(changed(&given, &two, &old, &added), "a TEK policy added");
        assert!(
            changed(&GivenPolicy::current(&two, &old), &two, &old, &added),
            "added before the first look, which found no TEK of it"
        );
        let both = GivenPolicy::current(&two, &added);
        assert!(
            changed(&both, &one, &added, &old),
            "a TEK policy removed: the Delete of its TEK"
        );
        assert!(
            !changed(&both, &two, &added, &state_of(1, &[(7, 10), (8, 13)])),
            "one of two TEKs renewed"
        );

        // An edit reaches members with the next TEK of the edited policy.
        let mut edited = two.clone();
        edited.teks[0].spec.encr_key_bits = Some(256);
        let only_8 = state_of(1, &[(7, 10), (8, 13)]);
        assert!(
            !changed(&both, &edited, &added, &only_8),
            "the other policy's TEK renewed: the edit is not in the message"
        );
        let after = both.after(&edited, &only_8, &changes(&added, &only_8));
        assert_eq!(
            after.teks[&TekPolicyId(7)],
            spec_text(&two.teks[0].spec, SnId::Unspecified32),
            "still as given"
        );
        let then_7 = state_of(1, &[(7, 14), (8, 13)]);
        assert!(
            changed(&after, &edited, &only_8, &then_7),
            "an edited policy's new TEK"
        );
        let sent = after.after(&edited, &then_7, &changes(&only_8, &then_7));
        assert_eq!(sent, GivenPolicy::current(&edited, &then_7));
        assert!(
            !changed(&sent, &edited, &then_7, &state_of(1, &[(7, 15), (8, 13)])),
            "renewed again under the edited policy"
        );

        // The group-wide policy goes with every GSA, not with a Delete alone.
        let mut dtd = one.clone();
        dtd.group.spec.policy.dtd = Some(5);
        assert!(changed(&given, &dtd, &old, &renewed), "GWP_DTD edited");
        let overlap = state_of(1, &[(7, 10), (7, 11)]);
        let given = GivenPolicy::current(&one, &overlap);
        assert!(
            !changed(&given, &dtd, &overlap, &renewed),
            "a Delete alone carries no group-wide policy"
        );
    }

    /// docs/interop.md #58: the SN transform a TEK carried is part of the policy the
    /// members hold. A TEK of an `auto` policy replaced by one with other sequence numbers
    /// (a second sender authorized, R077) changes the policy; a TEK replaced under the
    /// same transform because `max_packet_rate` was raised (R049; not on the wire) does
    /// not.
    /// The announced policy survives the store's text form; text it did not write is
    /// refused (the scheduler then takes the current policy, with a warning).
    #[test]
    fn announced_policy_round_trips_through_its_stored_text() {
        let mut cfg = crate::state::tests::cfg(RekeyMode::Multicast);
        let mut p8 = cfg.teks[0].clone();
        p8.id = TekPolicyId(8);
        p8.spec.dst.start_port = 5006;
        p8.spec.dst.end_port = 5006;
        cfg.teks.push(p8);
        cfg.group.spec.policy.atd = Some(3);
        let given = GivenPolicy::current(&cfg, &state_of(1, &[(7, 10), (8, 12)]));
        assert_eq!(given.teks.len(), 2);
        let text = given.to_text();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert_eq!(GivenPolicy::from_text(&text), Some(given.clone()));
        let mut edited = cfg.clone();
        edited.teks[0].spec.encr_key_bits = Some(256);
        let other = GivenPolicy::current(&edited, &state_of(1, &[(7, 10), (8, 12)]));
        assert_ne!(GivenPolicy::from_text(&other.to_text()), Some(given));
        for bad in [
            "",
            "tek x y\ngw - -\n",
            "gw 1\n",
            "kek 1 2\ngw - -\n",
            "tek 7 z\n",
        ] {
            assert_eq!(GivenPolicy::from_text(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn other_sequence_numbers_change_the_policy_and_the_packet_rate_does_not() {
        let mut auto = crate::state::tests::cfg(RekeyMode::Multicast);
        auto.teks[0].spec.sn = SnPolicy::Auto;
        let with_sn = |spi: u32, sn: SnId| {
            let mut s = state_of(1, &[(7, spi)]);
            s.teks[0].sn = sn;
            s
        };
        let old = with_sn(10, SnId::Seq32);
        let given = GivenPolicy::current(&auto, &old);
        assert_eq!(
            given.teks[&TekPolicyId(7)],
            spec_text(&auto.teks[0].spec, SnId::Seq32),
            "held as the TEK carried it, not as `auto`"
        );
        assert_ne!(
            given.teks[&TekPolicyId(7)],
            spec_text(&auto.teks[0].spec, SnId::Unspecified32)
        );
        let unspecified = with_sn(11, SnId::Unspecified32);
        assert!(given.changed_by(&auto, &old, &unspecified, &changes(&old, &unspecified)));
        let renewed = with_sn(11, SnId::Seq32);
        assert!(
            !given.changed_by(&auto, &old, &renewed, &changes(&old, &renewed)),
            "renewed with the same transform"
        );
        let mut faster = auto.clone();
        faster.teks[0].spec.max_packet_rate *= 10;
        assert!(
            !given.changed_by(&faster, &old, &renewed, &changes(&old, &renewed)),
            "a TEK shortened for a higher packet rate"
        );
        let after = given.after(&auto, &unspecified, &changes(&old, &unspecified));
        assert_eq!(
            after.teks[&TekPolicyId(7)],
            spec_text(&auto.teks[0].spec, SnId::Unspecified32)
        );
    }

    #[test]
    fn changes_name_new_sas_and_dropped_teks() {
        let c = |kek, new: &[u32], gone: &[u32]| Changes {
            kek,
            new: new.to_vec(),
            gone: gone.to_vec(),
            exclude_all: false,
        };
        assert!(!Changes::exclusion().is_empty());
        assert!(changes(&state(1, &[10, 11]), &state(1, &[10, 11])).is_empty());
        assert_eq!(
            changes(&state(1, &[10, 11]), &state(1, &[10, 12])),
            c(None, &[12], &[11])
        );
        assert_eq!(
            changes(&state(1, &[10]), &state(2, &[13])),
            c(Some([2; 16]), &[13], &[10])
        );
        assert_eq!(
            changes(&state(1, &[10, 11]), &state(1, &[10])),
            c(None, &[], &[11]),
            "a TEK policy deleted: a Delete only (RFC 9838 2.4.3)"
        );
    }
}
