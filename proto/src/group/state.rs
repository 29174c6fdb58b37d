//! The GCKS's view of one group's current key state, as plain typed values.
//!
//! A [`GroupState`] holds what the GCKS hands to members: the Rekey SA (the KEK,
//! RFC 9838 4.4.2 with protocol GIKE_UPDATE), the Data-Security SAs (TEKs, ESP or AH), the
//! group-wide policy (ATD, DTD, Sender-ID bits, RFC 9838 4.4.3) and the key that signs
//! GSA_REKEY messages (RFC 9838 2.4.1.1, 4.4.2.1.1). It is loaded from and stored to the
//! policy store by the caller; nothing here touches a clock or a database.
//!
//! Keying material is kept whole, as it travels in SA_KEY (RFC 9838 3.4, 4.5.2.1), in
//! [`SecretBytes`] (zeroized on drop, redacted in `Debug`), and split on demand with
//! `crypto::keys`. Lifetimes are absolute expiry times in seconds on the caller's clock
//! (e.g. UNIX time): GSA_KEY_LIFETIME is the time left when a payload is built
//! (RFC 9838 4.4.2.2: "parameters distributed via GSA attributes may depend on the time
//! the provision takes place").

use super::{REKEY_SPI_LEN, RekeySpi, rekey_spi_to_wire};
use crate::crypto::keys::{DataSaKeys, RekeySaKeys, data_sa_keymat_len};
use crate::crypto::{
    CryptoError, EncrAlg, IntegAlg, KeyWrapAlg, KeyWrapKey, PublicKey, Random, SecretBytes,
    SignatureScheme, SigningKey, SkKey,
};
use crate::registry::{GcAuthId, IntegId, ProtocolId, SnId, TransformType};
use crate::wire::gsa::{GsaPolicy, Spi, Violation, is_counter_mode, is_multicast_destination};
use crate::wire::transform::Transform;
use crate::wire::ts::TrafficSelector;

