//! [`SaCipher`] on top of `gikev2_proto::crypto` (ring AEADs and HMAC, aws-lc-rs AES-CBC).
//! This is the one file that names the crypto library.
//!
//! Per-packet work allocates nothing: the AEADs run in place over the caller's buffer.

use gikev2_proto::crypto::cbc::AES_BLOCK_LEN;
use gikev2_proto::crypto::{AeadAlg, AeadKey, AesCbcKey, HmacKey, IntegAlg};
use zeroize::Zeroizing;

use crate::cipher::{CipherError, ESP_HEADER_LEN, SaCipher, implicit_iv, nonce, split};
use crate::sa::EspAlgorithm;

/// The default [`crate::cipher::CipherFactory`].
pub fn new_cipher(alg: EspAlgorithm, keymat: &[u8]) -> Result<Box<dyn SaCipher>, CipherError> {
    let expected = alg.keymat_len();
    if keymat.len() != expected {
        return Err(CipherError::KeyLength {
            expected,
            got: keymat.len(),
        });
    }
    let backend = |_| CipherError::Backend;
    match alg {
        EspAlgorithm::AesGcm16 { key_bits }
        | EspAlgorithm::AesGcm16Iiv { key_bits }
        | EspAlgorithm::AesGmac { key_bits } => {
            let klen = usize::from(key_bits / 8);
            let aead = AeadAlg::aes_gcm(klen).ok_or(CipherError::Unsupported(alg))?;
            Ok(Box::new(Aead::new(aead, keymat, klen, alg)?))
        }
        EspAlgorithm::ChaCha20Poly1305 | EspAlgorithm::ChaCha20Poly1305Iiv => Ok(Box::new(
            Aead::new(AeadAlg::ChaCha20Poly1305, keymat, 32, alg)?,
        )),
        EspAlgorithm::AesCbcHmacSha256 { key_bits } => {
            // RFC 9838 3.4: encryption key leftmost, integrity key after it.
            let (ek, ik) = keymat
                .split_at_checked(usize::from(key_bits / 8))
                .ok_or(CipherError::Length)?;
            Ok(Box::new(CbcHmac {
                enc: AesCbcKey::new(ek).map_err(backend)?,
                mac: HmacKey::new(IntegAlg::HmacSha2_256_128, ik).map_err(backend)?,
            }))
        }
    }
}

/// AES-GCM (RFC 4106), AES-GMAC (RFC 4543), ChaCha20-Poly1305 (RFC 7634), with explicit or
/// implicit (RFC 8750) IV.
struct Aead {
    key: AeadKey,
    /// RFC 4106 8.1 / RFC 4543 5 / RFC 7634 2: the last four octets of the key material.
    salt: Zeroizing<[u8; 4]>,
    implicit: bool,
    /// RFC 4543: authenticate everything, encrypt nothing.
    gmac: bool,
}

impl Aead {
    fn new(
        alg: AeadAlg,
        keymat: &[u8],
        klen: usize,
        esp: EspAlgorithm,
    ) -> Result<Self, CipherError> {
        let (k, s) = keymat.split_at_checked(klen).ok_or(CipherError::Length)?;
        let salt: [u8; 4] = s.try_into().map_err(|_| CipherError::KeyLength {
            expected: klen + 4,
            got: keymat.len(),
        })?;
        Ok(Self {
            key: AeadKey::new(alg, k).map_err(|_| CipherError::Backend)?,
            salt: Zeroizing::new(salt),
            implicit: esp.implicit_iv(),
            gmac: matches!(esp, EspAlgorithm::AesGmac { .. }),
        })
    }

    fn iv_from(&self, head: &[u8]) -> Result<[u8; 8], CipherError> {
        if self.implicit {
            implicit_iv(head)
        } else {
            head.get(ESP_HEADER_LEN..ESP_HEADER_LEN + 8)
                .and_then(|s| <[u8; 8]>::try_from(s).ok())
                .ok_or(CipherError::Length)
        }
    }
}

