//! The Linux ESP data plane: a TUN interface carries plaintext IP packets, raw protocol-50
//! sockets carry ESP, and the shared [`Engine`] sits between them (DESIGN "How data flows").
//!
//! ```text
//! app -> route -> TUN --read--> Engine::classify + Engine::seal --sendmmsg--> raw ESP -> wire
//! wire -> raw ESP --recvmmsg--> Engine::open (RFC 5374 lookup, replay) --write--> TUN -> app
//! ```
//!
//! - TUN: `IFF_TUN | IFF_NO_PI` through `tun-rs`, name and MTU configurable; the device
//!   exists as long as the [`DataPlane`] (its routes go with it).
//! - Raw sockets, one per address family, for IP protocol 50. Sending uses the complete
//!   packet [`Engine::seal`] writes (`IP_HDRINCL` / `IPV6_HDRINCL`): in tunnel mode with
//!   address preservation the outer addresses are the inner ones (RFC 5374 5.1), and the
//!   outer TTL / Hop Limit is the inner one (RFC 5374 3.1, keeps the multicast scope) unless
//!   [`Config::ttl`] overrides it; in transport mode the original header is kept (RFC 4303
//!   3.1.1). Receiving: an IPv4 raw socket delivers the IP header, which
//!   [`Engine::open`] reads (the outer addresses are the SAD key); an IPv6 raw socket strips
//!   it, so the source comes from the socket address, the destination from
//!   `IPV6_PKTINFO`, and [`Engine::open_esp`] gets both.
//! - Multicast: [`DataPlane::join`] joins a group an inbound SA receives on
//!   (`IP_ADD_MEMBERSHIP` / `IPV6_JOIN_GROUP` on the configured interface);
//!   [`DataPlane::add_route`] routes a group an outbound SA protects into the TUN (rtnetlink).
//!   Both are reference counted, so several SAs may name the same group.
//! - Threads (STYLE D2, D4): one TX worker (TUN -> seal -> `sendmmsg`) and one RX worker
//!   (`recvmmsg` on both sockets -> open -> TUN), each with buffers allocated once at start,
//!   the time read once per batch, counters accumulated per batch. The control plane (joins,
//!   routes) takes a mutex no worker ever touches; SA installs and deletes go through the
//!   engine's own lock-free structures.
//! - Drops: the engine counts inbound drops per reason ([`Engine::drops`]); the data plane
//!   counts what happens around it ([`Stats`]).

mod io;
mod route;
mod worker;

pub mod fuzzing;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::engine::Engine;

/// Most packets one `recvmmsg` / `sendmmsg` moves.
pub const MAX_BATCH: usize = 64;

/// The clock the workers read once per batch (STYLE Q3: time comes from outside).
pub type ClockFn = Arc<dyn Fn() -> Instant + Send + Sync>;

