//! Names the CLI accepts (ciphers, identities, selectors, ...) and how values are shown.

use std::net::{IpAddr, SocketAddr};

use gikev2_policy::{
    EspMode, Identity, MAX_PACKET_RATE, MIN_SEQ32_LIFETIME, RekeyMode, Role, Selector, SnPolicy,
    scheme_from_db,
};
use gikev2_proto::crypto::SignatureScheme;
use gikev2_proto::registry::{EncrId, IdType, IntegId, KwaId, SnId};

/// A cipher suite as the CLI names it: ENCR, its key bits, INTEG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cipher {
    pub encr: EncrId,
    pub key_bits: Option<u16>,
    pub integ: Option<IntegId>,
}

const AEADS: &[(&str, EncrId, Option<u16>)] = &[
    ("aes-gcm-128", EncrId::AesGcm16, Some(128)),
    ("aes-gcm-192", EncrId::AesGcm16, Some(192)),
    ("aes-gcm-256", EncrId::AesGcm16, Some(256)),
    ("aes-gcm-iiv-128", EncrId::AesGcm16Iiv, Some(128)),
    ("aes-gcm-iiv-256", EncrId::AesGcm16Iiv, Some(256)),
    ("chacha20-poly1305", EncrId::ChaCha20Poly1305, None),
    ("chacha20-poly1305-iiv", EncrId::ChaCha20Poly1305Iiv, None),
    ("aes-gmac-128", EncrId::NullAuthAesGmac, Some(128)),
    ("aes-gmac-256", EncrId::NullAuthAesGmac, Some(256)),
];

const INTEGS: &[(&str, IntegId)] = &[
    ("sha256", IntegId::HmacSha2_256_128),
    ("sha384", IntegId::HmacSha2_384_192),
    ("sha512", IntegId::HmacSha2_512_256),
];

const CBC: &[(&str, Option<u16>)] = &[
    ("aes-cbc-128", Some(128)),
    ("aes-cbc-192", Some(192)),
    ("aes-cbc-256", Some(256)),
];

fn cipher_names() -> String {
    let mut v: Vec<String> = AEADS.iter().map(|a| a.0.to_string()).collect();
    v.push("aes-cbc-128|192|256+sha256|sha384|sha512".into());
    v.join(", ")
}

/// Parses a cipher name (`aes-gcm-256`, `aes-cbc-256+sha256`, ...).
pub fn cipher(flag: &str, s: &str) -> Result<Cipher, String> {
    if let Some((_, encr, key_bits)) = AEADS.iter().find(|a| a.0 == s) {
        return Ok(Cipher {
            encr: *encr,
            key_bits: *key_bits,
            integ: None,
        });
    }
    if let Some((c, i)) = s.split_once('+')
        && let Some((_, bits)) = CBC.iter().find(|x| x.0 == c)
        && let Some((_, integ)) = INTEGS.iter().find(|x| x.0 == i)
    {
        return Ok(Cipher {
            encr: EncrId::AesCbc,
            key_bits: *bits,
            integ: Some(*integ),
        });
    }
    Err(format!(
        "{flag}: unknown cipher {s:?} (one of {})",
        cipher_names()
    ))
}

/// A readable cipher name for listings.
pub fn cipher_name(encr: EncrId, bits: Option<u16>, integ: Option<IntegId>) -> String {
    if let Some(a) = AEADS.iter().find(|a| a.1 == encr && a.2 == bits) {
        return a.0.to_string();
    }
    if encr == EncrId::AesCbc
        && let Some((c, _)) = CBC.iter().find(|x| x.1 == bits)
        && let Some((i, _)) = INTEGS.iter().find(|x| Some(x.1) == integ)
    {
        return format!("{c}+{i}");
    }
    let mut s = format!("{encr}");
    if let Some(b) = bits {
        s.push_str(&format!("/{b}"));
    }
    if let Some(i) = integ {
        match INTEGS.iter().find(|x| x.1 == i) {
            Some(x) => s.push_str(&format!("+{}", x.0)),
            None => s.push_str(&format!("+{i}")),
        }
    }
    s
}

