//! A group's key state between the store and the protocol core: created on first use,
//! renewed when an SA is about to expire, committed with the store's generation check
//! before anything built from it is revealed (DESIGN.md), and converted into
//! `gikev2_proto::group::GroupState` for `build_registration`.
//!
//! Reuse rule: an SA (Rekey SA or TEK) is handed out while at least a tenth of its
//! lifetime is left (at least 1 s, at most 300 s before expiry); past that, the next
//! registration replaces it. Members that hold the old SA keep it until it expires and
//! re-register on its soft expiry (multicast GSA_REKEY of the replacement is the rekey
//! scheduler's job, not the registration path's). A Rekey SA whose GSA_REKEY Message IDs
//! are exhausted is replaced too (RFC 9838 2.4.1.3).
//!
//! Sequence numbers (RFC 9838 2.6, 4.4.2.1.3): a TEK gets its Sequence Numbers transform
//! when it is created and keeps it ([`TekSaRecord::sn`]); with `SnPolicy::Auto` that is
//! "32-bit Sequential Numbers" while the destination is multicast and at most one sender
//! is authorized ([`tek_sn`], R077). A TEK whose transform the policy no longer allows (a
//! second sender authorized, an edited `tek_policies.sn_id`) is replaced like one at its
//! margin. A TEK with sequential numbers lives at most
//! [`gikev2_policy::TekPolicySpec::seq32_lifetime`] seconds, so that a sender at the
//! policy's packet rate cannot wrap them (2.6, R049; [`tek_lifetime`]). And such a TEK goes
//! to at most one sender registration: a sender registering again starts its numbers at 1,
//! which receivers' anti-replay windows would drop (RFC 4303 3.4.3), so the registrar has
//! the TEK replaced first ([`replace_teks`]; docs/interop.md #65).

use gikev2_policy::{
    Group, GroupConfig, GroupId, GroupState as StoredState, NewGroupState, RekeyMode,
    RekeySaRecord, SnPolicy, Store, StoreError, TekPolicy, TekSaRecord,
};
use gikev2_proto::crypto::{Random, SystemRandom};
use gikev2_proto::group::{GroupAuth, GroupState, RekeySaState, RekeySuite, TekProtocol, TekState};
use gikev2_proto::registry::SnId;
use gikev2_proto::wire::TrafficSelector;
use tracing::info;

/// Seconds before expiry when an SA is no longer handed out.
pub fn renew_margin(lifetime: u64) -> u64 {
    (lifetime / 10).clamp(1, 300)
}

/// Seconds before expiry when the rekey sender replaces an SA of a multicast group and
/// pushes the replacement ([`crate::rekey`]): a quarter of its lifetime (at least the
/// [`renew_margin`]), so that GSA_REKEY reaches members before their soft lifetime makes
/// them re-register (RFC 9838 2.4.1.4; `gm` re-registers at 80 to 90 % of a lifetime).
pub fn push_margin(lifetime: u64) -> u64 {
    lifetime.div_ceil(4).max(renew_margin(lifetime))
}

fn usable(expires: u64, lifetime: u64, now: u64, margin: fn(u64) -> u64) -> bool {
    expires > now.saturating_add(margin(lifetime))
}

/// The Rekey SA suite of a group, if it uses multicast rekey.
fn rekey_suite(cfg: &GroupConfig) -> Result<Option<RekeySuite>, StoreError> {
    let r = &cfg.group.spec.rekey;
    match r.mode {
        RekeyMode::Multicast => r.suite().map(Some),
        RekeyMode::Inband | RekeyMode::None => Ok(None),
    }
}

/// The Sequence Numbers transform of a new TEK of `p` while `senders` members are
/// authorized to send in the group. A fixed `tek_policies.sn_id` is taken as it is. With
/// `auto` (NULL): "32-bit Sequential Numbers" for a multicast destination with at most one
/// sender (RFC 9838 4.4.2.1.3: it "SHOULD be used by the GCKS for single-sender multicast
/// Data-Security SAs", R077), else "32-bit Unspecified Numbers" (it "MUST be used ... in
/// case of multi-sender multicast Data-Security SAs", R079; a unicast destination gets it
/// too, since it promises nothing a receiver could rely on wrongly). docs/interop.md #56.
pub fn tek_sn(p: &TekPolicy, senders: u64) -> SnId {
    match p.spec.sn {
        SnPolicy::Fixed(sn) => sn,
        SnPolicy::Auto if senders <= 1 && p.spec.dst.is_multicast() => SnId::Seq32,
        SnPolicy::Auto => SnId::Unspecified32,
    }
}

/// Whether a TEK of `p` holding `t.sn` may stay while `senders` members may send: its
/// transform is still the one a new TEK would get, or, with `auto`, "32-bit Unspecified
/// Numbers" (never wrong; the next TEK goes back to sequential numbers when there is one
/// sender again). A TEK with sequential numbers must also still fit the policy's packet
/// rate (the rate may have been raised since, R049). docs/interop.md #57, #59.
fn sn_still_fits(p: &TekPolicy, t: &TekSaRecord, senders: u64) -> bool {
    let wanted = tek_sn(p, senders);
    let sn_ok = t.sn == wanted || (p.spec.sn == SnPolicy::Auto && t.sn == SnId::Unspecified32);
    let rate_ok =
        t.sn != SnId::Seq32 || t.expires.saturating_sub(t.created) <= p.spec.seq32_lifetime();
    sn_ok && rate_ok
}

