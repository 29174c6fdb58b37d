//! GSA_REKEY, the one-way multicast pseudo-exchange (RFC 9838 2.4.1).
//!
//! `HDR, SK{[GSA, KD,] [D,] [N,] [AUTH]}` from the GCKS to every member (Figures 9 and
//! 12): no response and no IKEv2 window (2.4.1: it "MUST NOT be used"); reliability comes
//! from sending the same datagrams several times, replay protection from a Message ID that
//! only grows, authenticity from a signature (STYLE "Where we differ on purpose").
//!
//! # Sender ([`RekeySender`])
//!
//! 1. Header: SPIi | SPIr = the current Rekey SA's 16-octet SPI (2.4.1), exchange
//!    GSA_REKEY (41), Message ID = the Rekey SA's next one (0 for the first message over a
//!    new Rekey SA, 2.4.1.3), flags: Initiator set, Response clear (4.1 keeps RFC 7296's
//!    flags; the GCKS starts every exchange of the Rekey SA; see docs/interop.md).
//! 2. Inner payloads GSA, KD, D..., N..., AUTH, checked against the GSA_REKEY rule table
//!    and the rekey rules of `validate_gsa_kd` (no GCAUTH, no GM_SENDER_ID, no
//!    GWP_SENDER_ID_BITS; every policy with GSA_KEY_LIFETIME).
//! 3. With Digital Signature, AUTH is computed over `A | P` (2.4.1.1) of the whole,
//!    unfragmented message, where the AUTH payload carries its real ASN.1 Length and
//!    AlgorithmIdentifier and zeros in place of the signature.
//! 4. Encrypted with GSK_e/GSK_a of the current Rekey SA and, when a fragment size is
//!    configured and exceeded, cut into SKF fragments after signing (2.4.1.2, RFC 7383).
//!
//! The datagrams are built once; the caller sends the same bytes N times (2.4.1.3).
//!
//! ## Signature length (RFC 9838 2.4.1.1; docs/interop.md)
//!
//! The signed data contains the AUTH payload with its final length, so the signature's
//! length must be known before signing. Ed25519 and ML-DSA signatures have a fixed length;
//! RSA's is the modulus size. A DER ECDSA P-256 signature is 70, 71 or 72 octets (each of
//! r and s takes a leading zero octet when its top bit is set). Padding a DER signature
//! would make it invalid, so we reserve the most likely length, 71 (probability 1/2), and
//! sign again with a fresh nonce until the signature has that length (at most
//! [`MAX_SIGN_ATTEMPTS`] times; failing all has probability 2^-64). For schemes without a
//! fixed length we adopt the length of the first signature and sign once more. A receiver
//! needs no such care: it zeroes whatever signature it received.
//!
//! # Reader ([`RekeyReader`])
//!
//! `handle(datagram, now)`: route by SPI to a known Rekey SA; drop Message IDs already
//! seen before any cryptographic work; decrypt and check the ICV with GSK_e/GSK_a
//! (reassembling SKF fragments, the reconstructed SK header taking fragment 1's RESERVED
//! octet, 2.4.1.2); verify the AUTH signature with the AUTH_KEY from registration (or
//! require no AUTH with Implicit, 2.4.1); check the Message ID again (2.4.1.4, 8.2.4:
//! at least GSA_INITIAL_MESSAGE_ID, or 0, for the first; above the last accepted after
//! that) and commit it; then read GSA and KD as at registration, unwrapping with GSK_w of the Rekey
//! SA the message came over (KWK ID 0, 3.1.1) or the Working Key Path (3.3). A new Rekey
//! SA replaces the old one, which is deleted DTD seconds later (2.4.1.4).
//!
//! Every failure is a silent drop ([`RekeyDrop`], counted in [`RekeyStats`]): GSA_REKEY
//! has no response, and a forged message must cost the receiver nothing more.

use std::time::{Duration, Instant};

use super::keypath::{self, KeyPath, LkhKey};
use super::parse::{RegistrationError, RekeyAuth, RekeySa, Role, Tek, read_kek, read_tek};
use super::registration::GroupKeys;
use super::state::{GroupState, RekeySaState, TekState, lifetime_at};
use super::{RekeySpi, rekey_spi_to_wire};
use crate::codec::Codec;
use crate::crypto::auth::rekey_data_to_authenticate;
use crate::crypto::sign::{encode_auth_data, parse_auth_data, parse_auth_data_scheme};
use crate::crypto::{
    CryptoError, KeyWrapKey, PublicKey, Random, SignatureScheme, SigningKey, SkKey,
};
use crate::error::DecodeError;
use crate::ike::protect::{self, Opened, Reassembly, UnprotectError};
use crate::registry::{AuthMethod, ExchangeType, PayloadType, ProtocolId};
use crate::wire::auth::AuthPayload;
use crate::wire::delete::DeletePayload;
use crate::wire::gsa::{GsaPayload, GwPolicy, PolicyContext, Spi, Violation};
use crate::wire::header::{Flags, HEADER_LEN, Header};
use crate::wire::kd::{GroupKeyBag, KdPayload, MemberKeyBag, WrappedKey, validate_gsa_kd};
use crate::wire::notify::NotifyPayload;
use crate::wire::payload::{GENERIC_HEADER_LEN, MAX_PAYLOADS, Payload, PayloadsExt, encode_inner};
use crate::wire::rules;

