//! Protecting and unprotecting IKE messages: the SK payload (RFC 7296 3.14) and IKE
//! fragmentation with SKF payloads (RFC 7383).
//!
//! A message is sealed whole; when fragmentation was negotiated and the sealed message
//! would exceed the configured size, its inner payload chain is cut into pieces, each
//! sealed in its own SKF payload (RFC 7383 2.5). Received fragments are authenticated one
//! by one before they are kept (RFC 7383 2.6) and reassembled when all are in.

use crate::codec::Codec;
use crate::crypto::{CryptoError, Random, SkKey};
use crate::error::DecodeError;
use crate::registry::PayloadType;
use crate::wire::header::{HEADER_LEN, Header};
use crate::wire::message::{EncryptedKind, encrypted_layout};
use crate::wire::payload::{GENERIC_HEADER_LEN, Payload, decode_inner_chain, encode_inner};
use crate::wire::sk::SKF_FIELDS_LEN;

/// Most fragments we send or accept for one message (bounded input).
pub const MAX_FRAGMENTS: u16 = 64;
/// Largest reassembled plaintext we accept.
pub const MAX_REASSEMBLED: usize = 64 * 1024;

/// Why a received protected message was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnprotectError {
    /// Malformed outer structure, found before the message was authenticated: drop it.
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
    /// ICV/tag failure or bad padding: drop silently (RFC 7296 2.21.2 / 3.10.1).
    #[error("crypto: {0}")]
    Crypto(#[from] CryptoError),
    /// The message authenticated, but its decrypted payload chain is malformed or holds
    /// an unsupported critical payload. A request gets UNSUPPORTED_CRITICAL_PAYLOAD or
    /// INVALID_SYNTAX in response (RFC 7296 2.5, 2.21.2, 2.21.3).
    #[error("content: {0}")]
    Content(DecodeError),
}

/// Seals `inner` under `key` in an SK payload, or in SKF fragments when `fragment_size`
/// (the largest IKE message to send, in octets) is given and the whole message would be
/// larger. Returns the datagrams to send, in order.
pub fn seal(
    key: &SkKey,
    rng: &mut dyn Random,
    header: &Header,
    inner: &[Payload],
    fragment_size: Option<usize>,
) -> Result<Vec<Vec<u8>>, CryptoError> {
    let (first, plain) = encode_inner(inner);
    let whole = HEADER_LEN + GENERIC_HEADER_LEN + key.sealed_len(plain.len());
    match fragment_size {
        Some(limit) if whole > limit => seal_fragments(key, rng, header, first, &plain, limit),
        _ => Ok(vec![seal_one(
            key,
            rng,
            header,
            PayloadType::Sk,
            first,
            None,
            &plain,
        )?]),
    }
}

fn seal_one(
    key: &SkKey,
    rng: &mut dyn Random,
    header: &Header,
    ty: PayloadType,
    first_inner: PayloadType,
    fragment: Option<(u16, u16)>,
    plain: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut h = header.clone();
    h.next_payload = ty;
    let mut msg = Vec::with_capacity(HEADER_LEN + 8 + key.sealed_len(plain.len()));
    h.encode(&mut msg);
    let payload_at = msg.len();
    msg.push(first_inner.value());
    msg.push(0);
    msg.extend_from_slice(&[0, 0]);
    if let Some((number, total)) = fragment {
        msg.extend_from_slice(&number.to_be_bytes());
        msg.extend_from_slice(&total.to_be_bytes());
    }
    key.seal_append(rng, &mut msg, payload_at, plain)?;
    Ok(msg)
}

fn seal_fragments(
    key: &SkKey,
    rng: &mut dyn Random,
    header: &Header,
    first: PayloadType,
    plain: &[u8],
    limit: usize,
) -> Result<Vec<Vec<u8>>, CryptoError> {
    // RFC 7383 2.5: each fragment is a whole IKE message with one SKF payload.
    let prefix = HEADER_LEN + GENERIC_HEADER_LEN + SKF_FIELDS_LEN;
    let budget = limit.saturating_sub(prefix);
    let chunk = key.max_plaintext_len(budget);
    if chunk == 0 {
        return Err(CryptoError::InvalidLength {
            what: "fragment size",
            len: limit,
        });
    }
    let total = plain.len().div_ceil(chunk).max(1);
    let total = u16::try_from(total)
        .ok()
        .filter(|t| *t <= MAX_FRAGMENTS)
        .ok_or(CryptoError::InvalidLength {
            what: "fragment count",
            len: total,
        })?;
    let mut out = Vec::with_capacity(usize::from(total));
    for (i, piece) in plain.chunks(chunk).enumerate() {
        let number = i as u16 + 1;
        // RFC 7383 2.5: Next Payload names the first inner payload in fragment 1 only.
        let next = if number == 1 {
            first
        } else {
            PayloadType::NoNext
        };
        out.push(seal_one(
            key,
            rng,
            header,
            PayloadType::Skf,
            next,
            Some((number, total)),
            piece,
        )?);
    }
    Ok(out)
}

