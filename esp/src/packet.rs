//! ESP packet framing (RFC 4303 2): header, IV, payload, padding, pad length, next header,
//! ICV; outer header construction for tunnel mode (RFC 4301 5.1.2, with RFC 5374 3.1 / 5.1
//! address preservation) and transport mode; and the inverse on receipt (RFC 4303 3.4.4
//! steps 3-5, RFC 5374 5.2 item 6).
//!
//! Everything is written into the caller's buffer (STYLE D1); nothing here allocates.

use std::net::IpAddr;

use crate::cipher::ESP_HEADER_LEN;
use crate::ip::{self, IpInfo, OuterParams, proto};
use crate::sa::{DropReason, Mode, Sa, SealError};

/// RFC 4303 2.6: Next Header 59 marks a dummy packet.
pub const NEXT_HEADER_DUMMY: u8 = proto::NO_NEXT;
/// TTL / Hop Limit of headers we build when the inner header gives none to copy.
pub const DEFAULT_TTL: u8 = 64;

/// How `seal` lays out its output: `outer_len` octets of IP header (tunnel: the new outer
/// header; transport: the original header; none when the caller asked for the ESP packet
/// alone), then the ESP packet of `esp_len` octets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SealPlan {
    pub outer_len: usize,
    /// Transport mode: length of the original IP header, which the payload follows in the
    /// input; 0 in tunnel mode (the whole packet is the payload).
    pub inner_hdr: usize,
    pub payload_len: usize,
    pub pad_len: usize,
    pub next_header: u8,
    pub esp_len: usize,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub v6: bool,
    pub tos: u8,
    pub ttl: u8,
    pub dont_fragment: bool,
    /// Transport mode: where the protocol field sits in the copied header.
    pub protocol_field: usize,
    pub tunnel: bool,
    /// RFC 4303 2.6 dummy packet: the payload is `payload_len` zero octets.
    pub dummy: bool,
}

impl SealPlan {
    pub fn total(&self) -> usize {
        self.outer_len + self.esp_len
    }

    /// Offset of the payload from the start of the output.
    pub fn payload_at(&self, iv_len: usize) -> usize {
        self.outer_len + ESP_HEADER_LEN + iv_len
    }
}

/// RFC 4303 2.4: pad so that payload + pad + 2 is a multiple of `align` (and of 4).
#[inline]
pub(crate) fn pad_len(payload_len: usize, align: usize) -> usize {
    let align = align.max(4);
    let rem = rem(payload_len + 2, align);
    if rem == 0 { 0 } else { align - rem }
}

/// `n % align`, with a mask instead of a division for the power-of-two alignments every
/// cipher has (4 or the block size); the same result for any other.
#[inline]
pub(crate) fn rem(n: usize, align: usize) -> usize {
    if align.is_power_of_two() {
        n & (align - 1)
    } else {
        n % align
    }
}

