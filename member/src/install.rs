//! From a Data-Security SA the member read ([`Tek`]) to what the shared ESP engine installs
//! ([`SaConfig`]), and the seam where the data plane attaches.
//!
//! - Directions (RFC 9838 2.3.3): the [`Tek`] already says inbound and/or outbound; each
//!   direction is one engine record.
//! - SAD key (RFC 4301 4.1, RFC 5374 5.2): SPI + group address when the destination is one
//!   address, + source when the source is one address too; the SPI alone otherwise.
//! - Mode: transport with USE_TRANSPORT_MODE (RFC 9838 4.7.1), else tunnel mode with address
//!   preservation (RFC 5374 3.1), the usual group case.
//! - Keys (RFC 9838 3.4): encryption key and salt, then the integrity key; copied into the
//!   engine's zeroizing `KeyMaterial`.
//! - Sender-IDs (RFC 9838 2.5.2, RFC 6054): outbound counter-mode SAs carry the member's
//!   Sender-IDs in the top GWP_SENDER_ID_BITS of the IV. Inbound counter-mode SAs of a
//!   group with Sender-ID bits keep one replay window per Sender-ID (RFC 9838 2.6 leaves
//!   replay protection to local policy; Sender-IDs are authenticated as part of the IV).
//! - Lifetimes (RFC 4301 4.4.2.1): hard = GSA_KEY_LIFETIME, soft a little earlier (the
//!   agent picks a random fraction so that members do not all re-register at once).
//! - ATD/DTD (RFC 9838 4.4.3.1.1): an outbound SA serves its policy ATD seconds after
//!   install; DTD is handled by the agent's delayed removal.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use gikev2_esp::{
    Direction, Engine, EspAlgorithm, InstallError, KeyMaterial, Lifetimes, Limits, Mode, PolicyId,
    ReplayPolicy, SaConfig, SadKey, Selector, SenderIds, SenderKey, SnTransform, Tunnel,
};
use gikev2_proto::group::Tek;
use gikev2_proto::registry::{NotifyType, ProtocolId};
use gikev2_proto::wire::TrafficSelector;
use zeroize::Zeroizing;

/// Per-sender replay windows of inbound counter-mode SAs.
const REPLAY_WINDOW: u32 = 1024;
/// Most senders tracked per inbound SA.
const MAX_SENDERS: usize = 256;

/// Why a TEK cannot be installed in this engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The engine implements ESP only.
    #[error("{0} Data-Security SAs are not supported (ESP only)")]
    Protocol(ProtocolId),
    /// The engine refused the transforms, keys or Sender-IDs.
    #[error("ESP SA {spi:#010x}: {source}")]
    Engine { spi: u32, source: InstallError },
    /// Traffic selectors the SPD cannot express.
    #[error("ESP SA {spi:#010x}: traffic selectors: {reason}")]
    Selectors { spi: u32, reason: String },
}

impl PlanError {
    /// What the member tells the GCKS (RFC 9838 2.3.2 Figure 8): NO_PROPOSAL_CHOSEN when
    /// the policy names something this member cannot run, REGISTRATION_FAILED otherwise.
    pub fn notify(&self) -> NotifyType {
        match self {
            Self::Protocol(_) | Self::Selectors { .. } => NotifyType::NoProposalChosen,
            Self::Engine { source, .. } => match source {
                InstallError::UnsupportedAlgorithm { .. }
                | InstallError::UnsupportedSn(_)
                | InstallError::ImplicitIvNeedsSequential
                | InstallError::SenderIdReplayNeedsIv
                | InstallError::SenderIdBits(_)
                | InstallError::MixedFamilies
                | InstallError::Cipher(_) => NotifyType::NoProposalChosen,
                _ => NotifyType::RegistrationFailed,
            },
        }
    }

    /// A Sender-ID that does not fit GWP_SENDER_ID_BITS is fatal: re-register (2.5.2).
    pub fn must_reregister(&self) -> bool {
        matches!(
            self,
            Self::Engine {
                source: InstallError::SenderIdTooLarge { .. } | InstallError::SenderIdCount,
                ..
            }
        )
    }
}

/// Group-wide parameters that shape every TEK's engine records.
#[derive(Debug, Clone)]
pub struct TekContext {
    /// Installer token the engine echoes in lifetime events.
    pub owner: u64,
    /// USE_TRANSPORT_MODE was received (RFC 9838 4.7.1).
    pub transport_mode: bool,
    pub sender_ids: Vec<u32>,
    pub sender_id_bits: Option<u16>,
    pub atd: Duration,
    pub dtd: Duration,
}

