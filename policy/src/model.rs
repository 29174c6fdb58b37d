//! The typed policy model: what the store holds, as plain Rust values.
//!
//! Every enum that is stored as text has an explicit database spelling (`as_db` /
//! `from_db`), the same one the migrations' CHECK constraints list. Registry values
//! (ID types, transform IDs) are the `gikev2_proto::registry` enums, stored as their wire
//! integers. Times are seconds on the caller's clock (Unix time in production); the store
//! never reads a clock itself.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use gikev2_proto::crypto::{SecretBytes, SignatureScheme};
use gikev2_proto::registry::{EncrId, GcAuthId, IdType, IntegId, KwaId, SnId};

/// Seconds on the caller's clock.
pub type Seconds = u64;

macro_rules! id_newtype {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_newtype!(
    /// Row id of a group (`groups.id`).
    GroupId
);
id_newtype!(
    /// Row id of a member (`members.id`).
    MemberId
);
id_newtype!(
    /// Row id of a trust anchor (`trust_anchors.id`).
    TrustAnchorId
);
id_newtype!(
    /// Row id of a GCKS signing key (`signing_keys.id`).
    SigningKeyId
);
id_newtype!(
    /// Row id of a Data-Security SA policy (`tek_policies.id`).
    TekPolicyId
);

/// Enums stored as text: the database spelling is the single source of truth for the
/// CHECK constraints in `migrations/*/0001_initial.sql`.
macro_rules! text_enum {
    ($(#[$m:meta])* $name:ident { $( $(#[$vm:meta])* $var:ident = $text:literal, )* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vm])* $var, )*
        }

        impl $name {
            /// All values, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$var),*];

            /// The spelling stored in the database.
            pub const fn as_db(self) -> &'static str {
                match self {
                    $( Self::$var => $text, )*
                }
            }

            /// The value for a database spelling.
            pub fn from_db(s: &str) -> Option<Self> {
                match s {
                    $( $text => Some(Self::$var), )*
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_db())
            }
        }
    };
}

text_enum!(
    /// How a group is rekeyed (RFC 9838 1.4.1, 2.4).
    RekeyMode {
        /// GSA_REKEY messages to a multicast address (RFC 9838 2.4.1).
        Multicast = "multicast",
        /// GSA_INBAND_REKEY over each member's IKE SA (RFC 9838 2.4.2).
        Inband = "inband",
        /// No rekeying: members re-register before the SAs expire.
        None = "none",
    }
);

text_enum!(
    /// What a member may do in a group.
    Role {
        /// May receive the group's traffic.
        Receiver = "receiver",
        /// May also send (GROUP_SENDER, RFC 9838 2.3.2; gets Sender-IDs, 2.5).
        Sender = "sender",
    }
);

impl Role {
    /// True when this role allows `wanted` (a sender may also receive).
    pub fn allows(self, wanted: Role) -> bool {
        self == Role::Sender || wanted == Role::Receiver
    }
}

text_enum!(
    /// The security protocol of a Data-Security SA. Only ESP is offered.
    TekProtocol {
        Esp = "esp",
    }
);

text_enum!(
    /// ESP mode of a Data-Security SA: transport, or tunnel with address preservation
    /// (RFC 9838 4.4.2: tunnel mode MUST be with address preservation, RFC 5374 3.1).
    EspMode {
        Transport = "transport",
        TunnelAddressPreserving = "tunnel",
    }
);

text_enum!(
    /// The kind of credential a member authenticates with.
    CredentialKind {
        Psk = "psk",
        RawPublicKey = "raw_public_key",
        X509 = "x509",
    }
);

text_enum!(
    /// What an audit event records.
    AuditOutcome {
        /// The member registered (GSA_AUTH or GSA_REGISTRATION succeeded).
        Registered = "registered",
        /// The registration was refused; `reason` says why.
        Refused = "refused",
        /// The member left the group.
        Left = "left",
        /// The member was excluded (removed by a rekey).
        Excluded = "excluded",
    }
);

