//! The `gcks` command line: `serve`, the admin subcommands that work on the store
//! directly, and `demo`.

pub mod admin;
pub mod demo;
pub mod files;
pub mod names;
pub mod serve;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The SQLite database `gcks` uses when `--db` is not given.
pub const DEFAULT_DB: &str = "./gcks.db";
/// The master key file used when `--master-key` is not given.
pub const DEFAULT_MASTER_KEY: &str = "./gcks.key";

/// G-IKEv2 Group Controller/Key Server (RFC 9838).
#[derive(Debug, Parser)]
#[command(name = "gcks", version, about)]
pub struct Cli {
    /// The policy store: a SQLite file path or sqlite:// URL (created if missing), or a
    /// postgres:// URL.
    #[arg(long, global = true, default_value = DEFAULT_DB, value_name = "URL")]
    pub db: String,
    /// The master key file that seals secrets in the store (32 octets, mode 0600; created
    /// if missing).
    #[arg(long, global = true, default_value = DEFAULT_MASTER_KEY, value_name = "PATH")]
    pub master_key: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the key server.
    Serve(serve::ServeArgs),
    /// Manage groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Manage members and their credentials.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Let a member join a group, as receiver or sender.
    Authorize(AuthorizeArgs),
    /// Manage the keys that sign GSA_REKEY messages.
    #[command(subcommand, name = "signing-key")]
    SigningKey(SigningKeyCommand),
    /// Groups, members, Sender-IDs in use and recent audit events (never keys).
    Status(StatusArgs),
    /// Register three members over loopback UDP with a throw-away SQLite store.
    Demo,
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a group.
    Create(GroupCreateArgs),
    /// List groups.
    List,
    /// Delete a group with its policies, key state, authorizations and Sender-IDs.
    Delete {
        /// The group's name.
        name: String,
    },
    /// Add a Data-Security SA policy (TEK) to a group.
    #[command(name = "add-tek")]
    AddTek(AddTekArgs),
}

#[derive(Debug, Args)]
pub struct GroupCreateArgs {
    /// Administrative name; also the IDg (ID_KEY_ID) members send unless --idg is given.
    pub name: String,
    /// The group identity members send in IDg (ID_KEY_ID of this text).
    #[arg(long)]
    pub idg: Option<String>,
    /// Most members at once (at least 1).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub capacity: u32,
    /// How the group is rekeyed: multicast GSA_REKEY, inband (GSA_INBAND_REKEY over each
    /// member's IKE SA) or none.
    #[arg(long, default_value = "multicast")]
    pub rekey: String,
    /// Multicast destination of GSA_REKEY messages (ADDR:PORT), for --rekey multicast.
    #[arg(long, value_name = "ADDR:PORT")]
    pub rekey_dst: Option<String>,
    /// Source address of GSA_REKEY messages (default: the address they leave from,
    /// found by `gcks serve`: its bound address, --multicast-if, or the route).
    #[arg(long, value_name = "ADDR")]
    pub rekey_src: Option<String>,
    /// Source UDP port of GSA_REKEY messages (default: the port of the `gcks serve`
    /// socket they leave from, 848 when it listens there).
    #[arg(long, value_name = "PORT")]
    pub rekey_src_port: Option<u16>,
    /// Rekey SA cipher: aes-gcm-128|192|256, chacha20-poly1305, aes-cbc-128|192|256+sha256|sha384|sha512
    #[arg(long, default_value = "aes-gcm-256")]
    pub rekey_cipher: String,
    /// Key wrap algorithm key size: 128, 192 or 256 (KW_5649).
    #[arg(long, default_value_t = 256)]
    pub kwa: u16,
    /// Rekey SA lifetime in seconds (at least 1).
    #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(u32).range(1..))]
    pub rekey_lifetime: u32,
    /// Sign GSA_REKEY messages with this key (`gcks signing-key generate`); a multicast
    /// group needs one unless --implicit-auth is given (RFC 9838 2.4.1).
    #[arg(long)]
    pub signing_key: Option<String>,
    /// Multicast rekey without --signing-key: accept Implicit authentication of GSA_REKEY
    /// (any member could forge a rekey; RFC 9838 2.4.1 does not recommend it but for a
    /// small group of trusted members).
    #[arg(long, conflicts_with = "signing_key")]
    pub implicit_auth: bool,
    /// Data-Security SA lifetime in seconds (at least 1).
    #[arg(long, default_value_t = 3_600, value_parser = clap::value_parser!(u32).range(1..))]
    pub tek_lifetime: u32,
    /// GWP_ATD: seconds senders wait before using new SAs.
    #[arg(long)]
    pub atd: Option<u16>,
    /// GWP_DTD: seconds receivers keep deleted SAs.
    #[arg(long)]
    pub dtd: Option<u16>,
    /// GWP_SENDER_ID_BITS (1..=32): needed for counter-mode TEKs with senders.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=32))]
    pub sender_id_bits: Option<u8>,
    /// Most Sender-IDs one registration gets (1..=1024).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub max_sender_ids: u16,
    /// Forward access control (RFC 9838 3.2.1, multicast rekey): when a member leaves or
    /// loses its authorization, exclude every member and replace the group's SAs, so the
    /// members still authorized re-register and the one gone reads nothing new. Costs a
    /// re-registration of the whole group per departure.
    #[arg(long)]
    pub forward_access_control: bool,
    /// Admit members only over an IKE SA with a post-quantum key exchange (X25519 with
    /// ML-KEM-768, RFC 9370; `gm join --ml-kem`), refusing others with NO_PROPOSAL_CHOSEN:
    /// RFC 9838 6.2 (R129) for groups whose registration data, not only their keys, must
    /// resist a quantum computer. A PPK alone does not satisfy it.
    #[arg(long)]
    pub require_pq_ike: bool,
}

