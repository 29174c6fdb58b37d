//! gikev2-proto: the sans-IO protocol core of G-IKEv2 (RFC 9838).
//!
//! Bytes, time and randomness go in; bytes and events come out. No sockets, no clocks, no
//! database. See `README.md` for what each module owns.

#![forbid(unsafe_code)]

pub mod codec;
pub mod crypto;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod group;
pub mod ike;
pub mod registry;
pub mod wire;

pub use codec::{Codec, Reader};
pub use error::DecodeError;
