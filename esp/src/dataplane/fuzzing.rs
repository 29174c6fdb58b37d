//! Fuzzing entry point for inbound packets as the data plane receives them
//! (`fuzz/fuzz_targets/esp_open.rs`; a regular test runs it over a seed corpus).
//!
//! [`fuzz_open`] builds a fresh [`Engine`] with a few inbound SAs (AES-GCM tunnel mode with
//! a per-SA replay window, AES-CBC + HMAC transport mode keyed by SPI + destination +
//! source, ChaCha20-Poly1305 with per-Sender-ID windows, AES-GMAC over IPv6) and feeds it
//! the input. The first octet picks how:
//!
//! - `0`: the rest is a packet with its IP header ([`Engine::open`], the IPv4 raw socket);
//! - `1`: the rest is an ESP packet with outer addresses picked by the next octet
//!   ([`Engine::open_esp`], the IPv6 raw socket);
//! - `2`: the rest is a plaintext packet: seal it on the outbound twin of an SA, open the
//!   result; what is delivered must be the packet;
//! - `3`: as 2, with one octet of the sealed packet flipped (position and mask from the
//!   next octets): nothing other than the original packet may be delivered.
//!
//! Hostile input never panics and never allocates per packet in the engine; the only
//! allocations are the engine and its SAs. [`seeds`] gives the seed corpus
//! (`fuzz/corpus/esp_open/`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use crate::engine::{Engine, Verdict};
use crate::replay::{ReplayPolicy, SenderKey};
use crate::sa::{
    Direction, EspAlgorithm, KeyMaterial, Mode, SaConfig, SaHandle, SenderIds, SnTransform, Tunnel,
};
use crate::sad::SadKey;

const GROUP_V4: Ipv4Addr = Ipv4Addr::new(239, 1, 1, 1);
const SENDER_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff3e, 0, 0, 0, 0, 0, 0, 1);
const SENDER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);

/// Outer addresses `open_esp` inputs may carry.
const ADDRS: [(IpAddr, IpAddr); 4] = [
    (IpAddr::V4(SENDER_V4), IpAddr::V4(GROUP_V4)),
    (IpAddr::V6(SENDER_V6), IpAddr::V6(GROUP_V6)),
    (IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::V4(GROUP_V4)),
    (
        IpAddr::V4(SENDER_V4),
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
    ),
];

/// SPIs of the fuzzing SAs (seeds use them).
pub const SPI_GCM: u32 = 0x100;
pub const SPI_CBC: u32 = 0x200;
pub const SPI_CHACHA: u32 = 0x300;
pub const SPI_GMAC: u32 = 0x400;
/// Index of the transport-mode SA among the fixture's SAs.
const TRANSPORT_SA: usize = 1;

struct Fixture {
    engine: Engine,
    /// Outbound twins, for the seal-then-open modes.
    outbound: Vec<SaHandle>,
}

fn keys(alg: EspAlgorithm, fill: u8) -> KeyMaterial {
    KeyMaterial::new(vec![fill; alg.keymat_len()])
}

fn fixture(now: Instant) -> Option<Fixture> {
    let engine = Engine::default();
    let preserving_v4 = Mode::Tunnel(Tunnel::preserving(false));
    let preserving_v6 = Mode::Tunnel(Tunnel::preserving(true));
    let gcm = EspAlgorithm::AesGcm16 { key_bits: 256 };
    let cbc = EspAlgorithm::AesCbcHmacSha256 { key_bits: 128 };
    let chacha = EspAlgorithm::ChaCha20Poly1305;
    let gmac = EspAlgorithm::AesGmac { key_bits: 128 };
    let specs = [
        (
            SPI_GCM,
            SadKey::SpiDst {
                spi: SPI_GCM,
                dst: IpAddr::V4(GROUP_V4),
            },
            preserving_v4,
            gcm,
            SnTransform::Sequential32,
            None,
        ),
        (
            SPI_CBC,
            SadKey::SpiDstSrc {
                spi: SPI_CBC,
                dst: IpAddr::V4(GROUP_V4),
                src: IpAddr::V4(SENDER_V4),
            },
            Mode::Transport,
            cbc,
            SnTransform::Sequential32,
            None,
        ),
        (
            SPI_CHACHA,
            SadKey::Spi(SPI_CHACHA),
            preserving_v4,
            chacha,
            SnTransform::Unspecified32,
            Some(8u8),
        ),
        (
            SPI_GMAC,
            SadKey::SpiDst {
                spi: SPI_GMAC,
                dst: IpAddr::V6(GROUP_V6),
            },
            preserving_v6,
            gmac,
            SnTransform::Sequential32,
            None,
        ),
    ];
    let mut outbound = Vec::new();
    for (i, (spi, key, mode, alg, sn, bits)) in specs.into_iter().enumerate() {
        let fill = 0x11 * (i as u8 + 1);
        let mut inb = SaConfig::new(spi, Direction::Inbound, key, mode, alg, keys(alg, fill), sn);
        let mut out = SaConfig::new(
            spi,
            Direction::Outbound,
            SadKey::Spi(spi),
            mode,
            alg,
            keys(alg, fill),
            sn,
        );
        if let Some(b) = bits {
            inb.sender_ids = Some(SenderIds {
                bits: b,
                ids: Vec::new(),
            });
            inb.replay = ReplayPolicy::PerSender {
                window: 64,
                key: SenderKey::SenderId,
                max_senders: 4,
            };
            out.sender_ids = Some(SenderIds {
                bits: b,
                ids: vec![3],
            });
        }
        engine.install(inb, now).ok()?;
        outbound.push(engine.install(out, now).ok()?);
    }
    Some(Fixture { engine, outbound })
}

