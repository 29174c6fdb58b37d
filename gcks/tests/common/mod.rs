//! Fixtures shared by the gcks test binaries (each uses what it needs).
#![allow(dead_code)]

use std::time::Duration;

use gikev2_member::AgentEvent;
use gikev2_proto::crypto::IkeSuite;
use gikev2_proto::registry::{EncrId, KeId, KwaId, PrfId};
use gikev2_proto::wire::Transform;

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