/// Most signing attempts to hit the reserved ECDSA signature length.
pub const MAX_SIGN_ATTEMPTS: usize = 64;

/// Most Rekey SAs a reader keeps at once: the current one and those waiting out their
/// DTD (RFC 9838 2.4.1.4).
pub const MAX_REKEY_SAS: usize = 4;

/// The most likely DER ECDSA P-256 signature length (see the module documentation).
const ECDSA_P256_RESERVED_LEN: usize = 71;

/// Tree keys sent in a GSA_REKEY that changes group membership (RFC 9838 3.2, A.4).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LkhRekey {
    /// The new Rekey SA's keying material goes into one SA_KEY under each of these keys
    /// (Figure 26: `1{K_sa3}, 15{K_sa3}`). Empty: one SA_KEY under the current GSK_w.
    pub kek_under: Vec<LkhKey>,
    /// New tree keys, each under another tree key or, with `None`, under the current
    /// Rekey SA's GSK_w (Figure 26: `6{15}, 16{15}, 11{16}`).
    pub wrap_keys: Vec<(LkhKey, Option<LkhKey>)>,
}

/// What one GSA_REKEY message carries.
#[derive(Debug, Clone, Default)]
pub struct RekeyContent<'a> {
    /// A new Rekey SA replacing the current one (RFC 9838 2.4.1). Its `next_message_id`
    /// should be 0 (2.4.1.3).
    pub new_kek: Option<&'a RekeySaState>,
    /// New Data-Security SAs.
    pub teks: Vec<&'a TekState>,
    /// SAs to delete (RFC 9838 2.4.3, 4.6).
    pub deletes: Vec<DeletePayload>,
    /// Status notifications.
    pub notifies: Vec<NotifyPayload>,
    /// Key tree changes (member exclusion, RFC 9838 A.4).
    pub lkh: Option<LkhRekey>,
    /// A new AUTH_KEY for the following rekeys (RFC 9838 2.4.1, 5 Table 2 note 4). This
    /// message is still signed with the current key.
    pub new_auth_key: Option<&'a PublicKey>,
}

/// One built GSA_REKEY message.
pub struct RekeyMessage {
    /// The Message ID it carries.
    pub message_id: u32,
    /// The datagrams (one, or the SKF fragments in order), to be sent as they are, as
    /// many times as wanted (RFC 9838 2.4.1.3).
    pub datagrams: Vec<Vec<u8>>,
    /// The signed `A | P` (RFC 9838 2.4.1.1), for diagnostics and tests; `None` with
    /// Implicit authentication. It contains the plaintext policy: never log it.
    pub signed_octets: Option<Vec<u8>>,
}

impl core::fmt::Debug for RekeyMessage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RekeyMessage")
            .field("message_id", &self.message_id)
            .field(
                "datagram_lens",
                &self.datagrams.iter().map(Vec::len).collect::<Vec<_>>(),
            )
            .field("signed", &self.signed_octets.is_some())
            .finish()
    }
}

