//! Signature schemes, RFC 7427 AlgorithmIdentifiers and AUTH data, SPKI keys, and the
//! RFC 7296 2.15 AUTH computations.

use gikev2_proto::crypto::auth::{
    KEY_PAD, PaddedPsk, maced_id, sign_auth, signed_octets, verify_auth,
};
use gikev2_proto::crypto::sign::{encode_auth_data, parse_auth_data, parse_auth_data_scheme};
use gikev2_proto::crypto::{CryptoError, KeyType, PrfAlg, PublicKey, SignatureScheme, SigningKey};
use gikev2_proto::registry::{HashAlgorithm, NotifyType};
use ring::hmac;

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    hex::decode(s).unwrap()
}

/// RFC 7427 appendix A, byte for byte (A.3.2, A.4.3); Ed25519 from RFC 8420 / RFC 8410;
/// ML-DSA from the OIDs in IANA.md with absent parameters.
#[test]
fn algorithm_identifiers_are_byte_exact() {
    let cases = [
        (
            SignatureScheme::EcdsaP256Sha256,
            "300a 0608 2a86 48ce 3d04 0302",
        ),
        (
            SignatureScheme::RsaPssSha256,
            "3046 0609 2a86 4886 f70d 0101 0a30 39a0
             0f30 0d06 0960 8648 0165 0304 0201 0500
             a11c 301a 0609 2a86 4886 f70d 0101 0830
             0d06 0960 8648 0165 0304 0201 0500 a203
             0201 20a3 0302 0101",
        ),
        (SignatureScheme::Ed25519, "3005 0603 2b65 70"),
        (SignatureScheme::MlDsa44, "300b 0609 6086 4801 6503 0403 11"),
        (SignatureScheme::MlDsa65, "300b 0609 6086 4801 6503 0403 12"),
        (SignatureScheme::MlDsa87, "300b 0609 6086 4801 6503 0403 13"),
    ];
    for (scheme, hexstr) in cases {
        let der = unhex(hexstr);
        assert_eq!(scheme.algorithm_identifier(), &der[..], "{scheme:?}");
        assert_eq!(
            SignatureScheme::from_algorithm_identifier(&der),
            Some(scheme)
        );
    }
    assert_eq!(
        SignatureScheme::RsaPssSha256.algorithm_identifier().len(),
        72
    );
    // Strict-DER PSS (trailerField omitted) is accepted too.
    let strict = unhex(
        "3041 0609 2a86 4886 f70d 0101 0a30 34a0 0f30 0d06 0960 8648 0165 0304 0201 0500
         a11c 301a 0609 2a86 4886 f70d 0101 0830 0d06 0960 8648 0165 0304 0201 0500 a203
         0201 20",
    );
    assert_eq!(
        SignatureScheme::from_algorithm_identifier(&strict),
        Some(SignatureScheme::RsaPssSha256)
    );
    // A.1.2 sha256WithRSAEncryption and A.4.2 (SHA-1 PSS) are not offered.
    assert_eq!(
        SignatureScheme::from_algorithm_identifier(&unhex("300d 0609 2a86 4886 f70d 0101 0b05 00")),
        None
    );
    assert_eq!(
        SignatureScheme::Ed25519.hash_algorithm(),
        HashAlgorithm::Identity
    );
    assert_eq!(
        SignatureScheme::MlDsa65.hash_algorithm(),
        HashAlgorithm::Identity
    );
    assert_eq!(
        SignatureScheme::EcdsaP256Sha256.hash_algorithm(),
        HashAlgorithm::Sha2_256
    );
    assert_eq!(
        SignatureScheme::RsaPssSha256.hash_algorithm(),
        HashAlgorithm::Sha2_256
    );
}

