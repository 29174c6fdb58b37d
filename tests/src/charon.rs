//! strongSwan's charon as an interop peer inside a network namespace.
//!
//! [`CharonPeer::start`] writes a strongswan.conf, a swanctl.conf and credentials into a
//! fresh temporary directory, starts charon in the foreground inside the namespace with
//! `STRONGSWAN_CONF` pointing there, waits (bounded poll) for its own vici socket in that
//! directory, and loads everything with `swanctl --load-all --file … --uri …`.
//!
//! Things worth knowing (found on strongSwan 5.9.8, Debian bookworm):
//! - charon insists on the pid file `/var/run/charon.pid` (not configurable), so each
//!   charon runs in its own mount namespace (`unshare --mount`) with a private `/run`
//!   bind-mounted from the temp dir. Nothing leaks into the host's `/run`.
//! - The kernel has no XFRM ESP; none is needed: connections have no children and are
//!   initiated IKE-only (`swanctl --initiate --ike`), `childless = force` (RFC 6023).
//!   `kernel-netlink` is still loaded, for addresses and routes only.
//! - Initiating an IKE-only SA while one of that config is up makes charon reuse it
//!   ("nothing to initiate") and swanctl waits forever: [`CharonPeer::initiate`] always
//!   passes `--timeout`.
//! - There is no `save-keys` plugin before 6.0: with [`CharonConfig::log_keys`] charon logs
//!   IKE keys at `ike` level 4 and [`CharonPeer::ike_keys`] reads them back from the log
//!   (for Wireshark's IKEv2 decryption table, see [`crate::capture`]).
//! - ML-KEM needs strongSwan 6.0+ ([`CharonInstall::mlkem_support`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::netns::{Netns, run};
use crate::pki::Credential;
use crate::{HarnessError, Result, poll_until};

const CHARON_CANDIDATES: &[&str] = &[
    "/usr/lib/ipsec/charon",
    "/usr/libexec/ipsec/charon",
    "/usr/lib/strongswan/charon",
    "/usr/libexec/strongswan/charon",
];

/// Plugins loaded when present, in this order. Together they cover X25519/ECP KE,
/// AES-GCM/CBC and ChaCha20-Poly1305, SHA-2 PRFs, PSK and Ed25519/ECDSA certificates,
/// and ML-KEM where this strongSwan has it (`ml`, or `openssl` with OpenSSL 3.5+).
pub const WANTED_PLUGINS: &[&str] = &[
    "random",
    "nonce",
    "openssl",
    "ml",
    "aes",
    "pem",
    "pkcs1",
    "pkcs8",
    "x509",
    "pubkey",
    "constraints",
    "curve25519",
    "sha2",
    "sha1",
    "hmac",
    "kdf",
    "gcm",
    "chapoly",
    "drbg",
    "kernel-netlink",
    "socket-default",
    "vici",
];

/// The charon found on this machine.
#[derive(Clone, Debug)]
pub struct CharonInstall {
    pub charon: PathBuf,
    pub swanctl: PathBuf,
    pub plugin_dir: PathBuf,
    /// Plugin names (`libstrongswan-<name>.so`) in `plugin_dir`.
    pub plugins: BTreeSet<String>,
    /// strongSwan version, e.g. `(5, 9, 8)`.
    pub version: (u32, u32, u32),
}

impl CharonInstall {
    /// Finds charon, swanctl and the plugins (once per process). The `Err` says what is
    /// missing and how to install it.
    pub fn detect() -> Result<CharonInstall, String> {
        static FOUND: OnceLock<Result<CharonInstall, String>> = OnceLock::new();
        FOUND.get_or_init(Self::detect_uncached).clone()
    }

