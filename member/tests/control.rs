//! The control socket (STYLE S6): status JSON shape, the unknown-command reply, the frame
//! cap, event subscriptions, errors naming the bad field, no key bytes in any output; and
//! the `gm` binary as a daemon with its thin clients.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::*;
use gikev2_esp::Engine;
use gikev2_member::control::{self, Client, ClientMessage, MAX_FRAME, ServerMessage};
use gikev2_member::runtime::{self, RuntimeConfig};
use gikev2_member::{AgentEvent, NoDataPlane, SystemClock};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

struct Daemon {
    dir: tempfile::TempDir,
    socket: PathBuf,
    psk: PathBuf,
    engine: Arc<Engine>,
}

async fn daemon() -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gm.sock");
    let psk = dir.path().join("psk");
    std::fs::write(&psk, PSK).unwrap();
    let engine = Arc::new(Engine::default());
    let config = RuntimeConfig {
        multicast_v4_interface: Some(Ipv4Addr::LOCALHOST),
        ..RuntimeConfig::default()
    };
    let (agent, _task) = runtime::spawn(
        engine.clone(),
        Arc::new(NoDataPlane),
        config,
        Arc::new(SystemClock),
    );
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    tokio::spawn(control::serve(listener, agent));
    Daemon {
        dir,
        socket,
        psk,
        engine,
    }
}

async fn gcks() -> RunningGcks {
    let port = free_port();
    let rekey = SocketAddr::new(IpAddr::V4(rekey_group(port)), port);
    RunningGcks::start(TestGcks::new(group_state(rekey, 2), Policy::Normal)).await
}

async fn raw_call(s: &mut UnixStream, body: &[u8]) -> Value {
    s.write_all(&(body.len() as u32).to_be_bytes())
        .await
        .unwrap();
    s.write_all(body).await.unwrap();
    read_value(s).await.expect("a reply")
}

async fn read_value(s: &mut UnixStream) -> Option<Value> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await.ok()?;
    Some(serde_json::from_slice(&body).unwrap())
}

fn join_args(d: &Daemon, gcks: SocketAddr, id: &str) -> Value {
    json!({
        "group": GROUP,
        "gcks": gcks.to_string(),
        "psk_file": d.psk,
        "id": id,
        "wait_ms": 20_000,
    })
}

/// Every rendering of key bytes a careless status could contain.
fn secret_renderings(key: &[u8]) -> Vec<String> {
    let mut v = vec![
        hex(key),
        hex(&key[..8]),
        hex(&key[key.len() - 8..]),
        base64::engine::general_purpose::STANDARD.encode(key),
        base64::engine::general_purpose::STANDARD.encode(&key[..12]),
        key[..6]
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(","),
    ];
    v.push(v[5].replace(',', ", "));
    v
}

