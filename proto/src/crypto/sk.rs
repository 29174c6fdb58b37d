//! The Encrypted (SK) and Encrypted Fragment (SKF) payload cipher (RFC 7296 3.14,
//! RFC 7383 2.5): AES-CBC with an HMAC-SHA2 ICV, AES-GCM-16 (RFC 5282) and
//! ChaCha20-Poly1305 (RFC 7634).
//!
//! The API works on the *body* of the payload, `IV | ciphertext | ICV`, where the
//! ciphertext covers `inner payloads | padding | Pad Length`, and on the associated data
//! `aad`: the message from the first octet of the IKE header up to the IV, i.e. through
//! the SK generic header, or through Total Fragments for SKF (RFC 5282 5.1; RFC 7383
//! 2.5). This is what [`crate::wire::message::EncryptedLayout::split_mut`] returns. The
//! length fields in `aad` must already hold their final values:
//! 1. compute [`SkKey::sealed_len`] for the plaintext length;
//! 2. encode the message with a body of that many octets (the IKE header Length and the
//!    SK Payload Length then count it);
//! 3. [`SkKey::seal_body`] with the `aad` and the body.
//!
//! [`SkKey::seal_append`] does steps 2 and 3 for a caller that has the unencrypted prefix
//! as bytes. For CBC the ICV covers `aad | IV | ciphertext` (RFC 7296 3.14: the message
//! from the IKE header through the Pad Length, encrypted); for AEAD the IV and ciphertext
//! are authenticated by the algorithm and `aad` is the associated data (RFC 5282 5.2).

use super::aead::{AeadAlg, AeadKey};
use super::cbc::{AES_BLOCK_LEN, AesCbcKey};
use super::integ::{HmacKey, IntegAlg};
use super::keys::IkeKeys;
use super::suite::{EncrAlg, IkeSuite, SALT_LEN};
use super::{CryptoError, Random};

/// Explicit IV length of AES-GCM and ChaCha20-Poly1305 in IKEv2 (RFC 5282 3.1; RFC 7634 3).
pub const AEAD_IV_LEN: usize = 8;

/// Offset of the IKE header's Length field (RFC 7296 3.1) and its size.
const IKE_LENGTH_AT: usize = 24;
const IKE_HEADER_LEN: usize = 28;
const GENERIC_HEADER_LEN: usize = 4;

// One long-lived value per SA direction: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Cipher {
    Aead { key: AeadKey, salt: [u8; SALT_LEN] },
    Cbc(Box<CbcKeys>),
}

struct CbcKeys {
    key: AesCbcKey,
    integ: HmacKey,
}

/// The SK payload keys of one direction (SK_ei/SK_ai or SK_er/SK_ar; for a Rekey SA,
/// GSK_e/GSK_a). `Debug` prints the algorithms only.
pub struct SkKey {
    encr: EncrAlg,
    cipher: Cipher,
}

impl SkKey {
    /// Keys for `encr` (+ `integ` for AES-CBC). `sk_e` is the encryption key with its salt
    /// for AEAD (RFC 5282 7.1, RFC 7634 3), `sk_a` the integrity key (empty for AEAD).
    pub fn new(
        encr: EncrAlg,
        integ: Option<IntegAlg>,
        sk_e: &[u8],
        sk_a: &[u8],
    ) -> Result<Self, CryptoError> {
        if sk_e.len() != encr.keymat_len() {
            return Err(CryptoError::InvalidKeyLength {
                what: "SK_e",
                len: sk_e.len(),
            });
        }
        let cipher = match (encr, integ) {
            (EncrAlg::AesCbc { .. }, Some(i)) => Cipher::Cbc(Box::new(CbcKeys {
                key: AesCbcKey::new(sk_e)?,
                integ: HmacKey::new(i, sk_a)?,
            })),
            (EncrAlg::AesCbc { .. }, None) => {
                return Err(CryptoError::NoProposalChosen("AES-CBC without integrity"));
            }
            (_, Some(_)) => {
                return Err(CryptoError::NoProposalChosen("INTEG transform with AEAD"));
            }
            (EncrAlg::AesGcm16 { .. } | EncrAlg::ChaCha20Poly1305, None) if sk_a.is_empty() => {
                let alg = match encr {
                    EncrAlg::AesGcm16 { key_len } => {
                        AeadAlg::aes_gcm(key_len).ok_or(CryptoError::Unsupported("AES-192-GCM"))?
                    }
                    _ => AeadAlg::ChaCha20Poly1305,
                };
                let (k, s) = sk_e.split_at(alg.key_len());
                let mut salt = [0u8; SALT_LEN];
                salt.copy_from_slice(s);
                Cipher::Aead {
                    key: AeadKey::new(alg, k)?,
                    salt,
                }
            }
            (EncrAlg::AesGcm16 { .. } | EncrAlg::ChaCha20Poly1305, None) => {
                return Err(CryptoError::InvalidKeyLength {
                    what: "SK_a with AEAD",
                    len: sk_a.len(),
                });
            }
            _ => return Err(CryptoError::Unsupported("encryption transform for SK")),
        };
        Ok(Self { encr, cipher })
    }