impl SaCipher for Aead {
    fn iv_len(&self) -> usize {
        if self.implicit { 0 } else { 8 }
    }

    fn icv_len(&self) -> usize {
        AeadAlg::TAG_LEN
    }

    fn align(&self) -> usize {
        4
    }

    fn seal(&self, packet: &mut [u8], iv: &[u8; 8]) -> Result<(), CipherError> {
        let iv_len = self.iv_len();
        let icv_at = packet
            .len()
            .checked_sub(AeadAlg::TAG_LEN)
            .filter(|n| *n >= ESP_HEADER_LEN + iv_len)
            .ok_or(CipherError::Length)?;
        if !self.implicit {
            packet
                .get_mut(ESP_HEADER_LEN..ESP_HEADER_LEN + 8)
                .ok_or(CipherError::Length)?
                .copy_from_slice(iv);
        }
        let n = nonce(&self.salt, &self.iv_from(packet)?);
        let (front, icv) = packet.split_at_mut(icv_at);
        let tag = if self.gmac {
            // RFC 4543 3.3 with ERRATA.md: AAD = SPI, SN, IV, payload .. next header.
            self.key.seal_in_place(&n, front, &mut [])
        } else {
            // RFC 4106 5 / RFC 7634 2.1: AAD = SPI | SN.
            let (head, body) = front.split_at_mut(ESP_HEADER_LEN + iv_len);
            let aad = head.get(..ESP_HEADER_LEN).ok_or(CipherError::Length)?;
            self.key.seal_in_place(&n, aad, body)
        }
        .map_err(|_| CipherError::Backend)?;
        icv.copy_from_slice(&tag);
        Ok(())
    }

    fn open(&self, packet: &mut [u8]) -> Result<(), CipherError> {
        let iv_len = self.iv_len();
        let icv_at = packet
            .len()
            .checked_sub(AeadAlg::TAG_LEN)
            .filter(|n| *n >= ESP_HEADER_LEN + iv_len)
            .ok_or(CipherError::Length)?;
        let n = nonce(&self.salt, &self.iv_from(packet)?);
        if self.gmac {
            let (front, icv) = packet.split_at_mut(icv_at);
            self.key
                .open_in_place(&n, front, icv)
                .map_err(|_| CipherError::Integrity)?;
        } else {
            let (head, ct_and_tag) = packet.split_at_mut(ESP_HEADER_LEN + iv_len);
            let aad = head.get(..ESP_HEADER_LEN).ok_or(CipherError::Length)?;
            self.key
                .open_in_place(&n, aad, ct_and_tag)
                .map_err(|_| CipherError::Integrity)?;
        }
        Ok(())
    }
}

/// AES-CBC (RFC 3602) with HMAC-SHA2-256-128 (RFC 4868), encrypt-then-MAC (RFC 4303 3.3.2).
struct CbcHmac {
    enc: AesCbcKey,
    mac: HmacKey,
}

impl CbcHmac {
    /// RFC 3602 3 needs unpredictable IVs. We encrypt the unique counter-based IV under the
    /// SA's key (NIST SP 800-38A Appendix C, first method): unique inputs give
    /// unpredictable outputs without an RNG on the data path.
    fn cbc_iv(&self, counter_iv: &[u8; 8]) -> Result<[u8; AES_BLOCK_LEN], CipherError> {
        let mut block = [0u8; AES_BLOCK_LEN];
        block[..8].copy_from_slice(counter_iv);
        self.enc
            .encrypt_in_place(&[0u8; AES_BLOCK_LEN], &mut block)
            .map_err(|_| CipherError::Backend)?;
        Ok(block)
    }
}

impl SaCipher for CbcHmac {
    fn iv_len(&self) -> usize {
        AES_BLOCK_LEN
    }

    fn icv_len(&self) -> usize {
        self.mac.icv_len()
    }