/// The lifetime of a new TEK of `p` with transform `sn`, in seconds: the group's
/// `tek_lifetime`, and for "32-bit Sequential Numbers" at most
/// [`gikev2_policy::TekPolicySpec::seq32_lifetime`] ((2^32 - 1) / `max_packet_rate`), so
/// that the TEK is replaced before a sender at that rate could have used every sequence
/// number (RFC 9838 2.6: "the GCKS MUST be configured to rekey the SA frequently enough so
/// that the 32-bit sequence numbers do not wrap", R049; RFC 4303 3.3.3). The members are
/// given this lifetime in GSA_KEY_LIFETIME; their ESP engine also refuses to cycle the
/// counter (docs/interop.md #38, #59).
pub fn tek_lifetime(cfg: &GroupConfig, p: &TekPolicy, sn: SnId) -> u64 {
    let life = u64::from(cfg.group.spec.tek_lifetime);
    if sn == SnId::Seq32 {
        life.min(p.spec.seq32_lifetime())
    } else {
        life
    }
}

fn tek_for(
    p: &TekPolicy,
    sn: SnId,
    rng: &mut dyn Random,
    expires: u64,
) -> Result<TekState, String> {
    let s = &p.spec;
    TekState::generate(
        rng,
        TekProtocol::Esp,
        s.src_ts(),
        s.dst_ts(),
        Some(
            s.encr_alg()
                .map_err(|e| format!("TEK policy {}: {e}", p.id))?,
        ),
        s.integ_alg()
            .map_err(|e| format!("TEK policy {}: {e}", p.id))?,
        sn,
        expires,
    )
    .map_err(|e| format!("TEK policy {}: {e}", p.id))
}

fn tek_keymat_len(p: &TekPolicy) -> Result<usize, String> {
    let s = &p.spec;
    Ok(gikev2_proto::crypto::suite::data_sa_keymat_len(
        Some(
            s.encr_alg()
                .map_err(|e| format!("TEK policy {}: {e}", p.id))?,
        ),
        s.integ_alg()
            .map_err(|e| format!("TEK policy {}: {e}", p.id))?,
    ))
}

/// What must change in `stored` so every SA the group's policy asks for is there and
/// usable at `now`, with `senders` members authorized to send; `None` when nothing must.
pub fn plan(
    cfg: &GroupConfig,
    stored: &StoredState,
    senders: u64,
    now: u64,
    rng: &mut dyn Random,
) -> Result<Option<NewGroupState>, String> {
    plan_with(cfg, stored, senders, now, rng, renew_margin)
}

/// [`plan`] with SAs replaced `margin(lifetime)` seconds before they expire.
pub fn plan_with(
    cfg: &GroupConfig,
    stored: &StoredState,
    senders: u64,
    now: u64,
    rng: &mut dyn Random,
    margin: fn(u64) -> u64,
) -> Result<Option<NewGroupState>, String> {
    plan_replacing(cfg, stored, senders, now, rng, margin, &[])
}

/// [`plan_with`] that also replaces the TEKs `retire` (by SPI) while they are there: a
/// TEK with sequential numbers an earlier sender registration was given, which the next
/// sender registration must not get (RFC 9838 4.4.2.1.3, R077; docs/interop.md #65). The
/// replacement is made like one at its margin: the same TEK policy, a new SPI and keys,
/// the transform [`tek_sn`] chooses for `senders` and its [`tek_lifetime`].
pub fn plan_replacing(
    cfg: &GroupConfig,
    stored: &StoredState,
    senders: u64,
    now: u64,
    rng: &mut dyn Random,
    margin: fn(u64) -> u64,
    retire: &[u32],
) -> Result<Option<NewGroupState>, String> {
    let spec = &cfg.group.spec;
    let mut changed = false;
    let rekey_life = u64::from(spec.rekey.lifetime);
    let rekey = match rekey_suite(cfg).map_err(|e| e.to_string())? {
        None => {
            changed |= stored.rekey.is_some();
            None
        }
        Some(suite) => {
            let keep = stored.rekey.as_ref().filter(|r| {
                usable(r.expires, rekey_life, now, margin)
                    && r.keymat.len() == suite.keymat_len()
                    && stored.next_rekey_message_id <= u64::from(u32::MAX)
            });
            match keep {
                Some(r) => Some(r.clone()),
                None => {
                    changed = true;
                    Some(fresh_rekey_sa(cfg, suite, now, rng)?)
                }
            }
        }
    };
    let mut teks = Vec::new();
    for p in &cfg.teks {
        let len = tek_keymat_len(p)?;
        // A TEK's margin follows its own lifetime (a sequential-numbers TEK may live less
        // than the group's tek_lifetime, R049).
        let kept: Vec<&TekSaRecord> = stored
            .teks
            .iter()
            .filter(|t| {
                t.policy == p.id
                    && !retire.contains(&t.spi)
                    && t.keymat.len() == len
                    && sn_still_fits(p, t, senders)
                    && usable(t.expires, t.expires.saturating_sub(t.created), now, margin)
            })
            .collect();
        if kept.is_empty() {
            changed = true;
            let sn = tek_sn(p, senders);
            let life = tek_lifetime(cfg, p, sn);
            let t = tek_for(p, sn, rng, now.saturating_add(life))?;
            teks.push(TekSaRecord {
                policy: p.id,
                spi: t.spi,
                keymat: t.keymat().clone(),
                sn,
                created: now,
                expires: t.expires,
            });
        } else {
            teks.extend(kept.into_iter().cloned());
        }
    }
    changed |= teks.len() != stored.teks.len();
    Ok(changed.then_some(NewGroupState { rekey, teks }))
}

