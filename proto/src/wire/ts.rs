//! Traffic selector substructures (RFC 7296 3.13.1), used in TSi/TSr payloads and, one each
//! for source and destination, in GSA policy substructures (RFC 9838 4.4.2).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::codec::{Codec, Reader, put_u16};
use crate::error::DecodeError;
use crate::registry::TsType;

/// One traffic selector: an IP protocol (0 = any), a port range and an address range.
/// Unknown TS types are kept as raw bytes so that they round-trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrafficSelector {
    Range {
        ip_protocol: u8,
        start_port: u16,
        end_port: u16,
        start: IpAddr,
        end: IpAddr,
    },
    Unknown {
        ty: TsType,
        body: Vec<u8>,
    },
}

impl TrafficSelector {
    /// A selector for one address, one protocol (0 = any) and one port (0 = any port).
    pub fn single(addr: IpAddr, ip_protocol: u8, port: Option<u16>) -> Self {
        let (start_port, end_port) = match port {
            Some(p) => (p, p),
            None => (0, u16::MAX),
        };
        Self::Range {
            ip_protocol,
            start_port,
            end_port,
            start: addr,
            end: addr,
        }
    }

    /// The selector matching every IPv4 (or IPv6) address, protocol and port.
    pub fn any(v6: bool) -> Self {
        let (start, end) = if v6 {
            (
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                IpAddr::V6(Ipv6Addr::from(u128::MAX)),
            )
        } else {
            (
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V4(Ipv4Addr::BROADCAST),
            )
        };
        Self::Range {
            ip_protocol: 0,
            start_port: 0,
            end_port: u16::MAX,
            start,
            end,
        }
    }

    pub fn ts_type(&self) -> TsType {
        match self {
            Self::Range {
                start: IpAddr::V4(_),
                ..
            } => TsType::Ipv4AddrRange,
            Self::Range {
                start: IpAddr::V6(_),
                ..
            } => TsType::Ipv6AddrRange,
            Self::Unknown { ty, .. } => *ty,
        }
    }
}

impl<'a> Codec<'a> for TrafficSelector {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Range {
                ip_protocol,
                start_port,
                end_port,
                start,
                end,
            } => {
                let (ty, len) = match start {
                    IpAddr::V4(_) => (TsType::Ipv4AddrRange, 16u16),
                    IpAddr::V6(_) => (TsType::Ipv6AddrRange, 40u16),
                };
                out.push(ty.value());
                out.push(*ip_protocol);
                put_u16(out, len);
                put_u16(out, *start_port);
                put_u16(out, *end_port);
                for a in [start, end] {
                    match (a, ty) {
                        (IpAddr::V4(a), TsType::Ipv4AddrRange) => {
                            out.extend_from_slice(&a.octets())
                        }
                        (IpAddr::V6(a), _) => out.extend_from_slice(&a.octets()),
                        // A mixed-family range is a programming error; encode the v4 address
                        // mapped so the length stays right.
                        (IpAddr::V4(a), _) => out.extend_from_slice(&a.to_ipv6_mapped().octets()),
                    }
                }
            }
            Self::Unknown { ty, body } => {
                out.push(ty.value());
                out.extend_from_slice(&body[..1.min(body.len())]);
                put_u16(out, (body.len() + 3) as u16);
                out.extend_from_slice(body.get(1..).unwrap_or_default());
            }
        }
    }

    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let ty = TsType::read(r)?;
        let ip_protocol = r.u8("TS IP protocol")?;
        let len = r.u16("TS selector length")? as usize;
        if len < 4 {
            return Err(DecodeError::InvalidLength {
                what: "traffic selector",
                len,
            });
        }
        let mut body = r.sub(len - 4, "traffic selector")?;
        let addr_len = match ty {
            TsType::Ipv4AddrRange => 4,
            TsType::Ipv6AddrRange => 16,
            _ => {
                let mut raw = vec![ip_protocol];
                raw.extend_from_slice(body.rest());
                return Ok(Self::Unknown { ty, body: raw });
            }
        };
        if len != 8 + 2 * addr_len {
            return Err(DecodeError::InvalidLength {
                what: "traffic selector",
                len,
            });
        }
        let start_port = body.u16("TS start port")?;
        let end_port = body.u16("TS end port")?;
        let read_addr = |b: &mut Reader<'a>| -> Result<IpAddr, DecodeError> {
            Ok(if addr_len == 4 {
                IpAddr::V4(Ipv4Addr::from(b.take_array::<4>("TS address")?))
            } else {
                IpAddr::V6(Ipv6Addr::from(b.take_array::<16>("TS address")?))
            })
        };
        let start = read_addr(&mut body)?;
        let end = read_addr(&mut body)?;
        body.expect_empty("traffic selector")?;
        Ok(Self::Range {
            ip_protocol,
            start_port,
            end_port,
            start,
            end,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_selector_bytes() {
        let ts = TrafficSelector::single("239.1.1.1".parse().unwrap(), 17, Some(848));
        let b = ts.to_bytes();
        assert_eq!(
            b,
            [
                7, 17, 0, 16, 0x03, 0x50, 0x03, 0x50, 239, 1, 1, 1, 239, 1, 1, 1
            ]
        );
        assert_eq!(TrafficSelector::read_bytes(&b).unwrap(), ts);
    }

    #[test]
    fn bad_length_rejected_and_unknown_round_trips() {
        let mut b = TrafficSelector::any(false).to_bytes();
        b[3] = 17;
        assert!(TrafficSelector::read_bytes(&b).is_err());
        let unknown = [9u8, 0, 0, 6, 0xaa, 0xbb];
        let ts = TrafficSelector::read_bytes(&unknown).unwrap();
        assert_eq!(ts.to_bytes(), unknown);
        let v6 = TrafficSelector::any(true);
        assert_eq!(TrafficSelector::read_bytes(&v6.to_bytes()).unwrap(), v6);
    }
}
