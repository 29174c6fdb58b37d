//! One IKE SA between a group member (initiator) and a GCKS (responder): IKE_SA_INIT,
//! IKE_INTERMEDIATE (RFC 9242, RFC 9370), then GSA_AUTH (RFC 9838 2.3.1) or a childless
//! IKE_AUTH (RFC 6023), GSA_REGISTRATION (2.3.2), GSA_INBAND_REKEY (2.4.2) and
//! INFORMATIONAL.
//!
//! The contract is quinn's (STYLE Q1): inputs are calls — [`IkeSa::handle`] for a
//! datagram, [`IkeSa::handle_timeout`] when [`IkeSa::poll_timeout`] passes, and commands
//! such as [`IkeSa::decide`], [`IkeSa::register`], [`IkeSa::delete`]; outputs are polled —
//! [`IkeSa::poll_transmit`] until it returns `None`, then [`IkeSa::poll_event`], then
//! [`IkeSa::poll_timeout`]. Time and randomness come in as arguments.
//!
//! Message IDs follow RFC 7296 2.2 with a window of one in each direction. A retransmitted
//! request gets the cached response, never a second run of its handler (STYLE S2): a
//! repeated GSA_AUTH must not allocate a second Sender-ID.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use tracing::{debug, info, warn};

use crate::codec::Codec;
use crate::crypto::auth::{PaddedPsk, maced_id, sign_auth, signed_octets, verify_auth};
use crate::crypto::ke::ActiveKe;
use crate::crypto::keywrap::{DefaultKwk, KeyWrapAlg, KeyWrapKey};
use crate::crypto::{
    CryptoError, IkeKeys, IkeSuite, IntAuth, Random, SecretBytes, SkKey, random_array,
};
use crate::error::DecodeError;
use crate::group::rewrap_default_kwk;
use crate::registry::{
    AuthMethod, ExchangeType, HashAlgorithm, NotifyType, PayloadType, ProtocolId, TransformType,
};
use crate::wire::auth::AuthPayload;
use crate::wire::cert::CertPayload;
use crate::wire::delete::DeletePayload;
use crate::wire::gsa::GsaPayload;
use crate::wire::header::{Flags, Header};
use crate::wire::id::IdPayload;
use crate::wire::kd::KdPayload;
use crate::wire::ke::KePayload;
use crate::wire::message::Message;
use crate::wire::nonce::NoncePayload;
use crate::wire::notify::NotifyPayload;
use crate::wire::payload::{Payload, PayloadsExt, encode_inner};
use crate::wire::rules;
use crate::wire::sa::{Proposal, SaPayload};

use super::config::{IkeConfig, LocalAuth, PPK_ID_FIXED, PeerAuth};
use super::nat::{NAT_T_PORT, NatStatus, nat_detection_hash};
use super::protect::{self, Opened, Reassembly, UnprotectError};
use super::retransmit::{RetransmitAction, RetransmitTimer};

/// Nonce length we send: 32 octets, at least half the PRF key size (RFC 7296 2.10).
const NONCE_LEN: usize = 32;
/// How many COOKIE or INVALID_KE_PAYLOAD round trips an initiator accepts before failing.
const MAX_INIT_RETRIES: u32 = 3;

/// Which end of the IKE SA we are: the original initiator (the member) or responder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Initiator,
    Responder,
}

/// What an initiator wants from the authentication exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Goal {
    /// A childless IKE_AUTH (RFC 6023): the IKE core against stock IKEv2 peers.
    IkeAuth,
    /// A GSA_AUTH registering to a group (RFC 9838 2.3.1).
    GsaAuth(RegistrationRequest),
}

/// A member's registration request (RFC 9838 2.3.1, 2.3.2, 2.3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationRequest {
    /// The group (IDg, RFC 9838 4.2).
    pub group: IdPayload,
    /// The transforms the member supports (SAg, RFC 9838 4.3); RECOMMENDED (2.3.3).
    pub sag: Option<SaPayload>,
    /// GROUP_SENDER with this many Sender-IDs wanted (RFC 9838 2.3.1, 4.7.4).
    pub sender_ids: Option<u32>,
}

/// The GCKS's answer to a registration request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Admit the member: group policy and keys (SA keys already wrapped with
    /// [`IkeSa::key_wrap_key`]), and USE_TRANSPORT_MODE when the policy says so.
    Accept {
        gsa: GsaPayload,
        kd: KdPayload,
        transport_mode: bool,
    },
    /// Refuse with INVALID_GROUP_ID, AUTHORIZATION_FAILED, REGISTRATION_FAILED or
    /// NO_PROPOSAL_CHOSEN (RFC 9838 2.3.1, 4.7).
    Refuse(NotifyType),
}

/// Why an IKE SA ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// No response after every retransmission (RFC 7296 2.4).
    Timeout,
    /// The half-open SA was not authenticated in time.
    HalfOpenExpired,
    /// Our peer's AUTH did not verify (responder side), or the peer rejected ours.
    AuthenticationFailed,
    /// Initiator: we could not authenticate the responder (its AUTH did not verify, it is
    /// not the identity we expect, or it ignored our mandatory PPK) and told it with
    /// AUTHENTICATION_FAILED (RFC 7296 2.21.2). A matter of our configuration or the
    /// peer's credential, not of the peer refusing us.
    ResponderNotVerified,
    /// No acceptable proposal (RFC 7296 2.7).
    NoProposalChosen,
    /// The peer answered with this error notify.
    PeerError(NotifyType),
    /// Deleted by an INFORMATIONAL Delete (either side).
    Deleted,
    /// The peer broke the protocol (malformed message after authentication, wrong
    /// payloads for the exchange).
    ProtocolError(String),
}

/// What the IKE SA reports to its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Both sides authenticated (after IKE_AUTH or GSA_AUTH).
    Established { peer_id: IdPayload },
    /// Member: the GCKS admitted us to a group (GSA_AUTH or GSA_REGISTRATION response).
    Registered {
        group: IdPayload,
        gsa: GsaPayload,
        kd: KdPayload,
        transport_mode: bool,
        /// GSK_w of the IKE SA that carried the answer: the KD's keys are wrapped with it
        /// (RFC 9838 3.1.1). `None` when no Key Wrap Algorithm was negotiated.
        kwk: Option<DefaultKwk>,
    },
    /// Member: the GCKS refused the registration with this notify.
    RegistrationRefused {
        group: IdPayload,
        notify: NotifyType,
    },
    /// GCKS: an authenticated member asks to join; answer with [`IkeSa::decide`].
    RegistrationRequested {
        peer_id: IdPayload,
        request: RegistrationRequest,
        /// GSK_w of the IKE SA the request came on, which carries the answer: wrap the
        /// [`Decision::Accept`] KD with it (RFC 9838 3.1.1). `None` when no Key Wrap
        /// Algorithm was negotiated.
        kwk: Option<DefaultKwk>,
    },
    /// GCKS: a member leaves a group or rejects its policy (RFC 9838 2.3.2, Figure 8).
    LeaveRequested {
        peer_id: IdPayload,
        group: IdPayload,
        notify: NotifyType,
    },
    /// Member: new policy and keys over the unicast IKE SA (RFC 9838 2.4.2).
    InbandRekey {
        gsa: GsaPayload,
        kd: KdPayload,
        /// GSK_w of the IKE SA that carried it (RFC 9838 2.4.2.1, 3.1.1).
        kwk: Option<DefaultKwk>,
    },
    /// Member: Delete payloads of a GSA_INBAND_REKEY (RFC 9838 2.4.3, Figure 13), after
    /// the [`Event::InbandRekey`] of the same message if it also carried GSA and KD: a
    /// zero SPI deletes every SA of its protocol, GIKE_UPDATE with a zero SPI (or
    /// protocol 0) excludes the member, who MUST re-register to stay in the group.
    InbandDelete { deletes: Vec<DeletePayload> },
    /// The IKE SA is gone; nothing more will come from it.
    Closed(CloseReason),
}

/// A request the host asked us to send once the window is free.
#[derive(Debug, Clone)]
enum Command {
    Register(RegistrationRequest),
    Leave {
        group: IdPayload,
        notify: NotifyType,
    },
    InbandRekey {
        gsa: GsaPayload,
        kd: KdPayload,
        /// SPIi of the IKE SA whose GSK_w wrapped `kd` (the current one when queued), and
        /// that key: an IKE SA rekey completing before the window frees makes the KD
        /// travel on another IKE SA, so it is wrapped again for that one.
        wrapped_on: [u8; 8],
        kwk: Option<DefaultKwk>,
        transport_mode: bool,
    },
    /// GSA_INBAND_REKEY with Delete payloads only (RFC 9838 2.4.3, Figure 13).
    InbandDelete(Vec<DeletePayload>),
    /// Rekey the IKE SA with CREATE_CHILD_SA (RFC 7296 1.3.2).
    RekeyIke,
    Delete,
}

/// What an outstanding request was for, so its response can be read.
#[derive(Debug, Clone)]
enum Purpose {
    Init,
    Intermediate,
    Auth,
    Register(IdPayload),
    Leave,
    InbandRekey,
    RekeyIke,
    Delete,
    /// INFORMATIONAL Delete of a replaced (retired) IKE SA.
    DeleteRetired,
}

struct Outstanding {
    mid: u32,
    purpose: Purpose,
    packets: Vec<Vec<u8>>,
    timer: RetransmitTimer,
    /// The host's command this request carries: sent again on the current IKE SA when
    /// the replaced one it went out on is deleted unanswered (RFC 7296 2.8).
    command: Option<Command>,
}

/// The wire state of one IKE SA: what a CREATE_CHILD_SA rekey replaces (RFC 7296 2.18:
/// new SPIs, new keys, Message IDs restarting at 0) while the authenticated peer,
/// registrations and NAT state stay with the [`IkeSa`].
struct Channel {
    /// We are the "original initiator" of this IKE SA (the I flag, RFC 7296 3.1). After a
    /// rekey this is whoever initiated the rekey (RFC 7296 2.18), not the member.
    initiator: bool,
    spi_i: [u8; 8],
    spi_r: [u8; 8],
    sk_out: Option<SkKey>,
    sk_in: Option<SkKey>,
    next_mid: u32,
    peer_next_mid: u32,
    outstanding: Option<Outstanding>,
    cached_response: Option<(u32, Vec<Vec<u8>>)>,
    reassembly_requests: Reassembly,
    reassembly_responses: Reassembly,
    /// This IKE SA's GSK_w (RFC 9838 3.1.1), kept for a channel made by a rekey and for
    /// one retired: `IkeSa::keys` then describes another IKE SA. `None` for the initial
    /// IKE SA while it is current (its keys may still change with a PPK, RFC 8784).
    kwk: Option<DefaultKwk>,
}

impl Channel {
    fn new(initiator: bool) -> Self {
        Self {
            initiator,
            spi_i: [0; 8],
            spi_r: [0; 8],
            sk_out: None,
            sk_in: None,
            next_mid: 0,
            peer_next_mid: 0,
            outstanding: None,
            cached_response: None,
            reassembly_requests: Reassembly::default(),
            reassembly_responses: Reassembly::default(),
            kwk: None,
        }
    }

    /// The channel of an IKE SA made by a rekey, with Message IDs at 0 (RFC 7296 2.18).
    fn rekeyed(
        initiator: bool,
        spi_i: [u8; 8],
        spi_r: [u8; 8],
        suite: &IkeSuite,
        keys: &IkeKeys,
    ) -> Result<Self, CryptoError> {
        Ok(Self {
            spi_i,
            spi_r,
            sk_out: Some(SkKey::from_ike_keys(suite, keys, initiator)?),
            sk_in: Some(SkKey::from_ike_keys(suite, keys, !initiator)?),
            kwk: default_kwk(Some(suite), Some(keys)).ok(),
            ..Self::new(initiator)
        })
    }

    /// Our SPI of this IKE SA.
    fn local_spi(&self) -> [u8; 8] {
        if self.initiator {
            self.spi_i
        } else {
            self.spi_r
        }
    }
}

/// A replaced IKE SA, kept until its Delete (RFC 7296 1.3.2, 2.8: "the responder
/// continues to send traffic on the old SA until" the initiator closes it): it still
/// answers requests and takes responses to what was sent on it.
struct Retired {
    ch: Channel,
    /// Dropped at this time when no Delete came (and none of ours is outstanding).
    until: Instant,
    /// We must delete it, but it still owes the answer to a registration request the host
    /// has not decided yet: the Delete follows that answer (RFC 7296 2.8, the Delete is
    /// the last message on the old SA; the peer drops the SA on receipt).
    delete_after_answer: bool,
}

/// A new IKE SA from a rekey exchange, not yet the current one.
struct Rekeyed {
    ch: Channel,
    suite: IkeSuite,
    keys: IkeKeys,
    /// The nonces of the exchange that made it (RFC 7296 2.8.2 compares them).
    ni: Vec<u8>,
    nr: Vec<u8>,
}

/// Our IKE SA rekey request in flight (RFC 7296 1.3.2).
struct RekeyInit {
    ke: ActiveKe,
    ni: Vec<u8>,
    spi: [u8; 8],
    retries: u32,
}

/// Where the SA is in its life.
enum State {
    /// Initiator: IKE_SA_INIT sent.
    InitSent {
        ke: ActiveKe,
        retries: u32,
    },
    /// Initiator: IKE_INTERMEDIATE n sent with this additional key exchange.
    IntermediateSent {
        ke: ActiveKe,
    },
    /// Initiator: IKE_AUTH or GSA_AUTH sent.
    AuthSent,
    /// Responder: IKE_SA_INIT answered; waiting for IKE_INTERMEDIATE or the AUTH request.
    AwaitingAuth,
    /// Responder: waiting for the host's [`Decision`] on a registration request.
    AwaitingDecision {
        mid: u32,
        exchange: ExchangeType,
        auth_payloads: Vec<Payload>,
        /// SPIi of the IKE SA the request came on (a rekey may complete meanwhile).
        spi_i: [u8; 8],
    },
    Established,
    Closed,
}

/// A datagram to send: to `remote` from `local` (which matters to a runtime with several
/// sockets, e.g. ports 500, 848 and 4500, RFC 9838 2.1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub data: Vec<u8>,
}

impl Datagram {
    pub fn new(remote: SocketAddr, local: SocketAddr, data: Vec<u8>) -> Self {
        Self {
            remote,
            local,
            data,
        }
    }
}