/// The text spelling of a signature scheme in `signing_keys.scheme`.
pub const fn scheme_as_db(s: SignatureScheme) -> &'static str {
    match s {
        SignatureScheme::Ed25519 => "ed25519",
        SignatureScheme::EcdsaP256Sha256 => "ecdsa-p256-sha256",
        SignatureScheme::RsaPssSha256 => "rsa-pss-sha256",
        SignatureScheme::MlDsa44 => "ml-dsa-44",
        SignatureScheme::MlDsa65 => "ml-dsa-65",
        SignatureScheme::MlDsa87 => "ml-dsa-87",
    }
}

/// The signature scheme for a `signing_keys.scheme` spelling.
pub fn scheme_from_db(s: &str) -> Option<SignatureScheme> {
    Some(match s {
        "ed25519" => SignatureScheme::Ed25519,
        "ecdsa-p256-sha256" => SignatureScheme::EcdsaP256Sha256,
        "rsa-pss-sha256" => SignatureScheme::RsaPssSha256,
        "ml-dsa-44" => SignatureScheme::MlDsa44,
        "ml-dsa-65" => SignatureScheme::MlDsa65,
        "ml-dsa-87" => SignatureScheme::MlDsa87,
        _ => return None,
    })
}

/// An IKE identity (RFC 7296 3.5): the ID type and the identification data. Members are
/// keyed by it (unique in `members`), groups by their IDg (unique in `groups`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub id_type: IdType,
    pub value: Vec<u8>,
}

impl Identity {
    /// Longest identification data accepted (a CHECK constraint too).
    pub const MAX_LEN: usize = 1024;

    pub fn new(id_type: IdType, value: impl Into<Vec<u8>>) -> Self {
        Self {
            id_type,
            value: value.into(),
        }
    }

    pub fn fqdn(name: &str) -> Self {
        Self::new(IdType::Fqdn, name.as_bytes())
    }

    pub fn rfc822(addr: &str) -> Self {
        Self::new(IdType::Rfc822Addr, addr.as_bytes())
    }

    pub fn key_id(id: &[u8]) -> Self {
        Self::new(IdType::KeyId, id)
    }

    pub fn ip(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(a) => Self::new(IdType::Ipv4Addr, a.octets()),
            IpAddr::V6(a) => Self::new(IdType::Ipv6Addr, a.octets()),
        }
    }

    /// Checks the value fits its type (lengths of address types, non-empty, bounded).
    pub fn validate(&self) -> Result<(), String> {
        if self.value.is_empty() || self.value.len() > Self::MAX_LEN {
            return Err(format!(
                "identification data of {} octets (1..={} allowed)",
                self.value.len(),
                Self::MAX_LEN
            ));
        }
        if self.id_type.value() == 0 {
            return Err("ID type 0 is reserved".into());
        }
        match self.id_type {
            IdType::Ipv4Addr if self.value.len() != 4 => Err("ID_IPV4_ADDR needs 4 octets".into()),
            IdType::Ipv6Addr if self.value.len() != 16 => {
                Err("ID_IPV6_ADDR needs 16 octets".into())
            }
            _ => Ok(()),
        }
    }
}

/// As the identity payload prints it (`gikev2_proto::wire::IdPayload`'s `Display`):
/// `ID_FQDN:gm1.example`, `ID_KEY_ID:"video"`, hex for opaque data.
impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = gikev2_proto::wire::id::IdPayload {
            ty: self.id_type,
            data: self.value.clone(),
        };
        fmt::Display::fmt(&id, f)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({self})")
    }
}

