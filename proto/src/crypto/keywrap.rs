//! Key wrap: KW_5649_128/192/256 (RFC 9838 4.4.2.1.2), the AES Key Wrap with Padding of
//! RFC 5649, through the `aes-kw` crate (its KWP mode).

use super::{CryptoError, SecretBytes};
use crate::registry::KwaId;
use aes_kw::{KeyInit, KwpAes128, KwpAes192, KwpAes256};
use zeroize::Zeroize;

/// RFC 9838 4.4.2.1.2: a key wrap algorithm "MUST be able to wrap key material of size up
/// to 256 bytes". We accept up to twice that and refuse more (bounded allocation on
/// unwrap of received data).
pub const MAX_KEY_DATA_LEN: usize = 512;

/// RFC 5649 3: the wrapped form is the AIV semiblock plus the key data padded to a multiple
/// of 8 octets, so at least 16 octets.
const MIN_WRAPPED_LEN: usize = 16;
const SEMIBLOCK: usize = 8;

/// A key wrap algorithm from the KWA transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyWrapAlg {
    Kw5649_128,
    Kw5649_192,
    Kw5649_256,
}

impl KeyWrapAlg {
    /// The algorithm for a KWA transform ID; `None` for KW_ARX and unknown IDs.
    pub fn from_id(id: KwaId) -> Option<Self> {
        match id {
            KwaId::Kw5649_128 => Some(Self::Kw5649_128),
            KwaId::Kw5649_192 => Some(Self::Kw5649_192),
            KwaId::Kw5649_256 => Some(Self::Kw5649_256),
            _ => None,
        }
    }

    pub fn id(self) -> KwaId {
        match self {
            Self::Kw5649_128 => KwaId::Kw5649_128,
            Self::Kw5649_192 => KwaId::Kw5649_192,
            Self::Kw5649_256 => KwaId::Kw5649_256,
        }
    }

    /// KWK length: the AES key size (RFC 9838 4.4.2.1.2).
    pub const fn key_len(self) -> usize {
        match self {
            Self::Kw5649_128 => 16,
            Self::Kw5649_192 => 24,
            Self::Kw5649_256 => 32,
        }
    }

    /// Length of the wrapped form of `key_data_len` octets (RFC 5649 4.1).
    pub const fn wrapped_len(key_data_len: usize) -> usize {
        key_data_len.div_ceil(SEMIBLOCK) * SEMIBLOCK + SEMIBLOCK
    }
}

/// The default key wrap key of one IKE SA, `GSK_w` (RFC 9838 3.1.1), as bytes with its
/// algorithm: what an IKE SA hands its host with every message whose keys are wrapped
/// under it. "Every IKE SA ... will have its own GSK_w", so after an IKE SA rekey (RFC
/// 7296 2.18) a message carried by the replaced SA still needs the replaced SA's key.
/// Zeroized on drop; `Debug` prints the algorithm only.
#[derive(Clone, PartialEq, Eq)]
pub struct DefaultKwk {
    alg: KeyWrapAlg,
    key: SecretBytes,
}

impl DefaultKwk {
    /// `key` must be exactly `alg.key_len()` octets.
    pub fn new(alg: KeyWrapAlg, key: SecretBytes) -> Result<Self, CryptoError> {
        if key.len() != alg.key_len() {
            return Err(CryptoError::InvalidKeyLength {
                what: "key wrap key",
                len: key.len(),
            });
        }
        Ok(Self { alg, key })
    }

    pub fn alg(&self) -> KeyWrapAlg {
        self.alg
    }

    /// The key, ready to wrap or unwrap.
    pub fn key(&self) -> Result<KeyWrapKey, CryptoError> {
        KeyWrapKey::new(self.alg, self.key.as_bytes())
    }
}

impl core::fmt::Debug for DefaultKwk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DefaultKwk")
            .field("alg", &self.alg)
            .finish()
    }
}

enum Kek {
    A128(KwpAes128),
    A192(KwpAes192),
    A256(KwpAes256),
}

/// A key wrap key (KWK) bound to its algorithm. The AES key schedule is zeroized on drop
/// (aes-kw's `zeroize` feature); `Debug` prints the algorithm only.
pub struct KeyWrapKey {
    alg: KeyWrapAlg,
    kek: Kek,
}