/// One IKE SA. See the module documentation for the calling contract.
pub struct IkeSa {
    role: Role,
    config: IkeConfig,
    goal: Goal,
    local: SocketAddr,
    remote: SocketAddr,
    /// The wire state of the current IKE SA: SPIs, SK keys, Message IDs.
    ch: Channel,
    state: State,
    ni: Vec<u8>,
    nr: Vec<u8>,
    cookie: Option<Vec<u8>>,
    init_request: Vec<u8>,
    init_response: Vec<u8>,
    suite: Option<IkeSuite>,
    keys: Option<IkeKeys>,
    int_auth: Option<IntAuth>,
    addke_done: usize,
    peer_fragmentation: bool,
    /// Hash algorithms the peer announced in SIGNATURE_HASH_ALGORITHMS (RFC 7427 4).
    peer_hashes: Vec<HashAlgorithm>,
    /// Set once `Event::Closed` was emitted; `state` may hold `Closed` transiently while a
    /// handler owns the previous state.
    closed: bool,
    peer_intermediate: bool,
    /// The peer sent USE_PPK in IKE_SA_INIT (RFC 8784 3).
    peer_use_ppk: bool,
    /// Initiator, GSA_AUTH/IKE_AUTH sent with PPK_IDENTITY: the keys without the PPK
    /// (SK_d', SK_pi', SK_pr'), kept until the response says which ones the responder
    /// used (RFC 8784 3). `keys` holds the PPK ones meanwhile.
    keys_without_ppk: Option<IkeKeys>,
    /// A PPK was mixed into SK_d, SK_pi and SK_pr of this IKE SA (RFC 8784 3).
    ppk_used: bool,
    peer_id: Option<IdPayload>,
    commands: VecDeque<Command>,
    /// Datagrams to send, each with the address it goes to.
    transmits: VecDeque<Datagram>,
    /// The peer's address when the SA was created (before any NAT-T move).
    origin: SocketAddr,
    /// What the NAT_DETECTION_* notifications of IKE_SA_INIT showed (RFC 7296 2.23);
    /// `None` until then, or when the peer does not do NAT traversal.
    nat: Option<NatStatus>,
    /// While a datagram is handled: the (source, destination) it came with. Responses
    /// go back to its source (RFC 7296 2.23: "responses MUST be sent to the port from
    /// whence they came").
    arrived: Option<(SocketAddr, SocketAddr)>,
    events: VecDeque<Event>,
    half_open_deadline: Option<Instant>,
    /// Replaced IKE SAs waiting for their Delete (RFC 7296 2.18, 2.8.2).
    retired: Vec<Retired>,
    /// While handling a datagram of a retired IKE SA (swapped into `ch`).
    serving_retired: bool,
    /// Set by a handler when the retired IKE SA being served is deleted.
    retired_gone: bool,
    /// Our IKE SA rekey in flight.
    rekey_out: Option<RekeyInit>,
    /// The peer's rekey we answered while ours was in flight (RFC 7296 2.8.2).
    peer_rekey: Option<Rekeyed>,
    /// Rekey responder: no new request on the new IKE SA until the initiator showed it
    /// uses it (a message on it, or the Delete of the old one; RFC 7296 2.8).
    hold_new: bool,
    /// When we initiate the next rekey (RFC 7296 2.8), and when the IKE SA expires.
    rekey_at: Option<Instant>,
    expire_at: Option<Instant>,
    rekeys: u32,
}

impl core::fmt::Debug for IkeSa {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IkeSa")
            .field("role", &self.role)
            .field("spi_i", &hex_spi(&self.ch.spi_i))
            .field("spi_r", &hex_spi(&self.ch.spi_r))
            .field("state", &self.state_name())
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

/// `GSK_w = prf+(SK_d, "Key Wrap for G-IKEv2")` of an IKE SA with the KWA negotiated
/// for it (RFC 9838 3.1.1, 4.5.4).
fn default_kwk(
    suite: Option<&IkeSuite>,
    keys: Option<&IkeKeys>,
) -> Result<DefaultKwk, CryptoError> {
    let (Some(suite), Some(keys)) = (suite, keys) else {
        return Err(CryptoError::Internal("no IKE keys yet"));
    };
    let kwa: KeyWrapAlg = suite.kwa.ok_or(CryptoError::NoProposalChosen(
        "no Key Wrap Algorithm negotiated",
    ))?;
    DefaultKwk::new(kwa, keys.default_kwk(kwa)?)
}

/// An IKE_SA_INIT request opening a new IKE SA: from the initiator, Message ID 0, no
/// responder SPI yet (RFC 7296 2.2, 3.1).
fn is_new_init_request(h: &Header) -> bool {
    h.exchange == ExchangeType::IkeSaInit
        && !h.flags.is_response()
        && h.flags.is_initiator()
        && h.message_id == 0
        && h.spi_r == [0; 8]
}

fn hex_spi(s: &[u8; 8]) -> String {
    s.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a responder did not create an IKE SA for an IKE_SA_INIT request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitRefusal {
    /// Answer with this datagram and keep no state (INVALID_KE_PAYLOAD, NO_PROPOSAL_CHOSEN,
    /// INVALID_SYNTAX; RFC 7296 1.2, 2.7, 2.21.1).
    Reply(Vec<u8>),
    /// Drop silently.
    Drop,
}

impl IkeSa {
    // ---------------------------------------------------------------- construction

    /// Starts an IKE SA as the initiator: the first IKE_SA_INIT request is ready in
    /// [`IkeSa::poll_transmit`].
    pub fn initiate(
        config: IkeConfig,
        goal: Goal,
        local: SocketAddr,
        remote: SocketAddr,
        now: Instant,
        rng: &mut dyn Random,
    ) -> Result<Self, CryptoError> {
        let first = config
            .proposals
            .first()
            .ok_or(CryptoError::NoProposalChosen("no proposals configured"))?
            .ke;
        let mut sa = Self::blank(Role::Initiator, config, goal, local, remote);
        sa.ch.spi_i = nonzero_spi(rng);
        sa.ni = random_nonce(rng);
        let ke = first.start(rng)?;
        sa.send_init_request(ke, 0, now);
        Ok(sa)
    }

    /// Answers an IKE_SA_INIT request as the responder. On success the response is ready
    /// in [`IkeSa::poll_transmit`]. Cookie checks happen before this, in the endpoint.
    pub fn respond(
        config: IkeConfig,
        request: &[u8],
        local: SocketAddr,
        remote: SocketAddr,
        now: Instant,
        rng: &mut dyn Random,
    ) -> Result<Self, InitRefusal> {
        let msg = match Message::decode(request) {
            Ok(m) => m,
            // RFC 7296 2.5: an unrecognized critical payload rejects the message, and the
            // response names its type in UNSUPPORTED_CRITICAL_PAYLOAD; IKE_SA_INIT too.
            Err(DecodeError::UnsupportedCriticalPayload(ty)) => {
                let h = Header::read_datagram(request).map_err(|_| InitRefusal::Drop)?;
                if !is_new_init_request(&h) {
                    return Err(InitRefusal::Drop);
                }
                debug!(
                    payload_type = ty,
                    "IKE_SA_INIT with an unsupported critical payload"
                );
                let header = Header::new(
                    h.spi_i,
                    [0; 8],
                    ExchangeType::IkeSaInit,
                    Flags::new(false, true),
                    0,
                );
                let n = NotifyPayload::unsupported_critical_payload(ty);
                return Err(InitRefusal::Reply(
                    Message::new(header, vec![Payload::Notify(n)]).encode(),
                ));
            }
            Err(_) => return Err(InitRefusal::Drop),
        };
        let h = &msg.header;
        if !is_new_init_request(h) {
            return Err(InitRefusal::Drop);
        }
        let reply = |n: NotifyPayload| {
            let header = Header::new(
                h.spi_i,
                [0; 8],
                ExchangeType::IkeSaInit,
                Flags::new(false, true),
                0,
            );
            InitRefusal::Reply(Message::new(header, vec![Payload::Notify(n)]).encode())
        };
        if let Err(e) = rules::check(ExchangeType::IkeSaInit, false, &msg.payloads) {
            debug!(error = %e, "IKE_SA_INIT request refused");
            return Err(reply(NotifyPayload::error(e.notify())));
        }
        let Some(Payload::Sa(sa_payload)) = msg.find(PayloadType::Sa) else {
            return Err(reply(NotifyPayload::error(NotifyType::InvalidSyntax)));
        };
        let Some((num, suite)) = choose_proposal(&config.proposals, sa_payload) else {
            info!("IKE_SA_INIT: no acceptable proposal");
            return Err(reply(NotifyPayload::error(NotifyType::NoProposalChosen)));
        };
        let (Some(Payload::Ke(ke)), Some(Payload::Nonce(ni))) =
            (msg.find(PayloadType::Ke), msg.find(PayloadType::Nonce))
        else {
            return Err(reply(NotifyPayload::error(NotifyType::InvalidSyntax)));
        };
        if ke.method != suite.ke.id() {
            // RFC 7296 1.2: tell the initiator which method we chose.
            return Err(reply(NotifyPayload::invalid_ke_payload(suite.ke.id())));
        }
        let mut sa = Self::blank(Role::Responder, config, Goal::IkeAuth, local, remote);
        sa.ch.spi_i = h.spi_i;
        sa.ch.spi_r = nonzero_spi(rng);
        sa.ni = ni.as_bytes().to_vec();
        sa.nr = random_nonce(rng);
        sa.init_request = request.to_vec();
        sa.note_peer_capabilities(&msg);
        sa.nat = NatStatus::observe(&msg, &h.spi_i, &h.spi_r, remote, local);
        if let Some(n) = sa.nat.filter(NatStatus::any) {
            info!(
                %remote,
                peer_behind = n.peer_behind,
                local_behind = n.local_behind,
                "NAT detected on the path of an IKE_SA_INIT"
            );
        }
        let (our_ke, secret) = match suite.ke.start_and_complete(rng, &ke.data) {
            Ok(v) => v,
            Err(e) => {
                return Err(reply(NotifyPayload::error(
                    e.notify().unwrap_or(NotifyType::InvalidSyntax),
                )));
            }
        };
        let mut payloads = vec![
            Payload::Sa(SaPayload::new(vec![Proposal::new(
                num,
                ProtocolId::Ike,
                Vec::new(),
                suite.transforms(),
            )])),
            Payload::Ke(KePayload::new(suite.ke.id(), our_ke)),
            Payload::Nonce(NoncePayload::new(sa.nr.clone()).map_err(|_| InitRefusal::Drop)?),
        ];
        payloads.extend(sa.capability_notifies(&suite, true));
        let header = Header::new(
            sa.ch.spi_i,
            sa.ch.spi_r,
            ExchangeType::IkeSaInit,
            Flags::new(false, true),
            0,
        );
        let response = Message::new(header, payloads).encode();
        if sa.install_initial_keys(suite, secret.as_bytes()).is_err() {
            return Err(InitRefusal::Drop);
        }
        sa.init_response = response.clone();
        sa.ch.peer_next_mid = 1;
        sa.ch.cached_response = Some((0, vec![response.clone()]));
        sa.transmits
            .push_back(Datagram::new(remote, local, response));
        sa.state = State::AwaitingAuth;
        sa.half_open_deadline = Some(now + sa.config.half_open_timeout);
        debug!(spi_i = %hex_spi(&sa.ch.spi_i), spi_r = %hex_spi(&sa.ch.spi_r), "IKE_SA_INIT answered");
        Ok(sa)
    }

    fn blank(
        role: Role,
        config: IkeConfig,
        goal: Goal,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Self {
        Self {
            role,
            config,
            goal,
            local,
            remote,
            ch: Channel::new(role == Role::Initiator),
            state: State::Closed,
            ni: Vec::new(),
            nr: Vec::new(),
            cookie: None,
            init_request: Vec::new(),
            init_response: Vec::new(),
            suite: None,
            keys: None,
            int_auth: None,
            addke_done: 0,
            peer_fragmentation: false,
            peer_hashes: Vec::new(),
            closed: false,
            peer_intermediate: false,
            peer_use_ppk: false,
            keys_without_ppk: None,
            ppk_used: false,
            peer_id: None,
            commands: VecDeque::new(),
            transmits: VecDeque::new(),
            origin: remote,
            nat: None,
            arrived: None,
            events: VecDeque::new(),
            half_open_deadline: None,
            retired: Vec::new(),
            serving_retired: false,
            retired_gone: false,
            rekey_out: None,
            peer_rekey: None,
            hold_new: false,
            rekey_at: None,
            expire_at: None,
            rekeys: 0,
        }
    }

    // ---------------------------------------------------------------- getters

    pub fn role(&self) -> Role {
        self.role
    }

    /// (SPIi, SPIr); SPIr is zero until the IKE_SA_INIT response arrives.
    pub fn spis(&self) -> ([u8; 8], [u8; 8]) {
        (self.ch.spi_i, self.ch.spi_r)
    }

    pub fn local(&self) -> SocketAddr {
        self.local
    }

    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// What NAT detection in IKE_SA_INIT showed (RFC 7296 2.23); `None` before it, or
    /// when the peer sent no NAT_DETECTION_* notification.
    pub fn nat(&self) -> Option<NatStatus> {
        self.nat
    }

    /// The peer's address when the SA was created, before any move (NAT traversal).
    pub fn origin(&self) -> SocketAddr {
        self.origin
    }

    /// Where a response goes and leaves from: back the way the request being handled
    /// came.
    fn reply_path(&self) -> (SocketAddr, SocketAddr) {
        self.arrived.unwrap_or((self.remote, self.local))
    }

    /// RFC 7296 2.23: a validated new message from another address or port (the peer's
    /// NAT changed its mapping, or the initiator moved to port 4500) moves the SA there,
    /// "including retransmission packets", unless we are behind a NAT ourselves ("A host
    /// behind a NAT SHOULD NOT do this type of dynamic address update"). The initiator's
    /// move to port 4500 after NAT detection is followed either way: "An IPsec endpoint
    /// that discovers a NAT between it and its correspondent MUST send all subsequent
    /// traffic from port 4500". Called only after the integrity check and for a new
    /// Message ID, so a replayed old message cannot move the SA back.
    fn follow_peer(&mut self) {
        let Some((from, to)) = self.arrived else {
            return;
        };
        if from == self.remote && to == self.local {
            return;
        }
        let to_nat_t = to.port() == NAT_T_PORT && self.local.port() != NAT_T_PORT;
        match self.nat {
            Some(n) if !n.local_behind || to_nat_t => {
                info!(
                    spi_i = %hex_spi(&self.ch.spi_i),
                    old = %self.remote,
                    new = %from,
                    "peer moved (NAT traversal); following it"
                );
                self.remote = from;
                self.local = to;
            }
            _ => debug!(
                spi_i = %hex_spi(&self.ch.spi_i),
                from = %from,
                "message from another address; answering there without following"
            ),
        }
    }

    /// The negotiated suite, once IKE_SA_INIT completed.
    pub fn suite(&self) -> Option<&IkeSuite> {
        self.suite.as_ref()
    }

    /// The authenticated peer identity.
    pub fn peer_id(&self) -> Option<&IdPayload> {
        self.peer_id.as_ref()
    }

    pub fn is_established(&self) -> bool {
        matches!(
            self.state,
            State::Established | State::AwaitingDecision { .. }
        ) && self.peer_id.is_some()
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// True when a post-quantum preshared key was mixed into SK_d, SK_pi and SK_pr
    /// (RFC 8784 3): the group keys wrapped with GSK_w (derived from SK_d) are then
    /// protected against a quantum computer, the rest of this IKE SA's traffic is not
    /// (RFC 9838 6.2).
    pub fn ppk_used(&self) -> bool {
        self.ppk_used
    }

    /// True when the negotiated suite includes a post-quantum key exchange (ML-KEM,
    /// KE methods 35-37) in IKE_SA_INIT or an IKE_INTERMEDIATE exchange (RFC 9370), so
    /// that the initial IKE SA itself resists a quantum computer (RFC 9838 6.2).
    pub fn post_quantum_ke(&self) -> bool {
        self.suite.as_ref().is_some_and(|s| {
            std::iter::once(&s.ke)
                .chain(s.addke.iter())
                .any(|m| m.is_post_quantum())
        })
    }

    /// The IKE SA keys (for a Wireshark key table when the operator asks for one).
    pub fn keys(&self) -> Option<&IkeKeys> {
        self.keys.as_ref()
    }

    /// The default key wrap key of this IKE SA, `GSK_w = prf+(SK_d, "Key Wrap for
    /// G-IKEv2")` with the KWA negotiated in IKE_SA_INIT (RFC 9838 3.1.1, 4.5.4).
    ///
    /// This is the key of the current IKE SA: what [`IkeSa::inband_rekey`] expects. A
    /// message from the peer may come on an IKE SA a rekey replaced; its event carries
    /// that SA's key (`kwk` of [`Event::Registered`], [`Event::InbandRekey`],
    /// [`Event::RegistrationRequested`]).
    pub fn key_wrap_key(&self) -> Result<KeyWrapKey, CryptoError> {
        self.current_kwk()?.key()
    }

    /// GSK_w of the current IKE SA.
    fn current_kwk(&self) -> Result<DefaultKwk, CryptoError> {
        match &self.ch.kwk {
            Some(k) if !self.serving_retired => Ok(k.clone()),
            _ => default_kwk(self.suite.as_ref(), self.keys.as_ref()),
        }
    }

    /// GSK_w of the IKE SA handling the message at hand: the current one, or the retired
    /// one swapped in while its message is handled.
    fn carrying_kwk(&self) -> Option<DefaultKwk> {
        if self.serving_retired {
            self.ch.kwk.clone()
        } else {
            self.current_kwk().ok()
        }
    }

    fn state_name(&self) -> &'static str {
        match self.state {
            State::InitSent { .. } => "init-sent",
            State::IntermediateSent { .. } => "intermediate-sent",
            State::AuthSent => "auth-sent",
            State::AwaitingAuth => "awaiting-auth",
            State::AwaitingDecision { .. } => "awaiting-decision",
            State::Established => "established",
            State::Closed => "closed",
        }
    }

    // ---------------------------------------------------------------- polling

    /// The next datagram to send, for a caller that sends everything to
    /// [`IkeSa::remote`]; [`IkeSa::poll_datagram`] also says where it goes.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front().map(|d| d.data)
    }

    /// The next datagram to send with its addresses: to [`IkeSa::remote`] from
    /// [`IkeSa::local`], or for a response back the way its request came (RFC 7296
    /// 2.23).
    pub fn poll_datagram(&mut self) -> Option<Datagram> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`IkeSa::handle_timeout`] must next be called: a retransmission, the
    /// half-open limit, the IKE SA's rekey or hard lifetime (RFC 7296 2.8), or the end of
    /// a replaced IKE SA's wait for its Delete.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let r = self.ch.outstanding.as_ref().map(|o| o.timer.deadline());
        let retired = self.retired.iter().map(|r| match &r.ch.outstanding {
            Some(o) => o.timer.deadline(),
            None => r.until,
        });
        // A rekey waits for a free window; its time then is the next event anyway.
        let rekey = self.rekey_at.filter(|_| self.rekey_out.is_none());
        [r, self.half_open_deadline, rekey, self.expire_at]
            .into_iter()
            .flatten()
            .chain(retired)
            .min()
    }

