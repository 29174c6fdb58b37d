//! The tokio runtime around the [`Agent`] (STYLE Q6: it only drives): one task owns the
//! agent, one UDP socket per membership carries its IKE SA, one socket per rekey
//! endpoint receives GSA_REKEY datagrams (joined to the multicast group), and commands
//! arrive over a channel from [`AgentHandle`]s (the control socket, `gm join
//! --foreground`, tests).
//!
//! Time comes from a [`Clock`], so that tests can move it (the protocol core never reads
//! a clock itself).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gikev2_esp::Engine;
use gikev2_proto::crypto::SystemRandom;
use gikev2_proto::wire::header::{Port4500, classify_port_4500, with_non_esp_marker};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::agent::{Agent, AgentConfig, MembershipId, RekeyEndpoint};
use crate::config::{JoinArgs, MembershipConfig, NAT_T_PORT};
use crate::install::DataPlane;
use crate::status::{AgentEvent, GroupStatus, Status};

/// Largest datagram read.
const MAX_DATAGRAM: usize = 65_535;
/// The loop wakes at least this often (engine byte/packet lifetime events, join waits).
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// How long a failed rekey socket waits before it is tried again.
const LISTEN_RETRY: Duration = Duration::from_secs(30);
/// Datagrams handled per wake-up before timers get a turn (STYLE Q6).
const WORK_BUDGET: usize = 64;
/// Events buffered per subscriber before the slowest loses some.
const SUBSCRIBER_QUEUE: usize = 256;

/// Where the runtime reads the time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
}

/// The system's monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// The system clock plus an offset that only grows: tests and simulations move time
/// forward (past a DTD, a lifetime) without waiting. Any command to the agent makes it
/// process what became due.
#[derive(Debug, Default)]
pub struct OffsetClock {
    offset: Mutex<Duration>,
}

impl OffsetClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves time forward by `d`.
    pub fn advance(&self, d: Duration) {
        let mut o = self.offset.lock().unwrap_or_else(|e| e.into_inner());
        *o += d;
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> Instant {
        let o = *self.offset.lock().unwrap_or_else(|e| e.into_inner());
        Instant::now() + o
    }
}

/// Runtime settings.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    pub agent: AgentConfig,
    /// The IPv4 interface address multicast rekey groups are joined on (`None`: the
    /// kernel's choice by route).
    pub multicast_v4_interface: Option<Ipv4Addr>,
    /// The IPv6 interface index for multicast joins (0: the kernel's choice).
    pub multicast_v6_interface: u32,
}

/// Why a command failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Agent(#[from] crate::agent::AgentError),
    #[error("socket: {0}")]
    Socket(String),
    /// The registration ended without keys: rejected or refused.
    #[error("{group}: {reason}")]
    Registration { group: String, reason: String },
    #[error("the agent has stopped")]
    Stopped,
}

type Reply<T> = oneshot::Sender<Result<T, CommandError>>;

enum Command {
    Join {
        cfg: Box<MembershipConfig>,
        wait: Option<Duration>,
        reply: Reply<GroupStatus>,
    },
    Leave {
        group: String,
        reply: Reply<()>,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    Subscribe {
        tx: mpsc::Sender<AgentEvent>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Talks to the agent task. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AgentHandle {
    tx: mpsc::Sender<Command>,
}

impl AgentHandle {
    async fn send(&self, c: Command) -> Result<(), CommandError> {
        self.tx.send(c).await.map_err(|_| CommandError::Stopped)
    }

    /// Loads `args` (reading the credential files here, not in the agent task) and joins.
    pub async fn join_args(
        &self,
        args: &JoinArgs,
        wait: Option<Duration>,
    ) -> Result<GroupStatus, CommandError> {
        let cfg = args.load()?;
        self.join(cfg, wait).await
    }

    /// Joins a group. With `wait`, answers once the registration succeeded (`Ok`), was
    /// rejected or refused (`Err`), or the time ran out (`Ok` with the state reached).
    pub async fn join(
        &self,
        cfg: MembershipConfig,
        wait: Option<Duration>,
    ) -> Result<GroupStatus, CommandError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Join {
            cfg: Box::new(cfg),
            wait,
            reply,
        })
        .await?;
        rx.await.map_err(|_| CommandError::Stopped)?
    }

    pub async fn leave(&self, group: &str) -> Result<(), CommandError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Leave {
            group: group.into(),
            reply,
        })
        .await?;
        rx.await.map_err(|_| CommandError::Stopped)?
    }

    pub async fn status(&self) -> Result<Status, CommandError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Status { reply }).await?;
        rx.await.map_err(|_| CommandError::Stopped)
    }

    /// Every agent event from now on.
    pub async fn subscribe(&self) -> Result<mpsc::Receiver<AgentEvent>, CommandError> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        self.send(Command::Subscribe { tx }).await?;
        Ok(rx)
    }

    /// Leaves every group (telling the GCKSs) and stops the agent task.
    pub async fn shutdown(&self) -> Result<(), CommandError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Shutdown { reply }).await?;
        rx.await.map_err(|_| CommandError::Stopped)
    }
}

