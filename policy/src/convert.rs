//! From stored policy to the protocol core's types: traffic selectors, cipher suites and
//! the group-wide policy, as `gikev2_proto::group` builds GSA payloads from them.

use gikev2_proto::crypto::keywrap::KeyWrapAlg;
use gikev2_proto::crypto::{EncrAlg, IntegAlg};
use gikev2_proto::group::{GroupPolicy, RekeySuite};
use gikev2_proto::wire::ts::TrafficSelector;

use crate::error::StoreError;
use crate::model::{GroupWidePolicy, RekeyConfig, Selector, TekPolicySpec};

/// IP protocol of GSA_REKEY messages (RFC 9838 4.4.2: "assumed to be UDP").
const UDP: u8 = 17;

impl Selector {
    /// This selector with `ip_protocol` as an IKEv2 traffic selector (RFC 7296 3.13.1).
    pub fn traffic_selector(&self, ip_protocol: u8) -> TrafficSelector {
        TrafficSelector::Range {
            ip_protocol,
            start_port: self.start_port,
            end_port: self.end_port,
            start: self.start,
            end: self.end,
        }
    }
}

fn encr(
    id: gikev2_proto::registry::EncrId,
    bits: Option<u16>,
    what: &'static str,
) -> Result<EncrAlg, StoreError> {
    EncrAlg::from_transform(id, bits).map_err(|e| {
        let alg = match bits {
            Some(b) => format!("{id} with a {b}-bit key"),
            None => id.to_string(),
        };
        StoreError::invalid(what, format!("{alg}: {e}"))
    })
}

fn integ(
    id: Option<gikev2_proto::registry::IntegId>,
    what: &'static str,
) -> Result<Option<IntegAlg>, StoreError> {
    id.map(|i| {
        IntegAlg::from_id(i).ok_or_else(|| StoreError::invalid(what, format!("{i} unsupported")))
    })
    .transpose()
}

impl TekPolicySpec {
    /// The source traffic selector of the GSA TEK policy.
    pub fn src_ts(&self) -> TrafficSelector {
        self.src.traffic_selector(self.ip_protocol)
    }

    /// The destination traffic selector of the GSA TEK policy.
    pub fn dst_ts(&self) -> TrafficSelector {
        self.dst.traffic_selector(self.ip_protocol)
    }

    /// The ENCR transform as the crypto layer runs it.
    pub fn encr_alg(&self) -> Result<EncrAlg, StoreError> {
        encr(self.encr, self.encr_key_bits, "TEK ENCR")
    }

    /// The INTEG transform, if any.
    pub fn integ_alg(&self) -> Result<Option<IntegAlg>, StoreError> {
        integ(self.integ, "TEK INTEG")
    }
}

impl RekeyConfig {
    /// The Rekey SA suite (ENCR usable in the SK payload, INTEG exactly for non-AEAD
    /// ciphers, KWA; RFC 9838 4.4.2.1).
    pub fn suite(&self) -> Result<RekeySuite, StoreError> {
        let e = encr(self.encr, self.encr_key_bits, "rekey ENCR")?;
        let i = integ(self.integ, "rekey INTEG")?;
        let k = KeyWrapAlg::from_id(self.kwa)
            .ok_or_else(|| StoreError::invalid("rekey KWA", format!("{} unsupported", self.kwa)))?;
        RekeySuite::new(e, i, k).map_err(|err| StoreError::invalid("rekey suite", err.to_string()))
    }

    /// Where GSA_REKEY messages go: the multicast address, UDP, the port (RFC 9838 4.4.2);
    /// `None` without a destination (in-band or no rekey).
    pub fn dst_selector(&self) -> Option<TrafficSelector> {
        self.dst
            .map(|d| Selector::host_port(d.ip(), d.port()).traffic_selector(UDP))
    }

    /// Where GSA_REKEY messages come from: the configured address and port, or wildcards
    /// (RFC 9838 4.4.2 allows both) of the destination's address family.
    pub fn src_selector(&self) -> TrafficSelector {
        let v6 = self.dst.is_some_and(|d| d.is_ipv6());
        let sel = match self.src_addr {
            Some(a) => Selector::host(a),
            None => Selector::any(v6),
        };
        let sel = match self.src_port {
            Some(p) => Selector {
                start_port: p,
                end_port: p,
                ..sel
            },
            None => sel,
        };
        sel.traffic_selector(UDP)
    }
}

impl GroupWidePolicy {
    /// The GW policy of the GSA payload (RFC 9838 4.4.3). `multiple_senders`: more than one
    /// member may send (GWP_SENDER_ID_BITS is then required with counter-mode TEKs).
    pub fn group_policy(&self, multiple_senders: bool) -> GroupPolicy {
        GroupPolicy {
            atd: self.atd,
            dtd: self.dtd,
            sender_id_bits: self.sender_id_bits.map(u16::from),
            multiple_senders,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RekeyMode;
    use gikev2_proto::registry::{EncrId, GcAuthId, IntegId, KwaId};

    fn rekey() -> RekeyConfig {
        RekeyConfig {
            mode: RekeyMode::Multicast,
            dst: Some("239.1.1.1:848".parse().unwrap()),
            src_addr: None,
            src_port: None,
            lifetime: 60,
            encr: EncrId::AesGcm16,
            encr_key_bits: Some(256),
            integ: None,
            kwa: KwaId::Kw5649_256,
            gcauth: GcAuthId::Implicit,
            signing_key: None,
        }
    }

    #[test]
    fn rekey_selectors_and_suite() {
        let r = rekey();
        assert_eq!(
            r.dst_selector(),
            Some(TrafficSelector::single(
                "239.1.1.1".parse().unwrap(),
                UDP,
                Some(848)
            ))
        );
        let mut any = TrafficSelector::any(false);
        if let TrafficSelector::Range { ip_protocol, .. } = &mut any {
            *ip_protocol = UDP;
        }
        assert_eq!(r.src_selector(), any);
        let mut r2 = rekey();
        r2.src_addr = Some("10.0.0.1".parse().unwrap());
        r2.src_port = Some(848);
        assert_eq!(
            r2.src_selector(),
            TrafficSelector::single("10.0.0.1".parse().unwrap(), UDP, Some(848))
        );
        let s = r.suite().unwrap();
        assert!(s.integ.is_none());
        assert_eq!(s.kwa, KeyWrapAlg::Kw5649_256);
        // INTEG with an AEAD, none with CBC, an implicit-IV cipher: refused.
        let mut bad = rekey();
        bad.integ = Some(IntegId::HmacSha2_256_128);
        assert!(bad.suite().is_err());
        bad.encr = EncrId::AesCbc;
        assert!(bad.suite().is_ok());
        bad.integ = None;
        assert!(bad.suite().is_err());
        let mut iiv = rekey();
        iiv.encr = EncrId::AesGcm16Iiv;
        assert!(iiv.suite().is_err());
        let mut inband = rekey();
        inband.dst = None;
        assert_eq!(inband.dst_selector(), None);
    }

    #[test]
    fn group_policy_carries_gw_attributes() {
        let p = GroupWidePolicy {
            atd: Some(3),
            dtd: Some(9),
            sender_id_bits: Some(12),
            max_sender_ids_per_member: 4,
            forward_access_control: false,
            require_pq_ike: false,
        };
        assert_eq!(
            p.group_policy(true),
            GroupPolicy {
                atd: Some(3),
                dtd: Some(9),
                sender_id_bits: Some(12),
                multiple_senders: true
            }
        );
    }
}
