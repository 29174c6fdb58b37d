//! Payload rule tables: which payloads each exchange allows, per direction, how often,
//! and whether they travel inside SK (STYLE S3, after strongSwan's `payload_rule_t`).
//! Checked before any handler runs, so a handler never sees a message of the wrong
//! shape.
//!
//! Two steps:
//! - [`check_outer`] on the decoded outer chain: IKE_SA_INIT is plain and carries no
//!   SK/SKF; every other exchange carries exactly one SK or SKF, last (RFC 7296 1.2, 3.14;
//!   RFC 7383 2.5), except an INFORMATIONAL outside an IKE SA (RFC 7296 1.5).
//! - [`check`] on the payloads a handler will read: the outer chain of IKE_SA_INIT (and
//!   of a plain INFORMATIONAL), the decrypted inner chain otherwise.
//!
//! Common rules: unknown non-critical payloads are ignored (RFC 7296 2.5); Vendor ID
//! payloads may appear in any message (RFC 7296 3.12); a known payload type the table
//! does not list is refused. Where an error notify (type < 16384) is present, the
//! minimum counts are waived, since error responses carry only what RFC 7296 2.21 and
//! RFC 9838 2.3.1 (Figure 5) show; maximums still hold.

use crate::error::DecodeError;
use crate::registry::{ExchangeType, NotifyType, PayloadType};
use crate::wire::payload::{MAX_NOTIFY_PAYLOADS, Payload, PayloadsExt};

/// Occurrences allowed for one payload type in one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadRule {
    pub ty: PayloadType,
    pub min: u8,
    pub max: u8,
}

const fn r(ty: PayloadType, min: u8, max: u8) -> PayloadRule {
    PayloadRule { ty, min, max }
}

const MANY: u8 = MAX_NOTIFY_PAYLOADS as u8;
/// Certificates in one message: "up to four X.509 certificates" MUST be supported
/// (RFC 7296 3.6); we accept a few more for longer chains.
const CERTS: u8 = 8;

/// Shape of one message: exchange type and direction.
#[derive(Debug, Clone, Copy)]
pub struct MessageRule {
    pub exchange: ExchangeType,
    pub response: bool,
    /// Whether the payloads travel inside SK (RFC 7296 1.2: all but IKE_SA_INIT).
    pub encrypted: bool,
    pub payloads: &'static [PayloadRule],
    /// A COOKIE notify alone is a complete message (IKE_SA_INIT response, RFC 7296 2.6).
    pub cookie_sufficient: bool,
    /// Both or neither of these (GSA with its KD, RFC 9838 2.3.1, 2.4.1).
    pub together: Option<[PayloadType; 2]>,
    /// At least one of these unless an error notify is present (GSA_REKEY carries new
    /// policy or a Delete, RFC 9838 2.4.1, 2.4.3).
    pub one_of: &'static [PayloadType],
}

use PayloadType as P;

