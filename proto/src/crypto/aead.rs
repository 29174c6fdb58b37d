//! The shared AEAD seam: AES-GCM (RFC 4106, RFC 5282) and ChaCha20-Poly1305 (RFC 7634)
//! with a 16-octet tag and a 12-octet nonce, used by the SK payload and by the ESP engine.
//!
//! The nonce is built by the caller (salt | IV for IKE and ESP, RFC 5282 4, RFC 4106 4,
//! RFC 7634 2). Keys are the bare cipher keys, without the salt.

use super::CryptoError;
use ring::aead;

/// An AEAD algorithm with a 16-octet tag and a 12-octet nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AeadAlg {
    Aes128Gcm,
    Aes256Gcm,
    ChaCha20Poly1305,
}

impl AeadAlg {
    /// Length of the tag (ICV) appended to the ciphertext.
    pub const TAG_LEN: usize = 16;
    /// Length of the nonce.
    pub const NONCE_LEN: usize = 12;

    /// Cipher key length in octets (without any salt).
    pub const fn key_len(self) -> usize {
        match self {
            Self::Aes128Gcm => 16,
            Self::Aes256Gcm | Self::ChaCha20Poly1305 => 32,
        }
    }

    /// Tag length in octets (always [`Self::TAG_LEN`]).
    pub const fn tag_len(self) -> usize {
        Self::TAG_LEN
    }

    /// The AES-GCM variant for an AES key of `key_len` octets. AES-192-GCM is not offered
    /// by the backend and yields `None`.
    pub const fn aes_gcm(key_len: usize) -> Option<Self> {
        match key_len {
            16 => Some(Self::Aes128Gcm),
            32 => Some(Self::Aes256Gcm),
            _ => None,
        }
    }

    /// The confidentiality limit: how many messages one key may protect before rekeying.
    /// For AES-GCM with random or counter nonces and ChaCha20-Poly1305, the nonce space
    /// (2^64 explicit IVs) is not the binding limit; we use 2^32 messages for AES-GCM
    /// (following the commonly used bound for random IVs, RFC 8221 / NIST SP 800-38D 8.3)
    /// and 2^48 for ChaCha20-Poly1305. Callers use this to set soft lifetimes.
    pub const fn message_limit(self) -> u64 {
        match self {
            Self::Aes128Gcm | Self::Aes256Gcm => 1 << 32,
            Self::ChaCha20Poly1305 => 1 << 48,
        }
    }

    fn ring(self) -> &'static aead::Algorithm {
        match self {
            Self::Aes128Gcm => &aead::AES_128_GCM,
            Self::Aes256Gcm => &aead::AES_256_GCM,
            Self::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }
}

/// An AEAD key. The key schedule lives inside the backend; the raw key bytes are not kept.
/// `Debug` prints the algorithm only.
pub struct AeadKey {
    alg: AeadAlg,
    key: aead::LessSafeKey,
}

impl AeadKey {
    /// A key for `alg`; `key` must be exactly `alg.key_len()` octets.
    pub fn new(alg: AeadAlg, key: &[u8]) -> Result<Self, CryptoError> {
        if key.len() != alg.key_len() {
            return Err(CryptoError::InvalidKeyLength {
                what: "AEAD key",
                len: key.len(),
            });
        }
        let unbound =
            aead::UnboundKey::new(alg.ring(), key).map_err(|_| CryptoError::InvalidKeyLength {
                what: "AEAD key",
                len: key.len(),
            })?;
        Ok(Self {
            alg,
            key: aead::LessSafeKey::new(unbound),
        })
    }

    pub fn alg(&self) -> AeadAlg {
        self.alg
    }

    /// Encrypts `in_out` in place and returns the 16-octet tag. The caller guarantees that
    /// `nonce` is never reused with this key.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; 16], CryptoError> {
        let tag = self
            .key
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(*nonce),
                aead::Aad::from(aad),
                in_out,
            )
            .map_err(|_| CryptoError::Internal("AEAD seal"))?;
        let mut out = [0u8; 16];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Verifies and decrypts `ciphertext_and_tag` (ciphertext followed by the 16-octet
    /// tag) in place; returns the plaintext, a prefix of the buffer. On failure the buffer
    /// content is unspecified and [`CryptoError::IntegrityCheckFailed`] is returned.
    pub fn open_in_place<'a>(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        ciphertext_and_tag: &'a mut [u8],
    ) -> Result<&'a mut [u8], CryptoError> {
        if ciphertext_and_tag.len() < AeadAlg::TAG_LEN {
            return Err(CryptoError::IntegrityCheckFailed);
        }
        self.key
            .open_in_place(
                aead::Nonce::assume_unique_for_key(*nonce),
                aead::Aad::from(aad),
                ciphertext_and_tag,
            )
            .map_err(|_| CryptoError::IntegrityCheckFailed)
    }
}

