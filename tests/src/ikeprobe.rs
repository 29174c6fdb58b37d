//! A hand-built minimal IKE_SA_INIT request (RFC 7296 3.1-3.4, 3.9) and a reader for the
//! reply's header, payload chain and notifies. Independent of `gikev2-proto` on purpose:
//! it checks that the harness reaches a peer before our own stack is involved, and it
//! gives tests a second, naive view of the wire.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{HarnessError, Result};

/// Exchange type IKE_SA_INIT.
pub const IKE_SA_INIT: u8 = 34;
/// Payload types used here.
pub const PT_SA: u8 = 33;
pub const PT_KE: u8 = 34;
pub const PT_NONCE: u8 = 40;
pub const PT_NOTIFY: u8 = 41;
/// Notify types a probe may see.
pub const NO_PROPOSAL_CHOSEN: u16 = 14;
pub const INVALID_KE_PAYLOAD: u16 = 17;
pub const INVALID_SYNTAX: u16 = 7;

/// Non-cryptographic bytes for SPIs, nonces and dummy KE data (SplitMix64 seeded from
/// the clock and the pid; a probe needs uniqueness, not secrecy).
pub fn pseudo_random_bytes(n: usize) -> Vec<u8> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut state = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER.fetch_add(0x9e37_79b9_7f4a_7c15, std::sync::atomic::Ordering::Relaxed);
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_be_bytes());
    }
    out.truncate(n);
    out
}

/// One IKE proposal's transforms: (type, id, key length attribute).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transform {
    pub kind: u8,
    pub id: u16,
    pub key_len: Option<u16>,
}

/// An IKE_SA_INIT request: one proposal, a KE payload, a nonce, optional notifies.
#[derive(Clone, Debug)]
pub struct SaInitRequest {
    pub spi_i: [u8; 8],
    pub transforms: Vec<Transform>,
    pub ke_group: u16,
    pub ke_data: Vec<u8>,
    pub nonce: Vec<u8>,
    /// Status notifies (type, data) with protocol 0 and no SPI.
    pub notifies: Vec<(u16, Vec<u8>)>,
}

impl SaInitRequest {
    /// AES-256-GCM-16 / PRF-HMAC-SHA2-256 / Curve25519 with a dummy 32-octet public
    /// value, a 32-octet nonce and IKEV2_FRAGMENTATION_SUPPORTED.
    pub fn aes256gcm_sha256_x25519() -> SaInitRequest {
        let spi = pseudo_random_bytes(8);
        SaInitRequest {
            spi_i: spi.try_into().unwrap_or([1; 8]),
            transforms: vec![
                Transform {
                    kind: 1,
                    id: 20,
                    key_len: Some(256),
                },
                Transform {
                    kind: 2,
                    id: 5,
                    key_len: None,
                },
                Transform {
                    kind: 4,
                    id: 31,
                    key_len: None,
                },
            ],
            ke_group: 31,
            ke_data: pseudo_random_bytes(32),
            nonce: pseudo_random_bytes(32),
            notifies: vec![(16430, Vec::new())],
        }
    }

