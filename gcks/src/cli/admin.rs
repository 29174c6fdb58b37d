//! Admin subcommands: they open the store directly (the same one `gcks serve` uses; a
//! running server sees the changes at its next registration).

use std::fmt::Write as _;
use std::path::Path;

use gikev2_policy::{
    GroupSpec, GroupWidePolicy, Identity, MasterKey, NewCredential, RekeyConfig, RekeyMode,
    SnPolicy, Store, TekPolicySpec, TekProtocol, scheme_as_db,
};
use gikev2_proto::crypto::{EncrAlg, SecretBytes, SigningKey, SystemRandom};
use gikev2_proto::registry::{GcAuthId, SnId};
use gikev2_proto::wire::gsa::is_counter_mode;

use super::names::{self, show_identity};
use super::{
    AddTekArgs, AuthorizeArgs, GroupCommand, GroupCreateArgs, MemberAddArgs, MemberCommand,
    PpkArgs, SigningKeyCommand, StatusArgs, files, redacted,
};
use gikev2_gcks::registrar::unix_now;

/// The file of a `sqlite://PATH?..` URL.
fn sqlite_path(url: &str) -> Option<&Path> {
    let rest = url.strip_prefix("sqlite://")?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty()).then(|| Path::new(path))
}

/// Opens (creating if needed) the store and its master key.
pub async fn open_store(url: &str, key_path: &Path) -> Result<Store, String> {
    // SQLite creates the file, not its directory; say which before creating a master key
    // next to nothing (SQLite itself only says "unable to open database file").
    let new_sqlite = sqlite_path(url).filter(|p| !p.exists());
    if let Some(p) = new_sqlite {
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            return Err(format!(
                "--db {}: the directory {} does not exist (gcks creates the database file, \
                 not its directory)",
                p.display(),
                dir.display()
            ));
        }
    }
    let mut rng = SystemRandom::new();
    let key = MasterKey::load_or_create(key_path, &mut rng)
        .map_err(|e| format!("--master-key {}: {e}", key_path.display()))?;
    Store::open(url, key)
        .await
        .map_err(|e| match (e, new_sqlite) {
            (gikev2_policy::StoreError::WrongMasterKey, _) => format!(
                "--master-key {}: not the key this database was created with (--db {}); give \
             the database's own key file",
                key_path.display(),
                redacted(url)
            ),
            (e, Some(p)) if !p.exists() => format!(
                "--db {}: cannot create the database file ({e}); is its directory writable?",
                p.display()
            ),
            (e, _) => format!("--db {}: {e}", redacted(url)),
        })
}

fn err(e: gikev2_policy::StoreError) -> String {
    e.to_string()
}

/// A unique-constraint failure as `message`, other errors as they are.
fn exists(message: String) -> impl FnOnce(gikev2_policy::StoreError) -> String {
    move |e| match e.constraint_kind() {
        Some(gikev2_policy::ConstraintKind::Unique) => message,
        _ => e.to_string(),
    }
}

async fn group_by_name(store: &Store, name: &str) -> Result<gikev2_policy::Group, String> {
    store
        .group_by_name(name)
        .await
        .map_err(err)?
        .ok_or_else(|| format!("GROUP: no group named {name:?} (see `gcks group list`)"))
}

pub async fn group(store: &Store, cmd: GroupCommand) -> Result<String, String> {
    match cmd {
        GroupCommand::Create(a) => group_create(store, a).await,
        GroupCommand::List => group_list(store).await,
        GroupCommand::Delete { name } => {
            let g = group_by_name(store, &name).await?;
            store.delete_group(g.id).await.map_err(err)?;
            Ok(format!("deleted group {name}"))
        }
        GroupCommand::AddTek(a) => add_tek(store, a).await,
    }
}

