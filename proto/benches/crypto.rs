//! SK payload protection (RFC 7296 3.14; RFC 5282; RFC 7634) of 1 KiB of inner payloads,
//! next to the bare cipher call on the same buffer, so that the cost of the SK framing
//! (IV draw, copy, padding, length fields, nonce assembly) reads as a ratio.
//!
//! Per suite:
//! - `bare_seal`: the AEAD seal (or AES-CBC encrypt + HMAC) of the 1024-octet buffer in place;
//! - `sk_seal_append`: [`SkKey::seal_append`] of the same 1024 octets behind a 32-octet
//!   prefix (IKE header + SK generic header), IV from [`SeededRandom`];
//! - `bare_open`, `sk_open_body`: the reverse; both copy the sealed bytes into a scratch
//!   buffer first (open works in place), so the copy cancels out of the ratio.
//!
//! After the criterion benches, a paired report alternates short batches of the four
//! calls so that the ratios hold on a loaded machine.
//!
//! Run: `cargo bench -p gikev2-proto --bench crypto`. Figures: docs/performance.md.

use std::hint::black_box;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use gikev2_proto::crypto::{
    AeadAlg, AeadKey, AesCbcKey, EncrAlg, HmacKey, IntegAlg, SeededRandom, SkKey, SystemRandom,
};

const LEN: usize = 1024;
/// IKE header (28) + SK generic header (4): the associated data of the SK payload.
const PREFIX_LEN: usize = 32;
const SK_HEADER_AT: usize = 28;

/// A fake unencrypted prefix: IKE header (Next Payload SK, exchange GSA_AUTH) and the SK
/// generic header (first inner payload IDr). Lengths are filled in by `seal_append`.
fn prefix() -> Vec<u8> {
    let mut m = vec![0xc0; 8];
    m.extend_from_slice(&[0xd0; 8]);
    m.extend_from_slice(&[46, 0x20, 39, 0x20, 0, 0, 0, 1, 0, 0, 0, 0]);
    m.extend_from_slice(&[36, 0, 0, 0]);
    assert_eq!(m.len(), PREFIX_LEN);
    m
}

/// The bare primitive the SK key wraps, with the same key. One value per suite, built once:
/// its size does not matter, and no box puts an extra indirection in the measured call.
#[allow(clippy::large_enum_variant)]
enum Bare {
    Aead(AeadKey),
    Cbc(CbcHmac),
}

struct CbcHmac {
    key: AesCbcKey,
    integ: HmacKey,
}

struct Suite {
    name: &'static str,
    sk: SkKey,
    bare: Bare,
}

fn suites() -> Vec<Suite> {
    let gcm_key = [0x11u8; 32];
    let chacha_key = [0x22u8; 32];
    let salt = [0x33u8; 4];
    let cbc_key = [0x44u8; 16];
    let hmac_key = [0x55u8; 32];
    vec![
        Suite {
            name: "aes-gcm-16-256",
            sk: SkKey::new(
                EncrAlg::AesGcm16 { key_len: 32 },
                None,
                &[&gcm_key[..], &salt].concat(),
                &[],
            )
            .unwrap(),
            bare: Bare::Aead(AeadKey::new(AeadAlg::Aes256Gcm, &gcm_key).unwrap()),
        },
        Suite {
            name: "chacha20-poly1305",
            sk: SkKey::new(
                EncrAlg::ChaCha20Poly1305,
                None,
                &[&chacha_key[..], &salt].concat(),
                &[],
            )
            .unwrap(),
            bare: Bare::Aead(AeadKey::new(AeadAlg::ChaCha20Poly1305, &chacha_key).unwrap()),
        },
        Suite {
            name: "aes-cbc-128+hmac-sha2-256-128",
            sk: SkKey::new(
                EncrAlg::AesCbc { key_len: 16 },
                Some(IntegAlg::HmacSha2_256_128),
                &cbc_key,
                &hmac_key,
            )
            .unwrap(),
            bare: Bare::Cbc(CbcHmac {
                key: AesCbcKey::new(&cbc_key).unwrap(),
                integ: HmacKey::new(IntegAlg::HmacSha2_256_128, &hmac_key).unwrap(),
            }),
        },
    ]
}

