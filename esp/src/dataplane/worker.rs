//! The two packet workers. Each owns its buffers (allocated once), reads the clock once per
//! batch, and publishes its counters once per batch (STYLE D1, D2, D4).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{SockaddrIn, SockaddrIn6};

use super::io::{self, RecvBatch, SendBatch};
use super::{Shared, add};
use crate::engine::{Decision, Verdict};

/// Room for what `seal` adds to a plaintext packet of MTU size: outer IPv6 header, ESP
/// header, IV, padding, trailer and ICV (well under this).
const SEAL_HEADROOM: usize = 256;
/// Smallest receive buffer: a 9000-octet jumbo frame from a peer with a larger MTU fits.
const MIN_RECV_BUFFER: usize = 9216 + 512;
/// Most plaintext octets a TUN read returns (without offloads: the MTU; sized for any).
const TUN_READ_BUFFER: usize = 65536;

/// The outer destination of a complete packet written by `seal`.
fn outer_dst(p: &[u8]) -> Option<IpAddr> {
    match p.first().map(|b| b >> 4) {
        Some(4) => {
            let a: [u8; 4] = p.get(16..20)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(a)))
        }
        Some(6) => {
            let a: [u8; 16] = p.get(24..40)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(a)))
        }
        _ => None,
    }
}

/// Overrides the outer TTL / Hop Limit. The IPv4 header checksum is left stale: with
/// `IP_HDRINCL` the kernel always recomputes it.
fn set_ttl(p: &mut [u8], ttl: u8) {
    let at = match p.first().map(|b| b >> 4) {
        Some(4) => 8,
        Some(6) => 7,
        _ => return,
    };
    if let Some(b) = p.get_mut(at) {
        *b = ttl;
    }
}

fn wait(fds: &mut [PollFd<'_>]) -> Result<(), Errno> {
    loop {
        match poll(fds, PollTimeout::NONE) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

fn ready(fd: &PollFd<'_>) -> bool {
    fd.revents()
        .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLERR))
}

/// TUN -> classify -> seal -> `sendmmsg`, until stopped.
pub(crate) fn tx_loop(sh: &Shared) {
    let batch = sh.batch;
    let mut input = vec![0u8; TUN_READ_BUFFER];
    let mut bufs: Vec<Box<[u8]>> = (0..batch)
        .map(|_| vec![0u8; sh.mtu + SEAL_HEADROOM].into_boxed_slice())
        .collect();
    let mut q4 = SendBatch::<SockaddrIn>::new(batch);
    let mut q6 = SendBatch::<SockaddrIn6>::new(batch);
    let c = &sh.counters;
    loop {
        {
            let mut fds = [
                PollFd::new(sh.stop.as_fd(), PollFlags::POLLIN),
                PollFd::new(sh.tun.as_fd(), PollFlags::POLLIN),
            ];
            if let Err(e) = wait(&mut fds) {
                tracing::error!("data plane: TX poll: {e}");
                return;
            }
            if ready(&fds[0]) {
                return;
            }
        }
        // Drain the TUN a batch at a time until it is empty.
        loop {
            if sh.stopping.load(Ordering::Relaxed) {
                return;
            }
            let now = (sh.clock)();
            let (mut read, mut no_sa, mut discard, mut bypass, mut seal_err) = (0, 0, 0, 0, 0);
            let mut used = 0;
            let mut empty = false;
            let mut fatal = false;
            while used < batch {
                let n = match sh.tun.recv(&mut input) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        empty = true;
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // The device is gone (or broken): stop rather than spin on it.
                        tracing::error!("data plane: TUN read: {e}; TX worker stops");
                        fatal = true;
                        break;
                    }
                };
                read += 1;
                let Some(pkt) = input.get(..n) else {
                    continue;
                };
                let sa = match sh.engine.classify(pkt, now) {
                    Decision::Protect(sa) => sa,
                    Decision::NoActiveSa(_) => {
                        no_sa += 1;
                        continue;
                    }
                    Decision::Discard => {
                        discard += 1;
                        continue;
                    }
                    Decision::Bypass => {
                        bypass += 1;
                        continue;
                    }
                };
                let Some(buf) = bufs.get_mut(used) else {
                    break;
                };
                let sealed = match sh.engine.seal(&sa, pkt, buf, now) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::trace!("data plane: seal: {e}");
                        seal_err += 1;
                        continue;
                    }
                };
                if let Some(ttl) = sh.ttl {
                    set_ttl(sealed, ttl);
                }
                let len = sealed.len();
                match outer_dst(sealed) {
                    Some(IpAddr::V4(d)) => q4.push(io::sockaddr_v4(d), used, len),
                    Some(IpAddr::V6(d)) => q6.push(io::sockaddr_v6(d), used, len),
                    None => {
                        seal_err += 1;
                        continue;
                    }
                }
                used += 1;
            }
            let mut send_err = 0;
            for sent in [
                flush_or_drop(sh.v4.as_ref(), &mut q4, &bufs),
                flush_or_drop(sh.v6.as_ref(), &mut q6, &bufs),
            ] {
                add(&c.esp_sent, sent.packets);
                add(&c.esp_sent_bytes, sent.bytes);
                add(&c.send_batches, sent.calls);
                send_err += sent.errors;
            }
            add(&c.tun_read, read);
            add(&c.tx_no_sa, no_sa);
            add(&c.tx_discard, discard);
            add(&c.tx_bypass, bypass);
            add(&c.tx_seal_error, seal_err);
            add(&c.tx_send_error, send_err);
            if fatal {
                return;
            }
            if empty {
                break;
            }
        }
    }
}