/// Why a piece of group state could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Keying material of the wrong size (RFC 9838 3.4, 4.5.2.1: it MUST equal the total
    /// size of the keys taken from it).
    #[error("{what} keying material of {got} octets, {expected} expected (RFC 9838 3.4, 4.5.2.1)")]
    KeyMaterialLength {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// A reserved SPI (RFC 4303 2.1: 0..=255; RFC 7296 3.1: a zero initiator SPI).
    #[error("reserved SPI for {0}")]
    ReservedSpi(&'static str),
    /// A transform combination the group SA cannot use.
    #[error("invalid suite: {0}")]
    InvalidSuite(&'static str),
}

/// The transforms of a Rekey SA (RFC 9838 4.4.2.1, Figure 16): ENCR, INTEG unless the
/// cipher is AEAD (*), and KWA. GCAUTH is group-wide ([`GroupAuth`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RekeySuite {
    pub encr: EncrAlg,
    pub integ: Option<IntegAlg>,
    pub kwa: KeyWrapAlg,
}

impl RekeySuite {
    /// A suite the GSA_REKEY SK payload can use: AES-CBC with HMAC-SHA2, AES-GCM-16
    /// (128/256) or ChaCha20-Poly1305, never an implicit-IV cipher (RFC 9838 2.7), INTEG
    /// exactly when the cipher is not AEAD (RFC 9838 4.4.2.1 (*)).
    pub fn new(
        encr: EncrAlg,
        integ: Option<IntegAlg>,
        kwa: KeyWrapAlg,
    ) -> Result<Self, StateError> {
        if !encr.sk_supported() {
            return Err(StateError::InvalidSuite(
                "Rekey SA cipher not usable in the SK payload (RFC 9838 2.7, 4.4.2.1)",
            ));
        }
        match (encr.is_aead(), integ) {
            (true, Some(_)) => Err(StateError::InvalidSuite(
                "INTEG with an AEAD Rekey SA cipher (RFC 9838 4.4.2.1 (*))",
            )),
            (false, None) => Err(StateError::InvalidSuite(
                "non-AEAD Rekey SA cipher without INTEG (RFC 9838 4.4.2.1 (*))",
            )),
            _ => Ok(Self { encr, integ, kwa }),
        }
    }

    /// `|GSK_e| + |GSK_a| + |GSK_w|` (RFC 9838 3.4).
    pub fn keymat_len(&self) -> usize {
        crate::crypto::keys::rekey_sa_keymat_len(self.encr, self.integ, self.kwa)
    }

    /// ENCR, [INTEG], KWA transforms for the GSA policy.
    pub fn transforms(&self) -> Vec<Transform> {
        let mut v = vec![self.encr.transform()];
        if let Some(i) = self.integ {
            v.push(Transform::integ(i.id()));
        }
        v.push(Transform::kwa(self.kwa.id()));
        v
    }

    /// Reads the suite of a received KEK policy. Unsupported algorithms are
    /// [`CryptoError::Unsupported`] / [`CryptoError::NoProposalChosen`] (the member answers
    /// NO_PROPOSAL_CHOSEN, RFC 9838 2.3.3).
    pub(crate) fn from_policy(p: &GsaPolicy) -> Result<Self, CryptoError> {
        let encr = p
            .transform(TransformType::Encr)
            .ok_or(CryptoError::NoProposalChosen("Rekey SA without ENCR"))?;
        let encr = EncrAlg::from_transform(encr.id.into(), encr.key_length())?;
        let integ = match p
            .transform(TransformType::Integ)
            .map(|t| IntegId::from(t.id))
        {
            None | Some(IntegId::None) => None,
            Some(id) => {
                Some(IntegAlg::from_id(id).ok_or(CryptoError::Unsupported("Rekey SA integrity"))?)
            }
        };
        let kwa = p
            .transform(TransformType::Kwa)
            .ok_or(CryptoError::NoProposalChosen("Rekey SA without KWA"))?;
        let kwa = KeyWrapAlg::from_id(kwa.id.into())
            .ok_or(CryptoError::Unsupported("key wrap algorithm"))?;
        Self::new(encr, integ, kwa).map_err(|_| CryptoError::Unsupported("Rekey SA suite"))
    }
}

/// How the GCKS authenticates GSA_REKEY messages (GCAUTH, RFC 9838 4.4.2.1.1). Fixed for
/// the life of the group: the method "MUST NOT change as a result of rekey operations".
#[derive(Debug)]
pub enum GroupAuth {
    /// Implicit: knowing the KEK is the only proof (NOT RECOMMENDED, RFC 9838 2.4.1).
    Implicit,
    /// Digital Signature with this key; its public key is the AUTH_KEY (4.5.3.2).
    Signature(Box<SigningKey>),
}

impl GroupAuth {
    /// The GCAUTH transform, with the Signature Algorithm Identifier for signatures
    /// (RFC 9838 4.4.2.1.1).
    pub fn transform(&self) -> Transform {
        match self {
            Self::Implicit => Transform::gcauth(GcAuthId::Implicit, None),
            Self::Signature(k) => Transform::gcauth(
                GcAuthId::DigitalSignature,
                Some(k.scheme().algorithm_identifier()),
            ),
        }
    }

    /// The signature scheme, if any.
    pub fn scheme(&self) -> Option<SignatureScheme> {
        match self {
            Self::Implicit => None,
            Self::Signature(k) => Some(k.scheme()),
        }
    }

    /// The verification key members receive.
    pub fn public_key(&self) -> Option<PublicKey> {
        match self {
            Self::Implicit => None,
            Self::Signature(k) => Some(k.public_key()),
        }
    }

    /// The AUTH_KEY attribute value: the DER SubjectPublicKeyInfo (RFC 9838 4.5.3.2); `None`
    /// with implicit authentication (RFC 9838 2.4.1: AUTH_KEY MUST NOT be sent).
    pub fn auth_key_spki(&self) -> Result<Option<Vec<u8>>, CryptoError> {
        self.public_key().map(|k| k.to_spki()).transpose()
    }
}

/// Seconds left before `expires`, as GSA_KEY_LIFETIME carries them (RFC 9838 4.4.2.2.1);
/// `None` once expired. Capped at `u32::MAX`.
pub fn lifetime_at(expires: u64, now: u64) -> Option<u32> {
    match expires.checked_sub(now) {
        Some(0) | None => None,
        Some(left) => Some(u32::try_from(left).unwrap_or(u32::MAX)),
    }
}

/// The current Rekey SA (KEK) of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RekeySaState {
    /// SPIi | SPIr of the GSA_REKEY header (RFC 9838 2.4.1, 4.4.2).
    pub spi: RekeySpi,
    /// Where GSA_REKEY messages come from (RFC 9838 4.4.2: one address, UDP, one port;
    /// wildcards allowed).
    pub src: TrafficSelector,
    /// Where GSA_REKEY messages go: one multicast address, UDP, one port (RFC 9838 4.4.2).
    pub dst: TrafficSelector,
    pub suite: RekeySuite,
    /// `GSK_e | GSK_a | GSK_w` (RFC 9838 3.4).
    keymat: SecretBytes,
    /// Expiry on the caller's clock, in seconds.
    pub expires: u64,
    /// The Message ID of the next GSA_REKEY sent over this SA: 0 for a new SA
    /// (RFC 9838 2.4.1.3), one more after each message. The caller commits it before
    /// sending the message that uses it (DESIGN.md).
    pub next_message_id: u32,
    /// SPIs reserved for the next Rekey SA (GSA_NEXT_SPI, RFC 9838 4.4.2.2.3).
    pub next_spis: Vec<RekeySpi>,
}

