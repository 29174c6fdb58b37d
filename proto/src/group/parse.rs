//! Reading received GSA policies and key bags into installable values, shared by
//! registration (RFC 9838 2.3.3) and GSA_REKEY (2.4.1.4: "The parsing of the payloads is
//! identical to the parsing done in the registration exchange").

use super::keypath::{KeyPath, KeyPathError};
use super::state::RekeySuite;
use super::{RekeySpi, rekey_spi_from_wire};
use crate::crypto::keys::{DataSaKeys, RekeySaKeys, data_sa_keymat_len};
use crate::crypto::{
    CryptoError, EncrAlg, IntegAlg, KeyWrapAlg, KeyWrapKey, PublicKey, SignatureScheme,
};
use crate::registry::{GcAuthId, IntegId, NotifyType, ProtocolId, SnId, TransformType};
use crate::wire::gsa::{GsaPolicy, Spi, Violation, is_counter_mode};
use crate::wire::kd::{AuthKey, GroupKeyBag, WrappedKey};
use crate::wire::ts::TrafficSelector;

/// What the member does with the group's Data-Security SAs (RFC 9838 2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Receives only: SAs are installed inbound only.
    Receiver,
    /// Sends (it announced GROUP_SENDER); `receives` when it also receives the group's
    /// traffic, so that SAs are installed in both directions, else outbound only.
    Sender { receives: bool },
}

impl Role {
    pub fn is_sender(self) -> bool {
        matches!(self, Self::Sender { .. })
    }

    /// (inbound, outbound) for a Data-Security SA (RFC 9838 2.3.3).
    pub fn directions(self) -> (bool, bool) {
        match self {
            Self::Receiver => (true, false),
            Self::Sender { receives } => (receives, true),
        }
    }
}

/// Why received group policy or keys cannot be installed. [`RegistrationError::notify`]
/// is what the member reports in GSA_REGISTRATION (RFC 9838 2.3.2 Figure 8, 2.3.3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationError {
    /// The payloads break a structural rule of RFC 9838.
    #[error("{0}")]
    Violation(#[from] Violation),
    /// An algorithm this member does not implement.
    #[error("unsupported policy: {0}")]
    Unsupported(CryptoError),
    /// GCAUTH names a method we do not know (RFC 9838 4.4.2.1.1).
    #[error("unknown GCAUTH method {0}")]
    UnknownGcAuth(u16),
    /// AUTH_KEY is not a usable SubjectPublicKeyInfo (RFC 9838 4.5.3.2).
    #[error("AUTH_KEY: {0}")]
    AuthKey(CryptoError),
    /// AUTH_KEY's key type does not fit the Signature Algorithm Identifier (ERRATA.md on
    /// RFC 9838 4.5.3.2).
    #[error("AUTH_KEY does not fit {0:?} (RFC 9838 4.5.3.2)")]
    AuthKeyMismatch(SignatureScheme),
    /// Unwrapped keying material of the wrong size (RFC 9838 3.4, 4.5.2.1).
    #[error(
        "keying material for {protocol} SPI {spi}: {got} octets, {expected} expected (RFC 9838 4.5.2.1)"
    )]
    KeyMaterialLength {
        protocol: ProtocolId,
        spi: Spi,
        expected: usize,
        got: usize,
    },
    /// An SA key could not be unwrapped (RFC 9838 3.3, 4.5.4).
    #[error("{0}")]
    KeyUnwrap(#[from] KeyPathError),
    /// The registration carries no Rekey SA (the group uses inband rekey only), so there
    /// is nothing to receive GSA_REKEY messages with.
    #[error("no Rekey SA in the registration")]
    NoRekeySa,
    /// A sender was given a counter-mode SA without a Sender-ID (RFC 9838 4.5.3.3,
    /// 2.4.1.4: it MUST NOT install the SA and MUST re-register).
    #[error(
        "sender without a Sender-ID for a counter-mode Data-Security SA (RFC 9838 2.4.1.4, 4.5.3.3)"
    )]
    SenderWithoutSenderId,
}

impl RegistrationError {
    /// The notify the member sends in GSA_REGISTRATION to reject the policy
    /// (RFC 9838 2.3.2 Figure 8, 2.3.3): NO_PROPOSAL_CHOSEN when the policy names something
    /// this member does not support, REGISTRATION_FAILED for everything else.
    pub fn notify(&self) -> NotifyType {
        match self {
            Self::Unsupported(_) | Self::UnknownGcAuth(_) => NotifyType::NoProposalChosen,
            Self::AuthKey(CryptoError::Unsupported(_)) => NotifyType::NoProposalChosen,
            _ => NotifyType::RegistrationFailed,
        }
    }