/// Plans the output of sealing `packet` (a full IP packet, `info` its parsed header) on `sa`.
#[inline]
pub(crate) fn plan(
    sa: &Sa,
    packet: &[u8],
    info: &IpInfo,
    with_outer: bool,
) -> Result<SealPlan, SealError> {
    let v6 = info.is_v6();
    let (tos, inner_ttl, df) = ip::inner_params(packet, v6);
    let (inner_hdr, next_header, src, dst, outer_len, tunnel, ttl) = match sa.mode {
        Mode::Tunnel(t) => {
            // RFC 5374 5.1: preserved addresses are copied from the inner header; the others
            // are the tunnel endpoints. RFC 5374 4.1.2: never with mixed IP versions.
            let src = if t.preserve_src { info.src } else { t.local };
            let dst = if t.preserve_dst { info.dst } else { t.remote };
            if src.is_ipv4() != dst.is_ipv4() {
                return Err(SealError::FamilyMismatch);
            }
            // The SA's family is its endpoints'; with preservation the inner packet must be
            // of that family too.
            let preserving = t.preserve_src || t.preserve_dst;
            if preserving && t.local.is_ipv4() != info.src.is_ipv4() {
                return Err(SealError::FamilyMismatch);
            }
            let nh = if v6 { proto::IPV6 } else { proto::IPV4 };
            let outer = if with_outer {
                ip::outer_len(dst.is_ipv6())
            } else {
                0
            };
            // A multicast packet keeps its scope: with address preservation the outer TTL is
            // the inner one (our reading; RFC 5374 3.1 is silent, RFC 4301 5.1.2.1 leaves the
            // outer TTL to the encapsulator).
            let ttl = if preserving { inner_ttl } else { DEFAULT_TTL };
            (0, nh, src, dst, outer, true, ttl)
        }
        Mode::Transport => {
            let outer = if with_outer { info.payload_offset } else { 0 };
            (
                info.payload_offset,
                info.protocol,
                info.src,
                info.dst,
                outer,
                false,
                inner_ttl,
            )
        }
    };
    let payload_len = info.total_len - inner_hdr;
    let (iv_len, icv_len) = (usize::from(sa.iv_len), usize::from(sa.icv_len));
    let pad = pad_len(payload_len, usize::from(sa.align));
    let esp_len = ESP_HEADER_LEN + iv_len + payload_len + pad + 2 + icv_len;
    Ok(SealPlan {
        outer_len,
        inner_hdr,
        payload_len,
        pad_len: pad,
        next_header,
        esp_len,
        src,
        dst,
        v6: dst.is_ipv6(),
        tos,
        ttl,
        dont_fragment: df,
        protocol_field: info.protocol_field,
        tunnel,
        dummy: false,
    })
}

/// Plans a dummy packet (RFC 4303 2.6: Next Header 59, all other fields present) with
/// `len` payload octets, ESP only (the caller addresses it like the SA's traffic).
pub(crate) fn plan_dummy(sa: &Sa, len: usize, src: IpAddr, dst: IpAddr) -> SealPlan {
    let pad = pad_len(len, usize::from(sa.align));
    SealPlan {
        outer_len: 0,
        inner_hdr: 0,
        payload_len: len,
        pad_len: pad,
        next_header: NEXT_HEADER_DUMMY,
        esp_len: ESP_HEADER_LEN + usize::from(sa.iv_len) + len + pad + 2 + usize::from(sa.icv_len),
        src,
        dst,
        v6: dst.is_ipv6(),
        tos: 0,
        ttl: DEFAULT_TTL,
        dont_fragment: false,
        protocol_field: 0,
        tunnel: false,
        dummy: true,
    }
}

/// Frames and seals the packet planned by `plan` in `out` (exactly `plan.total()` octets).
/// The payload is already in place at `plan.payload_at(iv_len)` and, in transport mode with
/// a header, the original IP header at the front: this writes the ESP header (RFC 4303 2.1,
/// 2.2), the padding 1, 2, 3, ... (RFC 4303 2.4), pad length and next header, seals, and
/// writes or fixes the IP header.
#[inline]
pub(crate) fn seal_placed(
    sa: &Sa,
    plan: &SealPlan,
    out: &mut [u8],
    sn: u32,
    iv: &[u8; 8],
) -> Result<(), SealError> {
    let total = plan.total();
    let too_small = || SealError::BufferTooSmall { needed: total };
    let (head, esp) = out
        .split_at_mut_checked(plan.outer_len)
        .ok_or_else(too_small)?;
    let esp = esp.get_mut(..plan.esp_len).ok_or_else(too_small)?;
    let mut spi_sn = [0u8; ESP_HEADER_LEN];
    spi_sn[..4].copy_from_slice(&sa.spi.to_be_bytes());
    spi_sn[4..].copy_from_slice(&sn.to_be_bytes());
    esp.get_mut(..ESP_HEADER_LEN)
        .ok_or_else(too_small)?
        .copy_from_slice(&spi_sn);
    let trailer_at = ESP_HEADER_LEN + usize::from(sa.iv_len) + plan.payload_len;
    let trailer = esp
        .get_mut(trailer_at..trailer_at + plan.pad_len + 2)
        .ok_or_else(too_small)?;
    let (pad, tail) = trailer.split_at_mut(plan.pad_len);
    for (i, b) in pad.iter_mut().enumerate() {
        *b = (i + 1) as u8;
    }
    if let [pl, nh] = tail {
        *pl = plan.pad_len as u8;
        *nh = plan.next_header;
    }
    sa.cipher.seal(esp, iv)?;
    if plan.outer_len > 0 {
        if plan.tunnel {
            let p = OuterParams {
                src: plan.src,
                dst: plan.dst,
                tos: plan.tos,
                ttl: plan.ttl,
                dont_fragment: plan.dont_fragment,
                ident: sn as u16,
            };
            ip::write_outer(head, &p, proto::ESP, plan.esp_len).ok_or(SealError::TooLarge)?;
        } else {
            ip::fix_transport_header(
                head,
                plan.v6,
                plan.outer_len,
                plan.protocol_field,
                proto::ESP,
                total,
            )
            .ok_or(SealError::TooLarge)?;
        }
    }
    Ok(())
}

