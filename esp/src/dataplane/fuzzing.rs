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
//! allocations are the engine and its SAs.

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

/// Runs one fuzz input (see the module documentation). Panics only if the engine breaks
/// an invariant (delivers something it did not seal).
pub fn fuzz_open(data: &[u8]) {
    let now = Instant::now();
    let Some(f) = fixture(now) else {
        // The fixture is fixed; failing to build it is a bug worth a crash.
        panic!("fuzzing fixture did not install");
    };
    let mut out = [0u8; 4096];
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            let _ = f.engine.open(rest, &mut out, now);
        }
        1 => {
            let Some((&sel, esp)) = rest.split_first() else {
                return;
            };
            let (src, dst) = ADDRS[usize::from(sel) % ADDRS.len()];
            let _ = f.engine.open_esp(src, dst, esp, &mut out, now);
        }
        m => {
            let Some((&which, rest)) = rest.split_first() else {
                return;
            };
            let (flip, plain) = if m == 3 {
                match rest {
                    [a, b, mask, p @ ..] => {
                        (Some((usize::from(*a) << 8 | usize::from(*b), *mask)), p)
                    }
                    _ => return,
                }
            } else {
                (None, rest)
            };
            let Some(sa) = f.outbound.get(usize::from(which) % f.outbound.len()) else {
                return;
            };
            let mut sealed = [0u8; 4096];
            let Ok(s) = f.engine.seal(sa, plain, &mut sealed, now) else {
                return;
            };
            if let Some((pos, mask)) = flip {
                let len = s.len();
                if let Some(b) = s.get_mut(pos % len.max(1)) {
                    *b ^= mask.max(1);
                }
            }
            let sealed: &[u8] = s;
            if let Verdict::Deliver(p) = f.engine.open(sealed, &mut out, now) {
                // Only the sealed packet may come out: its IP packet (trailing octets past
                // the header's length are not part of it), with the IPv4 header checksum
                // recomputed in transport mode.
                let total = crate::ip::parse(plain).map(|i| i.total_len).unwrap_or(0);
                let original = plain.get(..total).unwrap_or(&[]);
                assert_eq!(p.len(), original.len(), "delivered length");
                let v4 = original.first().is_some_and(|b| b >> 4 == 4);
                for (i, (a, b)) in p.iter().zip(original).enumerate() {
                    if !(v4 && (i == 10 || i == 11)) {
                        assert_eq!(a, b, "delivered octet {i} differs from the sealed one");
                    }
                }
            }
        }
    }
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
    fn short_and_empty_inputs() {
        for d in [&[][..], &[0], &[1], &[2], &[3, 0, 1], &[0, 0x45, 0, 0]] {
            fuzz_open(d);
        }
    }
}
