//! Decoding errors and their mapping onto the notify the RFC names (STYLE R5: decided once).

use crate::registry::NotifyType;

/// Why received bytes were rejected. Each variant maps to the notify a responder sends back
/// (RFC 7296 2.21, 3.10.1) through [`DecodeError::notify`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than a field or a length needed.
    #[error("truncated: {0}")]
    Truncated(&'static str),
    /// Bytes left over after a structure that must fill its container.
    #[error("trailing data after {0}")]
    TrailingData(&'static str),
    /// A length field that is impossible for the structure (too small, wrong fixed size).
    #[error("invalid length {len} for {what}")]
    InvalidLength { what: &'static str, len: usize },
    /// A field value the RFC forbids in this place.
    #[error("invalid value {value} for {what}")]
    InvalidValue { what: &'static str, value: u64 },
    /// More instances of something than the RFC allows, or than we accept (bounded input).
    #[error("too many {0}")]
    TooMany(&'static str),
    /// A mandatory element is missing.
    #[error("missing {0}")]
    Missing(&'static str),
    /// A payload we do not understand had its critical bit set (RFC 7296 2.5, 3.2).
    #[error("unsupported critical payload type {0}")]
    UnsupportedCriticalPayload(u8),
    /// The IKE header's major version is not 2 (RFC 7296 3.1).
    #[error("unsupported major version {0}")]
    InvalidMajorVersion(u8),
}

impl DecodeError {
    /// The error notify a responder returns for this failure (RFC 7296 3.10.1).
    pub fn notify(&self) -> NotifyType {
        match self {
            Self::UnsupportedCriticalPayload(_) => NotifyType::UnsupportedCriticalPayload,
            Self::InvalidMajorVersion(_) => NotifyType::InvalidMajorVersion,
            _ => NotifyType::InvalidSyntax,
        }
    }
}
