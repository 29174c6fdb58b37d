//! Configuration of an IKE SA: proposals, identities, credentials, timers.

use std::sync::Arc;
use std::time::Duration;

use crate::crypto::sign::{PublicKey, SignatureScheme, SigningKey};
use crate::crypto::{IkeSuite, SecretBytes};
use crate::registry::HashAlgorithm;
use crate::wire::cert::CertPayload;
use crate::wire::id::IdPayload;

use super::retransmit::RetransmitPolicy;

/// How we authenticate ourselves (RFC 7296 2.15; RFC 7427).
#[derive(Clone)]
pub enum LocalAuth {
    /// Shared Key Message Integrity Code (AUTH method 2). A responder answers each peer
    /// with the PSK its [`PeerAuthResolver`] found for that peer (the pair's shared secret);
    /// this key is used when the peer authenticated otherwise, and by initiators.
    Psk(SecretBytes),
    /// Digital Signature (AUTH method 14) with this key; `certs` are DER certificates sent
    /// in CERT payloads, end entity first (none for raw public keys known to the peer).
    Signature {
        key: Arc<SigningKey>,
        certs: Vec<Vec<u8>>,
    },
}

impl core::fmt::Debug for LocalAuth {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Psk(_) => f.write_str("LocalAuth::Psk(..)"),
            Self::Signature { key, certs } => f
                .debug_struct("LocalAuth::Signature")
                .field("scheme", &key.scheme())
                .field("certs", &certs.len())
                .finish(),
        }
    }
}

/// How the peer must authenticate, once its identity is known.
#[derive(Clone)]
pub enum PeerAuth {
    /// The shared key for this peer (AUTH method 2).
    Psk(SecretBytes),
    /// A public key (raw, or taken from a certificate the resolver validated), with the
    /// signature schemes local policy accepts from it.
    PublicKey {
        key: PublicKey,
        schemes: Vec<SignatureScheme>,
    },
}

impl core::fmt::Debug for PeerAuth {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Psk(_) => f.write_str("PeerAuth::Psk(..)"),
            Self::PublicKey { key, schemes } => f
                .debug_struct("PeerAuth::PublicKey")
                .field("key", key)
                .field("schemes", schemes)
                .finish(),
        }
    }
}

/// Finds the credentials a peer must prove, given the identity and certificates it sent.
/// Returning `None` refuses the peer (AUTHENTICATION_FAILED, RFC 7296 2.21.2).
///
/// A GCKS implements this over its policy store's in-memory cache; certificate chains are
/// validated here too, so that the IKE SA only ever sees a verified public key.
pub trait PeerAuthResolver: Send + Sync {
    fn resolve(&self, peer_id: &IdPayload, certs: &[CertPayload]) -> Option<PeerAuth>;
}

/// A resolver that accepts exactly one identity with one credential (tests, `gm join`).
#[derive(Debug, Clone)]
pub struct SinglePeer {
    /// The identity the peer must present; `None` accepts any identity.
    pub id: Option<IdPayload>,
    pub auth: PeerAuth,
}

impl PeerAuthResolver for SinglePeer {
    fn resolve(&self, peer_id: &IdPayload, _certs: &[CertPayload]) -> Option<PeerAuth> {
        match &self.id {
            Some(id) if id != peer_id => None,
            _ => Some(self.auth.clone()),
        }
    }
}

/// The type octet of a PPK_ID (RFC 8784 5.1): PPK_ID_FIXED, a fixed octet string mapped to
/// one PPK. We send and accept only this type; PPK_ID_OPAQUE (1) has no format to look up.
pub const PPK_ID_FIXED: u8 = 2;

/// An initiator's post-quantum preshared key for its responder (RFC 8784 2: the tuple
/// Peer, PPK, PPK_ID, mandatory_or_not). `Debug` never prints the secret.
#[derive(Clone)]
pub struct LocalPpk {
    /// The configured PPK_ID, without the type octet: the PPK_IDENTITY notify carries
    /// `PPK_ID_FIXED | id` (RFC 8784 5.1), as strongSwan's `ppk_id` does.
    pub id: Vec<u8>,
    /// The PPK itself (RFC 8784 6: at least 256 bits of entropy).
    pub secret: SecretBytes,
    /// mandatory_or_not (RFC 8784 2): when set, the IKE SA fails rather than continue
    /// without the PPK, and no NO_PPK_AUTH is sent.
    pub mandatory: bool,
}

impl core::fmt::Debug for LocalPpk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LocalPpk")
            .field("id", &String::from_utf8_lossy(&self.id))
            .field("secret", &self.secret)
            .field("mandatory", &self.mandatory)
            .finish()
    }
}

