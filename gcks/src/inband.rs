//! The in-band rekey sender: new keys of a group rekeyed in-band (`groups.rekey_mode =
//! 'inband'`) go to its members over their registration IKE SAs with GSA_INBAND_REKEY
//! (RFC 9838 2.4.2), so they switch to new TEKs without registering again.
//!
//! A member of such a group gets no Rekey SA and no lifetimes (5 Table 3; 4.4.2.2.1), and
//! the server keeps its IKE SA open ([`crate::Verdict::inband`]). Every tick this sender
//! looks at each in-band group:
//!
//! 1. It makes the group's key state current with the rekey sender's margin
//!    ([`crate::state::push_margin`]: a quarter of a TEK's lifetime before it expires), so
//!    new TEKs are pushed well before the old ones expire. A registration may renew a TEK
//!    itself (at the later [`crate::state::renew_margin`]); whichever renews, the other
//!    sees the result in the store.
//! 2. It compares the TEKs with those it last pushed (at start: the store's). When they
//!    differ, it builds the group's state and hands it to the server
//!    ([`crate::InbandPusher`]), which sends every member of the group rekeyed over one of
//!    its IKE SAs the GSA and KD "built in the same manner as in a registration exchange"
//!    (2.4.2.1) for that member (`gikev2_proto::group::build_inband_rekey`).
//!
//! Members keep a TEK the push no longer lists for GWP_DTD, then remove it (2.4.2.2,
//! processed as a registration would be). Each push carries the identities authorized
//! for the group at that moment: a member no longer among them gets the Delete of the
//! whole Group SA over its IKE SA instead of keys (2.4.3 Figure 13, 4.6). Nothing needs a lease: every GCKS process
//! pushes to the members whose IKE SAs it holds, and the renewal itself is committed once
//! (the state's generation check).
//!
//! Not pushed: a TEK policy edit that replaces no TEK (members get it when they register
//! again); members of a group whose IKE SA this process lost (a restart) register again
//! when their IKE SA is gone (RFC 9838 2.3.3: without GIKE_UPDATE policy, a closed IKE SA
//! means exclusion).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gikev2_policy::{GroupId, GroupState as StoredState, RekeyMode, Store, StoreError};
use gikev2_proto::crypto::SystemRandom;
use gikev2_proto::group::GroupAuth;
use gikev2_proto::registry::SnId;
use gikev2_proto::wire::TrafficSelector;
use gikev2_proto::wire::id::IdPayload;
use tracing::{Instrument, info, warn};

use crate::group_view::GroupViews;
use crate::server::{InbandPush, InbandPusher};
use crate::state::{
    StateFailure, TickGroups, Ticks, ensure_current_with, plan_with, push_margin, tick_groups,
    to_proto,
};

/// One push the sender handed to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentInband {
    /// The group's name.
    pub group: String,
    /// TEKs the members did not have.
    pub new_teks: Vec<u32>,
    /// TEKs the push no longer lists (members drop them after GWP_DTD).
    pub dropped_teks: Vec<u32>,
}

/// Why a group's push could not be made (tried again next tick).
#[derive(Debug, thiserror::Error)]
pub enum InbandError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("group {group}: {source}")]
    State { group: String, source: StateFailure },
    #[error("group {group}: {reason}")]
    Policy { group: String, reason: String },
    #[error("the server stopped")]
    ServerGone,
}

/// Sends GSA_INBAND_REKEY for the in-band groups of a store, through a [`crate::Server`].
pub struct InbandScheduler {
    store: Arc<Store>,
    pusher: InbandPusher,
    views: Option<Arc<GroupViews>>,
    tick: Duration,
    /// By group: the TEK SPIs the members were last given.
    announced: HashMap<GroupId, Vec<u32>>,
}

fn tek_spis(s: &StoredState) -> Vec<u32> {
    let mut v: Vec<u32> = s.teks.iter().map(|t| t.spi).collect();
    v.sort_unstable();
    v
}

impl InbandScheduler {
    /// A `tick` under 10 ms is taken as 10 ms.
    pub fn new(store: Arc<Store>, pusher: InbandPusher, tick: Duration) -> Self {
        Self {
            store,
            pusher,
            views: None,
            tick: tick.max(Duration::from_millis(10)),
            announced: HashMap::new(),
        }
    }

    /// The registrar's group views, dropped after every push so that the next
    /// registration hands out the new TEKs at once.
    pub fn with_views(mut self, views: Arc<GroupViews>) -> Self {
        self.views = Some(views);
        self
    }

