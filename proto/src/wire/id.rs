//! Identification payload body, shared by IDi, IDr (RFC 7296 3.5) and IDg (RFC 9838 4.2).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::codec::{Codec, Reader};
use crate::error::DecodeError;
use crate::registry::IdType;

/// An identity: an ID type and its data. The decoder checks the fixed sizes of the
/// address types (4 octets for ID_IPV4_ADDR, 16 for ID_IPV6_ADDR; RFC 7296 3.5).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdPayload {
    pub ty: IdType,
    pub data: Vec<u8>,
}

impl IdPayload {
    /// ID_KEY_ID: an opaque octet string (RFC 7296 3.5). The type every G-IKEv2
    /// implementation MUST support for IDg (RFC 9838 4.2).
    pub fn key_id(data: impl Into<Vec<u8>>) -> Self {
        Self {
            ty: IdType::KeyId,
            data: data.into(),
        }
    }

    /// ID_FQDN: ASCII, no terminators (RFC 7296 3.5). Refuses other strings.
    pub fn fqdn(name: &str) -> Result<Self, DecodeError> {
        check_text(name, true, "ID_FQDN")?;
        Ok(Self {
            ty: IdType::Fqdn,
            data: name.as_bytes().to_vec(),
        })
    }

    /// ID_RFC822_ADDR: treated as UTF-8 text, no terminators (RFC 7296 3.5).
    pub fn rfc822(addr: &str) -> Result<Self, DecodeError> {
        check_text(addr, false, "ID_RFC822_ADDR")?;
        Ok(Self {
            ty: IdType::Rfc822Addr,
            data: addr.as_bytes().to_vec(),
        })
    }

    pub fn ipv4(a: Ipv4Addr) -> Self {
        Self {
            ty: IdType::Ipv4Addr,
            data: a.octets().to_vec(),
        }
    }

    pub fn ipv6(a: Ipv6Addr) -> Self {
        Self {
            ty: IdType::Ipv6Addr,
            data: a.octets().to_vec(),
        }
    }

    pub fn ip(a: IpAddr) -> Self {
        match a {
            IpAddr::V4(a) => Self::ipv4(a),
            IpAddr::V6(a) => Self::ipv6(a),
        }
    }

    /// The address of an ID_IPV4_ADDR or ID_IPV6_ADDR identity.
    pub fn as_ip(&self) -> Option<IpAddr> {
        match self.ty {
            IdType::Ipv4Addr => <[u8; 4]>::try_from(self.data.as_slice())
                .ok()
                .map(|a| IpAddr::V4(a.into())),
            IdType::Ipv6Addr => <[u8; 16]>::try_from(self.data.as_slice())
                .ok()
                .map(|a| IpAddr::V6(a.into())),
            _ => None,
        }
    }

    /// The text of an ID_FQDN or ID_RFC822_ADDR identity, if it is valid UTF-8.
    pub fn as_text(&self) -> Option<&str> {
        match self.ty {
            IdType::Fqdn | IdType::Rfc822Addr => core::str::from_utf8(&self.data).ok(),
            _ => None,
        }
    }
}

/// "The string MUST NOT contain any terminators (e.g., NULL, CR, etc.)"; ID_FQDN is
/// ASCII (RFC 7296 3.5).
fn check_text(s: &str, ascii: bool, what: &'static str) -> Result<(), DecodeError> {
    if let Some(c) = s
        .chars()
        .find(|c| c.is_control() || (ascii && !c.is_ascii()))
    {
        return Err(DecodeError::InvalidValue {
            what,
            value: u32::from(c).into(),
        });
    }
    if s.is_empty() {
        return Err(DecodeError::Missing(what));
    }
    Ok(())
}

