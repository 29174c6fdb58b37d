//! Network namespaces for tests: unique names, veth pairs and bridges with per-test
//! addresses, commands and threads inside a namespace, teardown on `Drop`.
//!
//! Every namespace is named `gk-<tag>-<pid>-<n>` so that parallel tests (nextest runs each
//! test in its own process) never collide. Addresses come from a per-link [`Subnet`] in
//! 10.64.0.0/10 and fd00:6b::/32 and exist only inside our namespaces.
//!
//! Two ways to run code inside a namespace:
//! - a process: [`Netns::command`] builds `ip netns exec <ns> <program>`;
//! - a thread of the test process: [`Netns::in_ns`] / [`Netns::spawn_thread`] run a
//!   closure on a new thread that first joins the namespace with `setns(2)`. Sockets
//!   created there stay in that namespace for their whole life, whichever thread uses
//!   them later, so [`Netns::udp_socket`] hands back a socket the test can use directly.

use std::ffi::OsStr;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{HarnessError, Result, poll_until};

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Checks, once per process, that this process can create network namespaces: root,
/// `ip` present, `ip netns add` works. The `Err` says why not.
pub fn probe() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            if !nix::unistd::geteuid().is_root() {
                return Err("not running as root".into());
            }
            let ns = Netns::new("probe").map_err(|e| format!("cannot create a namespace: {e}"))?;
            ns.ip(&["link", "set", "lo", "up"])
                .map_err(|e| format!("cannot configure a namespace: {e}"))?;
            Ok(())
        })
        .clone()
}

/// Runs a command to completion; `Ok(stdout)` when it exits 0, else an error with the
/// command line and its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let line = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| HarnessError::Command {
            cmd: line.clone(),
            detail: e.to_string(),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(HarnessError::Command {
            cmd: line,
            detail: format!(
                "{}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            ),
        })
    }
}

/// A network namespace owned by a test. Dropping it kills the processes it started (and
/// any other process still inside it), then deletes it, which also removes its links.
#[derive(Debug)]
pub struct Netns {
    name: String,
    children: Mutex<Vec<Child>>,
    links: AtomicU32,
}

impl Netns {
    /// Creates `gk-<tag>-<pid>-<n>` with its loopback up. `tag` is shortened to 12
    /// characters and should say what the namespace plays (e.g. `gcks`, `charon`).
    pub fn new(tag: &str) -> Result<Netns> {
        let tag: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(12)
            .collect();
        let name = format!("gk-{tag}-{}-{}", std::process::id(), next_id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns {
            name,
            children: Mutex::new(Vec::new()),
            links: AtomicU32::new(0),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's file, `/run/netns/<name>`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `ip -n <ns> <args>` to completion and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// `ip netns exec <ns> <program>`: add arguments, environment and redirections, then
    /// run it with [`run`], [`Netns::spawn`] or `spawn()`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `program args` inside the namespace to completion; returns stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        run(self.command(program).args(args))
    }

    /// Spawns a command (normally from [`Netns::command`]) that this namespace owns: it is
    /// killed when the namespace is dropped, if still running. Returns its pid.
    pub fn spawn(&self, cmd: &mut Command) -> Result<u32> {
        let child = cmd.spawn().map_err(|e| HarnessError::Command {
            cmd: format!("{cmd:?}"),
            detail: e.to_string(),
        })?;
        let pid = child.id();
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child);
        Ok(pid)
    }

    /// Pids of all processes whose network namespace is this one (`ip netns pids`).
    pub fn pids(&self) -> Vec<u32> {
        run(Command::new("ip").args(["netns", "pids", &self.name]))
            .map(|out| {
                out.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Runs `f` on a new thread that has joined this namespace, and returns its result.
    /// Sockets `f` creates belong to this namespace for their whole life.
    pub fn in_ns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        self.spawn_thread(f)?
            .join()
            .map_err(|_| HarnessError::Other(format!("thread in {} panicked", self.name)))
    }

    /// Spawns a thread that joins this namespace and then runs `f` (for example a
    /// blocking server loop of our own code). The thread does not keep the namespace's
    /// name alive: join it before the `Netns` is dropped.
    pub fn spawn_thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<T>> {
        let file = File::open(self.path()).map_err(|e| HarnessError::io(self.path(), e))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(format!("in-{}", self.name))
            .spawn(move || {
                let joined = setns(&file, CloneFlags::CLONE_NEWNET);
                drop(file);
                let failed = joined.is_err();
                let _ = tx.send(joined);
                // Never run `f` outside the namespace; the caller reports the error.
                assert!(!failed, "setns failed");
                f()
            })
            .map_err(|e| HarnessError::io("spawning a thread", e))?;
        match rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(errno)) => {
                drop(handle);
                Err(HarnessError::Other(format!(
                    "setns into {} failed: {errno}",
                    self.name
                )))
            }
            Err(_) => Err(HarnessError::Other("namespace thread vanished".into())),
        }
    }

    /// A UDP socket bound to `addr` inside this namespace.
    pub fn udp_socket(&self, addr: SocketAddr) -> Result<UdpSocket> {
        self.in_ns(move || UdpSocket::bind(addr))?
            .map_err(|e| HarnessError::io(format!("binding UDP {addr}"), e))
    }

    fn next_ifname(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.links.fetch_add(1, Ordering::Relaxed))
    }

