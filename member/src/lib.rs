//! gikev2-member: the member agent. The protocol lives in `gikev2-proto`; this crate owns
//! the member's sockets and timers.

pub mod join;

pub use join::{JoinError, Joined, join};
