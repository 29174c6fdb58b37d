//! Negotiated suites: the encryption transform with its keying-material size, the IKE SA
//! suite built from a chosen proposal, and the SA-key sizes of G-IKEv2 group SAs
//! (RFC 9838 3.4, 4.5.2.1).

use super::CryptoError;
use super::integ::IntegAlg;
use super::ke::KeMethod;
use super::keywrap::KeyWrapAlg;
use super::prf::PrfAlg;
use crate::registry::{EncrId, IntegId, KeId, KwaId, PrfId, TransformAttrType, TransformType};
use crate::wire::transform::Transform;

/// Salt (implicit nonce part) length of the counter-based and AEAD modes: RFC 4106 8.1
/// (AES-GCM), RFC 4543 (AES-GMAC), RFC 3686 5.1 (AES-CTR nonce), RFC 7634 2 and 3
/// (ChaCha20-Poly1305), RFC 5282 7.1 (AES-GCM in IKEv2).
pub const SALT_LEN: usize = 4;

/// An encryption transform (Transform Type 1) with its key length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncrAlg {
    /// ENCR_AES_CBC (12), key of 16, 24 or 32 octets.
    AesCbc { key_len: usize },
    /// ENCR_AES_CTR (13, RFC 3686; ESP only here).
    AesCtr { key_len: usize },
    /// ENCR_AES_GCM_16 (20, RFC 4106, RFC 5282).
    AesGcm16 { key_len: usize },
    /// ENCR_AES_GCM_16_IIV (30, RFC 8750; ESP only).
    AesGcm16Iiv { key_len: usize },
    /// ENCR_NULL_AUTH_AES_GMAC (21, RFC 4543; ESP only).
    NullAuthAesGmac { key_len: usize },
    /// ENCR_CHACHA20_POLY1305 (28, RFC 7634).
    ChaCha20Poly1305,
    /// ENCR_CHACHA20_POLY1305_IIV (31, RFC 8750; ESP only).
    ChaCha20Poly1305Iiv,
}

impl EncrAlg {
    /// The algorithm for a transform ID and its Key Length attribute (in bits).
    ///
    /// AES modes need the Key Length attribute, 128, 192 or 256 (RFC 7296 3.3.5,
    /// RFC 5282 7.3, RFC 4543 5.3, RFC 3686). ChaCha20-Poly1305 has a fixed 256-bit key: the
    /// attribute must not be sent (RFC 7296 3.3.5); we tolerate a redundant 256.
    pub fn from_transform(id: EncrId, key_bits: Option<u16>) -> Result<Self, CryptoError> {
        let aes_len = || match key_bits {
            Some(128) => Ok(16),
            Some(192) => Ok(24),
            Some(256) => Ok(32),
            Some(_) => Err(CryptoError::NoProposalChosen(
                "AES Key Length not 128/192/256",
            )),
            None => Err(CryptoError::NoProposalChosen(
                "AES transform without Key Length",
            )),
        };
        let fixed = |alg: Self| match key_bits {
            None | Some(256) => Ok(alg),
            Some(_) => Err(CryptoError::NoProposalChosen(
                "Key Length on a fixed-key transform",
            )),
        };
        match id {
            EncrId::AesCbc => Ok(Self::AesCbc {
                key_len: aes_len()?,
            }),
            EncrId::AesCtr => Ok(Self::AesCtr {
                key_len: aes_len()?,
            }),
            EncrId::AesGcm16 => Ok(Self::AesGcm16 {
                key_len: aes_len()?,
            }),
            EncrId::AesGcm16Iiv => Ok(Self::AesGcm16Iiv {
                key_len: aes_len()?,
            }),
            EncrId::NullAuthAesGmac => Ok(Self::NullAuthAesGmac {
                key_len: aes_len()?,
            }),
            EncrId::ChaCha20Poly1305 => fixed(Self::ChaCha20Poly1305),
            EncrId::ChaCha20Poly1305Iiv => fixed(Self::ChaCha20Poly1305Iiv),
            _ => Err(CryptoError::Unsupported("encryption transform")),
        }
    }

