//! Structural rules of RFC 9838 for the KD payload (4.5) and for a KD payload against the
//! GSA payload it travels with (4.5, 4.4.2.1.1, 2.5, 5).

use super::{GroupKeyBag, KdPayload, KeyBag, MemberKeyBag, WrappedKey};
use crate::registry::{GcAuthId, ProtocolId, TransformType};
use crate::wire::gsa::{GsaPayload, PolicyContext, Spi, Violation, check_spi};

fn check_encrypted(k: &WrappedKey) -> Result<(), Violation> {
    // RFC 9838 4.5.4: the Encrypted Key field carries the wrapped key bits.
    if k.encrypted.is_empty() {
        return Err(Violation::EmptyEncryptedKey);
    }
    Ok(())
}

impl GroupKeyBag {
    /// Checks one group key bag (RFC 9838 4.5.2, 4.5.2.1).
    pub fn validate(&self, ctx: PolicyContext) -> Result<(), Violation> {
        let protocol = self.protocol;
        if Spi::size_for(protocol).is_none() {
            return Err(Violation::InvalidProtocol(protocol));
        }
        check_spi(protocol, &self.spi)?;
        // RFC 9838 4.5.2.1: exactly one SA_KEY, except for the Rekey SA in GSA_REKEY where
        // at least one (several with key trees such as LKH).
        let count = self.sa_keys.len();
        let ok = match (protocol, ctx) {
            (ProtocolId::GikeUpdate, PolicyContext::Rekey) => count >= 1,
            _ => count == 1,
        };
        if !ok {
            return Err(Violation::SaKeyCount {
                protocol,
                count,
                context: ctx,
            });
        }
        for k in &self.sa_keys {
            // RFC 9838 4.5.2.1: the Key ID of an SA_KEY is always zero ...
            if k.key_id != 0 {
                return Err(Violation::SaKeyNonZeroKeyId);
            }
            // ... and for Data-Security SAs so is the KWK ID (the default KWK).
            if protocol != ProtocolId::GikeUpdate && k.kwk_id != 0 {
                return Err(Violation::SaKeyNonZeroKwkId);
            }
            check_encrypted(k)?;
        }
        Ok(())
    }
}

impl MemberKeyBag {
    /// Checks the member key bag (RFC 9838 4.5.3, 4.5.3.1, 4.5.3.3, 5).
    ///
    /// RFC 9838 4.5.3 says the member key bag "MUST NOT be sent in GSA_REKEY messages", yet
    /// Table 2 allows WRAP_KEY and AUTH_KEY in GSA_REKEY, 2.4.1 sends a new AUTH_KEY in
    /// GSA_REKEY and Appendix A.4 (Figure 26) puts the LKH WRAP_KEYs of an exclusion into a
    /// member key bag of the rekey. We read 4.5.3 as forbidding member-specific content:
    /// in GSA_REKEY the bag may carry WRAP_KEY and AUTH_KEY but no GM_SENDER_ID (4.5.3.3,
    /// 2.4.1); in GSA_INBAND_REKEY, where Table 3 forbids all three, no bag at all.
    pub fn validate(&self, ctx: PolicyContext) -> Result<(), Violation> {
        match ctx {
            PolicyContext::Registration => {}
            PolicyContext::InbandRekey => return Err(Violation::MemberKeyBagNotInContext(ctx)),
            PolicyContext::Rekey => {
                // RFC 9838 4.5.3.3, 2.4.1: no GM_SENDER_ID in rekey operations.
                if !self.sender_ids.is_empty() {
                    return Err(Violation::AttributeNotInContext {
                        attr: "GM_SENDER_ID",
                        context: ctx,
                    });
                }
            }
        }
        for k in &self.wrap_keys {
            // RFC 9838 4.5.3.1: the Key ID of a WRAP_KEY is never zero.
            if k.key_id == 0 {
                return Err(Violation::WrapKeyZeroKeyId);
            }
            check_encrypted(k)?;
        }
        Ok(())
    }
}

impl KdPayload {
    /// Checks the structural rules of a KD payload for the exchange it travels in
    /// (RFC 9838 4.5, 4.5.2.1, 4.5.3). Returns the first rule broken.
    pub fn validate(&self, ctx: PolicyContext) -> Result<(), Violation> {
        let mut members = 0usize;
        let groups: Vec<&GroupKeyBag> = self.group_bags().collect();
        for b in &self.bags {
            match b {
                KeyBag::Group(g) => g.validate(ctx)?,
                KeyBag::Member(m) => {
                    // RFC 9838 4.5.3: the bag holds the keys of the one receiving member.
                    members += 1;
                    if members > 1 {
                        return Err(Violation::TooManyMemberKeyBags);
                    }
                    m.validate(ctx)?;
                }
            }
        }
        for (i, a) in groups.iter().enumerate() {
            if groups
                .iter()
                .skip(i + 1)
                .any(|b| a.protocol == b.protocol && a.spi == b.spi)
            {
                return Err(Violation::DuplicateSa {
                    protocol: a.protocol,
                    spi: a.spi,
                });
            }
        }
        Ok(())
    }