pub fn kwa(bits: u16) -> Result<KwaId, String> {
    match bits {
        128 => Ok(KwaId::Kw5649_128),
        192 => Ok(KwaId::Kw5649_192),
        256 => Ok(KwaId::Kw5649_256),
        b => Err(format!("--kwa: {b} (128, 192 or 256)")),
    }
}

pub fn rekey_mode(s: &str) -> Result<RekeyMode, String> {
    RekeyMode::from_db(s).ok_or_else(|| format!("--rekey: {s:?} (multicast, inband or none)"))
}

pub fn role(s: &str) -> Result<Role, String> {
    Role::from_db(s).ok_or_else(|| format!("--role: {s:?} (receiver or sender)"))
}

pub fn mode(s: &str) -> Result<EspMode, String> {
    EspMode::from_db(s).ok_or_else(|| format!("--mode: {s:?} (transport or tunnel)"))
}

pub fn sn(s: &str) -> Result<SnPolicy, String> {
    match s {
        "auto" => Ok(SnPolicy::Auto),
        "unspecified" => Ok(SnPolicy::Fixed(SnId::Unspecified32)),
        "seq32" => Ok(SnPolicy::Fixed(SnId::Seq32)),
        "seq64" => Ok(SnPolicy::Fixed(SnId::Seq64PartiallyTransmitted)),
        _ => Err(format!("--sn: {s:?} (auto, unspecified, seq32 or seq64)")),
    }
}

/// `--max-packet-rate`: packets per second, 1..=[`MAX_PACKET_RATE`].
pub fn max_packet_rate(rate: u32) -> Result<u32, String> {
    if (1..=MAX_PACKET_RATE).contains(&rate) {
        return Ok(rate);
    }
    Err(format!(
        "--max-packet-rate: {rate} (1..={MAX_PACKET_RATE} packets per second: a TEK with \
         32-bit Sequential Numbers lives at most (2^32 - 1) / rate seconds, at least \
         {MIN_SEQ32_LIFETIME} s; RFC 9838 2.6)"
    ))
}

pub fn ip_protocol(s: &str) -> Result<u8, String> {
    match s {
        "any" => Ok(0),
        "udp" => Ok(17),
        "tcp" => Ok(6),
        "icmp" => Ok(1),
        n => n
            .parse()
            .map_err(|_| format!("--proto: {s:?} (udp, tcp, icmp, any or 0..=255)")),
    }
}

pub fn scheme(s: &str) -> Result<SignatureScheme, String> {
    scheme_from_db(s).ok_or_else(|| {
        format!("--scheme: {s:?} (ed25519, ecdsa-p256-sha256, ml-dsa-44, ml-dsa-65, ml-dsa-87)")
    })
}

/// A member identity: `keyid:TEXT`, an IP address, `user@domain`, or an FQDN.
pub fn identity(flag: &str, s: &str) -> Result<Identity, String> {
    if let Some(k) = s.strip_prefix("keyid:") {
        if k.is_empty() {
            return Err(format!("{flag}: empty key id"));
        }
        return Ok(Identity::key_id(k.as_bytes()));
    }
    let id =
        gikev2_member::config::parse_id("id", s).map_err(|e| format!("{flag}: {}", e.reason))?;
    let id = Identity::new(id.ty, id.data);
    id.validate().map_err(|e| format!("{flag}: {e}"))?;
    Ok(id)
}

/// A group's IDg: ID_KEY_ID of the text (what `gm join GROUP` sends).
pub fn idg(flag: &str, s: &str) -> Result<Identity, String> {
    if s.is_empty() || s.len() > 255 {
        return Err(format!("{flag}: 1..=255 octets"));
    }
    Ok(Identity::key_id(s.as_bytes()))
}

