//! X.509 certificates as peer credentials: a [`PeerAuthResolver`] that validates the
//! peer's CERT chain against configured trust anchors with `rustls-webpki`, checks that
//! the identity the peer claimed (IDi/IDr) is named by the end-entity certificate, and
//! hands the IKE SA the certificate's public key (RFC 7296 2.15, 3.5, 3.6; RFC 4945 3.1,
//! 5.1.3).
//!
//! Sans-IO: the verification time comes from the host through a [`Clock`]; nothing here
//! reads the system clock.
//!
//! Profile (RFC 4945 with today's deployments in mind):
//! - CERT payloads of encoding 4 (X.509 Certificate - Signature), end entity first, then
//!   intermediates in any order (RFC 7296 3.6); other encodings are ignored.
//! - Identity: ID_FQDN must be a dNSName, ID_IPV4_ADDR / ID_IPV6_ADDR an iPAddress, and
//!   ID_RFC822_ADDR an rfc822Name of the subjectAltName (RFC 4945 3.1.2-3.1.4; no
//!   fallback to the subject's CN). Other identity types are refused.
//! - keyUsage, when present, must allow digitalSignature or nonRepudiation (RFC 4945
//!   5.1.3.2).
//! - extendedKeyUsage, when present, must contain id-kp-ipsecIKE or anyExtendedKeyUsage
//!   (RFC 4945 5.1.3.12), or serverAuth/clientAuth, which Windows and Apple profiles
//!   and strongSwan's deployment guides put in IKE certificates.
//! - No revocation checking (no CRL/OCSP fetching in a sans-IO core).
//! - Certificate signatures: Ed25519, ECDSA (P-256, P-384) and RSA (PKCS#1 v1.5, PSS), the
//!   algorithms of webpki's ring backend. The end entity's own key must be one
//!   [`PublicKey`] supports (Ed25519, P-256, RSA, ML-DSA).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{debug, warn};
use webpki::{
    EndEntityCert, ExtendedKeyUsageValidator, KeyPurposeIdIter, KeyUsage as Eku,
    RequiredEkuNotFoundContext,
};
use x509_cert::der::Decode;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{KeyUsage, KeyUsages, SubjectAltName};

use crate::crypto::CryptoError;
use crate::crypto::sign::{PublicKey, SignatureScheme};
use crate::registry::{CertEncoding, IdType};
use crate::wire::cert::CertPayload;
use crate::wire::id::IdPayload;

use super::config::{PeerAuth, PeerAuthResolver};

use pki_types::{CertificateDer, DnsName, ServerName, TrustAnchor, UnixTime};

/// The wall clock of the host, read once per validation (sans-IO: the host decides what
/// "now" is, e.g. `Arc::new(SystemTime::now)`, or a fixed time in tests).
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// At most this many intermediate certificates are considered (path building is bounded
/// by webpki as well; this bounds the copying before it).
pub const MAX_INTERMEDIATES: usize = 8;

/// id-kp-ipsecIKE (RFC 4945 5.1.3.12): 1.3.6.1.5.5.7.3.17, DER value.
const EKU_IPSEC_IKE: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x11];
/// anyExtendedKeyUsage (RFC 5280 4.2.1.12): 2.5.29.37.0.
const EKU_ANY: &[u8] = &[0x55, 0x1d, 0x25, 0x00];
/// id-kp-serverAuth: 1.3.6.1.5.5.7.3.1.
const EKU_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
/// id-kp-clientAuth: 1.3.6.1.5.5.7.3.2.
const EKU_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// Why a peer's certificates were not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A configured trust anchor is not a certificate webpki can use.
    #[error("trust anchor {index} is not a usable CA certificate: {reason}")]
    BadTrustAnchor { index: usize, reason: String },
    /// The peer sent no X.509 certificate (encoding 4).
    #[error("no X.509 certificate in the CERT payloads")]
    NoCertificate,
    /// The host's clock is before 1970.
    #[error("the clock is before the Unix epoch")]
    Clock,
    /// The chain did not validate (unknown issuer, expired, bad signature, ...).
    #[error("certificate chain: {0}")]
    Chain(String),
    /// keyUsage forbids signatures (RFC 4945 5.1.3.2).
    #[error("keyUsage allows neither digitalSignature nor nonRepudiation")]
    KeyUsage,
    /// The identity is not named by the certificate.
    #[error("identity {0} is not named by the certificate")]
    IdentityMismatch(String),
    /// An identity type certificates cannot prove here.
    #[error("identity type {0} cannot be matched to a certificate")]
    UnsupportedIdentity(IdType),
    /// The identity differs from the one this resolver requires.
    #[error("identity differs from the expected peer")]
    UnexpectedPeer,
    /// The end entity's public key is malformed or of an unsupported type.
    #[error("public key: {0}")]
    Key(#[from] CryptoError),
}