    /// True when the member must register again to keep participating: a Sender-ID that
    /// does not fit (RFC 9838 2.5.2, a fatal error), a sender without one (2.4.1.4), or
    /// no reachable Rekey SA key (excluded, 3.3).
    pub fn must_reregister(&self) -> bool {
        matches!(
            self,
            Self::Violation(Violation::SenderIdTooLarge { .. })
                | Self::SenderWithoutSenderId
                | Self::KeyUnwrap(KeyPathError::Unreachable)
        )
    }
}

fn unsupported(e: CryptoError) -> RegistrationError {
    RegistrationError::Unsupported(e)
}

/// How the member authenticates GSA_REKEY messages (RFC 9838 4.4.2.1.1, 4.5.3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RekeyAuth {
    /// Decrypting with the KEK is the only proof.
    Implicit,
    /// AUTH payloads carry signatures by `key` with `scheme`.
    Signature {
        scheme: SignatureScheme,
        key: PublicKey,
    },
}

/// A Rekey SA as the member installs it (inbound only, RFC 9838 2.3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RekeySa {
    /// SPIi | SPIr of GSA_REKEY messages over this SA.
    pub spi: RekeySpi,
    /// Where GSA_REKEY messages come from.
    pub src: TrafficSelector,
    /// The multicast address, UDP port to listen on (RFC 9838 4.4.2).
    pub dst: TrafficSelector,
    pub suite: RekeySuite,
    /// GSK_e, GSK_a, GSK_w (RFC 9838 3.4).
    pub keys: RekeySaKeys,
    /// The lowest Message ID accepted first: GSA_INITIAL_MESSAGE_ID, or 0 when absent
    /// (RFC 9838 2.4.1.4).
    pub first_message_id: u32,
    /// GSA_KEY_LIFETIME in seconds (RFC 9838 4.4.2.2.1).
    pub lifetime: Option<u32>,
    /// GSA_NEXT_SPI announcements (RFC 9838 4.4.2.2.3).
    pub next_spis: Vec<RekeySpi>,
}

/// A Data-Security SA as the member installs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tek {
    /// ESP or AH.
    pub protocol: ProtocolId,
    pub spi: u32,
    pub src: TrafficSelector,
    pub dst: TrafficSelector,
    pub encr: Option<EncrAlg>,
    pub integ: Option<IntegAlg>,
    /// Sequence Numbers transform (RFC 9838 4.4.2.1.3).
    pub sn: SnId,
    /// Encryption key (with salt) and integrity key (RFC 9838 3.4).
    pub keys: DataSaKeys,
    /// GSA_KEY_LIFETIME in seconds (RFC 9838 4.4.2.2.1).
    pub lifetime: Option<u32>,
    /// GSA_NEXT_SPI announcements (RFC 9838 4.4.2.2.3).
    pub next_spis: Vec<u32>,
    /// Counter-based cipher: outbound use needs a Sender-ID (RFC 9838 2.5).
    pub counter_mode: bool,
    /// Install inbound (RFC 9838 2.3.3).
    pub inbound: bool,
    /// Install outbound (RFC 9838 2.3.3).
    pub outbound: bool,
}

fn read_integ(p: &GsaPolicy) -> Result<Option<IntegAlg>, RegistrationError> {
    match p
        .transform(TransformType::Integ)
        .map(|t| IntegId::from(t.id))
    {
        None | Some(IntegId::None) => Ok(None),
        Some(id) => IntegAlg::from_id(id)
            .map(Some)
            .ok_or(unsupported(CryptoError::Unsupported("integrity algorithm"))),
    }
}

/// A TEK from its policy and key bag; the SA_KEY is under the default KWK (KWK ID 0 is
/// checked by `KdPayload::validate`, RFC 9838 4.5.2.1).
pub(crate) fn read_tek(
    p: &GsaPolicy,
    bag: &GroupKeyBag,
    kwk: &KeyWrapKey,
    role: Role,
) -> Result<Tek, RegistrationError> {
    let spi = match p.spi {
        Spi::Ipsec(s) => s,
        Spi::Rekey { .. } => {
            return Err(Violation::SpiSizeMismatch {
                protocol: p.protocol,
                size: p.spi.size(),
            }
            .into());
        }
    };
    let encr = p
        .transform(TransformType::Encr)
        .map(|t| EncrAlg::from_transform(t.id.into(), t.key_length()))
        .transpose()
        .map_err(unsupported)?;
    let integ = read_integ(p)?;
    let sn = p
        .transform(TransformType::Sn)
        .map(|t| SnId::from(t.id))
        .ok_or(Violation::MissingTransform {
            protocol: p.protocol,
            ty: TransformType::Sn,
        })?;
    if matches!(sn, SnId::Unknown(_)) {
        return Err(unsupported(CryptoError::Unsupported(
            "Sequence Numbers transform",
        )));
    }
    let sa_key = bag.sa_keys.first().ok_or(Violation::SaKeyCount {
        protocol: p.protocol,
        count: 0,
        context: crate::wire::gsa::PolicyContext::Registration,
    })?;
    let km = kwk
        .unwrap(&sa_key.encrypted)
        .map_err(|e| RegistrationError::KeyUnwrap(KeyPathError::Unwrap(e)))?;
    let expected = data_sa_keymat_len(encr, integ);
    if km.len() != expected {
        return Err(RegistrationError::KeyMaterialLength {
            protocol: p.protocol,
            spi: p.spi,
            expected,
            got: km.len(),
        });
    }
    let keys = DataSaKeys::split(encr, integ, km.as_bytes()).map_err(unsupported)?;
    let (inbound, outbound) = role.directions();
    Ok(Tek {
        protocol: p.protocol,
        spi,
        src: p.src.clone(),
        dst: p.dst.clone(),
        encr,
        integ,
        sn,
        keys,
        lifetime: p.attributes.key_lifetime,
        next_spis: p
            .attributes
            .next_spis
            .iter()
            .filter_map(|s| match s {
                Spi::Ipsec(v) => Some(*v),
                Spi::Rekey { .. } => None,
            })
            .collect(),
        counter_mode: encr.is_some_and(|e| is_counter_mode(e.id())),
        inbound,
        outbound,
    })
}

