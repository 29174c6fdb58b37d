//! Just enough IPv4/IPv6 header handling for the ESP engine: read the addresses, the next
//! layer protocol and its ports (SPD selectors, RFC 4301 4.4.1.1), find where ESP starts, and
//! write outer headers for tunnel mode (RFC 4301 5.1.2, RFC 5374 3.1).
//!
//! Every read goes through `get`/`split_at_checked`: hostile packets yield `IpError`, never a
//! panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol numbers this module needs.
pub mod proto {
    pub const HOPOPT: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const IPV4: u8 = 4;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const IPV6: u8 = 41;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const ESP: u8 = 50;
    pub const ICMPV6: u8 = 58;
    pub const NO_NEXT: u8 = 59;
    pub const DSTOPTS: u8 = 60;
    pub const SCTP: u8 = 132;
    pub const UDPLITE: u8 = 136;
}

pub(crate) const IPV4_MIN_HEADER: usize = 20;
pub(crate) const IPV6_HEADER: usize = 40;
/// RFC 4301 4.4.1.1 asks for a configurable list of IPv6 extension headers to skip; we skip
/// the default list and at most this many of them.
const MAX_IPV6_EXT_HEADERS: usize = 8;

/// Why a packet's IP header could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IpError {
    #[error("packet shorter than its IP header")]
    Truncated,
    #[error("IP version is neither 4 nor 6")]
    BadVersion,
    #[error("IP header length field is invalid")]
    BadHeaderLength,
    #[error("IP total length disagrees with the buffer")]
    BadTotalLength,
    #[error("too many IPv6 extension headers")]
    TooManyExtensionHeaders,
}

/// The ports (or ICMP type/code) of a packet, as seen by the SPD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    /// The protocol carries no ports.
    None,
    /// Not available: non-initial fragment or truncated next-layer header (RFC 4301 4.4.1.1
    /// "OPAQUE").
    Opaque,
    /// Source and destination port; for ICMP both hold `type << 8 | code` (RFC 7296 3.13.1).
    Known { src: u16, dst: u16 },
}

/// What the engine needs to know about an IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpInfo {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The next layer protocol after the skipped extension headers.
    pub protocol: u8,
    /// Offset of the next-layer header (= length of the IP header incl. extension headers).
    pub payload_offset: usize,
    /// Offset of the byte that holds `protocol` (IPv4 protocol field or the last Next Header).
    pub protocol_field: usize,
    /// Length of the packet according to its own header (<= buffer length).
    pub total_len: usize,
    pub ports: Ports,
}

impl IpInfo {
    pub fn is_v6(&self) -> bool {
        self.dst.is_ipv6()
    }
}

fn byte(b: &[u8], i: usize) -> Result<u8, IpError> {
    b.get(i).copied().ok_or(IpError::Truncated)
}

fn u16_at(b: &[u8], i: usize) -> Result<u16, IpError> {
    match b.get(i..i + 2) {
        Some(&[h, l]) => Ok(u16::from_be_bytes([h, l])),
        _ => Err(IpError::Truncated),
    }
}

fn arr<const N: usize>(b: &[u8], i: usize) -> Result<[u8; N], IpError> {
    b.get(i..i + N)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(IpError::Truncated)
}

/// Reads an IPv4 or IPv6 header. Trailing bytes beyond the header's total length are
/// ignored (`total_len` tells where the packet ends).
#[inline]
pub fn parse(packet: &[u8]) -> Result<IpInfo, IpError> {
    match byte(packet, 0)? >> 4 {
        4 => parse_v4::<true>(packet),
        6 => parse_v6(packet),
        _ => Err(IpError::BadVersion),
    }
}

/// [`parse`] for callers that do not look at the ports (no selectors to check, or the outer
/// header of an ESP packet): the same result and the same errors, except that an IPv4
/// header's `ports` are [`Ports::Opaque`] without reading the next-layer header.
#[inline]
pub(crate) fn parse_no_ports(packet: &[u8]) -> Result<IpInfo, IpError> {
    match byte(packet, 0)? >> 4 {
        4 => parse_v4::<false>(packet),
        6 => parse_v6(packet),
        _ => Err(IpError::BadVersion),
    }
}

