//! `Engine::seal` / `Engine::open` of 64-, 512- and 1400-octet IPv4 packets for every
//! algorithm the engine supports, next to the bare cipher call on a buffer of the same
//! length, so that the engine's own cost (SPD-free SA handle, lifetime checks, framing,
//! padding, outer header, SN/IV, copy, trailer and inner checks) reads as a ratio.
//!
//! Per algorithm and size:
//! - `engine_seal`: [`Engine::seal`] of the IP packet on an outbound tunnel-mode SA
//!   (address preservation, IPv4 outer header, "32-bit Sequential Numbers");
//! - `bare_seal`: the cipher alone over the bytes the engine protects for that packet
//!   (payload, padding, pad length, next header; AAD SPI | SN): `AeadKey::seal_in_place`,
//!   for AES-GMAC with everything as AAD, for AES-CBC `AesCbcKey::encrypt_in_place` +
//!   `HmacKey::sign` over SPI .. ciphertext;
//! - `engine_open`: [`Engine::open`] of the sealed packet on an inbound SA, replay
//!   protection disabled so that the same packet opens again (the engine copies the ESP
//!   packet into the output buffer and opens it in place);
//! - `bare_open`: copy of the sealed bytes into a scratch buffer, then
//!   `AeadKey::open_in_place` (or `HmacKey::verify` + `AesCbcKey::decrypt_in_place`).
//!
//! After the criterion benches, a paired report alternates short batches of the four calls
//! so that the ratios hold on a loaded machine (medians).
//!
//! Run: `cargo bench -p gikev2-esp --bench seal_open -- --warm-up-time 1 --measurement-time 2`.
//! Figures: docs/performance.md, "esp: seal/open vs bare AEAD".

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use gikev2_esp::{
    Direction, Engine, EspAlgorithm, KeyMaterial, Mode, ReplayPolicy, SEAL_HEADROOM, SaConfig,
    SaHandle, SadKey, SnTransform, Tunnel, Verdict,
};
use gikev2_proto::crypto::{AeadAlg, AeadKey, AesCbcKey, HmacKey, IntegAlg};

const SIZES: [usize; 3] = [64, 512, 1400];
/// IPv4 outer header written by `Engine::seal` in tunnel mode.
const OUTER: usize = 20;
const ESP_HDR: usize = 8;
const ICV: usize = 16;
const SPI: u32 = 0x1234;

const ALGS: [(&str, EspAlgorithm); 7] = [
    ("aes-gcm-16-128", EspAlgorithm::AesGcm16 { key_bits: 128 }),
    ("aes-gcm-16-256", EspAlgorithm::AesGcm16 { key_bits: 256 }),
    (
        "aes-gcm-16-128-iiv",
        EspAlgorithm::AesGcm16Iiv { key_bits: 128 },
    ),
    ("aes-gmac-128", EspAlgorithm::AesGmac { key_bits: 128 }),
    ("chacha20-poly1305", EspAlgorithm::ChaCha20Poly1305),
    ("chacha20-poly1305-iiv", EspAlgorithm::ChaCha20Poly1305Iiv),
    (
        "aes-cbc-128+hmac-sha2-256-128",
        EspAlgorithm::AesCbcHmacSha256 { key_bits: 128 },
    ),
];

/// The bare primitive, keyed like the SA.
#[allow(clippy::large_enum_variant)]
enum Bare {
    Aead { key: AeadKey, gmac: bool },
    Cbc { enc: AesCbcKey, mac: HmacKey },
}

impl Bare {
    fn new(alg: EspAlgorithm, keymat: &[u8]) -> Self {
        match alg {
            EspAlgorithm::AesGcm16 { key_bits }
            | EspAlgorithm::AesGcm16Iiv { key_bits }
            | EspAlgorithm::AesGmac { key_bits } => {
                let klen = usize::from(key_bits / 8);
                Self::Aead {
                    key: AeadKey::new(AeadAlg::aes_gcm(klen).unwrap(), &keymat[..klen]).unwrap(),
                    gmac: matches!(alg, EspAlgorithm::AesGmac { .. }),
                }
            }
            EspAlgorithm::ChaCha20Poly1305 | EspAlgorithm::ChaCha20Poly1305Iiv => Self::Aead {
                key: AeadKey::new(AeadAlg::ChaCha20Poly1305, &keymat[..32]).unwrap(),
                gmac: false,
            },
            EspAlgorithm::AesCbcHmacSha256 { key_bits } => {
                let (ek, ik) = keymat.split_at(usize::from(key_bits / 8));
                Self::Cbc {
                    enc: AesCbcKey::new(ek).unwrap(),
                    mac: HmacKey::new(IntegAlg::HmacSha2_256_128, ik).unwrap(),
                }
            }
        }
    }
}

