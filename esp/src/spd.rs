//! Outbound Security Policy Database (RFC 4301 4.4.1): an ordered list of entries, each a set
//! of selectors and an action (BYPASS, DISCARD or PROTECT). The first entry that matches, in
//! configured order, decides (RFC 4301 4.4.1: "The SPD is an ordered database"); no match means
//! DISCARD (RFC 4301 5.1 step 2).
//!
//! Selectors (RFC 4301 4.4.1.1): source and destination address ranges, next layer protocol
//! (or ANY), and port ranges (or ANY / OPAQUE). For ICMP the "port" is `type << 8 | code`
//! (RFC 7296 3.13.1), compared against both port ranges. A port range other than ANY or OPAQUE
//! never matches a packet whose ports are unavailable (non-initial fragment).
//!
//! The list is a snapshot behind an `ArcSwap`: readers never lock, a change publishes a new
//! list.

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::ip::{IpInfo, Ports};

/// Names the outbound SAs that protect a policy's traffic (several at once during an RFC 5374
/// 4.2.1 rollover).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyId(pub u64);

/// Selector construction errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("address range mixes IPv4 and IPv6")]
    MixedFamilies,
    #[error("address range start is above its end")]
    EmptyRange,
    #[error("the two traffic selectors name different protocols")]
    ProtocolMismatch,
    #[error("unknown traffic selector type")]
    UnknownType,
}

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrRange {
    start: IpAddr,
    end: IpAddr,
}

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl AddrRange {
    pub fn new(start: IpAddr, end: IpAddr) -> Result<Self, SelectorError> {
        if start.is_ipv4() != end.is_ipv4() {
            return Err(SelectorError::MixedFamilies);
        }
        if to_u128(start) > to_u128(end) {
            return Err(SelectorError::EmptyRange);
        }
        Ok(Self { start, end })
    }

    /// A single address.
    pub fn single(a: IpAddr) -> Self {
        Self { start: a, end: a }
    }

    /// Every address of one family.
    pub fn any(v6: bool) -> Self {
        if v6 {
            Self {
                start: IpAddr::V6(0u128.into()),
                end: IpAddr::V6(u128::MAX.into()),
            }
        } else {
            Self {
                start: IpAddr::V4(0u32.into()),
                end: IpAddr::V4(u32::MAX.into()),
            }
        }
    }

    /// The addresses of a prefix (`len` clamped to the family's width).
    pub fn prefix(a: IpAddr, len: u8) -> Self {
        let (bits, v) = match a {
            IpAddr::V4(v4) => (32u32, u128::from(u32::from(v4))),
            IpAddr::V6(v6) => (128u32, u128::from(v6)),
        };
        let len = u32::from(len).min(bits);
        let host_bits = bits - len;
        let host_mask = if host_bits == 0 {
            0
        } else if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        let (lo, hi) = (v & !host_mask, v | host_mask);
        let mk = |x: u128| match a {
            IpAddr::V4(_) => IpAddr::V4((x as u32).into()),
            IpAddr::V6(_) => IpAddr::V6(x.into()),
        };
        Self {
            start: mk(lo),
            end: mk(hi),
        }
    }

    pub fn contains(&self, a: IpAddr) -> bool {
        a.is_ipv4() == self.start.is_ipv4()
            && (to_u128(self.start)..=to_u128(self.end)).contains(&to_u128(a))
    }

    pub fn start(&self) -> IpAddr {
        self.start
    }

    pub fn end(&self) -> IpAddr {
        self.end
    }
}

/// A port selector (RFC 4301 4.4.1.2: ANY is 0..65535, OPAQUE is start 65535 / end 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortSel {
    /// Any value, including unavailable (OPAQUE) ports.
    Any,
    /// Only packets whose ports are unavailable.
    Opaque,
    /// An inclusive range; never matches packets without ports.
    Range(u16, u16),
}

impl PortSel {
    /// From an IKEv2 port pair.
    pub fn from_ts(start: u16, end: u16) -> Self {
        match (start, end) {
            (0, u16::MAX) => Self::Any,
            (u16::MAX, 0) => Self::Opaque,
            (s, e) => Self::Range(s, e),
        }
    }

    fn matches(&self, port: Option<u16>, opaque: bool) -> bool {
        match *self {
            Self::Any => true,
            Self::Opaque => opaque,
            Self::Range(s, e) => port.is_some_and(|p| (s..=e).contains(&p)),
        }
    }
}

