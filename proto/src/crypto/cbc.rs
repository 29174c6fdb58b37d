//! AES-CBC without padding (the caller pads): ENCR_AES_CBC for the SK payload
//! (RFC 7296 3.14) and ESP (RFC 3602), through aws-lc-rs.

use super::CryptoError;
use aws_lc_rs::cipher::{
    AES_128, AES_192, AES_256, DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext,
    UnboundCipherKey,
};
use aws_lc_rs::iv::FixedLength;

/// AES block (and IV) length.
pub const AES_BLOCK_LEN: usize = 16;

/// An AES-CBC key of 128, 192 or 256 bits. `Debug` prints the key length only.
pub struct AesCbcKey {
    key_len: usize,
    enc: EncryptingKey,
    dec: DecryptingKey,
}

impl AesCbcKey {
    /// A key of 16, 24 or 32 octets.
    pub fn new(key: &[u8]) -> Result<Self, CryptoError> {
        let alg = match key.len() {
            16 => &AES_128,
            24 => &AES_192,
            32 => &AES_256,
            len => {
                return Err(CryptoError::InvalidKeyLength {
                    what: "AES-CBC key",
                    len,
                });
            }
        };
        let bad = |_| CryptoError::InvalidKeyLength {
            what: "AES-CBC key",
            len: key.len(),
        };
        let enc = EncryptingKey::cbc(UnboundCipherKey::new(alg, key).map_err(bad)?).map_err(bad)?;
        let dec = DecryptingKey::cbc(UnboundCipherKey::new(alg, key).map_err(bad)?).map_err(bad)?;
        Ok(Self {
            key_len: key.len(),
            enc,
            dec,
        })
    }

    pub fn key_len(&self) -> usize {
        self.key_len
    }

    /// Encrypts `buf` in place with `iv`. `buf.len()` must be a multiple of 16. The caller
    /// chooses a fresh unpredictable IV per message (RFC 7296 3.14).
    pub fn encrypt_in_place(
        &self,
        iv: &[u8; AES_BLOCK_LEN],
        buf: &mut [u8],
    ) -> Result<(), CryptoError> {
        check_blocks(buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        let ctx = EncryptionContext::Iv128(FixedLength::from(iv));
        self.enc
            .less_safe_encrypt(buf, ctx)
            .map(|_| ())
            .map_err(|_| CryptoError::Internal("AES-CBC encrypt"))
    }

    /// Decrypts `buf` in place with `iv`. `buf.len()` must be a multiple of 16.
    pub fn decrypt_in_place(
        &self,
        iv: &[u8; AES_BLOCK_LEN],
        buf: &mut [u8],
    ) -> Result<(), CryptoError> {
        check_blocks(buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        let ctx = DecryptionContext::Iv128(FixedLength::from(iv));
        self.dec
            .decrypt(buf, ctx)
            .map(|_| ())
            .map_err(|_| CryptoError::Internal("AES-CBC decrypt"))
    }
}

fn check_blocks(len: usize) -> Result<(), CryptoError> {
    if len.is_multiple_of(AES_BLOCK_LEN) {
        Ok(())
    } else {
        Err(CryptoError::InvalidLength {
            what: "AES-CBC data (not a multiple of the block size)",
            len,
        })
    }
}

impl core::fmt::Debug for AesCbcKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AesCbcKey")
            .field("key_bits", &(self.key_len * 8))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 3602 4, Case #2: AES-128-CBC, two blocks.
    #[test]
    fn rfc3602_case_2() {
        let key = hex::decode("c286696d887c9aa0611bbb3e2025a45a").unwrap();
        let iv: [u8; 16] = hex::decode("562e17996d093d28ddb3ba695a2e6f58")
            .unwrap()
            .try_into()
            .unwrap();
        let pt = hex::decode("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
            .unwrap();
        let ct = hex::decode("d296cd94c2cccf8a3a863028b5e1dc0a7586602d253cfff91b8266bea6d61ab1")
            .unwrap();
        let k = AesCbcKey::new(&key).unwrap();
        let mut buf = pt.clone();
        k.encrypt_in_place(&iv, &mut buf).unwrap();
        assert_eq!(buf, ct);
        k.decrypt_in_place(&iv, &mut buf).unwrap();
        assert_eq!(buf, pt);
    }

    #[test]
    fn lengths() {
        for kl in [16, 24, 32] {
            let k = AesCbcKey::new(&vec![3; kl]).unwrap();
            assert_eq!(k.key_len(), kl);
            let mut b = vec![0u8; 17];
            assert!(k.encrypt_in_place(&[0; 16], &mut b).is_err());
            assert!(k.decrypt_in_place(&[0; 16], &mut b).is_err());
            let mut e: [u8; 0] = [];
            k.encrypt_in_place(&[0; 16], &mut e).unwrap();
            assert_eq!(
                format!("{k:?}"),
                format!("AesCbcKey {{ key_bits: {}, .. }}", kl * 8)
            );
        }
        assert!(AesCbcKey::new(&[0; 20]).is_err());
    }
}
