//! IKEv2 payloads and payload chains: the generic payload header (RFC 7296 3.2), one
//! [`Payload`] variant per payload type this implementation understands (STYLE R3), and
//! the chain encoder/decoder that links them through their Next Payload fields.
//!
//! The same decoder reads the outer chain of a message ([`decode_chain`]) and the
//! decrypted content of an SK payload ([`decode_inner_chain`]), which starts from the
//! type named in the SK header (RFC 7296 3.14).

use crate::codec::{Codec, Reader, with_length};
use crate::error::DecodeError;
use crate::registry::{NotifyType, PayloadType};
use crate::wire::auth::AuthPayload;
use crate::wire::cert::{CertPayload, CertReqPayload};
use crate::wire::delete::DeletePayload;
use crate::wire::gsa::GsaPayload;
use crate::wire::id::IdPayload;
use crate::wire::kd::KdPayload;
use crate::wire::ke::KePayload;
use crate::wire::nonce::NoncePayload;
use crate::wire::notify::NotifyPayload;
use crate::wire::sa::SaPayload;
use crate::wire::sk::{EncryptedFragment, EncryptedPayload};
use crate::wire::tsp::TsPayload;
use crate::wire::vendor::VendorIdPayload;

/// Length of the generic payload header (RFC 7296 3.2, Figure 5).
pub const GENERIC_HEADER_LEN: usize = 4;
/// At most this many payloads in one chain (bounded input).
pub const MAX_PAYLOADS: usize = 64;
/// At most this many Notify payloads in one chain (bounded input; strongSwan caps
/// notifies the same way).
pub const MAX_NOTIFY_PAYLOADS: usize = 32;
/// The critical bit in the second octet of the generic payload header (RFC 7296 3.2).
pub const CRITICAL: u8 = 0x80;

/// One payload, body decoded. Payload types without a variant (CP, EAP, future ones)
/// are kept as [`Payload::Unknown`] when their critical bit is clear and are skipped by
/// consumers; with the critical bit set they make the chain fail with
/// [`DecodeError::UnsupportedCriticalPayload`] (RFC 7296 2.5, 3.2).
///
/// The critical bit of understood payloads "MUST be ignored by the recipient" (RFC 7296
/// 3.2), so it is not kept; the encoder sends it as zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// SA, or SAg in G-IKEv2 registration requests (same type 33, RFC 9838 4.3).
    Sa(SaPayload),
    Ke(KePayload),
    IdI(IdPayload),
    IdR(IdPayload),
    /// Group Identification (RFC 9838 4.2).
    IdG(IdPayload),
    Cert(CertPayload),
    CertReq(CertReqPayload),
    Auth(AuthPayload),
    Nonce(NoncePayload),
    Notify(NotifyPayload),
    Delete(DeletePayload),
    VendorId(VendorIdPayload),
    TsI(TsPayload),
    TsR(TsPayload),
    /// Encrypted payload; must be last in its chain (RFC 7296 3.14).
    Sk(EncryptedPayload),
    /// Encrypted Fragment payload; must be last in its chain (RFC 7383 2.5).
    Skf(EncryptedFragment),
    Gsa(GsaPayload),
    Kd(KdPayload),
    /// A payload type without a variant whose critical bit was clear.
    Unknown {
        ty: PayloadType,
        critical: bool,
        body: Vec<u8>,
    },
}

impl Payload {
    /// The payload type, as written in the preceding Next Payload field.
    pub fn ty(&self) -> PayloadType {
        match self {
            Self::Sa(_) => PayloadType::Sa,
            Self::Ke(_) => PayloadType::Ke,
            Self::IdI(_) => PayloadType::IdI,
            Self::IdR(_) => PayloadType::IdR,
            Self::IdG(_) => PayloadType::IdG,
            Self::Cert(_) => PayloadType::Cert,
            Self::CertReq(_) => PayloadType::CertReq,
            Self::Auth(_) => PayloadType::Auth,
            Self::Nonce(_) => PayloadType::Nonce,
            Self::Notify(_) => PayloadType::Notify,
            Self::Delete(_) => PayloadType::Delete,
            Self::VendorId(_) => PayloadType::VendorId,
            Self::TsI(_) => PayloadType::TsI,
            Self::TsR(_) => PayloadType::TsR,
            Self::Sk(_) => PayloadType::Sk,
            Self::Skf(_) => PayloadType::Skf,
            Self::Gsa(_) => PayloadType::Gsa,
            Self::Kd(_) => PayloadType::Kd,
            Self::Unknown { ty, .. } => *ty,
        }
    }