/// A new Rekey SA for `cfg`'s group, expiring a Rekey SA lifetime after `now`.
fn fresh_rekey_sa(
    cfg: &GroupConfig,
    suite: RekeySuite,
    now: u64,
    rng: &mut dyn Random,
) -> Result<RekeySaRecord, String> {
    let r = &cfg.group.spec.rekey;
    let dst = r.dst_selector().ok_or_else(|| {
        "multicast rekey without a destination (groups.rekey_dst_addr)".to_string()
    })?;
    let fresh = RekeySaState::generate(
        rng,
        r.src_selector(),
        dst,
        suite,
        now.saturating_add(u64::from(r.lifetime)),
    );
    Ok(RekeySaRecord {
        spi: fresh.spi,
        keymat: fresh.keymat().clone(),
        expires: fresh.expires,
    })
}

/// `stored` with a new Rekey SA (a new KEK) and the same TEKs, for a GSA_REKEY that
/// changes the group's policy (RFC 9838 3.2.1: "MUST NOT change the policy without
/// creating a new KEK", R055); `None` for a group without multicast rekey.
pub fn plan_new_kek(
    cfg: &GroupConfig,
    stored: &StoredState,
    now: u64,
    rng: &mut dyn Random,
) -> Result<Option<NewGroupState>, String> {
    let Some(suite) = rekey_suite(cfg).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    Ok(Some(NewGroupState {
        rekey: Some(fresh_rekey_sa(cfg, suite, now, rng)?),
        teks: stored.teks.clone(),
    }))
}

/// Why the state could not be made current.
#[derive(Debug, thiserror::Error)]
pub enum StateFailure {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Policy(String),
}

/// Logs, at info, each TEK of `next` that is new since `stored` and whose lifetime the
/// packet-rate bound shortened (RFC 9838 2.6, R049; [`tek_lifetime`]), naming the fields.
pub fn log_shortened_teks(cfg: &GroupConfig, stored: &StoredState, next: &NewGroupState) {
    let group_life = u64::from(cfg.group.spec.tek_lifetime);
    for t in &next.teks {
        let life = t.expires.saturating_sub(t.created);
        if life >= group_life || stored.teks.iter().any(|o| o.spi == t.spi) {
            continue;
        }
        let rate = cfg
            .teks
            .iter()
            .find(|p| p.id == t.policy)
            .map(|p| p.spec.max_packet_rate);
        info!(
            group = %cfg.group.spec.name,
            tek_policy = %t.policy,
            spi = %format_args!("{:#010x}", t.spi),
            lifetime = life,
            tek_lifetime_secs = group_life,
            max_packet_rate = ?rate,
            "TEK with 32-bit Sequential Numbers lives {life} s, less than groups.tek_lifetime_secs \
             ({group_life} s): at tek_policies.max_packet_rate its sequence numbers would wrap \
             (RFC 9838 2.6)"
        );
    }
}

/// The group's stored state, created or renewed first when [`plan`] says so, with
/// `senders` members authorized to send ([`gikev2_policy::Store::sender_count`]; the
/// caller passes the count it builds the group's policy with). A writer that loses the
/// generation race (another registration or another GCKS process) re-reads and decides
/// again; so does an SPI collision (SPIs are unique store-wide).
pub async fn ensure_current(
    store: &Store,
    cfg: &GroupConfig,
    senders: u64,
    now: u64,
) -> Result<StoredState, StateFailure> {
    ensure_current_with(store, cfg, senders, now, renew_margin).await
}

/// [`ensure_current`] with SAs replaced `margin(lifetime)` seconds before they expire.
pub async fn ensure_current_with(
    store: &Store,
    cfg: &GroupConfig,
    senders: u64,
    now: u64,
    margin: fn(u64) -> u64,
) -> Result<StoredState, StateFailure> {
    ensure_replacing(store, cfg, senders, now, margin, &[]).await
}

/// [`ensure_current`] that also replaces the group's TEKs `spis` while the store still
/// has them ([`plan_replacing`]): for a sender registration that would hand out TEKs with
/// sequential numbers an earlier sender registration was given (RFC 9838 4.4.2.1.3,
/// R077; [`gikev2_policy::RegistrationOutcome::SequentialTekTaken`]). A TEK another writer
/// replaced meanwhile is left to it. The rekey scheduler pushes the replacement to the
/// group like any TEK a registration renewed ([`crate::rekey`]).
pub async fn replace_teks(
    store: &Store,
    cfg: &GroupConfig,
    senders: u64,
    now: u64,
    spis: &[u32],
) -> Result<StoredState, StateFailure> {
    ensure_replacing(store, cfg, senders, now, renew_margin, spis).await
}

