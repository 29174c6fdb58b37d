//! What an operator asks for (`gm join` flags, or the `join` command of the control socket)
//! and its loading into a [`MembershipConfig`]: credentials read from files, identities
//! parsed, every error naming the field at fault.
//!
//! Secrets never travel over the control socket: the client sends file paths and the daemon
//! reads them, into zeroized buffers.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use gikev2_proto::crypto::PublicKey;
use gikev2_proto::crypto::{IkeSuite, SecretBytes, SignatureScheme, SigningKey};
use gikev2_proto::ike::x509::CertificateResolver;
use gikev2_proto::ike::{
    IkeConfig, IkeLifetimes, LocalAuth, LocalPpk, PeerAuth, PeerAuthResolver, SinglePeer,
};
use gikev2_proto::registry::{EncrId, KeId, KwaId, PrfId, TransformType};
use gikev2_proto::wire::{IdPayload, Transform};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The IKE port (RFC 7296 2.23) used when `gcks` names no port.
pub const DEFAULT_GCKS_PORT: u16 = 500;
/// The NAT-T port, where IKE datagrams carry the non-ESP marker (RFC 3948 2.2).
pub use gikev2_proto::ike::NAT_T_PORT;
/// Most Sender-IDs a member asks for (RFC 9838 2.5.1: one per encryption module).
pub const MAX_SENDER_IDS: u32 = 64;
/// Largest credential file read (keys, certificates, PSKs).
const MAX_FILE: u64 = 256 * 1024;

/// One membership as the operator asks for it: `gm join` flags, or the arguments of the
/// control socket's `join` command. Files are named, never inlined.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinArgs {
    /// The group (sent as IDg of type ID_KEY_ID, RFC 9838 4.2).
    pub group: String,
    /// The GCKS: `host[:port]` (port 500 by default; 4500 uses the non-ESP marker).
    pub gcks: String,
    /// A file holding the pre-shared key (AUTH method 2), used both ways.
    #[serde(default)]
    pub psk_file: Option<PathBuf>,
    /// Our private key (PKCS#8, PEM or DER) for AUTH method 14.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Our certificate chain (PEM or DER), end entity first; without it the key is used as
    /// a raw public key the GCKS knows.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Trust anchors (PEM or DER CA certificates) that the GCKS's certificate must chain to.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The GCKS's raw public key (SubjectPublicKeyInfo, PEM or DER).
    #[serde(default)]
    pub gcks_key: Option<PathBuf>,
    /// The identity the GCKS must present (IDr); any identity when absent.
    #[serde(default)]
    pub gcks_id: Option<String>,
    /// Send to the group, asking for this many Sender-IDs (GROUP_SENDER, RFC 9838 2.3.1).
    #[serde(default)]
    pub sender: Option<u32>,
    /// A sender that also receives the group's traffic (SAs in both directions, 2.3.3).
    #[serde(default)]
    pub receive: bool,
    /// Our identity (IDi): an IP address, `user@domain` (RFC 822) or an FQDN. Default: the
    /// host name.
    #[serde(default)]
    pub id: Option<String>,
    /// A file holding a post-quantum preshared key for the GCKS (RFC 8784).
    #[serde(default)]
    pub ppk_file: Option<PathBuf>,
    /// The PPK's PPK_ID (sent as PPK_ID_FIXED, RFC 8784 5.1).
    #[serde(default)]
    pub ppk_id: Option<String>,
    /// The PPK is mandatory (RFC 8784 mandatory_or_not): no NO_PPK_AUTH fallback.
    #[serde(default)]
    pub ppk_required: bool,
    /// Offer X25519 + ML-KEM-768 (RFC 9370) first.
    #[serde(default)]
    pub ml_kem: bool,
    /// Seconds before the member rekeys its IKE SA (RFC 7296 2.8); 0 never. Default 4 h
    /// (`IkeLifetimes::from_secs`).
    #[serde(default)]
    pub ike_rekey_time: Option<u64>,
    /// Largest random part taken off `ike_rekey_time`. Default a tenth of it.
    #[serde(default)]
    pub ike_rekey_jitter: Option<u64>,
    /// Seconds before an IKE SA no rekey replaced is deleted; 0 no limit. Default
    /// `ike_rekey_time` plus a tenth.
    #[serde(default)]
    pub ike_lifetime: Option<u64>,
}