const NONCE: [u8; 12] = [0x33, 0x33, 0x33, 0x33, 0, 0, 0, 0, 0, 0, 0, 1];
const CBC_IV: [u8; 16] = [0x77; 16];

/// One ESP packet laid out for the bare calls: `SPI | SN | IV | body | ICV`, with the same
/// lengths as the engine's packet.
struct BareCase {
    bare: Bare,
    iv_len: usize,
    /// Plaintext layout, sealed in place (again and again) by `seal`.
    work: Vec<u8>,
    /// A validly sealed copy, restored into `scratch` before each `open`.
    sealed: Vec<u8>,
    scratch: Vec<u8>,
    /// `DP_BATCH` buffers, so that the bare side of the batch comparison works on as many
    /// buffers (as much memory) as the engine's batch.
    many: Vec<Vec<u8>>,
}

impl BareCase {
    fn new(bare: Bare, iv_len: usize, body_len: usize) -> Self {
        let mut work = vec![0u8; ESP_HDR + iv_len + body_len + ICV];
        work[..4].copy_from_slice(&SPI.to_be_bytes());
        work[7] = 1;
        for (i, b) in work[ESP_HDR + iv_len..][..body_len].iter_mut().enumerate() {
            *b = i as u8;
        }
        let mut c = Self {
            bare,
            iv_len,
            sealed: Vec::new(),
            scratch: Vec::new(),
            many: vec![work.clone(); DP_BATCH],
            work,
        };
        let mut sealed = c.work.clone();
        c.seal_buf(&mut sealed);
        c.scratch = sealed.clone();
        c.sealed = sealed;
        c.open();
        c
    }

    fn seal_buf(&self, buf: &mut [u8]) {
        let icv_at = buf.len() - ICV;
        let (front, icv) = buf.split_at_mut(icv_at);
        match &self.bare {
            Bare::Aead { key, gmac: true } => {
                let tag = key.seal_in_place(&NONCE, front, &mut []).unwrap();
                icv.copy_from_slice(&tag);
            }
            Bare::Aead { key, gmac: false } => {
                let (head, body) = front.split_at_mut(ESP_HDR + self.iv_len);
                let tag = key.seal_in_place(&NONCE, &head[..ESP_HDR], body).unwrap();
                icv.copy_from_slice(&tag);
            }
            Bare::Cbc { enc, mac } => {
                enc.encrypt_in_place(&CBC_IV, &mut front[ESP_HDR + self.iv_len..])
                    .unwrap();
                icv.copy_from_slice(mac.sign(front).as_bytes());
            }
        }
    }

    fn seal(&mut self) {
        let mut work = std::mem::take(&mut self.work);
        self.seal_buf(black_box(&mut work));
        self.work = work;
    }

    /// `seal` on each of `DP_BATCH` buffers.
    fn seal_many(&mut self) {
        let mut many = std::mem::take(&mut self.many);
        for b in &mut many {
            self.seal_buf(black_box(b));
        }
        self.many = many;
    }

    /// `open` on each of `DP_BATCH` buffers (each first gets the sealed packet).
    fn open_many(&mut self) {
        let mut many = std::mem::take(&mut self.many);
        for b in &mut many {
            b.copy_from_slice(&self.sealed);
            self.open_buf(black_box(b));
        }
        self.many = many;
    }

    fn open(&mut self) {
        self.scratch.copy_from_slice(&self.sealed);
        let mut scratch = std::mem::take(&mut self.scratch);
        self.open_buf(black_box(&mut scratch));
        self.scratch = scratch;
    }

