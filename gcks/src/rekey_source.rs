//! Where a group's GSA_REKEY messages leave from: the socket the rekey sender uses, and
//! the source traffic selector of the group's KEK policy that says so.
//!
//! RFC 9838 4.4.2 (R063): the Rekey SA's source traffic selector "SHOULD define a single
//! IP address, an IP protocol (assumed to be UDP) and a single port the GSA_REKEY messages
//! will be originated from", and "MAY define wildcard IP address and/or wildcard port".
//! [`RekeySources::selector`] names the address and port the datagrams really carry:
//!
//! - the port of the socket [`RekeySources::socket_for`] picks (a server socket of the
//!   right family bound to the configured source, preferring 848, never 4500; or one of
//!   our own bound to `groups.rekey_src_addr`/`rekey_src_port`);
//! - the address: `groups.rekey_src_addr` if set; else the socket's bound address if it
//!   is a specific one; else the address the kernel chooses as source toward the rekey
//!   destination: the `--multicast-if` address for IPv4, otherwise a route lookup (a
//!   throwaway UDP socket, with the same multicast interface, connected to the
//!   destination).
//!
//! When no address can be determined (no route, say) the selector keeps the single port
//! and a wildcard address of the destination's family; when no socket can be had, it is
//! the configured (wildcard) selector; either is logged once (docs/interop.md #55).
//!
//! The answer is cached per group and rekey configuration: the registrar's group views
//! ([`crate::group_view`]) and the rekey sender ([`crate::rekey`]) ask the same
//! `RekeySources`, so GSA_AUTH/GSA_REGISTRATION responses and GSA_REKEY messages carry
//! the same selector, and no registration pays a syscall for it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use gikev2_policy::{GroupConfig, GroupId, RekeyMode, Selector};
use gikev2_proto::wire::TrafficSelector;
use tokio::net::UdpSocket;
use tracing::{info, warn};

/// IP protocol of GSA_REKEY messages (RFC 9838 4.4.2: "assumed to be UDP").
const UDP: u8 = 17;

/// Most cached selectors; past that the cache starts over (one entry per multicast group
/// and rekey configuration).
const MAX_RESOLVED: usize = 4096;

/// How GSA_REKEY datagrams leave the host (from [`crate::RekeySchedulerConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MulticastOptions {
    /// IP_MULTICAST_TTL / IPV6_MULTICAST_HOPS.
    pub ttl: u32,
    /// IPv4 interface (by address) multicast leaves from; `None`: the routing table's.
    pub if_v4: Option<Ipv4Addr>,
    /// IPv6 interface (by index) multicast leaves from; `None`: the routing table's.
    pub if_v6: Option<u32>,
}

/// What a selector is resolved for: the group and everything of its configuration the
/// answer depends on (an edit of any of these resolves it again).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    group: GroupId,
    dst: SocketAddr,
    src_addr: Option<IpAddr>,
    src_port: Option<u16>,
}

#[derive(Default)]
struct Inner {
    /// Sockets of our own, for sources no server socket has, by local address asked.
    own: HashMap<SocketAddr, Arc<UdpSocket>>,
    /// Local addresses whose multicast options are set.
    prepared: Vec<SocketAddr>,
    resolved: HashMap<Key, TrafficSelector>,
}

/// The sockets GSA_REKEY leaves from and the source selectors that name them; shared by
/// the rekey sender and the registrar's group views.
pub struct RekeySources {
    options: MulticastOptions,
    /// The server's sockets with their local addresses: GSA_REKEY leaves from one of them
    /// when it fits the group's rekey source (so it comes from the GCKS's IKE port).
    sockets: Vec<(Arc<UdpSocket>, SocketAddr)>,
    inner: Mutex<Inner>,
}

