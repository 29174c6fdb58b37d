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