    fn detect_uncached() -> Result<CharonInstall, String> {
        const HINT: &str = "apt-get install strongswan-charon strongswan-swanctl \
                            libstrongswan-standard-plugins libstrongswan-extra-plugins";
        let charon = CHARON_CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| format!("charon not found in {CHARON_CANDIDATES:?} ({HINT})"))?;
        let swanctl = ["/usr/sbin/swanctl", "/usr/bin/swanctl", "/sbin/swanctl"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| format!("swanctl not found ({HINT})"))?;
        let plugin_dir = charon.with_file_name("plugins");
        let plugins: BTreeSet<String> = std::fs::read_dir(&plugin_dir)
            .map_err(|e| format!("{}: {e}", plugin_dir.display()))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                Some(
                    name.strip_prefix("libstrongswan-")?
                        .strip_suffix(".so")?
                        .to_string(),
                )
            })
            .collect();
        let out = run(Command::new(&charon).arg("--version")).map_err(|e| e.to_string())?;
        let version =
            parse_version(&out).ok_or_else(|| format!("cannot read the version in {out:?}"))?;
        let install = CharonInstall {
            charon,
            swanctl,
            plugin_dir,
            plugins,
            version,
        };
        let missing: Vec<&str> = [
            "nonce",
            "x509",
            "pubkey",
            "sha2",
            "hmac",
            "socket-default",
            "vici",
        ]
        .into_iter()
        .chain(Some("gcm").filter(|_| !install.has_plugin("openssl")))
        .chain(Some("curve25519").filter(|_| !install.has_plugin("openssl")))
        .filter(|p| !install.has_plugin(p))
        .collect();
        if !missing.is_empty() {
            return Err(format!("charon plugins missing: {missing:?} ({HINT})"));
        }
        Ok(install)
    }

    /// Whether `libstrongswan-<name>.so` exists.
    pub fn has_plugin(&self, name: &str) -> bool {
        self.plugins.contains(name)
    }

    /// `"5.9.8"`.
    pub fn version_string(&self) -> String {
        let (a, b, c) = self.version;
        format!("{a}.{b}.{c}")
    }

    /// `Ok` if this charon negotiates ML-KEM (KE 35-37, also as ADDKE per RFC 9370);
    /// else why not. strongSwan has ML-KEM from 6.0 (`ml` plugin, or `openssl` with
    /// OpenSSL 3.5+).
    pub fn mlkem_support(&self) -> Result<(), String> {
        if self.version.0 < 6 {
            return Err(format!(
                "strongSwan {} has no ML-KEM (needs 6.0+)",
                self.version_string()
            ));
        }
        if self.has_plugin("ml") || self.has_plugin("openssl") || self.has_plugin("botan") {
            Ok(())
        } else {
            Err("no ML-KEM capable plugin (ml, openssl, botan)".into())
        }
    }

    /// Whether charon can write Wireshark key files itself (`save-keys`, 6.0+).
    pub fn has_save_keys(&self) -> bool {
        self.has_plugin("save-keys")
    }

    fn load_list(&self) -> String {
        WANTED_PLUGINS
            .iter()
            .filter(|p| self.has_plugin(p))
            .copied()
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let rest = &text[text.find("strongSwan ")? + "strongSwan ".len()..];
    let word: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = word.split('.').map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// An IKE identity as swanctl spells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// ID_FQDN.
    Fqdn(String),
    /// ID_RFC822_ADDR.
    Email(String),
    /// ID_KEY_ID (opaque octets).
    KeyId(Vec<u8>),
    /// ID_IPV4_ADDR / ID_IPV6_ADDR.
    Addr(IpAddr),
}

impl Identity {
    /// The swanctl.conf / secrets spelling, e.g. `fqdn:gcks.example`, `@#0102` (key id).
    /// The generated files quote it: `#` starts a comment in strongSwan's settings.
    pub fn swanctl(&self) -> String {
        match self {
            Identity::Fqdn(name) => format!("fqdn:{name}"),
            Identity::Email(addr) => format!("email:{addr}"),
            Identity::KeyId(id) => format!("@#{}", hex::encode(id)),
            Identity::Addr(IpAddr::V4(a)) => format!("ipv4:{a}"),
            Identity::Addr(IpAddr::V6(a)) => format!("ipv6:{a}"),
        }
    }

    /// How charon prints it in `list-sas` (`local-id`, `remote-id`).
    pub fn listed(&self) -> String {
        match self {
            Identity::Fqdn(s) | Identity::Email(s) => s.clone(),
            Identity::KeyId(id) => hex::encode(id)
                .as_bytes()
                .chunks(2)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join(":"),
            Identity::Addr(a) => a.to_string(),
        }
    }
}

/// How charon authenticates itself and its peer.
#[derive(Clone, Debug)]
pub enum Auth {
    /// Shared key MIC (AUTH method 2) both ways.
    Psk(Vec<u8>),
    /// Signatures (RFC 7427 for Ed25519; ECDSA as charon chooses) with certificates:
    /// `own` is charon's credential, `trusted_cas` the CA certificates (DER) that may
    /// have issued the peer's certificate.
    PubKey {
        own: Credential,
        trusted_cas: Vec<Vec<u8>>,
    },
}

/// A post-quantum preshared key for charon (RFC 8784): `ppk_id` and `ppk_required` in
/// the connection, the key in a `ppk-gikev2` secret with that id.
#[derive(Clone, Debug)]
pub struct CharonPpk {
    /// The PPK_ID as swanctl spells it (charon sends its encoding after the PPK_ID_FIXED
    /// octet).
    pub id: String,
    pub secret: Vec<u8>,
    /// `ppk_required`: no fallback to NO_PPK_AUTH or to an IKE SA without PPK.
    pub required: bool,
    /// Write `ppk_id` in the connection (an initiator needs it to send PPK_IDENTITY). A
    /// 5.9.8 responder with one refuses any other PPK_ID, even without `ppk_required`;
    /// without one it looks the received PPK_ID up among its secrets.
    pub in_conn: bool,
}

/// Whether charon initiates or only responds. A responder accepts any peer address
/// unless `remote_addr` is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Initiator,
    Responder,
}