impl RekeySources {
    /// Over the server's `sockets` (those whose local address cannot be read are left
    /// out).
    pub fn new(sockets: Vec<Arc<UdpSocket>>, options: MulticastOptions) -> Self {
        let sockets = sockets
            .into_iter()
            .filter_map(|s| {
                let a = s.local_addr().ok()?;
                Some((s, a))
            })
            .collect();
        Self {
            options,
            sockets,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The socket GSA_REKEY to `dst` leaves from, and its local address: a server socket
    /// of the same family bound to the group's rekey source (`groups.rekey_src_addr`/
    /// `rekey_src_port`, any when unset), preferring port 848 and never the NAT-T port
    /// (whose datagrams carry a marker); otherwise one of our own bound to that source.
    /// Its multicast options are set the first time.
    pub fn socket_for(
        &self,
        dst: SocketAddr,
        src: Option<IpAddr>,
        src_port: Option<u16>,
    ) -> Result<(Arc<UdpSocket>, SocketAddr), String> {
        let v6 = dst.is_ipv6();
        let fits = |a: &SocketAddr| {
            a.is_ipv6() == v6
                && src.is_none_or(|ip| a.ip() == ip)
                && src_port.is_none_or(|p| a.port() == p)
                && a.port() != crate::server::NAT_T_PORT
        };
        let best = self
            .sockets
            .iter()
            .filter(|(_, a)| fits(a))
            .min_by_key(|(_, a)| match a.port() {
                848 => 0,
                500 => 1,
                _ => 2,
            });
        let mut inner = self.inner();
        let (socket, local) = match best {
            Some((s, a)) => (s.clone(), *a),
            None => {
                let ip = src.unwrap_or(if v6 {
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                } else {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                });
                let want = SocketAddr::new(ip, src_port.unwrap_or(0));
                if let Some(s) = inner.own.get(&want) {
                    let local = s.local_addr().unwrap_or(want);
                    (s.clone(), local)
                } else {
                    let s = bind(want).map_err(|e| {
                        format!("binding {want} (groups.rekey_src_addr, rekey_src_port): {e}")
                    })?;
                    let local = s.local_addr().unwrap_or(want);
                    let s = Arc::new(s);
                    inner.own.insert(want, s.clone());
                    (s, local)
                }
            }
        };
        if !inner.prepared.contains(&local) {
            let s = socket2::SockRef::from(&*socket);
            set_multicast(&s, v6, &self.options)
                .map_err(|e| format!("multicast options on {local}: {e}"))?;
            inner.prepared.push(local);
        }
        Ok((socket, local))
    }

    /// The source traffic selector of `cfg`'s KEK policy (RFC 9838 4.4.2, R063): one
    /// address, UDP, one port, those of the GSA_REKEY datagrams; the configured selector
    /// for a group without multicast rekey. Resolved once per group and configuration.
    pub fn selector(&self, cfg: &GroupConfig) -> TrafficSelector {
        let r = &cfg.group.spec.rekey;
        let dst = match (r.mode, r.dst) {
            (RekeyMode::Multicast, Some(dst)) => dst,
            _ => return r.src_selector(),
        };
        let key = Key {
            group: cfg.group.id,
            dst,
            src_addr: r.src_addr,
            src_port: r.src_port,
        };
        if let Some(s) = self.inner().resolved.get(&key) {
            return s.clone();
        }
        let group = &cfg.group.spec.name;
        let sel = match self.socket_for(dst, r.src_addr, r.src_port) {
            Err(reason) => {
                warn!(
                    group = %group,
                    %reason,
                    "GSA_REKEY source unknown: the KEK policy's source selector is the \
                     configured one (RFC 9838 4.4.2 allows wildcards)"
                );
                r.src_selector()
            }
            Ok((_, local)) => {
                let port = local.port();
                match self.source_address(dst, r.src_addr, local) {
                    Ok(addr) => {
                        info!(group = %group, source = %SocketAddr::new(addr, port), %dst,
                            "GSA_REKEY source (the KEK policy's source selector)");
                        TrafficSelector::single(addr, UDP, Some(port))
                    }
                    Err(reason) => {
                        warn!(
                            group = %group,
                            port,
                            %reason,
                            "GSA_REKEY source address unknown: the KEK policy's source \
                             selector has a wildcard address (RFC 9838 4.4.2 allows it; \
                             set groups.rekey_src_addr to name one)"
                        );
                        let any = Selector::any(dst.is_ipv6());
                        Selector {
                            start_port: port,
                            end_port: port,
                            ..any
                        }
                        .traffic_selector(UDP)
                    }
                }
            }
        };
        let mut inner = self.inner();
        if inner.resolved.len() >= MAX_RESOLVED {
            inner.resolved.clear();
        }
        inner.resolved.insert(key, sel.clone());
        sel
    }

    /// The source address of datagrams to `dst` from a socket bound to `local`.
    fn source_address(
        &self,
        dst: SocketAddr,
        configured: Option<IpAddr>,
        local: SocketAddr,
    ) -> Result<IpAddr, String> {
        if let Some(a) = configured {
            return Ok(a);
        }
        if !local.ip().is_unspecified() {
            return Ok(local.ip());
        }
        // IP_MULTICAST_IF by address: the kernel sends from that address.
        if let (IpAddr::V4(_), Some(a)) = (dst.ip(), self.options.if_v4)
            && !a.is_unspecified()
        {
            return Ok(IpAddr::V4(a));
        }
        route_source(dst, &self.options).map_err(|e| format!("route lookup toward {dst}: {e}"))
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = std::net::UdpSocket::bind(addr)?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

fn set_multicast(s: &socket2::SockRef<'_>, v6: bool, o: &MulticastOptions) -> std::io::Result<()> {
    if v6 {
        s.set_multicast_hops_v6(o.ttl)?;
        o.if_v6.map_or(Ok(()), |i| s.set_multicast_if_v6(i))
    } else {
        s.set_multicast_ttl_v4(o.ttl)?;
        o.if_v4.map_or(Ok(()), |a| s.set_multicast_if_v4(&a))
    }
}

/// The address the kernel sends from toward `dst` with `o`'s multicast interface: a UDP
/// socket bound to the wildcard, connected (no datagram is sent), read back.
fn route_source(dst: SocketAddr, o: &MulticastOptions) -> std::io::Result<IpAddr> {
    let any = if dst.is_ipv6() {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
    };
    let s = std::net::UdpSocket::bind(any)?;
    set_multicast(&socket2::SockRef::from(&s), dst.is_ipv6(), o)?;
    s.connect(dst)?;
    let ip = s.local_addr()?.ip();
    if ip.is_unspecified() {
        return Err(std::io::Error::other("no source address chosen"));
    }
    Ok(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> MulticastOptions {
        MulticastOptions {
            ttl: 1,
            if_v4: None,
            if_v6: None,
        }
    }

    #[tokio::test]
    async fn the_selector_names_the_socket_and_address_datagrams_leave_from() {
        let cfg = crate::state::tests::cfg(RekeyMode::Multicast);
        let dst = cfg.group.spec.rekey.dst.unwrap();
        let server = Arc::new(bind("127.0.0.1:0".parse().unwrap()).unwrap());
        let local = server.local_addr().unwrap();
        let sources = RekeySources::new(vec![server], options());
        assert_eq!(
            sources.selector(&cfg),
            TrafficSelector::single(local.ip(), UDP, Some(local.port())),
            "the server socket's address and port"
        );
        assert_eq!(sources.socket_for(dst, None, None).unwrap().1, local);

        // A wildcard-bound socket: the --multicast-if address.
        let wild = Arc::new(bind("0.0.0.0:0".parse().unwrap()).unwrap());
        let port = wild.local_addr().unwrap().port();
        let sources = RekeySources::new(
            vec![wild],
            MulticastOptions {
                if_v4: Some(Ipv4Addr::LOCALHOST),
                ..options()
            },
        );
        assert_eq!(
            sources.selector(&cfg),
            TrafficSelector::single(Ipv4Addr::LOCALHOST.into(), UDP, Some(port))
        );

        // A configured address no server socket has: a socket of our own on it, its port.
        let mut own = cfg.clone();
        own.group.spec.rekey.src_addr = Some(Ipv4Addr::LOCALHOST.into());
        let sel = sources.selector(&own);
        let (_, bound) = sources
            .socket_for(dst, Some(Ipv4Addr::LOCALHOST.into()), None)
            .unwrap();
        assert_ne!(bound.port(), 0);
        assert_eq!(
            sel,
            TrafficSelector::single(Ipv4Addr::LOCALHOST.into(), UDP, Some(bound.port()))
        );

        // The route lookup: the kernel's source toward a destination.
        assert_eq!(
            route_source("127.0.0.1:9".parse().unwrap(), &options()).unwrap(),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );

        // Without a Rekey SA destination: the configured selector.
        let inband = crate::state::tests::cfg(RekeyMode::Inband);
        assert_eq!(
            sources.selector(&inband),
            inband.group.spec.rekey.src_selector()
        );
    }
}
