//! Signature schemes for IKEv2 AUTH method 14 (RFC 7427) and GSA_REKEY authentication
//! (RFC 9838 2.4.1.1): Ed25519 (RFC 8420), ECDSA P-256 with SHA-256, RSASSA-PSS with
//! SHA-256 (RFC 7427 A.4.3), and pure ML-DSA-44/65/87 with an empty context.
//!
//! Each scheme has its DER AlgorithmIdentifier (the RFC 7427 ASN.1 object and the
//! G-IKEv2 Signature Algorithm Identifier attribute), the RFC 7427 hash it needs in
//! SIGNATURE_HASH_ALGORITHMS, a signer loaded from PKCS#8 and a verifier built from a
//! SubjectPublicKeyInfo (AUTH_KEY, RFC 9838 4.5.3.2; certificates).
//!
//! Randomness: ECDSA and RSA-PSS signing (ring) and ML-DSA signing (aws-lc-rs, hedged)
//! draw nonces/salts from the OS CSPRNG inside the library; Ed25519 is deterministic.
//! Key generation (test helper) also uses the OS CSPRNG, except
//! [`SigningKey::ml_dsa_from_seed`].

use super::{CryptoError, SecretBytes};
use crate::registry::HashAlgorithm;
use aws_lc_rs::signature::{self as lc_sig, KeyPair as _};
use ring::signature::{self as ring_sig, KeyPair as _};
use spki::der::asn1::{AnyRef, BitStringRef, ObjectIdentifier};
use spki::der::{Decode, Encode};
use spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoRef};

/// A signature scheme usable in AUTH method 14 and GSA_REKEY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureScheme {
    Ed25519,
    EcdsaP256Sha256,
    RsaPssSha256,
    MlDsa44,
    MlDsa65,
    MlDsa87,
}

/// The kind of a public or private key, as named by its SubjectPublicKeyInfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    Ed25519,
    EcP256,
    Rsa,
    MlDsa44,
    MlDsa65,
    MlDsa87,
}

/// RFC 8410 3 / RFC 8420: id-Ed25519, parameters absent.
const ALG_ED25519: &[u8] = &[0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];
/// RFC 7427 A.3.2: ecdsa-with-SHA256, parameters absent.
const ALG_ECDSA_SHA256: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];
/// RFC 7427 A.4.3: id-RSASSA-PSS with SHA-256, MGF1-SHA-256, salt 32, trailerField 1
/// (written out although DEFAULT, as the RFC and deployed implementations do).
const ALG_RSA_PSS_SHA256: &[u8] = &[
    0x30, 0x46, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a, 0x30, 0x39, 0xa0,
    0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00,
    0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08, 0x30,
    0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0xa2, 0x03,
    0x02, 0x01, 0x20, 0xa3, 0x03, 0x02, 0x01, 0x01,
];
/// The same parameters in strict DER (trailerField omitted as DEFAULT); accepted on
/// receipt only.
const ALG_RSA_PSS_SHA256_DER: &[u8] = &[
    0x30, 0x41, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a, 0x30, 0x34, 0xa0,
    0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00,
    0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08, 0x30,
    0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0xa2, 0x03,
    0x02, 0x01, 0x20,
];
/// id-ml-dsa-44/65/87 (2.16.840.1.101.3.4.3.17/18/19), parameters absent (IANA.md).
const ALG_ML_DSA_44: &[u8] = &[
    0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x11,
];
const ALG_ML_DSA_65: &[u8] = &[
    0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x12,
];
const ALG_ML_DSA_87: &[u8] = &[
    0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x13,
];

const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_PRIME256V1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
const OID_ML_DSA_44: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.3.17");
const OID_ML_DSA_65: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.3.18");
const OID_ML_DSA_87: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.3.19");

impl SignatureScheme {
    pub const ALL: [Self; 6] = [
        Self::Ed25519,
        Self::EcdsaP256Sha256,
        Self::RsaPssSha256,
        Self::MlDsa44,
        Self::MlDsa65,
        Self::MlDsa87,
    ];