impl KeyWrapKey {
    /// A KWK of exactly `alg.key_len()` octets.
    pub fn new(alg: KeyWrapAlg, kwk: &[u8]) -> Result<Self, CryptoError> {
        let bad = |_| CryptoError::InvalidKeyLength {
            what: "key wrap key",
            len: kwk.len(),
        };
        if kwk.len() != alg.key_len() {
            return Err(bad(()));
        }
        let kek = match alg {
            KeyWrapAlg::Kw5649_128 => {
                Kek::A128(KwpAes128::new_from_slice(kwk).map_err(|_| bad(()))?)
            }
            KeyWrapAlg::Kw5649_192 => {
                Kek::A192(KwpAes192::new_from_slice(kwk).map_err(|_| bad(()))?)
            }
            KeyWrapAlg::Kw5649_256 => {
                Kek::A256(KwpAes256::new_from_slice(kwk).map_err(|_| bad(()))?)
            }
        };
        Ok(Self { alg, kek })
    }

    pub fn alg(&self) -> KeyWrapAlg {
        self.alg
    }

    /// Wraps 1 to [`MAX_KEY_DATA_LEN`] octets of key data (RFC 5649 4.1).
    pub fn wrap(&self, key_data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if key_data.is_empty() || key_data.len() > MAX_KEY_DATA_LEN {
            return Err(CryptoError::InvalidLength {
                what: "key data to wrap",
                len: key_data.len(),
            });
        }
        let mut out = vec![0u8; KeyWrapAlg::wrapped_len(key_data.len())];
        let r = match &self.kek {
            Kek::A128(k) => k.wrap_key(key_data, &mut out).map(|s| s.len()),
            Kek::A192(k) => k.wrap_key(key_data, &mut out).map(|s| s.len()),
            Kek::A256(k) => k.wrap_key(key_data, &mut out).map(|s| s.len()),
        };
        match r {
            Ok(n) if n == out.len() => Ok(out),
            _ => Err(CryptoError::Internal("key wrap")),
        }
    }

    /// Unwraps received key data, checking the AIV and padding (RFC 5649 4.2, 3).
    /// A length that cannot be a wrapped key is [`CryptoError::InvalidLength`]; a wrong KWK
    /// or altered data is [`CryptoError::IntegrityCheckFailed`].
    pub fn unwrap(&self, wrapped: &[u8]) -> Result<SecretBytes, CryptoError> {
        if wrapped.len() < MIN_WRAPPED_LEN
            || !wrapped.len().is_multiple_of(SEMIBLOCK)
            || wrapped.len() > KeyWrapAlg::wrapped_len(MAX_KEY_DATA_LEN)
        {
            return Err(CryptoError::InvalidLength {
                what: "wrapped key",
                len: wrapped.len(),
            });
        }
        let mut buf = vec![0u8; wrapped.len() - SEMIBLOCK];
        let r = match &self.kek {
            Kek::A128(k) => k.unwrap_key(wrapped, &mut buf).map(|s| s.len()),
            Kek::A192(k) => k.unwrap_key(wrapped, &mut buf).map(|s| s.len()),
            Kek::A256(k) => k.unwrap_key(wrapped, &mut buf).map(|s| s.len()),
        };
        match r {
            Ok(n) if n > 0 => {
                let out = SecretBytes::from_slice(&buf[..n]);
                buf.zeroize();
                Ok(out)
            }
            _ => {
                buf.zeroize();
                Err(CryptoError::IntegrityCheckFailed)
            }
        }
    }
}