impl RekeySaState {
    /// A Rekey SA with the given keying material, which must be exactly
    /// `suite.keymat_len()` octets; `spi` must not start with eight zero octets (a zero
    /// IKE initiator SPI, RFC 7296 3.1).
    pub fn new(
        spi: RekeySpi,
        src: TrafficSelector,
        dst: TrafficSelector,
        suite: RekeySuite,
        keymat: SecretBytes,
        expires: u64,
    ) -> Result<Self, StateError> {
        if spi[..8].iter().all(|b| *b == 0) {
            return Err(StateError::ReservedSpi("GIKE_UPDATE"));
        }
        if keymat.len() != suite.keymat_len() {
            return Err(StateError::KeyMaterialLength {
                what: "Rekey SA",
                expected: suite.keymat_len(),
                got: keymat.len(),
            });
        }
        Ok(Self {
            spi,
            src,
            dst,
            suite,
            keymat,
            expires,
            next_message_id: 0,
            next_spis: Vec::new(),
        })
    }

    /// A fresh Rekey SA: random SPI and keying material from `rng`.
    pub fn generate(
        rng: &mut dyn Random,
        src: TrafficSelector,
        dst: TrafficSelector,
        suite: RekeySuite,
        expires: u64,
    ) -> Self {
        let mut spi = [0u8; REKEY_SPI_LEN];
        rng.fill(&mut spi);
        if spi[..8].iter().all(|b| *b == 0) {
            spi[7] = 1;
        }
        let mut keymat = SecretBytes::zeroed(suite.keymat_len());
        rng.fill(keymat.as_mut_bytes());
        Self {
            spi,
            src,
            dst,
            suite,
            keymat,
            expires,
            next_message_id: 0,
            next_spis: Vec::new(),
        }
    }

    /// The whole keying material, as it goes into SA_KEY.
    pub fn keymat(&self) -> &SecretBytes {
        &self.keymat
    }

    /// `GSK_e`, `GSK_a`, `GSK_w` (RFC 9838 3.4).
    pub fn keys(&self) -> Result<RekeySaKeys, CryptoError> {
        RekeySaKeys::split(
            self.suite.encr,
            self.suite.integ,
            self.suite.kwa,
            self.keymat.as_bytes(),
        )
    }