async fn group_create(store: &Store, a: GroupCreateArgs) -> Result<String, String> {
    let mode = names::rekey_mode(&a.rekey)?;
    if a.forward_access_control && mode != RekeyMode::Multicast {
        // The rekey sender provides it by excluding every member with GSA_REKEY.
        return Err(format!(
            "--forward-access-control: needs --rekey multicast (this group is {mode})"
        ));
    }
    let dst = match (&a.rekey_dst, mode) {
        (Some(d), RekeyMode::Multicast) => Some(names::multicast_endpoint("--rekey-dst", d)?),
        (None, RekeyMode::Multicast) => {
            return Err(
                "--rekey-dst: multicast rekey needs a destination such as 239.0.0.9:848 \
                 (or use --rekey inband|none)"
                    .into(),
            );
        }
        (Some(_), _) => return Err("--rekey-dst: only with --rekey multicast".into()),
        (None, _) => None,
    };
    let src_addr: Option<std::net::IpAddr> = a
        .rekey_src
        .as_deref()
        .map(|s| {
            s.parse()
                .map_err(|_| format!("--rekey-src: {s:?} is not an IP address"))
        })
        .transpose()?;
    if let (Some(s), Some(d)) = (src_addr, dst)
        && s.is_ipv6() != d.is_ipv6()
    {
        return Err(format!(
            "--rekey-src: {s} is not of --rekey-dst's address family ({d})"
        ));
    }
    // RFC 9838 4.4.2: the source selector names the one address GSA_REKEY messages
    // come from, a unicast address of the GCKS.
    if let Some(s) = src_addr
        && (s.is_multicast() || s.is_unspecified())
    {
        return Err(format!(
            "--rekey-src: {s} is not a unicast address (GSA_REKEY comes from an address of \
             the GCKS; leave it out to use the one `gcks serve` sends from)"
        ));
    }
    if src_addr.is_some() && mode != RekeyMode::Multicast {
        return Err("--rekey-src: only with --rekey multicast".into());
    }
    let src_port = match (a.rekey_src_port, mode) {
        (Some(0), _) => return Err("--rekey-src-port: a port from 1 to 65535".into()),
        (Some(_), m) if m != RekeyMode::Multicast => {
            return Err("--rekey-src-port: only with --rekey multicast".into());
        }
        (p, _) => p,
    };
    let c = names::cipher("--rekey-cipher", &a.rekey_cipher)?;
    let signing_key = match &a.signing_key {
        Some(n) => Some(
            store
                .signing_keys()
                .await
                .map_err(err)?
                .into_iter()
                .find(|k| &k.name == n)
                .ok_or_else(|| {
                    format!("--signing-key: no key named {n:?} (gcks signing-key generate {n})")
                })?
                .id,
        ),
        None => None,
    };
    // RFC 9838 2.4.1, 8.2.1: Implicit authentication of GSA_REKEY is NOT RECOMMENDED
    // unless source origin authentication is not needed (a small group of trusted
    // members): only when asked for by name.
    match (mode, signing_key.is_some(), a.implicit_auth) {
        (RekeyMode::Multicast, false, false) => {
            return Err(
                "--signing-key: multicast rekey needs a key to sign GSA_REKEY messages \
                 (gcks signing-key generate NAME); without one any member could forge \
                 rekeys (Implicit authentication, NOT RECOMMENDED by RFC 9838 2.4.1): give \
                 --implicit-auth to accept that for a small group of trusted members"
                    .into(),
            );
        }
        (RekeyMode::Multicast, _, _) => {}
        (_, _, true) => return Err("--implicit-auth: only with --rekey multicast".into()),
        _ => {}
    }
    let idg = names::idg("--idg", a.idg.as_deref().unwrap_or(&a.name))?;
    let spec = GroupSpec {
        name: a.name.clone(),
        idg: idg.clone(),
        capacity: a.capacity,
        rekey: RekeyConfig {
            mode,
            dst,
            src_addr,
            src_port,
            lifetime: a.rekey_lifetime,
            encr: c.encr,
            encr_key_bits: c.key_bits,
            integ: c.integ,
            kwa: names::kwa(a.kwa)?,
            gcauth: if signing_key.is_some() {
                GcAuthId::DigitalSignature
            } else {
                GcAuthId::Implicit
            },
            signing_key,
        },
        tek_lifetime: a.tek_lifetime,
        policy: GroupWidePolicy {
            atd: a.atd,
            dtd: a.dtd,
            sender_id_bits: a.sender_id_bits,
            max_sender_ids_per_member: a.max_sender_ids,
            forward_access_control: a.forward_access_control,
            require_pq_ike: a.require_pq_ike,
        },
    };
    // The store checks the suite too; here the flag is named.
    spec.rekey.suite().map_err(|e| match e {
        gikev2_policy::StoreError::Invalid { reason, .. } => {
            format!("--rekey-cipher {}: {reason}", a.rekey_cipher)
        }
        other => other.to_string(),
    })?;
    let id = store
        .create_group(&spec, unix_now())
        .await
        .map_err(exists(format!(
            "NAME: a group named {:?} or with IDg {} already exists",
            a.name,
            show_identity(&idg)
        )))?;
    let mut out = format!(
        "created group {} (id {id}, IDg {}, rekey {}{}{})",
        a.name,
        show_identity(&idg),
        mode,
        if a.forward_access_control {
            ", forward access control"
        } else {
            ""
        },
        if a.require_pq_ike {
            ", post-quantum IKE SA required"
        } else {
            ""
        }
    );
    if signing_key.is_none() && mode == RekeyMode::Multicast {
        out.push_str(
            "\nnote: GCAUTH is Implicit (NOT RECOMMENDED, RFC 9838 2.4.1); use --signing-key",
        );
    }
    Ok(out)
}