/// Validates peer certificates; see the module documentation.
#[derive(Clone)]
pub struct CertificateResolver {
    anchors: Vec<TrustAnchor<'static>>,
    clock: Clock,
    peer_id: Option<IdPayload>,
}

impl core::fmt::Debug for CertificateResolver {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CertificateResolver")
            .field("trust_anchors", &self.anchors.len())
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl CertificateResolver {
    /// Trusts the DER CA certificates `trust_anchors`; validates at the time `clock`
    /// returns.
    pub fn new<C: AsRef<[u8]>>(
        trust_anchors: impl IntoIterator<Item = C>,
        clock: Clock,
    ) -> Result<Self, CertError> {
        let anchors = trust_anchors
            .into_iter()
            .enumerate()
            .map(|(index, der)| {
                let der = CertificateDer::from(der.as_ref());
                webpki::anchor_from_trusted_cert(&der)
                    .map(|a| a.to_owned())
                    .map_err(|e| CertError::BadTrustAnchor {
                        index,
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            anchors,
            clock,
            peer_id: None,
        })
    }

    /// Accepts only this peer identity (an initiator that knows whom it talks to); by
    /// default any identity the certificate proves is accepted, and authorization is the
    /// host's business.
    pub fn with_peer_id(mut self, id: IdPayload) -> Self {
        self.peer_id = Some(id);
        self
    }

    /// Validates `certs` for `peer_id` and returns the credential the AUTH payload must
    /// verify under: the end entity's public key with the schemes its type allows.
    pub fn verify(
        &self,
        peer_id: &IdPayload,
        certs: &[CertPayload],
    ) -> Result<PeerAuth, CertError> {
        if self.peer_id.as_ref().is_some_and(|want| want != peer_id) {
            return Err(CertError::UnexpectedPeer);
        }
        let mut x509 = certs
            .iter()
            .filter(|c| c.encoding == CertEncoding::X509Signature)
            .map(|c| CertificateDer::from(c.data.as_slice()));
        let ee_der = x509.next().ok_or(CertError::NoCertificate)?;
        let intermediates: Vec<CertificateDer<'_>> = x509.take(MAX_INTERMEDIATES).collect();
        let since_epoch = (self.clock)()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| CertError::Clock)?;
        let ee = EndEntityCert::try_from(&ee_der).map_err(|e| CertError::Chain(e.to_string()))?;
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            &intermediates,
            UnixTime::since_unix_epoch(since_epoch),
            IkeEku,
            None,
            None,
        )
        .map_err(|e| CertError::Chain(e.to_string()))?;
        // Extensions webpki does not judge for us, read with a DER decoder.
        let cert = x509_cert::Certificate::from_der(ee_der.as_ref())
            .map_err(|_| CryptoError::Malformed("X.509 certificate"))?;
        check_key_usage(&cert)?;
        check_identity(&ee, &cert, peer_id)?;
        let key = PublicKey::from_certificate(ee_der.as_ref())?;
        let schemes: Vec<SignatureScheme> = SignatureScheme::ALL
            .into_iter()
            .filter(|s| key.key_type().fits(*s))
            .collect();
        debug!(peer = ?peer_id, key = ?key.key_type(), "peer certificate validated");
        Ok(PeerAuth::PublicKey { key, schemes })
    }
}

impl PeerAuthResolver for CertificateResolver {
    fn resolve(&self, peer_id: &IdPayload, certs: &[CertPayload]) -> Option<PeerAuth> {
        match self.verify(peer_id, certs) {
            Ok(auth) => Some(auth),
            Err(e) => {
                warn!(peer = ?peer_id, error = %e, "peer certificate refused");
                None
            }
        }
    }
}

/// The EKU rule of the module documentation.
struct IkeEku;

impl ExtendedKeyUsageValidator for IkeEku {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        let accepted = [EKU_IPSEC_IKE, EKU_ANY, EKU_SERVER_AUTH, EKU_CLIENT_AUTH]
            .map(webpki::KeyPurposeId::new);
        let mut present = Vec::new();
        for id in iter {
            let id = id?;
            if accepted.contains(&id) {
                return Ok(());
            }
            present.push(id.to_decoded_oid());
        }
        if present.is_empty() {
            Ok(())
        } else {
            Err(webpki::Error::RequiredEkuNotFoundContext(
                RequiredEkuNotFoundContext {
                    required: Eku::required_if_present(EKU_IPSEC_IKE),
                    present,
                },
            ))
        }
    }
}