/// One charon with one connection. Build with [`CharonConfig::new`], adjust fields.
#[derive(Clone, Debug)]
pub struct CharonConfig {
    /// Connection name in swanctl.conf (and in `list-sas`).
    pub conn: String,
    pub role: Role,
    pub local_addr: IpAddr,
    /// The peer; `None` (responders only) means `%any`.
    pub remote_addr: Option<IpAddr>,
    /// The peer's IKE port when it is not 500 (e.g. our responder on a test port).
    pub remote_port: Option<u16>,
    pub local_id: Identity,
    /// The identity the peer must prove; `None` means `%any`.
    pub remote_id: Option<Identity>,
    pub auth: Auth,
    /// IKE proposals in swanctl syntax, e.g. `aes256gcm16-prfsha256-x25519`,
    /// `aes256gcm16-prfsha256-ecp256`, `aes256gcm16-prfsha256-x25519-ke1_mlkem768`.
    pub proposals: Vec<String>,
    /// RFC 7383 fragmentation (`fragmentation = yes`).
    pub fragmentation: bool,
    /// `charon.fragment_size` (bytes of the IP packet) when set.
    pub fragment_size: Option<u32>,
    /// MOBIKE; off by default so IKE_AUTH stays on port 500 (no switch to 4500).
    pub mobike: bool,
    /// `childless` (RFC 6023): `force` by default; 5.9.8 also knows `allow` (childless
    /// only where the responder announced CHILDLESS_IKEV2_SUPPORTED) and `never`.
    pub childless: String,
    /// UDP ports charon listens on.
    pub port: u16,
    pub port_nat_t: u16,
    /// `charon.retransmit_tries` and `retransmit_timeout` (seconds): small, so failures
    /// show up in seconds.
    pub retransmit_tries: u32,
    pub retransmit_timeout: f32,
    /// Log IKE keys (ike level 4) so [`CharonPeer::ike_keys`] can read them. Also logs
    /// the PSK: test secrets only.
    pub log_keys: bool,
    /// Extra `key = value` lines for the connection section.
    pub extra_conn: Vec<(String, String)>,
    /// Extra `key = value` lines for the `charon { }` section of strongswan.conf.
    pub extra_charon: Vec<(String, String)>,
    /// A PPK (RFC 8784) for this connection.
    pub ppk: Option<CharonPpk>,
}

impl CharonConfig {
    /// A childless IKEv2 connection `gikev2` with `aes256gcm16-prfsha256-x25519`,
    /// fragmentation on, MOBIKE off, fast retransmits, key logging on.
    pub fn new(
        role: Role,
        local_addr: IpAddr,
        remote_addr: Option<IpAddr>,
        local_id: Identity,
        remote_id: Option<Identity>,
        auth: Auth,
    ) -> CharonConfig {
        CharonConfig {
            conn: "gikev2".into(),
            role,
            local_addr,
            remote_addr,
            remote_port: None,
            local_id,
            remote_id,
            auth,
            proposals: vec!["aes256gcm16-prfsha256-x25519".into()],
            fragmentation: true,
            fragment_size: None,
            mobike: false,
            childless: "force".into(),
            port: 500,
            port_nat_t: 4500,
            retransmit_tries: 2,
            retransmit_timeout: 1.0,
            log_keys: true,
            extra_conn: Vec::new(),
            extra_charon: Vec::new(),
            ppk: None,
        }
    }

    /// charon as the responder for our initiator: accepts any peer address, and the
    /// peer identity `peer_id` (or any, if `None`).
    pub fn responder(
        local_addr: IpAddr,
        local_id: Identity,
        peer_id: Option<Identity>,
        auth: Auth,
    ) -> CharonConfig {
        CharonConfig::new(Role::Responder, local_addr, None, local_id, peer_id, auth)
    }

    /// charon as the initiator towards our responder listening at `peer` (any port).
    pub fn initiator(
        local_addr: IpAddr,
        peer: SocketAddr,
        local_id: Identity,
        peer_id: Option<Identity>,
        auth: Auth,
    ) -> CharonConfig {
        let mut cfg = CharonConfig::new(
            Role::Initiator,
            local_addr,
            Some(peer.ip()),
            local_id,
            peer_id,
            auth,
        );
        cfg.remote_port = (peer.port() != 500).then_some(peer.port());
        cfg
    }

    /// Replaces the proposals.
    pub fn with_proposals(mut self, proposals: &[&str]) -> CharonConfig {
        self.proposals = proposals.iter().map(|p| p.to_string()).collect();
        self
    }