async fn group_list(store: &Store) -> Result<String, String> {
    let groups = store.group_rows().await.map_err(err)?;
    if groups.is_empty() {
        return Ok("no groups (gcks group create NAME ...)".into());
    }
    let mut out = String::new();
    for (id, g) in groups {
        let g = match g {
            Ok(g) => g,
            Err(e) => {
                let _ = writeln!(out, "group id {id}: unreadable: {e}");
                continue;
            }
        };
        let s = &g.spec;
        let teks = store.tek_policies(g.id).await.map_err(err)?;
        let members = store.member_count(g.id).await.map_err(err)?;
        let rekey = match (s.rekey.mode, s.rekey.dst) {
            (RekeyMode::Multicast, Some(d)) => format!("multicast to {d}"),
            (m, _) => m.to_string(),
        };
        let _ = writeln!(
            out,
            "{}  IDg {}  rekey {}  members {}/{}  TEK policies {}{}",
            s.name,
            show_identity(&s.idg),
            rekey,
            members,
            s.capacity,
            teks.len(),
            if s.policy.require_pq_ike {
                "  post-quantum IKE SA required"
            } else {
                ""
            }
        );
        for t in teks {
            let p = &t.spec;
            let _ = writeln!(
                out,
                "    TEK {}: {} -> {} proto {} {} SN {} {} max {} packets/s",
                t.id,
                show_selector(&p.src),
                show_selector(&p.dst),
                p.ip_protocol,
                names::cipher_name(p.encr, p.encr_key_bits, p.integ),
                p.sn,
                p.mode,
                p.max_packet_rate
            );
        }
    }
    Ok(out.trim_end().to_string())
}

fn show_selector(s: &gikev2_policy::Selector) -> String {
    let any = *s == gikev2_policy::Selector::any(s.start.is_ipv6());
    if any {
        return "any".into();
    }
    let addr = if s.start == s.end {
        s.start.to_string()
    } else {
        format!("{}-{}", s.start, s.end)
    };
    let port = match (s.start_port, s.end_port) {
        (0, 65535) => String::new(),
        (a, b) if a == b => format!(":{a}"),
        (a, b) => format!(":{a}-{b}"),
    };
    format!("{addr}{port}")
}