    fn open_buf(&self, buf: &mut [u8]) {
        match &self.bare {
            Bare::Aead { key, gmac: true } => {
                let icv_at = buf.len() - ICV;
                let (front, icv) = buf.split_at_mut(icv_at);
                key.open_in_place(&NONCE, front, icv).unwrap();
            }
            Bare::Aead { key, gmac: false } => {
                let (head, ct) = buf.split_at_mut(ESP_HDR + self.iv_len);
                key.open_in_place(&NONCE, &head[..ESP_HDR], ct).unwrap();
            }
            Bare::Cbc { enc, mac } => {
                let icv_at = buf.len() - ICV;
                let (front, icv) = buf.split_at_mut(icv_at);
                mac.verify(front, icv).unwrap();
                enc.decrypt_in_place(&CBC_IV, &mut front[ESP_HDR + self.iv_len..])
                    .unwrap();
            }
        }
    }
}

/// Packets per batch in the batch paths, the data plane's default (`Config::batch`).
const DP_BATCH: usize = 32;

/// The engine side: one outbound SA on `tx`, its inbound twin on `rx`, a sealed packet.
struct EngineCase {
    tx: Engine,
    rx: Engine,
    h: SaHandle,
    inner: Vec<u8>,
    out: Vec<u8>,
    sealed: Vec<u8>,
    opened: Vec<u8>,
    now: Instant,
    /// The data plane's buffers: plaintext at `SEAL_HEADROOM` (TX), received packets (RX).
    tx_bufs: Vec<Vec<u8>>,
    rx_bufs: Vec<Vec<u8>>,
    rx_lens: Vec<usize>,
}

impl EngineCase {
    /// What a TUN read does before the TX worker seals: the plaintext packet at
    /// `SEAL_HEADROOM`. Only the inner IP header is written again (the engine reads it; the
    /// rest of the buffer is the previous ciphertext, the cipher's cost does not depend on
    /// the octets), so that the engine side pays no copy the bare side does not.
    fn place_header(inner: &[u8], buf: &mut [u8]) {
        buf[SEAL_HEADROOM..SEAL_HEADROOM + 20].copy_from_slice(&inner[..20]);
    }

    /// `seal_in_place` of one packet (the single-call path).
    fn seal_in_place(&mut self) -> usize {
        let buf = &mut self.tx_bufs[0];
        Self::place_header(&self.inner, buf);
        self.tx
            .seal_in_place(&self.h, black_box(buf), SEAL_HEADROOM, self.now)
            .unwrap()
            .len()
    }

    /// `seal_batch` of `DP_BATCH` packets, as the TX worker calls it.
    fn seal_batch(&mut self) -> usize {
        for b in &mut self.tx_bufs {
            Self::place_header(&self.inner, b);
        }
        let mut n = 0;
        self.tx.seal_batch(
            &self.h,
            black_box(&mut self.tx_bufs[..]),
            SEAL_HEADROOM,
            self.now,
            |_, r| n += r.unwrap().1.len(),
        );
        n
    }

    /// `open_in_place` of one packet, after copying it into the receive buffer (as the bare
    /// side copies it into its scratch buffer).
    fn open_in_place(&mut self) -> usize {
        let buf = &mut self.rx_bufs[0];
        buf[..self.sealed.len()].copy_from_slice(&self.sealed);
        match self
            .rx
            .open_in_place(black_box(&mut buf[..self.sealed.len()]), self.now)
        {
            Verdict::Deliver(p) => p.len(),
            Verdict::Drop(r) => panic!("{r:?}"),
        }
    }

    /// `open_batch` of `DP_BATCH` packets, as the RX worker calls it (each copied into its
    /// receive buffer first, as above).
    fn open_batch(&mut self) -> usize {
        for b in &mut self.rx_bufs {
            b[..self.sealed.len()].copy_from_slice(&self.sealed);
        }
        let mut n = 0;
        self.rx.open_batch(
            black_box(&mut self.rx_bufs[..]),
            &self.rx_lens,
            self.now,
            |_, v| match v {
                Verdict::Deliver(p) => n += p.len(),
                Verdict::Drop(r) => panic!("{r:?}"),
            },
        );
        n
    }

    fn seal(&mut self) -> usize {
        self.tx
            .seal(&self.h, black_box(&self.inner), &mut self.out, self.now)
            .unwrap()
            .len()
    }

    fn open(&mut self) -> usize {
        match self
            .rx
            .open(black_box(&self.sealed), &mut self.opened, self.now)
        {
            Verdict::Deliver(p) => p.len(),
            Verdict::Drop(r) => panic!("{r:?}"),
        }
    }
}

