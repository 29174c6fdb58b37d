//! The store-backed [`Registrar`]: authorizes each registration against the SQL policy,
//! builds the GSA and KD payloads from the group's committed key state, allocates and
//! commits Sender-IDs before answering, and writes every outcome to the audit log.
//!
//! Order of checks (RFC 9838 2.3.1, 2.3.4, 4.7), each refusal with its notify:
//!
//! | check | notify |
//! |---|---|
//! | the IDg names a group | INVALID_GROUP_ID |
//! | the group's key state can be made current | REGISTRATION_FAILED |
//! | the member exists and is authorized for the group | AUTHORIZATION_FAILED |
//! | GROUP_SENDER only with the `sender` role | AUTHORIZATION_FAILED |
//! | the SAg lets the member use the group's transforms ([`crate::sag`]) | NO_PROPOSAL_CHOSEN |
//! | the group has room (capacity) | REGISTRATION_FAILED |
//! | a Sender-ID is left for a sender of a counter-mode TEK (2.5.1) | REGISTRATION_FAILED |
//! | the payloads can be built; the store answers | REGISTRATION_FAILED |
//!
//! Promises are committed before the decision is returned (so before the response is
//! sent): the group's key state (`ensure_current`, when the group's view is loaded), the
//! membership and the Sender-IDs.
//!
//! Where the work happens: the group's configuration, key state and signing key come
//! from a shared view ([`crate::group_view`], reloaded after the policy TTL or when an
//! SA nears its renew margin); everything that depends on the member (its existence,
//! authorization and role, the capacity, Sender-IDs, the audit row) is decided by the
//! store for every registration, in a batch with the others in flight
//! ([`crate::commit_queue`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gikev2_policy::{
    AuditEvent, AuditOutcome, Identity, RegistrationOutcome, RegistrationRefusal,
    RegistrationWrite, Store, StoreError,
};
use gikev2_proto::group::{BuildContext, MemberGrant, build_registration};
use gikev2_proto::ike::Decision;
use gikev2_proto::registry::NotifyType;
use gikev2_proto::wire::id::IdPayload;
use tracing::{info, warn};

use crate::commit_queue::{AuditFn, CommitQueue};
use crate::group_view::{GroupView, GroupViews};
use crate::server::{AuthFailure, InbandMember, Registrar, RegistrationContext, Verdict};
use crate::state::StateFailure;

/// Seconds since the Unix epoch (the store's clock).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The policy identity of an IKE identity payload.
pub fn identity(id: &IdPayload) -> Identity {
    Identity::new(id.ty, id.data.clone())
}

/// A refusal: the notify the member gets and the reason the audit log keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub notify: NotifyType,
    pub reason: String,
    /// Already written to the audit log (by the store's batch).
    pub audited: bool,
}

fn refuse(notify: NotifyType, reason: impl Into<String>) -> Refusal {
    Refusal {
        notify,
        reason: reason.into(),
        audited: false,
    }
}

impl Refusal {
    fn audited(self) -> Self {
        Self {
            audited: true,
            ..self
        }
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        refuse(NotifyType::RegistrationFailed, format!("store: {e}"))
    }
}

impl From<StateFailure> for Refusal {
    fn from(e: StateFailure) -> Self {
        refuse(
            NotifyType::RegistrationFailed,
            format!("group key state: {e}"),
        )
    }
}

fn notify_name(n: NotifyType) -> String {
    n.name()
        .map(str::to_string)
        .unwrap_or_else(|| format!("notify {}", n.value()))
}