    /// Retransmits, expires, and starts an IKE SA rekey when its time has come (hence
    /// the randomness: a new SPI, nonce and key share, RFC 7296 1.3.2).
    pub fn handle_timeout(&mut self, now: Instant, rng: &mut dyn Random) {
        if self.is_closed() {
            return;
        }
        if self.half_open_deadline.is_some_and(|d| now >= d) {
            info!(spi_i = %hex_spi(&self.ch.spi_i), "half-open IKE SA expired");
            self.close(CloseReason::HalfOpenExpired);
            return;
        }
        self.retired_timeouts(now);
        self.pump(now, rng);
        if self.expire_at.is_some_and(|t| now >= t) {
            // Hard lifetime without a successful rekey: delete it (RFC 7296 2.8).
            info!(spi_i = %hex_spi(&self.ch.spi_i), "IKE SA lifetime reached; deleting it");
            self.expire_at = None;
            self.rekey_at = None;
            self.commands.clear();
            if self.ch.outstanding.is_some() {
                self.close(CloseReason::Deleted);
            } else {
                self.delete(now, rng);
            }
            return;
        }
        if self.rekey_out.is_none() && self.rekey_at.is_some_and(|t| now >= t) {
            self.rekey_at = None;
            self.rekey(now, rng);
        }
        let Some(o) = self.ch.outstanding.as_mut() else {
            return;
        };
        match o.timer.on_timeout(now) {
            Some(RetransmitAction::Resend) => {
                debug!(
                    mid = o.mid,
                    n = o.timer.retransmissions(),
                    "retransmitting request"
                );
                let (to, from) = (self.remote, self.local);
                let out = o.packets.iter().map(|p| Datagram::new(to, from, p.clone()));
                self.transmits.extend(out);
            }
            Some(RetransmitAction::GiveUp) => {
                warn!(mid = o.mid, "no response after all retransmissions");
                self.close(CloseReason::Timeout);
            }
            None => {}
        }
    }

    // ---------------------------------------------------------------- commands

    /// GCKS: answers the pending [`Event::RegistrationRequested`].
    pub fn decide(&mut self, decision: Decision, now: Instant, rng: &mut dyn Random) {
        let State::AwaitingDecision {
            mid,
            exchange,
            auth_payloads,
            spi_i,
        } = std::mem::replace(&mut self.state, State::Established)
        else {
            warn!("decision without a pending registration request");
            return;
        };
        let mut payloads = auth_payloads;
        match decision {
            Decision::Accept {
                gsa,
                kd,
                transport_mode,
            } => {
                // RFC 9838 Figure 4 `SK{IDr, [CERT,] AUTH, GSA, KD, [N]}` and RFC 7296 3.2
                // ("SHOULD send the payloads [..] in the order shown"): GSA and KD go
                // before any notify of the GSA_AUTH part (PPK_IDENTITY, RFC 8784 3).
                let at = payloads
                    .iter()
                    .position(|p| matches!(p, Payload::Notify(_)))
                    .unwrap_or(payloads.len());
                payloads.splice(at..at, [Payload::Gsa(gsa), Payload::Kd(kd)]);
                if transport_mode {
                    payloads.push(Payload::Notify(NotifyPayload::use_transport_mode()));
                }
            }
            Decision::Refuse(n) => payloads.push(Payload::Notify(NotifyPayload::error(n))),
        }
        // The answer goes out on the IKE SA the request came on, even when a rekey
        // replaced it meanwhile (RFC 7296 2.8: the old SA still answers until deleted).
        self.on_channel(spi_i, |sa| sa.send_response(exchange, mid, &payloads, rng));
        if let Some(i) = self
            .retired
            .iter()
            .position(|r| r.ch.spi_i == spi_i && r.delete_after_answer)
        {
            let r = self.retired.remove(i);
            self.retired.push(r);
            self.delete_last_retired(now, rng);
        }
        self.pump(now, rng);
    }

    /// Member: registers to another group over this IKE SA (GSA_REGISTRATION).
    pub fn register(&mut self, request: RegistrationRequest, now: Instant, rng: &mut dyn Random) {
        self.commands.push_back(Command::Register(request));
        self.pump(now, rng);
    }

    /// Member: leaves a group, or rejects its policy with NO_PROPOSAL_CHOSEN (RFC 9838
    /// 2.3.2, Figure 8).
    pub fn leave(
        &mut self,
        group: IdPayload,
        notify: NotifyType,
        now: Instant,
        rng: &mut dyn Random,
    ) {
        self.commands.push_back(Command::Leave { group, notify });
        self.pump(now, rng);
    }

    /// GCKS: pushes new policy and keys to this member (GSA_INBAND_REKEY, RFC 9838 2.4.2).
    /// `transport_mode` adds USE_TRANSPORT_MODE as the registration response does: the
    /// "GSA, KD and N payloads are built in the same manner as in a registration exchange"
    /// (2.4.2.1, 2.3.4; docs/interop.md #75).
    pub fn inband_rekey(
        &mut self,
        gsa: GsaPayload,
        kd: KdPayload,
        transport_mode: bool,
        now: Instant,
        rng: &mut dyn Random,
    ) {
        self.commands.push_back(Command::InbandRekey {
            gsa,
            kd,
            wrapped_on: self.ch.spi_i,
            kwk: self.current_kwk().ok(),
            transport_mode,
        });
        self.pump(now, rng);
    }

    /// GCKS: deletes group SAs at this member with a GSA_INBAND_REKEY carrying only Delete
    /// payloads (`HDR, SK{D, [N]}`, RFC 9838 2.4.3 Figure 13).
    pub fn inband_delete(
        &mut self,
        deletes: Vec<DeletePayload>,
        now: Instant,
        rng: &mut dyn Random,
    ) {
        self.commands.push_back(Command::InbandDelete(deletes));
        self.pump(now, rng);
    }

    /// Deletes the IKE SA with an INFORMATIONAL Delete (RFC 7296 1.4.1).
    pub fn delete(&mut self, now: Instant, rng: &mut dyn Random) {
        if matches!(self.state, State::Established) {
            self.commands.push_back(Command::Delete);
            self.pump(now, rng);
        } else {
            self.close(CloseReason::Deleted);
        }
    }

    /// Sends the next queued command if the window is free.
    fn pump(&mut self, now: Instant, rng: &mut dyn Random) {
        if self.ch.outstanding.is_some()
            || self.serving_retired
            || !matches!(self.state, State::Established)
            || self.hold_new
            || self.is_closed()
        {
            return;
        }
        let Some(cmd) = self.commands.pop_front() else {
            return;
        };
        let mut resend = Some(cmd.clone());
        let (exchange, purpose, payloads) = match cmd {
            Command::RekeyIke => {
                self.send_rekey_request(None, 0, now, rng);
                return;
            }
            Command::Register(req) => {
                let group = req.group.clone();
                (
                    ExchangeType::GsaRegistration,
                    Purpose::Register(group),
                    registration_payloads(&req),
                )
            }
            Command::Leave { group, notify } => (
                ExchangeType::GsaRegistration,
                Purpose::Leave,
                vec![
                    Payload::IdG(group),
                    Payload::Notify(NotifyPayload::error(notify)),
                ],
            ),
            Command::InbandRekey {
                gsa,
                mut kd,
                wrapped_on,
                kwk,
                transport_mode,
            } => {
                if wrapped_on != self.ch.spi_i {
                    // RFC 9838 3.1.1: the KD must be wrapped with the GSK_w of the IKE SA
                    // that carries it, and a rekey replaced the one it was built for.
                    let rewrapped = match (kwk, self.current_kwk()) {
                        (Some(from), Ok(to)) => from
                            .key()
                            .and_then(|from| rewrap_default_kwk(&mut kd, &from, &to.key()?)),
                        (None, _) => Err(CryptoError::Internal("no key wrap key")),
                        (_, Err(e)) => Err(e),
                    };
                    if let Err(e) = rewrapped {
                        warn!(error = %e, "GSA_INBAND_REKEY dropped: not wrapped again for the new IKE SA");
                        self.pump(now, rng);
                        return;
                    }
                    debug!("GSA_INBAND_REKEY wrapped again for the rekeyed IKE SA");
                }
                resend = Some(Command::InbandRekey {
                    gsa: gsa.clone(),
                    kd: kd.clone(),
                    wrapped_on: self.ch.spi_i,
                    kwk: self.current_kwk().ok(),
                    transport_mode,
                });
                // RFC 9838 Figure 11: `SK{GSA, KD, [N]}`.
                let mut v = vec![Payload::Gsa(gsa), Payload::Kd(kd)];
                if transport_mode {
                    v.push(Payload::Notify(NotifyPayload::use_transport_mode()));
                }
                (ExchangeType::GsaInbandRekey, Purpose::InbandRekey, v)
            }
            Command::InbandDelete(deletes) => (
                ExchangeType::GsaInbandRekey,
                Purpose::InbandRekey,
                deletes.into_iter().map(Payload::Delete).collect(),
            ),
            Command::Delete => {
                resend = None;
                (
                    ExchangeType::Informational,
                    Purpose::Delete,
                    vec![Payload::Delete(DeletePayload::ike())],
                )
            }
        };
        self.send_request(exchange, purpose, &payloads, now, rng);
        if let Some(o) = self.ch.outstanding.as_mut() {
            o.command = resend;
        }
    }

    // ---------------------------------------------------------------- input

    /// Processes one received datagram (without the port-4500 non-ESP marker) that came
    /// from [`IkeSa::remote`] to [`IkeSa::local`].
    pub fn handle(&mut self, datagram: &[u8], now: Instant, rng: &mut dyn Random) {
        self.handle_via(datagram, self.remote, self.local, now, rng);
    }

    /// Processes one received datagram (without the port-4500 non-ESP marker) that came
    /// from `source` to `destination`, the outer addresses (for a socket bound to a
    /// wildcard address, the destination the kernel reported). Responses go back to
    /// `source`; a new authenticated message from elsewhere moves the SA there unless we
    /// are behind a NAT (RFC 7296 2.23).
    pub fn handle_via(
        &mut self,
        datagram: &[u8],
        source: SocketAddr,
        destination: SocketAddr,
        now: Instant,
        rng: &mut dyn Random,
    ) {
        self.arrived = Some((source, destination));
        self.handle_datagram(datagram, now, rng);
        self.arrived = None;
    }

    fn handle_datagram(&mut self, datagram: &[u8], now: Instant, rng: &mut dyn Random) {
        if self.is_closed() {
            return;
        }
        let header = match Header::read_datagram(datagram) {
            Ok(h) => h,
            Err(e) => {
                debug!(error = %e, "dropping undecodable datagram");
                return;
            }
        };
        if header.spi_i != self.ch.spi_i {
            // A replaced IKE SA still answers until it is deleted (RFC 7296 2.8).
            if let Some(i) = self
                .retired
                .iter()
                .position(|r| r.ch.spi_i == header.spi_i && r.ch.spi_r == header.spi_r)
            {
                self.handle_on_retired(i, &header, datagram, now, rng);
                self.pump(now, rng);
            }
            return;
        }
        // RFC 7296 2.2: the I flag tells who sent the message; it must be the other side.
        let from_initiator = header.flags.is_initiator();
        if from_initiator == self.ch.initiator {
            return;
        }
        if header.flags.is_response() {
            self.handle_response(&header, datagram, now, rng);
        } else {
            self.handle_request(&header, datagram, now, rng);
        }
        self.pump(now, rng);
    }

    /// Runs the request or response handlers with retired IKE SA `i` in place of the
    /// current one; only its Delete, INFORMATIONAL and outstanding answers mean
    /// anything there (see `handle_request`).
    fn handle_on_retired(
        &mut self,
        i: usize,
        header: &Header,
        datagram: &[u8],
        now: Instant,
        rng: &mut dyn Random,
    ) {
        let mut r = self.retired.swap_remove(i);
        if header.flags.is_initiator() == r.ch.initiator {
            self.retired.push(r);
            return;
        }
        std::mem::swap(&mut self.ch, &mut r.ch);
        self.serving_retired = true;
        self.retired_gone = false;
        if header.flags.is_response() {
            self.handle_response(header, datagram, now, rng);
        } else {
            self.handle_request(header, datagram, now, rng);
        }
        self.serving_retired = false;
        std::mem::swap(&mut self.ch, &mut r.ch);
        if std::mem::take(&mut self.retired_gone) {
            info!(
                spi_i = %hex_spi(&r.ch.spi_i),
                spi_r = %hex_spi(&r.ch.spi_r),
                "replaced IKE SA deleted"
            );
            // RFC 7296 2.8: the Delete of the old SA shows the initiator uses the new one.
            self.hold_new = false;
            self.on_retired_deleted(&r.ch, now);
        } else {
            self.retired.push(r);
        }
    }

    /// Runs `f` with the IKE SA whose SPIi is `spi_i` (current or retired) in place.
    fn on_channel(&mut self, spi_i: [u8; 8], f: impl FnOnce(&mut Self)) {
        if spi_i == self.ch.spi_i {
            f(self);
            return;
        }
        let Some(i) = self.retired.iter().position(|r| r.ch.spi_i == spi_i) else {
            debug!("the IKE SA of a pending answer is gone");
            return;
        };
        std::mem::swap(&mut self.ch, &mut self.retired[i].ch);
        let serving = std::mem::replace(&mut self.serving_retired, true);
        f(self);
        self.serving_retired = serving;
        std::mem::swap(&mut self.ch, &mut self.retired[i].ch);
    }