    /// True for SK and SKF, which end a chain.
    pub fn is_encrypted(&self) -> bool {
        matches!(self, Self::Sk(_) | Self::Skf(_))
    }

    /// True for payload types this implementation does not understand.
    pub fn is_unknown(&self) -> bool {
        matches!(self, Self::Unknown { .. })
    }

    /// The second octet of the generic header: critical bit and RESERVED.
    fn header_octet(&self) -> u8 {
        match self {
            Self::Sk(sk) => sk.header_octet,
            Self::Skf(skf) => skf.header_octet,
            Self::Unknown { critical: true, .. } => CRITICAL,
            _ => 0,
        }
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Self::Sa(p) => p.encode(out),
            Self::Ke(p) => p.encode(out),
            Self::IdI(p) | Self::IdR(p) | Self::IdG(p) => p.encode(out),
            Self::Cert(p) => p.encode(out),
            Self::CertReq(p) => p.encode(out),
            Self::Auth(p) => p.encode(out),
            Self::Nonce(p) => p.encode(out),
            Self::Notify(p) => p.encode(out),
            Self::Delete(p) => p.encode(out),
            Self::VendorId(p) => p.encode(out),
            Self::TsI(p) | Self::TsR(p) => p.encode(out),
            Self::Sk(p) => p.encode(out),
            Self::Skf(p) => p.encode(out),
            Self::Gsa(p) => p.encode(out),
            Self::Kd(p) => p.encode(out),
            Self::Unknown { body, .. } => out.extend_from_slice(body),
        }
    }

    /// Decodes one body of type `ty`. `next` and `octet` are the Next Payload field and
    /// the critical/RESERVED octet of its generic header.
    fn read_body(
        ty: PayloadType,
        next: PayloadType,
        octet: u8,
        body: &[u8],
    ) -> Result<Self, DecodeError> {
        Ok(match ty {
            PayloadType::Sa => Self::Sa(SaPayload::read_bytes(body)?),
            PayloadType::Ke => Self::Ke(KePayload::read_bytes(body)?),
            PayloadType::IdI => Self::IdI(IdPayload::read_bytes(body)?),
            PayloadType::IdR => Self::IdR(IdPayload::read_bytes(body)?),
            PayloadType::IdG => Self::IdG(IdPayload::read_bytes(body)?),
            PayloadType::Cert => Self::Cert(CertPayload::read_bytes(body)?),
            PayloadType::CertReq => Self::CertReq(CertReqPayload::read_bytes(body)?),
            PayloadType::Auth => Self::Auth(AuthPayload::read_bytes(body)?),
            PayloadType::Nonce => Self::Nonce(NoncePayload::read_bytes(body)?),
            PayloadType::Notify => Self::Notify(NotifyPayload::read_bytes(body)?),
            PayloadType::Delete => Self::Delete(DeletePayload::read_bytes(body)?),
            PayloadType::VendorId => Self::VendorId(VendorIdPayload::read_bytes(body)?),
            PayloadType::TsI => Self::TsI(TsPayload::read_bytes(body)?),
            PayloadType::TsR => Self::TsR(TsPayload::read_bytes(body)?),
            PayloadType::Sk => {
                let mut sk = EncryptedPayload::read_bytes(body)?;
                sk.first_inner = next;
                sk.header_octet = octet;
                Self::Sk(sk)
            }
            PayloadType::Skf => {
                let mut skf = EncryptedFragment::read_bytes(body)?;
                skf.first_inner = next;
                skf.header_octet = octet;
                Self::Skf(skf)
            }
            PayloadType::Gsa => Self::Gsa(GsaPayload::read_bytes(body)?),
            PayloadType::Kd => Self::Kd(KdPayload::read_bytes(body)?),
            // RFC 7296 2.5: an unrecognized payload with the critical bit set rejects the
            // whole message; without it, the payload is skipped.
            other if octet & CRITICAL != 0 => {
                return Err(DecodeError::UnsupportedCriticalPayload(other.value()));
            }
            other => Self::Unknown {
                ty: other,
                critical: false,
                body: body.to_vec(),
            },
        })
    }
}