/// A responder's PPKs (RFC 8784 3, Table 1). Having one makes the responder answer USE_PPK.
pub trait PpkResolver: Send + Sync {
    /// The PPK with this PPK_ID (type octet removed) configured for `peer_id`, or `None`
    /// when the PPK_ID is unknown or not for this identity (RFC 8784 3).
    fn ppk(&self, peer_id: &IdPayload, ppk_id: &[u8]) -> Option<SecretBytes>;
    /// Whether a PPK is mandatory for `peer_id` ("PPK is Mandatory" in Table 1).
    fn ppk_required(&self, peer_id: &IdPayload) -> bool;
}

/// A resolver with one PPK for every peer (tests, small deployments).
#[derive(Clone)]
pub struct SinglePpk {
    /// The PPK_ID without its type octet.
    pub id: Vec<u8>,
    pub secret: SecretBytes,
    pub required: bool,
}

impl core::fmt::Debug for SinglePpk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SinglePpk")
            .field("id", &String::from_utf8_lossy(&self.id))
            .field("secret", &self.secret)
            .field("required", &self.required)
            .finish()
    }
}

impl PpkResolver for SinglePpk {
    fn ppk(&self, _peer_id: &IdPayload, ppk_id: &[u8]) -> Option<SecretBytes> {
        (ppk_id == self.id.as_slice()).then(|| self.secret.clone())
    }

    fn ppk_required(&self, _peer_id: &IdPayload) -> bool {
        self.required
    }
}

/// Everything an IKE SA needs besides bytes, time and randomness.
#[derive(Clone)]
pub struct IkeConfig {
    /// Proposals in preference order; each becomes one SA proposal (RFC 7296 3.3).
    pub proposals: Vec<IkeSuite>,
    pub local_id: IdPayload,
    pub local_auth: LocalAuth,
    pub peer_auth: Arc<dyn PeerAuthResolver>,
    /// The identity we expect the responder to use (sent as IDr by an initiator).
    pub remote_id: Option<IdPayload>,
    pub retransmit: RetransmitPolicy,
    /// Largest IKE message we send before fragmenting (RFC 7383 2.5.1); `None` disables
    /// IKE fragmentation (the notify is not sent).
    pub fragment_size: Option<usize>,
    /// Offer and accept IKE_AUTH without a Child SA (RFC 6023).
    pub childless: bool,
    /// Hash algorithms announced in SIGNATURE_HASH_ALGORITHMS (RFC 7427 4).
    pub signature_hashes: Vec<HashAlgorithm>,
    /// How long a responder waits for the authentication exchange of a half-open SA.
    pub half_open_timeout: Duration,
    /// Initiator: the PPK to mix into SK_d, SK_pi and SK_pr (RFC 8784 3).
    pub ppk: Option<LocalPpk>,
    /// Responder: where PPKs are found by PPK_ID (RFC 8784 3); `None` ignores USE_PPK.
    pub ppk_resolver: Option<Arc<dyn PpkResolver>>,
    /// Rekey the IKE SA with CREATE_CHILD_SA this long after it was established or last
    /// rekeyed (RFC 7296 2.8, 1.3.2), less a random part of `rekey_jitter` so that both
    /// ends do not fire together; `None` never initiates a rekey (the peer still may).
    pub rekey_after: Option<Duration>,
    /// Largest random amount taken off `rekey_after` (strongSwan's `rand_time`).
    pub rekey_jitter: Duration,
    /// Hard limit: the IKE SA is deleted this long after it was established or last
    /// rekeyed, if no rekey replaced it before (strongSwan's `rekey_time + over_time`).
    pub lifetime: Option<Duration>,
}

impl core::fmt::Debug for IkeConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IkeConfig")
            .field("proposals", &self.proposals)
            .field("local_id", &self.local_id)
            .field("local_auth", &self.local_auth)
            .field("remote_id", &self.remote_id)
            .field("fragment_size", &self.fragment_size)
            .field("childless", &self.childless)
            .field("ppk", &self.ppk)
            .field("ppk_resolver", &self.ppk_resolver.is_some())
            .field("rekey_after", &self.rekey_after)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl IkeConfig {
    /// A configuration with the defaults operators expect (strongSwan-like timers,
    /// fragmentation at 1280 octets, SHA2-256/384/512 and Identity announced).
    pub fn new(
        proposals: Vec<IkeSuite>,
        local_id: IdPayload,
        local_auth: LocalAuth,
        peer_auth: Arc<dyn PeerAuthResolver>,
    ) -> Self {
        Self {
            proposals,
            local_id,
            local_auth,
            peer_auth,
            remote_id: None,
            retransmit: RetransmitPolicy::default(),
            fragment_size: Some(1280),
            childless: true,
            signature_hashes: vec![
                HashAlgorithm::Sha2_256,
                HashAlgorithm::Sha2_384,
                HashAlgorithm::Sha2_512,
                HashAlgorithm::Identity,
            ],
            half_open_timeout: Duration::from_secs(30),
            ppk: None,
            ppk_resolver: None,
            rekey_after: IkeLifetimes::DEFAULT.rekey_after,
            rekey_jitter: IkeLifetimes::DEFAULT.rekey_jitter,
            lifetime: IkeLifetimes::DEFAULT.lifetime,
        }
    }

    /// Sets the IKE SA's rekey time, jitter and hard lifetime.
    pub fn set_lifetimes(&mut self, l: IkeLifetimes) {
        (self.rekey_after, self.rekey_jitter, self.lifetime) =
            (l.rekey_after, l.rekey_jitter, l.lifetime);
    }
}