const NONCE: [u8; 12] = [0x33, 0x33, 0x33, 0x33, 1, 2, 3, 4, 5, 6, 7, 8];
const IV: [u8; 16] = [0x77; 16];

impl Bare {
    /// Seals `buf` in place; the tag or ICV goes to `tag`. Returns the tag length.
    fn seal(&self, aad: &[u8], buf: &mut [u8], tag: &mut [u8; 16]) -> usize {
        match self {
            Self::Aead(k) => {
                *tag = k.seal_in_place(&NONCE, aad, buf).unwrap();
                16
            }
            Self::Cbc(c) => {
                c.key.encrypt_in_place(&IV, buf).unwrap();
                let icv = c.integ.sign_parts(&[aad, &IV, buf]);
                tag[..icv.as_bytes().len()].copy_from_slice(icv.as_bytes());
                icv.as_bytes().len()
            }
        }
    }

    /// Verifies and decrypts `ct_and_tag` in place.
    fn open(&self, aad: &[u8], ct_and_tag: &mut [u8]) {
        match self {
            Self::Aead(k) => {
                k.open_in_place(&NONCE, aad, ct_and_tag).unwrap();
            }
            Self::Cbc(c) => {
                let (ct, icv) = ct_and_tag.split_at_mut(LEN);
                c.integ.verify_parts(&[aad, &IV, ct], icv).unwrap();
                c.key.decrypt_in_place(&IV, ct).unwrap();
            }
        }
    }
}

fn bench_sk(c: &mut Criterion) {
    let plaintext = vec![0xabu8; LEN];
    let aad = prefix();
    let mut g = c.benchmark_group("crypto/sk_1KiB");
    g.throughput(Throughput::Bytes(LEN as u64));
    for s in suites() {
        // Bare seal: the cipher call alone, in place on the 1 KiB buffer.
        let mut buf = plaintext.clone();
        let mut tag = [0u8; 16];
        g.bench_function(BenchmarkId::new("bare_seal", s.name), |b| {
            b.iter(|| s.bare.seal(black_box(&aad), black_box(&mut buf), &mut tag))
        });

        // SK seal: the whole Encrypted payload behind the prefix.
        let mut rng = SeededRandom::from_u64(1);
        let mut msg = aad.clone();
        msg.reserve(LEN + 64);
        g.bench_function(BenchmarkId::new("sk_seal_append", s.name), |b| {
            b.iter(|| {
                msg.truncate(PREFIX_LEN);
                s.sk.seal_append(&mut rng, &mut msg, SK_HEADER_AT, black_box(&plaintext))
                    .unwrap();
            })
        });

        // Bare open of a sealed copy.
        let mut sealed = plaintext.clone();
        let tag_len = s.bare.seal(&aad, &mut sealed, &mut tag);
        sealed.extend_from_slice(&tag[..tag_len]);
        let mut scratch = sealed.clone();
        g.bench_function(BenchmarkId::new("bare_open", s.name), |b| {
            b.iter(|| {
                scratch.copy_from_slice(&sealed);
                s.bare.open(black_box(&aad), black_box(&mut scratch));
            })
        });

        // SK open of a sealed message.
        let mut message = aad.clone();
        s.sk.seal_append(&mut rng, &mut message, SK_HEADER_AT, &plaintext)
            .unwrap();
        let mut scratch = message.clone();
        g.bench_function(BenchmarkId::new("sk_open_body", s.name), |b| {
            b.iter(|| {
                scratch.copy_from_slice(&message);
                let (aad, body) = scratch.split_at_mut(PREFIX_LEN);
                assert_eq!(s.sk.open_body(black_box(aad), body).unwrap().len(), LEN);
            })
        });
    }

    // What production pays for the IV: SystemRandom (OS CSPRNG) instead of SeededRandom.
    let s = &suites()[0];
    let mut rng = SystemRandom::new();
    let mut msg = aad.clone();
    msg.reserve(LEN + 64);
    g.bench_function(
        BenchmarkId::new("sk_seal_append_system_random", s.name),
        |b| {
            b.iter(|| {
                msg.truncate(PREFIX_LEN);
                s.sk.seal_append(&mut rng, &mut msg, SK_HEADER_AT, black_box(&plaintext))
                    .unwrap();
            })
        },
    );
    g.finish();
}