/// RFC 8032 7.1 TEST 1 (empty message), loaded through PKCS#8 and SPKI.
#[test]
fn ed25519_rfc8032_test_1() {
    let seed = unhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
    let mut pkcs8 = unhex("302e020100300506032b657004220420");
    pkcs8.extend_from_slice(&seed);
    let key = SigningKey::from_pkcs8(SignatureScheme::Ed25519, &pkcs8).unwrap();
    let pubkey = unhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
    assert_eq!(key.public_key().raw(), &pubkey[..]);
    let sig = key.sign(b"").unwrap();
    assert_eq!(
        sig,
        unhex(
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        )
    );
    let mut spki = unhex("302a300506032b6570032100");
    spki.extend_from_slice(&pubkey);
    assert_eq!(key.public_key().to_spki().unwrap(), spki);
    let pk = PublicKey::from_spki(&spki).unwrap();
    assert_eq!(pk.key_type(), KeyType::Ed25519);
    pk.verify(SignatureScheme::Ed25519, b"", &sig).unwrap();
}

#[test]
fn every_scheme_signs_verifies_and_detects_flips() {
    for scheme in SignatureScheme::ALL {
        let (key, pkcs8) = SigningKey::generate(scheme).unwrap();
        assert_eq!(key.scheme(), scheme);
        // PKCS#8 reload gives the same key.
        let again = SigningKey::from_pkcs8(scheme, pkcs8.as_bytes()).unwrap();
        assert_eq!(again.public_key(), key.public_key());

        let msg = b"InitiatorSignedOctets";
        let sig = key.sign(msg).unwrap();
        if let Some(l) = scheme.fixed_signature_len() {
            assert_eq!(sig.len(), l, "{scheme:?}");
        }
        let spki = key.public_key().to_spki().unwrap();
        let pk = PublicKey::from_spki(&spki).unwrap();
        assert_eq!(pk, key.public_key());
        assert!(pk.key_type().fits(scheme));
        pk.verify(scheme, msg, &sig).unwrap();

        let mut bad = sig.clone();
        let last = bad.len() - 1;
        bad[last / 2] ^= 0x01;
        assert!(matches!(
            pk.verify(scheme, msg, &bad),
            Err(CryptoError::AuthenticationFailed(_))
        ));
        assert!(pk.verify(scheme, b"other message", &sig).is_err());
        assert!(pk.verify(scheme, msg, &sig[..sig.len() - 1]).is_err());
        // A key of another type never verifies this scheme (ERRATA.md, RFC 9838 4.5.3.2).
        for other in SignatureScheme::ALL {
            if other.key_type() != scheme.key_type() {
                assert!(pk.verify(other, msg, &sig).is_err());
            }
        }
        assert!(!format!("{key:?}").contains("0x"));
    }
}

#[test]
fn ml_dsa_lengths_and_seeded_keys() {
    for (scheme, sig_len, pk_len) in [
        (SignatureScheme::MlDsa44, 2420, 1312),
        (SignatureScheme::MlDsa65, 3309, 1952),
        (SignatureScheme::MlDsa87, 4627, 2592),
    ] {
        let a = SigningKey::ml_dsa_from_seed(scheme, &[7; 32]).unwrap();
        let b = SigningKey::ml_dsa_from_seed(scheme, &[7; 32]).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(a.public_key().raw().len(), pk_len);
        let sig = a.sign(b"rekey").unwrap();
        assert_eq!(sig.len(), sig_len);
        b.public_key().verify(scheme, b"rekey", &sig).unwrap();
        let mut flipped = sig.clone();
        flipped[100] ^= 0x80;
        assert!(b.public_key().verify(scheme, b"rekey", &flipped).is_err());
    }
    assert!(SigningKey::ml_dsa_from_seed(SignatureScheme::Ed25519, &[0; 32]).is_err());
}

#[test]
fn spki_parsing_is_strict() {
    let (key, _) = SigningKey::generate(SignatureScheme::EcdsaP256Sha256).unwrap();
    let spki = key.public_key().to_spki().unwrap();
    assert_eq!(
        PublicKey::from_spki(&spki).unwrap().key_type(),
        KeyType::EcP256
    );
    let mut trailing = spki.clone();
    trailing.push(0);
    assert!(PublicKey::from_spki(&trailing).is_err());
    assert!(PublicKey::from_spki(&spki[..spki.len() - 1]).is_err());
    assert!(PublicKey::from_spki(&[]).is_err());
    // P-384 SPKI prefix (secp384r1) is refused as unsupported.
    let p384 = unhex("3076301006072a8648ce3d020106052b81040022036200");
    let mut p384 = p384;
    p384.extend_from_slice(&[4; 97]);
    assert_eq!(
        PublicKey::from_spki(&p384),
        Err(CryptoError::Unsupported("elliptic curve"))
    );
    // Ed25519 SPKI with a 31-octet key.
    let mut short = unhex("3029300506032b6570032000");
    short.extend_from_slice(&[1; 31]);
    assert!(matches!(
        PublicKey::from_spki(&short),
        Err(CryptoError::InvalidLength { .. })
    ));
    // RSA SPKI round trip.
    let (rsa, _) = SigningKey::generate(SignatureScheme::RsaPssSha256).unwrap();
    let spki = rsa.public_key().to_spki().unwrap();
    assert_eq!(&spki[4..19], &unhex("300d06092a864886f70d0101010500")[..]);
    assert_eq!(PublicKey::from_spki(&spki).unwrap(), rsa.public_key());
}

