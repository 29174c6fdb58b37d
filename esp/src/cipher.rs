//! The cipher seam of the ESP engine (STYLE Q4/R4): one small trait, [`SaCipher`], that sees an
//! ESP packet laid out in the caller's buffer and protects or verifies it in place. The framing
//! (header, padding, trailer) lives in `packet.rs`; which bytes are encrypted and which are
//! authenticated is the algorithm's business and lives behind this trait:
//!
//! | algorithm | nonce | AAD | encrypted |
//! |---|---|---|---|
//! | AES-GCM (RFC 4106 4, 5) | salt(4) \| IV(8) | SPI \| SN | payload..next header |
//! | ChaCha20-Poly1305 (RFC 7634 2, 2.1) | salt(4) \| IV(8) | SPI \| SN | payload..next header |
//! | AES-GMAC (RFC 4543 3; ERRATA.md) | salt(4) \| IV(8) | SPI \| SN \| IV \| payload..next header | nothing |
//! | implicit IV (RFC 8750 4) | salt(4) \| 0(4) \| SN(4) | as above, IV not on the wire | as above |
//! | AES-CBC + HMAC-SHA2-256-128 (RFC 3602, RFC 4868) | IV(16) on the wire | ICV = HMAC(SPI..ciphertext) truncated to 16 | payload..next header |
//!
//! The backend that implements it on `gikev2_proto::crypto` is `backend.rs`; an engine can be
//! given another factory ([`CipherFactory`]), e.g. a null cipher for load tests.

use crate::sa::EspAlgorithm;

/// ESP header: SPI (4) and Sequence Number (4) (RFC 4303 2).
pub const ESP_HEADER_LEN: usize = 8;

/// Errors of the cipher seam.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CipherError {
    /// The ICV did not verify (RFC 4303 3.4.4: discard, auditable).
    #[error("integrity check failed")]
    Integrity,
    /// The packet is shorter than header + IV + ICV, or the body is not block aligned.
    #[error("packet too short or misaligned for the cipher")]
    Length,
    #[error("key material has the wrong length: expected {expected}, got {got}")]
    KeyLength { expected: usize, got: usize },
    #[error("algorithm not supported by this cipher backend: {0:?}")]
    Unsupported(EspAlgorithm),
    #[error("cipher backend failure")]
    Backend,
}

/// One SA's keys, ready to protect packets.
///
/// `packet` always spans the whole ESP packet:
/// `SPI(4) | SN(4) | IV(iv_len) | body | ICV(icv_len)`, where body is payload, padding,
/// pad length and next header (RFC 4303 2). Implementations must not panic on any length:
/// they return [`CipherError::Length`].
pub trait SaCipher: Send + Sync {
    /// IV octets carried in each packet: 8 for AES-GCM/GMAC/ChaCha20-Poly1305, 0 with implicit
    /// IV (RFC 8750), 16 for AES-CBC.
    fn iv_len(&self) -> usize;
    /// ICV octets at the end of each packet.
    fn icv_len(&self) -> usize;
    /// The body (payload .. next header) must be a multiple of this (RFC 4303 2.4): 4 for
    /// stream-like modes, the block size for CBC.
    fn align(&self) -> usize;
    /// Fills the IV field from `iv` (the 8-octet counter-based IV of RFC 6054 3; with implicit
    /// IV it is 0|SN and not written), then encrypts the body and writes the ICV.
    fn seal(&self, packet: &mut [u8], iv: &[u8; 8]) -> Result<(), CipherError>;
    /// Verifies the ICV and decrypts the body in place. On error the body content is
    /// unspecified.
    fn open(&self, packet: &mut [u8]) -> Result<(), CipherError>;
}

/// Builds the cipher of an SA from its algorithm and key material (RFC 9838 3.4: encryption
/// key, salt included, from the leftmost octets, integrity key from the rest).
pub type CipherFactory = fn(EspAlgorithm, &[u8]) -> Result<Box<dyn SaCipher>, CipherError>;

/// An ESP packet split into header+IV, body and ICV.
pub(crate) type Parts<'a> = (&'a mut [u8], &'a mut [u8], &'a mut [u8]);

/// Splits `packet` into (header+IV, body, ICV) for a cipher with these lengths.
pub(crate) fn split(
    packet: &mut [u8],
    iv_len: usize,
    icv_len: usize,
) -> Result<Parts<'_>, CipherError> {
    let min = ESP_HEADER_LEN + iv_len + icv_len;
    if packet.len() < min {
        return Err(CipherError::Length);
    }
    let body_end = packet.len() - icv_len;
    let (front, icv) = packet.split_at_mut(body_end);
    let (head, body) = front.split_at_mut(ESP_HEADER_LEN + iv_len);
    Ok((head, body, icv))
}

/// The nonce of RFC 4106 4 / RFC 7634 2 / RFC 4543 3.1: salt | IV.
pub(crate) fn nonce(salt: &[u8; 4], iv: &[u8; 8]) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(salt);
    n[4..].copy_from_slice(iv);
    n
}

/// The implicit IV of RFC 8750 4 (Figure 1): four zero octets, then the 32-bit SN.
pub(crate) fn implicit_iv(header: &[u8]) -> Result<[u8; 8], CipherError> {
    let sn = header.get(4..8).ok_or(CipherError::Length)?;
    let mut iv = [0u8; 8];
    iv[4..].copy_from_slice(sn);
    Ok(iv)
}