/// When an IKE SA is rekeyed and when it ends without a rekey (RFC 7296 2.8), as
/// strongSwan sets them: `rekey_time` (4 h), `rand_time` and `over_time` (10 % of the
/// rekey time each), the hard limit being `rekey_time + over_time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IkeLifetimes {
    /// [`IkeConfig::rekey_after`]: `None` never starts a rekey.
    pub rekey_after: Option<Duration>,
    /// [`IkeConfig::rekey_jitter`].
    pub rekey_jitter: Duration,
    /// [`IkeConfig::lifetime`]: `None` has no hard limit.
    pub lifetime: Option<Duration>,
}

/// An operator's lifetimes that contradict each other; [`LifetimeError::field`] names the
/// one to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifetimeError {
    #[error("{jitter} s must be less than the rekey time ({rekey} s)")]
    JitterNotBelowRekey { jitter: u64, rekey: u64 },
    #[error(
        "{lifetime} s must be more than the rekey time ({rekey} s), or the IKE SA is deleted before it is rekeyed"
    )]
    LifetimeNotAboveRekey { lifetime: u64, rekey: u64 },
}

impl LifetimeError {
    /// `"rekey_jitter"` or `"lifetime"`.
    pub fn field(&self) -> &'static str {
        match self {
            Self::JitterNotBelowRekey { .. } => "rekey_jitter",
            Self::LifetimeNotAboveRekey { .. } => "lifetime",
        }
    }
}

impl IkeLifetimes {
    /// 4 h less up to 24 min; deleted at 4 h 24 min.
    pub const DEFAULT: Self = Self {
        rekey_after: Some(Duration::from_secs(4 * 3600)),
        rekey_jitter: Duration::from_secs(24 * 60),
        lifetime: Some(Duration::from_secs(4 * 3600 + 24 * 60)),
    };

    /// From seconds as an operator gives them, each optional: the rekey time defaults to
    /// 4 h (0: never), the jitter to a tenth of the rekey time, the hard lifetime to the
    /// rekey time plus a tenth (0: none).
    pub fn from_secs(
        rekey: Option<u64>,
        jitter: Option<u64>,
        lifetime: Option<u64>,
    ) -> Result<Self, LifetimeError> {
        let rekey = rekey.unwrap_or(4 * 3600);
        let jitter = jitter.unwrap_or(rekey / 10);
        let lifetime = lifetime.unwrap_or(rekey + rekey / 10);
        if rekey > 0 && jitter >= rekey {
            return Err(LifetimeError::JitterNotBelowRekey { jitter, rekey });
        }
        if rekey > 0 && lifetime > 0 && lifetime <= rekey {
            return Err(LifetimeError::LifetimeNotAboveRekey { lifetime, rekey });
        }
        let secs = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        Ok(Self {
            rekey_after: secs(rekey),
            rekey_jitter: Duration::from_secs(jitter),
            lifetime: secs(lifetime),
        })
    }
}

#[cfg(test)]
mod lifetime_tests {
    use super::*;

    #[test]
    fn lifetimes_default_like_strongswan_and_refuse_contradictions() {
        let s = Duration::from_secs;
        assert_eq!(
            IkeLifetimes::from_secs(None, None, None),
            Ok(IkeLifetimes::DEFAULT)
        );
        // A tenth of the rekey time for the jitter and the margin to the hard limit.
        assert_eq!(
            IkeLifetimes::from_secs(Some(600), None, None),
            Ok(IkeLifetimes {
                rekey_after: Some(s(600)),
                rekey_jitter: s(60),
                lifetime: Some(s(660)),
            })
        );
        // 0: never rekey (and then no hard limit unless given), or no hard limit.
        assert_eq!(
            IkeLifetimes::from_secs(Some(0), None, None),
            Ok(IkeLifetimes {
                rekey_after: None,
                rekey_jitter: s(0),
                lifetime: None,
            })
        );
        assert_eq!(
            IkeLifetimes::from_secs(Some(600), Some(0), Some(0)).map(|l| l.lifetime),
            Ok(None)
        );
        let e = IkeLifetimes::from_secs(Some(600), Some(600), None).unwrap_err();
        assert_eq!(e.field(), "rekey_jitter");
        let e = IkeLifetimes::from_secs(Some(3600), None, Some(3000)).unwrap_err();
        assert_eq!(e.field(), "lifetime");
        assert_eq!(
            e.to_string(),
            "3000 s must be more than the rekey time (3600 s), or the IKE SA is deleted \
             before it is rekeyed"
        );
    }
}