/// Where GSA_REKEY messages go and how the Rekey SA (GIKE_UPDATE) is built
/// (RFC 9838 4.4.2, Figure 16: ENCR, INTEG unless AEAD, GCAUTH, KWA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RekeyConfig {
    pub mode: RekeyMode,
    /// The multicast address and UDP port of GSA_REKEY messages (multicast mode only).
    pub dst: Option<SocketAddr>,
    /// Where GSA_REKEY messages come from: address, and port (`None` = any port).
    /// `None` = wildcard source selector (RFC 9838 4.4.2 allows it).
    pub src_addr: Option<IpAddr>,
    pub src_port: Option<u16>,
    /// Lifetime of a Rekey SA, in seconds (GSA_KEY_LIFETIME, RFC 9838 4.4.2.2.1).
    pub lifetime: u32,
    pub encr: EncrId,
    /// Key Length attribute of ENCR in bits (AES: 128/192/256; `None` for ChaCha20).
    pub encr_key_bits: Option<u16>,
    /// INTEG for non-AEAD ciphers; `None` with an AEAD cipher.
    pub integ: Option<IntegId>,
    pub kwa: KwaId,
    /// Implicit (1) or Digital Signature (2) (RFC 9838 4.4.2.1.1).
    pub gcauth: GcAuthId,
    /// The key that signs GSA_REKEY messages (required for Digital Signature).
    pub signing_key: Option<SigningKeyId>,
}

/// Group-wide policy (RFC 9838 4.4.3) plus the GCKS's own Sender-ID bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupWidePolicy {
    /// GWP_ATD in seconds (RFC 9838 4.4.3.1.1).
    pub atd: Option<u16>,
    /// GWP_DTD in seconds.
    pub dtd: Option<u16>,
    /// GWP_SENDER_ID_BITS (RFC 9838 4.4.3.1.2), 1..=32; `None` when no TEK is
    /// counter-based or there is at most one sender.
    pub sender_id_bits: Option<u8>,
    /// Most Sender-IDs handed to one member per registration (RFC 9838 2.5.1 step 3:
    /// "a policy-defined upper bound").
    pub max_sender_ids_per_member: u16,
    /// Forward access control (RFC 9838 3.2.1): a member that leaves or loses its
    /// authorization must not read what the group sends next. The rekey sender then
    /// excludes every member and replaces the group's SAs; the members still authorized
    /// re-register (migrations 0005).
    pub forward_access_control: bool,
    /// R129 (RFC 9838 6.2): admit members only over an IKE SA that included a
    /// post-quantum key exchange (ML-KEM, RFC 9370); otherwise NO_PROPOSAL_CHOSEN
    /// (migrations 0007).
    pub require_pq_ike: bool,
}

impl Default for GroupWidePolicy {
    fn default() -> Self {
        Self {
            atd: None,
            dtd: None,
            sender_id_bits: None,
            max_sender_ids_per_member: 16,
            forward_access_control: false,
            require_pq_ike: false,
        }
    }
}

/// A group's configuration, as created by an administrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    /// A short administrative name, unique.
    pub name: String,
    /// The group identity carried in IDg (RFC 9838 4.2), unique.
    pub idg: Identity,
    /// Most members at once (capacity check at registration).
    pub capacity: u32,
    pub rekey: RekeyConfig,
    /// Lifetime of each Data-Security SA, in seconds.
    pub tek_lifetime: u32,
    pub policy: GroupWidePolicy,
}

/// A stored group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: GroupId,
    pub spec: GroupSpec,
    pub created: Seconds,
}

/// A traffic selector (RFC 7296 3.13.1) of a Data-Security SA: an address range, a port
/// range; the IP protocol lives in the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selector {
    pub start: IpAddr,
    pub end: IpAddr,
    pub start_port: u16,
    pub end_port: u16,
}

impl Selector {
    /// One address, every port.
    pub fn host(addr: IpAddr) -> Self {
        Self {
            start: addr,
            end: addr,
            start_port: 0,
            end_port: u16::MAX,
        }
    }

    /// One address and one port.
    pub fn host_port(addr: IpAddr, port: u16) -> Self {
        Self {
            start: addr,
            end: addr,
            start_port: port,
            end_port: port,
        }
    }