/// The IKE SA lifetimes of a membership (RFC 7296 2.8), checked against each other.
fn ike_lifetimes(a: &JoinArgs) -> Result<IkeLifetimes, ConfigError> {
    IkeLifetimes::from_secs(a.ike_rekey_time, a.ike_rekey_jitter, a.ike_lifetime).map_err(|e| {
        let field = match e.field() {
            "rekey_jitter" => "ike_rekey_jitter",
            _ => "ike_lifetime",
        };
        bad(field, e.to_string())
    })
}

/// A configuration error, naming the field (flag) at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        reason: reason.into(),
    }
}

/// A membership ready to run: the IKE configuration (with its credentials) and what to ask
/// the GCKS for.
#[derive(Clone)]
pub struct MembershipConfig {
    /// The group's name as the operator gave it (the key of `status` and `leave`).
    pub group: String,
    pub group_id: IdPayload,
    pub gcks: SocketAddr,
    pub ike: IkeConfig,
    /// GROUP_SENDER with this many Sender-IDs (RFC 9838 2.3.1, 2.5.1).
    pub sender_ids: Option<u32>,
    /// A sender that also receives (RFC 9838 2.3.3).
    pub receive: bool,
    /// How we authenticate, for `status` ("psk", "raw-key", "certificate").
    pub auth_kind: &'static str,
}

impl core::fmt::Debug for MembershipConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MembershipConfig")
            .field("group", &self.group)
            .field("gcks", &self.gcks)
            .field("sender_ids", &self.sender_ids)
            .field("auth", &self.auth_kind)
            .finish_non_exhaustive()
    }
}

/// The IKE SA suites a member offers, in preference order: AES-GCM-256 with
/// HMAC-SHA2-256 and KW_5649_256 over Curve25519, then over ECP-256 (RFC 8247 2.1-2.4;
/// RFC 9838 4.5.4: the KWA is negotiated in IKE_SA_INIT).
pub fn default_suites() -> Vec<IkeSuite> {
    [KeId::Curve25519, KeId::Ecp256]
        .into_iter()
        .filter_map(|ke| {
            IkeSuite::from_transforms(&[
                Transform::encr(EncrId::AesGcm16, Some(256)),
                Transform::prf(PrfId::HmacSha2_256),
                Transform::ke(ke),
                Transform::kwa(KwaId::Kw5649_256),
            ])
            .ok()
        })
        .collect()
}

/// [`default_suites`] after X25519 with ML-KEM-768 as additional key exchange 1 (RFC 9370;
/// KE method 36, `IANA.md`): the GCKS runs IKE_INTERMEDIATE and the registration IKE SA
/// resists a quantum computer (RFC 9838 6.2).
pub fn ml_kem_suites() -> Vec<IkeSuite> {
    let hybrid = IkeSuite::from_transforms(&[
        Transform::encr(EncrId::AesGcm16, Some(256)),
        Transform::prf(PrfId::HmacSha2_256),
        Transform::ke(KeId::Curve25519),
        Transform::new(TransformType::AddKe1, KeId::MlKem768.value()),
        Transform::kwa(KwaId::Kw5649_256),
    ]);
    hybrid.into_iter().chain(default_suites()).collect()
}

/// Shortest PPK accepted: RFC 8784 6 asks for at least 256 bits of entropy.
pub const MIN_PPK_LEN: usize = 32;

