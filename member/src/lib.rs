//! gikev2-member: the member agent (binary `gm`). The protocol lives in `gikev2-proto`;
//! this crate keeps group memberships (the sans-IO [`agent`] core), installs their SAs
//! into the shared `gikev2-esp` engine ([`install`]), drives sockets and timers
//! ([`runtime`]) and answers the control socket ([`control`]).
//!
//! - [`config`]: `gm join` arguments, credentials loaded from files.
//! - [`sag`]: the SAg payload of what this host supports (RFC 9838 2.3.3, 4.3).
//! - [`install`]: TEK to engine SA, and the [`install::DataPlane`] seam.
//! - `dataplane` (Linux): the TUN data plane of `gikev2_esp` behind that seam.
//! - [`agent`]: registrations, rekeys, re-registrations, exclusion (RFC 9838 2.3-2.4).
//! - [`runtime`]: the tokio driver, the [`runtime::Clock`].
//! - [`control`]: the framed JSON control protocol and its client (STYLE S6).
//! - [`status`]: what `gm status --json` shows (never keys).
//! - [`join`]: a one-shot registration without an agent (`gcks demo`).
//! - [`stdout`]: output lines of the command-line tools that survive a closed pipe.

pub mod agent;
pub mod config;
pub mod control;
#[cfg(target_os = "linux")]
pub mod dataplane;
pub mod install;
pub mod join;
pub mod runtime;
pub mod sag;
pub mod status;
pub mod stdout;

pub use agent::{Agent, AgentConfig, AgentError, RekeyEndpoint, Transmit};
pub use config::{ConfigError, JoinArgs, MembershipConfig};
pub use install::{DataPlane, NoDataPlane, TekInfo};
pub use join::{JoinError, Joined, join};
pub use runtime::{AgentHandle, Clock, OffsetClock, RuntimeConfig, SystemClock};
pub use status::{AgentEvent, GroupStatus, Status};