    /// Every address of one family, every port.
    pub fn any(v6: bool) -> Self {
        if v6 {
            Self {
                start: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                end: IpAddr::V6(Ipv6Addr::from(u128::MAX)),
                start_port: 0,
                end_port: u16::MAX,
            }
        } else {
            Self {
                start: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                end: IpAddr::V4(Ipv4Addr::BROADCAST),
                start_port: 0,
                end_port: u16::MAX,
            }
        }
    }

    /// Every address of the range is a multicast address (the destination of a multicast
    /// Data-Security SA; the same test the protocol core applies to a GSA TEK policy).
    pub fn is_multicast(&self) -> bool {
        self.start.is_multicast() && self.end.is_multicast()
    }

    /// Same family, `start <= end` for addresses and ports.
    pub fn validate(&self) -> Result<(), String> {
        let ordered = match (self.start, self.end) {
            (IpAddr::V4(a), IpAddr::V4(b)) => a <= b,
            (IpAddr::V6(a), IpAddr::V6(b)) => a <= b,
            _ => return Err("selector mixes IPv4 and IPv6".into()),
        };
        if !ordered {
            return Err("selector address range is reversed".into());
        }
        if self.start_port > self.end_port {
            return Err("selector port range is reversed".into());
        }
        Ok(())
    }
}

/// The Sequence Numbers transform a TEK policy asks for (RFC 9838 2.6, 4.4.2.1.3), stored
/// in `tek_policies.sn_id`: NULL for [`SnPolicy::Auto`], else the transform ID
/// (migrations 0006).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SnPolicy {
    /// The GCKS chooses when it creates each TEK, and the TEK keeps the choice
    /// ([`TekSaRecord::sn`]): "32-bit Sequential Numbers" for a multicast destination
    /// with at most one sender authorized (4.4.2.1.3: it SHOULD be used for single-sender
    /// multicast SAs, R077), "32-bit Unspecified Numbers" otherwise (it MUST be used with
    /// several senders, R079). A TEK with sequential numbers is replaced when a second
    /// sender is authorized (docs/interop.md #56, #57).
    Auto,
    /// This transform for every TEK of the policy.
    Fixed(SnId),
}

impl fmt::Display for SnPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fixed(sn) => write!(f, "{sn}"),
        }
    }
}

/// `tek_policies.max_packet_rate` when none is given: packets per second one sender may
/// send on a TEK. A TEK with "32-bit Sequential Numbers" then lives at most
/// (2^32 - 1) / 1,000,000 = 4294 s (RFC 9838 2.6, R049).
pub const DEFAULT_MAX_PACKET_RATE: u32 = 1_000_000;

/// The shortest lifetime the packet-rate bound may impose on a TEK with "32-bit
/// Sequential Numbers", in seconds: a higher rate is refused (it would make the GCKS
/// replace the TEK all the time).
pub const MIN_SEQ32_LIFETIME: u64 = 60;

/// The highest `tek_policies.max_packet_rate`: (2^32 - 1) / [`MIN_SEQ32_LIFETIME`]
/// (71,582,788 packets per second; also a CHECK constraint, migrations 0006).
pub const MAX_PACKET_RATE: u32 = (u32::MAX as u64 / MIN_SEQ32_LIFETIME) as u32;

/// The policy of one Data-Security SA (a GSA TEK policy, RFC 9838 4.4.2): everything but
/// the SPI and keys, which change with every rekey and live in [`GroupState`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TekPolicySpec {
    pub protocol: TekProtocol,
    /// IP protocol of the protected traffic (0 = any).
    pub ip_protocol: u8,
    pub src: Selector,
    pub dst: Selector,
    pub encr: EncrId,
    /// Key Length attribute in bits (AES: 128/192/256; `None` for ChaCha20).
    pub encr_key_bits: Option<u16>,
    /// INTEG for non-AEAD ciphers; `None` with an AEAD cipher.
    pub integ: Option<IntegId>,
    /// The Sequence Numbers transform (RFC 9838 4.4.2.1.3): sequential (replay
    /// protection possible), unspecified (many senders), or chosen per TEK.
    pub sn: SnPolicy,
    pub mode: EspMode,
    /// Most packets per second one sender sends on a TEK of this policy
    /// (`tek_policies.max_packet_rate`, 1..=[`MAX_PACKET_RATE`]). It bounds the lifetime
    /// of a TEK with "32-bit Sequential Numbers" ([`Self::seq32_lifetime`]); it is not on
    /// the wire.
    pub max_packet_rate: u32,
}

