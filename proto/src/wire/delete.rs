//! Delete payload body (RFC 7296 3.11), with the G-IKEv2 readings of RFC 9838 2.4.3 and
//! 4.6: protocol 0 deletes the whole Group SA, GIKE_UPDATE names Rekey SAs by their
//! 16-octet SPI, and an all-zero SPI means "all SAs of this protocol".

use crate::codec::{Codec, Reader, put_u16};
use crate::error::DecodeError;
use crate::registry::ProtocolId;

/// SPI size of an ESP or AH SA (RFC 7296 3.11).
pub const CHILD_SPI_LEN: usize = 4;
/// SPI size of a Rekey SA: SPIi | SPIr of the GSA_REKEY header (RFC 9838 2.4.1).
pub const REKEY_SPI_LEN: usize = 16;

/// A Delete payload: one protocol, one SPI size, a list of SPIs of that size.
///
/// The decoder enforces the SPI sizes the specs fix: 0 for IKE (RFC 7296 3.11) and for
/// protocol 0, "the whole Group SA" (RFC 9838 4.6), 4 for AH and ESP (RFC 7296 3.11), 16
/// for GIKE_UPDATE (RFC 9838 2.4.1). Unknown protocols keep whatever size they declare.
/// With SPI size 0 the Num of SPIs must be 0 as well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletePayload {
    pub protocol: ProtocolId,
    spi_size: u8,
    spis: Vec<Vec<u8>>,
}

impl DeletePayload {
    /// Deletes the IKE SA carrying the message (RFC 7296 1.4.1, 3.11).
    pub fn ike() -> Self {
        Self {
            protocol: ProtocolId::Ike,
            spi_size: 0,
            spis: Vec::new(),
        }
    }

    /// Deletes the whole Group SA: all Data-Security SAs and the Rekey SA
    /// (protocol 0, RFC 9838 4.6).
    pub fn whole_group() -> Self {
        Self {
            protocol: ProtocolId::Reserved,
            spi_size: 0,
            spis: Vec::new(),
        }
    }

    /// Deletes ESP or AH SAs by their 4-octet SPIs (RFC 7296 3.11).
    pub fn child(protocol: ProtocolId, spis: &[u32]) -> Self {
        Self {
            protocol,
            spi_size: CHILD_SPI_LEN as u8,
            spis: spis.iter().map(|s| s.to_be_bytes().to_vec()).collect(),
        }
    }

    /// Deletes Rekey SAs by their 16-octet SPIs (RFC 9838 2.4.3).
    pub fn rekey(spis: &[[u8; REKEY_SPI_LEN]]) -> Self {
        Self {
            protocol: ProtocolId::GikeUpdate,
            spi_size: REKEY_SPI_LEN as u8,
            spis: spis.iter().map(|s| s.to_vec()).collect(),
        }
    }

    /// Deletes every SA of `protocol` (ESP, AH or GIKE_UPDATE) with a single all-zero
    /// SPI (RFC 9838 2.4.3). For GIKE_UPDATE this excludes the member from the group.
    pub fn all_of(protocol: ProtocolId) -> Self {
        let size = expected_spi_size(protocol).unwrap_or(CHILD_SPI_LEN as u8);
        Self {
            protocol,
            spi_size: size,
            spis: if size == 0 {
                Vec::new()
            } else {
                vec![vec![0; size.into()]]
            },
        }
    }

    /// A Delete with explicit fields; checked like a received one.
    pub fn new(
        protocol: ProtocolId,
        spi_size: u8,
        spis: Vec<Vec<u8>>,
    ) -> Result<Self, DecodeError> {
        let d = Self {
            protocol,
            spi_size,
            spis,
        };
        d.check()?;
        Ok(d)
    }

    pub fn spi_size(&self) -> u8 {
        self.spi_size
    }

    pub fn spis(&self) -> &[Vec<u8>] {
        &self.spis
    }

    /// The 4-octet SPIs of an ESP/AH delete as integers.
    pub fn child_spis(&self) -> impl Iterator<Item = u32> + '_ {
        self.spis
            .iter()
            .filter_map(|s| <[u8; 4]>::try_from(s.as_slice()).ok())
            .map(u32::from_be_bytes)
    }

    /// Protocol 0: delete the whole Group SA (RFC 9838 4.6).
    pub fn is_whole_group(&self) -> bool {
        self.protocol == ProtocolId::Reserved
    }

    /// One of the SPIs is all zero: delete all SAs of this protocol (RFC 9838 2.4.3).
    pub fn is_all_of_protocol(&self) -> bool {
        self.spi_size > 0 && self.spis.iter().any(|s| s.iter().all(|b| *b == 0))
    }

    /// GIKE_UPDATE with a zero SPI: the receiving member is excluded and must
    /// re-register (RFC 9838 2.4.3).
    pub fn excludes_member(&self) -> bool {
        (self.protocol == ProtocolId::GikeUpdate && self.is_all_of_protocol())
            || self.is_whole_group()
    }

    fn check(&self) -> Result<(), DecodeError> {
        if expected_spi_size(self.protocol).is_some_and(|want| self.spi_size != want) {
            return Err(DecodeError::InvalidValue {
                what: "Delete SPI Size for its protocol",
                value: self.spi_size.into(),
            });
        }
        if self.spi_size == 0 && !self.spis.is_empty() {
            return Err(DecodeError::InvalidValue {
                what: "Delete Num of SPIs with SPI Size 0",
                value: self.spis.len() as u64,
            });
        }
        if self.spis.len() > u16::MAX as usize
            || self.spis.iter().any(|s| s.len() != self.spi_size as usize)
        {
            return Err(DecodeError::InvalidLength {
                what: "Delete SPI",
                len: self.spi_size.into(),
            });
        }
        Ok(())
    }
}

