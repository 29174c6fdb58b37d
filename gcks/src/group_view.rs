//! What every registration to a group needs from the store, read once and shared: the
//! group's configuration, its current key state (committed first when an SA must be
//! created or renewed, [`crate::state::ensure_current`]), its GCAUTH signing key parsed,
//! and the policies a member's SAg is checked against. Without it each registration
//! re-read and re-decrypted all of that (about ten statements and a PKCS#8 parse).
//!
//! A view is used while it is younger than the policy TTL (`gcks serve --policy-ttl`,
//! 1 s by default: an SQL edit of a group, its TEK policies, its signing key or its
//! sender authorizations takes effect within that time) **and** every SA in it can still
//! be handed out (it is reloaded, and the SA renewed, when one reaches its renew margin,
//! [`crate::state::renew_margin`]). An unknown IDg is remembered as unknown for the TTL
//! too. Reloads are single-flight: registrations arriving while a view loads wait for it
//! instead of loading it again.
//!
//! The KEK policy's source selector comes from the rekey sender's
//! [`crate::rekey_source::RekeySources`] when one is linked
//! ([`GroupViews::use_rekey_sources`]), so that registrations name the address and port
//! GSA_REKEY messages leave from (RFC 9838 4.4.2, R063); without one, the configured
//! selector.
//!
//! What is not cached: whether the member exists, its authorization and role, the
//! group's capacity and Sender-IDs; those are decided in the store for every
//! registration ([`gikev2_policy::Store::commit_registrations`]).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use gikev2_policy::{EspMode, GroupConfig, Identity, RekeyMode, Store};
use gikev2_proto::group::GroupState;
use gikev2_proto::registry::SnId;
use gikev2_proto::wire::gsa::GsaPolicy;
use gikev2_proto::wire::sa::SaPayload;

use crate::rekey_source::RekeySources;
use crate::state::{StateFailure, ensure_current, group_auth, renew_margin, to_proto};

/// One group, ready for registrations.
pub struct GroupView {
    pub cfg: GroupConfig,
    /// The protocol core's state: what `build_registration` needs.
    pub state: GroupState,
    /// The group is rekeyed in-band (RFC 9838 2.4.2).
    pub inband: bool,
    /// USE_TRANSPORT_MODE: every TEK is transport mode (RFC 9838 2.3.4: one mode for every
    /// SA of the registration).
    pub transport_mode: bool,
    /// Some TEK has "32-bit Sequential Numbers" on a multicast destination, handed out
    /// while at most one member was authorized to send (RFC 9838 4.4.2.1.3): a sender
    /// registering makes the registrar count the senders again
    /// ([`crate::registrar`]), since its authorization may be younger than the view.
    pub single_sender_teks: bool,
    /// The KEK (multicast rekey only) and TEK policies an SAg is checked against.
    sag_policies: Vec<GsaPolicy>,
    /// Unix time from which some SA in the view is inside its renew margin.
    fresh_until: u64,
}

impl GroupView {
    /// Checks a member's SAg against the group's policies ([`crate::sag::check`]).
    pub fn check_sag(&self, sag: &SaPayload) -> Result<(), String> {
        let policies: Vec<&GsaPolicy> = self.sag_policies.iter().collect();
        crate::sag::check(sag, &policies)
    }

    /// The SPIs of the TEKs with "32-bit Sequential Numbers": a sender registration
    /// claims them (RFC 9838 4.4.2.1.3, R077; [`gikev2_policy::RegistrationWrite::sequential_teks`]).
    pub fn sequential_teks(&self) -> Vec<u32> {
        self.state
            .teks
            .iter()
            .filter(|t| t.sn == SnId::Seq32)
            .map(|t| t.spi)
            .collect()
    }

    /// The TEK SPIs, for logs and the audit trail.
    pub fn tek_spis(&self) -> String {
        self.state
            .teks
            .iter()
            .map(|t| format!("{:#010x}", t.spi))
            .collect::<Vec<_>>()
            .join(", ")
    }