#[derive(Debug, Args)]
pub struct AddTekArgs {
    /// The group's name.
    pub group: String,
    /// Destination: ADDR, ADDR:PORT or [V6ADDR]:PORT (usually the multicast group).
    #[arg(long)]
    pub dst: String,
    /// Source: ADDR, ADDR:PORT, or any (default).
    #[arg(long, default_value = "any")]
    pub src: String,
    /// IP protocol: udp, tcp, any, or a number.
    #[arg(long, default_value = "udp")]
    pub proto: String,
    /// Cipher: aes-gcm-128|192|256, chacha20-poly1305, aes-gmac-128|256,
    /// aes-cbc-128|256+sha256|sha384|sha512, ...
    #[arg(long, default_value = "aes-gcm-256")]
    pub cipher: String,
    /// Sequence numbers (RFC 9838 4.4.2.1.3): auto (the GCKS gives each new TEK seq32
    /// while a multicast destination has at most one authorized sender, else
    /// unspecified; a seq32 TEK is replaced when a second sender is authorized),
    /// unspecified (many senders), seq32 (one sender), seq64 (unicast only).
    #[arg(long, default_value = "auto")]
    pub sn: String,
    /// ESP mode: transport, or tunnel (with address preservation).
    #[arg(long, default_value = "transport")]
    pub mode: String,
    /// Most packets per second one sender sends on this policy's TEKs: a TEK with 32-bit
    /// sequential numbers lives at most (2^32 - 1) / rate seconds, so that its sequence
    /// numbers cannot wrap (RFC 9838 2.6). 1 to 71582788.
    #[arg(long, default_value_t = gikev2_policy::DEFAULT_MAX_PACKET_RATE)]
    pub max_packet_rate: u32,
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Add a member with its credential.
    Add(MemberAddArgs),
    /// List members (never their secrets).
    List,
    /// Delete a member (its Sender-IDs stay taken).
    Delete {
        /// The member's identity.
        id: String,
    },
    /// Give a member a post-quantum preshared key (RFC 8784), or remove it (--none).
    SetPpk(MemberPpkArgs),
}

/// A member's PPK (RFC 8784): mixed into its registration IKE SA's SK_d, so the group
/// keys it receives resist a quantum computer.
#[derive(Debug, Args)]
pub struct PpkArgs {
    /// The PPK (at least 32 octets of high-entropy secret, RFC 8784 6), in this file.
    #[arg(long, value_name = "FILE", requires = "ppk_id")]
    pub ppk_file: Option<PathBuf>,
    /// Its PPK_ID (sent by the member as PPK_ID_FIXED, RFC 8784 5.1).
    #[arg(long, value_name = "ID", requires = "ppk_file")]
    pub ppk_id: Option<String>,
    /// The member must use the PPK: no fallback to NO_PPK_AUTH or to an IKE SA
    /// without it (RFC 8784 mandatory_or_not).
    #[arg(long, requires = "ppk_file")]
    pub ppk_required: bool,
}