/// A Rekey SA from its policy and key bag. `default` is the default KWK of the SA the
/// message came over (RFC 9838 3.1.1), `path` the member's Working Key Path, `wrap_keys`
/// the WRAP_KEYs of the same message and `new_key_alg` their algorithm. Returns the SA
/// and the updated Working Key Path (RFC 9838 3.3).
pub(crate) fn read_kek(
    p: &GsaPolicy,
    bag: &GroupKeyBag,
    path: &KeyPath,
    default: &KeyWrapKey,
    new_key_alg: KeyWrapAlg,
    wrap_keys: &[WrappedKey],
) -> Result<(RekeySa, KeyPath), RegistrationError> {
    let spi = rekey_spi_from_wire(&p.spi).ok_or(Violation::SpiSizeMismatch {
        protocol: p.protocol,
        size: p.spi.size(),
    })?;
    let suite = RekeySuite::from_policy(p).map_err(unsupported)?;
    let (km, new_path) = path.unwrap_sa_key(default, new_key_alg, wrap_keys, &bag.sa_keys)?;
    if km.len() != suite.keymat_len() {
        return Err(RegistrationError::KeyMaterialLength {
            protocol: p.protocol,
            spi: p.spi,
            expected: suite.keymat_len(),
            got: km.len(),
        });
    }
    let keys = RekeySaKeys::split(suite.encr, suite.integ, suite.kwa, km.as_bytes())
        .map_err(unsupported)?;
    let sa = RekeySa {
        spi,
        src: p.src.clone(),
        dst: p.dst.clone(),
        suite,
        keys,
        // RFC 9838 2.4.1.4: zero when GSA_INITIAL_MESSAGE_ID is absent.
        first_message_id: p.attributes.initial_message_id.unwrap_or(0),
        lifetime: p.attributes.key_lifetime,
        next_spis: p
            .attributes
            .next_spis
            .iter()
            .filter_map(rekey_spi_from_wire)
            .collect(),
    };
    Ok((sa, new_path))
}

/// The GCAUTH of a registration's KEK policy with its AUTH_KEY (RFC 9838 4.4.2.1.1,
/// 4.5.3.2). Presence rules were checked by `validate_gsa_kd`.
pub(crate) fn read_auth(
    kek: &GsaPolicy,
    auth_key: Option<&AuthKey>,
) -> Result<RekeyAuth, RegistrationError> {
    let t = kek
        .transform(TransformType::GcAuth)
        .ok_or(Violation::MissingTransform {
            protocol: kek.protocol,
            ty: TransformType::GcAuth,
        })?;
    match GcAuthId::from(t.id) {
        GcAuthId::Implicit => Ok(RekeyAuth::Implicit),
        GcAuthId::DigitalSignature => {
            let alg = t
                .signature_algorithm_id()
                .ok_or(Violation::SignatureAlgorithmIdMissing)?;
            let scheme = SignatureScheme::from_algorithm_identifier(alg).ok_or(unsupported(
                CryptoError::Unsupported("Signature Algorithm Identifier"),
            ))?;
            let der = auth_key.ok_or(Violation::AuthKeyMissing)?;
            let key = PublicKey::from_spki(der.spki_der()).map_err(RegistrationError::AuthKey)?;
            if !key.key_type().fits(scheme) {
                return Err(RegistrationError::AuthKeyMismatch(scheme));
            }
            Ok(RekeyAuth::Signature { scheme, key })
        }
        GcAuthId::Unknown(v) => Err(RegistrationError::UnknownGcAuth(v)),
    }
}
