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
pub use keywrap::{DefaultKwk, KeyWrapAlg, KeyWrapKey};
pub use prf::{PrfAlg, PrfOutput};
pub use random::{Random, SeededRandom, SystemRandom, random_array};
pub use secret::SecretBytes;
pub use sign::{KeyType, PublicKey, SignatureScheme, SigningKey};
pub use sk::SkKey;
pub use suite::{EncrAlg, IkeSuite};

use crate::registry::{EncrId, KeId, NotifyType, TransformType};
use crate::wire::transform::Transform;

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

/// The algorithms this build offers and accepts, each list in preference order
/// (STYLE R4: a plain value, checked once with [`Provider::consistency_check`]).
/// Randomness is not part of it: it is passed to each operation ([`Random`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    /// Key exchange methods, for KE and ADDKE transforms.
    pub ke: Vec<KeMethod>,
    pub prf: Vec<PrfAlg>,
    /// SK payload encryption transforms (with their key lengths).
    pub sk_ciphers: Vec<EncrAlg>,
    /// Integrity transforms for the non-AEAD SK ciphers.
    pub integ: Vec<IntegAlg>,
    pub signatures: Vec<sign::SignatureScheme>,
    pub key_wraps: Vec<KeyWrapAlg>,
}

impl Default for Provider {
    /// Everything implemented here, AEAD and 256-bit keys first, classic KE first with
    /// ML-KEM for additional key exchanges (RFC 9370), RFC 8247 / RFC 8221 MUST-level
    /// algorithms included.
    fn default() -> Self {
        Self {
            ke: vec![
                KeMethod::Curve25519,
                KeMethod::Ecp256,
                KeMethod::MlKem768,
                KeMethod::MlKem1024,
                KeMethod::MlKem512,
            ],
            prf: vec![
                PrfAlg::HmacSha2_256,
                PrfAlg::HmacSha2_384,
                PrfAlg::HmacSha2_512,
            ],
            sk_ciphers: vec![
                EncrAlg::AesGcm16 { key_len: 32 },
                EncrAlg::ChaCha20Poly1305,
                EncrAlg::AesGcm16 { key_len: 16 },
                EncrAlg::AesCbc { key_len: 32 },
                EncrAlg::AesCbc { key_len: 16 },
            ],
            integ: vec![
                IntegAlg::HmacSha2_256_128,
                IntegAlg::HmacSha2_512_256,
                IntegAlg::HmacSha2_384_192,
            ],
            signatures: vec![
                sign::SignatureScheme::Ed25519,
                sign::SignatureScheme::EcdsaP256Sha256,
                sign::SignatureScheme::MlDsa65,
                sign::SignatureScheme::MlDsa44,
                sign::SignatureScheme::MlDsa87,
                sign::SignatureScheme::RsaPssSha256,
            ],
            key_wraps: vec![
                KeyWrapAlg::Kw5649_256,
                KeyWrapAlg::Kw5649_128,
                KeyWrapAlg::Kw5649_192,
            ],
        }
    }
}

fn has_duplicates<T: PartialEq>(v: &[T]) -> bool {
    v.iter()
        .enumerate()
        .any(|(i, a)| v.iter().skip(i + 1).any(|b| a == b))
}

impl Provider {
    /// Rejects a configuration that cannot work: an empty list, duplicates, an SK cipher
    /// the SK payload does not implement, a non-AEAD cipher without an integrity
    /// algorithm.
    pub fn consistency_check(&self) -> Result<(), CryptoError> {
        let bad = CryptoError::NoProposalChosen;
        if self.ke.is_empty()
            || self.prf.is_empty()
            || self.sk_ciphers.is_empty()
            || self.signatures.is_empty()
            || self.key_wraps.is_empty()
        {
            return Err(bad("provider: empty algorithm list"));
        }
        if has_duplicates(&self.ke)
            || has_duplicates(&self.prf)
            || has_duplicates(&self.sk_ciphers)
            || has_duplicates(&self.integ)
            || has_duplicates(&self.signatures)
            || has_duplicates(&self.key_wraps)
        {
            return Err(bad("provider: duplicate algorithm"));
        }
        if self.sk_ciphers.iter().any(|e| !e.sk_supported()) {
            return Err(CryptoError::Unsupported(
                "provider: SK cipher not implemented",
            ));
        }
        if self.sk_ciphers.iter().any(|e| !e.is_aead()) && self.integ.is_empty() {
            return Err(bad("provider: non-AEAD cipher without integrity algorithm"));
        }
        Ok(())
    }