    /// Checks this KD payload against the GSA payload of the same message (RFC 9838 4.5,
    /// 4.4.2.1.1, 2.5.2, 5 Table 2 note 1): one key bag per GSA policy and one policy per
    /// key bag (matched on protocol and SPI), AUTH_KEY exactly when the GCKS signs rekeys,
    /// WRAP_KEY only with a Rekey SA, Sender-IDs only with GWP_SENDER_ID_BITS and a
    /// counter-mode TEK, each fitting in those bits.
    ///
    /// Run [`GsaPayload::validate`] and [`KdPayload::validate`] first (or use
    /// [`validate_gsa_kd`]).
    pub fn validate_against(&self, gsa: &GsaPayload, ctx: PolicyContext) -> Result<(), Violation> {
        // RFC 9838 4.5: the KD payload holds the keys for the SAs of the GSA payload; the
        // member refuses keys for SAs it has no policy for, and policies it has no keys for.
        for b in self.group_bags() {
            if gsa.policy_for(b.protocol, &b.spi).is_none() {
                return Err(Violation::KeyBagWithoutPolicy {
                    protocol: b.protocol,
                    spi: b.spi,
                });
            }
        }
        for p in gsa.gsa_policies() {
            if self.bag_for(p.protocol, &p.spi).is_none() {
                return Err(Violation::PolicyWithoutKeyBag {
                    protocol: p.protocol,
                    spi: p.spi,
                });
            }
        }

        let Some(member) = self.member() else {
            return self.check_auth_key_presence(gsa, ctx, false);
        };
        self.check_auth_key_presence(gsa, ctx, member.auth_key.is_some())?;

        // RFC 9838 4.5.3.1, 5 Table 3: key trees serve the multicast Rekey SA only.
        if ctx == PolicyContext::Registration && !member.wrap_keys.is_empty() && gsa.kek().is_none()
        {
            return Err(Violation::WrapKeyWithoutRekeySa);
        }

        if !member.sender_ids.is_empty() {
            // RFC 9838 5 Table 2 note 1: GM_SENDER_ID comes with GWP_SENDER_ID_BITS and a
            // counter-mode Data-Security SA.
            let bits = gsa
                .gw()
                .and_then(|gw| gw.sender_id_bits)
                .ok_or(Violation::SenderIdBitsMissing)?;
            if !gsa.uses_counter_mode() {
                return Err(Violation::SenderIdWithoutCounterMode);
            }
            // RFC 9838 2.5.2: a Sender-ID that does not fit is a fatal error for the GM.
            if let Some(&sender_id) = member
                .sender_ids
                .iter()
                .find(|id| u32::BITS.saturating_sub(id.leading_zeros()) > u32::from(bits))
            {
                return Err(Violation::SenderIdTooLarge { sender_id, bits });
            }
        }
        Ok(())
    }

    /// RFC 9838 4.4.2.1.1: at registration, AUTH_KEY is present exactly when the KEK's
    /// GCAUTH is Digital Signature. In GSA_REKEY the GSA carries no GCAUTH (it is fixed at
    /// registration), so a new AUTH_KEY (2.4.1) cannot be checked here.
    fn check_auth_key_presence(
        &self,
        gsa: &GsaPayload,
        ctx: PolicyContext,
        has_auth_key: bool,
    ) -> Result<(), Violation> {
        if ctx != PolicyContext::Registration {
            return Ok(());
        }
        let signs = gsa
            .kek()
            .and_then(|k| k.transform(TransformType::GcAuth))
            .is_some_and(|t| GcAuthId::from(t.id) == GcAuthId::DigitalSignature);
        match (signs, has_auth_key) {
            (true, false) => Err(Violation::AuthKeyMissing),
            (false, true) => Err(Violation::AuthKeyNotAllowed),
            _ => Ok(()),
        }
    }
}

/// Runs every structural check on the GSA and KD payloads of one message:
/// [`GsaPayload::validate`], [`KdPayload::validate`], then [`KdPayload::validate_against`].
pub fn validate_gsa_kd(
    gsa: &GsaPayload,
    kd: &KdPayload,
    ctx: PolicyContext,
) -> Result<(), Violation> {
    gsa.validate(ctx)?;
    kd.validate(ctx)?;
    kd.validate_against(gsa, ctx)
}
