//! What `gm status --json` shows and what event subscribers receive: groups, SPIs,
//! lifetimes, Sender-IDs, states and counters. Never keys: these types hold no key
//! material by construction (SPIs and Rekey SA SPIs are public, they travel in clear
//! headers).

use serde::{Deserialize, Serialize};

/// The daemon's whole state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub groups: Vec<GroupStatus>,
    /// SAs installed in the shared ESP engine (all groups, both directions).
    pub engine_sas: usize,
}

/// One group membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub group: String,
    pub gcks: String,
    /// registering, up, waiting, rejected, refused, excluded, leaving.
    pub state: String,
    /// receiver, sender, or sender+receiver.
    pub role: String,
    /// psk, raw-key or certificate.
    pub auth: String,
    pub sender_ids: Vec<u32>,
    pub sender_id_bits: Option<u16>,
    /// GWP_ATD / GWP_DTD in seconds (RFC 9838 4.4.3.1.1).
    pub atd: Option<u16>,
    pub dtd: Option<u16>,
    pub transport_mode: bool,
    pub ike_sa: Option<IkeSaStatus>,
    pub rekey_sas: Vec<RekeySaStatus>,
    pub rekey_stats: Option<RekeyCounters>,
    pub teks: Vec<TekStatus>,
    /// Successful registrations (first one and re-registrations).
    pub registrations: u64,
    /// When the next (re-)registration starts, in milliseconds from now.
    pub next_registration_in_ms: Option<u64>,
    pub last_error: Option<String>,
    /// The notify this member sent to reject the group's policy, if it did.
    pub rejected_with: Option<String>,
}

/// The unicast IKE SA with the GCKS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IkeSaStatus {
    pub spi_i: String,
    pub spi_r: String,
    pub established: bool,
    /// Where its messages go: the GCKS's address, or its port 4500 once NAT traversal
    /// moved the SA there (RFC 7296 2.23).
    #[serde(default)]
    pub remote: String,
    /// What NAT detection in IKE_SA_INIT showed: `none`, `member` (this member is behind a
    /// NAT and sends keepalives), `gcks` (the GCKS is), `both`; absent before IKE_SA_INIT
    /// completed or when the GCKS does no NAT detection.
    #[serde(default)]
    pub nat: Option<String>,
}

/// A Rekey SA listened on (inbound only, RFC 9838 2.3.3).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RekeySaStatus {
    /// SPIi | SPIr, 32 hex digits (RFC 9838 4.4.2).
    pub spi: String,
    /// Where GSA_REKEY messages arrive: `address:port`.
    pub listen: String,
    /// implicit, or the signature scheme of AUTH_KEY.
    pub auth: String,
    pub lifetime_s: Option<u32>,
    pub expires_in_s: Option<u64>,
    /// The newest Rekey SA (older ones wait out their DTD).
    pub current: bool,
}

/// Counters of the GSA_REKEY reader (drops are silent, so these are how they show).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RekeyCounters {
    pub accepted: u64,
    pub replayed: u64,
    pub integrity_failed: u64,
    pub bad_signature: u64,
    pub malformed: u64,
    pub unknown_spi: u64,
    pub bad_content: u64,
}

/// One engine record of a Data-Security SA.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TekStatus {
    /// `0x` and 8 hex digits.
    pub spi: String,
    pub protocol: String,
    /// inbound or outbound.
    pub direction: String,
    /// e.g. `ENCR_AES_GCM_16-256`, `ENCR_AES_CBC-128+AUTH_HMAC_SHA2_256_128`.
    pub algorithm: String,
    pub sn: String,
    pub src: String,
    pub dst: String,
    pub lifetime_s: Option<u32>,
    pub expires_in_s: Option<u64>,
    /// active, or deleting (waiting out the DTD, RFC 9838 2.4.1.4).
    pub state: String,
    pub deleted_in_ms: Option<u64>,
    pub packets: u64,
    pub bytes: u64,
    /// The engine's id of the record.
    pub sa_id: u64,
}

/// What subscribers of the control socket receive, and `gm join --foreground` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum AgentEvent {
    /// Registered (or re-registered): keys installed.
    GroupUp {
        group: String,
        teks: usize,
        rekey_sa: bool,
        sender_ids: Vec<u32>,
    },
    /// The membership ended (left, or refused for good).
    GroupDown { group: String, reason: String },
    /// A GSA_REKEY was applied (or GSA_INBAND_REKEY).
    Rekeyed {
        group: String,
        message_id: Option<u32>,
        installed: Vec<String>,
        deleting: Vec<String>,
        new_rekey_sa: bool,
    },
    /// We rejected the group's policy with this notify (RFC 9838 2.3.2 Figure 8).
    Rejected {
        group: String,
        notify: String,
        reason: String,
    },
    /// The GCKS refused our registration with this notify.
    Refused { group: String, notify: String },
    /// The GCKS excluded us (RFC 9838 2.4.3), or the IKE SA closed without a Rekey SA
    /// (2.3.3).
    Excluded { group: String, reason: String },
    /// A (re-)registration is scheduled.
    Reregistering {
        group: String,
        in_ms: u64,
        reason: String,
    },
    /// Something went wrong that the agent handles by retrying.
    Error { group: String, message: String },
}

impl AgentEvent {
    /// The group the event is about.
    pub fn group(&self) -> &str {
        match self {
            Self::GroupUp { group, .. }
            | Self::GroupDown { group, .. }
            | Self::Rekeyed { group, .. }
            | Self::Rejected { group, .. }
            | Self::Refused { group, .. }
            | Self::Excluded { group, .. }
            | Self::Reregistering { group, .. }
            | Self::Error { group, .. } => group,
        }
    }
}
