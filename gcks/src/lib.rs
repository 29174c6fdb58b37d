//! gikev2-gcks: the Group Controller/Key Server runtime. The protocol lives in
//! `gikev2-proto`, the policy in `gikev2-policy`; this crate owns sockets, timers and the
//! link between them.
//!
//! - [`server`]: UDP sockets around the sans-IO endpoint, registrations delegated to a
//!   [`Registrar`].
//! - [`registrar`]: the store-backed registrar (authorization, key state, Sender-IDs,
//!   audit log).
//! - [`credentials`]: member credentials for the IKE layer, cached from the store.
//! - [`group_view`]: a group's configuration and key state, read once and shared.
//! - [`commit_queue`]: registrations' store writes, committed in batches.
//! - [`state`]: a group's key state, created on first use and committed before use.
//! - [`rekey`]: the multicast GSA_REKEY sender (new SAs pushed to the group).
//! - [`inband`]: the GSA_INBAND_REKEY sender (new TEKs pushed over members' IKE SAs).
//! - [`rekey_source`]: where GSA_REKEY leaves from, and the KEK policy's source selector.
//! - [`sample_group`]: the group `gcks demo` and `gcks-load` provision.
//! - [`sag`]: a member's SAg against the group's policy (NO_PROPOSAL_CHOSEN).

pub mod commit_queue;
pub mod credentials;
pub mod group_view;
pub mod inband;
pub mod registrar;
pub mod rekey;
pub mod rekey_source;
pub mod sag;
pub mod sample_group;
pub mod server;
pub mod state;
pub mod udp;

pub use inband::{InbandScheduler, SentInband};
pub use registrar::StoreRegistrar;
pub use rekey::{RekeyScheduler, RekeySchedulerConfig, SentRekey};
pub use server::{
    AuthFailure, InbandMember, InbandPush, InbandPusher, Registrar, RegistrationContext,
    ServeConfig, ServeError, Server, Verdict,
};
