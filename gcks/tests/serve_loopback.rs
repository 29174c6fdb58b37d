//! `Server` over real UDP on loopback: members register on the IKE port and on the NAT-T
//! port (non-ESP marker framing, RFC 3948 2.2), and all get the same group keys.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use gikev2_gcks::{Registrar, RegistrationContext, ServeConfig, Server};
use gikev2_member::{JoinError, join};
use gikev2_proto::crypto::{IkeSuite, SecretBytes};
use gikev2_proto::ike::{
    Decision, EndpointConfig, IkeConfig, LocalAuth, PeerAuth, RegistrationRequest, SinglePeer,
};
use gikev2_proto::registry::{EncrId, KeId, KwaId, NotifyType, PrfId, SnId};
use gikev2_proto::wire::gsa::{GsaPayload, GsaPolicy, GwPolicy};
use gikev2_proto::wire::id::IdPayload;
use gikev2_proto::wire::kd::{GroupKeyBag, KdPayload, MemberKeyBag, WrappedKey};
use gikev2_proto::wire::{TrafficSelector, Transform};

const KEYMAT: [u8; 36] = [0x5a; 36];

fn suite() -> IkeSuite {
    IkeSuite::from_transforms(&[
        Transform::encr(EncrId::AesGcm16, Some(256)),
        Transform::prf(PrfId::HmacSha2_256),
        Transform::ke(KeId::Curve25519),
        Transform::kwa(KwaId::Kw5649_256),
    ])
    .unwrap()
}

fn config(id: &str) -> IkeConfig {
    let k = SecretBytes::from_slice(b"loopback psk");
    IkeConfig::new(
        vec![suite()],
        IdPayload::fqdn(id).unwrap(),
        LocalAuth::Psk(k.clone()),
        Arc::new(SinglePeer {
            id: None,
            auth: PeerAuth::Psk(k),
        }),
    )
}

/// Admits members of "g" with one TEK; hands out Sender-IDs from a counter; refuses others.
struct Fixed {
    next_sender: AtomicU32,
}

impl Registrar for Fixed {
    async fn decide(&self, ctx: RegistrationContext) -> Decision {
        if ctx.request.group.data != b"g" {
            return Decision::Refuse(NotifyType::InvalidGroupId);
        }
        let gsa = GsaPayload::new()
            .with_gsa(
                GsaPolicy::esp(
                    0x100,
                    TrafficSelector::any(false),
                    TrafficSelector::any(false),
                )
                .with_transform(Transform::encr(EncrId::AesGcm16, Some(256)))
                .with_transform(Transform::sn(SnId::Unspecified32)),
            )
            .with_gw(GwPolicy::new().with_sender_id_bits(8));
        let mut kd = KdPayload::new().with(GroupKeyBag::esp(0x100).with_sa_key(WrappedKey::new(
            0,
            0,
            ctx.kwk.wrap(&KEYMAT).unwrap(),
        )));
        if ctx.request.sender_ids.is_some() {
            kd = kd.with(
                MemberKeyBag::new().with_sender_id(self.next_sender.fetch_add(1, Ordering::SeqCst)),
            );
        }
        Decision::Accept {
            gsa,
            kd,
            transport_mode: false,
        }
    }
}

/// Registers one member; returns its event-equivalent outcome and the unwrapped TEK keys.
async fn member(
    gcks: SocketAddr,
    group: &[u8],
    sender: bool,
    nat_t: bool,
) -> Result<(KdPayload, Vec<u8>), JoinError> {
    let request = RegistrationRequest {
        group: IdPayload::key_id(group.to_vec()),
        sag: None,
        sender_ids: sender.then_some(1),
    };
    let j = join(
        config("member.test"),
        gcks,
        request,
        nat_t,
        Duration::from_secs(10),
    )
    .await?;
    let keys = j
        .kwk
        .unwrap(&j.kd.group_bags().next().unwrap().sa_keys[0].encrypted)
        .unwrap();
    Ok((j.kd, keys.as_bytes().to_vec()))
}

#[tokio::test(flavor = "current_thread")]
async fn members_register_over_udp_and_nat_t_port_with_identical_keys() {
    let listen = vec![
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.31:4500".parse().unwrap(),
    ];
    let cfg = ServeConfig {
        listen,
        endpoint: EndpointConfig::default(),
        init_rate_per_source: 50,
        ike_idle_close: None,
    };
    let server = Server::bind(
        config("gcks.test"),
        cfg,
        Fixed {
            next_sender: AtomicU32::new(1),
        },
    )
    .unwrap();
    let addrs = server.local_addrs();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));

    let (kd, ka) = member(addrs[0], b"g", true, false).await.unwrap();
    let (_, kb) = member(addrs[0], b"g", false, false).await.unwrap();
    let (_, kc) = member(addrs[1], b"g", false, true).await.unwrap();
    assert_eq!(ka, KEYMAT);
    assert_eq!((&ka, &kb), (&kc, &kc));
    assert_eq!(kd.member().unwrap().sender_ids, vec![1]);

    let refused = member(addrs[0], b"other", false, false).await;
    assert!(matches!(
        refused,
        Err(JoinError::Refused(NotifyType::InvalidGroupId))
    ));
    stop_tx.send(()).unwrap();
    task.await.unwrap();
}
