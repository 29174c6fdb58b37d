//! The store-backed [`Registrar`]: authorizes each registration against the SQL policy,
//! builds the GSA and KD payloads from the group's committed key state, allocates and
//! commits Sender-IDs before answering, and writes every outcome to the audit log.
//!
//! Order of checks (RFC 9838 2.3.1, 2.3.4, 4.7), each refusal with its notify:
//!
//! | check | notify |
//! |---|---|
//! | the IDg names a group | INVALID_GROUP_ID |
//! | the member is authorized for it | AUTHORIZATION_FAILED |
//! | GROUP_SENDER only with the `sender` role | AUTHORIZATION_FAILED |
//! | the SAg lets the member use the group's transforms ([`crate::sag`]) | NO_PROPOSAL_CHOSEN |
//! | the group has room (capacity) | REGISTRATION_FAILED |
//! | a Sender-ID is left for a sender of a counter-mode TEK (2.5.1) | REGISTRATION_FAILED |
//! | the payloads can be built; the store answers | REGISTRATION_FAILED |
//!
//! Promises are committed before the decision is returned (so before the response is
//! sent): the group's key state (`ensure_current`), the membership and the Sender-IDs.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use gikev2_policy::{
    Admission, AuditEvent, AuditOutcome, EspMode, GroupConfig, Identity, RekeyMode, Role, Store,
    StoreError,
};
use gikev2_proto::group::{BuildContext, MemberGrant, build_registration};
use gikev2_proto::ike::Decision;
use gikev2_proto::registry::NotifyType;
use gikev2_proto::wire::gsa::GsaPolicy;
use gikev2_proto::wire::id::IdPayload;
use tracing::{info, warn};

use crate::server::{AuthFailure, Registrar, RegistrationContext, Verdict};
use crate::state::{StateFailure, ensure_current, group_auth, to_proto};

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
}