    fn strongswan_conf(&self, install: &CharonInstall, dir: &Path) -> String {
        let d = dir.display();
        let mut s = String::new();
        let _ = writeln!(s, "# generated by gikev2-tests for one test charon");
        let _ = writeln!(s, "charon {{");
        let _ = writeln!(s, "  load_modular = no");
        let _ = writeln!(s, "  load = {}", install.load_list());
        let _ = writeln!(s, "  port = {}", self.port);
        let _ = writeln!(s, "  port_nat_t = {}", self.port_nat_t);
        let _ = writeln!(s, "  threads = 8");
        let _ = writeln!(s, "  install_routes = no");
        let _ = writeln!(s, "  install_virtual_ip = no");
        let _ = writeln!(s, "  retransmit_tries = {}", self.retransmit_tries);
        let _ = writeln!(s, "  retransmit_timeout = {}", self.retransmit_timeout);
        let _ = writeln!(s, "  retransmit_base = 1.4");
        if let Some(size) = self.fragment_size {
            let _ = writeln!(s, "  fragment_size = {size}");
        }
        for (k, v) in &self.extra_charon {
            let _ = writeln!(s, "  {k} = {v}");
        }
        let _ = writeln!(s, "  plugins {{");
        let _ = writeln!(s, "    vici {{");
        let _ = writeln!(s, "      socket = unix://{d}/charon.vici");
        let _ = writeln!(s, "    }}");
        let _ = writeln!(s, "  }}");
        let _ = writeln!(s, "  filelog {{");
        let _ = writeln!(s, "    charon {{");
        let _ = writeln!(s, "      path = {d}/charon.log");
        let _ = writeln!(s, "      time_format = %T");
        let _ = writeln!(s, "      ike_name = yes");
        let _ = writeln!(s, "      flush_line = yes");
        let _ = writeln!(s, "      default = 1");
        let _ = writeln!(s, "      cfg = 2");
        let _ = writeln!(s, "      enc = 1");
        let _ = writeln!(s, "      net = 2");
        let _ = writeln!(s, "      ike = {}", if self.log_keys { 4 } else { 2 });
        let _ = writeln!(s, "    }}");
        let _ = writeln!(s, "  }}");
        let _ = writeln!(s, "  syslog {{");
        let _ = writeln!(s, "    identifier = charon-gikev2-test");
        let _ = writeln!(s, "  }}");
        let _ = writeln!(s, "}}");
        s
    }

    fn swanctl_conf(&self) -> String {
        let mut s = String::new();
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        let (auth, certs) = match &self.auth {
            Auth::Psk(_) => ("psk", None),
            Auth::PubKey { .. } => ("pubkey", Some("own.der")),
        };
        let _ = writeln!(s, "connections {{");
        let _ = writeln!(s, "  {} {{", self.conn);
        let _ = writeln!(s, "    version = 2");
        let _ = writeln!(s, "    local_addrs = {}", self.local_addr);
        let remote = self
            .remote_addr
            .map_or("%any".to_string(), |a| a.to_string());
        let _ = writeln!(s, "    remote_addrs = {remote}");
        if let Some(port) = self.remote_port {
            let _ = writeln!(s, "    remote_port = {port}");
        }
        let _ = writeln!(s, "    proposals = {}", self.proposals.join(","));
        let _ = writeln!(s, "    fragmentation = {}", yes_no(self.fragmentation));
        let _ = writeln!(s, "    mobike = {}", yes_no(self.mobike));
        let _ = writeln!(s, "    childless = {}", self.childless);
        let _ = writeln!(s, "    encap = no");
        let _ = writeln!(s, "    dpd_delay = 0");
        let _ = writeln!(s, "    unique = never");
        if certs.is_some() {
            // Send the certificate even without a CERTREQ from the peer: our IKE SA
            // sends none (RFC 7296 3.7 makes CERTREQ optional), and charon's default
            // `ifasked` would then leave its CERT out.
            let _ = writeln!(s, "    send_cert = always");
        }
        if let Some(ppk) = &self.ppk {
            if ppk.in_conn {
                let _ = writeln!(s, "    ppk_id = \"{}\"", ppk.id);
            }
            let _ = writeln!(s, "    ppk_required = {}", yes_no(ppk.required));
        }
        for (k, v) in &self.extra_conn {
            let _ = writeln!(s, "    {k} = {v}");
        }
        let _ = writeln!(s, "    local {{");
        let _ = writeln!(s, "      auth = {auth}");
        let _ = writeln!(s, "      id = \"{}\"", self.local_id.swanctl());
        if let Some(certs) = certs {
            let _ = writeln!(s, "      certs = {certs}");
        }
        let _ = writeln!(s, "    }}");
        let _ = writeln!(s, "    remote {{");
        let _ = writeln!(s, "      auth = {auth}");
        let remote_id = self
            .remote_id
            .as_ref()
            .map_or("%any".into(), Identity::swanctl);
        let _ = writeln!(s, "      id = \"{remote_id}\"");
        let _ = writeln!(s, "    }}");
        let _ = writeln!(s, "  }}");
        let _ = writeln!(s, "}}");
        let psk = match &self.auth {
            Auth::Psk(secret) => Some(secret),
            Auth::PubKey { .. } => None,
        };
        if psk.is_some() || self.ppk.is_some() {
            let _ = writeln!(s, "secrets {{");
            if let Some(secret) = psk {
                let _ = writeln!(s, "  ike-gikev2 {{");
                let _ = writeln!(s, "    id-local = \"{}\"", self.local_id.swanctl());
                if let Some(remote) = &self.remote_id {
                    let _ = writeln!(s, "    id-remote = \"{}\"", remote.swanctl());
                }
                let _ = writeln!(s, "    secret = 0x{}", hex::encode(secret));
                let _ = writeln!(s, "  }}");
            }
            if let Some(ppk) = &self.ppk {
                let _ = writeln!(s, "  ppk-gikev2 {{");
                let _ = writeln!(s, "    id = \"{}\"", ppk.id);
                let _ = writeln!(s, "    secret = 0x{}", hex::encode(&ppk.secret));
                let _ = writeln!(s, "  }}");
            }
            let _ = writeln!(s, "}}");
        }
        s
    }
}

