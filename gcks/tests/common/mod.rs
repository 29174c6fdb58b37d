//! Fixtures shared by the gcks test binaries (each uses what it needs).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gikev2_member::AgentEvent;
use gikev2_member::config::MembershipConfig;
use gikev2_policy::{
    DEFAULT_MAX_PACKET_RATE, EspMode, GroupId, Identity, NewCredential, Role, Selector, SnPolicy,
    Store, TekPolicySpec, TekProtocol,
};
use gikev2_proto::crypto::{IkeSuite, SecretBytes};
use gikev2_proto::ike::{IkeConfig, LocalAuth, PeerAuth, SinglePeer};
use gikev2_proto::registry::{EncrId, KeId, KwaId, PrfId};
use gikev2_proto::wire::{IdPayload, Transform};

/// How long a test waits for an event before it fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// The IKE SA suite of these tests: AES-GCM-256, HMAC-SHA2-256, X25519, KW-256.
pub fn suite() -> IkeSuite {
    IkeSuite::from_transforms(&[
        Transform::encr(EncrId::AesGcm16, Some(256)),
        Transform::prf(PrfId::HmacSha2_256),
        Transform::ke(KeId::Curve25519),
        Transform::kwa(KwaId::Kw5649_256),
    ])
    .unwrap()
}

/// The next event of an agent that `pick` takes, within [`WAIT`].
pub async fn next_event<T>(
    events: &mut tokio::sync::mpsc::Receiver<AgentEvent>,
    mut pick: impl FnMut(AgentEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Some(e) => {
                    if let Some(t) = pick(e) {
                        return t;
                    }
                }
                None => panic!("agent stopped"),
            }
        }
    })
    .await
    .expect("the event comes")
}

/// An ESP AES-GCM-256 TEK policy for UDP to the multicast `dst` port 5004.
pub fn aes_gcm_256_tek(dst: &str, sn: SnPolicy, mode: EspMode) -> TekPolicySpec {
    TekPolicySpec {
        protocol: TekProtocol::Esp,
        ip_protocol: 17,
        src: Selector::any(false),
        dst: Selector::host_port(dst.parse().unwrap(), 5004),
        encr: EncrId::AesGcm16,
        encr_key_bits: Some(256),
        integ: None,
        sn,
        mode,
        max_packet_rate: DEFAULT_MAX_PACKET_RATE,
    }
}

/// Members `fqdn`, each with its FQDN as its PSK, authorized in `group` with their role.
pub async fn add_psk_members(store: &Store, group: GroupId, members: &[(&str, Role)]) {
    for &(id, role) in members {
        let m = store
            .add_member(
                &Identity::fqdn(id),
                None,
                &NewCredential::Psk(SecretBytes::from_slice(id.as_bytes())),
                0,
            )
            .await
            .unwrap();
        store.authorize(m, group, role, 0).await.unwrap();
    }
}

/// A receiver's membership of group "g" (IDg key-id "g") as `id`, its FQDN its PSK.
pub fn psk_membership(id: &str, gcks: SocketAddr) -> MembershipConfig {
    MembershipConfig {
        group: "g".into(),
        group_id: IdPayload::key_id(b"g".to_vec()),
        gcks,
        ike: IkeConfig::new(
            vec![suite()],
            IdPayload::fqdn(id).unwrap(),
            LocalAuth::Psk(SecretBytes::from_slice(id.as_bytes())),
            // With PSKs the GCKS answers with the member's own key (RFC 7296 2.15).
            Arc::new(SinglePeer {
                id: None,
                auth: PeerAuth::Psk(SecretBytes::from_slice(id.as_bytes())),
            }),
        ),
        sender_ids: None,
        receive: false,
        auth_kind: "psk",
    }
}
