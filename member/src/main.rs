//! `gm`: the G-IKEv2 member agent.
//!
//! - `gm daemon --socket PATH`: the long-running agent with its control socket.
//! - `gm join ...`: asks the daemon to join a group; with `--foreground`, runs that one
//!   membership in this process (no daemon) until interrupted.
//! - `gm leave --group ID`, `gm status [--json]`: thin clients of the daemon.
//!
//! The clients only format what the daemon says (STYLE S6).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use gikev2_esp::Engine;
use gikev2_member::control::{self, Client, ServerMessage};
use gikev2_member::runtime::{self, RuntimeConfig, SystemClock};
use gikev2_member::{AgentConfig, DataPlane, GroupStatus, JoinArgs, NoDataPlane, Status};
use serde_json::{Value, json};

const DEFAULT_SOCKET: &str = "/run/gm.sock";

#[derive(Parser, Debug)]
#[command(name = "gm", version, about = "G-IKEv2 group member agent (RFC 9838)")]
struct Cli {
    /// Log more (repeat for debug output).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the member daemon and its control socket.
    Daemon(DaemonArgs),
    /// Join a group (through the daemon, or in this process with --foreground).
    Join(Box<JoinCli>),
    /// Leave a group.
    Leave {
        /// The group, as given to `gm join --group`.
        #[arg(long)]
        group: String,
        /// The daemon's control socket (`gm daemon --socket`).
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Show groups, SPIs, lifetimes, Sender-IDs and states (never keys).
    Status {
        /// Print the daemon's JSON as it is.
        #[arg(long)]
        json: bool,
        /// The daemon's control socket (`gm daemon --socket`).
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Print the daemon's events (JSON lines) until interrupted.
    Events {
        /// The daemon's control socket (`gm daemon --socket`).
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

#[derive(Args, Debug)]
struct DaemonArgs {
    /// The control socket to create.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// IPv4 address of the interface to join multicast rekey groups on.
    #[arg(long)]
    multicast_if: Option<Ipv4Addr>,
    /// Most random delay before a re-registration, in milliseconds (RFC 9838 2.4.3).
    #[arg(long, default_value_t = 5000)]
    reregister_jitter_ms: u64,
    #[command(flatten)]
    dp: DataPlaneArgs,
}

/// Which ESP data plane carries the groups' traffic.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum DataPlaneKind {
    /// No data plane: SAs live in the engine only.
    None,
    /// A TUN interface and raw ESP sockets (Linux; root or CAP_NET_ADMIN + CAP_NET_RAW).
    Tun,
}

#[derive(Args, Debug, Clone)]
struct DataPlaneArgs {
    /// The ESP data plane: `tun` seals what is routed into the TUN and delivers what opens.
    #[arg(long, value_enum, default_value = "none")]
    dataplane: DataPlaneKind,
    /// Name of the TUN interface.
    #[arg(long, default_value = "gmtun0")]
    tun_name: String,
    /// MTU of the TUN interface (largest plaintext packet).
    #[arg(long, default_value_t = 1400)]
    tun_mtu: u16,
    /// Outer TTL / Hop Limit of ESP packets (default: the inner one, RFC 5374 3.1).
    #[arg(long)]
    esp_ttl: Option<u8>,
    /// Interface for IPv6 group joins and multicast ESP (name).
    #[arg(long)]
    multicast_if6: Option<String>,
}

/// Starts the data plane the flags ask for, around `engine`.
fn data_plane(
    a: &DataPlaneArgs,
    engine: &Arc<Engine>,
    multicast_if: Option<Ipv4Addr>,
) -> Result<Arc<dyn DataPlane>, String> {
    match a.dataplane {
        DataPlaneKind::None => Ok(Arc::new(NoDataPlane)),
        #[cfg(target_os = "linux")]
        DataPlaneKind::Tun => {
            let multicast_if_v6 = match &a.multicast_if6 {
                Some(name) => ifindex_of(name)?,
                None => 0,
            };
            let cfg = gikev2_esp::dataplane::Config {
                tun_name: a.tun_name.clone(),
                mtu: a.tun_mtu,
                ttl: a.esp_ttl,
                multicast_if_v4: multicast_if,
                multicast_if_v6,
                ..Default::default()
            };
            let dp = gikev2_member::dataplane::TunDataPlane::start(engine.clone(), cfg)
                .map_err(|e| e.to_string())?;
            eprintln!(
                "gm: data plane on {} (index {})",
                dp.inner().tun_name(),
                dp.inner().tun_index()
            );
            Ok(Arc::new(dp))
        }
        #[cfg(not(target_os = "linux"))]
        DataPlaneKind::Tun => Err("dataplane: tun needs Linux".into()),
    }
}

/// An interface's index from sysfs (no ioctl needed).
#[cfg(target_os = "linux")]
fn ifindex_of(name: &str) -> Result<u32, String> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("multicast_if6: no interface {name:?}"))
}

#[derive(Args, Debug)]
struct JoinCli {
    /// The group (sent as ID_KEY_ID).
    #[arg(long)]
    group: String,
    /// The GCKS: host[:port] (port 500 by default).
    #[arg(long)]
    gcks: String,
    /// File holding the pre-shared key.
    #[arg(long, conflicts_with = "key")]
    psk_file: Option<PathBuf>,
    /// Our PKCS#8 private key (PEM or DER).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Our certificate chain (PEM or DER); without it the key is a raw public key.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// CA certificates the GCKS's certificate must chain to.
    #[arg(long, conflicts_with = "gcks_key")]
    ca: Option<PathBuf>,
    /// The GCKS's raw public key (SubjectPublicKeyInfo, PEM or DER).
    #[arg(long)]
    gcks_key: Option<PathBuf>,
    /// The identity the GCKS must present.
    #[arg(long)]
    gcks_id: Option<String>,
    /// Send to the group, asking for N Sender-IDs: one per encryption module sealing the
    /// group's traffic (RFC 9838 2.5.1); the TUN data plane has one.
    #[arg(long, value_name = "N")]
    sender: Option<u32>,
    /// As a sender, also receive the group's traffic.
    #[arg(long, requires = "sender")]
    receive: bool,
    /// Our identity: an IP address, user@domain or an FQDN (default: the host name).
    #[arg(long)]
    id: Option<String>,
    /// File holding a post-quantum preshared key (RFC 8784) for the GCKS, at least 32
    /// octets: mixed into the registration IKE SA's keys, so the group keys resist a
    /// quantum computer.
    #[arg(long, requires = "ppk_id")]
    ppk_file: Option<PathBuf>,
    /// The PPK's identifier (PPK_ID), as the GCKS knows it.
    #[arg(long, requires = "ppk_file")]
    ppk_id: Option<String>,
    /// Fail rather than register without the PPK (no NO_PPK_AUTH fallback).
    #[arg(long, requires = "ppk_file")]
    ppk_required: bool,
    /// Offer X25519 with ML-KEM-768 (RFC 9370, IKE_INTERMEDIATE) first, so the
    /// registration IKE SA itself resists a quantum computer (groups created with
    /// --require-pq-ike need it).
    #[arg(long)]
    ml_kem: bool,
    /// Seconds after which the member rekeys a registration IKE SA it keeps (in-band
    /// groups, groups without a Rekey SA) with CREATE_CHILD_SA (RFC 7296 2.8), less a
    /// random part of --ike-rekey-jitter; 0: the member never starts one. Default 14400
    /// (4 h).
    #[arg(long, value_name = "SECS")]
    ike_rekey_time: Option<u64>,
    /// Largest random number of seconds taken off --ike-rekey-time. Default a tenth of it.
    #[arg(long, value_name = "SECS")]
    ike_rekey_jitter: Option<u64>,
    /// Seconds after which an IKE SA no rekey replaced is deleted; 0: no limit. Default
    /// --ike-rekey-time plus a tenth.
    #[arg(long, value_name = "SECS")]
    ike_lifetime: Option<u64>,
    /// Run this membership here, without a daemon, until interrupted.
    #[arg(long)]
    foreground: bool,
    /// With --foreground: IPv4 address of the interface to join multicast groups on (rekey
    /// and data) and to send multicast ESP from.
    #[arg(long, requires = "foreground")]
    multicast_if: Option<Ipv4Addr>,
    /// With --foreground: the data plane of this process (the daemon has its own).
    #[command(flatten)]
    dp: DataPlaneArgs,
    /// Do not wait for the registration outcome.
    #[arg(long)]
    no_wait: bool,
    /// Seconds to wait for the registration outcome.
    #[arg(long, default_value_t = 30)]
    wait: u64,
    /// Print the group's state as JSON.
    #[arg(long)]
    json: bool,
    /// The daemon's control socket (`gm daemon --socket`).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
}

impl JoinCli {
    /// Paths are made absolute: the daemon reads them from its own working directory.
    fn args(&self) -> JoinArgs {
        let abs = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
        };
        JoinArgs {
            group: self.group.clone(),
            gcks: self.gcks.clone(),
            psk_file: abs(&self.psk_file),
            key: abs(&self.key),
            cert: abs(&self.cert),
            ca: abs(&self.ca),
            gcks_key: abs(&self.gcks_key),
            gcks_id: self.gcks_id.clone(),
            sender: self.sender,
            receive: self.receive,
            id: self.id.clone(),
            ppk_file: abs(&self.ppk_file),
            ppk_id: self.ppk_id.clone(),
            ppk_required: self.ppk_required,
            ml_kem: self.ml_kem,
            ike_rekey_time: self.ike_rekey_time,
            ike_rekey_jitter: self.ike_rekey_jitter,
            ike_lifetime: self.ike_lifetime,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        _ => tracing::Level::DEBUG,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gm: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gm: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cmd: Cmd) -> Result<(), String> {
    match cmd {
        Cmd::Daemon(d) => daemon(d).await,
        Cmd::Join(j) if j.foreground => foreground(*j).await,
        Cmd::Join(j) if j.dp.dataplane != DataPlaneKind::None => {
            Err("dataplane: only with --foreground (the daemon has its own --dataplane)".into())
        }
        Cmd::Join(j) => {
            let mut args = serde_json::to_value(j.args()).map_err(|e| e.to_string())?;
            let wait_ms = if j.no_wait { 0 } else { j.wait * 1000 };
            if let Some(o) = args.as_object_mut() {
                o.insert("wait_ms".into(), json!(wait_ms));
            }
            let reply = request(&j.socket, "join", args).await?;
            let g: GroupStatus = serde_json::from_value(reply).map_err(|e| e.to_string())?;
            if j.json {
                gikev2_member::outln!(
                    "{}",
                    serde_json::to_string_pretty(&g).map_err(|e| e.to_string())?
                );
            } else {
                print_group(&g);
            }
            // The wait ran out before the group came up: not a success, although the
            // daemon keeps the membership and keeps trying.
            if wait_ms > 0 && g.state != "up" {
                return Err(format!(
                    "{}: not up after {} s (state {}{}); the daemon keeps trying: `gm status` \
                     follows it, `gm leave --group {}` stops it",
                    g.group,
                    j.wait,
                    g.state,
                    g.last_error
                        .as_deref()
                        .map(|e| format!(", last error: {e}"))
                        .unwrap_or_default(),
                    g.group,
                ));
            }
            Ok(())
        }
        Cmd::Leave { group, socket } => {
            request(&socket, "leave", json!({ "group": group })).await?;
            gikev2_member::outln!("left {group}");
            Ok(())
        }
        Cmd::Status { json, socket } => {
            let reply = request(&socket, "status", Value::Null).await?;
            if json {
                gikev2_member::outln!(
                    "{}",
                    serde_json::to_string_pretty(&reply).map_err(|e| e.to_string())?
                );
            } else {
                let s: Status = serde_json::from_value(reply).map_err(|e| e.to_string())?;
                if s.groups.is_empty() {
                    gikev2_member::outln!("no groups");
                }
                for g in &s.groups {
                    print_group(g);
                }
                gikev2_member::outln!("engine: {} SAs", s.engine_sas);
            }
            Ok(())
        }
        Cmd::Events { socket } => {
            let mut c = Client::connect(&socket).await.map_err(|e| e.to_string())?;
            let r = c
                .call(&control::ClientMessage::EventRegister { events: Vec::new() })
                .await
                .map_err(|e| e.to_string())?;
            if r != ServerMessage::EventConfirm {
                return Err(format!("unexpected answer: {r:?}"));
            }
            loop {
                match c.next().await.map_err(|e| e.to_string())? {
                    ServerMessage::Event(e) => {
                        gikev2_member::outln!(
                            "{}",
                            serde_json::to_string(&e).map_err(|e| e.to_string())?
                        )
                    }
                    other => return Err(format!("unexpected message: {other:?}")),
                }
            }
        }
    }
}

async fn request(socket: &Path, command: &str, args: Value) -> Result<Value, String> {
    let mut c = Client::connect(socket).await.map_err(|e| e.to_string())?;
    match c.request(command, args).await.map_err(|e| e.to_string())? {
        ServerMessage::Response {
            ok: true, result, ..
        } => Ok(result.unwrap_or(Value::Null)),
        ServerMessage::Response { error, .. } => {
            Err(error.unwrap_or_else(|| "the daemon refused".into()))
        }
        ServerMessage::Unknown { command } => {
            Err(format!("the daemon does not know the command {command:?}"))
        }
        other => Err(format!("unexpected answer: {other:?}")),
    }
}

fn print_group(g: &GroupStatus) {
    gikev2_member::outln!(
        "{}: {} ({}, {} auth) via {}",
        g.group,
        g.state,
        g.role,
        g.auth,
        g.gcks
    );
    if !g.sender_ids.is_empty() {
        gikev2_member::outln!(
            "  sender IDs {:?} ({} bits)",
            g.sender_ids,
            g.sender_id_bits.unwrap_or(0)
        );
    }
    for r in &g.rekey_sas {
        gikev2_member::outln!(
            "  rekey SA {} on {} ({}){}, expires in {}",
            r.spi,
            r.listen,
            r.auth,
            if r.current { ", current" } else { "" },
            r.expires_in_s.map_or("-".into(), |s| format!("{s} s"))
        );
    }
    for t in &g.teks {
        gikev2_member::outln!(
            "  {} {} {} {} {} -> {} [{}] expires in {}, {} packets",
            t.protocol,
            t.spi,
            t.direction,
            t.algorithm,
            t.src,
            t.dst,
            t.state,
            t.expires_in_s.map_or("-".into(), |s| format!("{s} s")),
            t.packets
        );
    }
    if let Some(n) = &g.rejected_with {
        gikev2_member::outln!("  rejected the policy with {n}");
    }
    if let Some(e) = &g.last_error {
        gikev2_member::outln!("  last error: {e}");
    }
}

async fn daemon(d: DaemonArgs) -> Result<(), String> {
    if d.socket.exists() {
        // A stale socket of a previous run; a live daemon still answers on it.
        if tokio::net::UnixStream::connect(&d.socket).await.is_ok() {
            return Err(format!(
                "socket: a daemon is already listening on {}",
                d.socket.display()
            ));
        }
        std::fs::remove_file(&d.socket)
            .map_err(|e| format!("socket: {}: {e}", d.socket.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(&d.socket)
        .map_err(|e| format!("socket: {}: {e}", d.socket.display()))?;
    // Joins make the daemon read credential files: only its owner may ask.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("socket: {}: {e}", d.socket.display()))?;
    }
    let config = RuntimeConfig {
        agent: AgentConfig {
            reregister_jitter: Duration::from_millis(d.reregister_jitter_ms),
            ..AgentConfig::default()
        },
        multicast_v4_interface: d.multicast_if,
        ..RuntimeConfig::default()
    };
    // The data plane seals and opens with the engine the agent installs into.
    let engine = Arc::new(Engine::default());
    let dp = data_plane(&d.dp, &engine, d.multicast_if)?;
    let (agent, task) = runtime::spawn(engine, dp, config, Arc::new(SystemClock));
    let server = tokio::spawn(control::serve(listener, agent.clone()));
    eprintln!("gm: listening on {}", d.socket.display());
    let _ = tokio::signal::ctrl_c().await;
    let _ = agent.shutdown().await;
    server.abort();
    let _ = task.await;
    let _ = std::fs::remove_file(&d.socket);
    Ok(())
}

async fn foreground(j: JoinCli) -> Result<(), String> {
    let cfg = j.args().load().map_err(|e| e.to_string())?;
    let group = cfg.group.clone();
    let engine = Arc::new(Engine::default());
    let dp = data_plane(&j.dp, &engine, j.multicast_if)?;
    let runtime_cfg = RuntimeConfig {
        multicast_v4_interface: j.multicast_if,
        ..RuntimeConfig::default()
    };
    let (agent, task) = runtime::spawn(engine, dp, runtime_cfg, Arc::new(SystemClock));
    let mut events = agent.subscribe().await.map_err(|e| e.to_string())?;
    agent.join(cfg, None).await.map_err(|e| e.to_string())?;
    eprintln!("gm: joining {group} in the foreground; Ctrl-C leaves");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            e = events.recv() => match e {
                Some(e) => gikev2_member::outln!("{}", serde_json::to_string(&e).map_err(|e| e.to_string())?),
                None => break,
            },
        }
    }
    if j.json
        && let Ok(s) = agent.status().await
    {
        gikev2_member::outln!(
            "{}",
            serde_json::to_string_pretty(&s).map_err(|e| e.to_string())?
        );
    }
    let _ = agent.shutdown().await;
    let _ = task.await;
    Ok(())
}