/// The IPv4 header (RFC 791 3.1): one bounds check for the fixed 20 octets, then fixed
/// offsets. `PORTS`: read the ports (RFC 4301 4.4.1.1) too.
#[inline]
fn parse_v4<const PORTS: bool>(p: &[u8]) -> Result<IpInfo, IpError> {
    let ihl = usize::from(byte(p, 0)? & 0x0f) * 4;
    if ihl < IPV4_MIN_HEADER {
        return Err(IpError::BadHeaderLength);
    }
    let h: &[u8; IPV4_MIN_HEADER] = p.first_chunk().ok_or(IpError::Truncated)?;
    if p.len() < ihl {
        return Err(IpError::Truncated);
    }
    let total_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if total_len < ihl || total_len > p.len() {
        return Err(IpError::BadTotalLength);
    }
    let non_initial_fragment = u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0;
    let protocol = h[9];
    let src = IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19]));
    let ports = if PORTS {
        let body = p.get(ihl..total_len).ok_or(IpError::Truncated)?;
        ports_of(protocol, body, non_initial_fragment)
    } else {
        Ports::Opaque
    };
    Ok(IpInfo {
        src,
        dst,
        protocol,
        payload_offset: ihl,
        protocol_field: 9,
        total_len,
        ports,
    })
}

fn parse_v6(p: &[u8]) -> Result<IpInfo, IpError> {
    if p.len() < IPV6_HEADER {
        return Err(IpError::Truncated);
    }
    let total_len = IPV6_HEADER + usize::from(u16_at(p, 4)?);
    if total_len > p.len() {
        return Err(IpError::BadTotalLength);
    }
    let src = IpAddr::V6(Ipv6Addr::from(arr::<16>(p, 8)?));
    let dst = IpAddr::V6(Ipv6Addr::from(arr::<16>(p, 24)?));
    let mut next = byte(p, 6)?;
    let mut field = 6;
    let mut off = IPV6_HEADER;
    let mut non_initial_fragment = false;
    let mut skipped = 0;
    // RFC 4301 4.4.1.1: skip 0 (Hop-by-hop), 43 (Routing), 44 (Fragment), 60 (Destination
    // Options) by default; AH and ESP are next layer protocols.
    while matches!(
        next,
        proto::HOPOPT | proto::ROUTING | proto::FRAGMENT | proto::DSTOPTS
    ) {
        skipped += 1;
        if skipped > MAX_IPV6_EXT_HEADERS {
            return Err(IpError::TooManyExtensionHeaders);
        }
        let len = if next == proto::FRAGMENT {
            if u16_at(p, off + 2)? & 0xfff8 != 0 {
                non_initial_fragment = true;
            }
            8
        } else {
            (usize::from(byte(p, off + 1)?) + 1) * 8
        };
        field = off;
        next = byte(p, off)?;
        off += len;
        if off > total_len {
            return Err(IpError::Truncated);
        }
    }
    let body = p.get(off..total_len).ok_or(IpError::Truncated)?;
    let ports = ports_of(next, body, non_initial_fragment);
    Ok(IpInfo {
        src,
        dst,
        protocol: next,
        payload_offset: off,
        protocol_field: field,
        total_len,
        ports,
    })
}

#[inline]
fn ports_of(protocol: u8, body: &[u8], non_initial_fragment: bool) -> Ports {
    let two_ports = matches!(
        protocol,
        proto::TCP | proto::UDP | proto::SCTP | proto::UDPLITE
    );
    let icmp = matches!(protocol, proto::ICMP | proto::ICMPV6);
    if !two_ports && !icmp {
        return Ports::None;
    }
    if non_initial_fragment {
        return Ports::Opaque;
    }
    match (two_ports, body) {
        (true, [a, b, c, d, ..]) => Ports::Known {
            src: u16::from_be_bytes([*a, *b]),
            dst: u16::from_be_bytes([*c, *d]),
        },
        (false, [t, c, ..]) => {
            let v = u16::from_be_bytes([*t, *c]);
            Ports::Known { src: v, dst: v }
        }
        _ => Ports::Opaque,
    }
}

