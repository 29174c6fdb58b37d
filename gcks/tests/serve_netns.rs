//! `gcks serve` (the binary) in a network namespace, administered with the `gcks` CLI, on
//! SQLite and on PostgreSQL; members in namespaces of their own register over UDP 500
//! and 848 with `gikev2_member::join` (or a hand-driven IKE SA where they must keep it).
//!
//! Covered: identical keys for every member per SPI, Sender-IDs for the sender only,
//! every refusal path with its notify and an audit row (unknown group, unauthorized
//! identity, receiver asking to send, wrong PSK, unsupported SAg, capacity), a
//! GSA_REGISTRATION leave that frees the place, `gcks status` without key material, and a
//! kill -9 of the server between registrations (no Sender-ID twice, keys unchanged). A
//! flood of IKE_SA_INIT requests from many source addresses draws COOKIEs while a real
//! member still registers. TEK renewals pushed by multicast GSA_REKEY reach member
//! runtimes in two namespaces.
//!
//! Needs root (namespaces) and, for the PostgreSQL half, a server reachable through its
//! Unix socket (the namespaces cannot reach the host's 127.0.0.1): skipped without them
//! unless GIKEV2_REQUIRE_ALL=1.

mod common;

use common::suite;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gikev2_esp::Engine;
use gikev2_member::config::MembershipConfig;
use gikev2_member::runtime::{self, RuntimeConfig};
use gikev2_member::{AgentEvent, GroupStatus, JoinError, NoDataPlane, SystemClock, join};
use gikev2_policy::{AuditOutcome, AuditRecord, Identity, MasterKey, Store};
use gikev2_proto::crypto::{SecretBytes, SystemRandom};
use gikev2_proto::group::{GroupKeys, Role as KeyRole, read_registration};
use gikev2_proto::ike::{
    CloseReason, Event, Goal, IkeConfig, IkeSa, LocalAuth, PeerAuth, RegistrationRequest,
    SinglePeer,
};
use gikev2_proto::registry::{EncrId, IntegId, NotifyType, ProtocolId, SnId};
use gikev2_proto::wire::{IdPayload, Proposal, SaPayload, Transform};
use gikev2_tests::netns::{Bridge, Netns};
use gikev2_tests::{gate, ikeprobe, netns, poll_until};

const GCKS: &str = env!("CARGO_BIN_EXE_gcks");
const GCKS_PSK: &[u8] = b"gcks own key, 32 octets or so...";

// ----------------------------------------------------------------- databases

/// A PostgreSQL database made for one test, dropped at the end (even on panic).
struct PgDb {
    admin_url: String,
    name: String,
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                use sqlx::Connection;
                let mut c = sqlx::PgConnection::connect(&admin).await.ok()?;
                sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut c)
                    .await
                    .ok()?;
                c.close().await.ok()
            })
        })
        .join();
    }
}

/// Where the store lives: the URL the test process uses and the one `gcks` uses.
struct Db {
    /// For this process (PostgreSQL over TCP on the host's loopback).
    local_url: String,
    /// For `gcks` processes, in namespaces or not (PostgreSQL over its Unix socket).
    gcks_url: String,
    _pg: Option<PgDb>,
}

fn pg_candidates() -> Vec<String> {
    match std::env::var("GIKEV2_PG_URL") {
        Ok(u) => vec![u],
        Err(_) => vec![
            "postgres://postgres@127.0.0.1:5432/test".into(),
            "postgres://root@127.0.0.1:5432/test".into(),
        ],
    }
}

/// `(userinfo, port)` of a postgres URL.
fn pg_parts(url: &str) -> (String, u16) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (userinfo, hostpart) = rest.split_once('@').unwrap_or(("postgres", rest));
    let hostport = hostpart.split('/').next().unwrap_or_default();
    let port = hostport
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(5432);
    (userinfo.to_string(), port)
}

fn pg_socket_dir(port: u16) -> Option<&'static str> {
    ["/var/run/postgresql", "/run/postgresql", "/tmp"]
        .into_iter()
        .find(|d| Path::new(&format!("{d}/.s.PGSQL.{port}")).exists())
}

