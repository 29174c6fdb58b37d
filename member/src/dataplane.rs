//! The TUN data plane behind `gm` (Linux): `gikev2_esp::dataplane` (TUN interface, raw ESP
//! sockets, workers) driven by the agent through the [`DataPlane`] seam.
//!
//! What the agent's SA changes mean for it (RFC 5374 5.2, RFC 9838 2.3.3):
//! - an inbound TEK whose destination is a multicast address: join that group on the
//!   configured interface, so that its ESP reaches the raw socket;
//! - an outbound TEK whose destination is multicast (one address or a range): route it into
//!   the TUN, so that applications' packets to the group reach the seal path;
//! - removal undoes one of each (the data plane counts references: a sender that also
//!   receives, or two SAs of one group during a rekey, share them).
//!
//! Unicast destinations (e.g. transport mode towards a peer) are neither joined nor routed:
//! routing them into the TUN is the operator's decision. Failures are logged, never fatal to
//! the agent (calls come from its task and must not block).

use std::net::IpAddr;
use std::sync::Arc;

use gikev2_esp::Direction;
use gikev2_esp::Engine;
use gikev2_esp::dataplane::{self, Config, Stats};
use gikev2_proto::wire::TrafficSelector;

use crate::install::{DataPlane, TekInfo};

/// Most route prefixes one TEK's destination range may need.
const MAX_PREFIXES: usize = 16;

/// The running TUN data plane as the agent's [`DataPlane`].
#[derive(Debug)]
pub struct TunDataPlane {
    dp: dataplane::DataPlane,
}

/// Why the data plane did not start.
#[derive(Debug, thiserror::Error)]
#[error("data plane: {source}{hint}")]
pub struct StartError {
    #[source]
    source: dataplane::Error,
    hint: &'static str,
}

impl TunDataPlane {
    /// Creates the TUN interface and raw ESP sockets (in the calling thread's network
    /// namespace) around `engine`, the engine the agent installs into.
    pub fn start(engine: Arc<Engine>, config: Config) -> Result<Self, StartError> {
        dataplane::DataPlane::start(engine, config)
            .map(|dp| Self { dp })
            .map_err(|source| {
                let denied = matches!(
                    &source,
                    dataplane::Error::Tun { source: e, .. }
                        | dataplane::Error::Socket { source: e, .. }
                        if e.kind() == std::io::ErrorKind::PermissionDenied
                );
                StartError {
                    source,
                    hint: if denied {
                        " (the TUN data plane needs root, or CAP_NET_ADMIN and CAP_NET_RAW)"
                    } else {
                        ""
                    },
                }
            })
    }

    /// The ESP data plane itself (TUN name and index, joins, routes, counters).
    pub fn inner(&self) -> &dataplane::DataPlane {
        &self.dp
    }

    /// The data plane's counters.
    pub fn stats(&self) -> Stats {
        self.dp.stats()
    }

    fn apply(&self, tek: &TekInfo, add: bool) {
        let TrafficSelector::Range { start, end, .. } = &tek.dst else {
            return;
        };
        match tek.direction {
            Direction::Inbound => {
                if start != end {
                    if start.is_multicast() {
                        tracing::warn!(
                            "group {}: SPI {:#010x}: destination range {start}-{end} cannot be \
                             joined; join its groups on the interface yourself",
                            tek.group,
                            tek.spi
                        );
                    }
                    return;
                }
                let r = if add {
                    self.dp.join(*start)
                } else {
                    self.dp.leave(*start)
                };
                if let Err(e) = r {
                    tracing::warn!("group {}: SPI {:#010x}: {e}", tek.group, tek.spi);
                }
            }
            Direction::Outbound => {
                let Some(prefixes) = prefixes(*start, *end) else {
                    tracing::warn!(
                        "group {}: SPI {:#010x}: destination {start}-{end} is not routed into \
                         the TUN (not multicast, or more than {MAX_PREFIXES} prefixes)",
                        tek.group,
                        tek.spi
                    );
                    return;
                };
                for (dst, len) in prefixes {
                    let r = if add {
                        self.dp.add_route(dst, len)
                    } else {
                        self.dp.remove_route(dst, len)
                    };
                    if let Err(e) = r {
                        tracing::warn!("group {}: SPI {:#010x}: {e}", tek.group, tek.spi);
                    }
                }
            }
        }
    }
}