    pub fn id(self) -> EncrId {
        match self {
            Self::AesCbc { .. } => EncrId::AesCbc,
            Self::AesCtr { .. } => EncrId::AesCtr,
            Self::AesGcm16 { .. } => EncrId::AesGcm16,
            Self::AesGcm16Iiv { .. } => EncrId::AesGcm16Iiv,
            Self::NullAuthAesGmac { .. } => EncrId::NullAuthAesGmac,
            Self::ChaCha20Poly1305 => EncrId::ChaCha20Poly1305,
            Self::ChaCha20Poly1305Iiv => EncrId::ChaCha20Poly1305Iiv,
        }
    }

    /// The Key Length attribute to send, in bits (none for ChaCha20-Poly1305).
    pub fn key_bits(self) -> Option<u16> {
        match self {
            Self::ChaCha20Poly1305 | Self::ChaCha20Poly1305Iiv => None,
            // key_len is 16, 24 or 32 by construction.
            _ => u16::try_from(self.key_len() * 8).ok(),
        }
    }

    /// The transform substructure for a proposal.
    pub fn transform(self) -> Transform {
        Transform::encr(self.id(), self.key_bits())
    }

    /// The cipher key length in octets (without salt).
    pub const fn key_len(self) -> usize {
        match self {
            Self::AesCbc { key_len }
            | Self::AesCtr { key_len }
            | Self::AesGcm16 { key_len }
            | Self::AesGcm16Iiv { key_len }
            | Self::NullAuthAesGmac { key_len } => key_len,
            Self::ChaCha20Poly1305 | Self::ChaCha20Poly1305Iiv => 32,
        }
    }

    /// Octets of salt (nonce) that follow the key in the keying material.
    pub const fn salt_len(self) -> usize {
        match self {
            Self::AesCbc { .. } => 0,
            _ => SALT_LEN,
        }
    }

    /// Keying material taken for this transform: key followed by salt (RFC 5282 7.1,
    /// RFC 4106 8.1, RFC 7634 2/3, RFC 4543, RFC 3686 5.1).
    pub const fn keymat_len(self) -> usize {
        self.key_len() + self.salt_len()
    }

    /// Combined-mode (AEAD) transforms forbid a separate integrity transform (RFC 5282 8).
    /// AES-GMAC counts: it authenticates and takes no INTEG transform (RFC 4543).
    pub const fn is_aead(self) -> bool {
        !matches!(self, Self::AesCbc { .. } | Self::AesCtr { .. })
    }

    /// True when the SK payload cipher of this crate implements the transform in IKEv2:
    /// AES-CBC (all key sizes), AES-GCM-16 with 128/256-bit keys (the backend has no
    /// AES-192-GCM) and ChaCha20-Poly1305. Implicit-IV transforms are ESP only
    /// (RFC 8750 7: they cannot be used in IKEv2); AES-CTR and AES-GMAC are not defined
    /// for the SK payload.
    pub const fn sk_supported(self) -> bool {
        match self {
            Self::AesCbc { .. } | Self::ChaCha20Poly1305 => true,
            Self::AesGcm16 { key_len } => key_len != 24,
            _ => false,
        }
    }
}

/// The suite of an IKE SA, read from the chosen proposal (RFC 7296 3.3) plus RFC 9370
/// additional key exchanges and the G-IKEv2 key wrap algorithm (RFC 9838 4.5.4: the KWA
/// "MUST be negotiated in the IKE_SA_INIT exchange").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IkeSuite {
    pub encr: EncrAlg,
    pub prf: PrfAlg,
    /// `None` with AEAD transforms (RFC 5282 8).
    pub integ: Option<IntegAlg>,
    pub ke: KeMethod,
    /// ADDKE1..ADDKE7 in order, the NONE slots left out (RFC 9370 2.2.1).
    pub addke: Vec<KeMethod>,
    pub kwa: Option<KeyWrapAlg>,
}

