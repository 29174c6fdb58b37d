//! One registration over UDP (`gm join --foreground`): IKE_SA_INIT, then GSA_AUTH
//! (RFC 9838 2.3.1), driving the sans-IO [`IkeSa`] with a socket and the clock.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gikev2_proto::crypto::keywrap::KeyWrapKey;
use gikev2_proto::crypto::{CryptoError, SystemRandom};
use gikev2_proto::ike::{CloseReason, Event, Goal, IkeConfig, IkeSa, RegistrationRequest};
use gikev2_proto::registry::NotifyType;
use gikev2_proto::wire::gsa::GsaPayload;
use gikev2_proto::wire::header::{Port4500, classify_port_4500, with_non_esp_marker};
use gikev2_proto::wire::kd::KdPayload;
use tokio::net::UdpSocket;
use tracing::debug;

/// A successful registration: the group policy and keys, and the IKE SA's default KWK to
/// unwrap them (RFC 9838 3.1.1).
pub struct Joined {
    pub gsa: GsaPayload,
    pub kd: KdPayload,
    pub transport_mode: bool,
    pub kwk: KeyWrapKey,
    /// The IKE SA, still open: the GCKS closes it by convention (RFC 9838 2.3.3).
    pub sa: IkeSa,
    /// The socket the IKE SA runs on (connected to the GCKS), to answer what the GCKS
    /// sends next, such as its Delete.
    pub socket: UdpSocket,
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("crypto: {0}")]
    Crypto(#[from] CryptoError),
    #[error("the GCKS refused the registration: {0}")]
    Refused(NotifyType),
    #[error("the IKE SA closed: {0:?}")]
    Closed(CloseReason),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Registers to a group at `gcks`. With `nat_t` the datagrams carry the non-ESP marker
/// (port 4500, RFC 3948 2.2). Gives up after `deadline` even if retransmissions remain.
pub async fn join(
    ike: IkeConfig,
    gcks: SocketAddr,
    request: RegistrationRequest,
    nat_t: bool,
    deadline: Duration,
) -> Result<Joined, JoinError> {
    let bind: SocketAddr = if gcks.is_ipv6() {
        "[::]:0".parse()
    } else {
        "0.0.0.0:0".parse()
    }
    .unwrap_or_else(|_| SocketAddr::from(([0; 4], 0)));
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(gcks).await?;
    let local = sock.local_addr()?;
    let mut rng = SystemRandom::new();
    let started = Instant::now();
    let mut sa = IkeSa::initiate(ike, Goal::GsaAuth(request), local, gcks, started, &mut rng)?;
    let mut buf = vec![0u8; 65_535];
    loop {
        while let Some(d) = sa.poll_transmit() {
            let out = if nat_t { with_non_esp_marker(&d) } else { d };
            sock.send(&out).await?;
        }
        while let Some(e) = sa.poll_event() {
            match e {
                Event::Registered {
                    gsa,
                    kd,
                    transport_mode,
                    ..
                } => {
                    let kwk = sa.key_wrap_key()?;
                    return Ok(Joined {
                        gsa,
                        kd,
                        transport_mode,
                        kwk,
                        sa,
                        socket: sock,
                    });
                }
                Event::RegistrationRefused { notify, .. } => {
                    return Err(JoinError::Refused(notify));
                }
                Event::Closed(r) => return Err(JoinError::Closed(r)),
                other => debug!(event = ?other, "join"),
            }
        }
        let now = Instant::now();
        if now.duration_since(started) >= deadline {
            return Err(JoinError::Timeout(deadline));
        }
        let until_timer = sa
            .poll_timeout()
            .map_or(deadline, |t| t.saturating_duration_since(now));
        let wait = until_timer.min(deadline.saturating_sub(now.duration_since(started)));
        match tokio::time::timeout(wait, sock.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                let data = &buf[..n];
                let ike = if nat_t {
                    match classify_port_4500(data) {
                        Ok(Port4500::Ike(m)) => m,
                        _ => continue,
                    }
                } else {
                    data
                };
                sa.handle(ike, Instant::now(), &mut rng);
            }
            // ICMP port unreachable and the like: the retransmission timer decides.
            Ok(Err(e)) => debug!(error = %e, "recv"),
            Err(_) => sa.handle_timeout(Instant::now()),
        }
    }
}
