//! NAT traversal for the IKE SA (RFC 7296 2.23, which RFC 9838 2.1.1 makes a MUST for the
//! registration IKE SA, R002): the detection hashes `SHA-1(SPIi | SPIr | IP address |
//! port)` and what they tell about either side.
//!
//! SHA-1 here is a fingerprint, not a security function; RFC 7296 fixes the algorithm.

use std::net::{IpAddr, SocketAddr};

use crate::registry::NotifyType;
use crate::wire::message::Message;
use crate::wire::notify::NAT_DETECTION_LEN;

/// The port IKE moves to once a NAT is detected, where IKE messages carry the four-octet
/// non-ESP marker (RFC 7296 2.23; RFC 3948 2.2).
pub const NAT_T_PORT: u16 = 4500;

/// The NAT_DETECTION_*_IP notification data for `addr`.
pub fn nat_detection_hash(
    spi_i: &[u8; 8],
    spi_r: &[u8; 8],
    addr: SocketAddr,
) -> [u8; NAT_DETECTION_LEN] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(spi_i);
    ctx.update(spi_r);
    match addr.ip() {
        IpAddr::V4(a) => ctx.update(&a.octets()),
        IpAddr::V6(a) => ctx.update(&a.octets()),
    }
    ctx.update(&addr.port().to_be_bytes());
    let mut out = [0u8; NAT_DETECTION_LEN];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// What the NAT_DETECTION_* notifications of the peer's IKE_SA_INIT message showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NatStatus {
    /// No NAT_DETECTION_SOURCE_IP matched the packet's source: the peer is behind a NAT,
    /// so its address may change and we follow it (dynamic update, RFC 7296 2.23).
    pub peer_behind: bool,
    /// NAT_DETECTION_DESTINATION_IP did not match the address the packet reached: we are
    /// behind a NAT, so we keep NAT mappings alive (keepalives, RFC 3948 4) and never
    /// follow a changed peer address.
    pub local_behind: bool,
}

impl NatStatus {
    /// A NAT somewhere on the path.
    pub fn any(&self) -> bool {
        self.peer_behind || self.local_behind
    }

    /// Reads the NAT_DETECTION_* notifications of an IKE_SA_INIT message whose header
    /// carried `spi_i`/`spi_r` and that came from `source` to `destination` (the outer
    /// addresses). `None` when the peer sent neither notification: it does not do NAT
    /// traversal. A notification whose data is not a 20-octet hash counts as a mismatch.
    pub fn observe(
        msg: &Message,
        spi_i: &[u8; 8],
        spi_r: &[u8; 8],
        source: SocketAddr,
        destination: SocketAddr,
    ) -> Option<Self> {
        let mut saw_source = false;
        let mut source_matched = false;
        let mut destination_matched = None;
        let want_source = nat_detection_hash(spi_i, spi_r, source);
        let want_destination = nat_detection_hash(spi_i, spi_r, destination);
        for n in msg.notifies() {
            match n.ty {
                // RFC 7296 2.23: there MAY be several NAT_DETECTION_SOURCE_IP payloads;
                // the peer is behind a NAT only when none of them matches.
                NotifyType::NatDetectionSourceIp => {
                    saw_source = true;
                    source_matched |= n.nat_detection_hash().is_ok_and(|h| h == want_source);
                }
                NotifyType::NatDetectionDestinationIp => {
                    let m = n.nat_detection_hash().is_ok_and(|h| h == want_destination);
                    destination_matched = Some(destination_matched.unwrap_or(false) || m);
                }
                _ => {}
            }
        }
        if !saw_source && destination_matched.is_none() {
            return None;
        }
        Some(Self {
            peer_behind: saw_source && !source_matched,
            local_behind: destination_matched == Some(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::ExchangeType;
    use crate::wire::header::{Flags, Header};
    use crate::wire::notify::NotifyPayload;
    use crate::wire::payload::Payload;

    #[test]
    fn hash_covers_every_input() {
        let a: SocketAddr = "192.0.2.1:500".parse().unwrap();
        let b: SocketAddr = "192.0.2.1:4500".parse().unwrap();
        let h = nat_detection_hash(&[1; 8], &[2; 8], a);
        assert_ne!(h, nat_detection_hash(&[1; 8], &[2; 8], b));
        assert_ne!(h, nat_detection_hash(&[1; 8], &[3; 8], a));
        assert_eq!(h, nat_detection_hash(&[1; 8], &[2; 8], a));
    }

    fn init_with(notifies: Vec<NotifyPayload>) -> Message {
        let h = Header::new(
            [1; 8],
            [0; 8],
            ExchangeType::IkeSaInit,
            Flags::new(true, false),
            0,
        );
        Message::new(h, notifies.into_iter().map(Payload::Notify).collect())
    }

    #[test]
    fn observe_tells_which_side_is_behind_a_nat() {
        let member: SocketAddr = "10.1.0.2:40000".parse().unwrap();
        let mapped: SocketAddr = "192.0.2.7:61000".parse().unwrap();
        let gcks: SocketAddr = "192.0.2.1:848".parse().unwrap();
        let (i, r) = ([1; 8], [0; 8]);
        let sent = |src, dst| {
            init_with(vec![
                NotifyPayload::nat_detection_source_ip(nat_detection_hash(&i, &r, src)),
                NotifyPayload::nat_detection_destination_ip(nat_detection_hash(&i, &r, dst)),
            ])
        };
        // No NAT: what the member hashed is what the GCKS sees.
        let direct = NatStatus::observe(&sent(member, gcks), &i, &r, member, gcks).unwrap();
        assert_eq!(direct, NatStatus::default());
        assert!(!direct.any());
        // The member behind a NAT: its source was rewritten on the way.
        let natted = NatStatus::observe(&sent(member, gcks), &i, &r, mapped, gcks).unwrap();
        assert!(natted.peer_behind && !natted.local_behind);
        // Seen from the member, the GCKS's answer names the mapped address as destination.
        let back = NatStatus::observe(&sent(gcks, mapped), &i, &r, gcks, member).unwrap();
        assert!(back.local_behind && !back.peer_behind);
        // One of several source hashes matching is enough (RFC 7296 2.23).
        let several = init_with(vec![
            NotifyPayload::nat_detection_source_ip([0; 20]),
            NotifyPayload::nat_detection_source_ip(nat_detection_hash(&i, &r, mapped)),
        ]);
        let s = NatStatus::observe(&several, &i, &r, mapped, gcks).unwrap();
        assert!(!s.peer_behind && !s.local_behind);
        // A peer that sent neither does not do NAT traversal.
        assert_eq!(
            NatStatus::observe(&init_with(vec![]), &i, &r, mapped, gcks),
            None
        );
    }
}