/// RFC 7296 1.2, 2.6; RFC 7383 2.3; RFC 9242 3: `HDR, [N(COOKIE),] SAi1, KEi, Ni, [N+]`.
const IKE_SA_INIT_REQ: &[PayloadRule] = &[
    r(P::Sa, 1, 1),
    r(P::Ke, 1, 1),
    r(P::Nonce, 1, 1),
    r(P::Notify, 0, MANY),
];
/// RFC 7296 1.2: `HDR, SAr1, KEr, Nr, [CERTREQ], [N+]`; or `HDR, N(COOKIE)` (2.6); or an
/// error notify such as INVALID_KE_PAYLOAD or NO_PROPOSAL_CHOSEN (1.2, 2.21.1).
const IKE_SA_INIT_RESP: &[PayloadRule] = &[
    r(P::Sa, 1, 1),
    r(P::Ke, 1, 1),
    r(P::Nonce, 1, 1),
    r(P::CertReq, 0, CERTS),
    r(P::Notify, 0, MANY),
];
/// RFC 9242 3 leaves the content to the extensions; RFC 9370 2.2.2 puts one KE in each.
const IKE_INTERMEDIATE: &[PayloadRule] = &[r(P::Ke, 0, 1), r(P::Notify, 0, MANY)];
/// RFC 7296 1.2 with RFC 6023 (childless): `SK{IDi, [CERT+], [CERTREQ+], [IDr], AUTH,
/// [N+]}`. SAi2/TSi/TSr are accepted (a peer may still offer a Child SA) but optional.
const IKE_AUTH_REQ: &[PayloadRule] = &[
    r(P::IdI, 1, 1),
    r(P::Cert, 0, CERTS),
    r(P::CertReq, 0, CERTS),
    r(P::IdR, 0, 1),
    r(P::Auth, 1, 1),
    r(P::Sa, 0, 1),
    r(P::TsI, 0, 1),
    r(P::TsR, 0, 1),
    r(P::Notify, 0, MANY),
];
/// RFC 7296 1.2 / RFC 6023: `SK{IDr, [CERT+], AUTH, [SAr2, TSi, TSr], [N+]}`.
const IKE_AUTH_RESP: &[PayloadRule] = &[
    r(P::IdR, 1, 1),
    r(P::Cert, 0, CERTS),
    r(P::Auth, 1, 1),
    r(P::Sa, 0, 1),
    r(P::TsI, 0, 1),
    r(P::TsR, 0, 1),
    r(P::Notify, 0, MANY),
];
/// RFC 7296 1.3: `SK{[N], SA, Ni, [KEi], [TSi, TSr]}` (IKE SA rekey: SA, Ni, KEi).
const CREATE_CHILD_SA: &[PayloadRule] = &[
    r(P::Sa, 1, 1),
    r(P::Nonce, 1, 1),
    r(P::Ke, 0, 1),
    r(P::TsI, 0, 1),
    r(P::TsR, 0, 1),
    r(P::Notify, 0, MANY),
];
/// RFC 7296 1.4: `SK{[N,] [D,] [CP,] ...}`.
const INFORMATIONAL: &[PayloadRule] = &[r(P::Notify, 0, MANY), r(P::Delete, 0, MANY)];
/// RFC 9370 2.2.4: `SK{KEi(n), N(ADDITIONAL_KEY_EXCHANGE)}` and the KEr(n) reply.
const IKE_FOLLOWUP_KE: &[PayloadRule] = &[r(P::Ke, 1, 1), r(P::Notify, 1, MANY)];
/// RFC 9838 2.3.1 Figure 3: `SK{IDi, [CERT,] [CERTREQ,] [IDr,] AUTH, IDg, [SAg,]
/// [N(GROUP_SENDER),] [N]}`.
const GSA_AUTH_REQ: &[PayloadRule] = &[
    r(P::IdI, 1, 1),
    r(P::Cert, 0, CERTS),
    r(P::CertReq, 0, CERTS),
    r(P::IdR, 0, 1),
    r(P::Auth, 1, 1),
    r(P::IdG, 1, 1),
    r(P::Sa, 0, 1),
    r(P::Notify, 0, MANY),
];
/// RFC 9838 2.3.1 Figure 4: `SK{IDr, [CERT,] AUTH, GSA, KD, [N]}`; Figure 5 (group
/// errors: `SK{IDr, [CERT,] AUTH, N}`) and RFC 7296 2.21.2 errors waive the minimums.
const GSA_AUTH_RESP: &[PayloadRule] = &[
    r(P::IdR, 1, 1),
    r(P::Cert, 0, CERTS),
    r(P::Auth, 1, 1),
    r(P::Gsa, 1, 1),
    r(P::Kd, 1, 1),
    r(P::Notify, 0, MANY),
];
/// RFC 9838 2.3.2 Figures 6-8: `SK{IDg, [SAg,] [N(GROUP_SENDER),] [N]}`, or `SK{IDg, N}`
/// when the member reports an error or leaves.
const GSA_REGISTRATION_REQ: &[PayloadRule] =
    &[r(P::IdG, 1, 1), r(P::Sa, 0, 1), r(P::Notify, 0, MANY)];
/// RFC 9838 2.3.2: `SK{GSA, KD, [N]}` (Figure 6), `SK{N}` (Figure 7), or `SK{}` answering
/// a member's error report (Figure 8). Which one is due depends on the request:
/// [`expect_registration_result`] adds the check for a join.
const GSA_REGISTRATION_RESP: &[PayloadRule] =
    &[r(P::Gsa, 0, 1), r(P::Kd, 0, 1), r(P::Notify, 0, MANY)];