    fn add_addresses(&self, ifname: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> Result<()> {
        self.ip(&["addr", "add", &format!("{v4}/24"), "dev", ifname])?;
        self.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            ifname,
            "nodad",
        ])?;
        self.ip(&["link", "set", ifname, "up"])?;
        Ok(())
    }

    /// Polls until `ifname` has carrier (`LOWER_UP`); before that the kernel drops what
    /// is sent through it, which shows up as a lost first IKE packet.
    fn wait_carrier(&self, ifname: &str) -> Result<()> {
        poll_until(
            &format!("carrier on {ifname} in {}", self.name),
            Duration::from_secs(5),
            || {
                self.ip(&["link", "show", ifname])
                    .ok()
                    .filter(|out| out.contains("LOWER_UP"))
                    .map(|_| ())
            },
        )
    }

    fn stop_all(&self) {
        let mut children =
            std::mem::take(&mut *self.children.lock().unwrap_or_else(|e| e.into_inner()));
        for child in &mut children {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        // Whatever else still lives in the namespace was started by us through it
        // (daemons' children, `ip netns exec` descendants). Never our own process.
        let me = std::process::id();
        let strays: Vec<u32> = self.pids().into_iter().filter(|&p| p != me).collect();
        for &pid in &strays {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        if !strays.is_empty() {
            let _ = poll_until(
                "namespace processes to exit",
                Duration::from_secs(2),
                || {
                    self.pids()
                        .iter()
                        .all(|p| *p == me || !strays.contains(p))
                        .then_some(())
                },
            );
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.stop_all();
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("warning: deleting namespace {}: {e}", self.name);
        }
    }
}

/// A /24 and a /64 for one link, unique within this process and unlikely to repeat across
/// processes (which would not matter: every namespace has its own stack).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    n: u32,
}

impl Subnet {
    /// A fresh subnet.
    pub fn unique() -> Subnet {
        let n = (std::process::id().wrapping_mul(31).wrapping_add(next_id())) & 0x3fff;
        Subnet { n }
    }

    /// `10.<64+hi>.<lo>.<host>`.
    pub fn v4(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 64 + (self.n >> 8) as u8, (self.n & 0xff) as u8, host)
    }

    /// `fd00:6b:<n>::<host>`.
    pub fn v6(&self, host: u8) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x6b, self.n as u16, 0, 0, 0, 0, u16::from(host))
    }
}

/// One end of a link: the interface inside its namespace and its addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ifname: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

impl Endpoint {
    /// The IPv4 or IPv6 address.
    pub fn addr(&self, ipv6: bool) -> IpAddr {
        if ipv6 {
            IpAddr::V6(self.v6)
        } else {
            IpAddr::V4(self.v4)
        }
    }
}