/// The engine's name of the TEK's transforms.
pub fn esp_algorithm(tek: &Tek) -> Result<EspAlgorithm, PlanError> {
    if tek.protocol != ProtocolId::Esp {
        return Err(PlanError::Protocol(tek.protocol));
    }
    let engine = |source| PlanError::Engine {
        spi: tek.spi,
        source,
    };
    let encr = tek.encr.ok_or(engine(InstallError::UnsupportedAlgorithm {
        encr: 0,
        integ: tek.integ.map_or(0, |i| i.id().value()),
    }))?;
    EspAlgorithm::from_transforms(
        encr.id().value(),
        encr.key_bits(),
        tek.integ.map_or(0, |i| i.id().value()),
    )
    .map_err(engine)
}

fn single(ts: &TrafficSelector) -> Option<IpAddr> {
    match ts {
        TrafficSelector::Range { start, end, .. } if start == end => Some(*start),
        _ => None,
    }
}

/// The SAD key of an inbound SA (RFC 5374 5.2 item 3aa).
pub fn sad_key(tek: &Tek) -> SadKey {
    match (single(&tek.src), single(&tek.dst)) {
        (Some(src), Some(dst)) if !src.is_unspecified() => SadKey::SpiDstSrc {
            spi: tek.spi,
            dst,
            src,
        },
        (_, Some(dst)) => SadKey::SpiDst { spi: tek.spi, dst },
        _ => SadKey::Spi(tek.spi),
    }
}

/// The SPD/inbound selector of a TEK (RFC 4301 4.4.1).
pub fn selector(tek: &Tek) -> Result<Selector, PlanError> {
    Selector::from_gsa_ts(&tek.src, &tek.dst).map_err(|e| PlanError::Selectors {
        spi: tek.spi,
        reason: e.to_string(),
    })
}

/// The engine records of one TEK: one per direction it is installed in. `policy` is the
/// SPD policy an outbound SA serves; `soft` the soft lifetime in seconds.
pub fn sa_configs(
    tek: &Tek,
    ctx: &TekContext,
    policy: Option<PolicyId>,
    soft: Option<u64>,
) -> Result<Vec<SaConfig>, PlanError> {
    let algorithm = esp_algorithm(tek)?;
    let engine = |source| PlanError::Engine {
        spi: tek.spi,
        source,
    };
    let sn = SnTransform::from_id(tek.sn.value()).map_err(engine)?;
    let sel = selector(tek)?;
    let v6 = match &tek.dst {
        TrafficSelector::Range { start, .. } => start.is_ipv6(),
        TrafficSelector::Unknown { .. } => false,
    };
    let mode = if ctx.transport_mode {
        Mode::Transport
    } else {
        Mode::Tunnel(Tunnel::preserving(v6))
    };
    let mut keymat = Zeroizing::new(Vec::with_capacity(
        tek.keys.encr.len() + tek.keys.integ.len(),
    ));
    keymat.extend_from_slice(tek.keys.encr.as_bytes());
    keymat.extend_from_slice(tek.keys.integ.as_bytes());
    let lifetimes = Lifetimes {
        soft: Limits {
            seconds: soft,
            ..Limits::default()
        },
        hard: Limits {
            seconds: tek.lifetime.map(u64::from),
            ..Limits::default()
        },
    };
    let bits = ctx
        .sender_id_bits
        .map(|b| u8::try_from(b).map_err(|_| engine(InstallError::SenderIdBits(u8::MAX))))
        .transpose()?;
    let counter_iv = algorithm.counter_mode() && !algorithm.implicit_iv();
    let mut out = Vec::new();
    let base = |direction| {
        let mut c = SaConfig::new(
            tek.spi,
            direction,
            sad_key(tek),
            mode,
            algorithm,
            KeyMaterial::new(keymat.to_vec()),
            sn,
        );
        c.lifetimes = lifetimes;
        c.atd = ctx.atd;
        c.dtd = ctx.dtd;
        c.owner = ctx.owner;
        c
    };
    if tek.inbound {
        let mut c = base(Direction::Inbound);
        c.inbound_selectors = vec![sel];
        if let (true, Some(b)) = (counter_iv, bits.filter(|b| *b > 0)) {
            c.sender_ids = Some(SenderIds {
                bits: b,
                ids: Vec::new(),
            });
            c.replay = ReplayPolicy::PerSender {
                window: REPLAY_WINDOW,
                key: SenderKey::SenderId,
                max_senders: MAX_SENDERS,
            };
        }
        out.push(c);
    }
    if tek.outbound {
        let mut c = base(Direction::Outbound);
        c.policy = policy;
        if tek.counter_mode && !ctx.sender_ids.is_empty() {
            c.sender_ids = Some(SenderIds {
                bits: bits.unwrap_or(0),
                ids: ctx.sender_ids.clone(),
            });
        }
        out.push(c);
    }
    Ok(out)
}

