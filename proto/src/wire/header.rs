//! The IKE header (RFC 7296 3.1; G-IKEv2 reuses it unchanged, RFC 9838 4.1) and the
//! non-ESP marker that precedes IKE messages on UDP port 4500 (RFC 3948 2.2; RFC 7296 2.23).

use crate::codec::{Codec, Reader, put_u32};
use crate::error::DecodeError;
use crate::registry::{ExchangeType, PayloadType};

/// Length of the fixed IKE header in octets (RFC 7296 3.1, Figure 4).
pub const HEADER_LEN: usize = 28;

/// The only major version this implementation speaks (RFC 7296 3.1; RFC 9838 4.1).
pub const IKE_MAJOR_VERSION: u8 = 2;

/// The minor version we send; received minor versions are ignored (RFC 7296 3.1).
pub const IKE_MINOR_VERSION: u8 = 0;

/// The flags octet (RFC 7296 3.1): `|X|X|R|V|I|X|X|X|`.
///
/// Only the R, V and I bits are kept: X bits "MUST be cleared when sending and MUST be
/// ignored on receipt" (RFC 7296 3.1), so they are dropped on decode.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags(u8);

impl Flags {
    /// R (Response): set in every response, clear in every request.
    pub const RESPONSE: u8 = 0x20;
    /// V (Version): "capable of a higher major version"; IKEv2 implementations clear it.
    pub const VERSION: u8 = 0x10;
    /// I (Initiator): set in messages sent by the original initiator of the IKE SA.
    pub const INITIATOR: u8 = 0x08;
    const KNOWN: u8 = Self::RESPONSE | Self::VERSION | Self::INITIATOR;

    /// Flags for a message: `initiator` is the I bit, `response` the R bit. V stays clear.
    pub const fn new(initiator: bool, response: bool) -> Self {
        let mut v = 0;
        if initiator {
            v |= Self::INITIATOR;
        }
        if response {
            v |= Self::RESPONSE;
        }
        Self(v)
    }

    /// The flags from a received octet, X bits ignored.
    pub const fn from_octet(v: u8) -> Self {
        Self(v & Self::KNOWN)
    }

    pub const fn octet(self) -> u8 {
        self.0
    }

    pub const fn is_response(self) -> bool {
        self.0 & Self::RESPONSE != 0
    }

    pub const fn is_initiator(self) -> bool {
        self.0 & Self::INITIATOR != 0
    }

    /// The V bit. Ignored on receipt (RFC 7296 3.1); exposed for logging.
    pub const fn version_bit(self) -> bool {
        self.0 & Self::VERSION != 0
    }

    pub fn set_response(&mut self, on: bool) {
        self.set(Self::RESPONSE, on);
    }

    pub fn set_initiator(&mut self, on: bool) {
        self.set(Self::INITIATOR, on);
    }

    fn set(&mut self, bit: u8, on: bool) {
        if on {
            self.0 |= bit;
        } else {
            self.0 &= !bit;
        }
    }
}

impl core::fmt::Debug for Flags {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut list = f.debug_set();
        if self.is_initiator() {
            list.entry(&"I");
        }
        if self.version_bit() {
            list.entry(&"V");
        }
        if self.is_response() {
            list.entry(&"R");
        }
        list.finish()
    }
}

/// The fixed IKE header (RFC 7296 3.1, Figure 4).
///
/// For GSA_REKEY the two SPIs together form the 16-octet SPI of the Rekey SA
/// (RFC 9838 2.4.1); [`Header::rekey_spi`] gives that view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub spi_i: [u8; 8],
    pub spi_r: [u8; 8],
    /// Type of the first payload. [`crate::wire::Message::encode`] sets it from the payloads.
    pub next_payload: PayloadType,
    /// Received minor version, kept for logging; ignored otherwise (RFC 7296 3.1).
    pub minor_version: u8,
    pub exchange: ExchangeType,
    pub flags: Flags,
    pub message_id: u32,
    /// Length of the whole message, header included. Set by the encoder; checked by
    /// [`Header::read_datagram`] against the datagram length.
    pub length: u32,
}