impl IkeSuite {
    /// Reads the transforms of a chosen (single) proposal. Errors map to
    /// NO_PROPOSAL_CHOSEN: a missing, duplicated or unknown transform, an attribute we do
    /// not understand (RFC 7296 3.3.6), an integrity transform with AEAD (RFC 5282 8) or
    /// none without it, a suite we cannot run.
    pub fn from_transforms(transforms: &[Transform]) -> Result<Self, CryptoError> {
        let mut encr = None;
        let mut prf = None;
        let mut integ: Option<Option<IntegAlg>> = None;
        let mut ke = None;
        let mut addke: [Option<Option<KeMethod>>; 7] = [None; 7];
        let mut kwa = None;
        let dup = CryptoError::NoProposalChosen("duplicate transform type in chosen proposal");
        for t in transforms {
            let key_len_only = t.ty == TransformType::Encr
                && t.attributes
                    .iter()
                    .all(|a| a.ty == TransformAttrType::KeyLength.value());
            if !t.attributes.is_empty() && !key_len_only {
                return Err(CryptoError::NoProposalChosen(
                    "unexpected transform attribute",
                ));
            }
            match t.ty {
                TransformType::Encr => {
                    let e = EncrAlg::from_transform(EncrId::from(t.id), t.key_length())?;
                    if !e.sk_supported() {
                        return Err(CryptoError::Unsupported("encryption transform for IKE"));
                    }
                    if encr.replace(e).is_some() {
                        return Err(dup);
                    }
                }
                TransformType::Prf => {
                    let p = PrfAlg::from_id(PrfId::from(t.id))
                        .ok_or(CryptoError::Unsupported("PRF"))?;
                    if prf.replace(p).is_some() {
                        return Err(dup);
                    }
                }
                TransformType::Integ => {
                    let id = IntegId::from(t.id);
                    let i = if id == IntegId::None {
                        None
                    } else {
                        Some(IntegAlg::from_id(id).ok_or(CryptoError::Unsupported("INTEG"))?)
                    };
                    if integ.replace(i).is_some() {
                        return Err(dup);
                    }
                }
                TransformType::Ke => {
                    let k = KeMethod::from_id(KeId::from(t.id))
                        .ok_or(CryptoError::Unsupported("key exchange method"))?;
                    if ke.replace(k).is_some() {
                        return Err(dup);
                    }
                }
                TransformType::Kwa => {
                    let w = KeyWrapAlg::from_id(KwaId::from(t.id))
                        .ok_or(CryptoError::Unsupported("key wrap algorithm"))?;
                    if kwa.replace(w).is_some() {
                        return Err(dup);
                    }
                }
                ty => {
                    let slot = ty
                        .value()
                        .checked_sub(TransformType::AddKe1.value())
                        .map(usize::from)
                        .and_then(|i| addke.get_mut(i))
                        .ok_or(CryptoError::NoProposalChosen(
                            "transform type not valid for an IKE SA",
                        ))?;
                    let id = KeId::from(t.id);
                    let k = if id == KeId::None {
                        None
                    } else {
                        Some(
                            KeMethod::from_id(id)
                                .ok_or(CryptoError::Unsupported("additional key exchange"))?,
                        )
                    };
                    if slot.replace(k).is_some() {
                        return Err(dup);
                    }
                }
            }
        }
        let encr = encr.ok_or(CryptoError::NoProposalChosen("no ENCR transform"))?;
        let prf = prf.ok_or(CryptoError::NoProposalChosen("no PRF transform"))?;
        let ke = ke.ok_or(CryptoError::NoProposalChosen("no KE transform"))?;
        let integ = integ.flatten();
        // RFC 5282 8: no integrity algorithm with AEAD; RFC 7296 3.3.3: one is required
        // otherwise.
        match (encr.is_aead(), integ) {
            (true, Some(_)) => {
                return Err(CryptoError::NoProposalChosen("INTEG transform with AEAD"));
            }
            (false, None) => {
                return Err(CryptoError::NoProposalChosen("no INTEG transform"));
            }
            _ => {}
        }
        Ok(Self {
            encr,
            prf,
            integ,
            ke,
            addke: addke.into_iter().flatten().flatten().collect(),
            kwa,
        })
    }

