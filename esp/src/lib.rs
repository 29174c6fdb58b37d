//! gikev2-esp: the shared userspace ESP engine of the G-IKEv2 member (see README.md).
//!
//! Sans-IO: packets and `now` go in, packets (in the caller's buffer), drop reasons and
//! lifetime events come out. One [`Engine`] serves every group and agent on a host.
//!
//! - [`sad`]: inbound SA lookup, RFC 4301 4.1 / RFC 5374 longest match, lock-free reads.
//! - [`spd`]: outbound policy, ordered first match, BYPASS / DISCARD / PROTECT.
//! - [`replay`]: sliding-window anti-replay, per SA or per sender.
//! - [`sa`]: the SA record: keys, Sender-ID IVs, sequence numbers, lifetimes, ATD/DTD.
//! - [`cipher`]: the `SaCipher` seam; `backend` implements it on `gikev2_proto::crypto`.
//! - [`engine`]: install/delete, seal/open, timers and events.

#![forbid(unsafe_code)]

mod backend;
pub mod cipher;
#[cfg(target_os = "linux")]
pub mod dataplane;
pub mod engine;
pub mod ip;
mod packet;
pub mod replay;
pub mod sa;
pub mod sad;
pub mod spd;

pub use backend::new_cipher;
pub use cipher::{CipherError, CipherFactory, SaCipher};
pub use engine::{
    Decision, Engine, EngineConfig, EspPacket, SEAL_HEADROOM, SEAL_TAILROOM, Verdict,
};
pub use replay::{ReplayPolicy, SenderKey};
pub use sa::{
    Direction, DropReason, EspAlgorithm, Event, InstallError, KeyMaterial, Lifetimes, Limits, Mode,
    SaConfig, SaHandle, SaId, SaStats, SealError, SenderIds, SnTransform, Tunnel,
};
pub use sad::{Sad, SadKey};
pub use spd::{Action, AddrRange, PolicyId, PortSel, Selector, Spd, SpdEntry};
