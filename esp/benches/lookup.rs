//! Inbound SAD lookup at 1, 10k and 1M installed SAs, keys mixed one third each SPI-only
//! (unicast), SPI + destination and SPI + destination + source (multicast), with real
//! AES-GCM-128 SA records. Also prints the resident memory per installed SA, measures the
//! index alone, and the 1400-octet seal/open path on one SA.
//!
//! Run: `cargo bench -p gikev2-esp --bench lookup -- --measurement-time 3 --warm-up-time 1`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gikev2_esp::{
    Direction, Engine, EspAlgorithm, KeyMaterial, Mode, SaConfig, Sad, SadKey, SnTransform, Tunnel,
};

const ALG: EspAlgorithm = EspAlgorithm::AesGcm16 { key_bits: 128 };

/// A deterministic pseudo-random sequence (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn key_for(i: u64) -> SadKey {
    // A bijection on u32: every SA has its own SPI (SPI sharing is tested, not benched).
    let spi = ((i + 256) as u32).wrapping_mul(2_654_435_761);
    let dst = IpAddr::V4(Ipv4Addr::from(0xef00_0000 | (i as u32 & 0xffff)));
    let src = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i as u32 >> 4)));
    match i % 3 {
        0 => SadKey::Spi(spi),
        1 => SadKey::SpiDst { spi, dst },
        _ => SadKey::SpiDstSrc { spi, dst, src },
    }
}

fn query_of(k: SadKey) -> (u32, IpAddr, IpAddr) {
    let other = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    match k {
        SadKey::Spi(spi) => (spi, other, other),
        SadKey::SpiDst { spi, dst } => (spi, dst, other),
        SadKey::SpiDstSrc { spi, dst, src } => (spi, dst, src),
    }
}