    /// The transforms to offer for an IKE SA: one proposal of AEAD ciphers and one of
    /// the others with their integrity algorithms (RFC 5282 8 forbids INTEG transforms in
    /// an all-AEAD proposal), each with all PRFs, `ke` as KE methods (preferred first),
    /// `addke[i]` as the ADDKEi+1 options, and all key wraps (RFC 9838 4.5.4).
    pub fn ike_proposals(&self, ke: &[KeMethod], addke: &[&[KeMethod]]) -> Vec<Vec<Transform>> {
        let mut out = Vec::new();
        for aead in [true, false] {
            let ciphers: Vec<_> = self
                .sk_ciphers
                .iter()
                .filter(|e| e.is_aead() == aead)
                .collect();
            if ciphers.is_empty() {
                continue;
            }
            let mut t: Vec<Transform> = ciphers.iter().map(|e| e.transform()).collect();
            t.extend(self.prf.iter().map(|p| Transform::prf(p.id())));
            if !aead {
                t.extend(self.integ.iter().map(|i| Transform::integ(i.id())));
            }
            t.extend(ke.iter().map(|k| Transform::ke(k.id())));
            for (i, slot) in addke.iter().take(7).enumerate() {
                let ty = TransformType::from(TransformType::AddKe1.value().saturating_add(i as u8));
                t.extend(slot.iter().map(|k| Transform::new(ty, k.id().value())));
            }
            t.extend(self.key_wraps.iter().map(|w| Transform::kwa(w.id())));
            out.push(t);
        }
        out
    }