fn flush_or_drop<S: nix::sys::socket::SockaddrLike + Copy>(
    sock: Option<&socket2::Socket>,
    q: &mut SendBatch<S>,
    bufs: &[Box<[u8]>],
) -> io::Sent {
    if q.len == 0 {
        return io::Sent::default();
    }
    match sock {
        Some(s) => io::flush(s, q, bufs),
        None => {
            // An SA of a family this data plane has no socket for.
            let errors = q.len as u64;
            q.len = 0;
            io::Sent {
                errors,
                ..io::Sent::default()
            }
        }
    }
}

/// Per-batch receive counters.
#[derive(Default)]
struct RxCounts {
    received: u64,
    bytes: u64,
    calls: u64,
    delivered: u64,
    dropped: u64,
    truncated: u64,
    tun_err: u64,
}

/// A socket to wait on, or (when the family is off) a placeholder waiting for nothing.
fn poll_fd<'a>(s: Option<&'a socket2::Socket>, stop: BorrowedFd<'a>) -> PollFd<'a> {
    match s {
        Some(s) => PollFd::new(s.as_fd(), PollFlags::POLLIN),
        None => PollFd::new(stop, PollFlags::empty()),
    }
}

/// `recvmmsg` on both sockets -> open -> TUN, until stopped.
pub(crate) fn rx_loop(sh: &Shared) {
    let batch = sh.batch;
    let buf_len = (sh.mtu + 512).max(MIN_RECV_BUFFER);
    let mut r4 = sh
        .v4
        .as_ref()
        .map(|_| RecvBatch::<SockaddrIn>::new(batch, buf_len, None));
    let mut r6 = sh.v6.as_ref().map(|_| {
        RecvBatch::<SockaddrIn6>::new(
            batch,
            buf_len,
            Some(nix::cmsg_space!(nix::libc::in6_pktinfo)),
        )
    });
    // Transport mode writes a header in front of the payload: room for it.
    let mut out = vec![0u8; buf_len + 128];
    loop {
        let (v4_ready, v6_ready) = {
            let stop = sh.stop.as_fd();
            let mut fds = [
                PollFd::new(stop, PollFlags::POLLIN),
                poll_fd(sh.v4.as_ref(), stop),
                poll_fd(sh.v6.as_ref(), stop),
            ];
            if let Err(e) = wait(&mut fds) {
                tracing::error!("data plane: RX poll: {e}");
                return;
            }
            if ready(&fds[0]) {
                return;
            }
            (ready(&fds[1]), ready(&fds[2]))
        };
        if let (true, Some(s), Some(b)) = (v4_ready, sh.v4.as_ref(), r4.as_mut()) {
            drain(sh, batch, |k: &mut RxCounts| {
                let n = match io::recv_v4(s, b) {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::debug!("data plane: recvmmsg (IPv4): {e}");
                        0
                    }
                };
                let now = (sh.clock)();
                for (got, buf) in b.got.iter().zip(&b.bufs).take(n) {
                    k.received += 1;
                    k.bytes += got.len as u64;
                    if got.truncated {
                        k.truncated += 1;
                        continue;
                    }
                    let pkt = buf.get(..got.len).unwrap_or(&[]);
                    let v = sh.engine.open(pkt, &mut out, now);
                    deliver(sh, v, k);
                }
                n
            });
        }
        if let (true, Some(s), Some(b)) = (v6_ready, sh.v6.as_ref(), r6.as_mut()) {
            drain(sh, batch, |k: &mut RxCounts| {
                let n = match io::recv_v6(s, b) {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::debug!("data plane: recvmmsg (IPv6): {e}");
                        0
                    }
                };
                let now = (sh.clock)();
                for (got, buf) in b.got.iter().zip(&b.bufs).take(n) {
                    k.received += 1;
                    k.bytes += got.len as u64;
                    if got.truncated {
                        k.truncated += 1;
                        continue;
                    }
                    let (Some(src), Some(dst)) = (got.src, got.dst) else {
                        k.dropped += 1;
                        continue;
                    };
                    let esp = buf.get(..got.len).unwrap_or(&[]);
                    let v = sh.engine.open_esp(src, dst, esp, &mut out, now);
                    deliver(sh, v, k);
                }
                n
            });
        }
    }
}

