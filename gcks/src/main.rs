//! `gcks`: the G-IKEv2 Group Controller/Key Server.
//!
//! `gcks demo` runs the protocol core over real UDP on loopback: one GCKS endpoint and
//! three members (one sender, two receivers) register to a group with IKE_SA_INIT and
//! GSA_AUTH, and the demo checks that every member unwrapped the same group keys.
//! The SQL policy store and `gcks serve` arrive with issue #3.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gikev2_proto::crypto::{IkeSuite, Random, SecretBytes, SystemRandom};
use gikev2_proto::ike::{
    Decision, Endpoint, EndpointConfig, Event, Goal, IkeConfig, IkeSa, LocalAuth, PeerAuth,
    RegistrationRequest, SinglePeer,
};
use gikev2_proto::registry::{EncrId, KeId, KwaId, PrfId, SnId};
use gikev2_proto::wire::gsa::{GsaPayload, GsaPolicy, GwPolicy};
use gikev2_proto::wire::id::IdPayload;
use gikev2_proto::wire::kd::{GroupKeyBag, KdPayload, MemberKeyBag, WrappedKey};
use gikev2_proto::wire::{TrafficSelector, Transform};

const TEK_SPI: u32 = 0x4749_4b45;
const DEADLINE: Duration = Duration::from_secs(10);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("demo") => {
            if let Err(e) = demo() {
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

/// The group's policy: one ESP TEK (AES-GCM-16-256, counter mode, several senders allowed).
fn group_policy() -> GsaPayload {
    let dst = TrafficSelector::single("239.192.0.1".parse().expect("address"), 17, Some(5004));
    GsaPayload::new()
        .with_gsa(
            GsaPolicy::esp(TEK_SPI, TrafficSelector::any(false), dst)
                .with_transform(Transform::encr(EncrId::AesGcm16, Some(256)))
                .with_transform(Transform::sn(SnId::Unspecified32)),
        )
        .with_gw(GwPolicy::new().with_sender_id_bits(8))
}

struct Member {
    name: &'static str,
    sock: UdpSocket,
    sa: IkeSa,
    sender: bool,
    keys: Option<Vec<u8>>,
    sender_ids: Vec<u32>,
}

fn demo() -> Result<(), String> {
    let mut rng = SystemRandom::new();
    let psk = SecretBytes::from_slice(b"demo group pre-shared key");
    let gcks_sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    gcks_sock.set_nonblocking(true).map_err(|e| e.to_string())?;
    let gcks_addr = gcks_sock.local_addr().map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut endpoint = Endpoint::new(
        psk_config("gcks.demo", &psk),
        EndpointConfig::default(),
        gcks_addr,
        start,
        &mut rng,
    );
    // The TEK keying material: AES-256 key + 4-octet salt (RFC 4106, RFC 9838 3.4).
    let mut tek_keymat = [0u8; 36];
    rng.fill(&mut tek_keymat);
    let mut next_sender_id = 1u32;
    println!("gcks listening on {gcks_addr} (UDP, loopback)");

    let mut members = Vec::new();
    for (name, sender) in [
        ("sender.demo", true),
        ("receiver1.demo", false),
        ("receiver2.demo", false),
    ] {
        let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        sock.set_nonblocking(true).map_err(|e| e.to_string())?;
        let local = sock.local_addr().map_err(|e| e.to_string())?;
        let goal = Goal::GsaAuth(RegistrationRequest {
            group: IdPayload::key_id(b"demo-group".to_vec()),
            sag: None,
            sender_ids: sender.then_some(1),
        });
        let sa = IkeSa::initiate(
            psk_config(name, &psk),
            goal,
            local,
            gcks_addr,
            Instant::now(),
            &mut rng,
        )
        .map_err(|e| e.to_string())?;
        members.push(Member {
            name,
            sock,
            sa,
            sender,
            keys: None,
            sender_ids: Vec::new(),
        });
    }

    let mut buf = vec![0u8; 65536];
    while members.iter().any(|m| m.keys.is_none()) {
        if start.elapsed() > DEADLINE {
            return Err("members did not all register within 10 s".into());
        }
        let now = Instant::now();
        let mut moved = false;
        for m in &mut members {
            while let Some(d) = m.sa.poll_transmit() {
                m.sock.send_to(&d, gcks_addr).map_err(|e| e.to_string())?;
                moved = true;
            }
            while let Ok((n, _)) = m.sock.recv_from(&mut buf) {
                m.sa.handle(&buf[..n], now, &mut rng);
                moved = true;
            }
            while let Some(e) = m.sa.poll_event() {
                moved = true;
                match e {
                    Event::Registered { kd, .. } => {
                        let kwk = m.sa.key_wrap_key().map_err(|e| e.to_string())?;
                        let bag = kd.group_bags().next().ok_or("no key bag")?;
                        let wrapped = bag.sa_keys.first().ok_or("no SA_KEY")?;
                        let keymat = kwk.unwrap(&wrapped.encrypted).map_err(|e| e.to_string())?;
                        m.keys = Some(keymat.as_bytes().to_vec());
                        m.sender_ids = kd
                            .member()
                            .map(|b| b.sender_ids.clone())
                            .unwrap_or_default();
                    }
                    Event::RegistrationRefused { notify, .. } => {
                        return Err(format!("{} refused: {notify}", m.name));
                    }
                    Event::Closed(r) if m.keys.is_none() => {
                        return Err(format!("{} closed: {r:?}", m.name));
                    }
                    _ => {}
                }
            }
            if m.sa.poll_timeout().is_some_and(|t| t <= now) {
                m.sa.handle_timeout(now);
            }
        }
        while let Ok((n, from)) = gcks_sock.recv_from(&mut buf) {
            endpoint.handle(&buf[..n], from, now, &mut rng);
            moved = true;
        }
        while let Some((h, e)) = endpoint.poll_event() {
            moved = true;
            if let Event::RegistrationRequested { peer_id, request } = e {
                let kwk = endpoint
                    .sa(h)
                    .ok_or("SA vanished")?
                    .key_wrap_key()
                    .map_err(|e| e.to_string())?;
                let sa_key =
                    WrappedKey::new(0, 0, kwk.wrap(&tek_keymat).map_err(|e| e.to_string())?);
                let mut kd = KdPayload::new().with(GroupKeyBag::esp(TEK_SPI).with_sa_key(sa_key));
                if let Some(count) = request.sender_ids {
                    // RFC 9838 2.5.1: unique Sender-IDs, never more than asked for.
                    let mut bag = MemberKeyBag::new();
                    for _ in 0..count.clamp(1, 4) {
                        bag = bag.with_sender_id(next_sender_id);
                        next_sender_id += 1;
                    }
                    kd = kd.with(bag);
                }
                println!(
                    "gcks: {} asks to join {} (sender: {})",
                    peer_id.as_text().unwrap_or("?"),
                    String::from_utf8_lossy(&request.group.data),
                    request.sender_ids.is_some()
                );
                endpoint.decide(
                    h,
                    Decision::Accept {
                        gsa: group_policy(),
                        kd,
                        transport_mode: true,
                    },
                    now,
                    &mut rng,
                );
            }
        }
        while let Some((to, d)) = endpoint.poll_transmit() {
            gcks_sock.send_to(&d, to).map_err(|e| e.to_string())?;
            moved = true;
        }
        if let Some(t) = endpoint.poll_timeout()
            && t <= now
        {
            endpoint.handle_timeout(now);
        }
        if !moved {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    let reference = members[0].keys.clone();
    for m in &members {
        let same = m.keys == reference;
        println!(
            "member {:<15} registered: TEK SPI {TEK_SPI:#010x}, role {}, Sender-IDs {:?}, keys identical to the others: {same}",
            m.name,
            if m.sender { "sender" } else { "receiver" },
            m.sender_ids,
        );
        if !same {
            return Err(format!("{} holds different keys", m.name));
        }
    }
    println!(
        "3 members registered in {:.1} ms over loopback UDP ({} IKE SAs at the GCKS)",
        start.elapsed().as_secs_f64() * 1e3,
        endpoint.len()
    );
    Ok(())
}
