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
use crate::engine::{Decision, SEAL_HEADROOM, SEAL_TAILROOM, Verdict};
use crate::sa::SaHandle;

/// Headroom of IPv6 receive buffers: the header `open_esp_in_place` writes in front of a
/// transport-mode payload.
const RX_V6_HEADROOM: usize = 40;
/// Smallest receive buffer: a 9000-octet jumbo frame from a peer with a larger MTU fits.
const MIN_RECV_BUFFER: usize = 9216 + 512;

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

/// TUN -> classify -> seal -> `sendmmsg`, until stopped. Each packet is read from the TUN
/// straight into its send buffer at [`SEAL_HEADROOM`] and sealed there
/// ([`Engine::seal_batch`](crate::Engine::seal_batch): no copy, one state/time/counter step
/// per run of packets on the same SA).
pub(crate) fn tx_loop(sh: &Shared) {
    let batch = sh.batch;
    // Room to read any packet up to the MTU with some to spare (a read that fills the room
    // may have been cut short and is not sent), plus the engine's head- and tailroom.
    let read_room = sh.mtu + 256;
    let mut bufs: Vec<Box<[u8]>> = (0..batch)
        .map(|_| vec![0u8; SEAL_HEADROOM + read_room + SEAL_TAILROOM].into_boxed_slice())
        .collect();
    let mut sas: Vec<Option<SaHandle>> = vec![None; batch];
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
                let (Some(buf), Some(sa_slot)) = (bufs.get_mut(used), sas.get_mut(used)) else {
                    break;
                };
                let Some(room) = buf.get_mut(SEAL_HEADROOM..SEAL_HEADROOM + read_room) else {
                    break;
                };
                let n = match sh.tun.recv(room) {
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
                if n >= read_room {
                    // Possibly truncated: never seal part of a packet.
                    seal_err += 1;
                    continue;
                }
                let Some(pkt) = room.get(..n) else {
                    continue;
                };
                match sh.engine.classify(pkt, now) {
                    Decision::Protect(sa) => *sa_slot = Some(sa),
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
                }
                used += 1;
            }
            // Seal each run of packets on the same SA in one call.
            let mut i = 0;
            while i < used {
                let Some(sa) = sas.get_mut(i).and_then(Option::take) else {
                    i += 1;
                    continue;
                };
                let mut j = i + 1;
                while j < used
                    && sas
                        .get(j)
                        .and_then(Option::as_ref)
                        .is_some_and(|s| s.id() == sa.id())
                {
                    if let Some(s) = sas.get_mut(j) {
                        *s = None;
                    }
                    j += 1;
                }
                let Some(run) = bufs.get_mut(i..j) else {
                    break;
                };
                sh.engine
                    .seal_batch(&sa, run, SEAL_HEADROOM, now, |k, r| match r {
                        Ok((at, sealed)) => {
                            if let Some(ttl) = sh.ttl {
                                set_ttl(sealed, ttl);
                            }
                            let len = sealed.len();
                            match outer_dst(sealed) {
                                Some(IpAddr::V4(d)) => q4.push(io::sockaddr_v4(d), i + k, at, len),
                                Some(IpAddr::V6(d)) => q6.push(io::sockaddr_v6(d), i + k, at, len),
                                None => seal_err += 1,
                            }
                        }
                        Err(e) => {
                            tracing::trace!("data plane: seal: {e}");
                            seal_err += 1;
                        }
                    });
                i = j;
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
    // IPv4 datagrams carry their header, which transport mode moves forward over the ESP
    // header: no headroom needed. IPv6 ones arrive without it, and transport mode writes a
    // fresh 40-octet header in front of the payload.
    let mut r4 = sh
        .v4
        .as_ref()
        .map(|_| RecvBatch::<SockaddrIn>::new(batch, buf_len, 0, None));
    let mut r6 = sh.v6.as_ref().map(|_| {
        RecvBatch::<SockaddrIn6>::new(
            batch,
            buf_len,
            RX_V6_HEADROOM,
            Some(nix::cmsg_space!(nix::libc::in6_pktinfo)),
        )
    });
    let mut lens = [0usize; super::MAX_BATCH];
    let mut meta = [(
        0usize,
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    ); super::MAX_BATCH];
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
                // Runs of untruncated datagrams, opened in place, a run per call.
                let mut i = 0;
                while i < n {
                    let mut j = i;
                    while let Some(got) = b.got.get(j).filter(|g| j < n && !g.truncated) {
                        k.received += 1;
                        k.bytes += got.len as u64;
                        if let Some(l) = lens.get_mut(j - i) {
                            *l = got.len;
                        }
                        j += 1;
                    }
                    if let (Some(run), Some(run_lens)) = (b.bufs.get_mut(i..j), lens.get(..j - i)) {
                        sh.engine
                            .open_batch(run, run_lens, now, |_, v| deliver(sh, v, k));
                    }
                    if j < n {
                        // A truncated datagram is not opened.
                        k.received += 1;
                        k.bytes += b.got.get(j).map_or(0, |g| g.len as u64);
                        k.truncated += 1;
                        j += 1;
                    }
                    i = j;
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
                let at = b.headroom;
                let mut i = 0;
                while i < n {
                    let mut j = i;
                    while let Some(got) = b.got.get(j).filter(|g| j < n && !g.truncated) {
                        k.received += 1;
                        k.bytes += got.len as u64;
                        let (Some(src), Some(dst)) = (got.src, got.dst) else {
                            break;
                        };
                        if let Some(m) = meta.get_mut(j - i) {
                            *m = (got.len, src, dst);
                        }
                        j += 1;
                    }
                    if let (Some(run), Some(run_meta)) = (b.bufs.get_mut(i..j), meta.get(..j - i)) {
                        sh.engine
                            .open_esp_batch(run, run_meta, at, now, |_, v| deliver(sh, v, k));
                    }
                    if j < n {
                        // Truncated, or without addresses: not opened (already counted as
                        // received when it has no addresses).
                        if let Some(g) = b.got.get(j) {
                            if g.truncated {
                                k.received += 1;
                                k.bytes += g.len as u64;
                                k.truncated += 1;
                            } else {
                                k.dropped += 1;
                            }
                        }
                        j += 1;
                    }
                    i = j;
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