/// How to build the data plane.
#[derive(Clone)]
pub struct Config {
    /// Name of the TUN interface (at most 15 octets).
    pub tun_name: String,
    /// MTU of the TUN interface: the largest plaintext packet. With the default 1400 the ESP
    /// packet of any supported transform fits a 1500-octet link in both families.
    pub mtu: u16,
    /// Open the IPv4 raw ESP socket.
    pub ipv4: bool,
    /// Open the IPv6 raw ESP socket (skipped with a warning if the host has no IPv6).
    pub ipv6: bool,
    /// Address of the interface IPv4 groups are joined on and multicast ESP leaves by.
    /// Needed as soon as a group is also routed into the TUN: the kernel's choice by route
    /// would otherwise be the TUN itself.
    pub multicast_if_v4: Option<Ipv4Addr>,
    /// Index of that interface for IPv6 (0: none).
    pub multicast_if_v6: u32,
    /// Outer TTL / Hop Limit of every ESP packet sent; `None` keeps what the engine wrote
    /// (the inner value with address preservation, 64 otherwise).
    pub ttl: Option<u8>,
    /// Loop our own multicast ESP back to local sockets (off: a sender does not read its
    /// own packets).
    pub multicast_loop: bool,
    /// Packets per `recvmmsg` / `sendmmsg` (1 ..= [`MAX_BATCH`]).
    pub batch: usize,
    /// Set the TUN's `rp_filter` to 0: packets the data plane delivers carry the sender's
    /// address (RFC 5374 address preservation), which strict reverse-path filtering would
    /// reject on the TUN. `net.ipv4.conf.all.rp_filter` must not be 1 either.
    pub disable_rp_filter: bool,
    /// The clock (default `Instant::now`); share the member agent's clock if it moves time.
    pub clock: ClockFn,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            tun_name: "gmtun0".into(),
            mtu: 1400,
            ipv4: true,
            ipv6: true,
            multicast_if_v4: None,
            multicast_if_v6: 0,
            ttl: None,
            multicast_loop: false,
            batch: 32,
            disable_rp_filter: true,
            clock: Arc::new(Instant::now),
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("tun_name", &self.tun_name)
            .field("mtu", &self.mtu)
            .field("ipv4", &self.ipv4)
            .field("ipv6", &self.ipv6)
            .field("multicast_if_v4", &self.multicast_if_v4)
            .field("multicast_if_v6", &self.multicast_if_v6)
            .field("ttl", &self.ttl)
            .field("multicast_loop", &self.multicast_loop)
            .field("batch", &self.batch)
            .field("disable_rp_filter", &self.disable_rp_filter)
            .finish_non_exhaustive()
    }
}

/// Why the data plane could not start or change.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("TUN interface {name}: {source}")]
    Tun {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("raw ESP socket ({family}): {source}")]
    Socket {
        family: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

impl Error {
    fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// Counters of the data plane (the engine counts inbound drops per reason).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets read from the TUN.
    pub tun_read: u64,
    /// ESP packets sent, and their octets (outer IP header included).
    pub esp_sent: u64,
    pub esp_sent_bytes: u64,
    /// `sendmmsg` calls that sent at least one packet.
    pub send_batches: u64,
    /// Outbound packets of a PROTECT policy without an active SA.
    pub tx_no_sa: u64,
    /// Outbound packets the SPD discards.
    pub tx_discard: u64,
    /// Outbound packets the SPD bypasses: the TUN only carries protected traffic, so they
    /// are dropped (route them elsewhere).
    pub tx_bypass: u64,
    /// `seal` refused the packet (not yet active, expired, too large, ...).
    pub tx_seal_error: u64,
    /// The socket refused the packet (e.g. larger than the path MTU).
    pub tx_send_error: u64,
    /// ESP packets received, and their octets.
    pub esp_received: u64,
    pub esp_received_bytes: u64,
    /// `recvmmsg` calls that returned at least one packet.
    pub recv_batches: u64,
    /// Packets delivered to the TUN.
    pub delivered: u64,
    /// Packets the engine dropped (reasons: [`Engine::drops`]).
    pub rx_dropped: u64,
    /// Received packets longer than the receive buffer.
    pub rx_truncated: u64,
    /// Writes to the TUN that failed.
    pub tun_write_error: u64,
}

/// Counters as the workers update them (per batch, relaxed).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub tun_read: AtomicU64,
    pub esp_sent: AtomicU64,
    pub esp_sent_bytes: AtomicU64,
    pub send_batches: AtomicU64,
    pub tx_no_sa: AtomicU64,
    pub tx_discard: AtomicU64,
    pub tx_bypass: AtomicU64,
    pub tx_seal_error: AtomicU64,
    pub tx_send_error: AtomicU64,
    pub esp_received: AtomicU64,
    pub esp_received_bytes: AtomicU64,
    pub recv_batches: AtomicU64,
    pub delivered: AtomicU64,
    pub rx_dropped: AtomicU64,
    pub rx_truncated: AtomicU64,
    pub tun_write_error: AtomicU64,
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    if n > 0 {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

impl Counters {
    fn snapshot(&self) -> Stats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            tun_read: g(&self.tun_read),
            esp_sent: g(&self.esp_sent),
            esp_sent_bytes: g(&self.esp_sent_bytes),
            send_batches: g(&self.send_batches),
            tx_no_sa: g(&self.tx_no_sa),
            tx_discard: g(&self.tx_discard),
            tx_bypass: g(&self.tx_bypass),
            tx_seal_error: g(&self.tx_seal_error),
            tx_send_error: g(&self.tx_send_error),
            esp_received: g(&self.esp_received),
            esp_received_bytes: g(&self.esp_received_bytes),
            recv_batches: g(&self.recv_batches),
            delivered: g(&self.delivered),
            rx_dropped: g(&self.rx_dropped),
            rx_truncated: g(&self.rx_truncated),
            tun_write_error: g(&self.tun_write_error),
        }
    }
}

