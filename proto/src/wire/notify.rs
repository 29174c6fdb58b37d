//! Notify payload body (RFC 7296 3.10) with typed constructors and accessors for the
//! notifications this project sends or reads (RFC 7296 2.6, 2.23, 3.10.1; RFC 7383 2.3;
//! RFC 7427 4; RFC 9242 3; RFC 6023 3; RFC 9370 2.2.4; RFC 9838 4.7).

use crate::codec::{Codec, Reader, put_u16, put_u32};
use crate::error::DecodeError;
use crate::registry::{HashAlgorithm, KeId, NotifyType, ProtocolId};

/// COOKIE data is 1..=64 octets (RFC 7296 2.6).
pub const MAX_COOKIE_LEN: usize = 64;
/// NAT_DETECTION_*_IP data is a SHA-1 digest (RFC 7296 2.23).
pub const NAT_DETECTION_LEN: usize = 20;
/// At most this many hash algorithms are read from SIGNATURE_HASH_ALGORITHMS
/// (bounded input; the registry has five values).
pub const MAX_SIGNATURE_HASHES: usize = 32;

/// A Notify payload. `protocol` and `spi` are only meaningful when an SPI is present;
/// "If the SPI field is empty, this field MUST be sent as zero and MUST be ignored on
/// receipt" (RFC 7296 3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyPayload {
    pub protocol: ProtocolId,
    pub ty: NotifyType,
    pub spi: Vec<u8>,
    pub data: Vec<u8>,
}

impl NotifyPayload {
    /// A notification about the IKE SA or the message: protocol 0, no SPI.
    pub fn new(ty: NotifyType, data: impl Into<Vec<u8>>) -> Self {
        Self {
            protocol: ProtocolId::Reserved,
            ty,
            spi: Vec::new(),
            data: data.into(),
        }
    }