/// An IPv4/UDP packet of `len` octets from 10.0.0.1 to 239.1.1.1.
fn inner_packet(len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 16;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 0, 0, 1]);
    p[16..20].copy_from_slice(&[239, 1, 1, 1]);
    p[24..26].copy_from_slice(&((len - 20) as u16).to_be_bytes());
    for (i, b) in p[28..].iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

fn setup(alg: EspAlgorithm, len: usize, now: Instant) -> (EngineCase, BareCase) {
    let keymat: Vec<u8> = (0..alg.keymat_len()).map(|i| 0x40 + i as u8).collect();
    let key = SadKey::SpiDst {
        spi: SPI,
        dst: IpAddr::V4(Ipv4Addr::new(239, 1, 1, 1)),
    };
    let mk = |dir| {
        SaConfig::new(
            SPI,
            dir,
            key,
            Mode::Tunnel(Tunnel::preserving(false)),
            alg,
            KeyMaterial::new(keymat.clone()),
            SnTransform::Sequential32,
        )
    };
    let tx = Engine::default();
    let h = tx.install(mk(Direction::Outbound), now).expect("install");
    let rx = Engine::default();
    let mut inbound = mk(Direction::Inbound);
    // The same packet is opened again and again.
    inbound.replay = ReplayPolicy::Disabled;
    rx.install(inbound, now).expect("install");
    let mut e = EngineCase {
        tx,
        rx,
        h,
        inner: inner_packet(len),
        out: vec![0u8; 2048],
        sealed: Vec::new(),
        opened: vec![0u8; 2048],
        now,
        tx_bufs: Vec::new(),
        rx_bufs: vec![vec![0u8; 2048]; DP_BATCH],
        rx_lens: Vec::new(),
    };
    e.tx_bufs = (0..DP_BATCH)
        .map(|_| {
            let mut b = vec![0u8; 2048];
            b[SEAL_HEADROOM..SEAL_HEADROOM + len].copy_from_slice(&e.inner);
            b
        })
        .collect();
    let n = e.seal();
    e.sealed = e.out[..n].to_vec();
    e.rx_lens = vec![n; DP_BATCH];
    assert_eq!(e.open(), len);
    assert_eq!(e.open_in_place(), len);
    assert_eq!(e.open_batch(), len * DP_BATCH);
    // The in-place and batch paths produce packets of the same length as `seal`.
    assert_eq!(e.seal_in_place(), n);
    assert_eq!(e.seal_batch(), n * DP_BATCH);
    let iv_len = match alg {
        EspAlgorithm::AesGcm16Iiv { .. } | EspAlgorithm::ChaCha20Poly1305Iiv => 0,
        EspAlgorithm::AesCbcHmacSha256 { .. } => 16,
        _ => 8,
    };
    let body_len = n - OUTER - ESP_HDR - iv_len - ICV;
    let b = BareCase::new(Bare::new(alg, &keymat), iv_len, body_len);
    (e, b)
}

fn bench_seal_open(c: &mut Criterion) {
    let now = Instant::now();
    for (name, alg) in ALGS {
        let mut g = c.benchmark_group(format!("seal_open/{name}"));
        for len in SIZES {
            let (mut e, mut b) = setup(alg, len, now);
            g.throughput(Throughput::Bytes(len as u64));
            g.bench_function(BenchmarkId::new("bare_seal", len), |x| x.iter(|| b.seal()));
            g.bench_function(BenchmarkId::new("engine_seal", len), |x| {
                x.iter(|| e.seal())
            });
            g.bench_function(BenchmarkId::new("engine_seal_in_place", len), |x| {
                x.iter(|| e.seal_in_place())
            });
            g.throughput(Throughput::Bytes((len * DP_BATCH) as u64));
            g.bench_function(BenchmarkId::new("engine_seal_batch32", len), |x| {
                x.iter(|| e.seal_batch())
            });
            g.throughput(Throughput::Bytes(len as u64));
            g.bench_function(BenchmarkId::new("bare_open", len), |x| x.iter(|| b.open()));
            g.bench_function(BenchmarkId::new("engine_open", len), |x| {
                x.iter(|| e.open())
            });
            g.bench_function(BenchmarkId::new("engine_open_in_place", len), |x| {
                x.iter(|| e.open_in_place())
            });
            g.throughput(Throughput::Bytes((len * DP_BATCH) as u64));
            g.bench_function(BenchmarkId::new("engine_open_batch32", len), |x| {
                x.iter(|| e.open_batch())
            });
        }
        g.finish();
    }
}

