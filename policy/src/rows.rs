//! Raw rows as both backends return them (`i64`, `String`, `Vec<u8>`), and their checked
//! conversion into the model. A row edited by hand into something the model cannot hold
//! (an unknown enum spelling, an unparsable address, an out-of-range number) becomes
//! [`StoreError::InvalidData`] naming the column.

use std::net::{IpAddr, SocketAddr};

use gikev2_proto::registry::{EncrId, GcAuthId, IdType, IntegId, KwaId, SnId};

use crate::error::StoreError;
use crate::model::*;

/// A checked narrowing of a stored integer.
pub(crate) fn int<T: TryFrom<i64>>(v: i64, column: &'static str) -> Result<T, StoreError> {
    T::try_from(v).map_err(|_| StoreError::data(column, format!("{v} is out of range")))
}

pub(crate) fn opt_int<T: TryFrom<i64>>(
    v: Option<i64>,
    column: &'static str,
) -> Result<Option<T>, StoreError> {
    v.map(|v| int(v, column)).transpose()
}

/// A `u64` as the database's signed 64-bit integer.
pub(crate) fn to_db(v: u64, what: &'static str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::invalid(what, format!("{v} exceeds 2^63-1")))
}

pub(crate) fn ip(s: &str, column: &'static str) -> Result<IpAddr, StoreError> {
    s.parse()
        .map_err(|_| StoreError::data(column, format!("{s:?} is not an IP address")))
}

fn text_enum<T>(
    s: &str,
    column: &'static str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<T, StoreError> {
    parse(s).ok_or_else(|| StoreError::data(column, format!("unknown value {s:?}")))
}

pub(crate) fn identity(
    id_type: i64,
    value: Vec<u8>,
    column: &'static str,
) -> Result<Identity, StoreError> {
    let id = Identity::new(IdType::from_value(int(id_type, column)?), value);
    id.validate().map_err(|r| StoreError::data(column, r))?;
    Ok(id)
}

/// The columns of [`GroupRow`], in order.
pub(crate) const GROUP_COLUMNS: &str = "id, name, idg_type, idg_value, capacity, rekey_mode, \
     rekey_dst_addr, rekey_dst_port, rekey_src_addr, rekey_src_port, rekey_lifetime_secs, \
     rekey_encr_id, rekey_encr_key_bits, rekey_integ_id, rekey_kwa_id, gcauth_id, \
     signing_key_id, tek_lifetime_secs, atd_secs, dtd_secs, sender_id_bits, \
     max_sender_ids_per_member, forward_access_control, require_pq_ike, created_at";

#[derive(sqlx::FromRow)]
pub(crate) struct GroupRow {
    id: i64,
    name: String,
    idg_type: i64,
    idg_value: Vec<u8>,
    capacity: i64,
    rekey_mode: String,
    rekey_dst_addr: Option<String>,
    rekey_dst_port: Option<i64>,
    rekey_src_addr: Option<String>,
    rekey_src_port: Option<i64>,
    rekey_lifetime_secs: i64,
    rekey_encr_id: i64,
    rekey_encr_key_bits: Option<i64>,
    rekey_integ_id: Option<i64>,
    rekey_kwa_id: i64,
    gcauth_id: i64,
    signing_key_id: Option<i64>,
    tek_lifetime_secs: i64,
    atd_secs: Option<i64>,
    dtd_secs: Option<i64>,
    sender_id_bits: Option<i64>,
    max_sender_ids_per_member: i64,
    forward_access_control: bool,
    require_pq_ike: bool,
    created_at: i64,
}

impl GroupRow {
    /// The row's id, readable whatever the other columns hold.
    pub(crate) fn id(&self) -> GroupId {
        GroupId(self.id)
    }
}

impl TryFrom<GroupRow> for Group {
    type Error = StoreError;

    fn try_from(r: GroupRow) -> Result<Self, StoreError> {
        let (id, name) = (r.id, r.name.clone());
        group_of_row(r).map_err(|e| e.in_row(|| format!(" of group {name:?} (id {id})")))
    }
}