/// One IKE SA as `swanctl --list-sas --raw` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IkeSaInfo {
    /// The connection name.
    pub conn: String,
    pub uniqueid: u32,
    /// `ESTABLISHED`, `CONNECTING`, `DELETING`, ...
    pub state: String,
    pub initiator: bool,
    pub spi_i: [u8; 8],
    pub spi_r: [u8; 8],
    pub local_id: String,
    pub remote_id: String,
    /// Every top-level `key=value` of the SA, as printed.
    pub fields: BTreeMap<String, String>,
}

impl IkeSaInfo {
    /// A field, e.g. `encr-alg`, `dh-group`, `local-host`.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }
}

/// Parses the output of `swanctl --list-sas --raw`: lines
/// `list-sa event {<conn> {k=v ... child-sas {...}}}`. Values must not contain spaces
/// (true for the FQDN / key-id / address identities these tests use).
pub fn parse_list_sas(text: &str) -> Vec<IkeSaInfo> {
    let mut sas = Vec::new();
    for line in text.lines() {
        let Some(body) = line.trim().strip_prefix("list-sa event") else {
            continue;
        };
        let tokens = tokenize(body);
        // tokens: { conn { items } }
        let mut i = 0;
        if tokens.get(i).map(String::as_str) != Some("{") {
            continue;
        }
        i += 1;
        while i + 1 < tokens.len() && tokens[i + 1] == "{" {
            let conn = tokens[i].clone();
            i += 2;
            let mut fields = BTreeMap::new();
            let mut depth = 0usize;
            while i < tokens.len() {
                let t = &tokens[i];
                i += 1;
                match t.as_str() {
                    "{" | "[" => depth += 1,
                    "}" | "]" if depth == 0 => break,
                    "}" | "]" => depth -= 1,
                    _ if depth == 0 => {
                        if let Some((k, v)) = t.split_once('=') {
                            fields.insert(k.to_string(), v.to_string());
                        }
                    }
                    _ => {}
                }
            }
            let spi = |key: &str| {
                fields
                    .get(key)
                    .and_then(|v| hex::decode(v).ok())
                    .and_then(|v| <[u8; 8]>::try_from(v).ok())
                    .unwrap_or_default()
            };
            sas.push(IkeSaInfo {
                conn,
                uniqueid: fields
                    .get("uniqueid")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                state: fields.get("state").cloned().unwrap_or_default(),
                initiator: fields.get("initiator").map(String::as_str) == Some("yes"),
                spi_i: spi("initiator-spi"),
                spi_r: spi("responder-spi"),
                local_id: fields.get("local-id").cloned().unwrap_or_default(),
                remote_id: fields.get("remote-id").cloned().unwrap_or_default(),
                fields,
            });
        }
    }
    sas
}

fn tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        match c {
            '{' | '}' | '[' | ']' => {
                if !word.is_empty() {
                    tokens.push(std::mem::take(&mut word));
                }
                tokens.push(c.to_string());
            }
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    tokens.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        tokens.push(word);
    }
    tokens
}

/// IKE SA keys as charon logged them (ike level 4), tagged with the IKE SA's unique id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IkeKeys {
    pub uniqueid: Option<u32>,
    pub sk_d: Vec<u8>,
    /// Empty for AEAD suites.
    pub sk_ai: Vec<u8>,
    pub sk_ar: Vec<u8>,
    /// Includes the salt for AEAD suites (e.g. 36 octets for AES-256-GCM).
    pub sk_ei: Vec<u8>,
    pub sk_er: Vec<u8>,
    pub sk_pi: Vec<u8>,
    pub sk_pr: Vec<u8>,
    /// When charon mixed a PPK into the keys (RFC 8784 3): SK_d', SK_pi', SK_pr' as first
    /// logged; `sk_d`, `sk_pi`, `sk_pr` are then the keys after the PPK.
    pub before_ppk: Option<[Vec<u8>; 3]>,
}