    /// The transforms of this suite, for a proposal (ADDKE slots numbered in order).
    pub fn transforms(&self) -> Vec<Transform> {
        let mut v = vec![self.encr.transform(), Transform::prf(self.prf.id())];
        if let Some(i) = self.integ {
            v.push(Transform::integ(i.id()));
        }
        v.push(Transform::ke(self.ke.id()));
        for (i, k) in self.addke.iter().enumerate() {
            // At most 7 entries when built by from_transforms.
            let ty = TransformType::from(TransformType::AddKe1.value().saturating_add(i as u8));
            v.push(Transform::new(ty, k.id().value()));
        }
        if let Some(w) = self.kwa {
            v.push(Transform::kwa(w.id()));
        }
        v
    }

    /// Length of SK_ei and SK_er: key plus salt (RFC 5282 7.1, RFC 7634 3).
    pub fn sk_e_len(&self) -> usize {
        self.encr.keymat_len()
    }

    /// Length of SK_ai and SK_ar: zero with AEAD (RFC 5282 7.1).
    pub fn sk_a_len(&self) -> usize {
        self.integ.map_or(0, IntegAlg::key_len)
    }

    /// Length of SK_d, SK_pi and SK_pr: the PRF's preferred key length (RFC 7296 2.13).
    pub fn sk_p_len(&self) -> usize {
        self.prf.preferred_key_len()
    }

    /// Total prf+ output for the seven IKE SA keys (RFC 7296 2.14).
    pub fn ike_keymat_len(&self) -> usize {
        3 * self.sk_p_len() + 2 * self.sk_a_len() + 2 * self.sk_e_len()
    }
}

/// Size of the keying material of a Data-Security SA: encryption key (with salt, if the
/// transform has one) then integrity key (RFC 9838 3.4; RFC 7296 2.17).
pub fn data_sa_keymat_len(encr: Option<EncrAlg>, integ: Option<IntegAlg>) -> usize {
    encr.map_or(0, EncrAlg::keymat_len) + integ.map_or(0, IntegAlg::key_len)
}