    /// The DER AlgorithmIdentifier we send (RFC 7427 3 and appendix A).
    pub const fn algorithm_identifier(self) -> &'static [u8] {
        match self {
            Self::Ed25519 => ALG_ED25519,
            Self::EcdsaP256Sha256 => ALG_ECDSA_SHA256,
            Self::RsaPssSha256 => ALG_RSA_PSS_SHA256,
            Self::MlDsa44 => ALG_ML_DSA_44,
            Self::MlDsa65 => ALG_ML_DSA_65,
            Self::MlDsa87 => ALG_ML_DSA_87,
        }
    }

    /// The scheme named by a received AlgorithmIdentifier, compared as a binary blob
    /// (RFC 7427 3). RSASSA-PSS is accepted with or without the DEFAULT trailerField.
    pub fn from_algorithm_identifier(der: &[u8]) -> Option<Self> {
        if der == ALG_RSA_PSS_SHA256_DER {
            return Some(Self::RsaPssSha256);
        }
        Self::ALL
            .into_iter()
            .find(|s| s.algorithm_identifier() == der)
    }

    /// The hash this scheme uses, to check against SIGNATURE_HASH_ALGORITHMS (RFC 7427 4):
    /// Identity for Ed25519 (RFC 8420 2) and ML-DSA (pure mode), SHA2-256 otherwise.
    pub const fn hash_algorithm(self) -> HashAlgorithm {
        match self {
            Self::Ed25519 | Self::MlDsa44 | Self::MlDsa65 | Self::MlDsa87 => {
                HashAlgorithm::Identity
            }
            Self::EcdsaP256Sha256 | Self::RsaPssSha256 => HashAlgorithm::Sha2_256,
        }
    }

    /// The key type that signs with this scheme.
    pub const fn key_type(self) -> KeyType {
        match self {
            Self::Ed25519 => KeyType::Ed25519,
            Self::EcdsaP256Sha256 => KeyType::EcP256,
            Self::RsaPssSha256 => KeyType::Rsa,
            Self::MlDsa44 => KeyType::MlDsa44,
            Self::MlDsa65 => KeyType::MlDsa65,
            Self::MlDsa87 => KeyType::MlDsa87,
        }
    }

    /// Signature length for fixed-size schemes (Ed25519 64; ML-DSA per FIPS 204 table 2);
    /// `None` for DER ECDSA and for RSA (the modulus size).
    pub const fn fixed_signature_len(self) -> Option<usize> {
        match self {
            Self::Ed25519 => Some(64),
            Self::MlDsa44 => Some(2420),
            Self::MlDsa65 => Some(3309),
            Self::MlDsa87 => Some(4627),
            Self::EcdsaP256Sha256 | Self::RsaPssSha256 => None,
        }
    }

    fn ml_dsa(
        self,
    ) -> Option<(
        &'static lc_sig::PqdsaSigningAlgorithm,
        &'static lc_sig::PqdsaVerificationAlgorithm,
    )> {
        match self {
            Self::MlDsa44 => Some((&lc_sig::ML_DSA_44_SIGNING, &lc_sig::ML_DSA_44)),
            Self::MlDsa65 => Some((&lc_sig::ML_DSA_65_SIGNING, &lc_sig::ML_DSA_65)),
            Self::MlDsa87 => Some((&lc_sig::ML_DSA_87_SIGNING, &lc_sig::ML_DSA_87)),
            _ => None,
        }
    }
}

impl KeyType {
    /// Whether a key of this type can verify `scheme` (ERRATA.md on RFC 9838 4.5.3.2: the
    /// SPKI algorithm must fit the signature algorithm, byte equality being impossible
    /// for ECDSA and RSA).
    pub fn fits(self, scheme: SignatureScheme) -> bool {
        scheme.key_type() == self
    }
}

/// A verification key parsed from a DER SubjectPublicKeyInfo (RFC 5280 4.1.2.7).
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key_type: KeyType,
    /// The subjectPublicKey bits: a raw key (Ed25519, ML-DSA), an uncompressed point
    /// (EC), or an RSAPublicKey (RSA).
    raw: Vec<u8>,
}

