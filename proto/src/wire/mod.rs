//! The wire codec for IKEv2 (RFC 7296) and G-IKEv2 (RFC 9838) messages.
//!
//! One module per structure; each implements [`crate::codec::Codec`]. Decoding never
//! panics and never allocates more than the input bounds: every length becomes a
//! sub-reader and every list has a cap.

pub mod attribute;
pub mod transform;
pub mod ts;

// G-IKEv2 payload bodies (RFC 9838 4.4, 4.5).
pub mod gsa;
pub mod kd;

pub use attribute::{AttrValue, Attribute};
pub use gsa::GsaPayload;
pub use kd::KdPayload;
pub use transform::Transform;
pub use ts::TrafficSelector;