/// RFC 9838 2.4.1 Figure 9 `SK{GSA, KD, [N,] [AUTH]}`, 2.4.3 Figure 12 `SK{D, [N,]
/// [AUTH]}`; a Delete "MAY be included" with new policy too (2.4.1).
const GSA_REKEY: &[PayloadRule] = &[
    r(P::Gsa, 0, 1),
    r(P::Kd, 0, 1),
    r(P::Delete, 0, MANY),
    r(P::Notify, 0, MANY),
    r(P::Auth, 0, 1),
];
/// RFC 9838 2.4.2 Figure 11 `SK{GSA, KD, [N]}` and 2.4.3 Figure 13 `SK{D, [N]}`.
const GSA_INBAND_REKEY_REQ: &[PayloadRule] = &[
    r(P::Gsa, 0, 1),
    r(P::Kd, 0, 1),
    r(P::Delete, 0, MANY),
    r(P::Notify, 0, MANY),
];
/// RFC 9838 2.4.2: the member answers `SK{}`; an error notify is allowed as in any
/// response (RFC 7296 2.21.3).
const GSA_INBAND_REKEY_RESP: &[PayloadRule] = &[r(P::Notify, 0, MANY)];

const fn rule(
    exchange: ExchangeType,
    response: bool,
    payloads: &'static [PayloadRule],
) -> MessageRule {
    MessageRule {
        exchange,
        response,
        encrypted: true,
        payloads,
        cookie_sufficient: false,
        together: None,
        one_of: &[],
    }
}

const GSA_KD: Option<[PayloadType; 2]> = Some([P::Gsa, P::Kd]);

/// Every message shape this implementation accepts.
pub const MESSAGE_RULES: &[MessageRule] = &[
    MessageRule {
        encrypted: false,
        ..rule(ExchangeType::IkeSaInit, false, IKE_SA_INIT_REQ)
    },
    MessageRule {
        encrypted: false,
        cookie_sufficient: true,
        ..rule(ExchangeType::IkeSaInit, true, IKE_SA_INIT_RESP)
    },
    rule(ExchangeType::IkeIntermediate, false, IKE_INTERMEDIATE),
    rule(ExchangeType::IkeIntermediate, true, IKE_INTERMEDIATE),
    rule(ExchangeType::IkeAuth, false, IKE_AUTH_REQ),
    rule(ExchangeType::IkeAuth, true, IKE_AUTH_RESP),
    rule(ExchangeType::CreateChildSa, false, CREATE_CHILD_SA),
    rule(ExchangeType::CreateChildSa, true, CREATE_CHILD_SA),
    rule(ExchangeType::Informational, false, INFORMATIONAL),
    rule(ExchangeType::Informational, true, INFORMATIONAL),
    rule(ExchangeType::IkeFollowupKe, false, IKE_FOLLOWUP_KE),
    rule(ExchangeType::IkeFollowupKe, true, IKE_FOLLOWUP_KE),
    rule(ExchangeType::GsaAuth, false, GSA_AUTH_REQ),
    MessageRule {
        together: GSA_KD,
        ..rule(ExchangeType::GsaAuth, true, GSA_AUTH_RESP)
    },
    rule(ExchangeType::GsaRegistration, false, GSA_REGISTRATION_REQ),
    MessageRule {
        together: GSA_KD,
        ..rule(ExchangeType::GsaRegistration, true, GSA_REGISTRATION_RESP)
    },
    // GSA_REKEY is one-way: there is no response rule (RFC 9838 2.4.1).
    MessageRule {
        together: GSA_KD,
        one_of: &[P::Gsa, P::Delete],
        ..rule(ExchangeType::GsaRekey, false, GSA_REKEY)
    },
    MessageRule {
        together: GSA_KD,
        one_of: &[P::Gsa, P::Delete],
        ..rule(ExchangeType::GsaInbandRekey, false, GSA_INBAND_REKEY_REQ)
    },
    rule(ExchangeType::GsaInbandRekey, true, GSA_INBAND_REKEY_RESP),
];

/// The rule for a message, if the exchange/direction exists.
pub fn rule_for(exchange: ExchangeType, is_response: bool) -> Option<&'static MessageRule> {
    MESSAGE_RULES
        .iter()
        .find(|m| m.exchange == exchange && m.response == is_response)
}

fn name(ty: PayloadType) -> &'static str {
    ty.name().unwrap_or("payload")
}

/// Whether the message's payloads are protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// Plain payloads: IKE_SA_INIT, or an INFORMATIONAL outside any IKE SA.
    Plain,
    /// One SK payload, last.
    Sk,
    /// One SKF payload, last (RFC 7383 2.5).
    Skf,
}