/// RFC 9838 4.5.3.2 (R102): an AUTH_KEY whose algorithm is id-RSASSA-PSS must carry the
/// RSASSA-PSS-params structure; without it (or with something else) it is refused.
#[test]
fn rsassa_pss_spki_needs_its_parameters() {
    use spki::der::Encode;
    use spki::der::asn1::{AnyRef, BitStringRef, ObjectIdentifier};
    use spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoRef};
    let (rsa, _) = SigningKey::generate(SignatureScheme::RsaPssSha256).unwrap();
    let key = rsa.public_key();
    let pss = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
    let with = |parameters: Option<AnyRef<'_>>| {
        SubjectPublicKeyInfoRef {
            algorithm: AlgorithmIdentifierRef {
                oid: pss,
                parameters,
            },
            subject_public_key: BitStringRef::from_bytes(key.raw()).unwrap(),
        }
        .to_der()
        .unwrap()
    };
    let malformed = Err(CryptoError::Malformed(
        "id-RSASSA-PSS SubjectPublicKeyInfo without RSASSA-PSS-params",
    ));
    assert_eq!(PublicKey::from_spki(&with(None)), malformed);
    assert_eq!(PublicKey::from_spki(&with(Some(AnyRef::NULL))), malformed);
    // RSASSA-PSS-params of RFC 7427 A.4.3 (SHA-256, MGF1-SHA-256, salt 32), and the empty
    // SEQUENCE (every field DEFAULT).
    let params = unhex(
        "3034a00f300d06096086480165030402010500a11c301a06092a864886f70d010108300d060960864801\
         65030402010500a203020120",
    );
    for p in [&params[..], &[0x30, 0x00][..]] {
        let any = AnyRef::try_from(p).unwrap();
        let parsed = PublicKey::from_spki(&with(Some(any))).unwrap();
        assert_eq!(parsed.key_type(), KeyType::Rsa);
        assert_eq!(parsed.raw(), key.raw());
    }
}

#[test]
fn auth_data_encoding_is_strict() {
    let scheme = SignatureScheme::EcdsaP256Sha256;
    let data = encode_auth_data(scheme, b"sig");
    assert_eq!(data[0], 12);
    assert_eq!(&data[1..13], scheme.algorithm_identifier());
    let (alg, sig) = parse_auth_data(&data).unwrap();
    assert_eq!(alg, scheme.algorithm_identifier());
    assert_eq!(sig, b"sig");
    assert_eq!(
        parse_auth_data_scheme(&data).unwrap(),
        (scheme, &b"sig"[..])
    );

    let malformed = |d: &[u8]| matches!(parse_auth_data(d), Err(CryptoError::Malformed(_)));
    assert!(malformed(&[]));
    assert!(malformed(&[0, 1, 2]));
    assert!(malformed(&data[..13]), "no signature");
    assert!(malformed(&[200, 0x30, 0]), "length beyond data");
    let mut wrong_len = data.clone();
    wrong_len[0] = 11; // AlgorithmIdentifier cut short
    assert!(malformed(&wrong_len));
    let mut not_der = data.clone();
    not_der[2] = 0x0b; // inner SEQUENCE length disagrees
    assert!(malformed(&not_der));
    // Well-formed but unknown: sha256WithRSAEncryption.
    let mut unknown = vec![15];
    unknown.extend_from_slice(&unhex("300d06092a864886f70d01010b0500"));
    unknown.extend_from_slice(b"sig");
    let e = parse_auth_data_scheme(&unknown).unwrap_err();
    assert_eq!(e.notify(), Some(NotifyType::AuthenticationFailed));
    assert_eq!(
        CryptoError::Malformed("x").notify(),
        Some(NotifyType::InvalidSyntax)
    );
}