impl PublicKey {
    /// Parses a DER SubjectPublicKeyInfo with a DER decoder (no trailing data). Key types:
    /// Ed25519; id-ecPublicKey on P-256 only; rsaEncryption and id-RSASSA-PSS; ML-DSA.
    pub fn from_spki(der: &[u8]) -> Result<Self, CryptoError> {
        let spki = SubjectPublicKeyInfoRef::from_der(der)
            .map_err(|_| CryptoError::Malformed("SubjectPublicKeyInfo"))?;
        let raw = spki
            .subject_public_key
            .as_bytes()
            .ok_or(CryptoError::Malformed("SubjectPublicKeyInfo key bits"))?;
        let oid = spki.algorithm.oid;
        let params = spki.algorithm.parameters;
        let absent = |ok: KeyType| {
            if params.is_none() {
                Ok(ok)
            } else {
                Err(CryptoError::Malformed("SubjectPublicKeyInfo parameters"))
            }
        };
        let key_type = if oid == OID_ED25519 {
            absent(KeyType::Ed25519)?
        } else if oid == OID_ML_DSA_44 {
            absent(KeyType::MlDsa44)?
        } else if oid == OID_ML_DSA_65 {
            absent(KeyType::MlDsa65)?
        } else if oid == OID_ML_DSA_87 {
            absent(KeyType::MlDsa87)?
        } else if oid == OID_EC_PUBLIC_KEY {
            let curve = params
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
                .ok_or(CryptoError::Malformed("EC SubjectPublicKeyInfo curve"))?;
            if curve != OID_PRIME256V1 {
                return Err(CryptoError::Unsupported("elliptic curve"));
            }
            KeyType::EcP256
        } else if oid == OID_RSASSA_PSS {
            // RFC 9838 4.5.3.2 (R102), RFC 4055 3.1: with id-RSASSA-PSS the parameters
            // MUST be the RSASSA-PSS-params structure, a SEQUENCE (every field of which
            // has a default).
            match params {
                Some(p) if spki::der::Tagged::tag(&p) == spki::der::Tag::Sequence => KeyType::Rsa,
                _ => {
                    return Err(CryptoError::Malformed(
                        "id-RSASSA-PSS SubjectPublicKeyInfo without RSASSA-PSS-params",
                    ));
                }
            }
        } else if oid == OID_RSA_ENCRYPTION {
            KeyType::Rsa
        } else {
            return Err(CryptoError::Unsupported("public key algorithm"));
        };
        let want = match key_type {
            KeyType::Ed25519 => Some(32),
            KeyType::EcP256 => Some(65),
            KeyType::MlDsa44 => Some(1312),
            KeyType::MlDsa65 => Some(1952),
            KeyType::MlDsa87 => Some(2592),
            KeyType::Rsa => None,
        };
        if want.is_some_and(|w| w != raw.len()) {
            return Err(CryptoError::InvalidLength {
                what: "public key",
                len: raw.len(),
            });
        }
        Ok(Self {
            key_type,
            raw: raw.to_vec(),
        })
    }

    /// The public key of a DER X.509 certificate (CERT payload encoding 4, RFC 7296 3.6).
    /// Only decodes: validating the certificate (chain, validity, name) is the caller's
    /// policy.
    pub fn from_certificate(der: &[u8]) -> Result<Self, CryptoError> {
        let cert = x509_cert::Certificate::from_der(der)
            .map_err(|_| CryptoError::Malformed("X.509 certificate"))?;
        let spki = cert
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .map_err(|_| CryptoError::Malformed("X.509 certificate public key"))?;
        Self::from_spki(&spki)
    }

    /// The DER SubjectPublicKeyInfo (for the AUTH_KEY attribute). RSA keys are written with
    /// rsaEncryption and NULL parameters.
    pub fn to_spki(&self) -> Result<Vec<u8>, CryptoError> {
        let enc_err = |_| CryptoError::Internal("SubjectPublicKeyInfo encoding");
        let curve_der;
        let (oid, parameters) = match self.key_type {
            KeyType::Ed25519 => (OID_ED25519, None),
            KeyType::MlDsa44 => (OID_ML_DSA_44, None),
            KeyType::MlDsa65 => (OID_ML_DSA_65, None),
            KeyType::MlDsa87 => (OID_ML_DSA_87, None),
            KeyType::Rsa => (OID_RSA_ENCRYPTION, Some(AnyRef::NULL)),
            KeyType::EcP256 => {
                curve_der = OID_PRIME256V1.to_der().map_err(enc_err)?;
                (
                    OID_EC_PUBLIC_KEY,
                    Some(AnyRef::from_der(&curve_der).map_err(enc_err)?),
                )
            }
        };
        let spki = SubjectPublicKeyInfoRef {
            algorithm: AlgorithmIdentifierRef { oid, parameters },
            subject_public_key: BitStringRef::from_bytes(&self.raw).map_err(enc_err)?,
        };
        spki.to_der().map_err(enc_err)
    }

    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The subjectPublicKey bits.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Verifies `signature` over `message` with `scheme`, which the key type must fit.
    /// Every failure is [`CryptoError::AuthenticationFailed`].
    pub fn verify(
        &self,
        scheme: SignatureScheme,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        if !self.key_type.fits(scheme) {
            return Err(CryptoError::AuthenticationFailed(
                "key type does not fit the signature algorithm",
            ));
        }
        if scheme
            .fixed_signature_len()
            .is_some_and(|l| l != signature.len())
        {
            return Err(CryptoError::AuthenticationFailed("signature length"));
        }
        let ok = if let Some((_, alg)) = scheme.ml_dsa() {
            lc_sig::UnparsedPublicKey::new(alg, &self.raw)
                .verify(message, signature)
                .is_ok()
        } else {
            let alg: &'static dyn ring_sig::VerificationAlgorithm = match scheme {
                SignatureScheme::Ed25519 => &ring_sig::ED25519,
                SignatureScheme::EcdsaP256Sha256 => &ring_sig::ECDSA_P256_SHA256_ASN1,
                _ => &ring_sig::RSA_PSS_2048_8192_SHA256,
            };
            ring_sig::UnparsedPublicKey::new(alg, &self.raw)
                .verify(message, signature)
                .is_ok()
        };
        if ok {
            Ok(())
        } else {
            Err(CryptoError::AuthenticationFailed(
                "signature did not verify",
            ))
        }
    }
}