/// RFC 4945 5.1.3.2: a keyUsage present must allow digitalSignature or nonRepudiation.
fn check_key_usage(cert: &x509_cert::Certificate) -> Result<(), CertError> {
    match cert.tbs_certificate().get_extension::<KeyUsage>() {
        Ok(None) => Ok(()),
        Ok(Some((_, ku)))
            if ku.0.contains(KeyUsages::DigitalSignature)
                || ku.0.contains(KeyUsages::NonRepudiation) =>
        {
            Ok(())
        }
        Ok(Some(_)) => Err(CertError::KeyUsage),
        Err(_) => Err(CryptoError::Malformed("keyUsage extension").into()),
    }
}

/// RFC 4945 3.1: the identity must be named by a subjectAltName of the matching type.
fn check_identity(
    ee: &EndEntityCert<'_>,
    cert: &x509_cert::Certificate,
    id: &IdPayload,
) -> Result<(), CertError> {
    let mismatch = || CertError::IdentityMismatch(describe(id));
    match id.ty {
        IdType::Fqdn => {
            let name = id.as_text().ok_or_else(mismatch)?;
            let dns = DnsName::try_from(name).map_err(|_| mismatch())?;
            ee.verify_is_valid_for_subject_name(&ServerName::DnsName(dns))
                .map_err(|_| mismatch())
        }
        IdType::Ipv4Addr | IdType::Ipv6Addr => {
            let ip = id.as_ip().ok_or_else(mismatch)?;
            ee.verify_is_valid_for_subject_name(&ServerName::IpAddress(ip.into()))
                .map_err(|_| mismatch())
        }
        IdType::Rfc822Addr => {
            let addr = id.as_text().ok_or_else(mismatch)?;
            let san = cert
                .tbs_certificate()
                .get_extension::<SubjectAltName>()
                .map_err(|_| CryptoError::Malformed("subjectAltName extension"))?;
            let named = san.is_some_and(|(_, san)| {
                san.0.iter().any(|n| match n {
                    GeneralName::Rfc822Name(m) => same_mailbox(m.as_ref(), addr),
                    _ => false,
                })
            });
            if named { Ok(()) } else { Err(mismatch()) }
        }
        other => Err(CertError::UnsupportedIdentity(other)),
    }
}

/// RFC 5280 4.2.1.6: the local part is compared exactly, the host part without regard
/// to case.
fn same_mailbox(in_cert: &str, claimed: &str) -> bool {
    match (in_cert.rsplit_once('@'), claimed.rsplit_once('@')) {
        (Some((l1, h1)), Some((l2, h2))) => l1 == l2 && h1.eq_ignore_ascii_case(h2),
        _ => false,
    }
}