#[derive(Debug, Args)]
pub struct MemberPpkArgs {
    /// The member's identity.
    pub id: String,
    #[command(flatten)]
    pub ppk: PpkArgs,
    /// Remove the member's PPK.
    #[arg(long, conflicts_with_all = ["ppk_file", "ppk_id", "ppk_required"])]
    pub none: bool,
}

#[derive(Debug, Args)]
pub struct MemberAddArgs {
    /// The member's IKE identity: an IP address, user@domain, an FQDN, or keyid:TEXT.
    pub id: String,
    /// Administrative name.
    #[arg(long)]
    pub name: Option<String>,
    /// Authenticate with the pre-shared key in this file.
    #[arg(long, value_name = "FILE", group = "credential")]
    pub psk_file: Option<PathBuf>,
    /// Authenticate with this raw public key (SubjectPublicKeyInfo, PEM or DER).
    #[arg(long, value_name = "FILE", group = "credential")]
    pub raw_key: Option<PathBuf>,
    /// Authenticate with an X.509 certificate naming the identity, chaining to --ca.
    #[arg(long, group = "credential", requires = "ca")]
    pub x509_identity: bool,
    /// Trust anchor(s) for --x509-identity (PEM or DER CA certificates).
    #[arg(long, value_name = "FILE")]
    pub ca: Vec<PathBuf>,
    #[command(flatten)]
    pub ppk: PpkArgs,
}

#[derive(Debug, Args)]
pub struct AuthorizeArgs {
    /// The member's identity.
    pub member: String,
    /// The group's name.
    pub group: String,
    /// receiver, or sender (may also receive).
    #[arg(long, default_value = "receiver")]
    pub role: String,
}

#[derive(Debug, Subcommand)]
pub enum SigningKeyCommand {
    /// Generate a key in the store.
    Generate {
        /// The key's name, for `gcks group create --signing-key NAME`.
        name: String,
        /// ed25519, ecdsa-p256-sha256, ml-dsa-44, ml-dsa-65, ml-dsa-87.
        #[arg(long, default_value = "ed25519")]
        scheme: String,
    },
    /// List keys (public parts only).
    List,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// How many recent audit events to show.
    #[arg(long, default_value_t = 10)]
    pub audit: u32,
}

/// The store URL for `--db`: URLs as given, a plain path as a SQLite file created on
/// first use.
pub fn store_url(db: &str) -> Result<String, String> {
    if db.is_empty() {
        return Err("--db: empty".into());
    }
    if db.starts_with("postgres://") || db.starts_with("postgresql://") {
        return Ok(db.to_string());
    }
    if let Some(rest) = db.strip_prefix("sqlite://") {
        return Ok(if rest.contains('?') {
            db.to_string()
        } else {
            format!("{db}?mode=rwc")
        });
    }
    if db.contains("://") {
        let scheme = db.split("://").next().unwrap_or_default();
        return Err(format!(
            "--db: unsupported scheme {scheme:?} (a file path, sqlite://PATH or postgres://..)"
        ));
    }
    Ok(format!("sqlite://{db}?mode=rwc"))
}

/// `--db` for messages: the URL without a password.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_urls() {
        assert_eq!(
            store_url("./gcks.db").unwrap(),
            "sqlite://./gcks.db?mode=rwc"
        );
        assert_eq!(
            store_url("sqlite:///x/y.db").unwrap(),
            "sqlite:///x/y.db?mode=rwc"
        );
        assert_eq!(store_url("postgres://u@h/d").unwrap(), "postgres://u@h/d");
        assert!(store_url("mysql://h/d").unwrap_err().starts_with("--db:"));
        assert_eq!(redacted("postgres://u:secret@h/d"), "postgres://u:***@h/d");
    }

    #[test]
    fn the_cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let c = Cli::try_parse_from([
            "gcks",
            "member",
            "add",
            "gm1.example",
            "--psk-file",
            "k",
            "--raw-key",
            "r",
        ]);
        assert!(c.is_err(), "one credential only");
    }
}