    fn handle_response(
        &mut self,
        header: &Header,
        datagram: &[u8],
        now: Instant,
        rng: &mut dyn Random,
    ) {
        let Some(o) = self.ch.outstanding.as_ref() else {
            return;
        };
        if header.message_id != o.mid {
            return;
        }
        if matches!(o.purpose, Purpose::Init) {
            self.on_init_response(header, datagram, now, rng);
            return;
        }
        if header.spi_r != self.ch.spi_r {
            return;
        }
        let opened = match self.open(datagram, true) {
            Ok(Some(o)) => o,
            Ok(None) => return,
            Err(e) => {
                // RFC 7296 2.21: no answer to a response; the IKE state is cleaned up.
                warn!(error = %e, exchange = %header.exchange, "malformed response");
                self.close(CloseReason::ProtocolError(e.to_string()));
                return;
            }
        };
        if let Err(e) = rules::check(header.exchange, true, &opened.payloads) {
            warn!(error = %e, exchange = %header.exchange, "malformed response");
            self.close(CloseReason::ProtocolError(e.to_string()));
            return;
        }
        let Some(o) = self.ch.outstanding.take() else {
            return;
        };
        self.follow_peer();
        if !self.serving_retired {
            self.hold_new = false;
        }
        self.ch.next_mid = o.mid.wrapping_add(1);
        // RFC 7296 2.21.3: INVALID_SYNTAX is fatal in both peers.
        let invalid_syntax = opened.payloads.has_notify(NotifyType::InvalidSyntax);
        match o.purpose {
            Purpose::Init => {}
            Purpose::Intermediate => self.on_intermediate_response(opened, now, rng),
            Purpose::Auth => self.on_auth_response(opened, now, rng),
            Purpose::Register(group) => self.on_registration_result(group, &opened.payloads),
            Purpose::Leave | Purpose::InbandRekey => {}
            Purpose::RekeyIke => self.on_rekey_response(opened, now, rng),
            Purpose::Delete => self.close(CloseReason::Deleted),
            Purpose::DeleteRetired => self.retired_gone = true,
        }
        if invalid_syntax && !self.serving_retired {
            self.close(CloseReason::PeerError(NotifyType::InvalidSyntax));
        }
    }

    fn handle_request(
        &mut self,
        header: &Header,
        datagram: &[u8],
        now: Instant,
        rng: &mut dyn Random,
    ) {
        if header.exchange == ExchangeType::IkeSaInit {
            // A retransmitted IKE_SA_INIT request gets the same response (RFC 7296 2.1).
            if self.role == Role::Responder && header.message_id == 0 {
                self.resend_cached(0);
            }
            return;
        }
        if header.spi_r != self.ch.spi_r {
            return;
        }
        if header.message_id.wrapping_add(1) == self.ch.peer_next_mid {
            // RFC 7296 2.1; RFC 7383 2.6.1: answer a retransmission once per copy of the
            // request (its SK, or its first fragment).
            if is_first_piece(datagram) {
                self.resend_cached(header.message_id);
            }
            return;
        }
        if header.message_id != self.ch.peer_next_mid {
            return;
        }
        if matches!(self.state, State::AwaitingDecision { spi_i, .. } if spi_i == self.ch.spi_i) {
            // Still deciding on the previous request; the member will retransmit.
            return;
        }
        let opened = match self.open(datagram, false) {
            Ok(Some(o)) => o,
            Ok(None) => return,
            Err(e) => {
                self.refuse_malformed_request(header, &e, rng);
                return;
            }
        };
        if !self.serving_retired {
            // RFC 7296 2.8: a valid message on the new IKE SA shows the rekey initiator
            // uses it.
            self.hold_new = false;
        }
        if let Err(e) = rules::check(header.exchange, false, &opened.payloads) {
            self.refuse_malformed_request(header, &e, rng);
            return;
        }
        self.ch.peer_next_mid = header.message_id.wrapping_add(1);
        self.follow_peer();
        if self.serving_retired {
            self.on_retired_request(header, opened, now, rng);
            return;
        }
        match (header.exchange, &self.state) {
            (ExchangeType::IkeIntermediate, State::AwaitingAuth) => {
                self.on_intermediate_request(opened, rng)
            }
            (ExchangeType::IkeAuth | ExchangeType::GsaAuth, State::AwaitingAuth) => {
                self.on_auth_request(opened, now, rng)
            }
            (ExchangeType::GsaRegistration, State::Established) if self.role == Role::Responder => {
                self.on_registration_request(opened, rng)
            }
            (ExchangeType::GsaInbandRekey, State::Established) if self.role == Role::Initiator => {
                self.on_inband_rekey_request(header, &opened, rng)
            }
            (ExchangeType::CreateChildSa, State::Established) if is_ike_rekey(&opened.payloads) => {
                self.on_rekey_request(opened, now, rng)
            }
            (ExchangeType::CreateChildSa, State::Established) => {
                // RFC 9838 2.3 (R004): this IKE SA is not for unicast Child SAs. RFC 7296
                // 3.10.1: NO_ADDITIONAL_SAS tells the peer so without closing the SA.
                debug!("CREATE_CHILD_SA refused with NO_ADDITIONAL_SAS");
                self.send_response(
                    header.exchange,
                    header.message_id,
                    &[Payload::Notify(NotifyPayload::error(
                        NotifyType::NoAdditionalSas,
                    ))],
                    rng,
                );
            }
            (ExchangeType::Informational, _) => {
                let deleted = opened
                    .payloads
                    .iter()
                    .any(|p| matches!(p, Payload::Delete(d) if d.protocol == ProtocolId::Ike));
                self.send_response(header.exchange, header.message_id, &[], rng);
                let refused = opened
                    .payloads
                    .notifies()
                    .any(|n| n.ty == NotifyType::AuthenticationFailed);
                if refused && !deleted {
                    // RFC 7296 2.21.2: the initiator could not authenticate us and tells
                    // us so in an INFORMATIONAL exchange; it has dropped the IKE SA.
                    warn!(
                        peer = %self.peer_id.as_ref().map(ToString::to_string).unwrap_or_default(),
                        "the peer refused our authentication (AUTHENTICATION_FAILED): it \
                         cannot verify our credential or identity"
                    );
                    self.close(CloseReason::PeerError(NotifyType::AuthenticationFailed));
                } else if deleted {
                    if let Some(new) = self.peer_rekey.take() {
                        // RFC 7296 2.8.2: the peer did not see our simultaneous rekey and
                        // deletes the old IKE SA; ours is forgotten, its one stays.
                        info!("peer deleted the rekeyed IKE SA; forgetting our own rekey");
                        self.rekey_out = None;
                        self.ch.outstanding = None;
                        self.switch_to(new, now, rng);
                        // The old IKE SA (just retired by switch_to) is deleted.
                        self.retired.pop();
                    } else {
                        info!("peer deleted the IKE SA");
                        self.close(CloseReason::Deleted);
                    }
                }
            }
            (ex, _) => {
                debug!(exchange = %ex, state = self.state_name(), "unexpected request");
                self.refuse_request(
                    header,
                    NotifyPayload::error(NotifyType::InvalidSyntax),
                    format!("unexpected {ex} request"),
                    rng,
                );
            }
        }
        let _ = now;
    }

    // ---------------------------------------------------------------- IKE_SA_INIT

    fn send_init_request(&mut self, ke: ActiveKe, retries: u32, now: Instant) {
        let mut payloads = Vec::new();
        if let Some(c) = &self.cookie {
            // RFC 7296 2.6: the COOKIE notify comes first.
            if let Ok(n) = NotifyPayload::cookie(c) {
                payloads.push(Payload::Notify(n));
            }
        }
        let ke_method = ke.method();
        let proposals = self
            .config
            .proposals
            .iter()
            .enumerate()
            // After INVALID_KE_PAYLOAD the proposals stay the same; only the KE payload
            // changes to the method the responder asked for (RFC 7296 1.2).
            .map(|(i, s)| Proposal::new(i as u8 + 1, ProtocolId::Ike, Vec::new(), s.transforms()))
            .collect();
        payloads.push(Payload::Sa(SaPayload::new(proposals)));
        payloads.push(Payload::Ke(KePayload::new(
            ke_method.id(),
            ke.pub_key().to_vec(),
        )));
        if let Ok(n) = NoncePayload::new(self.ni.clone()) {
            payloads.push(Payload::Nonce(n));
        }
        let any_addke = self.config.proposals.iter().any(|s| !s.addke.is_empty());
        let suite_hint = self.config.proposals.first().cloned();
        if let Some(s) = suite_hint {
            let mut caps = self.capability_notifies(&s, false);
            if !any_addke {
                caps.retain(|p| !matches!(p, Payload::Notify(n) if n.ty == NotifyType::IntermediateExchangeSupported));
            }
            payloads.extend(caps);
        }
        let header = Header::new(
            self.ch.spi_i,
            [0; 8],
            ExchangeType::IkeSaInit,
            Flags::new(true, false),
            0,
        );
        let bytes = Message::new(header, payloads).encode();
        self.init_request = bytes.clone();
        self.transmits
            .push_back(Datagram::new(self.remote, self.local, bytes.clone()));
        self.ch.outstanding = Some(Outstanding {
            mid: 0,
            purpose: Purpose::Init,
            packets: vec![bytes],
            timer: RetransmitTimer::start(self.config.retransmit, now),
            command: None,
        });
        self.state = State::InitSent { ke, retries };
    }

    /// NAT detection, fragmentation, signature hashes, intermediate and childless notifies
    /// for IKE_SA_INIT. `responding`: only echo what the initiator offered.
    fn capability_notifies(&self, suite: &IkeSuite, responding: bool) -> Vec<Payload> {
        let mut v = vec![
            Payload::Notify(NotifyPayload::nat_detection_source_ip(nat_detection_hash(
                &self.ch.spi_i,
                &self.ch.spi_r,
                self.local,
            ))),
            Payload::Notify(NotifyPayload::nat_detection_destination_ip(
                nat_detection_hash(&self.ch.spi_i, &self.ch.spi_r, self.remote),
            )),
        ];
        if self.config.fragment_size.is_some() && (!responding || self.peer_fragmentation) {
            v.push(Payload::Notify(
                NotifyPayload::ikev2_fragmentation_supported(),
            ));
        }
        if !self.config.signature_hashes.is_empty() {
            v.push(Payload::Notify(NotifyPayload::signature_hash_algorithms(
                &self.config.signature_hashes,
            )));
        }
        if (!responding && !suite.addke.is_empty())
            || (responding && self.peer_intermediate && !suite.addke.is_empty())
        {
            v.push(Payload::Notify(
                NotifyPayload::intermediate_exchange_supported(),
            ));
        }
        // RFC 8784 3: an initiator with a PPK for this responder MUST send USE_PPK (again
        // after a COOKIE); a responder with PPKs answers with it, otherwise ignores it.
        if (!responding && self.config.ppk.is_some())
            || (responding && self.peer_use_ppk && self.config.ppk_resolver.is_some())
        {
            v.push(Payload::Notify(NotifyPayload::new(
                NotifyType::UsePpk,
                Vec::new(),
            )));
        }
        // RFC 6023 3: a supporting responder MUST announce it in its IKE_SA_INIT response,
        // whether or not the initiator announced it.
        if self.config.childless {
            v.push(Payload::Notify(NotifyPayload::childless_ikev2_supported()));
        }
        v
    }

    fn note_peer_capabilities(&mut self, msg: &Message) {
        self.peer_fragmentation = msg
            .notify(NotifyType::Ikev2FragmentationSupported)
            .is_some();
        self.peer_hashes = msg
            .notify(NotifyType::SignatureHashAlgorithms)
            .and_then(|n| n.signature_hashes().ok())
            .unwrap_or_default();
        self.peer_intermediate = msg
            .notify(NotifyType::IntermediateExchangeSupported)
            .is_some();
        self.peer_use_ppk = msg.notify(NotifyType::UsePpk).is_some();
    }

    fn on_init_response(
        &mut self,
        header: &Header,
        datagram: &[u8],
        now: Instant,
        rng: &mut dyn Random,
    ) {
        let msg = match Message::decode(datagram) {
            Ok(m) => m,
            Err(e) => {
                debug!(error = %e, "undecodable IKE_SA_INIT response");
                return;
            }
        };
        let State::InitSent { retries, .. } = &self.state else {
            return;
        };
        let retries = *retries;
        // RFC 7296 2.6: a COOKIE means "send again with this cookie".
        if let Some(c) = msg.notify(NotifyType::Cookie) {
            if retries >= MAX_INIT_RETRIES {
                self.close(CloseReason::PeerError(NotifyType::Cookie));
                return;
            }
            self.cookie = c.cookie_data().ok().map(<[u8]>::to_vec);
            let State::InitSent { ke, .. } = std::mem::replace(&mut self.state, State::Closed)
            else {
                return;
            };
            debug!("retrying IKE_SA_INIT with a COOKIE");
            self.send_init_request(ke, retries + 1, now);
            return;
        }
        // RFC 7296 1.2: INVALID_KE_PAYLOAD names the method the responder wants.
        if let Some(n) = msg.notify(NotifyType::InvalidKePayload) {
            let wanted = n
                .invalid_ke_group()
                .ok()
                .and_then(crate::crypto::KeMethod::from_id);
            let offered = wanted.filter(|m| self.config.proposals.iter().any(|s| s.ke == *m));
            match offered {
                Some(m) if retries < MAX_INIT_RETRIES => {
                    let Ok(ke) = m.start(rng) else {
                        self.close(CloseReason::NoProposalChosen);
                        return;
                    };
                    debug!(method = ?m, "retrying IKE_SA_INIT with the requested KE method");
                    self.send_init_request(ke, retries + 1, now);
                }
                _ => self.close(CloseReason::NoProposalChosen),
            }
            return;
        }
        if let Some(err) = msg.notifies().find(|n| n.is_error()) {
            let ty = err.ty;
            info!(notify = %ty, "IKE_SA_INIT refused");
            self.close(if ty == NotifyType::NoProposalChosen {
                CloseReason::NoProposalChosen
            } else {
                CloseReason::PeerError(ty)
            });
            return;
        }
        if let Err(e) = rules::check(ExchangeType::IkeSaInit, true, &msg.payloads) {
            self.close(CloseReason::ProtocolError(e.to_string()));
            return;
        }
        let (Some(Payload::Sa(sa)), Some(Payload::Ke(ke_p)), Some(Payload::Nonce(nr))) = (
            msg.find(PayloadType::Sa),
            msg.find(PayloadType::Ke),
            msg.find(PayloadType::Nonce),
        ) else {
            self.close(CloseReason::ProtocolError(
                "IKE_SA_INIT response without SA/KE/Nr".into(),
            ));
            return;
        };
        // The responder must pick exactly one of our proposals (RFC 7296 2.7).
        let chosen = match sa.proposals.as_slice() {
            [p] if p.protocol == ProtocolId::Ike => IkeSuite::from_transforms(&p.transforms).ok(),
            _ => None,
        };
        let Some(suite) = chosen.filter(|s| {
            self.config
                .proposals
                .iter()
                .any(|ours| offered_covers(ours, s))
        }) else {
            self.close(CloseReason::NoProposalChosen);
            return;
        };
        // RFC 6023 3: the initiator MUST NOT send a childless IKE_AUTH unless the
        // responder announced CHILDLESS_IKEV2_SUPPORTED in its IKE_SA_INIT response.
        if self.goal == Goal::IkeAuth && msg.notify(NotifyType::ChildlessIkev2Supported).is_none() {
            info!("responder does not support childless IKE_AUTH (RFC 6023)");
            self.close(CloseReason::ProtocolError(
                "responder did not announce CHILDLESS_IKEV2_SUPPORTED (RFC 6023 3)".into(),
            ));
            return;
        }
        let State::InitSent { ke, .. } = std::mem::replace(&mut self.state, State::Closed) else {
            return;
        };
        if ke_p.method != suite.ke.id() || ke.method() != suite.ke {
            self.close(CloseReason::ProtocolError(
                "KE method differs from the chosen proposal".into(),
            ));
            return;
        }
        let secret = match ke.complete(&ke_p.data) {
            Ok(s) => s,
            Err(e) => {
                self.close(CloseReason::ProtocolError(e.to_string()));
                return;
            }
        };
        self.ch.spi_r = header.spi_r;
        self.nr = nr.as_bytes().to_vec();
        self.init_response = datagram.to_vec();
        self.note_peer_capabilities(&msg);
        // RFC 8784 3: no USE_PPK in the response while our PPK is mandatory: "the initiator
        // MUST abort the exchange". Optional: continue without a PPK.
        if let Some(ppk) = &self.config.ppk
            && !self.peer_use_ppk
        {
            if ppk.mandatory {
                warn!("responder did not answer USE_PPK and our PPK is mandatory (RFC 8784 3)");
                self.close(CloseReason::ProtocolError(
                    "responder did not answer USE_PPK; the PPK is mandatory (RFC 8784 3)".into(),
                ));
                return;
            }
            info!("responder does not use PPKs; continuing without (RFC 8784 3)");
        }
        let source = self.reply_path().0;
        self.nat = NatStatus::observe(&msg, &header.spi_i, &header.spi_r, source, self.local);
        if let Some(n) = self.nat.filter(NatStatus::any) {
            info!(
                peer_behind = n.peer_behind,
                local_behind = n.local_behind,
                "NAT detected on the path to the responder"
            );
            // RFC 7296 2.23: "The IKE initiator MUST check the NAT_DETECTION_SOURCE_IP or
            // NAT_DETECTION_DESTINATION_IP payloads if present, and if they do not match
            // the addresses in the outer packet, MUST tunnel all future IKE and ESP
            // packets associated with this IKE SA over UDP port 4500." The registration
            // SA of RFC 9838 has no ESP; its IKE messages move (2.1.1, R002).
            if self.remote.port() != NAT_T_PORT {
                self.remote.set_port(NAT_T_PORT);
            }
        }
        if let Err(e) = self.install_initial_keys(suite, secret.as_bytes()) {
            self.close(CloseReason::ProtocolError(e.to_string()));
            return;
        }
        self.ch.outstanding = None;
        self.ch.next_mid = 1;
        info!(spi_i = %hex_spi(&self.ch.spi_i), spi_r = %hex_spi(&self.ch.spi_r), suite = ?self.suite, "IKE_SA_INIT done");
        self.after_key_exchange(now, rng);
    }