    /// The SK payload keys of GSA_REKEY messages over this SA (GSK_e, GSK_a).
    pub fn sk_key(&self) -> Result<SkKey, CryptoError> {
        let k = self.keys()?;
        SkKey::new(
            self.suite.encr,
            self.suite.integ,
            k.gsk_e.as_bytes(),
            k.gsk_a.as_bytes(),
        )
    }

    /// The default KWK of this SA, GSK_w (RFC 9838 3.1.1, 3.4).
    pub fn kwk(&self) -> Result<KeyWrapKey, CryptoError> {
        KeyWrapKey::new(self.suite.kwa, self.keys()?.gsk_w.as_bytes())
    }

    /// The SPI as the GSA and KD payloads carry it.
    pub fn wire_spi(&self) -> Spi {
        rekey_spi_to_wire(&self.spi)
    }

    /// The GSA KEK policy (RFC 9838 4.4.2): the suite, GCAUTH when `auth` is given (only at
    /// registration, 4.4.2.1.1), GSA_KEY_LIFETIME when `lifetime` is given (4.4.2.2.1),
    /// GSA_INITIAL_MESSAGE_ID when the next Message ID is not zero (4.4.2.2.2) and the
    /// GSA_NEXT_SPI reservations (4.4.2.2.3).
    pub fn policy(&self, auth: Option<&GroupAuth>, lifetime: Option<u32>) -> GsaPolicy {
        let mut p = GsaPolicy::new(
            ProtocolId::GikeUpdate,
            self.wire_spi(),
            self.src.clone(),
            self.dst.clone(),
        );
        p.transforms = self.suite.transforms();
        if let Some(a) = auth {
            p.transforms.push(a.transform());
        }
        p.attributes.key_lifetime = lifetime;
        if self.next_message_id != 0 {
            p.attributes.initial_message_id = Some(self.next_message_id);
        }
        p.attributes.next_spis = self.next_spis.iter().map(rekey_spi_to_wire).collect();
        p
    }
}

/// The security protocol of a Data-Security SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TekProtocol {
    Esp,
    Ah,
}

impl TekProtocol {
    pub fn id(self) -> ProtocolId {
        match self {
            Self::Esp => ProtocolId::Esp,
            Self::Ah => ProtocolId::Ah,
        }
    }
}

/// One Data-Security SA (TEK) of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TekState {
    pub protocol: TekProtocol,
    pub spi: u32,
    pub src: TrafficSelector,
    pub dst: TrafficSelector,
    /// ENCR (ESP only).
    pub encr: Option<EncrAlg>,
    /// INTEG (AH; ESP with a non-AEAD cipher).
    pub integ: Option<IntegAlg>,
    /// The Sequence Numbers transform, present for every TEK (RFC 9838 2.6, 4.4.2.1.3).
    pub sn: SnId,
    /// Encryption key (with salt) then integrity key (RFC 9838 3.4).
    keymat: SecretBytes,
    /// Expiry on the caller's clock, in seconds.
    pub expires: u64,
    /// SPIs reserved for the replacement SA (GSA_NEXT_SPI, RFC 9838 4.4.2.2.3).
    pub next_spis: Vec<u32>,
}

/// Checks the transform combination of a TEK (RFC 9838 4.4.2.1 Figure 16; RFC 8221 4).
fn check_tek_suite(
    protocol: TekProtocol,
    encr: Option<EncrAlg>,
    integ: Option<IntegAlg>,
) -> Result<(), StateError> {
    match (protocol, encr, integ) {
        (TekProtocol::Ah, None, Some(_)) => Ok(()),
        (TekProtocol::Ah, _, _) => Err(StateError::InvalidSuite(
            "AH takes INTEG and no ENCR (RFC 9838 Figure 16)",
        )),
        (TekProtocol::Esp, None, _) => Err(StateError::InvalidSuite(
            "ESP without ENCR (RFC 9838 Figure 16)",
        )),
        (TekProtocol::Esp, Some(e), Some(_)) if e.is_aead() => Err(StateError::InvalidSuite(
            "INTEG with an AEAD ESP cipher (RFC 8221 4)",
        )),
        (TekProtocol::Esp, Some(e), None) if !e.is_aead() => Err(StateError::InvalidSuite(
            "non-AEAD ESP cipher without INTEG (RFC 8221 4)",
        )),
        _ => Ok(()),
    }
}