async fn add_tek(store: &Store, a: AddTekArgs) -> Result<String, String> {
    let g = group_by_name(store, &a.group).await?;
    let dst = names::selector("--dst", &a.dst, false)?;
    let src = names::selector("--src", &a.src, dst.start.is_ipv6())?;
    let c = names::cipher("--cipher", &a.cipher)?;
    let mode = names::mode(&a.mode)?;
    let existing = store.tek_policies(g.id).await.map_err(err)?;
    if let Some(other) = existing.iter().find(|t| t.spec.mode != mode) {
        return Err(format!(
            "--mode: {mode}, but TEK policy {} of {} is {} (RFC 9838 2.3.4: all SAs of a \
             registration share one mode)",
            other.id, a.group, other.spec.mode
        ));
    }
    let alg = EncrAlg::from_transform(c.encr, c.key_bits)
        .map_err(|e| format!("--cipher {}: {e}", a.cipher))?;
    if is_counter_mode(alg.id()) && g.spec.policy.sender_id_bits.is_none() {
        return Err(format!(
            "--cipher {}: a counter-mode cipher needs Sender-IDs; create the group with \
             --sender-id-bits (RFC 9838 2.5)",
            a.cipher
        ));
    }
    let spec = TekPolicySpec {
        protocol: TekProtocol::Esp,
        ip_protocol: names::ip_protocol(&a.proto)?,
        src,
        dst,
        encr: c.encr,
        encr_key_bits: c.key_bits,
        integ: c.integ,
        sn: names::sn(&a.sn)?,
        mode,
        max_packet_rate: names::max_packet_rate(a.max_packet_rate)?,
    };
    // RFC 9838 4.4.2.1.3 (the store refuses it too; here the flag is named).
    if spec.sn == SnPolicy::Fixed(SnId::Seq64PartiallyTransmitted) && dst.is_multicast() {
        return Err(format!(
            "--sn: seq64 (Partially Transmitted 64-bit Sequential Numbers) MUST NOT be used \
             for a multicast destination such as {} (RFC 9838 4.4.2.1.3): use auto, seq32 or \
             unspecified",
            a.dst
        ));
    }
    let id = store.add_tek_policy(g.id, &spec).await.map_err(err)?;
    Ok(format!(
        "added TEK policy {id} to {}: {} -> {} {} SN {} {}",
        a.group,
        show_selector(&src),
        show_selector(&dst),
        a.cipher,
        spec.sn,
        mode
    ))
}