/// The type of the first payload of a chain (the IKE header's or SK header's Next
/// Payload), `NoNext` for an empty chain.
pub fn first_type(payloads: &[Payload]) -> PayloadType {
    payloads.first().map_or(PayloadType::NoNext, Payload::ty)
}

/// Appends a chain, linking each payload to the next through its Next Payload field;
/// the last one gets 0, except SK/SKF whose field names their first inner payload
/// (RFC 7296 3.2, 3.14; RFC 7383 2.5). An SK/SKF anywhere but last is a bug in the
/// caller (`debug_assert`).
pub fn encode_chain(payloads: &[Payload], out: &mut Vec<u8>) {
    for (i, p) in payloads.iter().enumerate() {
        let next = match p {
            Payload::Sk(sk) => {
                debug_assert!(i + 1 == payloads.len(), "SK must be the last payload");
                sk.first_inner
            }
            Payload::Skf(skf) => {
                debug_assert!(i + 1 == payloads.len(), "SKF must be the last payload");
                skf.first_inner
            }
            _ => payloads.get(i + 1).map_or(PayloadType::NoNext, Payload::ty),
        };
        let start = out.len();
        out.push(next.value());
        out.push(p.header_octet());
        out.extend_from_slice(&[0, 0]);
        with_length::<2>(out, start + 2, start, |out| p.encode_body(out));
    }
}

/// Encodes an inner chain (the plaintext of an SK payload) and returns it with the type
/// of its first payload, which goes into the SK header.
pub fn encode_inner(payloads: &[Payload]) -> (PayloadType, Vec<u8>) {
    let mut out = Vec::new();
    encode_chain(payloads, &mut out);
    (first_type(payloads), out)
}

/// Where a chain sits: the outer chain may end with SK/SKF, an inner one may not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChainKind {
    Outer,
    Inner,
}

/// Decodes the outer chain of a message: `bytes` is everything after the IKE header and
/// `first` is the header's Next Payload. An SK or SKF payload ends the chain and must end
/// the message (RFC 7296 3.14; RFC 7383 2.5); its Next Payload is kept as `first_inner`.
pub fn decode_chain(first: PayloadType, bytes: &[u8]) -> Result<Vec<Payload>, DecodeError> {
    decode(first, bytes, ChainKind::Outer)
}

/// Decodes the decrypted content of an SK payload (or of reassembled SKF payloads),
/// starting with the type named in the SK header. An Encrypted payload MUST NOT contain
/// another one (RFC 7296 3.1).
pub fn decode_inner_chain(
    first: PayloadType,
    plaintext: &[u8],
) -> Result<Vec<Payload>, DecodeError> {
    decode(first, plaintext, ChainKind::Inner)
}

fn decode(first: PayloadType, bytes: &[u8], kind: ChainKind) -> Result<Vec<Payload>, DecodeError> {
    let mut r = Reader::new(bytes);
    let mut payloads = Vec::new();
    let mut notifies = 0usize;
    let mut ty = first;
    while ty != PayloadType::NoNext {
        if payloads.len() == MAX_PAYLOADS {
            return Err(DecodeError::TooMany("payloads"));
        }
        let next = PayloadType::read(&mut r)?;
        let octet = r.u8("payload critical/RESERVED")?;
        let len = r.u16("Payload Length")? as usize;
        if len < GENERIC_HEADER_LEN {
            return Err(DecodeError::InvalidLength {
                what: "payload",
                len,
            });
        }
        let body = r.take(len - GENERIC_HEADER_LEN, "payload body")?;
        let p = Payload::read_body(ty, next, octet, body)?;
        if let Payload::Notify(_) = p {
            notifies += 1;
            if notifies > MAX_NOTIFY_PAYLOADS {
                return Err(DecodeError::TooMany("notify payloads"));
            }
        }
        if p.is_encrypted() {
            if kind == ChainKind::Inner {
                // RFC 7296 3.1: "an Encrypted payload MUST NOT contain another Encrypted
                // payload".
                return Err(DecodeError::InvalidValue {
                    what: "Encrypted payload inside an Encrypted payload",
                    value: ty.value().into(),
                });
            }
            payloads.push(p);
            // RFC 7296 3.14 / RFC 7383 2.5: SK and SKF MUST be the last payload.
            r.expect_empty("Encrypted payload (must be last)")?;
            return Ok(payloads);
        }
        payloads.push(p);
        ty = next;
    }
    r.expect_empty("payload chain")?;
    Ok(payloads)
}

