//! The wire codec for IKEv2 (RFC 7296) and G-IKEv2 (RFC 9838) messages.
//!
//! One module per structure; each implements [`crate::codec::Codec`]. Decoding never
//! panics and never allocates more than the input bounds: every length becomes a
//! sub-reader and every list has a cap.
//!
//! Layers: [`header`] (fixed IKE header, port-4500 marker), [`payload`] (generic payload
//! header, the [`Payload`] enum, chain encode/decode), one module per payload body.
//! Payload bodies implement `Codec` over the bytes after the generic header and read to
//! the end of their reader.

pub mod attribute;
pub mod transform;
pub mod ts;

pub mod header;
pub mod message;
pub mod payload;
pub mod rules;

// Payload bodies (RFC 7296 3.3-3.14; RFC 7383 2.5).
pub mod auth;
pub mod cert;
pub mod delete;
pub mod id;
pub mod ke;
pub mod nonce;
pub mod notify;
pub mod sa;
pub mod sk;
pub mod tsp;
pub mod vendor;

// G-IKEv2 payload bodies (RFC 9838 4.4, 4.5).
pub mod gsa;
pub mod kd;

pub use attribute::{AttrValue, Attribute};
pub use auth::AuthPayload;
pub use cert::{CertPayload, CertReqPayload};
pub use delete::DeletePayload;
pub use gsa::GsaPayload;
pub use header::{Flags, HEADER_LEN, Header};
pub use id::IdPayload;
pub use kd::KdPayload;
pub use ke::KePayload;
pub use message::{EncryptedLayout, Message, encrypted_layout};
pub use nonce::NoncePayload;
pub use notify::NotifyPayload;
pub use payload::{Payload, PayloadsExt, decode_chain, decode_inner_chain, encode_chain};
pub use sa::{Proposal, SaPayload};
pub use sk::{EncryptedFragment, EncryptedPayload};
pub use transform::Transform;
pub use ts::TrafficSelector;
pub use tsp::TsPayload;
pub use vendor::VendorIdPayload;