impl core::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PublicKey")
            .field("key_type", &self.key_type)
            .field("len", &self.raw.len())
            .finish()
    }
}

enum Signer {
    Ed25519(ring_sig::Ed25519KeyPair),
    Ecdsa(ring_sig::EcdsaKeyPair),
    Rsa(ring_sig::RsaKeyPair),
    MlDsa(lc_sig::PqdsaKeyPair),
}

/// A private signing key bound to its scheme. `Debug` prints the scheme only; the
/// backends hold (and, for aws-lc-rs, free) the key material.
pub struct SigningKey {
    scheme: SignatureScheme,
    signer: Signer,
}

impl SigningKey {
    /// Loads a PKCS#8 (RFC 5208 / RFC 5958) private key for `scheme`.
    pub fn from_pkcs8(scheme: SignatureScheme, der: &[u8]) -> Result<Self, CryptoError> {
        let signer = match scheme {
            SignatureScheme::Ed25519 => Signer::Ed25519(
                ring_sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(rej_pkcs8)?,
            ),
            SignatureScheme::EcdsaP256Sha256 => Signer::Ecdsa(
                ring_sig::EcdsaKeyPair::from_pkcs8(
                    &ring_sig::ECDSA_P256_SHA256_ASN1_SIGNING,
                    der,
                    &ring::rand::SystemRandom::new(),
                )
                .map_err(rej_pkcs8)?,
            ),
            SignatureScheme::RsaPssSha256 => {
                Signer::Rsa(ring_sig::RsaKeyPair::from_pkcs8(der).map_err(rej_pkcs8)?)
            }
            s => {
                let (alg, _) = s.ml_dsa().ok_or(CryptoError::Unsupported("signature"))?;
                Signer::MlDsa(lc_sig::PqdsaKeyPair::from_pkcs8(alg, der).map_err(rej_pkcs8)?)
            }
        };
        Ok(Self { scheme, signer })
    }

    /// An ML-DSA key from its 32-octet seed (FIPS 204 ML-DSA.KeyGen_internal), for
    /// deterministic tests and seed-based key storage.
    pub fn ml_dsa_from_seed(scheme: SignatureScheme, seed: &[u8; 32]) -> Result<Self, CryptoError> {
        let (alg, _) = scheme.ml_dsa().ok_or(CryptoError::Unsupported(
            "seeded key for a non-ML-DSA scheme",
        ))?;
        let kp = lc_sig::PqdsaKeyPair::from_seed(alg, seed)
            .map_err(|_| CryptoError::KeyRejected("ML-DSA seed"))?;
        Ok(Self {
            scheme,
            signer: Signer::MlDsa(kp),
        })
    }