impl TekState {
    /// RFC 9838 4.4.2.1.3: a multicast ESP or AH SA with several senders MUST carry
    /// "32-bit Unspecified Numbers" (the senders' sequence numbers cannot give replay
    /// protection); "32-bit Sequential Numbers" is for a single sender. The GCKS hands
    /// such an SA to nobody rather than advertise a replay window that would drop the
    /// senders' packets (docs/interop.md).
    pub fn check_sequence_numbers(&self, multiple_senders: bool) -> Result<(), Violation> {
        if multiple_senders && self.sn == SnId::Seq32 && is_multicast_destination(&self.dst) {
            return Err(Violation::SequentialNumbersWithSeveralSenders);
        }
        Ok(())
    }

    /// A TEK with the given keying material, which must be exactly
    /// `data_sa_keymat_len(encr, integ)` octets (RFC 9838 3.4, 4.5.2.1); `spi` must not be
    /// reserved (RFC 4303 2.1).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        protocol: TekProtocol,
        spi: u32,
        src: TrafficSelector,
        dst: TrafficSelector,
        encr: Option<EncrAlg>,
        integ: Option<IntegAlg>,
        sn: SnId,
        keymat: SecretBytes,
        expires: u64,
    ) -> Result<Self, StateError> {
        if spi < 256 {
            return Err(StateError::ReservedSpi("ESP/AH"));
        }
        check_tek_suite(protocol, encr, integ)?;
        let expected = data_sa_keymat_len(encr, integ);
        if keymat.len() != expected {
            return Err(StateError::KeyMaterialLength {
                what: "Data-Security SA",
                expected,
                got: keymat.len(),
            });
        }
        Ok(Self {
            protocol,
            spi,
            src,
            dst,
            encr,
            integ,
            sn,
            keymat,
            expires,
            next_spis: Vec::new(),
        })
    }

    /// A fresh TEK: random SPI (never a reserved one) and keying material from `rng`.
    #[allow(clippy::too_many_arguments)]
    pub fn generate(
        rng: &mut dyn Random,
        protocol: TekProtocol,
        src: TrafficSelector,
        dst: TrafficSelector,
        encr: Option<EncrAlg>,
        integ: Option<IntegAlg>,
        sn: SnId,
        expires: u64,
    ) -> Result<Self, StateError> {
        check_tek_suite(protocol, encr, integ)?;
        let mut b = [0u8; 4];
        rng.fill(&mut b);
        let spi = u32::from_be_bytes(b).max(256);
        let mut keymat = SecretBytes::zeroed(data_sa_keymat_len(encr, integ));
        rng.fill(keymat.as_mut_bytes());
        Self::new(protocol, spi, src, dst, encr, integ, sn, keymat, expires)
    }

    /// The whole keying material, as it goes into SA_KEY.
    pub fn keymat(&self) -> &SecretBytes {
        &self.keymat
    }

    /// The encryption and integrity keys (RFC 9838 3.4).
    pub fn keys(&self) -> Result<DataSaKeys, CryptoError> {
        DataSaKeys::split(self.encr, self.integ, self.keymat.as_bytes())
    }

    /// True when the cipher is counter-based, so senders need Sender-IDs (RFC 9838 2.5).
    pub fn counter_mode(&self) -> bool {
        self.encr.is_some_and(|e| is_counter_mode(e.id()))
    }

    /// The GSA TEK policy (RFC 9838 4.4.2): ENCR/INTEG, the SN transform every TEK carries
    /// (2.6), GSA_KEY_LIFETIME when given (4.4.2.2.1), and GSA_NEXT_SPI unless `inband`
    /// (4.4.2.2.3: MUST NOT with inband rekey).
    pub fn policy(&self, lifetime: Option<u32>, inband: bool) -> GsaPolicy {
        let mut p = GsaPolicy::new(
            self.protocol.id(),
            Spi::Ipsec(self.spi),
            self.src.clone(),
            self.dst.clone(),
        );
        if let Some(e) = self.encr {
            p.transforms.push(e.transform());
        }
        if let Some(i) = self.integ {
            p.transforms.push(Transform::integ(i.id()));
        }
        p.transforms.push(Transform::sn(self.sn));
        p.attributes.key_lifetime = lifetime;
        if !inband {
            p.attributes.next_spis = self.next_spis.iter().map(|s| Spi::Ipsec(*s)).collect();
        }
        p
    }
}