#[tokio::test(flavor = "current_thread")]
async fn status_shape_unknown_command_errors_and_no_key_bytes() {
    let d = daemon().await;
    let g = gcks().await;
    let mut s = UnixStream::connect(&d.socket).await.unwrap();

    let v = raw_call(&mut s, br#"{"type":"request","command":"status"}"#).await;
    assert_eq!(
        v,
        json!({"type":"response","ok":true,"result":{"groups":[],"engine_sas":0}})
    );
    // vici's CMD_UNKNOWN.
    let v = raw_call(&mut s, br#"{"type":"request","command":"frobnicate"}"#).await;
    assert_eq!(v, json!({"type":"unknown","command":"frobnicate"}));
    // Malformed bodies are answered; the connection stays usable.
    let v = raw_call(&mut s, b"{not json").await;
    assert_eq!(v["ok"], json!(false));
    assert!(v["error"].as_str().unwrap().contains("malformed"), "{v}");
    // A bad join names the field at fault.
    let mut bad = join_args(&d, g.addr, "gm.test");
    bad["psk_file"] = json!(d.dir.path().join("missing"));
    let body = serde_json::to_vec(&json!({"type":"request","command":"join","args":bad})).unwrap();
    let v = raw_call(&mut s, &body).await;
    assert_eq!(v["ok"], json!(false));
    assert!(
        v["error"].as_str().unwrap().starts_with("psk_file: "),
        "{v}"
    );
    let mut bad = join_args(&d, g.addr, "gm.test");
    bad["sender"] = json!(0);
    let body = serde_json::to_vec(&json!({"type":"request","command":"join","args":bad})).unwrap();
    let v = raw_call(&mut s, &body).await;
    assert!(v["error"].as_str().unwrap().starts_with("sender: "), "{v}");
    let body = serde_json::to_vec(
        &json!({"type":"request","command":"join","args":{"group":"g","gcks":"x","psk":"inline"}}),
    )
    .unwrap();
    let v = raw_call(&mut s, &body).await;
    assert!(
        v["error"].as_str().unwrap().contains("unknown field"),
        "{v}"
    );

    // Join as a sender, then look at the status.
    let mut args = join_args(&d, g.addr, "gm.test");
    args["sender"] = json!(2);
    let body = serde_json::to_vec(&json!({"type":"request","command":"join","args":args})).unwrap();
    let v = raw_call(&mut s, &body).await;
    assert_eq!(v["ok"], json!(true), "{v}");
    assert_eq!(v["result"]["state"], json!("up"));
    let text = {
        let v = raw_call(&mut s, br#"{"type":"request","command":"status"}"#).await;
        serde_json::to_string(&v).unwrap()
    };
    let v: Value = serde_json::from_str(&text).unwrap();
    let r = &v["result"];
    assert_eq!(r["engine_sas"], json!(1));
    let grp = &r["groups"][0];
    for key in [
        "group",
        "gcks",
        "state",
        "role",
        "auth",
        "sender_ids",
        "sender_id_bits",
        "atd",
        "dtd",
        "ike_sa",
        "rekey_sas",
        "rekey_stats",
        "teks",
        "registrations",
        "last_error",
    ] {
        assert!(grp.get(key).is_some(), "status lacks {key}: {grp}");
    }
    assert_eq!(grp["group"], json!(GROUP));
    assert_eq!(grp["gcks"], json!(g.addr.to_string()));
    assert_eq!(grp["role"], json!("sender"));
    assert_eq!(grp["auth"], json!("psk"));
    assert_eq!(grp["sender_ids"], json!([1]));
    assert_eq!(grp["sender_id_bits"], json!(8));
    assert_eq!(grp["dtd"], json!(2));
    assert_eq!(grp["ike_sa"]["established"], json!(true));
    assert_eq!(grp["ike_sa"]["spi_i"].as_str().unwrap().len(), 16);
    let tek = &grp["teks"][0];
    let spi = g.gcks.state.lock().unwrap().teks[0].spi;
    assert_eq!(tek["spi"], json!(format!("{spi:#010x}")));
    assert_eq!(tek["direction"], json!("outbound"));
    assert_eq!(tek["algorithm"], json!("ENCR_AES_GCM_16-256"));
    assert_eq!(tek["state"], json!("active"));
    assert!(tek["lifetime_s"].as_u64().unwrap() > 3500);
    assert_eq!(grp["rekey_sas"][0]["auth"], json!("Ed25519"));
    assert_eq!(grp["rekey_sas"][0]["current"], json!(true));

    // No key bytes, in any rendering: TEK, KEK, PSK.
    let (tek_key, kek_key) = {
        let st = g.gcks.state.lock().unwrap();
        (
            st.teks[0].keymat().as_bytes().to_vec(),
            st.rekey.as_ref().unwrap().keymat().as_bytes().to_vec(),
        )
    };
    for k in [&tek_key, &kek_key] {
        for r in secret_renderings(k) {
            assert!(!text.contains(&r), "status shows key bytes ({r})");
        }
    }
    assert!(!text.contains(std::str::from_utf8(PSK).unwrap()));

    // Leave.
    let v = raw_call(
        &mut s,
        br#"{"type":"request","command":"leave","args":{"group":"g"}}"#,
    )
    .await;
    assert_eq!(v, json!({"type":"response","ok":true,"result":null}));
    assert_eq!(d.engine.sa_count(), 0);
    let v = raw_call(
        &mut s,
        br#"{"type":"request","command":"leave","args":{"group":"nope"}}"#,
    )
    .await;
    assert_eq!(
        v,
        json!({"type":"response","ok":false,"error":"group \"nope\" is not joined"})
    );
    g.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn frame_over_the_cap_is_refused_and_the_connection_closed() {
    let d = daemon().await;
    let mut s = UnixStream::connect(&d.socket).await.unwrap();
    s.write_all(&((MAX_FRAME + 1) as u32).to_be_bytes())
        .await
        .unwrap();
    // Some of the announced body: it is never read.
    s.write_all(&[b'x'; 4096]).await.unwrap();
    let v = read_value(&mut s).await.expect("an error reply");
    assert_eq!(v["type"], json!("response"));
    assert_eq!(v["ok"], json!(false));
    assert!(v["error"].as_str().unwrap().contains("cap"), "{v}");
    assert!(read_value(&mut s).await.is_none(), "connection closed");
    // Exactly the cap is fine (it is only malformed JSON).
    let mut s = UnixStream::connect(&d.socket).await.unwrap();
    let v = raw_call(&mut s, &vec![b' '; MAX_FRAME]).await;
    assert!(v["error"].as_str().unwrap().contains("malformed"), "{v}");
    // The daemon still serves.
    let mut c = Client::connect(&d.socket).await.unwrap();
    assert!(matches!(
        c.request("status", Value::Null).await.unwrap(),
        ServerMessage::Response { ok: true, .. }
    ));
}

#[tokio::test(flavor = "current_thread")]
async fn subscribers_receive_events() {
    let d = daemon().await;
    let g = gcks().await;
    let mut sub = Client::connect(&d.socket).await.unwrap();
    assert_eq!(
        sub.call(&ClientMessage::EventRegister {
            events: vec!["group-up".into()]
        })
        .await
        .unwrap(),
        ServerMessage::EventConfirm
    );
    let mut c = Client::connect(&d.socket).await.unwrap();
    let r = c
        .request("join", join_args(&d, g.addr, "gm.test"))
        .await
        .unwrap();
    assert!(
        matches!(r, ServerMessage::Response { ok: true, .. }),
        "{r:?}"
    );
    let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        e,
        ServerMessage::Event(AgentEvent::GroupUp {
            group: GROUP.into(),
            teks: 1,
            rekey_sa: true,
            sender_ids: Vec::new(),
        })
    );
    g.stop().await;
}

fn gm(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_gm"))
        .args(args)
        .output()
        .unwrap()
}

async fn gm_async(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        gm(&a)
    })
    .await
    .unwrap()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "current_thread")]