    fn install_initial_keys(&mut self, suite: IkeSuite, g_ir: &[u8]) -> Result<(), CryptoError> {
        let keys = IkeKeys::initial(
            &suite,
            &self.ni,
            &self.nr,
            g_ir,
            &self.ch.spi_i,
            &self.ch.spi_r,
        )?;
        self.install_keys(suite, keys)
    }

    fn install_keys(&mut self, suite: IkeSuite, keys: IkeKeys) -> Result<(), CryptoError> {
        let we_initiated = self.ch.initiator;
        self.ch.sk_out = Some(SkKey::from_ike_keys(&suite, &keys, we_initiated)?);
        self.ch.sk_in = Some(SkKey::from_ike_keys(&suite, &keys, !we_initiated)?);
        if self.int_auth.is_none() {
            self.int_auth = Some(IntAuth::new(suite.prf));
        }
        self.keys = Some(keys);
        self.suite = Some(suite);
        Ok(())
    }

    // ---------------------------------------------------------------- IKE_INTERMEDIATE

    /// Initiator: next additional key exchange, or the authentication exchange.
    fn after_key_exchange(&mut self, now: Instant, rng: &mut dyn Random) {
        let next = self
            .suite
            .as_ref()
            .and_then(|s| s.addke.get(self.addke_done).copied());
        match next {
            Some(method) => {
                let ke = match method.start(rng) {
                    Ok(k) => k,
                    Err(e) => {
                        self.close(CloseReason::ProtocolError(e.to_string()));
                        return;
                    }
                };
                let payloads = [Payload::Ke(KePayload::new(
                    method.id(),
                    ke.pub_key().to_vec(),
                ))];
                self.state = State::IntermediateSent { ke };
                self.send_request(
                    ExchangeType::IkeIntermediate,
                    Purpose::Intermediate,
                    &payloads,
                    now,
                    rng,
                );
            }
            None => self.send_auth_request(now, rng),
        }
    }

    fn on_intermediate_response(&mut self, opened: Opened, now: Instant, rng: &mut dyn Random) {
        let State::IntermediateSent { ke } = std::mem::replace(&mut self.state, State::Closed)
        else {
            return;
        };
        let Some(Payload::Ke(kp)) = opened.payloads.find(PayloadType::Ke) else {
            let err = opened
                .payloads
                .notifies()
                .find(|n| n.is_error())
                .map(|n| n.ty);
            self.close(CloseReason::PeerError(
                err.unwrap_or(NotifyType::InvalidSyntax),
            ));
            return;
        };
        if kp.method != ke.method().id() {
            self.close(CloseReason::ProtocolError(
                "IKE_INTERMEDIATE KE method mismatch".into(),
            ));
            return;
        }
        if let Err(e) = self.absorb_int_auth(false, &opened.int_auth_a(), &opened.plaintext) {
            self.close(CloseReason::ProtocolError(e.to_string()));
            return;
        }
        let secret = match ke.complete(&kp.data) {
            Ok(s) => s,
            Err(e) => {
                self.close(CloseReason::ProtocolError(e.to_string()));
                return;
            }
        };
        if let Err(e) = self.rekey_after_addke(secret.as_bytes()) {
            self.close(CloseReason::ProtocolError(e.to_string()));
            return;
        }
        self.after_key_exchange(now, rng);
    }

    fn on_intermediate_request(&mut self, opened: Opened, rng: &mut dyn Random) {
        let mid = opened.header.message_id;
        let expected = self
            .suite
            .as_ref()
            .and_then(|s| s.addke.get(self.addke_done).copied());
        let (Some(method), Some(Payload::Ke(kp))) =
            (expected, opened.payloads.find(PayloadType::Ke))
        else {
            self.send_response(
                ExchangeType::IkeIntermediate,
                mid,
                &[Payload::Notify(NotifyPayload::error(
                    NotifyType::InvalidSyntax,
                ))],
                rng,
            );
            return;
        };
        if kp.method != method.id() {
            self.send_response(
                ExchangeType::IkeIntermediate,
                mid,
                &[Payload::Notify(NotifyPayload::invalid_ke_payload(
                    method.id(),
                ))],
                rng,
            );
            return;
        }
        let (ours, secret) = match method.start_and_complete(rng, &kp.data) {
            Ok(v) => v,
            Err(e) => {
                let n = e.notify().unwrap_or(NotifyType::InvalidSyntax);
                self.send_response(
                    ExchangeType::IkeIntermediate,
                    mid,
                    &[Payload::Notify(NotifyPayload::error(n))],
                    rng,
                );
                return;
            }
        };
        if self
            .absorb_int_auth(true, &opened.int_auth_a(), &opened.plaintext)
            .is_err()
        {
            return;
        }
        let payloads = [Payload::Ke(KePayload::new(method.id(), ours))];
        // The response is protected with the current keys; IntAuth covers it as sent.
        let (first, plain) = encode_inner(&payloads);
        let a = self.int_auth_a(ExchangeType::IkeIntermediate, mid, true, first);
        self.send_response(ExchangeType::IkeIntermediate, mid, &payloads, rng);
        if self.absorb_int_auth(false, &a, &plain).is_err() {
            self.close(CloseReason::ProtocolError(
                "IntAuth of our IKE_INTERMEDIATE response".into(),
            ));
            return;
        }
        if self.rekey_after_addke(secret.as_bytes()).is_err() {
            self.close(CloseReason::ProtocolError(
                "key update after IKE_INTERMEDIATE".into(),
            ));
        }
    }

    /// The A chunk of RFC 9242 3.3.2 for a message we build: IKE header + SK header.
    fn int_auth_a(
        &self,
        exchange: ExchangeType,
        mid: u32,
        response: bool,
        first: PayloadType,
    ) -> Vec<u8> {
        let flags = Flags::new(self.ch.initiator, response);
        let mut h = Header::new(self.ch.spi_i, self.ch.spi_r, exchange, flags, mid);
        h.next_payload = PayloadType::Sk;
        let mut a = h.to_bytes();
        a.extend_from_slice(&[first.value(), 0, 0, 0]);
        a
    }

    /// Adds one IKE_INTERMEDIATE message to IntAuth (RFC 9242 3.3.2), with SK_pi or SK_pr of
    /// the key generation that protected it. `a` and `p` are its A and P chunks.
    fn absorb_int_auth(
        &mut self,
        from_initiator: bool,
        a: &[u8],
        p: &[u8],
    ) -> Result<(), CryptoError> {
        let (Some(keys), Some(ia)) = (self.keys.as_ref(), self.int_auth.as_mut()) else {
            return Err(CryptoError::Internal("IntAuth before IKE_SA_INIT keys"));
        };
        let sk_p = if from_initiator {
            &keys.sk_pi
        } else {
            &keys.sk_pr
        };
        ia.absorb(from_initiator, sk_p.as_bytes(), a, p)
    }

    fn rekey_after_addke(&mut self, secret: &[u8]) -> Result<(), CryptoError> {
        let suite = self.suite.clone().ok_or(CryptoError::Internal("suite"))?;
        let keys = self
            .keys
            .as_ref()
            .ok_or(CryptoError::Internal("keys"))?
            .after_additional_ke(
                &suite,
                secret,
                &self.ni,
                &self.nr,
                &self.ch.spi_i,
                &self.ch.spi_r,
            )?;
        self.addke_done += 1;
        self.install_keys(suite, keys)
    }

    // ---------------------------------------------------------------- authentication

    /// The octets the original initiator (`by_initiator`) or responder signs or MACs with
    /// `id` (RFC 7296 2.15; with IntAuth, RFC 9242 3.3.2), with SK_pi/SK_pr of `keys`
    /// (with or without a PPK, RFC 8784 3).
    fn signed_octets_of(
        &self,
        keys: &IkeKeys,
        by_initiator: bool,
        id: &IdPayload,
        mid: u32,
    ) -> Result<Vec<u8>, CryptoError> {
        let maced = maced_id(
            keys.prf(),
            keys.sk_p(by_initiator).as_bytes(),
            &id.to_bytes(),
        );
        let int_auth = self
            .int_auth
            .as_ref()
            .map(|ia| ia.finish(mid))
            .transpose()?
            .flatten();
        let (real, peer_nonce) = if by_initiator {
            (&self.init_request, &self.nr)
        } else {
            (&self.init_response, &self.ni)
        };
        Ok(signed_octets(real, peer_nonce, &maced, int_auth.as_deref()))
    }

    /// Our AUTH (and CERTs). `pair_psk` is the shared key resolved for the authenticated
    /// peer: a responder answers each member with that pair's key (RFC 7296 2.15: the
    /// shared secret of the two peers), so one GCKS can serve members with distinct PSKs.
    fn our_auth(
        &self,
        keys: &IkeKeys,
        mid: u32,
        pair_psk: Option<&SecretBytes>,
    ) -> Result<(Vec<Payload>, AuthPayload), CryptoError> {
        let prf = keys.prf();
        let octets = self.signed_octets_of(
            keys,
            self.role == Role::Initiator,
            &self.config.local_id,
            mid,
        )?;
        let mut certs = Vec::new();
        let auth = match &self.config.local_auth {
            LocalAuth::Psk(psk) => AuthPayload::new(
                AuthMethod::SharedKeyMic,
                PaddedPsk::new(prf, pair_psk.unwrap_or(psk).as_bytes())
                    .auth(&octets)
                    .as_bytes()
                    .to_vec(),
            ),
            LocalAuth::Signature { key, certs: chain } => {
                // RFC 7427 4: "a peer MUST pick one algorithm sent by the other peer".
                if !self.peer_hashes.contains(&key.scheme().hash_algorithm()) {
                    return Err(CryptoError::NoProposalChosen(
                        "the peer did not announce the hash our signature needs (RFC 7427 4)",
                    ));
                }
                certs.extend(
                    chain
                        .iter()
                        .map(|c| Payload::Cert(CertPayload::x509(c.clone()))),
                );
                AuthPayload::new(AuthMethod::DigitalSignature, sign_auth(key, &octets)?)
            }
        };
        Ok((certs, auth))
    }

    fn verify_peer_auth(
        &self,
        keys: &IkeKeys,
        peer_id: &IdPayload,
        certs: &[CertPayload],
        auth: &AuthPayload,
        mid: u32,
    ) -> Result<PeerAuth, CryptoError> {
        let prf = keys.prf();
        let octets = self.signed_octets_of(keys, self.role == Role::Responder, peer_id, mid)?;
        let cred = self.config.peer_auth.resolve(peer_id, certs).ok_or(
            CryptoError::AuthenticationFailed("no credentials for this identity"),
        )?;
        match (&cred, auth.method) {
            (PeerAuth::Psk(psk), AuthMethod::SharedKeyMic) => {
                PaddedPsk::new(prf, psk.as_bytes()).verify(&octets, &auth.data)
            }
            (PeerAuth::PublicKey { key, schemes }, AuthMethod::DigitalSignature) => {
                // The peer must have used a hash we announced (RFC 7427 4).
                let announced = &self.config.signature_hashes;
                verify_auth(key, &auth.data, &octets, |s| {
                    schemes.contains(&s) && announced.contains(&s.hash_algorithm())
                })
                .map(|_| ())
            }
            _ => Err(CryptoError::AuthenticationFailed(
                "AUTH method does not match the credential",
            )),
        }?;
        Ok(cred)
    }

    fn send_auth_request(&mut self, now: Instant, rng: &mut dyn Random) {
        let mid = self.ch.next_mid;
        let Some(base) = self.keys.clone() else {
            self.close(CloseReason::ProtocolError("no IKE keys".into()));
            return;
        };
        // RFC 8784 3: with USE_PPK exchanged, AUTH is computed with SK_pi = prf+(PPK,
        // SK_pi'); when the PPK is optional NO_PPK_AUTH carries the AUTH data computed
        // with SK_pi'. With RFC 9370 additional exchanges `base` is already the generation
        // after the last IKE_INTERMEDIATE.
        let ppk = self.config.ppk.clone().filter(|_| self.peer_use_ppk);
        let with_ppk = match &ppk {
            Some(p) => match base.with_ppk(p.secret.as_bytes()) {
                Ok(k) => Some(k),
                Err(e) => {
                    self.close(CloseReason::ProtocolError(e.to_string()));
                    return;
                }
            },
            None => None,
        };
        let auth_keys = with_ppk.as_ref().unwrap_or(&base);
        let (certs, auth) = match self.our_auth(auth_keys, mid, None) {
            Ok(v) => v,
            Err(e) => {
                self.close(CloseReason::ProtocolError(e.to_string()));
                return;
            }
        };
        let no_ppk_auth = match &ppk {
            Some(p) if !p.mandatory => match self.our_auth(&base, mid, None) {
                Ok((_, a)) => Some(a.data),
                Err(e) => {
                    self.close(CloseReason::ProtocolError(e.to_string()));
                    return;
                }
            },
            _ => None,
        };
        let mut payloads = vec![Payload::IdI(self.config.local_id.clone())];
        payloads.extend(certs);
        if let Some(r) = &self.config.remote_id {
            payloads.push(Payload::IdR(r.clone()));
        }
        payloads.push(Payload::Auth(auth));
        let exchange = match &self.goal {
            Goal::IkeAuth => ExchangeType::IkeAuth,
            Goal::GsaAuth(req) => {
                payloads.extend(registration_payloads(req));
                ExchangeType::GsaAuth
            }
        };
        if let (Some(p), Some(k)) = (&ppk, with_ppk) {
            // N(PPK_IDENTITY, PPK_ID) with the PPK_ID_FIXED type octet (RFC 8784 3, 5.1).
            let mut id = vec![PPK_ID_FIXED];
            id.extend_from_slice(&p.id);
            payloads.push(Payload::Notify(NotifyPayload::new(
                NotifyType::PpkIdentity,
                id,
            )));
            if let Some(data) = no_ppk_auth {
                payloads.push(Payload::Notify(NotifyPayload::new(
                    NotifyType::NoPpkAuth,
                    data,
                )));
            }
            self.keys_without_ppk = Some(base);
            self.keys = Some(k);
        }
        self.state = State::AuthSent;
        self.send_request(exchange, Purpose::Auth, &payloads, now, rng);
    }