/// Group-wide policy (RFC 9838 4.4.3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupPolicy {
    /// GWP_ATD: seconds senders wait before using new SAs (RFC 9838 4.4.3.1.1).
    pub atd: Option<u16>,
    /// GWP_DTD: seconds receivers keep deleted SAs (RFC 9838 4.4.3.1.1).
    pub dtd: Option<u16>,
    /// GWP_SENDER_ID_BITS: IV bits carrying the Sender-ID with counter-mode TEKs
    /// (RFC 9838 4.4.3.1.2, 2.5.2; RFC 6054 3).
    pub sender_id_bits: Option<u16>,
    /// More than one member sends on the group's SAs (RFC 9838 4.4.3.1.2).
    pub multiple_senders: bool,
}

/// The whole key state of one group, as the GCKS builds payloads from it.
#[derive(Debug)]
pub struct GroupState {
    /// The current Rekey SA, if the group uses multicast rekey (RFC 9838 4.4.1).
    pub rekey: Option<RekeySaState>,
    /// The current Data-Security SAs.
    pub teks: Vec<TekState>,
    pub policy: GroupPolicy,
    /// GCAUTH and the signing key of GSA_REKEY messages.
    pub auth: GroupAuth,
}

impl GroupState {
    /// True when some TEK uses a counter-based cipher (RFC 9838 2.5).
    pub fn uses_counter_mode(&self) -> bool {
        self.teks.iter().any(TekState::counter_mode)
    }

    /// The longest encryption key, in octets, of the group's Rekey SA and Data-Security
    /// SAs (0 when none has one).
    pub fn longest_encryption_key(&self) -> usize {
        longest_encryption_key(self.rekey.iter(), self.teks.iter())
    }

    /// RFC 9838 3.1 (R052): a KWK of the group SHOULD NOT be shorter than the encryption
    /// key of its Rekey SA or of any of its Data-Security SAs; the GCKS wraps nothing under
    /// a shorter one (it would be the weakest link of the keys it carries).
    pub fn check_kwk(&self, kwa: KeyWrapAlg) -> Result<(), KwkTooShort> {
        KwkTooShort::check(kwa, self.longest_encryption_key())
    }
}

/// The longest encryption key, in octets, of these Rekey SAs and Data-Security SAs (0 when
/// none has one).
pub(crate) fn longest_encryption_key<'a>(
    rekey: impl Iterator<Item = &'a RekeySaState>,
    teks: impl Iterator<Item = &'a TekState>,
) -> usize {
    rekey
        .map(|k| k.suite.encr.key_len())
        .chain(teks.filter_map(|t| t.encr.map(EncrAlg::key_len)))
        .max()
        .unwrap_or(0)
}

/// A KWK shorter than the group's keys ([`GroupState::check_kwk`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "key wrap algorithm {kwa:?} has a {}-octet KWK, shorter than the group's {key}-octet \
     encryption keys (RFC 9838 3.1)",
    kwa.key_len()
)]
pub struct KwkTooShort {
    pub kwa: KeyWrapAlg,
    /// The longest encryption key of the group, in octets.
    pub key: usize,
}

impl KwkTooShort {
    /// RFC 9838 3.1: a KWK of `kwa` may wrap keys of up to its own length; `key` is the
    /// longest it would carry, in octets.
    pub(crate) fn check(kwa: KeyWrapAlg, key: usize) -> Result<(), Self> {
        if kwa.key_len() < key {
            return Err(Self { kwa, key });
        }
        Ok(())
    }
}