async fn gm_daemon_join_status_leave() {
    let g = gcks().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gm.sock");
    let psk = dir.path().join("psk");
    std::fs::write(&psk, [PSK, b"\n"].concat()).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gm"))
        .args([
            "daemon",
            "--socket",
            &s(&socket),
            "--multicast-if",
            "127.0.0.1",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Bounded wait for the socket to appear.
    for _ in 0..500 {
        if UnixStream::connect(&socket).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = gm_async(
        [
            "join",
            "--group",
            GROUP,
            "--gcks",
            &g.addr.to_string(),
            "--psk-file",
            &s(&psk),
            "--id",
            "cli.test",
            "--json",
            "--socket",
            &s(&socket),
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], json!("up"));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "only the owner may talk to the daemon");
    }

    let out = gm_async(
        ["status", "--json", "--socket", &s(&socket)]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["groups"][0]["teks"][0]["direction"], json!("inbound"));
    let out = gm_async(
        ["status", "--socket", &s(&socket)]
            .map(String::from)
            .to_vec(),
    )
    .await;
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("g: up (receiver, psk auth)"), "{text}");
    // A reader that went away (`gm status | head -0`): the status of a SIGPIPE death,
    // no panic on stderr.
    let sock = s(&socket);
    let out = tokio::task::spawn_blocking(move || {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        std::process::Command::new(env!("CARGO_BIN_EXE_gm"))
            .args(["status", "--socket", &sock])
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
            .wait_with_output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(gikev2_member::stdout::BROKEN_PIPE_STATUS)
    );
    assert!(out.stderr.is_empty(), "{out:?}");

    // Errors name the field; the exit status says so.
    let out = gm_async(
        [
            "join",
            "--group",
            "h",
            "--gcks",
            &g.addr.to_string(),
            "--psk-file",
            "/nonexistent/psk",
            "--socket",
            &s(&socket),
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("psk_file: /nonexistent/psk"), "{err}");

    // A join that is not up when the wait runs out fails, with the state and the reason
    // in words (the GCKS refuses a wrong PSK: AUTHENTICATION_FAILED).
    let wrong = dir.path().join("wrong.psk");
    std::fs::write(&wrong, b"not the group's psk\n").unwrap();
    let join_h = [
        "join",
        "--group",
        "h",
        "--gcks",
        &g.addr.to_string(),
        "--psk-file",
        &s(&wrong),
        "--id",
        "cli.test",
        "--wait",
        "5",
        "--socket",
        &s(&socket),
    ]
    .map(String::from)
    .to_vec();
    let out = gm_async(join_h.clone()).await;
    assert!(!out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("h: waiting (receiver, psk auth)"),
        "{text}"
    );
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("gm: h: not up after 5 s (state waiting, last error: IKE SA closed: authentication failed (AUTHENTICATION_FAILED)"),
        "{err}"
    );
    assert!(err.contains("`gm leave --group h` stops it"), "{err}");
    // Joining it again says how to start over.
    let out = gm_async(join_h).await;
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("group \"h\" is already joined") && err.contains("`gm leave --group h` first"),
        "{err}"
    );
    let out = gm_async(
        ["leave", "--group", "h", "--socket", &s(&socket)]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert!(out.status.success(), "{out:?}");

    let out = gm_async(
        ["leave", "--group", GROUP, "--socket", &s(&socket)]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(g.wait_left().await.len(), 1);
    let _ = child.kill();
    let _ = child.wait();
    // Without a daemon the client says where it looked.
    let out = gm_async(
        ["status", "--socket", &s(&socket)]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("cannot reach the daemon"),
    );
    g.stop().await;
}