    async fn load(
        store: &Store,
        idg: &Identity,
        now: u64,
        sources: Option<&RekeySources>,
    ) -> Result<Option<Self>, StateFailure> {
        let Some(cfg) = store.group_config(idg).await? else {
            return Ok(None);
        };
        // One count for both: the TEKs' sequence numbers are chosen with it (R077) and
        // the group's policy is built with it.
        let senders = store.sender_count(cfg.group.id).await?;
        let stored = ensure_current(store, &cfg, senders, now).await?;
        let auth = group_auth(store, &cfg).await?;
        let rekey_src = match sources {
            Some(s) => s.selector(&cfg),
            None => cfg.group.spec.rekey.src_selector(),
        };
        let state =
            to_proto(&cfg, &stored, auth, senders > 1, &rekey_src).map_err(StateFailure::Policy)?;
        let spec = &cfg.group.spec;
        let inband = spec.rekey.mode == RekeyMode::Inband;
        let mut sag_policies = Vec::new();
        if let (Some(k), false) = (&state.rekey, inband) {
            sag_policies.push(k.policy(Some(&state.auth), None));
        }
        sag_policies.extend(state.teks.iter().map(|t| t.policy(None, inband)));
        let transport_mode = transport_mode(&cfg);
        let rekey_margin = renew_margin(u64::from(spec.rekey.lifetime));
        // Each TEK's margin follows its own lifetime, as `state::plan` renews it.
        let teks = stored
            .teks
            .iter()
            .filter(|t| cfg.teks.iter().any(|p| p.id == t.policy));
        let fresh_until = state
            .rekey
            .iter()
            .map(|r| r.expires.saturating_sub(rekey_margin))
            .chain(teks.clone().map(|t| {
                t.expires
                    .saturating_sub(renew_margin(t.expires.saturating_sub(t.created)))
            }))
            .min()
            .unwrap_or(u64::MAX);
        let single_sender_teks = senders <= 1
            && teks.clone().any(|t| {
                t.sn == SnId::Seq32
                    && cfg
                        .teks
                        .iter()
                        .any(|p| p.id == t.policy && p.spec.dst.is_multicast())
            });
        Ok(Some(Self {
            cfg,
            state,
            inband,
            transport_mode,
            single_sender_teks,
            sag_policies,
            fresh_until,
        }))
    }
}

struct Entry {
    /// `None`: no group has this IDg.
    view: Option<Arc<GroupView>>,
    loaded: Instant,
}

/// The views, by IDg.
pub struct GroupViews {
    store: Arc<Store>,
    ttl: Duration,
    entries: RwLock<HashMap<Identity, Entry>>,
    /// Held while a view loads (single flight; loads are rare).
    loading: tokio::sync::Mutex<()>,
    /// Where GSA_REKEY leaves from, for the KEK policy's source selector.
    sources: RwLock<Option<Arc<RekeySources>>>,
}

/// Most IDgs remembered; past that the table starts over (a member can only name
/// groups after it authenticated, so this bounds what a misbehaving member costs).
const MAX_VIEWS: usize = 4096;

impl GroupViews {
    pub fn new(store: Arc<Store>, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            entries: RwLock::new(HashMap::new()),
            loading: tokio::sync::Mutex::new(()),
            sources: RwLock::new(None),
        }
    }

    /// Registrations name the GSA_REKEY source `sources` resolves in the KEK policy
    /// (the rekey sender's, [`crate::rekey::RekeyScheduler::with_views`]); views loaded
    /// before are dropped.
    pub fn use_rekey_sources(&self, sources: Arc<RekeySources>) {
        *self.sources.write().unwrap_or_else(|p| p.into_inner()) = Some(sources);
        self.invalidate();
    }

    fn cached(&self, idg: &Identity, now: u64) -> Option<Option<Arc<GroupView>>> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let e = entries.get(idg)?;
        let young = e.loaded.elapsed() < self.ttl;
        let fresh = e.view.as_ref().is_none_or(|v| now < v.fresh_until);
        (young && fresh).then(|| e.view.clone())
    }

    /// The view of the group named `idg` at Unix time `now`, `None` when no group has
    /// that IDg.
    pub async fn get(
        &self,
        idg: &Identity,
        now: u64,
    ) -> Result<Option<Arc<GroupView>>, StateFailure> {
        if let Some(v) = self.cached(idg, now) {
            return Ok(v);
        }
        let _loading = self.loading.lock().await;
        if let Some(v) = self.cached(idg, now) {
            return Ok(v);
        }
        let sources = self
            .sources
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let view = GroupView::load(&self.store, idg, now, sources.as_deref())
            .await?
            .map(Arc::new);
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_VIEWS {
            entries.clear();
        }
        entries.insert(
            idg.clone(),
            Entry {
                view: view.clone(),
                loaded: Instant::now(),
            },
        );
        Ok(view)
    }

    /// Forgets the view of `idg`: the next registration to it reads the store again.
    pub fn forget(&self, idg: &Identity) {
        self.entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(idg);
    }

    /// Forgets every view: the next registration reads the store again (after this
    /// process changed a group's key state, say).
    pub fn invalidate(&self) {
        self.entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// Whether the group's Data-Security SAs are in transport mode, announced with
/// USE_TRANSPORT_MODE: "all of them will have the same mode of operation" (RFC 9838
/// 2.3.4), so transport only when every TEK policy says transport. The registration
/// response carries it, and so do GSA_REKEY and GSA_INBAND_REKEY messages with new TEKs
/// (2.4.1.3, 2.4.2.1; docs/interop.md #75).
pub(crate) fn transport_mode(cfg: &GroupConfig) -> bool {
    !cfg.teks.is_empty() && cfg.teks.iter().all(|p| p.spec.mode == EspMode::Transport)
}
