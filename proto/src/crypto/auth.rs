//! IKEv2 AUTH computations (RFC 7296 2.15), with the IntAuth extension of RFC 9242 3.3.2
//! and the Digital Signature method of RFC 7427.
//!
//! `InitiatorSignedOctets = RealMessage1 | NonceRData | MACedIDForI [| IntAuth]` and the
//! responder's mirror; `MACedIDForI = prf(SK_pi, RestOfInitIDPayload)`. Shared key:
//! `AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>)`.

use super::prf::{PrfAlg, PrfOutput};
use super::sign::{
    PublicKey, SignatureScheme, SigningKey, encode_auth_data, parse_auth_data_scheme,
};
use super::{CryptoError, SecretBytes};

/// The pad string of shared-key AUTH: 17 ASCII characters, no terminator (RFC 7296 2.15).
pub const KEY_PAD: &[u8] = b"Key Pad for IKEv2";

/// `MACedIDFor[I|R] = prf(SK_p[i|r], RestOf[Init|Resp]IDPayload)` where the ID payload
/// body is `ID Type | RESERVED | Identification Data` (the payload without its generic
/// header, RFC 7296 2.15).
pub fn maced_id(prf: PrfAlg, sk_p: &[u8], id_payload_body: &[u8]) -> PrfOutput {
    prf.prf(sk_p, &[id_payload_body])
}

/// The octets a side signs or MACs (RFC 7296 2.15, RFC 9242 3.3.2):
/// `RealMessage | peer's Nonce Data | MACedID [| IntAuth]`.
///
/// `real_message` is that side's first message (IKE_SA_INIT request for the initiator,
/// response for the responder) from the first octet of the IKE header, without the four
/// zero octets of port 4500; the latest version if it was resent (RFC 7296 2.15).
/// `int_auth` comes from [`super::keys::IntAuth::finish`].
pub fn signed_octets(
    real_message: &[u8],
    peer_nonce: &[u8],
    maced_id: &PrfOutput,
    int_auth: Option<&[u8]>,
) -> Vec<u8> {
    let extra = int_auth.map_or(0, <[u8]>::len);
    let mut v = Vec::with_capacity(real_message.len() + peer_nonce.len() + maced_id.len() + extra);
    v.extend_from_slice(real_message);
    v.extend_from_slice(peer_nonce);
    v.extend_from_slice(maced_id.as_bytes());
    if let Some(ia) = int_auth {
        v.extend_from_slice(ia);
    }
    v
}

/// Octets of the IKE header (RFC 7296 3.1) and offset of its Length field.
const IKE_HEADER_LEN: usize = 28;
const IKE_LENGTH_AT: usize = 24;
/// Octets of a generic payload header (RFC 7296 3.2).
const PAYLOAD_HEADER_LEN: usize = 4;

/// The "A" chunk with adjusted lengths, shared by IntAuth (RFC 9242 3.3.2) and the
/// GSA_REKEY signature (RFC 9838 2.4.1.1): `a` runs from the first octet of the IKE header
/// through the Encrypted payload's generic header (no port-4500 zeros); the copy returned
/// has the IKE header Length set to `|A| + p_len` and the Encrypted Payload Length (the
/// last two octets of `a`) set to `p_len + 4`, as if IV, Padding, Pad Length and ICV did
/// not exist. `p_len` is the length of the plaintext inner payloads ("P").
pub fn adjusted_a_chunk(a: &[u8], p_len: usize) -> Result<Vec<u8>, CryptoError> {
    if a.len() < IKE_HEADER_LEN + PAYLOAD_HEADER_LEN {
        return Err(CryptoError::InvalidLength {
            what: "A chunk (IKE header through Encrypted payload header)",
            len: a.len(),
        });
    }
    let total = a
        .len()
        .checked_add(p_len)
        .and_then(|t| u32::try_from(t).ok())
        .ok_or(CryptoError::InvalidLength {
            what: "A | P",
            len: p_len,
        })?;
    let sk_len = p_len
        .checked_add(PAYLOAD_HEADER_LEN)
        .and_then(|l| u16::try_from(l).ok())
        .ok_or(CryptoError::InvalidLength {
            what: "P chunk",
            len: p_len,
        })?;
    let mut adjusted = a.to_vec();
    adjusted[IKE_LENGTH_AT..IKE_LENGTH_AT + 4].copy_from_slice(&total.to_be_bytes());
    let n = adjusted.len();
    adjusted[n - 2..].copy_from_slice(&sk_len.to_be_bytes());
    Ok(adjusted)
}

