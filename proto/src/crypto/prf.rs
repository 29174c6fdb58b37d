//! Pseudorandom functions (PRF_HMAC_SHA2_256/384/512, RFC 4868) and prf+ (RFC 7296 2.13).

use super::{CryptoError, SecretBytes};
use crate::registry::PrfId;
use ring::hmac;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A negotiated PRF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrfAlg {
    HmacSha2_256,
    HmacSha2_384,
    HmacSha2_512,
}

/// prf+ is defined for at most 255 output blocks: its counter is one octet
/// (RFC 7296 2.13).
pub const PRF_PLUS_MAX_BLOCKS: usize = 255;

impl PrfAlg {
    /// The PRF for a negotiated PRF transform ID; `None` for IDs not offered here.
    pub fn from_id(id: PrfId) -> Option<Self> {
        match id {
            PrfId::HmacSha2_256 => Some(Self::HmacSha2_256),
            PrfId::HmacSha2_384 => Some(Self::HmacSha2_384),
            PrfId::HmacSha2_512 => Some(Self::HmacSha2_512),
            _ => None,
        }
    }

    pub fn id(self) -> PrfId {
        match self {
            Self::HmacSha2_256 => PrfId::HmacSha2_256,
            Self::HmacSha2_384 => PrfId::HmacSha2_384,
            Self::HmacSha2_512 => PrfId::HmacSha2_512,
        }
    }

    /// Output length in octets (the full hash; RFC 4868 2.2 uses no truncation for PRFs).
    pub const fn output_len(self) -> usize {
        match self {
            Self::HmacSha2_256 => 32,
            Self::HmacSha2_384 => 48,
            Self::HmacSha2_512 => 64,
        }
    }

    /// The preferred key length, used for SK_d, SK_pi and SK_pr: for HMAC PRFs, the hash
    /// output length (RFC 7296 2.13).
    pub const fn preferred_key_len(self) -> usize {
        self.output_len()
    }

    /// The most prf+ can produce (RFC 7296 2.13: 255 times the PRF output).
    pub const fn prf_plus_max(self) -> usize {
        PRF_PLUS_MAX_BLOCKS * self.output_len()
    }

    fn ring(self) -> hmac::Algorithm {
        match self {
            Self::HmacSha2_256 => hmac::HMAC_SHA256,
            Self::HmacSha2_384 => hmac::HMAC_SHA384,
            Self::HmacSha2_512 => hmac::HMAC_SHA512,
        }
    }

    /// `prf(key, parts[0] | parts[1] | ...)`. HMAC accepts keys of any length
    /// (RFC 7296 2.13: "PRFs accept keys of any length").
    pub fn prf(self, key: &[u8], parts: &[&[u8]]) -> PrfOutput {
        let k = hmac::Key::new(self.ring(), key);
        let mut ctx = hmac::Context::with_key(&k);
        for p in parts {
            ctx.update(p);
        }
        PrfOutput::from_tag(ctx.sign())
    }

    /// `prf+(key, seed)` truncated to `len` octets (RFC 7296 2.13):
    /// `T1 = prf(K, S | 0x01)`, `Tn = prf(K, Tn-1 | S | n)`.
    ///
    /// The seed is the concatenation of `seed_parts`. Fails with
    /// [`CryptoError::OutputTooLong`] beyond 255 blocks.
    pub fn prf_plus(
        self,
        key: &[u8],
        seed_parts: &[&[u8]],
        len: usize,
    ) -> Result<SecretBytes, CryptoError> {
        if len > self.prf_plus_max() {
            return Err(CryptoError::OutputTooLong("prf+"));
        }
        let k = hmac::Key::new(self.ring(), key);
        let mut out = SecretBytes::zeroed(len);
        let mut prev: Option<PrfOutput> = None;
        let mut counter: u8 = 1;
        let mut filled = 0;
        while filled < len {
            let mut ctx = hmac::Context::with_key(&k);
            if let Some(p) = &prev {
                ctx.update(p.as_bytes());
            }
            for s in seed_parts {
                ctx.update(s);
            }
            ctx.update(&[counter]);
            let t = PrfOutput::from_tag(ctx.sign());
            let n = t.len.min(len - filled);
            out.as_mut_bytes()[filled..filled + n].copy_from_slice(&t.as_bytes()[..n]);
            filled += n;
            prev = Some(t);
            // Cannot overflow: len <= 255 blocks was checked above.
            counter = counter.wrapping_add(1);
        }
        Ok(out)
    }
}

/// One PRF output (at most 64 octets), zeroized on drop; `Debug` prints the length only.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct PrfOutput {
    bytes: [u8; 64],
    len: usize,
}

impl PrfOutput {
    fn from_tag(tag: hmac::Tag) -> Self {
        let t = tag.as_ref();
        let mut bytes = [0u8; 64];
        bytes[..t.len()].copy_from_slice(t);
        Self {
            bytes,
            len: t.len(),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Constant-time comparison with a received value (AUTH, MACedID).
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        other.len() == self.len && super::ct_eq(self.as_bytes(), other)
    }

    pub fn to_secret(&self) -> SecretBytes {
        SecretBytes::from_slice(self.as_bytes())
    }
}

impl AsRef<[u8]> for PrfOutput {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl core::fmt::Debug for PrfOutput {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PrfOutput({} octets)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4868 2.7.1, Test Case PRF-1 for the three SHA-2 PRFs.
    #[test]
    fn rfc4868_prf_1() {
        let key = [0x0b; 20];
        let data = b"Hi There";
        assert_eq!(
            hex::encode(PrfAlg::HmacSha2_256.prf(&key, &[data]).as_bytes()),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex::encode(
                PrfAlg::HmacSha2_384
                    .prf(&key, &[b"Hi ", b"There"])
                    .as_bytes()
            ),
            "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c\
             faea9ea9076ede7f4af152e8b2fa9cb6"
        );
        assert_eq!(PrfAlg::HmacSha2_512.prf(&key, &[data]).len(), 64);
    }

    #[test]
    fn prf_plus_matches_definition_and_caps() {
        for alg in [
            PrfAlg::HmacSha2_256,
            PrfAlg::HmacSha2_384,
            PrfAlg::HmacSha2_512,
        ] {
            let key = b"some key";
            let seed = b"seed";
            let t1 = alg.prf(key, &[seed, &[1]]);
            let t2 = alg.prf(key, &[t1.as_bytes(), seed, &[2]]);
            let out = alg
                .prf_plus(key, &[b"se", b"ed"], alg.output_len() + 5)
                .unwrap();
            assert_eq!(&out.as_bytes()[..alg.output_len()], t1.as_bytes());
            assert_eq!(&out.as_bytes()[alg.output_len()..], &t2.as_bytes()[..5]);
            assert_eq!(
                alg.prf_plus(key, &[seed], alg.prf_plus_max())
                    .unwrap()
                    .len(),
                alg.prf_plus_max()
            );
            assert_eq!(
                alg.prf_plus(key, &[seed], alg.prf_plus_max() + 1),
                Err(CryptoError::OutputTooLong("prf+"))
            );
            assert!(alg.prf_plus(key, &[seed], 0).unwrap().is_empty());
            assert_eq!(PrfAlg::from_id(alg.id()), Some(alg));
        }
        assert_eq!(PrfAlg::from_id(PrfId::HmacSha1), None);
    }
}