/// Size of the keying material of a Rekey SA: GSK_e | GSK_a | GSK_w (RFC 9838 3.4), GSK_a
/// empty with AEAD.
pub fn rekey_sa_keymat_len(encr: EncrAlg, integ: Option<IntegAlg>, kwa: KeyWrapAlg) -> usize {
    encr.keymat_len() + integ.map_or(0, IntegAlg::key_len) + kwa.key_len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::KwaId;

    fn gcm_suite() -> Vec<Transform> {
        vec![
            Transform::encr(EncrId::AesGcm16, Some(256)),
            Transform::prf(PrfId::HmacSha2_256),
            Transform::ke(KeId::Curve25519),
            Transform::new(TransformType::AddKe1, KeId::MlKem768.value()),
            Transform::new(TransformType::AddKe2, KeId::None.value()),
            Transform::kwa(KwaId::Kw5649_256),
        ]
    }

    #[test]
    fn reads_gcm_suite_with_addke_and_kwa() {
        let s = IkeSuite::from_transforms(&gcm_suite()).unwrap();
        assert_eq!(s.encr, EncrAlg::AesGcm16 { key_len: 32 });
        assert_eq!(s.integ, None);
        assert_eq!(s.ke, KeMethod::Curve25519);
        assert_eq!(s.addke, vec![KeMethod::MlKem768]);
        assert_eq!(s.kwa, Some(KeyWrapAlg::Kw5649_256));
        assert_eq!(s.sk_e_len(), 36);
        assert_eq!(s.sk_a_len(), 0);
        assert_eq!(s.ike_keymat_len(), 3 * 32 + 2 * 36);
        // Round trip through transforms().
        assert_eq!(IkeSuite::from_transforms(&s.transforms()).unwrap(), s);
    }

    #[test]
    fn cbc_needs_integ_and_aead_refuses_it() {
        let mut t = vec![
            Transform::encr(EncrId::AesCbc, Some(128)),
            Transform::prf(PrfId::HmacSha2_512),
            Transform::ke(KeId::Ecp256),
        ];
        assert_eq!(
            IkeSuite::from_transforms(&t),
            Err(CryptoError::NoProposalChosen("no INTEG transform"))
        );
        t.push(Transform::integ(IntegId::HmacSha2_256_128));
        let s = IkeSuite::from_transforms(&t).unwrap();
        assert_eq!(s.sk_a_len(), 32);
        assert_eq!(s.sk_e_len(), 16);
        assert_eq!(s.ike_keymat_len(), 3 * 64 + 2 * 32 + 2 * 16);

        let mut g = gcm_suite();
        g.push(Transform::integ(IntegId::None));
        assert!(
            IkeSuite::from_transforms(&g).is_ok(),
            "INTEG NONE is allowed"
        );
        g.push(Transform::integ(IntegId::HmacSha2_256_128));
        assert!(IkeSuite::from_transforms(&g).is_err());
        let mut g = gcm_suite();
        g.push(Transform::integ(IntegId::HmacSha2_256_128));
        assert_eq!(
            IkeSuite::from_transforms(&g),
            Err(CryptoError::NoProposalChosen("INTEG transform with AEAD"))
        );
    }

    #[test]
    fn rejects_bad_proposals() {
        let err = |t: &[Transform]| IkeSuite::from_transforms(t).unwrap_err().notify();
        let nopc = Some(crate::registry::NotifyType::NoProposalChosen);
        let mut t = gcm_suite();
        t.push(Transform::prf(PrfId::HmacSha2_384));
        assert_eq!(err(&t), nopc, "duplicate PRF");
        let mut t = gcm_suite();
        t.remove(2);
        assert_eq!(err(&t), nopc, "missing KE");
        let mut t = gcm_suite();
        t[0] = Transform::encr(EncrId::AesGcm16, None);
        assert_eq!(err(&t), nopc, "GCM without key length");
        t[0] = Transform::encr(EncrId::AesGcm16, Some(192));
        assert_eq!(err(&t), nopc, "GCM-192 not supported");
        t[0] = Transform::encr(EncrId::AesGcm16Iiv, Some(128));
        assert_eq!(err(&t), nopc, "implicit IV is ESP only");
        t[0] = Transform::encr(EncrId::TripleDes, None);
        assert_eq!(err(&t), nopc);
        let mut t = gcm_suite();
        t.push(Transform::sn(crate::registry::SnId::Seq32));
        assert_eq!(err(&t), nopc, "SN in an IKE proposal");
        let mut t = gcm_suite();
        t[1].attributes.push(crate::wire::attribute::Attribute::tv(
            TransformAttrType::KeyLength,
            1,
        ));
        assert_eq!(err(&t), nopc, "attribute on PRF");
        let mut t = gcm_suite();
        t[2] = Transform::ke(KeId::Modp2048);
        assert_eq!(err(&t), nopc);
    }

    #[test]
    fn encr_sizes() {
        let cc = EncrAlg::from_transform(EncrId::ChaCha20Poly1305, None).unwrap();
        assert_eq!(cc.keymat_len(), 36); // RFC 7634 3
        assert_eq!(cc.key_bits(), None);
        assert!(EncrAlg::from_transform(EncrId::ChaCha20Poly1305, Some(128)).is_err());
        let gcm = EncrAlg::from_transform(EncrId::AesGcm16, Some(128)).unwrap();
        assert_eq!(gcm.keymat_len(), 20); // RFC 5282 7.1 example
        let cbc = EncrAlg::from_transform(EncrId::AesCbc, Some(192)).unwrap();
        assert_eq!(cbc.keymat_len(), 24);
        assert_eq!(
            data_sa_keymat_len(Some(cbc), Some(IntegAlg::HmacSha2_256_128)),
            24 + 32
        );
        assert_eq!(
            rekey_sa_keymat_len(gcm, None, KeyWrapAlg::Kw5649_128),
            20 + 16
        );
    }
}
