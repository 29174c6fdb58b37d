//! The IKE SA key schedule (RFC 7296 2.14, 2.18; RFC 9370 2.2.2, 2.2.4), the IntAuth
//! values of IKE_INTERMEDIATE (RFC 9242 3.3.2), the G-IKEv2 default key wrap key
//! (RFC 9838 3.1.1) and the splitting of downloaded SA keying material (RFC 9838 3.4).

use super::integ::IntegAlg;
use super::keywrap::KeyWrapAlg;
use super::prf::{PrfAlg, PrfOutput};
use super::suite::{EncrAlg, IkeSuite};
use super::{CryptoError, SecretBytes};

pub use super::suite::{data_sa_keymat_len, rekey_sa_keymat_len};

/// Length of an IKE SPI.
pub const IKE_SPI_LEN: usize = 8;

/// The label of the default KWK (RFC 9838 3.1.1): 20 ASCII characters, no terminator.
pub const KEY_WRAP_LABEL: &[u8] = b"Key Wrap for G-IKEv2";

/// `SKEYSEED = prf(Ni | Nr, g^ir)` (RFC 7296 2.14). `g_ir` is the shared secret of the
/// IKE_SA_INIT key exchange as the method encodes it.
pub fn skeyseed(prf: PrfAlg, ni: &[u8], nr: &[u8], g_ir: &[u8]) -> PrfOutput {
    let mut key = SecretBytes::zeroed(0);
    key.extend_from_slice(ni);
    key.extend_from_slice(nr);
    prf.prf(key.as_bytes(), &[g_ir])
}

/// The seven secrets of an IKE SA. Each is zeroized on drop; `Debug` prints lengths only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IkeKeys {
    prf: PrfAlg,
    pub sk_d: SecretBytes,
    pub sk_ai: SecretBytes,
    pub sk_ar: SecretBytes,
    pub sk_ei: SecretBytes,
    pub sk_er: SecretBytes,
    pub sk_pi: SecretBytes,
    pub sk_pr: SecretBytes,
}

impl IkeKeys {
    /// `{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} =
    /// prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)` with the lengths of `suite` (RFC 7296 2.14;
    /// SK_e with salt per RFC 5282 7.1 / RFC 7634 3; SK_a empty with AEAD).
    pub fn from_skeyseed(
        suite: &IkeSuite,
        skeyseed: &[u8],
        ni: &[u8],
        nr: &[u8],
        spi_i: &[u8; IKE_SPI_LEN],
        spi_r: &[u8; IKE_SPI_LEN],
    ) -> Result<Self, CryptoError> {
        let prf = suite.prf;
        let stream = prf.prf_plus(skeyseed, &[ni, nr, spi_i, spi_r], suite.ike_keymat_len())?;
        let mut at = 0;
        let mut take = |len: usize| {
            let s = stream
                .copy_range(at, len)
                .ok_or(CryptoError::Internal("IKE key schedule length"));
            at += len;
            s
        };
        Ok(Self {
            prf,
            sk_d: take(suite.sk_p_len())?,
            sk_ai: take(suite.sk_a_len())?,
            sk_ar: take(suite.sk_a_len())?,
            sk_ei: take(suite.sk_e_len())?,
            sk_er: take(suite.sk_e_len())?,
            sk_pi: take(suite.sk_p_len())?,
            sk_pr: take(suite.sk_p_len())?,
        })
    }

    /// The keys after IKE_SA_INIT (RFC 7296 2.14).
    pub fn initial(
        suite: &IkeSuite,
        ni: &[u8],
        nr: &[u8],
        g_ir: &[u8],
        spi_i: &[u8; IKE_SPI_LEN],
        spi_r: &[u8; IKE_SPI_LEN],
    ) -> Result<Self, CryptoError> {
        let seed = skeyseed(suite.prf, ni, nr, g_ir);
        Self::from_skeyseed(suite, seed.as_bytes(), ni, nr, spi_i, spi_r)
    }

