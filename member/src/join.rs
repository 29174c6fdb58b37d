//! One registration over UDP (`gm join --foreground`): IKE_SA_INIT, then GSA_AUTH
//! (RFC 9838 2.3.1), driving the sans-IO [`IkeSa`] with a socket and the clock.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gikev2_proto::crypto::keywrap::KeyWrapKey;
use gikev2_proto::crypto::{CryptoError, SystemRandom};
use gikev2_proto::ike::{
    CloseReason, Event, Goal, IkeConfig, IkeSa, NAT_T_PORT, RegistrationRequest,
};
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
    #[error("the IKE SA closed: {}", close_reason(.0))]
    Closed(CloseReason),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Why an IKE SA closed, for an operator: what happened and what to look at.
pub fn close_reason(r: &CloseReason) -> String {
    match r {
        CloseReason::Timeout => "no answer from the GCKS (retransmissions exhausted, RFC 7296 \
                                 2.4): check --gcks and that `gcks serve` listens there"
            .into(),
        CloseReason::HalfOpenExpired => "the IKE SA was not authenticated in time".into(),
        CloseReason::AuthenticationFailed => "authentication failed (AUTHENTICATION_FAILED): \
             the GCKS refused our credential (a wrong PSK or key, or an --id it does not \
             know)"
            .into(),
        CloseReason::ResponderNotVerified => "we could not authenticate the GCKS (and told \
             it AUTHENTICATION_FAILED): its AUTH did not verify or it is not --gcks-id; to \
             verify a GCKS that signs, give --ca or --gcks-key (without them we expect it to \
             answer with the PSK); with --ppk-required it must use the PPK"
            .into(),
        CloseReason::NoProposalChosen => {
            "no proposal chosen: the GCKS and we share no IKE SA suite (RFC 7296 2.7)".into()
        }
        CloseReason::PeerError(n) => format!("the GCKS answered {n}"),
        CloseReason::Deleted => "deleted (INFORMATIONAL Delete)".into(),
        CloseReason::ProtocolError(why) => format!("protocol error: {why}"),
    }
}

/// Registers to a group at `gcks`. Datagrams to port 4500 carry the non-ESP marker (RFC
/// 3948 2.2), also after NAT detection moved the IKE SA there (RFC 7296 2.23). Gives up
/// after `deadline` even if retransmissions remain.
pub async fn join(
    ike: IkeConfig,
    gcks: SocketAddr,
    request: RegistrationRequest,
    deadline: Duration,
) -> Result<Joined, JoinError> {
    let mut sock = connected(gcks).await?;
    let mut peer = gcks;
    let local = sock.local_addr()?;
    let mut rng = SystemRandom::new();
    let started = Instant::now();
    let mut sa = IkeSa::initiate(ike, Goal::GsaAuth(request), local, gcks, started, &mut rng)?;
    let mut buf = vec![0u8; 65_535];
    loop {
        while let Some(d) = sa.poll_datagram() {
            if d.remote != peer {
                sock = connected(d.remote).await?;
                peer = d.remote;
            }
            let out = if peer.port() == NAT_T_PORT {
                with_non_esp_marker(&d.data)
            } else {
                d.data
            };
            sock.send(&out).await?;
        }
        while let Some(e) = sa.poll_event() {
            match e {
                Event::Registered {
                    gsa,
                    kd,
                    transport_mode,
                    kwk,
                    ..
                } => {
                    // The GSK_w of the IKE SA that carried the answer (RFC 9838 3.1.1).
                    let kwk = match kwk {
                        Some(k) => k.key()?,
                        None => sa.key_wrap_key()?,
                    };
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
                let ike = if peer.port() == NAT_T_PORT {
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
            Err(_) => sa.handle_timeout(Instant::now(), &mut rng),
        }
    }
}

/// A UDP socket on an ephemeral port connected to `peer`.
async fn connected(peer: SocketAddr) -> std::io::Result<UdpSocket> {
    let bind = if peer.is_ipv6() {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(peer).await?;
    Ok(sock)
}