/// A membership's socket to its GCKS: connected to `peer`, the GCKS's address, or its
/// port 4500 once NAT traversal moved the IKE SA there (RFC 7296 2.23).
struct IkeSocket {
    sock: Arc<UdpSocket>,
    peer: SocketAddr,
    nat_t: bool,
    reader: JoinHandle<()>,
}

struct PendingJoin {
    group: String,
    deadline: tokio::time::Instant,
    reply: Reply<GroupStatus>,
}

struct Driver {
    agent: Agent,
    clock: Arc<dyn Clock>,
    config: RuntimeConfig,
    rng: SystemRandom,
    ike: HashMap<MembershipId, IkeSocket>,
    ike_tx: mpsc::Sender<(MembershipId, Vec<u8>)>,
    listeners: HashMap<RekeyEndpoint, JoinHandle<()>>,
    listen_failed: HashMap<RekeyEndpoint, Instant>,
    rekey_tx: mpsc::Sender<(RekeyEndpoint, Vec<u8>)>,
    subscribers: Vec<mpsc::Sender<AgentEvent>>,
    pending: Vec<PendingJoin>,
}

/// Starts the agent task on the current tokio runtime.
pub fn spawn(
    engine: Arc<Engine>,
    data_plane: Arc<dyn DataPlane>,
    config: RuntimeConfig,
    clock: Arc<dyn Clock>,
) -> (AgentHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(run(engine, data_plane, config, clock, rx));
    (AgentHandle { tx }, task)
}