/// The `--ppk-file`/`--ppk-id` pair, read into an initiator's [`LocalPpk`].
fn load_ppk(a: &JoinArgs) -> Result<Option<LocalPpk>, ConfigError> {
    let (file, id) = match (&a.ppk_file, &a.ppk_id) {
        (None, None) if a.ppk_required => {
            return Err(bad("ppk_required", "needs --ppk-file and --ppk-id"));
        }
        (None, None) => return Ok(None),
        (Some(_), None) => return Err(bad("ppk_id", "--ppk-file needs its --ppk-id")),
        (None, Some(_)) => return Err(bad("ppk_file", "--ppk-id needs its --ppk-file")),
        (Some(f), Some(i)) => (f, i),
    };
    if id.is_empty() || id.len() > 255 {
        return Err(bad("ppk_id", "1 to 255 octets"));
    }
    let bytes = read_file("ppk_file", file)?;
    let mut end = bytes.len();
    while end > 0 && matches!(bytes[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    if end < MIN_PPK_LEN {
        return Err(bad(
            "ppk_file",
            format!(
                "{}: {end} octets; a PPK needs at least {MIN_PPK_LEN} (RFC 8784 6: 256 bits of \
                 entropy)",
                file.display()
            ),
        ));
    }
    Ok(Some(LocalPpk {
        id: id.as_bytes().to_vec(),
        secret: SecretBytes::from_slice(&bytes[..end]),
        mandatory: a.ppk_required,
    }))
}

/// Parses an identity: an IP address, `user@domain`, or an FQDN.
pub fn parse_id(field: &'static str, s: &str) -> Result<IdPayload, ConfigError> {
    if s.is_empty() {
        return Err(bad(field, "empty identity"));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IdPayload::ip(ip));
    }
    if s.contains('@') {
        return IdPayload::rfc822(s).map_err(|e| bad(field, e.to_string()));
    }
    IdPayload::fqdn(s).map_err(|e| bad(field, e.to_string()))
}

/// Resolves `host[:port]` (port 500 by default).
pub fn parse_gcks(s: &str) -> Result<SocketAddr, ConfigError> {
    if s.is_empty() {
        return Err(bad("gcks", "missing address"));
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_GCKS_PORT));
    }
    // A port that is a number but not a port would otherwise read as part of a host name
    // ("cannot resolve").
    if let Some((_, p)) = s.rsplit_once(':')
        && !p.is_empty()
        && p.bytes().all(|b| b.is_ascii_digit())
        && !p.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Err(bad("gcks", format!("{s:?}: port {p} is not in 1..=65535")));
    }
    let with_port = if s
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        s.to_string()
    } else {
        format!("{s}:{DEFAULT_GCKS_PORT}")
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| bad("gcks", format!("cannot resolve {s:?}: {e}")))?
        .next()
        .ok_or_else(|| bad("gcks", format!("{s:?} resolves to no address")))
}

fn read_file(field: &'static str, path: &Path) -> Result<Zeroizing<Vec<u8>>, ConfigError> {
    let meta =
        std::fs::metadata(path).map_err(|e| bad(field, format!("{}: {e}", path.display())))?;
    if meta.len() > MAX_FILE {
        return Err(bad(
            field,
            format!("{}: larger than {MAX_FILE} octets", path.display()),
        ));
    }
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| bad(field, format!("{}: {e}", path.display())))
}

/// The DER blocks of a PEM file with the given label suffix ("PRIVATE KEY",
/// "CERTIFICATE", "PUBLIC KEY"), or the whole file when it is not PEM (DER).
fn pem_or_der(
    field: &'static str,
    bytes: &[u8],
    label: &str,
) -> Result<Vec<Zeroizing<Vec<u8>>>, ConfigError> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Ok(vec![Zeroizing::new(bytes.to_vec())]);
    };
    if !text.contains("-----BEGIN ") {
        return Ok(vec![Zeroizing::new(bytes.to_vec())]);
    }
    let mut out = Vec::new();
    let mut body: Option<Zeroizing<String>> = None;
    for line in text.lines().map(str::trim) {
        if let Some(l) = line.strip_prefix("-----BEGIN ") {
            let l = l.trim_end_matches('-');
            body = l.ends_with(label).then(|| Zeroizing::new(String::new()));
        } else if line.starts_with("-----END ") {
            if let Some(b) = body.take() {
                // The decoder's message would quote the offending octet: the file may
                // hold a secret, so say nothing about its content.
                let der = base64::engine::general_purpose::STANDARD
                    .decode(b.as_bytes())
                    .map_err(|_| bad(field, "a PEM block is not valid base64"))?;
                out.push(Zeroizing::new(der));
            }
        } else if let Some(b) = body.as_mut() {
            b.push_str(line);
        }
    }
    if out.is_empty() {
        return Err(bad(field, format!("no PEM block ending in {label:?}")));
    }
    Ok(out)
}

