//! Key exchange methods (Transform Type 4 and ADDKE1..7, RFC 9370), in the rustls shape
//! (STYLE R4): [`KeMethod::start`] gives an [`ActiveKe`] whose [`ActiveKe::pub_key`] is
//! the KE payload data and whose [`ActiveKe::complete`] consumes the ephemeral secret;
//! [`KeMethod::start_and_complete`] serves the responder, which for a KEM encapsulates to
//! the initiator's key.
//!
//! Encodings: Curve25519 is the 32-octet u-coordinate (RFC 8031 3.1); ECP-256 is x | y,
//! 64 octets, no SEC1 prefix, and its shared secret is x (RFC 5903 7); ML-KEM: the
//! initiator sends the encapsulation key, the responder the ciphertext, and the shared
//! secret is ML-KEM's 32 octets (specs/README.md).
//!
//! Randomness: ring's ephemeral ECDH keys and aws-lc-rs's ML-KEM key generation and
//! encapsulation draw from the OS CSPRNG inside the library; neither accepts an external
//! generator. The `rng` argument is kept so the seam does not change for a backend that
//! can take one.

use super::{CryptoError, Random, SecretBytes};
use crate::registry::KeId;
use aws_lc_rs::kem;
use ring::agreement;

/// The shared secret of a key exchange (`g^ir` or `SK(n)`), zeroized on drop.
pub type SharedSecret = SecretBytes;

/// A key exchange method implemented here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeMethod {
    /// 256-bit random ECP group (RFC 5903).
    Ecp256,
    /// Curve25519 (RFC 8031).
    Curve25519,
    MlKem512,
    MlKem768,
    MlKem1024,
}

/// SEC1 uncompressed point prefix, which IKEv2 does not send (RFC 5903 7).
const SEC1_UNCOMPRESSED: u8 = 0x04;

impl KeMethod {
    /// The method for a KE transform ID; `None` for NONE and methods not offered.
    pub fn from_id(id: KeId) -> Option<Self> {
        match id {
            KeId::Ecp256 => Some(Self::Ecp256),
            KeId::Curve25519 => Some(Self::Curve25519),
            KeId::MlKem512 => Some(Self::MlKem512),
            KeId::MlKem768 => Some(Self::MlKem768),
            KeId::MlKem1024 => Some(Self::MlKem1024),
            _ => None,
        }
    }

    pub fn id(self) -> KeId {
        match self {
            Self::Ecp256 => KeId::Ecp256,
            Self::Curve25519 => KeId::Curve25519,
            Self::MlKem512 => KeId::MlKem512,
            Self::MlKem768 => KeId::MlKem768,
            Self::MlKem1024 => KeId::MlKem1024,
        }
    }

    /// True for the post-quantum KEMs, whose initiator and responder values differ.
    pub const fn is_kem(self) -> bool {
        matches!(self, Self::MlKem512 | Self::MlKem768 | Self::MlKem1024)
    }

    /// True for methods believed to resist a quantum computer: today the ML-KEM KEMs
    /// (KE methods 35-37, `IANA.md`), the same set as [`KeMethod::is_kem`].
    pub const fn is_post_quantum(self) -> bool {
        self.is_kem()
    }

    /// Length of the initiator's KE data (for a KEM, the encapsulation key; FIPS 203
    /// table 3).
    pub const fn initiator_value_len(self) -> usize {
        match self {
            Self::Ecp256 => 64,
            Self::Curve25519 => 32,
            Self::MlKem512 => 800,
            Self::MlKem768 => 1184,
            Self::MlKem1024 => 1568,
        }
    }

    /// Length of the responder's KE data (for a KEM, the ciphertext; FIPS 203 table 3).
    pub const fn responder_value_len(self) -> usize {
        match self {
            Self::Ecp256 => 64,
            Self::Curve25519 => 32,
            Self::MlKem512 => 768,
            Self::MlKem768 => 1088,
            Self::MlKem1024 => 1568,
        }
    }

    /// Length of the shared secret.
    pub const fn shared_secret_len(self) -> usize {
        32
    }

