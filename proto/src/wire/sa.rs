//! Security Association payload body (RFC 7296 3.3, 3.3.1), also used for SAg, the GM's
//! supported transforms (RFC 9838 4.3, 2.3.3).
//!
//! The codec is structural: proposal numbers, SPI sizes and protocol/transform
//! combinations are checked by whoever negotiates, because SA and SAg read them
//! differently (SAg has empty SPIs and lets several proposals share a Proposal Num,
//! RFC 9838 2.3.3). [`SaPayload::check_ikev2_numbering`] covers the RFC 7296 rule.

use crate::codec::{Codec, Reader, with_length};
use crate::error::DecodeError;
use crate::registry::{ProtocolId, TransformType};
use crate::wire::transform::Transform;

/// "Last Substruc" of a proposal followed by another (RFC 7296 3.3.1).
pub const MORE_PROPOSALS: u8 = 2;
/// At most this many proposals per SA payload (bounded input).
pub const MAX_PROPOSALS: usize = 64;

/// One proposal: a number, a protocol, the sender's SPI (possibly empty) and its
/// transforms (RFC 7296 3.3.1, Figure 7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub num: u8,
    pub protocol: ProtocolId,
    pub spi: Vec<u8>,
    pub transforms: Vec<Transform>,
}

impl Proposal {
    pub fn new(num: u8, protocol: ProtocolId, spi: Vec<u8>, transforms: Vec<Transform>) -> Self {
        Self {
            num,
            protocol,
            spi,
            transforms,
        }
    }

    /// The transforms of one type, in order.
    pub fn transforms_of(&self, ty: TransformType) -> impl Iterator<Item = &Transform> {
        self.transforms.iter().filter(move |t| t.ty == ty)
    }

    fn encode_with_last(&self, last: u8, out: &mut Vec<u8>) {
        let start = out.len();
        out.push(last);
        out.push(0);
        out.extend_from_slice(&[0, 0]);
        with_length::<2>(out, start + 2, start, |out| {
            out.push(self.num);
            self.protocol.encode(out);
            debug_assert!(self.spi.len() <= u8::MAX as usize);
            out.push(self.spi.len() as u8);
            debug_assert!(!self.transforms.is_empty() && self.transforms.len() <= 255);
            out.push(self.transforms.len() as u8);
            out.extend_from_slice(&self.spi);
            Transform::encode_list(&self.transforms, out);
        });
    }

    fn read_with_last(r: &mut Reader<'_>) -> Result<(u8, Self), DecodeError> {
        let last = r.u8("proposal Last Substruc")?;
        let _reserved = r.u8("proposal RESERVED")?;
        let len = r.u16("proposal length")? as usize;
        if len < 8 {
            return Err(DecodeError::InvalidLength {
                what: "proposal",
                len,
            });
        }
        let mut body = r.sub(len - 4, "proposal")?;
        let num = body.u8("Proposal Num")?;
        let protocol = ProtocolId::read(&mut body)?;
        let spi_size = body.u8("proposal SPI Size")?;
        let count = body.u8("Num Transforms")?;
        let spi = body.take(spi_size.into(), "proposal SPI")?.to_vec();
        // "Transforms (variable) - One or more transform substructures" (RFC 7296 3.3.1).
        if count == 0 {
            return Err(DecodeError::Missing("transform"));
        }
        let transforms = Transform::read_list(&mut body, Some(count.into()))?;
        // "check that the total Payload Length is consistent with the payload's internal
        // lengths and counts" (RFC 7296 3.3).
        body.expect_empty("proposal")?;
        Ok((
            last,
            Self {
                num,
                protocol,
                spi,
                transforms,
            },
        ))
    }
}

/// An SA (or SAg) payload: one or more proposals, most preferred first (RFC 7296 3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaPayload {
    pub proposals: Vec<Proposal>,
}

impl SaPayload {
    pub fn new(proposals: Vec<Proposal>) -> Self {
        Self { proposals }
    }

    /// The RFC 7296 3.3.1 numbering of a proposing SA: the first proposal is 1 and each
    /// next one is one more. Not applicable to SAg (RFC 9838 2.3.3) nor to a reply, whose
    /// single proposal carries the number of the accepted one.
    pub fn check_ikev2_numbering(&self) -> Result<(), DecodeError> {
        for (i, p) in self.proposals.iter().enumerate() {
            if usize::from(p.num) != i + 1 {
                return Err(DecodeError::InvalidValue {
                    what: "Proposal Num",
                    value: p.num.into(),
                });
            }
        }
        Ok(())
    }
}