    /// The keys after additional key exchange n in IKE_INTERMEDIATE (RFC 9370 2.2.2):
    /// `SKEYSEED(n) = prf(SK_d(n-1), SK(n) | Ni | Nr)`, then the seven keys from
    /// `prf+(SKEYSEED(n), Ni | Nr | SPIi | SPIr)`. `self` is generation n-1.
    pub fn after_additional_ke(
        &self,
        suite: &IkeSuite,
        sk_n: &[u8],
        ni: &[u8],
        nr: &[u8],
        spi_i: &[u8; IKE_SPI_LEN],
        spi_r: &[u8; IKE_SPI_LEN],
    ) -> Result<Self, CryptoError> {
        let seed = suite.prf.prf(self.sk_d.as_bytes(), &[sk_n, ni, nr]);
        Self::from_skeyseed(suite, seed.as_bytes(), ni, nr, spi_i, spi_r)
    }

    /// The keys of the IKE SA that replaces `self` in a CREATE_CHILD_SA rekey
    /// (RFC 7296 2.18), with the new SPIs and nonces and the new suite.
    ///
    /// `secrets` are the shared secrets of the rekey: `SK(0)` from the CREATE_CHILD_SA KE
    /// payloads, then `SK(1)..SK(n)` from IKE_FOLLOWUP_KE exchanges (RFC 9370 2.2.4):
    /// `SKEYSEED = prf(SK_d(old), SK(0) | Ni | Nr | SK(1) | ... | SK(n))`, which is RFC 7296
    /// 2.18's `prf(SK_d (old), g^ir (new) | Ni | Nr)` when there is one. The PRF is the old
    /// SA's (RFC 7296 2.18); the seven keys use the new suite's PRF.
    pub fn rekeyed(
        &self,
        new_suite: &IkeSuite,
        secrets: &[&[u8]],
        ni: &[u8],
        nr: &[u8],
        new_spi_i: &[u8; IKE_SPI_LEN],
        new_spi_r: &[u8; IKE_SPI_LEN],
    ) -> Result<Self, CryptoError> {
        let (first, rest) = secrets.split_first().ok_or(CryptoError::NoProposalChosen(
            "IKE SA rekey without a key exchange (RFC 7296 2.18)",
        ))?;
        let mut parts: Vec<&[u8]> = Vec::with_capacity(3 + rest.len());
        parts.push(first);
        parts.push(ni);
        parts.push(nr);
        parts.extend_from_slice(rest);
        let seed = self.prf.prf(self.sk_d.as_bytes(), &parts);
        Self::from_skeyseed(new_suite, seed.as_bytes(), ni, nr, new_spi_i, new_spi_r)
    }

    /// These keys with a post-quantum preshared key mixed in (RFC 8784 3): `self` holds
    /// SK_d', SK_pi', SK_pr' and the result `SK_d = prf+(PPK, SK_d')`, `SK_pi =
    /// prf+(PPK, SK_pi')`, `SK_pr = prf+(PPK, SK_pr')`, each as long as its primed input;
    /// SK_a and SK_e are unchanged. With IKE_INTERMEDIATE key exchanges `self` is the
    /// generation after the last one (RFC 9370 2.2.2 updates all seven keys at each step;
    /// the PPK is applied once, to what IKE_AUTH would otherwise use). Only for the initial
    /// IKE SA: a rekey starts from the already-mixed SK_d and MUST NOT mix again (RFC 8784 3).
    pub fn with_ppk(&self, ppk: &[u8]) -> Result<Self, CryptoError> {
        let mix = |k: &SecretBytes| self.prf.prf_plus(ppk, &[k.as_bytes()], k.len());
        Ok(Self {
            prf: self.prf,
            sk_d: mix(&self.sk_d)?,
            sk_ai: self.sk_ai.clone(),
            sk_ar: self.sk_ar.clone(),
            sk_ei: self.sk_ei.clone(),
            sk_er: self.sk_er.clone(),
            sk_pi: mix(&self.sk_pi)?,
            sk_pr: mix(&self.sk_pr)?,
        })
    }