/// A received message, authenticated and decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub header: Header,
    pub payloads: Vec<Payload>,
    /// The first inner payload type (the SK header's Next Payload).
    pub first_inner: PayloadType,
    /// The SK (or first SKF) payload header octet (critical bit / RESERVED).
    pub header_octet: u8,
    /// The decrypted inner chain as received, for IntAuth (RFC 9242 3.3.2).
    pub plaintext: Vec<u8>,
    /// The header plus the unencrypted payloads before SK, for IntAuth's A chunk.
    pub prefix: Vec<u8>,
}

/// Collects the fragments of one message (RFC 7383 2.6).
#[derive(Debug)]
pub struct Reassembly {
    message_id: Option<u32>,
    total: u16,
    parts: Vec<Option<Vec<u8>>>,
    first_inner: PayloadType,
    header_octet: u8,
    prefix: Vec<u8>,
    size: usize,
}

impl Default for Reassembly {
    fn default() -> Self {
        Self {
            message_id: None,
            total: 0,
            parts: Vec::new(),
            first_inner: PayloadType::NoNext,
            header_octet: 0,
            prefix: Vec::new(),
            size: 0,
        }
    }
}

impl Reassembly {
    /// Forgets any partial message.
    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

/// Authenticates and decrypts one received datagram (already stripped of any non-ESP
/// marker). Returns `Ok(None)` for a fragment that does not complete its message yet.
pub fn open(
    key: &SkKey,
    datagram: &[u8],
    reassembly: &mut Reassembly,
) -> Result<Option<Opened>, UnprotectError> {
    let layout = encrypted_layout(datagram)?;
    let header = Header::read_datagram(datagram)?;
    let header_octet = datagram.get(layout.payload_start + 1).copied().unwrap_or(0);
    let mut buf = datagram.to_vec();
    let (aad, body) = layout.split_mut(&mut buf)?;
    let plain = key.open_body(aad, body)?.to_vec();
    let prefix = datagram
        .get(..layout.payload_start)
        .unwrap_or_default()
        .to_vec();
    match layout.kind {
        EncryptedKind::Sk => {
            let payloads =
                decode_inner_chain(layout.first_inner, &plain).map_err(UnprotectError::Content)?;
            Ok(Some(Opened {
                header,
                payloads,
                first_inner: layout.first_inner,
                header_octet,
                plaintext: plain,
                prefix,
            }))
        }
        EncryptedKind::Skf { number, total } => {
            if total > MAX_FRAGMENTS {
                return Err(DecodeError::TooMany("fragments").into());
            }
            let r = reassembly;
            if r.message_id == Some(header.message_id) && total < r.total {
                // RFC 7383 2.6: once reassembling has started, a fragment with a smaller
                // Total Fragments "MUST be silently discarded"; the queue is kept.
                return Err(DecodeError::InvalidValue {
                    what: "SKF Total Fragments below the reassembly's",
                    value: total.into(),
                }
                .into());
            }
            if r.message_id != Some(header.message_id) || r.total != total {
                // A new message, or a greater Total Fragments (RFC 7383 2.6: "discard all
                // received fragments and start the reassembly process over").
                r.clear();
                r.message_id = Some(header.message_id);
                r.total = total;
                r.parts = vec![None; usize::from(total)];
            }
            let slot =
                r.parts
                    .get_mut(usize::from(number) - 1)
                    .ok_or(DecodeError::InvalidValue {
                        what: "SKF Fragment Number",
                        value: number.into(),
                    })?;
            if slot.is_some() {
                return Ok(None); // duplicate
            }
            r.size += plain.len();
            if r.size > MAX_REASSEMBLED {
                r.clear();
                return Err(DecodeError::TooMany("reassembled octets").into());
            }
            if number == 1 {
                r.first_inner = layout.first_inner;
                r.header_octet = header_octet;
                r.prefix = prefix;
            }
            *slot = Some(plain);
            if r.parts.iter().any(Option::is_none) {
                return Ok(None);
            }
            let mut whole = Vec::with_capacity(r.size);
            for p in r.parts.iter().flatten() {
                whole.extend_from_slice(p);
            }
            let first_inner = r.first_inner;
            let header_octet = r.header_octet;
            let prefix = std::mem::take(&mut r.prefix);
            r.clear();
            let payloads =
                decode_inner_chain(first_inner, &whole).map_err(UnprotectError::Content)?;
            Ok(Some(Opened {
                header,
                payloads,
                first_inner,
                header_octet,
                plaintext: whole,
                prefix,
            }))
        }
    }
}

impl Opened {
    /// The A chunk of RFC 9242 3.3.2 for this message: the unencrypted prefix followed by
    /// the (reassembled) SK payload header. Lengths are adjusted by `IntAuth::absorb`.
    pub fn int_auth_a(&self) -> Vec<u8> {
        let mut a = self.prefix.clone();
        // For a reassembled message the prefix ends before the SKF header; either way the
        // header's Next Payload must name SK for the reconstructed message.
        if self.prefix.len() == HEADER_LEN
            && let Some(np) = a.get_mut(16)
        {
            *np = PayloadType::Sk.value();
        }
        a.extend_from_slice(&[self.first_inner.value(), self.header_octet, 0, 0]);
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{EncrAlg, SeededRandom};
    use crate::registry::{ExchangeType, NotifyType};
    use crate::wire::header::Flags;
    use crate::wire::notify::NotifyPayload;

    fn key() -> SkKey {
        SkKey::new(EncrAlg::AesGcm16 { key_len: 32 }, None, &[7u8; 36], &[]).unwrap()
    }

    fn inner(n: usize) -> Vec<Payload> {
        (0..n)
            .map(|i| {
                Payload::Notify(NotifyPayload::new(
                    NotifyType::from(40000 + i as u16),
                    vec![i as u8; 100],
                ))
            })
            .collect()
    }

    fn header() -> Header {
        Header::new(
            [1; 8],
            [2; 8],
            ExchangeType::GsaAuth,
            Flags::new(true, false),
            1,
        )
    }

    #[test]
    fn sk_round_trip() {
        let k = key();
        let mut rng = SeededRandom::from_u64(1);
        let msgs = seal(&k, &mut rng, &header(), &inner(3), Some(1280)).unwrap();
        assert_eq!(msgs.len(), 1);
        let mut r = Reassembly::default();
        let o = open(&k, &msgs[0], &mut r).unwrap().unwrap();
        assert_eq!(o.payloads, inner(3));
        assert_eq!(o.header.message_id, 1);
    }

    #[test]
    fn fragments_reassemble_in_any_order_and_ignore_duplicates() {
        let k = key();
        let mut rng = SeededRandom::from_u64(2);
        let msgs = seal(&k, &mut rng, &header(), &inner(20), Some(576)).unwrap();
        assert!(msgs.len() > 3, "{}", msgs.len());
        assert!(msgs.iter().all(|m| m.len() <= 576));
        let mut r = Reassembly::default();
        let mut done = None;
        // Reverse order, every fragment twice: the duplicate of a fragment already held is
        // ignored and the message completes exactly once, with the last new fragment.
        for m in msgs.iter().rev().flat_map(|m| [m, m]) {
            if let Some(o) = open(&k, m, &mut r).unwrap() {
                assert!(done.is_none(), "completed twice");
                done = Some(o);
            }
        }
        assert_eq!(done.unwrap().payloads, inner(20));
    }

    /// RFC 7383 2.6: a greater Total Fragments starts the reassembly over with that
    /// fragment; a smaller one, once reassembling has started, is silently discarded and
    /// leaves the queue as it was.
    #[test]
    fn total_fragments_greater_restarts_smaller_is_discarded() {
        let k = key();
        let mut rng = SeededRandom::from_u64(4);
        let few = seal(&k, &mut rng, &header(), &inner(20), Some(900)).unwrap();
        let many = seal(&k, &mut rng, &header(), &inner(20), Some(500)).unwrap();
        assert!(many.len() > few.len() && few.len() > 1);
        let mut r = Reassembly::default();
        // A fragment of the 'few' form, then one of the 'many' form: start over.
        assert_eq!(open(&k, &few[0], &mut r), Ok(None));
        assert_eq!(open(&k, &many[0], &mut r), Ok(None));
        // The 'few' form again: smaller than the queue's Total Fragments, discarded.
        for f in &few {
            assert!(matches!(
                open(&k, f, &mut r),
                Err(UnprotectError::Decode(DecodeError::InvalidValue { .. }))
            ));
        }
        // The queue still holds many[0]: the rest completes the message.
        let mut done = None;
        for f in &many[1..] {
            if let Some(o) = open(&k, f, &mut r).unwrap() {
                done = Some(o);
            }
        }
        assert_eq!(done.expect("complete").payloads, inner(20));
    }

    #[test]
    fn tampered_fragment_is_rejected_before_it_is_kept() {
        let k = key();
        let mut rng = SeededRandom::from_u64(3);
        let mut msgs = seal(&k, &mut rng, &header(), &inner(20), Some(576)).unwrap();
        let last = msgs[1].len() - 1;
        msgs[1][last] ^= 1;
        let mut r = Reassembly::default();
        assert!(matches!(
            open(&k, &msgs[1], &mut r),
            Err(UnprotectError::Crypto(_))
        ));
        assert!(r.parts.iter().all(Option::is_none));
    }
}
