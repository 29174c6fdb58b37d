//! Wire codec cost of a GSA_AUTH response (RFC 9838 2.3.1): encoding and decoding the inner
//! payload chain of its SK payload, `IDr, AUTH, GSA, KD`.
//!
//! The GSA payload holds 4 TEK policies (ESP, AES-GCM-16 256, SN), a KEK policy
//! (GIKE_UPDATE, AES-GCM-16 256, KW_5649_256, GCAUTH Digital Signature with the Ed25519
//! AlgorithmIdentifier, GSA_KEY_LIFETIME) and a GW policy; the KD payload holds 5 group key
//! bags (KEK + 4 TEKs, keys really wrapped with KW_5649_256) and a member key bag
//! (AUTH_KEY SubjectPublicKeyInfo, GM_SENDER_ID).
//!
//! Run: `cargo bench -p gikev2-proto --bench wire`. Figures: docs/performance.md.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gikev2_proto::crypto::sign::{SignatureScheme, SigningKey, encode_auth_data};
use gikev2_proto::crypto::suite::{data_sa_keymat_len, rekey_sa_keymat_len};
use gikev2_proto::crypto::{EncrAlg, KeyWrapAlg, KeyWrapKey};
use gikev2_proto::registry::{AuthMethod, EncrId, GcAuthId, KwaId, SnId};
use gikev2_proto::wire::auth::AuthPayload;
use gikev2_proto::wire::gsa::{GsaPayload, GsaPolicy, GwPolicy};
use gikev2_proto::wire::id::IdPayload;
use gikev2_proto::wire::kd::{GroupKeyBag, KdPayload, MemberKeyBag, WrappedKey};
use gikev2_proto::wire::payload::{Payload, decode_inner_chain, encode_inner};
use gikev2_proto::wire::{TrafficSelector, Transform};

const TEKS: u32 = 4;
const KEK_SPI_I: u64 = 0x0102_0304_0506_0708;
const KEK_SPI_R: u64 = 0x1112_1314_1516_1718;
const AES_GCM_256: EncrAlg = EncrAlg::AesGcm16 { key_len: 32 };

fn tek_spi(i: u32) -> u32 {
    0x1000 + i
}

fn gsa() -> GsaPayload {
    let kek = GsaPolicy::kek(
        KEK_SPI_I,
        KEK_SPI_R,
        TrafficSelector::single("192.0.2.1".parse().unwrap(), 17, Some(848)),
        TrafficSelector::single("239.0.0.1".parse().unwrap(), 17, Some(848)),
    )
    .with_transform(Transform::encr(EncrId::AesGcm16, Some(256)))
    .with_transform(Transform::kwa(KwaId::Kw5649_256))
    .with_transform(Transform::gcauth(
        GcAuthId::DigitalSignature,
        Some(SignatureScheme::Ed25519.algorithm_identifier()),
    ))
    .with_key_lifetime(3600);
    let mut gsa = GsaPayload::new().with_gsa(kek);
    for i in 0..TEKS {
        gsa = gsa.with_gsa(
            GsaPolicy::esp(
                tek_spi(i),
                TrafficSelector::any(false),
                TrafficSelector::single(
                    format!("239.1.1.{}", i + 1).parse().unwrap(),
                    17,
                    Some(5000 + i as u16),
                ),
            )
            .with_transform(Transform::encr(EncrId::AesGcm16, Some(256)))
            .with_transform(Transform::sn(SnId::Unspecified32))
            .with_key_lifetime(1800),
        );
    }
    gsa.with_gw(
        GwPolicy::new()
            .with_atd(5)
            .with_dtd(10)
            .with_sender_id_bits(16),
    )
}

fn kd(member_auth_spki: Vec<u8>) -> KdPayload {
    let kwk = KeyWrapKey::new(KeyWrapAlg::Kw5649_256, &[0x42; 32]).unwrap();
    let wrap = |len: usize, fill: u8| WrappedKey::new(0, 0, kwk.wrap(&vec![fill; len]).unwrap());
    let kek_len = rekey_sa_keymat_len(AES_GCM_256, None, KeyWrapAlg::Kw5649_256);
    let tek_len = data_sa_keymat_len(Some(AES_GCM_256), None);
    let mut kd = KdPayload::new()
        .with(GroupKeyBag::kek(KEK_SPI_I, KEK_SPI_R).with_sa_key(wrap(kek_len, 0xa5)));
    for i in 0..TEKS {
        kd = kd.with(GroupKeyBag::esp(tek_spi(i)).with_sa_key(wrap(tek_len, i as u8)));
    }
    kd.with(
        MemberKeyBag::new()
            .with_auth_key(member_auth_spki)
            .with_sender_id(7),
    )
}

/// The inner payloads of the GSA_AUTH response, in the order the GCKS sends them.
fn gsa_auth_response_payloads() -> Vec<Payload> {
    let (key, _) = SigningKey::generate(SignatureScheme::Ed25519).unwrap();
    let sig = key.sign(&[0x5a; 400]).unwrap();
    let spki = key.public_key().to_spki().unwrap();
    vec![
        Payload::IdR(IdPayload::fqdn("gcks.example").unwrap()),
        Payload::Auth(AuthPayload::new(
            AuthMethod::DigitalSignature,
            encode_auth_data(SignatureScheme::Ed25519, &sig),
        )),
        Payload::Gsa(gsa()),
        Payload::Kd(kd(spki)),
    ]
}

fn bench_wire(c: &mut Criterion) {
    let payloads = gsa_auth_response_payloads();
    let (first, bytes) = encode_inner(&payloads);
    // The bench measures what it claims: the chain round-trips to the same values.
    assert_eq!(decode_inner_chain(first, &bytes).unwrap(), payloads);

    let mut g = c.benchmark_group("wire/gsa_auth_response_inner");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("encode", |b| b.iter(|| encode_inner(black_box(&payloads))));
    g.bench_function("decode", |b| {
        b.iter(|| decode_inner_chain(black_box(first), black_box(&bytes)).unwrap())
    });
    g.bench_function("encode+decode", |b| {
        b.iter(|| {
            let (f, v) = encode_inner(black_box(&payloads));
            decode_inner_chain(f, &v).unwrap()
        })
    });
    g.finish();
    eprintln!("wire: inner chain is {} octets", bytes.len());
}

criterion_group!(benches, bench_wire);
criterion_main!(benches);