    /// The datagram.
    pub fn encode(&self) -> Vec<u8> {
        let mut payloads: Vec<(u8, Vec<u8>)> = Vec::new();
        // SA: one proposal (RFC 7296 3.3.1).
        let mut transforms = Vec::new();
        for (i, t) in self.transforms.iter().enumerate() {
            let last = i + 1 == self.transforms.len();
            let attr_len = if t.key_len.is_some() { 4 } else { 0 };
            transforms.push(if last { 0 } else { 3 });
            transforms.push(0);
            transforms.extend_from_slice(&(8u16 + attr_len).to_be_bytes());
            transforms.push(t.kind);
            transforms.push(0);
            transforms.extend_from_slice(&t.id.to_be_bytes());
            if let Some(len) = t.key_len {
                transforms.extend_from_slice(&(0x800eu16).to_be_bytes());
                transforms.extend_from_slice(&len.to_be_bytes());
            }
        }
        let mut proposal = vec![0, 0];
        proposal.extend_from_slice(&(8 + transforms.len() as u16).to_be_bytes());
        proposal.extend_from_slice(&[1, 1, 0, self.transforms.len() as u8]);
        proposal.extend_from_slice(&transforms);
        payloads.push((PT_SA, proposal));
        let mut ke = self.ke_group.to_be_bytes().to_vec();
        ke.extend_from_slice(&[0, 0]);
        ke.extend_from_slice(&self.ke_data);
        payloads.push((PT_KE, ke));
        payloads.push((PT_NONCE, self.nonce.clone()));
        for (kind, data) in &self.notifies {
            let mut n = vec![0, 0];
            n.extend_from_slice(&kind.to_be_bytes());
            n.extend_from_slice(data);
            payloads.push((PT_NOTIFY, n));
        }
        let mut body = Vec::new();
        for (i, (_, data)) in payloads.iter().enumerate() {
            let next = payloads.get(i + 1).map_or(0, |p| p.0);
            body.push(next);
            body.push(0);
            body.extend_from_slice(&(4 + data.len() as u16).to_be_bytes());
            body.extend_from_slice(data);
        }
        let mut msg = self.spi_i.to_vec();
        msg.extend_from_slice(&[0; 8]);
        msg.push(payloads[0].0);
        msg.push(0x20);
        msg.push(IKE_SA_INIT);
        msg.push(0x08); // Initiator
        msg.extend_from_slice(&0u32.to_be_bytes());
        msg.extend_from_slice(&(28 + body.len() as u32).to_be_bytes());
        msg.extend_from_slice(&body);
        msg
    }
}

/// An IKE message read naively: header plus the unencrypted payload chain (stops at SK).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedIke {
    pub spi_i: [u8; 8],
    pub spi_r: [u8; 8],
    pub exchange: u8,
    pub flags: u8,
    pub message_id: u32,
    /// (payload type, body without the generic header).
    pub payloads: Vec<(u8, Vec<u8>)>,
}

impl ParsedIke {
    /// Parses a datagram (port 500 framing, no non-ESP marker).
    pub fn parse(msg: &[u8]) -> Result<ParsedIke, String> {
        if msg.len() < 28 {
            return Err(format!(
                "{} octets is shorter than an IKE header",
                msg.len()
            ));
        }
        let len = u32::from_be_bytes([msg[24], msg[25], msg[26], msg[27]]) as usize;
        if len != msg.len() {
            return Err(format!(
                "header says {len} octets, datagram has {}",
                msg.len()
            ));
        }
        let mut payloads = Vec::new();
        let mut next = msg[16];
        let mut at = 28;
        while next != 0 {
            let head = msg
                .get(at..at + 4)
                .ok_or_else(|| format!("payload header cut at {at}"))?;
            let plen = usize::from(u16::from_be_bytes([head[2], head[3]]));
            if plen < 4 || at + plen > msg.len() {
                return Err(format!("payload {next} at {at} has bad length {plen}"));
            }
            payloads.push((next, msg[at + 4..at + plen].to_vec()));
            next = head[0];
            at += plen;
            if next == 46 {
                break; // SK: the rest is encrypted
            }
        }
        Ok(ParsedIke {
            spi_i: msg[0..8].try_into().unwrap_or_default(),
            spi_r: msg[8..16].try_into().unwrap_or_default(),
            exchange: msg[18],
            flags: msg[19],
            message_id: u32::from_be_bytes([msg[20], msg[21], msg[22], msg[23]]),
            payloads,
        })
    }

    /// The Response flag.
    pub fn is_response(&self) -> bool {
        self.flags & 0x20 != 0
    }

    /// Payload types in order.
    pub fn payload_types(&self) -> Vec<u8> {
        self.payloads.iter().map(|p| p.0).collect()
    }

    /// Notify message types in order.
    pub fn notify_types(&self) -> Vec<u16> {
        self.payloads
            .iter()
            .filter(|p| p.0 == PT_NOTIFY && p.1.len() >= 4)
            .map(|p| u16::from_be_bytes([p.1[2], p.1[3]]))
            .collect()
    }