/// Reads SPI and sequence number (RFC 4303 2.1, 2.2).
pub(crate) fn esp_header(esp: &[u8]) -> Option<(u32, u32)> {
    match esp.get(..ESP_HEADER_LEN) {
        Some(&[a, b, c, d, e, f, g, h]) => Some((
            u32::from_be_bytes([a, b, c, d]),
            u32::from_be_bytes([e, f, g, h]),
        )),
        _ => None,
    }
}

/// The decrypted body's payload length and next header, after checking the padding
/// (RFC 4303 2.4: "the receiver SHOULD inspect the Padding field", 3.4.4.1 step 3).
pub(crate) fn strip_trailer(body: &[u8]) -> Result<(usize, u8), DropReason> {
    let [.., pad_len, next_header] = body else {
        return Err(DropReason::Malformed);
    };
    let pad_len = usize::from(*pad_len);
    let payload_len = body
        .len()
        .checked_sub(2 + pad_len)
        .ok_or(DropReason::BadPadding)?;
    let pad = body
        .get(payload_len..payload_len + pad_len)
        .ok_or(DropReason::BadPadding)?;
    if pad
        .iter()
        .enumerate()
        .any(|(i, b)| usize::from(*b) != i + 1)
    {
        return Err(DropReason::BadPadding);
    }
    Ok((payload_len, *next_header))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_lengths() {
        assert_eq!(pad_len(84, 4), 2);
        assert_eq!(pad_len(2, 4), 0);
        assert_eq!(pad_len(0, 4), 2);
        assert_eq!(pad_len(84, 16), 10);
        assert_eq!(pad_len(14, 16), 0);
        // The mask and the division agree, for power-of-two and other alignments.
        for align in 1..=40 {
            for n in 0..200 {
                assert_eq!(rem(n, align), n % align, "{n} % {align}");
            }
        }
    }

    #[test]
    fn trailer() {
        assert_eq!(strip_trailer(&[9, 9, 1, 2, 2, 4]), Ok((2, 4)));
        assert_eq!(strip_trailer(&[9, 0, 17]), Ok((1, 17)));
        assert_eq!(strip_trailer(&[9, 1, 3, 2, 4]), Err(DropReason::BadPadding));
        assert_eq!(strip_trailer(&[1, 9, 4]), Err(DropReason::BadPadding));
        assert_eq!(strip_trailer(&[4]), Err(DropReason::Malformed));
        assert_eq!(strip_trailer(&[]), Err(DropReason::Malformed));
    }

    #[test]
    fn header() {
        assert_eq!(esp_header(&[0, 0, 0, 1, 0, 0, 0, 2, 9]), Some((1, 2)));
        assert_eq!(esp_header(&[0, 0, 0, 1, 0, 0, 0]), None);
    }
}