impl TekPolicySpec {
    /// The longest lifetime, in seconds, of a TEK of this policy with "32-bit Sequential
    /// Numbers": (2^32 - 1) / `max_packet_rate`. A sender at that rate uses sequence
    /// numbers 1 to at most 2^32 - 1 before the TEK expires, so they never wrap (RFC 9838
    /// 2.6: "the GCKS MUST be configured to rekey the SA frequently enough so that the
    /// 32-bit sequence numbers do not wrap", R049; RFC 4303 3.3.3).
    pub fn seq32_lifetime(&self) -> u64 {
        u64::from(u32::MAX) / u64::from(self.max_packet_rate.max(1))
    }
}

/// A stored TEK policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TekPolicy {
    pub id: TekPolicyId,
    pub group: GroupId,
    pub spec: TekPolicySpec,
}

/// A group's configuration with its TEK policies, as the GCKS needs it at registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    pub group: Group,
    pub teks: Vec<TekPolicy>,
}

/// An X.509 trust anchor (a DER certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustAnchor {
    pub id: TrustAnchorId,
    pub name: String,
    pub cert_der: Vec<u8>,
}

/// How a member authenticates. The PSK is decrypted; `Debug` never shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A pre-shared key (RFC 7296 2.15), encrypted at rest.
    Psk(SecretBytes),
    /// A raw public key (RFC 7670): the SubjectPublicKeyInfo, DER.
    RawPublicKey { spki: Vec<u8> },
    /// An X.509 certificate for the member's identity that chains to one of these anchors.
    X509 { trust_anchors: Vec<TrustAnchor> },
}

impl Credential {
    pub fn kind(&self) -> CredentialKind {
        match self {
            Self::Psk(_) => CredentialKind::Psk,
            Self::RawPublicKey { .. } => CredentialKind::RawPublicKey,
            Self::X509 { .. } => CredentialKind::X509,
        }
    }
}

/// A credential as an administrator adds it.
#[derive(Debug, Clone)]
pub enum NewCredential {
    Psk(SecretBytes),
    RawPublicKey { spki: Vec<u8> },
    X509 { trust_anchors: Vec<TrustAnchorId> },
}

/// A stored member (without its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: MemberId,
    pub identity: Identity,
    pub name: Option<String>,
    pub credential: CredentialKind,
    pub created: Seconds,
    /// The PPK_ID of the member's post-quantum preshared key (RFC 8784), if it has one.
    pub ppk_id: Option<Vec<u8>>,
    /// The member must use its PPK (RFC 8784 mandatory_or_not).
    pub ppk_required: bool,
}

/// A member's post-quantum preshared key (RFC 8784 2: PPK, PPK_ID, mandatory_or_not),
/// encrypted at rest; `Debug` prints no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberPpk {
    /// The PPK_ID without its PPK_ID_FIXED type octet (RFC 8784 5.1).
    pub id: Vec<u8>,
    pub secret: SecretBytes,
    pub required: bool,
}

/// Shortest PPK accepted: RFC 8784 6 asks for at least 256 bits of entropy.
pub const MIN_PPK_LEN: usize = 32;

/// A member with its credential, as the GCKS needs it to authenticate a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberCredential {
    pub member: Member,
    pub credential: Credential,
    /// Its PPK, decrypted (RFC 8784), if it has one.
    pub ppk: Option<MemberPpk>,
}

/// Which identity may join which group, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub member: MemberId,
    pub group: GroupId,
    pub role: Role,
}