/// What a private key file that is not PKCS#8 is, and how to convert it, from its PEM
/// label (the common case: `pki --gen --type ecdsa|rsa` and `openssl ecparam -genkey`
/// write SEC1 or PKCS#1 keys); empty when the label says nothing more. The file's content
/// is never quoted: it may be a secret.
pub fn private_key_format_hint(bytes: &[u8]) -> &'static str {
    let text = String::from_utf8_lossy(bytes);
    let label = |l: &str| text.contains(&format!("-----BEGIN {l}-----"));
    if label("EC PRIVATE KEY") {
        " (this is a SEC1 \"EC PRIVATE KEY\"; convert it with `openssl pkcs8 -topk8 \
         -nocrypt -in FILE -out FILE.pk8`)"
    } else if label("RSA PRIVATE KEY") {
        " (this is a PKCS#1 \"RSA PRIVATE KEY\"; convert it with `openssl pkcs8 -topk8 \
         -nocrypt -in FILE -out FILE.pk8`)"
    } else if label("ENCRYPTED PRIVATE KEY") {
        " (this PKCS#8 key is encrypted; decrypt it with `openssl pkcs8 -in FILE -out \
         FILE.pk8`)"
    } else {
        ""
    }
}

/// Loads a PKCS#8 private key, finding its scheme among those `SigningKey` supports.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, ConfigError> {
    let bytes = read_file("key", path)?;
    let der = pem_or_der("key", &bytes, "PRIVATE KEY")?
        .into_iter()
        .next()
        .ok_or_else(|| bad("key", "empty"))?;
    SignatureScheme::ALL
        .into_iter()
        .find_map(|s| SigningKey::from_pkcs8(s, &der).ok())
        .ok_or_else(|| {
            bad(
                "key",
                format!(
                    "{}: not a PKCS#8 Ed25519, ECDSA P-256, RSA or ML-DSA private key{}",
                    path.display(),
                    private_key_format_hint(&bytes)
                ),
            )
        })
}

fn load_certs(field: &'static str, path: &Path) -> Result<Vec<Vec<u8>>, ConfigError> {
    let bytes = read_file(field, path)?;
    let certs: Vec<Vec<u8>> = pem_or_der(field, &bytes, "CERTIFICATE")?
        .into_iter()
        .map(|d| d.to_vec())
        .collect();
    for (i, c) in certs.iter().enumerate() {
        PublicKey::from_certificate(c)
            .map_err(|e| bad(field, format!("certificate {i} in {}: {e}", path.display())))?;
    }
    Ok(certs)
}

fn load_public_key(path: &Path) -> Result<PublicKey, ConfigError> {
    let bytes = read_file("gcks_key", path)?;
    let der = pem_or_der("gcks_key", &bytes, "PUBLIC KEY")?
        .into_iter()
        .next()
        .ok_or_else(|| bad("gcks_key", "empty"))?;
    PublicKey::from_spki(&der).map_err(|e| bad("gcks_key", format!("{}: {e}", path.display())))
}