/// Checks the outer chain of a received message against its exchange: IKE_SA_INIT is
/// never encrypted nor fragmented (RFC 7296 1.2; RFC 7383 2.5: only messages with an SK
/// payload are fragmented); every other exchange carries its payloads in one SK or SKF
/// payload and nothing else but unknown non-critical payloads (RFC 7296 1.2, 3.14).
/// An INFORMATIONAL may be plain, carrying only notifies: that is how errors are reported
/// outside an IKE SA (RFC 7296 1.5). A GSA_REKEY is never a response (RFC 9838 2.4.1).
pub fn check_outer(
    exchange: ExchangeType,
    is_response: bool,
    payloads: &[Payload],
) -> Result<Protection, DecodeError> {
    let rule = rule_for(exchange, is_response).ok_or(DecodeError::InvalidValue {
        what: "exchange type and direction",
        value: exchange.value().into(),
    })?;
    let known: Vec<&Payload> = payloads.iter().filter(|p| !p.is_unknown()).collect();
    if !rule.encrypted {
        if let Some(p) = known.iter().find(|p| p.is_encrypted()) {
            return Err(not_allowed(p.ty()));
        }
        return Ok(Protection::Plain);
    }
    match known.as_slice() {
        [Payload::Sk(_)] => Ok(Protection::Sk),
        [Payload::Skf(_)] => Ok(Protection::Skf),
        rest if exchange == ExchangeType::Informational
            && rest.iter().all(|p| matches!(p, Payload::Notify(_))) =>
        {
            Ok(Protection::Plain)
        }
        [] => Err(DecodeError::Missing("SK")),
        [first, ..] => Err(not_allowed(
            known
                .iter()
                .find(|p| !p.is_encrypted())
                .map_or(first.ty(), |p| p.ty()),
        )),
    }
}

fn not_allowed(ty: PayloadType) -> DecodeError {
    DecodeError::InvalidValue {
        what: "payload type not allowed in this message",
        value: ty.value().into(),
    }
}

/// Checks the payloads a handler will read against the table for `exchange` and
/// direction: counts, allowed types, GSA/KD pairing, and the COOKIE-first rule of
/// IKE_SA_INIT requests (RFC 7296 2.6).
pub fn check(
    exchange: ExchangeType,
    is_response: bool,
    payloads: &[Payload],
) -> Result<(), DecodeError> {
    let rule = rule_for(exchange, is_response).ok_or(DecodeError::InvalidValue {
        what: "exchange type and direction",
        value: exchange.value().into(),
    })?;
    // Known payloads the table does not list are refused; Vendor IDs and unknown
    // non-critical payloads are always allowed (RFC 7296 3.12, 2.5).
    for p in payloads {
        let ty = p.ty();
        if p.is_unknown() || ty == P::VendorId {
            continue;
        }
        if !rule.payloads.iter().any(|pr| pr.ty == ty) {
            return Err(not_allowed(ty));
        }
    }
    let has_error = payloads.error_notify().is_some();
    let waived = has_error || (rule.cookie_sufficient && payloads.has_notify(NotifyType::Cookie));
    for pr in rule.payloads {
        let n = payloads.count_of(pr.ty);
        if n > pr.max.into() {
            return Err(DecodeError::TooMany(name(pr.ty)));
        }
        if n < pr.min.into() && !waived {
            return Err(DecodeError::Missing(name(pr.ty)));
        }
    }
    if let Some([a, b]) = rule.together {
        let (ha, hb) = (payloads.find(a).is_some(), payloads.find(b).is_some());
        if ha != hb {
            return Err(DecodeError::Missing(name(if ha { b } else { a })));
        }
    }
    if !rule.one_of.is_empty()
        && !has_error
        && !rule.one_of.iter().any(|t| payloads.find(*t).is_some())
    {
        return Err(DecodeError::Missing(name(rule.one_of[0])));
    }
    // RFC 7296 2.6: the retried IKE_SA_INIT carries the COOKIE "as the first payload".
    if exchange == ExchangeType::IkeSaInit && !is_response {
        let cookie_at = payloads
            .iter()
            .position(|p| matches!(p, Payload::Notify(n) if n.ty == NotifyType::Cookie));
        if cookie_at.is_some_and(|i| i != 0) {
            return Err(DecodeError::InvalidValue {
                what: "COOKIE notify not first",
                value: NotifyType::Cookie.value().into(),
            });
        }
    }
    Ok(())
}

