//! NAT detection hashes (RFC 7296 2.23): `SHA-1(SPIi | SPIr | IP address | port)`.
//!
//! SHA-1 here is a fingerprint, not a security function; RFC 7296 fixes the algorithm.

use std::net::{IpAddr, SocketAddr};

use crate::wire::notify::NAT_DETECTION_LEN;

/// The NAT_DETECTION_*_IP notification data for `addr`.
pub fn nat_detection_hash(
    spi_i: &[u8; 8],
    spi_r: &[u8; 8],
    addr: SocketAddr,
) -> [u8; NAT_DETECTION_LEN] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(spi_i);
    ctx.update(spi_r);
    match addr.ip() {
        IpAddr::V4(a) => ctx.update(&a.octets()),
        IpAddr::V6(a) => ctx.update(&a.octets()),
    }
    ctx.update(&addr.port().to_be_bytes());
    let mut out = [0u8; NAT_DETECTION_LEN];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_covers_every_input() {
        let a: SocketAddr = "192.0.2.1:500".parse().unwrap();
        let b: SocketAddr = "192.0.2.1:4500".parse().unwrap();
        let h = nat_detection_hash(&[1; 8], &[2; 8], a);
        assert_ne!(h, nat_detection_hash(&[1; 8], &[2; 8], b));
        assert_ne!(h, nat_detection_hash(&[1; 8], &[3; 8], a));
        assert_eq!(h, nat_detection_hash(&[1; 8], &[2; 8], a));
    }
}
