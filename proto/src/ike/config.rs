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
        }
    }
}