/// The Internet checksum of an IPv4 header (RFC 791 3.1, RFC 1071), with the checksum field
/// as stored. The 20-octet header without options, which every header we build is, takes a
/// straight-line sum of its ten words.
#[inline]
pub(crate) fn ipv4_checksum(header: &[u8]) -> u16 {
    if let Ok(h) = <&[u8; IPV4_MIN_HEADER]>::try_from(header) {
        return ipv4_checksum_20(h);
    }
    let mut sum: u32 = 0;
    for pair in header.chunks(2) {
        let word = match pair {
            [h, l] => u16::from_be_bytes([*h, *l]),
            [h] => u16::from_be_bytes([*h, 0]),
            _ => 0,
        };
        sum += u32::from(word);
    }
    fold(sum)
}

/// [`ipv4_checksum`] of a header without options.
#[inline]
fn ipv4_checksum_20(h: &[u8; IPV4_MIN_HEADER]) -> u16 {
    let w = |i: usize| u32::from(u16::from_be_bytes([h[i], h[i + 1]]));
    let sum = w(0) + w(2) + w(4) + w(6) + w(8) + w(10) + w(12) + w(14) + w(16) + w(18);
    fold(sum)
}

/// One's complement of the one's complement sum (RFC 1071 4.1: fold the carries back in).
#[inline]
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Values copied from the inner header into a tunnel header (RFC 4301 5.1.2.1).
#[derive(Debug, Clone, Copy)]
pub(crate) struct OuterParams {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// DSCP+ECN (IPv4 TOS / IPv6 Traffic Class).
    pub tos: u8,
    pub ttl: u8,
    /// IPv4 DF bit (copied from an IPv4 inner header, RFC 4301 8.1 default).
    pub dont_fragment: bool,
    pub ident: u16,
}

/// Length of the outer header `write_outer` produces for this address family.
#[inline]
pub(crate) fn outer_len(v6: bool) -> usize {
    if v6 { IPV6_HEADER } else { IPV4_MIN_HEADER }
}

/// Writes a minimal IPv4 or IPv6 header (no options) into `out` (exactly `outer_len` bytes):
/// the outer header of tunnel mode (`protocol` ESP), or a rebuilt transport-mode header.
/// `payload_len` is everything after the header. Returns `None` if the sizes do not fit the
/// header's length field or the addresses are of mixed families.
#[inline]
pub(crate) fn write_outer(
    out: &mut [u8],
    p: &OuterParams,
    protocol: u8,
    payload_len: usize,
) -> Option<()> {
    match (p.src, p.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = u16::try_from(IPV4_MIN_HEADER + payload_len).ok()?;
            let h: &mut [u8; IPV4_MIN_HEADER] = out.try_into().ok()?;
            h[0] = 0x45;
            h[1] = p.tos;
            h[2..4].copy_from_slice(&total.to_be_bytes());
            h[4..6].copy_from_slice(&p.ident.to_be_bytes());
            h[6..8].copy_from_slice(&(if p.dont_fragment { 0x4000u16 } else { 0 }).to_be_bytes());
            h[8] = p.ttl;
            h[9] = protocol;
            h[10..12].fill(0);
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            let c = ipv4_checksum(h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            Some(())
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let plen = u16::try_from(payload_len).ok()?;
            let h: &mut [u8; IPV6_HEADER] = out.try_into().ok()?;
            h[0] = 0x60 | (p.tos >> 4);
            h[1] = p.tos << 4;
            h[2..4].fill(0);
            h[4..6].copy_from_slice(&plen.to_be_bytes());
            h[6] = protocol;
            h[7] = p.ttl;
            h[8..24].copy_from_slice(&s.octets());
            h[24..40].copy_from_slice(&d.octets());
            Some(())
        }
        _ => None,
    }
}