    fn align(&self) -> usize {
        AES_BLOCK_LEN
    }

    fn seal(&self, packet: &mut [u8], iv: &[u8; 8]) -> Result<(), CipherError> {
        let icv_len = self.icv_len();
        let (head, body, _) = split(packet, AES_BLOCK_LEN, icv_len)?;
        let cbc_iv = self.cbc_iv(iv)?;
        head.get_mut(ESP_HEADER_LEN..)
            .ok_or(CipherError::Length)?
            .copy_from_slice(&cbc_iv);
        self.enc
            .encrypt_in_place(&cbc_iv, body)
            .map_err(|_| CipherError::Length)?;
        let icv_at = packet.len() - icv_len;
        let (front, icv) = packet.split_at_mut(icv_at);
        let tag = self.mac.sign(front);
        icv.copy_from_slice(tag.as_bytes());
        Ok(())
    }

    fn open(&self, packet: &mut [u8]) -> Result<(), CipherError> {
        let icv_len = self.icv_len();
        let icv_at = packet
            .len()
            .checked_sub(icv_len)
            .ok_or(CipherError::Length)?;
        let (front, icv) = packet.split_at(icv_at);
        // RFC 4303 3.4.4: verify before decrypting.
        self.mac
            .verify(front, icv)
            .map_err(|_| CipherError::Integrity)?;
        let (head, body, _) = split(packet, AES_BLOCK_LEN, icv_len)?;
        let cbc_iv: [u8; AES_BLOCK_LEN] = head
            .get(ESP_HEADER_LEN..)
            .and_then(|s| s.try_into().ok())
            .ok_or(CipherError::Length)?;
        self.enc
            .decrypt_in_place(&cbc_iv, body)
            .map_err(|_| CipherError::Length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        hex::decode(s).unwrap()
    }

    /// RFC 7634 Appendix A: the ESP example, sealed through the SaCipher seam.
    #[test]
    fn rfc7634_appendix_a_esp_example() {
        let keymat: Vec<u8> = (0x80u8..=0xa3).collect();
        let c = new_cipher(EspAlgorithm::ChaCha20Poly1305, &keymat).unwrap();
        let plaintext = unhex(
            "45 00 00 54 a6 f2 00 00 40 01 e7 78 c6 33 64 05
             c0 00 02 05 08 00 5b 7a 3a 08 00 00 55 3b ec 10
             00 07 36 27 08 09 0a 0b 0c 0d 0e 0f 10 11 12 13
             14 15 16 17 18 19 1a 1b 1c 1d 1e 1f 20 21 22 23
             24 25 26 27 28 29 2a 2b 2c 2d 2e 2f 30 31 32 33
             34 35 36 37 01 02 02 04",
        );
        let mut pkt = unhex("01 02 03 04 00 00 00 05");
        pkt.extend_from_slice(&[0; 8]);
        pkt.extend_from_slice(&plaintext);
        pkt.extend_from_slice(&[0; 16]);
        let iv = [0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17];
        c.seal(&mut pkt, &iv).unwrap();
        // The ESP part of the RFC's final packet (after the 20-octet IPv4 header).
        let want = unhex(
            "01 02 03 04 00 00 00 05 10 11 12 13
             14 15 16 17 24 03 94 28 b9 7f 41 7e 3c 13 75 3a
             4f 05 08 7b 67 c3 52 e6 a7 fa b1 b9 82 d4 66 ef
             40 7a e5 c6 14 ee 80 99 d5 28 44 eb 61 aa 95 df
             ab 4c 02 f7 2a a7 1e 7c 4c 4f 64 c9 be fe 2f ac
             c6 38 e8 f3 cb ec 16 3f ac 46 9b 50 27 73 f6 fb
             94 e6 64 da 91 65 b8 28 29 f6 41 e0 76 aa a8 26
             6b 7f b0 f7 b1 1b 36 99 07 e1 ad 43",
        );
        assert_eq!(hex::encode(&pkt), hex::encode(&want));
        c.open(&mut pkt).unwrap();
        assert_eq!(&pkt[16..16 + plaintext.len()], &plaintext[..]);
    }

    /// AES-GCM-128 test case 3 of the GCM specification (McGrew & Viega), the vector set
    /// RFC 4106 builds on, with its IV split as salt (4) | IV (8) and no AAD: we check the
    /// AEAD arithmetic with our nonce layout through `seal_in_place` directly, since ESP
    /// always has an 8-octet AAD.
    #[test]
    fn gcm_spec_test_case_3_nonce_layout() {
        let key = unhex("feffe9928665731c6d6a8f9467308308");
        let iv96 = unhex("cafebabefacedbaddecaf888");
        let salt: [u8; 4] = iv96[..4].try_into().unwrap();
        let iv: [u8; 8] = iv96[4..].try_into().unwrap();
        let mut pt = unhex(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
             1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
        );
        let k = AeadKey::new(AeadAlg::Aes128Gcm, &key).unwrap();
        let tag = k.seal_in_place(&nonce(&salt, &iv), &[], &mut pt).unwrap();
        assert_eq!(
            hex::encode(&pt),
            "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e\
             21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985"
        );
        assert_eq!(hex::encode(tag), "4d5c2af327cd64a62cf35abd2ba6fab4");
    }

    /// GCM spec test case 4 (60-octet plaintext, 20-octet AAD), as ESP would lay it out if
    /// the AAD were SPI|SN: checks AAD handling through the seam with the spec's key/nonce.
    #[test]
    fn gcm_spec_test_case_4_with_aad() {
        let key = unhex("feffe9928665731c6d6a8f9467308308");
        let iv96 = unhex("cafebabefacedbaddecaf888");
        let aad = unhex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let mut pt = unhex(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
             1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        );
        let k = AeadKey::new(AeadAlg::Aes128Gcm, &key).unwrap();
        let n: [u8; 12] = iv96.try_into().unwrap();
        let tag = k.seal_in_place(&n, &aad, &mut pt).unwrap();
        assert_eq!(hex::encode(tag), "5bc94fbc3221a5db94fae95ae7121a47");
    }

    /// GMAC (RFC 4543) over an ESP packet built from the GCM spec's test case 4 material:
    /// nothing is encrypted, and the ICV equals GCM's tag with the whole packet as AAD
    /// (IV included, ERRATA.md) and an empty plaintext.
    #[test]
    fn gmac_authenticates_iv_and_payload_in_clear() {
        let mut keymat = unhex("feffe9928665731c6d6a8f9467308308");
        keymat.extend_from_slice(&unhex("cafebabe"));
        let c = new_cipher(EspAlgorithm::AesGmac { key_bits: 128 }, &keymat).unwrap();
        let mut pkt = unhex("00000001 00000007 0000000000000000 68656c6c6f 01 01 04");
        pkt.extend_from_slice(&[0u8; 16]);
        let clear = pkt[..24].to_vec();
        let iv = unhex("facedbaddecaf888");
        c.seal(&mut pkt, &iv.clone().try_into().unwrap()).unwrap();
        // Payload left in clear, IV written.
        assert_eq!(&pkt[16..24], &clear[16..24]);
        assert_eq!(&pkt[8..16], &iv[..]);
        // ICV = GCM tag with AAD = SPI..next header (IV included) and empty plaintext.
        let k = AeadKey::new(AeadAlg::Aes128Gcm, &keymat[..16]).unwrap();
        let n: [u8; 12] = unhex("cafebabefacedbaddecaf888").try_into().unwrap();
        let want = k.seal_in_place(&n, &pkt[..24], &mut []).unwrap();
        assert_eq!(&pkt[24..], &want[..]);
        c.open(&mut pkt.clone()).unwrap();
        // Flipping a bit of the IV breaks the ICV (the IV is authenticated).
        let mut bad = pkt.clone();
        bad[9] ^= 1;
        assert_eq!(c.open(&mut bad), Err(CipherError::Integrity));
        let mut bad = pkt.clone();
        bad[18] ^= 1;
        assert_eq!(c.open(&mut bad), Err(CipherError::Integrity));
    }

    fn roundtrip_and_tamper(alg: EspAlgorithm) {
        let keymat: Vec<u8> = (0..alg.keymat_len() as u8).collect();
        let c = new_cipher(alg, &keymat).unwrap();
        let hdr = 8 + c.iv_len();
        let body: Vec<u8> = (0..32u8).collect();
        let mut pkt = vec![0, 0, 0x10, 0x01, 0, 0, 0, 9];
        pkt.resize(hdr, 0);
        pkt.extend_from_slice(&body);
        pkt.resize(hdr + body.len() + c.icv_len(), 0);
        c.seal(&mut pkt, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        if !matches!(alg, EspAlgorithm::AesGmac { .. }) {
            assert_ne!(&pkt[hdr..hdr + body.len()], &body[..], "{alg:?} encrypts");
        }
        let sealed = pkt.clone();
        c.open(&mut pkt).unwrap();
        assert_eq!(&pkt[hdr..hdr + body.len()], &body[..], "{alg:?}");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x80;
            assert_eq!(
                c.open(&mut bad),
                Err(CipherError::Integrity),
                "{alg:?} byte {i}"
            );
        }
        for n in 0..sealed.len() {
            let mut short = sealed[..n].to_vec();
            assert!(c.open(&mut short).is_err());
        }
    }

    #[test]
    fn every_algorithm_round_trips_and_detects_tampering() {
        for alg in [
            EspAlgorithm::AesGcm16 { key_bits: 128 },
            EspAlgorithm::AesGcm16 { key_bits: 256 },
            EspAlgorithm::AesGcm16Iiv { key_bits: 128 },
            EspAlgorithm::AesGmac { key_bits: 256 },
            EspAlgorithm::ChaCha20Poly1305,
            EspAlgorithm::ChaCha20Poly1305Iiv,
            EspAlgorithm::AesCbcHmacSha256 { key_bits: 128 },
            EspAlgorithm::AesCbcHmacSha256 { key_bits: 256 },
        ] {
            roundtrip_and_tamper(alg);
        }
    }

    #[test]
    fn implicit_iv_is_zero_then_sn() {
        // RFC 8750 Figure 1: the nonce is salt | 0000 | SN; no IV on the wire.
        let keymat: Vec<u8> = (0..20u8).collect();
        let c = new_cipher(EspAlgorithm::AesGcm16Iiv { key_bits: 128 }, &keymat).unwrap();
        assert_eq!(c.iv_len(), 0);
        let mut pkt = vec![0, 0, 0, 1, 0, 0, 0, 42, 0xaa, 0xbb, 2, 4];
        pkt.extend_from_slice(&[0; 16]);
        c.seal(&mut pkt, &[9; 8]).unwrap();
        let k = AeadKey::new(AeadAlg::Aes128Gcm, &keymat[..16]).unwrap();
        let n = nonce(&[16, 17, 18, 19], &[0, 0, 0, 0, 0, 0, 0, 42]);
        let mut body = vec![0xaa, 0xbb, 2, 4];
        let tag = k.seal_in_place(&n, &pkt[..8], &mut body).unwrap();
        assert_eq!(&pkt[8..12], &body[..]);
        assert_eq!(&pkt[12..], &tag[..]);
    }

    #[test]
    fn wrong_key_lengths_are_refused() {
        assert_eq!(
            new_cipher(EspAlgorithm::AesGcm16 { key_bits: 128 }, &[0; 16]).err(),
            Some(CipherError::KeyLength {
                expected: 20,
                got: 16
            })
        );
        assert!(new_cipher(EspAlgorithm::AesGcm16 { key_bits: 192 }, &[0; 28]).is_err());
    }
}