/// A TEK as the data plane sees it: where its traffic goes, never its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TekInfo {
    pub group: String,
    pub spi: u32,
    pub direction: Direction,
    pub src: TrafficSelector,
    pub dst: TrafficSelector,
    /// The SPD policy of an outbound SA.
    pub policy: Option<PolicyId>,
}

/// Where the ESP data plane (TUN, raw ESP sockets, multicast joins for the TEK groups;
/// built inside `gikev2-esp`) attaches to the agent.
///
/// The agent installs and deletes SAs in the shared [`Engine`]; the data plane seals and
/// opens packets with the same engine (its `classify`/`seal`/`open` path) and learns from
/// these calls which multicast groups to join for inbound ESP and which SPD policies now
/// protect traffic. Calls come from the agent task; implementations must not block.
pub trait DataPlane: Send + Sync {
    /// The engine that the agent installs into; called once when the agent starts.
    fn attach(&self, _engine: Arc<Engine>) {}
    /// An SA was installed.
    fn sa_installed(&self, _tek: &TekInfo) {}
    /// An SA was removed from the engine (deleted after DTD, expired, or the group left).
    fn sa_removed(&self, _tek: &TekInfo) {}
    /// How many encryption modules seal with the group's TEKs in the outbound direction,
    /// when the data plane knows; a sender asks for exactly that many Sender-IDs (RFC
    /// 9838 2.5.1). `None`: the SAs go to something else (the operator says how many).
    fn encryption_modules(&self) -> Option<u32> {
        None
    }
}

/// No data plane: SAs live in the engine only (tests, and until the TUN data plane lands).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoDataPlane;

impl DataPlane for NoDataPlane {}

#[cfg(test)]
mod tests {
    use super::*;
    use gikev2_proto::crypto::{DataSaKeys, EncrAlg};
    use gikev2_proto::registry::SnId;

    fn tek(encr: EncrAlg, sn: SnId, inbound: bool, outbound: bool) -> Tek {
        let km = vec![7u8; encr.keymat_len()];
        Tek {
            protocol: ProtocolId::Esp,
            spi: 0x1234,
            src: TrafficSelector::any(false),
            dst: TrafficSelector::single("239.1.2.3".parse().unwrap(), 17, Some(5000)),
            encr: Some(encr),
            integ: None,
            sn,
            keys: DataSaKeys::split(Some(encr), None, &km).unwrap(),
            lifetime: Some(100),
            next_spis: Vec::new(),
            counter_mode: true,
            inbound,
            outbound,
        }
    }

    fn ctx() -> TekContext {
        TekContext {
            owner: 9,
            transport_mode: false,
            sender_ids: vec![3],
            sender_id_bits: Some(8),
            atd: Duration::from_secs(2),
            dtd: Duration::from_secs(4),
        }
    }

    #[test]
    fn directions_keys_and_sender_ids() {
        let t = tek(
            EncrAlg::AesGcm16 { key_len: 32 },
            SnId::Unspecified32,
            true,
            true,
        );
        let c = sa_configs(&t, &ctx(), Some(PolicyId(5)), Some(90)).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].direction, Direction::Inbound);
        assert_eq!(
            c[0].lookup,
            SadKey::SpiDst {
                spi: 0x1234,
                dst: "239.1.2.3".parse().unwrap()
            }
        );
        assert!(matches!(
            c[0].replay,
            ReplayPolicy::PerSender {
                key: SenderKey::SenderId,
                ..
            }
        ));
        assert_eq!(c[1].direction, Direction::Outbound);
        assert_eq!(c[1].policy, Some(PolicyId(5)));
        assert_eq!(c[1].sender_ids.as_ref().unwrap().ids, vec![3]);
        assert_eq!(c[1].keys.len(), 36);
        assert_eq!(c[1].lifetimes.hard.seconds, Some(100));
        assert_eq!(c[1].lifetimes.soft.seconds, Some(90));
        assert_eq!(c[1].owner, 9);
        // Keys never show in Debug.
        assert!(!format!("{:?}", c[1]).contains("7, 7, 7"));
        // The engine accepts both.
        let e = Engine::default();
        for cfg in c {
            e.install(cfg, std::time::Instant::now()).unwrap();
        }
        assert_eq!(e.sa_count(), 2);
    }

    #[test]
    fn unsupported_transforms_map_to_no_proposal_chosen() {
        let t = tek(EncrAlg::AesCtr { key_len: 32 }, SnId::Seq32, true, false);
        let e = sa_configs(&t, &ctx(), None, None).unwrap_err();
        assert_eq!(e.notify(), NotifyType::NoProposalChosen);
        let mut t = tek(EncrAlg::AesGcm16 { key_len: 16 }, SnId::Seq32, true, false);
        t.protocol = ProtocolId::Ah;
        assert_eq!(
            sa_configs(&t, &ctx(), None, None).unwrap_err().notify(),
            NotifyType::NoProposalChosen
        );
    }
}