async fn ensure_replacing(
    store: &Store,
    cfg: &GroupConfig,
    senders: u64,
    now: u64,
    margin: fn(u64) -> u64,
    retire: &[u32],
) -> Result<StoredState, StateFailure> {
    let group = cfg.group.id;
    for _ in 0..8 {
        let stored = store
            .group_state(group)
            .await?
            .ok_or_else(|| StateFailure::Policy(format!("group {group} has no state row")))?;
        let next = {
            let mut rng = SystemRandom::new();
            plan_replacing(cfg, &stored, senders, now, &mut rng, margin, retire)
                .map_err(StateFailure::Policy)?
        };
        let Some(next) = next else {
            return Ok(stored);
        };
        match store
            .commit_group_state(group, stored.generation, &next, now)
            .await
        {
            Ok(generation) => {
                info!(
                    group = %cfg.group.spec.name,
                    generation,
                    teks = next.teks.len(),
                    rekey_sa = next.rekey.is_some(),
                    "group key state committed"
                );
                for spi in retire
                    .iter()
                    .filter(|s| stored.teks.iter().any(|t| t.spi == **s))
                {
                    info!(
                        group = %cfg.group.spec.name,
                        spi = %format_args!("{spi:#010x}"),
                        "TEK with 32-bit Sequential Numbers replaced: an earlier sender \
                         registration was given it, and a sender registering again starts its \
                         sequence numbers at 1 (RFC 9838 4.4.2.1.3, RFC 4303 3.4.3)"
                    );
                }
                log_shortened_teks(cfg, &stored, &next);
            }
            Err(StoreError::GenerationConflict { .. }) => {}
            Err(e) if e.constraint_kind() == Some(gikev2_policy::ConstraintKind::Unique) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(StateFailure::Policy(
        "the group's key state kept changing under us".into(),
    ))
}

/// GCAUTH of the group and, with Digital Signature, its signing key from the store.
pub async fn group_auth(store: &Store, cfg: &GroupConfig) -> Result<GroupAuth, StateFailure> {
    let r = &cfg.group.spec.rekey;
    if r.gcauth != gikev2_proto::registry::GcAuthId::DigitalSignature {
        return Ok(GroupAuth::Implicit);
    }
    let id = r
        .signing_key
        .ok_or_else(|| StateFailure::Policy("Digital Signature GCAUTH without a key".into()))?;
    let rec = store
        .signing_key(id)
        .await?
        .ok_or_else(|| StateFailure::Policy(format!("signing key {id} not found")))?;
    let key = gikev2_proto::crypto::SigningKey::from_pkcs8(rec.info.scheme, rec.pkcs8.as_bytes())
        .map_err(|e| StateFailure::Policy(format!("signing key {}: {e}", rec.info.name)))?;
    Ok(GroupAuth::Signature(Box::new(key)))
}

/// The protocol core's view of the stored state (TEKs of deleted policies are skipped).
/// `rekey_src` is the Rekey SA's source traffic selector: where GSA_REKEY messages come
/// from ([`crate::rekey_source::RekeySources::selector`]; RFC 9838 4.4.2, R063), the same
/// for registrations and GSA_REKEY messages.
pub fn to_proto(
    cfg: &GroupConfig,
    stored: &StoredState,
    auth: GroupAuth,
    multiple_senders: bool,
    rekey_src: &TrafficSelector,
) -> Result<GroupState, String> {
    let spec = &cfg.group.spec;
    let rekey = match (rekey_suite(cfg).map_err(|e| e.to_string())?, &stored.rekey) {
        (Some(suite), Some(r)) => {
            let dst = spec
                .rekey
                .dst_selector()
                .ok_or("multicast rekey without a destination")?;
            let mut s = RekeySaState::new(
                r.spi,
                rekey_src.clone(),
                dst,
                suite,
                r.keymat.clone(),
                r.expires,
            )
            .map_err(|e| format!("stored Rekey SA: {e}"))?;
            s.next_message_id = u32::try_from(stored.next_rekey_message_id)
                .map_err(|_| "GSA_REKEY Message IDs exhausted")?;
            Some(s)
        }
        (Some(_), None) => return Err("the group has no Rekey SA yet".into()),
        (None, _) => None,
    };
    let mut teks = Vec::new();
    for t in &stored.teks {
        let Some(p) = cfg.teks.iter().find(|p| p.id == t.policy) else {
            continue;
        };
        let s = &p.spec;
        // The TEK's own transform, as its members were told it (not re-derived from the
        // policy, which may say `auto`).
        let tek = TekState::new(
            TekProtocol::Esp,
            t.spi,
            s.src_ts(),
            s.dst_ts(),
            Some(
                s.encr_alg()
                    .map_err(|e| format!("TEK policy {}: {e}", p.id))?,
            ),
            s.integ_alg()
                .map_err(|e| format!("TEK policy {}: {e}", p.id))?,
            t.sn,
            t.keymat.clone(),
            t.expires,
        )
        .map_err(|e| format!("stored TEK {:#010x}: {e}", t.spi))?;
        // Said here with the field to change; build_registration would refuse it too.
        tek.check_sequence_numbers(multiple_senders)
            .map_err(|e| format!("TEK policy {} (tek_policies.sn_id): {e}", p.id))?;
        teks.push(tek);
    }
    let state = GroupState {
        rekey,
        teks,
        policy: spec.policy.group_policy(multiple_senders),
        auth,
    };
    // RFC 9838 3.1 (R052): the Rekey SA's KWK (GSK_w) wraps every key of the group in
    // GSA_REKEY messages; said here with the field to change.
    if let Some(r) = &state.rekey {
        state
            .check_kwk(r.suite.kwa)
            .map_err(|e| format!("groups.rekey_kwa_id: {e}"))?;
    }
    Ok(state)
}

/// What a rekey sender looks at in one tick, from `Store::group_rows`.
pub struct TickGroups {
    /// The readable groups rekeyed in the sender's mode.
    pub groups: Vec<Group>,
    /// Those groups and every unreadable row: an unreadable row (an SQL edit) keeps what
    /// the sender last announced for it, and its lease.
    pub seen: Vec<GroupId>,
    /// Why each unreadable row could not be read: reported every tick while the other
    /// groups go on.
    pub unreadable: Vec<StoreError>,
}

/// Sorts `rows` for the sender of groups rekeyed in `mode` ([`TickGroups`]).
pub fn tick_groups(rows: Vec<(GroupId, Result<Group, StoreError>)>, mode: RekeyMode) -> TickGroups {
    let mut t = TickGroups {
        groups: Vec::new(),
        seen: Vec::new(),
        unreadable: Vec::new(),
    };
    for (id, g) in rows {
        match g {
            Err(e) => {
                t.seen.push(id);
                t.unreadable.push(e);
            }
            Ok(g) if g.spec.rekey.mode == mode => {
                t.seen.push(g.id);
                t.groups.push(g);
            }
            Ok(_) => {}
        }
    }
    t
}

/// The clock of the rekey senders: the Unix time every `period` (a late tick is
/// delayed, not doubled) until `shutdown` completes.
pub struct Ticks<S> {
    every: tokio::time::Interval,
    shutdown: std::pin::Pin<Box<S>>,
}

impl<S: std::future::Future<Output = ()>> Ticks<S> {
    pub fn new(period: std::time::Duration, shutdown: S) -> Self {
        let mut every = tokio::time::interval(period);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            every,
            shutdown: Box::pin(shutdown),
        }
    }

    /// The next tick's Unix time; `None` once `shutdown` completed.
    pub async fn next(&mut self) -> Option<u64> {
        tokio::select! {
            _ = &mut self.shutdown => None,
            _ = self.every.tick() => Some(crate::registrar::unix_now()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use gikev2_policy::{
        EspMode, Group, GroupId, GroupSpec, GroupWidePolicy, Identity, RekeyConfig, Selector,
        TekPolicyId, TekPolicySpec, TekProtocol as DbTek,
    };
    use gikev2_proto::crypto::SeededRandom;
    use gikev2_proto::registry::{EncrId, GcAuthId, KwaId, SnId};

    pub(crate) fn cfg(mode: RekeyMode) -> GroupConfig {
        GroupConfig {
            group: Group {
                id: GroupId(1),
                spec: GroupSpec {
                    name: "g".into(),
                    idg: Identity::key_id(b"g"),
                    capacity: 10,
                    rekey: RekeyConfig {
                        mode,
                        dst: (mode == RekeyMode::Multicast)
                            .then(|| "239.1.1.1:848".parse().unwrap()),
                        src_addr: None,
                        src_port: None,
                        lifetime: 1000,
                        encr: EncrId::AesGcm16,
                        encr_key_bits: Some(256),
                        integ: None,
                        kwa: KwaId::Kw5649_256,
                        gcauth: GcAuthId::Implicit,
                        signing_key: None,
                    },
                    tek_lifetime: 100,
                    policy: GroupWidePolicy {
                        sender_id_bits: Some(8),
                        ..GroupWidePolicy::default()
                    },
                },
                created: 0,
            },
            teks: vec![TekPolicy {
                id: TekPolicyId(7),
                group: GroupId(1),
                spec: TekPolicySpec {
                    protocol: DbTek::Esp,
                    ip_protocol: 17,
                    src: Selector::any(false),
                    dst: Selector::host_port("239.1.1.2".parse().unwrap(), 5004),
                    encr: EncrId::AesGcm16,
                    encr_key_bits: Some(128),
                    integ: None,
                    sn: SnPolicy::Fixed(SnId::Unspecified32),
                    mode: EspMode::Transport,
                    max_packet_rate: gikev2_policy::DEFAULT_MAX_PACKET_RATE,
                },
            }],
        }
    }

    /// A group's state with no SAs and every counter at 0 (also for `rekey`'s tests).
    pub(crate) fn empty() -> StoredState {
        StoredState {
            group: GroupId(1),
            generation: 0,
            rekey: None,
            teks: Vec::new(),
            next_rekey_message_id: 0,
            next_sender_id: 0,
            sender_id_epoch: 0,
            sender_id_refusals: 0,
            members_removed: 0,
            updated: 0,
        }
    }

    fn applied(s: &StoredState, n: NewGroupState) -> StoredState {
        StoredState {
            generation: s.generation + 1,
            rekey: n.rekey,
            teks: n.teks,
            ..s.clone()
        }
    }

    /// A cipher number an SQL edit put in a TEK policy: the error names the policy.
    #[test]
    fn an_unusable_stored_cipher_names_its_tek_policy() {
        let mut c = cfg(RekeyMode::Multicast);
        c.teks[0].spec.encr = EncrId::from_value(999);
        let mut rng = SeededRandom::new([7; 32]);
        let e = plan(&c, &empty(), 0, 1000, &mut rng).unwrap_err();
        assert!(
            e.starts_with("TEK policy 7: invalid TEK ENCR: ") && e.contains("128-bit key"),
            "{e}"
        );
    }

    #[test]
    fn first_use_creates_then_reuses_until_the_margin() {
        let c = cfg(RekeyMode::Multicast);
        let mut rng = SeededRandom::new([7; 32]);
        let first = plan(&c, &empty(), 0, 1000, &mut rng)
            .unwrap()
            .expect("created");
        assert!(first.rekey.is_some());
        assert_eq!(first.teks.len(), 1);
        assert_eq!(first.teks[0].expires, 1100);
        assert_eq!(first.teks[0].keymat.len(), 16 + 4, "AES-GCM-128 key + salt");
        let s = applied(&empty(), first);
        assert!(
            plan(&c, &s, 0, 1089, &mut rng).unwrap().is_none(),
            "11 s left of 100: kept"
        );
        let renewed = plan(&c, &s, 0, 1090, &mut rng)
            .unwrap()
            .expect("margin reached");
        assert_ne!(renewed.teks[0].spi, s.teks[0].spi);
        assert_eq!(renewed.rekey, s.rekey, "the Rekey SA is still good");
        let proto = to_proto(
            &c,
            &s,
            GroupAuth::Implicit,
            true,
            &c.group.spec.rekey.src_selector(),
        )
        .unwrap();
        assert_eq!(proto.teks.len(), 1);
        assert!(proto.rekey.is_some() && proto.uses_counter_mode());
    }

    /// RFC 9838 2.5.1 (R044): every Data-Security SA gets its own key, so that no key and
    /// nonce pair repeats across SAs; a renewed SA gets a new one too.
    #[test]
    fn every_tek_and_every_renewal_gets_its_own_key() {
        let mut c = cfg(RekeyMode::Multicast);
        let mut second = c.teks[0].clone();
        second.id = TekPolicyId(8);
        second.spec.dst = Selector::host_port("239.1.1.3".parse().unwrap(), 5004);
        c.teks.push(second);
        let mut rng = SeededRandom::new([9; 32]);
        let first = plan(&c, &empty(), 0, 1000, &mut rng).unwrap().unwrap();
        assert_eq!(first.teks.len(), 2);
        assert_ne!(first.teks[0].spi, first.teks[1].spi);
        assert_ne!(first.teks[0].keymat, first.teks[1].keymat);
        let s = applied(&empty(), first);
        let renewed = plan(&c, &s, 0, 1095, &mut rng)
            .unwrap()
            .expect("margin reached");
        for (old, new) in s.teks.iter().zip(&renewed.teks) {
            assert_ne!(old.keymat, new.keymat, "renewal draws a new key");
            assert_ne!(old.spi, new.spi);
        }
    }

    /// The rekey sender renews before any member's soft lifetime (80 to 90 % by default,
    /// RFC 9838 2.4.1.4), so pushed SAs arrive before members would re-register.
    #[test]
    fn pushed_renewals_come_before_the_members_soft_lifetime() {
        let (soft_lo, _) = gikev2_member::AgentConfig::default().soft_lifetime_percent;
        for lifetime in [4u64, 10, 60, 100, 600, 3_600, 28_800, 86_400] {
            let renewed_at = lifetime - push_margin(lifetime);
            assert!(
                renewed_at * 100 < lifetime * u64::from(soft_lo),
                "lifetime {lifetime}: renewed at {renewed_at} s, soft at {soft_lo} %"
            );
            assert!(push_margin(lifetime) >= renew_margin(lifetime));
        }
        // And a registration's renewal (the later margin) does not pre-empt it.
        let c = cfg(RekeyMode::Multicast);
        let mut rng = SeededRandom::new([3; 32]);
        let s = applied(
            &empty(),
            plan(&c, &empty(), 0, 0, &mut rng).unwrap().unwrap(),
        );
        assert!(plan(&c, &s, 0, 75, &mut rng).unwrap().is_none());
        assert!(
            plan_with(&c, &s, 0, 75, &mut rng, push_margin)
                .unwrap()
                .is_some()
        );
    }

    /// RFC 9838 3.2.1 (R055): a policy change gets a new KEK and keeps the TEKs.
    #[test]
    fn a_new_kek_keeps_the_teks() {
        let c = cfg(RekeyMode::Multicast);
        let mut rng = SeededRandom::new([5; 32]);
        let s = applied(
            &empty(),
            plan(&c, &empty(), 0, 0, &mut rng).unwrap().unwrap(),
        );
        let n = plan_new_kek(&c, &s, 10, &mut rng).unwrap().unwrap();
        let (old, new) = (s.rekey.as_ref().unwrap(), n.rekey.as_ref().unwrap());
        assert_ne!(new.spi, old.spi);
        assert_ne!(new.keymat, old.keymat);
        assert_eq!(new.expires, 10 + 1000, "a whole Rekey SA lifetime from now");
        assert_eq!(n.teks, s.teks);
        let inband = applied(
            &empty(),
            plan(&cfg(RekeyMode::Inband), &empty(), 0, 0, &mut rng)
                .unwrap()
                .unwrap(),
        );
        assert!(
            plan_new_kek(&cfg(RekeyMode::Inband), &inband, 10, &mut rng)
                .unwrap()
                .is_none()
        );
    }

    /// RFC 9838 4.4.2.1.3 (R077, R079) with `tek_policies.sn_id` NULL: a new TEK gets
    /// "32-bit Sequential Numbers" while its multicast destination has at most one
    /// sender, else "32-bit Unspecified Numbers"; the TEK keeps its transform, and one
    /// with sequential numbers is replaced once a second sender is authorized. A fixed
    /// transform is taken as configured, and a TEK is replaced when it is edited.
    #[test]
    fn auto_sequence_numbers_follow_the_senders_and_the_destination() {
        let mut c = cfg(RekeyMode::Multicast);
        c.teks[0].spec.sn = SnPolicy::Auto;
        let mut rng = SeededRandom::new([4; 32]);
        let sn_of = |c: &GroupConfig, senders, rng: &mut SeededRandom| {
            plan(c, &empty(), senders, 0, rng).unwrap().unwrap().teks[0].sn
        };
        assert_eq!(sn_of(&c, 0, &mut rng), SnId::Seq32, "receivers only");
        assert_eq!(sn_of(&c, 1, &mut rng), SnId::Seq32, "one sender");
        assert_eq!(sn_of(&c, 2, &mut rng), SnId::Unspecified32, "two senders");
        let mut unicast = c.clone();
        unicast.teks[0].spec.dst = Selector::host_port("192.0.2.7".parse().unwrap(), 5004);
        assert_eq!(sn_of(&unicast, 1, &mut rng), SnId::Unspecified32);
        let mut fixed = c.clone();
        fixed.teks[0].spec.sn = SnPolicy::Fixed(SnId::Seq32);
        assert_eq!(sn_of(&fixed, 2, &mut rng), SnId::Seq32, "as configured");

        // The TEK keeps its transform; the protocol core gets it from the TEK.
        let one = applied(
            &empty(),
            plan(&c, &empty(), 1, 0, &mut rng).unwrap().unwrap(),
        );
        assert_eq!(one.teks[0].sn, SnId::Seq32);
        assert!(plan(&c, &one, 1, 10, &mut rng).unwrap().is_none());
        assert!(plan(&c, &one, 0, 10, &mut rng).unwrap().is_none());
        let src = c.group.spec.rekey.src_selector();
        let proto = to_proto(&c, &one, GroupAuth::Implicit, false, &src).unwrap();
        assert_eq!(proto.teks[0].sn, SnId::Seq32);
        // With two senders it could not be handed out at all, so it is replaced.
        assert!(to_proto(&c, &one, GroupAuth::Implicit, true, &src).is_err());
        let two = plan(&c, &one, 2, 10, &mut rng)
            .unwrap()
            .expect("a second sender replaces the TEK");
        assert_ne!(two.teks[0].spi, one.teks[0].spi);
        assert_ne!(two.teks[0].keymat, one.teks[0].keymat);
        assert_eq!(two.teks[0].sn, SnId::Unspecified32);
        assert_eq!(two.rekey, one.rekey, "the Rekey SA is still good");
        let two = applied(&one, two);
        let proto = to_proto(&c, &two, GroupAuth::Implicit, true, &src).unwrap();
        assert_eq!(proto.teks[0].sn, SnId::Unspecified32);
        assert!(
            plan(&c, &two, 1, 20, &mut rng).unwrap().is_none(),
            "unspecified numbers stay when the second sender goes"
        );

        // An edited fixed transform replaces the TEK.
        let mut edited = c.clone();
        edited.teks[0].spec.sn = SnPolicy::Fixed(SnId::Unspecified32);
        let n = plan(&edited, &one, 1, 10, &mut rng).unwrap().unwrap();
        assert_eq!(n.teks[0].sn, SnId::Unspecified32);
        assert_ne!(n.teks[0].spi, one.teks[0].spi);
    }

    /// RFC 9838 2.6 (R049): a TEK with "32-bit Sequential Numbers" lives at most
    /// (2^32 - 1) / `max_packet_rate` seconds, so a sender at that rate cannot wrap its
    /// sequence numbers before the GCKS replaces it; other TEKs live the group's
    /// `tek_lifetime`. Its renew margin follows its own lifetime, and a TEK made before
    /// the rate was raised is replaced.
    #[test]
    fn sequential_tek_lifetimes_are_bounded_by_the_packet_rate() {
        let mut c = cfg(RekeyMode::Multicast);
        c.group.spec.tek_lifetime = 86_400;
        c.teks[0].spec.sn = SnPolicy::Auto;
        let mut rng = SeededRandom::new([6; 32]);
        for rate in [
            1,
            1_000,
            50_000,
            1_000_000,
            10_000_000,
            gikev2_policy::MAX_PACKET_RATE,
        ] {
            c.teks[0].spec.max_packet_rate = rate;
            let t = &plan(&c, &empty(), 1, 1000, &mut rng).unwrap().unwrap().teks[0];
            assert_eq!(t.sn, SnId::Seq32);
            let life = t.expires - t.created;
            assert!(
                life * u64::from(rate) <= u64::from(u32::MAX),
                "rate {rate}: {life} s would let the sequence numbers wrap"
            );
            assert_eq!(life, 86_400.min(u64::from(u32::MAX) / u64::from(rate)));
            assert!(life >= gikev2_policy::MIN_SEQ32_LIFETIME);
        }
        c.teks[0].spec.max_packet_rate = gikev2_policy::DEFAULT_MAX_PACKET_RATE;
        let t = &plan(&c, &empty(), 1, 1000, &mut rng).unwrap().unwrap().teks[0];
        assert_eq!(t.expires, 1000 + 4294, "(2^32 - 1) / 1,000,000 s");
        let t = &plan(&c, &empty(), 2, 1000, &mut rng).unwrap().unwrap().teks[0];
        assert_eq!(
            (t.sn, t.expires),
            (SnId::Unspecified32, 1000 + 86_400),
            "unspecified numbers may wrap"
        );

        // A higher rate since: the 4294-s TEK would live too long, so it is replaced.
        let s = applied(
            &empty(),
            plan(&c, &empty(), 1, 0, &mut rng).unwrap().unwrap(),
        );
        assert!(plan(&c, &s, 1, 10, &mut rng).unwrap().is_none());
        let mut faster = c.clone();
        faster.teks[0].spec.max_packet_rate = 10_000_000;
        let n = plan(&faster, &s, 1, 10, &mut rng).unwrap().unwrap();
        assert_ne!(n.teks[0].spi, s.teks[0].spi);
        assert_eq!(n.teks[0].expires, 10 + 429);

        // Renewed at a tenth (42 s) and pushed at a quarter (108 s) of its own 429 s, not
        // 300 s before like a TEK of the group's 86,400 s.
        let s = applied(&s, n);
        assert!(plan(&faster, &s, 1, 439 - 43, &mut rng).unwrap().is_none());
        assert!(plan(&faster, &s, 1, 439 - 42, &mut rng).unwrap().is_some());
        assert!(
            plan_with(&faster, &s, 1, 439 - 109, &mut rng, push_margin)
                .unwrap()
                .is_none()
        );
        assert!(
            plan_with(&faster, &s, 1, 439 - 108, &mut rng, push_margin)
                .unwrap()
                .is_some()
        );
    }

    /// RFC 9838 4.4.2.1.3 (R077), docs/interop.md #65: a TEK with sequential numbers an
    /// earlier sender registration was given is replaced for the next one: the same TEK
    /// policy and transform (one sender still), a new SPI and keys, the same Rekey SA; an
    /// SPI the group no longer has retires nothing.
    #[test]
    fn a_retired_sequential_tek_is_replaced_with_the_same_policy() {
        let mut c = cfg(RekeyMode::Multicast);
        c.teks[0].spec.sn = SnPolicy::Auto;
        let mut rng = SeededRandom::new([2; 32]);
        let s = applied(
            &empty(),
            plan(&c, &empty(), 1, 0, &mut rng).unwrap().unwrap(),
        );
        let old = &s.teks[0];
        assert_eq!(old.sn, SnId::Seq32);
        let n = plan_replacing(&c, &s, 1, 10, &mut rng, renew_margin, &[old.spi])
            .unwrap()
            .expect("replaced");
        assert_eq!(n.teks.len(), 1);
        let new = &n.teks[0];
        assert_ne!(new.spi, old.spi);
        assert_ne!(new.keymat, old.keymat);
        assert_eq!(
            (new.policy, new.sn, new.created),
            (old.policy, SnId::Seq32, 10)
        );
        assert_eq!(n.rekey, s.rekey, "the Rekey SA is still good");
        assert!(
            plan_replacing(&c, &s, 1, 10, &mut rng, renew_margin, &[old.spi + 1])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn inband_groups_have_no_rekey_sa() {
        let c = cfg(RekeyMode::Inband);
        let mut rng = SeededRandom::new([8; 32]);
        let n = plan(&c, &empty(), 0, 5, &mut rng).unwrap().unwrap();
        assert!(n.rekey.is_none());
        let s = applied(&empty(), n);
        assert!(
            to_proto(
                &c,
                &s,
                GroupAuth::Implicit,
                false,
                &c.group.spec.rekey.src_selector()
            )
            .unwrap()
            .rekey
            .is_none()
        );
    }
}
