//! `gcks`: the G-IKEv2 Group Controller/Key Server.
//!
//! `gcks demo` runs the GCKS runtime over real UDP on loopback: one server and three
//! members (one sender, two receivers) register to a group with IKE_SA_INIT and GSA_AUTH,
//! and the demo checks that every member unwrapped the same group keys.
//! The SQL policy store and `gcks serve` arrive with issue #3.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use gikev2_gcks::{Registrar, RegistrationContext, ServeConfig, Server};
use gikev2_member::join;
use gikev2_proto::crypto::{IkeSuite, Random, SecretBytes, SystemRandom};
use gikev2_proto::ike::{
    Decision, IkeConfig, LocalAuth, PeerAuth, RegistrationRequest, SinglePeer,
};
use gikev2_proto::registry::{EncrId, KeId, KwaId, NotifyType, PrfId, SnId};
use gikev2_proto::wire::gsa::{GsaPayload, GsaPolicy, GwPolicy};
use gikev2_proto::wire::id::IdPayload;
use gikev2_proto::wire::kd::{GroupKeyBag, KdPayload, MemberKeyBag, WrappedKey};
use gikev2_proto::wire::{TrafficSelector, Transform};

const TEK_SPI: u32 = 0x4749_4b45;
const GROUP: &[u8] = b"demo-group";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("demo") => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let result = match rt {
                Ok(rt) => rt.block_on(demo()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = result {
                eprintln!("gcks demo failed: {e}");
                std::process::exit(1);
            }
        }
        _ => {
            eprintln!(
                "usage: gcks demo\n\n  demo   register three members to a group over UDP on loopback"
            );
            std::process::exit(2);
        }
    }
}

fn suite() -> IkeSuite {
    IkeSuite::from_transforms(&[
        Transform::encr(EncrId::AesGcm16, Some(256)),
        Transform::prf(PrfId::HmacSha2_256),
        Transform::ke(KeId::Curve25519),
        Transform::kwa(KwaId::Kw5649_256),
    ])
    .expect("built-in suite is valid")
}

fn psk_config(id: &str, psk: &SecretBytes) -> IkeConfig {
    IkeConfig::new(
        vec![suite()],
        IdPayload::fqdn(id).expect("ASCII identity"),
        LocalAuth::Psk(psk.clone()),
        Arc::new(SinglePeer {
            id: None,
            auth: PeerAuth::Psk(psk.clone()),
        }),
    )
}

/// The demo's built-in policy: one group, one ESP TEK (AES-GCM-16-256, several senders).
struct DemoPolicy {
    keymat: [u8; 36],
    next_sender_id: AtomicU32,
}

impl Registrar for DemoPolicy {
    async fn decide(&self, ctx: RegistrationContext) -> Decision {
        if ctx.request.group.data != GROUP {
            return Decision::Refuse(NotifyType::InvalidGroupId);
        }
        let Ok(wrapped) = ctx.kwk.wrap(&self.keymat) else {
            return Decision::Refuse(NotifyType::RegistrationFailed);
        };
        let dst = TrafficSelector::single("239.192.0.1".parse().expect("address"), 17, Some(5004));
        let gsa = GsaPayload::new()
            .with_gsa(
                GsaPolicy::esp(TEK_SPI, TrafficSelector::any(false), dst)
                    .with_transform(Transform::encr(EncrId::AesGcm16, Some(256)))
                    .with_transform(Transform::sn(SnId::Unspecified32)),
            )
            .with_gw(GwPolicy::new().with_sender_id_bits(8));
        let mut kd = KdPayload::new()
            .with(GroupKeyBag::esp(TEK_SPI).with_sa_key(WrappedKey::new(0, 0, wrapped)));
        if let Some(count) = ctx.request.sender_ids {
            // RFC 9838 2.5.1 / 4.5.3.3: unique Sender-IDs, never more than requested.
            let mut bag = MemberKeyBag::new();
            for _ in 0..count.clamp(1, 4) {
                bag = bag.with_sender_id(self.next_sender_id.fetch_add(1, Ordering::SeqCst));
            }
            kd = kd.with(bag);
        }
        println!(
            "gcks: {} joins {} as {}",
            ctx.peer_id.as_text().unwrap_or("?"),
            String::from_utf8_lossy(&ctx.request.group.data),
            if ctx.request.sender_ids.is_some() {
                "sender"
            } else {
                "receiver"
            }
        );
        Decision::Accept {
            gsa,
            kd,
            transport_mode: true,
        }
    }
}

async fn demo() -> Result<(), String> {
    let mut rng = SystemRandom::new();
    let psk = SecretBytes::from_slice(b"demo group pre-shared key");
    // The TEK keying material: AES-256 key + 4-octet salt (RFC 4106, RFC 9838 3.4).
    let mut keymat = [0u8; 36];
    rng.fill(&mut keymat);
    let policy = DemoPolicy {
        keymat,
        next_sender_id: AtomicU32::new(1),
    };
    let cfg = ServeConfig {
        listen: vec!["127.0.0.1:0".parse().map_err(|_| "address")?],
        ..Default::default()
    };
    let server =
        Server::bind(psk_config("gcks.demo", &psk), cfg, policy).map_err(|e| e.to_string())?;
    let gcks = *server.local_addrs().first().ok_or("no socket")?;
    println!("gcks listening on {gcks} (UDP, loopback)");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    let start = Instant::now();
    let mut keys = Vec::new();
    for (name, sender) in [
        ("sender.demo", true),
        ("receiver1.demo", false),
        ("receiver2.demo", false),
    ] {
        let request = RegistrationRequest {
            group: IdPayload::key_id(GROUP.to_vec()),
            sag: None,
            sender_ids: sender.then_some(1),
        };
        let joined = join(
            psk_config(name, &psk),
            gcks,
            request,
            false,
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| format!("{name}: {e}"))?;
        let bag = joined.kd.group_bags().next().ok_or("no key bag")?;
        let wrapped = bag.sa_keys.first().ok_or("no SA_KEY")?;
        let k = joined
            .kwk
            .unwrap(&wrapped.encrypted)
            .map_err(|e| e.to_string())?;
        let sender_ids = joined
            .kd
            .member()
            .map(|b| b.sender_ids.clone())
            .unwrap_or_default();
        println!(
            "member {name:<15} registered: TEK SPI {TEK_SPI:#010x}, {}, Sender-IDs {sender_ids:?}",
            if sender { "sender" } else { "receiver" }
        );
        keys.push(k.as_bytes().to_vec());
    }
    let identical =
        keys.windows(2).all(|w| w[0] == w[1]) && keys.first().is_some_and(|k| k[..] == keymat[..]);
    let _ = stop.send(());
    task.await.map_err(|e| e.to_string())?;
    println!(
        "3 members registered in {:.1} ms over loopback UDP; all hold the GCKS's TEK keys: {identical}",
        start.elapsed().as_secs_f64() * 1e3
    );
    if identical {
        Ok(())
    } else {
        Err("members hold different keys".into())
    }
}