    /// A notification about the SA identified by `protocol` and `spi`.
    pub fn with_spi(
        protocol: ProtocolId,
        spi: impl Into<Vec<u8>>,
        ty: NotifyType,
        data: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            protocol,
            ty,
            spi: spi.into(),
            data: data.into(),
        }
    }

    /// An error notification without data (e.g. INVALID_SYNTAX, NO_PROPOSAL_CHOSEN,
    /// AUTHENTICATION_FAILED, and the G-IKEv2 INVALID_GROUP_ID, AUTHORIZATION_FAILED,
    /// REGISTRATION_FAILED, whose Protocol ID and SPI Size MUST be zero, RFC 9838 4.7.1-3).
    pub fn error(ty: NotifyType) -> Self {
        Self::new(ty, Vec::new())
    }

    /// True for error types (0..=16383, RFC 7296 3.10.1).
    pub fn is_error(&self) -> bool {
        self.ty.is_error()
    }

    /// COOKIE with its 1..=64 octets of data (RFC 7296 2.6).
    pub fn cookie(data: &[u8]) -> Result<Self, DecodeError> {
        check_cookie(data)?;
        Ok(Self::new(NotifyType::Cookie, data))
    }

    /// NAT_DETECTION_SOURCE_IP with its SHA-1 hash (RFC 7296 2.23).
    pub fn nat_detection_source_ip(hash: [u8; NAT_DETECTION_LEN]) -> Self {
        Self::new(NotifyType::NatDetectionSourceIp, hash)
    }

    /// NAT_DETECTION_DESTINATION_IP with its SHA-1 hash (RFC 7296 2.23).
    pub fn nat_detection_destination_ip(hash: [u8; NAT_DETECTION_LEN]) -> Self {
        Self::new(NotifyType::NatDetectionDestinationIp, hash)
    }

    /// SIGNATURE_HASH_ALGORITHMS: a list of 2-octet hash algorithm IDs (RFC 7427 4).
    pub fn signature_hash_algorithms(algs: &[HashAlgorithm]) -> Self {
        let mut data = Vec::with_capacity(algs.len() * 2);
        for a in algs {
            a.encode(&mut data);
        }
        Self::new(NotifyType::SignatureHashAlgorithms, data)
    }

    /// GROUP_SENDER with the 4-octet count of Sender-IDs wanted (RFC 9838 4.7.4).
    pub fn group_sender(count: u32) -> Self {
        let mut data = Vec::with_capacity(4);
        put_u32(&mut data, count);
        Self::new(NotifyType::GroupSender, data)
    }

    /// INVALID_KE_PAYLOAD naming the accepted group in 2 octets (RFC 7296 1.2, 3.10.1).
    pub fn invalid_ke_payload(accepted: KeId) -> Self {
        let mut data = Vec::with_capacity(2);
        put_u16(&mut data, accepted.value());
        Self::new(NotifyType::InvalidKePayload, data)
    }

    /// UNSUPPORTED_CRITICAL_PAYLOAD: data is the one-octet payload type (RFC 7296 3.10.1).
    pub fn unsupported_critical_payload(payload_type: u8) -> Self {
        Self::new(NotifyType::UnsupportedCriticalPayload, [payload_type])
    }

    /// IKEV2_FRAGMENTATION_SUPPORTED, empty (RFC 7383 2.3).
    pub fn ikev2_fragmentation_supported() -> Self {
        Self::new(NotifyType::Ikev2FragmentationSupported, Vec::new())
    }

    /// INTERMEDIATE_EXCHANGE_SUPPORTED, empty (RFC 9242 3).
    pub fn intermediate_exchange_supported() -> Self {
        Self::new(NotifyType::IntermediateExchangeSupported, Vec::new())
    }

    /// CHILDLESS_IKEV2_SUPPORTED, empty (RFC 6023 3).
    pub fn childless_ikev2_supported() -> Self {
        Self::new(NotifyType::ChildlessIkev2Supported, Vec::new())
    }

    /// USE_TRANSPORT_MODE, empty; in a registration response it selects transport mode
    /// for the Data-Security SAs (RFC 9838 2.3.4; RFC 7296 3.10.1).
    pub fn use_transport_mode() -> Self {
        Self::new(NotifyType::UseTransportMode, Vec::new())
    }

    /// ADDITIONAL_KEY_EXCHANGE carrying the responder's opaque link data (RFC 9370 2.2.4).
    pub fn additional_key_exchange(link: &[u8]) -> Self {
        Self::new(NotifyType::AdditionalKeyExchange, link)
    }

    /// The data of a COOKIE, checked to be 1..=64 octets (RFC 7296 2.6).
    pub fn cookie_data(&self) -> Result<&[u8], DecodeError> {
        self.expect(NotifyType::Cookie)?;
        check_cookie(&self.data)?;
        Ok(&self.data)
    }

    /// The 20-octet hash of a NAT_DETECTION_SOURCE_IP or _DESTINATION_IP (RFC 7296 2.23).
    pub fn nat_detection_hash(&self) -> Result<[u8; NAT_DETECTION_LEN], DecodeError> {
        if !matches!(
            self.ty,
            NotifyType::NatDetectionSourceIp | NotifyType::NatDetectionDestinationIp
        ) {
            return Err(self.wrong_type());
        }
        self.data
            .as_slice()
            .try_into()
            .map_err(|_| DecodeError::InvalidLength {
                what: "NAT_DETECTION data",
                len: self.data.len(),
            })
    }

    /// The hash algorithms of a SIGNATURE_HASH_ALGORITHMS (RFC 7427 4): an even number
    /// of octets, at most [`MAX_SIGNATURE_HASHES`] entries.
    pub fn signature_hashes(&self) -> Result<Vec<HashAlgorithm>, DecodeError> {
        self.expect(NotifyType::SignatureHashAlgorithms)?;
        if !self.data.len().is_multiple_of(2) {
            return Err(DecodeError::InvalidLength {
                what: "SIGNATURE_HASH_ALGORITHMS data",
                len: self.data.len(),
            });
        }
        if self.data.len() / 2 > MAX_SIGNATURE_HASHES {
            return Err(DecodeError::TooMany("signature hash algorithms"));
        }
        let mut r = Reader::new(&self.data);
        let mut v = Vec::with_capacity(self.data.len() / 2);
        while !r.is_empty() {
            v.push(HashAlgorithm::read(&mut r)?);
        }
        Ok(v)
    }

    /// The Sender-ID count of a GROUP_SENDER: exactly 4 octets, big endian
    /// (RFC 9838 4.7.4).
    pub fn group_sender_count(&self) -> Result<u32, DecodeError> {
        self.expect(NotifyType::GroupSender)?;
        Ok(u32::from_be_bytes(self.fixed::<4>("GROUP_SENDER data")?))
    }

    /// The group named by an INVALID_KE_PAYLOAD: exactly 2 octets (RFC 7296 3.10.1).
    pub fn invalid_ke_group(&self) -> Result<KeId, DecodeError> {
        self.expect(NotifyType::InvalidKePayload)?;
        Ok(KeId::from(u16::from_be_bytes(
            self.fixed::<2>("INVALID_KE_PAYLOAD data")?,
        )))
    }

    fn fixed<const N: usize>(&self, what: &'static str) -> Result<[u8; N], DecodeError> {
        self.data
            .as_slice()
            .try_into()
            .map_err(|_| DecodeError::InvalidLength {
                what,
                len: self.data.len(),
            })
    }

    fn expect(&self, ty: NotifyType) -> Result<(), DecodeError> {
        if self.ty == ty {
            Ok(())
        } else {
            Err(self.wrong_type())
        }
    }

    fn wrong_type(&self) -> DecodeError {
        DecodeError::InvalidValue {
            what: "notify type for this accessor",
            value: self.ty.value().into(),
        }
    }
}