/// What one input came to (for the seed tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Too short to pick a mode, or `seal` refused the plaintext.
    Nothing,
    /// Delivered this many octets.
    Delivered(usize),
    Dropped(crate::sa::DropReason),
}

impl From<Verdict<'_>> for Outcome {
    fn from(v: Verdict<'_>) -> Self {
        match v {
            Verdict::Deliver(p) => Self::Delivered(p.len()),
            Verdict::Drop(r) => Self::Dropped(r),
        }
    }
}

/// Runs one fuzz input (see the module documentation). Panics only if the engine breaks
/// an invariant (delivers something it did not seal).
pub fn fuzz_open(data: &[u8]) {
    let _ = run(data);
}

/// [`fuzz_open`] with its outcome.
pub fn run(data: &[u8]) -> Outcome {
    let now = Instant::now();
    let Some(f) = fixture(now) else {
        // The fixture is fixed; failing to build it is a bug worth a crash.
        panic!("fuzzing fixture did not install");
    };
    let mut out = [0u8; 4096];
    let Some((&mode, rest)) = data.split_first() else {
        return Outcome::Nothing;
    };
    match mode % 4 {
        0 => f.engine.open(rest, &mut out, now).into(),
        1 => {
            let Some((&sel, esp)) = rest.split_first() else {
                return Outcome::Nothing;
            };
            let (src, dst) = ADDRS[usize::from(sel) % ADDRS.len()];
            f.engine.open_esp(src, dst, esp, &mut out, now).into()
        }
        m => {
            let Some((&which, rest)) = rest.split_first() else {
                return Outcome::Nothing;
            };
            let (flip, plain) = if m == 3 {
                match rest {
                    [a, b, mask, p @ ..] => {
                        (Some((usize::from(*a) << 8 | usize::from(*b), *mask)), p)
                    }
                    _ => return Outcome::Nothing,
                }
            } else {
                (None, rest)
            };
            let index = usize::from(which) % f.outbound.len();
            let Some(sa) = f.outbound.get(index) else {
                return Outcome::Nothing;
            };
            let mut sealed = [0u8; 4096];
            let Ok(s) = f.engine.seal(sa, plain, &mut sealed, now) else {
                return Outcome::Nothing;
            };
            let mut flipped = None;
            if let Some((pos, mask)) = flip {
                let at = pos % s.len().max(1);
                if let Some(b) = s.get_mut(at) {
                    *b ^= mask.max(1);
                    flipped = Some(at);
                }
            }
            let sealed: &[u8] = s;
            let v = f.engine.open(sealed, &mut out, now);
            if let Verdict::Deliver(p) = &v {
                // Only the sealed packet may come out: its IP packet (trailing octets past
                // the header's length are not part of it), with the IPv4 header checksum
                // recomputed in transport mode. In transport mode the IP header travels
                // unprotected (RFC 4303 3.1.1): an octet flipped there (TTL, options, ...)
                // is delivered as flipped.
                let info = crate::ip::parse(plain).ok();
                let total = info.map_or(0, |i| i.total_len);
                let header = info.map_or(0, |i| i.payload_offset);
                let original = plain.get(..total).unwrap_or(&[]);
                assert_eq!(p.len(), original.len(), "delivered length");
                let v4 = original.first().is_some_and(|b| b >> 4 == 4);
                let unprotected = flipped.filter(|&at| index == TRANSPORT_SA && at < header);
                for (i, (a, b)) in p.iter().zip(original).enumerate() {
                    if !(v4 && (i == 10 || i == 11)) && Some(i) != unprotected {
                        assert_eq!(a, b, "delivered octet {i} differs from the sealed one");
                    }
                }
            }
            v.into()
        }
    }
}