/// Links `a` and `b` with a veth pair on `subnet`: `a` gets host 1, `b` host 2.
/// Interfaces are named `eth<k>` inside each namespace.
pub fn veth(a: &Netns, b: &Netns, subnet: &Subnet) -> Result<(Endpoint, Endpoint)> {
    let if_a = a.next_ifname("eth");
    let if_b = b.next_ifname("eth");
    a.ip(&[
        "link",
        "add",
        &if_a,
        "type",
        "veth",
        "peer",
        "name",
        &if_b,
        "netns",
        b.name(),
    ])?;
    a.add_addresses(&if_a, subnet.v4(1), subnet.v6(1))?;
    b.add_addresses(&if_b, subnet.v4(2), subnet.v6(2))?;
    a.wait_carrier(&if_a)?;
    b.wait_carrier(&if_b)?;
    Ok((
        Endpoint {
            ifname: if_a,
            v4: subnet.v4(1),
            v6: subnet.v6(1),
        },
        Endpoint {
            ifname: if_b,
            v4: subnet.v4(2),
            v6: subnet.v6(2),
        },
    ))
}

/// Two namespaces joined by one veth link: the usual interop set-up.
#[derive(Debug)]
pub struct Pair {
    pub a: Netns,
    pub b: Netns,
    /// `a`'s end of the link (host 1 of the subnet).
    pub link_a: Endpoint,
    /// `b`'s end of the link (host 2).
    pub link_b: Endpoint,
}

impl Pair {
    /// Creates namespaces `gk-<tag>a-…` and `gk-<tag>b-…` and links them.
    pub fn new(tag: &str) -> Result<Pair> {
        let a = Netns::new(&format!("{tag}a"))?;
        let b = Netns::new(&format!("{tag}b"))?;
        let (link_a, link_b) = veth(&a, &b, &Subnet::unique())?;
        Ok(Pair {
            a,
            b,
            link_a,
            link_b,
        })
    }
}

/// A LAN: a hub namespace holding bridge `br0`, and any number of member namespaces,
/// each attached by a veth pair. Multicast snooping is off, so multicast floods to all
/// members (what GSA_REKEY tests want).
#[derive(Debug)]
pub struct Bridge {
    hub: Netns,
    subnet: Subnet,
    next_host: AtomicU32,
}

impl Bridge {
    /// Creates the hub namespace and its bridge.
    pub fn new(tag: &str) -> Result<Bridge> {
        let hub = Netns::new(&format!("{tag}hub"))?;
        hub.ip(&[
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        hub.ip(&["link", "set", "br0", "up"])?;
        Ok(Bridge {
            hub,
            subnet: Subnet::unique(),
            next_host: AtomicU32::new(1),
        })
    }

    /// The hub namespace (captures on `br0` see every member's traffic).
    pub fn hub(&self) -> &Netns {
        &self.hub
    }

    /// The bridge's subnet.
    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// Attaches `member` with the next free host address (1, 2, ...; at most 254).
    /// Members must be dropped before the bridge or may outlive it; either is clean.
    pub fn attach(&self, member: &Netns) -> Result<Endpoint> {
        let host = self.next_host.fetch_add(1, Ordering::Relaxed);
        let host = u8::try_from(host)
            .ok()
            .filter(|h| *h < 255)
            .ok_or_else(|| HarnessError::Other("bridge subnet is full".into()))?;
        let port = self.hub.next_ifname("p");
        let inner = member.next_ifname("eth");
        self.hub.ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            &inner,
            "netns",
            member.name(),
        ])?;
        self.hub.ip(&["link", "set", &port, "master", "br0"])?;
        self.hub.ip(&["link", "set", &port, "up"])?;
        member.add_addresses(&inner, self.subnet.v4(host), self.subnet.v6(host))?;
        // Multicast leaves through this link unless a test routes it elsewhere.
        member.ip(&["route", "add", "224.0.0.0/4", "dev", &inner])?;
        member.wait_carrier(&inner)?;
        Ok(Endpoint {
            ifname: inner,
            v4: self.subnet.v4(host),
            v6: self.subnet.v6(host),
        })
    }
}
