//! IKE SA state machines (RFC 7296; RFC 9838 2.3) for the initiator (member) and the
//! responder (GCKS), sans-IO in the quinn style (STYLE Q1-Q3): datagrams and time go in
//! through `handle*` calls; datagrams, timers and events come out through `poll_*` calls.

pub mod config;
pub mod endpoint;
pub mod nat;
pub mod protect;
pub mod retransmit;
pub mod sa;
pub mod x509;

pub use config::{
    IkeConfig, IkeLifetimes, LifetimeError, LocalAuth, LocalPpk, PPK_ID_FIXED, PeerAuth,
    PeerAuthResolver, PpkResolver, SinglePeer, SinglePpk,
};
pub use endpoint::{Endpoint, EndpointConfig, EndpointStats, SaHandle};
pub use nat::{NAT_T_PORT, NatStatus};
pub use retransmit::{RetransmitAction, RetransmitPolicy, RetransmitTimer};
pub use sa::{
    CloseReason, Datagram, Decision, Event, Goal, IkeSa, InitRefusal, RegistrationRequest, Role,
};