    /// The PRF these keys were derived with (and that uses SK_d, SK_pi, SK_pr).
    pub fn prf(&self) -> PrfAlg {
        self.prf
    }

    /// SK_ei or SK_er: the encryption key (with salt) protecting messages sent by the
    /// original initiator (`true`) or responder (RFC 7296 2.14).
    pub fn sk_e(&self, from_initiator: bool) -> &SecretBytes {
        if from_initiator {
            &self.sk_ei
        } else {
            &self.sk_er
        }
    }

    /// SK_ai or SK_ar (empty with AEAD).
    pub fn sk_a(&self, from_initiator: bool) -> &SecretBytes {
        if from_initiator {
            &self.sk_ai
        } else {
            &self.sk_ar
        }
    }

    /// SK_pi or SK_pr: the key for the AUTH computation of that side (RFC 7296 2.15).
    pub fn sk_p(&self, from_initiator: bool) -> &SecretBytes {
        if from_initiator {
            &self.sk_pi
        } else {
            &self.sk_pr
        }
    }

    /// The default key wrap key of a unicast IKE SA (RFC 9838 3.1.1):
    /// `GSK_w = prf+(SK_d, "Key Wrap for G-IKEv2")`, as long as the KWA's key.
    pub fn default_kwk(&self, kwa: KeyWrapAlg) -> Result<SecretBytes, CryptoError> {
        self.prf
            .prf_plus(self.sk_d.as_bytes(), &[KEY_WRAP_LABEL], kwa.key_len())
    }

    /// Child SA keying material (RFC 7296 2.17): `KEYMAT = prf+(SK_d, Ni | Nr)`, or
    /// `prf+(SK_d, g^ir (new) | Ni | Nr)` with a key exchange.
    pub fn child_keymat(
        &self,
        g_ir: Option<&[u8]>,
        ni: &[u8],
        nr: &[u8],
        len: usize,
    ) -> Result<SecretBytes, CryptoError> {
        match g_ir {
            Some(g) => self.prf.prf_plus(self.sk_d.as_bytes(), &[g, ni, nr], len),
            None => self.prf.prf_plus(self.sk_d.as_bytes(), &[ni, nr], len),
        }
    }
}

/// The accumulated IntAuth of IKE_INTERMEDIATE exchanges (RFC 9242 3.3.2):
/// `IntAuth_in = prf(SK_pin, IntAuth_i(n-1) | IntAuth_inA [| IntAuth_inP])` and the same for
/// the responder; `IntAuth = IntAuth_iN | IntAuth_rN | IKE_AUTH_MID`.
#[derive(Debug, Clone)]
pub struct IntAuth {
    prf: PrfAlg,
    i: Option<PrfOutput>,
    r: Option<PrfOutput>,
}

impl IntAuth {
    pub fn new(prf: PrfAlg) -> Self {
        Self {
            prf,
            i: None,
            r: None,
        }
    }

    /// Adds one IKE_INTERMEDIATE message: the request (`from_initiator`) or the response.
    ///
    /// `a` is the message from the first octet of the IKE header through the generic header
    /// of the Encrypted payload (the AEAD associated data of RFC 5282 5.1; for a message
    /// received in fragments, the reassembled message's SK header, RFC 9242 3.3.2). `p` is
    /// the plaintext inner payloads (empty when the Encrypted payload is empty). The Length
    /// fields in `a` are replaced here by the adjusted lengths of RFC 9242 3.3.2 (IKE
    /// Length = |A| + |P|, SK Payload Length = |P| + 4), whatever `a` carries. `sk_p` is
    /// SK_pi or SK_pr of the key generation that protected this exchange.
    pub fn absorb(
        &mut self,
        from_initiator: bool,
        sk_p: &[u8],
        a: &[u8],
        p: &[u8],
    ) -> Result<(), CryptoError> {
        let adjusted = super::auth::adjusted_a_chunk(a, p.len())?;
        let slot = if from_initiator {
            &mut self.i
        } else {
            &mut self.r
        };
        let next = match slot.as_ref() {
            Some(prev) => self.prf.prf(sk_p, &[prev.as_bytes(), &adjusted, p]),
            None => self.prf.prf(sk_p, &[&adjusted, p]),
        };
        *slot = Some(next);
        Ok(())
    }