/// Finders over a decoded chain (outer or inner). Unknown payloads are skipped by the
/// typed finders.
pub trait PayloadsExt {
    fn all(&self) -> &[Payload];

    /// The first payload of type `ty`.
    fn find(&self, ty: PayloadType) -> Option<&Payload> {
        self.all().iter().find(|p| p.ty() == ty)
    }

    /// How many payloads of type `ty` the chain holds.
    fn count_of(&self, ty: PayloadType) -> usize {
        self.all().iter().filter(|p| p.ty() == ty).count()
    }

    fn notifies(&self) -> impl Iterator<Item = &NotifyPayload> {
        self.all().iter().filter_map(|p| match p {
            Payload::Notify(n) => Some(n),
            _ => None,
        })
    }

    /// The first notify of type `ty`.
    fn notify(&self, ty: NotifyType) -> Option<&NotifyPayload> {
        self.notifies().find(|n| n.ty == ty)
    }

    fn has_notify(&self, ty: NotifyType) -> bool {
        self.notify(ty).is_some()
    }

    /// The first error notify (type below 16384, RFC 7296 3.10.1).
    fn error_notify(&self) -> Option<&NotifyPayload> {
        self.notifies().find(|n| n.is_error())
    }

    fn deletes(&self) -> impl Iterator<Item = &DeletePayload> {
        self.all().iter().filter_map(|p| match p {
            Payload::Delete(d) => Some(d),
            _ => None,
        })
    }

    fn certs(&self) -> impl Iterator<Item = &CertPayload> {
        self.all().iter().filter_map(|p| match p {
            Payload::Cert(c) => Some(c),
            _ => None,
        })
    }

    fn cert_reqs(&self) -> impl Iterator<Item = &CertReqPayload> {
        self.all().iter().filter_map(|p| match p {
            Payload::CertReq(c) => Some(c),
            _ => None,
        })
    }

    fn vendor_ids(&self) -> impl Iterator<Item = &VendorIdPayload> {
        self.all().iter().filter_map(|p| match p {
            Payload::VendorId(v) => Some(v),
            _ => None,
        })
    }

    fn sa(&self) -> Option<&SaPayload> {
        self.all().iter().find_map(|p| match p {
            Payload::Sa(x) => Some(x),
            _ => None,
        })
    }

    fn ke(&self) -> Option<&KePayload> {
        self.all().iter().find_map(|p| match p {
            Payload::Ke(x) => Some(x),
            _ => None,
        })
    }

    fn nonce(&self) -> Option<&NoncePayload> {
        self.all().iter().find_map(|p| match p {
            Payload::Nonce(x) => Some(x),
            _ => None,
        })
    }

    fn id_i(&self) -> Option<&IdPayload> {
        self.all().iter().find_map(|p| match p {
            Payload::IdI(x) => Some(x),
            _ => None,
        })
    }

    fn id_r(&self) -> Option<&IdPayload> {
        self.all().iter().find_map(|p| match p {
            Payload::IdR(x) => Some(x),
            _ => None,
        })
    }

    fn id_g(&self) -> Option<&IdPayload> {
        self.all().iter().find_map(|p| match p {
            Payload::IdG(x) => Some(x),
            _ => None,
        })
    }