/// One selector set (RFC 4301 4.4.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selector {
    pub src: AddrRange,
    pub dst: AddrRange,
    /// Next layer protocol; `None` is ANY.
    pub protocol: Option<u8>,
    pub src_ports: PortSel,
    pub dst_ports: PortSel,
}

impl Selector {
    /// Any traffic from `src` to `dst`.
    pub fn addresses(src: AddrRange, dst: AddrRange) -> Self {
        Self {
            src,
            dst,
            protocol: None,
            src_ports: PortSel::Any,
            dst_ports: PortSel::Any,
        }
    }

    /// From the source and destination traffic selectors of a GSA policy (RFC 9838 4.4.2,
    /// RFC 7296 3.13.1; protocol 0 is ANY).
    pub fn from_gsa_ts(
        src: &gikev2_proto::wire::ts::TrafficSelector,
        dst: &gikev2_proto::wire::ts::TrafficSelector,
    ) -> Result<Self, SelectorError> {
        use gikev2_proto::wire::ts::TrafficSelector as Ts;
        let (
            Ts::Range {
                ip_protocol: sp,
                start_port: ss,
                end_port: se,
                start: sa,
                end: sb,
            },
            Ts::Range {
                ip_protocol: dp,
                start_port: ds,
                end_port: de,
                start: da,
                end: db,
            },
        ) = (src, dst)
        else {
            return Err(SelectorError::UnknownType);
        };
        let protocol = match (*sp, *dp) {
            (0, 0) => None,
            (p, 0) | (0, p) => Some(p),
            (p, q) if p == q => Some(p),
            _ => return Err(SelectorError::ProtocolMismatch),
        };
        Ok(Self {
            src: AddrRange::new(*sa, *sb)?,
            dst: AddrRange::new(*da, *db)?,
            protocol,
            src_ports: PortSel::from_ts(*ss, *se),
            dst_ports: PortSel::from_ts(*ds, *de),
        })
    }

    /// Does a packet match?
    pub fn matches(&self, p: &IpInfo) -> bool {
        if !self.src.contains(p.src) || !self.dst.contains(p.dst) {
            return false;
        }
        if self.protocol.is_some_and(|proto| proto != p.protocol) {
            return false;
        }
        let (sp, dp, opaque) = match p.ports {
            Ports::Known { src, dst } => (Some(src), Some(dst), false),
            Ports::Opaque => (None, None, true),
            Ports::None => (None, None, false),
        };
        self.src_ports.matches(sp, opaque) && self.dst_ports.matches(dp, opaque)
    }
}

/// What to do with a matching outbound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Bypass,
    Discard,
    Protect(PolicyId),
}

/// One SPD entry: matches if any of its selector sets matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpdEntry {
    pub selectors: Vec<Selector>,
    pub action: Action,
}

/// The outbound SPD.
#[derive(Debug)]
pub struct Spd {
    entries: ArcSwap<Vec<SpdEntry>>,
}

impl Default for Spd {
    fn default() -> Self {
        Self {
            entries: ArcSwap::from_pointee(Vec::new()),
        }
    }
}

impl Spd {
    /// Replaces the whole list (order is significant).
    pub fn replace(&self, entries: Vec<SpdEntry>) {
        self.entries.store(Arc::new(entries));
    }

    /// Applies `f` to a copy of the list and publishes it (e.g. insert a group's entry at a
    /// position). `f` may run more than once if another update races with it.
    pub fn update(&self, f: impl Fn(&mut Vec<SpdEntry>)) {
        self.entries.rcu(|cur| {
            let mut next: Vec<SpdEntry> = cur.as_ref().clone();
            f(&mut next);
            next
        });
    }

    /// The current list.
    pub fn entries(&self) -> Arc<Vec<SpdEntry>> {
        self.entries.load_full()
    }