    /// True before any IKE_INTERMEDIATE message was absorbed.
    pub fn is_empty(&self) -> bool {
        self.i.is_none() && self.r.is_none()
    }

    /// `IntAuth_iN | IntAuth_rN | IKE_AUTH_MID`, or `None` if no IKE_INTERMEDIATE exchange
    /// completed (then nothing is appended to the signed octets). Fails if only one side
    /// of an exchange was absorbed.
    pub fn finish(&self, ike_auth_mid: u32) -> Result<Option<Vec<u8>>, CryptoError> {
        match (&self.i, &self.r) {
            (None, None) => Ok(None),
            (Some(i), Some(r)) => {
                let mut v = Vec::with_capacity(i.len() + r.len() + 4);
                v.extend_from_slice(i.as_bytes());
                v.extend_from_slice(r.as_bytes());
                v.extend_from_slice(&ike_auth_mid.to_be_bytes());
                Ok(Some(v))
            }
            _ => Err(CryptoError::Internal("IntAuth of an incomplete exchange")),
        }
    }
}

/// Keys of a Data-Security SA from its downloaded keying material: encryption key
/// (with salt) from the leftmost octets, integrity key from the rest (RFC 9838 3.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSaKeys {
    /// Encryption key followed by its salt, if the transform has one (empty without
    /// encryption).
    pub encr: SecretBytes,
    /// Integrity key (empty without an integrity transform).
    pub integ: SecretBytes,
}

impl DataSaKeys {
    /// Splits `keymat`, whose size must equal the total key size exactly
    /// (RFC 9838 4.5.2.1).
    pub fn split(
        encr: Option<EncrAlg>,
        integ: Option<IntegAlg>,
        keymat: &[u8],
    ) -> Result<Self, CryptoError> {
        let e = encr.map_or(0, EncrAlg::keymat_len);
        let i = integ.map_or(0, IntegAlg::key_len);
        if keymat.len() != e + i {
            return Err(CryptoError::InvalidLength {
                what: "Data-Security SA keying material",
                len: keymat.len(),
            });
        }
        let (ek, ik) = keymat.split_at(e);
        Ok(Self {
            encr: SecretBytes::from_slice(ek),
            integ: SecretBytes::from_slice(ik),
        })
    }
}

/// Keys of a Rekey SA: `GSK_e | GSK_a | GSK_w = KEYMAT` (RFC 9838 3.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RekeySaKeys {
    /// Encryption key with salt (as SK_e for the suite's cipher).
    pub gsk_e: SecretBytes,
    /// Integrity key, empty with AEAD.
    pub gsk_a: SecretBytes,
    /// Default KWK of the Rekey SA.
    pub gsk_w: SecretBytes,
}

impl RekeySaKeys {
    /// Splits `keymat`, whose size must equal the total exactly (RFC 9838 4.5.2.1).
    pub fn split(
        encr: EncrAlg,
        integ: Option<IntegAlg>,
        kwa: KeyWrapAlg,
        keymat: &[u8],
    ) -> Result<Self, CryptoError> {
        let e = encr.keymat_len();
        let a = integ.map_or(0, IntegAlg::key_len);
        let w = kwa.key_len();
        if keymat.len() != e + a + w {
            return Err(CryptoError::InvalidLength {
                what: "Rekey SA keying material",
                len: keymat.len(),
            });
        }
        let (ek, rest) = keymat.split_at(e);
        let (ak, wk) = rest.split_at(a);
        Ok(Self {
            gsk_e: SecretBytes::from_slice(ek),
            gsk_a: SecretBytes::from_slice(ak),
            gsk_w: SecretBytes::from_slice(wk),
        })
    }