/// Ratios on a shared machine: short batches of the calls alternate, so bare and engine
/// calls see the same background load; the median batch of each is reported, in ns per
/// packet. The engine columns that decide the target are the data plane's paths
/// (`seal_batch` / `open_batch` of 32 packets, in place), compared with the bare call on
/// 32 buffers as well (the same amount of memory: a 32-packet batch of 1400 octets does not
/// stay in a 48 KiB L1 cache the way one buffer does); the single in-place calls and the
/// copying `seal` / `open` follow, compared with the bare call on one buffer.
fn paired_report() {
    // `GIKEV2_BENCH_ROUNDS` (default 300) and `GIKEV2_BENCH_FILTER` (a substring of
    // "algorithm/size", e.g. `aes-gcm-16-128/1400`) narrow the report, e.g. for a profiler.
    let rounds: usize = std::env::var("GIKEV2_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let filter = std::env::var("GIKEV2_BENCH_FILTER").unwrap_or_default();
    const BATCH: u32 = 256;
    let now = Instant::now();
    eprintln!(
        "\npaired ({rounds} rounds of {BATCH}-packet batches; ns per packet, medians; ratio = \
         bare / engine): algorithm | size | bare_seal x32 | seal_batch32 | ratio | bare_open x32 \
         | open_batch32 | ratio || bare_seal | seal_in_place | ratio | bare_open | open_in_place \
         | ratio || seal (copy) | ratio | open (copy) | ratio"
    );
    let time = |calls: u32, per_call: u32, f: &mut dyn FnMut()| {
        let start = Instant::now();
        for _ in 0..calls {
            f();
        }
        start.elapsed().as_secs_f64() * 1e9 / f64::from(calls * per_call)
    };
    let b32 = DP_BATCH as u32;
    for (name, alg) in ALGS {
        for len in SIZES {
            if !format!("{name}/{len}").contains(&filter) {
                continue;
            }
            let (mut e, mut b) = setup(alg, len, now);
            let mut t: [Vec<f64>; 10] = Default::default();
            for _ in 0..rounds {
                t[0].push(time(BATCH, 1, &mut || b.seal()));
                t[1].push(time(BATCH / b32, b32, &mut || {
                    black_box(e.seal_batch());
                }));
                t[2].push(time(BATCH, 1, &mut || b.open()));
                t[3].push(time(BATCH / b32, b32, &mut || {
                    black_box(e.open_batch());
                }));
                t[4].push(time(BATCH, 1, &mut || {
                    black_box(e.seal_in_place());
                }));
                t[5].push(time(BATCH, 1, &mut || {
                    black_box(e.open_in_place());
                }));
                t[6].push(time(BATCH, 1, &mut || {
                    black_box(e.seal());
                }));
                t[7].push(time(BATCH, 1, &mut || {
                    black_box(e.open());
                }));
                t[8].push(time(BATCH / b32, b32, &mut || b.seal_many()));
                t[9].push(time(BATCH / b32, b32, &mut || b.open_many()));
            }
            let m: Vec<f64> = t
                .iter_mut()
                .map(|v| {
                    v.sort_by(f64::total_cmp);
                    v[v.len() / 2]
                })
                .collect();
            eprintln!(
                "paired {name} | {len} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.2} || {:.0} | \
                 {:.0} | {:.2} | {:.0} | {:.0} | {:.2} || {:.0} | {:.2} | {:.0} | {:.2}",
                m[8],
                m[1],
                m[8] / m[1],
                m[9],
                m[3],
                m[9] / m[3],
                m[0],
                m[4],
                m[0] / m[4],
                m[2],
                m[5],
                m[2] / m[5],
                m[6],
                m[0] / m[6],
                m[7],
                m[2] / m[7],
            );
        }
    }
}

criterion_group!(benches, bench_seal_open);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let has = |f: &str| args.iter().any(|a| a == f);
    // `GIKEV2_BENCH_PAIRED_ONLY=1` skips the criterion benches (quick ratio check).
    if std::env::var_os("GIKEV2_BENCH_PAIRED_ONLY").is_none() {
        benches();
    }
    // `cargo bench` passes --bench; `cargo test --benches` does not (quick smoke run).
    if has("--bench") && !has("--list") && !has("--test") && !has("--profile-time") {
        paired_report();
    }
    Criterion::default().configure_from_args().final_summary();
}