fn rss_bytes() -> u64 {
    // Second field of /proc/self/statm: resident pages.
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn build(n: u64, now: Instant) -> Engine {
    let engine = Engine::default();
    let mut i = 0;
    while i < n {
        let chunk = (n - i).min(100_000);
        let cfgs: Vec<SaConfig> = (i..i + chunk)
            .map(|j| {
                let key = key_for(j);
                SaConfig::new(
                    key.spi(),
                    Direction::Inbound,
                    key,
                    Mode::Tunnel(Tunnel::preserving(false)),
                    ALG,
                    KeyMaterial::new(vec![j as u8; ALG.keymat_len()]),
                    SnTransform::Sequential32,
                )
            })
            .collect();
        for r in engine.install_batch(cfgs, now) {
            r.expect("install");
        }
        i += chunk;
    }
    engine
}

fn lookups(c: &mut Criterion) {
    let now = Instant::now();
    let mut group = c.benchmark_group("sad_lookup");
    for n in [1u64, 10_000, 1_000_000] {
        let before = rss_bytes();
        let t = Instant::now();
        let engine = build(n, now);
        let built = t.elapsed();
        let after = rss_bytes();
        eprintln!(
            "n={n}: installed in {:.2?}, RSS +{} KiB, {} bytes/SA (real AES-GCM-128 SA records)",
            built,
            after.saturating_sub(before) / 1024,
            after.saturating_sub(before) / n
        );
        // One more install into the full table.
        if n > 1 {
            let t = Instant::now();
            for j in 0..100 {
                let key = key_for(n + j);
                let cfg = SaConfig::new(
                    key.spi(),
                    Direction::Inbound,
                    key,
                    Mode::Tunnel(Tunnel::preserving(false)),
                    ALG,
                    KeyMaterial::new(vec![1; ALG.keymat_len()]),
                    SnTransform::Sequential32,
                );
                engine.install(cfg, now).expect("install");
            }
            eprintln!("n={n}: single install {:.1?} each", t.elapsed() / 100);
        }
        // Random hits over the whole table (cache misses at 1M, as in real traffic), and
        // misses on unknown SPIs.
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let hits: Vec<_> = (0..4096)
            .map(|_| query_of(key_for(rng.next() % n)))
            .collect();
        let sad = engine.sad();
        group.bench_with_input(BenchmarkId::new("hit", n), &hits, |b, q| {
            let mut i = 0usize;
            b.iter(|| {
                let (spi, dst, src) = q[i & 4095];
                i = i.wrapping_add(1);
                black_box(sad.lookup_with(spi, dst, src, |sa| sa.spi()))
            })
        });
        let misses: Vec<_> = hits
            .iter()
            .map(|(s, d, r)| (s.wrapping_add(0x8000_0001), *d, *r))
            .collect();
        group.bench_with_input(BenchmarkId::new("miss", n), &misses, |b, q| {
            let mut i = 0usize;
            b.iter(|| {
                let (spi, dst, src) = q[i & 4095];
                i = i.wrapping_add(1);
                black_box(sad.lookup_with(spi, dst, src, |sa| sa.spi()))
            })
        });
        drop(engine);
    }
    group.finish();
}

/// The index alone (values are plain integers, no SA records in the heap): what the SAD
/// structure costs, apart from touching the SA afterwards.
fn index_only(c: &mut Criterion) {
    let mut group = c.benchmark_group("sad_index_only");
    for n in [10_000u64, 1_000_000] {
        let sad: Sad<u32> = Sad::default();
        let failed = sad.insert_batch((0..n).map(|i| (key_for(i), i as u32)));
        assert!(failed.is_empty());
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let hits: Vec<_> = (0..4096)
            .map(|_| query_of(key_for(rng.next() % n)))
            .collect();
        group.bench_with_input(BenchmarkId::new("hit", n), &hits, |b, q| {
            let mut i = 0usize;
            b.iter(|| {
                let (spi, dst, src) = q[i & 4095];
                i = i.wrapping_add(1);
                black_box(sad.lookup_with(spi, dst, src, |v| *v))
            })
        });
    }
    group.finish();
}

/// One SA, a 1400-octet packet: tunnel-mode AES-GCM-128 seal and open.
fn packet_path(c: &mut Criterion) {
    let now = Instant::now();
    let key = SadKey::SpiDst {
        spi: 0x1234,
        dst: IpAddr::V4(Ipv4Addr::new(239, 1, 1, 1)),
    };
    let mk = |dir| {
        SaConfig::new(
            0x1234,
            dir,
            key,
            Mode::Tunnel(Tunnel::preserving(false)),
            ALG,
            KeyMaterial::new(vec![7; ALG.keymat_len()]),
            SnTransform::Unspecified32,
        )
    };
    let tx = Engine::default();
    let h = tx.install(mk(Direction::Outbound), now).expect("install");
    let rx = Engine::default();
    rx.install(mk(Direction::Inbound), now).expect("install");
    let mut inner = vec![0u8; 1400];
    inner[0] = 0x45;
    inner[2..4].copy_from_slice(&1400u16.to_be_bytes());
    inner[8] = 16;
    inner[9] = 17;
    inner[12..16].copy_from_slice(&[10, 0, 0, 1]);
    inner[16..20].copy_from_slice(&[239, 1, 1, 1]);
    let mut sealed = [0u8; 1600];
    let len = tx.seal(&h, &inner, &mut sealed, now).expect("seal").len();
    let mut group = c.benchmark_group("packet_1400B_aes128gcm");
    group.throughput(criterion::Throughput::Bytes(1400));
    group.bench_function("seal", |b| {
        let mut out = [0u8; 1600];
        b.iter(|| black_box(tx.seal(&h, &inner, &mut out, now).map(|o| o.len())))
    });
    group.bench_function("open", |b| {
        let mut out = [0u8; 1600];
        // Replay protection is off (Unspecified numbers), so the same packet opens again.
        b.iter(|| match rx.open(&sealed[..len], &mut out, now) {
            gikev2_esp::Verdict::Deliver(p) => black_box(p.len()),
            gikev2_esp::Verdict::Drop(r) => panic!("{r:?}"),
        })
    });
    group.finish();
}

criterion_group!(benches, lookups, index_only, packet_path);
criterion_main!(benches);