/// A GCKS signing key without its private part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyInfo {
    pub id: SigningKeyId,
    pub name: String,
    pub scheme: SignatureScheme,
    /// SubjectPublicKeyInfo, DER (what goes into AUTH_KEY, RFC 9838 4.5.3.2).
    pub public_spki: Vec<u8>,
    pub created: Seconds,
}

/// A GCKS signing key with its decrypted PKCS#8 private key.
#[derive(Debug, Clone)]
pub struct SigningKeyRecord {
    pub info: SigningKeyInfo,
    pub pkcs8: SecretBytes,
}

/// Length of a Rekey SA SPI: IKE SPIi | SPIr (RFC 9838 4.4.2).
pub const REKEY_SPI_LEN: usize = 16;

/// The current Rekey SA (KEK) of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RekeySaRecord {
    pub spi: [u8; REKEY_SPI_LEN],
    /// `GSK_e | GSK_a | GSK_w` (RFC 9838 3.4); encrypted at rest.
    pub keymat: SecretBytes,
    pub expires: Seconds,
}

/// One Data-Security SA (TEK) of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TekSaRecord {
    /// The policy it implements.
    pub policy: TekPolicyId,
    /// The ESP SPI (unique in the store, never below 256).
    pub spi: u32,
    /// Encryption key (with salt) then integrity key (RFC 9838 3.4); encrypted at rest.
    pub keymat: SecretBytes,
    /// The Sequence Numbers transform the TEK was created with (`tek_sas.sn_id`,
    /// migrations 0006): members were told it, so it stays for the TEK's life even when
    /// the policy says [`SnPolicy::Auto`] and the group's senders change.
    pub sn: SnId,
    pub created: Seconds,
    pub expires: Seconds,
}

/// The key state of a group, versioned by `generation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    pub group: GroupId,
    /// Incremented by every [`crate::Store::commit_group_state`]; 0 for a new group.
    pub generation: u64,
    pub rekey: Option<RekeySaRecord>,
    pub teks: Vec<TekSaRecord>,
    /// The Message ID the next GSA_REKEY over `rekey` will carry (0 for a new Rekey SA,
    /// RFC 9838 2.4.1.3); `2^32` once exhausted. Informational: take IDs with
    /// [`crate::Store::next_rekey_message_id`].
    pub next_rekey_message_id: u64,
    /// The next Sender-ID to hand out (RFC 9838 2.5.1 step 1).
    pub next_sender_id: u64,
    /// Incremented when the Sender-ID space is reset after excluding every member
    /// (RFC 9838 2.5.1 step 5).
    pub sender_id_epoch: u64,
    /// Registrations refused a Sender-ID in this epoch because the space was exhausted
    /// (migrations 0004): the demand that makes the rekey sender start a new epoch.
    pub sender_id_refusals: u64,
    /// Memberships that ended (a member left, was deleted or lost its authorization)
    /// since the rekey sender last excluded every member for forward access control
    /// (migrations 0005).
    pub members_removed: u64,
    pub updated: Seconds,
}

/// What [`crate::Store::commit_group_state`] writes: the new Rekey SA and TEKs. The
/// Message ID counter restarts at 0 when the Rekey SA SPI changes and is kept otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewGroupState {
    pub rekey: Option<RekeySaRecord>,
    pub teks: Vec<TekSaRecord>,
}

/// Sender-IDs held by a member (RFC 9838 2.5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderIdAllocation {
    pub group: GroupId,
    /// `None` once the member was deleted (the value stays taken).
    pub member: Option<MemberId>,
    pub sender_id: u32,
    /// The Sender-ID epoch the value belongs to: it stays reserved until the epoch ends.
    pub epoch: u64,
    pub allocated: Seconds,
}

/// Result of [`crate::Store::admit_member`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The member now counts against the group's capacity.
    Admitted,
    /// It was already a member (a re-registration): nothing changed.
    AlreadyMember,
    /// The group is at capacity.
    GroupFull { capacity: u32 },
}