/// Reads the `Sk_* secret => N bytes` blocks of a charon log (with `ike_name = yes`,
/// so each line names its IKE SA as `<conn|id>`). One [`IkeKeys`] per `Sk_d` block;
/// rekeyed IKE SAs give further entries.
pub fn parse_ike_keys(log: &str) -> Vec<IkeKeys> {
    let lines: Vec<&str> = log.lines().collect();
    let mut out: Vec<IkeKeys> = Vec::new();
    let mut ppk_pending = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        let Some((thread, rest)) = split_ike_line(line) else {
            continue;
        };
        let (sa, rest) = split_sa_tag(rest);
        if rest.starts_with("derive keys using PPK") {
            // The next Sk_d, Sk_pi, Sk_pr replace this SA's keys (keymat_v2's PPK step).
            if let Some(keys) = out.iter_mut().rev().find(|k| k.uniqueid == sa) {
                keys.before_ppk = Some([keys.sk_d.clone(), keys.sk_pi.clone(), keys.sk_pr.clone()]);
                ppk_pending = true;
            }
            continue;
        }
        let Some((name, size)) = rest.split_once(" secret => ") else {
            continue;
        };
        let Some(len) = size
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let mut bytes = Vec::with_capacity(len);
        while bytes.len() < len && i < lines.len() {
            let Some((t, dump)) = split_ike_line(lines[i]) else {
                i += 1;
                continue;
            };
            if t != thread {
                // another worker's line interleaved
                i += 1;
                continue;
            }
            let (_, dump) = split_sa_tag(dump);
            let Some((_, hex_part)) = dump.trim_start().split_once(": ") else {
                break;
            };
            let hex_part = hex_part.split("  ").next().unwrap_or("");
            bytes.extend(
                hex_part
                    .split(' ')
                    .filter_map(|b| u8::from_str_radix(b, 16).ok()),
            );
            i += 1;
        }
        if name == "Sk_d" && !ppk_pending {
            out.push(IkeKeys {
                uniqueid: sa,
                ..IkeKeys::default()
            });
        }
        let keys = if ppk_pending {
            if name == "Sk_pr" {
                ppk_pending = false;
            }
            out.iter_mut().rev().find(|k| k.uniqueid == sa)
        } else {
            out.last_mut()
        };
        let Some(keys) = keys else { continue };
        let slot = match name {
            "Sk_d" => &mut keys.sk_d,
            "Sk_ai" => &mut keys.sk_ai,
            "Sk_ar" => &mut keys.sk_ar,
            "Sk_ei" => &mut keys.sk_ei,
            "Sk_er" => &mut keys.sk_er,
            "Sk_pi" => &mut keys.sk_pi,
            "Sk_pr" => &mut keys.sk_pr,
            _ => continue,
        };
        *slot = bytes;
    }
    out
}

/// `"12:00:00 07[IKE] rest"` -> `("07", "rest")`.
fn split_ike_line(line: &str) -> Option<(&str, &str)> {
    let (head, rest) = line.split_once("[IKE] ")?;
    let thread = head.rsplit(' ').next()?;
    Some((thread, rest))
}

/// `"<conn|3> rest"` -> `(Some(3), "rest")`.
fn split_sa_tag(rest: &str) -> (Option<u32>, &str) {
    if let Some(tagged) = rest.strip_prefix('<')
        && let Some((tag, after)) = tagged.split_once("> ")
    {
        let id = tag.rsplit('|').next().and_then(|n| n.parse().ok());
        return (id, after);
    }
    (None, rest)
}

/// A running charon in a namespace. Dropping it stops charon (SIGTERM, then SIGKILL
/// after a bounded wait) and removes its temp dir; if the thread is panicking, the log's
/// tail goes to stderr and the directory is kept (its path is printed).
#[derive(Debug)]
pub struct CharonPeer<'ns> {
    ns: &'ns Netns,
    install: CharonInstall,
    config: CharonConfig,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    child: Child,
}

impl<'ns> CharonPeer<'ns> {
    /// Writes the configuration, starts charon in `ns`, waits for its vici socket and
    /// loads connections and credentials.
    pub fn start(ns: &'ns Netns, config: CharonConfig) -> Result<CharonPeer<'ns>> {
        let install = CharonInstall::detect().map_err(HarnessError::Other)?;
        let dir = tempfile::Builder::new()
            .prefix("gikev2-charon-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating a temp dir", e))?;
        let path = dir.path().to_path_buf();
        write_files(&path, &install, &config)?;
        let stdout = std::fs::File::create(path.join("charon.stdout"))
            .map_err(|e| HarnessError::io("charon.stdout", e))?;
        let stderr = stdout
            .try_clone()
            .map_err(|e| HarnessError::io("charon.stdout", e))?;
        // Private mount namespace with our own /run: charon's hard-wired pid file.
        let mut cmd = ns.command("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount --bind \"$0\" /run && exec \"$1\"")
            .arg(path.join("run"))
            .arg(&install.charon)
            .env("STRONGSWAN_CONF", path.join("strongswan.conf"))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let child = cmd.spawn().map_err(|e| HarnessError::Command {
            cmd: format!("{cmd:?}"),
            detail: e.to_string(),
        })?;
        let mut peer = CharonPeer {
            ns,
            install,
            config,
            dir: Some(dir),
            path,
            child,
        };
        peer.wait_ready()?;
        peer.swanctl(&["--load-all", "--file", &peer.file("swanctl.conf")])?;
        Ok(peer)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let socket = self.path.join("charon.vici");
        let mut exited = None;
        let ready = poll_until("charon's vici socket", Duration::from_secs(10), || {
            if let Ok(Some(status)) = self.child.try_wait() {
                exited = Some(status);
                return Some(false);
            }
            socket.exists().then_some(true)
        });
        match (ready, exited) {
            (Ok(true), _) => {
                poll_until(
                    "charon to answer over vici",
                    Duration::from_secs(10),
                    || self.swanctl(&["--stats"]).ok(),
                )?;
                Ok(())
            }
            (_, Some(status)) => Err(HarnessError::Other(format!(
                "charon exited ({status}) before its vici socket appeared:\n{}\n{}",
                self.read("charon.stdout"),
                self.log_tail(30)
            ))),
            (Err(e), None) => Err(HarnessError::Other(format!("{e}:\n{}", self.log_tail(30)))),
            (Ok(false), None) => unreachable!("false only when exited"),
        }
    }