/// `DataToAuthenticate = A | P` of a GSA_REKEY message (RFC 9838 2.4.1.1), with A's
/// lengths adjusted by [`adjusted_a_chunk`]. `p` holds the inner payloads with the AUTH
/// payload's Authentication Data zeroed after its ASN.1 Length and AlgorithmIdentifier.
pub fn rekey_data_to_authenticate(a: &[u8], p: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut v = adjusted_a_chunk(a, p.len())?;
    v.extend_from_slice(p);
    Ok(v)
}

/// A shared key, pre-processed as `prf(Shared Secret, "Key Pad for IKEv2")` so that the
/// secret itself need not be kept (RFC 7296 2.15). Zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct PaddedPsk {
    prf: PrfAlg,
    key: SecretBytes,
}

impl PaddedPsk {
    pub fn new(prf: PrfAlg, shared_secret: &[u8]) -> Self {
        Self {
            prf,
            key: prf.prf(shared_secret, &[KEY_PAD]).to_secret(),
        }
    }

    /// `AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>)`.
    pub fn auth(&self, signed_octets: &[u8]) -> PrfOutput {
        self.prf.prf(self.key.as_bytes(), &[signed_octets])
    }

    /// Checks a received shared-key AUTH value in constant time.
    pub fn verify(&self, signed_octets: &[u8], received: &[u8]) -> Result<(), CryptoError> {
        if self.auth(signed_octets).ct_eq(received) {
            Ok(())
        } else {
            Err(CryptoError::AuthenticationFailed(
                "shared key AUTH mismatch",
            ))
        }
    }
}

impl core::fmt::Debug for PaddedPsk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PaddedPsk")
            .field("prf", &self.prf)
            .finish_non_exhaustive()
    }
}

/// The Authentication Data of a Digital Signature (14) AUTH payload (RFC 7427 3):
/// `ASN.1 Length | AlgorithmIdentifier | signature over the signed octets`.
pub fn sign_auth(key: &SigningKey, signed_octets: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let sig = key.sign(signed_octets)?;
    Ok(encode_auth_data(key.scheme(), &sig))
}

/// Verifies Digital Signature Authentication Data with the peer's key. `acceptable`
/// decides which schemes local policy allows (e.g. those whose hash we announced in
/// SIGNATURE_HASH_ALGORITHMS, RFC 7427 4). Returns the scheme used.
pub fn verify_auth(
    key: &PublicKey,
    auth_data: &[u8],
    signed_octets: &[u8],
    acceptable: impl Fn(SignatureScheme) -> bool,
) -> Result<SignatureScheme, CryptoError> {
    let (scheme, sig) = parse_auth_data_scheme(auth_data)?;
    if !acceptable(scheme) {
        return Err(CryptoError::AuthenticationFailed(
            "signature algorithm not acceptable",
        ));
    }
    key.verify(scheme, signed_octets, sig)?;
    Ok(scheme)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rekey_data_adjusts_lengths() {
        let mut a = vec![0x11; 24];
        a.extend_from_slice(&[0xff; 4]); // Length as sent, with IV/padding/ICV
        a.extend_from_slice(&[39, 0x00, 0xff, 0xff]); // SK header, first inner AUTH
        let p = [0x22; 50];
        let d = rekey_data_to_authenticate(&a, &p).unwrap();
        assert_eq!(d.len(), 32 + 50);
        assert_eq!(&d[24..28], &82u32.to_be_bytes());
        assert_eq!(&d[28..30], &[39, 0]);
        assert_eq!(&d[30..32], &54u16.to_be_bytes());
        assert_eq!(&d[32..], &p);
        assert!(adjusted_a_chunk(&a[..31], 0).is_err());
        assert!(adjusted_a_chunk(&a, 70_000).is_err());
    }
}