impl DataPlane for TunDataPlane {
    /// One TX worker seals everything routed into the TUN.
    fn encryption_modules(&self) -> Option<u32> {
        Some(1)
    }

    fn attach(&self, engine: Arc<Engine>) {
        if !Arc::ptr_eq(&engine, self.dp.engine()) {
            tracing::error!(
                "data plane: the agent installs into another engine than the one the TUN \
                 data plane seals and opens with; no traffic will flow"
            );
        }
    }

    fn sa_installed(&self, tek: &TekInfo) {
        self.apply(tek, true);
    }

    fn sa_removed(&self, tek: &TekInfo) {
        self.apply(tek, false);
    }
}

fn to_bits(a: IpAddr) -> (u128, u8) {
    match a {
        IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
        IpAddr::V6(v) => (u128::from(v), 128),
    }
}

fn from_bits(b: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(b.into())
    } else {
        IpAddr::V4(u32::try_from(b).unwrap_or(u32::MAX).into())
    }
}

/// The fewest prefixes covering the multicast range `start..=end` (both ends multicast,
/// same family), at most [`MAX_PREFIXES`]; `None` otherwise.
pub fn prefixes(start: IpAddr, end: IpAddr) -> Option<Vec<(IpAddr, u8)>> {
    if start.is_ipv4() != end.is_ipv4() || !start.is_multicast() || !end.is_multicast() {
        return None;
    }
    let v6 = start.is_ipv6();
    let ((mut lo, width), (hi, _)) = (to_bits(start), to_bits(end));
    if lo > hi {
        return None;
    }
    let mut out = Vec::new();
    loop {
        // The largest aligned block starting at `lo` that stays within `hi`.
        let mut size_log = if lo == 0 {
            u32::from(width)
        } else {
            lo.trailing_zeros().min(u32::from(width))
        };
        while size_log > 0 {
            let last = lo.checked_add((1u128 << size_log) - 1);
            if last.is_some_and(|l| l <= hi) {
                break;
            }
            size_log -= 1;
        }
        if out.len() == MAX_PREFIXES {
            return None;
        }
        out.push((from_bits(lo, v6), width - size_log as u8));
        let next = lo.checked_add(1u128 << size_log);
        match next {
            Some(n) if n <= hi && n > lo => lo = n,
            _ => break,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn multicast_ranges_become_prefixes() {
        assert_eq!(
            prefixes(a("239.1.1.1"), a("239.1.1.1")),
            Some(vec![(a("239.1.1.1"), 32)])
        );
        assert_eq!(
            prefixes(a("239.1.0.0"), a("239.1.255.255")),
            Some(vec![(a("239.1.0.0"), 16)])
        );
        assert_eq!(
            prefixes(a("239.1.1.1"), a("239.1.1.4")),
            Some(vec![
                (a("239.1.1.1"), 32),
                (a("239.1.1.2"), 31),
                (a("239.1.1.4"), 32)
            ])
        );
        assert_eq!(
            prefixes(a("224.0.0.0"), a("239.255.255.255")),
            Some(vec![(a("224.0.0.0"), 4)])
        );
        assert_eq!(
            prefixes(a("ff3e::1"), a("ff3e::1")),
            Some(vec![(a("ff3e::1"), 128)])
        );
        assert_eq!(
            prefixes(a("ff00::"), a("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
            Some(vec![(a("ff00::"), 8)])
        );
        // Not multicast, mixed families, reversed, or too fragmented.
        assert_eq!(prefixes(a("10.0.0.1"), a("10.0.0.1")), None);
        assert_eq!(prefixes(a("0.0.0.0"), a("255.255.255.255")), None);
        assert_eq!(prefixes(a("239.1.1.1"), a("ff3e::1")), None);
        assert_eq!(prefixes(a("239.1.1.2"), a("239.1.1.1")), None);
        assert_eq!(prefixes(a("224.0.0.1"), a("239.255.255.254")), None);
    }
}
