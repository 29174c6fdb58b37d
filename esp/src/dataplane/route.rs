//! Routes into the TUN over rtnetlink (`RTM_NEWROUTE` / `RTM_DELROUTE`, as
//! `ip route replace <dst>/<len> dev <tun> [src <addr>]` does), with the request and the
//! kernel's acknowledgement in buffers built by `netlink-packet-route`.

use std::net::IpAddr;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// IPv6 multicast routes live in the local table (the kernel puts `ff00::/8` there for
/// every interface, and the local table is looked up first); IPv4 ones in main.
const RT_TABLE_LOCAL: u8 = 255;

/// An rtnetlink socket bound in the namespace it was opened in.
pub(crate) struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    pub fn open() -> std::io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Self {
            sock,
            seq: 0,
            buf: vec![0u8; 8192],
        })
    }

    /// Adds (replacing any route of the same key) or deletes `dst/prefix dev oif`.
    pub fn route(
        &mut self,
        add: bool,
        dst: IpAddr,
        prefix: u8,
        oif: u32,
        src: Option<IpAddr>,
    ) -> std::io::Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = if dst.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        m.header.destination_prefix_length = prefix;
        m.header.table = if dst.is_ipv6() && dst.is_multicast() {
            RT_TABLE_LOCAL
        } else {
            RouteHeader::RT_TABLE_MAIN
        };
        m.header.protocol = RouteProtocol::Static;
        m.header.scope = RouteScope::Link;
        m.header.kind = RouteType::Unicast;
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        m.attributes.push(RouteAttribute::Oif(oif));
        if let Some(s) = src {
            m.attributes
                .push(RouteAttribute::PrefSource(RouteAddress::from(s)));
        }
        let mut hdr = NetlinkHeader::default();
        hdr.flags = NLM_F_REQUEST | NLM_F_ACK;
        if add {
            hdr.flags |= NLM_F_CREATE | NLM_F_REPLACE;
        }
        self.seq = self.seq.wrapping_add(1);
        hdr.sequence_number = self.seq;
        let inner = if add {
            RouteNetlinkMessage::NewRoute(m)
        } else {
            RouteNetlinkMessage::DelRoute(m)
        };
        let mut msg = NetlinkMessage::new(hdr, NetlinkPayload::InnerMessage(inner));
        msg.finalize();
        let len = msg.buffer_len();
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        let out = self
            .buf
            .get_mut(..len)
            .ok_or_else(|| std::io::Error::other("netlink buffer"))?;
        msg.serialize(out);
        self.sock.send(out, 0)?;
        self.ack()
    }

    /// Reads until the acknowledgement of our request.
    fn ack(&mut self) -> std::io::Result<()> {
        loop {
            let mut buf = &mut self.buf[..];
            let n = self.sock.recv(&mut buf, 0)?;
            let mut data = self.buf.get(..n).unwrap_or(&[]);
            while !data.is_empty() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(data)
                    .map_err(|e| std::io::Error::other(format!("netlink reply: {e}")))?;
                let len = (msg.header.length as usize).max(16);
                if msg.header.sequence_number == self.seq
                    && let NetlinkPayload::Error(e) = msg.payload
                {
                    return match e.code {
                        None => Ok(()),
                        Some(code) => Err(std::io::Error::from_raw_os_error(-code.get())),
                    };
                }
                data = data.get(len..).unwrap_or(&[]);
            }
        }
    }
}
