//! A tiny blocking UDP driver for sans-IO endpoints (our IKE initiator/responder):
//! feeds received datagrams and clock ticks to a closure and sends what it returns.
//!
//! ```no_run
//! # use gikev2_tests::{driver, netns::Pair};
//! # use std::{net::SocketAddr, time::Duration};
//! # fn f(pair: &Pair) -> gikev2_tests::Result<()> {
//! let sock = pair.a.udp_socket(SocketAddr::new(pair.link_a.v4.into(), 500))?;
//! let mut established = false;
//! driver::run_udp(&sock, Duration::from_secs(10), |event, _now| {
//!     // hand `event` to the state machine; return its datagrams
//!     let _ = event;
//!     established = true;
//!     (Vec::new(), established)
//! })?;
//! # Ok(()) }
//! ```

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::{HarnessError, Result};

/// What the endpoint is told.
#[derive(Debug)]
pub enum Event<'a> {
    /// Called once first (an initiator sends its first request here).
    Start,
    /// A datagram arrived.
    Datagram { data: &'a [u8], from: SocketAddr },
    /// Nothing arrived for [`TICK`] (time for retransmits and timeouts).
    Tick,
}

/// How often [`Event::Tick`] comes when nothing arrives.
pub const TICK: Duration = Duration::from_millis(50);

/// Runs `step` until it says done (second tuple element) or `timeout` passes. Each
/// call returns the datagrams to send as `(bytes, destination)`.
pub fn run_udp(
    sock: &UdpSocket,
    timeout: Duration,
    mut step: impl FnMut(Event<'_>, Instant) -> (Vec<(Vec<u8>, SocketAddr)>, bool),
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let send = |out: Vec<(Vec<u8>, SocketAddr)>| -> Result<()> {
        for (data, to) in out {
            sock.send_to(&data, to)
                .map_err(|e| HarnessError::io(format!("sending to {to}"), e))?;
        }
        Ok(())
    };
    let (out, done) = step(Event::Start, Instant::now());
    send(out)?;
    if done {
        return Ok(());
    }
    let mut buf = vec![0u8; 65536];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(HarnessError::Timeout {
                what: "the UDP endpoint to finish".into(),
                after: timeout,
            });
        }
        sock.set_read_timeout(Some(TICK.min(deadline - now)))
            .map_err(|e| HarnessError::io("set_read_timeout", e))?;
        let (out, done) = match sock.recv_from(&mut buf) {
            Ok((n, from)) => step(
                Event::Datagram {
                    data: &buf[..n],
                    from,
                },
                Instant::now(),
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                step(Event::Tick, Instant::now())
            }
            Err(e) => return Err(HarnessError::io("receiving", e)),
        };
        send(out)?;
        if done {
            return Ok(());
        }
    }
}
