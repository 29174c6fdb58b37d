//! Raw protocol-50 sockets and the batched system calls around them (`recvmmsg`,
//! `sendmmsg` through nix: no unsafe code here).

use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrIn, SockaddrIn6, SockaddrLike, recvmmsg,
    sendmmsg, setsockopt, sockopt,
};
use socket2::{Domain, Protocol, Socket, Type};

use super::{Config, MAX_BATCH};
use crate::ip::proto;

/// Receive buffer of a raw socket: bursts of a fast sender wait here, not on the wire.
const SOCKET_BUFFER: usize = 4 << 20;

fn esp_socket(domain: Domain) -> std::io::Result<Socket> {
    let s = Socket::new(
        domain,
        Type::RAW.cloexec(),
        Some(Protocol::from(i32::from(proto::ESP))),
    )?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    Ok(s)
}

/// The IPv4 ESP socket: sends complete packets (`IP_HDRINCL`), receives them with their IP
/// header.
pub(crate) fn raw_v4(cfg: &Config) -> std::io::Result<Socket> {
    let s = esp_socket(Domain::IPV4)?;
    s.set_header_included_v4(true)?;
    s.set_multicast_loop_v4(cfg.multicast_loop)?;
    if let Some(a) = cfg.multicast_if_v4 {
        s.set_multicast_if_v4(&a)?;
    }
    Ok(s)
}

/// The IPv6 ESP socket: sends complete packets (`IPV6_HDRINCL`), receives the ESP packet
/// with the source as socket address and the destination in `IPV6_PKTINFO`.
pub(crate) fn raw_v6(cfg: &Config) -> std::io::Result<Socket> {
    let s = esp_socket(Domain::IPV6)?;
    s.set_header_included_v6(true)?;
    s.set_multicast_loop_v6(cfg.multicast_loop)?;
    if cfg.multicast_if_v6 != 0 {
        s.set_multicast_if_v6(cfg.multicast_if_v6)?;
    }
    setsockopt(&s, sockopt::Ipv6RecvPacketInfo, &true)?;
    Ok(s)
}

/// `net.ipv4.conf.<tun>.rp_filter = 0` (best effort, logged). The calling thread's network
/// namespace decides which `/proc/sys/net` this is.
pub(crate) fn disable_rp_filter(ifname: &str) {
    let path = format!("/proc/sys/net/ipv4/conf/{ifname}/rp_filter");
    if let Err(e) = std::fs::write(&path, "0") {
        tracing::warn!("data plane: {path}: {e}");
    }
    if let Ok(all) = std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter")
        && all.trim() == "1"
    {
        tracing::warn!(
            "data plane: net.ipv4.conf.all.rp_filter is 1 (strict): packets delivered on \
             {ifname} carry the sender's address and will be dropped; set it to 0 or 2"
        );
    }
}

/// One received datagram, as the RX worker needs it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Received {
    pub len: usize,
    pub truncated: bool,
    /// IPv6 only: source (socket address) and destination (`IPV6_PKTINFO`).
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
}

/// Preallocated `recvmmsg` state for one socket: `batch` buffers of `headroom + buf_len`
/// octets; each datagram lands at `headroom` (room for `open_esp_in_place` to write a
/// transport-mode header in front of the payload).
pub(crate) struct RecvBatch<S: SockaddrLike + Copy> {
    headers: MultiHeaders<S>,
    pub bufs: Vec<Box<[u8]>>,
    pub got: [Received; MAX_BATCH],
    pub headroom: usize,
}

impl<S: SockaddrLike + Copy> RecvBatch<S> {
    pub fn new(batch: usize, buf_len: usize, headroom: usize, cmsg: Option<Vec<u8>>) -> Self {
        Self {
            headers: MultiHeaders::preallocate(batch, cmsg),
            bufs: (0..batch)
                .map(|_| vec![0u8; headroom + buf_len].into_boxed_slice())
                .collect(),
            got: [Received::default(); MAX_BATCH],
            headroom,
        }
    }
}

fn v6_addr(a: &SockaddrIn6) -> IpAddr {
    IpAddr::V6(SocketAddrV6::from(*a).ip().to_owned())
}

/// Receives up to a batch without blocking; fills `b.got[..n]` and returns `n` (0 when
/// nothing is waiting).
pub(crate) fn recv_v4(sock: &Socket, b: &mut RecvBatch<SockaddrIn>) -> std::io::Result<usize> {
    recv_batch(sock, b, |_msg_addr, _cmsgs| (None, None))
}

/// Same for IPv6, with the addresses the engine needs.
pub(crate) fn recv_v6(sock: &Socket, b: &mut RecvBatch<SockaddrIn6>) -> std::io::Result<usize> {
    recv_batch(sock, b, |addr, pktinfo| {
        (addr.map(|a| v6_addr(&a)), pktinfo.map(IpAddr::V6))
    })
}