fn describe(id: &IdPayload) -> String {
    match (id.as_text(), id.as_ip()) {
        (Some(t), _) => format!("{}:{t}", id.ty),
        (_, Some(ip)) => format!("{}:{ip}", id.ty),
        _ => format!("{}", id.ty),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::sign::KeyType;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType, SignatureAlgorithm,
    };
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    struct Ca {
        der: Vec<u8>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca(alg: &'static SignatureAlgorithm, name: &str) -> Ca {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).unwrap();
        Ca {
            der: cert.der().to_vec(),
            issuer: Issuer::new(p, key),
        }
    }

    /// An intermediate CA signed by `parent`.
    fn sub_ca(parent: &Ca, alg: &'static SignatureAlgorithm) -> Ca {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "intermediate");
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let cert = p.signed_by(&key, &parent.issuer).unwrap();
        Ca {
            der: cert.der().to_vec(),
            issuer: Issuer::new(p, key),
        }
    }

    fn leaf_with(
        issuer: &Ca,
        alg: &'static SignatureAlgorithm,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Vec<u8> {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut p = CertificateParams::new(vec!["gcks.example".to_string()]).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "gcks.example");
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.not_before = rcgen::date_time_ymd(2024, 1, 1);
        p.not_after = rcgen::date_time_ymd(2034, 1, 1);
        adjust(&mut p);
        p.signed_by(&key, &issuer.issuer).unwrap().der().to_vec()
    }

    fn leaf(issuer: &Ca, alg: &'static SignatureAlgorithm) -> Vec<u8> {
        leaf_with(issuer, alg, |_| {})
    }

    fn at(year_offset_days: u64) -> Clock {
        // 2025-01-01T00:00:00Z plus some days.
        let t = UNIX_EPOCH + Duration::from_secs(1_735_689_600 + year_offset_days * 86_400);
        Arc::new(move || t)
    }

    fn fqdn(s: &str) -> IdPayload {
        IdPayload::fqdn(s).unwrap()
    }

    fn chain(certs: &[&[u8]]) -> Vec<CertPayload> {
        certs
            .iter()
            .map(|c| CertPayload::x509(c.to_vec()))
            .collect()
    }

    fn resolver(anchors: &[&Ca], clock: Clock) -> CertificateResolver {
        CertificateResolver::new(anchors.iter().map(|a| a.der.clone()), clock).unwrap()
    }

    #[test]
    fn good_chain_yields_the_key_and_its_schemes() {
        for (alg, kt, scheme) in [
            (
                &rcgen::PKCS_ED25519,
                KeyType::Ed25519,
                SignatureScheme::Ed25519,
            ),
            (
                &rcgen::PKCS_ECDSA_P256_SHA256,
                KeyType::EcP256,
                SignatureScheme::EcdsaP256Sha256,
            ),
        ] {
            let root = ca(alg, "root");
            let ee = leaf(&root, alg);
            let r = resolver(&[&root], at(0));
            let auth = r.verify(&fqdn("gcks.example"), &chain(&[&ee])).unwrap();
            let PeerAuth::PublicKey { key, schemes } = auth else {
                panic!("public key expected")
            };
            assert_eq!(key, PublicKey::from_certificate(&ee).unwrap());
            assert_eq!(key.key_type(), kt);
            assert_eq!(schemes, vec![scheme]);
            // Case-insensitive DNS comparison; resolve() agrees with verify().
            assert!(r.resolve(&fqdn("GCKS.example"), &chain(&[&ee])).is_some());
        }
    }

    #[test]
    fn intermediates_are_used_and_other_encodings_ignored() {
        let root = ca(&rcgen::PKCS_ECDSA_P256_SHA256, "root");
        let mid = sub_ca(&root, &rcgen::PKCS_ECDSA_P256_SHA256);
        let ee = leaf(&mid, &rcgen::PKCS_ED25519);
        let r = resolver(&[&root], at(0));
        let mut certs = chain(&[&ee, &mid.der]);
        certs.insert(
            0,
            CertPayload::new(CertEncoding::RawPublicKey, vec![1, 2, 3]),
        );
        assert!(r.verify(&fqdn("gcks.example"), &certs).is_ok());
        // Without the intermediate there is no path.
        assert!(matches!(
            r.verify(&fqdn("gcks.example"), &chain(&[&ee])),
            Err(CertError::Chain(_))
        ));
    }

    #[test]
    fn wrong_ca_is_refused() {
        let root = ca(&rcgen::PKCS_ED25519, "root");
        let r = resolver(&[&root], at(0));
        let other = ca(&rcgen::PKCS_ED25519, "other root");
        let ee = leaf(&other, &rcgen::PKCS_ED25519);
        let err = r.verify(&fqdn("gcks.example"), &chain(&[&ee])).unwrap_err();
        assert!(
            matches!(err, CertError::Chain(ref s) if s.contains("UnknownIssuer")),
            "{err}"
        );
        assert!(r.resolve(&fqdn("gcks.example"), &chain(&[&ee])).is_none());
        // An impostor CA with the trusted CA's name: the signature gives it away.
        let impostor = ca(&rcgen::PKCS_ED25519, "root");
        let ee = leaf(&impostor, &rcgen::PKCS_ED25519);
        let err = r.verify(&fqdn("gcks.example"), &chain(&[&ee])).unwrap_err();
        assert!(
            matches!(err, CertError::Chain(ref s) if s.contains("InvalidSignature")),
            "{err}"
        );
    }

    #[test]
    fn validity_follows_the_callers_clock() {
        let root = ca(&rcgen::PKCS_ECDSA_P256_SHA256, "root");
        let ee = leaf(&root, &rcgen::PKCS_ECDSA_P256_SHA256);
        let id = fqdn("gcks.example");
        // 2034-01-01 is not_after: ten years on, expired.
        let late = resolver(&[&root], at(3653 + 365));
        let err = late.verify(&id, &chain(&[&ee])).unwrap_err();
        assert!(
            matches!(err, CertError::Chain(ref s) if s.contains("Expired")),
            "{err}"
        );
        // Before not_before (2024-01-01).
        let early = CertificateResolver::new(
            [root.der.clone()],
            Arc::new(|| UNIX_EPOCH + Duration::from_secs(1_600_000_000)),
        )
        .unwrap();
        let err = early.verify(&id, &chain(&[&ee])).unwrap_err();
        assert!(
            matches!(err, CertError::Chain(ref s) if s.contains("NotValidYet")),
            "{err}"
        );
        assert!(
            resolver(&[&root], at(10))
                .verify(&id, &chain(&[&ee]))
                .is_ok()
        );
    }

    #[test]
    fn identity_must_be_named_by_the_certificate() {
        let root = ca(&rcgen::PKCS_ED25519, "root");
        let ee = leaf_with(&root, &rcgen::PKCS_ED25519, |p| {
            p.subject_alt_names = vec![
                SanType::DnsName("gcks.example".try_into().unwrap()),
                SanType::Rfc822Name("Admin@Example.org".try_into().unwrap()),
                SanType::IpAddress(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))),
            ];
        });
        let r = resolver(&[&root], at(0));
        let certs = chain(&[&ee]);
        let ok = [
            fqdn("gcks.example"),
            IdPayload::rfc822("Admin@example.ORG").unwrap(),
            IdPayload::ipv4(Ipv4Addr::new(192, 0, 2, 7)),
        ];
        for id in ok {
            assert!(r.verify(&id, &certs).is_ok(), "{id:?}");
        }
        let bad = [
            fqdn("gm1.example"),
            fqdn("example"),
            // The CN is not consulted.
            IdPayload::rfc822("admin@example.org").unwrap(),
            IdPayload::ipv4(Ipv4Addr::new(192, 0, 2, 8)),
            IdPayload::ipv6("2001:db8::7".parse().unwrap()),
        ];
        for id in bad {
            assert!(
                matches!(r.verify(&id, &certs), Err(CertError::IdentityMismatch(_))),
                "{id:?}"
            );
        }
        assert!(matches!(
            r.verify(&IdPayload::key_id(b"gcks".to_vec()), &certs),
            Err(CertError::UnsupportedIdentity(IdType::KeyId))
        ));
        // A pinned peer identity refuses any other, even one the certificate names.
        let pinned = r.clone().with_peer_id(fqdn("gm1.example"));
        assert!(matches!(
            pinned.verify(&fqdn("gcks.example"), &certs),
            Err(CertError::UnexpectedPeer)
        ));
    }

    #[test]
    fn key_usage_and_eku_follow_rfc_4945() {
        let root = ca(&rcgen::PKCS_ED25519, "root");
        let r = resolver(&[&root], at(0));
        let id = fqdn("gcks.example");
        let enc_only = leaf_with(&root, &rcgen::PKCS_ED25519, |p| {
            p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
        });
        assert!(matches!(
            r.verify(&id, &chain(&[&enc_only])),
            Err(CertError::KeyUsage)
        ));
        let server = leaf_with(&root, &rcgen::PKCS_ED25519, |p| {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        });
        assert!(r.verify(&id, &chain(&[&server])).is_ok());
        let ike = leaf_with(&root, &rcgen::PKCS_ED25519, |p| {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::Other(vec![
                1, 3, 6, 1, 5, 5, 7, 3, 17,
            ])];
        });
        assert!(r.verify(&id, &chain(&[&ike])).is_ok());
        let code = leaf_with(&root, &rcgen::PKCS_ED25519, |p| {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        });
        assert!(matches!(
            r.verify(&id, &chain(&[&code])),
            Err(CertError::Chain(_))
        ));
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let root = ca(&rcgen::PKCS_ED25519, "root");
        let r = resolver(&[&root], at(0));
        let id = fqdn("gcks.example");
        assert!(matches!(r.verify(&id, &[]), Err(CertError::NoCertificate)));
        assert!(matches!(
            r.verify(&id, &chain(&[&[0x30, 0x03, 0x02, 0x01, 0x00]])),
            Err(CertError::Chain(_))
        ));
        assert!(matches!(
            CertificateResolver::new([vec![1u8, 2, 3]], at(0)),
            Err(CertError::BadTrustAnchor { index: 0, .. })
        ));
        let before_epoch = CertificateResolver::new(
            [root.der.clone()],
            Arc::new(|| UNIX_EPOCH - Duration::from_secs(1)),
        )
        .unwrap();
        let ee = leaf(&root, &rcgen::PKCS_ED25519);
        assert!(matches!(
            before_epoch.verify(&id, &chain(&[&ee])),
            Err(CertError::Clock)
        ));
    }
}