pub async fn member(store: &Store, cmd: MemberCommand) -> Result<String, String> {
    match cmd {
        MemberCommand::Add(a) => member_add(store, a).await,
        MemberCommand::SetPpk(a) => {
            let ident = names::identity("ID", &a.id)?;
            let what = if a.none {
                if !store
                    .set_member_ppk(&ident, None, false)
                    .await
                    .map_err(err)?
                {
                    return Err(format!("ID: no member {}", show_identity(&ident)));
                }
                "no PPK".to_string()
            } else {
                let Some(ppk) = read_ppk(&a.ppk)? else {
                    return Err("--ppk-file and --ppk-id, or --none".into());
                };
                set_ppk(store, &ident, ppk).await?
            };
            Ok(format!("member {}: {what}", show_identity(&ident)))
        }
        MemberCommand::List => {
            let ms = store.members().await.map_err(err)?;
            if ms.is_empty() {
                return Ok("no members (gcks member add ID ...)".into());
            }
            Ok(ms
                .iter()
                .map(|m| {
                    format!(
                        "{}  {}{}{}",
                        show_identity(&m.identity),
                        m.credential,
                        match (&m.ppk_id, m.ppk_required) {
                            (Some(id), req) => format!(
                                ", PPK {}{}",
                                String::from_utf8_lossy(id),
                                if req { " (required)" } else { "" }
                            ),
                            (None, _) => String::new(),
                        },
                        m.name
                            .as_deref()
                            .map(|n| format!("  ({n})"))
                            .unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"))
        }
        MemberCommand::Delete { id } => {
            let ident = names::identity("ID", &id)?;
            if !store.delete_member(&ident).await.map_err(err)? {
                return Err(format!("ID: no member {}", show_identity(&ident)));
            }
            Ok(format!("deleted member {}", show_identity(&ident)))
        }
    }
}

async fn member_add(store: &Store, a: MemberAddArgs) -> Result<String, String> {
    let ident = names::identity("ID", &a.id)?;
    // Checked before the member is added, so a bad PPK adds nothing.
    let ppk = read_ppk(&a.ppk)?;
    let credential = if let Some(p) = &a.psk_file {
        NewCredential::Psk(files::load_psk("--psk-file", p)?)
    } else if let Some(p) = &a.raw_key {
        NewCredential::RawPublicKey {
            spki: files::load_spki("--raw-key", p)?,
        }
    } else if a.x509_identity {
        let existing = store.trust_anchors().await.map_err(err)?;
        let mut ids = Vec::new();
        for path in &a.ca {
            for der in files::load_certs("--ca", path)? {
                let id = match existing.iter().find(|t| t.cert_der == der) {
                    Some(t) => t.id,
                    None => {
                        let stem = path
                            .file_stem()
                            .map(|s| s.to_string_lossy().into_owned())
                            .unwrap_or_else(|| "ca".into());
                        let name = format!("{stem}-{}", existing.len() + ids.len() + 1);
                        store.add_trust_anchor(&name, &der).await.map_err(err)?
                    }
                };
                ids.push(id);
            }
        }
        NewCredential::X509 { trust_anchors: ids }
    } else {
        return Err("one of --psk-file, --raw-key or --x509-identity (with --ca) is needed".into());
    };
    let kind = match &credential {
        NewCredential::Psk(_) => "PSK",
        NewCredential::RawPublicKey { .. } => "raw public key",
        NewCredential::X509 { .. } => "X.509",
    };
    store
        .add_member(&ident, a.name.as_deref(), &credential, unix_now())
        .await
        .map_err(exists(format!(
            "ID: member {} already exists (gcks member delete it first)",
            show_identity(&ident)
        )))?;
    let mut out = format!("added member {} ({kind})", show_identity(&ident));
    if let Some(ppk) = ppk {
        let what = set_ppk(store, &ident, ppk).await?;
        out.push_str(&format!(", {what}"));
    }
    Ok(out)
}

/// `--ppk-file`, `--ppk-id`, `--ppk-required` read and checked: (PPK_ID, PPK, required).
fn read_ppk(a: &PpkArgs) -> Result<Option<(String, SecretBytes, bool)>, String> {
    let (file, id) = match (&a.ppk_file, &a.ppk_id) {
        (None, None) => return Ok(None),
        (Some(f), Some(i)) => (f, i),
        _ => return Err("--ppk-file and --ppk-id go together".into()),
    };
    if id.is_empty() || id.len() > 255 {
        return Err("--ppk-id: 1 to 255 octets".into());
    }
    let secret = files::load_psk("--ppk-file", file)?;
    if secret.len() < gikev2_policy::MIN_PPK_LEN {
        return Err(format!(
            "--ppk-file {}: {} octets; a PPK needs at least {} (RFC 8784 6: 256 bits of entropy)",
            file.display(),
            secret.len(),
            gikev2_policy::MIN_PPK_LEN
        ));
    }
    Ok(Some((id.clone(), secret, a.ppk_required)))
}

/// Stores a member's PPK; what it did, for the output.
async fn set_ppk(
    store: &Store,
    ident: &Identity,
    (id, secret, required): (String, SecretBytes, bool),
) -> Result<String, String> {
    if !store
        .set_member_ppk(ident, Some((id.as_bytes(), &secret)), required)
        .await
        .map_err(err)?
    {
        return Err(format!("ID: no member {}", show_identity(ident)));
    }
    Ok(format!(
        "PPK {id}{}",
        if required { " (required)" } else { "" }
    ))
}

pub async fn authorize(store: &Store, a: AuthorizeArgs) -> Result<String, String> {
    let ident = names::identity("MEMBER", &a.member)?;
    let role = names::role(&a.role)?;
    let m = store.member(&ident).await.map_err(err)?.ok_or_else(|| {
        format!(
            "MEMBER: no member {} (gcks member add first)",
            show_identity(&ident)
        )
    })?;
    let g = group_by_name(store, &a.group).await?;
    store
        .authorize(m.id, g.id, role, unix_now())
        .await
        .map_err(err)?;
    Ok(format!(
        "{} may join {} as {role}",
        show_identity(&ident),
        a.group
    ))
}

pub async fn signing_key(store: &Store, cmd: SigningKeyCommand) -> Result<String, String> {
    match cmd {
        SigningKeyCommand::Generate { name, scheme } => {
            let scheme = names::scheme(&scheme)?;
            let (_, pkcs8) = SigningKey::generate(scheme)
                .map_err(|e| format!("--scheme {}: {e}", scheme_as_db(scheme)))?;
            let id = store
                .add_signing_key(&name, scheme, &pkcs8, unix_now())
                .await
                .map_err(exists(format!(
                    "NAME: a signing key named {name:?} already exists"
                )))?;
            Ok(format!(
                "generated {} signing key {name} (id {id})",
                scheme_as_db(scheme)
            ))
        }
        SigningKeyCommand::List => {
            let keys = store.signing_keys().await.map_err(err)?;
            if keys.is_empty() {
                return Ok("no signing keys".into());
            }
            Ok(keys
                .iter()
                .map(|k| {
                    format!(
                        "{}  {}  public key {} octets",
                        k.name,
                        scheme_as_db(k.scheme),
                        k.public_spki.len()
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"))
        }
    }
}

pub async fn status(store: &Store, a: StatusArgs) -> Result<String, String> {
    let now = unix_now();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "store: {}",
        match store.kind() {
            gikev2_policy::BackendKind::Sqlite => "SQLite",
            gikev2_policy::BackendKind::Postgres => "PostgreSQL",
        }
    );
    let groups = store.group_rows().await.map_err(err)?;
    let _ = writeln!(out, "groups: {}", groups.len());
    for (id, g) in &groups {
        let g = match g {
            Ok(g) => g,
            Err(e) => {
                let _ = writeln!(out, "  group id {id}: unreadable: {e}");
                continue;
            }
        };
        let s = &g.spec;
        let members = store.member_count(g.id).await.map_err(err)?;
        let sids = store.sender_ids(g.id).await.map_err(err)?;
        let state = store.group_state(g.id).await.map_err(err)?;
        let _ = writeln!(
            out,
            "  {}  IDg {}  members {}/{}  rekey {}",
            s.name,
            show_identity(&s.idg),
            members,
            s.capacity,
            s.rekey.mode
        );
        let values: Vec<String> = sids
            .iter()
            .take(16)
            .map(|v| v.sender_id.to_string())
            .collect();
        let more = if sids.len() > 16 { ", ..." } else { "" };
        let _ = writeln!(
            out,
            "    Sender-IDs in use: {} [{}{more}]",
            sids.len(),
            values.join(", ")
        );
        if let Some(st) = state {
            let teks: Vec<String> = st
                .teks
                .iter()
                .map(|t| {
                    format!(
                        "{:#010x} (expires in {}s)",
                        t.spi,
                        t.expires.saturating_sub(now)
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "    key state: generation {}, Rekey SA {}, TEK SPIs [{}], next Sender-ID {} (epoch {})",
                st.generation,
                if st.rekey.is_some() { "yes" } else { "no" },
                teks.join(", "),
                st.next_sender_id,
                st.sender_id_epoch
            );
        }
    }
    let members = store.members().await.map_err(err)?;
    let _ = writeln!(out, "members: {}", members.len());
    let events = store.audit_events(a.audit).await.map_err(err)?;
    let _ = writeln!(out, "recent audit events (newest first): {}", events.len());
    for e in events {
        let ev = &e.event;
        let _ = writeln!(
            out,
            "  #{} {}s ago  {}  peer {}  group {}  {}",
            e.id,
            now.saturating_sub(ev.at),
            ev.outcome,
            ev.peer
                .as_ref()
                .map(show_identity)
                .unwrap_or_else(|| "-".into()),
            ev.group
                .as_ref()
                .map(show_identity)
                .unwrap_or_else(|| "-".into()),
            ev.reason
        );
    }
    Ok(out.trim_end().to_string())
}