fn group_of_row(r: GroupRow) -> Result<Group, StoreError> {
    let dst = match (r.rekey_dst_addr, r.rekey_dst_port) {
        (Some(a), Some(p)) => Some(SocketAddr::new(
            ip(&a, "groups.rekey_dst_addr")?,
            int(p, "groups.rekey_dst_port")?,
        )),
        (None, None) => None,
        _ => {
            return Err(StoreError::data(
                "groups.rekey_dst_addr",
                "address and port must be set together",
            ));
        }
    };
    let rekey = RekeyConfig {
        mode: text_enum(&r.rekey_mode, "groups.rekey_mode", RekeyMode::from_db)?,
        dst,
        src_addr: r
            .rekey_src_addr
            .as_deref()
            .map(|a| ip(a, "groups.rekey_src_addr"))
            .transpose()?,
        src_port: opt_int(r.rekey_src_port, "groups.rekey_src_port")?,
        lifetime: int(r.rekey_lifetime_secs, "groups.rekey_lifetime_secs")?,
        encr: EncrId::from_value(int(r.rekey_encr_id, "groups.rekey_encr_id")?),
        encr_key_bits: opt_int(r.rekey_encr_key_bits, "groups.rekey_encr_key_bits")?,
        integ: opt_int::<u16>(r.rekey_integ_id, "groups.rekey_integ_id")?.map(IntegId::from_value),
        kwa: KwaId::from_value(int(r.rekey_kwa_id, "groups.rekey_kwa_id")?),
        gcauth: GcAuthId::from_value(int(r.gcauth_id, "groups.gcauth_id")?),
        signing_key: r.signing_key_id.map(SigningKeyId),
    };
    Ok(Group {
        id: GroupId(r.id),
        spec: GroupSpec {
            name: r.name,
            idg: identity(r.idg_type, r.idg_value, "groups.idg_type")?,
            capacity: int(r.capacity, "groups.capacity")?,
            rekey,
            tek_lifetime: int(r.tek_lifetime_secs, "groups.tek_lifetime_secs")?,
            policy: GroupWidePolicy {
                atd: opt_int(r.atd_secs, "groups.atd_secs")?,
                dtd: opt_int(r.dtd_secs, "groups.dtd_secs")?,
                sender_id_bits: opt_int(r.sender_id_bits, "groups.sender_id_bits")?,
                max_sender_ids_per_member: int(
                    r.max_sender_ids_per_member,
                    "groups.max_sender_ids_per_member",
                )?,
                forward_access_control: r.forward_access_control,
                require_pq_ike: r.require_pq_ike,
            },
        },
        created: int(r.created_at, "groups.created_at")?,
    })
}

/// The columns of [`TekPolicyRow`], in order.
pub(crate) const TEK_POLICY_COLUMNS: &str = "id, group_id, protocol, ip_protocol, \
     src_addr_start, src_addr_end, src_port_start, src_port_end, dst_addr_start, \
     dst_addr_end, dst_port_start, dst_port_end, encr_id, encr_key_bits, integ_id, sn_id, mode, \
     max_packet_rate";

#[derive(sqlx::FromRow)]
pub(crate) struct TekPolicyRow {
    id: i64,
    group_id: i64,
    protocol: String,
    ip_protocol: i64,
    src_addr_start: String,
    src_addr_end: String,
    src_port_start: i64,
    src_port_end: i64,
    dst_addr_start: String,
    dst_addr_end: String,
    dst_port_start: i64,
    dst_port_end: i64,
    encr_id: i64,
    encr_key_bits: Option<i64>,
    integ_id: Option<i64>,
    /// NULL: the GCKS chooses per TEK (migrations 0006).
    sn_id: Option<i64>,
    mode: String,
    max_packet_rate: i64,
}

impl TryFrom<TekPolicyRow> for TekPolicy {
    type Error = StoreError;

    fn try_from(r: TekPolicyRow) -> Result<Self, StoreError> {
        let (id, group) = (r.id, r.group_id);
        tek_policy_of_row(r)
            .map_err(|e| e.in_row(|| format!(" of TEK policy {id} (group id {group})")))
    }
}

