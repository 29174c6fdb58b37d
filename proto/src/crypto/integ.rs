//! Integrity algorithms: HMAC-SHA2 truncated per RFC 4868 (AUTH_HMAC_SHA2_256_128,
//! AUTH_HMAC_SHA2_384_192, AUTH_HMAC_SHA2_512_256), for the SK payload (RFC 7296 3.14)
//! and ESP.

use super::{CryptoError, ct_eq};
use crate::registry::IntegId;
use ring::hmac;

/// An HMAC-SHA2 integrity algorithm with its RFC 4868 truncation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntegAlg {
    HmacSha2_256_128,
    HmacSha2_384_192,
    HmacSha2_512_256,
}

impl IntegAlg {
    /// The transform for a negotiated INTEG ID; `None` for NONE and for IDs not offered.
    pub fn from_id(id: IntegId) -> Option<Self> {
        match id {
            IntegId::HmacSha2_256_128 => Some(Self::HmacSha2_256_128),
            IntegId::HmacSha2_384_192 => Some(Self::HmacSha2_384_192),
            IntegId::HmacSha2_512_256 => Some(Self::HmacSha2_512_256),
            _ => None,
        }
    }

    pub fn id(self) -> IntegId {
        match self {
            Self::HmacSha2_256_128 => IntegId::HmacSha2_256_128,
            Self::HmacSha2_384_192 => IntegId::HmacSha2_384_192,
            Self::HmacSha2_512_256 => IntegId::HmacSha2_512_256,
        }
    }

    /// Key length: the hash output size (RFC 4868 2.1.1; RFC 7296 2.13 for HMAC keys).
    pub const fn key_len(self) -> usize {
        match self {
            Self::HmacSha2_256_128 => 32,
            Self::HmacSha2_384_192 => 48,
            Self::HmacSha2_512_256 => 64,
        }
    }

    /// Truncated output (ICV) length: half the hash output (RFC 4868 2.3).
    pub const fn icv_len(self) -> usize {
        match self {
            Self::HmacSha2_256_128 => 16,
            Self::HmacSha2_384_192 => 24,
            Self::HmacSha2_512_256 => 32,
        }
    }

    fn ring(self) -> hmac::Algorithm {
        match self {
            Self::HmacSha2_256_128 => hmac::HMAC_SHA256,
            Self::HmacSha2_384_192 => hmac::HMAC_SHA384,
            Self::HmacSha2_512_256 => hmac::HMAC_SHA512,
        }
    }
}

/// A truncated MAC value (at most 64 octets), without allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MacTag {
    bytes: [u8; 64],
    len: usize,
}

impl MacTag {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl AsRef<[u8]> for MacTag {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl core::fmt::Debug for MacTag {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "MacTag({})", hex_string(self.as_bytes()))
    }
}

fn hex_string(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An HMAC-SHA2 integrity key. The key schedule lives inside ring; `Debug` prints the
/// algorithm only.
pub struct HmacKey {
    alg: IntegAlg,
    key: hmac::Key,
}

impl HmacKey {
    /// A key for `alg`; `key` must be exactly `alg.key_len()` octets (RFC 4868 2.1.1).
    pub fn new(alg: IntegAlg, key: &[u8]) -> Result<Self, CryptoError> {
        if key.len() != alg.key_len() {
            return Err(CryptoError::InvalidKeyLength {
                what: "HMAC integrity key",
                len: key.len(),
            });
        }
        Ok(Self {
            alg,
            key: hmac::Key::new(alg.ring(), key),
        })
    }

    pub fn alg(&self) -> IntegAlg {
        self.alg
    }

    pub fn icv_len(&self) -> usize {
        self.alg.icv_len()
    }

    /// The truncated MAC over the concatenation of `parts`.
    pub fn sign_parts(&self, parts: &[&[u8]]) -> MacTag {
        let mut ctx = hmac::Context::with_key(&self.key);
        for p in parts {
            ctx.update(p);
        }
        let full = ctx.sign();
        let mut bytes = [0u8; 64];
        let len = self.alg.icv_len();
        bytes[..len].copy_from_slice(&full.as_ref()[..len]);
        MacTag { bytes, len }
    }

    /// The truncated MAC over `data`.
    pub fn sign(&self, data: &[u8]) -> MacTag {
        self.sign_parts(&[data])
    }

    /// Checks `icv` against the truncated MAC over the concatenation of `parts`, in
    /// constant time.
    pub fn verify_parts(&self, parts: &[&[u8]], icv: &[u8]) -> Result<(), CryptoError> {
        let want = self.sign_parts(parts);
        if icv.len() == want.len && ct_eq(want.as_bytes(), icv) {
            Ok(())
        } else {
            Err(CryptoError::IntegrityCheckFailed)
        }
    }

    /// Checks `icv` against the truncated MAC over `data`, in constant time.
    pub fn verify(&self, data: &[u8], icv: &[u8]) -> Result<(), CryptoError> {
        self.verify_parts(&[data], icv)
    }
}

impl core::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HmacKey")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4868 2.7.2.1, Test Case AUTH256-1 (key 0x0b x 32, "Hi There"), truncated to 128.
    #[test]
    fn rfc4868_auth256_1() {
        let k = HmacKey::new(IntegAlg::HmacSha2_256_128, &[0x0b; 32]).unwrap();
        let t = k.sign(b"Hi There");
        assert_eq!(hex_string(t.as_bytes()), "198a607eb44bfbc69903a0f1cf2bbdc5");
        k.verify_parts(&[b"Hi ", b"There"], t.as_bytes()).unwrap();
        let mut bad = t.as_bytes().to_vec();
        bad[15] ^= 0x80;
        assert_eq!(
            k.verify(b"Hi There", &bad),
            Err(CryptoError::IntegrityCheckFailed)
        );
        assert!(k.verify(b"Hi There", &t.as_bytes()[..15]).is_err());
    }

    #[test]
    fn lengths_and_ids() {
        for (alg, kl, il) in [
            (IntegAlg::HmacSha2_256_128, 32, 16),
            (IntegAlg::HmacSha2_384_192, 48, 24),
            (IntegAlg::HmacSha2_512_256, 64, 32),
        ] {
            assert_eq!(alg.key_len(), kl);
            assert_eq!(alg.icv_len(), il);
            assert_eq!(IntegAlg::from_id(alg.id()), Some(alg));
            let k = HmacKey::new(alg, &vec![1; kl]).unwrap();
            assert_eq!(k.sign(b"x").as_bytes().len(), il);
            assert!(HmacKey::new(alg, &vec![1; kl + 1]).is_err());
            assert!(!format!("{k:?}").contains("01"));
        }
        assert_eq!(IntegAlg::from_id(IntegId::None), None);
    }
}