fn load_psk(path: &Path) -> Result<SecretBytes, ConfigError> {
    let bytes = read_file("psk_file", path)?;
    // A trailing newline is an editor's, not part of the key.
    let mut end = bytes.len();
    while end > 0 && matches!(bytes[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    if end == 0 {
        return Err(bad("psk_file", format!("{}: empty", path.display())));
    }
    Ok(SecretBytes::from_slice(&bytes[..end]))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl JoinArgs {
    /// Checks the arguments and reads the credentials.
    pub fn load(&self) -> Result<MembershipConfig, ConfigError> {
        if self.group.is_empty() {
            return Err(bad("group", "empty group name"));
        }
        if self.group.len() > 255 {
            return Err(bad("group", "longer than 255 octets"));
        }
        let gcks = parse_gcks(&self.gcks)?;
        match self.sender {
            Some(0) => return Err(bad("sender", "at least one Sender-ID")),
            Some(n) if n > MAX_SENDER_IDS => {
                return Err(bad(
                    "sender",
                    format!("at most {MAX_SENDER_IDS} Sender-IDs"),
                ));
            }
            _ => {}
        }
        if self.receive && self.sender.is_none() {
            return Err(bad("receive", "only meaningful with --sender"));
        }
        let local_id = match &self.id {
            Some(s) => parse_id("id", s)?,
            None => parse_id("id", &host_name())?,
        };
        let remote_id = self
            .gcks_id
            .as_deref()
            .map(|s| parse_id("gcks_id", s))
            .transpose()?;
        if self.cert.is_some() && self.key.is_none() {
            return Err(bad("cert", "a certificate needs its private key (--key)"));
        }
        if self.key.is_some() && self.psk_file.is_some() {
            return Err(bad("psk_file", "give either --psk-file or --key, not both"));
        }
        let psk = self.psk_file.as_deref().map(load_psk).transpose()?;
        let (local_auth, auth_kind) = match (&self.key, &psk) {
            (Some(k), _) => {
                let key = Arc::new(load_signing_key(k)?);
                let certs = self
                    .cert
                    .as_deref()
                    .map(|c| load_certs("cert", c))
                    .transpose()?
                    .unwrap_or_default();
                let kind = if certs.is_empty() {
                    "raw-key"
                } else {
                    "certificate"
                };
                (LocalAuth::Signature { key, certs }, kind)
            }
            (None, Some(p)) => (LocalAuth::Psk(p.clone()), "psk"),
            (None, None) => {
                return Err(bad(
                    "psk_file",
                    "no credentials: give --psk-file, or --key (with --cert)",
                ));
            }
        };
        let peer_auth: Arc<dyn PeerAuthResolver> = match (&self.ca, &self.gcks_key, &psk) {
            (Some(_), Some(_), _) => {
                return Err(bad("gcks_key", "give either --ca or --gcks-key, not both"));
            }
            (Some(ca), None, _) => {
                let anchors = load_certs("ca", ca)?;
                let clock: gikev2_proto::ike::x509::Clock = Arc::new(SystemTime::now);
                let mut r = CertificateResolver::new(anchors, clock)
                    .map_err(|e| bad("ca", e.to_string()))?;
                if let Some(id) = &remote_id {
                    r = r.with_peer_id(id.clone());
                }
                Arc::new(r)
            }
            (None, Some(k), _) => {
                let key = load_public_key(k)?;
                let schemes = SignatureScheme::ALL
                    .into_iter()
                    .filter(|s| key.key_type().fits(*s))
                    .collect();
                Arc::new(SinglePeer {
                    id: remote_id.clone(),
                    auth: PeerAuth::PublicKey { key, schemes },
                })
            }
            (None, None, Some(p)) => Arc::new(SinglePeer {
                id: remote_id.clone(),
                auth: PeerAuth::Psk(p.clone()),
            }),
            (None, None, None) => {
                return Err(bad(
                    "ca",
                    "a signature-authenticated member needs --ca or --gcks-key to verify the GCKS",
                ));
            }
        };
        let suites = if self.ml_kem {
            ml_kem_suites()
        } else {
            default_suites()
        };
        let mut ike = IkeConfig::new(suites, local_id, local_auth, peer_auth);
        ike.set_lifetimes(ike_lifetimes(self)?);
        ike.remote_id = remote_id;
        ike.ppk = load_ppk(self)?;
        Ok(MembershipConfig {
            group: self.group.clone(),
            group_id: IdPayload::key_id(self.group.as_bytes().to_vec()),
            gcks,
            ike,
            sender_ids: self.sender,
            receive: self.receive,
            auth_kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> JoinArgs {
        JoinArgs {
            group: "g".into(),
            gcks: "127.0.0.1".into(),
            id: Some("member.example".into()),
            ..Default::default()
        }
    }

    #[test]
    fn errors_name_the_field() {
        let e = args().load().unwrap_err();
        assert_eq!(e.field, "psk_file");
        let mut a = args();
        a.gcks = "not an address at all:99999".into();
        assert_eq!(a.load().unwrap_err().field, "gcks");
        let mut a = args();
        a.sender = Some(0);
        assert_eq!(a.load().unwrap_err().field, "sender");
        let mut a = args();
        a.psk_file = Some("/nonexistent/psk".into());
        let e = a.load().unwrap_err();
        assert_eq!(e.field, "psk_file");
        assert!(e.to_string().contains("/nonexistent/psk"), "{e}");
        let mut a = args();
        a.group.clear();
        assert_eq!(a.load().unwrap_err().field, "group");
        let mut a = args();
        a.cert = Some("/x".into());
        assert_eq!(a.load().unwrap_err().field, "cert");
    }

    /// RFC 7296 2.8 lifetimes: strongSwan's defaults, 0 turning a limit off, and a
    /// lifetime not above the rekey time or a jitter not below it refused by name.
    #[test]
    fn ike_sa_lifetimes() {
        use std::time::Duration;
        let dir = std::env::temp_dir().join(format!("gm-ike-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let psk = dir.join("psk");
        std::fs::write(&psk, b"a psk").unwrap();
        let mut a = args();
        a.psk_file = Some(psk);
        let ike = a.load().unwrap().ike;
        assert_eq!(
            (ike.rekey_after, ike.rekey_jitter, ike.lifetime),
            (
                Some(Duration::from_secs(14400)),
                Duration::from_secs(1440),
                Some(Duration::from_secs(15840))
            )
        );
        let mut b = a.clone();
        (b.ike_rekey_time, b.ike_rekey_jitter, b.ike_lifetime) = (Some(600), Some(60), Some(0));
        let ike = b.load().unwrap().ike;
        assert_eq!(
            (ike.rekey_after, ike.rekey_jitter, ike.lifetime),
            (
                Some(Duration::from_secs(600)),
                Duration::from_secs(60),
                None
            )
        );
        let mut b = a.clone();
        (b.ike_rekey_time, b.ike_lifetime) = (Some(0), Some(100));
        assert_eq!(b.load().unwrap().ike.rekey_after, None);
        // Only the rekey time: the jitter and the hard limit follow it.
        let mut b = a.clone();
        b.ike_rekey_time = Some(60);
        let ike = b.load().unwrap().ike;
        assert_eq!(
            (ike.rekey_jitter, ike.lifetime),
            (Duration::from_secs(6), Some(Duration::from_secs(66)))
        );
        let mut b = a.clone();
        (b.ike_rekey_time, b.ike_lifetime) = (Some(3600), Some(3600));
        assert_eq!(b.load().unwrap_err().field, "ike_lifetime");
        let mut b = a.clone();
        (b.ike_rekey_time, b.ike_rekey_jitter) = (Some(600), Some(600));
        assert_eq!(b.load().unwrap_err().field, "ike_rekey_jitter");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// RFC 8784: `--ppk-file` and `--ppk-id` go together, a PPK is at least 32 octets, and
    /// the loaded PPK is mandatory only with `--ppk-required`; `--ml-kem` puts the hybrid
    /// X25519 + ML-KEM-768 suite first.
    #[test]
    fn ppk_and_ml_kem_options() {
        let dir = std::env::temp_dir().join(format!("gm-ppk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (psk, short, good) = (dir.join("psk"), dir.join("short"), dir.join("ppk"));
        std::fs::write(&psk, b"a psk").unwrap();
        std::fs::write(&short, b"too short\n").unwrap();
        std::fs::write(&good, [b'k'; 40]).unwrap();
        let mut a = args();
        a.psk_file = Some(psk);
        let mut b = a.clone();
        b.ppk_file = Some(good.clone());
        assert_eq!(b.load().unwrap_err().field, "ppk_id");
        let mut b = a.clone();
        b.ppk_id = Some("ppk1".into());
        assert_eq!(b.load().unwrap_err().field, "ppk_file");
        let mut b = a.clone();
        b.ppk_required = true;
        assert_eq!(b.load().unwrap_err().field, "ppk_required");
        let mut b = a.clone();
        (b.ppk_file, b.ppk_id) = (Some(short), Some("ppk1".into()));
        let e = b.load().unwrap_err();
        assert_eq!(e.field, "ppk_file");
        assert!(e.reason.contains("9 octets"), "{e}");
        let mut b = a.clone();
        (b.ppk_file, b.ppk_id) = (Some(good), Some("ppk1".into()));
        let ppk = b.load().unwrap().ike.ppk.unwrap();
        assert_eq!(
            (ppk.id.as_slice(), ppk.secret.len(), ppk.mandatory),
            (&b"ppk1"[..], 40, false)
        );
        assert!(
            !format!("{ppk:?}").contains("kkkk"),
            "Debug redacts the PPK"
        );
        b.ppk_required = true;
        assert!(b.load().unwrap().ike.ppk.unwrap().mandatory);
        assert!(a.load().unwrap().ike.ppk.is_none());
        assert!(
            a.load()
                .unwrap()
                .ike
                .proposals
                .iter()
                .all(|s| s.addke.is_empty())
        );
        a.ml_kem = true;
        let first = a.load().unwrap().ike.proposals[0].clone();
        assert_eq!(first.addke, [gikev2_proto::crypto::KeMethod::MlKem768]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn gcks_port_defaults_to_500() {
        assert_eq!(parse_gcks("127.0.0.1").unwrap().port(), 500);
        assert_eq!(parse_gcks("127.0.0.1:4500").unwrap().port(), 4500);
        assert_eq!(parse_gcks("[::1]:848").unwrap().port(), 848);
        // A port out of range is named as such, not as a host name that does not resolve.
        for bad in ["127.0.0.1:99999", "gcks.example:70000", "gcks.example:0"] {
            let e = parse_gcks(bad).unwrap_err().to_string();
            assert!(e.contains("is not in 1..=65535"), "{bad}: {e}");
            assert!(e.starts_with("gcks: "), "{bad}: {e}");
        }
    }

    #[test]
    fn identities() {
        assert_eq!(
            parse_id("id", "192.0.2.1").unwrap(),
            IdPayload::ip("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            parse_id("id", "a@b.example").unwrap(),
            IdPayload::rfc822("a@b.example").unwrap()
        );
        assert_eq!(
            parse_id("id", "gm.example").unwrap(),
            IdPayload::fqdn("gm.example").unwrap()
        );
    }

    #[test]
    fn pem_blocks_are_found_by_label() {
        let pem = "junk\n-----BEGIN CERTIFICATE-----\nAQID\n-----END CERTIFICATE-----\n\
                   -----BEGIN PRIVATE KEY-----\nBAU=\n-----END PRIVATE KEY-----\n";
        let c = pem_or_der("cert", pem.as_bytes(), "CERTIFICATE").unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(&c[0][..], &[1, 2, 3]);
        let k = pem_or_der("key", pem.as_bytes(), "PRIVATE KEY").unwrap();
        assert_eq!(&k[0][..], &[4, 5]);
        assert!(pem_or_der("x", pem.as_bytes(), "PUBLIC KEY").is_err());
        assert_eq!(
            &pem_or_der("x", &[0x30, 1, 0], "X").unwrap()[0][..],
            &[0x30, 1, 0]
        );
    }
}