    /// The keys protecting messages sent by the original initiator (`from_initiator`) or
    /// by the responder (RFC 7296 2.14).
    pub fn from_ike_keys(
        suite: &IkeSuite,
        keys: &IkeKeys,
        from_initiator: bool,
    ) -> Result<Self, CryptoError> {
        Self::new(
            suite.encr,
            suite.integ,
            keys.sk_e(from_initiator).as_bytes(),
            keys.sk_a(from_initiator).as_bytes(),
        )
    }

    pub fn encr(&self) -> EncrAlg {
        self.encr
    }

    pub fn integ(&self) -> Option<IntegAlg> {
        match &self.cipher {
            Cipher::Cbc(c) => Some(c.integ.alg()),
            Cipher::Aead { .. } => None,
        }
    }

    /// IV length: the block size for CBC (RFC 7296 3.14), 8 for AEAD.
    pub fn iv_len(&self) -> usize {
        match self.cipher {
            Cipher::Aead { .. } => AEAD_IV_LEN,
            Cipher::Cbc(_) => AES_BLOCK_LEN,
        }
    }

    /// ICV length: the AEAD tag or the truncated HMAC.
    pub fn icv_len(&self) -> usize {
        match &self.cipher {
            Cipher::Aead { .. } => AeadAlg::TAG_LEN,
            Cipher::Cbc(c) => c.integ.icv_len(),
        }
    }

    /// Padding granularity: the block size for CBC, 1 for AEAD.
    fn block_len(&self) -> usize {
        match self.cipher {
            Cipher::Aead { .. } => 1,
            Cipher::Cbc(_) => AES_BLOCK_LEN,
        }
    }

    /// Octets of Padding we send for `plaintext_len` octets of inner payloads: the minimum
    /// that aligns payloads | Padding | Pad Length to the block (RFC 7296 3.14); none with
    /// AEAD (RFC 7634 3, RFC 5282 3).
    fn pad_len(&self, plaintext_len: usize) -> usize {
        let b = self.block_len();
        (b - (plaintext_len + 1) % b) % b
    }

    /// Body length for `plaintext_len` octets of inner payloads:
    /// IV + payloads + Padding + Pad Length + ICV.
    pub fn sealed_len(&self, plaintext_len: usize) -> usize {
        self.iv_len() + plaintext_len + self.pad_len(plaintext_len) + 1 + self.icv_len()
    }

    /// What encryption adds to `plaintext_len` (for fragment sizing, RFC 7383 2.5.1).
    pub fn overhead(&self, plaintext_len: usize) -> usize {
        self.sealed_len(plaintext_len) - plaintext_len
    }

    /// The largest plaintext whose body fits in `body_budget` octets (0 if none does).
    pub fn max_plaintext_len(&self, body_budget: usize) -> usize {
        let fixed = self.iv_len() + 1 + self.icv_len();
        let Some(room) = body_budget.checked_sub(fixed) else {
            return 0;
        };
        // room holds payloads + padding; with CBC, payloads + padding + 1 must be a block
        // multiple.
        let b = self.block_len();
        let aligned = (room + 1) / b * b;
        aligned.saturating_sub(1)
    }

    /// Encrypts `plaintext` into `body` (exactly [`Self::sealed_len`] octets) with a fresh
    /// IV from `rng`: random for CBC as RFC 7296 3.14 requires (unpredictable), random
    /// 64-bit for AEAD (RFC 5282 3.1 requires uniqueness per key; 2^32 messages per key
    /// keep collisions negligible).
    pub fn seal_body(
        &self,
        rng: &mut dyn Random,
        aad: &[u8],
        plaintext: &[u8],
        body: &mut [u8],
    ) -> Result<(), CryptoError> {
        let mut iv = [0u8; AES_BLOCK_LEN];
        let iv = &mut iv[..self.iv_len()];
        rng.fill(iv);
        self.seal_body_with_iv(iv, aad, plaintext, body)
    }