fn check_cookie(data: &[u8]) -> Result<(), DecodeError> {
    if (1..=MAX_COOKIE_LEN).contains(&data.len()) {
        Ok(())
    } else {
        Err(DecodeError::InvalidLength {
            what: "COOKIE data",
            len: data.len(),
        })
    }
}

impl<'a> Codec<'a> for NotifyPayload {
    fn encode(&self, out: &mut Vec<u8>) {
        self.protocol.encode(out);
        debug_assert!(self.spi.len() <= u8::MAX as usize);
        out.push(self.spi.len() as u8);
        self.ty.encode(out);
        out.extend_from_slice(&self.spi);
        out.extend_from_slice(&self.data);
    }

    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let protocol = ProtocolId::read(r)?;
        let spi_size = r.u8("notify SPI Size")?;
        let ty = NotifyType::read(r)?;
        let spi = r.take(spi_size.into(), "notify SPI")?.to_vec();
        Ok(Self {
            protocol,
            ty,
            spi,
            data: r.rest().to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(n: &NotifyPayload) -> NotifyPayload {
        NotifyPayload::read_bytes(&n.to_bytes()).unwrap()
    }

    #[test]
    fn group_sender_wire_form() {
        let n = NotifyPayload::group_sender(3);
        assert_eq!(n.to_bytes(), [0, 0, 0x40, 0x2d, 0, 0, 0, 3]);
        assert_eq!(rt(&n).group_sender_count(), Ok(3));
        let short = NotifyPayload::new(NotifyType::GroupSender, vec![0, 3]);
        assert!(short.group_sender_count().is_err());
        assert!(
            NotifyPayload::cookie(&[1])
                .unwrap()
                .group_sender_count()
                .is_err()
        );
    }

    #[test]
    fn typed_notifies() {
        let c = NotifyPayload::cookie(&[5; 64]).unwrap();
        assert_eq!(rt(&c).cookie_data().unwrap(), &[5; 64]);
        assert!(NotifyPayload::cookie(&[]).is_err());
        assert!(NotifyPayload::cookie(&[0; 65]).is_err());

        let ke = NotifyPayload::invalid_ke_payload(KeId::Ecp256);
        assert_eq!(ke.data, [0, 19]);
        assert_eq!(rt(&ke).invalid_ke_group(), Ok(KeId::Ecp256));

        let sha = NotifyPayload::signature_hash_algorithms(&[
            HashAlgorithm::Sha2_256,
            HashAlgorithm::Identity,
        ]);
        assert_eq!(sha.data, [0, 2, 0, 5]);
        assert_eq!(
            rt(&sha).signature_hashes().unwrap(),
            vec![HashAlgorithm::Sha2_256, HashAlgorithm::Identity]
        );
        let odd = NotifyPayload::new(NotifyType::SignatureHashAlgorithms, vec![0, 2, 0]);
        assert!(odd.signature_hashes().is_err());

        let nat = NotifyPayload::nat_detection_source_ip([7; 20]);
        assert_eq!(rt(&nat).nat_detection_hash(), Ok([7; 20]));
        assert!(
            NotifyPayload::new(NotifyType::NatDetectionSourceIp, vec![1])
                .nat_detection_hash()
                .is_err()
        );

        let frag = NotifyPayload::ikev2_fragmentation_supported();
        assert_eq!(frag.to_bytes(), [0, 0, 0x40, 0x2e]);
        assert!(!frag.is_error());
        assert!(NotifyPayload::error(NotifyType::InvalidGroupId).is_error());
    }

    #[test]
    fn spi_is_bounded_by_body() {
        let n = NotifyPayload::with_spi(
            ProtocolId::Esp,
            vec![1, 2, 3, 4],
            NotifyType::RekeySa,
            Vec::new(),
        );
        assert_eq!(n.to_bytes(), [3, 4, 0x40, 0x09, 1, 2, 3, 4]);
        assert_eq!(rt(&n), n);
        // SPI Size larger than what is left.
        assert!(NotifyPayload::read_bytes(&[3, 8, 0x40, 0x09, 1, 2, 3, 4]).is_err());
    }
}