/// Why the GCKS could not build a GSA_REKEY message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RekeyBuildError {
    #[error("the group has no Rekey SA")]
    NoRekeySa,
    /// The current Rekey SA has sent 2^32 messages; a new one is needed first.
    #[error("Message IDs of the current Rekey SA are exhausted")]
    MessageIdsExhausted,
    #[error("an SA to send has expired")]
    Expired,
    #[error("nothing to send: no GSA policy and no Delete (RFC 9838 2.4.1, 2.4.3)")]
    Empty,
    /// A signature of the reserved length was not produced (see the module documentation).
    #[error("no signature of the reserved length after {0} attempts")]
    SignatureLength(usize),
    #[error("{0}")]
    KwkTooShort(#[from] super::state::KwkTooShort),
    #[error("crypto: {0}")]
    Crypto(#[from] CryptoError),
    #[error("built payloads break RFC 9838: {0}")]
    Violation(#[from] Violation),
    #[error("built message breaks the GSA_REKEY payload rules: {0}")]
    Rules(#[from] DecodeError),
}

/// Builds GSA_REKEY messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RekeySender {
    /// The pre-configured fragmentation threshold: the largest IKE message to send, in
    /// octets (RFC 9838 2.4.1.2; RFC 7383 2.5.1). `None` never fragments.
    pub fragment_size: Option<usize>,
}

fn payload_err(e: CryptoError) -> RekeyBuildError {
    RekeyBuildError::Crypto(e)
}

impl RekeySender {
    pub fn new(fragment_size: Option<usize>) -> Self {
        Self { fragment_size }
    }

    /// Builds one message over the group's current Rekey SA and advances its
    /// `next_message_id`. The caller commits the new state before sending (DESIGN.md:
    /// Message IDs never repeat). `now` is on the clock of the state's expiry times.
    pub fn build(
        &self,
        group: &mut GroupState,
        content: &RekeyContent<'_>,
        now: u64,
        rng: &mut dyn Random,
    ) -> Result<RekeyMessage, RekeyBuildError> {
        let kek = group.rekey.as_ref().ok_or(RekeyBuildError::NoRekeySa)?;
        let message_id = kek.next_message_id;
        let next = message_id
            .checked_add(1)
            .ok_or(RekeyBuildError::MessageIdsExhausted)?;
        let gsk_w = kek.kwk()?;
        let sk = kek.sk_key()?;

        let mut inner = group_payloads(group, content, &gsk_w, now)?;
        inner.extend(content.deletes.iter().cloned().map(Payload::Delete));
        inner.extend(content.notifies.iter().cloned().map(Payload::Notify));

        let mut header = Header::new(
            [0; 8],
            [0; 8],
            ExchangeType::GsaRekey,
            Flags::new(true, false),
            message_id,
        );
        header.set_rekey_spi(&kek.spi);

        let signed_octets = match &group.auth {
            super::state::GroupAuth::Implicit => {
                rules::check(ExchangeType::GsaRekey, false, &inner)?;
                None
            }
            super::state::GroupAuth::Signature(key) => Some(sign_into(key, &header, &mut inner)?),
        };
        let datagrams = protect::seal(&sk, rng, &header, &inner, self.fragment_size)?;
        if let Some(k) = group.rekey.as_mut() {
            k.next_message_id = next;
        }
        Ok(RekeyMessage {
            message_id,
            datagrams,
            signed_octets,
        })
    }
}

/// GSA and KD payloads of a rekey (none when it only deletes), checked against the
/// GSA_REKEY rules of RFC 9838 (4.4.2.1 (**), 4.5.2.1, 4.5.3, 5 Table 2).
fn group_payloads(
    group: &GroupState,
    content: &RekeyContent<'_>,
    gsk_w: &KeyWrapKey,
    now: u64,
) -> Result<Vec<Payload>, RekeyBuildError> {
    let life = |expires| lifetime_at(expires, now).ok_or(RekeyBuildError::Expired);
    // RFC 9838 3.1 (R052): GSK_w of the Rekey SA against the group's keys, the new ones
    // included.
    let longest = super::state::longest_encryption_key(
        group.rekey.iter().chain(content.new_kek),
        group.teks.iter().chain(content.teks.iter().copied()),
    );
    super::state::KwkTooShort::check(gsk_w.alg(), longest)?;
    let mut gsa = GsaPayload::new();
    let mut kd = KdPayload::new();
    let mut member = MemberKeyBag::new();
    if let Some(k) = content.new_kek {
        // No GCAUTH in rekeys (4.4.2.1.1); lifetime on every policy (4.4.2.2.1).
        gsa = gsa.with_gsa(k.policy(None, Some(life(k.expires)?)));
        let mut bag = GroupKeyBag::new(ProtocolId::GikeUpdate, k.wire_spi());
        let under = content
            .lkh
            .as_ref()
            .map(|l| l.kek_under.as_slice())
            .unwrap_or_default();
        if under.is_empty() {
            bag = bag.with_sa_key(WrappedKey::new(
                0,
                0,
                gsk_w.wrap(k.keymat().as_bytes()).map_err(payload_err)?,
            ));
        }
        for u in under {
            bag = bag.with_sa_key(WrappedKey::new(
                0,
                u.id,
                u.kwk()?.wrap(k.keymat().as_bytes())?,
            ));
        }
        kd = kd.with(bag);
    }
    if let Some(l) = &content.lkh {
        for (key, under) in &l.wrap_keys {
            member = member.with_wrap_key(keypath::wrap_under(key, under.as_ref(), gsk_w)?);
        }
    }
    if let Some(pk) = content.new_auth_key {
        member = member.with_auth_key(pk.to_spki()?);
    }
    for t in &content.teks {
        t.check_sequence_numbers(group.policy.multiple_senders)?;
        gsa = gsa.with_gsa(t.policy(Some(life(t.expires)?), false));
        kd = kd.with(
            GroupKeyBag::new(t.protocol.id(), Spi::Ipsec(t.spi)).with_sa_key(WrappedKey::new(
                0,
                0,
                gsk_w.wrap(t.keymat().as_bytes())?,
            )),
        );
    }
    if gsa.policies.is_empty() {
        if member != MemberKeyBag::new() {
            // WRAP_KEY and AUTH_KEY travel in a KD, which comes with a GSA (2.4.1).
            return Err(Violation::NoGsaPolicy.into());
        }
        if content.deletes.is_empty() {
            return Err(RekeyBuildError::Empty);
        }
        return Ok(Vec::new());
    }
    // GWP_ATD/GWP_DTD may be refreshed; GWP_SENDER_ID_BITS never (5 Table 2).
    let mut gw = GwPolicy::new();
    gw.atd = group.policy.atd;
    gw.dtd = group.policy.dtd;
    if gw != GwPolicy::new() {
        gsa = gsa.with_gw(gw);
    }
    if member != MemberKeyBag::new() {
        kd = kd.with(member);
    }
    validate_gsa_kd(&gsa, &kd, PolicyContext::Rekey)?;
    Ok(vec![Payload::Gsa(gsa), Payload::Kd(kd)])
}

/// The "A" chunk of a message about to be sealed whole in SK (RFC 9838 2.4.1.1): the IKE
/// header naming SK as first payload, and the SK generic header (Next Payload = first inner
/// payload, RESERVED 0). Lengths are adjusted by `rekey_data_to_authenticate`.
fn a_chunk(header: &Header, first_inner: PayloadType) -> Vec<u8> {
    let mut h = header.clone();
    h.next_payload = PayloadType::Sk;
    let mut a = h.to_bytes();
    a.extend_from_slice(&[first_inner.value(), 0, 0, 0]);
    a
}

/// Appends the AUTH payload to `inner` and signs `A | P` (RFC 9838 2.4.1.1). Returns the
/// signed octets.
fn sign_into(
    key: &SigningKey,
    header: &Header,
    inner: &mut Vec<Payload>,
) -> Result<Vec<u8>, RekeyBuildError> {
    let scheme = key.scheme();
    let fixed = scheme.fixed_signature_len();
    let mut reserved = fixed.unwrap_or(match scheme {
        SignatureScheme::EcdsaP256Sha256 => ECDSA_P256_RESERVED_LEN,
        _ => 256,
    });
    inner.push(Payload::Auth(AuthPayload::new(
        AuthMethod::DigitalSignature,
        Vec::new(),
    )));
    rules::check(ExchangeType::GsaRekey, false, inner)?;
    let at = inner.len() - 1;
    for _ in 0..MAX_SIGN_ATTEMPTS {
        // The AUTH payload as it will be sent, Authentication Data zeroed after the ASN.1
        // Length and AlgorithmIdentifier (2.4.1.1).
        inner[at] = Payload::Auth(AuthPayload::new(
            AuthMethod::DigitalSignature,
            encode_auth_data(scheme, &vec![0; reserved]),
        ));
        let (first, p) = encode_inner(inner);
        let data = rekey_data_to_authenticate(&a_chunk(header, first), &p)?;
        let sig = key.sign(&data)?;
        if sig.len() == reserved {
            inner[at] = Payload::Auth(AuthPayload::new(
                AuthMethod::DigitalSignature,
                encode_auth_data(scheme, &sig),
            ));
            return Ok(data);
        }
        // ECDSA: keep the reserved length and sign again with a fresh nonce; other
        // variable-length schemes (RSA): adopt the length the key produces.
        if scheme != SignatureScheme::EcdsaP256Sha256 {
            reserved = sig.len();
        }
    }
    Err(RekeyBuildError::SignatureLength(MAX_SIGN_ATTEMPTS))
}

/// Zeroes the signature inside the first AUTH payload of a decrypted inner chain (after
/// its ASN.1 Length and AlgorithmIdentifier, RFC 9838 2.4.1.1; RFC 7427 3).
fn zero_auth_signature(first: PayloadType, p: &mut [u8]) -> Result<(), DecodeError> {
    let mut ty = first;
    let mut at = 0usize;
    for _ in 0..MAX_PAYLOADS {
        if ty == PayloadType::NoNext {
            break;
        }
        let hdr = p
            .get(at..at + GENERIC_HEADER_LEN)
            .ok_or(DecodeError::Truncated("payload header"))?;
        let next = PayloadType::from(hdr[0]);
        let len = usize::from(u16::from_be_bytes([hdr[2], hdr[3]]));
        let end = at
            .checked_add(len)
            .filter(|e| *e <= p.len() && len >= GENERIC_HEADER_LEN)
            .ok_or(DecodeError::Truncated("payload"))?;
        if ty == PayloadType::Auth {
            // Auth Method (1), RESERVED (3), then Authentication Data.
            let data_at = at + GENERIC_HEADER_LEN + 4;
            let data = p
                .get(data_at..end)
                .ok_or(DecodeError::Truncated("AUTH payload"))?;
            let (alg, _sig) = parse_auth_data(data).map_err(|_| DecodeError::InvalidValue {
                what: "RFC 7427 Authentication Data",
                value: 0,
            })?;
            let sig_at = data_at + 1 + alg.len();
            for b in p.get_mut(sig_at..end).unwrap_or_default() {
                *b = 0;
            }
            return Ok(());
        }
        ty = next;
        at = end;
    }
    Err(DecodeError::Missing("AUTH"))
}

/// The signed octets `A | P` of a received GSA_REKEY (RFC 9838 2.4.1.1): A from the
/// (first fragment's) header and the reconstructed SK header with fragment 1's RESERVED
/// octet (2.4.1.2), P the inner payloads with the AUTH signature zeroed.
pub fn data_to_authenticate(opened: &Opened) -> Result<Vec<u8>, DecodeError> {
    let mut p = opened.plaintext.clone();
    zero_auth_signature(opened.first_inner, &mut p)?;
    rekey_data_to_authenticate(&opened.int_auth_a(), &p).map_err(|_| DecodeError::InvalidLength {
        what: "GSA_REKEY A | P",
        len: opened.plaintext.len(),
    })
}

/// Why a received GSA_REKEY datagram was dropped. Never answered (RFC 9838 2.4.1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RekeyDrop {
    #[error("malformed GSA_REKEY: {0}")]
    Malformed(DecodeError),
    #[error("not a GSA_REKEY request")]
    NotRekey,
    #[error("no Rekey SA with this SPI")]
    UnknownSpi,
    /// Message ID at or below the last accepted, or below the first expected
    /// (RFC 9838 2.4.1.4, 8.2.4).
    #[error("replayed or stale Message ID {message_id}")]
    Replay { message_id: u32 },
    /// ICV or padding check failed (RFC 9838 2.4.1.4).
    #[error("integrity check failed")]
    Integrity,
    /// No AUTH payload although the GCKS signs (RFC 9838 2.4.1).
    #[error("AUTH payload missing")]
    AuthMissing,
    /// An AUTH payload with Implicit authentication (RFC 9838 2.4.1: MUST NOT).
    #[error("AUTH payload with implicit authentication")]
    AuthNotAllowed,
    /// The signature did not verify with the current AUTH_KEY (RFC 9838 2.4.1.1).
    #[error("bad signature: {0}")]
    BadSignature(CryptoError),
    /// The message was authentic but its policy or keys cannot be installed; its Message
    /// ID is consumed. The member should re-register (RFC 9838 2.4.1.4).
    #[error("unusable content: {0}")]
    Content(RegistrationError),
    /// The member was excluded from the group (RFC 9838 2.4.3) and must re-register.
    #[error("excluded from the group")]
    Excluded,
}

/// Counters of the reader (drops are silent, so these are how operators see them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RekeyStats {
    pub accepted: u64,
    pub replayed: u64,
    pub integrity_failed: u64,
    pub bad_signature: u64,
    pub malformed: u64,
    pub unknown_spi: u64,
    pub bad_content: u64,
}