    fn file(&self, name: &str) -> String {
        self.path.join(name).display().to_string()
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path.join(name)).unwrap_or_default()
    }

    /// The namespace charon runs in.
    pub fn netns(&self) -> &Netns {
        self.ns
    }

    /// The installation in use.
    pub fn install(&self) -> &CharonInstall {
        &self.install
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &CharonConfig {
        &self.config
    }

    /// The temp dir with strongswan.conf, swanctl.conf, credentials, charon.log.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// charon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `unix://<dir>/charon.vici`.
    pub fn vici_uri(&self) -> String {
        format!("unix://{}", self.file("charon.vici"))
    }

    /// Where charon receives IKE (`local_addr:port`).
    pub fn ike_addr(&self) -> SocketAddr {
        SocketAddr::new(self.config.local_addr, self.config.port)
    }

    /// Runs `swanctl <args> --uri <this charon>` (from the host: vici is a Unix socket)
    /// and returns stdout.
    pub fn swanctl(&self, args: &[&str]) -> Result<String> {
        run(Command::new(&self.install.swanctl)
            .args(args)
            .arg("--uri")
            .arg(self.vici_uri()))
    }

    /// Initiates the configured connection IKE-only (childless) and waits for the result
    /// (at most `retransmit` time plus a margin). `Ok` means charon reported success.
    pub fn initiate(&self) -> Result<String> {
        self.initiate_conn(&self.config.conn)
    }

    /// Initiates connection `conn` IKE-only.
    pub fn initiate_conn(&self, conn: &str) -> Result<String> {
        let timeout = (self.config.retransmit_timeout
            * 1.4f32.powi(self.config.retransmit_tries as i32 + 1)
            * (self.config.retransmit_tries as f32 + 1.0)
            + 5.0) as u32;
        self.swanctl(&[
            "--initiate",
            "--ike",
            conn,
            "--timeout",
            &timeout.to_string(),
        ])
    }

    /// Terminates every IKE SA of connection `conn`.
    pub fn terminate(&self, conn: &str) -> Result<String> {
        self.swanctl(&["--terminate", "--ike", conn, "--force", "--timeout", "5"])
    }

    /// All IKE SAs.
    pub fn list_sas(&self) -> Result<Vec<IkeSaInfo>> {
        Ok(parse_list_sas(&self.swanctl(&["--list-sas", "--raw"])?))
    }

    /// The newest IKE SA of connection `conn`, if any.
    pub fn ike_sa(&self, conn: &str) -> Result<Option<IkeSaInfo>> {
        Ok(self
            .list_sas()?
            .into_iter()
            .filter(|sa| sa.conn == conn)
            .max_by_key(|sa| sa.uniqueid))
    }

    /// The state of the newest IKE SA of `conn` (`"ESTABLISHED"`, ...), if any.
    pub fn ike_sa_state(&self, conn: &str) -> Result<Option<String>> {
        Ok(self.ike_sa(conn)?.map(|sa| sa.state))
    }

    /// Polls until an IKE SA of `conn` is ESTABLISHED (e.g. on a responder).
    pub fn wait_established(&self, conn: &str, timeout: Duration) -> Result<IkeSaInfo> {
        poll_until(&format!("IKE SA {conn} ESTABLISHED"), timeout, || {
            self.ike_sa(conn)
                .ok()
                .flatten()
                .filter(|sa| sa.state == "ESTABLISHED")
        })
        .map_err(|e| HarnessError::Other(format!("{e}\n{}", self.log_tail(40))))
    }

    /// The whole log.
    pub fn log(&self) -> String {
        self.read("charon.log")
    }

    /// The last `n` lines of the log, hex dumps left out.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().filter(|l| !is_hexdump(l)).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Polls until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        poll_until(&format!("charon log line {needle:?}"), timeout, || {
            self.log().contains(needle).then_some(())
        })
    }

    /// IKE keys from the log (needs [`CharonConfig::log_keys`]).
    pub fn ike_keys(&self) -> Vec<IkeKeys> {
        parse_ike_keys(&self.log())
    }

    /// Keys of the IKE SA `sa` (matched by unique id).
    pub fn keys_for(&self, sa: &IkeSaInfo) -> Option<IkeKeys> {
        self.ike_keys()
            .into_iter()
            .rev()
            .find(|k| k.uniqueid == Some(sa.uniqueid))
    }

    /// Stops charon: SIGTERM, bounded wait, SIGKILL.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
            let gone = poll_until("charon to exit", Duration::from_secs(5), || {
                matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)).then_some(())
            });
            if gone.is_err() {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

fn is_hexdump(line: &str) -> bool {
    split_ike_line(line).is_some_and(|(_, rest)| {
        let rest = split_sa_tag(rest).1;
        rest.starts_with("  ")
            && rest
                .trim_start()
                .split_once(": ")
                .is_some_and(|(n, _)| n.chars().all(|c| c.is_ascii_digit()))
    })
}

impl Drop for CharonPeer<'_> {
    fn drop(&mut self) {
        self.shutdown();
        let keep = std::thread::panicking() || std::env::var_os("GIKEV2_KEEP_TMP").is_some();
        if keep && let Some(dir) = self.dir.take() {
            let path = dir.keep();
            eprintln!(
                "charon in {} kept its files in {}; log tail:\n{}",
                self.ns.name(),
                path.display(),
                self.log_tail(40)
            );
        }
    }
}