impl core::fmt::Debug for KeyWrapKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeyWrapKey")
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

    /// RFC 5649 6, both examples (192-bit KEK).
    #[test]
    fn rfc5649_section_6_vectors() {
        let kek = unhex("5840df6e29b02af1 ab493b705bf16ea1 ae8338f4dcc176a8");
        let k = KeyWrapKey::new(KeyWrapAlg::Kw5649_192, &kek).unwrap();
        let key = unhex("c37b7e6492584340 bed1220780894115 5068f738");
        let wrap = unhex("138bdeaa9b8fa7fc 61f97742e72248ee 5ae6ae5360d1ae6a 5f54f373fa543b6a");
        assert_eq!(k.wrap(&key).unwrap(), wrap);
        assert_eq!(k.unwrap(&wrap).unwrap().as_bytes(), &key[..]);

        let key = unhex("466f7250617369");
        let wrap = unhex("afbeb0f07dfbf541 9200f2ccb50bb24f");
        assert_eq!(k.wrap(&key).unwrap(), wrap);
        assert_eq!(k.unwrap(&wrap).unwrap().as_bytes(), &key[..]);
    }

    /// KW_5649_128 and KW_5649_256 (RFC 9838 4.4.2.1.2): RFC 5649 has examples for a
    /// 192-bit KEK only, so these were computed with another implementation, OpenSSL
    /// 3.0.19 `openssl enc -id-aes{128,256}-wrap-pad -K <KEK> -iv A65959A6` (the RFC 5649 3
    /// AIV constant; the same command reproduces the section 6 vectors above). Key data of
    /// 20 octets (padded) and of 32 octets (a Rekey SA's GSK_w, no padding: the output is
    /// still AIV | key, RFC 5649 4.1, not RFC 3394's IV).
    #[test]
    fn kw_5649_128_and_256_match_another_implementation() {
        let data = unhex("00112233445566778899aabbccddeeff 000102030405060708090a0b0c0d0e0f");
        let cases = [
            (
                KeyWrapAlg::Kw5649_128,
                "000102030405060708090a0b0c0d0e0f",
                20,
                "8464eef50633e852 87dbac88b7512832 1370db3601c24601 0f23c72f3e061ab8",
            ),
            (
                KeyWrapAlg::Kw5649_128,
                "000102030405060708090a0b0c0d0e0f",
                32,
                "c05268596017163e e377e92d4b8f70a2 397686e90ae6a554 80b8ffc12867b3d8 \
                 4ce2c290ec40ed87",
            ),
            (
                KeyWrapAlg::Kw5649_256,
                "000102030405060708090a0b0c0d0e0f 101112131415161718191a1b1c1d1e1f",
                20,
                "2ec848c1a77981da 003e3ce3b028c5e4 6ba5bebc032dce29 eb892a57092d5c09",
            ),
            (
                KeyWrapAlg::Kw5649_256,
                "000102030405060708090a0b0c0d0e0f 101112131415161718191a1b1c1d1e1f",
                32,
                "4a8029243027353b 0694cf1bd8fc745b b0ce8a739b19b196 0b12426d4c39cfed \
                 a926d103ab34e9f6",
            ),
        ];
        for (alg, kek, len, wrapped) in cases {
            let k = KeyWrapKey::new(alg, &unhex(kek)).unwrap();
            let want = unhex(wrapped);
            assert_eq!(k.wrap(&data[..len]).unwrap(), want, "{alg:?} {len}");
            assert_eq!(k.unwrap(&want).unwrap().as_bytes(), &data[..len]);
        }
    }

    #[test]
    fn errors_and_sizes() {
        for alg in [
            KeyWrapAlg::Kw5649_128,
            KeyWrapAlg::Kw5649_192,
            KeyWrapAlg::Kw5649_256,
        ] {
            assert_eq!(KeyWrapAlg::from_id(alg.id()), Some(alg));
            let k = KeyWrapKey::new(alg, &vec![9; alg.key_len()]).unwrap();
            assert!(KeyWrapKey::new(alg, &vec![9; alg.key_len() + 8]).is_err());
            // RFC 9838 4.4.2.1.2: 256 bytes must wrap.
            let data: Vec<u8> = (0..=255u8).collect();
            let w = k.wrap(&data).unwrap();
            assert_eq!(w.len(), 264);
            assert_eq!(k.unwrap(&w).unwrap().as_bytes(), &data[..]);
            let mut bad = w.clone();
            bad[100] ^= 1;
            assert_eq!(k.unwrap(&bad), Err(CryptoError::IntegrityCheckFailed));
            let other = KeyWrapKey::new(alg, &vec![8; alg.key_len()]).unwrap();
            assert_eq!(other.unwrap(&w), Err(CryptoError::IntegrityCheckFailed));
            assert!(matches!(
                k.unwrap(&w[..15]),
                Err(CryptoError::InvalidLength { .. })
            ));
            assert!(matches!(
                k.unwrap(&w[..20]),
                Err(CryptoError::InvalidLength { .. })
            ));
            assert!(matches!(
                k.unwrap(&[]),
                Err(CryptoError::InvalidLength { .. })
            ));
            assert!(k.wrap(&[]).is_err());
            assert!(k.wrap(&[0; MAX_KEY_DATA_LEN + 1]).is_err());
            assert!(matches!(
                k.unwrap(&vec![0; KeyWrapAlg::wrapped_len(MAX_KEY_DATA_LEN) + 8]),
                Err(CryptoError::InvalidLength { .. })
            ));
            // Single-block case (key data of at most 8 octets).
            let w = k.wrap(&[1, 2, 3]).unwrap();
            assert_eq!(w.len(), 16);
            assert_eq!(k.unwrap(&w).unwrap().as_bytes(), &[1, 2, 3]);
        }
        assert_eq!(KeyWrapAlg::from_id(KwaId::KwArx), None);
    }
}