    fn on_auth_response(&mut self, opened: Opened, now: Instant, rng: &mut dyn Random) {
        let p = &opened.payloads;
        let idr = p.iter().find_map(|x| match x {
            Payload::IdR(id) => Some(id.clone()),
            _ => None,
        });
        let auth = p.iter().find_map(|x| match x {
            Payload::Auth(a) => Some(a.clone()),
            _ => None,
        });
        let (Some(idr), Some(auth)) = (idr, auth) else {
            // HDR, SK{N(AUTHENTICATION_FAILED)} and other errors before authentication.
            let n = p.notifies().find(|n| n.is_error()).map(|n| n.ty);
            info!(notify = ?n, "authentication refused by the peer");
            self.close(match n {
                Some(NotifyType::AuthenticationFailed) | None => CloseReason::AuthenticationFailed,
                Some(other) => CloseReason::PeerError(other),
            });
            return;
        };
        let certs: Vec<CertPayload> = p
            .iter()
            .filter_map(|x| match x {
                Payload::Cert(c) => Some(c.clone()),
                _ => None,
            })
            .collect();
        if let Some(expected) = &self.config.remote_id
            && expected != &idr
        {
            warn!("responder identity differs from the configured one");
            self.refuse_responder(now, rng);
            return;
        }
        // RFC 8784 3: PPK_IDENTITY in the response (its content ignored) means the
        // responder used the PPK. Without it: fail if the PPK is mandatory (telling the
        // responder with AUTHENTICATION_FAILED in an INFORMATIONAL exchange), or continue
        // with SK_d', SK_pi', SK_pr' (the responder took our NO_PPK_AUTH).
        if let Some(without) = self.keys_without_ppk.take() {
            if p.notify(NotifyType::PpkIdentity).is_some() {
                self.ppk_used = true;
            } else if self.config.ppk.as_ref().is_none_or(|k| k.mandatory) {
                warn!("responder did not use our mandatory PPK (RFC 8784 3)");
                self.refuse_responder(now, rng);
                return;
            } else {
                info!("responder did not use the PPK; continuing without (RFC 8784 3)");
                self.keys = Some(without);
            }
        }
        let mid = opened.header.message_id;
        let verified = match self.keys.as_ref() {
            Some(k) => self.verify_peer_auth(k, &idr, &certs, &auth, mid).map(drop),
            None => Err(CryptoError::Internal("keys")),
        };
        if let Err(e) = verified {
            warn!(error = %e, "responder AUTH did not verify");
            self.refuse_responder(now, rng);
            return;
        }
        self.peer_id = Some(idr.clone());
        self.state = State::Established;
        self.half_open_deadline = None;
        self.schedule_lifetime(now, rng);
        info!(peer = %idr, "IKE SA established");
        self.events.push_back(Event::Established { peer_id: idr });
        if let Goal::GsaAuth(req) = self.goal.clone() {
            self.on_registration_result(req.group, p);
        }
    }

    fn on_auth_request(&mut self, opened: Opened, now: Instant, rng: &mut dyn Random) {
        let mid = opened.header.message_id;
        let exchange = opened.header.exchange;
        let p = &opened.payloads;
        let idi = p.iter().find_map(|x| match x {
            Payload::IdI(id) => Some(id.clone()),
            _ => None,
        });
        let auth = p.iter().find_map(|x| match x {
            Payload::Auth(a) => Some(a.clone()),
            _ => None,
        });
        let certs: Vec<CertPayload> = p
            .iter()
            .filter_map(|x| match x {
                Payload::Cert(c) => Some(c.clone()),
                _ => None,
            })
            .collect();
        let fail = |sa: &mut Self, rng: &mut dyn Random, why: &str| {
            warn!(why, "authentication of the initiator failed");
            sa.send_response(
                exchange,
                mid,
                &[Payload::Notify(NotifyPayload::error(
                    NotifyType::AuthenticationFailed,
                ))],
                rng,
            );
            sa.close(CloseReason::AuthenticationFailed);
        };
        let (Some(idi), Some(auth)) = (idi, auth) else {
            fail(self, rng, "IDi or AUTH missing");
            return;
        };
        let Some(base) = self.keys.clone() else {
            fail(self, rng, "no IKE keys");
            return;
        };
        let (keys, auth, ppk_used) = match self.choose_ppk(&idi, p, base, auth) {
            Ok(v) => v,
            Err(why) => {
                fail(self, rng, why);
                return;
            }
        };
        let cred = match self.verify_peer_auth(&keys, &idi, &certs, &auth, mid) {
            Ok(c) => c,
            Err(e) => {
                fail(self, rng, &e.to_string());
                return;
            }
        };
        let pair_psk = match &cred {
            PeerAuth::Psk(k) => Some(k),
            PeerAuth::PublicKey { .. } => None,
        };
        let (our_certs, our_auth) = match self.our_auth(&keys, mid, pair_psk) {
            Ok(v) => v,
            Err(e) => {
                fail(self, rng, &e.to_string());
                return;
            }
        };
        // From here on SK_d (hence GSK_w, RFC 9838 3.1.1) is the PPK one when used.
        self.keys = Some(keys);
        self.ppk_used = ppk_used;
        self.peer_id = Some(idi.clone());
        self.half_open_deadline = None;
        self.schedule_lifetime(now, rng);
        let mut auth_payloads = vec![Payload::IdR(self.config.local_id.clone())];
        auth_payloads.extend(our_certs);
        auth_payloads.push(Payload::Auth(our_auth));
        if ppk_used {
            // RFC 8784 3: "PPK_IDENTITY notification with no data to indicate that the
            // PPK is used".
            auth_payloads.push(Payload::Notify(NotifyPayload::new(
                NotifyType::PpkIdentity,
                Vec::new(),
            )));
        }
        info!(peer = %idi, exchange = %exchange, "initiator authenticated");
        self.events.push_back(Event::Established {
            peer_id: idi.clone(),
        });
        if exchange == ExchangeType::GsaAuth {
            match registration_request(p) {
                Some(request) => {
                    self.state = State::AwaitingDecision {
                        mid,
                        exchange,
                        auth_payloads,
                        spi_i: self.ch.spi_i,
                    };
                    self.events.push_back(Event::RegistrationRequested {
                        peer_id: idi,
                        request,
                        kwk: self.carrying_kwk(),
                    });
                }
                None => {
                    // Malformed GROUP_SENDER data (RFC 9838 4.7.4): INVALID_SYNTAX, fatal
                    // in both peers (RFC 7296 2.21.3).
                    auth_payloads.push(Payload::Notify(NotifyPayload::error(
                        NotifyType::InvalidSyntax,
                    )));
                    self.state = State::Established;
                    self.send_response(exchange, mid, &auth_payloads, rng);
                    self.close(CloseReason::ProtocolError(
                        "malformed GROUP_SENDER data (RFC 9838 4.7.4)".into(),
                    ));
                }
            }
        } else {
            // Childless IKE_AUTH (RFC 6023): no Child SA is created. A request that asks
            // for one gets the IKE SA and NO_PROPOSAL_CHOSEN for the child (RFC 7296 2.21.3).
            if p.find(PayloadType::Sa).is_some() {
                auth_payloads.push(Payload::Notify(NotifyPayload::error(
                    NotifyType::NoProposalChosen,
                )));
            }
            self.state = State::Established;
            self.send_response(exchange, mid, &auth_payloads, rng);
        }
    }