/// `ADDR`, `ADDR:PORT`, `[V6]:PORT`, or `any`/`any6`; `default_v6` picks the family of
/// `any`.
pub fn selector(flag: &str, s: &str, default_v6: bool) -> Result<Selector, String> {
    match s {
        "any" => return Ok(Selector::any(default_v6)),
        "any4" => return Ok(Selector::any(false)),
        "any6" => return Ok(Selector::any(true)),
        _ => {}
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        if a.port() == 0 {
            return Ok(Selector::host(a.ip()));
        }
        return Ok(Selector::host_port(a.ip(), a.port()));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Selector::host(ip));
    }
    Err(format!(
        "{flag}: {s:?} is not ADDR, ADDR:PORT, [V6]:PORT or any"
    ))
}

/// A multicast ADDR:PORT.
pub fn multicast_endpoint(flag: &str, s: &str) -> Result<SocketAddr, String> {
    let a: SocketAddr = s
        .parse()
        .map_err(|_| format!("{flag}: {s:?} is not ADDR:PORT"))?;
    if !a.ip().is_multicast() || a.port() == 0 {
        return Err(format!(
            "{flag}: {a} is not a multicast address with a port"
        ));
    }
    Ok(a)
}

/// An identity as the CLI takes it: `gm1.example`, `ops@example.org`, `10.0.0.1`,
/// `keyid:video`; other types and unprintable values as `TYPE:hex`.
pub fn show_identity(id: &Identity) -> String {
    let text = std::str::from_utf8(&id.value)
        .ok()
        .filter(|t| !t.is_empty() && t.chars().all(|c| c.is_ascii_graphic() || c == ' '));
    match (id.id_type, text) {
        (IdType::Fqdn | IdType::Rfc822Addr, Some(t)) => t.to_string(),
        (IdType::KeyId, Some(t)) => format!("keyid:{t}"),
        (IdType::Ipv4Addr, _) if id.value.len() == 4 => {
            let mut a = [0u8; 4];
            a.copy_from_slice(&id.value);
            std::net::Ipv4Addr::from(a).to_string()
        }
        (IdType::Ipv6Addr, _) if id.value.len() == 16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&id.value);
            std::net::Ipv6Addr::from(a).to_string()
        }
        _ => id.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ciphers_round_trip_and_errors_name_the_flag() {
        let c = cipher("--cipher", "aes-cbc-256+sha256").unwrap();
        assert_eq!(c.integ, Some(IntegId::HmacSha2_256_128));
        assert_eq!(
            cipher_name(c.encr, c.key_bits, c.integ),
            "aes-cbc-256+sha256"
        );
        let g = cipher("--cipher", "aes-gcm-128").unwrap();
        assert_eq!(cipher_name(g.encr, g.key_bits, g.integ), "aes-gcm-128");
        let e = cipher("--rekey-cipher", "des").unwrap_err();
        assert!(
            e.starts_with("--rekey-cipher: unknown cipher \"des\""),
            "{e}"
        );
    }

    #[test]
    fn identities_and_selectors() {
        assert_eq!(
            identity("ID", "gm1.example").unwrap(),
            Identity::fqdn("gm1.example")
        );
        assert_eq!(
            identity("ID", "a@b.example").unwrap(),
            Identity::rfc822("a@b.example")
        );
        assert_eq!(
            identity("ID", "keyid:cam").unwrap(),
            Identity::key_id(b"cam")
        );
        for text in [
            "keyid:video",
            "gm1.example",
            "a@b.example",
            "10.0.0.1",
            "fd00::1",
        ] {
            assert_eq!(show_identity(&identity("ID", text).unwrap()), text);
        }
        assert!(identity("MEMBER", "").unwrap_err().starts_with("MEMBER:"));
        assert_eq!(
            selector("--dst", "239.1.1.1:5004", false).unwrap(),
            Selector::host_port("239.1.1.1".parse().unwrap(), 5004)
        );
        assert_eq!(selector("--src", "any", true).unwrap(), Selector::any(true));
        assert!(selector("--dst", "nowhere", false).is_err());
        assert!(multicast_endpoint("--rekey-dst", "10.0.0.1:848").is_err());
    }
}
