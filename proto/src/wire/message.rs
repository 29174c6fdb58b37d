//! Whole IKE messages: the header and the outer payload chain (RFC 7296 3.1), plus the
//! byte ranges the crypto layer needs to protect an SK or SKF payload in place
//! (RFC 5282 5.1; RFC 7296 3.14; RFC 7383 2.5).
//!
//! Sending an encrypted message:
//! 1. `let (first, plain) = payload::encode_inner(&inner)`;
//! 2. build a [`Message`] whose last payload is `Payload::Sk(EncryptedPayload::new(first,
//!    vec![0; sealed_len]))`, `sealed_len` being IV + ciphertext (with padding) + ICV;
//! 3. `let mut bytes = msg.encode()`, then [`EncryptedLayout::split_mut`] gives the
//!    associated data and the body to fill with IV | ciphertext | ICV.
//!
//! Receiving: [`Message::decode`] (or just [`encrypted_layout`]), decrypt the body with
//! the associated data, then [`crate::wire::payload::decode_inner_chain`] from
//! `first_inner`.

use core::ops::Range;

use crate::codec::{Codec, Reader};
use crate::error::DecodeError;
use crate::registry::{NotifyType, PayloadType};
use crate::wire::header::{HEADER_LEN, Header};
use crate::wire::notify::NotifyPayload;
use crate::wire::payload::{
    GENERIC_HEADER_LEN, Payload, PayloadsExt, decode_chain, encode_chain, first_type,
};
use crate::wire::sk::SKF_FIELDS_LEN;

/// An IKE message: header and outer payloads. For encrypted messages the last payload is
/// an SK or SKF whose content stays opaque here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub payloads: Vec<Payload>,
}

impl Message {
    pub fn new(header: Header, payloads: Vec<Payload>) -> Self {
        Self { header, payloads }
    }

    /// Encodes the message, setting the header's Next Payload and Length from the
    /// payloads (RFC 7296 3.1). `self.header` is left untouched.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut header = self.header.clone();
        header.next_payload = first_type(&self.payloads);
        header.encode(&mut out);
        encode_chain(&self.payloads, &mut out);
        let len = out.len();
        debug_assert!(u32::try_from(len).is_ok(), "IKE message too large");
        out[24..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        out
    }

    /// Decodes a whole datagram (without the port-4500 non-ESP marker). The header's
    /// Length must equal the datagram length, and the payload chain must fill it exactly.
    pub fn decode(datagram: &[u8]) -> Result<Self, DecodeError> {
        let header = Header::read_datagram(datagram)?;
        let payloads = decode_chain(
            header.next_payload,
            datagram.get(HEADER_LEN..).unwrap_or_default(),
        )?;
        Ok(Self { header, payloads })
    }

    pub fn is_response(&self) -> bool {
        self.header.flags.is_response()
    }

    pub fn notifies(&self) -> impl Iterator<Item = &NotifyPayload> {
        self.payloads.notifies()
    }

    pub fn notify(&self, ty: NotifyType) -> Option<&NotifyPayload> {
        self.payloads.notify(ty)
    }

    pub fn find(&self, ty: PayloadType) -> Option<&Payload> {
        self.payloads.find(ty)
    }

    /// True when the message carries an SK or SKF payload.
    pub fn is_encrypted(&self) -> bool {
        self.payloads.last().is_some_and(Payload::is_encrypted)
    }
}

impl PayloadsExt for Message {
    fn all(&self) -> &[Payload] {
        &self.payloads
    }
}

/// Which encrypted payload ends the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncryptedKind {
    /// SK (RFC 7296 3.14).
    Sk,
    /// SKF with its Fragment Number and Total Fragments (RFC 7383 2.5).
    Skf { number: u16, total: u16 },
}

/// Where the protected parts of an encoded message are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedLayout {
    pub kind: EncryptedKind,
    /// The Next Payload field of the SK/SKF header: the first inner payload type (zero in
    /// SKF fragments after the first).
    pub first_inner: PayloadType,
    /// Offset of the SK/SKF generic payload header.
    pub payload_start: usize,
    /// The associated data: from the first octet of the IKE header through the end of the
    /// SK payload header (RFC 5282 5.1), including any payloads before it. For SKF it also
    /// covers Fragment Number and Total Fragments, everything before the IV, which is how
    /// strongSwan and libreswan read "identical to ... Section 3.14" (RFC 7383 2.5).
    /// For non-AEAD ciphers the ICV covers this range plus the body without its ICV
    /// (RFC 7296 3.14).
    pub aad: Range<usize>,
    /// IV | ciphertext (inner payloads, padding, pad length) | ICV: the rest of the message.
    pub body: Range<usize>,
}

impl EncryptedLayout {
    /// Splits an encoded message into the associated data and the mutable body, for
    /// encrypting in place.
    pub fn split_mut<'a>(
        &self,
        message: &'a mut [u8],
    ) -> Result<(&'a [u8], &'a mut [u8]), DecodeError> {
        if message.len() != self.body.end {
            return Err(DecodeError::InvalidLength {
                what: "message for this layout",
                len: message.len(),
            });
        }
        let (aad, body) = message.split_at_mut(self.body.start);
        Ok((aad, body))
    }
}

