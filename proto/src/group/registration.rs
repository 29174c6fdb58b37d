//! Registration payloads: the GSA and KD payloads a GCKS puts into its GSA_AUTH or
//! GSA_REGISTRATION response (RFC 9838 2.3.4), and the member's reading of them
//! (RFC 9838 2.3.3).
//!
//! GCKS side, [`build_registration`], follows the attribute tables of RFC 9838 5:
//!
//! | attribute | multicast rekey (Table 2) | inband rekey (Table 3) |
//! |---|---|---|
//! | GSA_KEY_LIFETIME | every policy (4.4.2.2.1) | none (4.4.2.2.1: SHOULD NOT) |
//! | GSA_INITIAL_MESSAGE_ID | KEK, when the next Message ID is not 0 (4.4.2.2.2) | none |
//! | GSA_NEXT_SPI | the state's reservations (4.4.2.2.3) | none |
//! | GWP_ATD, GWP_DTD | when configured | when configured |
//! | GWP_SENDER_ID_BITS | counter-mode TEK and (sender or several senders) | same |
//! | SA_KEY | one per SA (4.5.2.1) | one per SA |
//! | WRAP_KEY | the member's key tree path (3.3, A.2) | none (4.5.3.1) |
//! | AUTH_KEY | with Digital Signature (4.4.2.1.1) | none |
//! | GM_SENDER_ID | senders, with a counter-mode TEK (4.5.3.3) | same |
//!
//! With inband rekey the member gets no Rekey SA at all: Table 3 forbids what a Rekey SA
//! needs (GSA_INITIAL_MESSAGE_ID, AUTH_KEY, WRAP_KEY) and 4.4.1 says the KEK policy is not
//! needed "since all SA updates would be performed using the GSA_INBAND_REKEY exchange".
//!
//! GWP_SENDER_ID_BITS (docs/interop.md): 4.4.3.1.2 requires it when "there are more than
//! one sender in the group and any of the Data-Security SAs use counter-based cipher
//! mode"; note 1 of Tables 2 and 3 requires it for a sender with a counter-mode TEK and
//! forbids it otherwise. We send it in both required cases; a receiver in a multi-sender
//! counter-mode group gets it too (the body text wins over the "for convenience" summary,
//! and it lets receivers key replay windows by Sender-ID).
//!
//! SA keys travel wrapped with the IKE SA's default KWK (`IkeSa::key_wrap_key`,
//! RFC 9838 3.1.1), except the Rekey SA's under a key tree: then under the root of the
//! member's path (Appendix A.2, Figure 23). Every output passes `validate_gsa_kd`.
//!
//! Member side, [`read_registration`], validates the payloads (`validate_gsa_kd`), the key
//! sizes (3.4, 4.5.2.1), the Sender-IDs (2.5.2) and AUTH_KEY (4.5.3.2 with ERRATA.md),
//! unwraps and splits the keys, and returns what the member installs ([`GroupKeys`]).

pub use super::parse::{RegistrationError, Role};

use super::keypath::{self, KeyPath, LkhKey};
use super::parse::{RekeyAuth, RekeySa, Tek, read_auth, read_kek, read_tek};
use super::state::{GroupState, lifetime_at};
use crate::crypto::{CryptoError, KeyWrapKey};
use crate::registry::ProtocolId;
use crate::wire::gsa::{GsaPayload, GwPolicy, PolicyContext, Violation};
use crate::wire::kd::{GroupKeyBag, KdPayload, MemberKeyBag, WrappedKey, validate_gsa_kd};

/// What the GCKS grants one registering member (decided by policy, allocated in the
/// store before the response is sent: DESIGN.md).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberGrant {
    /// The member announced GROUP_SENDER (RFC 9838 2.3.3, 4.7.4).
    pub sender: bool,
    /// Sender-IDs allocated to it (RFC 9838 2.5.1): at least one for a sender when a TEK
    /// uses counter mode, none otherwise (4.5.3.3; 5 note 1).
    pub sender_ids: Vec<u32>,
    /// Its key tree path, root first (RFC 9838 3.2, A.2); empty without a key tree.
    pub wrap_keys: Vec<LkhKey>,
    /// The member is rekeyed with GSA_INBAND_REKEY over its IKE SA (RFC 9838 2.4.2).
    pub inband: bool,
}

/// When the payloads are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildContext {
    /// Now, in seconds on the clock of the state's expiry times.
    pub now: u64,
}