async fn run(
    engine: Arc<Engine>,
    data_plane: Arc<dyn DataPlane>,
    config: RuntimeConfig,
    clock: Arc<dyn Clock>,
    mut commands: mpsc::Receiver<Command>,
) {
    let (ike_tx, mut ike_rx) = mpsc::channel(1024);
    let (rekey_tx, mut rekey_rx) = mpsc::channel(1024);
    let mut d = Driver {
        agent: Agent::new(engine, data_plane, config.agent.clone()),
        clock,
        config,
        rng: SystemRandom::new(),
        ike: HashMap::new(),
        ike_tx,
        listeners: HashMap::new(),
        listen_failed: HashMap::new(),
        rekey_tx,
        subscribers: Vec::new(),
        pending: Vec::new(),
    };
    loop {
        let now = d.clock.now();
        d.agent.handle_timeout(now, &mut d.rng);
        d.flush().await;
        let mut wait = HOUSEKEEPING;
        if let Some(t) = d.agent.poll_timeout() {
            wait = wait.min(t.saturating_duration_since(d.clock.now()));
        }
        tokio::select! {
            c = commands.recv() => match c {
                None => break,
                Some(Command::Shutdown { reply }) => {
                    d.shutdown().await;
                    let _ = reply.send(());
                    break;
                }
                Some(c) => d.command(c).await,
            },
            Some((id, data)) = ike_rx.recv() => {
                d.on_ike(id, data);
                for _ in 1..WORK_BUDGET {
                    match ike_rx.try_recv() {
                        Ok((id, data)) => d.on_ike(id, data),
                        Err(_) => break,
                    }
                }
            }
            Some((ep, data)) = rekey_rx.recv() => {
                let now = d.clock.now();
                d.agent.handle_rekey(ep, &data, now, &mut d.rng);
                for _ in 1..WORK_BUDGET {
                    match rekey_rx.try_recv() {
                        Ok((ep, data)) => d.agent.handle_rekey(ep, &data, now, &mut d.rng),
                        Err(_) => break,
                    }
                }
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
    for (_, s) in d.ike.drain() {
        s.reader.abort();
    }
    for (_, l) in d.listeners.drain() {
        l.abort();
    }
}

/// A UDP socket on an ephemeral port, connected to `peer` (so its local address is the
/// one the route to `peer` uses, which NAT detection hashes).
async fn connected_socket(peer: SocketAddr) -> std::io::Result<UdpSocket> {
    let sock = UdpSocket::bind(unspecified_for(peer)).await?;
    sock.connect(peer).await?;
    Ok(sock)
}

fn unspecified_for(gcks: SocketAddr) -> SocketAddr {
    if gcks.is_ipv6() {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    }
}

/// A socket on the rekey endpoint: bound to the group address (so that only its
/// datagrams arrive) and joined to it, or bound to the unicast address.
fn bind_rekey(ep: RekeyEndpoint, cfg: &RuntimeConfig) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if ep.addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    match ep.addr {
        IpAddr::V4(g) if g.is_multicast() => {
            s.bind(&SocketAddr::new(ep.addr, ep.port).into())?;
            let iface = cfg.multicast_v4_interface.unwrap_or(Ipv4Addr::UNSPECIFIED);
            s.join_multicast_v4(&g, &iface)?;
        }
        IpAddr::V6(g) if g.is_multicast() => {
            s.set_only_v6(true)?;
            s.bind(&SocketAddr::new(ep.addr, ep.port).into())?;
            s.join_multicast_v6(&g, cfg.multicast_v6_interface)?;
        }
        _ => {
            // Unicast rekeys (the address is ours), or any address of ours on that port.
            if s.bind(&SocketAddr::new(ep.addr, ep.port).into()).is_err() {
                let any: IpAddr = if ep.addr.is_ipv6() {
                    std::net::Ipv6Addr::UNSPECIFIED.into()
                } else {
                    Ipv4Addr::UNSPECIFIED.into()
                };
                s.bind(&SocketAddr::new(any, ep.port).into())?;
            }
        }
    }
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

impl Driver {
    fn on_ike(&mut self, id: MembershipId, data: Vec<u8>) {
        let nat_t = self.ike.get(&id).is_some_and(|s| s.nat_t);
        let now = self.clock.now();
        if nat_t {
            match classify_port_4500(&data) {
                Ok(Port4500::Ike(m)) => self.agent.handle_ike(id, m, now, &mut self.rng),
                _ => debug!("non-IKE datagram on port 4500"),
            }
        } else {
            self.agent.handle_ike(id, &data, now, &mut self.rng);
        }
    }

    async fn command(&mut self, c: Command) {
        match c {
            Command::Join { cfg, wait, reply } => {
                let group = cfg.group.clone();
                match self.join(*cfg).await {
                    Ok(()) => match wait {
                        Some(w) => self.pending.push(PendingJoin {
                            group,
                            deadline: tokio::time::Instant::now() + w,
                            reply,
                        }),
                        None => {
                            let _ = reply.send(self.group_status(&group));
                        }
                    },
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Leave { group, reply } => {
                let now = self.clock.now();
                let r = self
                    .agent
                    .leave(&group, now, &mut self.rng)
                    .map_err(CommandError::from);
                let _ = reply.send(r);
            }
            Command::Status { reply } => {
                let now = self.clock.now();
                self.agent.handle_timeout(now, &mut self.rng);
                let _ = reply.send(self.agent.status(now));
            }
            Command::Subscribe { tx } => self.subscribers.push(tx),
            Command::Shutdown { .. } => {}
        }
    }

    fn group_status(&self, group: &str) -> Result<GroupStatus, CommandError> {
        self.agent
            .status(self.clock.now())
            .groups
            .into_iter()
            .find(|g| g.group == group)
            .ok_or_else(|| crate::agent::AgentError::NotJoined(group.into()).into())
    }

    async fn join(&mut self, cfg: MembershipConfig) -> Result<(), CommandError> {
        if self.agent.membership_id(&cfg.group).is_some() {
            return Err(crate::agent::AgentError::AlreadyJoined(cfg.group).into());
        }
        let sock_err = |e: std::io::Error| CommandError::Socket(e.to_string());
        let sock = connected_socket(cfg.gcks).await.map_err(sock_err)?;
        let local = sock.local_addr().map_err(sock_err)?;
        let gcks = cfg.gcks;
        let now = self.clock.now();
        let id = self.agent.join(cfg, local, now, &mut self.rng)?;
        let s = self.ike_socket(id, sock, gcks);
        self.ike.insert(id, s);
        Ok(())
    }

    /// Starts the reader of a membership's IKE socket connected to `peer`.
    fn ike_socket(&self, id: MembershipId, sock: UdpSocket, peer: SocketAddr) -> IkeSocket {
        let sock = Arc::new(sock);
        let reader = {
            let sock = sock.clone();
            let tx = self.ike_tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                loop {
                    match sock.recv(&mut buf).await {
                        Ok(n) => {
                            if tx.send((id, buf[..n].to_vec())).await.is_err() {
                                return;
                            }
                        }
                        // ICMP port unreachable and the like: retransmissions decide.
                        Err(e) => debug!(error = %e, "IKE socket"),
                    }
                }
            })
        };
        IkeSocket {
            sock,
            peer,
            nat_t: peer.port() == NAT_T_PORT,
            reader,
        }
    }

    /// The membership's socket for datagrams to `to`: a new one when the IKE SA moved
    /// (NAT traversal to port 4500, RFC 7296 2.23); the old one is closed.
    async fn socket_to(&mut self, id: MembershipId, to: SocketAddr) -> Option<Arc<UdpSocket>> {
        let current = self.ike.get(&id)?;
        if current.peer == to {
            return Some(current.sock.clone());
        }
        let sock = match connected_socket(to).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, %to, "cannot open a socket for the moved IKE SA");
                return None;
            }
        };
        info!(%to, "IKE SA moved (NAT traversal); sending from a new socket");
        let s = self.ike_socket(id, sock, to);
        let sock = s.sock.clone();
        if let Some(old) = self.ike.insert(id, s) {
            old.reader.abort();
        }
        Some(sock)
    }

    async fn shutdown(&mut self) {
        let groups: Vec<String> = self
            .agent
            .status(self.clock.now())
            .groups
            .into_iter()
            .map(|g| g.group)
            .collect();
        for g in groups {
            let now = self.clock.now();
            let _ = self.agent.leave(&g, now, &mut self.rng);
        }
        self.flush().await;
    }

    /// Sends what the agent queued, hands out events, reconciles sockets.
    async fn flush(&mut self) {
        while let Some(t) = self.agent.poll_transmit() {
            let Some(sock) = self.socket_to(t.membership, t.to).await else {
                continue;
            };
            let out = if t.nat_t {
                with_non_esp_marker(&t.data)
            } else {
                t.data
            };
            if let Err(e) = sock.send(&out).await {
                debug!(error = %e, to = %t.to, "IKE send");
            }
        }
        while let Some(e) = self.agent.poll_event() {
            self.subscribers.retain(|s| match s.try_send(e.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => true,
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
            self.answer_pending(&e);
        }
        let real_now = tokio::time::Instant::now();
        let expired: Vec<usize> = (0..self.pending.len())
            .filter(|i| self.pending[*i].deadline <= real_now)
            .collect();
        for i in expired.into_iter().rev() {
            let p = self.pending.swap_remove(i);
            let r = self.group_status(&p.group);
            let _ = p.reply.send(r);
        }
        // IKE sockets of memberships that are gone.
        let alive: BTreeSet<MembershipId> = self.agent.membership_ids().into_iter().collect();
        self.ike.retain(|id, s| {
            let keep = alive.contains(id);
            if !keep {
                s.reader.abort();
            }
            keep
        });
        self.reconcile_listeners();
    }

    fn answer_pending(&mut self, e: &AgentEvent) {
        let outcome = match e {
            AgentEvent::GroupUp { .. } => None,
            AgentEvent::Rejected { notify, reason, .. } => {
                Some(format!("rejected the group policy with {notify}: {reason}"))
            }
            AgentEvent::Refused { notify, .. } => Some(format!("refused by the GCKS: {notify}")),
            _ => return,
        };
        let group = e.group().to_string();
        let (mine, rest): (Vec<PendingJoin>, Vec<PendingJoin>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.group == group);
        self.pending = rest;
        for p in mine {
            let r = match &outcome {
                None => self.group_status(&group),
                Some(reason) => Err(CommandError::Registration {
                    group: group.clone(),
                    reason: reason.clone(),
                }),
            };
            let _ = p.reply.send(r);
        }
    }

    fn reconcile_listeners(&mut self) {
        let want = self.agent.rekey_endpoints();
        self.listeners.retain(|ep, task| {
            let keep = want.contains(ep);
            if !keep {
                info!(endpoint = %ep, "no longer listening for GSA_REKEY");
                task.abort();
            }
            keep
        });
        let now = self.clock.now();
        for ep in want {
            if self.listeners.contains_key(&ep)
                || self
                    .listen_failed
                    .get(&ep)
                    .is_some_and(|t| now < *t + LISTEN_RETRY)
            {
                continue;
            }
            match bind_rekey(ep, &self.config) {
                Ok(sock) => {
                    info!(endpoint = %ep, "listening for GSA_REKEY");
                    self.listen_failed.remove(&ep);
                    let tx = self.rekey_tx.clone();
                    let task = tokio::spawn(async move {
                        let mut buf = vec![0u8; MAX_DATAGRAM];
                        loop {
                            match sock.recv_from(&mut buf).await {
                                Ok((n, _)) => {
                                    if tx.send((ep, buf[..n].to_vec())).await.is_err() {
                                        return;
                                    }
                                }
                                Err(e) => debug!(error = %e, "rekey socket"),
                            }
                        }
                    });
                    self.listeners.insert(ep, task);
                }
                Err(e) => {
                    warn!(endpoint = %ep, error = %e, "cannot listen for GSA_REKEY");
                    self.listen_failed.insert(ep, now);
                }
            }
        }
    }
}
