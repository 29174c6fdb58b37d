//! The GCKS's UDP sockets as NAT traversal needs them (RFC 7296 2.23): the address a
//! datagram was sent *to*, which a socket bound to a wildcard address learns only from
//! `IP_PKTINFO`/`IPV6_RECVPKTINFO`; NAT detection hashes it, and the answer leaves from
//! it (`sendmsg` with the same control message), so a multi-homed GCKS answers from the
//! address the member used.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

use nix::libc;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, sendmsg, setsockopt,
    sockopt,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// One of the GCKS's sockets and the address it is bound to.
#[derive(Debug)]
pub struct IkeSocket {
    pub socket: std::sync::Arc<UdpSocket>,
    bound: SocketAddr,
}

impl IkeSocket {
    /// Wraps a bound socket; for a wildcard address, asks the kernel for each datagram's
    /// destination.
    pub fn new(socket: std::sync::Arc<UdpSocket>) -> io::Result<Self> {
        let bound = socket.local_addr()?;
        if bound.ip().is_unspecified() {
            match bound {
                SocketAddr::V4(_) => setsockopt(&*socket, sockopt::Ipv4PacketInfo, &true)?,
                SocketAddr::V6(_) => setsockopt(&*socket, sockopt::Ipv6RecvPacketInfo, &true)?,
            }
        }
        Ok(Self { socket, bound })
    }

    pub fn bound(&self) -> SocketAddr {
        self.bound
    }

    fn wildcard(&self) -> bool {
        self.bound.ip().is_unspecified()
    }

    /// Receives one datagram: its length, where it came from, and where it was sent to
    /// (the bound address, or for a wildcard socket the one the kernel reported).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, SocketAddr)> {
        if !self.wildcard() {
            let (n, from) = self.socket.recv_from(buf).await?;
            return Ok((n, from, self.bound));
        }
        loop {
            self.socket.readable().await?;
            match self
                .socket
                .try_io(Interest::READABLE, || self.recv_with_destination(buf))
            {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }

    fn recv_with_destination(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, SocketAddr)> {
        let mut cmsg = nix::cmsg_space!(libc::in6_pktinfo);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<SockaddrStorage>(
            self.socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_DONTWAIT,
        )?;
        let from = msg
            .address
            .as_ref()
            .and_then(storage_to_socket_addr)
            .ok_or_else(|| io::Error::other("datagram without a source address"))?;
        let mut to = self.bound;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                match c {
                    ControlMessageOwned::Ipv4PacketInfo(i) => {
                        to.set_ip(IpAddr::V4(Ipv4Addr::from(u32::from_be(i.ipi_addr.s_addr))));
                    }
                    ControlMessageOwned::Ipv6PacketInfo(i) => {
                        to.set_ip(IpAddr::V6(Ipv6Addr::from(i.ipi6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
        }
        Ok((msg.bytes, from, to))
    }

    /// Sends `data` to `to`, from `from`'s address when this socket is bound to a
    /// wildcard one (and `from` names a specific address of the same family).
    pub async fn send(&self, data: &[u8], to: SocketAddr, from: SocketAddr) -> io::Result<()> {
        let source = from.ip();
        if !self.wildcard() || source.is_unspecified() || source.is_ipv4() != to.is_ipv4() {
            self.socket.send_to(data, to).await?;
            return Ok(());
        }
        let dst = SockaddrStorage::from(to);
        loop {
            self.socket.writable().await?;
            let sent = self.socket.try_io(Interest::WRITABLE, || {
                let iov = [IoSlice::new(data)];
                let (v4, v6);
                let cmsg = match source {
                    IpAddr::V4(a) => {
                        v4 = libc::in_pktinfo {
                            ipi_ifindex: 0,
                            ipi_spec_dst: libc::in_addr {
                                s_addr: u32::from(a).to_be(),
                            },
                            ipi_addr: libc::in_addr { s_addr: 0 },
                        };
                        ControlMessage::Ipv4PacketInfo(&v4)
                    }
                    IpAddr::V6(a) => {
                        v6 = libc::in6_pktinfo {
                            ipi6_addr: libc::in6_addr {
                                s6_addr: a.octets(),
                            },
                            ipi6_ifindex: 0,
                        };
                        ControlMessage::Ipv6PacketInfo(&v6)
                    }
                };
                let fd = self.socket.as_raw_fd();
                sendmsg(fd, &iov, &[cmsg], MsgFlags::MSG_DONTWAIT, Some(&dst))
                    .map_err(io::Error::from)
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r.map(|_| ()),
            }
        }
    }
}

fn storage_to_socket_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(a) = s.as_sockaddr_in() {
        return Some(SocketAddr::from((a.ip(), a.port())));
    }
    s.as_sockaddr_in6()
        .map(|a| SocketAddr::from((a.ip(), a.port())))
}