/// Finds the SK or SKF payload of an encoded message (without the non-ESP marker) and
/// returns the ranges the crypto layer authenticates and decrypts. Checks the header
/// Length against `message.len()` and walks the outer chain's generic headers without
/// decoding bodies; the SK/SKF must be last (RFC 7296 3.14; RFC 7383 2.5).
pub fn encrypted_layout(message: &[u8]) -> Result<EncryptedLayout, DecodeError> {
    let header = Header::read_datagram(message)?;
    let mut r = Reader::new(message);
    r.take(HEADER_LEN, "IKE header")?;
    let mut ty = header.next_payload;
    for _ in 0..crate::wire::payload::MAX_PAYLOADS {
        if ty == PayloadType::NoNext {
            return Err(DecodeError::Missing("Encrypted payload"));
        }
        let payload_start = r.position();
        let next = PayloadType::read(&mut r)?;
        let _octet = r.u8("payload critical/RESERVED")?;
        let len = r.u16("Payload Length")? as usize;
        if len < GENERIC_HEADER_LEN {
            return Err(DecodeError::InvalidLength {
                what: "payload",
                len,
            });
        }
        let mut body = r.sub(len - GENERIC_HEADER_LEN, "payload body")?;
        let kind = match ty {
            PayloadType::Sk => EncryptedKind::Sk,
            PayloadType::Skf => {
                let number = body.u16("SKF Fragment Number")?;
                let total = body.u16("SKF Total Fragments")?;
                // Validated by the same rule as the decoder (RFC 7383 2.6).
                crate::wire::sk::EncryptedFragment::new(next, number, total, Vec::new())?;
                EncryptedKind::Skf { number, total }
            }
            _ => {
                ty = next;
                continue;
            }
        };
        r.expect_empty("Encrypted payload (must be last)")?;
        let iv_start = payload_start
            + GENERIC_HEADER_LEN
            + if ty == PayloadType::Skf {
                SKF_FIELDS_LEN
            } else {
                0
            };
        return Ok(EncryptedLayout {
            kind,
            first_inner: next,
            payload_start,
            aad: 0..iv_start,
            body: iv_start..message.len(),
        });
    }
    Err(DecodeError::TooMany("payloads"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{ExchangeType, KeId};
    use crate::wire::header::Flags;
    use crate::wire::ke::KePayload;
    use crate::wire::nonce::NoncePayload;
    use crate::wire::sk::{EncryptedFragment, EncryptedPayload};

    fn header(ex: ExchangeType) -> Header {
        Header::new([1; 8], [2; 8], ex, Flags::new(true, false), 1)
    }

    #[test]
    fn encode_sets_length_and_next_payload() {
        let m = Message::new(
            header(ExchangeType::IkeSaInit),
            vec![
                Payload::Ke(KePayload::new(KeId::Curve25519, vec![3; 32])),
                Payload::Nonce(NoncePayload::new(vec![4; 32]).unwrap()),
            ],
        );
        let b = m.encode();
        assert_eq!(b.len(), 28 + 40 + 36);
        assert_eq!(b[16], 34);
        assert_eq!(&b[24..28], &(b.len() as u32).to_be_bytes());
        let back = Message::decode(&b).unwrap();
        assert_eq!(back.payloads, m.payloads);
        assert_eq!(back.header.length as usize, b.len());
        assert_eq!(back.encode(), b);
        // Datagram longer or shorter than the Length field.
        let mut longer = b.clone();
        longer.push(0);
        assert!(Message::decode(&longer).is_err());
        assert!(Message::decode(&b[..b.len() - 1]).is_err());
    }

    #[test]
    fn sk_layout_and_in_place_sealing() {
        let inner_first = PayloadType::IdG;
        let m = Message::new(
            header(ExchangeType::GsaRegistration),
            vec![Payload::Sk(EncryptedPayload::new(inner_first, vec![0; 48]))],
        );
        let mut b = m.encode();
        let layout = encrypted_layout(&b).unwrap();
        assert_eq!(layout.kind, EncryptedKind::Sk);
        assert_eq!(layout.first_inner, inner_first);
        assert_eq!(layout.payload_start, 28);
        assert_eq!(layout.aad, 0..32);
        assert_eq!(layout.body, 32..80);
        let (aad, body) = layout.split_mut(&mut b).unwrap();
        assert_eq!(aad.len(), 32);
        assert_eq!(&aad[28..32], &[50, 0, 0, 52]);
        body.fill(0xab);
        let back = Message::decode(&b).unwrap();
        assert_eq!(back.sk().unwrap().data, vec![0xab; 48]);
        assert!(back.is_encrypted());
        assert!(layout.split_mut(&mut b[..79]).is_err());
    }

    #[test]
    fn skf_layout_covers_fragment_fields() {
        let m = Message::new(
            header(ExchangeType::GsaRekey),
            vec![Payload::Skf(
                EncryptedFragment::new(PayloadType::Gsa, 1, 2, vec![0; 20]).unwrap(),
            )],
        );
        let b = m.encode();
        let layout = encrypted_layout(&b).unwrap();
        assert_eq!(
            layout.kind,
            EncryptedKind::Skf {
                number: 1,
                total: 2
            }
        );
        assert_eq!(layout.aad, 0..36);
        assert_eq!(layout.body, 36..56);
        // Invalid fragment numbers are refused here too.
        let mut bad = b.clone();
        bad[33] = 3;
        assert!(encrypted_layout(&bad).is_err());
    }

    #[test]
    fn layout_requires_an_encrypted_payload() {
        let plain = Message::new(
            header(ExchangeType::Informational),
            vec![Payload::Notify(NotifyPayload::use_transport_mode())],
        )
        .encode();
        assert_eq!(
            encrypted_layout(&plain),
            Err(DecodeError::Missing("Encrypted payload"))
        );
        assert!(encrypted_layout(&[0; 10]).is_err());
    }
}