/// For a GSA_REGISTRATION or GSA_AUTH response to a join request: the group policy and
/// keys (GSA and KD) or an error notify must be there (RFC 9838 2.3.1 Figures 4-5,
/// 2.3.2 Figures 6-7). Run after [`check`].
pub fn expect_registration_result(payloads: &[Payload]) -> Result<(), DecodeError> {
    if payloads.error_notify().is_some() {
        return Ok(());
    }
    for ty in [P::Gsa, P::Kd] {
        if payloads.find(ty).is_none() {
            return Err(DecodeError::Missing(name(ty)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;
    use crate::registry::KeId;
    use crate::wire::auth::AuthPayload;
    use crate::wire::delete::DeletePayload;
    use crate::wire::gsa::GsaPayload;
    use crate::wire::id::IdPayload;
    use crate::wire::kd::KdPayload;
    use crate::wire::ke::KePayload;
    use crate::wire::nonce::NoncePayload;
    use crate::wire::notify::NotifyPayload;
    use crate::wire::sa::SaPayload;
    use crate::wire::sk::EncryptedPayload;
    use crate::wire::vendor::VendorIdPayload;

    fn sa() -> Payload {
        Payload::Sa(SaPayload::new(Vec::new()))
    }
    fn ke() -> Payload {
        Payload::Ke(KePayload::new(KeId::Curve25519, vec![1; 32]))
    }
    fn nonce() -> Payload {
        Payload::Nonce(NoncePayload::new(vec![2; 32]).unwrap())
    }
    fn n(ty: NotifyType) -> Payload {
        Payload::Notify(NotifyPayload::new(ty, Vec::new()))
    }
    // Both GSA and KD bodies decode from zero octets (an empty policy/bag list); the
    // rule check only looks at payload types.
    fn gsa() -> Payload {
        Payload::Gsa(GsaPayload::read_bytes(&[]).unwrap())
    }
    fn kd() -> Payload {
        Payload::Kd(KdPayload::read_bytes(&[]).unwrap())
    }
    fn idg() -> Payload {
        Payload::IdG(IdPayload::key_id(vec![7]))
    }
    fn auth() -> Payload {
        Payload::Auth(AuthPayload::new(
            crate::registry::AuthMethod::DigitalSignature,
            vec![1],
        ))
    }

    #[test]
    fn ike_sa_init() {
        let ok = [
            sa(),
            ke(),
            nonce(),
            n(NotifyType::Ikev2FragmentationSupported),
        ];
        assert_eq!(check(ExchangeType::IkeSaInit, false, &ok), Ok(()));
        assert_eq!(
            check(ExchangeType::IkeSaInit, false, &[sa(), nonce()]),
            Err(DecodeError::Missing("KE"))
        );
        assert_eq!(
            check(ExchangeType::IkeSaInit, false, &[sa(), ke(), ke(), nonce()]),
            Err(DecodeError::TooMany("KE"))
        );
        // COOKIE first, else refused.
        let cookie = Payload::Notify(NotifyPayload::cookie(&[1; 8]).unwrap());
        let first = [cookie.clone(), sa(), ke(), nonce()];
        assert_eq!(check(ExchangeType::IkeSaInit, false, &first), Ok(()));
        let late = [sa(), cookie.clone(), ke(), nonce()];
        assert!(check(ExchangeType::IkeSaInit, false, &late).is_err());
        // Responses: a COOKIE alone or an error alone are complete.
        assert_eq!(check(ExchangeType::IkeSaInit, true, &[cookie]), Ok(()));
        let inv = Payload::Notify(NotifyPayload::invalid_ke_payload(KeId::Ecp256));
        assert_eq!(check(ExchangeType::IkeSaInit, true, &[inv]), Ok(()));
        assert!(
            check(
                ExchangeType::IkeSaInit,
                true,
                &[n(NotifyType::UseTransportMode)]
            )
            .is_err()
        );
        // IDg is not allowed in IKE_SA_INIT; vendor IDs and unknown payloads are.
        let mut extra = ok.to_vec();
        extra.push(Payload::VendorId(VendorIdPayload(vec![1])));
        extra.push(Payload::Unknown {
            ty: PayloadType::from(200),
            critical: false,
            body: vec![],
        });
        assert_eq!(check(ExchangeType::IkeSaInit, false, &extra), Ok(()));
        extra.push(idg());
        assert!(check(ExchangeType::IkeSaInit, false, &extra).is_err());
    }

    #[test]
    fn gsa_auth_and_registration() {
        let idi = Payload::IdI(IdPayload::key_id(vec![1]));
        let idr = Payload::IdR(IdPayload::key_id(vec![2]));
        let req = [
            idi.clone(),
            auth(),
            idg(),
            sa(),
            Payload::Notify(NotifyPayload::group_sender(1)),
        ];
        assert_eq!(check(ExchangeType::GsaAuth, false, &req), Ok(()));
        assert_eq!(
            check(ExchangeType::GsaAuth, false, &[idi, auth()]),
            Err(DecodeError::Missing("IDg"))
        );
        let resp = [idr.clone(), auth(), gsa(), kd()];
        assert_eq!(check(ExchangeType::GsaAuth, true, &resp), Ok(()));
        assert_eq!(
            check(ExchangeType::GsaAuth, true, &[idr.clone(), auth(), gsa()]),
            Err(DecodeError::Missing("KD"))
        );
        // Figure 5: group error.
        let err = [idr, auth(), n(NotifyType::AuthorizationFailed)];
        assert_eq!(check(ExchangeType::GsaAuth, true, &err), Ok(()));
        assert_eq!(expect_registration_result(&err), Ok(()));

        // GSA_REGISTRATION: join, error, leave-ack.
        assert_eq!(
            check(ExchangeType::GsaRegistration, false, &[idg()]),
            Ok(())
        );
        assert_eq!(
            check(ExchangeType::GsaRegistration, true, &[gsa(), kd()]),
            Ok(())
        );
        assert_eq!(check(ExchangeType::GsaRegistration, true, &[]), Ok(()));
        assert_eq!(
            expect_registration_result(&[]),
            Err(DecodeError::Missing("GSA"))
        );
        assert!(check(ExchangeType::GsaRegistration, true, &[kd()]).is_err());
        assert!(check(ExchangeType::GsaRegistration, true, &[idg()]).is_err());
    }

    #[test]
    fn rekey_shapes() {
        let del = Payload::Delete(DeletePayload::whole_group());
        assert_eq!(
            check(ExchangeType::GsaRekey, false, &[gsa(), kd(), auth()]),
            Ok(())
        );
        assert_eq!(
            check(ExchangeType::GsaRekey, false, &[del.clone(), auth()]),
            Ok(())
        );
        assert_eq!(
            check(ExchangeType::GsaRekey, false, &[gsa(), kd(), del.clone()]),
            Ok(())
        );
        assert!(check(ExchangeType::GsaRekey, false, &[auth()]).is_err());
        assert!(check(ExchangeType::GsaRekey, true, &[]).is_err());
        assert_eq!(check(ExchangeType::GsaInbandRekey, false, &[del]), Ok(()));
        assert!(check(ExchangeType::GsaInbandRekey, false, &[gsa(), kd(), auth()]).is_err());
        assert_eq!(check(ExchangeType::GsaInbandRekey, true, &[]), Ok(()));
    }

    #[test]
    fn outer_protection() {
        let sk = Payload::Sk(EncryptedPayload::new(PayloadType::IdG, vec![0; 32]));
        assert_eq!(
            check_outer(ExchangeType::GsaAuth, false, std::slice::from_ref(&sk)),
            Ok(Protection::Sk)
        );
        assert!(check_outer(ExchangeType::GsaAuth, false, &[nonce(), sk.clone()]).is_err());
        assert_eq!(
            check_outer(ExchangeType::GsaAuth, false, &[]),
            Err(DecodeError::Missing("SK"))
        );
        assert!(check_outer(ExchangeType::IkeSaInit, false, &[sk]).is_err());
        assert_eq!(
            check_outer(ExchangeType::IkeSaInit, false, &[sa(), ke(), nonce()]),
            Ok(Protection::Plain)
        );
        assert_eq!(
            check_outer(
                ExchangeType::Informational,
                true,
                &[n(NotifyType::InvalidIkeSpi)]
            ),
            Ok(Protection::Plain)
        );
        assert!(check_outer(ExchangeType::from(99), false, &[]).is_err());
    }
}
