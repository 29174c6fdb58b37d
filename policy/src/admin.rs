//! Administrative operations (the `gcks` CLI): groups, TEK policies, members and their
//! credentials, trust anchors, authorizations, signing keys. Arguments are checked here
//! with precise messages; the schema's constraints stay the backstop for plain SQL.

use std::net::IpAddr;

use gikev2_proto::crypto::{
    EncrAlg, IntegAlg, PublicKey, SecretBytes, SignatureScheme, SigningKey,
};
use gikev2_proto::registry::{EncrId, GcAuthId, IntegId, SnId};

use crate::error::StoreError;
use crate::model::*;
use crate::rows::*;
use crate::store::{Begin, Store, ppk_row, psk_row, signing_key_row};

fn is_multicast(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(a) => a.is_multicast(),
        IpAddr::V6(a) => a.is_multicast(),
    }
}

fn check_key_bits(bits: Option<u16>, what: &'static str) -> Result<(), StoreError> {
    match bits {
        None | Some(128 | 192 | 256) => Ok(()),
        Some(b) => Err(StoreError::invalid(
            what,
            format!("key length {b} (128, 192 or 256)"),
        )),
    }
}

/// The cipher suite must be one the crypto layer implements, with INTEG exactly when the
/// cipher is not an AEAD (RFC 9838 4.4.2.1 Figure 16; RFC 8221 4).
fn check_suite(
    encr: EncrId,
    key_bits: Option<u16>,
    integ: Option<IntegId>,
    what: &'static str,
) -> Result<(), StoreError> {
    let e = EncrAlg::from_transform(encr, key_bits)
        .map_err(|err| StoreError::invalid(what, format!("{encr} / {key_bits:?}: {err}")))?;
    if let Some(i) = integ
        && IntegAlg::from_id(i).is_none()
    {
        return Err(StoreError::invalid(what, format!("{i} is not supported")));
    }
    match (e.is_aead(), integ) {
        (true, Some(i)) => Err(StoreError::invalid(
            what,
            format!("{i} with the AEAD cipher {encr} (leave INTEG unset)"),
        )),
        (false, None) => Err(StoreError::invalid(
            what,
            format!("{encr} is not an AEAD and needs an INTEG transform"),
        )),
        _ => Ok(()),
    }
}

fn check_name(name: &str, what: &'static str) -> Result<(), StoreError> {
    if name.is_empty() || name.len() > 255 {
        return Err(StoreError::invalid(what, "name must be 1..=255 octets"));
    }
    Ok(())
}

fn validate_group(spec: &GroupSpec) -> Result<(), StoreError> {
    check_name(&spec.name, "group")?;
    spec.idg
        .validate()
        .map_err(|r| StoreError::invalid("group IDg", r))?;
    if spec.capacity == 0 {
        return Err(StoreError::invalid("group", "capacity must be at least 1"));
    }
    let r = &spec.rekey;
    if r.mode == RekeyMode::Multicast {
        let Some(dst) = r.dst else {
            return Err(StoreError::invalid(
                "rekey destination",
                "multicast rekey needs a destination address and port",
            ));
        };
        if !is_multicast(dst.ip()) || dst.port() == 0 {
            return Err(StoreError::invalid(
                "rekey destination",
                format!("{dst} is not a multicast address with a port (RFC 9838 4.4.2)"),
            ));
        }
    }
    if let Some(d) = r.dst
        && (!is_multicast(d.ip()) || d.port() == 0)
    {
        return Err(StoreError::invalid(
            "rekey destination",
            format!("{d} is not a multicast address with a port"),
        ));
    }
    if let Some(a) = r.src_addr
        && (is_multicast(a) || a.is_unspecified())
    {
        return Err(StoreError::invalid(
            "rekey source",
            format!("{a} is not a unicast address (RFC 9838 4.4.2)"),
        ));
    }
    if r.src_port == Some(0) {
        return Err(StoreError::invalid(
            "rekey source",
            "port 0 (leave it unset for any)",
        ));
    }
    if r.lifetime == 0 || spec.tek_lifetime == 0 {
        return Err(StoreError::invalid(
            "group",
            "lifetimes must be at least 1 second",
        ));
    }
    check_key_bits(r.encr_key_bits, "rekey ENCR")?;
    r.suite()?;
    match r.gcauth {
        GcAuthId::Implicit => {}
        GcAuthId::DigitalSignature => {
            if r.signing_key.is_none() {
                return Err(StoreError::invalid(
                    "GCAUTH",
                    "Digital Signature needs a signing key",
                ));
            }
        }
        other => {
            return Err(StoreError::invalid(
                "GCAUTH",
                format!("{other} is not supported"),
            ));
        }
    }
    let p = &spec.policy;
    if let Some(b) = p.sender_id_bits
        && !(1..=32).contains(&b)
    {
        return Err(StoreError::invalid(
            "Sender-ID bits",
            format!("{b} (1..=32)"),
        ));
    }
    if !(1..=1024).contains(&p.max_sender_ids_per_member) {
        return Err(StoreError::invalid(
            "Sender-IDs per member",
            format!("{} (1..=1024)", p.max_sender_ids_per_member),
        ));
    }
    Ok(())
}