    /// Responder: RFC 8784 3, Table 1. Returns the keys to authenticate with (SK_d,
    /// SK_pi, SK_pr with the PPK mixed in, or the plain ones), the AUTH to verify (the AUTH
    /// payload, or its method with the NO_PPK_AUTH data on fallback) and whether the PPK
    /// is used; `Err` means AUTHENTICATION_FAILED.
    fn choose_ppk(
        &self,
        idi: &IdPayload,
        p: &[Payload],
        base: IkeKeys,
        auth: AuthPayload,
    ) -> Result<(IkeKeys, AuthPayload, bool), &'static str> {
        let Some(resolver) = self.config.ppk_resolver.as_ref() else {
            // No PPKs configured: USE_PPK was ignored, standard IKEv2 (Table 1, row 1).
            return Ok((base, auth, false));
        };
        let required = resolver.ppk_required(idi);
        if !self.peer_use_ppk {
            // Table 1, rows 2 and 3.
            return if required {
                Err("a PPK is mandatory for this peer and it did not send USE_PPK (RFC 8784 3)")
            } else {
                Ok((base, auth, false))
            };
        }
        let Some(ppk_id) = p.notify(NotifyType::PpkIdentity) else {
            return Err("USE_PPK was exchanged but no PPK_IDENTITY came (RFC 8784 3)");
        };
        // Only PPK_ID_FIXED names a PPK we can look up (RFC 8784 5.1).
        let ppk = match ppk_id.data.split_first() {
            Some((&PPK_ID_FIXED, id)) => resolver.ppk(idi, id),
            _ => None,
        };
        if let Some(ppk) = ppk {
            // Table 1, last row: use the PPK.
            let keys = base
                .with_ppk(ppk.as_bytes())
                .map_err(|_| "PPK key derivation failed")?;
            return Ok((keys, auth, true));
        }
        match p.notify(NotifyType::NoPpkAuth) {
            // Table 1: PPK unknown, optional, NO_PPK_AUTH present: the initiator is
            // authenticated with the NO_PPK_AUTH data and the AUTH payload's method.
            Some(n) if !required => {
                info!("unknown PPK_ID; falling back to NO_PPK_AUTH (RFC 8784 3)");
                Ok((base, AuthPayload::new(auth.method, n.data.clone()), false))
            }
            Some(_) => Err("unknown PPK_ID and a PPK is mandatory for this peer (RFC 8784 3)"),
            None => Err("unknown PPK_ID and no NO_PPK_AUTH (RFC 8784 3)"),
        }
    }

    // ---------------------------------------------------------------- IKE SA rekey

    /// Rekeys the IKE SA with a CREATE_CHILD_SA exchange (RFC 7296 1.3.2, 2.18) once the
    /// window is free; the IKE SA keeps its peer, registrations and [`IkeSa`] while its
    /// SPIs, keys (hence GSK_w, RFC 9838 3.1.1) and Message IDs are replaced.
    pub fn rekey(&mut self, now: Instant, rng: &mut dyn Random) {
        let queued = self.commands.iter().any(|c| matches!(c, Command::RekeyIke));
        if !queued && self.rekey_out.is_none() && self.peer_rekey.is_none() {
            self.commands.push_back(Command::RekeyIke);
        }
        self.pump(now, rng);
    }

    /// How many times this IKE SA was rekeyed (by either side).
    pub fn rekeys(&self) -> u32 {
        self.rekeys
    }

    /// Our SPIs of this IKE SA: the current one first, then those of replaced IKE SAs
    /// still waiting for their Delete. An endpoint routes each of them here.
    pub fn local_spis(&self) -> Vec<[u8; 8]> {
        std::iter::once(self.ch.local_spi())
            .chain(self.retired.iter().map(|r| r.ch.local_spi()))
            .filter(|s| *s != [0; 8])
            .collect()
    }

    /// When this side will start the next rekey (RFC 7296 2.8), if it will.
    pub fn rekey_time(&self) -> Option<Instant> {
        self.rekey_at
    }

    /// Arms the rekey and hard-lifetime timers of a new (or newly rekeyed) IKE SA.
    fn schedule_lifetime(&mut self, now: Instant, rng: &mut dyn Random) {
        self.rekey_at = self.config.rekey_after.map(|after| {
            let jitter = self.config.rekey_jitter.min(after);
            let span = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX);
            let r = u64::from_be_bytes(random_array(rng));
            let off = if span == 0 { 0 } else { r % (span + 1) };
            now + after - std::time::Duration::from_millis(off)
        });
        self.expire_at = self.config.lifetime.map(|l| now + l);
    }

    /// Retired IKE SAs: retransmit our Delete, give up on it, or stop waiting for theirs.
    fn retired_timeouts(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.retired.len() {
            let r = &mut self.retired[i];
            let gone = match r.ch.outstanding.as_mut() {
                Some(o) => match o.timer.on_timeout(now) {
                    Some(RetransmitAction::Resend) => {
                        let (to, from) = (self.remote, self.local);
                        let out = o.packets.iter().map(|p| Datagram::new(to, from, p.clone()));
                        self.transmits.extend(out);
                        false
                    }
                    Some(RetransmitAction::GiveUp) => true,
                    None => false,
                },
                None => now >= r.until,
            };
            if gone {
                let r = self.retired.swap_remove(i);
                debug!(spi_i = %hex_spi(&r.ch.spi_i), "replaced IKE SA dropped without a Delete");
                self.hold_new = false;
                self.on_retired_deleted(&r.ch, now);
            } else {
                i += 1;
            }
        }
    }

    /// A retired IKE SA is gone: our requests still unanswered on it are sent again on
    /// the current IKE SA by the peer's retransmission logic, not ours; only a pending
    /// rekey of the peer (RFC 7296 2.8.2) needs care, and that lives on `self`.
    fn on_retired_deleted(&mut self, ch: &Channel, _now: Instant) {
        // RFC 7296 2.8: nothing more travels on a deleted IKE SA. A request of ours it
        // still carried (a registration, a leave, an in-band rekey) goes again on the
        // current one, ahead of what was queued since; an in-band rekey's KD is wrapped
        // again for it there (RFC 9838 3.1.1).
        if let Some(cmd) = ch.outstanding.as_ref().and_then(|o| o.command.clone()) {
            info!(
                spi_i = %hex_spi(&ch.spi_i),
                "request unanswered on the replaced IKE SA; sending it on the new one"
            );
            self.commands.push_front(cmd);
        }
    }

    /// A request on a replaced IKE SA (RFC 7296 2.8, 2.25.2).
    fn on_retired_request(
        &mut self,
        header: &Header,
        opened: Opened,
        now: Instant,
        rng: &mut dyn Random,
    ) {
        let mid = header.message_id;
        match header.exchange {
            ExchangeType::Informational => {
                let deleted = opened
                    .payloads
                    .iter()
                    .any(|p| matches!(p, Payload::Delete(d) if d.protocol == ProtocolId::Ike));
                self.send_response(header.exchange, mid, &[], rng);
                if deleted {
                    self.retired_gone = true;
                }
            }
            ExchangeType::GsaInbandRekey if self.role == Role::Initiator => {
                // Sent by the GCKS before it saw the rekey: still its policy and keys.
                self.on_inband_rekey_request(header, &opened, rng);
            }
            ex => {
                // RFC 7296 2.25.2, 2.8.2: this IKE SA is being closed; a rekey of it (or
                // anything else new) gets TEMPORARY_FAILURE.
                debug!(exchange = %ex, "request on a replaced IKE SA: TEMPORARY_FAILURE");
                self.send_response(
                    ex,
                    mid,
                    &[Payload::Notify(NotifyPayload::error(
                        NotifyType::TemporaryFailure,
                    ))],
                    rng,
                );
            }
        }
        let _ = now;
    }

    /// Responder side of an IKE SA rekey (RFC 7296 1.3.2): `SA, Ni, KEi` in, `SA, Nr,
    /// KEr` out, then the new IKE SA is current while the old one answers until the
    /// initiator deletes it (2.8).
    fn on_rekey_request(&mut self, opened: Opened, now: Instant, rng: &mut dyn Random) {
        let mid = opened.header.message_id;
        let p = &opened.payloads;
        let refuse = |sa: &mut Self, rng: &mut dyn Random, n: NotifyPayload| {
            sa.send_response(ExchangeType::CreateChildSa, mid, &[Payload::Notify(n)], rng);
        };
        let deleting = self
            .ch
            .outstanding
            .as_ref()
            .is_some_and(|o| matches!(o.purpose, Purpose::Delete));
        if deleting || self.peer_rekey.is_some() || self.keys.is_none() {
            // RFC 7296 2.25.2: "a request to rekey an IKE SA that it is currently trying
            // to close" gets TEMPORARY_FAILURE (also a second rekey before the first
            // settled).
            refuse(
                self,
                rng,
                NotifyPayload::error(NotifyType::TemporaryFailure),
            );
            return;
        }
        let (Some(Payload::Sa(sa_p)), Some(Payload::Nonce(ni))) =
            (p.find(PayloadType::Sa), p.find(PayloadType::Nonce))
        else {
            refuse(self, rng, NotifyPayload::error(NotifyType::InvalidSyntax));
            return;
        };
        let Some((num, peer_spi, suite)) = choose_rekey_proposal(&self.config.proposals, sa_p)
        else {
            // Also a proposal that requires RFC 9370 additional key exchanges
            // (IKE_FOLLOWUP_KE is not implemented): docs/interop.md 72.
            info!("IKE SA rekey: no acceptable proposal");
            refuse(
                self,
                rng,
                NotifyPayload::error(NotifyType::NoProposalChosen),
            );
            return;
        };
        let Some(Payload::Ke(ke)) = p.find(PayloadType::Ke) else {
            // RFC 7296 2.18: a rekey of the IKE SA always carries KEi/KEr; the chosen
            // proposal has a KE method, so tell which (1.3.2, 2.7).
            refuse(self, rng, NotifyPayload::invalid_ke_payload(suite.ke.id()));
            return;
        };
        if ke.method != suite.ke.id() {
            // RFC 7296 1.3.2: "INVALID_KE_PAYLOAD ... if the KEi payload's group does not
            // match the one of the selected proposal".
            debug!(wanted = ?suite.ke, "IKE SA rekey: INVALID_KE_PAYLOAD");
            refuse(self, rng, NotifyPayload::invalid_ke_payload(suite.ke.id()));
            return;
        }
        let (our_ke, secret) = match suite.ke.start_and_complete(rng, &ke.data) {
            Ok(v) => v,
            Err(e) => {
                let n = e.notify().unwrap_or(NotifyType::InvalidSyntax);
                refuse(self, rng, NotifyPayload::error(n));
                return;
            }
        };
        let our_spi = loop {
            let s = nonzero_spi(rng);
            if s != peer_spi {
                break s;
            }
        };
        let nr = random_nonce(rng);
        let ni = ni.as_bytes().to_vec();
        let new = self.keys.as_ref().map(|k| {
            k.rekeyed(&suite, &[secret.as_bytes()], &ni, &nr, &peer_spi, &our_spi)
                .and_then(|keys| {
                    let ch = Channel::rekeyed(false, peer_spi, our_spi, &suite, &keys)?;
                    Ok(Rekeyed {
                        ch,
                        suite: suite.clone(),
                        keys,
                        ni: ni.clone(),
                        nr: nr.clone(),
                    })
                })
        });
        let Some(Ok(new)) = new else {
            refuse(
                self,
                rng,
                NotifyPayload::error(NotifyType::NoProposalChosen),
            );
            return;
        };
        let Ok(nonce) = NoncePayload::new(nr) else {
            return;
        };
        // RFC 7296 1.3.2: HDR, SK {SA, Nr, KEr}; our proposal carries our new SPI (3.3.1).
        let payloads = [
            Payload::Sa(SaPayload::new(vec![Proposal::new(
                num,
                ProtocolId::Ike,
                our_spi.to_vec(),
                suite.transforms(),
            )])),
            Payload::Nonce(nonce),
            Payload::Ke(KePayload::new(suite.ke.id(), our_ke)),
        ];
        self.send_response(ExchangeType::CreateChildSa, mid, &payloads, rng);
        if self.rekey_out.is_some() {
            // RFC 7296 2.25.2, 2.8.2: "reply as usual" and decide by the nonces once our
            // own rekey's response is in.
            info!("simultaneous IKE SA rekey: answered the peer's, waiting for ours");
            self.peer_rekey = Some(new);
            return;
        }
        info!(
            spi_i = %hex_spi(&peer_spi),
            spi_r = %hex_spi(&our_spi),
            "IKE SA rekeyed by the peer"
        );
        self.switch_to(new, now, rng);
        // RFC 7296 2.8: keep sending on the old SA's window rules until the initiator
        // shows it uses the new one; we send nothing new until then.
        self.hold_new = true;
    }

    /// Initiator side: `SA, Ni, KEi` (RFC 7296 1.3.2) with every configured suite (without
    /// RFC 9370 additional key exchanges) and our new SPI in each proposal (3.3.1).
    fn send_rekey_request(
        &mut self,
        method: Option<crate::crypto::KeMethod>,
        retries: u32,
        now: Instant,
        rng: &mut dyn Random,
    ) {
        let suites = rekey_suites(&self.config.proposals);
        // The KE method of the current suite when still offered: no INVALID_KE_PAYLOAD
        // round trip with a peer that chooses the same suite again.
        let current = self.suite.as_ref().map(|s| s.ke);
        let Some(method) = method
            .or(current.filter(|m| suites.iter().any(|s| s.ke == *m)))
            .or(suites.first().map(|s| s.ke))
        else {
            return;
        };
        let ke = match method.start(rng) {
            Ok(k) => k,
            Err(e) => {
                warn!(error = %e, "IKE SA rekey: no key share");
                return;
            }
        };
        let spi = nonzero_spi(rng);
        let ni = random_nonce(rng);
        let proposals = suites
            .iter()
            .enumerate()
            .map(|(i, s)| Proposal::new(i as u8 + 1, ProtocolId::Ike, spi.to_vec(), s.transforms()))
            .collect();
        let Ok(nonce) = NoncePayload::new(ni.clone()) else {
            return;
        };
        let payloads = [
            Payload::Sa(SaPayload::new(proposals)),
            Payload::Nonce(nonce),
            Payload::Ke(KePayload::new(method.id(), ke.pub_key().to_vec())),
        ];
        debug!(spi = %hex_spi(&spi), "IKE SA rekey: CREATE_CHILD_SA sent");
        self.rekey_out = Some(RekeyInit {
            ke,
            ni,
            spi,
            retries,
        });
        self.send_request(
            ExchangeType::CreateChildSa,
            Purpose::RekeyIke,
            &payloads,
            now,
            rng,
        );
    }

    fn on_rekey_response(&mut self, opened: Opened, now: Instant, rng: &mut dyn Random) {
        let Some(init) = self.rekey_out.take() else {
            return;
        };
        let p = &opened.payloads;
        if let Some(n) = p.notify(NotifyType::InvalidKePayload) {
            // RFC 7296 1.3.2, 2.7: retry with the method the responder chose, if offered.
            let wanted = n
                .invalid_ke_group()
                .ok()
                .and_then(crate::crypto::KeMethod::from_id)
                .filter(|m| {
                    rekey_suites(&self.config.proposals)
                        .iter()
                        .any(|s| s.ke == *m)
                });
            if let Some(m) = wanted.filter(|_| init.retries < MAX_INIT_RETRIES) {
                debug!(method = ?m, "IKE SA rekey: retrying with the requested KE method");
                self.send_rekey_request(Some(m), init.retries + 1, now, rng);
                return;
            }
        }
        let err = p.notifies().find(|n| n.is_error()).map(|n| n.ty);
        let made = match err {
            Some(ty) => Err(ty.to_string()),
            None => self.read_rekey_response(init, p),
        };
        let ours = match made {
            Ok(new) => new,
            Err(why) => {
                if let Some(theirs) = self.peer_rekey.take() {
                    // RFC 7296 2.8.2: the peer finished its rekey before it saw ours
                    // (TEMPORARY_FAILURE); its new IKE SA is the one.
                    info!(why, "our IKE SA rekey failed; the peer's stays");
                    self.switch_to(theirs, now, rng);
                    return;
                }
                // Try again later: TEMPORARY_FAILURE soon, anything else after a while.
                let wait = if err == Some(NotifyType::TemporaryFailure) {
                    std::time::Duration::from_secs(10)
                } else {
                    std::time::Duration::from_secs(300)
                };
                warn!(why, "IKE SA rekey failed; trying again later");
                self.rekey_at = Some(now + wait);
                return;
            }
        };
        match self.peer_rekey.take() {
            None => {
                info!(
                    spi_i = %hex_spi(&ours.ch.spi_i),
                    spi_r = %hex_spi(&ours.ch.spi_r),
                    "IKE SA rekeyed"
                );
                self.switch_to(ours, now, rng);
                self.delete_last_retired(now, rng);
            }
            Some(theirs) => {
                // RFC 7296 2.8.2: "The new IKE SA containing the lowest nonce SHOULD be
                // deleted by the node that created it".
                let lowest_ours = [&ours.ni, &ours.nr].into_iter().min()
                    < [&theirs.ni, &theirs.nr].into_iter().min();
                if lowest_ours {
                    info!("simultaneous IKE SA rekey: ours has the lowest nonce; deleting it");
                    let loser = Retired {
                        ch: ours.ch,
                        until: now,
                        delete_after_answer: false,
                    };
                    self.switch_to(theirs, now, rng);
                    // The peer deletes the old IKE SA; we delete our redundant one.
                    self.retired.push(loser);
                    self.delete_last_retired(now, rng);
                } else {
                    info!("simultaneous IKE SA rekey: ours wins; deleting the old one");
                    let redundant = Retired {
                        ch: theirs.ch,
                        until: now + RETIRED_GRACE,
                        delete_after_answer: false,
                    };
                    self.switch_to(ours, now, rng);
                    self.delete_last_retired(now, rng);
                    // The peer deletes the one it created.
                    self.retired.push(redundant);
                }
            }
        }
    }

    /// Checks the responder's `SA, Nr, KEr` and derives the new IKE SA (RFC 7296 2.18).
    fn read_rekey_response(&self, init: RekeyInit, p: &[Payload]) -> Result<Rekeyed, String> {
        let (Some(Payload::Sa(sa)), Some(Payload::Nonce(nr)), Some(Payload::Ke(kp))) = (
            p.find(PayloadType::Sa),
            p.find(PayloadType::Nonce),
            p.find(PayloadType::Ke),
        ) else {
            return Err("rekey response without SA, Nr and KEr".into());
        };
        let [prop] = sa.proposals.as_slice() else {
            return Err("rekey response with other than one proposal".into());
        };
        let peer_spi: [u8; 8] = prop
            .spi
            .as_slice()
            .try_into()
            .map_err(|_| "rekey response SPI is not 8 octets")?;
        let suite = IkeSuite::from_transforms(&prop.transforms).map_err(|e| e.to_string())?;
        if prop.protocol != ProtocolId::Ike
            || peer_spi == [0; 8]
            || !rekey_suites(&self.config.proposals).contains(&suite)
        {
            return Err("rekey response chose a proposal we did not offer".into());
        }
        if kp.method != suite.ke.id() || init.ke.method() != suite.ke {
            return Err("rekey response KE method differs from the chosen proposal".into());
        }
        let secret = init.ke.complete(&kp.data).map_err(|e| e.to_string())?;
        let old = self.keys.as_ref().ok_or("no IKE keys")?;
        let nr = nr.as_bytes().to_vec();
        let keys = old
            .rekeyed(
                &suite,
                &[secret.as_bytes()],
                &init.ni,
                &nr,
                &init.spi,
                &peer_spi,
            )
            .map_err(|e| e.to_string())?;
        let ch =
            Channel::rekeyed(true, init.spi, peer_spi, &suite, &keys).map_err(|e| e.to_string())?;
        Ok(Rekeyed {
            ch,
            suite,
            keys,
            ni: init.ni,
            nr,
        })
    }

    /// Makes `new` the current IKE SA; the current one retires (RFC 7296 2.18).
    fn switch_to(&mut self, new: Rekeyed, now: Instant, rng: &mut dyn Random) {
        let kwk = self.current_kwk().ok();
        let mut old = std::mem::replace(&mut self.ch, new.ch);
        old.kwk = old.kwk.or(kwk);
        self.retired.push(Retired {
            ch: old,
            until: now + RETIRED_GRACE,
            delete_after_answer: false,
        });
        self.keys = Some(new.keys);
        self.suite = Some(new.suite);
        self.ni = new.ni;
        self.nr = new.nr;
        self.hold_new = false;
        self.rekeys += 1;
        self.schedule_lifetime(now, rng);
        // A rekey queued meanwhile is done.
        self.commands.retain(|c| !matches!(c, Command::RekeyIke));
    }

    /// Sends the INFORMATIONAL Delete of the last retired IKE SA on it (RFC 7296 1.4.1,
    /// 2.18: the rekey's initiator deletes the old SA).
    fn delete_last_retired(&mut self, now: Instant, rng: &mut dyn Random) {
        let Some(mut r) = self.retired.pop() else {
            return;
        };
        if matches!(self.state, State::AwaitingDecision { spi_i, .. } if spi_i == r.ch.spi_i) {
            debug!("replaced IKE SA owes a registration answer; its Delete follows it");
            r.delete_after_answer = true;
            self.retired.push(r);
            return;
        }
        if r.ch.outstanding.is_some() {
            // Its window is busy; let it end by its deadline instead.
            self.retired.push(r);
            return;
        }
        std::mem::swap(&mut self.ch, &mut r.ch);
        self.send_request(
            ExchangeType::Informational,
            Purpose::DeleteRetired,
            &[Payload::Delete(DeletePayload::ike())],
            now,
            rng,
        );
        std::mem::swap(&mut self.ch, &mut r.ch);
        self.retired.push(r);
    }

    // ---------------------------------------------------------------- registration

    fn on_registration_request(&mut self, opened: Opened, rng: &mut dyn Random) {
        let mid = opened.header.message_id;
        let p = &opened.payloads;
        let peer_id = self
            .peer_id
            .clone()
            .unwrap_or_else(|| IdPayload::key_id(Vec::new()));
        let group = p.iter().find_map(|x| match x {
            Payload::IdG(g) => Some(g.clone()),
            _ => None,
        });
        // Figure 8: IDg with NO_PROPOSAL_CHOSEN or REGISTRATION_FAILED means "remove me".
        let leave = p.notifies().find(|n| {
            matches!(
                n.ty,
                NotifyType::NoProposalChosen | NotifyType::RegistrationFailed
            )
        });
        match (group, leave) {
            (Some(group), Some(n)) => {
                self.events.push_back(Event::LeaveRequested {
                    peer_id,
                    group,
                    notify: n.ty,
                });
                self.send_response(ExchangeType::GsaRegistration, mid, &[], rng);
            }
            (Some(_), None) => match registration_request(p) {
                Some(request) => {
                    self.state = State::AwaitingDecision {
                        mid,
                        exchange: ExchangeType::GsaRegistration,
                        auth_payloads: Vec::new(),
                        spi_i: self.ch.spi_i,
                    };
                    self.events.push_back(Event::RegistrationRequested {
                        peer_id,
                        request,
                        kwk: self.carrying_kwk(),
                    });
                }
                None => self.refuse_request(
                    &opened.header,
                    NotifyPayload::error(NotifyType::InvalidSyntax),
                    "malformed GROUP_SENDER data (RFC 9838 4.7.4)".into(),
                    rng,
                ),
            },
            (None, _) => self.refuse_request(
                &opened.header,
                NotifyPayload::error(NotifyType::InvalidSyntax),
                "GSA_REGISTRATION without IDg (RFC 9838 2.3.2)".into(),
                rng,
            ),
        }
    }

    /// Member: GSA_INBAND_REKEY (RFC 9838 2.4.2).
    fn on_inband_rekey_request(&mut self, header: &Header, opened: &Opened, rng: &mut dyn Random) {
        let gsa = opened.payloads.iter().find_map(|p| match p {
            Payload::Gsa(g) => Some(g.clone()),
            _ => None,
        });
        let kd = opened.payloads.iter().find_map(|p| match p {
            Payload::Kd(k) => Some(k.clone()),
            _ => None,
        });
        if let (Some(gsa), Some(kd)) = (gsa, kd) {
            self.events.push_back(Event::InbandRekey {
                gsa,
                kd,
                kwk: self.carrying_kwk(),
            });
        }
        // RFC 9838 2.4.3 (Figure 13): SAs may be deleted over the unicast SA too.
        let deletes: Vec<DeletePayload> = opened.payloads.deletes().cloned().collect();
        if !deletes.is_empty() {
            self.events.push_back(Event::InbandDelete { deletes });
        }
        self.send_response(header.exchange, header.message_id, &[], rng);
    }

    fn on_registration_result(&mut self, group: IdPayload, p: &[Payload]) {
        let gsa = p.iter().find_map(|x| match x {
            Payload::Gsa(g) => Some(g.clone()),
            _ => None,
        });
        let kd = p.iter().find_map(|x| match x {
            Payload::Kd(k) => Some(k.clone()),
            _ => None,
        });
        match (gsa, kd) {
            (Some(gsa), Some(kd)) => {
                let transport_mode = p.notify(NotifyType::UseTransportMode).is_some();
                info!(group = %group, "registered");
                self.events.push_back(Event::Registered {
                    group,
                    gsa,
                    kd,
                    transport_mode,
                    kwk: self.carrying_kwk(),
                });
            }
            _ => {
                let notify = p
                    .notifies()
                    .find(|n| n.is_error())
                    .map(|n| n.ty)
                    .unwrap_or(NotifyType::InvalidSyntax);
                info!(group = %group, notify = %notify, "registration refused");
                self.events
                    .push_back(Event::RegistrationRefused { group, notify });
            }
        }
    }

    // ---------------------------------------------------------------- plumbing

    /// Authenticates and decrypts a datagram of this IKE SA. `Ok(None)`: dropped (not
    /// authentic, undecodable before authentication) or a fragment of a message not yet
    /// complete. `Err`: the message authenticated but its payload chain is malformed, which
    /// a request must be told (RFC 7296 2.21.2, 2.21.3).
    fn open(&mut self, datagram: &[u8], response: bool) -> Result<Option<Opened>, DecodeError> {
        let Some(key) = self.ch.sk_in.as_ref() else {
            return Ok(None);
        };
        let reassembly = if response {
            &mut self.ch.reassembly_responses
        } else {
            &mut self.ch.reassembly_requests
        };
        match protect::open(key, datagram, reassembly) {
            Ok(o) => Ok(o),
            Err(UnprotectError::Crypto(e)) => {
                // RFC 7296 2.21.2: a message that fails integrity checks is dropped.
                debug!(error = %e, "dropping message that failed its integrity check");
                Ok(None)
            }
            Err(UnprotectError::Decode(e)) => {
                debug!(error = %e, "dropping undecodable protected message");
                Ok(None)
            }
            Err(UnprotectError::Content(e)) => Err(e),
        }
    }

    /// Answers a request with an error notify. INVALID_SYNTAX ends the IKE SA ("fatal in
    /// both peers", RFC 7296 2.21.3), and so does any error answering IKE_AUTH or
    /// GSA_AUTH before authentication (2.21.2: the IKE SA is not created). A replaced IKE
    /// SA being served is left to its own deletion.
    fn refuse_request(
        &mut self,
        header: &Header,
        notify: NotifyPayload,
        why: String,
        rng: &mut dyn Random,
    ) {
        let fatal =
            notify.ty == NotifyType::InvalidSyntax || matches!(self.state, State::AwaitingAuth);
        self.send_response(
            header.exchange,
            header.message_id,
            &[Payload::Notify(notify)],
            rng,
        );
        if fatal && !self.serving_retired {
            self.close(CloseReason::ProtocolError(why));
        }
    }

    /// A request that authenticated but does not parse or breaks the payload rules
    /// (RFC 7296 2.21.2, 2.21.3): rejected in its entirety with UNSUPPORTED_CRITICAL_PAYLOAD
    /// carrying the one-octet payload type (2.5, 3.10.1) or with INVALID_SYNTAX.
    fn refuse_malformed_request(&mut self, header: &Header, e: &DecodeError, rng: &mut dyn Random) {
        debug!(error = %e, exchange = %header.exchange, "malformed request");
        self.ch.peer_next_mid = header.message_id.wrapping_add(1);
        let notify = match e {
            DecodeError::UnsupportedCriticalPayload(ty) => {
                NotifyPayload::unsupported_critical_payload(*ty)
            }
            other => NotifyPayload::error(other.notify()),
        };
        self.refuse_request(header, notify, e.to_string(), rng);
    }

    fn fragment_size(&self, exchange: ExchangeType) -> Option<usize> {
        // RFC 7383 2.5: only once both sides announced support, never for IKE_SA_INIT.
        if exchange == ExchangeType::IkeSaInit || !self.peer_fragmentation {
            return None;
        }
        self.config.fragment_size
    }

    fn header(&self, exchange: ExchangeType, mid: u32, response: bool) -> Header {
        Header::new(
            self.ch.spi_i,
            self.ch.spi_r,
            exchange,
            Flags::new(self.ch.initiator, response),
            mid,
        )
    }

    fn send_request(
        &mut self,
        exchange: ExchangeType,
        purpose: Purpose,
        payloads: &[Payload],
        now: Instant,
        rng: &mut dyn Random,
    ) {
        let mid = self.ch.next_mid;
        let Some(key) = self.ch.sk_out.as_ref() else {
            return;
        };
        let header = self.header(exchange, mid, false);
        let intermediate = exchange == ExchangeType::IkeIntermediate;
        let packets = match protect::seal(key, rng, &header, payloads, self.fragment_size(exchange))
        {
            Ok(p) => p,
            Err(e) => {
                self.close(CloseReason::ProtocolError(e.to_string()));
                return;
            }
        };
        if intermediate {
            let (first, plain) = encode_inner(payloads);
            let a = self.int_auth_a(exchange, mid, false, first);
            if let Err(e) = self.absorb_int_auth(true, &a, &plain) {
                self.close(CloseReason::ProtocolError(e.to_string()));
                return;
            }
        }
        let (to, from) = (self.remote, self.local);
        let out = packets.iter().map(|p| Datagram::new(to, from, p.clone()));
        self.transmits.extend(out);
        self.ch.outstanding = Some(Outstanding {
            mid,
            purpose,
            packets,
            timer: RetransmitTimer::start(self.config.retransmit, now),
            command: None,
        });
    }

    /// Initiator: the responder's authentication failed. RFC 7296 2.21.2: "the
    /// notification MAY be returned in a separate INFORMATIONAL exchange", so that the
    /// GCKS, which admitted us already, learns why we are gone; then the SA closes.
    fn refuse_responder(&mut self, now: Instant, rng: &mut dyn Random) {
        self.send_request(
            ExchangeType::Informational,
            Purpose::Delete,
            &[Payload::Notify(NotifyPayload::error(
                NotifyType::AuthenticationFailed,
            ))],
            now,
            rng,
        );
        self.close(CloseReason::ResponderNotVerified);
    }

    fn send_response(
        &mut self,
        exchange: ExchangeType,
        mid: u32,
        payloads: &[Payload],
        rng: &mut dyn Random,
    ) {
        let Some(key) = self.ch.sk_out.as_ref() else {
            return;
        };
        let header = self.header(exchange, mid, true);
        match protect::seal(key, rng, &header, payloads, self.fragment_size(exchange)) {
            Ok(packets) => {
                let (to, from) = self.reply_path();
                let out = packets.iter().map(|p| Datagram::new(to, from, p.clone()));
                self.transmits.extend(out);
                self.ch.cached_response = Some((mid, packets));
            }
            Err(e) => warn!(error = %e, "could not protect a response"),
        }
    }

    fn resend_cached(&mut self, mid: u32) {
        if let Some((m, packets)) = &self.ch.cached_response
            && *m == mid
        {
            debug!(mid, "retransmitted request: resending the cached response");
            let (to, from) = self.reply_path();
            let out = packets.iter().map(|p| Datagram::new(to, from, p.clone()));
            self.transmits.extend(out);
        }
    }

    fn close(&mut self, reason: CloseReason) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.state = State::Closed;
        self.ch.outstanding = None;
        self.half_open_deadline = None;
        self.events.push_back(Event::Closed(reason));
    }
}