/// What an accepted GSA_REKEY changes for the member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RekeyUpdate {
    pub message_id: u32,
    /// The Rekey SA it came over.
    pub via: RekeySpi,
    /// The new Rekey SA, now current; the old one stays usable for DTD seconds
    /// (RFC 9838 2.4.1.4).
    pub new_rekey: Option<RekeySa>,
    /// New Data-Security SAs to install (directions per RFC 9838 2.3.3).
    pub teks: Vec<Tek>,
    /// Delete payloads: the SAs they name are deleted after DTD (RFC 9838 2.4.1.4,
    /// 2.4.3). Rekey SA deletes are applied by the reader itself.
    pub deletes: Vec<DeletePayload>,
    pub notifies: Vec<NotifyPayload>,
    /// GWP_ATD / GWP_DTD refreshed by this message.
    pub atd: Option<u16>,
    pub dtd: Option<u16>,
    /// A new AUTH_KEY now verifies the following rekeys (RFC 9838 2.4.1).
    pub auth_key_changed: bool,
    /// Excluded from the group (Delete with zero SPI for GIKE_UPDATE or protocol 0,
    /// RFC 9838 2.4.3): re-register to continue.
    pub excluded: bool,
    /// A sender got counter-mode SAs without holding a Sender-ID: `teks` is empty and the
    /// member MUST re-register (RFC 9838 2.4.1.4).
    pub must_reregister: bool,
}