fn validate_tek(spec: &TekPolicySpec) -> Result<(), StoreError> {
    spec.src
        .validate()
        .map_err(|r| StoreError::invalid("source selector", r))?;
    spec.dst
        .validate()
        .map_err(|r| StoreError::invalid("destination selector", r))?;
    if spec.src.start.is_ipv4() != spec.dst.start.is_ipv4() {
        return Err(StoreError::invalid(
            "TEK selectors",
            "source and destination are of different IP versions",
        ));
    }
    check_key_bits(spec.encr_key_bits, "TEK ENCR")?;
    check_suite(spec.encr, spec.encr_key_bits, spec.integ, "TEK suite")?;
    if let SnPolicy::Fixed(sn) = spec.sn
        && sn.value() > 2
    {
        return Err(StoreError::invalid(
            "TEK SN",
            format!("{sn} is not defined"),
        ));
    }
    // RFC 9838 4.4.2.1.3: "the 'Partially Transmitted 64-bit Sequential Numbers' transform
    // ID MUST NOT be used for multicast Data-Security SAs" (receivers joining late cannot
    // learn the untransmitted high-order bits). Refused here rather than when the GCKS
    // builds a GSA: such a policy would stop every GSA_REKEY and registration of its group.
    if spec.sn == SnPolicy::Fixed(SnId::Seq64PartiallyTransmitted) && spec.dst.is_multicast() {
        return Err(StoreError::invalid(
            "TEK SN",
            format!(
                "Partially Transmitted 64-bit Sequential Numbers on the multicast destination \
                 {} (RFC 9838 4.4.2.1.3: unicast destinations only)",
                spec.dst.start
            ),
        ));
    }
    // RFC 9838 2.6 (R049): the rate bounds the life of a TEK with sequential numbers;
    // one that would leave it less than a minute is refused (also a CHECK constraint).
    if !(1..=MAX_PACKET_RATE).contains(&spec.max_packet_rate) {
        return Err(StoreError::invalid(
            "TEK max_packet_rate",
            format!(
                "{} packets per second (1..={MAX_PACKET_RATE}: a TEK with 32-bit \
                 Sequential Numbers must live at least {MIN_SEQ32_LIFETIME} s before its \
                 sequence numbers could wrap, RFC 9838 2.6)",
                spec.max_packet_rate
            ),
        ));
    }
    Ok(())
}

impl Store {
    // ----- groups -----