fn recv_batch<S: SockaddrLike + Copy>(
    sock: &Socket,
    b: &mut RecvBatch<S>,
    addrs: impl Fn(Option<S>, Option<Ipv6Addr>) -> (Option<IpAddr>, Option<IpAddr>),
) -> std::io::Result<usize> {
    let RecvBatch {
        headers,
        bufs,
        got,
        headroom,
    } = b;
    let n = bufs.len().min(MAX_BATCH);
    let mut iovs: [[IoSliceMut<'_>; 1]; MAX_BATCH] =
        std::array::from_fn(|_| [IoSliceMut::new(&mut [])]);
    for (iov, buf) in iovs.iter_mut().zip(bufs.iter_mut()) {
        *iov = [IoSliceMut::new(
            buf.get_mut(*headroom..).unwrap_or_default(),
        )];
    }
    let res = recvmmsg(
        sock.as_raw_fd(),
        headers,
        iovs.iter_mut().take(n),
        MsgFlags::MSG_DONTWAIT,
        None,
    );
    let results = match res {
        Ok(r) => r,
        Err(nix::errno::Errno::EAGAIN) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut count = 0;
    for (msg, slot) in results.zip(got.iter_mut()) {
        let mut pktinfo = None;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::Ipv6PacketInfo(info) = c {
                    pktinfo = Some(Ipv6Addr::from(info.ipi6_addr.s6_addr));
                }
            }
        }
        let (src, dst) = addrs(msg.address, pktinfo);
        *slot = Received {
            len: msg.bytes,
            truncated: msg.flags.contains(MsgFlags::MSG_TRUNC),
            src,
            dst,
        };
        count += 1;
    }
    Ok(count)
}

/// Preallocated `sendmmsg` state for one socket: the destinations of up to a batch of
/// packets that live in the caller's buffers.
pub(crate) struct SendBatch<S: SockaddrLike + Copy> {
    headers: MultiHeaders<S>,
    pub addrs: [Option<S>; MAX_BATCH],
    /// Index into the caller's buffers, offset in that buffer and length of each queued
    /// packet.
    pub slots: [(usize, usize, usize); MAX_BATCH],
    pub len: usize,
}

impl<S: SockaddrLike + Copy> SendBatch<S> {
    pub fn new(batch: usize) -> Self {
        Self {
            headers: MultiHeaders::preallocate(batch, None),
            addrs: [None; MAX_BATCH],
            slots: [(0, 0, 0); MAX_BATCH],
            len: 0,
        }
    }

    pub fn push(&mut self, addr: S, buf: usize, offset: usize, len: usize) {
        if let (Some(a), Some(s)) = (self.addrs.get_mut(self.len), self.slots.get_mut(self.len)) {
            *a = Some(addr);
            *s = (buf, offset, len);
            self.len += 1;
        }
    }
}

/// What one flush did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Sent {
    pub packets: u64,
    pub bytes: u64,
    pub errors: u64,
    pub calls: u64,
}

/// Sends the queued packets with as few `sendmmsg` calls as the kernel allows. A packet the
/// kernel refuses (the call fails on the first message) is counted and skipped.
pub(crate) fn flush<S: SockaddrLike + Copy>(
    sock: &Socket,
    q: &mut SendBatch<S>,
    bufs: &[Box<[u8]>],
) -> Sent {
    let mut out = Sent::default();
    let n = q.len;
    q.len = 0;
    let mut start = 0;
    while start < n {
        let mut iovs: [[IoSlice<'_>; 1]; MAX_BATCH] = std::array::from_fn(|_| [IoSlice::new(&[])]);
        let mut k = 0;
        for (iov, &(buf, at, len)) in iovs.iter_mut().zip(q.slots.get(start..n).unwrap_or(&[])) {
            *iov = [IoSlice::new(
                bufs.get(buf)
                    .and_then(|b| b.get(at..at + len))
                    .unwrap_or(&[]),
            )];
            k += 1;
        }
        let addrs = q.addrs.get(start..n).unwrap_or(&[]);
        let r = sendmmsg(
            sock.as_raw_fd(),
            &mut q.headers,
            iovs.iter().take(k),
            addrs,
            [],
            MsgFlags::empty(),
        );
        match r {
            Ok(res) => {
                let mut sent = 0;
                for m in res {
                    sent += 1;
                    out.bytes += m.bytes as u64;
                }
                if sent == 0 {
                    out.errors += (n - start) as u64;
                    break;
                }
                out.calls += 1;
                out.packets += sent as u64;
                start += sent;
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                tracing::debug!("data plane: sendmmsg: {e}");
                out.errors += 1;
                start += 1;
            }
        }
    }
    out
}

/// The socket address of an outer destination.
pub(crate) fn sockaddr_v4(dst: std::net::Ipv4Addr) -> SockaddrIn {
    SockaddrIn::from(SocketAddrV4::new(dst, 0))
}

pub(crate) fn sockaddr_v6(dst: Ipv6Addr) -> SockaddrIn6 {
    SockaddrIn6::from(SocketAddrV6::new(dst, 0, 0, 0))
}