/// One registration's writes, decided and committed with others in one transaction by
/// [`crate::Store::commit_registrations`] (group commit: one lock, one commit, one audit
/// insert for the whole batch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationWrite {
    pub group: GroupId,
    /// The authenticated peer.
    pub member: Identity,
    /// The member asked to send (GROUP_SENDER, RFC 9838 2.3.1): needs the `sender` role.
    pub wants_sender: bool,
    /// Sender-IDs to allocate (RFC 9838 2.5.1): `Some(n)` for a sender of a counter-mode
    /// TEK (at least one is granted or the registration is refused), `None` otherwise.
    pub sender_ids: Option<u32>,
    /// A refusal the caller decided before the store was asked (say, the SAg, RFC 9838
    /// 2.3.4); applied after the authorization checks so that the order of refusals stays
    /// the registrar's (an unauthorized member learns nothing about the policy).
    pub refused_before: Option<String>,
    /// The TEKs with "32-bit Sequential Numbers" the registration hands out (their SPIs).
    /// A sender registration (`wants_sender`) claims each of them when it is admitted
    /// (`tek_sas.sender_claimed`, migrations 0008): such a TEK goes to at most one sender
    /// registration, so that a sender whose counter starts again at 1 never sends on a TEK
    /// whose receivers' anti-replay windows already moved (RFC 9838 4.4.2.1.3, R077; RFC
    /// 4303 3.4.3). One already claimed, or gone, makes the outcome
    /// [`RegistrationOutcome::SequentialTekTaken`]. Ignored for a receiver.
    pub sequential_teks: Vec<u32>,
    pub now: Seconds,
}

/// What [`crate::Store::commit_registrations`] decided for one [`RegistrationWrite`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationOutcome {
    /// Counted against the group's capacity (`newly`: it was not a member before) and
    /// holding `sender_ids`, all committed.
    Admitted {
        member: MemberId,
        newly: bool,
        sender_ids: Vec<u32>,
    },
    Refused(RegistrationRefusal),
    /// Not decided: a sender registration would hand out these TEKs of
    /// [`RegistrationWrite::sequential_teks`], which an earlier sender registration was
    /// given (or which are gone). Nothing was committed for it and no audit event written:
    /// the caller replaces them and asks again.
    SequentialTekTaken {
        spis: Vec<u32>,
    },
}

/// Why the store refused a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationRefusal {
    /// No member has the identity (deleted after it authenticated).
    UnknownMember,
    /// The member holds no authorization for the group.
    NotAuthorized,
    /// Authorized as receiver, asked to send.
    NotSender,
    /// [`RegistrationWrite::refused_before`].
    RefusedBefore(String),
    /// The group cannot take registrations as configured (no state row, a counter-mode
    /// sender but no `groups.sender_id_bits`).
    Unavailable(String),
    /// The group is at capacity.
    GroupFull { capacity: u32 },
    /// The Sender-ID space or the member's bound is exhausted (RFC 9838 2.5.1 step 5).
    SenderIdsExhausted,
}

/// A rekey-sender lease: one GCKS at a time sends GSA_REKEY messages for a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RekeyLease {
    pub group: GroupId,
    pub holder: String,
    pub expires: Seconds,
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub at: Seconds,
    /// The peer's IKE identity, if it got that far.
    pub peer: Option<Identity>,
    /// The IDg the peer asked for, if any (kept as an identity, so refusals for unknown
    /// groups and events of deleted groups stay readable).
    pub group: Option<Identity>,
    pub outcome: AuditOutcome,
    /// Why (free text, at most 1024 octets; never a secret).
    pub reason: String,
}

/// A stored audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: i64,
    pub event: AuditEvent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_print_as_their_id_payload() {
        // The format itself is the identity payload's (gikev2_proto::wire::id).
        assert_eq!(
            Identity::fqdn("gm1.example").to_string(),
            "ID_FQDN:gm1.example"
        );
        assert_eq!(
            Identity::new(IdType::KeyId, vec![0, 0xff]).to_string(),
            "ID_KEY_ID:00ff"
        );
    }
}