    /// Creates a group; returns its id. (Its empty `group_state` row comes from a trigger,
    /// so groups created with plain SQL get one too.)
    pub async fn create_group(
        &self,
        spec: &GroupSpec,
        now: Seconds,
    ) -> Result<GroupId, StoreError> {
        validate_group(spec)?;
        let r = &spec.rekey;
        let p = &spec.policy;
        let now_db = to_db(now, "time")?;
        let id: i64 = on_backend!(self, |pool| {
            sqlx::query_scalar(
                "INSERT INTO groups (name, idg_type, idg_value, capacity, rekey_mode, \
                 rekey_dst_addr, rekey_dst_port, rekey_src_addr, rekey_src_port, \
                 rekey_lifetime_secs, rekey_encr_id, rekey_encr_key_bits, rekey_integ_id, \
                 rekey_kwa_id, gcauth_id, signing_key_id, tek_lifetime_secs, atd_secs, \
                 dtd_secs, sender_id_bits, max_sender_ids_per_member, forward_access_control, \
                 require_pq_ike, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
                 $16, $17, $18, $19, $20, $21, $22, $23, $24) RETURNING id",
            )
            .bind(&spec.name)
            .bind(i64::from(spec.idg.id_type.value()))
            .bind(&spec.idg.value)
            .bind(i64::from(spec.capacity))
            .bind(r.mode.as_db())
            .bind(r.dst.map(|d| d.ip().to_string()))
            .bind(r.dst.map(|d| i64::from(d.port())))
            .bind(r.src_addr.map(|a| a.to_string()))
            .bind(r.src_port.map(i64::from))
            .bind(i64::from(r.lifetime))
            .bind(i64::from(r.encr.value()))
            .bind(r.encr_key_bits.map(i64::from))
            .bind(r.integ.map(|i| i64::from(i.value())))
            .bind(i64::from(r.kwa.value()))
            .bind(i64::from(r.gcauth.value()))
            .bind(r.signing_key.map(|k| k.0))
            .bind(i64::from(spec.tek_lifetime))
            .bind(p.atd.map(i64::from))
            .bind(p.dtd.map(i64::from))
            .bind(p.sender_id_bits.map(i64::from))
            .bind(i64::from(p.max_sender_ids_per_member))
            .bind(p.forward_access_control)
            .bind(p.require_pq_ike)
            .bind(now_db)
            .fetch_one(pool)
            .await?
        });
        Ok(GroupId(id))
    }

    /// Every group row by id, each decoded on its own: a row an SQL edit made unreadable
    /// (an address `239.0.0.999`) is an `Err` naming its column and row beside the
    /// others, so that one bad group does not stop the GSA_REKEY of every other or hide
    /// them from `gcks status`.
    pub async fn group_rows(
        &self,
    ) -> Result<Vec<(GroupId, Result<Group, StoreError>)>, StoreError> {
        let rows: Vec<GroupRow> = on_backend!(self, |pool| {
            sqlx::query_as(&format!("SELECT {GROUP_COLUMNS} FROM groups ORDER BY id"))
                .fetch_all(pool)
                .await?
        });
        Ok(rows
            .into_iter()
            .map(|r| (r.id(), Group::try_from(r)))
            .collect())
    }

    /// Every group, by id.
    pub async fn groups(&self) -> Result<Vec<Group>, StoreError> {
        let rows: Vec<GroupRow> = on_backend!(self, |pool| {
            sqlx::query_as(&format!("SELECT {GROUP_COLUMNS} FROM groups ORDER BY id"))
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(Group::try_from).collect()
    }

    pub async fn group(&self, id: GroupId) -> Result<Option<Group>, StoreError> {
        let row: Option<GroupRow> = on_backend!(self, |pool| {
            sqlx::query_as(&format!("SELECT {GROUP_COLUMNS} FROM groups WHERE id = $1"))
                .bind(id.0)
                .fetch_optional(pool)
                .await?
        });
        row.map(Group::try_from).transpose()
    }

    pub async fn group_by_name(&self, name: &str) -> Result<Option<Group>, StoreError> {
        let row: Option<GroupRow> = on_backend!(self, |pool| {
            sqlx::query_as(&format!(
                "SELECT {GROUP_COLUMNS} FROM groups WHERE name = $1"
            ))
            .bind(name)
            .fetch_optional(pool)
            .await?
        });
        row.map(Group::try_from).transpose()
    }

    /// Deletes a group with its policies, state, authorizations, memberships, Sender-IDs
    /// and lease (ON DELETE CASCADE); false if there was none. Audit events stay.
    pub async fn delete_group(&self, id: GroupId) -> Result<bool, StoreError> {
        let n = on_backend!(self, |pool| {
            sqlx::query("DELETE FROM groups WHERE id = $1")
                .bind(id.0)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n > 0)
    }

    // ----- TEK policies -----

    pub async fn add_tek_policy(
        &self,
        group: GroupId,
        spec: &TekPolicySpec,
    ) -> Result<TekPolicyId, StoreError> {
        validate_tek(spec)?;
        let id: i64 = on_backend!(self, |pool| {
            sqlx::query_scalar(
                "INSERT INTO tek_policies (group_id, protocol, ip_protocol, src_addr_start, \
                 src_addr_end, src_port_start, src_port_end, dst_addr_start, dst_addr_end, \
                 dst_port_start, dst_port_end, encr_id, encr_key_bits, integ_id, sn_id, mode, \
                 max_packet_rate) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
                 $17) RETURNING id",
            )
            .bind(group.0)
            .bind(spec.protocol.as_db())
            .bind(i64::from(spec.ip_protocol))
            .bind(spec.src.start.to_string())
            .bind(spec.src.end.to_string())
            .bind(i64::from(spec.src.start_port))
            .bind(i64::from(spec.src.end_port))
            .bind(spec.dst.start.to_string())
            .bind(spec.dst.end.to_string())
            .bind(i64::from(spec.dst.start_port))
            .bind(i64::from(spec.dst.end_port))
            .bind(i64::from(spec.encr.value()))
            .bind(spec.encr_key_bits.map(i64::from))
            .bind(spec.integ.map(|i| i64::from(i.value())))
            .bind(match spec.sn {
                SnPolicy::Auto => None,
                SnPolicy::Fixed(sn) => Some(i64::from(sn.value())),
            })
            .bind(spec.mode.as_db())
            .bind(i64::from(spec.max_packet_rate))
            .fetch_one(pool)
            .await?
        });
        Ok(TekPolicyId(id))
    }

    pub async fn tek_policies(&self, group: GroupId) -> Result<Vec<TekPolicy>, StoreError> {
        let rows: Vec<TekPolicyRow> = on_backend!(self, |pool| {
            sqlx::query_as(&format!(
                "SELECT {TEK_POLICY_COLUMNS} FROM tek_policies WHERE group_id = $1 ORDER BY id"
            ))
            .bind(group.0)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter().map(TekPolicy::try_from).collect()
    }

    /// Deletes a TEK policy and its current TEKs; false if there was none.
    pub async fn delete_tek_policy(&self, id: TekPolicyId) -> Result<bool, StoreError> {
        let n = on_backend!(self, |pool| {
            sqlx::query("DELETE FROM tek_policies WHERE id = $1")
                .bind(id.0)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n > 0)
    }

    // ----- members -----

    /// Adds a member with its credential. A PSK is sealed with the master key; a raw
    /// public key must be a SubjectPublicKeyInfo the crypto layer can use; an X.509
    /// member needs at least one trust anchor.
    pub async fn add_member(
        &self,
        identity: &Identity,
        name: Option<&str>,
        credential: &NewCredential,
        now: Seconds,
    ) -> Result<MemberId, StoreError> {
        identity
            .validate()
            .map_err(|r| StoreError::invalid("member identity", r))?;
        if let Some(n) = name {
            check_name(n, "member")?;
        }
        let (kind, psk_enc, spki, anchors) = match credential {
            NewCredential::Psk(psk) => {
                if psk.is_empty() {
                    return Err(StoreError::invalid("PSK", "empty"));
                }
                let sealed = self.seal(&psk_row(identity), psk.as_bytes())?;
                (CredentialKind::Psk, Some(sealed), None, &[][..])
            }
            NewCredential::RawPublicKey { spki } => {
                PublicKey::from_spki(spki)
                    .map_err(|e| StoreError::invalid("raw public key", e.to_string()))?;
                (
                    CredentialKind::RawPublicKey,
                    None,
                    Some(spki.clone()),
                    &[][..],
                )
            }
            NewCredential::X509 { trust_anchors } => {
                if trust_anchors.is_empty() {
                    return Err(StoreError::invalid(
                        "X.509 member",
                        "needs at least one trust anchor",
                    ));
                }
                (CredentialKind::X509, None, None, &trust_anchors[..])
            }
        };
        let now_db = to_db(now, "time")?;
        let id: i64 = on_backend!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO members (id_type, id_value, name, credential_kind, psk_enc, \
                 public_spki, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            )
            .bind(i64::from(identity.id_type.value()))
            .bind(&identity.value)
            .bind(name)
            .bind(kind.as_db())
            .bind(&psk_enc)
            .bind(&spki)
            .bind(now_db)
            .fetch_one(&mut *tx)
            .await?;
            for a in anchors {
                sqlx::query(
                    "INSERT INTO member_trust_anchors (member_id, trust_anchor_id) \
                     VALUES ($1, $2)",
                )
                .bind(id)
                .bind(a.0)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            id
        });
        Ok(MemberId(id))
    }

    /// Replaces the PSK of a PSK member; false if no PSK member has this identity.
    pub async fn set_member_psk(
        &self,
        identity: &Identity,
        psk: &SecretBytes,
    ) -> Result<bool, StoreError> {
        if psk.is_empty() {
            return Err(StoreError::invalid("PSK", "empty"));
        }
        let sealed = self.seal(&psk_row(identity), psk.as_bytes())?;
        let n = on_backend!(self, |pool| {
            sqlx::query(
                "UPDATE members SET psk_enc = $3 WHERE id_type = $1 AND id_value = $2 \
                 AND credential_kind = 'psk'",
            )
            .bind(i64::from(identity.id_type.value()))
            .bind(&identity.value)
            .bind(&sealed)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n > 0)
    }

    /// Gives a member a post-quantum preshared key (RFC 8784) with its PPK_ID (without the
    /// type octet), or removes it (`None`); `required` makes the GCKS refuse the member's
    /// IKE SAs without it (mandatory_or_not, RFC 8784 2). The PPK is sealed with the
    /// master key, bound to the identity and the PPK_ID. False if no member has this
    /// identity.
    pub async fn set_member_ppk(
        &self,
        identity: &Identity,
        ppk: Option<(&[u8], &SecretBytes)>,
        required: bool,
    ) -> Result<bool, StoreError> {
        let (id, sealed) = match ppk {
            Some((id, secret)) => {
                if id.is_empty() || id.len() > 255 {
                    return Err(StoreError::invalid("PPK_ID", "1 to 255 octets"));
                }
                if secret.len() < MIN_PPK_LEN {
                    return Err(StoreError::invalid(
                        "PPK",
                        format!(
                            "{} octets; at least {MIN_PPK_LEN} (RFC 8784 6: 256 bits of entropy)",
                            secret.len()
                        ),
                    ));
                }
                let sealed = self.seal(&ppk_row(identity, id), secret.as_bytes())?;
                (Some(id.to_vec()), Some(sealed))
            }
            None if required => {
                return Err(StoreError::invalid("PPK", "a required PPK needs a PPK"));
            }
            None => (None, None),
        };
        let n = on_backend!(self, |pool| {
            sqlx::query(
                "UPDATE members SET ppk_id = $3, ppk_enc = $4, ppk_required = $5 \
                 WHERE id_type = $1 AND id_value = $2",
            )
            .bind(i64::from(identity.id_type.value()))
            .bind(&identity.value)
            .bind(&id)
            .bind(&sealed)
            .bind(required)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n > 0)
    }

    /// The member with this identity (without its secret).
    pub async fn member(&self, identity: &Identity) -> Result<Option<Member>, StoreError> {
        let row: Option<MemberRow> = on_backend!(self, |pool| {
            sqlx::query_as(&format!(
                "SELECT {MEMBER_COLUMNS} FROM members WHERE id_type = $1 AND id_value = $2"
            ))
            .bind(i64::from(identity.id_type.value()))
            .bind(&identity.value)
            .fetch_optional(pool)
            .await?
        });
        row.map(|r| r.member()).transpose()
    }

    /// Every member, by id.
    pub async fn members(&self) -> Result<Vec<Member>, StoreError> {
        let rows: Vec<MemberRow> = on_backend!(self, |pool| {
            sqlx::query_as(&format!("SELECT {MEMBER_COLUMNS} FROM members ORDER BY id"))
                .fetch_all(pool)
                .await?
        });
        rows.iter().map(MemberRow::member).collect()
    }

    /// Deletes a member with its authorizations and memberships; its Sender-IDs stay
    /// taken (without owner). False if there was none.
    pub async fn delete_member(&self, identity: &Identity) -> Result<bool, StoreError> {
        let n = on_backend!(self, |pool| {
            sqlx::query("DELETE FROM members WHERE id_type = $1 AND id_value = $2")
                .bind(i64::from(identity.id_type.value()))
                .bind(&identity.value)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n > 0)
    }

    // ----- trust anchors -----

    /// Adds an X.509 trust anchor (a DER certificate).
    pub async fn add_trust_anchor(
        &self,
        name: &str,
        cert_der: &[u8],
    ) -> Result<TrustAnchorId, StoreError> {
        check_name(name, "trust anchor")?;
        if cert_der.first() != Some(&0x30) {
            return Err(StoreError::invalid(
                "trust anchor",
                "not a DER certificate (no SEQUENCE)",
            ));
        }
        let id: i64 = on_backend!(self, |pool| {
            sqlx::query_scalar(
                "INSERT INTO trust_anchors (name, cert_der) VALUES ($1, $2) RETURNING id",
            )
            .bind(name)
            .bind(cert_der)
            .fetch_one(pool)
            .await?
        });
        Ok(TrustAnchorId(id))
    }

    pub async fn trust_anchors(&self) -> Result<Vec<TrustAnchor>, StoreError> {
        let rows: Vec<TrustAnchorRow> = on_backend!(self, |pool| {
            sqlx::query_as("SELECT id, name, cert_der FROM trust_anchors ORDER BY id")
                .fetch_all(pool)
                .await?
        });
        Ok(rows.into_iter().map(TrustAnchor::from).collect())
    }

    /// Deletes a trust anchor; a constraint error while a member still relies on it.
    pub async fn delete_trust_anchor(&self, id: TrustAnchorId) -> Result<bool, StoreError> {
        let n = on_backend!(self, |pool| {
            sqlx::query("DELETE FROM trust_anchors WHERE id = $1")
                .bind(id.0)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n > 0)
    }

    // ----- authorizations -----

    /// Lets `member` join `group` as `role` (replacing an earlier role).
    pub async fn authorize(
        &self,
        member: MemberId,
        group: GroupId,
        role: Role,
        now: Seconds,
    ) -> Result<(), StoreError> {
        let now_db = to_db(now, "time")?;
        on_backend!(self, |pool| {
            sqlx::query(
                "INSERT INTO authorizations (member_id, group_id, role, created_at) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (member_id, group_id) DO UPDATE SET role = excluded.role",
            )
            .bind(member.0)
            .bind(group.0)
            .bind(role.as_db())
            .bind(now_db)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Withdraws an authorization; false if there was none.
    pub async fn deauthorize(&self, member: MemberId, group: GroupId) -> Result<bool, StoreError> {
        let n = on_backend!(self, |pool| {
            sqlx::query("DELETE FROM authorizations WHERE member_id = $1 AND group_id = $2")
                .bind(member.0)
                .bind(group.0)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n > 0)
    }

    /// The group's authorizations, by member id.
    pub async fn authorizations(&self, group: GroupId) -> Result<Vec<Authorization>, StoreError> {
        let rows: Vec<(i64, i64, String)> = on_backend!(self, |pool| {
            sqlx::query_as(
                "SELECT member_id, group_id, role FROM authorizations WHERE group_id = $1 \
                 ORDER BY member_id",
            )
            .bind(group.0)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(m, g, r)| {
                Ok(Authorization {
                    member: MemberId(m),
                    group: GroupId(g),
                    role: Role::from_db(&r)
                        .ok_or_else(|| StoreError::data("authorizations.role", format!("{r:?}")))?,
                })
            })
            .collect()
    }

    // ----- signing keys -----

    /// Stores a GCKS signing key: the PKCS#8 private key is checked against `scheme`,
    /// sealed with the master key, and its public key (SPKI) derived and stored in clear.
    pub async fn add_signing_key(
        &self,
        name: &str,
        scheme: SignatureScheme,
        pkcs8: &SecretBytes,
        now: Seconds,
    ) -> Result<SigningKeyId, StoreError> {
        check_name(name, "signing key")?;
        let key = SigningKey::from_pkcs8(scheme, pkcs8.as_bytes())
            .map_err(|e| StoreError::invalid("signing key", e.to_string()))?;
        let spki = key
            .public_key()
            .to_spki()
            .map_err(|e| StoreError::invalid("signing key", e.to_string()))?;
        let sealed = self.seal(&signing_key_row(&spki), pkcs8.as_bytes())?;
        let now_db = to_db(now, "time")?;
        let id: i64 = on_backend!(self, |pool| {
            sqlx::query_scalar(
                "INSERT INTO signing_keys (name, scheme, pkcs8_enc, public_spki, created_at) \
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
            )
            .bind(name)
            .bind(scheme_as_db(scheme))
            .bind(&sealed)
            .bind(&spki)
            .bind(now_db)
            .fetch_one(pool)
            .await?
        });
        Ok(SigningKeyId(id))
    }

    pub async fn signing_keys(&self) -> Result<Vec<SigningKeyInfo>, StoreError> {
        let rows: Vec<SigningKeyRow> = on_backend!(self, |pool| {
            sqlx::query_as(&format!(
                "SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys ORDER BY id"
            ))
            .fetch_all(pool)
            .await?
        });
        rows.iter().map(SigningKeyRow::info).collect()
    }

    /// A signing key with its private key decrypted.
    pub async fn signing_key(
        &self,
        id: SigningKeyId,
    ) -> Result<Option<SigningKeyRecord>, StoreError> {
        let row: Option<SigningKeyRow> = on_backend!(self, |pool| {
            sqlx::query_as(&format!(
                "SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys WHERE id = $1"
            ))
            .bind(id.0)
            .fetch_optional(pool)
            .await?
        });
        let Some(row) = row else {
            return Ok(None);
        };
        let info = row.info()?;
        let pkcs8 = self.open_sealed(&signing_key_row(&info.public_spki), &row.pkcs8_enc)?;
        Ok(Some(SigningKeyRecord { info, pkcs8 }))
    }

    /// Deletes a signing key; a constraint error while a group still uses it.
    pub async fn delete_signing_key(&self, id: SigningKeyId) -> Result<bool, StoreError> {
        let n = on_backend!(self, |pool| {
            sqlx::query("DELETE FROM signing_keys WHERE id = $1")
                .bind(id.0)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n > 0)
    }

    /// Runs one administrator SQL statement (no parameters) and returns the rows it
    /// changed. Constraint violations come back as [`StoreError::Constraint`] naming the
    /// rule (`gcks sql` uses this). Sealed `*_enc` columns cannot be written usefully this
    /// way.
    pub async fn execute_admin_sql(&self, sql: &str) -> Result<u64, StoreError> {
        let n = on_backend!(self, |pool| {
            sqlx::raw_sql(sql).execute(pool).await?.rows_affected()
        });
        Ok(n)
    }
}