impl core::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AeadKey")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        hex::decode(s).unwrap()
    }

    /// RFC 7539 / RFC 8439 2.8.2: the AEAD_CHACHA20_POLY1305 example (the same construction
    /// RFC 7634 uses in IKEv2 and ESP).
    #[test]
    fn chacha20_poly1305_rfc8439_vector() {
        let key = unhex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f");
        let nonce: [u8; 12] = unhex("070000004041424344454647").try_into().unwrap();
        let aad = unhex("50515253c0c1c2c3c4c5c6c7");
        let pt = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let k = AeadKey::new(AeadAlg::ChaCha20Poly1305, &key).unwrap();
        let mut buf = pt.to_vec();
        let tag = k.seal_in_place(&nonce, &aad, &mut buf).unwrap();
        assert_eq!(tag.to_vec(), unhex("1ae10b594f09e26a7e902ecbd0600691"));
        assert_eq!(
            buf[..16].to_vec(),
            unhex("d31a8d34648e60db7b86afbc53ef7ec2")
        );
        buf.extend_from_slice(&tag);
        let pt2 = k.open_in_place(&nonce, &aad, &mut buf).unwrap();
        assert_eq!(pt2, pt);
    }

    /// RFC 7634 Appendix A: the ESP example (AAD = SPI | sequence number).
    #[test]
    fn rfc7634_appendix_a_esp() {
        let key = unhex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f");
        let nonce: [u8; 12] = unhex("a0a1a2a3 1011121314151617").try_into().unwrap();
        let aad = unhex("01020304 00000005");
        let mut buf = unhex(
            "45000054a6f2000040 01e778c6336405 c0000205 08005b7a3a080000553bec10
             00073627 08090a0b0c0d0e0f10111213 1415161718191a1b1c1d1e1f20212223
             2425262728292a2b2c2d2e2f30313233 3435363701020204",
        );
        let k = AeadKey::new(AeadAlg::ChaCha20Poly1305, &key).unwrap();
        let tag = k.seal_in_place(&nonce, &aad, &mut buf).unwrap();
        assert_eq!(
            buf,
            unhex(
                "24039428b97f417e3c13753a4f05087b67c352e6a7fab1b982d466ef407ae5c6
                 14ee8099d52844eb61aa95dfab4c02f72aa71e7c4c4f64c9befe2facc638e8f3
                 cbec163fac469b502773f6fb94e664da9165b82829f641e0"
            )
        );
        assert_eq!(tag.to_vec(), unhex("76aaa8266b7fb0f7b11b369907e1ad43"));
    }

    /// The GCM specification's test case 4 (McGrew & Viega), AES-128 with AAD, 96-bit IV.
    #[test]
    fn aes128_gcm_test_case_4() {
        let key = unhex("feffe9928665731c6d6a8f9467308308");
        let nonce: [u8; 12] = unhex("cafebabefacedbaddecaf888").try_into().unwrap();
        let aad = unhex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let pt = unhex(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
             1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        );
        let ct = unhex(
            "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e
             21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
        );
        let k = AeadKey::new(AeadAlg::Aes128Gcm, &key).unwrap();
        let mut buf = pt.clone();
        let tag = k.seal_in_place(&nonce, &aad, &mut buf).unwrap();
        assert_eq!(buf, ct);
        assert_eq!(tag.to_vec(), unhex("5bc94fbc3221a5db94fae95ae7121a47"));
    }

    #[test]
    fn round_trip_and_tamper_every_alg() {
        for alg in [
            AeadAlg::Aes128Gcm,
            AeadAlg::Aes256Gcm,
            AeadAlg::ChaCha20Poly1305,
        ] {
            let key = vec![0x42; alg.key_len()];
            let k = AeadKey::new(alg, &key).unwrap();
            assert_eq!(k.alg(), alg);
            assert_eq!(format!("{k:?}"), format!("AeadKey {{ alg: {alg:?}, .. }}"));
            let nonce = [7u8; 12];
            let mut buf = b"hello group".to_vec();
            let tag = k.seal_in_place(&nonce, b"hdr", &mut buf).unwrap();
            buf.extend_from_slice(&tag);
            let good = buf.clone();
            assert_eq!(
                k.open_in_place(&nonce, b"hdr", &mut buf).unwrap(),
                b"hello group"
            );
            for i in 0..good.len() {
                let mut bad = good.clone();
                bad[i] ^= 1;
                assert_eq!(
                    k.open_in_place(&nonce, b"hdr", &mut bad),
                    Err(CryptoError::IntegrityCheckFailed)
                );
            }
            let mut bad = good.clone();
            assert!(k.open_in_place(&nonce, b"hdR", &mut bad).is_err());
            let mut bad = good.clone();
            assert!(k.open_in_place(&[8u8; 12], b"hdr", &mut bad).is_err());
            let mut short = vec![0u8; 15];
            assert!(k.open_in_place(&nonce, b"", &mut short).is_err());
            assert!(AeadKey::new(alg, &key[1..]).is_err());
        }
    }
}