/// True when `datagram` is an SK message or the first SKF fragment (RFC 7383 2.6.1).
fn is_first_piece(datagram: &[u8]) -> bool {
    match crate::wire::message::encrypted_layout(datagram) {
        Ok(l) => match l.kind {
            crate::wire::message::EncryptedKind::Sk => true,
            crate::wire::message::EncryptedKind::Skf { number, .. } => number == 1,
        },
        Err(_) => false,
    }
}

fn registration_payloads(req: &RegistrationRequest) -> Vec<Payload> {
    let mut v = vec![Payload::IdG(req.group.clone())];
    if let Some(sag) = &req.sag {
        v.push(Payload::Sa(sag.clone()));
    }
    if let Some(n) = req.sender_ids {
        // RFC 9838 2.3.1: a GM that intends to send MUST include GROUP_SENDER.
        v.push(Payload::Notify(NotifyPayload::group_sender(n)));
    }
    v
}

fn registration_request(p: &[Payload]) -> Option<RegistrationRequest> {
    let group = p.iter().find_map(|x| match x {
        Payload::IdG(g) => Some(g.clone()),
        _ => None,
    })?;
    let sag = p.iter().find_map(|x| match x {
        Payload::Sa(s) => Some(s.clone()),
        _ => None,
    });
    let sender_ids = match p.notify(NotifyType::GroupSender) {
        Some(n) => Some(n.group_sender_count().ok()?),
        None => None,
    };
    Some(RegistrationRequest {
        group,
        sag,
        sender_ids,
    })
}

/// Picks the first of our suites (in our preference order) that one of the peer's IKE
/// proposals fully offers; returns that proposal's number and our suite.
fn choose_proposal(ours: &[IkeSuite], theirs: &SaPayload) -> Option<(u8, IkeSuite)> {
    for suite in ours {
        let wanted = suite.transforms();
        for p in theirs
            .proposals
            .iter()
            .filter(|p| p.protocol == ProtocolId::Ike)
        {
            if wanted.iter().all(|w| p.transforms.contains(w)) && addke_slots_match(suite, p) {
                return Some((p.num, suite.clone()));
            }
        }
    }
    None
}

/// An ADDKE slot the peer offers that our suite leaves empty must allow NONE (RFC 9370
/// 2.2.1), otherwise choosing the proposal without it would ignore a peer requirement.
fn addke_slots_match(suite: &IkeSuite, p: &Proposal) -> bool {
    (0..7u8).all(|i| {
        let ty = TransformType::from(TransformType::AddKe1.value() + i);
        let offered: Vec<u16> = p.transforms_of(ty).map(|t| t.id).collect();
        let ours = suite.addke.get(usize::from(i));
        match ours {
            Some(_) => true,
            None => offered.is_empty() || offered.contains(&0),
        }
    })
}

/// True when the suite the responder chose is one we offered (same transforms).
fn offered_covers(ours: &IkeSuite, chosen: &IkeSuite) -> bool {
    ours == chosen
}

fn nonzero_spi(rng: &mut dyn Random) -> [u8; 8] {
    loop {
        let spi: [u8; 8] = random_array(rng);
        if spi != [0; 8] {
            return spi;
        }
    }
}

fn random_nonce(rng: &mut dyn Random) -> Vec<u8> {
    random_array::<NONCE_LEN>(rng).to_vec()
}

/// How long a replaced IKE SA waits for the rekey initiator's Delete (RFC 7296 2.8)
/// before it is dropped anyway: longer than a default retransmission schedule (about
/// 165 s), so that a Delete retransmitted to the end still finds it.
const RETIRED_GRACE: std::time::Duration = std::time::Duration::from_secs(300);

/// A CREATE_CHILD_SA request that rekeys the IKE SA: its SA payload proposes protocol
/// IKE and there are no traffic selectors (RFC 7296 1.3.2, 2.18).
fn is_ike_rekey(p: &[Payload]) -> bool {
    let ike = matches!(p.find(PayloadType::Sa), Some(Payload::Sa(sa))
        if sa.proposals.first().is_some_and(|x| x.protocol == ProtocolId::Ike));
    ike && p.find(PayloadType::TsI).is_none() && p.find(PayloadType::TsR).is_none()
}

/// The suites we offer or accept in an IKE SA rekey: the configured ones without RFC
/// 9370 additional key exchanges (IKE_FOLLOWUP_KE is not implemented; the new SKEYSEED
/// still depends on the old SK_d, RFC 7296 2.18), without duplicates.
fn rekey_suites(ours: &[IkeSuite]) -> Vec<IkeSuite> {
    let mut v: Vec<IkeSuite> = Vec::new();
    for s in ours {
        let s = IkeSuite {
            addke: Vec::new(),
            ..s.clone()
        };
        if !v.contains(&s) {
            v.push(s);
        }
    }
    v
}

/// Responder: our first rekey suite one of the peer's IKE proposals fully offers, with
/// its proposal number and the peer's new SPI (8 octets, non-zero; RFC 7296 3.3.1). An
/// ADDKE slot the peer fills without NONE is refused (`addke_slots_match`).
fn choose_rekey_proposal(ours: &[IkeSuite], theirs: &SaPayload) -> Option<(u8, [u8; 8], IkeSuite)> {
    let usable = |p: &Proposal| -> Option<[u8; 8]> {
        let spi: [u8; 8] = p.spi.as_slice().try_into().ok()?;
        (spi != [0; 8]).then_some(spi)
    };
    for suite in rekey_suites(ours) {
        let wanted = suite.transforms();
        for p in theirs
            .proposals
            .iter()
            .filter(|p| p.protocol == ProtocolId::Ike)
        {
            if let Some(spi) = usable(p)
                && wanted.iter().all(|w| p.transforms.contains(w))
                && addke_slots_match(&suite, p)
            {
                return Some((p.num, spi, suite));
            }
        }
    }
    None
}