fn refuse(notify: NotifyType, reason: impl Into<String>) -> Refusal {
    Refusal {
        notify,
        reason: reason.into(),
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

/// What an accepted registration produced.
struct Granted {
    decision: Decision,
    keep_ike_sa: bool,
    summary: String,
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

/// Registrations decided by the policy store.
pub struct StoreRegistrar {
    store: Arc<Store>,
    clock: Arc<dyn Fn() -> u64 + Send + Sync>,
}

impl StoreRegistrar {
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            clock: Arc::new(unix_now),
        }
    }

    /// With another clock (Unix seconds), for tests.
    pub fn with_clock(store: Arc<Store>, clock: Arc<dyn Fn() -> u64 + Send + Sync>) -> Self {
        Self { store, clock }
    }

    async fn audit(&self, event: AuditEvent) {
        if let Err(e) = self.store.record_audit(&event).await {
            warn!(error = %e, "cannot write the audit log");
        }
    }

    async fn evaluate(&self, ctx: &RegistrationContext) -> Result<Granted, Refusal> {
        let now = (self.clock)();
        let store = &*self.store;
        let peer = identity(&ctx.peer_id);
        let idg = identity(&ctx.request.group);
        let cfg = store
            .group_config(&idg)
            .await?
            .ok_or_else(|| refuse(NotifyType::InvalidGroupId, "unknown group"))?;
        let gid = cfg.group.id;
        let member = store.member(&peer).await?.ok_or_else(|| {
            refuse(
                NotifyType::AuthorizationFailed,
                "no such member (deleted after it authenticated)",
            )
        })?;
        let role = store.authorization(&peer, gid).await?.ok_or_else(|| {
            refuse(
                NotifyType::AuthorizationFailed,
                "member not authorized for this group",
            )
        })?;
        let wants_sender = ctx.request.sender_ids.is_some();
        if wants_sender && !role.allows(Role::Sender) {
            return Err(refuse(
                NotifyType::AuthorizationFailed,
                "authorized as receiver but asked to send (GROUP_SENDER)",
            ));
        }
        let stored = ensure_current(store, &cfg, now).await?;
        let auth = group_auth(store, &cfg).await?;
        let senders = store
            .authorizations(gid)
            .await?
            .iter()
            .filter(|a| a.role == Role::Sender)
            .count();
        let state = to_proto(&cfg, &stored, auth, senders > 1)
            .map_err(|e| refuse(NotifyType::RegistrationFailed, e))?;
        let inband = cfg.group.spec.rekey.mode == RekeyMode::Inband;
        if let Some(sag) = &ctx.request.sag {
            let kek = match (&state.rekey, inband) {
                (Some(k), false) => Some(k.policy(Some(&state.auth), None)),
                _ => None,
            };
            let teks: Vec<GsaPolicy> = state.teks.iter().map(|t| t.policy(None, inband)).collect();
            let policies: Vec<&GsaPolicy> = kek.iter().chain(teks.iter()).collect();
            crate::sag::check(sag, &policies)
                .map_err(|why| refuse(NotifyType::NoProposalChosen, why))?;
        }
        let admission = store.admit_member(gid, member.id, now).await?;
        if let Admission::GroupFull { capacity } = admission {
            return Err(refuse(
                NotifyType::RegistrationFailed,
                format!("group full (capacity {capacity})"),
            ));
        }
        let result = self
            .grant(ctx, &cfg, &state, member.id, wants_sender, inband, now)
            .await;
        if result.is_err() && admission == Admission::Admitted {
            // Nothing was promised: give the place back.
            if let Err(e) = store.remove_member_from_group(gid, member.id).await {
                warn!(error = %e, "cannot undo an admission");
            }
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn grant(
        &self,
        ctx: &RegistrationContext,
        cfg: &GroupConfig,
        state: &gikev2_proto::group::GroupState,
        member: gikev2_policy::MemberId,
        wants_sender: bool,
        inband: bool,
        now: u64,
    ) -> Result<Granted, Refusal> {
        let sender_ids = if wants_sender && state.uses_counter_mode() {
            // RFC 9838 2.5.1: at least one, as many as asked up to the group's bound;
            // committed before the response reveals them.
            let wanted = ctx.request.sender_ids.unwrap_or(1).max(1);
            let ids = self
                .store
                .allocate_sender_ids(cfg.group.id, member, wanted, now)
                .await?;
            if ids.is_empty() {
                return Err(refuse(
                    NotifyType::RegistrationFailed,
                    "Sender-ID space exhausted (RFC 9838 2.5.1 step 5: the group must be \
                     re-keyed with every member excluded first)",
                ));
            }
            ids
        } else {
            Vec::new()
        };
        let grant = MemberGrant {
            sender: wants_sender,
            sender_ids: sender_ids.clone(),
            wrap_keys: Vec::new(),
            inband,
        };
        let (gsa, kd) = build_registration(state, &grant, &ctx.kwk, &BuildContext { now })
            .map_err(|e| {
                refuse(
                    NotifyType::RegistrationFailed,
                    format!("cannot build GSA/KD: {e}"),
                )
            })?;
        // RFC 9838 2.3.4: one mode for every SA of the registration.
        let transport_mode =
            !cfg.teks.is_empty() && cfg.teks.iter().all(|p| p.spec.mode == EspMode::Transport);
        let spis: Vec<String> = state
            .teks
            .iter()
            .map(|t| format!("{:#010x}", t.spi))
            .collect();
        let mut summary = if wants_sender {
            "sender".to_string()
        } else {
            "receiver".to_string()
        };
        if !sender_ids.is_empty() {
            summary.push_str(&format!(", Sender-IDs {sender_ids:?}"));
        }
        summary.push_str(&format!(", TEK SPIs [{}]", spis.join(", ")));
        if state.rekey.is_some() && !inband {
            summary.push_str(", Rekey SA");
        }
        Ok(Granted {
            decision: Decision::Accept {
                gsa,
                kd,
                transport_mode,
            },
            // RFC 9838 2.3.3: a member without GIKE_UPDATE policy must consider itself
            // excluded when its IKE SA closes; in-band rekey needs the IKE SA (2.4.2).
            keep_ike_sa: inband || state.rekey.is_none(),
            summary,
        })
    }
}

impl Registrar for StoreRegistrar {
    async fn decide(&self, ctx: RegistrationContext) -> Decision {
        self.register(ctx).await.decision
    }

    async fn register(&self, ctx: RegistrationContext) -> Verdict {
        let peer = identity(&ctx.peer_id);
        let group = identity(&ctx.request.group);
        let outcome = self.evaluate(&ctx).await;
        let (verdict, event) = match outcome {
            Ok(g) => {
                info!(peer = %peer, group = %group, remote = %ctx.remote, "registered: {}", g.summary);
                (
                    Verdict {
                        decision: g.decision,
                        keep_ike_sa: g.keep_ike_sa,
                    },
                    (AuditOutcome::Registered, g.summary),
                )
            }
            Err(r) => {
                let reason = format!("{}: {}", notify_name(r.notify), r.reason);
                warn!(peer = %peer, group = %group, remote = %ctx.remote, "registration refused: {reason}");
                (
                    Verdict {
                        decision: Decision::Refuse(r.notify),
                        keep_ike_sa: false,
                    },
                    (AuditOutcome::Refused, reason),
                )
            }
        };
        self.audit(AuditEvent {
            at: (self.clock)(),
            peer: Some(peer),
            group: Some(group),
            outcome: event.0,
            reason: clip(event.1),
        })
        .await;
        verdict
    }

    async fn left(&self, peer_id: IdPayload, group: IdPayload) {
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
        let reason = match removed {
            Ok(true) => "left the group (GSA_REGISTRATION with IDg and an error notify)".into(),
            Ok(false) => "asked to leave a group it was not in".into(),
            Err(e) => format!("leave not recorded in memberships: {e}"),
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
        warn!(peer = ?peer, remote = %f.remote, "authentication failed: {why}");
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