/// One Rekey SA the reader listens on.
struct KekSlot {
    sa: RekeySa,
    sk: SkKey,
    kwk: KeyWrapKey,
    /// Lowest acceptable Message ID before anything was accepted (RFC 9838 2.4.1.4).
    floor: u32,
    last_accepted: Option<u32>,
    expires: Option<Instant>,
    retire_at: Option<Instant>,
    reassembly: Reassembly,
}

impl KekSlot {
    fn new(sa: RekeySa, now: Instant) -> Result<Self, RegistrationError> {
        let bad = RegistrationError::Unsupported;
        let sk = SkKey::new(
            sa.suite.encr,
            sa.suite.integ,
            sa.keys.gsk_e.as_bytes(),
            sa.keys.gsk_a.as_bytes(),
        )
        .map_err(bad)?;
        let kwk = KeyWrapKey::new(sa.suite.kwa, sa.keys.gsk_w.as_bytes()).map_err(bad)?;
        Ok(Self {
            floor: sa.first_message_id,
            expires: sa.lifetime.map(|s| now + Duration::from_secs(u64::from(s))),
            sa,
            sk,
            kwk,
            last_accepted: None,
            retire_at: None,
            reassembly: Reassembly::default(),
        })
    }

    /// RFC 9838 2.4.1.4: the first message at or above the floor, then strictly growing.
    fn accepts(&self, mid: u32) -> bool {
        mid >= self.floor && self.last_accepted.is_none_or(|l| mid > l)
    }