    /// Runs a tick every `tick` until `shutdown` completes.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        let mut ticks = Ticks::new(self.tick, shutdown);
        while let Some(now) = ticks.next().await {
            for e in self.tick(now).await.into_iter().filter_map(Result::err) {
                warn!(error = %e, "GSA_INBAND_REKEY not sent");
            }
        }
    }

    /// Looks at every in-band group at Unix time `now`; pushes what changed.
    pub async fn tick(&mut self, now: u64) -> Vec<Result<SentInband, InbandError>> {
        let groups = match self.store.group_rows().await {
            Ok(g) => g,
            Err(e) => return vec![Err(e.into())],
        };
        let TickGroups {
            groups,
            seen,
            unreadable,
        } = tick_groups(groups, RekeyMode::Inband);
        let mut out: Vec<_> = unreadable.into_iter().map(|e| Err(e.into())).collect();
        for g in groups {
            let span = tracing::info_span!("inband", group = %g.spec.name);
            match self.group_tick(&g.spec.idg, now).instrument(span).await {
                Ok(Some(sent)) => out.push(Ok(sent)),
                Ok(None) => {}
                Err(e) => out.push(Err(e)),
            }
        }
        self.announced.retain(|id, _| seen.contains(id));
        out
    }

    async fn group_tick(
        &mut self,
        idg: &gikev2_policy::Identity,
        now: u64,
    ) -> Result<Option<SentInband>, InbandError> {
        let Some(cfg) = self.store.group_config(idg).await? else {
            return Ok(None);
        };
        let id = cfg.group.id;
        let name = cfg.group.spec.name.clone();
        let policy_err = |reason: String| InbandError::Policy {
            group: name.clone(),
            reason,
        };
        let Some(before) = self.store.group_state(id).await? else {
            // No key state yet: nobody registered, nobody to push to.
            return Ok(None);
        };
        let senders = self.store.sender_count(id).await?;
        let old = self
            .announced
            .entry(id)
            .or_insert_with(|| tek_spis(&before))
            .clone();
        let due = plan_with(
            &cfg,
            &before,
            senders,
            now,
            &mut SystemRandom::new(),
            push_margin,
        )
        .map_err(&policy_err)?
        .is_some();
        let cur = if due {
            ensure_current_with(&self.store, &cfg, senders, now, push_margin)
                .await
                .map_err(|source| InbandError::State {
                    group: name.clone(),
                    source,
                })?
        } else {
            before
        };
        let spis = tek_spis(&cur);
        if spis == old {
            return Ok(None);
        }
        if old.is_empty() {
            // The group had no TEK when this sender first looked (its state row exists
            // from creation): every member registered since got what the store has, and
            // none can hold less (a registration needs a TEK in an in-band group).
            self.announced.insert(id, spis);
            return Ok(None);
        }
        // No Rekey SA in an in-band group (`to_proto` builds none), so neither its
        // authentication nor its source selector is used.
        let state = to_proto(
            &cfg,
            &cur,
            GroupAuth::Implicit,
            senders > 1,
            &TrafficSelector::any(false),
        )
        .map_err(&policy_err)?;
        // RFC 9838 4.4.2.1.3 (R077): the push reaches the group's senders too, so a TEK
        // with sequential numbers it brings while a sender is authorized goes to no later
        // sender registration (docs/interop.md #65); committed before it is sent.
        if senders > 0 {
            let sequential: Vec<u32> = cur
                .teks
                .iter()
                .filter(|t| t.sn == SnId::Seq32 && !old.contains(&t.spi))
                .map(|t| t.spi)
                .collect();
            self.store.mark_teks_sender_claimed(id, &sequential).await?;
        }
        if let Some(v) = &self.views {
            v.invalidate();
        }
        let authorized = Arc::new(
            self.store
                .authorized_identities(id)
                .await?
                .into_iter()
                .collect(),
        );
        let pushed = self
            .pusher
            .push(InbandPush {
                group: IdPayload {
                    ty: idg.id_type,
                    data: idg.value.clone(),
                },
                state: Arc::new(state),
                now,
                transport_mode: crate::group_view::transport_mode(&cfg),
                authorized,
            })
            .await;
        if !pushed {
            return Err(InbandError::ServerGone);
        }
        let sent = SentInband {
            group: name,
            new_teks: spis.iter().copied().filter(|s| !old.contains(s)).collect(),
            dropped_teks: old.iter().copied().filter(|s| !spis.contains(s)).collect(),
        };
        info!(
            new_teks = ?sent.new_teks.iter().map(|s| format!("{s:#010x}")).collect::<Vec<_>>(),
            dropped_teks = ?sent.dropped_teks.iter().map(|s| format!("{s:#010x}")).collect::<Vec<_>>(),
            "in-band rekey handed to the server"
        );
        self.announced.insert(id, spis);
        Ok(Some(sent))
    }
}