/// The outer IPv4 header of a tunnel-mode SA with IPv4 endpoints, prepared once per batch
/// (RFC 4301 5.1.2.1, RFC 5374 5.1): what is the same for every packet (version and IHL,
/// protocol ESP, the endpoint addresses that are not preserved, the TTL when no address is
/// preserved) is summed once for the header checksum (RFC 1071: the one's complement sum
/// does not depend on the order of the words), and per packet only TOS, total length,
/// identification, DF, a copied TTL and the preserved addresses are added. The header is the
/// one [`write_outer`] writes for the same values (tested).
#[derive(Debug, Clone, Copy)]
pub(crate) struct OuterV4 {
    /// The header with the fixed fields set: version and IHL, TTL (when not copied),
    /// protocol ESP, the endpoint addresses that are not preserved; zeros elsewhere.
    template: [u8; IPV4_MIN_HEADER],
    preserve_src: bool,
    preserve_dst: bool,
    /// RFC 5374 3.1 as the engine reads it: with any address preserved the TTL is the
    /// inner one; otherwise the template's.
    copy_ttl: bool,
    /// Sum of the template's 16-bit words (RFC 1071).
    fixed_sum: u32,
}

/// The sum of the two 16-bit words of four octets.
#[inline]
fn addr_sum(a: [u8; 4]) -> u32 {
    let v = u32::from_be_bytes(a);
    (v >> 16) + (v & 0xffff)
}

impl OuterV4 {
    pub(crate) fn new(
        local: Ipv4Addr,
        remote: Ipv4Addr,
        preserve_src: bool,
        preserve_dst: bool,
        fixed_ttl: u8,
    ) -> Self {
        let copy_ttl = preserve_src || preserve_dst;
        let mut t = [0u8; IPV4_MIN_HEADER];
        t[0] = 0x45;
        if !copy_ttl {
            t[8] = fixed_ttl;
        }
        t[9] = proto::ESP;
        if !preserve_src {
            t[12..16].copy_from_slice(&local.octets());
        }
        if !preserve_dst {
            t[16..20].copy_from_slice(&remote.octets());
        }
        let fixed_sum = t
            .chunks_exact(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        Self {
            template: t,
            preserve_src,
            preserve_dst,
            copy_ttl,
            fixed_sum,
        }
    }

    /// Writes the outer header in front of an IPv4 packet whose header is `inner`: TOS and
    /// DF copied (RFC 4301 5.1.2.1, 8.1), `total` the outer packet's length, `ident` the
    /// identification. The template, then only the per-packet fields, each added to the
    /// template's sum for the checksum.
    #[inline]
    pub(crate) fn write(
        &self,
        h: &mut [u8; IPV4_MIN_HEADER],
        inner: &[u8; IPV4_MIN_HEADER],
        total: u16,
        ident: u16,
    ) {
        *h = self.template;
        let tos = inner[1];
        let df = inner[6] & 0x40;
        h[1] = tos;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h[4..6].copy_from_slice(&ident.to_be_bytes());
        h[6] = df;
        let mut sum = self.fixed_sum
            + u32::from(tos)
            + u32::from(total)
            + u32::from(ident)
            + (u32::from(df) << 8);
        if self.copy_ttl {
            h[8] = inner[8];
            sum += u32::from(inner[8]) << 8;
        }
        if self.preserve_src {
            let a = [inner[12], inner[13], inner[14], inner[15]];
            h[12..16].copy_from_slice(&a);
            sum += addr_sum(a);
        }
        if self.preserve_dst {
            let a = [inner[16], inner[17], inner[18], inner[19]];
            h[16..20].copy_from_slice(&a);
            sum += addr_sum(a);
        }
        h[10..12].copy_from_slice(&fold(sum).to_be_bytes());
    }
}

/// Reads TOS/Traffic Class, TTL/Hop Limit and DF from a header already validated by `parse`.
#[inline]
pub(crate) fn inner_params(packet: &[u8], v6: bool) -> (u8, u8, bool) {
    if v6 {
        let b0 = packet.first().copied().unwrap_or(0);
        let b1 = packet.get(1).copied().unwrap_or(0);
        let tc = (b0 << 4) | (b1 >> 4);
        (tc, packet.get(7).copied().unwrap_or(64), false)
    } else {
        let df = packet.get(6).is_some_and(|b| b & 0x40 != 0);
        (
            packet.get(1).copied().unwrap_or(0),
            packet.get(8).copied().unwrap_or(64),
            df,
        )
    }
}

/// After the transport-mode header at the front of `packet` has been given a new payload,
/// fixes its length field(s), protocol field and (IPv4) checksum.
pub(crate) fn fix_transport_header(
    packet: &mut [u8],
    info_v6: bool,
    header_len: usize,
    protocol_field: usize,
    protocol: u8,
    total_len: usize,
) -> Option<()> {
    *packet.get_mut(protocol_field)? = protocol;
    if info_v6 {
        let plen = u16::try_from(total_len.checked_sub(IPV6_HEADER)?).ok()?;
        packet.get_mut(4..6)?.copy_from_slice(&plen.to_be_bytes());
    } else {
        let total = u16::try_from(total_len).ok()?;
        packet.get_mut(2..4)?.copy_from_slice(&total.to_be_bytes());
        packet.get_mut(10..12)?.fill(0);
        let c = ipv4_checksum(packet.get(..header_len)?);
        packet.get_mut(10..12)?.copy_from_slice(&c.to_be_bytes());
    }
    Some(())
}

#[cfg(test)]
pub(crate) mod test_packets {
    //! Small packet builders for tests.
    use super::*;