/// What the workers share.
pub(crate) struct Shared {
    pub engine: Arc<Engine>,
    pub tun: tun_rs::SyncDevice,
    pub v4: Option<socket2::Socket>,
    pub v6: Option<socket2::Socket>,
    /// Written once to stop the workers (wakes them from `poll`)...
    pub stop: EventFd,
    /// ...and set first, for workers busy draining a queue.
    pub stopping: AtomicBool,
    pub counters: Counters,
    pub ttl: Option<u8>,
    pub batch: usize,
    pub mtu: usize,
    pub clock: ClockFn,
}

/// Reference-counted multicast memberships and routes (control plane only).
#[derive(Default)]
struct Control {
    groups: HashMap<IpAddr, usize>,
    routes: HashMap<(IpAddr, u8), usize>,
    netlink: Option<route::Netlink>,
}

/// A running data plane: a TUN interface, raw ESP sockets and two workers around one
/// [`Engine`]. Dropping it stops the workers and removes the TUN (and so its routes).
pub struct DataPlane {
    shared: Arc<Shared>,
    control: Mutex<Control>,
    workers: Vec<JoinHandle<()>>,
    tun_name: String,
    tun_index: u32,
    multicast_if_v4: Option<Ipv4Addr>,
    multicast_if_v6: u32,
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlane")
            .field("tun", &self.tun_name)
            .field("tun_index", &self.tun_index)
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<Control>) -> MutexGuard<'_, Control> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DataPlane {
    /// Creates the TUN interface (up, with `config.mtu`), the raw ESP sockets and the
    /// rtnetlink socket in the calling thread's network namespace, and starts the workers
    /// (which inherit it). Later calls may come from any thread.
    /// Needs CAP_NET_ADMIN and CAP_NET_RAW.
    pub fn start(engine: Arc<Engine>, config: Config) -> Result<Self, Error> {
        if config.tun_name.is_empty() || config.tun_name.len() > 15 {
            return Err(Error::Config(format!(
                "tun_name: {:?}: 1 to 15 octets",
                config.tun_name
            )));
        }
        if !(1..=MAX_BATCH).contains(&config.batch) {
            return Err(Error::Config(format!("batch: 1 to {MAX_BATCH}")));
        }
        if config.mtu < 576 {
            return Err(Error::Config("mtu: at least 576".into()));
        }
        if !config.ipv4 && !config.ipv6 {
            return Err(Error::Config("neither IPv4 nor IPv6".into()));
        }
        let tun_err = |source| Error::Tun {
            name: config.tun_name.clone(),
            source,
        };
        let tun = tun_rs::DeviceBuilder::new()
            .name(&config.tun_name)
            .mtu(config.mtu)
            .enable(true)
            .build_sync()
            .map_err(tun_err)?;
        tun.set_nonblocking(true).map_err(tun_err)?;
        let tun_index = tun.if_index().map_err(tun_err)?;
        let tun_name = tun.name().map_err(tun_err)?;
        if config.disable_rp_filter {
            io::disable_rp_filter(&tun_name);
        }
        let v4 = if config.ipv4 {
            Some(io::raw_v4(&config).map_err(|source| Error::Socket {
                family: "IPv4",
                source,
            })?)
        } else {
            None
        };
        let v6 = match (config.ipv6, io::raw_v6(&config)) {
            (false, _) => None,
            (true, Ok(s)) => Some(s),
            (true, Err(e)) if v4.is_some() => {
                tracing::warn!("data plane: no IPv6 ESP socket: {e}");
                None
            }
            (true, Err(source)) => {
                return Err(Error::Socket {
                    family: "IPv6",
                    source,
                });
            }
        };
        let stop = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|e| Error::io("eventfd", e.into()))?;
        let shared = Arc::new(Shared {
            engine,
            tun,
            v4,
            v6,
            stop,
            stopping: AtomicBool::new(false),
            counters: Counters::default(),
            ttl: config.ttl,
            batch: config.batch,
            mtu: usize::from(config.mtu),
            clock: config.clock.clone(),
        });
        // Opened here, in the namespace of the TUN: control calls may come from any thread.
        let netlink = route::Netlink::open()
            .map_err(|e| tracing::warn!("data plane: rtnetlink: {e}; groups cannot be routed"))
            .ok();
        let mut dp = DataPlane {
            shared: shared.clone(),
            control: Mutex::new(Control {
                netlink,
                ..Control::default()
            }),
            workers: Vec::new(),
            tun_name,
            tun_index,
            multicast_if_v4: config.multicast_if_v4,
            multicast_if_v6: config.multicast_if_v6,
        };
        let spawn = |name: &str, f: fn(&Shared)| {
            let sh = shared.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || f(&sh))
                .map_err(|e| Error::io("spawning a worker", e))
        };
        dp.workers.push(spawn("esp-tx", worker::tx_loop)?);
        dp.workers.push(spawn("esp-rx", worker::rx_loop)?);
        Ok(dp)
    }

    /// The TUN interface's name.
    pub fn tun_name(&self) -> &str {
        &self.tun_name
    }

    /// The TUN interface's index.
    pub fn tun_index(&self) -> u32 {
        self.tun_index
    }

    /// The engine the workers seal and open with.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.shared.engine
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// Joins `group` on the configured interface for inbound ESP (counted: the second join
    /// of a group only counts). Unicast addresses need no join and are accepted.
    pub fn join(&self, group: IpAddr) -> Result<(), Error> {
        if !group.is_multicast() {
            return Ok(());
        }
        let mut c = lock(&self.control);
        if let Some(n) = c.groups.get_mut(&group) {
            *n += 1;
            return Ok(());
        }
        self.membership(group, true)?;
        c.groups.insert(group, 1);
        Ok(())
    }

    /// Undoes one [`DataPlane::join`]; the last one leaves the group.
    pub fn leave(&self, group: IpAddr) -> Result<(), Error> {
        let mut c = lock(&self.control);
        match c.groups.get_mut(&group) {
            Some(n) if *n > 1 => {
                *n -= 1;
                Ok(())
            }
            Some(_) => {
                c.groups.remove(&group);
                self.membership(group, false)
            }
            None => Ok(()),
        }
    }

    /// The multicast groups joined now.
    pub fn joined(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = lock(&self.control).groups.keys().copied().collect();
        v.sort();
        v
    }

    fn membership(&self, group: IpAddr, join: bool) -> Result<(), Error> {
        let what = || format!("{} {group}", if join { "joining" } else { "leaving" });
        match group {
            IpAddr::V4(g) => {
                let s = self
                    .shared
                    .v4
                    .as_ref()
                    .ok_or_else(|| Error::Config(format!("{}: no IPv4 ESP socket", what())))?;
                let ifaddr = self.multicast_if_v4.unwrap_or(Ipv4Addr::UNSPECIFIED);
                if join {
                    s.join_multicast_v4(&g, &ifaddr)
                } else {
                    s.leave_multicast_v4(&g, &ifaddr)
                }
                .map_err(|e| Error::io(what(), e))
            }
            IpAddr::V6(g) => {
                let s = self
                    .shared
                    .v6
                    .as_ref()
                    .ok_or_else(|| Error::Config(format!("{}: no IPv6 ESP socket", what())))?;
                if join {
                    s.join_multicast_v6(&g, self.multicast_if_v6)
                } else {
                    s.leave_multicast_v6(&g, self.multicast_if_v6)
                }
                .map_err(|e| Error::io(what(), e))
            }
        }
    }

    /// Routes `dst/prefix` into the TUN (counted like joins), so that applications' packets
    /// to a group an outbound SA protects reach the TX worker. Multicast destinations only:
    /// outer packets of address-preserving SAs carry the same destination, and only a fixed
    /// multicast interface ([`Config::multicast_if_v4`] / `multicast_if_v6`) keeps them
    /// from following the route back into the TUN.
    pub fn add_route(&self, dst: IpAddr, prefix: u8) -> Result<(), Error> {
        let full = if dst.is_ipv4() { 32 } else { 128 };
        if prefix > full || !dst.is_multicast() || prefix < if dst.is_ipv4() { 4 } else { 8 } {
            return Err(Error::Config(format!(
                "route {dst}/{prefix}: only multicast prefixes are routed into the TUN"
            )));
        }
        let has_if = match dst {
            IpAddr::V4(_) => self.multicast_if_v4.is_some(),
            IpAddr::V6(_) => self.multicast_if_v6 != 0,
        };
        if !has_if {
            return Err(Error::Config(format!(
                "route {dst}/{prefix}: a sender needs the multicast interface configured \
                 (else ESP would follow the route into the TUN)"
            )));
        }
        let mut c = lock(&self.control);
        if let Some(n) = c.routes.get_mut(&(dst, prefix)) {
            *n += 1;
            return Ok(());
        }
        let src = match dst {
            IpAddr::V4(_) => self.multicast_if_v4.map(IpAddr::V4),
            IpAddr::V6(_) => None,
        };
        let nl = c
            .netlink
            .as_mut()
            .ok_or_else(|| Error::Config("no rtnetlink socket: routes cannot be added".into()))?;
        nl.route(true, dst, prefix, self.tun_index, src)
            .map_err(|e| Error::io(format!("adding route {dst}/{prefix}"), e))?;
        c.routes.insert((dst, prefix), 1);
        Ok(())
    }

    /// Undoes one [`DataPlane::add_route`]; the last one deletes the route.
    pub fn remove_route(&self, dst: IpAddr, prefix: u8) -> Result<(), Error> {
        let mut c = lock(&self.control);
        match c.routes.get_mut(&(dst, prefix)) {
            Some(n) if *n > 1 => {
                *n -= 1;
                Ok(())
            }
            Some(_) => {
                c.routes.remove(&(dst, prefix));
                let Some(nl) = c.netlink.as_mut() else {
                    return Ok(());
                };
                nl.route(false, dst, prefix, self.tun_index, None)
                    .map_err(|e| Error::io(format!("deleting route {dst}/{prefix}"), e))
            }
            None => Ok(()),
        }
    }

    /// The routes into the TUN that exist now.
    pub fn routes(&self) -> Vec<(IpAddr, u8)> {
        let mut v: Vec<(IpAddr, u8)> = lock(&self.control).routes.keys().copied().collect();
        v.sort();
        v
    }

    /// Stops the workers and removes the TUN interface.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if self.workers.is_empty() {
            return;
        }
        self.shared.stopping.store(true, Ordering::Relaxed);
        if let Err(e) = self.shared.stop.write(1) {
            tracing::warn!("data plane: cannot signal the workers: {e}");
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }

    /// Whether the workers still run (they stop only when asked, or on a fatal I/O error).
    pub fn running(&self) -> bool {
        !self.workers.is_empty() && self.workers.iter().all(|w| !w.is_finished())
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        self.halt();
    }
}