/// Why the GCKS could not build a member's payloads. Local errors: the member gets
/// REGISTRATION_FAILED (RFC 9838 4.7.3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The group has neither a Rekey SA nor a Data-Security SA to hand out (RFC 9838
    /// 4.4.1: one GSA policy MUST be present).
    #[error("nothing to hand out: no Rekey SA for this member and no Data-Security SA")]
    EmptyGroup,
    /// An SA has expired.
    #[error("an SA of the group has expired")]
    Expired,
    /// A sender of a counter-mode group without a Sender-ID (RFC 9838 4.5.3.3).
    #[error("sender without Sender-IDs while a TEK uses counter mode (RFC 9838 4.5.3.3)")]
    SenderIdsMissing,
    /// Sender-IDs for a receiver, or without a counter-mode TEK (RFC 9838 5 note 1).
    #[error("Sender-IDs for a receiver or without a counter-mode TEK (RFC 9838 5 note 1)")]
    SenderIdsNotAllowed,
    /// Counter-mode TEKs need GWP_SENDER_ID_BITS in the group policy (RFC 9838 4.4.3.1.2).
    #[error("counter-mode TEKs with senders but no GWP_SENDER_ID_BITS configured")]
    SenderIdBitsMissing,
    /// A key tree needs multicast rekey (RFC 9838 4.5.3.1).
    #[error("key tree keys for a member without a multicast Rekey SA (RFC 9838 4.5.3.1)")]
    WrapKeysWithoutRekeySa,
    /// The member's KWK is shorter than the group's keys (RFC 9838 3.1).
    #[error("{0}")]
    KwkTooShort(#[from] super::state::KwkTooShort),
    /// Key wrapping or key splitting failed.
    #[error("crypto: {0}")]
    Crypto(#[from] CryptoError),
    /// The payloads broke a rule of RFC 9838 (a bug in the state or in this builder).
    #[error("built payloads break RFC 9838: {0}")]
    Violation(#[from] Violation),
}

fn lifetime(expires: u64, now: u64) -> Result<u32, BuildError> {
    lifetime_at(expires, now).ok_or(BuildError::Expired)
}

/// The GSA and KD payloads for `member` (RFC 9838 2.3.4; 5 Tables 2 and 3). `kwk` is the
/// default KWK of the member's IKE SA (`IkeSa::key_wrap_key`, RFC 9838 3.1.1).
pub fn build_registration(
    state: &GroupState,
    member: &MemberGrant,
    kwk: &KeyWrapKey,
    ctx: &BuildContext,
) -> Result<(GsaPayload, KdPayload), BuildError> {
    build(state, member, kwk, ctx, PolicyContext::Registration)
}

/// The GSA and KD payloads of a GSA_INBAND_REKEY to a member of a group rekeyed in-band
/// (RFC 9838 2.4.2.1: "built in the same manner as in a registration exchange"), under
/// the rekey rules of Table 3: no KEK, no lifetimes or GSA_NEXT_SPI (4.4.2.2.1,
/// 4.4.2.2.3), no member key bag, so no GM_SENDER_ID (4.5.3.3, R107), WRAP_KEY (4.5.3.1,
/// R097) or AUTH_KEY, and no GWP_SENDER_ID_BITS (Table 3 note 1). A sender keeps the
/// Sender-IDs it registered with ([`read_inband_rekey`]). `kwk` is the default KWK of the
/// member's IKE SA the exchange goes over (3.1.1).
pub fn build_inband_rekey(
    state: &GroupState,
    sender: bool,
    kwk: &KeyWrapKey,
    ctx: &BuildContext,
) -> Result<(GsaPayload, KdPayload), BuildError> {
    let member = MemberGrant {
        sender,
        inband: true,
        ..MemberGrant::default()
    };
    build(state, &member, kwk, ctx, PolicyContext::InbandRekey)
}

fn build(
    state: &GroupState,
    member: &MemberGrant,
    kwk: &KeyWrapKey,
    ctx: &BuildContext,
    context: PolicyContext,
) -> Result<(GsaPayload, KdPayload), BuildError> {
    let rekey = context == PolicyContext::InbandRekey;
    let kek = if member.inband {
        None
    } else {
        state.rekey.as_ref()
    };
    let multicast = kek.is_some();
    if !member.wrap_keys.is_empty() && !multicast {
        return Err(BuildError::WrapKeysWithoutRekeySa);
    }
    if kek.is_none() && state.teks.is_empty() {
        return Err(BuildError::EmptyGroup);
    }
    state.check_kwk(kwk.alg())?;

    let mut gsa = GsaPayload::new();
    let mut kd = KdPayload::new();
    let mut member_bag = MemberKeyBag::new();

    if let Some(k) = kek {
        // RFC 9838 4.4.2.1.1: GCAUTH at registration; 4.4.2.2.1: lifetime with multicast
        // rekey; 4.4.2.2.2: GSA_INITIAL_MESSAGE_ID when the next Message ID is not zero.
        let life = lifetime(k.expires, ctx.now)?;
        gsa = gsa.with_gsa(k.policy(Some(&state.auth), Some(life)));
        let mut bag = GroupKeyBag::new(ProtocolId::GikeUpdate, k.wire_spi());
        match member.wrap_keys.first() {
            // RFC 9838 A.2 Figure 23: the SA key under the root of the member's path, the
            // path keys each under the key below, the leaf under the default KWK.
            Some(root) => {
                bag = bag.with_sa_key(WrappedKey::new(
                    0,
                    root.id,
                    root.kwk()?.wrap(k.keymat().as_bytes())?,
                ));
                for w in keypath::wrap_path(&member.wrap_keys, kwk)? {
                    member_bag = member_bag.with_wrap_key(w);
                }
            }
            None => {
                bag = bag.with_sa_key(WrappedKey::new(0, 0, kwk.wrap(k.keymat().as_bytes())?));
            }
        }
        kd = kd.with(bag);
        // RFC 9838 4.4.2.1.1, 4.5.3.2: AUTH_KEY with Digital Signature, never with Implicit.
        if let Some(spki) = state.auth.auth_key_spki()? {
            member_bag = member_bag.with_auth_key(spki);
        }
    }

    for t in &state.teks {
        t.check_sequence_numbers(state.policy.multiple_senders)?;
        let life = if multicast {
            Some(lifetime(t.expires, ctx.now)?)
        } else {
            None
        };
        gsa = gsa.with_gsa(t.policy(life, !multicast));
        kd = kd.with(
            GroupKeyBag::new(t.protocol.id(), crate::wire::gsa::Spi::Ipsec(t.spi))
                .with_sa_key(WrappedKey::new(0, 0, kwk.wrap(t.keymat().as_bytes())?)),
        );
    }

    // RFC 9838 2.5.1, 4.5.3.3, 5 note 1: Sender-IDs for senders of counter-mode TEKs (at
    // registration; a rekey carries none, the sender keeps its own).
    let counter = state.uses_counter_mode();
    match (
        counter && member.sender && !rekey,
        member.sender_ids.is_empty(),
    ) {
        (true, true) => return Err(BuildError::SenderIdsMissing),
        (false, false) => return Err(BuildError::SenderIdsNotAllowed),
        _ => {}
    }
    for id in &member.sender_ids {
        member_bag = member_bag.with_sender_id(*id);
    }

    let mut gw = GwPolicy::new();
    gw.atd = state.policy.atd;
    gw.dtd = state.policy.dtd;
    // RFC 9838 4.4.3.1.2 and 5 note 1 (see the module documentation).
    if counter && (member.sender || state.policy.multiple_senders) && !rekey {
        gw.sender_id_bits = Some(
            state
                .policy
                .sender_id_bits
                .ok_or(BuildError::SenderIdBitsMissing)?,
        );
    }
    if gw != GwPolicy::new() {
        gsa = gsa.with_gw(gw);
    }
    if member_bag != MemberKeyBag::new() {
        kd = kd.with(member_bag);
    }

    // What we send must pass what we check on receipt (RFC 9838 4.4, 4.5, 5).
    validate_gsa_kd(&gsa, &kd, context)?;
    Ok((gsa, kd))
}

/// What a registered member installs (RFC 9838 2.3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupKeys {
    /// The Rekey SA (inbound only), when the group uses multicast rekey.
    pub rekey: Option<RekeySa>,
    /// How GSA_REKEY messages are authenticated; present with `rekey`.
    pub auth: Option<RekeyAuth>,
    /// The Data-Security SAs, with the directions to install them in.
    pub teks: Vec<Tek>,
    /// GM_SENDER_ID values (RFC 9838 4.5.3.3), for counter-mode IVs (2.5.2).
    pub sender_ids: Vec<u32>,
    /// GWP_SENDER_ID_BITS (RFC 9838 4.4.3.1.2).
    pub sender_id_bits: Option<u16>,
    /// GWP_ATD in seconds (RFC 9838 4.4.3.1.1).
    pub atd: Option<u16>,
    /// GWP_DTD in seconds (RFC 9838 4.4.3.1.1).
    pub dtd: Option<u16>,
    /// The Working Key Path from WRAP_KEYs (RFC 9838 3.3); empty without a key tree.
    pub key_path: KeyPath,
    /// The role this was read for.
    pub role: Role,
}

/// Reads the GSA and KD payloads of a GSA_AUTH or GSA_REGISTRATION response (RFC 9838
/// 2.3.3). `kwk` is the default KWK of the IKE SA they came over (RFC 9838 3.1.1).
///
/// Checks the structure (`validate_gsa_kd` with the registration rules: one key bag per
/// policy, AUTH_KEY exactly with Digital Signature, Sender-IDs fit GWP_SENDER_ID_BITS,
/// 2.5.2), that AUTH_KEY's key type fits the signature algorithm (4.5.3.2, ERRATA.md),
/// that each SA's keying material has exactly its 3.4 size (4.5.2.1), and that a sender
/// of a counter-mode SA got a Sender-ID (4.5.3.3). Directions follow 2.3.3: receivers
/// inbound only; senders outbound, and inbound too when they also receive.
pub fn read_registration(
    gsa: &GsaPayload,
    kd: &KdPayload,
    kwk: &KeyWrapKey,
    role: Role,
) -> Result<GroupKeys, RegistrationError> {
    read(gsa, kd, kwk, role, None)
}

/// Reads the GSA and KD payloads of a GSA_INBAND_REKEY request (RFC 9838 2.4.2.2: "in
/// the same manner as if they were received in a registration exchange"), checked with
/// the rules of that exchange (Table 3: no member key bag, no GWP_SENDER_ID_BITS, no
/// GSA_NEXT_SPI). The exchange carries no Sender-IDs (4.5.3.3), so a sender keeps those
/// it registered with and the GWP_SENDER_ID_BITS that came with them: `held`.
pub fn read_inband_rekey(
    gsa: &GsaPayload,
    kd: &KdPayload,
    kwk: &KeyWrapKey,
    role: Role,
    held: &HeldSenderIds,
) -> Result<GroupKeys, RegistrationError> {
    read(gsa, kd, kwk, role, Some(held))
}

/// The Sender-IDs a member holds from its registration, with their GWP_SENDER_ID_BITS
/// (RFC 9838 2.5.1, 4.4.3.1.2), kept across GSA_INBAND_REKEY exchanges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldSenderIds {
    pub ids: Vec<u32>,
    pub bits: Option<u16>,
}

