//! gikev2-gcks: the Group Controller/Key Server runtime. The protocol lives in
//! `gikev2-proto`; this crate owns sockets, timers and the link to the policy store.

pub mod server;

pub use server::{Registrar, RegistrationContext, ServeConfig, ServeError, Server};