    /// RFC 4301 4.4.1: first match in order; DISCARD when nothing matches.
    pub fn lookup(&self, p: &IpInfo) -> Action {
        let entries = self.entries.load();
        entries
            .iter()
            .find(|e| e.selectors.iter().any(|s| s.matches(p)))
            .map_or(Action::Discard, |e| e.action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ip::{parse, test_packets::udp4};

    fn a(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn first_match_in_order() {
        let spd = Spd::default();
        let group = AddrRange::single(a("239.1.1.1"));
        let any4 = AddrRange::any(false);
        spd.replace(vec![
            SpdEntry {
                selectors: vec![Selector {
                    protocol: Some(crate::ip::proto::UDP),
                    dst_ports: PortSel::Range(5000, 5010),
                    ..Selector::addresses(any4, group)
                }],
                action: Action::Protect(PolicyId(1)),
            },
            SpdEntry {
                selectors: vec![Selector::addresses(any4, group)],
                action: Action::Bypass,
            },
            SpdEntry {
                selectors: vec![Selector::addresses(
                    any4,
                    AddrRange::prefix(a("239.0.0.0"), 8),
                )],
                action: Action::Protect(PolicyId(2)),
            },
        ]);
        let p = |dst: [u8; 4], dport| parse(&udp4([10, 0, 0, 1], dst, 1, dport, b"x")).unwrap();
        assert_eq!(
            spd.lookup(&p([239, 1, 1, 1], 5005)),
            Action::Protect(PolicyId(1))
        );
        assert_eq!(spd.lookup(&p([239, 1, 1, 1], 6000)), Action::Bypass);
        assert_eq!(
            spd.lookup(&p([239, 1, 1, 2], 5005)),
            Action::Protect(PolicyId(2))
        );
        // Nothing matches: DISCARD.
        assert_eq!(spd.lookup(&p([10, 1, 1, 2], 5005)), Action::Discard);
    }

    #[test]
    fn ports_opaque_and_fragments() {
        let mut frag = udp4([10, 0, 0, 1], [239, 1, 1, 1], 1, 5005, b"x");
        frag[6..8].copy_from_slice(&0x0010u16.to_be_bytes());
        let frag = parse(&frag).unwrap();
        let any4 = AddrRange::any(false);
        let ranged = Selector {
            dst_ports: PortSel::Range(5000, 5010),
            ..Selector::addresses(any4, any4)
        };
        let opaque = Selector {
            dst_ports: PortSel::Opaque,
            ..Selector::addresses(any4, any4)
        };
        assert!(!ranged.matches(&frag));
        assert!(opaque.matches(&frag));
        assert!(Selector::addresses(any4, any4).matches(&frag));
        let whole = parse(&udp4([10, 0, 0, 1], [239, 1, 1, 1], 1, 5005, b"x")).unwrap();
        assert!(ranged.matches(&whole));
        assert!(!opaque.matches(&whole));
    }

    #[test]
    fn ranges() {
        assert!(AddrRange::prefix(a("10.1.2.3"), 16).contains(a("10.1.255.255")));
        assert!(!AddrRange::prefix(a("10.1.2.3"), 16).contains(a("10.2.0.0")));
        assert!(AddrRange::prefix(a("2001:db8::"), 32).contains(a("2001:db8:ffff::1")));
        assert!(AddrRange::prefix(a("::"), 0).contains(a("ffff::1")));
        assert!(!AddrRange::any(false).contains(a("::1")));
        assert_eq!(
            AddrRange::new(a("10.0.0.2"), a("10.0.0.1")),
            Err(SelectorError::EmptyRange)
        );
        assert_eq!(
            AddrRange::new(a("10.0.0.2"), a("::1")),
            Err(SelectorError::MixedFamilies)
        );
        assert_eq!(PortSel::from_ts(0, 65535), PortSel::Any);
        assert_eq!(PortSel::from_ts(65535, 0), PortSel::Opaque);
    }

    #[test]
    fn from_gsa_traffic_selectors() {
        use gikev2_proto::wire::ts::TrafficSelector;
        let src = TrafficSelector::any(false);
        let dst = TrafficSelector::single(a("239.1.1.1"), 17, Some(5000));
        let s = Selector::from_gsa_ts(&src, &dst).unwrap();
        assert_eq!(s.protocol, Some(17));
        assert_eq!(s.dst_ports, PortSel::Range(5000, 5000));
        assert_eq!(s.src_ports, PortSel::Any);
        let p = parse(&udp4([10, 0, 0, 1], [239, 1, 1, 1], 9, 5000, b"")).unwrap();
        assert!(s.matches(&p));
        let other = TrafficSelector::single(a("239.1.1.1"), 6, None);
        assert_eq!(
            Selector::from_gsa_ts(&other, &dst),
            Err(SelectorError::ProtocolMismatch)
        );
    }
}
