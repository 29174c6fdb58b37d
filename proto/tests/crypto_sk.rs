//! SK payload cipher: seal/open round trips for every suite, tamper detection, and
//! property tests over random plaintext lengths (RFC 7296 3.14, RFC 5282, RFC 7634).

use gikev2_proto::crypto::ke::KeMethod;
use gikev2_proto::crypto::keys::IkeKeys;
use gikev2_proto::crypto::suite::{EncrAlg, IkeSuite};
use gikev2_proto::crypto::{CryptoError, IntegAlg, PrfAlg, SeededRandom, SkKey};
use proptest::prelude::*;

fn suites() -> Vec<IkeSuite> {
    let mk = |encr, integ| IkeSuite {
        encr,
        prf: PrfAlg::HmacSha2_256,
        integ,
        ke: KeMethod::Curve25519,
        addke: vec![],
        kwa: None,
    };
    let mut v = Vec::new();
    for key_len in [16, 24, 32] {
        for integ in [
            IntegAlg::HmacSha2_256_128,
            IntegAlg::HmacSha2_384_192,
            IntegAlg::HmacSha2_512_256,
        ] {
            v.push(mk(EncrAlg::AesCbc { key_len }, Some(integ)));
        }
    }
    v.push(mk(EncrAlg::AesGcm16 { key_len: 16 }, None));
    v.push(mk(EncrAlg::AesGcm16 { key_len: 32 }, None));
    v.push(mk(EncrAlg::ChaCha20Poly1305, None));
    v
}

fn key_pair(suite: &IkeSuite) -> (SkKey, SkKey) {
    let keys = IkeKeys::initial(suite, &[1; 32], &[2; 32], &[3; 32], &[4; 8], &[5; 8]).unwrap();
    (
        SkKey::from_ike_keys(suite, &keys, true).unwrap(),
        SkKey::from_ike_keys(suite, &keys, false).unwrap(),
    )
}

/// A fake unencrypted prefix: IKE header (Next Payload SK) and the SK generic header.
fn prefix() -> Vec<u8> {
    let mut m = vec![0xc0; 8];
    m.extend_from_slice(&[0xd0; 8]);
    m.extend_from_slice(&[46, 0x20, 37, 0x08, 0, 0, 0, 2, 0, 0, 0, 0]);
    m.extend_from_slice(&[41, 0, 0, 0]);
    m
}

#[test]
fn every_suite_round_trips_and_detects_tampering() {
    let mut rng = SeededRandom::from_u64(42);
    let inner = b"\x00\x00\x00\x0c\x00\x00\x40\x01\x00\x00\x00\x0a inner payloads".to_vec();
    for suite in suites() {
        let (i2r, r2i) = key_pair(&suite);
        let mut msg = prefix();
        i2r.seal_append(&mut rng, &mut msg, 28, &inner).unwrap();
        assert_eq!(msg.len(), 32 + i2r.sealed_len(inner.len()));
        assert_eq!(
            u32::from_be_bytes(msg[24..28].try_into().unwrap()) as usize,
            msg.len()
        );
        assert_eq!(
            u16::from_be_bytes(msg[30..32].try_into().unwrap()) as usize,
            msg.len() - 28
        );

        let open = |m: &[u8], k: &SkKey| {
            let mut m = m.to_vec();
            let (aad, body) = m.split_at_mut(32);
            k.open_body(aad, body).map(|p| p.to_vec())
        };
        assert_eq!(open(&msg, &i2r).unwrap(), inner, "{:?}", suite.encr);
        // The other direction's key does not open it.
        assert_eq!(open(&msg, &r2i), Err(CryptoError::IntegrityCheckFailed));

        let iv = 32..32 + i2r.iv_len();
        let ct = iv.end..msg.len() - i2r.icv_len();
        let icv = ct.end..msg.len();
        for (what, at) in [
            ("AAD (header)", 17),
            ("AAD (SK header)", 30),
            ("IV", iv.start),
            ("IV end", iv.end - 1),
            ("ciphertext", ct.start),
            ("ciphertext end", ct.end - 1),
            ("ICV", icv.start),
            ("ICV end", icv.end - 1),
        ] {
            let mut bad = msg.clone();
            bad[at] ^= 0x01;
            assert_eq!(
                open(&bad, &i2r),
                Err(CryptoError::IntegrityCheckFailed),
                "{:?}: flipped {what}",
                suite.encr
            );
        }
        // Truncated bodies never panic and never authenticate.
        for cut in 1..=msg.len() - 32 {
            assert_eq!(
                open(&msg[..msg.len() - cut], &i2r),
                Err(CryptoError::IntegrityCheckFailed)
            );
        }
    }
}

#[test]
fn fresh_iv_per_message() {
    let mut rng = SeededRandom::from_u64(7);
    for suite in suites() {
        let (k, _) = key_pair(&suite);
        let mut a = prefix();
        let mut b = prefix();
        k.seal_append(&mut rng, &mut a, 28, b"same").unwrap();
        k.seal_append(&mut rng, &mut b, 28, b"same").unwrap();
        assert_ne!(a[32..32 + k.iv_len()], b[32..32 + k.iv_len()]);
        assert_ne!(a, b);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn round_trip_any_length(len in 0usize..3000, seed in any::<u64>(), which in 0usize..12) {
        let suites = suites();
        let suite = &suites[which % suites.len()];
        let (k, _) = key_pair(suite);
        let mut rng = SeededRandom::from_u64(seed);
        let plaintext: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ (seed as u8)).collect();
        let aad = [0x5a; 32];
        let mut body = vec![0u8; k.sealed_len(len)];
        k.seal_body(&mut rng, &aad, &plaintext, &mut body).unwrap();
        prop_assert_eq!(body.len() - len, k.overhead(len));
        let out = k.open_body(&aad, &mut body).unwrap();
        prop_assert_eq!(out, &plaintext[..]);
    }

    #[test]
    fn garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..200), which in 0usize..12) {
        let suites = suites();
        let (k, _) = key_pair(&suites[which % suites.len()]);
        let mut body = body;
        prop_assert!(k.open_body(&[0; 32], &mut body).is_err());
    }
}