fn tek_policy_of_row(r: TekPolicyRow) -> Result<TekPolicy, StoreError> {
    let src = Selector {
        start: ip(&r.src_addr_start, "tek_policies.src_addr_start")?,
        end: ip(&r.src_addr_end, "tek_policies.src_addr_end")?,
        start_port: int(r.src_port_start, "tek_policies.src_port_start")?,
        end_port: int(r.src_port_end, "tek_policies.src_port_end")?,
    };
    src.validate()
        .map_err(|e| StoreError::data("tek_policies.src_addr_start", e))?;
    let dst = Selector {
        start: ip(&r.dst_addr_start, "tek_policies.dst_addr_start")?,
        end: ip(&r.dst_addr_end, "tek_policies.dst_addr_end")?,
        start_port: int(r.dst_port_start, "tek_policies.dst_port_start")?,
        end_port: int(r.dst_port_end, "tek_policies.dst_port_end")?,
    };
    dst.validate()
        .map_err(|e| StoreError::data("tek_policies.dst_addr_start", e))?;
    Ok(TekPolicy {
        id: TekPolicyId(r.id),
        group: GroupId(r.group_id),
        spec: TekPolicySpec {
            protocol: text_enum(&r.protocol, "tek_policies.protocol", TekProtocol::from_db)?,
            ip_protocol: int(r.ip_protocol, "tek_policies.ip_protocol")?,
            src,
            dst,
            encr: EncrId::from_value(int(r.encr_id, "tek_policies.encr_id")?),
            encr_key_bits: opt_int(r.encr_key_bits, "tek_policies.encr_key_bits")?,
            integ: opt_int::<u16>(r.integ_id, "tek_policies.integ_id")?.map(IntegId::from_value),
            sn: match opt_int::<u16>(r.sn_id, "tek_policies.sn_id")? {
                None => SnPolicy::Auto,
                Some(v) => SnPolicy::Fixed(SnId::from_value(v)),
            },
            mode: text_enum(&r.mode, "tek_policies.mode", EspMode::from_db)?,
            max_packet_rate: int(r.max_packet_rate, "tek_policies.max_packet_rate")?,
        },
    })
}

/// The columns of [`MemberRow`], in order.
pub(crate) const MEMBER_COLUMNS: &str = "id, id_type, id_value, name, credential_kind, psk_enc, public_spki, created_at, ppk_id, \
     ppk_enc, ppk_required";

#[derive(sqlx::FromRow)]
pub(crate) struct MemberRow {
    pub id: i64,
    id_type: i64,
    id_value: Vec<u8>,
    name: Option<String>,
    credential_kind: String,
    pub psk_enc: Option<Vec<u8>>,
    pub public_spki: Option<Vec<u8>>,
    created_at: i64,
    pub ppk_id: Option<Vec<u8>>,
    pub ppk_enc: Option<Vec<u8>>,
    pub ppk_required: bool,
}

