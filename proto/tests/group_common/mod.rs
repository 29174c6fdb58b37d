//! Shared fixtures of the group tests: a GCKS group state with a Rekey SA and two
//! Data-Security SAs, and the default KWK of a member's IKE SA.

#![allow(dead_code)]

use gikev2_proto::crypto::sign::{SignatureScheme, SigningKey};
use gikev2_proto::crypto::{EncrAlg, IntegAlg, KeyWrapAlg, KeyWrapKey, Random, SeededRandom};
use gikev2_proto::group::state::TekProtocol;
use gikev2_proto::group::{GroupAuth, GroupPolicy, GroupState, RekeySaState, RekeySuite, TekState};
use gikev2_proto::registry::SnId;
use gikev2_proto::wire::TrafficSelector;

/// "Now" on the GCKS clock (seconds).
pub const NOW: u64 = 1_700_000_000;
/// SA lifetime used by the fixtures.
pub const LIFETIME: u64 = 3600;

pub fn rng(seed: u64) -> SeededRandom {
    SeededRandom::from_u64(seed)
}

/// AES-GCM-256 with KW_5649_256: the Rekey SA suite of most tests.
pub fn gcm_suite() -> RekeySuite {
    RekeySuite::new(
        EncrAlg::AesGcm16 { key_len: 32 },
        None,
        KeyWrapAlg::Kw5649_256,
    )
    .unwrap()
}

/// AES-CBC-128 with HMAC-SHA2-256-128 and KW_5649_256 (the fixture group's TEKs have
/// 256-bit keys, and no KWK may be shorter, RFC 9838 3.1).
pub fn cbc_suite() -> RekeySuite {
    RekeySuite::new(
        EncrAlg::AesCbc { key_len: 16 },
        Some(IntegAlg::HmacSha2_256_128),
        KeyWrapAlg::Kw5649_256,
    )
    .unwrap()
}

pub fn kek(rng: &mut dyn Random, suite: RekeySuite) -> RekeySaState {
    RekeySaState::generate(
        rng,
        TrafficSelector::single("10.0.0.1".parse().unwrap(), 17, Some(848)),
        TrafficSelector::single("239.0.0.1".parse().unwrap(), 17, Some(848)),
        suite,
        NOW + LIFETIME,
    )
}

/// ESP AES-GCM-256 to 239.1.1.1:5000, several senders (32-bit Unspecified Numbers).
pub fn tek_gcm(rng: &mut dyn Random) -> TekState {
    TekState::generate(
        rng,
        TekProtocol::Esp,
        TrafficSelector::any(false),
        TrafficSelector::single("239.1.1.1".parse().unwrap(), 17, Some(5000)),
        Some(EncrAlg::AesGcm16 { key_len: 32 }),
        None,
        SnId::Unspecified32,
        NOW + LIFETIME,
    )
    .unwrap()
}

/// ESP AES-CBC-128 + HMAC-SHA2-256-128 to 239.1.1.2:5001, one sender (32-bit Sequential).
pub fn tek_cbc(rng: &mut dyn Random) -> TekState {
    TekState::generate(
        rng,
        TekProtocol::Esp,
        TrafficSelector::single("10.0.0.9".parse().unwrap(), 0, None),
        TrafficSelector::single("239.1.1.2".parse().unwrap(), 17, Some(5001)),
        Some(EncrAlg::AesCbc { key_len: 16 }),
        Some(IntegAlg::HmacSha2_256_128),
        // The fixture group has several senders (RFC 9838 4.4.2.1.3).
        SnId::Unspecified32,
        NOW + LIFETIME,
    )
    .unwrap()
}

/// A signing key for `scheme`; ML-DSA from a fixed seed.
pub fn signing_key(scheme: SignatureScheme) -> SigningKey {
    match scheme {
        SignatureScheme::MlDsa44 | SignatureScheme::MlDsa65 | SignatureScheme::MlDsa87 => {
            SigningKey::ml_dsa_from_seed(scheme, &[0x5e; 32]).unwrap()
        }
        s => SigningKey::generate(s).unwrap().0,
    }
}

pub fn signature(scheme: SignatureScheme) -> GroupAuth {
    GroupAuth::Signature(Box::new(signing_key(scheme)))
}

/// A group with a Rekey SA (AES-GCM), a counter-mode TEK and a CBC TEK, ATD 5 s, DTD 10 s,
/// 8 Sender-ID bits and several senders.
pub fn group(auth: GroupAuth, rng: &mut dyn Random) -> GroupState {
    GroupState {
        rekey: Some(kek(rng, gcm_suite())),
        teks: vec![tek_gcm(rng), tek_cbc(rng)],
        policy: GroupPolicy {
            atd: Some(5),
            dtd: Some(10),
            sender_id_bits: Some(8),
            multiple_senders: true,
        },
        auth,
    }
}

/// The default KWK of a member's IKE SA (as `IkeSa::key_wrap_key` would give it).
pub fn ike_kwk(seed: u8) -> KeyWrapKey {
    KeyWrapKey::new(KeyWrapAlg::Kw5649_256, &[seed; 32]).unwrap()
}