fn postgres_db(rt: &tokio::runtime::Runtime) -> Result<Db, String> {
    use sqlx::Connection;
    let mut errors = Vec::new();
    for admin_url in pg_candidates() {
        let conn = rt.block_on(sqlx::PgConnection::connect(&admin_url));
        let mut c = match conn {
            Ok(c) => c,
            Err(e) => {
                errors.push(format!("{admin_url}: {e}"));
                continue;
            }
        };
        let (userinfo, port) = pg_parts(&admin_url);
        let Some(dir) = pg_socket_dir(port) else {
            errors.push(format!(
                "{admin_url}: no Unix socket .s.PGSQL.{port} (namespaces cannot reach TCP loopback)"
            ));
            continue;
        };
        let name = format!(
            "gcks_netns_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        );
        rt.block_on(sqlx::raw_sql(&format!("CREATE DATABASE {name}")).execute(&mut c))
            .map_err(|e| format!("CREATE DATABASE: {e}"))?;
        let _ = rt.block_on(c.close());
        let base = admin_url
            .rsplit_once('/')
            .map(|(b, _)| b.to_string())
            .unwrap_or(admin_url.clone());
        return Ok(Db {
            local_url: format!("{base}/{name}"),
            gcks_url: format!("postgres://{userinfo}@localhost/{name}?host={dir}&port={port}"),
            _pg: Some(PgDb { admin_url, name }),
        });
    }
    Err(format!("PostgreSQL unreachable: {}", errors.join("; ")))
}

// ----------------------------------------------------------------- the world

/// Namespaces on one bridge: the GCKS and three member hosts.
struct World {
    dir: tempfile::TempDir,
    db: Db,
    rt: tokio::runtime::Runtime,
    gcks_ns: Netns,
    hosts: Vec<Netns>,
    /// Each host's link on the bridge.
    links: Vec<netns::Endpoint>,
    gcks_ip: Ipv4Addr,
    bridge: Bridge,
}

impl World {
    fn new(tag: &str, postgres: bool) -> Option<World> {
        gate::require("network namespaces", netns::probe())?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db = if postgres {
            match postgres_db(&rt) {
                Ok(db) => db,
                Err(why) => {
                    gate::skip("PostgreSQL", &why);
                    return None;
                }
            }
        } else {
            let url = format!("sqlite://{}?mode=rwc", dir.path().join("gcks.db").display());
            Db {
                local_url: url.clone(),
                gcks_url: url,
                _pg: None,
            }
        };
        let bridge = Bridge::new(tag).unwrap();
        let gcks_ns = Netns::new(&format!("{tag}gcks")).unwrap();
        let gcks_ip = bridge.attach(&gcks_ns).unwrap().v4;
        let (hosts, links): (Vec<Netns>, Vec<netns::Endpoint>) = (0..3)
            .map(|i| {
                let ns = Netns::new(&format!("{tag}m{i}")).unwrap();
                let link = bridge.attach(&ns).unwrap();
                (ns, link)
            })
            .unzip();
        Some(World {
            dir,
            db,
            rt,
            gcks_ns,
            hosts,
            links,
            gcks_ip,
            bridge,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn key(&self) -> PathBuf {
        self.path("gcks.key")
    }

    /// Runs a `gcks` admin command (root namespace); its stdout, or a panic with stderr.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(GCKS)
            .arg("--db")
            .arg(&self.db.gcks_url)
            .arg("--master-key")
            .arg(self.key())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "gcks {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A failing `gcks` admin command: its stderr.
    fn cli_err(&self, args: &[&str]) -> String {
        let out = Command::new(GCKS)
            .arg("--db")
            .arg(&self.db.gcks_url)
            .arg("--master-key")
            .arg(self.key())
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "gcks {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn write(&self, name: &str, content: &[u8]) -> String {
        let p = self.path(name);
        std::fs::write(&p, content).unwrap();
        p.display().to_string()
    }

    fn store(&self) -> Store {
        let key = MasterKey::load(&self.key()).unwrap();
        self.rt
            .block_on(Store::open(&self.db.local_url, key))
            .unwrap()
    }

    fn serve(&self, extra: &[&str]) -> Gcks {
        let mut cmd = self.gcks_ns.command(GCKS);
        let psk = self.write("gcks.psk", GCKS_PSK);
        cmd.arg("--db")
            .arg(&self.db.gcks_url)
            .arg("--master-key")
            .arg(self.key())
            .args(["serve", "--id", "gcks.gk", "--psk-file", &psk])
            .args(["--listen", &format!("{}:500", self.gcks_ip)])
            .args(["--listen", &format!("{}:848", self.gcks_ip)])
            .args(["--ike-idle", "2", "--log", "debug"])
            .args(extra);
        Gcks::start(cmd, self.path(&format!("serve-{}.log", now_nanos())))
    }

    fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.gcks_ip), port)
    }
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A `gcks serve` process; killed (SIGKILL) on drop, its log shown if the test failed.
struct Gcks {
    child: Option<Child>,
    log: PathBuf,
}

impl Gcks {
    fn start(mut cmd: Command, log: PathBuf) -> Gcks {
        let err = std::fs::File::create(&log).unwrap();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut g = Gcks {
            child: Some(child),
            log,
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.starts_with("gcks: serving on") => g,
            other => {
                let log = g.log_text();
                g.kill9();
                panic!("gcks serve did not start ({other:?}):\n{log}");
            }
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a crash: nothing is flushed or closed by the server.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Gcks {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- gcks serve log (last lines) ---");
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

// ----------------------------------------------------------------- members

fn member_ike(id: &str, psk: &[u8]) -> IkeConfig {
    let mut c = IkeConfig::new(
        vec![suite()],
        IdPayload::fqdn(id).unwrap(),
        LocalAuth::Psk(SecretBytes::from_slice(psk)),
        // The pair's shared key both ways (RFC 7296 2.15): the GCKS answers each member with
        // the PSK it holds for that member.
        Arc::new(SinglePeer {
            id: Some(IdPayload::fqdn("gcks.gk").unwrap()),
            auth: PeerAuth::Psk(SecretBytes::from_slice(psk)),
        }),
    );
    c.remote_id = Some(IdPayload::fqdn("gcks.gk").unwrap());
    c
}

fn psk_of(id: &str) -> Vec<u8> {
    format!("psk of {id}").into_bytes()
}

fn request(group: &str, sender: Option<u32>, sag: Option<SaPayload>) -> RegistrationRequest {
    RegistrationRequest {
        group: IdPayload::key_id(group.as_bytes().to_vec()),
        sag,
        sender_ids: sender,
    }
}

/// What a member made of a registration.
#[derive(Debug)]
struct Registered {
    keys: GroupKeys,
    transport_mode: bool,
}

/// Registers from inside `ns` with `gikev2_member::join`.
fn join_in(
    ns: &Netns,
    gcks: SocketAddr,
    id: &str,
    psk: Vec<u8>,
    req: RegistrationRequest,
) -> Result<Registered, JoinError> {
    let ike = member_ike(id, &psk);
    let role = if req.sender_ids.is_some() {
        KeyRole::Sender { receives: true }
    } else {
        KeyRole::Receiver
    };
    ns.in_ns(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Generous: a member competing with the IKE_SA_INIT flood test on a loaded CI host
        // may need several retransmissions (RFC 7296 2.1); answers come in milliseconds.
        let j = rt.block_on(join(ike, gcks, req, Duration::from_secs(40)))?;
        let keys = read_registration(&j.gsa, &j.kd, &j.kwk, role).expect("valid GSA/KD");
        Ok(Registered {
            keys,
            transport_mode: j.transport_mode,
        })
    })
    .unwrap()
}

/// Registers from inside `ns` driving the IKE SA by hand, then leaves the group with a
/// GSA_REGISTRATION carrying IDg and REGISTRATION_FAILED (RFC 9838 2.3.2 Figure 8) and
/// waits for the GCKS's answer.
fn join_then_leave(ns: &Netns, gcks: SocketAddr, id: &str, group: &str) {
    let ike = member_ike(id, &psk_of(id));
    let group = group.to_string();
    ns.in_ns(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
            sock.connect(gcks).await.unwrap();
            let mut rng = SystemRandom::new();
            let idg = IdPayload::key_id(group.as_bytes().to_vec());
            let mut sa = IkeSa::initiate(
                ike,
                Goal::GsaAuth(request(&group, None, None)),
                sock.local_addr().unwrap(),
                gcks,
                Instant::now(),
                &mut rng,
            )
            .unwrap();
            let deadline = Instant::now() + Duration::from_secs(15);
            let mut left = false;
            let mut buf = vec![0u8; 65_535];
            loop {
                while let Some(d) = sa.poll_transmit() {
                    sock.send(&d).await.unwrap();
                }
                while let Some(e) = sa.poll_event() {
                    match e {
                        Event::Registered { .. } => {
                            sa.leave(
                                idg.clone(),
                                NotifyType::RegistrationFailed,
                                Instant::now(),
                                &mut rng,
                            );
                            left = true;
                        }
                        Event::Closed(CloseReason::Deleted) if left => return,
                        Event::Closed(r) => panic!("{r:?}"),
                        Event::RegistrationRefused { notify, .. } => panic!("refused: {notify}"),
                        _ => {}
                    }
                }
                // The leave request is answered once nothing is outstanding.
                if left && sa.poll_timeout().is_none() {
                    return;
                }
                let now = Instant::now();
                assert!(now < deadline, "no answer to the leave request");
                let wait = sa
                    .poll_timeout()
                    .unwrap_or(deadline)
                    .min(deadline)
                    .saturating_duration_since(now);
                match tokio::time::timeout(wait, sock.recv(&mut buf)).await {
                    Ok(Ok(n)) => sa.handle(&buf[..n], Instant::now(), &mut rng),
                    Ok(Err(_)) => {}
                    Err(_) => sa.handle_timeout(Instant::now(), &mut rng),
                }
            }
        })
    })
    .unwrap();
}

/// TEK SPI -> (encryption key, integrity key); the Rekey SA keys under SPI 0.
fn key_table(k: &GroupKeys) -> Vec<(u32, Vec<u8>, Vec<u8>)> {
    let mut v: Vec<(u32, Vec<u8>, Vec<u8>)> = k
        .teks
        .iter()
        .map(|t| {
            (
                t.spi,
                t.keys.encr.as_bytes().to_vec(),
                t.keys.integ.as_bytes().to_vec(),
            )
        })
        .collect();
    if let Some(r) = &k.rekey {
        v.push((0, r.keys.keymat().as_bytes().to_vec(), r.spi.to_vec()));
    }
    v.sort();
    v
}

fn refused(r: Result<Registered, JoinError>) -> NotifyType {
    match r {
        Err(JoinError::Refused(n)) => n,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The newest audit row about `peer`, polled (authentication failures are recorded just
/// after the answer leaves).
fn audit_row(w: &World, store: &Store, peer: &str, what: &str) -> AuditRecord {
    let peer = Identity::fqdn(peer);
    poll_until(
        &format!("audit row for {peer} ({what})"),
        Duration::from_secs(5),
        || {
            w.rt.block_on(store.audit_events(200))
                .unwrap()
                .into_iter()
                .find(|r| r.event.peer.as_ref() == Some(&peer) && r.event.reason.contains(what))
        },
    )
    .unwrap()
}

// ----------------------------------------------------------------- the scenario

fn provision(w: &World) {
    w.cli(&[
        "group",
        "create",
        "video",
        "--rekey-dst",
        "239.0.0.9:848",
        // The test's members are its own: Implicit GSA_REKEY authentication is accepted.
        "--implicit-auth",
        "--sender-id-bits",
        "8",
        "--capacity",
        "3",
    ]);
    w.cli(&[
        "group",
        "add-tek",
        "video",
        "--dst",
        "239.0.0.10:5004",
        "--cipher",
        "aes-gcm-256",
    ]);
    // A clear error naming the flag.
    let e = w.cli_err(&[
        "group",
        "add-tek",
        "video",
        "--dst",
        "239.0.0.10",
        "--cipher",
        "des",
    ]);
    assert!(e.contains("--cipher: unknown cipher \"des\""), "{e}");
    for (id, role) in [
        ("sender.gk", Some("sender")),
        ("recv1.gk", Some("receiver")),
        ("recv2.gk", Some("receiver")),
        ("extra.gk", Some("receiver")),
        ("outsider.gk", None),
    ] {
        let psk = w.write(&format!("{id}.psk"), &psk_of(id));
        w.cli(&["member", "add", id, "--psk-file", &psk]);
        if let Some(r) = role {
            w.cli(&["authorize", id, "video", "--role", r]);
        }
    }
}

fn registration_scenario(postgres: bool) {
    let Some(w) = World::new(if postgres { "gkpg" } else { "gksq" }, postgres) else {
        return;
    };
    let t0 = Instant::now();
    provision(&w);
    let mut gcks = w.serve(&[]);
    let (h0, h1, h2) = (&w.hosts[0], &w.hosts[1], &w.hosts[2]);
    let (p500, p848) = (w.addr(500), w.addr(848));

    // One sender (over 848, with the SAg of what it supports), two receivers (500, 848).
    let sender = join_in(
        h0,
        p848,
        "sender.gk",
        psk_of("sender.gk"),
        request("video", Some(1), Some(gikev2_member::sag::supported_sag())),
    )
    .expect("sender registers");
    let r1 = join_in(
        h1,
        p500,
        "recv1.gk",
        psk_of("recv1.gk"),
        request("video", None, None),
    )
    .expect("receiver 1 registers");
    let r2 = join_in(
        h2,
        p848,
        "recv2.gk",
        psk_of("recv2.gk"),
        request("video", None, None),
    )
    .expect("receiver 2 registers");
    let table = key_table(&r1.keys);
    assert_eq!(table.len(), 2, "one TEK and the Rekey SA");
    assert_eq!(key_table(&sender.keys), table, "sender holds the same keys");
    assert_eq!(key_table(&r2.keys), table, "receiver 2 holds the same keys");
    assert_eq!(
        sender.keys.sender_ids,
        vec![0],
        "first Sender-ID is 0 (2.5.1)"
    );
    assert!(r1.keys.sender_ids.is_empty() && r2.keys.sender_ids.is_empty());
    assert!(
        sender.transport_mode && r1.transport_mode,
        "USE_TRANSPORT_MODE"
    );
    assert!(r1.keys.teks[0].inbound && !r1.keys.teks[0].outbound);
    assert!(sender.keys.rekey.is_some() && r1.keys.rekey.is_some());
    let tek_spi = r1.keys.teks[0].spi;

    // Every refusal, with its notify.
    let store = w.store();
    assert_eq!(
        refused(join_in(
            h1,
            p500,
            "recv1.gk",
            psk_of("recv1.gk"),
            request("nogroup", None, None)
        )),
        NotifyType::InvalidGroupId
    );
    audit_row(&w, &store, "recv1.gk", "INVALID_GROUP_ID: unknown group");
    assert_eq!(
        refused(join_in(
            h1,
            p500,
            "outsider.gk",
            psk_of("outsider.gk"),
            request("video", None, None)
        )),
        NotifyType::AuthorizationFailed
    );
    audit_row(
        &w,
        &store,
        "outsider.gk",
        "AUTHORIZATION_FAILED: member not authorized",
    );
    assert_eq!(
        refused(join_in(
            h1,
            p500,
            "recv1.gk",
            psk_of("recv1.gk"),
            request("video", Some(1), None)
        )),
        NotifyType::AuthorizationFailed
    );
    audit_row(&w, &store, "recv1.gk", "asked to send (GROUP_SENDER)");
    let cbc_only = SaPayload::new(vec![Proposal::new(
        1,
        ProtocolId::Esp,
        Vec::new(),
        vec![
            Transform::encr(EncrId::AesCbc, Some(128)),
            Transform::integ(IntegId::HmacSha2_256_128),
        ],
    )]);
    assert_eq!(
        refused(join_in(
            h1,
            p500,
            "recv1.gk",
            psk_of("recv1.gk"),
            request("video", None, Some(cbc_only))
        )),
        NotifyType::NoProposalChosen
    );
    audit_row(
        &w,
        &store,
        "recv1.gk",
        "NO_PROPOSAL_CHOSEN: SAg proposal 1 for ESP lacks the group's ENCR_AES_GCM_16/256",
    );
    match join_in(
        h2,
        p500,
        "recv2.gk",
        b"not recv2's psk".to_vec(),
        request("video", None, None),
    ) {
        Err(JoinError::Closed(CloseReason::AuthenticationFailed)) => {}
        other => panic!("wrong PSK: {other:?}"),
    }
    audit_row(
        &w,
        &store,
        "recv2.gk",
        "AUTHENTICATION_FAILED: AUTH did not verify",
    );
    assert_eq!(
        refused(join_in(
            h2,
            p500,
            "extra.gk",
            psk_of("extra.gk"),
            request("video", None, None)
        )),
        NotifyType::RegistrationFailed
    );
    audit_row(
        &w,
        &store,
        "extra.gk",
        "REGISTRATION_FAILED: group full (capacity 3)",
    );
    let group =
        w.rt.block_on(store.group_by_name("video"))
            .unwrap()
            .unwrap();
    assert_eq!(w.rt.block_on(store.member_count(group.id)).unwrap(), 3);

    // A leave (GSA_REGISTRATION, Figure 8) frees the place; extra.gk then gets in.
    join_then_leave(h2, p500, "recv2.gk", "video");
    poll_until("recv2.gk to leave", Duration::from_secs(5), || {
        (w.rt.block_on(store.member_count(group.id)).unwrap() == 2).then_some(())
    })
    .unwrap();
    let left = audit_row(
        &w,
        &store,
        "recv2.gk",
        "left the group (REGISTRATION_FAILED)",
    );
    assert_eq!(left.event.outcome, AuditOutcome::Left);
    let extra = join_in(
        h2,
        p500,
        "extra.gk",
        psk_of("extra.gk"),
        request("video", None, None),
    )
    .expect("a place was freed");
    assert_eq!(key_table(&extra.keys), table);
    let ok = audit_row(&w, &store, "sender.gk", "Sender-IDs [0]");
    assert_eq!(ok.event.outcome, AuditOutcome::Registered);

    // `gcks status`: groups, members, Sender-IDs, audit; never key material.
    let status = w.cli(&["status", "--audit", "50"]);
    assert!(status.contains("video"), "{status}");
    assert!(status.contains("members 3/3"), "{status}");
    assert!(status.contains("Sender-IDs in use: 1 [0]"), "{status}");
    assert!(status.contains("refused"), "{status}");
    for (_, k, _) in &table {
        let hex: String = k.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!status.to_lowercase().contains(&hex), "status shows a key");
    }

    // kill -9 between registrations: the next registration of the sender gets a new
    // Sender-ID (never 0 again) and the same Rekey SA. Being the sender's second
    // registration, it gets a new TEK with sequential numbers (the group's only sender,
    // `--sn auto`), committed before the answer: a TEK with sequential numbers goes to one
    // sender registration (RFC 9838 4.4.2.1.3, docs/interop.md #65).
    gcks.kill9();
    let _gcks = w.serve(&[]);
    let again = join_in(
        h0,
        p500,
        "sender.gk",
        psk_of("sender.gk"),
        request("video", Some(2), None),
    )
    .expect("sender registers after the restart");
    assert_eq!(
        again.keys.sender_ids,
        vec![1, 2],
        "Sender-IDs continue after a crash"
    );
    let rekey_sa = |t: Vec<(u32, Vec<u8>, Vec<u8>)>| t.into_iter().find(|e| e.0 == 0);
    assert_eq!(
        rekey_sa(key_table(&again.keys)),
        rekey_sa(table.clone()),
        "Rekey SA unchanged"
    );
    assert_eq!(sender.keys.teks[0].sn, SnId::Seq32);
    assert_eq!(again.keys.teks.len(), 1);
    assert_eq!(again.keys.teks[0].sn, SnId::Seq32);
    assert_ne!(again.keys.teks[0].spi, tek_spi, "a new TEK (#65)");
    let stored = w.rt.block_on(store.group_state(group.id)).unwrap().unwrap();
    assert_eq!(stored.teks.len(), 1);
    assert_eq!(stored.teks[0].spi, again.keys.teks[0].spi);
    let sids: Vec<u32> =
        w.rt.block_on(store.sender_ids(group.id))
            .unwrap()
            .iter()
            .map(|s| s.sender_id)
            .collect();
    assert_eq!(sids, vec![0, 1, 2], "each value handed out once");
    w.rt.block_on(store.close());
    eprintln!(
        "registration scenario on {} took {:.1} s",
        if postgres { "PostgreSQL" } else { "SQLite" },
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn serve_on_sqlite_registers_members_in_namespaces_and_refuses_with_the_right_notify() {
    registration_scenario(false);
}

#[test]
fn serve_on_postgresql_registers_members_in_namespaces_and_refuses_with_the_right_notify() {
    registration_scenario(true);
}

/// A hand-built IKE_SA_INIT our GCKS accepts (it insists on a KWA transform, RFC 9838
/// 4.5.4).
fn init_probe() -> Vec<u8> {
    let mut r = ikeprobe::SaInitRequest::aes256gcm_sha256_x25519();
    r.transforms.push(ikeprobe::Transform {
        kind: 13,
        id: 3,
        key_len: None,
    });
    r.encode()
}

const COOKIE: u16 = 16390;

#[test]
fn an_init_flood_from_many_sources_draws_cookies_and_a_member_still_registers() {
    let Some(w) = World::new("gkfl", false) else {
        return;
    };
    let t0 = Instant::now();
    provision(&w);
    let gcks = w.serve(&["--cookie-threshold", "10"]);
    // The flooder: one namespace holding 150 more addresses of the LAN.
    let flood = &w.hosts[2];
    let ifname = w.links[2].ifname.clone();
    let subnet = w.bridge.subnet();
    let sources: Vec<Ipv4Addr> = (100u8..250).map(|h| subnet.v4(h)).collect();
    let batch: String = sources
        .iter()
        .map(|a| format!("addr add {a}/24 dev {ifname}\n"))
        .collect();
    let batch_file = w.write("flood.batch", batch.as_bytes());
    netns::run(Command::new("ip").args(["-n", flood.name(), "-batch", &batch_file])).unwrap();
    let to = w.addr(500);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (counts_tx, counts_rx) = mpsc::channel();
    let stop_flood = stop.clone();
    let flooder = flood
        .spawn_thread(move || {
            let socks: Vec<std::net::UdpSocket> = sources
                .iter()
                .map(|a| std::net::UdpSocket::bind(SocketAddr::new(IpAddr::V4(*a), 500)).unwrap())
                .collect();
            for s in &socks {
                s.send_to(&init_probe(), to).unwrap();
            }
            let (mut answered, mut cookies) = (0, 0);
            let mut buf = vec![0u8; 4096];
            for s in &socks {
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                if let Ok((n, _)) = s.recv_from(&mut buf) {
                    answered += 1;
                    if ikeprobe::ParsedIke::parse(&buf[..n])
                        .is_ok_and(|p| p.notify_types().contains(&COOKIE))
                    {
                        cookies += 1;
                    }
                }
            }
            let _ = counts_tx.send((answered, cookies));
            // Then keep flooding (fresh SPIs, as fast as the sockets go; the GCKS's
            // per-source rate limit drops most) until the member is done.
            let mut sent = socks.len();
            for s in &socks {
                s.set_nonblocking(true).unwrap();
            }
            while !stop_flood.load(std::sync::atomic::Ordering::Relaxed) && sent < 2_000_000 {
                for s in &socks {
                    let _ = s.send_to(&init_probe(), to);
                    while s.recv_from(&mut buf).is_ok() {}
                }
                sent += socks.len();
            }
            sent
        })
        .unwrap();
    let (answered, cookies) = counts_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    // Every spoofed source is answered: the first ten with an IKE_SA_INIT response (they
    // stay half-open), the rest with a COOKIE (RFC 7296 2.6).
    assert_eq!(answered, 150, "every source got an answer");
    assert!(cookies >= 130, "cookies: {cookies} of 150");
    // A real member goes through the cookie exchange and registers while the flood goes on.
    let m = join_in(
        &w.hosts[0],
        to,
        "recv1.gk",
        psk_of("recv1.gk"),
        request("video", None, None),
    )
    .expect("a member registers during the flood");
    assert_eq!(m.keys.teks.len(), 1);
    // ... after a COOKIE of its own (the GCKS logs each one at debug level).
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flooder.join().unwrap();
    let member_ip = w.links[0].v4.to_string();
    let log = gcks.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("answered with a COOKIE") && l.contains(&member_ip)),
        "the member was challenged"
    );
    eprintln!(
        "flood test: {sent} IKE_SA_INIT sent from 150 sources; first burst {answered} \
         answers, {cookies} COOKIEs; member registered; {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

// ----------------------------------------------------------------- multicast rekey

/// A receiver's membership of `group` at `gcks` with the PSK of `id`.
fn membership(group: &str, gcks: SocketAddr, id: &str) -> MembershipConfig {
    MembershipConfig {
        group: group.into(),
        group_id: IdPayload::key_id(group.as_bytes().to_vec()),
        gcks,
        ike: member_ike(id, &psk_of(id)),
        sender_ids: None,
        receive: false,
        auth_kind: "psk",
    }
}

/// A member runtime in `ns` (multicast on its LAN address `lan`) that joins "live" and
/// returns the SPI of the TEK it registered with and its next two GSA_REKEY events.
fn rekeyed_member(
    ns: &Netns,
    lan: Ipv4Addr,
    gcks: SocketAddr,
    id: &'static str,
) -> std::thread::JoinHandle<(String, Vec<AgentEvent>)> {
    ns.spawn_thread(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let config = RuntimeConfig {
                multicast_v4_interface: Some(lan),
                ..RuntimeConfig::default()
            };
            let (agent, _) = runtime::spawn(
                Arc::new(Engine::default()),
                Arc::new(NoDataPlane),
                config,
                Arc::new(SystemClock),
            );
            let mut events = agent.subscribe().await.unwrap();
            let g = agent
                .join(membership("live", gcks, id), Some(Duration::from_secs(40)))
                .await
                .unwrap();
            assert_eq!(g.state, "up", "{g:?}");
            let mut rekeys = Vec::new();
            while rekeys.len() < 2 {
                match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
                    Ok(Some(e @ AgentEvent::Rekeyed { .. })) => rekeys.push(e),
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("{id}: agent stopped"),
                    Err(_) => panic!("{id}: no GSA_REKEY within 30 s; got {rekeys:?}"),
                }
            }
            (g.teks[0].spi.clone(), rekeys)
        })
    })
    .unwrap()
}

/// Group "live"'s AES-GCM-256 TEK to `dst`, and its members live1.gk and live2.gk (PSK).
fn live_tek_and_members(w: &World, dst: &str) {
    w.cli(&[
        "group",
        "add-tek",
        "live",
        "--dst",
        dst,
        "--cipher",
        "aes-gcm-256",
    ]);
    for id in ["live1.gk", "live2.gk"] {
        let psk = w.write(&format!("{id}.psk"), &psk_of(id));
        w.cli(&["member", "add", id, "--psk-file", &psk]);
        w.cli(&["authorize", id, "live"]);
    }
}

/// live1.gk (over port 848) and live2.gk (over 500) in two hosts, each until its second
/// rekey: the TEK it registered with and its `Rekeyed` events ([`rekeyed_member`]).
fn live_members(w: &World) -> Vec<(String, Vec<AgentEvent>)> {
    [
        rekeyed_member(&w.hosts[0], w.links[0].v4, w.addr(848), "live1.gk"),
        rekeyed_member(&w.hosts[1], w.links[1].v4, w.addr(500), "live2.gk"),
    ]
    .into_iter()
    .map(|h| h.join().expect("member thread"))
    .collect()
}

/// `gcks serve` renews the TEK of a multicast group before the members' soft lifetime and
/// pushes it, signed, to the group's rekey address across the LAN (RFC 9838 2.4.1): both
/// members install the same new TEK and delete the old one, twice in a row (Message IDs 0
/// and 1), without re-registering.
#[test]
fn serve_pushes_tek_renewals_to_members_on_the_lan() {
    let Some(w) = World::new("gkrk", false) else {
        return;
    };
    w.cli(&["signing-key", "generate", "live-rekey"]);
    w.cli(&[
        "group",
        "create",
        "live",
        "--rekey-dst",
        "239.0.0.19:8848",
        "--signing-key",
        "live-rekey",
        // Pushed with 2 s left, at 75 % (members re-register at 80 to 90 %).
        "--tek-lifetime",
        "8",
        "--sender-id-bits",
        "8",
    ]);
    live_tek_and_members(&w, "239.0.0.20:5004");
    let gcks_ip = w.gcks_ip.to_string();
    let server = w.serve(&[
        "--rekey-tick-ms",
        "200",
        "--rekey-copies",
        "2",
        "--rekey-spacing-ms",
        "100",
        "--multicast-if",
        &gcks_ip,
        "--multicast-ttl",
        "1",
    ]);
    let results = live_members(&w);
    let (registered, first) = (&results[0].0, &results[0].1);
    for (tek, rekeys) in &results {
        // Both registered before the first renewal, and see the same two rekeys.
        assert_eq!(tek, registered);
        assert_eq!(rekeys, first);
    }
    let installed = |e: &AgentEvent| match e {
        AgentEvent::Rekeyed {
            message_id,
            installed,
            deleting,
            new_rekey_sa,
            ..
        } => (
            *message_id,
            installed.clone(),
            deleting.clone(),
            *new_rekey_sa,
        ),
        other => panic!("{other:?}"),
    };
    let (m0, new0, del0, kek0) = installed(&first[0]);
    let (m1, new1, del1, kek1) = installed(&first[1]);
    // Message IDs 0 then 1 over the registration's Rekey SA: pushed, not re-registered
    // (a re-registration shows as an event without a Message ID).
    assert_eq!((m0, m1), (Some(0), Some(1)), "{first:?}");
    assert_eq!(del0, vec![registered.clone()]);
    assert_eq!(new0.len(), 1);
    assert_ne!(&new0[0], registered);
    assert_eq!((del1, new1.len()), (new0.clone(), 1));
    assert!(!kek0 && !kek1);
    // The log line follows the first copy, which the members may have read first.
    let sent = || server.log_text().matches("GSA_REKEY sent").count();
    let _ = poll_until("two GSA_REKEY in the log", Duration::from_secs(10), || {
        (sent() >= 2).then_some(())
    });
    assert_eq!(sent(), 2, "{}", server.log_text());
}

/// `gcks serve` with a group rekeyed in-band (RFC 9838 2.4.2): the members' registration
/// IKE SAs outlive `--ike-idle`, and each TEK renewal reaches both members over their own
/// IKE SA as a GSA_INBAND_REKEY (an event without a Message ID, no registration), twice in
/// a row, both members holding the same new TEK each time.
#[test]
fn serve_rekeys_an_inband_group_over_the_members_ike_sas() {
    let Some(w) = World::new("gkib", false) else {
        return;
    };
    w.cli(&[
        "group",
        "create",
        "live",
        "--rekey",
        "inband",
        // Renewed and pushed with 2 s left.
        "--tek-lifetime",
        "8",
        "--sender-id-bits",
        "8",
    ]);
    live_tek_and_members(&w, "239.0.0.23:5004");
    // The GCKS also rekeys each member's IKE SA every 3 s (RFC 7296 2.8), so pushes go
    // over rekeyed IKE SAs, wrapped with each new SA's GSK_w (RFC 9838 3.1.1), and may
    // cross a rekey on the wire.
    let server = w.serve(&[
        "--rekey-tick-ms",
        "200",
        "--ike-rekey-time",
        "3",
        "--ike-rekey-jitter",
        "0",
        "--ike-lifetime",
        "60",
    ]);
    let results = live_members(&w);
    let registered = &results[0].0;
    let mut held = registered.clone();
    for i in 0..2 {
        let mut new = None;
        for (tek, rekeys) in &results {
            assert_eq!(tek, registered);
            match &rekeys[i] {
                AgentEvent::Rekeyed {
                    message_id,
                    installed,
                    deleting,
                    new_rekey_sa,
                    ..
                } => {
                    // In-band: no Rekey SA, no Message ID (a GSA_REKEY would have one).
                    assert_eq!((*message_id, *new_rekey_sa), (None, false), "{rekeys:?}");
                    assert_eq!(installed.len(), 1, "{rekeys:?}");
                    assert!(deleting.contains(&held), "{rekeys:?}");
                    assert_eq!(
                        new.get_or_insert_with(|| installed[0].clone()),
                        &installed[0]
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        let new = new.unwrap();
        assert_ne!(new, held);
        held = new;
    }
    // Each push went to both members, over the IKE SAs kept past --ike-idle (2 s).
    let pushes = || {
        server
            .log_text()
            .lines()
            .filter(|l| l.contains("GSA_INBAND_REKEY sent") && l.contains("members=2"))
            .count()
    };
    let _ = poll_until(
        "two in-band pushes in the log",
        Duration::from_secs(10),
        || (pushes() >= 2).then_some(()),
    );
    // Both members' IKE SAs were rekeyed by then (the second push comes after 8 s).
    let rekeyed = server
        .log_text()
        .lines()
        .filter(|l| l.contains("IKE SA rekeyed"))
        .count();
    assert!(rekeyed >= 2, "{}", server.log_text());
    assert!(
        !server
            .log_text()
            .contains("closing the idle registration IKE SA"),
        "{}",
        server.log_text()
    );
}

/// RFC 9838 4.4.2 (R063): the KEK policy's source selector names "a single IP address,
/// an IP protocol (assumed to be UDP) and a single port the GSA_REKEY messages will be
/// originated from". A group created with `--rekey-src-port` and no `--rekey-src`, a
/// `gcks serve` without `--multicast-if`: GSA_REKEY leaves from a socket of the rekey
/// sender's own bound to the wildcard address and that port, so the address is the one
/// the route toward the rekey destination gives (the GCKS's LAN address). The member
/// registers with exactly that address and port, and the GSA_REKEY it then receives on
/// the group comes from there.
#[test]
fn the_kek_source_selector_is_the_routed_address_and_the_port_gsa_rekey_comes_from() {
    use gikev2_proto::wire::TrafficSelector;
    let Some(w) = World::new("gksrc", false) else {
        return;
    };
    w.cli(&["signing-key", "generate", "src-rekey"]);
    w.cli(&[
        "group",
        "create",
        "src",
        "--rekey-dst",
        "239.0.0.21:8850",
        "--rekey-src-port",
        "8849",
        "--signing-key",
        "src-rekey",
        // Pushed with 2 s left.
        "--tek-lifetime",
        "8",
        "--sender-id-bits",
        "8",
    ]);
    w.cli(&[
        "group",
        "add-tek",
        "src",
        "--dst",
        "239.0.0.22:5004",
        "--cipher",
        "aes-gcm-256",
    ]);
    let id = "src1.gk";
    let psk = w.write(&format!("{id}.psk"), &psk_of(id));
    w.cli(&["member", "add", id, "--psk-file", &psk]);
    w.cli(&["authorize", id, "src"]);
    let server = w.serve(&["--rekey-tick-ms", "200", "--multicast-ttl", "1"]);

    // A socket on the rekey group in the member's namespace: the first GSA_REKEY datagram
    // and where it came from.
    let lan = w.links[0].v4;
    let (ready_tx, ready_rx) = mpsc::channel();
    let heard = w.hosts[0]
        .spawn_thread(move || {
            use socket2::{Domain, Protocol, Socket, Type};
            let group: SocketAddr = "239.0.0.21:8850".parse().unwrap();
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
            s.set_reuse_address(true).unwrap();
            s.bind(&group.into()).unwrap();
            s.join_multicast_v4(&Ipv4Addr::new(239, 0, 0, 21), &lan)
                .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let s: std::net::UdpSocket = s.into();
            ready_tx.send(()).unwrap();
            let mut buf = vec![0u8; 65_535];
            let (n, from) = s.recv_from(&mut buf).expect("a GSA_REKEY within 30 s");
            buf.truncate(n);
            (buf, from)
        })
        .unwrap();
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let reg = join_in(
        &w.hosts[0],
        w.addr(848),
        id,
        psk_of(id),
        request("src", None, None),
    )
    .unwrap();
    let kek = reg.keys.rekey.expect("a Rekey SA");
    assert_eq!(
        kek.src,
        TrafficSelector::single(IpAddr::V4(w.gcks_ip), 17, Some(8849)),
        "one address (the routed one), UDP, one port"
    );
    let (datagram, from) = heard.join().expect("listener thread");
    assert_eq!(from, SocketAddr::new(IpAddr::V4(w.gcks_ip), 8849));
    assert_eq!(
        datagram.get(..16),
        Some(&kek.spi[..]),
        "a GSA_REKEY over the registration's Rekey SA"
    );
    // The log line follows the first copy.
    poll_until("the GSA_REKEY in the log", Duration::from_secs(10), || {
        server.log_text().contains("GSA_REKEY sent").then_some(())
    })
    .unwrap();
    assert!(
        server
            .log_text()
            .contains("GSA_REKEY source (the KEK policy's source selector) group=src"),
        "resolved once, logged"
    );
}

// ----------------------------------------------------------------- NAT traversal

/// `Ok` when `nft` runs (the NAT test's router masquerades with it).
fn nft_probe() -> Result<(), String> {
    Command::new("nft")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()
        .filter(|s| s.success())
        .map(|_| ())
        .ok_or_else(|| "nft not found (apt-get install nftables)".into())
}

/// A member runtime in `ns` that joins `groups`, then holds them until `stop` fires;
/// returns each group's status right after joining.
fn held_member(
    ns: &Netns,
    lan: Ipv4Addr,
    gcks: SocketAddr,
    id: &'static str,
    groups: &'static [&'static str],
    keepalive: Duration,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> std::thread::JoinHandle<Vec<GroupStatus>> {
    ns.spawn_thread(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut config = RuntimeConfig {
                multicast_v4_interface: Some(lan),
                ..RuntimeConfig::default()
            };
            config.agent.nat_keepalive = keepalive;
            let (agent, _) = runtime::spawn(
                Arc::new(Engine::default()),
                Arc::new(NoDataPlane),
                config,
                Arc::new(SystemClock),
            );
            let mut states = Vec::new();
            for g in groups {
                let s = agent
                    .join(membership(g, gcks, id), Some(Duration::from_secs(40)))
                    .await
                    .unwrap();
                states.push(s);
            }
            let _ = stop.await;
            states
        })
    })
    .unwrap()
}

/// R002 (RFC 9838 2.1.1: RFC 7296 2.23's NAT traversal MUST be honored for the
/// registration IKE SA). A member in a home network behind a masquerading router
/// registers to `gcks serve` across the router's LAN. Seen at the GCKS (a capture of
/// every UDP datagram): only the router's address; each of the member's IKE SAs starts
/// with IKE_SA_INIT on port 848 and moves to port 4500 for GSA_AUTH (the member detected
/// the NAT); the GCKS's own request, the INFORMATIONAL Delete of an idle registration SA,
/// goes from 4500 to the mapping the member's GSA_AUTH came from and is answered through
/// the NAT; the member keeps its in-band group's IKE SA mapped with NAT-keepalives to
/// 4500 (RFC 3948 4), and the GCKS's GSA_INBAND_REKEY of that group's renewed TEK goes to
/// that mapping from 4500 and is answered through the NAT (2.4.2). The keys equal those of
/// a member on the LAN without a NAT, whose IKE SA stays on port 848.
#[test]
fn a_member_behind_a_nat_moves_to_port_4500_and_the_gcks_reaches_it_there() {
    let Some(w) = World::new("gknat", false) else {
        return;
    };
    if gate::require("nftables", nft_probe()).is_none()
        || gate::require("packet capture", gikev2_tests::capture::probe()).is_none()
    {
        return;
    }
    w.cli(&[
        "group",
        "create",
        "natm",
        "--rekey-dst",
        "239.0.0.21:8848",
        "--implicit-auth",
        "--sender-id-bits",
        "8",
    ]);
    w.cli(&[
        "group",
        "create",
        "nati",
        "--rekey",
        "inband",
        // Renewed and pushed in-band with 2 s left.
        "--tek-lifetime",
        "8",
        "--sender-id-bits",
        "8",
    ]);
    for g in ["natm", "nati"] {
        w.cli(&[
            "group",
            "add-tek",
            g,
            "--dst",
            "239.0.0.22:5004",
            "--cipher",
            "aes-gcm-256",
        ]);
    }
    for id in ["home.gk", "direct.gk"] {
        let psk = w.write(&format!("{id}.psk"), &psk_of(id));
        w.cli(&["member", "add", id, "--psk-file", &psk]);
        w.cli(&["authorize", id, "natm"]);
    }
    w.cli(&["authorize", "home.gk", "nati"]);

    // hosts[2] routes between its LAN side (the bridge) and a home network, masquerading.
    let router = &w.hosts[2];
    let wan = w.links[2].v4;
    let home = Netns::new("gknathome").unwrap();
    let (lan_side, inside) = netns::veth(router, &home, &netns::Subnet::unique()).unwrap();
    home.ip(&["route", "add", "default", "via", &lan_side.v4.to_string()])
        .unwrap();
    router
        .exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
        .unwrap();
    let rules = w.write(
        "nat.nft",
        format!(
            "table ip nat {{\n  chain post {{\n    type nat hook postrouting priority 100;\n    \
             ip saddr {} oifname \"{}\" masquerade\n  }}\n}}\n",
            inside.v4, w.links[2].ifname
        )
        .as_bytes(),
    );
    router.exec("nft", &["-f", &rules]).unwrap();

    let cap = gikev2_tests::capture::Capture::start(&w.gcks_ns, "any", "udp").unwrap();
    let _server = w.serve(&[
        "--listen",
        &format!("{}:4500", w.gcks_ip),
        "--rekey-tick-ms",
        "200",
    ]);
    let direct = join_in(
        &w.hosts[0],
        w.addr(848),
        "direct.gk",
        psk_of("direct.gk"),
        request("natm", None, None),
    )
    .unwrap();
    let natted = join_in(
        &home,
        w.addr(848),
        "home.gk",
        psk_of("home.gk"),
        request("natm", None, None),
    )
    .unwrap();
    assert_eq!(key_table(&natted.keys), key_table(&direct.keys));
    // The runtime holds both groups: natm's IKE SA is closed by the GCKS after
    // --ike-idle (2 s); nati's stays open (in-band rekey) and is kept mapped.
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let member = held_member(
        &home,
        inside.v4,
        w.addr(848),
        "home.gk",
        &["natm", "nati"],
        Duration::from_millis(300),
        stopped,
    );
    // By the time nati's TEK is renewed and pushed in-band (6 s after it was created) and
    // the member answered: the idle Deletes of join_in's SA (whose member is gone) and of
    // the runtime's natm SA and the runtime's answer (INFORMATIONAL); keepalives.
    let decode_848 = vec!["-d".to_string(), "udp.port==848,isakmp".to_string()];
    let pcap = cap
        .stop_after_count(
            "isakmp.exchangetype == 42",
            2,
            Duration::from_secs(40),
            &decode_848,
        )
        .unwrap();
    let _ = stop.send(());
    // The runtime's status tells the operator: behind a NAT, IKE moved to 4500.
    let gcks_4500 = w.addr(4500).to_string();
    for g in member.join().unwrap() {
        assert_eq!(g.state, "up", "{g:?}");
        let ike = g.ike_sa.as_ref().expect("the IKE SA right after joining");
        assert_eq!(ike.nat.as_deref(), Some("member"), "{g:?}");
        assert_eq!(ike.remote, gcks_4500, "{g:?}");
    }

    let rows = gikev2_tests::capture::tshark_fields(
        &pcap,
        "udp",
        &[
            "ip.src",
            "udp.srcport",
            "ip.dst",
            "udp.dstport",
            "udp.length",
            "isakmp.exchangetype",
            "isakmp.flag_r",
            "isakmp.ispi",
        ],
        &decode_848,
    )
    .unwrap();
    let (wan, gcks, lan0) = (
        wan.to_string(),
        w.gcks_ip.to_string(),
        w.links[0].v4.to_string(),
    );
    #[derive(Debug)]
    struct Row {
        src: String,
        sport: u16,
        dst: String,
        dport: u16,
        len: u16,
        exchange: Option<u8>,
        response: bool,
        spi: String,
    }
    let rows: Vec<Row> = rows
        .iter()
        .map(|r| {
            let c = |i: usize| r.get(i).map(String::as_str).unwrap_or("");
            Row {
                src: c(0).into(),
                sport: c(1).parse().unwrap(),
                dst: c(2).into(),
                dport: c(3).parse().unwrap(),
                len: c(4).parse().unwrap(),
                exchange: c(5).split(',').next().and_then(|e| e.parse().ok()),
                response: c(6).starts_with('1') || c(6).starts_with('T'),
                spi: c(7).split(',').next().unwrap_or("").into(),
            }
        })
        .collect();
    // The home address never reaches the GCKS: the router rewrote it.
    let inside = inside.v4.to_string();
    assert!(
        rows.iter().all(|r| r.src != inside && r.dst != inside),
        "{rows:?}"
    );
    let from_wan = |r: &&Row| r.src == wan && r.dst == gcks;
    // Each SA of the home member: IKE_SA_INIT to 848, GSA_AUTH to 4500 from another port.
    let inits: Vec<&Row> = rows
        .iter()
        .filter(from_wan)
        .filter(|r| r.exchange == Some(34) && !r.response)
        .collect();
    assert_eq!(inits.len(), 3, "join_in + the runtime's two: {rows:?}");
    let mut moved_to = Vec::new();
    for init in &inits {
        assert_eq!(init.dport, 848);
        let auth = rows
            .iter()
            .filter(from_wan)
            .find(|r| r.spi == init.spi && r.exchange == Some(39))
            .unwrap_or_else(|| panic!("no GSA_AUTH for {}: {rows:?}", init.spi));
        assert_eq!(auth.dport, 4500, "{auth:?}");
        assert_ne!(auth.sport, init.sport, "a new NAT mapping for the new flow");
        moved_to.push((init.spi.clone(), auth.sport));
    }
    // The GCKS's Deletes of idle SAs go to each SA's 4500 mapping; the runtime answers.
    let informational: Vec<&Row> = rows.iter().filter(|r| r.exchange == Some(37)).collect();
    let deletes: Vec<&&Row> = informational
        .iter()
        .filter(|r| r.src == gcks && r.dst == wan && !r.response)
        .collect();
    assert!(
        !deletes.is_empty(),
        "no INFORMATIONAL request to the home member: {rows:?}"
    );
    let mapping = |spi: &str| moved_to.iter().find(|(s, _)| s == spi).map(|(_, p)| *p);
    for d in &deletes {
        assert_eq!((d.sport, Some(d.dport)), (4500, mapping(&d.spi)), "{d:?}");
    }
    assert!(
        informational.iter().any(|r| r.response
            && r.src == wan
            && r.dport == 4500
            && Some(r.sport) == mapping(&r.spi)),
        "the member answered a Delete through the NAT: {rows:?}"
    );
    // The in-band rekey of nati (RFC 9838 2.4.2), a request of the GCKS like the Delete:
    // from 4500 to the mapping of the SA's GSA_AUTH, answered through the NAT.
    let inband: Vec<&Row> = rows.iter().filter(|r| r.exchange == Some(42)).collect();
    let push = inband
        .iter()
        .find(|r| r.src == gcks && r.dst == wan && !r.response)
        .unwrap_or_else(|| panic!("no GSA_INBAND_REKEY to the home member: {rows:?}"));
    assert_eq!(
        (push.sport, Some(push.dport)),
        (4500, mapping(&push.spi)),
        "{push:?}"
    );
    assert!(
        inband.iter().any(|r| r.response
            && r.src == wan
            && r.dport == 4500
            && r.spi == push.spi
            && Some(r.sport) == mapping(&r.spi)),
        "the member answered the GSA_INBAND_REKEY through the NAT: {rows:?}"
    );
    // NAT-keepalives (one octet) from one of the member's 4500 mappings.
    let keepalives: Vec<&Row> = rows
        .iter()
        .filter(|r| r.len == 9 && r.dport == 4500 && r.exchange.is_none())
        .collect();
    assert!(keepalives.len() >= 2, "{rows:?}");
    assert!(
        keepalives
            .iter()
            .all(|k| k.src == wan && moved_to.iter().any(|(_, p)| *p == k.sport))
    );
    // The member on the LAN saw no NAT: every datagram stays on 848.
    let direct_rows: Vec<&Row> = rows
        .iter()
        .filter(|r| r.src == lan0 || r.dst == lan0)
        .collect();
    assert!(!direct_rows.is_empty());
    assert!(
        direct_rows
            .iter()
            .all(|r| (r.src == lan0 && r.dport == 848) || (r.dst == lan0 && r.sport == 848)),
        "{direct_rows:?}"
    );
}