impl MemberRow {
    pub(crate) fn member(&self) -> Result<Member, StoreError> {
        Ok(Member {
            id: MemberId(self.id),
            identity: identity(self.id_type, self.id_value.clone(), "members.id_type")?,
            name: self.name.clone(),
            credential: text_enum(
                &self.credential_kind,
                "members.credential_kind",
                CredentialKind::from_db,
            )?,
            created: int(self.created_at, "members.created_at")?,
            ppk_id: self.ppk_id.clone(),
            ppk_required: self.ppk_required,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct TrustAnchorRow {
    id: i64,
    name: String,
    cert_der: Vec<u8>,
}

impl From<TrustAnchorRow> for TrustAnchor {
    fn from(r: TrustAnchorRow) -> Self {
        TrustAnchor {
            id: TrustAnchorId(r.id),
            name: r.name,
            cert_der: r.cert_der,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct SigningKeyRow {
    pub id: i64,
    name: String,
    scheme: String,
    pub pkcs8_enc: Vec<u8>,
    public_spki: Vec<u8>,
    created_at: i64,
}

pub(crate) const SIGNING_KEY_COLUMNS: &str = "id, name, scheme, pkcs8_enc, public_spki, created_at";

impl SigningKeyRow {
    pub(crate) fn info(&self) -> Result<SigningKeyInfo, StoreError> {
        Ok(SigningKeyInfo {
            id: SigningKeyId(self.id),
            name: self.name.clone(),
            scheme: text_enum(&self.scheme, "signing_keys.scheme", scheme_from_db)?,
            public_spki: self.public_spki.clone(),
            created: int(self.created_at, "signing_keys.created_at")?,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct GroupStateRow {
    pub group_id: i64,
    pub generation: i64,
    pub rekey_spi: Option<Vec<u8>>,
    pub rekey_keymat_enc: Option<Vec<u8>>,
    pub rekey_expires_at: Option<i64>,
    pub next_rekey_message_id: i64,
    pub next_sender_id: i64,
    pub sender_id_epoch: i64,
    pub sender_id_refusals: i64,
    pub members_removed: i64,
    pub updated_at: i64,
}

pub(crate) const GROUP_STATE_COLUMNS: &str = "group_id, generation, rekey_spi, \
     rekey_keymat_enc, rekey_expires_at, next_rekey_message_id, next_sender_id, \
     sender_id_epoch, sender_id_refusals, members_removed, updated_at";

#[derive(sqlx::FromRow)]
pub(crate) struct TekSaRow {
    pub spi: i64,
    pub policy_id: i64,
    pub keymat_enc: Vec<u8>,
    pub sn_id: i64,
    pub created_at: i64,
    pub expires_at: i64,
}

#[derive(sqlx::FromRow)]
pub(crate) struct SenderIdRow {
    group_id: i64,
    sender_id: i64,
    member_id: Option<i64>,
    epoch: i64,
    allocated_at: i64,
}

impl TryFrom<SenderIdRow> for SenderIdAllocation {
    type Error = StoreError;

    fn try_from(r: SenderIdRow) -> Result<Self, StoreError> {
        Ok(SenderIdAllocation {
            group: GroupId(r.group_id),
            member: r.member_id.map(MemberId),
            sender_id: int(r.sender_id, "sender_ids.sender_id")?,
            epoch: int(r.epoch, "sender_ids.epoch")?,
            allocated: int(r.allocated_at, "sender_ids.allocated_at")?,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct AuditRow {
    id: i64,
    at: i64,
    peer_id_type: Option<i64>,
    peer_id_value: Option<Vec<u8>>,
    group_idg_type: Option<i64>,
    group_idg_value: Option<Vec<u8>>,
    outcome: String,
    reason: String,
}

impl TryFrom<AuditRow> for AuditRecord {
    type Error = StoreError;

    fn try_from(r: AuditRow) -> Result<Self, StoreError> {
        let pair = |t: Option<i64>, v: Option<Vec<u8>>, column| match (t, v) {
            (Some(t), Some(v)) => identity(t, v, column).map(Some),
            _ => Ok(None),
        };
        Ok(AuditRecord {
            id: r.id,
            event: AuditEvent {
                at: int(r.at, "audit_log.at")?,
                peer: pair(r.peer_id_type, r.peer_id_value, "audit_log.peer_id_type")?,
                group: pair(
                    r.group_idg_type,
                    r.group_idg_value,
                    "audit_log.group_idg_type",
                )?,
                outcome: text_enum(&r.outcome, "audit_log.outcome", AuditOutcome::from_db)?,
                reason: r.reason,
            },
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct LeaseRow {
    pub group_id: i64,
    pub holder: String,
    pub expires_at: i64,
}

impl TryFrom<LeaseRow> for RekeyLease {
    type Error = StoreError;

    fn try_from(r: LeaseRow) -> Result<Self, StoreError> {
        Ok(RekeyLease {
            group: GroupId(r.group_id),
            holder: r.holder,
            expires: int(r.expires_at, "rekey_leases.expires_at")?,
        })
    }
}
