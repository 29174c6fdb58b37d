//! A throw-away X.509 PKI for interop tests, made with `rcgen` at test time.
//!
//! One [`Pki`] is a self-signed CA of one key type; [`Pki::issue`] makes end-entity
//! certificates whose subjectAltName is a dNSName, so an FQDN IKE identity matches it.
//! Everything comes as DER (certificates) and PKCS#8 DER (private keys): what our Rust code
//! consumes, and what charon's swanctl loads from its `x509ca/`, `x509/` and `pkcs8/`
//! folders.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SignatureAlgorithm,
};

use crate::{HarnessError, Result};

/// Key (and signature) type of a PKI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    /// Ed25519 (RFC 8420 in IKEv2).
    Ed25519,
    /// ECDSA on P-256 with SHA-256.
    EcdsaP256,
}

impl KeyType {
    fn alg(self) -> &'static SignatureAlgorithm {
        match self {
            KeyType::Ed25519 => &rcgen::PKCS_ED25519,
            KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        }
    }
}

/// A certificate with its private key.
#[derive(Clone, Debug)]
pub struct Credential {
    /// The FQDN in the certificate's subjectAltName (and its CN).
    pub fqdn: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The private key, PKCS#8 DER (a secret in production; a test fixture here).
    pub key_pkcs8_der: Vec<u8>,
    /// The raw public key (Ed25519: 32 octets; P-256: the uncompressed point).
    pub public_key_raw: Vec<u8>,
}

/// A CA of one key type.
pub struct Pki {
    key_type: KeyType,
    ca_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("key_type", &self.key_type)
            .finish_non_exhaustive()
    }
}

fn err(e: rcgen::Error) -> HarnessError {
    HarnessError::Other(format!("rcgen: {e}"))
}

impl Pki {
    /// A new CA `CN=<name>` with a fresh key.
    pub fn new(key_type: KeyType, name: &str) -> Result<Pki> {
        let key = KeyPair::generate_for(key_type.alg()).map_err(err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "gikev2 tests");
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).map_err(err)?;
        Ok(Pki {
            key_type,
            ca_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The key type.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// An end-entity certificate for `fqdn` (subjectAltName dNSName and CN), signed by
    /// this CA, with a fresh key of the CA's type.
    pub fn issue(&self, fqdn: &str) -> Result<Credential> {
        let key = KeyPair::generate_for(self.key_type.alg()).map_err(err)?;
        let mut params = CertificateParams::new(vec![fqdn.to_string()]).map_err(err)?;
        params
            .distinguished_name
            .push(DnType::OrganizationName, "gikev2 tests");
        params.distinguished_name.push(DnType::CommonName, fqdn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        Ok(Credential {
            fqdn: fqdn.to_string(),
            cert_der: cert.der().to_vec(),
            key_pkcs8_der: key.serialize_der(),
            public_key_raw: key.public_key_raw().to_vec(),
        })
    }
}