    /// The KE payload's group, if any.
    pub fn ke_group(&self) -> Option<u16> {
        self.payloads
            .iter()
            .find(|p| p.0 == PT_KE && p.1.len() >= 2)
            .map(|p| u16::from_be_bytes([p.1[0], p.1[1]]))
    }
}

/// An error response to an IKE_SA_INIT request (RFC 7296 2.21.1): the request's SPIi,
/// a zero SPIr, the Response flag, one Notify of `notify_type` with `data`.
pub fn error_response(request: &ParsedIke, notify_type: u16, data: &[u8]) -> Vec<u8> {
    let mut notify = vec![PT_NOTIFY_NONE, 0];
    notify.extend_from_slice(&(8 + data.len() as u16).to_be_bytes());
    notify.extend_from_slice(&[0, 0]);
    notify.extend_from_slice(&notify_type.to_be_bytes());
    notify.extend_from_slice(data);
    let mut msg = request.spi_i.to_vec();
    msg.extend_from_slice(&[0; 8]);
    msg.extend_from_slice(&[PT_NOTIFY, 0x20, request.exchange, 0x20]);
    msg.extend_from_slice(&request.message_id.to_be_bytes());
    msg.extend_from_slice(&(28 + notify.len() as u32).to_be_bytes());
    msg.extend_from_slice(&notify);
    msg
}

const PT_NOTIFY_NONE: u8 = 0;

/// Sends `request` to `to` and waits (bounded) for a reply carrying the same SPIi.
pub fn exchange(
    sock: &UdpSocket,
    to: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> Result<ParsedIke> {
    sock.send_to(request, to)
        .map_err(|e| HarnessError::io(format!("sending to {to}"), e))?;
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HarnessError::Timeout {
                what: format!("an IKE reply from {to}"),
                after: timeout,
            });
        }
        sock.set_read_timeout(Some(left))
            .map_err(|e| HarnessError::io("set_read_timeout", e))?;
        match sock.recv_from(&mut buf) {
            Ok((n, from)) if from == to && buf[..8] == request[..8] => {
                return ParsedIke::parse(&buf[..n]).map_err(HarnessError::Other);
            }
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(HarnessError::io("receiving", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_through_the_reader() {
        let req = SaInitRequest::aes256gcm_sha256_x25519();
        let wire = req.encode();
        let read = ParsedIke::parse(&wire).unwrap();
        assert_eq!(read.spi_i, req.spi_i);
        assert_eq!(read.spi_r, [0; 8]);
        assert_eq!(read.exchange, IKE_SA_INIT);
        assert!(!read.is_response());
        assert_eq!(read.payload_types(), [PT_SA, PT_KE, PT_NONCE, PT_NOTIFY]);
        assert_eq!(read.ke_group(), Some(31));
        assert_eq!(read.notify_types(), [16430]);
        // SA: proposal 1, IKE, 3 transforms; 8 + 12 + 8 + 8 octets.
        assert_eq!(read.payloads[0].1.len(), 36);
        assert_eq!(&read.payloads[0].1[4..8], &[1, 1, 0, 3]);
    }

    #[test]
    fn error_response_reads_back() {
        let req = ParsedIke::parse(&SaInitRequest::aes256gcm_sha256_x25519().encode()).unwrap();
        let resp = ParsedIke::parse(&error_response(&req, NO_PROPOSAL_CHOSEN, &[])).unwrap();
        assert!(resp.is_response());
        assert_eq!(resp.spi_i, req.spi_i);
        assert_eq!(resp.spi_r, [0; 8]);
        assert_eq!(resp.exchange, IKE_SA_INIT);
        assert_eq!(resp.notify_types(), [NO_PROPOSAL_CHOSEN]);
    }

    #[test]
    fn reader_rejects_truncation() {
        let wire = SaInitRequest::aes256gcm_sha256_x25519().encode();
        assert!(ParsedIke::parse(&wire[..wire.len() - 1]).is_err());
        assert!(ParsedIke::parse(&wire[..20]).is_err());
    }
}