    /// The keying material for these keys (the GCKS builds the SA_KEY attribute from it).
    pub fn keymat(&self) -> SecretBytes {
        let mut k = SecretBytes::zeroed(0);
        k.extend_from_slice(self.gsk_e.as_bytes());
        k.extend_from_slice(self.gsk_a.as_bytes());
        k.extend_from_slice(self.gsk_w.as_bytes());
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::ke::KeMethod;
    use ring::hmac;

    fn suite(encr: EncrAlg, integ: Option<IntegAlg>, prf: PrfAlg) -> IkeSuite {
        IkeSuite {
            encr,
            prf,
            integ,
            ke: KeMethod::Curve25519,
            addke: vec![],
            kwa: Some(KeyWrapAlg::Kw5649_256),
        }
    }

    /// prf+ computed by hand with ring::hmac, independently of PrfAlg.
    fn manual_prf_plus(key: &[u8], seed: &[u8], len: usize) -> Vec<u8> {
        let k = hmac::Key::new(hmac::HMAC_SHA256, key);
        let mut out = Vec::new();
        let mut prev: Vec<u8> = Vec::new();
        let mut n = 1u8;
        while out.len() < len {
            let mut m = prev.clone();
            m.extend_from_slice(seed);
            m.push(n);
            prev = hmac::sign(&k, &m).as_ref().to_vec();
            out.extend_from_slice(&prev);
            n += 1;
        }
        out.truncate(len);
        out
    }

    #[test]
    fn initial_schedule_matches_manual_computation() {
        let s = suite(
            EncrAlg::AesCbc { key_len: 16 },
            Some(IntegAlg::HmacSha2_256_128),
            PrfAlg::HmacSha2_256,
        );
        let (ni, nr, gir) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let (spi_i, spi_r) = ([4u8; 8], [5u8; 8]);
        let keys = IkeKeys::initial(&s, &ni, &nr, &gir, &spi_i, &spi_r).unwrap();

        let mut nn = ni.to_vec();
        nn.extend_from_slice(&nr);
        let seed = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &nn), &gir);
        let mut s_bytes = nn.clone();
        s_bytes.extend_from_slice(&spi_i);
        s_bytes.extend_from_slice(&spi_r);
        let total = 32 + 32 + 32 + 16 + 16 + 32 + 32;
        let stream = manual_prf_plus(seed.as_ref(), &s_bytes, total);
        let mut at = 0;
        for (k, len) in [
            (&keys.sk_d, 32),
            (&keys.sk_ai, 32),
            (&keys.sk_ar, 32),
            (&keys.sk_ei, 16),
            (&keys.sk_er, 16),
            (&keys.sk_pi, 32),
            (&keys.sk_pr, 32),
        ] {
            assert_eq!(k.as_bytes(), &stream[at..at + len]);
            at += len;
        }
        assert_eq!(keys.sk_e(true), &keys.sk_ei);
        assert_eq!(keys.sk_a(false), &keys.sk_ar);
        assert_eq!(keys.sk_p(false), &keys.sk_pr);
        assert!(!format!("{keys:?}").contains("[1, "));