/// A UDP packet to the group (IPv4 or IPv6) from the fixture's sender.
fn udp(v6: bool, payload: &[u8]) -> Vec<u8> {
    let (hdr, total) = if v6 {
        (40, 48 + payload.len())
    } else {
        (20, 28 + payload.len())
    };
    let mut p = vec![0u8; total];
    if v6 {
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p[6] = 17;
        p[7] = 5;
        p[8..24].copy_from_slice(&SENDER_V6.octets());
        p[24..40].copy_from_slice(&GROUP_V6.octets());
    } else {
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 5;
        p[9] = 17;
        p[12..16].copy_from_slice(&SENDER_V4.octets());
        p[16..20].copy_from_slice(&GROUP_V4.octets());
    }
    p[hdr..hdr + 2].copy_from_slice(&5000u16.to_be_bytes());
    p[hdr + 2..hdr + 4].copy_from_slice(&5000u16.to_be_bytes());
    p[hdr + 4..hdr + 6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[hdr + 8..].copy_from_slice(payload);
    p
}

/// Seed inputs, deterministic: for each fixture SA a plaintext to seal and open (mode 2),
/// the same with a flipped octet (mode 3), and the sealed packet itself, which opens in a
/// fresh fixture (mode 0 with its header, mode 1 as ESP with its addresses).
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let now = Instant::now();
    let Some(f) = fixture(now) else {
        return Vec::new();
    };
    let names = ["gcm", "cbc", "chacha", "gmac"];
    let mut out = Vec::new();
    for (i, (name, sa)) in names.iter().zip(&f.outbound).enumerate() {
        let v6 = *name == "gmac";
        let plain = udp(v6, format!("seed for {name}").as_bytes());
        let with = |head: &[u8], body: &[u8]| [head, body].concat();
        out.push((format!("{name}_seal_open"), with(&[2, i as u8], &plain)));
        out.push((
            format!("{name}_flip"),
            with(&[3, i as u8, 0, 24, 0x40], &plain),
        ));
        let mut buf = [0u8; 4096];
        let Ok(sealed) = f.engine.seal(sa, &plain, &mut buf, now) else {
            continue;
        };
        out.push((format!("{name}_packet"), with(&[0], sealed)));
        let (hdr, sel) = if v6 { (40, 1) } else { (20, 0) };
        if let Some(esp) = sealed.get(hdr..) {
            out.push((format!("{name}_esp"), with(&[1, sel], esp)));
        }
    }
    out.push(("empty".into(), Vec::new()));
    out.push(("short_ip".into(), vec![0, 0x45, 0, 0, 20]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp_v4(dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
        let total = 28 + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 7;
        p[9] = 17;
        p[12..16].copy_from_slice(&SENDER_V4.octets());
        p[16..20].copy_from_slice(&dst.octets());
        p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p[28..].copy_from_slice(payload);
        p
    }

    #[test]
    fn round_trips_through_every_fixture_sa() {
        let p = udp_v4(GROUP_V4, b"fuzz seed");
        for which in 0..3u8 {
            let mut input = vec![2, which];
            input.extend_from_slice(&p);
            fuzz_open(&input);
            let mut flipped = vec![3, which, 0, 30, 0x80];
            flipped.extend_from_slice(&p);
            fuzz_open(&flipped);
        }
    }

    #[test]
    fn sealed_seeds_open_in_a_fresh_fixture() {
        let seeds = seeds();
        assert!(seeds.len() >= 14, "{}", seeds.len());
        for (name, data) in &seeds {
            let o = run(data);
            let expect_delivery =
                name.ends_with("_packet") || name.ends_with("_esp") || name.ends_with("_seal_open");
            if expect_delivery {
                assert!(
                    matches!(o, Outcome::Delivered(n) if n > 28),
                    "{name}: {o:?}"
                );
            }
            if name.ends_with("_flip") {
                assert!(!matches!(o, Outcome::Delivered(_)), "{name}: {o:?}");
            }
        }
        // Twice in a row on one engine: the second is a replay (fresh engines per input
        // make each input deterministic, so try it on one fixture here).
        let now = Instant::now();
        let f = fixture(now).unwrap();
        let (_, pkt) = seeds.iter().find(|(n, _)| n == "gcm_packet").unwrap();
        let mut out = [0u8; 4096];
        assert!(matches!(
            f.engine.open(&pkt[1..], &mut out, now),
            Verdict::Deliver(_)
        ));
        assert_eq!(
            f.engine.open(&pkt[1..], &mut out, now),
            Verdict::Drop(crate::sa::DropReason::ReplayDuplicate)
        );
    }

    #[test]
    fn short_and_empty_inputs() {
        for d in [&[][..], &[0], &[1], &[2], &[3, 0, 1], &[0, 0x45, 0, 0]] {
            fuzz_open(d);
        }
    }
}