fn read(
    gsa: &GsaPayload,
    kd: &KdPayload,
    kwk: &KeyWrapKey,
    role: Role,
    held: Option<&HeldSenderIds>,
) -> Result<GroupKeys, RegistrationError> {
    let context = if held.is_some() {
        PolicyContext::InbandRekey
    } else {
        PolicyContext::Registration
    };
    validate_gsa_kd(gsa, kd, context)?;
    let mut member = kd.member().cloned().unwrap_or_default();
    let mut gw = gsa.gw().cloned().unwrap_or_default();
    if let Some(h) = held {
        member.sender_ids = h.ids.clone();
        gw.sender_id_bits = h.bits;
    }

    let (rekey, auth, key_path) = match gsa.kek() {
        Some(p) => {
            let bag = kd
                .bag_for(p.protocol, &p.spi)
                .ok_or(Violation::PolicyWithoutKeyBag {
                    protocol: p.protocol,
                    spi: p.spi,
                })?;
            let auth = read_auth(p, member.auth_key.as_ref())?;
            // RFC 9838 2.3.3: a registration replaces everything, so the path starts empty;
            // WRAP_KEYs use the key wrap algorithm of the IKE SA they came over (4.5.3.1).
            let (sa, path) = read_kek(p, bag, &KeyPath::new(), kwk, kwk.alg(), &member.wrap_keys)?;
            (Some(sa), Some(auth), path)
        }
        None => (None, None, KeyPath::new()),
    };

    let mut teks = Vec::new();
    for p in gsa.teks() {
        let bag = kd
            .bag_for(p.protocol, &p.spi)
            .ok_or(Violation::PolicyWithoutKeyBag {
                protocol: p.protocol,
                spi: p.spi,
            })?;
        teks.push(read_tek(p, bag, kwk, role)?);
    }
    // RFC 9838 4.5.3.3, 2.4.1.4: a sender of a counter-mode SA needs a Sender-ID.
    if role.is_sender() && member.sender_ids.is_empty() && teks.iter().any(|t| t.counter_mode) {
        return Err(RegistrationError::SenderWithoutSenderId);
    }
    Ok(GroupKeys {
        rekey,
        auth,
        teks,
        sender_ids: member.sender_ids,
        sender_id_bits: gw.sender_id_bits,
        atd: gw.atd,
        dtd: gw.dtd,
        key_path,
        role,
    })
}