fn write_files(dir: &Path, install: &CharonInstall, config: &CharonConfig) -> Result<()> {
    let write = |rel: &str, data: &[u8]| {
        std::fs::write(dir.join(rel), data)
            .map_err(|e| HarnessError::io(format!("writing {rel}"), e))
    };
    // swanctl --load-all looks for these folders next to swanctl.conf.
    for sub in [
        "run", "x509", "x509ca", "x509ocsp", "x509aa", "x509ac", "x509crl", "pubkey", "private",
        "rsa", "ecdsa", "bliss", "pkcs8", "pkcs12",
    ] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| HarnessError::io(sub, e))?;
    }
    write(
        "strongswan.conf",
        config.strongswan_conf(install, dir).as_bytes(),
    )?;
    write("swanctl.conf", config.swanctl_conf().as_bytes())?;
    if let Auth::PubKey { own, trusted_cas } = &config.auth {
        write("x509/own.der", &own.cert_der)?;
        write("pkcs8/own.der", &own.key_pkcs8_der)?;
        for (i, ca) in trusted_cas.iter().enumerate() {
            write(&format!("x509ca/ca{i}.der"), ca)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_sas_raw_output_parses() {
        let text = "list-sa event {psk {uniqueid=2 version=2 state=ESTABLISHED local-host=10.77.0.1 \
            local-port=4500 local-id=a.example remote-host=10.77.0.2 remote-port=4500 \
            remote-id=b.example initiator=yes initiator-spi=b55efb6f60e351f2 \
            responder-spi=4bfca3a1c20f90c2 encr-alg=AES_GCM_16 encr-keysize=256 \
            prf-alg=PRF_HMAC_SHA2_256 dh-group=CURVE_25519 established=1 rekey-time=13885 \
            remote-vips=[10.1.0.1 10.1.0.2] child-sas {}}}\nlist-sas reply {}\n";
        let sas = parse_list_sas(text);
        assert_eq!(sas.len(), 1);
        let sa = &sas[0];
        assert_eq!(sa.conn, "psk");
        assert_eq!(sa.uniqueid, 2);
        assert_eq!(sa.state, "ESTABLISHED");
        assert!(sa.initiator);
        assert_eq!(sa.spi_i, [0xb5, 0x5e, 0xfb, 0x6f, 0x60, 0xe3, 0x51, 0xf2]);
        assert_eq!(sa.spi_r[7], 0xc2);
        assert_eq!(sa.remote_id, "b.example");
        assert_eq!(sa.field("dh-group"), Some("CURVE_25519"));
        assert_eq!(sa.field("rekey-time"), Some("13885"));
    }

    #[test]
    fn keys_parse_from_log_with_interleaved_threads() {
        let log = "\
19:10:17 07[IKE] <psk|1> Sk_d secret => 4 bytes @ 0x1
19:10:17 07[IKE] <psk|1>    0: 25 59 6F 83                                      %Yo.
19:10:17 07[IKE] <psk|1> Sk_ei secret => 20 bytes @ 0x2
19:10:17 09[IKE] <other|2>    0: FF FF FF FF                                      ....
19:10:17 07[IKE] <psk|1>    0: AF A9 6B 54 1E 0B 5E 02 35 6D E6 DA AF 77 11 BC  ..kT..^.5m...w..
19:10:17 07[IKE] <psk|1>   16: 8E 3B BA 29                                      .;.)
19:10:17 07[IKE] <psk|1> Sk_er secret => 2 bytes @ 0x3
19:10:17 07[IKE] <psk|1>    0: 41 42                                            AB
";
        let keys = parse_ike_keys(log);
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].uniqueid, Some(1));
        assert_eq!(keys[0].sk_d, [0x25, 0x59, 0x6f, 0x83]);
        assert_eq!(keys[0].sk_ei.len(), 20);
        assert_eq!(keys[0].sk_ei[16..], [0x8e, 0x3b, 0xba, 0x29]);
        assert_eq!(keys[0].sk_er, b"AB");
    }

    #[test]
    fn identities_spell_as_swanctl_wants() {
        assert_eq!(
            Identity::Fqdn("a.example".into()).swanctl(),
            "fqdn:a.example"
        );
        assert_eq!(Identity::KeyId(vec![1, 0xab]).swanctl(), "@#01ab");
        assert_eq!(Identity::KeyId(vec![1, 0xab]).listed(), "01:ab");
        assert_eq!(parse_version("Linux strongSwan 5.9.8\n"), Some((5, 9, 8)));
        assert_eq!(parse_version("Linux strongSwan 6.0.1dr1"), Some((6, 0, 1)));
    }
}