/// Ratios on a shared machine: short batches of the four operations alternate, so that
/// bare and SK calls see the same background load; the median batch of each is reported.
fn paired_report() {
    const ROUNDS: usize = 300;
    const BATCH: u32 = 256;
    let plaintext = vec![0xabu8; LEN];
    let aad = prefix();
    eprintln!(
        "\npaired ({ROUNDS} rounds of {BATCH}-call batches; ns per call, medians): suite | \
         bare_seal | sk_seal_append | ratio | bare_open | sk_open_body | ratio"
    );
    for s in suites() {
        let mut rng = SeededRandom::from_u64(2);
        let mut buf = plaintext.clone();
        let mut tag = [0u8; 16];
        let mut msg = aad.clone();
        msg.reserve(LEN + 64);
        let mut sealed = plaintext.clone();
        let tag_len = s.bare.seal(&aad, &mut sealed, &mut tag);
        sealed.extend_from_slice(&tag[..tag_len]);
        let mut scratch = sealed.clone();
        let mut message = aad.clone();
        s.sk.seal_append(&mut rng, &mut message, SK_HEADER_AT, &plaintext)
            .unwrap();
        let mut scratch2 = message.clone();
        let mut t: [Vec<f64>; 4] = Default::default();
        let time = |f: &mut dyn FnMut()| {
            let start = Instant::now();
            for _ in 0..BATCH {
                f();
            }
            start.elapsed().as_secs_f64() * 1e9 / f64::from(BATCH)
        };
        for _ in 0..ROUNDS {
            t[0].push(time(&mut || {
                s.bare.seal(black_box(&aad), black_box(&mut buf), &mut tag);
            }));
            t[1].push(time(&mut || {
                msg.truncate(PREFIX_LEN);
                s.sk.seal_append(&mut rng, &mut msg, SK_HEADER_AT, black_box(&plaintext))
                    .unwrap();
            }));
            t[2].push(time(&mut || {
                scratch.copy_from_slice(&sealed);
                s.bare.open(black_box(&aad), black_box(&mut scratch));
            }));
            t[3].push(time(&mut || {
                scratch2.copy_from_slice(&message);
                let (aad, body) = scratch2.split_at_mut(PREFIX_LEN);
                black_box(s.sk.open_body(black_box(aad), body).unwrap());
            }));
        }
        let m: Vec<f64> = t
            .iter_mut()
            .map(|v| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            })
            .collect();
        eprintln!(
            "paired {} | {:.0} | {:.0} | {:.2}x | {:.0} | {:.0} | {:.2}x",
            s.name,
            m[0],
            m[1],
            m[1] / m[0],
            m[2],
            m[3],
            m[3] / m[2]
        );
    }
}

criterion_group!(benches, bench_sk);

fn main() {
    benches();
    // `cargo bench` passes --bench; `cargo test --benches` does not (quick smoke run).
    // Not when listing or profiling one bench (`--profile-time`).
    let args: Vec<String> = std::env::args().collect();
    let has = |f: &str| args.iter().any(|a| a == f);
    if has("--bench") && !has("--list") && !has("--test") && !has("--profile-time") {
        paired_report();
    }
    Criterion::default().configure_from_args().final_summary();
}