/// Calls `step` (one `recvmmsg` and its packets) until a batch comes back short, then
/// publishes the counters.
fn drain(sh: &Shared, batch: usize, mut step: impl FnMut(&mut RxCounts) -> usize) {
    loop {
        let mut k = RxCounts::default();
        let n = step(&mut k);
        if n > 0 {
            k.calls = 1;
        }
        publish_rx(&sh.counters, &mut k);
        if n < batch || sh.stopping.load(Ordering::Relaxed) {
            return;
        }
    }
}

fn deliver(sh: &Shared, v: Verdict<'_>, k: &mut RxCounts) {
    match v {
        Verdict::Deliver(p) => match sh.tun.send(p) {
            Ok(_) => k.delivered += 1,
            Err(e) => {
                tracing::trace!("data plane: TUN write: {e}");
                k.tun_err += 1;
            }
        },
        Verdict::Drop(_) => k.dropped += 1,
    }
}

fn publish_rx(c: &super::Counters, k: &mut RxCounts) {
    add(&c.esp_received, k.received);
    add(&c.esp_received_bytes, k.bytes);
    add(&c.recv_batches, k.calls);
    add(&c.delivered, k.delivered);
    add(&c.rx_dropped, k.dropped);
    add(&c.rx_truncated, k.truncated);
    add(&c.tun_write_error, k.tun_err);
    *k = RxCounts::default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outer_destination_and_ttl() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[8] = 1;
        v4[16..20].copy_from_slice(&[239, 1, 2, 3]);
        assert_eq!(outer_dst(&v4), Some("239.1.2.3".parse().unwrap()));
        set_ttl(&mut v4, 9);
        assert_eq!(v4[8], 9);
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[24] = 0xff;
        v6[25] = 0x3e;
        v6[39] = 1;
        assert_eq!(outer_dst(&v6), Some("ff3e::1".parse().unwrap()));
        set_ttl(&mut v6, 5);
        assert_eq!(v6[7], 5);
        assert_eq!(outer_dst(&v4[..10]), None);
        assert_eq!(outer_dst(&[]), None);
        assert_eq!(outer_dst(&[0x10; 40]), None);
        set_ttl(&mut [], 1);
    }
}