    /// As [`Self::seal_body`] with a caller-chosen IV, which must never repeat under this
    /// key (and be unpredictable for CBC). For known-answer tests and counter IVs.
    pub fn seal_body_with_iv(
        &self,
        iv: &[u8],
        aad: &[u8],
        plaintext: &[u8],
        body: &mut [u8],
    ) -> Result<(), CryptoError> {
        if body.len() != self.sealed_len(plaintext.len()) {
            return Err(CryptoError::InvalidLength {
                what: "SK body buffer",
                len: body.len(),
            });
        }
        if iv.len() != self.iv_len() {
            return Err(CryptoError::InvalidLength {
                what: "SK IV",
                len: iv.len(),
            });
        }
        let pad = self.pad_len(plaintext.len());
        let (iv_out, rest) = body.split_at_mut(self.iv_len());
        let (ct, icv) = rest.split_at_mut(rest.len() - self.icv_len());
        iv_out.copy_from_slice(iv);
        let (pt, tail) = ct.split_at_mut(plaintext.len());
        pt.copy_from_slice(plaintext);
        let (padding, pad_len) = tail.split_at_mut(pad);
        padding.fill(0);
        // pad < 16 by construction.
        pad_len.fill(u8::try_from(pad).map_err(|_| CryptoError::Internal("SK padding"))?);
        match &self.cipher {
            Cipher::Aead { key, salt } => {
                let nonce = aead_nonce(salt, iv_out)?;
                let tag = key.seal_in_place(&nonce, aad, ct)?;
                icv.copy_from_slice(&tag);
            }
            Cipher::Cbc(c) => {
                let iv_arr: &[u8; AES_BLOCK_LEN] = (&*iv_out)
                    .try_into()
                    .map_err(|_| CryptoError::Internal("CBC IV"))?;
                c.key.encrypt_in_place(iv_arr, ct)?;
                let tag = c.integ.sign_parts(&[aad, iv_out, ct]);
                icv.copy_from_slice(tag.as_bytes());
            }
        }
        Ok(())
    }

    /// Verifies and decrypts `body` (IV | ciphertext | ICV) in place and returns the inner
    /// payloads (Padding and Pad Length removed).
    ///
    /// Anything wrong before the ICV is verified (a body too short, a CBC ciphertext not a
    /// block multiple, a bad tag) is [`CryptoError::IntegrityCheckFailed`]: the message is
    /// dropped without a reply. A Pad Length beyond the decrypted data is
    /// [`CryptoError::BadPadding`] (authenticated, so INVALID_SYNTAX may be sent). Padding
    /// content is not checked: it may hold any value (RFC 7296 3.14).
    pub fn open_body<'a>(&self, aad: &[u8], body: &'a mut [u8]) -> Result<&'a [u8], CryptoError> {
        let min = self.iv_len() + self.block_len().max(1) + self.icv_len();
        if body.len() < min {
            return Err(CryptoError::IntegrityCheckFailed);
        }
        let (iv, rest) = body.split_at_mut(self.iv_len());
        let plain: &'a mut [u8] = match &self.cipher {
            Cipher::Aead { key, salt } => {
                let nonce = aead_nonce(salt, iv)?;
                key.open_in_place(&nonce, aad, rest)?
            }
            Cipher::Cbc(c) => {
                let (ct, icv) = rest.split_at_mut(rest.len() - c.integ.icv_len());
                c.integ.verify_parts(&[aad, iv, ct], icv)?;
                if !ct.len().is_multiple_of(AES_BLOCK_LEN) {
                    return Err(CryptoError::IntegrityCheckFailed);
                }
                let iv_arr: &[u8; AES_BLOCK_LEN] = (&*iv)
                    .try_into()
                    .map_err(|_| CryptoError::Internal("CBC IV"))?;
                c.key.decrypt_in_place(iv_arr, ct)?;
                ct
            }
        };
        let (&pad_len, data) = plain.split_last().ok_or(CryptoError::BadPadding)?;
        let keep = data
            .len()
            .checked_sub(usize::from(pad_len))
            .ok_or(CryptoError::BadPadding)?;
        Ok(&data[..keep])
    }

    /// Builds the whole encrypted message: `message` holds the unencrypted prefix (IKE
    /// header, any unencrypted payloads, the SK or SKF generic header at
    /// `payload_header_at`, and for SKF its Fragment Number and Total Fragments); this
    /// writes the final IKE header Length and Payload Length into it, then appends
    /// IV | ciphertext | ICV.
    pub fn seal_append(
        &self,
        rng: &mut dyn Random,
        message: &mut Vec<u8>,
        payload_header_at: usize,
        plaintext: &[u8],
    ) -> Result<(), CryptoError> {
        let mut iv = [0u8; AES_BLOCK_LEN];
        let iv = &mut iv[..self.iv_len()];
        rng.fill(iv);
        self.seal_append_with_iv(iv, message, payload_header_at, plaintext)
    }

    /// As [`Self::seal_append`] with a caller-chosen IV (see [`Self::seal_body_with_iv`]).
    pub fn seal_append_with_iv(
        &self,
        iv: &[u8],
        message: &mut Vec<u8>,
        payload_header_at: usize,
        plaintext: &[u8],
    ) -> Result<(), CryptoError> {
        let prefix_len = message.len();
        if prefix_len < IKE_HEADER_LEN
            || payload_header_at < IKE_HEADER_LEN
            || payload_header_at + GENERIC_HEADER_LEN > prefix_len
        {
            return Err(CryptoError::InvalidLength {
                what: "unencrypted message prefix",
                len: prefix_len,
            });
        }
        let body_len = self.sealed_len(plaintext.len());
        let total = prefix_len + body_len;
        let total32 = u32::try_from(total).map_err(|_| CryptoError::InvalidLength {
            what: "IKE message",
            len: total,
        })?;
        let payload_len =
            u16::try_from(total - payload_header_at).map_err(|_| CryptoError::InvalidLength {
                what: "Encrypted payload",
                len: total - payload_header_at,
            })?;
        message[IKE_LENGTH_AT..IKE_LENGTH_AT + 4].copy_from_slice(&total32.to_be_bytes());
        message[payload_header_at + 2..payload_header_at + 4]
            .copy_from_slice(&payload_len.to_be_bytes());
        message.resize(total, 0);
        let (aad, body) = message.split_at_mut(prefix_len);
        let r = self.seal_body_with_iv(iv, aad, plaintext, body);
        if r.is_err() {
            message.truncate(prefix_len);
        }
        r
    }
}