/// The audit log keeps at most 1024 octets of reason.
fn clip(mut s: String) -> String {
    if s.len() > 1024 {
        let mut end = 1021;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

/// The notify and reason of a refusal the store decided.
fn store_refusal(r: &RegistrationRefusal) -> Refusal {
    match r {
        RegistrationRefusal::UnknownMember => refuse(
            NotifyType::AuthorizationFailed,
            "no such member (deleted after it authenticated)",
        ),
        RegistrationRefusal::NotAuthorized => refuse(
            NotifyType::AuthorizationFailed,
            "member not authorized for this group",
        ),
        RegistrationRefusal::NotSender => refuse(
            NotifyType::AuthorizationFailed,
            "authorized as receiver but asked to send (GROUP_SENDER)",
        ),
        // The refusals decided before the store: the SAg (RFC 9838 2.3.4) and the IKE SA's
        // key wrap algorithm (3.1).
        RegistrationRefusal::RefusedBefore(why) => refuse(NotifyType::NoProposalChosen, why),
        RegistrationRefusal::GroupFull { capacity } => refuse(
            NotifyType::RegistrationFailed,
            format!("group full (capacity {capacity})"),
        ),
        RegistrationRefusal::SenderIdsExhausted => refuse(
            NotifyType::RegistrationFailed,
            "Sender-ID space exhausted (RFC 9838 2.5.1 step 5: the multicast rekey \
             sender excludes every member, then starts a new Sender-ID epoch)",
        ),
        RegistrationRefusal::Unavailable(why) => refuse(NotifyType::RegistrationFailed, why),
    }
}

fn refusal_text(r: &Refusal) -> String {
    format!("{}: {}", notify_name(r.notify), r.reason)
}

/// Times a sender registration has TEKs with sequential numbers replaced because other
/// sender registrations took them first, before it is refused (REGISTRATION_FAILED).
const MAX_SEQUENTIAL_REPLACEMENTS: usize = 4;

/// How long a group's view is used before the store is read again (see
/// [`crate::group_view`]).
pub const DEFAULT_POLICY_TTL: Duration = Duration::from_secs(1);

/// Registrations decided by the policy store.
pub struct StoreRegistrar {
    store: Arc<Store>,
    views: Arc<GroupViews>,
    queue: CommitQueue,
    clock: Arc<dyn Fn() -> u64 + Send + Sync>,
}

impl StoreRegistrar {
    pub fn new(store: Arc<Store>) -> Self {
        Self::with_clock(store, Arc::new(unix_now))
    }

    /// With another clock (Unix seconds), for tests.
    pub fn with_clock(store: Arc<Store>, clock: Arc<dyn Fn() -> u64 + Send + Sync>) -> Self {
        Self {
            views: Arc::new(GroupViews::new(store.clone(), DEFAULT_POLICY_TTL)),
            queue: CommitQueue::new(store.clone()),
            store,
            clock,
        }
    }

    /// Group policy read from the store is used for `ttl` before it is read again
    /// (zero: every registration reads it).
    pub fn with_policy_ttl(mut self, ttl: Duration) -> Self {
        self.views = Arc::new(GroupViews::new(self.store.clone(), ttl));
        self
    }

    /// The group views registrations are decided from; the rekey sender drops them when
    /// it changed a group's key state ([`crate::rekey::RekeyScheduler::with_views`]).
    pub fn group_views(&self) -> Arc<GroupViews> {
        self.views.clone()
    }

    /// The registration queue's counters (batches committed, registrations in them).
    pub fn queue_stats(&self) -> crate::commit_queue::StatsHandle {
        self.queue.stats()
    }

    async fn audit(&self, event: AuditEvent) {
        if let Err(e) = self.queue.audit(event).await {
            warn!(error = %e, "cannot write the audit log");
        }
    }

    /// Decides one registration from `view` in the store, with the others in flight:
    /// authorization, capacity, Sender-IDs and a sender's claims on TEKs with sequential
    /// numbers, committed with the audit row before this returns.
    async fn commit(
        &self,
        ctx: &RegistrationContext,
        peer: &Identity,
        idg: &Identity,
        view: &GroupView,
        now: u64,
    ) -> Result<RegistrationOutcome, Refusal> {
        let wants_sender = ctx.request.sender_ids.is_some();
        // Decided before the store, told after authorization (NO_PROPOSAL_CHOSEN): a SAg
        // the group's policy does not fit (RFC 9838 2.3.4), or an IKE SA whose key wrap
        // algorithm is shorter than the group's keys (3.1).
        let refused_before = ctx
            .request
            .sag
            .as_ref()
            .and_then(|sag| view.check_sag(sag).err())
            .or_else(|| {
                view.state.check_kwk(ctx.kwk.alg()).err().map(|e| {
                    format!("{e}: the member's IKE SA must negotiate a longer key wrap algorithm")
                })
            })
            .or_else(|| {
                // R129 (RFC 9838 6.2): this group's other data over the initial IKE SA is
                // to resist a quantum computer, which a PPK alone does not give (RFC 8784
                // 6): the IKE SA must have included ML-KEM (RFC 9370). Like the KWA above,
                // a property of the member's IKE SA that the group's policy does not fit:
                // NO_PROPOSAL_CHOSEN, after authorization (docs/interop.md 63).
                (view.cfg.group.spec.policy.require_pq_ike && !ctx.post_quantum_ke).then(|| {
                    "the group requires a post-quantum key exchange (ML-KEM) in the \
                     member's IKE SA"
                        .to_string()
                })
            });
        // RFC 9838 2.5.1: at least one, as many as asked up to the group's bound;
        // committed before the response reveals them.
        let sender_ids = (wants_sender && view.state.uses_counter_mode())
            .then(|| ctx.request.sender_ids.unwrap_or(1).max(1));
        let write = RegistrationWrite {
            group: view.cfg.group.id,
            member: peer.clone(),
            wants_sender,
            sender_ids,
            refused_before,
            sequential_teks: if wants_sender {
                view.sequential_teks()
            } else {
                Vec::new()
            },
            now,
        };
        // What the audit log says of a granted registration (the Sender-IDs are known
        // only once the store allocated them).
        let role = if wants_sender { "sender" } else { "receiver" };
        let mut tail = format!(", TEK SPIs [{}]", view.tek_spis());
        if view.state.rekey.is_some() && !view.inband {
            tail.push_str(", Rekey SA");
        }
        let (audit_peer, audit_group) = (peer.clone(), idg.clone());
        let audit: AuditFn = Box::new(move |w, o| {
            let (outcome, reason) = match o {
                RegistrationOutcome::Admitted { sender_ids, .. } => (
                    AuditOutcome::Registered,
                    granted_text(role, sender_ids, &tail),
                ),
                RegistrationOutcome::Refused(r) => {
                    (AuditOutcome::Refused, refusal_text(&store_refusal(r)))
                }
                // The store writes no event for it (decided again); said in case.
                RegistrationOutcome::SequentialTekTaken { spis } => (
                    AuditOutcome::Refused,
                    format!(
                        "undecided: TEKs {spis:#010x?} were given to an earlier sender \
                         registration (RFC 9838 4.4.2.1.3)"
                    ),
                ),
            };
            AuditEvent {
                at: w.now,
                peer: Some(audit_peer.clone()),
                group: Some(audit_group.clone()),
                outcome,
                reason: clip(reason),
            }
        });
        self.queue
            .register(write, audit)
            .await
            .map_err(|e| refuse(NotifyType::RegistrationFailed, format!("store: {e}")))
    }

    /// Replaces the TEKs `spis` of `view`'s group, which an earlier sender registration
    /// was given ([`crate::state::replace_teks`]), and returns the group's view read again.
    async fn replace_sequential_teks(
        &self,
        idg: &Identity,
        view: &GroupView,
        spis: &[u32],
        now: u64,
    ) -> Result<Arc<GroupView>, Refusal> {
        let senders = self.store.sender_count(view.cfg.group.id).await?;
        crate::state::replace_teks(&self.store, &view.cfg, senders, now, spis).await?;
        self.view(idg, now, true).await
    }

    /// The group's view at `now`, read again from the store when `fresh`; an unknown
    /// group is INVALID_GROUP_ID.
    async fn view(&self, idg: &Identity, now: u64, fresh: bool) -> Result<Arc<GroupView>, Refusal> {
        if fresh {
            self.views.forget(idg);
        }
        self.views
            .get(idg, now)
            .await?
            .ok_or_else(|| refuse(NotifyType::InvalidGroupId, "unknown group"))
    }

    /// Decides one registration; the store's part (authorization, capacity, Sender-IDs
    /// and the audit row) is committed with the others in flight, before the answer.
    async fn evaluate(
        &self,
        ctx: &RegistrationContext,
        peer: &Identity,
        idg: &Identity,
    ) -> Result<Verdict, Refusal> {
        let now = (self.clock)();
        let mut view = self.view(idg, now, false).await?;
        let wants_sender = ctx.request.sender_ids.is_some();
        // RFC 9838 4.4.2.1.3 (R077, R079): a TEK with sequential numbers is for one sender.
        // The view may be older than this sender's authorization (policy TTL): when the
        // store now counts several, the view is loaded again, which replaces such a TEK
        // chosen by `auto` (a fixed seq32 policy is refused there, naming the field).
        if wants_sender
            && view.single_sender_teks
            && self.store.sender_count(view.cfg.group.id).await? > 1
        {
            view = self.view(idg, now, true).await?;
        }
        // RFC 9838 4.4.2.1.3 (R077) with RFC 4303 3.4.3: a TEK with sequential numbers goes
        // to one sender registration, since a sender registering again (a restarted `gm`)
        // starts its numbers at 1, which receivers would drop as replays. When an earlier
        // sender registration was given the view's, the store leaves this one undecided;
        // the TEK is replaced (and pushed by the rekey scheduler) and this registration is
        // decided again with the new one (docs/interop.md #65).
        let role = if wants_sender { "sender" } else { "receiver" };
        let mut replaced = 0;
        let (member, newly, sender_ids) = loop {
            match self.commit(ctx, peer, idg, &view, now).await? {
                RegistrationOutcome::Admitted {
                    member,
                    newly,
                    sender_ids,
                } => break (member, newly, sender_ids),
                // Already in the audit log, with the batch.
                RegistrationOutcome::Refused(r) => {
                    return Err(Refusal::audited(store_refusal(&r)));
                }
                RegistrationOutcome::SequentialTekTaken { spis } => {
                    if replaced == MAX_SEQUENTIAL_REPLACEMENTS {
                        return Err(refuse(
                            NotifyType::RegistrationFailed,
                            format!(
                                "TEKs with 32-bit Sequential Numbers [{}] were given to other \
                                 sender registrations {replaced} times while this one was \
                                 decided (RFC 9838 4.4.2.1.3)",
                                spis.iter()
                                    .map(|s| format!("{s:#010x}"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        ));
                    }
                    replaced += 1;
                    view = self.replace_sequential_teks(idg, &view, &spis, now).await?;
                }
            }
        };
        let grant = MemberGrant {
            sender: wants_sender,
            sender_ids: sender_ids.clone(),
            wrap_keys: Vec::new(),
            inband: view.inband,
        };
        match build_registration(&view.state, &grant, &ctx.kwk, &BuildContext { now }) {
            Ok((gsa, kd)) => {
                info!(
                    peer = %peer, group = %idg, remote = %ctx.remote,
                    "registered: {}",
                    granted_text(role, &sender_ids, "")
                );
                Ok(Verdict {
                    decision: Decision::Accept {
                        gsa,
                        kd,
                        transport_mode: view.transport_mode,
                    },
                    // RFC 9838 2.3.3: a member without GIKE_UPDATE policy must consider
                    // itself excluded when its IKE SA closes; in-band rekey needs the
                    // IKE SA (2.4.2).
                    keep_ike_sa: view.inband || view.state.rekey.is_none(),
                    // RFC 9838 2.4.2: later keys come over this IKE SA.
                    inband: view.inband.then_some(InbandMember {
                        sender: wants_sender,
                    }),
                })
            }
            Err(e) => {
                // Nothing was revealed: give the place back (the Sender-IDs stay taken
                // until the epoch ends, as for a member that leaves).
                if newly
                    && let Err(e) = self
                        .store
                        .remove_member_from_group(view.cfg.group.id, member)
                        .await
                {
                    warn!(error = %e, "cannot undo an admission");
                }
                Err(refuse(
                    NotifyType::RegistrationFailed,
                    format!("cannot build GSA/KD: {e}"),
                ))
            }
        }
    }
}

/// The audit reason of a granted registration.
fn granted_text(role: &str, sender_ids: &[u32], tail: &str) -> String {
    let mut s = role.to_string();
    if !sender_ids.is_empty() {
        s.push_str(&format!(", Sender-IDs {sender_ids:?}"));
    }
    s.push_str(tail);
    s
}

impl Registrar for StoreRegistrar {
    async fn decide(&self, ctx: RegistrationContext) -> Decision {
        self.register(ctx).await.decision
    }

    async fn register(&self, ctx: RegistrationContext) -> Verdict {
        let peer = identity(&ctx.peer_id);
        let group = identity(&ctx.request.group);
        match self.evaluate(&ctx, &peer, &group).await {
            Ok(v) => v,
            Err(r) => {
                let reason = refusal_text(&r);
                warn!(peer = %peer, group = %group, remote = %ctx.remote, "registration refused: {reason}");
                if !r.audited {
                    self.audit(AuditEvent {
                        at: (self.clock)(),
                        peer: Some(peer),
                        group: Some(group),
                        outcome: AuditOutcome::Refused,
                        reason: clip(reason),
                    })
                    .await;
                }
                Verdict {
                    decision: Decision::Refuse(r.notify),
                    keep_ike_sa: false,
                    inband: None,
                }
            }
        }
    }

    async fn left(&self, peer_id: IdPayload, group: IdPayload, notify: NotifyType) {
        let peer = identity(&peer_id);
        let idg = identity(&group);
        let removed = async {
            let Some(cfg) = self.store.group_config(&idg).await? else {
                return Ok::<_, StoreError>(false);
            };
            let Some(m) = self.store.member(&peer).await? else {
                return Ok(false);
            };
            self.store
                .remove_member_from_group(cfg.group.id, m.id)
                .await
        }
        .await;
        // RFC 9838 2.3.3: NO_PROPOSAL_CHOSEN is a member that cannot accept the policy it
        // was given; any other error notify is a member leaving (2.3.2).
        let why = match notify {
            NotifyType::NoProposalChosen => "rejected the group's policy".to_string(),
            n => format!("left the group ({})", notify_name(n)),
        };
        let reason = match removed {
            Ok(true) => why,
            Ok(false) => format!("{why}, but was not counted in it"),
            Err(e) => format!("{why}; not recorded in memberships: {e}"),
        };
        info!(peer = %peer, group = %idg, "{reason}");
        self.audit(AuditEvent {
            at: (self.clock)(),
            peer: Some(peer),
            group: Some(idg),
            outcome: AuditOutcome::Left,
            reason,
        })
        .await;
    }

    async fn authentication_failed(&self, f: AuthFailure) {
        let why = match (&f.claimed, f.credential_found) {
            (None, _) => "no identity presented",
            (Some(_), false) => "unknown identity, or its certificate was refused",
            (Some(_), true) => "AUTH did not verify (wrong PSK or key)",
        };
        let peer = f.claimed.as_ref().map(identity);
        let shown = peer.as_ref().map(ToString::to_string).unwrap_or_default();
        warn!(peer = %shown, remote = %f.remote, "authentication failed: {why}");
        self.audit(AuditEvent {
            at: (self.clock)(),
            peer,
            group: None,
            outcome: AuditOutcome::Refused,
            reason: format!("AUTHENTICATION_FAILED: {why} (from {})", f.remote),
        })
        .await;
    }
}