    fn auth(&self) -> Option<&AuthPayload> {
        self.all().iter().find_map(|p| match p {
            Payload::Auth(x) => Some(x),
            _ => None,
        })
    }

    fn ts_i(&self) -> Option<&TsPayload> {
        self.all().iter().find_map(|p| match p {
            Payload::TsI(x) => Some(x),
            _ => None,
        })
    }

    fn ts_r(&self) -> Option<&TsPayload> {
        self.all().iter().find_map(|p| match p {
            Payload::TsR(x) => Some(x),
            _ => None,
        })
    }

    fn gsa(&self) -> Option<&GsaPayload> {
        self.all().iter().find_map(|p| match p {
            Payload::Gsa(x) => Some(x),
            _ => None,
        })
    }

    fn kd(&self) -> Option<&KdPayload> {
        self.all().iter().find_map(|p| match p {
            Payload::Kd(x) => Some(x),
            _ => None,
        })
    }

    /// The SK payload, if the chain ends with one.
    fn sk(&self) -> Option<&EncryptedPayload> {
        match self.all().last() {
            Some(Payload::Sk(x)) => Some(x),
            _ => None,
        }
    }

    /// The SKF payload, if the chain ends with one.
    fn skf(&self) -> Option<&EncryptedFragment> {
        match self.all().last() {
            Some(Payload::Skf(x)) => Some(x),
            _ => None,
        }
    }
}

impl PayloadsExt for [Payload] {
    fn all(&self) -> &[Payload] {
        self
    }
}