    fn kem_alg(self) -> Option<&'static kem::Algorithm<kem::AlgorithmId>> {
        match self {
            Self::MlKem512 => Some(&kem::ML_KEM_512),
            Self::MlKem768 => Some(&kem::ML_KEM_768),
            Self::MlKem1024 => Some(&kem::ML_KEM_1024),
            Self::Ecp256 | Self::Curve25519 => None,
        }
    }

    fn ecdh_alg(self) -> Option<&'static agreement::Algorithm> {
        match self {
            Self::Ecp256 => Some(&agreement::ECDH_P256),
            Self::Curve25519 => Some(&agreement::X25519),
            _ => None,
        }
    }

    /// Starts the exchange as the initiator (or as either side of an ECDH exchange):
    /// generates the ephemeral secret. See the module documentation about `_rng`.
    pub fn start(self, _rng: &mut dyn Random) -> Result<ActiveKe, CryptoError> {
        if let Some(alg) = self.kem_alg() {
            let dk = kem::DecapsulationKey::generate(alg)
                .map_err(|_| CryptoError::Internal("ML-KEM key generation"))?;
            let ek = dk
                .encapsulation_key()
                .and_then(|ek| ek.key_bytes())
                .map_err(|_| CryptoError::Internal("ML-KEM encapsulation key"))?;
            let pub_key = ek.as_ref().to_vec();
            return Ok(ActiveKe {
                method: self,
                pub_key,
                secret: Secret::Kem(dk),
            });
        }
        let alg = self
            .ecdh_alg()
            .ok_or(CryptoError::Unsupported("key exchange method"))?;
        let rng = ring::rand::SystemRandom::new();
        let sk = agreement::EphemeralPrivateKey::generate(alg, &rng)
            .map_err(|_| CryptoError::Internal("ECDH key generation"))?;
        let pk = sk
            .compute_public_key()
            .map_err(|_| CryptoError::Internal("ECDH public key"))?;
        let pub_key = match self {
            // RFC 5903 7: x | y without the SEC1 prefix.
            Self::Ecp256 => match pk.as_ref().split_first() {
                Some((&SEC1_UNCOMPRESSED, xy)) => xy.to_vec(),
                _ => return Err(CryptoError::Internal("ECDH public key encoding")),
            },
            _ => pk.as_ref().to_vec(),
        };
        Ok(ActiveKe {
            method: self,
            pub_key,
            secret: Secret::Ecdh(sk),
        })
    }

    /// The responder's side in one step: returns its KE data and the shared secret. For a
    /// KEM, `peer` is the initiator's encapsulation key and the returned data is the
    /// ciphertext; for ECDH this is `start` then `complete`.
    pub fn start_and_complete(
        self,
        rng: &mut dyn Random,
        peer: &[u8],
    ) -> Result<(Vec<u8>, SharedSecret), CryptoError> {
        if let Some(alg) = self.kem_alg() {
            check_len(peer, self.initiator_value_len(), "ML-KEM encapsulation key")?;
            let ek = kem::EncapsulationKey::new(alg, peer)
                .map_err(|_| CryptoError::InvalidPublicValue("ML-KEM encapsulation key"))?;
            let (ct, ss) = ek
                .encapsulate()
                .map_err(|_| CryptoError::Internal("ML-KEM encapsulation"))?;
            return Ok((ct.as_ref().to_vec(), SecretBytes::from_slice(ss.as_ref())));
        }
        let active = self.start(rng)?;
        let ours = active.pub_key.clone();
        let secret = active.complete(peer)?;
        Ok((ours, secret))
    }
}

fn check_len(v: &[u8], want: usize, what: &'static str) -> Result<(), CryptoError> {
    if v.len() == want {
        Ok(())
    } else {
        Err(CryptoError::InvalidLength { what, len: v.len() })
    }
}

enum Secret {
    Ecdh(agreement::EphemeralPrivateKey),
    Kem(kem::DecapsulationKey<kem::AlgorithmId>),
}

/// A started key exchange holding its ephemeral secret; `complete` consumes it, so the
/// secret is used once by construction.
pub struct ActiveKe {
    method: KeMethod,
    pub_key: Vec<u8>,
    secret: Secret,
}

impl ActiveKe {
    pub fn method(&self) -> KeMethod {
        self.method
    }

    /// Our KE payload data.
    pub fn pub_key(&self) -> &[u8] {
        &self.pub_key
    }

    /// Finishes with the peer's KE data (for a KEM initiator, the responder's ciphertext).
    ///
    /// Wrong lengths are [`CryptoError::InvalidLength`]; a point not on the curve or an
    /// all-zero X25519 result (RFC 8031 2.3, RFC 7748 6.1) is
    /// [`CryptoError::InvalidPublicValue`]. Both map to INVALID_SYNTAX.
    pub fn complete(self, peer: &[u8]) -> Result<SharedSecret, CryptoError> {
        match self.secret {
            Secret::Kem(dk) => {
                check_len(peer, self.method.responder_value_len(), "ML-KEM ciphertext")?;
                let ss = dk
                    .decapsulate(kem::Ciphertext::from(peer))
                    .map_err(|_| CryptoError::InvalidPublicValue("ML-KEM ciphertext"))?;
                Ok(SecretBytes::from_slice(ss.as_ref()))
            }
            Secret::Ecdh(sk) => {
                let alg = self
                    .method
                    .ecdh_alg()
                    .ok_or(CryptoError::Internal("ECDH algorithm"))?;
                check_len(peer, self.method.initiator_value_len(), "ECDH public value")?;
                let mut sec1;
                let peer_bytes = if self.method == KeMethod::Ecp256 {
                    sec1 = Vec::with_capacity(65);
                    sec1.push(SEC1_UNCOMPRESSED);
                    sec1.extend_from_slice(peer);
                    &sec1[..]
                } else {
                    peer
                };
                let what = if self.method == KeMethod::Ecp256 {
                    "ECP-256 public value"
                } else {
                    "Curve25519 public value"
                };
                let peer_key = agreement::UnparsedPublicKey::new(alg, peer_bytes);
                let secret = agreement::agree_ephemeral(sk, &peer_key, SecretBytes::from_slice)
                    .map_err(|_| CryptoError::InvalidPublicValue(what))?;
                // RFC 8031 2.3: an all-zero X25519 result is invalid (ring also refuses it).
                if secret.as_bytes().iter().all(|&b| b == 0) {
                    return Err(CryptoError::InvalidPublicValue(what));
                }
                Ok(secret)
            }
        }
    }
}

