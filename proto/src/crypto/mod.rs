//! Crypto suites behind one provider seam (STYLE R4, Q4).
//!
//! The rest of the protocol core names no crypto library: it works with the types here.
//! Backends: `ring` for HMAC-SHA2, X25519/ECDH P-256, AES-GCM, ChaCha20-Poly1305, Ed25519,
//! ECDSA P-256 and RSA-PSS; `aws-lc-rs` for ML-KEM, ML-DSA and AES-CBC; `aes-kw` for the
//! RFC 5649 key wrap.
//!
//! Randomness always comes in as an argument ([`Random`]): [`SystemRandom`] in production,
//! [`SeededRandom`] in tests. Where a library insists on drawing its own randomness it does
//! so from the OS CSPRNG, and the function says so in its documentation: ephemeral ECDH
//! keys (ring's `EphemeralPrivateKey` takes only ring's sealed `SecureRandom`), ML-KEM key
//! generation and encapsulation (aws-lc-rs), ECDSA and RSA-PSS signing (ring), ML-DSA
//! signing (aws-lc-rs, hedged). Everything else the protocol draws (SPIs, nonces, IVs,
//! padding, key material) comes from the caller's [`Random`].

pub mod aead;
pub mod auth;
pub mod cbc;
pub mod integ;
pub mod ke;
pub mod keys;
pub mod keywrap;
pub mod prf;
mod random;
mod secret;
pub mod sign;
pub mod sk;
pub mod suite;

pub use aead::{AeadAlg, AeadKey};
pub use cbc::AesCbcKey;
pub use integ::{HmacKey, IntegAlg, MacTag};
pub use ke::KeMethod;
pub use keys::{DataSaKeys, IkeKeys, IntAuth, RekeySaKeys};
pub use keywrap::{KeyWrapAlg, KeyWrapKey};
pub use prf::{PrfAlg, PrfOutput};
pub use random::{Random, SeededRandom, SystemRandom, random_array};
pub use secret::SecretBytes;
pub use sign::{KeyType, PublicKey, SignatureScheme, SigningKey};
pub use sk::SkKey;
pub use suite::{EncrAlg, IkeSuite};

use crate::registry::NotifyType;

/// Why a cryptographic operation failed.
///
/// [`CryptoError::notify`] is the single place that decides what the peer is told (STYLE R5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// A key of the wrong size for the algorithm (a local or derivation error).
    #[error("invalid key length {len} for {what}")]
    InvalidKeyLength { what: &'static str, len: usize },
    /// Received data has a length impossible for the algorithm (KE value, ciphertext,
    /// AUTH data, wrapped key).
    #[error("invalid length {len} for {what}")]
    InvalidLength { what: &'static str, len: usize },
    /// A peer's public value is not acceptable (not on the curve, all-zero X25519 result,
    /// malformed ML-KEM key or ciphertext).
    #[error("invalid public value for {0}")]
    InvalidPublicValue(&'static str),
    /// An AEAD tag or ICV did not verify.
    #[error("integrity check failed")]
    IntegrityCheckFailed,
    /// Decrypted padding is inconsistent (RFC 7296 3.14: Pad Length beyond the plaintext).
    #[error("invalid padding in encrypted payload")]
    BadPadding,
    /// A signature or AUTH value did not verify.
    #[error("authentication failed: {0}")]
    AuthenticationFailed(&'static str),
    /// The algorithm is not implemented here (maps to NO_PROPOSAL_CHOSEN when negotiating).
    #[error("unsupported algorithm: {0}")]
    Unsupported(&'static str),
    /// A negotiated transform set is incomplete or inconsistent.
    #[error("no acceptable proposal: {0}")]
    NoProposalChosen(&'static str),
    /// Received structured data (AlgorithmIdentifier, SPKI, AUTH data) is malformed.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A locally configured key (PKCS#8, SPKI) was rejected by the backend.
    #[error("key rejected: {0}")]
    KeyRejected(&'static str),
    /// More output was requested than the construction defines (prf+ beyond 255 blocks)
    /// or than we allow.
    #[error("output too long for {0}")]
    OutputTooLong(&'static str),
    /// A backend failed for a reason it does not explain.
    #[error("internal crypto failure in {0}")]
    Internal(&'static str),
}

impl CryptoError {
    /// The error notify to send to the peer for this failure, or `None` when the RFCs say to
    /// stay silent (an ICV failure: RFC 7296 3.10.1 allows INVALID_SYNTAX only once the
    /// cryptographic checksum is valid, so a forged message gets no answer) or when the
    /// failure is local and the peer has nothing to learn from it.
    pub fn notify(&self) -> Option<NotifyType> {
        match self {
            Self::IntegrityCheckFailed => None,
            // RFC 7296 2.21.2: an authentication failure is reported as AUTHENTICATION_FAILED.
            Self::AuthenticationFailed(_) => Some(NotifyType::AuthenticationFailed),
            // RFC 7296 2.7: nothing acceptable in the proposals.
            Self::Unsupported(_) | Self::NoProposalChosen(_) => Some(NotifyType::NoProposalChosen),
            // Malformed received data (RFC 7296 3.10.1 INVALID_SYNTAX); RFC 8031 2.3 for the
            // all-zero X25519 value.
            Self::InvalidLength { .. }
            | Self::InvalidPublicValue(_)
            | Self::BadPadding
            | Self::Malformed(_) => Some(NotifyType::InvalidSyntax),
            Self::InvalidKeyLength { .. }
            | Self::KeyRejected(_)
            | Self::OutputTooLong(_)
            | Self::Internal(_) => None,
        }
    }
}

/// Constant-time equality of two byte strings of equal length (lengths are not secret).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_mapping() {
        assert_eq!(CryptoError::IntegrityCheckFailed.notify(), None);
        assert_eq!(
            CryptoError::AuthenticationFailed("x").notify(),
            Some(NotifyType::AuthenticationFailed)
        );
        assert_eq!(
            CryptoError::NoProposalChosen("x").notify(),
            Some(NotifyType::NoProposalChosen)
        );
        assert_eq!(
            CryptoError::InvalidPublicValue("x").notify(),
            Some(NotifyType::InvalidSyntax)
        );
    }

    #[test]
    fn ct_eq_works() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