impl PayloadsExt for Vec<Payload> {
    fn all(&self) -> &[Payload] {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::KeId;

    fn nonce() -> Payload {
        Payload::Nonce(NoncePayload::new(vec![0x11; 32]).unwrap())
    }

    fn chain_bytes(p: &[Payload]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_chain(p, &mut out);
        out
    }

    #[test]
    fn next_payload_links_and_lengths() {
        let chain = vec![
            Payload::Ke(KePayload::new(KeId::Curve25519, vec![1; 32])),
            nonce(),
            Payload::Notify(NotifyPayload::ikev2_fragmentation_supported()),
        ];
        let b = chain_bytes(&chain);
        // KE header: next = Nonce (40), length 4 + 4 + 32.
        assert_eq!(&b[..4], &[40, 0, 0, 40]);
        // Nonce header: next = Notify (41), length 36.
        assert_eq!(&b[40..44], &[41, 0, 0, 36]);
        // Notify header: next = 0, length 8.
        assert_eq!(&b[76..80], &[0, 0, 0, 8]);
        assert_eq!(decode_chain(PayloadType::Ke, &b).unwrap(), chain);
        assert_eq!(first_type(&chain), PayloadType::Ke);
    }

    #[test]
    fn sk_keeps_first_inner_and_must_be_last() {
        let sk = EncryptedPayload::new(PayloadType::IdI, vec![0xee; 40]);
        let chain = vec![Payload::Sk(sk.clone())];
        let b = chain_bytes(&chain);
        assert_eq!(&b[..4], &[35, 0, 0, 44]);
        let back = decode_chain(PayloadType::Sk, &b).unwrap();
        assert_eq!(back.sk(), Some(&sk));
        // Anything after the SK payload is refused.
        let mut trailing = b.clone();
        trailing.extend_from_slice(&[0, 0, 0, 4]);
        assert_eq!(
            decode_chain(PayloadType::Sk, &trailing),
            Err(DecodeError::TrailingData(
                "Encrypted payload (must be last)"
            ))
        );
        // No SK inside an SK.
        assert!(matches!(
            decode_inner_chain(PayloadType::Sk, &b),
            Err(DecodeError::InvalidValue { .. })
        ));
        // The header octet round-trips (RFC 9838 2.4.1.2).
        let mut odd = b;
        odd[1] = 0x01;
        let back = decode_chain(PayloadType::Sk, &odd).unwrap();
        assert_eq!(back.sk().unwrap().header_octet, 1);
        assert_eq!(chain_bytes(&back), odd);
    }

    #[test]
    fn unknown_payloads() {
        // Type 200, non-critical, followed by a nonce: kept and skipped.
        let mut b = vec![40, 0, 0, 6, 0xaa, 0xbb];
        b.extend_from_slice(&chain_bytes(&[nonce()]));
        let chain = decode_chain(PayloadType::from(200), &b).unwrap();
        assert_eq!(
            chain[0],
            Payload::Unknown {
                ty: PayloadType::from(200),
                critical: false,
                body: vec![0xaa, 0xbb]
            }
        );
        assert_eq!(chain.nonce().unwrap().as_bytes(), &[0x11; 32]);
        assert_eq!(chain_bytes(&chain), b);
        // Critical: the whole chain is refused with the type (RFC 7296 2.5).
        b[1] = CRITICAL;
        let err = decode_chain(PayloadType::from(200), &b).unwrap_err();
        assert_eq!(err, DecodeError::UnsupportedCriticalPayload(200));
        assert_eq!(err.notify(), NotifyType::UnsupportedCriticalPayload);
        // The critical bit of an understood payload is ignored (RFC 7296 3.2).
        let mut n = chain_bytes(&[nonce()]);
        n[1] = CRITICAL;
        assert_eq!(decode_chain(PayloadType::Nonce, &n).unwrap(), vec![nonce()]);
    }

    #[test]
    fn malformed_chains() {
        let b = chain_bytes(&[nonce()]);
        // Length below the header size.
        let mut short = b.clone();
        short[3] = 3;
        short[2] = 0;
        assert!(matches!(
            decode_chain(PayloadType::Nonce, &short),
            Err(DecodeError::InvalidLength { .. })
        ));
        // Length beyond the data.
        let mut long = b.clone();
        long[3] += 1;
        assert!(decode_chain(PayloadType::Nonce, &long).is_err());
        // Next Payload names a payload that is not there.
        let mut dangling = b.clone();
        dangling[0] = 41;
        assert!(decode_chain(PayloadType::Nonce, &dangling).is_err());
        // Bytes after the last payload.
        let mut trailing = b;
        trailing.push(0);
        assert!(decode_chain(PayloadType::Nonce, &trailing).is_err());
        // Empty chain.
        assert_eq!(decode_chain(PayloadType::NoNext, &[]).unwrap(), vec![]);
    }

    #[test]
    fn caps_on_payloads_and_notifies() {
        let many = vec![Payload::VendorId(VendorIdPayload(vec![1])); MAX_PAYLOADS + 1];
        let b = chain_bytes(&many);
        assert_eq!(
            decode_chain(PayloadType::VendorId, &b),
            Err(DecodeError::TooMany("payloads"))
        );
        let ok = vec![Payload::VendorId(VendorIdPayload(vec![1])); MAX_PAYLOADS];
        assert!(decode_chain(PayloadType::VendorId, &chain_bytes(&ok)).is_ok());
        let notifies =
            vec![Payload::Notify(NotifyPayload::use_transport_mode()); MAX_NOTIFY_PAYLOADS + 1];
        assert_eq!(
            decode_inner_chain(PayloadType::Notify, &chain_bytes(&notifies)),
            Err(DecodeError::TooMany("notify payloads"))
        );
    }

    #[test]
    fn finders() {
        let chain = vec![
            Payload::Notify(NotifyPayload::group_sender(2)),
            Payload::IdG(IdPayload::key_id(vec![1, 2, 3, 4])),
            Payload::Notify(NotifyPayload::error(NotifyType::AuthorizationFailed)),
        ];
        assert_eq!(chain.notifies().count(), 2);
        assert_eq!(
            chain
                .notify(NotifyType::GroupSender)
                .unwrap()
                .group_sender_count(),
            Ok(2)
        );
        assert_eq!(
            chain.error_notify().unwrap().ty,
            NotifyType::AuthorizationFailed
        );
        assert_eq!(chain.id_g().unwrap().data, [1, 2, 3, 4]);
        assert_eq!(chain.count_of(PayloadType::Notify), 2);
        assert!(chain.sk().is_none());
        let (first, plain) = encode_inner(&chain);
        assert_eq!(first, PayloadType::Notify);
        assert_eq!(decode_inner_chain(first, &plain).unwrap(), chain);
    }
}