    /// Generates a key (OS CSPRNG) and returns it with its PKCS#8 encoding. RSA keys are
    /// 2048 bits. For tests and provisioning tools.
    pub fn generate(scheme: SignatureScheme) -> Result<(Self, SecretBytes), CryptoError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = match scheme {
            SignatureScheme::Ed25519 => SecretBytes::from_slice(
                ring_sig::Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(gen_err)?
                    .as_ref(),
            ),
            SignatureScheme::EcdsaP256Sha256 => SecretBytes::from_slice(
                ring_sig::EcdsaKeyPair::generate_pkcs8(
                    &ring_sig::ECDSA_P256_SHA256_ASN1_SIGNING,
                    &rng,
                )
                .map_err(gen_err)?
                .as_ref(),
            ),
            SignatureScheme::RsaPssSha256 => {
                use aws_lc_rs::encoding::AsDer;
                let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                    .map_err(gen_err)?;
                let der = kp.as_der().map_err(gen_err)?;
                SecretBytes::from_slice(der.as_ref())
            }
            s => {
                let (alg, _) = s.ml_dsa().ok_or(CryptoError::Unsupported("signature"))?;
                let kp = lc_sig::PqdsaKeyPair::generate(alg).map_err(gen_err)?;
                SecretBytes::from_slice(kp.to_pkcs8v1().map_err(gen_err)?.as_ref())
            }
        };
        Ok((Self::from_pkcs8(scheme, pkcs8.as_bytes())?, pkcs8))
    }

    pub fn scheme(&self) -> SignatureScheme {
        self.scheme
    }

    /// The matching verification key.
    pub fn public_key(&self) -> PublicKey {
        let (key_type, raw) = match &self.signer {
            Signer::Ed25519(k) => (KeyType::Ed25519, k.public_key().as_ref().to_vec()),
            Signer::Ecdsa(k) => (KeyType::EcP256, k.public_key().as_ref().to_vec()),
            Signer::Rsa(k) => (KeyType::Rsa, k.public_key().as_ref().to_vec()),
            Signer::MlDsa(k) => (self.scheme.key_type(), k.public_key().as_ref().to_vec()),
        };
        PublicKey { key_type, raw }
    }

    /// Signs `message` (the whole message: the schemes hash internally, or not at all).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        match &self.signer {
            Signer::Ed25519(k) => Ok(k.sign(message).as_ref().to_vec()),
            Signer::Ecdsa(k) => Ok(k
                .sign(&ring::rand::SystemRandom::new(), message)
                .map_err(sign_err)?
                .as_ref()
                .to_vec()),
            Signer::Rsa(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(
                    &ring_sig::RSA_PSS_SHA256,
                    &ring::rand::SystemRandom::new(),
                    message,
                    &mut sig,
                )
                .map_err(sign_err)?;
                Ok(sig)
            }
            Signer::MlDsa(k) => {
                let mut sig = vec![0u8; k.algorithm().signature_len()];
                let n = k.sign(message, &mut sig).map_err(sign_err)?;
                sig.truncate(n);
                Ok(sig)
            }
        }
    }
}

impl core::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SigningKey")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

fn rej_pkcs8<E>(_: E) -> CryptoError {
    CryptoError::KeyRejected("PKCS#8 private key")
}

fn gen_err<E>(_: E) -> CryptoError {
    CryptoError::Internal("key generation")
}

fn sign_err<E>(_: E) -> CryptoError {
    CryptoError::Internal("signing")
}

/// Encodes RFC 7427 Authentication Data: `ASN.1 Length | AlgorithmIdentifier | Signature`.
pub fn encode_auth_data(scheme: SignatureScheme, signature: &[u8]) -> Vec<u8> {
    let alg = scheme.algorithm_identifier();
    let mut v = Vec::with_capacity(1 + alg.len() + signature.len());
    // Every AlgorithmIdentifier here is shorter than 256 octets.
    v.push(u8::try_from(alg.len()).unwrap_or(u8::MAX));
    v.extend_from_slice(alg);
    v.extend_from_slice(signature);
    v
}

/// Parses RFC 7427 Authentication Data into the AlgorithmIdentifier and the signature.
///
/// Strict: the ASN.1 Length must be non-zero and within the data, the AlgorithmIdentifier
/// must be one DER SEQUENCE filling exactly that length, and a non-empty signature must
/// follow; otherwise [`CryptoError::Malformed`] (INVALID_SYNTAX).
pub fn parse_auth_data(data: &[u8]) -> Result<(&[u8], &[u8]), CryptoError> {
    let (&len, rest) = data
        .split_first()
        .ok_or(CryptoError::Malformed("RFC 7427 Authentication Data"))?;
    let len = usize::from(len);
    if len == 0 || rest.len() <= len {
        return Err(CryptoError::Malformed("RFC 7427 Authentication Data"));
    }
    let (alg, sig) = rest.split_at(len);
    AlgorithmIdentifierRef::from_der(alg)
        .map_err(|_| CryptoError::Malformed("RFC 7427 AlgorithmIdentifier"))?;
    Ok((alg, sig))
}

/// Parses RFC 7427 Authentication Data and resolves the scheme. An AlgorithmIdentifier
/// that is well formed but unknown is [`CryptoError::AuthenticationFailed`].
pub fn parse_auth_data_scheme(data: &[u8]) -> Result<(SignatureScheme, &[u8]), CryptoError> {
    let (alg, sig) = parse_auth_data(data)?;
    let scheme = SignatureScheme::from_algorithm_identifier(alg).ok_or(
        CryptoError::AuthenticationFailed("unsupported signature algorithm"),
    )?;
    Ok((scheme, sig))
}