/// For logs and messages: the type, then text identities as text (`ID_FQDN:gm1.example`),
/// printable key IDs quoted (`ID_KEY_ID:"video"`: G-IKEv2 group IDs are usually text, and
/// quoted they cannot pass for hex), addresses as addresses, anything else as hex.
impl core::fmt::Display for IdPayload {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let printable = |b: &[u8]| b.iter().all(|c| c.is_ascii_graphic() || *c == b' ');
        match self.ty {
            IdType::Fqdn | IdType::Rfc822Addr if printable(&self.data) => {
                write!(f, "{}:{}", self.ty, String::from_utf8_lossy(&self.data))
            }
            // An opaque octet string (RFC 7296 3.5), but G-IKEv2 group IDs are usually
            // text (`gm join --group video`): quoted, so that it cannot pass for hex.
            IdType::KeyId if !self.data.is_empty() && printable(&self.data) => {
                write!(f, "{}:{:?}", self.ty, String::from_utf8_lossy(&self.data))
            }
            IdType::Ipv4Addr if self.data.len() == 4 => {
                let a: [u8; 4] = self.data[..].try_into().map_err(|_| core::fmt::Error)?;
                write!(f, "{}:{}", self.ty, Ipv4Addr::from(a))
            }
            IdType::Ipv6Addr if self.data.len() == 16 => {
                let a: [u8; 16] = self.data[..].try_into().map_err(|_| core::fmt::Error)?;
                write!(f, "{}:{}", self.ty, Ipv6Addr::from(a))
            }
            _ => {
                write!(f, "{}:", self.ty)?;
                for b in &self.data {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

impl<'a> Codec<'a> for IdPayload {
    fn encode(&self, out: &mut Vec<u8>) {
        self.ty.encode(out);
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&self.data);
    }

    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let ty = IdType::read(r)?;
        let _reserved = r.take(3, "ID RESERVED")?;
        let data = r.rest();
        let fixed = match ty {
            IdType::Ipv4Addr => Some(4),
            IdType::Ipv6Addr => Some(16),
            _ => None,
        };
        if fixed.is_some_and(|n| n != data.len()) {
            return Err(DecodeError::InvalidLength {
                what: "ID address",
                len: data.len(),
            });
        }
        Ok(Self {
            ty,
            data: data.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_print_as_text_where_they_are_text() {
        assert_eq!(
            IdPayload::fqdn("gm1.example").unwrap().to_string(),
            "ID_FQDN:gm1.example"
        );
        assert_eq!(
            IdPayload::key_id(b"video".to_vec()).to_string(),
            "ID_KEY_ID:\"video\""
        );
        assert_eq!(
            IdPayload::key_id(vec![0, 0xff]).to_string(),
            "ID_KEY_ID:00ff"
        );
        let v4 = IdPayload {
            ty: IdType::Ipv4Addr,
            data: vec![192, 0, 2, 1],
        };
        assert_eq!(v4.to_string(), "ID_IPV4_ADDR:192.0.2.1");
    }

    #[test]
    fn typed_constructors_round_trip() {
        let ids = [
            IdPayload::key_id(b"group-1".to_vec()),
            IdPayload::fqdn("gcks.example.com").unwrap(),
            IdPayload::rfc822("gm@example.com").unwrap(),
            IdPayload::ipv4(Ipv4Addr::new(192, 0, 2, 1)),
            IdPayload::ipv6(Ipv6Addr::LOCALHOST),
        ];
        for id in ids {
            assert_eq!(IdPayload::read_bytes(&id.to_bytes()).unwrap(), id);
        }
        let v4 = IdPayload::ipv4(Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(v4.to_bytes(), [1, 0, 0, 0, 192, 0, 2, 1]);
        assert_eq!(v4.as_ip(), Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))));
        assert_eq!(
            IdPayload::fqdn("a.example").unwrap().as_text(),
            Some("a.example")
        );
    }

    #[test]
    fn bad_identities_refused() {
        assert!(IdPayload::fqdn("bad\0name").is_err());
        assert!(IdPayload::fqdn("bücher.example").is_err());
        assert!(IdPayload::rfc822("jörg@example.com").is_ok());
        assert!(IdPayload::rfc822("").is_err());
        // ID_IPV4_ADDR with 5 octets.
        assert!(IdPayload::read_bytes(&[1, 0, 0, 0, 1, 2, 3, 4, 5]).is_err());
        assert!(IdPayload::read_bytes(&[5, 0, 0, 0, 1, 2, 3, 4]).is_err());
        assert!(IdPayload::read_bytes(&[11, 0, 0]).is_err());
    }
}