    pub fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let total = 20 + 8 + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 7;
        p[9] = proto::UDP;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        let c = ipv4_checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p[28..].copy_from_slice(payload);
        p
    }

    pub fn udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let plen = 8 + payload.len();
        let mut p = vec![0u8; 40 + plen];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(plen as u16).to_be_bytes());
        p[6] = proto::UDP;
        p[7] = 5;
        p[8..24].copy_from_slice(&src.octets());
        p[24..40].copy_from_slice(&dst.octets());
        p[40..42].copy_from_slice(&sport.to_be_bytes());
        p[42..44].copy_from_slice(&dport.to_be_bytes());
        p[44..46].copy_from_slice(&(plen as u16).to_be_bytes());
        p[48..].copy_from_slice(payload);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::test_packets::*;
    use super::*;

    #[test]
    fn parses_udp4() {
        let p = udp4([10, 0, 0, 1], [239, 1, 1, 1], 1000, 2000, b"hello");
        let i = parse(&p).unwrap();
        assert_eq!(i.src, IpAddr::from([10, 0, 0, 1]));
        assert_eq!(i.dst, IpAddr::from([239, 1, 1, 1]));
        assert_eq!(i.protocol, proto::UDP);
        assert_eq!(i.payload_offset, 20);
        assert_eq!(
            i.ports,
            Ports::Known {
                src: 1000,
                dst: 2000
            }
        );
        assert_eq!(ipv4_checksum(&p[..20]), 0);
    }

    #[test]
    fn parses_udp6_with_extension_header() {
        let mut p = udp6(
            "2001:db8::1".parse().unwrap(),
            "ff3e::1".parse().unwrap(),
            5,
            6,
            b"x",
        );
        // Insert an 8-byte Destination Options header.
        let mut ext = vec![proto::UDP, 0, 1, 4, 0, 0, 0, 0];
        p[6] = proto::DSTOPTS;
        let plen = u16::from_be_bytes([p[4], p[5]]) + 8;
        p[4..6].copy_from_slice(&plen.to_be_bytes());
        let tail = p.split_off(40);
        p.append(&mut ext);
        p.extend_from_slice(&tail);
        let i = parse(&p).unwrap();
        assert_eq!(i.protocol, proto::UDP);
        assert_eq!(i.payload_offset, 48);
        assert_eq!(i.protocol_field, 40);
        assert_eq!(i.ports, Ports::Known { src: 5, dst: 6 });
    }

    /// RFC 1071 the long way: every 16-bit word, summed, folded, complemented.
    fn checksum_reference(h: &[u8]) -> u16 {
        let mut sum: u64 = 0;
        for (i, b) in h.iter().enumerate() {
            sum += u64::from(*b) << if i % 2 == 0 { 8 } else { 0 };
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    proptest::proptest! {
        /// The straight-line sum of a 20-octet header and the loop over headers with
        /// options give the reference checksum.
        #[test]
        fn checksum_matches_reference(h in proptest::collection::vec(proptest::num::u8::ANY, 20..=60)) {
            proptest::prop_assert_eq!(ipv4_checksum(&h), checksum_reference(&h));
            proptest::prop_assert_eq!(ipv4_checksum(&h[..20]), checksum_reference(&h[..20]));
        }

        /// `parse` never panics on arbitrary octets, and what it reads of an IPv4 header
        /// agrees with the fixed offsets of RFC 791 3.1.
        #[test]
        fn parse_v4_reads_fixed_offsets(mut p in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            if let Some(b) = p.first_mut() {
                *b = 0x40 | (*b & 0x0f);
            }
            if let Ok(i) = parse(&p) {
                proptest::prop_assert_eq!(i.payload_offset, usize::from(p[0] & 0x0f) * 4);
                proptest::prop_assert_eq!(i.total_len, usize::from(u16::from_be_bytes([p[2], p[3]])));
                proptest::prop_assert_eq!(i.protocol, p[9]);
                proptest::prop_assert_eq!(i.src, IpAddr::from([p[12], p[13], p[14], p[15]]));
                proptest::prop_assert_eq!(i.dst, IpAddr::from([p[16], p[17], p[18], p[19]]));
            }
        }

        /// `parse_no_ports` gives what `parse` gives, but for the ports of IPv4 packets.
        #[test]
        fn parse_no_ports_agrees(mut p in proptest::collection::vec(proptest::num::u8::ANY, 0..80), v6 in proptest::bool::ANY) {
            if let Some(b) = p.first_mut() {
                *b = if v6 { 0x60 } else { 0x40 | (*b & 0x0f) };
            }
            let (full, lean) = (parse(&p), parse_no_ports(&p));
            match (full, lean) {
                (Ok(f), Ok(l)) if !v6 => proptest::prop_assert_eq!(IpInfo { ports: Ports::Opaque, ..f }, l),
                (f, l) => proptest::prop_assert_eq!(f, l),
            }
        }

        /// The per-batch template writes the same header as `write_outer` with the values
        /// `packet::plan` derives from the inner header (tunnel mode, IPv4 endpoints).
        #[test]
        fn outer_v4_template_matches_write_outer(
            inner in proptest::array::uniform20(proptest::num::u8::ANY),
            local in proptest::array::uniform4(proptest::num::u8::ANY),
            remote in proptest::array::uniform4(proptest::num::u8::ANY),
            preserve_src in proptest::bool::ANY,
            preserve_dst in proptest::bool::ANY,
            payload_len in 0usize..=(65535 - 20),
            ident in proptest::num::u16::ANY,
        ) {
            let t = OuterV4::new(local.into(), remote.into(), preserve_src, preserve_dst, 64);
            let mut got = [0u8; 20];
            t.write(&mut got, &inner, (20 + payload_len) as u16, ident);
            let preserving = preserve_src || preserve_dst;
            let p = OuterParams {
                src: IpAddr::from(if preserve_src { [inner[12], inner[13], inner[14], inner[15]] } else { local }),
                dst: IpAddr::from(if preserve_dst { [inner[16], inner[17], inner[18], inner[19]] } else { remote }),
                tos: inner[1],
                ttl: if preserving { inner[8] } else { 64 },
                dont_fragment: inner[6] & 0x40 != 0,
                ident,
            };
            let mut want = [0u8; 20];
            proptest::prop_assert!(write_outer(&mut want, &p, proto::ESP, payload_len).is_some());
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn non_initial_fragment_ports_are_opaque() {
        let mut p = udp4([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, b"abc");
        p[6..8].copy_from_slice(&0x0001u16.to_be_bytes());
        assert_eq!(parse(&p).unwrap().ports, Ports::Opaque);
    }

    #[test]
    fn hostile_headers_are_errors() {
        assert_eq!(parse(&[]), Err(IpError::Truncated));
        assert_eq!(parse(&[0x55]), Err(IpError::BadVersion));
        assert_eq!(parse(&[0x44; 30]), Err(IpError::BadHeaderLength));
        let mut p = udp4([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, b"abc");
        p[2..4].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(parse(&p), Err(IpError::BadTotalLength));
        let mut p6 = vec![0x60; 40];
        p6[4..6].copy_from_slice(&0u16.to_be_bytes());
        p6[6] = proto::HOPOPT;
        assert_eq!(parse(&p6), Err(IpError::Truncated));
        // Every prefix of a valid packet either parses or errors; none panics.
        let good = udp4([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, b"abcdef");
        for n in 0..good.len() {
            let _ = parse(&good[..n]);
        }
    }
}