        // Default KWK, RFC 9838 3.1.1.
        let kwk = keys.default_kwk(KeyWrapAlg::Kw5649_256).unwrap();
        assert_eq!(
            kwk.as_bytes(),
            &manual_prf_plus(keys.sk_d.as_bytes(), b"Key Wrap for G-IKEv2", 32)[..]
        );
        assert_eq!(KEY_WRAP_LABEL.len(), 20);
    }

    /// RFC 8784 3: for a PRF whose output is its key size, `SK_d = prf(PPK, SK_d' | 0x01)`
    /// and likewise SK_pi, SK_pr; the other four keys stay as they were.
    #[test]
    fn ppk_mixes_into_sk_d_sk_pi_sk_pr_only() {
        for prf in [PrfAlg::HmacSha2_256, PrfAlg::HmacSha2_512] {
            let s = suite(EncrAlg::AesGcm16 { key_len: 32 }, None, prf);
            let k = IkeKeys::initial(&s, b"ni", b"nr", b"gir", &[1; 8], &[2; 8]).unwrap();
            let ppk = [0x5a_u8; 32];
            let m = k.with_ppk(&ppk).unwrap();
            let algo = match prf {
                PrfAlg::HmacSha2_256 => hmac::HMAC_SHA256,
                _ => hmac::HMAC_SHA512,
            };
            let one = |x: &SecretBytes| {
                let mut v = x.as_bytes().to_vec();
                v.push(1);
                hmac::sign(&hmac::Key::new(algo, &ppk), &v)
                    .as_ref()
                    .to_vec()
            };
            assert_eq!(m.sk_d.as_bytes(), one(&k.sk_d));
            assert_eq!(m.sk_pi.as_bytes(), one(&k.sk_pi));
            assert_eq!(m.sk_pr.as_bytes(), one(&k.sk_pr));
            assert_ne!(m.sk_d, k.sk_d);
            assert_eq!(
                (&m.sk_ai, &m.sk_ar, &m.sk_ei, &m.sk_er),
                (&k.sk_ai, &k.sk_ar, &k.sk_ei, &k.sk_er)
            );
            // Another PPK gives other keys.
            assert_ne!(k.with_ppk(&[0x5b; 32]).unwrap().sk_pi, m.sk_pi);
        }
    }

    #[test]
    fn aead_schedule_has_salted_sk_e_and_no_sk_a() {
        let s = suite(EncrAlg::ChaCha20Poly1305, None, PrfAlg::HmacSha2_384);
        let keys = IkeKeys::initial(&s, b"ni", b"nr", b"gir", &[0; 8], &[1; 8]).unwrap();
        assert_eq!(keys.sk_ei.len(), 36);
        assert!(keys.sk_ai.is_empty());
        assert_eq!(keys.sk_d.len(), 48);
        assert_eq!(keys.sk_pr.len(), 48);
        assert_ne!(keys.sk_ei, keys.sk_er);
    }

    #[test]
    fn additional_ke_and_rekey_formulas() {
        let s = suite(
            EncrAlg::AesGcm16 { key_len: 32 },
            None,
            PrfAlg::HmacSha2_256,
        );
        let (ni, nr) = ([7u8; 32], [8u8; 32]);
        let (spi_i, spi_r) = ([1u8; 8], [2u8; 8]);
        let k0 = IkeKeys::initial(&s, &ni, &nr, b"g0", &spi_i, &spi_r).unwrap();
        let k1 = k0
            .after_additional_ke(&s, b"mlkem-secret", &ni, &nr, &spi_i, &spi_r)
            .unwrap();
        // SKEYSEED(1) = prf(SK_d(0), SK(1) | Ni | Nr)
        let mut m = b"mlkem-secret".to_vec();
        m.extend_from_slice(&ni);
        m.extend_from_slice(&nr);
        let seed1 = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, k0.sk_d.as_bytes()), &m);
        let want = IkeKeys::from_skeyseed(&s, seed1.as_ref(), &ni, &nr, &spi_i, &spi_r).unwrap();
        assert_eq!(k1, want);
        assert_ne!(k1.sk_ei, k0.sk_ei);

        // Rekey with the old PRF (SHA-256) into a new suite with SHA-512.
        let s2 = suite(
            EncrAlg::AesGcm16 { key_len: 16 },
            None,
            PrfAlg::HmacSha2_512,
        );
        let (ni2, nr2) = ([9u8; 16], [10u8; 16]);
        let k2 = k1
            .rekeyed(&s2, &[b"g-new", b"sk1"], &ni2, &nr2, &[3; 8], &[4; 8])
            .unwrap();
        let mut m = b"g-new".to_vec();
        m.extend_from_slice(&ni2);
        m.extend_from_slice(&nr2);
        m.extend_from_slice(b"sk1");
        let seed2 = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, k1.sk_d.as_bytes()), &m);
        let want =
            IkeKeys::from_skeyseed(&s2, seed2.as_ref(), &ni2, &nr2, &[3; 8], &[4; 8]).unwrap();
        assert_eq!(k2, want);
        assert_eq!(k2.prf(), PrfAlg::HmacSha2_512);
        assert_eq!(k2.sk_d.len(), 64);
        assert!(k1.rekeyed(&s2, &[], &ni2, &nr2, &[3; 8], &[4; 8]).is_err());
    }

    #[test]
    fn int_auth_adjusts_lengths_and_chains() {
        let prf = PrfAlg::HmacSha2_256;
        let mut a = vec![0xaa; 28];
        a.extend_from_slice(&[0x2b, 0, 0xff, 0xff]); // SK header with a bogus length
        let p = b"inner payloads".to_vec();
        let mut ia = IntAuth::new(prf);
        assert!(ia.is_empty());
        assert_eq!(ia.finish(1).unwrap(), None);
        ia.absorb(true, b"skpi", &a, &p).unwrap();
        assert!(ia.finish(1).is_err());
        ia.absorb(false, b"skpr", &a, &[]).unwrap();
        ia.absorb(true, b"skpi2", &a, &p).unwrap();

        let mut adj = a.clone();
        adj[24..28].copy_from_slice(&((32 + p.len()) as u32).to_be_bytes());
        adj[30..32].copy_from_slice(&((4 + p.len()) as u16).to_be_bytes());
        let i1 = prf.prf(b"skpi", &[&adj, &p]);
        let i2 = prf.prf(b"skpi2", &[i1.as_bytes(), &adj, &p]);
        let mut adj_r = a.clone();
        adj_r[24..28].copy_from_slice(&32u32.to_be_bytes());
        adj_r[30..32].copy_from_slice(&4u16.to_be_bytes());
        let r1 = prf.prf(b"skpr", &[&adj_r]);
        let mut want = i2.as_bytes().to_vec();
        want.extend_from_slice(r1.as_bytes());
        want.extend_from_slice(&[0, 0, 0, 3]);
        assert_eq!(ia.finish(3).unwrap().unwrap(), want);
        assert!(ia.absorb(true, b"k", &a[..31], &p).is_err());
    }

    #[test]
    fn sa_key_splitting() {
        let cbc = EncrAlg::AesCbc { key_len: 32 };
        let integ = IntegAlg::HmacSha2_256_128;
        let km: Vec<u8> = (0..64u8).collect();
        let d = DataSaKeys::split(Some(cbc), Some(integ), &km).unwrap();
        assert_eq!(d.encr.as_bytes(), &km[..32]);
        assert_eq!(d.integ.as_bytes(), &km[32..]);
        assert!(DataSaKeys::split(Some(cbc), Some(integ), &km[..63]).is_err());
        assert_eq!(data_sa_keymat_len(Some(cbc), Some(integ)), 64);

        let gcm = EncrAlg::AesGcm16 { key_len: 16 };
        let km: Vec<u8> = (0..36u8).collect();
        let r = RekeySaKeys::split(gcm, None, KeyWrapAlg::Kw5649_128, &km).unwrap();
        assert_eq!(r.gsk_e.as_bytes(), &km[..20]);
        assert!(r.gsk_a.is_empty());
        assert_eq!(r.gsk_w.as_bytes(), &km[20..]);
        assert_eq!(r.keymat().as_bytes(), &km[..]);
        assert!(RekeySaKeys::split(gcm, None, KeyWrapAlg::Kw5649_128, &[0; 37]).is_err());
        let r = RekeySaKeys::split(cbc, Some(integ), KeyWrapAlg::Kw5649_256, &[1; 32 + 32 + 32])
            .unwrap();
        assert_eq!(r.gsk_a.len(), 32);
        assert_eq!(
            rekey_sa_keymat_len(cbc, Some(integ), KeyWrapAlg::Kw5649_256),
            96
        );
    }
}
