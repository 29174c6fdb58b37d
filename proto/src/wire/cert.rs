//! Certificate and Certificate Request payload bodies (RFC 7296 3.6, 3.7).

use crate::codec::{Codec, Reader};
use crate::error::DecodeError;
use crate::registry::CertEncoding;

/// Length of one CA hash in a CERTREQ for X.509 encodings (SHA-1 of the SPKI,
/// RFC 7296 3.7).
pub const CA_HASH_LEN: usize = 20;

/// CERT: an encoding and its data (a DER certificate for encoding 4, RFC 7296 3.6).
#[derive(Clone, PartialEq, Eq)]
pub struct CertPayload {
    pub encoding: CertEncoding,
    pub data: Vec<u8>,
}

/// CERTREQ: an encoding and the Certification Authority field (RFC 7296 3.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertReqPayload {
    pub encoding: CertEncoding,
    pub authorities: Vec<u8>,
}

impl CertPayload {
    pub fn new(encoding: CertEncoding, data: impl Into<Vec<u8>>) -> Self {
        Self {
            encoding,
            data: data.into(),
        }
    }

    /// An "X.509 Certificate - Signature" payload (encoding 4) holding a DER certificate.
    pub fn x509(der: impl Into<Vec<u8>>) -> Self {
        Self::new(CertEncoding::X509Signature, der)
    }
}

impl core::fmt::Debug for CertPayload {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CertPayload")
            .field("encoding", &self.encoding)
            .field("data_len", &self.data.len())
            .finish()
    }
}

impl CertReqPayload {
    /// A CERTREQ for X.509 signature certificates naming trust anchors by the SHA-1 hash
    /// of their SubjectPublicKeyInfo (RFC 7296 3.7).
    pub fn x509(ca_hashes: &[[u8; CA_HASH_LEN]]) -> Self {
        Self {
            encoding: CertEncoding::X509Signature,
            authorities: ca_hashes.concat(),
        }
    }

    /// The concatenated 20-octet CA hashes, for the X.509 encodings 4, 12 and 13
    /// (RFC 7296 3.7). `None` for other encodings or a length that is not a multiple of 20.
    pub fn ca_hashes(&self) -> Option<impl Iterator<Item = &[u8]>> {
        let x509 = matches!(
            self.encoding,
            CertEncoding::X509Signature
                | CertEncoding::HashUrlX509Cert
                | CertEncoding::HashUrlX509Bundle
        );
        (x509 && self.authorities.len().is_multiple_of(CA_HASH_LEN))
            .then(|| self.authorities.chunks_exact(CA_HASH_LEN))
    }
}

fn encode_body(encoding: CertEncoding, data: &[u8], out: &mut Vec<u8>) {
    encoding.encode(out);
    out.extend_from_slice(data);
}

impl<'a> Codec<'a> for CertPayload {
    fn encode(&self, out: &mut Vec<u8>) {
        encode_body(self.encoding, &self.data, out);
    }

    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(Self {
            encoding: CertEncoding::read(r)?,
            data: r.rest().to_vec(),
        })
    }
}

impl<'a> Codec<'a> for CertReqPayload {
    fn encode(&self, out: &mut Vec<u8>) {
        encode_body(self.encoding, &self.authorities, out);
    }

    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(Self {
            encoding: CertEncoding::read(r)?,
            authorities: r.rest().to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_and_certreq() {
        let c = CertPayload::x509(vec![0x30, 0x82]);
        assert_eq!(c.to_bytes(), [4, 0x30, 0x82]);
        assert_eq!(CertPayload::read_bytes(&c.to_bytes()).unwrap(), c);
        assert!(CertPayload::read_bytes(&[]).is_err());

        let req = CertReqPayload::x509(&[[1; 20], [2; 20]]);
        let back = CertReqPayload::read_bytes(&req.to_bytes()).unwrap();
        let hashes: Vec<&[u8]> = back.ca_hashes().unwrap().collect();
        assert_eq!(hashes, vec![&[1u8; 20][..], &[2u8; 20][..]]);
        let odd = CertReqPayload {
            encoding: CertEncoding::X509Signature,
            authorities: vec![0; 21],
        };
        assert!(odd.ca_hashes().is_none());
    }
}