impl core::fmt::Debug for ActiveKe {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ActiveKe")
            .field("method", &self.method)
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

    const ALL: [KeMethod; 5] = [
        KeMethod::Ecp256,
        KeMethod::Curve25519,
        KeMethod::MlKem512,
        KeMethod::MlKem768,
        KeMethod::MlKem1024,
    ];

    #[test]
    fn both_sides_agree_for_every_method() {
        let mut rng = SeededRandom::from_u64(1);
        for m in ALL {
            assert_eq!(KeMethod::from_id(m.id()), Some(m));
            let init = m.start(&mut rng).unwrap();
            assert_eq!(init.method(), m);
            assert_eq!(init.pub_key().len(), m.initiator_value_len());
            let (resp_pub, resp_secret) = m.start_and_complete(&mut rng, init.pub_key()).unwrap();
            assert_eq!(resp_pub.len(), m.responder_value_len());
            let init_secret = init.complete(&resp_pub).unwrap();
            assert_eq!(init_secret, resp_secret);
            assert_eq!(init_secret.len(), m.shared_secret_len());
        }
    }

    #[test]
    fn ml_kem_768_lengths() {
        let m = KeMethod::MlKem768;
        assert!(m.is_kem());
        let mut rng = SeededRandom::from_u64(2);
        let init = m.start(&mut rng).unwrap();
        assert_eq!(init.pub_key().len(), 1184);
        let (ct, ss) = m.start_and_complete(&mut rng, init.pub_key()).unwrap();
        assert_eq!(ct.len(), 1088);
        assert_eq!(ss.len(), 32);
        // A tampered ciphertext decapsulates to a different secret (implicit rejection).
        let mut bad = ct.clone();
        bad[0] ^= 1;
        let other = init.complete(&bad).unwrap();
        assert_ne!(other, ss);
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut rng = SeededRandom::from_u64(3);
        for m in ALL {
            let init = m.start(&mut rng).unwrap();
            let short = vec![1u8; m.responder_value_len() - 1];
            assert!(matches!(
                init.complete(&short),
                Err(CryptoError::InvalidLength { .. })
            ));
            let long = vec![1u8; m.initiator_value_len() + 1];
            assert!(matches!(
                m.start_and_complete(&mut rng, &long),
                Err(CryptoError::InvalidLength { .. })
            ));
        }
    }

    /// RFC 5903 8.1: the responder's public value is 64 octets x | y and is accepted; the
    /// same x with a wrong y is not on the curve.
    #[test]
    fn ecp256_encoding_and_point_validation() {
        let gr = unhex(
            "D12DFB52 89C8D4F8 1208B702 70398C34 2296970A 0BCCB74C 736FC755 4494BF63
             56FBF3CA 366CC23E 8157854C 13C58D6A AC23F046 ADA30F83 53E74F33 039872AB",
        );
        assert_eq!(gr.len(), 64);
        let mut rng = SeededRandom::from_u64(4);
        let ss = KeMethod::Ecp256
            .start(&mut rng)
            .unwrap()
            .complete(&gr)
            .unwrap();
        assert_eq!(ss.len(), 32);
        let mut bad = gr.clone();
        bad[63] ^= 1;
        assert_eq!(
            KeMethod::Ecp256.start(&mut rng).unwrap().complete(&bad),
            Err(CryptoError::InvalidPublicValue("ECP-256 public value"))
        );
        assert_eq!(
            KeMethod::Ecp256
                .start(&mut rng)
                .unwrap()
                .complete(&bad)
                .unwrap_err()
                .notify(),
            Some(crate::registry::NotifyType::InvalidSyntax)
        );
    }

    /// RFC 8031 2.3 / RFC 7748 6.1: a small-order peer value gives an all-zero secret,
    /// which is refused.
    #[test]
    fn x25519_all_zero_rejected() {
        let mut rng = SeededRandom::from_u64(5);
        for small_order in [[0u8; 32], {
            let mut one = [0u8; 32];
            one[0] = 1;
            one
        }] {
            let init = KeMethod::Curve25519.start(&mut rng).unwrap();
            assert_eq!(
                init.complete(&small_order),
                Err(CryptoError::InvalidPublicValue("Curve25519 public value"))
            );
        }
    }

    #[test]
    fn unknown_ids() {
        assert_eq!(KeMethod::from_id(KeId::Modp2048), None);
        assert_eq!(KeMethod::from_id(KeId::None), None);
        assert!(
            !format!(
                "{:?}",
                KeMethod::Curve25519
                    .start(&mut SeededRandom::from_u64(0))
                    .unwrap()
            )
            .contains('[')
        );
    }
}
