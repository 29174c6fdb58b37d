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

/// How `seal` lays out its output.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SealPlan {
    /// Octets before the ESP header: the outer (tunnel) or original (transport) IP header;
    /// 0 when the caller asked for the ESP packet alone.
    pub outer_len: usize,
    /// Start and end of what ESP protects in the input packet.
    pub payload: (usize, usize),
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
    /// RFC 4303 2.6 dummy packet: the payload is `payload.1` zero octets, not copied.
    pub dummy: bool,
}

impl SealPlan {
    pub fn total(&self) -> usize {
        self.outer_len + self.esp_len
    }
}

/// RFC 4303 2.4: pad so that payload + pad + 2 is a multiple of `align` (and of 4).
pub(crate) fn pad_len(payload_len: usize, align: usize) -> usize {
    let align = align.max(4);
    let rem = (payload_len + 2) % align;
    if rem == 0 { 0 } else { align - rem }
}

/// Plans the output of sealing `packet` (a full IP packet) on `sa`.
pub(crate) fn plan(
    sa: &Sa,
    packet: &[u8],
    info: &IpInfo,
    with_outer: bool,
) -> Result<SealPlan, SealError> {
    let v6 = info.is_v6();
    let (tos, inner_ttl, df) = ip::inner_params(packet, v6);
    let cipher = &sa.cipher;
    let (payload, next_header, src, dst, outer_len, tunnel, ttl) = match sa.mode {
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
            ((0, info.total_len), nh, src, dst, outer, true, ttl)
        }
        Mode::Transport => {
            let outer = if with_outer { info.payload_offset } else { 0 };
            (
                (info.payload_offset, info.total_len),
                info.protocol,
                info.src,
                info.dst,
                outer,
                false,
                inner_ttl,
            )
        }
    };
    let payload_len = payload.1 - payload.0;
    let pad = pad_len(payload_len, cipher.align());
    let esp_len = ESP_HEADER_LEN + cipher.iv_len() + payload_len + pad + 2 + cipher.icv_len();
    Ok(SealPlan {
        outer_len,
        payload,
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
    let cipher = &sa.cipher;
    let pad = pad_len(len, cipher.align());
    SealPlan {
        outer_len: 0,
        payload: (0, len),
        pad_len: pad,
        next_header: NEXT_HEADER_DUMMY,
        esp_len: ESP_HEADER_LEN + cipher.iv_len() + len + pad + 2 + cipher.icv_len(),
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

/// Writes the packet planned by `plan` into `out` and seals it. Returns the bytes written.
pub(crate) fn write_sealed<'o>(
    sa: &Sa,
    plan: &SealPlan,
    packet: &[u8],
    out: &'o mut [u8],
    sn: u32,
    iv: &[u8; 8],
) -> Result<&'o mut [u8], SealError> {
    let total = plan.total();
    let out = out
        .get_mut(..total)
        .ok_or(SealError::BufferTooSmall { needed: total })?;
    let too_small = SealError::BufferTooSmall { needed: total };
    let (head, esp) = out
        .split_at_mut_checked(plan.outer_len)
        .ok_or(too_small.clone())?;
    let iv_len = sa.cipher.iv_len();
    // ESP header (RFC 4303 2.1, 2.2).
    let (hdr, rest) = esp
        .split_at_mut_checked(ESP_HEADER_LEN)
        .ok_or(too_small.clone())?;
    let mut spi_sn = [0u8; ESP_HEADER_LEN];
    spi_sn[..4].copy_from_slice(&sa.spi.to_be_bytes());
    spi_sn[4..].copy_from_slice(&sn.to_be_bytes());
    hdr.copy_from_slice(&spi_sn);
    // Payload, padding 1, 2, 3, ... (RFC 4303 2.4), pad length, next header.
    let payload_len = plan.payload.1.saturating_sub(plan.payload.0);
    let body_start = iv_len;
    let body = rest
        .get_mut(body_start..body_start + payload_len + plan.pad_len + 2)
        .ok_or(too_small.clone())?;
    let (data, trailer) = body
        .split_at_mut_checked(payload_len)
        .ok_or(too_small.clone())?;
    if plan.dummy {
        data.fill(0);
    } else {
        let payload = packet
            .get(plan.payload.0..plan.payload.1)
            .ok_or(SealError::BadPacket)?;
        data.copy_from_slice(payload);
    }
    let (pad, tail) = trailer
        .split_at_mut_checked(plan.pad_len)
        .ok_or(too_small)?;
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
            head.copy_from_slice(packet.get(..plan.outer_len).ok_or(SealError::BadPacket)?);
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
    Ok(out)
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