impl Header {
    /// A header for a new message; `next_payload` and `length` are filled in by the
    /// message encoder.
    pub fn new(
        spi_i: [u8; 8],
        spi_r: [u8; 8],
        exchange: ExchangeType,
        flags: Flags,
        message_id: u32,
    ) -> Self {
        Self {
            spi_i,
            spi_r,
            next_payload: PayloadType::NoNext,
            minor_version: IKE_MINOR_VERSION,
            exchange,
            flags,
            message_id,
            length: HEADER_LEN as u32,
        }
    }

    /// The 16-octet Rekey SA SPI of a GSA_REKEY message: SPIi followed by SPIr
    /// (RFC 9838 2.4.1).
    pub fn rekey_spi(&self) -> [u8; 16] {
        let mut s = [0u8; 16];
        s[..8].copy_from_slice(&self.spi_i);
        s[8..].copy_from_slice(&self.spi_r);
        s
    }

    /// Sets SPIi and SPIr from a 16-octet Rekey SA SPI (RFC 9838 2.4.1).
    pub fn set_rekey_spi(&mut self, spi: &[u8; 16]) {
        self.spi_i.copy_from_slice(&spi[..8]);
        self.spi_r.copy_from_slice(&spi[8..]);
    }

    /// Reads the header at the start of a whole datagram (without any non-ESP marker) and
    /// checks that its Length field equals the datagram length (RFC 7296 3.1: "Length of
    /// the total message (header + payloads)"). Cheap: use it to route by SPI before
    /// decoding the payloads.
    pub fn read_datagram(datagram: &[u8]) -> Result<Self, DecodeError> {
        let h = Self::read(&mut Reader::new(datagram))?;
        if h.length as usize != datagram.len() {
            return Err(DecodeError::InvalidLength {
                what: "IKE message (header Length vs datagram)",
                len: h.length as usize,
            });
        }
        Ok(h)
    }
}

impl<'a> Codec<'a> for Header {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.spi_i);
        out.extend_from_slice(&self.spi_r);
        out.push(self.next_payload.value());
        out.push((IKE_MAJOR_VERSION << 4) | (self.minor_version & 0x0f));
        out.push(self.exchange.value());
        out.push(self.flags.octet());
        put_u32(out, self.message_id);
        put_u32(out, self.length);
    }

    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let spi_i = r.take_array::<8>("IKE SPIi")?;
        let spi_r = r.take_array::<8>("IKE SPIr")?;
        let next_payload = PayloadType::read(r)?;
        let version = r.u8("IKE version")?;
        let major = version >> 4;
        // RFC 7296 3.1/2.5: a major version above 2 is answered with INVALID_MAJOR_VERSION.
        if major > IKE_MAJOR_VERSION {
            return Err(DecodeError::InvalidMajorVersion(major));
        }
        // Major 1 is IKEv1/ISAKMP, which we do not parse; 0 is not a version at all.
        if major < IKE_MAJOR_VERSION {
            return Err(DecodeError::InvalidValue {
                what: "IKE major version",
                value: major.into(),
            });
        }
        let exchange = ExchangeType::read(r)?;
        let flags = Flags::from_octet(r.u8("IKE flags")?);
        let message_id = r.u32("IKE message ID")?;
        let length = r.u32("IKE length")?;
        if (length as usize) < HEADER_LEN {
            return Err(DecodeError::InvalidLength {
                what: "IKE message",
                len: length as usize,
            });
        }
        Ok(Self {
            spi_i,
            spi_r,
            next_payload,
            minor_version: version & 0x0f,
            exchange,
            flags,
            message_id,
            length,
        })
    }
}

/// The non-ESP marker: four zero octets before an IKE message on UDP port 4500, where
/// ESP packets would have their (never zero) SPI (RFC 3948 2.2; RFC 7296 2.23).
pub const NON_ESP_MARKER: [u8; 4] = [0; 4];

/// The one-octet NAT-keepalive payload (RFC 3948 2.3).
pub const NAT_KEEPALIVE: u8 = 0xff;

/// What a UDP datagram received on port 4500 carries (RFC 3948 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port4500<'a> {
    /// An IKE message, non-ESP marker stripped.
    Ike(&'a [u8]),
    /// A UDP-encapsulated ESP packet, starting with its SPI.
    Esp(&'a [u8]),
    /// A NAT-keepalive; receivers SHOULD ignore it (RFC 3948 2.3).
    Keepalive,
}

/// Classifies a port-4500 datagram by its first octets (RFC 3948 2.2, 2.3, 3.2).
///
/// Anything shorter than four octets other than the keepalive is an error: it can be
/// neither an IKE message nor an ESP packet.
pub fn classify_port_4500(datagram: &[u8]) -> Result<Port4500<'_>, DecodeError> {
    if datagram == [NAT_KEEPALIVE] {
        return Ok(Port4500::Keepalive);
    }
    match datagram.split_first_chunk::<4>() {
        Some((marker, ike)) if *marker == NON_ESP_MARKER => Ok(Port4500::Ike(ike)),
        Some(_) => Ok(Port4500::Esp(datagram)),
        None => Err(DecodeError::Truncated("UDP 4500 datagram")),
    }
}