/// The AEAD nonce: salt | explicit IV (RFC 5282 4; RFC 7634 2).
fn aead_nonce(salt: &[u8; SALT_LEN], iv: &[u8]) -> Result<[u8; 12], CryptoError> {
    if iv.len() != AEAD_IV_LEN {
        return Err(CryptoError::IntegrityCheckFailed);
    }
    let mut n = [0u8; 12];
    n[..SALT_LEN].copy_from_slice(salt);
    n[SALT_LEN..].copy_from_slice(iv);
    Ok(n)
}

impl core::fmt::Debug for SkKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SkKey")
            .field("encr", &self.encr)
            .field("integ", &self.integ())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SeededRandom;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        hex::decode(s).unwrap()
    }

    /// RFC 7634 Appendix B: an INFORMATIONAL request with one Notify, ChaCha20-Poly1305.
    #[test]
    fn rfc7634_appendix_b_ike_message() {
        let mut sk_e = unhex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f");
        sk_e.extend_from_slice(&[0xa0, 0xa1, 0xa2, 0xa3]);
        let k = SkKey::new(EncrAlg::ChaCha20Poly1305, None, &sk_e, &[]).unwrap();
        let notify = unhex("0000000c 00004001 0000000a");
        // Header with zero Length, SK header with zero Payload Length: seal_append fills them.
        let mut msg =
            unhex("c0c1c2c3c4c5c6c7 d0d1d2d3d4d5d6d7 2e202500 00000009 00000000 29000000");
        let iv = unhex("1011121314151617");
        k.seal_append_with_iv(&iv, &mut msg, 28, &notify).unwrap();
        let want = unhex(
            "c0c1c2c3c4c5c6c7d0d1d2d3d4d5d6d7 2e20250000000009000000452900 0029
             10111213141516176103947 01f8d017f 7c12924889 6b71bfe25236efd7cdc67066906315b2",
        );
        assert_eq!(msg, want);
        assert_eq!(k.sealed_len(notify.len()), 41 - 4);
        let (aad, body) = msg.split_at_mut(32);
        assert_eq!(k.open_body(aad, body).unwrap(), &notify[..]);
    }

    #[test]
    fn cbc_icv_covers_header_iv_and_ciphertext() {
        let encr = EncrAlg::AesCbc { key_len: 16 };
        let integ = IntegAlg::HmacSha2_256_128;
        let k = SkKey::new(encr, Some(integ), &[1; 16], &[2; 32]).unwrap();
        assert_eq!(k.iv_len(), 16);
        assert_eq!(k.icv_len(), 16);
        // 20 octets of payload -> 11 padding + 1 pad length = 32.
        assert_eq!(k.sealed_len(20), 16 + 32 + 16);
        assert_eq!(k.sealed_len(15), 16 + 16 + 16);
        let aad = [9u8; 32];
        let mut body = vec![0u8; k.sealed_len(20)];
        let mut rng = SeededRandom::from_u64(1);
        k.seal_body(&mut rng, &aad, &[5; 20], &mut body).unwrap();
        let icv = HmacKey::new(integ, &[2; 32])
            .unwrap()
            .sign_parts(&[&aad, &body[..48]]);
        assert_eq!(&body[48..], icv.as_bytes());
        // Decrypt by hand: padding is zero, Pad Length 11.
        let mut ct = body[16..48].to_vec();
        AesCbcKey::new(&[1; 16])
            .unwrap()
            .decrypt_in_place(body[..16].try_into().unwrap(), &mut ct)
            .unwrap();
        assert_eq!(&ct[..20], &[5; 20]);
        assert_eq!(ct[31], 11);
        assert_eq!(k.open_body(&aad, &mut body).unwrap(), &[5; 20]);
    }

    #[test]
    fn bad_padding_after_valid_icv() {
        let encr = EncrAlg::AesCbc { key_len: 32 };
        let integ = IntegAlg::HmacSha2_512_256;
        let (ek, ak) = ([3u8; 32], [4u8; 64]);
        let k = SkKey::new(encr, Some(integ), &ek, &ak).unwrap();
        // Hand-build a body whose Pad Length (200) exceeds the 16 decrypted octets.
        let iv = [7u8; 16];
        let mut ct = [0u8; 16];
        ct[15] = 200;
        AesCbcKey::new(&ek)
            .unwrap()
            .encrypt_in_place(&iv, &mut ct)
            .unwrap();
        let aad = [1u8; 32];
        let icv = HmacKey::new(integ, &ak)
            .unwrap()
            .sign_parts(&[&aad, &iv, &ct]);
        let mut body = [&iv[..], &ct, icv.as_bytes()].concat();
        assert_eq!(k.open_body(&aad, &mut body), Err(CryptoError::BadPadding));
        // A Pad Length of 15 (all 16 octets are padding) yields an empty inner chain.
        let mut ct = [0u8; 16];
        ct[15] = 15;
        AesCbcKey::new(&ek)
            .unwrap()
            .encrypt_in_place(&iv, &mut ct)
            .unwrap();
        let icv = HmacKey::new(integ, &ak)
            .unwrap()
            .sign_parts(&[&aad, &iv, &ct]);
        let mut body = [&iv[..], &ct, icv.as_bytes()].concat();
        assert_eq!(k.open_body(&aad, &mut body).unwrap(), b"");
    }

    #[test]
    fn key_validation() {
        let gcm = EncrAlg::AesGcm16 { key_len: 16 };
        assert!(SkKey::new(gcm, None, &[0; 20], &[]).is_ok());
        assert!(
            SkKey::new(gcm, None, &[0; 16], &[]).is_err(),
            "salt missing"
        );
        assert!(SkKey::new(gcm, None, &[0; 20], &[1]).is_err());
        assert!(SkKey::new(gcm, Some(IntegAlg::HmacSha2_256_128), &[0; 20], &[0; 32]).is_err());
        let cbc = EncrAlg::AesCbc { key_len: 16 };
        assert!(SkKey::new(cbc, None, &[0; 16], &[]).is_err());
        assert!(SkKey::new(EncrAlg::AesGcm16 { key_len: 24 }, None, &[0; 28], &[]).is_err());
        assert!(SkKey::new(EncrAlg::AesCtr { key_len: 16 }, None, &[0; 20], &[]).is_err());
        let k = SkKey::new(gcm, None, &[0; 20], &[]).unwrap();
        assert_eq!(
            format!("{k:?}"),
            "SkKey { encr: AesGcm16 { key_len: 16 }, integ: None, .. }"
        );
    }

    #[test]
    fn max_plaintext_fits() {
        for k in [
            SkKey::new(EncrAlg::AesGcm16 { key_len: 32 }, None, &[0; 36], &[]).unwrap(),
            SkKey::new(
                EncrAlg::AesCbc { key_len: 16 },
                Some(IntegAlg::HmacSha2_384_192),
                &[0; 16],
                &[0; 48],
            )
            .unwrap(),
        ] {
            for budget in 0..200 {
                let m = k.max_plaintext_len(budget);
                if m > 0 {
                    assert!(k.sealed_len(m) <= budget, "budget {budget}");
                    assert!(k.sealed_len(m + 1) > budget, "budget {budget}");
                }
            }
            assert_eq!(k.overhead(10), k.sealed_len(10) - 10);
        }
    }
}