    /// Chooses, as the responder, one transform of each type from one offered proposal,
    /// following our preference order (RFC 7296 2.7). `prefer_ke` (the method of the
    /// initiator's KE payload) wins when it is offered and supported, so that no
    /// INVALID_KE_PAYLOAD round trip is needed. For each ADDKE slot a supported method is
    /// preferred to NONE. A KWA is chosen when any is offered. Errors map to
    /// NO_PROPOSAL_CHOSEN.
    pub fn choose_ike_suite(
        &self,
        offered: &[Transform],
        prefer_ke: Option<KeMethod>,
    ) -> Result<IkeSuite, CryptoError> {
        let of_type = |ty: TransformType| offered.iter().filter(move |t| t.ty == ty);
        let encr = self
            .sk_ciphers
            .iter()
            .copied()
            .find(|e| {
                of_type(TransformType::Encr).any(|t| {
                    EncrAlg::from_transform(EncrId::from(t.id), t.key_length()).ok() == Some(*e)
                })
            })
            .ok_or(CryptoError::NoProposalChosen("no acceptable ENCR"))?;
        let prf = self
            .prf
            .iter()
            .copied()
            .find(|p| of_type(TransformType::Prf).any(|t| t.id == p.id().value()))
            .ok_or(CryptoError::NoProposalChosen("no acceptable PRF"))?;
        let integ = if encr.is_aead() {
            None
        } else {
            Some(
                self.integ
                    .iter()
                    .copied()
                    .find(|i| of_type(TransformType::Integ).any(|t| t.id == i.id().value()))
                    .ok_or(CryptoError::NoProposalChosen("no acceptable INTEG"))?,
            )
        };
        let ke_offered = |k: &KeMethod, ty| of_type(ty).any(|t| t.id == k.id().value());
        let ke = prefer_ke
            .filter(|k| self.ke.contains(k) && ke_offered(k, TransformType::Ke))
            .or_else(|| {
                self.ke
                    .iter()
                    .copied()
                    .find(|k| ke_offered(k, TransformType::Ke))
            })
            .ok_or(CryptoError::NoProposalChosen("no acceptable KE"))?;
        let mut addke = Vec::new();
        for i in 0..7u8 {
            let ty = TransformType::from(TransformType::AddKe1.value() + i);
            if of_type(ty).next().is_none() {
                continue;
            }
            match self.ke.iter().copied().find(|k| ke_offered(k, ty)) {
                Some(k) => addke.push(k),
                None if of_type(ty).any(|t| t.id == KeId::None.value()) => {}
                None => return Err(CryptoError::NoProposalChosen("no acceptable ADDKE")),
            }
        }
        let kwa = if of_type(TransformType::Kwa).next().is_none() {
            None
        } else {
            Some(
                self.key_wraps
                    .iter()
                    .copied()
                    .find(|w| of_type(TransformType::Kwa).any(|t| t.id == w.id().value()))
                    .ok_or(CryptoError::NoProposalChosen("no acceptable KWA"))?,
            )
        };
        Ok(IkeSuite {
            encr,
            prf,
            integ,
            ke,
            addke,
            kwa,
        })
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
    fn default_provider_is_consistent() {
        let p = Provider::default();
        p.consistency_check().unwrap();
        let mut q = p.clone();
        q.integ.clear();
        assert!(q.consistency_check().is_err());
        let mut q = p.clone();
        q.prf.push(PrfAlg::HmacSha2_256);
        assert!(q.consistency_check().is_err());
        let mut q = p.clone();
        q.sk_ciphers.push(EncrAlg::AesGcm16 { key_len: 24 });
        assert!(q.consistency_check().is_err());
        let mut q = p.clone();
        q.key_wraps.clear();
        assert!(q.consistency_check().is_err());
    }

    #[test]
    fn proposals_and_choice_agree() {
        let p = Provider::default();
        let props = p.ike_proposals(
            &[KeMethod::Ecp256, KeMethod::Curve25519],
            &[&[KeMethod::MlKem768]],
        );
        assert_eq!(props.len(), 2);
        assert!(props[0].iter().all(|t| t.ty != TransformType::Integ));
        // Each proposal reads back as a full suite once the responder chooses.
        let s = p
            .choose_ike_suite(&props[0], Some(KeMethod::Ecp256))
            .unwrap();
        assert_eq!(s.encr, EncrAlg::AesGcm16 { key_len: 32 });
        assert_eq!(s.ke, KeMethod::Ecp256, "KEi's method preferred");
        assert_eq!(s.addke, vec![KeMethod::MlKem768]);
        assert_eq!(s.kwa, Some(KeyWrapAlg::Kw5649_256));
        assert_eq!(IkeSuite::from_transforms(&s.transforms()).unwrap(), s);
        let s = p.choose_ike_suite(&props[1], None).unwrap();
        assert_eq!(s.encr, EncrAlg::AesCbc { key_len: 32 });
        assert_eq!(s.integ, Some(IntegAlg::HmacSha2_256_128));
        assert_eq!(s.ke, KeMethod::Curve25519, "our preference without KEi");
        assert_eq!(IkeSuite::from_transforms(&s.transforms()).unwrap(), s);

        // Nothing acceptable.
        let offer = vec![
            Transform::encr(EncrId::TripleDes, None),
            Transform::prf(crate::registry::PrfId::HmacSha2_256),
            Transform::ke(KeId::Curve25519),
        ];
        assert_eq!(
            p.choose_ike_suite(&offer, None).unwrap_err().notify(),
            Some(NotifyType::NoProposalChosen)
        );
        // ADDKE slot with only NONE and an unknown method: skipped.
        let mut offer = props[0].clone();
        offer.retain(|t| t.ty != TransformType::AddKe1);
        offer.push(Transform::new(TransformType::AddKe2, KeId::None.value()));
        offer.push(Transform::new(TransformType::AddKe2, 0x7777));
        assert!(p.choose_ike_suite(&offer, None).unwrap().addke.is_empty());
    }

    #[test]
    fn ct_eq_works() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