/// SPI sizes fixed by RFC 7296 3.11 and RFC 9838 2.4.1/4.6.
fn expected_spi_size(p: ProtocolId) -> Option<u8> {
    match p {
        ProtocolId::Reserved | ProtocolId::Ike => Some(0),
        ProtocolId::Ah | ProtocolId::Esp => Some(CHILD_SPI_LEN as u8),
        ProtocolId::GikeUpdate => Some(REKEY_SPI_LEN as u8),
        ProtocolId::Unknown(_) => None,
    }
}

impl<'a> Codec<'a> for DeletePayload {
    fn encode(&self, out: &mut Vec<u8>) {
        self.protocol.encode(out);
        out.push(self.spi_size);
        put_u16(out, self.spis.len() as u16);
        for s in &self.spis {
            out.extend_from_slice(s);
        }
    }

    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let protocol = ProtocolId::read(r)?;
        let spi_size = r.u8("Delete SPI Size")?;
        let count = r.u16("Delete Num of SPIs")? as usize;
        // The SPIs must fill the body exactly: the count can never allocate more than the
        // body holds (RFC 7296 3.11: "determined by the SPI Size and Num of SPIs").
        let body = r.rest();
        if spi_size == 0 {
            if count != 0 {
                return Err(DecodeError::InvalidValue {
                    what: "Delete Num of SPIs with SPI Size 0",
                    value: count as u64,
                });
            }
            if !body.is_empty() {
                return Err(DecodeError::TrailingData("Delete payload"));
            }
        } else if body.len() != count * spi_size as usize {
            return Err(DecodeError::InvalidLength {
                what: "Delete SPIs",
                len: body.len(),
            });
        }
        let spis = if spi_size == 0 {
            Vec::new()
        } else {
            body.chunks_exact(spi_size.into())
                .map(<[u8]>::to_vec)
                .collect()
        };
        let d = Self {
            protocol,
            spi_size,
            spis,
        };
        d.check()?;
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_forms() {
        assert_eq!(DeletePayload::ike().to_bytes(), [1, 0, 0, 0]);
        assert_eq!(DeletePayload::whole_group().to_bytes(), [0, 0, 0, 0]);
        let esp = DeletePayload::child(ProtocolId::Esp, &[0x0102_0304, 5]);
        assert_eq!(esp.to_bytes(), [3, 4, 0, 2, 1, 2, 3, 4, 0, 0, 0, 5]);
        let back = DeletePayload::read_bytes(&esp.to_bytes()).unwrap();
        assert_eq!(back.child_spis().collect::<Vec<_>>(), vec![0x0102_0304, 5]);
        assert!(!back.is_all_of_protocol());

        let rk = DeletePayload::rekey(&[[0xab; 16]]);
        assert_eq!(rk.to_bytes().len(), 4 + 16);
        assert_eq!(DeletePayload::read_bytes(&rk.to_bytes()).unwrap(), rk);
        assert!(!rk.excludes_member());

        let excl = DeletePayload::all_of(ProtocolId::GikeUpdate);
        assert_eq!(excl.spis(), &[vec![0u8; 16]]);
        let excl = DeletePayload::read_bytes(&excl.to_bytes()).unwrap();
        assert!(excl.excludes_member());
        assert!(DeletePayload::all_of(ProtocolId::Esp).is_all_of_protocol());
        assert!(DeletePayload::whole_group().excludes_member());
    }

    #[test]
    fn delete_rejects_inconsistent_sizes() {
        // ESP with SPI size 8.
        assert!(DeletePayload::read_bytes(&[3, 8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]).is_err());
        // Count says 3, body holds 2.
        assert!(DeletePayload::read_bytes(&[3, 4, 0, 3, 0, 0, 0, 1, 0, 0, 0, 2]).is_err());
        // IKE with SPIs.
        assert!(DeletePayload::read_bytes(&[1, 0, 0, 1]).is_err());
        // Huge count, no body: refused without allocating.
        assert!(DeletePayload::read_bytes(&[3, 4, 0xff, 0xff]).is_err());
        // Unknown protocol keeps its own size.
        let u = DeletePayload::read_bytes(&[9, 2, 0, 1, 0xaa, 0xbb]).unwrap();
        assert_eq!(u.spis(), &[vec![0xaa, 0xbb]]);
        assert!(DeletePayload::new(ProtocolId::Esp, 4, vec![vec![1, 2]]).is_err());
    }
}