/// Prepends the non-ESP marker to an encoded IKE message for sending on port 4500
/// (RFC 7296 2.23). The marker is not counted in any IKE length field (RFC 7296 3.1).
pub fn with_non_esp_marker(message: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(message.len() + NON_ESP_MARKER.len());
    v.extend_from_slice(&NON_ESP_MARKER);
    v.extend_from_slice(message);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        let mut h = Header::new(
            [1, 2, 3, 4, 5, 6, 7, 8],
            [0; 8],
            ExchangeType::IkeSaInit,
            Flags::new(true, false),
            0,
        );
        h.next_payload = PayloadType::Sa;
        h
    }

    #[test]
    fn header_bytes_match_figure_4() {
        let b = sample().to_bytes();
        assert_eq!(b.len(), HEADER_LEN);
        assert_eq!(&b[16..20], &[33, 0x20, 34, 0x08]);
        assert_eq!(&b[24..28], &[0, 0, 0, 28]);
        assert_eq!(Header::read_bytes(&b).unwrap(), sample());
        assert_eq!(Header::read_datagram(&b).unwrap(), sample());
    }

    #[test]
    fn version_rules() {
        let mut b = sample().to_bytes();
        b[17] = 0x30;
        assert_eq!(
            Header::read_bytes(&b),
            Err(DecodeError::InvalidMajorVersion(3))
        );
        assert_eq!(
            DecodeError::InvalidMajorVersion(3).notify(),
            crate::registry::NotifyType::InvalidMajorVersion
        );
        b[17] = 0x10;
        assert!(matches!(
            Header::read_bytes(&b),
            Err(DecodeError::InvalidValue { .. })
        ));
        // Minor version is ignored (RFC 7296 3.1) but kept.
        b[17] = 0x27;
        assert_eq!(Header::read_bytes(&b).unwrap().minor_version, 7);
    }

    #[test]
    fn x_bits_ignored_and_flags_typed() {
        let mut b = sample().to_bytes();
        b[19] = 0xff;
        let h = Header::read_bytes(&b).unwrap();
        assert!(h.flags.is_initiator() && h.flags.is_response() && h.flags.version_bit());
        assert_eq!(h.flags.octet(), 0x38);
        let mut f = Flags::default();
        f.set_response(true);
        assert_eq!(f, Flags::new(false, true));
        assert_eq!(format!("{f:?}"), "{\"R\"}");
    }

    #[test]
    fn length_must_match_datagram() {
        let mut b = sample().to_bytes();
        b.push(0);
        assert!(Header::read_datagram(&b).is_err());
        let mut short = sample();
        short.length = 27;
        assert!(Header::read_bytes(&short.to_bytes()).is_err());
        assert!(Header::read_datagram(&b[..20]).is_err());
    }

    #[test]
    fn rekey_spi_spans_both_spis() {
        let mut h = sample();
        let spi: [u8; 16] = core::array::from_fn(|i| i as u8);
        h.set_rekey_spi(&spi);
        assert_eq!(h.rekey_spi(), spi);
        assert_eq!(h.spi_r, [8, 9, 10, 11, 12, 13, 14, 15]);
    }

    #[test]
    fn port_4500_classification() {
        let ike = sample().to_bytes();
        let framed = with_non_esp_marker(&ike);
        assert_eq!(classify_port_4500(&framed), Ok(Port4500::Ike(&ike[..])));
        assert_eq!(classify_port_4500(&[0xff]), Ok(Port4500::Keepalive));
        let esp = [0, 0, 1, 0, 0, 0, 0, 1];
        assert_eq!(classify_port_4500(&esp), Ok(Port4500::Esp(&esp[..])));
        assert!(classify_port_4500(&[0, 0]).is_err());
        assert!(classify_port_4500(&[]).is_err());
    }
}