impl<'a> Codec<'a> for SaPayload {
    fn encode(&self, out: &mut Vec<u8>) {
        for (i, p) in self.proposals.iter().enumerate() {
            let last = if i + 1 == self.proposals.len() {
                0
            } else {
                MORE_PROPOSALS
            };
            p.encode_with_last(last, out);
        }
    }

    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let mut proposals = Vec::new();
        loop {
            if proposals.len() == MAX_PROPOSALS {
                return Err(DecodeError::TooMany("proposals"));
            }
            let (last, p) = Proposal::read_with_last(r)?;
            proposals.push(p);
            match last {
                // Last Substruc 0 must be the end of the payload, 2 must not (RFC 7296 3.3.1).
                0 => {
                    r.expect_empty("SA payload")?;
                    return Ok(Self { proposals });
                }
                MORE_PROPOSALS if r.is_empty() => return Err(DecodeError::Truncated("proposal")),
                MORE_PROPOSALS => {}
                other => {
                    return Err(DecodeError::InvalidValue {
                        what: "proposal Last Substruc",
                        value: other.into(),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{EncrId, IntegId, KeId, KwaId, PrfId, SnId};

    fn ike_proposal() -> Proposal {
        Proposal::new(
            1,
            ProtocolId::Ike,
            Vec::new(),
            vec![
                Transform::encr(EncrId::AesGcm16, Some(256)),
                Transform::prf(PrfId::HmacSha2_256),
                Transform::ke(KeId::Curve25519),
                Transform::kwa(KwaId::Kw5649_256),
            ],
        )
    }

    #[test]
    fn ike_sa_bytes() {
        let sa = SaPayload::new(vec![ike_proposal()]);
        let b = sa.to_bytes();
        // Proposal header: last 0, length 8 + 12 + 8 + 8 + 8 = 44, num 1, IKE, SPI 0, 4.
        assert_eq!(&b[..8], &[0, 0, 0, 44, 1, 1, 0, 4]);
        assert_eq!(b.len(), 44);
        assert_eq!(SaPayload::read_bytes(&b).unwrap(), sa);
        assert!(sa.check_ikev2_numbering().is_ok());
    }

    #[test]
    fn sag_with_shared_numbers_and_empty_spis() {
        // RFC 9838 2.3.3: proposals for GIKE_UPDATE and ESP sharing Proposal Num 1.
        let sag = SaPayload::new(vec![
            Proposal::new(
                1,
                ProtocolId::GikeUpdate,
                Vec::new(),
                vec![
                    Transform::encr(EncrId::AesGcm16, Some(256)),
                    Transform::kwa(KwaId::Kw5649_256),
                ],
            ),
            Proposal::new(
                1,
                ProtocolId::Esp,
                Vec::new(),
                vec![
                    Transform::encr(EncrId::AesGcm16, Some(128)),
                    Transform::integ(IntegId::None),
                    Transform::sn(SnId::Unspecified32),
                ],
            ),
        ]);
        let b = sag.to_bytes();
        assert_eq!(b[0], MORE_PROPOSALS);
        let back = SaPayload::read_bytes(&b).unwrap();
        assert_eq!(back, sag);
        assert!(back.check_ikev2_numbering().is_err());
        assert_eq!(
            back.proposals[1].transforms_of(TransformType::Sn).count(),
            1
        );
    }

    #[test]
    fn inconsistent_proposals_rejected() {
        let sa = SaPayload::new(vec![ike_proposal(), ike_proposal()]);
        let b = sa.to_bytes();
        // Says "last" on the first proposal although another follows.
        let mut lying = b.clone();
        lying[0] = 0;
        assert!(SaPayload::read_bytes(&lying).is_err());
        // Says "more" on the last one.
        let mut more = SaPayload::new(vec![ike_proposal()]).to_bytes();
        more[0] = 2;
        assert!(SaPayload::read_bytes(&more).is_err());
        // Transform count off by one.
        let mut count = SaPayload::new(vec![ike_proposal()]).to_bytes();
        count[7] = 3;
        assert!(SaPayload::read_bytes(&count).is_err());
        count[7] = 0;
        assert!(SaPayload::read_bytes(&count).is_err());
        // Proposal length shorter than its header.
        let mut short = SaPayload::new(vec![ike_proposal()]).to_bytes();
        short[3] = 7;
        assert!(SaPayload::read_bytes(&short).is_err());
        assert!(SaPayload::read_bytes(&[]).is_err());
    }
}