/// RFC 7296 2.15 against an independent computation with ring::hmac.
#[test]
fn shared_key_auth_and_signed_octets() {
    let prf = PrfAlg::HmacSha2_256;
    let sk_pi = [0x11; 32];
    let id_body = b"\x02\x00\x00\x00gm.example";
    let mac = maced_id(prf, &sk_pi, id_body);
    let k = hmac::Key::new(hmac::HMAC_SHA256, &sk_pi);
    assert_eq!(mac.as_bytes(), hmac::sign(&k, id_body).as_ref());

    let msg1 = b"IKE_SA_INIT request bytes";
    let nr = [0x22; 32];
    let octets = signed_octets(msg1, &nr, &mac, None);
    assert_eq!(octets, [&msg1[..], &nr, mac.as_bytes()].concat());
    let with_ia = signed_octets(msg1, &nr, &mac, Some(b"intauth"));
    assert_eq!(with_ia, [&octets[..], b"intauth"].concat());

    let psk = PaddedPsk::new(prf, b"shared secret of at least some length");
    let inner = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, b"shared secret of at least some length"),
        KEY_PAD,
    );
    let want = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, inner.as_ref()), &octets);
    assert_eq!(psk.auth(&octets).as_bytes(), want.as_ref());
    psk.verify(&octets, want.as_ref()).unwrap();
    let mut bad = want.as_ref().to_vec();
    bad[0] ^= 1;
    assert_eq!(
        psk.verify(&octets, &bad).unwrap_err().notify(),
        Some(NotifyType::AuthenticationFailed)
    );
    assert!(psk.verify(&octets, &want.as_ref()[..31]).is_err());
    assert_eq!(KEY_PAD.len(), 17);
    assert!(!format!("{psk:?}").contains("secret"));
}

#[test]
fn signature_auth_round_trip_with_policy() {
    let key = SigningKey::ml_dsa_from_seed(SignatureScheme::MlDsa65, &[3; 32]).unwrap();
    let octets = b"ResponderSignedOctets";
    let data = sign_auth(&key, octets).unwrap();
    let pk = key.public_key();
    assert_eq!(
        verify_auth(&pk, &data, octets, |_| true).unwrap(),
        SignatureScheme::MlDsa65
    );
    assert!(verify_auth(&pk, &data, b"other", |_| true).is_err());
    assert!(verify_auth(&pk, &data, octets, |s| s != SignatureScheme::MlDsa65).is_err());
    let (ed, _) = SigningKey::generate(SignatureScheme::Ed25519).unwrap();
    assert!(verify_auth(&ed.public_key(), &data, octets, |_| true).is_err());
}

/// The public key of an X.509 certificate (CERT payload) is the signer's key.
#[test]
fn public_key_from_certificate() {
    for (rc_alg, scheme) in [
        (&rcgen::PKCS_ED25519, SignatureScheme::Ed25519),
        (
            &rcgen::PKCS_ECDSA_P256_SHA256,
            SignatureScheme::EcdsaP256Sha256,
        ),
    ] {
        let kp = rcgen::KeyPair::generate_for(rc_alg).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["gcks.example".to_string()])
            .unwrap()
            .self_signed(&kp)
            .unwrap();
        let ours = SigningKey::from_pkcs8(scheme, &kp.serialize_der()).unwrap();
        let from_cert = PublicKey::from_certificate(cert.der()).unwrap();
        assert_eq!(from_cert, ours.public_key());
        let sig = ours.sign(b"m").unwrap();
        from_cert.verify(scheme, b"m", &sig).unwrap();
        let der: &[u8] = cert.der();
        assert!(PublicKey::from_certificate(&der[..der.len() - 1]).is_err());
    }
    assert!(matches!(
        PublicKey::from_certificate(b"not a certificate"),
        Err(CryptoError::Malformed(_))
    ));
}