    fn deadline(&self) -> Option<Instant> {
        match (self.expires, self.retire_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The member's GSA_REKEY receiver for one group.
///
/// Contract (STYLE Q1): [`RekeyReader::handle`] for every datagram that arrives on the
/// Rekey SA's multicast address; [`RekeyReader::poll_timeout`] /
/// [`RekeyReader::handle_timeout`] retire Rekey SAs past their lifetime or DTD.
pub struct RekeyReader {
    slots: Vec<KekSlot>,
    auth: RekeyAuth,
    key_path: KeyPath,
    role: Role,
    sender_ids: Vec<u32>,
    dtd: Option<u16>,
    excluded: bool,
    stats: RekeyStats,
}

impl core::fmt::Debug for RekeyReader {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RekeyReader")
            .field("rekey_sas", &self.slots.len())
            .field("excluded", &self.excluded)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl RekeyReader {
    /// A reader for a fresh registration (RFC 9838 2.3.3). Fails when the registration
    /// has no Rekey SA (the group uses inband rekey only).
    pub fn new(keys: &GroupKeys, now: Instant) -> Result<Self, RegistrationError> {
        let (Some(sa), Some(auth)) = (keys.rekey.clone(), keys.auth.clone()) else {
            return Err(RegistrationError::NoRekeySa);
        };
        Ok(Self {
            slots: vec![KekSlot::new(sa, now)?],
            auth,
            key_path: keys.key_path.clone(),
            role: keys.role,
            sender_ids: keys.sender_ids.clone(),
            dtd: keys.dtd,
            excluded: false,
            stats: RekeyStats::default(),
        })
    }

    /// Replaces everything with a new registration (RFC 9838 2.3.3: "MUST replace any
    /// information related to this group"), except that a GSA_INITIAL_MESSAGE_ID below a
    /// Message ID already received over the same Rekey SA is stale and ignored (2.3.3).
    pub fn reregistered(
        &mut self,
        keys: &GroupKeys,
        now: Instant,
    ) -> Result<(), RegistrationError> {
        let seen = keys.rekey.as_ref().and_then(|r| {
            self.slots
                .iter()
                .find(|s| s.sa.spi == r.spi)
                .and_then(|s| s.last_accepted)
        });
        let mut fresh = Self::new(keys, now)?;
        fresh.stats = self.stats;
        if let (Some(last), Some(slot)) = (seen, fresh.slots.first_mut()) {
            slot.last_accepted = Some(last.max(slot.last_accepted.unwrap_or(0)));
        }
        *self = fresh;
        Ok(())
    }

    pub fn stats(&self) -> RekeyStats {
        self.stats
    }

    pub fn is_excluded(&self) -> bool {
        self.excluded
    }

    /// The Working Key Path (RFC 9838 3.3).
    pub fn key_path(&self) -> &KeyPath {
        &self.key_path
    }

    /// SPIs of the Rekey SAs listened on, newest last.
    pub fn rekey_spis(&self) -> Vec<RekeySpi> {
        self.slots.iter().map(|s| s.sa.spi).collect()
    }

    /// When the next Rekey SA expires or finishes its DTD.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.slots.iter().filter_map(KekSlot::deadline).min()
    }

    /// Forgets Rekey SAs past their lifetime (RFC 9838 4.4.2.2.1) or DTD (2.4.1.4).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.slots.retain(|s| s.deadline().is_none_or(|d| now < d));
    }

    /// Processes one datagram received for this group (without any non-ESP marker).
    /// `Ok(None)`: a fragment was kept, the message is not complete yet.
    pub fn handle(
        &mut self,
        datagram: &[u8],
        now: Instant,
    ) -> Result<Option<RekeyUpdate>, RekeyDrop> {
        self.handle_timeout(now);
        let r = self.handle_inner(datagram, now);
        let s = &mut self.stats;
        match &r {
            Ok(Some(_)) => s.accepted += 1,
            Ok(None) | Err(RekeyDrop::Excluded) => {}
            Err(RekeyDrop::Malformed(_) | RekeyDrop::NotRekey) => s.malformed += 1,
            Err(RekeyDrop::UnknownSpi) => s.unknown_spi += 1,
            Err(RekeyDrop::Replay { .. }) => s.replayed += 1,
            Err(RekeyDrop::Integrity) => s.integrity_failed += 1,
            Err(
                RekeyDrop::AuthMissing | RekeyDrop::AuthNotAllowed | RekeyDrop::BadSignature(_),
            ) => s.bad_signature += 1,
            Err(RekeyDrop::Content(_)) => s.bad_content += 1,
        }
        r
    }

    fn handle_inner(
        &mut self,
        datagram: &[u8],
        now: Instant,
    ) -> Result<Option<RekeyUpdate>, RekeyDrop> {
        if self.excluded {
            return Err(RekeyDrop::Excluded);
        }
        let header = Header::read_datagram(datagram).map_err(RekeyDrop::Malformed)?;
        // RFC 9838 2.4.1: a one-way request; never a response.
        if header.exchange != ExchangeType::GsaRekey || header.flags.is_response() {
            return Err(RekeyDrop::NotRekey);
        }
        let spi = header.rekey_spi();
        let idx = self
            .slots
            .iter()
            .position(|s| s.sa.spi == spi)
            .ok_or(RekeyDrop::UnknownSpi)?;
        // Cheap replay check before any cryptographic work (RFC 9838 2.4.1.4, 8.2.4).
        let slot = &mut self.slots[idx];
        if !slot.accepts(header.message_id) {
            return Err(RekeyDrop::Replay {
                message_id: header.message_id,
            });
        }
        let opened = match protect::open(&slot.sk, datagram, &mut slot.reassembly) {
            Ok(Some(o)) => o,
            Ok(None) => return Ok(None),
            Err(UnprotectError::Crypto(_)) => return Err(RekeyDrop::Integrity),
            Err(UnprotectError::Decode(e) | UnprotectError::Content(e)) => {
                return Err(RekeyDrop::Malformed(e));
            }
        };
        let mid = opened.header.message_id;
        if !slot.accepts(mid) {
            return Err(RekeyDrop::Replay { message_id: mid });
        }
        // RFC 9838 2.4.1 Figures 9 and 12: the header is followed by SK (or SKF) alone.
        if opened.prefix.len() != HEADER_LEN {
            return Err(RekeyDrop::Malformed(DecodeError::InvalidValue {
                what: "payload before SK in GSA_REKEY",
                value: opened.prefix.len() as u64,
            }));
        }
        rules::check(ExchangeType::GsaRekey, false, &opened.payloads)
            .map_err(RekeyDrop::Malformed)?;
        self.authenticate(&opened)?;
        // Authentic: the Message ID is consumed whatever the content (RFC 9838 2.4.1.4).
        self.slots[idx].last_accepted = Some(mid);
        self.apply(idx, mid, &opened.payloads, now)
            .map(Some)
            .map_err(RekeyDrop::Content)
    }

    /// RFC 9838 2.4.1, 2.4.1.1: AUTH with a valid signature by the current AUTH_KEY when
    /// the GCKS signs, no AUTH with Implicit.
    fn authenticate(&self, opened: &Opened) -> Result<(), RekeyDrop> {
        let auth = opened.payloads.iter().find_map(|p| match p {
            Payload::Auth(a) => Some(a),
            _ => None,
        });
        match (&self.auth, auth) {
            (RekeyAuth::Implicit, None) => Ok(()),
            (RekeyAuth::Implicit, Some(_)) => Err(RekeyDrop::AuthNotAllowed),
            (RekeyAuth::Signature { .. }, None) => Err(RekeyDrop::AuthMissing),
            (RekeyAuth::Signature { scheme, key }, Some(a)) => {
                // 4.4.2.1.1: method 14, AlgorithmIdentifier matching GCAUTH's.
                if a.method != AuthMethod::DigitalSignature {
                    return Err(RekeyDrop::BadSignature(CryptoError::AuthenticationFailed(
                        "AUTH method is not Digital Signature",
                    )));
                }
                let (got, sig) =
                    parse_auth_data_scheme(&a.data).map_err(RekeyDrop::BadSignature)?;
                if got != *scheme {
                    return Err(RekeyDrop::BadSignature(CryptoError::AuthenticationFailed(
                        "AlgorithmIdentifier differs from GCAUTH's",
                    )));
                }
                let data = data_to_authenticate(opened).map_err(RekeyDrop::Malformed)?;
                key.verify(*scheme, &data, sig)
                    .map_err(RekeyDrop::BadSignature)
            }
        }
    }

    /// Reads GSA, KD and Delete payloads (RFC 9838 2.4.1.4) and applies them only if all
    /// of them are usable.
    fn apply(
        &mut self,
        idx: usize,
        mid: u32,
        payloads: &[Payload],
        now: Instant,
    ) -> Result<RekeyUpdate, RegistrationError> {
        let via = self.slots[idx].sa.spi;
        let mut update = RekeyUpdate {
            message_id: mid,
            via,
            new_rekey: None,
            teks: Vec::new(),
            deletes: payloads.deletes().cloned().collect(),
            notifies: payloads.notifies().cloned().collect(),
            atd: None,
            dtd: None,
            auth_key_changed: false,
            excluded: false,
            must_reregister: false,
        };
        let mut new_path = None;
        let mut new_auth = None;
        let gsa = payloads.iter().find_map(|p| match p {
            Payload::Gsa(g) => Some(g),
            _ => None,
        });
        let kd = payloads.iter().find_map(|p| match p {
            Payload::Kd(k) => Some(k),
            _ => None,
        });
        if let (Some(gsa), Some(kd)) = (gsa, kd) {
            validate_gsa_kd(gsa, kd, PolicyContext::Rekey)?;
            let member = kd.member().cloned().unwrap_or_default();
            let slot = &self.slots[idx];
            if let Some(ak) = &member.auth_key {
                new_auth = Some(self.new_auth_key(ak.spki_der())?);
            }
            if let Some(p) = gsa.kek() {
                let bag = kd
                    .bag_for(p.protocol, &p.spi)
                    .ok_or(Violation::PolicyWithoutKeyBag {
                        protocol: p.protocol,
                        spi: p.spi,
                    })?;
                // WRAP_KEYs use the KWA of the Rekey SA they came over (4.5.3.1).
                let (sa, path) = read_kek(
                    p,
                    bag,
                    &self.key_path,
                    &slot.kwk,
                    slot.sa.suite.kwa,
                    &member.wrap_keys,
                )?;
                if self.slots.iter().any(|s| s.sa.spi == sa.spi) {
                    return Err(Violation::DuplicateSa {
                        protocol: ProtocolId::GikeUpdate,
                        spi: rekey_spi_to_wire(&sa.spi),
                    }
                    .into());
                }
                new_path = Some(path);
                update.new_rekey = Some(sa);
            }
            for p in gsa.teks() {
                let bag = kd
                    .bag_for(p.protocol, &p.spi)
                    .ok_or(Violation::PolicyWithoutKeyBag {
                        protocol: p.protocol,
                        spi: p.spi,
                    })?;
                update.teks.push(read_tek(p, bag, &slot.kwk, self.role)?);
            }
            // RFC 9838 2.4.1.4: a sender without a Sender-ID MUST NOT install counter-mode
            // SAs and MUST re-register.
            if self.role.is_sender()
                && self.sender_ids.is_empty()
                && update.teks.iter().any(|t| t.counter_mode)
            {
                update.teks.clear();
                update.must_reregister = true;
            }
            if let Some(gw) = gsa.gw() {
                update.atd = gw.atd;
                update.dtd = gw.dtd;
            }
        }

        // Everything is usable: apply.
        if update.dtd.is_some() {
            self.dtd = update.dtd;
        }
        let dtd = Duration::from_secs(self.dtd.map_or(0, u64::from));
        if let Some(p) = new_path {
            self.key_path = p;
        }
        if let Some(a) = new_auth {
            self.auth = a;
            update.auth_key_changed = true;
        }
        for d in &update.deletes {
            // RFC 9838 2.4.3: zero SPI with GIKE_UPDATE, or protocol 0, excludes us.
            if d.excludes_member() {
                update.excluded = true;
            } else if d.protocol == ProtocolId::GikeUpdate {
                for spi in d.spis() {
                    if let Some(s) = self.slots.iter_mut().find(|s| s.sa.spi[..] == spi[..]) {
                        s.retire_at = Some(now + dtd);
                    }
                }
            }
        }
        if let Some(sa) = &update.new_rekey {
            // RFC 9838 2.4.1.4: the Rekey SA this came over is deleted after DTD.
            self.slots[idx].retire_at = Some(now + dtd);
            self.slots.push(KekSlot::new(sa.clone(), now)?);
            while self.slots.len() > MAX_REKEY_SAS {
                self.slots.remove(0);
            }
        }
        if update.excluded {
            self.excluded = true;
        }
        Ok(update)
    }

    /// A new AUTH_KEY (RFC 9838 2.4.1): only with Digital Signature (2.4.1: "MUST NOT be
    /// sent" with Implicit), of a key type fitting the fixed scheme (4.4.2.1.1: the method
    /// never changes).
    fn new_auth_key(&self, spki: &[u8]) -> Result<RekeyAuth, RegistrationError> {
        match &self.auth {
            RekeyAuth::Implicit => Err(Violation::AuthKeyNotAllowed.into()),
            RekeyAuth::Signature { scheme, .. } => {
                let key = PublicKey::from_spki(spki).map_err(RegistrationError::AuthKey)?;
                if !key.key_type().fits(*scheme) {
                    return Err(RegistrationError::AuthKeyMismatch(*scheme));
                }
                Ok(RekeyAuth::Signature {
                    scheme: *scheme,
                    key,
                })
            }
        }
    }
}
